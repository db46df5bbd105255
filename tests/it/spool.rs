//! The durable spool (`[spool]`), with the real binary and real kills: events answered
//! `202` and TCP lines read survive `kill -9` while nothing could commit (the table is
//! locked), on every database; damaged segments are skipped, counted, not fatal.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::db_tests;
use crate::helpers::{hold_write_lock, metric, spawn_binary, Binary, Db, TestDb};

/// Starts Sluice on `db` with its spool in `spool` and `seq` as the id of `reading`.
fn start(db: &TestDb, spool: &Path, fsync: &str, tcp: bool) -> Binary {
    let config = spool.with_extension("toml");
    std::fs::write(&config, "[streams.reading]\nid_field = \"seq\"\n").unwrap();
    let mut env = vec![
        ("SLUICE_CONFIG", config.display().to_string()),
        ("SLUICE_SPOOL_DIR", spool.display().to_string()),
        ("SLUICE_SPOOL_FSYNC", fsync.to_owned()),
    ];
    if tcp {
        env.push(("SLUICE_TCP_LISTEN", "127.0.0.1:0".into()));
    }
    spawn_binary(None, db, &env)
}

/// Waits until Sluice is ready: its spool's recovery is done, every record it held
/// committed or dead-lettered (so counts read after it are final).
async fn recovered(sluice: &Binary) {
    let url = format!("http://{}/readyz", sluice.http);
    crate::helpers::eventually(30, "the spool is recovered", || async {
        match reqwest::get(&url).await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(r.text().await.unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

fn kill9(mut sluice: Binary) {
    sluice.child.kill().expect("SIGKILL");
    sluice.child.wait().unwrap();
}

/// Posts `requests` requests of `per` readings with `ack=accepted`; returns the seqs
/// answered 202.
async fn post_accepted(http: &str, requests: u64, per: u64) -> Vec<u64> {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for r in 0..requests {
        let seqs: Vec<u64> = (r * per..(r + 1) * per).collect();
        let body: String = seqs
            .iter()
            .map(|s| format!("{}\n", json!({"seq": s, "sensor": "spool", "value": 1.5})))
            .collect();
        let resp = client
            .post(format!(
                "http://{http}/v1/streams/reading/events?ack=accepted"
            ))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        if resp.status() == 202 {
            accepted.extend(seqs);
        }
    }
    accepted
}

async fn accepted_events_survive_kill_9(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sluice = start(&db, &spool, "10ms", false);
    // Nothing can commit while the table is locked: every 202 rests on the spool.
    let lock = hold_write_lock(&db).await;
    let accepted = post_accepted(&sluice.http, 40, 25).await;
    assert_eq!(accepted.len(), 1000, "{kind:?}: every request answered 202");
    // An invalid event answered 202 (dead-lettered) must survive as its dead letter.
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/streams/reading/events?ack=accepted",
            sluice.http
        ))
        .body(json!({"seq": "not a number", "sensor": "bad", "value": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    kill9(sluice);
    drop(lock);
    let sluice = start(&db, &spool, "10ms", false);
    recovered(&sluice).await;
    assert_eq!(
        db.dead_letters().await.len(),
        1,
        "{kind:?}: the dead letter once"
    );
    assert_eq!(db.count("reading").await, 1000, "{kind:?}: each once");
    assert_eq!(db.distinct("reading", "seq").await, 1000);
    // The replayed segments are gone once committed.
    let left = sluice::spool::log::segments_in(&spool.join("reading")).unwrap();
    assert!(left.is_empty(), "{kind:?}: {left:?}");
    let (status, logs) = sluice.terminate().await;
    assert!(status.success(), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("Spool recovered")),
        "{logs:#?}"
    );
}

async fn tcp_lines_read_survive_kill_9(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sluice = start(&db, &spool, "always", true);
    let lock = hold_write_lock(&db).await;
    let mut socket = tokio::net::TcpStream::connect(sluice.tcp.as_deref().unwrap())
        .await
        .unwrap();
    let lines: String = (0..500)
        .map(|s| {
            format!(
                "{}\n",
                json!({"stream": "reading", "seq": s, "sensor": "tcp", "value": 2.5})
            )
        })
        .collect();
    socket.write_all(lines.as_bytes()).await.unwrap();
    // Read (and, with fsync = always, on disk) once the spool counts them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&sluice.http, "sluice_spool_records", "stream=\"reading\"").await != Some(500.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind:?}: the lines were not read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill9(sluice);
    drop(lock);
    let sluice = start(&db, &spool, "always", true);
    recovered(&sluice).await;
    assert_eq!(db.count("reading").await, 500, "{kind:?}");
    sluice.terminate().await;
}

db_tests!(
    accepted_events_survive_kill_9,
    tcp_lines_read_survive_kill_9
);

/// A segment cut at a random byte, or with a flipped byte: start-up skips the damage,
/// counts it, and writes every intact record.
#[tokio::test]
async fn damaged_segments_are_skipped_counted_and_the_rest_written() {
    for damage in ["truncate", "flip"] {
        let db = TestDb::create(Db::Sqlite).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let sluice = start(&db, &spool, "always", false);
        let lock = hold_write_lock(&db).await;
        assert_eq!(post_accepted(&sluice.http, 20, 10).await.len(), 200);
        kill9(sluice);
        drop(lock);
        let segments = sluice::spool::log::segments_in(&spool.join("reading")).unwrap();
        assert_eq!(segments.len(), 1);
        let path = &segments[0].1;
        let mut bytes = std::fs::read(path).unwrap();
        let mut at = fastrand::usize(bytes.len() / 4..bytes.len() - 1);
        // A cut exactly between two frames leaves a shorter, undamaged log: nothing to
        // detect. Cut one byte into the frame instead (a header is longer than a byte).
        let (frames, _) = sluice::spool::log::read_frames_at(&bytes);
        if damage == "truncate" && frames.iter().any(|&(offset, _)| offset as usize == at) {
            at += 1;
        }
        match damage {
            "truncate" => bytes.truncate(at),
            _ => bytes[at] ^= 0x5a,
        }
        std::fs::write(path, &bytes).unwrap();
        let (intact, damaged) = sluice::spool::log::read_frames(&bytes);
        assert!(damaged >= 1 && intact.len() < 200, "{damage} at {at}");
        let sluice = start(&db, &spool, "always", false);
        recovered(&sluice).await;
        assert_eq!(
            db.count("reading").await,
            intact.len() as i64,
            "{damage} at {at}"
        );
        let corrupt = metric(
            &sluice.http,
            "sluice_spool_corrupt_records_total",
            "stream=\"reading\"",
        )
        .await;
        assert_eq!(corrupt, Some(damaged as f64), "{damage} at {at}");
        let (status, logs) = sluice.terminate().await;
        assert!(status.success());
        assert!(
            logs.iter().any(|l| l.contains("Spool segment damaged")),
            "{logs:#?}"
        );
    }
}

/// Until the spool's records are written, new input waits and `/readyz` says why.
#[tokio::test]
async fn readyz_is_503_and_ingest_waits_until_recovery_is_done() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sluice = start(&db, &spool, "always", false);
    let lock = hold_write_lock(&db).await;
    assert_eq!(post_accepted(&sluice.http, 5, 10).await.len(), 50);
    kill9(sluice);
    // Still locked: recovery cannot finish.
    let sluice = start(&db, &spool, "always", false);
    let ready = reqwest::get(format!("http://{}/readyz", sluice.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["recovering_spool"], true, "{body}");
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/streams/reading/events", sluice.http))
        .body(json!({"seq": 999, "sensor": "new", "value": 1.0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    drop(lock);
    db.wait_for_count("reading", 50).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::get(format!("http://{}/readyz", sluice.http))
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready after recovery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sluice.terminate().await;
}

/// Posts one `ack=accepted` request of `n` readings from `first`; returns the status
/// and the answer.
async fn post_many(http: &str, first: u64, n: u64) -> (u16, serde_json::Value) {
    let body: String = (first..first + n)
        .map(|s| {
            format!(
                "{}\n",
                json!({"seq": s, "sensor": "filling-the-spool", "value": 1.0})
            )
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!(
            "http://{http}/v1/streams/reading/events?ack=accepted"
        ))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().contains_key("retry-after");
    let answer: serde_json::Value = r.json().await.unwrap_or_default();
    if status == 503 {
        assert!(retry, "a full spool answers 503 with Retry-After: {answer}");
    }
    (status, answer)
}

/// Fills the spool while nothing can commit until it refuses with 503, releases the
/// database, and checks that every 202 is stored and new requests are taken again.
async fn fill_then_drain(db: &TestDb, sluice: &Binary, expect: &str, spool: &Path) {
    let lock = hold_write_lock(db).await;
    let (mut seq, mut accepted) = (0u64, 0i64);
    let refusal = loop {
        let (status, answer) = post_many(&sluice.http, seq, 500).await;
        match status {
            202 => accepted += 500,
            503 => break answer,
            other => panic!("unexpected {other}: {answer}"),
        }
        seq += 500;
        assert!(seq < 100_000, "the spool never filled");
    };
    let error = refusal["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains(expect), "{error}");
    // The refused write left every segment whole.
    let segments = sluice::spool::log::segments_in(&spool.join("reading")).unwrap();
    assert!(!segments.is_empty());
    for (_, path) in segments {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            sluice::spool::log::read_frames(&bytes).1,
            0,
            "{path:?} is whole"
        );
    }
    drop(lock);
    db.wait_for_count("reading", accepted).await;
    // Committed segments are deleted: room again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = post_many(&sluice.http, 1_000_000, 500).await;
        if status == 202 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.wait_for_count("reading", accepted + 500).await;
}

#[tokio::test]
async fn a_full_spool_budget_pushes_back_then_drains() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let config = spool.with_extension("toml");
    std::fs::write(&config, "[spool]\nmax_bytes = 1_048_576\n").unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[
            ("SLUICE_CONFIG", config.display().to_string()),
            ("SLUICE_SPOOL_DIR", spool.display().to_string()),
        ],
    );
    fill_then_drain(&db, &sluice, "spool.max_bytes", &spool).await;
    sluice.terminate().await;
}

/// A full disk (a 2 MiB tmpfs made by the test) answers like a full spool, leaves every
/// segment whole, and recovers when committed segments free the space. Needs the right
/// to mount (root); skipped, saying so, without it.
#[tokio::test]
async fn a_full_disk_pushes_back_without_corrupting_a_segment() {
    let Some((mount, _unmount)) = small_disk("2m") else {
        crate::helpers::skip("the full-disk spool test: cannot mount a tmpfs here (needs root)");
        return;
    };
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let spool = mount.path().join("spool");
    let sluice = spawn_binary(
        None,
        &db,
        &[("SLUICE_SPOOL_DIR", spool.display().to_string())],
    );
    fill_then_drain(&db, &sluice, "disk is full", &spool).await;
    sluice.terminate().await;
}

/// Starts Sluice with a small memory queue for `reading` (2,000 events, 2 MiB).
fn start_small_queue(db: &TestDb, spool: &Path) -> Binary {
    let config = spool.with_extension("toml");
    std::fs::write(
        &config,
        "[streams.reading]\nid_field = \"seq\"\nqueue_max_events = 2000\nqueue_max_bytes = 2_097_152\n",
    )
    .unwrap();
    spawn_binary(
        None,
        db,
        &[
            ("SLUICE_CONFIG", config.display().to_string()),
            ("SLUICE_SPOOL_DIR", spool.display().to_string()),
        ],
    )
}

/// A database outage longer than the memory queue lasts: with the spool, requests are
/// still answered 202 (their events go to disk only), memory stays bounded, and
/// everything is written once the database is back, exactly once.
#[tokio::test]
async fn an_outage_beyond_the_memory_queue_spills_to_disk_and_drains() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sluice = start_small_queue(&db, &spool);
    let lock = hold_write_lock(&db).await;
    let rss_before = crate::helpers::rss_bytes(sluice.child.id());
    let accepted = post_accepted(&sluice.http, 60, 500).await;
    assert_eq!(
        accepted.len(),
        30_000,
        "15 times the queue, all answered 202"
    );
    let spilled = metric(
        &sluice.http,
        "sluice_spool_bytes",
        "stream=\"reading/spill\"",
    )
    .await
    .unwrap_or(0.0);
    assert!(
        spilled > 1_000_000.0,
        "the events beyond the queue are on disk: {spilled}"
    );
    let rss = crate::helpers::rss_bytes(sluice.child.id());
    assert!(
        rss < rss_before + 64 * 1024 * 1024,
        "memory stays bounded while the spool grows: {} -> {} MiB",
        rss_before >> 20,
        rss >> 20
    );
    drop(lock);
    db.wait_for_count("reading", 30_000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(
        &sluice.http,
        "sluice_spool_bytes",
        "stream=\"reading/spill\"",
    )
    .await
        != Some(0.0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spill log never emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sluice.terminate().await;
    // Stopped cleanly: nothing more can be written; each event once.
    assert_eq!(db.distinct("reading", "seq").await, 30_000);
    assert_eq!(db.count("reading").await, 30_000);
}

/// Spilled events survive `kill -9` too.
#[tokio::test]
async fn spilled_events_survive_kill_9() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sluice = start_small_queue(&db, &spool);
    let lock = hold_write_lock(&db).await;
    let accepted = post_accepted(&sluice.http, 20, 500).await;
    assert_eq!(accepted.len(), 10_000);
    kill9(sluice);
    drop(lock);
    let sluice = start_small_queue(&db, &spool);
    recovered(&sluice).await;
    assert_eq!(db.count("reading").await, 10_000);
    sluice.terminate().await;
}

/// Mounts a tmpfs of `size` on a new directory, unmounted (lazily) when dropped; `None`
/// where mounting is not allowed (not root).
fn small_disk(size: &str) -> Option<(tempfile::TempDir, impl Drop)> {
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mount.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Lazily: a Sluice left running by a failed assertion must not keep it mounted.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    mounted.then(|| {
        let unmount = Unmount(mount.path().to_path_buf());
        (mount, unmount)
    })
}

/// The `.seg` files under `spool`, with their sizes.
fn segment_files(spool: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(segment_files(&path));
        } else if path.extension().is_some_and(|e| e == "seg") {
            out.push((
                path.clone(),
                std::fs::metadata(&path).map_or(0, |m| m.len()),
            ));
        }
    }
    out
}

/// POSTs `events` (JSON array) to `app_log` with `ack=accepted`.
async fn post_app_logs(http: &str, events: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{http}/v1/streams/app_log/events?ack=accepted"
        ))
        .header("content-type", "application/json")
        .body(events.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// The review's scenario: with the table locked, request A (9 rows of ~100 KB) is
/// answered 202; request B (1 valid row and a 200 KB invalid event) finds the spool
/// full when its dead letter is appended after its row, and is answered 503. B's row
/// must never be written (it was refused), A's rows once each: after the commit, and
/// again after a clean restart (the segment must not be replayed).
async fn a_refused_request_leaves_nothing_in_the_spool(spool: &Path, config: &str, expect: &str) {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let toml = spool.with_extension("toml");
    std::fs::write(&toml, config).unwrap();
    let env = [
        ("SLUICE_CONFIG", toml.display().to_string()),
        ("SLUICE_SPOOL_DIR", spool.display().to_string()),
    ];
    let sluice = spawn_binary(None, &db, &env);
    let lock = hold_write_lock(&db).await;
    let big = "x".repeat(100_000);
    let a: Vec<_> = (0..9)
        .map(|i| json!({"message": big, "timestamp": "2026-01-01T00:00:00Z", "host": format!("a{i}")}))
        .collect();
    let (status, answer) = post_app_logs(&sluice.http, &json!(a)).await;
    assert_eq!(status, 202, "{answer}");
    let b = json!([
        {"message": "b", "timestamp": "2026-01-01T00:00:00Z", "host": "b"},
        {"message": "y".repeat(200_000), "host": "b-invalid"}
    ]);
    let (status, answer) = post_app_logs(&sluice.http, &b).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains(expect)),
        "{answer}"
    );
    drop(lock);
    db.wait_for_count("app_log", 9).await;
    // Every record is released (A's committed, B's refused): the segments go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !segment_files(spool).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments left after every record was committed or refused: {:?}",
            segment_files(spool)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = sluice.terminate().await;
    assert!(status.success());
    let again = spawn_binary(None, &db, &env);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while reqwest::get(format!("http://{}/readyz", again.http))
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.count("app_log").await, 9, "A once, B never");
    assert_eq!(db.distinct("app_log", "host").await, 9);
    again.terminate().await;
}

#[tokio::test]
async fn a_request_refused_by_the_spool_budget_is_never_written_nor_replayed() {
    let dir = tempfile::tempdir().unwrap();
    a_refused_request_leaves_nothing_in_the_spool(
        &dir.path().join("spool"),
        "[spool]\nmax_bytes = 1_048_576\n",
        "spool.max_bytes",
    )
    .await;
}

#[tokio::test]
async fn a_request_refused_by_a_full_disk_is_never_written_nor_replayed() {
    let Some((mount, _unmount)) = small_disk("1m") else {
        crate::helpers::skip("the full-disk spool test (cannot mount a tmpfs here)");
        return;
    };
    a_refused_request_leaves_nothing_in_the_spool(&mount.path().join("spool"), "", "disk is full")
        .await;
}

/// Two processes on one spool directory would delete each other's acknowledged events:
/// the second refuses to start, naming the first; the files are the owner's only.
#[tokio::test]
async fn a_second_process_on_the_same_spool_refuses_to_start_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let first = start(&db, &spool, "10ms", false);
    // Each stream's spool series exist from start-up.
    assert_eq!(
        metric(&first.http, "sluice_spool_bytes", "stream=\"reading\"").await,
        Some(0.0)
    );
    let lock = hold_write_lock(&db).await;
    let accepted = post_accepted(&first.http, 1, 3).await;
    assert_eq!(accepted.len(), 3);

    let mut second = crate::helpers::sluice_command()
        .env("SLUICE_SCHEMAS_DIR", crate::helpers::fixture_schemas())
        .env("SLUICE_DATABASE_URL", &db.url)
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "")
        .env("SLUICE_SPOOL_DIR", &spool)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second process on one spool kept running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("in use by another Sluice process")
            && err.contains(&format!("pid {}", first.child.id())),
        "{err}"
    );

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool), 0o700);
    assert_eq!(mode(&spool.join("reading")), 0o700);
    let segments = segment_files(&spool);
    assert!(!segments.is_empty());
    for (path, len) in &segments {
        assert_eq!(mode(path), 0o600, "{path:?}");
        assert!(*len > 0, "no empty segment: {path:?}");
    }
    drop(lock);
    db.wait_for_count("reading", 3).await;
    first.terminate().await;
}
