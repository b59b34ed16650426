//! The shared limiter beyond one plain Redis: a real Redis Cluster of three masters (local
//! `redis-server` processes made into a cluster with `redis-cli --cluster create`), and a
//! Redis that speaks only TLS and wants a password.
use crate::limiter as suite;
use crate::support::redis_server::{tls_redis, RedisCluster};
use crate::support::{check, new_key, Db, TestServer};
use keygate::domain::{RateLimitSpec, UnixMillis};
use keygate::grpc::pb::Reason;
use keygate::limiter::redis::{RedisLimiter, RedisTarget};
use keygate::limiter::RateLimiter;
use std::sync::Arc;
use std::time::Duration;

fn prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "kgc:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn on_cluster(c: &RedisCluster) -> Arc<dyn RateLimiter> {
    let target = RedisTarget {
        cluster: true,
        ..RedisTarget::single(&c.url())
    };
    Arc::new(RedisLimiter::connect_to(target, &prefix(), Duration::from_secs(2)).unwrap())
}

fn lim(limit: u64, window_s: u64) -> [RateLimitSpec; 1] {
    [RateLimitSpec {
        name: "m".into(),
        limit,
        window: Duration::from_secs(window_s),
    }]
}

const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

/// The whole limiter behaviour suite, unchanged, on the cluster: its buckets are groups of
/// their own, so their hash tags land on different masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limiter_suite_holds_on_a_redis_cluster() {
    let Some(c) = RedisCluster::start(3).await else {
        return;
    };
    suite::limit_plus_one_is_refused_with_an_exact_retry_after(on_cluster(&c)).await;
    suite::budget_returns_as_the_window_slides(on_cluster(&c)).await;
    suite::a_boundary_burst_admits_exactly_the_limit(on_cluster(&c)).await;
    suite::random_calls_match_a_sliding_log(on_cluster(&c)).await;
    suite::all_limits_or_none_are_spent(on_cluster(&c)).await;
    suite::dry_run_spends_nothing(on_cluster(&c)).await;
    suite::buckets_are_independent_and_no_limits_admit(on_cluster(&c)).await;
    suite::shared_limits_are_spent_together_or_not_at_all(on_cluster(&c)).await;
    suite::concurrent_calls_admit_exactly_the_limit(on_cluster(&c)).await;
}

/// Keys spread over every master, each budget exact, with three replicas (three clients)
/// spending together; then one master dies: its keys fail fast (the check's
/// `[redis] on_error` decides), the other masters' keys keep their exact budgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_are_exact_across_slots_and_a_dead_master_fails_fast() {
    let Some(mut c) = RedisCluster::start(3).await else {
        return;
    };
    let p = prefix();
    let replicas: Vec<Arc<dyn RateLimiter>> = (0..3)
        .map(|_| {
            let target = RedisTarget {
                cluster: true,
                ..RedisTarget::single(&c.url())
            };
            Arc::new(RedisLimiter::connect_to(target, &p, Duration::from_secs(1)).unwrap())
                as Arc<dyn RateLimiter>
        })
        .collect();
    let limits = lim(3, 60);
    for g in 0..60 {
        let bucket = format!("tenant-{g}");
        let mut admitted = 0;
        for i in 0..5 {
            let l = &replicas[i % 3];
            if l.check(&bucket, &limits, 1, NOW, false)
                .await
                .unwrap()
                .allowed
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3, "{bucket}");
    }
    let counts = c.key_counts();
    assert!(
        counts.iter().all(|&n| n > 0),
        "keys on every master: {counts:?}"
    );

    c.nodes[1].kill();
    let (mut failed, mut fine) = (0, 0);
    for g in 0..60 {
        let bucket = format!("tenant-{g}");
        let started = std::time::Instant::now();
        match replicas[0].check(&bucket, &limits, 1, NOW, true).await {
            Ok(o) => {
                assert!(!o.allowed, "{bucket}: still exactly spent on a live master");
                fine += 1;
            }
            Err(e) => {
                assert!(
                    matches!(e, keygate::error::Error::Unavailable { .. }),
                    "{e:?}"
                );
                failed += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{bucket} took {:?}",
            started.elapsed()
        );
    }
    assert!(failed > 0 && fine > 0, "failed {failed}, fine {fine}");
}

/// Through the real server: `[redis] cluster = true` with one seed node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_counts_on_the_cluster_from_its_config() {
    let Some(c) = RedisCluster::start(3).await else {
        return;
    };
    let url = c.url();
    let Some(s) = TestServer::start_with(Db::Sqlite, |cfg| {
        cfg.rate_limiter = keygate::config::LimiterKind::Redis;
        cfg.redis.url = url.into();
        cfg.redis.cluster = true;
        cfg.redis.key_prefix = prefix();
        cfg.redis.on_error = keygate::limiter::resilient::OnLimiterError::Deny;
        cfg.redis.timeout_ms = 1000;
    })
    .await
    else {
        return;
    };
    let a = s.admin().await;
    a.tenant("t").upsert().await;
    let k = a
        .create_key(new_key("t").rate_limits([crate::support::limit("m", 3, 60)]))
        .await;
    let c2 = s.authorize().await;
    let mut reasons = Vec::new();
    for _ in 0..4 {
        reasons.push(c2.reason(check(&k.secret)).await);
    }
    assert_eq!(
        reasons,
        [Reason::Ok, Reason::Ok, Reason::Ok, Reason::RateLimited]
    );
    assert!(
        c.key_counts().iter().sum::<u64>() >= 1,
        "the counters are in the cluster"
    );
}

/// `rediss://` with the CA in `redis.ca_path` and the password in `redis.password_file`:
/// the real binary counts there, and never prints the password. Without the CA, or with
/// a wrong password, the limiter is unavailable (and says why without the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_and_a_password_file() {
    let password = "s3cret-redis-password-4242";
    let Some((server, ca)) = tls_redis(password).await else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let ca_pem = std::fs::read(&ca).unwrap();
    let target = |ca: Option<Vec<u8>>, pw: &str| RedisTarget {
        ca_pem: ca,
        password: Some(pw.to_owned().into()),
        ..RedisTarget::single(&url)
    };
    let limits = lim(2, 60);
    let ok = RedisLimiter::connect_to(
        target(Some(ca_pem.clone()), password),
        &prefix(),
        Duration::from_secs(2),
    )
    .unwrap();
    let admitted: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                ok.check("tls", &limits, 1, NOW, false)
                    .await
                    .unwrap()
                    .allowed,
            );
        }
        v
    };
    assert_eq!(admitted, [true, true, false]);
    for (what, t) in [
        ("no CA (an unknown issuer)", target(None, password)),
        (
            "a wrong password",
            target(Some(ca_pem.clone()), "not-the-password"),
        ),
    ] {
        let l = RedisLimiter::connect_to(t, &prefix(), Duration::from_secs(2)).unwrap();
        let e = l.check("tls", &limits, 1, NOW, true).await.unwrap_err();
        let text = format!("{e:?} {e}");
        assert!(
            matches!(e, keygate::error::Error::Unavailable { .. }),
            "{what}: {text}"
        );
        assert!(!text.contains(password), "{what}: {text}");
    }

    // The real binary, configured as an operator would.
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let db = crate::support::TestDb::new(Db::Sqlite).await.unwrap();
    let token = "redis-tls-admin-token-0123456789";
    let key_prefix = prefix();
    let p = crate::support::spawn(
        &db.url,
        &[
            ("KEYGATE_ADMIN_TOKEN", token),
            ("KEYGATE_RATE_LIMITER", "redis"),
            ("KEYGATE_REDIS__URL", &url),
            ("KEYGATE_REDIS__CA_PATH", ca.to_str().unwrap()),
            ("KEYGATE_REDIS__PASSWORD_FILE", pw_file.to_str().unwrap()),
            ("KEYGATE_REDIS__KEY_PREFIX", &key_prefix),
            ("KEYGATE_REDIS__ON_ERROR", "deny"),
            ("KEYGATE_LOG__FILTER", "debug"),
        ],
        &[],
    )
    .await;
    let a = p.admin(token).await;
    a.tenant("t").upsert().await;
    let k = a
        .create_key(new_key("t").rate_limits([crate::support::limit("m", 1, 60)]))
        .await;
    let c2 = crate::support::CheckClient::connect(&p.addr).await.unwrap();
    assert_eq!(c2.reason(check(&k.secret)).await, Reason::Ok);
    let second = c2.check(check(&k.secret)).await;
    assert_eq!(second.reason, Reason::RateLimited as i32);
    let rl = second.rate_limit.unwrap();
    assert_eq!(
        rl.name, "m",
        "refused by the key's limit in Redis, not on_error"
    );
    let keys = std::process::Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            ca.to_str().unwrap(),
            "-p",
            &server.port.to_string(),
        ])
        .args(["--no-auth-warning", "-a", password, "--scan", "--pattern"])
        .arg(format!("{key_prefix}:*"))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&keys.stdout).trim().is_empty(),
        "the counters are in the TLS Redis"
    );
    assert!(
        !p.output().contains(password),
        "password printed:\n{}",
        p.output()
    );
}
