//! What one user or one address may hold or open on this gateway, and what every session costs
//! before it authenticates.
//!
//! - Each user holds at most `MAX_CONNECTIONS_PER_USER` authenticated sockets: a [`UserSlot`]
//!   is one of them, given back when dropped.
//! - Each address opens sessions at `IP_CONNECT_RATE` (burst `IP_CONNECT_BURST`). An engine.io
//!   session counts when it opens (a polling handshake or a WebSocket without `sid`), before any
//!   token is seen; a session opened over the rate is refused at its Socket.IO connect with a
//!   reason the client can read.
//! - Sessions without a Socket.IO connect yet ([`PendingSession`]) are capped per address and in
//!   all: beyond either cap a new session is refused at once (HTTP 429 or 503), so a client that
//!   opens sessions and never connects holds a bounded number of them, each for at most the
//!   connect timeout.
//!
//! Every limit here is per gateway: a user or an address reaching several gateways through a
//! load balancer has each gateway's allowance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ipnet::IpNet;
use parking_lot::Mutex;

/// Addresses remembered at most; past it the idle ones are forgotten (their buckets full again).
const MAX_ADDRESSES: usize = 100_000;

/// A token bucket: `rate` per second, up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new((rate, burst): (f64, f64)) -> Self {
        TokenBucket {
            tokens: burst,
            rate,
            burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Full: as if never used.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// The limits' settings.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub max_connections_per_user: usize,
    /// New sessions per second from one address, and the burst.
    pub ip_connect_rate: (f64, f64),
    /// Sessions without a Socket.IO connect, per address.
    pub max_pending_per_ip: usize,
    /// Sessions without a Socket.IO connect, in all.
    pub max_pending: usize,
}

/// Why a new session is refused before it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionRefused {
    /// This address has too many sessions that have not connected yet.
    #[error("Too many connections from this address; retry later")]
    AddressBusy,
    /// The gateway has too many sessions that have not connected yet.
    #[error("The server is busy; retry later")]
    GatewayBusy,
}

#[derive(Debug)]
struct Address {
    bucket: TokenBucket,
    pending: usize,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<String, usize>,
    addresses: HashMap<IpAddr, Address>,
    pending: usize,
}

/// The per-user and per-address limits of one gateway.
#[derive(Debug)]
pub struct Limits {
    settings: LimitSettings,
    state: Mutex<State>,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Self> {
        Arc::new(Limits {
            settings,
            state: Mutex::default(),
        })
    }

    /// Counts a new engine.io session from `ip`. `Err` when it must be refused now; else the
    /// session is pending until [`PendingSession::connect`] or its drop, and
    /// [`PendingSession::within_rate`] says whether it came within the address's rate.
    pub fn open_session(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSession, SessionRefused> {
        let mut state = self.state.lock();
        if state.pending >= self.settings.max_pending {
            return Err(SessionRefused::GatewayBusy);
        }
        if state.addresses.len() >= MAX_ADDRESSES && !state.addresses.contains_key(&ip) {
            // Forget the addresses that hold nothing and whose buckets are full again.
            let now = Instant::now();
            state
                .addresses
                .retain(|_, a| a.pending > 0 || !a.bucket.is_full(now));
        }
        let rate = self.settings.ip_connect_rate;
        let address = state.addresses.entry(ip).or_insert_with(|| Address {
            bucket: TokenBucket::new(rate),
            pending: 0,
        });
        let within_rate = address.bucket.take();
        if !within_rate && address.pending >= self.settings.max_pending_per_ip {
            return Err(SessionRefused::AddressBusy);
        }
        address.pending += 1;
        state.pending += 1;
        Ok(PendingSession(Arc::new(Pending {
            limits: self.clone(),
            ip,
            within_rate,
            connected: AtomicBool::new(false),
        })))
    }

    fn end_pending(&self, ip: IpAddr) {
        let mut state = self.state.lock();
        state.pending = state.pending.saturating_sub(1);
        if let Some(address) = state.addresses.get_mut(&ip) {
            address.pending = address.pending.saturating_sub(1);
        }
    }

    /// Sessions that have not connected yet.
    pub fn pending(&self) -> usize {
        self.state.lock().pending
    }

    /// One of `user`'s connection slots; `None` when the user holds them all.
    pub fn acquire_user(self: &Arc<Self>, user: &str) -> Option<UserSlot> {
        let mut state = self.state.lock();
        let held = state.users.entry(user.to_owned()).or_default();
        if *held >= self.settings.max_connections_per_user {
            return None;
        }
        *held += 1;
        Some(UserSlot {
            limits: self.clone(),
            user: user.to_owned(),
        })
    }

    fn release_user(&self, user: &str) {
        let mut state = self.state.lock();
        if let Some(held) = state.users.get_mut(user) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.users.remove(user);
            }
        }
    }
}

/// One of a user's connection slots, given back when dropped.
#[derive(Debug)]
pub struct UserSlot {
    limits: Arc<Limits>,
    user: String,
}

impl UserSlot {
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.limits.release_user(&self.user);
    }
}

/// An engine.io session that has not made its Socket.IO connect yet. It travels in the
/// extensions of the request that opened the session, which the session keeps for its whole
/// life: dropped with the session, or ended by [`connect`](Self::connect), it stops counting.
#[derive(Debug, Clone)]
pub struct PendingSession(Arc<Pending>);

#[derive(Debug)]
struct Pending {
    limits: Arc<Limits>,
    ip: IpAddr,
    within_rate: bool,
    connected: AtomicBool,
}

impl PendingSession {
    /// The session made its Socket.IO connect: it no longer counts as pending.
    pub fn connect(&self) {
        if !self.0.connected.swap(true, Ordering::AcqRel) {
            self.0.limits.end_pending(self.0.ip);
        }
    }

    /// Whether the session was opened within its address's rate.
    pub fn within_rate(&self) -> bool {
        self.0.within_rate
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !*self.connected.get_mut() {
            self.limits.end_pending(self.ip);
        }
    }
}

/// The address a connection counts against: the peer's, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy
/// appends the address it got the request from; entries left of a stranger could be forged).
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut ip = peer;
    for entry in forwarded.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(hop) => {
                ip = hop;
                if !is_trusted(&hop) {
                    break;
                }
            }
            // Not an address: stop at the last one that was.
            Err(_) => break,
        }
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limits(rate: (f64, f64), per_ip: usize, total: usize) -> Arc<Limits> {
        Limits::new(LimitSettings {
            max_connections_per_user: 2,
            ip_connect_rate: rate,
            max_pending_per_ip: per_ip,
            max_pending: total,
        })
    }

    #[test]
    fn the_client_address_is_taken_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().expect("net"),
            IpNet::from(ip("192.0.2.7")),
        ];
        // No trusted proxies: the peer, whatever the header says (anyone can send it).
        let h = forwarded(&["203.0.113.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &[]), ip("10.1.2.3"));
        // A stranger connecting directly: its own address, the header ignored.
        assert_eq!(
            client_ip(ip("198.51.100.4"), &h, &trusted),
            ip("198.51.100.4")
        );
        // Through a trusted proxy: the address the proxy got the request from.
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        // A forged entry left of the real client does not count.
        let h = forwarded(&["1.2.3.4, 203.0.113.9"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        // Two trusted hops (load balancer, then ingress), in one or several headers.
        let h = forwarded(&["203.0.113.9, 192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        let h = forwarded(&["203.0.113.9", "192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.9"));
        // IPv6 clients.
        let h = forwarded(&["2001:db8::1"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("2001:db8::1"));
        // Garbage stops the walk at the last address that was one.
        let h = forwarded(&["203.0.113.9, not-an-ip, 192.0.2.7"]);
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("192.0.2.7"));
        // A trusted proxy that sends no header: the proxy.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn sessions_over_the_rate_are_marked_then_refused_past_the_pending_cap() {
        let limits = limits((0.0001, 2.0), 3, 100);
        let a = ip("203.0.113.1");
        let first = limits.open_session(a).expect("within the burst");
        let second = limits.open_session(a).expect("within the burst");
        assert!(first.within_rate() && second.within_rate());
        // Over the rate: still opened (so the connect can say why), until the address holds
        // as many pending sessions as it may.
        let third = limits.open_session(a).expect("pending 2 < 3");
        assert!(!third.within_rate());
        assert_eq!(
            limits.open_session(a).map(|_| ()),
            Err(SessionRefused::AddressBusy)
        );
        // Another address is not held back.
        assert!(limits.open_session(ip("203.0.113.2")).is_ok());
        // A session that connects, or goes, stops counting.
        first.connect();
        first.connect();
        assert_eq!(
            limits.pending(),
            2,
            "the other address's session was dropped"
        );
        assert!(limits.open_session(a).is_ok(), "room for one more pending");
        drop((second, third));
        assert_eq!(limits.pending(), 0);
    }

    #[test]
    fn the_gateway_wide_pending_cap_holds_for_every_address() {
        let limits = limits((1000.0, 1000.0), 1000, 2);
        let one = limits.open_session(ip("203.0.113.1")).expect("1");
        let _two = limits.open_session(ip("203.0.113.2")).expect("2");
        assert_eq!(
            limits.open_session(ip("203.0.113.3")).map(|_| ()),
            Err(SessionRefused::GatewayBusy)
        );
        one.connect();
        assert!(limits.open_session(ip("203.0.113.3")).is_ok());
    }

    #[test]
    fn a_user_holds_at_most_its_slots_and_gets_them_back() {
        let limits = limits((1.0, 1.0), 1, 1);
        let a = limits.acquire_user("u").expect("1");
        let _b = limits.acquire_user("u").expect("2");
        assert!(limits.acquire_user("u").is_none());
        assert!(limits.acquire_user("v").is_some(), "per user");
        drop(a);
        assert!(limits.acquire_user("u").is_some());
    }
}
