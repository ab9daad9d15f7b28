//! The InstantChat Socket.IO gateway (PROTOCOL.md section 4).
//!
//! - [`config`]: `GatewayArgs` (env vars and flags) and the validated `GatewaySettings`.
//! - [`auth`]: JWT verification; the user and the accounts it may see.
//! - [`handlers`]: the handshake and every client event with its reply.
//! - [`session`]: per-socket state (subscriptions, rooms, rate budget, last seq sent).
//! - [`expiry`]: `auth_expired` at each token's expiry, and the disconnect after the grace.
//! - [`hub`]: shared state, interest that follows connections, and the fan-out from the bus.
//! - [`replay`]: resumes waiting at the same time share one read of the stream.
//! - [`app`]: the HTTP routes (`/socket.io`, `/healthz`, `/readyz`, `/metrics`,
//!   `/admin/connections`), CORS, serving and graceful shutdown.
//! - [`metrics`]: Prometheus metrics.
//! - [`admin`]: the operator's view, `GET /admin/connections` (only with `ADMIN_TOKEN`).
//!
//! Gateways never talk to each other: each takes from the bus only what its clients may see.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod expiry;
pub mod handlers;
pub mod hub;
pub mod metrics;
pub mod replay;
pub mod session;

pub use app::Gateway;
pub use config::{GatewayArgs, GatewayOptions, GatewaySettings};
