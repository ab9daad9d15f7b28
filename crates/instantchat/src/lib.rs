//! InstantChat on one machine.
//!
//! - [`single`]: ingest and gateway in one process on one port, over the in-process bus (or NATS
//!   when `NATS_URL` is set): `instantchat dev` and `instantchat serve`.
//! - [`console`]: the live event console page they serve at `/`.
//! - [`tools`]: the operator's tools: `secret` prints a new random secret, `token` mints a client
//!   JWT, `send` POSTs a signed webhook, `tail` prints the live events a client sees, `admin`
//!   shows a gateway's connections.

pub mod console;
pub mod single;
pub mod tools;
