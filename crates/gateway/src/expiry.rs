//! Token expiry: at a token's `exp`, and again once the grace period after it has passed, the
//! socket is due for a check (its owner sends `auth_expired`, then disconnects the socket unless
//! it authenticated again in between).
//!
//! One task and one timer queue serve every socket: a connection costs an entry in the queue,
//! not a sleeping task of its own, and a socket that leaves is dropped from the queue at once,
//! so nothing keeps it in memory until its token would have expired. This module only keeps
//! time; what is done when an entry is due is the caller's (see [`run`]).

use std::collections::HashMap;
use std::time::Duration;

use instantchat_event::now_ms;
use parking_lot::Mutex;
use socketioxide::socket::Sid;
use tokio::sync::{mpsc, watch};
use tokio_util::time::{DelayQueue, delay_queue};

/// The longest single wait in the queue; a later expiry is waited for in steps.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug)]
enum Command {
    /// The socket authenticated (again): its token expires at `expires_at_ms`.
    Arm {
        sid: Sid,
        generation: u64,
        expires_at_ms: u64,
    },
    /// The socket left.
    Forget(Sid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// At the token's expiry.
    Expiry { expires_at_ms: u64 },
    /// At the end of the grace period.
    Grace,
}

#[derive(Debug)]
struct Entry {
    sid: Sid,
    /// The session's authentication generation when armed; a fresh `authenticate` changes it.
    generation: u64,
    phase: Phase,
}

/// What has come due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The token of `sid`'s authentication `generation` has expired.
    Expired { sid: Sid, generation: u64 },
    /// The grace period after that expiry is over.
    GraceOver { sid: Sid, generation: u64 },
}

/// The handle the sockets use; [`run`] does the waiting. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Expiries {
    tx: mpsc::UnboundedSender<Command>,
    rx: std::sync::Arc<Mutex<Option<mpsc::UnboundedReceiver<Command>>>>,
}

impl Default for Expiries {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Expiries {
            tx,
            rx: std::sync::Arc::new(Mutex::new(Some(rx))),
        }
    }
}

impl Expiries {
    /// Schedules `sid`'s expiry at `expires_at` (seconds since the epoch), replacing any
    /// earlier one.
    pub fn arm(&self, sid: Sid, generation: u64, expires_at: u64) {
        let _ = self.tx.send(Command::Arm {
            sid,
            generation,
            expires_at_ms: expires_at.saturating_mul(1000),
        });
    }

    /// Drops `sid`'s expiry, if any.
    pub fn forget(&self, sid: Sid) {
        let _ = self.tx.send(Command::Forget(sid));
    }
}

/// Serves the expiries until `shutdown` turns true. When an entry comes due, `on_due` is
/// called; for [`Due::Expired`] it returns whether the socket is still there with that
/// generation, and then [`Due::GraceOver`] follows `grace` later. Runs once per [`Expiries`]; a
/// second call returns at once.
pub async fn run(
    expiries: &Expiries,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
    on_due: impl Fn(Due) -> bool,
) {
    let Some(mut commands) = expiries.rx.lock().take() else {
        return;
    };
    let mut queue = Queue::default();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Arm { sid, generation, expires_at_ms }) => {
                    let phase = Phase::Expiry { expires_at_ms };
                    let wait = Duration::from_millis(expires_at_ms.saturating_sub(now_ms()));
                    queue.insert(Entry { sid, generation, phase }, wait);
                }
                Some(Command::Forget(sid)) => queue.remove(sid),
                None => return,
            },
            Some(entry) = std::future::poll_fn(|cx| queue.poll_expired(cx)) => {
                if let Some((entry, wait)) = fire(entry, grace, &on_due) {
                    queue.insert(entry, wait);
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Acts on an entry whose time has come; returns the next step to wait for, if any.
fn fire(entry: Entry, grace: Duration, on_due: &impl Fn(Due) -> bool) -> Option<(Entry, Duration)> {
    let Entry {
        sid, generation, ..
    } = entry;
    match entry.phase {
        Phase::Expiry { expires_at_ms } => {
            let left = expires_at_ms.saturating_sub(now_ms());
            if left > 0 {
                // A wait longer than the queue's longest: not there yet.
                return Some((entry, Duration::from_millis(left)));
            }
            on_due(Due::Expired { sid, generation }).then_some((
                Entry {
                    phase: Phase::Grace,
                    ..entry
                },
                grace,
            ))
        }
        Phase::Grace => {
            on_due(Due::GraceOver { sid, generation });
            None
        }
    }
}

/// A timer queue with at most one entry per socket.
#[derive(Default)]
struct Queue {
    delays: DelayQueue<Entry>,
    keys: HashMap<Sid, delay_queue::Key>,
}

impl Queue {
    fn insert(&mut self, entry: Entry, wait: Duration) {
        self.remove(entry.sid);
        let sid = entry.sid;
        let key = self.delays.insert(entry, wait.min(MAX_WAIT));
        self.keys.insert(sid, key);
    }

    fn remove(&mut self, sid: Sid) {
        if let Some(key) = self.keys.remove(&sid) {
            self.delays.remove(&key);
        }
    }

    fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Entry>> {
        self.delays.poll_expired(cx).map(|expired| {
            let entry = expired?.into_inner();
            self.keys.remove(&entry.sid);
            Some(entry)
        })
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("entries", &self.keys.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid() -> Sid {
        Sid::new()
    }

    fn entry(sid: Sid, generation: u64) -> Entry {
        Entry {
            sid,
            generation,
            phase: Phase::Grace,
        }
    }

    async fn next(queue: &mut Queue) -> Option<Entry> {
        std::future::poll_fn(|cx| queue.poll_expired(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn one_entry_per_socket_the_latest_wins() {
        let mut queue = Queue::default();
        let a = sid();
        queue.insert(entry(a, 1), Duration::from_secs(10));
        queue.insert(entry(a, 2), Duration::from_secs(20));
        assert_eq!(queue.keys.len(), 1);
        let fired = next(&mut queue).await.expect("an entry");
        assert_eq!((fired.sid, fired.generation), (a, 2));
        assert!(queue.keys.is_empty());
        assert!(next(&mut queue).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_left_never_fires() {
        let mut queue = Queue::default();
        let (a, b) = (sid(), sid());
        queue.insert(entry(a, 1), Duration::from_secs(10));
        queue.insert(entry(b, 1), Duration::from_secs(20));
        queue.remove(a);
        queue.remove(a); // twice is harmless
        let fired = next(&mut queue).await.expect("an entry");
        assert_eq!(fired.sid, b);
        assert!(next(&mut queue).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn far_expiries_wait_in_steps() {
        let mut queue = Queue::default();
        let a = sid();
        let start = tokio::time::Instant::now();
        queue.insert(entry(a, 1), Duration::from_secs(365 * 24 * 3600));
        next(&mut queue).await.expect("an entry");
        assert_eq!(start.elapsed(), MAX_WAIT);
    }
}
