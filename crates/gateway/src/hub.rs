//! The gateway's shared state and its fan-out from the bus.
//!
//! Interest follows connections: every socket's subscriptions add to a reference count per
//! account (or to the wildcard); the union is the one bus subscription this gateway holds, so it
//! takes from NATS only the events its own clients may see. That subscription delivers in one
//! global seq order; each event is serialized once and emitted to the sockets of its rooms.
//!
//! The rooms are the hub's own index (room → the sockets in it, each with its session), so a
//! delivery costs one lookup per event rather than a socket and an extensions lookup per
//! recipient.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures::StreamExt;
use instantchat_broker::{Delivered, EventBus, Interest, StartAt};
use instantchat_event::WebhookEvent;
use instantchat_telemetry::SPAN_TARGET;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::{Semaphore, watch};

use crate::config::GatewaySettings;
use crate::handlers::now_ms;
use crate::metrics::Metrics;
use crate::session::{SessionRef, TokenBucket, account_room, all_room};

/// How long interest changes are gathered before the bus subscription is recreated, so a burst
/// of connections costs one resubscription.
const INTEREST_DEBOUNCE: Duration = Duration::from_millis(25);
/// Resume replays running at once; the rest wait their turn.
const REPLAY_CONCURRENCY: usize = 16;
/// How long a socket found too slow may take to drain enough to be told to go; a client that
/// stops reading altogether is closed by the engine's ping timeout instead.
const SLOW_DISCONNECT_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct InterestCounts {
    all: usize,
    accounts: HashMap<String, usize>,
}

impl InterestCounts {
    fn apply(&mut self, interest: &Interest, delta: isize) {
        match interest {
            Interest::All => self.all = self.all.saturating_add_signed(delta),
            Interest::Accounts(ids) => {
                for id in ids {
                    let n = self.accounts.entry(id.clone()).or_default();
                    *n = n.saturating_add_signed(delta);
                    if *n == 0 {
                        self.accounts.remove(id);
                    }
                }
            }
        }
    }

    fn union(&self) -> Interest {
        if self.all > 0 {
            Interest::All
        } else {
            Interest::accounts(self.accounts.keys().cloned())
        }
    }
}

/// A socket in a room of the fan-out index.
#[derive(Debug, Clone)]
struct Member {
    socket: SocketRef,
    session: SessionRef,
}

/// Room name → the sockets in it.
type Rooms = HashMap<String, HashMap<Sid, Member>>;

/// State shared by every socket of one gateway.
#[derive(Debug)]
pub struct Hub {
    pub settings: GatewaySettings,
    pub bus: Arc<dyn EventBus>,
    pub metrics: Metrics,
    io: OnceLock<SocketIo>,
    interest: Mutex<InterestCounts>,
    rooms: RwLock<Rooms>,
    interest_tx: watch::Sender<Interest>,
    /// Lowest seq a socket that widened the interest needs from; the next resubscription
    /// starts there (sockets drop what they already have by their own last seq).
    rewind: Mutex<Option<u64>>,
    users: Mutex<HashMap<String, usize>>,
    ip_buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
    draining: AtomicBool,
    /// Resume replays that may run at once.
    pub replay_slots: Arc<Semaphore>,
    /// Resumes waiting for a slot, to be served by one read.
    pub(crate) replays: crate::replay::ReplayQueue,
    /// The bus's end, asked once for every resume that arrives while the question is out.
    end_request: Mutex<Option<EndRequest>>,
    /// Token expiries of the authenticated sockets, served by [`crate::expiry::run`].
    pub expiries: crate::expiry::Expiries,
}

type EndRequest = futures::future::Shared<futures::future::BoxFuture<'static, Result<u64, String>>>;

impl Hub {
    pub fn new(settings: GatewaySettings, bus: Arc<dyn EventBus>) -> Arc<Self> {
        Arc::new(Hub {
            settings,
            bus,
            metrics: Metrics::default(),
            io: OnceLock::new(),
            interest: Mutex::default(),
            rooms: RwLock::default(),
            interest_tx: watch::Sender::new(Interest::Accounts(Vec::new())),
            rewind: Mutex::default(),
            users: Mutex::default(),
            ip_buckets: Mutex::default(),
            draining: AtomicBool::new(false),
            replay_slots: Arc::new(Semaphore::new(REPLAY_CONCURRENCY)),
            replays: crate::replay::ReplayQueue::default(),
            end_request: Mutex::default(),
            expiries: crate::expiry::Expiries::default(),
        })
    }

    pub(crate) fn set_io(&self, io: SocketIo) {
        self.metrics.set_io(io.clone());
        let _ = self.io.set(io);
    }

    pub fn io(&self) -> Option<&SocketIo> {
        self.io.get()
    }

    /// Marks the gateway as draining: not ready, no new connections.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The accounts this gateway currently takes from the bus.
    pub fn interest(&self) -> Interest {
        self.interest_tx.borrow().clone()
    }

    /// Replaces one socket's interest `old` by `new` in the gateway's union. `from_seq`: the
    /// socket needs every event after it (events published before the bus subscription widens
    /// must not be missed).
    pub fn swap_interest(&self, old: &Interest, new: &Interest, from_seq: Option<u64>) {
        if old == new {
            return;
        }
        let union = {
            let mut counts = self.interest.lock().unwrap_or_else(|p| p.into_inner());
            counts.apply(new, 1);
            counts.apply(old, -1);
            counts.union()
        };
        self.interest_tx.send_if_modified(|current| {
            if *current == union {
                // The bus subscription already carries these events: nothing to rewind.
                return false;
            }
            if let Some(from) = from_seq {
                let mut rewind = self.rewind.lock().unwrap_or_else(|p| p.into_inner());
                *rewind = Some(rewind.map_or(from, |r| r.min(from)));
            }
            *current = union;
            true
        });
    }

    /// The bus's end for a resume. Resumes arriving together (a reconnect storm) share one
    /// request: an answer a moment old only means a few more events come by the replay.
    pub async fn end_for_resume(&self) -> Result<u64, String> {
        use futures::FutureExt;
        let request = {
            let mut slot = self.end_request.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(request) => request.clone(),
                None => {
                    let bus = self.bus.clone();
                    let request = async move { bus.last_seq().await.map_err(|e| e.to_string()) }
                        .boxed()
                        .shared();
                    *slot = Some(request.clone());
                    request
                }
            }
        };
        let answer = request.clone().await;
        let mut slot = self.end_request.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|r| r.ptr_eq(&request)) {
            *slot = None;
        }
        answer
    }

    /// Moves a socket out of the rooms `leave` and into `join`.
    pub fn move_rooms(
        &self,
        socket: &SocketRef,
        session: &SessionRef,
        leave: &[String],
        join: &[String],
    ) {
        if leave.is_empty() && join.is_empty() {
            return;
        }
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        for room in leave {
            if let Some(members) = rooms.get_mut(room) {
                members.remove(&socket.id);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        }
        for room in join {
            rooms.entry(room.clone()).or_default().insert(
                socket.id,
                Member {
                    socket: socket.clone(),
                    session: session.clone(),
                },
            );
        }
    }

    /// Removes sockets found closed while delivering (a disconnect racing a subscribe).
    fn forget_closed(&self, rooms_and_sids: &[(String, Sid)]) {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        for (room, sid) in rooms_and_sids {
            if let Some(members) = rooms.get_mut(room) {
                members.remove(sid);
                if members.is_empty() {
                    rooms.remove(room);
                }
            }
        }
    }

    /// Counts one more connection of `user`; false when it is at its limit.
    pub fn acquire_user(&self, user: &str) -> bool {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.entry(user.to_owned()).or_default();
        if *n >= self.settings.max_connections_per_user {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_user(&self, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(user);
            }
        }
    }

    /// Takes a connection token for `ip`; false when it connects too fast.
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
        let mut buckets = self.ip_buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget every address rather than grow without bound; limits restart from full.
            buckets.clear();
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(self.settings.ip_connect_rate))
            .take()
    }

    /// Emits one event to every socket of its rooms, serialized once.
    fn deliver(&self, d: &Delivered) {
        self.metrics.received.inc();
        let e = &d.event;
        // One span per event (not per socket), a child of ingest's webhook span when the event
        // carries its trace context. Disabled, and free, when tracing is off.
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "deliver",
            seq = d.seq,
            event_type = %e.event_type,
            account = %e.account_id,
            sockets = tracing::field::Empty,
            sent = tracing::field::Empty,
        );
        instantchat_telemetry::set_parent(
            &span,
            d.trace.traceparent.as_deref(),
            d.trace.tracestate.as_deref(),
        );
        let _entered = span.enter();
        let names = [
            account_room(&e.account_id, &e.event_type),
            all_room(&e.event_type),
        ];
        let mut sent = 0u64;
        let mut closed = Vec::new();
        {
            let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
            let targets: Vec<(&String, &HashMap<Sid, Member>)> = names
                .iter()
                .filter_map(|name| rooms.get(name).map(|members| (name, members)))
                .collect();
            let count: usize = targets.iter().map(|(_, members)| members.len()).sum();
            span.record("sockets", count);
            tracing::trace!(seq = d.seq, sockets = count, "fan-out");
            if count == 0 {
                return;
            }
            let payload: Arc<RawValue> =
                match serde_json::value::to_raw_value(&WebhookEvent::new(e, d.seq)) {
                    Ok(p) => p.into(),
                    Err(err) => {
                        tracing::error!(error = %err, seq = d.seq, "cannot serialize event");
                        return;
                    }
                };
            for (name, members) in targets {
                for member in members.values() {
                    let mut state = member.session.lock();
                    // A socket in both rooms of an event gets it once: `last_seq` says so.
                    if d.seq <= state.last_seq || state.slow {
                        continue;
                    }
                    if state.replaying {
                        if d.seq <= state.replay_floor {
                            continue;
                        }
                        if state.held.len() >= self.settings.client_buffer_packets {
                            drop(state);
                            self.too_slow(member.socket.clone());
                        } else {
                            state.held.push((d.seq, payload.clone()));
                        }
                        continue;
                    }
                    match emit_event(&member.socket, &payload) {
                        Ok(()) => {
                            state.last_seq = d.seq;
                            sent += 1;
                        }
                        Err(EmitError::Full) => {
                            drop(state);
                            self.too_slow(member.socket.clone());
                        }
                        Err(EmitError::Closed) => {
                            // Normally the disconnect handler takes a socket out of its rooms;
                            // this catches one that joined while it was disconnecting.
                            if state.gone {
                                closed.push((name.clone(), member.socket.id));
                            }
                        }
                    }
                }
            }
        }
        if !closed.is_empty() {
            self.forget_closed(&closed);
        }
        self.metrics
            .delivered
            .get_or_create(&Metrics::label("event_type", e.event_type.clone()))
            .inc_by(sent);
        span.record("sent", sent);
        if sent > 0 {
            self.metrics.observe_latency(e.received_at_ms, now_ms());
        }
    }

    /// Never skip an event silently: a client that cannot keep up gets nothing more and is
    /// disconnected; it resumes with `since` from the last event it got. socketioxide refuses
    /// to disconnect a socket whose buffer is full, so this retries until there is room.
    pub fn too_slow(&self, socket: SocketRef) {
        if let Some(session) = socket.extensions.get::<SessionRef>() {
            let mut state = session.lock();
            if state.slow {
                return;
            }
            state.slow = true;
            state.held.clear();
        }
        self.metrics.slow_disconnects.inc();
        tracing::info!(sid = %socket.id, "disconnecting a client too slow to keep up");
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + SLOW_DISCONNECT_PATIENCE;
            while socket.connected() && tokio::time::Instant::now() < deadline {
                if socket.clone().disconnect().is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Holds the gateway's bus subscription, following interest, and delivers every event.
    /// Runs until `shutdown` resolves.
    pub async fn run_fanout(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut interest_rx = self.interest_tx.subscribe();
        let mut last: Option<u64> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let interest = interest_rx.borrow_and_update().clone();
            if interest.is_empty() {
                tokio::select! {
                    _ = interest_rx.changed() => continue,
                    _ = shutdown.changed() => return,
                }
            }
            let rewind = self.rewind.lock().unwrap_or_else(|p| p.into_inner()).take();
            let start = match (last, rewind) {
                (Some(seq), Some(r)) => StartAt::After(seq.min(r)),
                (Some(seq), None) => StartAt::After(seq),
                (None, Some(r)) => {
                    last = Some(r);
                    StartAt::After(r)
                }
                (None, None) => match self.bus.last_seq().await {
                    Ok(seq) => {
                        last = Some(seq);
                        StartAt::After(seq)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "bus not reachable; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            tracing::debug!(?interest, ?start, "bus subscription follows interest");
            let mut events = match self.bus.subscribe(interest, start).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to the bus; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    item = events.next() => match item {
                        Some(Ok(d)) => {
                            tracing::trace!(seq = d.seq, account = %d.event.account_id, "event from the bus");
                            last = Some(d.seq);
                            self.deliver(&d);
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "bus delivery error"),
                        None => break,
                    },
                    _ = interest_rx.changed() => {
                        tokio::time::sleep(INTEREST_DEBOUNCE).await;
                        break;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Sockets of a user, for the operator's view.
    pub fn user_count(&self) -> usize {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Accounts this gateway takes from the bus (`None`: all).
    pub fn interest_accounts(&self) -> Option<BTreeSet<String>> {
        match self.interest() {
            Interest::All => None,
            Interest::Accounts(ids) => Some(ids.into_iter().collect()),
        }
    }
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
