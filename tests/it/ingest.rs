//! Each body form, gzip and both acknowledgement modes, on every database.

use serde_json::{json, Value};

use crate::db_tests;
use crate::helpers::{fixture_schemas, gzip, reading, readings_ndjson as ndjson, spawn_app, Db};

async fn one_object_is_committed_before_the_answer(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let (status, body) = app.post_json("reading", &reading(7)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"accepted": 1, "dead_lettered": 0, "errors": []})
    );
    // ack=commit: the row is there as soon as the answer is.
    let rows = app
        .db
        .query(&format!(
            "SELECT {}, sensor FROM reading",
            app.db.text("seq")
        ))
        .await;
    assert_eq!(rows, vec![vec![Some("7".into()), Some("s-1".into())]]);
}

async fn an_array_of_objects_is_stored_whole(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let events: Vec<Value> = (0..250).map(reading).collect();
    let (status, body) = app.post_json("reading", &Value::Array(events)).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(250)), "{body}");
    assert_eq!(app.db.count("reading").await, 250);
}

async fn ndjson_and_gzip_bodies_are_stored(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| c.defaults.batch_max_events = 100).await
    else {
        return;
    };
    let r = app
        .post("reading", "", "application/x-ndjson", ndjson(0..1000))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 1000);

    let gz = gzip(ndjson(1000..1500).replace('\n', "\r\n").as_bytes());
    let r = app
        .client
        .post(app.url("/v1/streams/reading/events"))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 500);

    let gz = gzip(json!([reading(2000), reading(2001)]).to_string().as_bytes());
    let r = app
        .client
        .post(app.url("/v1/streams/reading/events"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.db.count("reading").await, 1502);
    assert_eq!(app.db.distinct("reading", "seq").await, 1502);
}

async fn ack_accepted_answers_202_once_queued_and_the_rows_follow(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let r = app
        .post(
            "reading",
            "?ack=accepted",
            "application/x-ndjson",
            ndjson(0..300),
        )
        .await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"accepted": 300, "dead_lettered": 0, "errors": []})
    );
    app.db.wait_for_count("reading", 300).await;
}

async fn stopping_flushes_events_accepted_but_not_yet_written(db: Db) {
    let Some(mut app) = spawn_app(db, fixture_schemas(), |c| {
        // A long linger keeps the events queued until shutdown forces the flush.
        c.defaults.batch_max_wait = std::time::Duration::from_secs(60);
        c.defaults.batch_max_events = 100_000;
        c.http.max_events_per_request = 100_000;
    })
    .await
    else {
        return;
    };
    let r = app
        .post(
            "reading",
            "?ack=accepted",
            "application/x-ndjson",
            ndjson(0..5000),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["accepted"], 5000);
    assert_eq!(
        app.db.count("reading").await,
        0,
        "still lingering in the queue"
    );
    app.stop().await.expect("a clean shutdown");
    assert_eq!(app.db.count("reading").await, 5000);
}

db_tests!(
    one_object_is_committed_before_the_answer,
    an_array_of_objects_is_stored_whole,
    ndjson_and_gzip_bodies_are_stored,
    ack_accepted_answers_202_once_queued_and_the_rows_follow,
    stopping_flushes_events_accepted_but_not_yet_written,
);

/// The README's `curl -d @examples/…` requests, as curl sends them (form content type).
async fn the_readme_examples_are_stored_with_the_shipped_schemas(db: Db) {
    let Some(app) = spawn_app(db, crate::helpers::shipped_schemas(), |_| {}).await else {
        return;
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let order = std::fs::read(dir.join("order_placed.json")).unwrap();
    let r = app
        .post(
            "order_placed",
            "",
            "application/x-www-form-urlencoded",
            order,
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"accepted": 1, "dead_lettered": 0, "errors": []})
    );
    let rows = app
        .db
        .query(&format!(
            "SELECT order_id, {} FROM order_placed",
            app.db.text("total_amount")
        ))
        .await;
    // An exact decimal: numeric(12,2) shows its scale; SQLite keeps the digits sent.
    let amount = if app.db.kind == Db::Sqlite {
        "21.5"
    } else {
        "21.50"
    };
    assert_eq!(rows, vec![vec![Some("BK-1".into()), Some(amount.into())]]);

    let webhook = std::fs::read(dir.join("email_webhook.json")).unwrap();
    let r = app
        .post("email_event", "", "application/json", webhook)
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 6, "{answer}");
    let extra = app
        .db
        .query(&format!(
            "SELECT {} FROM email_event WHERE event = 'processed'",
            app.db.text("_extra")
        ))
        .await;
    let extra: Value = serde_json::from_str(extra[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(
        extra,
        json!({"smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>"}),
        "undeclared fields kept"
    );
}

/// A row the database itself refuses is isolated: dead-lettered at the write stage with
/// the database's message, reported by index, and the rest of the batch is written.
async fn a_row_the_database_refuses_is_dead_lettered_and_the_rest_written(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        c.defaults.batch_max_events = 1000
    })
    .await
    else {
        return;
    };
    let refuse_13 = match db {
        // `FAIL` keeps the rows its statement wrote before row 13 (SQLite's writer
        // binds several rows to a statement): the batch's rollback must take them back.
        Db::Sqlite => "CREATE TRIGGER no13 BEFORE INSERT ON reading WHEN NEW.seq = 13 BEGIN SELECT RAISE(FAIL, 'seq 13 refused'); END",
        Db::Postgres | Db::Mysql => "ALTER TABLE reading ADD CONSTRAINT no13 CHECK (seq <> 13)",
    };
    app.db.execute(refuse_13).await;
    let r = app
        .post("reading", "", "application/x-ndjson", ndjson(0..500))
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 499, "{answer}");
    assert_eq!(answer["dead_lettered"], 1);
    assert_eq!(answer["errors"][0]["index"], 13);
    assert_eq!(answer["errors"][0]["stage"], "write");
    assert_eq!(app.db.count("reading").await, 499);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0][1].as_deref(), Some("write"));
    assert!(
        letters[0][2]
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("no13")
            || letters[0][2].as_deref().unwrap().contains("13 refused"),
        "{letters:?}"
    );
    assert_eq!(
        letters[0][3].as_deref(),
        Some(reading(13).to_string().as_str())
    );
    let status: Value = app.get_json("/v1/streams/reading").await.1;
    assert_eq!(
        (&status["written"], &status["dead_lettered"]),
        (&json!(499), &json!(1)),
        "{status}"
    );
    assert!(
        status["last_error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{status}"
    );
}

/// Every shipped stream has an example in `examples/` (the webhook streams' are their
/// vendors' payloads) that its schema accepts and its table stores, in every database.
async fn every_shipped_stream_has_an_example_that_is_stored(db: Db) {
    let Some(app) = spawn_app(db, crate::helpers::shipped_schemas(), |_| {}).await else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut streams: Vec<String> = std::fs::read_dir(root.join("schemas"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    streams.sort();
    assert_eq!(streams.len(), 10, "{streams:?}");
    for stream in streams {
        let file = match stream.as_str() {
            "email_event" => "email_webhook".to_owned(),
            "stripe_event" => "stripe_invoice_paid".to_owned(),
            "github_event" => "github_push".to_owned(),
            "pipedrive_event" => "pipedrive_deal_change".to_owned(),
            s => s.to_owned(),
        };
        let mut body = std::fs::read(root.join(format!("examples/{file}.json")))
            .unwrap_or_else(|e| panic!("examples/{file}.json: {e}"));
        if stream == "github_event" {
            // Through its webhook these two come from the X-GitHub-* headers.
            let mut event: Value = serde_json::from_slice(&body).unwrap();
            event["delivery_id"] = json!("72d3162e-cc78-11e3-81ab-4c9367dc0958");
            event["event"] = json!("push");
            body = event.to_string().into_bytes();
        }
        let r = app.post(&stream, "", "application/json", body).await;
        assert_eq!(r.status(), 200, "{stream}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["dead_lettered"], 0, "{stream}: {answer}");
        let accepted = answer["accepted"].as_i64().unwrap();
        assert!(accepted >= 1, "{stream}: {answer}");
        assert_eq!(app.db.count(&stream).await, accepted, "{stream}");
    }
}

db_tests!(
    the_readme_examples_are_stored_with_the_shipped_schemas,
    every_shipped_stream_has_an_example_that_is_stored,
    a_row_the_database_refuses_is_dead_lettered_and_the_rest_written,
);

/// The shipped `order_placed` takes the bookshop's markets only (the US — California,
/// Oregon, New York, Montana —, Germany, Japan, Ethiopia) and money to the cent.
async fn orders_outside_the_bookshop_s_markets_or_cents_are_dead_lettered(db: Db) {
    let Some(app) = spawn_app(db, crate::helpers::shipped_schemas(), |_| {}).await else {
        return;
    };
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/order_placed.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let with = |country: &str, region: &str, total: Value| {
        let mut order = example.clone();
        order["event_id"] = json!(format!(
            "00000000-0000-4000-8000-{:012}",
            fastrand::u64(..1_000_000_000_000)
        ));
        order["country"] = json!(country);
        order["region"] = json!(region);
        order["total_amount"] = total;
        order
    };
    let orders = [
        with("US", "NY", json!(19.99)),
        with("US", "TX", json!(19.99)),
        with("FR", "IDF", json!(19.99)),
        with("DE", "BE", json!(19.999)),
    ];
    let body: String = orders.iter().map(|o| format!("{o}\n")).collect();
    let r = app
        .post("order_placed", "", "application/x-ndjson", body)
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (
            answer["accepted"].as_i64(),
            answer["dead_lettered"].as_i64()
        ),
        (Some(1), Some(3)),
        "{db:?}: {answer}"
    );
    let errors = answer["errors"].to_string();
    assert!(errors.contains("/region"), "{errors}");
    assert!(errors.contains("/country"), "{errors}");
    assert!(errors.contains("does not fit numeric(12,2)"), "{errors}");
}

db_tests!(orders_outside_the_bookshop_s_markets_or_cents_are_dead_lettered);
