//! Pulled sources (`[sources.NAME]`): tables of PostgreSQL, MySQL/MariaDB and SQLite
//! databases that never push, read incrementally with `SELECT` only.
//!
//! A run reads the rows strictly after the source's pointer (the cursor columns' values
//! of the last row transmitted, kept in `sluice_pointers` of the target), ordered by the
//! cursor, a load at a time (keyset pagination). Each row becomes an event of the
//! source's stream, rendered as JSON by the stream's column types (numbers with their
//! own digits, timestamps as RFC 3339), and goes through the same filing as every
//! other input: validated, treated, a row or a dead letter. A load's rows, its ledger
//! row and the new pointer commit in one transaction of the target, so a run killed at
//! any moment neither loses nor repeats a row: the next one starts after the pointer.
//!
//! Files (`path = "/data/*.csv"`) are the other kind of source ([`files`]); tables are
//! read by [`table`].

use std::sync::Arc;

use serde::Deserialize;

use crate::ingest::filing::Filing;
use crate::schema::Stream;
use crate::sink::ledger::Pointer;
use crate::sink::{RowBatch, Storage};

pub mod files;
mod table;

/// `[sources.NAME]`: a table (or query) of another database, pulled into a stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The environment variable holding the source's URL (`postgres://`, `mysql://`,
    /// `sqlite://`); the URL itself never sits in the config file.
    #[serde(default)]
    pub url_env: String,
    /// Instead of a database: CSV (`*.csv`, with a header row) or NDJSON (`*.ndjson`,
    /// `*.jsonl`) files, `*` and `?` matching in the file name (`/data/prices/*.csv`);
    /// each file is loaded once.
    pub path: Option<String>,
    /// The table to read (`name` or `schema.name`).
    pub table: Option<String>,
    /// Instead of `table`: a `SELECT` whose rows are read (Sluice adds the cursor's
    /// filter, order and limit around it).
    pub query: Option<String>,
    /// The columns whose values, in order, identify how far the source was read: each
    /// run reads the rows strictly after the last one transmitted.
    #[serde(default)]
    pub cursor: Vec<String>,
    /// The stream each row becomes an event of.
    pub stream: String,
    /// Rows per load: one read and one transaction in the target.
    #[serde(default = "default_load_size")]
    pub load_size: usize,
    /// Reads at most this many rows per second (0: as fast as it goes), to spare a live
    /// source.
    #[serde(default)]
    pub max_rows_per_second: u64,
    /// Connections a run may open to the source (1 to 16; default 1): with more, the
    /// ends of the next pages are found on the cursor's index and that many pages are
    /// read at once (still written in cursor order). A paced run reads with one.
    pub max_connections: Option<usize>,
    /// Runs on this schedule (e.g. `"5m"`), the first right after start-up; without it,
    /// on demand only.
    #[serde(default, deserialize_with = "crate::toml_values::opt_duration")]
    pub every: Option<std::time::Duration>,
}

fn default_load_size() -> usize {
    5000
}

impl SourceConfig {
    /// What is wrong with source `name`'s settings, if anything.
    pub fn check(&self, name: &str) -> Result<(), String> {
        let at = |what: String| Err(format!("[sources.{name}] {what}"));
        crate::schema::check_identifier(name).or_else(|e| at(format!("the source's name {e}")))?;
        if !(1..=100_000).contains(&self.load_size) {
            return at(format!("load_size = {}: give 1 to 100000", self.load_size));
        }
        if self
            .every
            .is_some_and(|d| d < std::time::Duration::from_secs(1))
        {
            return at("every must be at least 1s (e.g. \"5m\")".into());
        }
        if let Some(n) = self.max_connections {
            if !(1..=16).contains(&n) {
                return at(format!("max_connections = {n}: give 1 to 16"));
            }
        }
        if let Some(path) = &self.path {
            if !self.url_env.is_empty()
                || self.table.is_some()
                || self.query.is_some()
                || !self.cursor.is_empty()
                || self.max_connections.is_some()
            {
                return at("path reads files: it takes no url_env, table, query, cursor or max_connections".into());
            }
            return files::check_path(path).or_else(|e| at(format!("path {e}")));
        }
        match (&self.table, &self.query) {
            (Some(_), Some(_)) | (None, None) => {
                return at("needs either table or query (one of them)".into())
            }
            (Some(table), None) => {
                for part in table.split('.') {
                    crate::schema::check_identifier(part).or_else(|e| at(format!("table {e}")))?;
                }
            }
            (None, Some(query)) => {
                if !query
                    .trim_start()
                    .get(..6)
                    .is_some_and(|s| s.eq_ignore_ascii_case("select"))
                {
                    return at("query must be a SELECT".into());
                }
            }
        }
        if self.cursor.is_empty() {
            return at("needs a cursor: the columns that order the rows and tell how far they were read, e.g. [\"updated_at\", \"id\"]".into());
        }
        for column in &self.cursor {
            crate::schema::check_identifier(column)
                .or_else(|e| at(format!("cursor column {e}")))?;
        }
        if self.url_env.is_empty() {
            return at(
                "needs url_env (the variable holding the database's URL), or path for files".into(),
            );
        }
        Ok(())
    }
}

/// How a pull run went.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PullReport {
    /// Rows read from the source.
    pub read: u64,
    /// Rows stored in the target (an older version an upsert ignored not included).
    pub stored: u64,
    pub dead_lettered: u64,
    pub loads: u64,
}

/// What a run reports while it goes.
pub trait PullProgress: Send + Sync {
    /// The rows the source holds after the pointer, counted once at the start.
    fn total(&self, rows: u64);
    /// After each load.
    fn advance(&self, report: &PullReport);
    /// Whether to stop (between loads).
    fn cancelled(&self) -> bool;
}

/// A progress nobody follows (runs from a command or a test).
pub struct Unwatched;

impl PullProgress for Unwatched {
    fn total(&self, _: u64) {}
    fn advance(&self, _: &PullReport) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// One load of a pulled source: `read` rows of `stream`, filed, and the pointer after
/// them.
pub(crate) struct PulledLoad<'a> {
    pub stream: &'a Stream,
    pub pointer: &'a Pointer,
    pub read: usize,
}

impl PulledLoad<'_> {
    /// Writes the load's dead letters first (a crash before the load commits reads
    /// these rows again: a dead letter twice, never none), then its rows and the
    /// pointer in one transaction, or the pointer alone when every row was
    /// dead-lettered; counts it in `report`.
    pub(crate) async fn write(
        &self,
        storage: &Storage,
        filing: Filing,
        report: &mut PullReport,
    ) -> anyhow::Result<()> {
        let events = filing.into_one();
        if !events.letters.is_empty() {
            storage.writer.write_dead_letters(&events.letters).await?;
        }
        if events.rows.is_empty() {
            storage.store.move_pointer(self.pointer).await?;
        } else {
            let stored = storage
                .writer
                .write_batch(RowBatch {
                    stream: self.stream,
                    rows: &events.rows,
                    replayed: &[],
                    pointer: Some(self.pointer),
                })
                .await?;
            report.stored += stored as u64;
            report.loads += 1;
        }
        report.read += self.read as u64;
        report.dead_lettered += events.letters.len() as u64;
        Ok(())
    }
}

/// One run of a source: which, into what, and who follows it.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub name: &'a str,
    pub source: &'a SourceConfig,
    pub stream: &'a Arc<Stream>,
    pub storage: &'a Storage,
    /// `[dead_letters] max_payload_bytes`.
    pub max_payload: usize,
    pub progress: &'a dyn PullProgress,
}

/// Pulls a source into its stream once: every row after its pointer, a load at a
/// time, until the source has no more, `progress` says to stop, or a load fails.
pub async fn pull(run: Run<'_>) -> anyhow::Result<PullReport> {
    match &run.source.path {
        Some(path) => files::pull(run, path).await,
        None => table::pull(run).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(toml: &str) -> SourceConfig {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn a_source_s_sizes_and_connections_are_checked() {
        let table =
            "url_env = \"CRM\"\ntable = \"deals\"\ncursor = [\"id\"]\nstream = \"crm_deal\"\n";
        assert_eq!(source(table).check("crm"), Ok(()));
        assert_eq!(
            source(&format!("{table}load_size = 0\n")).check("crm"),
            Err("[sources.crm] load_size = 0: give 1 to 100000".into())
        );
        assert_eq!(
            source(&format!("{table}max_connections = 16\n")).check("crm"),
            Ok(())
        );
        assert_eq!(
            source(&format!("{table}max_connections = 0\n")).check("crm"),
            Err("[sources.crm] max_connections = 0: give 1 to 16".into())
        );
        assert_eq!(
            source(&format!("{table}max_connections = 17\n")).check("crm"),
            Err("[sources.crm] max_connections = 17: give 1 to 16".into())
        );
        let files = "path = \"/data/*.csv\"\nstream = \"prices\"\nmax_connections = 2\n";
        assert_eq!(
            source(files).check("prices"),
            Err("[sources.prices] path reads files: it takes no url_env, table, query, cursor or max_connections".into())
        );
    }
}
