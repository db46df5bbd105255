//! A fixed batch through one stage of the hot path, once: a stable figure to track
//! with an instruction counter rather than a clock (a shared VM's timings wander by
//! ±20 %). The stage is the first argument:
//! - `none`: only the set-up (load the schemas, generate the events);
//! - `general`: parse into a `serde_json::Value`, validate with `jsonschema`, build the
//!   row;
//! - `tape`: the event's UTF-8 check and its tape only (the fast path's reading);
//! - `fast`: the fast path (read a tape, check it, build the row);
//! - `encode`: build the rows by the fast path, then encode them as COPY text;
//! - `sqlite`: build the rows by the fast path, then write them to a new SQLite
//!   database in a temporary directory, 1,000 per batch, as the writer does (the
//!   database's set-up is counted too: compare this stage between builds, not with
//!   the others).
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! B=$(ls -t target/release/deps/instructions-* | grep -v '\.d$' | head -1)
//! for stage in none general fast; do perf stat -x, -e instructions:u $B $stage; done
//! ```
//! Subtract `none` and divide by the 10,000 events. After the stage, `x30` gives every
//! order 30 items (about 2.5 KB, the cost per KB), and `postgres` compiles the schemas
//! for PostgreSQL (whose JSON columns may take the text as written):
//! `$B fast x30 postgres`.

use std::hint::black_box;
use std::sync::Arc;

use sluice::ingest::body::parse_object;
use sluice::schema::{tape::Tape, Registry};
use sluice::Config;

const EVENTS: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let stage = args.first().map_or("none", String::as_str).to_owned();
    let items: Option<usize> = args
        .iter()
        .skip(1)
        .find_map(|a| a.strip_prefix('x'))
        .map(|n| n.parse().expect("x30: items per order"));
    let postgres = args.iter().skip(1).any(|a| a == "postgres");
    let config = Config {
        schemas_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/schemas").into(),
        ..Config::default()
    };
    let mut config = config;
    if postgres {
        // Never connected to: the schemas are only compiled for its dialect.
        config.database.url = "postgres://sluice@127.0.0.1/instructions".into();
    }
    config.privacy.key_file =
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/privacy.key").into());
    let registry = Registry::load(config.streams_config()).expect("the shipped schemas load");
    let stream = registry
        .get("order_placed")
        .expect("shipped stream")
        .clone();
    let mut events = sluice::loadgen::generate(EVENTS, 1);
    if let Some(n) = items {
        for event in &mut events {
            *event = sluice::loadgen::with_items(event, n).expect("a generated order");
        }
    }
    let source: Arc<str> = "bench".into();
    let now = chrono::Utc::now();
    // One buffer of nodes for every event, as the filing path keeps one.
    let nodes = std::cell::RefCell::new(Vec::with_capacity(64));
    let fast = |i: usize, raw: &str| {
        // The filing path's check of the event's bytes.
        let raw = sluice::scan::utf8(raw.as_bytes()).expect("UTF-8");
        let tape = Tape::read_into(raw, nodes.take()).expect("plain JSON");
        let row = stream
            .fast_row(&tape, raw, None, &source, i, now)
            .expect("valid");
        nodes.replace(tape.into_nodes());
        row
    };
    // Every event's row by the fast path.
    let all_rows = || -> Vec<_> {
        events
            .iter()
            .enumerate()
            .map(|(i, raw)| fast(i, raw))
            .collect()
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
        "tape" => {
            let mut nodes = nodes.take();
            for raw in &events {
                let raw = sluice::scan::utf8(raw.as_bytes()).expect("UTF-8");
                let tape = Tape::read_into(raw, nodes).expect("plain JSON");
                nodes = black_box(tape).into_nodes();
            }
        }
        "fast" => {
            for (i, raw) in events.iter().enumerate() {
                black_box(fast(i, raw));
            }
        }
        "encode" => {
            let rows = all_rows();
            for batch in rows.chunks(1000) {
                black_box(sluice::sink::postgres::encode_rows(&stream, batch, Some(1)));
            }
        }
        "sqlite" => {
            let rows = all_rows();
            let dir = tempfile::tempdir().expect("a temporary directory");
            config.database.url = format!("sqlite://{}", dir.path().join("i.db").display());
            // The writer blocks its worker thread in place, as under `serve`.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let (_, storage) = sluice::sink::open(&config.database, registry)
                    .await
                    .expect("the SQLite database opens");
                for batch in rows.chunks(1000) {
                    storage
                        .writer
                        .write_rows(&stream, batch)
                        .await
                        .expect("the rows are written");
                }
                storage.close().await;
            });
        }
        other => panic!("unknown stage {other}: none, general, tape, fast, encode or sqlite"),
    }
}
