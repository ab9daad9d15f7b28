//! Borrowed views of raw JSON: an object is its keys and the [`RawValue`] slices of its values,
//! looked into only when a rule needs them. Keys and strings without escapes borrow from the
//! body; values are copied into details as they came.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::value::RawValue;

/// A JSON object as its keys and the exact raw text of each value, in body order. Duplicate keys
/// are kept (lookups take the last, as JavaScript and `serde_json::Value` do), although
/// [`normalize`](crate::normalize()) refuses a body that has any before it gets here.
#[derive(Debug)]
pub(crate) struct Obj<'a> {
    pub(crate) pairs: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// At most one object value parsed in the same pass instead of kept raw (see
    /// [`Obj::parse_inline`]); it is not in `pairs`.
    pub(crate) inline: Option<Inline<'a>>,
}

/// An object value of an [`Obj`] parsed in the same pass as its parent.
#[derive(Debug)]
pub(crate) struct Inline<'a> {
    /// Its place among the parent's `pairs`: it came just before `pairs[at]`.
    pub(crate) at: usize,
    pub(crate) key: Cow<'a, str>,
    pub(crate) obj: Box<Obj<'a>>,
}

impl<'a> Obj<'a> {
    /// Parses `raw` when it is an object; anything else is `None`.
    pub(crate) fn parse(raw: &'a RawValue) -> Option<Self> {
        Self::parse_inline(raw, &[])
    }

    /// Like [`Obj::parse`], but the first value under one of `keys` that is an object is parsed
    /// in the same pass into [`Obj::inline`]. An item's event payload is most of its bytes;
    /// parsing it inline saves scanning them once more. (Should that value not be an object,
    /// the whole object is parsed again the plain way, so its raw text is kept.)
    pub(crate) fn parse_inline(raw: &'a RawValue, keys: &[&str]) -> Option<Self> {
        // Checking the first byte first keeps the "not an object" path free of serde errors,
        // which allocate.
        if !raw.get().starts_with('{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let seed = ObjSeed { inline_keys: keys };
        match seed.deserialize(&mut de).ok()? {
            Some(obj) => de.end().ok().map(|()| obj),
            None => Self::parse(raw),
        }
    }

    /// The object as JSON text: its keys and raw values (an inline value in its place), with
    /// no whitespace between them.
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::from("{");
        let mut inline = self.inline.as_ref();
        let mut first = true;
        let mut push = |out: &mut String, key: &Cow<'_, str>, value: &str| {
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            push_key(out, key);
            out.push(':');
            out.push_str(value);
        };
        for (i, (key, raw)) in self.pairs.iter().enumerate() {
            if let Some(inner) = inline.filter(|inner| inner.at == i) {
                push(&mut out, &inner.key, &inner.obj.to_json());
                inline = None;
            }
            push(&mut out, key, raw.get());
        }
        if let Some(inner) = inline {
            push(&mut out, &inner.key, &inner.obj.to_json());
        }
        out.push('}');
        out
    }

    /// The value of `key`, the last one when the key is repeated.
    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|&(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Obj<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // With no inline keys `ObjSeed` always yields an object.
        ObjSeed { inline_keys: &[] }
            .deserialize(deserializer)?
            .ok_or_else(|| D::Error::custom("an inline value is not an object"))
    }
}

/// Parses an object, inlining the first object value under one of `inline_keys`. `None` when
/// such a value turned out not to be an object (its raw text is lost: parse again plainly).
struct ObjSeed<'k> {
    inline_keys: &'k [&'k str],
}

impl<'de> DeserializeSeed<'de> for ObjSeed<'_> {
    type Value = Option<Obj<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjSeed<'_> {
    type Value = Option<Obj<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut obj = Obj {
            pairs: Vec::with_capacity(8),
            inline: None,
        };
        let mut lost = false;
        while let Some(Str(key)) = map.next_key()? {
            if obj.inline.is_none() && !lost && self.inline_keys.contains(&key.as_ref()) {
                match map.next_value_seed(AnyObj)? {
                    Some(inner) => {
                        let at = obj.pairs.len();
                        obj.inline = Some(Inline {
                            at,
                            key,
                            obj: Box::new(inner),
                        });
                    }
                    None => lost = true,
                }
            } else {
                obj.pairs.push((key, map.next_value::<&'de RawValue>()?));
            }
        }
        Ok((!lost).then_some(obj))
    }
}

/// A plain object if the value is one; any other value is consumed and gives `None`.
struct AnyObj;

impl<'de> DeserializeSeed<'de> for AnyObj {
    type Value = Option<Obj<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyObj {
    type Value = Option<Obj<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        ObjSeed { inline_keys: &[] }.visit_map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A JSON string that borrows from the body unless it contains escapes.
///
/// Read as bytes so that a lone UTF-16 surrogate escape (`"\ud83d"` without its pair: valid
/// JSON syntax, but no character; Meta's truncated texts can end in one) becomes U+FFFD instead
/// of failing the whole object, as it does for serde_json's `str`.
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Str<'de>, E> {
                // Borrowed: no escapes, so the bytes are the body's own (UTF-8) text.
                match std::str::from_utf8(no_controls(v)?) {
                    Ok(s) => Ok(Str(Cow::Borrowed(s))),
                    Err(_) => Ok(Str(Cow::Owned(from_wtf8(v)))),
                }
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Str<'de>, E> {
                // Unescaped: control characters may come from escapes (`\n`), which is fine.
                Ok(Str(Cow::Owned(from_wtf8(v))))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_bytes(StrVisitor)
    }
}

/// Reading strings as bytes skips serde_json's check for raw control characters (which JSON
/// forbids); this puts it back where it matters: a borrowed key is copied into details as is.
fn no_controls<E: serde::de::Error>(bytes: &[u8]) -> Result<&[u8], E> {
    if bytes.iter().any(|&b| b < 0x20) {
        Err(E::custom("control character in a string"))
    } else {
        Ok(bytes)
    }
}

/// serde_json's byte strings are UTF-8 except that lone surrogates are encoded as in WTF-8;
/// each run of such bytes becomes one U+FFFD.
fn from_wtf8(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    let mut replaced = false;
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        let invalid = !chunk.invalid().is_empty();
        // A surrogate's three bytes come as several invalid chunks in a row.
        let same_run = replaced && chunk.valid().is_empty();
        if invalid && !same_run {
            out.push(char::REPLACEMENT_CHARACTER);
        }
        replaced = invalid;
    }
    out
}

/// Appends a raw JSON value with each lone UTF-16 surrogate escape replaced by `\ufffd`: such
/// escapes are valid JSON syntax but encode no character, and strict parsers (serde_json among
/// them) refuse them, which would make `details_json` unreadable downstream.
pub(crate) fn push_raw(out: &mut String, raw: &str) {
    if !raw.contains("\\u") {
        out.push_str(raw);
        return;
    }
    let bytes = raw.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 6)?.strip_prefix(b"\\u")?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let (mut copied, mut i) = (0, 0);
    while let Some(at) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\\'))
    {
        let at = i + at;
        i = at + 2; // Any escape is at least two bytes; this also skips `\\`.
        match unit(at) {
            Some(0xD800..=0xDBFF) if matches!(unit(at + 6), Some(0xDC00..=0xDFFF)) => i = at + 12,
            Some(0xD800..=0xDFFF) => {
                out.push_str(raw.get(copied..at).unwrap_or_default());
                out.push_str("\\ufffd");
                (copied, i) = (at + 6, at + 6);
            }
            Some(_) => i = at + 6,
            None => {}
        }
    }
    out.push_str(raw.get(copied..).unwrap_or_default());
}

/// The value of a JSON string; anything else is `None`.
pub(crate) fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<Str<'_>>(text).ok().map(|s| s.0)
    } else {
        // Valid JSON without a backslash has no escapes: the text between the quotes is the value.
        Some(Cow::Borrowed(inner))
    }
}

/// The text of a JSON number (`17841405726653026`, `1.5e3`); anything else is `None`.
pub(crate) fn number(raw: &RawValue) -> Option<&str> {
    let text = raw.get();
    text.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        .then_some(text)
}

/// Whether `raw` is the literal `true`.
pub(crate) fn is_true(raw: &RawValue) -> bool {
    raw.get() == "true"
}

/// Longest id taken from the body as is; longer ones are replaced by a derived id, since ids
/// travel as the broker's `Nats-Msg-Id` header.
const MAX_ID_LEN: usize = 1024;

/// An id as Meta writes it: a non-empty string or a number (stringified). Empty, overlong or
/// ASCII-control-character ids, and every other JSON type, are `None` (the caller derives one).
pub(crate) fn id_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let id = match number(raw) {
        Some(n) => Cow::Borrowed(n),
        None => string(raw)?,
    };
    // JSON forbids raw control characters in strings: only an unescaped (owned) one can hold them.
    let controls = matches!(&id, Cow::Owned(s) if s.bytes().any(|b| b < 0x20 || b == 0x7f));
    (!id.is_empty() && id.len() <= MAX_ID_LEN && !controls).then_some(id)
}

/// Appends a key as a JSON string literal. A key borrowed from the body had no escapes there,
/// so it is copied as is; only keys serde had to unescape are escaped again.
#[expect(clippy::ptr_arg, reason = "whether the key is borrowed is the point")]
pub(crate) fn push_key(out: &mut String, key: &Cow<'_, str>) {
    match key {
        Cow::Borrowed(k) => {
            out.push('"');
            out.push_str(k);
            out.push('"');
        }
        Cow::Owned(k) => push_str_literal(out, k),
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_str_literal(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(s.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(s.get(start..).unwrap_or_default());
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn objects_keep_order_duplicates_and_escaped_keys() {
        let obj = Obj::parse(raw(r#"{"a":1,"b\n":[2],"a":3}"#)).unwrap();
        let keys: Vec<&str> = obj.pairs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b\n", "a"]);
        assert_eq!(obj.get("a").unwrap().get(), "3");
        assert!(Obj::parse(raw("[1]")).is_none());
    }

    #[test]
    fn inline_objects_keep_their_place() {
        let text = r#"{"a":1,"message":{"mid":"m"},"b":2,"message":{"x":1}}"#;
        let obj = Obj::parse_inline(raw(text), &["message", "reaction"]).unwrap();
        let keys: Vec<&str> = obj.pairs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "message"], "only the first is inlined");
        let inline = obj.inline.unwrap();
        assert_eq!((inline.at, inline.key.as_ref()), (1, "message"));
        assert_eq!(inline.obj.get("mid").unwrap().get(), r#""m""#);

        // Not an object: parsed again plainly, nothing lost.
        let obj = Obj::parse_inline(raw(r#"{"message":[1],"b":2}"#), &["message"]).unwrap();
        assert!(obj.inline.is_none());
        assert_eq!(obj.get("message").unwrap().get(), "[1]");
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        assert!(matches!(
            string(raw(r#""plain""#)),
            Some(Cow::Borrowed("plain"))
        ));
        assert_eq!(string(raw(r#""caf\u00e9 \/""#)).unwrap(), "café /");
        assert_eq!(string(raw("12")), None);
    }

    #[test]
    fn ids_are_strings_or_numbers() {
        assert_eq!(id_text(raw("17841")).unwrap(), "17841");
        assert_eq!(id_text(raw(r#""m_1""#)).unwrap(), "m_1");
        assert_eq!(id_text(raw(r#""""#)), None);
        assert_eq!(id_text(raw(r#""a\nb""#)), None);
        assert_eq!(id_text(raw("null")), None);
        assert_eq!(id_text(raw("{}")), None);
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        assert_eq!(string(raw(r#""a\ud83d b""#)).unwrap(), "a\u{fffd} b");
        assert_eq!(string(raw(r#""\ude0d\ud83d""#)).unwrap(), "\u{fffd}");
        assert_eq!(string(raw(r#""\ud83d\ude0d""#)).unwrap(), "😍");
        let obj = Obj::parse(raw(r#"{"k\udc00":1}"#)).unwrap();
        assert_eq!(obj.pairs[0].0, "k\u{fffd}");

        let mut out = String::new();
        let text = r#"["\ud83d\ude0d","\ud83d","x\\ud83d","\udc00\u0041"]"#;
        push_raw(&mut out, text);
        assert_eq!(
            out,
            r#"["\ud83d\ude0d","\ufffd","x\\ud83d","\ufffd\u0041"]"#
        );
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn string_literals_round_trip() {
        for s in ["plain", "q\"b\\s", "nl\n\r\t\u{1}é😍"] {
            let mut out = String::new();
            push_str_literal(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
        }
    }
}
