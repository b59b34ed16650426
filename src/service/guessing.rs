//! Key-guessing throttle: failed checks (unknown key, wrong secret, malformed key) are
//! counted per source address in a sliding window. The source is one the caller cannot
//! choose (`CheckInput::guess_source`): counting by a `client_ip` the caller sends would let
//! a guesser rotate it to escape, or name a victim's address to lock it out. Once an IP has failed `limit` times, its
//! checks of keys that are not already verified in the cache are refused
//! (`RATE_LIMITED`, limit name `failed_checks`, with `retry_after`) without a store lookup
//! or argon2 verify; keys in the cache keep working, so a legitimate client behind the
//! same address is not locked out by a guesser. Bounded: at most `max_sources` IPs are
//! tracked (least recently used dropped first).
use crate::domain::UnixMillis;
use crate::limiter::{LimitStatus, Window};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where checks without a source address are counted: together.
const UNKNOWN: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The name of the limit reported when an IP is throttled.
pub const LIMIT_NAME: &str = "failed_checks";

pub struct GuessThrottle {
    limit: u64,
    window_ms: i64,
    sources: moka::sync::Cache<IpAddr, Arc<Mutex<Window>>>,
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
            blocked,
        }
    }

    /// Counts one failed check from `ip`.
    pub fn failed(&self, ip: Option<IpAddr>, now: UnixMillis) {
        if self.limit == 0 {
            return;
        }
        let ip = ip.unwrap_or(UNKNOWN);
        let w = self.sources.get_with(ip, Default::default);
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.roll(now.0, self.window_ms);
        w.current = w.current.saturating_add(1);
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
        w.roll(now.0, self.window_ms);
        if w.admits(now.0, self.limit, 1) {
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
            t.failed(ip, now);
        }
        let s = t.throttled(ip, now).expect("throttled after 3 failures");
        assert_eq!(s.name, LIMIT_NAME);
        let retry = s.retry_after.unwrap();
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(120));
        assert!(t.throttled(other, now).is_none(), "per IP");
        assert!(t.throttled(None, now).is_none());
        for _ in 0..3 {
            t.failed(None, now);
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
            off.failed(ip, now);
        }
        assert!(off.throttled(ip, now).is_none());
    }
}
