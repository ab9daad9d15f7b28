//! What every InstantChat service process shares around its own logic.
//!
//! - [`config`]: the pieces of every configuration: durations, numbers, NATS URLs, secrets that
//!   never print, every problem reported at once.
//! - [`serve::serve`]: the HTTP accept loop of ingest and the gateway, `axum::serve` with a
//!   deadline for each request's head, so a client that never finishes one does not keep its
//!   connection.
//! - [`shutdown::signal`]: resolves on the first SIGINT or SIGTERM; every server's graceful
//!   shutdown starts there.
//! - [`ops`]: `/readyz` from a readiness check with a deadline, `/metrics` as OpenMetrics text.
//! - [`limits::raise_and_log`]: raises the open-files soft limit to the hard limit at start-up
//!   (containers start at 1,024) and logs what the process got.
//! - [`secrets::check_secret`]: refuses a secret setting whose value is published in this
//!   repository or too weak to be real, with a message that says how to get a good one;
//!   [`secrets::generate`] makes one.

pub mod config;
pub mod limits;
pub mod ops;
pub mod secrets;
pub mod serve;
pub mod shutdown;
