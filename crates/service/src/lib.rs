//! What every InstantChat service process shares around its own logic.
//!
//! - [`config`]: the pieces of every configuration: durations, numbers, NATS URLs, secrets that
//!   never print, every problem reported at once.
//! - [`serve::serve`]: the HTTP accept loop of ingest and the gateway, `axum::serve` with a
//!   deadline for each request's head, so a client that never finishes one does not keep its
//!   connection.
//! - [`shutdown::signal`]: resolves on the first SIGINT or SIGTERM; every server's graceful
//!   shutdown starts there.

pub mod config;
pub mod serve;
pub mod shutdown;
