//! Memory is bounded before the queue: request bodies that inflate (gzip) and values
//! that multiply (a JSON array of small numbers parses into 32 bytes per element) are
//! reserved against `max_inflight_bytes` before they are built. The real binary, RSS
//! read from /proc.
//!
//! `SLUICE_TEST_BIN` points it at another build (e.g. `target/release/sluice`).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{rss_bytes, spawn_binary, Db, TestDb};

/// The binary under test: `SLUICE_TEST_BIN`, or the test build.
fn test_bin() -> String {
    std::env::var("SLUICE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").to_owned())
}

/// Sends `requests` at once; how many were answered with each status. A request whose
/// body could not be sent to the end because Sluice answered and closed the connection
/// first (refused early, before the body was read) counts under status 0.
async fn answers(
    requests: impl Iterator<
        Item = impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    >,
) -> std::collections::BTreeMap<u16, usize> {
    let mut statuses = std::collections::BTreeMap::new();
    for r in futures_util::future::join_all(requests).await {
        let status = match r {
            Ok(response) => response.status().as_u16(),
            Err(e) if e.is_request() && closed_while_sending(&e) => 0,
            Err(e) => panic!("{e:?}"),
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    statuses
}

/// Whether a request failed because the server closed the connection while its body
/// was being sent (a broken pipe or a reset).
fn closed_while_sending(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            );
        }
        source = s.source();
    }
    false
}

/// Reports a flood's answers and memory (the figures BENCHMARKS.md records), and checks
/// that every request was refused (413 or 503, or the connection closed on a body that
/// was still being sent) and the peak RSS stayed under 256 MiB.
fn refused_within_256_mib(
    what: &str,
    statuses: &std::collections::BTreeMap<u16, usize>,
    idle: u64,
    peak: u64,
) {
    println!(
        "{what}: answers {statuses:?}, RSS idle {} MiB, peak {} MiB",
        idle >> 20,
        peak >> 20
    );
    assert!(
        statuses.keys().all(|s| [0, 413, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(peak < 256 * 1024 * 1024, "peak RSS {} MiB", peak >> 20);
}

/// The peak resident memory of a process, sampled every 5 ms on a thread of its own.
struct PeakRss {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        PeakRss { peak, done, thread }
    }

    /// Stops sampling; the peak in bytes.
    fn stop(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}

/// A gzip body of about 10 KB that inflates to a 10 MB event: one object holding an
/// array of five million small numbers.
fn bomb() -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(b"{\"seq\": 1, \"sensor\": \"x\", \"value\": 1, \"v\": [")
        .unwrap();
    // Just under the default http.max_body_bytes (10 MiB), so that it is accepted as
    // a body and would be parsed.
    let ones = "1,".repeat(1_000_000);
    for _ in 0..5 {
        enc.write_all(ones.as_bytes()).unwrap();
    }
    enc.write_all(b"1]}").unwrap();
    enc.finish().unwrap()
}

/// 50 concurrent 10 KB gzip bodies that each inflate to 10 MiB (and would parse into
/// ~160 MiB of values): every one is answered (413: it alone needs more than the
/// budget; or 503: the budget is busy), the process stays under 256 MiB RSS, and it
/// serves normal events afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_inflating_gzip_bodies_at_once_keep_the_process_under_256_mib() {
    let bin = test_bin();
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(Some(&bin), &db, &[]);
    let pid = sluice.child.id();
    let body = bomb();
    assert!(body.len() < 16 * 1024, "a small body: {} bytes", body.len());
    let idle = rss_bytes(pid);

    let sampler = PeakRss::watch(pid);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/streams/reading/events", sluice.http);
    let mut statuses = std::collections::BTreeMap::new();
    for _round in 0..3 {
        let requests = (0..50).map(|_| {
            client
                .post(&url)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body.clone())
                .send()
        });
        for (status, n) in answers(requests).await {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    refused_within_256_mib(
        "150 inflating bodies, 50 at a time",
        &statuses,
        idle,
        sampler.stop(),
    );

    let r = client
        .post(&url)
        .body(r#"{"seq": 2, "sensor": "ok", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(db.count("reading").await, 1);
    let _ = sluice.terminate().await;
}

/// Twilio's signature covers the form fields, so the fields are read before it is
/// checked. 20 concurrent 10 MB bodies of `a&a&a…` (5 million fields each) with a bogus
/// signature are refused before their fields are built (413: more fields than a webhook
/// sends; or 503: the budget is busy), and the process stays under 256 MiB RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_bodies_with_millions_of_fields_are_refused_before_they_are_built() {
    let bin = test_bin();
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sluice = crate::helpers::spawn_configured(
        Some(&bin),
        &db,
        dir.path(),
        "[webhooks.sms]\nstream = \"app_log\"\nverify = \"twilio\"\nsecret_env = \"TEST_TWILIO_TOKEN\"\npublic_url = \"https://example.com/v1/hooks/sms\"\n",
        &[("TEST_TWILIO_TOKEN", "twilio-auth-token".into())],
    );
    let pid = sluice.child.id();
    let idle = rss_bytes(pid);
    let body = bytes::Bytes::from("a&".repeat(5_000_000));
    let sampler = PeakRss::watch(pid);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/hooks/sms", sluice.http);
    let requests = (0..20).map(|_| {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", "bm90IGEgc2lnbmF0dXJl")
            .body(body.clone())
            .send()
    });
    let statuses = answers(requests).await;
    refused_within_256_mib(
        "20 form bodies of 10 MB (5 million fields each) at once",
        &statuses,
        idle,
        sampler.stop(),
    );
    assert_eq!(db.count("sluice_dead_letters").await, 0, "nothing stored");
    let (status, log) = sluice.terminate().await;
    assert!(status.success(), "Sluice survived the flood: {log:?}");
}

/// A body sent a byte per chunk is charged what it holds, not a KiB per chunk: two
/// connections each holding 65,500 one-byte chunks (the review's case, which used to
/// take the whole 128 MiB budget) leave room for other requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_chunks_are_charged_their_bytes_not_a_kib_each() {
    use tokio::io::AsyncWriteExt;
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(None, &db, &[]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&sluice.http).await.unwrap();
        let head = format!(
            "POST /v1/streams/reading/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            sluice.http
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&b"1\r\n \r\n".repeat(65_500)).await.unwrap();
        c.flush().await.unwrap();
        held.push(c);
    }
    // Let the server read every chunk of both.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A 100 KB event: 200 KiB of budget while it is read, which the old rounding (a
    // KiB per one-byte chunk: 2 x 65,500 KiB of the 128 MiB) no longer had.
    let event =
        serde_json::json!({"message": "m".repeat(100_000), "timestamp": "2026-01-01T00:00:00Z"});
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/streams/app_log/events", sluice.http))
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    drop(held);
    let _ = sluice.terminate().await;
}
