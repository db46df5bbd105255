//! The `sluice` binary itself: `check` output and errors, and SIGTERM flushing the queues.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{fixture_schemas, shipped_schemas, sluice_command, spawn_binary, Db, TestDb};

#[test]
fn check_prints_the_ddl_of_every_stream_for_the_configured_database() {
    let out = sluice_command()
        .args(["check"])
        .env("SLUICE_SCHEMAS_DIR", shipped_schemas())
        .env("SLUICE_DATABASE_URL", "postgres://app@db.invalid/events")
        .env(
            "SLUICE_PRIVACY_KEY_FILE",
            crate::helpers::test_privacy_key(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ddl = String::from_utf8(out.stdout).unwrap();
    assert!(ddl.contains("CREATE TABLE IF NOT EXISTS sluice_dead_letters"));
    assert!(ddl.contains("CREATE TABLE IF NOT EXISTS \"order_placed\""));
    assert!(ddl.contains("\"occurred_at\" timestamptz NOT NULL"));
    assert!(ddl.contains("\"items\" jsonb NOT NULL"));
    assert!(ddl.contains("\"event_id\" uuid NOT NULL"));
}

/// Runs `check` on a schemas directory holding `bad.json` = `schema`, expects it to
/// fail, and returns what it printed on stderr.
fn check_refuses_schema(schema: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), schema).unwrap();
    let out = sluice_command()
        .args(["check"])
        .env("SLUICE_SCHEMAS_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn check_names_the_file_property_and_reason_of_a_bad_schema() {
    let err = check_refuses_schema(
        r#"{"type": "object", "properties": {"ok": {"type": "string"}, "not-ok": {"type": "string"}}}"#,
    );
    assert!(
        err.contains("bad.json") && err.contains("not-ok") && err.contains("identifier"),
        "{err}"
    );
}

#[test]
fn check_reports_unknown_config_keys_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:1\"\nmax_body = 5\n").unwrap();
    let out = sluice_command()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("sluice.toml") && err.contains("max_body"),
        "{err}"
    );
}

/// A database that cannot be reached: the error names it, but never its password, in
/// whichever form the URL carries it.
#[test]
fn connection_errors_never_show_the_database_password() {
    for url in [
        "postgres://app:Pw-user-1@127.0.0.1:1/events",
        "postgres://app@127.0.0.1:1/events?password=Pw-query-2",
        "mysql://app@127.0.0.1:1/events?password=Pw-query-3",
        "mysql://app:Pw-user-4@127.0.0.1:1/events",
    ] {
        let out = sluice_command()
            .args(["serve"])
            .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
            .env("SLUICE_DATABASE_URL", url)
            .env("SLUICE_DATABASE_ACQUIRE_TIMEOUT", "1s")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot connect to the database"), "{err}");
        assert!(err.contains("127.0.0.1:1"), "{err}");
        assert!(!err.contains("Pw-"), "the password leaked: {err}");
    }
}

#[test]
fn zero_limits_stop_start_up_naming_the_setting() {
    for (var, key) in [
        ("SLUICE_HTTP_MAX_CONNECTIONS", "http.max_connections"),
        ("SLUICE_TCP_MAX_CONNECTIONS", "tcp.max_connections"),
        ("SLUICE_HTTP_BODY_READ_TIMEOUT", "http.body_read_timeout"),
    ] {
        let value = if var.ends_with("TIMEOUT") { "0s" } else { "0" };
        let out = sluice_command()
            .args(["serve"])
            .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
            .env("SLUICE_DATABASE_URL", "sqlite://never-created.db")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}=0 must not start");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(key) && err.contains(var), "{err}");
    }
}

/// SIGTERM: stop accepting, flush every queue, exit 0. Events accepted with
/// `ack=accepted` and still lingering in the queue are in the table afterwards.
#[tokio::test]
async fn sigterm_flushes_the_queues_and_exits_zero() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[("SLUICE_DEFAULTS_BATCH_MAX_WAIT", "30s".into())],
    );
    crate::helpers::post_readings_accepted(&sluice.http, 300).await;
    assert_eq!(db.count("reading").await, 0, "lingering for 30 s");
    let (status, logs) = sluice.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(db.count("reading").await, 300);
    assert!(
        logs.iter().any(|l| l.contains("SIGTERM received")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("Every queue is flushed")),
        "{logs:?}"
    );
}

/// SIGTERM while clients are sending: every event that got a 202 is in the table after
/// Sluice exits; requests after the signal are refused (503 or connection refused),
/// never half-taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_event() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(None, &db, &[]);
    let acked = Arc::new(AtomicI64::new(0));
    let mut clients = Vec::new();
    for c in 0..4i64 {
        let (addr, acked) = (sluice.http.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for r in 0..10_000i64 {
                let first = (c * 10_000 + r) * 50;
                let body: String = (first..first + 50)
                    .map(|i| format!("{{\"seq\": {i}, \"sensor\": \"t\", \"value\": 1}}\n"))
                    .collect();
                let sent = client
                    .post(format!(
                        "http://{addr}/v1/streams/reading/events?ack=accepted"
                    ))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == 202 => {
                        acked.fetch_add(50, Ordering::SeqCst);
                    }
                    Ok(resp) => assert_eq!(resp.status(), 503, "only 503 while stopping"),
                    Err(_) => return, // the listener is closed
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, _) = sluice.terminate().await;
    assert!(status.success(), "exit status {status}");
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 0, "the load ran before the signal");
    assert_eq!(
        db.count("reading").await,
        acked,
        "every acknowledged event is stored"
    );
}

/// `--log-format json`: every log line is one JSON object a log collector can read.
#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let db = tempfile::tempdir().unwrap();
    let mut child = sluice_command()
        .args(["--log-format", "json"])
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env(
            "SLUICE_DATABASE_URL",
            format!("sqlite://{}", db.path().join("j.db").display()),
        )
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let listening = v["fields"]["message"] == "Sluice is listening.";
        seen.push(v);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let last = seen.last().expect("log lines");
    assert_eq!(last["level"], "INFO");
    assert!(
        last["fields"]["http"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{last}"
    );
    assert!(
        seen.iter().any(|v| v["fields"]["stream"] == "reading"),
        "one start-up line per stream"
    );
}

/// A flood of invalid events: the first is logged in full, the rest become one summary
/// line per interval that counts them, instead of one log line per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_events_is_logged_once_then_summarised() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[("SLUICE_LOG_SUMMARY_INTERVAL", "300ms".into())],
    );
    let client = reqwest::Client::new();
    let invalid: String = (0..50)
        .map(|i| format!("{{\"seq\": {i}, \"sensor\": \"t\", \"value\": 5000}}\n"))
        .collect();
    for _ in 0..20 {
        let r = client
            .post(format!("http://{}/v1/streams/reading/events", sluice.http))
            .header("content-type", "application/x-ndjson")
            .body(invalid.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A summary comes within the interval, not only at shutdown.
    let seen = sluice.log_until(10, |l| l.contains("(summary)"));
    let (status, rest) = sluice.terminate().await;
    let logs: Vec<String> = seen.into_iter().chain(rest).collect();
    assert!(status.success());
    assert_eq!(db.count("sluice_dead_letters").await, 1000);
    let first: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("Event dead-lettered"))
        .collect();
    assert_eq!(first.len(), 1, "{logs:#?}");
    assert!(first[0].contains("stage=\"validate\"") || first[0].contains("stage=validate"));
    let summarised: u64 = logs
        .iter()
        .filter(|l| l.contains("(summary)"))
        .map(|l| {
            let count = l.split("count=").nth(1).expect("a count field");
            count
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(summarised, 999, "{logs:#?}");
    let lines = logs.iter().filter(|l| l.contains("dead-lettered")).count();
    assert!(lines < 10, "{lines} log lines for 1000 invalid events");
}

/// `check` lists the webhooks, and names the key of one whose stream does not exist,
/// whose scheme lacks what it needs, or whose secret is missing (as `serve` would).
#[test]
fn check_lists_webhooks_and_names_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        sluice_command()
            .args(["check", "--config"])
            .arg(&path)
            .env("SLUICE_SCHEMAS_DIR", crate::helpers::shipped_schemas())
            .env("TEST_GH_SECRET", "s3cret-value")
            .output()
            .unwrap()
    };
    let unset = run("[webhooks.gh]\nstream = \"github_event\"\nverify = \"github\"\nsecret_env = \"UNSET_SECRET_VAR\"\n");
    assert!(!unset.status.success(), "check refuses what serve refuses");
    let err = String::from_utf8(unset.stderr).unwrap();
    assert!(err.contains("UNSET_SECRET_VAR"), "{err}");
    let good = run("[webhooks.gh]\nstream = \"github_event\"\nverify = \"github\"\nsecret_env = \"TEST_GH_SECRET\"\n");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let listing = String::from_utf8(good.stdout).unwrap();
    assert!(
        listing.contains("POST /v1/hooks/gh: verify = \"github\", to stream github_event"),
        "{listing}"
    );
    let unknown = run("[webhooks.gh]\nverify = \"none\"\n[webhooks.gh.route]\nheader = \"X-GitHub-Event\"\nstreams = { \"push\" = \"github_push\" }\n");
    assert!(!unknown.status.success());
    let err = String::from_utf8(unknown.stderr).unwrap();
    assert!(
        err.contains("[webhooks.gh]") && err.contains("github_push"),
        "{err}"
    );
    let no_header =
        run("[webhooks.h]\nstream = \"github_event\"\nverify = \"hmac\"\nsecret_env = \"X\"\n");
    assert!(!no_header.status.success());
    let err = String::from_utf8(no_header.stderr).unwrap();
    assert!(
        err.contains("[webhooks.h]") && err.contains("signature_header"),
        "{err}"
    );
}

/// Every section of the configuration can be set from the environment, a new one
/// included (the variables are derived from the configuration's types).
#[test]
fn check_takes_every_section_from_the_environment() {
    let out = sluice_command()
        .args(["check"])
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_DATABASE_URL", "postgres://app@db.invalid/events")
        .env("SLUICE_JETSTREAM_URL", "nats://127.0.0.1:4222")
        .env("SLUICE_JETSTREAM_STREAM", "EVENTS")
        .env("SLUICE_JETSTREAM_SUBJECTS", "[\"events.>\"]")
        .env("SLUICE_STREAMS_READING_ID_FIELD", "seq")
        .env("SLUICE_STREAMS_READING_TABLE", "readings")
        .env("SLUICE_DEAD_LETTERS_RETENTION", "30d")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("CREATE TABLE IF NOT EXISTS \"readings\"")
            && stdout.contains("UNIQUE (\"seq\")"),
        "{stdout}"
    );
    let out = sluice_command()
        .args(["check"])
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_JETSTREAM_URLL", "nats://x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("SLUICE_JETSTREAM_URLL"),
        "{err}"
    );
}

/// A SIGHUP while Sluice starts (here: waiting for another instance's schema lock on
/// PostgreSQL) does not kill it; it comes up once the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_during_start_up_does_not_kill_sluice() {
    use sqlx::Connection;
    use std::io::BufRead;
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let mut lock = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(126909663503205)")
        .execute(&mut lock)
        .await
        .unwrap();
    let mut child = sluice_command()
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_DATABASE_URL", &db.url)
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..2 {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP during start-up killed Sluice: {:?}",
        lines.try_iter().collect::<Vec<_>>()
    );
    sqlx::query("SELECT pg_advisory_unlock(126909663503205)")
        .execute(&mut lock)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(15))
            .expect("Sluice comes up");
        if sluice::app::listening_addresses(&line).is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// A misspelt `type` is reported with the property it belongs to.
#[test]
fn check_names_the_property_of_a_bad_type() {
    let err = check_refuses_schema(
        r#"{"type": "object", "properties": {"ok": {"type": "string"}, "amount": {"type": "strnig"}}}"#,
    );
    assert!(
        err.contains("bad.json")
            && err.contains("`amount`")
            && err.contains("/properties/amount/type"),
        "{err}"
    );
}
