//! Metrics count exactly what happened, probes answer, and nothing secret leaks into them
//! or into the logs.
use crate::server_or_skip;
use crate::support::{check, ext_authz, limit, new_key, sample, Db};
use envoy_types::pb::envoy::service::auth::v3 as ext;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_exactly_what_happened() {
    let s = server_or_skip!(Db::Sqlite);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k1 = new_key("t").name("k1").rate_limits([limit("m", 2, 60)]);
    let k1 = a.create_key(k1).await;
    let k2 = a.create_key(new_key("t").name("k2")).await;

    let c = s.authorize().await;
    for req in [
        check(&k1.secret),
        check(&k1.secret),
        check(&k1.secret),
        check("kg_bad"),
        check(""),
    ] {
        c.check(req).await;
    }
    let mut e = ext::authorization_client::AuthorizationClient::new(s.channel().await);
    for _ in 0..3 {
        e.check(ext_authz(&[("x-api-key", &k2.secret)]))
            .await
            .unwrap();
    }
    e.check(ext_authz(&[])).await.unwrap();

    let missing = a.get_key("key_missing").await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let m = s.http_get("/metrics").await;
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

    assert_eq!(s.http_get("/healthz").await.status, 200);
    assert_eq!(s.http_get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_label_is_opt_in() {
    let s = server_or_skip!(Db::Sqlite, |cfg| cfg.metrics.tenant_label = true);
    let a = s.admin().await;
    a.tenant("acme").upsert().await;
    let k = a.create_key(new_key("acme")).await;
    s.authorize().await.check(check(&k.secret)).await;
    let text = s.metrics().await;
    assert_eq!(
        sample(
            &text,
            r#"keygate_checks_total{decision="ALLOW",reason="OK",source="grpc",tenant="acme"}"#
        ),
        1.0
    );
}
