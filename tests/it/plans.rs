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

on_both_stores!(two_keys_exhaust_a_shared_limit_exactly);
