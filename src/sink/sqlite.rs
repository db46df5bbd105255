//! SQLite writer (the embedded default), WAL mode with `synchronous=FULL`: the WAL is
//! fsynced at every commit, so a committed batch (and an `ack=commit` answer) survives
//! power loss, not just a crash of Sluice. Stream rows are written through the C
//! library directly (rusqlite) on a blocking thread: one transaction per batch, cached
//! prepared `INSERT`s of 8 rows (and of one, for the rest of a batch). That is
//! SQLite's fastest path; going through sqlx's worker thread with multi-row statements
//! cost about three times as much per row (BENCHMARKS.md). The `INSERT`s of rows are
//! prepared and run through SQLite's C interface (`sqlite_raw`), which binds the rows'
//! text where it is instead of copying it. The log is copied into the database by a
//! checkpointer thread, not inside the writer's commits (`WalHook`). Dead letters go
//! through the sqlx pool, which the shared store uses too.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::Sqlite;

use super::dialect::{push_sqlite_timestamp, sqlite_timestamp, Dialect};
use super::generic::SqlxInserts;
use super::ledger::Load;
use super::sqlite_raw::{Prepared, Run, WalHook};
use super::store::{Pools, Store};
use super::DatabaseConfig;
use super::{
    sink_error, BatchWriter, BoxFuture, ErrorClass, RowBatch, SinkError, Storage, Written,
};
use crate::event::{Cell, DeadLetter, Row};
use crate::schema::Stream;

/// Payload bytes per statement; SQLite has no packet limit, this only bounds memory.
const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024;
/// How long a write waits for another writer's lock before failing (transiently).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening the database at start-up is tried again while it is busy.
const OPEN_RETRY_FOR: Duration = Duration::from_secs(30);

/// Whether `e` is SQLite's BUSY or LOCKED (another connection holds a lock), not a
/// file that cannot be opened at all.
fn busy(e: &SinkError) -> bool {
    e.source
        .downcast_ref::<sqlx::Error>()
        .and_then(super::sqlite_code)
        .is_some_and(|c| matches!(c, 5 | 6))
}

/// The SQLite batch writer: one rusqlite connection for stream rows, the sqlx pool for
/// dead letters.
pub struct SqliteFile {
    letters: SqlxInserts<Sqlite>,
    rows: Arc<RowConnection>,
}

/// The rusqlite connection that writes stream rows.
struct RowConnection {
    path: PathBuf,
    /// `FULL` or `NORMAL`, as `[database] sqlite_synchronous` says.
    synchronous: &'static str,
    /// Opened on first write, dropped after a failure that may have broken it.
    conn: Mutex<Option<Opened>>,
}

/// The rows' connection and the `INSERT`s prepared on it, by their SQL. The statements
/// come first: fields are dropped in order, and a statement must be finalized before
/// its connection closes.
struct Opened {
    inserts: HashMap<String, Prepared>,
    conn: rusqlite::Connection,
    /// The hook and its checkpointer (`None` if the thread could not start): dropped
    /// after the connection closes, the hook first, so the checkpointer then stops.
    _checkpointing: Option<(WalHook, Checkpointer)>,
}

impl Opened {
    /// The rows' connection to `path`, whose log is copied into the database by a
    /// checkpointer of its own ([`WalHook`]); should that thread not start, by the
    /// writer, as SQLite does by default.
    fn open(path: &std::path::Path, synchronous: &'static str) -> rusqlite::Result<Opened> {
        let conn = open(path, synchronous)?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let checkpointing = match Checkpointer::spawn(path, synchronous, woken) {
            Ok(checkpointer) => Some((WalHook::install(&conn, wake)?, checkpointer)),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot start the SQLite checkpointer thread; the writer checkpoints the log itself.");
                None
            }
        };
        Ok(Opened {
            inserts: HashMap::new(),
            conn,
            _checkpointing: checkpointing,
        })
    }
}

/// The thread that copies the rows' log into the database when [`WalHook`] wakes it
/// (`PRAGMA wal_checkpoint(PASSIVE)`: the writer goes on committing meanwhile), on a
/// connection of its own. It stops once the hook is gone; dropping it waits for that.
struct Checkpointer {
    thread: Option<std::thread::JoinHandle<()>>,
    /// How many checkpoints it ran.
    #[cfg_attr(not(test), allow(dead_code))]
    done: Arc<std::sync::atomic::AtomicU64>,
}

impl Checkpointer {
    fn spawn(
        path: &std::path::Path,
        synchronous: &'static str,
        woken: std::sync::mpsc::Receiver<()>,
    ) -> std::io::Result<Checkpointer> {
        let path = path.to_path_buf();
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = done.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-sqlite-checkpoint".into())
            .spawn(move || {
                let mut conn = None;
                while woken.recv().is_ok() {
                    let opened = match conn.take() {
                        Some(c) => Ok(c),
                        None => open(&path, synchronous),
                    };
                    let checkpointed = opened.and_then(|c| {
                        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                        Ok(c)
                    });
                    match checkpointed {
                        Ok(c) => {
                            conn = Some(c);
                            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // The log waits for the next try (or the writer's own).
                        Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed; trying again at the next commit."),
                    }
                }
            })?;
        Ok(Checkpointer {
            thread: Some(thread),
            done,
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many `INSERT`s one connection keeps prepared: two per stream. A schema that
/// changes while Sluice runs changes the SQL; past this, the old ones are let go.
const PREPARED_INSERTS: usize = 64;

/// `sql` prepared on `conn`, from `inserts` or prepared now and kept there.
fn prepared<'a>(
    inserts: &'a mut HashMap<String, Prepared>,
    conn: &rusqlite::Connection,
    sql: &str,
) -> rusqlite::Result<&'a mut Prepared> {
    if !inserts.contains_key(sql) {
        if inserts.len() >= PREPARED_INSERTS {
            inserts.clear();
        }
        inserts.insert(sql.to_owned(), Prepared::new(conn, sql)?);
    }
    inserts
        .get_mut(sql)
        .ok_or_else(|| rusqlite::Error::InvalidParameterName(sql.to_owned()))
}

impl RowConnection {
    /// Writes each of `loads` (its rows) and deletes the dead letters `replayed`, all in
    /// one transaction, blocking the calling thread; how many rows each load stored.
    fn write(
        &self,
        insert: &Inserts,
        has_extra: bool,
        loads: &[(Load, &[Row])],
        replayed: &[i64],
    ) -> Result<Vec<usize>, SinkError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let opened = match slot.as_mut() {
            Some(c) => c,
            None => {
                slot.insert(Opened::open(&self.path, self.synchronous).map_err(rusqlite_error)?)
            }
        };
        let result = write_blocking(opened, insert, has_extra, loads, replayed)
            .map_err(rusqlite_error)
            .and_then(|r| r);
        if result.as_ref().is_err_and(SinkError::is_transient) {
            // Reopen next time: the failure may have been the connection's.
            *slot = None;
        }
        result
    }
}

pub async fn connect(config: &DatabaseConfig) -> Result<Storage, SinkError> {
    let err = sink_error(Dialect::Sqlite);
    let options = SqliteConnectOptions::from_str(&config.url)
        .map_err(&err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.sqlite_synchronous {
            super::SqliteSynchronous::Full => SqliteSynchronous::Full,
            super::SqliteSynchronous::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(BUSY_TIMEOUT);
    let path = options.get_filename().to_path_buf();
    // Processes opening one new database file at once can find it locked beyond the
    // busy timeout (SQLite does not wait on every lock, such as the one that switches
    // the file to WAL): a start-up tries again for a while before it gives up.
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    let (pool, health) = loop {
        match super::open_pools::<sqlx::Sqlite>(config, options.clone(), Dialect::Sqlite).await {
            Err(e) if busy(&e) && started.elapsed() < OPEN_RETRY_FOR => {
                tracing::debug!(error = %e, "The SQLite database is busy; opening it again.");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            opened => break opened?,
        }
    };
    let writer = SqliteFile {
        letters: SqlxInserts {
            pool: pool.clone(),
            dialect: Dialect::Sqlite,
            max_statement_bytes: MAX_STATEMENT_BYTES,
            timestamp: sqlite_timestamp,
        },
        rows: Arc::new(RowConnection {
            path,
            synchronous: match config.sqlite_synchronous {
                super::SqliteSynchronous::Full => "FULL",
                super::SqliteSynchronous::Normal => "NORMAL",
            },
            conn: Mutex::new(None),
        }),
    };
    Ok(Storage {
        writer: Arc::new(writer),
        store: Store::new(
            Pools::Sqlite(pool),
            Pools::Sqlite(health),
            Dialect::Sqlite,
            usize::MAX,
        ),
    })
}

/// A rusqlite error with the class sqlx errors get for the same result codes.
fn rusqlite_error(e: rusqlite::Error) -> SinkError {
    let class = match &e {
        rusqlite::Error::SqliteFailure(f, _) => super::sqlite_class(f.extended_code),
        _ => ErrorClass::Permanent,
    };
    SinkError {
        class,
        source: Box::new(e),
    }
}

fn open(path: &std::path::Path, synchronous: &str) -> rusqlite::Result<rusqlite::Connection> {
    // rusqlite's statement cache (16 by default) keeps the ledger's and replay's few
    // statements; the rows' `INSERT`s are kept apart, in `Opened`.
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// Rows bound to one `INSERT` of several rows: each statement run has a cost of its own
/// (opening the table's cursors, seeking them, resetting the statement), shared out
/// this way. Counted with the `sqlite` stage of `benches/instructions.rs`, per row
/// written: 19,545 instructions with one row per statement, 17,690 with 4, 17,180 with
/// 6, 16,960 with 8, 17,430 with 10, 18,540 with 16, 20,330 with 32 (SQLite
/// allocates more per run of a larger statement). With `OR FAIL` (see [`Inserts`]), 8
/// still beat 16 and 32.
const ROWS_PER_INSERT: usize = 8;

/// The `INSERT`s of a stream's rows: of [`ROWS_PER_INSERT`] rows (fewer when its
/// parameters would pass SQLite's limit), and of one row, for the rest of a batch.
///
/// The one of several rows is `INSERT OR FAIL`: a row refused midway leaves the rows
/// the statement wrote before it, where the default (`ABORT`) takes them back, which
/// needs a statement journal that each run of a statement of several rows kept (600
/// instructions per row written). Those rows never stay: the error ends the write,
/// and the whole transaction is rolled back, as for any failed batch. The error is the
/// same (`SQLITE_CONSTRAINT_…`). Conflicts on the key are still the `ON CONFLICT`
/// clause's.
struct Inserts {
    many: String,
    rows_per: usize,
    one: String,
}

impl Inserts {
    fn of(stream: &Stream) -> Inserts {
        // The columns, `_received_at`, `_extra` if any, `_load_id`.
        let width = stream.columns.len() + 2 + usize::from(stream.has_extra);
        let statement = |rows| {
            Dialect::Sqlite.insert_statement(
                &stream.table,
                &Dialect::Sqlite.column_list(stream),
                width,
                rows,
                &Dialect::Sqlite.on_conflict(stream),
            )
        };
        // SQLite takes at most 32,766 parameters in one statement.
        let rows_per = (32_766 / width).clamp(1, ROWS_PER_INSERT);
        Inserts {
            many: statement(rows_per).replacen("INSERT INTO", "INSERT OR FAIL INTO", 1),
            rows_per,
            one: statement(1),
        }
    }
}

/// The text of one statement's timestamps, UUIDs and `_received_at`s, formatted before
/// any is bound: SQLite reads bound text where it is when the statement runs, so each
/// needs its own place until then.
#[derive(Default)]
struct Texts {
    text: String,
    /// Where each one is in `text`, in the order they are bound.
    ranges: Vec<Range<usize>>,
    /// The last `_received_at` and where its text is: the rows of one request share it.
    received_at: Option<chrono::DateTime<chrono::Utc>>,
    received: Range<usize>,
}

impl Texts {
    /// Formats the texts of `rows`, in the order [`bind_row`] binds them.
    fn format(&mut self, rows: &[Row]) {
        self.text.clear();
        self.ranges.clear();
        self.received_at = None;
        let mut uuid = [0u8; 36];
        for row in rows {
            for cell in &row.cells {
                let start = self.text.len();
                match cell {
                    Cell::Uuid(u) => self.text.push_str(u.encode(&mut uuid)),
                    Cell::Timestamp(t) => push_sqlite_timestamp(&mut self.text, t),
                    _ => continue,
                }
                self.ranges.push(start..self.text.len());
            }
            if self.received_at != Some(row.received_at) {
                let start = self.text.len();
                push_sqlite_timestamp(&mut self.text, &row.received_at);
                self.received = start..self.text.len();
                self.received_at = Some(row.received_at);
            }
            self.ranges.push(self.received.clone());
        }
    }

    /// The formatted texts, in order.
    fn iter(&self) -> impl Iterator<Item = Option<&str>> {
        self.ranges.iter().map(|r| self.text.get(r.clone()))
    }
}

/// The next of a statement's formatted texts; [`Texts::format`] made one for each.
fn next_text<'t>(texts: &mut impl Iterator<Item = Option<&'t str>>) -> rusqlite::Result<&'t str> {
    texts.next().flatten().ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure("a row's text was not formatted".into())
    })
}

/// Binds `row`'s values to the next of `run`'s parameters; its timestamps, UUIDs and
/// `_received_at` from `texts`.
fn bind_row<'t>(
    run: &mut Run<'_, 't>,
    row: &'t Row,
    has_extra: bool,
    load_id: i64,
    texts: &mut impl Iterator<Item = Option<&'t str>>,
) -> rusqlite::Result<()> {
    for cell in &row.cells {
        match cell {
            Cell::Null => run.null()?,
            Cell::Text(s) | Cell::Json(s) => run.text(s)?,
            Cell::Uuid(_) | Cell::Timestamp(_) => run.text(next_text(texts)?)?,
            Cell::Int(n) => run.int(*n)?,
            Cell::Float(f) => run.float(*f)?,
            Cell::Bool(b) => run.int(i64::from(*b))?,
        }
    }
    run.text(next_text(texts)?)?;
    if has_extra {
        match row.extra.as_deref() {
            Some(extra) => run.text(extra)?,
            None => run.null()?,
        }
    }
    run.int(load_id)
}

/// Writes each of `loads` (and deletes the dead letters `replayed`) in one transaction;
/// how many rows each load stored.
fn write_blocking(
    opened: &mut Opened,
    insert: &Inserts,
    has_extra: bool,
    loads: &[(Load, &[Row])],
    replayed: &[i64],
) -> rusqlite::Result<Result<Vec<usize>, SinkError>> {
    let Opened { inserts, conn, .. } = opened;
    // The write lock first: the load ids taken here commit before the next are taken.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Replay: the dead letters go first, all or nothing (see `generic::write_rows`).
    if !replayed.is_empty() {
        let mut delete = tx.prepare_cached(&Dialect::Sqlite.delete_dead_letters(1))?;
        let mut deleted = 0;
        for id in replayed {
            deleted += delete.execute([id])?;
        }
        if deleted != replayed.len() {
            return Ok(Err(SinkError::replay_conflict(replayed.len() - deleted)));
        }
    }
    let mut texts = Texts::default();
    let mut written = Vec::with_capacity(loads.len());
    for (_, rows) in loads {
        let load_id: i64 = tx
            .prepare_cached(&Dialect::Sqlite.next_load_id())?
            .query_row([], |r| r.get(0))?;
        let stored = write_rows(&tx, inserts, &mut texts, insert, has_extra, load_id, rows)?;
        written.push((load_id, stored));
    }
    // The loads commit together: the ledger says so with one time, taken once their
    // rows are in.
    let committed_at = chrono::Utc::now();
    let committed_text = sqlite_timestamp(&committed_at);
    for ((load, _), &(load_id, stored)) in loads.iter().zip(&written) {
        tx.prepare_cached(&Dialect::Sqlite.insert_load())?
            .execute(rusqlite::params![
                load_id,
                load.stream,
                load.table,
                stored as i64,
                load.bytes,
                sqlite_timestamp(&load.first_received_at),
                sqlite_timestamp(&load.last_received_at),
                committed_text.as_str(),
                load.source,
                super::ledger::instance(),
                load.schema_sha256,
            ])?;
        if let Some(pointer) = &load.pointer {
            let moved = tx.execute(
                &Dialect::Sqlite.move_pointer(pointer, Some(load_id), &committed_at),
                [],
            )?;
            if moved != 1 {
                return Ok(Err(SinkError::pointer_moved(&pointer.source)));
            }
        }
    }
    tx.commit()
        .map(|()| Ok(written.into_iter().map(|(_, stored)| stored).collect()))
}

/// Inserts `rows` of load `load_id` in transaction `tx`; how many it stored.
fn write_rows(
    tx: &rusqlite::Transaction<'_>,
    inserts: &mut HashMap<String, Prepared>,
    texts: &mut Texts,
    insert: &Inserts,
    has_extra: bool,
    load_id: i64,
    rows: &[Row],
) -> rusqlite::Result<usize> {
    let mut stored = 0;
    let mut chunks = rows.chunks_exact(insert.rows_per);
    if chunks.len() > 0 {
        let statement = prepared(inserts, tx, &insert.many)?;
        for chunk in &mut chunks {
            texts.format(chunk);
            let mut formatted = texts.iter();
            let mut run = statement.run();
            for row in chunk {
                bind_row(&mut run, row, has_extra, load_id, &mut formatted)?;
            }
            // 0 for an id already stored (`ON CONFLICT DO NOTHING`).
            stored += run.execute()?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let statement = prepared(inserts, tx, &insert.one)?;
        for row in rest {
            texts.format(std::slice::from_ref(row));
            let mut formatted = texts.iter();
            let mut run = statement.run();
            bind_row(&mut run, row, has_extra, load_id, &mut formatted)?;
            stored += run.execute()?;
        }
    }
    Ok(stored)
}

impl SqliteFile {
    /// Writes each of `loads` and deletes the dead letters `replayed`, in one
    /// transaction on the rows' connection; how many rows each load stored.
    async fn write_loads_of(
        &self,
        stream: &Stream,
        loads: Vec<(Load, &[Row])>,
        replayed: &[i64],
    ) -> Result<Vec<usize>, SinkError> {
        let insert = Inserts::of(stream);
        let has_extra = stream.has_extra;
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        if flavor == tokio::runtime::RuntimeFlavor::MultiThread {
            // The rows are borrowed: block this worker (tokio moves its other tasks to
            // the rest) instead of copying every row to a blocking thread.
            return tokio::task::block_in_place(|| {
                self.rows.write(&insert, has_extra, &loads, replayed)
            });
        }
        // A current-thread runtime (tests) cannot block in place: copy the rows.
        let (loads, rows): (Vec<Load>, Vec<Vec<Row>>) = loads
            .into_iter()
            .map(|(load, rows)| (load, rows.to_vec()))
            .unzip();
        let replayed = replayed.to_vec();
        let writer = self.rows.clone();
        tokio::task::spawn_blocking(move || {
            let loads: Vec<(Load, &[Row])> = loads
                .into_iter()
                .zip(rows.iter().map(Vec::as_slice))
                .collect();
            writer.write(&insert, has_extra, &loads, &replayed)
        })
        .await
        .unwrap_or_else(|join| {
            Err(SinkError {
                class: ErrorClass::Transient,
                source: Box::new(join),
            })
        })
    }
}

/// How many batches of a stream one transaction holds at most when they are ready
/// together ([`BatchWriter::batches_per_commit`]): each commit costs SQLite's single
/// writer the log's `fsync`, and the batches' rows wait for it together.
const BATCHES_PER_COMMIT: usize = 4;

impl BatchWriter for SqliteFile {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn batches_per_commit(&self) -> usize {
        BATCHES_PER_COMMIT
    }

    fn write_batch<'a>(&'a self, batch: RowBatch<'a>) -> Written<'a> {
        Box::pin(async move {
            let mut load = Load::of(batch.stream, batch.rows);
            load.pointer = batch.pointer.cloned();
            let stored = self
                .write_loads_of(batch.stream, vec![(load, batch.rows)], batch.replayed)
                .await?;
            Ok(stored.into_iter().sum())
        })
    }

    fn write_loads<'a>(
        &'a self,
        stream: &'a Stream,
        batches: &'a [&'a [Row]],
    ) -> BoxFuture<'a, Result<Vec<usize>, SinkError>> {
        let loads = batches
            .iter()
            .map(|rows| (Load::of(stream, rows), *rows))
            .collect();
        Box::pin(self.write_loads_of(stream, loads, &[]))
    }

    fn write_dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> Written<'a> {
        self.letters.write_dead_letters(letters)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let writer = self.rows.clone();
            let _ = tokio::task::spawn_blocking(move || {
                writer.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
            })
            .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new database `db.db` in `dir`, in WAL mode, with table `t (a TEXT)`; its path
    /// and the connection that made it.
    fn wal_database(dir: &tempfile::TempDir) -> (PathBuf, rusqlite::Connection) {
        let path = dir.path().join("db.db");
        let conn = open(&path, "FULL").expect("open");
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (a TEXT)")
            .expect("create");
        (path, conn)
    }

    /// The statements are finalized before the connection closes: SQLite refuses to
    /// close a connection with statements left, and rusqlite then leaks it, leaving
    /// the WAL behind. A closed last connection removes its WAL file.
    #[test]
    fn closing_the_rows_connection_finalizes_its_statements_and_closes_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, conn) = wal_database(&dir);
        let mut opened = Opened {
            inserts: HashMap::new(),
            conn,
            _checkpointing: None,
        };
        let insert = prepared(
            &mut opened.inserts,
            &opened.conn,
            "INSERT INTO t VALUES (?)",
        )
        .expect("prepare");
        let mut run = insert.run();
        run.text("kept").expect("bind");
        assert_eq!(run.execute().expect("insert"), 1);
        let wal = dir.path().join("db.db-wal");
        assert!(wal.exists(), "the WAL exists while the connection is open");
        drop(opened);
        assert!(!wal.exists(), "the connection was not closed");
    }

    /// The most frames the log at `wal` held: SQLite writes it again from its start
    /// once it is all copied, and never shortens the file (a frame is a 24-byte header
    /// and a 4 KiB page).
    fn most_frames(wal: &std::path::Path) -> u64 {
        std::fs::metadata(wal).map_or(0, |m| m.len()) / (4096 + 24)
    }

    /// The writer's commits leave the copying of the log into the database to the
    /// checkpointer thread, woken past 1,000 frames; the log stays about twice that
    /// while many more frames are written, and closing the connection stops the thread
    /// and removes the log.
    #[test]
    fn the_log_is_checkpointed_by_the_checkpointer_thread_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, made) = wal_database(&dir);
        drop(made);
        let opened = Opened::open(&path, "FULL").expect("open");
        let value = "x".repeat(100_000);
        let wal = dir.path().join("db.db-wal");
        // About 25 frames (4 KiB pages) per commit, 6,000 frames in all.
        for _ in 0..240 {
            opened
                .conn
                .execute("INSERT INTO t VALUES (?1)", [&value])
                .expect("insert");
        }
        let (_, checkpointer) = opened._checkpointing.as_ref().expect("started");
        let done = checkpointer.done.load(std::sync::atomic::Ordering::Relaxed);
        assert!(done >= 1, "the checkpointer ran {done} checkpoints");
        // The writer copies what is left at 2,000 frames, and the log starts again; a
        // few commits more when the checkpointer held the checkpoint then (the
        // writer's passive checkpoint gives way to it). Without the writer's part the
        // log grew to 6,360 frames here.
        let most = most_frames(&wal);
        assert!(most < 3000, "the log reached {most} frames");
        drop(opened);
        assert!(!wal.exists(), "a connection was left open");
        let conn = rusqlite::Connection::open(&path).expect("open");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 240);
    }

    /// Transactions larger than the writer's threshold (here about 1,470 frames each)
    /// still leave a bounded log: the writer copies what is left once the log holds
    /// about three of them (5,888 frames here; 4,416 when the writer's threshold did
    /// not grow with them), the checkpointer copying meanwhile.
    #[test]
    fn large_transactions_keep_the_log_bounded_by_a_few_of_them() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, made) = wal_database(&dir);
        drop(made);
        let mut opened = Opened::open(&path, "FULL").expect("open");
        let value = "x".repeat(100_000);
        let wal = dir.path().join("db.db-wal");
        // About 25 frames per row, 60 rows per transaction: 1,500 frames each.
        for _ in 0..12 {
            let tx = opened.conn.transaction().expect("begin");
            for _ in 0..60 {
                tx.execute("INSERT INTO t VALUES (?1)", [&value])
                    .expect("insert");
            }
            tx.commit().expect("commit");
        }
        let most = most_frames(&wal);
        assert!(
            most > 2100,
            "the log never held two transactions: {most} frames"
        );
        assert!(most < 7000, "the log reached {most} frames");
        drop(opened);
        let conn = rusqlite::Connection::open(&path).expect("open");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 720);
    }
}
