//! Webhook endpoints, their deliveries, and following events: a tenant's admins manage
//! their own endpoints; viewers read.
use super::paging::{next_token, time_token, Page};
use super::AdminService;
use crate::domain::access::Need;
use crate::domain::event::{Event, EventType};
use crate::domain::webhook::{
    self, Delivery, DeliveryState, Endpoint, SigningSecret, MAX_DESCRIPTION_CHARS,
    MAX_ENDPOINTS_PER_TENANT, ROTATION_OVERLAP,
};
use crate::domain::{key, text, Caller};
use crate::error::{Error, Result};
use crate::store::DeliveryQuery;

/// The fields `UpdateWebhookEndpoint` may change.
#[derive(Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// Where `WatchEvents` starts.
#[derive(Debug, Clone)]
pub enum Cursor {
    /// Events written from now on.
    Now,
    /// From the oldest event kept.
    Start,
    /// After this event.
    After(String),
}

fn validate_description(d: &str) -> Result<()> {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(Error::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    if d.chars().any(char::is_control) {
        return Err(Error::invalid(
            "description",
            "must not hold control characters",
        ));
    }
    Ok(())
}

fn validate_endpoint_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("endpoint_id", "is required"));
    }
    if !id.starts_with("whep_")
        || id.len() > 40
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Error::invalid(
            "endpoint_id",
            "is not a webhook endpoint id (whep_…)",
        ));
    }
    Ok(())
}

impl AdminService {
    /// The endpoint, if `caller` may do `need` on its tenant (NOT_FOUND for a platform
    /// identity, the one denial otherwise, as for keys).
    async fn endpoint_for(&self, id: &str, caller: &Caller, need: Need) -> Result<Endpoint> {
        validate_endpoint_id(id)?;
        match self.webhooks.get_endpoint(id).await? {
            Some(e) => {
                caller.principal.may(need, &e.tenant_id)?;
                Ok(e)
            }
            None if caller.principal.is_platform() => Err(Error::not_found("webhook endpoint", id)),
            None => Err(crate::domain::access::denied()),
        }
    }

    pub async fn create_webhook_endpoint(
        &self,
        caller: &Caller,
        tenant_id: &str,
        url: &str,
        event_types: &[String],
        description: &str,
    ) -> Result<(Endpoint, SigningSecret)> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Write, tenant_id)?;
        let url = webhook::validate_url("url", url, self.events.allow_private_targets)?;
        webhook::validate_url_len("url", url.as_str())?;
        let event_types = EventType::parse_list("event_types", event_types)?;
        validate_description(description)?;
        self.tenant(tenant_id).await?;
        let now = self.now();
        let secret = SigningSecret::generate();
        let endpoint = Endpoint {
            id: format!("whep_{}", key::random_base62(20)),
            tenant_id: tenant_id.to_owned(),
            url: url.to_string(),
            description: description.to_owned(),
            event_types,
            secret: secret.clone(),
            previous: None,
            enabled: true,
            disabled_reason: String::new(),
            create_time: now,
            update_time: now,
        };
        let audit = self.event(
            caller,
            "create_webhook_endpoint",
            tenant_id,
            "",
            vec!["url".into(), "event_types".into(), "description".into()],
            format!("endpoint_id={}", endpoint.id),
        );
        self.webhooks
            .create_endpoint(&endpoint, MAX_ENDPOINTS_PER_TENANT, audit)
            .await?;
        tracing::info!(endpoint_id = %endpoint.id, tenant_id, "webhook endpoint created");
        Ok((endpoint, secret))
    }

    pub async fn list_webhook_endpoints(
        &self,
        caller: &Caller,
        tenant_id: &str,
    ) -> Result<Vec<Endpoint>> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Read, tenant_id)?;
        self.tenant(tenant_id).await?;
        self.webhooks.list_endpoints(tenant_id).await
    }

    pub async fn update_webhook_endpoint(
        &self,
        caller: &Caller,
        id: &str,
        patch: EndpointPatch,
    ) -> Result<Endpoint> {
        let mut e = self.endpoint_for(id, caller, Need::Write).await?;
        let read_at = e.update_time;
        let mut changed = Vec::new();
        if let Some(url) = patch.url {
            e.url = webhook::validate_url("endpoint.url", &url, self.events.allow_private_targets)?
                .to_string();
            webhook::validate_url_len("endpoint.url", &e.url)?;
            changed.push("url".to_owned());
        }
        if let Some(types) = patch.event_types {
            e.event_types = EventType::parse_list("endpoint.event_types", &types)?;
            changed.push("event_types".to_owned());
        }
        if let Some(d) = patch.description {
            validate_description(&d)?;
            e.description = d;
            changed.push("description".to_owned());
        }
        if let Some(enabled) = patch.enabled {
            e.enabled = enabled;
            e.disabled_reason.clear();
            changed.push("enabled".to_owned());
        }
        if changed.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "names no field; paths: url, event_types, description, enabled",
            ));
        }
        e.update_time = self.now();
        let audit = self.event(
            caller,
            "update_webhook_endpoint",
            &e.tenant_id,
            "",
            changed,
            format!("endpoint_id={}", e.id),
        );
        self.webhooks.update_endpoint(&e, read_at, audit).await?;
        Ok(e)
    }

    pub async fn delete_webhook_endpoint(&self, caller: &Caller, id: &str) -> Result<()> {
        let e = self.endpoint_for(id, caller, Need::Write).await?;
        let audit = self.event(
            caller,
            "delete_webhook_endpoint",
            &e.tenant_id,
            "",
            vec![],
            format!("endpoint_id={}", e.id),
        );
        if !self.webhooks.delete_endpoint(id, self.now(), audit).await? {
            return Err(Error::not_found("webhook endpoint", id));
        }
        Ok(())
    }

    pub async fn rotate_webhook_secret(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(Endpoint, SigningSecret)> {
        let mut e = self.endpoint_for(id, caller, Need::Write).await?;
        let read_at = e.update_time;
        let now = self.now();
        let secret = SigningSecret::generate();
        e.previous = Some((e.secret.clone(), now.plus(ROTATION_OVERLAP)));
        e.secret = secret.clone();
        e.update_time = now;
        let audit = self.event(
            caller,
            "rotate_webhook_secret",
            &e.tenant_id,
            "",
            vec!["secret".into()],
            format!("endpoint_id={}", e.id),
        );
        self.webhooks.update_endpoint(&e, read_at, audit).await?;
        Ok((e, secret))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn list_deliveries(
        &self,
        caller: &Caller,
        tenant_id: &str,
        endpoint_id: &str,
        event_id: &str,
        state: Option<DeliveryState>,
        page: Page,
    ) -> Result<(Vec<Delivery>, String)> {
        text::validate_tenant_id("tenant_id", tenant_id)?;
        caller.principal.may(Need::Read, tenant_id)?;
        self.tenant(tenant_id).await?;
        if !endpoint_id.is_empty() {
            validate_endpoint_id(endpoint_id)?;
        }
        let limit = page.limit()?;
        // The (seq, id) of the last delivery of the previous page, in the time-token form.
        let before = page.time_cursor("dlv_")?.map(|(seq, id)| (seq.0, id));
        let query = DeliveryQuery {
            tenant_id: tenant_id.to_owned(),
            endpoint_id: Some(endpoint_id.to_owned()).filter(|s| !s.is_empty()),
            event_id: Some(event_id.to_owned()).filter(|s| !s.is_empty()),
            state,
            before,
            limit,
        };
        let list = self.webhooks.list_deliveries(&query).await?;
        let next = next_token(&list, limit, |d| {
            time_token(crate::domain::UnixMillis(d.event_seq), &d.id)
        });
        Ok((list, next))
    }

    pub async fn redeliver_event(
        &self,
        caller: &Caller,
        event_id: &str,
        endpoint_id: &str,
    ) -> Result<Vec<Delivery>> {
        if event_id.is_empty() {
            return Err(Error::invalid("event_id", "is required"));
        }
        let event = self.events_log.event_by_id(event_id).await?;
        let event = match event {
            Some(e) => {
                caller.principal.may(Need::Write, &e.tenant_id)?;
                e
            }
            None if caller.principal.is_platform() => {
                return Err(Error::not_found("event", event_id))
            }
            None => return Err(crate::domain::access::denied()),
        };
        let targets: Vec<String> = if endpoint_id.is_empty() {
            self.webhooks
                .list_endpoints(&event.tenant_id)
                .await?
                .into_iter()
                .filter(|e| e.enabled && e.wants(event.kind))
                .map(|e| e.id)
                .collect()
        } else {
            let e = self.endpoint_for(endpoint_id, caller, Need::Write).await?;
            if e.tenant_id != event.tenant_id {
                return Err(Error::invalid(
                    "endpoint_id",
                    "belongs to another tenant than the event",
                ));
            }
            vec![e.id]
        };
        if targets.is_empty() {
            return Err(Error::precondition(
                "endpoint_id",
                "the event's tenant has no enabled endpoint that wants this event type",
            ));
        }
        self.webhooks.redeliver(&event, &targets, self.now()).await
    }

    /// Checks a `WatchEvents` request; the seq to follow after, and the tenant (`None`:
    /// every tenant, platform identities only).
    pub async fn watch_start(
        &self,
        caller: &Caller,
        tenant_id: &str,
        cursor: Cursor,
        types: &[String],
    ) -> Result<(Option<String>, i64, Vec<EventType>)> {
        let types = EventType::parse_list("event_types", types)?;
        let tenant = if tenant_id.is_empty() {
            if !caller.principal.is_platform() {
                return Err(Error::invalid(
                    "tenant_id",
                    "is required for a tenant-limited admin token",
                ));
            }
            None
        } else {
            text::validate_tenant_id("tenant_id", tenant_id)?;
            caller.principal.may(Need::Read, tenant_id)?;
            self.tenant(tenant_id).await?;
            Some(tenant_id.to_owned())
        };
        let after =
            match cursor {
                Cursor::Now => self.events_log.last_event_seq().await?,
                Cursor::Start => 0,
                Cursor::After(id) => match self.events_log.event_by_id(&id).await? {
                    Some(e) if tenant.as_ref().is_none_or(|t| *t == e.tenant_id) => e.seq,
                    Some(_) => {
                        return Err(Error::invalid(
                            "after_event_id",
                            "is an event of another tenant",
                        ))
                    }
                    None => return Err(Error::precondition(
                        "after_event_id",
                        "no such event is kept (unknown, or pruned past events.retention_days); \
                         resume with from_start",
                    )),
                },
            };
        Ok((tenant, after, types))
    }

    /// The events after `after_seq`, live, as [`crate::service::events::follow`] streams.
    pub fn follow_events(
        &self,
        tenant: Option<String>,
        after_seq: i64,
        types: Vec<EventType>,
        authorized: impl Fn() -> bool + Send + 'static,
    ) -> tokio::sync::mpsc::Receiver<Result<Event>> {
        crate::service::events::follow(
            self.events_log.clone(),
            tenant,
            types,
            after_seq,
            self.events.poll,
            authorized,
        )
    }
}
