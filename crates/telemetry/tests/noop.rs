//! `INSTANTCHAT_TRACE_TEST_EXPORTER=noop`: the layer and batch processor run, spans are counted
//! and dropped (tracing's cost without a collector).

use instantchat_telemetry::{Exporter, LogFormat, SPAN_TARGET, Settings, init_with, inject};

#[test]
fn the_noop_exporter_counts_the_spans_it_drops() {
    let guard = init_with(Settings {
        service_name: "telemetry-test".into(),
        log_format: LogFormat::Text,
        log_filter: Some("info".into()),
        exporter: Exporter::Noop,
        otlp_traces_endpoint: None,
    });
    assert!(guard.tracing_enabled());
    for i in 0..10u64 {
        let span = tracing::info_span!(target: SPAN_TARGET, "deliver", seq = i);
        assert!(inject(&span).traceparent.is_some());
    }
    guard.flush();
    assert_eq!(guard.exported_spans(), Some(10));
}
