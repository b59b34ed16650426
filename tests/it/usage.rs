//! Usage analytics: exact counts after a flush, by endpoint template and reason; ListKeys
//! with all-time and today's counts in one call; no count lost on SIGTERM or while the
//! store is down; retention. On SQLite and PostgreSQL.
use crate::support::{
    check, code, limit, new_key, sample, spawn, CheckClient, CheckSpec, Db, TestDb, TestServer,
};
use crate::{on_both_stores, server_or_skip};
use keygate::config::Config;
use keygate::domain::usage::RouteConfig;
use keygate::grpc::pb::{self, UsageGranularity};
use std::time::Duration;
use tonic::Code;

fn routes(cfg: &mut Config) {
    cfg.usage.routes = vec![
        RouteConfig {
            method: Some("GET".into()),
            path: "/orders/{id}".into(),
            name: None,
        },
        RouteConfig {
            method: None,
            path: "/files/{*rest}".into(),
            name: Some("files".into()),
        },
    ];
}

fn call(key: &str, method: &str, path: &str) -> CheckSpec {
    check(key).method(method).path(path)
}

fn usage_req(key_id: &str, g: UsageGranularity, by_endpoint: bool) -> pb::GetKeyUsageRequest {
    pb::GetKeyUsageRequest {
        key_id: key_id.into(),
        granularity: g as i32,
        group_by_endpoint: by_endpoint,
        ..Default::default()
    }
}

fn counts(r: &pb::UsageReport) -> &pb::UsageCounts {
    r.totals.as_ref().unwrap()
}

async fn counts_are_exact_after_a_flush(db: Db) {
    let s = server_or_skip!(db, routes);
    // Noon UTC: the minute steps below never cross into another day.
    let today = keygate::domain::usage::day_of(s.now());
    s.clock.set(today.plus(Duration::from_secs(12 * 3600)));
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        scope_catalogue: vec!["orders:read".into(), "admin".into()],
        default_scopes: vec!["orders:read".into()],
        ..Default::default()
    };
    a.tenant("shop").policy(policy).upsert().await;
    let k = a
        .create_key(new_key("shop").rate_limits([limit("minute", 8, 60)]))
        .await;
    let other = a.create_key(new_key("shop").name("other")).await;
    let id = k.key.as_ref().unwrap().id.clone();
    let c = s.authorize().await;

    // 8 budget: four GETs of an order, one costing 2, two uploads: 7 allowed calls.
    for i in 0..4 {
        assert_eq!(
            c.reason(call(&k.secret, "GET", &format!("/orders/{i}?expand=1")))
                .await,
            pb::Reason::Ok
        );
    }
    let costly = call(&k.secret, "GET", "/orders/9").cost(2);
    assert_eq!(c.reason(costly).await, pb::Reason::Ok);
    for p in ["/files/a.txt", "/files/dir/b.txt"] {
        assert_eq!(c.reason(call(&k.secret, "PUT", p)).await, pb::Reason::Ok);
    }
    // Budget spent: three rate-limit hits; two scope denials (spend nothing).
    for _ in 0..3 {
        assert_eq!(
            c.reason(call(&k.secret, "GET", "/orders/1")).await,
            pb::Reason::RateLimited
        );
    }
    for _ in 0..2 {
        let r = call(&k.secret, "DELETE", "/nowhere/7").requires(["admin"]);
        assert_eq!(c.reason(r).await, pb::Reason::InsufficientScope);
    }
    // Not counted: a dry run, and a call whose key is unknown.
    let dry = call(&k.secret, "GET", "/orders/1").dry_run();
    c.reason(dry).await;
    c.reason(check("nope_live_0000")).await;
    // The other key: one call with no path at all.
    assert_eq!(c.reason(check(&other.secret)).await, pb::Reason::Ok);

    // Nothing is visible before the flush, everything after it.
    let before = a
        .get_key_usage(usage_req(&id, UsageGranularity::Total, false))
        .await
        .unwrap();
    assert_eq!(counts(&before).total, 0);
    s.flush_usage().await.unwrap();

    let r = a
        .get_key_usage(usage_req(&id, UsageGranularity::Total, true))
        .await
        .unwrap();
    let t = counts(&r);
    assert_eq!(
        (t.total, t.allowed, t.denied, t.rate_limited, t.cost),
        (12, 7, 5, 3, 8)
    );
    assert_eq!(t.denied_by_reason.get("INSUFFICIENT_SCOPE"), Some(&2));
    assert!((t.denial_rate - 5.0 / 12.0).abs() < 1e-9);
    let by: Vec<(&str, u64, u64)> = r
        .points
        .iter()
        .map(|p| {
            let c = p.counts.as_ref().unwrap();
            (p.endpoint.as_str(), c.allowed, c.denied)
        })
        .collect();
    assert_eq!(
        by,
        vec![("GET /orders/{id}", 5, 3), ("files", 2, 0), ("other", 0, 2)]
    );

    // Minute buckets: all of it in this minute; 90 s later (half the window
    // refilled), a second point.
    s.clock.advance(Duration::from_secs(90));
    assert_eq!(
        c.reason(call(&k.secret, "GET", "/orders/1")).await,
        pb::Reason::Ok
    );
    s.flush_usage().await.unwrap();
    let m = a
        .get_key_usage(usage_req(&id, UsageGranularity::Minute, false))
        .await
        .unwrap();
    let per_minute: Vec<u64> = m
        .points
        .iter()
        .map(|p| p.counts.as_ref().unwrap().total)
        .collect();
    assert_eq!(per_minute, vec![12, 1], "flushes add up, never replace");

    // ListKeys: all-time and today's count and last use for every key, in one call.
    let list = a
        .list_keys(pb::ListKeysRequest {
            tenant_id: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let row = |name: &str| list.keys.iter().find(|k| k.name == name).unwrap().clone();
    assert_eq!((row("k").use_count, row("k").uses_today), (13, 13));
    assert_eq!((row("other").use_count, row("other").uses_today), (1, 1));
    assert!(row("k").last_used_time.is_some());
    let got = a.get_key(&id).await.unwrap();
    assert_eq!((got.use_count, got.uses_today), (13, 13));

    // The tenant: both keys summed; the path-less call counts under "".
    let tr = a
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: "shop".into(),
            granularity: UsageGranularity::Day as i32,
            group_by_endpoint: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(counts(&tr).total, 14);
    assert!(tr
        .points
        .iter()
        .any(|p| p.endpoint.is_empty() && p.counts.as_ref().unwrap().allowed == 1));

    // Tomorrow (UTC), today's count starts again; the all-time count stays.
    s.clock.advance(Duration::from_secs(86_400));
    let got = a.get_key(&id).await.unwrap();
    assert_eq!((got.use_count, got.uses_today), (13, 0));
}

async fn usage_requests_are_validated(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = a.create_key(new_key("t")).await;
    let id = k.key.unwrap().id;
    let (c, _) = code(
        a.get_key_usage(usage_req("key_missing", UsageGranularity::Day, false))
            .await,
    );
    assert_eq!(c, Code::NotFound);
    let mut bad = usage_req(&id, UsageGranularity::Day, false);
    bad.granularity = 42;
    let (c, m) = code(a.get_key_usage(bad).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("granularity"), "{m}");
    let mut backwards = usage_req(&id, UsageGranularity::Day, false);
    backwards.start_time = Some(prost_types::Timestamp {
        seconds: 2_000_000_000,
        nanos: 0,
    });
    backwards.end_time = Some(prost_types::Timestamp {
        seconds: 1_000_000_000,
        nanos: 0,
    });
    let (c, m) = code(a.get_key_usage(backwards).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("start_time"), "{m}");
    let mut long = usage_req(&id, UsageGranularity::Minute, false);
    long.start_time = Some(prost_types::Timestamp {
        seconds: 1_000_000_000,
        nanos: 0,
    });
    let (c, m) = code(a.get_key_usage(long).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("end_time"), "{m}");
    let (c, _) = code(
        a.get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: "ghost".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::NotFound);
    let (c, m) = code(
        a.get_tenant_usage(pb::GetTenantUsageRequest {
            tenant_id: "Bad Id!".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("tenant_id"), "{m}");
}

async fn old_buckets_are_pruned(db: Db) {
    let s = server_or_skip!(db);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = a.create_key(new_key("t")).await;
    let id = k.key.unwrap().id;
    let c = s.authorize().await;
    c.reason(check(&k.secret)).await;
    s.flush_usage().await.unwrap();
    let prune = |now| {
        s.prune_usage(
            now,
            Duration::from_secs(3600),
            Duration::from_secs(2 * 86_400),
        )
    };
    assert_eq!(
        prune(s.now()).await.unwrap(),
        0,
        "nothing is past retention yet"
    );
    // Two hours on: the minute bucket goes, the day bucket stays.
    assert_eq!(
        prune(s.now().plus(Duration::from_secs(7200)))
            .await
            .unwrap(),
        1
    );
    // Three days on: the day bucket goes too; the all-time count stays on the key.
    assert_eq!(
        prune(s.now().plus(Duration::from_secs(3 * 86_400)))
            .await
            .unwrap(),
        1
    );
    let got = a.get_key(&id).await.unwrap();
    assert_eq!(got.use_count, 1);
}

on_both_stores!(
    counts_are_exact_after_a_flush,
    usage_requests_are_validated,
    old_buckets_are_pruned
);

/// The store goes away during a flush: the counts stay buffered (bounded), the failure is
/// counted, and they arrive, exactly, once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_survive_a_store_outage_during_a_flush() {
    // Only this test's explicit flushes write.
    let explicit_flushes = |cfg: &mut Config| cfg.usage.flush_ms = 3_600_000;
    let Some((s, proxy)) = TestServer::start_behind_proxy(explicit_flushes).await else {
        return;
    };
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = a.create_key(new_key("t")).await;
    let id = k.key.unwrap().id;
    let c = s.authorize().await;
    for _ in 0..25 {
        assert_eq!(c.reason(check(&k.secret)).await, pb::Reason::Ok);
    }
    proxy.cut();
    assert!(
        s.flush_usage().await.is_err(),
        "the flush cannot reach the store"
    );
    // Cached key: checks keep working and keep counting meanwhile.
    for _ in 0..5 {
        assert_eq!(c.reason(check(&k.secret)).await, pb::Reason::Ok);
    }
    assert!(s.buffered_usage_rows() > 0);
    let m = s.metrics().await;
    assert_eq!(sample(&m, "keygate_usage_flush_failures_total"), 1.0);
    assert_eq!(sample(&m, "keygate_usage_dropped_total"), 0.0);
    assert!(sample(&m, "keygate_usage_flush_lag_seconds") >= 0.0);
    proxy.restore();
    let mut flushed = false;
    for _ in 0..50 {
        if s.flush_usage().await.is_ok() {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flushed, "the flush succeeds once the store is back");
    let r = a
        .get_key_usage(usage_req(&id, UsageGranularity::Total, false))
        .await
        .unwrap();
    assert_eq!(counts(&r).allowed, 30);
    assert_eq!(s.buffered_usage_rows(), 0);
}

/// SIGTERM mid-load: every check the clients saw answered is in the usage after a
/// restart, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_counted_is_lost_on_sigterm() {
    let Some(db) = TestDb::new(Db::Sqlite).await else {
        return;
    };
    let token = "usage-sigterm-admin-token-0123456789";
    // A flush interval far longer than the test: only the shutdown flush writes.
    let env = [
        ("KEYGATE_ADMIN_TOKEN", token),
        ("KEYGATE_USAGE__FLUSH_MS", "3600000"),
    ];
    let mut p = spawn(&db.url, &env, &[]).await;
    let a = p.admin(token).await;
    a.tenant("t").upsert().await;
    let k = a.create_key(new_key("t")).await;
    let id = k.key.unwrap().id;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (addr, secret, answered) = (p.addr.clone(), k.secret.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            let Ok(c) = CheckClient::connect(&addr).await else {
                return;
            };
            while let Ok(r) = c.try_check(check(&secret)).await {
                assert_eq!(r.reason, pb::Reason::Ok as i32);
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = p.child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), p.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "graceful exit: {status}\n{}", p.output());
    for l in load {
        l.await.unwrap();
    }
    let seen = answered.load(std::sync::atomic::Ordering::SeqCst);

    let p2 = spawn(&db.url, &env, &[]).await;
    let a2 = p2.admin(token).await;
    let got = a2.get_key(&id).await.unwrap();
    assert_eq!(got.use_count, seen, "every answered check counted once");
    let r = a2
        .get_key_usage(usage_req(&id, UsageGranularity::Total, false))
        .await
        .unwrap();
    assert_eq!(counts(&r).allowed, seen);
}
