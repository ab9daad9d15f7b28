//! The `instantchat-ingest` binary: refuses bad settings (all named, exit 2) before binding
//! anything, documents every variable in `--help`, and serves and stops on SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use instantchat_testsupport::{NatsServer, free_port, run_with_env};

use crate::helpers::{SECRET, TIMEOUT, eventually, fixture};

const BIN: &str = env!("CARGO_BIN_EXE_instantchat-ingest");

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
        .env("INSTAGRAM_APP_SECRET", format!("other_secret,{SECRET}"))
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
    let (body, signature) = fixture("f01_comments_dashboard_test.json");
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
