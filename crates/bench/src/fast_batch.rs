//! A publisher on nats-server's fast-ingest batches (`allow_batched`, nats-server 2.14+), for
//! `ingest --floor-publisher fast-batch` only: what publishing a webhook would cost with one
//! JetStream acknowledgement per batch of messages instead of one per message. Not a product
//! path (see BENCHMARKS.md, "The two floors added up", for what it would change).
//!
//! One task per stream holds that stream's batch: it takes every webhook's messages waiting for
//! it (up to [`MAX_BATCH`]), publishes them in order with the batch in their reply subjects
//! (`<prefix>.<batch>.<flow>.fail.<seq>.<op>.$FI`; op 0 starts the batch, 1 adds, 2 adds and
//! commits), and awaits the batch's one acknowledgement before the next batch. A batch's
//! acknowledgement counts its messages; one that stops short (a gap, a refused message) fails
//! every webhook in it. Messages keep their `Nats-Msg-Id`, which nats-server 2.15 deduplicates
//! inside a batch as outside one.

use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::{Client, HeaderMap, Subscriber, header};
use futures::StreamExt;
use instantchat_broker::Outgoing;
use instantchat_event::subjects;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// The longest a batch may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages per batch at most; the rest wait for the next batch.
const MAX_BATCH: usize = 1_000;
/// Acknowledgements asked for inside a batch: one every this many messages (ignored here: the
/// batch's own acknowledgement is the one that counts).
const FLOW: usize = MAX_BATCH;

/// A webhook's messages for one stream, and where to say whether they are stored.
type Job = (Vec<Outgoing>, oneshot::Sender<Result<(), String>>);

/// Publishes webhooks in fast-ingest batches, one task per stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FastBatch {
    webhooks: mpsc::Sender<Job>,
    events: mpsc::Sender<Job>,
}

impl FastBatch {
    /// Enables fast-ingest batches on both streams (they must exist) and starts their tasks.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        for stream in [subjects::WEBHOOKS_STREAM, subjects::EVENTS_STREAM] {
            allow_batched(&client, stream).await?;
        }
        Ok(FastBatch {
            webhooks: spawn_stream(client.clone(), "w").await?,
            events: spawn_stream(client, "e").await?,
        })
    }

    /// Publishes one webhook's messages; `Ok` once both streams' batches holding them are
    /// acknowledged whole.
    pub async fn publish(&self, batch: Vec<Outgoing>) -> Result<(), String> {
        let (events, webhooks): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|m| m.subject.starts_with(subjects::EVENTS_PREFIX));
        let mut waits = Vec::with_capacity(2);
        for (tx, messages) in [(&self.webhooks, webhooks), (&self.events, events)] {
            if messages.is_empty() {
                continue;
            }
            let (done, wait) = oneshot::channel();
            tx.send((messages, done))
                .await
                .map_err(|_| "the batch publisher stopped".to_owned())?;
            waits.push(wait);
        }
        for wait in waits {
            wait.await
                .map_err(|_| "the batch publisher stopped".to_owned())??;
        }
        Ok(())
    }
}

/// Sets `allow_batched` on `stream`, keeping the rest of its configuration.
async fn allow_batched(client: &Client, stream: &str) -> anyhow::Result<()> {
    let request = |subject: String, body: Vec<u8>| async move {
        let reply = client
            .request(subject.clone(), body.into())
            .await
            .with_context(|| format!("{subject}: no answer"))?;
        let value: Value = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("{subject}: not JSON"))?;
        if let Some(e) = value.get("error") {
            bail!("{subject}: {e}");
        }
        anyhow::Ok(value)
    };
    let info = request(format!("$JS.API.STREAM.INFO.{stream}"), Vec::new()).await?;
    let mut config = info["config"].clone();
    config["allow_batched"] = true.into();
    request(
        format!("$JS.API.STREAM.UPDATE.{stream}"),
        serde_json::to_vec(&config)?,
    )
    .await
    .context("fast-ingest batches need nats-server 2.14 or newer")?;
    Ok(())
}

/// The task that holds one stream's batches.
async fn spawn_stream(client: Client, tag: &'static str) -> anyhow::Result<mpsc::Sender<Job>> {
    let prefix = client.new_inbox();
    let acks = client
        .subscribe(format!("{prefix}.>"))
        .await
        .context("cannot subscribe to the batches' acknowledgements")?;
    let (tx, mut rx) = mpsc::channel::<Job>(4_096);
    tokio::spawn(async move {
        let mut acks = acks;
        let mut n = 0u64;
        while let Some(first) = rx.recv().await {
            let mut count = first.0.len();
            let mut jobs = vec![first];
            while count < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => {
                        count += job.0.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            n += 1;
            let batch = format!("{prefix}.{tag}{n}");
            let result = send_batch(&client, &mut acks, &batch, &jobs).await;
            for (_, done) in jobs {
                let _ = done.send(result.clone());
            }
        }
    });
    Ok(tx)
}

/// Publishes `jobs` as the batch `batch` (its inbox; the last token is its id) and awaits its
/// acknowledgement.
async fn send_batch(
    client: &Client,
    acks: &mut Subscriber,
    batch: &str,
    jobs: &[Job],
) -> Result<(), String> {
    let total = jobs.iter().map(|(m, _)| m.len()).sum::<usize>();
    let mut seq = 0;
    for message in jobs.iter().flat_map(|(m, _)| m) {
        seq += 1;
        let op = match seq {
            _ if seq == total => 2,
            1 => 0,
            _ => 1,
        };
        let reply = format!("{batch}.{FLOW}.fail.{seq}.{op}.$FI");
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, message.msg_id.as_str());
        client
            .publish_with_reply_and_headers(
                message.subject.clone(),
                reply,
                headers,
                message.payload.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    let ours = format!("{batch}.");
    loop {
        let frame = tokio::time::timeout_at(deadline, acks.next())
            .await
            .map_err(|_| format!("batch {batch}: no acknowledgement within {ACK_TIMEOUT:?}"))?
            .ok_or("the acknowledgements' subscription ended")?;
        if !frame.subject.as_str().starts_with(&ours) {
            continue;
        }
        let value: Value = serde_json::from_slice(&frame.payload)
            .map_err(|e| format!("batch {batch}: unreadable acknowledgement: {e}"))?;
        match value.get("type").and_then(Value::as_str) {
            // Flow acknowledgements inside the batch.
            Some("ack") => continue,
            Some(_) => return Err(format!("batch {batch}: {value}")),
            None => {}
        }
        if let Some(e) = value.get("error") {
            return Err(format!("batch {batch}: {e}"));
        }
        return if value["count"].as_u64() == Some(total as u64) {
            Ok(())
        } else {
            Err(format!("batch {batch} ended short of {total}: {value}"))
        };
    }
}
