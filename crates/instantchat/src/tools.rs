//! `instantchat token` and `instantchat send`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    instantchat_ingest::config::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration like 30s, 15m, 1h or 7d"))
}

/// Mints a token for `user` seeing `accounts` for `ttl`.
pub fn mint_token(
    secret: &str,
    user: &str,
    accounts: &[String],
    ttl: Duration,
) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
    let claims = json!({ "userId": user, "sub": user, "accounts": accounts, "exp": exp });
    Ok(encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
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
    println!(
        "{}",
        mint_token(&args.secret, &args.user, &accounts, args.ttl)?
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

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
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
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Subscribes and prints events; on a lost connection, reconnects and resumes after the last seq.
pub async fn tail(args: TailArgs) -> anyhow::Result<()> {
    use instantchat_sioclient::{SioClient, SioError};
    let mut since = args.since;
    let mut printed = 0u64;
    let mut attempt = 0u32;
    loop {
        let auth = json!({ "token": args.token });
        let mut client = match SioClient::connect(&args.url, Some(&auth)).await {
            Ok(c) => c,
            Err(SioError::Refused(reason)) => bail!("the gateway refused the token: {reason}"),
            Err(e) if attempt == 0 => bail!(
                "cannot connect to {}: {e}; is the server running?",
                args.url
            ),
            Err(e) => {
                eprintln!("instantchat: reconnecting after: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                attempt += 1;
                continue;
            }
        };
        let mut request = json!({ "eventTypes": list(&args.types), "timestamp": 0 });
        if let Some(accounts) = &args.accounts {
            request["accountIds"] = json!(list(accounts));
        }
        if let Some(since) = since {
            request["since"] = json!(since);
        }
        let reply = client
            .emit_with_ack("subscribe", &request, Duration::from_secs(10))
            .await?;
        if let Some(message) = reply.get("message").and_then(|m| m.as_str()) {
            bail!("subscribe refused: {message}");
        }
        if attempt == 0 {
            eprintln!(
                "instantchat: subscribed to {}; waiting for events (Ctrl-C to stop)",
                reply["eventTypes"]
            );
        }
        attempt += 1;
        loop {
            let (name, data) = match client.next_event(Duration::from_secs(3600)).await {
                Ok(event) => event,
                Err(SioError::Timeout(..)) => continue,
                Err(e) => {
                    eprintln!(
                        "instantchat: connection lost ({e}); resuming after seq {}",
                        since.unwrap_or(0)
                    );
                    break;
                }
            };
            match name.as_str() {
                "webhook_event" => {
                    since = data["seq"].as_u64().or(since);
                    if args.json {
                        println!("{data}");
                    } else {
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
                    printed += 1;
                    if args.count.is_some_and(|c| printed >= c) {
                        client.disconnect().await;
                        return Ok(());
                    }
                }
                "replay_complete" => eprintln!(
                    "instantchat: replayed {} event(s) after seq {}{}",
                    data["count"],
                    data["since"],
                    if data["complete"] == true {
                        ""
                    } else {
                        " (older events are gone: reload)"
                    }
                ),
                "auth_expired" => bail!("the token expired; mint a new one"),
                "error" => eprintln!("instantchat: server error: {}", data["message"]),
                _ => {}
            }
        }
    }
}
