//! The benchmark's own database connection: counting and emptying the target table,
//! and the **limit**: the same rows written straight to the database with its own bulk
//! path, on one connection (Sluice writes each stream on one connection at a time).

use std::time::{Duration, Instant};

use anyhow::Context;
use sluice::event::{Cell, Row};
use sluice::schema::Stream;
use sluice::sink::dialect::{mysql_timestamp, sqlite_timestamp};
use sluice::sink::Dialect;
use sqlx::{Connection, MySqlConnection, PgConnection, SqliteConnection};

/// One connection to the target database.
pub enum Db {
    Postgres(PgConnection),
    Mysql(MySqlConnection),
    /// The connection and the database file.
    Sqlite(SqliteConnection, std::path::PathBuf),
}

/// Rows per statement for the MariaDB/MySQL multi-row INSERT limit.
const MYSQL_ROWS_PER_INSERT: usize = 1000;

impl Db {
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        let dialect = Dialect::from_url(url).map_err(anyhow::Error::msg)?;
        Ok(match dialect {
            Dialect::Postgres => Db::Postgres(PgConnection::connect(url).await?),
            Dialect::Mysql => Db::Mysql(MySqlConnection::connect(url).await?),
            Dialect::Sqlite => {
                let options = url
                    .parse::<sqlx::sqlite::SqliteConnectOptions>()?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(30));
                let path = options.get_filename().to_path_buf();
                Db::Sqlite(SqliteConnection::connect_with(&options).await?, path)
            }
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Postgres(_) => Dialect::Postgres,
            Db::Mysql(_) => Dialect::Mysql,
            Db::Sqlite(..) => Dialect::Sqlite,
        }
    }

    pub async fn execute(&mut self, sql: &str) -> anyhow::Result<()> {
        match self {
            Db::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Db::Mysql(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            Db::Sqlite(c, _) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
        .with_context(|| format!("running {sql}"))
    }

    pub async fn count(&mut self, table: &str) -> anyhow::Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {}", self.dialect().quote(table));
        let n: i64 = match self {
            Db::Postgres(c) => sqlx::query_scalar(&sql).fetch_one(c).await?,
            Db::Mysql(c) => sqlx::query_scalar(&sql).fetch_one(c).await?,
            Db::Sqlite(c, _) => sqlx::query_scalar(&sql).fetch_one(c).await?,
        };
        Ok(n)
    }

    /// Starts the next load from the same state as the others: the database's dirty
    /// pages written out (PostgreSQL `CHECKPOINT`, as pgbench does before a run) and the
    /// kernel's, so that neither the checkpoint nor the writeback of an earlier load
    /// lands in this one's time.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        if let Db::Postgres(c) = self {
            if let Err(e) = sqlx::query("CHECKPOINT").execute(c).await {
                // Not a superuser (or pg_checkpoint): the loads still run, less evenly.
                eprintln!("CHECKPOINT refused ({e}); a load may pay for an earlier one's");
            }
        }
        let _ = std::process::Command::new("sync").status();
        Ok(())
    }

    /// Empties `table` (which must exist).
    pub async fn empty(&mut self, table: &str) -> anyhow::Result<()> {
        let q = self.dialect().quote(table);
        let sql = match self.dialect() {
            Dialect::Sqlite => format!("DELETE FROM {q}"),
            _ => format!("TRUNCATE TABLE {q}"),
        };
        self.execute(&sql).await
    }

    /// Waits until `table` holds at least `n` rows; returns when that was seen.
    ///
    /// Counting a growing table every 10 ms takes a good part of a core from the
    /// database under test, so while the Sluice instances at `watch` (HTTP addresses)
    /// report fewer than `n` rows written (`sluice_events_written_total`, counted after
    /// each commit), only their metrics are read; the table is counted once they do.
    /// The instant returned is then when the metrics reported the rows, not when the
    /// count ended: the first count of freshly written rows sets their hint bits and
    /// reads the whole table (tens of milliseconds for 200,000 rows on PostgreSQL), work
    /// of the bench, not of the writer, and no part of the limit runs it is set against.
    /// With no `watch`, or one without metrics (a peer), the table is counted every 10 ms.
    pub async fn wait_for(
        &mut self,
        table: &str,
        n: i64,
        timeout: Duration,
        watch: &[String],
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut clients = Vec::new();
        for addr in watch {
            clients.push(crate::load::Client::connect(addr).await?);
        }
        loop {
            let written = written(&mut clients).await;
            let seen = Instant::now();
            if written.is_none() {
                clients.clear();
            }
            let have = match written {
                Some(w) if w < n as f64 => w as i64,
                _ => self.count(table).await?,
            };
            if have >= n {
                return Ok(if written.is_some() {
                    seen
                } else {
                    Instant::now()
                });
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {have} of {n} rows reached {table} within {} s",
                timeout.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes `rows` into `table`, created fresh with the DDL Sluice uses for `stream`,
    /// with the database's own bulk path over `connections` connections at once (each
    /// writing its share in one statement or transaction; Sluice writes a stream's
    /// batches on as many); returns the time the writes took. Encoding the rows for that
    /// path is done before the clock starts, as the peers' `limits.py` does. The table
    /// is dropped afterwards.
    pub async fn limit(
        &mut self,
        url: &str,
        stream: &Stream,
        table_name: &str,
        rows: &[Row],
        connections: usize,
        keep: bool,
    ) -> anyhow::Result<(Duration, String)> {
        let dialect = self.dialect();
        let table = dialect.quote(table_name);
        self.execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await?;
        let ddl = dialect
            .create_table(stream)
            .replace(&dialect.quote(&stream.table), &table);
        self.execute(&ddl).await?;
        // The raw loaders write the event's columns; `_load_id` (Sluice's ledger) stays
        // NULL (PostgreSQL's COPY text from `encode_rows` says `\N` for it).
        let columns = dialect
            .table_columns(stream)
            .iter()
            .filter(|(name, _, _)| name != sluice::sink::ledger::LOAD_ID)
            .map(|(name, _, _)| dialect.quote(name))
            .collect::<Vec<_>>()
            .join(", ");
        let share = rows.len().div_ceil(connections.max(1)).max(1);
        let load_data = match self {
            Db::Mysql(_) => load_data_client(url),
            _ => None,
        };
        let took = match self {
            Db::Sqlite(_, path) => {
                // sqlx runs SQLite on a worker thread, one channel round trip per
                // statement; the raw limit uses the C library directly (rusqlite), as
                // a hand-written Rust loader would. SQLite has one writer: one connection.
                let path = path.clone();
                let width = stream.columns.len() + 1;
                let placeholders = vec!["?"; width].join(", ");
                let sql = format!("INSERT INTO {table} ({columns}) VALUES ({placeholders})");
                let rows = rows.to_vec();
                let took =
                    tokio::task::spawn_blocking(move || sqlite_limit(&path, &sql, &rows)).await??;
                (
                    took,
                    "SQLite one transaction, one prepared INSERT per row (rusqlite), 1 connection"
                        .to_owned(),
                )
            }
            Db::Postgres(_) => {
                let all_columns = dialect.column_list(stream);
                let statement = format!("COPY {table} ({all_columns}) FROM STDIN");
                let mut work = Vec::new();
                for part in rows.chunks(share) {
                    let conn = PgConnection::connect(url).await?;
                    work.push((
                        conn,
                        sluice::sink::postgres::encode_rows(stream, part, None),
                    ));
                }
                let n = work.len();
                let started = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for (mut conn, data) in work {
                    let statement = statement.clone();
                    tasks.spawn(async move {
                        let mut copy = conn.copy_in_raw(&statement).await?;
                        copy.send(data.into_bytes()).await?;
                        copy.finish().await?;
                        anyhow::Ok(())
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done??;
                }
                (started.elapsed(), format!("PostgreSQL COPY FROM STDIN (text), one statement per connection, {n} connections"))
            }
            Db::Mysql(_) if load_data.is_some() => {
                // MariaDB's fastest path: LOAD DATA LOCAL INFILE, through the `mariadb`
                // client (sqlx cannot send local files).
                let (client, args) = load_data.context("checked above")?;
                let dir =
                    std::env::temp_dir().join(format!("sluice-bench-load-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                let mut files = Vec::new();
                for (i, part) in rows.chunks(share).enumerate() {
                    let file = dir.join(format!("part{i}.tsv"));
                    std::fs::write(&file, mysql_tsv(part))?;
                    files.push(file);
                }
                let n = files.len();
                let started = Instant::now();
                let children = files
                    .iter()
                    .map(|file| {
                        let sql = format!(
                            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {table} ({columns})",
                            file.display()
                        );
                        std::process::Command::new(&client)
                            .args(&args)
                            .args(["--local-infile=1", "-e", &sql])
                            .spawn()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for mut child in children {
                    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
                    anyhow::ensure!(status.success(), "{client} LOAD DATA failed: {status}");
                }
                let took = started.elapsed();
                let _ = std::fs::remove_dir_all(&dir);
                (took, format!("MariaDB LOAD DATA LOCAL INFILE (mariadb client), one file per connection, {n} connections"))
            }
            Db::Mysql(_) => {
                let mut work = Vec::new();
                for part in rows.chunks(share) {
                    let conn = MySqlConnection::connect(url).await?;
                    let statements: Vec<String> = part
                        .chunks(MYSQL_ROWS_PER_INSERT)
                        .map(|chunk| mysql_insert(&table, &columns, chunk))
                        .collect();
                    work.push((conn, statements));
                }
                let n = work.len();
                let started = Instant::now();
                // Joined in place rather than spawned: sqlx's MySQL executor futures are
                // not `Send` for every lifetime, which `spawn` needs.
                let writes = work.iter_mut().map(|(conn, statements)| async move {
                    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
                    for sql in statements.iter() {
                        sqlx::raw_sql(sql).execute(&mut *conn).await?;
                    }
                    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
                    anyhow::Ok(())
                });
                for done in futures_util::future::join_all(writes).await {
                    done?;
                }
                (started.elapsed(), format!("MariaDB {MYSQL_ROWS_PER_INSERT}-row INSERTs, one transaction per connection, {n} connections"))
            }
        };
        let stored = self.count(table_name).await?;
        if !keep {
            self.execute(&format!("DROP TABLE {table}")).await?;
        }
        anyhow::ensure!(
            stored == rows.len() as i64,
            "the limit run stored {stored} of {} rows",
            rows.len()
        );
        Ok(took)
    }
}

/// The `mariadb` (or `mysql`) client and its connection arguments for `url`, when the
/// client is installed and the URL carries no password (it would show in `ps`).
fn load_data_client(url: &str) -> Option<(String, Vec<String>)> {
    let options: sqlx::mysql::MySqlConnectOptions = url.parse().ok()?;
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@').map(|(u, _)| u).unwrap_or("");
    if userinfo.contains(':') {
        return None;
    }
    let client = ["mariadb", "mysql"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let mut args = vec![
        format!("--host={}", options.get_host()),
        format!("--port={}", options.get_port()),
        format!("--user={}", options.get_username()),
    ];
    args.push(options.get_database()?.to_owned());
    Some((client.to_owned(), args))
}

/// Rows in LOAD DATA's default text format: tab-separated, `\N` for NULL, backslash
/// escapes (the same as PostgreSQL's COPY text format), MySQL datetime text.
fn mysql_tsv(rows: &[Row]) -> String {
    let mut out = String::with_capacity(rows.iter().map(|r| r.raw.len() + 64).sum());
    for row in rows {
        for cell in row
            .cells
            .iter()
            .chain(std::iter::once(&Cell::Timestamp(row.received_at)))
        {
            match cell {
                Cell::Null => out.push_str("\\N"),
                Cell::Text(s) | Cell::Json(s) => {
                    sluice::sink::dialect::copy_text_escape(&mut out, s)
                }
                Cell::Uuid(u) => out.push_str(&u.to_string()),
                Cell::Int(n) => out.push_str(&n.to_string()),
                Cell::Float(f) => out.push_str(&f.to_string()),
                Cell::Bool(b) => out.push(if *b { '1' } else { '0' }),
                Cell::Timestamp(t) => out.push_str(&mysql_timestamp(t)),
            }
            out.push('\t');
        }
        out.pop();
        out.push('\n');
    }
    out
}

/// A multi-row INSERT with the values inline (text protocol, nothing to prepare).
fn mysql_insert(table: &str, columns: &str, rows: &[Row]) -> String {
    let mut sql = format!("INSERT INTO {table} ({columns}) VALUES ");
    for (i, row) in rows.iter().enumerate() {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for cell in row
            .cells
            .iter()
            .chain(std::iter::once(&Cell::Timestamp(row.received_at)))
        {
            match cell {
                Cell::Null => sql.push_str("NULL"),
                Cell::Text(s) | Cell::Json(s) => quote_into(&mut sql, s),
                Cell::Uuid(u) => quote_into(&mut sql, &u.to_string()),
                Cell::Int(n) => sql.push_str(&n.to_string()),
                Cell::Float(f) => sql.push_str(&f.to_string()),
                Cell::Bool(b) => sql.push_str(if *b { "1" } else { "0" }),
                Cell::Timestamp(t) => quote_into(&mut sql, &mysql_timestamp(t)),
            }
            sql.push_str(", ");
        }
        sql.truncate(sql.len() - 2);
        sql.push(')');
    }
    sql
}

fn quote_into(out: &mut String, s: &str) {
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// One transaction, one prepared INSERT executed per row, through rusqlite.
fn sqlite_limit(path: &std::path::Path, sql: &str, rows: &[Row]) -> anyhow::Result<Duration> {
    use rusqlite::types::Value;
    // The values, converted before the clock starts.
    let values: Vec<Vec<Value>> = rows
        .iter()
        .map(|row| {
            row.cells
                .iter()
                .chain(std::iter::once(&Cell::Timestamp(row.received_at)))
                .map(|cell| match cell {
                    Cell::Null => Value::Null,
                    Cell::Text(s) | Cell::Json(s) => Value::Text(s.to_string()),
                    Cell::Uuid(u) => Value::Text(u.to_string()),
                    Cell::Int(i) => Value::Integer(*i),
                    Cell::Float(f) => Value::Real(*f),
                    Cell::Bool(b) => Value::Integer(i64::from(*b)),
                    Cell::Timestamp(t) => Value::Text(sqlite_timestamp(t)),
                })
                .collect()
        })
        .collect();
    let mut conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let started = Instant::now();
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(sql)?;
        for row in &values {
            insert.execute(rusqlite::params_from_iter(row.iter()))?;
        }
    }
    tx.commit()?;
    Ok(started.elapsed())
}

/// The rows the instances behind `clients` report written, or `None` when there are none
/// or one of them has no metrics to read.
async fn written(clients: &mut [crate::load::Client]) -> Option<f64> {
    if clients.is_empty() {
        return None;
    }
    let mut sum = 0.0;
    for client in clients {
        let text = client.get("/metrics").await.ok()?;
        sum += crate::metric(&text, "sluice_events_written_total");
    }
    Some(sum)
}
