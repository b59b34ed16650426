//! Key events: what happened to a tenant's keys, told to its webhook endpoints and to
//! `WatchEvents` followers. An event never carries a secret, a hash or an admin token: key
//! events carry the key's public fields (its display prefix, never the secret).
//!
//! Changes (create, update, revoke, …) are derived here from the audit event of the write
//! and written in its transaction; runtime occurrences (a limit exceeded, a quota threshold,
//! an expiry) get ids derived from what happened, so writing one twice keeps one.
use super::{AuditEvent, KeyRecord, Tenant, UnixMillis};
use crate::error::{Error, Result};
use serde_json::{json, Value};

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    KeyCreated,
    KeyUpdated,
    KeyDisabled,
    KeyEnabled,
    KeyRevoked,
    KeyRotated,
    KeyExpiring,
    KeyExpired,
    KeyLeaked,
    QuotaThreshold,
    QuotaExhausted,
    RateLimitExceeded,
    TenantUpdated,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::KeyCreated,
        EventType::KeyUpdated,
        EventType::KeyDisabled,
        EventType::KeyEnabled,
        EventType::KeyRevoked,
        EventType::KeyRotated,
        EventType::KeyExpiring,
        EventType::KeyExpired,
        EventType::KeyLeaked,
        EventType::QuotaThreshold,
        EventType::QuotaExhausted,
        EventType::RateLimitExceeded,
        EventType::TenantUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::KeyCreated => "key.created",
            EventType::KeyUpdated => "key.updated",
            EventType::KeyDisabled => "key.disabled",
            EventType::KeyEnabled => "key.enabled",
            EventType::KeyRevoked => "key.revoked",
            EventType::KeyRotated => "key.rotated",
            EventType::KeyExpiring => "key.expiring",
            EventType::KeyExpired => "key.expired",
            EventType::KeyLeaked => "key.leaked",
            EventType::QuotaThreshold => "quota.threshold",
            EventType::QuotaExhausted => "quota.exhausted",
            EventType::RateLimitExceeded => "rate_limit.exceeded",
            EventType::TenantUpdated => "tenant.updated",
        }
    }

    /// Parses a type name; `field` names it in the error.
    pub fn parse(field: &str, s: &str) -> Result<EventType> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                Error::invalid(
                    field,
                    format!("unknown event type {s:?}; known: {}", known.join(", ")),
                )
            })
    }

    /// A list of type names, each known and none repeated.
    pub fn parse_list(field: &str, names: &[String]) -> Result<Vec<EventType>> {
        let mut out: Vec<EventType> = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let t = EventType::parse(&format!("{field}[{i}]"), n)?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

/// One event. `seq` orders a tenant's events (and all events) in the order they were
/// committed; it is 0 until the store assigns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub id: String,
    pub kind: EventType,
    pub time: UnixMillis,
    pub tenant_id: String,
    /// Empty when the event is not about one key.
    pub key_id: String,
    /// What happened, as a JSON object.
    pub data: Value,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: UnixMillis) -> String {
    jiff::Timestamp::from_millisecond(t.0)
        .map(|ts| format!("{ts:.3}"))
        .unwrap_or_default()
}

impl Event {
    /// A new event with a random id.
    pub fn new(
        kind: EventType,
        time: UnixMillis,
        tenant_id: &str,
        key_id: &str,
        data: Value,
    ) -> Event {
        Event {
            seq: 0,
            id: format!("evt_{}", super::key::random_base62(22)),
            kind,
            time,
            tenant_id: tenant_id.to_owned(),
            key_id: key_id.to_owned(),
            data,
        }
    }

    /// An event whose id is derived from `occurrence` (what happened, once): written twice,
    /// by one replica or several, it is stored once.
    pub fn once(
        kind: EventType,
        occurrence: &str,
        time: UnixMillis,
        tenant_id: &str,
        key_id: &str,
        data: Value,
    ) -> Event {
        let digest = super::import::sha256_hex(&format!("{}\n{occurrence}", kind.as_str()));
        Event {
            id: format!("evt_{}", &digest[..32]),
            ..Event::new(kind, time, tenant_id, key_id, data)
        }
    }

    /// The JSON body sent to webhooks and shown by `WatchEvents`.
    pub fn payload(&self) -> String {
        let mut body = json!({
            "id": self.id,
            "type": self.kind.as_str(),
            "timestamp": rfc3339(self.time),
            "tenant_id": self.tenant_id,
            "data": self.data,
        });
        if !self.key_id.is_empty() {
            body["key_id"] = Value::String(self.key_id.clone());
        }
        body.to_string()
    }
}

/// A key's public fields: what key events say about the key (never its secret or hash).
pub fn key_data(k: &KeyRecord) -> Value {
    let ms = |t: Option<UnixMillis>| t.map(rfc3339);
    json!({
        "id": k.id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "environment": k.environment,
        "display_prefix": k.display_prefix,
        "scopes": k.scopes.to_strings(),
        "enabled": k.enabled,
        "metadata": k.metadata,
        "create_time": rfc3339(k.create_time),
        "expire_time": ms(k.expire_time),
        "revoke_time": ms(k.revoke_time),
        "revoke_reason": k.revoke_reason,
        "rotated_from": k.rotated_from,
    })
}

/// What a write changed, beside its audit event.
pub enum Subject<'a> {
    /// The key as stored after the write.
    Key(&'a KeyRecord),
    /// A rotation: the old key (revocation scheduled) and its successor.
    Rotation(&'a KeyRecord, &'a KeyRecord),
    Tenant(&'a Tenant),
    /// Nothing beyond the audit event (a plan, a quota adjustment, a recorded report).
    Other,
}

/// The events a write announces, from its audit event: none for writes no subscriber is
/// told of (plans, quota adjustments, webhook endpoint changes).
pub fn from_change(audit: &AuditEvent, subject: Subject<'_>) -> Vec<Event> {
    let base = |kind: EventType, key: &KeyRecord, extra: Value| {
        let mut data = json!({
            "key": key_data(key),
            "changed_fields": audit.changed_fields,
            "actor": audit.actor,
            "request_id": audit.request_id,
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
            d.extend(e);
        }
        Event::new(kind, audit.time, &key.tenant_id, &key.id, data)
    };
    let leak = || json!({ "leak": { "detail": audit.detail } });
    match (audit.action.as_str(), subject) {
        ("create_key", Subject::Key(k)) => vec![base(EventType::KeyCreated, k, json!({}))],
        ("import_key", Subject::Key(k)) => {
            vec![base(EventType::KeyCreated, k, json!({ "imported": true }))]
        }
        ("update_key", Subject::Key(k)) => {
            let mut out = vec![base(EventType::KeyUpdated, k, json!({}))];
            if audit.changed_fields.iter().any(|f| f == "enabled") {
                let kind = match k.enabled {
                    true => EventType::KeyEnabled,
                    false => EventType::KeyDisabled,
                };
                out.push(base(kind, k, json!({})));
            }
            out
        }
        ("disable_key", Subject::Key(k)) => vec![base(EventType::KeyDisabled, k, json!({}))],
        ("enable_key", Subject::Key(k)) => vec![base(EventType::KeyEnabled, k, json!({}))],
        ("revoke_key", Subject::Key(k)) => vec![base(EventType::KeyRevoked, k, json!({}))],
        ("rotate_key", Subject::Rotation(old, new)) => vec![
            base(
                EventType::KeyRotated,
                old,
                json!({ "new_key": key_data(new) }),
            ),
            base(
                EventType::KeyCreated,
                new,
                json!({ "rotated_from": old.id }),
            ),
        ],
        // A leak report that revoked or disabled the key says both what happened and why.
        ("report_leak", Subject::Key(k)) => {
            let done = if k.revoke_time.is_some_and(|t| t <= audit.time) {
                Some(EventType::KeyRevoked)
            } else if audit.changed_fields.iter().any(|f| f == "enabled") {
                Some(EventType::KeyDisabled)
            } else {
                None
            };
            let mut out = vec![base(EventType::KeyLeaked, k, leak())];
            out.extend(done.map(|kind| base(kind, k, leak())));
            out
        }
        ("report_leak", Subject::Other) if !audit.key_id.is_empty() => {
            let data = json!({
                "key": { "id": audit.key_id, "tenant_id": audit.tenant_id },
                "actor": audit.actor,
                "request_id": audit.request_id,
                "leak": { "detail": audit.detail },
            });
            vec![Event::new(
                EventType::KeyLeaked,
                audit.time,
                &audit.tenant_id,
                &audit.key_id,
                data,
            )]
        }
        ("upsert_tenant", Subject::Tenant(t)) => {
            let data = json!({
                "tenant": {
                    "id": t.id,
                    "display_name": t.display_name,
                    "plan_id": t.policy.plan_id,
                },
                "created": t.create_time == t.update_time,
                "changed_fields": audit.changed_fields,
                "actor": audit.actor,
                "request_id": audit.request_id,
            });
            vec![Event::new(
                EventType::TenantUpdated,
                audit.time,
                &t.id,
                "",
                data,
            )]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(action: &str, changed: &[&str]) -> AuditEvent {
        AuditEvent {
            id: "aud_1".into(),
            time: UnixMillis(1_000),
            actor: "env".into(),
            action: action.into(),
            tenant_id: "acme".into(),
            key_id: "key_1".into(),
            changed_fields: changed.iter().map(|s| s.to_string()).collect(),
            request_id: "req_1".into(),
            detail: String::new(),
        }
    }

    fn key() -> KeyRecord {
        KeyRecord {
            id: "key_1".into(),
            tenant_id: "acme".into(),
            name: "k".into(),
            environment: "live".into(),
            lookup_id: "lookupidsecretish".into(),
            key_prefix: "kg_".into(),
            display_prefix: "kg_abcd".into(),
            scopes: Default::default(),
            ip_allowlist: Default::default(),
            rate_limits: vec![],
            quota: None,
            metadata: Default::default(),
            enabled: false,
            create_time: UnixMillis(0),
            update_time: UnixMillis(1_000),
            expire_time: None,
            last_used_time: None,
            use_count: 0,
            revoke_time: None,
            revoke_reason: None,
            rotated_from: None,
        }
    }

    #[test]
    fn writes_map_to_the_events_they_announce() {
        let k = key();
        let kinds = |a: &AuditEvent, s| -> Vec<&str> {
            from_change(a, s).iter().map(|e| e.kind.as_str()).collect()
        };
        assert_eq!(
            kinds(&audit("update_key", &["name", "enabled"]), Subject::Key(&k)),
            ["key.updated", "key.disabled"]
        );
        assert_eq!(
            kinds(&audit("disable_key", &["enabled"]), Subject::Key(&k)),
            ["key.disabled"]
        );
        assert_eq!(
            kinds(&audit("rotate_key", &[]), Subject::Rotation(&k, &k)),
            ["key.rotated", "key.created"]
        );
        assert!(from_change(&audit("upsert_plan", &[]), Subject::Other).is_empty());
        assert!(from_change(&audit("adjust_quota", &[]), Subject::Other).is_empty());
    }

    #[test]
    fn key_events_never_carry_the_lookup_id() {
        // The lookup id is part of the secret's text; the display prefix is what is shown.
        let k = key();
        for e in from_change(&audit("create_key", &[]), Subject::Key(&k)) {
            assert!(!e.payload().contains(&k.lookup_id), "{}", e.payload());
        }
    }

    #[test]
    fn an_occurrence_has_one_id_and_types_parse_back() {
        let a = Event::once(
            EventType::QuotaExhausted,
            "key:k1@0",
            UnixMillis(5),
            "t",
            "k1",
            json!({}),
        );
        let b = Event::once(
            EventType::QuotaExhausted,
            "key:k1@0",
            UnixMillis(9),
            "t",
            "k1",
            json!({}),
        );
        assert_eq!(a.id, b.id);
        assert_ne!(
            a.id,
            Event::once(
                EventType::QuotaThreshold,
                "key:k1@0",
                UnixMillis(5),
                "t",
                "k1",
                json!({})
            )
            .id
        );
        for t in EventType::ALL {
            assert_eq!(EventType::parse("f", t.as_str()).unwrap(), t);
        }
        let e = EventType::parse("types[0]", "key.nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("types[0]") && e.contains("key.nope"), "{e}");
    }
}
