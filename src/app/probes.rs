//! The plain-HTTP port: `/metrics`, `/healthz` (the process is up) and `/readyz` (the
//! store is reachable, as in `grpc.health.v1`). Values owned elsewhere (cache size,
//! argon2 verifies) are read at scrape time.
use crate::cache::KeyCache;
use crate::hashing::SecretHasher;
use crate::metrics::Metrics;
use axum::http::{header, StatusCode};
use axum::routing::get;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn router(metrics: Arc<Metrics>, cache: Arc<KeyCache>, hasher: SecretHasher) -> axum::Router {
    let m = metrics.clone();
    let ready = metrics;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, cache, hasher) = (m.clone(), cache.clone(), hasher.clone());
                async move {
                    let body = m.render(cache.entries().await, hasher.verify_count());
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ok = ready.is_ready();
                async move {
                    if ok {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n")
                    }
                }
            }),
        )
}

/// Serves the probes on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    cache: Arc<KeyCache>,
    hasher: SecretHasher,
    mut stop: watch::Receiver<bool>,
) {
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router(metrics, cache, hasher))
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}
