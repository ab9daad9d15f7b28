//! The hub puts one gateway's parts together: its settings, the bus, the metrics, the limits,
//! the fan-out, the replays, the token expiries and the Socket.IO server. It owns no state of
//! its own beyond whether the gateway is draining; each part owns its concern.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use instantchat_broker::EventBus;
use instantchat_event::{event_type_label, now_ms};
use instantchat_telemetry::metrics::ProbeGauge;
use serde_json::json;
use socketioxide::SocketIo;
use tokio::sync::watch;

use crate::config::GatewaySettings;
use crate::expiry::{self, Due, Expiries};
use crate::fanout::Fanout;
use crate::limits::{LimitSettings, Limits};
use crate::metrics::Metrics;
use crate::replay::Replays;
use crate::session::{Client, SessionRef};

/// One gateway's parts.
#[derive(Debug)]
pub struct Hub {
    pub settings: GatewaySettings,
    pub bus: Arc<dyn EventBus>,
    pub metrics: Metrics,
    pub limits: Arc<Limits>,
    pub fanout: Arc<Fanout>,
    pub replays: Arc<Replays>,
    pub expiries: Expiries,
    io: OnceLock<SocketIo>,
    draining: AtomicBool,
}

impl Hub {
    pub fn new(settings: GatewaySettings, bus: Arc<dyn EventBus>) -> Arc<Self> {
        let metrics = Metrics::default();
        let limits = Limits::new(LimitSettings {
            max_connections_per_user: settings.max_connections_per_user,
            ip_connect_rate: settings.ip_connect_rate,
            max_pending_per_ip: settings.max_pending_per_ip,
            max_pending: settings.max_pending_sessions,
        });
        let counted = limits.clone();
        metrics.register(|registry| {
            registry.register_collector(Box::new(ProbeGauge::new(
                "instantchat_gateway_pending_sessions",
                "Engine.io sessions without a Socket.IO connect yet",
                move || Some(i64::try_from(counted.pending()).unwrap_or(i64::MAX)),
            )));
        });
        Arc::new(Hub {
            fanout: Fanout::new(bus.clone(), metrics.clone()),
            replays: Replays::new(bus.clone(), metrics.clone(), settings.replay_max_events),
            settings,
            bus,
            metrics,
            limits,
            expiries: Expiries::default(),
            io: OnceLock::new(),
            draining: AtomicBool::new(false),
        })
    }

    pub(crate) fn set_io(&self, io: SocketIo) {
        let counted = io.clone();
        self.metrics
            .count_subscriptions_with(move || subscriptions(&counted));
        let _ = self.io.set(io);
    }

    pub fn io(&self) -> Option<&SocketIo> {
        self.io.get()
    }

    /// A connected socket with its session.
    pub fn client(&self, sid: socketioxide::socket::Sid) -> Option<Client> {
        let socket = self.io()?.get_socket(sid)?;
        let session = socket.extensions.get::<SessionRef>()?;
        Some(Client::new(socket, session))
    }

    /// Marks the gateway as draining: not ready, no new sessions.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the fan-out, token-expiry and silence tasks; they stop when `shutdown` turns
    /// true.
    pub fn spawn_background(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.fanout.clone().run(shutdown.clone()));
        let hub = self.clone();
        let expiries = shutdown.clone();
        tokio::spawn(async move {
            let grace = hub.settings.auth_expiry_grace;
            expiry::run(&hub.expiries.clone(), grace, expiries, |due| {
                hub.expire(due)
            })
            .await;
        });
        if let (Some(timeout), Some(io)) = (self.settings.heartbeat_timeout, self.io().cloned()) {
            tokio::spawn(crate::silence::disconnect_silent(io, timeout, shutdown));
        }
    }

    /// A token expiry came due: `auth_expired` at the expiry, the disconnect after the grace,
    /// unless the socket authenticated again meanwhile (another generation).
    fn expire(&self, due: Due) -> bool {
        let (sid, generation) = match due {
            Due::Expired { sid, generation } | Due::GraceOver { sid, generation } => {
                (sid, generation)
            }
        };
        let Some(client) = self.client(sid) else {
            return false;
        };
        if !client.socket.connected() || client.session.lock().auth_generation() != generation {
            return false;
        }
        match due {
            Due::Expired { .. } => {
                let _ = client
                    .socket
                    .emit("auth_expired", &json!({ "timestamp": now_ms() }));
            }
            Due::GraceOver { .. } => {
                tracing::debug!(%sid, "token expired; disconnecting");
                let _ = client.socket.disconnect();
            }
        }
        true
    }
}

/// Sockets per event type (the types named by the server's own list, the rest as `other`).
fn subscriptions(io: &SocketIo) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for socket in io.sockets() {
        if let Some(session) = socket.extensions.get::<SessionRef>() {
            for t in session.lock().event_types() {
                *counts.entry(event_type_label(t)).or_default() += 1;
            }
        }
    }
    counts
}
