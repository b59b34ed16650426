//! Keys imported from another system by their stored hash (see `domain::import`).
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::import::{self, ImportFormat, ImportRule};
use crate::domain::policy::{validate_rate_limits, RateLimitSpec};
use crate::domain::{text, Caller, IpAllowlist, KeyRecord, NewKey, ScopeSet, UnixMillis};
use crate::error::{Error, Result};
use std::collections::BTreeMap;

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

impl AdminService {
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
        // A prefix belongs to one tenant: importing under another tenant's native prefix
        // (or one overlapping it) would let these keys answer for that tenant's format.
        // The other tenant is not named: a tenant-scoped admin learns nothing about it.
        for other in self.all_tenants().await? {
            if other.id != tenant_id
                && import::prefixes_overlap(&key_prefix, other.policy.effective_prefix())
            {
                return Err(Error::precondition(
                    "key_prefix",
                    "overlaps the key prefix of another tenant; choose a prefix no other tenant uses",
                ));
            }
        }
        if self.imports.rules().iter().any(|r| {
            r.tenant_id != tenant_id && import::prefixes_overlap(&key_prefix, &r.key_prefix)
        }) {
            return Err(Error::precondition(
                "key_prefix",
                "overlaps a prefix another tenant imported keys under",
            ));
        }
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
            let secret_hash =
                import::stored_hash(&field("hash"), format, &k.hash, &self.hasher.ceiling())?;
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
                id: super::keys::new_key_id(),
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
            .imported
            .import_keys(&rule, batch, tenant.policy.max_active_keys, now)
            .await?;
        self.imports.refresh(self.imported.as_ref()).await?;
        tracing::info!(tenant_id, keys = imported.len(), "keys imported");
        Ok(imported)
    }
}
