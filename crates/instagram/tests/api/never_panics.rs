//! Property tests: `normalize` never panics, on arbitrary JSON (including Instagram-like
//! envelopes with random contents), arbitrary bytes and mutated real fixtures, and every event
//! it yields keeps the contract.

use instantchat_event::{is_valid_account_id, is_valid_event_type};
use instantchat_instagram::{normalize, sign, verify_signature};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const RECEIVED: i64 = 1_700_000_000_000;

const KEYS: &[&str] = &[
    "object",
    "entry",
    "id",
    "time",
    "changes",
    "messaging",
    "field",
    "value",
    "from",
    "sender",
    "recipient",
    "timestamp",
    "message",
    "mid",
    "text",
    "is_echo",
    "is_deleted",
    "message_edit",
    "num_edit",
    "reaction",
    "emoji",
    "read",
    "postback",
    "title",
    "referral",
    "username",
    "comment_id",
    "media_id",
    "eventType",
    "accountId",
    "comment",
    "content",
];
const FIELDS: &[&str] = &[
    "comments",
    "live_comments",
    "mentions",
    "messages",
    "story_insights",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-zA-Z_.\\-\"\\\\é😍]{0,10}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        (0i64..2_000_000_000_000).prop_map(Value::from),
        "[0-9]{0,20}".prop_map(Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{0,9})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?"
            .prop_map(Value::from),
        proptest::sample::select(KEYS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..7)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Sometimes a well-formed value, sometimes anything.
fn or_any(good: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![3 => good, 1 => value()].boxed()
}

fn sender() -> BoxedStrategy<Value> {
    or_any(
        (leaf(), proptest::option::of(leaf())).prop_map(|(id, username)| match username {
            Some(u) => json!({"id": id, "username": u}),
            None => json!({"id": id}),
        }),
    )
}

fn change() -> BoxedStrategy<Value> {
    let field = prop_oneof![
        3 => proptest::sample::select(FIELDS).prop_map(Value::from),
        1 => leaf(),
    ];
    let payload = (leaf(), sender(), leaf(), leaf(), leaf(), value()).prop_map(
        |(id, from, text, mid, comment_id, extra)| {
            json!({"id": id, "from": from, "sender": from, "text": text, "comment_id": comment_id,
                   "message": {"mid": mid, "text": text}, "extra": extra})
        },
    );
    or_any(
        (field, or_any(payload)).prop_map(|(field, value)| json!({"field": field, "value": value})),
    )
}

fn messaging_item() -> BoxedStrategy<Value> {
    let event_key = prop_oneof![
        proptest::sample::select(
            &[
                "message",
                "message_edit",
                "reaction",
                "read",
                "postback",
                "referral",
                "optin"
            ][..]
        )
        .prop_map(str::to_owned),
        key(),
    ];
    let payload = (
        leaf(),
        leaf(),
        any::<bool>(),
        any::<bool>(),
        leaf(),
        value(),
    )
        .prop_map(|(mid, text, echo, deleted, num, extra)| {
            json!({"mid": mid, "text": text, "is_echo": echo, "is_deleted": deleted,
                   "num_edit": num, "emoji": text, "reaction": text, "title": text, "x": extra})
        });
    or_any(
        (sender(), leaf(), event_key, or_any(payload)).prop_map(|(sender, ts, key, payload)| {
            let mut item = Map::new();
            item.insert("sender".into(), sender);
            item.insert("recipient".into(), json!({"id": "17841"}));
            item.insert("timestamp".into(), ts);
            item.insert(key, payload);
            Value::Object(item)
        }),
    )
}

fn entry() -> BoxedStrategy<Value> {
    let id = prop_oneof![3 => "[0-9]{1,17}".prop_map(Value::from), 1 => leaf()];
    or_any(
        (
            id,
            leaf(),
            proptest::option::of(prop::collection::vec(change(), 0..4)),
            proptest::option::of(prop::collection::vec(messaging_item(), 0..4)),
        )
            .prop_map(|(id, time, changes, messaging)| {
                json!({"id": id, "time": time, "changes": changes, "messaging": messaging})
            }),
    )
}

fn envelope() -> impl Strategy<Value = Value> {
    prop::collection::vec(entry(), 0..4)
        .prop_map(|entries| json!({"object": "instagram", "entry": entries}))
}

fn simple_body() -> impl Strategy<Value = Value> {
    (leaf(), leaf(), leaf(), sender(), leaf(), value()).prop_map(
        |(id, ty, account, sender, ts, extra)| {
            json!({"id": id, "eventType": ty, "accountId": account, "sender": sender,
               "timestamp": ts, "message": {"text": extra}, "content": ts})
        },
    )
}

/// Normalizes twice (same result: ids are stable), checks every event against the contract and
/// returns how many there were.
fn check(body: &[u8]) -> usize {
    let first = normalize(body, RECEIVED);
    assert_eq!(first, normalize(body, RECEIVED), "deterministic");
    let Ok(normalized) = first else { return 0 };
    for e in &normalized.events {
        assert!(is_valid_event_type(&e.event_type), "{e:?}");
        assert!(is_valid_account_id(&e.account_id), "{e:?}");
        let rest =
            e.id.strip_prefix(&e.event_type)
                .and_then(|r| r.strip_prefix(':'));
        assert!(rest.is_some_and(|r| !r.is_empty()), "{e:?}");
        assert!(details_are_a_json_object(&e.details_json), "{e:?}");
        let ts = e.timestamp.as_bytes();
        assert!(
            ts.len() == 24 && ts[10] == b'T' && ts[19] == b'.' && ts[23] == b'Z',
            "{e:?}"
        );
        assert_eq!(e.received_at_ms, RECEIVED);
        assert!(e.source == "instagram" || e.source == "simple");
        if let Some(s) = &e.sender {
            assert!(!s.id.is_empty());
        }
    }
    normalized.events.len()
}

#[test]
fn the_envelope_generator_reaches_the_rules() {
    // Guards the properties below against a generator that only ever makes skipped items.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut types = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let body = envelope()
            .new_tree(&mut runner)
            .unwrap()
            .current()
            .to_string();
        if let Ok(n) = normalize(body.as_bytes(), RECEIVED) {
            types.extend(n.events.into_iter().map(|e| e.event_type));
        }
    }
    for expected in [
        "comments",
        "mentions",
        "messages",
        "message_reactions",
        "messaging_seen",
    ] {
        assert!(
            types.contains(expected),
            "{expected} never generated: {types:?}"
        );
    }
}

/// `details_json` is a JSON object that serde_json reads, except that numbers beyond f64 (`1e400`,
/// valid JSON that serde_json refuses by default) are kept as Meta wrote them.
fn details_are_a_json_object(details: &str) -> bool {
    match serde_json::from_str::<Value>(details) {
        Ok(value) => value.is_object(),
        Err(e) => {
            e.to_string().starts_with("number out of range")
                && details.starts_with('{')
                && serde_json::from_str::<&serde_json::value::RawValue>(details).is_ok()
        }
    }
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = crate::FIXTURES;
    // The JSON files only (the bodies and their manifest), not the folder's README.
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_json_value(v in value()) {
        check(v.to_string().as_bytes());
    }

    #[test]
    fn instagram_like_envelopes(v in envelope()) {
        check(v.to_string().as_bytes());
        check(serde_json::to_string_pretty(&v).unwrap().as_bytes());
    }

    #[test]
    fn simplified_like_bodies(v in simple_body()) {
        check(v.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
        // Verifying arbitrary bytes and headers never panics either.
        let header = String::from_utf8_lossy(&bytes);
        let _ = verify_signature(&["s"], Some(&header), &bytes);
        prop_assert!(verify_signature(&["s"], Some(&sign(b"s", &bytes)), &bytes).is_ok());
    }

    #[test]
    fn mutated_fixtures(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
    ) {
        let all = fixtures();
        let mut body = pick.get(&all).clone();
        for (at, byte, op) in edits {
            let i = at.index(body.len().max(1)).min(body.len());
            match op {
                0 if i < body.len() => body[i] = byte,
                1 => body.insert(i, byte),
                // A lone surrogate escape: valid JSON inside a string, no character.
                2 => { body.splice(i..i, *b"\\udc00"); }
                _ if i < body.len() => { body.remove(i); }
                _ => {}
            }
        }
        check(&body);
    }
}
