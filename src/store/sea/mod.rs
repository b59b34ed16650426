//! The store on sea-orm: one implementation of every storage trait for SQLite and
//! PostgreSQL, one module per kind of data. Row conversions and the helpers the modules
//! share live here.
mod audit;
mod events;
mod imports;
mod keys;
mod quotas;
mod reservations;
mod tenants_plans;
mod tokens;
mod usage;
mod webhooks;

use super::entities::{admin_tokens, api_keys, audit_events, import_prefixes, plans, tenants};
use super::{
    AdminTokenRecord, AdminTokenStore, AuditLog, AuditQuery, BucketSize, ImportStore, KeyQuery,
    KeyStore, QuotaClaim, QuotaStore, StoreHealth, TenantStore, UsageBatch, UsageQuery, UsageRow,
    UsageStore,
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

impl SeaStore {
    /// Appends the write's audit event and the events it announces, and commits: no
    /// change without its audit event, and no event lost or sent for a change undone.
    async fn commit_audited(
        &self,
        txn: sea_orm::DatabaseTransaction,
        audit: &AuditEvent,
        subject: crate::domain::event::Subject<'_>,
    ) -> Result<()> {
        let written = events::write_audit(&txn, audit, subject).await?;
        txn.commit().await.map_err(db_err)?;
        self.count_events(&written);
        self.events_written();
        Ok(())
    }

    /// Wakes this replica's deliverer and event followers.
    fn events_written(&self) {
        self.written.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn count_events(&self, written: &[crate::domain::event::Event]) {
        if let Some(c) = &self.events_counter {
            for e in written {
                c.with_label_values(&[e.kind.as_str()]).inc();
            }
        }
    }

    /// Counts every event this store handle writes, by type (`keygate_events_written_total`).
    pub fn count_events_in(mut self, counter: prometheus::IntCounterVec) -> Self {
        self.events_counter = Some(counter);
        self
    }
}

/// The sea-orm store.
#[derive(Clone)]
pub struct SeaStore {
    db: DatabaseConnection,
    written: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    events_counter: Option<prometheus::IntCounterVec>,
}

impl SeaStore {
    pub fn new(db: DatabaseConnection) -> Self {
        SeaStore {
            db,
            written: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
            events_counter: None,
        }
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
impl StoreHealth for SeaStore {
    async fn ping(&self) -> Result<()> {
        self.db.ping().await.map_err(db_err)
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
