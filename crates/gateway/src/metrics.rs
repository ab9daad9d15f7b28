//! Gateway metrics in Prometheus text format.
//!
//! Everything of the gateway is named `instantchat_gateway_*`; the process's resident memory is
//! `process_resident_memory_bytes`. A binary that serves more than the gateway on the same
//! `/metrics` (the single-process mode) adds its metrics with [`Metrics::register`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use std::collections::BTreeMap;
use std::fmt;

use async_nats::connection::State;
use instantchat_telemetry::metrics::{ProbeGauge, ProcessMemory};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use socketioxide::SocketIo;

use crate::session::SessionRef;

type Labels = Vec<(&'static str, String)>;

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub connections: Gauge,
    pub authenticated: Gauge,
    pub auth_failures: Family<Labels, Counter>,
    pub delivered: Family<Labels, Counter>,
    pub received: Counter,
    pub slow_disconnects: Counter,
    pub rate_limited: Family<Labels, Counter>,
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
    /// The Socket.IO server whose sockets `subscriptions` counts on scrape.
    io: Arc<OnceLock<SocketIo>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
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
            io: Arc::default(),
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
        registry.register_collector(Box::new(Subscriptions(m.io.clone())));
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
        Metrics {
            registry: Mutex::new(root),
            ..m
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    /// Adds more metrics to what [`render`](Self::render) serves (e.g. ingest's, when both run
    /// in one process).
    pub fn register(&self, add: impl FnOnce(&mut Registry)) {
        add(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
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

    /// The Socket.IO server whose subscriptions are counted on scrape.
    pub(crate) fn set_io(&self, io: SocketIo) {
        let _ = self.io.set(io);
    }

    pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
        vec![(name, value.into())]
    }
}

/// `instantchat_gateway_subscriptions{event_type}`: sockets subscribed to each event type,
/// counted from the sessions on every scrape (exact, and nothing to keep in step on the
/// subscribe path).
struct Subscriptions(Arc<OnceLock<SocketIo>>);

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscriptions")
    }
}

impl Collector for Subscriptions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        if let Some(io) = self.0.get() {
            for socket in io.sockets() {
                if let Some(session) = socket.extensions.get::<SessionRef>() {
                    for t in &session.lock().event_types {
                        *counts.entry(t.clone()).or_default() += 1;
                    }
                }
            }
        }
        let family = Family::<Labels, Gauge>::default();
        for (event_type, n) in counts {
            family
                .get_or_create(&Metrics::label("event_type", event_type))
                .set(n);
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
