//! The gateway's integration tests: one binary, one module per area, and the helpers they share
//! in [`support`] (ingest and gateways started in-process on port 0 over a real nats-server).

mod binary;
mod engine;
mod fanout;
mod observability;
mod shared_replay;
mod support;
mod trace;
mod two_gateways;
