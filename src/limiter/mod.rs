//! Rate limiting. [`RateLimiter`] is the seam: the in-memory limiter is the embedded
//! default; a shared (Redis) one implements the same trait and passes the same suite.
//!
//! # Algorithm: two-window weighted sliding counter
//! Each limit counts cost in fixed windows aligned to the epoch. A call at offset `t` into
//! the current window sees `estimate = prev × (window − t) / window + current` and is
//! admitted when `estimate + cost ≤ limit`. Budget therefore returns gradually as the
//! previous window slides out, not all at once at a boundary.
//!
//! Error bounds: no fixed window ever admits more than `limit`; the estimate is exact when
//! the previous window's calls were spread evenly. In the worst case (a previous window's
//! calls all at its very end) a sliding window of length `window` can admit up to
//! `2 × limit − 1`; with typical traffic the error is well under 1%. `retry_after` is
//! exact under this model: a call of the same cost made then is admitted.
pub mod memory;
pub mod redis;
pub mod resilient;

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

/// The counters of one limit: cost spent in the current and the previous window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub window_ms: i64,
    pub start: i64,
    pub current: u64,
    pub previous: u64,
}

impl Window {
    /// Moves the window forward to contain `now`.
    pub fn roll(&mut self, now: i64, window_ms: i64) {
        let aligned = now - now.rem_euclid(window_ms);
        if self.window_ms != window_ms || aligned >= self.start + 2 * window_ms {
            *self = Window {
                window_ms,
                start: aligned,
                current: 0,
                previous: 0,
            };
        } else if aligned > self.start {
            self.previous = self.current;
            self.current = 0;
            self.start = aligned;
        }
    }

    /// Whether `cost` fits now (after `roll`): prev×(w−t) + cur×w + cost×w ≤ limit×w.
    pub fn admits(&self, now: i64, limit: u64, cost: u64) -> bool {
        let w = self.window_ms as u128;
        let t = (now - self.start) as u128;
        self.previous as u128 * (w - t) + (self.current as u128 + cost as u128) * w
            <= limit as u128 * w
    }

    /// Budget left now, rounded down.
    pub fn remaining(&self, now: i64, limit: u64) -> u64 {
        let w = self.window_ms as u128;
        let t = (now - self.start) as u128;
        let used_x_w = self.previous as u128 * (w - t) + self.current as u128 * w;
        let used = used_x_w.div_ceil(w);
        (limit as u128).saturating_sub(used) as u64
    }

    /// When the estimate falls to zero with no more calls.
    pub fn reset(&self, now: i64) -> i64 {
        if self.current > 0 {
            self.start + 2 * self.window_ms
        } else if self.previous > 0 {
            self.start + self.window_ms
        } else {
            now
        }
    }

    /// The earliest instant ≥ `now` at which `cost` fits, or `None` if never (cost > limit).
    pub fn next_admission(&self, now: i64, limit: u64, cost: u64) -> Option<i64> {
        if cost > limit {
            return None;
        }
        if self.admits(now, limit, cost) {
            return Some(now);
        }
        let w = self.window_ms as u128;
        // In this window: prev × (w − t) ≤ (limit − cur − cost) × w.
        if self.current + cost <= limit && self.previous > 0 {
            let room = (limit - self.current - cost) as u128 * w;
            let t = w - room / self.previous as u128;
            if t < w {
                return Some(self.start + t as i64);
            }
        }
        // In the next window, where the current count becomes the previous one.
        let t = if self.current == 0 {
            0
        } else {
            w - ((limit - cost) as u128 * w) / self.current as u128
        };
        Some(self.start + self.window_ms + t.min(w) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_admission_is_exact() {
        let (limit, w) = (100u64, 60_000i64);
        for (prev, cur, cost, t) in [
            (100, 0, 1, 0),
            (100, 50, 1, 10_000),
            (37, 99, 1, 59_999),
            (0, 100, 1, 5),
            (80, 10, 7, 30_000),
            (100, 100, 100, 1),
        ] {
            let win = Window {
                window_ms: w,
                start: 0,
                current: cur,
                previous: prev,
            };
            let at = win.next_admission(t, limit, cost).unwrap();
            assert!(at >= t);
            let mut later = win;
            later.roll(at, w);
            assert!(
                later.admits(at, limit, cost),
                "admitted at {at} ({prev},{cur},{cost},{t})"
            );
            if at > t {
                let mut before = win;
                before.roll(at - 1, w);
                assert!(
                    !before.admits(at - 1, limit, cost),
                    "not admitted 1 ms before {at} ({prev},{cur},{cost},{t})"
                );
            }
        }
        let win = Window {
            window_ms: w,
            start: 0,
            current: 0,
            previous: 0,
        };
        assert_eq!(win.next_admission(0, 10, 11), None);
    }
}
