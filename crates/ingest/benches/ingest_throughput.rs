//! End-to-end ingest throughput: a real nats-server, the ingest app in-process, and concurrent
//! senders POSTing distinct signed ~1 KB Instagram messaging webhooks. A webhook counts once it
//! is answered 200, i.e. after its raw body and its event were acknowledged by JetStream.
//!
//! `cargo bench -p instantchat-ingest --bench ingest_throughput`
//! Environment: `INGEST_BENCH_SECS` (default 10), `INGEST_BENCH_SENDERS` (default 64).
//! Run without `--bench` (as `cargo test --benches` does) it only smoke-tests for half a second.
//!
//! The app and the load generator run on separate runtimes with named threads, so the CPU time
//! each one used can be read from `/proc` (Linux) and reported per webhook: on a machine shared
//! with other work the rate alone says little.

use std::sync::Arc;
use std::time::{Duration, Instant};

use instantchat_broker::Retention;
use instantchat_event::subjects;
use instantchat_ingest::{Application, Config, IngestSettings, LogFormat, Secret, WEBHOOK_PATH};
use instantchat_testsupport::NatsServer;

const SECRET: &str = "bench_app_secret";
/// Size the bodies are padded to, about what a text message webhook with metadata weighs.
const BODY_BYTES: usize = 1024;
/// Thread names of the two runtimes, to tell their CPU time apart.
const APP_THREADS: &str = "ingest-app";
const CLIENT_THREADS: &str = "bench-client";

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

/// `(comm, ppid, cpu)` of a `/proc/.../stat` file (Linux).
fn stat(dir: &str) -> Option<(String, u32, Duration)> {
    let comm = std::fs::read_to_string(format!("{dir}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command name: state, ppid, ..., utime and stime (fields 14 and 15 of the line).
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((
        comm.trim().to_owned(),
        ppid,
        Duration::from_millis(ticks * 10),
    ))
}

/// CPU time used so far by the app's threads, the client's threads and the `nats-server` child.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    app: Duration,
    client: Duration,
    nats: Duration,
}

fn cpu_used() -> Option<Cpu> {
    let mut cpu = Cpu::default();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some((comm, _, time)) = stat(&task.path().to_string_lossy()) else {
            continue;
        };
        // `comm` is cut to 15 bytes.
        if APP_THREADS.starts_with(&comm) {
            cpu.app += time;
        } else if CLIENT_THREADS.starts_with(&comm) {
            cpu.client += time;
        }
    }
    let me = std::process::id();
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        if let Some((comm, ppid, time)) = stat(&process.path().to_string_lossy())
            && ppid == me
            && comm == "nats-server"
        {
            cpu.nats += time;
        }
    }
    Some(cpu)
}

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let duration = Duration::from_secs_f64(if benchmarking {
        env_or("INGEST_BENCH_SECS", 10.0)
    } else {
        0.5
    });
    let senders: usize = env_or("INGEST_BENCH_SENDERS", 64);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    let nats = NatsServer::start_new();
    let app_runtime = runtime(APP_THREADS, cores);
    let app = app_runtime
        .block_on(Application::build(Config {
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
        }))
        .expect("the app starts");
    let port = app.port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = app_runtime.spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));

    let report = runtime(CLIENT_THREADS, cores).block_on(load(port, duration, senders));
    let stored = app_runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(subjects::EVENTS_STREAM)
            .await
            .expect("the events stream");
        stream.info().await.expect("stream info").state.messages
    });
    report.print(stored, duration, senders, cores);

    let _ = stop_tx.send(());
    let _ =
        app_runtime.block_on(async { tokio::time::timeout(Duration::from_secs(30), server).await });
}

/// What the senders measured.
struct Report {
    latencies: Vec<Duration>,
    failures: u64,
    elapsed: Duration,
    cpu: Option<(Cpu, Cpu)>,
}

async fn load(port: u16, duration: Duration, senders: usize) -> Report {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(senders)
        .build()
        .expect("an HTTP client");
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(15);
    while http
        .get(&ready)
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(Instant::now() < deadline, "the app did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Parsed once: the client's own per-request cost should stay small.
    let url = Arc::new(
        reqwest::Url::parse(&format!("http://127.0.0.1:{port}{WEBHOOK_PATH}")).expect("a URL"),
    );
    let cpu_before = cpu_used();
    let started = Instant::now();
    let end = started + duration;
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
                        .post(url.as_ref().clone())
                        .header("x-hub-signature-256", signature)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status() == 200 => {
                            // The answer is complete only with its receipt.
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
    let cpu = cpu_before.zip(cpu_used());
    latencies.sort_unstable();
    Report {
        latencies,
        failures,
        elapsed,
        cpu,
    }
}

impl Report {
    fn print(&self, stored: u64, duration: Duration, senders: usize, cores: usize) {
        let accepted = self.latencies.len() as u64;
        let secs = self.elapsed.as_secs_f64();
        println!(
            "ingest_throughput: {senders} senders, {BODY_BYTES}-byte signed webhooks, {:.1?}",
            self.elapsed
        );
        println!(
            "  accepted (200 after PubAck): {accepted}  failed: {}  events stored: {stored}",
            self.failures
        );
        println!("  throughput: {:.0} webhooks/s", accepted as f64 / secs);
        println!(
            "  latency: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
            percentile(&self.latencies, 0.50),
            percentile(&self.latencies, 0.99),
            self.latencies.last().copied().unwrap_or_default()
        );
        if let Some((before, after)) = self.cpu {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / accepted.max(1) as f64;
            let (app, client, nats) = (
                after.app - before.app,
                after.client - before.client,
                after.nats - before.nats,
            );
            println!(
                "  CPU per webhook: ingest app {:.0} µs, nats-server {:.0} µs, load generator {:.0} µs; \
                 {:.2} of {cores} cores used by the three",
                per(app),
                per(nats),
                per(client),
                (app + nats + client).as_secs_f64() / secs,
            );
            println!(
                "  ingest + nats-server alone on {cores} cores would sustain about {:.0} webhooks/s",
                cores as f64 * 1e6 / (per(app) + per(nats)).max(1.0)
            );
        }
        println!(
            "  reproduce: INGEST_BENCH_SECS={} INGEST_BENCH_SENDERS={senders} cargo bench -p instantchat-ingest --bench ingest_throughput",
            duration.as_secs_f64()
        );
        // A request that failed on the client side may still have been stored; none may be lost.
        assert!(
            stored >= accepted,
            "every accepted webhook's event is stored"
        );
        if self.failures == 0 {
            assert_eq!(stored, accepted, "every event is stored once");
        }
    }
}
