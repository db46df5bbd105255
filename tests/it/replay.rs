//! `sluice replay`: after a schema fix, dead letters move into their table once, even
//! when replay runs twice; those that still fail stay with their attempts counted.

use std::path::Path;

use serde_json::Value;
use sluice::replay::{ReplayOptions, StreamReport};

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

/// `sluice replay` as the command runs it, with `config`.
async fn replay(
    config: &sluice::Config,
    options: &ReplayOptions,
) -> anyhow::Result<std::collections::BTreeMap<String, StreamReport>> {
    let settings = config.replay_settings();
    sluice::replay::replay(
        config.streams_config(),
        &config.database,
        &settings,
        options,
    )
    .await
}

/// The configuration `sluice replay` runs with: these schemas, this database.
fn replay_config(schemas: &Path, url: &str) -> sluice::Config {
    sluice::Config {
        schemas_dir: schemas.to_path_buf(),
        database: sluice::config::DatabaseConfig {
            url: url.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The schema fix the replay tests make: `reading.value` may go up to 10,000.
fn widen_value_range(schemas: &Path) {
    let path = schemas.join("reading.json");
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"maximum\": 1000", "\"maximum\": 10000");
    std::fs::write(&path, fixed).unwrap();
}

fn copy_schemas(to: &Path) {
    for entry in std::fs::read_dir(fixture_schemas()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

async fn replay_after_a_schema_fix_moves_dead_letters_once(db: Db) {
    let schemas = tempfile::tempdir().unwrap();
    copy_schemas(schemas.path());
    let Some(mut app) = spawn_app(db, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let body = "{\"seq\": 1, \"sensor\": \"a\", \"value\": 1}\n\
                {\"seq\": 2, \"sensor\": \"a\", \"value\": 5000}\n\
                {\"seq\": 3, \"sensor\": \"a\", \"value\": 7000}\n\
                {\"seq\": 4, \"sensor\": \"a\", \"value\": 99999}\n\
                {not json\n";
    let r = app.post("reading", "", "application/x-ndjson", body).await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (
            answer["accepted"].as_i64(),
            answer["dead_lettered"].as_i64()
        ),
        (Some(1), Some(4)),
        "{answer}"
    );
    app.stop().await.unwrap();

    // The fix: the sensor's range was too narrow.
    widen_value_range(schemas.path());
    let config = replay_config(schemas.path(), &app.db.url);

    let dry = replay(
        &config,
        &ReplayOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        dry["reading"],
        StreamReport {
            replayed: 2,
            still_failing: 2,
            taken_by_another_run: 0
        }
    );
    assert_eq!(
        app.db.count("reading").await,
        1,
        "a dry run changes nothing"
    );
    assert_eq!(app.db.dead_letters().await.len(), 4);

    let report = replay(
        &config,
        &ReplayOptions {
            stream: Some("reading".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        report["reading"],
        StreamReport {
            replayed: 2,
            still_failing: 2,
            taken_by_another_run: 0
        }
    );
    let seqs = app.db.values("reading", "seq").await;
    assert_eq!(seqs, [Some("1".into()), Some("2".into()), Some("3".into())]);
    // The replayed rows are a load of their own in the ledger, from "replay".
    let loads = app
        .db
        .query(&format!(
            "SELECT source, {} FROM sluice_loads ORDER BY load_id",
            app.db.text(&app.db.quote("rows"))
        ))
        .await;
    let loads: Vec<(String, String)> = loads
        .into_iter()
        .map(|l| (l[0].clone().unwrap(), l[1].clone().unwrap()))
        .collect();
    assert_eq!(
        loads,
        [("http".into(), "1".into()), ("replay".into(), "2".into())],
        "{db:?}"
    );
    let replayed_in_replay_load = app
        .db
        .query(&format!(
            "SELECT {} FROM reading r JOIN sluice_loads l ON l.load_id = r._load_id WHERE l.source = 'replay'",
            app.db.text("COUNT(*)")
        ))
        .await;
    assert_eq!(replayed_in_replay_load[0][0].as_deref(), Some("2"));

    let again = replay(&config, &ReplayOptions::default()).await.unwrap();
    assert_eq!(
        again["reading"],
        StreamReport {
            replayed: 0,
            still_failing: 2,
            taken_by_another_run: 0
        }
    );
    assert_eq!(
        app.db.count("reading").await,
        3,
        "a second replay duplicates nothing"
    );
    let left = app
        .db
        .query(&format!(
            "SELECT payload, {}, error FROM sluice_dead_letters ORDER BY id",
            app.db.text("attempts")
        ))
        .await;
    assert_eq!(left.len(), 2);
    assert!(left[0][0].as_deref().unwrap().contains("99999"));
    assert_eq!(left[0][1].as_deref(), Some("3"), "two replays counted");
    assert!(
        left[0][2].as_deref().unwrap().contains("maximum of 10000"),
        "the new reason: {left:?}"
    );
    assert_eq!(left[1][0].as_deref(), Some("{not json"));
}

/// `sluice replay`, the binary, against `db` with the schemas in `schemas`.
fn replay_binary(db: &crate::helpers::TestDb, schemas: &Path, args: &[&str]) -> String {
    let out = crate::helpers::sluice_command()
        .arg("replay")
        .args(args)
        .env("SLUICE_SCHEMAS_DIR", schemas)
        .env("SLUICE_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Replay through the binary: a TCP line keeps its routing field in its dead letter and
/// loses it on replay, as on the live path; a schema that gained an optional property
/// gets its column first; `route` dead letters go into the stream named by `--into`.
async fn the_replay_binary_strips_routing_fields_evolves_tables_and_routes_unknown_streams(db: Db) {
    use tokio::io::AsyncWriteExt;
    let schemas = tempfile::tempdir().unwrap();
    copy_schemas(schemas.path());
    let Some(mut app) = spawn_app(db, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let mut tcp = tokio::net::TcpStream::connect(app.tcp_addr.unwrap())
        .await
        .unwrap();
    tcp.write_all(
        b"{\"stream\": \"reading\", \"seq\": 1, \"sensor\": \"tcp\", \"value\": 5000}\n\
          {\"stream\": \"readings\", \"seq\": 2, \"sensor\": \"typo\", \"value\": 1}\n",
    )
    .await
    .unwrap();
    drop(tcp);
    let r = app
        .post(
            "reading",
            "",
            "application/json",
            r#"{"seq": 3, "sensor": "http", "value": 1, "note": "new"}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.db.dead_letters().await.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "three dead letters");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();

    // The fix: a wider range, and a new optional property.
    let path = schemas.path().join("reading.json");
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"maximum\": 1000", "\"maximum\": 10000")
        .replace(
            "\"at\": {",
            "\"note\": { \"type\": \"string\" },\n    \"at\": {",
        );
    std::fs::write(&path, fixed).unwrap();

    let out = replay_binary(&app.db, schemas.path(), &[]);
    assert!(
        out.contains("reading: 2 replayed, 0 still failing"),
        "{out}"
    );
    let out = replay_binary(&app.db, schemas.path(), &["--into", "reading"]);
    assert!(
        out.contains("reading: 1 replayed, 0 still failing"),
        "{out}"
    );
    assert_eq!(
        app.db.values("reading", "sensor").await,
        [Some("http".into()), Some("tcp".into()), Some("typo".into())]
    );
    let notes = app
        .db
        .query("SELECT sensor, note FROM reading WHERE note IS NOT NULL")
        .await;
    assert_eq!(notes, [[Some("http".into()), Some("new".into())]]);
    assert!(app.db.dead_letters().await.is_empty());
}

/// Four replays at once over the same 1,000 dead letters: every row is written exactly
/// once, and the runs' counts add up.
async fn replays_at_once_write_each_row_once(db: Db) {
    let schemas = tempfile::tempdir().unwrap();
    copy_schemas(schemas.path());
    let Some(mut app) = spawn_app(db, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let body: String = (0..1000)
        .map(|i| format!("{{\"seq\": {i}, \"sensor\": \"s\", \"value\": 5000}}\n"))
        .collect();
    let r = app.post("reading", "", "application/x-ndjson", body).await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["dead_lettered"], 1000);
    app.stop().await.unwrap();
    widen_value_range(schemas.path());

    // In one process, so that the four runs read the same pages at the same time.
    let config = replay_config(schemas.path(), &app.db.url);
    let options = ReplayOptions::default();
    let runs = (0..4).map(|_| replay(&config, &options));
    let outputs: Vec<_> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let replayed: usize = outputs
        .iter()
        .map(|o| o.get("reading").map_or(0, |r| r.replayed))
        .sum();
    assert_eq!(replayed, 1000, "{outputs:?}");
    assert_eq!(app.db.count("reading").await, 1000);
    assert_eq!(app.db.distinct("reading", "seq").await, 1000);
    assert!(app.db.dead_letters().await.is_empty());
}

db_tests!(
    replay_after_a_schema_fix_moves_dead_letters_once,
    the_replay_binary_strips_routing_fields_evolves_tables_and_routes_unknown_streams,
    replays_at_once_write_each_row_once,
);
