//! Gateway metrics in Prometheus text format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub authenticated: Gauge,
    pub auth_failures: Family<Labels, Counter>,
    pub delivered: Family<Labels, Counter>,
    pub received: Counter,
    pub slow_disconnects: Counter,
    pub rate_limited: Family<Labels, Counter>,
    pub request_errors: Counter,
    pub replays: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("instantchat_gateway");
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
            registry: Registry::default(),
        };
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
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
        vec![(name, value.into())]
    }
}
