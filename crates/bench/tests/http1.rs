//! The ingest load generator's lean HTTP/1.1 client: against axum servers on port 0 it keeps
//! one connection, sends what it is given and reads each answer whole; an answer it cannot
//! frame or a closed connection is an error, never a hang. Then the whole ingest phase, with
//! each client, against a real ingest and nats-server: every answer counted as it was given,
//! and with `--rounds` each round's phases checked on their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use instantchat_bench::http1::{Http1Connection, Http1Error};
use instantchat_broker::{NatsBus, Retention};
use instantchat_event::subjects;
use instantchat_ingest::{Application, IngestSettings, Secret};
use instantchat_testsupport::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

const WAIT: Duration = Duration::from_secs(10);

/// Serves `router` on 127.0.0.1:0, with each request's peer address; its `HOST:PORT`.
async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}

/// Answers with the peer's port, the headers the client sent and the body's length; 401
/// for a body that says so.
async fn echo(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let status = if &body[..] == b"refuse me" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        status,
        format!(
            "{} {} {} {} {}",
            peer.port(),
            header("host"),
            header("x-hub-signature-256"),
            header("content-type"),
            body.len()
        ),
    )
}

#[tokio::test]
async fn one_connection_carries_every_request_and_each_answer_whole() {
    let addr = serve(axum::Router::new().route("/hook", post(echo))).await;
    let mut c = tokio::time::timeout(WAIT, Http1Connection::open(&addr))
        .await
        .unwrap()
        .unwrap();
    let headers = [
        ("content-type", "application/json"),
        ("x-hub-signature-256", "sha256=abc"),
    ];
    let mut ports = Vec::new();
    for n in 0..50usize {
        let body = vec![b'x'; n * 97];
        let (status, answer) = tokio::time::timeout(WAIT, c.post("/hook", &headers, &body))
            .await
            .expect("no answer")
            .unwrap();
        assert_eq!(status, 200);
        let answer = String::from_utf8(answer.to_vec()).unwrap();
        let fields: Vec<&str> = answer.split(' ').collect();
        assert_eq!(
            fields[1..],
            [
                addr.as_str(),
                "sha256=abc",
                "application/json",
                &body.len().to_string()
            ],
            "{answer}"
        );
        ports.push(fields[0].to_owned());
    }
    ports.dedup();
    assert_eq!(
        ports.len(),
        1,
        "the client opened new connections: {ports:?}"
    );

    // A refusal is an answer like any other, and the connection stays usable.
    let (status, _) = tokio::time::timeout(WAIT, c.post("/hook", &headers, b"refuse me"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = tokio::time::timeout(WAIT, c.post("/hook", &headers, b"{}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_chunked_answer_is_an_error_that_says_so() {
    let router = axum::Router::new().route(
        "/hook",
        post(|| async {
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>("a"), Ok("b")]);
            Body::from_stream(chunks)
        }),
    );
    let addr = serve(router).await;
    let mut c = Http1Connection::open(&addr).await.unwrap();
    let err = tokio::time::timeout(WAIT, c.post("/hook", &[], b"{}"))
        .await
        .expect("no answer")
        .unwrap_err();
    assert!(matches!(err, Http1Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("chunked"), "{err}");
}

#[tokio::test]
async fn a_connection_closed_mid_answer_is_an_error_not_a_hang() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf).await;
        // Half an answer: a length promised and not sent.
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"status\"")
            .await;
    });
    let mut c = Http1Connection::open(&addr).await.unwrap();
    let err = tokio::time::timeout(WAIT, c.post("/hook", &[], b"{}"))
        .await
        .expect("the client hung on a closed connection")
        .unwrap_err();
    assert!(matches!(err, Http1Error::Closed), "{err:?}");
}

#[tokio::test]
async fn nothing_listening_is_an_error_that_names_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = Http1Connection::open(&addr).await.unwrap_err();
    assert!(err.to_string().contains(&addr), "{err}");
}

/// Runs the bench with `client` and `extra` arguments against a real ingest over a real
/// nats-server, 300 webhooks a phase of which every 10th is badly signed; the report, and how
/// many raw bodies the webhooks stream holds after it.
async fn ingest_phase_with(client: &str, extra: &[&str]) -> (serde_json::Value, u64) {
    const SECRET: &str = "bench-http1-test-secret";
    let nats = NatsServer::start_new();
    let bus = NatsBus::connect(&nats.url(), "ingest-under-bench", Retention::default())
        .await
        .unwrap();
    let settings = IngestSettings {
        app_secrets: vec![Secret::new(SECRET)],
        verify_token: None,
        max_body_bytes: 1024 * 1024,
    };
    let app = Application::with_bus(0, settings, Arc::new(bus))
        .await
        .unwrap();
    let (nats_url, ingest_url) = (nats.url(), format!("http://127.0.0.1:{}", app.port()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let mut args = vec![
        "--http-client",
        client,
        "--nats-url",
        &nats_url,
        "--ingest-url",
        &ingest_url,
        "--app-secret",
        SECRET,
        "--senders",
        "8",
        "--max-webhooks",
        "300",
        "--bad-every",
        "10",
        "--warmup",
        "0",
        "--duration",
        "10",
        "--max-seconds",
        "120",
    ];
    args.extend(extra);
    let (report, _) = common::bench_ingest(&args, Duration::from_secs(150)).await;
    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .expect("ingest did not stop")
        .unwrap()
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bodies = js
        .get_stream(subjects::WEBHOOKS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    (report, bodies)
}

/// Checks one ingest phase of 300 webhooks: each answer counted as given, the streams exact.
fn assert_ingest_phase(client: &str, ingest: &serde_json::Value) {
    assert_eq!(ingest["name"], "ingest");
    assert_eq!(ingest["sent"], 300, "{client}: {ingest}");
    assert_eq!(ingest["accepted"], 270, "{client}: {ingest}");
    assert_eq!(ingest["refused_as_expected"], 30, "{client}: {ingest}");
    assert_eq!(ingest["failed"], 0, "{client}: {ingest}");
    let c = &ingest["completeness"];
    assert_eq!(c["exact"], true, "{client}: {c}");
    assert_eq!(c["bodies_once"], 270, "{client}: {c}");
    assert_eq!(c["events_of_refused"], 0, "{client}: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_counts_every_answer_of_a_real_ingest() {
    let (report, bodies) = ingest_phase_with("hyper", &["--no-floor"]).await;
    assert_eq!(bodies, 270);
    assert_eq!(report["config"]["http_client"], "hyper");
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{phases:?}");
    assert_ingest_phase("hyper", &phases[0]);
}

/// The lean client, in two rounds of ingest then floor: each round's webhooks are new (a run
/// id of their own), each phase is checked against the streams, and the ratio target is read
/// per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_counts_every_answer_of_a_real_ingest_round_after_round() {
    let (report, bodies) = ingest_phase_with("lean", &["--rounds", "2"]).await;
    // Every body of every phase is new, none a redelivery of an earlier round's.
    assert_eq!(bodies, 2 * 270 + 2 * 300, "bodies repeated across rounds");
    assert_eq!(report["config"]["http_client"], "lean");
    let phases = report["phases"].as_array().unwrap();
    let shape: Vec<(String, u64)> = phases
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["round"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [("ingest", 1), ("floor", 1), ("ingest", 2), ("floor", 2)];
    assert_eq!(
        shape,
        expected.map(|(n, r)| (n.to_owned(), r)),
        "phases out of order"
    );
    for phase in phases.iter().filter(|p| p["name"] == "ingest") {
        assert_ingest_phase("lean", phase);
    }
    for floor in phases.iter().filter(|p| p["name"] == "floor") {
        assert_eq!(floor["accepted"], 300, "{floor}");
        assert_eq!(floor["completeness"]["exact"], true, "{floor}");
        assert_eq!(floor["completeness"]["bodies_once"], 300, "{floor}");
    }
    let share = common::target(&report, ">= 70 % of the floor");
    assert_eq!(share["rounds"].as_array().unwrap().len(), 2, "{share}");
    let completeness = common::target(&report, "exact");
    assert_eq!(completeness["met"], true, "{completeness}");
    // Both rounds' acknowledged bodies, summed.
    assert!(
        completeness["measured"]
            .as_str()
            .unwrap()
            .ends_with("540 of 540 bodies"),
        "{completeness}"
    );
}
