//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engineioxide_core::PacketBuf;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // The upgrade and the handshake run in their own boxed future, which is freed once the
    // connection is up: the task that then lives as long as the connection only holds what its
    // read loop needs, not the request or the handshake's state.
    let setup_engine = engine.clone();
    let setup = Box::pin(async move {
        let conn = hyper::upgrade::on(req)
            .await
            .map(hyper_util::rt::TokioIo::new);
        match conn {
            Ok(conn) => Some(setup(setup_engine, conn, protocol, sid, parts).await),
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                None
            }
        }
    });

    tokio::spawn(async move {
        let res = match setup.await {
            Some(Ok((socket, ws, heartbeat))) => {
                run(&engine, socket, ws, heartbeat).await;
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => return,
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, ws, heartbeat) =
        Box::pin(setup(engine.clone(), conn, protocol, sid, req_data)).await?;
    run(&engine, socket, ws, heartbeat).await;
    Ok(())
}

/// The WebSocket handshake (or the upgrade from polling): the socket and its WebSocket, ready
/// for [`run`], and whether `run` sends the heartbeat.
async fn setup<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(Arc<Socket<H::Data>>, WebSocketStream<S>, bool), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws, heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // Its heartbeat task has run since it started on polling; with v4 the loop
                // takes over, and the task ends at once.
                let in_loop = socket.protocol == ProtocolVersion::V4;
                if in_loop {
                    socket.hand_over_heartbeat();
                }
                (socket, ws, in_loop)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        // With v4 the connection loop sends the pings; a v3 client sends them itself.
        let in_loop = socket.protocol == ProtocolVersion::V4;
        if !in_loop {
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
        }
        (socket, ws, in_loop)
    };
    Ok((socket, ws, heartbeat))
}

/// The most a connection's WebSocket write buffer may hold. Without a maximum, a peer that
/// sends but never reads grows it without end (every WebSocket ping it sends queues a pong).
/// When a message would not fit, the connection is closed (the client reconnects and resumes);
/// a pong that does not fit replaces the one still waiting. It holds the largest event the
/// broker carries (1 MiB by default) several times over.
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// WebSocket pings a client may send per `ping_interval` (engine.io clients send none; their
/// heartbeat is the engine.io pong). More is a flood, and the connection is closed.
const MAX_WS_PINGS_PER_INTERVAL: u32 = 64;

/// Pings are sent on this grid: the connections whose pings fall in the same quarter of a
/// second are woken together, so a server full of idle connections wakes a few times a second
/// instead of once per ping. A ping is at most this much later than `ping_interval`.
const PING_GRID: Duration = Duration::from_millis(250);

/// The first point of the ping grid at or after `at`.
fn on_ping_grid(at: tokio::time::Instant) -> tokio::time::Instant {
    static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
    let step = PING_GRID.as_nanos();
    let steps = at.saturating_duration_since(origin).as_nanos().div_ceil(step);
    origin + Duration::from_nanos(u64::try_from(steps * step).unwrap_or(u64::MAX))
}

/// How the connection loop ended.
enum End {
    /// The session was closed (by the server, the heartbeat, or the handler).
    Cancelled,
    /// The client closed the WebSocket or sent a close packet.
    ClientClosed,
    /// A read or parse error.
    Failed(Error),
    /// The client broke a limit of the connection (a write that cannot be buffered, a write
    /// that stalls past `ping_timeout`, a flood of WebSocket pings).
    Refused(&'static str),
}

/// Serves the connection until it closes or the session does: one task reads the WebSocket,
/// writes the packets queued for the client, and (for a socket that started on WebSocket with
/// the v4 protocol) sends the heartbeat pings. One task instead of a reader, a writer and a
/// heartbeat task each is most of what a connection costs when it is idle.
async fn run<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    mut ws: WebSocketStream<S>,
    heartbeat: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A polling request that was in progress during the upgrade may still hold the lock.
    let lock = socket.internal_rx.lock();
    let Some(mut internal_rx) = Box::pin(lock.with_cancellation_token(&socket.cancellation_token))
        .await
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before starting the ws loop");
        return;
    };
    let InternalRx { buffered_rx, .. } = &mut *internal_rx;

    // Made once: made in the loop, they would register and unregister again on every turn.
    let cancelled = socket.cancellation_token.cancelled();
    tokio::pin!(cancelled);
    let volatile = socket.volatile.ready();
    tokio::pin!(volatile);

    // The heartbeat: a ping every `ping_interval`; a pong must come within `ping_timeout`.
    let (interval, timeout) = (engine.config.ping_interval, engine.config.ping_timeout);
    let heartbeat_at = tokio::time::sleep_until(on_ping_grid(tokio::time::Instant::now() + interval));
    tokio::pin!(heartbeat_at);
    let mut pinged_at: Option<tokio::time::Instant> = None;
    // WebSocket pings the client sent since the window began, a window being `ping_interval`.
    let (mut ws_pings, mut ws_ping_window) = (0u32, tokio::time::Instant::now());

    let end = loop {
        // What to write this turn, if anything: the next queued packets or a volatile one.
        let batch: Box<PacketBuf> = tokio::select! {
            biased;
            items = buffered_rx.recv() => match items {
                Some(packets) => packets,
                None => break End::Cancelled,
            },
            () = &mut cancelled => break End::Cancelled,
            msg = ws.next() => {
                let packet = match read_packet(&socket, msg) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => break End::ClientClosed,
                    Err(e) => break End::Failed(e),
                };
                match packet {
                    Incoming::Message(msg) => engine.handler.on_message(msg, socket.clone()),
                    Incoming::Binary(data) => engine.handler.on_binary(data, socket.clone()),
                    Incoming::Heartbeat => {
                        if heartbeat {
                            if let Some(at) = pinged_at.take() {
                                heartbeat_at.as_mut().reset(on_ping_grid(at + interval));
                            }
                        }
                        // The heartbeat task too, if there is one: a v3 socket keeps it
                        // (there the client pings); a v4 socket's ended at the upgrade.
                        socket.heartbeat_received();
                    }
                    Incoming::Close => break End::ClientClosed,
                    Incoming::WsPing => {
                        let now = tokio::time::Instant::now();
                        if now.duration_since(ws_ping_window) >= interval {
                            (ws_pings, ws_ping_window) = (0, now);
                        }
                        ws_pings += 1;
                        if ws_pings > MAX_WS_PINGS_PER_INTERVAL {
                            break End::Refused("websocket ping flood");
                        }
                    }
                    Incoming::Other => {}
                }
                continue;
            }
            () = &mut heartbeat_at, if heartbeat => {
                if pinged_at.is_some() {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(sid = %socket.id, "heartbeat timeout");
                    socket.close(DisconnectReason::HeartbeatTimeout);
                    // The close packet is written on the next turn, then the loop stops.
                    heartbeat_at.as_mut().reset(tokio::time::Instant::now() + interval + timeout);
                    continue;
                }
                #[cfg(feature = "tracing")]
                tracing::trace!(sid = ?socket.id, "emitting ping");
                let now = tokio::time::Instant::now();
                pinged_at = Some(now);
                heartbeat_at.as_mut().reset(now + timeout);
                Box::new(smallvec![Packet::Ping])
            }
            () = &mut volatile => {
                volatile.set(socket.volatile.ready());
                match socket.volatile.take() {
                    Some(packets) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(sid = ?socket.id, "ws volatile flush: {} packets", packets.len());
                        packets
                    }
                    // Taken already, on the turn of an earlier send.
                    None => continue,
                }
            },
        };
        // Everything queued goes out in one flush. A peer that does not read cannot hold the
        // loop past the session's end, nor past `ping_timeout`: while the loop waits here it
        // neither reads nor pings, so the write has a deadline of its own.
        let wrote = async {
            let mut next = Some(batch);
            while let Some(packets) = next {
                write_packets(&socket, &mut ws, packets).await?;
                next = buffered_rx.try_recv().ok();
            }
            #[cfg(feature = "tracing")]
            tracing::trace!(sid = %socket.id, "ws flush");
            ws.flush().await.ok();
            Ok::<(), &'static str>(())
        };
        tokio::select! {
            biased;
            written = wrote => if let Err(why) = written {
                break End::Refused(why);
            },
            () = &mut cancelled => break End::Cancelled,
            () = tokio::time::sleep(timeout) => break End::Refused("write stalled past ping_timeout"),
        }
    };
    // The session's closing waits for this lock.
    drop(internal_rx);

    match end {
        End::Failed(ref e) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        End::Refused(_why) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, why = _why, "closing the connection");
            engine.close_session(socket.id, DisconnectReason::TransportError);
        }
        End::ClientClosed => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        End::Cancelled => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }

    #[cfg(feature = "tracing")]
    tracing::trace!(sid = %socket.id, "ws closing flush");
    // Bounded: a peer that stopped reading must not keep the connection open.
    // Boxed, like every state the loop passes through only once, to keep the connection's
    // task small for as long as it lives.
    let closing = async {
        ws.flush().await.ok();
        ws.close(None).await.ok();
    };
    Box::pin(tokio::time::timeout(timeout, closing)).await.ok();
}

/// A packet read from the WebSocket, as the connection loop acts on it.
enum Incoming {
    Message(Str),
    Binary(bytes::Bytes),
    /// A pong (v4) or a ping (v3).
    Heartbeat,
    /// A WebSocket ping frame (tungstenite has queued its pong).
    WsPing,
    Close,
    Other,
}

/// Reads one WebSocket message; `Ok(None)` when the WebSocket is closed.
fn read_packet<D: Default + Send + Sync + 'static>(
    socket: &Socket<D>,
    msg: Option<Result<Message, tungstenite::Error>>,
) -> Result<Option<Incoming>, Error> {
    let Some(msg) = msg.transpose()? else {
        return Ok(None);
    };
    let incoming = match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                Incoming::Close
            }
            Packet::Pong | Packet::Ping => Incoming::Heartbeat,
            Packet::Message(msg) => Incoming::Message(msg),
            p => return Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            Incoming::Binary(data)
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            Incoming::Close
        }
        Message::Ping(_) => Incoming::WsPing,
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Incoming::Other
        }
    };
    Ok(Some(incoming))
}

/// Feeds packets to the WebSocket, without flushing. A packet that cannot be written (the
/// write buffer is at its maximum, or the connection broke) is an error: dropping it quietly
/// would lose it for a client that stays connected.
///
/// The connection loop holds this future, so its size is part of every connection's task:
/// the packets stay boxed and are drained, and each is turned into its WebSocket message
/// before the await, so only the message waits in the future.
async fn write_packets<D: Default + Send + Sync + 'static, S>(
    socket: &Socket<D>,
    ws: &mut WebSocketStream<S>,
    mut packets: Box<PacketBuf>,
) -> Result<(), &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for item in packets.drain(..) {
        let Some(msg) = ws_message(socket.protocol, item) else {
            continue;
        };
        if let Err(_e) = ws.feed(msg).await {
            #[cfg(feature = "tracing")]
            tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
            return Err("a packet could not be written");
        }
    }
    Ok(())
}

/// The WebSocket message of a packet; none for a Noop.
fn ws_message(protocol: ProtocolVersion, item: Packet) -> Option<Message> {
    Some(match item {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Message::Binary(buff.into())
            } else {
                Message::Binary(bin)
            }
        }
        // A Noop Packet maybe sent by the server to upgrade from a polling connection
        // In the case that the packet was not poll in time it will remain in the buffer and therefore
        // it should be discarded here
        Packet::Noop => return None,
        item => {
            let packet: String = item.try_into().unwrap();
            Message::Text(packet.into())
        }
    })
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(Box::new(smallvec![Packet::Noop]))
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let (tx, _rx) = server.split();

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), tx));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;
        let (tx, _rx) = server.split();

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(socket.clone(), tx));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }
}
