//! Config: defaults, layering, validation and the refusal of renamed names.
use super::*;

#[test]
fn the_defaults_are_valid_and_are_the_documented_values() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(c.database_url.expose_secret(), "sqlite://keygate.db");
    assert_eq!(c.rate_limiter, LimiterKind::Memory);
    assert_eq!(c.redis.url.expose_secret(), "redis://127.0.0.1:6379");
    assert_eq!(c.redis.key_prefix, "keygate");
    assert_eq!(c.redis.timeout_ms, 100);
    assert_eq!(c.redis.on_error, OnLimiterError::Local);
    assert!(!c.redis.local_precheck);
    assert_eq!(c.otlp.endpoint, None);
    assert_eq!(c.otlp.sample_ratio, 0.05);
    assert_eq!(c.otlp.queue_size, 32_768);
    assert_eq!(c.metrics.listen, "127.0.0.1:9464".parse().unwrap());
    assert!(c.metrics.enabled && !c.metrics.tenant_label);
    assert_eq!(c.limits.max_message_bytes, 1 << 20);
    assert_eq!(c.log.format, LogFormat::Pretty);
    assert_eq!(c.tls.reload_secs, 10);
    assert!(c.admin_token.is_none() && c.tls.cert_path.is_none());
}

#[test]
fn sections_are_read_from_the_file() {
    let c = Config::from_toml_str(
        r#"
        rate_limiter = "redis"
        [redis]
        url = "redis://cache:6380"
        key_prefix = "kg"
        timeout_ms = 250
        on_error = "deny"
        local_precheck = true
        [otlp]
        endpoint = "http://collector:4317"
        sample_ratio = 0.5
        queue_size = 64
        [metrics]
        listen = "0.0.0.0:9000"
        enabled = false
        tenant_label = true
        "#,
    )
    .unwrap();
    assert_eq!(c.redis.url.expose_secret(), "redis://cache:6380");
    assert_eq!(
        (c.redis.key_prefix.as_str(), c.redis.timeout_ms),
        ("kg", 250)
    );
    assert_eq!(c.redis.on_error, OnLimiterError::Deny);
    assert!(c.redis.local_precheck);
    assert_eq!(c.otlp.endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!((c.otlp.sample_ratio, c.otlp.queue_size), (0.5, 64));
    assert_eq!(c.metrics.listen, "0.0.0.0:9000".parse().unwrap());
    assert!(!c.metrics.enabled && c.metrics.tenant_label);
    // A section sets only what it names; the rest keep their defaults.
    let c = Config::from_toml_str("[redis]\ntimeout_ms = 5").unwrap();
    assert_eq!(
        (c.redis.timeout_ms, c.redis.key_prefix.as_str()),
        (5, "keygate")
    );
}

#[test]
fn every_old_flat_name_is_refused_with_its_new_name() {
    for &(old, section, field) in RENAMED {
        // The value does not matter (nor is it printed): the name alone is refused.
        let err = Config::from_toml_str(&format!("{old} = \"redis://:hunter2@x\""))
            .unwrap_err()
            .to_string();
        let env = format!(
            "KEYGATE_{}__{}",
            section.to_uppercase(),
            field.to_uppercase()
        );
        assert!(err.starts_with(&format!("{old}: was renamed")), "{err}");
        assert!(err.contains(&format!("`[{section}] {field}`")), "{err}");
        assert!(err.contains(&env), "{err}");
        assert!(!err.contains("hunter2"), "a value was printed: {err}");
    }
}

#[test]
fn an_old_name_in_a_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, "metrics_listen = \"0.0.0.0:9464\"\n").unwrap();
    let fig = Figment::new().merge(Toml::file_exact(&path));
    let err = Config::extract(fig).unwrap_err().to_string();
    assert!(
        err.contains("`[metrics] listen`") && err.contains("KEYGATE_METRICS__LISTEN"),
        "{err}"
    );
    assert!(err.contains("keygate.toml"), "{err}");
}

#[test]
fn the_new_names_are_validated_under_their_section() {
    let err = |toml: &str| Config::from_toml_str(toml).unwrap_err().to_string();
    assert!(err("[redis]\ntimeout_ms = 0").starts_with("redis.timeout_ms:"));
    assert!(err("rate_limiter = \"redis\"\n[redis]\nurl = \"http://x\"").starts_with("redis.url:"));
    assert!(err("[otlp]\nsample_ratio = 1.5").starts_with("otlp.sample_ratio:"));
    assert!(err("[otlp]\nqueue_size = 0").starts_with("otlp.queue_size:"));
    assert!(err("[metrics]\nlisten = \"nowhere\"").starts_with("metrics.listen:"));
    assert!(err("[metrics]\nno_such = 1").contains("no_such"));
}
