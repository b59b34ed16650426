//! Counting what a load got: latency of the expected answers, the rest by kind.
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::Duration;

/// What one call got.
pub enum Outcome {
    /// The answer the scenario expects (ALLOW, RATE_LIMITED, HTTP 200, …).
    Expected,
    /// Another answer, described (a reason or status number, never a key).
    Other(String),
    /// A failed call (a gRPC status, a reset stream).
    Failed(String),
    /// The connection is gone: the worker stops.
    Lost(String),
}

/// One worker's (then one run's) counts.
#[derive(Clone)]
pub struct Tally {
    /// Expected answers completed in the window, in µs.
    pub latency_us: Histogram<u64>,
    pub other: u64,
    pub first_other: Option<String>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Every answer, in the measured window or not (warm-up included).
    pub answered: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            other: 0,
            first_other: None,
            errors: 0,
            first_error: None,
            answered: 0,
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.latency_us.add(&o.latency_us).expect("same bounds");
        self.other += o.other;
        self.first_other = self.first_other.take().or(o.first_other);
        self.errors += o.errors;
        self.first_error = self.first_error.take().or(o.first_error);
        self.answered += o.answered;
    }

    /// Counts one call that took `took`; its kind and latency only when `in_window` (a
    /// lost connection always: it ends the worker). `false` when the worker must stop.
    pub fn count(&mut self, outcome: Outcome, took: Duration, in_window: bool) -> bool {
        if matches!(outcome, Outcome::Expected | Outcome::Other(_)) {
            self.answered += 1;
        }
        let lost = matches!(outcome, Outcome::Lost(_));
        if !in_window && !lost {
            return true;
        }
        match outcome {
            Outcome::Expected => {
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(us.max(1));
            }
            Outcome::Other(what) => {
                self.other += 1;
                self.first_other.get_or_insert(what);
            }
            Outcome::Failed(why) | Outcome::Lost(why) => {
                self.errors += 1;
                self.first_error.get_or_insert(why);
            }
        }
        !lost
    }

    /// The lines saying what the first unexpected answer and error were, if any.
    pub fn firsts(&self) -> Vec<String> {
        let other = self
            .first_other
            .as_ref()
            .map(|o| format!("first other answer: {o}"));
        let error = self
            .first_error
            .as_ref()
            .map(|e| format!("first error: {e}"));
        other.into_iter().chain(error).collect()
    }

    /// Counts and latency quantiles, as the JSON summaries hold them.
    pub fn json(&self) -> serde_json::Value {
        let h = &self.latency_us;
        let [p50, p90, p99, p999] = quantiles(h);
        json!({
            "ok": h.len(), "other": self.other, "first_other": self.first_other,
            "errors": self.errors, "first_error": self.first_error,
            "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999,
            "max_us": h.max(), "mean_us": h.mean(),
        })
    }
}

/// p50, p90, p99 and p99.9.
pub fn quantiles(h: &Histogram<u64>) -> [u64; 4] {
    [0.5, 0.9, 0.99, 0.999].map(|q| h.value_at_quantile(q))
}

/// A measured window: what was answered, and the CPU each watched process used in it.
pub struct Measured {
    pub tally: Tally,
    pub secs: f64,
    /// (column, CPU time in the window); `None` without /proc.
    pub cpu: Vec<(&'static str, Option<Duration>)>,
}

impl Measured {
    pub fn rps(&self) -> f64 {
        self.tally.latency_us.len() as f64 / self.secs
    }

    /// CPU µs per expected answer of column `name`, when both are known.
    pub fn cpu_us_per_ok(&self, name: &str) -> Option<f64> {
        let n = self.tally.latency_us.len();
        self.cpu
            .iter()
            .find(|(col, _)| *col == name)
            .and_then(|(_, cpu)| *cpu)
            .filter(|_| n > 0)
            .map(|c| c.as_secs_f64() * 1e6 / n as f64)
    }
}

/// Largest and median value of rounds' figures (`(0, 0)` for none).
pub fn best_and_median(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (0.0, 0.0),
        n => (v[n - 1], (v[(n - 1) / 2] + v[n / 2]) / 2.0),
    }
}

/// `b / a`, 0 when `a` is not positive.
pub fn ratio(b: f64, a: f64) -> f64 {
    if a > 0.0 {
        b / a
    } else {
        0.0
    }
}

/// `v` with `digits` decimals, `-` when unknown.
pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}
