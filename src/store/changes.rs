//! The change feed between replicas: PostgreSQL `NOTIFY` to announce a committed change,
//! `LISTEN` to hear the others'. What a change means (which cache entries it drops) is the
//! service's business (`service::changes`); this module only moves payloads.
use sea_orm::sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::sync::watch;

/// The channel Keygate replicas share.
pub const CHANNEL: &str = "keygate_changes";

/// Where received changes go.
pub trait ChangeSink: Send + Sync {
    /// The feed reconnected: whatever was announced while it was down is lost.
    fn reconnected(&self);
    /// One announced payload (this replica's own included).
    fn deliver(&self, payload: &str);
}

/// Announces changes to every replica and hears theirs.
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Sends `payload` without waiting; a failure is logged (the other replicas then rely
    /// on their cache TTL for this change).
    fn announce(&self, payload: String);
    /// Delivers announced payloads to `sink` until `stop`, reconnecting after failures.
    async fn listen(&self, sink: &dyn ChangeSink, stop: watch::Receiver<bool>);
}

/// The feed on a PostgreSQL store.
pub struct PgChangeFeed {
    pool: PgPool,
    url: String,
}

impl PgChangeFeed {
    /// The feed of the store at `url`, when it is PostgreSQL (a SQLite store has one
    /// replica and no feed).
    pub fn of(store: &super::SeaStore, url: &str) -> Option<PgChangeFeed> {
        (super::Backend::of_url(url) == Some(super::Backend::Postgres)).then(|| PgChangeFeed {
            pool: store.connection().get_postgres_connection_pool().clone(),
            url: url.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl ChangeFeed for PgChangeFeed {
    fn announce(&self, payload: String) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let sent = sea_orm::sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not announce a change to other replicas");
            }
        });
    }

    /// While the listening connection is down, notifications are missed, so every
    /// *reconnection* is reported to the sink. Not the moment of the loss: that is usually
    /// a database outage, during which no change can commit.
    async fn listen(&self, sink: &dyn ChangeSink, mut stop: watch::Receiver<bool>) {
        let mut connected_once = false;
        while !*stop.borrow() {
            let mut listener = match PgListener::connect(&self.url).await {
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
                sink.reconnected();
            }
            connected_once = true;
            loop {
                tokio::select! {
                    n = listener.try_recv() => match n {
                        Ok(Some(n)) => sink.deliver(n.payload()),
                        // None: the connection was lost (sqlx reconnects on the next call,
                        // but what was sent meanwhile is gone).
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
}
