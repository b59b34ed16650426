//! Metered calls: a check that reserves an estimate, settled with the real cost later.
//!
//! A reservation spends its units like a check's `cost` on every rate limit and quota the
//! check touched; they count as spent for every later check. `Settle` then spends the
//! actual cost instead: the difference goes back (into the slot and the quota period the
//! units came from), or more is charged, up to what remains plus the tenant's
//! `max_overdraft`; beyond that the excess is only recorded (`overage`). A reservation not
//! settled within the tenant's `reservation_ttl` settles at the reserved amount.
use super::{RateLimitSpec, UnixMillis};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A reservation's lifetime when the tenant sets none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Most units a reservation, a settlement or an overdraft may name: what the quota and the
/// Redis limiter count exactly (2^53, as `quota::MAX_QUOTA`), so sums never overflow.
pub const MAX_UNITS: u64 = super::quota::MAX_QUOTA;
/// The longest lifetime a tenant may set.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// One set of limits the reservation spent on, under its counter bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLimits {
    pub bucket: String,
    pub limits: Vec<RateLimitSpec>,
}

/// One quota period the reservation spent on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedQuota {
    /// `key:<id>` or `tenant:<id>`.
    pub subject: String,
    pub period_start: UnixMillis,
    /// When the period ends (`None`: prepaid credits, which never refill).
    pub period_end: Option<UnixMillis>,
    /// The quota's limit for the period (top-ups come on top).
    pub limit: u64,
}

/// What a reservation holds and where its units went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// `rsv_…`: not a secret (it authorizes nothing but settling this reservation, which
    /// the authorize token guards).
    pub id: String,
    pub key_id: String,
    pub tenant_id: String,
    pub reserved: u64,
    pub reserve_time: UnixMillis,
    /// When it settles at `reserved` if nobody settles it first.
    pub expire_time: UnixMillis,
    pub limits: Vec<ReservedLimits>,
    pub quotas: Vec<ReservedQuota>,
    pub max_overdraft: u64,
    /// The replica that reserved (an in-memory limiter's units live only there).
    pub origin: String,
    /// The limiter's `[redis] on_error` fallback decided the check: the units were never
    /// counted in the shared limiter, so settling leaves the limits alone.
    pub limiter_fallback: bool,
    pub settlement: Option<Settlement>,
}

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// The cost the caller reported (the reserved amount for an expired reservation).
    pub actual: u64,
    /// What was spent in the end: `actual`, less any excess beyond what remained plus the
    /// overdraft.
    pub charged: u64,
    /// `actual - charged`: recorded, not charged.
    pub overage: u64,
    pub settle_time: UnixMillis,
    /// Settled by expiry, not by the caller.
    pub expired: bool,
    /// Won by a Settle whose adjustments have not been recorded yet: `charged` and
    /// `overage` are not final.
    pub pending: bool,
}

impl Reservation {
    /// Whether it has passed its expiry unsettled at `now`.
    pub fn lapsed(&self, now: UnixMillis) -> bool {
        self.settlement.is_none() && now >= self.expire_time
    }
}

/// Sums over the reservations of a key or tenant made in a time range (usage reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReservationTotals {
    /// Units reserved by every reservation of the range.
    pub reserved: u64,
    /// Units charged by reservations settled with Settle.
    pub settled: u64,
    /// Units of reservations that expired unsettled (charged at the reserved amount).
    pub expired: u64,
    /// Units still held by reservations not settled yet.
    pub open: u64,
    /// Units reported beyond what could be charged.
    pub overage: u64,
}

/// Validates a count of units (`reserve`, `actual_cost`, `max_overdraft`).
pub fn validate_units(field: &str, units: u64) -> crate::error::Result<()> {
    if units > MAX_UNITS {
        return Err(crate::error::Error::invalid(
            field,
            format!("must be at most {MAX_UNITS}"),
        ));
    }
    Ok(())
}

/// Validates a tenant's reservation lifetime (`0` = the default).
pub fn validate_ttl(field: &str, ttl: Duration) -> crate::error::Result<()> {
    if ttl > MAX_TTL || ttl.subsec_nanos() != 0 || (!ttl.is_zero() && ttl < Duration::from_secs(1))
    {
        return Err(crate::error::Error::invalid(
            field,
            "must be whole seconds from 1s to 24h (0 = the default, 10 minutes)",
        ));
    }
    Ok(())
}
