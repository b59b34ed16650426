//! The secret scanning partner endpoint (`[leaks] listen`): GitHub's partner program (and
//! anything that speaks its format) POSTs the tokens it found in public; Keygate checks
//! the signature, hands the tokens to the leak responder, and answers one label per token.
//!
//! `POST /github/secret-scanning`, body `[{"token", "type", "url", "source"}, …]`, headers
//! `Github-Public-Key-Identifier` and `Github-Public-Key-Signature`. Answers:
//! - 200 `[{"token_hash", "token_type", "label"}]` in request order: `label` is
//!   `true_positive` for a key of this Keygate, else `false_positive`; `token_hash` is the
//!   SHA-256 (hex) of the token, so no token is ever sent back;
//! - 401 unsigned, signed by an unknown key, or a signature that does not match the body
//!   (nothing is read or changed); 429 over budget (`Retry-After`); 400 a body that is not
//!   such an array; 413 a body over `max_body_bytes`; 503 the store is unreachable
//!   (the partner retries).
mod signature;

pub use signature::PartnerKeys;

use crate::domain::access::Principal;
use crate::domain::leak::{LeakReport, LeakVerdict};
use crate::domain::{Caller, Clock, RateLimitSpec};
use crate::error::Error;
use crate::limiter::memory::MemoryLimiter;
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;
use crate::service::leaks::{Channel, LeakResponder};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const PATH: &str = "/github/secret-scanning";
const KEY_ID_HEADER: &str = "github-public-key-identifier";
const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// What the endpoint needs.
pub struct Partner {
    pub keys: PartnerKeys,
    pub responder: Arc<LeakResponder>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    /// Requests with a bad signature allowed per peer address per minute; past that a
    /// peer gets 429 without a signature check.
    pub bad_signatures: Vec<RateLimitSpec>,
    pub bad_signature_counts: MemoryLimiter,
}

impl Partner {
    pub fn new(
        keys: PartnerKeys,
        responder: Arc<LeakResponder>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        max_body_bytes: usize,
        bad_signatures_per_minute: u64,
    ) -> Partner {
        Partner {
            keys,
            responder,
            metrics,
            clock,
            max_body_bytes,
            bad_signatures: vec![RateLimitSpec {
                name: "bad_signatures".into(),
                limit: bad_signatures_per_minute.max(1),
                window: Duration::from_secs(60),
            }],
            bad_signature_counts: MemoryLimiter::default(),
        }
    }
}

/// One match as the partner sends it.
#[derive(Deserialize)]
struct Match {
    token: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// One label as the partner program reads it.
#[derive(Serialize)]
struct Label {
    token_hash: String,
    token_type: String,
    label: &'static str,
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a body is not a list of matches, without quoting any of it (it holds tokens).
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "is not valid JSON",
        Category::Data => {
            "must be a JSON array of objects with a string \"token\" (and optional \"type\", \"url\", \"source\")"
        }
        Category::Io => "could not be read",
    };
    format!("body {what} (line {}, column {})", e.line(), e.column())
}

async fn report(
    State(p): State<Arc<Partner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = p.clock.now();
    let peer_bucket = peer.ip().to_string();
    // A peer that keeps sending bad signatures is refused without a signature check.
    let budget = p
        .bad_signature_counts
        .check(&peer_bucket, &p.bad_signatures, 1, now, true)
        .await;
    if budget.as_ref().is_ok_and(|o| !o.allowed) {
        p.metrics.leak_refused("bad_signature_flood");
        return too_many(budget.ok().and_then(|o| o.status?.retry_after));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key_id = header(KEY_ID_HEADER);
    if let Err(why) = p.keys.verify(key_id, header(SIGNATURE_HEADER), &body) {
        p.metrics.leak_refused(why.label());
        let _ = p
            .bad_signature_counts
            .check(&peer_bucket, &p.bad_signatures, 1, now, false)
            .await;
        tracing::warn!(peer = %peer.ip(), reason = why.label(), "secret scanning report refused: not signed by a known key");
        return json_error(
            StatusCode::UNAUTHORIZED,
            "the request is not signed by a known secret scanning public key",
        );
    }
    let matches: Vec<Match> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            p.metrics.leak_refused("malformed_body");
            return json_error(StatusCode::BAD_REQUEST, &describe_json_error(&e));
        }
    };
    let key_id = key_id.unwrap_or_default().trim();
    let short_id: String = key_id.chars().take(16).collect();
    let caller = Caller {
        principal: Principal::platform_admin(format!("secret-scanning:{short_id}")),
        request_id: format!("req_{}", crate::domain::key::random_base62(16)),
    };
    let labels: Vec<(String, String)> = matches
        .iter()
        .map(|m| (sha256_hex(&m.token), m.kind.clone()))
        .collect();
    let reports: Vec<LeakReport> = matches
        .into_iter()
        .map(|m| LeakReport {
            token: m.token.into(),
            kind: m.kind,
            url: m.url,
            source: m.source,
        })
        .collect();
    let reporter = format!("partner:{key_id}");
    match p
        .responder
        .report(&reports, &caller, &reporter, Channel::Partner)
        .await
    {
        Ok(verdicts) => {
            let out: Vec<Label> = verdicts
                .iter()
                .zip(labels)
                .map(|(v, (token_hash, token_type))| Label {
                    token_hash,
                    token_type,
                    label: match v {
                        LeakVerdict::Found { .. } => "true_positive",
                        LeakVerdict::NotAKey | LeakVerdict::Unknown => "false_positive",
                    },
                })
                .collect();
            let body = serde_json::to_string(&out).unwrap_or_else(|_| "[]".into());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(Error::InvalidArgument { field, message }) => {
            json_error(StatusCode::BAD_REQUEST, &format!("{field}: {message}"))
        }
        Err(Error::ResourceExhausted { retry_after, .. }) => too_many(retry_after),
        Err(e @ Error::Unavailable { .. }) => {
            tracing::warn!(error = %e, "secret scanning report not processed: store unavailable");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; retry later",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "secret scanning report failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

fn too_many(retry_after: Option<Duration>) -> Response {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many reports from this source; retry later",
    );
    let secs = retry_after
        .map_or(60, |d| d.as_secs_f64().ceil() as u64)
        .max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn router(partner: Arc<Partner>) -> axum::Router {
    let limit = partner.max_body_bytes;
    axum::Router::new()
        .route(PATH, post(report))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(partner)
}

/// Serves the endpoint on `listener` until `stop`.
pub async fn serve(listener: TcpListener, partner: Arc<Partner>, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let app = router(partner).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "secret scanning endpoint failed");
    }
}
