//! Finds a key repeated within one JSON object, anywhere in a body.
//!
//! JSON with a repeated key has no single meaning (RFC 8259 leaves it to each reader: most take
//! the last, some the first, some refuse). The raw body is stored as it came, so events made
//! from one reading of it could disagree with what another reader of the stored body sees; such
//! a body is refused instead (see [`Rejected::DuplicateKey`](crate::Rejected::DuplicateKey)).
//!
//! One pass over bytes already known to be valid JSON, with an explicit stack, so that nesting
//! as deep as the body allows (values are copied raw, at any depth) costs no recursion.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::json;

/// Keys an object may hold before they are looked up in a set rather than compared in turn.
const LINEAR_KEYS: usize = 16;

/// A repeated key and where its object is (`entry[0].messaging[1].message`; empty for the
/// top level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    pub(crate) key: String,
    pub(crate) at: String,
}

enum Frame<'a> {
    Object {
        /// Where this object's keys start in the scan's one list of keys (objects nest, so
        /// the keys of the open objects are stacked there and dropped as each one closes).
        keys_from: usize,
        /// The keys, once there are more than [`LINEAR_KEYS`] of them.
        set: Option<HashSet<Cow<'a, str>>>,
        /// The key whose value comes next, or is being read.
        current: Option<Cow<'a, str>>,
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

/// The first repeated key in `text`, which must be valid JSON (else the answer means nothing).
/// Allocates nothing for a body without escaped keys or objects of more than [`LINEAR_KEYS`]
/// keys but its two stacks.
pub(crate) fn first_duplicate(text: &str) -> Option<Duplicate> {
    let bytes = text.as_bytes();
    let mut stack: Vec<Frame<'_>> = Vec::with_capacity(8);
    let mut keys: Vec<Cow<'_, str>> = Vec::with_capacity(32);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(Frame::Object {
                keys_from: keys.len(),
                set: None,
                current: None,
                expecting_key: true,
            }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                if let Some(Frame::Object { keys_from, .. }) = stack.pop() {
                    keys.truncate(keys_from);
                }
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { expecting_key, .. }) => *expecting_key = true,
                None => {}
            },
            b'"' => {
                let end = string_end(bytes, i);
                if let Some(Frame::Object {
                    keys_from,
                    set,
                    current,
                    expecting_key,
                }) = stack.last_mut()
                    && *expecting_key
                {
                    *expecting_key = false;
                    let key = key_text(text, i, end);
                    let seen = match set {
                        Some(set) => !set.insert(key.clone()),
                        None => {
                            let seen = keys[*keys_from..].contains(&key);
                            keys.push(key.clone());
                            if keys.len() - *keys_from > LINEAR_KEYS {
                                *set = Some(keys.drain(*keys_from..).collect());
                            }
                            seen
                        }
                    };
                    if seen {
                        stack.pop();
                        return Some(Duplicate {
                            key: key.into_owned(),
                            at: path(&stack),
                        });
                    }
                    *current = Some(key);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote that closes the string opening at `start`. Strings are most of a
/// body's bytes, so it jumps from quote or backslash to the next rather than reading each byte.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(at) = bytes
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
    {
        i += at;
        if bytes[i] == b'"' {
            return i;
        }
        i += 2;
    }
    bytes.len()
}

/// A key's value: its text between the quotes unless it has escapes to read.
fn key_text(text: &str, open: usize, close: usize) -> Cow<'_, str> {
    let literal = text.get(open..=close).unwrap_or_default();
    let inner = text.get(open + 1..close).unwrap_or_default();
    if inner.contains('\\') {
        serde_json::value::RawValue::from_string(literal.to_owned())
            .ok()
            .and_then(|raw| json::string(&raw).map(Cow::into_owned))
            .map_or(Cow::Borrowed(inner), Cow::Owned)
    } else {
        Cow::Borrowed(inner)
    }
}

/// Where the innermost frame of `stack` is, as the normalizer names places.
fn path(stack: &[Frame<'_>]) -> String {
    let mut out = String::new();
    for frame in stack {
        match frame {
            Frame::Object { current, .. } => {
                if let Some(key) = current {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
            }
            Frame::Array { index } => {
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> Option<(String, String)> {
        first_duplicate(text).map(|d| (d.key, d.at))
    }

    #[test]
    fn finds_the_repeated_key_and_its_object() {
        assert_eq!(dup(r#"{"a":1,"b":2}"#), None);
        assert_eq!(dup(r#"{"a":1,"a":2}"#), Some(("a".into(), "".into())));
        assert_eq!(
            dup(
                r#"{"entry":[{"id":"1"},{"id":"2","messaging":[{"message":{"text":"x","mid":"m","text":"y"}}]}]}"#
            ),
            Some(("text".into(), "entry[1].messaging[0].message".into()))
        );
        // The same key in sibling objects, and in an object and its child, is no repeat.
        assert_eq!(dup(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#), None);
        // Keys compare by value, escapes read.
        assert_eq!(
            dup(r#"{"text":1,"t\u0065xt":2}"#),
            Some(("text".into(), "".into()))
        );
        // Strings that look like keys, or hold quotes and brackets, are values.
        assert_eq!(dup(r#"{"a":"\"a\":{","b":["a","a"],"c":"}"}"#), None);
    }

    #[test]
    fn large_objects_and_deep_nesting() {
        let keys: Vec<String> = (0..1000).map(|k| format!(r#""k{k}":{k}"#)).collect();
        let text = format!("{{{}}}", keys.join(","));
        assert_eq!(first_duplicate(&text), None);
        let text = format!(r#"{{{},"k500":0}}"#, keys.join(","));
        assert_eq!(dup(&text), Some(("k500".into(), "".into())));

        let deep = format!(
            r#"{{"a":{}{{"x":1,"x":2}}{}}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let (key, at) = dup(&deep).unwrap();
        assert_eq!(key, "x");
        assert!(at.starts_with("a[0][0]"), "{at}");
    }
}
