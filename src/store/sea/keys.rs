//! [`super::super::KeyStore`] on sea-orm. Keys: insert under the cap, read, list, update, revoke, rotate.
use super::*;
use crate::domain::event::Subject;

/// Keys after `(t, id)` in (`time`, id) order: a page's resume point.
fn after_cursor(time: api_keys::Column, t: UnixMillis, id: &str) -> Condition {
    Condition::any().add(time.gt(t.0)).add(
        Condition::all()
            .add(time.eq(t.0))
            .add(api_keys::Column::Id.gt(id)),
    )
}

#[async_trait::async_trait]
impl KeyStore for SeaStore {
    async fn insert_key(
        &self,
        key: NewKey,
        cap: u32,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<KeyRecord> {
        let tenant_id = key.record.tenant_id.clone();
        let row = key_row(&key)?;
        let txn = self.db.begin().await.map_err(db_err)?;
        lock_tenant(&txn, &tenant_id).await?;
        if cap > 0 {
            let active = active_keys(&txn, &tenant_id, now).await?;
            if active >= u64::from(cap) {
                return Err(Error::precondition(
                    "tenant.policy.max_active_keys",
                    format!("tenant {tenant_id:?} already has {active} active keys, its cap is {cap}; revoke one first"),
                ));
            }
        }
        api_keys::Entity::insert(row)
            .exec(&txn)
            .await
            .map_err(db_err)?;
        self.commit_audited(txn, &audit, Subject::Key(&key.record))
            .await?;
        Ok(key.record)
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        let m = api_keys::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)?;
        m.map(key_from).transpose()
    }

    async fn find_by_lookup_id(&self, lookup_id: &str) -> Result<Option<(KeyRecord, String)>> {
        let m = api_keys::Entity::find()
            .filter(api_keys::Column::LookupId.eq(lookup_id))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        match m {
            None => Ok(None),
            Some(m) => {
                let hash = m.secret_hash.clone();
                Ok(Some((key_from(m)?, hash)))
            }
        }
    }

    async fn list_keys(&self, q: &KeyQuery) -> Result<Vec<KeyRecord>> {
        use api_keys::Column as C;
        let mut s = api_keys::Entity::find()
            .filter(C::TenantId.eq(q.tenant_id.as_str()))
            .order_by_asc(C::CreateTime)
            .order_by_asc(C::Id)
            .limit(q.limit);
        if let Some((t, id)) = &q.after {
            s = s.filter(after_cursor(C::CreateTime, *t, id));
        }
        if !q.include_revoked {
            s = s.filter(not_revoked(q.now));
        }
        if !q.include_expired {
            s = s.filter(not_expired(q.now));
        }
        s.all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(key_from)
            .collect()
    }

    async fn keys_expiring(
        &self,
        from: UnixMillis,
        to: UnixMillis,
        after: Option<(UnixMillis, String)>,
        limit: u64,
    ) -> Result<Vec<KeyRecord>> {
        use api_keys::Column as C;
        let mut s = api_keys::Entity::find()
            .filter(C::ExpireTime.gt(from.0))
            .filter(C::ExpireTime.lte(to.0))
            .filter(not_revoked(from))
            .order_by_asc(C::ExpireTime)
            .order_by_asc(C::Id)
            .limit(limit);
        if let Some((t, id)) = &after {
            s = s.filter(after_cursor(C::ExpireTime, *t, id));
        }
        s.all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(key_from)
            .collect()
    }

    async fn update_key_settings(&self, k: &KeyRecord, audit: AuditEvent) -> Result<()> {
        use api_keys::Column as C;
        let txn = self.db.begin().await.map_err(db_err)?;
        let res = api_keys::Entity::update_many()
            .col_expr(C::Name, Expr::value(k.name.clone()))
            .col_expr(C::Scopes, Expr::value(to_json(&k.scopes.to_strings())?))
            .col_expr(
                C::IpAllowlist,
                Expr::value(to_json(&k.ip_allowlist.to_strings())?),
            )
            .col_expr(C::RateLimits, Expr::value(to_json(&k.rate_limits)?))
            .col_expr(
                C::Quota,
                Expr::value(k.quota.as_ref().map(to_json).transpose()?),
            )
            .col_expr(C::Metadata, Expr::value(to_json(&k.metadata)?))
            .col_expr(C::Enabled, Expr::value(k.enabled))
            .col_expr(C::UpdateTime, Expr::value(k.update_time.0))
            .filter(C::Id.eq(k.id.as_str()))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if res.rows_affected == 0 {
            return Err(Error::not_found("key", &k.id));
        }
        self.commit_audited(txn, &audit, Subject::Key(k)).await
    }

    async fn disable_key(&self, id: &str, now: UnixMillis, audit: AuditEvent) -> Result<bool> {
        use api_keys::Column as C;
        let txn = self.db.begin().await.map_err(db_err)?;
        let res = api_keys::Entity::update_many()
            .col_expr(C::Enabled, Expr::value(false))
            .col_expr(C::UpdateTime, Expr::value(now.0))
            .filter(C::Id.eq(id))
            .filter(C::Enabled.eq(true))
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if res.rows_affected == 0 {
            txn.rollback().await.map_err(db_err)?;
            return Ok(false);
        }
        let key = Self::key_in(&txn, id).await?;
        self.commit_audited(txn, &audit, Subject::Key(&key)).await?;
        Ok(true)
    }

    async fn revoke_key(
        &self,
        id: &str,
        at: UnixMillis,
        reason: &str,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<KeyRecord> {
        use api_keys::Column as C;
        let txn = self.db.begin().await.map_err(db_err)?;
        // Only moves revocation earlier: revoking a key twice keeps the first time and reason.
        let res = api_keys::Entity::update_many()
            .col_expr(C::RevokeTime, Expr::value(at.0))
            .col_expr(C::RevokeReason, Expr::value(reason.to_owned()))
            .col_expr(C::UpdateTime, Expr::value(now.0))
            .filter(C::Id.eq(id))
            .filter(
                Condition::any()
                    .add(C::RevokeTime.is_null())
                    .add(C::RevokeTime.gt(at.0)),
            )
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let key = Self::key_in(&txn, id).await?;
        if res.rows_affected > 0 {
            self.commit_audited(txn, &audit, Subject::Key(&key)).await?;
        } else {
            txn.commit().await.map_err(db_err)?;
        }
        Ok(key)
    }

    async fn rotate_key(
        &self,
        old_id: &str,
        revoke_at: UnixMillis,
        new: NewKey,
        audit: AuditEvent,
    ) -> Result<(KeyRecord, KeyRecord)> {
        use api_keys::Column as C;
        let row = key_row(&new)?;
        let txn = self.db.begin().await.map_err(db_err)?;
        // Only a key with no revocation scheduled can be rotated; the filter makes two
        // concurrent rotations of one key produce one successor, not two.
        let res = api_keys::Entity::update_many()
            .col_expr(C::RevokeTime, Expr::value(revoke_at.0))
            .col_expr(
                C::RevokeReason,
                Expr::value(format!("rotated:{}", new.record.id)),
            )
            .col_expr(C::UpdateTime, Expr::value(new.record.create_time.0))
            .filter(C::Id.eq(old_id))
            .filter(C::RevokeTime.is_null())
            .exec(&txn)
            .await
            .map_err(db_err)?;
        if res.rows_affected == 0 {
            return Err(Error::precondition(
                "key.state",
                "the key is revoked or already rotated",
            ));
        }
        api_keys::Entity::insert(row)
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let old = Self::key_in(&txn, old_id).await?;
        self.commit_audited(txn, &audit, Subject::Rotation(&old, &new.record))
            .await?;
        Ok((old, new.record))
    }
}
