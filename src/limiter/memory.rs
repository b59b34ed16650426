//! The in-memory limiter: exact for one replica, bounded in memory.
use super::{LimitOutcome, LimitScope, LimitStatus, RateLimiter, Window, SLOTS};
use crate::domain::{RateLimitSpec, UnixMillis};
use crate::error::Result;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Counters of one bucket (one key), one window per limit, decided and spent on all limits
/// at once under their shard's lock.
#[derive(Default)]
struct Bucket {
    /// The limits' names, in the order of `windows` (boxed slices: a bucket is kept in
    /// its shard's table by value, so each word here is one per key).
    names: Box<[Box<str>]>,
    windows: Box<[Window]>,
    /// The longest window among the limits (ms), for idleness.
    longest: i64,
    /// The latest call that touched the bucket (ms).
    touched: i64,
}

impl Bucket {
    /// A bucket idle for two of its longest windows (and a minute) holds nothing that
    /// matters any more: every slot expired a window after its last call.
    fn idle(&self, now: i64) -> bool {
        now - self.touched >= (self.longest * 2).max(60_000)
    }
}

/// Buckets whose names hash to one shard, and when the shard was last swept of idle ones.
#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<str>, Bucket, Fast>,
    /// Buckets left by the last sweep, and when it ran.
    swept_len: usize,
    swept_at: i64,
}

/// Bucket names are key ids and tenant ids, which no client chooses.
type Fast = foldhash::fast::RandomState;

const SHARDS: usize = 64;

/// The embedded limiter. Its buckets live in 64 shards of plain hash maps (a moka cache
/// cost ~330 bytes a bucket over its contents: measured). A shard drops idle buckets when
/// it has doubled since its last sweep or a minute has passed, and when it is full it
/// drops the eighth least recently used of its buckets.
pub struct MemoryLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: Fast,
    /// Most buckets a shard holds.
    per_shard: usize,
}

impl MemoryLimiter {
    /// Holds at most about `max_buckets` keys' counters (least recently used go first).
    pub fn new(max_buckets: u64) -> Self {
        MemoryLimiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Fast::default(),
            per_shard: usize::try_from(max_buckets)
                .unwrap_or(usize::MAX)
                .div_ceil(SHARDS)
                .max(1),
        }
    }

    fn shard_of(&self, bucket: &str) -> usize {
        (self.hasher.hash_one(bucket) as usize) % SHARDS
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Buckets held (for tests and metrics).
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).buckets.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// The bucket `name`, made for `limits` if new (making room first).
    fn bucket(
        &mut self,
        name: &str,
        limits: &[RateLimitSpec],
        now: i64,
        cap: usize,
    ) -> &mut Bucket {
        if !self.buckets.contains_key(name) {
            self.make_room(now, cap);
            self.buckets.insert(name.into(), Bucket::default());
        }
        let b = self
            .buckets
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"));
        align(b, limits);
        b
    }

    fn make_room(&mut self, now: i64, cap: usize) {
        let len = self.buckets.len();
        if len >= (self.swept_len * 2).max(64) || now - self.swept_at >= 60_000 || len >= cap {
            self.buckets.retain(|_, b| !b.idle(now));
            self.swept_len = self.buckets.len();
            self.swept_at = now;
        }
        if self.buckets.len() >= cap {
            // Full of live buckets: the least recently used eighth goes (those keys start
            // afresh: the one case where the limiter can admit more than a limit).
            let mut touched: Vec<i64> = self.buckets.values().map(|b| b.touched).collect();
            let nth = touched.len() / 8;
            let (_, &mut cut, _) = touched.select_nth_unstable(nth);
            // Those before `nth` are at most `cut`: the older all go, and of those touched
            // at `cut` itself only as many as make up the eighth.
            let older = touched[..nth].iter().filter(|&&t| t < cut).count();
            let mut ties = nth + 1 - older;
            self.buckets.retain(|_, b| {
                if b.touched < cut {
                    return false;
                }
                if b.touched == cut && ties > 0 {
                    ties -= 1;
                    return false;
                }
                true
            });
            self.swept_len = self.buckets.len();
        }
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

/// Decides and (unless `dry_run`) spends on `windows`, one per limit of `limits`; shared
/// by every limiter that decides in process (the Redis one rebuilds its windows from the
/// script's reply and runs the same arithmetic for the figures).
pub fn decide<L: std::borrow::Borrow<RateLimitSpec>>(
    windows: &mut [Window],
    limits: &[L],
    cost: u64,
    now: i64,
    dry_run: bool,
) -> LimitOutcome {
    for (w, l) in windows.iter_mut().zip(limits.iter().map(|l| l.borrow())) {
        w.expire(now, l.window.as_millis() as i64, SLOTS);
    }
    let refusing = windows
        .iter()
        .zip(limits.iter().map(|l| l.borrow()))
        .filter(|(w, l)| !w.admits(l.limit, cost))
        .max_by_key(|(w, l)| w.next_admission(now, l.limit, cost).unwrap_or(i64::MAX));
    if let Some((w, l)) = refusing {
        let retry_after = w
            .next_admission(now, l.limit, cost)
            .map(|at| Duration::from_millis((at - now).max(0) as u64));
        let status = LimitStatus {
            name: l.name.clone(),
            limit: l.limit,
            remaining: w.remaining(l.limit),
            reset: UnixMillis(w.reset(now)),
            retry_after,
        };
        return LimitOutcome {
            allowed: false,
            status: Some(status),
            fallback: false,
        };
    }
    if !dry_run {
        for w in windows.iter_mut() {
            w.spend(now, cost);
        }
    }
    let tightest = windows
        .iter()
        .zip(limits.iter().map(|l| l.borrow()))
        .min_by_key(|(w, l)| w.remaining(l.limit));
    let status = tightest.map(|(w, l)| LimitStatus {
        name: l.name.clone(),
        limit: l.limit,
        remaining: w.remaining(l.limit),
        reset: UnixMillis(w.reset(now)),
        retry_after: None,
    });
    LimitOutcome {
        allowed: true,
        status,
        fallback: false,
    }
}

/// Lines the stored windows up with the current limits (by name): a limit keeps its slots
/// (also when its window length changed: see `Window::expire`).
fn align(b: &mut Bucket, limits: &[RateLimitSpec]) {
    b.longest = limits
        .iter()
        .map(|l| l.window.as_millis() as i64)
        .max()
        .unwrap_or_default();
    if b.names.len() != limits.len() || b.names.iter().zip(limits).any(|(n, l)| **n != *l.name) {
        let names = std::mem::take(&mut b.names);
        let mut old = std::mem::take(&mut b.windows);
        b.windows = limits
            .iter()
            .map(|l| {
                names
                    .iter()
                    .position(|n| **n == *l.name)
                    .map(|i| std::mem::take(&mut old[i]))
                    .unwrap_or_default()
            })
            .collect();
        b.names = limits.iter().map(|l| l.name.as_str().into()).collect();
    }
}

impl MemoryLimiter {
    /// Decides on one bucket's limits.
    fn one(&self, s: &LimitScope<'_>, cost: u64, now: UnixMillis, dry_run: bool) -> LimitOutcome {
        let mut shard = self.lock(self.shard_of(s.bucket));
        let b = shard.bucket(s.bucket, s.limits, now.0, self.per_shard);
        b.touched = b.touched.max(now.0);
        decide(&mut b.windows, s.limits, cost, now.0, dry_run)
    }
}

#[async_trait::async_trait]
impl RateLimiter for MemoryLimiter {
    async fn settle(
        &self,
        _group: &str,
        scopes: &[LimitScope<'_>],
        at: UnixMillis,
        reserved: u64,
        actual: u64,
        overdraft: u64,
        now: UnixMillis,
    ) -> Result<u64> {
        let (back, extra) = (
            reserved.saturating_sub(actual),
            actual.saturating_sub(reserved),
        );
        let mut took = extra;
        for s in scopes.iter().filter(|s| !s.limits.is_empty()) {
            let mut shard = self.lock(self.shard_of(s.bucket));
            let b = if extra > 0 {
                let b = shard.bucket(s.bucket, s.limits, now.0, self.per_shard);
                b.touched = b.touched.max(now.0);
                b
            } else {
                match shard.buckets.get_mut(s.bucket) {
                    Some(b) => b,
                    // Forgotten (idle for two windows): nothing of the reservation counts.
                    None => continue,
                }
            };
            for spec in s.limits {
                let Some(i) = b.names.iter().position(|n| **n == *spec.name) else {
                    continue;
                };
                let w = &mut b.windows[i];
                let window_ms = spec.window.as_millis() as i64;
                if w.window_ms() != window_ms {
                    continue;
                }
                w.expire(now.0, window_ms, SLOTS);
                if back > 0 {
                    w.give_back(at.0, back, now.0);
                } else if extra > 0 {
                    took = took.min(w.charge_up_to(
                        now.0,
                        extra,
                        spec.limit.saturating_add(overdraft),
                    ));
                }
            }
        }
        Ok(took)
    }

    async fn check_scopes(
        &self,
        _group: &str,
        scopes: &[LimitScope<'_>],
        cost: u64,
        now: UnixMillis,
        dry_run: bool,
    ) -> Result<LimitOutcome> {
        // Each scope with its shard, worked out once.
        let mut scopes: Vec<(usize, &LimitScope<'_>)> = scopes
            .iter()
            .filter(|s| !s.limits.is_empty())
            .map(|s| (self.shard_of(s.bucket), s))
            .collect();
        match scopes.as_slice() {
            [] => {
                return Ok(LimitOutcome {
                    allowed: true,
                    status: None,
                    fallback: false,
                })
            }
            // The common case (a key without shared limits): one lock, no merging.
            [(_, only)] => return Ok(self.one(only, cost, now, dry_run)),
            _ => {}
        }
        // Shards are locked in one global order (by index), each once, so two calls that
        // share some (keys of one tenant) never wait on each other in a cycle.
        scopes.sort_by(|(i, a), (j, b)| (i, a.bucket).cmp(&(j, b.bucket)));
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = Vec::with_capacity(scopes.len());
        for &(i, _) in &scopes {
            if guards.last().is_none_or(|(g, _)| *g != i) {
                guards.push((i, self.lock(i)));
            }
        }
        // The windows of every bucket, decided together, then put back.
        let mut windows = Vec::new();
        let mut limits = Vec::new();
        for &(i, s) in &scopes {
            let b = locked(&mut guards, i).bucket(s.bucket, s.limits, now.0, self.per_shard);
            b.touched = b.touched.max(now.0);
            windows.extend(b.windows.iter_mut().map(std::mem::take));
            limits.extend(s.limits.iter());
        }
        let outcome = decide(&mut windows, &limits, cost, now.0, dry_run);
        let mut decided = windows.into_iter();
        for &(i, s) in &scopes {
            // Made afresh if another scope's new bucket in this shard made room by dropping
            // it (its windows are all here).
            let b = locked(&mut guards, i).bucket(s.bucket, s.limits, now.0, self.per_shard);
            b.windows = decided.by_ref().take(s.limits.len()).collect();
        }
        Ok(outcome)
    }
}

/// The locked shard `i` among `guards`.
fn locked<'g>(guards: &'g mut [(usize, MutexGuard<'_, Shard>)], i: usize) -> &'g mut Shard {
    guards
        .iter_mut()
        .find(|(g, _)| *g == i)
        .map(|(_, g)| &mut **g)
        .unwrap_or_else(|| unreachable!("every scope's shard is locked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, n: u64, secs: u64) -> RateLimitSpec {
        RateLimitSpec {
            name: name.into(),
            limit: n,
            window: Duration::from_secs(secs),
        }
    }

    async fn spend(l: &MemoryLimiter, bucket: &str, limits: &[RateLimitSpec], at: i64) -> bool {
        let s = [LimitScope { bucket, limits }];
        l.check_scopes("t", &s, 1, UnixMillis(at), false)
            .await
            .expect("memory never fails")
            .allowed
    }

    #[tokio::test]
    async fn an_idle_bucket_is_kept_for_two_of_its_longest_windows() {
        let l = MemoryLimiter::new(1_000_000);
        let hour = [limit("h", 1, 3600)];
        assert!(spend(&l, "k", &hour, 0).await);
        // Many new buckets later (sweeps run as shards grow and each minute), an hour's
        // limit still remembers its call: its slot counts for the whole hour.
        for i in 0..5_000 {
            spend(&l, &format!("other{i}"), &[limit("m", 5, 60)], 61_000 + i).await;
        }
        assert!(
            !spend(&l, "k", &hour, 3_599_000).await,
            "forgot the hour's call"
        );
        // Idle for two hours: gone, and the minute buckets idle for two minutes with it.
        spend(&l, "k", &hour, 3_599_000).await;
        for i in 0..200 {
            spend(
                &l,
                &format!("late{i}"),
                &[limit("m", 5, 60)],
                3_599_000 + 7_200_000 + i,
            )
            .await;
        }
        assert!(l.len() < 1_000, "idle buckets were not swept: {}", l.len());
    }

    #[tokio::test]
    async fn a_full_limiter_drops_its_least_recently_used_buckets() {
        let cap = 64 * 16;
        let l = MemoryLimiter::new(cap as u64);
        let minute = [limit("m", 1, 60)];
        assert!(spend(&l, "hot", &minute, 0).await);
        for i in 0..(cap * 4) as i64 {
            spend(&l, &format!("k{i}"), &minute, 1 + i / 100).await;
            // The hot key stays in use: it must never be the one dropped.
            if i % 50 == 0 {
                assert!(
                    !spend(&l, "hot", &minute, 1 + i / 100).await,
                    "hot key dropped at {i}"
                );
            }
        }
        assert!(l.len() <= cap, "{} buckets over a cap of {cap}", l.len());
    }

    #[tokio::test]
    async fn a_key_and_its_tenant_in_one_shard_are_decided_together() {
        let l = MemoryLimiter::new(1_000);
        let key = [limit("k", 10, 60)];
        let tenant = [limit("t", 3, 60)];
        // Whatever shards the names fall in (several pairs, some sharing a shard).
        for n in 0..40 {
            let (k, t) = (format!("key{n}"), format!("tenant:{n}"));
            let scopes = [
                LimitScope {
                    bucket: &k,
                    limits: &key,
                },
                LimitScope {
                    bucket: &t,
                    limits: &tenant,
                },
            ];
            let mut admitted = 0;
            for at in 0..5 {
                let o = l
                    .check_scopes("t", &scopes, 1, UnixMillis(at), false)
                    .await
                    .unwrap();
                admitted += u64::from(o.allowed);
            }
            assert_eq!(admitted, 3, "pair {n}");
        }
    }
}
