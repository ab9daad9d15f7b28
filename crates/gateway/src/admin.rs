//! The operator's view: `GET /admin/connections`.
//!
//! Off (the route does not exist: 404) unless `ADMIN_TOKEN` is set; then every request must
//! carry `Authorization: Bearer <ADMIN_TOKEN>` (compared in constant time), else 401. The answer
//! is JSON: this gateway (version, uptime, bus, the accounts it takes from the bus, socket
//! counts) and every connected socket grouped by user, with its transport, subscriptions,
//! accounts, last seq sent and when it connected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use socketioxide::TransportType;
use subtle::ConstantTimeEq;

use instantchat_broker::Interest;
use instantchat_event::now_ms;

use crate::auth::AccountScope;
use crate::hub::Hub;
use crate::session::SessionRef;

/// When a socket connected (Unix ms), kept in its extensions for this view.
#[derive(Debug, Clone, Copy)]
pub struct ConnectedAt(pub u64);

impl ConnectedAt {
    pub fn now() -> Self {
        ConnectedAt(now_ms())
    }
}

/// What the admin handler needs.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub hub: Arc<Hub>,
    pub token: Arc<str>,
    pub started: Instant,
    pub started_at_ms: u64,
}

impl AdminState {
    pub(crate) fn new(hub: Arc<Hub>, token: &str, started: Instant, started_at_ms: u64) -> Self {
        AdminState {
            hub,
            token: token.into(),
            started,
            started_at_ms,
        }
    }
}

/// True when `headers` carry `Authorization: Bearer <token>`.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

pub(crate) async fn connections(State(admin): State<AdminState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &admin.token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "missing or wrong bearer token (ADMIN_TOKEN)" })),
        )
            .into_response();
    }
    Json(snapshot(&admin)).into_response()
}

/// The JSON of `GET /admin/connections`.
fn snapshot(admin: &AdminState) -> Value {
    let hub = &admin.hub;
    let mut users: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut anonymous = Vec::new();
    let mut sockets_total = 0usize;
    let mut authenticated = 0usize;
    for socket in hub.io().map(|io| io.sockets()).unwrap_or_default() {
        sockets_total += 1;
        let connected_at = socket.extensions.get::<ConnectedAt>().map(|c| c.0);
        let transport = match socket.transport_type() {
            TransportType::Websocket => "websocket",
            TransportType::Polling => "polling",
        };
        let Some(session) = socket.extensions.get::<SessionRef>() else {
            continue;
        };
        let state = session.lock();
        let user = state.user_id().map(str::to_owned);
        let accounts = match state.allowed_scope() {
            AccountScope::All => json!("*"),
            AccountScope::Only(ids) => json!(ids),
        };
        let entry = json!({
            "id": socket.id.to_string(),
            "transport": transport,
            "user": user,
            "subscriptions": state.event_types(),
            "accounts": accounts,
            "lastSeq": state.last_seq(),
            "replaying": state.is_replaying(),
            "connectedAt": connected_at,
        });
        drop(state);
        match user {
            Some(user) => {
                authenticated += 1;
                users.entry(user).or_default().push(entry);
            }
            None => anonymous.push(entry),
        }
    }
    let by_connection = |a: &Value, b: &Value| {
        a["connectedAt"]
            .as_u64()
            .cmp(&b["connectedAt"].as_u64())
            .then_with(|| a["id"].as_str().cmp(&b["id"].as_str()))
    };
    let users: Vec<Value> = users
        .into_iter()
        .map(|(user, mut sockets)| {
            sockets.sort_by(by_connection);
            json!({ "userId": user, "sockets": sockets })
        })
        .collect();
    anonymous.sort_by(by_connection);
    let interest = match hub.fanout.interest() {
        Interest::All => json!("*"),
        Interest::Accounts(ids) => json!(ids),
    };
    json!({
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "startedAt": admin.started_at_ms,
            "uptimeSecs": admin.started.elapsed().as_secs(),
            "bus": hub.bus.kind(),
            "draining": hub.is_draining(),
            "interestAccounts": interest,
            "sockets": sockets_total,
            "authenticatedSockets": authenticated,
            "users": users.len(),
            "now": now_ms(),
        },
        "users": users,
        "unauthenticated": anonymous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let token = "admin-token-0123456789";
        assert!(authorized(&with("Bearer admin-token-0123456789"), token));
        assert!(!authorized(&with("Bearer admin-token-012345678"), token));
        assert!(!authorized(&with("Bearer admin-token-0123456789x"), token));
        assert!(!authorized(&with("Basic admin-token-0123456789"), token));
        assert!(!authorized(&with("admin-token-0123456789"), token));
        assert!(!authorized(&HeaderMap::new(), token));
    }
}
