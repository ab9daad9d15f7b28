//! The single-process mode: ingest and gateway on one port, `/api/webhooks/instagram` and
//! `/socket.io` side by side, over the in-process bus (resume included) or NATS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use instantchat_broker::{EventBus, MemoryBus, NatsBus, Retention};
use instantchat_gateway::auth::mint_token_for;
use instantchat_gateway::config::audiences;
use instantchat_gateway::{Gateway, GatewayOptions};
use instantchat_ingest::config::WebhookOptions;
use instantchat_ingest::{IngestState, webhook_router};
use instantchat_service::config::ConfigError;
use instantchat_service::secrets;

use crate::console::{self, DevLogin};

/// Settings of `instantchat dev` and `instantchat serve`.
#[derive(Debug, clap::Args)]
pub struct SingleArgs {
    /// TCP port for everything: webhooks, Socket.IO, health and metrics.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Address to bind (dev: 127.0.0.1; serve: 0.0.0.0).
    #[arg(long, env = "BIND_ADDRESS")]
    pub bind: Option<String>,
    /// Use NATS JetStream at this URL instead of the in-process bus.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    #[command(flatten)]
    pub webhook: WebhookOptions,
    /// Events kept for resume, by the in-process bus or, with NATS_URL, by the stream (0: no
    /// count limit; events older than 24 h go either way).
    #[arg(long, env = "EVENT_MAX_COUNT", default_value_t = 100_000)]
    pub max_events: u64,
    #[command(flatten)]
    pub gateway: GatewayOptions,
}

/// Runs until SIGINT/SIGTERM. `dev` fills in missing secrets and prints how to use them.
/// `log_problems`: what [`instantchat_telemetry::check_log_settings`] found, refused with the rest.
pub async fn run(mut args: SingleArgs, dev: bool, log_problems: Vec<String>) -> anyhow::Result<()> {
    let mut generated = Vec::new();
    if dev {
        // An empty variable is unset here, as everywhere else.
        let unset = |v: &Option<String>| v.as_deref().is_none_or(|v| v.trim().is_empty());
        if unset(&args.gateway.jwt_secret) && args.gateway.jwt_public_key.is_none() {
            args.gateway.jwt_secret = Some(secrets::generate(24)?);
            generated.push("JWT_SECRET");
        }
        if unset(&args.webhook.instagram_app_secret) {
            // 32 hex digits, as Meta's app secrets.
            args.webhook.instagram_app_secret = Some(secrets::generate(16)?);
            generated.push("INSTAGRAM_APP_SECRET");
        }
        if unset(&args.webhook.instagram_webhook_verify_token) {
            args.webhook.instagram_webhook_verify_token = Some(secrets::generate(16)?);
            generated.push("INSTAGRAM_WEBHOOK_VERIFY_TOKEN");
        }
        if args.gateway.client_url == "http://localhost:3000" {
            args.gateway.client_url =
                format!("http://localhost:{0},http://127.0.0.1:{0}", args.port);
        }
    }
    let mut problems = log_problems;
    let ingest_settings = args.webhook.settings().map_err(|p| problems.extend(p)).ok();
    let gateway_settings = match args.gateway.settings() {
        Ok(s) => Some(s),
        Err(e) => {
            problems.extend(e.problems);
            None
        }
    };
    let (Some(ingest_settings), Some(gateway_settings)) = (ingest_settings, gateway_settings)
    else {
        bail!(
            "{}\nRun with --help for every setting.",
            ConfigError { problems }
        );
    };
    let retention = Retention {
        max_events: args.max_events,
        ..Retention::default()
    };
    let mut nats_client = None;
    let bus: Arc<dyn EventBus> = match &args.nats_url {
        Some(url) => {
            let nats = NatsBus::connect(url, "instantchat", retention)
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?;
            nats_client = Some(nats.client().clone());
            Arc::new(nats)
        }
        None => Arc::new(MemoryBus::new(retention)),
    };
    let ingest = IngestState::new(ingest_settings, bus.clone());
    let gateway = Gateway::new(gateway_settings, bus.clone());
    // One `/metrics` for both services.
    gateway.register_metrics(|registry| ingest.metrics().register(registry));
    if let Some(client) = nats_client {
        ingest.metrics().watch_nats(client.clone());
        gateway.watch_nats(client);
    }
    let dev_login = if dev { dev_login(&args)? } else { None };
    let router = gateway.router_with(
        webhook_router(ingest).merge(console::router(dev_login.clone())),
        false,
    );
    let bind = args
        .bind
        .clone()
        .unwrap_or_else(|| if dev { "127.0.0.1" } else { "0.0.0.0" }.to_owned());
    let listener = tokio::net::TcpListener::bind((bind.as_str(), args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {bind}:{}; is the port free? (set PORT)",
                args.port
            )
        })?;
    let port = listener.local_addr()?.port();
    if dev {
        print_banner(&args, port, &generated, dev_login.as_ref())?;
    }
    tracing::info!(%bind, port, bus = bus.kind(), "instantchat listening");
    gateway
        .serve_router(
            router,
            listener,
            None,
            instantchat_service::shutdown::signal(),
        )
        .await?;
    Ok(())
}

/// The token `dev` prints and offers the console: user dev_user, every account, 24 h.
fn dev_login(args: &SingleArgs) -> anyhow::Result<Option<DevLogin>> {
    let Some(jwt_secret) = args.gateway.jwt_secret.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    // A token the gateway takes: with its first audience when JWT_AUDIENCE names some.
    let audiences = args.gateway.jwt_audience.as_deref().and_then(audiences);
    let token = mint_token_for(
        jwt_secret,
        "dev_user",
        &["*".to_owned()],
        Duration::from_secs(24 * 3600),
        audiences
            .as_ref()
            .and_then(|a| a.first())
            .map(String::as_str),
    )?;
    Ok(Some(DevLogin {
        token,
        user_id: "dev_user".to_owned(),
        key: secrets::random_hex(16)?,
    }))
}

fn print_banner(
    args: &SingleArgs,
    port: u16,
    generated: &[&str],
    login: Option<&DevLogin>,
) -> anyhow::Result<()> {
    let jwt_secret = args.gateway.jwt_secret.clone().unwrap_or_default();
    let app_secret = args
        .webhook
        .instagram_app_secret
        .clone()
        .unwrap_or_default();
    let base = format!("http://127.0.0.1:{port}");
    let bus = if args.nats_url.is_some() {
        "NATS JetStream"
    } else {
        "in-process bus"
    };
    println!("InstantChat is running on {base} ({bus})");
    println!();
    match login {
        Some(login) => println!(
            "  console:    {base}/#k={}   (live events in the browser, dev token prefilled)",
            login.key
        ),
        None => println!("  console:    {base}/             (live events in the browser)"),
    }
    println!("  Socket.IO:  {base}/socket.io    webhooks: {base}/api/webhooks/instagram");
    println!("  health:     {base}/healthz      metrics:  {base}/metrics");
    if !generated.is_empty() {
        println!();
        println!(
            "Development secrets (generated now: {}):",
            generated.join(", ")
        );
    } else {
        println!();
        println!("Secrets:");
    }
    println!("  export JWT_SECRET={jwt_secret}");
    println!("  export INSTAGRAM_APP_SECRET={app_secret}");
    println!(
        "  export INSTAGRAM_WEBHOOK_VERIFY_TOKEN={}",
        args.webhook
            .instagram_webhook_verify_token
            .clone()
            .unwrap_or_default()
    );
    println!("  export INSTANTCHAT_URL={base}");
    println!();
    match login {
        Some(login) => {
            println!(
                "Token for user dev_user, all accounts, valid 24 h (for `tail` and the console):"
            );
            println!("  export INSTANTCHAT_TOKEN={}", login.token);
        }
        None => println!("Tokens: JWT_PUBLIC_KEY is set, so mint them with your private key."),
    }
    println!();
    println!("Next, in another terminal (with the exports above):");
    println!("  cargo run --release -p instantchat -- tail");
    println!("and in a third:");
    println!("  cargo run --release -p instantchat -- send --type comments --text 'Hello'");
    println!();
    // Tools that drive `dev` read these lines; flush so a pipe sees them at once.
    use std::io::Write;
    std::io::stdout().flush()?;
    Ok(())
}
