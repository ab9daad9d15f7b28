//! Clients coming and going: R a second connect, each with an account of its own, subscribe,
//! stay a while and leave, beside the steady clients whose deliveries a scenario measures. Each
//! one is a real Socket.IO client ([`instantchat_sioclient`]) in this process: at tens a
//! second, that costs the coordinator little.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use instantchat_sioclient::SioClient;
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hist::new_hist;
use crate::system::JWT_SECRET;

/// How long a churner may take to connect and be subscribed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the churners did.
#[derive(Debug, Default)]
pub struct ChurnStats {
    /// Clients that joined (connected and subscribed).
    pub joined: AtomicU64,
    /// Clients that left again.
    pub left: AtomicU64,
    /// Clients that could not join.
    pub failed: AtomicU64,
    /// From the start of a connect to `subscription_confirmed`, in µs.
    pub join_latency: Mutex<Option<Histogram<u64>>>,
}

impl ChurnStats {
    fn record_join(&self, us: u64) {
        let mut h = self.join_latency.lock();
        let _ = h.get_or_insert_with(new_hist).record(us.max(1));
    }

    /// The join latencies so far.
    pub fn join_hist(&self) -> Histogram<u64> {
        self.join_latency.lock().clone().unwrap_or_else(new_hist)
    }
}

/// Starts `rate` clients a second on `gateway_url` (round robin over the list), each staying
/// `lifetime`, until `stop` is cancelled or `max` have started.
pub fn spawn(
    gateway_urls: Vec<String>,
    rate: f64,
    lifetime: Duration,
    max: u64,
    stop: CancellationToken,
) -> (tokio::task::JoinHandle<()>, Arc<ChurnStats>) {
    let stats = Arc::new(ChurnStats::default());
    let task = {
        let stats = stats.clone();
        tokio::spawn(async move {
            if rate <= 0.0 || gateway_urls.is_empty() {
                return;
            }
            let period = Duration::from_secs_f64(1.0 / rate);
            let start = Instant::now();
            let mut members = tokio::task::JoinSet::new();
            for n in 0..max {
                tokio::select! {
                    () = tokio::time::sleep_until(start + period.mul_f64(n as f64)) => {}
                    () = stop.cancelled() => break,
                }
                let url = gateway_urls[n as usize % gateway_urls.len()].clone();
                members.spawn(member(url, n, lifetime, stats.clone(), stop.clone()));
            }
            while members.join_next().await.is_some() {}
        })
    };
    (task, stats)
}

/// One churner: joins with a new account, stays, leaves.
async fn member(
    url: String,
    n: u64,
    lifetime: Duration,
    stats: Arc<ChurnStats>,
    stop: CancellationToken,
) {
    let account = format!("churn_{n}");
    let user = format!("churner_{n}");
    let Ok(token) = instantchat_gateway::auth::mint_token(
        JWT_SECRET,
        &user,
        &[account.as_str()],
        Duration::from_secs(3600),
    ) else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let t0 = Instant::now();
    let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
        let client = SioClient::connect(&url, Some(&json!({ "token": token })))
            .await
            .ok()?;
        client
            .emit_with_ack(
                "subscribe",
                &json!({ "eventTypes": ["comments"] }),
                JOIN_TIMEOUT,
            )
            .await
            .ok()?;
        Some(client)
    })
    .await;
    let Ok(Some(client)) = joined else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    stats.record_join(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    stats.joined.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        () = tokio::time::sleep(lifetime) => {}
        () = stop.cancelled() => {}
    }
    client.disconnect().await;
    stats.left.fetch_add(1, Ordering::Relaxed);
}
