//! MySQL/MariaDB writer: one transaction per batch of multi-row `INSERT`s with bound
//! values, chunked under 65,535 placeholders and a statement size well under
//! `max_allowed_packet`. sqlx sets the session to UTC and strict SQL mode.

use std::str::FromStr;

use std::sync::Arc;

use sqlx::mysql::MySqlConnectOptions;

use super::dialect::{mysql_timestamp, Dialect};
use super::generic::SqlxInserts;
use super::store::{Pools, Store};
use super::DatabaseConfig;
use super::{sink_error, SinkError, Storage};

/// Payload bytes per statement at most; less when the server's `max_allowed_packet` is
/// below 8 MiB (MariaDB's default is 16 MiB, MySQL's 64 MiB).
const MAX_STATEMENT_BYTES: usize = 4 * 1024 * 1024;

pub async fn connect(config: &DatabaseConfig) -> Result<Storage, SinkError> {
    let err = sink_error(Dialect::Mysql);
    let options = MySqlConnectOptions::from_str(&config.url).map_err(&err)?;
    let (pool, health) = super::open_pools::<sqlx::MySql>(config, options, Dialect::Mysql).await?;
    // A statement above max_allowed_packet makes the server drop the connection, which
    // looks transient and would be retried forever: stay well under it.
    let packet: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
        .fetch_one(&pool)
        .await
        .map_err(&err)?;
    let packet = usize::try_from(packet).unwrap_or(MAX_STATEMENT_BYTES);
    Ok(Storage {
        writer: Arc::new(SqlxInserts {
            pool: pool.clone(),
            dialect: Dialect::Mysql,
            max_statement_bytes: MAX_STATEMENT_BYTES.min(packet / 2),
            timestamp: mysql_timestamp,
        }),
        store: Store::new(
            Pools::Mysql(pool),
            Pools::Mysql(health),
            Dialect::Mysql,
            (packet / 4).max(1024),
        ),
    })
}
