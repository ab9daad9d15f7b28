//! Resumes that share one read of the stream.
//!
//! A resume replays what a socket missed after its `since`. Each read of the stream costs the
//! broker a consumer (made, read, deleted); after a deploy thousands of clients resume at once,
//! mostly from nearby `since`s. Resumes that arrive while the replays running already take every
//! slot wait together: when a slot frees, one read after the lowest of their `since`s, over the
//! union of their accounts, serves them all. Each socket then takes from it only what it may see
//! (its token's accounts, its types) after its own `since`. A lone resume on a quiet gateway
//! gets a slot at once, alone.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use instantchat_broker::Interest;
use instantchat_event::WebhookEvent;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::hub::Hub;

/// A shared read holds at most this many events in memory; a larger backlog is replayed by
/// each socket on its own, streamed.
pub const MAX_SHARED_EVENTS: usize = 20_000;

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
    until_seq: u64,
    retained_after: u64,
    /// The read stopped early (an error, or more than [`MAX_SHARED_EVENTS`]).
    pub truncated: bool,
}

impl SharedReplay {
    /// Whether every event after `since` was still retained when the read was made.
    pub fn complete_for(&self, since: u64) -> bool {
        since <= self.until_seq && since >= self.retained_after
    }

    /// The events after `since`.
    pub fn after(&self, since: u64) -> &[ReplayedEvent] {
        let start = self.events.partition_point(|e| e.seq <= since);
        &self.events[start..]
    }
}

/// The outcome handed to each waiting resume.
pub type Shared = Result<Arc<SharedReplay>, String>;

/// Resumes waiting for a replay slot.
#[derive(Debug, Default)]
pub struct ReplayQueue {
    open: Mutex<Option<Batch>>,
}

#[derive(Debug)]
struct Batch {
    since: u64,
    all: bool,
    accounts: BTreeSet<String>,
    waiters: Vec<oneshot::Sender<Shared>>,
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

impl Hub {
    /// Resumes waiting for the next read (joined to the open batch, no slot yet).
    pub fn waiting_resumes(&self) -> usize {
        self.replays
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |b| b.waiters.len())
    }

    /// The stored events after `since` for `interest`, from a read shared with the resumes
    /// waiting at the same time.
    pub async fn shared_replay(self: &Arc<Self>, since: u64, interest: &Interest) -> Shared {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut open = self.replays.open.lock().unwrap_or_else(|p| p.into_inner());
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
            let hub = self.clone();
            tokio::spawn(async move {
                // Whoever joins before a slot frees shares this read.
                let Ok(turn) = hub.replay_slots.clone().acquire_owned().await else {
                    return;
                };
                let batch = hub
                    .replays
                    .open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(batch) = batch {
                    hub.read_for(batch, turn).await;
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
                let mut truncated = false;
                while let Some(item) = replay.events.next().await {
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
                    until_seq: replay.until_seq,
                    retained_after: replay.retained_after,
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
