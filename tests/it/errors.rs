//! Every error status, with a clear message, and dead letters for bad input.

use std::time::Duration;

use serde_json::{json, Value};

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

async fn invalid_event_is_dead_lettered_with_its_json_pointer_and_the_valid_ones_are_stored(
    db: Db,
) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let body = r#"[{"seq": 1, "sensor": "a", "value": 1.5},
                   {"seq": 2, "sensor": "b", "value": 5000},
                   {"seq": 3, "sensor": "c", "value": -2},
                   "not an object",
                   {"seq": 5, "sensor": "e", "value": 0, "colour": "red"}]"#;
    let r = app.post("reading", "", "application/json", body).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["dead_lettered"], 3);
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors[0]["index"], 1);
    assert_eq!(errors[0]["stage"], "validate");
    assert_eq!(errors[0]["pointer"], "/value");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("maximum of 1000"),
        "{answer}"
    );
    assert_eq!(
        (&errors[1]["index"], &errors[1]["stage"]),
        (&json!(3), &json!("parse"))
    );
    assert!(errors[1]["error"]
        .as_str()
        .unwrap()
        .contains("not an object"));
    assert_eq!(errors[2]["index"], 4);
    assert!(
        errors[2]["error"].as_str().unwrap().contains("colour"),
        "{answer}"
    );

    assert_eq!(app.db.count("reading").await, 2);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 3);
    assert_eq!(letters[0][0].as_deref(), Some("reading"));
    assert_eq!(letters[0][1].as_deref(), Some("validate"));
    assert!(
        letters[0][2].as_deref().unwrap().contains("/value"),
        "the reason names the pointer"
    );
    assert_eq!(
        letters[0][3].as_deref(),
        Some(r#"{"seq": 2, "sensor": "b", "value": 5000}"#),
        "payload verbatim"
    );
    assert!(letters[0][4]
        .as_deref()
        .unwrap()
        .starts_with("http 127.0.0.1:"));
    assert_eq!(letters[1][3].as_deref(), Some(r#""not an object""#));
}

async fn a_body_that_is_not_json_is_400_and_dead_lettered_whole(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let r = app
        .post(
            "reading",
            "",
            "application/json",
            r#"{"seq": 1, "sensor": "#,
        )
        .await;
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("not valid JSON"),
        "{answer}"
    );
    assert_eq!(answer["dead_lettered"], 1);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0][1].as_deref(), Some("parse"));
    assert_eq!(letters[0][3].as_deref(), Some(r#"{"seq": 1, "sensor": "#));
    assert_eq!(app.db.count("reading").await, 0);
}

async fn bytes_that_are_not_utf8_are_dead_lettered_as_escapes(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let mut body = br#"{"seq": 1, "sensor": "a", "value": 1}"#.to_vec();
    body.extend_from_slice(b"\n{\"seq\": 2, \"sensor\": \"\xff\xfe\0\", \"value\": 2}\n");
    let r = app.post("reading", "", "application/x-ndjson", body).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (&answer["accepted"], &answer["dead_lettered"]),
        (&json!(1), &json!(1)),
        "{answer}"
    );
    assert!(answer["errors"][0]["error"]
        .as_str()
        .unwrap()
        .contains("UTF-8"));
    let letters = app.db.dead_letters().await;
    assert_eq!(
        letters[0][3].as_deref(),
        Some(r#"{"seq": 2, "sensor": "\xFF\xFE\x00", "value": 2}"#)
    );
}

async fn an_unknown_stream_is_404_listing_the_streams_and_the_body_is_dead_lettered(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let (status, answer) = app.post_json("readings", &json!({"seq": 1})).await;
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().contains("readings"));
    assert_eq!(answer["streams"], json!(["app_log", "reading", "typemap"]));
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0][0], None, "no stream");
    assert_eq!(letters[0][1].as_deref(), Some("route"));
    assert_eq!(letters[0][3].as_deref(), Some(r#"{"seq":1}"#));
}

async fn a_full_queue_answers_503_with_retry_after_and_accepts_nothing(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        c.defaults.queue_max_events = 2;
        c.http.enqueue_timeout = Duration::from_millis(100);
    })
    .await
    else {
        return;
    };
    let lock = crate::helpers::hold_write_lock(&app.db).await;
    let two = r#"[{"seq": 1, "sensor": "a", "value": 1}, {"seq": 2, "sensor": "a", "value": 2}]"#;
    let r = app
        .post("reading", "?ack=accepted", "application/json", two)
        .await;
    assert_eq!(r.status(), 202, "the queue had room");

    let third = r#"{"seq": 3, "sensor": "a", "value": 3}"#;
    let r = app.post("reading", "", "application/json", third).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("nothing from this request was accepted"),
        "{answer}"
    );

    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(
        status, 200,
        "one saturated stream does not make the instance unready"
    );
    assert_eq!(ready["saturated_streams"], serde_json::json!(["reading"]));

    drop(lock); // the database is writable again
    app.db.wait_for_count("reading", 2).await;
    let (status, _) = app
        .post_json("reading", &serde_json::from_str(third).unwrap())
        .await;
    assert_eq!(status, 200, "the retried request is accepted");
    assert_eq!(app.db.count("reading").await, 3);
    assert!(
        app.db.dead_letters().await.is_empty(),
        "a 503 dead-letters nothing"
    );
}

db_tests!(
    invalid_event_is_dead_lettered_with_its_json_pointer_and_the_valid_ones_are_stored,
    a_body_that_is_not_json_is_400_and_dead_lettered_whole,
    bytes_that_are_not_utf8_are_dead_lettered_as_escapes,
    an_unknown_stream_is_404_listing_the_streams_and_the_body_is_dead_lettered,
    a_full_queue_answers_503_with_retry_after_and_accepts_nothing,
);

#[tokio::test]
async fn bodies_above_the_limits_are_413_with_the_limit_named() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.http.max_body_bytes = 2000;
        c.http.max_events_per_request = 3;
    })
    .await
    else {
        return;
    };
    let big = format!(
        r#"{{"seq": 1, "sensor": "{}", "value": 1}}"#,
        "x".repeat(3000)
    );
    let r = app.post("reading", "", "application/json", big).await;
    assert_eq!(r.status(), 413);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("max_body_bytes"),
        "{answer}"
    );

    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![b' '; 100_000]).unwrap();
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 2000);
    let r = app
        .client
        .post(app.url("/v1/streams/reading/events"))
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "the limit applies after decompression");

    let four = "{\"seq\":1,\"sensor\":\"a\",\"value\":1}\n".repeat(4);
    let r = app.post("reading", "", "application/x-ndjson", four).await;
    assert_eq!(r.status(), 413);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("max_events_per_request"),
        "{answer}"
    );
    assert_eq!(app.db.count("reading").await, 0);
}

#[tokio::test]
async fn unsupported_media_types_and_encodings_are_415() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let r = app.post("reading", "", "text/xml", "<seq>1</seq>").await;
    assert_eq!(r.status(), 415);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson"),
        "{answer}"
    );
    let r = app
        .client
        .post(app.url("/v1/streams/reading/events"))
        .header("content-encoding", "br")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn a_bad_ack_parameter_is_400_naming_the_choices() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let r = app
        .post("reading", "?ack=maybe", "application/json", "{}")
        .await;
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("ack=accepted"),
        "{answer}"
    );
}

#[tokio::test]
async fn health_readiness_and_stream_status_answer() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = app.get_json("/v1/streams").await.1;
    assert_eq!(r["streams"][1]["stream"], "reading");
    assert_eq!(r["streams"][1]["queue_events"], 0);
}

/// A client that never finishes its headers is cut off after `header_read_timeout`.
#[tokio::test]
async fn a_client_slower_than_the_header_timeout_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.http.header_read_timeout = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /v1/streams/reading/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "Sluice closes the connection instead of waiting forever"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// With `max_connections` held by idle keep-alive clients, a new client waits (it is
/// not accepted) and is served once a connection frees up.
#[tokio::test]
async fn the_connection_limit_makes_new_clients_wait_not_fail() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.http.max_connections = 2
    })
    .await
    else {
        return;
    };
    let url = app.url("/healthz");
    let holders: Vec<reqwest::Client> = (0..2).map(|_| reqwest::Client::new()).collect();
    for h in &holders {
        assert_eq!(h.get(&url).send().await.unwrap().status(), 200);
    }
    let third = reqwest::Client::new();
    let waiting = tokio::time::timeout(Duration::from_millis(500), third.get(&url).send()).await;
    assert!(
        waiting.is_err(),
        "a third connection is not served while two are held"
    );
    drop(holders); // closes their pooled keep-alive connections
    let served = tokio::time::timeout(Duration::from_secs(5), third.get(&url).send()).await;
    assert_eq!(
        served.expect("served once a slot frees").unwrap().status(),
        200
    );
}

#[tokio::test]
async fn json_nested_too_deep_is_400_naming_the_limit_and_dead_lettered() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let deep = format!("{{\"seq\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
    let r = app.post("reading", "", "application/json", deep).await;
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("128 levels"),
        "{answer}"
    );
    assert_eq!(app.db.dead_letters().await.len(), 1);
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the process is unharmed");
}

#[tokio::test]
async fn stream_status_counts_what_happened_since_start() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |_| {}).await else {
        return;
    };
    let body = "{\"seq\":1,\"sensor\":\"a\",\"value\":1}\n{\"seq\":2,\"sensor\":\"a\",\"value\":1}\n\
                {\"seq\":3,\"sensor\":\"a\",\"value\":1}\n{\"seq\":4,\"sensor\":\"a\",\"value\":5000}\n";
    let r = app.post("reading", "", "application/x-ndjson", body).await;
    assert_eq!(r.status(), 200);
    let s: Value = app.get_json("/v1/streams/reading").await.1;
    assert_eq!(
        (
            &s["received"],
            &s["written"],
            &s["dead_lettered"],
            &s["rejected"]
        ),
        (&json!(4), &json!(3), &json!(1), &json!(0)),
        "{s}"
    );
    assert!(s["last_write_at"].is_string(), "{s}");
    assert_eq!(s["written_per_second_1m"], json!(0.05));
    assert_eq!(s["schema_id"], "urn:sluice:test:reading");
    assert_eq!(s["last_error"], Value::Null);
    let r = app
        .client
        .get(app.url("/v1/streams/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// `GET /v1/dead-letters`: newest first, filtered, keyset-paginated, payload included.
async fn dead_letters_are_listed_newest_first_with_filters_and_pages(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let body = "{\"seq\":1,\"sensor\":\"a\",\"value\":5000}\n{oops\n{\"seq\":3,\"sensor\":\"a\",\"value\":6000}\n";
    assert_eq!(
        app.post("reading", "", "application/x-ndjson", body)
            .await
            .status(),
        200
    );
    assert_eq!(app.post_json("nope", &json!({"x": 1})).await.0, 404);

    let (status, all) = app.get_json("/v1/dead-letters").await;
    assert_eq!(status, 200, "{all}");
    let letters = all["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 4);
    assert_eq!(letters[0]["stage"], "route", "newest first");
    assert_eq!(letters[0]["stream"], Value::Null);
    assert_eq!(
        letters[3]["payload"],
        "{\"seq\":1,\"sensor\":\"a\",\"value\":5000}"
    );
    assert_eq!(letters[3]["attempts"], 1);
    assert!(letters[3]["received_at"]
        .as_str()
        .unwrap()
        .starts_with("20"));
    assert!(letters[3]["source"]
        .as_str()
        .unwrap()
        .starts_with("http 127.0.0.1:"));
    assert_eq!(all["next_before"], Value::Null);

    let (_, validate) = app
        .get_json("/v1/dead-letters?stream=reading&stage=validate&limit=1")
        .await;
    assert_eq!(
        validate["dead_letters"][0]["payload"],
        "{\"seq\":3,\"sensor\":\"a\",\"value\":6000}"
    );
    let before = validate["next_before"].as_i64().expect("a next page");
    let (_, page2) = app
        .get_json(&format!(
            "/v1/dead-letters?stream=reading&stage=validate&limit=1&before={before}"
        ))
        .await;
    assert_eq!(
        page2["dead_letters"][0]["payload"],
        "{\"seq\":1,\"sensor\":\"a\",\"value\":5000}"
    );

    // By the time they were received: `since` includes its instant, `until` does not.
    let count = |page: &Value| page["dead_letters"].as_array().map_or(0, Vec::len);
    let oldest = letters[3]["received_at"].as_str().unwrap().to_owned();
    let newest = letters[0]["received_at"].as_str().unwrap().to_owned();
    for (query, expected) in [
        (format!("since={oldest}"), 4),
        (format!("until={oldest}"), 0),
        (
            "since=2000-01-01T00:00:00Z&until=2100-01-01T00:00:00Z".to_owned(),
            4,
        ),
        ("until=2000-01-01T00:00:00Z".to_owned(), 0),
    ] {
        let query = query.replace('+', "%2B");
        let (status, page) = app.get_json(&format!("/v1/dead-letters?{query}")).await;
        assert_eq!((status, count(&page)), (200, expected), "{query}: {page}");
    }
    let (_, recent) = app
        .get_json(&format!("/v1/dead-letters?since={newest}&stage=route"))
        .await;
    assert_eq!(count(&recent), 1, "{recent}");
    let (status, bad) = app.get_json("/v1/dead-letters?since=yesterday").await;
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("since"), "{bad}");

    let (status, bad) = app.get_json("/v1/dead-letters?stage=lost").await;
    assert_eq!(status, 400);
    assert!(bad["error"]
        .as_str()
        .unwrap()
        .contains("parse, route, validate or write"));
    assert_eq!(app.get_json("/v1/dead-letters?limit=0").await.0, 400);
}

db_tests!(dead_letters_are_listed_newest_first_with_filters_and_pages);

/// An event with more schema errors than the answer lists says how many it left out.
#[tokio::test]
async fn more_than_five_schema_errors_say_how_many_more() {
    let app = crate::helpers::spawn_app(
        crate::helpers::Db::Sqlite,
        crate::helpers::fixture_schemas(),
        |_| {},
    )
    .await
    .unwrap();
    // Eight properties of the wrong type.
    let event = serde_json::json!({
        "id": [], "s": 1, "s_max": 2, "ts": 3, "u": 4, "i": "x", "n": "y", "b": "z"
    });
    let (status, answer) = app.post_json("typemap", &event).await;
    assert_eq!(status, 200);
    let error = answer["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("more"), "{answer}");
    let more: usize = error
        .rsplit("…and ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(more >= 1, "{error}");
    assert_eq!(
        error.matches("; ").count(),
        5,
        "five spelled out, then the count: {error}"
    );
}
