//! [`super::super::AuditLog`] on sea-orm. Reading the audit trail (every write appends its event in its own transaction).
use super::*;

#[async_trait::async_trait]
impl AuditLog for SeaStore {
    async fn record_audit_event(&self, event: &AuditEvent) -> Result<()> {
        let txn = self.db.begin().await.map_err(db_err)?;
        self.commit_audited(txn, event, crate::domain::event::Subject::Other)
            .await
    }

    async fn list_audit_events(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        use audit_events::Column as C;
        let mut s = audit_events::Entity::find()
            .order_by_desc(C::Time)
            .order_by_desc(C::Id)
            .limit(q.limit);
        if let Some(t) = &q.tenant_id {
            s = s.filter(C::TenantId.eq(t.as_str()));
        }
        if let Some(k) = &q.key_id {
            s = s.filter(C::KeyId.eq(k.as_str()));
        }
        if let Some(start) = q.start {
            s = s.filter(C::Time.gte(start.0));
        }
        if let Some(end) = q.end {
            s = s.filter(C::Time.lt(end.0));
        }
        if let Some((t, id)) = &q.before {
            s = s.filter(
                Condition::any().add(C::Time.lt(t.0)).add(
                    Condition::all()
                        .add(C::Time.eq(t.0))
                        .add(C::Id.lt(id.as_str())),
                ),
            );
        }
        s.all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|m| {
                Ok(AuditEvent {
                    changed_fields: serde_json::from_str(&m.changed_fields)
                        .map_err(corrupt("stored audit fields"))?,
                    id: m.id,
                    time: UnixMillis(m.time),
                    actor: m.actor,
                    action: m.action,
                    tenant_id: m.tenant_id,
                    key_id: m.key_id,
                    request_id: m.request_id,
                    detail: m.detail,
                })
            })
            .collect()
    }
}
