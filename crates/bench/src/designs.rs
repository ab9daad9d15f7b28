//! `designs`: what each way of taking a gateway's events from NATS costs, measured against a
//! real nats-server, with no InstantChat in the path. The figures behind docs/fanout.md.
//!
//! For each number of accounts N a gateway serves:
//! - **filtered consumer**: one ordered JetStream consumer whose filter subjects are the N
//!   accounts, made again when one account joins (what the gateway did before): wall time of
//!   one re-creation and nats-server CPU per re-creation.
//! - **core subscriptions**: one core NATS subscription per account on subjects the stream
//!   republishes: wall time of one more subscription (SUB and a flush), nats-server CPU each.
//! - **one wildcard consumer**: one ordered consumer on every account, filtered in the gateway:
//!   a join costs the broker nothing; the price is every event sent to every gateway, measured
//!   as nats-server CPU per event delivered to G such consumers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use serde_json::json;

use crate::procfs;
use crate::system::free_port;

/// The command line of `designs`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DesignsArgs {
    /// Accounts one gateway serves, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,5000")]
    pub accounts: Vec<usize>,
    /// Joins measured per design and size.
    #[arg(long, default_value_t = 20)]
    pub joins: usize,
    /// Gateways (wildcard consumers) for the per-event cost.
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    /// Events published for the per-event cost.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// The nats-server binary (2.10 or newer).
    #[arg(long, env = "NATS_SERVER_BIN", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Nats {
    child: Child,
    _store: tempfile::TempDir,
    url: String,
}

impl Nats {
    fn start(bin: &PathBuf) -> anyhow::Result<Nats> {
        let store = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Nats {
            child,
            _store: store,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }

    fn cpu_s(&self) -> f64 {
        procfs::read(self.child.id()).map_or(0.0, |s| s.cpu_s)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn subject(account: usize) -> String {
    format!(
        "bench.events.{}.comments",
        17_841_400_000_000_000u64 + account as u64
    )
}

/// Publishes `count` events spread over `accounts`, 256 awaiting their acks at a time.
async fn publish_events(
    js: &jetstream::Context,
    count: usize,
    accounts: usize,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(256);
    for e in 0..count {
        acks.push(js.publish(subject(e % accounts), "{}".into()).await?);
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Runs `designs`.
pub async fn designs(a: DesignsArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &n in &a.accounts {
        eprintln!("instantchat-bench designs: {n} accounts");
        let nats = Nats::start(&a.nats_server)?;
        let client = connect(&nats.url).await?;
        let js = jetstream::new(client.clone());
        let mut events = js
            .create_stream(stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench.events.>".into()],
                republish: Some(stream::Republish {
                    source: "bench.events.>".into(),
                    destination: "bench.live.>".into(),
                    headers_only: false,
                }),
                ..Default::default()
            })
            .await?;
        // A stream with history: one event per account.
        for account in 0..n {
            js.publish(subject(account), "{}".into()).await?.await?;
        }
        let _ = events.info().await?;

        // Filtered consumer, made again for each join.
        let (mut wall, cpu0) = (Duration::ZERO, nats.cpu_s());
        for join in 0..a.joins {
            let filters: Vec<String> = (join..n + join).map(subject).collect();
            let t0 = Instant::now();
            let mut consumer = events
                .create_consumer(pull::OrderedConfig {
                    filter_subjects: filters,
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await?;
            let _ = consumer.info().await?;
            wall += t0.elapsed();
            drop(consumer);
        }
        let filtered_cpu = (nats.cpu_s() - cpu0) / a.joins as f64;
        let filtered_wall = wall / a.joins as u32;

        // Core subscriptions: N held, then one more per join.
        let subscriber = connect(&nats.url).await?;
        let mut held = Vec::with_capacity(n + a.joins);
        for account in 0..n {
            held.push(
                subscriber
                    .subscribe(subject(account).replace("events", "live"))
                    .await?,
            );
        }
        subscriber.flush().await?;
        let (cpu0, t0) = (nats.cpu_s(), Instant::now());
        for join in 0..a.joins {
            held.push(
                subscriber
                    .subscribe(subject(n + join).replace("events", "live"))
                    .await?,
            );
            subscriber.flush().await?;
        }
        let core_wall = t0.elapsed() / a.joins as u32;
        let core_cpu = (nats.cpu_s() - cpu0) / a.joins as f64;
        drop(held);

        // One wildcard consumer per gateway: what each event sent to a gateway costs the
        // broker, over what storing it costs.
        let cpu0 = nats.cpu_s();
        publish_events(&js, a.events, n).await?;
        let store_cpu = nats.cpu_s() - cpu0;
        let mut readers = Vec::new();
        for _ in 0..a.gateways {
            let consumer = events
                .create_consumer(pull::OrderedConfig {
                    filter_subject: "bench.events.>".into(),
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer.messages().await?;
            let want = a.events;
            readers.push(tokio::spawn(async move {
                let mut got = 0;
                while got < want {
                    match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                        Ok(Some(Ok(_))) => got += 1,
                        _ => break,
                    }
                }
                got
            }));
        }
        let cpu0 = nats.cpu_s();
        publish_events(&js, a.events, n).await?;
        let mut delivered = 0;
        for reader in readers {
            delivered += reader.await.unwrap_or(0);
        }
        let store_and_send_cpu = nats.cpu_s() - cpu0;
        let per_delivery_us =
            (store_and_send_cpu - store_cpu).max(0.0) * 1e6 / (a.events * a.gateways.max(1)) as f64;
        let per_event_us = store_cpu * 1e6 / a.events as f64;
        let row = json!({
            "accounts": n,
            "filtered_consumer": {
                "per_join_ms": filtered_wall.as_secs_f64() * 1e3,
                "nats_cpu_per_join_ms": filtered_cpu * 1e3,
            },
            "core_subscriptions": {
                "per_join_ms": core_wall.as_secs_f64() * 1e3,
                "nats_cpu_per_join_ms": core_cpu * 1e3,
            },
            "wildcard_consumers": {
                "gateways": a.gateways,
                "events": a.events,
                "delivered": delivered,
                "nats_cpu_to_store_an_event_us": per_event_us,
                "nats_cpu_per_event_sent_to_a_gateway_us": per_delivery_us,
            },
        });
        println!(
            "{n:>6} accounts | filtered consumer: {:>8.2} ms and {:>8.2} ms of nats-server CPU per join | core subscription: {:>6.3} ms and {:>6.3} ms per join | {} wildcard consumers: {:>5.1} µs of nats-server CPU per event sent to a gateway (storing it: {:>5.1} µs; {delivered} of {} delivered)",
            filtered_wall.as_secs_f64() * 1e3,
            filtered_cpu * 1e3,
            core_wall.as_secs_f64() * 1e3,
            core_cpu * 1e3,
            a.gateways,
            per_delivery_us,
            per_event_us,
            a.events * a.gateways,
        );
        rows.push(row);
    }
    if let Some(out) = &a.out {
        let doc = json!({
            "scenario": "designs",
            "command": crate::scenarios::command_line(),
            "machine_load": procfs::loadavg(),
            "config": a,
            "results": rows,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}
