//! Pulled sources (`[sources.NAME]`): a real source database's table, read
//! incrementally a load at a time into an upserting stream, with the pointer committed
//! with each load; the next run takes the updated and new rows, and the target equals
//! the source row for row.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Db, TestApp, TestDb};

/// The CRM's deals as the target stream sees them.
fn write_schema(dir: &std::path::Path) {
    let deal = json!({
        "type": "object",
        "required": ["id", "name", "amount", "stage", "updated_at"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string", "maxLength": 64},
            "amount": {"type": "number", "x-sluice-decimal": [12, 2]},
            "stage": {"type": "string", "maxLength": 16},
            "updated_at": {"type": "string", "format": "date-time"},
            "won": {"type": ["boolean", "null"]}
        }
    });
    std::fs::write(dir.join("crm_deal.json"), deal.to_string()).unwrap();
}

/// MariaDB: the integers `from..=to` as a derived table `seq(n)` (its recursive CTEs
/// stop at 1,000 rows by default).
fn mysql_numbers(from: i64, to: i64) -> String {
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    format!(
        "(SELECT {from} + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) AS seq WHERE n <= {to}"
    )
}

/// A `deals` table in the source database with `n` rows.
async fn create_source(source: &TestDb, n: i64) {
    match source.kind {
        Db::Postgres => {
            source
                .execute("CREATE TABLE deals (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(12,2) NOT NULL, stage varchar(16) NOT NULL, updated_at timestamptz NOT NULL, won boolean)")
                .await;
            source
                .execute(&format!("INSERT INTO deals SELECT n, 'deal ' || n, (n % 1000) * 1.25 + 0.01, CASE WHEN n % 3 = 0 THEN 'won' ELSE 'open' END, TIMESTAMPTZ '2026-11-01 00:00:00+00' + n * interval '1 second', CASE WHEN n % 5 = 0 THEN NULL ELSE n % 2 = 0 END FROM generate_series(1, {n}) AS n"))
                .await;
        }
        Db::Mysql => {
            source
                .execute("CREATE TABLE deals (id bigint PRIMARY KEY, name varchar(64) NOT NULL, amount decimal(12,2) NOT NULL, stage varchar(16) NOT NULL, updated_at datetime(6) NOT NULL, won boolean)")
                .await;
            source
                .execute(&format!("INSERT INTO deals (id, name, amount, stage, updated_at, won) SELECT n, CONCAT('deal ', n), (n % 1000) * 1.25 + 0.01, IF(n % 3 = 0, 'won', 'open'), TIMESTAMP('2026-11-01 00:00:00') + INTERVAL n SECOND, IF(n % 5 = 0, NULL, n % 2 = 0) FROM {}", mysql_numbers(1, n)))
                .await;
        }
        Db::Sqlite => unreachable!("the tests pull from PostgreSQL and MariaDB"),
    }
}

/// 500 deals updated (a later version) and 500 added at the source.
async fn change_source(source: &TestDb, n: i64) {
    let (later, add) = match source.kind {
        Db::Postgres => (
            "UPDATE deals SET stage = 'won', amount = amount + 100.10, updated_at = updated_at + interval '40 days' WHERE id % 100 = 7".to_owned(),
            format!("INSERT INTO deals SELECT n, 'deal ' || n, 99.99, 'new', TIMESTAMPTZ '2026-12-15 00:00:00+00' + n * interval '1 second', true FROM generate_series({}, {}) AS n", n + 1, n + 500),
        ),
        _ => (
            "UPDATE deals SET stage = 'won', amount = amount + 100.10, updated_at = updated_at + INTERVAL 40 DAY WHERE id % 100 = 7".to_owned(),
            format!("INSERT INTO deals (id, name, amount, stage, updated_at, won) SELECT n, CONCAT('deal ', n), 99.99, 'new', TIMESTAMP('2026-12-15 00:00:00') + INTERVAL n SECOND, true FROM {}", mysql_numbers(n + 1, n + 500)),
        ),
    };
    source.execute(&later).await;
    source.execute(&add).await;
}

/// Every deal as comparable text: id, name, amount (no trailing zeros), stage,
/// updated_at to the microsecond in UTC, won (`1`/`0`/NULL).
async fn deals(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let sql = match db.kind {
        Db::Postgres => "SELECT CAST(id AS TEXT), name, CAST(amount AS TEXT), stage, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), CASE WHEN won THEN '1' WHEN NOT won THEN '0' END FROM deals ORDER BY deals.id".to_owned(),
        Db::Mysql => "SELECT CAST(id AS CHAR), name, CAST(amount AS CHAR), stage, DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%f'), CAST(won AS CHAR) FROM deals ORDER BY deals.id".to_owned(),
        Db::Sqlite => "SELECT CAST(id AS TEXT), name, amount, stage, substr(updated_at, 1, 26), CAST(won AS TEXT) FROM crm_deal ORDER BY crm_deal.id".to_owned(),
    };
    trim_amounts(db.query(&sql).await)
}

/// The target's deals (table `crm_deal`), by the same query as the source's.
async fn target_deals(app: &TestApp) -> Vec<Vec<Option<String>>> {
    match app.db.kind {
        Db::Postgres => {
            let sql = "SELECT CAST(id AS TEXT), name, CAST(amount AS TEXT), stage, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), CASE WHEN won THEN '1' WHEN NOT won THEN '0' END FROM crm_deal ORDER BY crm_deal.id";
            trim_amounts(app.db.query(sql).await)
        }
        _ => deals(&app.db).await,
    }
}

fn trim_amounts(rows: Vec<Vec<Option<String>>>) -> Vec<Vec<Option<String>>> {
    rows.into_iter()
        .map(|mut row| {
            if let Some(Some(amount)) = row.get_mut(2) {
                if amount.contains('.') {
                    *amount = amount
                        .trim_end_matches('0')
                        .trim_end_matches('.')
                        .to_owned();
                }
            }
            row
        })
        .collect()
}

/// Starts a pull job of `source` and waits for it to end; returns the job.
async fn run_pull(app: &TestApp, source: &str) -> Value {
    let r = app
        .client
        .post(app.url("/v1/jobs/pull"))
        .json(&json!({"source": source}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let started: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = app.get_json(&format!("/v1/jobs/{id}")).await;
        if !matches!(job["state"].as_str(), Some("ready" | "running")) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The source's URL in a variable of this test's own (tests run at once).
fn source_env(source: &TestDb, tag: &str) -> String {
    let var = format!("SLUICE_TEST_SOURCE_{tag}_{}", std::process::id());
    std::env::set_var(&var, &source.url);
    var
}

/// A source reading `table` of the database at `$url_env` by `cursor` into `stream`.
fn table_source(
    url_env: String,
    table: &str,
    cursor: &[&str],
    stream: &str,
    load_size: usize,
) -> sluice::pull::SourceConfig {
    sluice::pull::SourceConfig {
        url_env,
        path: None,
        table: Some(table.into()),
        query: None,
        cursor: cursor.iter().map(|c| c.to_string()).collect(),
        stream: stream.into(),
        load_size,
        max_rows_per_second: 0,
        max_connections: None,
        every: None,
    }
}

fn pulling(var: String, load_size: usize) -> impl FnOnce(&mut sluice::Config) {
    pulling_on(var, load_size, None)
}

/// [`pulling`] with `max_connections`.
fn pulling_on(
    var: String,
    load_size: usize,
    max_connections: Option<usize>,
) -> impl FnOnce(&mut sluice::Config) {
    move |c: &mut sluice::Config| {
        c.streams.insert(
            "crm_deal".into(),
            sluice::config::StreamConfig {
                upsert_key: Some(vec!["id".into()]),
                version_field: Some("updated_at".into()),
                ..Default::default()
            },
        );
        let mut source = table_source(var, "deals", &["updated_at", "id"], "crm_deal", load_size);
        source.max_connections = max_connections;
        c.sources.insert("crm".into(), source);
    }
}

/// The most connections of source `crm` the PostgreSQL `source` showed at once while
/// `run` ran (sampled every 20 ms; by the `application_name` Sluice gives them).
async fn most_connections_during<T>(
    source: &TestDb,
    run: impl std::future::Future<Output = T>,
) -> (T, usize) {
    let sql = "SELECT COUNT(*)::text FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice pull crm'";
    let done = std::sync::atomic::AtomicBool::new(false);
    let sample = async {
        let mut most = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let n: usize = source.query(sql).await[0][0]
                .as_deref()
                .unwrap()
                .parse()
                .unwrap();
            most = most.max(n);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        most
    };
    let run = async {
        let out = run.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        out
    };
    tokio::join!(run, sample)
}

/// `max_connections`: how many connections the pull may read on at once (the ranges
/// between the ends of the next pages, each on its own).
async fn a_source_table_is_pulled_incrementally_and_the_target_equals_it(
    source_kind: Db,
    target_kind: Db,
    max_connections: usize,
) {
    let Some(source) = TestDb::create(source_kind).await else {
        return;
    };
    create_source(&source, 50_000).await;
    let schemas = tempfile::tempdir().unwrap();
    write_schema(schemas.path());
    let var = source_env(&source, &format!("{source_kind:?}{target_kind:?}"));
    let Some(app) = spawn_app(
        target_kind,
        schemas.path().to_path_buf(),
        pulling_on(var, 5000, Some(max_connections)),
    )
    .await
    else {
        return;
    };
    let first = if source_kind == Db::Postgres {
        // The run holds every connection it may open, and no more.
        let (first, most) = most_connections_during(&source, run_pull(&app, "crm")).await;
        assert_eq!(
            most, max_connections,
            "connections of the pull at once: {first}"
        );
        let (_, after) = most_connections_during(&source, async {}).await;
        assert_eq!(
            after, 0,
            "the pull's connections are closed when its job ends"
        );
        first
    } else {
        run_pull(&app, "crm").await
    };
    assert_eq!(first["state"], "completed", "{first}");
    assert_eq!(first["result"]["read"], 50_000, "{first}");
    assert_eq!(first["result"]["loads"], 10, "{first}");
    assert_eq!(first["progress"]["total"], 50_000, "{first}");
    let expected = deals(&source).await;
    assert_eq!(expected.len(), 50_000);
    assert!(
        target_deals(&app).await == expected,
        "{source_kind:?} → {target_kind:?}: the first pull differs"
    );

    change_source(&source, 50_000).await;
    let second = run_pull(&app, "crm").await;
    assert_eq!(second["state"], "completed", "{second}");
    assert_eq!(
        second["result"]["read"], 1000,
        "{second}: only the changed rows"
    );
    let expected = deals(&source).await;
    assert_eq!(expected.len(), 50_500);
    let got = target_deals(&app).await;
    if got != expected {
        let first_difference = got.iter().zip(&expected).find(|(a, b)| a != b);
        panic!("{source_kind:?} → {target_kind:?}: the target differs from the source after the second pull: {first_difference:?} (rows {} vs {})", got.len(), expected.len());
    }
    // The pointer was saved with the last load, and the loads are the pull's.
    let pointer = app
        .db
        .query(&format!(
            "SELECT pointer, {} FROM sluice_pointers WHERE source = 'crm'",
            app.db.text("load_id")
        ))
        .await;
    let last_load = app
        .db
        .query(&format!(
            "SELECT {} FROM sluice_loads WHERE source = 'pull:crm'",
            app.db.text("MAX(load_id)")
        ))
        .await;
    assert_eq!(pointer[0][1], last_load[0][0], "{pointer:?}");
    let pointer: Value = serde_json::from_str(pointer[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(pointer["id"], "50500", "{pointer}");
    // Nothing new: a run reads nothing.
    let third = run_pull(&app, "crm").await;
    assert_eq!(third["result"]["read"], 0, "{third}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_into_postgres() {
    a_source_table_is_pulled_incrementally_and_the_target_equals_it(Db::Postgres, Db::Postgres, 3)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_into_sqlite() {
    a_source_table_is_pulled_incrementally_and_the_target_equals_it(Db::Mysql, Db::Sqlite, 2).await
}

/// Values of every kind arrive as the source holds them: JSON documents of a `jsonb` /
/// `json` column (taken as they are) and of a text column (checked: one that is not
/// JSON is a dead letter naming the property), strings with quotes, backslashes,
/// control characters and non-ASCII text, numbers, booleans and timestamps.
async fn source_values_of_every_kind_arrive_as_the_source_holds_them(
    source_kind: Db,
    target_kind: Db,
) {
    let Some(source) = TestDb::create(source_kind).await else {
        return;
    };
    let (json, now) = match source_kind {
        Db::Postgres => ("jsonb", "TIMESTAMPTZ '2026-12-01 10:00:00.25+00'"),
        _ => ("json", "TIMESTAMP('2026-12-01 10:00:00.250000')"),
    };
    source
        .execute(&format!("CREATE TABLE docs (id bigint PRIMARY KEY, doc {json} NOT NULL, note text NOT NULL, label text NOT NULL, ratio decimal(8,3) NOT NULL, flag boolean NOT NULL, created {} NOT NULL)", if source_kind == Db::Postgres { "timestamptz" } else { "datetime(6)" }))
        .await;
    let label = "quote \" back \\ tab\t line\n bell\u{7} é 😀";
    let rows = [
        (
            1,
            r#"{"a": [1, 2.5, "x\"y"], "b": {"c": null}}"#,
            r#"{"n": 1}"#,
        ),
        (2, r#"[true, false, "é"]"#, r#"{"n": 2}"#),
        (3, r#"{"deep": {"er": [{"k": "v"}]}}"#, "{not json"),
    ];
    for (id, doc, note) in rows {
        let quote = |t: &str| match source_kind {
            Db::Postgres => format!("'{}'", t.replace('\'', "''")),
            _ => format!("'{}'", t.replace('\\', "\\\\").replace('\'', "\\'")),
        };
        source
            .execute(&format!(
                "INSERT INTO docs VALUES ({id}, {}, {}, {}, {id}.125, {}, {now})",
                quote(doc),
                quote(note),
                quote(&label.replace('\u{7}', &format!("{id}\u{7}"))),
                if id % 2 == 0 { "true" } else { "false" }
            ))
            .await;
    }
    let schemas = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "required": ["id", "doc", "note", "label", "ratio", "flag", "created"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "integer"},
            "doc": {"type": ["object", "array"]},
            "note": {"type": "object"},
            "label": {"type": "string"},
            "ratio": {"type": "number"},
            "flag": {"type": "boolean"},
            "created": {"type": "string", "format": "date-time"}
        }
    });
    std::fs::write(schemas.path().join("doc.json"), schema.to_string()).unwrap();
    let var = source_env(&source, &format!("docs{source_kind:?}{target_kind:?}"));
    let Some(app) = spawn_app(target_kind, schemas.path().to_path_buf(), move |c| {
        c.sources
            .insert("docs".into(), table_source(var, "docs", &["id"], "doc", 2));
    })
    .await
    else {
        return;
    };
    let job = run_pull(&app, "docs").await;
    assert_eq!(job["state"], "completed", "{job}");
    let got = app
        .db
        .query(&format!(
            "SELECT {}, {}, {}, label, {}, {} FROM doc ORDER BY id",
            app.db.text("id"),
            app.db.text("doc"),
            app.db.text("note"),
            app.db.text("ratio"),
            app.db.text("flag")
        ))
        .await;
    assert_eq!(got.len(), 2, "{source_kind:?} → {target_kind:?}: {got:?}");
    for (row, (id, doc, note)) in got.iter().zip(rows) {
        assert_eq!(row[0].as_deref(), Some(id.to_string().as_str()));
        let as_json =
            |t: &Option<String>| serde_json::from_str::<Value>(t.as_deref().unwrap()).unwrap();
        assert_eq!(
            as_json(&row[1]),
            serde_json::from_str::<Value>(doc).unwrap(),
            "{row:?}"
        );
        assert_eq!(
            as_json(&row[2]),
            serde_json::from_str::<Value>(note).unwrap(),
            "{row:?}"
        );
        assert_eq!(
            row[3].as_deref(),
            Some(label.replace('\u{7}', &format!("{id}\u{7}")).as_str()),
            "{source_kind:?} → {target_kind:?}"
        );
        assert_eq!(
            row[4].as_deref().map(|r| r.parse::<f64>().unwrap()),
            Some(id as f64 + 0.125)
        );
        assert!(
            matches!(
                row[5].as_deref(),
                Some("1" | "0" | "true" | "false" | "t" | "f")
            ),
            "{row:?}"
        );
    }
    let letters = app
        .db
        .query("SELECT stage, error FROM sluice_dead_letters WHERE stream = 'doc'")
        .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0][0].as_deref(), Some("validate"), "{letters:?}");
    assert!(
        letters[0][1]
            .as_deref()
            .is_some_and(|e| e.contains("/note")),
        "{letters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_kind_postgres_into_postgres() {
    source_values_of_every_kind_arrive_as_the_source_holds_them(Db::Postgres, Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_kind_mariadb_into_sqlite() {
    source_values_of_every_kind_arrive_as_the_source_holds_them(Db::Mysql, Db::Sqlite).await
}

/// `max_rows_per_second` paces the reads: 10,000 rows at 2,000 a second take at least
/// 4.5 s; and an unknown source is refused with the names of the known ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rows_per_second_paces_a_pull() {
    let Some(source) = TestDb::create(Db::Postgres).await else {
        return;
    };
    create_source(&source, 10_000).await;
    let schemas = tempfile::tempdir().unwrap();
    write_schema(schemas.path());
    let var = source_env(&source, "paced");
    let Some(app) = spawn_app(Db::Sqlite, schemas.path().to_path_buf(), move |c| {
        pulling(var, 1000)(c);
        if let Some(s) = c.sources.get_mut("crm") {
            s.max_rows_per_second = 2000;
        }
    })
    .await
    else {
        return;
    };
    let started = std::time::Instant::now();
    let job = run_pull(&app, "crm").await;
    let took = started.elapsed();
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["result"]["read"], 10_000, "{job}");
    assert!(took >= Duration::from_millis(4500), "took {took:?}");
    let r = app
        .client
        .post(app.url("/v1/jobs/pull"))
        .json(&json!({"source": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("[\"crm\"]"),
        "{body}"
    );
}

/// The real binary killed with -9 in the middle of a pull (after a load committed),
/// then started again: the next run goes on from the pointer, the target equals the
/// source, and the ledger counts every row once (none loaded twice, none missed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_mid_run_resumes_from_its_pointer() {
    let Some(source) = TestDb::create(Db::Postgres).await else {
        return;
    };
    let Some(target) = TestDb::create(Db::Postgres).await else {
        return;
    };
    create_source(&source, 50_000).await;
    let schemas = tempfile::tempdir().unwrap();
    write_schema(schemas.path());
    let config = schemas.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[streams.crm_deal]\nupsert_key = [\"id\"]\nversion_field = \"updated_at\"\n\n[sources.crm]\nurl_env = \"CRM_TEST_URL\"\ntable = \"deals\"\ncursor = [\"updated_at\", \"id\"]\nstream = \"crm_deal\"\nload_size = 2000\nmax_rows_per_second = 10000\n",
    )
    .unwrap();
    let env = [
        ("SLUICE_CONFIG", config.display().to_string()),
        ("SLUICE_SCHEMAS_DIR", schemas.path().display().to_string()),
        ("CRM_TEST_URL", source.url.clone()),
    ];
    let start = |binary: &crate::helpers::Binary| {
        let url = format!("http://{}/v1/jobs/pull", binary.http);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({"source": "crm"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let pulled = |db: &TestDb| {
        let sql = "SELECT CAST(COALESCE(SUM(rows), 0) AS TEXT), CAST(COUNT(*) AS TEXT) FROM sluice_loads WHERE source = 'pull:crm'";
        let db = db.via(db.url.clone());
        async move {
            let r = db.query(sql).await;
            (
                r[0][0].as_deref().unwrap().parse::<i64>().unwrap(),
                r[0][1].as_deref().unwrap().parse::<i64>().unwrap(),
            )
        }
    };
    let mut first = crate::helpers::spawn_binary(None, &target, &env);
    start(&first).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pulled(&target).await.1 < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no load committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let (rows_before, loads_before) = pulled(&target).await;
    assert!(
        rows_before < 50_000,
        "killed too late: {rows_before} rows loaded"
    );

    let second = crate::helpers::spawn_binary(None, &target, &env);
    let id = start(&second).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job: Value = reqwest::get(format!("http://{}/v1/jobs/{id}", second.http))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !matches!(job["state"].as_str(), Some("ready" | "running")) {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        job["result"]["read"],
        50_000 - rows_before,
        "{job}: the second run starts after the pointer"
    );
    let (rows, loads) = pulled(&target).await;
    assert_eq!(
        rows, 50_000,
        "every row loaded once ({loads_before} loads before the kill, {loads} after)"
    );
    let target_rows = trim_amounts(target.query("SELECT CAST(id AS TEXT), name, CAST(amount AS TEXT), stage, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), CASE WHEN won THEN '1' WHEN NOT won THEN '0' END FROM crm_deal ORDER BY crm_deal.id").await);
    assert!(
        target_rows == deals(&source).await,
        "the target differs from the source"
    );
    let pointer = target
        .query("SELECT pointer FROM sluice_pointers WHERE source = 'crm'")
        .await;
    let pointer: Value = serde_json::from_str(pointer[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(pointer["id"], "50000", "{pointer}");
    second.terminate().await;
}

/// Two instances pulling one source at once (a schedule on each): the pointer moves
/// only from where a run read it, so a run that finds it moved fails its load instead of
/// loading rows twice; the ledger counts every row once and the target equals the
/// source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_pulling_one_source_load_each_row_once() {
    let Some(source) = TestDb::create(Db::Postgres).await else {
        return;
    };
    create_source(&source, 20_000).await;
    let schemas = tempfile::tempdir().unwrap();
    write_schema(schemas.path());
    let var = source_env(&source, "twice");
    let paced = |var: String| {
        move |c: &mut sluice::Config| {
            pulling(var, 1000)(c);
            if let Some(s) = c.sources.get_mut("crm") {
                s.max_rows_per_second = 10_000;
            }
        }
    };
    let Some(first) = spawn_app(
        Db::Postgres,
        schemas.path().to_path_buf(),
        paced(var.clone()),
    )
    .await
    else {
        return;
    };
    let second = crate::helpers::spawn_app_on(
        first.db.via(first.db.url.clone()),
        schemas.path().to_path_buf(),
        paced(var),
    )
    .await;
    let (a, b) = tokio::join!(run_pull(&first, "crm"), run_pull(&second, "crm"));
    let states = [a["state"].clone(), b["state"].clone()];
    assert!(
        states.contains(&json!("completed")) || states.contains(&json!("failed")),
        "{a} {b}"
    );
    for job in [&a, &b] {
        if job["state"] == "failed" {
            let errors = job["errors"].to_string();
            assert!(
                errors.contains("another run moved the source's pointer")
                    || errors.contains("was moved by another run"),
                "{job}"
            );
        }
    }
    // Whatever the interleaving, one more run finishes the table.
    let last = run_pull(&first, "crm").await;
    assert_eq!(last["state"], "completed", "{last}");
    let ledger = first
        .db
        .query("SELECT CAST(SUM(rows) AS TEXT) FROM sluice_loads WHERE source = 'pull:crm'")
        .await;
    assert_eq!(ledger[0][0].as_deref(), Some("20000"), "{a}\n{b}\n{last}");
    assert!(target_deals(&first).await == deals(&source).await);
}

/// `every`: a source runs on its schedule; paused, it does not; resumed, it catches up;
/// reset to `null`, the next run loads every row again. A source that cannot be read
/// fails its runs and backs off, and never holds up the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_sources_run_pause_resume_reset_and_back_off() {
    let Some(source) = TestDb::create(Db::Postgres).await else {
        return;
    };
    create_source(&source, 3000).await;
    let schemas = tempfile::tempdir().unwrap();
    write_schema(schemas.path());
    let var = source_env(&source, "scheduled");
    let Some(app) = spawn_app(Db::Sqlite, schemas.path().to_path_buf(), move |c| {
        pulling(var, 1000)(c);
        let every = Some(Duration::from_secs(1));
        if let Some(s) = c.sources.get_mut("crm") {
            s.every = every;
        }
        let broken = table_source(
            "SLUICE_TEST_NO_SUCH_VARIABLE".into(),
            "deals",
            &["id"],
            "crm_deal",
            1000,
        );
        c.sources.insert(
            "broken".into(),
            sluice::pull::SourceConfig { every, ..broken },
        );
    })
    .await
    else {
        return;
    };
    let source_view = |name: &'static str| {
        let app = &app;
        async move {
            let (status, list) = app.get_json("/v1/sources").await;
            assert_eq!(status, 200, "{list}");
            list["sources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .cloned()
                .unwrap()
        }
    };
    let loaded = || async {
        app.db
            .query("SELECT CAST(COALESCE(SUM(rows), 0) AS TEXT) FROM sluice_loads WHERE source = 'pull:crm'")
            .await[0][0]
            .clone()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    let until = |what: &'static str, want: i64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n = loaded().await;
            if n == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {n} rows loaded, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    until("the first scheduled run", 3000).await;
    let crm = source_view("crm").await;
    assert_eq!(crm["pointer"]["id"], "3000", "{crm}");
    assert_eq!(crm["every_seconds"], 1, "{crm}");
    assert_eq!(crm["rows"], 3000, "{crm}");
    assert!(crm["files_loaded"].is_null(), "{crm}");

    let (status, paused) = post_json(&app, "/v1/sources/crm/pause", json!({})).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    assert!(paused["next_run"].is_null(), "{paused}");
    change_source(&source, 3000).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(loaded().await, 3000, "paused: nothing is pulled");

    let (status, resumed) = post_json(&app, "/v1/sources/crm/resume", json!({})).await;
    assert_eq!(status, 200, "{resumed}");
    until("resumed", 3530).await;
    let (got, want) = (target_deals(&app).await, deals(&source).await);
    let differ = got.iter().zip(&want).find(|(a, b)| a != b);
    assert!(
        got.len() == want.len() && differ.is_none(),
        "{} vs {}: {differ:?}",
        got.len(),
        want.len()
    );

    let (status, refused) = post_json(
        &app,
        "/v1/sources/crm/reset",
        json!({"pointer": {"id": "1"}}),
    )
    .await;
    assert_eq!(status, 409, "{refused}: the pointer lacks updated_at");
    let (status, reset) = post_json(&app, "/v1/sources/crm/reset", json!({"pointer": null})).await;
    if status == 409 {
        // A scheduled run was under way: reset between runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, reset) =
            post_json(&app, "/v1/sources/crm/reset", json!({"pointer": null})).await;
        assert_eq!(status, 200, "{reset}");
    } else {
        assert_eq!(status, 200, "{reset}");
    }
    until("reset to the first row", 3530 + 3500).await;
    assert!(target_deals(&app).await == deals(&source).await);

    let broken = source_view("broken").await;
    assert_eq!(broken["last_state"], "failed", "{broken}");
    assert!(broken["failures"].as_u64().unwrap() >= 2, "{broken}");
    let (status, _) = post_json(&app, "/v1/sources/nope/run", json!({})).await;
    assert_eq!(status, 404);
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A folder of CSV and NDJSON files: every good row stored with its types (quoted commas,
/// a newline inside quotes, a BOM, an empty cell), a bad one dead-lettered with its file
/// and line; the next run loads nothing again; a changed file waits for a reset.
async fn a_folder_of_files_is_loaded_once(kind: Db) {
    let schemas = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "required": ["sku", "price"],
        "properties": {
            "sku": {"type": "string", "maxLength": 16},
            "note": {"type": "string"},
            "price": {"type": "number", "x-sluice-decimal": [10, 2]},
            "stock": {"type": "integer"}
        }
    });
    std::fs::write(schemas.path().join("price_list.json"), schema.to_string()).unwrap();
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("a.csv"),
        "\u{feff}sku,note,price,stock\nA1,\"big, red\",12.50,3\nA2,\"two\nlines\",0.99,\nA3,bad,twelve,1\n",
    )
    .unwrap();
    std::fs::write(
        folder.path().join("b.ndjson"),
        "{\"sku\": \"B1\", \"price\": 5, \"stock\": 2}\n\n{\"sku\": \"B2\", \"price\": 1.25}\n",
    )
    .unwrap();
    std::fs::write(folder.path().join("ignored.txt"), "not a match").unwrap();
    let pattern = format!("{}/*.??*", folder.path().display());
    let Some(app) = spawn_app(kind, schemas.path().to_path_buf(), move |c| {
        c.sources.insert(
            "prices".into(),
            sluice::pull::SourceConfig {
                url_env: String::new(),
                path: Some(pattern.replace("*.??*", "*.csv")),
                table: None,
                query: None,
                cursor: Vec::new(),
                stream: "price_list".into(),
                load_size: 2,
                max_rows_per_second: 0,
                max_connections: None,
                every: None,
            },
        );
        c.sources.insert(
            "more_prices".into(),
            sluice::pull::SourceConfig {
                url_env: String::new(),
                path: Some(pattern.replace("*.??*", "*.ndjson")),
                table: None,
                query: None,
                cursor: Vec::new(),
                stream: "price_list".into(),
                load_size: 1000,
                max_rows_per_second: 0,
                max_connections: None,
                every: None,
            },
        );
    })
    .await
    else {
        return;
    };
    let first = run_pull(&app, "prices").await;
    assert_eq!(first["state"], "completed", "{first}");
    assert_eq!(first["result"]["read"], 3, "{first}");
    assert_eq!(first["result"]["dead_lettered"], 1, "{first}");
    let ndjson = run_pull(&app, "more_prices").await;
    assert_eq!(ndjson["result"]["stored"], 2, "{ndjson}");
    let rows = app
        .db
        .query(&format!(
            "SELECT sku, note, {}, {} FROM price_list ORDER BY sku",
            app.db.text("price"),
            app.db.text("stock")
        ))
        .await;
    let rows: Vec<Vec<Option<String>>> = trim_amounts(
        rows.into_iter()
            .map(|r| vec![r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()])
            .collect(),
    );
    assert_eq!(
        rows,
        [
            vec![
                Some("A1".into()),
                Some("big, red".into()),
                Some("12.5".into()),
                Some("3".into())
            ],
            vec![
                Some("A2".into()),
                Some("two\nlines".into()),
                Some("0.99".into()),
                None
            ],
            vec![Some("B1".into()), None, Some("5".into()), Some("2".into())],
            vec![Some("B2".into()), None, Some("1.25".into()), None],
        ],
        "{kind:?}"
    );
    let letters = app.db.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let source = letters[0][4].clone().unwrap();
    assert_eq!(source, "pull prices a.csv line 5", "{kind:?}");
    // Loaded once: the next run reads nothing.
    let again = run_pull(&app, "prices").await;
    assert_eq!(again["result"]["read"], 0, "{again}");
    // A changed file waits for a reset, then everything is loaded again.
    std::fs::write(folder.path().join("a.csv"), "sku,price\nA1,13.00\n").unwrap();
    let changed = run_pull(&app, "prices").await;
    assert_eq!(changed["result"]["read"], 0, "{changed}");
    let r = app
        .client
        .post(app.url("/v1/sources/prices/reset"))
        .json(&json!({"pointer": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reloaded = run_pull(&app, "prices").await;
    assert_eq!(reloaded["result"]["read"], 1, "{reloaded}");
}

crate::db_tests!(a_folder_of_files_is_loaded_once);
