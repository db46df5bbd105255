//! The storage layer: where batches go, and everything else Sluice asks of the
//! database. Each database has a [`BatchWriter`] for the hot path (each write atomic, the
//! whole batch or nothing, its error classified as transient: retry the same batch, or
//! permanent: the data is at fault, isolate the bad rows); the [`Store`] is shared by all
//! three (DDL, reads, purges, replay bookkeeping, health). [`connect`] gives both.
//!
//! In: batches of [`Row`]s and [`DeadLetter`]s. Out: committed rows, or a [`SinkError`].
//! A new database: a dialect in [`dialect`], a writer module, and a [`store::Pools`] arm.

pub mod dialect;
pub mod evolution;
mod generic;
pub mod ledger;
mod mysql;
mod open;
pub mod postgres;
mod settings;
mod sqlite;
mod sqlite_raw;
pub mod store;
mod upsert;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::{DeadLetter, Row};
use crate::schema::Stream;
pub use dialect::Dialect;
pub use open::{connect_redacted, open, prepare_tables, redact, redact_in};
pub use settings::{DatabaseConfig, SqliteSynchronous, DEFAULT_WRITE_TIMEOUT};
pub use store::Store;

/// A boxed future, so that [`BatchWriter`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A write in progress: done once its transaction committed (or failed), with how many
/// rows it stored (fewer than it was given when `id_field` skipped ids already stored).
pub type Written<'a> = BoxFuture<'a, Result<usize, SinkError>>;

/// What a failed write means, and so what the batcher does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database is unreachable, overloaded, restarting or locked, or refuses the
    /// connection itself (authentication, missing database: then not even a dead letter
    /// can be stored): retry the same batch with backoff.
    Transient,
    /// The data is at fault (constraint, range, invalid text): retrying cannot help;
    /// bisect the batch to isolate the rows the database refuses.
    Permanent,
    /// The statement no longer fits the table, or the user may not run it (a missing
    /// table, column or unique key, a privilege, a type the server lacks): no retry
    /// and no row of the batch can succeed until an operator acts, so every row is
    /// dead-lettered with the database's message at once, and the stream is reported
    /// as failing its writes.
    Setup,
}

/// A failed database operation and its class.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct SinkError {
    pub class: ErrorClass,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

/// Connections of a sink's pool at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections checked out for a statement or transaction.
    pub in_use: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// The pool's upper bound (`database.max_connections`).
    pub max: u32,
}

impl PoolUsage {
    fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolUsage {
        let size = pool.size();
        let idle = u32::try_from(pool.num_idle()).unwrap_or(size).min(size);
        PoolUsage {
            in_use: size - idle,
            idle,
            max: pool.options().get_max_connections(),
        }
    }
}

/// A database's hot path: writing batches of stream rows and of dead letters, each in
/// one transaction, with the error classified. One per database; everything else the
/// database does is the shared [`Store`]'s.
pub trait BatchWriter: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;
    /// How many batches of one stream are written at once, each on its own connection.
    /// SQLite has a single writer, so more would only wait for its lock. A batch spends
    /// about a third of its write in round trips (the load's first statements, the
    /// start of the COPY, the commit) during which its connection's server process
    /// waits: with two at once, both were sometimes waiting together and a fifth of the
    /// CPU idle; with three, PostgreSQL took 15–30 % more events per second (see
    /// BENCHMARKS.md), and a fourth added nothing measurable.
    fn write_concurrency(&self) -> usize {
        match self.dialect() {
            Dialect::Sqlite => 1,
            Dialect::Postgres | Dialect::Mysql => 3,
        }
    }
    /// How many batches of one stream one transaction may hold, when more than one is
    /// ready by the time the last write ends (the writer has fallen behind): each is a
    /// load of its own, with its own ledger row, but they share the transaction's
    /// commit. SQLite's single writer spends a commit (the log's `fsync`) per
    /// transaction; the others write batches side by side instead.
    fn batches_per_commit(&self) -> usize {
        1
    }
    /// Writes each of `batches` (rows of `stream`) as a load of its own, all in one
    /// transaction; how many rows each stored. Only for a writer whose
    /// [`Self::batches_per_commit`] is above 1: the others refuse, and the batcher then
    /// writes the batches one by one.
    fn write_loads<'a>(
        &'a self,
        stream: &'a Stream,
        batches: &'a [&'a [Row]],
    ) -> BoxFuture<'a, Result<Vec<usize>, SinkError>> {
        let _ = (stream, batches);
        Box::pin(async move {
            Err(SinkError {
                class: ErrorClass::Permanent,
                source: "this database writes one batch per transaction".into(),
            })
        })
    }
    /// Writes `rows` to `stream`'s table in one transaction: [`Self::write_batch`] with
    /// no dead letters to delete, which each writer keeps on its fast path.
    fn write_rows<'a>(&'a self, stream: &'a Stream, rows: &'a [Row]) -> Written<'a> {
        self.write_batch(RowBatch {
            stream,
            rows,
            replayed: &[],
            pointer: None,
        })
    }
    /// Writes the batch's rows and deletes the dead letters they came from (`replayed`:
    /// none on the live path, the replayed ones for a replay), in one transaction;
    /// [`ReplayConflict`] if some of those dead letters were already gone.
    fn write_batch<'a>(&'a self, batch: RowBatch<'a>) -> Written<'a>;
    /// Writes `letters` to `sluice_dead_letters` in one transaction.
    fn write_dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> Written<'a>;
    /// Releases what the writer holds beside the pools (SQLite's row connection).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Rows of one stream to write in one transaction, with the ids of the dead letters
/// they are replayed from (empty outside replay), deleted in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct RowBatch<'a> {
    pub stream: &'a Stream,
    pub rows: &'a [Row],
    pub replayed: &'a [i64],
    /// A pulled source's pointer after these rows, saved in `sluice_pointers` in the
    /// same transaction.
    pub pointer: Option<&'a ledger::Pointer>,
}

impl<'a> RowBatch<'a> {
    /// The stream, the rows and the replayed dead letters' ids.
    pub fn parts(self) -> (&'a Stream, &'a [Row], &'a [i64]) {
        (self.stream, self.rows, self.replayed)
    }
}

/// The database: its batch writer and the shared store.
#[derive(Clone)]
pub struct Storage {
    pub writer: Arc<dyn BatchWriter>,
    pub store: Arc<Store>,
}

impl Storage {
    /// Closes the writer and the pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.store.close().await;
    }
}

/// Which dead letters to read: those after `after_id`, oldest first.
#[derive(Debug, Clone)]
pub struct DeadLetterPage {
    pub after_id: i64,
    pub stream: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only `route`-stage dead letters (named no known stream), with or without a
    /// stream; otherwise only dead letters that name a stream.
    pub route: bool,
    /// Only dead letters of this stage (`parse`, `validate`, `write`, `route`).
    pub stage: Option<String>,
    pub limit: i64,
}

/// Replay: some of the dead letters a batch replays were deleted since they were read
/// (another replay took them), so the batch wrote nothing.
#[derive(Debug, thiserror::Error)]
#[error("{missing} of these dead letters were already replayed by another run")]
pub struct ReplayConflict {
    pub missing: usize,
}

impl SinkError {
    /// The error of a replay batch whose dead letters were partly gone.
    pub fn replay_conflict(missing: usize) -> SinkError {
        SinkError {
            class: ErrorClass::Permanent,
            source: Box::new(ReplayConflict { missing }),
        }
    }

    /// A load whose registration expired before it could commit (the writer was stuck
    /// for longer than `[ledger] in_flight_timeout`): retried as a new load.
    /// A pulled source's pointer was moved by another run while this one loaded.
    pub fn pointer_moved(source: &str) -> SinkError {
        SinkError {
            class: ErrorClass::Permanent,
            source: format!("the pointer of source `{source}` was moved by another run (on another instance?) while this one was loading; nothing of this load was committed, and the next run starts from the new pointer").into(),
        }
    }

    pub fn load_expired(load_id: i64) -> SinkError {
        SinkError {
            class: ErrorClass::Transient,
            source: format!("load {load_id} could not commit: it was registered longer ago than [ledger] in_flight_timeout (it is written again as a new load), or, for a pulled source, another run moved the source's pointer").into(),
        }
    }

    /// Whether this is a [`ReplayConflict`].
    pub fn is_replay_conflict(&self) -> bool {
        self.source.downcast_ref::<ReplayConflict>().is_some()
    }
}

/// Hands the rows of a transform's last query (JSON objects' texts) to their publisher,
/// inside the run's transaction: an error rolls the run back.
pub type Publish<'a> = &'a (dyn Fn(Vec<String>) -> PublishFuture<'a> + Sync);
pub type PublishFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Which dead letters to purge.
#[derive(Debug, Clone)]
pub struct PurgeFilter {
    pub stream: Option<String>,
    pub stage: Option<String>,
    /// Only those received before this time.
    pub before: Option<chrono::DateTime<chrono::Utc>>,
    /// Most rows one statement deletes, so a purge never holds long locks.
    pub limit: i64,
}

/// Filters of `GET /v1/dead-letters`.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only ids below this (keyset pagination, newest first).
    pub before: Option<i64>,
    pub stream: Option<String>,
    pub stage: Option<String>,
    /// Only those received at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only those received before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: i64,
}

/// A dead letter, whole, as `GET /v1/dead-letters` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ListedDeadLetter {
    /// Its id; pass the last one of a page as `before` to get the next page.
    pub id: i64,
    /// The stream, `null` when the event named no known stream.
    pub stream: Option<String>,
    /// `parse`, `route`, `validate` or `write`.
    #[schema(value_type = crate::event::Stage)]
    pub stage: String,
    /// Why the event was set aside, with the JSON pointer for schema errors.
    pub error: String,
    /// The event's original text (see the README, "Dead letters and replay", for non-UTF-8 bytes).
    pub payload: String,
    /// Where it came from, e.g. `http 127.0.0.1:50412`.
    pub source: Option<String>,
    /// When Sluice received it.
    pub received_at: String,
    /// How many times it was tried (replays included).
    pub attempts: i64,
}

/// What a job is and when it ran, the same in its record and in the API's view of it.
/// Times are RFC 3339 text (UTC, milliseconds).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct JobHeader {
    pub id: String,
    pub kind: String,
    /// `ready`, `running`, `completed`, `failed` or `cancelled`.
    pub state: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A row of `sluice_jobs`: a background job as recorded. Timestamps are RFC 3339 text
/// (UTC, milliseconds), and the structured fields JSON text, so the table is the same
/// in every database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRecord {
    pub header: JobHeader,
    /// The job's parameters, JSON.
    pub params: String,
    pub done: i64,
    pub total: i64,
    /// The job's result so far, JSON.
    pub result: String,
    /// Log lines, a JSON array of strings (bounded).
    pub logs: String,
    /// Errors, a JSON array of strings (bounded).
    pub errors: String,
    /// When the instance running the job last recorded it (every 500 ms while it runs):
    /// a running job whose heartbeat stopped belongs to an instance that is gone.
    pub heartbeat_at: Option<String>,
}

/// A dead letter as stored, with what replay needs.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    /// `None` for a `route`-stage dead letter that named no known stream.
    pub stream: Option<String>,
    pub payload: String,
    /// Where it came from (`tcp …` lines still carry their routing field).
    pub source: Option<String>,
    /// When Sluice first accepted the event, RFC 3339.
    pub received_at: String,
    /// Whether the payload is treated (`x-sluice-privacy`) already.
    pub treated: bool,
}

/// The writers' pool (up to `database.max_connections`) and the store's health pool
/// (one connection, opened when first used) for one database's connect `options`.
async fn open_pools<DB: sqlx::Database>(
    config: &DatabaseConfig,
    options: <DB::Connection as sqlx::Connection>::Options,
    dialect: Dialect,
) -> Result<(sqlx::Pool<DB>, sqlx::Pool<DB>), SinkError> {
    let health = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(1)
        .acquire_timeout(config.acquire_timeout)
        .connect_lazy_with(options.clone());
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(sink_error(dialect))?;
    Ok((pool, health))
}

/// Connects to the configured database.
pub async fn connect(config: &DatabaseConfig) -> Result<Storage, SinkError> {
    let dialect = Dialect::from_url(&config.url).map_err(|m| SinkError {
        class: ErrorClass::Permanent,
        source: m.into(),
    })?;
    Ok(match dialect {
        Dialect::Sqlite => sqlite::connect(config).await?,
        Dialect::Postgres => postgres::connect(config).await?,
        Dialect::Mysql => mysql::connect(config).await?,
    })
}

/// PostgreSQL SQLSTATEs (a whole code, or a two-character class) and the class of a
/// write that fails with them; the longest match wins, anything else is
/// [`ErrorClass::Permanent`] (22 data exception, 23 integrity constraint, ...).
pub const POSTGRES_CLASSES: &[(&str, ErrorClass)] = &[
    ("08", ErrorClass::Transient),    // connection exception
    ("53", ErrorClass::Transient),    // insufficient resources (disk full, too many connections)
    ("57", ErrorClass::Transient),    // operator intervention (shutdown, cancel, starting up)
    ("58", ErrorClass::Transient),    // system error (I/O)
    ("55", ErrorClass::Transient),    // object not in prerequisite state (lock not available)
    ("28", ErrorClass::Transient),    // invalid authorization: nothing can be stored
    ("3D", ErrorClass::Transient),    // the database does not exist: nothing can be stored
    ("40001", ErrorClass::Transient), // serialization failure
    ("40P01", ErrorClass::Transient), // deadlock detected
    ("25006", ErrorClass::Transient), // read-only transaction (a standby during failover)
    ("42", ErrorClass::Setup),        // missing table, column or unique key; insufficient privilege
    ("0A", ErrorClass::Setup),        // feature not supported by this server
];

/// MySQL/MariaDB error numbers and the class of a write that fails with them; anything
/// else is [`ErrorClass::Permanent`] (1062 duplicate, 1406 too long, 1264 out of range,
/// 1366 incorrect value, ...).
pub const MYSQL_CLASSES: &[(u16, ErrorClass)] = &[
    (1040, ErrorClass::Transient), // too many connections
    (1053, ErrorClass::Transient), // server shutdown in progress
    (1205, ErrorClass::Transient), // lock wait timeout
    (1213, ErrorClass::Transient), // deadlock
    (1290, ErrorClass::Transient), // --read-only
    (1836, ErrorClass::Transient), // read-only mode
    (1317, ErrorClass::Transient), // query interrupted
    (1927, ErrorClass::Transient), // connection killed
    (1158, ErrorClass::Transient), // network read error
    (1159, ErrorClass::Transient), // network read timeout
    (1160, ErrorClass::Transient), // network write error
    (1161, ErrorClass::Transient), // network write timeout
    (2002, ErrorClass::Transient), // cannot connect (socket)
    (2003, ErrorClass::Transient), // cannot connect (TCP)
    (2006, ErrorClass::Transient), // server has gone away
    (2013, ErrorClass::Transient), // lost connection during query
    (1044, ErrorClass::Transient), // access denied to the database: nothing can be stored
    (1045, ErrorClass::Transient), // access denied (authentication): nothing can be stored
    (1049, ErrorClass::Transient), // unknown database: nothing can be stored
    (1146, ErrorClass::Setup),     // no such table
    (1054, ErrorClass::Setup),     // unknown column
    (1142, ErrorClass::Setup),     // command denied on the table
    (1143, ErrorClass::Setup),     // column access denied
    (1064, ErrorClass::Setup),     // syntax this server does not understand
    (1170, ErrorClass::Setup),     // a text column in a key without a length
];

/// SQLite primary result codes and the class of a write that fails with them; anything
/// else is [`ErrorClass::Permanent`] (19 CONSTRAINT, 20 MISMATCH, 18 TOOBIG, 25 RANGE).
/// The statements Sluice writes with are plain `INSERT`s of bound values, so the
/// generic ERROR means the statement no longer fits the table (no such table or column,
/// an `ON CONFLICT` without its unique key).
pub const SQLITE_CLASSES: &[(i32, ErrorClass)] = &[
    (5, ErrorClass::Transient),  // BUSY
    (6, ErrorClass::Transient),  // LOCKED
    (8, ErrorClass::Transient),  // READONLY (the file or its directory)
    (10, ErrorClass::Transient), // IOERR
    (13, ErrorClass::Transient), // FULL (the disk)
    (14, ErrorClass::Transient), // CANTOPEN
    (15, ErrorClass::Transient), // PROTOCOL (a lock protocol race)
    (1, ErrorClass::Setup),      // ERROR: no such table or column, no matching unique key
    (23, ErrorClass::Setup),     // AUTH
];

/// The class of a PostgreSQL SQLSTATE ([`POSTGRES_CLASSES`]).
pub fn postgres_class(code: &str) -> ErrorClass {
    POSTGRES_CLASSES
        .iter()
        .filter(|(prefix, _)| code.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(ErrorClass::Permanent, |(_, class)| *class)
}

/// The class of a MySQL/MariaDB error number ([`MYSQL_CLASSES`]).
pub fn mysql_class(number: u16) -> ErrorClass {
    MYSQL_CLASSES
        .iter()
        .find(|(n, _)| *n == number)
        .map_or(ErrorClass::Permanent, |(_, class)| *class)
}

/// The class of an SQLite result code, primary or extended ([`SQLITE_CLASSES`]).
pub fn sqlite_class(code: i32) -> ErrorClass {
    SQLITE_CLASSES
        .iter()
        .find(|(c, _)| *c == code & 0xff)
        .map_or(ErrorClass::Permanent, |(_, class)| *class)
}

/// Classifies a driver error from its kind and SQLSTATE / error number, never its text.
pub fn classify(dialect: Dialect, e: &sqlx::Error) -> ErrorClass {
    use sqlx::Error as E;
    match e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => ErrorClass::Transient,
        E::Database(db) => match dialect {
            Dialect::Postgres => postgres_class(&db.code().unwrap_or_default()),
            Dialect::Mysql => mysql_class(
                db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .map(|e| e.number())
                    .unwrap_or_default(),
            ),
            Dialect::Sqlite => sqlite_class(sqlite_code(e).unwrap_or_default()),
        },
        _ => ErrorClass::Permanent,
    }
}

/// SQLite's result code of `e` (extended codes reduced to their primary one), when the
/// database answered it.
pub(crate) fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db.code()?.parse::<i32>().ok().map(|c| c & 0xff),
        _ => None,
    }
}

/// Wraps a driver error with its class.
pub(crate) fn sink_error(dialect: Dialect) -> impl Fn(sqlx::Error) -> SinkError {
    move |source| SinkError {
        class: classify(dialect, &source),
        source: Box::new(source),
    }
}

/// Splits `items` into chunks that stay under `max_params` bound values and roughly
/// `max_bytes` of payload, so one statement never exceeds the database's limits.
///
/// Every chunk holds a power-of-two number of rows. Each chunk size is a distinct
/// statement text, and drivers cache a prepared statement per text and connection; with
/// arbitrary sizes that cache grew by megabytes under a flood (measured), with powers
/// of two a table has at most a handful of shapes.
pub(crate) fn chunks_by<T>(
    items: &[T],
    width: usize,
    max_params: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let max_rows = prev_power_of_two((max_params / width.max(1)).max(1));
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len() && end - start < max_rows {
            let s = size(&items[end]);
            if end > start && bytes + s > max_bytes {
                break;
            }
            bytes += s;
            end += 1;
        }
        let n = prev_power_of_two(end - start);
        out.push(&items[start..start + n]);
        start += n;
    }
    out
}

/// The largest power of two not above `n` (`n` >= 1).
fn prev_power_of_two(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_param_and_byte_limits_in_powers_of_two() {
        let lens = |c: Vec<&[usize]>| c.iter().map(|c| c.len()).collect::<Vec<_>>();
        let items = [10usize; 10];
        assert_eq!(
            lens(chunks_by(&items, 3, 9, 1000, |s| *s)),
            vec![2, 2, 2, 2, 2]
        );
        assert_eq!(lens(chunks_by(&items, 1, 1000, 1000, |s| *s)), vec![8, 2]);
        assert_eq!(
            lens(chunks_by(&items, 1, 1000, 25, |s| *s)),
            vec![2, 2, 2, 2, 2]
        );
        let big = [100usize, 1, 1];
        assert_eq!(lens(chunks_by(&big, 1, 1000, 10, |s| *s)), vec![1, 2]);
        assert_eq!(
            lens(chunks_by(&[1usize; 1000], 3, 65_535, usize::MAX, |s| *s)),
            vec![512, 256, 128, 64, 32, 8]
        );
    }

    #[test]
    fn each_postgres_sqlstate_has_its_class() {
        use ErrorClass::*;
        for (code, class) in [
            ("08006", Transient), // connection failure
            ("53100", Transient), // disk full
            ("57P01", Transient), // admin shutdown
            ("58030", Transient), // I/O error
            ("55P03", Transient), // lock not available
            ("28P01", Transient), // invalid password
            ("3D000", Transient), // invalid catalog name
            ("40001", Transient), // serialization failure
            ("40P01", Transient), // deadlock
            ("25006", Transient), // read-only transaction
            ("42P10", Setup),     // ON CONFLICT without a matching unique key
            ("42703", Setup),     // undefined column
            ("42P01", Setup),     // undefined table
            ("42501", Setup),     // insufficient privilege
            ("0A000", Setup),     // feature not supported
            ("23505", Permanent), // unique violation
            ("23502", Permanent), // not null violation
            ("22P02", Permanent), // invalid text representation
            ("22003", Permanent), // numeric value out of range
            ("40002", Permanent), // integrity constraint at commit
            ("25P02", Permanent), // in failed transaction
        ] {
            assert_eq!(postgres_class(code), class, "{code}");
        }
        for (prefix, class) in POSTGRES_CLASSES {
            assert_eq!(postgres_class(&format!("{prefix:0<5}")), *class, "{prefix}");
        }
    }

    #[test]
    fn each_mysql_error_number_has_its_class() {
        for (number, class) in MYSQL_CLASSES {
            assert_eq!(mysql_class(*number), *class, "{number}");
        }
        for number in [1062, 1406, 1264, 1366, 1048, 1292, 0] {
            assert_eq!(mysql_class(number), ErrorClass::Permanent, "{number}");
        }
    }

    #[test]
    fn each_sqlite_result_code_has_its_class_extended_codes_included() {
        for (code, class) in SQLITE_CLASSES {
            assert_eq!(sqlite_class(*code), *class, "{code}");
        }
        assert_eq!(sqlite_class(517), ErrorClass::Transient, "BUSY_SNAPSHOT");
        assert_eq!(sqlite_class(266), ErrorClass::Transient, "IOERR_READ");
        assert_eq!(
            sqlite_class(2067),
            ErrorClass::Permanent,
            "CONSTRAINT_UNIQUE"
        );
        assert_eq!(sqlite_class(20), ErrorClass::Permanent, "MISMATCH");
    }

    #[test]
    fn io_and_pool_errors_are_transient_decode_errors_are_not() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert_eq!(classify(Dialect::Postgres, &io), ErrorClass::Transient);
        assert_eq!(
            classify(Dialect::Mysql, &sqlx::Error::PoolTimedOut),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(Dialect::Sqlite, &sqlx::Error::RowNotFound),
            ErrorClass::Permanent
        );
    }
}
