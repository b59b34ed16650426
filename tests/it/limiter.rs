//! The rate-limiter behaviour suite. Every `RateLimiter` implementation runs it unchanged
//! (`limiter_suite!` below); the Redis limiter joins with one line.
use keygate::domain::{RateLimitSpec, UnixMillis};
use keygate::limiter::{LimitScope, RateLimiter};
use std::sync::Arc;
use std::time::Duration;

fn lim(name: &str, limit: u64, window_s: u64) -> RateLimitSpec {
    RateLimitSpec {
        name: name.into(),
        limit,
        window: Duration::from_secs(window_s),
    }
}

/// An instant `offset_ms` after an hour boundary (1.8e12 ms is a multiple of 3,600,000, so
/// every window length used here starts there).
fn at(offset_ms: i64) -> UnixMillis {
    const HOUR_ALIGNED: i64 = 1_800_000_000_000;
    UnixMillis(HOUR_ALIGNED + offset_ms)
}

pub async fn limit_plus_one_is_refused_with_an_exact_retry_after(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 10, 60)];
    for i in 0..10 {
        assert!(
            l.check("k1", &limits, 1, at(1000 + i), false)
                .await
                .unwrap()
                .allowed
        );
    }
    let refused = l.check("k1", &limits, 1, at(2000), false).await.unwrap();
    assert!(!refused.allowed);
    let st = refused.status.unwrap();
    assert_eq!((st.name.as_str(), st.limit, st.remaining), ("m", 10, 0));
    let retry = st.retry_after.unwrap().as_millis() as i64;
    assert!(
        !l.check("k1", &limits, 1, at(2000 + retry - 1), true)
            .await
            .unwrap()
            .allowed,
        "1 ms early"
    );
    assert!(
        l.check("k1", &limits, 1, at(2000 + retry), false)
            .await
            .unwrap()
            .allowed,
        "at retry_after"
    );
}

pub async fn budget_returns_as_the_window_slides(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 100, 60)];
    assert!(
        l.check("k2", &limits, 100, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    // A quarter of the next window gone: a quarter of the budget back, not all of it.
    let o = l
        .check("k2", &limits, 1, at(60_000 + 15_000), true)
        .await
        .unwrap();
    assert_eq!(o.status.unwrap().remaining, 25);
    assert!(
        l.check("k2", &limits, 25, at(75_000), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !l.check("k2", &limits, 1, at(75_000), false)
            .await
            .unwrap()
            .allowed
    );
    // Two full windows later everything is back.
    let o = l.check("k2", &limits, 1, at(180_000), true).await.unwrap();
    assert_eq!(o.status.unwrap().remaining, 100);
}

pub async fn all_limits_or_none_are_spent(l: Arc<dyn RateLimiter>) {
    let limits = [lim("per-second", 5, 1), lim("per-hour", 7, 3600)];
    assert!(
        l.check("k3", &limits, 5, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    // The per-second limit refuses; the hourly one must not be charged.
    let o = l.check("k3", &limits, 1, at(10), false).await.unwrap();
    assert!(!o.allowed);
    assert_eq!(o.status.unwrap().name, "per-second");
    let o = l.check("k3", &limits, 2, at(2_500), false).await.unwrap();
    assert!(o.allowed, "hourly budget still has 2");
    let st = o.status.unwrap();
    assert_eq!(
        (st.name.as_str(), st.remaining),
        ("per-hour", 0),
        "tightest limit reported"
    );
    let o = l.check("k3", &limits, 1, at(5_000), false).await.unwrap();
    assert_eq!(
        o.status.unwrap().name,
        "per-hour",
        "the refusing limit is named"
    );
}

pub async fn dry_run_spends_nothing(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 3, 60)];
    for _ in 0..10 {
        assert!(
            l.check("k4", &limits, 3, at(0), true)
                .await
                .unwrap()
                .allowed
        );
    }
    assert!(
        l.check("k4", &limits, 3, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !l.check("k4", &limits, 1, at(0), true)
            .await
            .unwrap()
            .allowed
    );
}

pub async fn buckets_are_independent_and_no_limits_admit(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 1, 60)];
    assert!(
        l.check("a", &limits, 1, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        l.check("b", &limits, 1, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !l.check("a", &limits, 1, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    let o = l.check("a", &[], 1, at(0), false).await.unwrap();
    assert!(o.allowed && o.status.is_none());
}

pub async fn concurrent_calls_admit_exactly_the_limit(l: Arc<dyn RateLimiter>) {
    let limits = Arc::new([lim("m", 100, 60)]);
    let calls = (0..1000).map(|_| {
        let (l, limits) = (l.clone(), limits.clone());
        tokio::spawn(async move {
            l.check("hot", &limits[..], 1, at(0), false)
                .await
                .unwrap()
                .allowed
        })
    });
    let admitted = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    assert_eq!(admitted, 100);
}

/// Two keys of one tenant spend one shared limit together, exactly; the binding limit is
/// named; a refused call spends nothing on either scope.
pub async fn shared_limits_are_spent_together_or_not_at_all(l: Arc<dyn RateLimiter>) {
    let own = [lim("key-minute", 5, 60)];
    let shared = [lim("plan-minute", 8, 60)];
    let call = |key: &'static str, cost: u64, dry: bool| {
        let (l, own, shared) = (l.clone(), own.clone(), shared.clone());
        async move {
            let scopes = [
                LimitScope {
                    bucket: key,
                    limits: &own,
                },
                LimitScope {
                    bucket: "tenant:t",
                    limits: &shared,
                },
            ];
            l.check_scopes("t", &scopes, cost, at(0), dry)
                .await
                .unwrap()
        }
    };
    // 5 + 3 = the plan's 8; key a's own limit of 5 binds first.
    for _ in 0..5 {
        assert!(call("key-a", 1, false).await.allowed);
    }
    let o = call("key-a", 1, false).await;
    assert!(!o.allowed);
    assert_eq!(o.status.unwrap().name, "key-minute");
    for _ in 0..3 {
        assert!(call("key-b", 1, false).await.allowed);
    }
    // The plan is spent: key b (own budget left: 2) is refused by the shared limit.
    let o = call("key-b", 1, false).await;
    assert!(!o.allowed);
    let st = o.status.unwrap();
    assert_eq!(st.name, "plan-minute");
    assert!(st.retry_after.is_some());
    // Nothing was spent by the refusals: key b's own limit still has exactly 2 left.
    let key_b_alone = |cost: u64| {
        let (l, own) = (l.clone(), own.clone());
        async move {
            let scopes = [LimitScope {
                bucket: "key-b",
                limits: &own,
            }];
            l.check_scopes("t", &scopes, cost, at(0), true)
                .await
                .unwrap()
                .allowed
        }
    };
    assert!(key_b_alone(2).await);
    assert!(!key_b_alone(3).await);
    let o = call("key-c", 1, true).await;
    assert!(!o.allowed, "the plan is spent for every key of the tenant");
}

/// Each Redis test writes under its own key prefix, so tests run in parallel.
async fn redis_limiter() -> Option<Arc<dyn RateLimiter>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!(
        "kgtest:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let l = keygate::limiter::redis::RedisLimiter::new(
        crate::support::REDIS_URL,
        &prefix,
        Duration::from_secs(2),
    )
    .unwrap();
    // Probe: a check with no limits never touches Redis, so use a real one.
    match l
        .check("probe", &[lim("probe", 1, 1)], 1, at(0), true)
        .await
    {
        Ok(_) => Some(Arc::new(l)),
        Err(e) if !crate::support::in_ci() => {
            eprintln!("\n!!! SKIPPING a Redis test: {e}. Start Redis: redis-server --daemonize yes --port 6379 --save ''\n");
            None
        }
        Err(e) => panic!("Redis is required under CI=true and is unreachable: {e}"),
    }
}

macro_rules! limiter_suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            limiter_suite!(@tests $make;
                limit_plus_one_is_refused_with_an_exact_retry_after,
                budget_returns_as_the_window_slides,
                all_limits_or_none_are_spent,
                dry_run_spends_nothing,
                buckets_are_independent_and_no_limits_admit,
                shared_limits_are_spent_together_or_not_at_all,
                concurrent_calls_admit_exactly_the_limit);
        }
    };
    (@tests $make:expr; $($t:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $t() {
                let made: Option<Arc<dyn RateLimiter>> = $make;
                let Some(l) = made else { return };
                super::$t(l).await
            }
        )*
    };
}

limiter_suite!(
    memory,
    Some(Arc::new(keygate::limiter::memory::MemoryLimiter::default()))
);
limiter_suite!(redis, redis_limiter().await);

/// Counts the calls that reach the shared limiter.
struct Counting(
    keygate::limiter::memory::MemoryLimiter,
    std::sync::atomic::AtomicUsize,
);

#[async_trait::async_trait]
impl RateLimiter for Counting {
    async fn check_scopes(
        &self,
        g: &str,
        s: &[LimitScope<'_>],
        c: u64,
        now: UnixMillis,
        d: bool,
    ) -> keygate::error::Result<keygate::limiter::LimitOutcome> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.check_scopes(g, s, c, now, d).await
    }
}

#[tokio::test]
async fn local_precheck_refuses_without_a_round_trip_until_retry_after() {
    use keygate::limiter::resilient::{OnLimiterError, Resilient};
    use std::sync::atomic::Ordering::SeqCst;
    let shared = Arc::new(Counting(Default::default(), Default::default()));
    let l = Resilient::new(shared.clone(), OnLimiterError::Deny, true);
    let limits = [lim("m", 2, 60)];
    assert!(
        l.check("k", &limits, 2, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    let refused = l.check("k", &limits, 1, at(10), false).await.unwrap();
    assert!(!refused.allowed);
    let retry = refused.status.unwrap().retry_after.unwrap().as_millis() as i64;
    assert_eq!(shared.1.load(SeqCst), 2);
    let again = l.check("k", &limits, 1, at(20), false).await.unwrap();
    assert!(!again.allowed);
    assert_eq!(
        again.status.unwrap().retry_after.unwrap().as_millis() as i64,
        retry - 10,
        "retry_after counts down"
    );
    assert_eq!(shared.1.load(SeqCst), 2, "refused locally, no round trip");
    assert!(
        l.check("k", &limits, 1, at(10 + retry), false)
            .await
            .unwrap()
            .allowed,
        "at retry_after the shared limiter decides again"
    );
    assert_eq!(shared.1.load(SeqCst), 3);
    // Off by default: every call goes to the shared limiter.
    let plain = Resilient::new(shared.clone(), OnLimiterError::Deny, false);
    plain.check("k2", &limits, 2, at(0), false).await.unwrap();
    plain.check("k2", &limits, 1, at(1), false).await.unwrap();
    plain.check("k2", &limits, 1, at(2), false).await.unwrap();
    assert_eq!(shared.1.load(SeqCst), 6);
}
