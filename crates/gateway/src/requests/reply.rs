//! Every answer a client request can get: the one error enum, the replies, and the pieces of
//! a request that several events share (`userId`, account ids).

use instantchat_event::{is_valid_account_id, now_ms, quote_short};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef};

use crate::auth::{AuthError, Identity};
use crate::hub::Hub;
use crate::metrics::{KindLabels, ReasonLabels};

/// Most event types one socket may subscribe to, in one `subscribe` or in all of them.
pub const MAX_EVENT_TYPES: usize = 32;
/// Most account ids one `subscribe` may name.
pub const MAX_ACCOUNT_IDS: usize = 1000;

/// Why a request was refused: the `message` of the `error` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Not authenticated")]
    NotAuthenticated,
    #[error("Too many requests; slow down")]
    OverBudget,
    #[error("{0} needs an object payload: {{eventTypes, userId, timestamp}}")]
    NotAnObject(&'static str),
    #[error("eventTypes must be a non-empty array of at most 32 names matching [a-z_]{{1,64}}")]
    EventTypes,
    #[error("At most 32 event types per socket; unsubscribe from some first")]
    TooManyEventTypes,
    #[error("userId does not match the authenticated user")]
    UserMismatch,
    #[error("accountIds must be an array of account id strings")]
    AccountIdsNotIds,
    #[error("accountIds must be an array of at most 1000 account ids")]
    AccountIdsTooMany,
    /// Quoted and cut short: a client's value is named, not echoed whole.
    #[error("Not an account id: {0} (1 to 128 of A-Z a-z 0-9 _ -)")]
    NotAnAccountId(String),
    #[error("Account not allowed: {0}")]
    AccountNotAllowed(String),
    #[error("since must be a non-negative integer (the last seq seen)")]
    Since,
    #[error("epoch must be a string (the epoch of the last seq seen)")]
    Epoch,
    #[error("Events are unavailable right now ({0}); retry")]
    Unavailable(String),
}

/// Emits `event` and answers the ack with the same payload.
pub fn reply(s: &SocketRef, ack: AckSender, event: &str, payload: Value) {
    let _ = s.emit(event, &payload);
    let _ = ack.send(&payload);
}

/// The `error` reply, to the event and to the ack.
pub fn error(hub: &Hub, s: &SocketRef, ack: AckSender, e: RequestError) {
    if e == RequestError::OverBudget {
        hub.metrics
            .rate_limited
            .get_or_create(&KindLabels {
                kind: "socket_request",
            })
            .inc();
    }
    hub.metrics.request_errors.inc();
    reply(
        s,
        ack,
        "error",
        json!({ "message": e.to_string(), "timestamp": now_ms() }),
    );
}

/// `auth_failed` (to the ack too, if any), then disconnect.
pub fn refuse(hub: &Hub, s: &SocketRef, ack: Option<AckSender>, reason: AuthError) {
    hub.metrics
        .auth_failures
        .get_or_create(&ReasonLabels {
            reason: reason.label(),
        })
        .inc();
    let payload = json!({ "reason": reason.to_string(), "timestamp": now_ms() });
    let _ = s.emit("auth_failed", &payload);
    if let Some(ack) = ack {
        let _ = ack.send(&payload);
    }
    let _ = s.clone().disconnect();
}

/// The `userId` a client names beside its token (string or number), to be checked against the
/// token's user; the same in the handshake `auth` and in `authenticate`. A `userId` of another
/// kind (`true`, an object) names no user, so it cannot be the token's.
pub fn claimed_user(user: Option<&Value>) -> Result<Option<String>, AuthError> {
    match user {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(AuthError::UserMismatch),
    }
}

/// A request's `userId`, when it names one, must be the authenticated user.
pub fn check_user(user: Option<&Value>, identity: &Identity) -> Result<(), RequestError> {
    match claimed_user(user) {
        Ok(None) => Ok(()),
        Ok(Some(user)) if user == identity.user_id => Ok(()),
        _ => Err(RequestError::UserMismatch),
    }
}

/// `eventTypes`: a non-empty array of at most [`MAX_EVENT_TYPES`] valid names.
pub fn event_types(list: Option<&Value>) -> Result<Vec<String>, RequestError> {
    let list = list
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty() && l.len() <= MAX_EVENT_TYPES)
        .ok_or(RequestError::EventTypes)?;
    list.iter()
        .map(|t| {
            t.as_str()
                .filter(|t| instantchat_event::is_valid_event_type(t))
                .map(str::to_owned)
                .ok_or(RequestError::EventTypes)
        })
        .collect()
}

/// One account id, as a string or a number.
pub fn account_id(id: &Value) -> Result<String, RequestError> {
    let id = match id {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(RequestError::AccountIdsNotIds),
    };
    if is_valid_account_id(&id) {
        Ok(id)
    } else {
        Err(RequestError::NotAnAccountId(quote_short(&id)))
    }
}
