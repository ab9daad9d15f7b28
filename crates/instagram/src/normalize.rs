//! Webhook bodies to [`Event`]s, by the rules of docs/protocol.md ("Normalization").
//!
//! The body is read in two passes over borrowed slices of itself: one walks the envelope down to
//! the items (kept as [`RawValue`], hashed for derived ids), one reads each item with its payload.
//! Each rule looks only at the keys it needs; everything it does not carry in a top-level field
//! is copied byte for byte into `details_json`, so nothing Meta sent is lost.

use std::borrow::Cow;
use std::fmt;

use instantchat_event::{Event, Sender, is_valid_account_id, is_valid_event_type, quote_short};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::duplicates::{self, Duplicate};
use crate::envelope::{Entry, Shaped, Top};
use crate::json::{self, Inline, Obj};
use crate::timestamp;

/// `Event.source` of events from Meta's envelopes.
pub const SOURCE_INSTAGRAM: &str = "instagram";
/// `Event.source` of events from the simplified body.
pub const SOURCE_SIMPLE: &str = "simple";

/// What a body normalized to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Normalized {
    /// One event per item, in body order.
    pub events: Vec<Event>,
    /// Items of a known envelope that could not become an event; the raw body still keeps them.
    pub skipped: Vec<Skipped>,
}

/// An item inside a known envelope that could not become an event (an account id that is not a
/// subject token, a field name that is not an event type, an item that is not an object...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Index in `entry[]`.
    pub entry: usize,
    /// Index in that entry's `changes[]` or `messaging[]` (named in `reason`); 0 when the whole
    /// entry is unusable.
    pub item: usize,
    /// What is wrong, naming the item (`entry[0].messaging[2]: ...`).
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A signed body that is not something we can normalize. It is still Meta's data: the service
/// answers `200` and keeps it on the rejected subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not UTF-8 JSON text.
    #[error("the body is not JSON (not UTF-8, or not valid JSON text)")]
    NotJson,
    /// JSON, but neither Meta's Instagram envelope nor the simplified body.
    #[error("the body is JSON but not a shape we know: {0}")]
    UnknownShape(String),
    /// An object somewhere in the body has the same key twice. Such JSON has no single meaning
    /// (readers differ on which value counts), and the raw body is kept as it came, so no event
    /// is made from a reading that another reader of the stored body might not share.
    #[error(
        "the key {} appears twice in {}: JSON with a repeated key has no single meaning, so no \
         event is made from this body",
        quote_short(key),
        if at.is_empty() { "the top-level object".to_owned() } else { format!("the object at {}", quote_short(at)) }
    )]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// Where its object is, e.g. `entry[0].messaging[1].message`; empty for the top level.
        at: String,
    },
}

impl Rejected {
    /// A short label for metrics: `not_json`, `unknown_shape` or `duplicate_key`.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejected::NotJson => "not_json",
            Rejected::UnknownShape(_) => "unknown_shape",
            Rejected::DuplicateKey { .. } => "duplicate_key",
        }
    }
}

/// Normalizes a verified webhook body. `received_at_ms` (Unix milliseconds) is stamped on every
/// event and is the timestamp of last resort. Never panics; the same body always yields the same
/// event ids, so redeliveries deduplicate.
pub fn normalize(body: &[u8], received_at_ms: i64) -> Result<Normalized, Rejected> {
    let text = std::str::from_utf8(body).map_err(|_| Rejected::NotJson)?;
    let top: Top<'_> = serde_json::from_str(text).map_err(|_| not_an_object(text))?;
    // The text is valid JSON now, as the scan needs.
    if let Some(Duplicate { key, at }) = duplicates::first_duplicate(text) {
        return Err(Rejected::DuplicateKey { key, at });
    }
    let Some(object) = top.obj.get("object") else {
        let obj = match top.entry {
            None => top.obj,
            // `entry` was walked, not kept: read the object again to keep it in details.
            Some(_) => serde_json::from_str(text).map_err(|_| Rejected::NotJson)?,
        };
        let event = simple(text, &obj, received_at_ms)?;
        return Ok(Normalized {
            events: vec![event],
            skipped: Vec::new(),
        });
    };
    match json::string(object) {
        Some(name) if name == "instagram" => {}
        Some(name) => {
            return Err(shape(format!(
                "`object` is {}, expected \"instagram\"",
                quote_short(&name)
            )));
        }
        None => return Err(shape("`object` is not a string".into())),
    }
    let entries = match top.entry {
        Some(Shaped::Ok(entries)) => entries,
        Some(Shaped::Other) => return Err(shape("`entry` is not an array".into())),
        None => return Err(shape("the Instagram envelope has no `entry`".into())),
    };
    let mut out = Normalized {
        events: Vec::with_capacity(entries.len()),
        skipped: Vec::new(),
    };
    for (index, entry) in entries.iter().enumerate() {
        normalize_entry(index, entry, received_at_ms, &mut out);
    }
    Ok(out)
}

/// Why a body that did not parse as an object was refused.
fn not_an_object(text: &str) -> Rejected {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return Rejected::NotJson;
    }
    let kind = match text.trim_start().bytes().next() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    shape(format!("the body is {kind}, expected a JSON object"))
}

fn shape(reason: String) -> Rejected {
    Rejected::UnknownShape(reason)
}

/// The two item lists of an entry.
#[derive(Clone, Copy)]
enum List {
    Changes,
    Messaging,
}

impl List {
    fn name(self) -> &'static str {
        match self {
            List::Changes => "changes",
            List::Messaging => "messaging",
        }
    }

    /// Keys of an item that hold its payload, parsed in the same pass as the item.
    fn payload_keys(self) -> &'static [&'static str] {
        match self {
            List::Changes => &["value"],
            List::Messaging => &MESSAGING_KNOWN,
        }
    }
}

fn normalize_entry(
    index: usize,
    entry: &Shaped<Entry<'_>>,
    received_at_ms: i64,
    out: &mut Normalized,
) {
    let Shaped::Ok(entry) = entry else {
        return out.skip(index, 0, format!("entry[{index}]: not a JSON object"));
    };
    let account = entry.id.and_then(json::id_text);
    let account = match account {
        Some(id) if is_valid_account_id(&id) => Ok(id),
        Some(id) => Err(format!(
            "entry.id {} is not a valid account id (1 to 128 of A-Z a-z 0-9 _ -)",
            quote_short(&id)
        )),
        None => Err("entry.id is missing or not a string or number".to_owned()),
    };
    // Meta sends seconds in `changes[]` envelopes and milliseconds in `messaging[]` ones;
    // `unix_ms` tells them apart by magnitude, so a mislabelled envelope still reads right.
    let fallback_ms = entry
        .time
        .and_then(timestamp::unix_ms)
        .unwrap_or(received_at_ms);
    for (list, items) in [
        (List::Changes, &entry.changes),
        (List::Messaging, &entry.messaging),
    ] {
        let items = match items {
            None => continue,
            Some(Shaped::Ok(items)) => items,
            Some(Shaped::Other) => {
                out.skip(
                    index,
                    0,
                    format!("entry[{index}].{}: not an array", list.name()),
                );
                continue;
            }
        };
        for (i, &item_raw) in items.iter().enumerate() {
            let place = || format!("entry[{index}].{}[{i}]", list.name());
            let account = match &account {
                Ok(account) => account,
                Err(problem) => {
                    out.skip(index, i, format!("{}: {problem}", place()));
                    continue;
                }
            };
            let Some(item) = Obj::parse_inline(item_raw, list.payload_keys()) else {
                out.skip(index, i, format!("{}: not a JSON object", place()));
                continue;
            };
            let draft = match list {
                List::Changes => change(&item),
                List::Messaging => messaging(&item),
            };
            match draft {
                Ok(draft) => out.events.push(draft.into_event(&Item {
                    account,
                    raw: item_raw.get(),
                    obj: &item,
                    fallback_ms,
                    received_at_ms,
                    source: SOURCE_INSTAGRAM,
                })),
                Err(reason) => out.skip(index, i, format!("{}: {reason}", place())),
            }
        }
    }
    for (name, count) in &entry.other_lists {
        out.skip(
            index,
            0,
            format!(
                "entry[{index}]: no rule for the list {} ({count} items)",
                quote_short(name)
            ),
        );
    }
}

impl Normalized {
    fn skip(&mut self, entry: usize, item: usize, reason: String) {
        self.skipped.push(Skipped {
            entry,
            item,
            reason,
        });
    }
}

/// A `changes[]` item: `{field, value}`.
fn change<'a>(item: &Obj<'a>) -> Result<Draft<'a>, String> {
    let field = item
        .get("field")
        .and_then(json::string)
        .ok_or("no string `field`")?;
    check_event_type(&field, "changes field")?;
    let mut draft = Draft::new(field);
    draft.with_object(item, "value", |d, value| match d.event_type.as_ref() {
        "comments" | "live_comments" => {
            d.id = id_of(value, "id");
            d.take_sender(value, "from");
            d.content = d.take_string(value, "text");
        }
        "mentions" => d.id = id_of(value, "comment_id").or_else(|| id_of(value, "media_id")),
        // Meta's dashboard test for `messages` wraps a messaging item in a change.
        "messages" => {
            d.take_sender(value, "sender");
            d.with_object(value, "message", Draft::message);
        }
        _ => {
            if !d.take_sender(value, "from") {
                d.take_sender(value, "sender");
            }
        }
    });
    Ok(draft)
}

/// `messaging[]` keys that are not the event itself.
const MESSAGING_ENVELOPE: [&str; 3] = ["sender", "recipient", "timestamp"];
/// `messaging[]` event keys with their own rule, preferred when an item has several keys.
const MESSAGING_KNOWN: [&str; 6] = [
    "message",
    "message_edit",
    "reaction",
    "read",
    "postback",
    "referral",
];

/// A `messaging[]` item: `{sender, recipient, timestamp, <event key>: {...}}`.
fn messaging<'a>(item: &Obj<'a>) -> Result<Draft<'a>, String> {
    let key: Cow<'a, str> = MESSAGING_KNOWN
        .iter()
        .find(|&&known| {
            item.get(known).is_some() || item.inline.as_ref().is_some_and(|i| i.key == known)
        })
        .map(|&known| Cow::Borrowed(known))
        .or_else(|| {
            let mut keys = item.pairs.iter().map(|(k, _)| k);
            keys.find(|k| !MESSAGING_ENVELOPE.contains(&k.as_ref()))
                .cloned()
        })
        .ok_or("no event key besides sender, recipient and timestamp")?;
    let known = match key.as_ref() {
        "message" => Some("messages"),
        "message_edit" => Some("message_edit"),
        "reaction" => Some("message_reactions"),
        "read" => Some("messaging_seen"),
        "postback" => Some("messaging_postbacks"),
        "referral" => Some("messaging_referral"),
        _ => None,
    };
    let mut draft = match known {
        Some(event_type) => Draft::new(event_type.into()),
        None => {
            check_event_type(&key, "messaging key")?;
            Draft::new(key.clone())
        }
    };
    draft.take_sender(item, "sender");
    if let Some(raw) = item.get("timestamp") {
        draft.time_ms = timestamp::unix_ms(raw);
        if draft.time_ms.is_some() {
            draft.carried.push(raw);
        }
    }
    draft.with_object(item, &key, |d, p| match key.as_ref() {
        "message" => d.message(p),
        "message_edit" => {
            d.id = id_of(p, "mid")
                .zip(id_of(p, "num_edit"))
                .map(|(mid, n)| format!("edit:{mid}:{n}").into());
            d.content = d.take_string(p, "text");
        }
        "reaction" => {
            // The `reaction` name stays in details even when it stands in for the emoji.
            d.content = d
                .take_string(p, "emoji")
                .or_else(|| p.get("reaction").and_then(json::string));
        }
        "postback" => {
            d.id = id_of(p, "mid");
            d.content = d.take_string(p, "title");
        }
        _ => {}
    });
    Ok(draft)
}

/// The simplified body, for senders other than Meta: `{id, eventType, sender,
/// message:{text}|comment:{text}|content, timestamp, accountId}`.
fn simple(text: &str, top: &Obj<'_>, received_at_ms: i64) -> Result<Event, Rejected> {
    const WHAT: &str = "a body without `object` is the simplified form and needs";
    let type_raw = top
        .get("eventType")
        .ok_or_else(|| shape(format!("{WHAT} a string `eventType`")))?;
    let event_type = json::string(type_raw)
        .ok_or_else(|| shape(format!("{WHAT} `eventType` to be a string")))?;
    if !is_valid_event_type(&event_type) {
        return Err(shape(format!(
            "`eventType` {} is not a valid event type ([a-z_]{{1,64}})",
            quote_short(&event_type)
        )));
    }
    let account_raw = top
        .get("accountId")
        .ok_or_else(|| shape(format!("{WHAT} an `accountId`")))?;
    let account = json::id_text(account_raw)
        .filter(|a| is_valid_account_id(a))
        .ok_or_else(|| {
            shape(format!(
                "`accountId` {} is not a valid account id (1 to 128 of A-Z a-z 0-9 _ -)",
                quote_short(account_raw.get())
            ))
        })?;
    let mut draft = Draft::new(event_type);
    draft.carried.extend([type_raw, account_raw]);
    if let Some(raw) = top.get("id")
        && let Some(id) = json::id_text(raw)
    {
        draft.carried.push(raw);
        draft.id = Some(without_type_prefix(id, &draft.event_type));
    }
    draft.take_sender(top, "sender");
    if let Some(raw) = top.get("timestamp") {
        draft.time_ms = json::string(raw)
            .and_then(|s| timestamp::parse_iso(s.trim()))
            .or_else(|| timestamp::unix_ms(raw));
        if draft.time_ms.is_some() {
            draft.carried.push(raw);
        }
    }
    let content = match draft.take_text(top, "message") {
        Some(text) => Some(text),
        None => draft.take_text(top, "comment"),
    };
    draft.content = match content {
        Some(text) => Some(text),
        None => draft.take_string(top, "content"),
    };
    Ok(draft.into_event(&Item {
        account: &account,
        raw: text,
        obj: top,
        fallback_ms: received_at_ms,
        received_at_ms,
        source: SOURCE_SIMPLE,
    }))
}

/// `id` without a leading `<event_type>:`, so that an id already following the rule (a body we
/// produced, or a client that knows it) is not prefixed twice.
fn without_type_prefix<'a>(id: Cow<'a, str>, event_type: &str) -> Cow<'a, str> {
    let rest = event_type.len() + 1;
    let prefixed = id.len() > rest
        && id.starts_with(event_type)
        && id.as_bytes().get(event_type.len()) == Some(&b':');
    match id {
        Cow::Borrowed(s) if prefixed => Cow::Borrowed(s.get(rest..).unwrap_or(s)),
        Cow::Owned(s) if prefixed => Cow::Owned(s.get(rest..).unwrap_or_default().to_owned()),
        id => id,
    }
}

fn check_event_type(name: &str, what: &str) -> Result<(), String> {
    if is_valid_event_type(name) {
        Ok(())
    } else {
        Err(format!(
            "{what} {} is not a valid event type ([a-z_]{{1,64}})",
            quote_short(name)
        ))
    }
}

fn id_of<'a>(obj: &Obj<'a>, key: &str) -> Option<Cow<'a, str>> {
    obj.get(key).and_then(json::id_text)
}

/// The item an event is made from.
struct Item<'i, 'a> {
    account: &'i str,
    /// The item's exact bytes in the body, hashed for derived ids.
    raw: &'a str,
    obj: &'i Obj<'a>,
    /// `entry.time`, else the received time.
    fallback_ms: i64,
    received_at_ms: i64,
    source: &'static str,
}

/// What the rules found in one item, before it becomes an [`Event`].
struct Draft<'a> {
    event_type: Cow<'a, str>,
    /// The id after `<type>:`; `None` derives one from the item's bytes.
    id: Option<Cow<'a, str>>,
    sender: Option<Sender>,
    content: Option<Cow<'a, str>>,
    time_ms: Option<i64>,
    deleted: bool,
    /// Values the fields above carry exactly, left out of `details` (by identity, so a repeated
    /// key's other occurrence is still kept).
    carried: Vec<&'a RawValue>,
    /// Objects whose keys `details` lists one by one instead of nesting (`value`, `message`).
    flattened: Vec<(&'a RawValue, Obj<'a>)>,
    /// Whether the item's inline object (its payload, see [`Obj::parse_inline`]) is flattened.
    inline_flattened: bool,
}

impl<'a> Draft<'a> {
    fn new(event_type: Cow<'a, str>) -> Self {
        Draft {
            event_type,
            id: None,
            sender: None,
            content: None,
            time_ms: None,
            deleted: false,
            carried: Vec::new(),
            flattened: Vec::new(),
            inline_flattened: false,
        }
    }

    /// The string at `key`, now carried by a top-level field.
    fn take_string(&mut self, obj: &Obj<'a>, key: &str) -> Option<Cow<'a, str>> {
        let raw = obj.get(key)?;
        let s = json::string(raw)?;
        self.carried.push(raw);
        Some(s)
    }

    /// `key: {text}` of the simplified body; the object leaves details only if `text` is all it has.
    fn take_text(&mut self, obj: &Obj<'a>, key: &str) -> Option<Cow<'a, str>> {
        let raw = obj.get(key)?;
        let inner = Obj::parse(raw)?;
        let text = json::string(inner.get("text")?)?;
        if inner.pairs.len() == 1 {
            self.carried.push(raw);
        }
        Some(text)
    }

    /// Sets the sender from `{id, username}` at `key`; no id, no sender. The object stays in
    /// details unless the sender carries all of it. Returns whether a sender was found.
    fn take_sender(&mut self, obj: &Obj<'a>, key: &str) -> bool {
        let Some((raw, sender)) = obj.get(key).and_then(|raw| Some((raw, Obj::parse(raw)?))) else {
            return false;
        };
        let Some(id) = sender.get("id").and_then(json::id_text) else {
            return false;
        };
        let username = sender.get("username").and_then(json::string);
        let username_ok = sender.get("username").is_none() || username.is_some();
        let only_known = sender
            .pairs
            .iter()
            .all(|(k, _)| k == "id" || k == "username");
        let unique = sender.pairs.len() == 1 + usize::from(username.is_some());
        if username_ok && only_known && unique {
            self.carried.push(raw);
        }
        self.sender = Some(Sender {
            id: id.into_owned(),
            username: username.map(Cow::into_owned),
        });
        true
    }

    /// Looks into the object under `key` of `obj` with `look`, and lists its keys in details in
    /// its place instead of nesting it. `None` (and nothing looked at) when there is no object.
    fn with_object<R>(
        &mut self,
        obj: &Obj<'a>,
        key: &str,
        look: impl FnOnce(&mut Self, &Obj<'a>) -> R,
    ) -> Option<R> {
        if let Some(raw) = obj.get(key) {
            let inner = Obj::parse(raw)?;
            let result = look(self, &inner);
            self.flattened.push((raw, inner));
            Some(result)
        } else {
            let inline = obj.inline.as_ref().filter(|i| i.key == key)?;
            self.inline_flattened = true;
            Some(look(self, &inline.obj))
        }
    }

    /// The `message` of a messaging item (also inside the dashboard's `messages` change).
    fn message(&mut self, m: &Obj<'a>) {
        if m.get("is_echo").is_some_and(json::is_true) {
            self.event_type = "message_echoes".into();
        }
        let mid = id_of(m, "mid");
        if m.get("is_deleted").is_some_and(json::is_true) {
            self.deleted = true;
            self.id = mid.map(|mid| format!("deleted:{mid}").into());
        } else {
            self.id = mid;
            self.content = self.take_string(m, "text");
        }
    }

    fn into_event(self, item: &Item<'_, 'a>) -> Event {
        let details_json = self.details(item);
        let id = match &self.id {
            Some(id) => {
                let mut s = String::with_capacity(self.event_type.len() + 1 + id.len());
                s.push_str(&self.event_type);
                s.push(':');
                s.push_str(id);
                s
            }
            None => derived_id(item.account, &self.event_type, item.raw),
        };
        Event {
            id,
            event_type: self.event_type.into_owned(),
            account_id: item.account.to_owned(),
            sender: self.sender,
            content: self.content.map(Cow::into_owned),
            timestamp: timestamp::iso(self.time_ms.unwrap_or(item.fallback_ms)),
            deleted: self.deleted,
            details_json,
            received_at_ms: item.received_at_ms,
            source: item.source.to_owned(),
        }
    }

    /// Every value of the item not carried by a top-level field, as a JSON object, values
    /// copied byte for byte. Keys of flattened objects join the item's own; a key seen twice is
    /// written the second time as `<object>.<key>` so neither is lost.
    fn details(&self, item: &Item<'_, 'a>) -> String {
        // Details are at most the item's bytes (plus a rare renamed key): one allocation.
        let mut writer = DetailsWriter {
            out: String::with_capacity(item.raw.len() + 16),
            keys: Vec::new(),
        };
        writer.out.push('{');
        self.write_pairs(&mut writer, item.obj, "item", self.inline_flattened);
        writer.out.push('}');
        writer.out
    }

    fn write_pairs<'s>(
        &'s self,
        w: &mut DetailsWriter<'s, 'a>,
        obj: &'s Obj<'a>,
        scope: &str,
        inline_flattened: bool,
    ) {
        let mut inline = obj.inline.as_ref();
        for (i, (key, raw)) in obj.pairs.iter().enumerate() {
            if let Some(inner) = inline.filter(|inner| inner.at == i) {
                self.write_inline(w, inner, scope, inline_flattened);
                inline = None;
            }
            if self.carried.iter().any(|c| std::ptr::eq(*c, *raw)) {
                continue;
            }
            match self.flattened.iter().find(|(f, _)| std::ptr::eq(*f, *raw)) {
                Some((_, inner)) => self.write_pairs(w, inner, key, false),
                None => w.put(key, raw.get(), scope),
            }
        }
        if let Some(inner) = inline {
            self.write_inline(w, inner, scope, inline_flattened);
        }
    }

    fn write_inline<'s>(
        &'s self,
        w: &mut DetailsWriter<'s, 'a>,
        inline: &'s Inline<'a>,
        scope: &str,
        flattened: bool,
    ) {
        if flattened {
            self.write_pairs(w, &inline.obj, &inline.key, false);
        } else {
            // Not the payload after all (an item with two event keys): keep it whole.
            w.put(&inline.key, &inline.obj.to_json(), scope);
        }
    }
}

struct DetailsWriter<'s, 'a> {
    out: String,
    keys: Vec<&'s Cow<'a, str>>,
}

impl<'s, 'a> DetailsWriter<'s, 'a> {
    #[expect(
        clippy::ptr_arg,
        reason = "`push_key` needs to know whether the key is borrowed"
    )]
    fn put(&mut self, key: &'s Cow<'a, str>, value: &str, scope: &str) {
        if !self.keys.is_empty() {
            self.out.push(',');
        }
        if self.keys.contains(&key) {
            json::push_str_literal(&mut self.out, &format!("{scope}.{key}"));
        } else {
            json::push_key(&mut self.out, key);
        }
        self.keys.push(key);
        self.out.push(':');
        json::push_raw(&mut self.out, value);
    }
}

/// `<type>:` + the first 32 hex digits of SHA-256(account, 0, type, 0, item bytes): stable
/// across redeliveries of the same body, distinct for distinct items.
fn derived_id(account: &str, event_type: &str, raw: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::new()
        .chain_update(account)
        .chain_update([0])
        .chain_update(event_type)
        .chain_update([0])
        .chain_update(raw)
        .finalize();
    let mut id = String::with_capacity(event_type.len() + 33);
    id.push_str(event_type);
    id.push(':');
    for byte in digest.iter().take(16) {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}
