//! Test harness: `spawn_app` starts the real server on a free port against its own
//! database (a temporary SQLite file, or a fresh PostgreSQL / MariaDB database), and
//! reads rows back through a separate connection, as an operator would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice::{App, Config};
use sqlx::{Connection, Row as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
    Mysql,
}

/// A database of this test's own.
pub struct TestDb {
    pub kind: Db,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn fresh_name() -> String {
    format!(
        "sluice_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        fastrand_suffix()
    )
}

fn fastrand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos % 100_000
}

/// `base` with its database path replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((a, q)) => (a, format!("?{q}")),
        None => (base, String::new()),
    };
    let scheme_end = without_query.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match without_query[scheme_end..].find('/') {
        Some(i) => &without_query[..scheme_end + i],
        None => without_query,
    };
    format!("{host_part}/{name}{query}")
}

impl TestDb {
    /// The database's name on its server (the URL's last segment), as
    /// `pg_stat_activity` and MySQL's process list show it.
    pub fn name(&self) -> String {
        self.url.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// A new empty database, or `None` (after printing SKIPPED) when the server's URL
    /// is not configured. With `SLUICE_TEST_REQUIRE_ALL=1` a missing URL fails the test.
    pub async fn create(kind: Db) -> Option<TestDb> {
        let var = match kind {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                return Some(TestDb {
                    kind,
                    url,
                    _dir: Some(dir),
                });
            }
            Db::Postgres => "SLUICE_TEST_POSTGRES_URL",
            Db::Mysql => "SLUICE_TEST_MYSQL_URL",
        };
        let Ok(base) = std::env::var(var) else {
            if std::env::var("SLUICE_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!("{var} is not set but SLUICE_TEST_REQUIRE_ALL=1");
            }
            // Written to the real stderr (not the captured test output), so that a
            // plain `cargo test` shows what it skipped.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: a {kind:?} test; set {var} to run it"
            );
            return None;
        };
        let name = fresh_name();
        match kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&base)
                    .await
                    .unwrap_or_else(|e| panic!("{var}={base} is unreachable: {e}"));
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut c)
                    .await
                    .expect("create test database");
            }
            Db::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&base)
                    .await
                    .unwrap_or_else(|e| panic!("{var}={base} is unreachable: {e}"));
                sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
                    .execute(&mut c)
                    .await
                    .expect("create test database");
            }
            Db::Sqlite => unreachable!(),
        }
        Some(TestDb {
            kind,
            url: with_database(&base, &name),
            _dir: None,
        })
    }

    /// A database this test set up itself (e.g. a throwaway server), reached at `url`.
    pub fn external(kind: Db, url: String) -> TestDb {
        TestDb {
            kind,
            url,
            _dir: None,
        }
    }

    /// The same database reached through another URL (e.g. through a proxy).
    pub fn via(&self, url: String) -> TestDb {
        TestDb {
            kind: self.kind,
            url,
            _dir: None,
        }
    }

    /// Runs `sql` and returns every value as text (`None` for SQL NULL).
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        macro_rules! fetch {
            ($conn:ty) => {{
                let mut c = <$conn>::connect(&self.url)
                    .await
                    .expect("connect to the test database");
                let rows = sqlx::query(sql)
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                // MySQL reports text in a binary collation as VARBINARY.
                                r.try_get::<Option<String>, _>(i).unwrap_or_else(|_| {
                                    r.try_get::<Option<Vec<u8>>, _>(i)
                                        .expect("a text column")
                                        .map(|b| String::from_utf8(b).expect("UTF-8 text"))
                                })
                            })
                            .collect()
                    })
                    .collect()
            }};
        }
        match self.kind {
            Db::Sqlite => fetch!(sqlx::SqliteConnection),
            Db::Postgres => fetch!(sqlx::PgConnection),
            Db::Mysql => fetch!(sqlx::MySqlConnection),
        }
    }

    /// Runs a statement (test set-up: constraints, locks).
    pub async fn execute(&self, sql: &str) {
        match self.kind {
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut c).await.expect(sql);
            }
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut c).await.expect(sql);
            }
            Db::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut c).await.expect(sql);
            }
        }
    }

    /// `SELECT count(*) FROM table`.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!(
            "SELECT {} FROM {}",
            self.text("COUNT(*)"),
            self.quote(table)
        );
        self.query(&sql).await[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .expect("a count")
    }

    /// `SELECT count(DISTINCT column) FROM table`.
    pub async fn distinct(&self, table: &str, column: &str) -> i64 {
        let expr = format!("COUNT(DISTINCT {})", self.quote(column));
        let sql = format!("SELECT {} FROM {}", self.text(&expr), self.quote(table));
        self.query(&sql).await[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .expect("a count")
    }

    /// Every value of `column` in `table` as text, in the column's order.
    pub async fn values(&self, table: &str, column: &str) -> Vec<Option<String>> {
        let column = self.quote(column);
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {column}",
            self.text(&column),
            self.quote(table)
        );
        self.query(&sql)
            .await
            .into_iter()
            .map(|mut r| r.remove(0))
            .collect()
    }

    /// Waits until `table` holds `n` rows (for `ack=accepted`), failing after 15 s.
    pub async fn wait_for_count(&self, table: &str, n: i64) {
        self.wait_for_count_within(table, n, Duration::from_secs(15))
            .await
    }

    /// [`TestDb::wait_for_count`], failing after `limit`: for a test that writes many
    /// small batches on purpose, whose rate is the database's commit rate.
    pub async fn wait_for_count_within(&self, table: &str, n: i64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let c = self.count(table).await;
            if c == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} holds {c} rows, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `sluice_dead_letters` holds `n` rows (they are written by their own
    /// batcher, apart from the rows), failing after 15 s.
    pub async fn wait_for_dead_letters(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let c = self.dead_letters().await.len();
            if c >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{c} dead letters, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The dead letters, oldest first: (stream, stage, error, payload, source).
    pub async fn dead_letters(&self) -> Vec<Vec<Option<String>>> {
        self.query(
            "SELECT stream, stage, error, payload, source FROM sluice_dead_letters ORDER BY id",
        )
        .await
    }

    pub fn quote(&self, ident: &str) -> String {
        match self.kind {
            Db::Mysql => format!("`{ident}`"),
            _ => format!("\"{ident}\""),
        }
    }

    /// `expr` cast to text, to read any column as a string.
    pub fn text(&self, expr: &str) -> String {
        format!("CAST({expr} AS {})", self.text_type())
    }

    /// The type to `CAST` a value to for reading it as text.
    pub fn text_type(&self) -> &'static str {
        match self.kind {
            Db::Mysql => "CHAR",
            _ => "TEXT",
        }
    }
}

/// A running Sluice.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin listener, when `admin.listen` was set.
    pub admin_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub db: TestDb,
    pub client: reqwest::Client,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The schemas shipped in `schemas/`.
pub fn shipped_schemas() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

/// The privacy key the tests hash with (`tests/fixtures/privacy.key`; a test fixture,
/// not a secret).
pub fn test_privacy_key() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/privacy.key")
}

/// The text of the tests' privacy key, as Sluice reads it.
pub fn test_privacy_key_text() -> String {
    std::fs::read_to_string(test_privacy_key())
        .unwrap()
        .trim()
        .to_owned()
}

/// The test schemas in `tests/fixtures/schemas/`.
pub fn fixture_schemas() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas")
}

/// Starts Sluice on a free port with `schemas` against a fresh `db`, after `tweak`
/// adjusts the configuration. `None` when the database is not configured (skipped).
pub async fn spawn_app(
    db: Db,
    schemas: PathBuf,
    tweak: impl FnOnce(&mut Config),
) -> Option<TestApp> {
    let db = TestDb::create(db).await?;
    Some(spawn_app_on(db, schemas, tweak).await)
}

/// [`spawn_app`] on a database the test already has (e.g. `app.db.via(url)` for a
/// second start on the first one's tables).
pub async fn spawn_app_on(
    db: TestDb,
    schemas: PathBuf,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = Config {
        schemas_dir: schemas,
        ..Config::default()
    };
    config.database.url = db.url.clone();
    config.database.max_connections = 4;
    config.http.listen = "127.0.0.1:0".into();
    config.tcp.listen = "127.0.0.1:0".into();
    config.defaults.batch_max_wait = Duration::from_millis(5);
    config.privacy.key_file = Some(test_privacy_key());
    tweak(&mut config);
    let app = App::build(config).await.expect("Sluice starts");
    let addr = app.http_addr();
    let tcp_addr = app.tcp_addr();
    let admin_addr = app.admin_addr();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    TestApp {
        addr,
        admin_addr,
        tcp_addr,
        db,
        client: reqwest::Client::new(),
        stop,
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to a stream with `content_type` and extra `query` (e.g. `?ack=accepted`).
    pub async fn post(
        &self,
        stream: &str,
        query: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1/streams/{stream}/events{query}")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the request reaches Sluice")
    }

    /// POSTs JSON and returns the status and the JSON answer.
    pub async fn post_json(
        &self,
        stream: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .post(stream, "", "application/json", body.to_string())
            .await;
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON answer"))
    }

    /// GETs `path` and returns the status and the JSON answer.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("the request reaches Sluice");
        let status = r.status().as_u16();
        (status, r.json().await.expect("a JSON answer"))
    }

    /// Stops Sluice as SIGTERM would and waits until it has flushed and exited.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let handle = self.handle.take().expect("stopped once");
        handle.await.expect("the server task does not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Defines one test per database from an `async fn(Db)`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() { super::$name($crate::helpers::Db::Sqlite).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() { super::$name($crate::helpers::Db::Postgres).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() { super::$name($crate::helpers::Db::Mysql).await }
            }
        )*
    };
}

/// The resident memory of process `pid`, from /proc (0 once it has exited).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Waits (up to `secs`) until `check` holds, polling every 20 ms; fails with `what` and
/// the last state `check` reported. The one way tests wait for something to happen,
/// instead of sleeping for a guessed time.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
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
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The first sample of metric `name` whose line contains `labels` (e.g.
/// `stream="reading"`), as the Sluice at `http` exports it; `None` without one.
pub async fn metric(http: &str, name: &str, labels: &str) -> Option<f64> {
    let text = metrics_text(http).await;
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The `/metrics` scrape of the instance at `http` (`host:port`).
pub async fn metrics_text(http: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("Sluice answers /metrics")
        .text()
        .await
        .expect("a text answer")
}

/// The sum of the samples of `name` (any labels) whose line contains `labels`.
pub async fn metric_sum(http: impl std::fmt::Display, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{");
    metrics_text(http)
        .await
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `toml` as `dir/sluice.toml` and starts the binary (`bin`, or the test build)
/// with it, on `db`, with `env` besides.
pub fn spawn_configured(
    bin: Option<&str>,
    db: &TestDb,
    dir: &std::path::Path,
    toml: &str,
    env: &[(&str, String)],
) -> Binary {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, toml).unwrap();
    let mut env = env.to_vec();
    env.push(("SLUICE_CONFIG", config.display().to_string()));
    spawn_binary(bin, db, &env)
}

/// Skips the rest of a test that cannot run here, saying so on the real stderr (which
/// `cargo test` shows, unlike the captured test output); with
/// `SLUICE_TEST_REQUIRE_ALL=1` (CI) a skip fails the test instead.
pub fn skip(what: &str) {
    if std::env::var("SLUICE_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("cannot run {what}, and SLUICE_TEST_REQUIRE_ALL=1");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}");
}

/// Holds a lock that stops Sluice from writing to `reading` until dropped/committed.
pub async fn hold_write_lock(db: &TestDb) -> Box<dyn std::any::Any + Send> {
    hold_write_lock_on(db, "reading").await
}

/// Holds a lock that stops Sluice from writing to `table` (SQLite: to any table) until
/// dropped/committed.
pub async fn hold_write_lock_on(db: &TestDb, table: &str) -> Box<dyn std::any::Any + Send> {
    match db.kind {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
        Db::Mysql => {
            let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
            sqlx::query(&format!("LOCK TABLES {table} WRITE"))
                .execute(&mut c)
                .await
                .unwrap();
            Box::new(c)
        }
    }
}

/// A valid event of the fixture schemas' `reading` stream, its sensor and value derived
/// from `seq`.
pub fn reading(seq: i64) -> serde_json::Value {
    serde_json::json!({"seq": seq, "sensor": format!("s-{}", seq % 3), "value": (seq % 4000) as f64 / 4.0})
}

/// The [`reading`]s of `seqs` as NDJSON.
pub fn readings_ndjson(seqs: std::ops::Range<i64>) -> String {
    seqs.map(|i| format!("{}\n", reading(i))).collect()
}

/// POSTs `n` valid `reading` events as NDJSON with `ack=accepted` to the Sluice at
/// `http`, and checks the `202`.
pub async fn post_readings_accepted(http: &str, n: usize) {
    let n = i64::try_from(n).expect("a test-sized count");
    let body = readings_ndjson(0..n);
    let r = reqwest::Client::new()
        .post(format!(
            "http://{http}/v1/streams/reading/events?ack=accepted"
        ))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("the request reaches Sluice");
    assert_eq!(r.status(), 202);
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

/// The `sluice` binary with no `SLUICE_*` setting from the environment the tests run
/// in: each test sets its own.
pub fn sluice_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
        c.env_remove(k);
    }
    c
}

/// The real `sluice` binary, running with settings from the test only.
pub struct Binary {
    pub child: std::process::Child,
    pub http: String,
    /// The TCP listener's address, unless disabled.
    pub tcp: Option<String>,
    /// Every log line but the listening line.
    pub logs: std::sync::mpsc::Receiver<String>,
}

/// Starts `bin` (the test build of `sluice` when `None`) on the fixture schemas and
/// `db`, with `env` on top of a clean environment, and waits for the line that gives
/// its addresses.
pub fn spawn_binary(bin: Option<&str>, db: &TestDb, env: &[(&str, String)]) -> Binary {
    spawn_binary_under(&[], bin, db, env)
}

/// [`spawn_binary`] run by `wrapper` (e.g. `strace -f -o FILE`), which is given the
/// binary's path as its last argument.
pub fn spawn_binary_under(
    wrapper: &[&str],
    bin: Option<&str>,
    db: &TestDb,
    env: &[(&str, String)],
) -> Binary {
    use std::io::BufRead;
    let bin = bin.unwrap_or(env!("CARGO_BIN_EXE_sluice"));
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    };
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
        cmd.env_remove(k);
    }
    cmd.env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_DATABASE_URL", &db.url);
    cmd.env("RUST_LOG", "info")
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "");
    // The tests' privacy key, unless the test sets its own (an empty value: none).
    if !env.iter().any(|(k, _)| k.starts_with("SLUICE_PRIVACY_KEY")) {
        cmd.env("SLUICE_PRIVACY_KEY_FILE", test_privacy_key());
    }
    for (k, v) in env {
        if !(k.starts_with("SLUICE_PRIVACY_KEY") && v.is_empty()) {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sluice starts");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    let (tx, logs) = std::sync::mpsc::channel();
    let mut before = Vec::new();
    let (http, tcp) = loop {
        let Some(line) = lines.next() else {
            let status = child.wait();
            panic!("Sluice exited before it logged its addresses ({status:?}): {before:#?}");
        };
        let line = line.expect("UTF-8 logs");
        before.push(line.clone());
        if let Some((http, tcp)) = sluice::app::listening_addresses(&line) {
            break (http, (tcp != "disabled").then_some(tcp));
        }
        // Start-up lines (warnings) are kept for the test too.
        let _ = tx.send(line);
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Binary {
        child,
        http,
        tcp,
        logs,
    }
}

impl Binary {
    /// Reads log lines until one satisfies `found` (failing after `secs`), and returns
    /// every line read, that one included, so a test can still look at all of them.
    pub fn log_until(&self, secs: u64, found: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !seen.iter().any(|l: &String| found(l)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no such log line: {seen:#?}"
            );
            if let Ok(line) = self.logs.recv_timeout(Duration::from_millis(100)) {
                seen.push(line);
            }
        }
        seen
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for sluice") {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let logs = self.logs.try_iter().collect();
        (status, logs)
    }
}

/// A test that fails (panics) before it stops its Sluice does not leave the process
/// running (and writing, and holding ports) after the test run.
impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a [`faulty_proxy`] does once its fault is switched on.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Holds every connection open and passes nothing either way (a network that drops
    /// packets).
    Blackhole,
    /// Closes every connection and refuses new ones (a database that went away).
    Drop,
}

/// A TCP proxy to `target` that forwards until `on` is set, then applies `fault`.
pub async fn faulty_proxy(
    target: &'static str,
    fault: Fault,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if matches!(fault, Fault::Drop) && on.load(std::sync::atomic::Ordering::SeqCst) {
                continue; // dropped: the connection is closed at once
            }
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, fault, on.clone()));
            tokio::spawn(pipe(sr, cw, fault, on.clone()));
        }
    });
    addr
}

/// Copies `from` to `to` until either side closes, or `on` is set and `fault` applies.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Fault,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(100), from.read(&mut buf)).await;
        if on.load(std::sync::atomic::Ordering::SeqCst) {
            match fault {
                // Dropping both halves closes the connection.
                Fault::Drop => return,
                Fault::Blackhole => {
                    let _held = (from, to);
                    std::future::pending::<()>().await;
                    return;
                }
            }
        }
        let n = match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
