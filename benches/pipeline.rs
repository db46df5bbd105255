//! Per-event CPU cost of the hot path, and the cost of isolating a bad row:
//! - `ingest`: parse + validate + convert to a row, for every shipped stream:
//!   `order_placed` from generated events (about 440 bytes with nested items), the
//!   others from their example in `examples/` (`email_event`: the webhook array);
//! - `encode`: the PostgreSQL COPY text encoding of a batch (MariaDB and SQLite bind
//!   values inside their drivers; that cost is in `sluice-bench`'s end-to-end figures);
//! - `bisection`: writing 1000 rows to a real SQLite file, clean and with one row the
//!   database refuses (a NULL in a NOT NULL column), through the batcher's write path.
//!
//! Run with `cargo bench`; throughput is events per second on one core.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::event::{Cell, Row};
use sluice::ingest::body::parse_object;
use sluice::schema::{Registry, Stream};
use sluice::Config;

fn registry() -> Registry {
    let mut config = Config {
        schemas_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/schemas").into(),
        ..Config::default()
    };
    // The shipped `email_event` hashes addresses: the tests' key, not one made up
    // beside a database.
    config.privacy.key_file =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/privacy.key").into());
    Registry::load(config.streams_config()).expect("the shipped schemas load")
}

fn rows(stream: &Stream, events: &[String]) -> Vec<Row> {
    let source: Arc<str> = "bench".into();
    let now = chrono::Utc::now();
    events
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let value = parse_object(raw.as_bytes()).expect("valid JSON");
            stream
                .to_row(value, raw.as_str().into(), false, source.clone(), i, now)
                .expect("valid")
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let registry = registry();
    let source: Arc<str> = "bench".into();
    let now = chrono::Utc::now();
    let webhook: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../examples/email_webhook.json"))
            .expect("the example is a JSON array");
    let example = |stream: &str| -> Vec<String> {
        let path = format!("{}/examples/{stream}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("the example exists");
        let value: serde_json::Value = serde_json::from_str(&text).expect("the example is JSON");
        vec![value.to_string(); 1000]
    };
    let mut cases = vec![
        ("order_placed", sluice::loadgen::generate(1000, 1)),
        (
            "email_event",
            webhook
                .iter()
                .cycle()
                .take(1000)
                .map(|v| v.to_string())
                .collect(),
        ),
    ];
    for stream in [
        "cart_item_added",
        "checkout_started",
        "payment_processed",
        "shipment_dispatched",
        "shipping_quoted",
    ] {
        cases.push((stream, example(stream)));
    }
    let mut group = c.benchmark_group("ingest");
    for (name, events) in &cases {
        let stream = registry.get(name).expect("shipped stream").clone();
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(format!("{name} parse+validate+row"), |b| {
            b.iter(|| {
                for (i, raw) in events.iter().enumerate() {
                    let value = parse_object(raw.as_bytes()).expect("valid JSON");
                    let row =
                        stream.to_row(value, raw.as_str().into(), false, source.clone(), i, now);
                    assert!(row.is_ok());
                }
            })
        });
    }
    group.finish();
    // The stages of the largest case apart: parse alone, then validation alone.
    let stream = registry
        .get("order_placed")
        .expect("shipped stream")
        .clone();
    let events = &cases[0].1;
    let values: Vec<serde_json::Value> = events
        .iter()
        .map(|raw| parse_object(raw.as_bytes()).expect("valid JSON"))
        .collect();
    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("order_placed parse", |b| {
        b.iter(|| {
            for raw in events {
                assert!(parse_object(raw.as_bytes()).is_ok());
            }
        })
    });
    group.bench_function("order_placed fast path: read + check + row", |b| {
        b.iter(|| {
            for (i, raw) in events.iter().enumerate() {
                let tape = sluice::schema::tape::Tape::read(raw).expect("plain JSON");
                let row = stream.fast_row(&tape, raw, None, &source, i, now);
                assert!(row.is_some());
            }
        })
    });
    // The same orders with 30 items each (about 2.4 KB): the cost per KB.
    let large: Vec<String> = events
        .iter()
        .take(200)
        .map(|raw| sluice::loadgen::with_items(raw, 30).expect("valid JSON"))
        .collect();
    group.throughput(Throughput::Bytes(
        large.iter().map(|e| e.len() as u64).sum(),
    ));
    group.bench_function("order_placed x30 items general path", |b| {
        b.iter(|| {
            for (i, raw) in large.iter().enumerate() {
                let value = parse_object(raw.as_bytes()).expect("valid JSON");
                let row = stream.to_row(value, raw.as_str().into(), false, source.clone(), i, now);
                assert!(row.is_ok());
            }
        })
    });
    group.bench_function("order_placed x30 items fast path", |b| {
        b.iter(|| {
            for (i, raw) in large.iter().enumerate() {
                let tape = sluice::schema::tape::Tape::read(raw).expect("plain JSON");
                assert!(stream.fast_row(&tape, raw, None, &source, i, now).is_some());
            }
        })
    });
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("order_placed validate", |b| {
        b.iter(|| {
            for value in &values {
                assert!(stream.is_valid(value));
            }
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let registry = registry();
    let stream = registry
        .get("order_placed")
        .expect("shipped stream")
        .clone();
    let rows = rows(&stream, &sluice::loadgen::generate(1000, 2));
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("order_placed COPY text", |b| {
        b.iter(|| sluice::sink::postgres::encode_rows(&stream, &rows, Some(1)).len())
    });
    group.finish();
}

fn bisection(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = Config {
        schemas_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/schemas").into(),
        ..Config::default()
    };
    config.database.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let registry = Registry::load(config.streams_config()).expect("the shipped schemas load");
    let stream = registry
        .get("order_placed")
        .expect("shipped stream")
        .clone();
    let sink = runtime
        .block_on(sluice::sink::connect(&config.database))
        .expect("SQLite opens");
    runtime
        .block_on(sink.store.prepare(std::slice::from_ref(&stream)))
        .expect("tables created");
    let clean = rows(&stream, &sluice::loadgen::generate(1000, 3));
    let mut poisoned = clean.clone();
    poisoned[500].cells[0] = Cell::Null; // event_id is NOT NULL
    let mut group = c.benchmark_group("bisection");
    group.throughput(Throughput::Elements(clean.len() as u64));
    for (name, batch) in [
        ("1000 rows, clean", &clean),
        ("1000 rows, one refused", &poisoned),
    ] {
        group.bench_function(format!("SQLite write {name}"), |b| {
            b.iter_batched(
                || batch.clone(),
                |rows| {
                    let refused = runtime.block_on(sluice::pipeline::batcher::write_isolating(
                        sink.writer.clone(),
                        stream.clone(),
                        &rows,
                    ));
                    assert_eq!(refused.len(), usize::from(name.contains("refused")));
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, ingest, encode, bisection);
criterion_main!(benches);
