//! `[database]`: the settings of the storage layer, beside it.

use std::time::Duration;

use serde::Deserialize;

use crate::toml_values::duration;

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH`, `postgres://…` or `mysql://…` (MariaDB uses `mysql://` too).
    #[serde(default = "default_database_url")]
    pub url: String,
    /// Upper bound of the connection pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a write waits for a pooled connection before counting as a transient failure.
    #[serde(default = "default_acquire_timeout", deserialize_with = "duration")]
    pub acquire_timeout: Duration,
    /// Longest one batch write may take before it counts as a transient failure and is
    /// retried on another connection (a database that drops packets never answers).
    #[serde(default = "default_write_timeout", deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// SQLite only: `full` (the default) fsyncs the log at every commit, so a commit
    /// survives power loss; `normal` syncs only at checkpoints, so a commit survives a
    /// crash of Sluice but the last ones may be lost on power loss or a kernel crash.
    #[serde(default)]
    pub sqlite_synchronous: SqliteSynchronous,
}

/// `[database] sqlite_synchronous`: SQLite's `PRAGMA synchronous` in WAL mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// The log is fsynced at every commit: durable across power loss.
    #[default]
    Full,
    /// The log is fsynced at checkpoints only: durable across a crash of the process.
    Normal,
}

fn default_database_url() -> String {
    "sqlite://sluice.db".to_owned()
}
fn default_max_connections() -> u32 {
    8
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(5)
}
/// `database.write_timeout` by default (also what tools without a config use).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn default_write_timeout() -> Duration {
    DEFAULT_WRITE_TIMEOUT
}
