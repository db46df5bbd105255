//! Writes that no retry can fix: `id_field` set on a stream whose table was made without
//! it gets its unique key at start-up (or start-up stops, naming the rows that repeat an
//! id); a table that refuses every row (a dropped column or unique key, a revoked grant)
//! answers each request with write-stage dead letters at once instead of retrying
//! forever, and `/readyz` and `/v1/streams` say which stream is refusing and why.

use std::time::Duration;

use serde_json::json;
use sluice::config::StreamConfig;

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, spawn_app_on, Db, TestApp};

fn with_id_field(c: &mut sluice::Config) {
    c.streams.insert(
        "reading".into(),
        StreamConfig {
            id_field: Some("seq".into()),
            ..Default::default()
        },
    );
}

/// `sluice check` with `id_field = "seq"` on `reading`, against the database at `url`.
fn check_with_id_field(url: &str) -> std::process::Output {
    crate::helpers::sluice_command()
        .arg("check")
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_DATABASE_URL", url)
        .env("SLUICE_STREAMS_READING_ID_FIELD", "seq")
        .output()
        .unwrap()
}

/// POSTs readings with a deadline: a request that hangs fails the test.
async fn post_readings(app: &TestApp, seqs: &[i64]) -> (u16, serde_json::Value) {
    let body: Vec<_> = seqs
        .iter()
        .map(|s| json!({"seq": s, "sensor": "a", "value": 1, "at": "2026-01-01T00:00:00Z"}))
        .collect();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        app.post("reading", "", "application/json", json!(body).to_string()),
    )
    .await
    .expect("the request is answered, not left hanging");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON answer"))
}

async fn id_field_set_on_an_existing_table_adds_its_unique_key_at_start_up(db: Db) {
    let Some(mut first) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    assert_eq!(post_readings(&first, &[1, 2]).await.0, 200);
    first.stop().await.unwrap();

    let out = check_with_id_field(&first.db.url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("start-up adds id_field's unique key"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut second = spawn_app_on(
        first.db.via(first.db.url.clone()),
        fixture_schemas(),
        with_id_field,
    )
    .await;
    let (status, body) = post_readings(&second, &[2, 3, 3]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_lettered"], 0, "{body}");
    assert_eq!(second.db.count("reading").await, 3, "2 and 3 once each");
    assert_eq!(second.db.distinct("reading", "seq").await, 3);
    second.stop().await.unwrap();
}

async fn id_field_on_a_table_whose_rows_repeat_an_id_stops_start_up_with_the_count(db: Db) {
    let Some(mut first) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    assert_eq!(post_readings(&first, &[1, 1, 1, 2]).await.0, 200);
    first.stop().await.unwrap();

    // `sluice check` sees it too, without changing anything.
    let out = check_with_id_field(&first.db.url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("2 of its rows repeat an id"),
        "{err}"
    );

    let mut config = sluice::Config {
        schemas_dir: fixture_schemas(),
        ..Default::default()
    };
    config.database.url = first.db.url.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.tcp.listen = String::new();
    with_id_field(&mut config);
    let e = format!(
        "{:#}",
        sluice::App::build(config)
            .await
            .err()
            .expect("start-up stops")
    );
    assert!(
        e.contains("2 of its rows repeat an id") && e.contains("UNIQUE"),
        "{e}"
    );
}

/// Makes `reading` refuse every row: its optional column `at` is dropped behind
/// Sluice's back, as an operator's mistake would.
async fn drop_column_at(app: &TestApp) {
    let table = app.db.quote("reading");
    let column = app.db.quote("at");
    app.db
        .execute(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
        .await;
}

async fn a_table_that_refuses_every_row_dead_letters_at_once_and_readyz_names_it(db: Db) {
    let Some(mut app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    assert_eq!(post_readings(&app, &[1]).await.0, 200);
    drop_column_at(&app).await;

    let (status, body) = post_readings(&app, &[2, 3, 4]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 0, "{body}");
    assert_eq!(body["dead_lettered"], 3, "{body}");
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter[1].as_deref(), Some("write"), "{letter:?}");
    }

    let (_, ready) = app.get_json("/readyz").await;
    let failing = ready["failing_streams"].as_array().expect("a list");
    assert_eq!(failing.len(), 1, "{ready}");
    assert_eq!(failing[0]["stream"], "reading");
    assert_eq!(failing[0]["write_state"], "refusing");
    assert!(
        failing[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("at")),
        "{ready}"
    );
    let (_, streams) = app.get_json("/v1/streams").await;
    let reading = streams["streams"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["stream"] == "reading"))
        .expect("reading's status");
    assert_eq!(reading["write_state"], "refusing", "{streams}");

    // The operator puts the column back: the stream writes again and says so.
    let table = app.db.quote("reading");
    let column = app.db.quote("at");
    let ty = match db {
        Db::Postgres => "timestamptz",
        Db::Mysql => "datetime(6)",
        Db::Sqlite => "TEXT",
    };
    app.db
        .execute(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
        .await;
    let (status, body) = post_readings(&app, &[5]).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["failing_streams"], json!([]), "{ready}");
    app.stop().await.unwrap();
}

/// The review's case: the unique key `id_field` needs is gone while Sluice runs
/// (PostgreSQL and SQLite refuse `ON CONFLICT` without it; MySQL's
/// `ON DUPLICATE KEY` does not need one).
async fn a_dropped_unique_key_dead_letters_instead_of_hanging(db: Db) {
    let Some(mut app) = spawn_app(db, fixture_schemas(), with_id_field).await else {
        return;
    };
    let table = app.db.quote("reading");
    match db {
        Db::Postgres => {
            app.db
                .execute(&format!(
                    "ALTER TABLE {table} DROP CONSTRAINT {}",
                    app.db.quote("reading_seq_key")
                ))
                .await
        }
        Db::Sqlite => {
            // SQLite cannot drop the index behind a UNIQUE constraint: the table is
            // made again without it, as an operator rebuilding it might.
            app.db
                .execute("CREATE TABLE reading_new AS SELECT * FROM reading")
                .await;
            app.db.execute("DROP TABLE reading").await;
            app.db
                .execute("ALTER TABLE reading_new RENAME TO reading")
                .await;
        }
        Db::Mysql => return,
    }
    let (status, body) = post_readings(&app, &[1, 2]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dead_lettered"], 2, "{body}");
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(
        ready["failing_streams"][0]["write_state"], "refusing",
        "{ready}"
    );
    app.stop().await.unwrap();
}

db_tests!(
    id_field_set_on_an_existing_table_adds_its_unique_key_at_start_up,
    id_field_on_a_table_whose_rows_repeat_an_id_stops_start_up_with_the_count,
    a_table_that_refuses_every_row_dead_letters_at_once_and_readyz_names_it,
    a_dropped_unique_key_dead_letters_instead_of_hanging,
);
