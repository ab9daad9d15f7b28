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
