//! The operator's endpoints every service answers the same way: `/readyz` from a readiness
//! check with a deadline, and `/metrics` as OpenMetrics text.

use std::fmt::Display;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// How long `/readyz` waits for the check before it answers not ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/readyz`: 200 `ready` when `check` succeeds within [`READY_TIMEOUT`], else 503 saying why.
pub async fn readiness<E: Display>(check: impl Future<Output = Result<(), E>>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the broker did not answer within {READY_TIMEOUT:?}"),
        )
            .into_response(),
    }
}

/// `/metrics`: a registry's text, or 500 when it could not be written.
pub fn open_metrics(text: Result<String, std::fmt::Error>) -> Response {
    match text {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
