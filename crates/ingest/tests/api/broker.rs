//! The broker's state decides the answers: 503 (so Meta retries) while it cannot confirm, 200
//! and exactly-once events after it is back; readiness and metrics follow.

use std::collections::HashSet;

use instantchat_event::subjects;

use crate::helpers::{eventually, fixture, receipt, spawn_app};

#[tokio::test]
async fn while_nats_is_down_posts_get_503_and_the_retry_lands_once() {
    let mut app = spawn_app().await;
    let (body, signature) = fixture("f24_batched_multi_entry_synthetic.json");

    app.nats.stop();
    let response = app.post_webhook(&body, Some(&signature)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["retry"], true, "{json}");
    assert!(json["error"].is_string(), "{json}");

    app.nats.start();
    eventually("the app is ready again after NATS restarts", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    // Meta's retry; the test's own connection may still be reconnecting, so it waits too.
    let events = receipt(app.post_webhook(&body, Some(&signature)).await)
        .await
        .events;
    assert_eq!(events.len(), 3);
    eventually("the test's connection is back", || async {
        app.js.get_stream(subjects::EVENTS_STREAM).await.is_ok()
    })
    .await;

    let replayed = app.replay_all().await;
    let ids: Vec<&str> = replayed.iter().map(|(_, e)| e.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "each event once: {ids:?}");
    let answered: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        unique, answered,
        "exactly the retried webhook's events are stored"
    );
    assert_eq!(
        app.stored(subjects::WEBHOOKS_STREAM).await,
        1,
        "one raw body"
    );
}

#[tokio::test]
async fn readyz_follows_nats_and_healthz_does_not() {
    let mut app = spawn_app().await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    app.nats.stop();
    eventually("readyz reports NATS down", || async {
        app.get("/readyz").await.status() == 503
    })
    .await;
    let reason = app.get("/readyz").await.text().await.unwrap();
    assert!(reason.starts_with("not ready"), "{reason}");
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "alive while NATS is down"
    );

    app.nats.start();
    eventually("readyz reports NATS back", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn metrics_count_outcomes_and_events() {
    let app = spawn_app().await;
    let (body, signature) = fixture("f24_batched_multi_entry_synthetic.json");
    assert_eq!(
        app.post_webhook(&body, Some(&signature)).await.status(),
        200
    );
    assert_eq!(
        app.post_webhook(&body, Some(&signature)).await.status(),
        200
    );
    assert_eq!(app.post_webhook(&body, None).await.status(), 401);

    app.scrape().await.assert_values(&[
        (r#"instantchat_webhooks_total{outcome="accepted"}"#, 2.0),
        (
            r#"instantchat_webhooks_total{outcome="bad_signature"}"#,
            1.0,
        ),
        (
            r#"instantchat_events_published_total{event_type="messages",duplicate="false"}"#,
            2.0,
        ),
        (
            r#"instantchat_events_published_total{event_type="messages",duplicate="true"}"#,
            2.0,
        ),
        (
            r#"instantchat_events_published_total{event_type="messaging_seen",duplicate="true"}"#,
            1.0,
        ),
        ("instantchat_webhook_duration_seconds_count", 3.0),
    ]);
}

#[tokio::test]
async fn a_deleted_stream_makes_ingest_unready_until_it_has_set_it_up_again() {
    let app = spawn_app().await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.js
        .delete_stream(subjects::WEBHOOKS_STREAM)
        .await
        .expect("deleted");
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let reason = response.text().await.unwrap();
    assert!(reason.contains(subjects::WEBHOOKS_STREAM), "{reason}");
    eventually("ingest sets the stream up again", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    let (body, signature) = fixture("f01_comments_dashboard_test.json");
    let events = receipt(app.post_webhook(&body, Some(&signature)).await)
        .await
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(app.stored(subjects::WEBHOOKS_STREAM).await, 1);
}

#[tokio::test]
async fn a_post_that_finds_a_stream_gone_gets_503_and_its_retry_lands() {
    let app = spawn_app().await;
    let (body, signature) = fixture("f01_comments_dashboard_test.json");
    app.js
        .delete_stream(subjects::EVENTS_STREAM)
        .await
        .expect("deleted");
    // The publish finds no stream (a server that lost its store): 503, so Meta retries.
    let response = app.post_webhook(&body, Some(&signature)).await;
    assert_eq!(response.status(), 503);
    // Meanwhile ingest has set the streams up again: the retry is stored, once.
    let events = receipt(app.post_webhook(&body, Some(&signature)).await)
        .await
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(app.stored(subjects::EVENTS_STREAM).await, 1);
}
