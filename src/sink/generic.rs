//! SQL run through sqlx, generic over the database: batch writes as multi-row
//! `INSERT`s with bound values (MySQL/MariaDB rows, SQLite and MySQL dead letters; one
//! transaction per batch, chunked under the database's bound-parameter and
//! statement-size limits), and the shared store's reads, DDL and purges.

use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row as _, Type};

use super::dialect::{Dialect, DEAD_LETTERS, DEAD_LETTER_COLUMNS};
use super::ledger::{self, Load};
use super::{
    chunks_by, classify, sink_error, BatchWriter, DeadLetterPage, DeadLetterQuery, JobHeader,
    JobRecord, ListedDeadLetter, PurgeFilter, RowBatch, SinkError, StoredDeadLetter, Written,
};
use crate::event::{Cell, DeadLetter};
use crate::schema::Stream;
use crate::sink::evolution::ExistingColumn;

/// Defines a function generic over the sqlx database `DB`, with the bounds every
/// function here needs (SQLite, PostgreSQL and MySQL meet them all), written once.
macro_rules! sqlx_generic {
    ($(#[$attr:meta])* $vis:vis async fn $name:ident<DB>($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$attr])*
        $vis async fn $name<DB>($($arg: $ty),*) -> $ret
        where
            DB: Database,
            for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
            for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
            for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
            for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
            for<'q> &'q str: Encode<'q, DB> + Type<DB>,
            for<'q> String: Encode<'q, DB> + Type<DB>,
            for<'q> i64: Encode<'q, DB> + Type<DB>,
            for<'q> i32: Encode<'q, DB> + Type<DB>,
            for<'q> f64: Encode<'q, DB> + Type<DB>,
            for<'q> bool: Encode<'q, DB> + Type<DB>,
            for<'r> i64: Decode<'r, DB>,
            for<'r> bool: Decode<'r, DB>,
            for<'r> String: Decode<'r, DB> + Type<DB>,
            usize: ColumnIndex<DB::Row>,
            DB::QueryResult: RowsAffected,
        $body
    };
}

/// The number of rows a statement changed, for the databases written through here
/// (sqlx has no common trait for it).
pub trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// Runs `work` while this process holds the database's schema lock
/// ([`Dialect::schema_lock`]), on a connection of its own that is closed afterwards (so
/// the lock cannot outlive it, even if releasing fails).
pub async fn under_schema_lock<DB, T>(
    pool: &Pool<DB>,
    dialect: Dialect,
    work: impl std::future::Future<Output = T>,
) -> Result<T, SinkError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    use sqlx::Connection as _;
    let Some((lock, unlock)) = dialect.schema_lock() else {
        return Ok(work.await);
    };
    let err = sink_error(dialect);
    let mut conn = pool.acquire().await.map_err(&err)?.detach();
    let (granted,): (Option<i64>,) = sqlx::query_as(lock)
        .fetch_one(&mut conn)
        .await
        .map_err(&err)?;
    if granted != Some(1) {
        return Err(SinkError {
            class: super::ErrorClass::Transient,
            source: "another Sluice held the schema lock for 600 s (is one stuck in start-up DDL?)"
                .into(),
        });
    }
    let out = work.await;
    if let Err(e) = sqlx::query(unlock).execute(&mut conn).await {
        tracing::warn!(error = %e, "Releasing the schema lock failed; closing its connection releases it.");
    }
    let _ = conn.close().await;
    Ok(out)
}

/// The DDL that `prepare` runs: the dead-letter table, then every stream's table.
pub fn ddl(dialect: Dialect, streams: &[std::sync::Arc<Stream>]) -> Vec<String> {
    let mut statements = dialect.create_dead_letters();
    statements.push(dialect.create_jobs());
    statements.extend(streams.iter().map(|s| dialect.create_table(s)));
    statements
}

sqlx_generic! {
/// Runs `statements` one after the other on the pool.
pub async fn execute_all<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    statements: Vec<String>,
) -> Result<(), SinkError> {
    for sql in statements {
        sqlx::query::<DB>(&sql)
            .execute(pool)
            .await
            .map_err(sink_error(dialect))?;
    }
    Ok(())
}
}

/// Binds the filters of `page` in the order the dialect's replayable-page statements
/// take them: after id, [stream], [since], [stage].
fn bind_page<'q, DB, O>(
    q: sqlx::query::QueryAs<'q, DB, O, DB::Arguments<'q>>,
    page: &'q DeadLetterPage,
    timestamp: TimestampText,
) -> sqlx::query::QueryAs<'q, DB, O, DB::Arguments<'q>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    let mut q = q.bind(page.after_id);
    if let Some(stream) = &page.stream {
        q = q.bind(stream.as_str());
    }
    if let Some(since) = &page.since {
        q = q.bind(timestamp(since));
    }
    if let Some(stage) = &page.stage {
        q = q.bind(stage.as_str());
    }
    q
}

sqlx_generic! {
/// Counts the replayable dead letters a page walk would read.
pub async fn count_dead_letters<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    timestamp: TimestampText,
    page: &DeadLetterPage,
) -> Result<i64, SinkError> {
    let sql = dialect.count_dead_letters(page);
    let q = bind_page(sqlx::query_as::<DB, (i64,)>(&sql), page, timestamp);
    let (count,) = q.fetch_one(pool).await.map_err(sink_error(dialect))?;
    Ok(count)
}
}

sqlx_generic! {
/// Reads a page of replayable dead letters.
pub async fn fetch_dead_letters<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    timestamp: TimestampText,
    page: &DeadLetterPage,
) -> Result<Vec<StoredDeadLetter>, SinkError> {
    let err = sink_error(dialect);
    let sql = dialect.select_dead_letters(page);
    type Columns = (i64, Option<String>, String, String, Option<String>, bool);
    let q = bind_page(sqlx::query_as::<DB, Columns>(&sql), page, timestamp);
    let rows = q.bind(page.limit).fetch_all(pool).await.map_err(&err)?;
    Ok(rows
        .into_iter()
        .map(|(id, stream, payload, received_at, source, treated)| StoredDeadLetter {
            id,
            stream,
            payload,
            source,
            received_at,
            treated,
        })
        .collect())
}
}

sqlx_generic! {
/// The columns of `table` (empty if it does not exist).
pub async fn describe_table<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    table: &str,
) -> Result<Vec<ExistingColumn>, SinkError> {
    let err = sink_error(dialect);
    let rows = sqlx::query::<DB>(dialect.describe_table())
        .bind(table)
        .fetch_all(pool)
        .await
        .map_err(&err)?;
    rows.iter()
        .map(|r| {
            Ok(ExistingColumn {
                name: r.try_get(0)?,
                nullable: r.try_get::<String, _>(1)? == "YES",
                data_type: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(&err)
}
}

sqlx_generic! {
/// Whether `table` holds at least one row.
pub async fn table_has_rows<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    table: &str,
) -> Result<bool, SinkError> {
    let sql = dialect.probe_rows(table);
    let row = sqlx::query::<DB>(&sql)
        .fetch_optional(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(row.is_some())
}
}

sqlx_generic! {
/// Whether `table` has a unique key on exactly `columns`, in any order
/// ([`Dialect::unique_key_columns`]).
pub async fn has_unique_key<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    table: &str,
    columns: &[String],
) -> Result<bool, SinkError> {
    let rows: Vec<(String, String)> = sqlx::query_as::<DB, (String, String)>(dialect.unique_key_columns())
        .bind(table)
        .fetch_all(pool)
        .await
        .map_err(sink_error(dialect))?;
    let mut keys: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for (key, column) in rows {
        keys.entry(key).or_default().insert(column);
    }
    let wanted: std::collections::BTreeSet<String> = columns.iter().cloned().collect();
    Ok(keys.values().any(|key| *key == wanted))
}
}

sqlx_generic! {
/// The one integer a query such as `SELECT COUNT(*) …` answers (0 for NULL).
pub async fn scalar<DB>(pool: &Pool<DB>, dialect: Dialect, sql: &str) -> Result<i64, SinkError> {
    let row = sqlx::query::<DB>(sql)
        .fetch_one(pool)
        .await
        .map_err(sink_error(dialect))?;
    let value: Option<i64> = row.try_get(0).map_err(sink_error(dialect))?;
    Ok(value.unwrap_or(0))
}
}

sqlx_generic! {
/// The newest dead letters first.
pub async fn list_dead_letters<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    timestamp: TimestampText,
    query: &DeadLetterQuery,
) -> Result<Vec<ListedDeadLetter>, SinkError> {
    let err = sink_error(dialect);
    let sql = dialect.list_dead_letters(
        query.before.is_some(),
        query.stream.is_some(),
        query.stage.is_some(),
        query.since.is_some(),
        query.until.is_some(),
    );
    type Columns = (i64, Option<String>, String, String, String, Option<String>, String, i64);
    let mut q = sqlx::query_as::<DB, Columns>(&sql);
    if let Some(before) = query.before {
        q = q.bind(before);
    }
    for text in [&query.stream, &query.stage].into_iter().flatten() {
        q = q.bind(text.as_str());
    }
    for time in [&query.since, &query.until].into_iter().flatten() {
        q = q.bind(timestamp(time));
    }
    let rows = q.bind(query.limit).fetch_all(pool).await.map_err(&err)?;
    Ok(rows
        .into_iter()
        .map(
            |(id, stream, stage, error, payload, source, received_at, attempts)| ListedDeadLetter {
                id,
                stream,
                stage,
                error,
                payload,
                source,
                received_at,
                attempts,
            },
        )
        .collect())
}
}

sqlx_generic! {
/// Deletes one batch of the oldest dead letters matching `filter`.
pub async fn purge_dead_letters<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    timestamp: TimestampText,
    filter: &PurgeFilter,
) -> Result<u64, SinkError> {
    let sql = dialect.purge_dead_letters(
        filter.stream.is_some(),
        filter.stage.is_some(),
        filter.before.is_some(),
    );
    let mut q = sqlx::query::<DB>(&sql);
    for text in [&filter.stream, &filter.stage].into_iter().flatten() {
        q = q.bind(text.as_str());
    }
    if let Some(before) = &filter.before {
        q = q.bind(timestamp(before));
    }
    let done = q
        .bind(filter.limit)
        .execute(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(done.rows())
}
}

sqlx_generic! {
/// Counts one more failed replay of dead letter `id`, with its new reason, and its
/// payload treated when `treated` is given.
pub async fn record_replay_failure<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    id: i64,
    error: &str,
    treated: Option<&str>,
) -> Result<(), SinkError> {
    let sql = match treated {
        None => dialect.record_replay_failure(),
        Some(_) => dialect.record_treated_replay_failure(),
    };
    let mut q = sqlx::query::<DB>(&sql).bind(error);
    if let Some(payload) = treated {
        q = q.bind(payload);
    }
    q.bind(id)
        .execute(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(())
}
}

/// Formats a timestamp the way the database's timestamp column reads it from text.
pub type TimestampText = fn(&DateTime<Utc>) -> String;

sqlx_generic! {
/// Writes `rows` to `stream`'s table as one load, and deletes the dead letters
/// `replayed` (those the rows came from, when replaying), in one transaction.
pub async fn write_rows<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    max_statement_bytes: usize,
    timestamp: TimestampText,
    batch: RowBatch<'_>,
) -> Result<usize, SinkError> {
    let conn = pool.acquire().await.map_err(sink_error(dialect))?;
    let mut load = OpenLoad::begin(conn, dialect, batch.stream).await?;
    let id = load.id;
    let written = insert_load::<DB>(
        load.conn(),
        dialect,
        max_statement_bytes,
        timestamp,
        batch,
        id,
    )
    .await;
    load.end(written).await
}
}

sqlx_generic! {
/// Writes a batch as load `load_id` inside the transaction [`OpenLoad::begin`] opened:
/// its replayed dead letters deleted, its rows in bound multi-row `INSERT`s, then its
/// registration claimed, its ledger row and the commit in one round trip.
async fn insert_load<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    max_statement_bytes: usize,
    timestamp: TimestampText,
    batch: RowBatch<'_>,
    load_id: i64,
) -> Result<usize, SinkError> {
    let pointer = batch.pointer;
    let (stream, rows, replayed) = batch.parts();
    let err = sink_error(dialect);
    let columns = dialect.column_list(stream);
    let on_conflict = dialect.on_conflict(stream);
    let width = stream.columns.len() + 2 + usize::from(stream.has_extra);
    delete_replayed::<DB>(conn, dialect, replayed).await?;
    for chunk in chunks_by(
        rows,
        width,
        dialect.max_bind_params(),
        max_statement_bytes,
        |r| r.raw.len(),
    ) {
        let sql =
            dialect.insert_statement(&stream.table, &columns, width, chunk.len(), &on_conflict);
        let mut q = sqlx::query::<DB>(&sql);
        for row in chunk {
            for cell in &row.cells {
                q = match cell {
                    Cell::Null => q.bind(None::<&str>),
                    Cell::Text(s) | Cell::Json(s) => q.bind(s.as_str()),
                    Cell::Uuid(u) => q.bind(u.to_string()),
                    Cell::Int(i) => q.bind(*i),
                    Cell::Float(f) => q.bind(*f),
                    Cell::Bool(b) => q.bind(*b),
                    Cell::Timestamp(t) => q.bind(timestamp(t)),
                };
            }
            q = q.bind(timestamp(&row.received_at));
            if stream.has_extra {
                q = q.bind(row.extra.as_deref());
            }
            q = q.bind(load_id);
        }
        q.execute(&mut *conn).await.map_err(&err)?;
    }
    let mut load = Load::of(stream, rows);
    load.pointer = pointer.cloned();
    let commit = dialect.commit_load(load_id, &load, rows.len(), &Utc::now());
    // MySQL answers the duplicates of `id_field` its inserts skipped (it reports a
    // skipped duplicate as a found row: `Dialect::insert_statement` counts them).
    // Several statements: sent as one simple query (no bound values).
    let answer = conn
        .fetch_all(commit.as_str())
        .await
        .map_err(commit_error(dialect, load_id, &load))?;
    let duplicates = match answer.last() {
        Some(row) => row.try_get::<i64, usize>(0).map_err(&err)?,
        None => 0,
    };
    Ok(rows.len() - usize::try_from(duplicates).unwrap_or(0).min(rows.len()))
}
}

/// The error of [`Dialect::commit_load`] for `load`: [`SinkError::load_expired`] when
/// its ledger row was refused for want of a registration to claim (or of the pointer it
/// moves), [`SinkError::pointer_moved`] when a source's first pointer was saved by
/// another run meanwhile (the only key an insert of `commit_load` can hit).
pub fn commit_error(
    dialect: Dialect,
    load_id: i64,
    load: &Load,
) -> impl Fn(sqlx::Error) -> SinkError + '_ {
    move |e| {
        let duplicate = matches!(&e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation);
        match &load.pointer {
            Some(p) if duplicate => SinkError::pointer_moved(&p.source),
            _ if ledger::claim_refused(&e) => SinkError::load_expired(load_id),
            _ => sink_error(dialect)(e),
        }
    }
}

/// A pooled connection inside a load's writing transaction, from
/// [`OpenLoad::begin`] to [`OpenLoad::end`]. Dropped in between (a write cancelled by
/// its timeout), it closes the connection rather than hand the pool one that is still
/// inside a transaction; the registration it leaves holds the stream's watermark until
/// `[ledger] in_flight_timeout`.
pub struct OpenLoad<DB: Database> {
    conn: Option<sqlx::pool::PoolConnection<DB>>,
    dialect: Dialect,
    /// The load's id (registered on PostgreSQL and MySQL).
    pub id: i64,
}

impl<DB: Database> Drop for OpenLoad<DB> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

impl<DB: Database> OpenLoad<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Registers a load of `stream` and opens its writing transaction on `conn`, in one
    /// round trip ([`Dialect::begin_load`]).
    pub async fn begin(
        conn: sqlx::pool::PoolConnection<DB>,
        dialect: Dialect,
        stream: &Stream,
    ) -> Result<OpenLoad<DB>, SinkError> {
        let err = sink_error(dialect);
        let mut load = OpenLoad {
            conn: Some(conn),
            dialect,
            id: 0,
        };
        let sql = dialect.begin_load(&stream.name, ledger::instance());
        let begun = load
            .conn()
            .fetch_all(sql.as_str())
            .await
            .map_err(&err)
            .and_then(|rows| match rows.last() {
                Some(row) => row.try_get::<i64, usize>(0).map_err(&err),
                None => Err(SinkError {
                    class: super::ErrorClass::Transient,
                    source: "the load's registration answered no id".into(),
                }),
            });
        match begun {
            Ok(id) => {
                load.id = id;
                Ok(load)
            }
            Err(e) => {
                load.abandon().await;
                Err(e)
            }
        }
    }

    /// The connection, inside the load's transaction.
    pub fn conn(&mut self) -> &mut DB::Connection {
        self.conn
            .as_deref_mut()
            .expect("an open load holds its connection until it ends")
    }

    /// Ends the load with what writing it gave: on success its last statement has
    /// committed; on failure the transaction is rolled back and the registration
    /// dropped (best effort), and the connection goes back to the pool only if that
    /// worked.
    pub async fn end(mut self, written: Result<usize, SinkError>) -> Result<usize, SinkError> {
        match written {
            Ok(_) => drop(self.conn.take()), // committed: back to the pool
            Err(_) => self.abandon().await,
        }
        written
    }

    /// Rolls the transaction back and drops the registration; the connection goes back
    /// to the pool only if that worked (else it is closed).
    async fn abandon(mut self) {
        let mut cleanup = String::from("ROLLBACK");
        if let Some(drop) = self
            .dialect
            .drop_registration_of(self.id)
            .filter(|_| self.id != 0)
        {
            cleanup.push_str("; ");
            cleanup.push_str(&drop);
        }
        if self.conn().execute(cleanup.as_str()).await.is_ok() {
            drop(self.conn.take());
        }
    }
}
sqlx_generic! {
/// Replay: deletes the dead letters `replayed` on `conn` (in the transaction that then
/// writes their rows), first, and fails with [`SinkError::replay_conflict`] unless every
/// one of them was still there, so that two replays at once cannot both write a row.
pub async fn delete_replayed<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    replayed: &[i64],
) -> Result<(), SinkError> {
    let mut deleted = 0;
    for ids in replayed.chunks(1000) {
        let sql = dialect.delete_dead_letters(ids.len());
        let mut q = sqlx::query::<DB>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        deleted += q
            .execute(&mut *conn)
            .await
            .map_err(sink_error(dialect))?
            .rows();
    }
    match replayed.len() as u64 - deleted.min(replayed.len() as u64) {
        0 => Ok(()),
        missing => Err(SinkError::replay_conflict(missing as usize)),
    }
}
}

/// A transform's run as [`run_script`] takes it.
pub struct Script<'a, 'p> {
    pub statements: &'a [String],
    /// The statement that moves the transform's pointer; it must change one row.
    pub move_pointer: &'a str,
    /// The transform's name, for the error of a pointer moved by another run.
    pub name: &'a str,
    /// Publishes the rows of the last statement (a query) before the commit.
    pub publish: Option<super::Publish<'p>>,
}

sqlx_generic! {
/// Runs a transform's statements, then its pointer's move, in one transaction, in UTC
/// (so that dates cut from timestamps agree across databases). A statement's error
/// names it.
///
/// MySQL/MariaDB commit implicitly at a DDL statement (`CREATE TABLE`) and then go on
/// in autocommit; so there the statements run on a connection of their own with
/// `autocommit = 0` (what follows a DDL statement is a new transaction, still
/// committed only with the pointer), closed afterwards so the setting never reaches
/// the pool.
pub async fn run_script<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    script: &Script<'_, '_>,
) -> Result<u64, SinkError> {
    let err = sink_error(dialect);
    if dialect == Dialect::Mysql {
        let mut conn = pool.acquire().await.map_err(&err)?.detach();
        conn.execute("SET autocommit = 0, time_zone = '+00:00'")
            .await
            .map_err(&err)?;
        let rows = script_statements::<DB>(&mut conn, dialect, script).await?;
        // On an error the connection is dropped, closed, and its transaction with it:
        // the error told is the statement's, not a ROLLBACK's.
        conn.execute("COMMIT").await.map_err(&err)?;
        return Ok(rows);
    }
    // SQLite: the write lock from the start, so that a first statement that only reads
    // (CREATE TABLE IF NOT EXISTS of a table that exists) cannot be refused its upgrade
    // to a writer when another connection has written meanwhile.
    let mut tx = match dialect {
        Dialect::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        _ => pool.begin().await,
    }
    .map_err(&err)?;
    if dialect == Dialect::Postgres {
        // And, from PostgreSQL 14, a statement whose Sluice is gone (killed mid-run)
        // is cancelled within a second instead of holding its locks to its end.
        (&mut *tx)
            .execute("SET LOCAL TIME ZONE 'UTC'; SELECT set_config('client_connection_check_interval', '1000', true) WHERE current_setting('server_version_num')::int >= 140000")
            .await
            .map_err(&err)?;
    }
    let rows = script_statements::<DB>(&mut tx, dialect, script).await?;
    tx.commit().await.map_err(&err)?;
    Ok(rows)
}
}

/// The first 60 characters of `sql` on one line, to name a statement in an error.
fn statement_head(sql: &str) -> String {
    let head: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match head.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &head[..at]),
        None => head,
    }
}

/// [`run_script`]'s statements, publish and pointer on `conn`, inside its transaction.
async fn script_statements<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    script: &Script<'_, '_>,
) -> Result<u64, SinkError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    DB::QueryResult: RowsAffected,
{
    let statements = script.statements;
    let failed = |n: usize, e: sqlx::Error| SinkError {
        class: classify(dialect, &e),
        source: format!(
            "statement {} of {} (`{}`): {e}",
            n + 1,
            statements.len(),
            statement_head(&statements[n])
        )
        .into(),
    };
    let mut rows = 0;
    let published = script.publish.map(|p| (statements.len() - 1, p));
    for (n, sql) in statements.iter().enumerate() {
        match published {
            Some((last, publish)) if n == last => {
                let query = json_rows::<DB>(conn, dialect, sql)
                    .await
                    .map_err(|e| failed(n, e))?;
                // (A bounded cache of prepared statements per connection keeps each
                // run's text; the oldest leave it.)
                let found: Vec<(String,)> = sqlx::query_as::<DB, (String,)>(&query)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(|e| failed(n, e))?;
                publish(found.into_iter().map(|(row,)| row).collect())
                    .await
                    .map_err(|e| SinkError {
                        class: super::ErrorClass::Transient,
                        source: format!("{e}; nothing of this run was committed, and the next run publishes again").into(),
                    })?;
            }
            _ => match (&mut *conn).execute(sql.as_str()).await {
                Ok(done) => rows += done.rows(),
                Err(e) => return Err(failed(n, e)),
            },
        }
    }
    let moved = (&mut *conn)
        .execute(script.move_pointer)
        .await
        .map_err(sink_error(dialect))?;
    if moved.rows() != 1 {
        return Err(SinkError::pointer_moved(script.name));
    }
    Ok(rows)
}

/// `query` wrapped so that each of its rows reads as one JSON object's text (keys the
/// column names): PostgreSQL's `row_to_json`; MySQL's and SQLite's `json_object` over
/// the columns the database describes.
async fn json_rows<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    query: &str,
) -> Result<String, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    use sqlx::Column as _;
    if dialect == Dialect::Postgres {
        return Ok(format!(
            "SELECT CAST(row_to_json(q) AS text) FROM ({query}) AS q"
        ));
    }
    let described = (&mut *conn).describe(query).await?;
    let pairs: Vec<String> = described
        .columns()
        .iter()
        .map(|c| {
            format!(
                "{}, q.{}",
                dialect.text_literal(c.name()),
                dialect.quote(c.name())
            )
        })
        .collect();
    Ok(match dialect {
        Dialect::Mysql => format!(
            "SELECT CAST(JSON_OBJECT({}) AS CHAR CHARACTER SET utf8mb4) FROM ({query}) AS q",
            pairs.join(", ")
        ),
        _ => format!(
            "SELECT json_object({}) FROM ({query}) AS q",
            pairs.join(", ")
        ),
    })
}

sqlx_generic! {
/// Runs `sql` with one text bound.
pub async fn execute_bound<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    sql: &str,
    value: &str,
) -> Result<(), SinkError> {
    sqlx::query::<DB>(sql)
        .bind(value)
        .execute(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(())
}
}

sqlx_generic! {
/// The one number `sql` answers with one text bound.
pub async fn scalar_bound<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    sql: &str,
    value: &str,
) -> Result<i64, SinkError> {
    let (n,): (i64,) = sqlx::query_as::<DB, (i64,)>(sql)
        .bind(value)
        .fetch_one(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(n)
}
}

sqlx_generic! {
/// Loads of `stream` after `after`, oldest first, at most `limit`.
pub async fn list_loads<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    stream: &str,
    page: ledger::Page,
    limit: i64,
) -> Result<Vec<ledger::ListedLoad>, SinkError> {
    type Columns = (i64, String, String, i64, i64, String, String, String, String, String, String);
    let (newest_first, from) = match page {
        ledger::Page::After(id) => (false, id),
        ledger::Page::Before(id) => (true, id),
    };
    let rows = sqlx::query_as::<DB, Columns>(&dialect.list_loads(newest_first))
        .bind(stream)
        .bind(from)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(rows
        .into_iter()
        .map(|(load_id, stream, table_name, rows, bytes, first, last, committed, source, instance, schema_sha256)| ledger::ListedLoad {
            load_id,
            stream,
            table_name,
            rows,
            bytes,
            first_received_at: first,
            last_received_at: last,
            committed_at: committed,
            source,
            instance,
            schema_sha256,
        })
        .collect())
}
}

sqlx_generic! {
/// The rows source `name`'s loads committed and the files it loaded whole
/// ([`Dialect::source_totals`]).
pub async fn source_totals<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    name: &str,
) -> Result<(i64, i64), SinkError> {
    let files = format!("{name}/");
    let (rows, done): (i64, i64) = sqlx::query_as::<DB, (i64, i64)>(&dialect.source_totals())
        .bind(format!("pull:{name}"))
        .bind(files.clone())
        .bind(files)
        .fetch_one(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok((rows, done))
}
}

sqlx_generic! {
/// Runs `sql` (no bound values); answers the rows it changed.
pub async fn execute_counted<DB>(pool: &Pool<DB>, dialect: Dialect, sql: &str) -> Result<u64, SinkError> {
    let done = sqlx::query::<DB>(sql)
        .execute(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(done.rows())
}
}

sqlx_generic! {
/// The one nullable text `sql` answers with one text bound, if it answers a row.
pub async fn optional_text<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    sql: &str,
    value: &str,
) -> Result<Option<String>, SinkError> {
    let row: Option<(Option<String>,)> = sqlx::query_as::<DB, (Option<String>,)>(sql)
        .bind(value)
        .fetch_optional(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(row.and_then(|(text,)| text))
}
}

sqlx_generic! {
/// The last `days` days of `stream` in `sluice_daily`, newest first.
pub async fn daily<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    stream: &str,
    days: i64,
) -> Result<Vec<ledger::Day>, SinkError> {
    let rows = sqlx::query_as::<DB, (String, i64, i64, i64)>(&dialect.daily())
        .bind(stream)
        .bind(days)
        .fetch_all(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(rows
        .into_iter()
        .map(|(day, rows, loads, dead_letters)| ledger::Day { day, rows, loads, dead_letters })
        .collect())
}
}

sqlx_generic! {
/// Deletes up to `limit` of the oldest ledger rows committed before `before`.
pub async fn purge_loads<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    before: String,
    limit: i64,
) -> Result<u64, SinkError> {
    let done = sqlx::query::<DB>(&dialect.purge_loads())
        .bind(before)
        .bind(limit)
        .execute(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(done.rows())
}
}

sqlx_generic! {
/// Abandons the loads in flight for longer than `seconds` ([`Dialect::expired_loads`]).
pub async fn sweep_expired_loads<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    seconds: i64,
) -> Result<u64, SinkError> {
    let err = sink_error(dialect);
    let mut tx = pool.begin().await.map_err(&err)?;
    let ids: Vec<(i64,)> = sqlx::query_as::<DB, (i64,)>(&dialect.expired_loads())
        .bind(seconds)
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
    // PostgreSQL: each listed load's session is already ended.
    let mut deleted = 0;
    for (id,) in ids {
        match dialect.drop_registration_of(id) {
            Some(drop) => deleted += (&mut *tx).execute(drop.as_str()).await.map_err(&err)?.rows(),
            None => deleted += 1,
        }
    }
    tx.commit().await.map_err(&err)?;
    Ok(deleted)
}
}

sqlx_generic! {
/// Writes `letters` to `sluice_dead_letters` in one transaction.
pub async fn write_dead_letters<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    max_statement_bytes: usize,
    timestamp: TimestampText,
    letters: &[DeadLetter],
) -> Result<usize, SinkError> {
    let err = sink_error(dialect);
    let columns = DEAD_LETTER_COLUMNS.join(", ");
    let width = DEAD_LETTER_COLUMNS.len();
    let mut tx = pool.begin().await.map_err(&err)?;
    for chunk in chunks_by(
        letters,
        width,
        dialect.max_bind_params(),
        max_statement_bytes,
        |d| d.payload.len(),
    ) {
        let sql = dialect.insert_statement(DEAD_LETTERS, &columns, width, chunk.len(), "");
        let mut q = sqlx::query::<DB>(&sql);
        for d in chunk {
            q = q
                .bind(d.stream.as_deref())
                .bind(d.stage.as_str())
                .bind(d.error.as_str())
                .bind(d.payload.as_str())
                .bind(&*d.source)
                .bind(timestamp(&d.received_at))
                .bind(d.attempts)
                .bind(d.treated);
        }
        q.execute(&mut *tx).await.map_err(&err)?;
    }
    tx.commit().await.map_err(&err)?;
    Ok(letters.len())
}
}

/// The batch writer of the databases written with bound multi-row `INSERT`s (MySQL/
/// MariaDB, and SQLite's dead letters).
pub struct SqlxInserts<DB: Database> {
    pub pool: Pool<DB>,
    pub dialect: Dialect,
    /// Payload bytes per statement (under MySQL's `max_allowed_packet`; memory for SQLite).
    pub max_statement_bytes: usize,
    pub timestamp: TimestampText,
}

/// [`BatchWriter`] for each database written with bound values; one `impl` per
/// database, so the generic functions' bounds are met by concrete types, not restated.
macro_rules! bound_writer {
    ($($db:ty),*) => {$(
impl BatchWriter for SqlxInserts<$db> {
    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn write_batch<'a>(&'a self, batch: RowBatch<'a>) -> Written<'a> {
        Box::pin(write_rows(
            &self.pool,
            self.dialect,
            self.max_statement_bytes,
            self.timestamp,
            batch,
        ))
    }

    fn write_dead_letters<'a>(&'a self, letters: &'a [DeadLetter]) -> Written<'a> {
        Box::pin(write_dead_letters(
            &self.pool,
            self.dialect,
            self.max_statement_bytes,
            self.timestamp,
            letters,
        ))
    }
}
    )*};
}

bound_writer!(sqlx::MySql, sqlx::Sqlite);

sqlx_generic! {
/// Inserts `job`, or updates it if it is there (one upsert statement).
pub async fn save_job<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    job: &JobRecord,
) -> Result<(), SinkError> {
    sqlx::query::<DB>(&dialect.save_job())
        .bind(job.header.id.as_str())
        .bind(job.header.kind.as_str())
        .bind(job.header.state.as_str())
        .bind(job.header.created_at.as_str())
        .bind(job.header.started_at.as_deref())
        .bind(job.header.finished_at.as_deref())
        .bind(job.params.as_str())
        .bind(job.done)
        .bind(job.total)
        .bind(job.result.as_str())
        .bind(job.logs.as_str())
        .bind(job.errors.as_str())
        .bind(job.heartbeat_at.as_deref())
        .execute(pool)
        .await
        .map_err(sink_error(dialect))?;
    Ok(())
}
}

sqlx_generic! {
/// Jobs newest first (or the one with `id`).
pub async fn load_jobs<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    id: Option<&str>,
    limit: i64,
) -> Result<Vec<JobRecord>, SinkError> {
    let err = sink_error(dialect);
    let sql = dialect.select_jobs(id.is_some());
    type Columns = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
        i64,
        i64,
        String,
        String,
        String,
        Option<String>,
    );
    let mut q = sqlx::query_as::<DB, Columns>(&sql);
    if let Some(id) = id {
        q = q.bind(id);
    }
    let rows = q.bind(limit).fetch_all(pool).await.map_err(&err)?;
    Ok(rows
        .into_iter()
        .map(
            |(id, kind, state, created_at, started_at, finished_at, params, done, total, result, logs, errors, heartbeat_at)| {
                JobRecord { header: JobHeader { id, kind, state, created_at, started_at, finished_at }, params, done, total, result, logs, errors, heartbeat_at }
            },
        )
        .collect())
}
}
