//! The InstantChat event contract, shared by every service.
//!
//! - [`Event`] and [`Sender`]: the protobuf types generated from `proto/instantchat/v1/event.proto`
//!   (the one source of truth for the schema) with `prost`, compiled without `protoc`.
//! - [`subjects`]: the NATS subjects and stream names (docs/protocol.md, "NATS").
//! - [`WebhookEvent`]: the JSON shape of the Socket.IO `webhook_event`, derived from an [`Event`]
//!   and the stream sequence the broker gave it.
//! - [`is_valid_event_type`] / [`is_valid_account_id`]: what may appear as a subject token.

use serde::Serialize;
use serde_json::value::RawValue;

/// Generated protobuf types (`instantchat.v1`).
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/instantchat.v1.rs"));
}

pub use v1::{Event, Sender};

/// NATS subject and stream names (docs/protocol.md, "NATS").
pub mod subjects {
    /// Stream holding every normalized event.
    pub const EVENTS_STREAM: &str = "INSTANTCHAT_EVENTS";
    /// Stream holding raw verified webhook bodies and rejected ones.
    pub const WEBHOOKS_STREAM: &str = "INSTANTCHAT_WEBHOOKS";
    /// Prefix of every event subject.
    pub const EVENTS_PREFIX: &str = "instantchat.events";
    /// Every event of every account.
    pub const ALL_EVENTS: &str = "instantchat.events.>";
    /// Raw verified Instagram webhook bodies.
    pub const WEBHOOK_RAW: &str = "instantchat.webhooks.instagram";
    /// Signed bodies that are not JSON or not a shape we know.
    pub const WEBHOOK_REJECTED: &str = "instantchat.webhooks.rejected";
    /// Subjects of the webhooks stream.
    pub const WEBHOOKS_ALL: &str = "instantchat.webhooks.>";

    /// `instantchat.events.<account>.<type>`.
    pub fn event(account_id: &str, event_type: &str) -> String {
        format!("{EVENTS_PREFIX}.{account_id}.{event_type}")
    }

    /// Every event of one account: `instantchat.events.<account>.>`.
    pub fn account(account_id: &str) -> String {
        format!("{EVENTS_PREFIX}.{account_id}.>")
    }

    /// Splits an event subject into `(account, type)`.
    pub fn parse_event(subject: &str) -> Option<(&str, &str)> {
        let rest = subject.strip_prefix(EVENTS_PREFIX)?.strip_prefix('.')?;
        let (account, ty) = rest.split_once('.')?;
        (!ty.contains('.')).then_some((account, ty))
    }
}

/// The event types ingest makes from Instagram's webhooks. Others may come (a `changes` field
/// Meta adds is passed on under its own name), so this list only names the ones a metric may
/// label by name: see [`event_type_label`].
pub const KNOWN_EVENT_TYPES: [&str; 10] = [
    "comments",
    "live_comments",
    "mentions",
    "messages",
    "message_edit",
    "message_reactions",
    "messaging_seen",
    "messaging_postbacks",
    "messaging_referral",
    "story_insights",
];

/// The label a metric gives `event_type`: its own name when it is one of
/// [`KNOWN_EVENT_TYPES`], else `other`. A label value a client or a sender could choose would
/// let them add series without end.
pub fn event_type_label(event_type: &str) -> &'static str {
    KNOWN_EVENT_TYPES
        .iter()
        .find(|known| **known == event_type)
        .copied()
        .unwrap_or("other")
}

/// Milliseconds since the Unix epoch: `received_at_ms`, and the `timestamp` of every reply.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Event type names: `[a-z_]{1,64}`, as `subscribe` takes them. They are NATS subject tokens too.
pub fn is_valid_event_type(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Account ids become a NATS subject token: 1 to 128 bytes of ASCII letters, digits, `_` or `-`.
/// Instagram ids are decimal digits; Meta's dashboard test uses `"0"`.
pub fn is_valid_account_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `s` quoted and cut to 64 characters, for error messages that name what a client sent without
/// echoing all of it back.
pub fn quote_short(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}...", s.get(..cut).unwrap_or_default()),
        None => format!("{s:?}"),
    }
}

/// The sender as clients see it: both fields always present, `null` when unknown, so that
/// `event.sender.username` never throws in the frontend.
#[derive(Debug, Serialize)]
pub struct SenderJson<'a> {
    pub id: Option<&'a str>,
    pub username: Option<&'a str>,
}

/// The Socket.IO `webhook_event` payload (docs/protocol.md, `webhook_event`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub account_id: &'a str,
    pub sender: SenderJson<'a>,
    pub content: Option<&'a str>,
    pub timestamp: &'a str,
    pub seq: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    pub details: &'a RawValue,
}

const EMPTY_OBJECT: &str = "{}";

impl<'a> WebhookEvent<'a> {
    /// Builds the client shape of `event`, which the broker stored at `seq`.
    pub fn new(event: &'a Event, seq: u64) -> Self {
        let details = serde_json::from_str::<&'a RawValue>(event.details_json.as_str())
            .ok()
            .filter(|raw| raw.get().starts_with('{'))
            .unwrap_or_else(|| empty_object());
        WebhookEvent {
            id: &event.id,
            event_type: &event.event_type,
            account_id: &event.account_id,
            sender: SenderJson {
                id: event.sender.as_ref().map(|s| s.id.as_str()),
                username: event.sender.as_ref().and_then(|s| s.username.as_deref()),
            },
            content: event.content.as_deref(),
            timestamp: &event.timestamp,
            seq,
            deleted: event.deleted,
            details,
        }
    }

    /// The payload as a JSON value, ready to emit.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn empty_object() -> &'static RawValue {
    // A constant, valid JSON object: parsing it cannot fail.
    serde_json::from_str(EMPTY_OBJECT).unwrap_or_else(|_| unreachable!("`{{}}` is valid JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn sample() -> Event {
        Event {
            id: "comments:1".into(),
            event_type: "comments".into(),
            account_id: "17841".into(),
            sender: Some(Sender {
                id: "42".into(),
                username: Some("ana".into()),
            }),
            content: Some("Great post!".into()),
            timestamp: "2024-01-01T12:00:00.000Z".into(),
            deleted: false,
            details_json: r#"{"media":{"id":"9"}}"#.into(),
            received_at_ms: 1,
            source: "instagram".into(),
        }
    }

    #[test]
    fn protobuf_round_trip() {
        let event = sample();
        let bytes = event.encode_to_vec();
        assert_eq!(Event::decode(bytes.as_slice()).unwrap(), event);
    }

    #[test]
    fn client_json_has_the_seed_fields_and_seq() {
        let event = sample();
        let json = WebhookEvent::new(&event, 7).to_value();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "comments:1", "eventType": "comments", "accountId": "17841",
                "sender": {"id": "42", "username": "ana"}, "content": "Great post!",
                "timestamp": "2024-01-01T12:00:00.000Z", "seq": 7,
                "details": {"media": {"id": "9"}}
            })
        );
    }

    #[test]
    fn absent_sender_and_bad_details_stay_safe_for_clients() {
        let mut event = sample();
        event.sender = None;
        event.content = None;
        event.details_json = "not json".into();
        event.deleted = true;
        let json = WebhookEvent::new(&event, 1).to_value();
        assert_eq!(
            json["sender"],
            serde_json::json!({"id": null, "username": null})
        );
        assert_eq!(json["content"], serde_json::Value::Null);
        assert_eq!(json["details"], serde_json::json!({}));
        assert_eq!(json["deleted"], true);
    }

    #[test]
    fn subjects_round_trip() {
        let s = subjects::event("17841", "comments");
        assert_eq!(s, "instantchat.events.17841.comments");
        assert_eq!(subjects::parse_event(&s), Some(("17841", "comments")));
        assert_eq!(
            subjects::parse_event("instantchat.webhooks.instagram"),
            None
        );
        assert_eq!(subjects::account("0"), "instantchat.events.0.>");
    }

    #[test]
    fn token_rules() {
        assert!(is_valid_event_type("message_reactions"));
        assert!(!is_valid_event_type("Comments"));
        assert!(!is_valid_event_type(""));
        assert!(!is_valid_event_type(&"a".repeat(65)));
        assert!(is_valid_account_id("0"));
        assert!(!is_valid_account_id("a.b"));
        assert!(!is_valid_account_id("*"));
        assert!(!is_valid_account_id(""));
    }
}
