//! Signed webhooks are published (raw body and every event) before the 200, and redeliveries
//! publish nothing new.

use instantchat_event::subjects;
use sha2::{Digest, Sha256};

use instantchat_testsupport::receipt::ReceiptEvent;

use crate::helpers::{fixture, fixture_files, receipt, spawn_app};

const MID_F09: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDcwOTQ1OTgwNDgzOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjAyOTk1MTcyODQ1MTg0MzozMjE4NTY4MDg1NTcyOTI0NzkxNDY1NDI5OTY5OTgwNjIwOAZDZD";
const MID_F10: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDcyMTEwNTU4MTM2OjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjAyNTg0MzYzNjQ5MDY2MjozMjEwMDIzNjExNTg4MzI3NzM3OTI0MTg2MTg1NjYyNDY0MAZDZD";
const MID_F13: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAxMTYzMTM3NjMzOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1OTY5MTcxNzE0NjgxMzAxMjozMTg0MTAyNjc2NjgzNDY4MjQ5MDcwNDExNjI3NDE2NzgwOAZDZD";
const MID_F16: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDM0NTM0MDYxODIwOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjI2MjgxNDcxMjY3MjQwMDozMjg0MjUyMDcyNDUxODA1NjU0OTU3MjAzMTUzOTA1MjU0NAZDZD";

/// `(id, type, account)` of every event each fixture yields, in body order.
fn expected(file: &str) -> Vec<(String, &'static str, &'static str)> {
    let one = |id: String, ty, account| vec![(id, ty, account)];
    match file {
        "f01_comments_dashboard_test.json" => {
            one("comments:17865799348089039".into(), "comments", "0")
        }
        "f02_comments_real_feed_spaced.json" => one(
            "comments:17867301270523379".into(),
            "comments",
            "17841430541631416",
        ),
        "f04_live_comments_dashboard_test.json" => one(
            "live_comments:17865799348089039".into(),
            "live_comments",
            "0",
        ),
        "f05_mentions_comment_docs.json" => one(
            "mentions:17894227972186120".into(),
            "mentions",
            "17841405726653026",
        ),
        "f08_messages_test_changes_envelope.json" => {
            one("messages:random_mid".into(), "messages", "0")
        }
        "f09_message_text_real.json" => one(
            format!("messages:{MID_F09}"),
            "messages",
            "17841470945980483",
        ),
        "f10_message_image_attachment_real.json" => one(
            format!("messages:{MID_F10}"),
            "messages",
            "17841472110558136",
        ),
        "f13_message_quick_reply_real.json" => one(
            format!("messages:{MID_F13}"),
            "messages",
            "17841401163137633",
        ),
        "f16_message_edit_num0_real.json" => one(
            format!("message_edit:edit:{MID_F16}:0"),
            "message_edit",
            "17841434534061820",
        ),
        "f18_reaction_docs_shape.json" => one(
            "message_reactions:e2ff12fabe8878ad3ea205e8d9a586ae".into(),
            "message_reactions",
            "17841400000000000",
        ),
        "f24_batched_multi_entry_synthetic.json" => vec![
            ("messages:m_batch_1".into(), "messages", "17841470945980483"),
            ("messages:m_batch_2".into(), "messages", "17841470945980483"),
            (
                "messaging_seen:f3d31410580483496dbac29a64dccbac".into(),
                "messaging_seen",
                "17841472110558136",
            ),
        ],
        "f25_unicode_escape_vector_synthetic.json" => one(
            "messages:m_unicode_1".into(),
            "messages",
            "17841470945980483",
        ),
        other => panic!("{other}: a fixture without expectations; add them here"),
    }
}

#[tokio::test]
async fn every_fixture_is_published_with_its_events_and_raw_body() {
    let app = spawn_app().await;
    let mut published = 0;
    for file in fixture_files() {
        let (body, signature) = fixture(&file);
        let receipt = receipt(app.post_webhook(&body, Some(&signature)).await).await;
        assert_eq!(receipt.rejected, None, "{file}");

        let got: Vec<_> = receipt
            .events
            .iter()
            .map(|e| (e.id.clone(), e.event_type.as_str(), e.account.as_str()))
            .collect();
        assert_eq!(got, expected(&file), "{file}");
        for ReceiptEvent {
            id,
            event_type: ty,
            account,
            seq,
            duplicate,
        } in &receipt.events
        {
            assert!(!duplicate, "{file}: {id} is new");
            assert_eq!(
                app.event_subject(*seq).await,
                subjects::event(account, ty),
                "{file}: {id}"
            );
        }
        published += receipt.events.len() as u64;

        let (msg_id, raw) = app
            .last_webhook_on(subjects::WEBHOOK_RAW)
            .await
            .expect("the raw body is stored");
        assert_eq!(raw, body, "{file}: the raw body is stored byte for byte");
        assert_eq!(
            msg_id,
            format!("webhook:{}", hex::encode(Sha256::digest(&body)))
        );
    }
    assert_eq!(app.stored(subjects::EVENTS_STREAM).await, published);
    assert!(
        app.last_webhook_on(subjects::WEBHOOK_REJECTED)
            .await
            .is_none()
    );

    // The bus hands subscribers the same events, in seq order.
    let replayed = app.replay_all().await;
    assert_eq!(replayed.len() as u64, published);
    assert!(replayed.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test]
async fn a_redelivery_publishes_no_new_event() {
    let app = spawn_app().await;
    let (body, signature) = fixture("f24_batched_multi_entry_synthetic.json");
    let first = receipt(app.post_webhook(&body, Some(&signature)).await)
        .await
        .events;
    assert_eq!(first.len(), 3);
    let events = app.stored(subjects::EVENTS_STREAM).await;
    let webhooks = app.stored(subjects::WEBHOOKS_STREAM).await;

    let second = receipt(app.post_webhook(&body, Some(&signature)).await)
        .await
        .events;
    assert_eq!(second.len(), first.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!((&a.id, a.seq), (&b.id, b.seq), "same id, same seq");
        assert!(!a.duplicate && b.duplicate, "first new, then duplicate");
    }
    assert_eq!(app.stored(subjects::EVENTS_STREAM).await, events);
    assert_eq!(app.stored(subjects::WEBHOOKS_STREAM).await, webhooks);
}

#[tokio::test]
async fn the_seeds_simplified_body_is_accepted() {
    let app = spawn_app().await;
    let body = br#"{"id":"s1","eventType":"comments","sender":{"id":"7","username":"ana"},"comment":{"text":"hi"},"timestamp":"2024-01-01T00:00:00Z","accountId":"17841"}"#;
    let receipt = receipt(app.post_signed(body).await).await;
    assert_eq!(receipt.rejected, None);
    assert_eq!(receipt.events.len(), 1);
    assert_eq!(
        (
            receipt.events[0].event_type.as_str(),
            receipt.events[0].account.as_str()
        ),
        ("comments", "17841")
    );
}

#[tokio::test]
async fn skipped_items_keep_the_body_on_the_rejected_subject_too() {
    let app = spawn_app().await;
    // The second entry's id cannot be a subject token: its item is skipped, the first is not.
    let body = br#"{"object":"instagram","entry":[{"id":"17841","time":1744789255994,"messaging":[{"sender":{"id":"2"},"timestamp":1744789255335,"message":{"mid":"m_ok","text":"hi"}}]},{"id":"not.a.token","time":1744789255994,"messaging":[{"sender":{"id":"3"},"timestamp":1744789255335,"message":{"mid":"m_skipped","text":"lost?"}}]}]}"#;
    let receipt = receipt(app.post_signed(body).await).await;
    let rejected = receipt.rejected.clone().unwrap_or_default();
    let ids: Vec<&str> = receipt.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["messages:m_ok"]);
    assert!(rejected.contains("entry[1]"), "{rejected}");
    for subject in [subjects::WEBHOOK_RAW, subjects::WEBHOOK_REJECTED] {
        let (_, kept) = app.last_webhook_on(subject).await.expect(subject);
        assert_eq!(kept, body, "{subject}");
    }
    app.scrape().await.assert_values(&[
        (r#"instantchat_webhooks_total{outcome="accepted"}"#, 1.0),
        ("instantchat_webhook_items_skipped_total", 1.0),
    ]);
}
