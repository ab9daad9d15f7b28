//! The body's outer layers, walked in one pass down to the items.
//!
//! [`Obj`] keeps each value as raw text, so looking inside means scanning it again; for the
//! layers whose bytes are never needed (the top level, `entry[]`, the entries, the item lists)
//! that would scan the whole body once per layer. Here serde walks them directly, and only the
//! items are kept raw: they are hashed for derived ids and copied into details. Every layer is
//! lenient: a value of an unexpected JSON type becomes [`Shaped::Other`] instead of failing the
//! whole parse, so one bad entry cannot hide the others.

use std::fmt;

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;

use crate::json::{Obj, Str};

/// A value that either has the expected shape or is some other JSON value.
#[derive(Debug)]
pub(crate) enum Shaped<T> {
    Ok(T),
    Other,
}

/// The top-level object: every key with its raw value, except `entry`, which is walked.
#[derive(Debug)]
pub(crate) struct Top<'a> {
    /// All keys but `entry`.
    pub(crate) obj: Obj<'a>,
    /// `entry` (the last one if repeated).
    pub(crate) entry: Option<Shaped<Vec<Shaped<Entry<'a>>>>>,
}

/// One element of `entry[]`.
#[derive(Debug, Default)]
pub(crate) struct Entry<'a> {
    pub(crate) id: Option<&'a RawValue>,
    pub(crate) time: Option<&'a RawValue>,
    pub(crate) changes: Option<Shaped<Vec<&'a RawValue>>>,
    pub(crate) messaging: Option<Shaped<Vec<&'a RawValue>>>,
    /// Other keys holding a non-empty list (e.g. the handover protocol's `standby`): items this
    /// service has no rule for, with how many there are.
    pub(crate) other_lists: Vec<(String, usize)>,
}

/// Accepts any JSON value other than the expected one as [`Shaped::Other`], consuming it.
macro_rules! other_values {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Shaped::Other)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Shaped::Other)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Shaped::Other)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Shaped::Other)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Shaped::Other)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Shaped::Other)
        }
    };
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut top = Top {
                    obj: Obj {
                        pairs: Vec::with_capacity(8),
                        inline: None,
                    },
                    entry: None,
                };
                while let Some(Str(key)) = map.next_key()? {
                    if key == "entry" {
                        top.entry = Some(map.next_value_seed(ListOf(EntrySeed))?);
                    } else {
                        top.obj
                            .pairs
                            .push((key, map.next_value::<&'de RawValue>()?));
                    }
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(TopVisitor)
    }
}

/// `[T...]` for a seed of `T`; anything else is [`Shaped::Other`].
#[derive(Clone, Copy)]
struct ListOf<S>(S);

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for ListOf<S> {
    type Value = Shaped<Vec<S::Value>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for ListOf<S> {
    type Value = Shaped<Vec<S::Value>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(4);
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(Shaped::Ok(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| Shaped::Other)
    }
    other_values!();
}

/// A raw item of `changes[]` or `messaging[]`.
#[derive(Clone, Copy)]
struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = &'de RawValue;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        <&'de RawValue>::deserialize(deserializer)
    }
}

/// An element of `entry[]`: an object, else [`Shaped::Other`].
#[derive(Clone, Copy)]
struct EntrySeed;

impl<'de> DeserializeSeed<'de> for EntrySeed {
    type Value = Shaped<Entry<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed {
    type Value = Shaped<Entry<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entry = Entry::default();
        while let Some(Str(key)) = map.next_key()? {
            match key.as_ref() {
                "id" => entry.id = Some(map.next_value()?),
                "time" => entry.time = Some(map.next_value()?),
                "changes" => entry.changes = Some(map.next_value_seed(ListOf(RawSeed))?),
                "messaging" => entry.messaging = Some(map.next_value_seed(ListOf(RawSeed))?),
                other => {
                    if let Shaped::Ok(items) = map.next_value_seed(ListOf(RawSeed))?
                        && !items.is_empty()
                    {
                        entry.other_lists.push((other.to_owned(), items.len()));
                    }
                }
            }
        }
        Ok(Shaped::Ok(entry))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        drain_seq(seq).map(|()| Shaped::Other)
    }
    other_values!();
}
