//! The HTTP side: Socket.IO on `/socket.io`, health, readiness, metrics, the operator's view,
//! CORS; start and stop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use instantchat_broker::EventBus;
use instantchat_service::serve::{HEADER_READ_TIMEOUT, serve};
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::layer::SocketIoLayer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::admin::{self, AdminState};
use crate::config::GatewaySettings;
use crate::handlers;
use crate::hub::Hub;

/// How much a WebSocket read takes at a time (engineioxide's default is 4 KiB). Every
/// connection holds this much while idle. Client messages are small (a pong is 7 bytes, a
/// `subscribe` about 100); a larger one is read in several chunks.
const WS_READ_CHUNK: usize = 512;

/// A readiness probe must answer quickly even when the broker hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// A gateway ready to serve: its routes and the background tasks that feed it.
pub struct Gateway {
    pub hub: Arc<Hub>,
    layer: SocketIoLayer,
    router: Router,
    started: Instant,
    started_at: SystemTime,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the Socket.IO server and HTTP routes over `bus`.
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
            // Clients send small requests; the buffer grows for a larger one, and a smaller
            // chunk keeps idle connections lean.
            .ws_read_buffer_size(WS_READ_CHUNK)
            .build_layer();
        handlers::register(&io);
        hub.set_io(io);
        let gateway = Gateway {
            hub,
            layer,
            router: Router::new(),
            started: Instant::now(),
            started_at: SystemTime::now(),
        };
        let router = gateway.router_with(Router::new());
        Gateway { router, ..gateway }
    }

    /// The routes, to serve alone.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Reports `client`'s connection state on `/metrics` (`instantchat_gateway_nats_connected`).
    pub fn watch_nats(&self, client: async_nats::Client) {
        self.hub.metrics.watch_nats(client);
    }

    /// Adds metrics to this gateway's `/metrics` (the single-process mode adds ingest's).
    pub fn register_metrics(&self, add: impl FnOnce(&mut prometheus_client::registry::Registry)) {
        self.hub.metrics.register(add);
    }

    /// The gateway's routes merged with `extra` (the single-process mode adds the webhook route),
    /// behind the Socket.IO layer, the origin check and CORS.
    pub fn router_with(&self, extra: Router) -> Router {
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
        let mut routes = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(hub.clone());
        // The operator's view exists only with a token.
        if let Some(token) = &hub.settings.admin_token {
            let state = AdminState::new(hub.clone(), token, self.started, self.started_at);
            routes = routes.merge(
                Router::new()
                    .route("/admin/connections", get(admin::connections))
                    .with_state(state),
            );
        }
        routes
            .merge(extra)
            .layer(self.layer.clone())
            .layer(middleware::map_request(detach_request_head))
            .layer(middleware::from_fn_with_state(
                hub.clone(),
                refuse_foreign_origin,
            ))
            .layer(cors)
    }

    /// Starts the fan-out, token-expiry and heartbeat tasks; they stop when `shutdown` turns true.
    pub fn spawn_background(&self, shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.hub.clone().run_fanout(shutdown.clone()));
        tokio::spawn(crate::expiry::run(self.hub.clone(), shutdown.clone()));
        tokio::spawn(handlers::heartbeat_monitor(self.hub.clone(), shutdown));
    }

    /// Serves on `listener` until `signal` resolves, then drains: not ready, no new sockets,
    /// every transport closed (so clients reconnect, to another instance), bus closed, all
    /// within the shutdown deadline.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router.clone();
        self.serve_router(router, listener, signal).await
    }

    /// Like [`serve`](Self::serve), with a router built by [`router_with`](Self::router_with).
    pub async fn serve_router(
        self,
        router: Router,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        self.spawn_background(stop_rx);
        let hub = self.hub.clone();
        // Sent when the drain starts: the one deadline for everything after it.
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
        let drain = {
            let hub = hub.clone();
            async move {
                signal.await;
                let deadline = tokio::time::Instant::now() + hub.settings.shutdown_timeout;
                let _ = deadline_tx.send(deadline);
                tracing::info!("shutting down: draining connections");
                hub.start_draining();
                if let Some(io) = hub.io() {
                    // Close every transport rather than send a Socket.IO disconnect: clients
                    // see "transport close" and reconnect by themselves (through the load
                    // balancer, to another instance), where a server disconnect would leave
                    // socket.io-client waiting for the app to call connect().
                    if tokio::time::timeout_at(deadline, io.close()).await.is_err() {
                        tracing::warn!("transports still open at the shutdown deadline");
                    }
                }
            }
        };
        let server = serve(listener, router, HEADER_READ_TIMEOUT, drain);
        tokio::select! {
            result = server => result?,
            () = async {
                match deadline_rx.await {
                    Ok(deadline) => tokio::time::sleep_until(deadline).await,
                    // The server stopped without a signal: nothing to wait for here.
                    Err(_) => std::future::pending().await,
                }
            } => tracing::warn!("shutdown deadline reached; dropping remaining connections"),
        }
        let _ = stop_tx.send(true);
        hub.bus.close().await;
        Ok(())
    }
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
    match tokio::time::timeout(READY_TIMEOUT, hub.bus.check_ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the broker did not answer within {READY_TIMEOUT:?}"),
        )
            .into_response(),
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics.render(),
    )
        .into_response()
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
