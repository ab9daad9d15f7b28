//! `instantchat-gateway`: the Socket.IO gateway as its own service, fed by NATS JetStream.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use instantchat_broker::NatsBus;
use instantchat_gateway::{Gateway, GatewayArgs};

/// Each delivery is queued on the fan-out's thread and freed on the connection's, often
/// another one. glibc's malloc takes an arena lock for such frees, and under fan-out the two
/// threads contended for it (~15 % of the gateway's CPU per delivery); mimalloc frees to
/// another thread's page without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = GatewayArgs::parse();
    let log_problems = instantchat_telemetry::check_log_settings(&args.log_format, None);
    let settings = match args.gateway.settings() {
        Ok(s) if log_problems.is_empty() => s,
        result => {
            let mut problems = result.err().map(|e| e.0).unwrap_or_default();
            problems.extend(log_problems);
            let e = instantchat_gateway::config::ConfigError(problems);
            eprintln!("instantchat-gateway: {e}\nRun with --help for every setting.");
            std::process::exit(2);
        }
    };
    // Flushes pending spans when main returns.
    let _telemetry = instantchat_telemetry::init("instantchat-gateway", &args.log_format);
    // Every client socket is a file; containers start with a soft limit of 1,024.
    instantchat_service::limits::raise_and_log();
    let bus = NatsBus::connect_reader(&args.nats_url, "instantchat-gateway")
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{}; is the port free?",
                args.bind, args.port
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let client = bus.client().clone();
    let gateway = Gateway::new(settings, Arc::new(bus));
    gateway.watch_nats(client);
    gateway
        .serve(listener, instantchat_service::shutdown::signal())
        .await?;
    Ok(())
}
