//! Where the ext_authz adapter finds the key, the tenant and the scopes: listener-wide
//! defaults from config, overridable per route through Envoy's `context_extensions`.
use crate::config_section::config_section;
use crate::error::{Error, Result};
use serde::Deserialize;

/// Where a key may be presented, tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The whole value of a header (`x-api-key`, `x-nearIQ-key`). Header names are matched
    /// case-insensitively; the key itself is case-sensitive.
    Header(String),
    /// `authorization: Bearer <key>`.
    Bearer,
    /// `authorization: Basic base64(<key>:)` — the key as user name, empty password.
    Basic,
}

impl Credential {
    /// `header:<name>`, `bearer` or `basic`.
    pub fn parse(field: &str, raw: &str) -> Result<Credential> {
        match raw.trim() {
            "bearer" => Ok(Credential::Bearer),
            "basic" => Ok(Credential::Basic),
            other => match other.strip_prefix("header:") {
                Some(h)
                    if !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    Ok(Credential::Header(h.to_ascii_lowercase()))
                }
                _ => Err(Error::invalid(
                    field,
                    format!(
                        "{other:?} is not a credential source: use header:<name>, bearer or basic"
                    ),
                )),
            },
        }
    }

    /// The header the credential travels in (removed before the request goes upstream).
    pub fn header(&self) -> &str {
        match self {
            Credential::Header(h) => h,
            Credential::Bearer | Credential::Basic => "authorization",
        }
    }
}

/// Deny-body dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorFormat {
    /// `{"code":"unauthorized","message":"…","details":{…}}` (Nanonets).
    Default,
    /// `{"success":false,"data":null,"message":"…"}` (Nesika).
    Nesika,
}

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetFormat {
    /// Unix time in seconds, e.g. `1711843200` (NexaDesk).
    Epoch,
    /// Seconds from now, as in the IETF RateLimit header draft.
    Delta,
}

config_section! {
    /// The `[envoy]` config section: listener-wide defaults.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct EnvoyConfig {
        /// Credential sources in order: `header:<name>`, `bearer`, `basic`.
        pub credentials: Vec<String> = ["header:x-api-key", "bearer", "basic"],
        /// Header naming the tenant; a key of another tenant is denied.
        pub tenant_header: String = "x-tenant-id",
        /// Proxies in front of Envoy whose `x-forwarded-for` entries are trusted. 0: the
        /// connection's source address is the client; XFF is ignored.
        pub trusted_proxies: usize = 0,
        /// Deny-body dialect: `default` or `nesika`.
        pub error_format: ErrorFormat = "default",
        /// How `X-RateLimit-Reset` is written: `epoch` or `delta`.
        pub reset_format: ResetFormat = "epoch",
        /// Also send the key's metadata upstream as `x-keygate-meta-<name>` headers.
        pub forward_metadata: bool = false,
    }
}

/// The settings for one request: config defaults with the route's overrides applied.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub credentials: Vec<Credential>,
    pub tenant_header: String,
    /// A tenant fixed by the route (`keygate.tenant`); wins over the header.
    pub tenant: Option<String>,
    /// Required scopes from `keygate.scopes` (space-separated).
    pub scopes: Vec<String>,
    /// The same, parsed (once per route, not per call).
    pub required_scopes: Vec<crate::domain::Scope>,
    pub cost: u32,
    /// Units to reserve (`keygate.reserve`; 0 = spend `cost`): the upstream gets the
    /// reservation id in `x-keygate-reservation-id` and settles the real cost.
    pub reserve: u64,
    pub error_format: ErrorFormat,
    pub reset_format: ResetFormat,
    pub forward_metadata: bool,
    pub trusted_proxies: usize,
    /// The route's endpoint name for usage (`keygate.route`).
    pub route: Option<String>,
}

impl RouteSettings {
    /// A tenant header that is also a credential header would copy the key into the
    /// check's tenant id (found by fuzzing ext_authz translation): refuse the route.
    fn refuse_tenant_header_carrying_the_key(&self) -> Result<()> {
        if self
            .credentials
            .iter()
            .any(|c| c.header().eq_ignore_ascii_case(&self.tenant_header))
        {
            return Err(Error::invalid(
                "keygate.tenant_header",
                format!(
                    "{:?} is also a credential header: the key would be read as the tenant",
                    self.tenant_header
                ),
            ));
        }
        Ok(())
    }
}

/// Every `context_extensions` key Keygate reads.
pub const CONTEXT_KEYS: &[&str] = &[
    "keygate.credentials",
    "keygate.tenant",
    "keygate.tenant_header",
    "keygate.scopes",
    "keygate.cost",
    "keygate.reserve",
    "keygate.error_format",
    "keygate.reset_format",
    "keygate.forward_metadata",
    "keygate.route",
];

impl EnvoyConfig {
    pub fn validate(&self) -> Result<()> {
        self.defaults()?.refuse_tenant_header_carrying_the_key()
    }

    fn defaults(&self) -> Result<RouteSettings> {
        if self.credentials.is_empty() {
            return Err(Error::invalid(
                "envoy.credentials",
                "must name at least one source",
            ));
        }
        let credentials = self
            .credentials
            .iter()
            .enumerate()
            .map(|(i, c)| Credential::parse(&format!("envoy.credentials[{i}]"), c))
            .collect::<Result<_>>()?;
        Ok(RouteSettings {
            credentials,
            tenant_header: self.tenant_header.to_ascii_lowercase(),
            tenant: None,
            scopes: vec![],
            required_scopes: vec![],
            cost: 1,
            reserve: 0,
            error_format: self.error_format,
            reset_format: self.reset_format,
            forward_metadata: self.forward_metadata,
            trusted_proxies: self.trusted_proxies,
            route: None,
        })
    }

    /// The settings for a request whose route carries `ext` as `context_extensions`.
    /// A malformed value is an error naming the key: a misconfigured route must fail
    /// loudly rather than silently authorise with the wrong rules.
    pub fn for_route(
        &self,
        ext: &std::collections::HashMap<String, String>,
    ) -> Result<RouteSettings> {
        let mut s = self.defaults()?;
        for (k, v) in ext {
            match k.as_str() {
                "keygate.credentials" => {
                    s.credentials = v
                        .split([',', ' '])
                        .filter(|c| !c.is_empty())
                        .map(|c| Credential::parse(k, c))
                        .collect::<Result<_>>()?;
                    if s.credentials.is_empty() {
                        return Err(Error::invalid(k.as_str(), "names no credential source"));
                    }
                }
                "keygate.tenant" => s.tenant = Some(v.clone()).filter(|t| !t.is_empty()),
                "keygate.tenant_header" => s.tenant_header = v.to_ascii_lowercase(),
                "keygate.scopes" => {
                    s.scopes = v.split_whitespace().map(str::to_owned).collect();
                    s.required_scopes = s
                        .scopes
                        .iter()
                        .map(|sc| crate::domain::Scope::parse(k, sc))
                        .collect::<Result<_>>()?;
                }
                "keygate.cost" => {
                    s.cost = v
                        .parse()
                        .map_err(|_| Error::invalid(k.as_str(), "must be a whole number"))?
                }
                "keygate.reserve" => {
                    s.reserve = v
                        .parse()
                        .map_err(|_| Error::invalid(k.as_str(), "must be a whole number"))?
                }
                "keygate.error_format" => s.error_format = parse_enum(k, v)?,
                "keygate.reset_format" => s.reset_format = parse_enum(k, v)?,
                "keygate.forward_metadata" => {
                    s.forward_metadata = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(Error::invalid(k.as_str(), "must be \"true\" or \"false\""))
                        }
                    }
                }
                "keygate.route" => s.route = Some(v.clone()).filter(|r| !r.is_empty()),
                // A misspelt key of ours must not fail open (a read-only key passing a
                // write route because `keygate.scope` was ignored).
                other if other.to_ascii_lowercase().starts_with("keygate.") => {
                    return Err(Error::invalid(
                        "context_extensions",
                        format!(
                            "unknown key {:?}; Keygate's keys are {}",
                            other.chars().take(64).collect::<String>(),
                            CONTEXT_KEYS.join(", ")
                        ),
                    ));
                }
                // Other filters' keys share the map: not ours, not an error.
                _ => {}
            }
        }
        s.refuse_tenant_header_carrying_the_key()?;
        Ok(s)
    }
}

fn parse_enum<T: for<'de> Deserialize<'de>>(k: &str, v: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_owned()))
        .map_err(|_| Error::invalid(k, format!("{v:?} is not a valid value")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_misspelt_route_setting_fails_instead_of_being_ignored() {
        let cfg = EnvoyConfig::default();
        let route = |k: &str, v: &str| {
            cfg.for_route(&HashMap::from([(k.to_owned(), v.to_owned())]))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for typo in ["keygate.scope", "Keygate.Scopes", "KEYGATE.cost"] {
            let e = route(typo, "write").unwrap_err();
            assert!(e.starts_with("context_extensions: unknown key"), "{e}");
            assert!(e.contains("keygate.scopes"), "lists the known keys: {e}");
        }
        let e = route("keygate.forward_metadata", "yes").unwrap_err();
        assert!(e.starts_with("keygate.forward_metadata: must be"), "{e}");
        assert!(route("keygate.forward_metadata", "false").is_ok());
        assert!(
            route("envoy.other_filter", "x").is_ok(),
            "other filters' keys pass"
        );
        assert!(route("keygate.scopes", "read write").is_ok());
    }

    #[test]
    fn a_tenant_header_that_carries_the_key_is_refused() {
        let cfg = EnvoyConfig::default();
        for (ext, header) in [
            (
                vec![("keygate.tenant_header", "Authorization")],
                "authorization",
            ),
            (
                vec![
                    ("keygate.credentials", "header:x-api-key"),
                    ("keygate.tenant_header", "x-api-key"),
                ],
                "x-api-key",
            ),
        ] {
            let ext = ext
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let e = cfg.for_route(&ext).unwrap_err().to_string();
            assert!(
                e.starts_with("keygate.tenant_header") && e.contains(header),
                "{e}"
            );
        }
    }

    #[test]
    fn route_overrides() {
        let cfg = EnvoyConfig::default();
        let ext: HashMap<String, String> = [
            ("keygate.credentials", "header:X-NearIQ-Key"),
            ("keygate.scopes", "orders:write  products:read"),
            ("keygate.error_format", "nesika"),
            ("keygate.reset_format", "delta"),
            ("unrelated", "x"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let s = cfg.for_route(&ext).unwrap();
        assert_eq!(
            s.credentials,
            vec![Credential::Header("x-neariq-key".into())]
        );
        assert_eq!(s.scopes, vec!["orders:write", "products:read"]);
        assert_eq!(
            (s.error_format, s.reset_format),
            (ErrorFormat::Nesika, ResetFormat::Delta)
        );
        let bad: HashMap<String, String> =
            [("keygate.error_format".to_string(), "xml".to_string())].into();
        assert!(cfg
            .for_route(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("keygate.error_format:"));
        assert!(Credential::parse("c", "cookie").is_err());
    }
}
