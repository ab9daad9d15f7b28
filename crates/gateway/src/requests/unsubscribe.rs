//! `unsubscribe {eventTypes, userId?}`: removes event types; the socket keeps its place in the
//! stream for the types it keeps.

use std::sync::Arc;

use instantchat_event::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::reply::{RequestError, check_user, error, event_types, reply};
use crate::fanout::Need;
use crate::hub::Hub;
use crate::session::{Client, Turn};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    event_types: Option<Value>,
    user_id: Option<Value>,
}

pub(super) async fn on_unsubscribe(
    s: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(session) = turn.wait().await else {
        return error(&hub, &s, ack, RequestError::OverBudget);
    };
    let Some(identity) = session.lock().identity().cloned() else {
        return error(&hub, &s, ack, RequestError::NotAuthenticated);
    };
    let raw: Raw = data
        .ok()
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
    let types = match event_types(raw.event_types.as_ref())
        .and_then(|t| check_user(raw.user_id.as_ref(), &identity).map(|()| t))
    {
        Ok(t) => t,
        Err(e) => return error(&hub, &s, ack, e),
    };
    let client = Client::new(s.clone(), session.clone());
    let mut remaining = Vec::new();
    let placed = hub
        .fanout
        .place(&client, Need::Nothing, |state, _| {
            state.unsubscribe(&types);
            remaining = state.event_types().iter().cloned().collect();
            state.scope()
        })
        .await;
    if let Err(e) = placed {
        return error(&hub, &s, ack, RequestError::Unavailable(e.to_string()));
    }
    let epoch = hub.fanout.epoch().map(|e| e.to_string());
    reply(
        &s,
        ack,
        "subscription_confirmed",
        json!({ "eventTypes": remaining, "epoch": epoch, "timestamp": now_ms() }),
    );
}
