//! The privacy layer (`x-sluice-privacy`): each treatment as stored, checked against an
//! HMAC computed by `openssl` (not by Sluice); no raw value of a treated property in a
//! table, a dead letter (schema-invalid, refused by the database, unparseable) or the
//! spool's files; every input (HTTP, webhook, TCP, JetStream) treated the same way.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::helpers::{
    hold_write_lock_on, spawn_app, spawn_app_on, spawn_binary, test_privacy_key_text, Binary, Db,
    TestDb,
};

/// Lowercase hex HMAC-SHA256 of `value` under the tests' key, by `openssl dgst`.
fn hmac_hex(value: &str) -> String {
    hex::encode(crate::webhooks::openssl_hmac(
        "sha256",
        &test_privacy_key_text(),
        value.as_bytes(),
    ))
}

/// Lowercase hex SHA-256 of `bytes`, by `openssl dgst`.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit(' ').next().unwrap().to_owned()
}

/// A schemas directory with the stream `member`, which treats a property of every kind,
/// top-level and nested.
fn member_schemas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "required": ["id", "email"],
        "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string", "format": "email", "x-sluice-privacy": "hash"},
            "age": {"type": "integer", "x-sluice-privacy": "hash"},
            "card": {"type": "string", "x-sluice-privacy": "mask"},
            "pin": {"type": "string", "x-sluice-privacy": "mask"},
            "password": {"type": "string", "x-sluice-privacy": "drop"},
            "address": {"type": "object", "properties": {
                "street": {"type": "string", "x-sluice-privacy": "mask"},
                "city": {"type": "string"}
            }},
            "phones": {"type": "array", "items": {"type": "object", "properties": {
                "number": {"type": "string", "x-sluice-privacy": "hash"}
            }}},
            "plan": {"type": "string"}
        }
    });
    std::fs::write(dir.path().join("member.json"), schema.to_string()).unwrap();
    dir
}

/// A member event; `n` makes its personal values its own.
fn member(id: i64, email: &str, n: u32) -> Value {
    json!({
        "id": id,
        "email": email,
        "age": 40 + n,
        "card": format!("42424242424{n:05}"),
        "pin": "123",
        "password": format!("hunter2-secret-{n}"),
        "address": {"street": format!("Bole Road {n}"), "city": "Addis Ababa"},
        "phones": [{"number": format!("+2519112345{n:02}")}],
        "plan": "gold",
        "nickname": "bookworm"
    })
}

/// The personal values of `member(_, email, n)` as sent.
fn raw_values(email: &str, n: u32) -> Vec<String> {
    vec![
        email.to_owned(),
        format!("42424242424{n:05}"),
        format!("hunter2-secret-{n}"),
        format!("Bole Road {n}"),
        format!("+2519112345{n:02}"),
    ]
}

const MEMBER_COLUMNS: &[&str] = &[
    "id", "email", "age", "card", "pin", "address", "phones", "plan", "_extra",
];

/// Every value of `columns` in every row of `table`, as text.
async fn everything(db: &TestDb, table: &str, columns: &[&str]) -> String {
    let select: Vec<String> = columns.iter().map(|c| db.text(&db.quote(c))).collect();
    let rows = db
        .query(&format!("SELECT {} FROM {table}", select.join(", ")))
        .await;
    format!("{rows:?}")
}

/// Every dead letter, all of its columns, as text.
async fn every_dead_letter(db: &TestDb) -> String {
    everything(
        db,
        "sluice_dead_letters",
        &["stream", "stage", "error", "payload", "source"],
    )
    .await
}

fn assert_absent(haystack: &str, raws: &[String], what: &str) {
    for raw in raws {
        assert!(
            !haystack.contains(raw.as_str()),
            "{what} holds {raw:?}: {haystack}"
        );
    }
}

async fn treated_fields_are_stored_as_the_contract_says_and_never_raw(kind: Db) {
    let schemas = member_schemas();
    let Some(app) = spawn_app(kind, schemas.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let refuse_13 = match kind {
        Db::Sqlite => "CREATE TRIGGER no13 BEFORE INSERT ON member WHEN NEW.id = 13 BEGIN SELECT RAISE(ABORT, 'id 13 refused'); END",
        Db::Postgres | Db::Mysql => "ALTER TABLE member ADD CONSTRAINT no13 CHECK (id <> 13)",
    };
    app.db.execute(refuse_13).await;
    let body = [
        member(1, "reader@example.com", 1),
        member(2, "not-an-email-RAW", 2),
        member(13, "thirteen@example.com", 3),
    ];
    let (status, answer) = app.post_json("member", &json!(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{kind:?}: {answer}");
    assert_eq!(answer["dead_lettered"], 2, "{kind:?}: {answer}");
    let said = answer.to_string();
    assert_absent(&said, &raw_values("not-an-email-RAW", 2), "the answer");

    // The stored row: each treatment as the contract says.
    let row = &app
        .db
        .query(&format!(
            "SELECT {}, {}, {}, {}, {}, {} FROM member",
            app.db.text("email"),
            app.db.text("age"),
            app.db.text("card"),
            app.db.text("pin"),
            app.db.text("address"),
            app.db.text("phones"),
        ))
        .await[0];
    assert_eq!(
        row[0].as_deref(),
        Some(hmac_hex("reader@example.com").as_str())
    );
    assert_eq!(
        row[1].as_deref(),
        Some(hmac_hex("41").as_str()),
        "a number hashes its JSON text"
    );
    assert_eq!(row[2].as_deref(), Some("************0001"));
    assert_eq!(
        row[3].as_deref(),
        Some("***"),
        "4 characters or fewer: all masked"
    );
    let address: Value = serde_json::from_str(row[4].as_deref().unwrap()).unwrap();
    assert_eq!(
        address,
        json!({"street": "*******ad 1", "city": "Addis Ababa"})
    );
    let phones: Value = serde_json::from_str(row[5].as_deref().unwrap()).unwrap();
    assert_eq!(phones, json!([{"number": hmac_hex("+251911234501")}]));
    let stored = everything(&app.db, "member", MEMBER_COLUMNS).await;
    assert_absent(&stored, &raw_values("reader@example.com", 1), "the table");
    assert!(
        stored.contains("bookworm"),
        "undeclared properties are kept: {stored}"
    );

    // The dead letters: the schema-invalid one and the one the database refused hold
    // the treated event, and no raw value anywhere in their rows.
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let by_stage = |stage: &str| {
        letters
            .iter()
            .find(|l| l[1].as_deref() == Some(stage))
            .unwrap_or_else(|| panic!("a {stage} dead letter: {letters:?}"))
    };
    let invalid = by_stage("validate");
    assert!(
        invalid[2].as_deref().unwrap().contains("/email"),
        "{invalid:?}"
    );
    let payload: Value = serde_json::from_str(invalid[3].as_deref().unwrap()).unwrap();
    assert_eq!(payload["email"], hmac_hex("not-an-email-RAW"));
    assert_eq!(payload["card"], "************0002");
    assert!(payload.get("password").is_none(), "{payload}");
    let refused = by_stage("write");
    let payload: Value = serde_json::from_str(refused[3].as_deref().unwrap()).unwrap();
    assert_eq!(payload["email"], hmac_hex("thirteen@example.com"));
    let all = every_dead_letter(&app.db).await;
    for (email, n) in [("not-an-email-RAW", 2), ("thirteen@example.com", 3)] {
        assert_absent(&all, &raw_values(email, n), "sluice_dead_letters");
    }

    // A body that does not parse: no payload, only its length and SHA-256.
    let broken = r#"[{"id": 5, "email": "broken@example.com", "card": "4000056655665556""#;
    let r = app.post("member", "", "application/json", broken).await;
    assert_eq!(r.status(), 400);
    app.db.wait_for_dead_letters(3).await;
    let letters = app.db.dead_letters().await;
    let withheld = &letters[2];
    assert_eq!(withheld[3].as_deref(), Some(""), "{withheld:?}");
    let error = withheld[2].as_deref().unwrap();
    assert!(error.contains("payload withheld"), "{error}");
    assert!(error.contains(&sha256_hex(broken.as_bytes())), "{error}");
    assert!(
        error.contains(&format!("{} bytes", broken.len())),
        "{error}"
    );
    assert_absent(
        &every_dead_letter(&app.db).await,
        &["broken@example.com".into(), "4000056655665556".into()],
        "sluice_dead_letters",
    );

    // What the schema endpoint says of each property.
    let (_, schema) = app.get_json("/v1/streams/member/schema").await;
    let privacy = schema["privacy"].as_array().unwrap();
    assert!(
        privacy.contains(&json!({"pointer": "/email", "treatment": "hash", "column": "email"})),
        "{schema}"
    );
    assert!(
        privacy.contains(&json!({"pointer": "/password", "treatment": "drop", "column": null})),
        "{schema}"
    );
    assert!(
        privacy.contains(
            &json!({"pointer": "/phones/*/number", "treatment": "hash", "column": "phones"})
        ),
        "{schema}"
    );
    assert!(
        !schema["ddl"].as_str().unwrap().contains("password"),
        "{schema}"
    );
}

/// Starts the binary on `db` with `schemas`, the spool in `spool` and a TCP listener.
fn start(db: &TestDb, schemas: &Path, spool: &Path, extra: &[(&str, String)]) -> Binary {
    let mut env = vec![
        ("SLUICE_SCHEMAS_DIR", schemas.display().to_string()),
        ("SLUICE_SPOOL_DIR", spool.display().to_string()),
        ("SLUICE_TCP_LISTEN", "127.0.0.1:0".into()),
    ];
    env.extend(extra.iter().cloned());
    spawn_binary(None, db, &env)
}

/// Every byte of every file under `dir`, as (lossy) text.
fn files_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in walk(dir) {
        out.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Events answered `202` while nothing can commit rest in the spool treated; after
/// `kill -9` and a restart, recovery writes them treated once (a hash not hashed again).
async fn the_spool_never_holds_a_raw_value(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let schemas = member_schemas();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let sluice = start(&db, schemas.path(), &spool, &[]);
    let lock = hold_write_lock_on(&db, "member").await;
    let body: String = (1..=3)
        .map(|n| {
            format!(
                "{}\n",
                member(n.into(), &format!("spooled{n}@example.com"), n)
            )
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/streams/member/events?ack=accepted",
            sluice.http
        ))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let on_disk = files_text(&spool);
    assert!(
        on_disk.contains(&hmac_hex("spooled1@example.com")),
        "the spool holds the events"
    );
    for n in 1..=3 {
        assert_absent(
            &on_disk,
            &raw_values(&format!("spooled{n}@example.com"), n),
            "the spool",
        );
    }
    let mut sluice = sluice;
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();
    drop(lock);
    let sluice = start(&db, schemas.path(), &spool, &[]);
    db.wait_for_count("member", 3).await;
    let emails = db.values("member", "email").await;
    for n in 1..=3 {
        let hashed = hmac_hex(&format!("spooled{n}@example.com"));
        assert!(
            emails.contains(&Some(hashed)),
            "{kind:?}: treated once: {emails:?}"
        );
    }
    assert_eq!(db.dead_letters().await.len(), 0);
    let _ = sluice.terminate().await;
}

/// A TCP line and a JetStream message to a treated stream are treated as HTTP's are.
async fn tcp_lines_and_jetstream_messages_are_treated(kind: Db) {
    use async_nats::jetstream;
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let Some((url, js)) = crate::jetstream::nats().await else {
        return;
    };
    let (name, prefix) = crate::jetstream::names();
    js.get_or_create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let message = member(2, "nats@example.com", 2);
    js.publish(format!("{prefix}member"), message.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let schemas = member_schemas();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("[jetstream]\nurl = \"{url}\"\nstream = \"{name}\"\nsubjects = [\"{prefix}>\"]\nconsumer = \"sluice\"\nsubject_prefix = \"{prefix}\"\n"),
    )
    .unwrap();
    let sluice = start(
        &db,
        schemas.path(),
        &dir.path().join("spool"),
        &[("SLUICE_CONFIG", config.display().to_string())],
    );
    let mut line = member(1, "tcp@example.com", 1);
    line["stream"] = json!("member");
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(sluice.tcp.as_deref().unwrap())
            .await
            .unwrap();
        tcp.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        tcp.shutdown().await.unwrap();
    }
    db.wait_for_count("member", 2).await;
    let stored = everything(&db, "member", MEMBER_COLUMNS).await;
    assert_absent(
        &stored,
        &raw_values("tcp@example.com", 1),
        "the table (TCP)",
    );
    assert_absent(
        &stored,
        &raw_values("nats@example.com", 2),
        "the table (JetStream)",
    );
    let emails = db.values("member", "email").await;
    assert!(
        emails.contains(&Some(hmac_hex("tcp@example.com"))),
        "{emails:?}"
    );
    assert!(
        emails.contains(&Some(hmac_hex("nats@example.com"))),
        "{emails:?}"
    );
    let _ = sluice.terminate().await;
    let _ = js.delete_stream(&name).await;
}

/// The README's email webhook example, end to end: the shipped `email_event` hashes
/// each recipient and IP; nothing in the database or the spool holds one in clear,
/// and the events still count per (hashed) recipient.
async fn the_shipped_email_webhook_example_stores_no_address_or_ip(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[webhooks.email]\nstream = \"email_event\"\nverify = \"hmac\"\nsecret_env = \"HOOK_SECRET\"\nsignature_header = \"X-Signature\"\nalgorithm = \"sha256\"\nencoding = \"hex\"\nprefix = \"sha256=\"\n",
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let sluice = start(
        &db,
        &root.join("schemas"),
        &spool,
        &[
            ("SLUICE_CONFIG", config.display().to_string()),
            ("HOOK_SECRET", "example".into()),
        ],
    );
    let body = std::fs::read(root.join("examples/email_webhook.json")).unwrap();
    let signature = hex::encode(crate::webhooks::openssl_hmac("sha256", "example", &body));
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/hooks/email", sluice.http))
        .header("content-type", "application/json")
        .header("X-Signature", format!("sha256={signature}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    db.wait_for_count("email_event", 6).await;
    let raws: Vec<String> = [
        "reader@example.com",
        "nobody@invalid.example",
        "203.0.113.7",
    ]
    .map(str::to_owned)
    .to_vec();
    let columns = [
        "email",
        "timestamp",
        "event",
        "sg_event_id",
        "sg_message_id",
        "category",
        "url",
        "useragent",
        "ip",
        "reason",
        "status",
        "type",
        "order_id",
        "_extra",
    ];
    assert_absent(
        &everything(&db, "email_event", &columns).await,
        &raws,
        "email_event",
    );
    assert_absent(&every_dead_letter(&db).await, &raws, "sluice_dead_letters");
    assert_absent(&files_text(&spool), &raws, "the spool");
    let counts = db
        .query(&format!(
            "SELECT {}, {} FROM email_event GROUP BY email ORDER BY 2 DESC",
            db.text("email"),
            db.text("COUNT(*)")
        ))
        .await;
    assert_eq!(
        counts,
        vec![
            vec![Some(hmac_hex("reader@example.com")), Some("5".into())],
            vec![Some(hmac_hex("nobody@invalid.example")), Some("1".into())],
        ]
    );
    let ips = db.values("email_event", "ip").await;
    assert!(ips.contains(&Some(hmac_hex("203.0.113.7"))), "{ips:?}");
    let _ = sluice.terminate().await;
}

/// `member`'s schema with `plan` limited to `plans`, treated or (`treated: false`) not.
fn member_schemas_with(plans: &[&str], treated: bool) -> tempfile::TempDir {
    let dir = member_schemas();
    let path = dir.path().join("member.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    schema["properties"]["plan"]["enum"] = json!(plans);
    let mut text = schema.to_string();
    if !treated {
        // `age` would be an integer column that `hash` cannot turn into text.
        schema["properties"].as_object_mut().unwrap().remove("age");
        text = schema.to_string();
        for t in ["hash", "mask", "drop"] {
            text = text.replace(&format!(",\"x-sluice-privacy\":\"{t}\""), "");
        }
        assert!(!text.contains("x-sluice-privacy"), "{text}");
    }
    std::fs::write(&path, text).unwrap();
    dir
}

/// Replay applies the stream's current treatment: a dead letter kept as received
/// (before the stream treated anything) is treated when replayed, or when it fails
/// again; one treated already is not treated twice.
async fn replay_treats_raw_dead_letters_and_never_treats_twice(kind: Db) {
    // Before any treatment: `raw` and `never` dead-lettered as received.
    let untreated = member_schemas_with(&["gold"], false);
    let Some(mut first) = spawn_app(kind, untreated.path().to_path_buf(), |_| {}).await else {
        return;
    };
    let mut raw = member(1, "raw@example.com", 1);
    raw["plan"] = json!("free");
    let mut never = member(3, "never@example.com", 3);
    never["plan"] = json!("zinc");
    let (_, answer) = first.post_json("member", &json!([raw, never])).await;
    assert_eq!(answer["dead_lettered"], 2, "{answer}");
    first.stop().await.unwrap();
    // With the treatment: `treated` is dead-lettered treated.
    let treating = member_schemas_with(&["gold"], true);
    let mut second = spawn_app_on(
        first.db.via(first.db.url.clone()),
        treating.path().to_path_buf(),
        |_| {},
    )
    .await;
    let mut treated = member(2, "treated@example.com", 2);
    treated["plan"] = json!("free");
    let (_, answer) = second.post_json("member", &treated).await;
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    second.stop().await.unwrap();
    // The schema now takes `free` (as long as `gold`: MySQL's varchar(4) holds it): replay.
    let fixed = member_schemas_with(&["gold", "free"], true);
    let app = spawn_app_on(
        first.db.via(first.db.url.clone()),
        fixed.path().to_path_buf(),
        |_| {},
    )
    .await;
    let done = crate::jobs::replay_to_the_end(&app, "member").await;
    assert_eq!(done["result"]["replayed"], 2, "{done}");
    assert_eq!(done["result"]["still_failing"], 1, "{done}");
    let emails = app.db.values("member", "email").await;
    assert!(
        emails.contains(&Some(hmac_hex("raw@example.com"))),
        "treated by replay: {emails:?}"
    );
    assert!(
        emails.contains(&Some(hmac_hex("treated@example.com"))),
        "treated once: {emails:?}"
    );
    let stored = everything(&app.db, "member", MEMBER_COLUMNS).await;
    assert_absent(&stored, &raw_values("raw@example.com", 1), "the table");
    // The one that still fails now holds its payload treated.
    let letters = every_dead_letter(&app.db).await;
    assert_absent(
        &letters,
        &raw_values("never@example.com", 3),
        "sluice_dead_letters",
    );
    assert!(
        letters.contains(&hmac_hex("never@example.com")),
        "{letters}"
    );
}

/// A dead-letter table made before the privacy treatment gets its `treated` column at
/// start-up, and its dead letters (as received) are treated when replayed.
async fn an_older_dead_letter_table_gets_treated_and_its_letters_replay_treated(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let (id, when) = match kind {
        Db::Postgres => (
            "bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            "timestamptz",
        ),
        Db::Mysql => ("bigint NOT NULL AUTO_INCREMENT PRIMARY KEY", "datetime(6)"),
        Db::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT"),
    };
    if let Some(file) = db.url.strip_prefix("sqlite://") {
        std::fs::File::create(file).unwrap();
    }
    db.execute(&format!(
        "CREATE TABLE sluice_dead_letters (id {id}, stream text, stage varchar(16) NOT NULL, error text NOT NULL, payload text NOT NULL, source text, received_at {when} NOT NULL, attempts integer NOT NULL DEFAULT 1)"
    ))
    .await;
    let mut event = member(7, "old@example.com", 7);
    event["plan"] = json!("free");
    db.execute(&format!(
        "INSERT INTO sluice_dead_letters (stream, stage, error, payload, source, received_at) VALUES ('member', 'validate', 'at /plan: not gold', '{event}', 'http 127.0.0.1:1', '2026-01-02 03:04:05')"
    ))
    .await;
    let schemas = member_schemas_with(&["gold", "free"], true);
    let app = spawn_app_on(db, schemas.path().to_path_buf(), |_| {}).await;
    let treated = app
        .db
        .query(&format!(
            "SELECT {} FROM sluice_dead_letters",
            app.db.text("treated")
        ))
        .await;
    assert!(
        matches!(treated[0][0].as_deref(), Some("0" | "false")),
        "{kind:?}: {treated:?}"
    );
    let done = crate::jobs::replay_to_the_end(&app, "member").await;
    assert_eq!(done["result"]["replayed"], 1, "{done}");
    assert_eq!(
        app.db.values("member", "email").await,
        vec![Some(hmac_hex("old@example.com"))]
    );
}

/// A Slack slash command signed by Slack's own SDK, to a stream that hashes the user's
/// id and drops their name, with `[privacy] extra = "drop"`: the command's `token`
/// and the user's name are nowhere in the database, the id only as its hash; a header
/// the webhook copies into the event is treated as the body's fields are.
async fn a_slack_command_keeps_no_token_and_no_user_name(kind: Db) {
    if !crate::webhooks::sdks_installed() {
        return;
    }
    let schemas = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "required": ["command", "user_id"],
        "properties": {
            "command": {"type": "string"},
            "text": {"type": "string"},
            "team_id": {"type": "string"},
            "channel_id": {"type": "string"},
            "user_id": {"type": "string", "x-sluice-privacy": "hash"},
            "user_name": {"type": "string", "x-sluice-privacy": "drop"},
            "client_ip": {"type": "string", "x-sluice-privacy": "hash"}
        }
    });
    std::fs::write(
        schemas.path().join("slack_command.json"),
        schema.to_string(),
    )
    .unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, "8f742231b10e8888abcd99yyyzzz85a5").unwrap();
    let hook = crate::webhooks::hook(&format!(
        "stream = \"slack_command\"\nverify = \"slack\"\nsecret_file = \"{}\"\n[headers]\n\"X-Client-IP\" = \"client_ip\"",
        secret_file.display()
    ));
    let Some(app) = spawn_app(kind, schemas.path().to_path_buf(), |c| {
        c.privacy.extra = sluice::config::ExtraPolicy::Drop;
        c.webhooks.insert("slack".into(), hook);
    })
    .await
    else {
        return;
    };
    let body = "token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&channel_id=C2147483705&user_id=U2147483697&user_name=Steve-Raw-Name&command=%2Fweather&text=94070&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1234%2F5678";
    let ts = chrono::Utc::now().timestamp();
    let headers = crate::webhooks::python_sign(
        "slack",
        "8f742231b10e8888abcd99yyyzzz85a5",
        ts,
        "",
        body.as_bytes(),
    );
    let mut req = app
        .client
        .post(app.url("/v1/hooks/slack"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Client-IP", "198.51.100.23")
        .body(body);
    for (k, v) in headers.as_object().unwrap() {
        req = req.header(k, v.as_str().unwrap());
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{kind:?}: {}", r.text().await.unwrap());
    let stored = everything(
        &app.db,
        "slack_command",
        &[
            "command",
            "text",
            "team_id",
            "channel_id",
            "user_id",
            "client_ip",
            "_extra",
        ],
    )
    .await;
    let raws: Vec<String> = [
        "198.51.100.23",
        "gIkuvaNzQIHg97ATvDxqgjtO",
        "Steve-Raw-Name",
        "U2147483697",
        "hooks.slack.com",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_absent(&stored, &raws, "slack_command");
    assert_absent(
        &every_dead_letter(&app.db).await,
        &raws,
        "sluice_dead_letters",
    );
    assert_eq!(
        app.db.values("slack_command", "user_id").await,
        vec![Some(hmac_hex("U2147483697"))]
    );
    assert_eq!(
        app.db.values("slack_command", "client_ip").await,
        vec![Some(hmac_hex("198.51.100.23"))]
    );
    assert!(stored.contains("/weather"), "{stored}");
}

/// The shipped CRM stream: a Pipedrive person webhook (the example in `examples/`)
/// keeps the person's e-mail address as its hash, the phone number masked and no name,
/// in the JSON column `data`.
async fn the_shipped_crm_stream_keeps_no_name_address_or_phone(kind: Db) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(app) = spawn_app(kind, root.join("schemas"), |_| {}).await else {
        return;
    };
    let body = std::fs::read_to_string(root.join("examples/pipedrive_person_added.json")).unwrap();
    let r = app
        .post("pipedrive_event", "", "application/json", body)
        .await;
    assert_eq!(r.status(), 200, "{kind:?}: {}", r.text().await.unwrap());
    let data = app
        .db
        .query(&format!(
            "SELECT {} FROM pipedrive_event",
            app.db.text("data")
        ))
        .await;
    let data: Value = serde_json::from_str(data[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(
        data["emails"][0]["value"],
        hmac_hex("amara.tesfaye@school.example")
    );
    assert_eq!(data["emails"][0]["label"], "work");
    assert_eq!(data["phones"][0]["value"], "*********4567");
    for name in ["name", "first_name", "last_name"] {
        assert!(data.get(name).is_none(), "{data}");
    }
    let stored = everything(
        &app.db,
        "pipedrive_event",
        &["meta", "data", "previous", "_extra"],
    )
    .await;
    let raws: Vec<String> = [
        "Amara",
        "Tesfaye",
        "amara.tesfaye@school.example",
        "+251911234567",
    ]
    .map(str::to_owned)
    .to_vec();
    assert_absent(&stored, &raws, "pipedrive_event");
}

crate::db_tests!(
    the_shipped_crm_stream_keeps_no_name_address_or_phone,
    a_slack_command_keeps_no_token_and_no_user_name,
    an_older_dead_letter_table_gets_treated_and_its_letters_replay_treated,
    replay_treats_raw_dead_letters_and_never_treats_twice,
    treated_fields_are_stored_as_the_contract_says_and_never_raw,
    the_spool_never_holds_a_raw_value,
    tcp_lines_and_jetstream_messages_are_treated,
    the_shipped_email_webhook_example_stores_no_address_or_ip,
);

/// Without a key, a schema that asks for `hash` stops start-up, naming the stream's
/// file and the property (on a shared database, where no key is ever made up); `check`
/// says the same.
#[test]
fn start_up_without_a_key_is_refused_naming_stream_and_property() {
    let schemas = member_schemas();
    for command in [&["serve"][..], &["check"]] {
        let out = crate::helpers::sluice_command()
            .args(command)
            .env("SLUICE_SCHEMAS_DIR", schemas.path())
            .env("SLUICE_DATABASE_URL", "postgres://app@db.invalid/events")
            .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
            .env("SLUICE_TCP_LISTEN", "")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command:?}");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(
            error.contains("member.json")
                && error.contains("property `age`")
                && error.contains("no key is set"),
            "{command:?}: {error}"
        );
    }
}

/// On the embedded SQLite database with no key set, Sluice keeps a key of its own
/// beside the database file: made once, then the same hashes after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_key_is_kept_beside_the_database_and_reused() {
    let Some(db) = TestDb::create(Db::Sqlite).await else {
        return;
    };
    let schemas = member_schemas();
    let dir = tempfile::tempdir().unwrap();
    // An empty value keeps the tests' own key out (see `spawn_binary`).
    let no_key = [("SLUICE_PRIVACY_KEY_FILE", String::new())];
    let post = |http: String, n: u32| async move {
        let r = reqwest::Client::new()
            .post(format!("http://{http}/v1/streams/member/events"))
            .json(&member(n.into(), "same@example.com", n))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    let sluice = start(&db, schemas.path(), &dir.path().join("spool"), &no_key);
    post(sluice.http.clone(), 1).await;
    let _ = sluice.terminate().await;
    let sluice = start(&db, schemas.path(), &dir.path().join("spool"), &no_key);
    post(sluice.http.clone(), 2).await;
    let _ = sluice.terminate().await;
    let db_file = db
        .url
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let key_file = format!("{db_file}.privacy-key");
    let meta = std::fs::metadata(&key_file).expect("the key file beside the database");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let emails = db.values("member", "email").await;
    assert_eq!(emails.len(), 2);
    assert_eq!(emails[0], emails[1], "one key across restarts");
    assert_ne!(emails[0].as_deref(), Some("same@example.com"));
}
