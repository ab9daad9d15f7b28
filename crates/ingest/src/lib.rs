//! The webhook ingest service: Meta POSTs Instagram webhooks here; each one is verified,
//! normalized and published durably to the event bus before it is answered (docs/protocol.md,
//! "Webhooks" and "Normalization").
//!
//! - [`config`]: [`Config`] from env vars and flags, every problem reported at once;
//!   [`IngestSettings`] is the part the handlers need.
//! - [`app`]: [`router`] / [`webhook_router`] over an [`IngestState`], the handlers, and the one
//!   [`AppError`] the HTTP edge answers with.
//! - [`metrics`]: the Prometheus counters and histogram served on `/metrics` (with the NATS
//!   connection state and the process's resident memory).
//! - [`Application`]: binds the port, connects to NATS and serves until a shutdown future
//!   resolves, then drains in-flight requests and closes the bus. Tests and benchmarks drive it
//!   in-process.
//!
//! Another binary (the single-process mode) builds an [`IngestState`] over its own bus and merges
//! [`router`] (or [`webhook_router`]) into its own `axum::Router`.

pub mod app;
pub mod config;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use instantchat_broker::{BusError, EventBus, NatsBus};
use instantchat_service::serve::{HEADER_READ_TIMEOUT, serve};
use tokio::net::TcpListener;

pub use app::{AppError, IngestState, Published, Receipt, WEBHOOK_PATH, router, webhook_router};
pub use config::{Args, Config, ConfigError, IngestSettings, LogFormat, Secret};
pub use metrics::Metrics;

/// Name this service gives its NATS connection, seen in NATS monitoring.
pub const SERVICE_NAME: &str = "instantchat-ingest";
/// How long in-flight requests may take to finish after the shutdown signal. Meta times out a
/// webhook after about 20 s; longer would only delay the restart.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on port {port}: {source}; choose another PORT or stop what holds it")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The ingest service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: IngestState,
}

impl Application {
    /// Connects to NATS (which keeps retrying in the background while NATS is down: the service
    /// starts anyway, not ready) and binds `0.0.0.0:<port>`.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let bus = NatsBus::connect(&config.nats_url, SERVICE_NAME, config.retention).await?;
        let client = bus.client().clone();
        let app = Self::with_bus(config.port, config.ingest, Arc::new(bus)).await?;
        app.state.metrics().watch_nats(client);
        Ok(app)
    }

    /// Binds `0.0.0.0:<port>` and serves the ingest routes over `bus`.
    pub async fn with_bus(
        port: u16,
        settings: IngestSettings,
        bus: Arc<dyn EventBus>,
    ) -> Result<Self, StartError> {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            .await
            .map_err(|source| StartError::Bind { port, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind { port, source })?
            .port();
        Ok(Application {
            listener,
            port,
            state: IngestState::new(settings, bus),
        })
    }

    /// The port actually bound (useful when configured as 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The handlers' state, e.g. for its bus or metrics.
    pub fn state(&self) -> &IngestState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish
    /// (up to [`DRAIN_DEADLINE`]) so each webhook gets its answer, and closes the bus.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Application {
            listener,
            state,
            port,
        } = self;
        let bus = state.bus().clone();
        tracing::info!(port, bus = bus.kind(), "ingest listening");
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let server = serve(listener, router(state), HEADER_READ_TIMEOUT, async move {
            shutdown.await;
            let _ = signalled_tx.send(());
        });
        let deadline = async {
            if signalled_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(DRAIN_DEADLINE).await;
        };
        let result = tokio::select! {
            result = server => result,
            () = deadline => {
                tracing::warn!(deadline = ?DRAIN_DEADLINE, "requests still in flight at the drain deadline; stopping anyway");
                Ok(())
            }
        };
        bus.close().await;
        tracing::info!("ingest stopped");
        result
    }
}
