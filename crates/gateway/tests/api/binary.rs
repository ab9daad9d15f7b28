//! The `instantchat-gateway` binary refuses bad settings before it connects or binds anything:
//! every problem named at once, exit code 2.

use std::process::Output;

use instantchat_testsupport::run_with_env;

const BIN: &str = env!("CARGO_BIN_EXE_instantchat-gateway");

/// Runs the binary with only `PATH` and `vars` in its environment.
fn run(vars: &[(&str, &str)]) -> Output {
    run_with_env(BIN, &[], vars)
}

#[test]
fn every_invalid_setting_is_named_at_once_logs_included() {
    let out = run(&[
        ("JWT_SECRET", "short"),
        ("ACCOUNT_ACCESS", "some"),
        ("LOG_FORMAT", "xml"),
        ("RUST_LOG", "instantchat_gateway=loud"),
        // Never reached: the settings are refused first.
        ("NATS_URL", "nats://127.0.0.1:1"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for var in [
        "JWT_SECRET",
        "ACCOUNT_ACCESS",
        "LOG_FORMAT=\"xml\"",
        "RUST_LOG=",
    ] {
        assert!(stderr.contains(var), "{var} not named in {stderr}");
    }
    assert!(stderr.contains("Run with --help"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn valid_log_settings_in_any_case_are_not_problems() {
    let out = run(&[("LOG_FORMAT", "JSON"), ("RUST_LOG", "info,async_nats=warn")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "JWT_SECRET is missing: {stderr}"
    );
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
    assert!(!stderr.contains("LOG_FORMAT"), "{stderr}");
    assert!(!stderr.contains("RUST_LOG"), "{stderr}");
}
