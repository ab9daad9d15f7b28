//! Gateway configuration: env vars with matching flags, every value read as text and checked
//! in [`GatewayOptions::settings`], so that every problem is reported at once, in the same words
//! as ingest's (the pieces come from [`instantchat_service::config`]).
//!
//! Durations are written with a unit (`10s`, `25s`, `2m`), as ingest's are. The older names
//! with a `_SECS` suffix and a bare number of seconds are still read, for configurations
//! written before.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use instantchat_service::config::{
    ConfigError, Problems, Secret, duration, invalid, nats_url, number,
};
use instantchat_service::secrets::check_secret;
use ipnet::IpNet;
use jsonwebtoken::{Algorithm, DecodingKey};

/// Command line and environment of `instantchat-gateway`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "instantchat-gateway",
    version,
    about = "InstantChat Socket.IO gateway: authenticates clients with JWT and delivers the \
             Instagram events of the accounts they may see, from NATS JetStream.",
    after_help = "Every option can also be set with the environment variable shown. Durations \
                  take a unit: 500ms, 10s, 2m, 1h. Run several instances behind a load \
                  balancer; they share nothing but NATS. Every limit is per instance."
)]
pub struct GatewayArgs {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value = "3000")]
    pub port: String,
    /// Address to bind.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind: String,
    /// A second port for `/metrics` and `/admin/connections` (and health), which then leave
    /// PORT: keep it private to the cluster. Unset: all on PORT.
    #[arg(long, env = "OPS_PORT")]
    pub ops_port: Option<String>,
    /// NATS server URL (credentials as nats://user:password@host:4222).
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
    /// not checked, so tokens of any identity provider are accepted.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Comma-separated origins allowed to connect from a browser (CORS); nothing else is allowed.
    #[arg(long, env = "CLIENT_URL", default_value = "http://localhost:3000")]
    pub client_url: String,
    /// `claim`: a user sees the accounts in its token's `accounts` claim; `all`: every user sees
    /// every account (single tenant).
    #[arg(long, env = "ACCOUNT_ACCESS", default_value = "claim")]
    pub account_access: String,
    /// Time a new socket has to authenticate before it is disconnected (default 10s).
    #[arg(long, env = "AUTH_TIMEOUT")]
    pub auth_timeout: Option<String>,
    /// Time after `auth_expired` during which a fresh `authenticate` keeps the socket (default
    /// 30s).
    #[arg(long, env = "AUTH_EXPIRY_GRACE")]
    pub auth_expiry_grace: Option<String>,
    /// Time an authenticated socket may stay silent before it is disconnected; 0s: never
    /// (default 60s).
    #[arg(long, env = "HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<String>,
    /// Time between engine.io pings on each connection, sent to clients in the handshake
    /// (socket.io-client follows it); pings go out on a 250 ms grid, so up to 250 ms later.
    /// Longer: less idle CPU, slower detection of dead peers. Keep it under the idle timeout of
    /// every proxy in front (often 60 s). Default 25s.
    #[arg(long, env = "PING_INTERVAL")]
    pub ping_interval: Option<String>,
    /// Time a client has to answer a ping before its connection is closed; also the longest a
    /// write to a client may stall (default 20s).
    #[arg(long, env = "PING_TIMEOUT")]
    pub ping_timeout: Option<String>,
    /// Time a shutdown may take before remaining connections are dropped (default 10s).
    #[arg(long, env = "SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// Older name of AUTH_TIMEOUT, in seconds.
    #[arg(long, env = "AUTH_TIMEOUT_SECS", hide = true)]
    pub auth_timeout_secs: Option<String>,
    /// Older name of AUTH_EXPIRY_GRACE, in seconds.
    #[arg(long, env = "AUTH_EXPIRY_GRACE_SECS", hide = true)]
    pub auth_expiry_grace_secs: Option<String>,
    /// Older name of HEARTBEAT_TIMEOUT, in seconds.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECS", hide = true)]
    pub heartbeat_timeout_secs: Option<String>,
    /// Older name of PING_INTERVAL, in seconds.
    #[arg(long, env = "PING_INTERVAL_SECS", hide = true)]
    pub ping_interval_secs: Option<String>,
    /// Older name of PING_TIMEOUT, in seconds.
    #[arg(long, env = "PING_TIMEOUT_SECS", hide = true)]
    pub ping_timeout_secs: Option<String>,
    /// Older name of SHUTDOWN_TIMEOUT, in seconds.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", hide = true)]
    pub shutdown_timeout_secs: Option<String>,
    /// Connections one user may hold at once, on this gateway.
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value = "10")]
    pub max_connections_per_user: String,
    /// Requests per second one socket may send (sustained).
    #[arg(long, env = "SOCKET_RATE_LIMIT", default_value = "20")]
    pub socket_rate_limit: String,
    /// Requests one socket may send in a burst.
    #[arg(long, env = "SOCKET_RATE_BURST", default_value = "40")]
    pub socket_rate_burst: String,
    /// New sessions per second from one IP address (sustained), on this gateway.
    #[arg(long, env = "IP_CONNECT_RATE", default_value = "50")]
    pub ip_connect_rate: String,
    /// New sessions one IP address may open in a burst, on this gateway.
    #[arg(long, env = "IP_CONNECT_BURST", default_value = "200")]
    pub ip_connect_burst: String,
    /// Comma-separated addresses or CIDR ranges of proxies in front (load balancer, ingress).
    /// A connection from one of them is counted against the client address it names in
    /// `X-Forwarded-For`, so the per-IP limit applies per client, not per proxy. Empty: the
    /// peer address counts, and `X-Forwarded-For` is ignored (anyone can send it).
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// Largest message a client may send, in bytes.
    #[arg(long, env = "MAX_CLIENT_PAYLOAD_BYTES", default_value = "16384")]
    pub max_client_payload_bytes: String,
    /// Packets queued for one socket before it counts as too slow: its transport is then
    /// closed, and socket.io-client reconnects and resumes by itself.
    #[arg(long, env = "CLIENT_BUFFER_PACKETS", default_value = "1024")]
    pub client_buffer_packets: String,
    /// Engine.io sessions without a Socket.IO connect yet, in all; past it new sessions get
    /// 503 (each such session lives at most AUTH_TIMEOUT).
    #[arg(long, env = "MAX_PENDING_SESSIONS", default_value = "10000")]
    pub max_pending_sessions: String,
    /// Sessions without a Socket.IO connect yet that one address may hold while it opens
    /// sessions faster than IP_CONNECT_RATE; past it its new sessions get 429.
    #[arg(long, env = "MAX_PENDING_PER_IP", default_value = "20")]
    pub max_pending_per_ip: String,
    /// Most events one resume replays; a client that missed more gets none and
    /// `replay_complete` with `complete: false, reason: "too_many"` (it reloads instead).
    #[arg(long, env = "REPLAY_MAX_EVENTS", default_value = "1000")]
    pub replay_max_events: String,
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
    /// Everyone sees everything (the single-tenant behaviour of the Node.js backend).
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
    pub admin_token: Option<Secret>,
}

impl std::fmt::Debug for GatewaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySettings")
            .field("jwt_key", &"<redacted>")
            .field("jwt_algorithm", &self.jwt_algorithm)
            .field("allowed_origins", &self.allowed_origins)
            .field("account_access", &self.account_access)
            .field("admin_token", &self.admin_token)
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
        let mut found = Problems::default();
        let port = found.check(number::<u16>("PORT", &args.port, PORT));
        let ops_port = match &args.ops_port {
            Some(ops) if !ops.trim().is_empty() => {
                found.check(number::<u16>("OPS_PORT", ops, PORT)).map(Some)
            }
            _ => Some(None),
        };
        let nats_url = found.check(nats_url(&args.nats_url));
        let gateway = args
            .gateway
            .settings()
            .map_err(|e| found.0.extend(e.problems))
            .ok();
        found.0.extend(instantchat_telemetry::check_log_settings(
            &args.log_format,
            None,
        ));
        found.finish(|| {
            Some(Config {
                port: port?,
                bind: args.bind,
                ops_port: ops_port?,
                nats_url: nats_url?,
                log_format: args.log_format,
                gateway: gateway?,
            })
        })
    }
}

const PORT: &str = "a port number from 0 to 65535, e.g. 3000";

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

/// A duration setting under its name, or under its older `_SECS` name in seconds.
fn timing(
    found: &mut Problems,
    (var, value): (&str, &Option<String>),
    (old_var, old): (&str, &Option<String>),
    default: &str,
) -> Option<Duration> {
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    match (set(value), set(old)) {
        (Some(_), Some(_)) => {
            found.push(format!(
                "{var} and {old_var} are both set: keep {var} (a duration, e.g. {default})"
            ));
            None
        }
        (None, Some(secs)) => found
            .check(number::<u64>(
                old_var,
                secs,
                &format!("a whole number of seconds, or use {var}={default}"),
            ))
            .map(Duration::from_secs),
        (value, None) => found.check(duration(var, value.unwrap_or(default))),
    }
}

/// A positive number of type `T`.
fn positive<T: std::str::FromStr + PartialOrd + Default>(
    found: &mut Problems,
    var: &str,
    value: &str,
    expected: &str,
) -> Option<T> {
    let n = found.check(number::<T>(var, value, expected))?;
    if n > T::default() {
        Some(n)
    } else {
        found.push(invalid(var, value, expected));
        None
    }
}

/// The key tokens are verified with, and its algorithm.
fn jwt_key(found: &mut Problems, options: &GatewayOptions) -> Option<(DecodingKey, Algorithm)> {
    let secret = options.jwt_secret.as_deref().filter(|s| !s.is_empty());
    match (secret, &options.jwt_public_key) {
        (_, Some(path)) => match std::fs::read(path) {
            Ok(pem) => match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => Some((key, Algorithm::RS256)),
                Err(_) => match DecodingKey::from_ec_pem(&pem) {
                    Ok(key) => Some((key, Algorithm::ES256)),
                    Err(e) => {
                        found.push(format!(
                            "JWT_PUBLIC_KEY: {} is not an RSA or EC public key in PEM: {e}",
                            path.display()
                        ));
                        None
                    }
                },
            },
            Err(e) => {
                found.push(format!(
                    "JWT_PUBLIC_KEY: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        (Some(secret), None) => match check_secret("JWT_SECRET", secret) {
            Ok(()) => Some((
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )),
            Err(problem) => {
                found.push(problem);
                None
            }
        },
        (None, None) => {
            found.push(
                "JWT_SECRET: required (the HS256 secret that signs client tokens), or set \
                 JWT_PUBLIC_KEY for RS256/ES256",
            );
            None
        }
    }
}

/// The key of the secret being rotated out, when there is one.
fn previous_key(found: &mut Problems, options: &GatewayOptions) -> Option<Option<DecodingKey>> {
    // Empty counts as unset (compose passes `${JWT_SECRET_PREVIOUS:-}`).
    let previous = options
        .jwt_secret_previous
        .as_deref()
        .filter(|p| !p.is_empty());
    match (previous, &options.jwt_public_key) {
        (None, _) => Some(None),
        (Some(_), Some(_)) => {
            found.push("JWT_SECRET_PREVIOUS: only with JWT_SECRET (HS256), not JWT_PUBLIC_KEY");
            None
        }
        (Some(previous), None) => match check_secret("JWT_SECRET_PREVIOUS", previous) {
            Ok(()) => Some(Some(DecodingKey::from_secret(previous.as_bytes()))),
            Err(problem) => {
                found.push(problem);
                None
            }
        },
    }
}

/// `CLIENT_URL`: the browser origins allowed.
fn origins(found: &mut Problems, client_url: &str) -> Vec<String> {
    let origins: Vec<String> = client_url
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        found.push("CLIENT_URL: give at least one origin, e.g. https://app.example.com");
    }
    for origin in &origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://")) {
            found.push(format!("CLIENT_URL: `{origin}` is not an http(s) origin"));
        }
    }
    origins
}

/// `TRUSTED_PROXIES`: addresses and ranges.
fn proxies(found: &mut Problems, list: &str) -> Vec<IpNet> {
    let mut trusted = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(net) => trusted.push(net),
            Err(_) => found.push(format!(
                "TRUSTED_PROXIES: `{entry}` is neither an IP address nor a CIDR range \
                 (e.g. 10.0.0.0/8)"
            )),
        }
    }
    trusted
}

impl GatewayOptions {
    /// Validates every option and reports all problems at once.
    pub fn settings(&self) -> Result<GatewaySettings, ConfigError> {
        let mut found = Problems::default();
        let key = jwt_key(&mut found, self);
        let jwt_previous_key = previous_key(&mut found, self);
        let allowed_origins = origins(&mut found, &self.client_url);
        let account_access = match self.account_access.as_str() {
            "claim" => Some(AccountAccess::Claim),
            "all" => Some(AccountAccess::All),
            other => {
                found.push(format!(
                    "ACCOUNT_ACCESS: `{other}` is neither `claim` nor `all`"
                ));
                None
            }
        };
        let times = self.timings(&mut found);
        let limits = self.limits(&mut found);
        let trusted_proxies = proxies(&mut found, &self.trusted_proxies);
        let admin_token = self
            .admin_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        if let Some(token) = &admin_token {
            found.check(check_secret("ADMIN_TOKEN", token.expose()));
        }
        found.finish(|| {
            let (jwt_key, jwt_algorithm) = key?;
            let (auth_timeout, auth_expiry_grace, heartbeat_timeout, ping, shutdown_timeout) =
                times?;
            let limits = limits?;
            Some(GatewaySettings {
                jwt_key,
                jwt_previous_key: jwt_previous_key?,
                jwt_algorithm,
                jwt_audience: self.jwt_audience.as_deref().and_then(audiences),
                allowed_origins,
                account_access: account_access?,
                auth_timeout,
                auth_expiry_grace,
                heartbeat_timeout,
                ping_interval: ping.0,
                ping_timeout: ping.1,
                max_connections_per_user: limits.max_connections_per_user,
                socket_rate: limits.socket_rate,
                ip_connect_rate: limits.ip_connect_rate,
                trusted_proxies,
                max_client_payload_bytes: limits.max_client_payload_bytes,
                client_buffer_packets: limits.client_buffer_packets,
                max_pending_sessions: limits.max_pending_sessions,
                max_pending_per_ip: limits.max_pending_per_ip,
                replay_max_events: limits.replay_max_events,
                shutdown_timeout,
                admin_token,
            })
        })
    }

    /// The durations: auth timeout, grace, heartbeat timeout, (ping interval, ping timeout),
    /// shutdown timeout.
    #[allow(clippy::type_complexity)]
    fn timings(
        &self,
        found: &mut Problems,
    ) -> Option<(
        Duration,
        Duration,
        Option<Duration>,
        (Duration, Duration),
        Duration,
    )> {
        let at_least_1s = |found: &mut Problems, var: &str, d: Option<Duration>| {
            d.filter(|d| {
                let ok = *d >= Duration::from_secs(1);
                if !ok {
                    found.push(format!("{var}: must be at least 1s"));
                }
                ok
            })
        };
        let auth = timing(
            found,
            ("AUTH_TIMEOUT", &self.auth_timeout),
            ("AUTH_TIMEOUT_SECS", &self.auth_timeout_secs),
            "10s",
        );
        let auth = at_least_1s(found, "AUTH_TIMEOUT", auth);
        let grace = timing(
            found,
            ("AUTH_EXPIRY_GRACE", &self.auth_expiry_grace),
            ("AUTH_EXPIRY_GRACE_SECS", &self.auth_expiry_grace_secs),
            "30s",
        );
        let heartbeat = timing(
            found,
            ("HEARTBEAT_TIMEOUT", &self.heartbeat_timeout),
            ("HEARTBEAT_TIMEOUT_SECS", &self.heartbeat_timeout_secs),
            "60s",
        );
        let interval = timing(
            found,
            ("PING_INTERVAL", &self.ping_interval),
            ("PING_INTERVAL_SECS", &self.ping_interval_secs),
            "25s",
        );
        let interval = at_least_1s(found, "PING_INTERVAL", interval);
        let timeout = timing(
            found,
            ("PING_TIMEOUT", &self.ping_timeout),
            ("PING_TIMEOUT_SECS", &self.ping_timeout_secs),
            "20s",
        );
        let timeout = at_least_1s(found, "PING_TIMEOUT", timeout);
        let shutdown = timing(
            found,
            ("SHUTDOWN_TIMEOUT", &self.shutdown_timeout),
            ("SHUTDOWN_TIMEOUT_SECS", &self.shutdown_timeout_secs),
            "10s",
        );
        Some((
            auth?,
            grace?,
            heartbeat.map(|h| (!h.is_zero()).then_some(h))?,
            (interval?, timeout?),
            shutdown?,
        ))
    }

    fn limits(&self, found: &mut Problems) -> Option<Limits> {
        let count = "a whole number, 1 or more";
        let rate = "a positive number, e.g. 20 or 0.5";
        let max_connections_per_user = positive(
            found,
            "MAX_CONNECTIONS_PER_USER",
            &self.max_connections_per_user,
            count,
        );
        let socket_rate = positive(found, "SOCKET_RATE_LIMIT", &self.socket_rate_limit, rate);
        let socket_burst = positive(found, "SOCKET_RATE_BURST", &self.socket_rate_burst, rate);
        let ip_rate = positive(found, "IP_CONNECT_RATE", &self.ip_connect_rate, rate);
        let ip_burst = positive(found, "IP_CONNECT_BURST", &self.ip_connect_burst, rate);
        let payload: Option<u64> = positive(
            found,
            "MAX_CLIENT_PAYLOAD_BYTES",
            &self.max_client_payload_bytes,
            "a number of bytes, 1024 or more",
        )
        .filter(|&n| {
            n >= 1024 || {
                found.push("MAX_CLIENT_PAYLOAD_BYTES: must be at least 1024");
                false
            }
        });
        let buffer: Option<usize> = positive(
            found,
            "CLIENT_BUFFER_PACKETS",
            &self.client_buffer_packets,
            count,
        )
        .filter(|&n| {
            n >= 16 || {
                found.push("CLIENT_BUFFER_PACKETS: must be at least 16");
                false
            }
        });
        let pending = positive(
            found,
            "MAX_PENDING_SESSIONS",
            &self.max_pending_sessions,
            count,
        );
        let pending_ip = positive(found, "MAX_PENDING_PER_IP", &self.max_pending_per_ip, count);
        let replay = positive(found, "REPLAY_MAX_EVENTS", &self.replay_max_events, count);
        Some(Limits {
            max_connections_per_user: max_connections_per_user?,
            socket_rate: (socket_rate?, socket_burst?),
            ip_connect_rate: (ip_rate?, ip_burst?),
            max_client_payload_bytes: payload?,
            client_buffer_packets: buffer?,
            max_pending_sessions: pending?,
            max_pending_per_ip: pending_ip?,
            replay_max_events: replay?,
        })
    }
}

/// The numeric limits, once checked.
struct Limits {
    max_connections_per_user: usize,
    socket_rate: (f64, f64),
    ip_connect_rate: (f64, f64),
    max_client_payload_bytes: u64,
    client_buffer_packets: usize,
    max_pending_sessions: usize,
    max_pending_per_ip: usize,
    replay_max_events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(flags: &[&str]) -> Result<GatewaySettings, ConfigError> {
        let mut argv = vec![
            "instantchat-gateway",
            "--jwt-secret",
            "a-secret-of-24-bytes-ok",
        ];
        argv.extend_from_slice(flags);
        GatewayArgs::try_parse_from(argv)
            .expect("flags")
            .gateway
            .settings()
    }

    #[test]
    fn every_bad_number_and_duration_is_reported_at_once() {
        let e = settings(&[
            "--max-connections-per-user",
            "many",
            "--socket-rate-limit=-1",
            "--auth-timeout",
            "10",
            "--ping-interval-secs",
            "soon",
            "--replay-max-events",
            "0",
        ])
        .expect_err("refused");
        let all = e.problems.join("\n");
        for var in [
            "MAX_CONNECTIONS_PER_USER",
            "SOCKET_RATE_LIMIT",
            "AUTH_TIMEOUT=\"10\"",
            "PING_INTERVAL_SECS",
            "REPLAY_MAX_EVENTS",
        ] {
            assert!(all.contains(var), "{var} not named in {all}");
        }
    }

    #[test]
    fn durations_by_their_names_or_the_older_seconds() {
        let s = settings(&["--auth-timeout", "3s", "--ping-interval-secs", "5"]).expect("valid");
        assert_eq!(s.auth_timeout, Duration::from_secs(3));
        assert_eq!(s.ping_interval, Duration::from_secs(5));
        assert_eq!(s.heartbeat_timeout, Some(Duration::from_secs(60)));
        let off = settings(&["--heartbeat-timeout", "0s"]).expect("valid");
        assert_eq!(off.heartbeat_timeout, None);
        let both = settings(&["--auth-timeout", "3s", "--auth-timeout-secs", "3"]);
        assert!(both.expect_err("both").problems[0].contains("both set"));
    }
}
