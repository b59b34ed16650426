//! Authorize.Check through the real server, on SQLite and PostgreSQL.
use crate::support::{check, code, limit, new_key, secs, Admin, CheckClient, Db, TestServer};
use crate::{on_both_stores, server_or_skip};
use keygate::domain::key;
use keygate::domain::UnixMillis;
use keygate::grpc::pb::{self, Decision, Reason};
use std::time::Duration;
use tonic::Code;

/// The reason, asserting the decision and HTTP status agree with it.
async fn reason_of(c: &CheckClient, req: impl Into<pb::CheckRequest>) -> Reason {
    let r = c.check(req).await;
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

/// A tenant "t" with no restrictions but a 100/60s default limit, and one key.
async fn setup(s: &TestServer) -> (Admin, CheckClient, pb::CreateKeyResponse) {
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("per-minute", 100, 60)],
        ..Default::default()
    };
    a.tenant("t").policy(policy).upsert().await;
    let k = a.create_key(new_key("t").name("main")).await;
    (a, s.authorize().await, k)
}

/// `key` changed by `f`, updated with `paths` as the mask.
async fn update(
    a: &Admin,
    mut key: pb::Key,
    paths: &[&str],
    f: impl FnOnce(&mut pb::Key),
) -> pb::Key {
    f(&mut key);
    a.update_key(key, paths).await.unwrap()
}

async fn allow_carries_key_and_rate_limit_figures(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    let key = k.key.unwrap();
    let key = update(&a, key, &["metadata", "scopes"], |k| {
        k.metadata = [("plan".to_string(), "pro".to_string())].into();
        k.scopes = vec!["orders:read".into()];
    })
    .await;
    let r = c.check(check(&k.secret)).await;
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
    let (a, c, k) = setup(&s).await;
    let key = k.key.clone().unwrap();

    assert_eq!(reason_of(&c, check("")).await, Reason::MissingCredential);
    assert_eq!(
        reason_of(&c, check("not a key")).await,
        Reason::MalformedKey
    );
    let mut typo = k.secret.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'x' { b'y' } else { b'x' };
    assert_eq!(
        reason_of(&c, check(&String::from_utf8(typo).unwrap())).await,
        Reason::MalformedKey
    );
    let never_issued =
        secrecy::ExposeSecret::expose_secret(&key::ApiKeyFormat::generate("kg_").full).to_owned();
    assert_eq!(
        reason_of(&c, check(&never_issued)).await,
        Reason::KeyNotFound
    );
    // The right lookup id with a wrong secret and a valid checksum: still not found.
    let lookup = &k.secret[3..15];
    let forged = key::assemble("kg_", lookup, &"A".repeat(24));
    assert_eq!(reason_of(&c, check(&forged)).await, Reason::KeyNotFound);
    // The right key under another prefix is not the key.
    let body_secret = &k.secret[15..39];
    assert_eq!(
        reason_of(&c, check(&key::assemble("zz_", lookup, body_secret))).await,
        Reason::KeyNotFound
    );

    // Tenant, IP, scope and limits all set up to fail; the first in the order wins.
    a.tenant("other").upsert().await;
    let key = update(&a, key, &["ip_allowlist", "rate_limits", "scopes"], |k| {
        k.ip_allowlist = vec!["10.0.0.0/8".into()];
        k.rate_limits = vec![limit("tiny", 1, 60)];
        k.scopes = vec!["read".into()];
    })
    .await;
    let everything = check(&k.secret)
        .tenant("other")
        .ip("192.0.2.1")
        .requires(["write"]);
    assert_eq!(
        reason_of(&c, everything.clone()).await,
        Reason::TenantMismatch
    );
    let r = everything.clone().tenant("t");
    assert_eq!(reason_of(&c, r.clone()).await, Reason::IpNotAllowed);
    let r = r.ip("10.1.2.3");
    assert_eq!(reason_of(&c, r.clone()).await, Reason::InsufficientScope);
    let r = r.requires(["read"]);
    assert_eq!(reason_of(&c, r.clone()).await, Reason::Ok);
    assert_eq!(reason_of(&c, r.clone()).await, Reason::RateLimited);

    // Disabled beats tenant; revoked beats disabled; the cached key is denied at once.
    let key = update(&a, key, &["enabled"], |k| k.enabled = false).await;
    assert_eq!(reason_of(&c, everything.clone()).await, Reason::KeyDisabled);
    a.revoke_key(&key.id, "test").await.unwrap();
    assert_eq!(reason_of(&c, everything).await, Reason::KeyRevoked);
}

async fn revoke_and_disable_reach_a_cached_key_at_once(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    let key = k.key.unwrap();
    for _ in 0..3 {
        assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::Ok);
    }
    let key = update(&a, key, &["enabled"], |k| k.enabled = false).await;
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::KeyDisabled);
    let key = update(&a, key, &["enabled"], |k| k.enabled = true).await;
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::Ok);
    a.revoke_key(&key.id, "").await.unwrap();
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::KeyRevoked);
}

async fn expiry_is_exact_at_the_boundary(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, _) = setup(&s).await;
    let k = a
        .create_key(new_key("t").name("short").expires_in(secs(3600)))
        .await;
    let expire = k.key.unwrap().expire_time.unwrap();
    let expire_ms = expire.seconds * 1000 + i64::from(expire.nanos) / 1_000_000;
    s.clock.set(UnixMillis(expire_ms - 1));
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::Ok);
    s.clock.set(UnixMillis(expire_ms));
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::KeyExpired);
}

async fn ip_allowlists_v4_v6_cidr_and_mapped(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    update(&a, k.key.clone().unwrap(), &["ip_allowlist"], |k| {
        k.ip_allowlist = vec![
            "203.0.113.7".into(),
            "10.0.0.0/8".into(),
            "2001:db8::/32".into(),
        ];
    })
    .await;
    let with_ip = |ip: &str| check(&k.secret).ip(ip);
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
        assert_eq!(reason_of(&c, with_ip(ip)).await, want, "client_ip {ip:?}");
    }
    let (status, msg) = code(c.try_check(with_ip("10.0.0.256")).await);
    assert_eq!(status, Code::InvalidArgument);
    assert!(msg.starts_with("client_ip:"), "{msg}");
    let (status, msg) = code(
        c.try_check(with_ip("10.0.0.1").requires(["Bad Scope"]))
            .await,
    );
    assert_eq!(status, Code::InvalidArgument);
    assert!(msg.starts_with("required_scopes[0]:"), "{msg}");
}

async fn seed_scope_rules(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let c = s.authorize().await;
    let need = |key: &str, scopes: &[&str]| check(key).requires(scopes);

    // NexusCommerce: resource:action, resource:* and *.
    let nexus = pb::TenantPolicy {
        key_prefix: "nxc_".into(),
        environments: vec!["live".into()],
        ..Default::default()
    };
    a.tenant("nexus").policy(nexus).upsert().await;
    let mk = |scopes: &[&str]| new_key("nexus").environment("live").scopes(scopes);
    let orders = a
        .create_key(mk(&["orders:*", "products:read"]))
        .await
        .secret;
    let full = a.create_key(mk(&["*"])).await.secret;
    assert_eq!(
        reason_of(&c, need(&orders, &["orders:write", "products:read"])).await,
        Reason::Ok
    );
    assert_eq!(
        reason_of(&c, need(&orders, &["products:write"])).await,
        Reason::InsufficientScope
    );
    assert_eq!(
        reason_of(&c, need(&full, &["ai-jobs:write", "pricing:write"])).await,
        Reason::Ok
    );

    // NexaDesk: read/write from the HTTP method.
    let nexa = pb::TenantPolicy {
        key_prefix: "fc_".into(),
        environments: vec!["live".into()],
        scopes_from_method: true,
        ..Default::default()
    };
    a.tenant("nexadesk").policy(nexa).upsert().await;
    let r = new_key("nexadesk")
        .name("zapier")
        .environment("live")
        .scopes(["read"]);
    let reader = a.create_key(r).await.secret;
    let by_method = |m: &str| check(&reader).method(m).path("/api/v1/external/leads");
    for m in ["GET", "HEAD", "options"] {
        assert_eq!(reason_of(&c, by_method(m)).await, Reason::Ok, "{m}");
    }
    for m in ["POST", "PATCH", "DELETE", "PUT"] {
        assert_eq!(
            reason_of(&c, by_method(m)).await,
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
    a.tenant("neariq").policy(neariq.clone()).upsert().await;
    let default_key = a
        .create_key(new_key("neariq").name("zapier").environment("live"))
        .await;
    assert_eq!(
        reason_of(&c, need(&default_key.secret, &["alerts:read"])).await,
        Reason::Ok
    );
    assert_eq!(
        reason_of(&c, need(&default_key.secret, &["export"])).await,
        Reason::InsufficientScope
    );
    neariq.scope_catalogue = ["competitors:read", "usage:read", "export"]
        .map(String::from)
        .to_vec();
    neariq.default_scopes = ["competitors:read", "usage:read"]
        .map(String::from)
        .to_vec();
    a.tenant("neariq").policy(neariq).upsert().await;
    let r = c.check(need(&default_key.secret, &["alerts:read"])).await;
    assert_eq!(
        r.reason,
        Reason::InsufficientScope as i32,
        "downgrade applies on the next check"
    );
    assert_eq!(r.scopes, vec!["competitors:read", "usage:read"]);
    let stored = a.get_key(&default_key.key.unwrap().id).await.unwrap();
    assert_eq!(
        stored.scopes,
        vec!["alerts:read", "competitors:read", "usage:read"],
        "stored scopes unchanged"
    );
    // No required scopes, no method rule: Nesika-style keys just work.
    assert_eq!(
        reason_of(&c, need(&default_key.secret, &[])).await,
        Reason::Ok
    );
}

async fn rotation_grace_period(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    let old = k.key.unwrap();
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::Ok);
    let rotated = a.rotate_key(&old.id, Some(secs(600))).await.unwrap();
    assert_eq!(
        reason_of(&c, check(&k.secret)).await,
        Reason::Ok,
        "old secret valid during grace"
    );
    assert_eq!(reason_of(&c, check(&rotated.secret)).await, Reason::Ok);
    s.clock.advance(Duration::from_secs(600));
    assert_eq!(
        reason_of(&c, check(&k.secret)).await,
        Reason::KeyRevoked,
        "grace over"
    );
    assert_eq!(reason_of(&c, check(&rotated.secret)).await, Reason::Ok);

    let third = a.rotate_key(&rotated.key.unwrap().id, None).await.unwrap();
    assert_eq!(
        reason_of(&c, check(&rotated.secret)).await,
        Reason::KeyRevoked,
        "no grace: at once"
    );
    assert_eq!(reason_of(&c, check(&third.secret)).await, Reason::Ok);
}

async fn cost_and_dry_run(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    update(&a, k.key.unwrap(), &["rate_limits"], |k| {
        k.rate_limits = vec![limit("ten", 10, 3600)]
    })
    .await;
    let req = |cost: u32, dry_run: bool| {
        let r = check(&k.secret).cost(cost);
        if dry_run {
            r.dry_run()
        } else {
            r
        }
    };
    let remaining = |r: &pb::CheckResponse| r.rate_limit.as_ref().unwrap().remaining;
    s.clock.set(UnixMillis(
        s.now().0 - s.now().0.rem_euclid(3_600_000) + 1000,
    ));
    let r = c.check(req(4, false)).await;
    assert_eq!((r.reason, remaining(&r)), (Reason::Ok as i32, 6));
    let r = c.check(req(6, true)).await;
    assert_eq!(
        (r.reason, remaining(&r)),
        (Reason::Ok as i32, 6),
        "dry run decides but spends nothing"
    );
    let r = c.check(req(7, false)).await;
    assert_eq!(r.reason, Reason::RateLimited as i32);
    assert_eq!(remaining(&r), 6, "a refused call spends nothing");
    let r = c.check(req(0, false)).await;
    assert_eq!(
        (r.reason, remaining(&r)),
        (Reason::Ok as i32, 5),
        "cost 0 means 1"
    );
    let r = c.check(req(11, false)).await;
    assert_eq!(r.reason, Reason::RateLimited as i32);
    assert!(
        r.rate_limit.unwrap().retry_after.is_none(),
        "cost above the limit can never be admitted"
    );
}

async fn sliding_window_properties(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    update(&a, k.key.unwrap(), &["rate_limits"], |k| {
        k.rate_limits = vec![limit("per-minute", 10, 60)]
    })
    .await;
    let probe = check(&k.secret).dry_run();
    let call = check(&k.secret);
    // Start 5 s into a window.
    let start = s.now().0 - s.now().0.rem_euclid(60_000) + 5_000;
    s.clock.set(UnixMillis(start));
    for _ in 0..10 {
        assert_eq!(reason_of(&c, call.clone()).await, Reason::Ok);
    }
    let denied = c.check(call.clone()).await;
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
    assert_eq!(reason_of(&c, probe.clone()).await, Reason::RateLimited);
    s.clock.set(UnixMillis(start + retry_ms));
    assert_eq!(reason_of(&c, call.clone()).await, Reason::Ok);

    // A call's budget comes back one window after it — not all at once at a clock
    // boundary, and never more than a window later: 5 calls at w0 and 5 at w0 + 30 s.
    let key2 = a
        .create_key(
            new_key("t")
                .name("second")
                .rate_limits([limit("per-minute", 10, 60)]),
        )
        .await;
    let w0 = start - 5_000 + 120_000;
    for at in [w0, w0 + 30_000] {
        s.clock.set(UnixMillis(at));
        for _ in 0..5 {
            assert_eq!(reason_of(&c, check(&key2.secret)).await, Reason::Ok);
        }
    }
    s.clock.set(UnixMillis(w0 + 59_999));
    let denied = c.check(check(&key2.secret)).await;
    assert_eq!(denied.reason, Reason::RateLimited as i32);
    let rl = denied.rate_limit.unwrap();
    let retry = rl.retry_after.unwrap();
    assert_eq!(
        (retry.seconds, retry.nanos),
        (0, 1_000_000),
        "back at w0 + 60 s"
    );
    let reset = rl.reset_time.unwrap();
    assert_eq!(
        reset.seconds * 1000,
        w0 + 90_000,
        "whole budget back at w0 + 90 s"
    );
    let count_admitted = || async {
        let mut admitted = 0;
        while reason_of(&c, check(&key2.secret)).await == Reason::Ok {
            admitted += 1;
            assert!(admitted <= 10);
        }
        admitted
    };
    s.clock.set(UnixMillis(w0 + 60_000));
    assert_eq!(count_admitted().await, 5, "the first five are back");
    s.clock.set(UnixMillis(w0 + 60_000 + 60_000));
    assert_eq!(
        count_admitted().await,
        10,
        "a window after the last call: all of it"
    );
}

async fn concurrent_checks_never_exceed_the_limit(db: Db) {
    let s = server_or_skip!(db);
    let (a, c, k) = setup(&s).await;
    update(&a, k.key.unwrap(), &["rate_limits"], |k| {
        k.rate_limits = vec![limit("hundred", 100, 3600)]
    })
    .await;
    let calls = (0..1000).map(|_| {
        let (c, key) = (c.clone(), k.secret.clone());
        tokio::spawn(async move { c.check(check(&key)).await.reason })
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
        let (c, key) = (c.clone(), k.secret.clone());
        tokio::spawn(async move { c.check(check(&key).dry_run()).await.reason })
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
    let unknown = key::assemble("kg_", &"Z".repeat(12), &"Q".repeat(24));
    let before = s.verify_count();
    for _ in 0..50 {
        assert_eq!(reason_of(&c, check(&unknown)).await, Reason::KeyNotFound);
    }
    assert_eq!(s.verify_count() - before, 1, "negative result cached");
}

async fn last_used_time_appears_within_seconds(db: Db) {
    let s = server_or_skip!(db, |cfg| cfg.usage.flush_ms = 50);
    let (a, c, k) = setup(&s).await;
    let id = k.key.unwrap().id;
    assert_eq!(reason_of(&c, check(&k.secret).dry_run()).await, Reason::Ok);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = a.get_key(&id).await.unwrap();
    assert!(got.last_used_time.is_none(), "a dry run is not a use");
    assert_eq!(reason_of(&c, check(&k.secret)).await, Reason::Ok);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = a.get_key(&id).await.unwrap();
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
