//! A fixed batch through one stage of the hot path, once: a stable figure to track
//! with an instruction counter rather than a clock (a shared VM's timings wander by
//! ±20 %). The stage is the first argument:
//! - `none`: only the set-up (load the schemas, generate the events);
//! - `general`: parse into a `serde_json::Value`, validate with `jsonschema`, build the
//!   row;
//! - `fast`: the fast path (read a tape, check it, build the row);
//! - `encode`: build the rows by the fast path, then encode them as COPY text.
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! B=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
//! for stage in none general fast; do perf stat -x, -e instructions:u $B $stage; done
//! ```
//! Subtract `none` and divide by the 10,000 events.

use std::hint::black_box;
use std::sync::Arc;

use sluice::ingest::body::parse_object;
use sluice::schema::{tape::Tape, Registry};
use sluice::Config;

const EVENTS: usize = 10_000;

fn main() {
    let stage = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "none".into());
    let config = Config {
        schemas_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/schemas").into(),
        ..Config::default()
    };
    let mut config = config;
    config.privacy.key_file =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/privacy.key").into());
    let registry = Registry::load(config.streams_config()).expect("the shipped schemas load");
    let stream = registry
        .get("order_placed")
        .expect("shipped stream")
        .clone();
    let events = sluice::loadgen::generate(EVENTS, 1);
    let source: Arc<str> = "bench".into();
    let now = chrono::Utc::now();
    let fast = |i: usize, raw: &str| {
        let tape = Tape::read(raw).expect("plain JSON");
        stream
            .fast_row(&tape, raw, None, &source, i, now)
            .expect("valid")
    };
    match stage.as_str() {
        "none" => {}
        "general" => {
            for (i, raw) in events.iter().enumerate() {
                let value = parse_object(raw.as_bytes()).expect("valid JSON");
                let row = stream.to_row(value, raw.as_str().into(), false, source.clone(), i, now);
                black_box(row.expect("valid"));
            }
        }
        "fast" => {
            for (i, raw) in events.iter().enumerate() {
                black_box(fast(i, raw));
            }
        }
        "encode" => {
            let rows: Vec<_> = events
                .iter()
                .enumerate()
                .map(|(i, raw)| fast(i, raw))
                .collect();
            for batch in rows.chunks(1000) {
                black_box(sluice::sink::postgres::encode_rows(&stream, batch, Some(1)));
            }
        }
        other => panic!("unknown stage {other}: none, general, fast or encode"),
    }
}
