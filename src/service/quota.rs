//! Spending quotas: exact across replicas, durable, and off the database for most checks.
//!
//! The database counter of a period is the truth: `used` never passes the limit plus
//! top-ups. A replica claims units from it in small leases (one conditional UPDATE) and
//! spends them locally; a lease is at most `lease_size` units and at most an eighth of what
//! remains, so replicas share the last units of a period. Every allowed call was paid for by
//! a claim that was committed before the call was allowed, so a restart or SIGTERM loses no
//! spent unit; unspent leased units go back on shutdown and after `idle_release_ms`
//! without use. A crash (SIGKILL) keeps them counted as used: the quota may then
//! under-admit by at most one lease per subject, never over-admit. Redis is not involved,
//! so losing it cannot reset anyone's quota.
use crate::config_section::config_section;
use crate::domain::event::EventType;
use crate::domain::quota::{self, QuotaOwner, QuotaSpec, Window};
use crate::domain::UnixMillis;
use crate::error::{Error, Result};
use crate::store::{QuotaClaim, QuotaStore};
use serde::Deserialize;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

config_section! {
    /// `[quotas]`: how replicas share quota counters.
    #[derive(Debug, Clone, Copy, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct QuotaConfig {
        /// Most units a replica claims from the database at once. Larger = fewer writes,
        /// more units stranded on a replica that crashes.
        pub lease_size: u64 = 50,
        /// Unspent units go back to the database after this many milliseconds without a
        /// check.
        pub idle_release_ms: u64 = 2000,
        /// After a claim found the quota exhausted, checks are refused without asking the
        /// database again for this many milliseconds (a top-up on another replica shows
        /// after at most this).
        pub recheck_ms: u64 = 1000,
    }
}

impl QuotaConfig {
    pub fn validate(&self) -> Result<()> {
        if self.lease_size == 0 || self.lease_size > 1_000_000 {
            return Err(Error::invalid(
                "quotas.lease_size",
                "must be from 1 to 1000000",
            ));
        }
        if self.idle_release_ms < 10 {
            return Err(Error::invalid(
                "quotas.idle_release_ms",
                "must be at least 10",
            ));
        }
        Ok(())
    }
}

/// One quota a call spends.
#[derive(Debug, Clone, Copy)]
pub struct QuotaUse<'a> {
    pub owner: QuotaOwner,
    /// The key's or the tenant's id.
    pub id: &'a str,
    pub spec: &'a QuotaSpec,
    /// The tenant's IANA zone (empty = UTC).
    pub time_zone: &'a str,
    /// The tenant the quota belongs to (for its events).
    pub tenant_id: &'a str,
    /// `quota.threshold` at this many thousandths of the period's budget.
    pub alert_permille: u32,
}

/// The quota that refused a call, with its period.
#[derive(Debug, Clone, Copy)]
pub struct Exhausted {
    pub owner: QuotaOwner,
    pub limit: u64,
    pub window: Window,
}

#[derive(Debug, Clone, Copy)]
struct Period {
    spec: QuotaSpec,
    window: Window,
}

/// A replica's units of one subject's current period.
#[derive(Debug, Default)]
struct Lease {
    period: Option<Period>,
    /// The time zone `period` was computed in.
    zone: String,
    units: u64,
    /// Refuse without asking the database until then.
    empty_until: Option<UnixMillis>,
    touched: UnixMillis,
    /// `quota.threshold` is due once `units` falls to this (see `take`).
    alert_at: Option<u64>,
}

type Slot = Arc<tokio::sync::Mutex<Lease>>;

const SHARDS: usize = 16;

/// This replica's leases. Cheap to share.
pub struct QuotaLedger {
    store: Arc<dyn QuotaStore>,
    config: QuotaConfig,
    shards: Vec<std::sync::Mutex<HashMap<String, Slot>>>,
    hasher: std::collections::hash_map::RandomState,
    events: Option<Arc<crate::service::events::Emitter>>,
}

impl QuotaLedger {
    pub fn new(store: Arc<dyn QuotaStore>, config: QuotaConfig) -> Self {
        QuotaLedger {
            store,
            config,
            shards: (0..SHARDS)
                .map(|_| std::sync::Mutex::new(HashMap::new()))
                .collect(),
            hasher: Default::default(),
            events: None,
        }
    }

    /// Emits `quota.threshold` and `quota.exhausted` through `events`.
    pub fn with_emitter(mut self, events: Arc<crate::service::events::Emitter>) -> Self {
        self.events = Some(events);
        self
    }

    fn emit(&self, kind: EventType, u: &QuotaUse<'_>, window: Window, now: UnixMillis) {
        if let Some(events) = &self.events {
            let key_id = match u.owner {
                QuotaOwner::Key => u.id,
                QuotaOwner::Tenant => "",
            };
            events.quota(
                kind,
                u.tenant_id,
                key_id,
                u.owner.name(),
                u.spec.limit,
                window.start,
                window.end,
                f64::from(u.alert_permille) / 1000.0,
                now,
            );
        }
    }

    fn shard(&self, subject: &str) -> &std::sync::Mutex<HashMap<String, Slot>> {
        &self.shards[(self.hasher.hash_one(subject) as usize) % SHARDS]
    }

    fn slot(&self, subject: &str) -> Slot {
        let shard = self.shard(subject);
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(subject) {
            return s.clone();
        }
        map.entry(subject.to_owned()).or_default().clone()
    }

    fn existing(&self, subject: &str) -> Option<Slot> {
        let shard = self.shard(subject);
        let map = shard.lock().unwrap_or_else(|p| p.into_inner());
        map.get(subject).cloned()
    }

    /// Spends `cost` on every quota in `uses`, or on none: `Ok(None)` when all had room,
    /// else the first that did not. A dry run only makes sure the units are there.
    pub async fn spend(
        &self,
        uses: &[QuotaUse<'_>],
        cost: u64,
        dry_run: bool,
        now: UnixMillis,
    ) -> Result<Option<Exhausted>> {
        for (i, u) in uses.iter().enumerate() {
            match self.take(u, cost, dry_run, now).await {
                Ok(None) => {}
                refused => {
                    if !dry_run {
                        self.refund(&uses[..i], cost, now).await;
                    }
                    return refused;
                }
            }
        }
        Ok(None)
    }

    /// Gives `cost` back to each of `uses` (a later step refused the call).
    pub async fn refund(&self, uses: &[QuotaUse<'_>], cost: u64, now: UnixMillis) {
        for u in uses {
            let slot = self.slot(&u.owner.subject(u.id));
            let mut lease = slot.lock().await;
            // Only into the period the units came from.
            if lease.period.is_some_and(|p| p.window.contains(now)) {
                lease.units += cost;
            }
        }
    }

    async fn take(
        &self,
        u: &QuotaUse<'_>,
        cost: u64,
        dry_run: bool,
        now: UnixMillis,
    ) -> Result<Option<Exhausted>> {
        let subject = u.owner.subject(u.id);
        let slot = self.slot(&subject);
        let mut lease = slot.lock().await;
        lease.touched = now;
        let period = match lease.period {
            Some(p) if p.spec == *u.spec && p.window.contains(now) && lease.zone == u.time_zone => {
                p
            }
            _ => {
                let tz = quota::time_zone("tenant.policy.time_zone", u.time_zone)?;
                let window = u.spec.window(now, &tz)?;
                if lease.period.is_none_or(|p| p.window.start != window.start) {
                    // A new period: units of the old one are spent or gone with it.
                    lease.units = 0;
                    lease.empty_until = None;
                    lease.alert_at = None;
                }
                let p = Period {
                    spec: *u.spec,
                    window,
                };
                lease.period = Some(p);
                lease.zone = u.time_zone.to_owned();
                p
            }
        };
        let refused = Exhausted {
            owner: u.owner,
            limit: u.spec.limit,
            window: period.window,
        };
        if lease.units < cost {
            if lease.empty_until.is_some_and(|t| now < t) {
                return Ok(Some(refused));
            }
            let claim = self
                .store
                .claim_quota_counted(&QuotaClaim {
                    subject,
                    period_start: period.window.start,
                    limit: u.spec.limit,
                    need: cost - lease.units,
                    want: self.config.lease_size,
                    now,
                })
                .await?;
            if claim.units == 0 {
                lease.empty_until = Some(now.plus(Duration::from_millis(self.config.recheck_ms)));
                if !dry_run {
                    self.emit(EventType::QuotaExhausted, u, period.window, now);
                }
                return Ok(Some(refused));
            }
            lease.empty_until = None;
            lease.units += claim.units;
            // Units spent so far (as far as this replica knows) are the counter less what
            // this replica holds unspent; the threshold is crossed once they reach the
            // alert fraction, i.e. once `units` falls to `used - threshold`. Other
            // replicas' unspent leases count as spent, so with several replicas the event
            // may come up to their leases early, never late.
            let budget = (u.spec.limit as i128 + i128::from(claim.granted)).max(0) as u64;
            let threshold =
                (u128::from(budget) * u128::from(u.alert_permille)).div_ceil(1000) as u64;
            lease.alert_at = claim.used.checked_sub(threshold);
        }
        if !dry_run {
            lease.units -= cost;
            if lease.alert_at.is_some_and(|a| lease.units <= a) {
                lease.alert_at = None;
                self.emit(EventType::QuotaThreshold, u, period.window, now);
            }
        }
        Ok(None)
    }

    /// Units of `subject`'s period starting at `period_start` this replica holds unspent
    /// (they count as used in the database).
    pub async fn held(&self, subject: &str, period_start: UnixMillis) -> u64 {
        match self.existing(subject) {
            Some(slot) => {
                let lease = slot.lock().await;
                match lease.period {
                    Some(p) if p.window.start == period_start => lease.units,
                    _ => 0,
                }
            }
            None => 0,
        }
    }

    /// Spends up to `units` of what this replica holds unspent of `subject`'s period
    /// starting at `period_start` (units already counted as used in the database); returns
    /// how many it spent. A settlement charges these before the database's remainder, so
    /// units this replica leased are not mistaken for units spent.
    pub async fn take_held(&self, subject: &str, period_start: UnixMillis, units: u64) -> u64 {
        let Some(slot) = self.existing(subject) else {
            return 0;
        };
        let mut lease = slot.lock().await;
        match lease.period {
            Some(p) if p.window.start == period_start => {
                let n = units.min(lease.units);
                lease.units -= n;
                n
            }
            _ => 0,
        }
    }

    /// Forgets that `subject` was exhausted (after a top-up on this replica).
    pub async fn forget(&self, subject: &str) {
        if let Some(slot) = self.existing(subject) {
            slot.lock().await.empty_until = None;
        }
    }

    /// Gives back the unspent units of leases idle since `before` (every lease when
    /// `before` is `None`), and forgets leases idle for long.
    pub async fn release(&self, now: UnixMillis, before: Option<UnixMillis>) -> Result<u64> {
        let slots: Vec<(String, Slot)> = self
            .shards
            .iter()
            .flat_map(|s| {
                let map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut released = 0;
        let mut first_error = None;
        for (subject, slot) in slots {
            let mut lease = slot.lock().await;
            if before.is_some_and(|b| lease.touched >= b) {
                continue;
            }
            let Some(period) = lease.period else { continue };
            if lease.units > 0 {
                // Units of a period that has ended need not go back.
                if period.window.contains(now) {
                    match self
                        .store
                        .release_quota(&subject, period.window.start, lease.units, now)
                        .await
                    {
                        Ok(()) => released += lease.units,
                        Err(e) => {
                            // Kept, and tried again on the next round.
                            first_error.get_or_insert(e);
                            continue;
                        }
                    }
                }
                lease.units = 0;
            }
            // Idle for a minute with nothing held: drop the entry to bound memory.
            if now.0 - lease.touched.0 > 60_000 && lease.empty_until.is_none_or(|t| t <= now) {
                drop(lease);
                let shard = self.shard(&subject);
                let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
                if map
                    .get(&subject)
                    .is_some_and(|s| Arc::ptr_eq(s, &slot) && Arc::strong_count(s) == 2)
                {
                    map.remove(&subject);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// Releases idle leases every few hundred milliseconds until `stop`, then every lease.
    pub async fn run(
        self: Arc<Self>,
        clock: Arc<dyn crate::domain::Clock>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let idle = Duration::from_millis(self.config.idle_release_ms);
        let every = (idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let now = clock.now();
            let before = UnixMillis(now.0 - idle.as_millis() as i64);
            if let Err(e) = self.release(now, Some(before)).await {
                tracing::warn!(error = %e, "could not give back idle quota leases; will retry");
            }
        }
        match self.release(clock.now(), None).await {
            Ok(n) => tracing::info!(units = n, "quota leases given back"),
            Err(e) => tracing::warn!(error = %e, "could not give back quota leases at shutdown"),
        }
    }
}
