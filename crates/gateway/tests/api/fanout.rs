//! The fan-out against a real nats-server: interest that follows clients coming and going never
//! holds up, loses or repeats the events of the clients that stay; an account joined, left and
//! joined again; the stated bound of what a gateway takes from NATS.
//!
//! Every wait ends on a fact: a sentinel event, published last and awaited, closes each
//! client's list (delivery is in seq order, so nothing of what came before can still arrive).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    Service, http, post_webhook, seed_body, sign, start_gateway, start_ingest, token,
};
use instantchat_testsupport::{NatsServer, SioClient};
use serde_json::json;

/// The longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);
/// The longest an event may take from ingest's 200 to a steady client while others come and
/// go: stated generously for a loaded CI machine; a stall of the old design took seconds.
const DELAY_BOUND: Duration = Duration::from_secs(2);

/// Publishes one event to `account` and returns its id and the instant ingest answered.
async fn publish(
    http: &reqwest::Client,
    ingest: &str,
    id: &str,
    account: &str,
) -> (String, Instant) {
    let body = seed_body(id, "comments", account);
    let signature = sign(&body);
    let (status, answer) = post_webhook(http, ingest, body, &signature, &[]).await;
    assert_eq!(status, 200, "{answer}");
    (format!("comments:{id}"), Instant::now())
}

/// A client subscribed to `comments` of the accounts its token names.
async fn subscribed(gateway: &Service, user: &str, accounts: &[&str]) -> SioClient {
    let auth = json!({ "token": token(user, accounts) });
    let client = SioClient::connect(&gateway.url, Some(&auth))
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    client
        .emit_with_ack("subscribe", &json!({ "eventTypes": ["comments"] }), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{user} subscribes: {e}"));
    client
}

/// Reads `client`'s events until `sentinel`; the ids in order, each with when it arrived.
async fn until_sentinel(client: &mut SioClient, sentinel: &str) -> Vec<(String, u64, Instant)> {
    let mut got = Vec::new();
    loop {
        let (name, data) = client
            .next_event(WAIT)
            .await
            .unwrap_or_else(|e| panic!("waiting for {sentinel} after {} events: {e}", got.len()));
        if name != "webhook_event" {
            continue;
        }
        let id = data["id"].as_str().expect("id").to_owned();
        let seq = data["seq"].as_u64().expect("seq");
        let done = id == sentinel;
        got.push((id, seq, Instant::now()));
        if done {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_coming_and_going_hold_up_no_one_else() {
    let nats = NatsServer::start_new();
    let ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(&nats.url(), &["--ip-connect-burst", "10000"]).await;
    let http = http();
    let steady_accounts = ["steady_0", "steady_1", "steady_2", "steady_3"];
    let mut steady = Vec::new();
    for (i, account) in steady_accounts.iter().enumerate() {
        steady.push(subscribed(&gateway, &format!("steady_{i}"), &[account]).await);
    }

    // Clients come and go on accounts of their own while events flow to the steady ones.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (url, stop) = (gateway.url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) && n < 400 {
                let account = format!("churn_{n}");
                let auth = json!({ "token": token(&format!("churner_{n}"), &[&account]) });
                let client = SioClient::connect(&url, Some(&auth))
                    .await
                    .expect("connects");
                client
                    .emit_with_ack("subscribe", &json!({ "eventTypes": ["comments"] }), WAIT)
                    .await
                    .expect("subscribes");
                client.disconnect().await;
                n += 1;
            }
            n
        })
    };
    let mut sent: HashMap<String, Vec<(String, Instant)>> = HashMap::new();
    for round in 0..40 {
        for account in steady_accounts {
            let (id, at) =
                publish(&http, &ingest.url, &format!("{account}_{round}"), account).await;
            sent.entry(account.to_owned()).or_default().push((id, at));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for account in steady_accounts {
        let (id, at) = publish(&http, &ingest.url, &format!("{account}_end"), account).await;
        sent.entry(account.to_owned()).or_default().push((id, at));
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let churned = tokio::time::timeout(WAIT, churn)
        .await
        .expect("churn stops")
        .expect("task");
    assert!(churned >= 10, "clients came and went meanwhile ({churned})");

    let mut worst = Duration::ZERO;
    for (client, account) in steady.iter_mut().zip(steady_accounts) {
        let expected = &sent[account];
        let got = until_sentinel(client, &expected.last().expect("sentinel").0).await;
        let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
        let want: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, want, "{account}: every event once, in order");
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "{account}: seq increases"
        );
        for ((_, _, arrived), (_, answered)) in got.iter().zip(expected) {
            worst = worst.max(arrived.saturating_duration_since(*answered));
        }
    }
    println!(
        "{churned} clients came and went; the worst delay of a steady client's event: {worst:?}"
    );
    assert!(
        worst < DELAY_BOUND,
        "an event took {worst:?} to a steady client"
    );
    for client in steady {
        client.disconnect().await;
    }
    gateway.shut_down("gateway").await;
    ingest.shut_down("ingest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_joined_left_and_joined_again_and_on_two_gateways() {
    let nats = NatsServer::start_new();
    let ingest = start_ingest(&nats.url()).await;
    let (one, two) = (
        start_gateway(&nats.url(), &[]).await,
        start_gateway(&nats.url(), &[]).await,
    );
    let http = http();
    let mut there = subscribed(&two, "on_two", &["shared"]).await;
    let mut here = subscribed(&one, "on_one", &["shared", "other"]).await;
    let ids =
        |got: Vec<(String, u64, Instant)>| got.into_iter().map(|(id, _, _)| id).collect::<Vec<_>>();
    let (first, _) = publish(&http, &ingest.url, "first", "shared").await;
    assert_eq!(
        ids(until_sentinel(&mut here, &first).await),
        vec![first.clone()]
    );

    // Narrowed to another account: `shared` is left on this gateway.
    here.emit_with_ack(
        "subscribe",
        &json!({ "eventTypes": ["comments"], "accountIds": ["other"] }),
        WAIT,
    )
    .await
    .expect("narrowed");
    let (while_away, _) = publish(&http, &ingest.url, "while_away", "shared").await;
    let (marker, _) = publish(&http, &ingest.url, "marker", "other").await;
    // The marker comes after `while_away` in the stream: once it is here, `while_away` went by.
    assert_eq!(
        ids(until_sentinel(&mut here, &marker).await),
        vec![marker],
        "nothing of the account left"
    );
    // ...and joined again.
    here.emit_with_ack(
        "subscribe",
        &json!({ "eventTypes": ["comments"], "accountIds": ["shared", "other"] }),
        WAIT,
    )
    .await
    .expect("joined again");
    let (back, _) = publish(&http, &ingest.url, "back", "shared").await;
    assert_eq!(
        ids(until_sentinel(&mut here, &back).await),
        vec![back.clone()],
        "once after joining again"
    );
    assert_eq!(
        ids(until_sentinel(&mut there, &back).await),
        vec![first, while_away, back],
        "the other gateway's client of the same account got each once"
    );
    here.disconnect().await;
    there.disconnect().await;
    one.shut_down("gateway one").await;
    two.shut_down("gateway two").await;
    ingest.shut_down("ingest").await;
}

/// The bound a gateway states: nothing from NATS while no client is subscribed; once one is,
/// every event of the stream, whichever account (docs/fanout.md says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_takes_nothing_until_a_client_subscribes_then_the_whole_stream() {
    let nats = NatsServer::start_new();
    let ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(&nats.url(), &[]).await;
    let http = http();
    let received = |text: String| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("instantchat_gateway_events_received_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let scrape = || async {
        received(
            http.get(format!("{}/metrics", gateway.url))
                .send()
                .await
                .expect("/metrics")
                .text()
                .await
                .expect("body"),
        )
    };
    for i in 0..3 {
        publish(
            &http,
            &ingest.url,
            &format!("before_{i}"),
            &format!("acct_{i}"),
        )
        .await;
    }
    // An authenticated client that has not subscribed places nothing.
    let idle = SioClient::connect(
        &gateway.url,
        Some(&json!({ "token": token("idle", &["acct_0"]) })),
    )
    .await
    .expect("connects");
    publish(&http, &ingest.url, "unwatched", "acct_0").await;
    assert_eq!(
        scrape().await,
        0.0,
        "nothing taken while no client subscribed"
    );

    let mut watcher = subscribed(&gateway, "watcher", &["acct_0"]).await;
    for i in 0..3 {
        publish(
            &http,
            &ingest.url,
            &format!("after_{i}"),
            &format!("acct_{i}"),
        )
        .await;
    }
    let (sentinel, _) = publish(&http, &ingest.url, "sentinel", "acct_0").await;
    let got = until_sentinel(&mut watcher, &sentinel).await;
    assert_eq!(
        got.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>(),
        vec!["comments:after_0", "comments:sentinel"],
        "only its own account's events reach the client"
    );
    // Every event published after the subscription began was taken, the other accounts'
    // included; the sentinel was the last of them, so the count is final.
    assert_eq!(
        scrape().await,
        4.0,
        "the stated bound: the whole stream from the first subscription on"
    );
    idle.disconnect().await;
    watcher.disconnect().await;
    gateway.shut_down("gateway").await;
    ingest.shut_down("ingest").await;
}
