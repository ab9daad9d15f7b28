//! JetStream publishes whose PubAcks come back on one subscription of the bus's own.
//!
//! A publish carries the reply subject `<prefix>.<n>`; the stream answers there with its PubAck
//! (`{"stream":..,"seq":..,"duplicate":..}` or `{"error":{..}}`), or the server answers
//! "no responders" when no stream takes the subject. One task reads the subscription and hands
//! each answer to whoever waits for `n`.
//!
//! Why not the JetStream context's publish: it makes an inbox name per message, arms a timer
//! per message and parses every PubAck as an untagged enum, which together were about a tenth
//! of the instructions ingest spent per webhook. Here a batch arms one timer, and its messages
//! are handed to the client in order, one after the other, so a webhook's events keep their
//! order in the stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::{HeaderMap, Message, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{BusError, PublishAck};

/// Why a batch was not acknowledged.
#[derive(Debug)]
pub(crate) enum AckError {
    /// No stream takes a subject of the batch (the server lost its streams).
    NoStream,
    /// Anything else, said for the 503's log line.
    Other(String),
}

impl From<AckError> for BusError {
    fn from(e: AckError) -> Self {
        match e {
            AckError::NoStream => {
                BusError::Publish("no stream takes the subject (no responders)".into())
            }
            AckError::Other(reason) => BusError::Publish(reason),
        }
    }
}

/// The subscription the PubAcks arrive on, and who waits for which.
#[derive(Debug)]
pub(crate) struct PubAcks {
    client: async_nats::Client,
    /// `<inbox prefix>.<unique>.`: a reply subject is this and a number.
    prefix: String,
    next: AtomicU64,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>,
}

impl PubAcks {
    /// Subscribes to the replies and starts the task that hands them out; it ends when the
    /// client is closed.
    pub(crate) async fn start(client: async_nats::Client) -> Result<Self, BusError> {
        let prefix = format!("{}.", client.new_inbox());
        let mut replies = client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| BusError::Publish(format!("cannot subscribe to PubAcks: {e}")))?;
        let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>> = Arc::default();
        let handed = waiting.clone();
        let skip = prefix.len();
        tokio::spawn(async move {
            while let Some(message) = replies.next().await {
                let Some(n) = message
                    .subject
                    .get(skip..)
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                // An answer nobody waits for any more (its batch timed out) is dropped.
                if let Some(waiter) = handed.lock().remove(&n) {
                    let _ = waiter.send(message);
                }
            }
        });
        Ok(PubAcks {
            client,
            prefix,
            next: AtomicU64::new(0),
            waiting,
        })
    }

    /// Publishes `messages` in order and waits up to `timeout` for all their PubAcks.
    pub(crate) async fn publish(
        &self,
        messages: impl Iterator<Item = (String, HeaderMap, Bytes)>,
        timeout: Duration,
    ) -> Result<Vec<PublishAck>, AckError> {
        let mut batch = Batch {
            acks: self,
            numbers: Vec::new(),
        };
        let mut answers = Vec::new();
        for (subject, headers, payload) in messages {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.waiting.lock().insert(n, tx);
            batch.numbers.push(n);
            answers.push(rx);
            self.client
                .publish_with_reply_and_headers(
                    subject,
                    format!("{}{n}", self.prefix),
                    headers,
                    payload,
                )
                .await
                .map_err(|e| AckError::Other(e.to_string()))?;
        }
        let answers = tokio::time::timeout(timeout, futures::future::join_all(answers))
            .await
            .map_err(|_| {
                AckError::Other(format!("the broker did not acknowledge within {timeout:?}"))
            })?;
        answers
            .into_iter()
            .map(|answer| {
                let message = answer.map_err(|_| AckError::Other("the PubAck was lost".into()))?;
                pub_ack(&message)
            })
            .collect()
    }
}

/// The numbers a batch waits for, forgotten when it ends however it ends.
struct Batch<'a> {
    acks: &'a PubAcks,
    numbers: Vec<u64>,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let mut waiting = self.acks.waiting.lock();
        for n in &self.numbers {
            waiting.remove(n);
        }
    }
}

/// A PubAck as JetStream sends it.
#[derive(serde::Deserialize)]
struct RawPubAck {
    seq: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    error: Option<async_nats::jetstream::Error>,
}

fn pub_ack(message: &Message) -> Result<PublishAck, AckError> {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(AckError::NoStream);
    }
    let text = || String::from_utf8_lossy(&message.payload).into_owned();
    let ack: RawPubAck = serde_json::from_slice(&message.payload).map_err(|e| {
        AckError::Other(format!(
            "the broker's answer is not a PubAck ({e}): {}",
            text()
        ))
    })?;
    match (ack.error, ack.seq) {
        (Some(error), _) => Err(AckError::Other(format!(
            "the stream refused the message: {error}"
        ))),
        (None, Some(seq)) => Ok(PublishAck {
            seq,
            duplicate: ack.duplicate,
        }),
        (None, None) => Err(AckError::Other(format!(
            "the broker's PubAck has no sequence: {}",
            text()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(payload: &str, status: Option<StatusCode>) -> Message {
        Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn pub_acks_are_read_with_their_sequence_and_duplicate_flag() {
        let ack = pub_ack(&reply(r#"{"stream":"S","seq":42,"duplicate":true}"#, None)).unwrap();
        assert_eq!(
            ack,
            PublishAck {
                seq: 42,
                duplicate: true
            }
        );
        let ack = pub_ack(&reply(r#"{"stream":"S","seq":7}"#, None)).unwrap();
        assert_eq!(
            ack,
            PublishAck {
                seq: 7,
                duplicate: false
            }
        );
    }

    #[test]
    fn refusals_say_what_the_broker_said() {
        let refused =
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        match pub_ack(&reply(refused, None)) {
            Err(AckError::Other(reason)) => {
                assert!(reason.contains("maximum messages exceeded"), "{reason}");
                assert!(reason.contains("503"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            pub_ack(&reply("", Some(StatusCode::NO_RESPONDERS))),
            Err(AckError::NoStream)
        ));
        assert!(matches!(
            pub_ack(&reply("not json", None)),
            Err(AckError::Other(_))
        ));
        assert!(matches!(
            pub_ack(&reply(r#"{"stream":"S"}"#, None)),
            Err(AckError::Other(_))
        ));
    }
}
