//! PostgreSQL writer: `COPY … FROM STDIN` in text format, one statement per batch (atomic
//! on its own). Text-format COPY is also what Postgres-wire databases such as CockroachDB
//! and YugabyteDB accept. With `id_field`, the batch is copied into a per-connection
//! temporary table and moved with `INSERT … ON CONFLICT DO NOTHING` in one transaction.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::PgPool;

use super::bound::{
    ddl, delete_replayed, describe_table, execute_all, fetch_dead_letters, list_dead_letters,
    purge_dead_letters, record_replay_failure, table_has_rows,
};
use super::dialect::{
    copy_text_cell, copy_text_escape, Dialect, DEAD_LETTERS, DEAD_LETTER_COLUMNS,
};
use super::{
    sink_error, BoxFuture, DeadLetterPage, DeadLetterQuery, ListedDeadLetter, PoolUsage,
    PurgeFilter, Sink, SinkError, StoredDeadLetter,
};
use crate::config::DatabaseConfig;
use crate::event::{Cell, DeadLetter, Row};
use crate::schema::Stream;
use crate::schema_evolution::ExistingColumn;

const DIALECT: Dialect = Dialect::Postgres;

pub struct PgSink {
    pool: PgPool,
    /// One connection of its own for health checks (see `BoundSink::health`).
    health: PgPool,
}

impl PgSink {
    pub async fn connect(config: &DatabaseConfig) -> Result<PgSink, SinkError> {
        let err = sink_error(DIALECT);
        let options = PgConnectOptions::from_str(&config.url).map_err(&err)?;
        let health = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options.clone());
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(&err)?;
        Ok(PgSink { pool, health })
    }
}

/// Encodes `rows` as COPY text-format lines, in [`Dialect::column_list`] order.
pub fn encode_rows(stream: &Stream, rows: &[Row]) -> String {
    let mut out = String::with_capacity(rows.iter().map(|r| r.raw.len() + 64).sum());
    for row in rows {
        for cell in &row.cells {
            copy_text_cell(&mut out, cell);
            out.push('\t');
        }
        copy_text_cell(&mut out, &Cell::Timestamp(row.received_at));
        if stream.has_extra {
            out.push('\t');
            match &row.extra {
                Some(extra) => copy_text_escape(&mut out, extra),
                None => out.push_str("\\N"),
            }
        }
        out.push('\n');
    }
    out
}

/// Encodes dead letters as COPY text-format lines, in [`DEAD_LETTER_COLUMNS`] order.
fn encode_dead_letters(letters: &[DeadLetter]) -> String {
    let mut out = String::with_capacity(
        letters
            .iter()
            .map(|d| d.payload.len() + d.error.len() + 96)
            .sum(),
    );
    for d in letters {
        match &d.stream {
            Some(s) => copy_text_escape(&mut out, s),
            None => out.push_str("\\N"),
        }
        for text in [d.stage.as_str(), &d.error, &d.payload, &d.source] {
            out.push('\t');
            copy_text_escape(&mut out, text);
        }
        out.push('\t');
        copy_text_cell(&mut out, &Cell::Timestamp(d.received_at));
        out.push('\t');
        copy_text_cell(&mut out, &Cell::Int(d.attempts.into()));
        out.push('\n');
    }
    out
}

async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    data: String,
) -> Result<(), sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(data.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

/// A timestamp as PostgreSQL reads `timestamptz` from text.
fn rfc3339(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339()
}

/// A per-connection staging table name for `table`, stable and within 63 bytes.
fn staging_table(table: &str) -> String {
    let mut h = DefaultHasher::new();
    table.hash(&mut h);
    format!("sluice_stage_{:016x}", h.finish())
}

impl Sink for PgSink {
    fn dialect(&self) -> Dialect {
        DIALECT
    }

    fn prepare<'a>(&'a self, streams: &'a [Arc<Stream>]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(execute_all(&self.pool, DIALECT, ddl(DIALECT, streams)))
    }

    fn write_rows<'a>(
        &'a self,
        stream: &'a Stream,
        rows: &'a [Row],
        replayed: &'a [i64],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let err = sink_error(DIALECT);
            let columns = DIALECT.column_list(stream);
            let data = encode_rows(stream, rows);
            let table = DIALECT.quote(&stream.table);
            if stream.id_field.is_none() && replayed.is_empty() {
                // The common case: one COPY, atomic on its own.
                let mut conn = self.pool.acquire().await.map_err(&err)?;
                let statement = format!("COPY {table} ({columns}) FROM STDIN");
                return copy_in(&mut conn, &statement, data).await.map_err(&err);
            }
            let mut tx = self.pool.begin().await.map_err(&err)?;
            delete_replayed::<sqlx::Postgres>(&mut tx, DIALECT, replayed).await?;
            match &stream.id_field {
                None => {
                    let statement = format!("COPY {table} ({columns}) FROM STDIN");
                    copy_in(&mut tx, &statement, data).await.map_err(&err)?;
                }
                Some(id) => {
                    let stage = staging_table(&stream.table);
                    sqlx::query(&format!(
                        "CREATE TEMPORARY TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    ))
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                    let statement = format!("COPY {stage} ({columns}) FROM STDIN");
                    copy_in(&mut tx, &statement, data).await.map_err(&err)?;
                    sqlx::query(&format!(
                        "INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} ON CONFLICT ({}) DO NOTHING",
                        DIALECT.quote(id)
                    ))
                    .execute(&mut *tx)
                    .await
                    .map_err(&err)?;
                }
            }
            tx.commit().await.map_err(&err)
        })
    }

    fn write_dead_letters<'a>(
        &'a self,
        letters: &'a [DeadLetter],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let err = sink_error(DIALECT);
            let mut conn = self.pool.acquire().await.map_err(&err)?;
            let statement = format!(
                "COPY {DEAD_LETTERS} ({}) FROM STDIN",
                DEAD_LETTER_COLUMNS.join(", ")
            );
            copy_in(&mut conn, &statement, encode_dead_letters(letters))
                .await
                .map_err(&err)
        })
    }

    fn fetch_dead_letters<'a>(
        &'a self,
        page: &'a DeadLetterPage,
    ) -> BoxFuture<'a, Result<Vec<StoredDeadLetter>, SinkError>> {
        Box::pin(fetch_dead_letters(&self.pool, DIALECT, rfc3339, page))
    }

    fn purge_dead_letters<'a>(
        &'a self,
        filter: &'a PurgeFilter,
    ) -> BoxFuture<'a, Result<u64, SinkError>> {
        Box::pin(purge_dead_letters(&self.pool, DIALECT, rfc3339, filter))
    }

    fn record_replay_failure<'a>(
        &'a self,
        id: i64,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(record_replay_failure(&self.pool, DIALECT, id, error))
    }

    fn describe_table<'a>(
        &'a self,
        table: &'a str,
    ) -> BoxFuture<'a, Result<Vec<ExistingColumn>, SinkError>> {
        Box::pin(describe_table(&self.pool, DIALECT, table))
    }

    fn table_has_rows<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<bool, SinkError>> {
        Box::pin(table_has_rows(&self.pool, DIALECT, table))
    }

    fn execute_ddl(&self, statements: Vec<String>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(execute_all(&self.pool, DIALECT, statements))
    }

    fn list_dead_letters<'a>(
        &'a self,
        query: &'a DeadLetterQuery,
    ) -> BoxFuture<'a, Result<Vec<ListedDeadLetter>, SinkError>> {
        Box::pin(list_dead_letters(&self.pool, DIALECT, query))
    }

    fn pool_usage(&self) -> PoolUsage {
        PoolUsage::of(&self.pool)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(execute_all(
            &self.health,
            DIALECT,
            vec!["SELECT 1".to_owned()],
        ))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.health.close().await;
            self.pool.close().await;
        })
    }
}
