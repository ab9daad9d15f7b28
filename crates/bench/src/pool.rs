//! The coordinator's side of the worker processes: start them, add up their progress, finish
//! them and merge their results.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};

use crate::hist;
use crate::worker::{Command, Completeness, Counters, Finish, WorkerMsg, WorkerResult, WorkerSpec};

/// What the workers reported last, shared with the monitor.
#[derive(Debug, Default)]
pub struct PoolState {
    latest: Mutex<Vec<Counters>>,
    results: Mutex<Vec<Option<WorkerResult>>>,
    /// Sum of the workers' `delivered`, for the publisher's window.
    pub delivered: Arc<AtomicU64>,
    pub pids: Mutex<Vec<u32>>,
}

impl PoolState {
    /// The workers' counters added up.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for c in self.latest.lock().iter() {
            total.add(c);
        }
        total
    }
}

/// The merged results of every worker.
#[derive(Debug)]
pub struct Merged {
    pub counters: Counters,
    pub completeness: Completeness,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub recovery: Histogram<u64>,
    pub first_disconnect_us: u64,
    pub last_resumed_us: u64,
    /// Workers that sent no result in time.
    pub missing_workers: usize,
}

#[derive(Debug)]
struct WorkerProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The worker processes of a run.
#[derive(Debug)]
pub struct Pool {
    workers: Vec<WorkerProc>,
    pub state: Arc<PoolState>,
}

impl Pool {
    /// Starts one worker per spec (this same binary, hidden `worker` subcommand).
    pub async fn spawn(specs: Vec<WorkerSpec>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("the bench's own executable")?;
        let state = Arc::new(PoolState {
            latest: Mutex::new(vec![Counters::default(); specs.len()]),
            results: Mutex::new(vec![None; specs.len()]),
            ..PoolState::default()
        });
        let mut workers = Vec::new();
        for (k, spec) in specs.into_iter().enumerate() {
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker process")?;
            if let Some(pid) = child.id() {
                state.pids.lock().push(pid);
            }
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let line = serde_json::to_string(&spec)? + "\n";
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let state2 = state.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<WorkerMsg>(&line) {
                        Ok(WorkerMsg::Progress(c)) => {
                            let sum = {
                                let mut latest = state2.latest.lock();
                                latest[k] = c;
                                latest.iter().map(|c| c.delivered).sum::<u64>()
                            };
                            state2.delivered.store(sum, Ordering::Relaxed);
                        }
                        Ok(WorkerMsg::Result(r)) => {
                            state2.latest.lock()[k] = r.counters;
                            state2.results.lock()[k] = Some(*r);
                        }
                        Err(e) => eprintln!("worker {k}: unreadable line ({e}): {line}"),
                    }
                }
            });
            workers.push(WorkerProc {
                child,
                stdin: Some(stdin),
            });
        }
        Ok(Pool { workers, state })
    }

    pub fn counters(&self) -> Counters {
        self.state.counters()
    }

    /// Waits until `n` clients subscribed or failed, or until `timeout`.
    pub async fn wait_subscribed(&self, n: u64, timeout: Duration) -> Counters {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.counters();
            if c.subscribed + c.failed >= n || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells every worker to stop and check its clients against `finish`; merges the results.
    pub async fn finish(&mut self, finish: &Finish, timeout: Duration) -> Merged {
        let line =
            serde_json::to_string(&Command::Finish(finish.clone())).unwrap_or_default() + "\n";
        for w in &mut self.workers {
            if let Some(stdin) = w.stdin.as_mut() {
                let _ = stdin.write_all(line.as_bytes()).await;
                let _ = stdin.flush().await;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for w in &mut self.workers {
            let _ = tokio::time::timeout_at(deadline, w.child.wait()).await;
            let _ = w.child.start_kill();
            w.stdin = None;
        }
        // The readers may still be passing on the last line.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let results = self.state.results.lock().clone();
        let mut m = Merged {
            counters: Counters::default(),
            completeness: Completeness::default(),
            latency: hist::new_hist(),
            connect: hist::new_hist(),
            recovery: hist::new_hist(),
            first_disconnect_us: 0,
            last_resumed_us: 0,
            missing_workers: 0,
        };
        for r in &results {
            let Some(r) = r else {
                m.missing_workers += 1;
                continue;
            };
            m.counters.add(&r.counters);
            m.completeness.add(&r.completeness);
            hist::add_buckets(&mut m.latency, &r.latency);
            hist::add_buckets(&mut m.connect, &r.connect);
            hist::add_buckets(&mut m.recovery, &r.recovery);
            if r.first_disconnect_us != 0
                && (m.first_disconnect_us == 0 || r.first_disconnect_us < m.first_disconnect_us)
            {
                m.first_disconnect_us = r.first_disconnect_us;
            }
            m.last_resumed_us = m.last_resumed_us.max(r.last_resumed_us);
        }
        m
    }
}
