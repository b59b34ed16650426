//! The key lifecycle (tenants, create, get, list, update, revoke, rotate), its audit
//! trail, and usage reports.
use super::Listener;
use crate::domain::access::{self, Need};
use crate::domain::import::{self, ImportFormat, ImportRule};
use crate::domain::key::{self, ApiKeyFormat};
use crate::domain::policy::{validate_rate_limits, ExpiryRequest, RateLimitSpec};
use crate::domain::quota::{self, QuotaChange, QuotaOwner, QuotaSpec, QuotaStatus};
use crate::domain::usage::{day_of, report_range, Granularity, Report, StoredCount};
use crate::domain::{
    text, Clock, IpAllowlist, KeyRecord, NewKey, Plan, ScopeSet, Tenant, TenantPolicy, UnixMillis,
};
use crate::domain::{AuditEvent, Caller};
use crate::error::{Error, Result};
use crate::hashing::SecretHasher;
use crate::store::{AuditQuery, BucketSize, KeyQuery, KeyStore, UsageQuery};
use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
pub const MAX_REASON_CHARS: usize = 500;

/// One key to import; scopes and allowlist are already parsed.
#[derive(Debug, Clone)]
pub struct ImportKey {
    pub name: String,
    pub hash: String,
    pub lookup: String,
    pub scopes: ScopeSet,
    pub ip_allowlist: IpAllowlist,
    pub rate_limits: Vec<RateLimitSpec>,
    pub metadata: BTreeMap<String, String>,
    pub expire_time: Option<UnixMillis>,
}

/// Most keys one ImportKeys call takes.
pub const MAX_IMPORT: usize = 1000;

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

/// Whose quota `AdjustQuota` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaTarget {
    Key(String),
    Tenant(String),
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
    /// The check path's imported prefixes, refreshed after an import.
    imports: Option<Arc<super::imports::ImportRegistry>>,
    /// This replica's quota leases (units it holds count as remaining).
    quotas: Option<Arc<super::quota::QuotaLedger>>,
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
            imports: None,
            quotas: None,
        }
    }

    /// Reports and top-ups see this replica's leases.
    pub fn with_quotas(mut self, quotas: Arc<super::quota::QuotaLedger>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Tells the check path's registry about new imported prefixes at once.
    pub fn with_imports(mut self, imports: Arc<super::imports::ImportRegistry>) -> Self {
        self.imports = Some(imports);
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
        // Sortable ids: time, then a per-process sequence, so events of one millisecond
        // list in the order they happened; the random tail keeps replicas' ids distinct.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let time = self.now();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000_000_000;
        AuditEvent {
            id: format!(
                "aud_{:013}_{seq:010}_{}",
                time.0.max(0),
                key::random_base62(6)
            ),
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

    /// A tenant's or a key's audit trail, newest first, optionally within [start, end).
    pub async fn list_audit_events(
        &self,
        caller: &Caller,
        tenant_id: &str,
        key_id: &str,
        page: Page,
        start: Option<UnixMillis>,
        end: Option<UnixMillis>,
    ) -> Result<(Vec<AuditEvent>, String)> {
        if tenant_id.is_empty() && key_id.is_empty() {
            return Err(Error::invalid(
                "tenant_id",
                "tenant_id or key_id is required",
            ));
        }
        if !tenant_id.is_empty() {
            text::validate_tenant_id("tenant_id", tenant_id)?;
            caller.principal.may(Need::Read, tenant_id)?;
        }
        // A tenant-limited token reads a key's trail only if the key is its tenant's.
        if !key_id.is_empty() && !caller.principal.is_platform() {
            self.key_for(key_id, caller, Need::Read).await?;
        }
        let limit = page_size(page.size)?;
        let before = if page.token.is_empty() {
            None
        } else {
            let (t, id) = page.token.split_once('.').ok_or_else(bad_token)?;
            let t: i64 = t.parse().map_err(|_| bad_token())?;
            if !id.starts_with("aud_") {
                return Err(bad_token());
            }
            Some((UnixMillis(t), id.to_owned()))
        };
        let query = AuditQuery {
            tenant_id: Some(tenant_id.to_owned()).filter(|t| !t.is_empty()),
            key_id: Some(key_id.to_owned()).filter(|k| !k.is_empty()),
            before,
            start,
            end,
            limit,
        };
        let events = self.store.list_audit_events(&query).await?;
        let next = match events.last() {
            Some(e) if events.len() as u64 == limit => format!("{}.{}", e.time.0, e.id),
            _ => String::new(),
        };
        Ok((events, next))
    }

    pub async fn upsert_tenant(
        &self,
        id: String,
        display_name: String,
        policy: TenantPolicy,
        caller: &Caller,
    ) -> Result<Tenant> {
        text::validate_tenant_id("tenant.id", &id)?;
        caller.principal.may(Need::Platform, &id)?;
        text::validate_text("tenant.display_name", &display_name, text::MAX_NAME_CHARS)?;
        policy.validate("tenant.policy")?;
        if !policy.plan_id.is_empty() && self.store.get_plan(&policy.plan_id).await?.is_none() {
            return Err(Error::precondition(
                "tenant.policy.plan_id",
                format!(
                    "no plan {:?}; create it with UpsertPlan first",
                    policy.plan_id
                ),
            ));
        }
        let now = self.now();
        let tenant = self
            .store
            .upsert_tenant(
                Tenant {
                    id: id.clone(),
                    display_name,
                    policy,
                    create_time: now,
                    update_time: now,
                },
                self.event(
                    caller,
                    "upsert_tenant",
                    &id,
                    "",
                    vec!["display_name".into(), "policy".into()],
                    String::new(),
                ),
            )
            .await?;
        self.listener.tenant_changed(&tenant.id);
        Ok(tenant)
    }

    /// Creates or replaces a plan template (platform admins). Tenants on it see the change
    /// on their next check, on every replica.
    pub async fn upsert_plan(&self, mut plan: Plan, caller: &Caller) -> Result<Plan> {
        text::validate_tenant_id("plan.id", &plan.id)?;
        caller.principal.may(Need::Platform, "")?;
        text::validate_text(
            "plan.display_name",
            &plan.display_name,
            text::MAX_NAME_CHARS,
        )?;
        plan.limits.validate("plan")?;
        let now = self.now();
        plan.create_time = now;
        plan.update_time = now;
        let audit = self.event(
            caller,
            "upsert_plan",
            "",
            "",
            vec!["display_name".into(), "limits".into()],
            format!("plan {}", plan.id),
        );
        let plan = self.store.upsert_plan(plan, audit).await?;
        // Cached tenants hold their effective policy: drop those on this plan.
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_tenants(after.as_deref(), 1000).await?;
            for t in &page {
                if t.policy.plan_id == plan.id {
                    self.listener.tenant_changed(&t.id);
                }
            }
            match page.last() {
                Some(t) if page.len() == 1000 => after = Some(t.id.clone()),
                _ => break,
            }
        }
        tracing::info!(plan_id = %plan.id, "plan upserted");
        Ok(plan)
    }

    /// Every plan (any admin identity may read them).
    pub async fn list_plans(&self, caller: &Caller) -> Result<Vec<Plan>> {
        let _ = caller;
        self.store.list_plans().await
    }

    pub async fn get_tenant(&self, id: &str, caller: &Caller) -> Result<Tenant> {
        text::validate_tenant_id("tenant_id", id)?;
        caller.principal.may(Need::Read, id)?;
        self.tenant(id).await
    }

    /// The tenant, without an authorization check (callers have made theirs).
    async fn tenant(&self, id: &str) -> Result<Tenant> {
        self.store
            .get_tenant(id)
            .await?
            .ok_or_else(|| Error::not_found("tenant", id))
    }

    /// Tenants ordered by id; a tenant-limited token sees only its own.
    pub async fn list_tenants(&self, page: Page, caller: &Caller) -> Result<(Vec<Tenant>, String)> {
        let limit = page_size(page.size)?;
        if let Some(own) = &caller.principal.tenant {
            let tenants = match (page.token.is_empty(), self.store.get_tenant(own).await?) {
                (true, Some(t)) => vec![t],
                _ => vec![],
            };
            return Ok((tenants, String::new()));
        }
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
            .store
            .insert_key(new, policy.max_active_keys, now, audit)
            .await?;
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key created");
        Ok(Issued { key, secret })
    }

    /// Imports keys stored elsewhere by their hash (see `domain::import`): all or nothing.
    pub async fn import_keys(
        &self,
        caller: &Caller,
        tenant_id: &str,
        rule: (String, Option<ImportFormat>, usize),
        keys: Vec<ImportKey>,
    ) -> Result<Vec<KeyRecord>> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Write, tenant_id)?;
        let (key_prefix, format, lookup_len) = rule;
        import::validate_prefix("key_prefix", &key_prefix)?;
        let format = format.ok_or_else(|| Error::invalid("format", "SHA256_HEX or ARGON2_PHC"))?;
        let lookup_len = match format {
            ImportFormat::Sha256 => 0,
            ImportFormat::Argon2 if (1..=64).contains(&lookup_len) => lookup_len,
            ImportFormat::Argon2 => {
                return Err(Error::invalid(
                    "lookup_length",
                    "must be 1-64 for ARGON2_PHC",
                ))
            }
        };
        if keys.is_empty() || keys.len() > MAX_IMPORT {
            return Err(Error::invalid(
                "keys",
                format!("must hold 1-{MAX_IMPORT} keys"),
            ));
        }
        let tenant = self.tenant(tenant_id).await?;
        let now = self.now();
        let rule = ImportRule {
            key_prefix: key_prefix.clone(),
            tenant_id: tenant_id.to_owned(),
            format,
            lookup_len,
        };
        let mut batch = Vec::with_capacity(keys.len());
        let mut seen = std::collections::HashSet::new();
        for (i, k) in keys.into_iter().enumerate() {
            let field = |f: &str| format!("keys[{i}].{f}");
            text::validate_name(&field("name"), &k.name)?;
            text::validate_metadata(&field("metadata"), &k.metadata)?;
            validate_rate_limits(&field("rate_limits"), &k.rate_limits)?;
            let secret_hash = import::stored_hash(&field("hash"), format, &k.hash)?;
            let (lookup_id, display_prefix) = match format {
                ImportFormat::Sha256 => (secret_hash.clone(), String::new()),
                ImportFormat::Argon2 => {
                    let id = k
                        .lookup
                        .strip_prefix(key_prefix.as_str())
                        .filter(|id| id.len() == lookup_len)
                        .ok_or_else(|| {
                            Error::invalid(
                                field("lookup"),
                                "must be key_prefix followed by lookup_length characters",
                            )
                        })?;
                    (format!("imp:{}", k.lookup), id.chars().take(8).collect())
                }
            };
            if !seen.insert(lookup_id.clone()) {
                return Err(Error::invalid(
                    field("hash"),
                    "appears twice in this request",
                ));
            }
            let record = KeyRecord {
                id: new_key_id(),
                tenant_id: tenant.id.clone(),
                name: k.name,
                environment: String::new(),
                lookup_id,
                key_prefix: key_prefix.clone(),
                display_prefix,
                scopes: tenant.policy.scopes_for_new_key(k.scopes)?,
                ip_allowlist: k.ip_allowlist,
                rate_limits: k.rate_limits,
                quota: None,
                metadata: k.metadata,
                enabled: true,
                create_time: now,
                update_time: now,
                expire_time: k.expire_time,
                last_used_time: None,
                use_count: 0,
                revoke_time: None,
                revoke_reason: None,
                rotated_from: None,
            };
            let audit = self.event(
                caller,
                "import_key",
                tenant_id,
                &record.id,
                vec![],
                format!("imported by {} hash under {key_prefix}", format.as_str()),
            );
            batch.push((
                NewKey {
                    record,
                    secret_hash,
                },
                audit,
            ));
        }
        let imported = self
            .store
            .import_keys(&rule, batch, tenant.policy.max_active_keys, now)
            .await?;
        if let Some(imports) = &self.imports {
            imports.refresh(self.store.as_ref()).await?;
        }
        tracing::info!(tenant_id, keys = imported.len(), "keys imported");
        Ok(imported)
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

    /// The key, if `caller` may do `need` on it. A tenant-limited token gets the same
    /// PERMISSION_DENIED for another tenant's key as for a key that does not exist.
    async fn key_for(&self, id: &str, caller: &Caller, need: Need) -> Result<KeyRecord> {
        if id.is_empty() {
            return Err(Error::invalid("key_id", "is required"));
        }
        match self.store.get_key(id).await? {
            Some(k) => {
                caller.principal.may(need, &k.tenant_id)?;
                Ok(k)
            }
            None if caller.principal.is_platform() => Err(Error::not_found("key", id)),
            None => Err(access::denied()),
        }
    }

    /// Each key's checks in the current UTC day: one query for all of them (no N+1).
    pub async fn uses_today(&self, keys: &[KeyRecord]) -> Result<HashMap<String, u64>> {
        let ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
        self.store.uses_in_day(&ids, day_of(self.now())).await
    }

    /// One key's usage report.
    pub async fn key_usage(
        &self,
        caller: &Caller,
        key_id: &str,
        granularity: Granularity,
        range: crate::domain::usage::Range,
        by_endpoint: bool,
    ) -> Result<Report> {
        let key = self.key_for(key_id, caller, Need::Read).await?;
        self.usage_report(key.tenant_id, Some(key.id), granularity, range, by_endpoint)
            .await
    }

    /// A tenant's usage report, summed over its keys.
    pub async fn tenant_usage(
        &self,
        caller: &Caller,
        tenant_id: &str,
        granularity: Granularity,
        range: crate::domain::usage::Range,
        by_endpoint: bool,
    ) -> Result<Report> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Read, tenant_id)?;
        self.tenant(tenant_id).await?;
        self.usage_report(tenant_id.to_owned(), None, granularity, range, by_endpoint)
            .await
    }

    async fn usage_report(
        &self,
        tenant_id: String,
        key_id: Option<String>,
        granularity: Granularity,
        (start, end): crate::domain::usage::Range,
        by_endpoint: bool,
    ) -> Result<Report> {
        let range = report_range(granularity, start, end, self.now())?;
        let query = UsageQuery {
            tenant_id,
            key_id,
            size: match granularity {
                Granularity::Minute => BucketSize::Minute,
                Granularity::Day | Granularity::Total => BucketSize::Day,
            },
            start: range.0,
            end: range.1,
        };
        let rows = self.store.usage(&query).await?;
        Ok(Report::build(
            granularity,
            range,
            by_endpoint,
            rows.iter().map(|r| StoredCount {
                bucket: r.bucket,
                endpoint: &r.endpoint,
                reason: &r.reason,
                count: r.count,
                cost: r.cost,
            }),
        ))
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
        self.tenant(tenant_id).await?;
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
        self.store.update_key_settings(&key, audit).await?;
        self.listener.key_changed(&key.id, &key.lookup_id);
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key updated");
        Ok(key)
    }

    pub async fn revoke_key(&self, id: &str, reason: &str, caller: &Caller) -> Result<KeyRecord> {
        text::validate_text("reason", reason, MAX_REASON_CHARS)?;
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
            .store
            .revoke_key(&key.id, now, reason, now, audit)
            .await?;
        self.listener.key_changed(&key.id, &key.lookup_id);
        tracing::info!(key_id = %key.id, tenant_id = %key.tenant_id, "key revoked");
        Ok(key)
    }

    /// A new secret for the key: a successor key with the same settings and the same
    /// absolute expiry; the old secret works for `grace` more, then is revoked.
    /// The policy checks apply to `tenant`: its own, under its plan.
    async fn effective_policy(&self, tenant: &Tenant) -> Result<TenantPolicy> {
        if tenant.policy.plan_id.is_empty() {
            return Ok(tenant.policy.clone());
        }
        Ok(match self.store.get_plan(&tenant.policy.plan_id).await? {
            Some(plan) => tenant.policy.under_plan(&plan.limits),
            None => tenant.policy.clone(),
        })
    }

    /// Figures of quotas in their current periods: one query for all of them. Units this
    /// replica holds in a lease count as remaining.
    async fn quota_statuses(
        &self,
        wanted: Vec<(QuotaOwner, String, QuotaSpec, jiff::tz::TimeZone)>,
    ) -> Result<HashMap<String, QuotaStatus>> {
        let now = self.now();
        let mut cells = Vec::with_capacity(wanted.len());
        for (owner, id, spec, tz) in &wanted {
            cells.push((owner.subject(id), spec.window(now, tz)?));
        }
        let stored = self
            .store
            .quota_counters(
                &cells
                    .iter()
                    .map(|(s, w)| (s.clone(), w.start))
                    .collect::<Vec<_>>(),
            )
            .await?;
        let mut out = HashMap::with_capacity(wanted.len());
        for ((owner, id, spec, _), (subject, window)) in wanted.into_iter().zip(cells) {
            let mut counter = stored
                .get(&(subject.clone(), window.start))
                .copied()
                .unwrap_or_default();
            if let Some(ledger) = &self.quotas {
                let held = ledger.held(&subject, window.start).await;
                counter.used = counter.used.saturating_sub(held);
            }
            out.insert(id, QuotaStatus::new(owner, &spec, window, counter));
        }
        Ok(out)
    }

    /// Each key's quota figures (keys without a quota absent). `keys` share one tenant
    /// when listed; any mix works.
    pub async fn key_quotas(&self, keys: &[KeyRecord]) -> Result<HashMap<String, QuotaStatus>> {
        let mut policies: HashMap<String, TenantPolicy> = HashMap::new();
        let mut wanted = Vec::new();
        for k in keys {
            if !policies.contains_key(&k.tenant_id) {
                let tenant = self.tenant(&k.tenant_id).await?;
                policies.insert(k.tenant_id.clone(), self.effective_policy(&tenant).await?);
            }
            let policy = &policies[&k.tenant_id];
            if let Some(spec) = policy.key_quota(k.quota.as_ref()) {
                let tz = quota::time_zone("tenant.policy.time_zone", &policy.time_zone)?;
                wanted.push((QuotaOwner::Key, k.id.clone(), *spec, tz));
            }
        }
        self.quota_statuses(wanted).await
    }

    /// The tenant-wide quota's figures, if the tenant (or its plan) has one.
    pub async fn tenant_quota(&self, tenant: &Tenant) -> Result<Option<QuotaStatus>> {
        let policy = self.effective_policy(tenant).await?;
        let Some(spec) = policy.quota else {
            return Ok(None);
        };
        let tz = quota::time_zone("tenant.policy.time_zone", &policy.time_zone)?;
        let mut all = self
            .quota_statuses(vec![(QuotaOwner::Tenant, tenant.id.clone(), spec, tz)])
            .await?;
        Ok(all.remove(&tenant.id))
    }

    /// Tops up or resets a key's or a tenant's quota for its current period, audited.
    /// A key's quota is the tenant admins' to manage; a tenant's quota (what the tenant
    /// pays for) only platform admins may change.
    pub async fn adjust_quota(
        &self,
        target: QuotaTarget,
        change: QuotaChange,
        reason: &str,
        caller: &Caller,
    ) -> Result<QuotaStatus> {
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "reason",
                "is required: say why the quota changes (kept in the audit trail)",
            ));
        }
        text::validate_text("reason", reason, MAX_REASON_CHARS)?;
        let (owner, id, tenant, spec, key_id) = match &target {
            QuotaTarget::Key(id) => {
                let key = self.key_for(id, caller, Need::Write).await?;
                let tenant = self.tenant(&key.tenant_id).await?;
                let policy = self.effective_policy(&tenant).await?;
                let spec = policy
                    .key_quota(key.quota.as_ref())
                    .copied()
                    .ok_or_else(|| {
                        Error::precondition(
                            "key.quota",
                            "the key has no quota (neither its own nor a tenant default_key_quota)",
                        )
                    })?;
                (QuotaOwner::Key, key.id.clone(), tenant, spec, key.id)
            }
            QuotaTarget::Tenant(id) => {
                text::validate_tenant_id("tenant_id", id)?;
                caller.principal.may(Need::Platform, id)?;
                let tenant = self.tenant(id).await?;
                let spec = self.effective_policy(&tenant).await?.quota.ok_or_else(|| {
                    Error::precondition(
                        "tenant.policy.quota",
                        "the tenant has no quota (neither its own nor its plan's)",
                    )
                })?;
                (
                    QuotaOwner::Tenant,
                    tenant.id.clone(),
                    tenant,
                    spec,
                    String::new(),
                )
            }
        };
        let change_text = match change {
            QuotaChange::Add(d) => format!("delta {d:+}"),
            QuotaChange::SetRemaining(n) => format!("set remaining {n}"),
        };
        let audit = self.event(
            caller,
            "adjust_quota",
            &tenant.id,
            &key_id,
            vec!["quota".into()],
            format!(
                "{} quota: {change_text}; reason: {}",
                owner.name(),
                reason.trim()
            ),
        );
        self.adjust(&tenant, owner, &id, &spec, change, audit).await
    }

    /// Applies `change` to the current period of `owner`/`id`'s quota.
    async fn adjust(
        &self,
        tenant: &Tenant,
        owner: QuotaOwner,
        id: &str,
        spec: &QuotaSpec,
        change: QuotaChange,
        audit: AuditEvent,
    ) -> Result<QuotaStatus> {
        let policy = self.effective_policy(tenant).await?;
        let tz = quota::time_zone("tenant.policy.time_zone", &policy.time_zone)?;
        let now = self.now();
        let window = spec.window(now, &tz)?;
        let subject = owner.subject(id);
        // Units this replica holds are not in the database's remaining: a set counts them.
        let held = match &self.quotas {
            Some(l) => l.held(&subject, window.start).await,
            None => 0,
        };
        let change = match change {
            QuotaChange::SetRemaining(n) => QuotaChange::SetRemaining(n.saturating_sub(held)),
            add => add,
        };
        let mut counter = self
            .store
            .adjust_quota(&subject, window.start, spec.limit, change, now, audit)
            .await?;
        if let Some(l) = &self.quotas {
            l.forget(&subject).await;
        }
        counter.used = counter.used.saturating_sub(held);
        tracing::info!(subject = %subject, "quota adjusted");
        Ok(QuotaStatus::new(owner, spec, window, counter))
    }

    /// A rotated key's successor takes over what is left of the old key's quota, so a
    /// rotation is no way to refill it.
    async fn carry_quota(
        &self,
        tenant: &Tenant,
        old: &KeyRecord,
        new: &KeyRecord,
        caller: &Caller,
    ) -> Result<()> {
        let policy = self.effective_policy(tenant).await?;
        let Some(spec) = policy.key_quota(old.quota.as_ref()).copied() else {
            return Ok(());
        };
        let left = self
            .key_quotas(std::slice::from_ref(old))
            .await?
            .remove(&old.id)
            .map_or(spec.limit, |s| s.remaining);
        if left == spec.limit {
            return Ok(());
        }
        let audit = self.event(
            caller,
            "adjust_quota",
            &tenant.id,
            &new.id,
            vec!["quota".into()],
            format!(
                "key quota: set remaining {left}; reason: carried over from {} on rotation",
                old.id
            ),
        );
        self.adjust(
            tenant,
            QuotaOwner::Key,
            &new.id,
            &spec,
            QuotaChange::SetRemaining(left),
            audit,
        )
        .await?;
        Ok(())
    }

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
            .store
            .rotate_key(&old.id, now.plus(grace), new, audit)
            .await?;
        self.listener.key_changed(&old.id, &old.lookup_id);
        self.carry_quota(&tenant, &old, &key, caller).await?;
        tracing::info!(key_id = %old.id, successor = %key.id, tenant_id = %key.tenant_id, "key rotated");
        Ok((Issued { key, secret }, old))
    }
}
