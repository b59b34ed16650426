//! A/B experiments: a baseline A and the same set-up with one thing added, B, measured
//! by the same closed loop, alternating round by round on fresh connections so that drift
//! over the run touches both. Reported: each round's row, B/A req/s (best-of-rounds and
//! median-of-rounds, and per round), the latency B adds (p99 and p50 of B minus A in the
//! same round, median over rounds), and each watched process's CPU per expected answer
//! (median over rounds, A -> B), which depends much less than req/s on how the cores
//! happen to be shared.
use super::load::{closed_loop, Load, Shape, Target};
use super::provision::hot_key;
use super::server::Server;
use super::tally::{best_and_median, fmt_opt, quantiles, ratio, Measured};
use super::BoxError;
use serde_json::json;

/// One side: where its load goes and what it sends.
pub struct Side {
    pub label: &'static str,
    pub target: Target,
    pub load: Load,
}

impl Side {
    /// Checks of a hot key on `server` (`provision::hot_key`), its CPU as `keygate`.
    pub async fn hot_check(
        label: &'static str,
        server: &Server,
        token: &str,
    ) -> Result<Side, BoxError> {
        Ok(Side {
            label,
            target: server.target("keygate"),
            load: Load::check(
                hot_key(server.addr, token).await?,
                keygate::grpc::pb::Reason::Ok,
            ),
        })
    }
}

/// What the table's columns mean in this experiment.
pub struct Legend {
    /// The expected answer ("ALLOW", "200").
    pub expected: &'static str,
    /// What each CPU column counts (`gen`, this process, is always the last).
    pub cpu: &'static str,
}

/// What an experiment reports beyond the printed lines.
pub struct Ab {
    pub json: serde_json::Value,
    /// Calls B answered over all rounds, warm-ups included.
    pub b_answered: u64,
}

/// Per-round figures of one side.
struct Series {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// CPU µs per expected answer, by column (rounds with /proc only).
    cpu: Vec<(&'static str, Vec<f64>)>,
}

impl Series {
    fn new(columns: &[&'static str]) -> Series {
        Series {
            rps: vec![],
            p50: vec![],
            p99: vec![],
            cpu: columns.iter().map(|c| (*c, vec![])).collect(),
        }
    }

    /// Prints and records one round.
    fn push(&mut self, round: usize, label: &str, m: &Measured) -> serde_json::Value {
        let h = &m.tally.latency_us;
        let [p50, p90, p99, p999] = quantiles(h);
        self.rps.push(m.rps());
        self.p50.push(p50 as f64);
        self.p99.push(p99 as f64);
        let mut cells = String::new();
        let mut cpu = serde_json::Map::new();
        for (col, series) in &mut self.cpu {
            let v = m.cpu_us_per_ok(col);
            series.extend(v);
            cells.push_str(&format!(" {:>8}", fmt_opt(v, 1)));
            cpu.insert((*col).to_owned(), json!(v));
        }
        println!(
            "{round:>5}  {label:<16} {:>9.0} {p50:>8} {p90:>8} {p99:>8} {p999:>8} {:>8} {:>8}{cells}",
            m.rps(),
            m.tally.errors,
            m.tally.other
        );
        for line in m.tally.firsts() {
            println!("       {label} {line}");
        }
        let mut row = m.tally.json();
        row["round"] = json!(round);
        row["scenario"] = json!(label);
        row["rps"] = json!(m.rps());
        row["cpu_us_per_ok"] = json!(cpu);
        row
    }

    fn cpu_median(&self, col: &str) -> Option<f64> {
        let (_, v) = self.cpu.iter().find(|(c, _)| *c == col)?;
        (!v.is_empty()).then(|| best_and_median(v).1)
    }
}

/// The median of `b - a`, round by round, and the per-round differences.
fn added(b: &[f64], a: &[f64]) -> (f64, Vec<f64>) {
    let d: Vec<f64> = b.iter().zip(a).map(|(b, a)| b - a).collect();
    (best_and_median(&d).1, d)
}

/// Runs `rounds` rounds of A then B and prints the table and the comparison; `target`
/// is the B/A req/s ratio the issue asks for, if any.
pub async fn alternate(
    a: &Side,
    b: &Side,
    shape: &Shape,
    rounds: usize,
    legend: &Legend,
    target: Option<f64>,
) -> Result<Ab, BoxError> {
    let mut columns: Vec<&'static str> = a.target.cpu.iter().map(|(c, _)| *c).collect();
    columns.push("gen");
    println!(
        "load: {} conns x {} in flight, warm-up {:?}, measure {:?}, {rounds} rounds (alternating)",
        shape.conns, shape.concurrency, shape.warmup, shape.duration
    );
    println!(
        "latency in µs over {e} answers; other = answered, but not {e}; errors = failed calls \
         or lost connections; CPU columns: µs per {e} in the window, of {}; gen = this process \
         (the load generator)\n",
        legend.cpu,
        e = legend.expected
    );
    let heads: String = columns.iter().map(|c| format!(" {c:>8}")).collect();
    println!(
        "round  scenario             req/s      p50      p90      p99    p99.9   errors    other{heads}"
    );
    let (mut rows, mut sa, mut sb) = (vec![], Series::new(&columns), Series::new(&columns));
    let mut b_answered = 0;
    for round in 1..=rounds {
        rows.push(sa.push(
            round,
            a.label,
            &closed_loop(&a.target, &a.load, shape).await?,
        ));
        let m = closed_loop(&b.target, &b.load, shape).await?;
        b_answered += m.tally.answered;
        rows.push(sb.push(round, b.label, &m));
    }

    let ((a_best, a_median), (b_best, b_median)) =
        (best_and_median(&sa.rps), best_and_median(&sb.rps));
    let (best, median) = (ratio(b_best, a_best), ratio(b_median, a_median));
    let per_round: Vec<f64> = sb
        .rps
        .iter()
        .zip(&sa.rps)
        .map(|(b, a)| ratio(*b, *a))
        .collect();
    let shown: Vec<String> = per_round.iter().map(|r| format!("{r:.2}")).collect();
    let goal = target.map_or(String::new(), |t| format!(" (target ≥ {t:.2})"));
    println!(
        "\n{B} / {A} req/s: best-of-rounds {best:.2}, median-of-rounds {median:.2}{goal}; \
         per round {}",
        shown.join(", "),
        A = a.label,
        B = b.label
    );
    let ((p99, p99_rounds), (p50, p50_rounds)) = (added(&sb.p99, &sa.p99), added(&sb.p50, &sa.p50));
    println!(
        "latency {B} adds over {A} (same round, median over rounds): p99 {p99:+.0} µs, \
         p50 {p50:+.0} µs",
        A = a.label,
        B = b.label
    );
    println!(
        "CPU µs per {} (median over rounds), {} -> {}:",
        legend.expected, a.label, b.label
    );
    let mut cpu = serde_json::Map::new();
    for col in &columns {
        let (ca, cb) = (sa.cpu_median(col), sb.cpu_median(col));
        let b_over_a = ca.zip(cb).filter(|(x, _)| *x > 0.0).map(|(x, y)| y / x);
        let change = match (ca.zip(cb), b_over_a) {
            (None, _) => "not measured (no /proc)".to_owned(),
            (Some((x, y)), Some(r)) => format!("({:+.1}, B/A {r:.2})", y - x),
            (Some((x, y)), None) => format!("({:+.1})", y - x),
        };
        println!(
            "  {col:<8} {} -> {} {change}",
            fmt_opt(ca, 1),
            fmt_opt(cb, 1)
        );
        cpu.insert(
            (*col).to_owned(),
            json!({ a.label: ca, b.label: cb, "b_over_a": b_over_a }),
        );
    }
    Ok(Ab {
        json: json!({
            "settings": {
                "conns": shape.conns, "concurrency": shape.concurrency,
                "warmup_secs": shape.warmup.as_secs_f64(),
                "measure_secs": shape.duration.as_secs_f64(), "rounds": rounds,
            },
            "runs": rows,
            "ratio": {
                "best_of_rounds": best, "median_of_rounds": median, "per_round": per_round,
                "target": target,
            },
            "added_latency_us": {
                "p99_median": p99, "p99_per_round": p99_rounds,
                "p50_median": p50, "p50_per_round": p50_rounds,
            },
            "cpu_us_per_ok_median": cpu,
        }),
        b_answered,
    })
}
