//! Several replicas on one PostgreSQL database and one Redis: one shared rate budget, and
//! KeyAdmin changes on one replica reaching the others' caches within a second.
use crate::server_or_skip;
use crate::support::redis_server::RedisServer;
use crate::support::{check, limit, new_key, CheckClient, CheckSpec, Db, TestServer, REDIS_URL};
use keygate::config::LimiterKind;
use keygate::grpc::pb::{self, Reason};
use keygate::limiter::resilient::OnLimiterError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "kgtest:{}:replicas{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Polls `c` until the check gives `want`; returns how long that took.
async fn until(c: &CheckClient, req: CheckSpec, want: Reason) -> Duration {
    let start = Instant::now();
    loop {
        if c.reason(req.clone()).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never saw {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_replica_reach_the_others_within_a_second() {
    let a = server_or_skip!(Db::Postgres);
    let b = TestServer::start_replica(&a.url, |_| {}).await;
    let admin = a.admin().await;
    let cb = b.authorize().await;
    admin.tenant("t").upsert().await;
    let k = admin.create_key(new_key("t")).await;
    let key = k.key.clone().unwrap();
    let need = |scope: &str| check(&k.secret).requires([scope]);
    // Warm B's cache.
    assert_eq!(cb.reason(check(&k.secret)).await, Reason::Ok);

    let mut report = vec![];
    let mut patch = key.clone();
    patch.scopes = vec!["read".into()];
    admin.update_key(patch.clone(), &["scopes"]).await.unwrap();
    report.push(("scopes", until(&cb, need("read"), Reason::Ok).await));
    patch.ip_allowlist = vec!["10.0.0.0/8".into()];
    admin
        .update_key(patch.clone(), &["ip_allowlist"])
        .await
        .unwrap();
    report.push((
        "ip_allowlist",
        until(&cb, check(&k.secret), Reason::IpNotAllowed).await,
    ));
    patch.enabled = false;
    admin.update_key(patch, &["enabled"]).await.unwrap();
    report.push((
        "disable",
        until(&cb, check(&k.secret), Reason::KeyDisabled).await,
    ));
    admin.revoke_key(&key.id, "").await.unwrap();
    report.push((
        "revoke",
        until(&cb, check(&k.secret), Reason::KeyRevoked).await,
    ));

    // A tenant policy change (scope catalogue) reaches B's tenant cache too.
    let k2 = admin
        .create_key(new_key("t").name("k2").scopes(["export"]))
        .await;
    let need2 = check(&k2.secret).requires(["export"]);
    assert_eq!(cb.reason(need2.clone()).await, Reason::Ok);
    let read_only = pb::TenantPolicy {
        scope_catalogue: vec!["read".into()],
        ..Default::default()
    };
    admin.tenant("t").policy(read_only).upsert().await;
    report.push((
        "tenant policy",
        until(&cb, need2, Reason::InsufficientScope).await,
    ));

    // B measured the same propagation in its metrics.
    let text = b.metrics().await;
    let seen: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("keygate_change_propagation_seconds_count "))
        .expect("propagation histogram exported")
        .trim()
        .parse()
        .unwrap();
    assert!(seen >= 5.0, "B observed the announced changes: {seen}");
    for (what, delay) in &report {
        eprintln!("propagation of {what} to another replica: {delay:?}");
        assert!(*delay < Duration::from_secs(1), "{what} took {delay:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_budget_on_redis() {
    let prefix = unique_prefix();
    let shared = |cfg: &mut keygate::config::Config| {
        cfg.rate_limiter = LimiterKind::Redis;
        cfg.redis.url = REDIS_URL.to_owned().into();
        cfg.redis.key_prefix = prefix.clone();
        cfg.redis.timeout_ms = 2000;
        cfg.redis.on_error = OnLimiterError::Deny;
    };
    let a = server_or_skip!(Db::Postgres, shared);
    let b = TestServer::start_replica(&a.url, shared).await;
    let c = TestServer::start_replica(&a.url, shared).await;
    let admin = a.admin().await;
    admin.tenant("t").upsert().await;
    let k = admin
        .create_key(new_key("t").rate_limits([limit("shared", 100, 60)]))
        .await;
    let clients = [
        a.authorize().await,
        b.authorize().await,
        c.authorize().await,
    ];
    // Warm every replica's key cache so the burst below is all rate-limit decisions.
    for cl in &clients {
        assert_eq!(cl.reason(check(&k.secret).dry_run()).await, Reason::Ok);
    }
    let calls = (0..300).map(|i| {
        let (cl, key) = (clients[i % 3].clone(), k.secret.clone());
        tokio::spawn(async move { cl.check(check(&key)).await.reason })
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
    assert_eq!(
        (allowed, limited),
        (100, 200),
        "one budget across three replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_follows_on_error_then_recovers() {
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(mut redis) = RedisServer::plain(port) else {
        return;
    };
    redis.wait_up().await;
    let mut servers = vec![];
    for mode in [
        OnLimiterError::Local,
        OnLimiterError::Deny,
        OnLimiterError::Allow,
    ] {
        let s = server_or_skip!(Db::Sqlite, |cfg| {
            cfg.rate_limiter = LimiterKind::Redis;
            cfg.redis.url = format!("redis://127.0.0.1:{port}").into();
            cfg.redis.key_prefix = unique_prefix();
            cfg.redis.timeout_ms = 100;
            cfg.redis.on_error = mode;
        });
        let admin = s.admin().await;
        admin.tenant("t").upsert().await;
        let k = admin
            .create_key(new_key("t").rate_limits([limit("shared", 2, 60)]))
            .await;
        let c = s.authorize().await;
        servers.push((mode, s, c, k.secret));
    }
    // Shared counting works while Redis is up.
    for (_, _, c, key) in servers.iter() {
        assert_eq!(c.reason(check(key)).await, Reason::Ok);
    }

    redis.kill();
    for (mode, _, c, key) in servers.iter() {
        let start = Instant::now();
        let got: Vec<Reason> = [
            c.reason(check(key)).await,
            c.reason(check(key)).await,
            c.reason(check(key)).await,
        ]
        .to_vec();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{mode:?}: checks must not hang on a dead Redis"
        );
        let (ok, rl) = (Reason::Ok, Reason::RateLimited);
        let want = match mode {
            // A fresh in-memory count: 2 admitted, then refused.
            OnLimiterError::Local => vec![ok, ok, rl],
            OnLimiterError::Deny => vec![rl, rl, rl],
            OnLimiterError::Allow => vec![ok, ok, ok],
        };
        assert_eq!(got, want, "{mode:?}");
    }

    // Redis returns (empty: it keeps nothing on disk): shared counting resumes.
    let _redis = RedisServer::plain(port).unwrap();
    _redis.wait_up().await;
    for (mode, _, c, key) in servers.iter() {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Wait until the replica talks to Redis again (a dry run that Redis admits).
        loop {
            let r = c.check(check(key).dry_run()).await;
            if r.reason == Reason::Ok as i32
                && r.rate_limit.as_ref().is_some_and(|l| l.remaining == 2)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: no recovery after Redis returned"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = [
            c.reason(check(key)).await,
            c.reason(check(key)).await,
            c.reason(check(key)).await,
        ];
        assert_eq!(
            got,
            [Reason::Ok, Reason::Ok, Reason::RateLimited],
            "{mode:?}: shared limit again"
        );
    }
}
