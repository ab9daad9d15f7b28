//! The Socket.IO protocol of the gateway (docs/protocol.md): the handshake and one module per
//! client event, each a typed request checked before anything changes, answered from one
//! error enum ([`reply::RequestError`]).
//!
//! | client event | module | replies |
//! | --- | --- | --- |
//! | connect (`auth`) | [`handshake`] | `connect` or `connect_error` |
//! | `authenticate` | [`authenticate`] | `auth_success`, `auth_failed` |
//! | `subscribe` | [`subscribe`] | `subscription_confirmed`, then `replay_complete` for a resume |
//! | `unsubscribe` | [`unsubscribe`] | `subscription_confirmed` |
//! | `get_subscriptions`, `test_connection` | [`info`] | `connection_info` |
//! | `heartbeat` | [`heartbeat`] | `heartbeat_response` |
//!
//! Every refused request gets `error` (to the event and to its ack).

pub mod authenticate;
pub mod handshake;
pub mod heartbeat;
pub mod identity;
pub mod info;
pub mod reply;
pub mod subscribe;
pub mod unsubscribe;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::handler::ConnectHandler;

/// Installs the handlers of namespace `/`.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(handshake::handshake));
}

/// Everything happens in the handshake middleware; see there why.
async fn on_connect() {}

/// Installs the handlers of one socket's events (from the handshake, before its connect is
/// answered, so none of the client's first events is missed).
fn on_events(s: &SocketRef) {
    s.on("authenticate", authenticate::on_authenticate);
    s.on("subscribe", subscribe::on_subscribe);
    s.on("unsubscribe", unsubscribe::on_unsubscribe);
    s.on("get_subscriptions", info::on_connection_info);
    s.on("test_connection", info::on_connection_info);
    s.on("heartbeat", heartbeat::on_heartbeat);
    s.on_disconnect(handshake::on_disconnect);
}
