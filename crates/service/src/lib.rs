//! What every InstantChat service process shares around its own logic.
//!
//! - [`serve::serve`]: the HTTP accept loop of ingest and the gateway, `axum::serve` with a
//!   deadline for each request's head, so a client that never finishes one does not keep its
//!   connection.
//! - [`shutdown::signal`]: resolves on the first SIGINT or SIGTERM; every server's graceful
//!   shutdown starts there.
//! - [`secrets::check_secret`]: refuses a secret setting whose value is published in this
//!   repository or too weak to be real, with a message that says how to get a good one;
//!   [`secrets::generate`] makes one.

pub mod secrets;
pub mod serve;
pub mod shutdown;
