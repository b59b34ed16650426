//! The one decision procedure. `keygate.v1.Authorize/Check` and Envoy's ext_authz both
//! call [`CheckService::check`]; neither decides anything itself.
//!
//! Order (first failure wins): credential → format → key exists → revoked / disabled /
//! expired → tenant → IP → scope → quota → rate limit.
use super::guessing::GuessThrottle;
use super::quota::{Exhausted, QuotaLedger, QuotaUse};
use super::usage::{UsageRecorder, Use};
use crate::cache::{self, KeyCache, Loaded, Resolved};
use crate::domain::quota::QuotaOwner;
pub use crate::domain::reason::Reason;
use crate::domain::{CachedKey, Clock, KeyRecord, Scope, ScopeSet, Tenant};
use crate::error::{Error, Result};
use crate::hashing::SecretHasher;
use crate::limiter::{LimitScope, LimitStatus, RateLimiter};
use crate::store::{KeyStore, TenantStore};
use secrecy::SecretString;
use std::net::IpAddr;
use std::sync::Arc;
use tracing::Instrument;

/// What a caller asks. Its `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct CheckInput {
    /// The key as presented. Held only for the duration of the check; never logged.
    pub api_key: String,
    pub tenant_id: Option<String>,
    pub required_scopes: Vec<Scope>,
    /// `None` = unknown: a key with an IP allowlist is then denied.
    pub client_ip: Option<IpAddr>,
    /// The address failed checks are counted against: one the caller cannot choose (the
    /// connection's peer, or `client_ip` when a trusted caller vouches for it). `None`
    /// counts in one shared bucket, so leaving it out does not escape the throttle.
    pub guess_source: Option<IpAddr>,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The endpoint's name in the route table, when the caller knows it (usage).
    pub route: Option<String>,
    /// At least 1.
    pub cost: u64,
    pub dry_run: bool,
    /// Units to reserve instead of spending `cost` (0 = none; never with `dry_run`): an
    /// ALLOW then carries a reservation id for `Settle`.
    pub reserve: u64,
}

impl std::fmt::Debug for CheckInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckInput")
            .field(
                "api_key",
                &format_args!("<{} bytes, redacted>", self.api_key.len()),
            )
            .field("tenant_id", &self.tenant_id)
            .field("required_scopes", &self.required_scopes)
            .field("client_ip", &self.client_ip)
            .field("guess_source", &self.guess_source)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("route", &self.route)
            .field("cost", &self.cost)
            .field("dry_run", &self.dry_run)
            .field("reserve", &self.reserve)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    #[test]
    fn a_check_input_never_prints_its_key() {
        let input = super::CheckInput {
            api_key: "kg_secretsecretsecret".into(),
            ..Default::default()
        };
        let shown = format!("{input:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}

/// The answer. A denial is data, not an error.
#[derive(Debug, Clone)]
pub struct Decision {
    pub reason: Reason,
    /// Set once the key was identified (even when later denied); shared with the cache.
    pub key: Option<Arc<Loaded<CachedKey>>>,
    /// The key's effective scopes under its tenant's current catalogue.
    pub scopes: ScopeSet,
    pub rate_limit: Option<LimitStatus>,
    /// Set when `QUOTA_EXCEEDED`: the quota that refused.
    pub quota: Option<QuotaRefusal>,
    /// Set on an ALLOW that reserved: the id `Settle` takes.
    pub reservation_id: Option<String>,
}

/// An exhausted quota, as a denial reports it.
#[derive(Debug, Clone, Copy)]
pub struct QuotaRefusal {
    pub exhausted: Exhausted,
    /// The tenant's choice: 429, 402 or 403.
    pub http_status: u16,
    /// Until the period refills; `None` for prepaid credits.
    pub retry_after: Option<std::time::Duration>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Ok
    }

    /// What a gateway should answer: the reason's status, or the tenant's choice for an
    /// exhausted quota.
    pub fn http_status(&self) -> u16 {
        match (&self.quota, self.reason) {
            (Some(q), Reason::QuotaExceeded) => q.http_status,
            _ => self.reason.http_status(),
        }
    }

    fn deny(reason: Reason) -> Self {
        Decision {
            reason,
            key: None,
            scopes: ScopeSet::default(),
            rate_limit: None,
            quota: None,
            reservation_id: None,
        }
    }
}

/// Scopes implied by an HTTP method when the tenant turns on `scopes_from_method`.
/// Safe methods need `read`; anything else (including unknown methods) needs `write`.
fn method_scope(method: &str) -> Scope {
    let word = match method.to_ascii_uppercase().as_str() {
        "GET" | "HEAD" | "OPTIONS" => "read",
        _ => "write",
    };
    Scope::parse("method", word).unwrap_or_else(|_| unreachable!("literal scopes parse"))
}

/// The key whose secret `presented` is: one indexed lookup by `lookup_id`, then one
/// argon2 verify, against a dummy hash when the id is unknown (so timing tells a made-up
/// id from a wrong secret no better than the answer does), and the stored printable start
/// must be `head`. Checks (on a cache miss) and leak reports share it.
pub(crate) async fn lookup_and_verify(
    keys: &dyn KeyStore,
    hasher: &SecretHasher,
    lookup_id: &str,
    head: &str,
    presented: SecretString,
) -> Result<Option<KeyRecord>> {
    let (record, hash) = match keys.find_by_lookup_id(lookup_id).await? {
        Some((r, h)) => (Some(r), Some(h)),
        None => (None, None),
    };
    let verified = hasher.verify(presented, hash).await?;
    Ok(record.filter(|r| verified && r.key_prefix == head))
}

/// What the decision procedure works with (wired by `app`; nothing outside the crate
/// reaches inside).
pub struct CheckService {
    /// The hot path's lookup of a key by its lookup id.
    pub(crate) keys: Arc<dyn KeyStore>,
    /// A key's tenant and its plan, on a tenant cache miss.
    pub(crate) tenants: Arc<dyn TenantStore>,
    pub(crate) hasher: SecretHasher,
    pub(crate) cache: Arc<KeyCache>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Where every decided check is counted.
    pub(crate) usage: Arc<UsageRecorder>,
    /// Failed checks per client IP (key guessing).
    pub(crate) guesses: Arc<GuessThrottle>,
    /// Prefixes of keys imported from other systems.
    pub(crate) imports: Arc<super::imports::ImportRegistry>,
    /// This replica's quota leases.
    pub(crate) quotas: Arc<QuotaLedger>,
    /// Where reserving checks record what they held.
    pub(crate) reservations: Arc<super::reservations::Reservations>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Runtime events: a limit exceeded (quota events come from the ledger).
    pub(crate) events: Arc<super::events::Emitter>,
}

impl CheckService {
    /// The service's clock (tests inject one).
    pub fn now(&self) -> crate::domain::UnixMillis {
        self.clock.now()
    }

    /// [`check`](Self::check), plus what every entry point records: metrics by source,
    /// and the key id, tenant and reason on the current span (never the key).
    pub async fn check_recorded(
        &self,
        source: crate::metrics::Source,
        input: &CheckInput,
    ) -> Result<Decision> {
        let started = std::time::Instant::now();
        match self.check(input).await {
            Ok(d) => {
                self.metrics.check(
                    source,
                    d.allowed(),
                    d.reason.code(),
                    d.key.as_ref().map(|k| &*k.tenant_id),
                    started.elapsed(),
                );
                let span = tracing::Span::current();
                if let Some(k) = &d.key {
                    span.record("key_id", &*k.id);
                    span.record("tenant_id", &*k.tenant_id);
                }
                span.record("reason", d.reason.code());
                span.record("decision", if d.allowed() { "ALLOW" } else { "DENY" });
                Ok(d)
            }
            Err(e) => {
                self.metrics.check_error(source, &e);
                Err(e)
            }
        }
    }

    /// Settles a reservation made by an earlier check (see `reservations`).
    pub async fn settle(
        &self,
        reservation_id: &str,
        actual: u64,
    ) -> Result<crate::domain::reservation::Reservation> {
        self.reservations.settle(reservation_id, actual).await
    }

    /// Decides one call. Errors only when Keygate cannot decide (store unreachable:
    /// `Unavailable`, so gateways apply their failure mode).
    pub async fn check(&self, input: &CheckInput) -> Result<Decision> {
        if input.api_key.is_empty() {
            return Ok(Decision::deny(Reason::MissingCredential));
        }
        let now = self.clock.now();
        // Keygate's own format, else a key imported by its hash from another system.
        let Some((lookup_id, head)) = self.imports.locate(&input.api_key) else {
            self.guesses.failed(input.guess_source, None, now);
            return Ok(Decision::deny(Reason::MalformedKey));
        };
        // A source that keeps failing gets a verify only for keys already verified in the
        // cache, or lookup ids that exist and have not failed from there (guessing.rs).
        if let Some(status) = self.guesses.throttled(input.guess_source, now) {
            if !self.cache.holds_key(&cache::digest(&input.api_key))
                && !self
                    .may_try_throttled(input.guess_source, &lookup_id, now)
                    .await?
            {
                self.guesses.refused();
                return Ok(Decision {
                    rate_limit: Some(status),
                    ..Decision::deny(Reason::RateLimited)
                });
            }
        }
        let key = match self.resolve(&input.api_key, &lookup_id, &head).await? {
            Resolved::Key(k) => k,
            Resolved::Unknown => {
                self.guesses
                    .failed(input.guess_source, Some(&lookup_id), now);
                return Ok(Decision::deny(Reason::KeyNotFound));
            }
        };
        let record = &key.value;
        let tenant = self.tenant(&record.tenant_id).await?;
        let policy = &tenant.policy;
        let scopes = record.scopes.limited_to(&policy.scope_catalogue);
        let limits: &[_] = if record.rate_limits.is_empty() {
            &policy.default_rate_limits
        } else {
            &record.rate_limits
        };
        let mut decision = Decision {
            reason: Reason::Ok,
            key: Some(key.clone()),
            scopes,
            rate_limit: None,
            quota: None,
            reservation_id: None,
        };
        // What the call spends: the reserved units, else its cost.
        let units = if input.reserve > 0 {
            input.reserve
        } else {
            input.cost.max(1)
        };
        // The quotas it spends (none for most keys, without allocating), worked out once
        // for the spend, a refund and a reservation alike.
        let quotas = Self::quota_uses(record, policy);

        let reason = if record.is_revoked(now) {
            Reason::KeyRevoked
        } else if !record.enabled {
            Reason::KeyDisabled
        } else if record.is_expired(now) {
            Reason::KeyExpired
        } else if input
            .tenant_id
            .as_deref()
            .is_some_and(|t| t != &*record.tenant_id)
        {
            Reason::TenantMismatch
        } else if !record.admits_ip(input.client_ip) {
            Reason::IpNotAllowed
        } else if !self.scopes_suffice(input, policy.scopes_from_method, &decision.scopes) {
            Reason::InsufficientScope
        } else if let Some(refusal) = self
            .spend_quotas(&quotas, policy, units, input.dry_run, now)
            .await?
        {
            decision.quota = Some(refusal);
            Reason::QuotaExceeded
        } else {
            // The key's own limits and its tenant's shared ones, in one atomic step.
            // No allocation unless the tenant has shared limits.
            let shared = !policy.shared_rate_limits.is_empty();
            let shared_bucket = if shared {
                format!("tenant:{}", record.tenant_id)
            } else {
                String::new()
            };
            let scopes = [
                LimitScope {
                    bucket: &record.id,
                    limits,
                },
                LimitScope {
                    bucket: &shared_bucket,
                    limits: &policy.shared_rate_limits,
                },
            ];
            let outcome = self
                .limiter
                .check_scopes(
                    &record.tenant_id,
                    &scopes[..1 + usize::from(shared)],
                    units,
                    now,
                    input.dry_run,
                )
                .instrument(crate::child_span!("limiter.check"))
                .await?;
            decision.rate_limit = outcome.status;
            if outcome.allowed {
                if input.reserve > 0 && !input.dry_run {
                    let spent = super::reservations::Spent {
                        limiter_fallback: outcome.fallback,
                        key: record,
                        policy,
                        limits: &scopes[..1 + usize::from(shared)],
                        quotas: &quotas,
                        units,
                    };
                    decision.reservation_id = Some(self.reservations.record(spent, now).await?);
                }
                Reason::Ok
            } else {
                // Refused after the quotas were spent: they get the units back.
                if !input.dry_run && !quotas.is_empty() {
                    self.quotas.refund(&quotas, units, now).await;
                }
                if let (false, Some(s)) = (input.dry_run, &decision.rate_limit) {
                    let spec = limits
                        .iter()
                        .chain(&policy.shared_rate_limits)
                        .find(|l| l.name == s.name);
                    if let Some(spec) = spec {
                        self.events.rate_limited(
                            &record.tenant_id,
                            &record.id,
                            &s.name,
                            s.limit,
                            spec.window.as_millis() as u64,
                            now,
                        );
                    }
                }
                Reason::RateLimited
            }
        };
        decision.reason = reason;
        if !input.dry_run {
            self.usage.record(&Use {
                key_id: &record.id,
                tenant_id: &record.tenant_id,
                at: now,
                endpoint: self.usage.routes().endpoint(
                    input.method.as_deref(),
                    input.path.as_deref(),
                    input.route.as_deref(),
                ),
                reason,
                cost: if reason == Reason::Ok { units } else { 0 },
            });
        }
        Ok(decision)
    }

    /// The quotas a call of `record` spends: the key's (its own, else the tenant's default
    /// for keys) and the tenant's. Empty for most keys, without allocating.
    fn quota_uses<'a>(
        record: &'a CachedKey,
        policy: &'a crate::domain::TenantPolicy,
    ) -> Vec<QuotaUse<'a>> {
        let key = policy.key_quota(record.quota.as_deref());
        if key.is_none() && policy.quota.is_none() {
            return Vec::new();
        }
        let mut uses = Vec::with_capacity(2);
        if let Some(spec) = key {
            uses.push(QuotaUse {
                owner: QuotaOwner::Key,
                id: &record.id,
                spec,
                time_zone: &policy.time_zone,
                tenant_id: &record.tenant_id,
                alert_permille: policy.quota_alert(),
            });
        }
        if let Some(spec) = &policy.quota {
            uses.push(QuotaUse {
                owner: QuotaOwner::Tenant,
                id: &record.tenant_id,
                spec,
                time_zone: &policy.time_zone,
                tenant_id: &record.tenant_id,
                alert_permille: policy.quota_alert(),
            });
        }
        uses
    }

    /// Spends `cost` on the call's quotas, all or none; the refusal if one had no room.
    async fn spend_quotas(
        &self,
        uses: &[QuotaUse<'_>],
        policy: &crate::domain::TenantPolicy,
        cost: u64,
        dry_run: bool,
        now: crate::domain::UnixMillis,
    ) -> Result<Option<QuotaRefusal>> {
        if uses.is_empty() {
            return Ok(None);
        }
        let refused = self
            .quotas
            .spend(uses, cost, dry_run, now)
            .instrument(crate::child_span!("quota.spend"))
            .await?;
        Ok(refused.map(|exhausted| QuotaRefusal {
            exhausted,
            http_status: policy.quota_status(),
            retry_after: exhausted.window.end.map(|end| now.until(end)),
        }))
    }

    fn scopes_suffice(&self, input: &CheckInput, from_method: bool, granted: &ScopeSet) -> bool {
        if !input.required_scopes.is_empty() {
            return input.required_scopes.iter().all(|s| granted.grants(s));
        }
        match (&input.method, from_method) {
            (Some(m), true) if !m.is_empty() => granted.grants(&method_scope(m)),
            _ => true,
        }
    }

    /// From a throttled source: whether `lookup_id` may still be verified — it exists (a
    /// store lookup, no argon2) and has not failed too often from there.
    async fn may_try_throttled(
        &self,
        source: Option<std::net::IpAddr>,
        lookup_id: &str,
        now: crate::domain::UnixMillis,
    ) -> Result<bool> {
        if self.guesses.key_exhausted(source, lookup_id, now) {
            return Ok(false);
        }
        Ok(self.keys.find_by_lookup_id(lookup_id).await?.is_some())
    }

    /// Cache, else one indexed lookup and one argon2 verify (single-flight). An unknown
    /// lookup id still costs a verify against a dummy hash, so timing reveals nothing.
    async fn resolve(&self, presented: &str, lookup_id: &str, head: &str) -> Result<Resolved> {
        let digest = cache::digest(presented);
        let loaded = std::sync::atomic::AtomicBool::new(false);
        let resolved = self
            .cache
            .key(
                digest,
                lookup_id,
                // Built only on a miss (a hit allocates nothing here). The span is created
                // inside the load too: a cache hit must not create (and export) a store
                // span.
                || {
                    let secret = SecretString::from(presented.to_owned());
                    let loaded = &loaded;
                    let load = async move {
                        loaded.store(true, std::sync::atomic::Ordering::Relaxed);
                        let started = std::time::Instant::now();
                        let found = lookup_and_verify(
                            self.keys.as_ref(),
                            &self.hasher,
                            lookup_id,
                            head,
                            secret,
                        )
                        .await?;
                        self.metrics
                            .miss_load_seconds
                            .observe(started.elapsed().as_secs_f64());
                        Ok(found)
                    };
                    load.instrument(crate::child_span!("store.lookup_and_verify"))
                },
            )
            .await?;
        let result = match (&resolved, loaded.into_inner()) {
            (_, true) => "miss",
            (Resolved::Key(_), false) => "hit",
            (Resolved::Unknown, false) => "negative",
        };
        self.metrics.cache_lookup(result);
        tracing::Span::current().record("cache", result);
        Ok(resolved)
    }

    async fn tenant(&self, id: &str) -> Result<Arc<Loaded<Tenant>>> {
        let store = &self.tenants;
        self.cache
            .tenant(id, || async move {
                let mut tenant = store.get_tenant(id).await?.ok_or(Error::Internal {
                    context: "key without a tenant",
                    source: None,
                })?;
                // Cached as the effective policy under the tenant's plan.
                if !tenant.policy.plan_id.is_empty() {
                    match store.get_plan(&tenant.policy.plan_id).await? {
                        Some(plan) => tenant.policy = tenant.policy.under_plan(&plan.limits),
                        None => tracing::warn!(tenant_id = %tenant.id, plan_id = %tenant.policy.plan_id, "tenant's plan does not exist; checking without it"),
                    }
                }
                Ok(tenant)
            })
            .await
    }
}
