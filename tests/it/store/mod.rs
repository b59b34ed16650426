//! One behaviour suite per storage seam of `store`, driven through the traits themselves
//! (no server), each test on a real SQLite file and on a fresh PostgreSQL database with
//! the same assertions. The builders here make each test read as the behaviour it checks.
#![allow(dead_code)]
use crate::support::{Db, TestDb};
use keygate::domain::access::Role;
use keygate::domain::quota::{QuotaPeriod, QuotaSpec};
use keygate::domain::{
    AuditEvent, IpAllowlist, KeyRecord, NewKey, Plan, PlanLimits, RateLimitSpec, ScopeSet, Tenant,
    TenantPolicy, UnixMillis,
};
use keygate::error::Error;
use keygate::store::{self, AdminTokenRecord, AuditQuery, SeaStore, Stores};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod audit;
mod changes;
mod events;
mod health;
mod imports;
mod keys;
mod quotas;
mod reservations;
mod tenants;
mod tokens;
mod usage;

/// A UTC midnight, so minute and day buckets start here.
pub const T0: UnixMillis = UnixMillis(1_699_920_000_000);
pub const MINUTE: i64 = 60_000;
pub const DAY: i64 = 86_400_000;

/// `T0` plus `ms`.
pub fn at(ms: i64) -> UnixMillis {
    UnixMillis(T0.0 + ms)
}

/// Connections per test store: enough for the concurrency tests to contend for real.
const POOL: u32 = 8;

/// The sea-orm store on `db`, schema migrated.
pub async fn open_sea(db: &TestDb) -> SeaStore {
    let conn = store::connect(&db.url, POOL, Duration::from_secs(10))
        .await
        .expect("store connects");
    store::migrate(&conn).await.expect("migrations apply");
    SeaStore::new(conn)
}

/// Every seam of a store on `db` (connect + migrate + `Stores::of`).
pub async fn open_stores(db: &TestDb) -> Stores {
    Stores::of(open_sea(db).await)
}

/// A fresh database of `kind` and the stores on it; `None` when PostgreSQL is absent
/// outside CI (after the harness's loud message).
pub async fn fresh(kind: Db) -> Option<(TestDb, Stores)> {
    let db = TestDb::new(kind).await?;
    let stores = open_stores(&db).await;
    Some((db, stores))
}

/// `let (_db, s) = stores_or_skip!(db);` — the database lives as long as `_db`.
#[macro_export]
macro_rules! stores_or_skip {
    ($db:expr) => {
        match $crate::store::fresh($db).await {
            Some(pair) => pair,
            None => return,
        }
    };
}

/// A tenant with the default policy.
pub fn tenant(id: &str) -> Tenant {
    tenant_with(id, TenantPolicy::default())
}

pub fn tenant_with(id: &str, policy: TenantPolicy) -> Tenant {
    Tenant {
        id: id.to_owned(),
        display_name: format!("{id} display"),
        policy,
        create_time: T0,
        update_time: T0,
    }
}

/// Stores `tenant(id)` (its audit event included).
pub async fn seed_tenant(s: &Stores, id: &str) -> Tenant {
    s.tenants
        .upsert_tenant(tenant(id), audit("upsert_tenant", id, ""))
        .await
        .expect("tenant stored")
}

pub fn per_minute(name: &str, limit: u64) -> RateLimitSpec {
    RateLimitSpec {
        name: name.to_owned(),
        limit,
        window: Duration::from_secs(60),
    }
}

pub fn plan(id: &str) -> Plan {
    Plan {
        id: id.to_owned(),
        display_name: format!("{id} plan"),
        limits: PlanLimits {
            shared_rate_limits: vec![per_minute("plan-minute", 100)],
            ..Default::default()
        },
        create_time: T0,
        update_time: T0,
    }
}

pub fn scopes(raw: &[&str]) -> ScopeSet {
    ScopeSet::parse("scopes", raw).unwrap()
}

pub fn ips(raw: &[&str]) -> IpAllowlist {
    IpAllowlist::parse("ip_allowlist", raw).unwrap()
}

/// A new, active key `id` of `tenant_id`, created at `T0`; its lookup id and hash are
/// derived from `id` so each key's are distinct.
pub fn key(tenant_id: &str, id: &str) -> NewKey {
    NewKey {
        record: KeyRecord {
            id: id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            name: format!("{id} name"),
            environment: "live".to_owned(),
            lookup_id: format!("lk_{id}"),
            key_prefix: "kg_live_".to_owned(),
            // The column holds 8 characters (the start of a real key's lookup id).
            display_prefix: id.chars().take(8).collect(),
            scopes: scopes(&["docs:read"]),
            ip_allowlist: IpAllowlist::default(),
            rate_limits: vec![],
            quota: None,
            metadata: BTreeMap::new(),
            enabled: true,
            create_time: T0,
            update_time: T0,
            expire_time: None,
            last_used_time: None,
            use_count: 0,
            revoke_time: None,
            revoke_reason: None,
            rotated_from: None,
        },
        secret_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$hash-of-{id}"),
    }
}

/// Variations of a [`key`], for the cases a test sets up.
pub trait KeyExt: Sized {
    fn created(self, t: UnixMillis) -> Self;
    fn expiring(self, t: UnixMillis) -> Self;
}

impl KeyExt for NewKey {
    fn created(mut self, t: UnixMillis) -> Self {
        self.record.create_time = t;
        self.record.update_time = t;
        self
    }

    fn expiring(mut self, t: UnixMillis) -> Self {
        self.record.expire_time = Some(t);
        self
    }
}

/// A key with every optional field set, so a round trip shows each one survives.
pub fn full_key(tenant_id: &str, id: &str) -> NewKey {
    let mut k = key(tenant_id, id);
    let r = &mut k.record;
    r.scopes = scopes(&["docs:read", "docs:write", "billing:*"]);
    r.ip_allowlist = ips(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]);
    r.rate_limits = vec![per_minute("minute", 60), per_minute("burst", 5)];
    r.quota = Some(QuotaSpec {
        limit: 1000,
        period: QuotaPeriod::Month,
        refill_anchor: Some(at(3 * DAY)),
    });
    r.metadata = BTreeMap::from([
        ("owner".to_owned(), "team-a".to_owned()),
        ("ticket".to_owned(), "OPS-1".to_owned()),
    ]);
    r.expire_time = Some(at(30 * DAY));
    k
}

/// An audit event with a fresh, unique id, at `T0`.
pub fn audit(action: &str, tenant_id: &str, key_id: &str) -> AuditEvent {
    audit_at(T0, action, tenant_id, key_id)
}

pub fn audit_at(time: UnixMillis, action: &str, tenant_id: &str, key_id: &str) -> AuditEvent {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    AuditEvent {
        id: format!(
            "aud_{:013}_{seq:010}_{}",
            time.0,
            keygate::domain::key::random_base62(6)
        ),
        time,
        actor: "tok_test".to_owned(),
        action: action.to_owned(),
        tenant_id: tenant_id.to_owned(),
        key_id: key_id.to_owned(),
        changed_fields: vec![],
        request_id: format!("req-{seq}"),
        detail: String::new(),
    }
}

/// Every audit event of `tenant_id`, newest first.
pub async fn events(s: &Stores, tenant_id: &str) -> Vec<AuditEvent> {
    s.audit
        .list_audit_events(&AuditQuery {
            tenant_id: Some(tenant_id.to_owned()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("audit events list")
}

/// The actions of `tenant_id`'s audit trail, oldest first.
pub async fn actions(s: &Stores, tenant_id: &str) -> Vec<String> {
    let mut a: Vec<String> = events(s, tenant_id)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    a.reverse();
    a
}

/// An admin token record created at `create_time`.
pub fn token(id: &str, create_time: UnixMillis) -> AdminTokenRecord {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(format!("token of {id}")).into();
    AdminTokenRecord {
        id: id.to_owned(),
        digest,
        description: format!("{id} token"),
        role: Role::Admin,
        tenant_id: None,
        create_time,
        revoke_time: None,
    }
}

/// The rule a `FailedPrecondition` names; panics on any other outcome.
#[track_caller]
pub fn precondition<T: std::fmt::Debug>(r: keygate::error::Result<T>) -> &'static str {
    match r {
        Err(Error::FailedPrecondition { rule, .. }) => rule,
        other => panic!("expected FailedPrecondition, got {other:?}"),
    }
}

/// What a `NotFound` names; panics on any other outcome.
#[track_caller]
pub fn not_found<T: std::fmt::Debug>(r: keygate::error::Result<T>) -> (&'static str, String) {
    match r {
        Err(Error::NotFound { what, id }) => (what, id),
        other => panic!("expected NotFound, got {other:?}"),
    }
}
