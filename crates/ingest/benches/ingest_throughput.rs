//! End-to-end ingest throughput: a real nats-server, the ingest app in-process, and concurrent
//! senders POSTing distinct signed ~1 KB Instagram messaging webhooks. A webhook counts once it
//! is answered 200, i.e. after its raw body and its event were acknowledged by JetStream.
//!
//! `cargo bench -p instantchat-ingest --bench ingest_throughput`
//! Environment: `INGEST_BENCH_SECS` (default 10), `INGEST_BENCH_SENDERS` (default 64).
//! Run without `--bench` (as `cargo test --benches` does) it only smoke-tests for half a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use instantchat_broker::Retention;
use instantchat_event::subjects;
use instantchat_ingest::{Application, Config, IngestSettings, LogFormat, Secret, WEBHOOK_PATH};
use instantchat_testsupport::NatsServer;

const SECRET: &str = "bench_app_secret";
/// Size the bodies are padded to, about what a text message webhook with metadata weighs.
const BODY_BYTES: usize = 1024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A distinct Meta messaging webhook of about [`BODY_BYTES`].
fn body(sender: usize, n: u64) -> Vec<u8> {
    let head = format!(
        r#"{{"object":"instagram","entry":[{{"time":1744789255994,"id":"17841470945980483","messaging":[{{"sender":{{"id":"{sender}"}},"recipient":{{"id":"17841470945980483"}},"timestamp":1744789255335,"message":{{"mid":"m_bench_{sender}_{n}","text":""#
    );
    let tail = r#""}}]}]}"#;
    let pad = BODY_BYTES.saturating_sub(head.len() + tail.len());
    let mut body = head.into_bytes();
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(tail.as_bytes());
    body
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let secs: f64 = if benchmarking {
        env_or("INGEST_BENCH_SECS", 10.0)
    } else {
        0.5
    };
    let senders: usize = env_or("INGEST_BENCH_SENDERS", 64);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run(Duration::from_secs_f64(secs), senders));
}

async fn run(duration: Duration, senders: usize) {
    let nats = NatsServer::start_new();
    let config = Config {
        port: 0,
        nats_url: nats.url(),
        ingest: IngestSettings {
            app_secrets: vec![Secret::new(SECRET)],
            verify_token: None,
            max_body_bytes: 4 * 1024 * 1024,
        },
        retention: Retention::default(),
        log_filter: "warn".into(),
        log_format: LogFormat::Text,
    };
    let app = Application::build(config).await.expect("the app starts");
    let url = format!("http://127.0.0.1:{}{WEBHOOK_PATH}", app.port());
    let ready_url = format!("http://127.0.0.1:{}/readyz", app.port());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(senders)
        .build()
        .expect("an HTTP client");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http
        .get(&ready_url)
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "the app did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let end = started + duration;
    let url = Arc::new(url);
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                let mut n = 0u64;
                while Instant::now() < end {
                    let body = body(sender, n);
                    n += 1;
                    let signature = instantchat_instagram::sign(SECRET.as_bytes(), &body);
                    let sent = Instant::now();
                    let response = http
                        .post(url.as_str())
                        .header("x-hub-signature-256", signature)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 200 => {
                            // Read the receipt: the answer is complete only with its body.
                            let _ = r.bytes().await;
                            latencies.push(sent.elapsed());
                        }
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.expect("a sender task");
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();

    // Every 200 must be in the stream: read the count back from the broker.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .expect("the events stream");
    let stored = stream.info().await.expect("stream info").state.messages;

    let accepted = latencies.len() as u64;
    println!(
        "ingest_throughput: {senders} senders, {BODY_BYTES}-byte signed webhooks, {elapsed:.1?}"
    );
    println!(
        "  accepted (200 after PubAck): {accepted}  failed: {failures}  events stored: {stored}"
    );
    println!(
        "  throughput: {:.0} webhooks/s",
        accepted as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  latency: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "  reproduce: INGEST_BENCH_SECS={} INGEST_BENCH_SENDERS={senders} cargo bench -p instantchat-ingest --bench ingest_throughput",
        duration.as_secs_f64()
    );
    // A request that failed on the client side may still have been stored; none may be missing.
    assert!(
        stored >= accepted,
        "every accepted webhook's event is stored"
    );
    if failures == 0 {
        assert_eq!(stored, accepted, "every event is stored once");
    }

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
}
