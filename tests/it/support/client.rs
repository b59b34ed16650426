//! Typed clients for Keygate's two gRPC services, over the generated tonic clients, so a
//! test reads as the behaviour it checks:
//!
//! ```ignore
//! admin.tenant("demo").policy(policy).upsert().await;
//! let k = admin.create_key(new_key("demo").scopes(["read"])).await;
//! assert_eq!(c.reason(check(&k.secret).requires(["read"])).await, Reason::Ok);
//! ```
//!
//! Setting up (`tenant(..).upsert()`, `create_key`) and `check` unwrap: a failure there is a
//! broken fixture, and the panic says which call failed and why. Every other call returns
//! the `Status`, for the test to `unwrap` or to assert on with `code`; `try_` forms exist
//! for the set-up calls a test expects to be refused.
use keygate::grpc::pb::{
    self, authorize_client::AuthorizeClient, key_admin_client::KeyAdminClient,
};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

type Reply<T> = Result<T, Status>;

/// `msg` carrying `metadata`.
fn with_metadata<T>(metadata: &MetadataMap, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    *r.metadata_mut() = metadata.clone();
    r
}

/// `metadata` with `name: value` set, or `name` removed when `value` is empty.
fn set(mut metadata: MetadataMap, name: &'static str, value: &str) -> MetadataMap {
    if value.is_empty() {
        metadata.remove(name);
    } else {
        metadata.insert(name, value.parse().expect("a valid metadata value"));
    }
    metadata
}

fn bearer(token: &str) -> String {
    if token.is_empty() {
        String::new()
    } else {
        format!("Bearer {token}")
    }
}

/// `$self.client.$rpc($msg)` with `$self`'s metadata, unwrapped from its `Response`.
macro_rules! call {
    ($self:ident, $rpc:ident, $msg:expr) => {
        $self
            .client
            .clone()
            .$rpc($self.req($msg))
            .await
            .map(Response::into_inner)
    };
}

/// A KeyAdmin client that sends a bearer token with every call (no `authorization` at all
/// when the token is empty, e.g. to be known by a client certificate).
#[derive(Clone)]
pub struct Admin {
    client: KeyAdminClient<Channel>,
    metadata: MetadataMap,
}

impl Admin {
    pub fn new(channel: Channel, token: &str) -> Admin {
        Admin {
            client: KeyAdminClient::new(channel),
            metadata: set(MetadataMap::new(), "authorization", &bearer(token)),
        }
    }

    /// Connects to `http://{addr}`.
    pub async fn connect(addr: &str, token: &str) -> Admin {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to KeyAdmin at {addr}: {e}"));
        Admin::new(channel, token)
    }

    /// The same connection presenting another token (`""`: none).
    pub fn with_token(&self, token: &str) -> Admin {
        self.with_header("authorization", &bearer(token))
    }

    /// The same connection sending `name: value` with every call (`""`: not at all).
    pub fn with_header(&self, name: &'static str, value: &str) -> Admin {
        Admin {
            client: self.client.clone(),
            metadata: set(self.metadata.clone(), name, value),
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        with_metadata(&self.metadata, msg)
    }

    /// A tenant to upsert: display name "`id` inc", the default policy unless given one.
    pub fn tenant(&self, id: &str) -> TenantSpec<'_> {
        TenantSpec {
            admin: self,
            tenant: pb::Tenant {
                id: id.into(),
                display_name: format!("{id} inc"),
                policy: Some(pb::TenantPolicy::default()),
                ..Default::default()
            },
        }
    }

    pub async fn upsert_tenant(&self, r: pb::UpsertTenantRequest) -> Reply<pb::Tenant> {
        call!(self, upsert_tenant, r)
    }

    pub async fn get_tenant(&self, tenant_id: &str) -> Reply<pb::Tenant> {
        let r = pb::GetTenantRequest {
            tenant_id: tenant_id.into(),
        };
        call!(self, get_tenant, r)
    }

    pub async fn list_tenants(&self, r: pb::ListTenantsRequest) -> Reply<pb::ListTenantsResponse> {
        call!(self, list_tenants, r)
    }

    /// Creates a key (a `KeySpec` from `new_key`, or a request built by hand).
    pub async fn create_key(&self, k: impl Into<pb::CreateKeyRequest>) -> pb::CreateKeyResponse {
        self.try_create_key(k)
            .await
            .unwrap_or_else(|s| panic!("CreateKey failed: {s:?}"))
    }

    pub async fn try_create_key(
        &self,
        k: impl Into<pb::CreateKeyRequest>,
    ) -> Reply<pb::CreateKeyResponse> {
        call!(self, create_key, k.into())
    }

    pub async fn get_key(&self, key_id: &str) -> Reply<pb::Key> {
        let r = pb::GetKeyRequest {
            key_id: key_id.into(),
        };
        call!(self, get_key, r)
    }

    pub async fn list_keys(&self, r: pb::ListKeysRequest) -> Reply<pb::ListKeysResponse> {
        call!(self, list_keys, r)
    }

    /// UpdateKey with `key` as the patch and `paths` as the field mask.
    pub async fn update_key(&self, key: pb::Key, paths: &[&str]) -> Reply<pb::Key> {
        let r = pb::UpdateKeyRequest {
            key: Some(key),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        self.update_key_request(r).await
    }

    /// UpdateKey exactly as given (say, with no field mask at all).
    pub async fn update_key_request(&self, r: pb::UpdateKeyRequest) -> Reply<pb::Key> {
        call!(self, update_key, r)
    }

    pub async fn revoke_key(&self, key_id: &str, reason: &str) -> Reply<pb::Key> {
        let r = pb::RevokeKeyRequest {
            key_id: key_id.into(),
            reason: reason.into(),
        };
        call!(self, revoke_key, r)
    }

    pub async fn rotate_key(
        &self,
        key_id: &str,
        grace_period: Option<prost_types::Duration>,
    ) -> Reply<pb::RotateKeyResponse> {
        let r = pb::RotateKeyRequest {
            key_id: key_id.into(),
            grace_period,
        };
        call!(self, rotate_key, r)
    }

    pub async fn list_audit_events(
        &self,
        r: pb::ListAuditEventsRequest,
    ) -> Reply<pb::ListAuditEventsResponse> {
        call!(self, list_audit_events, r)
    }

    pub async fn get_key_usage(&self, r: pb::GetKeyUsageRequest) -> Reply<pb::UsageReport> {
        call!(self, get_key_usage, r)
    }

    pub async fn get_tenant_usage(&self, r: pb::GetTenantUsageRequest) -> Reply<pb::UsageReport> {
        call!(self, get_tenant_usage, r)
    }

    pub async fn import_keys(&self, r: pb::ImportKeysRequest) -> Reply<pb::ImportKeysResponse> {
        call!(self, import_keys, r)
    }

    pub async fn upsert_plan(&self, plan: pb::Plan) -> Reply<pb::Plan> {
        let r = pb::UpsertPlanRequest { plan: Some(plan) };
        call!(self, upsert_plan, r)
    }

    pub async fn list_plans(&self) -> Reply<pb::ListPlansResponse> {
        let r = pb::ListPlansRequest::default();
        call!(self, list_plans, r)
    }

    pub async fn adjust_quota(&self, r: pb::AdjustQuotaRequest) -> Reply<pb::QuotaStatus> {
        call!(self, adjust_quota, r)
    }

    /// ReportLeakedKeys for `keys` (found at `url` by `source`).
    pub async fn report_leaked_keys(
        &self,
        keys: &[&str],
        url: &str,
        source: &str,
    ) -> Reply<pb::ReportLeakedKeysResponse> {
        let r = pb::ReportLeakedKeysRequest {
            keys: keys
                .iter()
                .map(|k| pb::LeakedKey {
                    key: k.to_string(),
                    url: url.into(),
                    source: source.into(),
                })
                .collect(),
        };
        call!(self, report_leaked_keys, r)
    }

    /// CreateWebhookEndpoint for `tenant_id` at `url`, with `types` (empty: all).
    pub async fn create_webhook_endpoint(
        &self,
        tenant_id: &str,
        url: &str,
        types: &[&str],
    ) -> Reply<pb::CreateWebhookEndpointResponse> {
        let r = pb::CreateWebhookEndpointRequest {
            tenant_id: tenant_id.into(),
            url: url.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            description: "test receiver".into(),
        };
        call!(self, create_webhook_endpoint, r)
    }

    pub async fn list_webhook_endpoints(
        &self,
        tenant_id: &str,
    ) -> Reply<pb::ListWebhookEndpointsResponse> {
        let r = pb::ListWebhookEndpointsRequest {
            tenant_id: tenant_id.into(),
        };
        call!(self, list_webhook_endpoints, r)
    }

    pub async fn update_webhook_endpoint(
        &self,
        endpoint: pb::WebhookEndpoint,
        paths: &[&str],
    ) -> Reply<pb::WebhookEndpoint> {
        let r = pb::UpdateWebhookEndpointRequest {
            endpoint: Some(endpoint),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        call!(self, update_webhook_endpoint, r)
    }

    pub async fn delete_webhook_endpoint(
        &self,
        endpoint_id: &str,
    ) -> Reply<pb::DeleteWebhookEndpointResponse> {
        let r = pb::DeleteWebhookEndpointRequest {
            endpoint_id: endpoint_id.into(),
        };
        call!(self, delete_webhook_endpoint, r)
    }

    pub async fn rotate_webhook_secret(
        &self,
        endpoint_id: &str,
    ) -> Reply<pb::RotateWebhookSecretResponse> {
        let r = pb::RotateWebhookSecretRequest {
            endpoint_id: endpoint_id.into(),
        };
        call!(self, rotate_webhook_secret, r)
    }

    pub async fn list_deliveries(
        &self,
        r: pb::ListDeliveriesRequest,
    ) -> Reply<pb::ListDeliveriesResponse> {
        call!(self, list_deliveries, r)
    }

    pub async fn redeliver_event(
        &self,
        event_id: &str,
        endpoint_id: &str,
    ) -> Reply<pb::RedeliverEventResponse> {
        let r = pb::RedeliverEventRequest {
            event_id: event_id.into(),
            endpoint_id: endpoint_id.into(),
        };
        call!(self, redeliver_event, r)
    }

    /// WatchEvents: the stream of events.
    pub async fn watch_events(
        &self,
        r: pb::WatchEventsRequest,
    ) -> Reply<tonic::Streaming<pb::Event>> {
        call!(self, watch_events, r)
    }
}

/// A tenant about to be upserted; see `Admin::tenant`.
#[must_use = "a tenant is only stored by `upsert`"]
pub struct TenantSpec<'a> {
    admin: &'a Admin,
    tenant: pb::Tenant,
}

impl TenantSpec<'_> {
    pub fn policy(mut self, policy: pb::TenantPolicy) -> Self {
        self.tenant.policy = Some(policy);
        self
    }

    pub async fn upsert(self) -> pb::Tenant {
        let id = self.tenant.id.clone();
        self.try_upsert()
            .await
            .unwrap_or_else(|s| panic!("UpsertTenant {id} failed: {s:?}"))
    }

    pub async fn try_upsert(self) -> Reply<pb::Tenant> {
        let r = pb::UpsertTenantRequest {
            tenant: Some(self.tenant),
        };
        self.admin.upsert_tenant(r).await
    }
}

/// An Authorize client; it sends no metadata unless given some.
#[derive(Clone)]
pub struct CheckClient {
    client: AuthorizeClient<Channel>,
    metadata: MetadataMap,
}

impl CheckClient {
    pub fn new(channel: Channel) -> CheckClient {
        CheckClient {
            client: AuthorizeClient::new(channel),
            metadata: MetadataMap::new(),
        }
    }

    /// Connects to `http://{addr}`.
    pub async fn connect(addr: &str) -> Result<CheckClient, tonic::transport::Error> {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        Ok(CheckClient::new(channel))
    }

    /// The same connection presenting `token` as the Authorize caller's bearer token.
    pub fn with_token(&self, token: &str) -> CheckClient {
        self.with_header("authorization", &bearer(token))
    }

    /// The same connection sending `name: value` with every check (`""`: not at all).
    pub fn with_header(&self, name: &'static str, value: &str) -> CheckClient {
        CheckClient {
            client: self.client.clone(),
            metadata: set(self.metadata.clone(), name, value),
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        with_metadata(&self.metadata, msg)
    }

    /// The decision on `r` (a `CheckSpec` from `check`, or a request built by hand).
    pub async fn check(&self, r: impl Into<pb::CheckRequest>) -> pb::CheckResponse {
        self.try_check(r)
            .await
            .unwrap_or_else(|s| panic!("Check failed: {s:?}"))
    }

    pub async fn try_check(&self, r: impl Into<pb::CheckRequest>) -> Reply<pb::CheckResponse> {
        call!(self, check, r.into())
    }

    /// Settles a reservation with the call's real cost.
    pub async fn settle(
        &self,
        reservation_id: &str,
        actual_cost: u64,
    ) -> Reply<pb::SettleResponse> {
        let r = pb::SettleRequest {
            reservation_id: reservation_id.into(),
            actual_cost,
        };
        call!(self, settle, r)
    }

    /// Only the reason of the decision on `r`.
    pub async fn reason(&self, r: impl Into<pb::CheckRequest>) -> pb::Reason {
        let reason = self.check(r).await.reason;
        pb::Reason::try_from(reason).unwrap_or_else(|_| panic!("unknown reason {reason}"))
    }
}
