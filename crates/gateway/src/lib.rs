//! The InstantChat Socket.IO gateway (docs/protocol.md, docs/architecture.md).
//!
//! How the modules depend on each other, lowest first (no module imports one above it):
//!
//! - [`config`]: `GatewayArgs` (env vars and flags) and the validated `Config` and
//!   `GatewaySettings`.
//! - [`metrics`]: Prometheus metrics, every label value one the server defines.
//! - [`auth`]: JWT verification; the user and the accounts it may see.
//! - [`limits`]: what one user or address may hold or open: connection slots, the per-address
//!   rate of new sessions, sessions that have not connected yet.
//! - [`expiry`]: a timer queue of token expiries (`auth_expired`, then the grace period).
//! - [`session`]: one socket's state and its delivery state machine (live, replaying, slow,
//!   gone); every event reaches a socket through `Client::offer`.
//! - [`fanout`]: the gateway's one bus subscription, the index of which socket receives which
//!   account, and the delivery of each event.
//! - [`replay`]: resume with `since`: bounded, from the same history, reads shared by resumes
//!   that arrive together.
//! - [`silence`]: authenticated sockets silent too long are disconnected.
//! - [`hub`]: puts those parts together.
//! - [`requests`]: the handshake and one module per client event.
//! - [`admin`]: the operator's view, `GET /admin/connections` (only with `ADMIN_TOKEN`).
//! - [`app`]: the HTTP routes (`/socket.io`, `/healthz`, `/readyz`, `/metrics`,
//!   `/admin/connections`), the admission of new sessions, CORS, serving and draining.
//!
//! Gateways never talk to each other: each takes its events from the bus and keeps its own
//! clients.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod expiry;
pub mod fanout;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod replay;
pub mod requests;
pub mod session;
pub mod silence;

pub use app::{Application, Gateway, SERVICE_NAME, StartError};
pub use config::{Config, GatewayArgs, GatewayOptions, GatewaySettings};
