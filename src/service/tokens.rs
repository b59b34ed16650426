//! The admin tokens this server accepts: the break-glass token from the configuration,
//! the unrevoked tokens in the store (reloaded every few seconds, so `keygate admin` takes
//! effect without a restart), and mTLS subjects mapped to admin identities. Only SHA-256
//! digests are held; the gRPC interceptor (`grpc::auth`) asks [`AdminTokens::identify`].
use crate::domain::access::{Principal, Role};
use crate::domain::{key, UnixMillis};
use crate::error::Result;
use crate::store::{AdminTokenRecord, AdminTokenStore};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// Prefix of generated admin tokens; `kgadm_` + 40 base62 characters.
pub const ADMIN_TOKEN_PREFIX: &str = "kgadm_";

/// An accepted token: who it is and the SHA-256 digest of the token.
type TokenEntry = (Principal, [u8; 32]);

/// The admin tokens this server accepts: the break-glass token from the configuration
/// and the unrevoked tokens in the store (reloaded by [`AdminTokens::refresh`]).
#[derive(Clone, Default)]
pub struct AdminTokens {
    configured: Arc<RwLock<Vec<TokenEntry>>>,
    stored: Arc<RwLock<Vec<TokenEntry>>>,
    /// mTLS: client certificate subjects that are admin identities.
    subjects: Arc<Vec<(String, Principal)>>,
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh admin token.
pub fn generate_token() -> String {
    format!("{ADMIN_TOKEN_PREFIX}{}", key::random_base62(40))
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

impl AdminTokens {
    /// Adds a token that does not come from the store (`KEYGATE_ADMIN_TOKEN`).
    pub fn add_configured(&self, who: Principal, digest: [u8; 32]) {
        self.configured
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((who, digest));
    }

    /// Client certificate subjects (mTLS) that act as admin identities without a token.
    pub fn with_subjects(mut self, subjects: Vec<(String, Principal)>) -> Self {
        self.subjects = Arc::new(subjects);
        self
    }

    /// Replaces the stored tokens with the unrevoked ones of `records`.
    pub fn set_stored(&self, records: &[AdminTokenRecord]) {
        let entries = records
            .iter()
            .filter(|r| r.revoke_time.is_none())
            .map(|r| {
                let who = Principal {
                    id: r.id.clone(),
                    role: r.role,
                    tenant: r.tenant_id.clone(),
                };
                (who, r.digest)
            })
            .collect();
        *self.stored.write().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    /// Whether `who` is still an accepted identity with the same role and tenant (a long
    /// call, such as `WatchEvents`, asks again while it runs).
    pub fn still_valid(&self, who: &Principal) -> bool {
        read(&self.configured).iter().any(|(p, _)| p == who)
            || read(&self.stored).iter().any(|(p, _)| p == who)
            || self.subjects.iter().any(|(_, p)| p == who)
    }

    /// Reloads the stored tokens, so tokens made or revoked with `keygate admin` (by this
    /// or another process) take effect without a restart.
    pub async fn refresh(&self, store: &dyn AdminTokenStore) -> Result<()> {
        let records = store.admin_tokens().await?;
        self.set_stored(&records);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        read(&self.configured).is_empty() && read(&self.stored).is_empty()
    }

    /// Who `presented` is. Compares against every token in constant time per comparison,
    /// without stopping at a match.
    pub fn identify(&self, presented: &str) -> Option<Principal> {
        let d = digest(presented);
        let mut found = None;
        for list in [&self.configured, &self.stored] {
            for (who, known) in read(list).iter() {
                if bool::from(known.ct_eq(&d)) {
                    found = Some(who.clone());
                }
            }
        }
        found
    }

    /// The admin identity of an mTLS client certificate subject, if it is one.
    pub fn subject(&self, subject: &str) -> Option<Principal> {
        self.subjects
            .iter()
            .find(|(known, _)| known == subject)
            .map(|(_, p)| p.clone())
    }
}

/// A new admin token and its record (digest only): the token is returned to be shown once.
pub fn new_admin_token(
    role: Role,
    tenant_id: Option<String>,
    description: &str,
    now: UnixMillis,
) -> (AdminTokenRecord, String) {
    let token = generate_token();
    let record = AdminTokenRecord {
        id: format!("adm_{}", key::random_base62(12)),
        digest: digest(&token),
        description: description.to_owned(),
        role,
        tenant_id,
        create_time: now,
        revoke_time: None,
    };
    (record, token)
}

/// The tokens to accept at start-up: `configured` (the break-glass token) plus those in
/// the store. With neither, generates a platform admin token, stores its digest and
/// returns the token, which the caller shows once.
pub async fn load(
    store: &dyn AdminTokenStore,
    configured: Option<&str>,
    now: UnixMillis,
) -> Result<(AdminTokens, Option<String>)> {
    let tokens = AdminTokens::default();
    if let Some(t) = configured {
        tokens.add_configured(Principal::platform_admin("env"), digest(t));
    }
    tokens.refresh(store).await?;
    if !tokens.is_empty() || !store.admin_tokens().await?.is_empty() {
        return Ok((tokens, None));
    }
    let (record, token) = new_admin_token(Role::Admin, None, "generated on first start", now);
    store.add_admin_token(&record).await?;
    tokens.refresh(store).await?;
    Ok((tokens, Some(token)))
}
