//! Tenant-wide (plan) limits through the real server: every key of a tenant spends one
//! shared budget, in the same atomic step as its own limits. On both stores.
use crate::support::{check, limit, new_key, Admin, Db};
use crate::{on_both_stores, server_or_skip};
use keygate::grpc::pb;

async fn two_keys_exhaust_a_shared_limit_exactly(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("key-minute", 100, 60)],
        shared_rate_limits: vec![limit("plan-minute", 10, 60)],
        ..Default::default()
    };
    let t = a.tenant("nanonets").policy(policy).upsert().await;
    assert_eq!(t.policy.unwrap().shared_rate_limits[0].name, "plan-minute");
    let k1 = a.create_key(new_key("nanonets").name("one")).await.secret;
    let k2 = a.create_key(new_key("nanonets").name("two")).await.secret;
    let other = {
        a.tenant("other").upsert().await;
        a.create_key(new_key("other").name("x")).await.secret
    };
    let c = s.authorize().await;
    let mut admitted = 0;
    let mut refusal = None;
    for i in 0..20 {
        let key = if i % 2 == 0 { &k1 } else { &k2 };
        let r = c.check(check(key)).await;
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
    let r = c.check(check(&other)).await;
    assert_eq!(r.reason, pb::Reason::Ok as i32);
    // A bad shared limit is refused with its field named.
    let bad = pb::TenantPolicy {
        shared_rate_limits: vec![limit("", 10, 60)],
        ..Default::default()
    };
    let e = a
        .tenant("nanonets")
        .policy(bad)
        .try_upsert()
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
    let a = s.admin().await;
    let upsert_plan = |a: &Admin, catalogue: &[&str], n: u64| {
        let a = a.clone();
        let plan = pb::Plan {
            id: "starter".into(),
            display_name: "Starter".into(),
            shared_rate_limits: vec![limit("plan-minute", n, 60)],
            scope_catalogue: catalogue.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        };
        async move { a.upsert_plan(plan).await.unwrap() }
    };
    upsert_plan(&a, &["export:read"], 100).await;
    let policy = pb::TenantPolicy {
        plan_id: "starter".into(),
        scope_catalogue: vec!["export:read".into(), "export:write".into()],
        ..Default::default()
    };
    a.tenant("acme").policy(policy).upsert().await;
    let key = a
        .create_key(new_key("acme").scopes(["export:read", "export:write"]))
        .await
        .secret;
    let c = s.authorize().await;
    let needs = |scope: &str| check(&key).requires([scope]);
    // The Starter plan does not allow writing ("your plan does not allow the endpoint").
    let r = c.reason(needs("export:write")).await;
    assert_eq!(r, pb::Reason::InsufficientScope);
    let r = c.reason(needs("export:read")).await;
    assert_eq!(r, pb::Reason::Ok);
    // Upgrade the plan: the very next check sees it (cached tenant dropped).
    upsert_plan(&a, &["export:read", "export:write"], 100).await;
    let r = c.reason(needs("export:write")).await;
    assert_eq!(r, pb::Reason::Ok);
    // The plan's shared budget applies to the tenant's keys.
    upsert_plan(&a, &[], 3).await;
    let mut admitted = 0;
    for _ in 0..6 {
        if c.reason(check(&key)).await == pb::Reason::Ok {
            admitted += 1;
        }
    }
    // 2 calls spent before the downgrade + at most 1 more under the new budget of 3.
    assert_eq!(admitted, 1);
    let plans = a.list_plans().await.unwrap().plans;
    assert_eq!(plans.len(), 1);
    // A tenant cannot join a plan that does not exist.
    let platinum = pb::TenantPolicy {
        plan_id: "platinum".into(),
        ..Default::default()
    };
    let e = a
        .tenant("acme")
        .policy(platinum)
        .try_upsert()
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("plan_id"), "{}", e.message());
}

on_both_stores!(
    two_keys_exhaust_a_shared_limit_exactly,
    a_plan_change_applies_on_the_next_check
);
