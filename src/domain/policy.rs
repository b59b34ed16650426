//! A tenant's key policy and the rules it imposes when a key is created.
use super::quota::{self, QuotaSpec};
use super::{key, scope::ScopeSet, time::UnixMillis};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const DEFAULT_KEY_PREFIX: &str = "kg_";
pub const MAX_RATE_LIMITS: usize = 8;
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);
/// Longest allowed key lifetime: ten years.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// A named sliding-window limit: at most `limit` units of cost per `window`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimitSpec {
    pub name: String,
    pub limit: u64,
    #[serde(with = "secs")]
    pub window: Duration,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl RateLimitSpec {
    pub fn validate(&self, field: &str) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !name_ok {
            return Err(Error::invalid(
                format!("{field}.name"),
                "must be 1-64 characters of letters, digits, '-', '_', '.', ':'",
            ));
        }
        if self.limit == 0 {
            return Err(Error::invalid(
                format!("{field}.limit"),
                "must be at least 1",
            ));
        }
        if self.window < Duration::from_secs(1)
            || self.window > MAX_WINDOW
            || self.window.subsec_nanos() != 0
        {
            return Err(Error::invalid(
                format!("{field}.window"),
                "must be whole seconds from 1s to 31 days",
            ));
        }
        Ok(())
    }
}

/// The default and shared limit lists of a tenant policy or a plan, named under `field`.
fn validate_limit_sets(
    field: &str,
    default: &[RateLimitSpec],
    shared: &[RateLimitSpec],
) -> Result<()> {
    validate_rate_limits(&format!("{field}.default_rate_limits"), default)?;
    validate_rate_limits(&format!("{field}.shared_rate_limits"), shared)
}

/// Validates a list of limits: each well-formed, names unique, at most eight.
pub fn validate_rate_limits(field: &str, limits: &[RateLimitSpec]) -> Result<()> {
    if limits.len() > MAX_RATE_LIMITS {
        return Err(Error::invalid(
            field,
            format!(
                "has {} limits; at most {MAX_RATE_LIMITS} are allowed",
                limits.len()
            ),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        l.validate(&format!("{field}[{i}]"))?;
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(Error::invalid(
                format!("{field}[{i}].name"),
                format!("{:?} is used twice", l.name),
            ));
        }
    }
    Ok(())
}

/// Which expiries a new key may have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryPolicy {
    /// Exact lifetimes allowed for `expires_in`; empty = any lifetime.
    #[serde(with = "secs_list")]
    pub durations: Vec<Duration>,
    pub allow_never: bool,
}

mod secs_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(d.iter().map(Duration::as_secs))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<u64>::deserialize(d).map(|v| v.into_iter().map(Duration::from_secs).collect())
    }
}

/// How the creator of a key asked for it to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryRequest {
    /// Nothing said: never, if the tenant allows it.
    Unspecified,
    In(Duration),
    At(UnixMillis),
    Never,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{s}s")
    }
}

/// A tenant's rules for its keys. Serialised as JSON in the tenant's row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantPolicy {
    /// `nxc_`; empty means [`DEFAULT_KEY_PREFIX`].
    pub key_prefix: String,
    pub environments: Vec<String>,
    /// 0 = no cap.
    pub max_active_keys: u32,
    /// `None` = any expiry, or none.
    pub allowed_expiries: Option<ExpiryPolicy>,
    #[serde(with = "scope_strings")]
    pub scope_catalogue: ScopeSet,
    #[serde(with = "scope_strings")]
    pub default_scopes: ScopeSet,
    pub default_rate_limits: Vec<RateLimitSpec>,
    pub scopes_from_method: bool,
    /// Limits every key of the tenant spends together (a plan's account-wide budget),
    /// checked with the key's own limits in one atomic step.
    pub shared_rate_limits: Vec<RateLimitSpec>,
    /// The plan the tenant is on; empty = none. See [`TenantPolicy::under_plan`].
    pub plan_id: String,
    /// A budget every key of the tenant spends together.
    pub quota: Option<QuotaSpec>,
    /// The quota of a key created without one of its own.
    pub default_key_quota: Option<QuotaSpec>,
    /// IANA name of the zone quota periods follow; empty = UTC.
    pub time_zone: String,
    /// HTTP status of a `QUOTA_EXCEEDED` denial: 429 (default, also for 0), 402 or 403.
    pub quota_exceeded_status: u16,
    /// What a leak report of one of the tenant's keys does (revoke by default).
    pub on_leak: super::leak::LeakAction,
    /// Units a settled reservation may charge beyond what remains of a quota or limit
    /// (0: the excess is recorded as overage, never charged past the limit).
    pub max_overdraft: u64,
    /// How long a reservation waits for `Settle` before it settles at the reserved amount;
    /// zero = [`super::reservation::DEFAULT_TTL`].
    #[serde(with = "secs")]
    pub reservation_ttl: Duration,
    /// `quota.threshold` is sent once per period when this many thousandths of a quota
    /// are used; 0 = [`DEFAULT_QUOTA_ALERT_PERMILLE`].
    pub quota_alert_permille: u32,
}

/// 80 %: the `quota.threshold` alert of a tenant that sets none.
pub const DEFAULT_QUOTA_ALERT_PERMILLE: u32 = 800;

impl TenantPolicy {
    /// The fraction of a quota at which `quota.threshold` is sent.
    pub fn quota_alert(&self) -> u32 {
        match self.quota_alert_permille {
            0 => DEFAULT_QUOTA_ALERT_PERMILLE,
            n => n.min(1000),
        }
    }
}

/// Statuses a tenant may choose for an exhausted quota.
pub const QUOTA_STATUSES: [u16; 3] = [429, 402, 403];

/// The quota fields of a tenant policy or a plan, named under `field`.
fn validate_quotas(
    field: &str,
    quota: Option<&QuotaSpec>,
    default_key_quota: Option<&QuotaSpec>,
) -> Result<()> {
    if let Some(q) = quota {
        q.validate(&format!("{field}.quota"))?;
    }
    if let Some(q) = default_key_quota {
        q.validate(&format!("{field}.default_key_quota"))?;
    }
    Ok(())
}

/// What a plan template sets for every tenant on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanLimits {
    /// Per-key limits of keys with none of their own, when the tenant sets none either.
    pub default_rate_limits: Vec<RateLimitSpec>,
    /// Limits each tenant on the plan spends with all its keys (added to the tenant's own).
    pub shared_rate_limits: Vec<RateLimitSpec>,
    /// The scope ceiling: at check time, the catalogue keys' scopes are limited to.
    /// Empty = the tenant's own catalogue.
    #[serde(with = "scope_strings")]
    pub scope_catalogue: ScopeSet,
    /// The tenant-wide quota of tenants on the plan that set none.
    pub quota: Option<QuotaSpec>,
    /// The quota of keys with none of their own, when the tenant sets no default either.
    pub default_key_quota: Option<QuotaSpec>,
}

impl PlanLimits {
    pub fn validate(&self, field: &str) -> Result<()> {
        validate_limit_sets(field, &self.default_rate_limits, &self.shared_rate_limits)?;
        validate_quotas(field, self.quota.as_ref(), self.default_key_quota.as_ref())
    }
}

mod scope_strings {
    use crate::domain::scope::ScopeSet;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &ScopeSet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.as_str()))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ScopeSet, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        ScopeSet::parse("scopes", &raw).map_err(D::Error::custom)
    }
}

impl TenantPolicy {
    /// The policy a check applies to a tenant on `plan`: the plan's scope ceiling (when it
    /// has one), the tenant's default limits or else the plan's, and both sets of shared
    /// limits (tenant's first; names must differ to be told apart in a refusal).
    pub fn under_plan(&self, plan: &PlanLimits) -> TenantPolicy {
        let mut p = self.clone();
        if !plan.scope_catalogue.is_empty() {
            p.scope_catalogue = plan.scope_catalogue.clone();
        }
        if p.default_rate_limits.is_empty() {
            p.default_rate_limits = plan.default_rate_limits.clone();
        }
        p.shared_rate_limits
            .extend(plan.shared_rate_limits.iter().cloned());
        p.quota = p.quota.or(plan.quota);
        p.default_key_quota = p.default_key_quota.or(plan.default_key_quota);
        p
    }

    /// The quota a key spends: its own, else the tenant's default for keys.
    pub fn key_quota<'a>(&'a self, own: Option<&'a QuotaSpec>) -> Option<&'a QuotaSpec> {
        own.or(self.default_key_quota.as_ref())
    }

    /// The HTTP status of an exhausted quota.
    pub fn quota_status(&self) -> u16 {
        if self.quota_exceeded_status == 0 {
            429
        } else {
            self.quota_exceeded_status
        }
    }

    /// How long a reservation of this tenant's keys waits for `Settle`.
    pub fn reservation_ttl(&self) -> Duration {
        if self.reservation_ttl.is_zero() {
            super::reservation::DEFAULT_TTL
        } else {
            self.reservation_ttl
        }
    }

    /// The prefix keys actually get.
    pub fn effective_prefix(&self) -> &str {
        if self.key_prefix.is_empty() {
            DEFAULT_KEY_PREFIX
        } else {
            &self.key_prefix
        }
    }

    /// Checks the policy is coherent. `field` is the policy's wire path (`tenant.policy`).
    pub fn validate(&self, field: &str) -> Result<()> {
        if !self.key_prefix.is_empty() {
            key::validate_key_prefix(&format!("{field}.key_prefix"), &self.key_prefix)?;
        }
        if self.environments.len() > 16 {
            return Err(Error::invalid(
                format!("{field}.environments"),
                "at most 16 environments are allowed",
            ));
        }
        for (i, env) in self.environments.iter().enumerate() {
            let f = format!("{field}.environments[{i}]");
            key::validate_environment(&f, env)?;
            if self.environments[..i].contains(env) {
                return Err(Error::invalid(f, format!("{env:?} is listed twice")));
            }
        }
        if let Some(exp) = &self.allowed_expiries {
            if exp.durations.len() > 32 {
                return Err(Error::invalid(
                    format!("{field}.allowed_expiries.durations"),
                    "at most 32 are allowed",
                ));
            }
            for (i, d) in exp.durations.iter().enumerate() {
                if d.is_zero() || *d > MAX_LIFETIME || d.subsec_nanos() != 0 {
                    return Err(Error::invalid(
                        format!("{field}.allowed_expiries.durations[{i}]"),
                        "must be whole seconds, more than 0 and at most 10 years",
                    ));
                }
            }
        }
        if let Some(s) = self.default_scopes.first_outside(&self.scope_catalogue) {
            return Err(Error::invalid(
                format!("{field}.default_scopes"),
                format!("{s} is not in the tenant's scope_catalogue"),
            ));
        }
        validate_limit_sets(field, &self.default_rate_limits, &self.shared_rate_limits)?;
        validate_quotas(field, self.quota.as_ref(), self.default_key_quota.as_ref())?;
        quota::time_zone(&format!("{field}.time_zone"), &self.time_zone)?;
        super::reservation::validate_ttl(
            &format!("{field}.reservation_ttl"),
            self.reservation_ttl,
        )?;
        if self.quota_exceeded_status != 0 && !QUOTA_STATUSES.contains(&self.quota_exceeded_status)
        {
            return Err(Error::invalid(
                format!("{field}.quota_exceeded_status"),
                "must be 429 (the default), 402 or 403",
            ));
        }
        Ok(())
    }

    /// The environment a new key gets, checked against the tenant's list.
    pub fn check_environment(&self, env: &str) -> Result<()> {
        if self.environments.is_empty() {
            if !env.is_empty() {
                return Err(Error::invalid(
                    "environment",
                    "this tenant's keys have no environment; leave it empty",
                ));
            }
            return Ok(());
        }
        if env.is_empty() {
            return Err(Error::invalid(
                "environment",
                format!("is required: one of {}", self.environments.join(", ")),
            ));
        }
        if !self.environments.iter().any(|e| e == env) {
            return Err(Error::precondition(
                "tenant.policy.environments",
                format!(
                    "environment {env:?} is not one of {}",
                    self.environments.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The scopes a new key gets: its own (each within the catalogue) or the defaults.
    pub fn scopes_for_new_key(&self, requested: ScopeSet) -> Result<ScopeSet> {
        if requested.is_empty() {
            return Ok(self.default_scopes.clone());
        }
        if let Some(s) = requested.first_outside(&self.scope_catalogue) {
            return Err(Error::precondition(
                "tenant.policy.scope_catalogue",
                format!("scope {s} is not in the tenant's scope catalogue"),
            ));
        }
        Ok(requested)
    }

    /// Resolves a requested expiry to an absolute time (`None` = never), enforcing the
    /// tenant's allowed expiries.
    pub fn resolve_expiry(
        &self,
        req: ExpiryRequest,
        now: UnixMillis,
    ) -> Result<Option<UnixMillis>> {
        const RULE: &str = "tenant.policy.allowed_expiries";
        let any = ExpiryPolicy {
            durations: vec![],
            allow_never: true,
        };
        let policy = self.allowed_expiries.as_ref().unwrap_or(&any);
        let options = || {
            let mut o: Vec<String> = policy.durations.iter().map(|d| human(*d)).collect();
            if policy.allow_never {
                o.push("never".into());
            }
            o.join(", ")
        };
        match req {
            ExpiryRequest::Unspecified | ExpiryRequest::Never => {
                if policy.allow_never {
                    Ok(None)
                } else {
                    Err(Error::precondition(
                        RULE,
                        format!(
                            "this tenant's keys must expire; choose one of: {}",
                            options()
                        ),
                    ))
                }
            }
            ExpiryRequest::In(d) => {
                if d.is_zero() || d > MAX_LIFETIME {
                    return Err(Error::invalid(
                        "expires_in",
                        "must be more than 0 and at most 10 years",
                    ));
                }
                if !policy.durations.is_empty() && !policy.durations.contains(&d) {
                    return Err(Error::precondition(
                        RULE,
                        format!(
                            "expires_in {} is not offered; choose one of: {}",
                            human(d),
                            options()
                        ),
                    ));
                }
                Ok(Some(now.plus(d)))
            }
            ExpiryRequest::At(t) => {
                if t <= now {
                    return Err(Error::invalid("expire_time", "must be in the future"));
                }
                let longest = policy
                    .durations
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or(MAX_LIFETIME);
                if now.until(t) > longest {
                    return Err(Error::precondition(
                        RULE,
                        format!(
                            "expire_time is further away than the longest lifetime offered ({})",
                            human(longest)
                        ),
                    ));
                }
                Ok(Some(t))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const DAY: u64 = 86_400;

    fn nesika() -> TenantPolicy {
        TenantPolicy {
            key_prefix: "nes_".into(),
            max_active_keys: 10,
            allowed_expiries: Some(ExpiryPolicy {
                durations: [30, 60, 90, 180, 365]
                    .iter()
                    .map(|d| Duration::from_secs(d * DAY))
                    .collect(),
                allow_never: false,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn expiry_rules() {
        let p = nesika();
        let now = UnixMillis(1_000_000);
        assert_eq!(
            p.resolve_expiry(ExpiryRequest::In(Duration::from_secs(30 * DAY)), now)
                .unwrap(),
            Some(now.plus(Duration::from_secs(30 * DAY)))
        );
        let e = p
            .resolve_expiry(ExpiryRequest::In(Duration::from_secs(31 * DAY)), now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("allowed_expiries") && e.contains("30d, 60d"),
            "{e}"
        );
        assert!(p.resolve_expiry(ExpiryRequest::Never, now).is_err());
        assert!(p.resolve_expiry(ExpiryRequest::Unspecified, now).is_err());
        assert!(p
            .resolve_expiry(
                ExpiryRequest::At(now.plus(Duration::from_secs(366 * DAY))),
                now
            )
            .is_err());
        assert!(p
            .resolve_expiry(
                ExpiryRequest::At(now.plus(Duration::from_secs(300 * DAY))),
                now
            )
            .is_ok());
        assert!(p.resolve_expiry(ExpiryRequest::At(now), now).is_err());
        assert_eq!(
            TenantPolicy::default()
                .resolve_expiry(ExpiryRequest::Unspecified, now)
                .unwrap(),
            None
        );
    }

    #[test]
    fn policy_json_round_trips() {
        let mut p = nesika();
        p.scope_catalogue = ScopeSet::parse("c", &["read", "write"]).unwrap();
        p.default_scopes = ScopeSet::parse("d", &["read"]).unwrap();
        p.default_rate_limits = vec![RateLimitSpec {
            name: "per-minute".into(),
            limit: 100,
            window: Duration::from_secs(60),
        }];
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<TenantPolicy>(&json).unwrap(), p);
    }

    #[test]
    fn validation_names_fields() {
        let mut p = TenantPolicy {
            scope_catalogue: ScopeSet::parse("c", &["read"]).unwrap(),
            ..Default::default()
        };
        p.default_scopes = ScopeSet::parse("d", &["write"]).unwrap();
        assert!(p
            .validate("tenant.policy")
            .unwrap_err()
            .to_string()
            .starts_with("tenant.policy.default_scopes"));
        let p = TenantPolicy {
            environments: vec!["live".into(), "live".into()],
            ..Default::default()
        };
        assert!(p
            .validate("tenant.policy")
            .unwrap_err()
            .to_string()
            .starts_with("tenant.policy.environments[1]"));
        let bad = vec![RateLimitSpec {
            name: "a".into(),
            limit: 0,
            window: Duration::from_secs(60),
        }];
        assert!(validate_rate_limits("rate_limits", &bad)
            .unwrap_err()
            .to_string()
            .starts_with("rate_limits[0].limit"));
    }
}
