//! `Content-Type: text/csv`: a header row, then one event per row, each cell converted
//! to the type its property declares; quoted commas and quotes, a newline inside a
//! quoted cell and a byte order mark are read by a real CSV parser; an empty cell is
//! absent; a bad row is dead-lettered with its line.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Db};

async fn csv_rows_become_typed_events_and_a_bad_row_names_its_line(kind: Db) {
    let schemas = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "required": ["sku"],
        "properties": {
            "sku": {"type": "string", "maxLength": 16},
            "note": {"type": "string"},
            "qty": {"type": "integer"},
            "price": {"type": "number"},
            "active": {"type": "boolean"},
            "at": {"type": "string", "format": "date-time"}
        }
    });
    std::fs::write(schemas.path().join("price_row.json"), schema.to_string()).unwrap();
    let Some(app) = spawn_app(kind, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let body = "\u{feff}sku,note,qty,price,active,at\r\n\
                A1,\"hello, world\",3,1.5,true,2026-12-01T10:00:00Z\r\n\
                B2,\"two\nlines\",,2.5,0,\r\n\
                C3,plain,notanumber,3,1,\r\n\
                D4,\"say \"\"hi\"\"\",7,4.25,no,2026-12-01T11:00:00Z\r\n";
    let r = app.post("price_row", "", "text/csv", body).await;
    let status = r.status();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            answer["accepted"].as_i64(),
            answer["dead_lettered"].as_i64()
        ),
        (Some(3), Some(1)),
        "{kind:?}: {answer}"
    );
    let rows = app
        .db
        .query(&format!(
            "SELECT sku, note, {}, {}, {} FROM price_row ORDER BY sku",
            app.db.text("qty"),
            app.db.text("price"),
            app.db.text("CASE WHEN active THEN 1 ELSE 0 END")
        ))
        .await;
    assert_eq!(
        rows,
        [
            ["A1", "hello, world", "3", "1.5", "1"]
                .map(|s| Some(s.to_owned()))
                .to_vec(),
            vec![
                Some("B2".into()),
                Some("two\nlines".into()),
                None,
                Some("2.5".into()),
                Some("0".into())
            ],
            ["D4", "say \"hi\"", "7", "4.25", "0"]
                .map(|s| Some(s.to_owned()))
                .to_vec(),
        ],
        "{kind:?}"
    );
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (error, payload, source) = (
        letters[0][2].clone().unwrap(),
        letters[0][3].clone().unwrap(),
        letters[0][4].clone().unwrap(),
    );
    assert!(error.contains("/qty"), "{error}");
    assert!(payload.contains("\"notanumber\""), "{payload}");
    assert!(source.ends_with(" line 5"), "{kind:?}: {source}");
    // No header row: refused whole, as a body that does not parse.
    let r = app.post("price_row", "", "text/csv", "").await;
    assert_eq!(r.status(), 400);
}

crate::db_tests!(csv_rows_become_typed_events_and_a_bad_row_names_its_line);
