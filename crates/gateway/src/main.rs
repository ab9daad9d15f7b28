//! `instantchat-gateway`: parse the configuration (every problem at once, exit 2), set up logs
//! (and traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), serve until SIGINT/SIGTERM.

use clap::Parser;
use instantchat_gateway::{Application, Config, GatewayArgs, SERVICE_NAME};

/// Each delivery is queued on the fan-out's thread and freed on the connection's, often
/// another one. glibc's malloc takes an arena lock for such frees, and under fan-out the two
/// threads contended for it (~15 % of the gateway's CPU per delivery); mimalloc frees to
/// another thread's page without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_args(GatewayArgs::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("instantchat-gateway: {e}\nRun with --help for every setting.");
            std::process::exit(2);
        }
    };
    // Flushes pending spans when main returns.
    let _telemetry = instantchat_telemetry::init(SERVICE_NAME, &config.log_format);
    // Every client socket is a file; containers start with a soft limit of 1,024.
    instantchat_service::limits::raise_and_log();
    let app = Application::build(config).await?;
    app.run_until_stopped(instantchat_service::shutdown::signal())
        .await?;
    Ok(())
}
