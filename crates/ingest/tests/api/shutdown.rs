//! Graceful shutdown: a webhook in flight when the signal arrives still gets its answer.

use instantchat_event::subjects;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{SECRET, TIMEOUT, eventually, spawn_app};

const IN_FLIGHT: &str = "instantchat_webhooks_in_flight";

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() {
    let mut app = spawn_app().await;
    let body = br#"{"object":"instagram","entry":[{"id":"1","time":1744789255994,"messaging":[{"sender":{"id":"2"},"timestamp":1744789255335,"message":{"mid":"m_inflight","text":"hi"}}]}]}"#;
    let signature = instantchat_instagram::sign(SECRET.as_bytes(), body);
    let head = format!(
        "POST /api/webhooks/instagram HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\nX-Hub-Signature-256: {signature}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(20);
    let port = app.port;

    // Half the request: the handler has it and waits for the rest of the body.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(first).await.unwrap();
    eventually("the webhook is in flight", || async {
        app.scrape().await.get(IN_FLIGHT) == 1.0
    })
    .await;

    // The signal: the listener closes at once, the server waits for the request it holds.
    app.trigger_shutdown();
    eventually("new connections are refused", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    assert!(
        !app.is_stopped(),
        "the server waits for the request in flight"
    );

    // The rest of the body: the webhook is published and answered.
    tcp.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut response))
        .await
        .expect("an answer within the timeout")
        .expect("read the answer");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("messages:m_inflight"), "{response}");
    app.shut_down().await.expect("a clean stop");
    assert_eq!(
        app.stored(subjects::EVENTS_STREAM).await,
        1,
        "its event was published"
    );
}
