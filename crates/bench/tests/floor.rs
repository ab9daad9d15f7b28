//! The bench's floors end to end: `floor` (a sender, two receiver processes, real loopback
//! sockets; every frame arrives once and is timed) and `http-echo`, the HTTP floor of `ingest
//! --http-floor` (it reads whole bodies and answers ingest's receipt shape).

use std::process::Command;
use std::time::Duration;

#[test]
fn floor_delivers_every_frame_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("floor.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_instantchat-bench"))
        .args([
            "floor",
            "--clients",
            "20",
            "--rate",
            "50",
            "--duration",
            "1",
        ])
        .args(["--receivers", "2", "--senders", "2", "--max-seconds", "30"])
        .arg("--out")
        .arg(&out)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "floor did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "floor failed: {status}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let r = &report["result"];
    assert_eq!(r["events"], 50);
    assert_eq!(r["delivery"]["frames"], 1000);
    assert_eq!(r["delivery"]["expected"], 1000);
    assert_eq!(r["delivery"]["short_sockets"], 0);
    assert_eq!(r["delivery"]["complete"], true);
    assert_eq!(r["latency"]["count"], 1000);
    assert_eq!(r["latency_from_write"]["count"], 1000);
    let (due, write) = (
        r["latency"]["p99_ms"].as_f64().unwrap(),
        r["latency_from_write"]["p99_ms"].as_f64().unwrap(),
    );
    assert!(
        due > 0.0 && write > 0.0 && write <= due + 0.1,
        "{due} {write}"
    );
}

#[test]
fn floor_refuses_more_sockets_than_one_process_may_hold() {
    let out = Command::new(env!("CARGO_BIN_EXE_instantchat-bench"))
        .args(["floor", "--clients", "25000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("19000 or fewer"), "{err}");
}

#[test]
fn http_echo_reads_the_body_and_answers_a_receipt() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_instantchat-bench"))
        .arg("http-echo")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    let body = br#"{"object":"instagram","entry":[]}"#;
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "POST /api/webhooks/instagram HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    tcp.write_all(body).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(
        json["events"][0]["id"],
        format!("comments:17858893269000001_{}", body.len()),
        "the whole body was read"
    );
}
