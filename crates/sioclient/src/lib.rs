//! A minimal Socket.IO v4 client over WebSocket (engine.io v4), for tests and load generation.
//!
//! It speaks just what the gateway needs: namespace `/`, text packets, JSON payloads.
//!
//! - [`SioClient::connect`] opens `ws://host:port/socket.io/?EIO=4&transport=websocket`, reads the
//!   engine.io open packet (`0{...}`), connects namespace `/` with `40` or `40{auth}` and waits
//!   for `40{"sid":..}`; a `44{"message":..}` (connect_error, e.g. a refused token) is returned
//!   as [`SioError::Refused`] with its message.
//! - One task per client owns the socket: it answers engine.io pings (`2` -> `3`), writes what the
//!   handle sends (`42["name",data]`, `42<id>["name",data]`), routes acks (`43<id>[data]`) to
//!   their waiter and queues every event (`42["name",data]`) for the handle.
//! - A disconnect (`41`, engine.io close `1`, WebSocket close or error) ends the task;
//!   waiting calls then return [`SioError::Disconnected`] with the reason.
//!
//! Not supported: other namespaces, binary packets (`45`/`46`), acks the server asks for,
//! long-polling, TLS (`wss://`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), instantchat_sioclient::SioError> {
//! use std::time::Duration;
//! use instantchat_sioclient::SioClient;
//! use serde_json::json;
//!
//! let auth = json!({"token": "..."});
//! let mut client = SioClient::connect("http://127.0.0.1:3000", Some(&auth)).await?;
//! let t = Duration::from_secs(5);
//! let request = json!({"eventTypes": ["comments"]});
//! let _confirmed = client.emit_with_ack("subscribe", &request, t).await?;
//! let _event = client.wait_for_event("webhook_event", t, |e| e["accountId"] == "acct_1").await?;
//! client.disconnect().await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long [`SioClient::connect`] may take, WebSocket upgrade and namespace connect together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What can go wrong with a Socket.IO client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    /// The WebSocket could not be opened or broke during the handshake.
    #[error("WebSocket transport: {0}")]
    Transport(String),
    /// The server sent something this client does not understand where it expected the handshake.
    #[error("unexpected packet from the server: {0}")]
    Protocol(String),
    /// The server refused the namespace connection (`connect_error`); holds its `message`.
    #[error("connection refused (connect_error): {0}")]
    Refused(String),
    /// Nothing suitable arrived in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// The connection is gone; holds why.
    #[error("disconnected: {0}")]
    Disconnected(String),
}

/// From the handle to the socket task.
enum Command {
    /// A text packet to send; with an ack id and the waiter of its reply.
    Send(String, Option<(u64, oneshot::Sender<Value>)>),
    /// Send `41` and close.
    Close,
}

/// From the socket task to the handle.
enum Incoming {
    Event(String, Value),
    Closed(String),
}

/// One engine.io text packet, parsed.
#[derive(Debug, PartialEq)]
enum Packet {
    Ping,
    Event(String, Value),
    Ack(u64, Value),
    /// The server ends the session; holds why.
    Close(String),
    /// Noops, other namespaces, packets this client does not use.
    Ignored,
}

/// A connected Socket.IO client on namespace `/`. Dropping it disconnects.
pub struct SioClient {
    sid: String,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Incoming>,
    /// Events received but passed over by [`wait_for_event`](Self::wait_for_event), oldest first;
    /// [`next_event`](Self::next_event) returns them before newer ones, so nothing is lost.
    pending: VecDeque<(String, Value)>,
    /// Set once the task reported the end of the connection.
    closed: Option<String>,
    next_ack: AtomicU64,
    task: JoinHandle<()>,
}

impl fmt::Debug for SioClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SioClient")
            .field("sid", &self.sid)
            .field("pending", &self.pending.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SioClient {
    /// Connects to the server at `base` (`http://host:port` or `ws://host:port`) with an optional
    /// handshake `auth` object (socket.io-client's `auth` option).
    pub async fn connect(base: &str, auth: Option<&Value>) -> Result<Self, SioError> {
        let url = endpoint(base);
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| SioError::Transport(format!("{url}: {e}")))?;
        Self::connect_request(request, auth).await
    }

    /// Like [`connect`](Self::connect) with a prepared upgrade request (full Socket.IO URL), e.g.
    /// to add an `Origin` header.
    pub async fn connect_request(request: Request, auth: Option<&Value>) -> Result<Self, SioError> {
        tokio::time::timeout(CONNECT_TIMEOUT, handshake(request, auth))
            .await
            .map_err(|_| SioError::Timeout(CONNECT_TIMEOUT, "the Socket.IO handshake".into()))?
            .map(|(ws, sid)| {
                let (commands, commands_rx) = mpsc::unbounded_channel();
                let (events_tx, events) = mpsc::unbounded_channel();
                SioClient {
                    sid,
                    commands,
                    events,
                    pending: VecDeque::new(),
                    closed: None,
                    next_ack: AtomicU64::new(0),
                    task: tokio::spawn(run(ws, commands_rx, events_tx)),
                }
            })
    }

    /// The Socket.IO session id the server gave this socket.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// False once the connection has ended, for whatever reason.
    pub fn is_connected(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Emits `42["name",data]` without waiting for anything.
    pub fn emit(&self, name: &str, data: &Value) -> Result<(), SioError> {
        self.send(event_packet(name, None, data), None)
    }

    /// Emits `42<id>["name",data]` and returns the first argument of the ack `43<id>[...]`.
    pub async fn emit_with_ack(
        &self,
        name: &str,
        data: &Value,
        timeout: Duration,
    ) -> Result<Value, SioError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.send(event_packet(name, Some(id), data), Some((id, tx)))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(SioError::Disconnected(format!(
                "the connection ended before the ack of `{name}`"
            ))),
            Err(_) => Err(SioError::Timeout(timeout, format!("the ack of `{name}`"))),
        }
    }

    /// The oldest event not yet returned, as `(name, first argument)`, waiting up to `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<(String, Value), SioError> {
        if let Some(event) = self.pending.pop_front() {
            return Ok(event);
        }
        self.recv_until(Instant::now() + timeout, timeout, "the next event")
            .await
    }

    /// The first event called `name` whose payload satisfies `pred`, waiting up to `timeout`.
    /// Other events received meanwhile stay queued for [`next_event`](Self::next_event).
    pub async fn wait_for_event(
        &mut self,
        name: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, SioError> {
        if let Some(i) = self
            .pending
            .iter()
            .position(|(n, data)| n == name && pred(data))
        {
            return Ok(self
                .pending
                .remove(i)
                .map(|(_, data)| data)
                .unwrap_or_default());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let (n, data) = self
                .recv_until(deadline, timeout, &format!("event `{name}`"))
                .await?;
            if n == name && pred(&data) {
                return Ok(data);
            }
            self.pending.push_back((n, data));
        }
    }

    /// Every event received so far and not yet returned, without waiting.
    pub fn drain_events(&mut self) -> Vec<(String, Value)> {
        while let Ok(incoming) = self.events.try_recv() {
            match incoming {
                Incoming::Event(name, data) => self.pending.push_back((name, data)),
                Incoming::Closed(reason) => self.closed = Some(reason),
            }
        }
        self.pending.drain(..).collect()
    }

    /// Waits until the server ends the connection and returns why; events received meanwhile
    /// stay queued.
    pub async fn wait_disconnect(&mut self, timeout: Duration) -> Result<String, SioError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline, timeout, "the disconnect").await {
                Ok(event) => self.pending.push_back(event),
                Err(SioError::Disconnected(reason)) => return Ok(reason),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `41`, closes the WebSocket and waits (briefly) for the socket task to end.
    pub async fn disconnect(self) {
        let _ = self.commands.send(Command::Close);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }

    fn send(
        &self,
        text: String,
        ack: Option<(u64, oneshot::Sender<Value>)>,
    ) -> Result<(), SioError> {
        self.commands
            .send(Command::Send(text, ack))
            .map_err(|_| SioError::Disconnected(self.closed_reason()))
    }

    fn closed_reason(&self) -> String {
        self.closed
            .clone()
            .unwrap_or_else(|| "the connection has ended".into())
    }

    async fn recv_until(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        what: &str,
    ) -> Result<(String, Value), SioError> {
        if self.closed.is_some() {
            return Err(SioError::Disconnected(self.closed_reason()));
        }
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => Err(SioError::Timeout(timeout, what.to_owned())),
            Ok(Some(Incoming::Event(name, data))) => Ok((name, data)),
            Ok(Some(Incoming::Closed(reason))) => {
                self.closed = Some(reason.clone());
                Err(SioError::Disconnected(reason))
            }
            Ok(None) => {
                self.closed = Some("the socket task ended".into());
                Err(SioError::Disconnected(self.closed_reason()))
            }
        }
    }
}

/// `ws://host:port/socket.io/?EIO=4&transport=websocket` from `http://host:port` or `ws://...`.
fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = match base.split_once("://") {
        Some(("http", rest)) => format!("ws://{rest}"),
        Some(("https", rest)) => format!("wss://{rest}"),
        Some(_) => base.to_owned(),
        None => format!("ws://{base}"),
    };
    format!("{base}/socket.io/?EIO=4&transport=websocket")
}

/// `42["name",data]`, or `42<id>["name",data]` when an ack is wanted.
fn event_packet(name: &str, ack: Option<u64>, data: &Value) -> String {
    let args = serde_json::to_string(&(name, data)).unwrap_or_else(|_| "[]".into());
    match ack {
        Some(id) => format!("42{id}{args}"),
        None => format!("42{args}"),
    }
}

/// Opens the WebSocket, reads the open packet and connects namespace `/`; returns the sid.
async fn handshake(request: Request, auth: Option<&Value>) -> Result<(Ws, String), SioError> {
    let (mut ws, _) = connect_async(request)
        .await
        .map_err(|e| SioError::Transport(e.to_string()))?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(SioError::Protocol(format!(
            "expected the engine.io open packet, got {open}"
        )));
    }
    let connect = match auth {
        Some(auth) => format!("40{auth}"),
        None => "40".to_owned(),
    };
    ws.send(Message::text(connect))
        .await
        .map_err(|e| SioError::Transport(e.to_string()))?;
    loop {
        let text = next_text(&mut ws).await?;
        if text == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| SioError::Transport(e.to_string()))?;
        } else if let Some(body) = text.strip_prefix("40") {
            let sid = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("sid").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| SioError::Protocol(format!("connect without sid: {text}")))?;
            return Ok((ws, sid));
        } else if let Some(body) = text.strip_prefix("44") {
            let message = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| body.to_owned());
            return Err(SioError::Refused(message));
        } else if !text.starts_with('6') {
            return Err(SioError::Protocol(format!(
                "expected the namespace connect reply, got {text}"
            )));
        }
    }
}

/// The next text frame of the handshake.
async fn next_text(ws: &mut Ws) -> Result<String, SioError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                return Err(SioError::Transport(format!(
                    "closed during the handshake: {frame:?}"
                )));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(SioError::Transport(e.to_string())),
            None => return Err(SioError::Transport("closed during the handshake".into())),
        }
    }
}

/// The socket task: writes what the handle sends, answers pings, routes acks and events.
async fn run(
    mut ws: Ws,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Incoming>,
) {
    let mut acks: HashMap<u64, oneshot::Sender<Value>> = HashMap::new();
    let reason = loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send(text, ack)) => {
                    if let Some((id, waiter)) = ack {
                        acks.insert(id, waiter);
                    }
                    if let Err(e) = ws.send(Message::text(text)).await {
                        break format!("send failed: {e}");
                    }
                }
                Some(Command::Close) | None => {
                    let _ = ws.send(Message::text("41")).await;
                    let _ = ws.close(None).await;
                    break "closed by the client".to_owned();
                }
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => match parse_packet(text.as_str()) {
                    Packet::Ping => {
                        if let Err(e) = ws.send(Message::text("3")).await {
                            break format!("pong failed: {e}");
                        }
                    }
                    Packet::Event(name, data) => {
                        let _ = events.send(Incoming::Event(name, data));
                    }
                    Packet::Ack(id, data) => {
                        if let Some(waiter) = acks.remove(&id) {
                            let _ = waiter.send(data);
                        }
                    }
                    Packet::Close(reason) => break reason,
                    Packet::Ignored => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    break format!("WebSocket closed by the server: {frame:?}");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("WebSocket error: {e}"),
                None => break "WebSocket closed".to_owned(),
            },
        }
    };
    let _ = events.send(Incoming::Closed(reason));
}

/// Parses one engine.io text packet and, for `4`, the Socket.IO packet inside.
fn parse_packet(text: &str) -> Packet {
    match text.as_bytes().first() {
        Some(b'2') => return Packet::Ping,
        Some(b'1') => return Packet::Close("engine.io close from the server".into()),
        Some(b'4') => {}
        _ => return Packet::Ignored,
    }
    let sio = &text[1..];
    let Some(kind) = sio.as_bytes().first() else {
        return Packet::Ignored;
    };
    let Some(mut rest) = sio.get(1..) else {
        return Packet::Ignored;
    };
    if rest.starts_with('/') {
        // `<type>/nsp,...`: not the main namespace.
        return Packet::Ignored;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse::<u64>().ok();
    rest = &rest[digits..];
    match kind {
        b'1' => Packet::Close("disconnected by the server".into()),
        b'4' => Packet::Close(format!("connect_error: {rest}")),
        b'2' => match serde_json::from_str::<Vec<Value>>(rest) {
            Ok(args) => {
                let mut args = args.into_iter();
                match args.next() {
                    Some(Value::String(name)) => {
                        Packet::Event(name, args.next().unwrap_or(Value::Null))
                    }
                    _ => Packet::Ignored,
                }
            }
            Err(_) => Packet::Ignored,
        },
        b'3' => match (id, serde_json::from_str::<Vec<Value>>(rest)) {
            (Some(id), Ok(args)) => Packet::Ack(id, args.into_iter().next().unwrap_or(Value::Null)),
            _ => Packet::Ignored,
        },
        _ => Packet::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packets_are_written_as_socket_io_v4() {
        assert_eq!(
            event_packet("hi", None, &json!({"a": 1})),
            r#"42["hi",{"a":1}]"#
        );
        assert_eq!(event_packet("hi", Some(7), &json!([1])), r#"427["hi",[1]]"#);
        assert_eq!(
            endpoint("http://127.0.0.1:3000/"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
    }

    #[test]
    fn packets_are_read_as_socket_io_v4() {
        assert_eq!(parse_packet("2"), Packet::Ping);
        assert_eq!(
            parse_packet(r#"42["webhook_event",{"seq":3}]"#),
            Packet::Event("webhook_event".into(), json!({"seq": 3}))
        );
        assert_eq!(
            parse_packet(r#"42["bare"]"#),
            Packet::Event("bare".into(), Value::Null)
        );
        assert_eq!(
            parse_packet(r#"4312[{"ok":true}]"#),
            Packet::Ack(12, json!({"ok": true}))
        );
        assert!(matches!(parse_packet("41"), Packet::Close(_)));
        assert!(matches!(parse_packet("1"), Packet::Close(_)));
        assert_eq!(parse_packet(r#"42/admin,["x",1]"#), Packet::Ignored);
        assert_eq!(parse_packet("6"), Packet::Ignored);
    }
}
