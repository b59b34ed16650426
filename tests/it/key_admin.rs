//! KeyAdmin behaviour, on SQLite and on PostgreSQL.
use crate::support::{
    code, days, limit, neariq_policy, nesika_policy, new_key, outcome, secs, Admin, Db, ADMIN_TOKEN,
};
use crate::{on_both_stores, server_or_skip};
use keygate::grpc::pb::{self, create_key_request::Expiry, KeyState};
use std::time::Duration;
use tonic::Code;

const DAY: i64 = 86_400;

fn nexus_policy() -> pb::TenantPolicy {
    pb::TenantPolicy {
        key_prefix: "nxc_".into(),
        environments: vec!["live".into(), "test".into()],
        max_active_keys: 20,
        allowed_expiries: Some(pb::ExpiryPolicy {
            durations: [30, 90, 365].map(days).to_vec(),
            allow_never: true,
        }),
        scope_catalogue: [
            "products:read",
            "products:write",
            "orders:read",
            "orders:write",
            "ai-jobs:write",
            "*",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    }
}

async fn lifecycle(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("nexus").policy(nexus_policy()).upsert().await;
    let req = new_key("nexus")
        .name("Warehouse Integration")
        .environment("live")
        .scopes(["orders:write", "products:read"])
        .ip_allowlist(["10.1.2.3/8", "::ffff:192.0.2.1"])
        .metadata([("team", "ops")])
        .expires_in(days(90));
    let created = a.create_key(req).await;
    let key = created.key.unwrap();
    assert!(
        created.secret.starts_with("nxc_live_"),
        "secret has the tenant prefix"
    );
    assert_eq!(created.secret.len(), "nxc_live_".len() + 42);
    assert_eq!(
        key.display_prefix,
        created.secret["nxc_live_".len()..]["".len()..8]
    );
    assert_eq!(key.key_prefix, "nxc_live_");
    assert_eq!(key.state, KeyState::Active as i32);
    assert_eq!(key.scopes, vec!["orders:write", "products:read"]);
    assert_eq!(key.ip_allowlist, vec!["10.0.0.0/8", "192.0.2.1"]);
    let expire = key.expire_time.unwrap();
    let create_time = key.create_time.unwrap();
    assert_eq!(expire.seconds - create_time.seconds, 90 * DAY);

    let got = a.get_key(&key.id).await.unwrap();
    assert_eq!(
        got, key,
        "GetKey returns what CreateKey returned, minus the secret"
    );

    // Update: rename, disable, then enable.
    let mut patch = key.clone();
    patch.name = "Renamed".into();
    patch.enabled = false;
    let updated = a
        .update_key(patch.clone(), &["name", "enabled"])
        .await
        .unwrap();
    assert_eq!(updated.name, "Renamed");
    assert_eq!(updated.state, KeyState::Disabled as i32);
    assert_eq!(
        updated.scopes, key.scopes,
        "fields outside the mask are untouched"
    );
    patch.enabled = true;
    let updated = a.update_key(patch, &["enabled"]).await.unwrap();
    assert_eq!(updated.state, KeyState::Active as i32);
    assert_eq!(updated.name, "Renamed");

    // Revoke: permanent, idempotent, and the key leaves the default listing.
    let revoked = a.revoke_key(&key.id, "leaked").await.unwrap();
    assert_eq!(revoked.state, KeyState::Revoked as i32);
    assert_eq!(revoked.revoke_reason, "leaked");
    s.clock.advance(Duration::from_secs(5));
    let again = a.revoke_key(&key.id, "again").await.unwrap();
    assert_eq!(
        again.revoke_time, revoked.revoke_time,
        "second revoke keeps the first time"
    );
    assert_eq!(again.revoke_reason, "leaked");
    let listed = list(&a, "nexus", false, false).await;
    assert!(listed.is_empty());
    let listed = list(&a, "nexus", true, false).await;
    assert_eq!(listed.len(), 1);
    let (c, m) = code(a.update_key(again, &["name"]).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
}

async fn list(
    a: &Admin,
    tenant_id: &str,
    include_revoked: bool,
    include_expired: bool,
) -> Vec<pb::Key> {
    let req = pb::ListKeysRequest {
        tenant_id: tenant_id.into(),
        include_revoked,
        include_expired,
        ..Default::default()
    };
    a.list_keys(req).await.unwrap().keys
}

async fn secret_is_shown_once_and_only_a_hash_is_stored(db: Db) {
    use sea_orm::{ConnectionTrait, Statement};
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("nesika").policy(nesika_policy()).upsert().await;
    let req = new_key("nesika")
        .name("power-bi-dashboard")
        .expires_in(days(30));
    let created = a.create_key(req).await;
    let secret = created.secret.clone();
    let body = &secret["nes_".len()..];
    let secret_part = &body[12..36];
    let id = created.key.unwrap().id;

    let got = a.get_key(&id).await.unwrap();
    let listed = list(&a, "nesika", true, true).await;
    for shown in [format!("{got:?}"), format!("{listed:?}")] {
        assert!(
            !shown.contains(secret_part),
            "a later RPC returned the secret"
        );
        assert!(!shown.contains("argon2"), "a later RPC returned the hash");
    }

    // Read the table itself: no column holds the key or its secret part.
    let conn = sea_orm::Database::connect(&s.url).await.unwrap();
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all(Statement::from_string(
            backend,
            "SELECT * FROM api_keys".to_owned(),
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: String = rows[0].try_get("", "secret_hash").unwrap();
    assert!(
        hash.starts_with("$argon2id$"),
        "stored hash is argon2id: {}",
        &hash[..10]
    );
    for col in [
        "id",
        "name",
        "lookup_id",
        "key_prefix",
        "display_prefix",
        "secret_hash",
        "scopes",
        "metadata",
    ] {
        let v: String = rows[0].try_get("", col).unwrap();
        assert!(!v.contains(secret_part), "column {col} holds the secret");
        assert!(!v.contains(&secret), "column {col} holds the key");
    }
}

async fn key_cap_counts_active_keys_only(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let mut p = nesika_policy();
    p.max_active_keys = 3;
    p.allowed_expiries = None;
    a.tenant("capped").policy(p).upsert().await;
    let mut ids = vec![];
    for i in 0..3 {
        let mut r = new_key("capped").name(format!("k{i}"));
        if i == 0 {
            r = r.expires_in(secs(3600));
        }
        ids.push(a.create_key(r).await.key.unwrap().id);
    }
    let (c, m) = code(a.try_create_key(new_key("capped").name("k3")).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(
        m.contains("max_active_keys") && m.contains("cap is 3"),
        "{m}"
    );

    // A disabled key still counts.
    let mut k = a.get_key(&ids[1]).await.unwrap();
    k.enabled = false;
    a.update_key(k, &["enabled"]).await.unwrap();
    assert_eq!(
        code(a.try_create_key(new_key("capped").name("k3")).await).0,
        Code::FailedPrecondition
    );

    // A revoked key does not.
    a.revoke_key(&ids[2], "").await.unwrap();
    a.create_key(new_key("capped").name("k3")).await;
    assert_eq!(
        code(a.try_create_key(new_key("capped").name("k4")).await).0,
        Code::FailedPrecondition
    );

    // Nor does an expired one.
    s.clock.advance(Duration::from_secs(3601));
    a.create_key(new_key("capped").name("k4")).await;
}

async fn concurrent_creates_never_exceed_the_cap(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let mut p = nesika_policy();
    p.allowed_expiries = None;
    assert_eq!(p.max_active_keys, 10);
    a.tenant("race").policy(p).upsert().await;
    let calls = (0..50).map(|i| {
        let a = a.clone();
        tokio::spawn(async move {
            a.try_create_key(new_key("race").name(format!("k{i}")))
                .await
        })
    });
    let results = futures::future::join_all(calls).await;
    let mut ok = 0;
    for r in results {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(
                s.code(),
                Code::FailedPrecondition,
                "unexpected failure: {s:?}"
            ),
        }
    }
    assert_eq!(ok, 10, "exactly the cap succeeded");
    assert_eq!(list(&a, "race", true, true).await.len(), 10);
}

async fn tenant_expiry_rules(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("nesika").policy(nesika_policy()).upsert().await;
    let mut r = new_key("nesika").build();
    r.expiry = Some(Expiry::ExpiresIn(days(31)));
    let (c, m) = code(a.try_create_key(r.clone()).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(
        m.contains("allowed_expiries") && m.contains("30d, 60d, 90d, 180d, 365d"),
        "{m}"
    );
    r.expiry = Some(Expiry::NeverExpires(true));
    let (c, m) = code(a.try_create_key(r.clone()).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("must expire"), "{m}");
    r.expiry = None;
    assert_eq!(
        code(a.try_create_key(r.clone()).await).0,
        Code::FailedPrecondition
    );
    r.expiry = Some(Expiry::ExpiresIn(days(365)));
    let k = a.create_key(r.clone()).await.key.unwrap();
    assert_eq!(
        k.expire_time.unwrap().seconds - k.create_time.unwrap().seconds,
        365 * DAY
    );
    let past = keygate::grpc::convert::timestamp(s.now());
    r.expiry = Some(Expiry::ExpireTime(past));
    let (c, m) = code(a.try_create_key(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("expire_time:"), "{m}");

    // NexusCommerce allows "Never": no expiry at all.
    a.tenant("nexus").policy(nexus_policy()).upsert().await;
    let r = new_key("nexus")
        .environment("test")
        .expiry(Expiry::NeverExpires(true));
    let k = a.create_key(r).await.key.unwrap();
    assert!(k.expire_time.is_none());
}

async fn scopes_and_environments_follow_the_tenant(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("nexus").policy(nexus_policy()).upsert().await;
    let mut r = new_key("nexus").build();
    let (c, m) = code(a.try_create_key(r.clone()).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(
        m.starts_with("environment:") && m.contains("live, test"),
        "{m}"
    );
    r.environment = "staging".into();
    let (c, m) = code(a.try_create_key(r.clone()).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(m.contains("environments"), "{m}");
    r.environment = "live".into();
    r.scopes = vec!["billing:read".into()];
    let (c, m) = code(a.try_create_key(r.clone()).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert!(
        m.contains("scope_catalogue") && m.contains("billing:read"),
        "{m}"
    );
    r.scopes = vec!["orders:read".into(), "Orders:Write".into()];
    let (c, m) = code(a.try_create_key(r.clone()).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("scopes[1]:"), "{m}");
    r.scopes = vec!["*".into()];
    let k = a.create_key(r).await;
    assert!(k.secret.starts_with("nxc_live_"));

    // NearIQ: a key created without scopes gets the read-only defaults.
    a.tenant("neariq").policy(neariq_policy()).upsert().await;
    let r = new_key("neariq").name("zapier").environment("live");
    let k = a.create_key(r.clone()).await.key.unwrap();
    assert_eq!(
        k.scopes,
        vec!["alerts:read", "competitors:read", "usage:read"]
    );
    let r = r.scopes(["export"]);
    assert_eq!(a.create_key(r).await.key.unwrap().scopes, vec!["export"]);

    // Scope updates respect the catalogue too.
    let mut patch = k.clone();
    patch.scopes = vec!["admin".into()];
    let (c, m) = code(a.update_key(patch, &["scopes"]).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
}

async fn bad_input_names_the_field(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("t1").upsert().await;
    let base = new_key("t1").name("ok").build();
    let cases: Vec<(pb::CreateKeyRequest, &str)> = vec![
        (
            pb::CreateKeyRequest {
                name: String::new(),
                ..base.clone()
            },
            "name:",
        ),
        (
            pb::CreateKeyRequest {
                name: "x".repeat(101),
                ..base.clone()
            },
            "name:",
        ),
        (
            pb::CreateKeyRequest {
                name: "bell\u{7}".into(),
                ..base.clone()
            },
            "name:",
        ),
        (
            pb::CreateKeyRequest {
                tenant_id: "bad id!".into(),
                ..base.clone()
            },
            "tenant_id:",
        ),
        (
            pb::CreateKeyRequest {
                ip_allowlist: vec!["10.0.0.1".into(), "999.1.1.1".into()],
                ..base.clone()
            },
            "ip_allowlist[1]:",
        ),
        (
            pb::CreateKeyRequest {
                metadata: (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..base.clone()
            },
            "metadata:",
        ),
        (
            pb::CreateKeyRequest {
                rate_limits: vec![limit("m", 0, 60)],
                ..base.clone()
            },
            "rate_limits[0].limit:",
        ),
        (
            pb::CreateKeyRequest {
                rate_limits: vec![pb::RateLimit {
                    name: "m".into(),
                    limit: 5,
                    window: None,
                }],
                ..base.clone()
            },
            "rate_limits[0].window:",
        ),
        (
            pb::CreateKeyRequest {
                expiry: Some(Expiry::ExpiresIn(secs(-5))),
                ..base.clone()
            },
            "expires_in:",
        ),
        (
            pb::CreateKeyRequest {
                environment: "live".into(),
                ..base.clone()
            },
            "environment:",
        ),
    ];
    for (req, field) in cases {
        let (c, m) = code(a.try_create_key(req).await);
        assert_eq!(c, Code::InvalidArgument, "{field} {m}");
        assert!(
            m.starts_with(field),
            "expected message naming {field}, got {m:?}"
        );
    }
    assert_eq!(
        list(&a, "t1", true, true).await.len(),
        0,
        "no bad request left a row"
    );

    let policy_cases: Vec<(pb::TenantPolicy, &str)> = vec![
        (
            pb::TenantPolicy {
                key_prefix: "NXC".into(),
                ..Default::default()
            },
            "tenant.policy.key_prefix:",
        ),
        (
            pb::TenantPolicy {
                environments: vec!["live".into(), "Live".into()],
                ..Default::default()
            },
            "tenant.policy.environments[1]:",
        ),
        (
            pb::TenantPolicy {
                scope_catalogue: vec!["a::b".into()],
                ..Default::default()
            },
            "tenant.policy.scope_catalogue[0]:",
        ),
        (
            pb::TenantPolicy {
                scope_catalogue: vec!["read".into()],
                default_scopes: vec!["write".into()],
                ..Default::default()
            },
            "tenant.policy.default_scopes:",
        ),
    ];
    for (p, field) in policy_cases {
        let bad_tenant = pb::UpsertTenantRequest {
            tenant: Some(pb::Tenant {
                id: "t2".into(),
                policy: Some(p),
                ..Default::default()
            }),
        };
        let (c, m) = code(a.upsert_tenant(bad_tenant).await);
        assert_eq!(c, Code::InvalidArgument);
        assert!(m.starts_with(field), "expected {field}, got {m:?}");
    }
    let (c, m) = code(
        a.upsert_tenant(pb::UpsertTenantRequest { tenant: None })
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("tenant:"), "{m}");

    let k = a.create_key(base).await.key.unwrap();
    let (c, m) = code(a.update_key(k.clone(), &["tenant_id"]).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("update_mask.paths:"), "{m}");
    let no_mask = pb::UpdateKeyRequest {
        key: Some(k),
        update_mask: None,
    };
    let (c, m) = code(a.update_key_request(no_mask).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("update_mask:"), "{m}");
    let (c, m) = code(
        a.list_keys(pb::ListKeysRequest {
            tenant_id: "t1".into(),
            page_size: 5000,
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("page_size:"), "{m}");
    let (c, m) = code(
        a.list_keys(pb::ListKeysRequest {
            tenant_id: "t1".into(),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("page_token:"), "{m}");
    let (c, _) = code(a.get_key("key_nope").await);
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(a.try_create_key(new_key("no-such-tenant")).await);
    assert_eq!(c, Code::NotFound);
    let (c, _) = code(a.get_tenant("no-such-tenant").await);
    assert_eq!(c, Code::NotFound);
}

async fn pagination_walks_every_key_once(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("pages").upsert().await;
    let mut made = vec![];
    for i in 0..25 {
        let k = a
            .create_key(new_key("pages").name(format!("k{i:02}")))
            .await;
        made.push(k.key.unwrap().id);
        if i % 3 == 0 {
            s.clock.advance(Duration::from_millis(1));
        }
    }
    let (mut seen, mut token, mut pages) = (vec![], String::new(), 0);
    loop {
        let req = pb::ListKeysRequest {
            tenant_id: "pages".into(),
            page_size: 10,
            page_token: token.clone(),
            ..Default::default()
        };
        let resp = a.list_keys(req).await.unwrap();
        pages += 1;
        seen.extend(resp.keys.into_iter().map(|k| k.id));
        if resp.next_page_token.is_empty() {
            break;
        }
        token = resp.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "no key listed twice");
    let mut made_sorted = made.clone();
    made_sorted.sort();
    assert_eq!(sorted, made_sorted);

    for i in 0..5 {
        a.tenant(&format!("tenant-{i}")).upsert().await;
    }
    let first = a
        .list_tenants(pb::ListTenantsRequest {
            page_size: 4,
            page_token: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(first.tenants.len(), 4);
    let second = a
        .list_tenants(pb::ListTenantsRequest {
            page_size: 4,
            page_token: first.next_page_token,
        })
        .await
        .unwrap();
    assert_eq!(second.tenants.len(), 2);
    assert!(second.next_page_token.is_empty());
    // A token is one this server returned, not any tenant id.
    let (c, m) = code(
        a.list_tenants(pb::ListTenantsRequest {
            page_size: 4,
            page_token: "tenant-1".into(),
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.starts_with("page_token:"), "{m}");
}

async fn rotation_keeps_settings_and_remaining_expiry(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("nesika").policy(nesika_policy()).upsert().await;
    let r = new_key("nesika")
        .name("make.com-integration")
        .expires_in(days(30))
        .scopes(["read"])
        .metadata([("owner", "ana")]);
    let old = a.create_key(r).await;
    let old_key = old.key.unwrap();
    s.clock.advance(Duration::from_secs(10 * DAY as u64));

    let rotated = a.rotate_key(&old_key.id, Some(secs(3600))).await.unwrap();
    let successor = rotated.key.unwrap();
    let prev = rotated.previous_key.unwrap();
    assert_ne!(rotated.secret, old.secret);
    assert!(rotated.secret.starts_with("nes_"));
    assert_ne!(successor.id, old_key.id);
    assert_eq!(successor.rotated_from_key_id, old_key.id);
    assert_eq!(
        (&successor.name, &successor.scopes, &successor.metadata),
        (&old_key.name, &old_key.scopes, &old_key.metadata)
    );
    assert_eq!(
        successor.expire_time, old_key.expire_time,
        "the successor keeps the remaining expiry, not a fresh 30 days"
    );
    assert_eq!(
        prev.state,
        KeyState::Active as i32,
        "old secret still valid during grace"
    );
    let now = keygate::grpc::convert::timestamp(s.now());
    assert_eq!(prev.revoke_time.unwrap().seconds, now.seconds + 3600);

    // Rotating the old key again is refused; the successor can be rotated, with no grace.
    let (c, m) = code(a.rotate_key(&old_key.id, None).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    s.clock.advance(Duration::from_secs(3601));
    let got = a.get_key(&old_key.id).await.unwrap();
    assert_eq!(
        got.state,
        KeyState::Revoked as i32,
        "grace over: old key revoked"
    );
    let third = a.rotate_key(&successor.id, None).await.unwrap();
    assert_eq!(
        third.previous_key.unwrap().state,
        KeyState::Revoked as i32,
        "no grace: revoked at once"
    );
    let (c, m) = code(a.rotate_key(&third.key.unwrap().id, Some(days(31))).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.starts_with("grace_period:"), "{m}");
}

async fn tenant_upsert_keeps_create_time(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let first = a.tenant("acme").upsert().await;
    assert_eq!(
        first.policy.as_ref().unwrap().key_prefix,
        "kg_",
        "default prefix is shown"
    );
    s.clock.advance(Duration::from_secs(60));
    let second = a.tenant("acme").policy(nesika_policy()).upsert().await;
    assert_eq!(second.create_time, first.create_time);
    assert_ne!(second.update_time, first.update_time);
    assert_eq!(second.policy.unwrap().key_prefix, "nes_");
    let got = a.get_tenant("acme").await.unwrap();
    assert_eq!(got.policy.unwrap().max_active_keys, 10);
}

async fn admin_calls_need_an_admin_token(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let api_key = a.create_key(new_key("t")).await.secret;

    let anonymous = a.with_token("");
    let (c, m) = code(
        anonymous
            .list_tenants(pb::ListTenantsRequest::default())
            .await,
    );
    assert_eq!(c, Code::Unauthenticated, "{m}");
    for (header, want) in [
        (
            "Bearer wrong-token-wrong-token".to_string(),
            Code::Unauthenticated,
        ),
        (format!("Basic {ADMIN_TOKEN}"), Code::Unauthenticated),
        (format!("Bearer {api_key}"), Code::PermissionDenied),
        (format!("bearer {ADMIN_TOKEN}"), Code::Ok),
    ] {
        let caller = a.with_header("authorization", &header);
        let got = outcome(caller.list_tenants(pb::ListTenantsRequest::default()).await);
        assert_eq!(
            got,
            want,
            "authorization: {}",
            header.split(' ').next().unwrap()
        );
    }
}

on_both_stores!(
    lifecycle,
    secret_is_shown_once_and_only_a_hash_is_stored,
    key_cap_counts_active_keys_only,
    concurrent_creates_never_exceed_the_cap,
    tenant_expiry_rules,
    scopes_and_environments_follow_the_tenant,
    bad_input_names_the_field,
    pagination_walks_every_key_once,
    rotation_keeps_settings_and_remaining_expiry,
    tenant_upsert_keeps_create_time,
    admin_calls_need_an_admin_token,
);
