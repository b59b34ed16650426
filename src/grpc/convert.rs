//! Wire ↔ domain conversions for `keygate.v1`. A value that cannot be converted becomes
//! `InvalidArgument` naming its field.
use super::pb;
use crate::domain::import::ImportFormat;
use crate::domain::leak::{LeakAction, LeakReport, LeakVerdict};
use crate::domain::policy::{ExpiryPolicy, ExpiryRequest, RateLimitSpec};
use crate::domain::quota::{QuotaPeriod, QuotaSpec, QuotaStatus};
use crate::domain::usage::{Counts, Granularity, Report};
use crate::domain::{IpAllowlist, KeyRecord, KeyState, ScopeSet, Tenant, TenantPolicy, UnixMillis};
use crate::domain::{Plan, PlanLimits};
use crate::error::{Error, Result};
use crate::service::admin::{CreateKey, ImportKey, KeyPatch};
use std::time::Duration;

pub fn timestamp(t: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<UnixMillis> {
    if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 || t.seconds > 253_402_300_799 {
        return Err(Error::invalid(
            field,
            "is not a valid timestamp between 1970 and 9999",
        ));
    }
    Ok(UnixMillis(
        t.seconds * 1000 + i64::from(t.nanos) / 1_000_000,
    ))
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn from_duration(field: &str, d: &prost_types::Duration) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

fn rate_limit(l: &RateLimitSpec) -> pb::RateLimit {
    pb::RateLimit {
        name: l.name.clone(),
        limit: l.limit,
        window: Some(duration(l.window)),
    }
}

pub fn rate_limits_from(field: &str, raw: &[pb::RateLimit]) -> Result<Vec<RateLimitSpec>> {
    raw.iter()
        .enumerate()
        .map(|(i, l)| {
            let f = format!("{field}[{i}].window");
            let window = l
                .window
                .as_ref()
                .ok_or_else(|| Error::invalid(&f, "is required"))?;
            Ok(RateLimitSpec {
                name: l.name.clone(),
                limit: l.limit,
                window: from_duration(&f, window)?,
            })
        })
        .collect()
}

/// A quota from the wire; `field` names it in errors.
pub fn quota_from(field: &str, q: Option<&pb::Quota>) -> Result<Option<QuotaSpec>> {
    let Some(q) = q else { return Ok(None) };
    let period = match pb::QuotaPeriod::try_from(q.period) {
        Ok(pb::QuotaPeriod::Day) => QuotaPeriod::Day,
        Ok(pb::QuotaPeriod::Week) => QuotaPeriod::Week,
        Ok(pb::QuotaPeriod::Month) => QuotaPeriod::Month,
        Ok(pb::QuotaPeriod::Never) => QuotaPeriod::Never,
        _ => {
            return Err(Error::invalid(
                format!("{field}.period"),
                "is required: QUOTA_PERIOD_DAY, _WEEK, _MONTH or _NEVER (prepaid credits)",
            ))
        }
    };
    let spec = QuotaSpec {
        limit: q.limit,
        period,
        refill_anchor: q
            .refill_anchor
            .as_ref()
            .map(|t| from_timestamp(&format!("{field}.refill_anchor"), t))
            .transpose()?,
    };
    spec.validate(field)?;
    Ok(Some(spec))
}

pub fn quota(q: &QuotaSpec) -> pb::Quota {
    pb::Quota {
        limit: q.limit,
        period: match q.period {
            QuotaPeriod::Day => pb::QuotaPeriod::Day,
            QuotaPeriod::Week => pb::QuotaPeriod::Week,
            QuotaPeriod::Month => pb::QuotaPeriod::Month,
            QuotaPeriod::Never => pb::QuotaPeriod::Never,
        } as i32,
        refill_anchor: q.refill_anchor.map(timestamp),
    }
}

/// A quota's figures; `retry_after` only for a refusal.
pub fn quota_status(s: &QuotaStatus, retry_after: Option<Duration>) -> pb::QuotaStatus {
    let periodic = s.window.end.is_some();
    pb::QuotaStatus {
        name: s.owner.name().to_owned(),
        limit: s.limit,
        used: s.used,
        remaining: s.remaining,
        period_start: periodic.then(|| timestamp(s.window.start)),
        reset_time: s.window.end.map(timestamp),
        retry_after: retry_after.map(duration),
    }
}

pub fn policy_from(p: Option<pb::TenantPolicy>) -> Result<TenantPolicy> {
    let p = p.unwrap_or_default();
    const F: &str = "tenant.policy";
    let allowed_expiries = p
        .allowed_expiries
        .map(|e| -> Result<ExpiryPolicy> {
            let durations = e
                .durations
                .iter()
                .enumerate()
                .map(|(i, d)| from_duration(&format!("{F}.allowed_expiries.durations[{i}]"), d))
                .collect::<Result<_>>()?;
            Ok(ExpiryPolicy {
                durations,
                allow_never: e.allow_never,
            })
        })
        .transpose()?;
    Ok(TenantPolicy {
        key_prefix: p.key_prefix,
        environments: p.environments,
        max_active_keys: p.max_active_keys,
        allowed_expiries,
        scope_catalogue: ScopeSet::parse(&format!("{F}.scope_catalogue"), &p.scope_catalogue)?,
        default_scopes: ScopeSet::parse(&format!("{F}.default_scopes"), &p.default_scopes)?,
        default_rate_limits: rate_limits_from(
            &format!("{F}.default_rate_limits"),
            &p.default_rate_limits,
        )?,
        scopes_from_method: p.scopes_from_method,
        shared_rate_limits: rate_limits_from(
            &format!("{F}.shared_rate_limits"),
            &p.shared_rate_limits,
        )?,
        plan_id: p.plan_id,
        quota: quota_from(&format!("{F}.quota"), p.quota.as_ref())?,
        default_key_quota: quota_from(
            &format!("{F}.default_key_quota"),
            p.default_key_quota.as_ref(),
        )?,
        time_zone: p.time_zone,
        quota_exceeded_status: u16::try_from(p.quota_exceeded_status).map_err(|_| {
            Error::invalid(
                format!("{F}.quota_exceeded_status"),
                "must be 429 (the default), 402 or 403",
            )
        })?,
        on_leak: leak_action_from(p.on_leak)?,
        max_overdraft: p.max_overdraft,
        reservation_ttl: match &p.reservation_ttl {
            Some(d) => from_duration(&format!("{F}.reservation_ttl"), d)?,
            None => Duration::ZERO,
        },
        quota_alert_permille: {
            let f = p.quota_alert_fraction;
            if !(0.0..=1.0).contains(&f) {
                return Err(Error::invalid(
                    format!("{F}.quota_alert_fraction"),
                    "must be a fraction from 0 to 1 (0 = 0.8)",
                ));
            }
            (f * 1000.0).round() as u32
        },
    })
}

fn leak_action_from(a: i32) -> Result<LeakAction> {
    use pb::LeakAction as A;
    match A::try_from(a) {
        Ok(A::Unspecified | A::Revoke) => Ok(LeakAction::Revoke),
        Ok(A::Disable) => Ok(LeakAction::Disable),
        Ok(A::Notify) => Ok(LeakAction::Notify),
        Err(_) => Err(Error::invalid(
            "tenant.policy.on_leak",
            "unknown value: use LEAK_ACTION_REVOKE, LEAK_ACTION_DISABLE or LEAK_ACTION_NOTIFY",
        )),
    }
}

fn leak_action(a: LeakAction) -> pb::LeakAction {
    match a {
        LeakAction::Revoke => pb::LeakAction::Revoke,
        LeakAction::Disable => pb::LeakAction::Disable,
        LeakAction::Notify => pb::LeakAction::Notify,
    }
}

/// One reported key; its text goes nowhere but the responder.
pub fn leak_report(k: pb::LeakedKey) -> LeakReport {
    LeakReport {
        token: k.key.into(),
        kind: String::new(),
        url: k.url,
        source: k.source,
    }
}

pub fn leak_result(v: LeakVerdict) -> pb::LeakResult {
    match v {
        LeakVerdict::Found {
            key_id,
            tenant_id,
            action,
        } => pb::LeakResult {
            finding: pb::LeakFinding::LeakedKeyFound as i32,
            key_id,
            tenant_id,
            action: action.as_str().to_owned(),
        },
        LeakVerdict::NotAKey => pb::LeakResult {
            finding: pb::LeakFinding::NotAKey as i32,
            ..Default::default()
        },
        LeakVerdict::Unknown => pb::LeakResult {
            finding: pb::LeakFinding::Unknown as i32,
            ..Default::default()
        },
    }
}

pub fn plan_from(p: pb::Plan) -> Result<Plan> {
    Ok(Plan {
        limits: PlanLimits {
            default_rate_limits: rate_limits_from(
                "plan.default_rate_limits",
                &p.default_rate_limits,
            )?,
            shared_rate_limits: rate_limits_from("plan.shared_rate_limits", &p.shared_rate_limits)?,
            scope_catalogue: ScopeSet::parse("plan.scope_catalogue", &p.scope_catalogue)?,
            quota: quota_from("plan.quota", p.quota.as_ref())?,
            default_key_quota: quota_from("plan.default_key_quota", p.default_key_quota.as_ref())?,
        },
        id: p.id,
        display_name: p.display_name,
        create_time: UnixMillis(0),
        update_time: UnixMillis(0),
    })
}

pub fn plan(p: Plan) -> pb::Plan {
    pb::Plan {
        id: p.id,
        display_name: p.display_name,
        default_rate_limits: p
            .limits
            .default_rate_limits
            .iter()
            .map(rate_limit)
            .collect(),
        shared_rate_limits: p.limits.shared_rate_limits.iter().map(rate_limit).collect(),
        scope_catalogue: p.limits.scope_catalogue.to_strings(),
        quota: p.limits.quota.as_ref().map(quota),
        default_key_quota: p.limits.default_key_quota.as_ref().map(quota),
        create_time: Some(timestamp(p.create_time)),
        update_time: Some(timestamp(p.update_time)),
    }
}

pub fn tenant(t: Tenant, quota_now: Option<&QuotaStatus>) -> pb::Tenant {
    let p = t.policy;
    let reservation_ttl = p.reservation_ttl();
    let quota_alert = p.quota_alert();
    pb::Tenant {
        id: t.id,
        display_name: t.display_name,
        policy: Some(pb::TenantPolicy {
            key_prefix: p.effective_prefix().to_owned(),
            environments: p.environments,
            max_active_keys: p.max_active_keys,
            allowed_expiries: p.allowed_expiries.map(|e| pb::ExpiryPolicy {
                durations: e.durations.into_iter().map(duration).collect(),
                allow_never: e.allow_never,
            }),
            scope_catalogue: p.scope_catalogue.to_strings(),
            default_scopes: p.default_scopes.to_strings(),
            default_rate_limits: p.default_rate_limits.iter().map(rate_limit).collect(),
            scopes_from_method: p.scopes_from_method,
            shared_rate_limits: p.shared_rate_limits.iter().map(rate_limit).collect(),
            plan_id: p.plan_id,
            quota: p.quota.as_ref().map(quota),
            default_key_quota: p.default_key_quota.as_ref().map(quota),
            time_zone: p.time_zone,
            quota_exceeded_status: u32::from(p.quota_exceeded_status),
            on_leak: leak_action(p.on_leak) as i32,
            max_overdraft: p.max_overdraft,
            reservation_ttl: Some(duration(reservation_ttl)),
            quota_alert_fraction: f64::from(quota_alert) / 1000.0,
        }),
        create_time: Some(timestamp(t.create_time)),
        update_time: Some(timestamp(t.update_time)),
        quota_status: quota_now.map(|s| quota_status(s, None)),
    }
}

fn state(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::Revoked => pb::KeyState::Revoked,
        KeyState::Expired => pb::KeyState::Expired,
    }
}

/// The wire form of a key at `now` (state is computed). Carries no secret and no hash:
/// the record has neither.
/// A key as the API shows it; `uses_today` comes from the usage tables.
pub fn key(
    k: KeyRecord,
    now: UnixMillis,
    uses_today: u64,
    quota_now: Option<&QuotaStatus>,
) -> pb::Key {
    pb::Key {
        quota: k.quota.as_ref().map(quota),
        quota_status: quota_now.map(|s| quota_status(s, None)),
        use_count: k.use_count,
        uses_today,
        state: state(k.state(now)) as i32,
        id: k.id,
        tenant_id: k.tenant_id,
        name: k.name,
        environment: k.environment,
        display_prefix: k.display_prefix,
        scopes: k.scopes.to_strings(),
        ip_allowlist: k.ip_allowlist.to_strings(),
        rate_limits: k.rate_limits.iter().map(rate_limit).collect(),
        metadata: k.metadata.into_iter().collect(),
        create_time: Some(timestamp(k.create_time)),
        update_time: Some(timestamp(k.update_time)),
        expire_time: k.expire_time.map(timestamp),
        last_used_time: k.last_used_time.map(timestamp),
        revoke_time: k.revoke_time.map(timestamp),
        enabled: k.enabled,
        revoke_reason: k.revoke_reason.unwrap_or_default(),
        key_prefix: k.key_prefix,
        rotated_from_key_id: k.rotated_from.unwrap_or_default(),
    }
}

pub fn create_key(r: pb::CreateKeyRequest) -> Result<CreateKey> {
    use pb::create_key_request::Expiry;
    let expiry = match &r.expiry {
        None => ExpiryRequest::Unspecified,
        Some(Expiry::ExpiresIn(d)) => ExpiryRequest::In(from_duration("expires_in", d)?),
        Some(Expiry::ExpireTime(t)) => ExpiryRequest::At(from_timestamp("expire_time", t)?),
        Some(Expiry::NeverExpires(true)) => ExpiryRequest::Never,
        Some(Expiry::NeverExpires(false)) => ExpiryRequest::Unspecified,
    };
    Ok(CreateKey {
        scopes: ScopeSet::parse("scopes", &r.scopes)?,
        ip_allowlist: IpAllowlist::parse("ip_allowlist", &r.ip_allowlist)?,
        rate_limits: rate_limits_from("rate_limits", &r.rate_limits)?,
        metadata: r.metadata.into_iter().collect(),
        quota: quota_from("quota", r.quota.as_ref())?,
        tenant_id: r.tenant_id,
        name: r.name,
        environment: r.environment,
        expiry,
    })
}

/// The key id and the patch an UpdateKeyRequest asks for. Unknown mask paths are refused
/// rather than ignored, so a typo never looks like a successful update.
/// The paths of an update's field mask: required, and naming at least one field.
fn mask_paths(mask: Option<prost_types::FieldMask>) -> Result<Vec<String>> {
    let mask = mask
        .ok_or_else(|| Error::invalid("update_mask", "is required: name the fields to change"))?;
    if mask.paths.is_empty() {
        return Err(Error::invalid(
            "update_mask.paths",
            "must name at least one field",
        ));
    }
    Ok(mask.paths)
}

pub fn key_patch(r: pb::UpdateKeyRequest) -> Result<(String, KeyPatch)> {
    let k = r.key.ok_or_else(|| Error::invalid("key", "is required"))?;
    let mut patch = KeyPatch::default();
    for path in &mask_paths(r.update_mask)? {
        match path.as_str() {
            "name" => patch.name = Some(k.name.clone()),
            "scopes" => patch.scopes = Some(ScopeSet::parse("key.scopes", &k.scopes)?),
            "ip_allowlist" => patch.ip_allowlist = Some(IpAllowlist::parse("key.ip_allowlist", &k.ip_allowlist)?),
            "rate_limits" => patch.rate_limits = Some(rate_limits_from("key.rate_limits", &k.rate_limits)?),
            "metadata" => patch.metadata = Some(k.metadata.clone().into_iter().collect()),
            "enabled" => patch.enabled = Some(k.enabled),
            "quota" => patch.quota = Some(quota_from("key.quota", k.quota.as_ref())?),
            other => {
                return Err(Error::invalid(
                    "update_mask.paths",
                    format!("{other:?} cannot be updated; allowed: name, scopes, ip_allowlist, rate_limits, metadata, enabled, quota"),
                ))
            }
        }
    }
    Ok((k.id, patch))
}

pub fn audit_event(e: crate::domain::AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        time: Some(timestamp(e.time)),
        id: e.id,
        actor: e.actor,
        action: e.action,
        tenant_id: e.tenant_id,
        key_id: e.key_id,
        changed_fields: e.changed_fields,
        request_id: e.request_id,
        detail: e.detail,
    }
}

pub fn granularity(g: i32) -> Result<Granularity> {
    use pb::UsageGranularity as G;
    match G::try_from(g) {
        Ok(G::Unspecified | G::Day) => Ok(Granularity::Day),
        Ok(G::Minute) => Ok(Granularity::Minute),
        Ok(G::Total) => Ok(Granularity::Total),
        Err(_) => Err(Error::invalid("granularity", "unknown value")),
    }
}

/// A usage request's granularity and `[start_time, end_time)` (either may be unset).
pub fn usage_window(
    granularity_field: i32,
    start: Option<prost_types::Timestamp>,
    end: Option<prost_types::Timestamp>,
) -> Result<(Granularity, crate::domain::usage::Range)> {
    Ok((
        granularity(granularity_field)?,
        (
            opt_timestamp("start_time", start.as_ref())?,
            opt_timestamp("end_time", end.as_ref())?,
        ),
    ))
}

/// An optional timestamp field.
pub fn opt_timestamp(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<UnixMillis>> {
    t.map(|t| from_timestamp(field, t)).transpose()
}

fn usage_counts(c: &Counts) -> pb::UsageCounts {
    pb::UsageCounts {
        total: c.total(),
        allowed: c.allowed,
        denied: c.denied(),
        rate_limited: c.denied_by_reason.get("RATE_LIMITED").copied().unwrap_or(0),
        denial_rate: c.denial_rate(),
        cost: c.cost,
        denied_by_reason: c.denied_by_reason.clone().into_iter().collect(),
    }
}

pub fn usage_report(r: &Report) -> pb::UsageReport {
    use pb::UsageGranularity as G;
    pb::UsageReport {
        points: r
            .points
            .iter()
            .map(|p| pb::UsagePoint {
                bucket_start: Some(timestamp(p.bucket_start)),
                endpoint: p.endpoint.clone(),
                counts: Some(usage_counts(&p.counts)),
            })
            .collect(),
        totals: Some(usage_counts(&r.totals)),
        start_time: Some(timestamp(r.start)),
        end_time: Some(timestamp(r.end)),
        granularity: match r.granularity {
            Granularity::Minute => G::Minute,
            Granularity::Day => G::Day,
            Granularity::Total => G::Total,
        } as i32,
        reservations: Some(pb::ReservationUsage {
            reserved_units: r.reservations.reserved,
            settled_units: r.reservations.settled,
            expired_units: r.reservations.expired,
            open_units: r.reservations.open,
            overage_units: r.reservations.overage,
        }),
    }
}

pub fn settled(r: &crate::domain::reservation::Reservation) -> pb::SettleResponse {
    let s = r.settlement;
    pb::SettleResponse {
        reservation_id: r.id.clone(),
        key_id: r.key_id.clone(),
        reserved: r.reserved,
        actual: s.map_or(r.reserved, |s| s.actual),
        charged: s.map_or(r.reserved, |s| s.charged),
        overage: s.map_or(0, |s| s.overage),
        expired: s.is_some_and(|s| s.expired),
        settle_time: s.map(|s| timestamp(s.settle_time)),
    }
}

pub fn import_format(f: i32) -> Result<Option<ImportFormat>> {
    use pb::ImportHashFormat as F;
    match F::try_from(f) {
        Ok(F::Sha256Hex) => Ok(Some(ImportFormat::Sha256)),
        Ok(F::Argon2Phc) => Ok(Some(ImportFormat::Argon2)),
        Ok(F::Unspecified) => Ok(None),
        Err(_) => Err(Error::invalid("format", "unknown value")),
    }
}

pub fn imported_key(i: usize, k: pb::ImportedKey) -> Result<ImportKey> {
    let field = |f: &str| format!("keys[{i}].{f}");
    Ok(ImportKey {
        scopes: ScopeSet::parse(&field("scopes"), &k.scopes)?,
        ip_allowlist: IpAllowlist::parse(&field("ip_allowlist"), &k.ip_allowlist)?,
        rate_limits: rate_limits_from(&field("rate_limits"), &k.rate_limits)?,
        expire_time: opt_timestamp(&field("expire_time"), k.expire_time.as_ref())?,
        metadata: k.metadata.into_iter().collect(),
        name: k.name,
        hash: k.hash,
        lookup: k.lookup,
    })
}

pub fn event(e: &crate::domain::event::Event) -> pb::Event {
    pb::Event {
        id: e.id.clone(),
        r#type: e.kind.as_str().to_owned(),
        time: Some(timestamp(e.time)),
        tenant_id: e.tenant_id.clone(),
        key_id: e.key_id.clone(),
        payload_json: e.payload(),
    }
}

/// An endpoint without its secrets.
pub fn webhook_endpoint(e: &crate::domain::webhook::Endpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: e.id.clone(),
        tenant_id: e.tenant_id.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        event_types: e
            .event_types
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect(),
        enabled: e.enabled,
        disabled_reason: e.disabled_reason.clone(),
        create_time: Some(timestamp(e.create_time)),
        update_time: Some(timestamp(e.update_time)),
        previous_secret_expire_time: e.previous.as_ref().map(|(_, until)| timestamp(*until)),
    }
}

pub fn endpoint_patch(
    r: pb::UpdateWebhookEndpointRequest,
) -> Result<(String, crate::service::admin::EndpointPatch)> {
    let e = r
        .endpoint
        .ok_or_else(|| Error::invalid("endpoint", "is required"))?;
    let mut patch = crate::service::admin::EndpointPatch::default();
    for path in &mask_paths(r.update_mask)? {
        match path.as_str() {
            "url" => patch.url = Some(e.url.clone()),
            "event_types" => patch.event_types = Some(e.event_types.clone()),
            "description" => patch.description = Some(e.description.clone()),
            "enabled" => patch.enabled = Some(e.enabled),
            other => {
                return Err(Error::invalid(
                    "update_mask.paths",
                    format!(
                    "{other:?} cannot be updated; allowed: url, event_types, description, enabled"
                ),
                ))
            }
        }
    }
    Ok((e.id, patch))
}

pub fn delivery_state_from(
    field: &str,
    s: i32,
) -> Result<Option<crate::domain::webhook::DeliveryState>> {
    use crate::domain::webhook::DeliveryState as S;
    match pb::DeliveryState::try_from(s) {
        Ok(pb::DeliveryState::Unspecified) => Ok(None),
        Ok(pb::DeliveryState::Pending) => Ok(Some(S::Pending)),
        Ok(pb::DeliveryState::Delivered) => Ok(Some(S::Delivered)),
        Ok(pb::DeliveryState::Failed) => Ok(Some(S::Failed)),
        Err(_) => Err(Error::invalid(field, format!("unknown delivery state {s}"))),
    }
}

pub fn delivery(d: crate::domain::webhook::Delivery) -> pb::Delivery {
    use crate::domain::webhook::DeliveryState as S;
    let state = match d.state {
        S::Pending => pb::DeliveryState::Pending,
        S::Delivered => pb::DeliveryState::Delivered,
        S::Failed => pb::DeliveryState::Failed,
    };
    pb::Delivery {
        next_attempt_time: (d.state == S::Pending).then(|| timestamp(d.next_attempt_time)),
        id: d.id,
        event_id: d.event_id,
        event_type: d.event_type,
        endpoint_id: d.endpoint_id,
        state: state as i32,
        attempts: d.attempts,
        last_status: u32::from(d.last_status),
        last_error: d.last_error,
        create_time: Some(timestamp(d.create_time)),
        finish_time: d.finish_time.map(timestamp),
    }
}
