//! Metered calls (see `domain::reservation`): a check with `reserve` spends the reserved
//! units like a cost and records where they went; `Settle` spends the real cost instead.
//!
//! Exactly once: the store settles a reservation in one conditional UPDATE, and only the
//! caller that won it adjusts the limits and quotas. Every replica can settle any
//! reservation: the record is in the store, the Redis limiter's slots are shared, and
//! quota counters are the store's. With the in-memory limiter each replica counts its own
//! calls, so a reservation settled on another replica than the one that reserved leaves
//! that replica's rate limits at the reserved amount (quotas are settled either way).
//! Should the process stop between winning a settlement and adjusting, the units stay
//! spent at the reserved amount: never more admitted than paid for.
use super::quota::{QuotaLedger, QuotaUse};
use crate::domain::quota::{self, QuotaSpec};
use crate::domain::reservation::{Reservation, ReservedLimits, ReservedQuota, Settlement};
use crate::domain::{key, CachedKey, Clock, TenantPolicy, UnixMillis};
use crate::error::{Error, Result};
use crate::limiter::{LimitScope, RateLimiter};
use crate::store::{QuotaStore, ReservationStore};
use std::sync::Arc;
use std::time::Duration;

/// How often open reservations past their expiry are settled at the reserved amount.
pub const EXPIRY_SWEEP: Duration = Duration::from_secs(1);
/// Settled reservations are pruned (past `retention`) every this many sweeps (an hour).
const PRUNE_EVERY: u64 = 3600;

pub struct Reservations {
    pub(crate) store: Arc<dyn ReservationStore>,
    pub(crate) quota_store: Arc<dyn QuotaStore>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) clock: Arc<dyn Clock>,
    /// This replica, as reservations name the one that made them.
    pub(crate) origin: String,
    /// Whether the limiter's counters are shared by every replica (Redis).
    pub(crate) shared_limiter: bool,
    /// This replica's quota leases: told when a settlement gives units back, so a quota
    /// it had found exhausted is asked again at once (other replicas ask within
    /// `quotas.recheck_ms`, as after a top-up).
    pub(crate) ledger: Arc<QuotaLedger>,
    /// How long settled reservations are kept (usage reports read them): the usage day
    /// buckets' retention.
    pub(crate) retention: Duration,
}

/// What a check spent, to be recorded as a reservation.
pub struct Spent<'a> {
    /// The limiter's fallback decided the check (see `LimitOutcome::fallback`).
    pub limiter_fallback: bool,
    pub key: &'a CachedKey,
    pub policy: &'a TenantPolicy,
    pub limits: &'a [LimitScope<'a>],
    pub quotas: &'a [QuotaUse<'a>],
    pub units: u64,
}

fn quota_period(u: &QuotaUse<'_>, now: UnixMillis) -> Result<ReservedQuota> {
    let tz = quota::time_zone("tenant.policy.time_zone", u.time_zone)?;
    let spec: &QuotaSpec = u.spec;
    let window = spec.window(now, &tz)?;
    Ok(ReservedQuota {
        subject: u.owner.subject(u.id),
        period_start: window.start,
        period_end: window.end,
        limit: spec.limit,
    })
}

impl Reservations {
    /// Records what an admitted check reserved; its id. If it cannot be recorded, the
    /// units go back (the caller then fails the check: a reservation nobody could settle
    /// must not hold units).
    pub async fn record(&self, spent: Spent<'_>, now: UnixMillis) -> Result<String> {
        let mut r = Reservation {
            id: format!("rsv_{}", key::random_base62(24)),
            key_id: spent.key.id.to_string(),
            tenant_id: spent.key.tenant_id.to_string(),
            reserved: spent.units,
            reserve_time: now,
            expire_time: now.plus(spent.policy.reservation_ttl()),
            limits: spent
                .limits
                .iter()
                .filter(|s| !s.limits.is_empty())
                .map(|s| ReservedLimits {
                    bucket: s.bucket.to_owned(),
                    limits: s.limits.to_vec(),
                })
                .collect(),
            quotas: Vec::with_capacity(spent.quotas.len()),
            max_overdraft: spent.policy.max_overdraft,
            origin: self.origin.clone(),
            limiter_fallback: spent.limiter_fallback,
            settlement: None,
        };
        let recorded = async {
            for u in spent.quotas {
                r.quotas.push(quota_period(u, now)?);
            }
            self.store.insert_reservation(&r).await
        }
        .await;
        if let Err(e) = recorded {
            if !spent.limiter_fallback {
                let _ = self
                    .limiter
                    .settle(&r.tenant_id, spent.limits, now, spent.units, 0, 0, now)
                    .await;
            }
            self.ledger.refund(spent.quotas, spent.units, now).await;
            return Err(e);
        }
        Ok(r.id)
    }

    /// Settles `id` with the call's real cost (see the module docs); idempotent.
    pub async fn settle(self: &Arc<Self>, id: &str, actual: u64) -> Result<Reservation> {
        if id.is_empty() || id.len() > 40 || !id.starts_with("rsv_") {
            return Err(Error::invalid(
                "reservation_id",
                "must be the reservation_id of a CheckResponse (rsv_…)",
            ));
        }
        crate::domain::reservation::validate_units("actual_cost", actual)?;
        let now = self.clock.now();
        let mut r = self.get(id).await?;
        if let Some(s) = r.settlement {
            return if s.pending {
                self.recorded(id).await
            } else {
                Ok(r)
            };
        }
        if r.lapsed(now) {
            // Past its expiry: it settles at the reserved amount, whatever is reported now.
            self.store.expire_reservations(now).await?;
            return self.get(id).await;
        }
        let settlement = Settlement {
            actual,
            charged: actual,
            overage: 0,
            settle_time: now,
            expired: false,
            pending: false,
        };
        if !self.store.settle_reservation(id, &settlement).await? {
            // Another Settle (or the expiry sweep) won: answer what it decided.
            return self.recorded(id).await;
        }
        // The adjustments run as a task of their own: a caller that goes away (a deadline,
        // a cancel) does not leave them half made.
        let (me, held) = (self.clone(), r.clone());
        let adjusted = tokio::spawn(async move {
            let overage = me.adjust(&held, actual, now).await;
            let charged = actual - overage;
            me.store
                .record_charge(&held.id, charged, overage)
                .await
                .map(|()| (charged, overage))
        });
        let (charged, overage) = adjusted
            .await
            .map_err(|_| Error::internal("settlement task failed"))??;
        r.settlement = Some(Settlement {
            charged,
            overage,
            ..settlement
        });
        Ok(r)
    }

    async fn get(&self, id: &str) -> Result<Reservation> {
        self.store
            .get_reservation(id)
            .await?
            .ok_or_else(|| Error::not_found("reservation", id))
    }

    /// The reservation once its settlement is recorded: a Settle that lost the race waits
    /// (a few seconds at most) for the winner's figures, so both answer the same.
    async fn recorded(&self, id: &str) -> Result<Reservation> {
        for _ in 0..60 {
            let r = self.get(id).await?;
            match r.settlement {
                Some(s) if s.pending => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => return Ok(r),
            }
        }
        Err(Error::Unavailable {
            what: "settlement",
            source: Box::new(std::io::Error::other(
                "another Settle of this reservation is still being applied; retry",
            )),
        })
    }

    /// Spends `actual` instead of the reserved units on the reservation's limits and
    /// quotas; returns the overage (extra units some limit or quota had no room for).
    /// Failures are logged and leave the reserved amount spent.
    async fn adjust(&self, r: &Reservation, actual: u64, now: UnixMillis) -> u64 {
        let extra = actual.saturating_sub(r.reserved);
        let mut overage = 0;
        // A check the fallback decided was never counted in the shared limiter; with the
        // in-memory one, only the replica that reserved holds the units.
        let in_limiter = !r.limiter_fallback && (self.shared_limiter || r.origin == self.origin);
        if in_limiter {
            let scopes: Vec<LimitScope<'_>> = r
                .limits
                .iter()
                .map(|l| LimitScope {
                    bucket: &l.bucket,
                    limits: &l.limits,
                })
                .collect();
            match self
                .limiter
                .settle(
                    &r.tenant_id,
                    &scopes,
                    r.reserve_time,
                    r.reserved,
                    actual,
                    r.max_overdraft,
                    now,
                )
                .await
            {
                Ok(took) if !scopes.is_empty() => overage = extra - took.min(extra),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(reservation = %r.id, error = %e, "could not settle a reservation's rate limits; they keep the reserved amount");
                }
            }
        }
        for q in &r.quotas {
            let result = if actual < r.reserved {
                let released = self
                    .quota_store
                    .release_quota(&q.subject, q.period_start, r.reserved - actual, now)
                    .await;
                self.ledger.forget(&q.subject).await;
                released.map(|()| 0)
            } else {
                // This replica's unspent lease first: those units are counted as used in
                // the database already.
                let held = self
                    .ledger
                    .take_held(&q.subject, q.period_start, extra)
                    .await;
                self.quota_store
                    .charge_quota(
                        &q.subject,
                        q.period_start,
                        q.limit.saturating_add(r.max_overdraft),
                        extra - held,
                        now,
                    )
                    .await
                    .map(|charged| extra - held - charged.min(extra - held))
            };
            match result {
                Ok(over) => overage = overage.max(over),
                Err(e) => {
                    tracing::warn!(reservation = %r.id, error = %e, "could not settle a reservation's quota; it keeps the reserved amount");
                }
            }
        }
        overage
    }

    /// Settles at the reserved amount what has passed its expiry, every
    /// [`EXPIRY_SWEEP`], until `stop`.
    pub async fn sweep(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut swept: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EXPIRY_SWEEP) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = self.clock.now();
            swept += 1;
            if swept.is_multiple_of(PRUNE_EVERY) {
                let before = UnixMillis(now.0 - self.retention.as_millis() as i64);
                if let Err(e) = self.store.prune_reservations(before).await {
                    tracing::warn!(error = %e, "could not prune settled reservations; will retry");
                }
            }
            match self.store.expire_reservations(now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    reservations = n,
                    "expired reservations settled at the reserved amount"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not settle expired reservations; will retry")
                }
            }
        }
    }
}
