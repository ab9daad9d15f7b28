//! Hostile senders against the real `instantchat-ingest` binary: bodies trickled a byte per
//! chunk cost the process bounded memory, each attacker gets its refusal (or is cut off), and
//! the signed webhooks sent meanwhile are accepted and stored, none lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use instantchat_testsupport::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{BINARY_SECRET, IngestProcess, TIMEOUT, comment, stored_events};

/// Connections trickling a body at once.
const ATTACKERS: usize = 16;
/// Each trickled body, sent a byte per chunk (six bytes on the wire per body byte). An eighth
/// of the ~1 MiB limit, so that a debug build decodes 16 of them well within the body deadline.
const BODY_BYTES: usize = 128 * 1024;
/// The most resident memory the process may reach under the attack: 16 bodies of 128 KiB is
/// 2 MiB, on top of the ~20 MiB the service holds anyway; the debug build's peak under this
/// attack varies with the allocator's timing, 40 to 51 MiB over fourteen runs here. Keeping
/// every chunk as its own buffer (32 bytes and more per body byte) took it to 139 MiB.
const RSS_CEILING_KIB: u64 = 56 * 1024;
/// One-byte chunks written per `write`, and the pause between writes.
const CHUNKS_PER_WRITE: usize = 1000;
const PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    /// A well-formed signature that does not match: the body must be read to know.
    WrongSignature,
    /// No signature: refused before the body is read.
    NoSignature,
    /// More than the broker takes, in chunks of 1,000 bytes: refused once the limit is passed.
    TooLarge,
    /// A few bytes of an announced body, then nothing: refused at the body deadline.
    Stalled,
}

/// How an attack ended: the answer's status, or `None` when the server cut the connection
/// without one; and when the answer came.
#[derive(Debug)]
struct Ended {
    status: Option<u16>,
    answered_after: Duration,
    body_sent: bool,
}

async fn attack(port: u16, kind: Attack) -> Ended {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut reader, mut writer) = tcp.into_split();
    let signature = match kind {
        Attack::NoSignature => String::new(),
        _ => format!("X-Hub-Signature-256: sha256={}\r\n", "ab".repeat(32)),
    };
    let framing = match kind {
        Attack::Stalled => "Content-Length: 100000\r\n",
        _ => "Transfer-Encoding: chunked\r\n",
    };
    let head = format!(
        "POST /api/webhooks/instagram HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         {framing}{signature}\r\n"
    );
    let started = Instant::now();
    let body_sent = Arc::new(AtomicBool::new(false));
    let sent_flag = body_sent.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        if kind == Attack::Stalled {
            writer.write_all(&[b' '; 1000]).await?;
            // Hold the connection open without sending more.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok::<bool, std::io::Error>(false);
        }
        let (bytes, batch, per_batch) = if kind == Attack::TooLarge {
            let chunk = [b"3e8\r\n".as_slice(), &[b' '; 1000], b"\r\n"].concat();
            (1_100_000, chunk.repeat(10), 10_000)
        } else {
            let batch = b"1\r\n \r\n".repeat(CHUNKS_PER_WRITE);
            (BODY_BYTES, batch, CHUNKS_PER_WRITE)
        };
        let mut sent = 0;
        while sent < bytes {
            writer.write_all(&batch).await?;
            sent += per_batch;
            tokio::time::sleep(PAUSE).await;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        sent_flag.store(true, Ordering::Relaxed);
        // Keep the sending half open: a client that half-closes is gone, as far as the server
        // is concerned, and gets no answer.
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(true)
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        // Up to the end of the head is enough to know the status.
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{kind:?}: neither answered nor cut off within 60 s"
    );
    let answered_after = started.elapsed();
    writing.abort();
    let body_sent = body_sent.load(Ordering::Relaxed);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Ended {
        status,
        answered_after,
        body_sent,
    }
}

#[tokio::test]
async fn trickled_bodies_cost_bounded_memory_and_signed_webhooks_still_land() {
    let nats = NatsServer::start_new();
    let ingest = Arc::new(IngestProcess::start(&nats.url()).await);
    let rss_before = ingest.rss_kib();

    let attacking = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = tokio::spawn({
        let (ingest, attacking, peak) = (ingest.clone(), attacking.clone(), peak.clone());
        async move {
            while attacking.load(Ordering::Relaxed) {
                peak.fetch_max(ingest.rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let kinds: Vec<Attack> = (0..ATTACKERS)
        .map(|i| match i {
            0 => Attack::NoSignature,
            1 => Attack::TooLarge,
            2 => Attack::Stalled,
            _ => Attack::WrongSignature,
        })
        .collect();
    let attacks: Vec<_> = kinds
        .iter()
        .map(|&kind| tokio::spawn(attack(ingest.port, kind)))
        .collect();

    // Meta's webhooks, one every 200 ms while the trickled bodies arrive.
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let url = format!("{}/api/webhooks/instagram", ingest.address);
    let mut accepted = HashSet::new();
    let until = Instant::now() + Duration::from_secs(6);
    for n in 0.. {
        if Instant::now() >= until {
            break;
        }
        let id = format!("legit-{n}");
        let body = comment(&id, "acct_hostile");
        let response = http
            .post(&url)
            .header(
                "x-hub-signature-256",
                instantchat_instagram::sign(BINARY_SECRET.as_bytes(), &body),
            )
            .body(body)
            .send()
            .await
            .expect("the signed webhook is answered during the attack");
        assert_eq!(response.status(), 200, "{id} during the attack");
        accepted.insert(format!("comments:{id}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut outcomes = Vec::new();
    for (kind, task) in kinds.iter().zip(attacks) {
        outcomes.push((*kind, task.await.expect("the attacker task")));
    }
    attacking.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "ingest RSS: {} KiB before, {} KiB at most during the attack",
        rss_before, peak
    );
    for (kind, ended) in &outcomes {
        eprintln!("{kind:?}: {ended:?}");
        match kind {
            Attack::WrongSignature => {
                assert_eq!(ended.status, Some(401), "{kind:?}: {ended:?}");
                assert!(ended.body_sent, "answered once the body was in: {ended:?}");
            }
            Attack::NoSignature => {
                assert!(
                    matches!(ended.status, Some(401) | None),
                    "{kind:?}: {ended:?}"
                );
                assert!(
                    !ended.body_sent && ended.answered_after < Duration::from_secs(3),
                    "refused before the body was read: {ended:?}"
                );
            }
            Attack::TooLarge => {
                assert!(matches!(ended.status, Some(413) | None), "{ended:?}");
                assert!(!ended.body_sent, "cut off before the end: {ended:?}");
            }
            Attack::Stalled => {
                assert_eq!(ended.status, Some(408), "{ended:?}");
                assert!(ended.answered_after >= Duration::from_secs(25), "{ended:?}");
            }
        }
    }
    assert!(
        peak < RSS_CEILING_KIB,
        "ingest reached {peak} KiB resident under the attack (ceiling {RSS_CEILING_KIB} KiB)"
    );

    let stored: Vec<String> = stored_events(&nats.url())
        .await
        .into_iter()
        .map(|(_, e)| e.id)
        .collect();
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), unique.len(), "each event once");
    assert_eq!(unique, accepted, "every accepted webhook, and nothing else");
    assert!(accepted.len() >= 20, "{} webhooks sent", accepted.len());
}
