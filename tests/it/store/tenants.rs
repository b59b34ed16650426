//! `TenantStore`: tenants and plans, upserted with their audit events.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::domain::quota::{QuotaPeriod, QuotaSpec};
use keygate::domain::ExpiryPolicy;

/// A policy with every field away from its default, so a round trip shows each survives.
fn rich_policy() -> TenantPolicy {
    TenantPolicy {
        key_prefix: "nxc_".into(),
        environments: vec!["live".into(), "test".into()],
        max_active_keys: 7,
        allowed_expiries: Some(ExpiryPolicy {
            durations: vec![
                Duration::from_secs(86_400),
                Duration::from_secs(30 * 86_400),
            ],
            allow_never: false,
        }),
        scope_catalogue: scopes(&["docs:read", "docs:write"]),
        default_scopes: scopes(&["docs:read"]),
        default_rate_limits: vec![per_minute("minute", 60)],
        scopes_from_method: true,
        shared_rate_limits: vec![per_minute("tenant-minute", 600)],
        plan_id: "pro".into(),
        quota: Some(QuotaSpec {
            limit: 10_000,
            period: QuotaPeriod::Month,
            refill_anchor: None,
        }),
        default_key_quota: Some(QuotaSpec {
            limit: 100,
            period: QuotaPeriod::Day,
            refill_anchor: Some(at(6 * 3_600_000)),
        }),
        time_zone: "Europe/Paris".into(),
        quota_exceeded_status: 402,
        on_leak: keygate::domain::leak::LeakAction::Notify,
        max_overdraft: 25,
        quota_alert_permille: 650,
        reservation_ttl: Duration::from_secs(120),
    }
}

async fn upsert_tenant_round_trips_and_keeps_create_time(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let first = tenant_with("acme", rich_policy());
    let stored = s
        .tenants
        .upsert_tenant(first.clone(), audit("upsert_tenant", "acme", ""))
        .await
        .unwrap();
    assert_eq!(stored, first, "what was written is returned");
    assert_eq!(s.tenants.get_tenant("acme").await.unwrap(), Some(first));

    // A later upsert replaces name, policy and update time; the creation time stays.
    let second = Tenant {
        id: "acme".into(),
        display_name: "Acme, renamed".into(),
        policy: TenantPolicy {
            max_active_keys: 3,
            ..Default::default()
        },
        create_time: at(5_000),
        update_time: at(5_000),
    };
    let stored = s
        .tenants
        .upsert_tenant(second.clone(), audit("upsert_tenant", "acme", ""))
        .await
        .unwrap();
    let expected = Tenant {
        create_time: T0,
        ..second
    };
    assert_eq!(stored, expected);
    assert_eq!(s.tenants.get_tenant("acme").await.unwrap(), Some(expected));
    assert_eq!(
        actions(&s, "acme").await,
        ["upsert_tenant", "upsert_tenant"]
    );
}

async fn an_unknown_tenant_or_plan_is_none(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    assert_eq!(s.tenants.get_tenant("acm").await.unwrap(), None);
    assert_eq!(s.tenants.get_tenant("ACME").await.unwrap(), None);
    assert_eq!(s.tenants.get_plan("pro").await.unwrap(), None);
    assert!(s.tenants.list_plans().await.unwrap().is_empty());
}

async fn list_tenants_pages_in_id_order_after_the_cursor(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    for id in ["delta", "alpha", "echo", "charlie", "bravo"] {
        seed_tenant(&s, id).await;
    }
    let ids = |page: Vec<Tenant>| page.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let page = |after: Option<&'static str>, limit| {
        let s = s.clone();
        async move { ids(s.tenants.list_tenants(after, limit).await.unwrap()) }
    };
    assert_eq!(page(None, 2).await, ["alpha", "bravo"]);
    assert_eq!(page(Some("bravo"), 2).await, ["charlie", "delta"]);
    assert_eq!(page(Some("delta"), 2).await, ["echo"]);
    assert!(page(Some("echo"), 2).await.is_empty());
    // The cursor need not be a stored id: paging resumes after it in id order.
    assert_eq!(page(Some("c"), 10).await, ["charlie", "delta", "echo"]);
    assert_eq!(page(None, 10).await.len(), 5);
    // The first tenant's full record comes back, not only its id.
    let first = s.tenants.list_tenants(None, 1).await.unwrap();
    assert_eq!(first, [tenant("alpha")]);
}

async fn plans_upsert_keeps_create_time_and_list_in_id_order(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    for id in ["team", "basic", "pro"] {
        let stored = s
            .tenants
            .upsert_plan(plan(id), audit("upsert_plan", "", ""))
            .await
            .unwrap();
        assert_eq!(stored, plan(id));
    }
    let changed = Plan {
        display_name: "Pro, cheaper".into(),
        limits: PlanLimits {
            default_rate_limits: vec![per_minute("key-minute", 10)],
            scope_catalogue: scopes(&["docs:*"]),
            ..Default::default()
        },
        create_time: at(9_000),
        update_time: at(9_000),
        ..plan("pro")
    };
    let stored = s
        .tenants
        .upsert_plan(changed.clone(), audit("upsert_plan", "", ""))
        .await
        .unwrap();
    let expected = Plan {
        create_time: T0,
        ..changed
    };
    assert_eq!(stored, expected);
    assert_eq!(s.tenants.get_plan("pro").await.unwrap(), Some(expected));
    let ids: Vec<String> = s
        .tenants
        .list_plans()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["basic", "pro", "team"]);
    // Plans belong to no tenant: their four events are under the empty tenant id.
    assert_eq!(actions(&s, "").await, ["upsert_plan"; 4]);
}

/// No change without its event: when the audit event cannot be stored (its id is taken),
/// the upsert does not happen either.
async fn an_upsert_whose_event_fails_changes_nothing(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let event = audit("upsert_tenant", "acme", "");
    s.tenants
        .upsert_tenant(tenant("acme"), event.clone())
        .await
        .unwrap();
    let renamed = Tenant {
        display_name: "renamed".into(),
        ..tenant("acme")
    };
    assert!(s
        .tenants
        .upsert_tenant(renamed, event.clone())
        .await
        .is_err());
    assert!(s
        .tenants
        .upsert_tenant(tenant("fresh"), event.clone())
        .await
        .is_err());
    assert_eq!(
        s.tenants.get_tenant("acme").await.unwrap(),
        Some(tenant("acme"))
    );
    assert_eq!(s.tenants.get_tenant("fresh").await.unwrap(), None);
    assert_eq!(events(&s, "acme").await, std::slice::from_ref(&event));

    assert!(s.tenants.upsert_plan(plan("pro"), event).await.is_err());
    assert_eq!(s.tenants.get_plan("pro").await.unwrap(), None);
}

on_both_stores!(
    upsert_tenant_round_trips_and_keeps_create_time,
    an_unknown_tenant_or_plan_is_none,
    list_tenants_pages_in_id_order_after_the_cursor,
    plans_upsert_keeps_create_time_and_list_in_id_order,
    an_upsert_whose_event_fails_changes_nothing,
);
