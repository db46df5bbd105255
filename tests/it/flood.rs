//! Memory stays bounded under a flood: the real binary, HTTP and TCP clients sending
//! faster than the database can write (its table is locked most of the time), RSS read
//! from /proc. Nothing accepted is lost: every 202-acknowledged event and every line a
//! TCP client wrote is in the table at the end.
//!
//! `SLUICE_TEST_FLOOD_SECS` (default 3) sets the flood's length; `SLUICE_TEST_BIN`
//! points it at another build (e.g. `target/release/sluice`) for longer measurements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::helpers::{rss_bytes, spawn_binary, Db, TestDb};

/// The queue's byte budget in this test.
const QUEUE_BYTES: u64 = 8 * 1024 * 1024;
/// Growth allowed over the idle process on top of the queue's byte budget (request
/// buffers, decoded rows, SQLite's cache, allocator arenas). Measured growth on this
/// machine: about 30 MiB. The bound is on growth, not on the total, so that the idle
/// footprint (which grows with every subsystem, not with the flood) does not make the
/// test flaky: it was 72 MiB in total with an idle process at 38 MiB.
const HEADROOM: u64 = 48 * 1024 * 1024;

/// An event of about 1 KB, so the byte budget binds before the event count.
fn event(seq: u64) -> String {
    format!("{{\"id\": {seq}, \"s\": \"{}\"}}\n", "x".repeat(1000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_a_flood_and_nothing_accepted_is_lost() {
    let secs: u64 = std::env::var("SLUICE_TEST_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let bin = std::env::var("SLUICE_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").to_owned());
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        Some(&bin),
        &db,
        &[
            ("SLUICE_TCP_LISTEN", "127.0.0.1:0".into()),
            ("SLUICE_DEFAULTS_QUEUE_MAX_BYTES", QUEUE_BYTES.to_string()),
            ("SLUICE_TCP_MAX_LINE_BYTES", "65536".into()),
        ],
    );
    let pid = sluice.child.id();
    let (http, tcp) = (
        sluice.http.clone(),
        sluice.tcp.clone().expect("TCP is enabled"),
    );
    let idle_rss = rss_bytes(pid);

    // The database is locked 90% of the time: it writes far slower than clients send.
    let stop = Arc::new(tokio::sync::Notify::new());
    let locker = {
        let url = db.url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            loop {
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                let stopped = tokio::time::timeout(Duration::from_millis(900), stop.notified())
                    .await
                    .is_ok();
                sqlx::query("COMMIT").execute(&mut c).await.unwrap();
                if stopped {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let deadline = Instant::now() + Duration::from_secs(secs);
    let seq = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (seq, accepted, rejected) = (seq.clone(), accepted.clone(), rejected.clone());
        let url = format!("http://{http}/v1/streams/typemap/events?ack=accepted");
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < deadline {
                let first = seq.fetch_add(500, Ordering::SeqCst);
                let body: String = (first..first + 500).map(event).collect();
                let r = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    202 => accepted.fetch_add(500, Ordering::SeqCst),
                    503 => {
                        assert!(r.headers().contains_key("retry-after"));
                        rejected.fetch_add(500, Ordering::SeqCst)
                    }
                    s => panic!("unexpected status {s}"),
                };
            }
        }));
    }
    for _ in 0..2 {
        let (seq, accepted) = (seq.clone(), accepted.clone());
        let tcp = tcp.clone();
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&tcp).await.unwrap();
            while Instant::now() < deadline {
                let first = seq.fetch_add(200, Ordering::SeqCst);
                let chunk: String = (first..first + 200)
                    .map(|i| format!("{{\"stream\": \"typemap\", {}", &event(i)[1..]))
                    .collect();
                // Blocks while Sluice has stopped reading: that is the backpressure.
                s.write_all(chunk.as_bytes()).await.unwrap();
                accepted.fetch_add(200, Ordering::SeqCst);
            }
            s.shutdown().await.unwrap();
        }));
    }

    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.notify_one();
    locker.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    peak = peak.max(rss_bytes(pid));
    let expected = accepted.load(Ordering::SeqCst) as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = db.count("typemap").await;
        if n == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} rows of {expected} accepted events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = sluice.terminate().await;
    assert!(status.success(), "exit status {status}");
    let growth = peak.saturating_sub(idle_rss);
    println!(
        "flood {secs}s: {expected} events accepted and stored, {} refused with 503; RSS idle {} MiB, peak {} MiB, growth {} MiB (bound {} MiB)",
        rejected.load(Ordering::SeqCst),
        idle_rss >> 20,
        peak >> 20,
        growth >> 20,
        (QUEUE_BYTES + HEADROOM) >> 20
    );
    assert!(
        rejected.load(Ordering::SeqCst) > 0,
        "the flood outpaced the database"
    );
    assert!(
        growth < QUEUE_BYTES + HEADROOM,
        "RSS grew by {} MiB under the flood (idle {} MiB, peak {} MiB)",
        growth >> 20,
        idle_rss >> 20,
        peak >> 20
    );
}
