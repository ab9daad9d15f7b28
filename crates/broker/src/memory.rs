//! The in-process bus for the single-process mode: the same contract as JetStream, in memory.
//!
//! Events live in a bounded ring (by count and age) that serves replay; live subscribers get them
//! through a broadcast channel and, if they fall behind it, catch up from the ring. Publishing
//! and broadcasting happen under one lock, so every subscriber sees the same seq order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use instantchat_event::{Event, subjects};
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use tokio::sync::broadcast;

use crate::{
    BusError, Delivered, Epoch, EventBus, EventStream, Interest, Outgoing, PublishAck, Replay,
    Retained, Retention, StartAt,
};

/// How many events a live subscriber may trail the publisher before it reads from the ring.
const LIVE_CHANNEL: usize = 4096;

/// In-process [`EventBus`]. Cheap to clone; clones share the same bus.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
    live: broadcast::Sender<Delivered>,
    retention: Retention,
    /// The history lives as long as the process: each bus is an epoch of its own.
    epoch: Epoch,
}

#[derive(Debug, Default)]
struct State {
    last_seq: u64,
    /// Highest seq that was dropped from the ring: a replay after it is complete.
    evicted_upto: u64,
    ring: VecDeque<(Instant, Delivered)>,
    dedup: HashMap<String, u64>,
    dedup_order: VecDeque<(Instant, String)>,
    /// Raw webhook bodies are numbered and deduplicated like events, but not kept: nothing in
    /// the single-process mode reads them back.
    raw_seq: u64,
}

impl MemoryBus {
    pub fn new(retention: Retention) -> Self {
        let (live, _) = broadcast::channel(LIVE_CHANNEL);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        MemoryBus {
            state: Arc::default(),
            live,
            retention,
            epoch: Epoch::new(started.to_string()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn prune(&self, state: &mut State, now: Instant) {
        // 0: no count limit, as on NATS; the age limit still applies.
        let max_events = match self.retention.max_events {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        while let Some((at, d)) = state.ring.front() {
            if state.ring.len() > max_events || now.duration_since(*at) > self.retention.max_age {
                state.evicted_upto = d.seq;
                state.ring.pop_front();
            } else {
                break;
            }
        }
        while let Some((at, _)) = state.dedup_order.front() {
            if now.duration_since(*at) > self.retention.dedup_window {
                if let Some((_, id)) = state.dedup_order.pop_front() {
                    state.dedup.remove(&id);
                }
            } else {
                break;
            }
        }
    }

    fn after(state: &State, interest: Option<&dyn Fn(&Event) -> bool>, seq: u64) -> Vec<Delivered> {
        let start = state.ring.partition_point(|(_, d)| d.seq <= seq);
        state
            .ring
            .range(start..)
            .map(|(_, d)| d)
            .filter(|d| interest.is_none_or(|f| f(&d.event)))
            .cloned()
            .collect()
    }
}

#[async_trait::async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, batch: Vec<Outgoing>) -> Result<Vec<PublishAck>, BusError> {
        let now = Instant::now();
        let mut state = self.lock();
        self.prune(&mut state, now);
        let mut acks = Vec::with_capacity(batch.len());
        for out in batch {
            if let Some(&seq) = state.dedup.get(&out.msg_id) {
                acks.push(PublishAck {
                    seq,
                    duplicate: true,
                });
                continue;
            }
            let seq = if out.subject.starts_with(subjects::EVENTS_PREFIX) {
                let event = match out.event {
                    Some(event) => event,
                    None => Arc::new(Event::decode(out.payload.as_ref()).map_err(|e| {
                        BusError::Publish(format!(
                            "payload on {} is not an Event: {e}",
                            out.subject
                        ))
                    })?),
                };
                state.last_seq += 1;
                let delivered = Delivered {
                    seq: state.last_seq,
                    event,
                    trace: out.trace,
                };
                // No receivers is fine: the ring keeps it for replay.
                let _ = self.live.send(delivered.clone());
                state.ring.push_back((now, delivered));
                state.last_seq
            } else {
                state.raw_seq += 1;
                state.raw_seq
            };
            state.dedup.insert(out.msg_id.clone(), seq);
            state.dedup_order.push_back((now, out.msg_id));
            acks.push(PublishAck {
                seq,
                duplicate: false,
            });
        }
        self.prune(&mut state, now);
        Ok(acks)
    }

    async fn subscribe(&self, interest: Interest, start: StartAt) -> Result<EventStream, BusError> {
        let (rx, backlog, last) = {
            let state = self.lock();
            let rx = self.live.subscribe();
            let matches = |e: &Event| interest.matches(e);
            match start {
                StartAt::New => (rx, Vec::new(), state.last_seq),
                StartAt::After(seq) => (
                    rx,
                    Self::after(&state, Some(&matches), seq),
                    seq.min(state.last_seq),
                ),
            }
        };
        struct Sub {
            bus: MemoryBus,
            rx: broadcast::Receiver<Delivered>,
            pending: VecDeque<Delivered>,
            last: u64,
            interest: Interest,
        }
        let sub = Sub {
            bus: self.clone(),
            rx,
            pending: backlog.into(),
            last,
            interest,
        };
        let stream = futures::stream::unfold(sub, |mut sub| async move {
            loop {
                if let Some(d) = sub.pending.pop_front() {
                    if d.seq > sub.last {
                        sub.last = d.seq;
                        return Some((Ok(d), sub));
                    }
                    continue;
                }
                match sub.rx.recv().await {
                    Ok(d) => {
                        if d.seq > sub.last && sub.interest.matches(&d.event) {
                            sub.last = d.seq;
                            return Some((Ok(d), sub));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let state = sub.bus.lock();
                        if state.evicted_upto > sub.last {
                            let after = sub.last;
                            drop(state);
                            return Some((Err(BusError::Lagged { after }), sub));
                        }
                        let matches = |e: &Event| sub.interest.matches(e);
                        sub.pending = MemoryBus::after(&state, Some(&matches), sub.last).into();
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn replay(&self, interest: Interest, after: u64) -> Result<Replay, BusError> {
        let mut state = self.lock();
        self.prune(&mut state, Instant::now());
        let retained = Retained {
            after: state.evicted_upto,
            until: state.last_seq,
        };
        let matches = |e: &Event| interest.matches(e);
        let events = Self::after(&state, Some(&matches), after);
        let pending = events.len() as u64;
        Ok(Replay::new(
            after,
            retained,
            self.epoch.clone(),
            pending,
            futures::stream::iter(events.into_iter().map(Ok)).boxed(),
        ))
    }

    async fn epoch(&self) -> Result<Epoch, BusError> {
        Ok(self.epoch.clone())
    }

    async fn last_seq(&self) -> Result<u64, BusError> {
        Ok(self.lock().last_seq)
    }

    async fn check_ready(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn close(&self) {}

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TraceContext;
    use std::time::Duration;

    fn event(account: &str, id: &str) -> Outgoing {
        Outgoing::event(
            Event {
                id: format!("comments:{id}"),
                event_type: "comments".into(),
                account_id: account.into(),
                details_json: "{}".into(),
                ..Default::default()
            },
            TraceContext::default(),
        )
    }

    async fn next(s: &mut EventStream) -> Delivered {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .expect("no error")
    }

    #[tokio::test]
    async fn publish_dedups_and_numbers_events() {
        let bus = MemoryBus::new(Retention::default());
        let acks = bus
            .publish(vec![event("1", "a"), event("1", "b"), event("1", "a")])
            .await
            .unwrap();
        assert_eq!(
            acks[0],
            PublishAck {
                seq: 1,
                duplicate: false
            }
        );
        assert_eq!(
            acks[1],
            PublishAck {
                seq: 2,
                duplicate: false
            }
        );
        assert_eq!(
            acks[2],
            PublishAck {
                seq: 1,
                duplicate: true
            }
        );
    }

    #[tokio::test]
    async fn subscribe_filters_by_account_and_resumes_after_seq() {
        let bus = MemoryBus::new(Retention::default());
        bus.publish(vec![event("1", "a"), event("2", "b"), event("1", "c")])
            .await
            .unwrap();
        let mut live = bus
            .subscribe(Interest::accounts(["1"]), StartAt::New)
            .await
            .unwrap();
        let mut resumed = bus
            .subscribe(Interest::accounts(["1"]), StartAt::After(1))
            .await
            .unwrap();
        bus.publish(vec![event("2", "d"), event("1", "e")])
            .await
            .unwrap();
        assert_eq!(next(&mut live).await.seq, 5);
        assert_eq!(next(&mut resumed).await.seq, 3);
        assert_eq!(next(&mut resumed).await.seq, 5);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_catches_up_from_the_ring() {
        let bus = MemoryBus::new(Retention::default());
        let mut sub = bus.subscribe(Interest::All, StartAt::New).await.unwrap();
        let batch: Vec<_> = (0..LIVE_CHANNEL + 100)
            .map(|i| event("1", &i.to_string()))
            .collect();
        bus.publish(batch).await.unwrap();
        for want in 1..=(LIVE_CHANNEL as u64 + 100) {
            assert_eq!(next(&mut sub).await.seq, want);
        }
    }

    #[tokio::test]
    async fn max_events_zero_keeps_every_event_as_on_nats() {
        let bus = MemoryBus::new(Retention {
            max_events: 0,
            ..Retention::default()
        });
        bus.publish(vec![event("1", "a"), event("1", "b"), event("1", "c")])
            .await
            .unwrap();
        let replay = bus.replay(Interest::All, 0).await.unwrap();
        assert!(replay.complete, "nothing was evicted");
        let seqs: Vec<u64> = replay.events.map(|d| d.unwrap().seq).collect().await;
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn replay_reports_incomplete_once_events_aged_out() {
        let bus = MemoryBus::new(Retention {
            max_events: 2,
            ..Retention::default()
        });
        bus.publish(vec![event("1", "a"), event("1", "b"), event("1", "c")])
            .await
            .unwrap();
        let replay = bus.replay(Interest::All, 0).await.unwrap();
        assert!(!replay.complete);
        let replay = bus.replay(Interest::All, 1).await.unwrap();
        assert!(replay.complete);
        assert_eq!(replay.until_seq, 3);
        let seqs: Vec<u64> = replay.events.map(|d| d.unwrap().seq).collect().await;
        assert_eq!(seqs, vec![2, 3]);
        assert!(
            !bus.replay(Interest::All, 9).await.unwrap().complete,
            "a since beyond the end is not trusted"
        );
    }
}
