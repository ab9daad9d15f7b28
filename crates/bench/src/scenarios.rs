//! The scenarios: each starts the system, connects its clients, drives events, measures, checks
//! every delivery, stops everything it started and reports (stdout table, `--out` JSON).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hist::{self, Summary};
use crate::mix::Mix;
use crate::monitor::{Monitor, ProcUsage, round2};
use crate::pool::{Merged, Pool};
use crate::procfs::{self, Machine};
use crate::publisher::Publisher;
use crate::system::{JWT_SECRET, System, SystemConfig};
use crate::worker::{Finish, Placement, WorkerSpec, now_us};
use crate::{
    ChurnArgs, Common, FanoutArgs, IdleArgs, LatencyArgs, ScaleOutArgs, StormArgs, StormMode,
};

/// A target of the brief and how the run compares.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// How events are paced.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// As fast as delivery keeps up: at most `window` events outstanding per client.
    Window { window: u64, senders: usize },
    /// A fixed rate.
    Rate { rate: f64, concurrency: usize },
}

/// What a measurement window showed.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    /// Length of the window the rates are over (sending, less a warm-up).
    secs: f64,
    warmup_secs: f64,
    deliveries_per_s: f64,
    events_per_s: f64,
    /// Busy cores of the whole machine in the window.
    machine_busy_cores: f64,
    /// Busy cores not used by the processes of the run (other work on the machine).
    other_cores: f64,
    cpu: BTreeMap<String, ProcUsage>,
    drained: bool,
    drain_secs: f64,
}

/// One run of a scenario.
struct Run {
    scenario: &'static str,
    common: Common,
    t0: Instant,
    deadline: Instant,
    run_id: String,
    machine: Machine,
    started_at: String,
    load_start: String,
    monitor: Arc<Monitor>,
    monitor_stop: CancellationToken,
    system: System,
    pool: Option<Pool>,
    rows: Vec<(String, String)>,
    targets: Vec<Target>,
}

pub(crate) fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.first_mut() {
        *first = "instantchat-bench".into();
    }
    args.join(" ")
}

impl Run {
    async fn start(
        scenario: &'static str,
        common: &Common,
        gateways: usize,
        single: bool,
    ) -> anyhow::Result<Run> {
        let quiet = wait_quiet(common.wait_quiet).await;
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(common.max_seconds);
        let machine = Machine::probe(&common.nats_server);
        let mut gateway_env: Vec<(String, String)> = [
            ("IP_CONNECT_RATE", "1000000".to_owned()),
            ("IP_CONNECT_BURST", "1000000".to_owned()),
            ("MAX_CONNECTIONS_PER_USER", "1000".to_owned()),
            (
                "CLIENT_BUFFER_PACKETS",
                common.client_buffer_packets.to_string(),
            ),
            ("HEARTBEAT_TIMEOUT_SECS", "0".to_owned()),
            ("AUTH_TIMEOUT_SECS", "60".to_owned()),
            ("SHUTDOWN_TIMEOUT_SECS", "5".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        gateway_env.extend(common.gateway_env.iter().cloned());
        let what = if single {
            "instantchat serve (single process)".to_owned()
        } else {
            format!("nats-server + ingest + {gateways} gateway(s)")
        };
        eprintln!("instantchat-bench {scenario}: starting {what}");
        let system = System::start(SystemConfig {
            bin_dir: common.bin_dir.clone(),
            nats_server: common.nats_server.clone(),
            gateways,
            single,
            gateway_env,
            ingest_env: Vec::new(),
        })
        .await?;
        eprintln!(
            "instantchat-bench {scenario}: ready in {:.1}s (logs in {})",
            t0.elapsed().as_secs_f64(),
            system.log_dir().display()
        );
        let monitor = Monitor::new(t0);
        *monitor.tracked.lock() = system.tracked();
        let monitor_stop = CancellationToken::new();
        monitor.spawn(monitor_stop.clone());
        Ok(Run {
            scenario,
            common: common.clone(),
            t0,
            deadline,
            run_id: format!("b{}", now_us()),
            machine,
            started_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            load_start: procfs::loadavg(),
            monitor,
            monitor_stop,
            system,
            pool: None,
            rows: vec![("machine before start".to_owned(), quiet)],
            targets: Vec::new(),
        })
    }

    fn track(&self) {
        *self.monitor.tracked.lock() = self.system.tracked();
    }

    /// Time left before the run's hard bound.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn row(&mut self, name: &str, value: impl Into<String>) {
        self.rows.push((name.to_owned(), value.into()));
    }

    fn target(&mut self, what: &str, target: &str, measured: String, met: bool) {
        self.targets.push(Target {
            what: what.to_owned(),
            target: target.to_owned(),
            measured,
            met,
        });
    }

    /// Starts the workers, connects and subscribes every client; waits until all are
    /// subscribed (or failed) or the time runs out.
    async fn connect(
        &mut self,
        clients: usize,
        mix: &Mix,
        placement: Placement,
        failover: bool,
        reconnect: bool,
    ) -> anyhow::Result<Value> {
        let clients = clients.max(1);
        let workers = clients.div_ceil(self.common.per_worker.max(1)).max(1);
        let ports = self.system.gateway_ports();
        let specs: Vec<WorkerSpec> = (0..workers)
            .map(|w| {
                let first = w * clients / workers;
                let last = (w + 1) * clients / workers;
                WorkerSpec {
                    worker: w,
                    first_client: first,
                    count: last - first,
                    gateways: ports.clone(),
                    placement,
                    failover,
                    reconnect,
                    jwt_secret: JWT_SECRET.to_owned(),
                    mix: mix.clone(),
                    connect_concurrency: self.common.connect_concurrency,
                    connect_attempts: 3,
                    source_ips: !self.common.no_source_ips,
                    read_buffer: self.common.read_buffer,
                    deadline_secs: self.left().as_secs() + 30,
                }
            })
            .collect();
        self.monitor.set_phase("connect");
        *self.monitor.clients.lock() = clients as u64;
        let started = Instant::now();
        let pool = Pool::spawn(specs).await?;
        *self.monitor.pool.lock() = Some(pool.state.clone());
        let budget = self.left().saturating_sub(Duration::from_secs(30));
        let c = pool.wait_subscribed(clients as u64, budget).await;
        let secs = started.elapsed().as_secs_f64();
        self.pool = Some(pool);
        if c.subscribed == 0 {
            bail!(
                "no client could connect and subscribe ({} failed); see the logs in {}",
                c.failed,
                self.system.log_dir().display()
            );
        }
        // Let the gateways' bus subscriptions follow the new interest.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.row(
            "clients subscribed",
            format!(
                "{} of {} ({} failed) in {:.1} s ({:.0}/s), {} worker process(es)",
                c.subscribed,
                clients,
                c.failed,
                secs,
                c.subscribed as f64 / secs.max(1e-9),
                workers
            ),
        );
        Ok(json!({
            "clients": clients,
            "subscribed": c.subscribed,
            "failed": c.failed,
            "workers": workers,
            "seconds": round2(secs),
            "per_s": round2(c.subscribed as f64 / secs.max(1e-9)),
        }))
    }

    fn delivered(&self) -> u64 {
        self.pool
            .as_ref()
            .map_or(0, |p| p.state.delivered.load(Ordering::Relaxed))
    }

    fn publisher(&self, mix: &Mix, clients: usize) -> anyhow::Result<Arc<Publisher>> {
        let p = Publisher::new(&self.system.ingest_url, &self.run_id, mix.clone(), clients)?;
        *self.monitor.publisher.lock() = Some(p.clone());
        Ok(p)
    }

    /// Sends for `duration` (bounded by the time left), measures rates and CPU over the window
    /// after a short warm-up, then waits for the deliveries owed.
    async fn measure(
        &mut self,
        p: &Arc<Publisher>,
        pacing: Pacing,
        duration: u64,
        max_events: u64,
    ) -> Measured {
        let delivered = self
            .pool
            .as_ref()
            .map(|pool| pool.state.delivered.clone())
            .unwrap_or_default();
        let duration = Duration::from_secs(duration)
            .min(self.left().saturating_sub(Duration::from_secs(30)))
            .max(Duration::from_secs(1));
        self.monitor.set_phase("measure");
        let until = Instant::now() + duration;
        let stop = CancellationToken::new();
        let task = {
            let (p, stop, delivered) = (p.clone(), stop.clone(), delivered.clone());
            tokio::spawn(async move {
                match pacing {
                    Pacing::Window { window, senders } => {
                        p.run_window(senders, window, delivered, until, max_events, stop)
                            .await
                    }
                    Pacing::Rate { rate, concurrency } => {
                        p.run_rate(rate, concurrency, until, max_events, stop).await
                    }
                }
            })
        };
        let warmup = (duration / 5).min(Duration::from_secs(2));
        tokio::time::sleep(warmup).await;
        let (u0, d0, s0, t0) = (
            self.monitor.usage(),
            delivered.load(Ordering::Relaxed),
            p.ok.load(Ordering::Relaxed),
            Instant::now(),
        );
        let _ = task.await;
        let (u1, d1, s1, t1) = (
            self.monitor.usage(),
            delivered.load(Ordering::Relaxed),
            p.ok.load(Ordering::Relaxed),
            Instant::now(),
        );
        let secs = t1.duration_since(t0).as_secs_f64().max(1e-9);
        self.monitor.set_phase("drain");
        let (drained, drain_secs) = self.drain(p).await;
        Measured {
            secs: round2(secs),
            warmup_secs: warmup.as_secs_f64(),
            deliveries_per_s: round2(d1.saturating_sub(d0) as f64 / secs),
            events_per_s: round2(s1.saturating_sub(s0) as f64 / secs),
            machine_busy_cores: round2(u0.machine_cores(&u1)),
            other_cores: round2(
                (u0.machine_cores(&u1)
                    - u0.between(&u1, secs)
                        .values()
                        .map(|u| u.cpu_cores)
                        .sum::<f64>())
                .max(0.0),
            ),
            cpu: u0.between(&u1, secs),
            drained,
            drain_secs: round2(drain_secs),
        }
    }

    /// Waits until the clients got every delivery owed for the events answered 200 (at most
    /// 20 s, or what is left).
    async fn drain(&self, p: &Publisher) -> (bool, f64) {
        let started = Instant::now();
        let limit = Duration::from_secs(20).min(self.left().saturating_sub(Duration::from_secs(8)));
        loop {
            if self.delivered() >= p.ok_deliveries.load(Ordering::Relaxed) {
                return (true, started.elapsed().as_secs_f64());
            }
            if started.elapsed() >= limit {
                return (false, started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the workers; each checks its clients against `finish`.
    async fn finish(&mut self, finish: &Finish) -> anyhow::Result<Merged> {
        self.monitor.set_phase("check");
        let Some(pool) = self.pool.as_mut() else {
            bail!("no clients");
        };
        let m = pool.finish(finish, Duration::from_secs(60)).await;
        if m.missing_workers > 0 {
            eprintln!(
                "instantchat-bench: {} worker(s) sent no result",
                m.missing_workers
            );
        }
        Ok(m)
    }

    async fn scrape_all(&self) -> Vec<BTreeMap<String, f64>> {
        let mut out = Vec::new();
        for k in 0..self.system.gateways.len() {
            out.push(self.system.scrape(k).await.unwrap_or_default());
        }
        out
    }

    /// Completeness rows and target.
    fn completeness(&mut self, m: &Merged) -> Value {
        let c = &m.completeness;
        let pct = if c.expected == 0 {
            100.0
        } else {
            c.received as f64 * 100.0 / c.expected as f64
        };
        self.row(
            "completeness",
            format!(
                "{} of {} (client, event) pairs ({:.4} %); {} missing, {} duplicates, {} unexpected; {} of {} clients complete",
                int(c.received),
                int(c.expected),
                pct,
                c.missing,
                c.duplicates,
                c.unexpected,
                c.complete_clients,
                c.clients
            ),
        );
        let exact = c.missing == 0 && c.duplicates == 0 && c.unexpected == 0 && c.clients > 0;
        self.target(
            "every expected (client, event) delivered exactly once",
            "100 %",
            format!(
                "{pct:.4} % ({} missing, {} duplicates)",
                c.missing, c.duplicates
            ),
            exact,
        );
        json!({ "completeness": c, "delivered_pct": pct, "exactly_once": exact })
    }

    fn latency_row(&mut self, name: &str, s: &Summary) {
        self.row(
            name,
            format!("{} ({} samples)", s.percentiles(), int(s.count)),
        );
    }

    fn cpu_row(&mut self, m: &Measured) {
        let mut parts: Vec<String> = Vec::new();
        let mut workers = 0.0;
        let ours = crate::monitor::process_cores(&m.cpu);
        for (role, u) in &m.cpu {
            if role.starts_with("worker") {
                workers += u.cpu_cores;
            } else {
                parts.push(format!("{role} {:.2}", u.cpu_cores));
            }
        }
        parts.push(format!("client workers {workers:.2}"));
        parts.push(format!(
            "whole machine {:.2} (other work {:.2})",
            m.machine_busy_cores,
            (m.machine_busy_cores - ours).max(0.0)
        ));
        self.row("CPU cores (measure window)", parts.join(", "));
    }

    /// Stops the system, writes the JSON and prints the summary.
    async fn end(mut self, config: Value, result: Value) -> anyhow::Result<()> {
        self.monitor_stop.cancel();
        self.monitor.set_phase("stop");
        drop(self.pool.take());
        self.system.stop().await;
        let log_dir = if self.common.keep_logs {
            self.system.keep_logs()
        } else {
            None
        };
        let samples = self.monitor.samples.lock().clone();
        let report = json!({
            "scenario": self.scenario,
            "command": command_line(),
            "started_at": self.started_at,
            "run_id": self.run_id,
            "wall_secs": round2(self.t0.elapsed().as_secs_f64()),
            "machine": self.machine,
            "load_avg_start": self.load_start,
            "load_avg_end": procfs::loadavg(),
            "config": config,
            "result": result,
            "targets": self.targets,
            "summary": self.rows,
            "samples": samples,
            "log_dir": log_dir,
        });
        println!();
        println!("== instantchat-bench {} ==", self.scenario);
        println!("{}", command_line());
        println!(
            "machine: {} cores, {} GiB, Linux {}, {}; load avg {} -> {}",
            self.machine.nproc,
            self.machine.mem_total_gib,
            self.machine.kernel,
            self.machine.nats_server,
            self.load_start,
            procfs::loadavg()
        );
        print_rows(&self.rows);
        if !self.targets.is_empty() {
            println!("targets:");
            for t in &self.targets {
                println!(
                    "  [{}] {} {}: {}",
                    if t.met { "met" } else { "NOT MET" },
                    t.what,
                    t.target,
                    t.measured
                );
            }
        }
        if let Some(out) = &self.common.out {
            write_report(out, &report)?;
        }
        if let Some(dir) = log_dir {
            println!("logs: {}", dir.display());
        }
        Ok(())
    }
}

/// Waits (up to `max_secs`) until the machine's busy cores stay under 0.3 for 3 s in a row;
/// says what it saw.
pub(crate) async fn wait_quiet(max_secs: u64) -> String {
    let started = Instant::now();
    let mut quiet_for = 0;
    let mut prev = procfs::machine_cpu();
    let mut last = 0.0;
    loop {
        if max_secs == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else if quiet_for >= 3 || started.elapsed() >= Duration::from_secs(max_secs) {
            break;
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let now = procfs::machine_cpu();
        let total = now.1 - prev.1;
        last = if total > 0.0 {
            (now.0 - prev.0) / total * procfs::nproc() as f64
        } else {
            0.0
        };
        prev = now;
        if max_secs == 0 {
            break;
        }
        if last < 0.3 {
            quiet_for += 1;
        } else {
            quiet_for = 0;
        }
    }
    let msg = format!(
        "{last:.2} busy cores (waited {:.0} s for quiet: {})",
        started.elapsed().as_secs_f64(),
        if max_secs == 0 {
            "not asked"
        } else if quiet_for >= 3 {
            "quiet"
        } else {
            "never quiet"
        }
    );
    eprintln!("instantchat-bench: machine before start: {msg}");
    msg
}

/// The summary table's rows, names aligned.
pub(crate) fn print_rows<K: AsRef<str>>(rows: &[(K, String)]) {
    let width = rows
        .iter()
        .map(|(k, _)| k.as_ref().len())
        .max()
        .unwrap_or(10);
    for (k, v) in rows {
        println!("  {:<width$}  {v}", k.as_ref());
    }
}

/// Writes a run's JSON to `out` (creating its directory) and says where.
pub(crate) fn write_report(out: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)? + "\n")?;
    println!("results: {}", out.display());
    Ok(())
}

/// `1234567` as `1,234,567`.
pub fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, ch) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn gateway_usage(cpu: &BTreeMap<String, ProcUsage>) -> (f64, f64) {
    cpu.iter()
        .filter(|(r, _)| r.starts_with("gateway") || *r == "instantchat")
        .fold((0.0, 0.0), |(c, m), (_, u)| (c + u.cpu_cores, m + u.rss_mb))
}

/// `fanout`: every client on one account and type, as fast as delivery keeps up.
pub async fn fanout(a: FanoutArgs) -> anyhow::Result<()> {
    let mix = a.mix.mix(1);
    let mut run = Run::start("fanout", &a.common, 1, a.single).await?;
    let connect = run
        .connect(a.clients, &mix, Placement::RoundRobin, false, false)
        .await?;
    let p = run.publisher(&mix, a.clients)?;
    let window = a.window.saturating_mul(a.clients as u64);
    let m = run
        .measure(
            &p,
            Pacing::Window {
                window,
                senders: a.senders,
            },
            a.duration,
            a.max_events,
        )
        .await;
    let metrics = run.scrape_all().await;
    let merged = run.finish(&p.finish()).await?;
    let latency = hist::summarize(&merged.latency);
    let post = hist::summarize(&p.post_latency());
    let (gw_cpu, gw_rss) = gateway_usage(&m.cpu);
    run.row(
        "deliveries/s",
        format!(
            "{} ({} events/s x {} clients) over {:.1} s",
            int(m.deliveries_per_s as u64),
            m.events_per_s,
            a.clients,
            m.secs
        ),
    );
    run.row(
        "events sent",
        format!("{} ({} failed)", int(p.sent()), p.failed()),
    );
    run.latency_row("latency under saturation", &latency);
    run.latency_row("webhook POST -> 200", &post);
    run.cpu_row(&m);
    let per_core = m.deliveries_per_s / gw_cpu.max(1e-9);
    run.row(
        "gateway",
        format!(
            "{gw_cpu:.2} cores, {gw_rss:.0} MiB resident; {} deliveries per gateway CPU-second",
            int(per_core as u64)
        ),
    );
    let complete = run.completeness(&merged);
    if !a.single {
        run.target(
            "deliveries/s on one gateway",
            ">= 200,000",
            int(m.deliveries_per_s as u64),
            m.deliveries_per_s >= 200_000.0,
        );
    }
    let result = json!({
        "connect": connect,
        "single": a.single,
        "clients": a.clients,
        "deliveries_per_s": m.deliveries_per_s,
        "deliveries_per_gateway_cpu_s": per_core.round(),
        "gateway_cpu_cores": round2(gw_cpu),
        "events_per_s": m.events_per_s,
        "events_sent": p.sent(),
        "events_failed": p.failed(),
        "measure": m,
        "latency": latency,
        "post_latency": post,
        "delivery": complete,
        "counters": merged.counters,
        "connect_latency": hist::summarize(&merged.connect),
        "gateway_metrics": metrics,
    });
    run.end(json!(a), result).await
}

/// `latency`: a fixed event rate; end-to-end latency percentiles.
pub async fn latency(a: LatencyArgs) -> anyhow::Result<()> {
    let mix = a.mix.mix(1);
    let mut run = Run::start("latency", &a.common, 1, a.single).await?;
    let connect = run
        .connect(a.clients, &mix, Placement::RoundRobin, false, false)
        .await?;
    let p = run.publisher(&mix, a.clients)?;
    let m = run
        .measure(
            &p,
            Pacing::Rate {
                rate: a.rate,
                concurrency: a.concurrency,
            },
            a.duration,
            a.max_events,
        )
        .await;
    let metrics = run.scrape_all().await;
    let merged = run.finish(&p.finish()).await?;
    let latency = hist::summarize(&merged.latency);
    let post = hist::summarize(&p.post_latency());
    let per_event = mix.receivers(a.clients).iter().sum::<u64>() as f64 / mix.groups() as f64;
    run.row(
        "load",
        format!(
            "{} events/s to {} clients over {} account(s): {} deliveries/s offered, {} measured",
            a.rate,
            a.clients,
            mix.accounts.len(),
            int((a.rate * per_event) as u64),
            int(m.deliveries_per_s as u64)
        ),
    );
    run.latency_row("end-to-end latency", &latency);
    run.latency_row("webhook POST -> 200", &post);
    run.row(
        "sender lag",
        format!(
            "at worst {:.1} ms behind schedule",
            p.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0
        ),
    );
    run.cpu_row(&m);
    let complete = run.completeness(&merged);
    let limit = if a.clients <= 1000 { 20.0 } else { 100.0 };
    run.target(
        &format!("p99 latency at {} clients", a.clients),
        &format!("< {limit} ms"),
        format!("{:.2} ms", latency.p99_ms),
        latency.p99_ms < limit,
    );
    let result = json!({
        "connect": connect,
        "single": a.single,
        "clients": a.clients,
        "rate": a.rate,
        "accounts": mix.accounts.len(),
        "offered_deliveries_per_s": a.rate * per_event,
        "deliveries_per_s": m.deliveries_per_s,
        "events_per_s": m.events_per_s,
        "events_sent": p.sent(),
        "events_failed": p.failed(),
        "sender_max_lag_ms": p.max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0,
        "measure": m,
        "latency": latency,
        "post_latency": post,
        "delivery": complete,
        "counters": merged.counters,
        "connect_latency": hist::summarize(&merged.connect),
        "gateway_metrics": metrics,
    });
    run.end(json!(a), result).await
}

/// `churn`: `latency`'s steady clients while others join with accounts of their own and leave.
pub async fn churn(a: ChurnArgs) -> anyhow::Result<()> {
    let mix = a.mix.mix(a.clients.div_ceil(2).max(1));
    let mut run = Run::start("churn", &a.common, 1, false).await?;
    let connect = run
        .connect(a.clients, &mix, Placement::RoundRobin, false, false)
        .await?;
    let p = run.publisher(&mix, a.clients)?;
    let urls: Vec<String> = run
        .system
        .gateway_ports()
        .iter()
        .map(|port| format!("http://127.0.0.1:{port}"))
        .collect();
    let stop = CancellationToken::new();
    let max = (a.churn_rate * (a.duration as f64 + 5.0)).ceil() as u64;
    let lifetime = Duration::from_secs_f64(a.churn_lifetime.max(0.0));
    let (churning, churn) = crate::churn::spawn(urls, a.churn_rate, lifetime, max, stop.clone());
    let m = run
        .measure(
            &p,
            Pacing::Rate {
                rate: a.rate,
                concurrency: a.concurrency,
            },
            a.duration,
            a.max_events,
        )
        .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), churning).await;
    let metrics = run.scrape_all().await;
    let merged = run.finish(&p.finish()).await?;
    let latency = hist::summarize(&merged.latency);
    let join = hist::summarize(&churn.join_hist());
    let (joined, left, failed) = (
        churn.joined.load(Ordering::Relaxed),
        churn.left.load(Ordering::Relaxed),
        churn.failed.load(Ordering::Relaxed),
    );
    run.row(
        "load",
        format!(
            "{} events/s to {} steady clients over {} accounts; {} clients/s joining with new accounts, staying {} s",
            a.rate,
            a.clients,
            mix.accounts.len(),
            a.churn_rate,
            a.churn_lifetime
        ),
    );
    run.row(
        "churn",
        format!("{joined} joined, {left} left, {failed} failed"),
    );
    run.latency_row("steady clients' latency", &latency);
    run.latency_row("a joining client's connect to subscribed", &join);
    run.cpu_row(&m);
    let complete = run.completeness(&merged);
    run.target(
        "steady clients' p99 while clients come and go",
        "< 50 ms",
        format!("{:.2} ms", latency.p99_ms),
        latency.p99_ms < 50.0,
    );
    let nats = m.cpu.get("nats-server").map_or(0.0, |u| u.cpu_cores);
    run.target(
        "nats-server CPU",
        "< 0.2 core",
        format!("{nats:.3} core"),
        nats < 0.2,
    );
    run.target(
        "joining clients that failed",
        "0",
        failed.to_string(),
        failed == 0,
    );
    let result = json!({
        "connect": connect,
        "clients": a.clients,
        "rate": a.rate,
        "accounts": mix.accounts.len(),
        "churn_rate": a.churn_rate,
        "churn_lifetime_secs": a.churn_lifetime,
        "churn": { "joined": joined, "left": left, "failed": failed, "join_latency": join },
        "events_sent": p.sent(),
        "events_failed": p.failed(),
        "measure": m,
        "latency": latency,
        "delivery": complete,
        "counters": merged.counters,
        "gateway_metrics": metrics,
    });
    run.end(json!(a), result).await
}

/// `idle`: N authenticated, subscribed, silent connections.
pub async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let mix = a.mix.mix(1);
    let mut run = Run::start("idle", &a.common, a.gateways, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = run.monitor.usage();
    let sock_before = procfs::tcp_sockstat();
    let connect = run
        .connect(a.clients, &mix, Placement::RoundRobin, false, false)
        .await?;
    run.monitor.set_phase("settle");
    tokio::time::sleep(Duration::from_secs(a.settle_secs)).await;
    run.monitor.set_phase("idle");
    let idle = Duration::from_secs(a.idle_secs)
        .min(run.left().saturating_sub(Duration::from_secs(20)))
        .max(Duration::from_secs(1));
    let u0 = run.monitor.usage();
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let u1 = run.monitor.usage();
    let secs = t0.elapsed().as_secs_f64();
    let sock_after = procfs::tcp_sockstat();
    let metrics = run.scrape_all().await;
    let cpu = u0.between(&u1, secs);
    let mut gateways = Vec::new();
    let (mut total_conns, mut total_delta_kb, mut total_cpu) = (0.0, 0.0, 0.0);
    for (k, gateway_metrics) in metrics.iter().enumerate() {
        let role = run.system.gateway_role(k);
        let conns = gateway_metrics
            .get("instantchat_gateway_connections")
            .copied()
            .unwrap_or(0.0);
        let rss0 = base.procs.get(&role).map_or(0, |(_, s)| s.rss_kb) as f64;
        let rss1 = u1.procs.get(&role).map_or(0, |(_, s)| s.rss_kb) as f64;
        let c = cpu.get(&role).map_or(0.0, |u| u.cpu_cores);
        total_conns += conns;
        total_delta_kb += rss1 - rss0;
        total_cpu += c;
        gateways.push(json!({
            "gateway": role,
            "connections": conns,
            "rss_base_mb": round2(rss0 / 1024.0),
            "rss_mb": round2(rss1 / 1024.0),
            "bytes_per_connection": if conns > 0.0 { ((rss1 - rss0) * 1024.0 / conns).round() } else { 0.0 },
            "idle_cpu_cores": round2(c),
        }));
    }
    let per_conn = if total_conns > 0.0 {
        total_delta_kb * 1024.0 / total_conns
    } else {
        0.0
    };
    let workers_rss_kb: f64 = u1
        .procs
        .iter()
        .filter(|(r, _)| r.starts_with("worker"))
        .map(|(_, (_, s))| s.rss_kb as f64)
        .sum();
    let workers_cpu: f64 = cpu
        .iter()
        .filter(|(r, _)| r.starts_with("worker"))
        .map(|(_, u)| u.cpu_cores)
        .sum();
    let page_kb = 4.0;
    let sock_mem_delta_kb = (sock_after.get("mem").copied().unwrap_or(0) as f64
        - sock_before.get("mem").copied().unwrap_or(0) as f64)
        * page_kb;
    run.row(
        "connections held",
        format!(
            "{} on {} gateway(s)",
            int(total_conns as u64),
            run.system.gateways.len()
        ),
    );
    run.row(
        "gateway RSS per connection",
        format!(
            "{:.0} bytes ({:.1} MiB over {} connections)",
            per_conn,
            total_delta_kb / 1024.0,
            int(total_conns as u64)
        ),
    );
    run.row(
        "gateway CPU while idle",
        format!("{total_cpu:.3} cores over {secs:.0} s, all gateways"),
    );
    run.row(
        "client side",
        format!(
            "{:.0} bytes RSS per client, {workers_cpu:.3} cores",
            workers_rss_kb * 1024.0 / a.clients.max(1) as f64
        ),
    );
    run.row(
        "kernel TCP buffers (both ends)",
        format!(
            "{:+.1} MiB ({:?} -> {:?})",
            sock_mem_delta_kb / 1024.0,
            sock_before,
            sock_after
        ),
    );
    run.target(
        "gateway RSS per idle connection",
        "< 10 KB",
        format!("{:.1} KB", per_conn / 1000.0),
        per_conn < 10_000.0 && total_conns > 0.0,
    );
    run.target(
        "gateway CPU with every connection idle",
        "< 0.2 core",
        format!("{total_cpu:.3} cores"),
        total_cpu < 0.2,
    );
    run.target(
        "connections reached",
        &int(a.clients as u64),
        int(total_conns as u64),
        total_conns as usize >= a.clients,
    );
    let merged = run.finish(&Finish::default()).await?;
    let result = json!({
        "connect": connect,
        "clients": a.clients,
        "gateways": gateways,
        "connections": total_conns,
        "bytes_per_connection": per_conn.round(),
        "idle_cpu_cores": round2(total_cpu * 1000.0) / 1000.0,
        "idle_secs": round2(secs),
        "client_bytes_per_connection": (workers_rss_kb * 1024.0 / a.clients.max(1) as f64).round(),
        "client_cpu_cores": workers_cpu,
        "cpu": cpu,
        "sockstat_before": sock_before,
        "sockstat_after": sock_after,
        "counters": merged.counters,
        "connect_latency": hist::summarize(&merged.connect),
        "gateway_metrics": metrics,
    });
    run.end(json!(a), result).await
}

/// `scale-out`: each gateway's clients see their own accounts.
pub async fn scale_out(a: ScaleOutArgs) -> anyhow::Result<()> {
    let g = a.gateways.max(1);
    let mix = a.mix.mix(10 * g);
    let mut run = Run::start("scale-out", &a.common, g, false).await?;
    let connect = run
        .connect(a.clients, &mix, Placement::ByAccount, false, false)
        .await?;
    let before = run.scrape_all().await;
    let p = run.publisher(&mix, a.clients)?;
    let window = a.window.saturating_mul(a.clients as u64);
    let m = run
        .measure(
            &p,
            Pacing::Window {
                window,
                senders: a.senders,
            },
            a.duration,
            a.max_events,
        )
        .await;
    let after = run.scrape_all().await;
    let finish = p.finish();
    let merged = run.finish(&finish).await?;
    let failed: std::collections::HashSet<u64> = finish.failed.iter().copied().collect();
    let mut expected = vec![0u64; g];
    for n in 0..finish.published {
        if !failed.contains(&n) {
            expected[mix.event_account(n) % g] += 1;
        }
    }
    let metric = |m: &BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap_or(0.0);
    let mut per_gateway = Vec::new();
    // The stated bound (docs/fanout.md): a gateway takes the whole stream once, through one
    // consumer, whichever accounts its clients see; never an event twice, never fewer than its
    // own accounts'.
    let mut within_bound = true;
    for k in 0..g {
        let received = metric(&after[k], "instantchat_gateway_events_received_total")
            - metric(&before[k], "instantchat_gateway_events_received_total");
        let delivered = metric(&after[k], "instantchat_gateway_events_delivered_total")
            - metric(&before[k], "instantchat_gateway_events_delivered_total");
        let role = run.system.gateway_role(k);
        let cpu = m.cpu.get(&role).map_or(0.0, |u| u.cpu_cores);
        within_bound &= (expected[k]..=finish.published).contains(&(received as u64));
        run.row(
            &role,
            format!(
                "received {} events from NATS (its accounts' share: {}, all sent: {}), delivered {}, {:.2} cores",
                int(received as u64),
                int(expected[k]),
                int(finish.published),
                int(delivered as u64),
                cpu
            ),
        );
        per_gateway.push(json!({
            "gateway": role,
            "accounts": (0..mix.accounts.len()).filter(|acc| acc % g == k).count(),
            "events_received": received,
            "events_expected": expected[k],
            "deliveries": delivered,
            "cpu_cores": round2(cpu),
            "connections": metric(&after[k], "instantchat_gateway_connections"),
        }));
    }
    run.row(
        "deliveries/s (all gateways)",
        format!(
            "{} ({} events/s) over {:.1} s",
            int(m.deliveries_per_s as u64),
            m.events_per_s,
            m.secs
        ),
    );
    let latency = hist::summarize(&merged.latency);
    run.latency_row("latency under saturation", &latency);
    run.cpu_row(&m);
    let complete = run.completeness(&merged);
    run.target(
        "each gateway takes from NATS every event at most once (the stated bound, docs/fanout.md)",
        "its accounts' events <= received <= all sent",
        per_gateway
            .iter()
            .map(|v| {
                format!(
                    "{} <= {} <= {}",
                    v["events_expected"], v["events_received"], finish.published
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        within_bound,
    );
    let result = json!({
        "connect": connect,
        "clients": a.clients,
        "gateways": g,
        "accounts": mix.accounts.len(),
        "deliveries_per_s": m.deliveries_per_s,
        "events_per_s": m.events_per_s,
        "events_sent": finish.published,
        "events_failed": finish.failed.len(),
        "per_gateway": per_gateway,
        "measure": m,
        "latency": latency,
        "delivery": complete,
        "counters": merged.counters,
        "gateway_metrics": after,
    });
    run.end(json!(a), result).await
}

/// `storm`: kill the gateway under caught-up clients while events flow; every client resumes.
pub async fn storm(a: StormArgs) -> anyhow::Result<()> {
    let mix = a.mix.mix(100);
    let gateways = match a.mode {
        StormMode::Restart => 1,
        StormMode::Takeover => 2,
    };
    let mut run = Run::start("storm", &a.common, gateways, false).await?;
    let connect = run
        .connect(
            a.clients,
            &mix,
            Placement::Fixed(0),
            a.mode == StormMode::Takeover,
            true,
        )
        .await?;
    let p = run.publisher(&mix, a.clients)?;
    let stop = CancellationToken::new();
    let until = Instant::now() + run.left().saturating_sub(Duration::from_secs(35));
    let sender = {
        let (p, stop) = (p.clone(), stop.clone());
        let (rate, concurrency) = (a.rate, a.concurrency);
        tokio::spawn(async move { p.run_rate(rate, concurrency, until, u64::MAX, stop).await })
    };
    run.monitor.set_phase("flowing");
    tokio::time::sleep(Duration::from_secs(a.before_secs)).await;
    let pool_state = run.pool.as_ref().map(|p| p.state.clone());
    let counters = || {
        pool_state
            .as_ref()
            .map(|s| s.counters())
            .unwrap_or_default()
    };
    let clients = a.clients as i64;
    let ready_before = counters().ready;
    run.monitor.set_phase("kill");
    let u0 = run.monitor.usage();
    let kill_us = now_us();
    let killed = Instant::now();
    run.system.kill_gateway(0);
    let mut restart_secs = None;
    if a.mode == StormMode::Restart {
        tokio::time::sleep(Duration::from_millis(a.restart_delay_ms)).await;
        let t = Instant::now();
        run.system.start_gateway(0).await?;
        restart_secs = Some(t.elapsed().as_secs_f64());
        run.track();
    }
    run.monitor.set_phase("recover");
    // Wait until the clients noticed, then until every one is back and caught up.
    let noticed = Instant::now() + Duration::from_secs(5);
    while counters().ready >= clients && Instant::now() < noticed {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lowest = counters().ready;
    let recover_limit = Duration::from_secs(a.recover_timeout).min(
        run.left()
            .saturating_sub(Duration::from_secs(35 + a.after_secs)),
    );
    let mut all_back = None;
    while killed.elapsed() < recover_limit {
        if counters().ready >= clients {
            all_back = Some(killed.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let u1 = run.monitor.usage();
    let recover_window = killed.elapsed().as_secs_f64();
    let ready_at_end = counters().ready;
    run.monitor.set_phase("after");
    tokio::time::sleep(Duration::from_secs(a.after_secs)).await;
    stop.cancel();
    let _ = sender.await;
    run.monitor.set_phase("drain");
    let (drained, drain_secs) = run.drain(&p).await;
    let metrics = run.scrape_all().await;
    let merged = run.finish(&p.finish()).await?;
    let precise =
        (merged.last_resumed_us > kill_us).then(|| (merged.last_resumed_us - kill_us) as f64 / 1e6);
    let recovery = hist::summarize(&merged.recovery);
    let cpu = u0.between(&u1, recover_window);
    run.row(
        "kill",
        format!(
            "{} clients ready before; SIGKILL {}; {}",
            ready_before,
            run.system.gateway_role(0),
            match restart_secs {
                Some(s) => format!("restarted and ready again in {s:.2} s"),
                None => "clients move to gateway-1".to_owned(),
            }
        ),
    );
    run.row(
        "all clients back and caught up",
        match (all_back, precise) {
            (Some(s), Some(p)) => {
                format!("{s:.2} s after the kill (last replay_complete at {p:.2} s)")
            }
            _ => format!(
                "NOT within {:.0} s: {ready_at_end} of {clients} ready",
                recover_limit.as_secs_f64()
            ),
        },
    );
    run.row(
        "per-client outage",
        format!(
            "disconnect to replay_complete: p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} clients)",
            recovery.p50_ms / 1000.0,
            recovery.p99_ms / 1000.0,
            recovery.max_ms / 1000.0,
            recovery.count
        ),
    );
    let c = merged.counters;
    run.row(
        "resume",
        format!(
            "{} disconnects, {} reconnect attempts, {} replays ({} events replayed, {} incomplete)",
            c.disconnects, c.reconnect_attempts, c.resumed, c.replayed, c.replay_incomplete
        ),
    );
    run.row(
        "events",
        format!(
            "{} sent at {}/s ({} failed); drained {} in {:.1} s",
            int(p.sent()),
            a.rate,
            p.failed(),
            drained,
            drain_secs
        ),
    );
    let latency = hist::summarize(&merged.latency);
    run.latency_row("latency (outage included)", &latency);
    let (gw_cpu, _) = gateway_usage(&cpu);
    run.row(
        "CPU during recovery",
        format!(
            "gateway {gw_cpu:.2} cores, nats-server {:.2}, clients {:.2}",
            cpu.get("nats-server").map_or(0.0, |u| u.cpu_cores),
            cpu.iter()
                .filter(|(r, _)| r.starts_with("worker"))
                .map(|(_, u)| u.cpu_cores)
                .sum::<f64>()
        ),
    );
    let complete = run.completeness(&merged);
    let back = precise.or(all_back);
    run.target(
        "every client back and caught up after the kill",
        "<= 30 s",
        back.map_or_else(|| "not all back".to_owned(), |s| format!("{s:.2} s")),
        all_back.is_some() && back.is_some_and(|s| s <= 30.0),
    );
    let result = json!({
        "connect": connect,
        "clients": a.clients,
        "mode": a.mode,
        "ready_before": ready_before,
        "ready_when_drop_seen": lowest,
        "restart_secs": restart_secs,
        "all_back_secs": all_back,
        "last_resume_secs": precise,
        "recovery": recovery,
        "events_sent": p.sent(),
        "events_failed": p.failed(),
        "drained": drained,
        "drain_secs": drain_secs,
        "latency": latency,
        "delivery": complete,
        "counters": c,
        "cpu_recovery": cpu,
        "gateway_metrics": metrics,
    });
    run.end(json!(a), result).await
}
