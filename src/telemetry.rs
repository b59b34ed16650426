//! Logs and traces. Never given a key, a hash or an admin token: callers log ids only.
//!
//! Traces go to an OTLP collector over gRPC when `[otlp] endpoint` is set (off by default).
//! A W3C `traceparent` in a Check's gRPC metadata, or in the HTTP headers Envoy forwards
//! to ext_authz, makes Keygate's spans children of the caller's trace.
use crate::config::{LogConfig, LogFormat, OtlpConfig};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What `init` set up; `shutdown` flushes buffered spans.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (on graceful shutdown).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                eprintln!("keygate: flushing traces failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the configured filter. With an
/// OTLP endpoint it must run inside the tokio runtime (the exporter's channel lives
/// there). A second call (tests that start several servers) is a no-op.
pub fn init(cfg: &LogConfig, otlp: &OtlpConfig) -> Telemetry {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.filter));
    let ansi = colour(
        cfg.format,
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let fmt = match cfg.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = otlp.endpoint.as_deref().and_then(|endpoint| {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build();
        match exporter {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_span_processor(
                        BatchSpanProcessor::builder(exporter)
                            .with_batch_config(batch_config(otlp.queue_size))
                            .build(),
                    )
                    // Roots are sampled in `check_span`, before any span exists (an
                    // unsampled span still costs the OpenTelemetry layer its full price).
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("keygate")
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("keygate: OTLP exporter not started: {e}");
                None
            }
        }
    });
    // Only what the span tree needs: no per-span thread name, source location, level,
    // target or busy/idle timing (each costs allocations or clock reads on every check).
    if provider.is_some() {
        let _ = ROOT_SAMPLE_RATIO.set(otlp.sample_ratio);
    }
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("keygate"))
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

/// Whether log lines get ANSI colour: only `pretty` ones, only when stderr (where logs go)
/// is a terminal, and not when `NO_COLOR` is set to anything but the empty string
/// (no-color.org). Otherwise `keygate serve > log` or a container's log collector would
/// get escape sequences in every line.
fn colour(format: LogFormat, stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    format == LogFormat::Pretty && stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The batch processor's settings: batches of up to 2,048 spans, every second at the
/// latest, from a queue of `queue_size`. `OTEL_BSP_*` variables, when set, win.
fn batch_config(queue_size: usize) -> opentelemetry_sdk::trace::BatchConfig {
    use opentelemetry_sdk::trace::BatchConfigBuilder;
    let set = |name: &str| std::env::var_os(name).is_some();
    let mut b = BatchConfigBuilder::default();
    if !set("OTEL_BSP_MAX_QUEUE_SIZE") {
        b = b.with_max_queue_size(queue_size);
    }
    if !set("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        b = b.with_max_export_batch_size(queue_size.min(2048));
    }
    if !set("OTEL_BSP_SCHEDULE_DELAY") {
        b = b.with_scheduled_delay(std::time::Duration::from_secs(1));
    }
    b.build()
}

/// Reads W3C trace context from gRPC metadata.
pub struct MetadataExtractor<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Share of root checks traced; set only while traces are exported.
static ROOT_SAMPLE_RATIO: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Whether a W3C `traceparent` says "sampled"; `None` when it is not a valid one.
fn traceparent_sampled(tp: &str) -> Option<bool> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    match parts.as_slice() {
        [version, trace, span, flags]
            if version.len() == 2 && trace.len() == 32 && span.len() == 16 && flags.len() == 2 =>
        {
            u8::from_str_radix(flags, 16).ok().map(|f| f & 1 == 1)
        }
        _ => None,
    }
}

/// Whether this check is traced: the caller's decision when it sent one, else a draw at
/// `[otlp] sample_ratio`. Never while traces are not exported: a check span then has no
/// reader (no log line is written per check), and creating it costs ~16 µs of CPU per
/// check in the subscriber (measured by `cargo bench --bench keygate -- --scenario tracing`).
fn sampled(carrier: Option<&dyn Extractor>) -> bool {
    let Some(&ratio) = ROOT_SAMPLE_RATIO.get() else {
        return false;
    };
    match carrier
        .and_then(|c| c.get("traceparent"))
        .and_then(traceparent_sampled)
    {
        Some(decided) => decided,
        None => rand::random::<f64>() < ratio,
    }
}

/// A child span of the current check, or no span when the check is not traced (so an
/// untraced check creates no spans at all, and no orphan roots).
#[macro_export]
macro_rules! child_span {
    ($name:literal) => {
        if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else {
            tracing::info_span!($name)
        }
    };
}

/// The span of one check (`Authorize/Check` or `ext_authz/Check`), made a child of the
/// caller's trace when the carrier has a `traceparent`, or no span when the check is not
/// sampled. The parent must be set before the span is entered, so entry points create it
/// here and enter it with `instrument`.
pub fn check_span(name: &'static str, carrier: Option<&dyn Extractor>) -> tracing::Span {
    use tracing::field::Empty;
    if !sampled(carrier) {
        return tracing::Span::none();
    }
    let span = match name {
        "ext_authz/Check" => tracing::info_span!(
            "ext_authz/Check",
            key_id = Empty,
            tenant_id = Empty,
            decision = Empty,
            reason = Empty,
            cache = Empty
        ),
        _ => tracing::info_span!(
            "Authorize/Check",
            key_id = Empty,
            tenant_id = Empty,
            decision = Empty,
            reason = Empty,
            cache = Empty
        ),
    };
    if let Some(carrier) = carrier.filter(|c| c.get("traceparent").is_some()) {
        let _ = span.set_parent(TraceContextPropagator::new().extract(carrier));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::{colour, traceparent_sampled};
    use crate::config::LogFormat;

    #[test]
    fn colour_only_for_pretty_logs_on_a_terminal_without_no_color() {
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        assert!(colour(LogFormat::Pretty, true, None));
        assert!(
            colour(LogFormat::Pretty, true, empty),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(LogFormat::Pretty, false, None), "a file or a pipe");
        assert!(!colour(LogFormat::Pretty, true, set), "NO_COLOR");
        assert!(
            !colour(LogFormat::Json, true, None),
            "JSON is never coloured"
        );
    }

    #[test]
    fn traceparent_flags_decide_sampling() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let s = "00f067aa0ba902b7";
        assert_eq!(traceparent_sampled(&format!("00-{t}-{s}-01")), Some(true));
        assert_eq!(traceparent_sampled(&format!("00-{t}-{s}-00")), Some(false));
        assert_eq!(traceparent_sampled(&format!("00-{t}-{s}-03")), Some(true));
        assert_eq!(traceparent_sampled("garbage"), None);
        assert_eq!(traceparent_sampled(&format!("00-{t}-{s}-zz")), None);
    }
}
