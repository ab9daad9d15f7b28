//! Once a second while a run goes on: a progress line on stderr and a sample for the JSON
//! (clients, events sent, deliveries, CPU and memory of every process).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pool::PoolState;
use crate::procfs::{self, ProcStat};
use crate::publisher::Publisher;

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: String,
    pub connected: i64,
    pub ready: i64,
    pub sent: u64,
    pub sent_per_s: f64,
    pub delivered: u64,
    pub delivered_per_s: f64,
    /// Every gateway (or the single process) together.
    pub gateway_cpu_cores: f64,
    pub gateway_rss_mb: f64,
    /// Per process: (CPU cores over the last second, RSS MiB).
    pub processes: BTreeMap<String, (f64, f64)>,
    /// Busy cores of the whole machine (every process, other work included).
    pub machine_busy_cores: f64,
}

/// CPU and memory of the processes of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Per role: pid and reading.
    pub procs: BTreeMap<String, (u32, ProcStat)>,
    pub machine_busy_s: f64,
    pub machine_total_s: f64,
}

/// CPU and memory of one process over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcUsage {
    pub cpu_cores: f64,
    pub cpu_s: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    pub threads: u64,
}

impl Usage {
    /// CPU cores each role used between `self` (earlier) and `later`, over `secs`. A role whose
    /// process was replaced counts from the new process's start.
    pub fn between(&self, later: &Usage, secs: f64) -> BTreeMap<String, ProcUsage> {
        let mut out = BTreeMap::new();
        for (role, (pid, end)) in &later.procs {
            let start = match self.procs.get(role) {
                Some((p, s)) if p == pid => s.cpu_s,
                _ => 0.0,
            };
            let cpu_s = (end.cpu_s - start).max(0.0);
            out.insert(
                role.clone(),
                ProcUsage {
                    cpu_cores: cpu_s / secs.max(1e-9),
                    cpu_s,
                    rss_mb: end.rss_kb as f64 / 1024.0,
                    peak_rss_mb: end.hwm_kb as f64 / 1024.0,
                    threads: end.threads,
                },
            );
        }
        out
    }

    /// Busy cores of the whole machine between `self` and `later`.
    pub fn machine_cores(&self, later: &Usage) -> f64 {
        let total = later.machine_total_s - self.machine_total_s;
        let busy = later.machine_busy_s - self.machine_busy_s;
        if total <= 0.0 {
            0.0
        } else {
            busy / total * procfs::nproc() as f64
        }
    }
}

/// Cores used by the processes in `cpu` together. A thread reported apart (`bench/<name>`) is
/// already in its process's figure and is not counted again.
pub fn process_cores(cpu: &BTreeMap<String, ProcUsage>) -> f64 {
    cpu.iter()
        .filter(|(role, _)| !role.contains('/'))
        .map(|(_, u)| u.cpu_cores)
        .sum()
}

/// The progress monitor of a run.
#[derive(Debug)]
pub struct Monitor {
    t0: Instant,
    pub phase: Mutex<String>,
    /// (role, pid) of the system's processes; updated when a gateway is restarted.
    pub tracked: Mutex<Vec<(String, u32)>>,
    /// (role, tid) of threads of the bench itself whose CPU is reported apart, as
    /// `bench/<name>`; the bench's own figure includes them.
    pub threads: Mutex<Vec<(String, u32)>>,
    pub pool: Mutex<Option<Arc<PoolState>>>,
    pub publisher: Mutex<Option<Arc<Publisher>>>,
    pub samples: Mutex<Vec<Sample>>,
    pub clients: Mutex<u64>,
}

impl Monitor {
    pub fn new(t0: Instant) -> Arc<Self> {
        Arc::new(Monitor {
            t0,
            phase: Mutex::new("start".into()),
            tracked: Mutex::default(),
            threads: Mutex::default(),
            pool: Mutex::default(),
            publisher: Mutex::default(),
            samples: Mutex::default(),
            clients: Mutex::new(0),
        })
    }

    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock() = phase.to_owned();
    }

    /// A reading of every tracked process (workers and the bench itself included).
    pub fn usage(&self) -> Usage {
        let mut procs = BTreeMap::new();
        for (role, pid) in self.tracked.lock().iter() {
            if let Some(s) = procfs::read(*pid) {
                procs.insert(role.clone(), (*pid, s));
            }
        }
        if let Some(pool) = self.pool.lock().as_ref() {
            let pids = pool.pids.lock().clone();
            for (k, pid) in pids.iter().enumerate() {
                if let Some(s) = procfs::read(*pid) {
                    procs.insert(format!("worker-{k}"), (*pid, s));
                }
            }
        }
        let me = std::process::id();
        if let Some(s) = procfs::read(me) {
            procs.insert("bench".into(), (me, s));
        }
        for (name, tid) in self.threads.lock().iter() {
            if let Some(s) = procfs::read_thread(*tid) {
                procs.insert(format!("bench/{name}"), (*tid, s));
            }
        }
        let (busy, total) = procfs::machine_cpu();
        Usage {
            procs,
            machine_busy_s: busy,
            machine_total_s: total,
        }
    }

    /// Samples every second and prints a progress line, until `stop`.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut prev = me.usage();
            let mut prev_t = Instant::now();
            let (mut prev_sent, mut prev_delivered) = (0u64, 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let now = Instant::now();
                let secs = now.duration_since(prev_t).as_secs_f64();
                let usage = me.usage();
                let per = prev.between(&usage, secs);
                let machine = prev.machine_cores(&usage);
                let counters = me
                    .pool
                    .lock()
                    .as_ref()
                    .map(|p| p.counters())
                    .unwrap_or_default();
                let sent = me
                    .publisher
                    .lock()
                    .as_ref()
                    .map_or(0, |p| p.ok.load(Ordering::Relaxed));
                let gateways: Vec<&ProcUsage> = per
                    .iter()
                    .filter(|(r, _)| r.starts_with("gateway") || *r == "instantchat")
                    .map(|(_, u)| u)
                    .collect();
                let sample = Sample {
                    t_s: now.duration_since(me.t0).as_secs_f64(),
                    phase: me.phase.lock().clone(),
                    connected: counters.connected,
                    ready: counters.ready,
                    sent,
                    sent_per_s: sent.saturating_sub(prev_sent) as f64 / secs,
                    delivered: counters.delivered,
                    delivered_per_s: counters.delivered.saturating_sub(prev_delivered) as f64
                        / secs,
                    gateway_cpu_cores: gateways.iter().map(|u| u.cpu_cores).sum(),
                    gateway_rss_mb: gateways.iter().map(|u| u.rss_mb).sum(),
                    processes: per
                        .iter()
                        .map(|(r, u)| (r.clone(), (round2(u.cpu_cores), round2(u.rss_mb))))
                        .collect(),
                    machine_busy_cores: machine,
                };
                let clients = *me.clients.lock();
                let workers: f64 = per
                    .iter()
                    .filter(|(r, _)| r.starts_with("worker"))
                    .map(|(_, u)| u.cpu_cores)
                    .sum();
                let other = |role: &str| per.get(role).map_or(0.0, |u| u.cpu_cores);
                eprintln!(
                    "[{:6.1}s] {:<9} ready {}/{} conn {} | sent {} ({:.0}/s) | recv {} ({:.0}/s) | cpu gw {:.2} ingest {:.2} nats {:.2} clients {:.2} machine {:.2} | gw rss {:.0} MiB",
                    sample.t_s,
                    sample.phase,
                    sample.ready,
                    clients,
                    sample.connected,
                    sample.sent,
                    sample.sent_per_s,
                    sample.delivered,
                    sample.delivered_per_s,
                    sample.gateway_cpu_cores,
                    other("ingest"),
                    other("nats-server"),
                    workers,
                    machine,
                    sample.gateway_rss_mb,
                );
                me.samples.lock().push(sample);
                prev = usage;
                prev_t = now;
                prev_sent = sent;
                prev_delivered = counters.delivered;
            }
        })
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
