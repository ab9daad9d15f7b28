//! `instantchat-bench`: a load generator for InstantChat that starts the system under test
//! itself, from the release binaries, on free loopback ports.
//!
//! - [`system`]: `nats-server` + `instantchat-ingest` + G `instantchat-gateway`s, or one
//!   `instantchat serve` (`--single`); start, kill, restart, stop, `/metrics`.
//! - [`worker`]: the clients. A hidden `worker` subcommand holds a slice of them (one process
//!   stays under the 20,000 open files cap) and reports over JSON lines; [`pool`] is the
//!   coordinator's side.
//! - [`publisher`]: signed webhooks at a fixed rate or as fast as delivery keeps up, the send
//!   time embedded in each event.
//! - [`mix`]: which events go to which clients (accounts and types), shared by both sides.
//! - [`monitor`]: a progress line every second, samples, CPU and memory from `/proc`
//!   ([`procfs`] reads it).
//! - [`hist`]: HDR latency histograms and how workers send them to the coordinator.
//! - [`scenarios`]: `fanout`, `latency`, `churn`, `idle`, `scale-out`, `storm`; each writes a
//!   summary table to stdout and JSON to `--out`.
//! - [`churn`]: clients that join with accounts of their own and leave, beside the measured ones.
//! - [`ingest`](mod@ingest): webhooks/s, latency and CPU per webhook of `instantchat-ingest`, and
//!   the JetStream floor beside it (the same messages published straight to JetStream with
//!   ingest's own publisher, and what publishing alone costs), and with `--http-floor` the HTTP
//!   floor ([`http_echo`]: ingest's serve loop and router alone). Its senders POST with
//!   [`http1`], a lean keep-alive client, so the load generator takes little of the machine.
//! - [`floor`]: the machine's own loopback TCP latency for a fan-out of a given shape, with no
//!   InstantChat in the path: the reference `latency` is read against.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

pub mod churn;
pub mod designs;
pub mod fast_batch;
pub mod floor;
pub mod hist;
pub mod http1;
pub mod http_echo;
pub mod ingest;
pub mod mix;
pub mod monitor;
pub mod pool;
pub mod procfs;
pub mod publisher;
pub mod scenarios;
pub mod system;
pub mod worker;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "instantchat-bench",
    version,
    about = "Load generator for InstantChat: starts nats-server, instantchat-ingest and \
             instantchat-gateway (or `instantchat serve`) from the release binaries on loopback, \
             connects Socket.IO clients, POSTs signed webhooks and measures delivery.",
    after_help = "Build first: cargo build --release --bins. Every run is bounded by --max-seconds, \
                  and by --duration and --max-events where the scenario has them, and only ever \
                  targets 127.0.0.0/8. A progress line is printed every second on stderr, a \
                  summary on stdout; --out writes JSON."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Scenario,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// All clients subscribed to one account and type; events as fast as delivery keeps up:
    /// deliveries/s and completeness.
    Fanout(FanoutArgs),
    /// A fixed event rate: end-to-end latency percentiles (POST sent to webhook_event received).
    Latency(LatencyArgs),
    /// `latency`'s steady clients while R clients a second join, each with a new account, and
    /// leave: the steady clients' latency percentiles and completeness, CPU of the gateway and
    /// of nats-server.
    Churn(ChurnArgs),
    /// N authenticated, subscribed, idle connections: gateway memory per connection and CPU.
    Idle(IdleArgs),
    /// Clients spread so that each gateway's clients see their own accounts: events each gateway
    /// takes from NATS (its /metrics) and total deliveries/s.
    ScaleOut(ScaleOutArgs),
    /// Clients caught up, the gateway SIGKILLed and restarted (or another takes over) while
    /// events keep flowing; every client resumes with `since`: time until all are back,
    /// completeness.
    Storm(StormArgs),
    /// No InstantChat at all: what each way of taking a gateway's accounts from NATS costs the
    /// broker (a filtered consumer made again per join, core subscriptions, one wildcard
    /// consumer per gateway), for several numbers of accounts.
    Designs(designs::DesignsArgs),
    /// No InstantChat at all: one lean sender writes a frame to each of N loopback TCP sockets
    /// per event, at a fixed rate; receiver processes read them. The machine's own latency for
    /// the fan-out `latency` measures, and so the floor of its figures.
    Floor(FloorArgs),
    /// Signed Instagram webhooks (the fixtures, each made unique) POSTed to instantchat-ingest by
    /// keep-alive senders, as fast as answers come back or at --rate: accepted webhooks/s,
    /// POST-to-200 latency, CPU per webhook of ingest and nats-server, and that the streams hold
    /// exactly what was acknowledged. Then the floor: the same messages published straight to
    /// JetStream with ingest's own publisher (async-nats), no HTTP and no ingest, and what
    /// publishing alone costs the bench per webhook.
    Ingest(ingest::IngestArgs),
    /// Internal: one worker process of clients, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// Internal: one receiver process of `floor`.
    #[command(hide = true)]
    FloorReceiver(FloorReceiverArgs),
    /// Internal: ingest's HTTP half alone, for `ingest --http-floor`.
    #[command(hide = true)]
    HttpEcho,
}

/// Settings of every scenario.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Common {
    /// Directory of the release binaries (instantchat-ingest, instantchat-gateway, instantchat).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The nats-server binary (2.10 or newer).
    #[arg(long, env = "NATS_SERVER_BIN", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Write the results as JSON to this file (e.g. results/fanout-1k.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hard bound of the whole run in seconds: start, connects, measurement and drain.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Clients per worker process (one open file each; a process may hold 20,000).
    #[arg(long, default_value_t = 12_000)]
    pub per_worker: usize,
    /// Initial connects in flight at once, per worker.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// WebSocket read buffer of each client, bytes.
    #[arg(long, default_value_t = 8192)]
    pub read_buffer: usize,
    /// Connect every client from 127.0.0.1 instead of spreading them over 127.0.0.2-251.
    #[arg(long)]
    pub no_source_ips: bool,
    /// CLIENT_BUFFER_PACKETS of the gateways (default 1024 in production).
    #[arg(long, default_value_t = 8192)]
    pub client_buffer_packets: usize,
    /// More gateway settings as KEY=VALUE (repeatable); they win over the bench's.
    #[arg(long = "gateway-env", value_parser = parse_kv)]
    pub gateway_env: Vec<(String, String)>,
    /// Before starting, wait up to this many seconds for the machine to be quiet (other work
    /// under 0.3 core for 3 s in a row); 0: start at once. The machine load is recorded either way.
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
    /// Keep the processes' logs and NATS store (the directory is printed).
    #[arg(long)]
    pub keep_logs: bool,
}

/// Accounts and event types.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct MixArgs {
    /// Instagram accounts the events are spread over; client i sees account i % A.
    #[arg(long)]
    pub accounts: Option<usize>,
    /// Event types, comma-separated; event n has type (n / A) % T.
    #[arg(long, value_delimiter = ',', default_value = "comments")]
    pub types: Vec<String>,
    /// Types each client subscribes to (consecutive, from (i / A) % T).
    #[arg(long, default_value_t = 1)]
    pub types_per_client: usize,
}

impl MixArgs {
    pub fn mix(&self, default_accounts: usize) -> mix::Mix {
        mix::Mix::new(
            self.accounts.unwrap_or(default_accounts),
            self.types.clone(),
            self.types_per_client,
        )
    }
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FanoutArgs {
    /// Socket.IO clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Events outstanding per client (sent, not yet received) before the sender waits.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    /// Concurrent webhook senders.
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    /// Most events sent.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_events: u64,
    /// Against `instantchat serve` (one process, in-process bus) instead of ingest + gateway +
    /// NATS.
    #[arg(long)]
    pub single: bool,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LatencyArgs {
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Webhooks per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Most webhook POSTs in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub max_events: u64,
    /// Against `instantchat serve` instead of ingest + gateway + NATS.
    #[arg(long)]
    pub single: bool,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChurnArgs {
    /// Steady clients, measured (client i sees account i % A).
    #[arg(long, default_value_t = 16_000)]
    pub clients: usize,
    /// Webhooks per second to the steady clients' accounts.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Clients joining per second (and as many leaving), each with an account of its own;
    /// 0 for the same run without churn.
    #[arg(long, default_value_t = 50.0)]
    pub churn_rate: f64,
    /// Seconds each joining client stays before it leaves.
    #[arg(long, default_value_t = 1.0)]
    pub churn_lifetime: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Most webhook POSTs in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub max_events: u64,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Gateway instances; client i connects to gateway i % G.
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// Seconds the idle CPU is measured (engine.io pings every 25 s).
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// Seconds to let the system settle after the last connect.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ScaleOutArgs {
    #[arg(long, default_value_t = 3000)]
    pub clients: usize,
    /// Gateway instances; client i connects to gateway (i % A) % G.
    #[arg(long, default_value_t = 3)]
    pub gateways: usize,
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Events outstanding per client before the sender waits.
    #[arg(long, default_value_t = 16)]
    pub window: u64,
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub max_events: u64,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub common: Common,
}

/// How the storm's gateway goes away and comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StormMode {
    /// SIGKILL the gateway and start it again on the same port.
    Restart,
    /// Two gateways, every client on the first; SIGKILL it; clients move to the second.
    Takeover,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct StormArgs {
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Webhooks per second, all along.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, value_enum, default_value_t = StormMode::Restart)]
    pub mode: StormMode,
    /// Seconds of events before the kill.
    #[arg(long, default_value_t = 5)]
    pub before_secs: u64,
    /// Seconds of events after every client is back.
    #[arg(long, default_value_t = 5)]
    pub after_secs: u64,
    /// Milliseconds between the kill and the restart (restart mode).
    #[arg(long, default_value_t = 0)]
    pub restart_delay_ms: u64,
    /// Seconds to wait for every client to be back before giving up.
    #[arg(long, default_value_t = 60)]
    pub recover_timeout: u64,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[command(flatten)]
    pub mix: MixArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FloorArgs {
    /// Sockets; every event is written to each.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Bytes written per socket and event (a `webhook_event` of the bench's webhooks is about
    /// 280 on the wire: Socket.IO packet and WebSocket header included).
    #[arg(long, default_value_t = 280)]
    pub frame_bytes: usize,
    /// Sender threads, each writing to its share of the sockets (2: as many as the gateway's
    /// runtime has on this machine).
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Receiver processes, each reading its share of the sockets in one poll loop.
    #[arg(long, default_value_t = 2)]
    pub receivers: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hard bound of the whole run in seconds.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Before starting, wait up to this many seconds for the machine to be quiet; 0: at once.
    #[arg(long, default_value_t = 0)]
    pub wait_quiet: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FloorReceiverArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub clients: usize,
    /// Frames each socket must get.
    #[arg(long)]
    pub events: u64,
    #[arg(long)]
    pub frame_bytes: usize,
    #[arg(long)]
    pub max_seconds: u64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Parses the command line and runs it.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("instantchat-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Scenario::Worker => worker::run().await,
            Scenario::Fanout(a) => scenarios::fanout(a).await,
            Scenario::Latency(a) => scenarios::latency(a).await,
            Scenario::Churn(a) => scenarios::churn(a).await,
            Scenario::Idle(a) => scenarios::idle(a).await,
            Scenario::ScaleOut(a) => scenarios::scale_out(a).await,
            Scenario::Storm(a) => scenarios::storm(a).await,
            Scenario::Floor(a) => floor::floor(a).await,
            Scenario::Designs(a) => designs::designs(a).await,
            Scenario::Ingest(a) => ingest::ingest(a).await,
            Scenario::FloorReceiver(a) => floor::floor_receiver(a).await,
            Scenario::HttpEcho => http_echo::run().await,
        }
    });
    // Worker tasks may still be parked on stdin; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("instantchat-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "instantchat-bench",
            "fanout",
            "--clients",
            "10",
            "--gateway-env",
            "RUST_LOG=info",
            "--types",
            "comments,messages",
        ])
        .unwrap();
        let Scenario::Fanout(a) = cli.command else {
            panic!("fanout expected")
        };
        assert_eq!(a.clients, 10);
        assert_eq!(
            a.common.gateway_env,
            vec![("RUST_LOG".into(), "info".into())]
        );
        assert_eq!(a.mix.mix(1).types.len(), 2);
    }
}
