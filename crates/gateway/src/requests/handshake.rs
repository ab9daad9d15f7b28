//! The Socket.IO connect: draining, the address's allowance, `auth.token` and `auth.since`
//! when given; then every per-socket set-up. And the disconnect, which releases it all.
//!
//! socketioxide answers the connect only after this middleware, while the connect handler runs
//! later in its own task: handlers registered there could miss the client's first event, and a
//! client leaving at once would never be counted out. So everything happens here.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

use super::identity;
use super::reply::{claimed_user, refuse};
use crate::auth::{self, AuthError, Identity};
use crate::hub::Hub;
use crate::limits::PendingSession;
use crate::metrics::{KindLabels, ReasonLabels};
use crate::session::{Client, Holds, SessionRef, Since};

/// What a client may put in its handshake's `auth`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HandshakeAuth {
    token: Option<Value>,
    user_id: Option<Value>,
    since: Option<Value>,
    epoch: Option<Value>,
}

/// Why a connect is refused: the `message` of the client's `connect_error`.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("Server is shutting down; reconnect")]
    Draining,
    #[error("Too many connections from this address; retry later")]
    TooFast,
    #[error("auth.since must be a non-negative integer")]
    Since,
    #[error("auth.epoch must be a string")]
    Epoch,
    #[error("{0}")]
    Auth(AuthError),
}

pub(super) async fn handshake(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(hub): State<Arc<Hub>>,
) -> Result<(), String> {
    // The session is not pending any more, whatever the answer.
    let pending = s.req_parts().extensions.get::<PendingSession>().cloned();
    if let Some(pending) = &pending {
        pending.connect();
    }
    match connect(&s, auth.ok(), &hub, pending.as_ref()) {
        Ok(()) => Ok(()),
        Err(e) => {
            match &e {
                Refused::TooFast => {
                    hub.metrics
                        .rate_limited
                        .get_or_create(&KindLabels { kind: "ip_connect" })
                        .inc();
                }
                Refused::Auth(reason) => {
                    hub.metrics
                        .auth_failures
                        .get_or_create(&ReasonLabels {
                            reason: reason.label(),
                        })
                        .inc();
                }
                _ => {}
            }
            Err(e.to_string())
        }
    }
}

fn connect(
    s: &SocketRef,
    auth: Option<Value>,
    hub: &Arc<Hub>,
    pending: Option<&PendingSession>,
) -> Result<(), Refused> {
    if hub.is_draining() {
        return Err(Refused::Draining);
    }
    if pending.is_some_and(|p| !p.within_rate()) {
        return Err(Refused::TooFast);
    }
    // Not an object (or nothing): no token, no since.
    let auth: HandshakeAuth = auth
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default();
    let since = match auth.since {
        None | Some(Value::Null) => None,
        Some(since) => Some(Since {
            seq: since.as_u64().ok_or(Refused::Since)?,
            epoch: match auth.epoch {
                None | Some(Value::Null) => None,
                Some(Value::String(epoch)) => Some(epoch),
                Some(_) => return Err(Refused::Epoch),
            },
        }),
    };
    let verified = match auth.token {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(verified(hub, &token, auth.user_id.as_ref())?),
        Some(_) => return Err(Refused::Auth(AuthError::Invalid)),
    };
    let session = SessionRef::new(hub.settings.socket_rate, hub.settings.client_buffer_packets);
    {
        let mut state = session.lock();
        state.set_pending_since(since);
        state.hold(Holds::connection(
            s.id,
            hub.metrics.connections.clone(),
            hub.metrics.authenticated.clone(),
            hub.expiries.clone(),
        ));
    }
    s.extensions.insert(session.clone());
    s.extensions.insert(crate::admin::ConnectedAt::now());
    super::on_events(s);
    let client = Client::new(s.clone(), session);
    match verified {
        // A socket that has not subscribed yet is placed nowhere: its identity is all there is
        // to record, and it is recorded before the connect is answered.
        Some((identity, slot)) => {
            identity::record(hub, &client, identity, Some(slot));
        }
        // Disconnect sockets that never authenticate.
        None => {
            let hub = hub.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hub.settings.auth_timeout).await;
                if client.socket.connected() && client.session.lock().identity().is_none() {
                    refuse(&hub, &client.socket, None, AuthError::Timeout);
                }
            });
        }
    }
    Ok(())
}

/// The handshake's token, verified, with one of its user's connection slots.
fn verified(
    hub: &Arc<Hub>,
    token: &str,
    user: Option<&Value>,
) -> Result<(Identity, crate::limits::UserSlot), Refused> {
    let identity = claimed_user(user)
        .and_then(|claimed| auth::verify(&hub.settings, token, claimed.as_deref()))
        .map_err(Refused::Auth)?;
    let slot = hub
        .limits
        .acquire_user(&identity.user_id)
        .ok_or(Refused::Auth(AuthError::TooManyConnections))?;
    Ok((identity, slot))
}

pub(super) async fn on_disconnect(s: SocketRef, State(hub): State<Arc<Hub>>) {
    let Some(session) = s.extensions.get::<SessionRef>() else {
        return;
    };
    let holds = session.lock().leave();
    hub.fanout.remove(s.id);
    // Releases the connection, the user's slot and the expiry timer.
    drop(holds);
}
