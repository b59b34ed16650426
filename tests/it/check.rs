//! Authorize.Check through the real server, on SQLite and PostgreSQL.
use crate::key_admin::{create, key_req, tenant};
use crate::support::{code, Admin, Db, TestServer};
use crate::{on_both_stores, server_or_skip};
use keygate::domain::key;
use keygate::domain::UnixMillis;
use keygate::grpc::pb::{
    self, authorize_client::AuthorizeClient, create_key_request::Expiry, Decision, Reason,
};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

fn secs(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n,
        nanos: 0,
    }
}

fn limit(name: &str, n: u64, window_s: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.into(),
        limit: n,
        window: Some(secs(window_s)),
    }
}

pub fn check_req(key: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: key.into(),
        ..Default::default()
    }
}

async fn check(c: &mut AuthorizeClient<Channel>, req: pb::CheckRequest) -> pb::CheckResponse {
    c.check(req).await.unwrap().into_inner()
}

/// The reason, asserting the decision and HTTP status agree with it.
async fn reason_of(c: &mut AuthorizeClient<Channel>, req: pb::CheckRequest) -> Reason {
    let r = check(c, req).await;
    let reason = Reason::try_from(r.reason).unwrap();
    let want_status = match reason {
        Reason::Ok => 200,
        Reason::InsufficientScope | Reason::IpNotAllowed => 403,
        Reason::RateLimited => 429,
        _ => 401,
    };
    assert_eq!(r.http_status, want_status, "{reason:?}");
    assert_eq!(r.decision == Decision::Allow as i32, reason == Reason::Ok);
    reason
}

/// Used by the binary tests: every issued key is allowed by a server at `addr`.
pub async fn assert_all_allowed(addr: &str, issued: &[pb::CreateKeyResponse]) {
    let mut c = AuthorizeClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for k in issued {
        assert_eq!(reason_of(&mut c, check_req(&k.secret)).await, Reason::Ok);
    }
}

/// A tenant "t" with no restrictions but a 100/60s default limit, and one key.
async fn setup(s: &TestServer) -> (Admin, AuthorizeClient<Channel>, pb::CreateKeyResponse) {
    let mut a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("per-minute", 100, 60)],
        ..Default::default()
    };
    tenant(&mut a, "t", policy).await;
    let k = create(&mut a, key_req("t", "main")).await;
    (a, s.authorize().await, k)
}

async fn update(
    a: &mut Admin,
    mut k: pb::Key,
    paths: &[&str],
    f: impl FnOnce(&mut pb::Key),
) -> pb::Key {
    f(&mut k);
    let mask = prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    };
    a.client
        .update_key(a.req(pb::UpdateKeyRequest {
            key: Some(k),
            update_mask: Some(mask),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn allow_carries_key_and_rate_limit_figures(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    let key = k.key.unwrap();
    let key = update(&mut a, key, &["metadata", "scopes"], |k| {
        k.metadata = [("plan".to_string(), "pro".to_string())].into();
        k.scopes = vec!["orders:read".into()];
    })
    .await;
    let r = check(&mut c, check_req(&k.secret)).await;
    assert_eq!(r.decision, Decision::Allow as i32);
    assert_eq!(r.reason, Reason::Ok as i32);
    assert_eq!(r.http_status, 200);
    assert_eq!(
        (r.key_id.as_str(), r.tenant_id.as_str(), r.key_name.as_str()),
        (key.id.as_str(), "t", "main")
    );
    assert_eq!(r.scopes, vec!["orders:read"]);
    assert_eq!(r.metadata.get("plan").map(String::as_str), Some("pro"));
    let rl = r.rate_limit.clone().unwrap();
    assert_eq!(
        (rl.limit, rl.remaining, rl.name.as_str()),
        (100, 99, "per-minute")
    );
    assert!(rl.retry_after.is_none());
    let reset = rl.reset_time.unwrap();
    let now_s = s.now().0 / 1000;
    assert!(
        reset.seconds > now_s && reset.seconds <= now_s + 120,
        "reset within two windows"
    );
    assert!(
        !format!("{r:?}").contains(&k.secret[10..30]),
        "the response never echoes the key"
    );
}

async fn each_reason_in_the_documented_order(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    let key = k.key.clone().unwrap();

    assert_eq!(
        reason_of(&mut c, check_req("")).await,
        Reason::MissingCredential
    );
    assert_eq!(
        reason_of(&mut c, check_req("not a key")).await,
        Reason::MalformedKey
    );
    let mut typo = k.secret.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };
    assert_eq!(
        reason_of(&mut c, check_req(&String::from_utf8(typo).unwrap())).await,
        Reason::MalformedKey
    );
    let never_issued =
        secrecy::ExposeSecret::expose_secret(&key::ApiKeyFormat::generate("kg_").full).to_owned();
    assert_eq!(
        reason_of(&mut c, check_req(&never_issued)).await,
        Reason::KeyNotFound
    );
    // The right lookup id with a wrong secret and a valid checksum: still not found.
    let lookup = &k.secret[3..15];
    let forged = key::assemble("kg_", lookup, &"A".repeat(24));
    assert_eq!(
        reason_of(&mut c, check_req(&forged)).await,
        Reason::KeyNotFound
    );
    // The right key under another prefix is not the key.
    let body_secret = &k.secret[15..39];
    assert_eq!(
        reason_of(
            &mut c,
            check_req(&key::assemble("zz_", lookup, body_secret))
        )
        .await,
        Reason::KeyNotFound
    );

    // Tenant, IP, scope and limits all set up to fail; the first in the order wins.
    tenant(&mut a, "other", pb::TenantPolicy::default()).await;
    let key = update(
        &mut a,
        key,
        &["ip_allowlist", "rate_limits", "scopes"],
        |k| {
            k.ip_allowlist = vec!["10.0.0.0/8".into()];
            k.rate_limits = vec![limit("tiny", 1, 60)];
            k.scopes = vec!["read".into()];
        },
    )
    .await;
    let everything = pb::CheckRequest {
        api_key: k.secret.clone(),
        tenant_id: "other".into(),
        client_ip: "192.0.2.1".into(),
        required_scopes: vec!["write".into()],
        ..Default::default()
    };
    assert_eq!(
        reason_of(&mut c, everything.clone()).await,
        Reason::TenantMismatch
    );
    let mut r = everything.clone();
    r.tenant_id = "t".into();
    assert_eq!(reason_of(&mut c, r.clone()).await, Reason::IpNotAllowed);
    r.client_ip = "10.1.2.3".into();
    assert_eq!(
        reason_of(&mut c, r.clone()).await,
        Reason::InsufficientScope
    );
    r.required_scopes = vec!["read".into()];
    assert_eq!(reason_of(&mut c, r.clone()).await, Reason::Ok);
    assert_eq!(reason_of(&mut c, r.clone()).await, Reason::RateLimited);

    // Disabled beats tenant; revoked beats disabled; the cached key is denied at once.
    let key = update(&mut a, key, &["enabled"], |k| k.enabled = false).await;
    assert_eq!(
        reason_of(&mut c, everything.clone()).await,
        Reason::KeyDisabled
    );
    a.client
        .revoke_key(a.req(pb::RevokeKeyRequest {
            key_id: key.id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    assert_eq!(reason_of(&mut c, everything).await, Reason::KeyRevoked);
}

async fn revoke_and_disable_reach_a_cached_key_at_once(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    let key = k.key.unwrap();
    for _ in 0..3 {
        assert_eq!(reason_of(&mut c, check_req(&k.secret)).await, Reason::Ok);
    }
    let key = update(&mut a, key, &["enabled"], |k| k.enabled = false).await;
    assert_eq!(
        reason_of(&mut c, check_req(&k.secret)).await,
        Reason::KeyDisabled
    );
    let key = update(&mut a, key, &["enabled"], |k| k.enabled = true).await;
    assert_eq!(reason_of(&mut c, check_req(&k.secret)).await, Reason::Ok);
    a.client
        .revoke_key(a.req(pb::RevokeKeyRequest {
            key_id: key.id,
            reason: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(
        reason_of(&mut c, check_req(&k.secret)).await,
        Reason::KeyRevoked
    );
}

async fn expiry_is_exact_at_the_boundary(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, _) = setup(&s).await;
    let mut r = key_req("t", "short");
    r.expiry = Some(Expiry::ExpiresIn(secs(3600)));
    let k = create(&mut a, r).await;
    let expire = k.key.unwrap().expire_time.unwrap();
    let expire_ms = expire.seconds * 1000 + i64::from(expire.nanos) / 1_000_000;
    s.clock.set(UnixMillis(expire_ms - 1));
    assert_eq!(reason_of(&mut c, check_req(&k.secret)).await, Reason::Ok);
    s.clock.set(UnixMillis(expire_ms));
    assert_eq!(
        reason_of(&mut c, check_req(&k.secret)).await,
        Reason::KeyExpired
    );
}

async fn ip_allowlists_v4_v6_cidr_and_mapped(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    update(&mut a, k.key.clone().unwrap(), &["ip_allowlist"], |k| {
        k.ip_allowlist = vec![
            "203.0.113.7".into(),
            "10.0.0.0/8".into(),
            "2001:db8::/32".into(),
        ];
    })
    .await;
    let with_ip = |ip: &str| pb::CheckRequest {
        api_key: k.secret.clone(),
        client_ip: ip.into(),
        ..Default::default()
    };
    for (ip, want) in [
        ("203.0.113.7", Reason::Ok),
        ("203.0.113.8", Reason::IpNotAllowed),
        ("10.255.0.1", Reason::Ok),
        ("11.0.0.1", Reason::IpNotAllowed),
        ("::ffff:10.1.1.1", Reason::Ok),
        ("::ffff:203.0.113.7", Reason::Ok),
        ("2001:db8:abcd::1", Reason::Ok),
        ("2001:db9::1", Reason::IpNotAllowed),
        ("", Reason::IpNotAllowed),
    ] {
        assert_eq!(
            reason_of(&mut c, with_ip(ip)).await,
            want,
            "client_ip {ip:?}"
        );
    }
    let (status, msg) = code(c.check(with_ip("10.0.0.256")).await);
    assert_eq!(status, Code::InvalidArgument);
    assert!(msg.starts_with("client_ip:"), "{msg}");
    let (status, msg) = code(
        c.check(pb::CheckRequest {
            required_scopes: vec!["Bad Scope".into()],
            ..with_ip("10.0.0.1")
        })
        .await,
    );
    assert_eq!(status, Code::InvalidArgument);
    assert!(msg.starts_with("required_scopes[0]:"), "{msg}");
}

async fn seed_scope_rules(db: Db) {
    let s = server_or_skip!(db);
    let mut a = s.admin().await;
    let mut c = s.authorize().await;
    let need = |key: &str, scopes: &[&str]| pb::CheckRequest {
        api_key: key.into(),
        required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };

    // NexusCommerce: resource:action, resource:* and *.
    let nexus = pb::TenantPolicy {
        key_prefix: "nxc_".into(),
        environments: vec!["live".into()],
        ..Default::default()
    };
    tenant(&mut a, "nexus", nexus).await;
    let mk = |scopes: &[&str]| {
        let mut r = key_req("nexus", "k");
        r.environment = "live".into();
        r.scopes = scopes.iter().map(|s| s.to_string()).collect();
        r
    };
    let orders = create(&mut a, mk(&["orders:*", "products:read"]))
        .await
        .secret;
    let full = create(&mut a, mk(&["*"])).await.secret;
    assert_eq!(
        reason_of(&mut c, need(&orders, &["orders:write", "products:read"])).await,
        Reason::Ok
    );
    assert_eq!(
        reason_of(&mut c, need(&orders, &["products:write"])).await,
        Reason::InsufficientScope
    );
    assert_eq!(
        reason_of(&mut c, need(&full, &["ai-jobs:write", "pricing:write"])).await,
        Reason::Ok
    );

    // NexaDesk: read/write from the HTTP method.
    let nexa = pb::TenantPolicy {
        key_prefix: "fc_".into(),
        environments: vec!["live".into()],
        scopes_from_method: true,
        ..Default::default()
    };
    tenant(&mut a, "nexadesk", nexa).await;
    let mut r = key_req("nexadesk", "zapier");
    r.environment = "live".into();
    r.scopes = vec!["read".into()];
    let reader = create(&mut a, r).await.secret;
    let by_method = |m: &str| pb::CheckRequest {
        api_key: reader.clone(),
        method: m.into(),
        path: "/api/v1/external/leads".into(),
        ..Default::default()
    };
    for m in ["GET", "HEAD", "options"] {
        assert_eq!(reason_of(&mut c, by_method(m)).await, Reason::Ok, "{m}");
    }
    for m in ["POST", "PATCH", "DELETE", "PUT"] {
        assert_eq!(
            reason_of(&mut c, by_method(m)).await,
            Reason::InsufficientScope,
            "{m}"
        );
    }

    // NearIQ: read-only defaults; a plan downgrade applies to existing keys at once while
    // their stored scopes stay as they were.
    let catalogue = ["competitors:read", "alerts:read", "usage:read", "export"]
        .map(String::from)
        .to_vec();
    let mut neariq = pb::TenantPolicy {
        key_prefix: "niq_".into(),
        environments: vec!["live".into()],
        scope_catalogue: catalogue.clone(),
        default_scopes: ["competitors:read", "alerts:read", "usage:read"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    tenant(&mut a, "neariq", neariq.clone()).await;
    let mut r = key_req("neariq", "zapier");
    r.environment = "live".into();
    let default_key = create(&mut a, r).await;
    assert_eq!(
        reason_of(&mut c, need(&default_key.secret, &["alerts:read"])).await,
        Reason::Ok
    );
    assert_eq!(
        reason_of(&mut c, need(&default_key.secret, &["export"])).await,
        Reason::InsufficientScope
    );
    neariq.scope_catalogue = ["competitors:read", "usage:read", "export"]
        .map(String::from)
        .to_vec();
    neariq.default_scopes = ["competitors:read", "usage:read"]
        .map(String::from)
        .to_vec();
    tenant(&mut a, "neariq", neariq).await;
    let r = check(&mut c, need(&default_key.secret, &["alerts:read"])).await;
    assert_eq!(
        r.reason,
        Reason::InsufficientScope as i32,
        "downgrade applies on the next check"
    );
    assert_eq!(r.scopes, vec!["competitors:read", "usage:read"]);
    let stored = a
        .client
        .get_key(a.req(pb::GetKeyRequest {
            key_id: default_key.key.unwrap().id,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stored.scopes,
        vec!["alerts:read", "competitors:read", "usage:read"],
        "stored scopes unchanged"
    );
    // No required scopes, no method rule: Nesika-style keys just work.
    assert_eq!(
        reason_of(&mut c, need(&default_key.secret, &[])).await,
        Reason::Ok
    );
}

async fn rotation_grace_period(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    let old = k.key.unwrap();
    assert_eq!(reason_of(&mut c, check_req(&k.secret)).await, Reason::Ok);
    let rotated = a
        .client
        .rotate_key(a.req(pb::RotateKeyRequest {
            key_id: old.id.clone(),
            grace_period: Some(secs(600)),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reason_of(&mut c, check_req(&k.secret)).await,
        Reason::Ok,
        "old secret valid during grace"
    );
    assert_eq!(
        reason_of(&mut c, check_req(&rotated.secret)).await,
        Reason::Ok
    );
    s.clock.advance(Duration::from_secs(600));
    assert_eq!(
        reason_of(&mut c, check_req(&k.secret)).await,
        Reason::KeyRevoked,
        "grace over"
    );
    assert_eq!(
        reason_of(&mut c, check_req(&rotated.secret)).await,
        Reason::Ok
    );

    let third = a
        .client
        .rotate_key(a.req(pb::RotateKeyRequest {
            key_id: rotated.key.unwrap().id,
            grace_period: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reason_of(&mut c, check_req(&rotated.secret)).await,
        Reason::KeyRevoked,
        "no grace: at once"
    );
    assert_eq!(
        reason_of(&mut c, check_req(&third.secret)).await,
        Reason::Ok
    );
}

async fn cost_and_dry_run(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    update(&mut a, k.key.unwrap(), &["rate_limits"], |k| {
        k.rate_limits = vec![limit("ten", 10, 3600)]
    })
    .await;
    let req = |cost: u32, dry_run: bool| pb::CheckRequest {
        api_key: k.secret.clone(),
        cost,
        dry_run,
        ..Default::default()
    };
    let remaining = |r: &pb::CheckResponse| r.rate_limit.as_ref().unwrap().remaining;
    s.clock.set(UnixMillis(
        s.now().0 - s.now().0.rem_euclid(3_600_000) + 1000,
    ));
    let r = check(&mut c, req(4, false)).await;
    assert_eq!((r.reason, remaining(&r)), (Reason::Ok as i32, 6));
    let r = check(&mut c, req(6, true)).await;
    assert_eq!(
        (r.reason, remaining(&r)),
        (Reason::Ok as i32, 6),
        "dry run decides but spends nothing"
    );
    let r = check(&mut c, req(7, false)).await;
    assert_eq!(r.reason, Reason::RateLimited as i32);
    assert_eq!(remaining(&r), 6, "a refused call spends nothing");
    let r = check(&mut c, req(0, false)).await;
    assert_eq!(
        (r.reason, remaining(&r)),
        (Reason::Ok as i32, 5),
        "cost 0 means 1"
    );
    let r = check(&mut c, req(11, false)).await;
    assert_eq!(r.reason, Reason::RateLimited as i32);
    assert!(
        r.rate_limit.unwrap().retry_after.is_none(),
        "cost above the limit can never be admitted"
    );
}

async fn sliding_window_properties(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, mut c, k) = setup(&s).await;
    update(&mut a, k.key.unwrap(), &["rate_limits"], |k| {
        k.rate_limits = vec![limit("per-minute", 10, 60)]
    })
    .await;
    let probe = pb::CheckRequest {
        api_key: k.secret.clone(),
        dry_run: true,
        ..Default::default()
    };
    let call = check_req(&k.secret);
    // Start 5 s into a window.
    let start = s.now().0 - s.now().0.rem_euclid(60_000) + 5_000;
    s.clock.set(UnixMillis(start));
    for _ in 0..10 {
        assert_eq!(reason_of(&mut c, call.clone()).await, Reason::Ok);
    }
    let denied = check(&mut c, call.clone()).await;
    assert_eq!(
        denied.reason,
        Reason::RateLimited as i32,
        "limit + 1 inside one window"
    );
    let rl = denied.rate_limit.unwrap();
    assert_eq!((rl.remaining, rl.name.as_str()), (0, "per-minute"));
    let retry = rl.retry_after.unwrap();
    let retry_ms = retry.seconds * 1000 + i64::from(retry.nanos) / 1_000_000;
    assert!(retry_ms > 0);
    // One millisecond early is still refused; at retry_after the call is admitted.
    s.clock.set(UnixMillis(start + retry_ms - 1));
    assert_eq!(reason_of(&mut c, probe.clone()).await, Reason::RateLimited);
    s.clock.set(UnixMillis(start + retry_ms));
    assert_eq!(reason_of(&mut c, call.clone()).await, Reason::Ok);

    // Budget returns gradually as the window slides: half-way through the next window
    // about half of it is back, not all of it.
    let key2 = create(
        &mut a,
        pb::CreateKeyRequest {
            rate_limits: vec![limit("per-minute", 10, 60)],
            ..key_req("t", "second")
        },
    )
    .await;
    let w0 = start - 5_000 + 120_000;
    s.clock.set(UnixMillis(w0));
    for _ in 0..10 {
        assert_eq!(reason_of(&mut c, check_req(&key2.secret)).await, Reason::Ok);
    }
    s.clock.set(UnixMillis(w0 + 60_000 + 30_000));
    let mut admitted = 0;
    while reason_of(&mut c, check_req(&key2.secret)).await == Reason::Ok {
        admitted += 1;
        assert!(admitted <= 10);
    }
    assert_eq!(
        admitted, 5,
        "half the window slid out, half the budget came back"
    );
    s.clock.set(UnixMillis(w0 + 60_000 + 45_000));
    assert_eq!(
        reason_of(&mut c, probe_of(&key2.secret)).await,
        Reason::Ok,
        "more returns as it slides on"
    );
}

fn probe_of(key: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        api_key: key.into(),
        dry_run: true,
        ..Default::default()
    }
}

async fn concurrent_checks_never_exceed_the_limit(db: Db) {
    let s = server_or_skip!(db);
    let (mut a, c, k) = setup(&s).await;
    update(&mut a, k.key.unwrap(), &["rate_limits"], |k| {
        k.rate_limits = vec![limit("hundred", 100, 3600)]
    })
    .await;
    let calls = (0..1000).map(|_| {
        let mut c = c.clone();
        let key = k.secret.clone();
        tokio::spawn(async move { c.check(check_req(&key)).await.unwrap().into_inner().reason })
    });
    let reasons = futures::future::join_all(calls).await;
    let allowed = reasons
        .iter()
        .filter(|r| *r.as_ref().unwrap() == Reason::Ok as i32)
        .count();
    let limited = reasons
        .iter()
        .filter(|r| *r.as_ref().unwrap() == Reason::RateLimited as i32)
        .count();
    assert_eq!((allowed, limited), (100, 900));
}

async fn first_checks_share_one_argon2_verify(db: Db) {
    let s = server_or_skip!(db);
    let (_a, c, k) = setup(&s).await;
    let before = s.verify_count();
    let calls = (0..1000).map(|_| {
        let mut c = c.clone();
        let key = k.secret.clone();
        tokio::spawn(async move { c.check(probe_of(&key)).await.unwrap().into_inner().reason })
    });
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap(), Reason::Ok as i32);
    }
    assert_eq!(
        s.verify_count() - before,
        1,
        "1,000 concurrent first checks ran argon2 once"
    );

    // A flood of one unknown key reaches argon2 (and the store) once, too.
    let mut c = c.clone();
    let unknown = key::assemble("kg_", &"Z".repeat(12), &"Q".repeat(24));
    let before = s.verify_count();
    for _ in 0..50 {
        assert_eq!(
            reason_of(&mut c, check_req(&unknown)).await,
            Reason::KeyNotFound
        );
    }
    assert_eq!(s.verify_count() - before, 1, "negative result cached");
}

async fn last_used_time_appears_within_seconds(db: Db) {
    let s = server_or_skip!(db, |cfg| cfg.usage.flush_ms = 50);
    let (mut a, mut c, k) = setup(&s).await;
    let id = k.key.unwrap().id;
    assert_eq!(reason_of(&mut c, probe_of(&k.secret)).await, Reason::Ok);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = a
        .client
        .get_key(a.req(pb::GetKeyRequest { key_id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert!(got.last_used_time.is_none(), "a dry run is not a use");
    assert_eq!(reason_of(&mut c, check_req(&k.secret)).await, Reason::Ok);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = a
            .client
            .get_key(a.req(pb::GetKeyRequest { key_id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        if let Some(t) = got.last_used_time {
            assert_eq!(t.seconds, s.now().0 / 1000);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used_time never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_stores!(
    allow_carries_key_and_rate_limit_figures,
    each_reason_in_the_documented_order,
    revoke_and_disable_reach_a_cached_key_at_once,
    expiry_is_exact_at_the_boundary,
    ip_allowlists_v4_v6_cidr_and_mapped,
    seed_scope_rules,
    rotation_grace_period,
    cost_and_dry_run,
    sliding_window_properties,
    concurrent_checks_never_exceed_the_limit,
    first_checks_share_one_argon2_verify,
    last_used_time_appears_within_seconds,
);
