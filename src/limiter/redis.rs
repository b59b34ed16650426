//! The shared limiter: the same exact sliding window as the in-memory one (its slots kept
//! in Redis), so every replica spends from one budget. A Lua script
//! (`sliding_window.lua`) decides and spends all of a call's limits atomically and returns
//! the slots that counted, from which [`decide`] computes the figures; concurrent calls
//! share script runs (see [`RedisLimiter`]).
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
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const SCRIPT: &str = concat!(
    include_str!("window_slots.lua"),
    include_str!("sliding_window.lua")
);
/// Settles a reservation on the same slots (rare: sent with EVAL, not batched).
const SETTLE: &str = concat!(include_str!("window_slots.lua"), include_str!("settle.lua"));

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

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// The Redis limiter. Connects lazily and reconnects on its own: a Redis that is down at
/// start-up or later makes checks fail fast with `Unavailable` (see the fallback modes in
/// `limiter::resilient`), never hang.
///
/// Concurrent checks against one plain Redis are coalesced: while a script run is in
/// flight, the calls that arrive meanwhile queue up and go together in the next one (each
/// still decided atomically, one after the other, by the same script), so a busy replica
/// makes a few round trips for many checks and an idle one adds no wait. On a Redis
/// Cluster each call goes alone: one script's keys must share a slot.
pub struct RedisLimiter {
    link: Arc<Link>,
    prefix: String,
    batches: std::sync::OnceLock<mpsc::Sender<Job>>,
}

/// The connection and the script, shared with the batching task.
struct Link {
    client: Client,
    conn: RwLock<Option<Conn>>,
    connecting: tokio::sync::Mutex<Option<Instant>>,
    script: redis::Script,
    timeout: Duration,
}

/// One call's keys and script arguments (see `sliding_window.lua`).
struct Call {
    keys: Vec<String>,
    args: Vec<i64>,
}

/// A call waiting for a batch, and where its reply goes.
struct Job {
    call: Call,
    done: oneshot::Sender<std::result::Result<Vec<i64>, String>>,
}

/// Calls in one script run at most.
const MAX_BATCH: usize = 128;
/// Script runs in flight at once (pipelined on the one connection).
const MAX_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
#[error("rate-limit batch failed: {0}")]
struct BatchFailed(String);

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

/// Whether `url` is a Redis URL Keygate can use, with a CA only for TLS (`rediss://`):
/// the configuration check and the limiter both ask here.
pub fn check_url(url: &str, with_ca: bool) -> Result<()> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(Error::invalid(
            "redis.url",
            "must start with redis:// or rediss:// (TLS)",
        ));
    }
    if with_ca && !url.starts_with("rediss://") {
        return Err(Error::invalid(
            "redis.ca_path",
            "is for TLS: redis.url must start with rediss://",
        ));
    }
    url.into_connection_info()
        .map(|_| ())
        .map_err(bad("redis.url"))
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
        check_url(url, target.ca_pem.is_some())?;
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
            link: Arc::new(Link {
                client,
                conn: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(None),
                script: redis::Script::new(SCRIPT),
                timeout,
            }),
            prefix: prefix.to_owned(),
            batches: std::sync::OnceLock::new(),
        })
    }

    /// The queue of the batching task (started on first use, inside the runtime); `None`
    /// on a cluster.
    fn batches(&self) -> Option<&mpsc::Sender<Job>> {
        if matches!(self.link.client, Client::Cluster(_)) {
            return None;
        }
        Some(self.batches.get_or_init(|| {
            let (tx, rx) = mpsc::channel(MAX_BATCH * MAX_IN_FLIGHT * 4);
            tokio::spawn(run_batches(self.link.clone(), rx));
            tx
        }))
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

/// Takes the queued calls in batches of up to [`MAX_BATCH`], at most [`MAX_IN_FLIGHT`]
/// script runs at once; ends when the limiter is dropped.
async fn run_batches(link: Arc<Link>, mut queue: mpsc::Receiver<Job>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Waiting for a free run first lets the calls arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // A call whose caller stopped waiting (its timeout ran out in the queue) is not
        // sent: it must not spend what the caller was told was not decided.
        let mut jobs: Vec<Job> = Some(first)
            .into_iter()
            .filter(|j| !j.done.is_closed())
            .collect();
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) if j.done.is_closed() => {}
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let link = link.clone();
        tokio::spawn(async move {
            let calls: Vec<&Call> = jobs.iter().map(|j| &j.call).collect();
            match link.invoke(&calls).await {
                Ok(replies) => {
                    let mut rest = replies.as_slice();
                    for job in jobs {
                        let reply = rest.split_first().and_then(|(&n, tail)| {
                            let n = usize::try_from(n).ok().filter(|&n| n <= tail.len())?;
                            let (mine, tail) = tail.split_at(n);
                            rest = tail;
                            Some(mine.to_vec())
                        });
                        let _ = job
                            .done
                            .send(reply.ok_or_else(|| "a short reply".to_owned()));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    for job in jobs {
                        let _ = job.done.send(Err(why.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

impl Link {
    /// Runs the script once for `calls`: each call's reply, prefixed by its length. The
    /// command is built in one buffer (a `ScriptInvocation` would allocate per argument
    /// and then copy them).
    async fn invoke(&self, calls: &[&Call]) -> Result<Vec<i64>> {
        let mut conn = self.connection().await?;
        let keys: usize = calls.iter().map(|c| c.keys.len()).sum();
        let args: usize = calls.iter().map(|c| c.args.len()).sum();
        let bytes: usize = calls
            .iter()
            .flat_map(|c| c.keys.iter())
            .map(|k| k.len())
            .sum::<usize>()
            + args * 14
            + 64;
        // `EVALSHA <sha>`, or `EVAL <body>` for a Redis that lost the script (which also
        // caches it there; on a cluster, on the node that owns the slot).
        let build = |load: bool| {
            let mut cmd = redis::Cmd::with_capacity(4 + keys + args, bytes);
            if load {
                cmd.arg("EVAL").arg(SCRIPT);
            } else {
                cmd.arg("EVALSHA").arg(self.script.get_hash());
            }
            cmd.arg(keys);
            for c in calls {
                for k in &c.keys {
                    cmd.arg(k.as_str());
                }
            }
            cmd.arg(calls.len());
            for c in calls {
                for a in &c.args {
                    cmd.arg(*a);
                }
            }
            cmd
        };
        let run = async {
            match conn.query(&build(false)).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    conn.query(&build(true)).await
                }
                other => other,
            }
        };
        tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| unavailable(TimedOut(self.timeout)))?
            .map_err(unavailable)
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
}

#[async_trait::async_trait]
impl RateLimiter for RedisLimiter {
    fn shared(&self) -> bool {
        true
    }

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
        let limits: Vec<(&str, &RateLimitSpec)> = scopes
            .iter()
            .flat_map(|s| s.limits.iter().map(move |l| (s.bucket, l)))
            .collect();
        if limits.is_empty() || actual == reserved {
            return Ok(actual.saturating_sub(reserved));
        }
        let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SETTLE).arg(2 * limits.len());
        for (bucket, l) in &limits {
            let key = self.key(group, bucket, &l.name);
            cmd.arg(format!("{key}:h")).arg(format!("{key}:l"));
        }
        cmd.arg(limits.len())
            .arg(now.0)
            .arg(at.0)
            .arg(i(reserved.saturating_sub(actual)))
            .arg(i(actual.saturating_sub(reserved)))
            .arg(i(overdraft));
        for (_, l) in &limits {
            let window_ms = l.window.as_millis() as i64;
            cmd.arg(i(l.limit))
                .arg(window_ms)
                .arg(slot_ms(window_ms, SLOTS));
        }
        let mut conn = self.link.connection().await?;
        let timeout = self.link.timeout;
        let took: i64 = tokio::time::timeout(timeout, conn.query(&cmd))
            .await
            .map_err(|_| unavailable(TimedOut(timeout)))?
            .map_err(unavailable)?;
        Ok(u64::try_from(took).unwrap_or(0))
    }

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
                fallback: false,
            });
        }
        let mut call = Call {
            keys: Vec::with_capacity(2 * limits.len()),
            args: Vec::with_capacity(4 + 3 * limits.len()),
        };
        call.args.extend([
            limits.len() as i64,
            now.0,
            i64::try_from(cost).unwrap_or(i64::MAX),
            i64::from(dry_run),
        ]);
        for (bucket, l) in &limits {
            let window_ms = l.window.as_millis() as i64;
            let key = self.key(group, bucket, &l.name);
            call.keys.push(format!("{key}:h"));
            call.keys.push(format!("{key}:l"));
            call.args.extend([
                i64::try_from(l.limit).unwrap_or(i64::MAX),
                window_ms,
                slot_ms(window_ms, SLOTS),
            ]);
        }
        let timeout = self.link.timeout;
        let reply: Vec<i64> = match self.batches() {
            Some(queue) => {
                let (done, answer) = oneshot::channel();
                let waited = tokio::time::timeout(timeout, async {
                    queue
                        .send(Job { call, done })
                        .await
                        .map_err(|_| BatchFailed("the batching task ended".into()))?;
                    answer
                        .await
                        .map_err(|_| BatchFailed("no answer".into()))?
                        .map_err(BatchFailed)
                })
                .await;
                waited
                    .map_err(|_| unavailable(TimedOut(timeout)))?
                    .map_err(unavailable)?
            }
            None => {
                let mut r = self.link.invoke(&[&call]).await?;
                if r.is_empty() {
                    return Err(Error::internal("empty reply from the rate-limit script"));
                }
                r.remove(0);
                r
            }
        };
        let malformed = || Error::internal("unexpected reply from the rate-limit script");
        let (&allowed, mut rest) = reply.split_first().ok_or_else(malformed)?;
        if allowed == -1 {
            return Err(unavailable(BatchFailed(
                "the script failed on this call's keys (are they Keygate's?)".into(),
            )));
        }
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
            if !allowed {
                // Refused by Redis, which is the truth: nothing left now, and a wait that is
                // surely enough (every slot leaves within the longest window).
                if let Some(st) = outcome.status.as_mut() {
                    st.remaining = 0;
                    st.retry_after = specs.iter().map(|l| l.window).max();
                }
            }
        }
        Ok(outcome)
    }
}
