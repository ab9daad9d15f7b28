//! What every InstantChat service process shares around its own logic.
//!
//! - [`serve::serve`]: the HTTP accept loop of ingest and the gateway, `axum::serve` with a
//!   deadline for each request's head, so a client that never finishes one does not keep its
//!   connection.
//! - [`shutdown::signal`]: resolves on the first SIGINT or SIGTERM; every server's graceful
//!   shutdown starts there.

pub mod serve;
pub mod shutdown;
