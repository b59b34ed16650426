//! The suite: every scenario of Keygate's hot and cold paths against the no-op ceiling,
//! measured first and last, in one table (and `results.json`).
use crate::harness::load::{check_all, check_req, closed_loop, open_loop, probe, Load, Zipf};
use crate::harness::provision::{self, bulk_keys, per, unlimited, Admin, Argon2, FreshSecrets};
use crate::harness::report::{machine, print_rows, write_json, Row};
use crate::harness::server::{redis_limiter, rss_bytes, sqlite_url, Server};
use crate::harness::tally::fmt_opt;
use crate::harness::BoxError;
use crate::settings::Settings;
use envoy_types::pb::envoy::service::auth::v3 as ext;
use keygate::grpc::pb;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(s: &Settings) -> Result<(), BoxError> {
    let (cpus, model) = machine();
    let shape = s.shape(32);
    println!(
        "suite: {} conns × {} in flight, warm-up {:?}, measure {:?}{}",
        shape.conns,
        shape.concurrency,
        shape.warmup,
        shape.duration,
        if s.quick { " (--quick)" } else { "" }
    );
    println!(
        "servers are separate processes; the load generator shares the cores with them, \
         so compare ratios; cpuµs/r is the server's own CPU per answered call"
    );
    let dir = tempfile::tempdir()?;
    let token = provision::admin_token();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let argon = Argon2::server_default();

    // The ceiling, measured first and last.
    let noop = Server::noop().await?;
    let noop_target = noop.target("server");
    let first_noop = closed_loop(&noop_target, &Load::Noop, &shape).await?;
    let mut noop_runs = vec![first_noop.rps()];
    rows.push(Row::new(
        "noop",
        first_noop,
        "tonic + grpc.health.v1 only (first run)",
    ));

    // One keygate for the scenarios that share a configuration.
    let main_db = dir.path().join("main.db");
    let kg = Server::keygate(
        "keygate",
        &sqlite_url(&main_db),
        &token,
        &[("KEYGATE_LIMITS__FAILED_CHECKS_PER_IP", "0".into())],
    )
    .await?;
    let target = kg.target("server");
    println!(
        "keygate started in {:.0} ms (spawn to SERVING, fresh SQLite)",
        kg.started_in.as_secs_f64() * 1e3
    );
    let mut admin = Admin::new(kg.addr, &token).await?;
    admin.tenant("bench").await?;
    let hot = admin.key("bench", unlimited()).await?;
    let limited = admin.key("bench", per(1, 3600)).await?;
    check_all(
        kg.addr,
        Arc::new(vec![check_req(&hot); 5]),
        1,
        pb::Reason::Ok,
    )
    .await?;
    let cached = Load::check(check_req(&hot), pb::Reason::Ok);
    let mut peak = None;
    if s.wants("check_cached") || s.wants("open_loop") {
        let m = closed_loop(&target, &cached, &shape).await?;
        peak = Some(m.rps());
        rows.push(Row::new(
            "check_cached",
            m,
            "one hot key, ALLOW, memory limiter",
        ));
    }
    if s.wants("open_loop") {
        let rate = peak.unwrap_or(1000.0) / 2.0;
        let m = open_loop(&target, &cached, rate, &shape).await?;
        let notes = format!("check_cached at {rate:.0}/s = 50% of peak, from scheduled start");
        rows.push(Row::new("open_loop", m, notes).with(json!({ "rate": rate })));
    }
    if s.wants("check_rate_limited") {
        // Spend its one call; every later call is RATE_LIMITED.
        let spend = Arc::new(vec![check_req(&limited)]);
        let _ = check_all(kg.addr, spend, 1, pb::Reason::Ok).await;
        let load = Load::check(check_req(&limited), pb::Reason::RateLimited);
        let m = closed_loop(&target, &load, &shape).await?;
        rows.push(Row::new(
            "check_rate_limited",
            m,
            "DENY RATE_LIMITED (1 per hour, spent)",
        ));
    }
    if s.wants("check_uncached") {
        let load = Load::FreshSecret(Arc::new(FreshSecrets::of(&hot)?));
        let m = closed_loop(&target, &load, &shape).await?;
        let notes = format!("lookup + argon2id verify per call ({argon})");
        rows.push(Row::new("check_uncached", m, notes).with(json!({ "argon2": argon.json() })));
    }
    if s.wants("ext_authz") {
        let load = Load::ExtAuthz(Arc::new(ext_authz_request(&hot)));
        let m = closed_loop(&target, &load, &shape).await?;
        rows.push(Row::new(
            "ext_authz",
            m,
            "Envoy's CheckRequest straight to the adapter, hot key",
        ));
    }
    if s.wants("check_many_keys") {
        rows.push(many_keys(s, &kg, &main_db).await?);
    }
    kg.stop().await?;

    if s.wants("check_redis") {
        match check_redis(s, dir.path(), &token).await {
            Ok(row) => rows.push(row),
            Err(e) => failures.push(format!("check_redis: {e}")),
        }
    }
    if s.wants("cold_start") {
        rows.push(cold_start(s, dir.path(), &token, argon).await?);
    }

    let last_noop = closed_loop(&noop_target, &Load::Noop, &shape).await?;
    noop_runs.push(last_noop.rps());
    rows.push(Row::new(
        "noop",
        last_noop,
        "tonic + grpc.health.v1 only (last run)",
    ));
    noop.stop().await?;
    let mean_noop = noop_runs.iter().sum::<f64>() / noop_runs.len() as f64;
    let noop_rps = Some(mean_noop);
    print_rows(&rows, noop_rps);
    println!("\n×noop: req/s over the mean of the two noop runs ({mean_noop:.0} req/s)");

    write_json(
        "results.json",
        &json!({
            "machine": { "cpus": cpus, "model": model },
            "settings": { "quick": s.quick, "conns": shape.conns,
                "concurrency": shape.concurrency, "warmup_secs": shape.warmup.as_secs_f64(),
                "duration_secs": shape.duration.as_secs_f64() },
            "noop_rps_mean": noop_rps,
            "rows": rows.iter().map(|r| r.json(noop_rps)).collect::<Vec<_>>(),
            "failures": failures,
        }),
    )?;
    if !failures.is_empty() {
        return Err(failures.join("\n  ").into());
    }
    Ok(())
}

/// Envoy's `CheckRequest` for `GET /v1/orders` with the key as a bearer token.
fn ext_authz_request(key: &str) -> ext::CheckRequest {
    let mut headers = HashMap::new();
    headers.insert("authorization".to_owned(), format!("Bearer {key}"));
    ext::CheckRequest {
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
    }
}

/// `check_many_keys`: `--keys` keys written into `kg`'s file, each checked once, then a
/// Zipf-drawn load over them; and the server's RSS growth per cached key.
async fn many_keys(s: &Settings, kg: &Server, db: &Path) -> Result<Row, BoxError> {
    let rss_before = rss_bytes(kg.pid);
    let keys = bulk_keys(db, "bench", s.many_keys, Argon2::cheapest()).await?;
    let reqs: Arc<Vec<pb::CheckRequest>> = Arc::new(keys.iter().map(|k| check_req(k)).collect());
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
    let m = closed_loop(&kg.target("server"), &load, &s.shape(32)).await?;
    let notes = format!(
        "{} cached keys (own format), Zipf s=1; RSS +{} B per cached key (warmed in {:.1} s)",
        keys.len(),
        fmt_opt(per_key, 0),
        warm.as_secs_f64()
    );
    Ok(Row::new("check_many_keys", m, notes).with(json!({
        "keys": keys.len(), "rss_bytes_per_cached_key": per_key,
        "rss_before_import": rss_before, "rss_after_import": rss_imported,
        "rss_after_caching": rss_cached, "warm_secs": warm.as_secs_f64() })))
}

/// `check_redis`: a hot key on a keygate with the Redis limiter.
async fn check_redis(s: &Settings, dir: &Path, token: &str) -> Result<Row, BoxError> {
    let url = &s.redis_url;
    let prefix = format!("kgbench-{}", provision::random_id(8));
    let db = sqlite_url(&dir.join("redis.db"));
    let rk = Server::keygate("keygate-redis", &db, token, &redis_limiter(url, &prefix)).await?;
    let measured = async {
        let check = provision::hot_key(rk.addr, token)
            .await
            .map_err(|e| format!("Redis at {url}: {e}"))?;
        let load = Load::check(check, pb::Reason::Ok);
        closed_loop(&rk.target("server"), &load, &s.shape(32)).await
    }
    .await;
    rk.stop().await?;
    Ok(Row::new(
        "check_redis",
        measured?,
        format!("hot key, Redis limiter at {url}"),
    ))
}

/// `cold_start`: a fresh replica on a file of `--cold-keys` keys hashed with the default
/// argon2 parameters: spawn to SERVING, then every key checked once while a warm key is
/// checked alongside.
async fn cold_start(s: &Settings, dir: &Path, token: &str, argon: Argon2) -> Result<Row, BoxError> {
    let shape = s.shape(32);
    let db = dir.join("cold.db");
    let maker = Server::keygate("keygate-provision", &sqlite_url(&db), token, &[]).await?;
    let mut a = Admin::new(maker.addr, token).await?;
    a.tenant("bench").await?;
    let made = Instant::now();
    // Hashed with the server's default parameters: each first sight is a real verify.
    let keys = bulk_keys(&db, "bench", s.cold_keys, argon).await?;
    let warm_key = a.key("bench", unlimited()).await?;
    println!(
        "cold_start: {} keys created in {:.1} s",
        keys.len(),
        made.elapsed().as_secs_f64()
    );
    maker.stop().await?;
    let fresh = Server::keygate("keygate-fresh", &sqlite_url(&db), token, &[]).await?;
    let to_serving = fresh.started_in;
    let warm_req = check_req(&warm_key);
    check_all(
        fresh.addr,
        Arc::new(vec![warm_req.clone()]),
        1,
        pb::Reason::Ok,
    )
    .await?;
    // Warm probe alongside the flood of first-seen keys.
    let stop = Arc::new(AtomicBool::new(false));
    let warm_load = Load::check(warm_req, pb::Reason::Ok);
    let probe = probe(
        fresh.addr,
        &warm_load,
        Duration::from_millis(2),
        stop.clone(),
    )
    .await?;
    let cpu0 = fresh.cpu();
    let reqs = Arc::new(keys.iter().map(|k| check_req(k)).collect::<Vec<_>>());
    let inflight = shape.conns * shape.concurrency;
    let took = check_all(fresh.addr, reqs, inflight, pb::Reason::Ok).await?;
    let cpu = cpu0.zip(fresh.cpu()).map(|(a, b)| b.saturating_sub(a));
    stop.store(true, Ordering::Relaxed);
    let warm = probe.await?;
    fresh.stop().await?;
    let per_sec = keys.len() as f64 / took.as_secs_f64();
    let h = &warm.latency_us;
    let warm_p99 = h.value_at_quantile(0.99);
    let notes = format!(
        "{} first-seen keys verified at {per_sec:.0}/s; warm key p99 {:.1} ms meanwhile \
         ({} probes); spawn to SERVING {:.0} ms; server CPU {} µs per first-seen key",
        keys.len(),
        warm_p99 as f64 / 1e3,
        h.len(),
        to_serving.as_secs_f64() * 1e3,
        fmt_opt(cpu.map(|c| c.as_secs_f64() * 1e6 / keys.len() as f64), 0)
    );
    let extra = json!({ "keys": keys.len(), "first_seen_per_sec": per_sec,
        "warm_p99_us": warm_p99, "warm_p50_us": h.value_at_quantile(0.5),
        "warm_probes": h.len(), "warm_errors": warm.errors + warm.other,
        "spawn_to_serving_ms": to_serving.as_secs_f64() * 1e3, "argon2": argon.json() });
    Ok(Row {
        scenario: "cold_start".into(),
        measured: None,
        notes,
        extra,
    })
}
