//! What OTLP trace export costs `keygate.v1.Authorize/Check`: the same build of Keygate with
//! export off (A) and on (B). Issue target: export costs at most 5 %, i.e. B/A ≥ 0.95.
//!
//! Run with `cargo bench --bench tracing` (add `-- --quick`, or `KG_BENCH_SECS=1`, for a
//! short run). It prints figures and never fails on them.
//!
//! Method. The tracing subscriber is process-global, so A and B cannot share a process:
//! the bench runs the real `keygate` binary twice, from the same profile as the bench
//! (Cargo builds it for `cargo bench` and names it in `CARGO_BIN_EXE_keygate`; otherwise it
//! is taken from next to the bench executable, `deps/../keygate`, and built with
//! `cargo build --release --bin keygate` if missing). Each process gets a fresh SQLite file
//! in a temp dir, `KEYGATE_LISTEN=127.0.0.1:0`, no metrics port, JSON logs at
//! `warn,keygate=info` (with export off Keygate creates no check spans at all, so A is the
//! untraced hot path) and an admin token of the run's own; its environment is otherwise cleared,
//! so a stray `RUST_LOG`, `KEYGATE_*` or `OTEL_BSP_*` in the shell cannot skew one side.
//! B also gets `KEYGATE_OTLP_SAMPLE_RATIO` from `KG_BENCH_SAMPLE_RATIO` (default 1: every
//! check traced) and `KEYGATE_OTLP_ENDPOINT`, an OTLP/gRPC collector inside this bench that only
//! counts what it receives (Keygate's batch settings: a queue of `otlp_queue_size`
//! spans, batches of up to 2,048, every second at the latest; spans that find the queue
//! full are dropped, which the span count below would show). The address each process listens on is read from its
//! "keygate serving" log line.
//!
//! On each: one tenant and one key whose limit (1e9 per 60 s) is never reached, checked
//! five times so that it is verified once (argon2) and then served from the cache. Both
//! are driven by the closed loop of `benches/check.rs`: `KG_BENCH_CONNS` HTTP/2
//! connections (default 4) with `KG_BENCH_CONCURRENCY` workers each (default 32), every
//! worker sending its next call as soon as the last one returns. After 1 s of warm-up,
//! calls that complete within the next `KG_BENCH_SECS` (default 5) are counted. Requests/s
//! and the latency histogram (hdrhistogram, µs) cover ALLOW answers only; gRPC errors and
//! any other answer are counted in their own columns. Where there is a `/proc`, each row
//! also shows the CPU time (user + system, all threads) used within the window per ALLOW
//! by the keygate process under load (`srv_cpu`) and by this bench process (`gen_cpu`:
//! load generator, plus the collector during B). A and B alternate for `KG_BENCH_ROUNDS`
//! rounds (default 3, at least 2) on fresh connections, so that machine drift touches
//! both; the req/s ratio B/A is reported best-of-rounds and median-of-rounds, `srv_cpu`
//! as B's median over A's. Both processes are then stopped with SIGTERM (B flushes its
//! buffered spans) and the spans the collector received are listed by name, each per check
//! B answered (the README's span tree: every check is one `Authorize/Check` with a child
//! `limiter.check`, plus `store.lookup_and_verify` on a cache miss); `Authorize/Check`
//! spans short of the checks answered were dropped by the SDK or never flushed. Figures
//! also go to `target/bench/tracing.json` (under `CARGO_TARGET_DIR` when set).
//!
//! `KG_BENCH_AB=usage` runs the same comparison for usage recording instead: A with
//! `usage.enabled = false` (only `last_used_time` and the use count are kept), B with the
//! default (per-minute/day counts by endpoint and reason), neither exporting traces;
//! figures go to `target/bench/usage.json`.
//!
//! Caveats. The load generator, the collector and both servers share the machine's cores
//! (2 on the reference machine), so absolute figures are far below what a dedicated server
//! reaches: compare the ratio, not the numbers. The collector decodes every export request
//! in the load generator's process, taking CPU from the client during B's runs only (the
//! rise in `gen_cpu` shows how much), so the req/s ratio is pessimistic; a real collector
//! runs elsewhere and adds network cost to the exporter instead. `srv_cpu` does not depend
//! on how the cores were shared, so its B/A is the cleaner measure of what export costs
//! Keygate itself (its unit, the kernel's clock tick, is 10 ms: a window of a few seconds
//! resolves it to well under 1 %). Loopback TCP hides network latency. The idle
//! process keeps running while the other is measured (store pings, `last_used_time`
//! flushes: negligible). The key stays cached (cache TTL 60 s by default: a long run may
//! see one refresh per process), so this is the hot path, not argon2 or the store.
mod common;

use common::{authed, best_and_median, connect, env_or, BoxError};
use hdrhistogram::Histogram;
use keygate::grpc::pb::{
    self, authorize_client::AuthorizeClient, key_admin_client::KeyAdminClient,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};

const WARMUP: Duration = Duration::from_secs(1);
const TARGET_RATIO: f64 = 0.95;
/// Longest wait for a process to print "keygate serving".
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a process to exit after SIGTERM (its drain is at most 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Log lines kept per process, shown if it fails to start.
const LOG_TAIL: usize = 40;

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

/// Locks `m`, carrying on after a panic elsewhere (the counts stay meaningful).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// The keygate binary.

/// The `keygate` executable of this bench's profile, built first if it is missing. Says
/// which one it uses.
fn keygate_binary() -> Result<PathBuf, BoxError> {
    // Cargo sets CARGO_BIN_EXE_<name> for benchmarks too and builds the binary before
    // running them; the path stays right even with a separate `build-dir`.
    if let Some(bin) = option_env!("CARGO_BIN_EXE_keygate")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        println!("keygate binary: {} (built by cargo bench)", bin.display());
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(Path::parent)
        .ok_or_else(|| format!("{}: not in a cargo deps/ directory", exe.display()))?;
    let sibling = profile_dir.join(format!("keygate{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        println!("keygate binary: {} (next to the bench)", sibling.display());
        return Ok(sibling);
    }
    build_keygate(profile_dir, &sibling)
}

/// Runs `cargo build --bin keygate` for the profile `profile_dir` belongs to and returns
/// the executable Cargo reports.
fn build_keygate(profile_dir: &Path, missing: &Path) -> Result<PathBuf, BoxError> {
    let profile_arg = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") | None => "--release".to_owned(),
        Some("debug") => "--profile=dev".to_owned(),
        Some(other) => format!("--profile={other}"),
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!(
        "keygate binary: {} is missing; running `cargo build {profile_arg} --bin keygate` \
         (progress on stderr)",
        missing.display()
    );
    let out = std::process::Command::new(cargo)
        .args(["build", &profile_arg, "--bin", "keygate"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("cargo build --bin keygate failed ({})", out.status).into());
    }
    // The last `compiler-artifact` message for the bin target names the executable.
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "keygate")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .ok_or("cargo build reported no keygate executable")?;
    println!("keygate binary: {} (just built)", built.display());
    Ok(built)
}

/// One running `keygate` process.
struct Keygate {
    name: &'static str,
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

/// The last lines a process printed, without any that could hold a credential.
fn shown_tail(tail: &Mutex<VecDeque<String>>, admin_token: &str) -> String {
    lock(tail)
        .iter()
        .map(|l| {
            if l.contains(admin_token) || l.contains("kgadm_") {
                "    [line withheld: it may hold a credential]".to_owned()
            } else {
                format!("    {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Keygate {
    /// Starts `bin` on a fresh SQLite file `db`, exporting traces to `otlp` when given, and
    /// waits for its "keygate serving" line.
    async fn start(
        name: &'static str,
        bin: &Path,
        db: &Path,
        admin_token: &str,
        otlp: Option<SocketAddr>,
        env: &[(&str, &str)],
    ) -> Result<Keygate, BoxError> {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("KEYGATE_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("KEYGATE_LISTEN", "127.0.0.1:0")
            .env("KEYGATE_METRICS_ENABLED", "false")
            .env("KEYGATE_LOG__FORMAT", "json")
            .env("KEYGATE_LOG__FILTER", "warn,keygate=info")
            .env("KEYGATE_ADMIN_TOKEN", admin_token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.envs(env.iter().copied());
        if let Some(otlp) = otlp {
            cmd.env("KEYGATE_OTLP_ENDPOINT", format!("http://{otlp}"))
                .env("KEYGATE_OTLP_SAMPLE_RATIO", sample_ratio().to_string());
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("keygate exited at once")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;

        // Drains stderr for the process's whole life (a full pipe would stall it), keeps
        // the last lines, and reports the address of the "keygate serving" line.
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        let (serving_tx, serving_rx) = oneshot::channel::<String>();
        let sink = tail.clone();
        tokio::spawn(async move {
            let keep = |line: String| {
                let mut tail = lock(&sink);
                if tail.len() == LOG_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            };
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let listen = serving_addr(&line);
                keep(line);
                if let Some(listen) = listen {
                    let _ = serving_tx.send(listen);
                    break;
                }
            }
            while let Ok(Some(line)) = lines.next_line().await {
                keep(line);
            }
        });

        let failed = |why: String| -> BoxError {
            format!(
                "keygate {name} {why}; its last log lines:\n{}",
                shown_tail(&tail, admin_token)
            )
            .into()
        };
        let listen = match tokio::time::timeout(START_TIMEOUT, serving_rx).await {
            Ok(Ok(listen)) => listen,
            Ok(Err(_)) => {
                let status = child.wait().await?;
                return Err(failed(format!("exited before serving ({status})")));
            }
            Err(_) => {
                return Err(failed(format!(
                    "did not start serving within {} s",
                    START_TIMEOUT.as_secs()
                )))
            }
        };
        let addr = listen
            .parse()
            .map_err(|e| failed(format!("printed an unusable address {listen:?}: {e}")))?;
        Ok(Keygate {
            name,
            child,
            pid,
            addr,
        })
    }

    /// SIGTERM, then waits for the graceful exit (B flushes its spans on the way out).
    async fn stop(mut self) -> Result<ExitStatus, BoxError> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = self.pid;
        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        if !killed.success() {
            return Err(format!("kill -TERM {pid} (keygate {}) failed", self.name).into());
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                Err(format!(
                    "keygate {} ignored SIGTERM for {} s; killed",
                    self.name,
                    STOP_TIMEOUT.as_secs()
                )
                .into())
            }
        }
    }
}

/// The `listen` field of a JSON "keygate serving" log line.
fn serving_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["message"] == "keygate serving")
        .then(|| v["listen"].as_str().map(str::to_owned))
        .flatten()
}

/// CPU time a process has used (user + system, all threads), from `/proc/<pid>/stat`.
#[derive(Clone, Copy)]
struct CpuClock {
    ticks_per_sec: u64,
}

impl CpuClock {
    fn new() -> CpuClock {
        // USER_HZ, the unit of /proc times: 100 on Linux unless `getconf` says otherwise.
        let ticks_per_sec = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100);
        CpuClock { ticks_per_sec }
    }

    /// `None` where there is no /proc (the table then shows `-`).
    fn used(self, pid: u32) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name (in parentheses, possibly with spaces) come fields 3…;
        // utime and stime are fields 14 and 15.
        let rest = stat.get(stat.rfind(')')? + 1..)?;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_nanos(
            (utime + stime).saturating_mul(1_000_000_000) / self.ticks_per_sec,
        ))
    }
}

// ---------------------------------------------------------------------------------------
// The OTLP collector.

/// What the collector received.
#[derive(Default)]
struct Received {
    requests: u64,
    spans: u64,
    by_name: BTreeMap<String, u64>,
}

/// An OTLP/gRPC trace collector that only counts.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = lock(&self.0);
        got.requests += 1;
        let spans = req
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans);
        for span in spans {
            got.spans += 1;
            *got.by_name.entry(span.name).or_default() += 1;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector's server on the bench's runtime, until `shutdown`.
struct CollectorServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl CollectorServer {
    async fn start(collector: Collector) -> Result<CollectorServer, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = oneshot::channel::<()>();
        let server = Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            });
        let handle = tokio::spawn(server);
        Ok(CollectorServer { addr, stop, handle })
    }

    async fn shutdown(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.handle).await {
            Ok(joined) => Ok(joined??),
            Err(_) => Err("the OTLP collector did not stop within 10 s".into()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Provisioning and load.

/// Checks made while provisioning (the first verifies the key, the rest hit the cache).
const WARM_CHECKS: u64 = 5;

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
    for _ in 0..WARM_CHECKS {
        let r = authorize.check(check.clone()).await?.into_inner();
        if r.decision != pb::Decision::Allow as i32 {
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
    /// Every call answered, in the measured window or not (warm-up included).
    answered: u64,
    /// CPU used during the measured window by the keygate process under load, and by this
    /// bench process (load generator, plus the collector during B's runs); set per run.
    server_cpu: Option<Duration>,
    bench_cpu: Option<Duration>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            refused: 0,
            errors: 0,
            first_error: None,
            answered: 0,
            server_cpu: None,
            bench_cpu: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.refused += other.refused;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.answered += other.answered;
    }
}

/// Checks back to back until `end`, counting what completes in `[start, end]`.
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
        if outcome.is_ok() {
            tally.answered += 1;
        }
        if done < start || done > end {
            continue;
        }
        match outcome {
            Ok(r) if r.get_ref().decision == pb::Decision::Allow as i32 => {
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

/// One measured run against `server` on fresh connections.
async fn run(
    server: &Keygate,
    clock: CpuClock,
    s: &Settings,
    req: &pb::CheckRequest,
) -> Result<Tally, BoxError> {
    let addr = server.addr;
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
    let pids = [server.pid, std::process::id()];
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let before = pids.map(|pid| clock.used(pid));
        tokio::time::sleep_until(end.into()).await;
        let after = pids.map(|pid| clock.used(pid));
        [0, 1].map(|i| Some(after[i]?.saturating_sub(before[i]?)))
    });
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await?);
    }
    [total.server_cpu, total.bench_cpu] = cpu.await?;
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// Reporting.

/// One table row, also kept for the JSON summary.
fn row(round: usize, scenario: &str, t: &Tally, secs: f64) -> serde_json::Value {
    let h = &t.latency_us;
    let [p50, p90, p99, p999] = [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q));
    let (rps, errors, not_ok) = (h.len() as f64 / secs, t.errors, t.refused);
    let (srv_cpu, gen_cpu) = (us_per_ok(t.server_cpu, t), us_per_ok(t.bench_cpu, t));
    let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{round:>5}  {scenario:<8} {rps:>10.0} {p50:>8} {p90:>8} {p99:>8} {p999:>8} \
         {errors:>8} {not_ok:>9} {:>8} {:>8}",
        shown(srv_cpu),
        shown(gen_cpu)
    );
    if let Some(e) = &t.first_error {
        println!("       {scenario} first error: {e}");
    }
    json!({
        "round": round, "scenario": scenario, "rps": rps, "ok": h.len(),
        "errors": errors, "not_ok": not_ok, "first_error": t.first_error,
        "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999,
        "max_us": h.max(), "mean_us": h.mean(),
        "srv_cpu_us_per_ok": srv_cpu, "gen_cpu_us_per_ok": gen_cpu,
    })
}

/// B's `otlp_sample_ratio`: `KG_BENCH_SAMPLE_RATIO`, default 1 (every check traced).
fn sample_ratio() -> f64 {
    std::env::var("KG_BENCH_SAMPLE_RATIO")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0)
}

/// CPU µs per ALLOW counted in `t`, when both are known.
fn us_per_ok(cpu: Option<Duration>, t: &Tally) -> Option<f64> {
    let ok = t.latency_us.len();
    cpu.filter(|_| ok > 0)
        .map(|c| c.as_secs_f64() * 1e6 / ok as f64)
}

fn ratio(b: f64, a: f64) -> f64 {
    if a > 0.0 {
        b / a
    } else {
        0.0
    }
}

fn write_summary(summary: &serde_json::Value) -> Result<PathBuf, BoxError> {
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let name = if std::env::var("KG_BENCH_AB").is_ok_and(|v| v == "usage") {
        "usage.json"
    } else {
        "tracing.json"
    };
    let path = out_dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(summary)?)?;
    Ok(path)
}

async fn bench(s: Settings, cpus: usize, bin: PathBuf) -> Result<(), BoxError> {
    let clock = CpuClock::new();
    let dir = tempfile::tempdir()?;
    let admin_token = format!("bench-{}", keygate::domain::key::random_base62(32));
    let collector = Collector::default();
    let otlp = CollectorServer::start(collector.clone()).await?;
    // KG_BENCH_AB=usage: usage recording off (A) vs on (B, the default), no tracing.
    let usage_mode = std::env::var("KG_BENCH_AB").is_ok_and(|v| v == "usage");
    let (a_env, b_otlp, labels): (&[(&str, &str)], _, _) = if usage_mode {
        (
            &[("KEYGATE_USAGE__ENABLED", "false")],
            None,
            ("A:no-usage", "B:usage", "usage recording"),
        )
    } else {
        (&[], Some(otlp.addr), ("A:off", "B:otlp", "trace export"))
    };
    let a = Keygate::start(
        "A",
        &bin,
        &dir.path().join("a.db"),
        &admin_token,
        None,
        a_env,
    )
    .await?;
    let b = Keygate::start(
        "B",
        &bin,
        &dir.path().join("b.db"),
        &admin_token,
        b_otlp,
        &[],
    )
    .await?;
    let check_a = provision(a.addr, &admin_token).await?;
    let check_b = provision(b.addr, &admin_token).await?;

    if usage_mode {
        println!(
            "\nkeygate.v1.Authorize/Check, usage recording off (A: usage.enabled=false) vs on \
             (B: default): two keygate processes"
        );
    } else {
        println!(
            "\nkeygate.v1.Authorize/Check, trace export off (A) vs on (B): two keygate processes, \
             B exporting OTLP/gRPC to a counting collector in this bench"
        );
    }
    println!(
        "nproc {cpus}: load generator, collector and both keygate processes share these cores; \
         compare ratios, not absolute figures"
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
        "latency in µs over successful calls; not_ok = answered but not ALLOW; srv_cpu = CPU µs \
         the keygate process used per ALLOW in the window, gen_cpu = the same for this bench \
         process (load generator, and the collector during B)\n"
    );
    println!(
        "round  scenario      req/s      p50      p90      p99    p99.9   errors    not_ok  \
         srv_cpu  gen_cpu"
    );
    let secs = s.measure.as_secs_f64();
    let (mut rows, mut a_rps, mut b_rps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut a_cpu, mut b_cpu) = (Vec::new(), Vec::new());
    let mut b_answered = WARM_CHECKS;
    for round in 1..=s.rounds {
        let t = run(&a, clock, &s, &check_a).await?;
        a_rps.push(t.latency_us.len() as f64 / secs);
        a_cpu.extend(us_per_ok(t.server_cpu, &t));
        rows.push(row(round, labels.0, &t, secs));
        let t = run(&b, clock, &s, &check_b).await?;
        b_rps.push(t.latency_us.len() as f64 / secs);
        b_cpu.extend(us_per_ok(t.server_cpu, &t));
        b_answered += t.answered;
        rows.push(row(round, labels.1, &t, secs));
    }
    let ((a_best, a_median), (b_best, b_median)) =
        (best_and_median(&a_rps), best_and_median(&b_rps));
    let (best_ratio, median_ratio) = (ratio(b_best, a_best), ratio(b_median, a_median));
    let per_round: Vec<f64> = b_rps
        .iter()
        .zip(&a_rps)
        .map(|(b, a)| ratio(*b, *a))
        .collect();
    let shown: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "\nB/A req/s ({} on / off): best-of-rounds {best_ratio:.2}, median-of-rounds \
         {median_ratio:.2} (target ≥ {TARGET_RATIO:.2}); per round {}",
        labels.2,
        shown.join(", ")
    );
    // Server CPU per check does not depend on how the cores were shared.
    let cpu_ratio = (a_cpu.len() == s.rounds && b_cpu.len() == s.rounds).then(|| {
        let (a_med, b_med) = (best_and_median(&a_cpu).1, best_and_median(&b_cpu).1);
        println!(
            "keygate CPU per check (srv_cpu), median-of-rounds: A {a_med:.1} µs, \
             B {b_med:.1} µs; B/A {:.2}",
            ratio(b_med, a_med)
        );
        ratio(b_med, a_med)
    });

    // SIGTERM both; B flushes what its batch processor still holds.
    let a_exit = a.stop().await?;
    let b_exit = b.stop().await?;
    println!("stopped with SIGTERM: A {a_exit}, B {b_exit}");
    otlp.shutdown().await?;
    let (requests, spans, by_name) = {
        let got = lock(&collector.0);
        (got.requests, got.spans, got.by_name.clone())
    };
    println!(
        "\ncollector received {spans} spans in {requests} export requests; \
         B answered {b_answered} checks (warm-up included)"
    );
    if usage_mode {
        // No traces in this comparison.
    } else if by_name.is_empty() {
        println!("no spans: trace export was NOT on");
    } else {
        println!("  span name                      received  per check");
        for (name, n) in &by_name {
            let per_check = ratio(*n as f64, b_answered as f64);
            println!("  {name:<28} {n:>10} {per_check:>10.3}");
        }
    }
    let check_spans = by_name.get("Authorize/Check").copied().unwrap_or(0);
    let expected = (b_answered as f64 * sample_ratio()).round() as u64;
    let lost = expected.saturating_sub(check_spans);
    if !usage_mode {
        println!(
            "B samples {:.0} % of checks: about {expected} Authorize/Check spans expected, \
         {check_spans} received; missing {lost} ({:.1} %; dropped when the SDK's span queue \
         was full, or never flushed)",
            100.0 * sample_ratio(),
            100.0 * ratio(lost as f64, expected as f64)
        );
    }

    let summary = json!({
        "nproc": cpus,
        "binary": bin.display().to_string(),
        "settings": {
            "conns": s.conns, "concurrency": s.concurrency, "warmup_secs": WARMUP.as_secs(),
            "measure_secs": s.measure.as_secs(), "rounds": s.rounds,
            "sample_ratio": sample_ratio(),
        },
        "runs": rows,
        "ratio": {
            "best_of_rounds": best_ratio, "median_of_rounds": median_ratio,
            "per_round": per_round, "target": TARGET_RATIO,
            "srv_cpu_per_check_b_over_a_median": cpu_ratio,
        },
        "spans": {
            "received": spans, "export_requests": requests, "by_name": by_name,
            "checks_answered_by_b": b_answered, "check_spans": check_spans,
            "check_spans_not_received": lost,
        },
        "exit": { "a": a_exit.to_string(), "b": b_exit.to_string() },
    });
    let path = write_summary(&summary)?;
    println!("summary written to {}", path.display());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let settings = Settings::from_env()?;
    let bin = keygate_binary()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()?;
    runtime.block_on(bench(settings, cpus, bin))
}
