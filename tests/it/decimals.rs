//! Exact decimals (`"x-sluice-decimal": [precision, scale]`): every digit the event
//! sent is stored, beyond what a double holds; a value with more digits than the
//! column takes is a validate-stage dead letter, never rounded.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Db};

/// `12.500000000` (how PostgreSQL and MySQL show numeric(38,9)) as `12.5`.
fn trimmed(text: &str) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text.to_owned()
    }
}

async fn decimals_keep_every_digit_and_refuse_to_round(kind: Db) {
    let schemas = tempfile::tempdir().unwrap();
    let invoice = json!({
        "type": "object",
        "required": ["n", "amount"],
        "properties": {
            "n": {"type": "integer"},
            "amount": {"type": "number", "x-sluice-decimal": [38, 9]},
            "tax": {"type": "string", "x-sluice-decimal": [5, 2]}
        }
    });
    std::fs::write(schemas.path().join("invoice.json"), invoice.to_string()).unwrap();
    let Some(app) = spawn_app(kind, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    // Raw text: serde_json would turn the first amount into a double.
    let body = concat!(
        "{\"n\": 1, \"amount\": 12345678901234567890123456789.123456789, \"tax\": \"19.99\"}\n",
        "{\"n\": 2, \"amount\": 0.1}\n",
        "{\"n\": 3, \"amount\": 1.5e2, \"tax\": \"-0.50\"}\n",
        "{\"n\": 4, \"amount\": 1.0000000001}\n",
        "{\"n\": 5, \"amount\": 1, \"tax\": \"1000.00\"}\n",
        "{\"n\": 6, \"amount\": 2, \"tax\": \"twelve\"}\n",
    );
    let r = app.post("invoice", "", "application/x-ndjson", body).await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["dead_lettered"], 3, "{kind:?}: {answer}");
    let rows = app
        .db
        .query(&format!(
            "SELECT {}, {}, {} FROM invoice ORDER BY n",
            app.db.text("n"),
            app.db.text("amount"),
            app.db.text("tax")
        ))
        .await;
    let rows: Vec<(String, String, Option<String>)> = rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                trimmed(r[1].as_deref().unwrap()),
                r[2].as_deref().map(trimmed),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "1".to_string(),
                "12345678901234567890123456789.123456789".to_string(),
                Some("19.99".to_string())
            ),
            ("2".into(), "0.1".into(), None),
            ("3".into(), "150".into(), Some("-0.5".into())),
        ],
        "{kind:?}"
    );
    let letters = app.db.dead_letters().await;
    let errors: Vec<String> = letters.iter().map(|l| l[2].clone().unwrap()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("at /amount: 1.0000000001 does not fit numeric(38,9)")),
        "{kind:?}: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("at /tax: 1000.00 does not fit numeric(5,2)")),
        "{kind:?}: {errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("at /tax: \"twelve\" is not a decimal number")),
        "{kind:?}: {errors:?}"
    );
}

crate::db_tests!(decimals_keep_every_digit_and_refuse_to_round);
