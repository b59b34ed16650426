//! [`super::super::EventLog`] on sea-orm: the outbox. Every event is inserted by
//! [`insert_events`], which serialises writers of events (a transaction-scoped advisory
//! lock on PostgreSQL; SQLite has one writer anyway), so `seq` is commit order: a follower
//! that has read up to `seq` n never later finds a new event below n. The same step fans
//! the event out to the tenant's endpoints, so an event and its deliveries commit together.
use super::*;
use crate::domain::event::{self, Event, EventType, Subject};
use crate::store::EventLog;

/// The lock every writer of events takes (PostgreSQL), held until its commit.
const EVENT_LOCK: i64 = 0x6b67_6576; // "kgev"

pub(super) fn event_from(row: &sea_orm::QueryResult) -> Result<Event> {
    let kind: String = row.try_get("", "type").map_err(db_err)?;
    let data: String = row.try_get("", "data").map_err(db_err)?;
    Ok(Event {
        seq: row.try_get("", "seq").map_err(db_err)?,
        id: row.try_get("", "id").map_err(db_err)?,
        kind: EventType::parse("stored event type", &kind).map_err(|e| Error::Internal {
            context: "stored event type",
            source: Some(Box::new(e)),
        })?,
        time: UnixMillis(row.try_get("", "time").map_err(db_err)?),
        tenant_id: row.try_get("", "tenant_id").map_err(db_err)?,
        key_id: row.try_get("", "key_id").map_err(db_err)?,
        data: serde_json::from_str(&data).map_err(corrupt("stored event data"))?,
    })
}

pub(super) const EVENT_COLUMNS: &str = "seq, id, type, time, tenant_id, key_id, data";

/// Inserts `events` (skipping ids already stored) and a pending delivery of each new one
/// to every enabled endpoint of its tenant that wants it; the events that were new, with
/// their seq.
pub(super) async fn insert_events<C: ConnectionTrait>(
    conn: &C,
    events: &[Event],
) -> Result<Vec<Event>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let backend = conn.get_database_backend();
    if backend == DbBackend::Postgres {
        let lock = sql(
            backend,
            "SELECT pg_advisory_xact_lock($1)",
            [EVENT_LOCK.into()],
        );
        conn.execute(lock).await.map_err(db_err)?;
    }
    let mut written = Vec::with_capacity(events.len());
    for e in events {
        let insert = sql(
            backend,
            "INSERT INTO events (id, type, time, tenant_id, key_id, data) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING seq",
            [
                e.id.clone().into(),
                e.kind.as_str().into(),
                e.time.0.into(),
                e.tenant_id.clone().into(),
                e.key_id.clone().into(),
                e.data.to_string().into(),
            ],
        );
        let Some(row) = conn.query_one(insert).await.map_err(db_err)? else {
            continue; // already stored: an occurrence written twice
        };
        let seq: i64 = row.try_get("", "seq").map_err(db_err)?;
        let endpoints = sql(
            backend,
            "SELECT id, event_types FROM webhook_endpoints WHERE tenant_id = $1 AND enabled = $2",
            [e.tenant_id.clone().into(), true.into()],
        );
        for ep in conn.query_all(endpoints).await.map_err(db_err)? {
            let types: String = ep.try_get("", "event_types").map_err(db_err)?;
            let types: Vec<String> =
                serde_json::from_str(&types).map_err(corrupt("stored endpoint event types"))?;
            if !types.is_empty() && !types.iter().any(|t| t == e.kind.as_str()) {
                continue;
            }
            let endpoint_id: String = ep.try_get("", "id").map_err(db_err)?;
            insert_delivery(conn, seq, e, &endpoint_id, e.time).await?;
        }
        written.push(Event { seq, ..e.clone() });
    }
    Ok(written)
}

/// A new pending delivery of event `seq` to an endpoint, due at `now`.
pub(super) async fn insert_delivery<C: ConnectionTrait>(
    conn: &C,
    seq: i64,
    e: &Event,
    endpoint_id: &str,
    now: UnixMillis,
) -> Result<String> {
    let id = format!("dlv_{}", crate::domain::key::random_base62(22));
    let insert = sql(
        conn.get_database_backend(),
        "INSERT INTO webhook_deliveries (id, event_seq, event_id, endpoint_id, tenant_id, \
         order_key, state, attempts, next_attempt_time, lease_owner, lease_until, \
         last_status, last_error, create_time) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, '', 0, 0, '', $8)",
        [
            id.clone().into(),
            seq.into(),
            e.id.clone().into(),
            endpoint_id.into(),
            e.tenant_id.clone().into(),
            e.key_id.clone().into(),
            now.0.into(),
            now.0.into(),
        ],
    );
    conn.execute(insert).await.map_err(db_err)?;
    Ok(id)
}

/// Inserts a write's audit event and the events it announces, in the write's transaction.
pub(super) async fn write_audit(
    txn: &sea_orm::DatabaseTransaction,
    audit: &AuditEvent,
    subject: Subject<'_>,
) -> Result<Vec<Event>> {
    audit_events::Entity::insert(audit_row(audit)?)
        .exec(txn)
        .await
        .map_err(db_err)?;
    insert_events(txn, &event::from_change(audit, subject)).await
}

#[async_trait::async_trait]
impl EventLog for SeaStore {
    async fn append_events(&self, events: &[Event]) -> Result<Vec<Event>> {
        let txn = self.db.begin().await.map_err(db_err)?;
        let written = insert_events(&txn, events).await?;
        txn.commit().await.map_err(db_err)?;
        if !written.is_empty() {
            self.count_events(&written);
            self.events_written();
        }
        Ok(written)
    }

    async fn events_after(
        &self,
        tenant_id: Option<&str>,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<Event>> {
        let backend = self.db.get_database_backend();
        let q = match tenant_id {
            Some(t) => sql(
                backend,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE tenant_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3"
                ),
                [t.into(), after_seq.into(), to_i64(limit).into()],
            ),
            None => sql(
                backend,
                &format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
                [after_seq.into(), to_i64(limit).into()],
            ),
        };
        let rows = self.db.query_all(q).await.map_err(db_err)?;
        rows.iter().map(event_from).collect()
    }

    async fn event_by_id(&self, id: &str) -> Result<Option<Event>> {
        let q = sql(
            self.db.get_database_backend(),
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"),
            [id.into()],
        );
        match self.db.query_one(q).await.map_err(db_err)? {
            Some(row) => Ok(Some(event_from(&row)?)),
            None => Ok(None),
        }
    }

    async fn last_event_seq(&self) -> Result<i64> {
        let q = sql(
            self.db.get_database_backend(),
            "SELECT COALESCE(MAX(seq), 0) AS seq FROM events",
            [],
        );
        match self.db.query_one(q).await.map_err(db_err)? {
            Some(row) => row.try_get::<i64>("", "seq").map_err(db_err),
            None => Ok(0),
        }
    }

    async fn prune_events(
        &self,
        now: UnixMillis,
        before: UnixMillis,
        give_up_before: UnixMillis,
    ) -> Result<u64> {
        let backend = self.db.get_database_backend();
        let deliveries = sql(
            backend,
            "DELETE FROM webhook_deliveries WHERE state <> 'pending' AND create_time < $1",
            [before.0.into()],
        );
        let events = sql(
            backend,
            "DELETE FROM events WHERE time < $1 AND NOT EXISTS (SELECT 1 FROM \
             webhook_deliveries d WHERE d.event_seq = events.seq AND d.state = 'pending')",
            [before.0.into()],
        );
        // A delivery inserted beside a concurrent delete of its endpoint (PostgreSQL, read
        // committed) has nowhere to go.
        let orphans = sql(
            backend,
            "UPDATE webhook_deliveries SET state = 'failed', finish_time = $1, \
             last_error = 'endpoint deleted' WHERE state = 'pending' AND NOT EXISTS \
             (SELECT 1 FROM webhook_endpoints w WHERE w.id = webhook_deliveries.endpoint_id)",
            [now.0.into()],
        );
        self.db.execute(orphans).await.map_err(db_err)?;
        // A disabled endpoint's backlog is kept for its re-enabling, but not past the
        // retry period: it would have been given up anyway.
        let stranded = sql(
            backend,
            "UPDATE webhook_deliveries SET state = 'failed', finish_time = $1, \
             last_error = 'endpoint disabled past the retry period' \
             WHERE state = 'pending' AND create_time < $2 AND lease_until = 0 \
             AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w \
               WHERE w.id = webhook_deliveries.endpoint_id AND w.enabled = $3)",
            [now.0.into(), give_up_before.0.into(), true.into()],
        );
        self.db.execute(stranded).await.map_err(db_err)?;
        let a = self.db.execute(deliveries).await.map_err(db_err)?;
        let b = self.db.execute(events).await.map_err(db_err)?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    fn written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }
}
