//! `authenticate {token, userId}`: the first authentication of a socket that connected without
//! a token, or a renewal (after `auth_expired`, or before) that keeps the socket and its
//! subscriptions.

use std::sync::Arc;

use instantchat_event::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::identity;
use super::reply::{RequestError, claimed_user, error, refuse, reply};
use crate::auth::{self, AuthError};
use crate::hub::Hub;
use crate::session::{Client, Turn};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Authenticate {
    token: Option<Value>,
    user_id: Option<Value>,
}

pub(super) async fn on_authenticate(
    s: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(session) = turn.wait().await else {
        return error(&hub, &s, ack, RequestError::OverBudget);
    };
    let ack = Some(ack);
    let request: Authenticate = data
        .ok()
        .and_then(|d| serde_json::from_value(d).ok())
        .unwrap_or_default();
    let Some(Value::String(token)) = request.token else {
        return refuse(&hub, &s, ack, AuthError::Invalid);
    };
    let identity = match claimed_user(request.user_id.as_ref())
        .and_then(|claimed| auth::verify(&hub.settings, &token, claimed.as_deref()))
    {
        Ok(identity) => identity,
        Err(e) => return refuse(&hub, &s, ack, e),
    };
    let previous = session.lock().user_id().map(str::to_owned);
    let slot = match previous {
        Some(user) if user != identity.user_id => {
            return refuse(&hub, &s, ack, AuthError::UserMismatch);
        }
        // A renewal: the socket holds its slot already.
        Some(_) => None,
        None => match hub.limits.acquire_user(&identity.user_id) {
            Some(slot) => Some(slot),
            None => return refuse(&hub, &s, ack, AuthError::TooManyConnections),
        },
    };
    let user_id = identity.user_id.clone();
    let client = Client::new(s.clone(), session.clone());
    if !identity::accept(&hub, &client, identity, slot).await {
        return;
    }
    if let Some(ack) = ack {
        reply(
            &s,
            ack,
            "auth_success",
            json!({ "message": "Authentication successful", "userId": user_id, "timestamp": now_ms() }),
        );
    }
}
