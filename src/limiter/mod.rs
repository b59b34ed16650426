//! Rate limiting. [`RateLimiter`] is the seam: the in-memory limiter is the embedded
//! default; a shared (Redis) one implements the same trait and passes the same suite.
//!
//! # Algorithm: an exact sliding window in sub-window slots
//! See [`window`]: in any interval of a limit's window, the cost admitted is at most the
//! limit, whatever the phase against clock boundaries; a call's cost comes back at most
//! `W / 60` after `W` (never early); `retry_after` and `reset` are at most `W` ahead. The
//! Redis limiter keeps the same slots in Redis and decides with the same arithmetic.
pub mod memory;
pub mod redis;
pub mod resilient;
pub mod window;

pub use window::{Window, SLOTS};

use crate::domain::{RateLimitSpec, UnixMillis};
use crate::error::Result;
use std::time::Duration;

/// Figures for the `X-RateLimit-*` headers of one limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    /// When the budget is whole again if no more calls are made.
    pub reset: UnixMillis,
    /// Set on refusal: how long until a call of the same cost would be admitted
    /// (`None` when it never can be, i.e. cost > limit).
    pub retry_after: Option<Duration>,
}

/// What a limiter decided for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOutcome {
    pub allowed: bool,
    /// On refusal, the refusing limit (the one that frees up last); on admission, the
    /// tightest limit (least remaining). `None` when there were no limits.
    pub status: Option<LimitStatus>,
    /// Decided by `[redis] on_error` because the shared limiter failed: nothing was
    /// counted there (a reservation then has nothing to settle in it).
    pub fallback: bool,
}

/// One set of limits spent together under one counter bucket: a key's own limits, or its
/// tenant's shared limits.
#[derive(Debug, Clone, Copy)]
pub struct LimitScope<'a> {
    pub bucket: &'a str,
    pub limits: &'a [RateLimitSpec],
}

/// Checks and spends rate budget.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Admits the call only if *every* limit of *every* scope has room for `cost`, and then
    /// spends `cost` on all of them, atomically; a refused call spends nothing anywhere.
    /// With `dry_run` it decides the same way but spends nothing. All scopes of one call
    /// belong to `group` (the tenant): a shared limiter keeps a group's counters together.
    async fn check_scopes(
        &self,
        group: &str,
        scopes: &[LimitScope<'_>],
        cost: u64,
        now: UnixMillis,
        dry_run: bool,
    ) -> Result<LimitOutcome>;

    /// Settles a reservation of `reserved` units made at `at` on `scopes` (the limits as
    /// they were then): spends `actual` instead. Less: the difference is taken back out of
    /// the slot the units went into, if it still counts. More: up to the difference is
    /// charged at `now`, as far as each limit plus `overdraft` allows (never refused: the
    /// call has happened). Per limit; a limit removed or given another window since is
    /// left alone (its counts are no longer the reservation's to rewrite). Returns the
    /// extra units every limit took (the least any took; 0 when settling for less).
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        group: &str,
        scopes: &[LimitScope<'_>],
        at: UnixMillis,
        reserved: u64,
        actual: u64,
        overdraft: u64,
        now: UnixMillis,
    ) -> Result<u64>;

    /// Whether every replica sees the same counters (a shared limiter), so a reservation
    /// made on one may be settled on another.
    fn shared(&self) -> bool {
        false
    }

    /// One bucket's limits (its own group).
    async fn check(
        &self,
        bucket: &str,
        limits: &[RateLimitSpec],
        cost: u64,
        now: UnixMillis,
        dry_run: bool,
    ) -> Result<LimitOutcome> {
        self.check_scopes(bucket, &[LimitScope { bucket, limits }], cost, now, dry_run)
            .await
    }
}
