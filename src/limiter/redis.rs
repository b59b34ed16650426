//! The shared limiter: the same exact sliding window as the in-memory one (its slots kept
//! in Redis), so every replica spends from one budget. One round trip per check: a Lua
//! script (`sliding_window.lua`) decides and spends all of a call's limits atomically and
//! returns the slots that counted, from which [`decide`] computes the figures.
//!
//! Every replica passes its own clock's `now`: replicas' clocks must agree (NTP) for the
//! window to be exact across them; a replica whose clock is δ behind records its calls δ
//! early, which can let a window of `W` hold `limit` calls spread over `W − δ`.
use super::memory::decide;
use super::window::{slot_ms, Slot};
use super::{LimitOutcome, LimitScope, RateLimiter, Window, SLOTS};
use crate::domain::{RateLimitSpec, UnixMillis};
use crate::error::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::RwLock;
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("sliding_window.lua");

/// The Redis limiter. Connects lazily and reconnects on its own: a Redis that is down at
/// start-up or later makes checks fail fast with `Unavailable` (see the fallback modes in
/// `limiter::resilient`), never hang.
pub struct RedisLimiter {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Unavailable {
        what: "redis",
        source: Box::new(e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis did not answer within {0:?}")]
struct TimedOut(Duration);

impl RedisLimiter {
    /// `url` is `redis://host:port[/db]`; `prefix` namespaces every key Keygate writes.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::invalid("redis.url", format!("not a Redis URL: {e}")))?;
        Ok(RedisLimiter {
            client,
            conn: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
            script: redis::Script::new(SCRIPT),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// The shared connection, connecting at most once per timeout period while Redis is
    /// unreachable so a dead Redis costs each check one failed read, not a connect.
    async fn connection(&self) -> Result<ConnectionManager> {
        if let Some(c) = self.conn.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let mut last_try = self.connecting.lock().await;
        if let Some(c) = self.conn.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        if last_try.is_some_and(|t| t.elapsed() < self.timeout.max(Duration::from_millis(200))) {
            return Err(unavailable(TimedOut(self.timeout)));
        }
        *last_try = Some(Instant::now());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unavailable(TimedOut(self.timeout * 2)))?
        .map_err(unavailable)?;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// One hash per limit, all under the key's hash tag.
    /// `prefix:{group}:bucket:limit:sw`: a group's (a tenant's) counters share one hash
    /// tag, so one call's keys are in one Redis Cluster slot. (`:sw` names the slot format;
    /// the two-window counters of Keygate ≤ 0.x had no suffix and simply expire.)
    fn key(&self, group: &str, bucket: &str, limit: &str) -> String {
        format!("{}:{{{group}}}:{bucket}:{limit}:sw", self.prefix)
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisLimiter {
    async fn check_scopes(
        &self,
        group: &str,
        scopes: &[LimitScope<'_>],
        cost: u64,
        now: UnixMillis,
        dry_run: bool,
    ) -> Result<LimitOutcome> {
        let limits: Vec<(&str, &RateLimitSpec)> = scopes
            .iter()
            .flat_map(|s| s.limits.iter().map(move |l| (s.bucket, l)))
            .collect();
        if limits.is_empty() {
            return Ok(LimitOutcome {
                allowed: true,
                status: None,
            });
        }
        let mut conn = self.connection().await?;
        let mut call = self.script.prepare_invoke();
        call.arg(now.0).arg(cost).arg(u8::from(dry_run));
        for (bucket, l) in &limits {
            let window_ms = l.window.as_millis() as i64;
            call.key(self.key(group, bucket, &l.name))
                .arg(l.limit)
                .arg(window_ms)
                .arg(slot_ms(window_ms, SLOTS));
        }
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| unavailable(TimedOut(self.timeout)))?
            .map_err(unavailable)?;
        let malformed = || Error::internal("unexpected reply from the rate-limit script");
        let (&allowed, mut rest) = reply.split_first().ok_or_else(malformed)?;
        let mut windows = Vec::with_capacity(limits.len());
        for (_, l) in &limits {
            let (&n, tail) = rest.split_first().ok_or_else(malformed)?;
            let n = usize::try_from(n).map_err(|_| malformed())?;
            if tail.len() < 2 * n {
                return Err(malformed());
            }
            let (slots, tail) = tail.split_at(2 * n);
            rest = tail;
            let slots = slots.chunks(2).map(|s| Slot {
                cost: s[0].max(0) as u64,
                last: s[1],
            });
            windows.push(Window::from_slots(
                l.window.as_millis() as i64,
                SLOTS,
                slots,
            ));
        }
        if !rest.is_empty() {
            return Err(malformed());
        }
        let allowed = allowed == 1;
        let specs: Vec<&RateLimitSpec> = limits.iter().map(|(_, l)| *l).collect();
        // The script decided and spent; the same arithmetic here yields the figures. They
        // agree by construction; if they ever did not, Redis (which spent) is the truth.
        let mut outcome = decide(&mut windows, &specs, cost, now.0, dry_run);
        if outcome.allowed != allowed {
            tracing::warn!(
                limits = limits.len(),
                "rate-limit script and local arithmetic disagree"
            );
            outcome.allowed = allowed;
        }
        Ok(outcome)
    }
}
