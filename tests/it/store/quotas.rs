//! `QuotaStore`: period counters that hand out units atomically, never past the limit
//! plus top-ups, however many replicas claim at once.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::domain::quota::{QuotaChange, QuotaCounter};
use keygate::store::QuotaClaim;
use std::collections::HashMap;

const SUBJECT: &str = "key:k1";
/// The period the tests claim from (any instant will do).
const PERIOD: UnixMillis = T0;

fn claim(subject: &str, limit: u64, need: u64, want: u64) -> QuotaClaim {
    QuotaClaim {
        subject: subject.to_owned(),
        period_start: PERIOD,
        limit,
        need,
        want,
        now: at(1),
    }
}

async fn counter(s: &Stores, subject: &str) -> Option<QuotaCounter> {
    let cell = (subject.to_owned(), PERIOD);
    s.quotas
        .quota_counters(std::slice::from_ref(&cell))
        .await
        .unwrap()
        .remove(&cell)
}

fn used(n: u64, granted: i64) -> Option<QuotaCounter> {
    Some(QuotaCounter { used: n, granted })
}

/// Claims one unit at a time (wanting many) until the store says none remain; fails as
/// soon as it has been handed more than `most` (so a store that never says no cannot
/// hang the test).
async fn drain(s: &Stores, subject: &str, limit: u64, most: u64) -> u64 {
    let mut total = 0;
    loop {
        match s
            .quotas
            .claim_quota(&claim(subject, limit, 1, 1_000))
            .await
            .unwrap()
        {
            0 => return total,
            n => total += n,
        }
        assert!(
            total <= most,
            "handed out {total} units, at most {most} remain"
        );
    }
}

async fn claims_take_what_is_wanted_up_to_an_eighth_of_the_rest(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    assert_eq!(counter(&s, SUBJECT).await, None, "never claimed: absent");
    let take = |need, want| {
        let s = s.clone();
        async move {
            s.quotas
                .claim_quota(&claim(SUBJECT, 800, need, want))
                .await
                .unwrap()
        }
    };
    assert_eq!(take(1, 1_000).await, 100, "an eighth of 800");
    assert_eq!(
        counter(&s, SUBJECT).await,
        used(100, 0),
        "created on first use"
    );
    assert_eq!(take(1, 1_000).await, 87, "an eighth of 700, rounded down");
    assert_eq!(take(1, 5).await, 5, "no more than wanted");
    // The call at hand needs more than an eighth (608 / 8 = 76): it gets what it needs.
    assert_eq!(take(200, 0).await, 200);
    assert_eq!(counter(&s, SUBJECT).await, used(392, 0));
    // Counters are per subject and per period.
    assert_eq!(
        s.quotas
            .claim_quota(&claim("key:k2", 800, 1, 1_000))
            .await
            .unwrap(),
        100
    );
    let next_period = QuotaClaim {
        period_start: at(DAY),
        ..claim(SUBJECT, 800, 1, 1_000)
    };
    assert_eq!(s.quotas.claim_quota(&next_period).await.unwrap(), 100);
    assert_eq!(counter(&s, SUBJECT).await, used(392, 0));
}

async fn a_claim_needing_more_than_remains_gets_nothing(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 10, 7, 7))
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 10, 4, 4))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        counter(&s, SUBJECT).await,
        used(7, 0),
        "a refused claim takes nothing"
    );
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 10, 3, 3))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 10, 1, 1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(counter(&s, SUBJECT).await, used(10, 0));
    // More than the whole limit, on the first claim of a period.
    assert_eq!(
        s.quotas
            .claim_quota(&claim("key:big", 10, 11, 11))
            .await
            .unwrap(),
        0
    );
    assert_eq!(counter(&s, "key:big").await, used(0, 0));
}

async fn concurrent_claims_hand_out_exactly_the_limit(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { drain(&s, SUBJECT, 100, 100).await })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total, 100,
        "every unit handed out once, none past the limit"
    );
    assert_eq!(counter(&s, SUBJECT).await, used(100, 0));
}

async fn release_gives_unspent_units_back(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 800, 1, 1_000))
            .await
            .unwrap(),
        100
    );
    s.quotas
        .release_quota(SUBJECT, PERIOD, 40, at(2))
        .await
        .unwrap();
    assert_eq!(counter(&s, SUBJECT).await, used(60, 0));
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 800, 1, 1_000))
            .await
            .unwrap(),
        92,
        "an eighth of the 740 left after the release"
    );
    // Giving back more than was handed out stops at zero.
    s.quotas
        .release_quota(SUBJECT, PERIOD, 1_000, at(3))
        .await
        .unwrap();
    assert_eq!(counter(&s, SUBJECT).await, used(0, 0));
    assert_eq!(drain(&s, SUBJECT, 800, 800).await, 800);
    // A release of a period never claimed creates nothing.
    s.quotas
        .release_quota("key:none", PERIOD, 5, at(3))
        .await
        .unwrap();
    assert_eq!(counter(&s, "key:none").await, None);
}

async fn charge_spends_up_to_the_ceiling_and_no_further(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    // On a period never claimed: the row is made.
    assert_eq!(
        s.quotas
            .charge_quota(SUBJECT, PERIOD, 100, 30, at(1))
            .await
            .unwrap(),
        30
    );
    assert_eq!(counter(&s, SUBJECT).await, used(30, 0));
    // Past the ceiling: only what fits.
    assert_eq!(
        s.quotas
            .charge_quota(SUBJECT, PERIOD, 100, 500, at(2))
            .await
            .unwrap(),
        70
    );
    assert_eq!(counter(&s, SUBJECT).await, used(100, 0));
    assert_eq!(
        s.quotas
            .charge_quota(SUBJECT, PERIOD, 100, 5, at(3))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.quotas
            .charge_quota(SUBJECT, PERIOD, 100, 0, at(3))
            .await
            .unwrap(),
        0
    );
    // A higher ceiling (the limit plus an overdraft) lets more in; a claim at the plain
    // limit then finds nothing left.
    assert_eq!(
        s.quotas
            .charge_quota(SUBJECT, PERIOD, 120, 50, at(4))
            .await
            .unwrap(),
        20
    );
    assert_eq!(counter(&s, SUBJECT).await, used(120, 0));
    assert_eq!(
        s.quotas
            .claim_quota(&claim(SUBJECT, 100, 1, 10))
            .await
            .unwrap(),
        0
    );
    // Concurrent charges never pass the ceiling together.
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.quotas
                    .charge_quota("key:k2", PERIOD, 100, 15, at(10 + i))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 100);
    assert_eq!(counter(&s, "key:k2").await, used(100, 0));
}

async fn adjust(s: &Stores, subject: &str, limit: u64, change: QuotaChange) -> QuotaCounter {
    s.quotas
        .adjust_quota(
            subject,
            PERIOD,
            limit,
            change,
            at(5),
            audit("adjust_quota", "acme", "k1"),
        )
        .await
        .unwrap()
}

async fn adjust_tops_up_or_sets_what_remains_with_an_event(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    // A top-up of a period never claimed creates its counter.
    assert_eq!(
        adjust(&s, SUBJECT, 10, QuotaChange::Add(20)).await,
        QuotaCounter {
            used: 0,
            granted: 20
        }
    );
    assert_eq!(counter(&s, SUBJECT).await, used(0, 20));
    assert_eq!(
        drain(&s, SUBJECT, 10, 30).await,
        30,
        "the limit plus the top-up"
    );

    let c = adjust(&s, SUBJECT, 10, QuotaChange::SetRemaining(5)).await;
    assert_eq!(
        c,
        QuotaCounter {
            used: 30,
            granted: 25
        }
    );
    assert_eq!(keygate::domain::quota::remaining(10, c), 5);
    let c = adjust(&s, SUBJECT, 10, QuotaChange::Add(-3)).await;
    assert_eq!(keygate::domain::quota::remaining(10, c), 2);
    assert_eq!(drain(&s, SUBJECT, 10, 2).await, 2);

    // Fewer remaining than the limit: the grant goes negative.
    let c = adjust(&s, "key:k2", 100, QuotaChange::SetRemaining(10)).await;
    assert_eq!(
        c,
        QuotaCounter {
            used: 0,
            granted: -90
        }
    );
    assert_eq!(drain(&s, "key:k2", 100, 10).await, 10);
    // With 10 used, 3 remain when the grant is 3 - 100 + 10.
    let c = adjust(&s, "key:k2", 100, QuotaChange::SetRemaining(3)).await;
    assert_eq!(
        c,
        QuotaCounter {
            used: 10,
            granted: -87
        }
    );
    assert_eq!(drain(&s, "key:k2", 100, 3).await, 3);

    let adjusts = actions(&s, "acme")
        .await
        .iter()
        .filter(|a| *a == "adjust_quota")
        .count();
    assert_eq!(adjusts, 5, "one event per adjustment");
}

/// No change without its event: an adjustment whose audit event cannot be stored (its id
/// is taken) leaves the counter as it was, and creates none.
async fn an_adjustment_whose_event_fails_changes_nothing(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_tenant(&s, "acme").await;
    let e = audit("adjust_quota", "acme", "k1");
    s.quotas
        .adjust_quota(SUBJECT, PERIOD, 10, QuotaChange::Add(5), at(5), e.clone())
        .await
        .unwrap();
    let again = s
        .quotas
        .adjust_quota(SUBJECT, PERIOD, 10, QuotaChange::Add(50), at(6), e.clone())
        .await;
    assert!(again.is_err());
    assert_eq!(counter(&s, SUBJECT).await, used(0, 5));
    let fresh = s
        .quotas
        .adjust_quota("key:k2", PERIOD, 10, QuotaChange::Add(50), at(6), e)
        .await;
    assert!(fresh.is_err());
    assert_eq!(counter(&s, "key:k2").await, None);
    assert_eq!(actions(&s, "acme").await, ["upsert_tenant", "adjust_quota"]);
}

async fn quota_counters_returns_exactly_the_pairs_asked_for(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    let p2 = at(DAY);
    for (subject, period, want) in [
        ("key:a", PERIOD, 8),
        ("key:a", p2, 16),
        ("key:b", PERIOD, 24),
    ] {
        let c = QuotaClaim {
            period_start: period,
            ..claim(subject, 1_000, want, want)
        };
        assert_eq!(s.quotas.claim_quota(&c).await.unwrap(), want);
    }
    let pair = |s: &str, p: UnixMillis| (s.to_owned(), p);
    let got = s
        .quotas
        .quota_counters(&[
            pair("key:a", PERIOD),
            pair("key:b", p2),
            pair("key:c", PERIOD),
        ])
        .await
        .unwrap();
    // (key:a, p2) and (key:b, PERIOD) exist but were not asked for.
    assert_eq!(
        got,
        HashMap::from([(
            pair("key:a", PERIOD),
            QuotaCounter {
                used: 8,
                granted: 0
            }
        )])
    );
    let got = s
        .quotas
        .quota_counters(&[pair("key:a", p2), pair("key:b", PERIOD)])
        .await
        .unwrap();
    assert_eq!(
        got,
        HashMap::from([
            (
                pair("key:a", p2),
                QuotaCounter {
                    used: 16,
                    granted: 0
                }
            ),
            (
                pair("key:b", PERIOD),
                QuotaCounter {
                    used: 24,
                    granted: 0
                }
            ),
        ])
    );
    assert!(s.quotas.quota_counters(&[]).await.unwrap().is_empty());
}

on_both_stores!(
    charge_spends_up_to_the_ceiling_and_no_further,
    claims_take_what_is_wanted_up_to_an_eighth_of_the_rest,
    a_claim_needing_more_than_remains_gets_nothing,
    concurrent_claims_hand_out_exactly_the_limit,
    release_gives_unspent_units_back,
    adjust_tops_up_or_sets_what_remains_with_an_event,
    an_adjustment_whose_event_fails_changes_nothing,
    quota_counters_returns_exactly_the_pairs_asked_for,
);
