//! Key events after they are written: delivered to webhooks (signed, at least once, in
//! order per key, by one replica at a time), followed by `WatchEvents` from a cursor, and
//! emitted for what happens at run time (a limit exceeded, a quota threshold, an expiry).
//!
//! Changes write their events in their own transaction (`store::sea::events`); nothing
//! here can lose one: a delivery is a row until it is delivered or given up, and a
//! follower resumes from the last seq it saw.
mod deliver;
mod emit;
mod follow;
mod sweep;

pub use deliver::Deliverer;
pub use emit::Emitter;
pub use follow::follow;
pub use sweep::Sweeper;

use crate::config_section::config_section;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

config_section! {
    /// `[events]`: webhook delivery and runtime events.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct EventsConfig {
        /// Deliver webhooks from this replica (`KEYGATE_EVENTS__DELIVER`). Events are
        /// written whatever this says; a replica that does not deliver leaves it to others.
        pub deliver: bool = true,
        /// How long a delivery is retried before it is given up, in seconds
        /// (`KEYGATE_EVENTS__RETRY_FOR_SECS`).
        pub retry_for_secs: u64 = 86400,
        /// The first retry's delay, in milliseconds; each next one doubles, with jitter
        /// (`KEYGATE_EVENTS__RETRY_INITIAL_MS`).
        pub retry_initial_ms: u64 = 5000,
        /// The longest delay between retries, in milliseconds
        /// (`KEYGATE_EVENTS__RETRY_MAX_MS`).
        pub retry_max_ms: u64 = 3600000,
        /// Time one delivery attempt may take, connect to status line, in milliseconds
        /// (`KEYGATE_EVENTS__REQUEST_TIMEOUT_MS`).
        pub request_timeout_ms: u64 = 10000,
        /// How often the deliverer and `WatchEvents` look for other replicas' events, in
        /// milliseconds (this replica's own wake them at once) (`KEYGATE_EVENTS__POLL_MS`).
        pub poll_ms: u64 = 1000,
        /// Deliveries one replica attempts at once (`KEYGATE_EVENTS__CONCURRENCY`).
        pub concurrency: usize = 16,
        /// `WatchEvents` streams one replica serves at once; more are refused with
        /// RESOURCE_EXHAUSTED (`KEYGATE_EVENTS__MAX_WATCHERS`).
        pub max_watchers: usize = 256,
        /// Allow endpoints on loopback, private and link-local addresses
        /// (`KEYGATE_EVENTS__ALLOW_PRIVATE_TARGETS`). Off: a tenant admin cannot make
        /// Keygate call into the operator's network.
        pub allow_private_targets: bool = false,
        /// Extra PEM roots trusted for https endpoints, beside Mozilla's
        /// (`KEYGATE_EVENTS__CA_PATH`).
        pub ca_path: Option<PathBuf>,
        /// `key.expiring` is sent this many seconds before a key expires
        /// (`KEYGATE_EVENTS__EXPIRING_LEAD_SECS`).
        pub expiring_lead_secs: u64 = 604800,
        /// How often the expiry sweep runs, in seconds (`KEYGATE_EVENTS__SWEEP_SECS`).
        pub sweep_secs: u64 = 60,
        /// Events (and finished deliveries) are kept this many days
        /// (`KEYGATE_EVENTS__RETENTION_DAYS`); pending deliveries are kept until done.
        pub retention_days: u64 = 30,
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<()> {
        let at_least = |field: &'static str, v: u64, min: u64| {
            if v < min {
                Err(Error::invalid(field, format!("must be at least {min}")))
            } else {
                Ok(())
            }
        };
        let at_most = |field: &'static str, v: u64, max: u64| {
            if v > max {
                Err(Error::invalid(field, format!("must be at most {max}")))
            } else {
                Ok(())
            }
        };
        at_least("events.retry_initial_ms", self.retry_initial_ms, 1)?;
        at_least(
            "events.retry_max_ms",
            self.retry_max_ms,
            self.retry_initial_ms,
        )?;
        at_least("events.request_timeout_ms", self.request_timeout_ms, 100)?;
        at_least("events.poll_ms", self.poll_ms, 10)?;
        at_least("events.sweep_secs", self.sweep_secs, 1)?;
        at_least("events.retention_days", self.retention_days, 1)?;
        if self.max_watchers == 0 || self.max_watchers > 100_000 {
            return Err(Error::invalid(
                "events.max_watchers",
                "must be from 1 to 100000",
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(Error::invalid(
                "events.concurrency",
                "must be from 1 to 1024",
            ));
        }
        // The expiry sweep looks back and ahead within the retention, so an event it
        // wrote is still stored when it looks again (and is not written twice).
        at_most("events.retention_days", self.retention_days, 36_500)?;
        at_most(
            "events.request_timeout_ms",
            self.request_timeout_ms,
            3_600_000,
        )?;
        at_most("events.retry_for_secs", self.retry_for_secs, 365 * 86_400)?;
        at_most("events.retry_max_ms", self.retry_max_ms, 30 * 86_400_000)?;
        if self.expiring_lead_secs.saturating_mul(2) >= self.retention_days * 86_400 {
            return Err(Error::invalid(
                "events.expiring_lead_secs",
                "must be less than half of events.retention_days",
            ));
        }
        Ok(())
    }

    /// A delivery's lease: the attempt's timeout and a margin, so a lease never runs out
    /// under an attempt still in flight. A replica that dies mid-attempt holds its
    /// deliveries this long; then another (or it, restarted) takes them over.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms + 5000)
    }
}
