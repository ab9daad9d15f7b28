//! `http-echo` (internal), the HTTP half of ingest alone, for `ingest --http-floor`: the same
//! serve loop and router ingest uses (`instantchat_service::serve`, axum), the whole body read,
//! and a receipt of the same shape and size answered, with no verification, normalization or
//! broker. What it costs per request is what HTTP/1.1 costs ingest on this machine before any
//! of ingest's own work.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::routing::post;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

/// The path ingest serves webhooks on.
pub const WEBHOOK_PATH: &str = "/api/webhooks/instagram";

/// The shape of ingest's 200 answer, with one event (ingest's bodies have 1.17 on average).
#[derive(Serialize)]
struct Receipt {
    status: &'static str,
    events: [Published; 1],
    rejected: Option<String>,
}

#[derive(Serialize)]
struct Published {
    id: String,
    #[serde(rename = "type")]
    event_type: &'static str,
    account: &'static str,
    seq: u64,
    duplicate: bool,
}

async fn answer(body: Bytes) -> Json<Receipt> {
    Json(Receipt {
        status: "ok",
        events: [Published {
            id: format!("comments:17858893269000001_{}", body.len()),
            event_type: "comments",
            account: "17841405822304914",
            seq: 123_456,
            duplicate: false,
        }],
        rejected: None,
    })
}

/// Serves until killed; the first line on stdout is `listening on ADDR`.
pub async fn run() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let line = format!("listening on {}\n", listener.local_addr()?);
    let mut stdout = tokio::io::stdout();
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;
    let router = axum::Router::new().route(WEBHOOK_PATH, post(answer));
    instantchat_service::serve::serve(
        listener,
        router,
        Duration::from_secs(30),
        std::future::pending(),
    )
    .await?;
    Ok(())
}
