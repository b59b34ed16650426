//! The shared limiter: the same sliding-window semantics as the in-memory one, kept in
//! Redis so every replica spends from one budget. One round trip per check: a Lua script
//! (`sliding_window.lua`) decides and spends all of a key's limits atomically.
use super::memory::decide;
use super::{LimitOutcome, LimitScope, RateLimiter, Window};
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
    /// `prefix:{group}:bucket:limit`: a group's (a tenant's) counters share one hash tag,
    /// so one call's keys are in one Redis Cluster slot.
    fn key(&self, group: &str, bucket: &str, limit: &str) -> String {
        format!("{}:{{{group}}}:{bucket}:{limit}", self.prefix)
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
            call.key(self.key(group, bucket, &l.name))
                .arg(l.limit)
                .arg(l.window.as_millis() as u64);
        }
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| unavailable(TimedOut(self.timeout)))?
            .map_err(unavailable)?;
        if reply.len() != 1 + 3 * limits.len() {
            return Err(Error::internal(
                "unexpected reply from the rate-limit script",
            ));
        }
        let mut windows: Vec<Window> = limits
            .iter()
            .zip(reply[1..].chunks(3))
            .map(|((_, l), w)| Window {
                window_ms: l.window.as_millis() as i64,
                start: w[0],
                current: w[1] as u64,
                previous: w[2] as u64,
            })
            .collect();
        let specs: Vec<&RateLimitSpec> = limits.iter().map(|(_, l)| *l).collect();
        // The script decided and spent; the same arithmetic here yields the figures. They
        // agree by construction; if they ever did not, Redis (which spent) is the truth.
        let mut outcome = decide(&mut windows, &specs, cost, now.0, dry_run);
        let allowed = reply[0] == 1;
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
