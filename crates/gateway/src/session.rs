//! One socket's state: who it is, what it asked for, what it counts for, and how far its
//! delivery got.
//!
//! [`Session`] keeps its fields private; handlers and the fan-out change it through methods
//! named for what happens (authenticate, subscribe, offer an event, ...). Delivery is a small
//! state machine, [`Phase`]: live; replaying (live events after the replay's floor wait, so the
//! client sees seq order); slow (cut off, gets nothing more); gone. Every event, live or
//! replayed, reaches the socket through [`Client::offer`] or [`Client::offer_replayed`], which
//! emit it, advance `last_seq`, and say when the client is too slow.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engineioxide::TransportCloser;
use parking_lot::{Mutex, MutexGuard};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::{Sid, Socket};
use tokio::sync::Notify;

use crate::auth::{AccountScope, Identity};
use crate::expiry::Expiries;
use crate::limits::{TokenBucket, UserSlot};

/// Where a client asked to resume from: the last `seq` it saw, and the history (`epoch`) that
/// `seq` belongs to, when it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub seq: u64,
    pub epoch: Option<String>,
}

/// How far the socket's delivery got.
#[derive(Debug)]
pub enum Phase {
    /// Events are emitted as they come.
    Live,
    /// A resume replay runs: live events after `floor` (the fan-out's position when the replay
    /// began; the replay covers everything up to it) wait in `held`.
    Replaying {
        floor: u64,
        held: Vec<(u64, Arc<RawValue>)>,
    },
    /// Found too slow: gets nothing more, its transport is being closed.
    Slow,
    /// Disconnected.
    Gone,
}

/// What became of an event offered to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Emitted.
    Sent,
    /// Not for this socket (another type, already sent, covered by the replay, slow or gone).
    Skipped,
    /// Waits for the replay to end.
    Held,
    /// The socket's buffer is full: the caller closes its transport.
    TooSlow,
    /// The socket is closed.
    Closed,
}

/// What a socket counts for on its gateway: one open connection and, once authenticated, one of
/// its user's connection slots (with the gauge that shows them) and its token's expiry timer.
/// Released exactly once, when dropped: by the disconnect handler, or with the session of a
/// socket whose connect never completed (it closed during the handshake, and socketioxide runs
/// no disconnect handler for such a socket).
#[derive(Debug)]
pub struct Holds {
    sid: Sid,
    connections: Gauge,
    authenticated: Gauge,
    expiries: Expiries,
    user: Option<UserSlot>,
}

impl Holds {
    /// Counts one open connection, of socket `sid`.
    pub fn connection(
        sid: Sid,
        connections: Gauge,
        authenticated: Gauge,
        expiries: Expiries,
    ) -> Self {
        connections.inc();
        Holds {
            sid,
            connections,
            authenticated,
            expiries,
            user: None,
        }
    }
}

impl Drop for Holds {
    fn drop(&mut self) {
        self.expiries.forget(self.sid);
        self.connections.dec();
        if self.user.take().is_some() {
            self.authenticated.dec();
        }
    }
}

/// The state of one socket, shared by its handlers and the gateway's background tasks.
#[derive(Debug)]
pub struct Session {
    identity: Option<Identity>,
    /// Bumped on every successful authentication, so an expiry timer of an older token does
    /// nothing.
    auth_generation: u64,
    event_types: BTreeSet<String>,
    /// `accountIds` of the last `subscribe` that gave them: narrows delivery.
    narrowed: Option<BTreeSet<String>>,
    last_activity: Instant,
    requests: TokenBucket,
    /// Taken (and so released) by the disconnect handler, or released with the session.
    holds: Option<Holds>,
    /// Highest seq emitted to this socket: nothing at or below it is sent again.
    last_seq: u64,
    phase: Phase,
    /// Live events that may wait while a replay runs; more, and the client is too slow.
    max_held: usize,
    /// `auth.since` from the handshake, applied by the first `subscribe` that has no `since`.
    pending_since: Option<Since>,
    /// The next request's turn, given out in arrival order.
    next_turn: u64,
    /// The turn being served: requests before it are done.
    serving: u64,
}

impl Session {
    /// The authenticated user, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn user_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user_id.as_str())
    }

    pub fn auth_generation(&self) -> u64 {
        self.auth_generation
    }

    pub fn event_types(&self) -> &BTreeSet<String> {
        &self.event_types
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn is_replaying(&self) -> bool {
        matches!(self.phase, Phase::Replaying { .. })
    }

    pub fn is_gone(&self) -> bool {
        matches!(self.phase, Phase::Gone)
    }

    /// Whether the socket has a position in the stream already: subscribed, or replaying.
    pub fn is_in_stream(&self) -> bool {
        !self.event_types.is_empty() || self.is_replaying()
    }

    /// Records a verified identity (first or renewed authentication); `slot`, when given, is
    /// the user's connection slot it now holds. The new generation, or `None` when the socket
    /// is already gone (the slot then goes back at once).
    pub fn authenticate(&mut self, identity: Identity, slot: Option<UserSlot>) -> Option<u64> {
        if self.is_gone() {
            return None;
        }
        if let (Some(holds), Some(slot)) = (self.holds.as_mut(), slot) {
            holds.authenticated.inc();
            holds.user = Some(slot);
        }
        self.identity = Some(identity);
        self.auth_generation += 1;
        self.last_activity = Instant::now();
        Some(self.auth_generation)
    }

    /// Adds event types and, when given, narrows delivery to `accounts`.
    pub fn subscribe(&mut self, types: Vec<String>, accounts: Option<BTreeSet<String>>) {
        self.event_types.extend(types);
        if accounts.is_some() {
            self.narrowed = accounts;
        }
    }

    /// Removes event types.
    pub fn unsubscribe(&mut self, types: &[String]) {
        for t in types {
            self.event_types.remove(t);
        }
    }

    /// The accounts this socket receives: the narrowed set, or everything its token allows;
    /// nothing while it subscribes to no type.
    pub fn scope(&self) -> AccountScope {
        if self.event_types.is_empty() {
            return AccountScope::Only(BTreeSet::new());
        }
        self.allowed_scope()
    }

    /// [`scope`](Self::scope) whatever the subscriptions: what a resume may replay.
    pub fn allowed_scope(&self) -> AccountScope {
        let scope = self
            .identity
            .as_ref()
            .map_or(AccountScope::Only(BTreeSet::new()), |i| i.scope.clone());
        match &self.narrowed {
            Some(narrowed) => AccountScope::Only(
                narrowed
                    .iter()
                    .filter(|a| scope.allows(a))
                    .cloned()
                    .collect(),
            ),
            None => scope,
        }
    }

    /// Any client event counts as activity for the heartbeat timeout.
    pub fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// How long an authenticated socket has been silent (`None` before it authenticates).
    pub fn silent_for(&self) -> Option<Duration> {
        self.identity.as_ref().map(|_| self.last_activity.elapsed())
    }

    pub fn set_pending_since(&mut self, since: Option<Since>) {
        self.pending_since = since;
    }

    pub fn take_pending_since(&mut self) -> Option<Since> {
        self.pending_since.take()
    }

    /// Holds what the socket counts for, until it leaves.
    pub fn hold(&mut self, holds: Holds) {
        self.holds = Some(holds);
    }

    /// The socket left: it gets nothing more, and what it held is handed over to be released.
    pub fn leave(&mut self) -> Option<Holds> {
        self.phase = Phase::Gone;
        self.holds.take()
    }

    /// A fresh subscription starts after `floor` (the fan-out's position as the socket is
    /// placed); a socket already placed keeps its place.
    pub fn start_live(&mut self, floor: u64) {
        self.last_seq = self.last_seq.max(floor);
    }

    /// A resume from `since` begins: the replay covers everything up to `floor`, and live
    /// events after it wait until the replay ends.
    pub fn start_replay(&mut self, since: u64, floor: u64) {
        self.last_seq = self.last_seq.max(since);
        match &mut self.phase {
            Phase::Replaying { floor: f, .. } => *f = (*f).max(floor),
            Phase::Live => {
                self.phase = Phase::Replaying {
                    floor,
                    held: Vec::new(),
                }
            }
            Phase::Slow | Phase::Gone => {}
        }
    }

    /// Marks the socket too slow; true the first time.
    pub fn mark_slow(&mut self) -> bool {
        match self.phase {
            Phase::Slow | Phase::Gone => false,
            _ => {
                self.phase = Phase::Slow;
                true
            }
        }
    }
}

/// Shared handle to a [`Session`], kept in the socket's extensions.
#[derive(Debug, Clone)]
pub struct SessionRef(Arc<SessionCell>);

#[derive(Debug)]
struct SessionCell {
    state: Mutex<Session>,
    /// Wakes the requests waiting for their [`Turn`].
    turns: Notify,
}

impl SessionRef {
    /// A new session: `rate` is the socket's request budget, `max_held` how many live events
    /// may wait during a replay.
    pub fn new(rate: (f64, f64), max_held: usize) -> Self {
        let state = Mutex::new(Session {
            identity: None,
            auth_generation: 0,
            event_types: BTreeSet::new(),
            narrowed: None,
            last_activity: Instant::now(),
            requests: TokenBucket::new(rate),
            holds: None,
            last_seq: 0,
            phase: Phase::Live,
            max_held,
            pending_since: None,
            next_turn: 0,
            serving: 0,
        });
        SessionRef(Arc::new(SessionCell {
            state,
            turns: Notify::new(),
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.0.state.lock()
    }
}

/// A socket with its session: what the fan-out and the replays deliver to.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: SocketRef,
    pub session: SessionRef,
}

/// Why an emit did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The socket's send buffer is full: the client does not keep up.
    Full,
    /// The socket is gone.
    Closed,
}

/// Emits a pre-serialized `webhook_event` to one socket.
pub fn emit_event(socket: &SocketRef, payload: &RawValue) -> Result<(), EmitError> {
    match socket.emit("webhook_event", payload) {
        Ok(()) => Ok(()),
        Err(socketioxide::SendError::Socket(socketioxide::SocketError::InternalChannelFull)) => {
            Err(EmitError::Full)
        }
        Err(_) => Err(EmitError::Closed),
    }
}

/// Closes the socket's transport, as a network failure would: socket.io-client reconnects by
/// itself (and resumes with `since`), which it does not after a Socket.IO disconnect. Works
/// whatever the socket's buffer holds.
pub fn close_transport(socket: &SocketRef) {
    match socket.req_parts().extensions.get::<TransportCloser>() {
        Some(closer) => closer.close(),
        // Every engine.io session carries one; without it, a disconnect is the next best thing.
        None => {
            let _ = socket.clone().disconnect();
        }
    }
}

impl Client {
    pub fn new(socket: SocketRef, session: SessionRef) -> Self {
        Client { socket, session }
    }

    pub fn sid(&self) -> Sid {
        self.socket.id
    }

    /// Offers a live event of `event_type` at `seq` (serialized once for every socket).
    pub fn offer(&self, seq: u64, event_type: &str, payload: &Arc<RawValue>) -> Offered {
        let mut state = self.session.lock();
        // A socket in more than one room of an event gets it once: `last_seq` says so.
        if seq <= state.last_seq || !state.event_types.contains(event_type) {
            return Offered::Skipped;
        }
        let max_held = state.max_held;
        match &mut state.phase {
            Phase::Slow | Phase::Gone => Offered::Skipped,
            Phase::Replaying { floor, .. } if seq <= *floor => Offered::Skipped,
            Phase::Replaying { held, .. } if held.len() >= max_held => Offered::TooSlow,
            Phase::Replaying { held, .. } => {
                held.push((seq, payload.clone()));
                Offered::Held
            }
            Phase::Live => match emit_event(&self.socket, payload) {
                Ok(()) => {
                    state.last_seq = seq;
                    Offered::Sent
                }
                Err(EmitError::Full) => Offered::TooSlow,
                Err(EmitError::Closed) => Offered::Closed,
            },
        }
    }

    /// Offers a replayed event; `Ok(true)` when emitted, `Ok(false)` when the socket has it
    /// already. A replay is paced by the client: on [`EmitError::Full`] the caller waits.
    pub fn offer_replayed(&self, seq: u64, payload: &RawValue) -> Result<bool, EmitError> {
        let mut state = self.session.lock();
        match state.phase {
            // Cut off already: nothing more goes out.
            Phase::Gone | Phase::Slow => return Err(EmitError::Closed),
            Phase::Live | Phase::Replaying { .. } => {}
        }
        if seq <= state.last_seq {
            return Ok(false);
        }
        emit_event(&self.socket, payload)?;
        state.last_seq = seq;
        Ok(true)
    }

    /// Ends a replay: the live events held meanwhile go out in seq order, and the socket is
    /// live again.
    pub fn finish_replay(&self) -> Result<(), EmitError> {
        let mut state = self.session.lock();
        let Phase::Replaying { held, .. } = &mut state.phase else {
            return match state.phase {
                Phase::Live => Ok(()),
                Phase::Slow => Err(EmitError::Full),
                _ => Err(EmitError::Closed),
            };
        };
        let mut held = std::mem::take(held);
        held.sort_by_key(|(seq, _)| *seq);
        for (seq, payload) in held {
            if seq <= state.last_seq {
                continue;
            }
            emit_event(&self.socket, &payload)?;
            state.last_seq = seq;
        }
        state.phase = Phase::Live;
        Ok(())
    }

    /// Cuts off a client that cannot keep up: it gets nothing more and its transport is
    /// closed, so it reconnects by itself and resumes with `since` from the last event it got.
    /// True the first time.
    pub fn cut_off(&self) -> bool {
        let first = self.session.lock().mark_slow();
        if first {
            tracing::info!(sid = %self.socket.id, "closing a client too slow to keep up");
            close_transport(&self.socket);
        }
        first
    }
}

/// A request's place in its socket's queue. socketioxide runs every handler in a task of its
/// own, so two requests sent back to back could run in either order (a `subscribe` before the
/// `authenticate` sent ahead of it, an `unsubscribe` before its `subscribe`). The turn is taken
/// as the request is read, before its task starts; the handler waits for it, and the socket's
/// next request waits until the [`TurnGuard`] is dropped, so a socket's requests are served one
/// by one in the order sent. It must be a handler's last extractor: one after it could fail,
/// and the handler with its turn would then never run.
///
/// The socket's rate budget is taken here too: a request over it gets no turn (and is refused
/// at once), so a flood cannot queue up behind a slow request.
pub struct Turn {
    session: SessionRef,
    /// `None`: over the rate budget.
    ticket: Option<u64>,
    /// Whether socketioxide counts the socket as connected (see [`Turn::wait`]).
    connected: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("session", &self.session)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl Turn {
    /// Waits until every request that arrived before this one is done. `None` when the request
    /// is over the socket's rate budget: it has no turn and must be refused.
    pub async fn wait(self) -> Option<TurnGuard> {
        let ticket = self.ticket?;
        let shared = &self.session.0;
        loop {
            let notified = shared.turns.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.session.lock().serving == ticket {
                break;
            }
            notified.await;
        }
        // socketioxide sends the connect packet before it marks the socket connected, and
        // refuses emits until then: a request sent the moment the client is connected can start
        // in between on another thread, and its reply event would be lost (its ack would not).
        // The gap is a few instructions; a socket that never becomes connected is let through
        // after 100 ms (its emits fail as they would have).
        for _ in 0..100 {
            if (self.connected)() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Some(TurnGuard(self.session))
    }
}

/// Holds the socket's turn; the next request goes when it is dropped.
#[derive(Debug)]
pub struct TurnGuard(SessionRef);

impl std::ops::Deref for TurnGuard {
    type Target = SessionRef;
    fn deref(&self) -> &SessionRef {
        &self.0
    }
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.0.lock().serving += 1;
        self.0.0.turns.notify_waiters();
    }
}

/// The socket has no session: its connection was never set up by the handshake.
#[derive(Debug, thiserror::Error)]
#[error("socket has no session")]
pub struct NoSession;

impl<A: Adapter> FromMessageParts<A> for Turn {
    type Error = NoSession;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        _: &mut Value,
        _: &Option<i64>,
    ) -> Result<Self, NoSession> {
        let session = s.extensions.get::<SessionRef>().ok_or(NoSession)?;
        let ticket = {
            let mut state = session.lock();
            // Any client event counts as activity for the heartbeat timeout, refused or not.
            state.touch();
            state.requests.take().then(|| {
                state.next_turn += 1;
                state.next_turn - 1
            })
        };
        let socket = s.clone();
        Ok(Turn {
            session,
            ticket,
            connected: Box::new(move || socket.connected()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_holds_live_events_after_its_floor_only() {
        let session = SessionRef::new((10.0, 10.0), 2);
        let mut state = session.lock();
        state.subscribe(vec!["comments".into()], None);
        state.start_replay(5, 9);
        assert_eq!(state.last_seq(), 5);
        assert!(state.is_replaying());
        // A second resume while the first runs only raises the floor.
        state.start_replay(3, 12);
        let Phase::Replaying { floor, .. } = state.phase else {
            panic!("replaying")
        };
        assert_eq!(floor, 12);
        assert_eq!(state.last_seq(), 5, "last_seq never goes back");
    }

    #[test]
    fn slow_is_marked_once_and_never_after_leaving() {
        let session = SessionRef::new((10.0, 10.0), 2);
        let mut state = session.lock();
        assert!(state.mark_slow());
        assert!(!state.mark_slow());
        state.leave();
        assert!(!state.mark_slow());
        assert!(state.is_gone());
    }
}
