//! `UsageStore`: flushed counts add up per (key, bucket, endpoint, reason), read back
//! summed, and pruned by age.
use super::*;
use crate::on_both_stores;
use crate::stores_or_skip;
use keygate::store::{BucketSize, KeyUse, UsageBatch, UsageCell, UsageQuery, UsageRow};
use std::collections::HashMap;

fn cell(
    key_id: &str,
    bucket: UnixMillis,
    endpoint: &str,
    reason: &'static str,
    count: u64,
    cost: u64,
) -> UsageCell {
    UsageCell {
        key_id: key_id.to_owned(),
        tenant_id: "acme".to_owned(),
        bucket,
        endpoint: endpoint.to_owned(),
        reason,
        count,
        cost,
    }
}

fn row(bucket: UnixMillis, endpoint: &str, reason: &str, count: u64, cost: u64) -> UsageRow {
    UsageRow {
        bucket,
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
        count,
        cost,
    }
}

fn tenant_query(size: BucketSize, start: UnixMillis, end: UnixMillis) -> UsageQuery {
    UsageQuery {
        tenant_id: "acme".into(),
        key_id: None,
        size,
        start,
        end,
    }
}

/// Rows in a stable order (the store orders by bucket and endpoint, not by reason).
async fn usage(s: &Stores, q: &UsageQuery) -> Vec<UsageRow> {
    let mut rows = s.usage.usage(q).await.unwrap();
    rows.sort_by(|a, b| {
        (a.bucket, &a.endpoint, &a.reason).cmp(&(b.bucket, &b.endpoint, &b.reason))
    });
    rows
}

async fn seed_keys(s: &Stores, ids: &[&str]) {
    seed_tenant(s, "acme").await;
    for id in ids {
        s.keys
            .insert_key(key("acme", id), 0, T0, audit("create_key", "acme", id))
            .await
            .unwrap();
    }
}

async fn recording_twice_adds_counts_uses_and_moves_last_used_forward(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_keys(&s, &["k1", "k2"]).await;
    let batch = |last_used: i64| UsageBatch {
        keys: vec![
            KeyUse {
                key_id: "k1".into(),
                last_used: at(last_used),
                uses: 3,
            },
            KeyUse {
                key_id: "k2".into(),
                last_used: at(last_used + 1),
                uses: 1,
            },
        ],
        minutes: vec![
            cell("k1", at(0), "GET /docs", "OK", 2, 4),
            cell("k1", at(0), "GET /docs", "RATE_LIMITED", 1, 0),
            cell("k2", at(0), "GET /docs", "OK", 1, 1),
        ],
        days: vec![
            cell("k1", at(0), "GET /docs", "OK", 2, 4),
            cell("k1", at(0), "GET /docs", "RATE_LIMITED", 1, 0),
            cell("k2", at(0), "GET /docs", "OK", 1, 1),
        ],
    };
    s.usage.record_usage(&batch(5_000)).await.unwrap();
    let k1 = s.keys.get_key("k1").await.unwrap().unwrap();
    assert_eq!((k1.use_count, k1.last_used_time), (3, Some(at(5_000))));
    // The second flush is older: counts add, last use does not go back.
    s.usage.record_usage(&batch(1_000)).await.unwrap();
    let k1 = s.keys.get_key("k1").await.unwrap().unwrap();
    assert_eq!((k1.use_count, k1.last_used_time), (6, Some(at(5_000))));
    let k2 = s.keys.get_key("k2").await.unwrap().unwrap();
    assert_eq!((k2.use_count, k2.last_used_time), (2, Some(at(5_001))));
    s.usage.record_usage(&batch(9_000)).await.unwrap();
    let k1 = s.keys.get_key("k1").await.unwrap().unwrap();
    assert_eq!((k1.use_count, k1.last_used_time), (9, Some(at(9_000))));

    let expected = [
        row(at(0), "GET /docs", "OK", 9, 15),
        row(at(0), "GET /docs", "RATE_LIMITED", 3, 0),
    ];
    for size in [BucketSize::Minute, BucketSize::Day] {
        assert_eq!(
            usage(&s, &tenant_query(size, at(0), at(DAY))).await,
            expected
        );
    }
}

async fn usage_sums_over_keys_per_bucket_endpoint_and_reason(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_keys(&s, &["k1", "k2"]).await;
    let mut other = cell("x1", at(0), "GET /docs", "OK", 100, 100);
    other.tenant_id = "other".into();
    let batch = UsageBatch {
        keys: vec![],
        minutes: vec![
            cell("k1", at(0), "GET /docs", "OK", 2, 2),
            cell("k2", at(0), "GET /docs", "OK", 3, 6),
            cell("k2", at(0), "GET /docs", "SCOPE_DENIED", 1, 0),
            cell("k1", at(0), "POST /docs", "OK", 1, 5),
            cell("k1", at(MINUTE), "GET /docs", "OK", 4, 4),
            cell("k1", at(2 * MINUTE), "GET /docs", "OK", 7, 7),
            other.clone(),
        ],
        days: vec![cell("k1", at(0), "GET /docs", "OK", 50, 50), other],
    };
    s.usage.record_usage(&batch).await.unwrap();

    let minutes = tenant_query(BucketSize::Minute, at(0), at(2 * MINUTE));
    assert_eq!(
        usage(&s, &minutes).await,
        [
            row(at(0), "GET /docs", "OK", 5, 8),
            row(at(0), "GET /docs", "SCOPE_DENIED", 1, 0),
            row(at(0), "POST /docs", "OK", 1, 5),
            // [start, end): the bucket at `end` is out.
            row(at(MINUTE), "GET /docs", "OK", 4, 4),
        ]
    );
    let k2 = UsageQuery {
        key_id: Some("k2".into()),
        ..minutes.clone()
    };
    assert_eq!(
        usage(&s, &k2).await,
        [
            row(at(0), "GET /docs", "OK", 3, 6),
            row(at(0), "GET /docs", "SCOPE_DENIED", 1, 0),
        ]
    );
    let later = tenant_query(BucketSize::Minute, at(MINUTE), at(DAY));
    assert_eq!(
        usage(&s, &later).await,
        [
            row(at(MINUTE), "GET /docs", "OK", 4, 4),
            row(at(2 * MINUTE), "GET /docs", "OK", 7, 7),
        ]
    );
    // The day table is its own: only what was written there.
    assert_eq!(
        usage(&s, &tenant_query(BucketSize::Day, at(0), at(DAY))).await,
        [row(at(0), "GET /docs", "OK", 50, 50)]
    );
    let nobody = UsageQuery {
        key_id: Some("x1".into()),
        ..minutes
    };
    assert!(
        usage(&s, &nobody).await.is_empty(),
        "another tenant's key is not acme's"
    );
}

async fn uses_in_day_totals_each_key_in_one_day(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_keys(&s, &["k1", "k2", "k3"]).await;
    let batch = UsageBatch {
        keys: vec![],
        minutes: vec![cell("k3", at(0), "GET /", "OK", 40, 40)],
        days: vec![
            cell("k1", at(0), "GET /a", "OK", 2, 2),
            cell("k1", at(0), "GET /b", "OK", 3, 3),
            cell("k1", at(0), "GET /a", "RATE_LIMITED", 4, 0),
            cell("k1", at(DAY), "GET /a", "OK", 100, 100),
            cell("k2", at(0), "GET /a", "OK", 1, 1),
        ],
    };
    s.usage.record_usage(&batch).await.unwrap();
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let got = s
        .usage
        .uses_in_day(&ids(&["k1", "k2", "k3", "k9"]), at(0))
        .await
        .unwrap();
    assert_eq!(
        got,
        HashMap::from([("k1".to_string(), 9), ("k2".to_string(), 1)]),
        "keys without uses that day are absent (k3's are only in the minute table)"
    );
    let got = s.usage.uses_in_day(&ids(&["k1"]), at(DAY)).await.unwrap();
    assert_eq!(got, HashMap::from([("k1".to_string(), 100)]));
    assert!(s.usage.uses_in_day(&[], at(0)).await.unwrap().is_empty());
}

async fn prune_deletes_only_buckets_before_the_bounds(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    seed_keys(&s, &["k1"]).await;
    let batch = UsageBatch {
        keys: vec![],
        minutes: (0..4)
            .flat_map(|m| {
                [
                    cell("k1", at(m * MINUTE), "GET /", "OK", 1, 1),
                    cell("k1", at(m * MINUTE), "GET /", "RATE_LIMITED", 1, 0),
                ]
            })
            .collect(),
        days: (0..3)
            .map(|d| cell("k1", at(d * DAY), "GET /", "OK", 1, 1))
            .collect(),
    };
    s.usage.record_usage(&batch).await.unwrap();
    // Minutes 0 and 1 (two rows each) and day 0 are older than the bounds.
    assert_eq!(
        s.usage.prune_usage(at(2 * MINUTE), at(DAY)).await.unwrap(),
        5
    );
    let buckets = |rows: Vec<UsageRow>| {
        let mut b: Vec<i64> = rows.iter().map(|r| r.bucket.0 - T0.0).collect();
        b.dedup();
        b
    };
    let all_minutes = tenant_query(BucketSize::Minute, at(0), at(10 * DAY));
    assert_eq!(
        buckets(usage(&s, &all_minutes).await),
        [2 * MINUTE, 3 * MINUTE]
    );
    let all_days = tenant_query(BucketSize::Day, at(0), at(10 * DAY));
    assert_eq!(buckets(usage(&s, &all_days).await), [DAY, 2 * DAY]);
    // Nothing older is left: pruning again deletes nothing.
    assert_eq!(
        s.usage.prune_usage(at(2 * MINUTE), at(DAY)).await.unwrap(),
        0
    );
}

/// A flush of many keys goes out in statements of a few fixed sizes: a batch whose size is
/// none of them lands whole, every row with its own counts, and a second flush adds to it.
async fn a_large_batch_of_odd_size_lands_whole(db: Db) {
    let (_db, s) = stores_or_skip!(db);
    // 341 keys = 256 + 64 + 16 + 4 + 1: every statement size at least once.
    let ids: Vec<String> = (0..341).map(|i| format!("k{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    seed_keys(&s, &refs).await;
    let batch = UsageBatch {
        keys: ids
            .iter()
            .enumerate()
            .map(|(i, id)| KeyUse {
                key_id: id.clone(),
                last_used: at(i as i64),
                uses: i as u64 + 1,
            })
            .collect(),
        // 682 rows: each key's OK and RATE_LIMITED cells.
        minutes: ids
            .iter()
            .enumerate()
            .flat_map(|(i, id)| {
                [
                    cell(id, at(0), "GET /", "OK", i as u64 + 1, 2),
                    cell(id, at(0), "GET /", "RATE_LIMITED", 1, 0),
                ]
            })
            .collect(),
        days: ids
            .iter()
            .enumerate()
            .map(|(i, id)| cell(id, at(0), "GET /", "OK", i as u64 + 1, 2))
            .collect(),
    };
    for _ in 0..2 {
        s.usage.record_usage(&batch).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let k = s.keys.get_key(id).await.unwrap().unwrap();
        assert_eq!(
            (k.use_count, k.last_used_time),
            (2 * (i as u64 + 1), Some(at(i as i64))),
            "{id}"
        );
    }
    // Sum over i of 2 * (i + 1) for 341 keys, and their costs and refusals.
    let ok: u64 = (1..=341).map(|n| 2 * n).sum();
    assert_eq!(
        usage(&s, &tenant_query(BucketSize::Minute, at(0), at(MINUTE))).await,
        [
            row(at(0), "GET /", "OK", ok, 2 * 2 * 341),
            row(at(0), "GET /", "RATE_LIMITED", 2 * 341, 0),
        ]
    );
    assert_eq!(
        usage(&s, &tenant_query(BucketSize::Day, at(0), at(DAY))).await,
        [row(at(0), "GET /", "OK", ok, 2 * 2 * 341)]
    );
    let one = UsageQuery {
        key_id: Some("k100".into()),
        ..tenant_query(BucketSize::Minute, at(0), at(MINUTE))
    };
    assert_eq!(
        usage(&s, &one).await,
        [
            row(at(0), "GET /", "OK", 2 * 101, 4),
            row(at(0), "GET /", "RATE_LIMITED", 2, 0),
        ]
    );
}

on_both_stores!(
    recording_twice_adds_counts_uses_and_moves_last_used_forward,
    usage_sums_over_keys_per_bucket_endpoint_and_reason,
    uses_in_day_totals_each_key_in_one_day,
    prune_deletes_only_buckets_before_the_bounds,
    a_large_batch_of_odd_size_lands_whole,
);
