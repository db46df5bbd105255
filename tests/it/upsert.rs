//! Upserts (`[streams.NAME] upsert_key`, `version_field`): a row whose key is stored
//! replaces the stored row, only when its version is not older, within one batch as
//! across batches; the replaced row carries the load that replaced it, so a reader
//! following the watermark sees the update.

use std::path::Path;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Db, TestApp};

/// A CRM's deals (key `id`, version `updated_at`) and a price list (key `sku` and
/// `market`, no version).
fn write_schemas(dir: &Path) {
    let deal = json!({
        "type": "object",
        "required": ["id", "updated_at", "stage"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "integer"},
            "updated_at": {"type": "string", "format": "date-time"},
            "stage": {"type": "string", "maxLength": 32},
            "amount": {"type": "number"}
        }
    });
    let price = json!({
        "type": "object",
        "required": ["sku", "market", "price"],
        "properties": {
            "sku": {"type": "string", "maxLength": 32},
            "market": {"type": "string", "maxLength": 8},
            "price": {"type": "number"}
        }
    });
    std::fs::write(dir.join("deal.json"), deal.to_string()).unwrap();
    std::fs::write(dir.join("price.json"), price.to_string()).unwrap();
}

fn upserting(c: &mut sluice::Config) {
    c.streams.insert(
        "deal".into(),
        sluice::config::StreamConfig {
            upsert_key: Some(vec!["id".into()]),
            version_field: Some("updated_at".into()),
            ..Default::default()
        },
    );
    c.streams.insert(
        "price".into(),
        sluice::config::StreamConfig {
            upsert_key: Some(vec!["sku".into(), "market".into()]),
            ..Default::default()
        },
    );
}

async fn post(app: &TestApp, stream: &str, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let r = app.post(stream, "", "application/x-ndjson", body).await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dead_lettered"], 0, "{answer}");
}

fn deal(id: i64, hour: u32, stage: &str) -> Value {
    json!({"id": id, "updated_at": format!("2026-12-01T{hour:02}:00:00Z"), "stage": stage})
}

/// (id, stage, _load_id) of every deal, by id.
async fn deals(app: &TestApp) -> Vec<(String, String, String)> {
    app.db
        .query(&format!(
            "SELECT {}, stage, {} FROM deal ORDER BY id",
            app.db.text("id"),
            app.db.text("_load_id")
        ))
        .await
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].clone().unwrap(),
                r[2].clone().unwrap(),
            )
        })
        .collect()
}

/// (id, stage) of each of `deals`.
fn stages(deals: &[(String, String, String)]) -> Vec<(&str, &str)> {
    deals
        .iter()
        .map(|(id, stage, _)| (id.as_str(), stage.as_str()))
        .collect()
}

/// (sku, market, price) of every price of `sku`, by market.
async fn prices(app: &TestApp, sku: &str) -> Vec<Vec<String>> {
    app.db
        .query(&format!(
            "SELECT sku, market, {} FROM price WHERE sku = '{sku}' ORDER BY market",
            app.db.text("price")
        ))
        .await
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap).collect())
        .collect()
}

async fn a_newer_row_replaces_the_stored_one_and_an_older_one_does_not(kind: Db) {
    let schemas = tempfile::tempdir().unwrap();
    write_schemas(schemas.path());
    let Some(app) = spawn_app(kind, schemas.path().to_path_buf(), upserting).await else {
        return;
    };
    // One batch: deal 1 three times (the newest wins, the oldest is ignored), deal 2 once.
    post(
        &app,
        "deal",
        &[
            deal(1, 10, "new"),
            deal(2, 10, "new"),
            deal(1, 11, "won"),
            deal(1, 9, "lost"),
        ],
    )
    .await;
    let first = deals(&app).await;
    assert_eq!(first.len(), 2, "{kind:?}: {first:?}");
    assert_eq!(
        (first[0].0.as_str(), first[0].1.as_str()),
        ("1", "won"),
        "{kind:?}"
    );
    assert_eq!(
        (first[1].0.as_str(), first[1].1.as_str()),
        ("2", "new"),
        "{kind:?}"
    );
    // The next batch: an older version of deal 2 is ignored, deal 1 at the same version
    // replaces it (not older), deal 3 is added.
    post(
        &app,
        "deal",
        &[
            deal(2, 9, "lost"),
            deal(3, 10, "new"),
            deal(1, 11, "won again"),
        ],
    )
    .await;
    let second = deals(&app).await;
    assert_eq!(
        stages(&second),
        [("1", "won again"), ("2", "new"), ("3", "new")],
        "{kind:?}"
    );
    // The replaced row carries the load that replaced it (a reader following the
    // watermark sees the update); the untouched one keeps its load.
    assert!(second[0].2 > first[0].2, "{kind:?}: {first:?} {second:?}");
    assert_eq!(second[1].2, first[1].2, "{kind:?}");

    // A batch of 19 rows (on SQLite, statements of several rows each, then single
    // ones): deal 4 at versions in no order, deal 5 and 6 twice each, within what one
    // statement holds and across statements. Only the newest of each stays.
    let hours = [3, 9, 4, 12, 7, 1, 11, 2, 10, 8, 6, 5, 13, 0, 14];
    let mut batch: Vec<Value> = hours
        .iter()
        .map(|h| deal(4, *h, &format!("at {h}")))
        .collect();
    batch.insert(2, deal(5, 10, "five new"));
    batch.insert(5, deal(5, 11, "five won"));
    batch.insert(7, deal(6, 12, "six won"));
    batch.push(deal(6, 10, "six older"));
    assert_eq!(batch.len(), 19);
    post(&app, "deal", &batch).await;
    let third = deals(&app).await;
    assert_eq!(
        stages(&third),
        [
            ("1", "won again"),
            ("2", "new"),
            ("3", "new"),
            ("4", "at 14"),
            ("5", "five won"),
            ("6", "six won")
        ],
        "{kind:?}"
    );

    // A composite key without a version: the later row always replaces.
    post(
        &app,
        "price",
        &[
            json!({"sku": "A", "market": "US", "price": 1.5}),
            json!({"sku": "A", "market": "DE", "price": 2.5}),
        ],
    )
    .await;
    post(
        &app,
        "price",
        &[json!({"sku": "A", "market": "US", "price": 3.5, "note": "kept in _extra"})],
    )
    .await;
    assert_eq!(
        prices(&app, "A").await,
        [["A", "DE", "2.5"], ["A", "US", "3.5"]],
        "{kind:?}"
    );

    // Without a version, order decides, within a statement of several rows too: in a
    // batch of 19, the last price of each market stays.
    let markets = ["US", "DE", "JP"];
    let batch: Vec<Value> = (0..19)
        .map(|i| json!({"sku": "B", "market": markets[(i * 7 / 3) % 3], "price": i as f64 + 0.5}))
        .collect();
    post(&app, "price", &batch).await;
    let last = |m: &str| {
        let i = (0..19).rfind(|i| markets[(i * 7 / 3) % 3] == m).unwrap();
        ["B".to_owned(), m.to_owned(), format!("{i}.5")]
    };
    assert_eq!(
        prices(&app, "B").await,
        [last("DE"), last("JP"), last("US")],
        "{kind:?}"
    );
}

/// `upsert_key` set on a stream whose table exists without the key: start-up adds it
/// (a composite key on MySQL's bounded text type too), or refuses, counting the rows
/// that repeat a key, while they do.
async fn an_existing_table_gets_its_upsert_key_at_start_up(kind: Db) {
    let schemas = tempfile::tempdir().unwrap();
    write_schemas(schemas.path());
    let Some(mut plain) = spawn_app(kind, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let rows = [
        json!({"sku": "A", "market": "US", "price": 1.0}),
        json!({"sku": "A", "market": "US", "price": 2.0}),
    ];
    post(&plain, "price", &rows).await;
    plain.stop().await.unwrap();
    let db = plain.db.via(plain.db.url.clone());
    // Two rows share a key: refused, with the count and the DDL to run.
    let mut config = sluice::Config {
        schemas_dir: schemas.path().to_path_buf(),
        ..Default::default()
    };
    config.database.url = db.url.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.tcp.listen = "127.0.0.1:0".into();
    config.privacy.key_file = Some(crate::helpers::test_privacy_key());
    upserting(&mut config);
    let refused = match sluice::App::build(config).await {
        Ok(_) => panic!("{kind:?}: started with a repeated key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("sets upsert_key = [\"sku\", \"market\"]")
            && refused.contains("1 of its rows repeat"),
        "{kind:?}: {refused}"
    );
    db.execute("DELETE FROM price WHERE price > 1.5").await;
    let app = crate::helpers::spawn_app_on(db, schemas.path().to_path_buf(), upserting).await;
    post(
        &app,
        "price",
        &[json!({"sku": "A", "market": "US", "price": 4.5})],
    )
    .await;
    let prices = app
        .db
        .query(&format!("SELECT {} FROM price", app.db.text("price")))
        .await;
    assert_eq!(prices, [[Some("4.5".to_string())]], "{kind:?}");
}

/// Settings that cannot work are refused at start-up, naming what to change.
#[tokio::test]
async fn key_settings_that_cannot_work_are_refused_at_start_up() {
    let schemas = tempfile::tempdir().unwrap();
    write_schemas(schemas.path());
    let cases: [(sluice::config::StreamConfig, &str); 4] = [
        (
            sluice::config::StreamConfig {
                id_field: Some("id".into()),
                upsert_key: Some(vec!["id".into()]),
                ..Default::default()
            },
            "sets both id_field and upsert_key",
        ),
        (
            sluice::config::StreamConfig {
                upsert_key: Some(vec!["amount".into()]),
                ..Default::default()
            },
            "upsert_key property `amount` must be required",
        ),
        (
            sluice::config::StreamConfig {
                version_field: Some("updated_at".into()),
                ..Default::default()
            },
            "version_field needs upsert_key",
        ),
        (
            sluice::config::StreamConfig {
                upsert_key: Some(vec!["id".into()]),
                version_field: Some("missing".into()),
                ..Default::default()
            },
            "version_field names a property the schema does not declare",
        ),
    ];
    for (settings, expected) in cases {
        let mut config = sluice::Config {
            schemas_dir: schemas.path().to_path_buf(),
            ..Default::default()
        };
        config.streams.insert("deal".into(), settings);
        let error = match sluice::schema::Registry::load(config.streams_config()) {
            Ok(_) => panic!("accepted; expected {expected}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains(expected), "{error}");
    }
}

crate::db_tests!(
    a_newer_row_replaces_the_stored_one_and_an_older_one_does_not,
    an_existing_table_gets_its_upsert_key_at_start_up,
);
