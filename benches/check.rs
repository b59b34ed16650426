//! `keygate.v1.Authorize/Check` throughput and latency against a no-op tonic ceiling.
//!
//! Run with `cargo bench --bench check` (add `-- --quick`, or `KG_BENCH_SECS=1`, for a
//! short run). It prints figures and never fails on them.
//!
//! Method. One process starts two servers on `127.0.0.1:0`:
//! - Keygate itself (`App::build` + `App::serve`) on a fresh SQLite file in a temp dir,
//!   default in-memory limiter, with one tenant and one key whose limit (1e9 per 60 s) is
//!   never reached; the key is verified once (argon2) and then served from the cache;
//! - a "no-op" tonic server holding only `tonic_health`'s health service, whose unary
//!   `grpc.health.v1.Health/Check` is the ceiling: same tonic/hyper/h2 stack, a trivial
//!   handler.
//!
//! Both are driven by the same closed loop: `KG_BENCH_CONNS` HTTP/2 connections (default
//! 4) with `KG_BENCH_CONCURRENCY` workers each (default 32), every worker sending its next
//! call as soon as the last one returns. After 1 s of warm-up, calls that complete within
//! the next `KG_BENCH_SECS` (default 5) are counted. Requests/s and the latency
//! histogram (hdrhistogram, µs) cover successful calls only (ALLOW, resp. SERVING); gRPC
//! errors and any other answer are counted in their own columns. The two scenarios
//! alternate for `KG_BENCH_ROUNDS` rounds (default 3, at least 2) on fresh connections, so
//! that machine drift touches both; the ratio keygate/no-op is reported best-of-rounds and
//! median-of-rounds. Figures also go to `target/bench/check.json`.
//!
//! Caveats. The load generator and both servers share one tokio runtime and the machine's
//! cores (2 on the reference machine), so absolute figures are far below what a dedicated
//! server reaches and every client CPU cycle is stolen from the server: compare the ratio,
//! not the numbers. Loopback TCP hides network latency. No tracing subscriber is
//! installed, so logging costs are not measured. The key stays cached (cache TTL 60 s by
//! default: a long run may see one refresh), so this is the hot path, not argon2 or the
//! store; `last_used_time` is still flushed to SQLite in the background as in production.
mod common;

use common::{authed, best_and_median, connect, env_or, BoxError};
use hdrhistogram::Histogram;
use keygate::config::Config;
use keygate::grpc::pb::{
    self, authorize_client::AuthorizeClient, key_admin_client::KeyAdminClient,
};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const WARMUP: Duration = Duration::from_secs(1);
const TARGET_RATIO: f64 = 0.8;

struct Settings {
    measure: Duration,
    conns: usize,
    concurrency: usize,
    rounds: usize,
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
        })
    }
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

/// The no-op ceiling: tonic with the health service alone.
async fn start_noop() -> Result<Running, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    Ok(Running::spawn(addr, |stop| {
        Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop.await;
            })
    }))
}

/// Keygate on a fresh SQLite file in `dir`, with `admin_token` accepted.
async fn start_keygate(dir: &tempfile::TempDir, admin_token: &str) -> Result<Running, BoxError> {
    let cfg = Config {
        database_url: format!("sqlite://{}", dir.path().join("bench.db").display()).into(),
        admin_token: Some(admin_token.to_owned().into()),
        auto_migrate: true,
        // No metrics port: it would collide with anything on 9464 and is not measured.
        metrics_enabled: false,
        ..Config::default()
    };
    let app = keygate::App::build(cfg, keygate::Options::default()).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok(Running::spawn(addr, |stop| {
        app.serve(listener, async {
            let _ = stop.await;
        })
    }))
}

/// Creates tenant "bench" and one key that no rate limit will stop, checks it a few times
/// (filling the cache) and returns the request the load repeats.
async fn provision(addr: SocketAddr, token: &str) -> Result<pb::CheckRequest, BoxError> {
    let channel = connect(addr).await?;
    let mut admin = KeyAdminClient::new(channel.clone());
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
    let check = pb::CheckRequest {
        api_key: created.secret,
        dry_run: false,
        ..Default::default()
    };
    let mut authorize = AuthorizeClient::new(channel);
    for _ in 0..5 {
        let r = authorize.check(check.clone()).await?.into_inner();
        if r.decision != pb::Decision::Allow as i32 {
            return Err(format!("warm-up check was not allowed (reason {})", r.reason).into());
        }
    }
    Ok(check)
}

/// What one scenario calls, over one connection.
enum Target {
    Noop(HealthClient<Channel>),
    Keygate(AuthorizeClient<Channel>, pb::CheckRequest),
}

impl Target {
    /// `Ok(true)` for ALLOW (resp. SERVING), `Ok(false)` for any other answer.
    async fn call(&mut self) -> Result<bool, tonic::Status> {
        match self {
            Target::Noop(c) => c
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.get_ref().status == ServingStatus::Serving as i32),
            Target::Keygate(c, req) => c
                .check(req.clone())
                .await
                .map(|r| r.get_ref().decision == pb::Decision::Allow as i32),
        }
    }
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
async fn worker(mut target: Target, start: Instant, end: Instant) -> Tally {
    let mut tally = Tally::new();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let outcome = target.call().await;
        let done = Instant::now();
        if done < start || done > end {
            continue;
        }
        match outcome {
            Ok(true) => {
                let us = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(us.max(1));
            }
            Ok(false) => tally.refused += 1,
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

/// One measured run of `make` on fresh connections.
async fn run(
    addr: SocketAddr,
    s: &Settings,
    make: impl Fn(Channel) -> Target,
) -> Result<Tally, BoxError> {
    let mut targets = Vec::with_capacity(s.conns * s.concurrency);
    for _ in 0..s.conns {
        let channel = connect(addr).await?;
        targets.extend((0..s.concurrency).map(|_| make(channel.clone())));
    }
    let start = Instant::now() + WARMUP;
    let end = start + s.measure;
    let workers: Vec<_> = targets
        .into_iter()
        .map(|t| tokio::spawn(worker(t, start, end)))
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

async fn bench(s: Settings, cpus: usize) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let admin_token = format!("bench-{}", keygate::domain::key::random_base62(32));
    let keygate = start_keygate(&dir, &admin_token).await?;
    let noop = start_noop().await?;
    let check = provision(keygate.addr, &admin_token).await?;

    println!("keygate.v1.Authorize/Check vs no-op tonic grpc.health.v1.Health/Check");
    println!(
        "nproc {cpus}: load generator, Keygate and the no-op server share these cores and one \
         tokio runtime ({cpus} workers); compare ratios, not absolute figures"
    );
    println!(
        "load: {} conns x {} in flight, warm-up {} s, measure {} s, {} rounds (alternating)",
        s.conns,
        s.concurrency,
        WARMUP.as_secs(),
        s.measure.as_secs(),
        s.rounds
    );
    println!("latency in µs over successful calls; not_ok = answered but not ALLOW/SERVING\n");
    println!("round  scenario      req/s      p50      p90      p99    p99.9   errors    not_ok");
    let secs = s.measure.as_secs_f64();
    let (mut rows, mut noop_rps, mut kg_rps) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=s.rounds {
        let t = run(noop.addr, &s, |ch| Target::Noop(HealthClient::new(ch))).await?;
        noop_rps.push(t.latency_us.len() as f64 / secs);
        rows.push(row(round, "noop", &t, secs));
        let t = run(keygate.addr, &s, |ch| {
            Target::Keygate(AuthorizeClient::new(ch), check.clone())
        })
        .await?;
        kg_rps.push(t.latency_us.len() as f64 / secs);
        rows.push(row(round, "keygate", &t, secs));
    }
    let ratio = |k: f64, n: f64| if n > 0.0 { k / n } else { 0.0 };
    let ((kg_best, kg_median), (noop_best, noop_median)) =
        (best_and_median(&kg_rps), best_and_median(&noop_rps));
    let (best_ratio, median_ratio) = (ratio(kg_best, noop_best), ratio(kg_median, noop_median));
    let per_round: Vec<f64> = kg_rps
        .iter()
        .zip(&noop_rps)
        .map(|(k, n)| ratio(*k, *n))
        .collect();
    println!(
        "\nkeygate_rps / noop_rps: best-of-rounds {best_ratio:.2}, \
         median-of-rounds {median_ratio:.2} (target {TARGET_RATIO:.2})"
    );

    let summary = json!({
        "nproc": cpus,
        "settings": {
            "conns": s.conns, "concurrency": s.concurrency, "warmup_secs": WARMUP.as_secs(),
            "measure_secs": s.measure.as_secs(), "rounds": s.rounds,
        },
        "runs": rows,
        "ratio": {
            "best_of_rounds": best_ratio, "median_of_rounds": median_ratio,
            "per_round": per_round, "target": TARGET_RATIO,
        },
    });
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("check.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("summary written to {}", path.display());

    noop.shutdown().await?;
    keygate.shutdown().await
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
