//! `spawn_app()`: a real nats-server on a free port and the ingest application in-process on
//! port 0, plus what tests need to play Meta and to look into the streams.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use instantchat_broker::{EventBus, Interest, NatsBus, Retention};
use instantchat_event::{Event, subjects};
use instantchat_ingest::{Application, IngestSettings, Secret, WEBHOOK_PATH};
use instantchat_testsupport::NatsServer;
use instantchat_testsupport::metrics::Scrape;
use instantchat_testsupport::receipt::Receipt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The secret the fixture manifest's signatures are made with, which the in-process app is
/// given. The binary refuses it (it is published, and weak), so it gets [`BINARY_SECRET`].
pub const SECRET: &str = "test_app_secret";
/// The app secret of the `instantchat-ingest` binary these tests start: one Meta could issue.
pub const BINARY_SECRET: &str = "8e3f5a1c0b9d2e7f4a6c1b0d9e8f7a2c";
/// The verify token tests configure unless they say otherwise.
pub const VERIFY_TOKEN: &str = "verify-me";
/// The longest any single wait in these tests may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// What a test may change about the app it spawns.
#[derive(Debug, Clone)]
pub struct Options {
    pub verify_token: Option<&'static str>,
    pub max_body_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verify_token: Some(VERIFY_TOKEN),
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub nats: NatsServer,
    /// The test's own connection to the broker, to read back what the app published.
    pub bus: NatsBus,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let nats = NatsServer::start_new();
    let retention = Retention::default();
    let app_bus = NatsBus::connect(&nats.url(), "ingest-under-test", retention)
        .await
        .expect("connect the app's bus");
    let settings = IngestSettings {
        app_secrets: vec![Secret::new(SECRET)],
        verify_token: options.verify_token.map(Secret::new),
        max_body_bytes: options.max_body_bytes,
    };
    let app = Application::with_bus(0, settings, Arc::new(app_bus))
        .await
        .expect("bind port 0");
    let port = app.port();
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = shutdown_rx.await;
    }));
    let bus = NatsBus::connect(&nats.url(), "ingest-tests", retention)
        .await
        .expect("connect the test's bus");
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let test = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        nats,
        bus,
        js: jetstream::new(client),
        http: reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("an HTTP client"),
        shutdown: Some(shutdown_tx),
        server: Some(server),
    };
    eventually("the app and its streams are ready", || async {
        test.get("/readyz").await.status() == 200
    })
    .await;
    test
}

impl TestApp {
    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .expect("GET answered")
    }

    /// POSTs `body` to the webhook route with `signature` as `X-Hub-Signature-256`, if any.
    /// `/metrics`, read sample by sample.
    pub async fn scrape(&self) -> Scrape {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200, "/metrics");
        Scrape::parse(&response.text().await.expect("a body"))
    }

    pub async fn post_webhook(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{WEBHOOK_PATH}", self.address))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request.send().await.expect("POST answered")
    }

    /// POSTs `body` signed with [`SECRET`], as Meta would.
    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        let signature = instantchat_instagram::sign(SECRET.as_bytes(), body);
        self.post_webhook(body, Some(&signature)).await
    }

    pub async fn stream(&self, name: &str) -> Stream {
        self.js.get_stream(name).await.expect("the stream exists")
    }

    /// How many messages `stream` holds.
    pub async fn stored(&self, name: &str) -> u64 {
        let mut stream = self.stream(name).await;
        stream.info().await.expect("stream info").state.messages
    }

    /// The last message stored on `subject` of the webhooks stream: `(msg id, body)`.
    pub async fn last_webhook_on(&self, subject: &str) -> Option<(String, Vec<u8>)> {
        let stream = self.stream(subjects::WEBHOOKS_STREAM).await;
        let message = stream.get_last_raw_message_by_subject(subject).await.ok()?;
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        Some((id, message.payload.to_vec()))
    }

    /// The subject the event at `seq` was stored on.
    pub async fn event_subject(&self, seq: u64) -> String {
        let stream = self.stream(subjects::EVENTS_STREAM).await;
        let message = stream.get_raw_message(seq).await.expect("event at seq");
        message.subject.to_string()
    }

    /// Every stored event, through the bus's replay, as `(seq, event)`.
    pub async fn replay_all(&self) -> Vec<(u64, Event)> {
        replay_all(&self.bus).await
    }

    /// Triggers the shutdown and waits for the server to finish.
    pub async fn shut_down(&mut self) -> std::io::Result<()> {
        self.trigger_shutdown();
        let server = self.server.take().expect("not shut down yet");
        tokio::time::timeout(TIMEOUT, server)
            .await
            .expect("the server stops within the timeout")
            .expect("the server task does not panic")
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.server.as_ref().is_none_or(|s| s.is_finished())
    }
}

/// Polls `condition` until it holds, failing the test after [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    instantchat_testsupport::eventually(what, TIMEOUT, condition).await;
}

/// Sends raw HTTP/1.1 bytes and returns the response's status code and body (the server closes
/// the connection: send `Connection: close`).
pub async fn raw_http(port: u16, request: &[u8]) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The server may answer (and close) before reading everything, e.g. a 413.
    let _ = tcp.write_all(request).await;
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut response))
        .await
        .expect("a response within the timeout")
        .expect("read the response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/instagram"
    ))
}

/// A fixture's exact bytes and its manifest `X-Hub-Signature-256`.
pub fn fixture(file: &str) -> (Vec<u8>, String) {
    let body = std::fs::read(fixtures_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest.json is JSON");
    assert_eq!(manifest["secret"], SECRET);
    let signature = manifest["fixtures"]
        .as_array()
        .expect("fixtures list")
        .iter()
        .find(|f| f["file"] == file)
        .and_then(|f| f["x_hub_signature_256"].as_str())
        .unwrap_or_else(|| panic!("{file} is not in the manifest"))
        .to_owned();
    (body, signature)
}

/// Every fixture file named in the manifest.
pub fn fixture_files() -> Vec<String> {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures_dir().join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest.json is JSON");
    manifest["fixtures"]
        .as_array()
        .expect("fixtures list")
        .iter()
        .map(|f| f["file"].as_str().expect("file name").to_owned())
        .collect()
}

/// Reads a webhook POST's answer, which must be a 200 receipt.
pub async fn receipt(response: reqwest::Response) -> Receipt {
    let status = response.status();
    let json: serde_json::Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 200, "{json}");
    Receipt::from_json(&json)
}

/// The bus is the app's only way out: nothing published means both streams are empty.
pub async fn assert_nothing_published(app: &TestApp) {
    assert_eq!(
        app.stored(subjects::EVENTS_STREAM).await,
        0,
        "no event stored"
    );
    assert_eq!(
        app.stored(subjects::WEBHOOKS_STREAM).await,
        0,
        "no webhook body stored"
    );
    assert!(app.bus.check_ready().await.is_ok());
}

/// The real `instantchat-ingest` binary, started on a free port against `nats_url`, with only
/// `PATH` and its settings in its environment. Killed when dropped.
#[derive(Debug)]
pub struct IngestProcess {
    pub child: tokio::process::Child,
    pub port: u16,
    pub address: String,
}

impl IngestProcess {
    /// Starts the binary and waits until it is ready.
    pub async fn start(nats_url: &str) -> Self {
        Self::start_on(nats_url, instantchat_testsupport::free_port()).await
    }

    /// Starts the binary on `port` (e.g. the port of one that was killed) and waits until it
    /// is ready.
    pub async fn start_on(nats_url: &str, port: u16) -> Self {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_instantchat-ingest"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("NATS_URL", nats_url)
            .env("INSTAGRAM_APP_SECRET", BINARY_SECRET)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the ingest binary starts");
        let process = IngestProcess {
            child,
            port,
            address: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
        let ready = format!("{}/readyz", process.address);
        eventually("the ingest binary is ready", || async {
            let response = http.get(&ready).send().await;
            response.is_ok_and(|r| r.status() == 200)
        })
        .await;
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the ingest binary is running")
    }

    /// SIGKILL, as a crash or the OOM killer would, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the ingest binary");
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("the killed binary is reaped")
            .expect("wait for the binary");
    }

    /// The process's resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status of the ingest binary");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a VmRSS line")
    }
}

/// A comment webhook in Meta's shape whose event id is `comments:<id>`, on `account`.
pub fn comment(id: &str, account: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","eventType":"comments","accountId":"{account}","sender":{{"id":"u1","username":"someone"}},"comment":{{"text":"hello {id}"}}}}"#
    )
    .into_bytes()
}

/// Every event stored in the events stream, read back over `nats_url`, as `(seq, event)`.
pub async fn stored_events(nats_url: &str) -> Vec<(u64, Event)> {
    let bus = NatsBus::connect_reader(nats_url, "ingest-tests-reader")
        .await
        .expect("connect the test's reader");
    let events = replay_all(&bus).await;
    bus.close().await;
    events
}

/// Every event `bus` has stored, as `(seq, event)`.
async fn replay_all(bus: &dyn EventBus) -> Vec<(u64, Event)> {
    let replay = tokio::time::timeout(TIMEOUT, bus.replay(Interest::All, 0))
        .await
        .expect("replay within the timeout")
        .expect("replay");
    let events: Vec<_> = tokio::time::timeout(TIMEOUT, replay.events.collect::<Vec<_>>())
        .await
        .expect("replay ends within the timeout");
    events
        .into_iter()
        .map(|d| d.expect("a decodable event"))
        .map(|d| (d.seq, Arc::unwrap_or_clone(d.event)))
        .collect()
}
