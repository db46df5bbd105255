//! The JetStream input against the real NATS server (`SLUICE_TEST_NATS_URL`, default
//! `nats://127.0.0.1:4222`, JetStream on): messages acknowledged only after their
//! commit, several Sluice instances sharing one durable consumer.

use std::time::Duration;

use async_nats::jetstream;

use crate::helpers::{reading, spawn_binary, Db, TestDb};

/// The NATS server's URL, or `None` (after printing SKIPPED) when it cannot be reached;
/// with `SLUICE_TEST_REQUIRE_ALL=1` an unreachable server fails the test.
async fn nats() -> Option<(String, jetstream::Context)> {
    let url = std::env::var("SLUICE_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    match async_nats::connect(&url).await {
        Ok(client) => Some((url, jetstream::new(client))),
        Err(e) => {
            if std::env::var("SLUICE_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!("NATS at {url} is not reachable ({e}) but SLUICE_TEST_REQUIRE_ALL=1");
            }
            eprintln!("SKIPPED: a JetStream test; no NATS server at {url} ({e})");
            None
        }
    }
}

/// A JetStream stream of this test's own (deleted at the end) and its subject prefix.
fn names() -> (String, String) {
    let tag = format!("{:08x}", fastrand::u32(..));
    (format!("SLUICE_T_{tag}"), format!("sluicet{tag}."))
}

/// A config file for an instance consuming `stream` through the durable `consumer`.
fn config(dir: &std::path::Path, url: &str, stream: &str, prefix: &str) -> std::path::PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[streams.reading]\nid_field = \"seq\"\n\n[jetstream]\nurl = \"{url}\"\nstream = \"{stream}\"\nsubjects = [\"{prefix}>\"]\nconsumer = \"sluice\"\nsubject_prefix = \"{prefix}\"\nmax_ack_pending = 2000\n"
        ),
    )
    .unwrap();
    path
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

/// Waits (up to `secs`) until `check` holds, polling every 100 ms.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match check().await {
            Ok(()) => return,
            Err(state) if tokio::time::Instant::now() > deadline => {
                panic!("{what} within {secs} s: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
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
    let (name, prefix) = names();
    js.get_or_create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}>")],
        ..Default::default()
    })
    .await
    .unwrap();
    const N: i64 = 50_000;
    publish(&js, &format!("{prefix}reading"), 0..N).await;

    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "SLUICE_CONFIG",
        config(dir.path(), &url, &name, &prefix)
            .display()
            .to_string(),
    )];
    let first = spawn_binary(None, &db, &env);
    let second = spawn_binary(None, &db, &env);
    eventually(180, "every event is stored", || async {
        match db.count("reading").await {
            N => Ok(()),
            n => Err(format!("{n} rows of {N}")),
        }
    })
    .await;
    assert_eq!(db.distinct("reading", "seq").await, N, "each event once");
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream(&name)
        .await
        .unwrap()
        .get_consumer("sluice")
        .await
        .unwrap();
    eventually(30, "every message is acknowledged", || {
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
    // Both instances took part (the consumer is shared, not copied).
    for sluice in [&first, &second] {
        let metrics = reqwest::get(format!("http://{}/metrics", sluice.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let acked = metrics
            .lines()
            .find(|l| l.starts_with("sluice_jetstream_messages_total{outcome=\"acked\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(acked > 0.0, "an instance acknowledged nothing:\n{metrics}");
    }
    first.terminate().await;
    second.terminate().await;
    js.delete_stream(&name).await.unwrap();
}
