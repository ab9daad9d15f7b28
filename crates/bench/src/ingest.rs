//! `ingest`: how many webhooks per second `instantchat-ingest` takes durably, at what latency and
//! CPU, and what JetStream alone does with the same messages beside it (the floor).
//!
//! - Bodies: Meta's Instagram webhooks from the fixtures directory (`--fixtures`: `manifest.json`
//!   and the bodies it lists, the ones the tests read). Each is made unique per webhook by a
//!   suffix on the ids inside its items (the accounts stay), so every webhook's events are new,
//!   and signed with the app secret. Every `--bad-every`th webhook carries a wrong signature.
//! - Ingest phase: `--senders` tasks, one keep-alive HTTP/1.1 connection each (the lean
//!   [`crate::http1`] client, or hyper's with `--http-client hyper`), POST as fast as answers
//!   come back, or together at `--rate` per second. After `--warmup`, `--duration`
//!   seconds are measured: accepted webhooks/s, POST-to-answer latency, CPU per webhook of
//!   ingest, nats-server and the bench (from `/proc`). Then completeness: every webhook answered
//!   200 has each of its events, and its raw body, in the streams exactly once; a refused one
//!   has nothing there.
//! - Floor phase: ingest stopped, the same number of senders publish the same messages (each
//!   webhook's events, as ingest encodes them, and its raw body) straight to JetStream with
//!   ingest's own publisher ([`NatsBus`] on async-nats), each awaiting its webhook's
//!   acknowledgements before the next: no HTTP, no ingest. Its rate and nats-server's CPU per
//!   message are what ingest is read against. The messages are made on a thread of their own,
//!   so the bench's CPU without that thread is what publishing alone costs per webhook.
//!   `--floor-publisher fast-batch` publishes in nats-server's fast-ingest batches instead
//!   ([`crate::fast_batch`]), to measure what one acknowledgement per batch would save.
//! - HTTP floor (`--http-floor`): the same senders and bodies against ingest's serve loop and an
//!   axum router that answer without verifying, normalizing or publishing. HTTP alone and
//!   publishing alone, added up, are what ingest's two outer parts cost each on their own.
//! - Rounds (`--rounds N`): the ingest and floor phases alternate N times, each round's ingest
//!   read against the floor right after it, and the targets take the median of the rounds: a
//!   shared host's speed drifts between two phases a minute apart.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use instantchat_broker::{EventBus as _, NatsBus, Outgoing};
use instantchat_event::subjects;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::fast_batch::FastBatch;
use crate::hist::{self, Summary};
use crate::http1::Http1Connection;
use crate::monitor::{Monitor, ProcUsage, process_cores, round2};
use crate::procfs::{self, Machine};
use crate::scenarios::{command_line, int, print_rows, wait_quiet, write_report};
use crate::system::{APP_SECRET, System, SystemConfig};
use crate::worker::now_us;

/// Keys whose string values identify an item (or part of one); suffixed to make bodies unique.
const ID_KEYS: [&str; 4] = ["id", "mid", "comment_id", "media_id"];
/// The longest a POST or a publish may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IngestArgs {
    /// Concurrent senders: keep-alive HTTP connections to ingest, and publishers in the floor.
    #[arg(long, default_value_t = 64)]
    pub senders: usize,
    /// Webhooks per second, all senders together (open loop: each sender keeps its share of the
    /// schedule). Unset: every sender POSTs again as soon as it has its answer.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds measured in each phase, after the warm-up.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of load before the measurement starts, in each phase.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Most webhooks sent in each phase; a phase ends early once they are all answered.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_webhooks: u64,
    /// Every Nth webhook is sent with a wrong signature: it must be answered 401 and leave
    /// nothing in the streams (0: none).
    #[arg(long, default_value_t = 100)]
    pub bad_every: u64,
    /// The Instagram webhook fixtures: a directory with `manifest.json` and the bodies it lists
    /// (the directory the tests read; the default is relative to the repository root).
    #[arg(
        long,
        env = "INSTANTCHAT_FIXTURES",
        default_value = "testdata/instagram"
    )]
    #[serde(skip)]
    pub fixtures: PathBuf,
    /// Only the ingest phase.
    #[arg(long, conflicts_with = "floor_only")]
    pub no_floor: bool,
    /// How the floor publishes: `bus`, ingest's own publisher (a PubAck per message); or
    /// `fast-batch`, an experiment: nats-server's fast-ingest batches (2.14+; the bench turns on
    /// `allow_batched` on both streams), one acknowledgement per batch of webhooks.
    #[arg(long, value_enum, default_value_t = FloorPublisher::Bus)]
    pub floor_publisher: FloorPublisher,
    /// What the HTTP senders POST with: `lean`, the bench's own keep-alive client, which writes
    /// each request and reads its answer on the sender's own task; or `hyper`, hyper's client,
    /// whose connection task costs the load generator about a third more CPU per webhook, all
    /// of it taken from the cores ingest and nats-server are measured on.
    #[arg(long, value_enum, default_value_t = HttpClient::Lean)]
    pub http_client: HttpClient,
    /// Alternate the ingest and floor phases this many times (each `--warmup` + `--duration`
    /// long), ingest left idle while the floor runs. A shared host's speed drifts within minutes,
    /// so one ingest phase and one floor phase a minute apart can be read against different
    /// machines; the targets take the median of the rounds, each ingest read against the floor
    /// right after it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Only the floor phase (no ingest is started).
    #[arg(long)]
    pub floor_only: bool,
    /// Also the HTTP floor, last: the same senders and bodies against ingest's serve loop and
    /// router alone (a hidden `http-echo` process that reads each body and answers a receipt of
    /// the same shape, with no verification, normalization or broker): what HTTP/1.1 costs per
    /// webhook here before any of ingest's own work.
    #[arg(long)]
    pub http_floor: bool,
    /// Use the nats-server at this URL instead of starting one (with --ingest-url, use both).
    /// The bench then never stops it, and checks only its own messages in the streams.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Use the ingest at this URL (e.g. http://127.0.0.1:8080) instead of starting one; needs
    /// --nats-url (its NATS) and --app-secret.
    #[arg(long, requires = "nats_url")]
    pub ingest_url: Option<String>,
    /// The pid of the ingest at --ingest-url, to report its CPU.
    #[arg(long)]
    pub ingest_pid: Option<u32>,
    /// The pid of the nats-server at --nats-url, to report its CPU.
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// The app secret the ingest at --ingest-url verifies with (the first, if it has several).
    #[arg(long, env = "INSTAGRAM_APP_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub app_secret: Option<String>,
    /// More settings of the ingest the bench starts, as KEY=VALUE (repeatable), e.g.
    /// TOKIO_WORKER_THREADS=1 or RUST_LOG=info.
    #[arg(long = "ingest-env", value_parser = crate::parse_kv)]
    pub ingest_env: Vec<(String, String)>,
    /// Directory of the release binaries (instantchat-ingest).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The nats-server binary (2.10 or newer).
    #[arg(long, env = "NATS_SERVER_BIN", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hard bound of the whole run in seconds.
    #[arg(long, default_value_t = 180)]
    pub max_seconds: u64,
    /// Before starting, wait up to this many seconds for the machine to be quiet; 0: at once.
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
    /// Keep the processes' logs and NATS store (the directory is printed).
    #[arg(long)]
    pub keep_logs: bool,
}

/// One fixture as a template: its bytes cut where a suffix goes after each item id.
#[derive(Debug, Clone)]
struct Template {
    file: String,
    parts: Vec<String>,
    /// Events one body of this template makes.
    events: usize,
    /// Messages ingest publishes for one body: the raw body (and the rejected copy when part
    /// of it is unusable) and each event.
    messages: usize,
}

impl Template {
    fn body(&self, suffix: &str) -> String {
        let mut out = String::with_capacity(
            self.parts.iter().map(String::len).sum::<usize>() + suffix.len() * self.parts.len(),
        );
        for (k, part) in self.parts.iter().enumerate() {
            if k > 0 {
                out.push_str(suffix);
            }
            out.push_str(part);
        }
        out
    }
}

/// The bodies of a run: webhook `n` is template `n % T` with suffix `_<run>_<n>`.
#[derive(Debug)]
struct Bodies {
    run: String,
    templates: Vec<Template>,
    bad_every: u64,
}

impl Bodies {
    /// The same templates under the run id `<run><suffix>`, so none of its webhooks repeats
    /// one of this run's, every `bad_every`th badly signed.
    fn under(&self, suffix: &str, bad_every: u64) -> Bodies {
        Bodies {
            run: format!("{}{suffix}", self.run),
            templates: self.templates.clone(),
            bad_every,
        }
    }

    fn body(&self, n: u64) -> String {
        let template = &self.templates[(n % self.templates.len() as u64) as usize];
        template.body(&format!("_{}_{n}", self.run))
    }

    /// Messages ingest publishes for webhook `n` once it is accepted.
    fn messages(&self, n: u64) -> u64 {
        self.templates[(n % self.templates.len() as u64) as usize].messages as u64
    }

    fn is_bad(&self, n: u64) -> bool {
        self.bad_every > 0 && n % self.bad_every == self.bad_every - 1
    }

    /// The body of webhook `n` and its `X-Hub-Signature-256` (a wrong one for bad webhooks).
    fn signed(&self, n: u64, secret: &[u8]) -> (String, String) {
        let body = self.body(n);
        let signature = if self.is_bad(n) {
            instantchat_instagram::sign(b"not-the-app-secret", body.as_bytes())
        } else {
            instantchat_instagram::sign(secret, body.as_bytes())
        };
        (body, signature)
    }

    fn mean_bytes(&self) -> f64 {
        let sizes: Vec<usize> = (0..self.templates.len() as u64)
            .map(|n| self.body(n).len())
            .collect();
        sizes.iter().sum::<usize>() as f64 / sizes.len().max(1) as f64
    }

    fn mean_events(&self) -> f64 {
        self.templates.iter().map(|t| t.events).sum::<usize>() as f64
            / self.templates.len().max(1) as f64
    }
}

/// Reads the fixtures and makes a template of each one that yields events and can be made
/// unique; says which were left out and why.
fn load_templates(dir: &Path) -> anyhow::Result<Vec<Template>> {
    let manifest_path = dir.join("manifest.json");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).with_context(|| {
            format!(
                "cannot read {}: run from the repository root, or point --fixtures (or \
                 INSTANTCHAT_FIXTURES) at the Instagram fixtures directory, the one with \
                 manifest.json (testdata/instagram in the repository)",
                manifest_path.display()
            )
        })?)
        .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    let files: Vec<String> = manifest["fixtures"]
        .as_array()
        .context("manifest.json has no `fixtures` list")?
        .iter()
        .filter_map(|f| f["file"].as_str().map(str::to_owned))
        .collect();
    let mut templates = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(dir.join(&file))
            .with_context(|| format!("cannot read fixture {file}"))?;
        match template(&file, &text) {
            Ok(t) => templates.push(t),
            Err(why) => eprintln!("instantchat-bench ingest: {file} left out: {why}"),
        }
    }
    if templates.is_empty() {
        bail!("no usable fixture in {}", dir.display());
    }
    Ok(templates)
}

fn template(file: &str, text: &str) -> Result<Template, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    // Ids under the entries' items; the entries' own ids are accounts, which stay.
    let accounts: HashSet<String> = value["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    let mut ids = HashSet::new();
    for entry in value["entry"].as_array().into_iter().flatten() {
        if let Some(entry) = entry.as_object() {
            for (key, v) in entry {
                if key != "id" {
                    collect_ids(v, &mut ids);
                }
            }
        }
    }
    ids.retain(|id| !accounts.contains(id));
    // Where a suffix goes: before the closing quote of each occurrence of each id.
    let mut cuts: Vec<usize> = Vec::new();
    for id in &ids {
        let quoted = format!("\"{id}\"");
        cuts.extend(
            text.match_indices(&quoted)
                .map(|(at, _)| at + quoted.len() - 1),
        );
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        parts.push(text[from..cut].to_owned());
        from = cut;
    }
    parts.push(text[from..].to_owned());
    let t = Template {
        file: file.to_owned(),
        parts,
        events: 0,
        messages: 0,
    };
    // Two bodies of it must make the same number of events, all of them distinct.
    let ids_of = |suffix: &str| -> Result<Vec<String>, String> {
        let body = t.body(suffix);
        let normalized = instantchat_instagram::normalize(body.as_bytes(), 0)
            .map_err(|e| format!("rejected: {e}"))?;
        Ok(normalized.events.into_iter().map(|e| e.id).collect())
    };
    let (a, b) = (ids_of("_t_0")?, ids_of("_t_1")?);
    if a.is_empty() {
        return Err("makes no event".into());
    }
    let all: HashSet<&String> = a.iter().chain(&b).collect();
    if a.len() != b.len() || all.len() != a.len() + b.len() {
        return Err("its events cannot be made unique".into());
    }
    Ok(Template {
        events: a.len(),
        messages: messages_of(t.body("_t_0").as_bytes()).len(),
        ..t
    })
}

fn collect_ids(v: &Value, ids: &mut HashSet<String>) {
    match v {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(s) if ID_KEYS.contains(&key.as_str()) => {
                        ids.insert(s.clone());
                    }
                    other => collect_ids(other, ids),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_ids(i, ids)),
        _ => {}
    }
}

/// What the senders of one phase share while it runs.
#[derive(Debug, Default)]
struct Counters {
    /// Webhooks answered 200 (floor: all acknowledged).
    accepted: AtomicU64,
    /// Bad webhooks answered 401, as they must be.
    refused: AtomicU64,
    /// Anything else: other statuses, errors, timeouts.
    failed: AtomicU64,
    /// Messages acknowledged (floor).
    messages: AtomicU64,
    /// Open loop: how far behind its schedule a sender fell at worst, µs.
    max_lag_us: AtomicU64,
}

/// What one sender did.
#[derive(Debug)]
struct SenderResult {
    /// Latency of the requests started inside the window, µs.
    hist: Histogram<u64>,
    accepted: Vec<u64>,
    refused: Vec<u64>,
    failed: Vec<(u64, String)>,
}

impl SenderResult {
    fn new() -> Self {
        SenderResult {
            hist: hist::new_hist(),
            accepted: Vec::new(),
            refused: Vec::new(),
            failed: Vec::new(),
        }
    }
}

/// When a phase sends, and what it measures.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    /// Measurement starts (after the warm-up).
    measure_from: Instant,
    until: Instant,
}

/// Which webhook a sender sends next, or `None` when it is done.
#[derive(Debug)]
struct Schedule {
    rate: Option<f64>,
    senders: u64,
    max: u64,
    next: AtomicU64,
}

impl Schedule {
    async fn next(
        &self,
        sender: u64,
        sent: u64,
        window: Window,
        counters: &Counters,
    ) -> Option<u64> {
        match self.rate {
            None => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                (n < self.max && Instant::now() < window.until).then_some(n)
            }
            Some(rate) => {
                // Sender k sends k, k + S, k + 2S, ... each at its time on the common schedule.
                let n = sender + sent * self.senders;
                let due = window.start + Duration::from_secs_f64(n as f64 / rate);
                if n >= self.max || due >= window.until {
                    return None;
                }
                tokio::time::sleep_until(due).await;
                let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
                counters.max_lag_us.fetch_max(lag, Ordering::Relaxed);
                Some(n)
            }
        }
    }
}

/// What the HTTP senders POST with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HttpClient {
    /// The bench's own client: the request written and the answer read on the sender's task.
    Lean,
    /// hyper's client, a connection task of its own per sender.
    Hyper,
}

/// A keep-alive HTTP/1.1 connection to ingest.
enum Connection {
    Lean(Http1Connection),
    Hyper(hyper::client::conn::http1::SendRequest<String>),
}

impl Connection {
    async fn open(client: HttpClient, addr: &str) -> anyhow::Result<Self> {
        if client == HttpClient::Lean {
            return Ok(Connection::Lean(Http1Connection::open(addr).await?));
        }
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to ingest at {addr}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(Connection::Hyper(send))
    }

    /// POSTs one webhook; its status and body.
    async fn post(
        &mut self,
        host: &str,
        body: String,
        signature: &str,
    ) -> anyhow::Result<(u16, Bytes)> {
        let send = match self {
            Connection::Lean(c) => {
                let headers = [
                    ("content-type", "application/json"),
                    ("x-hub-signature-256", signature),
                ];
                return Ok(c
                    .post(instantchat_ingest::WEBHOOK_PATH, &headers, body.as_bytes())
                    .await?);
            }
            Connection::Hyper(send) => send,
        };
        let request = hyper::Request::post(instantchat_ingest::WEBHOOK_PATH)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)?;
        poll_fn(|cx| send.poll_ready(cx)).await?;
        let response = send.send_request(request).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(data) = frame?.into_data() {
                bytes.extend_from_slice(&data);
            }
        }
        Ok((status, Bytes::from(bytes)))
    }
}

/// Where a phase's HTTP senders POST, what, and signed with which secret.
struct HttpTarget {
    /// `HOST:PORT`.
    host: String,
    client: HttpClient,
    bodies: Arc<Bodies>,
    secret: Arc<Vec<u8>>,
}

/// A phase of [`http_sender`]s POSTing to `target`.
async fn http_phase(
    name: &'static str,
    a: &IngestArgs,
    monitor: &Arc<Monitor>,
    t0: Instant,
    deadline: Instant,
    target: HttpTarget,
) -> anyhow::Result<(Vec<SenderResult>, Phase)> {
    let target = Arc::new(target);
    run_phase(
        name,
        a,
        monitor,
        t0,
        deadline,
        move |k, schedule, window, counters| {
            http_sender(k, target.clone(), schedule, window, counters)
        },
    )
    .await
}

/// One ingest sender: POSTs until the schedule says done.
async fn http_sender(
    k: u64,
    target: Arc<HttpTarget>,
    schedule: Arc<Schedule>,
    window: Window,
    counters: Arc<Counters>,
) -> SenderResult {
    let HttpTarget {
        host: addr,
        client,
        bodies,
        secret,
    } = &*target;
    let mut result = SenderResult::new();
    let mut connection = None;
    let mut sent = 0;
    while let Some(n) = schedule.next(k, sent, window, &counters).await {
        sent += 1;
        let (body, signature) = bodies.signed(n, secret);
        let started = Instant::now();
        let answer = async {
            let conn = match &mut connection {
                Some(c) => c,
                None => connection.insert(Connection::open(*client, addr).await?),
            };
            conn.post(addr, body, &signature).await
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, answer).await;
        let took = started.elapsed();
        if started >= window.measure_from {
            result.hist.saturating_record(took.as_micros() as u64);
        }
        let bad = bodies.is_bad(n);
        match answer {
            Ok(Ok((200, _))) if !bad => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                counters
                    .messages
                    .fetch_add(bodies.messages(n), Ordering::Relaxed);
                result.accepted.push(n);
            }
            Ok(Ok((401, _))) if bad => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                result.refused.push(n);
            }
            Ok(Ok((status, body))) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                result.failed.push((
                    n,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
                ));
            }
            Ok(Err(e)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                result.failed.push((n, e.to_string()));
                connection = None;
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                result
                    .failed
                    .push((n, format!("no answer within {REQUEST_TIMEOUT:?}")));
                connection = None;
            }
        }
    }
    result
}

/// The messages ingest publishes for `body`: its raw body (and, when some of it is unusable,
/// the rejected copy), then each event as ingest encodes it.
fn messages_of(body: &[u8]) -> Vec<Outgoing> {
    let digest = hex::encode(Sha256::digest(body));
    let mut out = Vec::with_capacity(4);
    let bytes = Bytes::copy_from_slice(body);
    match instantchat_instagram::normalize(body, now_us() as i64 / 1000) {
        Ok(normalized) => {
            out.push(Outgoing::raw(
                subjects::WEBHOOK_RAW,
                format!("webhook:{digest}"),
                bytes.clone(),
                Default::default(),
            ));
            if !normalized.skipped.is_empty() {
                out.push(Outgoing::raw(
                    subjects::WEBHOOK_REJECTED,
                    format!("rejected:{digest}"),
                    bytes,
                    Default::default(),
                ));
            }
            out.extend(
                normalized
                    .events
                    .into_iter()
                    .map(|e| Outgoing::event(e, Default::default())),
            );
        }
        Err(_) => out.push(Outgoing::raw(
            subjects::WEBHOOK_REJECTED,
            format!("rejected:{digest}"),
            bytes,
            Default::default(),
        )),
    }
    out
}

/// The floor's messages, made on a thread of their own (`bench/messages` in the report) in the
/// order of the webhooks, so that the CPU the bench spends publishing them can be told apart from
/// the CPU of making them (a body, its normalization, its digest, its events' encoding). They
/// come in chunks, so that the thread is woken once per chunk, not once per webhook.
struct FloorMessages {
    /// Chunks from the thread, and what is left of the last one taken.
    queue: tokio::sync::Mutex<(tokio::sync::mpsc::Receiver<Chunk>, Chunk)>,
    tid: u32,
}

/// Webhooks in order: each one's number and messages.
type Chunk = std::collections::VecDeque<(u64, Vec<Outgoing>)>;

/// Webhooks per chunk, and chunks made ahead: enough that no sender waits for the thread.
const CHUNK: u64 = 64;
const CHUNKS_AHEAD: usize = 32;

impl FloorMessages {
    /// Starts the thread; it stops after `max` webhooks or once the receiver is gone.
    fn start(bodies: Arc<Bodies>, max: u64) -> anyhow::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("floor-messages".into())
            .spawn(move || {
                let _ = tid_tx.send(procfs::current_tid());
                let mut first = 0;
                while first < max {
                    let chunk: Chunk = (first..max.min(first + CHUNK))
                        .map(|n| (n, messages_of(bodies.body(n).as_bytes())))
                        .collect();
                    first += CHUNK;
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
                // Until the phase ends: its CPU is read at the window's end.
                futures::executor::block_on(tx.closed());
            })
            .context("cannot start the floor's message thread")?;
        let tid = tid_rx
            .recv()
            .ok()
            .flatten()
            .context("cannot read the floor's message thread's id from /proc/thread-self")?;
        Ok(FloorMessages {
            queue: tokio::sync::Mutex::new((rx, Default::default())),
            tid,
        })
    }

    /// The next webhook's number and messages.
    async fn next(&self) -> Option<(u64, Vec<Outgoing>)> {
        let mut queue = self.queue.lock().await;
        if queue.1.is_empty() {
            queue.1 = queue.0.recv().await?;
        }
        queue.1.pop_front()
    }
}

/// What the floor publishes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FloorPublisher {
    /// Ingest's own publisher.
    Bus,
    /// nats-server's fast-ingest batches, one acknowledgement per batch.
    FastBatch,
}

/// The floor's publisher, made.
#[derive(Debug, Clone)]
enum Floor {
    Bus(Box<NatsBus>),
    FastBatch(FastBatch),
}

impl Floor {
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), String> {
        match self {
            Floor::Bus(bus) => bus
                .publish(batch)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Floor::FastBatch(fast) => fast.publish(batch).await,
        }
    }
}

/// One floor publisher: each webhook's messages published (by default as ingest publishes
/// them: one batch through [`NatsBus`], its PubAcks awaited) before the next.
async fn floor_sender(
    k: u64,
    bus: Floor,
    messages: Arc<FloorMessages>,
    schedule: Arc<Schedule>,
    window: Window,
    counters: Arc<Counters>,
) -> SenderResult {
    let mut result = SenderResult::new();
    let mut sent = 0;
    // The schedule says when (and whether) to send; the thread says what, in webhook order.
    while schedule.next(k, sent, window, &counters).await.is_some() {
        let Some((n, batch)) = messages.next().await else {
            break;
        };
        sent += 1;
        let count = batch.len() as u64;
        let started = Instant::now();
        let published = tokio::time::timeout(REQUEST_TIMEOUT, bus.publish(batch)).await;
        if started >= window.measure_from {
            result
                .hist
                .saturating_record(started.elapsed().as_micros() as u64);
        }
        match published {
            Ok(Ok(())) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                counters.messages.fetch_add(count, Ordering::Relaxed);
                result.accepted.push(n);
            }
            Ok(Err(e)) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                result.failed.push((n, e.to_string()));
            }
            Err(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                result
                    .failed
                    .push((n, format!("not acknowledged within {REQUEST_TIMEOUT:?}")));
            }
        }
    }
    result
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    name: &'static str,
    /// Which of `--rounds` (from 1).
    round: u32,
    secs: f64,
    webhooks_per_s: f64,
    messages_per_s: f64,
    sent: u64,
    accepted: u64,
    refused_as_expected: u64,
    failed: u64,
    first_failures: Vec<String>,
    latency: Summary,
    max_sender_lag_ms: f64,
    /// CPU per process over the window.
    cpu: std::collections::BTreeMap<String, ProcUsage>,
    machine_busy_cores: f64,
    other_cores: f64,
    /// µs of CPU per accepted webhook, by process.
    cpu_us_per_webhook: std::collections::BTreeMap<String, f64>,
    /// µs of nats-server CPU per message published.
    nats_cpu_us_per_message: f64,
    completeness: Completeness,
}

/// Whether the streams hold exactly what was acknowledged.
#[derive(Debug, Clone, Default, Serialize)]
struct Completeness {
    /// Event ids of the acknowledged webhooks.
    expected_events: u64,
    events_once: u64,
    events_missing: u64,
    events_repeated: u64,
    /// Events of refused webhooks found in the stream (must be 0).
    events_of_refused: u64,
    expected_bodies: u64,
    bodies_once: u64,
    bodies_missing: u64,
    /// Raw bodies of refused webhooks found (must be 0).
    bodies_of_refused: u64,
    exact: bool,
}

/// A phase's senders, run over the window while a progress line is printed every second.
async fn run_phase<F, Fut>(
    name: &'static str,
    a: &IngestArgs,
    monitor: &Arc<Monitor>,
    t0: Instant,
    deadline: Instant,
    spawn_sender: F,
) -> anyhow::Result<(Vec<SenderResult>, Phase)>
where
    F: Fn(u64, Arc<Schedule>, Window, Arc<Counters>) -> Fut,
    Fut: std::future::Future<Output = SenderResult> + Send + 'static,
{
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let mut total = Duration::from_secs(a.warmup + a.duration);
    // Keep room for the completeness check and the stop.
    let room = deadline
        .saturating_duration_since(start)
        .saturating_sub(Duration::from_secs(40));
    if total > room {
        eprintln!(
            "instantchat-bench ingest: {name}: only {:.0} s left within --max-seconds; measuring less",
            room.as_secs_f64()
        );
        total = room.max(Duration::from_secs(2));
    }
    let warmup = Duration::from_secs(a.warmup).min(total / 3);
    let window = Window {
        start,
        measure_from: start + warmup,
        until: start + total,
    };
    let schedule = Arc::new(Schedule {
        rate: a.rate,
        senders: a.senders as u64,
        max: a.max_webhooks,
        next: AtomicU64::new(0),
    });
    monitor.set_phase(name);
    let tasks: Vec<_> = (0..a.senders as u64)
        .map(|k| tokio::spawn(spawn_sender(k, schedule.clone(), window, counters.clone())))
        .collect();
    // Progress, and the window's start and end readings.
    let server = if name == "http" {
        "http-echo"
    } else {
        "ingest"
    };
    let progress = {
        let (monitor, counters) = (monitor.clone(), counters.clone());
        tokio::spawn(async move {
            let mut prev = (monitor.usage(), 0u64, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = Instant::now();
                let usage = monitor.usage();
                let accepted = counters.accepted.load(Ordering::Relaxed);
                let secs = now.duration_since(prev.2).as_secs_f64().max(1e-9);
                let per = prev.0.between(&usage, secs);
                let cores = |role: &str| per.get(role).map_or(0.0, |u| u.cpu_cores);
                let rate = accepted.saturating_sub(prev.1) as f64 / secs;
                eprintln!(
                    "[{:6.1}s] {name:<6} accepted {} ({rate:.0}/s) refused {} failed {} | cpu {server} {:.2} nats {:.2} bench {:.2} machine {:.2}",
                    now.duration_since(t0).as_secs_f64(),
                    accepted,
                    counters.refused.load(Ordering::Relaxed),
                    counters.failed.load(Ordering::Relaxed),
                    cores(server),
                    cores("nats-server"),
                    cores("bench"),
                    prev.0.machine_cores(&usage),
                );
                prev = (usage, accepted, now);
                if now >= window.until {
                    return;
                }
            }
        })
    };
    // The window's exact start: readings taken when the warm-up ends.
    tokio::time::sleep_until(window.measure_from).await;
    let (u0, c0, m0) = (
        monitor.usage(),
        counters.accepted.load(Ordering::Relaxed),
        counters.messages.load(Ordering::Relaxed),
    );
    let w0 = Instant::now();
    // The window ends at its time, or sooner when every sender is done (--max-webhooks sent).
    while Instant::now() < window.until && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(
            Duration::from_millis(50).min(window.until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    let (u1, c1, m1) = (
        monitor.usage(),
        counters.accepted.load(Ordering::Relaxed),
        counters.messages.load(Ordering::Relaxed),
    );
    let secs = w0.elapsed().as_secs_f64().max(1e-9);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await?);
    }
    progress.abort();
    let accepted_in_window = c1.saturating_sub(c0);
    let cpu = u0.between(&u1, secs);
    let per_webhook = cpu
        .iter()
        .map(|(role, u)| {
            (
                role.clone(),
                round2(u.cpu_s * 1e6 / accepted_in_window.max(1) as f64),
            )
        })
        .collect();
    let machine = u0.machine_cores(&u1);
    let ours = process_cores(&cpu);
    let mut merged = hist::new_hist();
    for r in &results {
        merged.add(&r.hist).ok();
    }
    let sent: u64 = results
        .iter()
        .map(|r| (r.accepted.len() + r.refused.len() + r.failed.len()) as u64)
        .sum();
    let first_failures = results
        .iter()
        .flat_map(|r| r.failed.iter())
        .take(5)
        .map(|(n, why)| format!("webhook {n}: {why}"))
        .collect();
    let phase = Phase {
        name,
        round: 1,
        secs: round2(secs),
        webhooks_per_s: round2(accepted_in_window as f64 / secs),
        messages_per_s: round2(m1.saturating_sub(m0) as f64 / secs),
        sent,
        accepted: counters.accepted.load(Ordering::Relaxed),
        refused_as_expected: counters.refused.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        first_failures,
        latency: hist::summarize(&merged),
        max_sender_lag_ms: counters.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        nats_cpu_us_per_message: cpu.get("nats-server").map_or(0.0, |u| {
            round2(u.cpu_s * 1e6 / m1.saturating_sub(m0).max(1) as f64)
        }),
        cpu,
        machine_busy_cores: round2(machine),
        other_cores: round2((machine - ours).max(0.0)),
        cpu_us_per_webhook: per_webhook,
        completeness: Completeness::default(),
    };
    Ok((results, phase))
}

/// Where each stream's next message goes: a phase's check reads the streams from there, so a
/// round is not read back again with every later one.
#[derive(Debug, Clone, Copy)]
struct Marks {
    events: u64,
    webhooks: u64,
}

impl Marks {
    async fn now(js: &jetstream::Context) -> anyhow::Result<Self> {
        let next = |stream: &'static str| async move {
            let mut s = js
                .get_stream(stream)
                .await
                .with_context(|| format!("stream {stream}"))?;
            anyhow::Ok(s.info().await?.state.last_sequence + 1)
        };
        Ok(Marks {
            events: next(subjects::EVENTS_STREAM).await?,
            webhooks: next(subjects::WEBHOOKS_STREAM).await?,
        })
    }
}

/// Message ids stored in `stream` from sequence `from` on, with how often each is there.
async fn stored_ids(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
) -> anyhow::Result<HashMap<String, u32>> {
    let stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            headers_only: true,
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    let mut messages = consumer.messages().await?.take(pending as usize);
    let mut ids: HashMap<String, u32> = HashMap::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .context("the stream stopped delivering while it was read back")?
    {
        let m = m?;
        if let Some(id) = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str())
        {
            *ids.entry(id.to_owned()).or_default() += 1;
        }
    }
    Ok(ids)
}

/// Reads both streams back and checks them against the webhooks acknowledged and refused.
async fn check(
    js: &jetstream::Context,
    from: Marks,
    bodies: &Bodies,
    results: &[SenderResult],
) -> anyhow::Result<Completeness> {
    let events = stored_ids(js, subjects::EVENTS_STREAM, from.events).await?;
    let raw = stored_ids(js, subjects::WEBHOOKS_STREAM, from.webhooks).await?;
    let mut c = Completeness::default();
    let ids_and_digest = |n: u64| {
        let body = bodies.body(n);
        let digest = hex::encode(Sha256::digest(body.as_bytes()));
        let ids: Vec<String> = instantchat_instagram::normalize(body.as_bytes(), 0)
            .map(|x| x.events.into_iter().map(|e| e.id).collect())
            .unwrap_or_default();
        (ids, digest)
    };
    for n in results.iter().flat_map(|r| r.accepted.iter().copied()) {
        let (ids, digest) = ids_and_digest(n);
        for id in ids {
            c.expected_events += 1;
            match events.get(&id).copied().unwrap_or(0) {
                0 => c.events_missing += 1,
                1 => c.events_once += 1,
                _ => c.events_repeated += 1,
            }
        }
        c.expected_bodies += 1;
        match raw.get(&format!("webhook:{digest}")).copied().unwrap_or(0) {
            0 => c.bodies_missing += 1,
            _ => c.bodies_once += 1,
        }
    }
    for n in results.iter().flat_map(|r| r.refused.iter().copied()) {
        let (ids, digest) = ids_and_digest(n);
        c.events_of_refused += ids.iter().filter(|id| events.contains_key(*id)).count() as u64;
        c.bodies_of_refused += u64::from(
            raw.contains_key(&format!("webhook:{digest}"))
                || raw.contains_key(&format!("rejected:{digest}")),
        );
    }
    c.exact = c.events_missing == 0
        && c.events_repeated == 0
        && c.events_of_refused == 0
        && c.bodies_missing == 0
        && c.bodies_of_refused == 0
        && c.expected_events > 0;
    Ok(c)
}

/// `ingest`: see the module docs.
pub async fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    if a.senders == 0 {
        bail!("--senders must be at least 1");
    }
    if a.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        bail!("--rate must be a positive number of webhooks per second");
    }
    if a.ingest_url.is_some() && a.app_secret.is_none() {
        bail!(
            "--ingest-url needs --app-secret (or INSTAGRAM_APP_SECRET): the secret that ingest verifies with"
        );
    }
    if a.rounds > 1 {
        // Each phase is its warm-up and window, a few seconds to read the streams back, and
        // the start; all of it must fit the hard bound, or the last rounds would be cut short.
        let phases = a.rounds as u64 * (u64::from(!a.floor_only) + u64::from(!a.no_floor))
            + u64::from(a.http_floor);
        let needed = phases * (a.warmup + a.duration + 10) + 40;
        if a.max_seconds < needed {
            bail!(
                "--rounds {} makes {phases} phases of {} s each, about {needed} s in all, more than \
                 --max-seconds {}: raise --max-seconds to {needed} or shorten --duration",
                a.rounds,
                a.warmup + a.duration,
                a.max_seconds
            );
        }
    }
    let templates = load_templates(&a.fixtures)?;
    let quiet = wait_quiet(a.wait_quiet).await;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.max_seconds);
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let machine = Machine::probe(&a.nats_server);
    let load_start = procfs::loadavg();
    let bodies = Arc::new(Bodies {
        run: format!("b{}", now_us()),
        templates,
        bad_every: a.bad_every,
    });
    let kinds: Vec<String> = bodies
        .templates
        .iter()
        .map(|t| {
            format!(
                "{} ({} event{})",
                t.file,
                t.events,
                if t.events == 1 { "" } else { "s" }
            )
        })
        .collect();

    // The system: started here unless pointed at.
    let start_nats = a.nats_url.is_none();
    let start_ingest = a.ingest_url.is_none() && !a.floor_only;
    let mut system = if start_nats {
        let mut s = System::start(SystemConfig {
            bin_dir: a.bin_dir.clone(),
            nats_server: a.nats_server.clone(),
            gateways: 0,
            single: false,
            gateway_env: Vec::new(),
            ingest_env: a.ingest_env.clone(),
        })
        .await?;
        if !start_ingest {
            s.stop_ingest().await;
        }
        Some(s)
    } else {
        None
    };
    let nats_url = a
        .nats_url
        .clone()
        .or_else(|| system.as_ref().map(|s| s.nats_url.clone()))
        .context("no NATS")?;
    let ingest_url = a
        .ingest_url
        .clone()
        .or_else(|| system.as_ref().map(|s| s.ingest_url.clone()));
    let secret = Arc::new(
        a.app_secret
            .as_deref()
            .filter(|_| a.ingest_url.is_some())
            .map_or(APP_SECRET.as_bytes().to_vec(), |s| {
                s.split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .as_bytes()
                    .to_vec()
            }),
    );
    let monitor = Monitor::new(t0);
    let mut tracked = system.as_ref().map(System::tracked).unwrap_or_default();
    if let Some(pid) = a.ingest_pid {
        tracked.push(("ingest".into(), pid));
    }
    if let Some(pid) = a.nats_pid {
        tracked.push(("nats-server".into(), pid));
    }
    *monitor.tracked.lock() = tracked;
    let client = async_nats::ConnectOptions::new()
        .name("instantchat-bench")
        .connect(&nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {nats_url}"))?;
    let js = jetstream::new(client);
    eprintln!(
        "instantchat-bench ingest: {} fixture kinds, {:.0} bytes and {:.2} events per webhook on average; {} senders, {}",
        bodies.templates.len(),
        bodies.mean_bytes(),
        bodies.mean_events(),
        a.senders,
        a.rate
            .map_or("as fast as answers come back".to_owned(), |r| format!(
                "{r} webhooks/s"
            )),
    );

    let mut rows: Vec<(String, String)> = vec![
        ("machine before start".into(), quiet),
        (
            "bodies".into(),
            format!(
                "{:.0} bytes, {:.2} events per webhook on average; fixtures {}",
                bodies.mean_bytes(),
                bodies.mean_events(),
                kinds.join(", ")
            ),
        ),
        (
            "load".into(),
            format!(
                "{} senders, {}; every {} webhook badly signed",
                a.senders,
                a.rate.map_or(
                    "each as fast as its answers come back".to_owned(),
                    |r| format!("{r} webhooks/s together")
                ),
                if a.bad_every == 0 {
                    "no".to_owned()
                } else {
                    format!("{}th", a.bad_every)
                },
            ),
        ),
    ];
    let mut phases = Vec::new();

    // Ingest's `HOST:PORT`, when there is an ingest phase.
    let ingest_host = if a.floor_only {
        None
    } else {
        let url = ingest_url.as_deref().context(
            "--nats-url without --ingest-url: give ingest's URL, or measure --floor-only",
        )?;
        Some(
            url.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
        )
    };
    for round in 1..=a.rounds {
        if let Some(host) = &ingest_host {
            // Each round's bodies under a run id of its own.
            let bodies = Arc::new(bodies.under(&round_suffix(round), bodies.bad_every));
            let target = HttpTarget {
                host: host.clone(),
                client: a.http_client,
                bodies: bodies.clone(),
                secret: secret.clone(),
            };
            let marks = Marks::now(&js).await?;
            let (results, mut phase) =
                http_phase("ingest", &a, &monitor, t0, deadline, target).await?;
            phase.round = round;
            monitor.set_phase("check");
            eprintln!("instantchat-bench ingest: reading the streams back");
            phase.completeness = check(&js, marks, &bodies, &results).await?;
            rows.extend(phase_rows(&phase, a.rate, a.rounds));
            phases.push(phase);
        }
        if let Some(s) = system.as_mut().filter(|_| a.rounds == 1) {
            // The floor has NATS and the machine to itself; with rounds, ingest stays up, idle.
            s.stop_ingest().await;
        }
        if !a.no_floor {
            // The same bodies under another run id; none badly signed (nothing verifies here).
            let floor_bodies = Arc::new(bodies.under(&format!("f{}", round_suffix(round)), 0));
            // Ingest's own publisher, on a connection of its own, without ingest's other work.
            let bus = NatsBus::connect_reader(&nats_url, "instantchat-bench-floor")
                .await
                .with_context(|| format!("cannot connect the floor's publisher to {nats_url}"))?;
            let bus = match a.floor_publisher {
                FloorPublisher::Bus => Floor::Bus(Box::new(bus)),
                FloorPublisher::FastBatch => {
                    Floor::FastBatch(FastBatch::start(bus.client().clone()).await?)
                }
            };
            let messages = Arc::new(FloorMessages::start(floor_bodies.clone(), a.max_webhooks)?);
            monitor
                .threads
                .lock()
                .push(("messages".into(), messages.tid));
            let marks = Marks::now(&js).await?;
            let (results, mut phase) = {
                let messages = messages.clone();
                run_phase(
                    "floor",
                    &a,
                    &monitor,
                    t0,
                    deadline,
                    move |k, schedule, window, counters| {
                        floor_sender(k, bus.clone(), messages.clone(), schedule, window, counters)
                    },
                )
                .await?
            };
            phase.round = round;
            monitor.threads.lock().clear();
            drop(messages);
            monitor.set_phase("check");
            eprintln!("instantchat-bench ingest: reading the streams back");
            phase.completeness = check(&js, marks, &floor_bodies, &results).await?;
            rows.extend(phase_rows(&phase, a.rate, a.rounds));
            phase.first_failures.truncate(5);
            phases.push(phase);
        }
    }
    if let Some(s) = system.as_mut() {
        s.stop_ingest().await;
    }

    if a.http_floor {
        let echo = HttpEcho::start().await?;
        monitor.tracked.lock().push(("http-echo".into(), echo.pid));
        // Nothing verifies there: none badly signed.
        let http_bodies = Arc::new(bodies.under("h", 0));
        let target = HttpTarget {
            host: echo.host.clone(),
            client: a.http_client,
            bodies: http_bodies,
            secret: secret.clone(),
        };
        let (_, phase) = http_phase("http", &a, &monitor, t0, deadline, target).await?;
        monitor
            .tracked
            .lock()
            .retain(|(role, _)| role != "http-echo");
        drop(echo);
        rows.extend(phase_rows(&phase, a.rate, a.rounds));
        phases.push(phase);
    }

    let mut targets = Vec::new();
    let ingests: Vec<&Phase> = phases.iter().filter(|p| p.name == "ingest").collect();
    let floor_phases: Vec<&Phase> = phases.iter().filter(|p| p.name == "floor").collect();
    let http = phases.iter().find(|p| p.name == "http");
    let of = |p: &Phase, role: &str| p.cpu_us_per_webhook.get(role).copied().unwrap_or(0.0);
    let rounds_note = |n: usize| {
        if n > 1 {
            format!(", the median of {n} rounds")
        } else {
            String::new()
        }
    };
    // With rounds, each figure is the median of the rounds'.
    let ingest_cpu = median(ingests.iter().map(|i| of(i, "ingest")));
    if let (Some(all), Some(h)) = (ingest_cpu, http) {
        let alone = of(h, "http-echo");
        rows.push((
            "ingest / http".into(),
            format!(
                "HTTP alone {alone:.1} µs of ingest's {all:.1} µs per webhook{}; ingest's own work {:.1} µs",
                rounds_note(ingests.len()),
                all - alone
            ),
        ));
    }
    // What the floor's bench spent publishing: its CPU without the thread that made the messages.
    let publishing = median(
        floor_phases
            .iter()
            .map(|f| of(f, "bench") - of(f, "bench/messages")),
    );
    if let Some(us) = publishing {
        rows.push((
            "floor: publishing alone".into(),
            format!(
                "{us:.1} µs per webhook{}: {}, without making the messages",
                rounds_note(floor_phases.len()),
                match a.floor_publisher {
                    FloorPublisher::Bus =>
                        "ingest's publisher (the messages, their PubAcks awaited)",
                    FloorPublisher::FastBatch =>
                        "fast-ingest batches (the messages, each batch's acknowledgement awaited)",
                }
            ),
        ));
    }
    let floors = http.zip(publishing).map(|(h, p)| of(h, "http-echo") + p);
    if let Some(us) = floors {
        rows.push((
            "floors together".into(),
            format!(
                "{us:.1} µs per webhook: HTTP alone and publishing alone, each measured on its own (ingest adds verifying, normalizing and answering)"
            ),
        ));
    }
    // Each round's ingest against the floor right after it.
    let shares: Vec<(u32, f64, f64)> = ingests
        .iter()
        .filter_map(|i| {
            let f = floor_phases.iter().find(|f| f.round == i.round)?;
            Some((i.round, i.webhooks_per_s, f.webhooks_per_s))
        })
        .collect();
    let share_of = |(_, i, f): &(u32, f64, f64)| i / f.max(1e-9) * 100.0;
    if let Some(share) = median(shares.iter().map(share_of)) {
        // Each round's own figures: a median of the ratios is not the ratio of the medians.
        let each = shares
            .iter()
            .map(|r| {
                format!(
                    "{:.1} % ({} of {})",
                    share_of(r),
                    int(r.1 as u64),
                    int(r.2 as u64)
                )
            })
            .collect::<Vec<_>>();
        let measured = if shares.len() > 1 {
            format!(
                "{share:.1} %, the median of {} rounds: {}",
                shares.len(),
                each.join(", ")
            )
        } else {
            each.join("")
        };
        rows.push((
            "ingest / floor".into(),
            format!("{measured}; ingest's webhooks/s against the floor's"),
        ));
        if a.rate.is_none() {
            targets.push(json!({
                "what": "accepted durable webhooks/s, against the floor beside it",
                "target": ">= 70 % of the floor",
                "measured": measured,
                "met": share >= 70.0,
                "rounds": shares.iter().map(share_of).map(round2).collect::<Vec<_>>(),
            }));
        }
    }
    if let Some(cpu) = ingest_cpu.filter(|_| ingests.iter().any(|i| i.cpu.contains_key("ingest"))) {
        targets.push(json!({
            "what": "ingest CPU per webhook",
            "target": "<= 25 µs",
            "measured": match floors {
                Some(f) => format!("{cpu:.1} µs{} (HTTP alone and publishing alone together: {f:.1} µs)", rounds_note(ingests.len())),
                None => format!("{cpu:.1} µs{}", rounds_note(ingests.len())),
            },
            "met": cpu <= 25.0,
            "floors_us": floors.map(round2),
        }));
    }
    if let Some(rate) = a.rate.filter(|r| (*r - 2000.0).abs() < 1.0)
        && let Some(p99) = ingests.iter().map(|i| i.latency.p99_ms).reduce(f64::max)
    {
        targets.push(json!({
            "what": format!("p99 POST -> 200 at {rate} webhooks/s"),
            "target": "< 10 ms",
            "measured": format!("{p99:.2} ms{}", if ingests.len() > 1 { ", the worst round" } else { "" }),
            "met": p99 < 10.0,
        }));
    }
    if !ingests.is_empty() {
        let sum =
            |f: fn(&Completeness) -> u64| ingests.iter().map(|i| f(&i.completeness)).sum::<u64>();
        targets.push(json!({
            "what": "every acknowledged webhook's events and raw body stored exactly once, nothing of a refused one",
            "target": "exact",
            "measured": format!(
                "{} of {} events once, {} missing, {} repeated, {} of refused; {} of {} bodies",
                sum(|c| c.events_once), sum(|c| c.expected_events), sum(|c| c.events_missing),
                sum(|c| c.events_repeated), sum(|c| c.events_of_refused),
                sum(|c| c.bodies_once), sum(|c| c.expected_bodies)
            ),
            "met": ingests.iter().all(|i| i.completeness.exact),
        }));
    }

    if let Some(s) = system.as_mut() {
        s.stop().await;
    }
    let log_dir = match (a.keep_logs, system.as_mut()) {
        (true, Some(s)) => s.keep_logs(),
        _ => None,
    };
    let report = json!({
        "scenario": "ingest",
        "command": command_line(),
        "started_at": started_at,
        "run_id": bodies.run,
        "wall_secs": round2(t0.elapsed().as_secs_f64()),
        "machine": machine,
        "load_avg_start": load_start,
        "load_avg_end": procfs::loadavg(),
        "config": a,
        "fixtures": kinds,
        "mean_body_bytes": round2(bodies.mean_bytes()),
        "mean_events_per_webhook": round2(bodies.mean_events()),
        "phases": phases,
        "targets": targets,
        "summary": rows,
        "log_dir": log_dir,
    });
    println!();
    println!("== instantchat-bench ingest ==");
    println!("{}", command_line());
    println!(
        "machine: {} cores, {} GiB, Linux {}, {}; load avg {} -> {}",
        machine.nproc,
        machine.mem_total_gib,
        machine.kernel,
        machine.nats_server,
        load_start,
        procfs::loadavg()
    );
    print_rows(&rows);
    if !targets.is_empty() {
        println!("targets:");
        for t in &targets {
            println!(
                "  [{}] {} {}: {}",
                if t["met"] == true { "met" } else { "NOT MET" },
                t["what"].as_str().unwrap_or_default(),
                t["target"].as_str().unwrap_or_default(),
                t["measured"].as_str().unwrap_or_default()
            );
        }
    }
    if let Some(out) = &a.out {
        write_report(out, &report)?;
    }
    if let Some(dir) = log_dir {
        println!("logs: {}", dir.display());
    }
    Ok(())
}

/// The run id's suffix for round `round` (none for the first).
fn round_suffix(round: u32) -> String {
    if round == 1 {
        String::new()
    } else {
        format!("r{round}")
    }
}

/// The median of `values`; `None` when there are none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn phase_rows(p: &Phase, rate: Option<f64>, rounds: u32) -> Vec<(String, String)> {
    // With rounds, each round's rows say which.
    let name = if rounds > 1 && p.name != "http" {
        format!("{} (round {})", p.name, p.round)
    } else {
        p.name.to_owned()
    };
    let what = if p.name == "ingest" || p.name == "http" {
        "POST -> answer"
    } else {
        "publish -> every ack"
    };
    let cpu: Vec<String> = p
        .cpu_us_per_webhook
        .iter()
        .map(|(role, us)| format!("{role} {us:.1} µs"))
        .collect();
    let cores: Vec<String> = p
        .cpu
        .iter()
        .map(|(role, u)| format!("{role} {:.2}", u.cpu_cores))
        .collect();
    let c = &p.completeness;
    let mut rows = vec![
        (
            format!("{name}: webhooks/s"),
            format!(
                "{} accepted/s over {:.1} s ({} messages/s); {} sent, {} refused as they must be, {} failed",
                int(p.webhooks_per_s as u64),
                p.secs,
                int(p.messages_per_s as u64),
                int(p.sent),
                int(p.refused_as_expected),
                int(p.failed)
            ),
        ),
        (
            format!("{name}: {what}"),
            format!(
                "{} ({} samples)",
                p.latency.percentiles(),
                int(p.latency.count)
            ),
        ),
        (
            format!("{name}: CPU per webhook"),
            format!(
                "{}; nats-server {:.1} µs per message",
                cpu.join(", "),
                p.nats_cpu_us_per_message
            ),
        ),
        (
            format!("{name}: CPU cores"),
            format!(
                "{}; whole machine {:.2} (other work {:.2})",
                cores.join(", "),
                p.machine_busy_cores,
                p.other_cores
            ),
        ),
        (
            format!("{name}: completeness"),
            format!(
                "{} of {} events once ({} missing, {} repeated, {} of refused webhooks); {} of {} raw bodies ({} of refused)",
                int(c.events_once),
                int(c.expected_events),
                c.events_missing,
                c.events_repeated,
                c.events_of_refused,
                int(c.bodies_once),
                int(c.expected_bodies),
                c.bodies_of_refused
            ),
        ),
    ];
    if p.name == "http" {
        // Nothing is published or stored there: no broker figures, no completeness.
        rows.retain(|(what, _)| !what.ends_with("completeness"));
        rows[0].1 = format!(
            "{} answered 200/s over {:.1} s; {} sent, {} failed",
            int(p.webhooks_per_s as u64),
            p.secs,
            int(p.sent),
            int(p.failed)
        );
        rows[2].1 = cpu
            .iter()
            .filter(|c| !c.starts_with("nats-server"))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
    }
    if rate.is_some() {
        rows.push((
            format!("{name}: sender lag"),
            format!("at worst {:.1} ms behind schedule", p.max_sender_lag_ms),
        ));
    }
    for f in &p.first_failures {
        rows.push((format!("{name}: failure"), f.clone()));
    }
    rows
}

/// The `http-echo` process of the HTTP floor; killed when dropped.
struct HttpEcho {
    child: tokio::process::Child,
    pid: u32,
    /// `127.0.0.1:PORT`, as the senders want it.
    host: String,
}

impl HttpEcho {
    async fn start() -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(
            std::env::current_exe().context("the bench's own binary")?,
        )
        .arg("http-echo")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start instantchat-bench http-echo")?;
        let pid = child.id().context("http-echo has no pid")?;
        let stdout = child.stdout.take().context("http-echo's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("http-echo did not say where it listens within 10 s")??
            .context("http-echo exited before it listened")?;
        let host = line
            .strip_prefix("listening on ")
            .with_context(|| format!("http-echo said {line:?}"))?
            .to_owned();
        Ok(HttpEcho { child, pid, host })
    }
}

impl Drop for HttpEcho {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_make_unique_bodies_and_keep_accounts() {
        let text = r#"{"object":"instagram","entry":[{"id":"17841","time":1,"messaging":[{"sender":{"id":"555"},"recipient":{"id":"17841"},"timestamp":1,"message":{"mid":"m1","text":"hi"}},{"sender":{"id":"555"},"recipient":{"id":"17841"},"timestamp":2,"read":{"mid":"m0"}}]}]}"#;
        let t = template("x.json", text).unwrap();
        assert_eq!(t.events, 2);
        let body = t.body("_r_7");
        assert!(body.contains(r#""mid":"m1_r_7""#), "{body}");
        assert!(
            body.contains(r#""id":"17841""#),
            "the account stays: {body}"
        );
        assert!(body.contains(r#""recipient":{"id":"17841"}"#), "{body}");
        assert_eq!(t.body("").len(), text.len());
    }
}
