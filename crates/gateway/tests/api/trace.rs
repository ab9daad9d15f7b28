//! One trace from the webhook POST to the gateway's fan-out: ingest's `webhook` span (with its
//! `normalize` and `publish` children) and the gateway's `deliver` span of the same event share
//! one trace id, `deliver` being a child of `webhook` through the W3C context carried in the
//! NATS headers. Real nats-server, ingest and gateway in-process, a real Socket.IO client; the
//! spans go through the batch processor to opentelemetry_sdk's InMemorySpanExporter.
//!
//! It installs the process-wide subscriber: the only test here that does (nextest runs each test
//! in a process of its own).

use std::time::{Duration, Instant};

use crate::support::*;
use instantchat_telemetry::opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use instantchat_testsupport::receipt::Receipt;
use instantchat_testsupport::{NatsServer, SioClient};
use serde_json::json;

const ACCOUNT: &str = "17841400000000009";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Flushes and looks for the spans named `name` until `found` holds for one (at most [`WAIT`]).
async fn wait_span(
    guard: &instantchat_telemetry::Guard,
    exporter: &InMemorySpanExporter,
    what: &str,
    found: impl Fn(&SpanData) -> bool,
) -> SpanData {
    let deadline = Instant::now() + WAIT;
    loop {
        guard.flush();
        let spans = exporter
            .get_finished_spans()
            .expect("the exporter is readable");
        if let Some(span) = spans.iter().find(|s| found(s)) {
            return span.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {what} span within {WAIT:?}; have: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_span_continues_the_trace_of_the_webhook_that_caused_it() {
    let exporter = InMemorySpanExporter::default();
    let guard = instantchat_telemetry::init_with_exporter("instantchat-test", exporter.clone());
    assert!(guard.tracing_enabled(), "the OTel layer is installed");

    let nats = NatsServer::start_new();
    let ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(&nats.url(), &[]).await;
    let http = http();
    wait_status(&http, &format!("{}/readyz", ingest.url), 200).await;
    wait_status(&http, &format!("{}/readyz", gateway.url), 200).await;

    let mut client = SioClient::connect(
        &gateway.url,
        Some(&json!({ "token": token("tracy", &[ACCOUNT]) })),
    )
    .await
    .expect("the client connects");
    client
        .emit_with_ack("subscribe", &json!({ "eventTypes": ["comments"] }), WAIT)
        .await
        .expect("the client subscribes");

    // 1. A webhook without a trace context: ingest starts the trace.
    let body = seed_body("traced_1", "comments", ACCOUNT);
    let signature = sign(&body);
    let (status, receipt) = post_webhook(&http, &ingest.url, body, &signature, &[]).await;
    assert_eq!(status, 200, "{receipt}");
    let seq = Receipt::from_json(&receipt).only_seq();
    let event = client
        .wait_for_event("webhook_event", WAIT, |e| e["seq"] == seq)
        .await
        .expect("the client receives the event");
    assert_eq!(event["id"], "comments:traced_1");

    let deliver = wait_span(&guard, &exporter, "deliver", |s| {
        s.name == "deliver" && attribute(s, "seq").as_deref() == Some(&seq.to_string())
    })
    .await;
    let trace_id = deliver.span_context.trace_id();
    let webhook = wait_span(&guard, &exporter, "webhook", |s| {
        s.name == "webhook" && s.span_context.trace_id() == trace_id
    })
    .await;
    assert_eq!(
        deliver.parent_span_id,
        webhook.span_context.span_id(),
        "deliver is a child of the webhook span"
    );
    assert!(deliver.parent_span_is_remote, "its parent came over NATS");
    assert_eq!(attribute(&deliver, "sockets").as_deref(), Some("1"));
    assert_eq!(attribute(&deliver, "sent").as_deref(), Some("1"));
    assert_eq!(attribute(&webhook, "outcome").as_deref(), Some("accepted"));
    assert_eq!(attribute(&webhook, "events").as_deref(), Some("1"));
    for child in ["normalize", "publish"] {
        let span = wait_span(&guard, &exporter, child, |s| {
            s.name == child && s.span_context.trace_id() == trace_id
        })
        .await;
        assert_eq!(
            span.parent_span_id,
            webhook.span_context.span_id(),
            "{child}"
        );
    }

    // 2. A caller that sends its own W3C context: the whole path joins the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let body = seed_body("traced_2", "comments", ACCOUNT);
    let signature = sign(&body);
    let (status, receipt) = post_webhook(
        &http,
        &ingest.url,
        body,
        &signature,
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{receipt}");
    let seq = Receipt::from_json(&receipt).only_seq();
    client
        .wait_for_event("webhook_event", WAIT, |e| e["seq"] == seq)
        .await
        .expect("the client receives the second event");
    let deliver = wait_span(&guard, &exporter, "second deliver", |s| {
        s.name == "deliver" && attribute(s, "seq").as_deref() == Some(&seq.to_string())
    })
    .await;
    assert_eq!(deliver.span_context.trace_id().to_string(), caller_trace);
    let webhook = wait_span(&guard, &exporter, "second webhook", |s| {
        s.name == "webhook" && s.parent_span_id.to_string() == caller_span
    })
    .await;
    assert_eq!(webhook.span_context.trace_id().to_string(), caller_trace);
    assert_eq!(deliver.parent_span_id, webhook.span_context.span_id());

    client.disconnect().await;
    gateway.shut_down("gateway").await;
    ingest.shut_down("ingest").await;
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .expect("the guard flushes and stops");
}
