//! The jobs API: a replay runs in the background with progress, can be cancelled
//! between pages, refuses a second replay over the same dead letters, and a job running
//! at a crash is marked failed at the next start, or by another instance on the same
//! database (never while its own instance is alive); stopping Sluice cancels a running
//! one. Dead letters are seeded as TCP lines
//! naming an unknown stream (stage `route`) and replayed `into` the `reading` stream.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::db_tests;
use crate::helpers::{
    fixture_schemas, hold_write_lock, spawn_app, spawn_binary, Db, TestApp, TestDb,
};

/// Writes `n` readings over TCP to a stream that does not exist: `n` route dead letters.
async fn seed_route_dead_letters(tcp: &str, db: &TestDb, n: u64) {
    let mut socket = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let lines: String = (0..n)
        .map(|s| {
            format!(
                "{}\n",
                json!({"stream": "nope", "seq": s, "sensor": "job", "value": 1.0})
            )
        })
        .collect();
    socket.write_all(lines.as_bytes()).await.unwrap();
    socket.shutdown().await.unwrap();
    db.wait_for_dead_letters(n as usize).await;
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Starts a replay job of `stream` on `app` and waits until it has completed.
pub async fn replay_to_the_end(app: &crate::helpers::TestApp, stream: &str) -> Value {
    let r = app
        .client
        .post(app.url("/v1/jobs/replay"))
        .json(&serde_json::json!({"stream": stream}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("http://{}", app.addr);
    wait_job(&app.client, &base, &id, |j| j["state"] == "completed").await
}

/// Polls the job until `done(job)`, at most 30 s.
pub async fn wait_job(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(client, base, id).await;
        if done(&j) {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never got there: {j}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn base(app: &TestApp) -> String {
    format!("http://{}", app.addr)
}

async fn a_replay_job_runs_in_the_background_with_progress(kind: Db) {
    let Some(app) = spawn_app(kind, fixture_schemas(), |_| {}).await else {
        return;
    };
    let tcp = app.tcp_addr.unwrap().to_string();
    seed_route_dead_letters(&tcp, &app.db, 1200).await;
    let base = base(&app);
    // Locking the target table keeps the job running long enough to watch it. (SQLite
    // locks the whole file, jobs table included: there the job is only followed to its
    // end.)
    let lock = match kind {
        Db::Sqlite => None,
        _ => Some(hold_write_lock(&app.db).await),
    };
    let (status, started) = post(
        &app.client,
        format!("{base}/v1/jobs/replay"),
        json!({"into": "reading"}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    if lock.is_some() {
        let running = wait_job(&app.client, &base, &id, |j| {
            j["state"] == "running" && j["progress"]["total"] == 1200
        })
        .await;
        assert_eq!(running["progress"]["percent"], 0.0, "{running}");
        assert_eq!(running["kind"], "replay");
        // A second replay over the same dead letters is refused while this one runs.
        let (status, refused) = post(
            &app.client,
            format!("{base}/v1/jobs/replay"),
            json!({"into": "reading"}),
        )
        .await;
        assert_eq!(status, 409, "{refused}");
    }
    drop(lock);
    let done = wait_job(&app.client, &base, &id, |j| j["state"] == "completed").await;
    assert_eq!(done["result"]["replayed"], 1200, "{done}");
    assert_eq!(done["progress"]["percent"], 100.0, "{done}");
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());
    assert!(
        done["logs"].as_array().is_some_and(|l| l.len() >= 3),
        "{done}"
    );
    app.db.wait_for_count("reading", 1200).await;
    assert_eq!(app.db.count("sluice_dead_letters").await, 0, "{kind:?}");
    // The history is in the table: listed, newest first.
    let list: Value = app
        .client
        .get(format!("{base}/v1/jobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"][0]["id"], id.as_str(), "{list}");
    let sql = format!("SELECT state, {} FROM sluice_jobs", app.db.text("done"));
    let rows = app.db.query(&sql).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][0].as_deref(), Some("completed"));
    assert_eq!(rows[0][1].as_deref(), Some("1200"));
}

db_tests!(a_replay_job_runs_in_the_background_with_progress);

/// On PostgreSQL, whose table lock leaves the jobs table writable.
#[tokio::test]
async fn a_cancelled_replay_keeps_what_it_committed_and_leaves_the_rest() {
    let Some(app) = spawn_app(Db::Postgres, fixture_schemas(), |_| {}).await else {
        return;
    };
    let tcp = app.tcp_addr.unwrap().to_string();
    seed_route_dead_letters(&tcp, &app.db, 1200).await;
    let base = base(&app);
    let lock = hold_write_lock(&app.db).await;
    let (_, started) = post(
        &app.client,
        format!("{base}/v1/jobs/replay"),
        json!({"into": "reading"}),
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    wait_job(&app.client, &base, &id, |j| {
        j["state"] == "running" && j["progress"]["total"] == 1200
    })
    .await;
    let (status, _) = post(
        &app.client,
        format!("{base}/v1/jobs/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    drop(lock);
    let done = wait_job(&app.client, &base, &id, |j| j["state"] == "cancelled").await;
    let replayed = done["result"]["replayed"].as_i64().unwrap();
    assert!(replayed > 0 && replayed < 1200, "stopped mid-way: {done}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.db.count("reading").await, replayed);
    assert_eq!(app.db.count("sluice_dead_letters").await, 1200 - replayed);
    // Cancelling a finished job: 409; an unknown one: 404.
    let (status, _) = post(
        &app.client,
        format!("{base}/v1/jobs/{id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = post(
        &app.client,
        format!("{base}/v1/jobs/nope/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, bad) = post(
        &app.client,
        format!("{base}/v1/jobs/replay"),
        json!({"stream": "nope"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    let (status, bad) = post(
        &app.client,
        format!("{base}/v1/jobs/replay"),
        json!({"stage": "bogus"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
    // The stage filter: the rest are `route` dead letters, none `validate`.
    for (stage, examined) in [("validate", 0), ("route", 1200 - replayed)] {
        let (_, started) = post(
            &app.client,
            format!("{base}/v1/jobs/replay"),
            json!({"into": "reading", "stage": stage, "dry_run": true}),
        )
        .await;
        let id = started["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{stage}: {started}"))
            .to_owned();
        let done = wait_job(&app.client, &base, &id, |j| j["state"] == "completed").await;
        assert_eq!(done["progress"]["total"], examined, "{stage}: {done}");
    }
}

/// A Sluice (with `env`) on `db` running a replay job of `n` dead letters into
/// `reading`, held up by a write lock on the table (returned with the job's id): on
/// PostgreSQL, whose table lock leaves the jobs table writable.
async fn replay_held_by_a_lock(
    db: &TestDb,
    env: &[(&str, String)],
    n: u64,
) -> (
    crate::helpers::Binary,
    String,
    Box<dyn std::any::Any + Send>,
) {
    let sluice = spawn_binary(None, db, env);
    seed_route_dead_letters(sluice.tcp.as_deref().unwrap(), db, n).await;
    let base = format!("http://{}", sluice.http);
    let client = reqwest::Client::new();
    let lock = hold_write_lock(db).await;
    let (_, started) = post(
        &client,
        format!("{base}/v1/jobs/replay"),
        json!({"into": "reading"}),
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    wait_job(&client, &base, &id, |j| j["state"] == "running").await;
    (sluice, id, lock)
}

/// On PostgreSQL, whose table lock leaves the jobs table writable.
#[tokio::test]
async fn a_job_running_at_a_crash_is_marked_failed_at_the_next_start() {
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let env = [("SLUICE_TCP_LISTEN", "127.0.0.1:0".to_owned())];
    let (mut sluice, id, lock) = replay_held_by_a_lock(&db, &env, 800).await;
    let client = reqwest::Client::new();
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();
    drop(lock);
    let sluice = spawn_binary(None, &db, &env);
    let base = format!("http://{}", sluice.http);
    // Marked at start-up, in the background.
    let after = wait_job(&client, &base, &id, |j| {
        j["state"] != "running" && j["state"] != "ready"
    })
    .await;
    assert_eq!(after["state"], "failed", "{after}");
    assert!(
        after["errors"][0]
            .as_str()
            .unwrap()
            .contains("stopped while this job was running"),
        "{after}"
    );
    assert!(after["finished_at"].is_string());
    // Started again, it finishes the rest.
    let (_, again) = post(
        &client,
        format!("{base}/v1/jobs/replay"),
        json!({"into": "reading"}),
    )
    .await;
    let again = again["id"].as_str().unwrap().to_owned();
    wait_job(&client, &base, &again, |j| j["state"] == "completed").await;
    db.wait_for_count("reading", 800).await;
    assert_eq!(db.count("sluice_dead_letters").await, 0);
    sluice.terminate().await;
}

/// Two instances on one database: the other instance's sweeps leave a running job
/// alone while its instance records its heartbeat, and mark it failed once that
/// instance is killed.
#[tokio::test]
async fn another_instance_leaves_a_live_job_alone_and_marks_a_dead_ones_failed() {
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let env = [
        ("SLUICE_TCP_LISTEN", "127.0.0.1:0".to_owned()),
        ("SLUICE_JOBS_STALE_AFTER", "2s".to_owned()),
        ("SLUICE_JOBS_SWEEP_EVERY", "200ms".to_owned()),
    ];
    let mut first = spawn_binary(None, &db, &env);
    seed_route_dead_letters(first.tcp.as_deref().unwrap(), &db, 800).await;
    let client = reqwest::Client::new();
    let lock = hold_write_lock(&db).await;
    let (_, started) = post(
        &client,
        format!("http://{}/v1/jobs/replay", first.http),
        json!({"into": "reading"}),
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    let second = spawn_binary(None, &db, &env);
    let other = format!("http://{}", second.http);
    wait_job(&client, &other, &id, |j| j["state"] == "running").await;
    // Longer than a heartbeat may be missed (stale_after, 2 s here) plus a sweep: a
    // live instance's job is still running. (Time is the subject: this wait is it.)
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let live = job(&client, &other, &id).await;
    assert_eq!(live["state"], "running", "a live instance's job: {live}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let after = wait_job(&client, &other, &id, |j| j["state"] != "running").await;
    assert_eq!(after["state"], "failed", "{after}");
    drop(lock);
    second.terminate().await;
}

/// A replay job says why each dead letter still fails, in its `errors`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_job_says_why_dead_letters_still_fail() {
    let app = spawn_app(Db::Sqlite, fixture_schemas(), |_| {})
        .await
        .unwrap();
    let (status, _) = app
        .post_json(
            "reading",
            &json!([{"seq": 1, "sensor": "a", "value": 5000}, {"seq": 2, "sensor": "a", "value": -5000}]),
        )
        .await;
    assert_eq!(status, 200);
    app.db.wait_for_dead_letters(2).await;
    let base = base(&app);
    let (status, started) = post(
        &app.client,
        format!("{base}/v1/jobs/replay"),
        json!({"stream": "reading"}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let done = wait_job(&app.client, &base, &id, |j| j["state"] == "completed").await;
    assert_eq!(done["result"]["still_failing"], 2, "{done}");
    let errors = done["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 2, "{done}");
    assert!(
        errors.iter().all(|e| e
            .as_str()
            .is_some_and(|e| e.contains("still fails") && e.contains("/value"))),
        "{done}"
    );
}

/// Stopping Sluice (SIGTERM) cancels a running replay: it stops after the page it is
/// writing and is recorded `cancelled`, not left `running` for the next start to fail.
#[tokio::test]
async fn stopping_sluice_cancels_a_running_job() {
    let Some(db) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let env = [("SLUICE_TCP_LISTEN", "127.0.0.1:0".to_owned())];
    let (sluice, _, lock) = replay_held_by_a_lock(&db, &env, 1200).await;
    let stopping = tokio::spawn(sluice.terminate());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The page it was writing goes through; then it sees the cancellation.
    drop(lock);
    let (status, logs) = stopping.await.unwrap();
    assert!(status.success(), "{logs:?}");
    let rows = db
        .query(&format!(
            "SELECT state, {} FROM sluice_jobs",
            db.text("done")
        ))
        .await;
    assert_eq!(rows[0][0].as_deref(), Some("cancelled"), "{rows:?}");
    let done: usize = rows[0][1].as_deref().unwrap().parse().unwrap();
    assert!(done < 1200, "it stopped before the end: {done}");
    assert_eq!(
        db.count("reading").await + db.count("sluice_dead_letters").await,
        1200
    );
}
