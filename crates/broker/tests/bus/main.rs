//! The bus tests: one binary. `contract` runs the same cases on the in-memory bus and on NATS;
//! `nats_bus` what only JetStream has (restarts, replicas, batches); `support` what they share.

mod contract;
mod nats_bus;
mod support;
