//! `heartbeat`: the application-level keep-alive (any client event counts as activity for
//! `HEARTBEAT_TIMEOUT_SECS`), answered with the server's time.

use std::sync::Arc;

use instantchat_event::now_ms;
use serde_json::json;
use socketioxide::extract::{AckSender, SocketRef, State};
use time::format_description::FormatItem;
use time::macros::format_description;

use super::reply::{RequestError, error, reply};
use crate::hub::Hub;
use crate::session::Turn;

/// JavaScript's `Date.prototype.toISOString()`: always milliseconds, always `Z`.
const ISO_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The time now as JavaScript's `new Date().toISOString()` writes it.
pub fn iso_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(ISO_MILLIS)
        .unwrap_or_default()
}

pub(super) async fn on_heartbeat(
    s: SocketRef,
    ack: AckSender,
    State(hub): State<Arc<Hub>>,
    turn: Turn,
) {
    let Some(_turn) = turn.wait().await else {
        return error(&hub, &s, ack, RequestError::OverBudget);
    };
    reply(
        &s,
        ack,
        "heartbeat_response",
        json!({ "timestamp": now_ms(), "serverTime": iso_now() }),
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_time_reads_like_to_iso_string() {
        let t = super::iso_now();
        assert_eq!(t.len(), "2026-12-07T05:00:00.123Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }
}
