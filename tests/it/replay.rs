//! `sluice replay`: after a schema fix, dead letters move into their table once, even
//! when replay runs twice; those that still fail stay with their attempts counted.

use std::path::Path;

use serde_json::Value;
use sluice::replay::{replay, ReplayOptions, StreamReport};

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

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
    let path = schemas.path().join("reading.json");
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"maximum\": 1000", "\"maximum\": 10000");
    std::fs::write(&path, fixed).unwrap();
    let config = sluice::Config {
        schemas_dir: schemas.path().to_path_buf(),
        database: sluice::config::DatabaseConfig {
            url: app.db.url.clone(),
            ..Default::default()
        },
        ..Default::default()
    };

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
            still_failing: 2
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
            still_failing: 2
        }
    );
    let seqs = app.db.values("reading", "seq").await;
    assert_eq!(seqs, [Some("1".into()), Some("2".into()), Some("3".into())]);

    let again = replay(&config, &ReplayOptions::default()).await.unwrap();
    assert_eq!(
        again["reading"],
        StreamReport {
            replayed: 0,
            still_failing: 2
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

db_tests!(replay_after_a_schema_fix_moves_dead_letters_once);
