//! The suite's table, the machine it ran on, and the JSON files under `target/bench/`.
use super::tally::{fmt_opt, quantiles, Measured};
use super::BoxError;
use serde_json::json;
use std::path::PathBuf;

/// Cores and CPU model of this machine.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    (cpus, model)
}

/// Writes `value` to `$CARGO_TARGET_DIR/bench/<name>` (else `target/bench/`); says where.
pub fn write_json(name: &str, value: &serde_json::Value) -> Result<PathBuf, BoxError> {
    let out_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    println!("results: {}", path.display());
    Ok(path)
}

/// One row of the suite's table.
pub struct Row {
    pub scenario: String,
    pub measured: Option<Measured>,
    pub notes: String,
    pub extra: serde_json::Value,
}

impl Row {
    pub fn new(scenario: &str, measured: Measured, notes: impl Into<String>) -> Row {
        Row {
            scenario: scenario.into(),
            measured: Some(measured),
            notes: notes.into(),
            extra: json!({}),
        }
    }

    pub fn with(mut self, extra: serde_json::Value) -> Row {
        self.extra = extra;
        self
    }

    pub fn json(&self, noop_rps: Option<f64>) -> serde_json::Value {
        let mut v = json!({ "scenario": self.scenario, "notes": self.notes, "extra": self.extra });
        if let Some(m) = &self.measured {
            for (k, x) in m.tally.json().as_object().into_iter().flatten() {
                v[k] = x.clone();
            }
            v["rps"] = json!(m.rps());
            v["ratio_to_noop"] = json!(noop_rps.filter(|n| *n > 0.0).map(|n| m.rps() / n));
            v["server_cpu_us_per_request"] = json!(m.cpu_us_per_ok("server"));
        }
        v
    }
}

/// The suite's table: each row's req/s over the no-op's (`×noop`), latency quantiles,
/// the server's own CPU per answered call, and the calls answered otherwise or failed.
pub fn print_rows(rows: &[Row], noop_rps: Option<f64>) {
    println!(
        "\n{:<20} {:>9} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}  notes",
        "scenario", "req/s", "×noop", "p50µs", "p90µs", "p99µs", "p99.9µs", "cpuµs/r", "other"
    );
    for r in rows {
        let Some(m) = &r.measured else {
            println!("{:<20} {:>9}  {}", r.scenario, "-", r.notes);
            continue;
        };
        let [p50, p90, p99, p999] = quantiles(&m.tally.latency_us);
        let ratio = noop_rps.filter(|n| *n > 0.0).map(|n| m.rps() / n);
        println!(
            "{:<20} {:>9.0} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7}  {}",
            r.scenario,
            m.rps(),
            fmt_opt(ratio, 2),
            p50,
            p90,
            p99,
            p999,
            fmt_opt(m.cpu_us_per_ok("server"), 1),
            m.tally.other + m.tally.errors,
            r.notes
        );
        for line in m.tally.firsts() {
            println!("{:<20} {line}", "");
        }
    }
}
