//! `get_subscriptions` and `test_connection`: the socket's subscriptions, as `connection_info`.

use std::sync::Arc;

use instantchat_event::now_ms;
use serde_json::json;
use socketioxide::extract::{AckSender, SocketRef, State};

use super::reply::{RequestError, error, reply};
use crate::hub::Hub;
use crate::session::Turn;

pub(super) async fn on_connection_info(
    s: SocketRef,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(session) = turn.wait().await else {
        return error(&hub, &s, ack, RequestError::OverBudget);
    };
    let subscriptions: Vec<String> = session.lock().event_types().iter().cloned().collect();
    reply(
        &s,
        ack,
        "connection_info",
        json!({ "status": "connected", "subscriptions": subscriptions, "timestamp": now_ms() }),
    );
}
