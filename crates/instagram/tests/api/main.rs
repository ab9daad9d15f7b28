//! The Instagram crate's tests, one binary (each file a module): the fixtures byte for byte,
//! the normalization rules one by one, signature verification, and property tests that
//! `normalize` never panics.

mod fixtures;
mod never_panics;
mod rules;
mod signature;

/// The fixtures the whole repository tests with: real Meta deliveries and documented shapes.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/instagram");
