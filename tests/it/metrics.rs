//! `/metrics`: after a known mix of good, invalid and malformed events over HTTP and
//! TCP, the scrape (parsed with a Prometheus text-format parser) has the exact counts.
//! Runs the real binary: the metrics recorder is process-wide.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::{metrics_text, spawn_binary, spawn_configured, Db, TestDb};

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

async fn scrape(http: &str) -> Scrape {
    parse(&metrics_text(http).await)
}

/// The value of `metric` with these labels (summed over the other labels), or `None`
/// when the scrape has no such sample, so that a metric that is never emitted cannot
/// pass for a 0.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let samples: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(None, &db, &[("SLUICE_TCP_LISTEN", "127.0.0.1:0".into())]);
    let client = reqwest::Client::new();
    let post = |stream: &str, body: &'static str| {
        client
            .post(format!("http://{}/v1/streams/{stream}/events", sluice.http))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    let ok = "{\"seq\":1,\"sensor\":\"a\",\"value\":1}\n{\"seq\":2,\"sensor\":\"a\",\"value\":1}\n\
              {\"seq\":3,\"sensor\":\"a\",\"value\":1}\n{\"seq\":4,\"sensor\":\"a\",\"value\":5000}\n{oops\n";
    assert_eq!(post("reading", ok).await.unwrap().status(), 200);
    let r = client
        .post(format!("http://{}/v1/streams/reading/events", sluice.http))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(post("nope", "{}\n").await.unwrap().status(), 404);

    let mut tcp = tokio::net::TcpStream::connect(sluice.tcp.as_deref().unwrap())
        .await
        .unwrap();
    tcp.write_all(
        b"{\"stream\":\"reading\",\"seq\":5,\"sensor\":\"t\",\"value\":1}\n\
          {\"stream\":\"reading\",\"seq\":6,\"sensor\":\"t\",\"value\":1}\n\
          \xff\xfe garbage\n{\"stream\":\"nope\"}\n",
    )
    .await
    .unwrap();
    tcp.shutdown().await.unwrap();
    drop(tcp);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = scrape(&sluice.http).await;
        let settled = value(&s, "sluice_events_written_total", &[("stream", "reading")])
            == Some(5.0)
            && value(&s, "sluice_tcp_connections", &[]) == Some(0.0)
            && value(
                &s,
                "sluice_events_dead_lettered_total",
                &[("stream", "(none)"), ("stage", "route")],
            ) == Some(2.0);
        if settled || tokio::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = [
        (
            "sluice_events_received_total",
            vec![("stream", "reading"), ("source", "http")],
            6.0,
        ),
        (
            "sluice_events_received_total",
            vec![("stream", "reading"), ("source", "tcp")],
            2.0,
        ),
        (
            "sluice_events_received_total",
            vec![("stream", "(none)"), ("source", "http")],
            1.0,
        ),
        (
            "sluice_events_received_total",
            vec![("stream", "(none)"), ("source", "tcp")],
            2.0,
        ),
        (
            "sluice_events_written_total",
            vec![("stream", "reading")],
            5.0,
        ),
        (
            "sluice_events_dead_lettered_total",
            vec![("stream", "reading"), ("stage", "validate")],
            1.0,
        ),
        (
            "sluice_events_dead_lettered_total",
            vec![("stream", "reading"), ("stage", "parse")],
            2.0,
        ),
        (
            "sluice_events_dead_lettered_total",
            vec![("stream", "(none)"), ("stage", "parse")],
            1.0,
        ),
        (
            "sluice_events_dead_lettered_total",
            vec![("stream", "(none)"), ("stage", "route")],
            2.0,
        ),
        (
            "sluice_events_rejected_total",
            vec![("stream", "reading")],
            0.0,
        ),
        ("sluice_http_requests_total", vec![("status", "400")], 1.0),
        ("sluice_http_requests_total", vec![("status", "404")], 1.0),
        ("sluice_queue_events", vec![("stream", "reading")], 0.0),
        ("sluice_tcp_connections", vec![], 0.0),
        ("sluice_db_pool_max_connections", vec![], 8.0),
    ];
    for (metric, labels, want) in expect {
        assert_eq!(
            value(&s, metric, &labels),
            Some(want),
            "{metric} {labels:?}"
        );
    }
    let batches = s
        .samples
        .iter()
        .find(|x| x.metric == "sluice_batch_write_duration_seconds_count");
    assert!(batches.is_some(), "batch write durations are a histogram");
    let pooled = value(&s, "sluice_db_pool_connections", &[("state", "in_use")]).unwrap_or(0.0)
        + value(&s, "sluice_db_pool_connections", &[("state", "idle")]).unwrap_or(0.0);
    assert!(
        (1.0..=8.0).contains(&pooled),
        "the pool holds between 1 and max_connections connections: {pooled}"
    );
    let (status, _) = sluice.terminate().await;
    assert!(status.success());
}

/// Redeliveries skipped by `id_field` are counted apart from the rows written, on every
/// database (MySQL reports a skipped duplicate as a found row, so Sluice counts them).
async fn duplicates_are_counted_apart_from_rows_written(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let toml = "[streams.reading]\nid_field = \"seq\"\n";
    let sluice = spawn_configured(None, &db, dir.path(), toml, &[]);
    let client = reqwest::Client::new();
    for body in [
        "{\"seq\":1,\"sensor\":\"a\",\"value\":1}\n{\"seq\":2,\"sensor\":\"a\",\"value\":1}\n{\"seq\":2,\"sensor\":\"a\",\"value\":1}\n",
        "{\"seq\":1,\"sensor\":\"a\",\"value\":1}\n{\"seq\":3,\"sensor\":\"a\",\"value\":1}\n",
    ] {
        let r = client
            .post(format!("http://{}/v1/streams/reading/events", sluice.http))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(db.count("reading").await, 3);
    let text = metrics_text(&sluice.http).await;
    let s = parse(&text);
    assert_eq!(
        value(&s, "sluice_events_written_total", &[("stream", "reading")]),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "sluice_events_duplicate_total",
            &[("stream", "reading")]
        ),
        Some(2.0)
    );
    let status: serde_json::Value = client
        .get(format!("http://{}/v1/streams/reading", sluice.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (status["written"].as_u64(), status["duplicates"].as_u64()),
        (Some(3), Some(2)),
        "{status}"
    );
    assert!(
        text.contains("# HELP sluice_events_duplicate_total ")
            && text.contains("# HELP sluice_events_written_total "),
        "every metric has its help text"
    );
    sluice.terminate().await;
}

crate::db_tests!(duplicates_are_counted_apart_from_rows_written);
