//! What the patched engine (`vendor/engineioxide`) does differently from upstream, seen from a
//! client:
//!
//! - Volatile messages: a volatile emit reaches the client over WebSocket and over long-polling,
//!   only the latest of the volatile emits not yet written is kept, and a regular emit after them
//!   still arrives. The gateway does not send volatile messages, but socketioxide offers them, and
//!   the patched engine replaced upstream's channel for them with a slot of its own.
//! - A socket that starts on polling and upgrades to WebSocket (socket.io-client's default) hands
//!   its heartbeat to the WebSocket loop, and its polling heartbeat task ends at once.

use std::time::Duration;

use futures::{SinkExt, StreamExt};

use instantchat_testsupport::SioClient;
use serde_json::{Value, json};
use socketioxide::{SocketIo, extract::SocketRef};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(5);

/// A Socket.IO server on a free port whose `go` handler emits volatile `v` 1 then 2, then a
/// regular `done`, then reports on the returned channel that it has.
async fn server() -> (
    String,
    mpsc::UnboundedReceiver<()>,
    tokio::task::JoinHandle<()>,
) {
    let (handled, handled_rx) = mpsc::unbounded_channel();
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", async move |socket: SocketRef| {
        socket.on("go", async move |socket: SocketRef| {
            socket.volatile().emit("v", &1).ok();
            socket.volatile().emit("v", &2).ok();
            socket.emit("done", &()).ok();
            handled.send(()).ok();
        });
    });
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, handled_rx, task)
}

#[tokio::test]
async fn websocket_gets_the_latest_volatile_message() {
    let (url, _handled, server) = server().await;
    let mut client = SioClient::connect(&url, None).await.unwrap();
    client.emit("go", &Value::Null).unwrap();
    let mut volatile = Vec::new();
    let mut done = false;
    // The regular `done` may overtake the volatile messages: they use separate queues.
    while !done || volatile.last() != Some(&json!(2)) {
        match client.next_event(WAIT).await.unwrap() {
            (name, _) if name == "done" => done = true,
            (name, data) if name == "v" => volatile.push(data),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The connection runs beside the handler, so it may write 1 before 2 replaces it.
    assert!(
        volatile == [json!(2)] || volatile == [json!(1), json!(2)],
        "{volatile:?}"
    );
    server.abort();
}

/// A polling session with namespace `/` connected: the session's URL and id.
async fn polling_session(http: &reqwest::Client, url: &str) -> (String, String) {
    let endpoint = format!("{url}/socket.io/?EIO=4&transport=polling");
    let open = poll(http, &endpoint).await;
    let open: Value = serde_json::from_str(open[0].strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let session = format!("{endpoint}&sid={sid}");
    post(http, &session, "40").await;
    (session, sid)
}

/// The packets of the next polling response that has any besides the engine's heartbeat pings,
/// which polling sends from the start.
async fn poll(http: &reqwest::Client, session: &str) -> Vec<String> {
    loop {
        let res = http.get(session).send().await.unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        let body = res.text().await.unwrap();
        let packets: Vec<String> = body
            .split('\x1e')
            .filter(|p| *p != "2")
            .map(str::to_owned)
            .collect();
        if !packets.is_empty() {
            return packets;
        }
    }
}

async fn post(http: &reqwest::Client, session: &str, body: &'static str) {
    let res = http.post(session).body(body).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn polling_gets_the_latest_volatile_message() {
    let (url, mut handled, server) = server().await;
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let (session, _) = polling_session(&http, &url).await;
    assert!(poll(&http, &session).await[0].starts_with("40"));

    // No request waits while `go` is handled, so both volatile emits are made before anything
    // is written: the next responses carry the latest only, and `done`.
    post(&http, &session, r#"42["go"]"#).await;
    tokio::time::timeout(WAIT, handled.recv())
        .await
        .expect("the handler ran")
        .unwrap();
    let mut packets: Vec<String> = Vec::new();
    while packets.len() < 2 {
        packets.extend(poll(&http, &session).await);
    }
    packets.sort();
    assert_eq!(packets, vec![r#"42["done",null]"#, r#"42["v",2]"#]);
    server.abort();
}

#[tokio::test]
async fn an_upgraded_socket_ends_its_polling_heartbeat_task_at_once() {
    // The task pinged at the start of the session and waits for the pong.
    upgrade_ends_the_polling_heartbeat_task(false).await;
}

#[tokio::test]
async fn an_upgraded_socket_ends_its_polling_heartbeat_task_between_pings() {
    // The ping answered, the task waits for its next tick.
    upgrade_ends_the_polling_heartbeat_task(true).await;
}

async fn upgrade_ends_the_polling_heartbeat_task(answer_ping: bool) {
    // The engine's own word that a heartbeat task ended. The test's runtime has one thread, so
    // this thread's subscriber sees the server's tasks and no other test's.
    let heartbeats_ended = Matching::default();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(heartbeats_ended.clone()),
    );
    let (url, _handled, server) = server().await;
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let (session, sid) = polling_session(&http, &url).await;
    if answer_ping {
        let mut got: Vec<String> = Vec::new();
        while !got.iter().any(|p| p == "2") {
            let body = http.get(&session).send().await.unwrap().text().await;
            got.extend(body.unwrap().split('\x1e').map(str::to_owned));
        }
        post(&http, &session, "3").await;
    }

    // The upgrade's probe: the WebSocket is up, the socket still on polling with its
    // heartbeat task (default ping interval: 25 s).
    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        url.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(ws_url))
        .await
        .unwrap()
        .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    let probe = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(probe.to_text().unwrap(), "3probe");
    assert_eq!(
        heartbeats_ended.count(),
        0,
        "the polling heartbeat task runs"
    );

    // The upgrade: the WebSocket loop takes the pings over, and the task must end now, not at
    // its next tick 25 s away.
    ws.send(Message::text("5")).await.unwrap();
    instantchat_testsupport::wait_for("the heartbeat task to end", WAIT, || {
        heartbeats_ended.count() == 1
    })
    .await;

    // The socket still works over the WebSocket.
    ws.send(Message::text(r#"42["go"]"#)).await.unwrap();
    let mut got = Vec::new();
    while !got.iter().any(|t: &String| t.starts_with(r#"42["done""#)) {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(msg.to_text().unwrap().to_owned());
    }
    server.abort();
}

/// Counts the engine's "heartbeat job completed" debug events.
#[derive(Debug, Clone, Default)]
struct Matching(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Matching {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Matching {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 |= format!("{value:?}") == "heartbeat job completed";
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
