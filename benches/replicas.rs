//! What running several replicas costs: the Redis rate limiter against the in-memory one,
//! and how long a revocation takes to reach another replica.
//!
//! Run with `cargo bench --bench replicas` (add `-- --quick`, or `KG_BENCH_SECS=1`, for a
//! short run). It prints figures and never fails on them. It needs Redis on
//! `127.0.0.1:6379` (part 1) and PostgreSQL on `127.0.0.1:5432`, user `postgres`, database
//! `test` (part 2), like the test suite; a part whose server is unreachable is skipped with
//! a message saying how to start it, and the run still succeeds.
//!
//! Part 1, limiter throughput. One process starts two Keygate servers on `127.0.0.1:0`,
//! each on a fresh SQLite file in a temp dir, each with one tenant and one key whose limit
//! (1e9 per 60 s) is never reached, verified once (argon2) and then served from the cache:
//! - "memory": `rate_limiter = memory`;
//! - "redis": `rate_limiter = redis` on `redis://127.0.0.1:6379`, a `redis_key_prefix` of
//!   its own (`kgbench:<pid>:<nanos>`), `redis_timeout_ms = 1000` and
//!   `on_limiter_error = deny`, so that a Redis failure shows up as a refused call instead
//!   of silently measuring the in-memory fallback. Every check is one `EVALSHA` round trip.
//!
//! Both are driven by the same closed loop as `benches/check.rs`: `KG_BENCH_CONNS` HTTP/2
//! connections (default 4) with `KG_BENCH_CONCURRENCY` workers each (default 32), every
//! worker sending its next call as soon as the last one returns. After 1 s of warm-up,
//! calls that complete within the next `KG_BENCH_SECS` (default 5) are counted. Requests/s
//! and the latency histogram (hdrhistogram, µs) cover ALLOW answers only; gRPC errors and
//! any other answer are counted in their own columns. The two scenarios alternate for
//! `KG_BENCH_ROUNDS` rounds (default 3, at least 2) on fresh connections; the ratio
//! redis/memory is reported best-of-rounds and median-of-rounds. The Redis keys under the
//! run's prefix are deleted at the end (SCAN + DEL); had the run died first, they expire on
//! their own (the limiter's script sets PEXPIRE to two windows plus 1 s, here 121 s).
//!
//! Part 2, revocation propagation. A fresh PostgreSQL database is created for the run
//! (`CREATE DATABASE kgbench_<pid>_<nanos>`, dropped at the end `WITH (FORCE)`) and two
//! replicas A and B start on it (`auto_migrate = true`, one admin token). Then
//! `KG_BENCH_REVOCATIONS` times (default 100): create a key on A, check it on B until
//! ALLOW (B now holds it in its cache), revoke it on A, and, from the moment A's RevokeKey
//! response arrives, check it on B back to back (no sleep) until B answers KEY_REVOKED.
//! The delay is from RevokeKey's response to that answer's arrival, so it includes one
//! Check round trip and, on B, the store lookup and argon2 verify that follow the cache
//! invalidation. One unrecorded revocation first makes sure B is LISTENing. A revocation
//! not seen within 5 s is counted as timed out (the cache TTL, 60 s, would end it).
//! Figures from both parts go to `target/bench/replicas.json`.
//!
//! Caveats. The load generator and the servers share one tokio runtime and the machine's
//! cores, and Redis and PostgreSQL run on the same machine too: compare ratios, not
//! absolute figures. Loopback TCP hides network latency, which a real Redis round trip
//! adds to every check and a real NOTIFY adds to every propagation. No tracing subscriber
//! is installed, so logging costs are not measured.
mod common;

use common::{authed, best_and_median, connect, env_or, BoxError};
use hdrhistogram::Histogram;
use keygate::config::{Config, LimiterKind};
use keygate::grpc::pb::{
    self, authorize_client::AuthorizeClient, key_admin_client::KeyAdminClient,
};
use keygate::limiter::resilient::OnLimiterError;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const WARMUP: Duration = Duration::from_secs(1);
/// The target is Redis vs the no-op ceiling (`benches/check.rs`), not vs memory.
const REDIS_VS_NOOP_TARGET: f64 = 0.5;
const REDIS_URL: &str = "redis://127.0.0.1:6379";
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// Longest wait for B to see one change (ALLOW of a new key, KEY_REVOKED after a revoke).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
/// Longest wait for Redis or PostgreSQL to answer the reachability probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

struct Settings {
    measure: Duration,
    conns: usize,
    concurrency: usize,
    rounds: usize,
    revocations: usize,
}

impl Settings {
    fn from_env() -> Result<Settings, BoxError> {
        let quick = std::env::args().any(|a| a == "--quick");
        let secs = env_or("KG_BENCH_SECS", if quick { 1 } else { 5 })?;
        Ok(Settings {
            measure: Duration::from_secs(secs as u64),
            conns: env_or("KG_BENCH_CONNS", 4)?,
            concurrency: env_or("KG_BENCH_CONCURRENCY", 32)?,
            rounds: env_or("KG_BENCH_ROUNDS", 3)?.max(2),
            revocations: env_or("KG_BENCH_REVOCATIONS", 100)?,
        })
    }
}

/// A name no other run shares: the process id and the wall clock in nanoseconds.
fn run_id() -> Result<String, BoxError> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    Ok(format!("{}_{nanos}", std::process::id()))
}

/// A server running on the shared runtime until `stop` is sent.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), BoxError>>,
}

impl Running {
    /// Spawns `serve`, which must return once the receiver it is given fires.
    fn spawn<F, E>(addr: SocketAddr, serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Running
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let (stop, rx) = oneshot::channel();
        let server = serve(rx);
        let handle = tokio::spawn(async move { server.await.map_err(Into::into) });
        Running { addr, stop, handle }
    }

    async fn shutdown(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.handle).await {
            Ok(joined) => joined?,
            Err(_) => Err(format!("server on {} did not stop within 10 s", self.addr).into()),
        }
    }
}

/// What every server of this bench shares: `admin_token` accepted, migrations applied,
/// and no metrics listener (several servers in one process would fight over its port).
fn config(database_url: String, admin_token: &str) -> Config {
    Config {
        database_url: database_url.into(),
        admin_token: Some(admin_token.to_owned().into()),
        auto_migrate: true,
        metrics_enabled: false,
        shutdown_grace_secs: 5,
        ..Config::default()
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("bench.db").display())
}

async fn start_keygate(cfg: Config) -> Result<Running, BoxError> {
    let app = keygate::App::build(cfg, keygate::Options::default()).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok(Running::spawn(addr, |stop| {
        app.serve(listener, async {
            let _ = stop.await;
        })
    }))
}

/// Creates (or updates) tenant "bench" with the default policy.
async fn bench_tenant(admin: &mut KeyAdminClient<Channel>, token: &str) -> Result<(), BoxError> {
    let tenant = pb::Tenant {
        id: "bench".into(),
        display_name: "bench".into(),
        policy: Some(pb::TenantPolicy::default()),
        ..Default::default()
    };
    let tenant = Some(tenant);
    admin
        .upsert_tenant(authed(pb::UpsertTenantRequest { tenant }, token)?)
        .await?;
    Ok(())
}

/// A plain check of `secret`; the request is the only place the secret is kept.
fn check_of(secret: String) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: secret,
        dry_run: false,
        ..Default::default()
    }
}

fn is_allow(r: &pb::CheckResponse) -> bool {
    r.decision == pb::Decision::Allow as i32
}

// ---------------------------------------------------------------------------------------
// Part 1: Redis limiter vs in-memory limiter.

/// Creates tenant "bench" and one key that no rate limit will stop, checks it a few times
/// (filling the cache and, with Redis, the limiter's hash) and returns the request the
/// load repeats.
async fn provision(addr: SocketAddr, token: &str) -> Result<pb::CheckRequest, BoxError> {
    let channel = connect(addr).await?;
    let mut admin = KeyAdminClient::new(channel.clone());
    bench_tenant(&mut admin, token).await?;
    let limit = pb::RateLimit {
        name: "bench".into(),
        limit: 1_000_000_000,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    let key = pb::CreateKeyRequest {
        tenant_id: "bench".into(),
        name: "bench".into(),
        rate_limits: vec![limit],
        ..Default::default()
    };
    let created = admin.create_key(authed(key, token)?).await?.into_inner();
    let check = check_of(created.secret);
    let mut authorize = AuthorizeClient::new(channel);
    for _ in 0..5 {
        let r = authorize.check(check.clone()).await?.into_inner();
        if !is_allow(&r) {
            return Err(format!("warm-up check was not allowed (reason {})", r.reason).into());
        }
    }
    Ok(check)
}

/// One worker's (then one run's) counts.
struct Tally {
    latency_us: Histogram<u64>,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            refused: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.refused += other.refused;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// Calls back to back until `end`, counting what completes in `[start, end]`.
async fn worker(
    mut client: AuthorizeClient<Channel>,
    req: pb::CheckRequest,
    start: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::new();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let outcome = client.check(req.clone()).await;
        let done = Instant::now();
        if done < start || done > end {
            continue;
        }
        match outcome {
            Ok(r) if is_allow(r.get_ref()) => {
                let us = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(us.max(1));
            }
            Ok(_) => tally.refused += 1,
            Err(status) => {
                tally.errors += 1;
                // Server messages never carry the key; the code and message are safe.
                tally
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
    tally
}

/// One measured run against `addr` on fresh connections.
async fn run(addr: SocketAddr, s: &Settings, req: &pb::CheckRequest) -> Result<Tally, BoxError> {
    let mut clients = Vec::with_capacity(s.conns * s.concurrency);
    for _ in 0..s.conns {
        let channel = connect(addr).await?;
        clients.extend((0..s.concurrency).map(|_| AuthorizeClient::new(channel.clone())));
    }
    let start = Instant::now() + WARMUP;
    let end = start + s.measure;
    let workers: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(worker(c, req.clone(), start, end)))
        .collect();
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await?);
    }
    Ok(total)
}

/// One table row, also kept for the JSON summary.
fn row(round: usize, scenario: &str, t: &Tally, secs: f64) -> serde_json::Value {
    let h = &t.latency_us;
    let [p50, p90, p99, p999] = [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q));
    let (rps, errors, not_ok) = (h.len() as f64 / secs, t.errors, t.refused);
    println!(
        "{round:>5}  {scenario:<8} {rps:>10.0} {p50:>8} {p90:>8} {p99:>8} {p999:>8} \
         {errors:>8} {not_ok:>9}"
    );
    if let Some(e) = &t.first_error {
        println!("       {scenario} first error: {e}");
    }
    json!({
        "round": round, "scenario": scenario, "rps": rps, "ok": h.len(),
        "errors": errors, "not_ok": not_ok, "first_error": t.first_error,
        "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999,
        "max_us": h.max(), "mean_us": h.mean(),
    })
}

/// A connection to Redis that answered PING, or why not.
async fn redis_probe() -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(REDIS_URL).map_err(|e| e.to_string())?;
    let probe = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// Every Redis key under `prefix` (SCAN, never KEYS).
async fn redis_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<Vec<String>, BoxError> {
    let pattern = format!("{prefix}:*");
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .cursor_arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Deletes every Redis key under `prefix`; returns how many there were.
async fn redis_cleanup(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<usize, BoxError> {
    let keys = redis_keys(conn, prefix).await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<u64>(conn)
            .await?;
    }
    Ok(keys.len())
}

/// Part 1: the JSON summary, or `{"skipped": why}` when Redis is unreachable.
async fn limiter_part(s: &Settings, cpus: usize) -> Result<serde_json::Value, BoxError> {
    println!("== 1. keygate.v1.Authorize/Check: Redis limiter vs in-memory limiter ==");
    let mut conn = match redis_probe().await {
        Ok(conn) => conn,
        Err(e) => {
            let why = format!("Redis is unreachable at {REDIS_URL} ({e})");
            println!(
                "!!! SKIPPING part 1: {why}.\n!!! Start it with: redis-server --daemonize yes \
                 --save '' --appendonly no   (or: service redis-server start)\n"
            );
            return Ok(json!({ "skipped": why }));
        }
    };
    let prefix = format!("kgbench:{}", run_id()?.replace('_', ":"));
    let outcome = limiter_rounds(s, cpus, &prefix, &mut conn).await;
    // Clean up even when the rounds failed; the keys would expire on their own anyway.
    match redis_cleanup(&mut conn, &prefix).await {
        Ok(n) => println!("deleted {n} Redis key(s) under prefix {prefix} (SCAN + DEL)\n"),
        Err(e) => println!(
            "could not delete the Redis keys under prefix {prefix} ({e}); \
             they expire on their own within 121 s (PEXPIRE)\n"
        ),
    }
    let mut summary = outcome?;
    summary["redis_key_prefix"] = json!(prefix);
    Ok(summary)
}

async fn limiter_rounds(
    s: &Settings,
    cpus: usize,
    prefix: &str,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<serde_json::Value, BoxError> {
    let admin_token = format!("bench-{}", keygate::domain::key::random_base62(32));
    let (memory_dir, redis_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let memory = start_keygate(config(sqlite_url(&memory_dir), &admin_token)).await?;
    let redis = start_keygate(Config {
        rate_limiter: LimiterKind::Redis,
        redis_url: REDIS_URL.to_owned().into(),
        redis_key_prefix: prefix.to_owned(),
        redis_timeout_ms: 1000,
        on_limiter_error: OnLimiterError::Deny,
        ..config(sqlite_url(&redis_dir), &admin_token)
    })
    .await?;
    let memory_check = provision(memory.addr, &admin_token).await?;
    let redis_check = provision(redis.addr, &admin_token).await?;
    // The warm-up checks spent budget: the limiter's hash must be in Redis by now.
    let written = redis_keys(conn, prefix).await?.len();
    if written == 0 {
        println!("!!! the Redis limiter wrote no key under {prefix}: is it really in use?");
    }

    println!(
        "nproc {cpus}: load generator, both Keygate servers and Redis share these cores (one \
         tokio runtime, {cpus} workers); compare ratios, not absolute figures"
    );
    println!(
        "load: {} conns x {} in flight, warm-up {} s, measure {} s, {} rounds (alternating)",
        s.conns,
        s.concurrency,
        WARMUP.as_secs(),
        s.measure.as_secs(),
        s.rounds
    );
    println!(
        "redis: {REDIS_URL}, prefix {prefix}, timeout 1000 ms, on_limiter_error = deny \
         (a Redis failure is counted in not_ok, never served by the in-memory fallback)"
    );
    println!("latency in µs over ALLOW answers; not_ok = answered but not ALLOW\n");
    println!("round  scenario      req/s      p50      p90      p99    p99.9   errors    not_ok");
    let secs = s.measure.as_secs_f64();
    let (mut rows, mut memory_rps, mut redis_rps) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=s.rounds {
        let t = run(memory.addr, s, &memory_check).await?;
        memory_rps.push(t.latency_us.len() as f64 / secs);
        rows.push(row(round, "memory", &t, secs));
        let t = run(redis.addr, s, &redis_check).await?;
        redis_rps.push(t.latency_us.len() as f64 / secs);
        rows.push(row(round, "redis", &t, secs));
    }
    let ratio = |r: f64, m: f64| if m > 0.0 { r / m } else { 0.0 };
    let ((redis_best, redis_median), (memory_best, memory_median)) =
        (best_and_median(&redis_rps), best_and_median(&memory_rps));
    let (best_ratio, median_ratio) = (
        ratio(redis_best, memory_best),
        ratio(redis_median, memory_median),
    );
    let per_round: Vec<f64> = redis_rps
        .iter()
        .zip(&memory_rps)
        .map(|(r, m)| ratio(*r, *m))
        .collect();
    println!(
        "\nredis_rps / memory_rps: best-of-rounds {best_ratio:.2}, \
         median-of-rounds {median_ratio:.2}"
    );
    println!(
        "(the issue's target, >= {REDIS_VS_NOOP_TARGET:.2}, is Redis vs the no-op tonic \
         ceiling: redis/noop = this ratio x keygate/noop from `cargo bench --bench check`)"
    );

    memory.shutdown().await?;
    redis.shutdown().await?;
    Ok(json!({
        "settings": {
            "conns": s.conns, "concurrency": s.concurrency, "warmup_secs": WARMUP.as_secs(),
            "measure_secs": s.measure.as_secs(), "rounds": s.rounds,
            "redis_timeout_ms": 1000, "on_limiter_error": "deny",
        },
        "runs": rows,
        "ratio_redis_over_memory": {
            "best_of_rounds": best_ratio, "median_of_rounds": median_ratio,
            "per_round": per_round,
        },
        "issue_target_redis_over_noop": REDIS_VS_NOOP_TARGET,
    }))
}

// ---------------------------------------------------------------------------------------
// Part 2: revocation propagation between replicas.

/// Runs one statement on the administrative database.
async fn pg_exec(sql: &str) -> Result<(), BoxError> {
    use sea_orm::ConnectionTrait;
    let work = async {
        let db = sea_orm::Database::connect(PG_ADMIN_URL).await?;
        db.execute_unprepared(sql).await?;
        db.close().await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, work).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}").into()),
    }
}

/// What one revocation took to reach B.
struct Sample {
    /// From RevokeKey's response to B's first KEY_REVOKED; `None` if not seen in time.
    delay: Option<Duration>,
    /// Checks sent to B after the revocation, the one that saw it included.
    polls: u64,
    /// Of those, how many failed with a gRPC error.
    errors: u64,
}

/// Replica A's admin client and replica B's check client.
struct Pair {
    admin: KeyAdminClient<Channel>,
    token: String,
    b: AuthorizeClient<Channel>,
}

impl Pair {
    /// Create on A, warm B's cache, revoke on A, poll B until KEY_REVOKED or `limit`.
    async fn revoke_once(&mut self, name: &str, limit: Duration) -> Result<Sample, BoxError> {
        let key = pb::CreateKeyRequest {
            tenant_id: "bench".into(),
            name: name.into(),
            ..Default::default()
        };
        let created = self
            .admin
            .create_key(authed(key, &self.token)?)
            .await?
            .into_inner();
        let key_id = created.key.ok_or("CreateKey returned no key")?.id;
        let check = check_of(created.secret);

        let deadline = Instant::now() + PROPAGATION_LIMIT;
        loop {
            if is_allow(self.b.check(check.clone()).await?.get_ref()) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "replica B never allowed a new key within {PROPAGATION_LIMIT:?}"
                )
                .into());
            }
        }

        let revoke = pb::RevokeKeyRequest {
            key_id,
            reason: "bench".into(),
        };
        self.admin.revoke_key(authed(revoke, &self.token)?).await?;
        let revoked_at = Instant::now();
        let deadline = revoked_at + limit;
        let (mut polls, mut errors) = (0, 0);
        loop {
            polls += 1;
            match self.b.check(check.clone()).await {
                Ok(r) if r.get_ref().reason == pb::Reason::KeyRevoked as i32 => {
                    let delay = Some(revoked_at.elapsed());
                    return Ok(Sample {
                        delay,
                        polls,
                        errors,
                    });
                }
                Ok(_) => {}
                Err(_) => errors += 1,
            }
            if Instant::now() >= deadline {
                return Ok(Sample {
                    delay: None,
                    polls,
                    errors,
                });
            }
        }
    }
}

/// Part 2: the JSON summary, or `{"skipped": why}` when PostgreSQL is unreachable.
async fn propagation_part(s: &Settings) -> Result<serde_json::Value, BoxError> {
    println!("== 2. Revocation propagation, replica A -> replica B (PostgreSQL LISTEN/NOTIFY) ==");
    let name = format!("kgbench_{}", run_id()?);
    if let Err(e) = pg_exec(&format!("CREATE DATABASE {name}")).await {
        let why = format!("cannot create a database on PostgreSQL at {PG_ADMIN_URL} ({e})");
        println!(
            "!!! SKIPPING part 2: {why}.\n!!! Start it with: pg_ctlcluster \
             --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
        );
        return Ok(json!({ "skipped": why }));
    }
    let outcome = propagation_rounds(s, &format!("{PG_SERVER}/{name}")).await;
    // Drop the database even when the run failed.
    match pg_exec(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await {
        Ok(()) => println!("dropped database {name}"),
        Err(e) => println!("!!! could not drop database {name} ({e}); drop it by hand"),
    }
    let mut summary = outcome?;
    summary["database"] = json!(name);
    Ok(summary)
}

async fn propagation_rounds(s: &Settings, url: &str) -> Result<serde_json::Value, BoxError> {
    let token = format!("bench-{}", keygate::domain::key::random_base62(32));
    // A first: its auto-migration creates the schema B then finds up to date.
    let a = start_keygate(config(url.to_owned(), &token)).await?;
    let b = start_keygate(config(url.to_owned(), &token)).await?;
    let mut pair = Pair {
        admin: KeyAdminClient::new(connect(a.addr).await?),
        token,
        b: AuthorizeClient::new(connect(b.addr).await?),
    };
    bench_tenant(&mut pair.admin, &pair.token).await?;
    // Unrecorded: B's listener connects in the background; wait until it delivers.
    let ready = pair
        .revoke_once("listen-probe", Duration::from_secs(30))
        .await?;
    if ready.delay.is_none() {
        return Err("replica B saw no revocation within 30 s: is it LISTENing?".into());
    }

    println!(
        "{} revocations: create on A, check on B until ALLOW, revoke on A, then check on B \
         back to back (no sleep) until KEY_REVOKED",
        s.revocations
    );
    println!("delay = RevokeKey response on A -> first KEY_REVOKED answer from B\n");
    let mut samples = Vec::with_capacity(s.revocations);
    for i in 0..s.revocations {
        samples.push(
            pair.revoke_once(&format!("revoke-{i}"), PROPAGATION_LIMIT)
                .await?,
        );
    }
    drop(pair);
    a.shutdown().await?;
    b.shutdown().await?;

    let mut us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds");
    let mut delays_ms = Vec::with_capacity(samples.len());
    for d in samples.iter().filter_map(|x| x.delay) {
        us.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
        delays_ms.push(d.as_secs_f64() * 1e3);
    }
    let timed_out = samples.len() - delays_ms.len();
    let first_poll = samples
        .iter()
        .filter(|x| x.delay.is_some() && x.polls == 1)
        .count();
    let polls: u64 = samples.iter().map(|x| x.polls).sum();
    let errors: u64 = samples.iter().map(|x| x.errors).sum();
    let ms = |v: u64| v as f64 / 1e3;
    let [p50, p90, p99] = [0.5, 0.9, 0.99].map(|q| ms(us.value_at_quantile(q)));
    let (max, min, mean) = (ms(us.max()), ms(us.min()), us.mean() / 1e3);
    println!("   seen      p50 ms    p90 ms    p99 ms    max ms   min ms  mean ms");
    println!(
        "{:>4}/{:<4} {p50:>8.2} {p90:>9.2} {p99:>9.2} {max:>9.2} {min:>8.2} {mean:>8.2}",
        delays_ms.len(),
        samples.len()
    );
    println!(
        "checks sent to B after a revoke: {:.1} on average; KEY_REVOKED already at the first: \
         {first_poll}/{}; not seen within {} s: {timed_out}; gRPC errors: {errors}",
        polls as f64 / samples.len() as f64,
        samples.len(),
        PROPAGATION_LIMIT.as_secs()
    );
    Ok(json!({
        "revocations": samples.len(),
        "seen": delays_ms.len(),
        "timed_out": timed_out,
        "timeout_secs": PROPAGATION_LIMIT.as_secs(),
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": max,
        "min_ms": min, "mean_ms": mean,
        "revoked_at_first_poll": first_poll,
        "mean_polls": polls as f64 / samples.len() as f64,
        "grpc_errors": errors,
        "delays_ms": delays_ms,
    }))
}

async fn bench(s: Settings, cpus: usize) -> Result<(), BoxError> {
    let limiter = limiter_part(&s, cpus).await?;
    let propagation = propagation_part(&s).await?;

    let summary = json!({
        "nproc": cpus,
        "limiter": limiter,
        "propagation": propagation,
    });
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("replicas.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("\nsummary written to {}", path.display());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let settings = Settings::from_env()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()?;
    runtime.block_on(bench(settings, cpus))
}
