//! `http-echo` (internal), the HTTP half of ingest alone, for `ingest --http-floor`: the same
//! serve loop and router ingest uses (`instantchat_service::serve`, axum), the whole body read,
//! and ingest's own receipt type answered, with no verification, normalization or
//! broker. What it costs per request is what HTTP/1.1 costs ingest on this machine before any
//! of ingest's own work.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::routing::post;
use instantchat_ingest::{Published, Receipt, WEBHOOK_PATH};
use tokio::io::AsyncWriteExt;

/// Ingest's own 200 answer, with one event (ingest's bodies have 1.17 on average).
async fn answer(body: Bytes) -> Json<Receipt> {
    Json(Receipt {
        status: "ok",
        events: vec![Published {
            id: format!("comments:17858893269000001_{}", body.len()),
            event_type: "comments".to_owned(),
            account: "17841405822304914".to_owned(),
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
