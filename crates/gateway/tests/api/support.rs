//! What the gateway's integration tests share: ingest and gateways started in-process on port 0
//! over a real nats-server, signed webhooks, tokens, and a parser of the Prometheus text
//! exposition.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use instantchat_broker::{NatsBus, Retention};
use instantchat_gateway::{Gateway, GatewayArgs};
use instantchat_ingest::{Application, IngestSettings, Secret, WEBHOOK_PATH};
pub use instantchat_testsupport::metrics::Scrape;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const JWT_SECRET: &str = "observability-jwt-secret-0123456789";
/// The secret ingest verifies webhook signatures with: the fixture manifest's, so Meta's
/// fixtures pass with the signatures recorded beside them.
pub const APP_SECRET: &str = "test_app_secret";
pub const ADMIN_TOKEN: &str = "observability-admin-token-0123456789";
/// The longest any single wait may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// One service running in a task, stopped by its oneshot.
pub struct Service {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Service {
    /// Triggers the shutdown and waits for the server to return.
    pub async fn shut_down(mut self, what: &str) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(8), self.task)
            .await
            .unwrap_or_else(|_| panic!("{what} stops within the timeout"))
            .unwrap_or_else(|e| panic!("{what} task does not panic: {e}"))
            .unwrap_or_else(|e| panic!("{what} serves without an I/O error: {e}"));
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// Ingest over NATS at `nats_url`, reporting its NATS connection on `/metrics`.
pub async fn start_ingest(nats_url: &str) -> Service {
    let bus = NatsBus::connect(nats_url, "ingest-under-test", Retention::default())
        .await
        .expect("ingest connects to NATS");
    let client = bus.client().clone();
    let settings = IngestSettings {
        app_secrets: vec![Secret::new(APP_SECRET)],
        verify_token: None,
        max_body_bytes: 4 * 1024 * 1024,
    };
    let app = Application::with_bus(0, settings, Arc::new(bus))
        .await
        .expect("ingest binds port 0");
    app.state().metrics().watch_nats(client);
    let url = format!("http://127.0.0.1:{}", app.port());
    let (stop, signal) = stop_signal();
    let task = tokio::spawn(app.run_until_stopped(signal));
    Service {
        url,
        stop: Some(stop),
        task,
    }
}

/// A gateway over NATS at `nats_url` with `flags` added to the defaults.
pub async fn start_gateway(nats_url: &str, flags: &[&str]) -> Service {
    let mut argv = vec![
        "instantchat-gateway",
        "--jwt-secret",
        JWT_SECRET,
        "--shutdown-timeout-secs",
        "2",
    ];
    argv.extend_from_slice(flags);
    let args = GatewayArgs::try_parse_from(argv).expect("gateway flags parse");
    let settings = args.gateway.settings().expect("valid gateway settings");
    let bus = NatsBus::connect_reader(nats_url, "gateway-under-test")
        .await
        .expect("gateway connects to NATS");
    let client = bus.client().clone();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("gateway binds port 0");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    let (stop, signal) = stop_signal();
    let gateway = Gateway::new(settings, Arc::new(bus));
    gateway.watch_nats(client);
    let task = tokio::spawn(gateway.serve(listener, signal));
    Service {
        url,
        stop: Some(stop),
        task,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("an HTTP client")
}

/// Polls `GET url` until it answers `status` (at most [`WAIT`]); returns the body.
pub async fn wait_status(http: &reqwest::Client, url: &str, status: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match http.get(url).send().await {
            Ok(r) if r.status().as_u16() == status => return r.text().await.expect("a body"),
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "GET {url}: no {status} within {WAIT:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HS256 client token.
pub fn token(user: &str, accounts: &[&str]) -> String {
    instantchat_gateway::auth::mint_token(JWT_SECRET, user, accounts, Duration::from_secs(3600))
        .expect("a signed token")
}

/// `sha256=<hex>` of HMAC-SHA256 over the raw bytes under [`APP_SECRET`], as Meta signs.
pub fn sign(body: &[u8]) -> String {
    instantchat_instagram::sign(APP_SECRET.as_bytes(), body)
}

/// A webhook in the simplified shape (`Event.source` `simple`): one event.
pub fn seed_body(id: &str, event_type: &str, account: &str) -> Vec<u8> {
    let key = if event_type == "messages" {
        "message"
    } else {
        "comment"
    };
    let mut body = json!({
        "id": id,
        "eventType": event_type,
        "accountId": account,
        "sender": { "id": "sender_1", "username": "ana" },
        "timestamp": "2025-04-16T07:40:55.994Z",
    });
    body[key] = json!({ "text": format!("{event_type} {id}") });
    serde_json::to_vec(&body).expect("JSON")
}

/// POSTs a webhook with `signature` (and extra headers); returns the status and JSON answer.
pub async fn post_webhook(
    http: &reqwest::Client,
    ingest: &str,
    body: Vec<u8>,
    signature: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = http
        .post(format!("{ingest}{WEBHOOK_PATH}"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.expect("ingest answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GETs `/metrics` of `base` and parses it.
pub async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), 200, "/metrics of {base}");
    Scrape::parse(&response.text().await.expect("a body"))
}
