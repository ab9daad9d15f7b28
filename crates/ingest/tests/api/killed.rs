//! Ingest killed (SIGKILL) with a burst of webhooks in flight: every webhook answered 200 is
//! already stored whole, and Meta's retry of the others (the same bodies, to a restarted
//! ingest) stores each event exactly once, whatever part of them was stored before the kill.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use instantchat_event::subjects;
use instantchat_testsupport::NatsServer;

use crate::helpers::{BINARY_SECRET, IngestProcess, TIMEOUT, comment, eventually, stored_events};

/// Webhooks in the burst, and senders POSTing them at once.
const WEBHOOKS: usize = 600;
const SENDERS: usize = 32;
/// Answered webhooks before the kill.
const KILL_AFTER: usize = 100;

/// Webhook `i`: every third one is a Meta messaging batch of three events on two accounts, the
/// others a single comment, so that a kill can fall between the messages of one webhook.
fn webhook(i: usize) -> (Vec<u8>, Vec<String>) {
    if i.is_multiple_of(3) {
        let item = |k: usize| {
            format!(
                r#"{{"sender":{{"id":"555"}},"recipient":{{"id":"17841"}},"timestamp":1744789255335,"message":{{"mid":"m_{i}_{k}","text":"burst {i} {k}"}}}}"#
            )
        };
        let body = format!(
            r#"{{"object":"instagram","entry":[{{"id":"17841","time":1744789255994,"messaging":[{},{}]}},{{"id":"17842","time":1744789255994,"messaging":[{}]}}]}}"#,
            item(0),
            item(1),
            item(2)
        );
        let ids = (0..3).map(|k| format!("messages:m_{i}_{k}")).collect();
        (body.into_bytes(), ids)
    } else {
        let id = format!("burst-{i}");
        (
            comment(&id, &format!("acct_{}", i % 4)),
            vec![format!("comments:{id}")],
        )
    }
}

async fn post(http: &reqwest::Client, address: &str, body: &[u8]) -> Result<u16, reqwest::Error> {
    http.post(format!("{address}/api/webhooks/instagram"))
        .header(
            "x-hub-signature-256",
            instantchat_instagram::sign(BINARY_SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .map(|r| r.status().as_u16())
}

/// How often each event id is stored.
async fn stored_counts(nats_url: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, event) in stored_events(nats_url).await {
        *counts.entry(event.id).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn webhooks_in_flight_when_ingest_is_killed_are_stored_once_after_the_retry() {
    let nats = NatsServer::start_new();
    let mut ingest = IngestProcess::start(&nats.url()).await;
    let webhooks: Arc<Vec<(Vec<u8>, Vec<String>)>> = Arc::new((0..WEBHOOKS).map(webhook).collect());
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();

    // The burst: each sender POSTs its share until the process is gone.
    let answered = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (webhooks, http, answered) = (webhooks.clone(), http.clone(), answered.clone());
            let address = ingest.address.clone();
            tokio::spawn(async move {
                let mut ok = Vec::new();
                for i in (s..WEBHOOKS).step_by(SENDERS) {
                    match post(&http, &address, &webhooks[i].0).await {
                        Ok(200) => {
                            ok.push(i);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(status) => panic!("webhook {i} answered {status} before the kill"),
                        // Killed: this one and the rest are Meta's to retry.
                        Err(_) => break,
                    }
                }
                ok
            })
        })
        .collect();
    eventually("the first webhooks are answered", || async {
        answered.load(Ordering::Relaxed) >= KILL_AFTER
    })
    .await;
    ingest.kill().await;
    let mut acknowledged = HashSet::new();
    for sender in senders {
        acknowledged.extend(sender.await.expect("a sender"));
    }
    assert!(
        acknowledged.len() >= KILL_AFTER && acknowledged.len() < WEBHOOKS,
        "the kill fell inside the burst: {} of {WEBHOOKS} answered",
        acknowledged.len()
    );

    // Every webhook answered 200 is stored whole, before anything is retried.
    let stored = stored_counts(&nats.url()).await;
    for &i in &acknowledged {
        for id in &webhooks[i].1 {
            assert_eq!(stored.get(id), Some(&1), "{id} of answered webhook {i}");
        }
    }
    let of_acknowledged: usize = acknowledged.iter().map(|&i| webhooks[i].1.len()).sum();
    eprintln!(
        "{} of {WEBHOOKS} webhooks answered before the kill; {} events of unanswered ones were \
         already stored",
        acknowledged.len(),
        stored.len() - of_acknowledged
    );

    // Meta retries every webhook it got no 200 for (and some it did), to a restarted ingest.
    let ingest = IngestProcess::start_on(&nats.url(), ingest.port).await;
    let retried: Vec<usize> = (0..WEBHOOKS)
        .filter(|i| !acknowledged.contains(i))
        .chain(acknowledged.iter().copied().take(20))
        .collect();
    for i in retried {
        let status = post(&http, &ingest.address, &webhooks[i].0)
            .await
            .expect("the restarted ingest answers");
        assert_eq!(status, 200, "retry of webhook {i}");
    }

    let stored = stored_counts(&nats.url()).await;
    let expected: HashSet<&String> = webhooks.iter().flat_map(|(_, ids)| ids).collect();
    let repeated: Vec<(&String, &usize)> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "stored more than once: {repeated:?}");
    let found: HashSet<&String> = stored.keys().collect();
    assert_eq!(
        found, expected,
        "every event of every webhook, nothing else"
    );

    // One raw body per webhook, too.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut raw = js.get_stream(subjects::WEBHOOKS_STREAM).await.unwrap();
    assert_eq!(
        raw.info().await.unwrap().state.messages,
        WEBHOOKS as u64,
        "one raw body per webhook"
    );
}
