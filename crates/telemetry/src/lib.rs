//! Logs, traces and process metrics, the same in every InstantChat binary.
//!
//! - [`init`] installs the `tracing` subscriber: text logs (JSON with `LOG_FORMAT=json`) filtered
//!   by `RUST_LOG` (default `info`), and, only when tracing is configured, an OpenTelemetry layer
//!   exporting spans over OTLP/HTTP (protobuf). It returns a [`Guard`] that flushes pending spans
//!   when dropped: keep it alive until the process ends.
//! - Tracing is ON when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//!   is set, or when `INSTANTCHAT_TRACE_TEST_EXPORTER` is `noop` or `memory` (the layer and the
//!   batch processor run as in production, the spans are dropped or kept in memory instead of
//!   sent: to measure tracing's cost without a collector). `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none` turn it off. The other `OTEL_*` variables of the OTLP exporter
//!   and SDK apply (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`...).
//! - Spans that follow an event from webhook to socket use the target [`SPAN_TARGET`]. Only the
//!   OpenTelemetry layer listens to it; the log layer never does (unless `RUST_LOG` names it), so
//!   with tracing off those spans are disabled at their call site and cost what a disabled
//!   `tracing` span costs: one cached check.
//! - [`inject`] and [`set_parent`] carry the W3C trace context (`traceparent`, `tracestate`)
//!   across the broker with OpenTelemetry's `TraceContextPropagator`; both do nothing when
//!   tracing is off.
//! - [`metrics`]: Prometheus collectors evaluated on scrape (resident memory, gauges read from a
//!   closure).

pub mod metrics;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use opentelemetry_sdk;

/// The `tracing` target of the spans that make up a trace from webhook to socket (`webhook`,
/// `normalize`, `publish` in ingest; `deliver` in the gateway). Use it as
/// `tracing::info_span!(target: instantchat_telemetry::SPAN_TARGET, "deliver", ...)`.
pub const SPAN_TARGET: &str = "instantchat_trace";

/// Env var that installs the tracing layer with an in-process exporter instead of OTLP:
/// `noop` drops every span, `memory` keeps the most recent ones.
pub const TEST_EXPORTER_ENV: &str = "INSTANTCHAT_TRACE_TEST_EXPORTER";

/// Spans the `memory` test exporter keeps (the oldest are dropped first).
const MEMORY_EXPORTER_KEEP: usize = 10_000;
/// How long flushing spans may take at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Set while an OpenTelemetry layer is installed: [`inject`] and [`set_parent`] do nothing
/// otherwise.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// How logs are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// `json` (any case) is JSON; anything else is text.
    pub fn parse(s: &str) -> Self {
        if s.trim().eq_ignore_ascii_case("json") {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exporter {
    /// Tracing off: no OpenTelemetry layer at all.
    Off,
    /// OTLP over HTTP/protobuf; endpoint and headers from the `OTEL_EXPORTER_OTLP_*` variables.
    Otlp,
    /// The layer and batch processor run; spans are counted and dropped.
    Noop,
    /// The layer and batch processor run; spans are counted and the latest kept in memory.
    Memory,
}

impl Exporter {
    /// The choice the environment makes (see the crate docs).
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Exporter::Off;
        }
        match var(TEST_EXPORTER_ENV)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            Some("noop" | "none") => return Exporter::Noop,
            Some("memory") => return Exporter::Memory,
            Some(other) => {
                eprintln!("{TEST_EXPORTER_ENV}: `{other}` is neither `noop` nor `memory`; ignored")
            }
            None => {}
        }
        if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        {
            Exporter::Otlp
        } else {
            Exporter::Off
        }
    }
}

/// What [`init_with`] sets up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `service.name` of the spans (unless `OTEL_SERVICE_NAME` is set).
    pub service_name: String,
    pub log_format: LogFormat,
    /// Log filter in `EnvFilter` syntax; `None`: `RUST_LOG`, else `info`.
    pub log_filter: Option<String>,
    pub exporter: Exporter,
    /// The OTLP traces URL (`http://host:4318/v1/traces`); `None`: from the `OTEL_EXPORTER_OTLP_*`
    /// variables.
    pub otlp_traces_endpoint: Option<String>,
}

impl Settings {
    /// Settings from the environment: `RUST_LOG`, the exporter of [`Exporter::from_env`].
    pub fn from_env(service_name: &str, log_format: &str) -> Self {
        Settings {
            service_name: service_name.to_owned(),
            log_format: LogFormat::parse(log_format),
            log_filter: None,
            exporter: Exporter::from_env(),
            otlp_traces_endpoint: None,
        }
    }
}

/// Keeps tracing running; dropping it flushes the spans not yet exported and stops the
/// exporter. Hold it until the process ends.
#[must_use = "dropping the guard stops span export at once"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
    exporter: Exporter,
    exported: Option<Arc<AtomicU64>>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("exporter", &self.exporter)
            .field("exported", &self.exported_spans())
            .finish()
    }
}

impl Guard {
    /// A guard with nothing to flush.
    pub fn disabled() -> Self {
        Guard {
            provider: None,
            exporter: Exporter::Off,
            exported: None,
        }
    }

    /// Whether spans are exported.
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Where spans go.
    pub fn exporter(&self) -> &Exporter {
        &self.exporter
    }

    /// Spans the `noop`/`memory` test exporters received so far (`None` for OTLP or off).
    pub fn exported_spans(&self) -> Option<u64> {
        self.exported.as_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Exports every finished span now (blocks until the exporter answered).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }

    /// Flushes and stops the exporter (what dropping does).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        ACTIVE.store(false, Ordering::Release);
        if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("telemetry: spans not flushed at shutdown: {e}");
        }
        if let Some(n) = &self.exported {
            tracing::info!(
                spans = n.load(Ordering::Relaxed),
                exporter = ?self.exporter,
                "test span exporter stopped"
            );
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets up logs (and traces when configured) from the environment; see the crate docs.
/// Never panics: when a subscriber is installed already (tests), it leaves it alone.
pub fn init(service_name: &str, log_format: &str) -> Guard {
    init_with(Settings::from_env(service_name, log_format))
}

/// [`init`] with explicit settings.
pub fn init_with(settings: Settings) -> Guard {
    let (filter, filter_problem) = log_filter(settings.log_filter.as_deref());
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![log_layer(settings.log_format, filter)];
    let mut problem = filter_problem;
    let (provider, exported) = match build_provider(&settings) {
        Ok(Some((provider, exported))) => {
            layers.push(otel_layer(&provider));
            (Some(provider), exported)
        }
        Ok(None) => (None, None),
        Err(e) => {
            problem.get_or_insert(format!("tracing stays off: {e}"));
            (None, None)
        }
    };
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    let Some(provider) = provider.filter(|_| installed) else {
        return Guard::disabled();
    };
    ACTIVE.store(true, Ordering::Release);
    tracing::info!(exporter = ?settings.exporter, service = %settings.service_name, "tracing on");
    Guard {
        provider: Some(provider),
        exporter: settings.exporter,
        exported,
    }
}

/// Installs a global subscriber whose OpenTelemetry layer exports to `exporter` through the
/// batch processor (as in production), with logs as [`init`] sets them up. For tests that
/// check spans (e.g. with `opentelemetry_sdk::trace::InMemorySpanExporter`, feature `testing`).
/// Returns a disabled guard when a global subscriber exists already.
pub fn init_with_exporter<E: SpanExporter + 'static>(service_name: &str, exporter: E) -> Guard {
    let provider = provider_with(service_name, exporter);
    let (filter, _) = log_filter(None);
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![log_layer(LogFormat::Text, filter), otel_layer(&provider)];
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        return Guard::disabled();
    }
    ACTIVE.store(true, Ordering::Release);
    Guard {
        provider: Some(provider),
        exporter: Exporter::Memory,
        exported: None,
    }
}

/// Whether an OpenTelemetry layer is installed (tracing on).
pub fn tracing_active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// Problems with the log settings, for a service to refuse to start with: `log_format` (the
/// `LOG_FORMAT` value) must be `text` or `json` (any case), and `rust_log` (else the `RUST_LOG`
/// variable), unless empty, must parse as a filter. [`init`] itself falls back (text, `info`)
/// and logs a warning.
pub fn check_log_settings(log_format: &str, rust_log: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    if !["text", "json"].contains(&log_format.trim().to_ascii_lowercase().as_str()) {
        problems.push(format!(
            "LOG_FORMAT={log_format:?} is not valid: set it to `text` or `json`"
        ));
    }
    let filter = rust_log
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|f| !f.trim().is_empty());
    if let Some(filter) = filter
        && let Err(e) = EnvFilter::try_new(&filter)
    {
        problems.push(format!(
            "RUST_LOG={filter:?} does not parse ({e}): use a level such as `info` or directives \
             such as `info,async_nats=warn`"
        ));
    }
    problems
}

/// The log layer's filter: `filter`, else `RUST_LOG`, else `info`; the webhook-to-socket spans
/// are left out unless the filter names their target. Also says what was wrong with the filter.
fn log_filter(filter: Option<&str>) -> (EnvFilter, Option<String>) {
    let wanted = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    let (mut env_filter, problem) = match EnvFilter::try_new(&wanted) {
        Ok(f) => (f, None),
        Err(e) => (
            EnvFilter::new("info"),
            Some(format!(
                "RUST_LOG `{wanted}` is not a valid filter ({e}); using `info`"
            )),
        ),
    };
    if !wanted.contains(SPAN_TARGET)
        && let Ok(off) = format!("{SPAN_TARGET}=off").parse()
    {
        env_filter = env_filter.add_directive(off);
    }
    (env_filter, problem)
}

fn log_layer(format: LogFormat, filter: EnvFilter) -> Box<dyn Layer<Registry> + Send + Sync> {
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_filter(filter).boxed(),
    }
}

/// The OpenTelemetry layer: the webhook-to-socket spans, and warnings and errors as span events.
fn otel_layer(provider: &SdkTracerProvider) -> Box<dyn Layer<Registry> + Send + Sync> {
    let tracer = provider.tracer("instantchat");
    let filter = Targets::new()
        .with_target(SPAN_TARGET, Level::TRACE)
        .with_default(Level::WARN);
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(filter)
        .boxed()
}

type Built = Option<(SdkTracerProvider, Option<Arc<AtomicU64>>)>;

fn build_provider(settings: &Settings) -> Result<Built, String> {
    let name = &settings.service_name;
    Ok(match settings.exporter {
        Exporter::Off => None,
        Exporter::Otlp => {
            use opentelemetry_otlp::{Protocol, WithExportConfig};
            let endpoint = settings.otlp_traces_endpoint.clone().or_else(|| {
                [
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                ]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
            });
            if endpoint.is_some_and(|e| e.trim_start().starts_with("https:")) {
                return Err(
                    "the OTLP exporter speaks plain HTTP only (no TLS built in); point \
                     OTEL_EXPORTER_OTLP_ENDPOINT at a collector over http://, e.g. a local agent"
                        .into(),
                );
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            if let Some(endpoint) = &settings.otlp_traces_endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            let exporter = builder
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
            Some((provider_with(name, exporter), None))
        }
        Exporter::Noop | Exporter::Memory => {
            let exporter = TestExporter::new(settings.exporter == Exporter::Memory);
            let count = exporter.count.clone();
            Some((provider_with(name, exporter), Some(count)))
        }
    })
}

fn provider_with<E: SpanExporter + 'static>(service_name: &str, exporter: E) -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build()
}

/// The `noop` / `memory` exporter of [`TEST_EXPORTER_ENV`].
#[derive(Debug, Clone)]
struct TestExporter {
    count: Arc<AtomicU64>,
    kept: Option<Arc<Mutex<VecDeque<SpanData>>>>,
}

impl TestExporter {
    fn new(keep: bool) -> Self {
        TestExporter {
            count: Arc::default(),
            kept: keep.then(Arc::default),
        }
    }
}

impl SpanExporter for TestExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Some(kept) = &self.kept {
            let mut kept = kept.lock();
            for span in batch {
                if kept.len() >= MEMORY_EXPORTER_KEEP {
                    kept.pop_front();
                }
                kept.push_back(span);
            }
        }
        Ok(())
    }
}

/// A W3C trace context as it travels in message headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct W3cContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Injector for W3cContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

struct Borrowed<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Borrowed<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The W3C context of `span`, to send along with a message. Empty when tracing is off, the
/// span is disabled or not sampled.
pub fn inject(span: &tracing::Span) -> W3cContext {
    let mut out = W3cContext::default();
    if tracing_active() && !span.is_disabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut out);
    }
    out
}

/// Makes the context a message carried (`traceparent`, `tracestate`) the parent of `span`,
/// which must not have been entered yet. Does nothing when tracing is off, the span is
/// disabled or the context is missing or malformed.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if traceparent.is_none() || !tracing_active() || span.is_disabled() {
        return;
    }
    let carrier = Borrowed {
        traceparent,
        tracestate,
    };
    let parent = TraceContextPropagator::new().extract(&carrier);
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_json_case_insensitively() {
        assert_eq!(LogFormat::parse("json"), LogFormat::Json);
        assert_eq!(LogFormat::parse(" JSON "), LogFormat::Json);
        assert_eq!(LogFormat::parse("text"), LogFormat::Text);
        assert_eq!(LogFormat::parse("anything"), LogFormat::Text);
    }

    #[test]
    fn without_tracing_inject_gives_nothing_and_set_parent_is_harmless() {
        let span = tracing::info_span!(target: SPAN_TARGET, "no_subscriber");
        assert_eq!(inject(&span), W3cContext::default());
        set_parent(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        set_parent(&span, Some("garbage"), Some("x=y"));
        set_parent(&span, None, None);
    }

    #[test]
    fn the_log_filter_leaves_trace_spans_out_unless_named() {
        let (filter, problem) = log_filter(Some("debug"));
        assert!(problem.is_none());
        assert!(filter.to_string().contains(&format!("{SPAN_TARGET}=off")));
        let (filter, _) = log_filter(Some(&format!("info,{SPAN_TARGET}=trace")));
        assert!(!filter.to_string().contains(&format!("{SPAN_TARGET}=off")));
        let (_, problem) = log_filter(Some("info,[[["));
        assert!(problem.is_some());
    }
}
