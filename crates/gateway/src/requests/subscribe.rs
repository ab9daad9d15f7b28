//! `subscribe {eventTypes, accountIds?, since?, epoch?, userId?}`: adds event types, narrows the
//! accounts when `accountIds` is given, and with `since` resumes: replays what the socket missed
//! before its live events, then `replay_complete`.

use std::collections::BTreeSet;
use std::sync::Arc;

use instantchat_event::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::reply::{
    MAX_ACCOUNT_IDS, MAX_EVENT_TYPES, RequestError, account_id, check_user, error, event_types,
    reply,
};
use crate::auth::Identity;
use crate::fanout::Need;
use crate::hub::Hub;
use crate::replay::Resume;
use crate::session::{Client, Since, Turn};

/// What a `subscribe` may carry, before it is checked.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    event_types: Option<Value>,
    account_ids: Option<Value>,
    since: Option<Value>,
    epoch: Option<Value>,
    user_id: Option<Value>,
}

/// A checked `subscribe`.
#[derive(Debug)]
struct Subscribe {
    event_types: Vec<String>,
    /// Narrows delivery to these accounts (each one the token allows).
    account_ids: Option<BTreeSet<String>>,
    since: Option<Since>,
}

impl Subscribe {
    fn parse(data: Option<Value>, identity: &Identity) -> Result<Self, RequestError> {
        let data = data.filter(Value::is_object);
        let raw: Raw = data
            .and_then(|d| serde_json::from_value(d).ok())
            .ok_or(RequestError::NotAnObject("subscribe"))?;
        let event_types = event_types(raw.event_types.as_ref())?;
        check_user(raw.user_id.as_ref(), identity)?;
        let account_ids = match raw.account_ids {
            None | Some(Value::Null) => None,
            Some(Value::Array(ids)) if ids.len() <= MAX_ACCOUNT_IDS => {
                let mut set = BTreeSet::new();
                for id in &ids {
                    let id = account_id(id)?;
                    if !identity.scope.allows(&id) {
                        return Err(RequestError::AccountNotAllowed(id));
                    }
                    set.insert(id);
                }
                Some(set)
            }
            Some(_) => return Err(RequestError::AccountIdsTooMany),
        };
        let since = match raw.since {
            None | Some(Value::Null) => None,
            Some(v) => Some(Since {
                seq: v.as_u64().ok_or(RequestError::Since)?,
                epoch: match raw.epoch {
                    None | Some(Value::Null) => None,
                    Some(Value::String(epoch)) => Some(epoch),
                    Some(_) => return Err(RequestError::Epoch),
                },
            }),
        };
        Ok(Subscribe {
            event_types,
            account_ids,
            since,
        })
    }
}

pub(super) async fn on_subscribe(
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
    let request = match Subscribe::parse(data.ok(), &identity) {
        Ok(r) => r,
        Err(e) => return error(&hub, &s, ack, e),
    };
    {
        let state = session.lock();
        let mut all: BTreeSet<&str> = state.event_types().iter().map(String::as_str).collect();
        all.extend(request.event_types.iter().map(String::as_str));
        if all.len() > MAX_EVENT_TYPES {
            drop(state);
            return error(&hub, &s, ack, RequestError::TooManyEventTypes);
        }
    }
    // Where this socket's stream starts: after `since` for a resume, else where the fan-out is.
    let since = request
        .since
        .or_else(|| session.lock().take_pending_since());
    let need = match &since {
        // With the broker unreachable, a resume starts after its own `since`.
        Some(since) => Need::FloorOr(since.seq),
        None => Need::Floor,
    };
    let client = Client::new(s.clone(), session.clone());
    let mut types = Vec::new();
    let (new_types, accounts) = (request.event_types, request.account_ids);
    let placed = hub
        .fanout
        .place(&client, need, |state, start| {
            // A socket already subscribed (or replaying) keeps its place in the stream: moved
            // to the end now, it would skip what is still in flight or still to be replayed.
            let in_stream = state.is_in_stream();
            state.subscribe(new_types, accounts);
            match &since {
                Some(since) => state.start_replay(since.seq, start.floor),
                None if !in_stream => state.start_live(start.floor),
                None => {}
            }
            types = state.event_types().iter().cloned().collect();
            state.scope()
        })
        .await;
    let start = match placed {
        Ok(start) => start,
        Err(e) => return error(&hub, &s, ack, RequestError::Unavailable(e.to_string())),
    };
    let epoch = start.epoch.as_ref().map(|e| e.to_string());
    reply(
        &s,
        ack,
        "subscription_confirmed",
        json!({ "eventTypes": types, "epoch": epoch, "timestamp": now_ms() }),
    );
    if let Some(since) = since {
        let resume = {
            let state = session.lock();
            Resume {
                since: since.seq,
                epoch: since.epoch,
                scope: state.allowed_scope(),
                types: state.event_types().clone(),
            }
        };
        tokio::spawn(async move {
            let resumed = hub.replays.resume(&client, &resume).await;
            if resumed.stopped {
                return;
            }
            let mut payload = json!({
                "since": resume.since,
                "count": resumed.count,
                "complete": resumed.gap.is_none(),
                "epoch": resumed.epoch.map(|e| e.to_string()),
                "timestamp": now_ms(),
            });
            if let Some(gap) = resumed.gap {
                payload["reason"] = gap.reason().into();
            }
            let _ = client.socket.emit("replay_complete", &payload);
        });
    }
}
