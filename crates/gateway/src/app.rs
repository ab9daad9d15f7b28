//! The HTTP side: Socket.IO on `/socket.io`, health, readiness, metrics, the operator's view,
//! CORS, the admission of new sessions; start and stop.
//!
//! - [`Gateway`]: the Socket.IO server and its routes over a bus, not bound (the single-process
//!   mode mounts its own routes beside them).
//! - [`Application`]: the gateway service bound to its port(s) and connected to NATS, the shape
//!   every InstantChat service has (`build`, `port`, `run_until_stopped`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use instantchat_broker::{BusError, EventBus, NatsBus};
use instantchat_event::now_ms;
use instantchat_service::ops;
use instantchat_service::serve::{HEADER_READ_TIMEOUT, serve};
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::layer::SocketIoLayer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::admin::{self, AdminState};
use crate::config::{Config, GatewaySettings};
use crate::hub::Hub;
use crate::limits::{SessionRefused, client_ip};
use crate::requests;

/// Name this service gives its NATS connection, seen in NATS monitoring.
pub const SERVICE_NAME: &str = "instantchat-gateway";

/// How much a WebSocket read takes at a time (engineioxide's default is 4 KiB). Every
/// connection holds this much while idle. Client messages are small (a pong is 7 bytes, a
/// `subscribe` about 100); a larger one is read in several chunks.
const WS_READ_CHUNK: usize = 512;

/// What a 503 for a new session tells the client (and a load balancer) to wait, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// The Socket.IO server and the gateway's routes over a bus, ready to serve.
pub struct Gateway {
    hub: Arc<Hub>,
    layer: SocketIoLayer,
    started: Instant,
    started_at_ms: u64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the Socket.IO server over `bus`.
    pub fn new(settings: GatewaySettings, bus: Arc<dyn EventBus>) -> Self {
        let hub = Hub::new(settings, bus);
        let s = &hub.settings;
        let (layer, io) = SocketIo::builder()
            .with_state(hub.clone())
            .max_payload(s.max_client_payload_bytes)
            .ws_max_message_size(s.max_client_payload_bytes as usize)
            .ws_max_frame_size(s.max_client_payload_bytes as usize)
            .max_buffer_size(s.client_buffer_packets)
            .ping_interval(s.ping_interval)
            .ping_timeout(s.ping_timeout)
            // A session that never makes its Socket.IO connect goes after the same time a
            // socket has to authenticate.
            .connect_timeout(s.auth_timeout)
            // Clients send small requests; the buffer grows for a larger one, and a smaller
            // chunk keeps idle connections lean.
            .ws_read_buffer_size(WS_READ_CHUNK)
            .build_layer();
        requests::register(&io);
        hub.set_io(io);
        Gateway {
            hub,
            layer,
            started: Instant::now(),
            started_at_ms: now_ms(),
        }
    }

    /// The gateway's parts.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Reports `client`'s connection state on `/metrics` (`instantchat_gateway_nats_connected`).
    pub fn watch_nats(&self, client: async_nats::Client) {
        self.hub.metrics.watch_nats(client);
    }

    /// Adds metrics to this gateway's `/metrics` (the single-process mode adds ingest's).
    pub fn register_metrics(&self, add: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        self.hub.metrics.register(add);
    }

    /// `/healthz`, `/readyz`, `/metrics` and (with `ADMIN_TOKEN`) `/admin/connections`.
    pub fn ops_router(&self) -> Router {
        let hub = &self.hub;
        let mut routes = health(hub).merge(
            Router::new()
                .route("/metrics", get(metrics))
                .with_state(hub.clone()),
        );
        // The operator's view exists only with a token.
        if let Some(token) = &hub.settings.admin_token {
            let state = AdminState::new(
                hub.clone(),
                token.expose(),
                self.started,
                self.started_at_ms,
            );
            routes = routes.merge(
                Router::new()
                    .route("/admin/connections", get(admin::connections))
                    .with_state(state),
            );
        }
        routes
    }

    /// Socket.IO and `extra` (the single-process mode adds the webhook route), with the ops
    /// routes unless `ops_apart` (`/metrics` and `/admin` are then served on their own port;
    /// health and readiness stay), behind
    /// the admission of new sessions, the origin check and CORS.
    pub fn router_with(&self, extra: Router, ops_apart: bool) -> Router {
        let hub = &self.hub;
        let origins: Vec<HeaderValue> = hub
            .settings
            .allowed_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_credentials(true);
        let ops = if ops_apart {
            health(hub)
        } else {
            self.ops_router()
        };
        ops.merge(extra)
            .layer(self.layer.clone())
            .layer(middleware::from_fn_with_state(hub.clone(), admit_session))
            .layer(middleware::map_request(detach_request_head))
            .layer(middleware::from_fn_with_state(
                hub.clone(),
                refuse_foreign_origin,
            ))
            .layer(cors)
    }

    /// Serves every route on `listener` until `signal` resolves, then drains (see
    /// [`serve_router`](Self::serve_router)).
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router_with(Router::new(), false);
        self.serve_router(router, listener, None, signal).await
    }

    /// Serves `router` on `listener` (and the ops routes on `ops`, when given) until `signal`
    /// resolves, then drains: at once not ready, no new session, no new connection (so
    /// reconnects go to another instance); then every transport closed (clients reconnect by
    /// themselves, elsewhere, and resume with `since`); then the bus closed; all within the
    /// shutdown deadline.
    pub async fn serve_router(
        self,
        router: Router,
        listener: TcpListener,
        ops: Option<TcpListener>,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.hub.spawn_background(stop_rx);
        let hub = self.hub.clone();
        let stopping = CancellationToken::new();
        tokio::spawn({
            let (hub, stopping) = (hub.clone(), stopping.clone());
            async move {
                signal.await;
                tracing::info!("shutting down: draining connections");
                hub.start_draining();
                stopping.cancel();
            }
        });
        let ops_server = ops.map(|ops| {
            let stopped = stopping.clone();
            tokio::spawn(serve(
                ops,
                self.ops_router(),
                HEADER_READ_TIMEOUT,
                async move { stopped.cancelled().await },
            ))
        });
        let close_transports = {
            let (hub, stopping) = (hub.clone(), stopping.clone());
            async move {
                stopping.cancelled().await;
                // The listener is closed by now: a client that reconnects reaches another
                // instance. Closing the transports rather than sending a Socket.IO disconnect
                // makes socket.io-client reconnect by itself.
                if let Some(io) = hub.io() {
                    io.close().await;
                }
            }
        };
        let stopped = stopping.clone();
        let server = serve(listener, router, HEADER_READ_TIMEOUT, async move {
            stopped.cancelled().await;
        });
        let deadline = async {
            stopping.cancelled().await;
            tokio::time::sleep(hub.settings.shutdown_timeout).await;
        };
        tokio::select! {
            (result, ()) = futures::future::join(server, close_transports) => result?,
            () = deadline => tracing::warn!("shutdown deadline reached; dropping remaining connections"),
        }
        if let Some(ops_server) = ops_server {
            ops_server.abort();
        }
        let _ = stop_tx.send(true);
        hub.bus.close().await;
        Ok(())
    }
}

/// Why the gateway service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}; choose another port or stop what holds it")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The gateway service, bound and connected, not yet serving.
#[derive(Debug)]
pub struct Application {
    gateway: Gateway,
    listener: TcpListener,
    ops: Option<TcpListener>,
}

impl Application {
    /// Connects to NATS as a reader (retrying in the background while NATS is down: the service
    /// starts anyway, not ready) and binds its port(s).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let bus = NatsBus::connect_reader(&config.nats_url, SERVICE_NAME).await?;
        let client = bus.client().clone();
        let app = Self::with_bus(&config, Arc::new(bus)).await?;
        app.gateway.watch_nats(client);
        Ok(app)
    }

    /// Binds the configured port(s) and serves the gateway over `bus`.
    pub async fn with_bus(config: &Config, bus: Arc<dyn EventBus>) -> Result<Self, StartError> {
        let listener = bind(&config.bind, config.port).await?;
        let ops = match config.ops_port {
            Some(port) => Some(bind(&config.bind, port).await?),
            None => None,
        };
        Ok(Application {
            gateway: Gateway::new(config.gateway.clone(), bus),
            listener,
            ops,
        })
    }

    /// The port actually bound (useful when configured as 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// The ops port actually bound, when there is one.
    pub fn ops_port(&self) -> Option<u16> {
        self.ops
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// The gateway's parts.
    pub fn hub(&self) -> &Arc<Hub> {
        self.gateway.hub()
    }

    /// Serves until `shutdown` resolves, then drains within `SHUTDOWN_TIMEOUT_SECS`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Application {
            gateway,
            listener,
            ops,
        } = self;
        tracing::info!(addr = %listener.local_addr()?, ops = ?ops.as_ref().and_then(|o| o.local_addr().ok()), "gateway listening");
        let router = gateway.router_with(Router::new(), ops.is_some());
        gateway.serve_router(router, listener, ops, shutdown).await
    }
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, StartError> {
    TcpListener::bind((host, port))
        .await
        .map_err(|source| StartError::Bind {
            address: format!("{host}:{port}"),
            source,
        })
}

/// `/healthz` (the process answers) and `/readyz` (it can serve: the broker reachable, not
/// draining), on every port.
fn health(hub: &Arc<Hub>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(hub.clone())
}

/// A request that opens an engine.io session: `/socket.io/` without a `sid`.
fn opens_session(uri: &Uri) -> bool {
    uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|pair| pair.split('=').next() == Some("sid"))
}

/// Every new engine.io session counts against its address's allowance before it exists (see
/// [`crate::limits`]); a draining gateway opens none (503, so the client or the load balancer
/// tries another instance).
async fn admit_session(State(hub): State<Arc<Hub>>, mut request: Request, next: Next) -> Response {
    if !opens_session(request.uri()) {
        return next.run(request).await;
    }
    let refused = |status: StatusCode, message: &str| {
        (
            status,
            [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
            Json(json!({ "error": message })),
        )
            .into_response()
    };
    if hub.is_draining() {
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is shutting down; reconnect",
        );
    }
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), request.headers(), &hub.settings.trusted_proxies));
    if let Some(ip) = ip {
        match hub.limits.open_session(ip) {
            Ok(pending) => {
                request.extensions_mut().insert(pending);
            }
            Err(e) => {
                let kind = match e {
                    SessionRefused::AddressBusy => "ip_session",
                    SessionRefused::GatewayBusy => "pending_sessions",
                };
                hub.metrics
                    .rate_limited
                    .get_or_create(&crate::metrics::KindLabels { kind })
                    .inc();
                let status = match e {
                    SessionRefused::AddressBusy => StatusCode::TOO_MANY_REQUESTS,
                    SessionRefused::GatewayBusy => StatusCode::SERVICE_UNAVAILABLE,
                };
                return refused(status, &e.to_string());
            }
        }
    }
    next.run(request).await
}

/// Browsers send `Origin`; one not in `CLIENT_URL` is refused (WebSocket upgrades included,
/// which CORS alone does not stop). Clients that send no `Origin` are not browsers.
async fn refuse_foreign_origin(
    State(hub): State<Arc<Hub>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(origin) = request.headers().get(header::ORIGIN)
        && request.uri().path().starts_with("/socket.io")
    {
        let allowed = origin.to_str().is_ok_and(|o| {
            hub.settings
                .allowed_origins
                .iter()
                .any(|a| a == o.trim_end_matches('/'))
        });
        if !allowed {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": "origin not allowed; add it to CLIENT_URL" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// The request headers read after this point: engine.io's WebSocket handshake and polling
/// POSTs, and the handshake's per-IP limit. The origin check and CORS run before.
static KEPT_HEADERS: [header::HeaderName; 3] = [
    header::SEC_WEBSOCKET_KEY,
    header::CONTENT_TYPE,
    header::HeaderName::from_static("x-forwarded-for"),
];

/// socketioxide keeps each socket's request head (headers, URI) for the socket's lifetime.
/// hyper's header values and URI are slices of its connection read buffers, so keeping them
/// would pin those buffers (two 8 KiB allocations) for as long as the client stays connected.
/// The gateway hands on owned copies, and only of the headers read later: a browser's
/// cookies and user agent would otherwise stay in memory for every connection.
async fn detach_request_head(mut request: Request) -> Request {
    if !request.uri().path().starts_with("/socket.io") {
        return request;
    }
    let shared = std::mem::take(request.headers_mut());
    let kept = || {
        KEPT_HEADERS
            .iter()
            .flat_map(|name| shared.get_all(name).iter().map(move |value| (name, value)))
    };
    // Sized to fit: a map grown one header at a time reserves room for several.
    let mut owned = HeaderMap::with_capacity(kept().count());
    for (name, value) in kept() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            owned.append(name.clone(), copy);
        }
    }
    *request.headers_mut() = owned;
    // The router's copy of the original URI is a slice of the same buffer, and nothing past
    // this point reads it.
    request
        .extensions_mut()
        .remove::<axum::extract::OriginalUri>();
    if let Ok(uri) = Uri::try_from(request.uri().to_string()) {
        *request.uri_mut() = uri;
    }
    request
}

async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    if hub.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    ops::readiness(hub.bus.check_ready()).await
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    ops::open_metrics(hub.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::OriginalUri;
    use bytes::Bytes;

    /// Whether `part` lies inside `buffer`'s memory.
    fn within(buffer: &Bytes, part: &[u8]) -> bool {
        let range = buffer.as_ptr_range();
        range.contains(&part.as_ptr())
    }

    /// hyper hands over header values and the URI as slices of its read buffer; after the
    /// middleware nothing the socket keeps points into that buffer.
    #[tokio::test]
    async fn the_request_head_socketioxide_keeps_is_owned_and_trimmed() {
        let buffer = Bytes::from_static(
            b"/socket.io/?EIO=4&transport=websocket|http://localhost:5173|Bearer abc|10.0.0.7",
        );
        let bar: Vec<usize> = (0..buffer.len()).filter(|&i| buffer[i] == b'|').collect();
        let uri = Uri::from_maybe_shared(buffer.slice(..bar[0])).expect("uri");
        let origin =
            HeaderValue::from_maybe_shared(buffer.slice(bar[0] + 1..bar[1])).expect("origin");
        let auth = HeaderValue::from_maybe_shared(buffer.slice(bar[1] + 1..bar[2])).expect("auth");
        let forwarded =
            HeaderValue::from_maybe_shared(buffer.slice(bar[2] + 1..)).expect("forwarded");
        let mut request = Request::builder()
            .uri(uri.clone())
            .header(header::ORIGIN, origin)
            .header(header::AUTHORIZATION, auth)
            .header("x-forwarded-for", forwarded)
            .body(Body::empty())
            .expect("request");
        request.extensions_mut().insert(OriginalUri(uri));
        assert!(within(
            &buffer,
            request.headers()[header::ORIGIN].as_bytes()
        ));

        let request = detach_request_head(request).await;
        assert_eq!(request.uri(), "/socket.io/?EIO=4&transport=websocket");
        // Only the headers read after this point stay.
        assert_eq!(request.headers()["x-forwarded-for"], "10.0.0.7");
        assert_eq!(request.headers().len(), 1, "{:?}", request.headers());
        for value in request.headers().values() {
            assert!(
                !within(&buffer, value.as_bytes()),
                "{value:?} still in the buffer"
            );
        }
        let path = request.uri().path_and_query().expect("path").as_str();
        assert!(
            !within(&buffer, path.as_bytes()),
            "the URI is still in the buffer"
        );
        assert!(
            request.extensions().get::<OriginalUri>().is_none(),
            "the router's copy of the URI is dropped"
        );
    }
}
