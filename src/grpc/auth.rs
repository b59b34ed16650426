//! Who may call KeyAdmin (holders of an admin token, never holders of an API key), and
//! who may call Authorize/ext_authz (anyone, or holders of the `authorize_token`).
use crate::domain::access::Principal;
use crate::domain::key;
use crate::store::{AdminTokenRecord, KeyStore};
use crate::tls::PeerInfo;
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

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

    /// Reloads the stored tokens, so tokens made or revoked with `keygate admin` (by this
    /// or another process) take effect without a restart.
    pub async fn refresh(&self, store: &dyn KeyStore) -> crate::error::Result<()> {
        let records = store.admin_tokens().await?;
        self.set_stored(&records);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        read(&self.configured).is_empty() && read(&self.stored).is_empty()
    }

    /// Who `presented` is. Compares against every token in constant time per comparison,
    /// without stopping at a match.
    fn identify(&self, presented: &str) -> Option<Principal> {
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

    /// Authenticates a KeyAdmin request from its `authorization` metadata.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(header) = req.metadata().get("authorization") else {
            // mTLS: a client certificate mapped to an admin identity stands in for a token.
            let subject = req
                .extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.client_subject.as_deref());
            let who = subject.and_then(|s| {
                self.subjects
                    .iter()
                    .find(|(known, _)| known == s)
                    .map(|(_, p)| p.clone())
            });
            return match who {
                Some(who) => {
                    req.extensions_mut().insert(who);
                    Ok(req)
                }
                None => Err(Status::unauthenticated(
                    "missing `authorization: Bearer <admin token>` metadata",
                )),
            };
        };
        let header = header
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization metadata is not valid text"))?;
        let token = match header.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => {
                return Err(Status::unauthenticated(
                    "authorization metadata must be `Bearer <admin token>`",
                ))
            }
        };
        if key::parse(token).is_ok() {
            // A well-formed API key: its holder is a client, not an operator.
            return Err(Status::permission_denied(
                "API keys cannot call KeyAdmin; use an admin token",
            ));
        }
        match self.identify(token) {
            Some(who) => {
                req.extensions_mut().insert(who);
                Ok(req)
            }
            None => Err(Status::unauthenticated("admin token not recognised")),
        }
    }
}

/// The bearer token of a request's `authorization` metadata.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let header = metadata.get("authorization")?.to_str().ok()?;
    match header.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        _ => None,
    }
}

/// Callers of `Authorize.Check` and ext_authz: with an `authorize_token` configured, each
/// call must carry `authorization: Bearer <token>`, so a random pod cannot probe keys.
/// With mTLS, client certificate subjects may be allowed instead of (or besides) a token.
#[derive(Clone, Default)]
pub struct AuthorizeCallers {
    token: Option<[u8; 32]>,
    subjects: Arc<Vec<String>>,
}

impl AuthorizeCallers {
    pub fn new(token: Option<&str>, subjects: Vec<String>) -> Self {
        AuthorizeCallers {
            token: token.map(digest),
            subjects: Arc::new(subjects),
        }
    }

    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.token.is_none() && self.subjects.is_empty() {
            return Ok(req);
        }
        let subject = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.client_subject.as_deref());
        if subject.is_some_and(|s| self.subjects.iter().any(|k| k == s)) {
            return Ok(req);
        }
        match (bearer(req.metadata()), &self.token) {
            (Some(t), Some(want)) if bool::from(digest(t).ct_eq(want)) => Ok(req),
            (Some(_), _) => Err(Status::unauthenticated("authorize token not recognised")),
            (None, _) => Err(Status::unauthenticated(
                "missing `authorization: Bearer <authorize token>` metadata (or an allowed client certificate)",
            )),
        }
    }
}
