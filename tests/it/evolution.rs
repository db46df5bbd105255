//! Schema evolution at start-up: a new optional property becomes a new column; a change
//! that cannot be applied safely (a new required property on a table with rows, a type
//! change) stops start-up with a clear message and the DDL to run.

use serde_json::json;
use sluice::{App, Config};

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

fn edit_reading(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value)) {
    let path = dir.join("reading.json");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut schema);
    std::fs::write(&path, schema.to_string()).unwrap();
}

async fn a_new_optional_property_adds_a_column_and_a_new_required_one_stops_start_up(db: Db) {
    let schemas = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_schemas()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, schemas.path().join(path.file_name().unwrap())).unwrap();
    }
    let Some(mut app) = spawn_app(db, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let (status, _) = app
        .post_json("reading", &json!({"seq": 1, "sensor": "a", "value": 1}))
        .await;
    assert_eq!(status, 200);
    app.stop().await.unwrap();
    let config = |url: &str| {
        let mut c = Config {
            schemas_dir: schemas.path().to_path_buf(),
            ..Config::default()
        };
        c.database.url = url.to_owned();
        c.http.listen = "127.0.0.1:0".into();
        c.tcp.listen = String::new();
        c
    };

    // v2: an optional `unit`.
    edit_reading(schemas.path(), |s| {
        s["properties"]["unit"] = json!({"type": "string", "maxLength": 8})
    });
    let v2 = App::build(config(&app.db.url))
        .await
        .expect("an optional property is applied");
    drop(v2);
    let columns = app
        .db
        .query(&format!("SELECT {} FROM reading", app.db.text("unit")))
        .await;
    assert_eq!(
        columns,
        vec![vec![None]],
        "the old row has NULL in the new column"
    );

    // v3: a required `site` on a table that has rows.
    edit_reading(schemas.path(), |s| {
        s["properties"]["site"] = json!({"type": "string"});
        s["required"].as_array_mut().unwrap().push(json!("site"));
    });
    // `{:#}` shows the whole chain of the anyhow error, causes included.
    let e = format!(
        "{:#}",
        App::build(config(&app.db.url))
            .await
            .err()
            .expect("start-up stops")
    );
    assert!(
        e.contains("`site` is now required") && e.contains("ALTER TABLE"),
        "{e}"
    );

    // v4: `site` optional again, but `value` changes from number to string.
    edit_reading(schemas.path(), |s| {
        s["required"] = json!(["seq", "sensor", "value"]);
        s["properties"]["value"] = json!({"type": "string"});
    });
    let e = App::build(config(&app.db.url))
        .await
        .err()
        .expect("start-up stops")
        .to_string();
    assert!(
        e.contains("column `value`") && e.contains("schema now makes it"),
        "{e}"
    );
}

db_tests!(a_new_optional_property_adds_a_column_and_a_new_required_one_stops_start_up);
