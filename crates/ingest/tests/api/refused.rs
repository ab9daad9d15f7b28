//! Bodies that must not become events: unsigned or badly signed (401), too large (413), and
//! signed but unusable (200, kept on the rejected subject).

use std::time::Duration;

use instantchat_event::subjects;
use sha2::{Digest, Sha256};

use crate::helpers::{
    Options, assert_nothing_published, fixture, raw_http, receipt, spawn_app, spawn_app_with,
};

/// POSTs `signature` over fixture f01 and expects a 401 whose JSON error contains `says`.
async fn refused_with_401(signature: Option<&str>, says: &str) {
    let app = spawn_app().await;
    let (body, _) = fixture("f01_comments_dashboard_test.json");
    let response = app.post_webhook(&body, signature).await;
    assert_eq!(response.status(), 401);
    let json: serde_json::Value = response.json().await.expect("a JSON error");
    let error = json["error"].as_str().expect("an error message");
    assert!(error.contains(says), "{error:?} should mention {says:?}");
    assert_nothing_published(&app).await;
}

#[tokio::test]
async fn a_missing_signature_is_401() {
    refused_with_401(None, "missing X-Hub-Signature-256").await;
}

#[tokio::test]
async fn a_sha1_only_signature_is_401() {
    let sha1 = "sha1=36b4f4155936c64b9985a1df7f83361bde3b6457";
    refused_with_401(Some(sha1), "sha1").await;
}

#[tokio::test]
async fn a_wrong_digest_is_401() {
    let wrong = format!("sha256={}", "ab".repeat(32));
    refused_with_401(Some(&wrong), "does not match").await;
}

#[tokio::test]
async fn a_digest_of_the_wrong_length_is_401() {
    let (_, good) = fixture("f01_comments_dashboard_test.json");
    refused_with_401(Some(&good[..good.len() - 2]), "64 hex digits").await;
}

#[tokio::test]
async fn a_signature_with_bytes_that_are_not_ascii_is_401_saying_so() {
    // Not "no sha256= prefix": the value does start with it.
    let header = format!("sha256={}é", "a".repeat(62));
    refused_with_401(Some(&header), "not a hex digit").await;
}

#[tokio::test]
async fn a_signature_over_reserialized_json_is_401() {
    let app = spawn_app().await;
    let (body, _) = fixture("f25_unicode_escape_vector_synthetic.json");
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let reserialized = serde_json::to_vec(&value).unwrap();
    assert_ne!(reserialized, body, "re-serializing changes the bytes");
    // Signed correctly, but over other bytes than the ones sent.
    let signature = instantchat_instagram::sign(b"test_app_secret", &reserialized);
    let response = app.post_webhook(&body, Some(&signature)).await;
    assert_eq!(response.status(), 401);
    assert_nothing_published(&app).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(Options {
        max_body_bytes: 256,
        ..Options::default()
    })
    .await;
    let (body, signature) = fixture("f10_message_image_attachment_real.json");
    assert!(body.len() > 256);

    // Announced by Content-Length.
    let response = app.post_webhook(&body, Some(&signature)).await;
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("WEBHOOK_MAX_BODY_BYTES")
    );

    // Not announced: chunked, found while reading.
    let mut chunked = format!(
        "POST /api/webhooks/instagram HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\nX-Hub-Signature-256: {signature}\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(100) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _) = raw_http(app.port, &chunked).await;
    assert_eq!(status, 413);
    assert_nothing_published(&app).await;

    // A body within the limit still passes.
    let (small, small_signature) = fixture("f05_mentions_comment_docs.json");
    assert!(small.len() <= 256);
    assert_eq!(
        app.post_webhook(&small, Some(&small_signature))
            .await
            .status(),
        200
    );
}

/// A comment in the simplified body whose text makes the body `len` bytes long.
fn comment_of_size(len: usize) -> Vec<u8> {
    let head = r#"{"id":"big","eventType":"comments","accountId":"acct_big","comment":{"text":""#;
    let tail = r#""}}"#;
    let mut body = head.as_bytes().to_vec();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

#[tokio::test]
async fn a_body_the_broker_cannot_take_is_413_naming_max_payload() {
    // WEBHOOK_MAX_BODY_BYTES is 4 MiB; the test's nats-server takes messages of up to 1 MiB.
    let app = spawn_app().await;
    let response = app.post_signed(&comment_of_size(1024 * 1024 + 1)).await;
    assert_eq!(response.status(), 413);
    let json: serde_json::Value = response.json().await.unwrap();
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("max_payload"), "{error:?}");
    assert_nothing_published(&app).await;
    // Under the broker's limit, with room for the message's headers: published.
    let response = app.post_signed(&comment_of_size(1000 * 1024)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.stored(subjects::EVENTS_STREAM).await, 1);
}

#[tokio::test]
async fn a_signed_body_that_is_not_json_is_kept_as_rejected() {
    assert_rejected_and_kept(b"this is not JSON \xff").await;
}

#[tokio::test]
async fn a_signed_body_of_unknown_shape_is_kept_as_rejected() {
    assert_rejected_and_kept(br#"{"object":"page","entry":[]}"#).await;
}

#[tokio::test]
async fn a_signed_body_with_a_repeated_key_is_kept_as_rejected_naming_the_key() {
    let body = br#"{"id":"d1","eventType":"comments","accountId":"acct_a","accountId":"acct_b","comment":{"text":"x"}}"#;
    let rejected = assert_rejected_and_kept(body).await;
    assert!(
        rejected.contains(r#""accountId" appears twice in the top-level object"#),
        "{rejected}"
    );
}

/// POSTs signed `body`, expects it answered 200 with no event and kept whole on the rejected
/// subject; returns the answer's `rejected` reason.
async fn assert_rejected_and_kept(body: &[u8]) -> String {
    let app = spawn_app().await;
    let receipt = receipt(app.post_signed(body).await).await;
    assert!(receipt.events.is_empty());
    let rejected = receipt.rejected.clone().unwrap_or_default();
    assert!(!rejected.is_empty(), "{receipt:?}");

    let (msg_id, kept) = app
        .last_webhook_on(subjects::WEBHOOK_REJECTED)
        .await
        .expect("the body is kept on the rejected subject");
    assert_eq!(kept, body);
    assert_eq!(
        msg_id,
        format!("rejected:{}", hex::encode(Sha256::digest(body)))
    );
    assert_eq!(app.stored(subjects::EVENTS_STREAM).await, 0, "no event");
    assert!(app.last_webhook_on(subjects::WEBHOOK_RAW).await.is_none());

    app.scrape().await.assert_values(&[(
        r#"instantchat_webhooks_total{outcome="rejected_body"}"#,
        1.0,
    )]);
    rejected
}

#[tokio::test]
async fn a_connection_that_never_sends_a_whole_request_head_is_closed() {
    let app = spawn_app().await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], app.port));
    let took =
        instantchat_testsupport::unfinished_heads_closed_after(addr, Duration::from_secs(45)).await;
    // The deadline is 30 s: a slow client is not cut off early.
    assert!(took >= Duration::from_secs(25), "closed after {took:?}");
    assert_nothing_published(&app).await;
}
