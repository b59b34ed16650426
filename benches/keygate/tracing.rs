//! `tracing` and `usage`: what OTLP trace export, or usage recording, costs
//! `keygate.v1.Authorize/Check` — the same build with the feature off (A) and on (B).
use crate::harness::ab::{alternate, Legend, Side};
use crate::harness::otlp::Collector;
use crate::harness::provision::{admin_token, WARM_CHECKS};
use crate::harness::report::{machine, write_json};
use crate::harness::server::{keygate_binary, sqlite_url, Server};
use crate::harness::tally::ratio;
use crate::harness::BoxError;
use crate::settings::Settings;
use serde_json::json;

/// The target for both: the feature costs at most 5 %, B/A ≥ 0.95.
const TARGET_RATIO: f64 = 0.95;

/// Which feature B has and A has not.
#[derive(Clone, Copy, PartialEq)]
pub enum Feature {
    /// OTLP/gRPC trace export to the runner's counting collector.
    Tracing,
    /// Usage recording (per-minute/day counts by endpoint and reason): on in B, the
    /// default; A has `usage.enabled = false` (only `last_used_time` and the use count).
    Usage,
}

impl Feature {
    pub fn name(self) -> &'static str {
        match self {
            Feature::Tracing => "tracing",
            Feature::Usage => "usage",
        }
    }
}

pub async fn run(s: &Settings, feature: Feature) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let token = admin_token();
    let collector = Collector::start().await?;
    let (a_env, b_env, labels) = match feature {
        Feature::Tracing => {
            println!(
                "\n== tracing: keygate.v1.Authorize/Check, trace export off (A) vs on (B): two \
                 keygate processes, B exporting OTLP/gRPC to a counting collector in this runner =="
            );
            let b_env = vec![
                (
                    "KEYGATE_OTLP__ENDPOINT",
                    format!("http://{}", collector.addr),
                ),
                ("KEYGATE_OTLP__SAMPLE_RATIO", s.sample_ratio.to_string()),
            ];
            (vec![], b_env, ("A:off", "B:otlp"))
        }
        Feature::Usage => {
            println!(
                "\n== usage: keygate.v1.Authorize/Check, usage recording off (A: \
                 usage.enabled=false) vs on (B: default): two keygate processes =="
            );
            let a_env = vec![("KEYGATE_USAGE__ENABLED", "false".to_owned())];
            (a_env, vec![], ("A:no-usage", "B:usage"))
        }
    };
    let db = |name: &str| sqlite_url(&dir.path().join(name));
    let a = Server::keygate("A", &db("a.db"), &token, &a_env).await?;
    let b = Server::keygate("B", &db("b.db"), &token, &b_env).await?;
    let side_a = Side::hot_check(labels.0, &a, &token).await?;
    let side_b = Side::hot_check(labels.1, &b, &token).await?;

    let (cpus, _) = machine();
    println!(
        "nproc {cpus}: load generator, collector and both keygate processes share these cores; \
         compare ratios, not absolute figures"
    );
    let legend = Legend {
        expected: "ALLOW",
        cpu: match feature {
            Feature::Tracing => "keygate = the keygate process under load (gen: the collector too)",
            Feature::Usage => "keygate = the keygate process under load",
        },
    };
    let shape = s.shape(32);
    let mut ab = alternate(
        &side_a,
        &side_b,
        &shape,
        s.rounds,
        &legend,
        Some(TARGET_RATIO),
    )
    .await?;

    // SIGTERM both; B flushes what its batch processor still holds.
    let a_exit = a.stop().await?;
    let b_exit = b.stop().await?;
    println!("stopped with SIGTERM: A {a_exit}, B {b_exit}");
    let got = collector.finish().await?;
    let b_answered = ab.b_answered + WARM_CHECKS as u64;
    println!(
        "\ncollector received {} spans in {} export requests; B answered {b_answered} checks \
         (warm-up included)",
        got.spans, got.requests
    );
    let check_spans = got.by_name.get("Authorize/Check").copied().unwrap_or(0);
    let expected = (b_answered as f64 * s.sample_ratio).round() as u64;
    let lost = expected.saturating_sub(check_spans);
    if feature == Feature::Tracing {
        if got.by_name.is_empty() {
            println!("no spans: trace export was NOT on");
        } else {
            println!("  span name                      received  per check");
            for (name, n) in &got.by_name {
                let per_check = ratio(*n as f64, b_answered as f64);
                println!("  {name:<28} {n:>10} {per_check:>10.3}");
            }
        }
        println!(
            "B samples {:.0} % of checks: about {expected} Authorize/Check spans expected, \
             {check_spans} received; missing {lost} ({:.1} %; dropped when the SDK's span \
             queue was full, or never flushed)",
            100.0 * s.sample_ratio,
            100.0 * ratio(lost as f64, expected as f64)
        );
    }
    ab.json["nproc"] = json!(cpus);
    ab.json["binary"] = json!(keygate_binary()?.display().to_string());
    ab.json["settings"]["sample_ratio"] = json!(s.sample_ratio);
    ab.json["spans"] = json!({
        "received": got.spans, "export_requests": got.requests, "by_name": got.by_name,
        "checks_answered_by_b": b_answered, "check_spans": check_spans,
        "check_spans_not_received": lost,
    });
    ab.json["exit"] = json!({ "a": a_exit.to_string(), "b": b_exit.to_string() });
    write_json(&format!("{}.json", feature.name()), &ab.json)?;
    Ok(())
}
