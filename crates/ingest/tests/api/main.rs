//! Integration tests of the ingest service against a real nats-server (one binary, so the crate
//! links once). Every test starts its own server and app through [`helpers::spawn_app`].

mod binary;
mod broker;
mod helpers;
mod hostile;
mod killed;
mod refused;
mod shutdown;
mod verify;
mod webhook;
