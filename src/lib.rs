//! Keygate: API-key authorization over gRPC.
//!
//! [`run`] serves `keygate.v1.KeyAdmin`, `keygate.v1.Authorize`, `grpc.health.v1` and
//! server reflection on a
//! listener until SIGTERM/SIGINT. `main.rs` only parses flags and calls it.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod config;
mod config_section;
pub mod domain;
pub mod envoy;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod hashing;
pub mod limiter;
pub mod metrics;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;

use crate::cache::KeyCache;
use crate::config::Config;
use crate::domain::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::grpc::auth::{self, AdminTokens, AuthorizeCallers};
use crate::grpc::pb::authorize_server::AuthorizeServer;
use crate::grpc::pb::key_admin_server::KeyAdminServer;
use crate::hashing::SecretHasher;
use crate::limiter::{memory::MemoryLimiter, RateLimiter};
use crate::service::admin::AdminService;
use crate::service::check::CheckService;
use crate::service::usage::UsageRecorder;
use crate::store::{Backend, KeyStore, SeaStore};
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use secrecy::ExposeSecret;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Hooks for embedding and tests; the defaults are what production uses.
#[derive(Clone)]
pub struct Options {
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
        }
    }
}

/// Serves until SIGTERM or SIGINT, then drains in-flight calls and returns.
pub async fn run(config: Config, listener: TcpListener) -> Result<()> {
    run_with(config, listener, Options::default(), shutdown_signal()).await
}

/// Resolves when the process is asked to stop.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Opens the store and brings its schema up to date (always on SQLite; on PostgreSQL only
/// with `auto_migrate`, else an outdated schema is an error).
pub async fn open_store(config: &Config) -> Result<SeaStore> {
    let url = config.database_url.expose_secret();
    let db = store::connect(url, config.database.max_connections, config.db_timeout()).await?;
    let backend =
        Backend::of_url(url).ok_or_else(|| Error::invalid("database_url", "unsupported scheme"))?;
    if backend == Backend::Sqlite || config.auto_migrate {
        store::migrate(&db).await?;
    } else {
        let pending = store::pending_migrations(&db).await?;
        if !pending.is_empty() {
            return Err(Error::precondition(
                "database schema",
                format!(
                    "the database lacks {} migration(s) this binary needs ({}); run `keygate migrate` or start with --auto-migrate",
                    pending.len(),
                    pending.join(", ")
                ),
            ));
        }
    }
    Ok(SeaStore::new(db))
}

/// The admin tokens this server accepts: the configured one plus those in the store. With
/// neither, generates a platform admin token, stores its digest and prints it once on
/// stderr.
async fn admin_tokens(
    config: &Config,
    store: &dyn KeyStore,
    clock: &dyn Clock,
) -> Result<AdminTokens> {
    let tokens = AdminTokens::default();
    if let Some(t) = &config.admin_token {
        tokens.add_configured(
            domain::access::Principal::platform_admin("env"),
            auth::digest(t.expose_secret()),
        );
    }
    tokens.refresh(store).await?;
    if tokens.is_empty() && store.admin_tokens().await?.is_empty() {
        let (record, token) = new_admin_token(
            domain::access::Role::Admin,
            None,
            "generated on first start",
            clock.now(),
        );
        store.add_admin_token(&record).await?;
        tokens.refresh(store).await?;
        // Straight to the terminal, never through the log pipeline: shown exactly once.
        eprintln!(
            "\n=== Keygate generated an admin token (shown once; only its hash is stored) ===\n\n    {token}\n\n\
             Try it:\n    grpcurl -plaintext -H 'authorization: Bearer {token}' {addr} keygate.v1.KeyAdmin/ListTenants\n\n\
             Keep it in a secret store; set KEYGATE_ADMIN_TOKEN to use a token of your own instead.\n",
            addr = config.listen
        );
    }
    Ok(tokens)
}

/// A new admin token and its record (digest only): the token is returned to be shown once.
pub fn new_admin_token(
    role: domain::access::Role,
    tenant_id: Option<String>,
    description: &str,
    now: domain::UnixMillis,
) -> (store::AdminTokenRecord, String) {
    let token = auth::generate_token();
    let record = store::AdminTokenRecord {
        id: format!("adm_{}", domain::key::random_base62(12)),
        digest: auth::digest(&token),
        description: description.to_owned(),
        role,
        tenant_id,
        create_time: now,
        revoke_time: None,
    };
    (record, token)
}

/// The configured limiter: in memory, or Redis behind the `[redis] on_error` fallback.
fn build_limiter(config: &Config, metrics: &metrics::Metrics) -> Result<Arc<dyn RateLimiter>> {
    Ok(match config.rate_limiter {
        config::LimiterKind::Memory => Arc::new(MemoryLimiter::default()),
        config::LimiterKind::Redis => {
            let redis = limiter::redis::RedisLimiter::new(
                config.redis.url.expose_secret(),
                &config.redis.key_prefix,
                Duration::from_millis(config.redis.timeout_ms),
            )?;
            Arc::new(
                limiter::resilient::Resilient::new(
                    Arc::new(redis),
                    config.redis.on_error,
                    config.redis.local_precheck,
                )
                .with_counter(metrics.limiter_fallbacks.clone()),
            )
        }
    })
}

/// A built Keygate: store opened, schema checked, services wired; not yet serving.
pub struct App {
    config: Config,
    pub store: Arc<dyn KeyStore>,
    pub hasher: SecretHasher,
    pub cache: Arc<KeyCache>,
    pub admin: AdminService,
    pub check: Arc<CheckService>,
    /// Usage recording; `flush` writes what is buffered (tests call it directly).
    pub usage: Arc<UsageRecorder>,
    /// This replica's quota leases.
    pub quotas: Arc<service::quota::QuotaLedger>,
    clock: Arc<dyn domain::Clock>,
    tokens: AdminTokens,
    /// TLS material when `[tls]` is configured.
    tls: Option<Arc<tls::Tls>>,
    /// Whether to LISTEN for other replicas' changes (PostgreSQL store).
    listen_changes: bool,
    /// This replica's id in change notifications.
    origin: String,
    pub metrics: Arc<metrics::Metrics>,
    metrics_listener: Option<TcpListener>,
}

impl App {
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub async fn build(config: Config, options: Options) -> Result<App> {
        let sea = open_store(&config).await?;
        // With a shared (PostgreSQL) store there may be other replicas to tell of changes.
        let pg_pool = (Backend::of_url(config.database_url.expose_secret())
            == Some(Backend::Postgres))
        .then(|| sea.connection().get_postgres_connection_pool().clone());
        let store: Arc<dyn KeyStore> = Arc::new(sea);
        let hasher = SecretHasher::new(config.argon2)?;
        let tokens = admin_tokens(&config, store.as_ref(), options.clock.as_ref())
            .await?
            .with_subjects(config.tls.subject_principals());
        let tls = tls::Tls::from_config(&config.tls)?.map(Arc::new);
        let cache = Arc::new(KeyCache::new(&config.cache));
        let metrics = metrics::Metrics::new(config.metrics.tenant_label);
        let limiter = build_limiter(&config, &metrics)?;
        let metrics_listener = match config.metrics.enabled {
            true => Some(
                TcpListener::bind(config.metrics.listen)
                    .await
                    .map_err(|e| {
                        Error::invalid(
                            "metrics.listen",
                            format!("cannot bind {}: {e}", config.metrics.listen),
                        )
                    })?,
            ),
            false => None,
        };
        let usage = Arc::new(UsageRecorder::new(
            Arc::new(domain::usage::RouteTable::new(&config.usage.routes)?),
            config.usage.enabled,
            config.usage.max_buffered_rows,
            Some(metrics.usage.clone()),
        ));
        let listen_changes = pg_pool.is_some();
        // Names this replica in its change notifications, so it can skip its own.
        let origin = domain::key::random_base62(12);
        let broadcast = Arc::new(service::changes::Broadcast::new(
            cache.clone(),
            pg_pool,
            origin.clone(),
        ));
        let imports = Arc::new(service::imports::ImportRegistry::default());
        imports.refresh(store.as_ref()).await?;
        let quotas = Arc::new(service::quota::QuotaLedger::new(
            store.clone(),
            config.quotas,
        ));
        let admin = AdminService::new(
            store.clone(),
            hasher.clone(),
            options.clock.clone(),
            broadcast,
        )
        .with_imports(imports.clone())
        .with_quotas(quotas.clone());
        let check = Arc::new(CheckService {
            store: store.clone(),
            hasher: hasher.clone(),
            cache: cache.clone(),
            limiter,
            clock: options.clock.clone(),
            usage: usage.clone(),
            guesses: Arc::new(service::guessing::GuessThrottle::new(
                config.limits.failed_checks_per_ip,
                Duration::from_secs(config.limits.failed_checks_window_secs),
                config.limits.failed_checks_max_ips,
                Some(metrics.guess_throttled.clone()),
            )),
            imports: imports.clone(),
            quotas: quotas.clone(),
            metrics: metrics.clone(),
        });
        Ok(App {
            origin,
            metrics,
            metrics_listener,
            listen_changes,
            config,
            store,
            hasher,
            cache,
            admin,
            check,
            usage,
            quotas,
            clock: options.clock.clone(),
            tokens,
            tls,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight calls (for at
    /// most `shutdown_grace_secs`) and flushes what is buffered.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        type AdminSvc = KeyAdminServer<grpc::key_admin::KeyAdminApi>;
        type AuthzSvc = AuthorizeServer<grpc::authorize::AuthorizeApi>;
        type EnvoySvc = AuthorizationServer<envoy::ExtAuthz>;
        let App {
            config,
            store,
            admin,
            check,
            usage,
            quotas,
            clock,
            tokens,
            tls,
            cache,
            listen_changes,
            origin,
            metrics,
            metrics_listener,
            hasher,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<AdminSvc>().await;
        health.set_serving::<AuthzSvc>().await;
        health.set_serving::<EnvoySvc>().await;
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            b.register_encoded_file_descriptor_set(grpc::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let internal = |e: tonic_reflection::server::Error| Error::Internal {
            context: "reflection",
            source: Some(Box::new(e)),
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
            .build_v1()
            .map_err(internal)?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
            .build_v1alpha()
            .map_err(internal)?;
        let max_message = config.limits.max_message_bytes;
        let imports = check.imports.clone();
        let refresh_tokens = tokens.clone();
        let key_admin = tonic::service::interceptor::InterceptedService::new(
            KeyAdminServer::new(grpc::key_admin::KeyAdminApi::new(admin, metrics.clone()))
                .max_decoding_message_size(max_message),
            move |req| tokens.check(req),
        );
        let callers = AuthorizeCallers::new(
            config.authorize_token.as_ref().map(|t| t.expose_secret()),
            config.tls.authorize_subjects.clone(),
        );
        let envoy_callers = callers.clone();
        let ext_authz = tonic::service::interceptor::InterceptedService::new(
            AuthorizationServer::new(envoy::ExtAuthz::new(check.clone(), config.envoy.clone()))
                .max_decoding_message_size(max_message),
            move |req| envoy_callers.check(req),
        );
        let authorize = tonic::service::interceptor::InterceptedService::new(
            AuthorizeServer::new(grpc::authorize::AuthorizeApi::new(check))
                .max_decoding_message_size(max_message),
            move |req| callers.check(req),
        );

        let addr = listener.local_addr().map_err(|e| Error::Internal {
            context: "listener",
            source: Some(Box::new(e)),
        })?;
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(listener) = metrics_listener {
            let app = metrics::router(metrics.clone(), cache.clone(), hasher);
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "metrics server failed");
                }
            });
        }
        tokio::spawn(refresh_admin_tokens(
            refresh_tokens,
            imports,
            store.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(watch_store(
            store.clone(),
            health.clone(),
            metrics.ready.clone(),
            Duration::from_secs(config.store_unready_after_secs),
            stop_rx.clone(),
        ));
        if listen_changes {
            let url = config.database_url.expose_secret().to_owned();
            tokio::spawn(service::changes::listen(
                url,
                cache.clone(),
                metrics.clone(),
                origin,
                stop_rx.clone(),
            ));
        }
        // The usage flusher stops only after the server has drained, so its last flush
        // holds every check that was answered.
        let (flush_stop_tx, flush_stop_rx) = tokio::sync::watch::channel(false);
        let flusher = tokio::spawn(usage.clone().run(
            store.clone(),
            clock.clone(),
            Duration::from_millis(config.usage.flush_ms),
            flush_stop_rx.clone(),
        ));
        // Likewise the quota leases: given back once no check can spend them any more.
        let leases = tokio::spawn(quotas.run(clock.clone(), flush_stop_rx));
        tokio::spawn(service::usage::prune(
            store,
            clock,
            Duration::from_secs(config.usage.minute_retention_hours * 3600),
            Duration::from_secs(config.usage.day_retention_days * 86_400),
            stop_rx.clone(),
        ));
        let health_on_stop = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested: draining in-flight calls");
            health_on_stop.set_not_serving::<AdminSvc>().await;
            health_on_stop.set_not_serving::<AuthzSvc>().await;
            health_on_stop.set_not_serving::<EnvoySvc>().await;
            let _ = stop_tx.send(true);
        });
        let mut drained = stop_rx.clone();
        let mut stop_server = stop_rx.clone();
        let router = tonic::transport::Server::builder()
            .timeout(Duration::from_millis(config.limits.request_timeout_ms))
            .concurrency_limit_per_connection(config.limits.max_concurrent_calls_per_connection)
            .max_concurrent_streams(Some(config.limits.max_concurrent_streams))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(key_admin)
            .add_service(authorize)
            .add_service(ext_authz);
        let stop_serving = async move {
            let _ = stop_server.wait_for(|stop| *stop).await;
        };
        type Serving =
            std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
        let server: Serving = match tls {
            Some(tls) => {
                tokio::spawn(
                    tls.clone()
                        .watch(Duration::from_secs(config.tls.reload_secs), stop_rx.clone()),
                );
                Box::pin(
                    router.serve_with_incoming_shutdown(tls::incoming(listener, tls), stop_serving),
                )
            }
            None => {
                // Our own listener, so tonic's accept-time socket options do not apply:
                // without TCP_NODELAY, Nagle plus delayed ACK put 40 ms tails on
                // Envoy -> Keygate calls.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
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
            res = server => res.map_err(|e| Error::Internal { context: "grpc server", source: Some(Box::new(e)) })?,
            _ = deadline => tracing::warn!("shutdown grace period ended with calls still in flight"),
        }
        let _ = flush_stop_tx.send(true);
        let _ = flusher.await;
        let _ = leases.await;
        tracing::info!("keygate stopped");
        Ok(())
    }
}

/// Reloads the stored admin tokens and imported key prefixes every 5 s: tokens made or
/// revoked with `keygate admin`, and keys imported on another replica, take effect without
/// a restart.
async fn refresh_admin_tokens(
    tokens: AdminTokens,
    imports: Arc<service::imports::ImportRegistry>,
    store: Arc<dyn KeyStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = tokens.refresh(store.as_ref()).await {
            tracing::warn!(error = %e, "could not reload admin tokens; keeping the last set");
        }
        if let Err(e) = imports.refresh(store.as_ref()).await {
            tracing::warn!(error = %e, "could not reload imported key prefixes; keeping the last set");
        }
    }
}

/// Pings the store every second. Health turns NOT_SERVING (readiness) only once the store
/// has been unreachable for `unready_after` — cached keys keep working meanwhile — and
/// SERVING again as soon as it answers.
async fn watch_store(
    store: Arc<dyn KeyStore>,
    health: tonic_health::server::HealthReporter,
    ready: Arc<std::sync::atomic::AtomicBool>,
    unready_after: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tonic_health::ServingStatus;
    const SERVICES: [&str; 4] = [
        "",
        "keygate.v1.KeyAdmin",
        "keygate.v1.Authorize",
        "envoy.service.auth.v3.Authorization",
    ];
    let mut down_since: Option<std::time::Instant> = None;
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
            down_since.or(Some(std::time::Instant::now()))
        };
        let want = down_since.is_none_or(|t| t.elapsed() < unready_after);
        if want != serving && !*stop.borrow() {
            serving = want;
            ready.store(want, std::sync::atomic::Ordering::Relaxed);
            let status = if want {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if want {
                tracing::info!("store reachable again: health SERVING");
            } else {
                tracing::warn!(after = ?unready_after, "store unreachable: health NOT_SERVING");
            }
            for s in SERVICES {
                health.set_service_status(s, status).await;
            }
        }
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    App::build(config, options)
        .await?
        .serve(listener, shutdown)
        .await
}

/// `keygate migrate`: applies pending migrations and reports what it did.
pub async fn migrate(config: &Config) -> Result<()> {
    let url = config.database_url.expose_secret();
    let db = store::connect(url, 1, config.db_timeout()).await?;
    let pending = store::pending_migrations(&db).await?;
    store::migrate(&db).await?;
    if pending.is_empty() {
        eprintln!("keygate: schema already up to date");
    } else {
        eprintln!("keygate: applied {}", pending.join(", "));
    }
    Ok(())
}
