//! What tests send: builders for keys and checks, rate limits, quotas, and the policies of
//! the seed tenants more than one test sets up. Everything a builder does not set is the
//! proto default.
use envoy_types::pb::envoy::service::auth::v3 as ext;
use keygate::grpc::pb::{self, create_key_request::Expiry};

pub fn secs(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n,
        nanos: 0,
    }
}

pub fn days(n: i64) -> prost_types::Duration {
    secs(n * 86_400)
}

/// A rate limit of `n` per `window_secs` seconds.
pub fn limit(name: &str, n: u64, window_secs: i64) -> pb::RateLimit {
    pb::RateLimit {
        name: name.into(),
        limit: n,
        window: Some(secs(window_secs)),
    }
}

/// A quota of `limit` per `period`, refilled at the period's calendar boundary.
pub fn quota(limit: u64, period: pb::QuotaPeriod) -> pb::Quota {
    pb::Quota {
        limit,
        period: period as i32,
        refill_anchor: None,
    }
}

fn strings(items: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    items.into_iter().map(|s| s.to_string()).collect()
}

/// A CreateKey request for a key of `tenant_id` named "k"; the tenant's defaults for the rest.
pub fn new_key(tenant_id: &str) -> KeySpec {
    KeySpec(pb::CreateKeyRequest {
        tenant_id: tenant_id.into(),
        name: "k".into(),
        ..Default::default()
    })
}

/// A CreateKey request being built; see `new_key`.
#[derive(Clone, Debug)]
pub struct KeySpec(pb::CreateKeyRequest);

impl KeySpec {
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.0.name = name.into();
        self
    }

    pub fn environment(mut self, environment: &str) -> Self {
        self.0.environment = environment.into();
        self
    }

    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl ToString>) -> Self {
        self.0.scopes = strings(scopes);
        self
    }

    pub fn ip_allowlist(mut self, entries: impl IntoIterator<Item = impl ToString>) -> Self {
        self.0.ip_allowlist = strings(entries);
        self
    }

    pub fn metadata<'a>(mut self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.0.metadata = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self
    }

    pub fn rate_limits(mut self, limits: impl IntoIterator<Item = pb::RateLimit>) -> Self {
        self.0.rate_limits = limits.into_iter().collect();
        self
    }

    pub fn quota(mut self, quota: pb::Quota) -> Self {
        self.0.quota = Some(quota);
        self
    }

    pub fn expires_in(self, d: prost_types::Duration) -> Self {
        self.expiry(Expiry::ExpiresIn(d))
    }

    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.0.expiry = Some(expiry);
        self
    }

    pub fn build(self) -> pb::CreateKeyRequest {
        self.0
    }
}

impl From<KeySpec> for pb::CreateKeyRequest {
    fn from(k: KeySpec) -> Self {
        k.0
    }
}

/// A Check presenting `api_key`, requiring nothing else.
pub fn check(api_key: &str) -> CheckSpec {
    CheckSpec(pb::CheckRequest {
        api_key: api_key.into(),
        ..Default::default()
    })
}

/// A Check request being built; see `check`.
#[derive(Clone, Debug)]
pub struct CheckSpec(pb::CheckRequest);

impl CheckSpec {
    /// The tenant the route belongs to (`tenant_id`).
    pub fn tenant(mut self, tenant_id: &str) -> Self {
        self.0.tenant_id = tenant_id.into();
        self
    }

    /// The caller's address (`client_ip`).
    pub fn ip(mut self, client_ip: &str) -> Self {
        self.0.client_ip = client_ip.into();
        self
    }

    /// The scopes the route needs (`required_scopes`).
    pub fn requires(mut self, scopes: impl IntoIterator<Item = impl ToString>) -> Self {
        self.0.required_scopes = strings(scopes);
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.0.method = method.into();
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.0.path = path.into();
        self
    }

    pub fn cost(mut self, cost: u32) -> Self {
        self.0.cost = cost;
        self
    }

    /// Reserve `units` instead of spending the cost (settled later with `Settle`).
    pub fn reserve(mut self, units: u64) -> Self {
        self.0.reserve = units;
        self
    }

    /// Decide without spending or counting anything.
    pub fn dry_run(mut self) -> Self {
        self.0.dry_run = true;
        self
    }
}

impl From<CheckSpec> for pb::CheckRequest {
    fn from(c: CheckSpec) -> Self {
        c.0
    }
}

/// An Envoy ext_authz check of `GET /x` carrying `headers`.
pub fn ext_authz(headers: &[(&str, &str)]) -> ext::CheckRequest {
    let headers = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    ext::CheckRequest {
        attributes: Some(ext::AttributeContext {
            request: Some(ext::attribute_context::Request {
                http: Some(ext::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/x".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Nesika: `nes_` keys that must expire (30 to 365 days), ten at most, 100 per minute.
pub fn nesika_policy() -> pb::TenantPolicy {
    pb::TenantPolicy {
        key_prefix: "nes_".into(),
        max_active_keys: 10,
        allowed_expiries: Some(pb::ExpiryPolicy {
            durations: [30, 60, 90, 180, 365].map(days).to_vec(),
            allow_never: false,
        }),
        default_rate_limits: vec![limit("per-minute", 100, 60)],
        ..Default::default()
    }
}

/// NearIQ: `niq_live_` keys, read-only scopes unless a key is given more.
pub fn neariq_policy() -> pb::TenantPolicy {
    pb::TenantPolicy {
        key_prefix: "niq_".into(),
        environments: vec!["live".into()],
        scope_catalogue: strings([
            "competitors:read",
            "alerts:read",
            "usage:read",
            "export",
            "webhooks:manage",
        ]),
        default_scopes: strings(["competitors:read", "alerts:read", "usage:read"]),
        ..Default::default()
    }
}
