//! Authenticated sockets that say nothing for longer than `HEARTBEAT_TIMEOUT_SECS` are
//! disconnected: every client event counts (the `heartbeat` event exists for that).

use std::time::Duration;

use socketioxide::SocketIo;
use tokio::sync::watch;

use crate::session::SessionRef;

/// Checks every socket of `io` until `shutdown` turns true.
pub async fn disconnect_silent(
    io: SocketIo,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Short timeouts are checked more often, long ones every 30 s.
    let period = (timeout / 2).clamp(Duration::from_millis(250), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        for socket in io.sockets() {
            let Some(session) = socket.extensions.get::<SessionRef>() else {
                continue;
            };
            let silent = session.lock().silent_for().is_some_and(|s| s > timeout);
            if silent {
                tracing::debug!(sid = %socket.id, "heartbeat timeout; disconnecting");
                let _ = socket.disconnect();
            }
        }
    }
}
