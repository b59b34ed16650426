//! `last_used_time`, recorded off the hot path: checks note the time in memory and a
//! background task writes the latest time per key in one batch every interval (and once
//! more at shutdown).
use crate::domain::UnixMillis;
use crate::store::KeyStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<String, UnixMillis>>,
    failures: Option<prometheus::IntCounter>,
}

impl LastUsed {
    /// Counts failed flushes in `failures`.
    pub fn counting(failures: prometheus::IntCounter) -> Self {
        LastUsed {
            pending: Mutex::default(),
            failures: Some(failures),
        }
    }

    /// Notes a use; O(1), never blocks on I/O.
    pub fn note(&self, key_id: &str, at: UnixMillis) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match p.get_mut(key_id) {
            Some(t) if *t >= at => {}
            Some(t) => *t = at,
            None => {
                p.insert(key_id.to_owned(), at);
            }
        }
    }

    /// Writes what was noted. On failure the batch is put back (merged with newer notes)
    /// to be retried next time.
    pub async fn flush(&self, store: &dyn KeyStore) {
        let batch: Vec<(String, UnixMillis)> = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.record_last_used(&batch).await {
            tracing::warn!(error = %e, keys = batch.len(), "could not record last_used_time; will retry");
            if let Some(f) = &self.failures {
                f.inc();
            }
            for (id, at) in batch {
                self.note(&id, at);
            }
        }
    }

    /// Flushes every `interval` until `stop` fires, then flushes once more.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn KeyStore>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => self.flush(store.as_ref()).await,
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        self.flush(store.as_ref()).await;
    }
}
