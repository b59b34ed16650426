//! The benchmark runner: every scenario of Keygate's hot and cold paths against a no-op
//! tonic server, in one run on one machine, as a table and as JSON.
//!
//! ```text
//! cargo bench --bench keygate                          # everything (~3 minutes on 2 cores)
//! cargo bench --bench keygate -- --quick               # under a minute
//! cargo bench --bench keygate -- --scenario check_cached --scenario noop --duration 10
//! cargo bench --bench keygate -- --conns 4 --concurrency 32 --warmup 1
//! ```
//!
//! Method. Every server is a separate process — the real release `keygate` binary
//! (`CARGO_BIN_EXE_keygate`), or this bench re-executed as the no-op server — listening on
//! `127.0.0.1:0`, so each row's **server CPU per request** is that process's user + system
//! time over the measured window (`/proc/<pid>/stat`) divided by the requests answered in
//! it. The load generator is this process: `--conns` HTTP/2 connections (default 4) with
//! `--concurrency` calls in flight on each (default 32), each worker sending its next call
//! when the last returns (closed loop); after `--warmup` seconds, calls completing within
//! `--duration` seconds are counted; latency is an hdrhistogram in µs. The no-op server
//! (tonic with `grpc.health.v1` only, same tonic/hyper/h2 stack and server settings) is
//! measured first and last and its mean is each row's denominator, so drift over the run
//! touches every ratio alike. Rows count only the answer the scenario expects (ALLOW,
//! RATE_LIMITED, …); anything else is counted as `other` and printed.
//!
//! Scenarios:
//! - `noop` — the ceiling.
//! - `check_cached` — one hot key, ALLOW, in-memory limiter with a huge limit.
//! - `check_many_keys` — 100k distinct keys (10k with `--quick`), all cached, drawn from a
//!   Zipf distribution (s = 1). The rows are written straight into the SQLite file with
//!   the cheapest argon2 parameters (set-up in seconds; a cached check never verifies).
//!   Also reports the server's RSS growth per cached key.
//! - `check_rate_limited` — a key over its limit: the DENY path.
//! - `check_uncached` — a store lookup and an argon2 verify on every call: each call
//!   presents a known key id with a secret never seen before (so nothing can be cached);
//!   the argon2 parameters are in the row.
//! - `check_redis` — the Redis limiter on the machine's Redis (127.0.0.1:6379, or
//!   `KG_BENCH_REDIS_URL`), unique key prefix.
//! - `ext_authz` — Envoy's `envoy.service.auth.v3.Authorization/Check` message sent straight
//!   to Keygate's adapter (`benches/envoy.rs` measures a real Envoy in front).
//! - `cold_start` — a fresh replica on a SQLite file holding 10k keys (1k with `--quick`),
//!   hashed with the default argon2 parameters:
//!   time from spawn to SERVING, then every key checked once (first-seen keys verified per
//!   second) while a warm key is checked alongside (its p99).
//! - `open_loop` — `check_cached` at a fixed arrival rate of half the closed-loop peak,
//!   latency measured from each call's scheduled start (no coordinated omission).
//!
//! Results go to `$CARGO_TARGET_DIR/bench/results.json` (else `target/bench/`). The runner
//! never fails on a figure; it fails (non-zero exit) when a selected scenario cannot run.
// The helpers the other benches share, until they join this runner.
#[path = "../common/mod.rs"]
mod common;

use common::{authed, connect, BoxError};
use envoy_types::pb::envoy::service::auth::v3 as ext;
use hdrhistogram::Histogram;
use keygate::domain::key;
use keygate::grpc::pb::{
    self, authorize_client::AuthorizeClient, key_admin_client::KeyAdminClient,
};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const SCENARIOS: &[&str] = &[
    "noop",
    "check_cached",
    "check_many_keys",
    "check_rate_limited",
    "check_uncached",
    "check_redis",
    "ext_authz",
    "cold_start",
    "open_loop",
];

// ---------------------------------------------------------------------------------------
// Settings.

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    scenarios: Vec<String>,
    conns: usize,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    many_keys: usize,
    cold_keys: usize,
}

fn parse_args() -> Result<Settings, BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut s = Settings {
        quick,
        scenarios: vec![],
        conns: 4,
        concurrency: 32,
        duration: Duration::from_secs(if quick { 2 } else { 5 }),
        warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
        many_keys: if quick { 10_000 } else { 100_000 },
        cold_keys: if quick { 1_000 } else { 10_000 },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String, BoxError> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value").into())
        };
        let positive = |name: &str, v: String| -> Result<usize, BoxError> {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: {v:?} is not a positive integer").into())
        };
        let seconds = |name: &str, v: String| -> Result<Duration, BoxError> {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0 && *n < 3600.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("{name}: {v:?} is not a number of seconds").into())
        };
        match a.as_str() {
            "--quick" | "--bench" => {}
            "--scenario" => {
                let v = value(a)?;
                if !SCENARIOS.contains(&v.as_str()) {
                    return Err(format!("--scenario {v:?}: one of {}", SCENARIOS.join(", ")).into());
                }
                s.scenarios.push(v);
            }
            "--conns" => s.conns = positive(a, value(a)?)?,
            "--concurrency" => s.concurrency = positive(a, value(a)?)?,
            "--duration" => s.duration = seconds(a, value(a)?)?,
            "--warmup" => s.warmup = seconds(a, value(a)?)?,
            "--keys" => s.many_keys = positive(a, value(a)?)?,
            "--cold-keys" => s.cold_keys = positive(a, value(a)?)?,
            other if other.starts_with("--") => {
                return Err(format!(
                    "unknown option {other}; options: --quick --scenario NAME --conns N \
                     --concurrency N --duration S --warmup S --keys N --cold-keys N"
                )
                .into())
            }
            _ => {} // a filter cargo passes through
        }
    }
    if s.scenarios.is_empty() {
        s.scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Server processes.

const START_TIMEOUT: Duration = Duration::from_secs(120);
const LOG_TAIL: usize = 20;

/// CPU time (user + system, all threads) a process has used, from `/proc/<pid>/stat`.
fn cpu_used(pid: u32) -> Option<Duration> {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000) / ticks,
    ))
}

/// Resident memory of a process in bytes (`VmRSS`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn keygate_binary() -> Result<PathBuf, BoxError> {
    option_env!("CARGO_BIN_EXE_keygate")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| "CARGO_BIN_EXE_keygate is not set: run through `cargo bench`".into())
}

/// A server process under test.
struct Server {
    name: String,
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// From spawn to its "serving" line.
    started_in: Duration,
    /// Runs under `KG_BENCH_WRAP` (a profiler).
    wrapped: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Spawns `cmd` and waits for `addr_of` to find the listen address in a line of the
    /// stream it writes (`stderr` for keygate's JSON log, `stdout` for the no-op server).
    async fn spawn(
        name: &str,
        mut cmd: Command,
        from_stdout: bool,
        addr_of: fn(&str) -> Option<String>,
    ) -> Result<Server, BoxError> {
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        if from_stdout {
            cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("server exited at once")?;
        let stream: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if from_stdout {
            Box::new(child.stdout.take().ok_or("no stdout")?)
        } else {
            Box::new(child.stderr.take().ok_or("no stderr")?)
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let sink = tail.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = addr_of(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut t = sink.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == LOG_TAIL {
                    t.pop_front();
                }
                // Admin tokens are the bench's own; keys never reach the log.
                t.push_back(line);
            }
        });
        let addr = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(a)) => a,
            _ => {
                let tail = tail.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return Err(format!(
                    "{name} did not start within {START_TIMEOUT:?}; last lines:\n{}",
                    tail.into_iter().collect::<Vec<_>>().join("\n")
                )
                .into());
            }
        };
        Ok(Server {
            name: name.to_owned(),
            child,
            pid,
            addr: addr.parse()?,
            started_in: started.elapsed(),
            tail,
            wrapped: false,
        })
    }

    /// Keygate on SQLite file `db`, with `env` on top of the bench's defaults.
    async fn keygate(
        name: &str,
        db: &Path,
        token: &str,
        env: &[(&str, String)],
    ) -> Result<Server, BoxError> {
        // KG_BENCH_WRAP="valgrind --tool=callgrind …" runs keygate under a profiler
        // (scripts/profile.sh); the environment is cleared either way.
        let wrap: Vec<String> = std::env::var("KG_BENCH_WRAP")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(keygate_binary()?);
                c
            }
            None => Command::new(keygate_binary()?),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYGATE_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("KEYGATE_LISTEN", "127.0.0.1:0")
            .env("KEYGATE_METRICS_ENABLED", "false")
            .env("KEYGATE_LOG__FORMAT", "json")
            .env("KEYGATE_LOG__FILTER", "warn,keygate=info")
            .env("KEYGATE_ADMIN_TOKEN", token)
            .env("KEYGATE_CACHE__MAX_ENTRIES", "1000000")
            .env("KEYGATE_CACHE__TTL_SECS", "3600");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut server = Self::spawn(name, cmd, false, |line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "keygate serving" || v["message"] == "keygate serving")
                .then(|| {
                    v["fields"]["listen"]
                        .as_str()
                        .or(v["listen"].as_str())
                        .map(str::to_owned)
                })
                .flatten()
        })
        .await?;
        server.wrapped = !wrap.is_empty();
        Ok(server)
    }

    /// This bench re-executed as the no-op tonic server.
    async fn noop() -> Result<Server, BoxError> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve-noop");
        Self::spawn("noop", cmd, true, |line| {
            line.strip_prefix("noop serving ").map(str::to_owned)
        })
        .await
    }

    fn cpu(&self) -> Option<Duration> {
        cpu_used(self.pid)
    }

    async fn stop(mut self) -> Result<(), BoxError> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    eprintln!("{} exited with {status}; last lines:", self.name);
                    for l in tail {
                        eprintln!("  {l}");
                    }
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                Err(format!("{} ignored SIGTERM", self.name).into())
            }
        }
    }
}

/// The no-op ceiling, run as `keygate-bench --serve-noop`: prints its address, serves the
/// health service until SIGTERM. Same server settings as Keygate (TCP_NODELAY).
fn serve_noop() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("noop serving {}", listener.local_addr()?);
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                term.recv().await;
            })
            .await?;
        Ok::<(), BoxError>(())
    })
}

// ---------------------------------------------------------------------------------------
// Provisioning.

fn per(limit: u64, seconds: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: "bench".into(),
        limit,
        window: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

struct Admin {
    client: KeyAdminClient<Channel>,
    token: String,
}

impl Admin {
    async fn new(addr: SocketAddr, token: &str) -> Result<Admin, BoxError> {
        Ok(Admin {
            client: KeyAdminClient::new(connect(addr).await?),
            token: token.to_owned(),
        })
    }

    async fn tenant(&mut self, id: &str) -> Result<(), BoxError> {
        let tenant = Some(pb::Tenant {
            id: id.into(),
            display_name: id.into(),
            policy: Some(pb::TenantPolicy::default()),
            ..Default::default()
        });
        self.client
            .upsert_tenant(authed(pb::UpsertTenantRequest { tenant }, &self.token)?)
            .await?;
        Ok(())
    }

    async fn key(&mut self, tenant: &str, limit: pb::RateLimit) -> Result<String, BoxError> {
        let req = pb::CreateKeyRequest {
            tenant_id: tenant.into(),
            name: "bench".into(),
            rate_limits: vec![limit],
            ..Default::default()
        };
        Ok(self
            .client
            .create_key(authed(req, &self.token)?)
            .await?
            .into_inner()
            .secret)
    }
}

/// `n` new keys of `tenant` (default prefix `kg_`) written straight into the SQLite file
/// `db`, 500 rows a transaction, hashed here with argon2id `params` on every core (the PHC
/// string carries the parameters, so the server verifies with them). Far faster than
/// `CreateKey` for 100k keys, and the rows are exactly what `CreateKey` writes.
async fn bulk_keys(
    db: &Path,
    tenant: &str,
    n: usize,
    params: argon2::Params,
) -> Result<Vec<String>, BoxError> {
    use keygate::store::entities::api_keys;
    use sea_orm::{ActiveValue::Set, EntityTrait, TransactionTrait};
    let limits = serde_json::to_string(&[keygate::domain::RateLimitSpec {
        name: "bench".into(),
        limit: 1_000_000_000,
        window: Duration::from_secs(60),
    }])?;
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let mut hashing = Vec::new();
    for part in 0..cpus {
        let (params, count) = (params.clone(), n / cpus + usize::from(part < n % cpus));
        hashing.push(tokio::task::spawn_blocking(move || {
            use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
            let argon =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            (0..count)
                .map(|_| {
                    let lookup = key::random_base62(key::LOOKUP_LEN);
                    let full = key::assemble("kg_", &lookup, &key::random_base62(key::SECRET_LEN));
                    let salt = SaltString::generate(&mut OsRng);
                    let phc = argon
                        .hash_password(full.as_bytes(), &salt)
                        .map(|h| h.to_string())
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((full, lookup, phc))
                })
                .collect::<Result<Vec<_>, String>>()
        }));
    }
    let mut made = Vec::with_capacity(n);
    for h in hashing {
        made.extend(h.await??);
    }
    let conn = keygate::store::connect(
        &format!("sqlite://{}", db.display()),
        2,
        Duration::from_secs(30),
    )
    .await?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    for chunk in made.chunks(500) {
        let txn = conn.begin().await?;
        let rows = chunk.iter().map(|(_, lookup, phc)| api_keys::ActiveModel {
            id: Set(format!("key_{}", key::random_base62(20))),
            tenant_id: Set(tenant.to_owned()),
            name: Set("bench".into()),
            environment: Set(String::new()),
            lookup_id: Set(lookup.clone()),
            key_prefix: Set("kg_".into()),
            display_prefix: Set(lookup[..key::DISPLAY_PREFIX_LEN].to_owned()),
            secret_hash: Set(phc.clone()),
            scopes: Set("[]".into()),
            ip_allowlist: Set("[]".into()),
            rate_limits: Set(limits.clone()),
            metadata: Set("{}".into()),
            enabled: Set(true),
            create_time: Set(now),
            update_time: Set(now),
            expire_time: Set(None),
            last_used_time: Set(None),
            use_count: Set(0),
            revoke_time: Set(None),
            revoke_reason: Set(None),
            rotated_from: Set(None),
            quota: Set(None),
        });
        api_keys::Entity::insert_many(rows).exec(&txn).await?;
        txn.commit().await?;
    }
    Ok(made.into_iter().map(|(full, _, _)| full).collect())
}

/// Checks every request once with `inflight` calls at a time; errors if any is not `want`.
async fn check_all(
    addr: SocketAddr,
    reqs: Arc<Vec<pb::CheckRequest>>,
    inflight: usize,
    want: pb::Reason,
) -> Result<Duration, BoxError> {
    let channel = connect(addr).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let (reqs, next) = (reqs.clone(), next.clone());
        let mut c = AuthorizeClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = reqs.get(i) else {
                    return Ok::<(), BoxError>(());
                };
                let got = c.check(r.clone()).await?.into_inner().reason;
                if got != want as i32 {
                    return Err(format!("check {i}: reason {got}, expected {want:?}").into());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

fn check_req(k: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: k.to_owned(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Load.

/// A cheap per-worker random source (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s = 1) over `n` ranks: the cumulative weights, sampled by binary search.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut acc = 0.0;
        Zipf(
            (1..=n)
                .map(|k| {
                    acc += 1.0 / k as f64;
                    acc
                })
                .collect(),
        )
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit() * self.0[self.0.len() - 1];
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

/// What a scenario sends, and which answer counts as the expected one.
#[derive(Clone)]
enum Load {
    Noop,
    Check {
        reqs: Arc<Vec<pb::CheckRequest>>,
        zipf: Option<Arc<Zipf>>,
        want: pb::Reason,
    },
    /// A known key id with a fresh secret every call (store lookup + argon2 verify).
    FreshSecret {
        head: String,
        lookup: String,
    },
    ExtAuthz(Arc<ext::CheckRequest>),
}

enum Client {
    Noop(HealthClient<Channel>),
    Check(AuthorizeClient<Channel>),
    Ext(ext::authorization_client::AuthorizationClient<Channel>),
}

impl Load {
    fn client(&self, ch: Channel) -> Client {
        match self {
            Load::Noop => Client::Noop(HealthClient::new(ch)),
            Load::ExtAuthz(_) => {
                Client::Ext(ext::authorization_client::AuthorizationClient::new(ch))
            }
            _ => Client::Check(AuthorizeClient::new(ch)),
        }
    }

    /// One call: `Ok(true)` when the answer is the expected one.
    async fn call(&self, c: &mut Client, rng: &mut Rng) -> Result<bool, tonic::Status> {
        match (self, c) {
            (Load::Noop, Client::Noop(h)) => h
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.get_ref().status == 1),
            (Load::Check { reqs, zipf, want }, Client::Check(a)) => {
                let i = zipf.as_ref().map_or(0, |z| z.sample(rng));
                a.check(reqs[i].clone())
                    .await
                    .map(|r| r.get_ref().reason == *want as i32)
            }
            (Load::FreshSecret { head, lookup }, Client::Check(a)) => {
                let k = key::assemble(head, lookup, &key::random_base62(key::SECRET_LEN));
                a.check(check_req(&k))
                    .await
                    .map(|r| r.get_ref().reason == pb::Reason::KeyNotFound as i32)
            }
            (Load::ExtAuthz(req), Client::Ext(e)) => e
                .check(req.as_ref().clone())
                .await
                .map(|r| r.get_ref().status.as_ref().is_some_and(|s| s.code == 0)),
            _ => Err(tonic::Status::internal("load and client do not match")),
        }
    }
}

#[derive(Clone)]
struct Tally {
    latency_us: Histogram<u64>,
    other: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            other: 0,
            errors: 0,
            first_error: None,
        }
    }
    fn merge(&mut self, o: Tally) {
        self.latency_us.add(&o.latency_us).expect("same bounds");
        self.other += o.other;
        self.errors += o.errors;
        self.first_error = self.first_error.take().or(o.first_error);
    }
    fn record(&mut self, outcome: Result<bool, tonic::Status>, took: Duration) {
        match outcome {
            Ok(true) => {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
            }
            Ok(false) => self.other += 1,
            Err(s) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
            }
        }
    }
}

/// A measured run: what was answered, and the server's CPU over the window.
struct Measured {
    tally: Tally,
    secs: f64,
    server_cpu: Option<Duration>,
}

impl Measured {
    /// A window's tally, with the server's CPU between the two readings (when both exist).
    fn new(
        tally: Tally,
        s: &Settings,
        cpu_start: Option<Duration>,
        cpu_end: Option<Duration>,
    ) -> Self {
        Measured {
            tally,
            secs: s.duration.as_secs_f64(),
            server_cpu: cpu_start.zip(cpu_end).map(|(a, b)| b.saturating_sub(a)),
        }
    }

    fn rps(&self) -> f64 {
        self.tally.latency_us.len() as f64 / self.secs
    }
    fn cpu_us_per_req(&self) -> Option<f64> {
        let n = self.tally.latency_us.len();
        self.server_cpu
            .filter(|_| n > 0)
            .map(|c| c.as_secs_f64() * 1e6 / n as f64)
    }
}

/// Closed loop against `server` for the settings' duration after warm-up.
async fn closed_loop(server: &Server, load: &Load, s: &Settings) -> Result<Measured, BoxError> {
    let mut clients = Vec::new();
    for _ in 0..s.conns {
        let ch = connect(server.addr).await?;
        for _ in 0..s.concurrency {
            clients.push(load.client(ch.clone()));
        }
    }
    let start = Instant::now() + s.warmup;
    let end = start + s.duration;
    let pid = server.pid;
    let callgrind =
        server.wrapped && std::env::var("KG_BENCH_WRAP").is_ok_and(|w| w.contains("callgrind"));
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        if callgrind {
            // Count only the measured window: instrumentation on now, off at the end
            // (the server runs with --instr-atstart=no and dumps when it exits).
            callgrind_control("--instr=on", pid).await;
        }
        cpu_used(pid)
    });
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let load = load.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(i as u64 + 1);
                let mut t = Tally::new();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let outcome = load.call(&mut c, &mut rng).await;
                    let done = Instant::now();
                    if done >= start && done <= end {
                        t.record(outcome, done - sent);
                    }
                }
                t
            })
        })
        .collect();
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await?);
    }
    let cpu_end = server.cpu();
    if callgrind {
        callgrind_control("--instr=off", pid).await;
        println!(
            "callgrind: pid {pid} counted the measured window: {} answered calls \
             (+{} other, {} errors)",
            tally.latency_us.len(),
            tally.other,
            tally.errors
        );
    }
    Ok(Measured::new(tally, s, cpu_at_start.await?, cpu_end))
}

/// `callgrind_control <flag> <pid>` (instrumentation of a profiled server on or off).
async fn callgrind_control(flag: &str, pid: u32) {
    match Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .await
    {
        Ok(s) if s.success() => {}
        other => eprintln!("callgrind_control {flag} {pid}: {other:?}"),
    }
}

/// Open loop: call `i` is due at `t0 + i / rate` whatever happened to earlier calls, and
/// its latency is measured from that scheduled time, so a stall counts against every call
/// it delays (no coordinated omission). A pool of workers (connections × concurrency)
/// takes the due calls in order; it only limits the rate if every worker is busy, which
/// then shows as latency.
async fn open_loop(
    server: &Server,
    load: &Load,
    rate: f64,
    s: &Settings,
) -> Result<Measured, BoxError> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * (s.warmup + s.duration).as_secs_f64()) as usize;
    let t0 = Instant::now() + Duration::from_millis(100);
    let measure_from = t0 + s.warmup;
    let next = Arc::new(AtomicUsize::new(0));
    let pid = server.pid;
    let cpu_at_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        cpu_used(pid)
    });
    let mut workers = Vec::new();
    for c in 0..s.conns {
        let ch = connect(server.addr).await?;
        for w in 0..s.concurrency {
            let mut client = load.client(ch.clone());
            let (load, next) = (load.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut rng = Rng::new((c * 1000 + w + 1) as u64);
                let mut t = Tally::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return t;
                    }
                    let due = t0 + interval.mul_f64(i as f64);
                    // tokio's timer ticks in milliseconds: wake up to 1 ms early rather
                    // than late.
                    let early = Duration::from_millis(1);
                    if due > Instant::now() + early {
                        tokio::time::sleep_until((due - early).into()).await;
                    }
                    // Late: measured from when it was due (the backlog counts). Early:
                    // from when it was sent.
                    let from = Instant::now().min(due);
                    let outcome = load.call(&mut client, &mut rng).await;
                    if due >= measure_from {
                        t.record(outcome, from.elapsed());
                    }
                }
            }));
        }
    }
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await?);
    }
    let cpu_end = server.cpu();
    Ok(Measured::new(tally, s, cpu_at_start.await?, cpu_end))
}

// ---------------------------------------------------------------------------------------
// Report.

struct Row {
    scenario: String,
    measured: Option<Measured>,
    notes: String,
    extra: serde_json::Value,
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn print_rows(rows: &[Row], noop_rps: Option<f64>) {
    println!(
        "\n{:<20} {:>9} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}  notes",
        "scenario", "req/s", "×noop", "p50µs", "p90µs", "p99µs", "p99.9µs", "cpuµs/r", "other"
    );
    for r in rows {
        match &r.measured {
            Some(m) => {
                let h = &m.tally.latency_us;
                let [p50, p90, p99, p999] = [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q));
                let ratio = noop_rps.filter(|n| *n > 0.0).map(|n| m.rps() / n);
                println!(
                    "{:<20} {:>9.0} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}  {}",
                    r.scenario,
                    m.rps(),
                    fmt_opt(ratio, 2),
                    p50,
                    p90,
                    p99,
                    p999,
                    fmt_opt(m.cpu_us_per_req(), 1),
                    m.tally.other + m.tally.errors,
                    r.notes
                );
                if let Some(e) = &m.tally.first_error {
                    println!("{:<20} first error: {e}", "");
                }
            }
            None => println!("{:<20} {:>9}  {}", r.scenario, "-", r.notes),
        }
    }
}

fn row_json(r: &Row, noop_rps: Option<f64>) -> serde_json::Value {
    let mut v = json!({ "scenario": r.scenario, "notes": r.notes, "extra": r.extra });
    if let Some(m) = &r.measured {
        let h = &m.tally.latency_us;
        v["rps"] = json!(m.rps());
        v["ratio_to_noop"] = json!(noop_rps.filter(|n| *n > 0.0).map(|n| m.rps() / n));
        v["ok"] = json!(h.len());
        v["other"] = json!(m.tally.other);
        v["errors"] = json!(m.tally.errors);
        v["first_error"] = json!(m.tally.first_error);
        for (name, q) in [
            ("p50_us", 0.5),
            ("p90_us", 0.9),
            ("p99_us", 0.99),
            ("p999_us", 0.999),
        ] {
            v[name] = json!(h.value_at_quantile(q));
        }
        v["max_us"] = json!(h.max());
        v["server_cpu_us_per_request"] = json!(m.cpu_us_per_req());
    }
    v
}

// ---------------------------------------------------------------------------------------
// The run.

fn wants(s: &Settings, name: &str) -> bool {
    s.scenarios.iter().any(|x| x == name)
}

async fn run(s: Settings) -> Result<(), BoxError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!("keygate bench: {cpus} CPUs ({model})");
    println!(
        "load: {} conns × {} in flight, warm-up {:?}, measure {:?}{}",
        s.conns,
        s.concurrency,
        s.warmup,
        s.duration,
        if s.quick { " (--quick)" } else { "" }
    );
    println!(
        "servers are separate processes; the load generator shares the cores with them, \
         so compare ratios; cpuµs/r is the server's own CPU per answered call"
    );
    let dir = tempfile::tempdir()?;
    let token = format!("bench-{}", key::random_base62(32));
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let argon = keygate::hashing::Argon2Config::default();

    // The ceiling, measured first and last.
    let noop = Server::noop().await?;
    let mut noop_runs: Vec<f64> = Vec::new();
    let first_noop = closed_loop(&noop, &Load::Noop, &s).await?;
    noop_runs.push(first_noop.rps());
    rows.push(Row {
        scenario: "noop".into(),
        measured: Some(first_noop),
        notes: "tonic + grpc.health.v1 only (first run)".into(),
        extra: json!({}),
    });

    // One keygate for the scenarios that share a configuration.
    let main_db = dir.path().join("main.db");
    let kg = Server::keygate(
        "keygate",
        &main_db,
        &token,
        &[("KEYGATE_LIMITS__FAILED_CHECKS_PER_IP", "0".into())],
    )
    .await?;
    println!(
        "keygate started in {:.0} ms (spawn to SERVING, fresh SQLite)",
        kg.started_in.as_secs_f64() * 1e3
    );
    let mut admin = Admin::new(kg.addr, &token).await?;
    admin.tenant("bench").await?;
    let hot = admin.key("bench", per(1_000_000_000, 60)).await?;
    let limited = admin.key("bench", per(1, 3600)).await?;
    check_all(
        kg.addr,
        Arc::new(vec![check_req(&hot); 5]),
        1,
        pb::Reason::Ok,
    )
    .await?;
    let cached = Load::Check {
        reqs: Arc::new(vec![check_req(&hot)]),
        zipf: None,
        want: pb::Reason::Ok,
    };
    let mut peak = None;
    if wants(&s, "check_cached") || wants(&s, "open_loop") {
        let m = closed_loop(&kg, &cached, &s).await?;
        peak = Some(m.rps());
        rows.push(Row {
            scenario: "check_cached".into(),
            measured: Some(m),
            notes: "one hot key, ALLOW, memory limiter".into(),
            extra: json!({}),
        });
    }
    if wants(&s, "open_loop") {
        let rate = peak.unwrap_or(1000.0) / 2.0;
        let m = open_loop(&kg, &cached, rate, &s).await?;
        rows.push(Row {
            scenario: "open_loop".into(),
            measured: Some(m),
            notes: format!("check_cached at {rate:.0}/s = 50% of peak, from scheduled start"),
            extra: json!({ "rate": rate }),
        });
    }
    if wants(&s, "check_rate_limited") {
        // Spend its one call; every later call is RATE_LIMITED.
        let _ = check_all(
            kg.addr,
            Arc::new(vec![check_req(&limited)]),
            1,
            pb::Reason::Ok,
        )
        .await;
        let load = Load::Check {
            reqs: Arc::new(vec![check_req(&limited)]),
            zipf: None,
            want: pb::Reason::RateLimited,
        };
        rows.push(Row {
            scenario: "check_rate_limited".into(),
            measured: Some(closed_loop(&kg, &load, &s).await?),
            notes: "DENY RATE_LIMITED (1 per hour, spent)".into(),
            extra: json!({}),
        });
    }
    if wants(&s, "check_uncached") {
        let p = key::parse(&hot).map_err(|e| e.describe())?;
        let load = Load::FreshSecret {
            head: p.head.to_owned(),
            lookup: p.lookup_id.to_owned(),
        };
        rows.push(Row {
            scenario: "check_uncached".into(),
            measured: Some(closed_loop(&kg, &load, &s).await?),
            notes: format!(
                "lookup + argon2id verify per call (m={} KiB, t={}, p={})",
                argon.memory_kib, argon.iterations, argon.parallelism
            ),
            extra: json!({ "argon2": { "memory_kib": argon.memory_kib,
                "iterations": argon.iterations, "parallelism": argon.parallelism } }),
        });
    }
    if wants(&s, "ext_authz") {
        let mut headers = HashMap::new();
        headers.insert("authorization".to_owned(), format!("Bearer {hot}"));
        let req = ext::CheckRequest {
            attributes: Some(ext::AttributeContext {
                request: Some(ext::attribute_context::Request {
                    http: Some(ext::attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/v1/orders".into(),
                        headers,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        rows.push(Row {
            scenario: "ext_authz".into(),
            measured: Some(closed_loop(&kg, &Load::ExtAuthz(Arc::new(req)), &s).await?),
            notes: "Envoy's CheckRequest straight to the adapter, hot key".into(),
            extra: json!({}),
        });
    }
    if wants(&s, "check_many_keys") {
        let rss_before = rss_bytes(kg.pid);
        // Cheapest argon2 (8 KiB, 1 pass): set-up in seconds; cached checks never verify.
        let cheap = argon2::Params::new(8, 1, 1, None).map_err(|e| e.to_string())?;
        let keys = bulk_keys(&main_db, "bench", s.many_keys, cheap).await?;
        let reqs: Arc<Vec<pb::CheckRequest>> =
            Arc::new(keys.iter().map(|k| check_req(k)).collect());
        let rss_imported = rss_bytes(kg.pid);
        // First sight of every key: a store lookup each, then all are cached.
        let warm = check_all(kg.addr, reqs.clone(), 64, pb::Reason::Ok).await?;
        let rss_cached = rss_bytes(kg.pid);
        let per_key = match (rss_imported, rss_cached) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / keys.len() as f64),
            _ => None,
        };
        let load = Load::Check {
            reqs,
            zipf: Some(Arc::new(Zipf::new(keys.len()))),
            want: pb::Reason::Ok,
        };
        rows.push(Row {
            scenario: "check_many_keys".into(),
            measured: Some(closed_loop(&kg, &load, &s).await?),
            notes: format!(
                "{} cached keys (own format), Zipf s=1; RSS +{} B per cached key (warmed in {:.1} s)",
                keys.len(),
                fmt_opt(per_key, 0),
                warm.as_secs_f64()
            ),
            extra: json!({ "keys": keys.len(), "rss_bytes_per_cached_key": per_key,
                "rss_before_import": rss_before, "rss_after_import": rss_imported,
                "rss_after_caching": rss_cached, "warm_secs": warm.as_secs_f64() }),
        });
    }
    kg.stop().await?;

    if wants(&s, "check_redis") {
        let url =
            std::env::var("KG_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("kgbench-{}", key::random_base62(8));
        match Server::keygate(
            "keygate-redis",
            &dir.path().join("redis.db"),
            &token,
            &[
                ("KEYGATE_RATE_LIMITER", "redis".into()),
                ("KEYGATE_REDIS_URL", url.clone()),
                ("KEYGATE_REDIS_KEY_PREFIX", prefix),
                ("KEYGATE_ON_LIMITER_ERROR", "deny".into()),
            ],
        )
        .await
        {
            Ok(rk) => {
                let mut a = Admin::new(rk.addr, &token).await?;
                a.tenant("bench").await?;
                let k = a.key("bench", per(1_000_000_000, 60)).await?;
                let ok =
                    check_all(rk.addr, Arc::new(vec![check_req(&k); 3]), 1, pb::Reason::Ok).await;
                match ok {
                    Ok(_) => {
                        let load = Load::Check {
                            reqs: Arc::new(vec![check_req(&k)]),
                            zipf: None,
                            want: pb::Reason::Ok,
                        };
                        rows.push(Row {
                            scenario: "check_redis".into(),
                            measured: Some(closed_loop(&rk, &load, &s).await?),
                            notes: format!("hot key, Redis limiter at {url}"),
                            extra: json!({}),
                        });
                    }
                    Err(e) => failures.push(format!("check_redis: Redis at {url}: {e}")),
                }
                rk.stop().await?;
            }
            Err(e) => failures.push(format!("check_redis: {e}")),
        }
    }

    if wants(&s, "cold_start") {
        let db = dir.path().join("cold.db");
        let maker = Server::keygate("keygate-provision", &db, &token, &[]).await?;
        let mut a = Admin::new(maker.addr, &token).await?;
        a.tenant("bench").await?;
        let made = Instant::now();
        // Hashed with the server's default parameters: each first sight is a real verify.
        let params =
            argon2::Params::new(argon.memory_kib, argon.iterations, argon.parallelism, None)
                .map_err(|e| e.to_string())?;
        let keys = bulk_keys(&db, "bench", s.cold_keys, params).await?;
        let warm_key = a.key("bench", per(1_000_000_000, 60)).await?;
        println!(
            "cold_start: {} keys created in {:.1} s",
            keys.len(),
            made.elapsed().as_secs_f64()
        );
        maker.stop().await?;
        let fresh = Server::keygate("keygate-fresh", &db, &token, &[]).await?;
        let to_serving = fresh.started_in;
        check_all(
            fresh.addr,
            Arc::new(vec![check_req(&warm_key)]),
            1,
            pb::Reason::Ok,
        )
        .await?;
        // Warm probe alongside the flood of first-seen keys.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let ch = connect(fresh.addr).await?;
            let stop = stop.clone();
            let req = check_req(&warm_key);
            tokio::spawn(async move {
                let mut t = Tally::new();
                let mut c = AuthorizeClient::new(ch);
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = c
                        .check(req.clone())
                        .await
                        .map(|r| r.get_ref().reason == pb::Reason::Ok as i32);
                    t.record(r, sent.elapsed());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                t
            })
        };
        let cpu0 = fresh.cpu();
        let reqs = Arc::new(keys.iter().map(|k| check_req(k)).collect::<Vec<_>>());
        let took = check_all(fresh.addr, reqs, s.conns * s.concurrency, pb::Reason::Ok).await?;
        let cpu = match (cpu0, fresh.cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        stop.store(true, Ordering::Relaxed);
        let warm = probe.await?;
        let per_sec = keys.len() as f64 / took.as_secs_f64();
        let warm_p99 = warm.latency_us.value_at_quantile(0.99);
        let m = Measured {
            tally: warm,
            secs: took.as_secs_f64(),
            server_cpu: None,
        };
        rows.push(Row {
            scenario: "cold_start".into(),
            measured: None,
            notes: format!(
                "{} first-seen keys verified at {per_sec:.0}/s; warm key p99 {:.1} ms \
                 meanwhile ({} probes); spawn to SERVING {:.0} ms; server CPU {} µs per \
                 first-seen key",
                keys.len(),
                warm_p99 as f64 / 1e3,
                m.tally.latency_us.len(),
                to_serving.as_secs_f64() * 1e3,
                fmt_opt(cpu.map(|c| c.as_secs_f64() * 1e6 / keys.len() as f64), 0)
            ),
            extra: json!({ "keys": keys.len(), "first_seen_per_sec": per_sec,
                "warm_p99_us": warm_p99, "warm_p50_us": m.tally.latency_us.value_at_quantile(0.5),
                "warm_probes": m.tally.latency_us.len(), "warm_errors": m.tally.errors + m.tally.other,
                "spawn_to_serving_ms": to_serving.as_secs_f64() * 1e3,
                "argon2": { "memory_kib": argon.memory_kib, "iterations": argon.iterations,
                    "parallelism": argon.parallelism } }),
        });
        fresh.stop().await?;
    }

    let last_noop = closed_loop(&noop, &Load::Noop, &s).await?;
    noop_runs.push(last_noop.rps());
    rows.push(Row {
        scenario: "noop".into(),
        measured: Some(last_noop),
        notes: "tonic + grpc.health.v1 only (last run)".into(),
        extra: json!({}),
    });
    noop.stop().await?;
    let mean_noop = noop_runs.iter().sum::<f64>() / noop_runs.len() as f64;
    let noop_rps = Some(mean_noop);
    print_rows(&rows, noop_rps);
    println!(
        "\n×noop: req/s over the mean of the two noop runs ({:.0} req/s)",
        mean_noop
    );

    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("results.json");
    let summary = json!({
        "machine": { "cpus": cpus, "model": model },
        "settings": { "quick": s.quick, "conns": s.conns, "concurrency": s.concurrency,
            "warmup_secs": s.warmup.as_secs_f64(), "duration_secs": s.duration.as_secs_f64() },
        "noop_rps_mean": noop_rps,
        "rows": rows.iter().map(|r| row_json(r, noop_rps)).collect::<Vec<_>>(),
        "failures": failures,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("results: {}", path.display());
    if !failures.is_empty() {
        return Err(format!("scenarios that could not run:\n  {}", failures.join("\n  ")).into());
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--serve-noop") {
        return serve_noop();
    }
    let settings = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(settings))
}
