//! The client side: a worker process holding many Socket.IO clients.
//!
//! The coordinator starts `instantchat-bench worker` once per slice of clients (one process
//! holds at most `--per-worker` sockets, under the 20,000 open files cap) and talks to it over
//! JSON lines: the [`WorkerSpec`] then a [`Command`] on stdin; [`WorkerMsg`] progress every
//! 50 ms and one result on stdout.
//!
//! Each client is one task over its own WebSocket (tokio-tungstenite's `client_async` on a
//! `TcpSocket` bound to `127.0.0.(2 + i % 250)`, so connections come from 250 addresses), speaking
//! just the Socket.IO v4 the gateway needs: open packet, `40{auth}` connect, `subscribe` with an
//! ack, pings answered, `webhook_event`s counted without a full JSON parse (the bench's own
//! content carries the event number and its send time). With `reconnect`, a dropped client
//! comes back the way socket.io-client does (1 s doubling to 5 s, ±50 % jitter) and resumes with
//! `since` = the largest `seq` it saw; it counts as back once `replay_complete` arrives.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::hist::{self, Buckets};
use crate::mix::Mix;

/// Histogram shards, so that recording rarely waits on another thread.
const SHARDS: usize = 16;
/// How long one connect (TCP, upgrade, namespace connect) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a subscribe may wait for its ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);
/// Progress lines per second.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Which gateway a client connects to first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Client `i` on gateway `i % G`.
    RoundRobin,
    /// Client `i` on gateway `(i % A) % G`: each gateway's clients see their own accounts.
    ByAccount,
    /// Every client on this gateway.
    Fixed(usize),
}

/// What one worker does, sent as the first line of its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: usize,
    /// Global index of this worker's first client.
    pub first_client: usize,
    pub count: usize,
    /// Gateway ports on 127.0.0.1.
    pub gateways: Vec<u16>,
    pub placement: Placement,
    /// On reconnect, try the next gateway of the list (a takeover) instead of the same one.
    pub failover: bool,
    pub reconnect: bool,
    pub jwt_secret: String,
    pub mix: Mix,
    /// Connects in flight at once during the initial connect.
    pub connect_concurrency: usize,
    /// Tries of the initial connect before the client counts as failed.
    pub connect_attempts: u32,
    /// Bind each client socket to 127.0.0.(2 + i % 250).
    pub source_ips: bool,
    /// WebSocket read buffer per client, bytes.
    pub read_buffer: usize,
    /// The worker gives up and reports after this long, whatever happens.
    pub deadline_secs: u64,
}

impl WorkerSpec {
    pub fn first_gateway(&self, i: usize) -> usize {
        let g = self.gateways.len().max(1);
        match self.placement {
            Placement::RoundRobin => i % g,
            Placement::ByAccount => self.mix.client_account(i) % g,
            Placement::Fixed(k) => k % g,
        }
    }
}

/// From the coordinator, after the spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Stop, check every client against the events that were published, report.
    Finish(Finish),
}

/// The events sent during the run: `0..published`, less those whose POST failed (they may or
/// may not have been published, so they are neither expected nor held against anyone).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Finish {
    pub published: u64,
    pub failed: Vec<u64>,
}

/// Counters every worker reports; the coordinator adds them up.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Open WebSockets right now.
    pub connected: i64,
    /// Clients subscribed and caught up right now (after `replay_complete` for a resume).
    pub ready: i64,
    /// Clients that completed their first subscribe.
    pub subscribed: u64,
    /// Clients that never connected.
    pub failed: u64,
    /// `webhook_event`s received.
    pub delivered: u64,
    pub duplicates: u64,
    /// Events a client was not subscribed to.
    pub unexpected: u64,
    /// `error` events and refused connects.
    pub errors: u64,
    /// Connections that ended while the run went on.
    pub disconnects: u64,
    /// Reconnect attempts.
    pub reconnect_attempts: u64,
    /// `replay_complete`s received.
    pub resumed: u64,
    /// Events received in replays (`replay_complete.count`, summed).
    pub replayed: u64,
    /// `replay_complete` with `complete: false`.
    pub replay_incomplete: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.connected += o.connected;
        self.ready += o.ready;
        self.subscribed += o.subscribed;
        self.failed += o.failed;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
        self.errors += o.errors;
        self.disconnects += o.disconnects;
        self.reconnect_attempts += o.reconnect_attempts;
        self.resumed += o.resumed;
        self.replayed += o.replayed;
        self.replay_incomplete += o.replay_incomplete;
    }
}

/// Exactly-once check of every client.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Completeness {
    pub clients: u64,
    /// Clients with every expected event exactly once and nothing else.
    pub complete_clients: u64,
    /// Expected (client, event) pairs.
    pub expected: u64,
    /// Expected pairs received (once or more).
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    /// A few incomplete clients: (client, missing, duplicates, first missing event).
    pub samples: Vec<(usize, u64, u64, Option<u64>)>,
}

impl Completeness {
    pub fn add(&mut self, o: &Completeness) {
        self.clients += o.clients;
        self.complete_clients += o.complete_clients;
        self.expected += o.expected;
        self.received += o.received;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
        for s in &o.samples {
            if self.samples.len() < 10 {
                self.samples.push(*s);
            }
        }
    }
}

/// A worker's final report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub counters: Counters,
    pub completeness: Completeness,
    /// End-to-end latency of every delivery, µs.
    pub latency: Buckets,
    /// Initial connect + subscribe time, µs.
    pub connect: Buckets,
    /// Per reconnected client: first disconnect to `replay_complete`, µs.
    pub recovery: Buckets,
    /// Earliest disconnect seen (µs since the epoch; 0: none).
    pub first_disconnect_us: u64,
    /// Latest `replay_complete` (µs since the epoch; 0: none).
    pub last_resumed_us: u64,
}

/// From a worker to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress(Counters),
    Result(Box<WorkerResult>),
}

#[derive(Debug, Default)]
struct Atomics {
    connected: AtomicI64,
    ready: AtomicI64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    unexpected: AtomicU64,
    errors: AtomicU64,
    disconnects: AtomicU64,
    reconnect_attempts: AtomicU64,
    resumed: AtomicU64,
    replayed: AtomicU64,
    replay_incomplete: AtomicU64,
    first_disconnect_us: AtomicU64,
    last_resumed_us: AtomicU64,
}

impl Atomics {
    fn snapshot(&self) -> Counters {
        let r = Ordering::Relaxed;
        Counters {
            connected: self.connected.load(r),
            ready: self.ready.load(r),
            subscribed: self.subscribed.load(r),
            failed: self.failed.load(r),
            delivered: self.delivered.load(r),
            duplicates: self.duplicates.load(r),
            unexpected: self.unexpected.load(r),
            errors: self.errors.load(r),
            disconnects: self.disconnects.load(r),
            reconnect_attempts: self.reconnect_attempts.load(r),
            resumed: self.resumed.load(r),
            replayed: self.replayed.load(r),
            replay_incomplete: self.replay_incomplete.load(r),
        }
    }
}

/// State shared by the clients of one worker.
struct Shared {
    spec: WorkerSpec,
    c: Atomics,
    latency: Vec<Mutex<Histogram<u64>>>,
    connect: Mutex<Histogram<u64>>,
    recovery: Mutex<Histogram<u64>>,
    stop: CancellationToken,
    finish: OnceLock<(u64, HashSet<u64>)>,
    connect_slots: Semaphore,
    completeness: Mutex<Completeness>,
    logged_errors: AtomicU64,
}

impl Shared {
    fn log(&self, what: std::fmt::Arguments<'_>) {
        // A few lines are enough to see what goes wrong; thousands would drown the run.
        if self.logged_errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("worker {}: {what}", self.spec.worker);
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// What the coordinator gets when a connection ends.
enum End {
    Stop,
    Lost(String),
}

/// Per-client state that survives reconnects.
struct Client {
    i: usize,
    token: String,
    user: String,
    event_types: Vec<String>,
    account: usize,
    last_seq: u64,
    /// Bit `j`: event `account + A * j` received.
    seen: Vec<u64>,
    duplicates: u64,
    unexpected: u64,
    rng: u64,
}

impl Client {
    fn mark(&mut self, j: u64) -> bool {
        let (w, b) = ((j / 64) as usize, j % 64);
        if self.seen.len() <= w {
            self.seen.resize(w + 1, 0);
        }
        let fresh = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        fresh
    }

    fn has(&self, j: u64) -> bool {
        self.seen
            .get((j / 64) as usize)
            .is_some_and(|w| w & (1 << (j % 64)) != 0)
    }

    /// xorshift64*, for jitter.
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// socket.io-client's reconnection delay: 1 s doubling up to 5 s, randomized by ±50 %.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = (1000.0 * 2f64.powi(attempt.min(10) as i32)).min(5000.0);
        let jitter = (self.random() * 2.0 - 1.0) * 0.5 * base;
        Duration::from_millis((base + jitter).clamp(0.0, 5000.0) as u64)
    }
}

/// Runs a worker: reads the spec from stdin, runs its clients, prints progress and the result.
pub async fn run() -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("worker: no spec on stdin"))?;
    let spec: WorkerSpec = serde_json::from_str(&first)?;
    let deadline = Duration::from_secs(spec.deadline_secs);
    let sh = Arc::new(Shared {
        connect_slots: Semaphore::new(spec.connect_concurrency.max(1)),
        spec,
        c: Atomics::default(),
        latency: (0..SHARDS).map(|_| Mutex::new(hist::new_hist())).collect(),
        connect: Mutex::new(hist::new_hist()),
        recovery: Mutex::new(hist::new_hist()),
        stop: CancellationToken::new(),
        finish: OnceLock::new(),
        completeness: Mutex::default(),
        logged_errors: AtomicU64::new(0),
    });
    // Commands; end of stdin (the coordinator went away) stops the worker too.
    {
        let sh = sh.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Command>(&line) {
                    Ok(Command::Finish(f)) => {
                        let _ = sh.finish.set((f.published, f.failed.into_iter().collect()));
                        sh.stop.cancel();
                        return;
                    }
                    Err(e) => eprintln!("worker: bad command {line}: {e}"),
                }
            }
            sh.stop.cancel();
        });
    }
    {
        let sh = sh.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => {
                    eprintln!("worker {}: deadline reached; reporting", sh.spec.worker);
                    sh.stop.cancel();
                }
                () = sh.stop.cancelled() => {}
            }
        });
    }
    let progress = {
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tick.tick().await;
                print_msg(&WorkerMsg::Progress(sh.c.snapshot()));
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..sh.spec.count {
        let i = sh.spec.first_client + k;
        tasks.spawn(client(sh.clone(), i));
    }
    sh.stop.cancelled().await;
    // Every client checks itself once the stop is seen; bounded in case some hang.
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    progress.abort();
    let mut latency = hist::new_hist();
    for shard in &sh.latency {
        let _ = latency.add(&*shard.lock());
    }
    let result = WorkerResult {
        counters: sh.c.snapshot(),
        completeness: sh.completeness.lock().clone(),
        latency: hist::to_buckets(&latency),
        connect: hist::to_buckets(&sh.connect.lock()),
        recovery: hist::to_buckets(&sh.recovery.lock()),
        first_disconnect_us: sh.c.first_disconnect_us.load(Ordering::Relaxed),
        last_resumed_us: sh.c.last_resumed_us.load(Ordering::Relaxed),
    };
    print_msg(&WorkerMsg::Result(Box::new(result)));
    Ok(())
}

fn print_msg(msg: &WorkerMsg) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(msg) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// One client, from its first connect to its final check.
async fn client(sh: Arc<Shared>, i: usize) {
    let mix = &sh.spec.mix;
    let user = format!("bench_user_{i}");
    let account = mix.client_account(i);
    let token = match instantchat_gateway::auth::mint_token(
        &sh.spec.jwt_secret,
        &user,
        std::slice::from_ref(&mix.accounts[account]),
        Duration::from_secs(24 * 3600),
    ) {
        Ok(t) => t,
        Err(e) => {
            sh.log(format_args!("cannot mint a token: {e}"));
            sh.c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut c = Client {
        i,
        token,
        user,
        event_types: mix
            .client_types(i)
            .into_iter()
            .map(|t| mix.types[t].clone())
            .collect(),
        account,
        last_seq: 0,
        seen: Vec::new(),
        duplicates: 0,
        unexpected: 0,
        rng: (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_us(),
    };
    let mut gateway = sh.spec.first_gateway(i);
    let mut attempt = 0u32;
    let mut subscribed_once = false;
    let mut outage_since: Option<u64> = None;
    loop {
        if sh.stop.is_cancelled() {
            break;
        }
        let started = now_us();
        let permit = if subscribed_once {
            None
        } else {
            tokio::select! {
                p = sh.connect_slots.acquire() => p.ok(),
                () = sh.stop.cancelled() => break,
            }
        };
        let resume = subscribed_once;
        let mut ready = false;
        let end = session(
            &sh,
            &mut c,
            gateway,
            resume,
            permit,
            &mut ready,
            &mut |ready_at| {
                if !resume {
                    subscribed_once = true;
                    sh.c.subscribed.fetch_add(1, Ordering::Relaxed);
                    sh.connect
                        .lock()
                        .saturating_record(ready_at.saturating_sub(started));
                } else if let Some(since) = outage_since.take() {
                    sh.recovery
                        .lock()
                        .saturating_record(ready_at.saturating_sub(since));
                    sh.c.last_resumed_us.fetch_max(ready_at, Ordering::Relaxed);
                }
            },
        )
        .await;
        match end {
            End::Stop => break,
            End::Lost(why) => {
                if ready {
                    attempt = 0;
                }
                if !subscribed_once {
                    attempt += 1;
                    if attempt >= sh.spec.connect_attempts {
                        sh.log(format_args!("client {i} failed to connect: {why}"));
                        sh.c.failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                } else {
                    if !sh.spec.reconnect {
                        sh.log(format_args!("client {i} lost: {why}"));
                        break;
                    }
                    if outage_since.is_none() {
                        let t = now_us();
                        outage_since = Some(t);
                        let first = &sh.c.first_disconnect_us;
                        let _ = first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                            (v == 0 || t < v).then_some(t)
                        });
                    }
                    if sh.spec.failover {
                        gateway = (gateway + 1) % sh.spec.gateways.len().max(1);
                    }
                    sh.c.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
                }
                let delay = c.backoff(attempt);
                if subscribed_once {
                    attempt += 1;
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = sh.stop.cancelled() => break,
                }
            }
        }
    }
    check(&sh, &c);
}

/// Compares what the client got with what was published for it.
fn check(sh: &Shared, c: &Client) {
    let mix = &sh.spec.mix;
    let (published, failed) = match sh.finish.get() {
        Some((p, f)) => (*p, f),
        None => return,
    };
    let accounts = mix.accounts.len() as u64;
    let mut result = Completeness {
        clients: 1,
        duplicates: c.duplicates,
        unexpected: c.unexpected,
        ..Completeness::default()
    };
    let mut first_missing = None;
    let mut n = c.account as u64;
    while n < published {
        if mix.client_has_type(c.i, mix.event_type(n)) && !failed.contains(&n) {
            result.expected += 1;
            if c.has(n / accounts) {
                result.received += 1;
            } else {
                result.missing += 1;
                first_missing.get_or_insert(n);
            }
        }
        n += accounts;
    }
    if result.missing == 0 && result.duplicates == 0 && result.unexpected == 0 {
        result.complete_clients = 1;
    } else {
        result
            .samples
            .push((c.i, result.missing, result.duplicates, first_missing));
    }
    sh.completeness.lock().add(&result);
}

/// Decrements a gauge when dropped.
struct Gauge<'a>(&'a AtomicI64, bool);

impl Gauge<'_> {
    fn up(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1 = true;
        }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One connection: connect, authenticate in the handshake, subscribe (with `since` on a resume),
/// then receive until the connection ends or the worker stops. `on_ready` runs once the client
/// is subscribed (after `replay_complete` on a resume).
async fn session(
    sh: &Shared,
    c: &mut Client,
    gateway: usize,
    resume: bool,
    permit: Option<tokio::sync::SemaphorePermit<'_>>,
    ready: &mut bool,
    on_ready: &mut (dyn FnMut(u64) + Send),
) -> End {
    let port = sh.spec.gateways[gateway % sh.spec.gateways.len()];
    let connected = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect(sh, c, port)) => r,
        () = sh.stop.cancelled() => return End::Stop,
    };
    let mut ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return End::Lost(e),
        Err(_) => return End::Lost("connect timed out".into()),
    };
    let mut open = Gauge(&sh.c.connected, false);
    open.up();
    let mut ready_gauge = Gauge(&sh.c.ready, false);
    let mut subscribe = json!({
        "eventTypes": c.event_types,
        "userId": c.user,
        "timestamp": now_us() / 1000,
    });
    if resume {
        subscribe["since"] = json!(c.last_seq);
    }
    let packet = format!("420[\"subscribe\",{subscribe}]");
    if let Err(e) = ws.send(Message::text(packet)).await {
        return End::Lost(format!("subscribe: {e}"));
    }
    let mut permit = permit;
    let mut acked = false;
    let ack_deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            () = sh.stop.cancelled() => return End::Stop,
            () = tokio::time::sleep_until(ack_deadline), if !acked => {
                return End::Lost("no subscribe ack".into());
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                lost(sh, *ready);
                return End::Lost(format!("closed by the server: {f:?}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                lost(sh, *ready);
                return End::Lost(format!("WebSocket error: {e}"));
            }
            None => {
                lost(sh, *ready);
                return End::Lost("WebSocket closed".into());
            }
        };
        let t = text.as_str();
        if t == "2" {
            if let Err(e) = ws.send(Message::text("3")).await {
                lost(sh, *ready);
                return End::Lost(format!("pong: {e}"));
            }
        } else if t.starts_with("42[\"webhook_event\"") {
            match parse_webhook_event(t) {
                Some((n, sent_us, seq)) => on_event(sh, c, n, sent_us, seq),
                None => {
                    sh.c.errors.fetch_add(1, Ordering::Relaxed);
                    sh.log(format_args!("unparsable event: {t}"));
                }
            }
        } else if t.starts_with("430") {
            acked = true;
            permit.take();
            if !resume {
                *ready = true;
                ready_gauge.up();
                on_ready(now_us());
            }
        } else if t.starts_with("42[\"replay_complete\"") {
            sh.c.resumed.fetch_add(1, Ordering::Relaxed);
            if let Some(count) = number_after(t, "\"count\":") {
                sh.c.replayed.fetch_add(count, Ordering::Relaxed);
            }
            if t.contains("\"complete\":false") {
                sh.c.replay_incomplete.fetch_add(1, Ordering::Relaxed);
            }
            if resume && !*ready {
                *ready = true;
                ready_gauge.up();
                on_ready(now_us());
            }
        } else if t.starts_with("42[\"error\"") || t.starts_with("44") {
            sh.c.errors.fetch_add(1, Ordering::Relaxed);
            sh.log(format_args!("client {}: {t}", c.i));
        } else if t == "1" || t.starts_with("41") {
            lost(sh, *ready);
            return End::Lost(format!("disconnected by the server ({t})"));
        }
    }
}

fn lost(sh: &Shared, was_ready: bool) {
    if was_ready && !sh.stop.is_cancelled() {
        sh.c.disconnects.fetch_add(1, Ordering::Relaxed);
    }
}

fn on_event(sh: &Shared, c: &mut Client, n: u64, sent_us: u64, seq: u64) {
    let now = now_us();
    sh.latency[c.i % SHARDS]
        .lock()
        .saturating_record(now.saturating_sub(sent_us));
    sh.c.delivered.fetch_add(1, Ordering::Relaxed);
    c.last_seq = c.last_seq.max(seq);
    let mix = &sh.spec.mix;
    if !mix.client_expects(c.i, n) {
        c.unexpected += 1;
        sh.c.unexpected.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if !c.mark(n / mix.accounts.len() as u64) {
        c.duplicates += 1;
        sh.c.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}

/// The WebSocket, upgraded and through the Socket.IO namespace connect with `auth.token`.
async fn connect(sh: &Shared, c: &Client, port: u16) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if sh.spec.source_ips {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (c.i % 250) as u8);
        socket
            .bind(SocketAddrV4::new(source, 0).into())
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let stream = socket
        .connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into())
        .await
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let config = WebSocketConfig::default()
        .read_buffer_size(sh.spec.read_buffer)
        .write_buffer_size(0);
    let (mut ws, _) = client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!("expected the engine.io open packet, got {open}"));
    }
    let auth = json!({ "token": c.token, "userId": c.user });
    ws.send(Message::text(format!("40{auth}")))
        .await
        .map_err(|e| format!("namespace connect: {e}"))?;
    loop {
        let t = next_text(&mut ws).await?;
        if t == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| format!("pong: {e}"))?;
        } else if t.starts_with("40") {
            return Ok(ws);
        } else if t.starts_with("44") {
            sh.c.errors.fetch_add(1, Ordering::Relaxed);
            return Err(format!("connect refused: {t}"));
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(f))) => return Err(format!("closed in the handshake: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("handshake: {e}")),
            None => return Err("closed in the handshake".into()),
        }
    }
}

/// The digits right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `(n, sent_us, seq)` of a `42["webhook_event",{...}]` whose content is the bench's
/// `"<n> <sent_us>"`, without parsing the whole JSON.
pub fn parse_webhook_event(text: &str) -> Option<(u64, u64, u64)> {
    const CONTENT: &str = "\"content\":\"";
    let at = text.find(CONTENT)? + CONTENT.len();
    let rest = &text[at..];
    let end = rest.find('"')?;
    let (n, sent) = rest[..end].split_once(' ')?;
    let seq = number_after(&rest[end..], "\"seq\":")?;
    Some((n.parse().ok()?, sent.parse().ok()?, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_bench_event() {
        let t = r#"42["webhook_event",{"id":"comments:b1-7","eventType":"comments","accountId":"bench_acct_0","sender":{"id":"bench","username":"bench"},"content":"7 1700000000123456","timestamp":"2025-01-01T00:00:00Z","seq":42,"details":{"seq":1}}]"#;
        assert_eq!(parse_webhook_event(t), Some((7, 1_700_000_000_123_456, 42)));
        assert_eq!(
            parse_webhook_event(r#"42["webhook_event",{"content":"x"}]"#),
            None
        );
        assert_eq!(
            number_after(r#"{"count":12,"x":1}"#, "\"count\":"),
            Some(12)
        );
    }

    #[test]
    fn bitset_marks_once() {
        let mut c = Client {
            i: 0,
            token: String::new(),
            user: String::new(),
            event_types: Vec::new(),
            account: 0,
            last_seq: 0,
            seen: Vec::new(),
            duplicates: 0,
            unexpected: 0,
            rng: 1,
        };
        assert!(c.mark(130));
        assert!(!c.mark(130));
        assert!(c.has(130) && !c.has(129));
        for a in 0..20 {
            let d = c.backoff(a).as_millis();
            assert!(d <= 5000, "{d}");
        }
        assert!((500..=1500).contains(&c.backoff(0).as_millis()));
    }
}
