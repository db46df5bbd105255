//! What a commit promises: SQLite syncs its write-ahead log at every commit, and a table
//! an operator broke is retried, not dead-lettered.

use std::time::Duration;

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, spawn_binary_under, Db, TestDb};

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
        assert!(
            std::env::var("SLUICE_TEST_REQUIRE_ALL").is_err(),
            "strace is not installed but SLUICE_TEST_REQUIRE_ALL=1"
        );
        eprintln!("SKIPPED: strace is not installed");
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

/// An operator drops a column the stream writes: events are retried (the README promises
/// it for a missing table or column), not dead-lettered, and written once it is back.
async fn a_dropped_column_is_retried_until_it_is_back_not_dead_lettered(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    app.db
        .execute("ALTER TABLE reading DROP COLUMN sensor")
        .await;
    let r = app
        .post(
            "reading",
            "?ack=accepted",
            "application/json",
            r#"{"seq": 1, "sensor": "a", "value": 1}"#,
        )
        .await;
    assert_eq!(r.status(), 202);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(app.db.dead_letters().await.len(), 0, "not dead-lettered");
    let add = match db {
        Db::Mysql => "ALTER TABLE reading ADD COLUMN sensor varchar(32) NOT NULL",
        Db::Postgres => "ALTER TABLE reading ADD COLUMN sensor text NOT NULL",
        Db::Sqlite => "ALTER TABLE reading ADD COLUMN sensor TEXT NOT NULL DEFAULT ''",
    };
    app.db.execute(add).await;
    app.db.wait_for_count("reading", 1).await;
    assert_eq!(
        app.db.values("reading", "sensor").await,
        vec![Some("a".into())]
    );
}

db_tests!(a_dropped_column_is_retried_until_it_is_back_not_dead_lettered);
