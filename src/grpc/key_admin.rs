//! KeyAdmin handlers: convert, one service call, convert back.
use super::{convert, pb};
use crate::domain::access::Principal;
use crate::domain::Caller;
use crate::metrics::Metrics;
use crate::service::admin::{AdminService, Cursor, Page};
use crate::service::leaks::{Channel, LeakResponder};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

pub struct KeyAdminApi {
    svc: AdminService,
    leaks: Arc<LeakResponder>,
    metrics: Arc<Metrics>,
    /// Asked again while a `WatchEvents` stream runs.
    tokens: crate::service::tokens::AdminTokens,
    /// `WatchEvents` streams open at once (`events.max_watchers`).
    watchers: Arc<tokio::sync::Semaphore>,
}

impl KeyAdminApi {
    pub fn new(svc: AdminService, leaks: Arc<LeakResponder>, metrics: Arc<Metrics>) -> Self {
        KeyAdminApi {
            svc,
            leaks,
            metrics,
            tokens: Default::default(),
            watchers: Arc::new(tokio::sync::Semaphore::new(256)),
        }
    }

    /// The admin identities a `WatchEvents` stream is re-checked against, and how many
    /// streams may be open at once.
    pub fn with_watchers(
        mut self,
        tokens: crate::service::tokens::AdminTokens,
        max_watchers: usize,
    ) -> Self {
        self.tokens = tokens;
        self.watchers = Arc::new(tokio::sync::Semaphore::new(max_watchers));
        self
    }

    /// A key with its count of today's uses and its quota's figures.
    async fn key_out(&self, key: crate::domain::KeyRecord) -> Result<pb::Key, crate::error::Error> {
        Ok(self.keys_out(vec![key]).await?.remove(0))
    }

    /// Keys with their counts of today's uses and quota figures: two queries in all.
    async fn keys_out(
        &self,
        keys: Vec<crate::domain::KeyRecord>,
    ) -> Result<Vec<pb::Key>, crate::error::Error> {
        let today = self.svc.uses_today(&keys).await?;
        let quotas = self.svc.key_quotas(&keys).await?;
        let now = self.svc.now();
        Ok(keys
            .into_iter()
            .map(|k| {
                let n = today.get(&k.id).copied().unwrap_or(0);
                let q = quotas.get(&k.id);
                convert::key(k, now, n, q)
            })
            .collect())
    }

    /// A tenant with its tenant-wide quota's figures.
    async fn tenant_out(
        &self,
        tenant: crate::domain::Tenant,
    ) -> Result<pb::Tenant, crate::error::Error> {
        let q = self.svc.tenant_quota(&tenant).await?;
        Ok(convert::tenant(tenant, q.as_ref()))
    }

    /// What every KeyAdmin call does around its own work: identify the caller, run `f`
    /// on the request, record the outcome (metrics by RPC and code), and reply.
    async fn call<Req, T, F, Fut>(&self, rpc: &'static str, req: Request<Req>, f: F) -> Reply<T>
    where
        F: FnOnce(Caller, Req) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let reply = match caller(&req) {
            Ok(caller) => f(caller, req.into_inner()).await.map(Response::new),
            Err(status) => Err(status),
        };
        let code = reply
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics.admin_call(rpc, code);
        reply
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// The stream `WatchEvents` answers with.
pub type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

/// Who makes a write, for the audit trail: the admin token's id (set by the auth
/// interceptor) and the caller's `x-request-id`, else a generated one.
fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    // The interceptor puts it there on every authenticated call.
    let principal = req
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("not authenticated"))?;
    let request_id = req
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", crate::domain::key::random_base62(16)));
    Ok(Caller {
        principal,
        request_id,
    })
}

#[tonic::async_trait]
impl pb::key_admin_server::KeyAdmin for KeyAdminApi {
    #[tracing::instrument(skip_all, fields(tenant_id))]
    async fn upsert_tenant(&self, req: Request<pb::UpsertTenantRequest>) -> Reply<pb::Tenant> {
        self.call("UpsertTenant", req, |caller, r| async move {
            let t = r
                .tenant
                .ok_or_else(|| Status::invalid_argument("tenant: is required"))?;
            tracing::Span::current().record("tenant_id", t.id.as_str());
            let policy = convert::policy_from(t.policy)?;
            let tenant = self
                .svc
                .upsert_tenant(t.id, t.display_name, policy, &caller)
                .await?;
            Ok(self.tenant_out(tenant).await?)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Reply<pb::Tenant> {
        self.call("GetTenant", req, |caller, r| async move {
            let tenant = self.svc.get_tenant(&r.tenant_id, &caller).await?;
            Ok(self.tenant_out(tenant).await?)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Reply<pb::ListTenantsResponse> {
        self.call("ListTenants", req, |caller, r| async move {
            let (tenants, next_page_token) = self
                .svc
                .list_tenants(
                    Page {
                        size: r.page_size,
                        token: r.page_token,
                    },
                    &caller,
                )
                .await?;
            Ok(pb::ListTenantsResponse {
                tenants: tenants
                    .into_iter()
                    .map(|t| convert::tenant(t, None))
                    .collect(),
                next_page_token,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(tenant_id, key_id))]
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Reply<pb::CreateKeyResponse> {
        self.call("CreateKey", req, |caller, r| async move {
            let input = convert::create_key(r)?;
            tracing::Span::current().record("tenant_id", input.tenant_id.as_str());
            let issued = self.svc.create_key(input, &caller).await?;
            tracing::Span::current().record("key_id", issued.key.id.as_str());
            // The only place a secret is put on the wire: once, in this response.
            let secret = secrecy::ExposeSecret::expose_secret(&issued.secret).to_owned();
            Ok(pb::CreateKeyResponse {
                key: Some(self.key_out(issued.key).await?),
                secret,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Reply<pb::Key> {
        self.call("GetKey", req, |caller, r| async move {
            let key = self.svc.get_key(&r.key_id, &caller).await?;
            Ok(self.key_out(key).await?)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Reply<pb::ListKeysResponse> {
        self.call("ListKeys", req, |caller, r| async move {
            let page = Page {
                size: r.page_size,
                token: r.page_token,
            };
            let (keys, next_page_token) = self
                .svc
                .list_keys(
                    &caller,
                    &r.tenant_id,
                    page,
                    r.include_revoked,
                    r.include_expired,
                )
                .await?;
            Ok(pb::ListKeysResponse {
                keys: self.keys_out(keys).await?,
                next_page_token,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn update_key(&self, req: Request<pb::UpdateKeyRequest>) -> Reply<pb::Key> {
        self.call("UpdateKey", req, |caller, r| async move {
            let (id, patch) = convert::key_patch(r)?;
            tracing::Span::current().record("key_id", id.as_str());
            let key = self.svc.update_key(&id, patch, &caller).await?;
            Ok(self.key_out(key).await?)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> Reply<pb::Key> {
        self.call("RevokeKey", req, |caller, r| async move {
            tracing::Span::current().record("key_id", r.key_id.as_str());
            let key = self.svc.revoke_key(&r.key_id, &r.reason, &caller).await?;
            Ok(self.key_out(key).await?)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Reply<pb::RotateKeyResponse> {
        self.call("RotateKey", req, |caller, r| async move {
            tracing::Span::current().record("key_id", r.key_id.as_str());
            let grace = match &r.grace_period {
                Some(d) => convert::from_duration("grace_period", d)?,
                None => Duration::ZERO,
            };
            let (issued, old) = self.svc.rotate_key(&r.key_id, grace, &caller).await?;
            let secret = secrecy::ExposeSecret::expose_secret(&issued.secret).to_owned();
            Ok(pb::RotateKeyResponse {
                key: Some(self.key_out(issued.key).await?),
                secret,
                previous_key: Some(self.key_out(old).await?),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Reply<pb::ListAuditEventsResponse> {
        self.call("ListAuditEvents", req, |caller, r| async move {
            let start = r
                .start_time
                .as_ref()
                .map(|t| convert::from_timestamp("start_time", t))
                .transpose()?;
            let end = r
                .end_time
                .as_ref()
                .map(|t| convert::from_timestamp("end_time", t))
                .transpose()?;
            let page = Page {
                size: r.page_size,
                token: r.page_token,
            };
            let (events, next_page_token) = self
                .svc
                .list_audit_events(&caller, &r.tenant_id, &r.key_id, page, start, end)
                .await?;
            Ok(pb::ListAuditEventsResponse {
                events: events.into_iter().map(convert::audit_event).collect(),
                next_page_token,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn get_key_usage(&self, req: Request<pb::GetKeyUsageRequest>) -> Reply<pb::UsageReport> {
        self.call("GetKeyUsage", req, |caller, r| async move {
            tracing::Span::current().record("key_id", r.key_id.as_str());
            let (granularity, range) =
                convert::usage_window(r.granularity, r.start_time, r.end_time)?;
            let report = self
                .svc
                .key_usage(&caller, &r.key_id, granularity, range, r.group_by_endpoint)
                .await?;
            Ok(convert::usage_report(&report))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(tenant_id))]
    async fn get_tenant_usage(
        &self,
        req: Request<pb::GetTenantUsageRequest>,
    ) -> Reply<pb::UsageReport> {
        self.call("GetTenantUsage", req, |caller, r| async move {
            tracing::Span::current().record("tenant_id", r.tenant_id.as_str());
            let (granularity, range) =
                convert::usage_window(r.granularity, r.start_time, r.end_time)?;
            let report = self
                .svc
                .tenant_usage(
                    &caller,
                    &r.tenant_id,
                    granularity,
                    range,
                    r.group_by_endpoint,
                )
                .await?;
            Ok(convert::usage_report(&report))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(tenant_id))]
    async fn import_keys(
        &self,
        req: Request<pb::ImportKeysRequest>,
    ) -> Reply<pb::ImportKeysResponse> {
        self.call("ImportKeys", req, |caller, r| async move {
            tracing::Span::current().record("tenant_id", r.tenant_id.as_str());
            let format = convert::import_format(r.format)?;
            let keys = r
                .keys
                .into_iter()
                .enumerate()
                .map(|(i, k)| convert::imported_key(i, k))
                .collect::<Result<Vec<_>, _>>()?;
            let rule = (r.key_prefix, format, r.lookup_length as usize);
            let imported = self
                .svc
                .import_keys(&caller, &r.tenant_id, rule, keys)
                .await?;
            Ok(pb::ImportKeysResponse {
                keys: self.keys_out(imported).await?,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(plan_id))]
    async fn upsert_plan(&self, req: Request<pb::UpsertPlanRequest>) -> Reply<pb::Plan> {
        self.call("UpsertPlan", req, |caller, r| async move {
            let p = r
                .plan
                .ok_or_else(|| Status::invalid_argument("plan: is required"))?;
            tracing::Span::current().record("plan_id", p.id.as_str());
            let plan = self
                .svc
                .upsert_plan(convert::plan_from(p)?, &caller)
                .await?;
            Ok(convert::plan(plan))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> Reply<pb::ListPlansResponse> {
        self.call("ListPlans", req, |caller, _| async move {
            let plans = self.svc.list_plans(&caller).await?;
            Ok(pb::ListPlansResponse {
                plans: plans.into_iter().map(convert::plan).collect(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(tenant_id, key_id))]
    async fn adjust_quota(&self, req: Request<pb::AdjustQuotaRequest>) -> Reply<pb::QuotaStatus> {
        use crate::domain::quota::QuotaChange;
        use crate::service::admin::QuotaTarget;
        use pb::adjust_quota_request::{Change, Target};
        self.call("AdjustQuota", req, |caller, r| async move {
            let target = match r.target {
                Some(Target::KeyId(id)) => {
                    tracing::Span::current().record("key_id", id.as_str());
                    QuotaTarget::Key(id)
                }
                Some(Target::TenantId(id)) => {
                    tracing::Span::current().record("tenant_id", id.as_str());
                    QuotaTarget::Tenant(id)
                }
                None => {
                    return Err(Status::invalid_argument(
                        "target: is required: key_id or tenant_id",
                    ))
                }
            };
            let change = match r.change {
                Some(Change::Delta(0)) => {
                    return Err(Status::invalid_argument(
                        "delta: must not be 0 (a top-up is positive, a deduction negative)",
                    ))
                }
                Some(Change::Delta(d)) => QuotaChange::Add(d),
                Some(Change::SetRemaining(n)) => QuotaChange::SetRemaining(n),
                None => {
                    return Err(Status::invalid_argument(
                        "change: is required: delta or set_remaining",
                    ))
                }
            };
            let status = self
                .svc
                .adjust_quota(target, change, &r.reason, &caller)
                .await?;
            Ok(convert::quota_status(&status, None))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(keys))]
    async fn report_leaked_keys(
        &self,
        req: Request<pb::ReportLeakedKeysRequest>,
    ) -> Reply<pb::ReportLeakedKeysResponse> {
        self.call("ReportLeakedKeys", req, |caller, r| async move {
            tracing::Span::current().record("keys", r.keys.len());
            let reports: Vec<_> = r.keys.into_iter().map(convert::leak_report).collect();
            let reporter = format!("admin:{}", caller.principal.id);
            let verdicts = self
                .leaks
                .report(&reports, &caller, &reporter, Channel::Admin)
                .await?;
            Ok(pb::ReportLeakedKeysResponse {
                results: verdicts.into_iter().map(convert::leak_result).collect(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(tenant_id))]
    async fn create_webhook_endpoint(
        &self,
        req: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Reply<pb::CreateWebhookEndpointResponse> {
        self.call("CreateWebhookEndpoint", req, |caller, r| async move {
            tracing::Span::current().record("tenant_id", r.tenant_id.as_str());
            let (endpoint, secret) = self
                .svc
                .create_webhook_endpoint(
                    &caller,
                    &r.tenant_id,
                    &r.url,
                    &r.event_types,
                    &r.description,
                )
                .await?;
            Ok(pb::CreateWebhookEndpointResponse {
                endpoint: Some(convert::webhook_endpoint(&endpoint)),
                secret: secret.expose().to_owned(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_webhook_endpoints(
        &self,
        req: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Reply<pb::ListWebhookEndpointsResponse> {
        self.call("ListWebhookEndpoints", req, |caller, r| async move {
            let list = self
                .svc
                .list_webhook_endpoints(&caller, &r.tenant_id)
                .await?;
            Ok(pb::ListWebhookEndpointsResponse {
                endpoints: list.iter().map(convert::webhook_endpoint).collect(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(endpoint_id))]
    async fn update_webhook_endpoint(
        &self,
        req: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Reply<pb::WebhookEndpoint> {
        self.call("UpdateWebhookEndpoint", req, |caller, r| async move {
            let (id, patch) = convert::endpoint_patch(r)?;
            tracing::Span::current().record("endpoint_id", id.as_str());
            let e = self
                .svc
                .update_webhook_endpoint(&caller, &id, patch)
                .await?;
            Ok(convert::webhook_endpoint(&e))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(endpoint_id))]
    async fn delete_webhook_endpoint(
        &self,
        req: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Reply<pb::DeleteWebhookEndpointResponse> {
        self.call("DeleteWebhookEndpoint", req, |caller, r| async move {
            tracing::Span::current().record("endpoint_id", r.endpoint_id.as_str());
            self.svc
                .delete_webhook_endpoint(&caller, &r.endpoint_id)
                .await?;
            Ok(pb::DeleteWebhookEndpointResponse {})
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(endpoint_id))]
    async fn rotate_webhook_secret(
        &self,
        req: Request<pb::RotateWebhookSecretRequest>,
    ) -> Reply<pb::RotateWebhookSecretResponse> {
        self.call("RotateWebhookSecret", req, |caller, r| async move {
            tracing::Span::current().record("endpoint_id", r.endpoint_id.as_str());
            let (e, secret) = self
                .svc
                .rotate_webhook_secret(&caller, &r.endpoint_id)
                .await?;
            Ok(pb::RotateWebhookSecretResponse {
                endpoint: Some(convert::webhook_endpoint(&e)),
                secret: secret.expose().to_owned(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> Reply<pb::ListDeliveriesResponse> {
        self.call("ListDeliveries", req, |caller, r| async move {
            let state = convert::delivery_state_from("state", r.state)?;
            let page = Page {
                size: r.page_size,
                token: r.page_token,
            };
            let (list, next_page_token) = self
                .svc
                .list_deliveries(
                    &caller,
                    &r.tenant_id,
                    &r.endpoint_id,
                    &r.event_id,
                    state,
                    page,
                )
                .await?;
            Ok(pb::ListDeliveriesResponse {
                deliveries: list.into_iter().map(convert::delivery).collect(),
                next_page_token,
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(event_id))]
    async fn redeliver_event(
        &self,
        req: Request<pb::RedeliverEventRequest>,
    ) -> Reply<pb::RedeliverEventResponse> {
        self.call("RedeliverEvent", req, |caller, r| async move {
            tracing::Span::current().record("event_id", r.event_id.as_str());
            let list = self
                .svc
                .redeliver_event(&caller, &r.event_id, &r.endpoint_id)
                .await?;
            Ok(pb::RedeliverEventResponse {
                deliveries: list.into_iter().map(convert::delivery).collect(),
            })
        })
        .await
    }

    type WatchEventsStream = EventStream;

    #[tracing::instrument(skip_all, fields(tenant_id))]
    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        self.call("WatchEvents", req, |caller, r| async move {
            tracing::Span::current().record("tenant_id", r.tenant_id.as_str());
            let cursor = match (r.after_event_id.is_empty(), r.from_start) {
                (false, _) => Cursor::After(r.after_event_id),
                (true, true) => Cursor::Start,
                (true, false) => Cursor::Now,
            };
            let (tenant, after, types) = self
                .svc
                .watch_start(&caller, &r.tenant_id, cursor, &r.event_types)
                .await?;
            let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted(
                    "too many WatchEvents streams are open on this server (events.max_watchers)",
                )
            })?;
            let (tokens, who) = (self.tokens.clone(), caller.principal.clone());
            let rx = self
                .svc
                .follow_events(tenant, after, types, move || tokens.still_valid(&who));
            // The permit lives as long as the stream.
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
                let _open = &permit;
                item.map(|e| convert::event(&e)).map_err(Status::from)
            });
            Ok(Box::pin(stream) as EventStream)
        })
        .await
    }
}
