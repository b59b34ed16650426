//! Announcing KeyAdmin changes to every replica. Locally the cache is told at once; with a
//! change feed (PostgreSQL `NOTIFY`, `store::changes`) each change is also sent after it
//! committed, and every replica drops the affected entries, so a revocation reaches all
//! replicas in milliseconds instead of a cache TTL.
use crate::cache::KeyCache;
use crate::domain::change::ChangeListener;
use crate::metrics::Metrics;
use crate::store::changes::{ChangeFeed, ChangeSink};
use std::sync::Arc;

/// Tells the local cache, then the other replicas.
pub struct Broadcast {
    local: Arc<KeyCache>,
    feed: Option<Arc<dyn ChangeFeed>>,
    /// This replica's id: it receives its own notifications too and must skip them (its
    /// cache was told at once; applying them again later would mark entries cached since
    /// then as stale).
    origin: String,
}

impl Broadcast {
    /// `feed`: the store's change feed, or `None` for a single replica (SQLite).
    pub fn new(local: Arc<KeyCache>, feed: Option<Arc<dyn ChangeFeed>>, origin: String) -> Self {
        Broadcast {
            local,
            feed,
            origin,
        }
    }

    fn announce(&self, payload: String) {
        if let Some(feed) = &self.feed {
            feed.announce(payload);
        }
    }
}

impl ChangeListener for Broadcast {
    fn key_changed(&self, key_id: &str, lookup_id: &str) {
        self.local.key_changed(key_id, lookup_id);
        self.announce(format!("k:{lookup_id}@{}@{}", wall_ms(), self.origin));
    }

    fn tenant_changed(&self, tenant_id: &str) {
        self.local.tenant_changed(tenant_id);
        self.announce(format!("t:{tenant_id}@{}@{}", wall_ms(), self.origin));
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Applies other replicas' changes to this replica's cache.
struct Apply {
    cache: Arc<KeyCache>,
    metrics: Arc<Metrics>,
    origin: String,
}

impl ChangeSink for Apply {
    /// Notifications were missed while the feed was down: drop the whole cache. A change
    /// committed elsewhere during a listener-only gap thus reaches this replica when the
    /// listener reconnects, or after `cache.ttl_secs` at most.
    fn reconnected(&self) {
        self.cache.invalidate_all();
        tracing::info!("change listener reconnected; cache dropped");
    }

    /// `k:<lookup id>@<sent ms>@<origin>` or `t:<tenant id>@<sent ms>@<origin>` (ids never
    /// contain '@'). Notifications from this replica itself (`origin`) are skipped.
    fn deliver(&self, payload: &str) {
        let mut parts = payload.splitn(3, '@');
        let (change, sent, from) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if from == self.origin {
            return;
        }
        match change.split_once(':') {
            Some(("k", lookup)) => self.cache.key_changed("", lookup),
            Some(("t", tenant)) => self.cache.tenant_changed(tenant),
            _ => return tracing::warn!("ignoring a malformed change notification"),
        }
        // Sender and receiver clocks differ by their NTP error: good to milliseconds.
        if let Ok(sent) = sent.parse::<i64>() {
            self.metrics
                .propagation_seconds
                .observe((wall_ms() - sent).max(0) as f64 / 1000.0);
        }
    }
}

/// Applies the feed's changes to `cache` until `stop`.
pub async fn listen(
    feed: Arc<dyn ChangeFeed>,
    cache: Arc<KeyCache>,
    metrics: Arc<Metrics>,
    origin: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let sink = Apply {
        cache,
        metrics,
        origin,
    };
    feed.listen(&sink, stop).await;
}
