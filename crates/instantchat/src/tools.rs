//! `instantchat secret`, `token`, `send`, `tail` and `admin`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use instantchat_service::secrets;
use serde_json::{Value, json};

/// Print a new random secret for JWT_SECRET, ADMIN_TOKEN or INSTAGRAM_WEBHOOK_VERIFY_TOKEN (its
/// `--help` text is the doc comment of `Command::Secret` in main.rs).
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:  echo \"JWT_SECRET=$(instantchat secret)\" >> .env")]
pub struct SecretArgs {
    /// Random bytes in the secret (it has twice as many hex digits); 8 or more.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(8..=1024))]
    pub bytes: u16,
}

pub fn secret(args: SecretArgs) -> anyhow::Result<()> {
    let secret = secrets::generate(args.bytes.into())
        .context("reading random bytes from the operating system")?;
    println!("{secret}");
    Ok(())
}

/// Mint a client JWT (HS256) for the gateway.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The user id (`userId` claim).
    #[arg(long, default_value = "dev_user")]
    pub user: String,
    /// Comma-separated Instagram account ids the user may see; `*` for all.
    #[arg(long, default_value = "*")]
    pub accounts: String,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The gateway's JWT secret.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The `aud` claim, for a gateway with JWT_AUDIENCE set (the first of a comma-separated list
    /// is used).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub audience: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    instantchat_service::config::duration_at_least("--ttl", s, Duration::from_secs(1))
}

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let accounts: Vec<String> = args
        .accounts
        .split(',')
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if accounts.is_empty() {
        bail!("--accounts needs at least one account id, or `*`");
    }
    let audiences = args
        .audience
        .as_deref()
        .and_then(instantchat_gateway::config::audiences);
    println!(
        "{}",
        instantchat_gateway::auth::mint_token_for(
            &args.secret,
            &args.user,
            &accounts,
            args.ttl,
            audiences
                .as_ref()
                .and_then(|a| a.first())
                .map(String::as_str),
        )?
    );
    Ok(())
}

/// Send a signed webhook to ingest, as Meta would.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// A webhook body file to send byte for byte (e.g. a fixture); otherwise one event is built
    /// from --type, --account and --text.
    pub file: Option<PathBuf>,
    /// Event type of the built event.
    #[arg(long = "type", default_value = "comments")]
    pub event_type: String,
    /// Instagram account id of the built event.
    #[arg(long, default_value = "17841400000000000")]
    pub account: String,
    /// Text of the built event.
    #[arg(long, default_value = "Hello from instantchat send")]
    pub text: String,
    /// Base URL of ingest (or of the single-process server).
    #[arg(long, env = "INSTANTCHAT_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// App secret to sign with (the first of a comma-separated list is used).
    #[arg(long, env = "INSTAGRAM_APP_SECRET", hide_env_values = true)]
    pub secret: String,
}

/// The tools speak plain HTTP and WebSocket (they are built without TLS): say so up front
/// rather than fail with a transport error.
fn plain_http(url: &str) -> anyhow::Result<()> {
    if !url.starts_with("http://") {
        bail!(
            "{url}: the instantchat tools take an http:// URL (they speak no TLS); reach an \
             https deployment through a plain-HTTP address, e.g. `kubectl port-forward`"
        );
    }
    Ok(())
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    plain_http(&args.url)?;
    let body = match &args.file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let now = time::OffsetDateTime::now_utc();
            let id = format!("cli_{}", now.unix_timestamp_nanos());
            let timestamp = now.format(&time::format_description::well_known::Rfc3339)?;
            serde_json::to_vec(&json!({
                "id": id, "eventType": args.event_type, "accountId": args.account,
                "sender": { "id": "instantchat-cli", "username": "instantchat_cli" },
                "content": args.text, "timestamp": timestamp,
            }))?
        }
    };
    let secret = args.secret.split(',').next().unwrap_or_default().trim();
    let signature = instantchat_instagram::sign(secret.as_bytes(), &body);
    let url = format!("{}/api/webhooks/instagram", args.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is the server running?"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", text.trim());
    }
    println!("{text}");
    // Accepted but not (wholly) usable: ingest keeps the body aside and says why.
    let receipt: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(reason) = receipt["rejected"].as_str() {
        bail!("ingest kept the webhook aside instead of publishing all of it: {reason}");
    }
    Ok(())
}

/// Print the live events of a gateway as a client would see them.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Base URL of the gateway (or of the single-process server).
    #[arg(long, env = "INSTANTCHAT_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Client token (e.g. the one `instantchat dev` prints, or `instantchat token`).
    #[arg(long, env = "INSTANTCHAT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Comma-separated event types to subscribe to.
    #[arg(long, default_value = "comments,live_comments,mentions,messages")]
    pub types: String,
    /// Comma-separated account ids to narrow to (default: every account the token allows).
    #[arg(long)]
    pub accounts: Option<String>,
    /// Replay what is stored after this seq first.
    #[arg(long)]
    pub since: Option<u64>,
    /// Print each event as one JSON line instead of a readable line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Seconds between the `heartbeat`s tail sends: they keep the gateway (HEARTBEAT_TIMEOUT_SECS,
    /// 60 by default) from closing the socket, which only listens, and an unanswered one means
    /// the connection is gone.
    #[arg(long, default_value_t = 20.0, value_parser = positive_secs)]
    pub heartbeat_secs: f64,
}

fn positive_secs(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(secs),
        _ => Err(format!(
            "{value:?} is not a positive number of seconds, e.g. 20"
        )),
    }
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Handshake refusals that say to come back later rather than that the token is bad.
fn refusal_is_temporary(reason: &str) -> bool {
    reason.starts_with("Server is shutting down") || reason.starts_with("Too many connections from")
}

/// Subscribes and prints events; on a lost connection, reconnects and resumes after the last seq.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    plain_http(&args.url)?;
    let mut since = args.since;
    let mut printed = 0u64;
    let mut first = true;
    loop {
        let Some(mut client) = connect_once(&args, first).await? else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Some(reply) = subscribe_once(&mut client, &args, since, first).await? else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if first {
            eprintln!(
                "instantchat: subscribed to {}; waiting for events (Ctrl-C to stop)",
                reply["eventTypes"]
            );
        }
        first = false;
        if follow(&mut client, &args, &mut since, &mut printed).await? {
            client.disconnect().await;
            return Ok(());
        }
    }
}

/// One connection attempt: `Ok(None)` when it is worth retrying (the gateway is draining or
/// busy, or a connection that worked before was lost), an error when the user must act.
async fn connect_once(
    args: &TailArgs,
    first: bool,
) -> anyhow::Result<Option<instantchat_sioclient::SioClient>> {
    use instantchat_sioclient::{SioClient, SioError};
    let auth = json!({ "token": args.token });
    match SioClient::connect(&args.url, Some(&auth)).await {
        Ok(client) => Ok(Some(client)),
        Err(SioError::Refused(reason)) if refusal_is_temporary(&reason) => {
            eprintln!("instantchat: {reason}; retrying in 1 s");
            Ok(None)
        }
        Err(SioError::Refused(reason)) => bail!("the gateway refused the token: {reason}"),
        Err(e) if first => bail!(
            "cannot connect to {}: {e}; is the server running?",
            args.url
        ),
        Err(e) => {
            eprintln!("instantchat: reconnecting after: {e}");
            Ok(None)
        }
    }
}

/// `subscribe` (after `since`, when an event was seen): its reply, `Ok(None)` to retry.
async fn subscribe_once(
    client: &mut instantchat_sioclient::SioClient,
    args: &TailArgs,
    since: Option<u64>,
    first: bool,
) -> anyhow::Result<Option<Value>> {
    let mut request = json!({ "eventTypes": list(&args.types), "timestamp": 0 });
    if let Some(accounts) = &args.accounts {
        request["accountIds"] = json!(list(accounts));
    }
    if let Some(since) = since {
        request["since"] = json!(since);
    }
    let reply = client
        .emit_with_ack("subscribe", &request, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())
        .and_then(
            |reply| match reply.get("message").and_then(|m| m.as_str()) {
                Some(message) => Err(format!("subscribe refused: {message}")),
                None => Ok(reply),
            },
        );
    match reply {
        Ok(reply) => Ok(Some(reply)),
        // The first time, a refusal is the user's to fix (a bad type or account).
        Err(problem) if first => bail!("{problem}"),
        // After a lost connection it is passing (the broker unreachable a moment): retry.
        Err(problem) => {
            eprintln!("instantchat: {problem}; retrying in 1 s");
            Ok(None)
        }
    }
}

/// Prints what arrives on one connection, with a heartbeat every `--heartbeat-secs`, until the
/// connection is lost (`Ok(false)`: reconnect) or `--count` events were printed (`Ok(true)`).
async fn follow(
    client: &mut instantchat_sioclient::SioClient,
    args: &TailArgs,
    since: &mut Option<u64>,
    printed: &mut u64,
) -> anyhow::Result<bool> {
    use instantchat_sioclient::SioError;
    let heartbeat = Duration::from_secs_f64(args.heartbeat_secs);
    let mut next_beat = tokio::time::Instant::now() + heartbeat;
    loop {
        // Time for a heartbeat, events or not: it keeps the socket alive and proves the
        // connection.
        let now = tokio::time::Instant::now();
        let next = if now >= next_beat {
            next_beat = now + heartbeat;
            let beat = json!({ "timestamp": 0, "clientId": "instantchat-tail" });
            match client
                .emit_with_ack("heartbeat", &beat, Duration::from_secs(10))
                .await
            {
                Ok(_) => continue,
                Err(e) => Err(e),
            }
        } else {
            match client.next_event(next_beat - now).await {
                Err(SioError::Timeout(..)) => continue,
                other => other,
            }
        };
        let (name, data) = match next {
            Ok(event) => event,
            Err(e) => {
                match since {
                    Some(seq) => {
                        eprintln!("instantchat: connection lost ({e}); resuming after seq {seq}")
                    }
                    None => eprintln!(
                        "instantchat: connection lost ({e}); reconnecting (no event seen yet to \
                         resume after: events sent meanwhile are not shown)"
                    ),
                }
                return Ok(false);
            }
        };
        match name.as_str() {
            "webhook_event" => {
                *since = data["seq"].as_u64().or(*since);
                print_event(&data, args.json);
                *printed += 1;
                if args.count.is_some_and(|c| *printed >= c) {
                    return Ok(true);
                }
            }
            "replay_complete" => eprintln!(
                "instantchat: replayed {} event(s) after seq {}{}",
                data["count"],
                data["since"],
                match data["reason"].as_str() {
                    _ if data["complete"] == true => String::new(),
                    Some("too_many") => " (more were missed than a resume replays: reload)".into(),
                    Some(reason) => format!(" (incomplete, {reason}: reload)"),
                    None => " (older events are gone: reload)".into(),
                }
            ),
            "auth_expired" => bail!("the token expired; mint a new one"),
            "error" => eprintln!("instantchat: server error: {}", data["message"]),
            _ => {}
        }
    }
}

/// One `webhook_event`: its JSON, or a line for people.
fn print_event(data: &Value, json: bool) {
    if json {
        println!("{data}");
        return;
    }
    let who = data["sender"]["username"]
        .as_str()
        .or(data["sender"]["id"].as_str())
        .unwrap_or("-");
    println!(
        "#{} {} {} account={} from={} {}",
        data["seq"],
        data["timestamp"].as_str().unwrap_or(""),
        data["eventType"].as_str().unwrap_or(""),
        data["accountId"].as_str().unwrap_or(""),
        who,
        data["content"].as_str().unwrap_or("")
    );
}

/// Show a gateway's connected users, sockets and subscriptions (its `/admin/connections`).
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Base URL of the gateway (or of the single-process server).
    #[arg(long, env = "INSTANTCHAT_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// The gateway's ADMIN_TOKEN.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Print the gateway's JSON as it is instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Fetches `/admin/connections` and prints it as tables.
pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    plain_http(&args.url)?;
    let url = format!("{}/admin/connections", args.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(args.token.trim())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is the gateway running?"))?;
    let status = response.status();
    match status.as_u16() {
        200 => {}
        401 => bail!("{url} refused the token (401): check ADMIN_TOKEN"),
        404 => bail!("{url} does not exist (404): start the gateway with ADMIN_TOKEN set"),
        _ => {
            let text = response.text().await.unwrap_or_default();
            bail!("{url} answered {status}: {}", one_line(&text));
        }
    }
    let view: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render_admin(&view));
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > 200 {
        format!("{}...", &line[..line.floor_char_boundary(200)])
    } else {
        line
    }
}

/// `1h02m`, `3m05s`, `12s`.
fn duration_words(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn join_list(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Array(items) if items.is_empty() => "-".to_owned(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// The readable form of `/admin/connections`: a summary line, then one row per socket.
pub fn render_admin(view: &serde_json::Value) -> String {
    let server = &view["server"];
    let now = server["now"].as_u64().unwrap_or(0);
    let mut out = format!(
        "gateway {}  up {}  bus {}{}  interest: {}\n",
        server["version"].as_str().unwrap_or("?"),
        duration_words(server["uptimeSecs"].as_u64().unwrap_or(0)),
        server["bus"].as_str().unwrap_or("?"),
        if server["draining"] == true {
            " (draining)"
        } else {
            ""
        },
        match &server["interestAccounts"] {
            serde_json::Value::String(s) if s == "*" => "all accounts".to_owned(),
            serde_json::Value::Array(a) if a.is_empty() => "none".to_owned(),
            serde_json::Value::Array(a) => format!(
                "{} account(s): {}",
                a.len(),
                join_list(&server["interestAccounts"])
            ),
            other => other.to_string(),
        }
    );
    out.push_str(&format!(
        "{} socket(s), {} authenticated, {} user(s)\n",
        server["sockets"], server["authenticatedSockets"], server["users"]
    ));
    let mut rows = Vec::new();
    let mut push = |user: &str, socket: &serde_json::Value| {
        let since = socket["connectedAt"].as_u64().map_or_else(
            || "-".to_owned(),
            |at| format!("{} ago", duration_words(now.saturating_sub(at) / 1000)),
        );
        rows.push(vec![
            user.to_owned(),
            socket["id"].as_str().unwrap_or("?").to_owned(),
            socket["transport"].as_str().unwrap_or("?").to_owned(),
            join_list(&socket["subscriptions"]),
            join_list(&socket["accounts"]),
            socket["lastSeq"].to_string(),
            since,
        ]);
    };
    for user in view["users"].as_array().into_iter().flatten() {
        let name = user["userId"].as_str().unwrap_or("?");
        for socket in user["sockets"].as_array().into_iter().flatten() {
            push(name, socket);
        }
    }
    for socket in view["unauthenticated"].as_array().into_iter().flatten() {
        push("(not authenticated)", socket);
    }
    if rows.is_empty() {
        out.push_str("no sockets connected\n");
    } else {
        out.push('\n');
        out.push_str(&table(
            &[
                "USER",
                "SOCKET",
                "TRANSPORT",
                "SUBSCRIPTIONS",
                "ACCOUNTS",
                "LAST SEQ",
                "CONNECTED",
            ],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod admin_tests {
    use super::*;

    #[test]
    fn the_admin_view_renders_as_a_table() {
        let view = json!({
            "server": {
                "version": "0.1.0", "uptimeSecs": 3725, "bus": "nats", "draining": false,
                "interestAccounts": ["17841400000000001"], "sockets": 2,
                "authenticatedSockets": 1, "users": 1, "now": 1_000_000
            },
            "users": [{ "userId": "alice", "sockets": [{
                "id": "abc", "transport": "websocket", "user": "alice",
                "subscriptions": ["comments", "messages"], "accounts": ["17841400000000001"],
                "lastSeq": 42, "connectedAt": 940_000
            }]}],
            "unauthenticated": [{
                "id": "def", "transport": "polling", "user": null, "subscriptions": [],
                "accounts": [], "lastSeq": 0, "connectedAt": 999_000
            }]
        });
        let text = render_admin(&view);
        assert!(
            text.starts_with(
                "gateway 0.1.0  up 1h02m  bus nats  interest: 1 account(s): 17841400000000001\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("2 socket(s), 1 authenticated, 1 user(s)"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("USER"))
            .expect("a header");
        let alice = lines[header + 1];
        assert!(alice.starts_with("alice"), "{text}");
        assert!(alice.contains("comments,messages"), "{text}");
        assert!(alice.contains("42"), "{text}");
        assert!(alice.ends_with("1m00s ago"), "{text}");
        assert_eq!(
            lines[header].find("SUBSCRIPTIONS"),
            alice.find("comments"),
            "columns line up: {text}"
        );
        assert!(
            lines[header + 2].starts_with("(not authenticated)"),
            "{text}"
        );
    }
}
