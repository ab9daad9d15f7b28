//! The fan-out: one bus subscription per gateway, and the index of which socket receives which
//! account.
//!
//! The gateway holds one live subscription to every account (`instantchat.events.>`, an
//! ordered JetStream consumer on NATS) and filters locally: an interest change (a socket joins,
//! leaves, narrows) is a change to this index and costs the broker nothing, so no change waits
//! for the broker and no delivery waits for a change. The price is that each gateway takes every
//! event of the stream, also those of accounts none of its clients may see: the bound is the
//! stream's whole rate (docs/fanout.md has the measurements behind this choice). The
//! subscription starts with the first socket placed and then runs for the gateway's life.
//!
//! Events come in one global seq order. Each is serialized once and offered to the sockets of
//! its account and to those that see every account; [`Client::offer`] does the rest.
//!
//! The index and the fan-out's position (the last seq delivered) change under one lock: a socket
//! placed in the index starts exactly after the position read with it, so it misses nothing
//! and gets nothing twice, without asking the broker where the stream ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use instantchat_broker::{BusError, Delivered, Epoch, EventBus, Interest, StartAt};
use instantchat_event::{WebhookEvent, now_ms};
use instantchat_telemetry::SPAN_TARGET;
use parking_lot::RwLock;
use serde_json::value::RawValue;
use socketioxide::socket::Sid;
use tokio::sync::{Notify, watch};

use crate::auth::AccountScope;
use crate::metrics::Metrics;
use crate::session::{Client, Offered, Session};

/// How long to wait before retrying the subscription while the broker is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// Where the socket sits in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    All,
    Accounts(Vec<Arc<str>>),
}

#[derive(Debug, Default)]
struct Index {
    /// Account → the sockets that receive it.
    accounts: HashMap<Arc<str>, HashMap<Sid, Client>>,
    /// Sockets that receive every account.
    all: HashMap<Sid, Client>,
    /// Where each socket sits.
    placed: HashMap<Sid, Placement>,
    /// The last seq delivered (or the stream's end when the subscription began); `None` until
    /// the subscription is first asked for.
    position: Option<u64>,
    /// The history `position` belongs to.
    epoch: Option<Epoch>,
}

impl Index {
    fn remove(&mut self, sid: Sid) {
        match self.placed.remove(&sid) {
            Some(Placement::All) => {
                self.all.remove(&sid);
            }
            Some(Placement::Accounts(accounts)) => {
                for account in accounts {
                    if let Some(members) = self.accounts.get_mut(&account) {
                        members.remove(&sid);
                        if members.is_empty() {
                            self.accounts.remove(&account);
                        }
                    }
                }
            }
            None => {}
        }
    }

    /// Moves `client` to `placement`. Linear in the sizes of its old and new placements.
    fn place(&mut self, client: &Client, placement: Placement) {
        let sid = client.sid();
        if self.placed.get(&sid) == Some(&placement) {
            return;
        }
        self.remove(sid);
        match &placement {
            Placement::All => {
                self.all.insert(sid, client.clone());
            }
            Placement::Accounts(accounts) if accounts.is_empty() => return,
            Placement::Accounts(accounts) => {
                for account in accounts {
                    self.accounts
                        .entry(account.clone())
                        .or_default()
                        .insert(sid, client.clone());
                }
            }
        }
        self.placed.insert(sid, placement);
    }
}

/// Whether placing a socket needs to know where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No: the socket keeps its place (an identity change, an unsubscribe).
    Nothing,
    /// Yes: a fresh subscription starts there.
    Floor,
    /// Yes, and if the broker cannot say, this (a resume's `since`).
    FloorOr(u64),
}

fn placement(scope: &AccountScope) -> Placement {
    match scope {
        AccountScope::All => Placement::All,
        AccountScope::Only(ids) => {
            Placement::Accounts(ids.iter().map(|a| Arc::<str>::from(a.as_str())).collect())
        }
    }
}

/// Where a socket starts in the stream, as it is placed.
#[derive(Debug, Clone)]
pub struct Start {
    /// The fan-out's position: everything after it reaches the socket.
    pub floor: u64,
    /// The history of `floor`.
    pub epoch: Option<Epoch>,
}

/// The fan-out of one gateway.
#[derive(Debug)]
pub struct Fanout {
    bus: Arc<dyn EventBus>,
    metrics: Metrics,
    index: RwLock<Index>,
    /// Wakes [`run`](Self::run) when the first socket is placed.
    wanted: Notify,
    /// The subscription's epoch as it follows the stream (`None` until known).
    epoch_tx: watch::Sender<Option<Epoch>>,
}

impl Fanout {
    pub fn new(bus: Arc<dyn EventBus>, metrics: Metrics) -> Arc<Self> {
        Arc::new(Fanout {
            bus,
            metrics,
            index: RwLock::default(),
            wanted: Notify::new(),
            epoch_tx: watch::Sender::new(None),
        })
    }

    /// Changes a socket's session with `update` and places the socket to receive the scope
    /// `update` returns (nothing, for an empty one), in one step: no event is offered to the
    /// socket between the two. `update` also learns where the socket starts: right after the
    /// last event delivered, which is the stream's end now or a moment ago (a fresh
    /// subscription's `last_seq`, a replay's floor).
    ///
    /// `need`: whether the caller needs that start while the fan-out has none yet (no socket
    /// was placed so far): then the broker is asked for the stream's end, and the
    /// subscription starts there.
    pub async fn place(
        &self,
        client: &Client,
        need: Need,
        update: impl FnOnce(&mut Session, &Start) -> AccountScope,
    ) -> Result<Start, BusError> {
        let known = self.index.read().position.is_some();
        let asked = match need {
            _ if known => None,
            Need::Nothing => None,
            Need::Floor => Some(self.stream_end().await?),
            Need::FloorOr(fallback) => Some(self.stream_end().await.unwrap_or((fallback, None))),
        };
        let start = {
            let mut index = self.index.write();
            if index.position.is_none()
                && let Some((end, epoch)) = asked
            {
                index.position = Some(end);
                index.epoch = epoch;
            }
            let start = Start {
                floor: index.position.unwrap_or_default(),
                epoch: index.epoch.clone(),
            };
            let mut session = client.session.lock();
            let scope = update(&mut session, &start);
            if session.is_gone() {
                index.remove(client.sid());
            } else {
                index.place(client, placement(&scope));
            }
            start
        };
        self.wanted.notify_one();
        Ok(start)
    }

    /// The stream's end and history, asked of the broker.
    async fn stream_end(&self) -> Result<(u64, Option<Epoch>), BusError> {
        let end = self.bus.last_seq().await?;
        let epoch = self.bus.epoch().await?;
        Ok((end, Some(epoch)))
    }

    /// Takes `sid` out of the index.
    pub fn remove(&self, sid: Sid) {
        self.index.write().remove(sid);
    }

    /// The accounts this gateway's clients receive (`None`: every account).
    pub fn interest(&self) -> Interest {
        let index = self.index.read();
        if !index.all.is_empty() {
            return Interest::All;
        }
        Interest::accounts(index.accounts.keys().map(|a| a.to_string()))
    }

    /// The history the fan-out follows, once known.
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch_tx.borrow().clone()
    }

    /// Follows the stream and delivers every event until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        // Nothing to take from the broker until a socket is placed.
        while self.index.read().position.is_none() {
            tokio::select! {
                () = self.wanted.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            // A stream recreated while nothing was subscribed: the position names another
            // history's event.
            if let Ok(now) = self.bus.epoch().await {
                let known = self.index.read().epoch.clone();
                if known.as_ref().is_some_and(|e| *e != now) {
                    self.new_history(now);
                } else {
                    self.index.write().epoch = Some(now.clone());
                    self.epoch_tx.send_replace(Some(now));
                }
            }
            let after = self.index.read().position.unwrap_or_default();
            let mut events = match self
                .bus
                .subscribe(Interest::All, StartAt::After(after))
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to the bus; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            loop {
                tokio::select! {
                    item = events.next() => match item {
                        Some(Ok(d)) => self.deliver(&d),
                        Some(Err(BusError::HistoryChanged { epoch })) => self.new_history(epoch),
                        Some(Err(e)) => tracing::warn!(error = %e, "bus delivery error"),
                        None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// The stream was recreated: its seqs start again and name other events than the ones the
    /// sockets counted. Every placed socket is closed (it reconnects by itself and resumes, and
    /// its resume is told the history changed); the position starts again at the new stream's
    /// start.
    fn new_history(&self, epoch: Epoch) {
        tracing::warn!(%epoch, "the event stream has a new history; closing every socket so it resumes");
        let clients: HashMap<Sid, Client> = {
            let mut index = self.index.write();
            let old = std::mem::replace(
                &mut *index,
                Index {
                    position: Some(0),
                    epoch: Some(epoch.clone()),
                    ..Index::default()
                },
            );
            old.accounts
                .into_values()
                .flatten()
                .chain(old.all)
                .collect()
        };
        self.epoch_tx.send_replace(Some(epoch));
        for client in clients.into_values() {
            client.cut_off();
        }
    }

    /// Emits one event to every socket that receives its account, serialized once.
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
        let mut sent = 0u64;
        let mut too_slow = Vec::new();
        {
            let mut index = self.index.write();
            index.position = Some(index.position.map_or(d.seq, |p| p.max(d.seq)));
            let index = parking_lot::RwLockWriteGuard::downgrade(index);
            let account = index.accounts.get(e.account_id.as_str());
            let count = account.map_or(0, HashMap::len) + index.all.len();
            span.record("sockets", count);
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
            let members = account
                .into_iter()
                .flat_map(HashMap::values)
                .chain(index.all.values());
            for client in members {
                match client.offer(d.seq, &e.event_type, &payload) {
                    Offered::Sent => sent += 1,
                    Offered::TooSlow => too_slow.push(client.clone()),
                    Offered::Skipped | Offered::Held | Offered::Closed => {}
                }
            }
        }
        for client in too_slow {
            if client.cut_off() {
                self.metrics.slow_disconnects.inc();
            }
        }
        self.metrics.delivered(&e.event_type, sent);
        span.record("sent", sent);
        if sent > 0 {
            self.metrics.observe_latency(e.received_at_ms, now_ms());
        }
    }
}
