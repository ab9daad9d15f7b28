//! Gateway configuration: env vars with matching flags, parsed once, every problem reported.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey};

/// Command line and environment of `instantchat-gateway`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "instantchat-gateway",
    version,
    about = "InstantChat Socket.IO gateway: authenticates clients with JWT and delivers the \
             Instagram events of the accounts they may see, from NATS JetStream.",
    after_help = "Every option can also be set with the environment variable shown. \
                  Run several instances behind a load balancer; they share nothing but NATS."
)]
pub struct GatewayArgs {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind: String,
    /// A second port for `/metrics` and `/admin/connections` (and health), which then leave
    /// PORT: keep it private to the cluster. Unset: all on PORT.
    #[arg(long, env = "OPS_PORT")]
    pub ops_port: Option<u16>,
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[command(flatten)]
    pub gateway: GatewayOptions,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Settings shared by every binary that runs the gateway (the distributed service and the
/// single-process mode).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayOptions {
    /// HS256 secret that signs client tokens (required unless --jwt-public-key is given).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The HS256 secret being rotated out: tokens signed with it stay valid (until they
    /// expire) while clients move to tokens signed with JWT_SECRET. Unset once they have.
    #[arg(long, env = "JWT_SECRET_PREVIOUS", hide_env_values = true)]
    pub jwt_secret_previous: Option<String>,
    /// PEM file with the public key for RS256 or ES256 tokens (instead of JWT_SECRET).
    #[arg(long, env = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Comma-separated audiences, one of which a token's `aud` claim must name. Unset: `aud` is
    /// not checked (as the seed's jwt.verify), so tokens of any identity provider are accepted.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Comma-separated origins allowed to connect from a browser (CORS); nothing else is allowed.
    #[arg(long, env = "CLIENT_URL", default_value = "http://localhost:3000")]
    pub client_url: String,
    /// `claim`: a user sees the accounts in its token's `accounts` claim; `all`: every user sees
    /// every account (single tenant).
    #[arg(long, env = "ACCOUNT_ACCESS", default_value = "claim")]
    pub account_access: String,
    /// Seconds a new socket has to authenticate before it is disconnected.
    #[arg(long, env = "AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub auth_timeout_secs: u64,
    /// Seconds after `auth_expired` during which a fresh `authenticate` keeps the socket.
    #[arg(long, env = "AUTH_EXPIRY_GRACE_SECS", default_value_t = 30)]
    pub auth_expiry_grace_secs: u64,
    /// Seconds an authenticated socket may stay silent before it is disconnected (0: never).
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECS", default_value_t = 60)]
    pub heartbeat_timeout_secs: u64,
    /// Seconds between engine.io pings on each connection (sent to clients in the handshake;
    /// socket.io-client follows it). Pings go out on a 250 ms grid, so up to 250 ms later.
    /// Longer: less idle CPU, slower detection of dead peers.
    /// Keep it under the idle timeout of every proxy in front (often 60 s).
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 25)]
    pub ping_interval_secs: u64,
    /// Seconds a client has to answer a ping before its connection is closed.
    #[arg(long, env = "PING_TIMEOUT_SECS", default_value_t = 20)]
    pub ping_timeout_secs: u64,
    /// Connections one user may hold at once.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 10)]
    pub max_connections_per_user: usize,
    /// Requests per second one socket may send (sustained).
    #[arg(long, env = "SOCKET_RATE_LIMIT", default_value_t = 20.0)]
    pub socket_rate_limit: f64,
    /// Requests one socket may send in a burst.
    #[arg(long, env = "SOCKET_RATE_BURST", default_value_t = 40.0)]
    pub socket_rate_burst: f64,
    /// New connections per second from one IP address (sustained).
    #[arg(long, env = "IP_CONNECT_RATE", default_value_t = 50.0)]
    pub ip_connect_rate: f64,
    /// New connections one IP address may open in a burst.
    #[arg(long, env = "IP_CONNECT_BURST", default_value_t = 200.0)]
    pub ip_connect_burst: f64,
    /// Comma-separated addresses or CIDR ranges of proxies in front (load balancer, ingress).
    /// A connection from one of them is counted against the client address it names in
    /// `X-Forwarded-For`, so the per-IP limit applies per client, not per proxy. Empty: the
    /// peer address counts, and `X-Forwarded-For` is ignored (anyone can send it).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Largest message a client may send, in bytes.
    #[arg(long, env = "MAX_CLIENT_PAYLOAD_BYTES", default_value_t = 16 * 1024)]
    pub max_client_payload_bytes: u64,
    /// Packets queued for one socket before it counts as too slow: its transport is then
    /// closed, and socket.io-client reconnects and resumes by itself.
    #[arg(long, env = "CLIENT_BUFFER_PACKETS", default_value_t = 1024)]
    pub client_buffer_packets: usize,
    /// Engine.io sessions without a Socket.IO connect yet, in all; past it new sessions get
    /// 503 (each such session lives at most AUTH_TIMEOUT_SECS).
    #[arg(long, env = "MAX_PENDING_SESSIONS", default_value_t = 10_000)]
    pub max_pending_sessions: usize,
    /// Sessions without a Socket.IO connect yet that one address may hold while it opens
    /// sessions faster than IP_CONNECT_RATE; past it its new sessions get 429.
    #[arg(long, env = "MAX_PENDING_PER_IP", default_value_t = 20)]
    pub max_pending_per_ip: usize,
    /// Most events one resume replays; a client that missed more gets none and
    /// `replay_complete` with `complete: false, reason: "too_many"` (it reloads instead).
    #[arg(long, env = "REPLAY_MAX_EVENTS", default_value_t = 1000)]
    pub replay_max_events: u64,
    /// Seconds a shutdown may take before remaining connections are dropped.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
    /// Bearer token of the operator's endpoint `GET /admin/connections`; unset: the endpoint
    /// does not exist (404).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// Which accounts an authenticated user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountAccess {
    /// The token's `accounts` claim decides.
    Claim,
    /// Everyone sees everything (the seed's single-tenant behaviour).
    All,
}

/// The validated settings handlers use.
#[derive(Clone)]
pub struct GatewaySettings {
    pub jwt_key: DecodingKey,
    /// `JWT_SECRET_PREVIOUS`: also accepted, during a rotation.
    pub jwt_previous_key: Option<DecodingKey>,
    pub jwt_algorithm: Algorithm,
    /// `JWT_AUDIENCE`: a token must name one of these in `aud`; `None`, `aud` is not checked.
    pub jwt_audience: Option<Vec<String>>,
    pub allowed_origins: Vec<String>,
    pub account_access: AccountAccess,
    pub auth_timeout: Duration,
    pub auth_expiry_grace: Duration,
    /// `None`: heartbeat checks are off.
    pub heartbeat_timeout: Option<Duration>,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_connections_per_user: usize,
    pub socket_rate: (f64, f64),
    pub ip_connect_rate: (f64, f64),
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    pub max_client_payload_bytes: u64,
    pub client_buffer_packets: usize,
    pub max_pending_sessions: usize,
    pub max_pending_per_ip: usize,
    pub replay_max_events: u64,
    pub shutdown_timeout: Duration,
    /// Token of `GET /admin/connections`; `None`: the endpoint is off.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for GatewaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySettings")
            .field("jwt_key", &"<redacted>")
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("allowed_origins", &self.allowed_origins)
            .field("account_access", &self.account_access)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// The gateway service's whole configuration, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind: String,
    pub ops_port: Option<u16>,
    pub nats_url: String,
    pub log_format: String,
    pub gateway: GatewaySettings,
}

impl Config {
    /// Checks every setting, the log settings included, and reports all problems at once.
    pub fn from_args(args: GatewayArgs) -> Result<Self, ConfigError> {
        let log_problems = instantchat_telemetry::check_log_settings(&args.log_format, None);
        match args.gateway.settings() {
            Ok(gateway) if log_problems.is_empty() => Ok(Config {
                port: args.port,
                bind: args.bind,
                ops_port: args.ops_port,
                nats_url: args.nats_url,
                log_format: args.log_format,
                gateway,
            }),
            result => {
                let mut problems = result.err().map(|e| e.0).unwrap_or_default();
                problems.extend(log_problems);
                Err(ConfigError(problems))
            }
        }
    }
}

/// Every problem found in the configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The audiences a `JWT_AUDIENCE` value names (comma-separated); `None` when it names none.
pub fn audiences(list: &str) -> Option<Vec<String>> {
    let audiences: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    (!audiences.is_empty()).then_some(audiences)
}

impl GatewayOptions {
    /// Validates every option and reports all problems at once.
    pub fn settings(&self) -> Result<GatewaySettings, ConfigError> {
        let mut problems = Vec::new();
        let (jwt_key, jwt_algorithm) = match (&self.jwt_secret, &self.jwt_public_key) {
            (_, Some(path)) => match std::fs::read(path) {
                Ok(pem) => match DecodingKey::from_rsa_pem(&pem) {
                    Ok(key) => (Some(key), Algorithm::RS256),
                    Err(_) => match DecodingKey::from_ec_pem(&pem) {
                        Ok(key) => (Some(key), Algorithm::ES256),
                        Err(e) => {
                            problems.push(format!(
                                "JWT_PUBLIC_KEY: {} is not an RSA or EC public key in PEM: {e}",
                                path.display()
                            ));
                            (None, Algorithm::RS256)
                        }
                    },
                },
                Err(e) => {
                    problems.push(format!(
                        "JWT_PUBLIC_KEY: cannot read {}: {e}",
                        path.display()
                    ));
                    (None, Algorithm::RS256)
                }
            },
            (Some(secret), None) if secret.len() >= 16 => (
                Some(DecodingKey::from_secret(secret.as_bytes())),
                Algorithm::HS256,
            ),
            (Some(_), None) => {
                problems
                    .push("JWT_SECRET: must be at least 16 bytes; use a long random value".into());
                (None, Algorithm::HS256)
            }
            (None, None) => {
                problems.push(
                    "JWT_SECRET: required (the HS256 secret that signs client tokens), or set \
                     JWT_PUBLIC_KEY for RS256/ES256"
                        .into(),
                );
                (None, Algorithm::HS256)
            }
        };
        // Empty counts as unset (compose passes `${JWT_SECRET_PREVIOUS:-}`).
        let previous = self
            .jwt_secret_previous
            .as_deref()
            .filter(|p| !p.is_empty());
        let jwt_previous_key = match (previous, &self.jwt_public_key) {
            (None, _) => None,
            (Some(_), Some(_)) => {
                problems.push(
                    "JWT_SECRET_PREVIOUS: only with JWT_SECRET (HS256), not JWT_PUBLIC_KEY".into(),
                );
                None
            }
            (Some(previous), None) if previous.len() >= 16 => {
                Some(DecodingKey::from_secret(previous.as_bytes()))
            }
            (Some(_), None) => {
                problems
                    .push("JWT_SECRET_PREVIOUS: must be at least 16 bytes, like JWT_SECRET".into());
                None
            }
        };
        let allowed_origins: Vec<String> = self
            .client_url
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if allowed_origins.is_empty() {
            problems
                .push("CLIENT_URL: give at least one origin, e.g. https://app.example.com".into());
        }
        for origin in &allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!("CLIENT_URL: `{origin}` is not an http(s) origin"));
            }
        }
        let account_access = match self.account_access.as_str() {
            "claim" => AccountAccess::Claim,
            "all" => AccountAccess::All,
            other => {
                problems.push(format!(
                    "ACCOUNT_ACCESS: `{other}` is neither `claim` nor `all`"
                ));
                AccountAccess::Claim
            }
        };
        if self.auth_timeout_secs == 0 {
            problems.push("AUTH_TIMEOUT_SECS: must be at least 1".into());
        }
        if self.ping_interval_secs == 0 || self.ping_timeout_secs == 0 {
            problems.push("PING_INTERVAL_SECS and PING_TIMEOUT_SECS: must be at least 1".into());
        }
        if self.max_connections_per_user == 0 {
            problems.push("MAX_CONNECTIONS_PER_USER: must be at least 1".into());
        }
        for (name, value) in [
            ("SOCKET_RATE_LIMIT", self.socket_rate_limit),
            ("SOCKET_RATE_BURST", self.socket_rate_burst),
            ("IP_CONNECT_RATE", self.ip_connect_rate),
            ("IP_CONNECT_BURST", self.ip_connect_burst),
        ] {
            if !(value.is_finite() && value > 0.0) {
                problems.push(format!("{name}: must be a positive number"));
            }
        }
        let mut trusted_proxies = Vec::new();
        for entry in self
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            match entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(net) => trusted_proxies.push(net),
                Err(_) => problems.push(format!(
                    "TRUSTED_PROXIES: `{entry}` is neither an IP address nor a CIDR range \
                     (e.g. 10.0.0.0/8)"
                )),
            }
        }
        if self.max_client_payload_bytes < 1024 {
            problems.push("MAX_CLIENT_PAYLOAD_BYTES: must be at least 1024".into());
        }
        if self.max_pending_sessions == 0 || self.max_pending_per_ip == 0 {
            problems.push("MAX_PENDING_SESSIONS and MAX_PENDING_PER_IP: must be at least 1".into());
        }
        if self.client_buffer_packets < 16 {
            problems.push("CLIENT_BUFFER_PACKETS: must be at least 16".into());
        }
        let admin_token = self
            .admin_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            problems.push(
                "ADMIN_TOKEN: must be at least 16 characters; use a long random value".into(),
            );
        }
        match jwt_key {
            Some(jwt_key) if problems.is_empty() => Ok(GatewaySettings {
                jwt_key,
                jwt_previous_key,
                jwt_algorithm,
                jwt_audience: self.jwt_audience.as_deref().and_then(audiences),
                allowed_origins,
                account_access,
                auth_timeout: Duration::from_secs(self.auth_timeout_secs),
                auth_expiry_grace: Duration::from_secs(self.auth_expiry_grace_secs),
                heartbeat_timeout: (self.heartbeat_timeout_secs > 0)
                    .then(|| Duration::from_secs(self.heartbeat_timeout_secs)),
                ping_interval: Duration::from_secs(self.ping_interval_secs),
                ping_timeout: Duration::from_secs(self.ping_timeout_secs),
                max_connections_per_user: self.max_connections_per_user,
                socket_rate: (self.socket_rate_limit, self.socket_rate_burst),
                ip_connect_rate: (self.ip_connect_rate, self.ip_connect_burst),
                trusted_proxies,
                max_client_payload_bytes: self.max_client_payload_bytes,
                client_buffer_packets: self.client_buffer_packets,
                max_pending_sessions: self.max_pending_sessions,
                max_pending_per_ip: self.max_pending_per_ip,
                replay_max_events: self.replay_max_events,
                shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
                admin_token,
            }),
            _ => Err(ConfigError(problems)),
        }
    }
}
