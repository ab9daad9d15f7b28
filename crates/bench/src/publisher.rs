//! Sends signed webhooks as Meta would: the simplified body, one event per POST, the send
//! time embedded in the event's text (`"<n> <unix µs>"`) so the receiving client can tell the
//! end-to-end latency.
//!
//! Two pacings: a fixed rate (open loop; latency, storm) and "as fast as delivery keeps up"
//! (closed loop; fanout, scale-out): a new event is sent only while fewer than `window`
//! deliveries are outstanding, so the gateway is kept saturated without being flooded into
//! disconnecting slow clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hist;
use crate::mix::Mix;
use crate::system::APP_SECRET;
use crate::worker::{Finish, now_us};

/// The webhook sender of a run.
#[derive(Debug)]
pub struct Publisher {
    http: reqwest::Client,
    url: String,
    run: String,
    mix: Mix,
    /// Clients that must receive each group's events.
    receivers: Vec<u64>,
    /// Next event number; after the run, how many were sent.
    next: AtomicU64,
    /// Events answered 200.
    pub ok: AtomicU64,
    failed: Mutex<Vec<u64>>,
    /// Deliveries owed for the events sent so far (answered or not).
    pub issued_deliveries: AtomicU64,
    /// Deliveries owed for the events answered 200.
    pub ok_deliveries: AtomicU64,
    post: Mutex<Histogram<u64>>,
    /// Open loop: how far behind its schedule the sender fell at worst, µs.
    pub max_lag_us: AtomicU64,
    logged: AtomicU64,
}

impl Publisher {
    pub fn new(ingest_url: &str, run: &str, mix: Mix, clients: usize) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Publisher {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()?,
            url: format!(
                "{}{}",
                ingest_url.trim_end_matches('/'),
                instantchat_ingest::WEBHOOK_PATH
            ),
            run: run.to_owned(),
            receivers: mix.receivers(clients),
            mix,
            next: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: Mutex::default(),
            issued_deliveries: AtomicU64::new(0),
            ok_deliveries: AtomicU64::new(0),
            post: Mutex::new(hist::new_hist()),
            max_lag_us: AtomicU64::new(0),
            logged: AtomicU64::new(0),
        }))
    }

    /// Events sent so far.
    pub fn sent(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.lock().len() as u64
    }

    /// POST → 200 times.
    pub fn post_latency(&self) -> Histogram<u64> {
        self.post.lock().clone()
    }

    /// What the workers check their clients against (call once every send has finished).
    pub fn finish(&self) -> Finish {
        Finish {
            published: self.sent(),
            failed: self.failed.lock().clone(),
        }
    }

    fn take(&self) -> u64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.issued_deliveries
            .fetch_add(self.receivers[self.mix.group(n)], Ordering::Relaxed);
        n
    }

    /// Sends event `n`; true when ingest answered 200.
    async fn post(&self, n: u64) -> bool {
        let account = &self.mix.accounts[self.mix.event_account(n)];
        let event_type = &self.mix.types[self.mix.event_type(n)];
        let sent = now_us();
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let body = json!({
            "id": format!("{}-{n}", self.run),
            "eventType": event_type,
            "accountId": account,
            "sender": { "id": "bench_sender", "username": "bench" },
            "comment": { "text": format!("{n} {sent}") },
            "timestamp": timestamp,
        })
        .to_string()
        .into_bytes();
        let signature = instantchat_instagram::sign(APP_SECRET.as_bytes(), &body);
        let result = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await;
        let ok = match result {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                true
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                self.log(format_args!("event {n}: HTTP {status}: {}", text.trim()));
                false
            }
            Err(e) => {
                self.log(format_args!("event {n}: {e}"));
                false
            }
        };
        self.post
            .lock()
            .saturating_record(now_us().saturating_sub(sent));
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.ok_deliveries
                .fetch_add(self.receivers[self.mix.group(n)], Ordering::Relaxed);
        } else {
            self.failed.lock().push(n);
        }
        ok
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.logged.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("publisher: {what}");
        }
    }

    /// Closed loop: `senders` concurrent senders, each sending while fewer than `window`
    /// deliveries are outstanding (`delivered` is what the clients reported), until `until`,
    /// `max_events` or `stop`. Returns once every send has finished.
    pub async fn run_window(
        self: &Arc<Self>,
        senders: usize,
        window: u64,
        delivered: Arc<AtomicU64>,
        until: Instant,
        max_events: u64,
        stop: CancellationToken,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..senders.max(1) {
            let (me, delivered, stop) = (self.clone(), delivered.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    if stop.is_cancelled() || Instant::now() >= until {
                        return;
                    }
                    let outstanding = me
                        .issued_deliveries
                        .load(Ordering::Relaxed)
                        .saturating_sub(delivered.load(Ordering::Relaxed));
                    if outstanding >= window {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    // Claim a number only below the bound, so `sent` never exceeds it.
                    let claimed = me
                        .next
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            (n < max_events).then_some(n + 1)
                        });
                    let Ok(n) = claimed else { return };
                    me.issued_deliveries
                        .fetch_add(me.receivers[me.mix.group(n)], Ordering::Relaxed);
                    me.post(n).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Open loop: event `n` at `start + n / rate`, at most `concurrency` POSTs in flight, until
    /// `until`, `max_events` or `stop`. Returns once every send has finished.
    pub async fn run_rate(
        self: &Arc<Self>,
        rate: f64,
        concurrency: usize,
        until: Instant,
        max_events: u64,
        stop: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let n = self.sent();
            if n >= max_events {
                break;
            }
            let at = start + Duration::from_secs_f64(n as f64 / rate.max(0.001));
            if at >= until {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = stop.cancelled() => break,
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let lag = Instant::now().saturating_duration_since(at).as_micros() as u64;
            self.max_lag_us.fetch_max(lag, Ordering::Relaxed);
            let n = self.take();
            let me = self.clone();
            tasks.spawn(async move {
                me.post(n).await;
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }
}
