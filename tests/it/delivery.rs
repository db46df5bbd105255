//! Delivery guarantees: idempotent retries with `id_field`, and no loss or duplication
//! when the database drops the sidecar's connections in the middle of a load.

use std::time::Duration;

use serde_json::Value;

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

fn with_id_field(c: &mut sluice::Config) {
    c.streams.insert(
        "reading".into(),
        sluice::config::StreamConfig {
            id_field: Some("seq".into()),
            ..Default::default()
        },
    );
}

fn ndjson(range: std::ops::Range<i64>) -> String {
    range
        .map(|i| format!("{{\"seq\": {i}, \"sensor\": \"d\", \"value\": 1}}\n"))
        .collect()
}

/// A client or webhook that retries (the whole request, or overlapping parts of it, or
/// the same event twice in one batch) gets each event stored once.
async fn with_id_field_a_retried_event_is_stored_once(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), with_id_field).await else {
        return;
    };
    for body in [
        ndjson(0..100),
        ndjson(0..100),
        ndjson(50..150),
        ndjson(150..151).repeat(3),
    ] {
        let r = app.post("reading", "", "application/x-ndjson", body).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer["dead_lettered"], 0,
            "a duplicate is not an error: {answer}"
        );
    }
    assert_eq!(app.db.count("reading").await, 151);
    assert!(app.db.dead_letters().await.is_empty());
}

db_tests!(with_id_field_a_retried_event_is_stored_once);

/// Queues `requests` requests of ten readings (`ack=accepted`), from `first` on.
async fn queue_requests_of_ten(app: &crate::helpers::TestApp, first: i64, requests: i64) {
    for request in 0..requests {
        let start = first + request * 10;
        let body = crate::helpers::readings_ndjson(start..start + 10);
        let r = app
            .post("reading", "?ack=accepted", "application/x-ndjson", body)
            .await;
        assert_eq!(r.status(), 202);
    }
}

/// PostgreSQL and MariaDB: a stream writes up to three batches at once, each on a
/// connection of its own (while one waits for an answer, the others keep the database
/// busy). With the table locked, three writes wait on the lock and the other batches
/// wait in the queue; once it is released, every event is stored.
async fn a_stream_writes_up_to_three_batches_at_once(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        c.defaults.batch_max_events = 10;
    })
    .await
    else {
        return;
    };
    let lock = crate::helpers::hold_write_lock(&app.db).await;
    // Six requests of ten: six batches.
    queue_requests_of_ten(&app, 0, 6).await;
    let name = app.db.name();
    let waiting = match db {
        Db::Postgres => format!(
            "SELECT CAST(count(*) AS TEXT) FROM pg_stat_activity WHERE datname = '{name}' AND wait_event_type = 'Lock' AND query LIKE 'COPY%'"
        ),
        _ => format!(
            "SELECT CAST(count(*) AS CHAR) FROM information_schema.processlist WHERE db = '{name}' AND state LIKE 'Waiting for table%' AND info LIKE 'INSERT%'"
        ),
    };
    let count = || async { app.db.query(&waiting).await[0][0].clone() };
    crate::helpers::eventually(10, "three writes waiting on the lock", || async {
        let n = count().await;
        match n.as_deref() {
            Some("3") => Ok(()),
            _ => Err(format!("{n:?} waiting")),
        }
    })
    .await;
    // No fourth write joins them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await.as_deref(), Some("3"));
    drop(lock);
    app.db.wait_for_count("reading", 60).await;
    assert!(app.db.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_writes_up_to_three_batches_at_once_postgres() {
    a_stream_writes_up_to_three_batches_at_once(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_writes_up_to_three_batches_at_once_mysql() {
    a_stream_writes_up_to_three_batches_at_once(Db::Mysql).await;
}

/// SQLite: batches that queued up behind a write share the next transaction, up to
/// four, each a load of its own (its ledger row, its `_load_id`) with one commit, and
/// one time of commit in the ledger. Should that transaction fail, here for a row the
/// database refuses, the batches are written one by one: the row is dead-lettered and
/// every other event stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_the_batches_queued_behind_a_write_together() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.defaults.batch_max_events = 10;
    })
    .await
    else {
        return;
    };
    // Six batches of ten reach the queue while the first write waits for the lock.
    let queue_six_batches = |first: i64| {
        let app = &app;
        async move {
            let lock = crate::helpers::hold_write_lock(&app.db).await;
            queue_requests_of_ten(app, first, 6).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(lock);
        }
    };
    queue_six_batches(0).await;
    app.db.wait_for_count("reading", 60).await;
    let loads = app
        .db
        .query("SELECT CAST(load_id AS TEXT), CAST(rows AS TEXT), committed_at FROM sluice_loads ORDER BY load_id")
        .await;
    assert_eq!(loads.len(), 6, "a load per batch: {loads:?}");
    assert!(
        loads.iter().all(|l| l[1].as_deref() == Some("10")),
        "{loads:?}"
    );
    let commits: Vec<&str> = loads.iter().filter_map(|l| l[2].as_deref()).collect();
    // The first alone (it held the lock), the next four together, the last alone.
    assert!(commits[1..5].iter().all(|c| *c == commits[1]), "{loads:?}");
    assert!(
        commits[0] != commits[1] && commits[5] != commits[1],
        "{loads:?}"
    );
    let per_load = app
        .db
        .query("SELECT CAST(_load_id AS TEXT), CAST(count(*) AS TEXT) FROM reading GROUP BY _load_id ORDER BY _load_id")
        .await;
    let ids: Vec<_> = loads
        .iter()
        .map(|l| (l[0].clone(), Some("10".to_owned())))
        .collect();
    let found: Vec<_> = per_load
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(found, ids, "each batch's rows carry their own load's id");

    app.db
        .execute("CREATE TRIGGER no93 BEFORE INSERT ON reading WHEN NEW.seq = 93 BEGIN SELECT RAISE(FAIL, 'seq 93 refused'); END")
        .await;
    queue_six_batches(60).await;
    app.db.wait_for_count("reading", 119).await;
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0][3].as_deref(),
        Some(crate::helpers::reading(93).to_string().as_str())
    );
    let seqs = app
        .db
        .query("SELECT CAST(count(DISTINCT seq) AS TEXT), CAST(count(*) AS TEXT), CAST(min(seq) AS TEXT), CAST(max(seq) AS TEXT) FROM reading")
        .await;
    assert_eq!(
        seqs[0],
        ["119", "119", "0", "119"].map(|v| Some(v.to_owned())),
        "every other event once"
    );
    let rows: Vec<_> = app
        .db
        .query("SELECT CAST(rows AS TEXT) FROM sluice_loads WHERE load_id > 6 ORDER BY load_id")
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    // Batches 1 to 3 and 5, 6 whole; the refused row's batch in the loads its
    // bisection wrote (9 rows).
    let n = rows.len();
    assert!(n > 6, "{rows:?}");
    assert_eq!(rows[..3], ["10", "10", "10"], "{rows:?}");
    assert_eq!(rows[n - 2..], ["10", "10"], "{rows:?}");
    let bisected: u32 = rows[3..n - 2]
        .iter()
        .filter_map(|r| r.parse::<u32>().ok())
        .sum();
    assert_eq!(bisected, 9, "{rows:?}");
}

/// Kills Sluice's database connections from another session, as a failover or a
/// restart would; returns how many it killed.
async fn kill_sluice_connections(db: &crate::helpers::TestDb) -> usize {
    let name = db.name();
    match db.kind {
        Db::Postgres => db
            .query(&format!(
                "SELECT CAST(pg_terminate_backend(pid) AS TEXT) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await
            .len(),
        Db::Mysql => {
            let ids = db
                .query(&format!(
                    "SELECT CAST(id AS CHAR) FROM information_schema.processlist WHERE db = '{name}' AND id <> CONNECTION_ID()"
                ))
                .await;
            let killed = ids.len();
            for id in ids.into_iter().filter_map(|r| r[0].clone()) {
                // The connection may already be gone; that is fine.
                let url = db.url.clone();
                let _ = async move {
                    use sqlx::Connection;
                    let mut c = sqlx::MySqlConnection::connect(&url).await?;
                    sqlx::query(&format!("KILL CONNECTION {id}")).execute(&mut c).await
                }
                .await;
            }
            killed
        }
        Db::Sqlite => unreachable!("SQLite has no connections to kill"),
    }
}

/// Under sustained `ack=commit` load, the database drops every connection of Sluice
/// several times. Every event that got a 200 is in the table exactly once; the
/// transient failures are retried, never dead-lettered.
async fn connections_killed_under_load_lose_and_duplicate_nothing(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        with_id_field(c);
        c.defaults.batch_max_events = 200;
    })
    .await
    else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let mut clients = Vec::new();
    for c in 0..4i64 {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            let mut acked = 0i64;
            for r in 0..25i64 {
                let first = (c * 25 + r) * 100;
                let body = ndjson(first..first + 100);
                // A client retries a request until it is acknowledged.
                loop {
                    let sent = app
                        .client
                        .post(app.url("/v1/streams/reading/events"))
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => {
                            let answer: Value = r.json().await.unwrap();
                            assert_eq!(answer["accepted"], 100, "{answer}");
                            acked += 100;
                            break;
                        }
                        Ok(r) => assert_eq!(r.status(), 503, "only backpressure may refuse"),
                        Err(e) => panic!("the HTTP side stays up: {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            acked
        }));
    }
    let mut killed = 0;
    let mut rounds = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        tokio::time::sleep(Duration::from_millis(40)).await;
        killed += kill_sluice_connections(&app.db).await;
        rounds += 1;
    }
    let mut acked = 0;
    for c in clients {
        acked += c.await.unwrap();
    }
    println!("{db:?}: killed {killed} connections in {rounds} rounds during the load");
    assert!(
        killed >= 2,
        "the load outlived several rounds of killed connections"
    );
    assert_eq!(acked, 10_000);
    assert_eq!(app.db.count("reading").await, 10_000);
    assert_eq!(app.db.distinct("reading", "seq").await, 10000);
    assert!(
        app.db.dead_letters().await.is_empty(),
        "transient failures are never dead-lettered"
    );
}

mod connections_killed {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::connections_killed_under_load_lose_and_duplicate_nothing(
            crate::helpers::Db::Postgres,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::connections_killed_under_load_lose_and_duplicate_nothing(crate::helpers::Db::Mysql)
            .await
    }
}

/// While Sluice's database refuses connections, `/readyz` is 503 and accepted events
/// wait in the queue (retried, not dead-lettered); when it is back, `/readyz` is 200
/// and every event is stored. The outage is simulated for this test's database only:
/// it stops accepting connections and Sluice's sessions are terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_an_outage_loses_nothing() {
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |_| {}).await else {
        return;
    };
    let name = app.db.name();
    let admin = std::env::var("SLUICE_TEST_POSTGRES_URL").unwrap();
    let admin_exec = |sql: String| {
        let admin = admin.clone();
        async move {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&sql).execute(&mut c).await.unwrap();
        }
    };
    let ready = || async { app.client.get(app.url("/readyz")).send().await.unwrap() };
    assert_eq!(ready().await.status(), 200);

    admin_exec(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"
    ))
    .await;
    admin_exec(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let r = ready().await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["database"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{body}"
    );

    let r = app
        .post(
            "reading",
            "?ack=accepted",
            "application/x-ndjson",
            ndjson(0..300),
        )
        .await;
    assert_eq!(r.status(), 202, "queued while the database is away");
    tokio::time::sleep(Duration::from_millis(500)).await;

    admin_exec(format!(
        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while ready().await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "readyz recovers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.db.wait_for_count("reading", 300).await;
    assert!(
        app.db.dead_letters().await.is_empty(),
        "an outage is never a reason to dead-letter"
    );
}

/// One poison row in a batch of 10,000: exactly one dead letter, 9,999 rows, and the
/// bisection costs a logarithmic number of write statements, not 10,000. Statements
/// are counted by a statement-level trigger drawing from a sequence, which (unlike the
/// rows) is not rolled back with a failed statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_row_in_10000_costs_a_logarithmic_number_of_statements() {
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |c| {
        c.defaults.batch_max_events = 10_000;
        c.defaults.batch_max_wait = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    for sql in [
        "ALTER TABLE reading ADD CONSTRAINT not_4321 CHECK (seq <> 4321)",
        "CREATE SEQUENCE write_statements",
        "CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM nextval('write_statements'); RETURN NULL; END $$",
        "CREATE TRIGGER count_writes BEFORE INSERT ON reading FOR EACH STATEMENT EXECUTE FUNCTION count_statement()",
    ] {
        app.db.execute(sql).await;
    }
    let r = app
        .post("reading", "", "application/x-ndjson", ndjson(0..10_000))
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (
            answer["accepted"].as_i64(),
            answer["dead_lettered"].as_i64()
        ),
        (Some(9_999), Some(1))
    );
    assert_eq!(answer["errors"][0]["index"], 4321);
    assert_eq!(app.db.count("reading").await, 9_999);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0][2].as_deref().unwrap().contains("not_4321"),
        "the database's own message: {letters:?}"
    );
    let used = app
        .db
        .query("SELECT CAST(last_value AS TEXT) FROM write_statements")
        .await;
    let statements: u32 = used[0][0].as_deref().unwrap().parse().unwrap();
    println!("write statements for 10,000 rows with one poison row: {statements}");
    // 1 for the batch, then two halves per level of the bisection: 1 + 2 * ceil(log2 10,000).
    assert!(statements <= 1 + 2 * 14, "{statements} statements");
}
