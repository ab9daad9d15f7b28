//! What the bus tests share: an event of one account, the next delivery within a bound, a NATS
//! bus that is ready.

use std::time::Duration;

use futures::StreamExt;
use instantchat_broker::{
    Delivered, EventBus, EventStream, NatsBus, Outgoing, Retention, TraceContext,
};
use instantchat_event::Event;
use instantchat_testsupport::NatsServer;

/// The longest any single wait may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A `comments` event of `account` with id `comments:<id>` and a trace context made from `id`.
pub fn event(account: &str, id: &str) -> Outgoing {
    Outgoing::event(
        Event {
            id: format!("comments:{id}"),
            event_type: "comments".into(),
            account_id: account.into(),
            details_json: "{}".into(),
            ..Default::default()
        },
        TraceContext {
            traceparent: Some(format!("00-{id:0>32}-00f067aa0ba902b7-01")),
            tracestate: None,
        },
    )
}

/// The next delivery, within [`WAIT`].
pub async fn next(s: &mut EventStream) -> Delivered {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("an event in time")
        .expect("open")
        .expect("ok")
}

/// A NATS bus on `server`, once it reports ready.
pub async fn bus(server: &NatsServer, retention: Retention) -> NatsBus {
    let bus = NatsBus::connect(&server.url(), "test", retention)
        .await
        .expect("connect");
    ready(&bus, "bus ready", WAIT).await;
    bus
}

/// Waits until `bus` says it is ready (connected, streams set up), failing with `what` after
/// `within`.
pub async fn ready<B: EventBus + ?Sized>(bus: &B, what: &str, within: Duration) {
    instantchat_testsupport::eventually(what, within, || async { bus.check_ready().await.is_ok() })
        .await;
}
