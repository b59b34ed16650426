//! `envoy`: what Envoy ext_authz through Keygate adds to a request through Envoy, in two
//! A/B comparisons of one run: Envoy alone vs Envoy + a no-op ext_authz server (what the
//! filter itself costs), then Envoy + the no-op vs Envoy + Keygate (what Keygate adds).
use crate::harness::ab::{alternate, Legend, Side};
use crate::harness::h2::{self, Get};
use crate::harness::load::Load;
use crate::harness::provision::{admin_token, hot_key};
use crate::harness::proxy::{envoy_version, envoy_yaml, envoy_yaml_with, find_envoy, Envoy};
use crate::harness::report::{machine, write_json};
use crate::harness::server::{sqlite_url, Server};
use crate::harness::BoxError;
use crate::settings::Settings;
use serde_json::json;
use std::sync::Arc;

const A: &str = "envoy";
const B: &str = "envoy+keygate";
const C: &str = "envoy+noop-authz";
const D: &str = "envoy+keygate, allowed_headers";

/// Refuses to measure a set-up in which ext_authz is not what it should be: A answers
/// 200, B 401 without the key and 200 with it (which also puts the key in Keygate's cache).
async fn sanity(a: &Envoy, b: &Envoy, api_key: &http::HeaderValue) -> Result<(), BoxError> {
    for (envoy, key, want) in [
        (a, Some(api_key), 200),
        (b, None, 401),
        (b, Some(api_key), 200),
    ] {
        let (status, _) = h2::once(envoy.listener, http::Method::GET, "/", key).await?;
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

/// The same `GET /` through `envoy`, with the key in `x-api-key`.
fn side(
    label: &'static str,
    envoy: &Envoy,
    keygate: &Server,
    api_key: &http::HeaderValue,
) -> Result<Side, BoxError> {
    let get = Get {
        uri: format!("http://{}/", envoy.listener).parse()?,
        api_key: Some(api_key.clone()),
        extra: h2::typical_headers(),
    };
    Ok(Side {
        label,
        target: envoy.target().and_cpu("authz", keygate.pid),
        load: Load::Http(Arc::new(get)),
    })
}

pub async fn run(s: &Settings) -> Result<(), BoxError> {
    println!("\n== envoy: what Envoy ext_authz through Keygate adds to a request through Envoy ==");
    let Some(bin) = find_envoy() else {
        return Err("envoy not found in .tools/venv/bin or on PATH; run \
                    ./scripts/install-tools.sh first"
            .into());
    };
    let version = envoy_version(&bin).await?;
    let dir = tempfile::tempdir()?;
    let token = admin_token();
    let keygate = Server::keygate(
        "keygate",
        &sqlite_url(&dir.path().join("bench.db")),
        &token,
        &[],
    )
    .await?;
    let secret = hot_key(keygate.addr, &token).await?.api_key;
    let api_key = http::HeaderValue::from_str(&secret)?;
    let noop = Server::noop().await?;
    let envoy_a = Envoy::start(&bin, dir.path(), A, &envoy_yaml(None)).await?;
    let envoy_b = Envoy::start(&bin, dir.path(), B, &envoy_yaml(Some(keygate.addr))).await?;
    let envoy_c = Envoy::start(&bin, dir.path(), C, &envoy_yaml(Some(noop.addr))).await?;
    let envoy_d = Envoy::start(
        &bin,
        dir.path(),
        D,
        &envoy_yaml_with(Some(keygate.addr), true),
    )
    .await?;
    sanity(&envoy_a, &envoy_d, &api_key).await?;
    sanity(&envoy_a, &envoy_b, &api_key).await?;
    let (status, _) = h2::once(envoy_c.listener, http::Method::GET, "/", Some(&api_key)).await?;
    if status != 200 {
        return Err(format!("set-up check: {C} answered {status}, expected 200").into());
    }

    let (cpus, _) = machine();
    println!(
        "envoy {version} ({}), --concurrency 1; route answered by Envoy (direct_response 200)",
        bin.display()
    );
    println!(
        "  {A}: no ext_authz filter; {B}: ext_authz gRPC filter -> Keygate over HTTP/2, \
         failure_mode_allow false"
    );
    println!(
        "nproc {cpus}: Envoy (1 worker thread), Keygate and the load generator (processes of \
         their own) share these cores; compare ratios, not absolute figures"
    );
    let (a, b) = (
        side(A, &envoy_a, &keygate, &api_key)?,
        side(B, &envoy_b, &keygate, &api_key)?,
    );
    let legend = Legend {
        expected: "200",
        cpu: "envoy = the scenario's Envoy (its ext_authz client included), authz = the \
              ext_authz server's process (keygate, or the no-op for the no-op side; keygate, \
              idle, for Envoy alone)",
    };
    let c = side(C, &envoy_c, &noop, &api_key)?;
    println!("\n-- the filter itself: {A} vs {C} (a no-op ext_authz server: OK, 3 + 3 headers)");
    let filter = alternate(&a, &c, &s.shape(16), s.rounds, &legend, None).await?;
    println!("\n-- what Keygate adds: {C} vs {B}");
    let c_again = side(C, &envoy_c, &noop, &api_key)?;
    let keygate_vs_noop = alternate(&c_again, &b, &s.shape(16), s.rounds, &legend, None).await?;
    println!("\n-- {A} vs {B}");
    let mut ab = alternate(&a, &b, &s.shape(16), s.rounds, &legend, None).await?;
    println!(
        "\n-- Envoy's allowed_headers (examples/envoy/envoy.yaml): {B} vs {D}, every request \
         carrying nine typical headers beside the key"
    );
    let b_again = side(B, &envoy_b, &keygate, &api_key)?;
    let d = side(D, &envoy_d, &keygate, &api_key)?;
    let allowed = alternate(&b_again, &d, &s.shape(16), s.rounds, &legend, None).await?;
    println!("\n-- {C} vs {D}");
    let c_third = side(C, &envoy_c, &noop, &api_key)?;
    let d_again = side(D, &envoy_d, &keygate, &api_key)?;
    let keygate_allowed_vs_noop =
        alternate(&c_third, &d_again, &s.shape(16), s.rounds, &legend, None).await?;
    ab.json["filter_cost"] = filter.json;
    ab.json["keygate_vs_noop_authz"] = keygate_vs_noop.json;
    ab.json["allowed_headers"] = allowed.json;
    ab.json["keygate_allowed_headers_vs_noop_authz"] = keygate_allowed_vs_noop.json;

    let counters = envoy_b.ext_authz_counters().await?;
    let counter = |name: &str| counters.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
    println!(
        "{B} ext_authz counters, whole run: ok {}, denied {}, error {}, failure_mode_allowed {}",
        counter("ok"),
        counter("denied"),
        counter("error"),
        counter("failure_mode_allowed")
    );
    ab.json["envoy_version"] = json!(version);
    ab.json["nproc"] = json!(cpus);
    ab.json["settings"]["envoy_concurrency"] = json!(1);
    ab.json["ext_authz_counters"] = json!(counters);
    write_json("envoy.json", &ab.json)?;

    // Envoy first, so that Keygate's graceful stop has no ext_authz connection to drain.
    let stopped_a = envoy_a.stop().await;
    let stopped_b = envoy_b.stop().await;
    let stopped_c = envoy_c.stop().await;
    let stopped_d = envoy_d.stop().await;
    let stopped_keygate = keygate.stop().await;
    let stopped_noop = noop.stop().await;
    stopped_a
        .and(stopped_b)
        .and(stopped_c)
        .and(stopped_d)
        .and(stopped_keygate.map(|_| ()))
        .and(stopped_noop.map(|_| ()))
}
