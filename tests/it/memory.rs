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
    let bin = std::env::var("SLUICE_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").to_owned());
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(Some(&bin), &db, &[]);
    let pid = sluice.child.id();
    let body = bomb();
    assert!(body.len() < 16 * 1024, "a small body: {} bytes", body.len());
    let idle = rss_bytes(pid);

    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
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
        for r in futures_util::future::join_all(requests).await {
            *statuses.entry(r.unwrap().status().as_u16()).or_insert(0) += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "150 inflating bodies, 50 at a time: answers {statuses:?}, RSS idle {} MiB, peak {} MiB",
        idle >> 20,
        peak >> 20
    );
    assert!(
        statuses.keys().all(|s| *s == 413 || *s == 503),
        "{statuses:?}"
    );
    assert!(peak < 256 * 1024 * 1024, "peak RSS {} MiB", peak >> 20);

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
