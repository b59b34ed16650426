//! [`KeyStore`] on sea-orm: one implementation for SQLite and PostgreSQL.
use super::entities::{admin_tokens, api_keys, audit_events, import_prefixes, plans, tenants};
use super::{
    AdminTokenRecord, AuditQuery, BucketSize, KeyQuery, KeyStore, QuotaClaim, UsageBatch,
    UsageQuery, UsageRow,
};
use crate::domain::access::Role;
use crate::domain::import::{ImportFormat, ImportRule};
use crate::domain::quota::{QuotaChange, QuotaCounter};
use crate::domain::Plan;
use crate::domain::{
    AuditEvent, IpAllowlist, KeyRecord, NewKey, ScopeSet, Tenant, TenantPolicy, UnixMillis,
};
use crate::error::{Error, Result};
use sea_orm::sea_query::{Alias, Expr, OnConflict, Order, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, RuntimeErr, TransactionTrait,
};
use sea_orm::{ConnectionTrait, DbBackend};
use std::collections::HashMap;

const MINUTES: &str = "usage_minutes";
const DAYS: &str = "usage_days";

fn usage_cols<const N: usize>(names: [&'static str; N]) -> [Alias; N] {
    names.map(Alias::new)
}

/// Counts are u64 in Rust and BIGINT in SQL; nothing real reaches 2^63.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes the tenant row first, which takes its row lock (PostgreSQL) or the database write
/// lock (SQLite) before anything is read: concurrent key inserts for one tenant queue here
/// and each counts the keys the others committed.
async fn lock_tenant(txn: &sea_orm::DatabaseTransaction, tenant_id: &str) -> Result<()> {
    let touched = tenants::Entity::update_many()
        .col_expr(
            tenants::Column::UpdateTime,
            Expr::col(tenants::Column::UpdateTime).into(),
        )
        .filter(tenants::Column::Id.eq(tenant_id))
        .exec(txn)
        .await
        .map_err(db_err)?;
    if touched.rows_affected == 0 {
        return Err(Error::not_found("tenant", tenant_id));
    }
    Ok(())
}

/// The tenant's keys that are neither revoked nor expired at `now`.
async fn active_keys(
    txn: &sea_orm::DatabaseTransaction,
    tenant_id: &str,
    now: UnixMillis,
) -> Result<u64> {
    api_keys::Entity::find()
        .filter(api_keys::Column::TenantId.eq(tenant_id))
        .filter(not_revoked(now))
        .filter(not_expired(now))
        .count(txn)
        .await
        .map_err(db_err)
}

fn plan_from(m: plans::Model) -> Result<Plan> {
    Ok(Plan {
        limits: serde_json::from_str(&m.limits).map_err(corrupt("stored plan limits"))?,
        id: m.id,
        display_name: m.display_name,
        create_time: UnixMillis(m.create_time),
        update_time: UnixMillis(m.update_time),
    })
}

/// Appends the write's audit event and commits: no change without its event.
async fn commit_audited(txn: sea_orm::DatabaseTransaction, audit: &AuditEvent) -> Result<()> {
    audit_events::Entity::insert(audit_row(audit)?)
        .exec(&txn)
        .await
        .map_err(db_err)?;
    txn.commit().await.map_err(db_err)
}

/// The sea-orm store.
#[derive(Clone)]
pub struct SeaStore {
    db: DatabaseConnection,
}

impl SeaStore {
    pub fn new(db: DatabaseConnection) -> Self {
        SeaStore { db }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Connection-level failures are transient (UNAVAILABLE); anything else is a bug or a
/// schema mismatch (INTERNAL). Either way the cause is logged, never sent to the caller.
fn db_err(e: DbErr) -> Error {
    use sea_orm::sqlx::Error as Sqlx;
    let transient = match &e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            matches!(
                s,
                Sqlx::Io(_)
                    | Sqlx::PoolTimedOut
                    | Sqlx::PoolClosed
                    | Sqlx::WorkerCrashed
                    | Sqlx::Tls(_)
            )
        }
        _ => false,
    };
    if transient {
        Error::Unavailable {
            what: "database",
            source: Box::new(e),
        }
    } else {
        Error::Internal {
            context: "database",
            source: Some(Box::new(e)),
        }
    }
}

fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
    move |e| Error::Internal {
        context: what,
        source: Some(Box::new(e)),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(corrupt("serialising a row"))
}

fn tenant_from(m: tenants::Model) -> Result<Tenant> {
    Ok(Tenant {
        policy: serde_json::from_str::<TenantPolicy>(&m.policy)
            .map_err(corrupt("stored tenant policy"))?,
        id: m.id,
        display_name: m.display_name,
        create_time: UnixMillis(m.create_time),
        update_time: UnixMillis(m.update_time),
    })
}

fn key_from(m: api_keys::Model) -> Result<KeyRecord> {
    let scopes: Vec<String> = serde_json::from_str(&m.scopes).map_err(corrupt("stored scopes"))?;
    let ips: Vec<String> =
        serde_json::from_str(&m.ip_allowlist).map_err(corrupt("stored ip_allowlist"))?;
    let bad_row = |e: Error| Error::Internal {
        context: "stored key row",
        source: Some(Box::new(e)),
    };
    Ok(KeyRecord {
        scopes: ScopeSet::parse("scopes", &scopes).map_err(bad_row)?,
        ip_allowlist: IpAllowlist::parse("ip_allowlist", &ips).map_err(bad_row)?,
        rate_limits: serde_json::from_str(&m.rate_limits).map_err(corrupt("stored rate_limits"))?,
        metadata: serde_json::from_str(&m.metadata).map_err(corrupt("stored metadata"))?,
        id: m.id,
        tenant_id: m.tenant_id,
        name: m.name,
        environment: m.environment,
        lookup_id: m.lookup_id,
        key_prefix: m.key_prefix,
        display_prefix: m.display_prefix,
        enabled: m.enabled,
        create_time: UnixMillis(m.create_time),
        update_time: UnixMillis(m.update_time),
        expire_time: m.expire_time.map(UnixMillis),
        last_used_time: m.last_used_time.map(UnixMillis),
        use_count: u64::try_from(m.use_count).unwrap_or(0),
        revoke_time: m.revoke_time.map(UnixMillis),
        revoke_reason: m.revoke_reason,
        rotated_from: m.rotated_from,
        quota: m
            .quota
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(corrupt("stored quota"))?,
    })
}

fn key_row(k: &NewKey) -> Result<api_keys::ActiveModel> {
    let r = &k.record;
    Ok(api_keys::ActiveModel {
        id: Set(r.id.clone()),
        tenant_id: Set(r.tenant_id.clone()),
        name: Set(r.name.clone()),
        environment: Set(r.environment.clone()),
        lookup_id: Set(r.lookup_id.clone()),
        key_prefix: Set(r.key_prefix.clone()),
        display_prefix: Set(r.display_prefix.clone()),
        secret_hash: Set(k.secret_hash.clone()),
        scopes: Set(to_json(&r.scopes.to_strings())?),
        ip_allowlist: Set(to_json(&r.ip_allowlist.to_strings())?),
        rate_limits: Set(to_json(&r.rate_limits)?),
        metadata: Set(to_json(&r.metadata)?),
        enabled: Set(r.enabled),
        create_time: Set(r.create_time.0),
        update_time: Set(r.update_time.0),
        expire_time: Set(r.expire_time.map(|t| t.0)),
        last_used_time: Set(r.last_used_time.map(|t| t.0)),
        use_count: Set(i64::try_from(r.use_count).unwrap_or(i64::MAX)),
        revoke_time: Set(r.revoke_time.map(|t| t.0)),
        revoke_reason: Set(r.revoke_reason.clone()),
        rotated_from: Set(r.rotated_from.clone()),
        quota: Set(r.quota.as_ref().map(to_json).transpose()?),
    })
}

/// The row of an audit event.
pub fn audit_row(e: &AuditEvent) -> Result<audit_events::ActiveModel> {
    Ok(audit_events::ActiveModel {
        id: Set(e.id.clone()),
        time: Set(e.time.0),
        actor: Set(e.actor.clone()),
        action: Set(e.action.clone()),
        tenant_id: Set(e.tenant_id.clone()),
        key_id: Set(e.key_id.clone()),
        changed_fields: Set(to_json(&e.changed_fields)?),
        request_id: Set(e.request_id.clone()),
        detail: Set(e.detail.clone()),
    })
}

/// Keys that are not revoked at `now`.
fn not_revoked(now: UnixMillis) -> Condition {
    Condition::any()
        .add(api_keys::Column::RevokeTime.is_null())
        .add(api_keys::Column::RevokeTime.gt(now.0))
}

fn not_expired(now: UnixMillis) -> Condition {
    Condition::any()
        .add(api_keys::Column::ExpireTime.is_null())
        .add(api_keys::Column::ExpireTime.gt(now.0))
}

impl SeaStore {
    async fn key_in<C: sea_orm::ConnectionTrait>(conn: &C, id: &str) -> Result<KeyRecord> {
        let m = api_keys::Entity::find_by_id(id.to_owned())
            .one(conn)
            .await
            .map_err(db_err)?;
        key_from(m.ok_or_else(|| Error::not_found("key", id))?)
    }
}

#[async_trait::async_trait]
impl KeyStore for SeaStore {
    async fn upsert_tenant(&self, t: Tenant, audit: AuditEvent) -> Result<Tenant> {
        let row = tenants::ActiveModel {
            id: Set(t.id.clone()),
            display_name: Set(t.display_name.clone()),
            policy: Set(to_json(&t.policy)?),
            create_time: Set(t.create_time.0),
            update_time: Set(t.update_time.0),
        };
        let txn = self.db.begin().await.map_err(db_err)?;
        let columns = [
            tenants::Column::DisplayName,
            tenants::Column::Policy,
            tenants::Column::UpdateTime,
        ];
        tenants::Entity::insert(row)
            .on_conflict(
                OnConflict::column(tenants::Column::Id)
                    .update_columns(columns)
                    .to_owned(),
            )
            .exec(&txn)
            .await
            .map_err(db_err)?;
        commit_audited(txn, &audit).await?;
        self.get_tenant(&t.id)
            .await?
            .ok_or_else(|| Error::internal("tenant vanished after upsert"))
    }

    async fn upsert_plan(&self, p: Plan, audit: AuditEvent) -> Result<Plan> {
        let row = plans::ActiveModel {
            id: Set(p.id.clone()),
            display_name: Set(p.display_name.clone()),
            limits: Set(to_json(&p.limits)?),
            create_time: Set(p.create_time.0),
            update_time: Set(p.update_time.0),
        };
        let txn = self.db.begin().await.map_err(db_err)?;
        plans::Entity::insert(row)
            .on_conflict(
                OnConflict::column(plans::Column::Id)
                    .update_columns([
                        plans::Column::DisplayName,
                        plans::Column::Limits,
                        plans::Column::UpdateTime,
                    ])
                    .to_owned(),
            )
            .exec(&txn)
            .await
            .map_err(db_err)?;
        commit_audited(txn, &audit).await?;
        self.get_plan(&p.id)
            .await?
            .ok_or_else(|| Error::internal("plan vanished after upsert"))
    }

    async fn get_plan(&self, id: &str) -> Result<Option<Plan>> {
        plans::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)?
            .map(plan_from)
            .transpose()
    }

    async fn list_plans(&self) -> Result<Vec<Plan>> {
        plans::Entity::find()
            .order_by_asc(plans::Column::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(plan_from)
            .collect()
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let m = tenants::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(db_err)?;
        m.map(tenant_from).transpose()
    }

    async fn list_tenants(&self, after: Option<&str>, limit: u64) -> Result<Vec<Tenant>> {
        let mut q = tenants::Entity::find()
            .order_by_asc(tenants::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            q = q.filter(tenants::Column::Id.gt(after));
        }
        q.all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(tenant_from)
            .collect()
    }

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
        commit_audited(txn, &audit).await?;
        Ok(key.record)
    }

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
            audit_events::Entity::insert(audit_row(&audit)?)
                .exec(&txn)
                .await
                .map_err(db_err)?;
            out.push(key.record);
        }
        txn.commit().await.map_err(db_err)?;
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
            s = s.filter(
                Condition::any().add(C::CreateTime.gt(t.0)).add(
                    Condition::all()
                        .add(C::CreateTime.eq(t.0))
                        .add(C::Id.gt(id.as_str())),
                ),
            );
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
        commit_audited(txn, &audit).await
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
        if res.rows_affected > 0 {
            audit_events::Entity::insert(audit_row(&audit)?)
                .exec(&txn)
                .await
                .map_err(db_err)?;
        }
        let key = Self::key_in(&txn, id).await?;
        txn.commit().await.map_err(db_err)?;
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
        audit_events::Entity::insert(audit_row(&audit)?)
            .exec(&txn)
            .await
            .map_err(db_err)?;
        let old = Self::key_in(&txn, old_id).await?;
        txn.commit().await.map_err(db_err)?;
        Ok((old, new.record))
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

    async fn ping(&self) -> Result<()> {
        self.db.ping().await.map_err(db_err)
    }

    async fn record_usage(&self, b: &UsageBatch) -> Result<()> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        for (table, cells) in [(MINUTES, &b.minutes), (DAYS, &b.days)] {
            // 7 parameters a row: far below SQLite's and PostgreSQL's bind limits.
            for chunk in cells.chunks(500) {
                let mut q = Query::insert();
                q.into_table(Alias::new(table)).columns(usage_cols([
                    "key_id",
                    "tenant_id",
                    "bucket",
                    "endpoint",
                    "reason",
                    "count",
                    "cost",
                ]));
                for c in chunk {
                    q.values([
                        c.key_id.clone().into(),
                        c.tenant_id.clone().into(),
                        c.bucket.0.into(),
                        c.endpoint.clone().into(),
                        c.reason.into(),
                        to_i64(c.count).into(),
                        to_i64(c.cost).into(),
                    ])
                    .map_err(|e| Error::Internal {
                        context: "usage insert",
                        source: Some(Box::new(e)),
                    })?;
                }
                let add = |col: &str| {
                    Expr::col((Alias::new(table), Alias::new(col)))
                        .add(Expr::col((Alias::new("excluded"), Alias::new(col))))
                };
                q.on_conflict(
                    OnConflict::columns(usage_cols(["key_id", "bucket", "endpoint", "reason"]))
                        .value(Alias::new("count"), add("count"))
                        .value(Alias::new("cost"), add("cost"))
                        .to_owned(),
                );
                txn.execute(backend.build(&q)).await.map_err(db_err)?;
            }
        }
        // One UPDATE … FROM (VALUES …) per 300 keys instead of one per key: with many
        // active keys the per-key statements were most of a flush's cost (the benchmark's
        // check_many_keys).
        let max = match backend {
            DbBackend::Postgres => "GREATEST",
            _ => "MAX",
        };
        for chunk in b.keys.chunks(300) {
            let mut values = Vec::with_capacity(chunk.len() * 3);
            let mut rows = Vec::with_capacity(chunk.len());
            for (i, k) in chunk.iter().enumerate() {
                rows.push(format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
                values.push(sea_orm::Value::from(k.key_id.clone()));
                values.push(to_i64(k.uses).into());
                values.push(k.last_used.0.into());
            }
            let text = format!(
                "UPDATE api_keys SET use_count = use_count + v.uses, \
                 last_used_time = {max}(COALESCE(last_used_time, v.last_used), v.last_used) \
                 FROM (SELECT column1 AS id, column2 AS uses, column3 AS last_used \
                 FROM (VALUES {}) AS t) AS v WHERE api_keys.id = v.id",
                rows.join(", ")
            );
            let text = match backend {
                DbBackend::Postgres => text,
                _ => text.replace('$', "?"),
            };
            txn.execute(sea_orm::Statement::from_sql_and_values(
                backend, text, values,
            ))
            .await
            .map_err(db_err)?;
        }
        txn.commit().await.map_err(db_err)
    }

    async fn usage(&self, uq: &UsageQuery) -> Result<Vec<UsageRow>> {
        let table = Alias::new(match uq.size {
            BucketSize::Minute => MINUTES,
            BucketSize::Day => DAYS,
        });
        let col = |c: &str| Expr::col(Alias::new(c));
        let mut q = Query::select();
        q.from(table)
            .columns(usage_cols(["bucket", "endpoint", "reason"]))
            .expr_as(
                Expr::cust(r#"CAST(SUM("count") AS BIGINT)"#),
                Alias::new("n"),
            )
            .expr_as(
                Expr::cust(r#"CAST(SUM("cost") AS BIGINT)"#),
                Alias::new("c"),
            )
            .and_where(col("tenant_id").eq(uq.tenant_id.as_str()))
            .and_where(col("bucket").gte(uq.start.0))
            .and_where(col("bucket").lt(uq.end.0))
            .group_by_columns(usage_cols(["bucket", "endpoint", "reason"]))
            .order_by(Alias::new("bucket"), Order::Asc)
            .order_by(Alias::new("endpoint"), Order::Asc);
        if let Some(k) = &uq.key_id {
            q.and_where(col("key_id").eq(k.as_str()));
        }
        let rows = self
            .db
            .query_all(self.db.get_database_backend().build(&q))
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let get_i = |c: &str| r.try_get::<i64>("", c).map_err(db_err);
                let get_s = |c: &str| r.try_get::<String>("", c).map_err(db_err);
                Ok(UsageRow {
                    bucket: UnixMillis(get_i("bucket")?),
                    endpoint: get_s("endpoint")?,
                    reason: get_s("reason")?,
                    count: u64::try_from(get_i("n")?).unwrap_or(0),
                    cost: u64::try_from(get_i("c")?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn uses_in_day(
        &self,
        key_ids: &[String],
        day: UnixMillis,
    ) -> Result<HashMap<String, u64>> {
        if key_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let col = |c: &str| Expr::col(Alias::new(c));
        let mut q = Query::select();
        q.from(Alias::new(DAYS))
            .column(Alias::new("key_id"))
            .expr_as(
                Expr::cust(r#"CAST(SUM("count") AS BIGINT)"#),
                Alias::new("n"),
            )
            .and_where(col("bucket").eq(day.0))
            .and_where(col("key_id").is_in(key_ids.iter().map(String::as_str)))
            .group_by_col(Alias::new("key_id"));
        let rows = self
            .db
            .query_all(self.db.get_database_backend().build(&q))
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String>("", "key_id").map_err(db_err)?,
                    u64::try_from(r.try_get::<i64>("", "n").map_err(db_err)?).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn prune_usage(
        &self,
        minutes_before: UnixMillis,
        days_before: UnixMillis,
    ) -> Result<u64> {
        let backend = self.db.get_database_backend();
        let mut deleted = 0;
        for (table, before) in [(MINUTES, minutes_before), (DAYS, days_before)] {
            let mut q = Query::delete();
            q.from_table(Alias::new(table))
                .and_where(Expr::col(Alias::new("bucket")).lt(before.0));
            deleted += self
                .db
                .execute(backend.build(&q))
                .await
                .map_err(db_err)?
                .rows_affected();
        }
        Ok(deleted)
    }

    async fn claim_quota(&self, c: &QuotaClaim) -> Result<u64> {
        let backend = self.db.get_database_backend();
        let (max, min) = match backend {
            DbBackend::Postgres => ("GREATEST", "LEAST"),
            _ => ("MAX", "MIN"),
        };
        // SET expressions all read the row as it was, so `last_claim` and `used` see the
        // same remainder; the WHERE makes check-and-take one step on either database.
        let amount = format!("{max}($2, {min}($3, ($1 + granted - used) / 8))");
        let update = sql(
            backend,
            &format!(
                "UPDATE quota_counters SET last_claim = {amount}, used = used + {amount}, \
                 update_time = $4 WHERE subject = $5 AND period_start = $6 \
                 AND $1 + granted - used >= $2 RETURNING last_claim"
            ),
            [
                to_i64(c.limit).into(),
                to_i64(c.need).into(),
                to_i64(c.want.max(c.need)).into(),
                c.now.0.into(),
                c.subject.clone().into(),
                c.period_start.0.into(),
            ],
        );
        let claimed = |row: Option<sea_orm::QueryResult>| -> Result<Option<u64>> {
            row.map(|r| r.try_get::<i64>("", "last_claim"))
                .transpose()
                .map(|n| n.map(|n| u64::try_from(n).unwrap_or(0)))
                .map_err(db_err)
        };
        if let Some(n) = claimed(self.db.query_one(update.clone()).await.map_err(db_err)?)? {
            return Ok(n);
        }
        // No row (first claim of the period), or not enough left: create the row if it is
        // missing and try once more.
        let insert = sql(
            backend,
            "INSERT INTO quota_counters (subject, period_start, used, granted, last_claim, \
             update_time) VALUES ($1, $2, 0, 0, 0, $3) \
             ON CONFLICT (subject, period_start) DO NOTHING",
            [
                c.subject.clone().into(),
                c.period_start.0.into(),
                c.now.0.into(),
            ],
        );
        // Another replica may have created it meanwhile: the update decides either way.
        self.db.execute(insert).await.map_err(db_err)?;
        Ok(claimed(self.db.query_one(update).await.map_err(db_err)?)?.unwrap_or(0))
    }

    async fn release_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        units: u64,
        now: UnixMillis,
    ) -> Result<()> {
        let backend = self.db.get_database_backend();
        let release = sql(
            backend,
            "UPDATE quota_counters SET used = CASE WHEN used >= $1 THEN used - $1 ELSE 0 END, \
             update_time = $2 WHERE subject = $3 AND period_start = $4",
            [
                to_i64(units).into(),
                now.0.into(),
                subject.into(),
                period_start.0.into(),
            ],
        );
        self.db.execute(release).await.map_err(db_err)?;
        Ok(())
    }

    async fn adjust_quota(
        &self,
        subject: &str,
        period_start: UnixMillis,
        limit: u64,
        change: QuotaChange,
        now: UnixMillis,
        audit: AuditEvent,
    ) -> Result<QuotaCounter> {
        let backend = self.db.get_database_backend();
        let txn = self.db.begin().await.map_err(db_err)?;
        let insert = sql(
            backend,
            "INSERT INTO quota_counters (subject, period_start, used, granted, last_claim, \
             update_time) VALUES ($1, $2, 0, 0, 0, $3) \
             ON CONFLICT (subject, period_start) DO NOTHING",
            [subject.into(), period_start.0.into(), now.0.into()],
        );
        txn.execute(insert).await.map_err(db_err)?;
        let (set, value) = match change {
            QuotaChange::Add(d) => ("granted = granted + $1", d),
            QuotaChange::SetRemaining(n) => (
                "granted = $1 + used",
                // remaining = limit + granted - used = n  ⇒  granted = n - limit + used
                to_i64(n).saturating_sub(to_i64(limit)),
            ),
        };
        let update = sql(
            backend,
            &format!(
                "UPDATE quota_counters SET {set}, update_time = $2 \
                 WHERE subject = $3 AND period_start = $4 RETURNING used, granted"
            ),
            [
                value.into(),
                now.0.into(),
                subject.into(),
                period_start.0.into(),
            ],
        );
        let row = txn
            .query_one(update)
            .await
            .map_err(db_err)?
            .ok_or(Error::Internal {
                context: "quota counter row vanished in its transaction",
                source: None,
            })?;
        let counter = QuotaCounter {
            used: u64::try_from(row.try_get::<i64>("", "used").map_err(db_err)?).unwrap_or(0),
            granted: row.try_get::<i64>("", "granted").map_err(db_err)?,
        };
        commit_audited(txn, &audit).await?;
        Ok(counter)
    }

    async fn quota_counters(
        &self,
        cells: &[(String, UnixMillis)],
    ) -> Result<HashMap<(String, UnixMillis), QuotaCounter>> {
        let mut out = HashMap::new();
        if cells.is_empty() {
            return Ok(out);
        }
        let backend = self.db.get_database_backend();
        for chunk in cells.chunks(400) {
            let subjects: Vec<&str> = chunk.iter().map(|(s, _)| s.as_str()).collect();
            let starts: Vec<i64> = chunk.iter().map(|(_, p)| p.0).collect();
            let q = Query::select()
                .columns(usage_cols(["subject", "period_start", "used", "granted"]))
                .from(Alias::new("quota_counters"))
                .and_where(Expr::col(Alias::new("subject")).is_in(subjects))
                .and_where(Expr::col(Alias::new("period_start")).is_in(starts))
                .to_owned();
            for row in self.db.query_all(backend.build(&q)).await.map_err(db_err)? {
                let key = (
                    row.try_get::<String>("", "subject").map_err(db_err)?,
                    UnixMillis(row.try_get::<i64>("", "period_start").map_err(db_err)?),
                );
                if !chunk.contains(&key) {
                    continue;
                }
                out.insert(
                    key,
                    QuotaCounter {
                        used: u64::try_from(row.try_get::<i64>("", "used").map_err(db_err)?)
                            .unwrap_or(0),
                        granted: row.try_get::<i64>("", "granted").map_err(db_err)?,
                    },
                );
            }
        }
        Ok(out)
    }

    async fn add_admin_token(&self, t: &AdminTokenRecord) -> Result<()> {
        let row = admin_tokens::ActiveModel {
            id: Set(t.id.clone()),
            token_digest: Set(hex(&t.digest)),
            description: Set(t.description.clone()),
            create_time: Set(t.create_time.0),
            role: Set(t.role.as_str().to_owned()),
            tenant_id: Set(t.tenant_id.clone()),
            revoke_time: Set(None),
        };
        admin_tokens::Entity::insert(row)
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>> {
        use admin_tokens::Column as C;
        let rows = admin_tokens::Entity::find()
            .order_by_asc(C::CreateTime)
            .order_by_asc(C::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?;
        rows.into_iter()
            .map(|r| {
                let digest = unhex(&r.token_digest)
                    .ok_or_else(|| Error::internal("stored admin token digest"))?;
                let role = Role::parse("role", &r.role)
                    .map_err(|_| Error::internal("stored admin token role"))?;
                Ok(AdminTokenRecord {
                    id: r.id,
                    digest,
                    description: r.description,
                    role,
                    tenant_id: r.tenant_id,
                    create_time: UnixMillis(r.create_time),
                    revoke_time: r.revoke_time.map(UnixMillis),
                })
            })
            .collect()
    }

    async fn revoke_admin_token(&self, id: &str, now: UnixMillis) -> Result<bool> {
        use admin_tokens::Column as C;
        let res = admin_tokens::Entity::update_many()
            .col_expr(C::RevokeTime, Expr::value(now.0))
            .filter(C::Id.eq(id))
            .filter(C::RevokeTime.is_null())
            .exec(&self.db)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected == 1)
    }
}

/// A raw statement written with PostgreSQL's `$n` placeholders, as SQLite's `?n`.
fn sql<const N: usize>(
    backend: DbBackend,
    text: &str,
    values: [sea_orm::Value; N],
) -> sea_orm::Statement {
    let text = match backend {
        DbBackend::Postgres => text.to_owned(),
        _ => text.replace('$', "?"),
    };
    sea_orm::Statement::from_sql_and_values(backend, text, values)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
