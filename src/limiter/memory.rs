//! The in-memory limiter: exact for one replica, bounded in memory.
use super::{LimitOutcome, LimitScope, LimitStatus, RateLimiter, Window, SLOTS};
use crate::domain::{RateLimitSpec, UnixMillis};
use crate::error::Result;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters of one bucket (one key), one window per limit, guarded together so a call is
/// decided and spent on all limits atomically.
#[derive(Default)]
struct Bucket {
    /// The limits' names, in the order of `windows`.
    names: Vec<String>,
    windows: Vec<Window>,
    /// The longest window among the limits, for expiry.
    longest: Duration,
}

struct Idle;

impl moka::Expiry<String, Arc<Mutex<Bucket>>> for Idle {
    fn expire_after_read(
        &self,
        _: &String,
        v: &Arc<Mutex<Bucket>>,
        _: std::time::Instant,
        _: Option<Duration>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(ttl(v))
    }
    fn expire_after_create(
        &self,
        _: &String,
        v: &Arc<Mutex<Bucket>>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(ttl(v))
    }
}

/// A bucket idle for two of its longest windows holds nothing that matters any more.
fn ttl(v: &Arc<Mutex<Bucket>>) -> Duration {
    let longest = v
        .lock()
        .map(|b| b.longest)
        .unwrap_or(Duration::from_secs(60));
    (longest * 2).max(Duration::from_secs(60))
}

/// The embedded limiter.
pub struct MemoryLimiter {
    buckets: moka::sync::Cache<String, Arc<Mutex<Bucket>>>,
}

impl MemoryLimiter {
    /// Holds at most `max_buckets` keys' counters (least recently used go first).
    pub fn new(max_buckets: u64) -> Self {
        MemoryLimiter {
            buckets: moka::sync::Cache::builder()
                .max_capacity(max_buckets)
                .expire_after(Idle)
                .build(),
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

impl Bucket {
    /// A bucket for `limits`, so its first expiry already knows its longest window.
    fn for_limits(limits: &[RateLimitSpec]) -> Arc<Mutex<Bucket>> {
        let mut b = Bucket::default();
        align(&mut b, limits);
        Arc::new(Mutex::new(b))
    }
}

/// Lines the stored windows up with the current limits (by name): a limit keeps its slots
/// (also when its window length changed: see `Window::expire`). Returns whether the
/// longest window changed, so the caller can renew the bucket's expiry.
fn align(b: &mut Bucket, limits: &[RateLimitSpec]) -> bool {
    let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
    let renewed = longest != b.longest;
    b.longest = longest;
    if b.names.len() != limits.len() || b.names.iter().zip(limits).any(|(n, l)| *n != l.name) {
        let names = std::mem::take(&mut b.names);
        let mut old = std::mem::take(&mut b.windows);
        b.windows = limits
            .iter()
            .map(|l| {
                names
                    .iter()
                    .position(|n| *n == l.name)
                    .map(|i| std::mem::take(&mut old[i]))
                    .unwrap_or_default()
            })
            .collect();
        b.names = limits.iter().map(|l| l.name.clone()).collect();
    }
    renewed
}

impl MemoryLimiter {
    /// Decides on one bucket's limits.
    fn one(&self, s: &LimitScope<'_>, cost: u64, now: UnixMillis, dry_run: bool) -> LimitOutcome {
        let entry = self
            .buckets
            .get_with_by_ref(s.bucket, || Bucket::for_limits(s.limits));
        let mut b = entry.lock().unwrap_or_else(|p| p.into_inner());
        let renew = align(&mut b, s.limits);
        let outcome = decide(&mut b.windows, s.limits, cost, now.0, dry_run);
        drop(b);
        if renew {
            self.renew(s.bucket, entry);
        }
        outcome
    }

    /// Sets a bucket's expiry again after its longest window changed (moka computes it on
    /// insert and read, from the bucket as it was then).
    fn renew(&self, bucket: &str, entry: Arc<Mutex<Bucket>>) {
        self.buckets.insert(bucket.to_owned(), entry);
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
            let entry = if extra > 0 {
                self.buckets
                    .get_with_by_ref(s.bucket, || Bucket::for_limits(s.limits))
            } else {
                match self.buckets.get(s.bucket) {
                    Some(e) => e,
                    // Forgotten (idle for two windows): nothing of the reservation counts.
                    None => continue,
                }
            };
            let mut b = entry.lock().unwrap_or_else(|p| p.into_inner());
            for spec in s.limits {
                let Some(i) = b.names.iter().position(|n| *n == spec.name) else {
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
        let mut scopes: Vec<&LimitScope<'_>> =
            scopes.iter().filter(|s| !s.limits.is_empty()).collect();
        match scopes.as_slice() {
            [] => {
                return Ok(LimitOutcome {
                    allowed: true,
                    status: None,
                    fallback: false,
                })
            }
            // The common case (a key without shared limits): one lock, no merging.
            [only] => return Ok(self.one(only, cost, now, dry_run)),
            _ => {}
        }
        // Buckets are locked in one global order (by name), so two calls that share some
        // buckets (keys of one tenant) never wait on each other in a cycle.
        scopes.sort_by(|a, b| a.bucket.cmp(b.bucket));
        let entries: Vec<_> = scopes
            .iter()
            .map(|s| {
                self.buckets
                    .get_with_by_ref(s.bucket, || Bucket::for_limits(s.limits))
            })
            .collect();
        let mut guards: Vec<_> = entries
            .iter()
            .map(|e| e.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        // The windows of every bucket, decided together, then put back.
        let mut windows = Vec::new();
        let mut limits = Vec::new();
        let mut renew = Vec::new();
        for (i, (b, s)) in guards.iter_mut().zip(&scopes).enumerate() {
            if align(b, s.limits) {
                renew.push(i);
            }
            windows.append(&mut b.windows);
            limits.extend(s.limits.iter());
        }
        let outcome = decide(&mut windows, &limits, cost, now.0, dry_run);
        let mut decided = windows.into_iter();
        for (b, s) in guards.iter_mut().zip(&scopes) {
            b.windows = decided.by_ref().take(s.limits.len()).collect();
        }
        drop(guards);
        for i in renew {
            self.renew(scopes[i].bucket, entries[i].clone());
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_bucket_lives_for_two_of_its_longest_windows() {
        let hour = RateLimitSpec {
            name: "h".into(),
            limit: 10,
            window: Duration::from_secs(3600),
        };
        // moka takes a new entry's expiry from the bucket as created: it must already
        // know its window, or a one-call key would be forgotten after a minute.
        assert_eq!(ttl(&Bucket::for_limits(&[hour])), Duration::from_secs(7200));
    }
}
