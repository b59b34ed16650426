//! The composition root: builds every part of Keygate from its configuration, serves the
//! gRPC port, runs the background tasks, and owns health and graceful shutdown. Nothing
//! else in the crate wires parts together; handlers and adapters only call services.
mod health;
mod probes;
mod server;
mod store;
mod tasks;

pub use store::{migrate, open_store};

use crate::cache::KeyCache;
use crate::config::{self, Config};
use crate::domain::{self, Clock, SystemClock, UnixMillis};
use crate::error::{Error, Result};
use crate::hashing::SecretHasher;
use crate::limiter::{self, memory::MemoryLimiter, RateLimiter};
use crate::metrics::Metrics;
use crate::service::admin::{AdminService, EventSettings};
use crate::service::check::CheckService;
use crate::service::events::{Deliverer, Emitter, Sweeper};
use crate::service::guessing::GuessThrottle;
use crate::service::imports::ImportRegistry;
use crate::service::leaks::LeakResponder;
use crate::service::quota::QuotaLedger;
use crate::service::reservations::Reservations;
use crate::service::tokens::{self, AdminTokens};
use crate::service::usage::UsageRecorder;
use crate::service::{changes, usage};
use crate::store::changes::{ChangeFeed, PgChangeFeed};
use crate::store::Stores;
use crate::tls::Tls;
use secrecy::{ExposeSecret, SecretString};
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

/// A built Keygate: store opened, schema checked, services wired; not yet serving.
pub struct App {
    config: Config,
    stores: Stores,
    /// Changes to and from other replicas (PostgreSQL store); `None` with one replica.
    feed: Option<Arc<dyn ChangeFeed>>,
    hasher: SecretHasher,
    cache: Arc<KeyCache>,
    admin: AdminService,
    check: Arc<CheckService>,
    usage: Arc<UsageRecorder>,
    quotas: Arc<QuotaLedger>,
    imports: Arc<ImportRegistry>,
    clock: Arc<dyn Clock>,
    tokens: AdminTokens,
    /// TLS material when `[tls]` is configured.
    tls: Option<Arc<Tls>>,
    /// This replica's id in change notifications.
    origin: String,
    metrics: Arc<Metrics>,
    metrics_listener: Option<TcpListener>,
    /// Leak reports from admins and secret scanners.
    leaks: Arc<LeakResponder>,
    /// Reservations of metered calls (their expiry sweep runs with the server).
    reservations: Arc<Reservations>,
    /// The secret scanning partner endpoint, when `[leaks] listen` is set.
    partner: Option<(TcpListener, Arc<crate::scanning::Partner>)>,
    /// Webhook delivery from this replica (`[events] deliver`).
    deliverer: Option<Arc<Deliverer>>,
    /// The expiry events, pruning and backlog gauges.
    sweeper: Arc<Sweeper>,
    /// Writes runtime events (limit exceeded, quota) queued by the decision path.
    event_writer: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// A narrow window into a built server for tests and embedders: the figures worth
/// asserting on, and the actions its background tasks take, run on demand.
#[derive(Clone)]
pub struct Handles {
    hasher: SecretHasher,
    usage: Arc<UsageRecorder>,
    stores: Stores,
    clock: Arc<dyn Clock>,
}

impl Handles {
    /// How many argon2 verifies the server has run (a cache hit runs none).
    pub fn argon2_verifies(&self) -> u64 {
        self.hasher.verify_count()
    }

    /// Usage rows buffered and not yet flushed.
    pub fn buffered_usage_rows(&self) -> usize {
        self.usage.buffered_rows()
    }

    /// Writes the buffered usage now, as the periodic flush would.
    pub async fn flush_usage(&self) -> Result<()> {
        self.usage
            .flush(self.stores.usage.as_ref(), self.clock.now())
            .await
    }

    /// Prunes usage buckets past these retentions as of `now`, as the hourly task would;
    /// returns the rows deleted.
    pub async fn prune_usage(
        &self,
        now: UnixMillis,
        minute_retention: Duration,
        day_retention: Duration,
    ) -> Result<u64> {
        usage::prune_once(
            self.stores.usage.as_ref(),
            now,
            minute_retention,
            day_retention,
        )
        .await
    }
}

impl App {
    pub async fn build(config: Config, options: Options) -> Result<App> {
        let metrics = Metrics::new(config.metrics.tenant_label);
        let sea = open_store(&config)
            .await?
            .count_events_in(metrics.events.written.clone());
        // With a shared (PostgreSQL) store there may be other replicas to tell of changes.
        let feed = PgChangeFeed::of(&sea, config.database_url.expose_secret())
            .map(|f| Arc::new(f) as Arc<dyn ChangeFeed>);
        let stores = Stores::of(sea);
        let clock = options.clock;
        let hasher = SecretHasher::new(config.argon2)?;
        let tokens = admin_tokens(&config, &stores, clock.as_ref())
            .await?
            .with_subjects(config.tls.subject_principals());
        let tls = Tls::from_config(&config.tls)?.map(Arc::new);
        let cache = Arc::new(KeyCache::new(&config.cache));
        let metrics_listener = match config.metrics.enabled {
            true => Some(bind("metrics.listen", config.metrics.listen).await?),
            false => None,
        };
        let usage = Arc::new(UsageRecorder::new(
            Arc::new(domain::usage::RouteTable::new(&config.usage.routes)?),
            config.usage.enabled,
            config.usage.max_buffered_rows,
            Some(metrics.usage.clone()),
        ));
        // Names this replica in its change notifications, so it can skip its own.
        let origin = domain::key::random_base62(12);
        let broadcast = Arc::new(changes::Broadcast::new(
            cache.clone(),
            feed.clone(),
            origin.clone(),
        ));
        let imports = Arc::new(ImportRegistry::default());
        imports.refresh(stores.imports.as_ref()).await?;
        let (emitter, event_writer) = Emitter::new(stores.events.clone(), metrics.clone());
        let quotas = Arc::new(
            QuotaLedger::new(stores.quotas.clone(), config.quotas).with_emitter(emitter.clone()),
        );
        let admin = AdminService::new(
            &stores,
            hasher.clone(),
            clock.clone(),
            broadcast,
            imports.clone(),
            quotas.clone(),
        )
        .with_events(EventSettings {
            allow_private_targets: config.events.allow_private_targets,
            poll: Duration::from_millis(config.events.poll_ms),
        });
        let deliverer = match config.events.deliver {
            true => Some(Arc::new(Deliverer {
                webhooks: stores.webhooks.clone(),
                events: stores.events.clone(),
                outbound: outbound(&config.events)?,
                clock: clock.clone(),
                config: config.events.clone(),
                metrics: metrics.clone(),
                owner: origin.clone(),
            })),
            false => None,
        };
        let sweeper = Arc::new(Sweeper {
            keys: stores.keys.clone(),
            events: stores.events.clone(),
            webhooks: stores.webhooks.clone(),
            clock: clock.clone(),
            config: config.events.clone(),
            metrics: metrics.clone(),
        });
        let leaks = Arc::new(LeakResponder::new(
            stores.keys.clone(),
            hasher.clone(),
            imports.clone(),
            admin.clone(),
            clock.clone(),
            metrics.clone(),
            config.leaks.tokens_per_minute,
        ));
        let partner = match (config.leaks.listen, &config.leaks.public_keys_path) {
            (Some(addr), Some(path)) => {
                let keys = crate::scanning::PartnerKeys::load(path)?;
                let partner = crate::scanning::Partner::new(
                    keys,
                    leaks.clone(),
                    metrics.clone(),
                    config.leaks.max_body_bytes,
                );
                Some((bind("leaks.listen", addr).await?, Arc::new(partner)))
            }
            _ => None,
        };
        let limiter = build_limiter(&config, &metrics)?;
        let reservations = Arc::new(Reservations {
            store: stores.reservations.clone(),
            quota_store: stores.quotas.clone(),
            shared_limiter: limiter.shared(),
            limiter: limiter.clone(),
            clock: clock.clone(),
            origin: origin.clone(),
            ledger: quotas.clone(),
            retention: Duration::from_secs(config.usage.day_retention_days * 86_400),
        });
        let check = Arc::new(CheckService {
            keys: stores.keys.clone(),
            tenants: stores.tenants.clone(),
            hasher: hasher.clone(),
            cache: cache.clone(),
            limiter,
            clock: clock.clone(),
            usage: usage.clone(),
            guesses: Arc::new(GuessThrottle::new(
                config.limits.failed_checks_per_ip,
                Duration::from_secs(config.limits.failed_checks_window_secs),
                config.limits.failed_checks_max_ips,
                Some(metrics.guess_throttled.clone()),
            )),
            imports: imports.clone(),
            quotas: quotas.clone(),
            reservations: reservations.clone(),
            metrics: metrics.clone(),
            events: emitter,
        });
        Ok(App {
            config,
            stores,
            feed,
            hasher,
            cache,
            admin,
            check,
            usage,
            quotas,
            imports,
            clock,
            tokens,
            tls,
            origin,
            metrics,
            metrics_listener,
            leaks,
            reservations,
            partner,
            deliverer,
            sweeper,
            event_writer: Some(Box::pin(event_writer)),
        })
    }

    /// Where the secret scanning partner endpoint is served, if it is.
    pub fn leaks_addr(&self) -> Option<std::net::SocketAddr> {
        self.partner.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The test and embedding window (see [`Handles`]); valid while the app serves.
    pub fn handles(&self) -> Handles {
        Handles {
            hasher: self.hasher.clone(),
            usage: self.usage.clone(),
            stores: self.stores.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// The webhook client, with `events.ca_path`'s roots when set.
fn outbound(events: &crate::service::events::EventsConfig) -> Result<crate::outbound::Outbound> {
    let ca = match &events.ca_path {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            Error::invalid(
                "events.ca_path",
                format!("cannot read {}: {e}", p.display()),
            )
        })?),
        None => None,
    };
    crate::outbound::Outbound::new(
        events.allow_private_targets,
        Duration::from_millis(events.request_timeout_ms),
        ca.as_deref(),
    )
}

/// Binds a listener named by its config field.
async fn bind(field: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid(field, format!("cannot bind {addr}: {e}")))
}

/// The admin tokens this server accepts. On a store with none (and no configured token),
/// one is generated and shown once on stderr.
async fn admin_tokens(config: &Config, stores: &Stores, clock: &dyn Clock) -> Result<AdminTokens> {
    let configured = config.admin_token.as_ref().map(|t| t.expose_secret());
    let (tokens, generated) = tokens::load(stores.tokens.as_ref(), configured, clock.now()).await?;
    if let Some(token) = generated {
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

/// The configured limiter: in memory, or Redis behind the `[redis] on_error` fallback.
fn build_limiter(config: &Config, metrics: &Metrics) -> Result<Arc<dyn RateLimiter>> {
    Ok(match config.rate_limiter {
        config::LimiterKind::Memory => Arc::new(MemoryLimiter::default()),
        config::LimiterKind::Redis => {
            let read = |field: &'static str, path: &std::path::Path| {
                std::fs::read(path).map_err(|e| {
                    Error::invalid(field, format!("cannot read {}: {e}", path.display()))
                })
            };
            let ca_pem = match &config.redis.ca_path {
                Some(p) => Some(read("redis.ca_path", p)?),
                None => None,
            };
            let password = match &config.redis.password_file {
                Some(p) => {
                    let bytes = read("redis.password_file", p)?;
                    let text = String::from_utf8(bytes)
                        .map_err(|_| Error::invalid("redis.password_file", "is not UTF-8 text"))?;
                    Some(SecretString::from(
                        text.trim_end_matches(['\r', '\n']).to_owned(),
                    ))
                }
                None => None,
            };
            let target = limiter::redis::RedisTarget {
                url: config.redis.url.clone(),
                cluster: config.redis.cluster,
                ca_pem,
                password,
            };
            let redis = limiter::redis::RedisLimiter::connect_to(
                target,
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

/// Serves until SIGTERM or SIGINT, then drains in-flight calls and returns.
pub async fn run(config: Config, listener: TcpListener) -> Result<()> {
    run_with(config, listener, Options::default(), shutdown_signal()).await
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
