//! Servers under test as processes of their own — the release `keygate` binary, or this
//! runner re-executed as the no-op ceiling — so that each one's CPU time is its own.
use super::load::Target;
use super::BoxError;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The flag that makes this runner the no-op server.
pub const SERVE_NOOP: &str = "--serve-noop";
/// Longest wait for a "serving" line (a keygate under callgrind starts slowly).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for an exit after SIGTERM (keygate drains for at most 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Log lines kept per process, shown when it fails.
const LOG_TAIL: usize = 40;

/// CPU time (user + system, all threads) a process has used, from `/proc/<pid>/stat`;
/// `None` where there is no /proc.
pub fn cpu_used(pid: u32) -> Option<Duration> {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    // USER_HZ, the unit of /proc times: 100 on Linux unless `getconf` says otherwise.
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
    // After the command name (in parentheses, possibly with spaces) come fields 3…;
    // utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_nanos(
        (utime + stime).saturating_mul(1_000_000_000) / ticks,
    ))
}

/// Resident memory of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
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

/// The `keygate` executable Cargo built for this bench (`CARGO_BIN_EXE_keygate`, from
/// the bench's own profile).
pub fn keygate_binary() -> Result<PathBuf, BoxError> {
    option_env!("CARGO_BIN_EXE_keygate")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| "CARGO_BIN_EXE_keygate is not set: run through `cargo bench`".into())
}

/// `sqlite://` URL of the file `db`.
pub fn sqlite_url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keygate with a Redis limiter on `url` under a prefix of the run's own, refusing calls
/// when Redis fails (`[redis] on_error = deny`), so that a failure shows up as refused
/// calls instead of silently measuring the in-memory fallback.
pub fn redis_limiter(url: &str, prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KEYGATE_RATE_LIMITER", "redis".into()),
        ("KEYGATE_REDIS__URL", url.into()),
        ("KEYGATE_REDIS__KEY_PREFIX", prefix.into()),
        ("KEYGATE_REDIS__TIMEOUT_MS", "1000".into()),
        ("KEYGATE_REDIS__ON_ERROR", "deny".into()),
    ]
}

/// A server process, killed if dropped before `stop`.
pub struct Server {
    pub name: String,
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    /// From spawn to its "serving" line.
    pub started_in: Duration,
    /// Runs under `KG_BENCH_WRAP` (a profiler).
    pub wrapped: bool,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// A line holding this (the admin token) is never shown.
    secret: String,
}

impl Server {
    /// Spawns `cmd` and waits until `addr_of` finds the listen address in a line of the
    /// stream it writes (`stderr` for keygate's JSON log, `stdout` for the no-op server),
    /// which is drained for the process's whole life (a full pipe would stall it).
    async fn spawn(
        name: &str,
        mut cmd: Command,
        from_stdout: bool,
        addr_of: fn(&str) -> Option<String>,
        secret: &str,
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
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
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
                let mut t = lock(&sink);
                if t.len() == LOG_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let mut server = Server {
            name: name.to_owned(),
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            started_in: Duration::ZERO,
            wrapped: false,
            tail,
            secret: secret.to_owned(),
        };
        let listen = match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(listen)) => listen,
            Ok(Err(_)) => {
                let status = server.child.wait().await?;
                return Err(server.failed(&format!("exited before serving ({status})")));
            }
            Err(_) => return Err(server.failed(&format!("did not start within {START_TIMEOUT:?}"))),
        };
        server.started_in = started.elapsed();
        server.addr = listen
            .parse()
            .map_err(|e| server.failed(&format!("printed an unusable address {listen:?}: {e}")))?;
        Ok(server)
    }

    /// Keygate on `database_url`, with `env` on top of the bench's defaults. Its
    /// environment is otherwise cleared, so that a stray `RUST_LOG`, `KEYGATE_*` or
    /// `OTEL_*` in the shell cannot skew one side of a comparison.
    pub async fn keygate(
        name: &str,
        database_url: &str,
        token: &str,
        env: &[(&str, String)],
    ) -> Result<Server, BoxError> {
        // KG_BENCH_WRAP="valgrind --tool=callgrind …" runs keygate under a profiler
        // (scripts/profile.sh).
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
            .env("KEYGATE_DATABASE_URL", database_url)
            .env("KEYGATE_LISTEN", "127.0.0.1:0")
            // No metrics port: several servers would fight over it, and it is not measured.
            .env("KEYGATE_METRICS__ENABLED", "false")
            .env("KEYGATE_LOG__FORMAT", "json")
            .env("KEYGATE_LOG__FILTER", "warn,keygate=info")
            .env("KEYGATE_ADMIN_TOKEN", token)
            // Every key stays cached for the whole run: the hot path, not a refresh.
            .env("KEYGATE_CACHE__MAX_ENTRIES", "1000000")
            .env("KEYGATE_CACHE__TTL_SECS", "3600");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut server = Self::spawn(name, cmd, false, serving_addr, token).await?;
        server.wrapped = !wrap.is_empty();
        Ok(server)
    }

    /// This runner re-executed as the no-op tonic server.
    pub async fn noop() -> Result<Server, BoxError> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg(SERVE_NOOP);
        Self::spawn(
            "noop",
            cmd,
            true,
            |line| line.strip_prefix("noop serving ").map(str::to_owned),
            "",
        )
        .await
    }

    /// Where a load goes: this server, its CPU shown as `column`.
    pub fn target(&self, column: &'static str) -> Target {
        Target {
            addr: self.addr,
            cpu: vec![(column, self.pid)],
            callgrind: self.wrapped.then_some(self.pid),
        }
    }

    pub fn cpu(&self) -> Option<Duration> {
        cpu_used(self.pid)
    }

    /// The error for a server that failed, with its last lines (those that could hold
    /// the admin token withheld).
    fn failed(&self, why: &str) -> BoxError {
        format!(
            "{} {why}; its last lines:\n{}",
            self.name,
            self.shown_tail()
        )
        .into()
    }

    fn shown_tail(&self) -> String {
        lock(&self.tail)
            .iter()
            .map(|l| {
                if (!self.secret.is_empty() && l.contains(&self.secret)) || l.contains("kgadm_") {
                    "    [line withheld: it may hold a credential]".to_owned()
                } else {
                    format!("    {l}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM, then waits for the graceful exit (a tracing keygate flushes its spans on
    /// the way out); kills it after `STOP_TIMEOUT`.
    pub async fn stop(mut self) -> Result<ExitStatus, BoxError> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!("{}", self.failed(&format!("exited with {status}")));
                }
                Ok(status)
            }
            Err(_) => {
                self.child.kill().await?;
                Err(format!("{} ignored SIGTERM for {STOP_TIMEOUT:?}; killed", self.name).into())
            }
        }
    }
}

/// The `listen` field of keygate's JSON "keygate serving" line.
fn serving_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["fields"]["message"] == "keygate serving" || v["message"] == "keygate serving")
        .then(|| {
            v["fields"]["listen"]
                .as_str()
                .or(v["listen"].as_str())
                .map(str::to_owned)
        })
        .flatten()
}

/// The no-op ext_authz server: every check is OK, with three upstream headers and three
/// response headers, about what Keygate's OK carries (the `envoy` experiment's baseline).
struct NoopAuthz;

#[tonic::async_trait]
impl envoy_types::ext_authz::v3::pb::Authorization for NoopAuthz {
    async fn check(
        &self,
        _req: tonic::Request<envoy_types::ext_authz::v3::pb::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>, tonic::Status> {
        use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction};
        use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
        let mut resp = CheckResponse::new();
        resp.set_status(tonic::Status::ok(""));
        let mut ok = OkHttpResponseBuilder::new();
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        for (name, value) in [
            ("x-noop-key-id", "key_00000000000000000000"),
            ("x-noop-tenant-id", "bench"),
            ("x-noop-scopes", "*"),
        ] {
            ok.add_header(name, value, overwrite, true);
        }
        for (name, value) in [
            ("x-ratelimit-limit", "1000000000"),
            ("x-ratelimit-remaining", "999999999"),
            ("x-ratelimit-reset", "1800000000"),
        ] {
            ok.add_response_header(name, value, overwrite, false);
        }
        resp.set_http_response(ok);
        Ok(tonic::Response::new(resp))
    }
}

/// The no-op ceiling, run as `keygate-bench --serve-noop`: prints its address, serves
/// `grpc.health.v1` and a no-op ext_authz (`NoopAuthz`) until SIGTERM, with Keygate's
/// server settings (TCP_NODELAY) on the same tonic/hyper/h2 stack.
pub fn serve_noop() -> Result<(), BoxError> {
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
            .add_service(envoy_types::ext_authz::v3::pb::AuthorizationServer::new(
                NoopAuthz,
            ))
            .serve_with_incoming_shutdown(incoming, async move {
                term.recv().await;
            })
            .await?;
        Ok::<(), BoxError>(())
    })
}
