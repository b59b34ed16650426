//! What a check does when the shared limiter cannot be reached (`on_limiter_error`).
use super::memory::MemoryLimiter;
use super::{LimitOutcome, LimitStatus, RateLimiter};
use crate::domain::{RateLimitSpec, UnixMillis};
use crate::error::Result;
use serde::Deserialize;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The policy when the shared limiter fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimiterError {
    /// Refuse the call (RATE_LIMITED, retry after 1 s): no call escapes its limit.
    Deny,
    /// Admit the call unlimited: no call fails because of Redis.
    Allow,
    /// Count in this replica's memory instead (default): each replica enforces the limit
    /// on its own share of the traffic, so a key may get up to replicas × limit meanwhile.
    Local,
}

/// A shared limiter with a fallback.
pub struct Resilient {
    primary: Arc<dyn RateLimiter>,
    local: MemoryLimiter,
    mode: OnLimiterError,
    failures: AtomicU64,
    last_logged: AtomicI64,
}

impl Resilient {
    pub fn new(primary: Arc<dyn RateLimiter>, mode: OnLimiterError) -> Self {
        Resilient {
            primary,
            local: MemoryLimiter::default(),
            mode,
            failures: AtomicU64::new(0),
            last_logged: AtomicI64::new(0),
        }
    }

    /// Checks that fell back since start (a metric).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl RateLimiter for Resilient {
    async fn check(
        &self,
        bucket: &str,
        limits: &[RateLimitSpec],
        cost: u64,
        now: UnixMillis,
        dry_run: bool,
    ) -> Result<LimitOutcome> {
        let err = match self.primary.check(bucket, limits, cost, now, dry_run).await {
            Ok(o) => return Ok(o),
            Err(e) => e,
        };
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // One line per second at most: a dead Redis must not flood the logs.
        let sec = now.0 / 1000;
        if self.last_logged.swap(sec, Ordering::Relaxed) != sec {
            tracing::warn!(error = %err, mode = ?self.mode, failures = n, "rate limiter unavailable; falling back");
        }
        match self.mode {
            OnLimiterError::Local => self.local.check(bucket, limits, cost, now, dry_run).await,
            OnLimiterError::Allow => Ok(LimitOutcome {
                allowed: true,
                status: None,
            }),
            OnLimiterError::Deny => {
                let status = limits.first().map(|l| LimitStatus {
                    name: l.name.clone(),
                    limit: l.limit,
                    remaining: 0,
                    reset: now.plus(Duration::from_secs(1)),
                    retry_after: Some(Duration::from_secs(1)),
                });
                Ok(LimitOutcome {
                    allowed: status.is_none(),
                    status,
                })
            }
        }
    }
}
