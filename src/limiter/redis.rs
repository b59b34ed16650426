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
use redis::cluster_async::ClusterConnection;
use redis::IntoConnectionInfo;
use secrecy::{ExposeSecret, SecretString};
use std::sync::RwLock;
use std::time::{Duration, Instant};

const SCRIPT: &str = include_str!("sliding_window.lua");

/// Where the shared limiter's Redis is and how to reach it.
pub struct RedisTarget {
    /// `redis://` or `rediss://` (TLS), `[user:password@]host:port[/db]`; for a cluster,
    /// any one node (the others are discovered).
    pub url: SecretString,
    /// A Redis Cluster: keys are routed to their slot's master.
    pub cluster: bool,
    /// PEM CA certificates to verify a `rediss://` server with (else the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// The password, when not in the URL (from `redis.password_file`).
    pub password: Option<SecretString>,
}

impl RedisTarget {
    /// One plain Redis at `url`.
    pub fn single(url: &str) -> Self {
        RedisTarget {
            url: url.to_owned().into(),
            cluster: false,
            ca_pem: None,
            password: None,
        }
    }
}

// One per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis limiter. Connects lazily and reconnects on its own: a Redis that is down at
/// start-up or later makes checks fail fast with `Unavailable` (see the fallback modes in
/// `limiter::resilient`), never hang.
pub struct RedisLimiter {
    client: Client,
    conn: RwLock<Option<Conn>>,
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

/// A Redis client error as a config error of `field`; the message never holds the URL.
fn bad(field: &'static str) -> impl Fn(redis::RedisError) -> Error {
    move |e| {
        Error::invalid(
            field,
            format!("{:?}: {}", e.kind(), e.detail().unwrap_or("")),
        )
    }
}

impl RedisLimiter {
    /// One plain Redis at `url` (`redis://host:port[/db]`); `prefix` namespaces every key
    /// Keygate writes.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        Self::connect_to(RedisTarget::single(url), prefix, timeout)
    }

    /// The Redis (or Redis Cluster) of `target`.
    pub fn connect_to(target: RedisTarget, prefix: &str, timeout: Duration) -> Result<Self> {
        let url = target.url.expose_secret();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::invalid(
                "redis.url",
                "must start with redis:// or rediss:// (TLS)",
            ));
        }
        if target.ca_pem.is_some() && !url.starts_with("rediss://") {
            return Err(Error::invalid(
                "redis.ca_path",
                "is for TLS: the url must start with rediss://",
            ));
        }
        let mut info = url.into_connection_info().map_err(bad("redis.url"))?;
        if let Some(pw) = &target.password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(pw.expose_secret());
            info = info.set_redis_settings(settings);
        }
        let certs = target.ca_pem.map(|ca| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        });
        let client = if target.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(vec![info])
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1);
            if let Some(pw) = &target.password {
                b = b.password(pw.expose_secret());
            }
            if let Some(c) = certs {
                b = b.certs(c);
            }
            Client::Cluster(b.build().map_err(bad("redis.url"))?)
        } else {
            Client::Single(
                match certs {
                    Some(c) => redis::Client::build_with_tls(info, c),
                    None => redis::Client::open(info),
                }
                .map_err(bad("redis.url"))?,
            )
        };
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
    async fn connection(&self) -> Result<Conn> {
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
        let connect = async {
            match &self.client {
                Client::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .map(Conn::Single)
                }
                Client::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let conn = tokio::time::timeout(self.timeout * 2, connect)
            .await
            .map_err(|_| unavailable(TimedOut(self.timeout * 2)))?
            .map_err(unavailable)?;
        *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// The keys of one limit, all under the key's hash tag:
    /// `prefix:{group}:bucket:limit:sw` + `:h` (its sum and lengths) and `:l` (its
    /// slots). A group's (a tenant's) counters share one hash tag, so one call's keys are
    /// in one Redis Cluster slot. (`:sw` names the slot format; the two-window counters
    /// of earlier releases had no suffix and simply expire.)
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
            let key = self.key(group, bucket, &l.name);
            call.key(format!("{key}:h"))
                .key(format!("{key}:l"))
                .arg(l.limit)
                .arg(window_ms)
                .arg(slot_ms(window_ms, SLOTS));
        }
        let invoke = async {
            match &mut conn {
                Conn::Single(c) => call.invoke_async::<Vec<i64>>(c).await,
                Conn::Cluster(c) => call.invoke_async::<Vec<i64>>(c).await,
            }
        };
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, invoke)
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
