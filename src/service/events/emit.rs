//! Runtime events from the decision path: `rate_limit.exceeded` (once per key, limit and
//! window), `quota.threshold` and `quota.exhausted` (once per quota period). The check
//! never waits for them: an occurrence seen for the first time goes on a bounded queue to
//! a writer task, which appends it with an id derived from the occurrence, so replicas
//! that see the same occurrence store one event. A denial already counted costs one hash
//! of borrowed parts and one set lookup.
use crate::domain::event::{Event, EventType};
use crate::domain::UnixMillis;
use crate::metrics::Metrics;
use crate::store::EventLog;
use serde_json::json;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Occurrences remembered before the set starts over (the store still dedupes by id).
const REMEMBERED: usize = 100_000;
/// Events waiting for the writer; past this they are dropped and counted.
const QUEUE: usize = 4096;

/// Emits runtime events. Cheap to share.
pub struct Emitter {
    tx: mpsc::Sender<(u64, Event)>,
    seen: Mutex<foldhash::HashSet<u64>>,
    hasher: foldhash::quality::RandomState,
    metrics: Arc<Metrics>,
}

impl Emitter {
    /// The emitter and the writer task to spawn.
    pub fn new(
        events: Arc<dyn EventLog>,
        metrics: Arc<Metrics>,
    ) -> (
        Arc<Emitter>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let emitter = Arc::new(Emitter {
            tx,
            seen: Mutex::new(Default::default()),
            hasher: Default::default(),
            metrics,
        });
        let writer = writer(Arc::downgrade(&emitter), events, rx);
        (emitter, writer)
    }

    /// Marks an occurrence (anything that names it uniquely) seen; `None` when it
    /// already was.
    fn first(&self, occurrence: impl std::hash::Hash) -> Option<u64> {
        let h = self.hasher.hash_one(occurrence);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&h) {
            return None;
        }
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(h);
        Some(h)
    }

    fn forget(&self, h: u64) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&h);
    }

    fn send(&self, h: u64, e: Event) {
        if self.tx.try_send((h, e)).is_err() {
            self.forget(h);
            self.metrics.events.dropped.inc();
        }
    }

    /// A call of `key_id` refused by the limit `name` (`limit` per `window_ms`): one event
    /// per key, limit and aligned window. A denial already told costs a hash of the
    /// borrowed parts and a set lookup: nothing is formatted or allocated until the
    /// occurrence is new.
    pub fn rate_limited(
        &self,
        tenant_id: &str,
        key_id: &str,
        name: &str,
        limit: u64,
        window_ms: u64,
        now: UnixMillis,
    ) {
        let window_ms = window_ms.max(1);
        let start = now.0.max(0) as u64 / window_ms * window_ms;
        let Some(h) = self.first((key_id, name, window_ms, start)) else {
            return;
        };
        let occurrence = format!("{key_id}\n{name}\n{window_ms}\n{start}");
        let data = json!({
            "key": { "id": key_id, "tenant_id": tenant_id },
            "limit": { "name": name, "limit": limit, "window_secs": window_ms / 1000 },
            "window_start": crate::domain::event::rfc3339(UnixMillis(start as i64)),
        });
        let e = Event::once(
            EventType::RateLimitExceeded,
            &occurrence,
            now,
            tenant_id,
            key_id,
            data,
        );
        self.send(h, e);
    }

    /// A quota period crossed its alert fraction (`threshold`) or ran out (`exhausted`).
    /// `owner` is `key` or `tenant`; `key_id` is empty for a tenant's quota.
    #[allow(clippy::too_many_arguments)]
    pub fn quota(
        &self,
        kind: EventType,
        tenant_id: &str,
        key_id: &str,
        owner: &str,
        limit: u64,
        period_start: UnixMillis,
        period_end: Option<UnixMillis>,
        fraction: f64,
        now: UnixMillis,
    ) {
        let subject = if key_id.is_empty() { tenant_id } else { key_id };
        let occurrence = format!("{owner}:{subject}\n{}", period_start.0);
        let Some(h) = self.first((kind.as_str(), &occurrence)) else {
            return;
        };
        let mut data = json!({
            "quota": {
                "owner": owner,
                "limit": limit,
                "period_start": crate::domain::event::rfc3339(period_start),
                "period_end": period_end.map(crate::domain::event::rfc3339),
            },
        });
        if kind == EventType::QuotaThreshold {
            data["quota"]["threshold"] = json!(fraction);
        }
        if !key_id.is_empty() {
            data["key"] = json!({ "id": key_id, "tenant_id": tenant_id });
        }
        let e = Event::once(kind, &occurrence, now, tenant_id, key_id, data);
        self.send(h, e);
    }
}

/// Writes queued events in batches until every emitter is gone. A failed write forgets
/// the occurrences, so the next one of each is tried again.
async fn writer(
    emitter: std::sync::Weak<Emitter>,
    events: Arc<dyn EventLog>,
    mut rx: mpsc::Receiver<(u64, Event)>,
) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        let (hashes, list): (Vec<u64>, Vec<Event>) = batch.drain(..).unzip();
        if let Err(e) = events.append_events(&list).await {
            tracing::warn!(error = %e, events = list.len(), "could not write runtime events; they are written at their next occurrence");
            if let Some(em) = emitter.upgrade() {
                for h in hashes {
                    em.forget(h);
                }
            }
        }
    }
}
