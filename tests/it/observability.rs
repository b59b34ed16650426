//! Metrics count exactly what happened, probes answer, and nothing secret leaks into them
//! or into the logs.
use crate::check::check_req;
use crate::envoy::http;
use crate::key_admin::{create, key_req, tenant};
use crate::server_or_skip;
use crate::support::Db;
use envoy_types::pb::envoy::service::auth::v3 as ext;
use keygate::grpc::pb;
use std::collections::HashMap;

pub fn ext_authz_req(headers: &[(&str, &str)]) -> ext::CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    ext::CheckRequest {
        attributes: Some(ext::AttributeContext {
            request: Some(ext::attribute_context::Request {
                http: Some(ext::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/x".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_exactly_what_happened() {
    let s = server_or_skip!(Db::Sqlite);
    let mut a = s.admin().await;
    tenant(&mut a, "t", pb::TenantPolicy::default()).await;
    let limited = pb::RateLimit {
        name: "m".into(),
        limit: 2,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    };
    let k1 = create(
        &mut a,
        pb::CreateKeyRequest {
            rate_limits: vec![limited],
            ..key_req("t", "k1")
        },
    )
    .await;
    let k2 = create(&mut a, key_req("t", "k2")).await;

    let mut c = s.authorize().await;
    for req in [
        check_req(&k1.secret),
        check_req(&k1.secret),
        check_req(&k1.secret),
        check_req("kg_bad"),
        check_req(""),
    ] {
        c.check(req).await.unwrap();
    }
    let mut e = ext::authorization_client::AuthorizationClient::new(s.channel().await);
    for _ in 0..3 {
        e.check(ext_authz_req(&[("x-api-key", &k2.secret)]))
            .await
            .unwrap();
    }
    e.check(ext_authz_req(&[])).await.unwrap();

    let missing = a
        .client
        .get_key(a.req(pb::GetKeyRequest {
            key_id: "key_missing".into(),
        }))
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let m = http(s.metrics_addr, "127.0.0.1", "GET", "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    let text = &m.body;
    let checks = |src: &str, decision: &str, reason: &str| {
        sample(
            text,
            &format!(
                r#"keygate_checks_total{{decision="{decision}",reason="{reason}",source="{src}"}}"#
            ),
        )
    };
    assert_eq!(checks("grpc", "ALLOW", "OK"), 2.0);
    assert_eq!(checks("grpc", "DENY", "RATE_LIMITED"), 1.0);
    assert_eq!(checks("grpc", "DENY", "MALFORMED_KEY"), 1.0);
    assert_eq!(checks("grpc", "DENY", "MISSING_CREDENTIAL"), 1.0);
    assert_eq!(checks("ext_authz", "ALLOW", "OK"), 3.0);
    assert_eq!(checks("ext_authz", "DENY", "MISSING_CREDENTIAL"), 1.0);
    assert_eq!(
        sample(
            text,
            r#"keygate_check_duration_seconds_count{source="grpc"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(text, r#"keygate_cache_lookups_total{result="miss"}"#),
        2.0
    );
    assert_eq!(
        sample(text, r#"keygate_cache_lookups_total{result="hit"}"#),
        4.0
    );
    assert_eq!(sample(text, "keygate_argon2_verifies_total"), 2.0);
    assert_eq!(sample(text, "keygate_cache_entries"), 2.0);
    assert_eq!(sample(text, "keygate_cache_miss_load_seconds_count"), 2.0);
    assert_eq!(
        sample(
            text,
            r#"keygate_admin_calls_total{code="Ok",rpc="UpsertTenant"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            text,
            r#"keygate_admin_calls_total{code="Ok",rpc="CreateKey"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            text,
            r#"keygate_admin_calls_total{code="NotFound",rpc="GetKey"}"#
        ),
        1.0
    );
    for secret in [&k1.secret, &k2.secret] {
        assert!(
            !text.contains(&secret[3..20]),
            "metrics carry no key material"
        );
    }
    assert!(
        !text.contains(&k1.key.as_ref().unwrap().id),
        "no key ids in labels"
    );

    // The shipped dashboard and alert rules only name metrics that exist.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/observability");
    let dashboard = std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
    let rules = std::fs::read_to_string(root.join("prometheus-rules.yaml")).unwrap();
    let mut named = 0;
    for source in [&dashboard, &rules] {
        for (i, _) in source.match_indices("keygate_") {
            let name: String = source[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name.clone(), |n, suf| {
                    n.strip_suffix(suf).map(str::to_owned).unwrap_or(n)
                });
            assert!(
                text.contains(&format!("# TYPE {base} ")),
                "{name} (in examples/observability) is not exported"
            );
            named += 1;
        }
    }
    assert!(named >= 10, "found the metric names in the examples");

    assert_eq!(
        http(s.metrics_addr, "127.0.0.1", "GET", "/healthz", &[])
            .await
            .status,
        200
    );
    assert_eq!(
        http(s.metrics_addr, "127.0.0.1", "GET", "/readyz", &[])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_label_is_opt_in() {
    let s = server_or_skip!(Db::Sqlite, |cfg| cfg.metrics.tenant_label = true);
    let mut a = s.admin().await;
    tenant(&mut a, "acme", pb::TenantPolicy::default()).await;
    let k = create(&mut a, key_req("acme", "k")).await;
    s.authorize()
        .await
        .check(check_req(&k.secret))
        .await
        .unwrap();
    let text = http(s.metrics_addr, "127.0.0.1", "GET", "/metrics", &[])
        .await
        .body;
    assert_eq!(
        sample(
            &text,
            r#"keygate_checks_total{decision="ALLOW",reason="OK",source="grpc",tenant="acme"}"#
        ),
        1.0
    );
}
