//! Usage recording, off the hot path. A check adds one count to an in-memory aggregate
//! (per key, UTC minute, endpoint and reason); a background task writes the aggregate to
//! the store in one transaction every `usage.flush_ms`, early when the buffer fills, and
//! once more after the server has drained on shutdown. The same flush moves each key's
//! `last_used_time` forward and adds to its all-time use count.
//!
//! Bounded: the buffer holds at most `usage.max_buffered_rows` rows. A check that would
//! need a new row in a full buffer is not counted (it is still decided normally) and
//! adds to `keygate_usage_dropped_total`; a failed flush puts its rows back, within the
//! same bound, and is retried on the next tick.
use crate::domain::reason::Reason;
use crate::domain::usage::{day_of, minute_of, EndpointId, RouteTable};
use crate::domain::UnixMillis;
use crate::error::Result;
use crate::metrics::UsageMetrics;
use crate::store::{KeyUse, UsageBatch, UsageCell, UsageStore};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SHARDS: usize = 16;

/// Counts of one (minute, endpoint, reason) cell.
#[derive(Debug, Default, Clone, Copy)]
struct Cell {
    count: u64,
    cost: u64,
}

#[derive(Debug)]
struct KeyAgg {
    tenant_id: String,
    last_used: UnixMillis,
    uses: u64,
    cells: HashMap<(UnixMillis, EndpointId, Reason), Cell, Fast>,
}

/// The buffer's hasher: its keys are key ids and cells no client chooses (SipHash showed
/// in the check profile).
type Fast = foldhash::fast::RandomState;

type Shard = HashMap<String, KeyAgg, Fast>;

/// A flush's cells merged by (key, bucket, endpoint label, reason), with the key's tenant.
type Merged<'a> = HashMap<(&'a str, UnixMillis, &'a str, Reason), (&'a str, Cell), Fast>;

/// The in-memory aggregate and its flusher.
pub struct UsageRecorder {
    shards: Box<[Mutex<Shard>]>,
    hasher: Fast,
    /// Rows buffered: one per key plus one per cell.
    rows: AtomicUsize,
    max_rows: usize,
    /// Record per-endpoint cells at all (`usage.enabled`); last use is always recorded.
    cells_enabled: bool,
    routes: Arc<RouteTable>,
    early: tokio::sync::Notify,
    /// One flush at a time (the background task, shutdown, tests).
    flushing: tokio::sync::Mutex<()>,
    metrics: Option<UsageMetrics>,
}

/// One check, as usage sees it.
pub struct Use<'a> {
    pub key_id: &'a str,
    pub tenant_id: &'a str,
    pub at: UnixMillis,
    pub endpoint: EndpointId,
    pub reason: Reason,
    /// Budget spent: the call's cost when allowed, else 0.
    pub cost: u64,
}

impl UsageRecorder {
    pub fn new(
        routes: Arc<RouteTable>,
        cells_enabled: bool,
        max_rows: usize,
        metrics: Option<UsageMetrics>,
    ) -> Self {
        UsageRecorder {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            rows: AtomicUsize::new(0),
            max_rows: max_rows.max(2),
            cells_enabled,
            routes,
            early: tokio::sync::Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The route table endpoints are resolved with.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Rows currently buffered.
    pub fn buffered_rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    fn shard(&self, key_id: &str) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(key_id) as usize % SHARDS]
    }

    /// Counts one check. O(1), never waits on I/O; a full buffer drops the count.
    pub fn record(&self, u: &Use<'_>) {
        if !self.add(u.key_id, u.tenant_id, u.at, 1, self.cell_of(u)) {
            self.dropped(1);
        }
        if self.rows.load(Ordering::Relaxed) * 2 >= self.max_rows {
            self.early.notify_one();
        }
    }

    fn cell_of(&self, u: &Use<'_>) -> Option<((UnixMillis, EndpointId, Reason), Cell)> {
        self.cells_enabled.then(|| {
            (
                (minute_of(u.at), u.endpoint, u.reason),
                Cell {
                    count: 1,
                    cost: u.cost,
                },
            )
        })
    }

    /// Adds `uses` to the key and `cell` to its cells; false when the buffer had no room
    /// for a new row (then nothing was added).
    fn add(
        &self,
        key_id: &str,
        tenant_id: &str,
        at: UnixMillis,
        uses: u64,
        cell: Option<((UnixMillis, EndpointId, Reason), Cell)>,
    ) -> bool {
        let mut shard = self.shard(key_id).lock().unwrap_or_else(|e| e.into_inner());
        // The common case, a key already buffered: one lookup for the key, one for its cell.
        if let Some(agg) = shard.get_mut(key_id) {
            if let Some((k, c)) = cell {
                match agg.cells.entry(k) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        let e = e.get_mut();
                        e.count += c.count;
                        e.cost += c.cost;
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        if !self.reserve_rows(1) {
                            return false;
                        }
                        v.insert(c);
                    }
                }
            }
            agg.uses += uses;
            if at > agg.last_used {
                agg.last_used = at;
            }
            return true;
        }
        if !self.reserve_rows(1 + usize::from(cell.is_some())) {
            return false;
        }
        let mut cells = HashMap::with_hasher(Fast::default());
        if let Some((k, c)) = cell {
            cells.insert(k, c);
        }
        shard.insert(
            key_id.to_owned(),
            KeyAgg {
                tenant_id: tenant_id.to_owned(),
                last_used: at,
                uses,
                cells,
            },
        );
        true
    }

    /// Counts `n` new rows against the buffer's bound; false (nothing counted) when full.
    fn reserve_rows(&self, n: usize) -> bool {
        self.rows
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r + n <= self.max_rows).then_some(r + n)
            })
            .is_ok()
    }

    fn dropped(&self, n: u64) {
        if let Some(m) = &self.metrics {
            m.dropped.inc_by(n);
        }
    }

    fn take(&self) -> Vec<(String, KeyAgg)> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let taken = std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
            let rows: usize = taken.values().map(|a| 1 + a.cells.len()).sum();
            self.rows.fetch_sub(rows, Ordering::AcqRel);
            out.extend(taken);
        }
        out
    }

    /// Puts rows of a failed flush back, within the bound; what does not fit is dropped.
    fn restore(&self, taken: Vec<(String, KeyAgg)>) {
        for (id, agg) in taken {
            let mut lost = 0;
            if !self.add(&id, &agg.tenant_id, agg.last_used, agg.uses, None) {
                lost += agg.uses;
            }
            for (k, c) in agg.cells {
                if !self.add(&id, &agg.tenant_id, agg.last_used, 0, Some((k, c))) {
                    lost += c.count;
                }
            }
            if lost > 0 {
                self.dropped(lost);
            }
        }
    }

    /// Writes everything buffered in one transaction. On failure the rows go back into
    /// the buffer and the error is returned.
    pub async fn flush(&self, store: &dyn UsageStore, now: UnixMillis) -> Result<()> {
        let _one = self.flushing.lock().await;
        let taken = self.take();
        self.report_buffered();
        if taken.is_empty() {
            if let Some(m) = &self.metrics {
                m.flush_lag.set(0.0);
            }
            return Ok(());
        }
        let batch = self.batch(&taken);
        let oldest = batch.minutes.iter().map(|c| c.bucket).min().unwrap_or(now);
        match store.record_usage(&batch).await {
            Ok(()) => {
                if let Some(m) = &self.metrics {
                    m.flush_lag.set(0.0);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, keys = taken.len(), "could not write usage; kept to retry");
                if let Some(m) = &self.metrics {
                    m.flush_failures.inc();
                    m.flush_lag.set(oldest.until(now).as_secs_f64());
                }
                self.restore(taken);
                self.report_buffered();
                Err(e)
            }
        }
    }

    fn report_buffered(&self) {
        if let Some(m) = &self.metrics {
            m.buffered.set(self.buffered_rows() as i64);
        }
    }

    /// The rows to write: per-key uses, and cells per minute and per day, merged by
    /// endpoint label (two routes may share a name).
    fn batch(&self, taken: &[(String, KeyAgg)]) -> UsageBatch {
        let mut minutes = Merged::default();
        let mut keys = Vec::with_capacity(taken.len());
        for (id, agg) in taken {
            keys.push(KeyUse {
                key_id: id.clone(),
                last_used: agg.last_used,
                uses: agg.uses,
            });
            for ((minute, endpoint, reason), c) in &agg.cells {
                let label = self.routes.label(*endpoint);
                let e = minutes
                    .entry((id.as_str(), *minute, label, *reason))
                    .or_insert((agg.tenant_id.as_str(), Cell::default()));
                e.1.count += c.count;
                e.1.cost += c.cost;
            }
        }
        let mut days = Merged::default();
        for ((id, minute, label, reason), (tenant, c)) in &minutes {
            let e = days
                .entry((id, day_of(*minute), label, *reason))
                .or_insert((tenant, Cell::default()));
            e.1.count += c.count;
            e.1.cost += c.cost;
        }
        let cells = |m: Merged<'_>| {
            m.into_iter()
                .map(|((id, bucket, label, reason), (tenant, c))| UsageCell {
                    key_id: id.to_owned(),
                    tenant_id: tenant.to_owned(),
                    bucket,
                    endpoint: label.to_owned(),
                    reason: reason.code(),
                    count: c.count,
                    cost: c.cost,
                })
                .collect::<Vec<_>>()
        };
        UsageBatch {
            keys,
            minutes: cells(minutes),
            days: cells(days),
        }
    }

    /// Flushes every `interval` (sooner when the buffer is half full) until `stop`
    /// fires, then once more: the caller fires `stop` only after the server has drained,
    /// so every answered check is in that last flush.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn UsageStore>,
        clock: Arc<dyn crate::domain::Clock>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.early.notified() => {}
                changed = stop.changed() => if changed.is_err() { break } else { continue },
            }
            // Errors are logged and counted in `flush`; the rows wait for the next tick.
            let _ = self.flush(store.as_ref(), clock.now()).await;
        }
        let _ = self.flush(store.as_ref(), clock.now()).await;
    }
}

/// Deletes minute buckets older than `minute_retention` and day buckets older than
/// `day_retention` (whole buckets: a bucket goes once all of it is past retention).
pub async fn prune_once(
    store: &dyn UsageStore,
    now: UnixMillis,
    minute_retention: Duration,
    day_retention: Duration,
) -> Result<u64> {
    let ago = |d: Duration| UnixMillis(now.0.saturating_sub(d.as_millis() as i64));
    store
        .prune_usage(minute_of(ago(minute_retention)), day_of(ago(day_retention)))
        .await
}

/// Deletes buckets past their retention, at start and then hourly, until `stop`.
pub async fn prune(
    store: Arc<dyn UsageStore>,
    clock: Arc<dyn crate::domain::Clock>,
    minute_retention: Duration,
    day_retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match prune_once(store.as_ref(), clock.now(), minute_retention, day_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned usage past retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune usage; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(max_rows: usize) -> UsageRecorder {
        UsageRecorder::new(Arc::new(RouteTable::default()), true, max_rows, None)
    }

    fn use_of(key: &str, at: i64, reason: Reason) -> Use<'_> {
        Use {
            key_id: key,
            tenant_id: "t",
            at: UnixMillis(at),
            endpoint: EndpointId::OTHER,
            reason,
            cost: u64::from(reason == Reason::Ok),
        }
    }

    #[test]
    fn counts_merge_into_one_cell_per_minute_endpoint_and_reason() {
        let r = recorder(1000);
        for i in 0..10 {
            r.record(&use_of("k1", 1_000 + i, Reason::Ok));
        }
        r.record(&use_of("k1", 61_000, Reason::Ok));
        r.record(&use_of("k1", 2_000, Reason::RateLimited));
        // k1 + three cells
        assert_eq!(r.buffered_rows(), 4);
        let taken = r.take();
        assert_eq!(r.buffered_rows(), 0);
        let b = r.batch(&taken);
        assert_eq!(b.keys.len(), 1);
        assert_eq!(b.keys[0].uses, 12);
        assert_eq!(b.keys[0].last_used, UnixMillis(61_000));
        assert_eq!(b.minutes.len(), 3);
        assert_eq!(b.days.len(), 2, "OK and RATE_LIMITED on the same day");
        let ok_day = b.days.iter().find(|c| c.reason == "OK").unwrap();
        assert_eq!((ok_day.count, ok_day.cost), (11, 11));
    }

    #[test]
    fn a_full_buffer_drops_new_rows_but_keeps_counting_existing_ones() {
        let r = recorder(100);
        for i in 0..100_000 {
            r.record(&use_of(&format!("key{i}"), 1_000, Reason::Ok));
        }
        assert!(r.buffered_rows() <= 100);
        let before = r.buffered_rows();
        // A key already buffered still counts into its existing cell.
        r.record(&use_of("key0", 1_500, Reason::Ok));
        assert_eq!(r.buffered_rows(), before);
        let taken = r.take();
        let key0 = taken.iter().find(|(id, _)| id == "key0").unwrap();
        assert_eq!(key0.1.uses, 2);
    }
}
