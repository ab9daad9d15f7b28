//! `instantchat-gateway`: the Socket.IO gateway as its own service, fed by NATS JetStream.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use instantchat_broker::NatsBus;
use instantchat_gateway::{Gateway, GatewayArgs, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = GatewayArgs::parse();
    let settings = match args.gateway.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("instantchat-gateway: {e}\nRun with --help for every setting.");
            std::process::exit(2);
        }
    };
    init_tracing(&args.log_format);
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
    Gateway::new(settings, Arc::new(bus))
        .serve(listener, shutdown_signal())
        .await?;
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
