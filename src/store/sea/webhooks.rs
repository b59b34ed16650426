//! [`super::super::WebhookStore`] on sea-orm: endpoints, and deliveries leased to one
//! replica at a time by a conditional UPDATE (a compare-and-set on `lease_until`, the same
//! on SQLite and PostgreSQL), in order per endpoint and key.
use super::events::{event_from, insert_delivery};
use super::*;
use crate::domain::event::{Event, Subject};
use crate::domain::webhook::{Delivery, DeliveryState, Endpoint, SigningSecret};
use crate::store::{AttemptRecord, Claimed, DeliveryQuery, WebhookStore};

const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, secret, \
     previous_secret, previous_until, enabled, disabled_reason, create_time, update_time";

fn endpoint_from(row: &sea_orm::QueryResult) -> Result<Endpoint> {
    let get = |c: &str| row.try_get::<String>("", c).map_err(db_err);
    let secret = |s: String| {
        SigningSecret::from_stored(s).ok_or_else(|| Error::internal("stored endpoint secret"))
    };
    let types: Vec<String> =
        serde_json::from_str(&get("event_types")?).map_err(corrupt("stored event types"))?;
    let previous = match (
        row.try_get::<Option<String>>("", "previous_secret")
            .map_err(db_err)?,
        row.try_get::<Option<i64>>("", "previous_until")
            .map_err(db_err)?,
    ) {
        (Some(s), Some(until)) => Some((secret(s)?, UnixMillis(until))),
        _ => None,
    };
    Ok(Endpoint {
        id: get("id")?,
        tenant_id: get("tenant_id")?,
        url: get("url")?,
        description: get("description")?,
        event_types: crate::domain::event::EventType::parse_list("stored event types", &types)
            .map_err(|e| Error::Internal {
                context: "stored event types",
                source: Some(Box::new(e)),
            })?,
        secret: secret(get("secret")?)?,
        previous,
        enabled: row.try_get("", "enabled").map_err(db_err)?,
        disabled_reason: get("disabled_reason")?,
        create_time: UnixMillis(row.try_get("", "create_time").map_err(db_err)?),
        update_time: UnixMillis(row.try_get("", "update_time").map_err(db_err)?),
    })
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_seq, d.event_id, e.type AS event_type, \
     d.endpoint_id, d.tenant_id, d.state, d.attempts, d.next_attempt_time, \
     d.first_attempt_time, d.last_status, d.last_error, d.create_time, d.finish_time";

fn delivery_from(row: &sea_orm::QueryResult) -> Result<Delivery> {
    let state: String = row.try_get("", "state").map_err(db_err)?;
    Ok(Delivery {
        id: row.try_get("", "id").map_err(db_err)?,
        event_seq: row.try_get("", "event_seq").map_err(db_err)?,
        event_id: row.try_get("", "event_id").map_err(db_err)?,
        event_type: row
            .try_get::<Option<String>>("", "event_type")
            .map_err(db_err)?
            .unwrap_or_default(),
        endpoint_id: row.try_get("", "endpoint_id").map_err(db_err)?,
        tenant_id: row.try_get("", "tenant_id").map_err(db_err)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| Error::internal("stored delivery state"))?,
        attempts: u32::try_from(row.try_get::<i32>("", "attempts").map_err(db_err)?).unwrap_or(0),
        next_attempt_time: UnixMillis(row.try_get("", "next_attempt_time").map_err(db_err)?),
        first_attempt_time: row
            .try_get::<Option<i64>>("", "first_attempt_time")
            .map_err(db_err)?
            .map(UnixMillis),
        last_status: u16::try_from(row.try_get::<i32>("", "last_status").map_err(db_err)?)
            .unwrap_or(0),
        last_error: row.try_get("", "last_error").map_err(db_err)?,
        create_time: UnixMillis(row.try_get("", "create_time").map_err(db_err)?),
        finish_time: row
            .try_get::<Option<i64>>("", "finish_time")
            .map_err(db_err)?
            .map(UnixMillis),
    })
}

fn types_json(e: &Endpoint) -> Result<String> {
    to_json(&e.event_types.iter().map(|t| t.as_str()).collect::<Vec<_>>())
}

impl SeaStore {
    /// A leased delivery with its event and endpoint; `None` when either is gone.
    async fn claimed(&self, id: &str) -> Result<Option<Claimed>> {
        let delivery = Self::delivery_in(&self.db, id).await?;
        let event = sql(
            self.db.get_database_backend(),
            &format!(
                "SELECT {} FROM events WHERE seq = $1",
                super::events::EVENT_COLUMNS
            ),
            [delivery.event_seq.into()],
        );
        let endpoint = self.get_endpoint(&delivery.endpoint_id).await?;
        Ok(
            match (self.db.query_one(event).await.map_err(db_err)?, endpoint) {
                (Some(row), Some(endpoint)) => Some(Claimed {
                    event: event_from(&row)?,
                    delivery,
                    endpoint,
                }),
                _ => None,
            },
        )
    }

    async fn delivery_in<C: ConnectionTrait>(conn: &C, id: &str) -> Result<Delivery> {
        let q = sql(
            conn.get_database_backend(),
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                 LEFT JOIN events e ON e.seq = d.event_seq WHERE d.id = $1"
            ),
            [id.into()],
        );
        let row = conn.query_one(q).await.map_err(db_err)?;
        delivery_from(&row.ok_or_else(|| Error::internal("delivery vanished"))?)
    }
}

#[async_trait::async_trait]
impl WebhookStore for SeaStore {
    async fn create_endpoint(
        &self,
        e: &Endpoint,
        max_per_tenant: usize,
        audit: AuditEvent,
    ) -> Result<()> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        // Serialises endpoint creation per tenant, as key inserts are (the cap holds).
        lock_tenant(&txn, &e.tenant_id).await?;
        let count = sql(
            backend,
            "SELECT COUNT(*) AS n FROM webhook_endpoints WHERE tenant_id = $1",
            [e.tenant_id.clone().into()],
        );
        let n: i64 = match txn.query_one(count).await.map_err(db_err)? {
            Some(row) => row.try_get("", "n").map_err(db_err)?,
            None => 0,
        };
        if n as usize >= max_per_tenant {
            return Err(Error::precondition(
                "tenant_id",
                format!("the tenant already has {n} webhook endpoints, the most it may have"),
            ));
        }
        let insert = sql(
            backend,
            &format!(
                "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8, $9, $10)"
            ),
            [
                e.id.clone().into(),
                e.tenant_id.clone().into(),
                e.url.clone().into(),
                e.description.clone().into(),
                types_json(e)?.into(),
                e.secret.expose().into(),
                e.enabled.into(),
                e.disabled_reason.clone().into(),
                e.create_time.0.into(),
                e.update_time.0.into(),
            ],
        );
        txn.execute(insert).await.map_err(db_err)?;
        self.commit_audited(txn, &audit, Subject::Other).await
    }

    async fn get_endpoint(&self, id: &str) -> Result<Option<Endpoint>> {
        let q = sql(
            self.db.get_database_backend(),
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"),
            [id.into()],
        );
        match self.db.query_one(q).await.map_err(db_err)? {
            Some(row) => Ok(Some(endpoint_from(&row)?)),
            None => Ok(None),
        }
    }

    async fn list_endpoints(&self, tenant_id: &str) -> Result<Vec<Endpoint>> {
        let q = sql(
            self.db.get_database_backend(),
            &format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 \
                 ORDER BY create_time, id"
            ),
            [tenant_id.into()],
        );
        let rows = self.db.query_all(q).await.map_err(db_err)?;
        rows.iter().map(endpoint_from).collect()
    }

    async fn update_endpoint(
        &self,
        e: &Endpoint,
        read_at: UnixMillis,
        audit: AuditEvent,
    ) -> Result<()> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        let (prev, until) = match &e.previous {
            Some((s, t)) => (Some(s.expose().to_owned()), Some(t.0)),
            None => (None, None),
        };
        let update = sql(
            backend,
            "UPDATE webhook_endpoints SET url = $1, description = $2, event_types = $3, \
             secret = $4, previous_secret = $5, previous_until = $6, enabled = $7, \
             disabled_reason = $8, update_time = $9 WHERE id = $10 AND update_time = $11",
            [
                e.url.clone().into(),
                e.description.clone().into(),
                types_json(e)?.into(),
                e.secret.expose().into(),
                prev.into(),
                until.into(),
                e.enabled.into(),
                e.disabled_reason.clone().into(),
                e.update_time.0.into(),
                e.id.clone().into(),
                read_at.0.into(),
            ],
        );
        if txn.execute(update).await.map_err(db_err)?.rows_affected() == 0 {
            return Err(Error::precondition(
                "endpoint.update_time",
                "the endpoint changed (or was deleted) meanwhile; read it again and retry",
            ));
        }
        if e.enabled {
            // Deliveries that waited while it was disabled are due now.
            let due = sql(
                backend,
                "UPDATE webhook_deliveries SET next_attempt_time = $1, first_attempt_time = NULL \
                 WHERE endpoint_id = $2 AND state = 'pending'",
                [e.update_time.0.into(), e.id.clone().into()],
            );
            txn.execute(due).await.map_err(db_err)?;
        }
        self.commit_audited(txn, &audit, Subject::Other).await
    }

    async fn delete_endpoint(&self, id: &str, now: UnixMillis, audit: AuditEvent) -> Result<bool> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        let delete = sql(
            backend,
            "DELETE FROM webhook_endpoints WHERE id = $1",
            [id.into()],
        );
        if txn.execute(delete).await.map_err(db_err)?.rows_affected() == 0 {
            return Ok(false);
        }
        let fail = sql(
            backend,
            "UPDATE webhook_deliveries SET state = 'failed', finish_time = $1, \
             last_error = 'endpoint deleted', lease_owner = '', lease_until = 0 \
             WHERE endpoint_id = $2 AND state = 'pending'",
            [now.0.into(), id.into()],
        );
        txn.execute(fail).await.map_err(db_err)?;
        self.commit_audited(txn, &audit, Subject::Other).await?;
        Ok(true)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        now: UnixMillis,
        lease: std::time::Duration,
        limit: u64,
    ) -> Result<Vec<Claimed>> {
        let backend = self.db.get_database_backend();
        // Due, free, of an enabled endpoint, and first in line for its endpoint and key.
        let due = sql(
            backend,
            "SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled = $3 \
             WHERE d.state = 'pending' AND d.next_attempt_time <= $1 AND d.lease_until <= $1 \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
               WHERE p.endpoint_id = d.endpoint_id AND p.order_key = d.order_key \
               AND p.state = 'pending' AND (p.event_seq < d.event_seq \
               OR (p.event_seq = d.event_seq AND p.id < d.id))) \
             ORDER BY d.event_seq, d.id LIMIT $2",
            [now.0.into(), to_i64(limit).into(), true.into()],
        );
        let ids: Vec<String> = self
            .db
            .query_all(due)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.try_get::<String>("", "id").map_err(db_err))
            .collect::<Result<_>>()?;
        let until = now.plus(lease);
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            // The compare-and-set: of replicas that saw it free, one wins.
            let take = sql(
                backend,
                "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2 \
                 WHERE id = $3 AND state = 'pending' AND lease_until <= $4",
                [
                    owner.into(),
                    until.0.into(),
                    id.clone().into(),
                    now.0.into(),
                ],
            );
            if self.db.execute(take).await.map_err(db_err)?.rows_affected() == 0 {
                continue;
            }
            match self.claimed(&id).await {
                Ok(Some(c)) => claimed.push(c),
                // Pruned or deleted meanwhile, or a row that does not read back: it fails
                // alone instead of stopping every delivery behind it.
                failed => {
                    let error = match failed {
                        Err(e) => {
                            tracing::error!(delivery_id = %id, error = %e, "a webhook delivery cannot be read; failing it");
                            "stored delivery unreadable".to_owned()
                        }
                        _ => "event or endpoint gone".to_owned(),
                    };
                    let record = AttemptRecord {
                        state: DeliveryState::Failed,
                        now,
                        next_attempt: now,
                        status: 0,
                        error,
                    };
                    self.finish_attempt(&id, owner, &record).await?;
                }
            }
        }
        Ok(claimed)
    }

    async fn finish_attempt(&self, id: &str, owner: &str, a: &AttemptRecord) -> Result<bool> {
        let finish = match a.state {
            DeliveryState::Pending => None,
            _ => Some(a.now.0),
        };
        let update = sql(
            self.db.get_database_backend(),
            "UPDATE webhook_deliveries SET state = $1, attempts = attempts + 1, \
             next_attempt_time = $2, first_attempt_time = COALESCE(first_attempt_time, $3), \
             last_status = $4, last_error = $5, finish_time = $6, lease_owner = '', \
             lease_until = 0 WHERE id = $7 AND lease_owner = $8 AND state = 'pending'",
            [
                a.state.as_str().into(),
                a.next_attempt.0.into(),
                a.now.0.into(),
                i32::from(a.status).into(),
                a.error.chars().take(300).collect::<String>().into(),
                finish.into(),
                id.into(),
                owner.into(),
            ],
        );
        Ok(self
            .db
            .execute(update)
            .await
            .map_err(db_err)?
            .rows_affected()
            == 1)
    }

    async fn last_success(&self, endpoint_id: &str) -> Result<Option<UnixMillis>> {
        let q = sql(
            self.db.get_database_backend(),
            "SELECT MAX(finish_time) AS t FROM webhook_deliveries \
             WHERE endpoint_id = $1 AND state = 'delivered'",
            [endpoint_id.into()],
        );
        match self.db.query_one(q).await.map_err(db_err)? {
            Some(row) => Ok(row
                .try_get::<Option<i64>>("", "t")
                .map_err(db_err)?
                .map(UnixMillis)),
            None => Ok(None),
        }
    }

    async fn disable_endpoint(
        &self,
        id: &str,
        reason: &str,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<bool> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        let update = sql(
            backend,
            "UPDATE webhook_endpoints SET enabled = $1, disabled_reason = $2, \
             update_time = $3 WHERE id = $4 AND enabled = $5",
            [
                false.into(),
                reason.into(),
                now.0.into(),
                id.into(),
                true.into(),
            ],
        );
        if txn.execute(update).await.map_err(db_err)?.rows_affected() == 0 {
            txn.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        self.commit_audited(txn, &audit, Subject::Other).await?;
        Ok(true)
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let backend = self.db.get_database_backend();
        let mut text = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
             LEFT JOIN events e ON e.seq = d.event_seq WHERE d.tenant_id = $1"
        );
        let mut values: Vec<sea_orm::Value> = vec![q.tenant_id.clone().into()];
        let mut arg = |text: &mut String, clause: &str, v: sea_orm::Value| {
            values.push(v);
            text.push_str(&clause.replace('?', &format!("${}", values.len())));
        };
        if let Some(ep) = &q.endpoint_id {
            arg(&mut text, " AND d.endpoint_id = ?", ep.clone().into());
        }
        if let Some(ev) = &q.event_id {
            arg(&mut text, " AND d.event_id = ?", ev.clone().into());
        }
        if let Some(s) = q.state {
            arg(&mut text, " AND d.state = ?", s.as_str().into());
        }
        if let Some((seq, id)) = &q.before {
            arg(&mut text, " AND (d.event_seq < ?", (*seq).into());
            arg(&mut text, " OR (d.event_seq = ?", (*seq).into());
            arg(&mut text, " AND d.id < ?))", id.clone().into());
        }
        arg(
            &mut text,
            " ORDER BY d.event_seq DESC, d.id DESC LIMIT ?",
            to_i64(q.limit).into(),
        );
        let text = match backend {
            DbBackend::Postgres => text,
            _ => text.replace('$', "?"),
        };
        let stmt = sea_orm::Statement::from_sql_and_values(backend, text, values);
        let rows = self.db.query_all(stmt).await.map_err(db_err)?;
        rows.iter().map(delivery_from).collect()
    }

    async fn redeliver(
        &self,
        event: &Event,
        endpoint_ids: &[String],
        now: UnixMillis,
    ) -> Result<Vec<Delivery>> {
        let txn = self.db.begin().await.map_err(db_err)?;
        let mut ids = Vec::with_capacity(endpoint_ids.len());
        for ep in endpoint_ids {
            ids.push(insert_delivery(&txn, event.seq, event, ep, now).await?);
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            out.push(Self::delivery_in(&txn, id).await?);
        }
        txn.commit().await.map_err(db_err)?;
        self.events_written();
        Ok(out)
    }

    async fn delivery_backlog(&self) -> Result<(u64, Option<UnixMillis>)> {
        let q = sql(
            self.db.get_database_backend(),
            "SELECT COUNT(*) AS n, MIN(create_time) AS oldest FROM webhook_deliveries \
             WHERE state = 'pending'",
            [],
        );
        match self.db.query_one(q).await.map_err(db_err)? {
            Some(row) => Ok((
                u64::try_from(row.try_get::<i64>("", "n").map_err(db_err)?).unwrap_or(0),
                row.try_get::<Option<i64>>("", "oldest")
                    .map_err(db_err)?
                    .map(UnixMillis),
            )),
            None => Ok((0, None)),
        }
    }
}
