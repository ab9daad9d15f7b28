//! InstantChat on one machine.
//!
//! - [`single`]: ingest and gateway in one process on one port, over the in-process bus (or NATS
//!   when `NATS_URL` is set): `instantchat dev` and `instantchat serve`.
//! - [`console`]: the live event console page they serve at `/`.
//! - [`tools`]: the operator's tools: `token` mints a client JWT, `send` POSTs a signed webhook,
//!   `tail` prints the live events a client sees, `admin` shows a gateway's connections.

pub mod console;
pub mod single;
pub mod tools;

/// `n` random bytes as hex, from the OS, for development secrets.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
