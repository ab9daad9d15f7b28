//! Every fixture in `testdata/instagram/` (real Meta deliveries, dashboard tests and doc
//! shapes, byte for byte): its manifest signature verifies, and it normalizes to exactly the
//! expected events.

use std::path::PathBuf;

use instantchat_event::Event;
use instantchat_instagram::{normalize, verify_signature};

const SECRET: &str = "test_app_secret";
const RECEIVED: i64 = 1_700_000_000_000;

fn dir() -> PathBuf {
    PathBuf::from(crate::FIXTURES)
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `(file, X-Hub-Signature-256)` for every fixture in the manifest.
fn manifest() -> Vec<(String, String)> {
    let manifest: serde_json::Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    assert_eq!(manifest["secret"], SECRET);
    manifest["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["file"].as_str().unwrap().to_owned();
            assert_eq!(
                f["bytes"].as_u64().unwrap() as usize,
                read(&file).len(),
                "{file}"
            );
            (file, f["x_hub_signature_256"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// What one event must be: type, id, account, sender (id, username), content, timestamp, and
/// the keys of `details` in order.
struct Expect {
    event_type: &'static str,
    id: &'static str,
    account: &'static str,
    sender: Option<(&'static str, Option<&'static str>)>,
    content: Option<&'static str>,
    timestamp: &'static str,
    details_keys: &'static [&'static str],
}

const MID_F09: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDcwOTQ1OTgwNDgzOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjAyOTk1MTcyODQ1MTg0MzozMjE4NTY4MDg1NTcyOTI0NzkxNDY1NDI5OTY5OTgwNjIwOAZDZD";
const MID_F10: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDcyMTEwNTU4MTM2OjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjAyNTg0MzYzNjQ5MDY2MjozMjEwMDIzNjExNTg4MzI3NzM3OTI0MTg2MTg1NjYyNDY0MAZDZD";
const MID_F13: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAxMTYzMTM3NjMzOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI1OTY5MTcxNzE0NjgxMzAxMjozMTg0MTAyNjc2NjgzNDY4MjQ5MDcwNDExNjI3NDE2NzgwOAZDZD";
const MID_F16: &str = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDM0NTM0MDYxODIwOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjI2MjgxNDcxMjY3MjQwMDozMjg0MjUyMDcyNDUxODA1NjU0OTU3MjAzMTUzOTA1MjU0NAZDZD";

fn expected(file: &str) -> Vec<Expect> {
    let e = |event_type, id, account, sender, content, timestamp, details_keys| Expect {
        event_type,
        id,
        account,
        sender,
        content,
        timestamp,
        details_keys,
    };
    let msg = |id, account, sender, content, timestamp, keys| {
        e(
            "messages",
            id,
            account,
            Some((sender, None)),
            content,
            timestamp,
            keys,
        )
    };
    match file {
        "f01_comments_dashboard_test.json" => vec![e(
            "comments",
            "comments:17865799348089039",
            "0",
            Some(("232323232", Some("test"))),
            Some("This is an example."),
            "2025-02-21T16:52:54.000Z",
            &["field", "media", "id", "parent_id"],
        )],
        "f02_comments_real_feed_spaced.json" => vec![e(
            "comments",
            "comments:17867301270523379",
            "17841430541631416",
            Some(("848067418322071", Some("m_waqarsikandar"))),
            Some("LINK"),
            "2026-04-16T11:39:51.000Z",
            &["media", "id", "field"],
        )],
        "f04_live_comments_dashboard_test.json" => vec![e(
            "live_comments",
            "live_comments:17865799348089039",
            "0",
            Some(("232323232", Some("test"))),
            Some("This is an example."),
            "2025-02-21T16:52:54.000Z",
            &["field", "media", "id"],
        )],
        "f05_mentions_comment_docs.json" => vec![e(
            "mentions",
            "mentions:17894227972186120",
            "17841405726653026",
            None,
            None,
            "2018-03-09T19:16:08.000Z",
            &["field", "comment_id", "media_id"],
        )],
        // The rule takes `entry.time` for `changes[]` items; the value's own (fake, 2018)
        // timestamp stays in details.
        "f08_messages_test_changes_envelope.json" => vec![msg(
            "messages:random_mid",
            "0",
            "12334",
            Some("random_text"),
            "2025-08-06T22:44:41.000Z",
            &["field", "recipient", "timestamp", "mid"],
        )],
        "f09_message_text_real.json" => vec![msg(
            leak(format!("messages:{MID_F09}")),
            "17841470945980483",
            "613556994653795",
            Some("good afternoon mam"),
            "2025-04-16T07:40:55.335Z",
            &["recipient", "mid"],
        )],
        "f10_message_image_attachment_real.json" => vec![msg(
            leak(format!("messages:{MID_F10}")),
            "17841472110558136",
            "489760440872775",
            None,
            "2025-02-21T17:01:26.706Z",
            &["recipient", "mid", "attachments"],
        )],
        "f13_message_quick_reply_real.json" => vec![msg(
            leak(format!("messages:{MID_F13}")),
            "17841401163137633",
            "355813534163958",
            Some("How can I purchase your products?"),
            "2024-09-12T01:45:19.738Z",
            &["recipient", "mid", "quick_reply"],
        )],
        "f16_message_edit_num0_real.json" => vec![e(
            "message_edit",
            leak(format!("message_edit:edit:{MID_F16}:0")),
            "17841434534061820",
            Some(("2182294425935229", None)),
            None,
            "2026-06-02T10:36:56.736Z",
            &["recipient", "mid", "num_edit"],
        )],
        // Derived id: SHA-256("17841400000000000" 0 "message_reactions" 0 <item bytes>),
        // computed independently.
        "f18_reaction_docs_shape.json" => vec![e(
            "message_reactions",
            "message_reactions:e2ff12fabe8878ad3ea205e8d9a586ae",
            "17841400000000000",
            Some(("6394745907298910", None)),
            Some("\u{2764}\u{fe0f}"),
            "2019-09-23T18:14:45.349Z",
            &["recipient", "mid", "action", "reaction"],
        )],
        "f24_batched_multi_entry_synthetic.json" => vec![
            msg(
                "messages:m_batch_1",
                "17841470945980483",
                "613556994653795",
                Some("first"),
                "2025-04-16T07:40:55.335Z",
                &["recipient", "mid"],
            ),
            msg(
                "messages:m_batch_2",
                "17841470945980483",
                "613556994653795",
                Some("second"),
                "2025-04-16T07:40:55.336Z",
                &["recipient", "mid"],
            ),
            e(
                "messaging_seen",
                "messaging_seen:f3d31410580483496dbac29a64dccbac",
                "17841472110558136",
                Some(("489760440872775", None)),
                None,
                "2025-04-16T07:40:55.337Z",
                &["recipient", "mid"],
            ),
        ],
        "f25_unicode_escape_vector_synthetic.json" => vec![msg(
            "messages:m_unicode_1",
            "17841470945980483",
            "613556994653795",
            Some("café äöå 😍 https://example.com/a"),
            "2025-04-16T07:40:55.335Z",
            &["recipient", "mid"],
        )],
        other => panic!("{other}: a fixture without expectations; add them here"),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn details_keys(event: &Event) -> Vec<String> {
    // `preserve_order` is off in the workspace, so read the keys in order with a RawValue map.
    let map: Vec<(String, Box<serde_json::value::RawValue>)> =
        serde_json::from_str::<ordered::Ordered>(&event.details_json)
            .unwrap()
            .0;
    map.into_iter().map(|(k, _)| k).collect()
}

/// A JSON object's keys in order, without a map type that sorts them.
mod ordered {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    pub struct Ordered(pub Vec<(String, Box<RawValue>)>);

    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Ordered(v))
                }
            }
            d.deserialize_map(V)
        }
    }
}

#[test]
fn every_fixture_verifies_and_normalizes_as_expected() {
    let fixtures = manifest();
    // Every body, that is every JSON file but the manifest (the README is not one).
    let on_disk = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "manifest.json" && n.to_string_lossy().ends_with(".json"))
        .count();
    assert_eq!(
        fixtures.len(),
        on_disk,
        "every fixture file is in the manifest"
    );
    for (file, header) in fixtures {
        let body = read(&file);
        assert_eq!(
            verify_signature(&[SECRET], Some(&header), &body),
            Ok(()),
            "{file}"
        );

        let normalized = normalize(&body, RECEIVED).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            normalized.skipped.is_empty(),
            "{file}: {:?}",
            normalized.skipped
        );
        let expected = expected(&file);
        assert_eq!(normalized.events.len(), expected.len(), "{file}");
        for (event, want) in normalized.events.iter().zip(&expected) {
            assert_eq!(event.event_type, want.event_type, "{file}");
            assert_eq!(event.id, want.id, "{file}");
            assert_eq!(event.account_id, want.account, "{file}");
            let sender = event
                .sender
                .as_ref()
                .map(|s| (s.id.as_str(), s.username.as_deref()));
            assert_eq!(sender, want.sender, "{file}");
            assert_eq!(event.content.as_deref(), want.content, "{file}");
            assert_eq!(event.timestamp, want.timestamp, "{file}");
            assert_eq!(details_keys(event), want.details_keys, "{file}");
            assert!(!event.deleted, "{file}");
            assert_eq!(event.source, "instagram", "{file}");
            assert_eq!(event.received_at_ms, RECEIVED, "{file}");
        }

        let again = normalize(&body, RECEIVED + 5_000).unwrap();
        let ids = |n: &instantchat_instagram::Normalized| {
            n.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&again),
            ids(&normalized),
            "{file}: ids are stable across deliveries"
        );
    }
}

#[test]
fn f10_attachment_details_keep_meta_bytes() {
    let body = read("f10_message_image_attachment_real.json");
    let event = &normalize(&body, RECEIVED).unwrap().events[0];
    let details: serde_json::Value = serde_json::from_str(&event.details_json).unwrap();
    assert_eq!(details["recipient"]["id"], "17841472110558136");
    assert_eq!(details["mid"], MID_F10);
    assert_eq!(details["attachments"][0]["type"], "image");
    // The attachment is copied byte for byte from the body.
    let text = std::str::from_utf8(&body).unwrap();
    let start = text.find(r#"[{"type":"image""#).unwrap();
    assert!(
        event
            .details_json
            .contains(&text[start..text.find("}}]").unwrap() + 3])
    );
}

#[test]
fn f18_reaction_details() {
    let event = &normalize(&read("f18_reaction_docs_shape.json"), RECEIVED)
        .unwrap()
        .events[0];
    let details: serde_json::Value = serde_json::from_str(&event.details_json).unwrap();
    assert_eq!(details["action"], "react");
    assert_eq!(details["reaction"], "love");
    assert!(details.get("emoji").is_none(), "the emoji is the content");
}

#[test]
fn f25_reserialized_json_fails_verification_raw_bytes_pass() {
    let body = read("f25_unicode_escape_vector_synthetic.json");
    let header = manifest()
        .into_iter()
        .find(|(file, _)| file == "f25_unicode_escape_vector_synthetic.json")
        .unwrap()
        .1;
    assert_eq!(verify_signature(&[SECRET], Some(&header), &body), Ok(()));
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let reserialized = serde_json::to_vec(&value).unwrap();
    assert_ne!(reserialized, body);
    assert!(verify_signature(&[SECRET], Some(&header), &reserialized).is_err());
}
