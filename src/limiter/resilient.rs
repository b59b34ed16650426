//! What a check does when the shared limiter cannot be reached (`[redis] on_error`).
use super::memory::MemoryLimiter;
use super::{LimitOutcome, LimitScope, LimitStatus, RateLimiter};
use crate::domain::UnixMillis;
use crate::error::Result;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The policy, a config value; re-exported here where it is carried out.
pub use crate::config::OnLimiterError;

/// A shared limiter with a fallback, and an optional local pre-check.
pub struct Resilient {
    primary: Arc<dyn RateLimiter>,
    /// With the pre-check on: buckets the shared limiter refused, until when, the cost it
    /// refused, and the figures it gave. A call of at least that cost in that time is
    /// refused here without a round trip (a cheaper one may fit, so it asks).
    refused: Option<moka::sync::Cache<String, (UnixMillis, u64, LimitOutcome)>>,
    local: MemoryLimiter,
    mode: OnLimiterError,
    failures: AtomicU64,
    counter: Option<prometheus::IntCounter>,
    last_logged: AtomicI64,
}

impl Resilient {
    /// `local_precheck`: remember refusals until their `retry_after` (see the README's
    /// "Running several replicas" for the accuracy trade-off).
    pub fn new(primary: Arc<dyn RateLimiter>, mode: OnLimiterError, local_precheck: bool) -> Self {
        let refused = local_precheck.then(|| {
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(31 * 24 * 3600))
                .build()
        });
        Resilient {
            primary,
            refused,
            local: MemoryLimiter::default(),
            mode,
            failures: AtomicU64::new(0),
            counter: None,
            last_logged: AtomicI64::new(0),
        }
    }

    /// Also counts fallbacks in this metric.
    pub fn with_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Checks that fell back since start (a metric).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl RateLimiter for Resilient {
    fn shared(&self) -> bool {
        self.primary.shared()
    }

    /// Settles in the shared limiter only: a reservation decided by the fallback is not
    /// settled at all (`LimitOutcome::fallback`), and a failure here is the caller's to
    /// report (settling in memory what Redis counted would count it twice).
    async fn settle(
        &self,
        group: &str,
        scopes: &[LimitScope<'_>],
        at: UnixMillis,
        reserved: u64,
        actual: u64,
        overdraft: u64,
        now: UnixMillis,
    ) -> Result<u64> {
        let settled = self
            .primary
            .settle(group, scopes, at, reserved, actual, overdraft, now)
            .await;
        if settled.is_err() {
            if let Some(c) = &self.counter {
                c.inc();
            }
        }
        settled
    }

    async fn check_scopes(
        &self,
        group: &str,
        scopes: &[LimitScope<'_>],
        cost: u64,
        now: UnixMillis,
        dry_run: bool,
    ) -> Result<LimitOutcome> {
        // The pre-check remembers refusals by the call's first bucket (the key).
        let bucket = scopes.first().map_or(group, |s| s.bucket);
        if let Some(refused) = &self.refused {
            if let Some((until, refused_cost, outcome)) = refused.get(bucket) {
                if now < until && cost >= refused_cost {
                    let mut outcome = outcome;
                    if let Some(st) = outcome.status.as_mut() {
                        st.retry_after = Some(now.until(until));
                    }
                    return Ok(outcome);
                }
                if now >= until {
                    refused.invalidate(bucket);
                }
            }
        }
        let err = match self
            .primary
            .check_scopes(group, scopes, cost, now, dry_run)
            .await
        {
            Ok(o) => {
                if let (Some(refused), false) = (&self.refused, o.allowed) {
                    if let Some(after) = o.status.as_ref().and_then(|s| s.retry_after) {
                        refused.insert(bucket.to_owned(), (now.plus(after), cost, o.clone()));
                    }
                }
                return Ok(o);
            }
            Err(e) => e,
        };
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(c) = &self.counter {
            c.inc();
        }
        // One line per second at most: a dead Redis must not flood the logs.
        let sec = now.0 / 1000;
        if self.last_logged.swap(sec, Ordering::Relaxed) != sec {
            tracing::warn!(error = %err, mode = ?self.mode, failures = n, "rate limiter unavailable; falling back");
        }
        match self.mode {
            OnLimiterError::Local => {
                let mut o = self
                    .local
                    .check_scopes(group, scopes, cost, now, dry_run)
                    .await?;
                o.fallback = true;
                Ok(o)
            }
            OnLimiterError::Allow => Ok(LimitOutcome {
                allowed: true,
                status: None,
                fallback: true,
            }),
            OnLimiterError::Deny => {
                let first = scopes.iter().flat_map(|s| s.limits.iter()).next();
                let status = first.map(|l| LimitStatus {
                    name: l.name.clone(),
                    limit: l.limit,
                    remaining: 0,
                    reset: now.plus(Duration::from_secs(1)),
                    retry_after: Some(Duration::from_secs(1)),
                });
                Ok(LimitOutcome {
                    allowed: status.is_none(),
                    status,
                    fallback: true,
                })
            }
        }
    }
}
