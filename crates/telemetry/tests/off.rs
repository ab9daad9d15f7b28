//! Without an exporter there is no OpenTelemetry layer: the webhook-to-socket spans are disabled
//! at their call site, nothing is injected and setting a parent does nothing.

use instantchat_telemetry::{
    Exporter, LogFormat, SPAN_TARGET, Settings, init_with, inject, set_parent,
};

#[test]
fn tracing_off_disables_the_trace_spans_and_injects_nothing() {
    let guard = init_with(Settings {
        service_name: "telemetry-test".into(),
        log_format: LogFormat::Json,
        log_filter: Some("trace".into()),
        exporter: Exporter::Off,
        otlp_traces_endpoint: None,
    });
    assert!(!guard.tracing_enabled());
    assert!(!instantchat_telemetry::tracing_active());
    // Even with RUST_LOG=trace the log layer leaves these spans out.
    let span = tracing::info_span!(target: SPAN_TARGET, "deliver", seq = 1u64);
    assert!(span.is_disabled());
    set_parent(
        &span,
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None,
    );
    assert_eq!(inject(&span), Default::default());
    // Ordinary spans still log.
    assert!(!tracing::info_span!("ordinary").is_disabled());
}
