//! Quota figures for listings, and adjustments (top-ups, resets) of a period's counter.
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::quota::{self, QuotaChange, QuotaOwner, QuotaSpec, QuotaStatus};
use crate::domain::{text, AuditEvent, Caller, KeyRecord, Tenant, TenantPolicy};
use crate::error::{Error, Result};
use std::collections::HashMap;

/// Whose quota `AdjustQuota` changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaTarget {
    Key(String),
    Tenant(String),
}

/// The largest top-up, deduction or remaining figure one adjustment may set (10^15):
/// beyond any real quota, far below where a stored sum could overflow.
pub const MAX_QUOTA_CHANGE: u64 = 1_000_000_000_000_000;

impl AdminService {
    /// Figures of quotas in their current periods: one query for all of them. Units this
    /// replica holds in a lease count as remaining.
    async fn quota_statuses(
        &self,
        wanted: Vec<(QuotaOwner, String, QuotaSpec, jiff::tz::TimeZone)>,
    ) -> Result<HashMap<String, QuotaStatus>> {
        let now = self.now();
        let mut cells = Vec::with_capacity(wanted.len());
        for (owner, id, spec, tz) in &wanted {
            cells.push((owner.subject(id), spec.window(now, tz)?));
        }
        let stored = self
            .quota_store
            .quota_counters(
                &cells
                    .iter()
                    .map(|(s, w)| (s.clone(), w.start))
                    .collect::<Vec<_>>(),
            )
            .await?;
        let mut out = HashMap::with_capacity(wanted.len());
        for ((owner, id, spec, _), (subject, window)) in wanted.into_iter().zip(cells) {
            let mut counter = stored
                .get(&(subject.clone(), window.start))
                .copied()
                .unwrap_or_default();
            let held = self.quotas.held(&subject, window.start).await;
            counter.used = counter.used.saturating_sub(held);
            out.insert(id, QuotaStatus::new(owner, &spec, window, counter));
        }
        Ok(out)
    }

    /// Each key's quota figures (keys without a quota absent). `keys` share one tenant
    /// when listed; any mix works.
    pub async fn key_quotas(&self, keys: &[KeyRecord]) -> Result<HashMap<String, QuotaStatus>> {
        let mut policies: HashMap<String, TenantPolicy> = HashMap::new();
        let mut wanted = Vec::new();
        for k in keys {
            if !policies.contains_key(&k.tenant_id) {
                let tenant = self.tenant(&k.tenant_id).await?;
                policies.insert(k.tenant_id.clone(), self.effective_policy(&tenant).await?);
            }
            let policy = &policies[&k.tenant_id];
            if let Some(spec) = policy.key_quota(k.quota.as_ref()) {
                let tz = quota::time_zone("tenant.policy.time_zone", &policy.time_zone)?;
                wanted.push((QuotaOwner::Key, k.id.clone(), *spec, tz));
            }
        }
        self.quota_statuses(wanted).await
    }

    /// The tenant-wide quota's figures, if the tenant (or its plan) has one.
    pub async fn tenant_quota(&self, tenant: &Tenant) -> Result<Option<QuotaStatus>> {
        let policy = self.effective_policy(tenant).await?;
        let Some(spec) = policy.quota else {
            return Ok(None);
        };
        let tz = quota::time_zone("tenant.policy.time_zone", &policy.time_zone)?;
        let mut all = self
            .quota_statuses(vec![(QuotaOwner::Tenant, tenant.id.clone(), spec, tz)])
            .await?;
        Ok(all.remove(&tenant.id))
    }

    /// Tops up or resets a key's or a tenant's quota for its current period, audited.
    /// A key's quota is the tenant admins' to manage; a tenant's quota (what the tenant
    /// pays for) only platform admins may change.
    pub async fn adjust_quota(
        &self,
        target: QuotaTarget,
        change: QuotaChange,
        reason: &str,
        caller: &Caller,
    ) -> Result<QuotaStatus> {
        // Counters are 63-bit in the store; a change near 2^63 would overflow a sum there.
        let too_big = match change {
            QuotaChange::Add(d) => d.unsigned_abs() > MAX_QUOTA_CHANGE,
            QuotaChange::SetRemaining(n) => n > MAX_QUOTA_CHANGE,
        };
        if too_big {
            let field = match change {
                QuotaChange::Add(_) => "delta",
                QuotaChange::SetRemaining(_) => "set_remaining",
            };
            return Err(Error::invalid(
                field,
                format!("must be at most {MAX_QUOTA_CHANGE} in magnitude"),
            ));
        }
        if reason.trim().is_empty() {
            return Err(Error::invalid(
                "reason",
                "is required: say why the quota changes (kept in the audit trail)",
            ));
        }
        text::validate_text("reason", reason, super::MAX_REASON_CHARS)?;
        let (owner, id, tenant, spec, key_id) = match &target {
            QuotaTarget::Key(id) => {
                let key = self.key_for(id, caller, Need::Write).await?;
                let tenant = self.tenant(&key.tenant_id).await?;
                let policy = self.effective_policy(&tenant).await?;
                let spec = policy
                    .key_quota(key.quota.as_ref())
                    .copied()
                    .ok_or_else(|| {
                        Error::precondition(
                            "key.quota",
                            "the key has no quota (neither its own nor a tenant default_key_quota)",
                        )
                    })?;
                (QuotaOwner::Key, key.id.clone(), tenant, spec, key.id)
            }
            QuotaTarget::Tenant(id) => {
                text::validate_tenant_id("tenant_id", id)?;
                caller.principal.may(Need::Platform, id)?;
                let tenant = self.tenant(id).await?;
                let spec = self.effective_policy(&tenant).await?.quota.ok_or_else(|| {
                    Error::precondition(
                        "tenant.policy.quota",
                        "the tenant has no quota (neither its own nor its plan's)",
                    )
                })?;
                (
                    QuotaOwner::Tenant,
                    tenant.id.clone(),
                    tenant,
                    spec,
                    String::new(),
                )
            }
        };
        let change_text = match change {
            QuotaChange::Add(d) => format!("delta {d:+}"),
            QuotaChange::SetRemaining(n) => format!("set remaining {n}"),
        };
        let audit = self.event(
            caller,
            "adjust_quota",
            &tenant.id,
            &key_id,
            vec!["quota".into()],
            format!(
                "{} quota: {change_text}; reason: {}",
                owner.name(),
                reason.trim()
            ),
        );
        self.adjust(&tenant, owner, &id, &spec, change, audit).await
    }

    /// Applies `change` to the current period of `owner`/`id`'s quota.
    async fn adjust(
        &self,
        tenant: &Tenant,
        owner: QuotaOwner,
        id: &str,
        spec: &QuotaSpec,
        change: QuotaChange,
        audit: AuditEvent,
    ) -> Result<QuotaStatus> {
        let policy = self.effective_policy(tenant).await?;
        let tz = quota::time_zone("tenant.policy.time_zone", &policy.time_zone)?;
        let now = self.now();
        let window = spec.window(now, &tz)?;
        let subject = owner.subject(id);
        // Units this replica holds are not in the database's remaining: a set counts them.
        let held = self.quotas.held(&subject, window.start).await;
        let change = match change {
            QuotaChange::SetRemaining(n) => QuotaChange::SetRemaining(n.saturating_sub(held)),
            add => add,
        };
        let mut counter = self
            .quota_store
            .adjust_quota(&subject, window.start, spec.limit, change, now, audit)
            .await?;
        self.quotas.forget(&subject).await;
        counter.used = counter.used.saturating_sub(held);
        tracing::info!(subject = %subject, "quota adjusted");
        Ok(QuotaStatus::new(owner, spec, window, counter))
    }

    /// A rotated key's successor takes over what is left of the old key's quota, so a
    /// rotation is no way to refill it.
    pub(super) async fn carry_quota(
        &self,
        tenant: &Tenant,
        old: &KeyRecord,
        new: &KeyRecord,
        caller: &Caller,
    ) -> Result<()> {
        let policy = self.effective_policy(tenant).await?;
        let Some(spec) = policy.key_quota(old.quota.as_ref()).copied() else {
            return Ok(());
        };
        let left = self
            .key_quotas(std::slice::from_ref(old))
            .await?
            .remove(&old.id)
            .map_or(spec.limit, |s| s.remaining);
        if left == spec.limit {
            return Ok(());
        }
        let audit = self.event(
            caller,
            "adjust_quota",
            &tenant.id,
            &new.id,
            vec!["quota".into()],
            format!(
                "key quota: set remaining {left}; reason: carried over from {} on rotation",
                old.id
            ),
        );
        self.adjust(
            tenant,
            QuotaOwner::Key,
            &new.id,
            &spec,
            QuotaChange::SetRemaining(left),
            audit,
        )
        .await?;
        Ok(())
    }
}
