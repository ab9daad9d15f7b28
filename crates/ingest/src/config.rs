//! Configuration: every setting comes from an environment variable or the matching flag, is parsed
//! once at start-up into [`Config`], and every problem is reported at once, so an operator fixes
//! a deployment in one round instead of one variable per restart.

use std::time::Duration;

use clap::Parser;
use instantchat_broker::Retention;
pub use instantchat_service::config::{ConfigError, Secret};
use instantchat_service::config::{Problems, duration_at_least, invalid, nats_url};
use instantchat_service::secrets::check_secret;
pub use instantchat_telemetry::LogFormat;

/// The raw settings as clap reads them (flag, else env var, else default). Values stay strings
/// so that [`Config::from_args`] can check all of them and report every problem together.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "instantchat-ingest",
    version,
    about = "Receives Meta's Instagram webhooks, verifies and normalizes them, and publishes them \
             durably to NATS JetStream before answering 200.",
    after_help = "Every flag can also be set with the environment variable shown; a flag wins over \
                  the variable. All problems are reported at once; invalid settings exit with code 2."
)]
pub struct Args {
    /// TCP port the HTTP server listens on (0 picks a free one).
    #[arg(long, env = "PORT", default_value = "8080", allow_hyphen_values = true)]
    pub port: String,

    /// NATS server URL; the service starts while NATS is down and reports not ready until it is up.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    #[command(flatten)]
    pub webhook: WebhookOptions,

    /// How long events stay in the stream for replay (e.g. 30s, 15m, 24h, 7d).
    #[arg(
        long,
        env = "EVENT_RETENTION",
        default_value = "24h",
        allow_hyphen_values = true
    )]
    pub event_retention: String,

    /// At most this many events are kept in the stream (0: no count limit).
    #[arg(
        long,
        env = "EVENT_MAX_COUNT",
        default_value = "1000000",
        allow_hyphen_values = true
    )]
    pub event_max_count: String,

    /// A redelivered webhook within this window publishes no second event (e.g. 2h).
    #[arg(
        long,
        env = "DEDUP_WINDOW",
        default_value = "2h",
        allow_hyphen_values = true
    )]
    pub dedup_window: String,

    /// Copies NATS keeps of each stream: 1 on a single server, 3 in a three-server cluster so
    /// that the streams, and so webhooks and resumes, outlive one server down (1 to 5).
    #[arg(
        long,
        env = "STREAM_REPLICAS",
        default_value = "1",
        allow_hyphen_values = true
    )]
    pub stream_replicas: String,

    /// Log filter in tracing's env-filter syntax (e.g. `info`, `instantchat_ingest=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// Log output: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// The webhook settings as clap reads them: flattened into [`Args`], and into the single-process
/// binary's settings, so both take the same flags and variables.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookOptions {
    /// App secret(s) Meta signs webhooks with (X-Hub-Signature-256), comma-separated: the
    /// Instagram app secret for Instagram-Login apps, the Meta app secret for Facebook-Login apps.
    /// Required; example values and weak ones (under 16 characters, ...) are refused.
    #[arg(long, env = "INSTAGRAM_APP_SECRET", hide_env_values = true)]
    pub instagram_app_secret: Option<String>,

    /// Token Meta echoes when verifying the webhook subscription (GET). Unset or empty: every
    /// verification request is refused with 403. Example values and weak ones are refused:
    /// `instantchat secret` prints a good one.
    #[arg(long, env = "INSTAGRAM_WEBHOOK_VERIFY_TOKEN", hide_env_values = true)]
    pub instagram_webhook_verify_token: Option<String>,

    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[arg(
        long,
        env = "WEBHOOK_MAX_BODY_BYTES",
        default_value = "4194304",
        allow_hyphen_values = true
    )]
    pub webhook_max_body_bytes: String,
}

impl WebhookOptions {
    /// The checked settings, or every problem found (see [`webhook_settings`]).
    pub fn settings(&self) -> Result<IngestSettings, Vec<String>> {
        webhook_settings(
            self.instagram_app_secret.as_deref(),
            self.instagram_webhook_verify_token.as_deref(),
            &self.webhook_max_body_bytes,
        )
    }
}

/// The ingest service's settings, parsed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port to bind; 0 lets the OS choose (tests).
    pub port: u16,
    /// Where the broker is.
    pub nats_url: String,
    /// What the HTTP handlers need; shared with the single-process binary.
    pub ingest: IngestSettings,
    /// Stream retention and dedup window, applied when the streams are created or updated.
    pub retention: Retention,
    /// `RUST_LOG` filter, already checked to parse.
    pub log_filter: String,
    /// How logs are printed.
    pub log_format: LogFormat,
}

/// The settings the webhook handlers need, and nothing else, so that another binary can mount
/// [`router`](crate::router) with its own configuration.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Every secret a valid signature may be made with (at least one).
    pub app_secrets: Vec<Secret>,
    /// The subscription verify token; `None` refuses every verification request.
    pub verify_token: Option<Secret>,
    /// Bodies larger than this are refused with 413 before they are verified.
    pub max_body_bytes: usize,
}

impl Config {
    /// Checks every setting and collects every problem.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let mut found = Problems::default();
        let port = found.check(args.port.trim().parse::<u16>().map_err(|_| {
            invalid(
                "PORT",
                &args.port,
                "a port number from 0 to 65535, e.g. 8080",
            )
        }));
        let nats_url = found.check(nats_url(&args.nats_url));
        let ingest = args.webhook.settings().map_err(|p| found.0.extend(p)).ok();
        let retention = retention(&mut found, &args);
        let log_problems =
            instantchat_telemetry::check_log_settings(&args.log_format, Some(&args.rust_log));
        let log_format = if log_problems.is_empty() {
            Some(LogFormat::parse(&args.log_format))
        } else {
            found.0.extend(log_problems);
            None
        };
        found.finish(|| {
            Some(Config {
                port: port?,
                nats_url: nats_url?,
                ingest: ingest?,
                retention: retention?,
                log_filter: args.rust_log,
                log_format: log_format?,
            })
        })
    }
}

/// `EVENT_RETENTION`, `EVENT_MAX_COUNT`, `DEDUP_WINDOW` and `STREAM_REPLICAS`.
fn retention(found: &mut Problems, args: &Args) -> Option<Retention> {
    let at_least_a_second = |var, value| duration_at_least(var, value, Duration::from_secs(1));
    let max_age = found.check(at_least_a_second("EVENT_RETENTION", &args.event_retention));
    let max_events = found.check(args.event_max_count.trim().parse::<u64>().map_err(|_| {
        invalid(
            "EVENT_MAX_COUNT",
            &args.event_max_count,
            "a whole number of events, 0 for no limit, e.g. 1000000",
        )
    }));
    let window = found.check(at_least_a_second("DEDUP_WINDOW", &args.dedup_window));
    let dedup_window = match (max_age, window) {
        // nats-server refuses a stream whose dedup window outlasts its events.
        (Some(max_age), Some(window)) if window > max_age => {
            found.push(format!(
                "DEDUP_WINDOW={:?} is longer than EVENT_RETENTION={:?}, which NATS refuses: set \
                 DEDUP_WINDOW to EVENT_RETENTION or less",
                args.dedup_window.trim(),
                args.event_retention.trim()
            ));
            None
        }
        (_, window) => window,
    };
    let replicas = found.check(
        args.stream_replicas
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=5).contains(n))
            .ok_or_else(|| {
                invalid(
                    "STREAM_REPLICAS",
                    &args.stream_replicas,
                    "a whole number from 1 to 5: 1 on a single NATS server, 3 in a three-server \
                     cluster",
                )
            }),
    );
    Some(Retention {
        max_age: max_age?,
        max_events: max_events?,
        dedup_window: dedup_window?,
        replicas: replicas?,
    })
}

/// The webhook settings from their raw values (`INSTAGRAM_APP_SECRET`,
/// `INSTAGRAM_WEBHOOK_VERIFY_TOKEN`, `WEBHOOK_MAX_BODY_BYTES`), with every problem found: the
/// same checks for `instantchat-ingest` and for the single-process binary. An empty verify token
/// counts as none, so the subscription check is refused rather than matched by an empty
/// `hub.verify_token`. Every app secret and the verify token go through
/// [`check_secret`]: a value published in this repository or too weak to be real is refused.
pub fn webhook_settings(
    app_secret: Option<&str>,
    verify_token: Option<&str>,
    max_body_bytes: &str,
) -> Result<IngestSettings, Vec<String>> {
    let mut found = Problems::default();
    let app_secrets = app_secrets(app_secret).map_err(|p| found.0.extend(p)).ok();
    let verify_token = verify_token.filter(|t| !t.is_empty());
    if let Some(token) = verify_token {
        found.check(check_secret("INSTAGRAM_WEBHOOK_VERIFY_TOKEN", token));
    }
    let max_body_bytes = found.check(
        max_body_bytes
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "WEBHOOK_MAX_BODY_BYTES",
                    max_body_bytes,
                    "a positive number of bytes, e.g. 4194304 (4 MiB)",
                )
            }),
    );
    match (app_secrets, max_body_bytes) {
        (Some(app_secrets), Some(max_body_bytes)) if found.is_empty() => Ok(IngestSettings {
            app_secrets,
            verify_token: verify_token.map(Secret::new),
            max_body_bytes,
        }),
        _ => Err(found.0),
    }
}

/// The app secrets, or one problem per unusable item (an empty item is one problem for all).
fn app_secrets(value: Option<&str>) -> Result<Vec<Secret>, Vec<String>> {
    let Some(value) = value else {
        return Err(vec![
            "INSTAGRAM_APP_SECRET is not set: set it to your app secret from the Meta \
                    App Dashboard (comma-separated when apps with Instagram and Facebook login \
                    both deliver here); without it no webhook can be verified"
                .into(),
        ]);
    };
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    let empty: Vec<String> = items
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_empty())
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    if !empty.is_empty() {
        return Err(vec![format!(
            "INSTAGRAM_APP_SECRET has {} empty item(s) (position {} of {}): list non-empty \
             secrets separated by commas, with no stray comma",
            empty.len(),
            empty.join(", "),
            items.len()
        )]);
    }
    let weak: Vec<String> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let setting = match items.len() {
                1 => "INSTAGRAM_APP_SECRET".to_owned(),
                n => format!("INSTAGRAM_APP_SECRET (item {} of {n})", i + 1),
            };
            check_secret(&setting, item).err()
        })
        .collect();
    if !weak.is_empty() {
        return Err(weak);
    }
    Ok(items.into_iter().map(Secret::new).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// App secrets as Meta makes them (32 hex digits), and a generated verify token.
    const APP_SECRET: &str = "4f1c9a2be07d3856a1c4e9f02b7d6a35";
    const OTHER_APP_SECRET: &str = "9e07d3856a1c4e9f02b7d6a354f1c9a2";
    const VERIFY_TOKEN: &str = "5d0c2e8b9f1b5d0c7e3a9f1b";

    fn args(pairs: &[(&str, &str)]) -> Args {
        let mut argv = vec!["instantchat-ingest".to_owned()];
        for (flag, value) in pairs {
            argv.push(format!("--{flag}={value}"));
        }
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn durations() {
        let retention = |value: &str| {
            Config::from_args(args(&[
                ("instagram-app-secret", APP_SECRET),
                ("event-retention", value),
                ("dedup-window", "1s"),
            ]))
            .map(|c| c.retention.max_age)
        };
        assert_eq!(retention("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(retention("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(retention("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(retention("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(retention("1h 30m"), Ok(Duration::from_secs(5_400)));
        for bad in ["", "h", "0s", "5", "5x", "-5s", "99999999999999999999d"] {
            let err = retention(bad).unwrap_err();
            assert!(
                err.problems[0].starts_with("EVENT_RETENTION="),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn defaults_with_a_secret() {
        let both = format!("{APP_SECRET}, {OTHER_APP_SECRET}");
        let config = Config::from_args(args(&[("instagram-app-secret", &both)])).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(
            config.ingest.app_secrets,
            vec![Secret::new(APP_SECRET), Secret::new(OTHER_APP_SECRET)]
        );
        assert_eq!(config.ingest.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(config.retention, Retention::default());
        assert!(
            !format!("{config:?}").contains(APP_SECRET),
            "secrets never print"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::from_args(args(&[
            ("port", "abc"),
            ("instagram-app-secret", "a,,b"),
            ("webhook-max-body-bytes", "-1"),
            ("event-retention", "forever"),
            ("log-format", "xml"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for var in [
            "PORT",
            "INSTAGRAM_APP_SECRET",
            "WEBHOOK_MAX_BODY_BYTES",
            "EVENT_RETENTION",
            "LOG_FORMAT",
        ] {
            assert!(text.contains(var), "{var} missing from {text}");
        }
        assert_eq!(err.problems.len(), 5);
    }

    #[test]
    fn a_dedup_window_longer_than_the_retention_is_refused() {
        let with = |retention, window| {
            Config::from_args(args(&[
                ("instagram-app-secret", APP_SECRET),
                ("event-retention", retention),
                ("dedup-window", window),
            ]))
        };
        let err = with("1h", "2h").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.problems[0].contains("DEDUP_WINDOW=\"2h\" is longer than EVENT_RETENTION=\"1h\"")
        );
        assert!(with("2h", "2h").is_ok());
    }

    #[test]
    fn stream_replicas_are_one_to_five() {
        let with = |n| {
            Config::from_args(args(&[
                ("instagram-app-secret", APP_SECRET),
                ("stream-replicas", n),
            ]))
        };
        assert_eq!(with("3").unwrap().retention.replicas, 3);
        for bad in ["0", "6", "three", "-1"] {
            let err = with(bad).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{bad}");
            assert!(err.problems[0].starts_with("STREAM_REPLICAS="), "{bad}");
            assert!(err.problems[0].contains("from 1 to 5"), "{bad}");
        }
    }

    #[test]
    fn an_empty_verify_token_is_no_token() {
        let with = |token| webhook_settings(Some(APP_SECRET), token, "1024").expect("valid");
        assert_eq!(with(Some("")).verify_token, None);
        assert_eq!(with(None).verify_token, None);
        assert_eq!(
            with(Some(VERIFY_TOKEN)).verify_token,
            Some(Secret::new(VERIFY_TOKEN))
        );
        let config = Config::from_args(args(&[
            ("instagram-app-secret", APP_SECRET),
            ("instagram-webhook-verify-token", ""),
        ]))
        .expect("valid");
        assert_eq!(config.ingest.verify_token, None);
    }

    /// The problems an operator sees for `INSTAGRAM_APP_SECRET` and `INSTAGRAM_WEBHOOK_VERIFY_TOKEN`.
    fn secret_problems(app_secret: &str, verify_token: Option<&str>) -> Vec<String> {
        webhook_settings(Some(app_secret), verify_token, "1024").expect_err("refused")
    }

    #[test]
    fn the_published_example_secrets_are_refused() {
        // .env.example and the Kubernetes examples shipped `change-me` for both.
        assert_eq!(
            secret_problems("change-me", Some("change-me")),
            [
                "INSTAGRAM_APP_SECRET is an example value published with InstantChat (in \
                 .env.example, the deploy examples or the docs), so anyone who read them knows \
                 it: set it to the app secret from the Meta App Dashboard (App settings > Basic > \
                 App secret; 32 hex digits), which signs the webhooks",
                "INSTAGRAM_WEBHOOK_VERIFY_TOKEN is an example value published with InstantChat \
                 (in .env.example, the deploy examples or the docs), so anyone who read them \
                 knows it: set it to a long random value: `instantchat secret` prints one (as \
                 does `openssl rand -hex 32`)",
            ]
        );
    }

    #[test]
    fn a_placeholder_is_refused() {
        let problems = secret_problems(APP_SECRET, Some("replace-me-with-a-verify-token"));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(
                "INSTAGRAM_WEBHOOK_VERIFY_TOKEN still holds a placeholder (it contains \
                 \"replace-me\"), not a real secret: set it to a long random value: \
                 `instantchat secret` prints one"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn a_short_secret_is_refused_naming_its_item() {
        let problems = secret_problems(&format!("{APP_SECRET},test_app_secret"), None);
        assert_eq!(
            problems,
            [
                "INSTAGRAM_APP_SECRET (item 2 of 2) is too short (15 characters; a secret needs 16 \
              or more): set it to the app secret from the Meta App Dashboard (App settings > \
              Basic > App secret; 32 hex digits), which signs the webhooks"
            ]
        );
    }

    #[test]
    fn repeated_and_low_variety_secrets_are_refused() {
        let problems = secret_problems("abcdabcdabcdabcdabcdabcd", Some("0000000000000000001"));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "INSTAGRAM_APP_SECRET is one 4-character piece repeated, which is easy to guess: \
                 set it to the app secret from the Meta App Dashboard"
            ),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with(
                "INSTAGRAM_WEBHOOK_VERIFY_TOKEN has too few distinct characters (2 in 19; a \
                 secret this long needs 4 or more), which is easy to guess: set it to a long \
                 random value"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn weak_secrets_are_reported_with_every_other_problem() {
        let err = Config::from_args(args(&[
            ("port", "abc"),
            ("instagram-app-secret", "change-me"),
            ("instagram-webhook-verify-token", "verify-me"),
        ]))
        .unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.problems[0].starts_with("PORT="), "{err}");
        assert!(
            !err.to_string().contains("verify-me"),
            "values never print: {err}"
        );
    }
}
