//! [`super::super::ImportStore`] on sea-orm. Keys imported by their stored hash, and the prefixes they came under.
use super::*;

#[async_trait::async_trait]
impl ImportStore for SeaStore {
    async fn import_keys(
        &self,
        rule: &ImportRule,
        keys: Vec<(NewKey, AuditEvent)>,
        cap: u32,
        now: UnixMillis,
    ) -> Result<Vec<KeyRecord>> {
        let txn = self.db.begin().await.map_err(db_err)?;
        lock_tenant(&txn, &rule.tenant_id).await?;
        // Prefixes must not shadow each other across rules: one rule decides a key.
        let existing = import_prefixes::Entity::find()
            .all(&txn)
            .await
            .map_err(db_err)?;
        let mut known = false;
        for e in &existing {
            if e.key_prefix == rule.key_prefix {
                if e.tenant_id != rule.tenant_id
                    || e.format != rule.format.as_str()
                    || e.lookup_len as usize != rule.lookup_len
                {
                    return Err(Error::precondition(
                        "key_prefix",
                        "this prefix was imported before with another tenant, format or lookup length",
                    ));
                }
                known = true;
            } else if e.key_prefix.starts_with(&rule.key_prefix)
                || rule.key_prefix.starts_with(&e.key_prefix)
            {
                return Err(Error::precondition(
                    "key_prefix",
                    format!("overlaps the imported prefix {:?}", e.key_prefix),
                ));
            }
        }
        if !known {
            import_prefixes::Entity::insert(import_prefixes::ActiveModel {
                key_prefix: Set(rule.key_prefix.clone()),
                tenant_id: Set(rule.tenant_id.clone()),
                format: Set(rule.format.as_str().to_owned()),
                lookup_len: Set(rule.lookup_len as i32),
                create_time: Set(now.0),
            })
            .exec(&txn)
            .await
            .map_err(db_err)?;
        }
        if cap > 0 {
            let active = active_keys(&txn, &rule.tenant_id, now).await?;
            if active + keys.len() as u64 > u64::from(cap) {
                return Err(Error::precondition(
                    "tenant.policy.max_active_keys",
                    format!(
                        "importing {} keys would exceed the tenant's cap of {cap} active keys ({active} now)",
                        keys.len()
                    ),
                ));
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut written = Vec::new();
        for (i, (key, audit)) in keys.into_iter().enumerate() {
            let taken = api_keys::Entity::find()
                .filter(api_keys::Column::LookupId.eq(key.record.lookup_id.as_str()))
                .count(&txn)
                .await
                .map_err(db_err)?;
            if taken > 0 {
                return Err(Error::precondition(
                    "keys",
                    format!(
                        "keys[{i}] is already imported (same hash or id); nothing was imported"
                    ),
                ));
            }
            api_keys::Entity::insert(key_row(&key)?)
                .exec(&txn)
                .await
                .map_err(db_err)?;
            written.extend(
                events::write_audit(
                    &txn,
                    &audit,
                    crate::domain::event::Subject::Key(&key.record),
                )
                .await?,
            );
            out.push(key.record);
        }
        txn.commit().await.map_err(db_err)?;
        self.count_events(&written);
        self.events_written();
        Ok(out)
    }

    async fn import_rules(&self) -> Result<Vec<ImportRule>> {
        import_prefixes::Entity::find()
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|m| {
                Ok(ImportRule {
                    format: ImportFormat::parse(&m.format)
                        .ok_or_else(|| Error::internal("stored import format"))?,
                    key_prefix: m.key_prefix,
                    tenant_id: m.tenant_id,
                    lookup_len: usize::try_from(m.lookup_len).unwrap_or(0),
                })
            })
            .collect()
    }
}
