//! Quotas and prepaid credits through the real server: exact spending, refill at the period
//! boundary in the tenant's time zone (injected clock), credits that never refill,
//! AdjustQuota in the audit trail, durability across restarts, and three replicas that
//! together never admit more than the quota. On both stores (and Redis for the replicas).
use crate::support::{
    check, config_for, limit, new_key, quota, Admin, CheckClient, Db, TestServer, REDIS_URL,
};
use crate::{on_both_stores, server_or_skip};
use keygate::domain::UnixMillis;
use keygate::grpc::pb;
use pb::adjust_quota_request::{Change, Target};
use pb::Reason;
use std::time::Duration;

fn at(rfc3339: &str) -> UnixMillis {
    UnixMillis(rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond())
}

/// Checks `key` `n` times; how many were allowed.
async fn admitted(c: &CheckClient, key: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if c.check(check(key)).await.reason == Reason::Ok as i32 {
            ok += 1;
        }
    }
    ok
}

async fn adjust(a: &Admin, target: Target, change: Change, reason: &str) -> pb::QuotaStatus {
    a.adjust_quota(pb::AdjustQuotaRequest {
        target: Some(target),
        change: Some(change),
        reason: reason.into(),
    })
    .await
    .unwrap()
}

fn secs(d: &prost_types::Duration) -> i64 {
    d.seconds
}

/// A daily key quota (the tenant's default for keys) in UTC: exact, reported on GetKey and
/// in the refusal, refilled at UTC midnight and not before.
async fn daily_quota_refills_at_utc_midnight(db: Db) {
    let s = server_or_skip!(db);
    s.clock.set(at("2026-03-10T12:00:00Z"));
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        default_key_quota: Some(quota(5, pb::QuotaPeriod::Day)),
        ..Default::default()
    };
    a.tenant("aws").policy(policy).upsert().await;
    let k = a.create_key(new_key("aws")).await;
    let (secret, id) = (k.secret, k.key.unwrap().id);
    let c = s.authorize().await;
    assert_eq!(admitted(&c, &secret, 8).await, 5);
    let r = c.check(check(&secret)).await;
    assert_eq!(r.reason, Reason::QuotaExceeded as i32);
    assert_eq!(r.http_status, 429);
    let q = r.quota.expect("the refusal carries the quota");
    assert_eq!((q.name.as_str(), q.limit), ("key", 5));
    assert_eq!(secs(q.retry_after.as_ref().unwrap()), 12 * 3600);
    assert_eq!(
        q.reset_time.unwrap().seconds * 1000,
        at("2026-03-11T00:00:00Z").0
    );
    assert!(r.rate_limit.is_none());
    let st = a.get_key(&id).await.unwrap().quota_status.unwrap();
    assert_eq!((st.used, st.remaining, st.limit), (5, 0, 5));
    assert_eq!(
        st.period_start.unwrap().seconds * 1000,
        at("2026-03-10T00:00:00Z").0
    );
    s.clock.set(at("2026-03-10T23:59:59Z"));
    assert_eq!(admitted(&c, &secret, 1).await, 0, "not before midnight");
    s.clock.set(at("2026-03-11T00:00:00Z"));
    assert_eq!(admitted(&c, &secret, 7).await, 5, "refilled at midnight");
    let listed = a
        .list_keys(pb::ListKeysRequest {
            tenant_id: "aws".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.keys[0].quota_status.as_ref().unwrap().remaining, 0);
    assert!(
        listed.keys[0].quota.is_none(),
        "the key has no quota of its own"
    );
}

/// A tenant-wide quota in Asia/Kolkata (UTC+05:30) refills at local midnight, 18:30 UTC;
/// the tenant chose 402 for an exhausted quota; two keys spend it together.
async fn tenant_quota_refills_at_local_midnight(db: Db) {
    let s = server_or_skip!(db);
    s.clock.set(at("2026-03-10T18:00:00Z"));
    let a = s.admin().await;
    let policy = pb::TenantPolicy {
        quota: Some(quota(3, pb::QuotaPeriod::Day)),
        time_zone: "Asia/Kolkata".into(),
        quota_exceeded_status: 402,
        ..Default::default()
    };
    a.tenant("in").policy(policy).upsert().await;
    let k1 = a.create_key(new_key("in").name("one")).await.secret;
    let k2 = a.create_key(new_key("in").name("two")).await.secret;
    let c = s.authorize().await;
    assert_eq!(admitted(&c, &k1, 2).await, 2);
    assert_eq!(admitted(&c, &k2, 2).await, 1, "one budget for both keys");
    let r = c.check(check(&k1)).await;
    assert_eq!(r.reason, Reason::QuotaExceeded as i32);
    assert_eq!(r.http_status, 402, "the tenant's choice");
    let q = r.quota.unwrap();
    assert_eq!(q.name, "tenant");
    assert_eq!(secs(q.retry_after.as_ref().unwrap()), 30 * 60);
    let t = a.get_tenant("in").await.unwrap();
    let st = t.quota_status.unwrap();
    assert_eq!((st.used, st.remaining), (3, 0));
    assert_eq!(
        st.period_start.unwrap().seconds * 1000,
        at("2026-03-09T18:30:00Z").0,
        "the local day began at 00:00 IST"
    );
    s.clock.set(at("2026-03-10T18:29:59Z"));
    assert_eq!(admitted(&c, &k2, 1).await, 0);
    s.clock.set(at("2026-03-10T18:30:00Z"));
    assert_eq!(admitted(&c, &k2, 4).await, 3, "refilled at local midnight");
    // A zone that does not exist is refused with its field named.
    let mars = pb::TenantPolicy {
        time_zone: "Mars/Olympus".into(),
        ..Default::default()
    };
    let e = a.tenant("in").policy(mars).try_upsert().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("time_zone"), "{}", e.message());
}

/// Prepaid credits never refill; AdjustQuota tops them up or sets them, is audited with
/// its reason and actor, and names what is wrong with a bad request.
async fn prepaid_credits_and_adjust_quota(db: Db) {
    let s = server_or_skip!(db);
    s.clock.set(at("2026-03-10T12:00:00Z"));
    let a = s.admin().await;
    a.tenant("unkey").upsert().await;
    let k = new_key("unkey")
        .name("credits")
        .quota(quota(2, pb::QuotaPeriod::Never));
    let k = a.create_key(k).await;
    let (secret, id) = (k.secret, k.key.unwrap().id);
    let c = s.authorize().await;
    assert_eq!(admitted(&c, &secret, 4).await, 2);
    let r = c.check(check(&secret)).await;
    assert_eq!(r.reason, Reason::QuotaExceeded as i32);
    assert!(
        r.quota.unwrap().retry_after.is_none(),
        "credits never refill"
    );
    s.clock.advance(Duration::from_secs(400 * 86_400));
    assert_eq!(admitted(&c, &secret, 1).await, 0, "not even a year later");
    let st = adjust(
        &a,
        Target::KeyId(id.clone()),
        Change::Delta(3),
        "bought 3 credits (invoice 42)",
    )
    .await;
    assert_eq!((st.remaining, st.name.as_str()), (3, "key"));
    assert!(st.reset_time.is_none());
    assert_eq!(
        admitted(&c, &secret, 5).await,
        3,
        "the top-up is seen at once"
    );
    let st = adjust(
        &a,
        Target::KeyId(id.clone()),
        Change::SetRemaining(1),
        "goodwill",
    )
    .await;
    assert_eq!(st.remaining, 1);
    assert_eq!(admitted(&c, &secret, 3).await, 1);
    let trail = a
        .list_audit_events(pb::ListAuditEventsRequest {
            tenant_id: "unkey".into(),
            key_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let adjustments: Vec<_> = trail
        .events
        .iter()
        .filter(|e| e.action == "adjust_quota")
        .collect();
    assert_eq!(adjustments.len(), 2, "{:?}", trail.events);
    assert!(adjustments
        .iter()
        .any(|e| e.detail.contains("delta +3") && e.detail.contains("invoice 42")));
    assert!(adjustments.iter().all(|e| e.actor == "env"));
    // Bad requests name their field.
    let bad =
        |target: Option<Target>, change: Option<Change>, reason: &str| pb::AdjustQuotaRequest {
            target,
            change,
            reason: reason.into(),
        };
    for (req, field) in [
        (bad(None, Some(Change::Delta(1)), "r"), "target"),
        (bad(Some(Target::KeyId(id.clone())), None, "r"), "change"),
        (
            bad(Some(Target::KeyId(id.clone())), Some(Change::Delta(1)), " "),
            "reason",
        ),
        (
            bad(Some(Target::KeyId(id.clone())), Some(Change::Delta(0)), "r"),
            "delta",
        ),
    ] {
        let e = a.adjust_quota(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    // A key without a quota, and a tenant without one, cannot be adjusted.
    let plain = a
        .create_key(new_key("unkey").name("plain"))
        .await
        .key
        .unwrap()
        .id;
    for target in [Target::KeyId(plain), Target::TenantId("unkey".into())] {
        let e = a
            .adjust_quota(bad(Some(target), Some(Change::Delta(1)), "r"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    }
    // A bad quota on a new key names its field.
    let e = a
        .try_create_key(new_key("unkey").name("bad").quota(pb::Quota {
            limit: 5,
            period: 0,
            refill_anchor: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("quota.period"), "{}", e.message());
}

/// A call refused by a rate limit spends no quota, and a call refused by a quota spends no
/// rate budget.
async fn a_denied_call_spends_nothing(db: Db) {
    let s = server_or_skip!(db);
    s.clock.set(at("2026-03-10T12:00:00Z"));
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = new_key("t")
        .name("rate-bound")
        .quota(quota(10, pb::QuotaPeriod::Day))
        .rate_limits([limit("minute", 2, 60)]);
    let k = a.create_key(k).await;
    let c = s.authorize().await;
    assert_eq!(admitted(&c, &k.secret, 6).await, 2);
    let st = a
        .get_key(&k.key.unwrap().id)
        .await
        .unwrap()
        .quota_status
        .unwrap();
    assert_eq!(
        (st.used, st.remaining),
        (2, 8),
        "rate-limited calls spent no quota"
    );

    let k = new_key("t")
        .name("quota-bound")
        .quota(quota(1, pb::QuotaPeriod::Day))
        .rate_limits([limit("minute", 5, 60)]);
    let k = a.create_key(k).await;
    let id = k.key.unwrap().id;
    assert_eq!(admitted(&c, &k.secret, 5).await, 1);
    adjust(&a, Target::KeyId(id), Change::Delta(100), "more").await;
    // 1 + 4 of the 5 per minute: the four quota refusals spent no rate budget.
    assert_eq!(admitted(&c, &k.secret, 6).await, 4);
    let r = c.check(check(&k.secret)).await;
    assert_eq!(r.reason, Reason::RateLimited as i32);
}

/// Spent quota survives a restart: a graceful stop gives leased units back, and the next
/// server continues from the stored counter.
async fn quota_survives_a_restart(db: Db) {
    let Some(mut s) = TestServer::start(db).await else {
        return;
    };
    let now = at("2026-03-10T12:00:00Z");
    s.clock.set(now);
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = a
        .create_key(new_key("t").quota(quota(5, pb::QuotaPeriod::Month)))
        .await;
    let c = s.authorize().await;
    assert_eq!(admitted(&c, &k.secret, 3).await, 3);
    let db = s.db.take().unwrap();
    let url = s.url.clone();
    s.stop().await.unwrap();
    let s = TestServer::start_on(db, config_for(&url)).await;
    s.clock.set(now);
    let c = s.authorize().await;
    assert_eq!(admitted(&c, &k.secret, 5).await, 2, "3 of 5 were spent");
}

on_both_stores!(
    daily_quota_refills_at_utc_midnight,
    tenant_quota_refills_at_local_midnight,
    prepaid_credits_and_adjust_quota,
    a_denied_call_spends_nothing,
    quota_survives_a_restart,
);

/// Three replicas on one PostgreSQL, with the Redis limiter, spend one quota: together they
/// never admit more than it, and units a replica leased come back (idle release) so that in
/// the end exactly the quota is admitted. A restart of every replica loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_never_exceed_the_quota() {
    let prefix = format!("kgtest-quota-{}", keygate::domain::key::random_base62(8));
    let shared = move |cfg: &mut keygate::config::Config| {
        cfg.rate_limiter = keygate::config::LimiterKind::Redis;
        cfg.redis.url = REDIS_URL.to_owned().into();
        cfg.redis.key_prefix = prefix.clone();
        cfg.quotas.idle_release_ms = 100;
        cfg.quotas.recheck_ms = 50;
    };
    let shared2 = shared.clone();
    let Some(mut a) = TestServer::start_with(Db::Postgres, shared.clone()).await else {
        return;
    };
    let b = TestServer::start_replica(&a.url, shared.clone()).await;
    let c = TestServer::start_replica(&a.url, shared.clone()).await;
    let now = at("2026-03-10T12:00:00Z");
    for s in [&a, &b, &c] {
        s.clock.set(now);
    }
    let admin = a.admin().await;
    let policy = pb::TenantPolicy {
        default_key_quota: Some(quota(100, pb::QuotaPeriod::Month)),
        ..Default::default()
    };
    admin.tenant("t").policy(policy).upsert().await;
    let k = admin.create_key(new_key("t")).await;
    let clients = [
        a.authorize().await,
        b.authorize().await,
        c.authorize().await,
    ];
    // Replica c takes a lease (an eighth of 100 = 12 units) and spends one of them.
    assert_eq!(admitted(&clients[2], &k.secret, 1).await, 1);
    let burst = |n: usize, replicas: usize| {
        let (clients, secret) = (&clients, &k.secret);
        let calls = (0..n).map(move |i| {
            let (cl, key) = (clients[i % replicas].clone(), secret.clone());
            tokio::spawn(async move { cl.check(check(&key)).await.reason })
        });
        async move {
            futures::future::join_all(calls)
                .await
                .into_iter()
                .filter(|r| *r.as_ref().unwrap() == Reason::Ok as i32)
                .count()
        }
    };
    // a and b together can only have what c does not hold.
    let first = 1 + burst(200, 2).await;
    assert!(
        first <= 100,
        "three replicas admitted {first} of a quota of 100"
    );
    assert!(
        first < 100,
        "c's lease ({first} admitted) was not held back"
    );
    // c goes idle: its unspent units go back to the database and a and b can spend them.
    // Keep going until nothing more is admitted: exactly the quota in all.
    let mut total = first;
    for _ in 0..20 {
        for s in [&a, &b, &c] {
            s.clock.advance(Duration::from_secs(1));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let more = burst(30, 2).await;
        total += more;
        assert!(total <= 100, "admitted {total} of 100");
        if more == 0 && total == 100 {
            break;
        }
    }
    assert_eq!(total, 100, "every unit of the quota was usable");
    // Every replica restarts: still nothing left.
    let db = a.db.take().unwrap();
    let url = a.url.clone();
    for s in [a, b, c] {
        s.stop().await.unwrap();
    }
    let mut cfg = config_for(&url);
    shared2(&mut cfg);
    let a = TestServer::start_on(db, cfg).await;
    a.clock.set(now);
    let cl = a.authorize().await;
    assert_eq!(admitted(&cl, &k.secret, 3).await, 0);
}
