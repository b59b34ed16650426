//! `WatchEvents`: a tenant's events (or every tenant's) from a cursor, in commit order,
//! then live. Commit order makes a cursor exact: resuming after the last seq seen misses
//! nothing and repeats nothing.
use crate::domain::event::{Event, EventType};
use crate::error::Result;
use crate::store::EventLog;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const PAGE: u64 = 200;

/// Streams events after `after_seq` (of `tenant_id`, or of every tenant) whose type is in
/// `types` (empty: all) until the receiver is dropped. A store error ends the stream with
/// that error; the follower resumes from the last event it got. `authorized` is asked
/// before every page: once it says no (the caller's admin token was revoked), the stream
/// ends with UNAUTHENTICATED.
pub fn follow(
    events: Arc<dyn EventLog>,
    tenant_id: Option<String>,
    types: Vec<EventType>,
    mut after_seq: i64,
    poll: Duration,
    authorized: impl Fn() -> bool + Send + 'static,
) -> mpsc::Receiver<Result<Event>> {
    let (tx, rx) = mpsc::channel(64);
    let mut written = events.written();
    tokio::spawn(async move {
        loop {
            if !authorized() {
                let e = crate::error::Error::Unauthenticated(
                    "the admin token was revoked; WatchEvents ended".into(),
                );
                let _ = tx.send(Err(e)).await;
                return;
            }
            // Marked seen before reading: a commit after this read wakes the wait below.
            written.borrow_and_update();
            let page = match events
                .events_after(tenant_id.as_deref(), after_seq, PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = page.len() as u64 == PAGE;
            for e in page {
                after_seq = e.seq;
                if !types.is_empty() && !types.contains(&e.kind) {
                    continue;
                }
                if tx.send(Ok(e)).await.is_err() {
                    return; // the follower went away
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = written.changed() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    });
    rx
}
