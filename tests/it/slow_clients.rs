//! Slow clients and stuck streams are contained: a body sent a byte at a time is cut
//! off, shutdown keeps its flush time whatever clients do, and one stuck stream neither
//! fails readiness nor starves the readiness check.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{faulty_proxy, fixture_schemas, spawn_app, spawn_binary, Db, Fault, TestDb};

/// Opens a connection that sends its headers and one byte of a 100-byte body, then
/// nothing.
async fn trickle(addr: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /v1/streams/reading/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_is_cut_off_with_408_after_the_body_timeout() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.http.body_read_timeout = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    let mut s = trickle(&app.addr.to_string()).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "Sluice answers and closes instead of waiting");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_read_timeout"), "{text}");
    assert_eq!(app.db.dead_letters().await.len(), 0, "nothing was accepted");
}

/// Slow clients hold connections through SIGTERM: they get half of `shutdown_timeout`,
/// and the queues still flush in the other half; Sluice exits 0 within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_queues_while_slow_clients_hold_connections() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[
            ("SLUICE_DEFAULTS_BATCH_MAX_WAIT", "60s".into()),
            ("SLUICE_SHUTDOWN_TIMEOUT", "4s".into()),
            ("SLUICE_HTTP_BODY_READ_TIMEOUT", "60s".into()),
        ],
    );
    crate::helpers::post_readings_accepted(&sluice.http, 300).await;
    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(trickle(&sluice.http).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, logs) = sluice.terminate().await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}: {logs:?}");
    assert!(took < Duration::from_millis(4_800), "took {took:?}");
    assert_eq!(db.count("reading").await, 300);
    drop(slow);
}

/// One stream stuck on an operator's mistake (a dropped column) fills its queue: its
/// producers get 503 and its status says so, but the instance stays ready and the
/// other streams are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stream_is_reported_per_stream_and_the_instance_stays_ready() {
    // PostgreSQL locks one table: `reading`'s writes wait (each attempt gives up after
    // write_timeout and is retried), `app_log`'s go on.
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |c| {
        c.defaults.queue_max_events = 10;
        c.http.enqueue_timeout = Duration::from_millis(50);
        c.database.write_timeout = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let _lock = crate::helpers::hold_write_lock(&app.db).await;
    let body: String = (0..10)
        .map(|i| format!("{{\"seq\": {i}, \"sensor\": \"t\", \"value\": 1}}\n"))
        .collect();
    let r = app
        .post(
            "reading",
            "?ack=accepted",
            "application/x-ndjson",
            body.clone(),
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = app
        .post("reading", "?ack=accepted", "application/x-ndjson", body)
        .await;
    assert_eq!(
        r.status(),
        503,
        "the stuck stream's own producers are refused"
    );
    // The first write attempt gives up after write_timeout and is retried.
    crate::helpers::eventually(10, "the stream is retrying", || async {
        let (_, reading) = app.get_json("/v1/streams/reading").await;
        match reading["write_state"].as_str() {
            Some("retrying") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["saturated_streams"], serde_json::json!(["reading"]));
    let (_, reading) = app.get_json("/v1/streams/reading").await;
    assert_eq!(reading["saturated"], true, "{reading}");
    assert_eq!(reading["retrying"], true, "{reading}");
    assert!(reading["last_error"]["message"].is_string(), "{reading}");
    assert_eq!(reading["write_state"], "retrying", "{reading}");
    assert_eq!(
        ready["failing_streams"][0]["write_state"], "retrying",
        "{ready}"
    );
    let r = app
        .post(
            "app_log",
            "",
            "application/json",
            r#"{"message": "still served", "timestamp": "2024-01-01T00:00:00Z"}"#,
        )
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
}

/// `/readyz` has a database connection of its own: with every pooled connection held by
/// writers waiting on a locked table, it still answers 200 within its 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_while_writers_hold_every_pooled_connection() {
    use sqlx::Connection;
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |c| {
        c.database.max_connections = 2;
    })
    .await
    else {
        return;
    };
    let mut locker = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE reading IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    for i in 0..4 {
        let body = format!("{{\"seq\": {i}, \"sensor\": \"t\", \"value\": 1}}");
        let r = app
            .post("reading", "?ack=accepted", "application/json", body)
            .await;
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    app.db.wait_for_count("reading", 4).await;
}

/// SIGTERM while the database drops every packet: Sluice gives up on the writes it
/// cannot finish and exits within `shutdown_timeout` (non-zero, naming the events it
/// could not flush), instead of waiting on the database forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_within_its_budget_when_the_database_blackholes_packets() {
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let blackhole = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = faulty_proxy("127.0.0.1:5432", Fault::Blackhole, blackhole.clone()).await;
    let name = db.name();
    let via_proxy = db.via(format!("postgres://postgres@{proxy}/{name}"));
    let sluice = spawn_binary(
        None,
        &via_proxy,
        &[
            ("SLUICE_DEFAULTS_BATCH_MAX_WAIT", "60s".into()),
            ("SLUICE_SHUTDOWN_TIMEOUT", "3s".into()),
        ],
    );
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/streams/reading/events?ack=accepted",
            sluice.http
        ))
        .body(r#"{"seq": 1, "sensor": "t", "value": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    blackhole.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let (status, logs) = tokio::time::timeout(Duration::from_secs(20), sluice.terminate())
        .await
        .expect("Sluice exits instead of waiting on the database");
    let took = started.elapsed();
    assert!(!status.success(), "the queued event could not be flushed");
    assert!(took < Duration::from_millis(4_500), "took {took:?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("not flushed within shutdown_timeout")),
        "{logs:?}"
    );
}
