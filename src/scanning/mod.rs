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
//!   such an array; 413 a body over `max_body_bytes`; 408 a body not sent within
//!   [`BODY_TIMEOUT`]; 503 the store is unreachable, or [`MAX_IN_FLIGHT`] requests are
//!   being handled already (the partner retries).
//!
//! Every request's signature is checked (ECDSA verification costs microseconds): there is
//! no per-address throttle, which behind a TLS proxy would let anyone lock the partner out.
//! What bounds a flood is the in-flight cap and the body timeout.
mod signature;

pub use signature::PartnerKeys;

use crate::domain::access::Principal;
use crate::domain::import::sha256_hex;
use crate::domain::leak::{LeakReport, LeakVerdict};
use crate::domain::Caller;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::service::leaks::{Channel, LeakResponder};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const PATH: &str = "/github/secret-scanning";
/// Requests handled at once; more get 503 at once (a slow sender holds one for at most
/// [`BODY_TIMEOUT`]).
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest wait for a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const KEY_ID_HEADER: &str = "github-public-key-identifier";
const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// What the endpoint needs.
pub struct Partner {
    pub keys: PartnerKeys,
    pub responder: Arc<LeakResponder>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    in_flight: tokio::sync::Semaphore,
}

impl Partner {
    pub fn new(
        keys: PartnerKeys,
        responder: Arc<LeakResponder>,
        metrics: Arc<Metrics>,
        max_body_bytes: usize,
    ) -> Partner {
        Partner {
            keys,
            responder,
            metrics,
            max_body_bytes,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
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

async fn report(State(p): State<Arc<Partner>>, request: Request) -> Response {
    let Ok(_permit) = p.in_flight.try_acquire() else {
        p.metrics.leak_refused("busy");
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many reports in progress; retry later",
        );
    };
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(body, p.max_body_bytes),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            p.metrics.leak_refused("too_large");
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {} bytes", p.max_body_bytes),
            );
        }
        Err(_) => {
            p.metrics.leak_refused("slow_body");
            return json_error(StatusCode::REQUEST_TIMEOUT, "the body was not sent in time");
        }
    };
    let headers = &parts.headers;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key_id = header(KEY_ID_HEADER);
    if let Err(why) = p.keys.verify(key_id, header(SIGNATURE_HEADER), &body) {
        p.metrics.leak_refused(why.label());
        tracing::warn!(
            reason = why.label(),
            "secret scanning report refused: not signed by a known key"
        );
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
    axum::Router::new()
        .route(PATH, post(report))
        // The handler reads the body itself, under its own limit and timeout.
        .layer(DefaultBodyLimit::disable())
        .with_state(partner)
}

/// Serves the endpoint on `listener` until `stop`.
pub async fn serve(listener: TcpListener, partner: Arc<Partner>, mut stop: watch::Receiver<bool>) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router(partner))
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "secret scanning endpoint failed");
    }
}
