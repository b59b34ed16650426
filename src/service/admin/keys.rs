//! The key lifecycle: create, get, list, update, revoke, rotate.
use super::paging::{next_token, time_token, Page};
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::key::{self, ApiKeyFormat};
use crate::domain::policy::{validate_rate_limits, ExpiryRequest, RateLimitSpec};
use crate::domain::quota::QuotaSpec;
use crate::domain::{text, Caller, IpAllowlist, KeyRecord, NewKey, ScopeSet};
use crate::error::{Error, Result};
use crate::store::KeyQuery;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest grace period a rotated key's old secret may keep working.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

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
    /// `None` = the tenant's `default_key_quota`.
    pub quota: Option<QuotaSpec>,
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
    /// `Some(None)` removes the key's own quota (the tenant's default applies).
    pub quota: Option<Option<QuotaSpec>>,
}

pub(super) fn new_key_id() -> String {
    format!("key_{}", key::random_base62(20))
}

impl AdminService {
    pub async fn create_key(&self, req: CreateKey, caller: &Caller) -> Result<Issued> {
        text::validate_tenant_id("tenant_id", &req.tenant_id)?;
        text::validate_name("name", &req.name)?;
        text::validate_metadata("metadata", &req.metadata)?;
        validate_rate_limits("rate_limits", &req.rate_limits)?;
        if let Some(q) = &req.quota {
            q.validate("quota")?;
        }
        caller.principal.may(Need::Write, &req.tenant_id)?;
        let tenant = self.tenant(&req.tenant_id).await?;
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
            quota: req.quota,
            metadata: req.metadata,
            enabled: true,
            create_time: now,
            update_time: now,
            expire_time,
            last_used_time: None,
            use_count: 0,
            revoke_time: None,
            revoke_reason: None,
            rotated_from: None,
        };
        let (new, secret) = self.mint(record, &head).await?;
        let audit = self.event(
            caller,
            "create_key",
            &new.record.tenant_id,
            &new.record.id,
            vec![],
            String::new(),
        );
        let key = self
            .keys
            .insert_key(new, policy.max_active_keys, now, audit)
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

    pub async fn get_key(&self, id: &str, caller: &Caller) -> Result<KeyRecord> {
        self.key_for(id, caller, Need::Read).await
    }

    pub async fn list_keys(
        &self,
        caller: &Caller,
        tenant_id: &str,
        page: Page,
        include_revoked: bool,
        include_expired: bool,
    ) -> Result<(Vec<KeyRecord>, String)> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Read, tenant_id)?;
        let limit = page.limit()?;
        let after = page.time_cursor("key_")?;
        // Listing a tenant that does not exist is NOT_FOUND, not an empty page.
        self.tenant(tenant_id).await?;
        let query = KeyQuery {
            tenant_id: tenant_id.to_owned(),
            after,
            limit,
            include_revoked,
            include_expired,
            now: self.now(),
        };
        let keys = self.keys.list_keys(&query).await?;
        let next = next_token(&keys, limit, |k| time_token(k.create_time, &k.id));
        Ok((keys, next))
    }

    pub async fn update_key(
        &self,
        id: &str,
        patch: KeyPatch,
        caller: &Caller,
    ) -> Result<KeyRecord> {
        let mut key = self.key_for(id, caller, Need::Write).await?;
        let now = self.now();
        if key.is_revoked(now) {
            return Err(Error::precondition(
                "key.state",
                "a revoked key cannot be changed",
            ));
        }
        let changed: Vec<String> = [
            ("name", patch.name.is_some()),
            ("scopes", patch.scopes.is_some()),
            ("ip_allowlist", patch.ip_allowlist.is_some()),
            ("rate_limits", patch.rate_limits.is_some()),
            ("metadata", patch.metadata.is_some()),
            ("enabled", patch.enabled.is_some()),
            ("quota", patch.quota.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(f, _)| f.to_string())
        .collect();
        let action = match (changed.as_slice(), patch.enabled) {
            ([only], Some(false)) if only == "enabled" => "disable_key",
            ([only], Some(true)) if only == "enabled" => "enable_key",
            _ => "update_key",
        };
        if let Some(name) = patch.name {
            text::validate_name("key.name", &name)?;
            key.name = name;
        }
        if let Some(scopes) = patch.scopes {
            let tenant = self.tenant(&key.tenant_id).await?;
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
        if let Some(q) = patch.quota {
            if let Some(q) = &q {
                q.validate("key.quota")?;
            }
            key.quota = q;
        }
        key.update_time = now;
        let audit = self.event(
            caller,
            action,
            &key.tenant_id,
            &key.id,
            changed,
            String::new(),
        );
        self.keys.update_key_settings(&key, audit).await?;
        self.listener.key_changed(&key.id, &key.lookup_id);
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key updated");
        Ok(key)
    }

    pub async fn revoke_key(&self, id: &str, reason: &str, caller: &Caller) -> Result<KeyRecord> {
        text::validate_text("reason", reason, super::MAX_REASON_CHARS)?;
        let key = self.key_for(id, caller, Need::Write).await?;
        let now = self.now();
        let audit = self.event(
            caller,
            "revoke_key",
            &key.tenant_id,
            &key.id,
            vec![],
            reason.to_owned(),
        );
        let key = self
            .keys
            .revoke_key(&key.id, now, reason, now, audit)
            .await?;
        self.listener.key_changed(&key.id, &key.lookup_id);
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key revoked");
        Ok(key)
    }

    /// A new secret for the key: a successor key with the same settings and the same
    /// absolute expiry; the old secret works for `grace` more, then is revoked.
    pub async fn rotate_key(
        &self,
        id: &str,
        grace: Duration,
        caller: &Caller,
    ) -> Result<(Issued, KeyRecord)> {
        if grace > MAX_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 30 days"));
        }
        let old = self.key_for(id, caller, Need::Write).await?;
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
        let tenant = self.tenant(&old.tenant_id).await?;
        let head = key::key_head(tenant.policy.effective_prefix(), &old.environment);
        let successor = KeyRecord {
            id: new_key_id(),
            key_prefix: head.clone(),
            create_time: now,
            update_time: now,
            last_used_time: None,
            use_count: 0,
            revoke_time: None,
            revoke_reason: None,
            rotated_from: Some(old.id.clone()),
            ..old.clone()
        };
        let (new, secret) = self.mint(successor, &head).await?;
        let detail = format!(
            "successor {}; old secret valid for {}s",
            new.record.id,
            grace.as_secs()
        );
        let audit = self.event(
            caller,
            "rotate_key",
            &old.tenant_id,
            &old.id,
            vec![],
            detail,
        );
        let (old, key) = self
            .keys
            .rotate_key(&old.id, now.plus(grace), new, audit)
            .await?;
        self.listener.key_changed(&old.id, &old.lookup_id);
        self.carry_quota(&tenant, &old, &key, caller).await?;
        tracing::info!(key_id = %old.id, successor = %key.id, tenant_id = %key.tenant_id, "key rotated");
        Ok((Issued { key, secret }, old))
    }
}
