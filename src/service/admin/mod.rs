//! The admin operations: tenants and plans, the key lifecycle (create, get, list,
//! update, revoke, rotate, import), quotas, usage reports and the audit trail. One module
//! per resource; what they share (authorization of a key, the audit event of a write, a
//! tenant's effective policy) is here.
mod audit;
mod imports;
mod keys;
mod leaks;
mod paging;
mod plans;
mod quotas;
mod tenants;
mod usage;
mod webhooks;

pub use imports::{ImportKey, MAX_IMPORT};
pub use keys::{CreateKey, Issued, KeyPatch, MAX_GRACE};
pub use paging::{Page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use quotas::QuotaTarget;
pub use webhooks::{Cursor, EndpointPatch};

use super::imports::ImportRegistry;
use super::quota::QuotaLedger;
use crate::domain::access::{self, Need};
use crate::domain::change::Listener;
use crate::domain::key;
use crate::domain::{AuditEvent, Caller, Clock, KeyRecord, Tenant, TenantPolicy, UnixMillis};
use crate::error::{Error, Result};
use crate::hashing::SecretHasher;
use crate::store::{AuditLog, ImportStore, KeyStore, QuotaStore, Stores, TenantStore, UsageStore};
use std::sync::Arc;

/// Longest free-text reason (revocation, quota adjustment) kept in the audit trail.
pub const MAX_REASON_CHARS: usize = 500;

/// The admin operations.
#[derive(Clone)]
pub struct AdminService {
    tenants: Arc<dyn TenantStore>,
    keys: Arc<dyn KeyStore>,
    imported: Arc<dyn ImportStore>,
    audit: Arc<dyn AuditLog>,
    usage: Arc<dyn UsageStore>,
    quota_store: Arc<dyn QuotaStore>,
    reservations: Arc<dyn crate::store::ReservationStore>,
    hasher: SecretHasher,
    clock: Arc<dyn Clock>,
    listener: Listener,
    /// The check path's imported prefixes, refreshed after an import.
    imports: Arc<ImportRegistry>,
    /// This replica's quota leases (units it holds count as remaining).
    quotas: Arc<QuotaLedger>,
    webhooks: Arc<dyn crate::store::WebhookStore>,
    events_log: Arc<dyn crate::store::EventLog>,
    events: EventSettings,
}

/// What the admin side of events needs from `[events]`.
#[derive(Debug, Clone, Copy)]
pub struct EventSettings {
    /// Endpoints may target private and loopback addresses.
    pub allow_private_targets: bool,
    /// How often `WatchEvents` looks for other replicas' events.
    pub poll: std::time::Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            allow_private_targets: false,
            poll: std::time::Duration::from_secs(1),
        }
    }
}

impl AdminService {
    pub fn new(
        stores: &Stores,
        hasher: SecretHasher,
        clock: Arc<dyn Clock>,
        listener: Listener,
        imports: Arc<ImportRegistry>,
        quotas: Arc<QuotaLedger>,
    ) -> Self {
        AdminService {
            tenants: stores.tenants.clone(),
            keys: stores.keys.clone(),
            imported: stores.imports.clone(),
            audit: stores.audit.clone(),
            usage: stores.usage.clone(),
            quota_store: stores.quotas.clone(),
            reservations: stores.reservations.clone(),
            hasher,
            clock,
            listener,
            imports,
            quotas,
            webhooks: stores.webhooks.clone(),
            events_log: stores.events.clone(),
            events: EventSettings::default(),
        }
    }

    /// The `[events]` settings the admin side uses.
    pub fn with_events(mut self, events: EventSettings) -> Self {
        self.events = events;
        self
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// The audit event for a write by `caller`.
    fn event(
        &self,
        caller: &Caller,
        action: &str,
        tenant_id: &str,
        key_id: &str,
        changed: Vec<String>,
        detail: String,
    ) -> AuditEvent {
        let time = self.now();
        AuditEvent {
            id: AuditEvent::new_id(time),
            time,
            actor: caller.principal.id.clone(),
            action: action.to_owned(),
            tenant_id: tenant_id.to_owned(),
            key_id: key_id.to_owned(),
            changed_fields: changed,
            request_id: caller.request_id.clone(),
            detail,
        }
    }

    /// The tenant, without an authorization check (callers have made theirs).
    async fn tenant(&self, id: &str) -> Result<Tenant> {
        self.tenants
            .get_tenant(id)
            .await?
            .ok_or_else(|| Error::not_found("tenant", id))
    }

    /// Every tenant, read a page at a time (admin writes that must see them all).
    async fn all_tenants(&self) -> Result<Vec<Tenant>> {
        const PAGE: u64 = 1000;
        let mut all: Vec<Tenant> = Vec::new();
        loop {
            let after = all.last().map(|t| t.id.clone());
            let page = self.tenants.list_tenants(after.as_deref(), PAGE).await?;
            let full = page.len() as u64 == PAGE;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// The key, if `caller` may do `need` on it. A tenant-limited token gets the same
    /// PERMISSION_DENIED for another tenant's key as for a key that does not exist.
    async fn key_for(&self, id: &str, caller: &Caller, need: Need) -> Result<KeyRecord> {
        if id.is_empty() {
            return Err(Error::invalid("key_id", "is required"));
        }
        if key::parse(id).is_ok() {
            return Err(Error::invalid(
                "key_id",
                "is shaped like an API key: send the key's id (key_…), never its secret",
            ));
        }
        match self.keys.get_key(id).await? {
            Some(k) => {
                caller.principal.may(need, &k.tenant_id)?;
                Ok(k)
            }
            None if caller.principal.is_platform() => Err(Error::not_found("key", id)),
            None => Err(access::denied()),
        }
    }

    /// The policy checks apply to `tenant`: its own, under its plan.
    async fn effective_policy(&self, tenant: &Tenant) -> Result<TenantPolicy> {
        if tenant.policy.plan_id.is_empty() {
            return Ok(tenant.policy.clone());
        }
        Ok(match self.tenants.get_plan(&tenant.policy.plan_id).await? {
            Some(plan) => tenant.policy.under_plan(&plan.limits),
            None => tenant.policy.clone(),
        })
    }
}
