//! Resumes waiting together share one read of the stream, against a real nats-server, and each
//! gets exactly its own part of it; a backlog too large to share is replayed by each socket.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use instantchat_broker::{EventBus, Interest, NatsBus, Outgoing, Retention, TraceContext};
use instantchat_event::Event;
use instantchat_gateway::GatewayArgs;
use instantchat_gateway::hub::Hub;
use instantchat_gateway::replay::MAX_SHARED_EVENTS;
use instantchat_testsupport::{NatsServer, SioClient};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn event(account: &str, n: u32) -> Outgoing {
    Outgoing::event(
        Event {
            id: format!("comments:{account}-{n}"),
            event_type: "comments".into(),
            account_id: account.into(),
            details_json: "{}".into(),
            ..Default::default()
        },
        TraceContext::default(),
    )
}

/// The bus that owns the streams, once they are set up.
async fn owner_bus(nats: &NatsServer) -> NatsBus {
    let bus = NatsBus::connect(&nats.url(), "test", Retention::default())
        .await
        .expect("connect");
    instantchat_testsupport::eventually("bus ready", WAIT, || async {
        bus.check_ready().await.is_ok()
    })
    .await;
    bus
}

/// A gateway's hub over `bus`.
fn hub(bus: NatsBus) -> Arc<Hub> {
    let args = GatewayArgs::try_parse_from([
        "instantchat-gateway",
        "--jwt-secret",
        "a-jwt-secret-for-this-test",
    ])
    .expect("flags parse");
    Hub::new(args.gateway.settings().expect("settings"), Arc::new(bus))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_waiting_for_a_slot_share_one_read() {
    let nats = NatsServer::start_new();
    let bus = owner_bus(&nats).await;
    // seq 1..=9: accounts a, b, c in turn.
    let mut batch = Vec::new();
    for n in 0..9 {
        batch.push(event(["a", "b", "c"][n as usize % 3], n));
    }
    bus.publish(batch).await.expect("published");

    let hub = hub(bus);

    // Every replay slot is taken, so the three resumes below wait, together.
    let slots = hub.replays.slots().available_permits();
    let held = hub
        .replays
        .slots()
        .clone()
        .acquire_many_owned(u32::try_from(slots).expect("slots"))
        .await
        .expect("slots");
    let resume = |since: u64, interest: Interest| {
        let hub = hub.clone();
        tokio::spawn(async move { hub.replays.shared(since, &interest).await })
    };
    let first = resume(4, Interest::accounts(["a".to_owned()]));
    let second = resume(2, Interest::accounts(["b".to_owned()]));
    let third = resume(7, Interest::All);
    instantchat_testsupport::wait_for("the three resumes to wait together", WAIT, || {
        hub.replays.waiting() == 3
    })
    .await;
    assert_eq!(
        hub.metrics.replay_reads.get(),
        0,
        "nothing read while no slot is free"
    );
    drop(held);

    let get = |task: tokio::task::JoinHandle<instantchat_gateway::replay::SharedRead>| async move {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("served in time")
            .expect("task")
            .expect("read")
    };
    let (first, second, third) = (get(first).await, get(second).await, get(third).await);
    assert_eq!(
        hub.metrics.replay_reads.get(),
        1,
        "one read served all three"
    );
    assert!(Arc::ptr_eq(&first, &second) && Arc::ptr_eq(&second, &third));
    // The read starts after the lowest since (2) and covers every account asked for (all).
    let seqs: Vec<u64> = first.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (3..=9).collect::<Vec<_>>());
    // Each resume takes what follows its own since.
    let after = |since: u64| -> Vec<(u64, String)> {
        first
            .after(since)
            .iter()
            .map(|e| (e.seq, e.account_id.clone()))
            .collect()
    };
    assert_eq!(after(7), vec![(8, "b".to_owned()), (9, "c".to_owned())]);
    assert_eq!(after(9), vec![]);
    assert!(first.complete_for(2) && first.complete_for(9));
    assert!(!first.complete_for(10), "a since beyond the stream's end");
    assert!(
        !first.truncated,
        "a small backlog is shared, not replayed per socket"
    );

    // A lone resume on a quiet gateway reads at once, alone.
    let alone = tokio::time::timeout(WAIT, hub.replays.shared(8, &Interest::All))
        .await
        .expect("served in time")
        .expect("read");
    assert_eq!(hub.metrics.replay_reads.get(), 2);
    assert_eq!(alone.after(8).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_too_large_to_share_is_replayed_by_the_socket_itself() {
    let total = MAX_SHARED_EVENTS + 50;
    let nats = NatsServer::start_new();
    let bus = owner_bus(&nats).await;
    let numbers: Vec<u32> = (0..u32::try_from(total).expect("count")).collect();
    for chunk in numbers.chunks(1000) {
        let batch = chunk.iter().map(|&n| event("big", n)).collect();
        tokio::time::timeout(WAIT, bus.publish(batch))
            .await
            .expect("published in time")
            .expect("published");
    }

    // The shared read does not take in a backlog over its bound, and says so...
    let reader = NatsBus::connect_reader(&nats.url(), "reader")
        .await
        .expect("reader");
    let hub = hub(reader);
    let shared = tokio::time::timeout(
        WAIT,
        hub.replays
            .shared(0, &Interest::accounts(["big".to_owned()])),
    )
    .await
    .expect("served in time")
    .expect("read");
    assert!(shared.truncated);
    assert!(
        shared.events.is_empty(),
        "a backlog of {total} (over {MAX_SHARED_EVENTS}) is known before it is read"
    );

    // ...and a socket resuming from the start gets all of it anyway, in order, by its own read.
    let gateway =
        crate::support::start_gateway(&nats.url(), &["--replay-max-events", "30000"]).await;
    let auth = json!({ "token": crate::support::token("backlog", &["big"]) });
    let mut client = SioClient::connect(&gateway.url, Some(&auth))
        .await
        .expect("connects");
    let confirmed = client
        .emit_with_ack(
            "subscribe",
            &json!({ "eventTypes": ["comments"], "userId": "backlog", "timestamp": 1, "since": 0 }),
            WAIT,
        )
        .await
        .expect("subscribed");
    assert_eq!(confirmed["eventTypes"], json!(["comments"]), "{confirmed}");
    let mut seqs = Vec::with_capacity(total);
    let done = loop {
        let (name, data) = client
            .next_event(WAIT)
            .await
            .unwrap_or_else(|e| panic!("the replay goes on after {} events: {e}", seqs.len()));
        match name.as_str() {
            "webhook_event" => seqs.push(data["seq"].as_u64().expect("seq")),
            "replay_complete" => break data,
            _ => {}
        }
    };
    assert_eq!(seqs.len(), total, "every stored event, once");
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "in seq order");
    assert_eq!(done["count"], json!(total));
    assert_eq!(done["complete"], json!(true));
    client.disconnect().await;
    gateway.shut_down("gateway").await;
}
