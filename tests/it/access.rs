//! Who may call what. The KeyAdmin authorization matrix below is the single source of
//! truth: every RPC of the service (read from the compiled proto) must have a row, and
//! every row is called with every identity against the real server. Admin tokens are made
//! with the real `keygate admin create` command and picked up by the running server.
//! Also: the `authorize_token` for Authorize and ext_authz, and server-side limits.
use crate::support::{
    check, ext_authz, new_key, outcome, quota, sample, Admin, Db, TestServer, ADMIN_TOKEN,
};
use keygate::grpc::pb;
use prost::Message;
use std::time::Duration;
use tonic::Code;

/// The identities of the matrix, in column order.
const WHO: [&str; 7] = [
    "no token",
    "wrong token",
    "API key",
    "viewer",
    "tenant admin, own tenant",
    "tenant admin, other tenant",
    "platform admin",
];

use Code::{NotFound as NF, Ok as OK, PermissionDenied as PD, Unauthenticated as UA};

/// Expected code per identity: unauthenticated callers never get further, an API key is
/// never an admin, viewers only read, a tenant admin acts on its own tenant only, and only
/// platform admins change tenant policy.
const MATRIX: &[(&str, [Code; 7])] = &[
    ("UpsertTenant", [UA, UA, PD, PD, PD, PD, OK]),
    ("GetTenant", [UA, UA, PD, OK, OK, PD, OK]),
    ("ListTenants", [UA, UA, PD, OK, OK, OK, OK]),
    ("CreateKey", [UA, UA, PD, PD, OK, PD, OK]),
    ("GetKey", [UA, UA, PD, OK, OK, PD, OK]),
    ("ListKeys", [UA, UA, PD, OK, OK, PD, OK]),
    ("UpdateKey", [UA, UA, PD, PD, OK, PD, OK]),
    ("RevokeKey", [UA, UA, PD, PD, OK, PD, OK]),
    ("RotateKey", [UA, UA, PD, PD, OK, PD, OK]),
    ("ListAuditEvents", [UA, UA, PD, OK, OK, PD, OK]),
    ("GetKeyUsage", [UA, UA, PD, OK, OK, PD, OK]),
    ("GetTenantUsage", [UA, UA, PD, OK, OK, PD, OK]),
    ("ImportKeys", [UA, UA, PD, PD, OK, PD, OK]),
    ("UpsertPlan", [UA, UA, PD, PD, PD, PD, OK]),
    ("ListPlans", [UA, UA, PD, OK, OK, OK, OK]),
    // A key's quota is its tenant admins' to manage; a tenant's (what it pays for) is not.
    ("AdjustQuota", [UA, UA, PD, PD, OK, PD, OK]),
    ("AdjustQuota(tenant)", [UA, UA, PD, PD, PD, PD, OK]),
    // Acting on a leaked key is a write; a tenant admin reporting another tenant's key is
    // answered (so it learns nothing) but acts on nothing: the harness checks the key.
    ("ReportLeakedKeys", [UA, UA, PD, PD, OK, OK, OK]),
    // Webhook endpoints are the tenant's to manage; viewers read them and the deliveries.
    ("CreateWebhookEndpoint", [UA, UA, PD, PD, OK, PD, OK]),
    ("ListWebhookEndpoints", [UA, UA, PD, OK, OK, PD, OK]),
    ("UpdateWebhookEndpoint", [UA, UA, PD, PD, OK, PD, OK]),
    ("DeleteWebhookEndpoint", [UA, UA, PD, PD, OK, PD, OK]),
    ("RotateWebhookSecret", [UA, UA, PD, PD, OK, PD, OK]),
    ("ListDeliveries", [UA, UA, PD, OK, OK, PD, OK]),
    ("RedeliverEvent", [UA, UA, PD, PD, OK, PD, OK]),
    ("WatchEvents", [UA, UA, PD, OK, OK, PD, OK]),
];

/// An endpoint of `tenant_id` made by the platform admin (never called: the matrix
/// server delivers nothing).
async fn fresh_endpoint(platform: &Admin, tenant_id: &str) -> pb::WebhookEndpoint {
    platform
        .create_webhook_endpoint(tenant_id, "https://hooks.example.com/matrix", &[])
        .await
        .unwrap()
        .endpoint
        .unwrap()
}

/// The RPC a matrix row is about: `AdjustQuota(tenant)` is a second row for `AdjustQuota`.
fn rpc_of(row: &str) -> &str {
    row.split('(').next().unwrap_or(row)
}

/// Every method of `keygate.v1.KeyAdmin`, from the descriptor set compiled into Keygate.
fn key_admin_rpcs() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(keygate::grpc::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "keygate.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "KeyAdmin")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect()
}

/// Runs `keygate admin …` against the server's database; returns stdout and stderr.
fn admin_cli(url: &str, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .env_clear()
        .env("KEYGATE_DATABASE_URL", url)
        .env("KEYGATE_LOG__FILTER", "warn")
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "keygate {args:?} failed: {stderr}");
    (stdout, stderr)
}

/// The tenant and keys one matrix cell acts on; each write gets a fresh key.
struct Target {
    tenant: &'static str,
}

async fn fresh_key(platform: &Admin, tenant_id: &str) -> String {
    let k = platform.create_key(new_key(tenant_id).name("target")).await;
    k.key.unwrap().id
}

/// Calls `rpc` as `who` on `target`; the code it got.
async fn call(rpc: &str, who: &Admin, platform: &Admin, target: &Target) -> Code {
    let t = target.tenant.to_owned();
    match rpc {
        "UpsertTenant" => outcome(
            who.upsert_tenant(pb::UpsertTenantRequest {
                tenant: Some(pb::Tenant {
                    id: t,
                    display_name: "renamed".into(),
                    policy: Some(pb::TenantPolicy::default()),
                    ..Default::default()
                }),
            })
            .await,
        ),
        "GetTenant" => outcome(who.get_tenant(&t).await),
        "ListTenants" => outcome(who.list_tenants(pb::ListTenantsRequest::default()).await),
        "CreateKey" => outcome(who.try_create_key(new_key(&t).name("made-by-matrix")).await),
        "GetKey" => {
            let key_id = fresh_key(platform, &t).await;
            outcome(who.get_key(&key_id).await)
        }
        "ListKeys" => outcome(
            who.list_keys(pb::ListKeysRequest {
                tenant_id: t,
                ..Default::default()
            })
            .await,
        ),
        "UpdateKey" => {
            let id = fresh_key(platform, &t).await;
            let patch = pb::Key {
                id,
                name: "renamed".into(),
                ..Default::default()
            };
            outcome(who.update_key(patch, &["name"]).await)
        }
        "RevokeKey" => {
            let key_id = fresh_key(platform, &t).await;
            outcome(who.revoke_key(&key_id, "matrix").await)
        }
        "RotateKey" => {
            let key_id = fresh_key(platform, &t).await;
            outcome(who.rotate_key(&key_id, None).await)
        }
        "ListAuditEvents" => outcome(
            who.list_audit_events(pb::ListAuditEventsRequest {
                tenant_id: t,
                ..Default::default()
            })
            .await,
        ),
        "GetKeyUsage" => {
            let key_id = fresh_key(platform, &t).await;
            outcome(
                who.get_key_usage(pb::GetKeyUsageRequest {
                    key_id,
                    ..Default::default()
                })
                .await,
            )
        }
        "GetTenantUsage" => outcome(
            who.get_tenant_usage(pb::GetTenantUsageRequest {
                tenant_id: t,
                ..Default::default()
            })
            .await,
        ),
        "ImportKeys" => {
            // A fresh SHA-256 hash each call, under the target tenant's own prefix.
            let n = keygate::domain::key::random_base62(16);
            let hash: String = {
                use sha2::Digest;
                sha2::Sha256::digest(n.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            };
            outcome(
                who.import_keys(pb::ImportKeysRequest {
                    tenant_id: t.clone(),
                    key_prefix: format!("{t}_old_"),
                    format: pb::ImportHashFormat::Sha256Hex as i32,
                    lookup_length: 0,
                    keys: vec![pb::ImportedKey {
                        name: "imported".into(),
                        hash,
                        ..Default::default()
                    }],
                })
                .await,
            )
        }
        "UpsertPlan" => outcome(
            who.upsert_plan(pb::Plan {
                id: "starter".into(),
                display_name: "Starter".into(),
                ..Default::default()
            })
            .await,
        ),
        "ListPlans" => outcome(who.list_plans().await),
        "AdjustQuota" => {
            let k = new_key(&t)
                .name("with-quota")
                .quota(quota(10, pb::QuotaPeriod::Month));
            let key_id = platform.create_key(k).await.key.unwrap().id;
            outcome(
                who.adjust_quota(pb::AdjustQuotaRequest {
                    target: Some(pb::adjust_quota_request::Target::KeyId(key_id)),
                    change: Some(pb::adjust_quota_request::Change::Delta(5)),
                    reason: "matrix".into(),
                })
                .await,
            )
        }
        "AdjustQuota(tenant)" => {
            let policy = pb::TenantPolicy {
                quota: Some(quota(1000, pb::QuotaPeriod::Month)),
                ..Default::default()
            };
            platform.tenant(&t).policy(policy).upsert().await;
            outcome(
                who.adjust_quota(pb::AdjustQuotaRequest {
                    target: Some(pb::adjust_quota_request::Target::TenantId(t)),
                    change: Some(pb::adjust_quota_request::Change::Delta(5)),
                    reason: "matrix".into(),
                })
                .await,
            )
        }
        "ReportLeakedKeys" => {
            let k = platform.create_key(new_key(&t).name("leaked")).await;
            let key_id = k.key.unwrap().id;
            let r = who
                .report_leaked_keys(&[&k.secret], "https://example.test/leak", "matrix")
                .await;
            let code = r.as_ref().map_or_else(|s| s.code(), |_| OK);
            let state = platform.get_key(&key_id).await.unwrap().state;
            let revoked = state == pb::KeyState::Revoked as i32;
            if let Ok(r) = r {
                let found = r.results[0].finding == pb::LeakFinding::LeakedKeyFound as i32;
                assert_eq!(
                    found, revoked,
                    "a found key is revoked, an unknown one untouched"
                );
            } else {
                assert!(!revoked, "a refused report changes nothing");
            }
            code
        }
        "CreateWebhookEndpoint" => outcome(
            who.create_webhook_endpoint(&t, "https://hooks.example.com/made", &[])
                .await,
        ),
        "ListWebhookEndpoints" => outcome(who.list_webhook_endpoints(&t).await),
        "UpdateWebhookEndpoint" => {
            let mut e = fresh_endpoint(platform, &t).await;
            e.description = "renamed".into();
            outcome(who.update_webhook_endpoint(e, &["description"]).await)
        }
        "DeleteWebhookEndpoint" => {
            let e = fresh_endpoint(platform, &t).await;
            outcome(who.delete_webhook_endpoint(&e.id).await)
        }
        "RotateWebhookSecret" => {
            let e = fresh_endpoint(platform, &t).await;
            outcome(who.rotate_webhook_secret(&e.id).await)
        }
        "ListDeliveries" => outcome(
            who.list_deliveries(pb::ListDeliveriesRequest {
                tenant_id: t,
                ..Default::default()
            })
            .await,
        ),
        "RedeliverEvent" => {
            let e = fresh_endpoint(platform, &t).await;
            let key_id = fresh_key(platform, &t).await;
            let mut watch = platform
                .watch_events(pb::WatchEventsRequest {
                    tenant_id: t.clone(),
                    from_start: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut event_id = String::new();
            while let Some(ev) = watch.message().await.unwrap() {
                if ev.key_id == key_id {
                    event_id = ev.id;
                    break;
                }
            }
            outcome(who.redeliver_event(&event_id, &e.id).await)
        }
        "WatchEvents" => outcome(
            who.watch_events(pb::WatchEventsRequest {
                tenant_id: t,
                ..Default::default()
            })
            .await,
        ),
        other => panic!("the matrix has a row for {other} but this harness cannot call it"),
    }
}

/// A tenant admin's leak report acts on its own tenant's keys and on nothing else, and
/// learns no more about another tenant's key than about a made-up one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn report_leaked_keys_acts_only_on_keys_the_caller_may_write() {
    let Some(s) = TestServer::start(Db::Sqlite).await else {
        return;
    };
    let platform = s.admin().await;
    platform.tenant("own").upsert().await;
    platform.tenant("other").upsert().await;
    let (token, _) = admin_cli(
        &s.url,
        &["admin", "create", "--role", "admin", "--tenant", "own"],
    );
    let tenant_admin = platform.with_token(token.trim());
    let mine = platform.create_key(new_key("own").name("mine")).await;
    let theirs = platform.create_key(new_key("other").name("theirs")).await;
    let mut r = None;
    for _ in 0..80 {
        // The server picks up the new token within seconds.
        match tenant_admin
            .report_leaked_keys(&[&mine.secret, &theirs.secret], "https://x.test/1", "ci")
            .await
        {
            Ok(ok) => {
                r = Some(ok);
                break;
            }
            Err(e) if e.code() == Code::Unauthenticated => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let r = r.expect("the tenant admin's token was picked up");
    assert_eq!(r.results[0].finding, pb::LeakFinding::LeakedKeyFound as i32);
    assert_eq!(r.results[0].action, "revoked");
    assert_eq!(r.results[1].finding, pb::LeakFinding::Unknown as i32);
    assert!(r.results[1].key_id.is_empty() && r.results[1].tenant_id.is_empty());
    let state = |k: &pb::CreateKeyResponse| {
        let id = k.key.as_ref().unwrap().id.clone();
        let platform = &platform;
        async move { platform.get_key(&id).await.unwrap().state }
    };
    assert_eq!(state(&mine).await, pb::KeyState::Revoked as i32);
    assert_eq!(state(&theirs).await, pb::KeyState::Active as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_admin_authorization_matrix() {
    let rpcs = key_admin_rpcs();
    assert!(rpcs.len() >= 12, "descriptor set read: {rpcs:?}");
    for rpc in &rpcs {
        assert!(
            MATRIX.iter().any(|(name, _)| rpc_of(name) == rpc),
            "KeyAdmin/{rpc} has no row in the authorization matrix"
        );
    }
    for (name, _) in MATRIX {
        assert!(rpcs.contains(&rpc_of(name).to_string()), "stale row {name}");
    }

    let Some(s) = TestServer::start_with(Db::Sqlite, |c| c.events.deliver = false).await else {
        return;
    };
    let platform = s.admin().await;
    platform.tenant("own").upsert().await;
    platform.tenant("other").upsert().await;
    let api_key = platform
        .create_key(new_key("own").name("client"))
        .await
        .secret;

    let (viewer, _) = admin_cli(&s.url, &["admin", "create", "--role", "viewer"]);
    let (tenant_admin, made) = admin_cli(
        &s.url,
        &[
            "admin",
            "create",
            "--role",
            "admin",
            "--tenant",
            "own",
            "--description",
            "own ops",
        ],
    );
    let tenant_admin_id = made
        .split_whitespace()
        .find(|w| w.starts_with("adm_"))
        .expect("the token id is reported")
        .to_owned();
    let listed = admin_cli(&s.url, &["admin", "list"]).0;
    assert!(listed.contains(&tenant_admin_id) && listed.contains("own ops"));
    assert!(
        !listed.contains(tenant_admin.trim()) && !listed.contains(viewer.trim()),
        "admin list never shows a token"
    );
    let as_token = |t: &str| platform.with_token(t.trim());
    // The running server picks up tokens made by another process within seconds.
    let v = as_token(&viewer);
    let mut picked_up = false;
    for _ in 0..80 {
        if v.list_tenants(pb::ListTenantsRequest::default())
            .await
            .is_ok()
        {
            picked_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(picked_up, "the server did not pick up the new admin tokens");

    let wrong = "kgadm_0000000000000000000000000000000000000000";
    let mut failures = Vec::new();
    for (rpc, expected) in MATRIX {
        for (col, who) in WHO.iter().enumerate() {
            let (token, target) = match col {
                0 => ("", "own"),
                1 => (wrong, "own"),
                2 => (api_key.as_str(), "own"),
                3 => (viewer.as_str(), "own"),
                4 => (tenant_admin.as_str(), "own"),
                5 => (tenant_admin.as_str(), "other"),
                _ => (ADMIN_TOKEN, "other"),
            };
            let got = if token.is_empty() {
                // No authorization metadata at all.
                let bare = platform.with_token("");
                match rpc {
                    &"ListTenants" => {
                        outcome(bare.list_tenants(pb::ListTenantsRequest::default()).await)
                    }
                    _ => outcome(bare.get_tenant("own").await),
                }
            } else {
                let caller = as_token(token);
                call(rpc, &caller, &platform, &Target { tenant: target }).await
            };
            if got != expected[col] {
                failures.push(format!(
                    "{rpc} as {who}: got {got:?}, want {:?}",
                    expected[col]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "authorization matrix:\n{}",
        failures.join("\n")
    );

    // A tenant admin learns nothing about other tenants' keys, not even that they exist.
    let ta = as_token(&tenant_admin);
    let theirs = fresh_key(&platform, "other").await;
    for key_id in [theirs.as_str(), "key_doesnotexist0000"] {
        let e = ta.get_key(key_id).await.unwrap_err();
        assert_eq!(e.code(), PD);
        assert_eq!(e.message(), "this admin token may not do that");
    }
    let e = platform.get_key("key_doesnotexist0000").await.unwrap_err();
    assert_eq!(e.code(), NF, "a platform admin is told the truth");
    // It lists only its own tenant, and its writes are audited under its id.
    let listed = ta
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap();
    let ids: Vec<&str> = listed.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec!["own"]);
    let made = ta.create_key(new_key("own").name("by tenant admin")).await;
    let trail = platform
        .list_audit_events(pb::ListAuditEventsRequest {
            key_id: made.key.unwrap().id,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(trail.events[0].actor, tenant_admin_id);

    // Revoked with the CLI: the server stops accepting it within seconds.
    admin_cli(&s.url, &["admin", "revoke", &tenant_admin_id]);
    let mut refused = false;
    for _ in 0..80 {
        let r = ta.list_tenants(pb::ListTenantsRequest::default()).await;
        if r.as_ref().is_err_and(|s| s.code() == UA) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a revoked admin token kept working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorize_callers_must_present_the_authorize_token() {
    let token = "authorize-token-0123456789abcdef";
    let Some(s) = TestServer::start_with(Db::Sqlite, |cfg| {
        cfg.authorize_token = Some(token.to_owned().into());
    })
    .await
    else {
        return;
    };
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = a.create_key(new_key("t")).await.secret;
    let c = s.authorize().await;
    assert_eq!(outcome(c.try_check(check(&k)).await), UA, "no token");
    let with = |t: &str| c.with_token(t);
    assert_eq!(
        outcome(with("not-the-token-at-all-000").try_check(check(&k)).await),
        UA
    );
    assert_eq!(
        outcome(with(ADMIN_TOKEN).try_check(check(&k)).await),
        UA,
        "an admin token is not it"
    );
    let ok = with(token).check(check(&k)).await;
    assert_eq!(ok.reason, pb::Reason::Ok as i32);
    // ext_authz too (Envoy sends it via grpc_service.initial_metadata).
    let mut e =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            s.channel().await,
        );
    let req = || ext_authz(&[("x-api-key", &k)]);
    assert_eq!(e.check(req()).await.unwrap_err().code(), UA);
    let mut r = tonic::Request::new(req());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(e.check(r).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_messages_are_refused_before_any_work() {
    let Some(s) = TestServer::start_with(Db::Sqlite, |cfg| {
        cfg.limits.max_message_bytes = 4096;
    })
    .await
    else {
        return;
    };
    let c = s.authorize().await;
    let big = check("x").path("/".repeat(8192));
    let e = c.try_check(big).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // The connection and server are fine afterwards.
    let small = c.check(check("")).await;
    assert_eq!(small.reason, pb::Reason::MissingCredential as i32);
}

/// Key guessing from one address: after `failed_checks_per_ip` failures, that address may
/// still use keys verified in the cache and valid keys whose lookup id has not failed from
/// there, but made-up lookup ids and ones it keeps failing on are refused without a
/// verify; other addresses are unaffected. The caller is a trusted service (authorize
/// token), so its `client_ip` is believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_guessing_from_one_address_is_throttled() {
    let Some(s) = TestServer::start_with(Db::Sqlite, |cfg| {
        cfg.limits.failed_checks_per_ip = 5;
        cfg.authorize_token = Some(AUTHORIZE_TOKEN.to_owned().into());
    })
    .await
    else {
        return;
    };
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let known = a.create_key(new_key("t").name("known")).await.secret;
    let fresh = a.create_key(new_key("t").name("fresh")).await.secret;
    let c = s.authorize().await.with_token(AUTHORIZE_TOKEN);
    let from = |key: &str, ip: &str| check(key).ip(ip);
    let (guesser, neighbour) = ("198.51.100.9", "198.51.100.10");
    let ok = c.check(from(&known, guesser)).await;
    assert_eq!(ok.reason, pb::Reason::Ok as i32);
    // Wrong secrets under a real lookup id, with valid checksums: real guesses.
    let body = known.len() - 42;
    let forged = |lookup: &str, i: usize| {
        keygate::domain::key::assemble(&known[..body], lookup, &format!("{:0>24}", i))
    };
    let known_id = &known[body..body + 12];
    let fresh_id = &fresh[body..body + 12];
    for i in 0..5 {
        let r = c.check(from(&forged(known_id, i), guesser)).await;
        assert_eq!(r.reason, pb::Reason::KeyNotFound as i32);
    }
    let verifies = s.verify_count();
    // Throttled: a made-up lookup id, and the one it failed on, are refused unverified.
    for key in [forged("ZZZZZZZZZZZZ", 1), forged(known_id, 99)] {
        let r = c.check(from(&key, guesser)).await;
        assert_eq!(r.reason, pb::Reason::RateLimited as i32);
        assert_eq!(r.http_status, 429);
        let rl = r.rate_limit.unwrap();
        assert_eq!(rl.name, "failed_checks");
        assert!(rl.retry_after.is_some());
    }
    assert_eq!(
        s.verify_count(),
        verifies,
        "refused without an argon2 verify"
    );
    // The cached key still works from there, and so does a valid key not yet verified
    // (a guesser behind the same address does not lock it out); the neighbour is fine.
    let r = c.check(from(&known, guesser)).await;
    assert_eq!(r.reason, pb::Reason::Ok as i32);
    let r = c.check(from(&fresh, guesser)).await;
    assert_eq!(
        r.reason,
        pb::Reason::Ok as i32,
        "valid uncached key locked out"
    );
    let r = c.check(from(&forged(known_id, 7), neighbour)).await;
    assert_eq!(r.reason, pb::Reason::KeyNotFound as i32);
    // Guessing on another real lookup id from the throttled address: a few verifies, then
    // that id is refused too.
    for i in 0..3 {
        let r = c.check(from(&forged(fresh_id, i), guesser)).await;
        assert_eq!(r.reason, pb::Reason::KeyNotFound as i32);
    }
    let r = c.check(from(&forged(fresh_id, 3), guesser)).await;
    assert_eq!(r.reason, pb::Reason::RateLimited as i32);
    let m = s.metrics().await;
    assert_eq!(sample(&m, "keygate_failed_checks_throttled_total"), 3.0);
    // Two windows later the address may try again.
    s.clock.advance(Duration::from_secs(121));
    let r = c.check(from(&forged("ZZZZZZZZZZZZ", 2), guesser)).await;
    assert_eq!(r.reason, pb::Reason::KeyNotFound as i32);
}

const AUTHORIZE_TOKEN: &str = "test-authorize-token-0123456789";

/// From a caller that is not a trusted service, `client_ip` is the caller's word: failed
/// checks count against the connection's address, so rotating `client_ip` or leaving it
/// out does not escape the throttle, and naming someone else's address blames nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guess_throttle_counts_what_the_caller_cannot_choose() {
    let Some(s) = TestServer::start_with(Db::Sqlite, |cfg| {
        cfg.limits.failed_checks_per_ip = 5;
    })
    .await
    else {
        return;
    };
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let known = a.create_key(new_key("t")).await.secret;
    let c = s.authorize().await;
    let forged = |i: usize| {
        let head = &known[..known.len() - 30];
        keygate::domain::key::assemble(head, "", &format!("{:0>24}", i))
    };
    for i in 0..5 {
        // A new "client" every time, and once none at all.
        let req = if i == 4 {
            check(&forged(i))
        } else {
            check(&forged(i)).ip(&format!("203.0.113.{i}"))
        };
        assert_eq!(c.reason(req).await, pb::Reason::KeyNotFound);
    }
    for req in [check(&forged(9)).ip("198.51.100.200"), check(&forged(10))] {
        assert_eq!(c.reason(req).await, pb::Reason::RateLimited);
    }
}

/// ext_authz: the source address in Envoy's attributes is believed for the failed-check
/// throttle only from a trusted caller (authorize token). From anyone else who reaches the
/// port, naming a new address each time does not escape the throttle: failures count
/// against the connection's peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext_authz_source_addresses_are_believed_only_from_a_trusted_caller() {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as ext;
    for trusted in [false, true] {
        let Some(s) = TestServer::start_with(Db::Sqlite, |cfg| {
            cfg.limits.failed_checks_per_ip = 3;
            if trusted {
                cfg.authorize_token = Some(AUTHORIZE_TOKEN.to_owned().into());
            }
        })
        .await
        else {
            return;
        };
        let a = s.admin().await;
        a.tenant("t").upsert().await;
        let known = a.create_key(new_key("t")).await.secret;
        let body = known.len() - 42;
        let mut e = ext::authorization_client::AuthorizationClient::new(s.channel().await);
        let mut status_from = async |key: &str, ip: &str| {
            let mut req = ext_authz(&[("x-api-key", key)]);
            req.attributes.as_mut().unwrap().source = Some(ext::attribute_context::Peer {
                address: Some(core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: ip.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            });
            let mut req = tonic::Request::new(req);
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {AUTHORIZE_TOKEN}").parse().unwrap(),
            );
            let resp = e.check(req).await.unwrap().into_inner();
            match resp.http_response {
                Some(ext::check_response::HttpResponse::DeniedResponse(d)) => {
                    d.status.map(|s| s.code).unwrap_or_default()
                }
                _ => 200,
            }
        };
        for i in 0..3 {
            let made_up = keygate::domain::key::assemble(
                &known[..body],
                &format!("ZZZZZZZZZZZ{i}"),
                &"0".repeat(24),
            );
            assert_eq!(status_from(&made_up, &format!("203.0.113.{i}")).await, 401);
        }
        let made_up =
            keygate::domain::key::assemble(&known[..body], "YYYYYYYYYYYY", &"0".repeat(24));
        let next = status_from(&made_up, "203.0.113.200").await;
        if trusted {
            assert_eq!(
                next, 401,
                "a trusted Envoy's addresses are separate sources"
            );
        } else {
            assert_eq!(
                next, 429,
                "a new address named by an untrusted caller escaped"
            );
        }
    }
}

/// A `WatchEvents` stream ends once its admin token is revoked, and a server serves at
/// most `events.max_watchers` streams at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_streams_end_with_their_token_and_are_capped() {
    let Some(s) = TestServer::start_with(Db::Sqlite, |c| {
        c.events.deliver = false;
        c.events.poll_ms = 50;
        c.events.max_watchers = 2;
    })
    .await
    else {
        return;
    };
    let platform = s.admin().await;
    platform.tenant("own").upsert().await;
    let (token, made) = admin_cli(&s.url, &["admin", "create", "--role", "viewer"]);
    let id = made
        .split_whitespace()
        .find(|w| w.starts_with("adm_"))
        .expect("the token id is reported")
        .to_owned();
    let viewer = platform.with_token(token.trim());
    let watch = || pb::WatchEventsRequest {
        tenant_id: "own".into(),
        ..Default::default()
    };
    let mut stream = None;
    for _ in 0..80 {
        // The server picks up the new token within seconds.
        match viewer.watch_events(watch()).await {
            Ok(st) => {
                stream = Some(st);
                break;
            }
            Err(e) if e.code() == UA => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let mut stream = stream.expect("the viewer's token was picked up");
    // Two streams are open (the viewer's and this one); a third is refused.
    let _second = platform.watch_events(watch()).await.unwrap();
    let third = platform.watch_events(watch()).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    // Events flow to the viewer until its token is revoked; then the stream ends.
    platform.create_key(new_key("own").name("seen")).await;
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.r#type, "key.created");
    admin_cli(&s.url, &["admin", "revoke", &id]);
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended within the token refresh");
    let status = end.unwrap_err();
    assert_eq!(status.code(), UA, "{status:?}");
    // Its slot is free again.
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    platform.watch_events(watch()).await.unwrap();
}
