//! What Envoy ext_authz through Keygate adds to a request through Envoy.
//!
//! Run with `cargo bench --bench envoy` (add `-- --quick`, or `KG_BENCH_SECS=1`, for a
//! short run). It prints figures and never fails on them. It needs Envoy in
//! `.tools/venv/bin` (`./scripts/install-tools.sh`) or on `PATH`; without it the run prints
//! how to install it and succeeds without figures.
//!
//! Method. One process starts Keygate (`App::build` + `App::serve`) on `127.0.0.1:0`, on a
//! fresh SQLite file in a temp dir, with one tenant and one key whose limit (1e9 per 60 s)
//! is never reached. Keygate runs on a tokio runtime of its own (threads named `keygate`;
//! the load generator's are `load-gen`), so that the CPU time of each can be told apart.
//! Two Envoy processes (`--concurrency 1`: one worker thread each) run configurations
//! generated into the temp dir, each with one listener whose single route Envoy answers
//! itself (`direct_response` 200 `ok`), so that no upstream is measured:
//! - "envoy": the HTTP connection manager and the router, nothing else;
//! - "envoy+keygate": the same plus the `envoy.filters.http.ext_authz` gRPC filter of
//!   `examples/envoy/envoy.yaml` (`failure_mode_allow: false`, `status_on_error: 503`, 1 s
//!   timeout), on a `keygate` cluster speaking HTTP/2 to Keygate's port.
//!
//! Listener and admin ports are 0: each Envoy writes its admin address to a file
//! (`--admin-address-path`) and the bench asks the admin API (`/listeners`) which port the
//! listener got, so no other process can take a port in between. Before measuring, the
//! bench checks that "envoy" answers 200, and "envoy+keygate" 401 without the key and 200
//! with it (so ext_authz is really in the path; this also puts the key in Keygate's cache).
//!
//! Both Envoys are driven by the same closed loop: `KG_BENCH_CONNS` HTTP/2 connections
//! (default 4; h2c with prior knowledge, which the connection manager's `AUTO` codec
//! recognises by the preface) with `KG_BENCH_CONCURRENCY` streams each (default 16), every
//! stream sending its next `GET /` (key in `x-api-key`, the same request in both
//! scenarios) as soon as the last response has been read to its end. After 1 s of warm-up,
//! requests that complete within the next `KG_BENCH_SECS` (default 5) are counted.
//! Requests/s and the latency histogram (hdrhistogram, µs) cover 200 responses only; any
//! other status and failed streams (or lost connections) have their own columns. The two
//! scenarios alternate for `KG_BENCH_ROUNDS` rounds (default 3, at least 2) on fresh
//! connections.
//!
//! Reported: the throughput ratio envoy+keygate / envoy (best-of-rounds and
//! median-of-rounds); the latency Keygate adds (p99 and p50 of envoy+keygate minus those of
//! envoy in the same round, median over rounds); on Linux, the CPU time (user + system,
//! from `/proc/<pid>/task/*/stat`, 10 ms ticks) each side spent in the measured window per
//! 200 response: Envoy (the scenario's process), Keygate (this process's threads but the
//! load generator's) and the load generator (its runtime and the main thread); and Envoy's
//! own ext_authz counters for the whole run. CPU per request depends much less than
//! requests/s on how the cores happen to be shared, and says where ext_authz's cost goes.
//! Figures also go to `target/bench/envoy.json`.
//!
//! Caveats. Envoy, Keygate and the load generator share the machine's cores, so in
//! "envoy+keygate" Keygate takes CPU from both Envoy and the client, while in "envoy" it
//! idles: the ratio is "what ext_authz costs on this box", an upper bound on the cost when
//! Keygate has cores of its own. Envoy's one worker thread also runs the ext_authz gRPC
//! client, whose CPU cost lands in the Envoy column, not Keygate's. Loopback TCP hides the
//! network round trip to Keygate, which a real deployment adds to every request. The key
//! stays in Keygate's cache (TTL 60 s by default), so this is the hot path, not argon2 or
//! the store. No tracing subscriber is installed and Envoy logs only errors, without an
//! access log, so logging costs are not measured.
mod common;

use common::{authed, env_or, BoxError};
use hdrhistogram::Histogram;
use keygate::config::Config;
use keygate::grpc::pb::{self, key_admin_client::KeyAdminClient};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
// `bytes::Bytes`, the buffer type of h2's client, re-exported by tonic.
use tonic::codegen::Bytes;
use tonic::transport::Endpoint;

type SendRequest = h2::client::SendRequest<Bytes>;

const WARMUP: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const A: &str = "envoy";
const B: &str = "envoy+keygate";
/// Thread names of the two runtimes (at most 15 bytes: Linux truncates longer ones).
const KEYGATE_THREADS: &str = "keygate";
const LOAD_THREADS: &str = "load-gen";

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
            concurrency: env_or("KG_BENCH_CONCURRENCY", 16)?,
            rounds: env_or("KG_BENCH_ROUNDS", 3)?.max(2),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Keygate, in process (as in benches/check.rs).

/// A server running (on the runtime it was spawned from) until `stop` is sent.
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

/// Keygate on a fresh SQLite file in `dir`, with `admin_token` accepted, on the runtime
/// this is spawned on.
async fn start_keygate(dir: PathBuf, admin_token: String) -> Result<Running, BoxError> {
    let cfg = Config {
        database_url: format!("sqlite://{}", dir.join("bench.db").display()).into(),
        admin_token: Some(admin_token.into()),
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

/// Creates tenant "bench" and one key that no rate limit will stop; returns its secret
/// (never printed).
async fn provision(addr: SocketAddr, token: &str) -> Result<String, BoxError> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut admin = KeyAdminClient::new(channel);
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
    Ok(admin
        .create_key(authed(key, token)?)
        .await?
        .into_inner()
        .secret)
}

// ---------------------------------------------------------------------------------------
// Envoy, as child processes.

/// Shared by both scenarios: admin and listener on port 0, one route answered by Envoy
/// itself. The `__EXT_AUTHZ__` line becomes the filter (or nothing), `__CLUSTERS__` the
/// clusters.
const ENVOY_YAML: &str = r#"admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}

static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          # The default: HTTP/1.1, or HTTP/2 when the connection starts with its preface.
          codec_type: AUTO
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "ok"}}
          http_filters:
__EXT_AUTHZ__
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router

  clusters: __CLUSTERS__
"#;

/// The ext_authz filter of examples/envoy/envoy.yaml.
const EXT_AUTHZ_FILTER: &str = r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {cluster_name: keygate}
                timeout: 1s
              failure_mode_allow: false
              status_on_error: {code: 503}
"#;

/// Keygate over HTTP/2. The circuit breakers are raised from their defaults (1024
/// requests) so that a high `KG_BENCH_CONNS` x `KG_BENCH_CONCURRENCY` measures Keygate,
/// not Envoy's overflow 503s.
const KEYGATE_CLUSTER: &str = r#"
  - name: keygate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    circuit_breakers:
      thresholds: [{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}]
    load_assignment:
      cluster_name: keygate
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: __KEYGATE_PORT__}}}"#;

/// Scenario A's configuration without `keygate`, scenario B's with it.
fn envoy_yaml(keygate: Option<SocketAddr>) -> String {
    match keygate {
        None => ENVOY_YAML
            .replace("__EXT_AUTHZ__\n", "")
            .replace("__CLUSTERS__", "[]"),
        Some(addr) => ENVOY_YAML
            .replace("__EXT_AUTHZ__\n", EXT_AUTHZ_FILTER)
            .replace(
                "__CLUSTERS__",
                &KEYGATE_CLUSTER.replace("__KEYGATE_PORT__", &addr.port().to_string()),
            ),
    }
}

/// `.tools/venv/bin/envoy` (scripts/install-tools.sh), else the first `envoy` on `PATH`.
fn find_envoy() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(local)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
}

/// What `envoy --version` says after "version: ".
async fn envoy_version(bin: &Path) -> Result<String, BoxError> {
    let out = Command::new(bin).arg("--version").output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_once("version:")
        .map_or(text.trim(), |(_, v)| v.trim())
        .to_owned())
}

/// One Envoy process, killed if dropped before `stop`.
struct Envoy {
    name: &'static str,
    child: Child,
    pid: u32,
    admin: SocketAddr,
    listener: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Writes `yaml` to `dir`, starts Envoy on it and waits until its admin API says
    /// it is ready.
    async fn start(
        bin: &Path,
        dir: &Path,
        name: &'static str,
        yaml: &str,
    ) -> Result<Envoy, BoxError> {
        let file_name = name.replace('+', "-");
        let cfg = dir.join(format!("{file_name}.yaml"));
        let admin_path = dir.join(format!("{file_name}.admin"));
        let log = dir.join(format!("{file_name}.log"));
        std::fs::write(&cfg, yaml)?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let admin = loop {
            if let Some(status) = child.try_wait()? {
                let tail = log_tail(&log);
                return Err(
                    format!("envoy ({name}) exited with {status} at start-up:\n{tail}").into(),
                );
            }
            let written = std::fs::read_to_string(&admin_path).unwrap_or_default();
            if let Ok(admin) = written.trim().parse::<SocketAddr>() {
                if matches!(h2_once(admin, "GET", "/ready", None).await, Ok((200, _))) {
                    break admin;
                }
            }
            if Instant::now() > deadline {
                let tail = log_tail(&log);
                return Err(format!("envoy ({name}) not ready within 30 s:\n{tail}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let listener = listener_addr(admin).await?;
        let pid = child.id().ok_or("envoy exited")?;
        Ok(Envoy {
            name,
            child,
            pid,
            admin,
            listener,
            log,
        })
    }

    /// The `ext_authz` counters of the listener's connection manager.
    async fn ext_authz_counters(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, BoxError> {
        let (status, body) = h2_once(self.admin, "GET", "/stats?filter=ext_authz", None).await?;
        if status != 200 {
            return Err(format!("envoy ({}) /stats answered {status}", self.name).into());
        }
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| {
                let counter = k.strip_prefix("http.bench.ext_authz.")?;
                Some((counter.to_owned(), v.trim().parse::<u64>().ok()?.into()))
            })
            .collect())
    }

    /// Asks Envoy to exit (`/quitquitquit`), killing it after 10 s.
    async fn stop(mut self) -> Result<(), BoxError> {
        // Envoy may close the connection before answering: the exit is what counts.
        let _ = h2_once(self.admin, "POST", "/quitquitquit", None).await;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) if status.as_ref().is_ok_and(|s| s.success()) => Ok(()),
            Ok(status) => {
                let status = status?;
                let tail = log_tail(&self.log);
                Err(format!("envoy ({}) exited with {status}:\n{tail}", self.name).into())
            }
            Err(_) => {
                self.child.kill().await?;
                Err(format!(
                    "envoy ({}) ignored /quitquitquit for 10 s; killed",
                    self.name
                )
                .into())
            }
        }
    }
}

/// The last lines of an Envoy log (its stderr), for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The address of the single listener, from the admin API.
async fn listener_addr(admin: SocketAddr) -> Result<SocketAddr, BoxError> {
    let (status, body) = h2_once(admin, "GET", "/listeners?format=json", None).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let sock = &v["listener_statuses"][0]["local_address"]["socket_address"];
    match (
        status,
        sock["address"].as_str(),
        sock["port_value"].as_u64(),
    ) {
        (200, Some(ip), Some(port)) => Ok(format!("{ip}:{port}").parse()?),
        _ => Err(format!("unexpected /listeners answer ({status}): {body}").into()),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2 client (h2c, prior knowledge).

/// A fresh HTTP/2 connection and the task driving it.
async fn connect_h2(addr: SocketAddr) -> Result<(SendRequest, JoinHandle<()>), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = h2::client::Builder::new()
        .enable_push(false)
        .handshake(tcp)
        .await?;
    // Ends once every `SendRequest` is dropped (or on a connection error, which the
    // streams report themselves).
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((send, driver))
}

/// Sends `req` once `send` has room for a stream and reads the response to its end.
async fn roundtrip(
    send: &mut SendRequest,
    req: http::Request<()>,
) -> Result<(http::StatusCode, Vec<u8>), h2::Error> {
    std::future::poll_fn(|cx| send.poll_ready(cx)).await?;
    let (response, _) = send.send_request(req, true)?;
    let (head, mut body) = response.await?.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        data.extend_from_slice(&chunk);
    }
    Ok((head.status, data))
}

/// One request on a connection of its own, given 5 s: the admin API and the set-up checks.
async fn h2_once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    api_key: Option<&http::HeaderValue>,
) -> Result<(u16, String), BoxError> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(key) = api_key {
        req = req.header("x-api-key", key.clone());
    }
    let req = req.body(())?;
    let once = async {
        let (mut send, driver) = connect_h2(addr).await?;
        let answer = roundtrip(&mut send, req).await;
        drop(send);
        let _ = driver.await;
        Ok::<_, BoxError>(answer?)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), once)
        .await
        .map_err(|_| format!("{method} {path} on {addr}: no answer within 5 s"))??;
    Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
}

/// The request every stream repeats, in both scenarios.
struct Load {
    uri: http::Uri,
    api_key: http::HeaderValue,
}

impl Load {
    fn request(&self) -> http::Request<()> {
        let mut req = http::Request::new(());
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert("x-api-key", self.api_key.clone());
        req
    }
}

/// One stream's (then one run's) counts.
struct Tally {
    latency_us: Histogram<u64>,
    non_200: u64,
    first_non_200: Option<u16>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            non_200: 0,
            first_non_200: None,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: &h2::Error) {
        self.errors += 1;
        // h2 errors name a reason or an I/O error, never a header value.
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.non_200 += other.non_200;
        self.first_non_200 = self.first_non_200.or(other.first_non_200);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// Requests back to back on one connection until `end`, counting what completes in
/// `[start, end]`. A lost connection counts as one error, whenever it happens, and ends
/// the stream's loop.
async fn worker(mut send: SendRequest, load: Arc<Load>, start: Instant, end: Instant) -> Tally {
    let mut tally = Tally::new();
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        if let Err(e) = std::future::poll_fn(|cx| send.poll_ready(cx)).await {
            tally.error(&e);
            break;
        }
        let outcome = roundtrip(&mut send, load.request()).await;
        let done = Instant::now();
        if done < start || done > end {
            continue;
        }
        match outcome {
            Ok((status, _)) if status == http::StatusCode::OK => {
                let us = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                tally.latency_us.saturating_record(us.max(1));
            }
            Ok((status, _)) => {
                tally.non_200 += 1;
                tally.first_non_200.get_or_insert(status.as_u16());
            }
            Err(e) => tally.error(&e),
        }
    }
    tally
}

/// One measured run against `envoy` on fresh connections, with the CPU time each side
/// spent in the measured window (Linux only).
async fn run(
    envoy: &Envoy,
    s: &Settings,
    api_key: &http::HeaderValue,
) -> Result<(Tally, Option<Cpu>), BoxError> {
    let addr = envoy.listener;
    let load = Arc::new(Load {
        uri: format!("http://{addr}/").parse()?,
        api_key: api_key.clone(),
    });
    let mut conns = Vec::with_capacity(s.conns);
    for _ in 0..s.conns {
        conns.push(connect_h2(addr).await?);
    }
    let start = Instant::now() + WARMUP;
    let end = start + s.measure;
    let mut workers = Vec::with_capacity(s.conns * s.concurrency);
    let mut drivers = Vec::with_capacity(s.conns);
    for (send, driver) in conns {
        for _ in 0..s.concurrency {
            workers.push(tokio::spawn(worker(send.clone(), load.clone(), start, end)));
        }
        drivers.push(driver);
    }
    tokio::time::sleep_until(start.into()).await;
    let before = Cpu::sample(envoy.pid);
    tokio::time::sleep_until(end.into()).await;
    let cpu = Cpu::sample(envoy.pid)
        .zip(before)
        .map(|(after, before)| after.since(before));
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await?);
    }
    // Every `SendRequest` is gone: the connections close before the next run starts.
    for d in drivers {
        let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
    }
    Ok((total, cpu))
}

// ---------------------------------------------------------------------------------------
// CPU time, from /proc (Linux; elsewhere the CPU columns stay empty).

/// `/proc/<pid>/task/<tid>/stat` counts CPU time in USER_HZ ticks: 100 per second.
const TICK_MS: u64 = 10;

/// CPU time (user + system) spent by each side.
#[derive(Clone, Copy, Default)]
struct Cpu {
    envoy: Duration,
    keygate: Duration,
    load: Duration,
}

impl Cpu {
    /// So far: Envoy `envoy_pid`, and this process's threads, split into the load
    /// generator (its runtime's threads and the main thread, which drives the bench) and
    /// Keygate (the rest: its runtime and blocking pool, and SQLite's worker threads).
    fn sample(envoy_pid: u32) -> Option<Cpu> {
        let me = std::process::id();
        let mut cpu = Cpu {
            envoy: threads(envoy_pid)?.into_iter().map(|(_, _, t)| t).sum(),
            ..Cpu::default()
        };
        for (tid, name, t) in threads(me)? {
            if tid == me || name == LOAD_THREADS {
                cpu.load += t;
            } else {
                cpu.keygate += t;
            }
        }
        Some(cpu)
    }

    /// `self - before`, side by side (a thread that ended in between takes its time with
    /// it, hence saturating).
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            envoy: self.envoy.saturating_sub(before.envoy),
            keygate: self.keygate.saturating_sub(before.keygate),
            load: self.load.saturating_sub(before.load),
        }
    }

    /// µs per request for `n` requests, in the order envoy, keygate, load.
    fn per_request(&self, n: u64) -> Option<[f64; 3]> {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        (n > 0).then(|| [us(self.envoy), us(self.keygate), us(self.load)])
    }
}

/// (tid, name, CPU time) of each live thread of `pid`, or `None` without /proc.
fn threads(pid: u32) -> Option<Vec<(u32, String, Duration)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let threads = tasks.filter_map(|task| {
        let task = task.ok()?;
        let tid = task.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // "tid (name) state ...": the name may hold spaces and parentheses. utime and stime
        // are fields 14 and 15, counting from tid as field 1 and state as field 3.
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_owned();
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some((tid, name, Duration::from_millis((utime + stime) * TICK_MS)))
    });
    Some(threads.collect())
}

// ---------------------------------------------------------------------------------------
// Report.

/// One table row, also kept for the JSON summary.
fn row(
    round: usize,
    scenario: &str,
    t: &Tally,
    cpu: Option<[f64; 3]>,
    secs: f64,
) -> serde_json::Value {
    let h = &t.latency_us;
    let [p50, p90, p99, p999] = [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q));
    let (rps, errors, non_200) = (h.len() as f64 / secs, t.errors, t.non_200);
    let [envoy, keygate, load] = cpu
        .map_or(["-".to_owned(), "-".to_owned(), "-".to_owned()], |c| {
            c.map(|v| format!("{v:.1}"))
        });
    println!(
        "{round:>5}  {scenario:<14} {rps:>9.0} {p50:>8} {p90:>8} {p99:>8} {p999:>8} \
         {errors:>7} {non_200:>8} {envoy:>7} {keygate:>7} {load:>7}"
    );
    if let Some(status) = t.first_non_200 {
        println!("       {scenario} first non-200 status: {status}");
    }
    if let Some(e) = &t.first_error {
        println!("       {scenario} first error: {e}");
    }
    json!({
        "round": round, "scenario": scenario, "rps": rps, "ok": h.len(),
        "errors": errors, "non_200": non_200, "first_non_200": t.first_non_200,
        "first_error": t.first_error,
        "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999,
        "max_us": h.max(), "mean_us": h.mean(),
        "cpu_us_per_request": cpu.map(|[envoy, keygate, load]| json!({
            "envoy": envoy, "keygate": keygate, "load_generator": load,
        })),
    })
}

/// The median of `v`, `None` when empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| (v[(n - 1) / 2] + v[n / 2]) / 2.0)
}

/// The best of `v`, `None` when empty.
fn best(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

/// Per-round figures of one scenario.
#[derive(Default)]
struct Series {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// CPU µs per request: envoy, keygate, load generator (rounds with /proc only).
    cpu: [Vec<f64>; 3],
}

impl Series {
    /// Prints and records one run.
    fn push(
        &mut self,
        round: usize,
        scenario: &str,
        (t, cpu): (Tally, Option<Cpu>),
        secs: f64,
    ) -> serde_json::Value {
        let h = &t.latency_us;
        self.rps.push(h.len() as f64 / secs);
        self.p50.push(h.value_at_quantile(0.5) as f64);
        self.p99.push(h.value_at_quantile(0.99) as f64);
        let cpu = cpu.and_then(|c| c.per_request(h.len()));
        for (series, v) in self.cpu.iter_mut().zip(cpu.into_iter().flatten()) {
            series.push(v);
        }
        row(round, scenario, &t, cpu, secs)
    }

    /// Median CPU µs per request of side `i` (0 envoy, 1 keygate, 2 load generator).
    fn cpu(&self, i: usize) -> Option<f64> {
        median(&self.cpu[i])
    }
}

/// `b - a`, round by round.
fn minus(b: &[f64], a: &[f64]) -> Vec<f64> {
    b.iter().zip(a).map(|(b, a)| b - a).collect()
}

/// Refuses to measure a setup in which ext_authz is not what it should be.
async fn sanity(a: &Envoy, b: &Envoy, api_key: &http::HeaderValue) -> Result<(), BoxError> {
    // The first allowed request through B also puts the key in Keygate's cache (argon2).
    for (envoy, key, want) in [
        (a, Some(api_key), 200),
        (b, None, 401),
        (b, Some(api_key), 200),
    ] {
        let (status, _) = h2_once(envoy.listener, "GET", "/", key).await?;
        if status != want {
            let with = if key.is_some() { "with" } else { "without" };
            return Err(format!(
                "set-up check: {} answered {status} to GET / {with} the key, expected {want}",
                envoy.name
            )
            .into());
        }
    }
    Ok(())
}

async fn bench(
    s: Settings,
    cpus: usize,
    envoy_bin: PathBuf,
    keygate_rt: tokio::runtime::Handle,
) -> Result<(), BoxError> {
    let version = envoy_version(&envoy_bin).await?;
    let dir = tempfile::tempdir()?;
    let admin_token = format!("bench-{}", keygate::domain::key::random_base62(32));
    let keygate = keygate_rt
        .spawn(start_keygate(dir.path().to_owned(), admin_token.clone()))
        .await??;
    let secret = provision(keygate.addr, &admin_token).await?;
    let api_key = http::HeaderValue::from_str(&secret)?;
    let envoy_a = Envoy::start(&envoy_bin, dir.path(), A, &envoy_yaml(None)).await?;
    let envoy_b = Envoy::start(&envoy_bin, dir.path(), B, &envoy_yaml(Some(keygate.addr))).await?;
    sanity(&envoy_a, &envoy_b, &api_key).await?;

    println!("What Envoy ext_authz through Keygate adds to a request through Envoy");
    println!(
        "envoy {version} ({}), --concurrency 1; route answered by Envoy (direct_response 200)",
        envoy_bin.display()
    );
    println!(
        "  {A}: no ext_authz filter; {B}: ext_authz gRPC filter -> Keygate over HTTP/2, \
         failure_mode_allow false"
    );
    println!(
        "nproc {cpus}: Envoy (1 worker thread), Keygate ({cpus} runtime workers) and the load \
         generator ({cpus} runtime workers) share these cores; compare ratios, not absolute \
         figures"
    );
    println!(
        "load: h2c, {} conns x {} streams, GET / with x-api-key, warm-up {} s, measure {} s, \
         {} rounds (alternating)",
        s.conns,
        s.concurrency,
        WARMUP.as_secs(),
        s.measure.as_secs(),
        s.rounds
    );
    println!(
        "latency in µs over 200 responses; errors = failed streams or lost connections; \
         cpu/req = CPU µs per 200 response of envoy, keygate, load generator\n"
    );
    println!(
        "round  scenario           req/s      p50      p90      p99    p99.9  errors  non_200   \
         envoy keygate    load"
    );
    let secs = s.measure.as_secs_f64();
    let (mut rows, mut a, mut b) = (Vec::new(), Series::default(), Series::default());
    for round in 1..=s.rounds {
        rows.push(a.push(round, A, run(&envoy_a, &s, &api_key).await?, secs));
        rows.push(b.push(round, B, run(&envoy_b, &s, &api_key).await?, secs));
    }

    let ratio = |b: Option<f64>, a: Option<f64>| match (b, a) {
        (Some(b), Some(a)) if a > 0.0 => b / a,
        _ => 0.0,
    };
    let best_ratio = ratio(best(&b.rps), best(&a.rps));
    let median_ratio = ratio(median(&b.rps), median(&a.rps));
    let per_round: Vec<f64> = b
        .rps
        .iter()
        .zip(&a.rps)
        .map(|(b, a)| ratio(Some(*b), Some(*a)))
        .collect();
    let (p99_added, p50_added) = (minus(&b.p99, &a.p99), minus(&b.p50, &a.p50));
    let (p99_added_median, p50_added_median) = (
        median(&p99_added).unwrap_or(0.0),
        median(&p50_added).unwrap_or(0.0),
    );
    let counters = envoy_b.ext_authz_counters().await?;
    let counter = |name: &str| counters.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
    println!(
        "\n{B} / {A} req/s: best-of-rounds {best_ratio:.2}, median-of-rounds {median_ratio:.2}"
    );
    println!(
        "latency Keygate adds ({B} - {A}, same round, median over rounds): \
         p99 {p99_added_median:+.0} µs, p50 {p50_added_median:+.0} µs"
    );
    let cpu_summary = match (a.cpu(0), b.cpu(0), b.cpu(1), a.cpu(2), b.cpu(2)) {
        (Some(envoy_a), Some(envoy_b), Some(keygate), Some(load_a), Some(load_b)) => {
            println!(
                "CPU µs per request (median over rounds): Envoy {envoy_a:.1} -> {envoy_b:.1} \
                 ({:+.1}) with ext_authz; Keygate {keygate:.1} per check; load generator \
                 {load_a:.1} -> {load_b:.1}",
                envoy_b - envoy_a
            );
            json!({
                "envoy": {A: envoy_a, B: envoy_b},
                "keygate": {B: keygate},
                "load_generator": {A: load_a, B: load_b},
            })
        }
        _ => {
            println!("CPU µs per request: not measured (no /proc)");
            serde_json::Value::Null
        }
    };
    println!(
        "{B} ext_authz counters, whole run: ok {}, denied {}, error {}, failure_mode_allowed {}",
        counter("ok"),
        counter("denied"),
        counter("error"),
        counter("failure_mode_allowed")
    );

    let summary = json!({
        "nproc": cpus,
        "envoy_version": version,
        "settings": {
            "conns": s.conns, "concurrency": s.concurrency, "warmup_secs": WARMUP.as_secs(),
            "measure_secs": s.measure.as_secs(), "rounds": s.rounds, "envoy_concurrency": 1,
        },
        "runs": rows,
        "ratio": {
            "best_of_rounds": best_ratio, "median_of_rounds": median_ratio,
            "per_round": per_round,
        },
        "added_latency_us": {
            "p99_median": p99_added_median, "p99_per_round": p99_added,
            "p50_median": p50_added_median, "p50_per_round": p50_added,
        },
        "cpu_us_per_request_median": cpu_summary,
        "ext_authz_counters": counters,
    });
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!("summary written to {}", path.display());

    // Envoy first, so that Keygate's graceful stop has no ext_authz connection to drain.
    let stopped_a = envoy_a.stop().await;
    let stopped_b = envoy_b.stop().await;
    let stopped_keygate = keygate.shutdown().await;
    stopped_a.and(stopped_b).and(stopped_keygate)
}

fn main() -> Result<(), BoxError> {
    let Some(envoy_bin) = find_envoy() else {
        println!(
            "envoy bench: envoy not found in .tools/venv/bin or on PATH. \
             Run ./scripts/install-tools.sh, then cargo bench --bench envoy. No figures."
        );
        return Ok(());
    };
    let settings = Settings::from_env()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let keygate_rt = runtime(KEYGATE_THREADS)?;
    let load_rt = runtime(LOAD_THREADS)?;
    load_rt.block_on(bench(
        settings,
        cpus,
        envoy_bin,
        keygate_rt.handle().clone(),
    ))
}
