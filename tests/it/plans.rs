//! Tenant-wide (plan) limits through the real server: every key of a tenant spends one
//! shared budget, in the same atomic step as its own limits. On both stores.
use crate::check::check_req;
use crate::key_admin::{create, key_req, tenant};
use crate::support::Db;
use crate::{on_both_stores, server_or_skip};
use keygate::grpc::pb;

fn per_minute(name: &str, limit: u64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.into(),
        limit,
        window: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
    }
}

async fn two_keys_exhaust_a_shared_limit_exactly(db: Db) {
    let s = server_or_skip!(db);
    let mut a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![per_minute("key-minute", 100)],
        shared_rate_limits: vec![per_minute("plan-minute", 10)],
        ..Default::default()
    };
    let t = tenant(&mut a, "nanonets", policy).await;
    assert_eq!(t.policy.unwrap().shared_rate_limits[0].name, "plan-minute");
    let k1 = create(&mut a, key_req("nanonets", "one")).await.secret;
    let k2 = create(&mut a, key_req("nanonets", "two")).await.secret;
    let other = {
        tenant(&mut a, "other", pb::TenantPolicy::default()).await;
        create(&mut a, key_req("other", "x")).await.secret
    };
    let mut c = s.authorize().await;
    let mut admitted = 0;
    let mut refusal = None;
    for i in 0..20 {
        let key = if i % 2 == 0 { &k1 } else { &k2 };
        let r = c.check(check_req(key)).await.unwrap().into_inner();
        if r.reason == pb::Reason::Ok as i32 {
            admitted += 1;
        } else {
            refusal.get_or_insert(r);
        }
    }
    assert_eq!(admitted, 10, "the plan's 10 per minute, across both keys");
    let r = refusal.unwrap();
    assert_eq!(r.reason, pb::Reason::RateLimited as i32);
    assert_eq!(r.http_status, 429);
    let rl = r.rate_limit.unwrap();
    assert_eq!(rl.name, "plan-minute", "the binding limit is named");
    assert!(rl.retry_after.is_some());
    // Another tenant's keys are not affected.
    let r = c.check(check_req(&other)).await.unwrap().into_inner();
    assert_eq!(r.reason, pb::Reason::Ok as i32);
    // A bad shared limit is refused with its field named.
    let bad = pb::TenantPolicy {
        shared_rate_limits: vec![per_minute("", 10)],
        ..Default::default()
    };
    let e = a
        .client
        .upsert_tenant(a.req(pb::UpsertTenantRequest {
            tenant: Some(pb::Tenant {
                id: "nanonets".into(),
                display_name: "n".into(),
                policy: Some(bad),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("shared_rate_limits"),
        "{}",
        e.message()
    );
}

/// A plan template sets the scope ceiling and the shared budget of every tenant on it; a
/// change to the plan applies on the tenant's next check.
async fn a_plan_change_applies_on_the_next_check(db: Db) {
    let s = server_or_skip!(db);
    let mut a = s.admin().await;
    let upsert_plan = |a: &mut crate::support::Admin, catalogue: &[&str], limit: u64| {
        let mut a = a.clone();
        let plan = pb::Plan {
            id: "starter".into(),
            display_name: "Starter".into(),
            shared_rate_limits: vec![per_minute("plan-minute", limit)],
            scope_catalogue: catalogue.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        async move {
            a.client
                .upsert_plan(a.req(pb::UpsertPlanRequest { plan: Some(plan) }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    upsert_plan(&mut a, &["export:read"], 100).await;
    let policy = pb::TenantPolicy {
        plan_id: "starter".into(),
        scope_catalogue: vec!["export:read".into(), "export:write".into()],
        ..Default::default()
    };
    tenant(&mut a, "acme", policy).await;
    let key = create(
        &mut a,
        pb::CreateKeyRequest {
            scopes: vec!["export:read".into(), "export:write".into()],
            ..key_req("acme", "k")
        },
    )
    .await
    .secret;
    let mut c = s.authorize().await;
    let needs = |scope: &str| pb::CheckRequest {
        required_scopes: vec![scope.into()],
        ..check_req(&key)
    };
    let reason = |r: pb::CheckResponse| pb::Reason::try_from(r.reason).unwrap();
    // The Starter plan does not allow writing ("your plan does not allow the endpoint").
    let r = c.check(needs("export:write")).await.unwrap().into_inner();
    assert_eq!(reason(r), pb::Reason::InsufficientScope);
    let r = c.check(needs("export:read")).await.unwrap().into_inner();
    assert_eq!(reason(r), pb::Reason::Ok);
    // Upgrade the plan: the very next check sees it (cached tenant dropped).
    upsert_plan(&mut a, &["export:read", "export:write"], 100).await;
    let r = c.check(needs("export:write")).await.unwrap().into_inner();
    assert_eq!(reason(r), pb::Reason::Ok);
    // The plan's shared budget applies to the tenant's keys.
    upsert_plan(&mut a, &[], 3).await;
    let mut admitted = 0;
    for _ in 0..6 {
        if reason(c.check(check_req(&key)).await.unwrap().into_inner()) == pb::Reason::Ok {
            admitted += 1;
        }
    }
    // 2 calls spent before the downgrade + at most 1 more under the new budget of 3.
    assert_eq!(admitted, 1);
    let plans = a
        .client
        .list_plans(a.req(pb::ListPlansRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .plans;
    assert_eq!(plans.len(), 1);
    // A tenant cannot join a plan that does not exist.
    let e = a
        .client
        .upsert_tenant(a.req(pb::UpsertTenantRequest {
            tenant: Some(pb::Tenant {
                id: "acme".into(),
                display_name: "acme".into(),
                policy: Some(pb::TenantPolicy {
                    plan_id: "platinum".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("plan_id"), "{}", e.message());
}

on_both_stores!(
    two_keys_exhaust_a_shared_limit_exactly,
    a_plan_change_applies_on_the_next_check
);
