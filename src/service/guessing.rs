//! Key-guessing throttle: failed checks (unknown key, wrong secret, malformed key) are
//! counted per source address in a sliding window, and per source and lookup id. The
//! source is one the caller cannot choose (`CheckInput::guess_source`): counting by a
//! `client_ip` the caller sends would let a guesser rotate it to escape, or name a victim's
//! address to lock it out.
//!
//! Once a source has failed `limit` times, it is throttled: a check of a key not already
//! verified in the cache may still try, but only a lookup id that exists and has failed
//! fewer than [`PER_KEY_FAILURES`] times from that source gets an argon2 verify; anything
//! else is refused (`RATE_LIMITED`, limit name `failed_checks`, with `retry_after`). So a
//! guesser behind a shared address (a NAT, one Envoy, no address at all) cannot lock a
//! legitimate client's valid key out, and what it can still make Keygate hash is bounded
//! by the lookup ids it knows — which are part of keys it has seen. Bounded memory: at most
//! `max_sources` sources and as many (source, lookup id) pairs are tracked (least recently
//! used dropped first).
use crate::domain::UnixMillis;
use crate::limiter::{LimitStatus, Window};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Slots per throttle window: a precision of a sixth of the window is plenty here, and
/// keeps each tracked source to at most 7 slots.
const SLOTS: i64 = 6;

/// Where checks without a source address are counted: together.
const UNKNOWN: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The name of the limit reported when an IP is throttled.
pub const LIMIT_NAME: &str = "failed_checks";

/// Failures of one lookup id from one throttled source after which that id, too, is
/// refused from there without a verify: enough for a client's own typos, too few to be
/// worth guessing with.
pub const PER_KEY_FAILURES: u64 = 3;

pub struct GuessThrottle {
    limit: u64,
    window_ms: i64,
    sources: moka::sync::Cache<IpAddr, Arc<Mutex<Window>>>,
    /// Failures per (source, lookup id).
    keys: moka::sync::Cache<(IpAddr, Box<str>), Arc<Mutex<Window>>>,
    blocked: Option<prometheus::IntCounter>,
}

impl GuessThrottle {
    /// `limit` failures per `window`; `limit` 0 turns the throttle off.
    pub fn new(
        limit: u64,
        window: Duration,
        max_sources: u64,
        blocked: Option<prometheus::IntCounter>,
    ) -> Self {
        GuessThrottle {
            limit,
            window_ms: window.as_millis().max(1) as i64,
            sources: moka::sync::Cache::builder()
                .max_capacity(max_sources)
                // Counts older than two windows no longer matter.
                .time_to_idle(window * 2)
                .build(),
            keys: moka::sync::Cache::builder()
                .max_capacity(max_sources)
                .time_to_idle(window * 2)
                .build(),
            blocked,
        }
    }

    /// Counts one failed check from `ip`, of `lookup_id` when the key had one.
    pub fn failed(&self, ip: Option<IpAddr>, lookup_id: Option<&str>, now: UnixMillis) {
        if self.limit == 0 {
            return;
        }
        let ip = ip.unwrap_or(UNKNOWN);
        self.count(&self.sources.get_with(ip, Default::default), now);
        if let Some(id) = lookup_id {
            let key = (ip, Box::from(id));
            self.count(&self.keys.get_with(key, Default::default), now);
        }
    }

    fn count(&self, w: &Mutex<Window>, now: UnixMillis) {
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.expire(now.0, self.window_ms, SLOTS);
        w.spend(now.0, 1);
    }

    /// Whether `lookup_id` has failed [`PER_KEY_FAILURES`] times from `ip` in the window.
    pub fn key_exhausted(&self, ip: Option<IpAddr>, lookup_id: &str, now: UnixMillis) -> bool {
        if self.limit == 0 {
            return false;
        }
        // The tuple key needs an owned id; this runs only for throttled sources.
        let Some(w) = self
            .keys
            .get(&(ip.unwrap_or(UNKNOWN), Box::from(lookup_id)))
        else {
            return false;
        };
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.expire(now.0, self.window_ms, SLOTS);
        !w.admits(PER_KEY_FAILURES, 1)
    }

    /// Counts a check refused because of [`throttled`](Self::throttled).
    pub fn refused(&self) {
        if let Some(c) = &self.blocked {
            c.inc();
        }
    }

    /// When `ip` has used up its failures: the status to report (with `retry_after`).
    pub fn throttled(&self, ip: Option<IpAddr>, now: UnixMillis) -> Option<LimitStatus> {
        if self.limit == 0 {
            return None;
        }
        let w = self.sources.get(&ip.unwrap_or(UNKNOWN))?;
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.expire(now.0, self.window_ms, SLOTS);
        if w.admits(self.limit, 1) {
            return None;
        }
        let retry = w
            .next_admission(now.0, self.limit, 1)
            .map(|at| Duration::from_millis((at - now.0).max(0) as u64));
        Some(LimitStatus {
            name: LIMIT_NAME.into(),
            limit: self.limit,
            remaining: 0,
            reset: UnixMillis(w.reset(now.0)),
            retry_after: retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_is_throttled_after_its_failures_and_recovers() {
        let t = GuessThrottle::new(3, Duration::from_secs(60), 100, None);
        let ip: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let other: Option<IpAddr> = Some("192.0.2.8".parse().unwrap());
        let now = UnixMillis(1_000_000_020_000);
        for _ in 0..3 {
            assert!(t.throttled(ip, now).is_none());
            t.failed(ip, None, now);
        }
        let s = t.throttled(ip, now).expect("throttled after 3 failures");
        assert_eq!(s.name, LIMIT_NAME);
        let retry = s.retry_after.unwrap();
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(120));
        assert!(t.throttled(other, now).is_none(), "per IP");
        assert!(t.throttled(None, now).is_none());
        for _ in 0..3 {
            t.failed(None, None, now);
        }
        assert!(
            t.throttled(None, now).is_some(),
            "no source address is one shared source, not a way around the throttle"
        );
        assert!(
            t.throttled(ip, now.plus(retry)).is_none(),
            "free again at retry_after"
        );
        let off = GuessThrottle::new(0, Duration::from_secs(60), 100, None);
        for _ in 0..10 {
            off.failed(ip, Some("abc"), now);
        }
        assert!(off.throttled(ip, now).is_none());
        assert!(!off.key_exhausted(ip, "abc", now));
    }

    #[test]
    fn a_lookup_id_is_exhausted_per_source_after_its_own_failures() {
        let t = GuessThrottle::new(100, Duration::from_secs(60), 100, None);
        let ip: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let now = UnixMillis(1_000_000_020_000);
        for _ in 0..PER_KEY_FAILURES {
            assert!(!t.key_exhausted(ip, "lookup000001", now));
            t.failed(ip, Some("lookup000001"), now);
        }
        assert!(t.key_exhausted(ip, "lookup000001", now));
        assert!(!t.key_exhausted(ip, "lookup000002", now), "per lookup id");
        assert!(!t.key_exhausted(None, "lookup000001", now), "per source");
        assert!(!t.key_exhausted(ip, "lookup000001", now.plus(Duration::from_secs(121))));
    }
}
