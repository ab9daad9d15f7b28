//! Prometheus metrics of the ingest path, served as text on `GET /metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use instantchat_telemetry::metrics::ProbeGauge;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// How one webhook POST ended; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Verified and published (events and raw body acknowledged).
    Accepted,
    /// Signature missing, malformed or wrong: 401.
    BadSignature,
    /// Over `WEBHOOK_MAX_BODY_BYTES`: 413.
    TooLarge,
    /// Signed but not JSON or not a shape we know: kept on the rejected subject, 200.
    RejectedBody,
    /// The broker did not confirm: 503, Meta retries.
    BrokerError,
    /// The body could not be read (the client went away): 400.
    BadRequest,
    /// The body did not arrive within the body deadline: 408.
    BodyTimeout,
}

impl Outcome {
    /// The `outcome` label (also recorded on the `webhook` span).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::BadSignature => "bad_signature",
            Outcome::TooLarge => "too_large",
            Outcome::RejectedBody => "rejected_body",
            Outcome::BrokerError => "broker_error",
            Outcome::BadRequest => "bad_request",
            Outcome::BodyTimeout => "body_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_type: String,
    duplicate: bool,
}

/// The ingest metrics. Clones share the same values, so [`register`](Self::register) can add
/// them to another binary's registry too.
#[derive(Debug, Clone)]
pub struct Metrics {
    webhooks: Family<OutcomeLabels, Counter>,
    events: Family<EventLabels, Counter>,
    skipped_items: Counter,
    duration: Histogram,
    in_flight: Gauge,
    /// The NATS client whose state `instantchat_ingest_nats_connected` reports (unset: absent).
    nats: Arc<OnceLock<async_nats::Client>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            webhooks: Family::default(),
            events: Family::default(),
            skipped_items: Counter::default(),
            in_flight: Gauge::default(),
            // 0.5 ms .. ~8 s: a PubAck on a healthy broker takes about a millisecond, a broker
            // failing over takes seconds.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            nats: Arc::default(),
        }
    }
}

impl Metrics {
    /// Adds these metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "instantchat_webhooks",
            "Webhook POSTs by outcome",
            self.webhooks.clone(),
        );
        registry.register(
            "instantchat_events_published",
            "Normalized events acknowledged by the broker, by type and whether the broker had it already",
            self.events.clone(),
        );
        registry.register(
            "instantchat_webhook_items_skipped",
            "Items of known webhooks that could not become an event (their body went to the rejected subject)",
            self.skipped_items.clone(),
        );
        registry.register_with_unit(
            "instantchat_webhook_duration",
            "Time from request to answer of webhook POSTs, publish included",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "instantchat_webhooks_in_flight",
            "Webhook POSTs being read, verified or published right now (a broker that is slow to \
             acknowledge shows here first)",
            self.in_flight.clone(),
        );
        let nats = self.nats.clone();
        registry.register_collector(Box::new(ProbeGauge::new(
            "instantchat_ingest_nats_connected",
            "1 while ingest's NATS connection is up, else 0",
            move || {
                nats.get()
                    .map(|c| i64::from(c.connection_state() == State::Connected))
            },
        )));
    }

    /// Reports `client`'s connection state as `instantchat_ingest_nats_connected`.
    pub fn watch_nats(&self, client: async_nats::Client) {
        let _ = self.nats.set(client);
    }

    pub(crate) fn webhook(&self, outcome: Outcome, elapsed: Duration) {
        self.webhooks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a webhook POST in flight until the guard is dropped (answered, or the connection
    /// gone).
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub(crate) fn event(&self, event_type: &str, duplicate: bool) {
        self.events
            .get_or_create(&EventLabels {
                event_type: event_type.to_owned(),
                duplicate,
            })
            .inc();
    }

    pub(crate) fn skipped(&self, items: usize) {
        self.skipped_items.inc_by(items as u64);
    }
}

/// One webhook POST counted in `instantchat_webhooks_in_flight` while it lives.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
