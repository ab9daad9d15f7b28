#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]

pub use engineioxide_core::{ProtocolVersion, Str, TransportType};
pub use socket::{DisconnectReason, Socket};

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
pub use engineioxide_core::{OpenPacket, Packet, PacketParseError};

pub mod config;
pub mod handler;
pub mod layer;
pub mod service;
pub mod socket;

/// Socket id type and generator
pub mod sid {
    #[deprecated(since = "0.16.2", note = "Use engineioxide::socket::Sid instead")]
    pub use engineioxide_core::Sid;
}

/// Closes one session's transport from outside the engine, found in the extensions of the
/// request parts the session keeps (`Socket::req_parts` in socketioxide).
///
/// A Socket.IO disconnect packet tells socket.io-client not to reconnect; closing the transport
/// makes it reconnect by itself, as after a network failure. Nothing to do once the session is
/// gone.
#[derive(Clone)]
pub struct TransportCloser(Arc<dyn Fn() + Send + Sync>);

impl TransportCloser {
    fn new<D: Default + Send + Sync + 'static>(
        socket: Arc<std::sync::OnceLock<std::sync::Weak<Socket<D>>>>,
    ) -> Self {
        TransportCloser(Arc::new(move || {
            if let Some(socket) = socket.get().and_then(std::sync::Weak::upgrade) {
                socket.close(DisconnectReason::TransportError);
            }
        }))
    }

    /// Closes the transport; the handler is told with [`DisconnectReason::TransportError`].
    pub fn close(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for TransportCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportCloser")
    }
}

use std::sync::Arc;

mod body;
mod engine;
mod errors;
mod transport;
