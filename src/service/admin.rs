//! The key lifecycle: tenants, create, get, list, update, revoke, rotate.
use super::Listener;
use crate::domain::key::{self, ApiKeyFormat};
use crate::domain::policy::{validate_rate_limits, ExpiryRequest, RateLimitSpec};
use crate::domain::{
    text, Clock, IpAllowlist, KeyRecord, NewKey, ScopeSet, Tenant, TenantPolicy, UnixMillis,
};
use crate::error::{Error, Result};
use crate::hashing::SecretHasher;
use crate::store::{KeyQuery, KeyStore};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
pub const MAX_REASON_CHARS: usize = 500;

/// What a caller asks for when creating a key; scopes and allowlist are already parsed.
#[derive(Debug, Clone)]
pub struct CreateKey {
    pub tenant_id: String,
    pub name: String,
    pub environment: String,
    pub scopes: ScopeSet,
    pub expiry: ExpiryRequest,
    pub ip_allowlist: IpAllowlist,
    pub rate_limits: Vec<RateLimitSpec>,
    pub metadata: BTreeMap<String, String>,
}

/// A new key and its secret, which exists nowhere else.
pub struct Issued {
    pub key: KeyRecord,
    pub secret: SecretString,
}

/// Fields an update replaces; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub scopes: Option<ScopeSet>,
    pub ip_allowlist: Option<IpAllowlist>,
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
}

/// A page request: size 0 = default; token as returned by the previous page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub size: u32,
    pub token: String,
}

/// The admin operations.
#[derive(Clone)]
pub struct AdminService {
    store: Arc<dyn KeyStore>,
    hasher: SecretHasher,
    clock: Arc<dyn Clock>,
    listener: Listener,
}

fn page_size(size: u32) -> Result<u64> {
    match size {
        0 => Ok(u64::from(DEFAULT_PAGE_SIZE)),
        1..=MAX_PAGE_SIZE => Ok(u64::from(size)),
        _ => Err(Error::invalid(
            "page_size",
            format!("must be at most {MAX_PAGE_SIZE}"),
        )),
    }
}

fn bad_token() -> Error {
    Error::invalid("page_token", "is not a token this server returned")
}

fn new_key_id() -> String {
    format!("key_{}", key::random_base62(20))
}

impl AdminService {
    pub fn new(
        store: Arc<dyn KeyStore>,
        hasher: SecretHasher,
        clock: Arc<dyn Clock>,
        listener: Listener,
    ) -> Self {
        AdminService {
            store,
            hasher,
            clock,
            listener,
        }
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    pub async fn upsert_tenant(
        &self,
        id: String,
        display_name: String,
        policy: TenantPolicy,
    ) -> Result<Tenant> {
        text::validate_tenant_id("tenant.id", &id)?;
        text::validate_text("tenant.display_name", &display_name, text::MAX_NAME_CHARS)?;
        policy.validate("tenant.policy")?;
        let now = self.now();
        let tenant = self
            .store
            .upsert_tenant(Tenant {
                id,
                display_name,
                policy,
                create_time: now,
                update_time: now,
            })
            .await?;
        self.listener.tenant_changed(&tenant.id);
        Ok(tenant)
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Tenant> {
        text::validate_tenant_id("tenant_id", id)?;
        self.store
            .get_tenant(id)
            .await?
            .ok_or_else(|| Error::not_found("tenant", id))
    }

    pub async fn list_tenants(&self, page: Page) -> Result<(Vec<Tenant>, String)> {
        let limit = page_size(page.size)?;
        let after = if page.token.is_empty() {
            None
        } else {
            text::validate_tenant_id("page_token", &page.token).map_err(|_| bad_token())?;
            Some(page.token.as_str())
        };
        let tenants = self.store.list_tenants(after, limit).await?;
        let next = if tenants.len() as u64 == limit {
            tenants.last().map(|t| t.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((tenants, next))
    }

    pub async fn create_key(&self, req: CreateKey) -> Result<Issued> {
        text::validate_tenant_id("tenant_id", &req.tenant_id)?;
        text::validate_name("name", &req.name)?;
        text::validate_metadata("metadata", &req.metadata)?;
        validate_rate_limits("rate_limits", &req.rate_limits)?;
        let tenant = self.get_tenant(&req.tenant_id).await?;
        let policy = &tenant.policy;
        policy.check_environment(&req.environment)?;
        let scopes = policy.scopes_for_new_key(req.scopes)?;
        let now = self.now();
        let expire_time = policy.resolve_expiry(req.expiry, now)?;
        let head = key::key_head(policy.effective_prefix(), &req.environment);
        let record = KeyRecord {
            id: new_key_id(),
            tenant_id: tenant.id.clone(),
            name: req.name,
            environment: req.environment,
            lookup_id: String::new(),
            key_prefix: head.clone(),
            display_prefix: String::new(),
            scopes,
            ip_allowlist: req.ip_allowlist,
            rate_limits: req.rate_limits,
            metadata: req.metadata,
            enabled: true,
            create_time: now,
            update_time: now,
            expire_time,
            last_used_time: None,
            revoke_time: None,
            revoke_reason: None,
            rotated_from: None,
        };
        let (new, secret) = self.mint(record, &head).await?;
        let key = self
            .store
            .insert_key(new, policy.max_active_keys, now)
            .await?;
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key created");
        Ok(Issued { key, secret })
    }

    /// Generates a secret for `record`, filling its lookup id and display prefix, and
    /// hashes it. Only the hash goes to the store.
    async fn mint(&self, mut record: KeyRecord, head: &str) -> Result<(NewKey, SecretString)> {
        let fresh = ApiKeyFormat::generate(head);
        record.lookup_id = fresh.lookup_id;
        record.display_prefix = fresh.display_prefix;
        let secret_hash = self
            .hasher
            .hash(SecretString::from(fresh.full.expose_secret().to_owned()))
            .await?;
        Ok((
            NewKey {
                record,
                secret_hash,
            },
            fresh.full,
        ))
    }

    pub async fn get_key(&self, id: &str) -> Result<KeyRecord> {
        if id.is_empty() {
            return Err(Error::invalid("key_id", "is required"));
        }
        self.store
            .get_key(id)
            .await?
            .ok_or_else(|| Error::not_found("key", id))
    }

    pub async fn list_keys(
        &self,
        tenant_id: &str,
        page: Page,
        include_revoked: bool,
        include_expired: bool,
    ) -> Result<(Vec<KeyRecord>, String)> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        let limit = page_size(page.size)?;
        let after = if page.token.is_empty() {
            None
        } else {
            let (t, id) = page.token.split_once('.').ok_or_else(bad_token)?;
            let t: i64 = t.parse().map_err(|_| bad_token())?;
            if !id.starts_with("key_") {
                return Err(bad_token());
            }
            Some((UnixMillis(t), id.to_owned()))
        };
        // Listing a tenant that does not exist is NOT_FOUND, not an empty page.
        self.get_tenant(tenant_id).await?;
        let query = KeyQuery {
            tenant_id: tenant_id.to_owned(),
            after,
            limit,
            include_revoked,
            include_expired,
            now: self.now(),
        };
        let keys = self.store.list_keys(&query).await?;
        let next = match keys.last() {
            Some(k) if keys.len() as u64 == limit => format!("{}.{}", k.create_time.0, k.id),
            _ => String::new(),
        };
        Ok((keys, next))
    }

    pub async fn update_key(&self, id: &str, patch: KeyPatch) -> Result<KeyRecord> {
        let mut key = self.get_key(id).await?;
        let now = self.now();
        if key.is_revoked(now) {
            return Err(Error::precondition(
                "key.state",
                "a revoked key cannot be changed",
            ));
        }
        if let Some(name) = patch.name {
            text::validate_name("key.name", &name)?;
            key.name = name;
        }
        if let Some(scopes) = patch.scopes {
            let tenant = self.get_tenant(&key.tenant_id).await?;
            if let Some(s) = scopes.first_outside(&tenant.policy.scope_catalogue) {
                return Err(Error::precondition(
                    "tenant.policy.scope_catalogue",
                    format!("scope {s} is not in the tenant's scope catalogue"),
                ));
            }
            key.scopes = scopes;
        }
        if let Some(ips) = patch.ip_allowlist {
            key.ip_allowlist = ips;
        }
        if let Some(limits) = patch.rate_limits {
            validate_rate_limits("key.rate_limits", &limits)?;
            key.rate_limits = limits;
        }
        if let Some(md) = patch.metadata {
            text::validate_metadata("key.metadata", &md)?;
            key.metadata = md;
        }
        if let Some(enabled) = patch.enabled {
            key.enabled = enabled;
        }
        key.update_time = now;
        self.store.update_key_settings(&key).await?;
        self.listener.key_changed(&key.id, &key.lookup_id);
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key updated");
        Ok(key)
    }

    pub async fn revoke_key(&self, id: &str, reason: &str) -> Result<KeyRecord> {
        text::validate_text("reason", reason, MAX_REASON_CHARS)?;
        let key = self.get_key(id).await?;
        let now = self.now();
        let key = self.store.revoke_key(&key.id, now, reason, now).await?;
        self.listener.key_changed(&key.id, &key.lookup_id);
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key revoked");
        Ok(key)
    }

    /// A new secret for the key: a successor key with the same settings and the same
    /// absolute expiry; the old secret works for `grace` more, then is revoked.
    pub async fn rotate_key(&self, id: &str, grace: Duration) -> Result<(Issued, KeyRecord)> {
        if grace > MAX_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 30 days"));
        }
        let old = self.get_key(id).await?;
        let now = self.now();
        if old.revoke_time.is_some() {
            return Err(Error::precondition(
                "key.state",
                "the key is revoked or already rotated; rotate its successor",
            ));
        }
        if old.is_expired(now) {
            return Err(Error::precondition(
                "key.state",
                "an expired key has no remaining lifetime to rotate",
            ));
        }
        let tenant = self.get_tenant(&old.tenant_id).await?;
        let head = key::key_head(tenant.policy.effective_prefix(), &old.environment);
        let successor = KeyRecord {
            id: new_key_id(),
            key_prefix: head.clone(),
            create_time: now,
            update_time: now,
            last_used_time: None,
            revoke_time: None,
            revoke_reason: None,
            rotated_from: Some(old.id.clone()),
            ..old.clone()
        };
        let (new, secret) = self.mint(successor, &head).await?;
        let (old, key) = self.store.rotate_key(&old.id, now.plus(grace), new).await?;
        self.listener.key_changed(&old.id, &old.lookup_id);
        tracing::info!(key_id = %old.id, successor = %key.id, tenant_id = %key.tenant_id, "key rotated");
        Ok((Issued { key, secret }, old))
    }
}
