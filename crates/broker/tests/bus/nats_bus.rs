//! The JetStream bus against a real `nats-server` on a free port.

use std::time::Duration;

use futures::StreamExt;
use instantchat_broker::{BusError, EventBus, Interest, NatsBus, Outgoing, Retention, StartAt};
use instantchat_testsupport::NatsServer;

use crate::support::{WAIT, bus, event, next, ready};

#[tokio::test]
async fn publish_is_deduplicated_by_message_id_and_streams_are_idempotent() {
    let server = NatsServer::start_new();
    let first = bus(&server, Retention::default()).await;
    // A second service starting against the same streams must not fail.
    let second = bus(&server, Retention::default()).await;
    let acks = first
        .publish(vec![event("1", "a"), event("1", "b")])
        .await
        .unwrap();
    let again = second.publish(vec![event("1", "a")]).await.unwrap();
    assert!(!acks[0].duplicate && !acks[1].duplicate);
    assert_eq!(again[0].seq, acks[0].seq);
    assert!(again[0].duplicate);
}

#[tokio::test]
async fn subscription_carries_only_its_account_with_trace_context() {
    let server = NatsServer::start_new();
    let bus = bus(&server, Retention::default()).await;
    let mut one = bus
        .subscribe(Interest::accounts(["1"]), StartAt::New)
        .await
        .unwrap();
    let mut all = bus.subscribe(Interest::All, StartAt::New).await.unwrap();
    bus.publish(vec![event("2", "x"), event("1", "y")])
        .await
        .unwrap();
    let got = next(&mut one).await;
    assert_eq!(got.event.id, "comments:y");
    assert_eq!(
        got.trace.traceparent.as_deref(),
        Some("00-0000000000000000000000000000000y-00f067aa0ba902b7-01")
    );
    assert_eq!(next(&mut all).await.event.id, "comments:x");
    assert_eq!(next(&mut all).await.event.id, "comments:y");
    // A sentinel of account 1 published after another of account 2: delivery is in seq order,
    // so anything of account 2 would come before it.
    bus.publish(vec![event("2", "x2"), event("1", "sentinel")])
        .await
        .unwrap();
    assert_eq!(
        next(&mut one).await.event.id,
        "comments:sentinel",
        "nothing of account 2"
    );
}

#[tokio::test]
async fn replay_returns_the_backlog_of_the_accounts_and_flags_aged_out_events() {
    let server = NatsServer::start_new();
    let bus = bus(
        &server,
        Retention {
            max_events: 4,
            ..Retention::default()
        },
    )
    .await;
    bus.publish(
        (0..6)
            .map(|i| event(if i % 2 == 0 { "1" } else { "2" }, &i.to_string()))
            .collect(),
    )
    .await
    .unwrap();
    // Seqs 1..=6; the stream keeps 3..=6.
    let replay = bus.replay(Interest::accounts(["1"]), 2).await.unwrap();
    assert!(replay.complete);
    assert_eq!(replay.until_seq, 6);
    let seqs: Vec<u64> = replay.events.map(|d| d.unwrap().seq).collect().await;
    assert_eq!(seqs, vec![3, 5]);
    assert!(
        !bus.replay(Interest::All, 0).await.unwrap().complete,
        "seqs 1 and 2 are gone"
    );
    let nothing = bus.replay(Interest::accounts(["3"]), 2).await.unwrap();
    assert_eq!(nothing.events.count().await, 0);
    assert!(!bus.replay(Interest::All, 99).await.unwrap().complete);
}

#[tokio::test]
async fn a_subscription_survives_a_broker_restart_and_continues_with_what_is_published_after_it() {
    let mut server = NatsServer::start_new();
    let subscriber = bus(&server, Retention::default()).await;
    let publisher = bus(&server, Retention::default()).await;
    let mut sub = subscriber
        .subscribe(Interest::All, StartAt::New)
        .await
        .unwrap();
    publisher.publish(vec![event("1", "before")]).await.unwrap();
    assert_eq!(next(&mut sub).await.event.id, "comments:before");

    server.stop();
    tokio::time::timeout(WAIT, async {
        loop {
            match publisher.publish(vec![event("1", "down")]).await {
                Err(BusError::Unavailable) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(_) => panic!("a publish cannot be confirmed while the broker is down"),
            }
        }
    })
    .await
    .expect("publish fails fast once the client sees the outage");
    server.start();
    // The publisher reconnects by itself; retry as Meta would.
    let ack = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(acks) = publisher.publish(vec![event("1", "after")]).await {
                break acks[0];
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("publisher recovers");
    let got = next(&mut sub).await;
    assert_eq!(
        (got.event.id.as_str(), got.seq),
        ("comments:after", ack.seq)
    );
    // Anything twice would come before a sentinel published last.
    publisher
        .publish(vec![event("1", "sentinel")])
        .await
        .unwrap();
    assert_eq!(
        next(&mut sub).await.event.id,
        "comments:sentinel",
        "nothing twice"
    );
}

#[tokio::test]
async fn batches_larger_than_the_acks_in_flight_are_published_whole() {
    let server = NatsServer::start_new();
    let bus = bus(&server, Retention::default()).await;
    // More publishes than the JetStream context lets await their PubAcks at once (5,000), in
    // one batch and in several at the same time.
    let big: Vec<Outgoing> = (0..6_000).map(|i| event("1", &format!("big{i}"))).collect();
    let acks = tokio::time::timeout(Duration::from_secs(60), bus.publish(big))
        .await
        .expect("a batch of 6,000 in time")
        .expect("published");
    assert_eq!(acks.len(), 6_000);
    assert!(acks.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let batches = (0..4).map(|b| {
        let bus = bus.clone();
        let batch: Vec<Outgoing> = (0..2_000)
            .map(|i| event("2", &format!("b{b}-{i}")))
            .collect();
        async move { bus.publish(batch).await }
    });
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(batches))
        .await
        .expect("four batches of 2,000 at once in time");
    for acks in results {
        let acks = acks.expect("published");
        assert_eq!(acks.len(), 2_000);
        assert!(acks.iter().all(|a| !a.duplicate));
    }
    assert_eq!(bus.last_seq().await.unwrap(), 14_000);
}

#[tokio::test]
async fn more_stream_replicas_than_servers_is_an_error_that_says_so() {
    let server = NatsServer::start_new();
    let bus = NatsBus::connect(
        &server.url(),
        "test",
        Retention {
            replicas: 3,
            ..Retention::default()
        },
    )
    .await
    .expect("connect");
    let err = bus
        .ensure_streams()
        .await
        .expect_err("one server cannot hold 3 replicas");
    assert!(err.to_string().contains("replicas"), "{err}");
    assert!(bus.check_ready().await.is_err());
}

#[tokio::test]
async fn with_three_replicas_the_streams_outlive_their_leader() {
    use instantchat_event::subjects::{EVENTS_STREAM, WEBHOOKS_STREAM};
    let mut cluster = NatsServer::start_cluster(3);
    let with_replicas = |replicas| Retention {
        replicas,
        ..Retention::default()
    };
    let ready = |bus: NatsBus| async move {
        // A new cluster elects its leaders first.
        ready(
            &bus,
            "streams set up on the cluster",
            Duration::from_secs(30),
        )
        .await;
        bus
    };
    // Streams made with one copy, as an earlier deployment left them; then ingest starts with
    // three and the streams are updated in place. The client stays on n0; it learns the other
    // servers from the cluster.
    drop(
        ready(
            NatsBus::connect(&cluster[0].url(), "test", with_replicas(1))
                .await
                .unwrap(),
        )
        .await,
    );
    let bus = ready(
        NatsBus::connect(&cluster[0].url(), "test", with_replicas(3))
            .await
            .unwrap(),
    )
    .await;
    // While the new copies catch up a publish may time out (ingest answers 503; Meta retries,
    // and the message id keeps a retry from being stored twice).
    let publish_until_acked = |id: &'static str| {
        let bus = bus.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match bus.publish(vec![event("1", id)]).await {
                        Ok(acks) => break acks,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{id} published in time"))
        }
    };
    let first = publish_until_acked("before").await;

    let nats = async_nats::connect(cluster[0].url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(nats.clone());
    for name in [EVENTS_STREAM, WEBHOOKS_STREAM] {
        // The cluster's answer may lag the update by a moment.
        let mut seen = Vec::new();
        let updated = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let replicas = match js.get_stream(name).await {
                    Ok(mut s) => s.info().await.map(|i| i.config.num_replicas).ok(),
                    Err(_) => None,
                };
                if replicas == Some(3) {
                    break;
                }
                seen.push(replicas);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(updated.is_ok(), "{name} kept {seen:?} replicas");
    }
    // Stop the events stream's leader, so that the two left must elect one. Not n0, which the
    // client uses (losing it is a reconnect, tested elsewhere): if n0 leads, it steps down first.
    let leader = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut stream = js.get_stream(EVENTS_STREAM).await.expect("stream");
            let leader = stream
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()));
            match leader {
                Some(l) if l != cluster[0].name() => break l,
                Some(_) => {
                    let _ = nats
                        .request(
                            format!("$JS.API.STREAM.LEADER.STEPDOWN.{EVENTS_STREAM}"),
                            "".into(),
                        )
                        .await;
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a leader other than n0");
    let victim = cluster
        .iter()
        .position(|s| s.name() == leader)
        .expect("the leader is one of ours");
    cluster[victim].stop();

    // Publishing goes on once the two left elect a new leader.
    let second = publish_until_acked("after").await;
    assert!(second[0].seq > first[0].seq);
    // Both are kept; a read may be refused while the cluster settles, as a gateway's would.
    let ids = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match bus.replay(Interest::accounts(["1"]), 0).await {
                Ok(replay) => {
                    let ids: Vec<String> = replay
                        .events
                        .map(|d| d.map(|d| d.event.id.clone()))
                        .filter_map(|r| async move { r.ok() })
                        .collect()
                        .await;
                    if ids.len() == 2 {
                        break ids;
                    }
                    eprintln!("replay gave {ids:?}; again");
                }
                Err(e) => eprintln!("replay refused ({e}); again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a replay of both events in time");
    assert_eq!(ids, vec!["comments:before", "comments:after"]);
}

#[tokio::test]
async fn a_message_the_stream_refuses_fails_its_batch_with_the_brokers_reason() {
    let server = NatsServer::start_new();
    let bus = bus(&server, Retention::default()).await;
    bus.publish(vec![event("1", "first")]).await.unwrap();
    // An operator's limit: one event, and new ones refused rather than old ones dropped.
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(nats);
    let mut config = js
        .get_stream(instantchat_event::subjects::EVENTS_STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    config.max_messages = 1;
    config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    js.update_stream(config).await.expect("updated");
    let refused = tokio::time::timeout(WAIT, bus.publish(vec![event("1", "second")]))
        .await
        .expect("an answer in time");
    match refused {
        Err(BusError::Publish(reason)) => {
            assert!(reason.contains("maximum messages exceeded"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A redelivery of what is stored is still acknowledged, as the duplicate it is.
    let again = bus.publish(vec![event("1", "first")]).await.unwrap();
    assert!(again[0].duplicate);
}
