//! `memory` — what one cached key costs in memory, part by part, measured in this process
//! (RSS growth over `--keys` entries, after the structure's own bookkeeping has run):
//! - `moka floor`: a moka cache configured as the key cache (capacity, TTL, hasher), with
//!   an empty value — what moka itself costs an entry;
//! - `key cache`: Keygate's `KeyCache` holding the compact entry of a key like the
//!   suite's (one limit, no scopes, allowlist or metadata);
//! - `limiter, one call`: the in-memory limiter's bucket for a key with one call;
//! - `limiter, 60 slots`: the same after a call in each second of its minute (every slot
//!   of the sliding window in use).
//!
//! The server's own figure (`check_many_keys`) adds what these leave out: the SQLite and
//! usage buffers, and the allocator's slack between loads.
use crate::harness::report::write_json;
use crate::harness::BoxError;
use crate::settings::Settings;
use keygate::cache::{self, KeyCache};
use keygate::config::CacheConfig;
use keygate::domain::{KeyRecord, RateLimitSpec, UnixMillis};
use keygate::limiter::{memory::MemoryLimiter, LimitScope, RateLimiter};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn rss() -> u64 {
    crate::harness::server::rss_bytes(std::process::id()).unwrap_or(0)
}

fn minute() -> Vec<RateLimitSpec> {
    vec![RateLimitSpec {
        name: "bench".into(),
        limit: 1_000_000_000,
        window: Duration::from_secs(60),
    }]
}

/// A key as the suite's `check_many_keys` stores it.
fn record(i: usize) -> KeyRecord {
    KeyRecord {
        id: format!("key_{i:020}"),
        tenant_id: "bench".into(),
        name: "bench".into(),
        environment: String::new(),
        lookup_id: format!("{i:016}"),
        key_prefix: "kg_".into(),
        display_prefix: format!("{i:08}"),
        scopes: Default::default(),
        ip_allowlist: Default::default(),
        rate_limits: minute(),
        quota: None,
        metadata: Default::default(),
        enabled: true,
        create_time: UnixMillis(1),
        update_time: UnixMillis(1),
        expire_time: None,
        last_used_time: None,
        use_count: 0,
        revoke_time: None,
        revoke_reason: None,
        rotated_from: None,
    }
}

/// Bytes of RSS per entry that `fill` adds. Every structure measured stays alive to the
/// end: memory one of them freed would be reused by the next and hide its cost.
async fn per_entry<F: std::future::Future<Output = ()>>(n: usize, fill: F) -> f64 {
    let before = rss();
    fill.await;
    rss().saturating_sub(before) as f64 / n as f64
}

pub async fn run(s: &Settings) -> Result<(), BoxError> {
    let n = s.many_keys;
    let cfg = CacheConfig {
        max_entries: (2 * n) as u64,
        ttl_secs: 3600,
        ..CacheConfig::default()
    };
    let mut rows: Vec<(&str, f64)> = Vec::new();

    let floor: moka::future::Cache<cache::KeyDigest, Arc<()>, foldhash::fast::RandomState> =
        moka::future::Cache::builder()
            .max_capacity(cfg.max_entries)
            .time_to_live(Duration::from_secs(cfg.ttl_secs))
            .build_with_hasher(Default::default());
    let b = per_entry(n, async {
        for i in 0..n {
            floor
                .insert(cache::digest(&format!("kg_{i}")), Arc::new(()))
                .await;
        }
        floor.run_pending_tasks().await;
    })
    .await;
    rows.push(("moka floor", b));

    let keys = KeyCache::new(&cfg);
    let b = per_entry(n, async {
        for i in 0..n {
            let r = record(i);
            let lookup = r.lookup_id.clone();
            let digest = cache::digest(&format!("kg_{i}"));
            let _ = keys
                .key(digest, &lookup, || async move { Ok(Some(r)) })
                .await;
        }
        keys.entries().await;
    })
    .await;
    rows.push(("key cache", b));

    let limits = minute();
    let limiter = MemoryLimiter::new((2 * n) as u64);
    let spend = |i: usize, at: i64| {
        let (limiter, limits) = (&limiter, &limits);
        async move {
            let bucket = format!("key_{i:020}");
            let scope = [LimitScope {
                bucket: &bucket,
                limits,
            }];
            let _ = limiter
                .check_scopes("bench", &scope, 1, UnixMillis(at), false)
                .await;
        }
    };
    let t0 = 1_800_000_000_000;
    let b = per_entry(n, async {
        for i in 0..n {
            spend(i, t0).await;
        }
    })
    .await;
    rows.push(("limiter, one call", b));
    let b = per_entry(n, async {
        for second in 1..60 {
            for i in 0..n {
                spend(i, t0 + second * 1000).await;
            }
        }
    })
    .await;
    rows.push(("limiter, 60 slots", rows[2].1 + b));

    println!("\nmemory: RSS growth per entry over {n} entries, in this process");
    for (what, b) in &rows {
        println!("  {what:<20} {b:>7.0} B");
    }
    let json = json!({
        "entries": n,
        "bytes_per_entry": rows.iter().map(|(w, b)| json!({"part": w, "bytes": b})).collect::<Vec<_>>(),
    });
    write_json("memory.json", &json)?;
    drop((floor, keys, limiter));
    Ok(())
}
