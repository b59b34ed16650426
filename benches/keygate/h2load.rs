//! `--scenario h2load`: the server-bound view. The tonic client of the other scenarios
//! costs more per call than the servers it measures, so on two cores it saturates first
//! and hides the server's cost. Here the client is h2load (nghttp2, written in C, from
//! Debian's `nghttp2-client`, which `scripts/install-tools.sh` installs), and with two or
//! more cores the servers run on CPU 1 and h2load on CPU 0 (`taskset`), so the server is
//! the bottleneck. Each row: req/s, the server's CPU per answered call, and both as a
//! ratio to the no-op server's, in `--rounds` rounds over every case (each row its median).
//!
//! h2load sends the same gRPC message (a length-prefixed protobuf, `content-type:
//! application/grpc`) on every stream; it counts HTTP statuses, not gRPC ones, so each
//! scenario's answer is checked once with a real client before it is measured.
use crate::harness::load::{check_all, check_req};
use crate::harness::provision::{self, per, unlimited, Admin};
use crate::harness::report::{machine, write_json};
use crate::harness::server::{sqlite_url, Server};
use crate::harness::BoxError;
use crate::settings::Settings;
use envoy_types::pb::envoy::service::auth::v3 as ext;
use keygate::grpc::pb;
use prost::Message;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tokio::process::Command;

/// `h2load`, from `PATH` or where install-tools.sh puts tools.
fn h2load_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("h2load"))
        .find(|p| p.is_file())
}

fn taskset() -> Option<PathBuf> {
    ["/usr/bin/taskset", "/bin/taskset"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Pins every thread of `pid` to `cpu`.
async fn pin(pid: u32, cpu: usize) -> Result<(), BoxError> {
    let Some(ts) = taskset() else { return Ok(()) };
    let out = Command::new(ts)
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("taskset: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// A gRPC message as it goes on the wire: not compressed, 4-byte big-endian length, body.
fn grpc_frame(m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What one h2load run measured.
struct Run {
    rps: f64,
    done: u64,
    ok_2xx: u64,
    cpu_us: Option<f64>,
}

/// One h2load run of `secs` against `server` at `path` with `body`; the server's CPU over
/// the run divided by the answers.
#[allow(clippy::too_many_arguments)]
async fn h2load(
    bin: &Path,
    pinned: bool,
    server: &Server,
    path: &str,
    body: &Path,
    conns: usize,
    streams: usize,
    secs: u64,
    extra: &[String],
) -> Result<Run, BoxError> {
    let url = format!("http://{}{path}", server.addr);
    let args = [
        "-c".to_owned(),
        conns.to_string(),
        "-m".to_owned(),
        streams.to_string(),
        "-t".to_owned(),
        "1".to_owned(),
        "-D".to_owned(),
        secs.to_string(),
        "-H".to_owned(),
        "content-type: application/grpc".to_owned(),
        "-H".to_owned(),
        "te: trailers".to_owned(),
        "-d".to_owned(),
        body.display().to_string(),
        url,
    ];
    let mut cmd = match (pinned, taskset()) {
        (true, Some(ts)) => {
            let mut c = Command::new(ts);
            c.args(["-c", "0"]).arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    cmd.args(extra)
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let cpu_before = server.cpu();
    let out = cmd.output().await?;
    let cpu_after = server.cpu();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let number_before = |line: &str, word: &str| -> Option<f64> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    let mut run = Run {
        rps: 0.0,
        done: 0,
        ok_2xx: 0,
        cpu_us: None,
    };
    for line in text.lines() {
        if line.starts_with("finished in") {
            run.rps = number_before(line, "req/s").unwrap_or(0.0);
        } else if line.starts_with("requests:") {
            run.done = number_before(line, "done").unwrap_or(0.0) as u64;
        } else if line.starts_with("status codes:") {
            run.ok_2xx = number_before(line, "2xx").unwrap_or(0.0) as u64;
        }
    }
    if run.done == 0 {
        return Err(format!("h2load answered nothing: {text}").into());
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        run.cpu_us = Some((b - a).as_secs_f64() * 1e6 / run.done as f64);
    }
    Ok(run)
}

/// How every case is driven: h2load's binary, pinning and the load's shape.
struct Client<'a> {
    bin: &'a Path,
    pinned: bool,
    conns: usize,
    streams: usize,
    warm: u64,
    secs: u64,
}

impl Client<'_> {
    /// A warm-up run of `case`, then the measured one (`extra`: more h2load options).
    async fn measure(&self, case: &Case<'_>, extra: &[String]) -> Result<Run, BoxError> {
        let run = |secs| {
            h2load(
                self.bin,
                self.pinned,
                case.server,
                case.path,
                &case.body,
                self.conns,
                self.streams,
                secs,
                extra,
            )
        };
        run(self.warm).await?;
        run(self.secs).await
    }
}

/// One measured row.
struct Case<'a> {
    name: &'static str,
    server: &'a Server,
    path: &'static str,
    body: PathBuf,
    notes: &'static str,
}

pub async fn run(s: &Settings) -> Result<(), BoxError> {
    let Some(bin) = h2load_binary() else {
        return Err(
            "h2load is not installed: run ./scripts/install-tools.sh (Debian \
                    nghttp2-client), or apt-get install nghttp2-client"
                .into(),
        );
    };
    let (cpus, model) = machine();
    let pinned = cpus >= 2 && taskset().is_some();
    let (conns, streams) = (s.conns.max(1) * 2, s.concurrency.unwrap_or(16));
    let secs = s.duration.as_secs().max(1);
    let warm = s.warmup.as_secs().max(1);
    println!(
        "h2load: {conns} conns × {streams} streams, warm-up {warm} s, measure {secs} s; {}",
        if pinned {
            "servers on CPU 1, h2load on CPU 0"
        } else {
            "not pinned (one core, or no taskset)"
        }
    );
    let dir = tempfile::tempdir()?;
    let token = provision::admin_token();
    let noop = Server::noop().await?;
    let kg = Server::keygate(
        "keygate",
        &sqlite_url(&dir.path().join("h2load.db")),
        &token,
        &[("KEYGATE_LIMITS__FAILED_CHECKS_PER_IP", "0".into())],
    )
    .await?;
    if pinned {
        pin(noop.pid, 1).await?;
        pin(kg.pid, 1).await?;
    }
    let mut admin = Admin::new(kg.addr, &token).await?;
    admin.tenant("bench").await?;
    let hot = admin.key("bench", unlimited()).await?;
    let limited = admin.key("bench", per(1, 3600)).await?;
    check_all(
        kg.addr,
        Arc::new(vec![check_req(&hot); 3]),
        1,
        pb::Reason::Ok,
    )
    .await?;
    let spend = Arc::new(vec![check_req(&limited)]);
    let _ = check_all(kg.addr, spend, 1, pb::Reason::Ok).await;
    check_all(
        kg.addr,
        Arc::new(vec![check_req(&limited); 3]),
        1,
        pb::Reason::RateLimited,
    )
    .await?;

    let write = |name: &str, bytes: Vec<u8>| -> Result<PathBuf, BoxError> {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    let health = write(
        "health.bin",
        grpc_frame(&tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )?;
    let noop_case = Case {
        name: "noop",
        server: &noop,
        path: "/grpc.health.v1.Health/Check",
        body: health.clone(),
        notes: "tonic + grpc.health.v1 only",
    };
    let mut ext_headers = HashMap::new();
    ext_headers.insert("authorization".to_owned(), format!("Bearer {hot}"));
    let ext_req = ext::CheckRequest {
        attributes: Some(ext::AttributeContext {
            request: Some(ext::attribute_context::Request {
                http: Some(ext::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/v1/orders".into(),
                    headers: ext_headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let cases = [
        noop_case,
        Case {
            name: "check_cached",
            server: &kg,
            path: "/keygate.v1.Authorize/Check",
            body: write("cached.bin", grpc_frame(&check_req(&hot)))?,
            notes: "one hot key, ALLOW",
        },
        Case {
            name: "check_rate_limited",
            server: &kg,
            path: "/keygate.v1.Authorize/Check",
            body: write("limited.bin", grpc_frame(&check_req(&limited)))?,
            notes: "DENY RATE_LIMITED",
        },
        Case {
            name: "check_malformed",
            server: &kg,
            path: "/keygate.v1.Authorize/Check",
            body: write("malformed.bin", grpc_frame(&check_req("kg_not-a-key")))?,
            notes: "DENY MALFORMED_KEY (no lookup)",
        },
        Case {
            name: "ext_authz",
            server: &kg,
            path: "/envoy.service.auth.v3.Authorization/Check",
            body: write("ext.bin", grpc_frame(&ext_req))?,
            notes: "Envoy's CheckRequest, hot key",
        },
    ];
    let client = Client {
        bin: &bin,
        pinned,
        conns,
        streams,
        warm,
        secs,
    };
    // Rounds over every case in turn (machines drift: a slow minute touches every row
    // alike), each case's median round reported.
    let rounds = s.rounds.max(1);
    let mut runs: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, c) in cases.iter().enumerate() {
            let r = client.measure(c, &[]).await?;
            runs[i].push(r);
        }
    }
    let rows: Vec<(&Case, Run)> = cases
        .iter()
        .zip(runs)
        .map(|(c, mut rs)| {
            rs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let mid = rs.len() / 2;
            (c, rs.swap_remove(mid))
        })
        .collect();
    let noop_rps = rows[0].1.rps;
    let noop_cpu = rows[0].1.cpu_us;
    println!(
        "\n{:<20} {:>10} {:>8} {:>9} {:>8} {:>10}  notes",
        "scenario", "req/s", "×noop", "cpuµs/r", "cpu×noop", "2xx/done"
    );
    let mut out = Vec::new();
    for (c, r) in &rows {
        let cpu_ratio = match (r.cpu_us, noop_cpu) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        println!(
            "{:<20} {:>10.0} {:>8.2} {:>9} {:>8} {:>5}/{:<5}  {}",
            c.name,
            r.rps,
            r.rps / noop_rps,
            r.cpu_us.map_or("-".into(), |v| format!("{v:.1}")),
            cpu_ratio.map_or("-".into(), |v| format!("{v:.2}")),
            short(r.ok_2xx),
            short(r.done),
            c.notes
        );
        out.push(json!({
            "scenario": c.name, "rps": r.rps, "x_noop": r.rps / noop_rps,
            "server_cpu_us_per_req": r.cpu_us, "cpu_x_noop": cpu_ratio,
            "done": r.done, "status_2xx": r.ok_2xx, "notes": c.notes,
        }));
    }
    println!(
        "\n{rounds} rounds, each row its median round (by req/s); ×noop: over the noop's \
         ({noop_rps:.0} req/s); cpu×noop: server CPU per call over the noop's ({})",
        noop_cpu.map_or("-".into(), |v| format!("{v:.1} µs"))
    );
    write_json(
        "h2load.json",
        &json!({
            "machine": { "cpus": cpus, "model": model },
            "client": "h2load", "pinned": pinned, "conns": conns, "streams": streams,
            "duration_secs": secs, "rounds": rounds, "noop_rps": noop_rps, "noop_cpu_us": noop_cpu,
            "rows": out,
        }),
    )?;
    // Open loop: noop and check_cached at the same fixed arrival rate, half the no-op's
    // peak, latency per request from h2load's log (it schedules each client's requests at
    // --rps, so a slow answer does not delay the next request's start).
    let rate = (noop_rps / 2.0).max(100.0);
    let per_client = ((rate / conns as f64).round() as u64).max(1);
    println!(
        "\nopen loop at {} req/s (half the no-op's peak; {per_client}/s on each of {conns} conns):",
        per_client * conns as u64
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9}  p99 ×noop  p99.9 ×noop",
        "scenario", "req/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    let mut open = Vec::new();
    for c in cases.iter().take(2) {
        let log = dir.path().join(format!("{}.log", c.name));
        let extra = [
            format!("--rps={per_client}"),
            format!("--log-file={}", log.display()),
        ];
        let r = client.measure(c, &extra).await?;
        let mut us: Vec<u64> = std::fs::read_to_string(&log)?
            .lines()
            .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
            .collect();
        us.sort_unstable();
        let q = |p: f64| {
            us.get(((us.len() as f64 * p) as usize).min(us.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        open.push((c.name, r.rps, q(0.5), q(0.99), q(0.999)));
    }
    let (np99, np999) = (open[0].3.max(1) as f64, open[0].4.max(1) as f64);
    for (name, rps, p50, p99, p999) in &open {
        println!(
            "{name:<20} {rps:>9.0} {p50:>9} {p99:>9} {p999:>9}  {:>9.2}  {:>11.2}",
            *p99 as f64 / np99,
            *p999 as f64 / np999
        );
    }
    let open_json: Vec<_> = open
        .iter()
        .map(|(name, rps, p50, p99, p999)| {
            json!({ "scenario": name, "rps": rps, "p50_us": p50, "p99_us": p99,
                    "p999_us": p999, "p99_x_noop": *p99 as f64 / np99,
                    "p999_x_noop": *p999 as f64 / np999 })
        })
        .collect();
    write_json(
        "h2load_open_loop.json",
        &json!({ "rate": per_client * conns as u64, "rows": open_json }),
    )?;
    kg.stop().await?;
    noop.stop().await?;
    Ok(())
}

/// A count in at most five characters (`81k`).
fn short(n: u64) -> String {
    if n >= 10_000 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
