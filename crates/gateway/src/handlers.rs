//! The Socket.IO protocol of PROTOCOL.md section 4: handshake, client events and replies.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use instantchat_broker::Interest;
use instantchat_event::{WebhookEvent, is_valid_account_id, is_valid_event_type, quote_short};
use ipnet::IpNet;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;

use crate::auth::{self, AccountScope, AuthError, Identity};
use crate::hub::{EmitError, Hub, emit_event};
use crate::metrics::Metrics;
use crate::session::{Counted, SessionRef, Turn};

/// Most event types one `subscribe` may name.
const MAX_EVENT_TYPES: usize = 32;
/// Most account ids one `subscribe` may name.
const MAX_ACCOUNT_IDS: usize = 1000;
/// Replayed events between two yields, so one large backlog does not starve other sockets.
const REPLAY_SLICE: u64 = 64;
/// How long a replay waits for a full socket buffer to drain before the client counts as slow.
const REPLAY_STALL: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch, the `timestamp` of every reply.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Installs the handlers of namespace `/`.
pub fn register(io: &SocketIo) {
    io.ns("/", on_connect.with(handshake));
}

/// The address a connection counts against: the peer's, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy
/// appends the address it got the request from; entries left of a stranger could be forged).
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut ip = peer;
    for entry in forwarded.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(hop) => {
                ip = hop;
                if !is_trusted(&hop) {
                    break;
                }
            }
            // Not an address: stop at the last one that was.
            Err(_) => break,
        }
    }
    ip
}

/// Handshake middleware: draining, per-IP connection rate, `auth.token` when given; then all
/// per-socket set-up. socketioxide answers the connect only after the middleware, while the
/// connect handler runs later in its own task: handlers registered there could miss the
/// client's first event, and a client leaving at once would never be counted out.
async fn handshake(
    s: SocketRef,
    TryData(auth): TryData<Value>,
    State(hub): State<Arc<Hub>>,
) -> Result<(), String> {
    if hub.is_draining() {
        return Err("Server is shutting down; reconnect".into());
    }
    let parts = s.req_parts();
    let ip = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| client_ip(c.0.ip(), &parts.headers, &hub.settings.trusted_proxies));
    if let Some(ip) = ip
        && !hub.admit_ip(ip)
    {
        hub.metrics
            .rate_limited
            .get_or_create(&Metrics::label("kind", "ip_connect"))
            .inc();
        return Err("Too many connections from this address; retry later".into());
    }
    let auth = auth.unwrap_or(Value::Null);
    let pending_since = match auth.get("since") {
        None | Some(Value::Null) => None,
        Some(since) => Some(
            since
                .as_u64()
                .ok_or("auth.since must be a non-negative integer")?,
        ),
    };
    let identity = match auth.get("token") {
        None | Some(Value::Null) => None,
        Some(token) => {
            let Some(token) = token.as_str() else {
                return Err(AuthError::Invalid.to_string());
            };
            let identity = claimed_user(&auth)
                .and_then(|claimed| auth::verify(&hub.settings, token, claimed.as_deref()))
                .map_err(|e| {
                    hub.metrics
                        .auth_failures
                        .get_or_create(&Metrics::label("reason", e.label()))
                        .inc();
                    e.to_string()
                })?;
            if !hub.acquire_user(&identity.user_id) {
                let e = AuthError::TooManyConnections;
                hub.metrics
                    .auth_failures
                    .get_or_create(&Metrics::label("reason", e.label()))
                    .inc();
                return Err(e.to_string());
            }
            Some(identity)
        }
    };
    let session = SessionRef::new(hub.settings.socket_rate);
    {
        let mut state = session.lock();
        state.pending_since = pending_since;
        state.counted = Some(Counted::connection(&hub, s.id));
    }
    s.extensions.insert(session.clone());
    s.extensions.insert(crate::admin::ConnectedAt::now());
    s.on("authenticate", on_authenticate);
    s.on("subscribe", on_subscribe);
    s.on("unsubscribe", on_unsubscribe);
    s.on("get_subscriptions", on_connection_info);
    s.on("test_connection", on_connection_info);
    s.on("heartbeat", on_heartbeat);
    s.on_disconnect(on_disconnect);
    match identity {
        // Counted above.
        Some(identity) => {
            accept_identity(&hub, &s, &session, identity, true);
        }
        None => {
            // Disconnect sockets that never authenticate.
            let (hub, s, session) = (hub.clone(), s.clone(), session.clone());
            tokio::spawn(async move {
                tokio::time::sleep(hub.settings.auth_timeout).await;
                if s.connected() && session.lock().identity.is_none() {
                    refuse(&hub, &s, None, AuthError::Timeout);
                }
            });
        }
    }
    Ok(())
}

/// Everything happens in [`handshake`]; see there why.
async fn on_connect() {}

/// Records a verified identity on the socket (first or renewed authentication). `counted`: the
/// caller took one of the user's connection slots for it, which the session's [`Counted`] now
/// holds, or this function gives back when the socket is already gone. False when it was.
fn accept_identity(
    hub: &Arc<Hub>,
    s: &SocketRef,
    session: &SessionRef,
    identity: Identity,
    counted: bool,
) -> bool {
    let expires_at = identity.expires_at;
    let generation = {
        let mut state = session.lock();
        if state.gone {
            // The disconnect handler already released what the socket counted: a slot taken
            // for it now goes back at once.
            drop(state);
            if counted {
                hub.release_user(&identity.user_id);
            }
            return false;
        }
        // Until the disconnect handler takes it, the session holds what it counts.
        if let Some(holder) = state.counted.as_mut().filter(|_| counted) {
            holder.hold_user(identity.user_id.clone());
        }
        state.identity = Some(identity);
        state.auth_generation += 1;
        state.last_activity = Instant::now();
        state.auth_generation
    };
    refresh_targets(hub, s, session, None);
    // `auth_expired` at `exp`, then a grace period for a fresh `authenticate`.
    hub.expiries.arm(s.id, generation, expires_at);
    true
}

/// `auth_failed` (to the ack too, if any), then disconnect.
fn refuse(hub: &Hub, s: &SocketRef, ack: Option<AckSender>, reason: AuthError) {
    hub.metrics
        .auth_failures
        .get_or_create(&Metrics::label("reason", reason.label()))
        .inc();
    let payload = json!({ "reason": reason.to_string(), "timestamp": now_ms() });
    let _ = s.emit("auth_failed", &payload);
    if let Some(ack) = ack {
        let _ = ack.send(&payload);
    }
    let _ = s.clone().disconnect();
}

/// Emits `event` and answers the ack with the same payload.
fn reply(s: &SocketRef, ack: AckSender, event: &str, payload: Value) {
    let _ = s.emit(event, &payload);
    let _ = ack.send(&payload);
}

fn error_reply(hub: &Hub, s: &SocketRef, ack: AckSender, message: impl Into<String>) {
    hub.metrics.request_errors.inc();
    reply(
        s,
        ack,
        "error",
        json!({ "message": message.into(), "timestamp": now_ms() }),
    );
}

/// Refuses a request over the socket's rate budget (it took no [`Turn`]); the socket stays.
fn over_budget(hub: &Hub, s: &SocketRef, ack: AckSender) {
    hub.metrics
        .rate_limited
        .get_or_create(&Metrics::label("kind", "socket_request"))
        .inc();
    error_reply(hub, s, ack, "Too many requests; slow down");
}

async fn on_authenticate(
    s: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(session) = turn.wait().await else {
        return over_budget(&hub, &s, ack);
    };
    let ack = Some(ack);
    let data = data.unwrap_or(Value::Null);
    let Some(token) = data.get("token").and_then(Value::as_str) else {
        return refuse(&hub, &s, ack, AuthError::Invalid);
    };
    let identity = match claimed_user(&data)
        .and_then(|claimed| auth::verify(&hub.settings, token, claimed.as_deref()))
    {
        Ok(identity) => identity,
        Err(e) => return refuse(&hub, &s, ack, e),
    };
    let previous = session.lock().identity.as_ref().map(|i| i.user_id.clone());
    let counted = match previous {
        Some(user) if user != identity.user_id => {
            return refuse(&hub, &s, ack, AuthError::UserMismatch);
        }
        Some(_) => false,
        None => {
            if !hub.acquire_user(&identity.user_id) {
                return refuse(&hub, &s, ack, AuthError::TooManyConnections);
            }
            true
        }
    };
    let user_id = identity.user_id.clone();
    if !accept_identity(&hub, &s, &session, identity, counted) {
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

/// What a valid `subscribe` asks for.
struct SubscribeRequest {
    event_types: Vec<String>,
    account_ids: Option<BTreeSet<String>>,
    since: Option<u64>,
}

fn parse_event_types(data: &Value) -> Result<Vec<String>, String> {
    const RULE: &str =
        "eventTypes must be a non-empty array of at most 32 names matching [a-z_]{1,64}";
    let list = data
        .get("eventTypes")
        .and_then(Value::as_array)
        .ok_or(RULE)?;
    if list.is_empty() || list.len() > MAX_EVENT_TYPES {
        return Err(RULE.into());
    }
    list.iter()
        .map(|t| {
            t.as_str()
                .filter(|t| is_valid_event_type(t))
                .map(str::to_owned)
                .ok_or_else(|| RULE.to_owned())
        })
        .collect()
}

/// The `userId` a client names beside its token (string or number), to be checked against the
/// token's user; the same in the handshake `auth` and in `authenticate`. A `userId` of another
/// kind (`true`, an object) names no user, so it cannot be the token's.
fn claimed_user(data: &Value) -> Result<Option<String>, AuthError> {
    match data.get("userId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(AuthError::UserMismatch),
    }
}

fn check_user(data: &Value, identity: &Identity) -> Result<(), String> {
    match claimed_user(data) {
        Ok(None) => Ok(()),
        Ok(Some(user)) if user == identity.user_id => Ok(()),
        _ => Err("userId does not match the authenticated user".into()),
    }
}

fn parse_subscribe(data: &Value, identity: &Identity) -> Result<SubscribeRequest, String> {
    if !data.is_object() {
        return Err("subscribe needs an object payload: {eventTypes, userId, timestamp}".into());
    }
    let event_types = parse_event_types(data)?;
    check_user(data, identity)?;
    let account_ids = match data.get("accountIds") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ids)) if ids.len() <= MAX_ACCOUNT_IDS => {
            let mut set = BTreeSet::new();
            for id in ids {
                let id = match id {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err("accountIds must be an array of account id strings".into()),
                };
                if !is_valid_account_id(&id) {
                    return Err(format!(
                        "Not an account id: {} (1 to 128 of A-Z a-z 0-9 _ -)",
                        quote_short(&id)
                    ));
                }
                if !identity.scope.allows(&id) {
                    return Err(format!("Account not allowed: {id}"));
                }
                set.insert(id);
            }
            Some(set)
        }
        Some(_) => return Err("accountIds must be an array of at most 1000 account ids".into()),
    };
    let since = match data.get("since") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("since must be a non-negative integer (the last seq seen)")?,
        ),
    };
    Ok(SubscribeRequest {
        event_types,
        account_ids,
        since,
    })
}

/// Moves the socket between the hub's rooms and updates the hub's interest after its
/// subscriptions or identity changed.
/// `from_seq`: the first seq this socket must not miss (None: the bus's current end).
fn refresh_targets(hub: &Arc<Hub>, s: &SocketRef, session: &SessionRef, from_seq: Option<u64>) {
    let (old_rooms, rooms, old_interest, interest) = {
        let mut state = session.lock();
        if state.gone {
            return;
        }
        let (rooms, interest) = state.targets();
        let old_rooms = std::mem::replace(&mut state.rooms, rooms.clone());
        let old_interest = std::mem::replace(&mut state.interest, interest.clone());
        (old_rooms, rooms, old_interest, interest)
    };
    let leave: Vec<String> = old_rooms
        .iter()
        .filter(|r| !rooms.contains(r))
        .cloned()
        .collect();
    let join: Vec<String> = rooms
        .iter()
        .filter(|r| !old_rooms.contains(r))
        .cloned()
        .collect();
    hub.move_rooms(s, session, &leave, &join);
    hub.swap_interest(&old_interest, &interest, from_seq);
    // A disconnect that ran meanwhile took out the rooms it saw; these may be newer.
    if session.lock().gone {
        hub.move_rooms(s, session, &rooms, &[]);
    }
}

async fn on_subscribe(
    s: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(session) = turn.wait().await else {
        return over_budget(&hub, &s, ack);
    };
    let Some(identity) = session.lock().identity.clone() else {
        return error_reply(&hub, &s, ack, "Not authenticated");
    };
    let request = match parse_subscribe(&data.unwrap_or(Value::Null), &identity) {
        Ok(r) => r,
        Err(message) => return error_reply(&hub, &s, ack, message),
    };
    // Where this socket's stream starts: after `since` for a resume, else at the bus's end now.
    let since = request
        .since
        .or_else(|| session.lock().pending_since.take());
    // The bus's end now: live delivery starts after it. A resume's replay, read later, covers
    // everything from `since` up to at least here.
    let end = match since {
        Some(_) => hub.end_for_resume().await,
        None => hub.bus.last_seq().await.map_err(|e| e.to_string()),
    };
    let floor = match (since, end) {
        (_, Ok(end)) => end,
        // The replay will report `complete: false`; hold everything after `since` meanwhile.
        (Some(since), Err(_)) => since,
        (None, Err(e)) => {
            return error_reply(
                &hub,
                &s,
                ack,
                format!("Events are unavailable right now ({e}); retry"),
            );
        }
    };
    let types = {
        let mut state = session.lock();
        // A socket already subscribed (or replaying) keeps its place in the stream: moved to
        // the end now, it would skip what is still in flight or still to be replayed.
        let placed = !state.event_types.is_empty() || state.replaying;
        state.event_types.extend(request.event_types);
        if request.account_ids.is_some() {
            state.narrowed = request.account_ids;
        }
        if since.is_some() {
            state.replaying = true;
            // Events up to here come with the replay: held live copies would only crowd out
            // the events that do need holding.
            state.replay_floor = floor;
        }
        if since.is_none() && !placed {
            state.last_seq = state.last_seq.max(floor);
        }
        state.event_types.iter().cloned().collect::<Vec<_>>()
    };
    refresh_targets(&hub, &s, &session, Some(floor));
    reply(
        &s,
        ack,
        "subscription_confirmed",
        json!({ "eventTypes": types, "timestamp": now_ms() }),
    );
    if let Some(since) = since {
        tokio::spawn(resume(hub, s, session.clone(), since));
    }
}

/// Replays what the socket missed after `since`, in seq order, then releases the live events
/// held meanwhile and reports `replay_complete`.
async fn resume(hub: Arc<Hub>, s: SocketRef, session: SessionRef, since: u64) {
    hub.metrics.replays.inc();
    let (interest, types, scope) = {
        let mut state = session.lock();
        state.last_seq = state.last_seq.max(since);
        let scope = state.effective_scope();
        let interest = match &scope {
            AccountScope::All => Interest::All,
            AccountScope::Only(ids) => Interest::accounts(ids.iter().cloned()),
        };
        (interest, state.event_types.clone(), scope)
    };
    // The token is re-checked: only what this socket may see now.
    let wanted =
        |account: &str, event_type: &str| types.contains(event_type) && scope.allows(account);
    let mut count = 0u64;
    let mut complete = false;
    // Replays take turns (a storm of resumes cannot starve live delivery or the broker), and
    // the resumes that wait together share one read.
    let shared = match hub.shared_replay(since, &interest).await {
        Ok(shared) => Some(shared),
        Err(e) => {
            tracing::warn!(error = %e, "replay unavailable");
            None
        }
    };
    match shared {
        Some(shared) if !shared.truncated => {
            complete = shared.complete_for(since);
            for e in shared.after(since) {
                if !wanted(&e.account_id, &e.event_type) {
                    continue;
                }
                if let Err(stop) = replay_one(&s, &session, e.seq, &e.payload, &mut count).await {
                    return stop.end(&hub, s);
                }
            }
        }
        // Too much to share (or the shared read broke off): this socket reads on its own.
        Some(_) => {
            let _turn = hub.replay_slots.clone().acquire_owned().await;
            match hub.bus.replay(interest, since).await {
                Ok(mut replay) => {
                    complete = replay.complete;
                    while let Some(item) = replay.events.next().await {
                        let d = match item {
                            Ok(d) => d,
                            Err(e) => {
                                tracing::warn!(error = %e, "replay interrupted");
                                complete = false;
                                break;
                            }
                        };
                        if !wanted(&d.event.account_id, &d.event.event_type) {
                            continue;
                        }
                        let Ok(payload) =
                            serde_json::value::to_raw_value(&WebhookEvent::new(&d.event, d.seq))
                        else {
                            continue;
                        };
                        if let Err(stop) =
                            replay_one(&s, &session, d.seq, &payload, &mut count).await
                        {
                            return stop.end(&hub, s);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "replay unavailable"),
            }
        }
        // The broker is unreachable (logged above): `complete: false` tells the app to reload.
        None => {}
    }
    {
        let mut state = session.lock();
        let mut held = std::mem::take(&mut state.held);
        held.sort_by_key(|(seq, _)| *seq);
        for (seq, payload) in held {
            if seq <= state.last_seq {
                continue;
            }
            match emit_event(&s, &payload) {
                Ok(()) => state.last_seq = seq,
                Err(EmitError::Full) => {
                    drop(state);
                    return hub.too_slow(s);
                }
                Err(EmitError::Closed) => return,
            }
        }
        state.replaying = false;
    }
    hub.metrics.replayed_events.inc_by(count);
    let _ = s.emit(
        "replay_complete",
        &json!({ "since": since, "count": count, "complete": complete, "timestamp": now_ms() }),
    );
}

/// Why a replay stops before its end.
enum Stop {
    TooSlow,
    Closed,
}

impl Stop {
    fn end(self, hub: &Hub, s: SocketRef) {
        if let Stop::TooSlow = self {
            hub.too_slow(s);
        }
    }
}

/// Sends one replayed event unless the socket already has it, counting it in `count` and
/// yielding every [`REPLAY_SLICE`] events. Paced by the client: while its buffer is full,
/// waits for it to drain, within [`REPLAY_STALL`].
async fn replay_one(
    s: &SocketRef,
    session: &SessionRef,
    seq: u64,
    payload: &serde_json::value::RawValue,
    count: &mut u64,
) -> Result<(), Stop> {
    let started = Instant::now();
    loop {
        let result = {
            let mut state = session.lock();
            if seq <= state.last_seq {
                return Ok(());
            }
            let r = emit_event(s, payload);
            if r.is_ok() {
                state.last_seq = seq;
            }
            r
        };
        match result {
            Ok(()) => break,
            Err(EmitError::Full) if started.elapsed() < REPLAY_STALL => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(EmitError::Full) => return Err(Stop::TooSlow),
            Err(EmitError::Closed) => return Err(Stop::Closed),
        }
    }
    *count += 1;
    if count.is_multiple_of(REPLAY_SLICE) {
        tokio::task::yield_now().await;
    }
    Ok(())
}

async fn on_unsubscribe(
    s: SocketRef,
    TryData(data): TryData<Value>,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(session) = turn.wait().await else {
        return over_budget(&hub, &s, ack);
    };
    let Some(identity) = session.lock().identity.clone() else {
        return error_reply(&hub, &s, ack, "Not authenticated");
    };
    let data = data.unwrap_or(Value::Null);
    let types =
        match parse_event_types(&data).and_then(|t| check_user(&data, &identity).map(|()| t)) {
            Ok(t) => t,
            Err(message) => return error_reply(&hub, &s, ack, message),
        };
    let remaining = {
        let mut state = session.lock();
        for t in &types {
            state.event_types.remove(t);
        }
        state.event_types.iter().cloned().collect::<Vec<_>>()
    };
    refresh_targets(&hub, &s, &session, None);
    reply(
        &s,
        ack,
        "subscription_confirmed",
        json!({ "eventTypes": remaining, "timestamp": now_ms() }),
    );
}

async fn on_connection_info(s: SocketRef, ack: AckSender, State(hub): State<Arc<Hub>>, turn: Turn) {
    let Some(session) = turn.wait().await else {
        return over_budget(&hub, &s, ack);
    };
    let subscriptions: Vec<String> = session.lock().event_types.iter().cloned().collect();
    reply(
        &s,
        ack,
        "connection_info",
        json!({ "status": "connected", "subscriptions": subscriptions, "timestamp": now_ms() }),
    );
}

async fn on_heartbeat(s: SocketRef, ack: AckSender, State(hub): State<Arc<Hub>>, turn: Turn) {
    let Some(_turn) = turn.wait().await else {
        return over_budget(&hub, &s, ack);
    };
    let server_time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    reply(
        &s,
        ack,
        "heartbeat_response",
        json!({ "timestamp": now_ms(), "serverTime": server_time }),
    );
}

async fn on_disconnect(s: SocketRef, State(hub): State<Arc<Hub>>) {
    let Some(session) = s.extensions.get::<SessionRef>() else {
        return;
    };
    let (counted, interest, rooms) = {
        let mut state = session.lock();
        state.gone = true;
        state.held.clear();
        (
            state.counted.take(),
            std::mem::replace(&mut state.interest, Interest::Accounts(Vec::new())),
            std::mem::take(&mut state.rooms),
        )
    };
    hub.move_rooms(&s, &session, &rooms, &[]);
    // Releases the connection, the user's slot and the expiry timer.
    drop(counted);
    hub.swap_interest(&interest, &Interest::Accounts(Vec::new()), None);
}

/// Disconnects authenticated sockets silent for longer than the heartbeat timeout.
pub async fn heartbeat_monitor(hub: Arc<Hub>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(timeout) = hub.settings.heartbeat_timeout else {
        return;
    };
    // The seed checks every 30 s; short timeouts are checked more often.
    let period = (timeout / 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(io) = hub.io() else { continue };
        for socket in io.sockets() {
            let Some(session) = socket.extensions.get::<SessionRef>() else {
                continue;
            };
            let silent = {
                let state = session.lock();
                state.identity.is_some() && state.last_activity.elapsed() > timeout
            };
            if silent {
                tracing::debug!(sid = %socket.id, "heartbeat timeout; disconnecting");
                let _ = socket.disconnect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_client_address_is_taken_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().expect("net"),
            IpNet::from(ip("192.0.2.7")),
        ];
        // No trusted proxies: the peer, whatever the header says (anyone can send it).
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &[]), ip("10.1.2.3"));
        // A stranger connecting directly: its own address, the header ignored.
        assert_eq!(
            client_ip(ip("198.51.100.4"), &h, &trusted),
            ip("198.51.100.4")
        );
        // Through a trusted proxy: the address the proxy got the request from.
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        // A forged entry left of the real client does not count.
        let h = forwarded(&["1.2.3.4, 203.0.113.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        // Two trusted hops (load balancer, then ingress), in one or several headers.
        let h = forwarded(&["203.0.113.9, 192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        let h = forwarded(&["203.0.113.9", "192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        // IPv6 clients.
        let h = forwarded(&["2001:db8::1"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("2001:db8::1"));
        // Garbage stops the walk at the last address that was one.
        let h = forwarded(&["203.0.113.9, not-an-ip, 192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("192.0.2.7"));
        // A trusted proxy that sends no header: the proxy.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
    }
}
