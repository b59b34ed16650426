//! Envoy as a child process (`--concurrency 1`: one worker thread) on a configuration
//! generated into a temp dir: one listener whose single route Envoy answers itself
//! (`direct_response` 200 `ok`), with or without the ext_authz filter of
//! `examples/envoy/envoy.yaml` in front of it. Listener and admin ports are 0: Envoy
//! writes its admin address to a file (`--admin-address-path`) and the admin API
//! (`/listeners`) says which port the listener got, so no other process can take a port
//! in between.
use super::h2;
use super::load::Target;
use super::BoxError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The example's `allowed_headers`, appended to the filter: only the headers Keygate reads.
const ALLOWED_HEADERS: &str = r#"              allowed_headers:
                patterns:
                - {exact: authorization}
                - {exact: x-api-key}
                - {exact: x-neariq-key}
                - {exact: x-tenant-id}
                - {exact: traceparent}
                - {exact: tracestate}
                - {exact: x-forwarded-for}
                - {prefix: x-keygate-}
"#;

/// Keygate over HTTP/2. The circuit breakers are raised from their defaults (1024
/// requests) so that a high `--conns` x `--concurrency` measures Keygate,
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
pub fn envoy_yaml(keygate: Option<SocketAddr>) -> String {
    envoy_yaml_with(keygate, false)
}

/// As [`envoy_yaml`]; `allowed_headers`: the filter forwards only the headers Keygate
/// reads (examples/envoy/envoy.yaml's setting).
pub fn envoy_yaml_with(keygate: Option<SocketAddr>, allowed_headers: bool) -> String {
    let filter = if allowed_headers {
        format!("{EXT_AUTHZ_FILTER}{ALLOWED_HEADERS}")
    } else {
        EXT_AUTHZ_FILTER.to_owned()
    };
    match keygate {
        None => ENVOY_YAML
            .replace("__EXT_AUTHZ__\n", "")
            .replace("__CLUSTERS__", "[]"),
        Some(addr) => ENVOY_YAML.replace("__EXT_AUTHZ__\n", &filter).replace(
            "__CLUSTERS__",
            &KEYGATE_CLUSTER.replace("__KEYGATE_PORT__", &addr.port().to_string()),
        ),
    }
}

/// `.tools/venv/bin/envoy` (scripts/install-tools.sh), else the first `envoy` on `PATH`.
pub fn find_envoy() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(local)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
}

/// What `envoy --version` says after "version: ".
pub async fn envoy_version(bin: &Path) -> Result<String, BoxError> {
    let out = Command::new(bin).arg("--version").output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_once("version:")
        .map_or(text.trim(), |(_, v)| v.trim())
        .to_owned())
}

/// One Envoy process, killed if dropped before `stop`.
pub struct Envoy {
    pub name: &'static str,
    child: Child,
    pub pid: u32,
    admin: SocketAddr,
    pub listener: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Writes `yaml` to `dir`, starts Envoy on it and waits until its admin API says
    /// it is ready.
    pub async fn start(
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
                if matches!(
                    h2::once(admin, http::Method::GET, "/ready", None).await,
                    Ok((200, _))
                ) {
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

    /// Where a load through this Envoy goes; its CPU is shown as `envoy`.
    pub fn target(&self) -> Target {
        Target {
            addr: self.listener,
            cpu: vec![("envoy", self.pid)],
            callgrind: None,
        }
    }

    /// The `ext_authz` counters of the listener's connection manager.
    pub async fn ext_authz_counters(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, BoxError> {
        let (status, body) = h2::once(
            self.admin,
            http::Method::GET,
            "/stats?filter=ext_authz",
            None,
        )
        .await?;
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
    pub async fn stop(mut self) -> Result<(), BoxError> {
        // Envoy may close the connection before answering: the exit is what counts.
        let _ = h2::once(self.admin, http::Method::POST, "/quitquitquit", None).await;
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
    let (status, body) = h2::once(admin, http::Method::GET, "/listeners?format=json", None).await?;
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
