//! Graceful shutdown: a webhook in flight when the signal arrives still gets its answer.

use std::time::Duration;

use instantchat_event::subjects;

use crate::helpers::{SECRET, raw_http, spawn_app};

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
    let mut first_part = head.into_bytes();
    first_part.extend_from_slice(first);

    let port = app.port;
    // Half the request, a pause during which shutdown is triggered, then the rest.
    let request = tokio::spawn(raw_http(
        port,
        vec![
            (first_part, Duration::from_millis(500)),
            (rest.to_vec(), Duration::ZERO),
        ],
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !app.is_stopped(),
        "the server waits for the request in flight"
    );

    let (status, response) = request.await.unwrap();
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("messages:m_inflight"), "{response}");
    app.shut_down().await.expect("a clean stop");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "no longer listening"
    );
    assert_eq!(
        app.stored(subjects::EVENTS_STREAM).await,
        1,
        "its event was published"
    );
}
