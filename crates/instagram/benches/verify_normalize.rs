//! Times `verify_signature` and `normalize` on a ~1 KB realistic messaging webhook, and both on
//! the mix of Meta's webhooks that `instantchat-bench ingest` posts (`testdata/instagram`), with
//! no benchmark framework: `cargo bench -p instantchat-instagram` prints ns/op for each.

use std::hint::black_box;
use std::time::{Duration, Instant};

use instantchat_instagram::{normalize, sign, verify_signature};

const SECRETS: [&str; 1] = ["test_app_secret"];
const RECEIVED: i64 = 1_744_789_256_000;

/// A real-shaped Instagram DM with text, a reply-to, an image attachment and a quick reply.
fn body() -> Vec<u8> {
    let mid = "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDcwOTQ1OTgwNDgzOjM0MDI4MjM2Njg0MTcxMDMwMTI0NDI3NjAyOTk1MTcyODQ1MTg0MzozMjE4NTY4MDg1NTcyOTI0NzkxNDY1NDI5OTY5OTgwNjIwOAZDZD";
    format!(
        concat!(
            r#"{{"object":"instagram","entry":[{{"time":1744789255994,"id":"17841470945980483","messaging":[{{"#,
            r#""sender":{{"id":"613556994653795"}},"recipient":{{"id":"17841470945980483"}},"timestamp":1744789255335,"#,
            r#""message":{{"mid":"{mid}","text":"Hi! Is the blue one still available in size M? \ud83d\ude0d","#,
            r#""reply_to":{{"mid":"{mid}"}},"#,
            r#""attachments":[{{"type":"image","payload":{{"url":"https:\/\/lookaside.fbsbx.com\/ig_messaging_cdn\/?asset_id=1151970572602487&signature=AYddBE7nIoOZgwxUzmOcNvQdjj-29xgWns_TQqxig-qfUXUUXjn3FsBFrPGA9sDrgJPpxqhyESOuWSx8YDWN_2nDrVU1--ByBoPnPidHowPGtlqR_W5011Zjt0RbEvRwHJ4h8vDuIIB_qDVf9u3F63x5NtubhGLnBoXy2OhMJLXX"}}}}],"#,
            r#""quick_reply":{{"payload":"3:IB_FIRST_PARTY:ac65f8133abf5df0f25b12575a30e397d9b057c2:no_response:is_custom"}}}}}}]}}]}}"#
        ),
        mid = mid
    )
    .into_bytes()
}

/// ns per call of `f`: the best of `ROUNDS` rounds of about `ROUND` each, after a warm-up. The
/// best round is the one least disturbed by other processes (the machine may be busy building).
fn ns_per_op(mut f: impl FnMut()) -> f64 {
    const ROUNDS: usize = 20;
    const ROUND: Duration = Duration::from_millis(100);
    for _ in 0..10_000 {
        f();
    }
    (0..ROUNDS)
        .map(|_| {
            let mut iterations = 0u64;
            let start = Instant::now();
            while start.elapsed() < ROUND {
                for _ in 0..100 {
                    f();
                }
                iterations += 100;
            }
            start.elapsed().as_nanos() as f64 / iterations as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let body = body();
    let header = sign(SECRETS[0].as_bytes(), &body);
    let normalized = normalize(&body, RECEIVED).expect("the bench body normalizes");
    assert_eq!(normalized.events.len(), 1);
    assert!(verify_signature(&SECRETS, Some(&header), &body).is_ok());

    println!("body: {} bytes, 1 event", body.len());
    let verify = ns_per_op(|| {
        black_box(verify_signature(&SECRETS, Some(black_box(&header)), black_box(&body)).is_ok());
    });
    println!("verify_signature        {verify:>8.0} ns/op");
    let norm = ns_per_op(|| {
        black_box(normalize(black_box(&body), RECEIVED).is_ok());
    });
    println!("normalize               {norm:>8.0} ns/op");
    let both = ns_per_op(|| {
        let ok = verify_signature(&SECRETS, Some(black_box(&header)), black_box(&body)).is_ok();
        black_box(ok && normalize(black_box(&body), RECEIVED).is_ok());
    });
    println!("verify + normalize      {both:>8.0} ns/op");

    let mix = fixture_mix();
    let bytes: usize = mix.iter().map(|(body, _)| body.len()).sum();
    println!(
        "\nthe ingest bench's mix: {} webhooks of testdata/instagram, {} bytes on average",
        mix.len(),
        bytes / mix.len()
    );
    let per_mix = ns_per_op(|| {
        for (body, header) in &mix {
            let ok = verify_signature(&SECRETS, Some(black_box(header)), black_box(body)).is_ok();
            black_box(ok && normalize(black_box(body), RECEIVED).is_ok());
        }
    });
    println!(
        "verify + normalize      {:>8.0} ns per webhook (mean of the mix)",
        per_mix / mix.len() as f64
    );
}

/// Every webhook of `testdata/instagram` (the ingest bench's default fixtures), signed with the
/// bench's secret.
fn fixture_mix() -> Vec<(Vec<u8>, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/instagram");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).expect("testdata/instagram/manifest.json"),
    )
    .expect("the manifest is JSON");
    manifest["fixtures"]
        .as_array()
        .expect("the manifest lists its fixtures")
        .iter()
        .map(|fixture| {
            let file = fixture["file"].as_str().expect("a fixture names its file");
            let body = std::fs::read(dir.join(file)).expect("a fixture's body");
            assert!(
                normalize(&body, RECEIVED).is_ok(),
                "{file} does not normalize"
            );
            let header = sign(SECRETS[0].as_bytes(), &body);
            (body, header)
        })
        .collect()
}
