//! The `instantchat-ingest` binary: refuses bad settings (all named, exit 2) before binding
//! anything, documents every variable in `--help`, and serves and stops on SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use instantchat_testsupport::{NatsServer, free_port, run_with_env};

use crate::helpers::{TIMEOUT, eventually, fixture};

const BIN: &str = env!("CARGO_BIN_EXE_instantchat-ingest");

/// The binary refuses the fixtures' `test_app_secret` (too short): it runs with secrets as Meta
/// makes them (32 hex digits), and the fixtures' bytes are signed again with them.
const APP_SECRET: &str = "4f1c9a2be07d3856a1c4e9f02b7d6a35";
const OTHER_APP_SECRET: &str = "9e07d3856a1c4e9f02b7d6a354f1c9a2";

/// Runs the binary with only `PATH` and `vars` in its environment.
fn run(args: &[&str], vars: &[(&str, &str)]) -> Output {
    run_with_env(BIN, args, vars)
}

#[test]
fn an_empty_environment_is_refused_naming_the_secret() {
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("INSTAGRAM_APP_SECRET"), "{stderr}");
}

#[test]
fn every_invalid_setting_is_named_at_once() {
    let out = run(
        &[],
        &[
            ("PORT", "abc"),
            ("WEBHOOK_MAX_BODY_BYTES", "-1"),
            ("INSTAGRAM_APP_SECRET", "a,,b"),
            ("EVENT_RETENTION", "forever"),
            ("EVENT_MAX_COUNT", "many"),
            ("DEDUP_WINDOW", "0s"),
            ("NATS_URL", "localhost"),
            ("LOG_FORMAT", "xml"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "PORT",
        "WEBHOOK_MAX_BODY_BYTES",
        "INSTAGRAM_APP_SECRET",
        "EVENT_RETENTION",
        "EVENT_MAX_COUNT",
        "DEDUP_WINDOW",
        "NATS_URL",
        "LOG_FORMAT",
    ] {
        assert!(stderr.contains(var), "{var} not named in {stderr}");
    }
    assert!(
        !stderr.contains("a,,b"),
        "secrets are never printed: {stderr}"
    );
}

/// What an operator who copied the example configuration sees: every example or weak secret
/// named, with what to do, the values never printed, and exit code 2 before anything binds.
#[test]
fn example_and_weak_secrets_are_refused_with_what_to_do() {
    let out = run(
        &[],
        &[
            ("INSTAGRAM_APP_SECRET", &format!("{APP_SECRET},change-me")),
            ("INSTAGRAM_WEBHOOK_VERIFY_TOKEN", "verify-me"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid configuration (2 problems):"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "INSTAGRAM_APP_SECRET (item 2 of 2) is an example value published with InstantChat \
             (in .env.example, the deploy examples or the docs), so anyone who read them knows \
             it: set it to the app secret from the Meta App Dashboard"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "INSTAGRAM_WEBHOOK_VERIFY_TOKEN is too short (9 characters; a secret needs 16 or \
             more): set it to a long random value: `instantchat secret` prints one"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("verify-me") && !stderr.contains(APP_SECRET),
        "secrets are never printed: {stderr}"
    );
}

#[test]
fn help_documents_every_variable_without_showing_secrets() {
    let out = run(
        &["--help"],
        &[
            ("INSTAGRAM_APP_SECRET", "s3cr3t"),
            ("INSTAGRAM_WEBHOOK_VERIFY_TOKEN", "t0k3n"),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "PORT",
        "NATS_URL",
        "INSTAGRAM_APP_SECRET",
        "INSTAGRAM_WEBHOOK_VERIFY_TOKEN",
        "WEBHOOK_MAX_BODY_BYTES",
        "EVENT_RETENTION",
        "EVENT_MAX_COUNT",
        "DEDUP_WINDOW",
        "RUST_LOG",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }
    assert!(
        !help.contains("s3cr3t") && !help.contains("t0k3n"),
        "{help}"
    );
}

#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    let nats = NatsServer::start_new();
    let port = free_port();
    let mut child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("NATS_URL", nats.url())
        .env(
            "INSTAGRAM_APP_SECRET",
            format!("{OTHER_APP_SECRET},{APP_SECRET}"),
        )
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the binary is ready", || async {
        let response = http.get(format!("{base}/readyz")).send().await;
        response.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let (body, _) = fixture("f01_comments_dashboard_test.json");
    let signature = instantchat_instagram::sign(APP_SECRET.as_bytes(), &body);
    let response = http
        .post(format!("{base}/api/webhooks/instagram"))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the second configured secret verifies"
    );

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the binary exits within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
