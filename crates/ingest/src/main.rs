//! `instantchat-ingest`: parse the configuration (every problem at once, exit 2), set up logs
//! (and traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), raise the open-files limit, serve until
//! SIGINT/SIGTERM.

use clap::Parser;
use instantchat_ingest::{Application, Args, Config, SERVICE_NAME};
use instantchat_telemetry::{Exporter, Settings};

/// A webhook's buffers (body, events, messages, answer) are made on one worker thread and often
/// freed on another once the broker has acknowledged them; glibc's malloc took ~15 % of ingest's
/// CPU under load, much of it in its arena locks and consolidation. mimalloc frees across
/// threads without them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("instantchat-ingest: {e}\n\nRun with --help for every setting.");
            std::process::exit(2);
        }
    };
    // Flushes pending spans when main returns.
    let _telemetry = instantchat_telemetry::init_with(Settings {
        service_name: SERVICE_NAME.to_owned(),
        log_format: config.log_format,
        log_filter: Some(config.log_filter.clone()),
        exporter: Exporter::from_env(),
        otlp_traces_endpoint: None,
    });
    // Every webhook connection is a file; containers start with a soft limit of 1,024.
    instantchat_service::limits::raise_and_log();
    let app = Application::build(config).await?;
    app.run_until_stopped(instantchat_service::shutdown::signal())
        .await?;
    Ok(())
}
