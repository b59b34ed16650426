//! `grpc.health.v1`: which services are reported, and readiness following the store.
use crate::envoy::ExtAuthz;
use crate::grpc::authorize::AuthorizeApi;
use crate::grpc::key_admin::KeyAdminApi;
use crate::grpc::pb::authorize_server::AuthorizeServer;
use crate::grpc::pb::key_admin_server::KeyAdminServer;
use crate::store::StoreHealth;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The services Keygate serves, by their gRPC names.
const NAMED: [&str; 3] = [
    <KeyAdminServer<KeyAdminApi> as NamedService>::NAME,
    <AuthorizeServer<AuthorizeApi> as NamedService>::NAME,
    <AuthorizationServer<ExtAuthz> as NamedService>::NAME,
];

/// Sets every named service's status (the overall `""` too when `overall`).
pub async fn set_all(health: &HealthReporter, status: ServingStatus, overall: bool) {
    if overall {
        health.set_service_status("", status).await;
    }
    for s in NAMED {
        health.set_service_status(s, status).await;
    }
}

/// Pings the store every second. Health turns NOT_SERVING (readiness) only once the store
/// has been unreachable for `unready_after` — cached keys keep working meanwhile — and
/// SERVING again as soon as it answers.
pub async fn watch_store(
    store: Arc<dyn StoreHealth>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    unready_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut down_since: Option<Instant> = None;
    let mut serving = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let up = matches!(
            tokio::time::timeout(Duration::from_secs(1), store.ping()).await,
            Ok(Ok(()))
        );
        down_since = if up {
            None
        } else {
            down_since.or(Some(Instant::now()))
        };
        let want = down_since.is_none_or(|t| t.elapsed() < unready_after);
        if want != serving && !*stop.borrow() {
            serving = want;
            ready.store(want, Ordering::Relaxed);
            let status = if want {
                tracing::info!("store reachable again: health SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!(after = ?unready_after, "store unreachable: health NOT_SERVING");
                ServingStatus::NotServing
            };
            set_all(&health, status, true).await;
        }
    }
}
