//! End to end, in one process: a real nats-server, the ingest service and TWO gateway instances
//! on port 0, with Socket.IO clients ([`SioClient`]) on both gateways.
//!
//! Signed webhooks (the simplified body and Meta fixtures) go to ingest over HTTP; every
//! client must get exactly the events its token's accounts and its subscribed types allow, each
//! once, in increasing `seq` order, whichever gateway it is on. The oracle is ingest's receipt
//! (`{id, type, account, seq, duplicate}` per event), so the expectations follow from what was
//! actually stored, not from a second copy of the normalization rules.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::{Service, http, seed_body, sign, start_gateway, start_ingest, token};
use instantchat_ingest::WEBHOOK_PATH;
use instantchat_testsupport::metrics::Scrape;
use instantchat_testsupport::receipt::{Receipt, ReceiptEvent};
use instantchat_testsupport::{NatsServer, SioClient, SioError};
use serde_json::{Value, json};

/// The longest any single wait may take here: generous, for a machine busy with the rest of the
/// suite (alone, the whole test takes under a second).
const WAIT: Duration = Duration::from_secs(10);

/// Polls `GET url` until it answers 200; returns the body.
async fn get_ok(http: &reqwest::Client, url: &str) -> String {
    crate::support::wait_status(http, url, 200).await
}

/// A Meta fixture, byte for byte, with its signature from the manifest.
fn fixture(prefix: &str) -> (Vec<u8>, String) {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/instagram"
    ));
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).expect("the fixture manifest"),
    )
    .expect("manifest JSON");
    let entry = manifest["fixtures"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|f| f["file"].as_str().is_some_and(|n| n.starts_with(prefix)))
        })
        .unwrap_or_else(|| panic!("fixture {prefix} in the manifest"));
    let file = entry["file"].as_str().expect("file name");
    let body = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let signature = entry["x_hub_signature_256"].as_str().expect("signature");
    (body, signature.to_owned())
}

/// What ingest's receipt says was stored.
type Stored = ReceiptEvent;

/// POSTs a webhook, expects 200 and returns the receipt's events.
async fn post(http: &reqwest::Client, ingest: &str, body: Vec<u8>, signature: &str) -> Vec<Stored> {
    let response = http
        .post(format!("{ingest}{WEBHOOK_PATH}"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("ingest answers");
    let status = response.status();
    let receipt: Value = response.json().await.expect("a JSON receipt");
    assert_eq!(status, 200, "webhook accepted: {receipt}");
    Receipt::from_json(&receipt).events
}

async fn post_seed(
    http: &reqwest::Client,
    ingest: &str,
    id: &str,
    ty: &str,
    acct: &str,
) -> Vec<Stored> {
    let body = seed_body(id, ty, acct);
    let signature = sign(&body);
    post(http, ingest, body, &signature).await
}

/// Connects; the first request may follow at once (the gateway registers its handlers before it
/// answers the connect).
async fn connect_ready(gateway: &Service, auth: Option<&Value>, name: &str) -> SioClient {
    SioClient::connect(&gateway.url, auth)
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"))
}

/// A test client: who it is, what it may see and what it subscribed to.
struct Client {
    name: &'static str,
    sio: SioClient,
    /// `None`: every account (`["*"]`).
    accounts: Option<Vec<&'static str>>,
    types: Vec<&'static str>,
}

impl Client {
    /// Connects to `gateway` and authenticates, in the handshake (`auth: {token}`) or with the
    /// `authenticate` event; then subscribes to `types` and clears the replies.
    async fn start(
        name: &'static str,
        gateway: &Service,
        accounts: &[&'static str],
        types: &[&'static str],
        handshake_auth: bool,
    ) -> Client {
        let jwt = token(name, accounts);
        let sio = if handshake_auth {
            connect_ready(gateway, Some(&json!({ "token": jwt })), name).await
        } else {
            let mut sio = connect_ready(gateway, None, name).await;
            let reply = sio
                .emit_with_ack(
                    "authenticate",
                    &json!({ "token": jwt, "userId": name, "timestamp": 1 }),
                    WAIT,
                )
                .await
                .unwrap_or_else(|e| panic!("{name} authenticates: {e}"));
            assert_eq!(
                reply["message"], "Authentication successful",
                "{name}: {reply}"
            );
            assert_eq!(reply["userId"], name);
            let event = sio
                .wait_for_event("auth_success", WAIT, |_| true)
                .await
                .unwrap_or_else(|e| panic!("{name}: auth_success also as an event: {e}"));
            assert_eq!(event, reply);
            sio
        };
        let reply = sio
            .emit_with_ack(
                "subscribe",
                &json!({ "eventTypes": types, "userId": name, "timestamp": 2 }),
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("{name} subscribes: {e}"));
        let mut confirmed: Vec<String> = serde_json::from_value(reply["eventTypes"].clone())
            .unwrap_or_else(|_| panic!("{name}: subscription_confirmed, got {reply}"));
        confirmed.sort();
        let mut wanted: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        wanted.sort();
        assert_eq!(confirmed, wanted, "{name}: confirmed types");
        let mut client = Client {
            name,
            sio,
            accounts: (!accounts.contains(&"*")).then(|| accounts.to_vec()),
            types: types.to_vec(),
        };
        // The replies also arrive as events; the test wants only webhook events from here on.
        client.sio.drain_events();
        client
    }

    fn sees(&self, e: &Stored) -> bool {
        !e.duplicate
            && self.types.contains(&e.event_type.as_str())
            && self
                .accounts
                .as_ref()
                .is_none_or(|a| a.contains(&e.account.as_str()))
    }

    /// `(id, seq)` of every stored event this client must get, in seq order.
    fn expected(&self, stored: &[Stored]) -> Vec<(String, u64)> {
        let mut mine: Vec<(String, u64)> = stored
            .iter()
            .filter(|e| self.sees(e))
            .map(|e| (e.id.clone(), e.seq))
            .collect();
        mine.sort_by_key(|(_, seq)| *seq);
        mine
    }

    /// Takes the next `n` events, all of which must be `webhook_event`s this client may see.
    async fn take(&mut self, n: usize) -> Vec<(String, u64)> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let (name, data) = self.sio.next_event(WAIT).await.unwrap_or_else(|e| {
                panic!(
                    "{}: after {} of {n} events, {e}; got {got:?}",
                    self.name,
                    got.len()
                )
            });
            if name == "heartbeat_response" {
                continue; // a late answer to a connect_ready probe
            }
            assert_eq!(
                name, "webhook_event",
                "{}: unexpected `{name}` {data}",
                self.name
            );
            let account = data["accountId"].as_str().expect("accountId");
            let event_type = data["eventType"].as_str().expect("eventType");
            assert!(
                self.types.contains(&event_type),
                "{}: type {event_type} not subscribed: {data}",
                self.name
            );
            assert!(
                self.accounts.as_ref().is_none_or(|a| a.contains(&account)),
                "{}: account {account} not allowed: {data}",
                self.name
            );
            let id = data["id"].as_str().expect("id").to_owned();
            let seq = data["seq"].as_u64().expect("seq");
            got.push((id, seq));
        }
        got
    }

    /// Checks that this client got exactly `expected`, in order, and then nothing more.
    async fn check(&mut self, expected: &[(String, u64)]) {
        let got = self.take(expected.len()).await;
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "{}: seq strictly increasing: {got:?}",
            self.name
        );
        assert_eq!(
            got, expected,
            "{}: exactly its events, in seq order",
            self.name
        );
    }

    /// Nothing else has arrived (called once the sentinel came).
    fn check_quiet(&mut self) {
        let mut extra = self.sio.drain_events();
        extra.retain(|(name, _)| name != "heartbeat_response");
        assert!(
            extra.is_empty(),
            "{}: unexpected extra events {extra:?}",
            self.name
        );
    }
}

/// Checks every client against `stored`, then that nothing else arrives: one sentinel per
/// client, published last, must be the very next events each client gets (the ones it may
/// see). Delivery is in `seq` order, so a late duplicate or a stray event would come before
/// them and fail [`Client::check`].
async fn check_all(
    http: &reqwest::Client,
    ingest: &str,
    round: &str,
    clients: &mut [&mut Client],
    stored: &[Stored],
) {
    for client in clients.iter_mut() {
        let expected = client.expected(stored);
        client.check(&expected).await;
    }
    let mut sentinels = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let account = client.accounts.as_ref().map_or("acct_1", |a| a[0]);
        let id = format!("sentinel_{round}_{i}");
        sentinels.extend(post_seed(http, ingest, &id, client.types[0], account).await);
    }
    for client in clients.iter_mut() {
        let expected = client.expected(&sentinels);
        assert!(!expected.is_empty(), "{} sees its sentinel", client.name);
        client.check(&expected).await;
        client.check_quiet();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_deliver_exactly_what_each_client_may_see() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let nats = NatsServer::start_new();
    let http = http();
    let ingest = start_ingest(&nats.url()).await;
    let gw1 = start_gateway(&nats.url(), &[]).await;
    let gw2 = start_gateway(&nats.url(), &[]).await;
    for url in [&ingest.url, &gw1.url, &gw2.url] {
        get_ok(&http, &format!("{url}/readyz")).await;
    }

    // A bad token is refused at connect, with the reason as the connect_error message.
    let forged = instantchat_gateway::auth::mint_token(
        "not-the-gateway-secret-0123456789",
        "mallory",
        &["*"],
        Duration::from_secs(60),
    )
    .expect("a token");
    match SioClient::connect(&gw2.url, Some(&json!({ "token": forged }))).await {
        Err(SioError::Refused(message)) => assert_eq!(message, "Invalid token"),
        other => panic!("a forged token must be refused at connect, got {other:?}"),
    }

    let mut a1 = Client::start("alice", &gw1, &["acct_1"], &["comments"], true).await;
    let mut a2 = Client::start("alice", &gw2, &["acct_1"], &["comments", "messages"], false).await;
    let mut b = Client::start("bob", &gw2, &["acct_2"], &["comments"], true).await;
    let mut w = Client::start("watcher", &gw1, &["*"], &["messages"], false).await;

    // Asking for an account the token does not allow is refused; the subscriptions stay.
    let foreign = json!({
        "eventTypes": ["messages"],
        "userId": "bob",
        "accountIds": ["acct_1"],
        "timestamp": 3,
    });
    let refused = b
        .sio
        .emit_with_ack("subscribe", &foreign, WAIT)
        .await
        .expect("an ack");
    assert_eq!(refused["message"], "Account not allowed: acct_1");
    b.sio.drain_events();

    // Phase 1: published right after the subscriptions were confirmed (no sleep: a gateway must
    // not lose events while its bus subscription widens), several accounts and types, Meta's
    // fixtures, a redelivery, and a burst of concurrent webhooks.
    let mut stored = Vec::new();
    for (id, ty, acct) in [
        ("c_1a", "comments", "acct_1"),
        ("m_1a", "messages", "acct_1"),
        ("c_2a", "comments", "acct_2"),
        ("m_2a", "messages", "acct_2"),
        ("c_3a", "comments", "acct_3"),
        ("m_3a", "messages", "acct_3"),
        ("x_1a", "mentions", "acct_1"),
    ] {
        stored.extend(post_seed(&http, &ingest.url, id, ty, acct).await);
    }
    for name in ["f09", "f24", "f01"] {
        let (body, signature) = fixture(name);
        stored.extend(post(&http, &ingest.url, body, &signature).await);
    }
    let redelivered = post_seed(&http, &ingest.url, "c_1a", "comments", "acct_1").await;
    assert!(
        redelivered.iter().all(|e| e.duplicate),
        "a redelivery stores nothing new: {redelivered:?}"
    );
    stored.extend(redelivered);
    let burst: Vec<(String, &str, &str)> = (0..12)
        .map(|i| {
            let (ty, acct) = [
                ("comments", "acct_1"),
                ("messages", "acct_1"),
                ("comments", "acct_2"),
                ("messages", "acct_3"),
            ][i % 4];
            (format!("burst_{i}"), ty, acct)
        })
        .collect();
    let posts = burst
        .iter()
        .map(|(id, ty, acct)| post_seed(&http, &ingest.url, id, ty, acct));
    for receipt in futures::future::join_all(posts).await {
        stored.extend(receipt);
    }
    assert!(
        stored
            .iter()
            .any(|e| e.event_type == "messages" && e.account == "17841470945980483"),
        "the fixtures yield Meta messages: {stored:?}"
    );

    assert_eq!(
        a1.expected(&stored).len(),
        4,
        "alice on gateway 1: c_1a and the 3 acct_1 comments of the burst"
    );
    assert_eq!(
        b.expected(&stored).len(),
        4,
        "bob: c_2a and the 3 acct_2 comments of the burst"
    );
    check_all(
        &http,
        &ingest.url,
        "1",
        &mut [&mut a1, &mut a2, &mut b, &mut w],
        &stored,
    )
    .await;

    // Phase 2: every client of acct_2 leaves; gateway 2 narrows its bus subscription while
    // webhooks keep coming, for acct_2 (nobody on gateway 2 wants it now) and for acct_1.
    b.sio.disconnect().await;
    let mut later = Vec::new();
    for (id, ty, acct) in [
        ("c_2b", "comments", "acct_2"),
        ("m_2b", "messages", "acct_2"),
        ("c_1b", "comments", "acct_1"),
        ("m_1b", "messages", "acct_1"),
        ("c_2c", "comments", "acct_2"),
        ("c_1c", "comments", "acct_1"),
    ] {
        later.extend(post_seed(&http, &ingest.url, id, ty, acct).await);
    }
    assert_eq!(w.expected(&later).len(), 2);
    check_all(
        &http,
        &ingest.url,
        "2",
        &mut [&mut a1, &mut a2, &mut w],
        &later,
    )
    .await;

    // Both gateways are alive and serve their metrics; gateway 2 counts only alice now.
    for (gw, open) in [(&gw1, 2.0), (&gw2, 1.0)] {
        get_ok(&http, &format!("{}/healthz", gw.url)).await;
        let scrape = Scrape::parse(&get_ok(&http, &format!("{}/metrics", gw.url)).await);
        assert!(
            scrape.has_metric("instantchat_gateway_events_received_total"),
            "{scrape:?}"
        );
        assert_eq!(
            scrape.value("instantchat_gateway_connections"),
            Some(open),
            "{}: open connections\n{scrape:?}",
            gw.url
        );
    }
    get_ok(&http, &format!("{}/metrics", ingest.url)).await;

    // Shutdown: gateway 1 tells its sockets to go and returns; the rest stops cleanly.
    gw1.shut_down("gateway 1").await;
    for client in [&mut a1, &mut w] {
        client
            .sio
            .wait_disconnect(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{} is disconnected by the shutdown: {e}", client.name));
        client.check_quiet();
    }
    a2.sio.disconnect().await;
    gw2.shut_down("gateway 2").await;
    ingest.shut_down("ingest").await;
    drop(nats);
}

/// A client may send its first request the moment it is connected: socket.io-client flushes what
/// was emitted before `connect` at once, and the InstantChat frontend emits `authenticate` in its
/// `connect` listener. Every such request must be answered.
/// (socketioxide answers the connect after the middleware but runs the connect handler later, so
/// the gateway registers its handlers in the middleware.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_right_after_connect_is_answered() {
    const CLIENTS: usize = 20;
    let nats = NatsServer::start_new();
    let http = http();
    // Ingest owns the streams; gateways only read them.
    let _ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(&nats.url(), &[]).await;
    get_ok(&http, &format!("{}/readyz", gateway.url)).await;
    // One after the other, as a page load does: connect, then the first request at once.
    let mut lost = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("racer_{i}");
        let auth = json!({ "token": token(&user, &["acct_1"]) });
        let sio = SioClient::connect(&gateway.url, Some(&auth))
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        let request = json!({ "eventTypes": ["comments"], "userId": user, "timestamp": 1 });
        match sio
            .emit_with_ack("subscribe", &request, Duration::from_secs(5))
            .await
        {
            Ok(reply) => assert_eq!(reply["eventTypes"], json!(["comments"]), "{user}: {reply}"),
            Err(SioError::Timeout(..)) => lost.push(user),
            Err(e) => panic!("{user}: {e}"),
        }
        sio.disconnect().await;
    }
    gateway.shut_down("gateway").await;
    assert!(
        lost.is_empty(),
        "{} of {CLIENTS} first requests got no answer: {lost:?}",
        lost.len()
    );
}

/// A client that leaves the moment it is connected (a page reload, a flaky network) must not
/// leave anything counted behind: the connection gauge goes back to 0 and its user can connect
/// again as often as it likes. (One that leaves before the connect is answered is in the e2e
/// suite: "closes during the handshake".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_at_once_leaves_nothing_counted() {
    const ROUNDS: usize = 20;
    let nats = NatsServer::start_new();
    let http = http();
    // Ingest owns the streams; gateways only read them.
    let _ingest = start_ingest(&nats.url()).await;
    let gateway = start_gateway(&nats.url(), &[]).await;
    get_ok(&http, &format!("{}/readyz", gateway.url)).await;
    let auth = json!({ "token": token("churner", &["acct_1"]) });
    for _ in 0..ROUNDS {
        let sio = SioClient::connect(&gateway.url, Some(&auth))
            .await
            .expect("connects");
        sio.disconnect().await;
    }
    // Wait for the gauges to settle at 0 (or the deadline), then look.
    let deadline = Instant::now() + WAIT;
    let (open, authenticated) = loop {
        let scrape = Scrape::parse(&get_ok(&http, &format!("{}/metrics", gateway.url)).await);
        let open = scrape.value("instantchat_gateway_connections");
        let authenticated = scrape.value("instantchat_gateway_authenticated_connections");
        if (open, authenticated) == (Some(0.0), Some(0.0)) || Instant::now() > deadline {
            break (open, authenticated);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let again = SioClient::connect(&gateway.url, Some(&auth)).await;
    gateway.shut_down("gateway").await;
    assert!(
        (open, authenticated) == (Some(0.0), Some(0.0)) && again.is_ok(),
        "after {ROUNDS} quick leaves: {open:?} open and {authenticated:?} authenticated \
         connections counted (want 0 and 0); connecting again: {again:?}"
    );
}

#[tokio::test]
async fn a_connection_that_never_sends_a_whole_request_head_is_closed() {
    let nats = NatsServer::start_new();
    let gateway = start_gateway(&nats.url(), &[]).await;
    let addr: std::net::SocketAddr = gateway
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway's address");
    let took =
        instantchat_testsupport::unfinished_heads_closed_after(addr, Duration::from_secs(45)).await;
    // The deadline is 30 s: a slow client is not cut off early.
    assert!(took >= Duration::from_secs(25), "closed after {took:?}");
    gateway.shut_down("gateway").await;
}
