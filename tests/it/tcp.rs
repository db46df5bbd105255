//! The TCP line protocol over real sockets: framing, routing, bad lines, backpressure.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{fixture_schemas, spawn_app, Db, TestApp};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.tcp_addr.expect("TCP is enabled"))
        .await
        .expect("connect")
}

fn line(seq: usize) -> String {
    format!("{{\"stream\": \"reading\", \"seq\": {seq}, \"sensor\": \"tcp\", \"value\": 1.5}}\n")
}

/// Writes `data` and closes the write side, so Sluice sees a clean EOF.
async fn send_and_close(app: &TestApp, data: &[u8]) {
    let mut s = connect(app).await;
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_are_all_ingested() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let mut tasks = Vec::new();
    for c in 0..20 {
        let addr = app.tcp_addr.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for i in 0..200 {
                s.write_all(line(c * 1000 + i).as_bytes()).await.unwrap();
            }
            s.shutdown().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    app.db.wait_for_count("reading", 4000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_split_into_single_bytes_crlf_and_a_last_line_without_newline_are_read() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let mut s = connect(&app).await;
    let data = format!(
        "{}{}{}",
        line(1),
        line(2).replace('\n', "\r\n"),
        line(3).trim_end()
    );
    for b in data.as_bytes() {
        s.write_all(&[*b]).await.unwrap();
        s.flush().await.unwrap();
    }
    s.shutdown().await.unwrap();
    app.db.wait_for_count("reading", 3).await;
    assert!(app.db.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lines_in_one_write_are_all_ingested() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let data: String = (0..10_000).map(line).collect();
    send_and_close(&app, data.as_bytes()).await;
    app.db.wait_for_count("reading", 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_mib_line_over_a_1_mib_limit_is_dead_lettered_and_the_next_line_is_read() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.tcp.max_line_bytes = 1024 * 1024
    })
    .await
    else {
        return;
    };
    let mut data = format!(
        "{{\"stream\": \"reading\", \"sensor\": \"{}\"}}\n",
        "x".repeat(5 * 1024 * 1024)
    )
    .into_bytes();
    data.extend_from_slice(line(2).as_bytes());
    send_and_close(&app, &data).await;
    app.db.wait_for_count("reading", 1).await;
    app.db.wait_for_dead_letters(1).await;
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0][1].as_deref(), Some("parse"));
    assert!(
        letters[0][2]
            .as_deref()
            .unwrap()
            .starts_with("line too long"),
        "{:?}",
        letters[0][2]
    );
    assert_eq!(
        letters[0][3].as_deref().unwrap().len(),
        1024 * 1024,
        "the first max_line_bytes are kept"
    );
    assert!(letters[0][3]
        .as_deref()
        .unwrap()
        .starts_with("{\"stream\": \"reading\", \"sensor\": \"xxx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_are_dead_lettered_with_reason_and_peer_and_the_connection_goes_on() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let mut s = connect(&app).await;
    let peer = s.local_addr().unwrap().to_string();
    let mut data = Vec::new();
    data.extend_from_slice(line(1).as_bytes());
    data.extend_from_slice(b"\x00\x9f\x92\x96 binary garbage\n");
    data.extend_from_slice(b"{\"stream\": \"reading\", \"seq\": \n");
    data.extend_from_slice(b"[1, 2, 3]\n");
    data.extend_from_slice(b"{\"seq\": 4, \"sensor\": \"x\", \"value\": 1}\n");
    data.extend_from_slice(b"{\"stream\": \"nope\", \"seq\": 5}\n");
    data.extend_from_slice(
        b"{\"stream\": \"reading\", \"seq\": 6, \"sensor\": \"x\", \"value\": 99999}\n",
    );
    data.extend_from_slice(line(7).as_bytes());
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    app.db.wait_for_count("reading", 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let l = app.db.dead_letters().await;
        if l.len() >= 6 || tokio::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 6, "{letters:?}");
    let by_payload = |start: &str| {
        letters
            .iter()
            .find(|l| l[3].as_deref().unwrap().starts_with(start))
            .unwrap_or_else(|| panic!("a dead letter for {start}: {letters:?}"))
    };
    let garbage = by_payload("\\x00");
    assert_eq!(garbage[1].as_deref(), Some("parse"));
    assert!(garbage[2].as_deref().unwrap().contains("UTF-8"));
    assert_eq!(
        garbage[3].as_deref(),
        Some("\\x00\\x9F\\x92\\x96 binary garbage")
    );
    let truncated = letters
        .iter()
        .find(|l| l[3].as_deref() == Some("{\"stream\": \"reading\", \"seq\": "))
        .unwrap();
    assert!(truncated[2].as_deref().unwrap().contains("not valid JSON"));
    assert!(by_payload("[1, 2, 3]")[2]
        .as_deref()
        .unwrap()
        .contains("array, not an object"));
    let no_stream = by_payload("{\"seq\": 4");
    assert_eq!(no_stream[1].as_deref(), Some("route"));
    assert!(no_stream[2].as_deref().unwrap().contains("default_stream"));
    let unknown = by_payload("{\"stream\": \"nope\"");
    assert_eq!(unknown[1].as_deref(), Some("route"));
    assert!(unknown[2]
        .as_deref()
        .unwrap()
        .contains("unknown stream `nope`"));
    let invalid = by_payload("{\"stream\": \"reading\", \"seq\": 6");
    assert_eq!(
        (invalid[0].as_deref(), invalid[1].as_deref()),
        (Some("reading"), Some("validate"))
    );
    assert!(invalid[2].as_deref().unwrap().contains("/value"));
    for l in &letters {
        assert_eq!(l[4].as_deref(), Some(format!("tcp {peer}").as_str()));
    }
    let seqs = app.db.values("reading", "seq").await;
    assert_eq!(seqs, [Some("1".into()), Some("7".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_line_loses_only_that_line() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let mut s = connect(&app).await;
    s.write_all(format!("{}{{\"stream\": \"reading\", \"se", line(1)).as_bytes())
        .await
        .unwrap();
    drop(s);
    app.db.wait_for_count("reading", 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.db.dead_letters().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partial line is dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let letters = app.db.dead_letters().await;
    assert!(
        letters[0][2]
            .as_deref()
            .unwrap()
            .contains("closed in the middle of this line"),
        "{letters:?}"
    );
    assert_eq!(
        letters[0][3].as_deref(),
        Some("{\"stream\": \"reading\", \"se")
    );
}

/// A recorded capture of Vector's `socket` sink (`encoding.codec = "json"`, newline
/// framing): every line lands, byte for byte, with `default_stream` routing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vector_json_lines_capture_is_ingested_byte_for_byte() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.tcp.default_stream = Some("app_log".into())
    })
    .await
    else {
        return;
    };
    let capture = std::fs::read(fixture_schemas().join("../vector_socket_json.ndjson")).unwrap();
    send_and_close(&app, &capture).await;
    app.db.wait_for_count("app_log", 5).await;
    let rows = app.db.query("SELECT message, host, level, file, source_type, _extra FROM app_log ORDER BY timestamp").await;
    for (row, text) in rows
        .iter()
        .zip(std::str::from_utf8(&capture).unwrap().lines())
    {
        let sent: Value = serde_json::from_str(text).unwrap();
        for (i, field) in ["message", "host", "level", "file", "source_type"]
            .iter()
            .enumerate()
        {
            assert_eq!(row[i].as_deref(), sent[field].as_str(), "{field} of {text}");
        }
        let extra: Option<Value> = row[5].as_deref().map(|e| serde_json::from_str(e).unwrap());
        if text.contains("container_name") {
            assert_eq!(
                extra,
                Some(
                    json!({"container_name": "bookshop-api", "label": {"com.docker.compose.service": "api"}})
                )
            );
        } else {
            assert_eq!(extra, None);
        }
    }
    assert!(app.db.dead_letters().await.is_empty());
}

/// With the database blocked and a small queue, a TCP writer is slowed by TCP flow
/// control instead of Sluice buffering without bound; once the database is back,
/// every line is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_pauses_reading_so_the_tcp_writer_blocks_and_nothing_is_lost() {
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |c| {
        c.defaults.queue_max_events = 100;
        c.defaults.batch_max_events = 50;
    })
    .await
    else {
        return;
    };
    let lock = crate::helpers::hold_write_lock(&app.db).await;
    const LINES: usize = 200_000; // about 13 MB, far more than the socket buffers hold
    let addr = app.tcp_addr.unwrap();
    let writer = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let data: String = (0..LINES).map(line).collect();
        s.write_all(data.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    });
    // The queue reaches its bound while the writer still has most of its 13 MB to send:
    // only flow control can be holding it.
    crate::helpers::eventually(20, "the queue fills", || async {
        let streams: Value = app.get_json("/v1/streams").await.1;
        let reading = streams["streams"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["stream"] == "reading").cloned());
        match reading.map(|r| r["queue_events"].clone()) {
            Some(d) if d == 100 => Ok(()),
            other => Err(format!("queue_events {other:?}")),
        }
    })
    .await;
    assert!(
        !writer.is_finished(),
        "the writer must be blocked by flow control"
    );
    let streams: Value = app.get_json("/v1/streams").await.1;
    let depth = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "reading")
        .unwrap()["queue_events"]
        .clone();
    assert_eq!(depth, 100, "the queue is at its bound, not beyond");
    drop(lock);
    tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes")
        .unwrap();
    // What the socket buffers held when the writer finished (megabytes on a loopback)
    // is still to come in 50-row loads, a commit each: on a busy machine that takes
    // longer than the usual 15 s.
    app.db
        .wait_for_count_within("reading", LINES as i64, Duration::from_secs(90))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncReadExt;
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.tcp.idle_timeout = Duration::from_millis(300)
    })
    .await
    else {
        return;
    };
    let mut s = connect(&app).await;
    s.write_all(line(1).as_bytes()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0))),
        "Sluice closes the idle connection: {n:?}"
    );
    app.db.wait_for_count("reading", 1).await;
}

/// With `max_connections` taken, a new client is not accepted (its lines wait in the
/// kernel) until a connection closes; then its lines are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_defers_new_clients_until_a_slot_frees() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| c.tcp.max_connections = 1).await
    else {
        return;
    };
    let mut first = connect(&app).await;
    first.write_all(line(1).as_bytes()).await.unwrap();
    app.db.wait_for_count("reading", 1).await;
    let mut second = connect(&app).await;
    second.write_all(line(2).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.db.count("reading").await,
        1,
        "the second client waits for a slot"
    );
    first.shutdown().await.unwrap();
    drop(first);
    app.db.wait_for_count("reading", 2).await;
}
