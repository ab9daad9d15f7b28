//! Metrics, readiness and the operator's view, against a real nats-server, ingest and a gateway
//! in-process, with real Socket.IO clients ([`SioClient`]).
//!
//! - `/metrics` of both services after a scripted session: good and bad webhooks, good and bad
//!   clients; every counter moved by exactly what the session did.
//! - The gateway's `/readyz` (and both NATS gauges) follow NATS going down and coming back.
//! - `GET /admin/connections`: 404 without `ADMIN_TOKEN`, 401 without the right bearer token,
//!   and the connected clients with their subscriptions with it.

use std::time::Duration;

use crate::support::*;
use instantchat_testsupport::receipt::Receipt;
use instantchat_testsupport::{NatsServer, SioClient, SioError};
use serde_json::{Value, json};

const ACCOUNT_A: &str = "17841400000000001";
const ACCOUNT_B: &str = "17841400000000002";

async fn connect(gateway: &str, auth: Option<&Value>, who: &str) -> SioClient {
    SioClient::connect(gateway, auth)
        .await
        .unwrap_or_else(|e| panic!("{who} connects: {e}"))
}

async fn subscribe(client: &SioClient, types: &[&str], who: &str) -> Value {
    client
        .emit_with_ack("subscribe", &json!({ "eventTypes": types }), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{who} subscribes: {e}"))
}

async fn webhook_event(client: &mut SioClient, who: &str, seq: u64) {
    let event = client
        .wait_for_event("webhook_event", WAIT, |e| e["seq"] == seq)
        .await
        .unwrap_or_else(|e| panic!("{who} gets seq {seq}: {e}"));
    assert_eq!(event["seq"], seq);
}

/// Posts a signed one-event webhook; expects 200 and returns the event's seq.
async fn publish(http: &reqwest::Client, ingest: &str, id: &str, ty: &str, account: &str) -> u64 {
    let body = seed_body(id, ty, account);
    let signature = sign(&body);
    let (status, receipt) = post_webhook(http, ingest, body, &signature, &[]).await;
    assert_eq!(status, 200, "{receipt}");
    Receipt::from_json(&receipt).only_seq()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_a_scripted_session_did() {
    let nats = NatsServer::start_new();
    let ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(
        &nats.url(),
        &[
            "--auth-timeout-secs",
            "60",
            // A burst of 5 requests per socket, then one more every 20 s.
            "--socket-rate-limit",
            "0.05",
            "--socket-rate-burst",
            "5",
        ],
    )
    .await;
    let http = http();
    wait_status(&http, &format!("{}/readyz", ingest.url), 200).await;
    wait_status(&http, &format!("{}/readyz", gateway.url), 200).await;

    // Good clients: alice sees account A (comments, messages), bob every account (comments).
    let mut alice = connect(
        &gateway.url,
        Some(&json!({ "token": token("alice", &[ACCOUNT_A]) })),
        "alice",
    )
    .await;
    subscribe(&alice, &["comments", "messages"], "alice").await;
    let mut bob = connect(&gateway.url, None, "bob").await;
    let reply = bob
        .emit_with_ack(
            "authenticate",
            &json!({ "token": token("bob", &["*"]), "userId": "bob" }),
            WAIT,
        )
        .await
        .expect("bob authenticates");
    assert_eq!(reply["userId"], "bob");
    subscribe(&bob, &["comments"], "bob").await;

    // Bad clients: a refused handshake token, a refused `authenticate`, a subscribe without
    // authentication, and one that sends faster than its rate budget.
    let refused = SioClient::connect(&gateway.url, Some(&json!({ "token": "not-a-jwt" }))).await;
    assert!(
        matches!(refused, Err(SioError::Refused(_))),
        "a bad handshake token is refused: {refused:?}"
    );
    let mut mallory = connect(&gateway.url, None, "mallory").await;
    let _ = mallory.emit("authenticate", &json!({ "token": "forged.token.value" }));
    mallory
        .wait_disconnect(WAIT)
        .await
        .expect("a bad authenticate disconnects");
    let carol = connect(&gateway.url, None, "carol").await;
    let reply = subscribe(&carol, &["comments"], "carol").await;
    assert_eq!(reply["message"], "Not authenticated");
    let dave = connect(
        &gateway.url,
        Some(&json!({ "token": token("dave", &[ACCOUNT_B]) })),
        "dave",
    )
    .await;
    let mut limited = 0;
    for _ in 0..8 {
        let reply = dave
            .emit_with_ack("heartbeat", &json!({}), WAIT)
            .await
            .expect("dave's heartbeat is answered");
        if reply.get("message").is_some() {
            limited += 1;
        }
    }
    assert_eq!(limited, 3, "a burst of 5, then refused");

    // Webhooks: three events (one of them a message nobody watches), a redelivery, a bad
    // signature and a signed body that is not JSON.
    let c1 = publish(&http, &ingest.url, "c1", "comments", ACCOUNT_A).await;
    let c2 = publish(&http, &ingest.url, "c2", "comments", ACCOUNT_A).await;
    let m1 = publish(&http, &ingest.url, "m1", "messages", ACCOUNT_B).await;
    assert_eq!(
        publish(&http, &ingest.url, "c1", "comments", ACCOUNT_A).await,
        c1,
        "a redelivery stores nothing new"
    );
    let (status, _) = post_webhook(
        &http,
        &ingest.url,
        seed_body("x", "comments", ACCOUNT_A),
        "sha256=00",
        &[],
    )
    .await;
    assert_eq!(status, 401);
    let junk = b"not json at all".to_vec();
    let signature = sign(&junk);
    let (status, receipt) = post_webhook(&http, &ingest.url, junk, &signature, &[]).await;
    assert_eq!(status, 200, "kept on the rejected subject: {receipt}");
    for seq in [c1, c2] {
        webhook_event(&mut alice, "alice", seq).await;
        webhook_event(&mut bob, "bob", seq).await;
    }
    assert!(m1 > c2);

    // A resume: erin replays what she missed on account A.
    let erin = connect(
        &gateway.url,
        Some(&json!({ "token": token("erin", &[ACCOUNT_A]) })),
        "erin",
    )
    .await;
    let mut erin = erin;
    erin.emit_with_ack(
        "subscribe",
        &json!({ "eventTypes": ["comments"], "since": 0 }),
        WAIT,
    )
    .await
    .expect("erin subscribes with since");
    let done = erin
        .wait_for_event("replay_complete", WAIT, |_| true)
        .await
        .expect("erin's replay completes");
    assert_eq!(done["count"], 2, "{done}");

    // The last live event (the message) has reached the gateway once its count shows it.
    let deadline = std::time::Instant::now() + WAIT;
    let g = loop {
        let g = scrape(&http, &gateway.url).await;
        if g.get("instantchat_gateway_events_received_total") >= 3.0 {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway received 3 events within {WAIT:?}: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = |key: &str, want: f64| {
        // A series that is not exported must not pass for a value; a labelled series appears
        // only once counted, so its absence is its zero.
        assert!(
            g.has(key) || (want == 0.0 && key.contains('{')),
            "gateway exports {key}; all: {:#?}",
            g.0
        );
        assert_eq!(g.get(key), want, "gateway {key}; all: {:#?}", g.0);
    };
    // alice, bob, carol (not authenticated), dave, erin.
    expect("instantchat_gateway_connections", 5.0);
    expect("instantchat_gateway_authenticated_connections", 4.0);
    expect(
        r#"instantchat_gateway_subscriptions{event_type="comments"}"#,
        3.0,
    );
    expect(
        r#"instantchat_gateway_subscriptions{event_type="messages"}"#,
        1.0,
    );
    expect(
        r#"instantchat_gateway_auth_failures_total{reason="invalid"}"#,
        2.0,
    );
    expect("instantchat_gateway_events_received_total", 3.0);
    expect(
        r#"instantchat_gateway_events_delivered_total{event_type="comments"}"#,
        4.0,
    );
    expect(
        r#"instantchat_gateway_events_delivered_total{event_type="messages"}"#,
        0.0,
    );
    expect(
        r#"instantchat_gateway_rate_limited_total{kind="socket_request"}"#,
        3.0,
    );
    // carol's subscribe and dave's three refused heartbeats.
    expect("instantchat_gateway_request_errors_total", 4.0);
    expect("instantchat_gateway_slow_client_disconnects_total", 0.0);
    expect("instantchat_gateway_replays_total", 1.0);
    expect("instantchat_gateway_replayed_events_total", 2.0);
    // Both comments were emitted live; the message had no socket to go to.
    expect("instantchat_gateway_delivery_latency_seconds_count", 2.0);
    assert!(g.get("instantchat_gateway_delivery_latency_seconds_sum") < 5.0);
    expect("instantchat_gateway_nats_connected", 1.0);
    assert!(g.get("process_resident_memory_bytes") > 1e6, "{:?}", g.0);

    let i = scrape(&http, &ingest.url).await;
    let expect = |key: &str, want: f64| {
        assert!(
            i.has(key) || (want == 0.0 && key.contains('{')),
            "ingest exports {key}; all: {:#?}",
            i.0
        );
        assert_eq!(i.get(key), want, "ingest {key}; all: {:#?}", i.0);
    };
    expect(r#"instantchat_webhooks_total{outcome="accepted"}"#, 4.0);
    expect(
        r#"instantchat_webhooks_total{outcome="bad_signature"}"#,
        1.0,
    );
    expect(
        r#"instantchat_webhooks_total{outcome="rejected_body"}"#,
        1.0,
    );
    expect(
        r#"instantchat_events_published_total{event_type="comments",duplicate="false"}"#,
        2.0,
    );
    expect(
        r#"instantchat_events_published_total{event_type="comments",duplicate="true"}"#,
        1.0,
    );
    expect(
        r#"instantchat_events_published_total{event_type="messages",duplicate="false"}"#,
        1.0,
    );
    expect("instantchat_webhook_duration_seconds_count", 6.0);
    expect("instantchat_ingest_nats_connected", 1.0);
    assert!(i.get("process_resident_memory_bytes") > 1e6, "{:?}", i.0);

    // Gauges follow disconnects.
    alice.disconnect().await;
    carol.disconnect().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let g = scrape(&http, &gateway.url).await;
        if g.get("instantchat_gateway_connections") == 3.0 {
            assert_eq!(g.get("instantchat_gateway_authenticated_connections"), 3.0);
            assert_eq!(
                g.get(r#"instantchat_gateway_subscriptions{event_type="comments"}"#),
                2.0
            );
            assert!(!g.has(r#"instantchat_gateway_subscriptions{event_type="messages"}"#));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gauges fall after disconnects: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for client in [bob, dave, erin] {
        client.disconnect().await;
    }
    gateway.shut_down("gateway").await;
    ingest.shut_down("ingest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_the_nats_gauges_follow_nats_down_and_back() {
    let mut nats = NatsServer::start_new();
    let ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(&nats.url(), &[]).await;
    let http = http();
    wait_status(&http, &format!("{}/readyz", ingest.url), 200).await;
    wait_status(&http, &format!("{}/readyz", gateway.url), 200).await;
    assert_eq!(
        scrape(&http, &gateway.url)
            .await
            .get("instantchat_gateway_nats_connected"),
        1.0
    );

    nats.stop();
    let body = wait_status(&http, &format!("{}/readyz", gateway.url), 503).await;
    assert!(body.starts_with("not ready"), "{body}");
    wait_status(&http, &format!("{}/readyz", ingest.url), 503).await;
    assert_eq!(
        scrape(&http, &gateway.url)
            .await
            .get("instantchat_gateway_nats_connected"),
        0.0
    );
    assert_eq!(
        scrape(&http, &ingest.url)
            .await
            .get("instantchat_ingest_nats_connected"),
        0.0
    );
    // Liveness is not readiness: the process is fine.
    wait_status(&http, &format!("{}/healthz", gateway.url), 200).await;

    nats.start();
    wait_status(&http, &format!("{}/readyz", gateway.url), 200).await;
    wait_status(&http, &format!("{}/readyz", ingest.url), 200).await;
    assert_eq!(
        scrape(&http, &gateway.url)
            .await
            .get("instantchat_gateway_nats_connected"),
        1.0
    );
    assert_eq!(
        scrape(&http, &ingest.url)
            .await
            .get("instantchat_ingest_nats_connected"),
        1.0
    );

    gateway.shut_down("gateway").await;
    ingest.shut_down("ingest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_view_needs_its_token_and_lists_connected_clients() {
    let nats = NatsServer::start_new();
    // Ingest creates the streams the gateways read.
    let ingest = start_ingest(&nats.url()).await;
    let closed = start_gateway(&nats.url(), &[]).await;
    let open = start_gateway(&nats.url(), &["--admin-token", ADMIN_TOKEN]).await;
    let http = http();
    wait_status(&http, &format!("{}/readyz", open.url), 200).await;

    // Without ADMIN_TOKEN the endpoint does not exist, token or not.
    let url = format!("{}/admin/connections", closed.url);
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(http.get(&url).send().await.expect("answers")), 404);
    assert_eq!(
        status(
            http.get(&url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("answers")
        ),
        404
    );

    let mut alice = connect(
        &open.url,
        Some(&json!({ "token": token("alice", &[ACCOUNT_A]) })),
        "alice",
    )
    .await;
    subscribe(&alice, &["comments", "messages"], "alice").await;
    alice.drain_events();
    let anonymous = connect(&open.url, None, "anonymous").await;

    let url = format!("{}/admin/connections", open.url);
    for (what, request) in [
        ("no header", http.get(&url)),
        (
            "a wrong token",
            http.get(&url).bearer_auth("wrong-token-0123456789"),
        ),
        (
            "the token as Basic",
            http.get(&url)
                .header("authorization", format!("Basic {ADMIN_TOKEN}")),
        ),
    ] {
        let response = request.send().await.expect("answers");
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{what}"
        );
    }

    let response = http
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.expect("JSON");
    let server = &view["server"];
    assert_eq!(server["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(server["bus"], "nats");
    assert_eq!(server["sockets"], 2, "{view:#}");
    assert_eq!(server["authenticatedSockets"], 1, "{view:#}");
    assert_eq!(server["users"], 1, "{view:#}");
    assert_eq!(server["interestAccounts"], json!([ACCOUNT_A]), "{view:#}");
    assert!(server["uptimeSecs"].is_u64());
    let users = view["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "{view:#}");
    assert_eq!(users[0]["userId"], "alice");
    let socket = &users[0]["sockets"][0];
    assert_eq!(socket["id"], alice.sid(), "{view:#}");
    assert_eq!(socket["transport"], "websocket");
    assert_eq!(socket["user"], "alice");
    assert_eq!(socket["subscriptions"], json!(["comments", "messages"]));
    assert_eq!(socket["accounts"], json!([ACCOUNT_A]));
    assert!(socket["lastSeq"].is_u64());
    let connected_at = socket["connectedAt"].as_u64().expect("connectedAt");
    assert!(connected_at <= server["now"].as_u64().expect("now"));
    let anon = view["unauthenticated"].as_array().expect("unauthenticated");
    assert_eq!(anon.len(), 1, "{view:#}");
    assert_eq!(anon[0]["id"], anonymous.sid());
    assert_eq!(anon[0]["user"], Value::Null);

    alice.disconnect().await;
    anonymous.disconnect().await;
    open.shut_down("gateway with admin").await;
    closed.shut_down("gateway without admin").await;
    ingest.shut_down("ingest").await;
}
