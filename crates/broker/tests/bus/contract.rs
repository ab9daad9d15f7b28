//! The `EventBus` contract, one set of cases run against both buses: the in-process
//! `MemoryBus` and the JetStream `NatsBus` on a real `nats-server`. What the gateway relies on
//! (dedup, `StartAt::After`, replay with its counts, the epoch) must hold on both, so the single
//! process and the distributed system behave alike. Every "nothing more arrives" is a sentinel
//! published last and awaited: delivery is in seq order.

use std::sync::Arc;

use futures::StreamExt;
use instantchat_broker::{EventBus, EventStream, Interest, MemoryBus, Retention, StartAt};
use instantchat_testsupport::NatsServer;

use crate::support::{WAIT, bus, event, next, ready};

/// The ids `s` yields up to and including `sentinel`'s.
async fn until(s: &mut EventStream, sentinel: &str) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    loop {
        let d = next(s).await;
        let id = d.event.id.clone();
        got.push((d.seq, id.clone()));
        if id == format!("comments:{sentinel}") {
            return got;
        }
    }
}

async fn nats_bus(server: &NatsServer) -> Arc<dyn EventBus> {
    Arc::new(bus(server, Retention::default()).await)
}

fn memory_bus() -> Arc<dyn EventBus> {
    Arc::new(MemoryBus::new(Retention::default()))
}

/// Runs `case` against both buses.
macro_rules! contract {
    ($name:ident, $case:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$case(super::memory_bus()).await;
            }

            #[tokio::test]
            async fn nats() {
                let server = instantchat_testsupport::NatsServer::start_new();
                super::$case(super::nats_bus(&server).await).await;
            }
        }
    };
}

contract!(dedup, publishing_again_stores_nothing_new);
contract!(start_after, start_after_begins_exactly_after_the_seq);
contract!(start_new, start_new_begins_with_the_next_event);
contract!(replay, replay_knows_its_size_and_yields_exactly_the_backlog);
contract!(epoch, the_epoch_names_one_history);

async fn publishing_again_stores_nothing_new(bus: Arc<dyn EventBus>) {
    let first = bus
        .publish(vec![event("a", "1"), event("a", "2")])
        .await
        .unwrap();
    assert!(first.iter().all(|ack| !ack.duplicate));
    assert!(first[1].seq > first[0].seq);
    let again = bus.publish(vec![event("a", "1")]).await.unwrap();
    assert_eq!(again[0].seq, first[0].seq, "the stored event's seq");
    assert!(again[0].duplicate);
    assert_eq!(bus.last_seq().await.unwrap(), first[1].seq);
}

async fn start_after_begins_exactly_after_the_seq(bus: Arc<dyn EventBus>) {
    let acks = bus
        .publish(vec![
            event("a", "1"),
            event("b", "2"),
            event("a", "3"),
            event("a", "4"),
        ])
        .await
        .unwrap();
    // After the first: the stored ones of its account that follow, then live ones, in order.
    let mut sub = bus
        .subscribe(Interest::accounts(["a"]), StartAt::After(acks[0].seq))
        .await
        .unwrap();
    bus.publish(vec![event("b", "5"), event("a", "end")])
        .await
        .unwrap();
    let got = until(&mut sub, "end").await;
    let ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["comments:3", "comments:4", "comments:end"]);
    assert_eq!(got[0].0, acks[2].seq);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "seq order");
}

async fn start_new_begins_with_the_next_event(bus: Arc<dyn EventBus>) {
    bus.publish(vec![event("a", "old")]).await.unwrap();
    let mut sub = bus.subscribe(Interest::All, StartAt::New).await.unwrap();
    bus.publish(vec![event("b", "new"), event("a", "end")])
        .await
        .unwrap();
    let ids: Vec<String> = until(&mut sub, "end")
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids, ["comments:new", "comments:end"]);
}

async fn replay_knows_its_size_and_yields_exactly_the_backlog(bus: Arc<dyn EventBus>) {
    let acks = bus
        .publish(vec![
            event("a", "1"),
            event("b", "2"),
            event("a", "3"),
            event("c", "4"),
            event("a", "5"),
        ])
        .await
        .unwrap();
    let replay = bus
        .replay(Interest::accounts(["a", "c"]), acks[0].seq)
        .await
        .unwrap();
    assert!(replay.complete);
    assert_eq!(replay.until_seq, acks[4].seq);
    assert_eq!(replay.pending, 3, "known before anything is read");
    assert_eq!(replay.epoch, bus.epoch().await.unwrap());
    let ids: Vec<String> = replay
        .events
        .map(|d| d.unwrap().event.id.clone())
        .collect()
        .await;
    assert_eq!(ids, ["comments:3", "comments:4", "comments:5"]);
    // From the end: nothing, and complete; from beyond it: another history's seq.
    let at_end = bus.replay(Interest::All, acks[4].seq).await.unwrap();
    assert!(at_end.complete);
    assert_eq!(at_end.pending, 0);
    assert!(
        !bus.replay(Interest::All, acks[4].seq + 100)
            .await
            .unwrap()
            .complete
    );
}

async fn the_epoch_names_one_history(bus: Arc<dyn EventBus>) {
    let before = bus.epoch().await.unwrap();
    bus.publish(vec![event("a", "1")]).await.unwrap();
    assert_eq!(
        bus.epoch().await.unwrap(),
        before,
        "publishing keeps the history"
    );
    assert!(!before.to_string().is_empty());
}

/// NATS only (the in-process bus lives and dies with its process): what was acknowledged before
/// the server restarts is replayed after it, with the same seqs and the same epoch, and a live
/// subscription started after the last seq seen continues there.
#[tokio::test]
async fn acknowledged_events_are_replayed_after_a_nats_restart() {
    let mut server = NatsServer::start_new();
    let bus = nats_bus(&server).await;
    let acks = bus
        .publish(vec![event("a", "1"), event("a", "2"), event("b", "3")])
        .await
        .unwrap();
    let epoch = bus.epoch().await.unwrap();

    server.stop();
    server.start();
    ready(&*bus, "the bus ready again after the restart", WAIT).await;

    assert_eq!(bus.epoch().await.unwrap(), epoch, "the same history");
    let replay = bus.replay(Interest::accounts(["a"]), 0).await.unwrap();
    assert!(replay.complete);
    assert_eq!(replay.pending, 2);
    let got: Vec<(u64, String)> = replay
        .events
        .map(|d| {
            let d = d.unwrap();
            (d.seq, d.event.id.clone())
        })
        .collect()
        .await;
    assert_eq!(
        got,
        [
            (acks[0].seq, "comments:1".to_owned()),
            (acks[1].seq, "comments:2".to_owned())
        ]
    );
    let mut sub = bus
        .subscribe(Interest::accounts(["a"]), StartAt::After(acks[1].seq))
        .await
        .unwrap();
    bus.publish(vec![event("a", "end")]).await.unwrap();
    let ids: Vec<String> = until(&mut sub, "end")
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(ids, ["comments:end"]);
}
