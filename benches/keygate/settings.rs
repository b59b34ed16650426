//! The runner's options: flags, with the older `KG_BENCH_*` variables as their defaults.
use crate::harness::load::Shape;
use crate::harness::BoxError;
use std::time::Duration;

/// The suite: every scenario against the no-op ceiling, run when no `--scenario` is given.
pub const SUITE: &[&str] = &[
    "noop",
    "check_cached",
    "check_many_keys",
    "check_rate_limited",
    "check_uncached",
    "check_redis",
    "ext_authz",
    "cold_start",
    "open_loop",
];

/// The A/B experiments: two set-ups alternating round by round, run only when named.
pub const EXPERIMENTS: &[&str] = &[
    "envoy",
    "tracing",
    "usage",
    "redis_vs_memory",
    "revocation",
    "h2load",
    "memory",
];

/// Names that stand for several scenarios.
const GROUPS: &[(&str, &[&str])] = &[
    ("replicas", &["redis_vs_memory", "revocation"]),
    ("experiments", EXPERIMENTS),
];

const OPTIONS: &str = "--quick --scenario NAME --conns N --concurrency N --duration S \
                       --warmup S --rounds N --keys N --cold-keys N --revocations N \
                       --sample-ratio R";

#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub scenarios: Vec<String>,
    pub conns: usize,
    /// Calls in flight per connection; `None`: each scenario's default.
    pub concurrency: Option<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Rounds of each A/B experiment (at least 2).
    pub rounds: usize,
    pub many_keys: usize,
    pub cold_keys: usize,
    pub revocations: usize,
    /// `otlp_sample_ratio` of the traced side of `tracing`.
    pub sample_ratio: f64,
    pub redis_url: String,
}

impl Settings {
    pub fn wants(&self, name: &str) -> bool {
        self.scenarios.iter().any(|x| x == name)
    }

    /// The load's shape, with `concurrency` unless `--concurrency` says otherwise.
    pub fn shape(&self, concurrency: usize) -> Shape {
        Shape {
            conns: self.conns,
            concurrency: self.concurrency.unwrap_or(concurrency),
            warmup: self.warmup,
            duration: self.duration,
        }
    }
}

/// `name` from the environment: `None` when unset, an error when it does not parse.
fn env<T: std::str::FromStr>(
    name: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<Option<T>, BoxError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<T>() {
            Ok(n) if valid(&n) => Ok(Some(n)),
            _ => Err(format!("{name}={v:?} is out of range or not a number").into()),
        },
    }
}

fn positive(name: &str, v: &str) -> Result<usize, BoxError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name}: {v:?} is not a positive integer").into())
}

fn seconds(name: &str, v: &str) -> Result<Duration, BoxError> {
    v.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0 && *n < 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{name}: {v:?} is not a number of seconds").into())
}

fn ratio(name: &str, v: &str) -> Result<f64, BoxError> {
    v.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{name}: {v:?} is not between 0 and 1").into())
}

/// Adds `name` (or the scenarios it stands for) to `to`, once each.
fn select(to: &mut Vec<String>, name: &str) -> Result<(), BoxError> {
    let names: Vec<&str> = match name {
        "all" => SUITE.iter().chain(EXPERIMENTS).copied().collect(),
        "suite" => SUITE.to_vec(),
        _ => match GROUPS.iter().find(|(g, _)| *g == name) {
            Some((_, members)) => members.to_vec(),
            None if SUITE.contains(&name) || EXPERIMENTS.contains(&name) => vec![name],
            None => {
                return Err(format!(
                    "--scenario {name:?}: one of {}, {}, or a group: all, suite, {}",
                    SUITE.join(", "),
                    EXPERIMENTS.join(", "),
                    GROUPS
                        .iter()
                        .map(|(g, _)| *g)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
                .into())
            }
        },
    };
    for n in names {
        if !to.iter().any(|x| x == n) {
            to.push(n.to_owned());
        }
    }
    Ok(())
}

pub fn parse_args() -> Result<Settings, BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let secs = env::<f64>("KG_BENCH_SECS", |n| *n > 0.0 && *n < 3600.0)?;
    let mut s = Settings {
        quick,
        scenarios: vec![],
        conns: env("KG_BENCH_CONNS", |n: &usize| *n > 0)?.unwrap_or(4),
        concurrency: env("KG_BENCH_CONCURRENCY", |n: &usize| *n > 0)?,
        duration: Duration::from_secs_f64(secs.unwrap_or(if quick { 2.0 } else { 5.0 })),
        warmup: Duration::from_millis(if quick { 500 } else { 1000 }),
        rounds: env("KG_BENCH_ROUNDS", |n: &usize| *n > 0)?.unwrap_or(3),
        many_keys: if quick { 10_000 } else { 100_000 },
        cold_keys: if quick { 1_000 } else { 10_000 },
        revocations: env("KG_BENCH_REVOCATIONS", |n: &usize| *n > 0)?.unwrap_or(100),
        sample_ratio: env("KG_BENCH_SAMPLE_RATIO", |r: &f64| (0.0..=1.0).contains(r))?
            .unwrap_or(1.0),
        redis_url: std::env::var("KG_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || -> Result<&String, BoxError> {
            it.next().ok_or_else(|| format!("{a} needs a value").into())
        };
        match a.as_str() {
            "--quick" | "--bench" => {}
            "--scenario" => select(&mut s.scenarios, value()?)?,
            "--conns" => s.conns = positive(a, value()?)?,
            "--concurrency" => s.concurrency = Some(positive(a, value()?)?),
            "--duration" => s.duration = seconds(a, value()?)?,
            "--warmup" => s.warmup = seconds(a, value()?)?,
            "--rounds" => s.rounds = positive(a, value()?)?,
            "--keys" => s.many_keys = positive(a, value()?)?,
            "--cold-keys" => s.cold_keys = positive(a, value()?)?,
            "--revocations" => s.revocations = positive(a, value()?)?,
            "--sample-ratio" => s.sample_ratio = ratio(a, value()?)?,
            other if other.starts_with("--") => {
                return Err(format!("unknown option {other}; options: {OPTIONS}").into())
            }
            _ => {} // a filter cargo passes through
        }
    }
    // A and B alternate, so that drift over the run touches both: two rounds at least.
    s.rounds = s.rounds.max(2);
    if s.scenarios.is_empty() {
        select(&mut s.scenarios, "suite")?;
    }
    // The former `--bench tracing` compared usage recording instead under `KG_BENCH_AB=usage`.
    if s.wants("tracing") && std::env::var("KG_BENCH_AB").is_ok_and(|v| v == "usage") {
        s.scenarios.retain(|x| x != "tracing");
        select(&mut s.scenarios, "usage")?;
    }
    Ok(s)
}
