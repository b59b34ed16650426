//! Serving: the gRPC router with its interceptors, the background tasks, and the order of
//! a graceful shutdown.
use super::{health, probes, tasks, App};
use crate::conn::{self, Admission};
use crate::envoy::ExtAuthz;
use crate::error::{Error, Result};
use crate::grpc::auth::{AdminAuth, AuthorizeCallers};
use crate::grpc::authorize::AuthorizeApi;
use crate::grpc::key_admin::KeyAdminApi;
use crate::grpc::pb::authorize_server::AuthorizeServer;
use crate::grpc::pb::key_admin_server::KeyAdminServer;
use crate::service::{changes, usage};
use crate::tls;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use secrecy::ExposeSecret;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

fn internal<E: std::error::Error + Send + Sync + 'static>(
    context: &'static str,
) -> impl FnOnce(E) -> Error {
    move |e| Error::Internal {
        context,
        source: Some(Box::new(e)),
    }
}

/// Server reflection (v1 and v1alpha) over Keygate's and health's descriptors.
#[allow(clippy::type_complexity)]
fn reflection() -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::grpc::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        builder().build_v1().map_err(internal("reflection"))?,
        builder().build_v1alpha().map_err(internal("reflection"))?,
    ))
}

impl App {
    /// Serves on `listener` until `shutdown` resolves, then drains in-flight calls (for at
    /// most `shutdown_grace_secs`) and flushes what is buffered.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health::set_all(&health, ServingStatus::Serving, false).await;
        let (reflection_v1, reflection_v1alpha) = reflection()?;
        let max_message = self.config.limits.max_message_bytes;
        let admin_auth = AdminAuth(self.tokens.clone());
        let key_admin = InterceptedService::new(
            KeyAdminServer::new(
                KeyAdminApi::new(self.admin, self.leaks, self.metrics.clone())
                    .with_watchers(self.tokens.clone(), self.config.events.max_watchers),
            )
            .max_decoding_message_size(max_message),
            move |req| admin_auth.check(req),
        );
        let callers = AuthorizeCallers::new(
            self.config
                .authorize_token
                .as_ref()
                .map(|t| t.expose_secret()),
            self.config.tls.authorize_subjects.clone(),
        );
        let envoy_callers = callers.clone();
        let ext_authz = InterceptedService::new(
            AuthorizationServer::new(ExtAuthz::new(self.check.clone(), self.config.envoy.clone()))
                .max_decoding_message_size(max_message),
            move |req| envoy_callers.check(req),
        );
        let authorize = InterceptedService::new(
            AuthorizeServer::new(AuthorizeApi::new(self.check))
                .max_decoding_message_size(max_message),
            move |req| callers.check(req),
        );

        let addr = listener.local_addr().map_err(internal("listener"))?;
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(listener) = self.metrics_listener {
            tokio::spawn(probes::serve(
                listener,
                self.metrics.clone(),
                self.cache.clone(),
                self.hasher,
                stop_rx.clone(),
            ));
        }
        tokio::spawn(self.reservations.clone().sweep(stop_rx.clone()));
        if let Some(d) = self.deliverer.clone() {
            tokio::spawn(d.run(stop_rx.clone()));
        }
        tokio::spawn(self.sweeper.clone().run(stop_rx.clone()));
        if let Some(writer) = self.event_writer {
            tokio::spawn(writer);
        }
        if let Some((listener, partner)) = self.partner {
            tokio::spawn(crate::scanning::serve(listener, partner, stop_rx.clone()));
        }
        tokio::spawn(tasks::refresh_tokens_and_imports(
            self.tokens,
            self.imports,
            self.stores.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(health::watch_store(
            self.stores.health.clone(),
            health.clone(),
            self.metrics.ready.clone(),
            Duration::from_secs(self.config.store_unready_after_secs),
            stop_rx.clone(),
        ));
        if let Some(feed) = self.feed {
            tokio::spawn(changes::listen(
                feed,
                self.cache.clone(),
                self.metrics.clone(),
                self.origin,
                stop_rx.clone(),
            ));
        }
        // The usage flusher stops only after the server has drained, so its last flush
        // holds every check that was answered.
        let (flush_stop_tx, flush_stop_rx) = tokio::sync::watch::channel(false);
        let flusher = tokio::spawn(self.usage.clone().run(
            self.stores.usage.clone(),
            self.clock.clone(),
            Duration::from_millis(self.config.usage.flush_ms),
            flush_stop_rx.clone(),
        ));
        // Likewise the quota leases: given back once no check can spend them any more.
        let leases = tokio::spawn(self.quotas.run(self.clock.clone(), flush_stop_rx));
        tokio::spawn(usage::prune(
            self.stores.usage.clone(),
            self.clock,
            Duration::from_secs(self.config.usage.minute_retention_hours * 3600),
            Duration::from_secs(self.config.usage.day_retention_days * 86_400),
            stop_rx.clone(),
        ));
        let health_on_stop = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining in-flight calls");
            health::set_all(&health_on_stop, ServingStatus::NotServing, false).await;
            let _ = stop_tx.send(true);
        });
        let mut drained = stop_rx.clone();
        let mut stop_server = stop_rx.clone();
        let limits = &self.config.limits;
        let admission = Arc::new(Admission::new(
            limits.max_connections,
            self.metrics.connections_refused.clone(),
            self.metrics.connections_open.clone(),
        ));
        let router = tonic::transport::Server::builder()
            .timeout(Duration::from_millis(self.config.limits.request_timeout_ms))
            // Pings idle connections and closes those whose peer stopped answering.
            .http2_keepalive_interval(Some(Duration::from_secs(limits.keepalive_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(limits.keepalive_timeout_secs)))
            .concurrency_limit_per_connection(
                self.config.limits.max_concurrent_calls_per_connection,
            )
            .max_concurrent_streams(Some(self.config.limits.max_concurrent_streams))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(key_admin)
            .add_service(authorize)
            .add_service(ext_authz);
        let stop_serving = async move {
            let _ = stop_server.wait_for(|stop| *stop).await;
        };
        type Serving = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
        let server: Serving = match self.tls {
            Some(tls) => {
                tokio::spawn(tls.clone().watch(
                    Duration::from_secs(self.config.tls.reload_secs),
                    stop_rx.clone(),
                ));
                Box::pin(router.serve_with_incoming_shutdown(
                    tls::incoming(listener, tls, admission),
                    stop_serving,
                ))
            }
            None => {
                let first_byte = Duration::from_millis(limits.handshake_timeout_ms);
                let incoming = conn::incoming(listener, admission, first_byte);
                Box::pin(router.serve_with_incoming_shutdown(incoming, stop_serving))
            }
        };
        tracing::info!(listen = %addr, "keygate serving");
        // The server drains gracefully; a client that holds a call open longer than the
        // grace period does not keep the process alive.
        let deadline = async move {
            let _ = drained.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            res = server => res.map_err(internal("grpc server"))?,
            _ = deadline => tracing::warn!("shutdown grace period ended with calls still in flight"),
        }
        let _ = flush_stop_tx.send(true);
        let _ = flusher.await;
        let _ = leases.await;
        tracing::info!("keygate stopped");
        Ok(())
    }
}
