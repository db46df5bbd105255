//! The shared store: everything the database does besides the hot-path batch writes
//! (those are each database's [`super::BatchWriter`]): creating and extending tables,
//! reading and purging dead letters, replay bookkeeping, health and pool figures.
//!
//! Written once for the three databases: every operation is one of the generic
//! functions of [`super::bound`], run on whichever pool the URL chose.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, PgPool, SqlitePool};

use super::dialect::{mysql_timestamp, sqlite_timestamp, Dialect, DEAD_LETTERS, JOBS};
use super::generic::{
    count_dead_letters, ddl, describe_table, execute_all, execute_bound, fetch_dead_letters,
    has_unique_key, list_dead_letters, load_jobs, purge_dead_letters, record_replay_failure,
    save_job, scalar, scalar_bound, table_has_rows,
};
use super::ledger;
use super::{
    DeadLetterPage, DeadLetterQuery, ListedDeadLetter, PoolUsage, PurgeFilter, SinkError,
    StoredDeadLetter,
};
use crate::schema::Stream;
use crate::sink::evolution::ExistingColumn;

/// A connection pool of one of the supported databases.
#[derive(Clone)]
pub enum Pools {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Mysql(MySqlPool),
}

/// Runs `$body` with `$pool` bound to the pool, whichever database it is.
macro_rules! with_pool {
    ($pools:expr, $pool:ident => $body:expr) => {
        match $pools {
            Pools::Sqlite($pool) => $body,
            Pools::Postgres($pool) => $body,
            Pools::Mysql($pool) => $body,
        }
    };
}

impl Pools {
    async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

/// The database's shared operations (see the module docs).
pub struct Store {
    pools: Pools,
    /// One connection of its own for health checks, so `/readyz` never waits behind
    /// writers for a pooled connection.
    health: Pools,
    dialect: Dialect,
    /// Largest text value one row may carry (MySQL's `max_allowed_packet` bounds a whole
    /// statement, so a dead letter's payload must stay well under it).
    max_value_bytes: usize,
}

impl Store {
    pub fn new(
        pools: Pools,
        health: Pools,
        dialect: Dialect,
        max_value_bytes: usize,
    ) -> Arc<Store> {
        Arc::new(Store {
            pools,
            health,
            dialect,
            max_value_bytes,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Largest text value one row may carry.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// How many pooled connections are in use right now.
    pub fn pool_usage(&self) -> PoolUsage {
        with_pool!(&self.pools, p => PoolUsage::of(p))
    }

    /// A timestamp as this database reads its timestamp columns from text.
    fn timestamp(&self) -> fn(&DateTime<Utc>) -> String {
        match self.dialect {
            Dialect::Sqlite => sqlite_timestamp,
            Dialect::Mysql => mysql_timestamp,
            Dialect::Postgres => |t| t.to_rfc3339(),
        }
    }

    /// Creates the dead-letter table and every stream's table if missing.
    pub async fn prepare(&self, streams: &[Arc<Stream>]) -> Result<(), SinkError> {
        let statements = ddl(self.dialect, streams);
        with_pool!(&self.pools, p => execute_all(p, self.dialect, statements).await)?;
        // A jobs table made before jobs had a heartbeat gets its column.
        let jobs = self.describe_table(JOBS).await?;
        if !jobs.iter().any(|c| c.name == "heartbeat_at") {
            let add =
                self.dialect
                    .add_column(JOBS, "heartbeat_at", self.dialect.job_text_type(), false);
            self.execute_ddl(vec![add]).await?;
        }
        // A dead-letter table made before the privacy treatment gets `treated`.
        let letters = self.describe_table(DEAD_LETTERS).await?;
        if !letters.iter().any(|c| c.name == "treated") {
            self.execute_ddl(vec![self.dialect.add_treated_column()])
                .await?;
        }
        Ok(())
    }

    /// The load ledger's tables and view, each stream named for the watermark view, and
    /// each stream table's `_load_id` index.
    /// Writes nothing when all of it is there, so that a start-up never waits for a
    /// lock a writer or an operator holds on a table.
    pub async fn prepare_ledger(&self, streams: &[Arc<Stream>]) -> Result<(), SinkError> {
        if self.describe_table(ledger::STREAMS).await?.is_empty() {
            self.execute_ddl(self.dialect.create_ledger()).await?;
        }
        if self.dialect == Dialect::Postgres {
            let current = self.dialect.watermarks_read_transactions();
            if with_pool!(&self.pools, p => scalar(p, self.dialect, &current).await)? == 0 {
                self.execute_ddl(vec![self.dialect.create_watermarks()])
                    .await?;
            }
            self.execute_ddl(vec![self.dialect.raise_load_offset()])
                .await?;
        }
        if self.describe_table(ledger::DAILY).await?.is_empty() {
            self.execute_ddl(vec![self.dialect.create_daily()]).await?;
        }
        if self.describe_table(ledger::POINTERS).await?.is_empty() {
            self.execute_ddl(vec![self.dialect.create_pointers()])
                .await?;
        }
        for stream in streams {
            let index = self.dialect.load_id_index_exists();
            let name = ledger::load_id_index(&stream.table);
            if with_pool!(&self.pools, p => scalar_bound(p, self.dialect, &index, &name).await)?
                == 0
            {
                self.execute_ddl(vec![self.dialect.create_load_id_index(&stream.table)])
                    .await?;
            }
            let named = self.dialect.stream_named();
            if with_pool!(&self.pools, p => scalar_bound(p, self.dialect, &named, &stream.name).await)?
                == 0
            {
                with_pool!(&self.pools, p => execute_bound(p, self.dialect, &self.dialect.register_stream(), &stream.name).await)?;
            }
        }
        Ok(())
    }

    /// Loads of `stream`, at most `limit`: after load id `from`, oldest first; or,
    /// with [`ledger::Page::Before`], before it, newest first.
    pub async fn list_loads(
        &self,
        stream: &str,
        page: ledger::Page,
        limit: i64,
    ) -> Result<Vec<ledger::ListedLoad>, SinkError> {
        with_pool!(&self.pools, p => super::generic::list_loads(p, self.dialect, stream, page, limit).await)
    }

    /// Whether stream `stream` has a load in `from..=to` (in the ledger, so within
    /// `[ledger] retention`).
    pub async fn has_loads(&self, stream: &str, from: i64, to: i64) -> Result<bool, SinkError> {
        let sql = self.dialect.has_loads(from, to);
        Ok(with_pool!(&self.pools, p => scalar_bound(p, self.dialect, &sql, stream).await)? > 0)
    }

    /// The pointer of pulled source `source`: `None` when it never ran (or was reset to
    /// the start), else its JSON text.
    pub async fn pointer(&self, source: &str) -> Result<Option<String>, SinkError> {
        let sql = self.dialect.pointer_of();
        with_pool!(&self.pools, p => super::generic::optional_text(p, self.dialect, &sql, source).await)
    }

    /// The rows pulled source `name`'s loads committed (within `[ledger] retention`) and
    /// the files it loaded whole.
    pub async fn source_totals(&self, name: &str) -> Result<(i64, i64), SinkError> {
        with_pool!(&self.pools, p => super::generic::source_totals(p, self.dialect, name).await)
    }

    /// Moves a pointer on its own (a pulled page whose rows were all dead-lettered),
    /// from the value its run started from; fails when another run moved it.
    pub async fn move_pointer(&self, pointer: &ledger::Pointer) -> Result<(), SinkError> {
        let sql = self
            .dialect
            .move_pointer(pointer, None, &chrono::Utc::now());
        match with_pool!(&self.pools, p => super::generic::execute_counted(p, self.dialect, &sql).await)?
        {
            1 => Ok(()),
            _ => Err(SinkError::pointer_moved(&pointer.source)),
        }
    }

    /// Runs a transform's `statements` in one transaction and moves its pointer (to
    /// load `load_id`) in the same one; nothing commits when a statement fails or
    /// another run moved the pointer. Answers the rows the statements changed.
    ///
    /// With `publish`, the last statement is a query whose rows (each a JSON object's
    /// text) are handed to `publish` before the commit; its error rolls the run back.
    pub async fn run_transform(
        &self,
        statements: &[String],
        pointer: &ledger::Pointer,
        load_id: i64,
        publish: Option<super::Publish<'_>>,
    ) -> Result<u64, SinkError> {
        let moved = self
            .dialect
            .move_pointer(pointer, Some(load_id), &chrono::Utc::now());
        let script = super::generic::Script {
            statements,
            move_pointer: &moved,
            name: &pointer.source,
            publish,
        };
        with_pool!(&self.pools, p => super::generic::run_script(p, self.dialect, &script).await)
    }

    /// Sets a source's pointer, whatever it was (a reset; `None`: from the start).
    pub async fn reset_pointer(&self, source: &str, value: Option<&str>) -> Result<(), SinkError> {
        let sql = self
            .dialect
            .reset_pointer(source, value, &chrono::Utc::now());
        self.execute_ddl(vec![sql]).await
    }

    /// The last `days` days of `stream` in `sluice_daily`, newest first.
    pub async fn daily(&self, stream: &str, days: i64) -> Result<Vec<ledger::Day>, SinkError> {
        with_pool!(&self.pools, p => super::generic::daily(p, self.dialect, stream, days).await)
    }

    /// Deletes up to `limit` of the oldest ledger rows committed before `before`.
    pub async fn purge_loads(&self, before: &DateTime<Utc>, limit: i64) -> Result<u64, SinkError> {
        let timestamp = self.timestamp();
        with_pool!(&self.pools, p => super::generic::purge_loads(p, self.dialect, timestamp(before), limit).await)
    }

    /// The watermark of `stream`: no load with a lower or equal id commits later.
    pub async fn watermark(&self, stream: &str) -> Result<i64, SinkError> {
        with_pool!(&self.pools, p => scalar_bound(p, self.dialect, &self.dialect.watermark(), stream).await)
    }

    /// Deletes the registrations older than `timeout` that no writer holds (their
    /// writer is stuck or gone); returns how many.
    pub async fn sweep_expired_loads(
        &self,
        timeout: std::time::Duration,
    ) -> Result<u64, SinkError> {
        if self.dialect == Dialect::Sqlite {
            return Ok(0);
        }
        with_pool!(&self.pools, p => super::generic::sweep_expired_loads(p, self.dialect, timeout.as_secs_f64().ceil() as i64).await)
    }

    /// Runs `work` (DDL, table evolution) while holding the database's schema lock, so
    /// that instances starting at once on one database do not create or alter the same
    /// table together.
    pub async fn under_schema_lock<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, SinkError> {
        with_pool!(&self.pools, p => super::generic::under_schema_lock(p, self.dialect, work).await)
    }

    /// Runs DDL statements in order.
    pub async fn execute_ddl(&self, statements: Vec<String>) -> Result<(), SinkError> {
        with_pool!(&self.pools, p => execute_all(p, self.dialect, statements).await)
    }

    /// The columns of `table`; empty if it does not exist.
    pub async fn describe_table(&self, table: &str) -> Result<Vec<ExistingColumn>, SinkError> {
        with_pool!(&self.pools, p => describe_table(p, self.dialect, table).await)
    }

    /// Whether `table` holds at least one row.
    pub async fn table_has_rows(&self, table: &str) -> Result<bool, SinkError> {
        with_pool!(&self.pools, p => table_has_rows(p, self.dialect, table).await)
    }

    /// Whether `table` has a unique key on exactly `column`.
    pub async fn has_unique_key(&self, table: &str, columns: &[String]) -> Result<bool, SinkError> {
        with_pool!(&self.pools, p => has_unique_key(p, self.dialect, table, columns).await)
    }

    /// How many rows of `table` repeat an earlier row's values of `columns`.
    pub async fn count_duplicates(
        &self,
        table: &str,
        columns: &[String],
    ) -> Result<i64, SinkError> {
        let sql = self.dialect.count_duplicates(table, columns);
        with_pool!(&self.pools, p => scalar(p, self.dialect, &sql).await)
    }

    /// How many dead letters a replay with `page`'s filters would examine.
    pub async fn count_dead_letters(&self, page: &DeadLetterPage) -> Result<i64, SinkError> {
        let timestamp = self.timestamp();
        with_pool!(&self.pools, p => count_dead_letters(p, self.dialect, timestamp, page).await)
    }

    /// A page of dead letters to replay, oldest first.
    pub async fn fetch_dead_letters(
        &self,
        page: &DeadLetterPage,
    ) -> Result<Vec<StoredDeadLetter>, SinkError> {
        let timestamp = self.timestamp();
        with_pool!(&self.pools, p => fetch_dead_letters(p, self.dialect, timestamp, page).await)
    }

    /// The newest dead letters first, for `GET /v1/dead-letters`.
    pub async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
    ) -> Result<Vec<ListedDeadLetter>, SinkError> {
        let timestamp = self.timestamp();
        with_pool!(&self.pools, p => list_dead_letters(p, self.dialect, timestamp, query).await)
    }

    /// Records that replaying dead letter `id` failed again, with the new reason (and,
    /// given `treated`, its payload now treated).
    pub async fn record_replay_failure(
        &self,
        id: i64,
        error: &str,
        treated: Option<&str>,
    ) -> Result<(), SinkError> {
        with_pool!(&self.pools, p => record_replay_failure(p, self.dialect, id, error, treated).await)
    }

    /// Deletes one batch (up to `filter.limit`) of the oldest dead letters matching
    /// `filter`; returns how many it deleted.
    pub async fn purge_dead_letters(&self, filter: &PurgeFilter) -> Result<u64, SinkError> {
        let timestamp = self.timestamp();
        with_pool!(&self.pools, p => purge_dead_letters(p, self.dialect, timestamp, filter).await)
    }

    /// Records `job` (inserted the first time, updated after).
    pub async fn save_job(&self, job: &super::JobRecord) -> Result<(), SinkError> {
        with_pool!(&self.pools, p => save_job(p, self.dialect, job).await)
    }

    /// Jobs newest first, at most `limit`; or the one with `id`.
    pub async fn load_jobs(
        &self,
        id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<super::JobRecord>, SinkError> {
        with_pool!(&self.pools, p => load_jobs(p, self.dialect, id, limit).await)
    }

    /// Checks that the database answers, on the health connection.
    pub async fn ping(&self) -> Result<(), SinkError> {
        with_pool!(&self.health, p => execute_all(p, self.dialect, vec!["SELECT 1".to_owned()]).await)
    }

    /// Closes the pools, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.health.close().await;
        self.pools.close().await;
    }
}
