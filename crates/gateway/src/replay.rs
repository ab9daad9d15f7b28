//! Resume: what a socket missed after its `since`, replayed in seq order before its live events,
//! bounded, and only from the same history.
//!
//! - **Bounded.** A resume replays at most `REPLAY_MAX_EVENTS` events of the client's accounts;
//!   with more missed, it replays none and says so (`complete: false`, reason `too_many`): a
//!   notification screen has no use for thousands of them, and the app reloads its history
//!   from its own API instead. The count is known before anything is read.
//! - **Same history.** A `since` belongs to an epoch (the stream's identity). A client that
//!   says which epoch its `since` came from and finds the stream recreated since then gets
//!   nothing replayed (`history_changed`), never another history's events under the same seqs.
//! - **Shared reads.** Each read of the stream costs the broker a consumer (made, read,
//!   deleted); after a deploy thousands of clients resume at once, mostly from nearby `since`s.
//!   Resumes that arrive while the reads running already take every slot wait together: when a
//!   slot frees, one read after the lowest of their `since`s, over the union of their accounts,
//!   serves them all. Each socket then takes from it only what it may see (its token's
//!   accounts, its types) after its own `since`. A lone resume on a quiet gateway gets a slot at
//!   once, alone. A backlog too large to share is read by each socket on its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use instantchat_broker::{Epoch, EventBus, Interest, Retained};
use instantchat_event::WebhookEvent;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::auth::AccountScope;
use crate::metrics::Metrics;
use crate::session::{Client, EmitError};

/// A shared read holds at most this many events in memory; a larger backlog is replayed by
/// each socket on its own, streamed.
pub const MAX_SHARED_EVENTS: usize = 20_000;
/// Reads of the stream running at once; the resumes that arrive meanwhile wait their turn.
const REPLAY_CONCURRENCY: usize = 16;
/// Replayed events between two yields, so one large backlog does not starve other sockets.
const REPLAY_SLICE: u64 = 64;
/// How long a replay waits for a full socket buffer to drain before the client counts as slow.
const REPLAY_STALL: Duration = Duration::from_secs(10);

/// One stored event, serialized once for every socket that replays it.
#[derive(Debug)]
pub struct ReplayedEvent {
    pub seq: u64,
    pub account_id: String,
    pub event_type: String,
    pub payload: Arc<RawValue>,
}

/// What one read of the stream returned, for every resume that waited for it.
#[derive(Debug)]
pub struct SharedReplay {
    /// After the lowest `since` of the batch, in seq order.
    pub events: Vec<ReplayedEvent>,
    retained: Retained,
    pub epoch: Epoch,
    /// The read stopped early (an error, or more than [`MAX_SHARED_EVENTS`]).
    pub truncated: bool,
}

impl SharedReplay {
    /// Whether every event after `since` was still retained when the read was made.
    pub fn complete_for(&self, since: u64) -> bool {
        self.retained.covers(since)
    }

    /// The events after `since`.
    pub fn after(&self, since: u64) -> &[ReplayedEvent] {
        let start = self.events.partition_point(|e| e.seq <= since);
        &self.events[start..]
    }
}

/// The outcome handed to each waiting resume.
pub type SharedRead = Result<Arc<SharedReplay>, String>;

/// Why a resume did not replay everything the client missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Events after `since` are no longer kept (or `since` lies beyond the stream's end).
    NotRetained,
    /// More events were missed than a resume replays (`REPLAY_MAX_EVENTS`); none were sent.
    TooMany,
    /// `since` comes from another history of the stream: none were sent.
    HistoryChanged,
    /// The broker could not be read.
    Unavailable,
}

impl Gap {
    /// The `reason` of `replay_complete`.
    pub fn reason(self) -> &'static str {
        match self {
            Gap::NotRetained => "not_retained",
            Gap::TooMany => "too_many",
            Gap::HistoryChanged => "history_changed",
            Gap::Unavailable => "unavailable",
        }
    }
}

/// What a resume did.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// Events sent.
    pub count: u64,
    /// `None`: everything after `since` was replayed.
    pub gap: Option<Gap>,
    /// The history the replay read, when it got that far.
    pub epoch: Option<Epoch>,
    /// The socket was cut off (too slow) or left during the replay.
    pub stopped: bool,
}

/// The resumes of one gateway.
#[derive(Debug)]
pub struct Replays {
    bus: Arc<dyn EventBus>,
    metrics: Metrics,
    /// Most events one resume replays.
    max_events: u64,
    /// Reads that may run at once.
    slots: Arc<Semaphore>,
    /// Resumes waiting for a slot, to be served by one read.
    open: Mutex<Option<Batch>>,
}

#[derive(Debug)]
struct Batch {
    since: u64,
    all: bool,
    accounts: BTreeSet<String>,
    waiters: Vec<oneshot::Sender<SharedRead>>,
}

impl Batch {
    fn interest(&self) -> Interest {
        if self.all {
            Interest::All
        } else {
            Interest::accounts(self.accounts.iter().cloned())
        }
    }
}

/// What a resume asks for.
#[derive(Debug, Clone)]
pub struct Resume {
    pub since: u64,
    /// The history `since` came from, when the client said.
    pub epoch: Option<String>,
    /// The accounts the socket may see now (its token is re-checked).
    pub scope: AccountScope,
    pub types: BTreeSet<String>,
}

impl Resume {
    fn wants(&self, account: &str, event_type: &str) -> bool {
        self.types.contains(event_type) && self.scope.allows(account)
    }

    fn interest(&self) -> Interest {
        match &self.scope {
            AccountScope::All => Interest::All,
            AccountScope::Only(ids) => Interest::accounts(ids.iter().cloned()),
        }
    }

    fn other_history(&self, epoch: &Epoch) -> bool {
        self.epoch.as_deref().is_some_and(|e| e != epoch.as_str())
    }
}

impl Replays {
    pub fn new(bus: Arc<dyn EventBus>, metrics: Metrics, max_events: u64) -> Arc<Self> {
        Arc::new(Replays {
            bus,
            metrics,
            max_events,
            slots: Arc::new(Semaphore::new(REPLAY_CONCURRENCY)),
            open: Mutex::default(),
        })
    }

    /// Resumes waiting for the next read (joined to the open batch, no slot yet).
    pub fn waiting(&self) -> usize {
        self.open.lock().as_ref().map_or(0, |b| b.waiters.len())
    }

    /// The reads that may run at once (tests hold them all to make resumes wait).
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// A slot of its own, for a read outside the shared ones.
    async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"))
    }

    /// Replays to `client` what it missed after `resume.since`, then releases the live events
    /// held meanwhile. The caller reports the outcome.
    pub async fn resume(self: &Arc<Self>, client: &Client, resume: &Resume) -> Resumed {
        self.metrics.replays.inc();
        let mut sent = Sent::default();
        let outcome = match self.shared(resume.since, &resume.interest()).await {
            Err(e) => {
                tracing::warn!(error = %e, "replay unavailable");
                Ok((Some(Gap::Unavailable), None))
            }
            Ok(shared) if !shared.truncated => {
                self.replay_shared(client, resume, &shared, &mut sent).await
            }
            // Too much to share (or the shared read broke off): this socket reads on its own.
            Ok(_) => self.on_its_own(client, resume, &mut sent).await,
        };
        let (gap, epoch, stopped) = match outcome {
            Ok((gap, epoch)) => match client.finish_replay() {
                Ok(()) => (gap, epoch, false),
                Err(stop) => {
                    stopped(client, stop, &self.metrics);
                    (gap, epoch, true)
                }
            },
            Err(stop) => {
                stopped(client, stop, &self.metrics);
                (None, None, true)
            }
        };
        self.metrics.replayed_events.inc_by(sent.count);
        Resumed {
            count: sent.count,
            gap,
            epoch,
            stopped,
        }
    }

    async fn replay_shared(
        &self,
        client: &Client,
        resume: &Resume,
        shared: &SharedReplay,
        sent: &mut Sent,
    ) -> Result<(Option<Gap>, Option<Epoch>), EmitError> {
        let epoch = Some(shared.epoch.clone());
        if resume.other_history(&shared.epoch) {
            return Ok((Some(Gap::HistoryChanged), epoch));
        }
        let missed = shared.after(resume.since);
        let of_its_accounts = missed
            .iter()
            .filter(|e| resume.scope.allows(&e.account_id))
            .count() as u64;
        if of_its_accounts > self.max_events {
            return Ok((Some(Gap::TooMany), epoch));
        }
        for e in missed {
            if resume.wants(&e.account_id, &e.event_type) {
                sent.one(client, e.seq, &e.payload).await?;
            }
        }
        let gap = (!shared.complete_for(resume.since)).then_some(Gap::NotRetained);
        Ok((gap, epoch))
    }

    async fn on_its_own(
        &self,
        client: &Client,
        resume: &Resume,
        sent: &mut Sent,
    ) -> Result<(Option<Gap>, Option<Epoch>), EmitError> {
        let _slot = self.slot().await;
        let mut replay = match self.bus.replay(resume.interest(), resume.since).await {
            Ok(replay) => replay,
            Err(e) => {
                tracing::warn!(error = %e, "replay unavailable");
                return Ok((Some(Gap::Unavailable), None));
            }
        };
        let epoch = Some(replay.epoch.clone());
        if resume.other_history(&replay.epoch) {
            return Ok((Some(Gap::HistoryChanged), epoch));
        }
        if replay.pending > self.max_events {
            return Ok((Some(Gap::TooMany), epoch));
        }
        let mut gap = (!replay.complete).then_some(Gap::NotRetained);
        while let Some(item) = replay.events.next().await {
            let d = match item {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "replay interrupted");
                    gap = Some(Gap::Unavailable);
                    break;
                }
            };
            if !resume.wants(&d.event.account_id, &d.event.event_type) {
                continue;
            }
            let Ok(payload) = serde_json::value::to_raw_value(&WebhookEvent::new(&d.event, d.seq))
            else {
                continue;
            };
            sent.one(client, d.seq, &payload).await?;
        }
        Ok((gap, epoch))
    }

    /// The stored events after `since` for `interest`, from a read shared with the resumes
    /// waiting at the same time.
    pub async fn shared(self: &Arc<Self>, since: u64, interest: &Interest) -> SharedRead {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut open = self.open.lock();
            let batch = open.get_or_insert_with(|| Batch {
                since,
                all: false,
                accounts: BTreeSet::new(),
                waiters: Vec::new(),
            });
            batch.since = batch.since.min(since);
            match interest {
                Interest::All => batch.all = true,
                Interest::Accounts(ids) => batch.accounts.extend(ids.iter().cloned()),
            }
            batch.waiters.push(tx);
            batch.waiters.len() == 1
        };
        if lead {
            let replays = self.clone();
            tokio::spawn(async move {
                // Whoever joins before a slot frees shares this read.
                let turn = replays.slot().await;
                let batch = replays.open.lock().take();
                if let Some(batch) = batch {
                    replays.read_for(batch, turn).await;
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err("the replay was abandoned".to_owned()))
    }

    async fn read_for(&self, batch: Batch, _turn: OwnedSemaphorePermit) {
        self.metrics.replay_reads.inc();
        let shared = match self.bus.replay(batch.interest(), batch.since).await {
            Ok(mut replay) => {
                let mut events = Vec::new();
                // Known before reading: a backlog too large to share is not read here at all.
                let mut truncated = replay.pending > MAX_SHARED_EVENTS as u64;
                while !truncated && let Some(item) = replay.events.next().await {
                    let d = match item {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "replay read interrupted");
                            truncated = true;
                            break;
                        }
                    };
                    if events.len() == MAX_SHARED_EVENTS {
                        truncated = true;
                        break;
                    }
                    let Ok(payload) =
                        serde_json::value::to_raw_value(&WebhookEvent::new(&d.event, d.seq))
                    else {
                        continue;
                    };
                    events.push(ReplayedEvent {
                        seq: d.seq,
                        account_id: d.event.account_id.clone(),
                        event_type: d.event.event_type.clone(),
                        payload: payload.into(),
                    });
                }
                Ok(Arc::new(SharedReplay {
                    events,
                    retained: replay.retained(),
                    epoch: replay.epoch.clone(),
                    truncated,
                }))
            }
            Err(e) => Err(e.to_string()),
        };
        tracing::debug!(
            resumes = batch.waiters.len(),
            since = batch.since,
            "one stream read for these resumes"
        );
        for waiter in batch.waiters {
            let _ = waiter.send(shared.clone());
        }
    }
}

/// A replay stopped because the socket could not take more: a slow client is cut off.
fn stopped(client: &Client, stop: EmitError, metrics: &Metrics) {
    if stop == EmitError::Full && client.cut_off() {
        metrics.slow_disconnects.inc();
    }
}

/// Counts what a replay sent, paced by the client.
#[derive(Debug, Default)]
struct Sent {
    count: u64,
}

impl Sent {
    /// Sends one replayed event unless the socket already has it, yielding every
    /// [`REPLAY_SLICE`] events. While the socket's buffer is full, waits for it to drain,
    /// within [`REPLAY_STALL`].
    async fn one(
        &mut self,
        client: &Client,
        seq: u64,
        payload: &RawValue,
    ) -> Result<(), EmitError> {
        let started = Instant::now();
        loop {
            match client.offer_replayed(seq, payload) {
                Ok(false) => return Ok(()),
                Ok(true) => break,
                Err(EmitError::Full) if started.elapsed() < REPLAY_STALL => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(stop) => return Err(stop),
            }
        }
        self.count += 1;
        if self.count.is_multiple_of(REPLAY_SLICE) {
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}
