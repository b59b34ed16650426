//! Announcing KeyAdmin changes to every replica. Locally the cache is told at once; with a
//! PostgreSQL store each change is also sent with `NOTIFY` after it committed, and every
//! replica's listener drops the affected entries, so a revocation reaches all replicas in
//! milliseconds instead of a cache TTL.
use super::ChangeListener;
use crate::cache::KeyCache;
use crate::metrics::Metrics;
use sea_orm::sqlx::postgres::{PgListener, PgPool};
use std::sync::Arc;
use std::time::Duration;

/// The channel Keygate replicas share.
pub const CHANNEL: &str = "keygate_changes";

/// Tells the local cache, then the other replicas.
pub struct Broadcast {
    local: Arc<KeyCache>,
    pool: Option<PgPool>,
    /// This replica's id: it receives its own notifications too and must skip them (its
    /// cache was told at once; applying them again later would mark entries cached since
    /// then as stale).
    origin: String,
}

impl Broadcast {
    /// `pool`: the PostgreSQL store's pool, or `None` for a single replica (SQLite).
    pub fn new(local: Arc<KeyCache>, pool: Option<PgPool>, origin: String) -> Self {
        Broadcast {
            local,
            pool,
            origin,
        }
    }

    fn announce(&self, payload: String) {
        let Some(pool) = self.pool.clone() else {
            return;
        };
        tokio::spawn(async move {
            let sent = sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await;
            if let Err(e) = sent {
                // Other replicas then rely on the cache TTL for this change.
                tracing::warn!(error = %e, "could not announce a change to other replicas");
            }
        });
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

/// `k:<lookup id>@<sent ms>@<origin>` or `t:<tenant id>@<sent ms>@<origin>` (ids never
/// contain '@'). Notifications from this replica itself (`origin`) are skipped.
fn apply(cache: &KeyCache, metrics: &Metrics, origin: &str, payload: &str) {
    let mut parts = payload.splitn(3, '@');
    let (change, sent, from) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if from == origin {
        return;
    }
    match change.split_once(':') {
        Some(("k", lookup)) => cache.key_changed("", lookup),
        Some(("t", tenant)) => cache.tenant_changed(tenant),
        _ => return tracing::warn!("ignoring a malformed change notification"),
    }
    // Sender and receiver clocks differ by their NTP error: good to milliseconds.
    if let Ok(sent) = sent.parse::<i64>() {
        metrics
            .propagation_seconds
            .observe((wall_ms() - sent).max(0) as f64 / 1000.0);
    }
}

/// Listens until `stop`, reconnecting after failures.
///
/// While the listening connection is down, notifications are missed, so on every
/// *reconnection* the whole cache is dropped. It is not dropped at the moment of the loss:
/// that is usually a database outage, during which no change can commit and cached keys
/// must keep working. A change committed elsewhere during a listener-only gap therefore
/// reaches this replica when the listener reconnects, or after `cache.ttl_secs` at most.
pub async fn listen(
    url: String,
    cache: Arc<KeyCache>,
    metrics: Arc<Metrics>,
    origin: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut connected_once = false;
    while !*stop.borrow() {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "change listener cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "change listener cannot LISTEN; retrying");
            continue;
        }
        if connected_once {
            cache.invalidate_all();
            tracing::info!("change listener reconnected; cache dropped");
        }
        connected_once = true;
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => apply(&cache, &metrics, &origin, n.payload()),
                    // None: the connection was lost (sqlx reconnects on the next call, but
                    // what was sent meanwhile is gone).
                    Ok(None) | Err(_) => {
                        tracing::warn!("change listener lost its connection; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}
