//! Every row of the type mapping round-trips, identically in every database: timestamps,
//! uuids, nested JSON, nulls, unicode, 64-bit integers, and text that looks like SQL.

use serde_json::{json, Value};

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db, TestDb};

const COLUMNS: [&str; 14] = [
    "id",
    "s",
    "s_max",
    "ts",
    "u",
    "i",
    "n",
    "b",
    "o",
    "a",
    "anything",
    "opt",
    "_received_at",
    "_extra",
];

fn events() -> Value {
    json!([
        {
            "id": 1,
            "s": "O'Brien\"; DROP TABLE typemap; -- \\ back\\slash\ttab\nnewline\r\n",
            "s_max": "héllo ✓ 日本語 🚀 ሰላም",
            "ts": "2024-05-01T14:00:00.123456+02:00",
            "u": "6F1C2D3E-4B5A-4C6D-8E7F-8091A2B3C4D5",
            "i": 9223372036854775807i64,
            "n": 0.1,
            "b": true,
            "o": {"k": [1, {"x": null}], "ü": "v", "q": "it's; \"quoted\""},
            "a": [1, "two", null, {"three": 3.5}],
            "anything": "a string in a column of no single type",
            "opt": null,
            "zzz": {"undeclared": true}
        },
        {
            "id": 2,
            "s": "",
            "ts": "1999-12-31T23:59:59Z",
            "i": -9223372036854775808i64,
            "n": -1.5e300,
            "b": false,
            "anything": 42
        }
    ])
}

/// The expected rows, normalized (see `normalize`); `_received_at` is checked apart.
fn expected() -> Vec<Vec<Option<Value>>> {
    let e = events();
    let first = &e[0];
    vec![
        vec![
            Some(json!(1)),
            Some(first["s"].clone()),
            Some(first["s_max"].clone()),
            Some(json!("2024-05-01T12:00:00.123456Z")),
            Some(json!("6f1c2d3e-4b5a-4c6d-8e7f-8091a2b3c4d5")),
            Some(json!(9223372036854775807i64)),
            Some(json!(0.1)),
            Some(json!(true)),
            Some(first["o"].clone()),
            Some(first["a"].clone()),
            Some(json!("a string in a column of no single type")),
            None,
            Some(json!({"zzz": {"undeclared": true}})),
        ],
        vec![
            Some(json!(2)),
            Some(json!("")),
            None,
            Some(json!("1999-12-31T23:59:59.000000Z")),
            None,
            Some(json!(-9223372036854775808i64)),
            Some(json!(-1.5e300)),
            Some(json!(false)),
            None,
            None,
            Some(json!(42)),
            None,
            None,
        ],
    ]
}

/// Reads a database's text rendering of a column back into a comparable JSON value.
fn normalize(column: &str, text: Option<String>) -> Option<Value> {
    let text = text?;
    Some(match column {
        "id" | "i" => json!(text.parse::<i64>().expect("an integer")),
        "n" => json!(text.parse::<f64>().expect("a number")),
        "b" => json!(matches!(text.as_str(), "1" | "true" | "t")),
        "o" | "a" | "anything" | "_extra" => serde_json::from_str(&text).expect("JSON"),
        "ts" => json!(normalize_timestamp(&text)),
        _ => json!(text),
    })
}

/// `2024-05-01 12:00:00.123456+00` (PostgreSQL), `2024-05-01 12:00:00.123456` (MySQL,
/// UTC) and `2024-05-01T12:00:00.123456Z` (SQLite) to one RFC 3339 form.
fn normalize_timestamp(text: &str) -> String {
    let t = text.replace(' ', "T");
    let t = if t.ends_with("+00") {
        format!("{t}:00")
    } else {
        t
    };
    let t = if t.ends_with('Z') || t.contains('+') {
        t
    } else {
        format!("{t}Z")
    };
    chrono::DateTime::parse_from_rfc3339(&t)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&chrono::Utc)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn read_back(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let columns: Vec<String> = COLUMNS.iter().map(|c| db.text(&db.quote(c))).collect();
    db.query(&format!(
        "SELECT {} FROM typemap ORDER BY id",
        columns.join(", ")
    ))
    .await
}

async fn every_type_round_trips_identically(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let before = chrono::Utc::now();
    let (status, answer) = app.post_json("typemap", &events()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    let rows = read_back(&app.db).await;
    assert_eq!(rows.len(), 2);
    let mut got = Vec::new();
    for row in rows {
        let mut normalized = Vec::new();
        for (column, text) in COLUMNS.iter().zip(row) {
            if *column == "_received_at" {
                let t = normalize_timestamp(text.as_deref().expect("_received_at is NOT NULL"));
                let t = chrono::DateTime::parse_from_rfc3339(&t).unwrap();
                assert!(
                    t >= before - chrono::Duration::seconds(1) && t <= chrono::Utc::now(),
                    "{t}"
                );
                continue;
            }
            normalized.push(normalize(column, text));
        }
        got.push(normalized);
    }
    assert_eq!(got, expected(), "{db:?}");
    let tables = app.db.count("typemap").await;
    assert_eq!(tables, 2, "the DROP TABLE in a value is only text");
}

/// Integers beyond 64 bits inside JSON columns and `_extra` keep every digit (they used
/// to become floats: 123456789012345678901234567890 came back as 1.2345678901234568e29).
async fn integers_beyond_64_bits_in_json_keep_every_digit(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let event = r#"{"id": 1, "s": "x", "o": {"big": 123456789012345678901234567890, "f": 1.5, "n": [-18446744073709551617]}, "more": 18446744073709551616}"#;
    let r = app.post("typemap", "", "application/json", event).await;
    assert_eq!(r.status(), 200);
    let rows = app
        .db
        .query(&format!(
            "SELECT {}, {} FROM typemap",
            app.db.text("o"),
            app.db.text("_extra")
        ))
        .await;
    let o = rows[0][0].as_deref().unwrap();
    let extra = rows[0][1].as_deref().unwrap();
    assert!(o.contains("123456789012345678901234567890"), "{o}");
    assert!(o.contains("-18446744073709551617"), "{o}");
    assert!(o.contains("1.5"), "{o}");
    assert!(extra.contains("18446744073709551616"), "{extra}");
}

/// However a JSON value is written (whitespace, key order, escapes, number forms), each
/// database stores what it stores for the same value's compact text with sorted keys
/// (serde_json's): the same `jsonb` on PostgreSQL, where Sluice may send the text as
/// written, the same text elsewhere.
async fn a_json_value_written_any_way_is_stored_as_its_compact_text_would_be(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let values = [
        r#"{"b": 1, "a": [true, null, "x"]}"#,
        "{\n  \"z\": {\"y\": 2, \"x\": 1},\n  \"a\": 0.25\r\n}",
        r#"{"esc": "tab\there \"q\" \u00fc \u2028 \\ \/", "plain": "d\u00e9j\u00e0"}"#,
        r#"{"\u0061": 1, "b": 2}"#,
        r#"{"n": [1.50, 1e2, -0, 0.1, 1E-7, -0.0, 100, 2.5e-3, 12345678901234567]}"#,
        r#"{"dup": 1, "dup": 2}"#,
        r#"{"deep": {"a": {"b": {"c": [[], {}, [{}]]}}}}"#,
        r#"{"ü": "ß", "emoji": "🚀", "": ""}"#,
        r#"{}"#,
    ];
    // One JSON array: NDJSON would not take the line breaks.
    let events: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{{\"id\": {i}, \"s\": \"x\", \"o\": {v}, \"a\": [{v}, 3.25, {v}]}}"))
        .collect();
    let body = format!("[{}]", events.join(",\n"));
    let r = app.post("typemap", "", "application/json", body).await;
    let status = r.status();
    let answer = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(&format!("\"accepted\":{}", values.len())),
        "{answer}"
    );
    let rows = app
        .db
        .query(&format!(
            "SELECT {}, {} FROM typemap ORDER BY id",
            app.db.text("o"),
            app.db.text("a")
        ))
        .await;
    assert_eq!(rows.len(), values.len());
    for (v, row) in values.iter().zip(rows) {
        let value: Value = serde_json::from_str(v).unwrap();
        let compact = [
            value.to_string(),
            json!([value.clone(), 3.25, value.clone()]).to_string(),
        ];
        for (got, compact) in row.into_iter().zip(compact) {
            let expected = match db {
                Db::Postgres => app
                    .db
                    .query(&format!("SELECT ($j${compact}$j$::jsonb)::text"))
                    .await
                    .remove(0)
                    .remove(0),
                _ => Some(compact.clone()),
            };
            assert_eq!(got, expected, "{db:?}: {v}");
        }
    }
}

db_tests!(
    every_type_round_trips_identically,
    integers_beyond_64_bits_in_json_keep_every_digit,
    a_json_value_written_any_way_is_stored_as_its_compact_text_would_be,
);
