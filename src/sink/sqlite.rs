//! SQLite writer (the embedded default): WAL mode, one transaction per batch of
//! multi-row `INSERT`s with bound values, chunked under SQLite's bound-parameter limit.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Sqlite;

use super::bound::BoundSink;
use super::dialect::{sqlite_timestamp, Dialect};
use super::{sink_error, SinkError};
use crate::config::DatabaseConfig;

/// Payload bytes per statement; SQLite has no packet limit, this only bounds memory.
const MAX_STATEMENT_BYTES: usize = 16 * 1024 * 1024;

pub async fn connect(config: &DatabaseConfig) -> Result<BoundSink<Sqlite>, SinkError> {
    let err = sink_error(Dialect::Sqlite);
    let options = SqliteConnectOptions::from_str(&config.url)
        .map_err(&err)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_with(options)
        .await
        .map_err(&err)?;
    Ok(BoundSink {
        pool,
        dialect: Dialect::Sqlite,
        max_statement_bytes: MAX_STATEMENT_BYTES,
        timestamp: sqlite_timestamp,
    })
}
