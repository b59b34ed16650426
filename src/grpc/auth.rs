//! Who may call KeyAdmin (holders of an admin token, never holders of an API key), and
//! who may call Authorize/ext_authz (anyone, or holders of the `authorize_token`).
use crate::conn::PeerInfo;
use crate::domain::key;
use crate::service::tokens::{digest, AdminTokens};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The KeyAdmin interceptor: puts the caller's `Principal` into the request's extensions.
#[derive(Clone)]
pub struct AdminAuth(pub AdminTokens);

impl AdminAuth {
    /// Authenticates a KeyAdmin request from its `authorization` metadata.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(header) = req.metadata().get("authorization") else {
            // mTLS: a client certificate mapped to an admin identity stands in for a token.
            let subject = req
                .extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.client_subject.as_deref());
            let who = subject.and_then(|s| self.0.subject(s));
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
        match self.0.identify(token) {
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

/// In a request's extensions when its caller proved it is an allowed service (authorize
/// token or client certificate): what it says about the end user (`client_ip`) is then
/// believed for the failed-check throttle.
#[derive(Debug, Clone, Copy)]
pub struct TrustedCaller;

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
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if self.token.is_none() && self.subjects.is_empty() {
            return Ok(req);
        }
        let subject = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.client_subject.as_deref());
        if subject.is_some_and(|s| self.subjects.iter().any(|k| k == s)) {
            req.extensions_mut().insert(TrustedCaller);
            return Ok(req);
        }
        match (bearer(req.metadata()), &self.token) {
            (Some(t), Some(want)) if bool::from(digest(t).ct_eq(want)) => {
                req.extensions_mut().insert(TrustedCaller);
                Ok(req)
            }
            (Some(_), _) => Err(Status::unauthenticated("authorize token not recognised")),
            (None, _) => Err(Status::unauthenticated(
                "missing `authorization: Bearer <authorize token>` metadata (or an allowed client certificate)",
            )),
        }
    }
}
