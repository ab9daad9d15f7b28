//! Recording a verified identity on a socket, at the handshake or with `authenticate`.

use std::sync::Arc;

use crate::auth::Identity;
use crate::fanout::Need;
use crate::hub::Hub;
use crate::limits::UserSlot;
use crate::session::Client;

/// Records `identity` on a socket that is not subscribed yet (the handshake's token): nothing
/// to move in the fan-out. False when the socket is already gone.
pub fn record(hub: &Hub, client: &Client, identity: Identity, slot: Option<UserSlot>) -> bool {
    let expires_at = identity.expires_at;
    let generation = client.session.lock().authenticate(identity, slot);
    arm(hub, client, generation, expires_at)
}

/// Records `identity` (first or renewed authentication): the accounts the socket receives follow
/// the new token at once, in the same step. `slot`: the user's connection slot the socket now
/// holds, when it did not hold one yet. False when the socket is already gone.
pub async fn accept(
    hub: &Arc<Hub>,
    client: &Client,
    identity: Identity,
    slot: Option<UserSlot>,
) -> bool {
    let expires_at = identity.expires_at;
    let mut generation = None;
    // Needs no floor: a socket that changes identity keeps its place in the stream.
    let placed = hub
        .fanout
        .place(client, Need::Nothing, |session, _| {
            generation = session.authenticate(identity, slot);
            session.scope()
        })
        .await;
    placed.is_ok() && arm(hub, client, generation, expires_at)
}

/// `auth_expired` at `exp`, then a grace period for a fresh `authenticate`.
fn arm(hub: &Hub, client: &Client, generation: Option<u64>, expires_at: u64) -> bool {
    let Some(generation) = generation else {
        return false;
    };
    hub.expiries.arm(client.sid(), generation, expires_at);
    true
}
