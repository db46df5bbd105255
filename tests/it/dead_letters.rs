//! Dead letters are stored whatever the input holds, bounded in size, and an answer never
//! claims one that is not committed.

use serde_json::Value;
use sha2::Digest;

use crate::db_tests;
use crate::helpers::{fixture_schemas, gzip, spawn_app, Db};

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
    let kinds: [Kind; 7] = [
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
        (
            "a backslash, then the text u0000: no NUL",
            |i| serde_json::json!({"id": i, "s": "x\\u0000y", "o": {"k": "\\u0000"}}),
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

/// `[dead_letters] retention`: older dead letters are deleted in the background, newer
/// ones stay.
async fn dead_letters_past_their_retention_are_purged_in_the_background(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |c| {
        c.dead_letters.retention = Some(std::time::Duration::from_secs(1));
    })
    .await
    else {
        return;
    };
    let r = app
        .post("reading", "", "application/json", r#"{"seq": -1}"#)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.db.dead_letters().await.len(), 1);
    crate::helpers::eventually(10, "the old dead letter is purged", || async {
        match app.db.dead_letters().await.len() {
            0 => Ok(()),
            n => Err(format!("{n} dead letters")),
        }
    })
    .await;
    let r = app
        .post("reading", "", "application/json", r#"{"seq": -2}"#)
        .await;
    assert_eq!(r.status(), 200);
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0][3].as_deref().unwrap().contains("-2"));
}

/// `sluice purge` deletes by stream and stage, and refuses to delete everything unless
/// told `--all`.
async fn sluice_purge_deletes_by_stream_and_stage(db: Db) {
    let Some(mut app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    for _ in 0..3 {
        app.post("reading", "", "application/json", r#"{"seq": -1}"#)
            .await;
    }
    app.post("reading", "", "application/json", "{oops").await;
    app.post(
        "app_log",
        "",
        "application/json",
        r#"{"message": 1, "timestamp": "x"}"#,
    )
    .await;
    app.stop().await.unwrap();
    assert_eq!(app.db.dead_letters().await.len(), 5);
    let purge = |args: &[&str]| {
        crate::helpers::sluice_command()
            .arg("purge")
            .args(args)
            .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
            .env("SLUICE_DATABASE_URL", &app.db.url)
            .output()
            .unwrap()
    };
    let out = purge(&["--stream", "reading", "--stage", "validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3 dead letters deleted\n"
    );
    let left: Vec<_> = app
        .db
        .dead_letters()
        .await
        .into_iter()
        .map(|l| (l[0].clone(), l[1].clone()))
        .collect();
    assert_eq!(
        left,
        [
            (Some("reading".into()), Some("parse".into())),
            (Some("app_log".into()), Some("validate".into()))
        ]
    );
    let out = purge(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = purge(&["--older-than", "1h"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 dead letters deleted\n"
    );
    let out = purge(&["--all"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 dead letters deleted\n"
    );
    assert!(app.db.dead_letters().await.is_empty());
}

db_tests!(
    dead_letters_past_their_retention_are_purged_in_the_background,
    sluice_purge_deletes_by_stream_and_stage,
);

/// `GET /v1/dead-letters` pages are bounded in bytes too: six payloads of 1.9 MiB do not
/// come in one page even with `limit=1000`, and `next_before` leads to the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_pages_are_bounded_in_bytes() {
    let Some(app) = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.dead_letters.max_payload_bytes = 2 * 1024 * 1024;
    })
    .await
    else {
        return;
    };
    let big = "x".repeat(1900 * 1024);
    for _ in 0..6 {
        let r = app
            .post("reading", "", "application/json", big.clone())
            .await;
        assert_eq!(r.status(), 400);
    }
    let (status, page) = app.get_json("/v1/dead-letters?limit=1000").await;
    assert_eq!(status, 200);
    let first = page["dead_letters"].as_array().unwrap().len();
    assert!((1..6).contains(&first), "{first} dead letters in one page");
    let next = page["next_before"].as_i64().expect("a next page");
    let (_, rest) = app
        .get_json(&format!("/v1/dead-letters?limit=1000&before={next}"))
        .await;
    assert_eq!(
        first + rest["dead_letters"].as_array().unwrap().len(),
        6,
        "{}",
        rest["next_before"]
    );
}
