//! `instantchat`: the whole system on one machine, and the operator's tools.

use clap::{Parser, Subcommand};
use instantchat::{single, tools};

#[derive(Debug, Parser)]
#[command(
    name = "instantchat",
    version,
    about = "InstantChat realtime backend: Instagram webhooks in, Socket.IO notifications out.",
    after_help = "Start with `instantchat dev`: everything in one process, no NATS needed."
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run ingest and gateway in one process for development: generates missing secrets and
    /// prints them with a ready-made token. Binds 127.0.0.1; CLIENT_URL left at its default
    /// allows the process's own console (http://localhost:PORT and http://127.0.0.1:PORT).
    Dev(single::SingleArgs),
    /// Run ingest and gateway in one process for a small install: secrets are required.
    Serve(single::SingleArgs),
    /// Print a new random secret (for JWT_SECRET, ADMIN_TOKEN, INSTAGRAM_WEBHOOK_VERIFY_TOKEN).
    ///
    /// Random bytes from the operating system as hex (as `openssl rand -hex 32` prints them), on
    /// one line and nothing else.
    ///
    /// Use it for JWT_SECRET (give the same value to whatever mints client tokens), ADMIN_TOKEN,
    /// and INSTAGRAM_WEBHOOK_VERIFY_TOKEN (enter the same value in the Meta App Dashboard when you
    /// subscribe the webhook). INSTAGRAM_APP_SECRET is not yours to choose: it is the app secret
    /// the Meta App Dashboard shows.
    ///
    /// The services refuse the example values published with InstantChat and values too weak to
    /// be real (under 16 characters, few distinct characters, a piece repeated, a placeholder);
    /// what this prints always passes.
    Secret(tools::SecretArgs),
    /// Mint a client JWT for the gateway.
    Token(tools::TokenArgs),
    /// Send a signed webhook to ingest, as Meta would.
    Send(tools::SendArgs),
    /// Print a gateway's live events as a client sees them (resumes after a lost connection).
    Tail(tools::TailArgs),
    /// Show a gateway's connected users, sockets and subscriptions (needs its ADMIN_TOKEN).
    Admin(tools::AdminArgs),
}

/// `dev` and `serve`: logs start only with valid log settings; `run` refuses bad ones together
/// with its own.
async fn single_process(
    args: single::SingleArgs,
    dev: bool,
    log_format: &str,
) -> anyhow::Result<()> {
    let log_problems = instantchat_telemetry::check_log_settings(log_format, None);
    // Flushes pending spans when the server stops.
    let _telemetry = log_problems
        .is_empty()
        .then(|| instantchat_telemetry::init("instantchat", log_format));
    // Every client socket is a file; containers start with a soft limit of 1,024.
    instantchat_service::limits::raise_and_log();
    single::run(args, dev, log_problems).await
}

/// As in `instantchat-gateway`: the fan-out allocates on one thread what the connections free
/// on another, which mimalloc does without the locks glibc's malloc takes.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("instantchat: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => single_process(args, true, &cli.log_format).await,
            Command::Serve(args) => single_process(args, false, &cli.log_format).await,
            Command::Secret(args) => tools::secret(args),
            Command::Token(args) => tools::token(args),
            Command::Send(args) => tools::send(args).await,
            Command::Tail(args) => tools::tail(args).await,
            Command::Admin(args) => tools::admin(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line (with its causes), never a backtrace.
            eprintln!("instantchat: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
