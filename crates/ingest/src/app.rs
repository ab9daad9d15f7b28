//! The HTTP edge: routes, handlers and the one [`AppError`] they answer with (docs/protocol.md,
//! "Webhooks (ingest)").

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use instantchat_broker::{BusError, EventBus, Outgoing, TraceContext};
use instantchat_event::{Event, subjects};
use instantchat_instagram::{Signature, SignatureError, normalize};
use instantchat_service::ops;
use instantchat_telemetry::SPAN_TARGET;
use instantchat_telemetry::metrics::ProcessMemory;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::IngestSettings;
use crate::metrics::{Metrics, Outcome};

/// The webhook route, for both verification (GET) and delivery (POST).
pub const WEBHOOK_PATH: &str = "/api/webhooks/instagram";
/// What a 503 tells Meta (and anyone else) to wait before retrying, in seconds.
const RETRY_AFTER_SECS: u64 = 5;
/// A sender that trickles its body must not hold a connection forever; Meta itself gives up
/// after about 20 s. Past it the answer is 408.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Room left in the raw body's broker message for its headers (message id, trace context).
const HEADER_ROOM: usize = 4096;

/// What the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IngestState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: IngestSettings,
    bus: Arc<dyn EventBus>,
    metrics: Metrics,
    /// Holds `metrics`, served on `/metrics`.
    registry: Registry,
}

impl IngestState {
    pub fn new(settings: IngestSettings, bus: Arc<dyn EventBus>) -> Self {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        ProcessMemory::register(&mut registry);
        IngestState {
            inner: Arc::new(Inner {
                settings,
                bus,
                metrics,
                registry,
            }),
        }
    }

    /// The ingest metrics, to register in another binary's registry when it serves its own
    /// `/metrics` and mounts only [`webhook_router`].
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The bus webhooks are published to.
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.inner.bus
    }
}

/// Every ingest route: the webhook, `/healthz`, `/readyz` and `/metrics`.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(webhook_router(state))
}

/// Only the webhook route, for a binary that serves its own health and metrics routes.
pub fn webhook_router(state: IngestState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, get(verify_subscription).post(receive_webhook))
        // The handler enforces `WEBHOOK_MAX_BODY_BYTES` itself, to answer 413 its own way.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Why a request failed, and so what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "the body is larger than the {limit} bytes allowed (WEBHOOK_MAX_BODY_BYTES); nothing was published"
    )]
    TooLarge { limit: usize },
    #[error(
        "the body is larger than the {limit} bytes the broker takes in one message (nats-server \
         max_payload); nothing was published. Raise max_payload in nats-server's configuration \
         above WEBHOOK_MAX_BODY_BYTES"
    )]
    TooLargeForBroker { limit: usize },
    #[error("{0}; nothing was published")]
    Signature(#[from] SignatureError),
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error(
        "the body was not received within {0:?}; nothing was published. Send the whole body at once"
    )]
    BodyTimeout(Duration),
    #[error(
        "{0}; the webhook is not stored whole, retry the delivery (what was stored is not stored twice)"
    )]
    Bus(#[from] BusError),
}

impl AppError {
    fn outcome(&self) -> Outcome {
        match self {
            AppError::TooLarge { .. } | AppError::TooLargeForBroker { .. } => Outcome::TooLarge,
            AppError::Signature(_) => Outcome::BadSignature,
            AppError::BodyRead(_) => Outcome::BadRequest,
            AppError::BodyTimeout(_) => Outcome::BodyTimeout,
            AppError::Bus(_) => Outcome::BrokerError,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let error = self.to_string();
        let body_unread = match &self {
            AppError::Signature(e) => {
                matches!(e, SignatureError::Missing | SignatureError::Malformed(_))
            }
            AppError::TooLarge { .. }
            | AppError::TooLargeForBroker { .. }
            | AppError::BodyRead(_)
            | AppError::BodyTimeout(_) => true,
            AppError::Bus(_) => false,
        };
        match self {
            AppError::Bus(_) => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({ "error": error, "retry": true })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                response
            }
            other => {
                let status = match other {
                    AppError::TooLarge { .. } | AppError::TooLargeForBroker { .. } => {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    AppError::Signature(_) => StatusCode::UNAUTHORIZED,
                    AppError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
                    _ => StatusCode::BAD_REQUEST,
                };
                let mut response =
                    (status, Json(serde_json::json!({ "error": error }))).into_response();
                if body_unread {
                    // The rest of the body is not read: the connection cannot carry another
                    // request, and the client should know.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        }
    }
}

/// The 200 answer to a webhook POST, once every message is acknowledged.
#[derive(Debug, Serialize)]
pub struct Receipt {
    /// Always `"ok"`.
    pub status: &'static str,
    /// One per normalized event, in body order.
    pub events: Vec<Published>,
    /// Why the body, or some of its items, went to the rejected subject; `null` when nothing did.
    pub rejected: Option<String>,
}

/// One acknowledged event.
#[derive(Debug, Serialize)]
pub struct Published {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub account: String,
    /// Its position in the events stream.
    pub seq: u64,
    /// The broker had this id already (a redelivery): no new event was stored.
    pub duplicate: bool,
}

/// `hub.*` query parameters of Meta's subscription verification.
#[derive(Debug, Deserialize)]
struct VerifyParams {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn verify_subscription(
    State(state): State<IngestState>,
    params: Result<Query<VerifyParams>, QueryRejection>,
) -> Response {
    let expected = state.inner.settings.verify_token.as_ref();
    let verified = match (params, expected) {
        (Ok(Query(p)), Some(expected)) if p.mode.as_deref() == Some("subscribe") => p
            .verify_token
            .filter(|t| bool::from(t.as_bytes().ct_eq(expected.expose().as_bytes())))
            .map(|_| p.challenge),
        _ => None,
    };
    match verified {
        Some(Some(challenge)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            challenge,
        )
            .into_response(),
        Some(None) => (
            StatusCode::BAD_REQUEST,
            "missing hub.challenge: the subscription check echoes it back",
        )
            .into_response(),
        None => {
            if expected.is_none() {
                tracing::warn!(
                    "webhook verification refused: INSTAGRAM_WEBHOOK_VERIFY_TOKEN is not set, so \
                     Meta's subscription check cannot pass; set it to the token given to Meta"
                );
            } else {
                tracing::info!("webhook verification refused");
            }
            (
                StatusCode::FORBIDDEN,
                "forbidden: wrong or missing hub.verify_token or hub.mode",
            )
                .into_response()
        }
    }
}

async fn receive_webhook(
    State(state): State<IngestState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, AppError> {
    let started = Instant::now();
    let _in_flight = state.inner.metrics.in_flight();
    // The root of the trace that follows this webhook's events to the sockets (a caller that
    // sends its own W3C context continues its trace). Disabled, and free, when tracing is off.
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "webhook",
        otel.kind = "server",
        http.request.method = "POST",
        url.path = WEBHOOK_PATH,
        outcome = Empty,
        events = Empty,
        otel.status_code = Empty,
    );
    let caller = trace_context(&headers);
    instantchat_telemetry::set_parent(
        &span,
        caller.traceparent.as_deref(),
        caller.tracestate.as_deref(),
    );
    let result = ingest(&state, &headers, body)
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok(receipt) if receipt.events.is_empty() && receipt.rejected.is_some() => {
            Outcome::RejectedBody
        }
        Ok(_) => Outcome::Accepted,
        Err(e) => e.outcome(),
    };
    state.inner.metrics.webhook(outcome, started.elapsed());
    span.record("outcome", outcome.label());
    match &result {
        Ok(receipt) => {
            span.record("events", receipt.events.len());
        }
        Err(AppError::Bus(_)) => {
            span.record("otel.status_code", "ERROR");
        }
        Err(_) => {}
    }
    match &result {
        Err(e @ AppError::Bus(_)) => tracing::warn!(error = %e, "webhook not acknowledged: 503"),
        Err(e @ AppError::TooLargeForBroker { .. }) => {
            tracing::warn!(error = %e, "webhook refused: 413")
        }
        Err(e) => tracing::info!(error = %e, "webhook refused"),
        Ok(_) => {}
    }
    result.map(Json)
}

/// The POST of docs/protocol.md's "Webhooks (ingest)": signature, body, events, publish, in
/// that order, except that a request whose signature header is missing or malformed is refused
/// before its body is read: nothing it sends can be verified, so it is not worth the memory.
async fn ingest(state: &IngestState, headers: &HeaderMap, body: Body) -> Result<Receipt, AppError> {
    let body = receive(state, headers, body).await?;
    let trace = outgoing_trace(headers);
    let (events, skipped, rejected) = normalized(&body);
    let (batch, first_event, summaries) = batch(&body, events, rejected.is_some(), trace);
    let publish = tracing::info_span!(
        target: SPAN_TARGET,
        "publish",
        otel.kind = "producer",
        messages = batch.len(),
    );
    let acks = state.inner.bus.publish(batch).instrument(publish).await?;
    state.inner.metrics.skipped(skipped);
    let events = summaries
        .into_iter()
        .zip(acks.get(first_event..).unwrap_or_default())
        .map(|((id, event_type, account), ack)| {
            state.inner.metrics.event(&event_type, ack.duplicate);
            tracing::debug!(%id, seq = ack.seq, duplicate = ack.duplicate, "event published");
            Published {
                id,
                event_type,
                account,
                seq: ack.seq,
                duplicate: ack.duplicate,
            }
        })
        .collect();
    Ok(Receipt {
        status: "ok",
        events,
        rejected,
    })
}

/// The verified body: refused when too large (announced or read), unsigned, late or forged.
async fn receive(state: &IngestState, headers: &HeaderMap, body: Body) -> Result<Bytes, AppError> {
    let settings = &state.inner.settings;
    // The raw body goes to the broker as one message: a body the broker cannot take is
    // refused now, with what to change, rather than answered 503 on every retry.
    let broker_limit = state
        .inner
        .bus
        .max_message_bytes()
        .map(|n| n.saturating_sub(HEADER_ROOM));
    let (limit, too_large): (usize, fn(usize) -> AppError) = match broker_limit {
        Some(limit) if limit < settings.max_body_bytes => {
            (limit, |limit| AppError::TooLargeForBroker { limit })
        }
        _ => (settings.max_body_bytes, |limit| AppError::TooLarge {
            limit,
        }),
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    // Lossy, so a header with bytes that are not ASCII is reported as what it is.
    let signature = headers
        .get("x-hub-signature-256")
        .map(|v| String::from_utf8_lossy(v.as_bytes()));
    let signature = Signature::parse(signature.as_deref())?;
    let body = tokio::time::timeout(BODY_TIMEOUT, read_body(body, announced, limit, too_large))
        .await
        .map_err(|_| AppError::BodyTimeout(BODY_TIMEOUT))??;
    signature.verify(&settings.app_secrets, &body)?;
    Ok(body)
}

/// The body's events, how many items were skipped, and why the body (or some of it) goes to the
/// rejected subject.
fn normalized(body: &[u8]) -> (Vec<Event>, usize, Option<String>) {
    let normalized = {
        let _normalize =
            tracing::info_span!(target: SPAN_TARGET, "normalize", bytes = body.len()).entered();
        let received_at_ms = i64::try_from(instantchat_event::now_ms()).unwrap_or(i64::MAX);
        normalize(body, received_at_ms)
    };
    match normalized {
        Ok(normalized) => {
            let rejected = (!normalized.skipped.is_empty()).then(|| {
                normalized
                    .skipped
                    .iter()
                    .map(|s| s.reason.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            (normalized.events, normalized.skipped.len(), rejected)
        }
        Err(reason) => (Vec::new(), 0, Some(reason.to_string())),
    }
}

/// One id, type and account per event, for the receipt.
type Summary = (String, String, String);

/// What one webhook publishes, and where in it the events start.
fn batch(
    body: &Bytes,
    events: Vec<Event>,
    rejected: bool,
    trace: TraceContext,
) -> (Vec<Outgoing>, usize, Vec<Summary>) {
    let digest = hex::encode(Sha256::digest(body));
    // The raw body goes on the raw subject when something was read from it, and on the rejected
    // subject when some or all of it could not be used; one batch, one wait for every PubAck.
    let usable = !events.is_empty() || !rejected;
    let mut batch = Vec::with_capacity(events.len() + 2);
    if usable {
        batch.push(Outgoing::raw(
            subjects::WEBHOOK_RAW,
            format!("webhook:{digest}"),
            body.clone(),
            trace.clone(),
        ));
    }
    if rejected {
        batch.push(Outgoing::raw(
            subjects::WEBHOOK_REJECTED,
            format!("rejected:{digest}"),
            body.clone(),
            trace.clone(),
        ));
    }
    let first_event = batch.len();
    let summaries: Vec<Summary> = events
        .iter()
        .map(|e| (e.id.clone(), e.event_type.clone(), e.account_id.clone()))
        .collect();
    batch.extend(
        events
            .into_iter()
            .map(|e| Outgoing::event(e, trace.clone())),
    );
    (batch, first_event, summaries)
}

/// Reads the whole body into one buffer, refusing it as soon as it exceeds `limit`.
///
/// However the body is chunked, it costs at most `limit` bytes: chunks are copied into one
/// buffer that grows by doubling up to the limit (a body sent a byte per chunk must not cost a
/// buffer per byte). A body that comes in one chunk, the usual case, is used without a copy.
async fn read_body(
    body: Body,
    announced: Option<u64>,
    limit: usize,
    too_large: fn(usize) -> AppError,
) -> Result<Bytes, AppError> {
    let mut stream = body.into_data_stream();
    let mut next = async || match stream.next().await {
        Some(Ok(chunk)) if chunk.len() > limit => Err(too_large(limit)),
        Some(Ok(chunk)) => Ok(Some(chunk)),
        Some(Err(e)) => Err(AppError::BodyRead(e.to_string())),
        None => Ok(None),
    };
    let Some(first) = next().await? else {
        return Ok(Bytes::new());
    };
    let Some(second) = next().await? else {
        return Ok(first);
    };
    // The announced length (already checked against the limit) is what the body will weigh.
    let expected = announced.map_or(first.len() + second.len(), |n| n as usize);
    let mut buffer = Vec::with_capacity(expected.min(limit));
    append(&mut buffer, &first, limit).map_err(|()| too_large(limit))?;
    append(&mut buffer, &second, limit).map_err(|()| too_large(limit))?;
    drop((first, second));
    while let Some(chunk) = next().await? {
        append(&mut buffer, &chunk, limit).map_err(|()| too_large(limit))?;
    }
    Ok(Bytes::from(buffer))
}

/// Appends `chunk` to `buffer` unless that would pass `limit`; the buffer's capacity doubles as
/// it grows, but never past the limit.
fn append(buffer: &mut Vec<u8>, chunk: &[u8], limit: usize) -> Result<(), ()> {
    let needed = buffer.len() + chunk.len();
    if needed > limit {
        return Err(());
    }
    if needed > buffer.capacity() {
        let target = needed.max(buffer.capacity() * 2).min(limit);
        buffer.reserve_exact(target - buffer.len());
    }
    buffer.extend_from_slice(chunk);
    Ok(())
}

/// The trace context every message of this webhook carries to the gateways: the current
/// (`webhook`) span's when tracing is on, else the caller's own, passed through unchanged.
fn outgoing_trace(headers: &HeaderMap) -> TraceContext {
    let injected = instantchat_telemetry::inject(&tracing::Span::current());
    if injected.traceparent.is_some() {
        TraceContext {
            traceparent: injected.traceparent,
            tracestate: injected.tracestate,
        }
    } else {
        trace_context(headers)
    }
}

/// A caller's W3C trace context (`traceparent`, `tracestate` headers).
fn trace_context(headers: &HeaderMap) -> TraceContext {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 512)
            .map(str::to_owned)
    };
    TraceContext {
        traceparent: get("traceparent"),
        tracestate: get("tracestate"),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<IngestState>) -> Response {
    ops::readiness(state.inner.bus.check_ready()).await
}

async fn metrics(State(state): State<IngestState>) -> Response {
    let mut text = String::new();
    let written = prometheus_client::encoding::text::encode(&mut text, &state.inner.registry);
    ops::open_metrics(written.map(|()| text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_read_a_byte_at_a_time_grows_one_buffer_up_to_the_limit() {
        let limit = 1000;
        let mut buffer = Vec::new();
        for _ in 0..limit {
            append(&mut buffer, b"x", limit).unwrap();
            assert!(buffer.capacity() <= limit, "{}", buffer.capacity());
        }
        assert_eq!(buffer.len(), limit);
        assert_eq!(append(&mut buffer, b"x", limit), Err(()));
        // Growth doubles: a thousand one-byte appends reallocate about ten times, not a thousand.
        let mut reallocations = 0;
        let mut buffer = Vec::new();
        for _ in 0..limit {
            let before = buffer.capacity();
            append(&mut buffer, b"x", limit).unwrap();
            reallocations += usize::from(buffer.capacity() != before);
        }
        assert!(reallocations <= 12, "{reallocations}");
    }
}
