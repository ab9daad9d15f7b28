//! With an OTLP endpoint, spans go to it over HTTP/protobuf, and dropping the guard flushes them.
//! The collector is a real HTTP server on a loopback port that records what it is sent; the test
//! decodes the export request as a collector would and finds both spans in it.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use instantchat_telemetry::{
    Exporter, LogFormat, SPAN_TARGET, Settings, init_with, inject, set_parent,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_collector_when_the_guard_drops() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
    let collector = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let _ = tx.send((content_type, body));
            async { StatusCode::OK }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let guard = init_with(Settings {
        service_name: "telemetry-test".into(),
        log_format: LogFormat::Text,
        log_filter: Some("warn".into()),
        exporter: Exporter::Otlp,
        otlp_traces_endpoint: Some(format!("http://{addr}/v1/traces")),
    });
    assert!(guard.tracing_enabled(), "the OTel layer is installed");

    let webhook = tracing::info_span!(target: SPAN_TARGET, "webhook");
    assert!(!webhook.is_disabled());
    let sent = inject(&webhook);
    let traceparent = sent.traceparent.expect("a traceparent is injected");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[3], "01", "sampled");

    // The other side of the broker: a span whose parent is the carried context.
    let deliver = tracing::info_span!(target: SPAN_TARGET, "deliver");
    set_parent(&deliver, Some(&traceparent), sent.tracestate.as_deref());
    let continued = inject(&deliver).traceparent.expect("deliver has a context");
    assert_eq!(continued.split('-').nth(1), Some(parts[1]), "same trace id");
    assert_ne!(
        continued.split('-').nth(2),
        Some(parts[2]),
        "its own span id"
    );
    drop(deliver);
    drop(webhook);

    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .expect("the guard drops without panicking");
    let (content_type, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the collector is called within 10 s")
        .expect("a request");
    assert_eq!(content_type, "application/x-protobuf");
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export request");
    let resource = request.resource_spans[0]
        .resource
        .as_ref()
        .expect("a resource");
    let service = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref()?.value.clone());
    assert_eq!(service, Some(Value::StringValue("telemetry-test".into())));
    let spans: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("a {name} span in {spans:?}"))
    };
    let (webhook, deliver) = (named("webhook"), named("deliver"));
    assert_eq!(hex(&webhook.trace_id), parts[1], "the injected trace id");
    assert_eq!(hex(&webhook.span_id), parts[2], "the injected span id");
    assert_eq!(deliver.trace_id, webhook.trace_id, "one trace");
    assert_eq!(
        deliver.parent_span_id, webhook.span_id,
        "deliver is a child of webhook"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
