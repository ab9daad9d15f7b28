//! Ingest's 200 answer to a webhook POST (docs/protocol.md, "Webhooks (ingest)"), read by every
//! test that publishes through ingest.

use serde::Deserialize;

/// The receipt: one row per normalized event, in body order.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Receipt {
    pub status: String,
    pub events: Vec<ReceiptEvent>,
    /// Why the body (or some of its items) went to the rejected subject.
    pub rejected: Option<String>,
}

/// One acknowledged event of a [`Receipt`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReceiptEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub account: String,
    pub seq: u64,
    pub duplicate: bool,
}

impl Receipt {
    /// Reads a 200 answer's JSON; panics, with the body, on anything else.
    pub fn from_json(json: &serde_json::Value) -> Self {
        let receipt: Receipt = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("a webhook receipt ({e}): {json}"));
        assert_eq!(receipt.status, "ok", "{json}");
        receipt
    }

    /// The seq of its only event; panics unless there is exactly one.
    pub fn only_seq(&self) -> u64 {
        assert_eq!(self.events.len(), 1, "one event: {self:?}");
        self.events[0].seq
    }
}
