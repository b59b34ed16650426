//! Who may call KeyAdmin: holders of an admin token, never holders of an API key.
use crate::domain::key;
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// Prefix of generated admin tokens; `kgadm_` + 40 base62 characters.
pub const ADMIN_TOKEN_PREFIX: &str = "kgadm_";

/// The admin identity a request was authenticated as, put in the request's extensions
/// so handlers (and the audit log) know the actor without ever seeing the token.
#[derive(Debug, Clone)]
pub struct Actor {
    pub token_id: String,
}

/// An accepted token: its id and the SHA-256 digest of the token.
type TokenEntry = (String, [u8; 32]);

/// The admin tokens this server accepts.
#[derive(Clone, Default)]
pub struct AdminTokens(Arc<RwLock<Vec<TokenEntry>>>);

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh admin token.
pub fn generate_token() -> String {
    format!("{ADMIN_TOKEN_PREFIX}{}", key::random_base62(40))
}

impl AdminTokens {
    pub fn add(&self, id: String, digest: [u8; 32]) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, digest));
    }

    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// The id of the token matching `presented`. Compares against every token in constant
    /// time per comparison, without stopping at a match.
    fn identify(&self, presented: &str) -> Option<String> {
        let d = digest(presented);
        let tokens = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for (id, known) in tokens.iter() {
            if bool::from(known.ct_eq(&d)) {
                found = Some(id.clone());
            }
        }
        found
    }

    /// Authenticates a KeyAdmin request from its `authorization` metadata.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <admin token>` metadata")
        })?;
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
            Some(token_id) => {
                req.extensions_mut().insert(Actor { token_id });
                Ok(req)
            }
            None => Err(Status::unauthenticated("admin token not recognised")),
        }
    }
}
