//! The deliverer: claims due deliveries (a lease per delivery, so one replica at a time
//! makes an attempt), posts them signed, and records how it went. A failure is retried
//! with exponential backoff and jitter until `retry_for_secs` after the first attempt;
//! then the delivery is failed, and its endpoint, if nothing has reached it since that
//! first attempt, is disabled with an audit event.
use super::EventsConfig;
use crate::domain::webhook::{retry_delay, Attempt, DeliveryState};
use crate::domain::{AuditEvent, Clock, UnixMillis};
use crate::metrics::Metrics;
use crate::outbound::{Outbound, Post};
use crate::store::{AttemptRecord, Claimed, EventLog, WebhookStore};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Delivers webhooks for this replica.
pub struct Deliverer {
    pub webhooks: Arc<dyn WebhookStore>,
    pub events: Arc<dyn EventLog>,
    pub outbound: Outbound,
    pub clock: Arc<dyn Clock>,
    pub config: EventsConfig,
    pub metrics: Arc<Metrics>,
    /// This replica's name on the leases it takes.
    pub owner: String,
}

impl Deliverer {
    /// Runs until `stop`: attempts due deliveries, at most `concurrency` at once.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut written = self.events.written();
        let poll = Duration::from_millis(self.config.poll_ms);
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            let room = self.config.concurrency.saturating_sub(in_flight.len());
            let mut claimed = 0;
            if room > 0 {
                let now = self.clock.now();
                match self
                    .webhooks
                    .claim_deliveries(&self.owner, now, self.config.lease(), room as u64)
                    .await
                {
                    Ok(batch) => {
                        claimed = batch.len();
                        for c in batch {
                            in_flight.spawn(self.clone().attempt(c));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
                }
            }
            // A full batch: there may be more due at once.
            if claimed > 0 && claimed == room {
                if let Some(Err(e)) = in_flight.try_join_next() {
                    tracing::warn!(error = %e, "a webhook delivery task failed");
                }
                continue;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = written.changed() => {}
                // A finished attempt may unblock the next event of its key.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        // In-flight attempts end with the process; their leases lapse and another
        // replica (or this one, restarted) tries again.
        in_flight.abort_all();
    }

    /// One attempt of one claimed delivery, recorded.
    async fn attempt(self: Arc<Self>, c: Claimed) {
        let now = self.clock.now();
        let body = Bytes::from(c.event.payload());
        let timestamp = now.0.div_euclid(1000);
        // The event id is the message id: a receiver drops duplicates by it.
        let signature = c.endpoint.signature(&c.event.id, timestamp, &body, now);
        let post = Post {
            url: &c.endpoint.url,
            headers: [
                ("webhook-id", c.event.id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ],
            body,
        };
        let result = self.outbound.post(post).await;
        let now = self.clock.now();
        let first = c.delivery.first_attempt_time.unwrap_or(now);
        let record = match &result {
            Attempt::Delivered { status } => AttemptRecord {
                state: DeliveryState::Delivered,
                now,
                next_attempt: now,
                status: *status,
                error: String::new(),
            },
            Attempt::Failed { status, error } => {
                let retry_for = Duration::from_secs(self.config.retry_for_secs);
                let delay = retry_delay(
                    c.delivery.attempts + 1,
                    Duration::from_millis(self.config.retry_initial_ms),
                    Duration::from_millis(self.config.retry_max_ms),
                    rand::random::<f64>(),
                );
                let next = now.plus(delay);
                let give_up = next > first.plus(retry_for);
                AttemptRecord {
                    state: if give_up {
                        DeliveryState::Failed
                    } else {
                        DeliveryState::Pending
                    },
                    now,
                    next_attempt: next,
                    status: *status,
                    error: error.clone(),
                }
            }
        };
        let m = &self.metrics.events;
        match self
            .webhooks
            .finish_attempt(&c.delivery.id, &self.owner, &record)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery_id = %c.delivery.id, "webhook delivery lease lost before its attempt was recorded");
                return;
            }
            Err(e) => {
                // The lease lapses and the delivery is attempted again: at least once.
                tracing::warn!(delivery_id = %c.delivery.id, error = %e, "could not record a webhook attempt");
                return;
            }
        }
        match record.state {
            DeliveryState::Delivered => {
                m.deliveries.with_label_values(&["delivered"]).inc();
                m.delivery_lag_seconds
                    .observe(c.event.time.until(now).as_secs_f64());
            }
            DeliveryState::Pending => {
                m.deliveries.with_label_values(&["retry"]).inc();
                tracing::info!(
                    delivery_id = %c.delivery.id,
                    endpoint_id = %c.endpoint.id,
                    status = record.status,
                    error = %record.error,
                    "webhook attempt failed; will retry"
                );
            }
            DeliveryState::Failed => {
                m.deliveries.with_label_values(&["failed"]).inc();
                tracing::warn!(
                    delivery_id = %c.delivery.id,
                    endpoint_id = %c.endpoint.id,
                    "webhook delivery given up after the retry period"
                );
                self.maybe_disable(&c, first, now).await;
            }
        }
    }

    /// Disables an endpoint nothing has reached since `since`: it keeps failing.
    async fn maybe_disable(&self, c: &Claimed, since: UnixMillis, now: UnixMillis) {
        match self.webhooks.last_success(&c.endpoint.id).await {
            Ok(Some(t)) if t >= since => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not read an endpoint's last success");
                return;
            }
        }
        let reason = format!(
            "disabled by Keygate: no delivery succeeded for {} s (last: {})",
            since.until(now).as_secs(),
            c.delivery.id
        );
        let audit = AuditEvent {
            id: AuditEvent::new_id(now),
            time: now,
            actor: "keygate".into(),
            action: "disable_webhook_endpoint".into(),
            tenant_id: c.endpoint.tenant_id.clone(),
            key_id: String::new(),
            changed_fields: vec!["enabled".into()],
            request_id: format!("deliverer:{}", self.owner),
            detail: format!("endpoint_id={}; {reason}", c.endpoint.id),
        };
        match self
            .webhooks
            .disable_endpoint(&c.endpoint.id, &reason, now, audit)
            .await
        {
            Ok(true) => {
                self.metrics.events.endpoints_disabled.inc();
                tracing::warn!(endpoint_id = %c.endpoint.id, tenant_id = %c.endpoint.tenant_id, "webhook endpoint disabled: it keeps failing");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not disable a failing endpoint"),
        }
    }
}
