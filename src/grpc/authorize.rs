//! `keygate.v1.Authorize/Check`: convert, decide, convert back.
use super::{convert, pb};
use crate::domain::{ip, Scope};
use crate::error::{Error, Result};
use crate::metrics::Source;
use crate::service::check::{CheckInput, CheckService, Decision, Reason};
use std::net::IpAddr;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub struct AuthorizeApi {
    svc: Arc<CheckService>,
}

impl AuthorizeApi {
    pub fn new(svc: Arc<CheckService>) -> Self {
        AuthorizeApi { svc }
    }
}

/// Parses a client address; empty means unknown.
pub fn client_ip(field: &str, raw: &str) -> Result<Option<IpAddr>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.trim()
        .parse::<IpAddr>()
        .map(|a| Some(ip::unmap(a)))
        .map_err(|_| Error::invalid(field, format!("{raw:?} is not an IPv4 or IPv6 address")))
}

fn input(r: pb::CheckRequest) -> Result<CheckInput> {
    crate::domain::reservation::validate_units("reserve", r.reserve)?;
    if r.reserve > 0 && r.dry_run {
        return Err(Error::invalid(
            "reserve",
            "cannot be combined with dry_run (a dry run holds nothing)",
        ));
    }
    let required_scopes = r
        .required_scopes
        .iter()
        .enumerate()
        .map(|(i, s)| Scope::parse(&format!("required_scopes[{i}]"), s))
        .collect::<Result<Vec<_>>>()?;
    Ok(CheckInput {
        client_ip: client_ip("client_ip", &r.client_ip)?,
        guess_source: None,
        required_scopes,
        tenant_id: Some(r.tenant_id).filter(|t| !t.is_empty()),
        method: Some(r.method).filter(|m| !m.is_empty()),
        path: Some(r.path).filter(|p| !p.is_empty()),
        route: Some(r.route).filter(|p| !p.is_empty()),
        cost: u64::from(r.cost.max(1)),
        dry_run: r.dry_run,
        reserve: r.reserve,
        api_key: r.api_key,
    })
}

fn reason(r: Reason) -> pb::Reason {
    match r {
        Reason::Ok => pb::Reason::Ok,
        Reason::MissingCredential => pb::Reason::MissingCredential,
        Reason::MalformedKey => pb::Reason::MalformedKey,
        Reason::KeyNotFound => pb::Reason::KeyNotFound,
        Reason::KeyRevoked => pb::Reason::KeyRevoked,
        Reason::KeyExpired => pb::Reason::KeyExpired,
        Reason::KeyDisabled => pb::Reason::KeyDisabled,
        Reason::TenantMismatch => pb::Reason::TenantMismatch,
        Reason::InsufficientScope => pb::Reason::InsufficientScope,
        Reason::IpNotAllowed => pb::Reason::IpNotAllowed,
        Reason::RateLimited => pb::Reason::RateLimited,
        Reason::QuotaExceeded => pb::Reason::QuotaExceeded,
    }
}

/// The wire form of a decision.
pub fn response(d: Decision) -> pb::CheckResponse {
    let mut resp = pb::CheckResponse {
        decision: if d.allowed() {
            pb::Decision::Allow
        } else {
            pb::Decision::Deny
        } as i32,
        reason: reason(d.reason) as i32,
        http_status: u32::from(d.http_status()),
        quota: d.quota.map(|q| {
            let e = q.exhausted;
            convert::quota_status(
                &crate::domain::quota::QuotaStatus {
                    owner: e.owner,
                    limit: e.limit,
                    // Not read from the store on the check path.
                    used: 0,
                    remaining: 0,
                    window: e.window,
                },
                q.retry_after,
            )
        }),
        message: d.reason.message().to_owned(),
        scopes: d.scopes.to_strings(),
        rate_limit: d.rate_limit.map(|l| pb::RateLimitStatus {
            limit: l.limit,
            remaining: l.remaining,
            reset_time: Some(convert::timestamp(l.reset)),
            retry_after: l.retry_after.map(convert::duration),
            name: l.name,
        }),
        reservation_id: d.reservation_id.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(k) = d.key {
        resp.key_id = k.id.to_string();
        resp.tenant_id = k.tenant_id.to_string();
        resp.key_name = k.name.to_string();
        resp.environment = k.environment.to_string();
        resp.metadata = k.metadata().map(|(a, b)| (a.clone(), b.clone())).collect();
    }
    resp
}

#[tonic::async_trait]
impl pb::authorize_server::Authorize for AuthorizeApi {
    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let span = crate::telemetry::check_span(
            "Authorize/Check",
            Some(&crate::telemetry::MetadataExtractor(req.metadata())),
        );
        // Failed checks count against the connection's peer, unless the caller is a
        // trusted service vouching for its end user's address.
        let peer = crate::conn::peer_ip(&req);
        let trusted = req
            .extensions()
            .get::<super::auth::TrustedCaller>()
            .is_some();
        async move {
            let mut input = input(req.into_inner())?;
            input.guess_source = input.client_ip.filter(|_| trusted).or(peer);
            let decision = self.svc.check_recorded(Source::Grpc, &input).await?;
            Ok(Response::new(response(decision)))
        }
        .instrument(span)
        .await
    }

    async fn settle(
        &self,
        req: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        let r = req.into_inner();
        let settled = self.svc.settle(&r.reservation_id, r.actual_cost).await?;
        Ok(Response::new(convert::settled(&settled)))
    }
}
