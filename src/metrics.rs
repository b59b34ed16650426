//! Prometheus metrics: a leaf that services push into, served with the probes on a port of
//! their own (`app::probes`).
//!
//! Why the `prometheus` crate: Prometheus scrapes are how operators of a gateway-side
//! service watch it; the crate is mature, has no runtime of its own, and a registry per
//! server lets the suite assert exact values with several servers in one process.
//! Labels never carry keys, key ids or tenants (cardinality, and secrets).
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a check came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    Grpc,
    ExtAuthz,
}

impl Source {
    fn index(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Source::Grpc => "grpc",
            Source::ExtAuthz => "ext_authz",
        }
    }
}

/// What the usage recorder reports.
#[derive(Clone)]
pub struct UsageMetrics {
    pub dropped: IntCounter,
    pub flush_failures: IntCounter,
    pub buffered: IntGauge,
    pub flush_lag: prometheus::Gauge,
}

/// What the event outbox and the webhook deliverer report.
#[derive(Clone)]
pub struct EventMetrics {
    /// Events written, by type.
    pub written: IntCounterVec,
    /// Delivery attempts by result: `delivered`, `retry`, `failed` (given up).
    pub deliveries: IntCounterVec,
    /// From an event's time to its successful delivery.
    pub delivery_lag_seconds: prometheus::Histogram,
    /// Age of the oldest pending delivery (0 when none), refreshed by the sweep.
    pub oldest_undelivered_seconds: prometheus::Gauge,
    /// Pending deliveries, refreshed by the sweep.
    pub pending_deliveries: IntGauge,
    /// Runtime events (limit exceeded, quota) dropped because the writer's queue was full.
    pub dropped: IntCounter,
    /// Endpoints Keygate disabled because they kept failing.
    pub endpoints_disabled: IntCounter,
}

/// `checks_total` children of one source and decision, by reason code.
type ReasonCounters = std::sync::RwLock<Vec<(&'static str, IntCounter)>>;

/// One server's metrics.
pub struct Metrics {
    registry: Registry,
    checks: IntCounterVec,
    check_errors: IntCounterVec,
    /// Cache lookups by result: hit, miss (loaded from the store), negative (remembered unknown).
    pub cache_lookups: IntCounterVec,
    cache_entries: IntGauge,
    argon2_verifies: IntCounter,
    /// Time of one store lookup plus argon2 verify on a cache miss.
    pub miss_load_seconds: prometheus::Histogram,
    /// KeyAdmin calls by RPC and gRPC code.
    admin_calls: IntCounterVec,
    /// Usage recording: drops, failed flushes, buffer size, flush lag.
    pub usage: UsageMetrics,
    /// Time from a KeyAdmin change on one replica to this replica applying it.
    pub propagation_seconds: prometheus::Histogram,
    /// Checks whose shared limiter failed and that followed `[redis] on_error`.
    pub limiter_fallbacks: IntCounter,
    /// Checks refused because their client IP had too many failed checks.
    pub guess_throttled: IntCounter,
    /// Connections to the gRPC port closed at once because `limits.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Connections to the gRPC port open now.
    pub connections_open: IntGauge,
    /// Reported tokens by channel (`partner`, `admin`) and finding (`found`, `not_a_key`,
    /// `unknown`); found keys by what was done (`leaked_keys_total`).
    leak_reports: IntCounterVec,
    leaked_keys: IntCounterVec,
    /// Leak-report requests refused before any work (bad signature, over budget), by reason.
    leak_refusals: IntCounterVec,
    /// Key events and their webhook deliveries.
    pub events: EventMetrics,
    tenant_label: bool,
    /// Children of `checks` (without the tenant label) resolved once, by source and
    /// decision, then reason: the hot path must not hash label values (prometheus'
    /// `with_label_values` SipHashes every label on every call; profiled at ~2.6k of
    /// ~89k instructions per check before this).
    check_children: [[ReasonCounters; 2]; 2],
    check_seconds_by_source: [prometheus::Histogram; 2],
    /// `cache_lookups` children: hit, miss, negative.
    cache_results: [IntCounter; 3],
    /// `1` while the store is reachable (readiness).
    pub ready: Arc<AtomicBool>,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are literals; a failure is a programming error found by any test.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    /// `tenant_label`: also label checks by tenant (off by default: one series per
    /// tenant per reason can be many).
    pub fn new(tenant_label: bool) -> Arc<Metrics> {
        let registry = Registry::new_custom(Some("keygate".into()), None).unwrap_or_default();
        let checks = must(IntCounterVec::new(
            Opts::new("checks_total", "Decisions by source, decision and reason"),
            if tenant_label {
                &["source", "decision", "reason", "tenant"]
            } else {
                &["source", "decision", "reason"]
            },
        ));
        let check_seconds = must(HistogramVec::new(
            HistogramOpts::new("check_duration_seconds", "Time to decide a check").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["source"],
        ));
        let check_errors = must(IntCounterVec::new(
            Opts::new(
                "check_errors_total",
                "Checks that could not be decided, by gRPC code",
            ),
            &["source", "code"],
        ));
        let cache_lookups = must(IntCounterVec::new(
            Opts::new("cache_lookups_total", "Key cache lookups by result"),
            &["result"],
        ));
        let cache_entries = must(IntGauge::new(
            "cache_entries",
            "Verified keys held in the cache",
        ));
        let argon2_verifies = must(IntCounter::new(
            "argon2_verifies_total",
            "argon2id verifications run",
        ));
        let limiter_fallbacks = must(IntCounter::new(
            "limiter_fallbacks_total",
            "Checks decided by [redis] on_error because the shared limiter failed",
        ));
        for c in [&checks, &check_errors, &cache_lookups] {
            must(registry.register(Box::new(c.clone())));
        }
        must(registry.register(Box::new(check_seconds.clone())));
        must(registry.register(Box::new(cache_entries.clone())));
        must(registry.register(Box::new(argon2_verifies.clone())));
        must(registry.register(Box::new(limiter_fallbacks.clone())));
        let miss_load_seconds = must(prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "cache_miss_load_seconds",
                "Store lookup plus argon2 verify on a cache miss",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        ));
        let admin_calls = must(IntCounterVec::new(
            Opts::new("admin_calls_total", "KeyAdmin calls by RPC and gRPC code"),
            &["rpc", "code"],
        ));
        let usage = UsageMetrics {
            dropped: must(IntCounter::new(
                "usage_dropped_total",
                "Checks not counted in usage because the buffer was full (store down or slow)",
            )),
            flush_failures: must(IntCounter::new(
                "usage_flush_failures_total",
                "Usage flushes that failed to write (rows kept and retried)",
            )),
            buffered: must(IntGauge::new(
                "usage_buffered_rows",
                "Usage rows waiting for the next flush",
            )),
            flush_lag: must(prometheus::Gauge::new(
                "usage_flush_lag_seconds",
                "Age of the oldest usage not yet written after a failed flush; 0 once written",
            )),
        };
        // Series that exist from the start read as 0 instead of "no data", so alerts on
        // them evaluate before the first failure.
        for source in ["grpc", "ext_authz"] {
            for code in ["Unavailable", "InvalidArgument", "Internal"] {
                check_errors.with_label_values(&[source, code]);
            }
        }
        for result in ["hit", "miss", "negative"] {
            cache_lookups.with_label_values(&[result]);
        }
        let propagation_seconds = must(prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "change_propagation_seconds",
                "From a KeyAdmin change on one replica to this replica dropping its cache entry",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        ));
        must(registry.register(Box::new(propagation_seconds.clone())));
        must(registry.register(Box::new(miss_load_seconds.clone())));
        must(registry.register(Box::new(admin_calls.clone())));
        let connections_refused = must(IntCounter::new(
            "connections_refused_total",
            "Connections to the gRPC port closed at once because limits.max_connections were open",
        ));
        must(registry.register(Box::new(connections_refused.clone())));
        let connections_open = must(IntGauge::new(
            "connections_open",
            "Connections to the gRPC port open now",
        ));
        must(registry.register(Box::new(connections_open.clone())));
        let guess_throttled = must(IntCounter::new(
            "failed_checks_throttled_total",
            "Checks refused because their client IP made too many failed checks (key guessing)",
        ));
        must(registry.register(Box::new(guess_throttled.clone())));
        let leak_reports = must(IntCounterVec::new(
            Opts::new(
                "leak_reports_total",
                "Reported leaked tokens by channel and finding",
            ),
            &["channel", "finding"],
        ));
        let leaked_keys = must(IntCounterVec::new(
            Opts::new(
                "leaked_keys_total",
                "Keys reported leaked, by what was done (revoked, disabled, notified, already_revoked)",
            ),
            &["action"],
        ));
        let leak_refusals = must(IntCounterVec::new(
            Opts::new(
                "leak_report_refusals_total",
                "Leak-report requests refused before any work, by reason",
            ),
            &["reason"],
        ));
        for c in [&leak_reports, &leaked_keys, &leak_refusals] {
            must(registry.register(Box::new(c.clone())));
        }
        let events = EventMetrics {
            written: must(IntCounterVec::new(
                Opts::new(
                    "events_written_total",
                    "Key events written to the outbox, by type",
                ),
                &["type"],
            )),
            deliveries: must(IntCounterVec::new(
                Opts::new(
                    "webhook_deliveries_total",
                    "Webhook delivery attempts by result (delivered, retry, failed)",
                ),
                &["result"],
            )),
            delivery_lag_seconds: must(prometheus::Histogram::with_opts(
                HistogramOpts::new(
                    "webhook_delivery_lag_seconds",
                    "From an event to its successful delivery",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0,
                ]),
            )),
            oldest_undelivered_seconds: must(prometheus::Gauge::new(
                "webhook_oldest_undelivered_seconds",
                "Age of the oldest pending webhook delivery; 0 when none",
            )),
            pending_deliveries: must(IntGauge::new(
                "webhook_pending_deliveries",
                "Webhook deliveries not yet delivered nor given up",
            )),
            dropped: must(IntCounter::new(
                "events_dropped_total",
                "Runtime events (rate limit, quota) not written because the writer queue was full",
            )),
            endpoints_disabled: must(IntCounter::new(
                "webhook_endpoints_disabled_total",
                "Webhook endpoints disabled because their deliveries kept failing",
            )),
        };
        for result in ["delivered", "retry", "failed"] {
            events.deliveries.with_label_values(&[result]);
        }
        must(registry.register(Box::new(events.written.clone())));
        must(registry.register(Box::new(events.deliveries.clone())));
        must(registry.register(Box::new(events.delivery_lag_seconds.clone())));
        must(registry.register(Box::new(events.oldest_undelivered_seconds.clone())));
        must(registry.register(Box::new(events.pending_deliveries.clone())));
        must(registry.register(Box::new(events.dropped.clone())));
        must(registry.register(Box::new(events.endpoints_disabled.clone())));
        must(registry.register(Box::new(usage.dropped.clone())));
        must(registry.register(Box::new(usage.flush_failures.clone())));
        must(registry.register(Box::new(usage.buffered.clone())));
        must(registry.register(Box::new(usage.flush_lag.clone())));
        let check_seconds_by_source =
            [Source::Grpc, Source::ExtAuthz].map(|s| check_seconds.with_label_values(&[s.label()]));
        let cache_results =
            ["hit", "miss", "negative"].map(|r| cache_lookups.with_label_values(&[r]));
        Arc::new(Metrics {
            check_children: Default::default(),
            check_seconds_by_source,
            cache_results,
            registry,
            checks,
            check_errors,
            cache_lookups,
            cache_entries,
            argon2_verifies,
            limiter_fallbacks,
            miss_load_seconds,
            admin_calls,
            usage,
            guess_throttled,
            connections_refused,
            connections_open,
            leak_reports,
            leaked_keys,
            leak_refusals,
            propagation_seconds,
            events,
            ready: Arc::new(AtomicBool::new(true)),
            tenant_label,
        })
    }

    /// Records one decided check.
    pub fn check(
        &self,
        source: Source,
        allowed: bool,
        reason: &'static str,
        tenant: Option<&str>,
        took: Duration,
    ) {
        let decision = if allowed { "ALLOW" } else { "DENY" };
        if self.tenant_label {
            self.checks
                .with_label_values(&[source.label(), decision, reason, tenant.unwrap_or("")])
                .inc();
        } else {
            let slot = &self.check_children[source.index()][usize::from(allowed)];
            {
                let known = slot.read().unwrap_or_else(|p| p.into_inner());
                if let Some((_, c)) = known.iter().find(|(r, _)| *r == reason) {
                    c.inc();
                    return self.check_seconds_by_source[source.index()]
                        .observe(took.as_secs_f64());
                }
            }
            let c = self
                .checks
                .with_label_values(&[source.label(), decision, reason]);
            c.inc();
            slot.write()
                .unwrap_or_else(|p| p.into_inner())
                .push((reason, c));
        }
        self.check_seconds_by_source[source.index()].observe(took.as_secs_f64());
    }

    /// Counts one key cache lookup: `hit`, `miss` or `negative`.
    pub fn cache_lookup(&self, result: &'static str) {
        let i = match result {
            "hit" => 0,
            "miss" => 1,
            _ => 2,
        };
        self.cache_results[i].inc();
    }

    /// Records a check that failed (store unreachable, bad request).
    pub fn check_error(&self, source: Source, error: &crate::error::Error) {
        self.check_errors
            .with_label_values(&[source.label(), error.kind()])
            .inc();
    }

    /// Records one reported token: `channel` it came by, `finding` (`found`, `not_a_key`,
    /// `unknown`) and, when found, what was done.
    pub fn leak_report(&self, channel: &str, finding: &str, action: Option<&str>) {
        self.leak_reports
            .with_label_values(&[channel, finding])
            .inc();
        if let Some(a) = action {
            self.leaked_keys.with_label_values(&[a]).inc();
        }
    }

    /// Records a leak-report request refused before any work.
    pub fn leak_refused(&self, reason: &str) {
        self.leak_refusals.with_label_values(&[reason]).inc();
    }

    /// Records one KeyAdmin call.
    pub fn admin_call(&self, rpc: &str, code: tonic::Code) {
        self.admin_calls
            .with_label_values(&[rpc, &format!("{code:?}")])
            .inc();
    }

    /// The text exposition, after refreshing values read from their owners.
    pub fn render(&self, cache_entries: u64, argon2_verifies: u64) -> String {
        self.cache_entries.set(cache_entries as i64);
        let seen = self.argon2_verifies.get();
        if argon2_verifies > seen {
            self.argon2_verifies.inc_by(argon2_verifies - seen);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
