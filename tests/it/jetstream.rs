//! The JetStream input against the real NATS server (`SLUICE_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`, JetStream on): messages acknowledged only after their
//! commit, several Sluice instances sharing one durable consumer.

use std::time::Duration;

use async_nats::jetstream;

use crate::helpers::{eventually, faulty_proxy, reading, spawn_binary, Binary, Db, Fault, TestDb};

/// The NATS server's URL, or `None` (after printing SKIPPED) when it cannot be reached;
/// with `SLUICE_TEST_REQUIRE_ALL=1` an unreachable server fails the test.
pub(crate) async fn nats() -> Option<(String, jetstream::Context)> {
    let url = std::env::var("SLUICE_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    match async_nats::connect(&url).await {
        Ok(client) => Some((url, jetstream::new(client))),
        Err(e) => {
            crate::helpers::skip(&format!("a JetStream test: no NATS server at {url} ({e})"));
            None
        }
    }
}

/// A JetStream stream of this test's own (deleted at the end) and its subject prefix.
pub(crate) fn names() -> (String, String) {
    let tag = format!("{:08x}", fastrand::u32(..));
    (format!("SLUICE_T_{tag}"), format!("sluicet{tag}."))
}

/// A config file for an instance consuming `stream` through the durable `consumer`.
fn config(dir: &std::path::Path, url: &str, stream: &str, prefix: &str) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[streams.reading]\nid_field = \"seq\"\n\n[jetstream]\nurl = \"{url}\"\nstream = \"{stream}\"\nsubjects = [\"{prefix}>\"]\nconsumer = \"sluice\"\nsubject_prefix = \"{prefix}\"\nmax_ack_pending = 2000\nack_wait = \"3s\"\n"
        ),
    )
    .unwrap();
    path
}

/// The sum of the samples of `metric` with a label whose value is `value` (e.g.
/// `acked`, which `outcome="nacked"` does not match) that the instance exports.
async fn metric(sluice: &Binary, metric: &str, value: &str) -> f64 {
    crate::helpers::metric_sum(&sluice.http, metric, &format!("=\"{value}\"")).await
}

/// `db` reached through a proxy that drops every connection while the flag is set.
async fn through_faulty_proxy(
    db: &TestDb,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, TestDb) {
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = faulty_proxy("127.0.0.1:5432", Fault::Drop, down.clone()).await;
    let name = db.name();
    (down, db.via(format!("postgres://postgres@{proxy}/{name}")))
}

/// A JetStream stream with `n` readings published to it, and the config of instances
/// consuming it; deleted by [`Fixture::done`].
struct Fixture {
    js: jetstream::Context,
    name: String,
    /// The subject prefix that names a stream (`<prefix>reading`).
    prefix: String,
    env: [(&'static str, String); 1],
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn publish(js: jetstream::Context, url: &str, n: i64) -> Fixture {
        let (name, prefix) = names();
        js.get_or_create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}>")],
            ..Default::default()
        })
        .await
        .unwrap();
        publish(&js, &format!("{prefix}reading"), 0..n).await;
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), url, &name, &prefix);
        Fixture {
            js,
            name,
            prefix,
            env: [("SLUICE_CONFIG", file.display().to_string())],
            _dir: dir,
        }
    }

    /// Waits until the consumer has nothing left to deliver and nothing unacknowledged.
    async fn drained(&self) {
        let consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(&self.name)
            .await
            .unwrap()
            .get_consumer("sluice")
            .await
            .unwrap();
        eventually(60, "every message is acknowledged", || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await.map_err(|e| e.to_string())?;
                match (info.num_pending, info.num_ack_pending) {
                    (0, 0) => Ok(()),
                    state => Err(format!("(pending, ack pending) = {state:?}")),
                }
            }
        })
        .await;
    }

    async fn done(self) {
        self.js.delete_stream(&self.name).await.unwrap();
    }
}

/// Waits (up to 120 s) until `reading` holds at least `n` rows.
async fn rows_at_least(db: &TestDb, n: i64, what: &str) {
    eventually(120, what, || async {
        match db.count("reading").await {
            c if c >= n => Ok(()),
            c => Err(format!("{c} rows")),
        }
    })
    .await;
}

/// Waits until `reading` holds `n` rows, each `seq` once.
async fn stored_once(db: &TestDb, n: i64, secs: u64) {
    eventually(secs, "every event is stored", || async {
        match db.count("reading").await {
            c if c == n => Ok(()),
            c => Err(format!("{c} rows of {n}")),
        }
    })
    .await;
    assert_eq!(db.distinct("reading", "seq").await, n, "each event once");
}

/// Publishes readings `seqs` to `subject`, each message one event, and waits for
/// JetStream to have stored them all.
async fn publish(js: &jetstream::Context, subject: &str, seqs: std::ops::Range<i64>) {
    let mut acks = Vec::new();
    for seq in seqs {
        let ack = js
            .publish(subject.to_owned(), reading(seq).to_string().into())
            .await
            .expect("JetStream takes the message");
        acks.push(ack);
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.expect("JetStream stores the message");
            }
        }
    }
    for ack in acks {
        ack.await.expect("JetStream stores the message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_consumer_and_store_every_event_once() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    const N: i64 = 50_000;
    let fixture = Fixture::publish(js, &url, N).await;
    // Poison messages: two that hold no event, one the schema refuses and one the
    // database refuses (PostgreSQL text holds no NUL). Each becomes a dead letter and is
    // acknowledged; none is dropped or redelivered forever.
    let subject = format!("{}reading", fixture.prefix);
    let refused_by_db = serde_json::json!({"seq": N, "sensor": "a\u{0}b", "value": 1.0});
    for payload in [
        String::new(),
        "not json".to_owned(),
        r#"{"seq": -1, "sensor": "s-0", "value": 1.0}"#.to_owned(),
        refused_by_db.to_string(),
    ] {
        let ack = fixture.js.publish(subject.clone(), payload.into()).await;
        ack.unwrap().await.unwrap();
    }
    let first = spawn_binary(None, &db, &fixture.env);
    let second = spawn_binary(None, &db, &fixture.env);
    stored_once(&db, N, 180).await;
    fixture.drained().await;
    db.wait_for_dead_letters(4).await;
    let stages = db
        .query("SELECT stage, error FROM sluice_dead_letters ORDER BY error")
        .await;
    assert_eq!(stages.len(), 4, "{stages:?}");
    let mut names: Vec<_> = stages.iter().filter_map(|r| r[0].as_deref()).collect();
    names.sort_unstable();
    assert_eq!(names, ["parse", "parse", "validate", "write"], "{stages:?}");
    assert!(
        stages.iter().any(|r| r[1]
            .as_deref()
            .is_some_and(|e| e.contains("the message is empty"))),
        "{stages:?}"
    );
    // Both instances took part (the consumer is shared, not copied).
    for sluice in [&first, &second] {
        let acked = metric(sluice, "sluice_jetstream_messages_total", "acked").await;
        assert!(acked > 0.0, "an instance acknowledged nothing");
    }
    first.terminate().await;
    second.terminate().await;
    fixture.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_loses_nothing_and_its_messages_are_redelivered() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    const N: i64 = 30_000;
    let fixture = Fixture::publish(js, &url, N).await;
    let mut first = spawn_binary(None, &db, &fixture.env);
    let second = spawn_binary(None, &db, &fixture.env);
    rows_at_least(&db, N / 4, "a quarter is stored").await;
    // Killed with messages pulled and not acknowledged: JetStream redelivers them once
    // ack_wait (3 s) passes, to the instance still running.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    rows_at_least(&db, N / 2, "the other instance goes on").await;
    let restarted = spawn_binary(None, &db, &fixture.env);
    stored_once(&db, N, 180).await;
    fixture.drained().await;
    let redelivered = metric(&second, "sluice_jetstream_messages_total", "redelivered").await
        + metric(&restarted, "sluice_jetstream_messages_total", "redelivered").await;
    assert!(
        redelivered > 0.0,
        "the killed instance's messages were redelivered"
    );
    second.terminate().await;
    restarted.terminate().await;
    fixture.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_acknowledges_nothing_early_and_loses_nothing() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    const N: i64 = 20_000;
    let fixture = Fixture::publish(js, &url, N).await;
    let (down, via_proxy) = through_faulty_proxy(&db).await;
    let sluice = spawn_binary(None, &via_proxy, &fixture.env);
    rows_at_least(&db, 2_000, "some events are stored").await;
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    // For 10 s the database cannot be reached. An acknowledgement only ever follows a
    // commit: read the acknowledgements first, then the rows committed since.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let acked = metric(&sluice, "sluice_jetstream_messages_total", "acked").await;
        let stored = db.count("reading").await as f64;
        assert!(
            acked <= stored,
            "{acked} messages acknowledged, {stored} rows committed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        metric(&sluice, "sluice_write_retries_total", "reading").await > 0.0,
        "the writes failed and were retried during the outage"
    );
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    stored_once(&db, N, 180).await;
    fixture.drained().await;
    sluice.terminate().await;
    fixture.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pulled_while_the_writes_fail_are_given_back_and_redelivered() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let fixture = Fixture::publish(js, &url, 100).await;
    let (down, via_proxy) = through_faulty_proxy(&db).await;
    let sluice = spawn_binary(None, &via_proxy, &fixture.env);
    stored_once(&db, 100, 60).await;
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let subject = format!("{}reading", fixture.prefix);
    // These are queued, and their write fails and is retried...
    publish(&fixture.js, &subject, 100..110).await;
    eventually(30, "the writes fail and are retried", || async {
        match metric(&sluice, "sluice_write_retries_total", "reading").await {
            n if n > 0.0 => Ok(()),
            n => Err(format!("{n} retries")),
        }
    })
    .await;
    // ...so those pulled now are not queued behind them but given back to JetStream,
    // which keeps them (and could hand them to another instance) meanwhile.
    publish(&fixture.js, &subject, 110..600).await;
    eventually(
        30,
        "the messages pulled meanwhile are given back",
        || async {
            match metric(&sluice, "sluice_jetstream_messages_total", "nacked").await {
                n if n > 0.0 => Ok(()),
                n => Err(format!("{n} given back")),
            }
        },
    )
    .await;
    assert_eq!(
        metric(&sluice, "sluice_jetstream_messages_total", "acked").await,
        100.0,
        "nothing is acknowledged while the database is away"
    );
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    stored_once(&db, 600, 120).await;
    fixture.drained().await;
    assert!(
        metric(&sluice, "sluice_jetstream_messages_total", "redelivered").await > 0.0,
        "the messages given back were redelivered"
    );
    sluice.terminate().await;
    fixture.done().await;
}

/// The NATS URL's password (or token) never reaches the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_password_is_not_logged() {
    let Some((url, js)) = nats().await else {
        return;
    };
    let with_password = url.replacen("nats://", "nats://sluice:S3cret@", 1);
    let fixture = Fixture::publish(js, &with_password, 1).await;
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(None, &db, &fixture.env);
    let mut seen = sluice.log_until(20, |l| l.contains("Consuming from JetStream"));
    let (_, rest) = sluice.terminate().await;
    seen.extend(rest);
    assert!(seen.iter().any(|l| l.contains("sluice:***@")), "{seen:#?}");
    assert!(!seen.iter().any(|l| l.contains("S3cret")), "{seen:#?}");
    fixture.done().await;
}
