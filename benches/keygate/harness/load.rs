//! The load generator: what a scenario sends, closed and open loops over it, and the
//! CPU each watched process spends in the measured window.
use super::h2::{self, SendRequest};
use super::provision::FreshSecrets;
use super::server::cpu_used;
use super::tally::{Measured, Outcome, Tally};
use super::BoxError;
use envoy_types::pb::envoy::service::auth::v3 as ext;
use keygate::grpc::pb::{self, authorize_client::AuthorizeClient};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Connections, calls in flight on each, and the window: after `warmup`, calls
/// completing within `duration` are counted.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub conns: usize,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Where a load goes, and whose CPU its window counts (this process, the load
/// generator, is always counted too, as `gen`).
pub struct Target {
    pub addr: SocketAddr,
    pub cpu: Vec<(&'static str, u32)>,
    /// A server under callgrind: instrumentation on only within the window.
    pub callgrind: Option<u32>,
}

impl Target {
    /// Also counts process `pid`'s CPU, as `column`.
    pub fn and_cpu(mut self, column: &'static str, pid: u32) -> Target {
        self.cpu.push((column, pid));
        self
    }
}

/// One HTTP/2 channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// A cheap per-worker random source (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
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
pub struct Zipf(Vec<f64>);

impl Zipf {
    pub fn new(n: usize) -> Zipf {
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
pub enum Load {
    /// `grpc.health.v1.Health/Check`, SERVING.
    Noop,
    /// `keygate.v1.Authorize/Check` of one of `reqs` (the first, or Zipf-drawn), `want`.
    Check {
        reqs: Arc<Vec<pb::CheckRequest>>,
        zipf: Option<Arc<Zipf>>,
        want: pb::Reason,
    },
    /// A known key id with a fresh secret every call (store lookup + argon2 verify),
    /// KEY_NOT_FOUND.
    FreshSecret(Arc<FreshSecrets>),
    /// Envoy's `Authorization/Check` message, OK.
    ExtAuthz(Arc<ext::CheckRequest>),
    /// `GET /` with the key in `x-api-key` over plain HTTP/2 (h2c, prior knowledge), 200.
    Http(Arc<h2::Get>),
}

/// One connection of a load.
enum Conn {
    Grpc(Channel),
    H2(SendRequest, JoinHandle<()>),
}

enum Client {
    Noop(HealthClient<Channel>),
    Check(AuthorizeClient<Channel>),
    Ext(ext::authorization_client::AuthorizationClient<Channel>),
    H2(SendRequest),
}

/// One check of `k` (the request is the only place the key is kept).
pub fn check_req(k: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: k.to_owned(),
        ..Default::default()
    }
}

impl Load {
    /// A single hot check expecting `want`.
    pub fn check(req: pb::CheckRequest, want: pb::Reason) -> Load {
        Load::Check {
            reqs: Arc::new(vec![req]),
            zipf: None,
            want,
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, BoxError> {
        Ok(match self {
            Load::Http(_) => {
                let (send, driver) = h2::connect(addr).await?;
                Conn::H2(send, driver)
            }
            _ => Conn::Grpc(connect(addr).await?),
        })
    }

    fn client(&self, conn: &Conn) -> Client {
        match (self, conn) {
            (_, Conn::H2(send, _)) => Client::H2(send.clone()),
            (Load::Noop, Conn::Grpc(ch)) => Client::Noop(HealthClient::new(ch.clone())),
            (Load::ExtAuthz(_), Conn::Grpc(ch)) => Client::Ext(
                ext::authorization_client::AuthorizationClient::new(ch.clone()),
            ),
            (_, Conn::Grpc(ch)) => Client::Check(AuthorizeClient::new(ch.clone())),
        }
    }

    /// One call. Answers are described by number only: no key reaches a tally.
    async fn call(&self, c: &mut Client, rng: &mut Rng) -> Outcome {
        let grpc = |r: Result<bool, tonic::Status>, other: &dyn Fn() -> String| match r {
            Ok(true) => Outcome::Expected,
            Ok(false) => Outcome::Other(other()),
            // Server messages never carry the key; the code and message are safe.
            Err(s) => Outcome::Failed(format!("{:?}: {}", s.code(), s.message())),
        };
        match (self, c) {
            (Load::Noop, Client::Noop(h)) => {
                let r = h.check(HealthCheckRequest::default()).await;
                let status = r.as_ref().map_or(0, |r| r.get_ref().status);
                grpc(r.map(|_| status == 1), &|| {
                    format!("health status {status}")
                })
            }
            (Load::Check { reqs, zipf, want }, Client::Check(a)) => {
                let i = zipf.as_ref().map_or(0, |z| z.sample(rng));
                let r = a.check(reqs[i].clone()).await;
                let reason = r.as_ref().map_or(0, |r| r.get_ref().reason);
                grpc(r.map(|_| reason == *want as i32), &|| {
                    format!("reason {reason}")
                })
            }
            (Load::FreshSecret(secrets), Client::Check(a)) => {
                let r = a.check(check_req(&secrets.next())).await;
                let reason = r.as_ref().map_or(0, |r| r.get_ref().reason);
                let want = pb::Reason::KeyNotFound as i32;
                grpc(r.map(|_| reason == want), &|| format!("reason {reason}"))
            }
            (Load::ExtAuthz(req), Client::Ext(e)) => {
                let r = e.check(req.as_ref().clone()).await;
                let code = r
                    .as_ref()
                    .map_or(-1, |r| r.get_ref().status.as_ref().map_or(-1, |s| s.code));
                grpc(r.map(|_| code == 0), &|| format!("status code {code}"))
            }
            (Load::Http(req), Client::H2(send)) => h2::call(send, req).await,
            _ => Outcome::Failed("load and client do not match".into()),
        }
    }
}

impl Conn {
    /// Waits (5 s at most) for an HTTP/2 connection to close once its last sender is
    /// gone, so that it is not still open during the next run.
    async fn close(self) {
        if let Conn::H2(send, driver) = self {
            drop(send);
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
        }
    }
}

/// The CPU of `target`'s processes and this one between `start` and `end`, read at
/// those instants (and callgrind's instrumentation on between them).
fn watch(
    target: &Target,
    start: Instant,
    end: Instant,
) -> JoinHandle<Vec<(&'static str, Option<Duration>)>> {
    let mut pids = target.cpu.clone();
    pids.push(("gen", std::process::id()));
    let callgrind = target.callgrind;
    tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        if let Some(pid) = callgrind {
            // Count only the measured window: the server runs with --instr-atstart=no
            // and dumps when it exits.
            callgrind_control("--instr=on", pid).await;
        }
        let before: Vec<_> = pids.iter().map(|(_, pid)| cpu_used(*pid)).collect();
        tokio::time::sleep_until(end.into()).await;
        let used = pids
            .iter()
            .zip(before)
            .map(|((name, pid), before)| {
                let after = cpu_used(*pid);
                (*name, after.zip(before).map(|(a, b)| a.saturating_sub(b)))
            })
            .collect();
        if let Some(pid) = callgrind {
            callgrind_control("--instr=off", pid).await;
        }
        used
    })
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

/// `shape.conns` fresh connections to `target`, `shape.concurrency` clients on each.
async fn clients(
    target: &Target,
    load: &Load,
    shape: &Shape,
) -> Result<(Vec<Conn>, Vec<Client>), BoxError> {
    let (mut conns, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..shape.conns {
        let conn = load.connect(target.addr).await?;
        clients.extend((0..shape.concurrency).map(|_| load.client(&conn)));
        conns.push(conn);
    }
    Ok((conns, clients))
}

/// Joins the workers' tallies and closes the connections.
async fn gather(workers: Vec<JoinHandle<Tally>>, conns: Vec<Conn>) -> Result<Tally, BoxError> {
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await?);
    }
    for c in conns {
        c.close().await;
    }
    Ok(tally)
}

/// Closed loop: every client sends its next call as soon as the last one returns; calls
/// completing within the window are counted.
pub async fn closed_loop(
    target: &Target,
    load: &Load,
    shape: &Shape,
) -> Result<Measured, BoxError> {
    let (conns, clients) = clients(target, load, shape).await?;
    let start = Instant::now() + shape.warmup;
    let end = start + shape.duration;
    let cpu = watch(target, start, end);
    let workers = clients
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
                    if !t.count(outcome, done - sent, done >= start && done <= end) {
                        break;
                    }
                }
                t
            })
        })
        .collect();
    let tally = gather(workers, conns).await?;
    if let Some(pid) = target.callgrind {
        // scripts/profile.sh reads this line.
        println!(
            "callgrind: pid {pid} counted the measured window: {} answered calls \
             (+{} other, {} errors)",
            tally.latency_us.len(),
            tally.other,
            tally.errors
        );
    }
    Ok(Measured {
        tally,
        secs: shape.duration.as_secs_f64(),
        cpu: cpu.await?,
    })
}

/// Open loop: call `i` is due at `t0 + i / rate` whatever happened to earlier calls, and
/// its latency is measured from that scheduled time, so a stall counts against every call
/// it delays (no coordinated omission). The clients take the due calls in order; they
/// only limit the rate if every one is busy, which then shows as latency.
pub async fn open_loop(
    target: &Target,
    load: &Load,
    rate: f64,
    shape: &Shape,
) -> Result<Measured, BoxError> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * (shape.warmup + shape.duration).as_secs_f64()) as usize;
    let (conns, clients) = clients(target, load, shape).await?;
    let t0 = Instant::now() + Duration::from_millis(100);
    let measure_from = t0 + shape.warmup;
    let cpu = watch(target, measure_from, measure_from + shape.duration);
    let next = Arc::new(AtomicUsize::new(0));
    let workers = clients
        .into_iter()
        .enumerate()
        .map(|(w, mut client)| {
            let (load, next) = (load.clone(), next.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(w as u64 + 1);
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
                    if !t.count(outcome, from.elapsed(), due >= measure_from) {
                        return t;
                    }
                }
            })
        })
        .collect();
    let tally = gather(workers, conns).await?;
    Ok(Measured {
        tally,
        secs: shape.duration.as_secs_f64(),
        cpu: cpu.await?,
    })
}

/// One client on a connection of its own calling `load` every `pause` until `stop` is
/// set: a probe alongside another load, every call counted.
pub async fn probe(
    addr: SocketAddr,
    load: &Load,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Tally>, BoxError> {
    let conn = load.connect(addr).await?;
    let (mut client, load) = (load.client(&conn), load.clone());
    Ok(tokio::spawn(async move {
        let (mut rng, mut t) = (Rng::new(1), Tally::new());
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let outcome = load.call(&mut client, &mut rng).await;
            if !t.count(outcome, sent.elapsed(), true) {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        conn.close().await;
        t
    }))
}

/// Checks every request once with `inflight` calls at a time; errors if any is not
/// `want`. Returns how long it took.
pub async fn check_all(
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
