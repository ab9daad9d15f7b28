//! Gateway metrics in Prometheus text format.
//!
//! Everything of the gateway is named `instantchat_gateway_*`; the process's resident memory is
//! `process_resident_memory_bytes`. A binary that serves more than the gateway on the same
//! `/metrics` (the single-process mode) adds its metrics with [`Metrics::register`].
//!
//! Every label value is one the server defines: event types from a fixed list (`other` for the
//! rest, see [`instantchat_event::event_type_label`]), reasons and kinds from enums. A value a
//! client chose would let it add series without end, and make every scrape longer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use instantchat_event::event_type_label;
use instantchat_telemetry::metrics::{ProbeGauge, ProcessMemory};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `reason`: why an authentication was refused (a fixed list, [`AuthError::label`]).
///
/// [`AuthError::label`]: crate::auth::AuthError::label
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `event_type`: one of the known event types, or `other`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    pub event_type: &'static str,
}

/// `kind`: which rate limit refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Counts sockets per event type on every scrape.
struct SubscriptionCounter(Box<dyn Fn() -> BTreeMap<&'static str, i64> + Send + Sync>);

impl fmt::Debug for SubscriptionCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionCounter")
    }
}

/// Every metric the gateway exports.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The metrics themselves, shared by every clone of [`Metrics`].
#[derive(Debug)]
pub struct Inner {
    registry: Mutex<Registry>,
    pub connections: Gauge,
    pub authenticated: Gauge,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub delivered: Family<EventTypeLabels, Counter>,
    pub received: Counter,
    pub slow_disconnects: Counter,
    pub rate_limited: Family<KindLabels, Counter>,
    pub request_errors: Counter,
    pub replays: Counter,
    /// Reads of the stream made for resumes (one serves every resume waiting with it).
    pub replay_reads: Counter,
    /// Events replayed to resuming clients.
    pub replayed_events: Counter,
    /// From ingest's receipt of the webhook (`received_at_ms`) to the emit to the sockets.
    pub delivery_latency: Histogram,
    /// The NATS client whose connection state `nats_connected` reports (unset: not exported).
    nats: Arc<OnceLock<async_nats::Client>>,
    /// What `subscriptions` counts on scrape.
    subscriptions: Arc<OnceLock<SubscriptionCounter>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Inner {
            connections: Gauge::default(),
            authenticated: Gauge::default(),
            auth_failures: Family::default(),
            delivered: Family::default(),
            received: Counter::default(),
            slow_disconnects: Counter::default(),
            rate_limited: Family::default(),
            request_errors: Counter::default(),
            replays: Counter::default(),
            replay_reads: Counter::default(),
            replayed_events: Counter::default(),
            // 1 ms .. ~33 s: same-host delivery takes a few milliseconds, a backlog after a
            // broker outage takes seconds.
            delivery_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            nats: Arc::default(),
            subscriptions: Arc::default(),
            registry: Mutex::default(),
        };
        let mut root = Registry::default();
        ProcessMemory::register(&mut root);
        let registry = root.sub_registry_with_prefix("instantchat_gateway");
        registry.register(
            "connections",
            "Open Socket.IO connections",
            m.connections.clone(),
        );
        registry.register(
            "authenticated_connections",
            "Authenticated connections",
            m.authenticated.clone(),
        );
        registry.register_collector(Box::new(Subscriptions(m.subscriptions.clone())));
        registry.register(
            "auth_failures",
            "Refused authentications by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "events_delivered",
            "webhook_event emits by event type",
            m.delivered.clone(),
        );
        registry.register(
            "events_received",
            "Events received from the bus",
            m.received.clone(),
        );
        registry.register(
            "slow_client_disconnects",
            "Sockets disconnected for not keeping up",
            m.slow_disconnects.clone(),
        );
        registry.register(
            "rate_limited",
            "Refused by a rate limit, by kind",
            m.rate_limited.clone(),
        );
        registry.register(
            "request_errors",
            "Client requests answered with `error`",
            m.request_errors.clone(),
        );
        registry.register("replays", "Resume replays served", m.replays.clone());
        registry.register(
            "replay_reads",
            "Reads of the stream made for resumes; resumes waiting together share one",
            m.replay_reads.clone(),
        );
        registry.register(
            "replayed_events",
            "Events sent by resume replays",
            m.replayed_events.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "From ingest's receipt of the webhook to the emit to the sockets (live events)",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        let nats = m.nats.clone();
        registry.register_collector(Box::new(ProbeGauge::new(
            "nats_connected",
            "1 while the NATS connection is up, else 0",
            move || {
                nats.get()
                    .map(|c| i64::from(c.connection_state() == State::Connected))
            },
        )));
        Metrics(Arc::new(Inner {
            registry: Mutex::new(root),
            ..m
        }))
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry.lock())?;
        Ok(out)
    }

    /// Adds more metrics to what [`render`](Self::render) serves (e.g. ingest's, when both run
    /// in one process).
    pub fn register(&self, add: impl FnOnce(&mut Registry)) {
        add(&mut self.registry.lock());
    }

    /// Reports `client`'s connection state as `instantchat_gateway_nats_connected`.
    pub fn watch_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    /// Records the delivery of an event ingest received at `received_at_ms` (Unix ms).
    pub fn observe_latency(&self, received_at_ms: i64, now_ms: u64) {
        if received_at_ms <= 0 {
            return;
        }
        let ms = now_ms.saturating_sub(received_at_ms as u64);
        self.delivery_latency
            .observe(Duration::from_millis(ms).as_secs_f64());
    }

    /// What `subscriptions` counts on scrape: sockets per event type.
    pub(crate) fn count_subscriptions_with(
        &self,
        count: impl Fn() -> BTreeMap<&'static str, i64> + Send + Sync + 'static,
    ) {
        let _ = self.subscriptions.set(SubscriptionCounter(Box::new(count)));
    }

    /// `events_delivered`: `n` emits of an event of `event_type`.
    pub fn delivered(&self, event_type: &str, n: u64) {
        self.delivered
            .get_or_create(&EventTypeLabels {
                event_type: event_type_label(event_type),
            })
            .inc_by(n);
    }
}

/// `instantchat_gateway_subscriptions{event_type}`: sockets subscribed to each event type,
/// counted from the sessions on every scrape (exact, and nothing to keep in step on the
/// subscribe path).
struct Subscriptions(Arc<OnceLock<SubscriptionCounter>>);

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscriptions")
    }
}

impl Collector for Subscriptions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let counts = self.0.get().map(|count| (count.0)()).unwrap_or_default();
        let family = Family::<EventTypeLabels, Gauge>::default();
        for (event_type, n) in counts {
            family.get_or_create(&EventTypeLabels { event_type }).set(n);
        }
        let metric = encoder.encode_descriptor(
            "subscriptions",
            "Sockets subscribed to each event type",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}
