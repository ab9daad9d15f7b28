//! Meta's subscription verification: `GET /api/webhooks/instagram?hub.*`.

use crate::helpers::{Options, VERIFY_TOKEN, spawn_app, spawn_app_with};

fn query(mode: &str, token: Option<&str>, challenge: &str) -> String {
    let token = token.map_or(String::new(), |t| format!("&hub.verify_token={t}"));
    format!("/api/webhooks/instagram?hub.mode={mode}{token}&hub.challenge={challenge}")
}

#[tokio::test]
async fn the_right_token_gets_the_challenge_back_exactly() {
    let app = spawn_app().await;
    let response = app
        .get(&query("subscribe", Some(VERIFY_TOKEN), "1158201444"))
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(response.text().await.unwrap(), "1158201444");
}

#[tokio::test]
async fn a_wrong_or_missing_token_or_mode_is_403() {
    let app = spawn_app().await;
    for path in [
        query("subscribe", Some("wrong"), "c"),
        query("subscribe", Some(""), "c"),
        query("subscribe", None, "c"),
        query("unsubscribe", Some(VERIFY_TOKEN), "c"),
        "/api/webhooks/instagram".to_owned(),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 403, "{path}");
        assert_ne!(response.text().await.unwrap(), "c");
    }
}

#[tokio::test]
async fn without_a_configured_token_verification_is_always_403() {
    let app = spawn_app_with(Options {
        verify_token: None,
        ..Options::default()
    })
    .await;
    for token in [Some(VERIFY_TOKEN), Some(""), None] {
        let response = app.get(&query("subscribe", token, "c")).await;
        assert_eq!(response.status(), 403, "{token:?}");
    }
}

#[tokio::test]
async fn the_right_token_without_a_challenge_is_400_naming_it() {
    let app = spawn_app().await;
    let response = app
        .get(&format!(
            "/api/webhooks/instagram?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"
        ))
        .await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("missing hub.challenge"), "{text}");
}
