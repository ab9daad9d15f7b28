//! The event bus: the one interface the services use to move events (docs/protocol.md, "NATS").
//!
//! - [`EventBus`]: publish durably with a dedup id and await the broker's confirmation; subscribe to
//!   the live events of one account or of all; replay what is stored after a sequence.
//! - [`NatsBus`](nats::NatsBus): NATS JetStream (async-nats). Streams are created or updated at
//!   start-up; subscriptions are ordered consumers that survive broker restarts; PubAcks come
//!   back on one subscription of its own (`pub_acks`).
//! - [`MemoryBus`](memory::MemoryBus): in-process, for the single-process mode: bounded, with replay
//!   from a ring buffer, the same dedup and sequence rules.
//!
//! Both assign every event a sequence (`seq`): its position in the event stream, strictly
//! increasing, the same on every subscriber, within one [`Epoch`] (the stream's history: a
//! recreated stream starts a new one).

pub mod memory;
pub mod nats;
mod pub_acks;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use instantchat_event::{Event, subjects};
use prost::Message;

pub use memory::MemoryBus;
pub use nats::NatsBus;

/// W3C trace context carried in message headers, so one trace runs from webhook to socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// One message to publish durably.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    /// The broker's dedup key (`Nats-Msg-Id`): a redelivered webhook yields the same ids.
    pub msg_id: String,
    pub payload: Bytes,
    pub trace: TraceContext,
    /// Decoded event, kept so the in-process bus need not decode what it was just given.
    event: Option<Arc<Event>>,
}

impl Outgoing {
    /// A normalized event on `instantchat.events.<account>.<type>`.
    pub fn event(event: Event, trace: TraceContext) -> Self {
        Outgoing {
            subject: subjects::event(&event.account_id, &event.event_type),
            msg_id: event.id.clone(),
            payload: Bytes::from(event.encode_to_vec()),
            trace,
            event: Some(Arc::new(event)),
        }
    }

    /// A raw webhook body on the raw or rejected subject.
    pub fn raw(subject: &'static str, msg_id: String, body: Bytes, trace: TraceContext) -> Self {
        Outgoing {
            subject: subject.to_owned(),
            msg_id,
            payload: body,
            trace,
            event: None,
        }
    }
}

/// The broker's confirmation of one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// Position in its stream.
    pub seq: u64,
    /// The broker had this dedup id already: nothing new was stored.
    pub duplicate: bool,
}

/// One event as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub seq: u64,
    pub event: Arc<Event>,
    pub trace: TraceContext,
}

/// Which events a subscription carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Interest {
    /// Every account (`instantchat.events.>`).
    All,
    /// These accounts (`instantchat.events.<id>.>` each), sorted and without repeats.
    Accounts(Vec<String>),
}

impl Interest {
    /// Interest in the given accounts (sorted, deduplicated).
    pub fn accounts<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        let mut ids: Vec<String> = ids.into_iter().map(Into::into).collect();
        ids.sort_unstable();
        ids.dedup();
        Interest::Accounts(ids)
    }

    /// The NATS subject filters for this interest (empty: nothing).
    pub fn filter_subjects(&self) -> Vec<String> {
        match self {
            Interest::All => vec![subjects::ALL_EVENTS.to_owned()],
            Interest::Accounts(ids) => ids.iter().map(|id| subjects::account(id)).collect(),
        }
    }

    /// Whether `event` falls under this interest.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Interest::All => true,
            Interest::Accounts(ids) => ids.binary_search(&event.account_id).is_ok(),
        }
    }

    /// True when no event can match.
    pub fn is_empty(&self) -> bool {
        matches!(self, Interest::Accounts(ids) if ids.is_empty())
    }
}

/// Where a live subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// With the next event published.
    New,
    /// With the first event whose seq is greater than this.
    After(u64),
}

/// A stream of events; live subscriptions never end on their own.
pub type EventStream = BoxStream<'static, Result<Delivered, BusError>>;

/// Which history a `seq` belongs to. The event stream numbers its events from 1; when it is
/// recreated (its store lost, or deleted by an operator) it numbers from 1 again, and the same
/// `seq` then names another event. A reader that keeps a `seq` keeps its epoch with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Epoch(String);

impl Epoch {
    /// An epoch from its text form.
    pub fn new(text: impl Into<String>) -> Self {
        Epoch(text.into())
    }

    /// The text clients keep and send back.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the stream still held at some moment: everything after `after`, up to `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// The lowest sequence a replay may start after and still be complete (the first retained
    /// sequence, less one).
    pub after: u64,
    /// The last sequence in the stream.
    pub until: u64,
}

impl Retained {
    /// Whether every event after `since` was still there: `since` lies within the stream's
    /// history and nothing after it has been dropped. A `since` beyond the end comes from
    /// another history, or from a client that made it up.
    pub fn covers(&self, since: u64) -> bool {
        since <= self.until && since >= self.after
    }
}

/// What a replay found.
pub struct Replay {
    /// False when events after the requested sequence are no longer retained.
    pub complete: bool,
    /// The last sequence in the stream when the replay started; the replay ends there.
    pub until_seq: u64,
    /// The lowest sequence a replay may start after and still be complete: everything after
    /// it was retained when the replay started.
    pub retained_after: u64,
    /// The history these sequences belong to.
    pub epoch: Epoch,
    /// How many stored events match the interest after the requested sequence: what
    /// `events` will yield, known before any is read.
    pub pending: u64,
    /// The stored events after the requested sequence, in order, ending at `until_seq`.
    pub events: EventStream,
}

impl Replay {
    /// A replay after `after` of the stream that held `retained`.
    pub fn new(
        after: u64,
        retained: Retained,
        epoch: Epoch,
        pending: u64,
        events: EventStream,
    ) -> Self {
        Replay {
            complete: retained.covers(after),
            until_seq: retained.until,
            retained_after: retained.after,
            epoch,
            pending,
            events,
        }
    }

    /// What the stream held when the replay started.
    pub fn retained(&self) -> Retained {
        Retained {
            after: self.retained_after,
            until: self.until_seq,
        }
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("complete", &self.complete)
            .field("until_seq", &self.until_seq)
            .field("epoch", &self.epoch)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// Retention and dedup settings of the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long events are kept for replay.
    pub max_age: Duration,
    /// At most this many events are kept (0: no count limit, only `max_age`).
    pub max_events: u64,
    /// A message id seen within this window is not stored again.
    pub dedup_window: Duration,
    /// Copies of each stream kept by a NATS cluster: 1 on a single server, 3 in a three-server
    /// cluster so that the streams outlive one server (NATS allows 1 to 5; the in-process bus
    /// ignores it).
    pub replicas: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_events: 1_000_000,
            dedup_window: Duration::from_secs(2 * 3600),
            replicas: 1,
        }
    }
}

/// What can go wrong talking to the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the broker is not connected; retry shortly")]
    Unavailable,
    #[error("the broker did not confirm the publish: {0}")]
    Publish(String),
    #[error("cannot set up stream {stream}: {reason}")]
    Stream {
        stream: &'static str,
        reason: String,
    },
    #[error("cannot subscribe: {0}")]
    Subscribe(String),
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("event at seq {seq} cannot be decoded: {reason}")]
    Decode { seq: u64, reason: String },
    #[error("the subscriber fell behind and events after seq {after} are gone from the buffer")]
    Lagged { after: u64 },
    /// A live subscription found the stream recreated: its sequences start again from 1 under
    /// a new epoch, and the subscription goes on from the new stream's first event.
    #[error("the event stream was recreated (epoch {epoch}): sequences start again")]
    HistoryChanged { epoch: Epoch },
}

/// The event bus every service talks to.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + fmt::Debug + 'static {
    /// Publishes every message and awaits every confirmation. `Ok` means all are stored durably
    /// (or were already, as duplicates); on `Err` the caller must not report success.
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<Vec<PublishAck>, BusError>;

    /// Live events of `interest`, from `start` on, in seq order; survives broker restarts.
    /// One subscription covers many accounts so a subscriber sees them in one global order.
    /// When the stream is recreated meanwhile, it yields [`BusError::HistoryChanged`] and goes
    /// on with the new stream's events.
    async fn subscribe(&self, interest: Interest, start: StartAt) -> Result<EventStream, BusError>;

    /// Stored events of `interest` after `after`, up to the current end of the stream.
    async fn replay(&self, interest: Interest, after: u64) -> Result<Replay, BusError>;

    /// The seq of the newest stored event (0 when none): where a new subscriber starts.
    async fn last_seq(&self) -> Result<u64, BusError>;

    /// The current history of the stream.
    async fn epoch(&self) -> Result<Epoch, BusError>;

    /// Ok when the broker is reachable and the streams exist.
    async fn check_ready(&self) -> Result<(), BusError>;

    /// Closes connections cleanly (flushes what is pending).
    async fn close(&self);

    /// `nats` or `memory`, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// The largest message the broker takes, headers included; `None` when it sets no limit
    /// (or has not said yet).
    fn max_message_bytes(&self) -> Option<usize> {
        None
    }
}
