//! `ingest --floor-only` against a real nats-server: the floor publishes with ingest's own
//! publisher, every acknowledged webhook's messages are in the streams once, and the CPU of the
//! thread that makes the messages is reported apart from the bench's, so that the report can
//! say what publishing alone costs.

use std::time::Duration;

use instantchat_broker::{NatsBus, Retention};
use instantchat_testsupport::NatsServer;

mod common;

/// A nats-server with both streams, set up as ingest sets them up, and the client that did it.
async fn nats_with_streams() -> (NatsServer, NatsBus) {
    let nats = NatsServer::start_new();
    let owner = NatsBus::connect(&nats.url(), "streams-owner", Retention::default())
        .await
        .unwrap();
    (nats, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_stores_every_message_once_and_reports_publishing_apart() {
    // The floor only uses the streams.
    let (nats, _owner) = nats_with_streams().await;
    let (report, stdout) = common::bench_ingest(
        &[
            "--floor-only",
            "--nats-url",
            &nats.url(),
            "--senders",
            "8",
            "--max-webhooks",
            "400",
            "--warmup",
            "0",
            "--duration",
            "20",
            "--max-seconds",
            "60",
        ],
        Duration::from_secs(90),
    )
    .await;
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{phases:?}");
    let floor = &phases[0];
    assert_eq!(floor["name"], "floor");
    assert_eq!(floor["accepted"], 400);
    assert_eq!(floor["failed"], 0);
    let c = &floor["completeness"];
    assert_eq!(c["exact"], true, "{c}");
    assert_eq!(c["expected_bodies"], 400);
    assert_eq!(c["bodies_once"], 400);
    assert!(c["events_once"].as_u64().unwrap() >= 400, "{c}");
    // The message thread is a part of the bench: reported apart, never more than the whole.
    let cpu = &floor["cpu_us_per_webhook"];
    let (bench, messages) = (
        cpu["bench"].as_f64().unwrap(),
        cpu["bench/messages"].as_f64().expect("no bench/messages"),
    );
    assert!(bench > 0.0 && messages <= bench, "{cpu}");
    assert!(
        stdout.contains("floor: publishing alone"),
        "no publishing-alone row:\n{stdout}"
    );
}

/// The fast-ingest batch publisher the floor can use instead (`--floor-publisher fast-batch`):
/// a webhook published again in a later batch is stored once, its `Nats-Msg-Id` deduplicated
/// inside the batch as outside one, and the webhooks with it are stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_batch_stores_each_message_once_and_dedups_a_repeat() {
    use instantchat_bench::fast_batch::FastBatch;
    use instantchat_broker::Outgoing;
    use instantchat_event::subjects;

    let (_nats, owner) = nats_with_streams().await;
    let fast = FastBatch::start(owner.client().clone()).await.unwrap();
    let raw = |id: &str| {
        Outgoing::raw(
            subjects::WEBHOOK_RAW,
            format!("webhook:{id}"),
            bytes::Bytes::from(format!("body {id}")),
            Default::default(),
        )
    };
    let within = Duration::from_secs(10);
    // Two webhooks at once (one batch or two), then the first again with a new one.
    for pair in [["a", "b"], ["a", "c"]] {
        let (first, second) = tokio::time::timeout(within, async {
            tokio::join!(
                fast.publish(vec![raw(pair[0])]),
                fast.publish(vec![raw(pair[1])])
            )
        })
        .await
        .unwrap();
        first.unwrap();
        second.unwrap();
    }
    let js = async_nats::jetstream::new(owner.client().clone());
    let mut stream = js.get_stream(subjects::WEBHOOKS_STREAM).await.unwrap();
    let info = tokio::time::timeout(within, stream.info())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.state.messages, 3, "{:?}", info.state);
}
