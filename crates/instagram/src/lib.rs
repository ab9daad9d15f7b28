//! Instagram webhook logic for InstantChat: pure functions, no I/O, no async.
//!
//! - [`signature`]: [`verify_signature`] checks Meta's `X-Hub-Signature-256` (HMAC-SHA256 of the
//!   raw body, constant-time, against every configured app secret), or in two steps with
//!   [`Signature`] (the header alone, then the body); [`sign`] makes one, for tools and tests
//!   that play Meta.
//! - [`normalize`](mod@normalize): [`normalize()`] turns a verified body (Meta's `object:
//!   "instagram"` envelope or the simplified body) into [`instantchat_event::Event`]s by the
//!   rules of docs/protocol.md ("Normalization"), reporting items it had to skip and bodies it
//!   cannot read.
//!
//! The ingest service calls them in that order: verify the raw bytes, then normalize the same
//! bytes. Parsing borrows from the body ([`serde_json::value::RawValue`]), so details keep Meta's
//! values byte for byte and derived ids hash the item exactly as it was sent.
//!
//! A body with a key repeated within one object is refused as a whole
//! ([`Rejected::DuplicateKey`]): `duplicates` finds it.
//!
//! Inside: `envelope` walks the outer layers (`object`, `entry[]`, the item lists) in one pass;
//! `json` gives borrowed views of objects and strings; `timestamp` reads Meta's seconds,
//! milliseconds and ISO strings and writes `2025-02-21T16:52:54.000Z`.

mod duplicates;
mod envelope;
mod json;
pub mod normalize;
pub mod signature;
mod timestamp;

pub use normalize::{Normalized, Rejected, SOURCE_INSTAGRAM, SOURCE_SIMPLE, Skipped, normalize};
pub use signature::{Malformed, Signature, SignatureError, sign, verify_signature};
