//! Metered calls through the real server: a check reserves an estimate, `Settle` spends the
//! real cost instead on every rate limit and quota the check touched, exactly once, on any
//! replica, across a SIGKILL; unsettled reservations expire at the reserved amount.
use crate::support::{
    check, limit, new_key, quota, spawn, Admin, CheckClient, Db, TestDb, TestServer, REDIS_URL,
};
use crate::{on_both_stores, server_or_skip};
use keygate::domain::UnixMillis;
use keygate::grpc::pb;
use pb::Reason;
use std::time::Duration;

/// A tenant whose keys have `per_minute` calls a minute and `monthly` units a month, and
/// one such key: its secret and id.
async fn metered_key(a: &Admin, per_minute: u64, monthly: u64, overdraft: u64) -> (String, String) {
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("minute", per_minute, 60)],
        default_key_quota: Some(quota(monthly, pb::QuotaPeriod::Month)),
        max_overdraft: overdraft,
        ..Default::default()
    };
    a.tenant("ai").policy(policy).upsert().await;
    let k = a.create_key(new_key("ai")).await;
    (k.secret, k.key.unwrap().id)
}

/// The key's reservation figures over the last day (a fixed range: the clock moves).
async fn reservation_usage(s: &TestServer, a: &Admin, key_id: &str) -> pb::ReservationUsage {
    let now = s.now();
    a.get_key_usage(pb::GetKeyUsageRequest {
        key_id: key_id.into(),
        granularity: pb::UsageGranularity::Total as i32,
        start_time: Some(keygate::grpc::convert::timestamp(UnixMillis(
            now.0 - 86_400_000,
        ))),
        end_time: Some(keygate::grpc::convert::timestamp(
            now.plus(Duration::from_secs(1)),
        )),
        ..Default::default()
    })
    .await
    .unwrap()
    .reservations
    .unwrap()
}

async fn reserve(c: &CheckClient, secret: &str, units: u64) -> pb::CheckResponse {
    c.check(check(secret).reserve(units)).await
}

/// The key's quota used and its minute limit's remaining, as a client would read them.
async fn figures(a: &Admin, c: &CheckClient, secret: &str, key_id: &str) -> (u64, u64) {
    let used = a
        .get_key(key_id)
        .await
        .unwrap()
        .quota_status
        .map_or(0, |q| q.used);
    let peek = c.check(check(secret).dry_run()).await;
    (used, peek.rate_limit.map_or(0, |l| l.remaining))
}

async fn settling_for_less_gives_the_difference_back(db: Db) {
    let s = server_or_skip!(db);
    let (a, c) = (s.admin().await, s.authorize().await);
    let (secret, key_id) = metered_key(&a, 1000, 10_000, 0).await;
    let r = reserve(&c, &secret, 100).await;
    assert_eq!(r.reason, Reason::Ok as i32);
    assert!(r.reservation_id.starts_with("rsv_"), "{}", r.reservation_id);
    assert_eq!(r.rate_limit.as_ref().unwrap().remaining, 900);
    // Held: counted as spent for every later check.
    assert_eq!(figures(&a, &c, &secret, &key_id).await, (100, 900));
    let settled = c.settle(&r.reservation_id, 30).await.unwrap();
    assert_eq!(
        (
            settled.reserved,
            settled.actual,
            settled.charged,
            settled.overage,
            settled.expired
        ),
        (100, 30, 30, 0, false)
    );
    assert_eq!(settled.key_id, key_id);
    assert_eq!(figures(&a, &c, &secret, &key_id).await, (30, 970));
    // Idempotent: a second Settle answers the first, whatever it says.
    let again = c.settle(&r.reservation_id, 999).await.unwrap();
    assert_eq!(again, settled);
    assert_eq!(figures(&a, &c, &secret, &key_id).await, (30, 970));
    // Settled for nothing: every unit back.
    let r = reserve(&c, &secret, 50).await;
    c.settle(&r.reservation_id, 0).await.unwrap();
    assert_eq!(figures(&a, &c, &secret, &key_id).await, (30, 970));
}

async fn settling_for_more_charges_up_to_the_quota_and_records_the_excess(db: Db) {
    let s = server_or_skip!(db);
    let (a, c) = (s.admin().await, s.authorize().await);
    let (secret, key_id) = metered_key(&a, 1000, 120, 0).await;
    let r = reserve(&c, &secret, 100).await;
    let settled = c.settle(&r.reservation_id, 150).await.unwrap();
    assert_eq!(
        (settled.actual, settled.charged, settled.overage),
        (150, 120, 30),
        "charged to the quota's limit, the rest recorded"
    );
    assert_eq!(figures(&a, &c, &secret, &key_id).await.0, 120);
    assert_eq!(c.reason(check(&secret)).await, Reason::QuotaExceeded);
    let rs = reservation_usage(&s, &a, &key_id).await;
    assert_eq!(
        (
            rs.reserved_units,
            rs.settled_units,
            rs.overage_units,
            rs.open_units,
            rs.expired_units
        ),
        (100, 120, 30, 0, 0)
    );

    // With an overdraft of 50, a tenant may go that far past its quota.
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("minute", 1000, 60)],
        default_key_quota: Some(quota(100, pb::QuotaPeriod::Month)),
        max_overdraft: 50,
        ..Default::default()
    };
    a.tenant("ai").policy(policy).upsert().await;
    let k = a.create_key(new_key("ai").name("second")).await;
    let r = reserve(&c, &k.secret, 80).await;
    let settled = c.settle(&r.reservation_id, 200).await.unwrap();
    assert_eq!((settled.charged, settled.overage), (150, 50));
}

async fn an_unsettled_reservation_expires_at_the_reserved_amount(db: Db) {
    let s = server_or_skip!(db);
    let (a, c) = (s.admin().await, s.authorize().await);
    let (secret, key_id) = metered_key(&a, 1000, 10_000, 0).await;
    let r = reserve(&c, &secret, 100).await;
    // The tenant's default reservation_ttl: 10 minutes.
    let t = a.get_tenant("ai").await.unwrap();
    assert_eq!(t.policy.unwrap().reservation_ttl.unwrap().seconds, 600);
    s.clock.advance(Duration::from_secs(601));
    let settled = c.settle(&r.reservation_id, 10).await.unwrap();
    assert!(settled.expired, "{settled:?}");
    assert_eq!((settled.actual, settled.charged), (100, 100));
    assert_eq!(figures(&a, &c, &secret, &key_id).await.0, 100);
    // The sweep settles the ones nobody asks about.
    let r2 = reserve(&c, &secret, 40).await;
    s.clock.advance(Duration::from_secs(601));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let usage = reservation_usage(&s, &a, &key_id).await;
        if usage.open_units == 0 {
            assert_eq!((usage.expired_units, usage.reserved_units), (140, 140));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never swept: {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.settle(&r2.reservation_id, 1).await.unwrap().expired);
}

async fn concurrent_reserves_never_admit_more_than_the_quota(db: Db) {
    let s = server_or_skip!(db);
    let (a, c) = (s.admin().await, s.authorize().await);
    let (secret, _) = metered_key(&a, 100_000, 100, 0).await;
    let calls = (0..30).map(|_| {
        let (c, secret) = (c.clone(), secret.clone());
        tokio::spawn(async move { reserve(&c, &secret, 10).await })
    });
    let mut ids = vec![];
    for call in calls {
        let r = call.await.unwrap();
        if r.reason == Reason::Ok as i32 {
            ids.push(r.reservation_id);
        } else {
            assert_eq!(r.reason, Reason::QuotaExceeded as i32);
            assert!(r.reservation_id.is_empty());
        }
    }
    assert_eq!(ids.len(), 10, "100 units, 10 per reservation");
    // Settling one for less makes room for exactly what came back.
    c.settle(&ids[0], 5).await.unwrap();
    assert_eq!(reserve(&c, &secret, 5).await.reason, Reason::Ok as i32);
    assert_eq!(
        reserve(&c, &secret, 1).await.reason,
        Reason::QuotaExceeded as i32
    );
}

async fn bad_reservations_and_settles_are_refused_by_name(db: Db) {
    let s = server_or_skip!(db);
    let (a, c) = (s.admin().await, s.authorize().await);
    let (secret, _) = metered_key(&a, 1000, 1000, 0).await;
    let (code, msg) = crate::support::code(c.try_check(check(&secret).reserve(5).dry_run()).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.starts_with("reserve:"), "{msg}");
    let (code, msg) = crate::support::code(c.settle("", 1).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.starts_with("reservation_id:"), "{msg}");
    let (code, _) = crate::support::code(c.settle("rsv_nosuchreservation00000", 1).await);
    assert_eq!(code, tonic::Code::NotFound);
    // A check without `reserve` carries no reservation.
    assert!(c.check(check(&secret)).await.reservation_id.is_empty());
    // A denied reservation holds nothing and has no id.
    let r = c.check(check(&secret).reserve(5000)).await;
    assert_eq!(r.reason, Reason::QuotaExceeded as i32);
    assert!(r.reservation_id.is_empty());
    let policy = pb::TenantPolicy {
        reservation_ttl: Some(prost_types::Duration {
            seconds: 2 * 86_400,
            nanos: 0,
        }),
        ..Default::default()
    };
    let (code, msg) = crate::support::code(a.tenant("ai").policy(policy).try_upsert().await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("tenant.policy.reservation_ttl"), "{msg}");
}

on_both_stores!(
    settling_for_less_gives_the_difference_back,
    settling_for_more_charges_up_to_the_quota_and_records_the_excess,
    an_unsettled_reservation_expires_at_the_reserved_amount,
    concurrent_reserves_never_admit_more_than_the_quota,
    bad_reservations_and_settles_are_refused_by_name,
);

/// Settle is authorized like Check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settle_needs_the_authorize_token_when_one_is_set() {
    let token = "authorize-token-0123456789abcdef";
    let s = server_or_skip!(Db::Sqlite, |cfg| cfg.authorize_token =
        Some(token.to_owned().into()));
    let a = s.admin().await;
    let (secret, _) = metered_key(&a, 1000, 1000, 0).await;
    let c = s.authorize().await;
    let trusted = c.with_token(token);
    let r = reserve(&trusted, &secret, 10).await;
    let (code, _) = crate::support::code(c.settle(&r.reservation_id, 1).await);
    assert_eq!(code, tonic::Code::Unauthenticated);
    assert_eq!(
        trusted.settle(&r.reservation_id, 1).await.unwrap().charged,
        1
    );
}

/// Reserved on replica A, settled on replica B: one PostgreSQL, one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_made_on_one_replica_is_settled_on_another() {
    let prefix = format!("kgtest:{}:reserve", std::process::id());
    let shared = |cfg: &mut keygate::config::Config| {
        cfg.rate_limiter = keygate::config::LimiterKind::Redis;
        cfg.redis.url = REDIS_URL.to_owned().into();
        cfg.redis.key_prefix = prefix.clone();
        cfg.redis.on_error = keygate::limiter::resilient::OnLimiterError::Deny;
    };
    let a = server_or_skip!(Db::Postgres, shared);
    let b = TestServer::start_replica(&a.url, shared).await;
    let admin = a.admin().await;
    let (secret, _) = metered_key(&admin, 100, 1000, 0).await;
    let (ca, cb) = (a.authorize().await, b.authorize().await);
    let r = reserve(&ca, &secret, 100).await;
    assert_eq!(r.reason, Reason::Ok as i32);
    // B sees the held units: the minute limit is full there too.
    assert_eq!(cb.reason(check(&secret)).await, Reason::RateLimited);
    let settled = cb.settle(&r.reservation_id, 10).await.unwrap();
    assert_eq!(settled.charged, 10);
    // 90 back everywhere: A admits 90, not 91.
    assert_eq!(ca.reason(check(&secret).cost(90)).await, Reason::Ok);
    assert_eq!(ca.reason(check(&secret)).await, Reason::RateLimited);
}

/// SIGKILL between reserve and settle loses nothing: the reservation is in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_survives_sigkill_of_the_server() {
    let Some(db) = TestDb::new(Db::Sqlite).await else {
        return;
    };
    let token = "reserve-kill-admin-token-0123456789";
    let env = [("KEYGATE_ADMIN_TOKEN", token)];
    let mut p = spawn(&db.url, &env, &[]).await;
    let a = p.admin(token).await;
    let (secret, key_id) = metered_key(&a, 1000, 1000, 0).await;
    let c = CheckClient::connect(&p.addr).await.unwrap();
    let r = reserve(&c, &secret, 100).await;
    assert_eq!(r.reason, Reason::Ok as i32);
    p.child.start_kill().unwrap();
    p.child.wait().await.unwrap();

    let p = spawn(&db.url, &env, &[]).await;
    let a = p.admin(token).await;
    let c = CheckClient::connect(&p.addr).await.unwrap();
    assert_eq!(
        a.get_key(&key_id).await.unwrap().quota_status.unwrap().used,
        100,
        "still held after the restart"
    );
    let settled = c.settle(&r.reservation_id, 25).await.unwrap();
    assert_eq!(settled.charged, 25);
    assert_eq!(
        a.get_key(&key_id).await.unwrap().quota_status.unwrap().used,
        25
    );
}
