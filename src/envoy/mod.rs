//! Envoy's `envoy.service.auth.v3.Authorization/Check` (ext_authz): translates the HTTP
//! request Envoy describes into a [`CheckInput`], asks the same [`CheckService`] that
//! `keygate.v1.Authorize` uses, and turns the decision into Envoy's OK or Denied response.
//! No decision logic lives here.
pub mod settings;

use crate::domain::text;
use crate::domain::UnixMillis;
use crate::error::Result;
use crate::metrics::Source;
use crate::service::check::{CheckInput, CheckService, Decision, Reason};
use base64::Engine;
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use settings::{Credential, EnvoyConfig, ErrorFormat, ResetFormat, RouteSettings};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Headers Keygate sets for the upstream; any a client sends itself are stripped.
pub const UPSTREAM_PREFIX: &str = "x-keygate-";

/// The ext_authz service.
pub struct ExtAuthz {
    check: Arc<CheckService>,
    config: EnvoyConfig,
    routes: RouteCache,
}

impl ExtAuthz {
    pub fn new(check: Arc<CheckService>, config: EnvoyConfig) -> Self {
        ExtAuthz {
            check,
            config,
            routes: RouteCache::default(),
        }
    }
}

/// A route's `context_extensions` and the settings they give.
type KnownRoute = (HashMap<String, String>, Arc<RouteSettings>);

/// Distinct `context_extensions` maps remembered; past this the cache starts over.
const ROUTES_REMEMBERED: usize = 1024;

/// Route settings by `context_extensions`: a route's settings are worked out (credential
/// sources, scopes) once, not on every call. A route is known by its whole map: equal
/// maps, equal settings. A map that does not parse is never remembered, so it keeps
/// failing loudly.
#[derive(Default)]
struct RouteCache {
    by_ext: std::sync::RwLock<foldhash::HashMap<u64, Vec<KnownRoute>>>,
    hasher: foldhash::quality::FixedState,
}

impl RouteCache {
    fn get(
        &self,
        config: &EnvoyConfig,
        ext: &HashMap<String, String>,
    ) -> Result<Arc<RouteSettings>> {
        use std::hash::BuildHasher;
        // Independent of the map's iteration order (keys are unique, so XOR is fine).
        let h = ext
            .iter()
            .fold(0u64, |h, entry| h ^ self.hasher.hash_one(entry));
        {
            let known = self.by_ext.read().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = known
                .get(&h)
                .and_then(|v| v.iter().find(|(m, _)| m == ext))
                .map(|(_, s)| s.clone())
            {
                return Ok(s);
            }
        }
        let settings = Arc::new(config.for_route(ext)?);
        let mut known = self.by_ext.write().unwrap_or_else(|p| p.into_inner());
        if known.len() >= ROUTES_REMEMBERED {
            known.clear();
        }
        known
            .entry(h)
            .or_default()
            .push((ext.clone(), settings.clone()));
        Ok(settings)
    }
}

/// The presented key, from the first source that has one.
fn credential(headers: &HashMap<String, String>, sources: &[Credential]) -> Option<String> {
    for source in sources {
        let Some(value) = headers.get(source.header()) else {
            continue;
        };
        let found = match source {
            Credential::Header(_) => Some(value.trim().to_owned()),
            Credential::Bearer => value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, k)| k.trim().to_owned()),
            Credential::Basic => value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                .and_then(|(_, b64)| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .ok()
                })
                .and_then(|raw| String::from_utf8(raw).ok())
                .map(|userpass| {
                    // The key is the user name (Nanonets); some clients put it in the
                    // password with an empty user name instead.
                    let (user, pass) = userpass.split_once(':').unwrap_or((userpass.as_str(), ""));
                    if user.is_empty() { pass } else { user }.to_owned()
                }),
        };
        if let Some(k) = found.filter(|k| !k.is_empty()) {
            return Some(k);
        }
    }
    None
}

/// The client's address: the connection's source, or with `trusted` proxies in front of
/// Envoy the `x-forwarded-for` entry the outermost trusted proxy appended.
fn client_ip(
    source: Option<&String>,
    headers: &HashMap<String, String>,
    trusted: usize,
) -> Option<IpAddr> {
    if trusted > 0 {
        let xff: Vec<&str> = headers
            .get("x-forwarded-for")?
            .split(',')
            .map(str::trim)
            .collect();
        let entry = xff.len().checked_sub(trusted).and_then(|i| xff.get(i))?;
        return entry.parse::<IpAddr>().ok().map(crate::domain::ip::unmap);
    }
    source
        .and_then(|s| s.parse::<IpAddr>().ok())
        .map(crate::domain::ip::unmap)
}

/// Translates Envoy's request. Errors only for a misconfigured route.
pub fn translate(config: &EnvoyConfig, req: &CheckRequest) -> Result<(CheckInput, RouteSettings)> {
    let settings = config.for_route(extensions(req))?;
    let input = input_for(&settings, req);
    Ok((input, settings))
}

/// The route's `context_extensions` (empty when Envoy sent none).
fn extensions(req: &CheckRequest) -> &HashMap<String, String> {
    static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    req.attributes
        .as_ref()
        .map(|a| &a.context_extensions)
        .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
}

/// The check Envoy's request asks for, under its route's settings.
pub fn input_for(settings: &RouteSettings, req: &CheckRequest) -> CheckInput {
    let empty = HashMap::new();
    let attrs = req.attributes.as_ref();
    let http = attrs
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let headers = req.get_client_headers().unwrap_or(&empty);
    let api_key = credential(headers, &settings.credentials).unwrap_or_default();
    let tenant_id = settings.tenant.clone().or_else(|| {
        headers
            .get(&settings.tenant_header)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    });
    let required_scopes = settings.required_scopes.clone();
    let path = http
        .map(|h| h.path.split('?').next().unwrap_or_default().to_owned())
        .filter(|p| !p.is_empty());
    let client_ip = client_ip(req.get_client_address(), headers, settings.trusted_proxies);
    CheckInput {
        api_key,
        tenant_id,
        required_scopes,
        client_ip,
        // The address Envoy saw (after the configured trusted proxy hops), which the end
        // user cannot choose; the handler keeps it only from a trusted caller, else uses
        // the connection's peer.
        guess_source: client_ip,
        method: http.map(|h| h.method.clone()).filter(|m| !m.is_empty()),
        path,
        route: settings.route.clone(),
        cost: u64::from(settings.cost.max(1)),
        dry_run: false,
        reserve: settings.reserve,
    }
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    }
}

fn ratelimit_headers(
    d: &Decision,
    settings: &RouteSettings,
    now: UnixMillis,
) -> Vec<(&'static str, String)> {
    let Some(rl) = &d.rate_limit else {
        // An exhausted quota that refills: when to come back.
        return match d.quota.and_then(|q| q.retry_after) {
            Some(after) if d.reason == Reason::QuotaExceeded => vec![(
                "retry-after",
                after.as_millis().div_ceil(1000).max(1).to_string(),
            )],
            _ => vec![],
        };
    };
    let reset = match settings.reset_format {
        ResetFormat::Epoch => (rl.reset.0 + 999) / 1000,
        ResetFormat::Delta => (now.until(rl.reset).as_millis() as i64 + 999) / 1000,
    };
    let mut h = vec![
        ("x-ratelimit-limit", rl.limit.to_string()),
        ("x-ratelimit-remaining", rl.remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ];
    if let Some(after) = rl.retry_after {
        h.push((
            "retry-after",
            after.as_millis().div_ceil(1000).max(1).to_string(),
        ));
    }
    h
}

/// The deny body in the route's dialect. Never contains the key.
pub fn deny_body(d: &Decision, format: ErrorFormat) -> String {
    let message = d.reason.message();
    let body = match format {
        ErrorFormat::Nesika => {
            serde_json::json!({ "success": false, "data": null, "message": message })
        }
        ErrorFormat::Default => {
            let (code, details) = match d.http_status() {
                _ if d.reason == Reason::QuotaExceeded => {
                    let q = d.quota.as_ref();
                    let retry = q
                        .and_then(|q| q.retry_after)
                        .map(|a| a.as_millis().div_ceil(1000).max(1));
                    (
                        "quota_exceeded",
                        serde_json::json!({
                            "quota": q.map(|q| q.exhausted.owner.name()),
                            "retry_after": retry,
                        }),
                    )
                }
                429 => {
                    let retry = d
                        .rate_limit
                        .as_ref()
                        .and_then(|r| r.retry_after)
                        .map(|a| a.as_millis().div_ceil(1000).max(1));
                    (
                        "rate_limit_exceeded",
                        serde_json::json!({ "retry_after": retry }),
                    )
                }
                403 => (
                    "forbidden",
                    serde_json::json!({ "reason": d.reason.code() }),
                ),
                _ => (
                    "unauthorized",
                    serde_json::json!({ "error": "Authentication failed" }),
                ),
            };
            serde_json::json!({ "code": code, "message": message, "details": details })
        }
    };
    body.to_string()
}

fn www_authenticate(settings: &RouteSettings) -> String {
    match settings.credentials.first() {
        Some(Credential::Basic) => r#"Basic realm="keygate""#.to_owned(),
        Some(Credential::Header(h)) => format!(r#"ApiKey realm="keygate", header="{h}""#),
        _ => r#"Bearer realm="keygate""#.to_owned(),
    }
}

/// Envoy's answer for a decision.
pub fn respond(
    d: &Decision,
    settings: &RouteSettings,
    incoming: &HashMap<String, String>,
    now: UnixMillis,
) -> CheckResponse {
    let mut resp = CheckResponse::new();
    let rl = ratelimit_headers(d, settings, now);
    if d.allowed() {
        resp.set_status(Status::ok(""));
        let mut ok = OkHttpResponseBuilder::new();
        let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        let mut upstream: Vec<(String, String)> = Vec::new();
        if let Some(k) = &d.key {
            upstream.push(("x-keygate-key-id".into(), k.id.to_string()));
            upstream.push(("x-keygate-tenant-id".into(), k.tenant_id.to_string()));
            upstream.push(("x-keygate-scopes".into(), d.scopes.joined(" ")));
            if !k.environment.is_empty() {
                upstream.push(("x-keygate-environment".into(), k.environment.to_string()));
            }
            if let Some(id) = &d.reservation_id {
                upstream.push(("x-keygate-reservation-id".into(), id.clone()));
            }
            if settings.forward_metadata {
                // Keys that collide (stored before writes refused them) are forwarded as
                // neither: which value the upstream saw must never depend on order.
                let names: Vec<String> = k
                    .metadata()
                    .map(|(n, _)| text::metadata_header(n))
                    .collect();
                for (header, (_, value)) in names.iter().zip(k.metadata()) {
                    if names.iter().filter(|n| *n == header).count() == 1 {
                        upstream.push((header.clone(), value.clone()));
                    }
                }
            }
            let fields = [
                ("key_id", string(&k.id)),
                ("tenant_id", string(&k.tenant_id)),
            ];
            resp.set_dynamic_metadata(Some(Struct {
                fields: fields.into_iter().map(|(a, b)| (a.to_owned(), b)).collect(),
            }));
        }
        // Nothing a client sends can pose as Keygate's verdict: headers we set overwrite
        // the client's; other x-keygate-* headers are removed (Envoy applies removals after
        // additions, so a header we set must not also be removed).
        for name in incoming.keys().filter(|h| h.starts_with(UPSTREAM_PREFIX)) {
            if !upstream.iter().any(|(n, _)| n == name) {
                ok.remove_header(name.clone());
            }
        }
        // The upstream never sees the key (each header named once: `bearer` and `basic`
        // both travel in `authorization`).
        for (i, c) in settings.credentials.iter().enumerate() {
            let h = c.header();
            if !settings.credentials[..i].iter().any(|p| p.header() == h) {
                ok.remove_header(h);
            }
        }
        for (name, value) in upstream {
            ok.add_header(name, value, overwrite, true);
        }
        for (name, value) in rl {
            ok.add_response_header(name, value, overwrite, false);
        }
        resp.set_http_response(ok);
    } else {
        let status = match d.reason {
            Reason::RateLimited | Reason::QuotaExceeded => {
                Status::resource_exhausted(d.reason.message())
            }
            Reason::InsufficientScope | Reason::IpNotAllowed => {
                Status::permission_denied(d.reason.message())
            }
            _ => Status::unauthenticated(d.reason.message()),
        };
        resp.set_status(status);
        let mut denied = DeniedHttpResponseBuilder::new();
        let code = HttpStatusCode::try_from(i32::from(d.http_status()))
            .unwrap_or(HttpStatusCode::Forbidden);
        denied.set_http_status(code);
        denied.add_header("content-type", "application/json", None, false);
        if d.http_status() == 401 {
            denied.add_header("www-authenticate", www_authenticate(settings), None, false);
        }
        for (name, value) in rl {
            denied.add_header(name, value, None, false);
        }
        denied.set_body(deny_body(d, settings.error_format));
        resp.set_http_response(denied);
    }
    resp
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        // Envoy's view of the end user's address is believed for the failed-check throttle
        // only from a caller that proved it is a trusted service (authorize token or client
        // certificate): anyone else who reaches this port could name any address in the
        // attributes. Otherwise failures count against the connection's peer.
        let peer = crate::conn::peer_ip(&req);
        let trusted = req
            .extensions()
            .get::<crate::grpc::auth::TrustedCaller>()
            .is_some();
        // Boxed: Envoy's message is large, and the futures below would copy it each time
        // they are moved (memcpy was ~14 % of the adapter's instructions).
        let req = Box::new(req.into_inner());
        let carrier = req
            .get_client_headers()
            .map(|h| h as &dyn opentelemetry::propagation::Extractor);
        let span = crate::telemetry::check_span("ext_authz/Check", carrier);
        async move {
            let settings = self.routes.get(&self.config, extensions(&req))?;
            let mut input = input_for(&settings, &req);
            input.guess_source = input.guess_source.filter(|_| trusted).or(peer);
            // A store outage is a gRPC error, not a deny: Envoy's failure_mode_allow and
            // status_on_error decide what the client gets.
            let decision = self.check.check_recorded(Source::ExtAuthz, &input).await?;
            let empty = HashMap::new();
            let headers = req.get_client_headers().unwrap_or(&empty);
            Ok(Response::new(respond(
                &decision,
                &settings,
                headers,
                self.check.now(),
            )))
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn credentials_in_order_and_basic_variants() {
        let all = EnvoyConfig::default()
            .for_route(&HashMap::new())
            .unwrap()
            .credentials;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let h = headers(&[
            ("x-api-key", "from-header"),
            ("authorization", "Bearer from-bearer"),
        ]);
        assert_eq!(
            credential(&h, &all).as_deref(),
            Some("from-header"),
            "first source wins"
        );
        let h = headers(&[("authorization", &format!("Basic {}", b64("the-key:")))]);
        assert_eq!(credential(&h, &all).as_deref(), Some("the-key"));
        let h = headers(&[("authorization", &format!("basic {}", b64(":in-password")))]);
        assert_eq!(credential(&h, &all).as_deref(), Some("in-password"));
        let h = headers(&[("authorization", "Basic !!notbase64")]);
        assert_eq!(credential(&h, &all), None);
        let h = headers(&[("authorization", "Bearer ")]);
        assert_eq!(credential(&h, &all), None);
    }

    #[test]
    fn route_settings_are_remembered_per_extensions_map_and_errors_are_not() {
        let config = EnvoyConfig::default();
        let cache = RouteCache::default();
        let scopes = headers(&[("keygate.scopes", "orders:read"), ("other.filter", "x")]);
        let same = headers(&[("other.filter", "x"), ("keygate.scopes", "orders:read")]);
        let a = cache.get(&config, &scopes).unwrap();
        assert_eq!(a.required_scopes.len(), 1);
        assert!(
            Arc::ptr_eq(&a, &cache.get(&config, &same).unwrap()),
            "equal maps, one entry"
        );
        let none = cache.get(&config, &HashMap::new()).unwrap();
        assert!(none.required_scopes.is_empty());
        let bad = headers(&[("keygate.cost", "lots")]);
        for _ in 0..2 {
            let e = cache.get(&config, &bad).unwrap_err().to_string();
            assert!(e.starts_with("keygate.cost"), "{e}");
        }
        let bad_scope = headers(&[("keygate.scopes", "Not A Scope!")]);
        assert!(cache.get(&config, &bad_scope).is_err());
    }

    #[test]
    fn forwarded_for_is_trusted_only_when_configured() {
        let h = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.5, 10.0.0.2")]);
        let src = "127.0.0.1".to_string();
        assert_eq!(
            client_ip(Some(&src), &h, 0),
            Some("127.0.0.1".parse().unwrap()),
            "XFF ignored by default"
        );
        assert_eq!(
            client_ip(Some(&src), &h, 1),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(&src), &h, 2),
            Some("203.0.113.5".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(&src), &h, 4),
            None,
            "fewer entries than trusted hops: unknown"
        );
        let mapped = "::ffff:192.0.2.1".to_string();
        assert_eq!(
            client_ip(Some(&mapped), &HashMap::new(), 0),
            Some("192.0.2.1".parse().unwrap())
        );
    }

    /// An exhausted quota gets the rate-limit body's shape with its own code, the tenant's
    /// HTTP status and a Retry-After until the refill.
    #[test]
    fn quota_exceeded_answers_in_every_format() {
        use crate::domain::quota::{QuotaOwner, Window};
        use crate::service::check::QuotaRefusal;
        use crate::service::quota::Exhausted;
        let d = Decision {
            reason: Reason::QuotaExceeded,
            key: None,
            scopes: Default::default(),
            rate_limit: None,
            quota: Some(QuotaRefusal {
                exhausted: Exhausted {
                    owner: QuotaOwner::Tenant,
                    limit: 1000,
                    window: Window {
                        start: UnixMillis(0),
                        end: Some(UnixMillis(3_600_000)),
                    },
                },
                http_status: 402,
                retry_after: Some(std::time::Duration::from_millis(1500)),
            }),
            reservation_id: None,
        };
        let body: serde_json::Value =
            serde_json::from_str(&deny_body(&d, ErrorFormat::Default)).unwrap();
        assert_eq!(body["code"], "quota_exceeded");
        assert_eq!(body["message"], "Quota exceeded");
        assert_eq!(body["details"]["quota"], "tenant");
        assert_eq!(body["details"]["retry_after"], 2);
        let nesika: serde_json::Value =
            serde_json::from_str(&deny_body(&d, ErrorFormat::Nesika)).unwrap();
        assert_eq!(nesika["success"], false);
        assert_eq!(nesika["message"], "Quota exceeded");
        let settings = EnvoyConfig::default().for_route(&HashMap::new()).unwrap();
        let resp = respond(&d, &settings, &HashMap::new(), UnixMillis(0));
        let Some(
            envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(
                denied,
            ),
        ) = resp.http_response
        else {
            panic!("a denial carries a denied response");
        };
        assert_eq!(denied.status.unwrap().code, 402);
        let headers: Vec<(String, String)> = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        assert!(
            headers.contains(&("retry-after".into(), "2".into())),
            "{headers:?}"
        );
        assert!(!headers.iter().any(|(k, _)| k == "www-authenticate"));
    }
}
