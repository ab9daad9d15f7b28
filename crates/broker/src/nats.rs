//! NATS JetStream implementation of the [`EventBus`].
//!
//! - Streams `INSTANTCHAT_EVENTS` and `INSTANTCHAT_WEBHOOKS` are created or updated at start-up
//!   (idempotent); while NATS is unreachable, set-up is retried in the background and
//!   [`check_ready`](EventBus::check_ready) says not ready.
//! - Publishing hands the whole batch to the client in order, then awaits every PubAck (one
//!   subscription of its own receives them all, see `pub_acks`); a disconnected client fails fast
//!   so ingest can answer 503 instead of holding Meta's request.
//! - A live subscription is an ordered pull consumer pumped by a task; when the consumer breaks
//!   (broker restart, missed heartbeats) it is recreated after the last seq delivered, so events
//!   published during an outage arrive afterwards, in order, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    stream,
};
use async_nats::{HeaderMap, header};
use futures::StreamExt;
use instantchat_event::{Event, subjects};
use prost::Message as _;
use tokio::sync::{mpsc, watch};

use crate::pub_acks::{AckError, PubAcks};
use crate::{
    BusError, Delivered, Epoch, EventBus, EventStream, Interest, Outgoing, PublishAck, Replay,
    Retained, Retention, StartAt, TraceContext,
};

/// How long a publish may wait for its PubAck.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Buffered events per subscription before the pump waits for its reader.
const SUBSCRIPTION_BUFFER: usize = 1024;
/// Publishes awaiting their PubAck, across all batches: what one client keeps outstanding.
const MAX_ACKS_IN_FLIGHT: usize = 5_000;
/// Publishes a batch sends before it awaits their PubAcks.
const PUBLISH_CHUNK: usize = 500;
/// How often a live subscription asks whether the stream is still the one it started on. A
/// recreated stream is otherwise invisible: the ordered consumer recreates itself after its
/// last sequence and waits, on the new stream, for sequences that name other events.
const EPOCH_CHECK: Duration = Duration::from_secs(5);

/// NATS JetStream [`EventBus`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    retention: Retention,
    /// Set once both streams exist; cleared when a publish finds a stream missing.
    streams_ready: Arc<AtomicBool>,
    /// Held while the streams are set up, so that a retry still pending cannot redo the set-up
    /// after another one succeeded (and undo a later configuration, e.g. new replicas).
    stream_setup: Arc<tokio::sync::Mutex<()>>,
    /// Whether this client creates and configures the streams (ingest) or only uses them.
    manages_streams: bool,
    /// Counts (re)connections. Subscriptions recreate their consumers when it moves instead of
    /// waiting for missed heartbeats: ephemeral consumers do not outlive a server restart.
    connections: watch::Receiver<u64>,
    /// Permits for PubAcks outstanding, taken a whole chunk at a time: a chunk holds them
    /// until its PubAcks are in, so batches that each took part of what they need (or one
    /// batch of more than there are) would otherwise wait on each other for ever.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Where publishes get their PubAcks, subscribed on the first publish (a gateway never
    /// publishes).
    pub_acks: Arc<tokio::sync::OnceCell<PubAcks>>,
}

impl NatsBus {
    /// Connects to `url` (retrying in the background while NATS is down) and creates or updates
    /// the streams with `retention`: for the service that owns them (ingest, or the single
    /// process). `name` identifies this service in NATS's monitoring.
    pub async fn connect(url: &str, name: &str, retention: Retention) -> Result<Self, BusError> {
        Self::connect_inner(url, name, Some(retention)).await
    }

    /// Connects as a reader (a gateway): the streams are used as they are, never reconfigured,
    /// so gateways cannot undo ingest's retention settings.
    pub async fn connect_reader(url: &str, name: &str) -> Result<Self, BusError> {
        Self::connect_inner(url, name, None).await
    }

    async fn connect_inner(
        url: &str,
        name: &str,
        manage: Option<Retention>,
    ) -> Result<Self, BusError> {
        let (connected_tx, connections) = watch::channel(0u64);
        let mut options = async_nats::ConnectOptions::new();
        // async-nats takes the server from a URL but ignores its `user:password@`: pass them on,
        // so that NATS_URL=nats://USER:PASSWORD@HOST:PORT logs in as that user (deploy/ gives
        // ingest and the gateways users of their own).
        if let Some(addr) = url
            .split(',')
            .next()
            .and_then(|first| first.trim().parse::<async_nats::ServerAddr>().ok())
            && let Some(user) = addr.username()
        {
            options = options.user_and_password(
                user.to_owned(),
                addr.password().unwrap_or_default().to_owned(),
            );
        }
        let client = options
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .event_callback(move |event| {
                let connected_tx = connected_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            connected_tx.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                        other => tracing::debug!(event = %other, "NATS connection event"),
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| BusError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        // The context serves stream set-up and reads; publishes go through `pub_acks`.
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client.clone());
        let bus = NatsBus {
            client,
            js,
            retention: manage.unwrap_or_default(),
            manages_streams: manage.is_some(),
            streams_ready: Arc::default(),
            stream_setup: Arc::default(),
            connections,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_ACKS_IN_FLIGHT)),
            pub_acks: Arc::default(),
        };
        if let Err(e) = bus.ensure_streams().await {
            tracing::warn!(error = %e, "streams not set up yet; retrying in the background");
            let retry = bus.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(200);
                while let Err(e) = retry.ensure_streams_unless_ready().await {
                    tracing::debug!(error = %e, "stream set-up failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            });
        }
        Ok(bus)
    }

    /// The underlying client, e.g. for its connection state.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Creates or updates both streams with the configured retention (idempotent); a reader
    /// only checks that they exist.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        let _setup = self.stream_setup.lock().await;
        self.set_up_streams().await
    }

    /// [`ensure_streams`](Self::ensure_streams), unless they are ready already.
    async fn ensure_streams_unless_ready(&self) -> Result<(), BusError> {
        let _setup = self.stream_setup.lock().await;
        if self.streams_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.set_up_streams().await
    }

    async fn set_up_streams(&self) -> Result<(), BusError> {
        if !self.manages_streams {
            for name in [subjects::EVENTS_STREAM, subjects::WEBHOOKS_STREAM] {
                self.js
                    .get_stream(name)
                    .await
                    .map_err(|e| BusError::Stream {
                        stream: name,
                        reason: format!("{e}; ingest creates it at start-up"),
                    })?;
            }
            self.streams_ready.store(true, Ordering::Release);
            return Ok(());
        }
        let r = self.retention;
        let events = stream::Config {
            name: subjects::EVENTS_STREAM.to_owned(),
            subjects: vec![subjects::ALL_EVENTS.to_owned()],
            max_age: r.max_age,
            max_messages: if r.max_events == 0 {
                -1
            } else {
                r.max_events as i64
            },
            duplicate_window: r.dedup_window,
            storage: stream::StorageType::File,
            num_replicas: r.replicas.max(1),
            ..Default::default()
        };
        let webhooks = stream::Config {
            name: subjects::WEBHOOKS_STREAM.to_owned(),
            subjects: vec![subjects::WEBHOOKS_ALL.to_owned()],
            max_age: r.max_age,
            duplicate_window: r.dedup_window,
            storage: stream::StorageType::File,
            num_replicas: r.replicas.max(1),
            ..Default::default()
        };
        for (name, config) in [
            (subjects::EVENTS_STREAM, events),
            (subjects::WEBHOOKS_STREAM, webhooks),
        ] {
            self.js
                .create_or_update_stream(config)
                .await
                .map_err(|e| BusError::Stream {
                    stream: name,
                    reason: e.to_string(),
                })?;
        }
        self.streams_ready.store(true, Ordering::Release);
        Ok(())
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The events stream's current epoch.
    async fn events_epoch(&self) -> Result<Epoch, BusError> {
        let mut stream = self.events_stream().await?;
        let info = stream.info().await.map_err(|e| BusError::Stream {
            stream: subjects::EVENTS_STREAM,
            reason: e.to_string(),
        })?;
        Ok(epoch_of(info))
    }

    async fn events_stream(&self) -> Result<stream::Stream, BusError> {
        self.stream(subjects::EVENTS_STREAM).await
    }

    async fn stream(&self, name: &'static str) -> Result<stream::Stream, BusError> {
        self.js
            .get_stream(name)
            .await
            .map_err(|e| BusError::Stream {
                stream: name,
                reason: e.to_string(),
            })
    }
}

/// A stream's epoch: the time it was created, in nanoseconds since 1970 (a recreated stream
/// has another).
fn epoch_of(info: &stream::Info) -> Epoch {
    Epoch::new(info.created.unix_timestamp_nanos().to_string())
}

fn headers(out: &Outgoing) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::NATS_MESSAGE_ID, out.msg_id.as_str());
    if let Some(tp) = &out.trace.traceparent {
        h.insert("traceparent", tp.as_str());
    }
    if let Some(ts) = &out.trace.tracestate {
        h.insert("tracestate", ts.as_str());
    }
    h
}

fn decode(message: &jetstream::Message) -> Result<Delivered, BusError> {
    let seq = message
        .info()
        .map_err(|e| BusError::Decode {
            seq: 0,
            reason: format!("no JetStream info: {e}"),
        })?
        .stream_sequence;
    let event = Event::decode(message.payload.as_ref()).map_err(|e| BusError::Decode {
        seq,
        reason: e.to_string(),
    })?;
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let trace = TraceContext {
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    };
    Ok(Delivered {
        seq,
        event: Arc::new(event),
        trace,
    })
}

/// An ordered consumer that delivers every event of `filters` with seq > `after` (or only new).
async fn ordered(
    stream: &stream::Stream,
    filters: Vec<String>,
    start: StartAt,
) -> Result<(pull::Ordered, u64), BusError> {
    ordered_named(stream, filters, start)
        .await
        .map(|(m, pending, _)| (m, pending))
}

/// [`ordered`], also giving the consumer's name so a short-lived reader can delete it.
async fn ordered_named(
    stream: &stream::Stream,
    filters: Vec<String>,
    start: StartAt,
) -> Result<(pull::Ordered, u64, String), BusError> {
    let deliver_policy = match start {
        StartAt::New => DeliverPolicy::New,
        StartAt::After(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
    };
    let (filter_subject, filter_subjects) = match <[String; 1]>::try_from(filters) {
        Ok([one]) => (one, Vec::new()),
        Err(many) => (String::new(), many),
    };
    let mut consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::Subscribe(e.to_string()))?;
    let (pending, name) = match consumer.info().await {
        Ok(info) => (info.num_pending, info.name.clone()),
        Err(e) => return Err(BusError::Subscribe(e.to_string())),
    };
    let messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::Subscribe(e.to_string()))?;
    Ok((messages, pending, name))
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<Vec<PublishAck>, BusError> {
        if !self.connected() {
            return Err(BusError::Unavailable);
        }
        let pub_acks = self
            .pub_acks
            .get_or_try_init(|| PubAcks::start(self.client.clone()))
            .await?;
        let mut acks = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(PUBLISH_CHUNK) {
            let _permits = self
                .in_flight
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|e| BusError::Publish(e.to_string()))?;
            let messages = chunk
                .iter()
                .map(|out| (out.subject.clone(), headers(out), out.payload.clone()));
            match pub_acks.publish(messages, ACK_TIMEOUT).await {
                Ok(chunk_acks) => acks.extend(chunk_acks),
                Err(AckError::NoStream) => {
                    // The server lost its streams (a fresh store): set them up again so
                    // Meta's retry succeeds.
                    self.streams_ready.store(false, Ordering::Release);
                    let _ = self.ensure_streams_unless_ready().await;
                    return Err(AckError::NoStream.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(acks)
    }

    async fn subscribe(&self, interest: Interest, start: StartAt) -> Result<EventStream, BusError> {
        let stream = self.events_stream().await?;
        if interest.is_empty() {
            return Err(BusError::Subscribe("no account to subscribe to".into()));
        }
        let filters = interest.filter_subjects();
        let mut epoch = self.events_epoch().await?;
        let (mut messages, _) = ordered(&stream, filters.clone(), start).await?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let bus = self.clone();
        let mut connections = self.connections.clone();
        connections.mark_unchanged();
        tokio::spawn(async move {
            let mut last = match start {
                StartAt::After(seq) => Some(seq),
                StartAt::New => None,
            };
            let mut epoch_check = tokio::time::interval(EPOCH_CHECK);
            epoch_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            epoch_check.reset();
            loop {
                let item = tokio::select! {
                    item = messages.next() => item,
                    () = tx.closed() => return,
                    // A new connection: the server may have restarted and lost the consumer.
                    Ok(()) = connections.changed() => None,
                    _ = epoch_check.tick() => match bus.events_epoch().await {
                        Ok(now) if now != epoch => None,
                        _ => continue,
                    },
                };
                match item {
                    Some(Ok(message)) => {
                        let delivered = decode(&message);
                        if let Ok(d) = &delivered {
                            if last.is_some_and(|l| d.seq <= l) {
                                continue;
                            }
                            last = Some(d.seq);
                        }
                        if tx.send(delivered).await.is_err() {
                            return;
                        }
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(error = %e, ?filters, "subscription broke; recreating it");
                        }
                        // Recreate after what was delivered, until the broker takes it again;
                        // on a recreated stream, from its start, once the reader is told.
                        let mut delay = Duration::from_millis(100);
                        messages = loop {
                            if tx.is_closed() {
                                return;
                            }
                            match async {
                                let now = bus.events_epoch().await?;
                                if now != epoch {
                                    tracing::warn!(old = %epoch, new = %now, "the event stream was recreated; following the new one from its start");
                                    epoch = now;
                                    last = Some(0);
                                    let changed = BusError::HistoryChanged { epoch: epoch.clone() };
                                    if tx.send(Err(changed)).await.is_err() {
                                        return Err(BusError::Unavailable);
                                    }
                                }
                                let start = last.map_or(StartAt::New, StartAt::After);
                                let stream = bus.events_stream().await?;
                                ordered(&stream, filters.clone(), start).await
                            }
                            .await
                            {
                                Ok((m, _)) => break m,
                                Err(e) => {
                                    tracing::debug!(error = %e, "resubscribe failed; retrying");
                                    tokio::time::sleep(delay).await;
                                    delay = (delay * 2).min(Duration::from_secs(2));
                                }
                            }
                        };
                    }
                }
            }
        });
        Ok(tokio_stream_from(rx))
    }

    async fn replay(&self, interest: Interest, after: u64) -> Result<Replay, BusError> {
        let mut stream = self.events_stream().await?;
        let state = stream
            .info()
            .await
            .map_err(|e| BusError::Stream {
                stream: subjects::EVENTS_STREAM,
                reason: e.to_string(),
            })?
            .state
            .clone();
        let epoch = epoch_of(stream.cached_info());
        // Everything after `after` is still stored iff the stream's first retained seq is at most
        // after + 1.
        let retained = Retained {
            after: state.first_sequence.saturating_sub(1),
            until: state.last_sequence,
        };
        let empty = || futures::stream::empty().boxed();
        if after >= retained.until || interest.is_empty() {
            return Ok(Replay::new(after, retained, epoch, 0, empty()));
        }
        let (messages, pending, consumer) =
            ordered_named(&stream, interest.filter_subjects(), StartAt::After(after)).await?;
        // Replay consumers are deleted as soon as the replay ends (or is dropped), so a storm
        // of resumes does not pile up consumers on the server.
        let cleanup = DeleteOnDrop {
            stream: stream.clone(),
            consumer,
        };
        if pending == 0 {
            return Ok(Replay::new(after, retained, epoch, 0, empty()));
        }
        // `pending` counts the matching messages stored when the consumer was made: exactly the
        // backlog. (With account filters the stream's last seq may be another account's, so a
        // seq bound alone would wait forever.)
        let take = usize::try_from(pending).unwrap_or(usize::MAX);
        let events = messages
            .map(move |m| {
                let _delete_when_done = &cleanup;
                m.map_err(|e| BusError::Subscribe(e.to_string()))
                    .and_then(|m| decode(&m))
            })
            .take(take)
            .boxed();
        Ok(Replay::new(after, retained, epoch, pending, events))
    }

    async fn last_seq(&self) -> Result<u64, BusError> {
        if !self.connected() {
            return Err(BusError::Unavailable);
        }
        let mut stream = self.events_stream().await?;
        let info = stream.info().await.map_err(|e| BusError::Stream {
            stream: subjects::EVENTS_STREAM,
            reason: e.to_string(),
        })?;
        Ok(info.state.last_sequence)
    }

    async fn epoch(&self) -> Result<Epoch, BusError> {
        if !self.connected() {
            return Err(BusError::Unavailable);
        }
        self.events_epoch().await
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        if !self.connected() {
            return Err(BusError::Unavailable);
        }
        if !self.streams_ready.load(Ordering::Acquire) {
            self.ensure_streams_unless_ready().await?;
        }
        let mut present = self.events_stream().await.map(|_| ());
        if self.manages_streams && present.is_ok() {
            // Ingest also publishes the raw bodies.
            present = self.stream(subjects::WEBHOOKS_STREAM).await.map(|_| ());
        }
        if present.is_err() && self.manages_streams {
            // A stream is gone (deleted, or a fresh store): the next check sets it up again.
            self.streams_ready.store(false, Ordering::Release);
        }
        present
    }

    async fn close(&self) {
        if let Err(e) = self.client.drain().await {
            tracing::debug!(error = %e, "NATS drain");
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    /// The server's `max_payload` (1 MiB unless its configuration says otherwise). Asked on
    /// every webhook, so read from the client's copy rather than a clone of the server's info.
    fn max_message_bytes(&self) -> Option<usize> {
        Some(self.client.max_payload()).filter(|&n| n > 0)
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Result<Delivered, BusError>>) -> EventStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Deletes an ephemeral consumer when dropped.
struct DeleteOnDrop {
    stream: stream::Stream,
    consumer: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        let consumer = std::mem::take(&mut self.consumer);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = stream.delete_consumer(&consumer).await {
                    tracing::debug!(error = %e, %consumer, "replay consumer not deleted; it expires by itself");
                }
            });
        }
    }
}
