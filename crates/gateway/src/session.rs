//! Per-socket state: who it is, what it subscribed to, its rate budget, and the turns that
//! keep its requests in order.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use instantchat_broker::Interest;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::{Sid, Socket};
use tokio::sync::Notify;

use crate::auth::{AccountScope, Identity};
use crate::hub::Hub;

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new((rate, burst): (f64, f64)) -> Self {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The state of one socket, shared by its handlers and the gateway's background tasks.
#[derive(Debug)]
pub struct Session {
    pub identity: Option<Identity>,
    /// Bumped on every successful authentication, so an expiry timer of an older token
    /// does nothing.
    pub auth_generation: u64,
    pub event_types: BTreeSet<String>,
    /// `accountIds` of the last `subscribe` that gave them: narrows delivery.
    pub narrowed: Option<BTreeSet<String>>,
    /// Rooms of the hub's fan-out index this socket is in, for the current subscriptions.
    pub rooms: Vec<String>,
    /// Interest registered with the hub for the current subscriptions.
    pub interest: Interest,
    pub last_activity: Instant,
    pub requests: TokenBucket,
    /// What the socket counts for on this gateway; taken (and so released) by the disconnect
    /// handler, or released with the session.
    pub counted: Option<Counted>,
    /// Highest seq emitted to this socket: nothing at or below it is sent again.
    pub last_seq: u64,
    /// While a resume replay runs, live events wait in `held` so the client sees seq order.
    pub replaying: bool,
    /// While replaying: the bus's end when the resume began. The replay covers everything up
    /// to it, so only live events after it are held.
    pub replay_floor: u64,
    pub held: Vec<(u64, Arc<RawValue>)>,
    /// `auth.since` from the handshake, applied by the first `subscribe` that has no `since`.
    pub pending_since: Option<u64>,
    /// Found too slow: gets nothing more and is being disconnected.
    pub slow: bool,
    /// Disconnected: joins no room any more.
    pub gone: bool,
    /// The next request's turn, given out in arrival order.
    next_turn: u64,
    /// The turn being served: requests before it are done.
    serving: u64,
}

/// What a socket counts for on its gateway: one open connection and, once authenticated, one of
/// its user's connection slots (with the gauges that show them) and its token's expiry timer.
/// Released exactly once, when dropped: by the disconnect handler, or with the session of a
/// socket whose connect never completed (it closed during the handshake, after the middleware
/// counted it, and socketioxide runs no disconnect handler for such a socket).
#[derive(Debug)]
pub struct Counted {
    hub: Weak<Hub>,
    sid: Sid,
    user: Option<String>,
}

impl Counted {
    /// Counts one open connection, of socket `sid`.
    pub fn connection(hub: &Arc<Hub>, sid: Sid) -> Self {
        hub.metrics.connections.inc();
        Counted {
            hub: Arc::downgrade(hub),
            sid,
            user: None,
        }
    }

    /// Holds `user`'s connection slot, taken with [`Hub::acquire_user`].
    pub fn hold_user(&mut self, user: String) {
        if let Some(hub) = self.hub.upgrade() {
            hub.metrics.authenticated.inc();
        }
        self.user = Some(user);
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        hub.expiries.forget(self.sid);
        hub.metrics.connections.dec();
        if let Some(user) = self.user.take() {
            hub.metrics.authenticated.dec();
            hub.release_user(&user);
        }
    }
}

/// Shared handle to a [`Session`], kept in the socket's extensions.
#[derive(Debug, Clone)]
pub struct SessionRef(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    state: Mutex<Session>,
    /// Wakes the requests waiting for their [`Turn`].
    turns: Notify,
}

impl SessionRef {
    pub fn new(rate: (f64, f64)) -> Self {
        let state = Mutex::new(Session {
            identity: None,
            auth_generation: 0,
            event_types: BTreeSet::new(),
            narrowed: None,
            rooms: Vec::new(),
            interest: Interest::Accounts(Vec::new()),
            last_activity: Instant::now(),
            requests: TokenBucket::new(rate),
            counted: None,
            last_seq: 0,
            replaying: false,
            replay_floor: 0,
            held: Vec::new(),
            pending_since: None,
            slow: false,
            gone: false,
            next_turn: 0,
            serving: 0,
        });
        SessionRef(Arc::new(Shared {
            state,
            turns: Notify::new(),
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, Session> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request's place in its socket's queue. socketioxide runs every handler in a task of its
/// own, so two requests sent back to back could run in either order (a `subscribe` before the
/// `authenticate` sent ahead of it, an `unsubscribe` before its `subscribe`). The turn is taken
/// as the request is read, before its task starts; the handler waits for it, and the socket's
/// next request waits until the [`TurnGuard`] is dropped, as the seed's handlers run one by one.
/// It must be a handler's last extractor: one after it could fail, and the handler with its
/// turn would then never run.
///
/// The socket's rate budget is taken here too: a request over it gets no turn (and is refused
/// at once), so a flood cannot queue up behind a slow request.
#[derive(Debug)]
pub struct Turn {
    session: SessionRef,
    /// `None`: over the rate budget.
    ticket: Option<u64>,
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
            state.last_activity = Instant::now();
            state.requests.take().then(|| {
                state.next_turn += 1;
                state.next_turn - 1
            })
        };
        Ok(Turn { session, ticket })
    }
}

/// Room of one account and type.
pub fn account_room(account: &str, event_type: &str) -> String {
    format!("a:{account}:{event_type}")
}

/// Room of one type across all accounts.
pub fn all_room(event_type: &str) -> String {
    format!("all:{event_type}")
}

impl Session {
    /// The accounts this socket receives: the narrowed set, or everything its token allows.
    pub fn effective_scope(&self) -> AccountScope {
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

    /// Rooms and bus interest for the current subscriptions.
    pub fn targets(&self) -> (Vec<String>, Interest) {
        if self.event_types.is_empty() {
            return (Vec::new(), Interest::Accounts(Vec::new()));
        }
        match self.effective_scope() {
            AccountScope::All => (
                self.event_types.iter().map(|t| all_room(t)).collect(),
                Interest::All,
            ),
            AccountScope::Only(accounts) => {
                let rooms = accounts
                    .iter()
                    .flat_map(|a| self.event_types.iter().map(move |t| account_room(a, t)))
                    .collect();
                (rooms, Interest::accounts(accounts))
            }
        }
    }
}
