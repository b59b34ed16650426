//! Configuration, layered: compiled defaults → TOML file (`--config` or `KEYGATE_CONFIG`)
//! → `KEYGATE_*` environment variables (a section's fields with `__`, e.g.
//! `KEYGATE_ARGON2__MEMORY_KIB`, `KEYGATE_REDIS__URL`) → command-line flags. Validated
//! once at start-up.
//!
//! Plain data and its validation: other modules are imported only for their config types
//! and validators, none of which imports `config` back (telemetry reads `[log]` and
//! `[otlp]` from here, not the reverse). Each section's defaults are written once, beside
//! its fields (see `config_section!`).
use crate::config_section::config_section;
use crate::error::{Error, Result};
use crate::hashing::Argon2Config;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

config_section! {
    /// Everything Keygate can be told. Every field has a default.
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct Config {
        /// gRPC address (`KEYGATE_LISTEN`, `--listen`).
        pub listen: SocketAddr = "127.0.0.1:50051",
        /// `sqlite://path` (created if missing) or `postgres://user@host/db`
        /// (`KEYGATE_DATABASE_URL`, `--database-url`). May hold a password: never printed.
        pub database_url: SecretString = "sqlite://keygate.db",
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
        pub auto_migrate: bool = false,
        /// The connection pool (`[database]`).
        pub database: DatabaseConfig,
        /// Cost of new key hashes (`[argon2]`).
        pub argon2: Argon2Config,
        /// The cache of verified keys (`[cache]`).
        pub cache: CacheConfig,
        /// Log format and filter (`[log]`).
        pub log: LogConfig,
        /// `memory` (exact per replica) or `redis` (one budget shared by every replica)
        /// (`KEYGATE_RATE_LIMITER`). The one switch that picks the limiter, so it stays at
        /// the top; how Keygate talks to Redis is `[redis]`.
        pub rate_limiter: LimiterKind = "memory",
        /// The shared limiter's Redis and what a check does when it fails (`[redis]`).
        pub redis: RedisConfig,
        /// Seconds the store may be unreachable before health reports NOT_SERVING (cached
        /// keys keep working meanwhile) (`KEYGATE_STORE_UNREADY_AFTER_SECS`).
        pub store_unready_after_secs: u64 = 30,
        /// Trace export (`[otlp]`).
        pub otlp: OtlpConfig,
        /// The plain-HTTP metrics and probe endpoints (`[metrics]`).
        pub metrics: MetricsConfig,
        /// The Envoy ext_authz adapter's listener-wide defaults (`[envoy]`).
        pub envoy: crate::envoy::settings::EnvoyConfig,
        /// Usage recording: flush interval, buffer bound, retention, route table (`[usage]`).
        pub usage: UsageConfig,
        /// How replicas share quota counters (`[quotas]`): lease size, idle release.
        pub quotas: crate::service::quota::QuotaConfig,
        /// Longest a graceful shutdown waits for in-flight calls, in seconds
        /// (`KEYGATE_SHUTDOWN_GRACE_SECS`).
        pub shutdown_grace_secs: u64 = 30,
        /// Leaked-key reports (`[leaks]`): the secret scanning partner endpoint and the
        /// budget of every reporter.
        pub leaks: LeaksConfig,
        /// Key events (`[events]`): webhook delivery, retries, private targets, the
        /// expiry lead and retention.
        pub events: crate::service::events::EventsConfig,
    }
}

config_section! {
    /// Leaked-key reports (`[leaks]`): a secret scanning partner's signed POSTs on a
    /// listener of their own (off while `listen` is unset), and `KeyAdmin/ReportLeakedKeys`.
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LeaksConfig {
        /// Address of the partner endpoint's HTTP listener, e.g. `0.0.0.0:9465`
        /// (`KEYGATE_LEAKS__LISTEN`). Unset: no listener.
        pub listen: Option<SocketAddr>,
        /// The partner's public keys, as GitHub serves them at
        /// `https://api.github.com/meta/public_keys/secret_scanning`
        /// (`KEYGATE_LEAKS__PUBLIC_KEYS_PATH`); required with `listen`. Re-read when it
        /// changes.
        pub public_keys_path: Option<PathBuf>,
        /// Tokens one reporter (a partner's signing key, an admin token) may report per
        /// minute; each may cost an argon2 verify. At least 1000, a full report
        /// (`KEYGATE_LEAKS__TOKENS_PER_MINUTE`).
        pub tokens_per_minute: u64 = 1000,
        /// Largest request body the partner endpoint reads, in bytes
        /// (`KEYGATE_LEAKS__MAX_BODY_BYTES`).
        pub max_body_bytes: usize = 1048576,
    }
}

impl LeaksConfig {
    pub fn validate(&self) -> Result<()> {
        if self.listen.is_some() && self.public_keys_path.is_none() {
            return Err(Error::invalid(
                "leaks.public_keys_path",
                "is required when leaks.listen is set: the endpoint accepts only signed reports",
            ));
        }
        if self.tokens_per_minute < crate::domain::leak::MAX_TOKENS_PER_REPORT as u64 {
            return Err(Error::invalid(
                "leaks.tokens_per_minute",
                "must be at least 1000, so that a full report (1000 tokens) fits in a minute",
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(Error::invalid(
                "leaks.max_body_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

config_section! {
    /// The shared rate limiter's Redis (`[redis]`), used when `rate_limiter = "redis"`.
    /// Redis holds rate-limit counters only (quotas live in the database).
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct RedisConfig {
        /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS
        /// (`KEYGATE_REDIS__URL`); with `cluster`, any one node. May hold a password:
        /// never printed.
        pub url: SecretString = "redis://127.0.0.1:6379",
        /// A Redis Cluster (`KEYGATE_REDIS__CLUSTER`): the other nodes are discovered
        /// from `url`, and each key goes to its slot's master.
        pub cluster: bool = false,
        /// PEM CA certificate(s) to verify a `rediss://` server with, instead of the
        /// system's roots (`KEYGATE_REDIS__CA_PATH`).
        pub ca_path: Option<PathBuf>,
        /// A file holding the Redis password (trailing newline ignored), e.g. a mounted
        /// secret; overrides a password in `url` (`KEYGATE_REDIS__PASSWORD_FILE`).
        pub password_file: Option<PathBuf>,
        /// Prefix of every Redis key Keygate writes (`KEYGATE_REDIS__KEY_PREFIX`).
        pub key_prefix: String = "keygate",
        /// Longest wait for Redis per check, in milliseconds (`KEYGATE_REDIS__TIMEOUT_MS`).
        pub timeout_ms: u64 = 100,
        /// When Redis fails or times out: `local`, `deny` or `allow`
        /// (`KEYGATE_REDIS__ON_ERROR`).
        pub on_error: OnLimiterError = "local",
        /// Refuse a key Redis refused, until its retry_after, without asking Redis again
        /// (`KEYGATE_REDIS__LOCAL_PRECHECK`).
        pub local_precheck: bool = false,
    }
}

/// The policy when the shared limiter fails or times out (`[redis] on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimiterError {
    /// Refuse the call (RATE_LIMITED, retry after 1 s): no call escapes its limit.
    Deny,
    /// Admit the call unlimited: no call fails because of Redis.
    Allow,
    /// Count in this replica's memory instead: each replica enforces the limit on its own
    /// share of the traffic, so a key may get up to replicas × limit meanwhile.
    Local,
}

config_section! {
    /// Trace export over OTLP/gRPC (`[otlp]`); off while `endpoint` is unset.
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct OtlpConfig {
        /// OTLP/gRPC collector for traces, e.g. `http://127.0.0.1:4317`
        /// (`KEYGATE_OTLP__ENDPOINT`). Unset: no traces are exported.
        pub endpoint: Option<String>,
        /// Share of checks traced when the caller sent no sampling decision, 0.0–1.0
        /// (`KEYGATE_OTLP__SAMPLE_RATIO`). A traced check costs ~25 µs of CPU, about what an
        /// untraced one costs in all, so export adds close to this share of the checks' CPU
        /// (README, Performance). A caller's `traceparent` is always followed: sampled →
        /// traced, not sampled → not.
        pub sample_ratio: f64 = 0.05,
        /// Spans buffered for export (`KEYGATE_OTLP__QUEUE_SIZE`); when the collector falls
        /// behind, newer spans are dropped.
        pub queue_size: usize = 32_768,
    }
}

config_section! {
    /// The plain-HTTP `/metrics`, `/healthz` and `/readyz` endpoints (`[metrics]`).
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct MetricsConfig {
        /// Their address (`KEYGATE_METRICS__LISTEN`).
        pub listen: SocketAddr = "127.0.0.1:9464",
        /// Serve them at all (`KEYGATE_METRICS__ENABLED`).
        pub enabled: bool = true,
        /// Label `keygate_checks_total` by tenant too (`KEYGATE_METRICS__TENANT_LABEL`):
        /// with many tenants, that is many series.
        pub tenant_label: bool = false,
    }
}

config_section! {
    /// The database connection pool (`[database]`).
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct DatabaseConfig {
        /// Pool size.
        pub max_connections: u32 = 16,
        /// Connect/acquire timeout in milliseconds.
        pub timeout_ms: u64 = 5000,
    }
}

config_section! {
    /// The cache of verified keys in front of the store (used by Authorize.Check).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct CacheConfig {
        /// Most keys held.
        pub max_entries: u64 = 100_000,
        /// Seconds a verified key is trusted before it is read again.
        pub ttl_secs: u64 = 60,
        /// Seconds an unknown or wrong key is remembered as such.
        pub negative_ttl_secs: u64 = 5,
        /// Most negative entries.
        pub negative_max_entries: u64 = 10_000,
    }
}

config_section! {
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
        /// Seconds between checks of the files for changes (SIGHUP reloads at once).
        pub reload_secs: u64 = 10,
        /// Client certificate subject CNs that act as admin identities
        /// (`[[tls.admin_subjects]]` with `subject`, `role`, optional `tenant`).
        pub admin_subjects: Vec<SubjectAdmin>,
        /// Client certificate subject CNs allowed to call Authorize and ext_authz (besides
        /// holders of `authorize_token`). Non-empty: other callers are refused.
        pub authorize_subjects: Vec<String>,
    }
}

/// A client certificate subject acting as an admin identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAdmin {
    /// The certificate's subject CN.
    pub subject: String,
    /// `admin` or `viewer` (unset: `default_role`).
    #[serde(default = "default_role")]
    pub role: String,
    /// Limit to one tenant; unset: every tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The role of a `[[tls.admin_subjects]]` entry that names none.
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

config_section! {
    /// Server-side limits (`[limits]`): bounds on message size, concurrency and call time.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LimitsConfig {
        /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED). Generous
        /// because ext_authz requests carry the HTTP headers (and a body, if Envoy sends one).
        pub max_message_bytes: usize = 1_048_576,
        /// HTTP/2 streams one connection may have open.
        pub max_concurrent_streams: u32 = 1024,
        /// Calls one connection may have in progress; more wait.
        pub max_concurrent_calls_per_connection: usize = 1024,
        /// Longest a call may run, in milliseconds; then it fails with CANCELLED.
        pub request_timeout_ms: u64 = 10_000,
        /// Failed checks (unknown, wrong or malformed key) one client IP may make per
        /// `failed_checks_window_secs` before its checks of uncached keys are refused
        /// (RATE_LIMITED, limit `failed_checks`). 0: off.
        pub failed_checks_per_ip: u64 = 100,
        /// The window of `failed_checks_per_ip`, in seconds.
        pub failed_checks_window_secs: u64 = 60,
        /// Most client IPs tracked for failed checks (least recently used dropped).
        pub failed_checks_max_ips: u64 = 100_000,
        /// Connections the gRPC port holds open at once; more are closed at once (metric
        /// `keygate_connections_refused_total`, a warning at most every 10 s). Keep it under
        /// the process's file-descriptor limit; the probes port is served apart.
        pub max_connections: usize = 10_000,
        /// A connection that sends nothing for this long after connecting is closed, in
        /// milliseconds (a TLS handshake has 10 s of its own).
        pub handshake_timeout_ms: u64 = 10_000,
        /// Seconds between HTTP/2 pings on a connection, to find peers that vanished.
        pub keepalive_secs: u64 = 60,
        /// Seconds a ping may go unanswered before its connection is closed.
        pub keepalive_timeout_secs: u64 = 20,
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
        if self.max_connections == 0 {
            return Err(Error::invalid(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if self.handshake_timeout_ms == 0
            || self.keepalive_secs == 0
            || self.keepalive_timeout_secs == 0
        {
            return Err(Error::invalid(
                "limits",
                "handshake_timeout_ms, keepalive_secs and keepalive_timeout_secs must be positive",
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

config_section! {
    /// Usage recording (`[usage]`): what every non-dry-run check counts towards, written in
    /// batches. See `service::usage`.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct UsageConfig {
        /// Count per-minute and per-day usage by endpoint and reason. Off: only
        /// `last_used_time` and each key's all-time use count are kept.
        pub enabled: bool = true,
        /// Milliseconds between flushes (also: `last_used_time`).
        pub flush_ms: u64 = 2000,
        /// Most rows buffered between flushes; a full buffer flushes early, and while the
        /// store is down new rows are dropped and counted in `keygate_usage_dropped_total`.
        pub max_buffered_rows: usize = 200_000,
        /// Hours minute buckets are kept.
        pub minute_retention_hours: u64 = 48,
        /// Days day buckets are kept.
        pub day_retention_days: u64 = 400,
        /// Path templates, first match wins (`[[usage.routes]]`); unknown paths count as
        /// `other`.
        pub routes: Vec<crate::domain::usage::RouteConfig>,
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

/// Which rate limiter counts requests (`rate_limiter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimiterKind {
    /// In this replica's memory: exact, but each replica grants the full budget.
    Memory,
    /// In Redis (`[redis]`): one budget shared by every replica.
    Redis,
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one line per event, coloured only on a terminal.
    Pretty,
    /// One JSON object per line, for log pipelines; never coloured.
    Json,
}

config_section! {
    /// Logs (`[log]`), written to stderr.
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct LogConfig {
        /// `pretty` or `json` (`KEYGATE_LOG__FORMAT`).
        pub format: LogFormat = "pretty",
        /// `RUST_LOG`-style filter (`KEYGATE_LOG__FILTER`); `RUST_LOG` wins when set.
        pub filter: String = "info",
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

/// Settings that moved into a section: the old top-level name, its section, its new name
/// there. Refused by name (not as merely unknown) so that an old file or environment says
/// what to write instead.
const RENAMED: &[(&str, &str, &str)] = &[
    ("redis_url", "redis", "url"),
    ("redis_key_prefix", "redis", "key_prefix"),
    ("redis_timeout_ms", "redis", "timeout_ms"),
    ("on_limiter_error", "redis", "on_error"),
    ("limiter_local_precheck", "redis", "local_precheck"),
    ("otlp_endpoint", "otlp", "endpoint"),
    ("otlp_sample_ratio", "otlp", "sample_ratio"),
    ("otlp_queue_size", "otlp", "queue_size"),
    ("metrics_listen", "metrics", "listen"),
    ("metrics_enabled", "metrics", "enabled"),
    ("metrics_tenant_label", "metrics", "tenant_label"),
];

/// Fails on the first old name any layer sets, naming its replacement and the layer. Only
/// names are printed, never a value (an old `redis_url` may hold a password).
fn refuse_renamed(fig: &Figment) -> Result<()> {
    for &(old, section, field) in RENAMED {
        if !fig.contains(old) {
            continue;
        }
        let layer = fig
            .find_metadata(old)
            .map(|m| match &m.source {
                Some(source) => format!("; set by {} {source}", m.name),
                None => format!("; set by {}", m.name),
            })
            .unwrap_or_default();
        let (old_env, new_env) = (
            format!("KEYGATE_{}", old.to_ascii_uppercase()),
            format!(
                "KEYGATE_{}__{}",
                section.to_ascii_uppercase(),
                field.to_ascii_uppercase()
            ),
        );
        return Err(Error::invalid(
            old,
            format!(
                "was renamed: use `[{section}] {field}` (env {new_env}, formerly {old_env}){layer}"
            ),
        ));
    }
    Ok(())
}

impl Config {
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
        refuse_renamed(&fig)?;
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
        if self.redis.timeout_ms == 0 {
            return Err(Error::invalid("redis.timeout_ms", "must be at least 1"));
        }
        if self.rate_limiter == LimiterKind::Redis {
            crate::limiter::redis::check_url(
                self.redis.url.expose_secret(),
                self.redis.ca_path.is_some(),
            )?;
        }
        if !(0.0..=1.0).contains(&self.otlp.sample_ratio) {
            return Err(Error::invalid(
                "otlp.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.otlp.queue_size == 0 {
            return Err(Error::invalid("otlp.queue_size", "must be at least 1"));
        }
        self.usage.validate()?;
        self.quotas.validate()?;
        self.leaks.validate()?;
        self.events.validate()?;
        crate::hashing::SecretHasher::new(self.argon2).map(|_| ())
    }

    /// The database connect/acquire timeout.
    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.database.timeout_ms)
    }
}

#[cfg(test)]
mod tests;
