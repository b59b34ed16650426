//! KeyAdmin handlers: convert, one service call, convert back.
use super::{convert, pb};
use crate::metrics::Metrics;
use crate::service::admin::{AdminService, Page};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct KeyAdminApi {
    svc: AdminService,
    metrics: Arc<Metrics>,
}

impl KeyAdminApi {
    pub fn new(svc: AdminService, metrics: Arc<Metrics>) -> Self {
        KeyAdminApi { svc, metrics }
    }

    /// Records the call's outcome (metrics by RPC and code) and passes it on.
    fn done<T>(&self, rpc: &'static str, reply: Reply<T>) -> Reply<T> {
        let code = reply
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics.admin_call(rpc, code);
        reply
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::key_admin_server::KeyAdmin for KeyAdminApi {
    #[tracing::instrument(skip_all, fields(tenant_id))]
    async fn upsert_tenant(&self, req: Request<pb::UpsertTenantRequest>) -> Reply<pb::Tenant> {
        let reply: Reply<pb::Tenant> = async {
            let t = req
                .into_inner()
                .tenant
                .ok_or_else(|| Status::invalid_argument("tenant: is required"))?;
            tracing::Span::current().record("tenant_id", t.id.as_str());
            let policy = convert::policy_from(t.policy)?;
            let tenant = self.svc.upsert_tenant(t.id, t.display_name, policy).await?;
            Ok(Response::new(convert::tenant(tenant)))
        }
        .await;
        self.done("UpsertTenant", reply)
    }

    #[tracing::instrument(skip_all)]
    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Reply<pb::Tenant> {
        let reply: Reply<pb::Tenant> = async {
            let tenant = self.svc.get_tenant(&req.into_inner().tenant_id).await?;
            Ok(Response::new(convert::tenant(tenant)))
        }
        .await;
        self.done("GetTenant", reply)
    }

    #[tracing::instrument(skip_all)]
    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Reply<pb::ListTenantsResponse> {
        let reply: Reply<pb::ListTenantsResponse> = async {
            let r = req.into_inner();
            let (tenants, next_page_token) = self
                .svc
                .list_tenants(Page {
                    size: r.page_size,
                    token: r.page_token,
                })
                .await?;
            Ok(Response::new(pb::ListTenantsResponse {
                tenants: tenants.into_iter().map(convert::tenant).collect(),
                next_page_token,
            }))
        }
        .await;
        self.done("ListTenants", reply)
    }

    #[tracing::instrument(skip_all, fields(tenant_id, key_id))]
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Reply<pb::CreateKeyResponse> {
        let reply: Reply<pb::CreateKeyResponse> = async {
            let input = convert::create_key(req.into_inner())?;
            tracing::Span::current().record("tenant_id", input.tenant_id.as_str());
            let issued = self.svc.create_key(input).await?;
            tracing::Span::current().record("key_id", issued.key.id.as_str());
            let now = self.svc.now();
            // The only place a secret is put on the wire: once, in this response.
            let secret = secrecy::ExposeSecret::expose_secret(&issued.secret).to_owned();
            Ok(Response::new(pb::CreateKeyResponse {
                key: Some(convert::key(issued.key, now)),
                secret,
            }))
        }
        .await;
        self.done("CreateKey", reply)
    }

    #[tracing::instrument(skip_all)]
    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Reply<pb::Key> {
        let reply: Reply<pb::Key> = async {
            let key = self.svc.get_key(&req.into_inner().key_id).await?;
            Ok(Response::new(convert::key(key, self.svc.now())))
        }
        .await;
        self.done("GetKey", reply)
    }

    #[tracing::instrument(skip_all)]
    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Reply<pb::ListKeysResponse> {
        let reply: Reply<pb::ListKeysResponse> = async {
            let r = req.into_inner();
            let page = Page {
                size: r.page_size,
                token: r.page_token,
            };
            let (keys, next_page_token) = self
                .svc
                .list_keys(&r.tenant_id, page, r.include_revoked, r.include_expired)
                .await?;
            let now = self.svc.now();
            Ok(Response::new(pb::ListKeysResponse {
                keys: keys.into_iter().map(|k| convert::key(k, now)).collect(),
                next_page_token,
            }))
        }
        .await;
        self.done("ListKeys", reply)
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn update_key(&self, req: Request<pb::UpdateKeyRequest>) -> Reply<pb::Key> {
        let reply: Reply<pb::Key> = async {
            let (id, patch) = convert::key_patch(req.into_inner())?;
            tracing::Span::current().record("key_id", id.as_str());
            let key = self.svc.update_key(&id, patch).await?;
            Ok(Response::new(convert::key(key, self.svc.now())))
        }
        .await;
        self.done("UpdateKey", reply)
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> Reply<pb::Key> {
        let reply: Reply<pb::Key> = async {
            let r = req.into_inner();
            tracing::Span::current().record("key_id", r.key_id.as_str());
            let key = self.svc.revoke_key(&r.key_id, &r.reason).await?;
            Ok(Response::new(convert::key(key, self.svc.now())))
        }
        .await;
        self.done("RevokeKey", reply)
    }

    #[tracing::instrument(skip_all, fields(key_id))]
    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Reply<pb::RotateKeyResponse> {
        let reply: Reply<pb::RotateKeyResponse> = async {
            let r = req.into_inner();
            tracing::Span::current().record("key_id", r.key_id.as_str());
            let grace = match &r.grace_period {
                Some(d) => convert::from_duration("grace_period", d)?,
                None => Duration::ZERO,
            };
            let (issued, old) = self.svc.rotate_key(&r.key_id, grace).await?;
            let now = self.svc.now();
            let secret = secrecy::ExposeSecret::expose_secret(&issued.secret).to_owned();
            Ok(Response::new(pb::RotateKeyResponse {
                key: Some(convert::key(issued.key, now)),
                secret,
                previous_key: Some(convert::key(old, now)),
            }))
        }
        .await;
        self.done("RotateKey", reply)
    }
}
