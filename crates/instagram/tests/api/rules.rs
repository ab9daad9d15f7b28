//! The normalization rules of docs/protocol.md ("Normalization"), one test per table row and
//! per rule.

use instantchat_event::Event;
use instantchat_instagram::{Normalized, Rejected, normalize};
use serde_json::{Value, json};

const RECEIVED: i64 = 1_700_000_000_123;
const RECEIVED_ISO: &str = "2023-11-14T22:13:20.123Z";

fn run(body: &str) -> Normalized {
    normalize(body.as_bytes(), RECEIVED).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The one event `body` yields, with nothing skipped.
fn one(body: &str) -> Event {
    let mut n = run(body);
    assert!(n.skipped.is_empty(), "{:?}", n.skipped);
    assert_eq!(n.events.len(), 1, "{:?}", n.events);
    n.events.remove(0)
}

fn details(event: &Event) -> Value {
    let value: Value = serde_json::from_str(&event.details_json).unwrap();
    assert!(value.is_object(), "{}", event.details_json);
    value
}

fn sender(event: &Event) -> Option<(&str, Option<&str>)> {
    event
        .sender
        .as_ref()
        .map(|s| (s.id.as_str(), s.username.as_deref()))
}

/// A `changes[]` envelope for account 17841 at 2025-02-21T16:52:54Z with one item.
fn change(field: &str, value: &str) -> String {
    format!(
        r#"{{"object":"instagram","entry":[{{"id":"17841","time":1740156774,"changes":[{{"field":"{field}","value":{value}}}]}}]}}"#
    )
}

/// A `messaging[]` envelope for account 17841 with one item whose event key is `key`.
fn messaging(key: &str, payload: &str) -> String {
    messaging_item(&format!(
        r#"{{"sender":{{"id":"555"}},"recipient":{{"id":"17841"}},"timestamp":1744789255335,"{key}":{payload}}}"#
    ))
}

fn messaging_item(item: &str) -> String {
    format!(
        r#"{{"object":"instagram","entry":[{{"id":"17841","time":1744789255994,"messaging":[{item}]}}]}}"#
    )
}

fn is_derived(id: &str, event_type: &str) -> bool {
    id.strip_prefix(event_type)
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|hash| hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

// --- changes[] rows -----------------------------------------------------------------------

#[test]
fn comments_row() {
    let e = one(&change(
        "comments",
        r#"{"from":{"id":"42","username":"ana"},"media":{"id":"9","media_product_type":"FEED"},"id":"1786","parent_id":"1785","text":"Great post!"}"#,
    ));
    assert_eq!(e.event_type, "comments");
    assert_eq!(e.id, "comments:1786");
    assert_eq!(e.account_id, "17841");
    assert_eq!(sender(&e), Some(("42", Some("ana"))));
    assert_eq!(e.content.as_deref(), Some("Great post!"));
    assert_eq!(e.timestamp, "2025-02-21T16:52:54.000Z");
    assert_eq!(e.source, "instagram");
    assert_eq!(e.received_at_ms, RECEIVED);
    assert_eq!(
        details(&e),
        json!({"field":"comments","media":{"id":"9","media_product_type":"FEED"},"id":"1786","parent_id":"1785"})
    );
}

#[test]
fn live_comments_row() {
    let e = one(&change(
        "live_comments",
        r#"{"from":{"id":"42","username":"ana"},"media":{"id":"9","media_product_type":"LIVE"},"id":"1786","text":"hi"}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("live_comments", "live_comments:1786")
    );
    assert_eq!(sender(&e), Some(("42", Some("ana"))));
    assert_eq!(e.content.as_deref(), Some("hi"));
    assert_eq!(details(&e)["media"]["media_product_type"], "LIVE");
}

#[test]
fn mentions_row_prefers_comment_id_then_media_id() {
    let e = one(&change(
        "mentions",
        r#"{"comment_id":"c1","media_id":"m1"}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("mentions", "mentions:c1")
    );
    assert_eq!((e.sender.as_ref(), e.content.as_deref()), (None, None));
    assert_eq!(
        details(&e),
        json!({"field":"mentions","comment_id":"c1","media_id":"m1"})
    );

    let e = one(&change("mentions", r#"{"media_id":"m1"}"#));
    assert_eq!(e.id, "mentions:m1");
}

#[test]
fn messages_change_row_from_the_dashboard_test() {
    let e = one(&change(
        "messages",
        r#"{"sender":{"id":"12334"},"recipient":{"id":"23245"},"timestamp":"1527459824","message":{"mid":"random_mid","text":"random_text"}}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("messages", "messages:random_mid")
    );
    assert_eq!(sender(&e), Some(("12334", None)));
    assert_eq!(e.content.as_deref(), Some("random_text"));
    assert_eq!(
        e.timestamp, "2025-02-21T16:52:54.000Z",
        "changes items take entry.time"
    );
    assert_eq!(
        details(&e),
        json!({"field":"messages","recipient":{"id":"23245"},"timestamp":"1527459824","mid":"random_mid"})
    );
}

#[test]
fn unknown_changes_field_becomes_its_own_type_with_a_derived_id() {
    let body = change(
        "story_insights",
        r#"{"media_id":"1","impressions":44,"id":"x"}"#,
    );
    let e = one(&body);
    assert_eq!(e.event_type, "story_insights");
    assert!(is_derived(&e.id, "story_insights"), "{}", e.id);
    assert_eq!((e.sender.as_ref(), e.content.as_deref()), (None, None));
    assert_eq!(
        details(&e),
        json!({"field":"story_insights","media_id":"1","impressions":44,"id":"x"})
    );

    let e = one(&change(
        "new_thing",
        r#"{"from":{"id":"7","username":"u"},"text":"t"}"#,
    ));
    assert_eq!(sender(&e), Some(("7", Some("u"))));
    assert_eq!(e.content, None, "other fields carry no content");
    assert_eq!(details(&e), json!({"field":"new_thing","text":"t"}));
}

#[test]
fn invalid_changes_field_name_is_skipped_and_the_rest_goes_on() {
    let body = r#"{"object":"instagram","entry":[{"id":"1","time":1,"changes":[
        {"field":"Comments","value":{}},
        {"field":"a.b","value":{}},
        {"value":{}},
        {"field":"comments","value":{"id":"ok","text":"t"}}]}]}"#;
    let n = run(body);
    assert_eq!(n.events.len(), 1);
    assert_eq!(n.events[0].id, "comments:ok");
    let items: Vec<(usize, usize)> = n.skipped.iter().map(|s| (s.entry, s.item)).collect();
    assert_eq!(items, [(0, 0), (0, 1), (0, 2)]);
    assert!(
        n.skipped[0].reason.contains("entry[0].changes[0]"),
        "{}",
        n.skipped[0].reason
    );
    assert!(
        n.skipped[0].reason.contains("\"Comments\""),
        "{}",
        n.skipped[0].reason
    );
    assert!(
        n.skipped[2].reason.contains("field"),
        "{}",
        n.skipped[2].reason
    );
}

#[test]
fn an_entry_list_without_a_rule_is_skipped_not_dropped() {
    // The handover protocol's `standby` carries messaging-like items for a secondary app.
    let body = r#"{"object":"instagram","entry":[{"id":"1","time":1,"uid":"x","extra":[],
        "standby":[{"sender":{"id":"s"},"message":{"mid":"m1","text":"t"}},{}],
        "messaging":[{"sender":{"id":"s"},"message":{"mid":"m2","text":"t"}}]}]}"#;
    let n = run(body);
    assert_eq!(n.events.len(), 1);
    assert_eq!(n.events[0].id, "messages:m2");
    assert_eq!(n.skipped.len(), 1, "{:?}", n.skipped);
    assert_eq!((n.skipped[0].entry, n.skipped[0].item), (0, 0));
    assert!(
        n.skipped[0].reason.contains("\"standby\" (2 items)"),
        "{}",
        n.skipped[0].reason
    );
}

// --- messaging[] rows ---------------------------------------------------------------------

#[test]
fn message_row() {
    let e = one(&messaging(
        "message",
        r#"{"mid":"m1","text":"hello","reply_to":{"story":{"id":"s"}},"quick_reply":{"payload":"P"}}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("messages", "messages:m1")
    );
    assert_eq!(sender(&e), Some(("555", None)));
    assert_eq!(e.content.as_deref(), Some("hello"));
    assert_eq!(
        e.timestamp, "2025-04-16T07:40:55.335Z",
        "messaging[].timestamp wins"
    );
    assert!(!e.deleted);
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"mid":"m1","reply_to":{"story":{"id":"s"}},"quick_reply":{"payload":"P"}})
    );
}

#[test]
fn message_without_text_has_no_content() {
    let e = one(&messaging(
        "message",
        r#"{"mid":"m1","attachments":[{"type":"image","payload":{"url":"u"}}]}"#,
    ));
    assert_eq!(e.content, None);
    assert_eq!(details(&e)["attachments"][0]["type"], "image");
}

#[test]
fn echo_becomes_message_echoes() {
    let e = one(&messaging(
        "message",
        r#"{"mid":"m1","text":"sent by us","is_echo":true}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("message_echoes", "message_echoes:m1")
    );
    assert_eq!(e.content.as_deref(), Some("sent by us"));
    assert_eq!(details(&e)["is_echo"], true);

    let e = one(&messaging("message", r#"{"mid":"m1","is_echo":false}"#));
    assert_eq!(e.event_type, "messages");
}

#[test]
fn deleted_message_is_marked_with_no_content() {
    let e = one(&messaging("message", r#"{"mid":"m1","is_deleted":true}"#));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("messages", "messages:deleted:m1")
    );
    assert!(e.deleted);
    assert_eq!(e.content, None);
    assert_eq!(sender(&e), Some(("555", None)));
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"mid":"m1","is_deleted":true})
    );
}

#[test]
fn message_edit_row() {
    let e = one(&messaging(
        "message_edit",
        r#"{"mid":"m1","text":"fixed typo","num_edit":2}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("message_edit", "message_edit:edit:m1:2")
    );
    assert_eq!(e.content.as_deref(), Some("fixed typo"));
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"mid":"m1","num_edit":2})
    );

    let e = one(&messaging("message_edit", r#"{"mid":"m1","num_edit":"0"}"#));
    assert_eq!(e.id, "message_edit:edit:m1:0");
    assert_eq!(e.content, None);

    let e = one(&messaging("message_edit", r#"{"mid":"m1"}"#));
    assert!(
        is_derived(&e.id, "message_edit"),
        "no num_edit: derived, {}",
        e.id
    );
}

#[test]
fn reaction_row_content_is_the_emoji_else_the_name() {
    let e = one(&messaging(
        "reaction",
        r#"{"mid":"m1","action":"react","reaction":"love","emoji":"\u2764\ufe0f"}"#,
    ));
    assert_eq!(e.event_type, "message_reactions");
    assert!(is_derived(&e.id, "message_reactions"), "{}", e.id);
    assert_eq!(e.content.as_deref(), Some("❤\u{fe0f}"));
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"mid":"m1","action":"react","reaction":"love"})
    );

    let e = one(&messaging(
        "reaction",
        r#"{"mid":"m1","action":"react","reaction":"love"}"#,
    ));
    assert_eq!(e.content.as_deref(), Some("love"));
    assert_eq!(details(&e)["reaction"], "love");

    let e = one(&messaging("reaction", r#"{"mid":"m1","action":"unreact"}"#));
    assert_eq!(e.content, None);
}

#[test]
fn read_row_with_and_without_sender() {
    let e = one(&messaging("read", r#"{"mid":"m0"}"#));
    assert_eq!(e.event_type, "messaging_seen");
    assert!(is_derived(&e.id, "messaging_seen"), "{}", e.id);
    assert_eq!(sender(&e), Some(("555", None)));
    assert_eq!(e.content, None);
    assert_eq!(details(&e), json!({"recipient":{"id":"17841"},"mid":"m0"}));

    let e = one(&messaging_item(
        r#"{"recipient":{"id":"17841"},"read":{"watermark":1}}"#,
    ));
    assert_eq!(e.sender, None);
    assert_eq!(
        e.timestamp, "2025-04-16T07:40:55.994Z",
        "no item timestamp: entry.time (ms)"
    );
}

#[test]
fn postback_row() {
    let e = one(&messaging(
        "postback",
        r#"{"mid":"m9","title":"Get started","payload":"START"}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("messaging_postbacks", "messaging_postbacks:m9")
    );
    assert_eq!(e.content.as_deref(), Some("Get started"));
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"mid":"m9","payload":"START"})
    );

    let e = one(&messaging(
        "postback",
        r#"{"title":"Get started","payload":"START"}"#,
    ));
    assert!(
        is_derived(&e.id, "messaging_postbacks"),
        "no mid: derived, {}",
        e.id
    );
}

#[test]
fn referral_row() {
    let e = one(&messaging(
        "referral",
        r#"{"ref":"promo","source":"ADS","type":"OPEN_THREAD"}"#,
    ));
    assert_eq!(e.event_type, "messaging_referral");
    assert!(is_derived(&e.id, "messaging_referral"), "{}", e.id);
    assert_eq!(sender(&e), Some(("555", None)));
    assert_eq!(e.content, None);
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"ref":"promo","source":"ADS","type":"OPEN_THREAD"})
    );
}

#[test]
fn unknown_messaging_key_becomes_its_own_type() {
    let e = one(&messaging("optin", r#"{"ref":"x","text":"not content"}"#));
    assert_eq!(e.event_type, "optin");
    assert!(is_derived(&e.id, "optin"), "{}", e.id);
    assert_eq!(sender(&e), Some(("555", None)));
    assert_eq!(e.content, None);
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"ref":"x","text":"not content"})
    );

    // Named like an event type with a rule of its own, it still follows the generic rule.
    let e = one(&messaging("messages", r#"{"mid":"m","text":"t"}"#));
    assert_eq!(e.event_type, "messages");
    assert!(is_derived(&e.id, "messages"), "{}", e.id);
    assert_eq!(e.content, None);

    // A payload that is not an object is kept whole under its key.
    let e = one(&messaging("pass_thread_control", "42"));
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"pass_thread_control":42})
    );
}

#[test]
fn an_item_with_two_event_keys_uses_the_first_known_one_and_keeps_the_other() {
    let e = one(&messaging_item(
        r#"{"sender":{"id":"1"},"reaction":{"mid":"r","emoji":"x"},"message":{"mid":"m","text":"t"}}"#,
    ));
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("messages", "messages:m")
    );
    assert_eq!(e.content.as_deref(), Some("t"));
    assert_eq!(
        details(&e),
        json!({"reaction":{"mid":"r","emoji":"x"},"mid":"m"})
    );
}

#[test]
fn a_payload_that_is_not_an_object_is_kept_whole() {
    let e = one(&messaging("message", r#""just text""#));
    assert_eq!(e.event_type, "messages");
    assert!(is_derived(&e.id, "messages"), "{}", e.id);
    assert_eq!(e.content, None);
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"17841"},"message":"just text"})
    );
    let e = one(&change("comments", "[1,2]"));
    assert_eq!(details(&e), json!({"field":"comments","value":[1,2]}));
}

#[test]
fn invalid_messaging_key_and_keyless_items_are_skipped() {
    let body = messaging_item(
        r#"{"sender":{"id":"1"},"Weird-Key":{}},{"sender":{"id":"1"},"timestamp":1},"not an object",{"sender":{"id":"1"},"message":{"mid":"ok"}}"#,
    );
    let n = run(&body);
    assert_eq!(n.events.len(), 1);
    assert_eq!(n.events[0].id, "messages:ok");
    let items: Vec<usize> = n.skipped.iter().map(|s| s.item).collect();
    assert_eq!(items, [0, 1, 2]);
    assert!(
        n.skipped[0].reason.contains("\"Weird-Key\""),
        "{}",
        n.skipped[0].reason
    );
    assert!(
        n.skipped[2].reason.contains("entry[0].messaging[2]"),
        "{}",
        n.skipped[2].reason
    );
}

// --- rules ------------------------------------------------------------------------------------

#[test]
fn every_id_is_prefixed_with_its_event_type() {
    for body in [
        change("comments", r#"{"id":"1"}"#),
        change("mentions", r#"{"media_id":"1"}"#),
        messaging("message", r#"{"mid":"1"}"#),
        messaging("reaction", r#"{"mid":"1"}"#),
        messaging("anything", "{}"),
    ] {
        let e = one(&body);
        assert!(e.id.starts_with(&format!("{}:", e.event_type)), "{}", e.id);
    }
}

#[test]
fn number_and_string_ids_are_both_accepted() {
    let body = r#"{"object":"instagram","entry":[{"id":17841405726653026,"time":1740156774,"changes":[{"field":"comments","value":{"from":{"id":232323232,"username":"n"},"id":17865799348089039,"text":"x"}}]}]}"#;
    let e = one(body);
    assert_eq!(e.account_id, "17841405726653026");
    assert_eq!(e.id, "comments:17865799348089039");
    assert_eq!(sender(&e), Some(("232323232", Some("n"))));

    let e = one(&messaging("message", r#"{"mid":12345}"#));
    assert_eq!(e.id, "messages:12345");
}

#[test]
fn dashboard_account_zero_is_an_ordinary_account() {
    let body = r#"{"object":"instagram","entry":[{"id":"0","time":1,"changes":[{"field":"comments","value":{"id":"1"}}]}]}"#;
    assert_eq!(one(body).account_id, "0");
}

#[test]
fn missing_or_empty_ids_fall_back_to_derived() {
    for value in [
        r#"{"text":"x"}"#,
        r#"{"id":"","text":"x"}"#,
        r#"{"id":null}"#,
        r#"{"id":{}}"#,
    ] {
        let e = one(&change("comments", value));
        assert!(is_derived(&e.id, "comments"), "{value}: {}", e.id);
    }
    let e = one(&messaging("message", r#"{"text":"no mid"}"#));
    assert!(is_derived(&e.id, "messages"), "{}", e.id);
    let e = one(&messaging("message", r#"{"mid":"","is_deleted":true}"#));
    assert!(is_derived(&e.id, "messages"), "{}", e.id);
}

#[test]
fn derived_ids_hash_account_type_and_exact_item_bytes() {
    let a = one(&messaging("read", r#"{"mid":"m0"}"#)).id;
    assert_eq!(a, one(&messaging("read", r#"{"mid":"m0"}"#)).id, "stable");
    assert_ne!(
        a,
        one(&messaging("read", r#"{"mid":"m1"}"#)).id,
        "other item"
    );
    assert_ne!(
        a,
        one(&messaging("read", r#"{"mid": "m0"}"#)).id,
        "other bytes"
    );
    let other_account = messaging("read", r#"{"mid":"m0"}"#)
        .replace(r#""id":"17841","time""#, r#""id":"17842","time""#);
    assert_ne!(a, one(&other_account).id, "other account");
}

#[test]
fn ids_unusable_as_message_ids_are_derived() {
    let long = "9".repeat(2000);
    let e = one(&messaging("message", &format!(r#"{{"mid":"{long}"}}"#)));
    assert!(is_derived(&e.id, "messages"));
    let e = one(&messaging("message", r#"{"mid":"a\r\nb"}"#));
    assert!(is_derived(&e.id, "messages"));
}

#[test]
fn entry_time_seconds_or_milliseconds_by_magnitude() {
    // Seconds in a messaging envelope, milliseconds in a changes envelope: both read right.
    let secs = r#"{"object":"instagram","entry":[{"id":"1","time":1744789255,"messaging":[{"read":{}}]}]}"#;
    assert_eq!(one(secs).timestamp, "2025-04-16T07:40:55.000Z");
    let ms = r#"{"object":"instagram","entry":[{"id":"1","time":1740156774123,"changes":[{"field":"comments","value":{}}]}]}"#;
    assert_eq!(one(ms).timestamp, "2025-02-21T16:52:54.123Z");
    let string = r#"{"object":"instagram","entry":[{"id":"1","time":"1740156774","changes":[{"field":"comments","value":{}}]}]}"#;
    assert_eq!(one(string).timestamp, "2025-02-21T16:52:54.000Z");
}

#[test]
fn item_timestamp_seconds_strings_and_fallbacks() {
    let item = |ts: &str| {
        messaging_item(&format!(
            r#"{{"sender":{{"id":"1"}},"timestamp":{ts},"read":{{}}}}"#
        ))
    };
    assert_eq!(
        one(&item("1744789255")).timestamp,
        "2025-04-16T07:40:55.000Z"
    );
    assert_eq!(
        one(&item(r#""1744789255335""#)).timestamp,
        "2025-04-16T07:40:55.335Z"
    );
    // Unreadable item timestamp: entry.time, and the value stays in details.
    let e = one(&item(r#""later""#));
    assert_eq!(e.timestamp, "2025-04-16T07:40:55.994Z");
    assert_eq!(details(&e)["timestamp"], "later");
    // No time anywhere: the received time.
    let none = r#"{"object":"instagram","entry":[{"id":"1","messaging":[{"read":{}}]}]}"#;
    assert_eq!(one(none).timestamp, RECEIVED_ISO);
}

#[test]
fn absent_and_partial_senders() {
    let e = one(&messaging_item(r#"{"message":{"mid":"1"}}"#));
    assert_eq!(e.sender, None);
    // A sender without an id is no sender, and is kept in details.
    let e = one(&messaging_item(
        r#"{"sender":{"username":"x"},"message":{"mid":"1"}}"#,
    ));
    assert_eq!(e.sender, None);
    assert_eq!(details(&e)["sender"], json!({"username":"x"}));
    // A sender with more than id and username is used and kept whole in details.
    let e = one(&messaging_item(
        r#"{"sender":{"id":"1","user_ref":"r"},"message":{"mid":"1"}}"#,
    ));
    assert_eq!(sender(&e), Some(("1", None)));
    assert_eq!(details(&e)["sender"], json!({"id":"1","user_ref":"r"}));
    let e = one(&change("comments", r#"{"id":"1","from":"not an object"}"#));
    assert_eq!(e.sender, None);
    assert_eq!(details(&e)["from"], "not an object");
}

#[test]
fn unknown_fields_and_keys_are_kept_byte_for_byte() {
    let e = one(&messaging_item(
        r#"{"sender":{"id":"1"},"recipient":{"id":"2"},"timestamp":1744789255335,"message":{"mid":"m","text":"t","future":{"a": [1.50, "caf\u00e9\/"]}},"extra_top":true}"#,
    ));
    assert_eq!(
        e.details_json,
        r#"{"recipient":{"id":"2"},"mid":"m","future":{"a": [1.50, "caf\u00e9\/"]},"extra_top":true}"#
    );
    let e = one(
        r#"{"object":"instagram","entry":[{"id":"1","time":1,"changes":[{"field":"comments","value":{"id":"c","new_key":1},"item_extra":"x"}]}]}"#,
    );
    assert_eq!(
        details(&e),
        json!({"field":"comments","new_key":1,"id":"c","item_extra":"x"})
    );
}

#[test]
fn lone_surrogate_escapes_become_replacement_characters() {
    // Valid JSON syntax, but no character: a text cut in the middle of an emoji.
    let e = one(&messaging(
        "message",
        r#"{"mid":"m","text":"cut \ud83d","reply_to":{"story":{"url":"a\ude0d"}},"ok":"\ud83d\ude0d"}"#,
    ));
    assert_eq!(e.content.as_deref(), Some("cut \u{fffd}"));
    assert_eq!(details(&e)["reply_to"]["story"]["url"], "a\u{fffd}");
    assert_eq!(details(&e)["ok"], "😍");
}

#[test]
fn colliding_details_keys_are_both_kept() {
    let e = one(&messaging_item(
        r#"{"recipient":{"id":"2"},"message":{"mid":"m","recipient":"inner"}}"#,
    ));
    assert_eq!(
        details(&e),
        json!({"recipient":{"id":"2"},"mid":"m","message.recipient":"inner"})
    );
}

#[test]
fn invalid_account_ids_are_skipped_per_item() {
    for id in [r#""a.b""#, r#""*""#, r#""""#, "null", r#"{"x":1}"#] {
        let body = format!(
            r#"{{"object":"instagram","entry":[{{"id":{id},"time":1,"messaging":[{{"read":{{}}}},{{"read":{{}}}}]}},{{"id":"ok","messaging":[{{"read":{{}}}}]}}]}}"#
        );
        let n = run(&body);
        assert_eq!(n.events.len(), 1, "{id}");
        assert_eq!(n.events[0].account_id, "ok");
        let items: Vec<(usize, usize)> = n.skipped.iter().map(|s| (s.entry, s.item)).collect();
        assert_eq!(items, [(0, 0), (0, 1)], "{id}");
        assert!(
            n.skipped[0].reason.contains("entry.id"),
            "{}",
            n.skipped[0].reason
        );
    }
}

#[test]
fn malformed_entries_are_skipped_not_rejected() {
    let body = r#"{"object":"instagram","entry":[7,{"id":"1","changes":{"field":"comments"}},{"id":"1"},{"id":"2","messaging":[{"read":{}}]}]}"#;
    let n = run(body);
    assert_eq!(n.events.len(), 1);
    assert_eq!(n.events[0].account_id, "2");
    let entries: Vec<usize> = n.skipped.iter().map(|s| s.entry).collect();
    assert_eq!(entries, [0, 1]);
    assert!(
        n.skipped[1].reason.contains("changes: not an array"),
        "{}",
        n.skipped[1].reason
    );
}

#[test]
fn batches_keep_body_order_across_entries_and_lists() {
    let body = r#"{"object":"instagram","entry":[
        {"id":"1","time":1,"changes":[{"field":"comments","value":{"id":"a"}}],"messaging":[{"message":{"mid":"b"}}]},
        {"id":"2","time":1,"messaging":[{"message":{"mid":"c"}},{"message":{"mid":"d"}}]}]}"#;
    let ids: Vec<String> = run(body).events.into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        ["comments:a", "messages:b", "messages:c", "messages:d"]
    );
    let empty = run(r#"{"object":"instagram","entry":[]}"#);
    assert!(empty.events.is_empty() && empty.skipped.is_empty());
}

// --- the simplified body ---------------------------------------------------------------------

#[test]
fn simplified_body_with_message_text() {
    let e = one(
        r#"{"id":"event_123","eventType":"messages","sender":{"id":"s1","username":"user123"},"message":{"text":"Hi"},"timestamp":"2024-01-01T12:00:00Z","accountId":"acc_1"}"#,
    );
    assert_eq!(e.source, "simple");
    assert_eq!(
        (e.event_type.as_str(), e.id.as_str()),
        ("messages", "messages:event_123")
    );
    assert_eq!(e.account_id, "acc_1");
    assert_eq!(sender(&e), Some(("s1", Some("user123"))));
    assert_eq!(e.content.as_deref(), Some("Hi"));
    assert_eq!(e.timestamp, "2024-01-01T12:00:00.000Z");
    assert_eq!(e.details_json, "{}");
}

#[test]
fn simplified_body_with_comment_text() {
    let e = one(
        r#"{"id":"1","eventType":"comments","comment":{"text":"Great post!"},"accountId":"a","timestamp":1740156774}"#,
    );
    assert_eq!(e.content.as_deref(), Some("Great post!"));
    assert_eq!(e.timestamp, "2025-02-21T16:52:54.000Z");
}

#[test]
fn simplified_body_with_plain_content() {
    let e = one(
        r#"{"id":"1","eventType":"mentions","content":"you were mentioned","accountId":17841,"timestamp":1740156774123}"#,
    );
    assert_eq!(e.content.as_deref(), Some("you were mentioned"));
    assert_eq!(e.account_id, "17841");
    assert_eq!(e.timestamp, "2025-02-21T16:52:54.123Z");
}

#[test]
fn simplified_body_content_precedence_and_details() {
    let e = one(
        r#"{"eventType":"messages","accountId":"a","message":{"text":"m","mid":"x"},"comment":{"text":"c"},"content":"plain"}"#,
    );
    assert_eq!(e.content.as_deref(), Some("m"));
    // `message` has more than its text, so it stays; the unused alternatives stay too.
    assert_eq!(
        details(&e),
        json!({"message":{"text":"m","mid":"x"},"comment":{"text":"c"},"content":"plain"})
    );
}

#[test]
fn simplified_body_ids() {
    let e = one(r#"{"id":"comments:1","eventType":"comments","accountId":"a"}"#);
    assert_eq!(e.id, "comments:1", "already prefixed: kept");
    let e = one(r#"{"id":"comments:","eventType":"comments","accountId":"a"}"#);
    assert_eq!(
        e.id, "comments:comments:",
        "a bare prefix is an id of its own"
    );
    let e = one(r#"{"id":42,"eventType":"comments","accountId":"a"}"#);
    assert_eq!(e.id, "comments:42");
    let e = one(r#"{"eventType":"comments","accountId":"a"}"#);
    assert!(is_derived(&e.id, "comments"), "{}", e.id);
}

#[test]
fn simplified_body_timestamps() {
    let at = |ts: &str| {
        one(&format!(
            r#"{{"eventType":"x","accountId":"a","timestamp":{ts}}}"#
        ))
    };
    assert_eq!(
        at(r#""2024-01-01T14:00:00.5+02:00""#).timestamp,
        "2024-01-01T12:00:00.500Z"
    );
    assert_eq!(at(r#""1740156774""#).timestamp, "2025-02-21T16:52:54.000Z");
    let e = at(r#""next tuesday""#);
    assert_eq!(e.timestamp, RECEIVED_ISO);
    assert_eq!(details(&e)["timestamp"], "next tuesday");
    assert_eq!(at("null").timestamp, RECEIVED_ISO);
    assert_eq!(
        one(r#"{"eventType":"x","accountId":"a"}"#).timestamp,
        RECEIVED_ISO
    );
}

#[test]
fn simplified_body_without_event_type_or_account_is_rejected() {
    let cases = [
        (r#"{"id":"1","accountId":"a"}"#, "eventType"),
        (r#"{"id":"1","eventType":7,"accountId":"a"}"#, "eventType"),
        (
            r#"{"id":"1","eventType":"Bad Type","accountId":"a"}"#,
            "eventType",
        ),
        (r#"{"id":"1","eventType":"comments"}"#, "accountId"),
        (
            r#"{"id":"1","eventType":"comments","accountId":"a.b"}"#,
            "accountId",
        ),
        (
            r#"{"id":"1","eventType":"comments","accountId":null}"#,
            "accountId",
        ),
        ("{}", "eventType"),
    ];
    for (body, field) in cases {
        match normalize(body.as_bytes(), RECEIVED) {
            Err(Rejected::UnknownShape(reason)) => {
                assert!(reason.contains(field), "{body}: {reason}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

// --- bodies we cannot use -------------------------------------------------------------------

#[test]
fn not_json_is_rejected() {
    for body in [
        &b""[..],
        b"hello",
        b"{\"object\":",
        b"{} trailing",
        b"\xff\xfe{}",
        b"{\"a\":\"\xc3\x28\"}",
    ] {
        let result = normalize(body, RECEIVED);
        assert_eq!(
            result,
            Err(Rejected::NotJson),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(Rejected::NotJson.kind(), "not_json");
}

#[test]
fn deep_nesting_is_kept_not_refused() {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let e = one(&messaging(
        "message",
        &format!(r#"{{"mid":"m","deep":{deep}}}"#),
    ));
    assert!(e.details_json.contains(&deep));
    let rejected = normalize(deep.as_bytes(), RECEIVED).unwrap_err();
    assert_eq!(rejected.kind(), "unknown_shape");
}

#[test]
fn unknown_shapes_are_rejected_with_a_reason() {
    let cases = [
        ("[]", "array"),
        (r#""instagram""#, "string"),
        ("42", "number"),
        ("null", "null"),
        ("true", "boolean"),
        (r#"{"object":"page","entry":[]}"#, "\"page\""),
        (r#"{"object":7,"entry":[]}"#, "`object`"),
        (r#"{"object":"instagram"}"#, "entry"),
        (
            r#"{"object":"instagram","entry":{"id":"1"}}"#,
            "`entry` is not an array",
        ),
    ];
    for (body, needle) in cases {
        match normalize(body.as_bytes(), RECEIVED) {
            Err(e @ Rejected::UnknownShape(_)) => {
                assert_eq!(e.kind(), "unknown_shape");
                assert!(e.to_string().contains(needle), "{body}: {e}");
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn a_body_with_a_key_repeated_in_one_object_is_rejected_naming_it() {
    let cases = [
        (
            r#"{"object":"instagram","object":"instagram","entry":[]}"#,
            "object",
            "the top-level object",
        ),
        (
            &messaging("message", r#"{"mid":"m1","text":"first","text":"second"}"#),
            "text",
            "entry[0].messaging[0].message",
        ),
        (
            r#"{"object":"instagram","entry":[{"id":"1","time":1,"changes":[],"changes":[{"field":"comments","value":{"id":"c"}}]}]}"#,
            "changes",
            "entry[0]",
        ),
        (
            r#"{"id":"s1","eventType":"comments","accountId":"a","accountId":"b","comment":{"text":"x"}}"#,
            "accountId",
            "the top-level object",
        ),
    ];
    for (body, key, place) in cases {
        let rejected = normalize(body.as_bytes(), RECEIVED).unwrap_err();
        assert_eq!(rejected.kind(), "duplicate_key", "{body}");
        let reason = rejected.to_string();
        assert!(
            reason.contains(&format!("{key:?} appears twice")),
            "{reason}"
        );
        assert!(reason.contains(place), "{reason}");
    }
    // The same key in different objects is no repeat.
    let e = one(&messaging(
        "message",
        r#"{"mid":"m1","text":"hi","attachments":[{"type":"image","payload":{"url":"u"}},{"type":"image","payload":{"url":"v"}}]}"#,
    ));
    assert_eq!(e.content.as_deref(), Some("hi"));
}
