//! The periodic sweep: `key.expiring` once a key is within `expiring_lead_secs` of its
//! expiry, `key.expired` once it has passed it (ids derived from the key and its expiry,
//! so every replica may sweep and one event is stored), pruning past the retention, and
//! the backlog gauges.
use super::EventsConfig;
use crate::domain::event::{key_data, rfc3339, Event, EventType};
use crate::domain::{Clock, KeyRecord, UnixMillis};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::store::{EventLog, KeyStore, WebhookStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const PAGE: u64 = 500;

pub struct Sweeper {
    pub keys: Arc<dyn KeyStore>,
    pub events: Arc<dyn EventLog>,
    pub webhooks: Arc<dyn WebhookStore>,
    pub clock: Arc<dyn Clock>,
    pub config: EventsConfig,
    pub metrics: Arc<Metrics>,
}

impl Sweeper {
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.sweep_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.sweep_once(self.clock.now()).await {
                tracing::warn!(error = %e, "event sweep failed; trying again at the next");
            }
        }
    }

    /// One pass as of `now`; how many events it wrote.
    pub async fn sweep_once(&self, now: UnixMillis) -> Result<usize> {
        let lead = Duration::from_secs(self.config.expiring_lead_secs);
        // Within the retention, so an event written by an earlier pass is still there to
        // be recognised (see EventsConfig::validate).
        let lookback = lead.max(Duration::from_secs(86_400));
        let lookback = lookback.min(Duration::from_secs(self.config.retention_days * 86_400 / 2));
        let back = UnixMillis(now.0 - lookback.as_millis() as i64);
        let mut written = 0;
        // Expired within the lookback.
        written += self
            .each_page(back, now, |k| {
                let expire = k.expire_time?;
                Some(Event::once(
                    EventType::KeyExpired,
                    &format!("{}@{}", k.id, expire.0),
                    now,
                    &k.tenant_id,
                    &k.id,
                    serde_json::json!({ "key": key_data(k) }),
                ))
            })
            .await?;
        // Expiring within the lead.
        written += self
            .each_page(now, now.plus(lead), |k| {
                let expire = k.expire_time?;
                Some(Event::once(
                    EventType::KeyExpiring,
                    &format!("{}@{}", k.id, expire.0),
                    now,
                    &k.tenant_id,
                    &k.id,
                    serde_json::json!({
                        "key": key_data(k),
                        "expire_time": rfc3339(expire),
                        "expires_in_secs": now.until(expire).as_secs(),
                    }),
                ))
            })
            .await?;
        let retention = Duration::from_secs(self.config.retention_days * 86_400);
        let retry_for = Duration::from_secs(self.config.retry_for_secs);
        self.events
            .prune_events(
                now,
                UnixMillis(now.0 - retention.as_millis() as i64),
                UnixMillis(now.0 - retry_for.as_millis() as i64),
            )
            .await?;
        let (pending, oldest) = self.webhooks.delivery_backlog().await?;
        let m = &self.metrics.events;
        m.pending_deliveries.set(pending as i64);
        m.oldest_undelivered_seconds
            .set(oldest.map_or(0.0, |t| t.until(now).as_secs_f64()));
        Ok(written)
    }

    /// Appends `make(key)` for every key expiring in `(from, to]`, a page at a time.
    async fn each_page(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        make: impl Fn(&KeyRecord) -> Option<Event>,
    ) -> Result<usize> {
        let mut after = None;
        let mut written = 0;
        loop {
            let page = self.keys.keys_expiring(from, to, after, PAGE).await?;
            let events: Vec<Event> = page.iter().filter_map(&make).collect();
            written += self.events.append_events(&events).await?.len();
            if (page.len() as u64) < PAGE {
                return Ok(written);
            }
            after = page
                .last()
                .and_then(|k| k.expire_time.map(|t| (t, k.id.clone())));
        }
    }
}
