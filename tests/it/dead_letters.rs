//! Dead letters are stored whatever the input holds, bounded in size, and an answer never
//! claims one that is not committed.

use serde_json::Value;
use sha2::Digest;

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

async fn nul_in_a_key_or_a_stream_name_is_dead_lettered_once_and_stored(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    // The validator's message quotes the NUL key; PostgreSQL refuses NUL in text.
    let r = app
        .post("reading", "", "application/json", "{\"\\u0000\":1}")
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    assert_eq!(answer["errors"].as_array().unwrap().len(), 1, "{answer}");
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1, "the dead letter is committed");
    assert_eq!(letters[0][1].as_deref(), Some("validate"));
    assert!(
        letters[0][2].as_deref().unwrap().contains("\\x00"),
        "NUL is written as \\x00 in the error: {:?}",
        letters[0][2]
    );

    // A stream name with NUL: unknown stream, dead-lettered at stage route.
    let r = app.post("%00", "", "application/json", "{\"a\":1}").await;
    assert_eq!(r.status(), 404);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 2, "the route dead letter is committed");
    assert_eq!(letters[1][1].as_deref(), Some("route"));
    assert!(letters[1][2].as_deref().unwrap().contains("\\x00"));
}

async fn a_small_gzip_body_of_invalid_bytes_keeps_a_bounded_prefix_its_length_and_sha256(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        c.dead_letters.max_payload_bytes = 64 * 1024;
    })
    .await
    else {
        return;
    };
    let raw = vec![0xFFu8; 10 * 1024 * 1024];
    let body = gzip(&raw);
    assert!(body.len() < 20_000, "a small body: {} bytes", body.len());
    let r = app
        .client
        .post(app.url("/v1/streams/reading/events"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let payload = letters[0][3].as_deref().unwrap();
    assert!(
        payload.len() <= 64 * 1024 && payload.len() > 60 * 1024,
        "payload kept: {} bytes",
        payload.len()
    );
    assert!(payload.starts_with("\\xFF\\xFF"));
    let error = letters[0][2].as_deref().unwrap();
    let sha: String = sha2::Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        error.contains(&format!("of the {} bytes received", raw.len())) && error.contains(&sha),
        "{error}"
    );
}

db_tests!(
    nul_in_a_key_or_a_stream_name_is_dead_lettered_once_and_stored,
    a_small_gzip_body_of_invalid_bytes_keeps_a_bounded_prefix_its_length_and_sha256,
);

/// MariaDB drops a connection that sends a statement above `max_allowed_packet` (16 MiB
/// by default): a dead letter larger than that must be stored cut, and must not wedge
/// the dead-letter writer for the events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_above_max_allowed_packet_is_stored_cut_and_the_writer_goes_on() {
    let Some(app) = spawn_app(Db::Mysql, fixture_schemas(), |c| {
        c.http.max_body_bytes = 24 * 1024 * 1024;
        c.dead_letters.max_payload_bytes = 32 * 1024 * 1024;

        c.defaults.queue_max_bytes = 128 * 1024 * 1024;
    })
    .await
    else {
        return;
    };
    let packet: i64 = app
        .db
        .query("SELECT CAST(@@max_allowed_packet AS CHAR)")
        .await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let big = vec![b'x'; (packet as usize + 1024 * 1024).min(23 * 1024 * 1024)];
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.post("reading", "", "application/json", big.clone()),
    )
    .await
    .expect("the answer comes");
    assert_eq!(r.status(), 400, "not JSON: dead-lettered whole");
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.post("reading", "", "application/json", "[1]"),
    )
    .await
    .expect("the dead-letter writer is not wedged");
    assert_eq!(r.status(), 200);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 2);
    let kept = letters[0][3].as_deref().unwrap().len();
    assert!(
        kept < packet as usize / 2,
        "kept {kept} bytes of {}",
        big.len()
    );
    assert!(letters[0][2]
        .as_deref()
        .unwrap()
        .contains(&format!("of the {} bytes received", big.len())));
}

/// Values the schema accepts but the database is known to refuse are set aside when the
/// row is built, each with its pointer and a reason, instead of failing the batch and
/// bisecting it: on PostgreSQL the whole request costs one write statement.
async fn values_the_database_refuses_are_dead_lettered_when_the_row_is_built(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        c.defaults.batch_max_events = 10_000;
    })
    .await
    else {
        return;
    };
    if db == Db::Postgres {
        for sql in [
            "CREATE SEQUENCE write_statements",
            "CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM nextval('write_statements'); RETURN NULL; END $$",
            "CREATE TRIGGER count_writes BEFORE INSERT ON typemap FOR EACH STATEMENT EXECUTE FUNCTION count_statement()",
        ] {
            app.db.execute(sql).await;
        }
    }
    // (kind, event, pointer, refused by)
    type Kind = (
        &'static str,
        fn(usize) -> Value,
        &'static str,
        &'static [Db],
    );
    let kinds: [Kind; 6] = [
        (
            "nul text",
            |i| serde_json::json!({"id": i, "s": "a\u{0}b"}),
            "/s",
            &[Db::Postgres],
        ),
        (
            "nul json",
            |i| serde_json::json!({"id": i, "s": "x", "o": {"k": "\u{0}"}}),
            "/o",
            &[Db::Postgres],
        ),
        (
            "nul extra",
            |i| serde_json::json!({"id": i, "s": "x", "more": "\u{0}"}),
            "",
            &[Db::Postgres],
        ),
        (
            "year 999",
            |i| serde_json::json!({"id": i, "s": "x", "ts": "0999-01-01T00:00:00Z"}),
            "/ts",
            &[Db::Mysql],
        ),
        (
            "year 0",
            |i| serde_json::json!({"id": i, "s": "x", "ts": "0000-01-01T00:00:00Z"}),
            "/ts",
            &[Db::Mysql, Db::Postgres],
        ),
        (
            "good",
            |i| serde_json::json!({"id": i, "s": "x", "ts": "2024-01-01T00:00:00Z"}),
            "",
            &[],
        ),
    ];
    let mut body = String::new();
    let mut refused = std::collections::BTreeMap::new();
    for i in 0..1200 {
        let (_, event, pointer, by) = &kinds[i % kinds.len()];
        body.push_str(&event(i).to_string());
        body.push('\n');
        if by.contains(&db) {
            refused.insert(i, *pointer);
        }
    }
    let r = app.post("typemap", "", "application/x-ndjson", body).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["dead_lettered"],
        refused.len(),
        "{}",
        answer["errors"][0]
    );
    assert_eq!(answer["accepted"], 1200 - refused.len());
    for e in answer["errors"].as_array().unwrap() {
        let index = e["index"].as_u64().unwrap() as usize;
        assert_eq!(e["stage"], "write", "{e}");
        assert_eq!(e["pointer"], refused[&index], "{e}");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains(match refused[&index] {
                    "/ts" => "year",
                    _ => "NUL",
                }),
            "{e}"
        );
    }
    assert_eq!(app.db.count("typemap").await, 1200 - refused.len() as i64);
    assert_eq!(app.db.dead_letters().await.len(), refused.len());
    if db == Db::Postgres {
        let used = app
            .db
            .query("SELECT CAST(last_value AS TEXT) FROM write_statements")
            .await;
        assert_eq!(
            used[0][0].as_deref(),
            Some("1"),
            "one INSERT for the whole request"
        );
    }
}

db_tests!(values_the_database_refuses_are_dead_lettered_when_the_row_is_built);

/// If a dead letter truly cannot be stored (here an operator's CHECK constraint refuses
/// every one), the request is not acknowledged: 500, and the answer says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_database_refuses_makes_the_request_fail_not_succeed() {
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |_| {}).await else {
        return;
    };
    app.db
        .execute("ALTER TABLE sluice_dead_letters ADD CONSTRAINT no_letters CHECK (id < 0)")
        .await;
    let r = app
        .post(
            "reading",
            "",
            "application/json",
            r#"[{"seq": 1, "sensor": "a", "value": 1}, {"seq": -1}]"#,
        )
        .await;
    assert_eq!(r.status(), 500);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not acknowledged"),
        "{answer}"
    );
}
