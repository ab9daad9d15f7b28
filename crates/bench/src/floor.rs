//! `floor`: what this machine's loopback TCP can do for a fan-out of the same shape, with no
//! InstantChat (no HTTP, NATS, Socket.IO, WebSocket or JSON) in the path. It is the reference the
//! `latency` figures are read against.
//!
//! The coordinator is the sender, written the way a lean server would be: its sockets are
//! plain blocking `TcpStream`s with `TCP_NODELAY`, split over `--senders` threads; every event
//! is one `write` of `--frame-bytes` to each socket, and events that fell due together (the
//! sender was behind) go out in one `write`. The receivers are `--receivers` processes of the
//! hidden `floor-receiver` command, one `mio` poll loop each, which only read (and, as tokio
//! does, take a short read to mean the socket is empty). Each frame starts with two times
//! (Unix µs): when its event fell due, and when the write that carries it began. From the due
//! time is the figure to read `latency` against: the sender stands for the gateway, and its
//! falling behind stands for the gateway's queue, which `latency` counts (its clock starts as
//! the POST is sent; the bench's own lag before that is left out). From the write is the
//! lower bound with the sender's queueing left out. The sender closes
//! every socket after the last event; a receiver ends when all of its sockets are closed,
//! checks that each got every frame, and prints its histogram as one JSON line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::hist::{self, Buckets};
use crate::monitor::round2;
use crate::procfs::{self, Machine};
use crate::scenarios::{command_line, int, print_rows, wait_quiet, write_report};
use crate::worker::now_us;
use crate::{FloorArgs, FloorReceiverArgs};

/// What a receiver process reports at the end.
#[derive(Debug, Serialize, Deserialize)]
struct ReceiverReport {
    frames: u64,
    expected: u64,
    /// Sockets that did not get exactly the expected frames.
    short_sockets: u64,
    /// Latency from the event's due time.
    buckets: Buckets,
    /// Latency from the start of the write that carried it.
    write_buckets: Buckets,
}

/// `floor`: see the module docs.
pub async fn floor(a: FloorArgs) -> anyhow::Result<()> {
    if a.clients == 0 || a.receivers == 0 || a.senders == 0 {
        bail!("--clients, --receivers and --senders must be at least 1");
    }
    if a.frame_bytes < 16 {
        bail!("--frame-bytes must be at least 16 (the frame's two times)");
    }
    if a.clients > 19_000 {
        bail!(
            "{} sockets: the sender holds them all, and a process may hold 20,000 open files; \
             use --clients 19000 or fewer",
            a.clients
        );
    }
    let quiet = wait_quiet(a.wait_quiet).await;
    tokio::task::spawn_blocking(move || run(a, quiet)).await?
}

fn run(a: FloorArgs, quiet: String) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let deadline = t0 + Duration::from_secs(a.max_seconds);
    let machine = Machine::probe(std::path::Path::new("nats-server"));
    let load_start = procfs::loadavg();
    let events = ((a.rate * a.duration as f64).round() as u64).max(1);

    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let exe = std::env::current_exe()?;
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
    for r in 0..a.receivers {
        let count = (r + 1) * a.clients / a.receivers - r * a.clients / a.receivers;
        let mut child = Command::new(&exe)
            .args(["floor-receiver", "--port", &port.to_string()])
            .args(["--clients", &count.to_string()])
            .args(["--events", &events.to_string()])
            .args(["--frame-bytes", &a.frame_bytes.to_string()])
            .args(["--max-seconds", &a.max_seconds.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a floor-receiver process")?;
        let out = BufReader::new(child.stdout.take().context("no receiver stdout")?);
        children.push((child, out));
    }
    let result = drive(&a, events, &listener, &mut children, deadline);
    for (child, _) in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (sent, lag_us, cpu, reports, secs) = result?;

    let mut merged = hist::new_hist();
    let mut merged_write = hist::new_hist();
    let (mut frames, mut expected, mut short) = (0, 0, 0);
    for r in &reports {
        hist::add_buckets(&mut merged, &r.buckets);
        hist::add_buckets(&mut merged_write, &r.write_buckets);
        frames += r.frames;
        expected += r.expected;
        short += r.short_sockets;
    }
    let latency = hist::summarize(&merged);
    let from_write = hist::summarize(&merged_write);
    let complete = frames == expected && short == 0 && reports.len() == a.receivers;
    let rows: Vec<(&str, String)> = vec![
        ("machine before start", quiet),
        (
            "load",
            format!(
                "{} events/s of {} bytes to {} loopback TCP sockets: {} writes/s offered; \
                 {} sender thread(s), {} receiver process(es)",
                a.rate,
                a.frame_bytes,
                int(a.clients as u64),
                int((a.rate * a.clients as f64) as u64),
                a.senders,
                a.receivers
            ),
        ),
        (
            "latency (due -> read)",
            format!("{} ({} samples)", latency.percentiles(), int(latency.count)),
        ),
        (
            "latency (write -> read)",
            format!(
                "{} (the sender's own lag left out)",
                from_write.percentiles()
            ),
        ),
        (
            "sender lag",
            format!("at worst {:.1} ms behind schedule", lag_us as f64 / 1000.0),
        ),
        (
            "CPU cores (send window)",
            format!(
                "sender {:.2}, receivers {:.2}, whole machine {:.2}",
                cpu.sender, cpu.receivers, cpu.machine
            ),
        ),
        (
            "completeness",
            format!(
                "{} of {} frames; {} socket(s) short{}",
                int(frames),
                int(expected),
                short,
                if reports.len() == a.receivers {
                    String::new()
                } else {
                    format!("; {} of {} receivers reported", reports.len(), a.receivers)
                }
            ),
        ),
    ];
    println!();
    println!("== instantchat-bench floor ==");
    println!("{}", command_line());
    println!(
        "machine: {} cores, {} GiB, Linux {}; load avg {} -> {}",
        machine.nproc,
        machine.mem_total_gib,
        machine.kernel,
        load_start,
        procfs::loadavg()
    );
    print_rows(&rows);
    println!(
        "  (no InstantChat in the path: this is the machine's own latency for the shape, the \
         reference for `latency --clients {} --rate {}`)",
        a.clients, a.rate
    );
    if let Some(out) = &a.out {
        let report = json!({
            "scenario": "floor",
            "command": command_line(),
            "started_at": started_at,
            "wall_secs": round2(t0.elapsed().as_secs_f64()),
            "machine": machine,
            "load_avg_start": load_start,
            "load_avg_end": procfs::loadavg(),
            "config": a,
            "result": {
                "clients": a.clients,
                "rate": a.rate,
                "events": events,
                "events_sent": sent,
                "offered_writes_per_s": a.rate * a.clients as f64,
                "sender_max_lag_ms": lag_us as f64 / 1000.0,
                "send_secs": round2(secs),
                "cpu": {
                    "sender_cores": round2(cpu.sender),
                    "receiver_cores": round2(cpu.receivers),
                    "machine_busy_cores": round2(cpu.machine),
                },
                "latency": latency,
                "latency_from_write": from_write,
                "delivery": {
                    "frames": frames,
                    "expected": expected,
                    "short_sockets": short,
                    "receivers_reported": reports.len(),
                    "complete": complete,
                },
            },
            "summary": rows,
        });
        write_report(out, &report)?;
    }
    if !complete {
        bail!("not every frame arrived: {frames} of {expected}, {short} socket(s) short");
    }
    Ok(())
}

struct Cpu {
    sender: f64,
    receivers: f64,
    machine: f64,
}

/// Events sent, the sender's worst lag (µs), CPU, the receivers' reports, seconds of sending.
type Driven = (u64, u64, Cpu, Vec<ReceiverReport>, f64);

/// Accepts every receiver's sockets, sends, closes them and collects the reports.
fn drive(
    a: &FloorArgs,
    events: u64,
    listener: &TcpListener,
    children: &mut [(Child, BufReader<std::process::ChildStdout>)],
    deadline: Instant,
) -> anyhow::Result<Driven> {
    eprintln!(
        "instantchat-bench floor: {} receiver process(es) connecting {} sockets",
        children.len(),
        a.clients
    );
    let mut socks = Vec::with_capacity(a.clients);
    while socks.len() < a.clients {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                socks.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!(
                        "only {} of {} sockets connected in time",
                        socks.len(),
                        a.clients
                    );
                }
                if let Some((i, status)) = children
                    .iter_mut()
                    .enumerate()
                    .find_map(|(i, (c, _))| c.try_wait().ok().flatten().map(|s| (i, s)))
                {
                    bail!("receiver {i} exited early ({status})");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    for (i, (_, out)) in children.iter_mut().enumerate() {
        let mut line = String::new();
        out.read_line(&mut line)?;
        if !line.contains("connected") {
            bail!("receiver {i} did not connect: {line:?}");
        }
    }
    eprintln!(
        "instantchat-bench floor: sending {events} events to {} sockets at {}/s",
        a.clients, a.rate
    );
    let pids: Vec<u32> = children.iter().map(|(c, _)| c.id()).collect();
    let cpu_of = |pids: &[u32]| {
        pids.iter()
            .filter_map(|&p| procfs::read(p))
            .map(|s| s.cpu_s)
            .sum::<f64>()
    };
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let lag = Arc::new(AtomicU64::new(0));
    let start = started + Duration::from_millis(200);
    // The same clock for every thread: event n falls due at unix_start + n / rate.
    let unix_start = now_us() + start.saturating_duration_since(Instant::now()).as_micros() as u64;
    let per = a.clients.div_ceil(a.senders);
    let shards = a.clients.div_ceil(per) as u64;
    let mut threads = Vec::new();
    let mut rest = socks;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(per));
        let shard = std::mem::replace(&mut rest, tail);
        let (sent, lag, rate, frame) = (sent.clone(), lag.clone(), a.rate, a.frame_bytes);
        threads.push(std::thread::spawn(move || {
            send(
                shard,
                events,
                rate,
                frame,
                (start, unix_start),
                deadline,
                &sent,
                &lag,
            )
        }));
    }
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let (s0, r0, m0) = (
        cpu_of(&[std::process::id()]),
        cpu_of(&pids),
        procfs::machine_cpu(),
    );
    let progress_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = {
        let (stop, sent) = (progress_stop.clone(), sent.clone());
        let total = events * shards;
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                eprintln!(
                    "[floor {:>4.0}s] {} of {} event writes sent",
                    started.elapsed().as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    total
                );
            }
        })
    };
    let mut failure = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow::anyhow!("a sender thread panicked")),
        }
    }
    let send_secs = start.elapsed().as_secs_f64().max(1e-9);
    let (s1, r1, m1) = (
        cpu_of(&[std::process::id()]),
        cpu_of(&pids),
        procfs::machine_cpu(),
    );
    progress_stop.store(true, Ordering::Relaxed);
    let _ = progress.join();
    if let Some(e) = failure {
        return Err(e);
    }
    let cpu = Cpu {
        sender: (s1 - s0) / send_secs,
        receivers: (r1 - r0) / send_secs,
        machine: if m1.1 > m0.1 {
            (m1.0 - m0.0) / (m1.1 - m0.1) * procfs::nproc() as f64
        } else {
            0.0
        },
    };
    let mut reports = Vec::new();
    for (i, (_, out)) in children.iter_mut().enumerate() {
        let mut line = String::new();
        out.read_line(&mut line)?;
        match serde_json::from_str::<ReceiverReport>(&line) {
            Ok(r) => reports.push(r),
            Err(e) => eprintln!("instantchat-bench floor: receiver {i} sent no report ({e})"),
        }
    }
    Ok((
        sent.load(Ordering::Relaxed) / shards,
        lag.load(Ordering::Relaxed),
        cpu,
        reports,
        send_secs,
    ))
}

/// One sender thread: every event due is written to each socket of the shard, then the
/// sockets are closed.
#[allow(clippy::too_many_arguments)]
fn send(
    mut shard: Vec<TcpStream>,
    events: u64,
    rate: f64,
    frame: usize,
    (start, unix_start): (Instant, u64),
    deadline: Instant,
    sent: &AtomicU64,
    lag: &AtomicU64,
) -> anyhow::Result<()> {
    let due = |n: u64| start + Duration::from_secs_f64(n as f64 / rate.max(0.001));
    // Each frame carries two times. When its event fell due, as if it had reached a server
    // then: a sender that falls behind adds its lag, as a gateway's queue would. And when the
    // write that carries it began, which leaves the sender's lag out.
    let stamp = |n: u64| unix_start + (n as f64 * 1e6 / rate.max(0.001)) as u64;
    let mut buf = Vec::new();
    let mut next = 0;
    while next < events {
        let at = due(next);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
            continue;
        }
        if now >= deadline {
            bail!("--max-seconds reached while sending");
        }
        lag.fetch_max(now.duration_since(at).as_micros() as u64, Ordering::Relaxed);
        buf.clear();
        let written = now_us().to_le_bytes();
        let mut batch = 0;
        while next < events && due(next) <= now {
            buf.extend_from_slice(&stamp(next).to_le_bytes());
            buf.extend_from_slice(&written);
            buf.resize(buf.len() + frame - 16, b'x');
            next += 1;
            batch += 1;
        }
        for s in &mut shard {
            s.write_all(&buf).context("write to a receiver socket")?;
        }
        sent.fetch_add(batch, Ordering::Relaxed);
    }
    for s in &shard {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    Ok(())
}

/// `floor-receiver`: connects `--clients` sockets, reads every frame, reports.
pub async fn floor_receiver(a: FloorReceiverArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || receive(a)).await?
}

struct Conn {
    stream: mio::net::TcpStream,
    frames: Frames,
    open: bool,
}

/// Cuts one socket's byte stream into frames and records each frame's two latencies.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame read so far.
    offset: usize,
    /// The frame's due time and write time, little-endian Unix µs.
    stamps: [u8; 16],
    count: u64,
}

/// A receiver's two latency histograms.
struct Hists {
    due: Histogram<u64>,
    write: Histogram<u64>,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8], frame: usize, now_us: u64, h: &mut Hists) {
        while !bytes.is_empty() {
            let take = (frame - self.offset).min(bytes.len());
            if self.offset < 16 {
                let n = (16 - self.offset).min(take);
                self.stamps[self.offset..self.offset + n].copy_from_slice(&bytes[..n]);
            }
            self.offset += take;
            bytes = &bytes[take..];
            if self.offset == frame {
                let [due, written] = [0, 8].map(|i| {
                    let mut b = [0; 8];
                    b.copy_from_slice(&self.stamps[i..i + 8]);
                    u64::from_le_bytes(b)
                });
                h.due.saturating_record(now_us.saturating_sub(due).max(1));
                h.write
                    .saturating_record(now_us.saturating_sub(written).max(1));
                self.count += 1;
                self.offset = 0;
            }
        }
    }
}

fn receive(a: FloorReceiverArgs) -> anyhow::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    let deadline = Instant::now() + Duration::from_secs(a.max_seconds);
    let addr: SocketAddr = ([127, 0, 0, 1], a.port).into();
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connect to {addr}"))?;
        s.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(Conn {
            stream,
            frames: Frames::default(),
            open: true,
        });
    }
    println!("{}", json!({ "connected": a.clients }));
    std::io::stdout().flush()?;
    let mut hists = Hists {
        due: hist::new_hist(),
        write: hist::new_hist(),
    };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = a.clients;
    while open > 0 && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(500)))?;
        for ev in &events {
            let c = &mut conns[ev.token().0];
            while c.open {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.open = false;
                        open -= 1;
                    }
                    Ok(k) => {
                        c.frames
                            .feed(&buf[..k], a.frame_bytes, now_us(), &mut hists);
                        // A short read emptied the socket (as tokio assumes too): the next
                        // data brings a new edge. Read on only to see a close that came with
                        // this event.
                        if k < buf.len() && !ev.is_read_closed() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!(
                            "instantchat-bench floor-receiver: socket {}: {e}",
                            ev.token().0
                        );
                        c.open = false;
                        open -= 1;
                    }
                }
            }
        }
    }
    let frames: u64 = conns.iter().map(|c| c.frames.count).sum();
    let report = ReceiverReport {
        frames,
        expected: a.events * a.clients as u64,
        short_sockets: conns.iter().filter(|c| c.frames.count != a.events).count() as u64,
        buckets: hist::to_buckets(&hists.due),
        write_buckets: hist::to_buckets(&hists.write),
    };
    println!("{}", serde_json::to_string(&report)?);
    std::io::stdout().flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_are_counted_once_with_their_stamps() {
        let frame = 24;
        let mut stream = Vec::new();
        for (due, written) in [(1_000u64, 4_000u64), (2_000, 4_000), (3_000, 5_000)] {
            stream.extend_from_slice(&due.to_le_bytes());
            stream.extend_from_slice(&written.to_le_bytes());
            stream.resize(stream.len() + frame - 16, b'x');
        }
        for cut in [1, 3, 7, 8, 9, 15, 16, 17, 23, 24, 25, 45, 71] {
            let mut f = Frames::default();
            let mut h = Hists {
                due: hist::new_hist(),
                write: hist::new_hist(),
            };
            let (a, b) = stream.split_at(cut);
            f.feed(a, frame, 10_000, &mut h);
            f.feed(b, frame, 10_000, &mut h);
            assert_eq!(f.count, 3, "cut at {cut}");
            assert_eq!((h.due.len(), h.write.len()), (3, 3), "cut at {cut}");
            assert!(h.due.equivalent(h.due.min(), 7_000), "cut at {cut}");
            assert!(h.due.equivalent(h.due.max(), 9_000), "cut at {cut}");
            assert!(h.write.equivalent(h.write.min(), 5_000), "cut at {cut}");
            assert!(h.write.equivalent(h.write.max(), 6_000), "cut at {cut}");
        }
    }
}
