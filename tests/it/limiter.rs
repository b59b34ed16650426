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

/// A call's cost comes back one window after it (within the slot precision, W/60, and
/// never early); with no call for a window, the whole budget is back.
pub async fn budget_returns_as_the_window_slides(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 100, 60)];
    let spend = |cost: u64, t: i64| {
        let (l, limits) = (l.clone(), limits.clone());
        async move { l.check("k2", &limits, cost, at(t), false).await.unwrap() }
    };
    let left = |t: i64| {
        let (l, limits) = (l.clone(), limits.clone());
        async move {
            let o = l.check("k2", &limits, 1, at(t), true).await.unwrap();
            o.status.unwrap().remaining
        }
    };
    assert!(spend(40, 0).await.allowed);
    assert!(spend(60, 20_000).await.allowed);
    assert_eq!(left(59_999).await, 0);
    assert_eq!(left(60_000).await, 40, "the first call's cost is back at W");
    assert_eq!(left(79_999).await, 40);
    let o = spend(40, 79_999).await;
    assert!(o.allowed);
    assert_eq!(o.status.unwrap().reset, at(79_999 + 60_000));
    assert_eq!(
        left(80_000).await,
        60,
        "the second call's cost is back at W"
    );
    assert_eq!(left(139_998).await, 60);
    assert_eq!(
        left(139_999).await,
        100,
        "all back one window after the last call"
    );
}

/// 6 per 2 s, spent late in one aligned window: nothing early in the next (the two-window
/// estimate admitted 9 in 2 s here), everything one window after the last call.
pub async fn a_boundary_burst_admits_exactly_the_limit(l: Arc<dyn RateLimiter>) {
    let limits = [lim("b", 6, 2)];
    let mut admitted = Vec::new();
    for t in (1_700..2_000).step_by(50).chain((2_000..3_700).step_by(50)) {
        if l.check("k5", &limits, 1, at(t), false)
            .await
            .unwrap()
            .allowed
        {
            admitted.push(t);
        }
    }
    assert_eq!(admitted, vec![1_700, 1_750, 1_800, 1_850, 1_900, 1_950]);
    let o = l.check("k5", &limits, 1, at(3_650), true).await.unwrap();
    let st = o.status.unwrap();
    assert_eq!(
        st.retry_after,
        Some(Duration::from_millis(50)),
        "the first call of the burst leaves the window at 3,700"
    );
    assert_eq!(st.reset, at(1_950 + 2_000));
    let o = l
        .check("k5", &limits, 6, at(1_950 + 2_000), false)
        .await
        .unwrap();
    assert!(
        o.allowed,
        "whole budget back one window after the last call"
    );
}

/// A limit whose window changes (an admin edited it; replicas see the change at different
/// moments) keeps what was spent: alternating windows never reopen the budget.
pub async fn a_changed_window_keeps_what_was_spent(l: Arc<dyn RateLimiter>) {
    let (short, long) = ([lim("w", 1, 60)], [lim("w", 1, 120)]);
    let mut admitted = 0;
    for i in 0..6 {
        let limits = if i % 2 == 0 { &short } else { &long };
        if l.check("k6", limits, 1, at(i * 1_000), false)
            .await
            .unwrap()
            .allowed
        {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 1);
    // Under the longer window the call at 0 still counts after the shorter one has passed.
    assert!(
        !l.check("k6", &long, 1, at(90_000), true)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        l.check("k6", &short, 1, at(90_000), true)
            .await
            .unwrap()
            .allowed
    );
}

/// Random sequences of calls (time, cost, dry run) against a reference sliding log: the
/// limiter never admits what the exact log would refuse, refuses only what the log would
/// refuse with costs kept W/60 longer, reports `remaining` between the two, and its
/// `retry_after` and `reset` are never more than W ahead.
pub async fn random_calls_match_a_sliding_log(l: Arc<dyn RateLimiter>) {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = rng.gen_range(1..=20u64);
        let window_ms: i64 = [1_000, 2_000, 7_000, 60_000][rng.gen_range(0..4)];
        let g = (window_ms + 59) / 60;
        let limits = [RateLimitSpec {
            name: "r".into(),
            limit,
            window: Duration::from_millis(window_ms as u64),
        }];
        let bucket = format!("prop-{seed}");
        let mut log: Vec<(i64, u64)> = Vec::new();
        let used = |log: &[(i64, u64)], t: i64, extra: i64| -> u64 {
            log.iter()
                .filter(|(at, _)| t < at + window_ms + extra)
                .map(|(_, c)| c)
                .sum()
        };
        let mut t: i64 = rng.gen_range(0..window_ms);
        for step in 0..200 {
            t += match rng.gen_range(0..10) {
                0 => rng.gen_range(0..2 * window_ms),
                1..=3 => 0,
                _ => rng.gen_range(0..window_ms / 8),
            };
            let cost = if rng.gen_range(0..20) == 0 {
                limit + 1
            } else {
                rng.gen_range(1..=3u64.min(limit))
            };
            let dry = rng.gen_range(0..10) == 0;
            let o = l.check(&bucket, &limits, cost, at(t), dry).await.unwrap();
            let st = o.status.clone().unwrap();
            let (exact, late) = (used(&log, t, 0), used(&log, t, g));
            let ctx = format!(
                "seed {seed} step {step} t {t} limit {limit} W {window_ms} cost {cost}: {o:?}"
            );
            assert!(st.reset.0 - at(t).0 <= window_ms, "reset too far: {ctx}");
            if o.allowed {
                assert!(exact + cost <= limit, "admitted over the limit: {ctx}");
                let after = if dry { 0 } else { cost };
                assert!(
                    limit.saturating_sub(late + after) <= st.remaining
                        && st.remaining <= limit - exact - after,
                    "remaining {} outside [{}, {}]: {ctx}",
                    st.remaining,
                    limit.saturating_sub(late + after),
                    limit - exact - after
                );
                if !dry {
                    log.push((t, cost));
                }
            } else {
                assert!(late + cost > limit, "refused what fits: {ctx}");
                match st.retry_after {
                    None => assert!(cost > limit, "{ctx}"),
                    Some(r) => {
                        let r = r.as_millis() as i64;
                        assert!(r > 0 && r <= window_ms, "retry_after {r}: {ctx}");
                        assert!(
                            used(&log, t + r, 0) + cost <= limit,
                            "retry_after not enough: {ctx}"
                        );
                    }
                }
            }
        }
    }
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

/// `n` checks of cost 1 at `t`, all at once: call `i` goes to `limiters[i % len]` on
/// `bucket(i)`. How many were admitted.
async fn admitted_concurrently(
    limiters: &[Arc<dyn RateLimiter>],
    limit: RateLimitSpec,
    n: usize,
    t: i64,
    bucket: impl Fn(usize) -> String,
) -> usize {
    let limits = Arc::new([limit]);
    let calls = (0..n).map(|i| {
        let (l, limits, b) = (
            limiters[i % limiters.len()].clone(),
            limits.clone(),
            bucket(i),
        );
        tokio::spawn(async move {
            l.check(&b, &limits[..], 1, at(t), false)
                .await
                .unwrap()
                .allowed
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count()
}

pub async fn concurrent_calls_admit_exactly_the_limit(l: Arc<dyn RateLimiter>) {
    let admitted = admitted_concurrently(&[l], lim("m", 100, 60), 1000, 0, |_| "hot".into()).await;
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

/// A reservation settled for less gives the difference back into the slot it was spent
/// in (so it comes back when the reserved call's units would have); settled for more, it
/// charges up to the limit plus the overdraft, never refusing. Each limit on its own.
pub async fn settling_a_reservation_spends_the_actual_cost(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 100, 60), lim("h", 1000, 3600)];
    let scope = |b: &'static str| {
        [LimitScope {
            bucket: b,
            limits: &limits,
        }]
    };
    let remaining = |o: keygate::limiter::LimitOutcome| o.status.unwrap().remaining;
    let peek = |b: &'static str, t: i64| {
        let l = l.clone();
        let limits = limits.clone();
        async move {
            let o = l.check(b, &limits, 1, at(t), true).await.unwrap();
            let st = o.status.unwrap();
            (st.name, st.remaining)
        }
    };
    // Another call before, the reservation of 80, a call after.
    assert!(
        l.check("r1", &limits, 5, at(1_000), false)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(
        remaining(l.check("r1", &limits, 80, at(10_000), false).await.unwrap()),
        15
    );
    assert!(
        l.check("r1", &limits, 7, at(30_000), false)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(peek("r1", 40_000).await, ("m".into(), 8));
    // Settled at 20: 60 come back at once, on both limits.
    l.settle("r1", &scope("r1"), at(10_000), 80, 20, 0, at(40_000))
        .await
        .unwrap();
    assert_eq!(peek("r1", 40_000).await, ("m".into(), 68));
    // The 20 left leave with the reservation's slot (at 70 s), not with the later call.
    assert_eq!(peek("r1", 69_999).await, ("m".into(), 73));
    assert_eq!(peek("r1", 70_000).await, ("m".into(), 93));

    // Settled for more: charged at now, up to the limit (overdraft 0) ...
    assert!(
        l.check("r2", &limits, 50, at(1_000), false)
            .await
            .unwrap()
            .allowed
    );
    l.settle("r2", &scope("r2"), at(1_000), 50, 500, 0, at(2_000))
        .await
        .unwrap();
    let (name, left) = peek("r2", 2_000).await;
    assert_eq!(
        (name.as_str(), left),
        ("m", 0),
        "the minute limit is full, not over"
    );
    assert!(
        !l.check("r2", &limits, 1, at(2_000), true)
            .await
            .unwrap()
            .allowed
    );
    // ... and the hour limit got all of it (its room was enough).
    let hour_only = [lim("h", 1000, 3600)];
    let o = l.check("r2", &hour_only, 1, at(2_000), true).await.unwrap();
    assert_eq!(o.status.unwrap().remaining, 1000 - 500);
    // With an overdraft, past the limit by at most that much.
    assert!(
        l.check("r3", &limits, 90, at(1_000), false)
            .await
            .unwrap()
            .allowed
    );
    l.settle("r3", &scope("r3"), at(1_000), 90, 200, 20, at(2_000))
        .await
        .unwrap();
    assert!(
        !l.check("r3", &limits, 1, at(2_000), true)
            .await
            .unwrap()
            .allowed
    );
    // The minute window holds 120 (90 + 30 of the 110 extra); none comes back early.
    assert!(
        !l.check("r3", &limits, 1, at(60_999), true)
            .await
            .unwrap()
            .allowed
    );
    // Once the reservation's slot has gone, only the 30 charged at 2 s are left.
    let o = l.check("r3", &limits, 1, at(61_000), true).await.unwrap();
    assert_eq!(o.status.unwrap().remaining, 70);
    // Once its slot has gone, giving back does nothing (the units are back already).
    assert!(
        l.check("r4", &limits, 30, at(1_000), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        l.check("r4", &limits, 10, at(61_500), false)
            .await
            .unwrap()
            .allowed
    );
    l.settle("r4", &scope("r4"), at(1_000), 30, 0, 0, at(62_000))
        .await
        .unwrap();
    assert_eq!(
        peek("r4", 62_000).await,
        ("m".into(), 90),
        "the later call keeps its cost"
    );

    // A limit given another window since the reservation is left alone: its counts are
    // the new limit's, not the reservation's to rewrite.
    let minute = [lim("x", 10, 60)];
    let hour = [lim("x", 10, 3600)];
    assert!(
        l.check("r5", &minute, 5, at(1_000), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        l.check("r5", &hour, 5, at(2_000), false)
            .await
            .unwrap()
            .allowed
    );
    let before = l.check("r5", &hour, 1, at(130_000), true).await.unwrap();
    assert!(!before.allowed, "the hour holds 10");
    let r5 = [LimitScope {
        bucket: "r5",
        limits: &minute,
    }];
    l.settle("r5", &r5, at(1_000), 5, 4, 0, at(130_000))
        .await
        .unwrap();
    assert!(
        !l.check("r5", &hour, 1, at(130_000), true)
            .await
            .unwrap()
            .allowed,
        "still 10 in the hour: never more than N"
    );
    // Settled for more: what every limit took is reported (the least any took).
    assert!(
        l.check("r6", &limits, 95, at(1_000), false)
            .await
            .unwrap()
            .allowed
    );
    let took = l
        .settle("r6", &scope("r6"), at(1_000), 95, 120, 0, at(1_500))
        .await
        .unwrap();
    assert_eq!(took, 5, "the minute limit had room for 5 of the 25");
}

/// A reservation that joined a slot other calls share gives back into that slot (and
/// its units then leave with it); an emptied slot is gone, on Redis as in memory.
pub async fn giving_back_after_a_merge_returns_into_the_merged_slot(l: Arc<dyn RateLimiter>) {
    let limits = [lim("m", 1000, 60)];
    let scope = [LimitScope {
        bucket: "g1",
        limits: &limits,
    }];
    assert!(
        l.check("g1", &limits, 5, at(50_000), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        l.check("g1", &limits, 20, at(51_500), false)
            .await
            .unwrap()
            .allowed
    );
    // A reservation at 51,200, after a call at 51,500 of the same slot: it joins that slot.
    assert!(
        l.check("g1", &limits, 100, at(51_200), false)
            .await
            .unwrap()
            .allowed
    );
    l.settle("g1", &scope, at(51_200), 100, 30, 0, at(52_000))
        .await
        .unwrap();
    let o = l.check("g1", &limits, 1, at(52_000), true).await.unwrap();
    assert_eq!(
        o.status.unwrap().remaining,
        1000 - 5 - 20 - 30,
        "70 came back"
    );
    // The slot of 50 s (the 5) leaves at 110 s, the other (20 + 30) at 111.5 s.
    let o = l.check("g1", &limits, 1, at(110_000), true).await.unwrap();
    assert_eq!(o.status.unwrap().remaining, 1000 - 50);
}

/// Each Redis test writes under its own key prefix, so tests run in parallel.
async fn redis_limiter() -> Option<Arc<dyn RateLimiter>> {
    redis_limiter_at(&fresh_prefix()).await
}

/// A Redis key prefix no other test uses.
pub fn fresh_prefix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "kgtest:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A Redis limiter writing under `prefix` (replicas of one deployment share it).
async fn redis_limiter_at(prefix: &str) -> Option<Arc<dyn RateLimiter>> {
    let l = keygate::limiter::redis::RedisLimiter::new(
        crate::support::REDIS_URL,
        prefix,
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
                a_boundary_burst_admits_exactly_the_limit,
                a_changed_window_keeps_what_was_spent,
                random_calls_match_a_sliding_log,
                all_limits_or_none_are_spent,
                dry_run_spends_nothing,
                buckets_are_independent_and_no_limits_admit,
                shared_limits_are_spent_together_or_not_at_all,
                concurrent_calls_admit_exactly_the_limit,
                settling_a_reservation_spends_the_actual_cost,
                giving_back_after_a_merge_returns_into_the_merged_slot);
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

/// Three replicas on one Redis, taking turns through a burst across a window boundary and
/// then concurrently: together they admit exactly the limit in any window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_one_redis_admit_exactly_the_limit_together() {
    let prefix = fresh_prefix();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let Some(l) = redis_limiter_at(&prefix).await else {
            return;
        };
        replicas.push(l);
    }
    let limits = [lim("b", 6, 2)];
    let mut admitted = 0;
    for (i, t) in (1_700..3_700).step_by(25).enumerate() {
        let l = &replicas[i % 3];
        if l.check("k", &limits, 1, at(t), false)
            .await
            .unwrap()
            .allowed
        {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 6,
        "6 per 2 s across three replicas and a boundary"
    );
    let admitted =
        admitted_concurrently(&replicas, lim("c", 50, 60), 300, 10_000, |_| "hot".into()).await;
    assert_eq!(admitted, 50);
}

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

    async fn settle(
        &self,
        g: &str,
        s: &[LimitScope<'_>],
        at: UnixMillis,
        reserved: u64,
        actual: u64,
        overdraft: u64,
        now: UnixMillis,
    ) -> keygate::error::Result<u64> {
        self.0
            .settle(g, s, at, reserved, actual, overdraft, now)
            .await
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
    // A refusal of a costlier call does not refuse a cheaper one that may fit.
    assert!(
        l.check("k3", &limits, 1, at(0), false)
            .await
            .unwrap()
            .allowed
    );
    assert!(
        !l.check("k3", &limits, 2, at(10), false)
            .await
            .unwrap()
            .allowed
    );
    let before = shared.1.load(SeqCst);
    assert!(
        l.check("k3", &limits, 1, at(20), false)
            .await
            .unwrap()
            .allowed,
        "one unit is left: the cheaper call asks and is admitted"
    );
    assert_eq!(shared.1.load(SeqCst), before + 1);
    // Off by default: every call goes to the shared limiter.
    let plain = Resilient::new(shared.clone(), OnLimiterError::Deny, false);
    plain.check("k2", &limits, 2, at(0), false).await.unwrap();
    plain.check("k2", &limits, 1, at(1), false).await.unwrap();
    plain.check("k2", &limits, 1, at(2), false).await.unwrap();
    assert_eq!(shared.1.load(SeqCst), 9);
}

/// Concurrent checks share round trips: 500 calls at once, on a Redis of this test's own,
/// reach it in far fewer script runs, and each of five keys still admits exactly its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_share_script_runs() {
    use crate::support::redis_server::{cli, free_port_pair, RedisServer};
    let port = free_port_pair();
    let Some(server) = RedisServer::plain(port) else {
        return;
    };
    server.wait_up().await;
    let l: Arc<dyn RateLimiter> = Arc::new(
        keygate::limiter::redis::RedisLimiter::new(
            &format!("redis://127.0.0.1:{port}"),
            "kgbatch",
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let admitted =
        admitted_concurrently(&[l], lim("m", 60, 60), 500, 0, |i| format!("k{}", i % 5)).await;
    assert_eq!(admitted, 5 * 60);
    let stats = cli(port, &["INFO", "commandstats"]);
    let runs: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EVALSHA in {stats}"));
    assert!(runs <= 100, "{runs} script runs for 500 concurrent checks");
}

/// Redis lost a limit's list of older slots (an eviction policy took one key and not the
/// other): the sum is corrected from what is left once the oldest slot's time has passed,
/// not kept for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_slot_list_does_not_keep_its_cost() {
    let prefix = fresh_prefix();
    let Some(l) = redis_limiter_at(&prefix).await else {
        return;
    };
    let limits = [lim("m", 5, 60)];
    for t in [0, 1_000, 2_000, 3_000] {
        assert!(
            l.check("lost", &limits, 1, at(t), false)
                .await
                .unwrap()
                .allowed
        );
    }
    let list = format!("{prefix}:{{lost}}:lost:m:sw:l");
    let client = ::redis::Client::open(crate::support::REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let removed: u64 = ::redis::cmd("DEL")
        .arg(&list)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the list {list} exists");
    // At 61 s the calls at 0..2 s have left; only the open slot (3 s) is left to count.
    let o = l.check("lost", &limits, 1, at(61_000), true).await.unwrap();
    assert_eq!(o.status.unwrap().remaining, 4);
}

/// A key of another type under one call's name fails that call only, not the calls batched
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_key_fails_only_its_own_call() {
    let prefix = fresh_prefix();
    let Some(l) = redis_limiter_at(&prefix).await else {
        return;
    };
    let client = ::redis::Client::open(crate::support::REDIS_URL).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(format!("{prefix}:{{bad}}:bad:m:sw:h"))
        .arg("not a hash")
        .query_async(&mut c)
        .await
        .unwrap();
    let limits = Arc::new([lim("m", 1000, 60)]);
    let calls = (0..60).map(|i| {
        let (l, limits) = (l.clone(), limits.clone());
        tokio::spawn(async move {
            let bucket = if i == 30 { "bad" } else { "good" };
            (bucket, l.check(bucket, &limits[..], 1, at(0), false).await)
        })
    });
    for r in futures::future::join_all(calls).await {
        let (bucket, r) = r.unwrap();
        match bucket {
            "bad" => assert!(
                matches!(r, Err(keygate::error::Error::Unavailable { .. })),
                "{r:?}"
            ),
            _ => assert!(r.unwrap().allowed),
        }
    }
    let o = l.check("good", &limits[..], 1, at(0), true).await.unwrap();
    assert_eq!(
        o.status.unwrap().remaining,
        1000 - 59,
        "every good call counted once"
    );
}
