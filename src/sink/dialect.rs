//! SQL text for each database: identifier quoting, DDL, insert statements and the
//! PostgreSQL `COPY` text encoding. Pure code, no I/O, unit-tested here.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};

use super::DeadLetterPage;
use crate::event::{Cell, Row};
use crate::schema::{ColumnType, OnConflict, Stream, EXTRA, RECEIVED_AT};

/// Name of the jobs table.
pub const JOBS: &str = "sluice_jobs";

/// The columns of [`JOBS`], in bind order.
#[rustfmt::skip]
pub const JOB_COLUMNS: [&str; 13] = [
    "id", "kind", "state", "created_at", "started_at", "finished_at",
    "params", "done", "total", "result", "logs", "errors", "heartbeat_at",
];

/// Name of the dead-letter table (README "Dead letters and replay").
/// MySQL/MariaDB: the session variable that counts the rows an `id_field` insert
/// skipped as duplicates (see [`Dialect::insert_statement`]).
pub const MYSQL_DUPLICATES: &str = "sluice_duplicates";

pub const DEAD_LETTERS: &str = "sluice_dead_letters";
/// The column of every stream table that holds its rows' load id (see `ledger`).
pub const LOAD_ID: &str = "_load_id";
/// Columns of the dead-letter table that Sluice writes (`id` is generated).
#[rustfmt::skip]
pub const DEAD_LETTER_COLUMNS: [&str; 8] = [
    "stream", "stage", "error", "payload", "source", "received_at", "attempts", "treated",
];
/// Longest `varchar(n)` MySQL can index and store in a row with utf8mb4 (65,535 bytes / 4).
const MYSQL_MAX_VARCHAR: u64 = 16_383;

/// The SQL flavour of the configured database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    /// The dialect of a database URL, from its scheme.
    pub fn from_url(url: &str) -> Result<Dialect, String> {
        let scheme = url
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::Mysql),
            _ => Err(format!(
                "unsupported database URL scheme `{scheme}:`; use sqlite://PATH, postgres://USER@HOST/DB or mysql://USER@HOST/DB"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::Mysql => "MySQL/MariaDB",
        }
    }

    /// Quotes an identifier. Identifiers are checked at load time; quoting still doubles
    /// the quote character so that the statement stays well-formed whatever it is given.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::Mysql => format!("`{}`", ident.replace('`', "``")),
            _ => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// The column type for one schema property.
    pub fn column_type(self, ty: ColumnType, is_id: bool) -> String {
        // One row per database, one column per schema type (the README's table).
        #[rustfmt::skip]
        let (text, timestamp, uuid, integer, number, boolean, json) = match self {
            Dialect::Postgres => ("text", "timestamptz", "uuid", "bigint", "double precision", "boolean", "jsonb"),
            Dialect::Mysql => ("longtext", "datetime(6)", "char(36)", "bigint", "double", "boolean", "json"),
            Dialect::Sqlite => ("TEXT", "TEXT", "TEXT", "INTEGER", "REAL", "INTEGER", "TEXT"),
        };
        match ty {
            ColumnType::Text { max_length } if self == Dialect::Mysql => {
                match (is_id, max_length) {
                    // A unique key needs a bounded type (255 characters covers ids in
                    // practice) and a binary collation, so that ids differing in case
                    // stay distinct.
                    (true, Some(n)) if n <= 255 => format!("varchar({n}) COLLATE utf8mb4_bin"),
                    (true, _) => "varchar(255) COLLATE utf8mb4_bin".into(),
                    (false, Some(n)) if n <= MYSQL_MAX_VARCHAR => format!("varchar({n})"),
                    (false, _) => text.into(),
                }
            }
            ColumnType::Text { .. } => text.into(),
            // 64 lowercase hex characters.
            ColumnType::Hash if self == Dialect::Mysql => "char(64)".into(),
            ColumnType::Hash => text.into(),
            ColumnType::Timestamp => timestamp.into(),
            ColumnType::Uuid => uuid.into(),
            ColumnType::Integer => integer.into(),
            ColumnType::Number => number.into(),
            ColumnType::Boolean => boolean.into(),
            ColumnType::Json => json.into(),
            ColumnType::Decimal { precision, scale } => match self {
                Dialect::Postgres => format!("numeric({precision},{scale})"),
                Dialect::Mysql => format!("decimal({precision},{scale})"),
                // Text keeps every digit (SQLite's numbers are 64-bit floats).
                Dialect::Sqlite => text.into(),
            },
        }
    }

    pub fn timestamp_type(self) -> &'static str {
        match self {
            Dialect::Postgres => "timestamptz",
            Dialect::Mysql => "datetime(6)",
            Dialect::Sqlite => "TEXT",
        }
    }

    pub fn json_type(self) -> &'static str {
        match self {
            Dialect::Postgres => "jsonb",
            Dialect::Mysql => "json",
            Dialect::Sqlite => "TEXT",
        }
    }

    /// The columns of a stream's table, in the order rows are written: one per schema
    /// property, then `_received_at`, then `_extra` when the schema allows undeclared
    /// properties, then `_load_id` (nullable: rows from before the ledger have none).
    /// Each is (name, column type, nullable). The one definition of the row
    /// layout: DDL, evolution, `INSERT`, `COPY` and the writers' cell order follow it.
    pub fn table_columns(self, stream: &Stream) -> Vec<(String, String, bool)> {
        let mut columns: Vec<(String, String, bool)> = stream
            .columns
            .iter()
            .map(|c| {
                let is_id = stream.key.as_ref().is_some_and(|k| k.has(&c.name));
                (c.name.clone(), self.column_type(c.ty, is_id), c.nullable)
            })
            .collect();
        columns.push((
            RECEIVED_AT.to_owned(),
            self.timestamp_type().to_owned(),
            false,
        ));
        if stream.has_extra {
            columns.push((EXTRA.to_owned(), self.json_type().to_owned(), true));
        }
        columns.push((LOAD_ID.to_owned(), "bigint".to_owned(), true));
        columns
    }

    /// `CREATE TABLE IF NOT EXISTS` for a stream's table.
    pub fn create_table(self, stream: &Stream) -> String {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n",
            self.quote(&stream.table)
        );
        let mut lines: Vec<String> = self
            .table_columns(stream)
            .iter()
            .map(|(name, ty, nullable)| {
                format!(
                    "  {} {ty}{}",
                    self.quote(name),
                    if *nullable { "" } else { " NOT NULL" }
                )
            })
            .collect();
        if let Some(key) = &stream.key {
            lines.push(format!("  UNIQUE ({})", self.quote_list(&key.columns)));
        }
        sql.push_str(&lines.join(",\n"));
        sql.push_str("\n)");
        if self == Dialect::Mysql {
            sql.push_str(" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4");
        }
        sql
    }

    /// Statements creating `sluice_dead_letters` and its index, if missing.
    pub fn create_dead_letters(self) -> Vec<String> {
        match self {
            Dialect::Postgres => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (\n  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n  stream text,\n  stage text NOT NULL,\n  error text NOT NULL,\n  payload text NOT NULL,\n  source text,\n  received_at timestamptz NOT NULL,\n  attempts integer NOT NULL DEFAULT 1,\n  treated boolean NOT NULL DEFAULT false\n)"
                ),
                // Looked for first: see `pg_index_if_missing`.
                pg_index_if_missing(
                    &format!("{DEAD_LETTERS}_stream_id"),
                    &format!("{DEAD_LETTERS} (stream, id)"),
                ),
                pg_index_if_missing(
                    &format!("{DEAD_LETTERS}_received_at"),
                    &format!("{DEAD_LETTERS} (received_at)"),
                ),
                // Keyset pages of the panel and the API filtered by stage (with or
                // without a stream) stay index range scans however rare the stage.
                pg_index_if_missing(
                    &format!("{DEAD_LETTERS}_stream_stage_id"),
                    &format!("{DEAD_LETTERS} (stream, stage, id)"),
                ),
                pg_index_if_missing(
                    &format!("{DEAD_LETTERS}_stage_id"),
                    &format!("{DEAD_LETTERS} (stage, id)"),
                ),
            ],
            Dialect::Mysql => vec![format!(
                "CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (\n  id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,\n  stream varchar(255),\n  stage varchar(16) NOT NULL,\n  error longtext NOT NULL,\n  payload longtext NOT NULL,\n  source varchar(255),\n  received_at datetime(6) NOT NULL,\n  attempts int NOT NULL DEFAULT 1,\n  treated boolean NOT NULL DEFAULT false,\n  KEY {DEAD_LETTERS}_stream_id (stream, id),\n  KEY {DEAD_LETTERS}_received_at (received_at),\n  KEY {DEAD_LETTERS}_stream_stage_id (stream, stage, id),\n  KEY {DEAD_LETTERS}_stage_id (stage, id)\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )],
            Dialect::Sqlite => vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {DEAD_LETTERS} (\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n  stream TEXT,\n  stage TEXT NOT NULL,\n  error TEXT NOT NULL,\n  payload TEXT NOT NULL,\n  source TEXT,\n  received_at TEXT NOT NULL,\n  attempts INTEGER NOT NULL DEFAULT 1,\n  treated INTEGER NOT NULL DEFAULT 0\n)"
                ),
                format!("CREATE INDEX IF NOT EXISTS {DEAD_LETTERS}_stream_id ON {DEAD_LETTERS} (stream, id)"),
                format!("CREATE INDEX IF NOT EXISTS {DEAD_LETTERS}_received_at ON {DEAD_LETTERS} (received_at)"),
                format!("CREATE INDEX IF NOT EXISTS {DEAD_LETTERS}_stream_stage_id ON {DEAD_LETTERS} (stream, stage, id)"),
                format!("CREATE INDEX IF NOT EXISTS {DEAD_LETTERS}_stage_id ON {DEAD_LETTERS} (stage, id)"),
            ],
        }
    }

    /// Adds `treated` to a dead-letter table made before the privacy treatment (its
    /// dead letters all hold payloads as received).
    pub fn add_treated_column(self) -> String {
        let ty = match self {
            Dialect::Sqlite => "INTEGER NOT NULL DEFAULT 0",
            Dialect::Postgres | Dialect::Mysql => "boolean NOT NULL DEFAULT false",
        };
        format!("ALTER TABLE {DEAD_LETTERS} ADD COLUMN treated {ty}")
    }

    /// The jobs table (see [`super::JobRecord`]).
    pub fn create_jobs(self) -> String {
        let (id, text) = match self {
            Dialect::Postgres => ("text", "text"),
            Dialect::Mysql => ("varchar(64)", "longtext"),
            Dialect::Sqlite => ("TEXT", "TEXT"),
        };
        let short = self.job_text_type();
        let engine = if self == Dialect::Mysql {
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        } else {
            ""
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {JOBS} (\n  id {id} PRIMARY KEY,\n  kind {short} NOT NULL,\n  state {short} NOT NULL,\n  created_at {short} NOT NULL,\n  started_at {short},\n  finished_at {short},\n  params {text} NOT NULL,\n  done bigint NOT NULL,\n  total bigint NOT NULL,\n  result {text} NOT NULL,\n  logs {text} NOT NULL,\n  errors {text} NOT NULL,\n  heartbeat_at {short}\n){engine}"
        )
    }

    /// The type of the jobs table's short text columns (times, states).
    pub fn job_text_type(self) -> &'static str {
        match self {
            Dialect::Postgres => "text",
            Dialect::Mysql => "varchar(64)",
            Dialect::Sqlite => "TEXT",
        }
    }

    /// Inserts a job, or updates every column of the one with its id: binds every
    /// column in [`JOB_COLUMNS`] order.
    pub fn save_job(self) -> String {
        let values: Vec<String> = (1..=JOB_COLUMNS.len())
            .map(|n| self.placeholder(n))
            .collect();
        let insert = format!(
            "INSERT INTO {JOBS} ({}) VALUES ({})",
            JOB_COLUMNS.join(", "),
            values.join(", ")
        );
        let update: Vec<String> = JOB_COLUMNS[1..]
            .iter()
            .map(|c| match self {
                Dialect::Mysql => format!("{c} = VALUES({c})"),
                _ => format!("{c} = excluded.{c}"),
            })
            .collect();
        match self {
            Dialect::Mysql => format!("{insert} ON DUPLICATE KEY UPDATE {}", update.join(", ")),
            _ => format!(
                "{insert} ON CONFLICT (id) DO UPDATE SET {}",
                update.join(", ")
            ),
        }
    }

    /// Jobs newest first: binds [id], limit.
    pub fn select_jobs(self, by_id: bool) -> String {
        let filter = if by_id {
            format!(" WHERE id = {}", self.placeholder(1))
        } else {
            String::new()
        };
        format!(
            "SELECT {} FROM {JOBS}{filter} ORDER BY created_at DESC, id DESC LIMIT {}",
            JOB_COLUMNS.join(", "),
            self.placeholder(1 + usize::from(by_id))
        )
    }

    /// Deletes up to `$limit` dead letters, oldest first, that match the filters:
    /// binds [stream], [stage], [received before], limit. (MySQL refuses `LIMIT` in an
    /// `IN` subquery, but not in a derived table inside one.)
    pub fn purge_dead_letters(self, stream: bool, stage: bool, before: bool) -> String {
        let mut filter = Filter::new(self, "1 = 1", 0);
        filter.eq_if(stream, "stream");
        filter.eq_if(stage, "stage");
        filter.time_if(before, "received_at <");
        self.delete_oldest(DEAD_LETTERS, "id", filter)
    }

    /// Deletes up to a bound number of the rows of `table` matching `filter`, lowest
    /// `id` first, in one statement (the limit is the next placeholder).
    pub(super) fn delete_oldest(self, table: &str, id: &str, mut filter: Filter) -> String {
        let limit = filter.next();
        let inner = format!(
            "SELECT {id} FROM {table} WHERE {} ORDER BY {id} LIMIT {limit}",
            filter.sql
        );
        match self {
            Dialect::Mysql => {
                format!("DELETE FROM {table} WHERE {id} IN (SELECT {id} FROM ({inner}) AS oldest)")
            }
            _ => format!("DELETE FROM {table} WHERE {id} IN ({inner})"),
        }
    }

    /// The quoted, comma-separated column list of a stream's table, system columns last.
    pub fn column_list(self, stream: &Stream) -> String {
        let names: Vec<String> = self
            .table_columns(stream)
            .iter()
            .map(|(name, _, _)| self.quote(name))
            .collect();
        names.join(", ")
    }

    /// `columns`, each quoted, comma-separated.
    pub fn quote_list(self, columns: &[String]) -> String {
        let quoted: Vec<String> = columns.iter().map(|c| self.quote(c)).collect();
        quoted.join(", ")
    }

    /// What an `INSERT` into `stream`'s table appends for a row whose key is stored:
    /// nothing without a key; with `id_field`, the row is skipped (MySQL counts it in
    /// a session variable: the driver asks for found rows, so rows affected cannot
    /// tell); with `upsert_key`, every other column is replaced, only when the row's
    /// `version_field` is not older than the stored one's when there is one.
    pub fn on_conflict(self, stream: &Stream) -> String {
        let Some(key) = &stream.key else {
            return String::new();
        };
        let keys = self.quote_list(&key.columns);
        let version = match &key.on_conflict {
            OnConflict::Skip => {
                return match self {
                    Dialect::Mysql => {
                        let id = self.quote(&key.columns[0]);
                        format!(" ON DUPLICATE KEY UPDATE {id} = IF((@{MYSQL_DUPLICATES} := @{MYSQL_DUPLICATES} + 1) > 0, {id}, {id})")
                    }
                    _ => format!(" ON CONFLICT ({keys}) DO NOTHING"),
                }
            }
            OnConflict::Replace { version } => version.as_deref(),
        };
        // Every column but the key's; the version last, since MySQL assigns left to
        // right and its guard must read the stored version.
        let mut replaced: Vec<String> = self
            .table_columns(stream)
            .into_iter()
            .map(|(name, _, _)| name)
            .filter(|name| !key.has(name) && Some(name.as_str()) != version)
            .collect();
        replaced.extend(version.map(str::to_owned));
        let table = self.quote(&stream.table);
        match self {
            Dialect::Mysql => {
                let guard = version.map(|v| {
                    let v = self.quote(v);
                    format!("VALUES({v}) >= {v} OR {v} IS NULL")
                });
                let set: Vec<String> = replaced
                    .iter()
                    .map(|c| {
                        let c = self.quote(c);
                        match &guard {
                            Some(g) => format!("{c} = IF({g}, VALUES({c}), {c})"),
                            None => format!("{c} = VALUES({c})"),
                        }
                    })
                    .collect();
                format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "))
            }
            _ => {
                let set: Vec<String> = replaced
                    .iter()
                    .map(|c| {
                        let c = self.quote(c);
                        format!("{c} = excluded.{c}")
                    })
                    .collect();
                let guard = version.map_or(String::new(), |v| {
                    let v = self.quote(v);
                    format!(" WHERE excluded.{v} >= {table}.{v} OR {table}.{v} IS NULL")
                });
                format!(
                    " ON CONFLICT ({keys}) DO UPDATE SET {}{guard}",
                    set.join(", ")
                )
            }
        }
    }

    /// A multi-row `INSERT … VALUES (?, …), …` for `rows` rows of `width` bound values,
    /// then `on_conflict` ([`Dialect::on_conflict`], or nothing).
    pub fn insert_statement(
        self,
        table: &str,
        columns: &str,
        width: usize,
        rows: usize,
        on_conflict: &str,
    ) -> String {
        let mut sql = format!("INSERT INTO {} ({columns}) VALUES ", self.quote(table));
        let mut group = String::with_capacity(width * 3 + 2);
        group.push('(');
        for i in 0..width {
            group.push_str(if i == 0 { "?" } else { ", ?" });
        }
        group.push(')');
        sql.reserve(rows * (group.len() + 2) + 64);
        for i in 0..rows {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&group);
        }
        sql.push_str(on_conflict);
        sql
    }

    /// PostgreSQL: `COPY table (columns) FROM STDIN` for a stream's rows (into its table
    /// or a staging table like it).
    pub fn copy_rows(self, table: &str, stream: &Stream) -> String {
        format!(
            "COPY {} ({}) FROM STDIN",
            self.quote(table),
            self.column_list(stream)
        )
    }

    /// PostgreSQL: `COPY` into the dead-letter table.
    pub fn copy_dead_letters(self) -> String {
        format!(
            "COPY {DEAD_LETTERS} ({}) FROM STDIN",
            DEAD_LETTER_COLUMNS.join(", ")
        )
    }

    /// PostgreSQL: a per-connection staging table shaped like `table`, emptied at commit.
    pub fn create_staging(self, stage: &str, table: &str) -> String {
        format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
            self.quote(stage),
            self.quote(table)
        )
    }

    /// PostgreSQL: moves the staged rows into the stream's table, as its key says
    /// ([`Dialect::on_conflict`]).
    pub fn insert_from_staging(self, stage: &str, stream: &Stream) -> String {
        let columns = self.column_list(stream);
        format!(
            "INSERT INTO {} ({columns}) SELECT {columns} FROM {}{}",
            self.quote(&stream.table),
            self.quote(stage),
            self.on_conflict(stream)
        )
    }

    /// Whether `table` has a row: a probe that reads at most one.
    pub fn probe_rows(self, table: &str) -> String {
        format!("SELECT 1 FROM {} LIMIT 1", self.quote(table))
    }

    /// `ALTER TABLE … ADD COLUMN` for a new property.
    pub fn add_column(self, table: &str, column: &str, ty: &str, not_null: bool) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN {} {ty}{}",
            self.quote(table),
            self.quote(column),
            if not_null { " NOT NULL" } else { "" }
        )
    }

    /// The unique keys of a table (bound), whole and without a condition (the keys
    /// `ON CONFLICT` and `ON DUPLICATE KEY` use), as rows (key name, column name).
    pub fn unique_key_columns(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT i.indexrelid::regclass::text, a.attname::text FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(i.indkey) WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL",
            Dialect::Mysql => "SELECT CAST(index_name AS CHAR), CAST(column_name AS CHAR) FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = ? AND non_unique = 0 AND sub_part IS NULL",
            Dialect::Sqlite => "SELECT il.name, ii.name FROM pragma_index_list(?) AS il, pragma_index_info(il.name) AS ii WHERE il.\"unique\" = 1 AND il.partial = 0",
        }
    }

    /// How many rows of `table` repeat the values of `columns` that an earlier row
    /// holds (rows with a NULL among them never count: a unique key allows any number).
    pub fn count_duplicates(self, table: &str, columns: &[String]) -> String {
        let table = self.quote(table);
        let present: Vec<String> = columns
            .iter()
            .map(|c| format!("{} IS NOT NULL", self.quote(c)))
            .collect();
        let grouped: Vec<String> = columns
            .iter()
            .map(|c| match self {
                // The unique key compares ids byte for byte (utf8mb4_bin), so does the count.
                Dialect::Mysql => format!("CAST({} AS BINARY)", self.quote(c)),
                _ => self.quote(c),
            })
            .collect();
        let integer = match self {
            Dialect::Mysql => "SIGNED",
            Dialect::Postgres => "bigint",
            Dialect::Sqlite => "INTEGER",
        };
        format!(
            "SELECT CAST(COALESCE(SUM(n - 1), 0) AS {integer}) FROM (SELECT COUNT(*) AS n FROM {table} WHERE {} GROUP BY {} HAVING COUNT(*) > 1) AS repeated",
            present.join(" AND "),
            grouped.join(", ")
        )
    }

    /// The statements adding `stream`'s unique key (`id_field` or `upsert_key`) to its
    /// existing table (set on a stream whose table was created without it). MySQL also
    /// turns the key's text columns into the bounded, byte-compared type they get.
    pub fn add_unique_key(self, stream: &Stream, key: &[String]) -> Vec<String> {
        let table = self.quote(&stream.table);
        let columns = self.quote_list(key);
        match self {
            Dialect::Postgres => vec![format!("ALTER TABLE {table} ADD UNIQUE ({columns})")],
            Dialect::Mysql => {
                let mut changes: Vec<String> = self
                    .table_columns(stream)
                    .into_iter()
                    .filter(|(name, _, _)| key.contains(name))
                    .map(|(name, ty, nullable)| {
                        format!(
                            "MODIFY {} {ty}{}",
                            self.quote(&name),
                            if nullable { "" } else { " NOT NULL" }
                        )
                    })
                    .collect();
                changes.push(format!("ADD UNIQUE ({columns})"));
                vec![format!("ALTER TABLE {table} {}", changes.join(", "))]
            }
            Dialect::Sqlite => vec![format!(
                "CREATE UNIQUE INDEX {} ON {table} ({columns})",
                self.quote(&format!("{}_{}_key", stream.table, key.join("_")))
            )],
        }
    }

    /// The statements taking and releasing the schema lock, which serialises start-up
    /// DDL and table evolution across Sluice instances sharing one database. The first
    /// waits until the lock is granted and answers one row, `1` when it is (MySQL gives
    /// up after 600 s with `0`). `None` for SQLite, whose own write lock serialises DDL.
    pub fn schema_lock(self) -> Option<(&'static str, &'static str)> {
        match self {
            // A session-level advisory lock of this database (key: "sluice" read as a hex number).
            Dialect::Postgres => Some((
                "SELECT CAST(1 AS BIGINT) FROM (SELECT pg_advisory_lock(126909663503205)) AS l",
                "SELECT pg_advisory_unlock(126909663503205)",
            )),
            // GET_LOCK names are server-wide: the name includes the database.
            Dialect::Mysql => Some((
                "SELECT CAST(GET_LOCK(CONCAT('sluice_schema:', DATABASE()), 600) AS SIGNED)",
                "SELECT RELEASE_LOCK(CONCAT('sluice_schema:', DATABASE()))",
            )),
            Dialect::Sqlite => None,
        }
    }

    /// The `n`th (1-based) bound-value placeholder.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// `DELETE FROM sluice_dead_letters WHERE id IN (…)` for `n` bound ids.
    pub fn delete_dead_letters(self, n: usize) -> String {
        let params: Vec<String> = (1..=n).map(|i| self.placeholder(i)).collect();
        format!(
            "DELETE FROM {DEAD_LETTERS} WHERE id IN ({})",
            params.join(", ")
        )
    }

    /// `received_at` of the dead-letter table as RFC 3339 text (UTC).
    fn received_at_text(self) -> &'static str {
        match self {
            Dialect::Postgres => {
                "to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            }
            Dialect::Mysql => "DATE_FORMAT(received_at, '%Y-%m-%dT%H:%i:%s.%fZ')",
            Dialect::Sqlite => "received_at",
        }
    }

    /// The newest dead letters first, for operators: `id, stream, stage, error,
    /// payload, source, received_at, attempts`. Binds in order: [before id], [stream],
    /// [stage], [received since], [received until], limit.
    pub fn list_dead_letters(
        self,
        before: bool,
        stream: bool,
        stage: bool,
        since: bool,
        until: bool,
    ) -> String {
        let mut filter = Filter::new(self, "1 = 1", 0);
        if before {
            let p = filter.next();
            filter.sql.push_str(&format!(" AND id < {p}"));
        }
        filter.eq_if(stream, "stream");
        filter.eq_if(stage, "stage");
        filter.time_if(since, "received_at >=");
        filter.time_if(until, "received_at <");
        let limit = filter.next();
        format!(
            "SELECT id, stream, stage, error, payload, source, {}, CAST(attempts AS {}) FROM {DEAD_LETTERS} WHERE {} ORDER BY id DESC LIMIT {limit}",
            self.received_at_text(),
            if self == Dialect::Mysql { "SIGNED" } else { "BIGINT" },
            filter.sql,
        )
    }

    /// A page of replayable dead letters (with a stream, or with `route` those of the
    /// `route` stage), oldest first, after id `$1`, optionally for one stream and since
    /// a time: `id, stream, payload, received_at` (as RFC 3339 text), `source`. Binds:
    /// after id, [stream], [since], [stage], limit.
    pub fn select_dead_letters(self, page: &DeadLetterPage) -> String {
        let received = self.received_at_text();
        let mut filter = self.replayable_filter(page);
        let limit = filter.next();
        format!(
            "SELECT id, stream, payload, {received}, source, treated FROM {DEAD_LETTERS} WHERE {} ORDER BY id LIMIT {limit}",
            filter.sql
        )
    }

    /// How many dead letters [`Dialect::select_dead_letters`] would page through: binds
    /// after id, [stream], [since], [stage].
    pub fn count_dead_letters(self, page: &DeadLetterPage) -> String {
        let filter = self.replayable_filter(page);
        format!("SELECT COUNT(*) FROM {DEAD_LETTERS} WHERE {}", filter.sql)
    }

    /// The replayable dead letters after an id: binds after id, [stream], [since], [stage].
    fn replayable_filter(self, page: &DeadLetterPage) -> Filter {
        let which = if page.route {
            "stage = 'route'"
        } else {
            "stream IS NOT NULL"
        };
        let mut filter = Filter::new(
            self,
            &format!("id > {} AND {which}", self.placeholder(1)),
            1,
        );
        filter.eq_if(page.stream.is_some(), "stream");
        filter.time_if(page.since.is_some(), "received_at >=");
        filter.eq_if(page.stage.is_some(), "stage");
        filter
    }

    /// Records a failed replay of dead letter `$2`: one more attempt, and the new reason `$1`.
    pub fn record_replay_failure(self) -> String {
        format!(
            "UPDATE {DEAD_LETTERS} SET attempts = attempts + 1, error = {} WHERE id = {}",
            self.placeholder(1),
            self.placeholder(2)
        )
    }

    /// [`Dialect::record_replay_failure`] that also replaces the payload with its
    /// treated form (a dead letter kept as received, of a stream that now treats
    /// personal fields): binds error, payload, id.
    pub fn record_treated_replay_failure(self) -> String {
        format!(
            "UPDATE {DEAD_LETTERS} SET attempts = attempts + 1, error = {}, payload = {}, treated = {} WHERE id = {}",
            self.placeholder(1),
            self.placeholder(2),
            match self {
                Dialect::Sqlite => "1",
                Dialect::Postgres | Dialect::Mysql => "true",
            },
            self.placeholder(3)
        )
    }

    /// The columns of table `$1` in the current database/schema: `name, nullable`
    /// (`YES` / `NO`), type.
    pub fn describe_table(self) -> &'static str {
        match self {
            Dialect::Postgres => "SELECT CAST(column_name AS TEXT), CAST(is_nullable AS TEXT), CAST(data_type AS TEXT) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
            Dialect::Mysql => "SELECT CAST(COLUMN_NAME AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(DATA_TYPE AS CHAR) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
            Dialect::Sqlite => "SELECT name, CASE WHEN \"notnull\" = 1 THEN 'NO' ELSE 'YES' END, type FROM pragma_table_info(?)",
        }
    }

    /// Most bound values one statement may carry.
    pub fn max_bind_params(self) -> usize {
        match self {
            Dialect::Mysql => 65_535,
            Dialect::Postgres => 65_535,
            Dialect::Sqlite => 32_766,
        }
    }
}

impl Dialect {
    /// Why the database would refuse a value of `row` that its schema accepts, as a JSON
    /// pointer and a reason, so that the event is dead-lettered when its row is built
    /// instead of failing (and bisecting) a whole batch: NUL in PostgreSQL text and
    /// `jsonb`, year 0 in PostgreSQL `timestamptz`, years outside 1000-9999 in MySQL's
    /// `datetime(6)`. `json`: the JSON text the row was read from, when the caller has
    /// it; without a `\u0000` escape there, no value holds NUL (JSON has no other way
    /// to write one), and the values are not searched.
    pub fn refused_value(
        self,
        stream: &Stream,
        row: &Row,
        json: Option<&str>,
    ) -> Option<(String, String)> {
        use chrono::Datelike;
        let name = self.name();
        let nul = self == Dialect::Postgres && json.is_none_or(json_has_nul);
        for (col, cell) in stream.columns.iter().zip(&row.cells) {
            let reason = match (self, cell) {
                (Dialect::Postgres, Cell::Text(s)) if nul && s.contains('\0') => format!(
                    "{name} cannot store the NUL character (\\u0000) in text; remove it from the value"
                ),
                (Dialect::Postgres, Cell::Json(s)) if nul && json_has_nul(s) => format!(
                    "{name} cannot store the NUL character (\\u0000) in jsonb; remove it from the value"
                ),
                // The year of the naive value: through the `DateTime` it would apply
                // the zero offset again, a call per row.
                (Dialect::Postgres, Cell::Timestamp(t)) if t.naive_utc().year() == 0 => format!(
                    "{name}'s timestamptz has no year 0; send a year from 0001"
                ),
                (Dialect::Mysql, Cell::Timestamp(t))
                    if !(1000..=9999).contains(&t.naive_utc().year()) =>
                {
                    format!("{name}'s datetime(6) supports years 1000 to 9999 only")
                }
                _ => continue,
            };
            return Some((format!("/{}", col.name), reason));
        }
        match (self, &row.extra) {
            (Dialect::Postgres, Some(extra)) if nul && json_has_nul(extra) => Some((
                String::new(),
                format!("{name} cannot store the NUL character (\\u0000) in jsonb, and a property the schema does not declare (kept in {EXTRA}) holds one; remove it"),
            )),
            _ => None,
        }
    }
}

/// PostgreSQL: `CREATE INDEX index ON on` (`on`: the table, its columns and any
/// method or options), run only when no relation named `index` exists.
/// `CREATE INDEX IF NOT EXISTS` takes its table lock before it looks, so an index that
/// exists would still wait for every open write on the table (and hold up the writes
/// queued behind it): look first.
pub(super) fn pg_index_if_missing(index: &str, on: &str) -> String {
    format!(
        "DO $$ BEGIN IF to_regclass({}) IS NULL THEN CREATE INDEX IF NOT EXISTS {} ON {on}; END IF; END $$",
        Dialect::Postgres.text_literal(index),
        Dialect::Postgres.quote(index)
    )
}

/// A `WHERE` clause built one condition at a time, numbering its placeholders in the
/// order they are added, which is the order their values are bound in.
pub(super) struct Filter {
    dialect: Dialect,
    /// Placeholders used so far.
    bound: usize,
    sql: String,
}

impl Filter {
    /// Starts from `first`, which already uses `bound` placeholders.
    pub(super) fn new(dialect: Dialect, first: &str, bound: usize) -> Filter {
        Filter {
            dialect,
            bound,
            sql: first.to_owned(),
        }
    }

    /// The next placeholder.
    fn next(&mut self) -> String {
        self.bound += 1;
        self.dialect.placeholder(self.bound)
    }

    /// `AND column = ?` when `on`.
    fn eq_if(&mut self, on: bool, column: &str) {
        if on {
            let p = self.next();
            self.sql.push_str(&format!(" AND {column} = {p}"));
        }
    }

    /// `AND comparison ?` against a bound RFC 3339 text when `on` (PostgreSQL casts it).
    pub(super) fn time_if(&mut self, on: bool, comparison: &str) {
        if on {
            let mut p = self.next();
            if self.dialect == Dialect::Postgres {
                p = format!("CAST({p} AS timestamptz)");
            }
            self.sql.push_str(&format!(" AND {comparison} {p}"));
        }
    }
}

/// Whether JSON text (as received, or as serde_json writes it) holds an escaped NUL
/// (`\u0000`) in a string or key. Escapes are read in order, so `\\u0000` (a
/// backslash, then `u0000`) is not one.
fn json_has_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    // Most JSON holds no `\u0000` at all: one vectorised search settles it. Where it
    // does, it is an escape only if an even number of backslashes precede it.
    // The searcher is built once: building it was 1 % of Sluice's CPU under load.
    static NUL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u0000"));
    NUL.find_iter(bytes).any(|at| {
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        backslashes % 2 == 0
    })
}

/// A timestamp as SQLite stores it: RFC 3339, UTC, microseconds.
pub fn sqlite_timestamp(t: &DateTime<Utc>) -> String {
    let mut out = String::with_capacity(27);
    push_sqlite_timestamp(&mut out, t);
    out
}

/// Appends [`sqlite_timestamp`] to `out` (a buffer reused from row to row).
pub fn push_sqlite_timestamp(out: &mut String, t: &DateTime<Utc>) {
    if !push_timestamp(out, t, 'T', "Z") {
        out.push_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true));
    }
}

/// A timestamp as MySQL's `datetime(6)` reads it, in UTC.
pub fn mysql_timestamp(t: &DateTime<Utc>) -> String {
    let mut out = String::with_capacity(26);
    if !push_timestamp(&mut out, t, ' ', "") {
        out = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    }
    out
}

/// Appends `t` as `YYYY-MM-DD{sep}HH:MM:SS.ffffff{suffix}` and returns true, or appends
/// nothing and returns false for what this fast path does not cover (years outside
/// 0..=9999, leap seconds). chrono's `format` parses its pattern on every call, which
/// was 8% of Sluice's CPU profile under load.
fn push_timestamp(out: &mut String, t: &DateTime<Utc>, sep: char, suffix: &str) -> bool {
    use chrono::{Datelike, Timelike};
    // The UTC fields straight from the naive value (through the `DateTime` each field
    // would apply the zero offset again).
    let t = t.naive_utc();
    let year = t.year();
    let nanos = t.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return false;
    }
    // Written into one buffer, then appended once.
    let mut buf = *b"0000-00-00 00:00:00.000000";
    let mut sep_byte = [0u8; 4];
    let sep = sep.encode_utf8(&mut sep_byte).as_bytes();
    if sep.len() != 1 {
        return false;
    }
    buf[10] = sep[0];
    for (at, n, width) in [
        (0, year as u32, 4),
        (5, t.month(), 2),
        (8, t.day(), 2),
        (11, t.hour(), 2),
        (14, t.minute(), 2),
        (17, t.second(), 2),
        (20, nanos / 1000, 6),
    ] {
        put_digits(&mut buf[at..at + width], n);
    }
    // The buffer holds ASCII only.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
    out.push_str(suffix);
    true
}

/// "00" to "99", for writing two digits at a time.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// Writes `n` in decimal into `slots`, zero-padded to their width: two digits per
/// division, from a table.
fn put_digits(slots: &mut [u8], mut n: u32) {
    let mut rest = slots;
    while let [head @ .., a, b] = rest {
        let pair = (n % 100) as usize * 2;
        *a = DIGIT_PAIRS[pair];
        *b = DIGIT_PAIRS[pair + 1];
        n /= 100;
        rest = head;
    }
    if let [a] = rest {
        *a = b'0' + (n % 10) as u8;
    }
}

/// Appends one value in PostgreSQL `COPY … FROM STDIN` text format.
pub fn copy_text_cell(out: &mut String, cell: &Cell) {
    match cell {
        Cell::Null => out.push_str("\\N"),
        Cell::Text(s) | Cell::Json(s) => copy_text_escape(out, s),
        Cell::Uuid(u) => out.push_str(u.encode(&mut [0; 36])),
        Cell::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
        Cell::Float(f) => write!(out, "{f:?}").expect("writing to a String cannot fail"),
        Cell::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Cell::Timestamp(t) => {
            if !push_timestamp(out, t, ' ', "+00") {
                write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f+00"))
                    .expect("writing to a String cannot fail")
            }
        }
    }
}

/// The index of the first byte of `bytes` that may need an escape: a backslash, or a
/// control character up to carriage return (tab, newline and carriage return do; the
/// others, rare, are copied by the escaping loop). One needle and one bound cost fewer
/// compares per block than the four bytes themselves.
fn first_copy_special(bytes: &[u8]) -> Option<usize> {
    let at = crate::scan::first_of(bytes, 0, [b'\\'], b'\r' + 1);
    (at < bytes.len()).then_some(at)
}

/// Escapes text for the `COPY` text format: backslash, tab, newline and carriage return.
pub fn copy_text_escape(out: &mut String, s: &str) {
    // Most values need no escape: found eight bytes at a time, and copied whole.
    let Some(first) = first_copy_special(s.as_bytes()) else {
        out.push_str(s);
        return;
    };
    out.push_str(&s[..first]);
    let s = &s[first..];
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(esc);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {

    #[test]
    fn fast_timestamps_match_chrono_formatting() {
        for micros in [
            0i64,
            1,
            999_999,
            1_714_521_600_123_456,
            253_402_300_799_999_999,
            -1,
        ] {
            let t = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            assert_eq!(
                sqlite_timestamp(&t),
                t.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
            assert_eq!(
                mysql_timestamp(&t),
                t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
            );
            let mut copy = String::new();
            copy_text_cell(&mut copy, &Cell::Timestamp(t));
            assert_eq!(copy, t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string());
        }
    }
    use super::*;

    #[test]
    fn escaped_nul_is_found_in_json_text_and_an_escaped_backslash_is_not_one() {
        assert!(json_has_nul(
            &serde_json::json!({"a": "x\u{0}y"}).to_string()
        ));
        assert!(json_has_nul(&serde_json::json!({"k\u{0}": 1}).to_string()));
        assert!(!json_has_nul(
            &serde_json::json!({"a": "\\u0000"}).to_string()
        ));
        assert!(!json_has_nul(r#"{"a":"\\"}"#));
        assert!(!json_has_nul("\\"));
    }

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(Dialect::Postgres.quote("a\"b"), "\"a\"\"b\"");
        assert_eq!(Dialect::Mysql.quote("a`b"), "`a``b`");
        assert_eq!(Dialect::Sqlite.quote("orders"), "\"orders\"");
    }

    #[test]
    fn urls_select_the_dialect() {
        assert_eq!(Dialect::from_url("sqlite://x.db"), Ok(Dialect::Sqlite));
        assert_eq!(
            Dialect::from_url("postgresql://u@h/d"),
            Ok(Dialect::Postgres)
        );
        assert_eq!(Dialect::from_url("mariadb://u@h/d"), Ok(Dialect::Mysql));
        assert!(Dialect::from_url("oracle://x")
            .unwrap_err()
            .contains("oracle"));
    }

    #[test]
    fn copy_text_escapes_the_format_metacharacters() {
        let mut out = String::new();
        copy_text_escape(&mut out, "a\tb\nc\\d\re;'\"");
        assert_eq!(out, "a\\tb\\nc\\\\d\\re;'\"");
        for (i, special) in ["\\", "\t", "\n", "\r"].into_iter().enumerate() {
            let plain = "é plain text, long enough for words ".repeat(2);
            let at = 3 + 9 * i;
            let text = format!("{}{special}{}", &plain[..at], &plain[at..]);
            let mut out = String::new();
            copy_text_escape(&mut out, &text);
            assert_eq!(out.len(), text.len() + 1, "{text:?}");
            assert_eq!(first_copy_special(text.as_bytes()), Some(at));
        }
        assert_eq!(first_copy_special(b"no escapes here at all"), None);
        // Other control characters are looked at, and copied as they are.
        let mut out = String::new();
        copy_text_escape(&mut out, "bell\u{7} and form feed\u{c} stay; tab\t");
        assert_eq!(out, "bell\u{7} and form feed\u{c} stay; tab\\t");
        let mut out = String::new();
        for c in [
            Cell::Null,
            Cell::Bool(true),
            Cell::Int(-5),
            Cell::Float(0.5),
        ] {
            copy_text_cell(&mut out, &c);
            out.push('|');
        }
        assert_eq!(out, "\\N|t|-5|0.5|");
    }

    #[test]
    fn insert_statement_has_one_group_per_row_and_skips_duplicates() {
        let sql = Dialect::Sqlite.insert_statement(
            "t",
            "\"a\", \"b\"",
            2,
            3,
            " ON CONFLICT (\"a\") DO NOTHING",
        );
        assert_eq!(sql, "INSERT INTO \"t\" (\"a\", \"b\") VALUES (?, ?), (?, ?), (?, ?) ON CONFLICT (\"a\") DO NOTHING");
        let sql = Dialect::Mysql.insert_statement("t", "`a`", 1, 2, " ON DUPLICATE KEY UPDATE `a` = IF((@sluice_duplicates := @sluice_duplicates + 1) > 0, `a`, `a`)");
        assert_eq!(
            sql,
            "INSERT INTO `t` (`a`) VALUES (?), (?) ON DUPLICATE KEY UPDATE `a` = IF((@sluice_duplicates := @sluice_duplicates + 1) > 0, `a`, `a`)"
        );
    }

    #[test]
    fn timestamps_render_per_database() {
        let t = crate::schema::parse_timestamp("2024-05-01T12:00:00.5Z").unwrap();
        assert_eq!(sqlite_timestamp(&t), "2024-05-01T12:00:00.500000Z");
        assert_eq!(mysql_timestamp(&t), "2024-05-01 12:00:00.500000");
        let mut out = String::new();
        copy_text_cell(&mut out, &Cell::Timestamp(t));
        assert_eq!(out, "2024-05-01 12:00:00.500000+00");
    }
}
