//! What the bench's tests share: running `instantchat-bench ingest` against the fixtures and
//! reading its report.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use instantchat_testsupport::nats_server_bin;

/// Runs `instantchat-bench ingest` with `args`, the tests' fixtures and nats-server, waiting up
/// to `within`; its JSON report and what it printed. Panics, with its output, if it fails.
pub async fn bench_ingest(args: &[&str], within: Duration) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_instantchat-bench"))
        .arg("ingest")
        .args(args)
        .arg("--fixtures")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/instagram"
        ))
        .arg("--nats-server")
        .arg(nats_server_bin())
        .arg("--out")
        .arg(&out)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("the bench did not end within {within:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the bench failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (report, stdout)
}

/// The report's target whose `target` is `target`.
pub fn target<'a>(report: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == target)
        .unwrap_or_else(|| panic!("no target {target:?} in {}", report["targets"]))
}
