//! `instantchat-ingest`: parse the configuration (every problem at once, exit 2), set up logs,
//! serve until SIGINT/SIGTERM.

use clap::Parser;
use instantchat_ingest::{Application, Args, Config, LogFormat, shutdown};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("instantchat-ingest: {e}\n\nRun with --help for every setting.");
            std::process::exit(2);
        }
    };
    let subscriber = tracing_subscriber::fmt().with_env_filter(EnvFilter::new(&config.log_filter));
    match config.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown::signal()).await?;
    Ok(())
}
