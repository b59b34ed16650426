//! Background tasks that keep a replica's in-memory state in step with the store.
use crate::service::imports::ImportRegistry;
use crate::service::tokens::AdminTokens;
use crate::store::Stores;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Reloads the stored admin tokens and imported key prefixes every 5 s: tokens made or
/// revoked with `keygate admin`, and keys imported on another replica, take effect without
/// a restart.
pub async fn refresh_tokens_and_imports(
    tokens: AdminTokens,
    imports: Arc<ImportRegistry>,
    stores: Stores,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = tokens.refresh(stores.tokens.as_ref()).await {
            tracing::warn!(error = %e, "could not reload admin tokens; keeping the last set");
        }
        if let Err(e) = imports.refresh(stores.imports.as_ref()).await {
            tracing::warn!(error = %e, "could not reload imported key prefixes; keeping the last set");
        }
    }
}
