//! What Keygate stores about tenants and keys.
use super::{
    ip::IpAllowlist, policy::RateLimitSpec, policy::TenantPolicy, scope::ScopeSet, time::UnixMillis,
};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    pub policy: TenantPolicy,
    pub create_time: UnixMillis,
    pub update_time: UnixMillis,
}

/// A plan template: limits and a scope ceiling shared by every tenant on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub display_name: String,
    pub limits: super::policy::PlanLimits,
    pub create_time: UnixMillis,
    pub update_time: UnixMillis,
}

/// A key's lifecycle state at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Disabled,
    Revoked,
    Expired,
}

/// A stored API key, without its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub environment: String,
    pub lookup_id: String,
    /// The printable start of the secret (`nxc_live_`).
    pub key_prefix: String,
    pub display_prefix: String,
    pub scopes: ScopeSet,
    pub ip_allowlist: IpAllowlist,
    /// Empty = the tenant's defaults.
    pub rate_limits: Vec<RateLimitSpec>,
    /// `None` = the tenant's `default_key_quota`, if any.
    pub quota: Option<super::quota::QuotaSpec>,
    pub metadata: BTreeMap<String, String>,
    pub enabled: bool,
    pub create_time: UnixMillis,
    pub update_time: UnixMillis,
    pub expire_time: Option<UnixMillis>,
    pub last_used_time: Option<UnixMillis>,
    /// Checks counted against the key, all time (flushed with usage).
    pub use_count: u64,
    /// May lie in the future: a rotated key's old secret works until then.
    pub revoke_time: Option<UnixMillis>,
    pub revoke_reason: Option<String>,
    pub rotated_from: Option<String>,
}

impl KeyRecord {
    pub fn is_revoked(&self, now: UnixMillis) -> bool {
        self.revoke_time.is_some_and(|t| t <= now)
    }

    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    /// The state at `now`, in the order checks report it: revoked, disabled, expired.
    pub fn state(&self, now: UnixMillis) -> KeyState {
        if self.is_revoked(now) {
            KeyState::Revoked
        } else if !self.enabled {
            KeyState::Disabled
        } else if self.is_expired(now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// What the check path reads of a key: the compact form the key cache holds, one per
/// cached key (so each byte here is a megabyte at a million keys). What many keys have in
/// common (tenant, environment, scope set, limits, allowlist) is shared between them, not
/// copied; what only admin reads need (lookup id, prefixes, times, counters, revoke
/// reason) is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedKey {
    pub id: Box<str>,
    pub tenant_id: Arc<str>,
    pub name: Box<str>,
    pub environment: Arc<str>,
    pub scopes: Arc<ScopeSet>,
    /// `None` = any address.
    pub ip_allowlist: Option<Arc<IpAllowlist>>,
    /// Empty = the tenant's defaults.
    pub rate_limits: Arc<[RateLimitSpec]>,
    /// `None` = the tenant's `default_key_quota`, if any.
    pub quota: Option<Box<super::quota::QuotaSpec>>,
    /// `None` = no metadata.
    pub metadata: Option<Box<BTreeMap<String, String>>>,
    pub enabled: bool,
    pub expire_time: Option<UnixMillis>,
    pub revoke_time: Option<UnixMillis>,
}

impl CachedKey {
    /// The compact form of `r`; `share` gives the shared copy of each part many keys hold
    /// alike (the cache's interners).
    pub fn new(r: KeyRecord, share: &impl KeyParts) -> Self {
        CachedKey {
            id: r.id.into_boxed_str(),
            tenant_id: share.text(&r.tenant_id),
            name: r.name.into_boxed_str(),
            environment: share.text(&r.environment),
            scopes: share.scopes(r.scopes),
            ip_allowlist: (!r.ip_allowlist.is_empty()).then(|| share.allowlist(r.ip_allowlist)),
            rate_limits: share.limits(r.rate_limits),
            quota: r.quota.map(Box::new),
            metadata: (!r.metadata.is_empty()).then(|| Box::new(r.metadata)),
            enabled: r.enabled,
            expire_time: r.expire_time,
            revoke_time: r.revoke_time,
        }
    }

    pub fn is_revoked(&self, now: UnixMillis) -> bool {
        self.revoke_time.is_some_and(|t| t <= now)
    }

    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.expire_time.is_some_and(|t| t <= now)
    }

    /// Whether a call from `ip` may use the key (`None`: the caller's address is unknown).
    pub fn admits_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        self.ip_allowlist.as_ref().is_none_or(|a| a.admits(ip))
    }

    /// The key's metadata, in name order.
    pub fn metadata(&self) -> impl Iterator<Item = (&String, &String)> {
        self.metadata.iter().flat_map(|m| m.iter())
    }
}

/// Where [`CachedKey::new`] gets the one shared copy of each part many keys hold alike.
pub trait KeyParts {
    fn text(&self, s: &str) -> Arc<str>;
    fn scopes(&self, s: ScopeSet) -> Arc<ScopeSet>;
    fn allowlist(&self, a: IpAllowlist) -> Arc<IpAllowlist>;
    fn limits(&self, l: Vec<RateLimitSpec>) -> Arc<[RateLimitSpec]>;
}

/// Everything a new key row holds; the store assigns nothing but checks the cap.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: KeyRecord,
    /// The argon2id PHC string of the full key.
    pub secret_hash: String,
}

/// One KeyAdmin write, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: String,
    pub time: UnixMillis,
    /// The admin token's id; never the token.
    pub actor: String,
    pub action: String,
    pub tenant_id: String,
    /// Empty for tenant changes.
    pub key_id: String,
    pub changed_fields: Vec<String>,
    pub request_id: String,
    pub detail: String,
}

impl AuditEvent {
    /// A sortable audit id: time, then a per-process sequence, so events of one
    /// millisecond list in the order they happened; the random tail keeps replicas' ids
    /// distinct.
    pub fn new_id(time: UnixMillis) -> String {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000_000_000;
        format!(
            "aud_{:013}_{seq:010}_{}",
            time.0.max(0),
            super::key::random_base62(6)
        )
    }
}

/// Who asks, for authorization and the audit trail.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The admin identity; its id is the audit log's actor.
    pub principal: super::access::Principal,
    pub request_id: String,
}
