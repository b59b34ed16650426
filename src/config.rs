//! Configuration, layered: compiled defaults → TOML file (`--config` or `KEYGATE_CONFIG`)
//! → `KEYGATE_*` environment variables (nested fields with `__`, e.g.
//! `KEYGATE_ARGON2__MEMORY_KIB`) → command-line flags. Validated once at start-up.
use crate::error::{Error, Result};
use crate::hashing::Argon2Config;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything Keygate can be told. Every field has a default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address (`KEYGATE_LISTEN`, `--listen`). Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// `sqlite://keygate.db` (default; created if missing) or `postgres://user@host/db`
    /// (`KEYGATE_DATABASE_URL`, `--database-url`). May hold a password: never printed.
    pub database_url: SecretString,
    /// Break-glass platform admin token (`KEYGATE_ADMIN_TOKEN`). Unset: tokens stored in
    /// the database are used, and the first start on an empty database generates one.
    pub admin_token: Option<SecretString>,
    /// Token callers of `Authorize.Check` and ext_authz must present as
    /// `authorization: Bearer <token>` metadata (`KEYGATE_AUTHORIZE_TOKEN`). Unset: any
    /// caller that reaches the port may check keys.
    pub authorize_token: Option<SecretString>,
    /// Limits on what one caller can make the server do (`[limits]`).
    pub limits: LimitsConfig,
    /// TLS and mTLS on the gRPC port (`[tls]`). Unset certificate: plaintext.
    pub tls: TlsConfig,
    /// Apply pending migrations on start (`KEYGATE_AUTO_MIGRATE`, `--auto-migrate`).
    /// SQLite is always migrated; PostgreSQL refuses to start on an old schema without it.
    pub auto_migrate: bool,
    pub database: DatabaseConfig,
    pub argon2: Argon2Config,
    pub cache: CacheConfig,
    pub log: LogConfig,
    /// `memory` (default: exact per replica) or `redis` (one budget shared by every
    /// replica) (`KEYGATE_RATE_LIMITER`).
    pub rate_limiter: LimiterKind,
    /// Redis for the shared limiter (`KEYGATE_REDIS_URL`). May hold a password: never printed.
    pub redis_url: SecretString,
    /// Prefix of every Redis key Keygate writes. Default `keygate`.
    pub redis_key_prefix: String,
    /// Longest wait for Redis per check, in milliseconds. Default 100.
    pub redis_timeout_ms: u64,
    /// When Redis fails: `local` (default), `deny` or `allow` (`KEYGATE_ON_LIMITER_ERROR`).
    pub on_limiter_error: crate::limiter::resilient::OnLimiterError,
    /// Refuse a key the shared limiter refused, until its retry_after, without asking
    /// Redis again (`KEYGATE_LIMITER_LOCAL_PRECHECK`). Default false.
    pub limiter_local_precheck: bool,
    /// Seconds the store may be unreachable before health reports NOT_SERVING (cached
    /// keys keep working meanwhile). Default 30.
    pub store_unready_after_secs: u64,
    /// OTLP/gRPC collector for traces, e.g. `http://127.0.0.1:4317`
    /// (`KEYGATE_OTLP_ENDPOINT`). Unset (default): no traces are exported.
    pub otlp_endpoint: Option<String>,
    /// Share of checks traced when the caller sent no sampling decision, 0.0–1.0
    /// (`KEYGATE_OTLP_SAMPLE_RATIO`). Default 0.05: a traced check costs ~25 µs of CPU,
    /// so 5 % keeps export overhead near 5 % (README, Performance). A caller's `traceparent` is always
    /// followed: sampled → traced, not sampled → not.
    pub otlp_sample_ratio: f64,
    /// Spans buffered for export (`KEYGATE_OTLP_QUEUE_SIZE`); when the collector falls
    /// behind, newer spans are dropped. Default 32768.
    pub otlp_queue_size: usize,
    /// Address of the plain-HTTP `/metrics`, `/healthz` and `/readyz` endpoints
    /// (`KEYGATE_METRICS_LISTEN`). Default `127.0.0.1:9464`.
    pub metrics_listen: SocketAddr,
    /// Serve them at all (`KEYGATE_METRICS_ENABLED`). Default true.
    pub metrics_enabled: bool,
    /// Label `keygate_checks_total` by tenant too (`KEYGATE_METRICS_TENANT_LABEL`).
    /// Default false: with many tenants that is many series.
    pub metrics_tenant_label: bool,
    /// The Envoy ext_authz adapter's listener-wide defaults (`[envoy]`).
    pub envoy: crate::envoy::settings::EnvoyConfig,
    /// Usage recording: flush interval, buffer bound, retention, route table (`[usage]`).
    pub usage: UsageConfig,
    /// How replicas share quota counters (`[quotas]`): lease size, idle release.
    pub quotas: crate::service::quota::QuotaConfig,
    /// Longest a graceful shutdown waits for in-flight calls, in seconds.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Pool size. Default 16.
    pub max_connections: u32,
    /// Connect/acquire timeout in milliseconds. Default 5000.
    pub timeout_ms: u64,
}

/// The cache of verified keys in front of the store (used by Authorize.Check).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most keys held. Default 100000.
    pub max_entries: u64,
    /// Seconds a verified key is trusted before it is read again. Default 60.
    pub ttl_secs: u64,
    /// Seconds an unknown or wrong key is remembered as such. Default 5.
    pub negative_ttl_secs: u64,
    /// Most negative entries. Default 10000.
    pub negative_max_entries: u64,
}

/// TLS on the gRPC port (`[tls]`), and who a client certificate (mTLS) stands for.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (`KEYGATE_TLS__CERT_PATH`); with `key_path`, turns TLS on.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (`KEYGATE_TLS__KEY_PATH`).
    pub key_path: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate they signed (mTLS).
    pub client_ca_path: Option<PathBuf>,
    /// Seconds between checks of the files for changes (SIGHUP reloads at once). Default 10.
    pub reload_secs: u64,
    /// Client certificate subject CNs that act as admin identities
    /// (`[[tls.admin_subjects]]` with `subject`, `role`, optional `tenant`).
    pub admin_subjects: Vec<SubjectAdmin>,
    /// Client certificate subject CNs allowed to call Authorize and ext_authz (besides
    /// holders of `authorize_token`). Non-empty: other callers are refused.
    pub authorize_subjects: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_path: None,
            key_path: None,
            client_ca_path: None,
            reload_secs: 10,
            admin_subjects: Vec::new(),
            authorize_subjects: Vec::new(),
        }
    }
}

/// A client certificate subject acting as an admin identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAdmin {
    /// The certificate's subject CN.
    pub subject: String,
    /// `admin` (default) or `viewer`.
    #[serde(default = "default_role")]
    pub role: String,
    /// Limit to one tenant; unset: every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

fn default_role() -> String {
    "admin".into()
}

impl TlsConfig {
    fn validate(&self) -> Result<()> {
        if self.cert_path.is_some() != self.key_path.is_some() {
            return Err(Error::invalid("tls", "cert_path and key_path go together"));
        }
        if self.client_ca_path.is_some() && self.cert_path.is_none() {
            return Err(Error::invalid(
                "tls.client_ca_path",
                "needs cert_path and key_path (mTLS is TLS first)",
            ));
        }
        if (!self.admin_subjects.is_empty() || !self.authorize_subjects.is_empty())
            && self.client_ca_path.is_none()
        {
            return Err(Error::invalid(
                "tls",
                "admin_subjects and authorize_subjects need client_ca_path",
            ));
        }
        for (i, a) in self.admin_subjects.iter().enumerate() {
            crate::domain::access::Role::parse(&format!("tls.admin_subjects[{i}].role"), &a.role)?;
            if a.subject.is_empty() {
                return Err(Error::invalid(
                    format!("tls.admin_subjects[{i}].subject"),
                    "is required",
                ));
            }
        }
        if self.reload_secs == 0 {
            return Err(Error::invalid("tls.reload_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// The admin identities of `admin_subjects`, keyed by subject.
    pub fn subject_principals(&self) -> Vec<(String, crate::domain::access::Principal)> {
        self.admin_subjects
            .iter()
            .filter_map(|a| {
                let role = crate::domain::access::Role::parse("role", &a.role).ok()?;
                Some((
                    a.subject.clone(),
                    crate::domain::access::Principal {
                        id: format!("cert:{}", a.subject),
                        role,
                        tenant: a.tenant.clone(),
                    },
                ))
            })
            .collect()
    }
}

/// Server-side limits (`[limits]`): bounds on message size, concurrency and call time.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED). Default
    /// 1 MiB: ext_authz requests carry the HTTP headers (and a body, if Envoy sends one).
    pub max_message_bytes: usize,
    /// HTTP/2 streams one connection may have open. Default 1024.
    pub max_concurrent_streams: u32,
    /// Calls one connection may have in progress; more wait. Default 1024.
    pub max_concurrent_calls_per_connection: usize,
    /// Longest a call may run, in milliseconds; then it fails with CANCELLED. Default
    /// 10000.
    pub request_timeout_ms: u64,
    /// Failed checks (unknown, wrong or malformed key) one client IP may make per
    /// `failed_checks_window_secs` before its checks of uncached keys are refused
    /// (RATE_LIMITED, limit `failed_checks`). 0: off. Default 100.
    pub failed_checks_per_ip: u64,
    /// Default 60.
    pub failed_checks_window_secs: u64,
    /// Most client IPs tracked for failed checks (least recently used dropped). Default
    /// 100000.
    pub failed_checks_max_ips: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 1 << 20,
            max_concurrent_streams: 1024,
            max_concurrent_calls_per_connection: 1024,
            request_timeout_ms: 10_000,
            failed_checks_per_ip: 100,
            failed_checks_window_secs: 60,
            failed_checks_max_ips: 100_000,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<()> {
        if self.max_message_bytes < 1024 {
            return Err(Error::invalid(
                "limits.max_message_bytes",
                "must be at least 1024",
            ));
        }
        if self.max_concurrent_streams == 0 || self.max_concurrent_calls_per_connection == 0 {
            return Err(Error::invalid(
                "limits",
                "max_concurrent_streams and max_concurrent_calls_per_connection must be at least 1",
            ));
        }
        if self.failed_checks_window_secs == 0 || self.failed_checks_max_ips == 0 {
            return Err(Error::invalid(
                "limits",
                "failed_checks_window_secs and failed_checks_max_ips must be at least 1",
            ));
        }
        if self.request_timeout_ms < 10 {
            return Err(Error::invalid(
                "limits.request_timeout_ms",
                "must be at least 10",
            ));
        }
        Ok(())
    }
}

/// Usage recording (`[usage]`): what every non-dry-run check counts towards, written in
/// batches. See `service::usage`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Count per-minute and per-day usage by endpoint and reason. Default true. Off:
    /// only `last_used_time` and each key's all-time use count are kept.
    pub enabled: bool,
    /// Milliseconds between flushes (also: `last_used_time`). Default 2000.
    pub flush_ms: u64,
    /// Most rows buffered between flushes; a full buffer flushes early, and while the store
    /// is down new rows are dropped and counted in `keygate_usage_dropped_total`.
    /// Default 200000.
    pub max_buffered_rows: usize,
    /// Hours minute buckets are kept. Default 48.
    pub minute_retention_hours: u64,
    /// Days day buckets are kept. Default 400.
    pub day_retention_days: u64,
    /// Path templates, first match wins (`[[usage.routes]]`); unknown paths count as `other`.
    pub routes: Vec<crate::domain::usage::RouteConfig>,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            flush_ms: 2000,
            max_buffered_rows: 200_000,
            minute_retention_hours: 48,
            day_retention_days: 400,
            routes: Vec::new(),
        }
    }
}

impl UsageConfig {
    fn validate(&self) -> Result<()> {
        if self.flush_ms < 10 {
            return Err(Error::invalid("usage.flush_ms", "must be at least 10"));
        }
        if self.max_buffered_rows < 100 {
            return Err(Error::invalid(
                "usage.max_buffered_rows",
                "must be at least 100",
            ));
        }
        if self.minute_retention_hours == 0 || self.day_retention_days == 0 {
            return Err(Error::invalid(
                "usage",
                "minute_retention_hours and day_retention_days must be at least 1",
            ));
        }
        crate::domain::usage::RouteTable::new(&self.routes).map(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` (default) or `json`.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; `RUST_LOG` wins when set. Default `info`.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: SecretString::from("sqlite://keygate.db"),
            admin_token: None,
            authorize_token: None,
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            auto_migrate: false,
            database: DatabaseConfig::default(),
            argon2: Argon2Config::default(),
            cache: CacheConfig::default(),
            log: LogConfig::default(),
            envoy: Default::default(),
            otlp_endpoint: None,
            otlp_sample_ratio: 0.05,
            otlp_queue_size: 32_768,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            metrics_enabled: true,
            metrics_tenant_label: false,
            rate_limiter: LimiterKind::Memory,
            limiter_local_precheck: false,
            store_unready_after_secs: 30,
            redis_url: SecretString::from("redis://127.0.0.1:6379"),
            redis_key_prefix: "keygate".into(),
            redis_timeout_ms: 100,
            on_limiter_error: crate::limiter::resilient::OnLimiterError::Local,
            shutdown_grace_secs: 30,
            usage: UsageConfig::default(),
            quotas: Default::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            max_connections: 16,
            timeout_ms: 5000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            ttl_secs: 60,
            negative_ttl_secs: 5,
            negative_max_entries: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// Values given as command-line flags: the last layer.
#[derive(Debug, Default, serde::Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_migrate: Option<bool>,
}

impl Config {
    /// What the trace exporter is told.
    pub fn otlp_settings(&self) -> crate::telemetry::OtlpSettings<'_> {
        crate::telemetry::OtlpSettings {
            endpoint: self.otlp_endpoint.as_deref(),
            sample_ratio: self.otlp_sample_ratio,
            queue_size: self.otlp_queue_size,
        }
    }

    /// Loads the layers. `file` defaults to `KEYGATE_CONFIG`; a named file must exist.
    pub fn load(file: Option<PathBuf>, overrides: Overrides) -> Result<Config> {
        let file = file.or_else(|| std::env::var_os("KEYGATE_CONFIG").map(PathBuf::from));
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::invalid(
                    "config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(
                Env::prefixed("KEYGATE_")
                    .split("__")
                    // KEYGATE_CONFIG names the file; it is not a setting.
                    .filter(|k| !k.as_str().eq_ignore_ascii_case("config")),
            )
            .merge(Serialized::defaults(overrides));
        Self::extract(fig)
    }

    /// A configuration from TOML text alone (no environment, no flags): what
    /// `keygate check-config` and the config fuzz target feed the same extraction.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        Self::extract(Figment::new().merge(Toml::string(text)))
    }

    fn extract(fig: Figment) -> Result<Config> {
        let cfg: Config = fig.extract().map_err(|e| {
            let field = if e.path.is_empty() {
                "config".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            Error::invalid(field, format!("{}{source}", e.kind))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<()> {
        let url = self.database_url.expose_secret();
        if crate::store::Backend::of_url(url).is_none() {
            return Err(Error::invalid(
                "database_url",
                "must start with sqlite: or postgres:// (or postgresql://)",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(Error::invalid(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if let Some(t) = &self.admin_token {
            if t.expose_secret().len() < 16 {
                return Err(Error::invalid(
                    "admin_token",
                    "must be at least 16 characters",
                ));
            }
        }
        if let Some(t) = &self.authorize_token {
            if t.expose_secret().len() < 16 {
                return Err(Error::invalid(
                    "authorize_token",
                    "must be at least 16 characters",
                ));
            }
        }
        self.limits.validate()?;
        self.tls.validate()?;
        if self.cache.max_entries == 0 || self.cache.ttl_secs == 0 {
            return Err(Error::invalid(
                "cache",
                "max_entries and ttl_secs must be at least 1",
            ));
        }
        self.envoy.validate()?;
        if self.redis_timeout_ms == 0 {
            return Err(Error::invalid("redis_timeout_ms", "must be at least 1"));
        }
        if self.rate_limiter == LimiterKind::Redis {
            redis::Client::open(self.redis_url.expose_secret())
                .map_err(|_| Error::invalid("redis_url", "is not a redis:// URL"))?;
        }
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            return Err(Error::invalid(
                "otlp_sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.otlp_queue_size == 0 {
            return Err(Error::invalid("otlp_queue_size", "must be at least 1"));
        }
        self.usage.validate()?;
        self.quotas.validate()?;
        crate::hashing::SecretHasher::new(self.argon2).map(|_| ())
    }

    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.database.timeout_ms)
    }
}
