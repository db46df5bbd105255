//! What a commit promises: SQLite syncs its write-ahead log at every commit. (A table an
//! operator broke is no longer retried forever: see `write_errors.rs`.)

use crate::helpers::{spawn_binary_under, Db, TestDb};

/// `ack=commit` on SQLite means durable across power loss: the WAL is fsynced before the
/// answer (`synchronous=FULL`). Counted with strace on the real binary: 20 sequential
/// acknowledged requests, at least 20 syncs. With `synchronous=NORMAL` a WAL commit
/// does not sync at all, so this count stays near zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_syncs_the_log_before_an_ack_commit_answer() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        crate::helpers::skip("the SQLite fsync test: strace is not installed");
        return;
    }
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let trace_arg = trace.display().to_string();
    let mut sluice = spawn_binary_under(
        &[
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            &trace_arg,
        ],
        None,
        &db,
        &[],
    );
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/streams/reading/events", sluice.http);
    let synced = || {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("fsync(") || l.contains("fdatasync("))
            .count()
    };
    let before = synced();
    for seq in 0..20 {
        let r = client
            .post(&url)
            .body(format!(r#"{{"seq": {seq}, "sensor": "s", "value": 1}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = synced();
    // Kill Sluice itself (strace's child), then strace ends with it.
    let strace = sluice.child.id();
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .unwrap_or_default();
    for pid in children.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status();
    }
    let _ = sluice.child.wait();
    assert_eq!(db.count("reading").await, 20);
    assert!(
        after - before >= 20,
        "{} syncs for 20 acknowledged commits",
        after - before
    );
}
