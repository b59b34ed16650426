//! What running several replicas costs: `redis_vs_memory`, the Redis rate limiter against
//! the in-memory one, and `revocation`, how long a revocation takes to reach another
//! replica over PostgreSQL LISTEN/NOTIFY.
use crate::harness::ab::{alternate, Legend, Side};
use crate::harness::load::{check_req, connect};
use crate::harness::provision::{admin_token, Admin};
use crate::harness::report::{machine, write_json};
use crate::harness::server::{redis_limiter, sqlite_url, Server};
use crate::harness::BoxError;
use crate::settings::Settings;
use hdrhistogram::Histogram;
use keygate::grpc::pb::{self, authorize_client::AuthorizeClient};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// #18's targets: Redis ≥ 0.6 × the no-op ceiling (the suite's `check_redis` row) and
/// ≥ 0.8 × the in-memory limiter at the same load (this experiment).
const REDIS_VS_NOOP_TARGET: f64 = 0.6;
const REDIS_VS_MEMORY_TARGET: f64 = 0.8;
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// Longest wait for B to see one change (ALLOW of a new key, KEY_REVOKED after a revoke).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
/// Longest wait for Redis or PostgreSQL to answer the reachability probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A name no other run shares: the process id and the wall clock in nanoseconds.
fn run_id() -> Result<String, BoxError> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    Ok(format!("{}_{nanos}", std::process::id()))
}

/// Runs the selected parts; writes both parts' figures (or why one could not run) to
/// `replicas.json`.
pub async fn run(s: &Settings) -> Result<(), BoxError> {
    let mut summary = json!({ "nproc": machine().0 });
    let mut failures = vec![];
    for (name, key) in [
        ("redis_vs_memory", "limiter"),
        ("revocation", "propagation"),
    ] {
        if !s.wants(name) {
            continue;
        }
        let part = match name {
            "redis_vs_memory" => limiter_part(s).await,
            _ => propagation_part(s).await,
        };
        summary[key] = part.unwrap_or_else(|e| {
            failures.push(format!("{name}: {e}"));
            json!({ "skipped": e.to_string() })
        });
    }
    write_json("replicas.json", &summary)?;
    match failures.is_empty() {
        true => Ok(()),
        false => Err(failures.join("; ").into()),
    }
}

// ---------------------------------------------------------------------------------------
// Redis limiter vs in-memory limiter.

/// A connection to Redis that answered PING, or why not.
async fn redis_probe(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
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

async fn limiter_part(s: &Settings) -> Result<serde_json::Value, BoxError> {
    println!(
        "\n== redis_vs_memory: keygate.v1.Authorize/Check, Redis limiter vs in-memory limiter =="
    );
    let url = &s.redis_url;
    let mut conn = match redis_probe(url).await {
        Ok(conn) => conn,
        Err(e) => {
            println!(
                "!!! Start Redis with: redis-server --daemonize yes --save '' --appendonly no   \
                 (or: service redis-server start)"
            );
            return Err(format!("Redis is unreachable at {url} ({e})").into());
        }
    };
    let prefix = format!("kgbench:{}", run_id()?.replace('_', ":"));
    let outcome = limiter_rounds(s, &prefix, &mut conn).await;
    // Clean up even when the rounds failed; the keys would expire on their own anyway.
    match redis_cleanup(&mut conn, &prefix).await {
        Ok(n) => println!("deleted {n} Redis key(s) under prefix {prefix} (SCAN + DEL)"),
        Err(e) => println!(
            "could not delete the Redis keys under prefix {prefix} ({e}); \
             they expire on their own within 121 s (PEXPIRE)"
        ),
    }
    let mut summary = outcome?;
    summary["redis_key_prefix"] = json!(prefix);
    Ok(summary)
}

async fn limiter_rounds(
    s: &Settings,
    prefix: &str,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<serde_json::Value, BoxError> {
    let token = admin_token();
    let dir = tempfile::tempdir()?;
    let db = |name: &str| sqlite_url(&dir.path().join(name));
    let memory = Server::keygate("memory", &db("memory.db"), &token, &[]).await?;
    let redis = Server::keygate(
        "redis",
        &db("redis.db"),
        &token,
        &redis_limiter(&s.redis_url, prefix),
    )
    .await?;
    let memory_side = Side::hot_check("memory", &memory, &token).await?;
    let redis_side = Side::hot_check("redis", &redis, &token).await?;
    // The warm-up checks spent budget: the limiter's hash must be in Redis by now.
    if redis_keys(conn, prefix).await?.is_empty() {
        println!("!!! the Redis limiter wrote no key under {prefix}: is it really in use?");
    }
    let (cpus, _) = machine();
    println!(
        "nproc {cpus}: load generator, both keygate processes and Redis share these cores; \
         compare ratios, not absolute figures"
    );
    println!(
        "redis: {}, prefix {prefix}, timeout 1000 ms, [redis] on_error = deny (a Redis failure \
         is counted in other, never served by the in-memory fallback)",
        s.redis_url
    );
    let legend = Legend {
        expected: "ALLOW",
        cpu: "keygate = the keygate process under load",
    };
    let mut ab = alternate(
        &memory_side,
        &redis_side,
        &s.shape(32),
        s.rounds,
        &legend,
        None,
    )
    .await?;
    println!(
        "(targets: redis / memory >= {REDIS_VS_MEMORY_TARGET:.2} here; redis >= \
         {REDIS_VS_NOOP_TARGET:.2} x the no-op tonic ceiling in the suite's check_redis row, \
         `--scenario check_redis`)"
    );
    memory.stop().await?;
    redis.stop().await?;
    ab.json["settings"]["redis_timeout_ms"] = json!(1000);
    ab.json["settings"]["on_limiter_error"] = json!("deny");
    ab.json["issue_target_redis_over_noop"] = json!(REDIS_VS_NOOP_TARGET);
    ab.json["issue_target_redis_over_memory"] = json!(REDIS_VS_MEMORY_TARGET);
    Ok(ab.json)
}

// ---------------------------------------------------------------------------------------
// Revocation propagation between replicas.

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
    admin: Admin,
    b: AuthorizeClient<Channel>,
}

impl Pair {
    /// Create on A, warm B's cache, revoke on A, poll B until KEY_REVOKED or `limit`.
    async fn revoke_once(&mut self, name: &str, limit: Duration) -> Result<Sample, BoxError> {
        let (key_id, secret) = self.admin.create("bench", name, vec![]).await?;
        let check = check_req(&secret);
        let deadline = Instant::now() + PROPAGATION_LIMIT;
        while self.b.check(check.clone()).await?.get_ref().decision != pb::Decision::Allow as i32 {
            if Instant::now() >= deadline {
                return Err(format!(
                    "replica B never allowed a new key within {PROPAGATION_LIMIT:?}"
                )
                .into());
            }
        }

        self.admin.revoke(key_id).await?;
        let revoked_at = Instant::now();
        let deadline = revoked_at + limit;
        let (mut polls, mut errors) = (0, 0);
        let delay = loop {
            polls += 1;
            match self.b.check(check.clone()).await {
                Ok(r) if r.get_ref().reason == pb::Reason::KeyRevoked as i32 => {
                    break Some(revoked_at.elapsed())
                }
                Ok(_) => {}
                Err(_) => errors += 1,
            }
            if Instant::now() >= deadline {
                break None;
            }
        };
        Ok(Sample {
            delay,
            polls,
            errors,
        })
    }
}

async fn propagation_part(s: &Settings) -> Result<serde_json::Value, BoxError> {
    println!("\n== revocation: replica A -> replica B (PostgreSQL LISTEN/NOTIFY) ==");
    let name = format!("kgbench_{}", run_id()?);
    if let Err(e) = pg_exec(&format!("CREATE DATABASE {name}")).await {
        println!(
            "!!! Start PostgreSQL with: pg_ctlcluster --skip-systemctl-redirect \
             $(ls /etc/postgresql) main start"
        );
        return Err(
            format!("cannot create a database on PostgreSQL at {PG_ADMIN_URL} ({e})").into(),
        );
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
    let token = admin_token();
    let env = [
        ("KEYGATE_AUTO_MIGRATE", "true".to_owned()),
        ("KEYGATE_SHUTDOWN_GRACE_SECS", "5".to_owned()),
    ];
    // A first: its migration creates the schema B then finds up to date.
    let a = Server::keygate("replica-A", url, &token, &env).await?;
    let b = Server::keygate("replica-B", url, &token, &env).await?;
    let mut admin = Admin::new(a.addr, &token).await?;
    admin.tenant("bench").await?;
    let mut pair = Pair {
        admin,
        b: AuthorizeClient::new(connect(b.addr).await?),
    };
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
    a.stop().await?;
    b.stop().await?;

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
