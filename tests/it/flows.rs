//! Flows of SQL transforms (`[transforms.NAME]`, `POST /v1/jobs/flow`): the shipped
//! `daily_revenue` over 10,000 bookshop events equals the same aggregate computed here
//! from the events sent, run after run, processing each load once; a failing task stops
//! what depends on it and commits nothing, and once fixed processes its range once; a
//! cycle is refused by `sluice check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::db_tests;
use crate::helpers::{
    shipped_schemas, sluice_command, spawn_app, spawn_binary, Db, TestApp, TestDb,
};

fn shipped(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file)
}

fn transform(sql_file: &Path, after: &[&str]) -> sluice::flows::TransformConfig {
    sluice::flows::TransformConfig {
        sql_file: sql_file.to_owned(),
        after: after.iter().map(|s| s.to_string()).collect(),
        every: None,
        publish: None,
    }
}

/// Starts a flow of `targets` on the Sluice at `base` (`http://…`); answers its job's id.
async fn start_flow(base: &str, targets: &[&str]) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/jobs/flow"))
        .json(&json!({ "targets": targets }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Job `id` at `base`, as soon as `until` holds for it (failing after 60 s).
async fn job_until(base: &str, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = reqwest::get(format!("{base}/v1/jobs/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if until(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `job`'s first task is running.
fn running(job: &Value) -> bool {
    job["result"]["tasks"][0]["state"] == "running"
}

/// Whether `job` has ended.
fn ended(job: &Value) -> bool {
    !matches!(job["state"].as_str(), Some("ready" | "running"))
}

/// Starts a flow of `targets` and waits for its job to end; answers the job.
async fn run_flow(app: &TestApp, targets: &[&str]) -> Value {
    let base = format!("http://{}", app.addr);
    let id = start_flow(&base, targets).await;
    job_until(&base, &id, ended).await
}

/// `sluice check` on a config of `transforms` (TOML) over the shipped schemas.
fn check(dir: &Path, transforms: &str) -> std::process::Output {
    let config = dir.join("sluice.toml");
    let text = format!(
        "schemas_dir = {:?}\n[database]\nurl = \"sqlite://{}\"\n{transforms}",
        shipped_schemas(),
        dir.join("x.db").display()
    );
    std::fs::write(&config, text).unwrap();
    sluice_command()
        .args(["--config", config.to_str().unwrap(), "check"])
        .output()
        .unwrap()
}

fn task<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["result"]["tasks"]
        .as_array()
        .and_then(|tasks| tasks.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no task {name} in {job}"))
}

/// The bookshop's events, and what `daily_revenue` must hold, computed from them.
#[derive(Default)]
struct Shop {
    /// order_id → country.
    orders: BTreeMap<String, String>,
    /// (order_id, day, currency, cents, captured) of each payment sent.
    payments: Vec<(String, String, String, i64, bool)>,
}

impl Shop {
    /// `n` orders from the load generator, their ids prefixed with `prefix`.
    fn orders(&mut self, n: usize, seed: u64, prefix: &str) -> Vec<Value> {
        sluice::loadgen::generate(n, seed)
            .into_iter()
            .map(|text| {
                let mut order: Value = serde_json::from_str(&text).unwrap();
                let id = order["order_id"].as_str().unwrap().replace("BK-", prefix);
                order["order_id"] = json!(id);
                self.orders
                    .insert(id, order["country"].as_str().unwrap().to_owned());
                order
            })
            .collect()
    }

    /// A payment of `order` (its amount and currency), one in nine declined, on one of
    /// 20 days.
    fn payment(&mut self, i: usize, order_id: &str, currency: &str, amount: f64) -> Value {
        let day = format!("2026-11-{:02}", 1 + (i * 7) % 20);
        let captured = !i.is_multiple_of(9);
        self.payments.push((
            order_id.to_owned(),
            day.clone(),
            currency.to_owned(),
            (amount * 100.0).round() as i64,
            captured,
        ));
        json!({
            "event_id": format!("00000000-0000-4000-8000-{i:012x}"),
            "occurred_at": format!("{day}T{:02}:{:02}:07Z", i % 24, i % 60),
            "payment_id": format!("00000000-0000-4000-9000-{i:012x}"),
            "order_id": order_id,
            "status": if captured { "captured" } else { "declined" },
            "amount": amount,
            "currency": currency,
            "method": "card"
        })
    }

    /// (day, country, currency) → (payments, cents): captured payments whose order was
    /// sent.
    fn expected(&self) -> BTreeMap<(String, String, String), (i64, i64)> {
        let mut out = BTreeMap::new();
        for (order, day, currency, cents, captured) in &self.payments {
            let Some(country) = self.orders.get(order) else {
                continue;
            };
            if !captured {
                continue;
            }
            let e = out
                .entry((day.clone(), country.clone(), currency.clone()))
                .or_insert((0, 0));
            e.0 += 1;
            e.1 += cents;
        }
        out
    }
}

/// What `daily_revenue` holds, in the form of [`Shop::expected`].
async fn daily_revenue(db: &TestDb) -> BTreeMap<(String, String, String), (i64, i64)> {
    let sql = format!(
        "SELECT {}, country, currency, {}, {} FROM daily_revenue",
        db.text("day"),
        db.text("payments"),
        db.text("revenue")
    );
    db.query(&sql)
        .await
        .into_iter()
        .map(|r| {
            let text = |i: usize| r[i].clone().unwrap();
            let revenue: f64 = text(4).parse().unwrap();
            (
                (text(0)[..10].to_owned(), text(1), text(2)),
                (text(3).parse().unwrap(), (revenue * 100.0).round() as i64),
            )
        })
        .collect()
}

/// Sends `events` to `stream` in bodies of 500, each answered once committed.
async fn send(app: &TestApp, stream: &str, events: &[Value]) {
    for chunk in events.chunks(500) {
        let body: String = chunk.iter().map(|e| format!("{e}\n")).collect();
        let r = app.post(stream, "", "application/x-ndjson", body).await;
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["dead_lettered"], 0, "{answer}");
    }
}

async fn max_load(db: &TestDb) -> i64 {
    let sql = format!("SELECT {} FROM sluice_loads", db.text("MAX(load_id)"));
    db.query(&sql).await[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
}

async fn daily_revenue_equals_the_aggregate_of_the_events_run_after_run(db: Db) {
    let sql = shipped("transforms/daily_revenue.sql");
    let Some(app) = spawn_app(db, shipped_schemas(), |c| {
        c.transforms.insert(
            "daily_revenue".into(),
            transform(&sql, &["order_placed", "payment_processed"]),
        );
    })
    .await
    else {
        return;
    };
    let mut shop = Shop::default();
    // 5,000 orders and 5,000 payments: 4,500 for those orders, 500 for orders that
    // arrive only later (their payment comes first).
    let orders = shop.orders(5000, 7, "BK-");
    let mut payments = Vec::new();
    for (i, o) in orders.iter().take(4500).enumerate() {
        let p = shop.payment(
            i,
            o["order_id"].as_str().unwrap(),
            o["currency"].as_str().unwrap(),
            o["total_amount"].as_f64().unwrap(),
        );
        payments.push(p);
    }
    let later = Shop::default().orders(500, 8, "BK2-");
    for (i, o) in later.iter().enumerate() {
        let p = shop.payment(
            4500 + i,
            o["order_id"].as_str().unwrap(),
            o["currency"].as_str().unwrap(),
            o["total_amount"].as_f64().unwrap(),
        );
        payments.push(p);
    }
    send(&app, "order_placed", &orders).await;
    send(&app, "payment_processed", &payments).await;
    let loaded = max_load(&app.db).await;

    let job = run_flow(&app, &["daily_revenue"]).await;
    assert_eq!(job["state"], "completed", "{job}");
    let first = task(&job, "daily_revenue");
    assert_eq!(first["state"], "completed", "{job}");
    assert_eq!(first["range"][0], 1, "{job}");
    let to = first["range"][1].as_i64().unwrap();
    assert!(
        to >= loaded,
        "processed up to load {to}, {loaded} were committed: {job}"
    );
    let expected = shop.expected();
    assert!(expected.len() > 20, "{} groups", expected.len());
    assert_eq!(daily_revenue(&app.db).await, expected);

    // 1,000 more: the 500 orders whose payments came first, and the last 500 orders'
    // payments (on days already computed).
    let later = shop.orders(500, 8, "BK2-");
    let mut payments = Vec::new();
    for (i, o) in orders.iter().enumerate().skip(4500) {
        let p = shop.payment(
            5000 + i,
            o["order_id"].as_str().unwrap(),
            o["currency"].as_str().unwrap(),
            o["total_amount"].as_f64().unwrap(),
        );
        payments.push(p);
    }
    send(&app, "order_placed", &later).await;
    send(&app, "payment_processed", &payments).await;
    let job = run_flow(&app, &["daily_revenue"]).await;
    assert_eq!(job["state"], "completed", "{job}");
    let second = task(&job, "daily_revenue");
    assert_eq!(second["range"][0], to + 1, "only the new loads: {job}");
    let to2 = second["range"][1].as_i64().unwrap();
    assert_eq!(daily_revenue(&app.db).await, shop.expected());
    // The ledger: the new rows' loads are exactly the ones after the first run's.
    for table in ["order_placed", "payment_processed"] {
        let sql = format!(
            "SELECT {}, {} FROM {table} WHERE _load_id > {to}",
            app.db.text("MIN(_load_id)"),
            app.db.text("COUNT(*)")
        );
        let r = &app.db.query(&sql).await[0];
        assert_eq!(r[1].as_deref(), Some("500"), "{table}");
        let min: i64 = r[0].as_deref().unwrap().parse().unwrap();
        assert!(
            min > to && min <= to2,
            "{table}: load {min} outside {to}..={to2}"
        );
    }
    let pointer = app
        .db
        .query("SELECT pointer FROM sluice_pointers WHERE source = 'daily_revenue'")
        .await;
    assert_eq!(
        pointer[0][0].as_deref(),
        Some(&*json!({"load_id": to2}).to_string())
    );

    // Nothing new: nothing run, nothing changed.
    let job = run_flow(&app, &["daily_revenue"]).await;
    assert_eq!(job["state"], "completed", "{job}");
    let third = task(&job, "daily_revenue");
    assert_eq!(third["range"], Value::Null, "{job}");
    assert!(third["logs"].to_string().contains("nothing to do"), "{job}");
    assert_eq!(daily_revenue(&app.db).await, shop.expected());
}

db_tests!(daily_revenue_equals_the_aggregate_of_the_events_run_after_run);

async fn a_failing_task_stops_its_dependents_and_once_fixed_processes_its_range_once(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.sql");
    let good = "CREATE TABLE IF NOT EXISTS order_copy (order_id varchar(64) NOT NULL);\n\
                INSERT INTO order_copy SELECT order_id FROM order_placed WHERE _load_id BETWEEN :from_load AND :to_load;\n";
    // The copy is made, then a statement fails: nothing of the run may stay.
    std::fs::write(&copy, format!("{good}SELEC broken;\n")).unwrap();
    let count = dir.path().join("count.sql");
    std::fs::write(
        &count,
        "CREATE TABLE IF NOT EXISTS copy_count (n bigint NOT NULL);\nDELETE FROM copy_count;\nINSERT INTO copy_count SELECT COUNT(*) FROM order_copy;\n",
    )
    .unwrap();
    let customers = shipped("transforms/customer_latest.sql");
    let Some(app) = spawn_app(db, shipped_schemas(), |c| {
        c.transforms
            .insert("order_copy".into(), transform(&copy, &["order_placed"]));
        c.transforms
            .insert("copy_count".into(), transform(&count, &["order_copy"]));
        c.transforms.insert(
            "customer_latest".into(),
            transform(&customers, &["order_placed"]),
        );
    })
    .await
    else {
        return;
    };
    let mut shop = Shop::default();
    let orders = shop.orders(300, 3, "BK-");
    send(&app, "order_placed", &orders).await;

    let job = run_flow(&app, &["copy_count", "customer_latest"]).await;
    assert_eq!(job["state"], "failed", "{job}");
    let errors = job["errors"].to_string();
    assert!(
        errors.contains("task order_copy failed: statement 3 of 3 (`SELEC broken`)"),
        "{errors}"
    );
    assert_eq!(task(&job, "order_copy")["state"], "failed");
    let dependent = task(&job, "copy_count");
    assert_eq!(dependent["state"], "cancelled", "{job}");
    assert!(
        dependent["logs"]
            .to_string()
            .contains("it depends on order_copy"),
        "{job}"
    );
    // The independent branch ran.
    assert_eq!(task(&job, "customer_latest")["state"], "completed", "{job}");
    let customers = app.db.distinct("order_placed", "customer_id").await;
    assert_eq!(app.db.count("customer_latest").await, customers);
    // Nothing of the failed run was committed: not even its table, but on MariaDB,
    // which commits a CREATE TABLE by itself (empty).
    if db == Db::Mysql {
        assert_eq!(app.db.count("order_copy").await, 0);
    } else {
        let tables = match db {
            Db::Sqlite => "SELECT 1 FROM sqlite_master WHERE name = 'order_copy'",
            _ => "SELECT 1 FROM information_schema.tables WHERE table_name = 'order_copy'",
        };
        let tables = app.db.query(tables).await;
        assert!(tables.is_empty(), "the failed run left its table");
    }
    assert!(app
        .db
        .query("SELECT pointer FROM sluice_pointers WHERE source = 'order_copy'")
        .await
        .is_empty());

    std::fs::write(&copy, good).unwrap();
    let job = run_flow(&app, &["copy_count"]).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(app.db.count("order_copy").await, 300);
    send(&app, "order_placed", &shop.orders(50, 4, "BK2-")).await;
    let job = run_flow(&app, &["copy_count"]).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        app.db.count("order_copy").await,
        350,
        "each load copied once"
    );
    assert_eq!(app.db.distinct("order_copy", "order_id").await, 350);
    let n = app.db.values("copy_count", "n").await;
    assert_eq!(n, vec![Some("350".to_owned())]);
}

db_tests!(a_failing_task_stops_its_dependents_and_once_fixed_processes_its_range_once);

/// `sluice check` refuses a cycle and names it; an unknown target of a flow is a 400.
#[test]
fn check_names_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("t.sql");
    std::fs::write(&sql, "SELECT 1").unwrap();
    let out = check(
        dir.path(),
        &format!(
            "[transforms.a]\nsql_file = {sql:?}\nafter = [\"c\"]\n\
             [transforms.b]\nsql_file = {sql:?}\nafter = [\"a\"]\n\
             [transforms.c]\nsql_file = {sql:?}\nafter = [\"b\", \"order_placed\"]\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("[transforms] form a cycle: a → c → b → a"),
        "{stderr}"
    );

    // Without the cycle, check prints the transforms in the order they run.
    let out = check(
        dir.path(),
        &format!(
            "[transforms.a]\nsql_file = {sql:?}\nafter = [\"b\"]\n\
             [transforms.b]\nsql_file = {sql:?}\nafter = [\"order_placed\"]\n"
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = stdout.find("-- transform `b`").expect("b is printed");
    let a = stdout.find("-- transform `a`").expect("a is printed");
    assert!(b < a, "{stdout}");
}

/// The README's flow example, run as written on SQLite with `examples/flows.toml`: the
/// events in, the flow started and followed, the clean table as the README shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_flow_example_works_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .map(|b| b.split("```").next().unwrap_or_default())
        .find(|b| b.contains("examples/flows.toml"))
        .expect("the README's flow example");
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[
            (
                "SLUICE_CONFIG",
                root.join("examples/flows.toml").display().to_string(),
            ),
            (
                "SLUICE_SCHEMAS_DIR",
                shipped_schemas().display().to_string(),
            ),
        ],
    );
    let mut job = String::new();
    let mut expected = None;
    for line in block.lines() {
        let line = line.split("  #").next().unwrap_or_default().trim();
        if let Some(rows) = line.strip_prefix("# ").filter(|_| line.contains('|')) {
            expected = Some(rows.to_owned());
        }
        if !line.starts_with("curl ") {
            continue;
        }
        let command = line
            .replace("127.0.0.1:8080", &sluice.http)
            .replace("job-20261206093000-5e6f7a8b", &job);
        let run = |command: String| {
            std::process::Command::new("bash")
                .args(["-c", &format!("{command} -s -w '\\n%{{http_code}}'")])
                .current_dir(&root)
                .output()
                .unwrap()
        };
        let mut answer;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = run(command.clone());
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
            assert!(
                (200..300).contains(&code.trim().parse::<u16>().unwrap_or(0)),
                "{command} => {code} {body}"
            );
            answer = serde_json::from_str::<Value>(body).unwrap();
            // The job is followed until it ends.
            let running = matches!(answer["state"].as_str(), Some("ready" | "running"));
            if !running || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if command.contains("/v1/jobs/flow") {
            job = answer["id"].as_str().unwrap().to_owned();
        }
        if command.contains(&format!("/v1/jobs/{job}")) && !job.is_empty() {
            assert_eq!(answer["state"], "completed", "{answer}");
        }
    }
    assert!(!job.is_empty(), "the example starts a flow");
    let rows = db
        .query("SELECT day, country, currency, CAST(payments AS TEXT), CAST(revenue AS TEXT) FROM daily_revenue")
        .await;
    let rows: Vec<String> = rows
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(Option::unwrap_or_default)
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    assert_eq!(rows, vec![expected.expect("the README shows the rows")]);
    assert_eq!(db.count("customer_latest").await, 1);
    let _ = sluice.terminate().await;
}

/// A transform with `every` runs as a flow of its own on its schedule; the graph shows
/// its inputs, pointer and last task; a pause stops the scheduled runs (a run asked for
/// by hand still runs), a resume starts them again.
async fn a_scheduled_transform_runs_pauses_and_resumes(db: Db) {
    let customers = shipped("transforms/customer_latest.sql");
    let revenue = shipped("transforms/daily_revenue.sql");
    let Some(app) = spawn_app(db, shipped_schemas(), |c| {
        let mut scheduled = transform(&customers, &["order_placed"]);
        scheduled.every = Some(Duration::from_secs(1));
        c.transforms.insert("customer_latest".into(), scheduled);
        c.transforms.insert(
            "daily_revenue".into(),
            transform(&revenue, &["order_placed", "payment_processed"]),
        );
    })
    .await
    else {
        return;
    };
    let mut shop = Shop::default();
    send(&app, "order_placed", &shop.orders(40, 5, "BK-")).await;
    let customers = app.db.distinct("order_placed", "customer_id").await;
    let flows = |jobs: &Value| {
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["kind"] == "flow")
            .count()
    };
    // Scheduled: it runs without being asked, and again a second later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, jobs) = app.get_json("/v1/jobs").await;
        if flows(&jobs) >= 2 && app.db.count("customer_latest").await == customers {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduled runs: {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, graph) = app.get_json("/v1/transforms").await;
    assert_eq!(status, 200, "{graph}");
    let listed = graph["transforms"].as_array().unwrap();
    let names: Vec<_> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["customer_latest", "daily_revenue"]);
    let scheduled = &listed[0];
    assert_eq!(scheduled["every_seconds"], 1);
    assert_eq!(scheduled["incremental"], false);
    assert_eq!(
        scheduled["after"],
        json!([{"name": "order_placed", "kind": "stream"}])
    );
    assert!(scheduled["pointer"].as_i64().unwrap() >= 1, "{scheduled}");
    assert!(scheduled["next_run"].is_string(), "{scheduled}");
    let on_demand = &listed[1];
    assert_eq!(on_demand["incremental"], true);
    assert_eq!(on_demand["last_task"], Value::Null);
    assert_eq!(on_demand["next_run"], Value::Null);

    let pause = app
        .client
        .post(app.url("/v1/transforms/customer_latest/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);
    let paused: Value = pause.json().await.unwrap();
    assert_eq!(paused["state"], "paused", "{paused}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, jobs) = app.get_json("/v1/jobs").await;
    let before = flows(&jobs);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, jobs) = app.get_json("/v1/jobs").await;
    assert_eq!(flows(&jobs), before, "paused, yet it ran: {jobs}");

    // By hand, a paused transform still runs; the answer is a job to follow.
    let r = app
        .client
        .post(app.url("/v1/transforms/daily_revenue/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let unknown = app
        .client
        .post(app.url("/v1/transforms/nope/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    let resume = app
        .client
        .post(app.url("/v1/transforms/customer_latest/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, jobs) = app.get_json("/v1/jobs").await;
        if flows(&jobs) >= before + 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not resumed: {jobs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, graph) = app.get_json("/v1/transforms").await;
    let last = &graph["transforms"][1]["last_task"];
    assert_eq!(last["state"], "completed", "{graph}");
}

db_tests!(a_scheduled_transform_runs_pauses_and_resumes);

/// A Redis server of the test's own on a free port, without persistence (so that it
/// can be stopped and started again).
struct OwnRedis {
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (bash .ci/run installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every key under `prefix` in the Redis at `url`, with its value parsed as JSON.
async fn redis_keys(url: &str, prefix: &str) -> BTreeMap<String, Value> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let value: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.insert(key, serde_json::from_str(&value).unwrap());
    }
    out
}

/// A transform whose last statement is a query publishes its rows to Redis, one key per
/// row (read back here with a Redis client): exactly the query's rows after each run,
/// a row that leaves the result leaves Redis (`full = true`); with Redis stopped the
/// task fails and commits nothing, and the next run publishes what it missed.
async fn a_published_transform_mirrors_its_rows_in_redis(kind: Db) {
    let Ok(redis_url) = std::env::var("SLUICE_TEST_REDIS_URL") else {
        crate::helpers::skip("the Redis publish test: SLUICE_TEST_REDIS_URL is not set");
        return;
    };
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("sluicet{:08x}", fastrand::u32(..));
    let customers = dir.path().join("customer_cache.sql");
    std::fs::write(
        &customers,
        "CREATE TABLE IF NOT EXISTS customer_cache (customer_id bigint NOT NULL PRIMARY KEY, orders bigint NOT NULL, last_order varchar(64) NOT NULL);\n\
         DELETE FROM customer_cache;\n\
         INSERT INTO customer_cache (customer_id, orders, last_order) SELECT customer_id, COUNT(*), MAX(order_id) FROM order_placed GROUP BY customer_id;\n\
         SELECT customer_id, orders, last_order FROM customer_cache;\n",
    )
    .unwrap();
    let orders_sql = dir.path().join("order_cache.sql");
    std::fs::write(
        &orders_sql,
        "SELECT order_id, customer_id, country FROM order_placed WHERE _load_id BETWEEN :from_load AND :to_load",
    )
    .unwrap();
    let own_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut own = OwnRedis::start(own_port);
    let own_url = format!("redis://127.0.0.1:{own_port}/0");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[transforms.customer_cache]\nsql_file = {customers:?}\nafter = [\"order_placed\"]\n\
             [transforms.customer_cache.publish]\nredis_url_env = \"TEST_STOREFRONT_REDIS\"\nkey = \"{tag}:customer:{{customer_id}}\"\nfull = true\n\
             [transforms.order_cache]\nsql_file = {orders_sql:?}\nafter = [\"order_placed\"]\n\
             [transforms.order_cache.publish]\nredis_url_env = \"TEST_OWN_REDIS\"\nkey = \"{tag}:order:{{order_id}}\"\n"
        ),
    )
    .unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[
            ("SLUICE_CONFIG", config.display().to_string()),
            (
                "SLUICE_SCHEMAS_DIR",
                shipped_schemas().display().to_string(),
            ),
            ("TEST_STOREFRONT_REDIS", redis_url.clone()),
            ("TEST_OWN_REDIS", own_url.clone()),
        ],
    );
    let base = format!("http://{}", sluice.http);
    let client = reqwest::Client::new();
    let send = |orders: Vec<Value>| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let body: String = orders.iter().map(|e| format!("{e}\n")).collect();
            let r = client
                .post(format!("{base}/v1/streams/order_placed/events"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
        }
    };
    let flow = |target: &'static str| {
        let base = base.clone();
        async move {
            let id = start_flow(&base, &[target]).await;
            job_until(&base, &id, ended).await
        }
    };
    // 30 orders of 10 customers.
    let mut shop = Shop::default();
    let orders: Vec<Value> = shop
        .orders(30, 11, "BK-")
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            o["customer_id"] = json!(i % 10 + 1);
            o
        })
        .collect();
    send(orders.clone()).await;
    let expected = |db_rows: Vec<Vec<Option<String>>>| -> BTreeMap<String, Value> {
        db_rows
            .into_iter()
            .map(|r| {
                let id: i64 = r[0].as_deref().unwrap().parse().unwrap();
                let orders: i64 = r[1].as_deref().unwrap().parse().unwrap();
                (
                    format!("{tag}:customer:{id}"),
                    json!({"customer_id": id, "orders": orders, "last_order": r[2].as_deref().unwrap()}),
                )
            })
            .collect()
    };
    let cached = format!(
        "SELECT {}, {}, last_order FROM customer_cache",
        db.text("customer_id"),
        db.text("orders")
    );

    let job = flow("customer_cache").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert!(
        task(&job, "customer_cache")["logs"]
            .to_string()
            .contains("published 10 keys"),
        "{job}"
    );
    let published = redis_keys(&redis_url, &format!("{tag}:customer:")).await;
    assert_eq!(published.len(), 10);
    assert_eq!(published, expected(db.query(&cached).await));

    // Customer 3's orders are gone from the table: its key leaves Redis.
    db.execute("DELETE FROM order_placed WHERE customer_id = 3")
        .await;
    send(
        shop.orders(5, 12, "BK2-")
            .into_iter()
            .map(|mut o| {
                o["customer_id"] = json!(1);
                o
            })
            .collect(),
    )
    .await;
    let job = flow("customer_cache").await;
    assert_eq!(job["state"], "completed", "{job}");
    let published = redis_keys(&redis_url, &format!("{tag}:customer:")).await;
    assert_eq!(published.len(), 9);
    assert!(!published.contains_key(&format!("{tag}:customer:3")));
    assert_eq!(published[&format!("{tag}:customer:1")]["orders"], 8);
    assert_eq!(published, expected(db.query(&cached).await));

    // The incremental order cache: published, then Redis stops.
    let job = flow("order_cache").await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        redis_keys(&own_url, &format!("{tag}:order:")).await.len(),
        32
    );
    own.stop();
    let later: Vec<Value> = shop.orders(7, 13, "BK3-");
    send(later.clone()).await;
    let job = flow("order_cache").await;
    assert_eq!(job["state"], "failed", "{job}");
    let errors = job["errors"].to_string();
    assert!(
        errors.contains("publishing to Redis at redis://127.0.0.1"),
        "{errors}"
    );
    assert!(
        errors.contains("nothing of this run was committed"),
        "{errors}"
    );
    // Back (empty: it keeps nothing on disk): the next run publishes what it missed.
    own = OwnRedis::start(own_port);
    let job = flow("order_cache").await;
    assert_eq!(job["state"], "completed", "{job}");
    let published = redis_keys(&own_url, &format!("{tag}:order:")).await;
    let ids: Vec<&str> = later
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(published.len(), 7, "{published:?}");
    for id in ids {
        let value = &published[&format!("{tag}:order:{id}")];
        assert_eq!(value["order_id"], id);
    }
    own.stop();
    // The shared Redis is left as found.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in redis_keys(&redis_url, &format!("{tag}:")).await.keys() {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _ = sluice.terminate().await;
}

db_tests!(a_published_transform_mirrors_its_rows_in_redis);

/// `kill -9` in the middle of a transform's transaction (its rows inserted, not
/// committed; a second flow of it waiting for the first), then a restart: the
/// interrupted flow is marked failed, and the next run leaves the output as if the
/// transform had run once.
async fn a_flow_killed_mid_transaction_leaves_its_output_as_if_run_once(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("slow_copy.sql");
    let copy = "CREATE TABLE IF NOT EXISTS slow_copy (order_id varchar(64) NOT NULL);\n\
                INSERT INTO slow_copy SELECT order_id FROM order_placed WHERE _load_id BETWEEN :from_load AND :to_load;\n";
    // After the copy, a statement that takes long: the kill lands inside the transaction.
    let slow = match kind {
        Db::Postgres => "SELECT pg_sleep(60)",
        Db::Mysql => "SELECT SLEEP(60)",
        Db::Sqlite => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000000) SELECT COUNT(*) FROM c",
    };
    std::fs::write(&sql, format!("{copy}{slow};\n")).unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!("[transforms.slow_copy]\nsql_file = {sql:?}\nafter = [\"order_placed\"]\n"),
    )
    .unwrap();
    let env = [
        ("SLUICE_CONFIG", config.display().to_string()),
        (
            "SLUICE_SCHEMAS_DIR",
            shipped_schemas().display().to_string(),
        ),
        ("SLUICE_JOBS_STALE_AFTER", "2s".to_owned()),
        ("SLUICE_JOBS_SWEEP_EVERY", "200ms".to_owned()),
    ];
    let client = reqwest::Client::new();
    let mut sluice = spawn_binary(None, &db, &env);
    let send = |base: String, prefix: &'static str, n: usize, seed: u64| {
        let client = client.clone();
        async move {
            let body: String = Shop::default()
                .orders(n, seed, prefix)
                .iter()
                .map(|e| format!("{e}\n"))
                .collect();
            let r = client
                .post(format!("{base}/v1/streams/order_placed/events"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let base = format!("http://{}", sluice.http);
    send(base.clone(), "BK-", 50, 21).await;
    let first = start_flow(&base, &["slow_copy"]).await;
    // The copy is inserted once the task runs its slow statement; then the kill.
    job_until(&base, &first, running).await;
    // A second flow of the same transform waits for the first, and says so. (Not on
    // SQLite: the running transform holds its one write lock, so even the new job's
    // record waits for it.)
    let waiting = match kind {
        Db::Sqlite => None,
        _ => Some(start_flow(&base, &["slow_copy"]).await),
    };
    if let Some(waiting) = &waiting {
        job_until(&base, waiting, |job| {
            let logs = job["result"]["tasks"][0]["logs"].to_string();
            logs.contains("waiting: another run of slow_copy is under way")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();

    // Fixed (no slow statement), restarted: the interrupted flow is failed, the next
    // run copies every order once.
    std::fs::write(&sql, copy).unwrap();
    sluice = spawn_binary(None, &db, &env);
    let base = format!("http://{}", sluice.http);
    let job = job_until(&base, &first, |job| job["state"] != "running").await;
    assert_eq!(job["state"], "failed", "{job}");
    let copied = db
        .query("SELECT 1 FROM sluice_pointers WHERE source = 'slow_copy'")
        .await;
    assert!(copied.is_empty(), "the killed run moved its pointer");
    let second = start_flow(&base, &["slow_copy"]).await;
    let job = job_until(&base, &second, ended).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(db.count("slow_copy").await, 50);
    send(base.clone(), "BK2-", 10, 22).await;
    let third = start_flow(&base, &["slow_copy"]).await;
    let job = job_until(&base, &third, ended).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(db.count("slow_copy").await, 60);
    assert_eq!(db.distinct("slow_copy", "order_id").await, 60);
    let _ = sluice.terminate().await;
}

db_tests!(a_flow_killed_mid_transaction_leaves_its_output_as_if_run_once);

/// Cancelling a flow stops it between tasks: the running transform finishes and stays
/// committed, the task after it never runs, and the job ends `cancelled`.
async fn a_cancelled_flow_stops_between_tasks(kind: Db) {
    let dir = tempfile::tempdir().unwrap();
    let slow = match kind {
        Db::Postgres => "SELECT pg_sleep(2)",
        Db::Mysql => "SELECT SLEEP(2)",
        Db::Sqlite => "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT COUNT(*) FROM c",
    };
    let first = dir.path().join("first.sql");
    std::fs::write(
        &first,
        format!("CREATE TABLE IF NOT EXISTS first_out (n bigint NOT NULL);\nINSERT INTO first_out SELECT COUNT(*) FROM order_placed;\n{slow};\n"),
    )
    .unwrap();
    let second = dir.path().join("second.sql");
    std::fs::write(
        &second,
        "CREATE TABLE IF NOT EXISTS second_out (n bigint NOT NULL);\nINSERT INTO second_out SELECT n FROM first_out;\n",
    )
    .unwrap();
    let Some(app) = spawn_app(kind, shipped_schemas(), |c| {
        c.transforms
            .insert("first".into(), transform(&first, &["order_placed"]));
        c.transforms
            .insert("second".into(), transform(&second, &["first"]));
    })
    .await
    else {
        return;
    };
    send(&app, "order_placed", &Shop::default().orders(20, 31, "BK-")).await;
    let base = format!("http://{}", app.addr);
    let id = start_flow(&base, &["second"]).await;
    job_until(&base, &id, running).await;
    let r = app
        .client
        .post(app.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job = job_until(&base, &id, ended).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(task(&job, "first")["state"], "completed", "{job}");
    let second = task(&job, "second");
    assert_eq!(second["state"], "cancelled", "{job}");
    assert!(
        second["logs"]
            .to_string()
            .contains("not run: the flow was cancelled"),
        "{job}"
    );
    assert_eq!(
        app.db.values("first_out", "n").await,
        vec![Some("20".to_owned())]
    );
    let tables = match kind {
        Db::Sqlite => "SELECT 1 FROM sqlite_master WHERE name = 'second_out'",
        _ => "SELECT 1 FROM information_schema.tables WHERE table_name = 'second_out'",
    };
    assert!(
        app.db.query(tables).await.is_empty(),
        "the cancelled task ran"
    );
}

db_tests!(a_cancelled_flow_stops_between_tasks);
