//! Resumes waiting together share one read of the stream, against a real nats-server, and each
//! gets exactly its own part of it.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use instantchat_broker::{EventBus, Interest, NatsBus, Outgoing, Retention, TraceContext};
use instantchat_event::Event;
use instantchat_gateway::GatewayArgs;
use instantchat_gateway::hub::Hub;
use instantchat_testsupport::NatsServer;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_waiting_for_a_slot_share_one_read() {
    let nats = NatsServer::start_new();
    let bus = NatsBus::connect(&nats.url(), "test", Retention::default())
        .await
        .expect("connect");
    tokio::time::timeout(WAIT, async {
        while bus.check_ready().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bus ready");
    // seq 1..=9: accounts a, b, c in turn.
    let mut batch = Vec::new();
    for n in 0..9 {
        batch.push(event(["a", "b", "c"][n as usize % 3], n));
    }
    bus.publish(batch).await.expect("published");

    let args = GatewayArgs::try_parse_from([
        "instantchat-gateway",
        "--jwt-secret",
        "a-jwt-secret-for-this-test",
    ])
    .expect("flags parse");
    let hub = Hub::new(args.gateway.settings().expect("settings"), Arc::new(bus));

    // Every replay slot is taken, so the three resumes below wait, together.
    let slots = hub.replay_slots.available_permits();
    let held = hub
        .replay_slots
        .clone()
        .acquire_many_owned(u32::try_from(slots).expect("slots"))
        .await
        .expect("slots");
    let resume = |since: u64, interest: Interest| {
        let hub = hub.clone();
        tokio::spawn(async move { hub.shared_replay(since, &interest).await })
    };
    let first = resume(4, Interest::accounts(["a".to_owned()]));
    let second = resume(2, Interest::accounts(["b".to_owned()]));
    let third = resume(7, Interest::All);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        hub.metrics.replay_reads.get(),
        0,
        "nothing read while no slot is free"
    );
    drop(held);

    let get = |task: tokio::task::JoinHandle<instantchat_gateway::replay::Shared>| async move {
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
    let alone = tokio::time::timeout(WAIT, hub.shared_replay(8, &Interest::All))
        .await
        .expect("served in time")
        .expect("read");
    assert_eq!(hub.metrics.replay_reads.get(), 2);
    assert_eq!(alone.after(8).len(), 1);
}
