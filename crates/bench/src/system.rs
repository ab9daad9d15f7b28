//! The system under test, started from the release binaries on free loopback ports:
//! `nats-server` (JetStream, own store), `instantchat-ingest` and G `instantchat-gateway`s, or
//! one `instantchat serve` (single process, in-process bus). Logs go to files in a temporary
//! directory; every process started here is stopped here (SIGTERM, then SIGKILL), by its pid.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The gateway's HS256 secret for bench tokens.
pub const JWT_SECRET: &str = "b7e2c9f4a1d8e3b6c0f5a2d9e4b1c7f3a8d6e0b2";
/// The app secret bench webhooks are signed with.
pub const APP_SECRET: &str = "6b1d9e0f3a7c2e5b8d4f1a0c9e7b3d52";
/// The verify token ingest is started with (nothing here asks for it; ingest needs a valid one).
pub const VERIFY_TOKEN: &str = "c3e9a1f7b5d2c8e4a0f6b1d3";
/// How long a started process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the system.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub bin_dir: PathBuf,
    pub nats_server: PathBuf,
    pub gateways: usize,
    /// `instantchat serve` instead of NATS + ingest + gateways.
    pub single: bool,
    /// Set on every gateway (and on the single process): load-test limits and `--gateway-env`.
    pub gateway_env: Vec<(String, String)>,
    /// Set on ingest (`ingest --ingest-env`); they win over the bench's.
    pub ingest_env: Vec<(String, String)>,
}

/// A child process the bench started.
#[derive(Debug)]
pub struct Proc {
    pub role: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// One gateway instance: its port stays the same across restarts.
#[derive(Debug)]
pub struct GatewayProc {
    pub port: u16,
    pub proc: Option<Proc>,
}

/// The running system.
#[derive(Debug)]
pub struct System {
    pub cfg: SystemConfig,
    dir: Option<tempfile::TempDir>,
    pub nats: Option<Proc>,
    pub nats_url: String,
    pub ingest: Option<Proc>,
    /// Where webhooks are POSTed (ingest, or the single process).
    pub ingest_url: String,
    pub gateways: Vec<GatewayProc>,
    http: reqwest::Client,
}

/// A port nothing listens on, on any address, chosen below the kernel's ephemeral range
/// (32768-60999 here) so that it never collides with the client sockets a large run leaves in
/// TIME_WAIT.
pub fn free_port() -> anyhow::Result<u16> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
    let mut x = seed | 1;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port found in 20000-31999")
}

impl System {
    /// Starts everything and waits until each part is ready.
    pub async fn start(cfg: SystemConfig) -> anyhow::Result<Self> {
        for bin in Self::bins(&cfg) {
            if !cfg.bin_dir.join(bin).is_file() {
                bail!(
                    "{} not found; build the release binaries first: cargo build --release --bins",
                    cfg.bin_dir.join(bin).display()
                );
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("instantchat-bench-")
            .tempdir()
            .context("a temporary directory for the NATS store and the logs")?;
        let mut sys = System {
            cfg,
            dir: Some(dir),
            nats: None,
            nats_url: String::new(),
            ingest: None,
            ingest_url: String::new(),
            gateways: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        };
        if sys.cfg.single {
            let port = free_port()?;
            sys.gateways.push(GatewayProc { port, proc: None });
            sys.ingest_url = format!("http://127.0.0.1:{port}");
            sys.start_gateway(0).await?;
            return Ok(sys);
        }
        let nats_port = free_port()?;
        sys.nats_url = format!("nats://127.0.0.1:{nats_port}");
        let store = sys.dir().join("jetstream");
        let mut nats = base_command(&sys.cfg.nats_server);
        nats.args([
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&store);
        sys.nats = Some(sys.spawn("nats-server", nats, &[])?);
        let addr = SocketAddr::from(([127, 0, 0, 1], nats_port));
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not accept connections on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Ingest creates the JetStream streams at start; on a busy machine JetStream may not be
        // up yet although the port accepts, so a failed start is retried (on a fresh port).
        for attempt in 1..=3 {
            let ingest_port = free_port()?;
            sys.ingest_url = format!("http://127.0.0.1:{ingest_port}");
            let mut ingest = base_command(sys.cfg.bin_dir.join("instantchat-ingest"));
            ingest
                .env("PORT", ingest_port.to_string())
                .env("NATS_URL", &sys.nats_url)
                .env("INSTAGRAM_APP_SECRET", APP_SECRET)
                .env("INSTAGRAM_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN);
            sys.ingest = Some(sys.spawn("ingest", ingest, &sys.cfg.ingest_env)?);
            match sys
                .wait_ready("ingest", &format!("{}/readyz", sys.ingest_url))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 3 => {
                    eprintln!("instantchat-bench: {e:#}; retrying");
                    if let Some(mut p) = sys.ingest.take() {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        for _ in 0..sys.cfg.gateways {
            let port = free_port()?;
            sys.gateways.push(GatewayProc { port, proc: None });
        }
        for k in 0..sys.gateways.len() {
            sys.start_gateway(k).await?;
        }
        Ok(sys)
    }

    fn bins(cfg: &SystemConfig) -> Vec<&'static str> {
        if cfg.single {
            vec!["instantchat"]
        } else if cfg.gateways == 0 {
            vec!["instantchat-ingest"]
        } else {
            vec!["instantchat-ingest", "instantchat-gateway"]
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/tmp"), |d| d.path())
    }

    /// The directory of logs (and the NATS store) of this run.
    pub fn log_dir(&self) -> PathBuf {
        self.dir().to_owned()
    }

    /// Keeps the logs after the run (they are removed otherwise).
    pub fn keep_logs(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    fn spawn(
        &self,
        role: &str,
        mut cmd: Command,
        extra: &[(String, String)],
    ) -> anyhow::Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("{role}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cmd.envs(extra.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {role} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            role: role.to_owned(),
            child,
        })
    }

    /// The gateway's (or single process's) role name.
    pub fn gateway_role(&self, k: usize) -> String {
        if self.cfg.single {
            "instantchat".to_owned()
        } else {
            format!("gateway-{k}")
        }
    }

    /// Starts (or restarts) gateway `k` on its port and waits until it is ready.
    pub async fn start_gateway(&mut self, k: usize) -> anyhow::Result<()> {
        let port = self.gateways[k].port;
        let cmd = if self.cfg.single {
            let mut c = base_command(self.cfg.bin_dir.join("instantchat"));
            c.arg("serve")
                .env("INSTAGRAM_APP_SECRET", APP_SECRET)
                .env("INSTAGRAM_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN);
            c
        } else {
            let mut c = base_command(self.cfg.bin_dir.join("instantchat-gateway"));
            c.env("NATS_URL", &self.nats_url);
            c
        };
        let mut cmd = cmd;
        cmd.env("PORT", port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .env("JWT_SECRET", JWT_SECRET)
            .env("CLIENT_URL", "http://localhost:5173");
        let role = self.gateway_role(k);
        // The gateway settings come after `spawn`'s defaults, so they win.
        let proc = self.spawn(&role, cmd, &self.cfg.gateway_env)?;
        self.gateways[k].proc = Some(proc);
        self.wait_ready(&role, &format!("http://127.0.0.1:{port}/readyz"))
            .await
    }

    async fn wait_ready(&mut self, role: &str, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(proc) = self.proc_mut(role)
                && let Ok(Some(status)) = proc.child.try_wait()
            {
                let log = std::fs::read_to_string(self.dir().join(format!("{role}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{role} exited with {status} while starting:\n{}",
                    tail.join("\n")
                );
            }
            match self.http.get(url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!("{role} not ready at {url} within {READY_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn proc_mut(&mut self, role: &str) -> Option<&mut Proc> {
        self.nats
            .iter_mut()
            .chain(self.ingest.iter_mut())
            .chain(self.gateways.iter_mut().filter_map(|g| g.proc.as_mut()))
            .find(|p| p.role == role)
    }

    /// (role, pid) of every process of the system that runs now.
    pub fn tracked(&self) -> Vec<(String, u32)> {
        self.nats
            .iter()
            .chain(self.ingest.iter())
            .chain(self.gateways.iter().filter_map(|g| g.proc.as_ref()))
            .map(|p| (p.role.clone(), p.pid()))
            .collect()
    }

    pub fn gateway_ports(&self) -> Vec<u16> {
        self.gateways.iter().map(|g| g.port).collect()
    }

    pub fn gateway_pids(&self) -> Vec<Option<u32>> {
        self.gateways
            .iter()
            .map(|g| g.proc.as_ref().map(Proc::pid))
            .collect()
    }

    /// SIGKILL gateway `k`, as a crash would.
    pub fn kill_gateway(&mut self, k: usize) {
        if let Some(mut p) = self.gateways[k].proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// The gateway's Prometheus metrics, summed over labels, by name.
    pub async fn scrape(&self, k: usize) -> anyhow::Result<BTreeMap<String, f64>> {
        let url = format!("http://127.0.0.1:{}/metrics", self.gateways[k].port);
        let text = self.http.get(&url).send().await?.text().await?;
        Ok(parse_metrics(&text))
    }

    /// Stops ingest alone (SIGTERM, up to 10 s to exit, then SIGKILL); NATS keeps running.
    pub async fn stop_ingest(&mut self) {
        if let Some(mut p) = self.ingest.take() {
            terminate(p.pid());
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Stops everything: SIGTERM, up to 10 s to exit, then SIGKILL.
    pub async fn stop(&mut self) {
        let mut procs: Vec<Proc> = self
            .gateways
            .iter_mut()
            .filter_map(|g| g.proc.take())
            .chain(self.ingest.take())
            .collect();
        for p in &procs {
            terminate(p.pid());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut procs {
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if let Some(mut nats) = self.nats.take() {
            terminate(nats.pid());
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(nats.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = nats.child.kill();
            let _ = nats.child.wait();
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let procs = self
            .gateways
            .iter_mut()
            .filter_map(|g| g.proc.as_mut())
            .chain(self.ingest.as_mut())
            .chain(self.nats.as_mut());
        for p in procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// A command that inherits none of the settings the bench sets itself, logging warnings only.
fn base_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "PORT",
        "BIND_ADDRESS",
        "NATS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "CLIENT_URL",
        "INSTAGRAM_APP_SECRET",
        "INSTAGRAM_WEBHOOK_VERIFY_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn").env("RUST_BACKTRACE", "0");
    cmd
}

/// SIGTERM to one process we started.
pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Prometheus text: `name{labels} value` lines summed by name.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key).trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(name.to_owned()).or_default() += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name() {
        let m = parse_metrics(
            "# HELP x\ninstantchat_gateway_events_received_total 12\n\
             instantchat_gateway_events_delivered_total{event_type=\"comments\"} 5\n\
             instantchat_gateway_events_delivered_total{event_type=\"messages\"} 7\n# EOF\n",
        );
        assert_eq!(m["instantchat_gateway_events_received_total"], 12.0);
        assert_eq!(m["instantchat_gateway_events_delivered_total"], 24.0 / 2.0);
    }
}
