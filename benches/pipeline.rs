//! Per-event CPU cost of the hot path, for the shipped `order_placed` stream:
//! parse + validate + convert to a row, and the PostgreSQL COPY encoding of a batch.
//! Run with `cargo bench`; figures are events per second on one core.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::ingest::body::parse_object;
use sluice::schema::Registry;
use sluice::Config;

/// `n` distinct order events derived from the README example (about 450 bytes each).
fn events(n: usize) -> Vec<String> {
    let template = include_str!("../examples/order_placed.json").replace('\n', "");
    (0..n)
        .map(|i| {
            template
                .replace(
                    "6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4d5",
                    &format!("6f1c2d3e-4b5a-4c6d-8e7f-{i:012x}"),
                )
                .replace("BK-1", &format!("BK-{i:010}"))
        })
        .collect()
}

fn registry() -> Registry {
    let config = Config {
        schemas_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/schemas").into(),
        ..Config::default()
    };
    Registry::load(&config).expect("the shipped schemas load")
}

fn decode_validate_row(c: &mut Criterion) {
    let registry = registry();
    let stream = registry
        .get("order_placed")
        .expect("order_placed ships")
        .clone();
    let events = events(1000);
    let source: Arc<str> = "bench".into();
    let now = chrono::Utc::now();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("order_placed parse+validate+row x1000", |b| {
        b.iter(|| {
            for (i, raw) in events.iter().enumerate() {
                let value = parse_object(raw.as_bytes()).expect("valid JSON");
                let row = stream.to_row(value, raw.as_str().into(), source.clone(), i, now);
                assert!(row.is_ok());
            }
        })
    });
    let rows: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let value = parse_object(raw.as_bytes()).expect("valid JSON");
            stream
                .to_row(value, raw.as_str().into(), source.clone(), i, now)
                .expect("valid")
        })
        .collect();
    group.bench_function("order_placed COPY text encoding x1000", |b| {
        b.iter(|| sluice::sink::postgres::encode_rows(&stream, &rows).len())
    });
    group.finish();
}

criterion_group!(benches, decode_validate_row);
criterion_main!(benches);
