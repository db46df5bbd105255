//! The load ledger and the watermark: every committed write of rows is a load, with an
//! id unique in the database and increasing, recorded in `sluice_loads` in the same
//! transaction as its rows (which carry it in `_load_id`).
//!
//! The watermark of a stream is the highest load id below which no load of the stream
//! will ever commit. How it holds with several writers (ARCHITECTURE.md, "Loads and
//! the watermark"):
//! - PostgreSQL: a load's id is its writing transaction's own id
//!   (`pg_current_xact_id()`, plus the offset kept in `sluice_load_seq`), taken after
//!   the transaction holds a shared advisory lock named after its stream. Transaction
//!   ids are handed out in increasing order, and the database itself knows which are
//!   still running (`pg_current_snapshot()`); the lock table tells which of those are
//!   loads of a stream. The watermark is the lowest running id that is not *proved*
//!   to be some other transaction, minus one: nothing is registered, nothing is
//!   claimed, and a writer pays one lock and no extra row or commit.
//! - MySQL/MariaDB: a writer *registers* its load before writing, in a short
//!   transaction of its own that takes the next id from `sluice_load_seq` (one row,
//!   locked by that update) and inserts it into `sluice_loads_in_flight`. Since ids
//!   are taken under that lock and published by the same commit, a reader that sees a
//!   registration sees every one with a lower id. The writing transaction *claims* its
//!   registration at the end (deletes it) and inserts the ledger row; it rolls back
//!   when the claim finds nothing. The watermark, read in one statement, is the lowest
//!   registered id of the stream minus one, or else the last id taken.
//! - A load in flight for longer than `[ledger] in_flight_timeout` belongs to a writer
//!   that is stuck or gone. On MySQL any instance deletes its registration, and that
//!   writer can then no longer commit it; on PostgreSQL any instance ends the
//!   writer's session (`pg_terminate_backend`), which rolls the load back. Either way
//!   the watermark then passes it safely.
//! - SQLite: one writer at a time holds the database, so the id is taken inside the
//!   writing transaction and loads commit in id order; nothing is ever in flight.

use chrono::{DateTime, Utc};

use super::dialect::Dialect;
use crate::event::Row;
use crate::schema::Stream;

pub const LOADS: &str = "sluice_loads";
pub const LOAD_SEQ: &str = "sluice_load_seq";
pub const IN_FLIGHT: &str = "sluice_loads_in_flight";
pub const STREAMS: &str = "sluice_streams";
pub const WATERMARKS: &str = "sluice_watermarks";
pub const DAILY: &str = "sluice_daily";
pub const POINTERS: &str = "sluice_pointers";
pub use super::dialect::LOAD_ID;

/// PostgreSQL: the first key of the shared advisory lock a load holds for its whole
/// transaction (`pg_advisory_xact_lock_shared(LOCK_CLASS, hashtext(stream))`); the
/// watermark reads the lock table for it. "slce" in ASCII.
pub const LOCK_CLASS: i64 = 0x736c_6365;

/// `[ledger]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// A load registered longer ago than this and not committed belongs to a writer
    /// that is stuck or gone: it is dropped (that writer can no longer commit it, and
    /// writes its rows again as a new load), so it holds the watermark at most this
    /// long.
    #[serde(
        default = "default_in_flight_timeout",
        deserialize_with = "crate::toml_values::duration"
    )]
    pub in_flight_timeout: std::time::Duration,
    /// Ledger rows committed longer ago than this are deleted in the background, in
    /// small batches (e.g. `"90d"`); never data rows. Unset keeps them.
    #[serde(default, deserialize_with = "crate::toml_values::opt_duration")]
    pub retention: Option<std::time::Duration>,
}

fn default_in_flight_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            in_flight_timeout: default_in_flight_timeout(),
            retention: None,
        }
    }
}

/// Drops the registrations older than `timeout` every quarter of it (at most every
/// 5 s) until `stop`.
pub async fn sweep_expired(
    store: std::sync::Arc<super::Store>,
    timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let every = (timeout / 4).min(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match store.sweep_expired_loads(timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(loads = n, "Loads in flight for longer than [ledger] in_flight_timeout were abandoned (their writer is stuck or gone, and can no longer commit them): the watermark moves past them."),
            Err(e) => tracing::debug!(error = %e, "The sweep of expired loads failed; it runs again."),
        }
    }
}

/// What the ledger records of one load (its id aside).
#[derive(Debug, Clone)]
pub struct Load {
    pub stream: String,
    pub table: String,
    /// Bytes of the events' text.
    pub bytes: i64,
    pub first_received_at: DateTime<Utc>,
    pub last_received_at: DateTime<Utc>,
    /// The kinds of input the rows came from (`http`, `tcp`, `webhook:NAME`,
    /// `jetstream`, `replay`), comma-separated when several.
    pub source: String,
    pub schema_sha256: String,
    /// A pulled source's pointer after the load, saved with it.
    pub pointer: Option<Pointer>,
}

/// Where a pulled source stands: the cursor values of the last row transmitted, as a
/// JSON object (`{"updated_at": "…", "id": "42"}`), kept in `sluice_pointers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub source: String,
    /// JSON text.
    pub value: String,
    /// The stored pointer this one moves on from (its JSON text), `None` for a source's
    /// first: a save finds it unchanged, or another run moved it and the save fails.
    pub previous: Option<String>,
}

impl Load {
    /// The load of `rows` (not empty) of `stream`.
    pub fn of(stream: &Stream, rows: &[Row]) -> Load {
        let mut sources: Vec<String> = Vec::new();
        let (mut first, mut last) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
        let mut bytes = 0i64;
        let mut previous: Option<&str> = None;
        for row in rows {
            bytes += row.raw.len() as i64;
            first = Some(first.map_or(row.received_at, |f| f.min(row.received_at)));
            last = Some(last.map_or(row.received_at, |l| l.max(row.received_at)));
            // The rows of one request share their source text: its kind once per run.
            if previous == Some(&*row.source) {
                continue;
            }
            previous = Some(&row.source);
            let kind = source_kind(&row.source);
            if !sources.contains(&kind) {
                sources.push(kind);
            }
        }
        sources.sort();
        let now = Utc::now();
        Load {
            stream: stream.name.clone(),
            table: stream.table.clone(),
            bytes,
            first_received_at: first.unwrap_or(now),
            last_received_at: last.unwrap_or(now),
            source: sources.join(","),
            schema_sha256: stream.schema_sha256.clone(),
            pointer: None,
        }
    }
}

/// `http`, `tcp`, `webhook:NAME`, `jetstream` or `replay` for a row's source text.
fn source_kind(source: &str) -> String {
    use crate::source::Kind;
    match Kind::of(source) {
        Some(kind @ (Kind::Webhook | Kind::Pull)) => match source.split(' ').nth(1) {
            Some(name) => format!("{}:{name}", kind.as_str()),
            None => kind.as_str().to_owned(),
        },
        Some(kind) => kind.as_str().to_owned(),
        None => source.split(' ').next().unwrap_or_default().to_owned(),
    }
}

/// This process, as the ledger names it: `host:pid`.
pub fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", std::process::id())
    })
}

/// Which page of a stream's loads to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Loads after this id, oldest first (to follow the ledger forward).
    After(i64),
    /// Loads before this id, newest first (the most recent ones).
    Before(i64),
}

/// One day of one stream, as the view `sluice_daily` counts it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Day {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Rows committed that day (loads still in the ledger; see `[ledger] retention`).
    pub rows: i64,
    /// Loads committed that day.
    pub loads: i64,
    /// Dead letters of the stream received that day.
    pub dead_letters: i64,
}

/// One load, as `GET /v1/streams/{stream}/loads` lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ListedLoad {
    /// Pass the last one of a page as `after` to get the next page.
    pub load_id: i64,
    pub stream: String,
    pub table_name: String,
    /// Rows stored (an id already stored is not counted).
    pub rows: i64,
    /// Bytes of the events' text.
    pub bytes: i64,
    pub first_received_at: String,
    pub last_received_at: String,
    pub committed_at: String,
    /// `http`, `tcp`, `webhook:NAME`, `jetstream`, `replay`; comma-separated when the
    /// batch mixed inputs.
    pub source: String,
    /// The Sluice that wrote it (`host:pid`).
    pub instance: String,
    /// SHA-256 of the schema file the rows were validated against.
    pub schema_sha256: String,
}

impl Dialect {
    /// A timestamp column as RFC 3339 text.
    fn timestamp_text(self, column: &str) -> String {
        match self {
            Dialect::Postgres => {
                format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            }
            Dialect::Mysql => format!("DATE_FORMAT({column}, '%Y-%m-%dT%H:%i:%s.%fZ')"),
            Dialect::Sqlite => column.to_owned(),
        }
    }

    /// Loads of stream `?` after load id `?`, oldest first, at most `?`; or, when
    /// `newest_first`, before load id `?`, newest first.
    pub fn list_loads(self, newest_first: bool) -> String {
        let t = |c| self.timestamp_text(c);
        let (compare, order) = if newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        format!(
            "SELECT load_id, stream, table_name, {}, bytes, {}, {}, {}, source, instance, schema_sha256 FROM {LOADS} WHERE stream = {} AND load_id {compare} {} ORDER BY load_id {order} LIMIT {}",
            self.quote("rows"),
            t("first_received_at"),
            t("last_received_at"),
            t("committed_at"),
            self.placeholder(1),
            self.placeholder(2),
            self.placeholder(3)
        )
    }
}

impl Dialect {
    /// The ledger's tables, its one counter row and the watermark view, if missing.
    pub fn create_ledger(self) -> Vec<String> {
        let ts = self.timestamp_type();
        let (name, text, engine) = match self {
            Dialect::Mysql => (
                "varchar(255)",
                "varchar(255)",
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            ),
            Dialect::Postgres => ("text", "text", ""),
            Dialect::Sqlite => ("TEXT", "TEXT", ""),
        };
        let rows = self.quote("rows");
        // MySQL 8 has no `ADD INDEX IF NOT EXISTS` (MariaDB has): the index is declared
        // with the table there.
        let key = match self {
            Dialect::Mysql => format!(",\n  KEY {LOADS}_stream_load (stream, load_id)"),
            Dialect::Postgres | Dialect::Sqlite => String::new(),
        };
        let mut statements = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {LOADS} (\n  load_id bigint NOT NULL PRIMARY KEY,\n  stream {name} NOT NULL,\n  table_name {name} NOT NULL,\n  {rows} bigint NOT NULL,\n  bytes bigint NOT NULL,\n  first_received_at {ts} NOT NULL,\n  last_received_at {ts} NOT NULL,\n  committed_at {ts} NOT NULL,\n  source {text} NOT NULL,\n  instance {text} NOT NULL,\n  schema_sha256 {text} NOT NULL{key}\n){engine}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {LOAD_SEQ} (\n  id integer NOT NULL PRIMARY KEY,\n  last_id bigint NOT NULL\n){engine}"
            ),
            format!("CREATE TABLE IF NOT EXISTS {STREAMS} (\n  stream {name} NOT NULL PRIMARY KEY\n){engine}"),
            match self {
                Dialect::Postgres => format!("INSERT INTO {LOAD_SEQ} (id, last_id) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"),
                Dialect::Mysql => format!("INSERT IGNORE INTO {LOAD_SEQ} (id, last_id) VALUES (1, 0)"),
                Dialect::Sqlite => format!("INSERT OR IGNORE INTO {LOAD_SEQ} (id, last_id) VALUES (1, 0)"),
            },
        ];
        // PostgreSQL registers nothing: its loads in flight are running transactions.
        if self != Dialect::Postgres {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {IN_FLIGHT} (\n  load_id bigint NOT NULL PRIMARY KEY,\n  stream {name} NOT NULL,\n  instance {text} NOT NULL,\n  registered_at {ts} NOT NULL\n){engine}"
            ));
        }
        statements.push(self.create_watermarks());
        match self {
            Dialect::Postgres => statements.push(super::dialect::pg_index_if_missing(
                &format!("{LOADS}_stream_load"),
                &format!("{LOADS} (stream, load_id)"),
            )),
            Dialect::Sqlite => statements.push(format!(
                "CREATE INDEX IF NOT EXISTS {LOADS}_stream_load ON {LOADS} (stream, load_id)"
            )),
            Dialect::Mysql => {}
        }
        statements
    }

    /// The view `sluice_watermarks`: each stream named in `sluice_streams` with its
    /// watermark.
    pub fn create_watermarks(self) -> String {
        let view = format!(
            "{WATERMARKS} AS SELECT s.stream, {} AS watermark FROM {STREAMS} s",
            self.watermark_of("s.stream")
        );
        match self {
            Dialect::Sqlite => format!("CREATE VIEW IF NOT EXISTS {view}"),
            Dialect::Postgres | Dialect::Mysql => format!("CREATE OR REPLACE VIEW {view}"),
        }
    }

    /// PostgreSQL: how many `sluice_watermarks` views read transaction ids (0 when the
    /// view is one of a version that registered its loads: it is then replaced).
    pub fn watermarks_read_transactions(self) -> String {
        format!("SELECT COUNT(*) FROM pg_views WHERE schemaname = current_schema() AND viewname = '{WATERMARKS}' AND definition LIKE '%pg_snapshot_xip%'")
    }

    /// PostgreSQL: raises the offset of load ids over transaction ids when the next
    /// transaction's load would not be above every load in the ledger (a database
    /// restored into another cluster, whose transaction ids are lower); changes
    /// nothing otherwise.
    pub fn raise_load_offset(self) -> String {
        let next = "CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text) AS bigint)";
        let last = format!("(SELECT MAX(load_id) FROM {LOADS})");
        format!("UPDATE {LOAD_SEQ} SET last_id = {last} - {next} + 1 WHERE id = 1 AND {last} >= {next} + last_id")
    }

    /// The view `sluice_daily`: per stream and UTC day, the rows and loads committed
    /// (from the ledger, so within `[ledger] retention`) and the dead letters received.
    pub fn create_daily(self) -> String {
        let rows = self.quote("rows");
        let day = |column: &str| match self {
            Dialect::Postgres => format!("CAST({column} AT TIME ZONE 'UTC' AS date)"),
            Dialect::Mysql => format!("DATE({column})"),
            Dialect::Sqlite => format!("substr({column}, 1, 10)"),
        };
        let sum = |column: &str| match self {
            Dialect::Postgres => format!("CAST(SUM({column}) AS bigint)"),
            Dialect::Mysql => format!("CAST(SUM({column}) AS SIGNED)"),
            Dialect::Sqlite => format!("SUM({column})"),
        };
        let view = format!(
            "{DAILY} AS SELECT stream, day, {} AS {rows}, {} AS loads, {} AS dead_letters FROM (SELECT stream, {} AS day, {rows} AS r, 1 AS l, 0 AS d FROM {LOADS} UNION ALL SELECT stream, {}, 0, 0, 1 FROM {} WHERE stream IS NOT NULL) AS counted GROUP BY stream, day",
            sum("r"),
            sum("l"),
            sum("d"),
            day("committed_at"),
            day("received_at"),
            super::dialect::DEAD_LETTERS,
        );
        match self {
            Dialect::Sqlite => format!("CREATE VIEW IF NOT EXISTS {view}"),
            Dialect::Postgres | Dialect::Mysql => format!("CREATE OR REPLACE VIEW {view}"),
        }
    }

    /// The last `?` days of stream `?` in `sluice_daily`, newest first, the day as
    /// `YYYY-MM-DD` text.
    pub fn daily(self) -> String {
        let day = match self {
            Dialect::Postgres => "CAST(day AS text)",
            Dialect::Mysql => "CAST(day AS CHAR)",
            Dialect::Sqlite => "day",
        };
        format!(
            "SELECT {day}, {}, loads, dead_letters FROM {DAILY} WHERE stream = {} ORDER BY day DESC LIMIT {}",
            self.quote("rows"),
            self.placeholder(1),
            self.placeholder(2)
        )
    }

    /// Names `stream` in `sluice_streams` (for the watermark view), if it is not yet.
    pub fn register_stream(self) -> String {
        let p = self.placeholder(1);
        match self {
            Dialect::Postgres => {
                format!(
                    "INSERT INTO {STREAMS} (stream) VALUES ({p}) ON CONFLICT (stream) DO NOTHING"
                )
            }
            Dialect::Mysql => format!("INSERT IGNORE INTO {STREAMS} (stream) VALUES ({p})"),
            Dialect::Sqlite => format!("INSERT OR IGNORE INTO {STREAMS} (stream) VALUES ({p})"),
        }
    }

    /// How many indexes are named `?` (0 or 1).
    pub fn load_id_index_exists(self) -> String {
        match self {
            Dialect::Postgres => "SELECT COUNT(*) FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relname = $1".into(),
            Dialect::Mysql => "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() AND index_name = ?".into(),
            Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?".into(),
        }
    }

    /// Whether stream `?` is named in `sluice_streams` (0 or 1).
    pub fn stream_named(self) -> String {
        format!(
            "SELECT COUNT(*) FROM {STREAMS} WHERE stream = {}",
            self.placeholder(1)
        )
    }

    /// The index of a stream table's `_load_id`. On PostgreSQL a BRIN index: load ids
    /// grow with the table's physical order (rows are appended load by load), so a
    /// range of them is found by page ranges as well as by a B-tree, at a fraction of
    /// its cost per row written (a B-tree on the column of a table that had no index
    /// added about 15 % to the server's CPU per row of `COPY`; BRIN about 2 %).
    /// `autosummarize` summarises each page range as it fills; the ranges not yet
    /// summarised (the table's tail, which is what an incremental reader reads) are
    /// always scanned.
    pub fn create_load_id_index(self, table: &str) -> String {
        let index = load_id_index(table);
        let on = self.quote(table);
        match self {
            Dialect::Postgres => super::dialect::pg_index_if_missing(
                &index,
                &format!("{on} USING brin ({LOAD_ID}) WITH (autosummarize = on)"),
            ),
            Dialect::Sqlite => format!(
                "CREATE INDEX IF NOT EXISTS {} ON {on} ({LOAD_ID})",
                self.quote(&index)
            ),
            // Run only when missing (MySQL has no `IF NOT EXISTS` here).
            Dialect::Mysql => format!("CREATE INDEX {} ON {on} ({LOAD_ID})", self.quote(&index)),
        }
    }

    /// SQLite: the next load id, taken inside the writing transaction.
    pub fn next_load_id(self) -> String {
        format!("UPDATE {LOAD_SEQ} SET last_id = last_id + 1 WHERE id = 1 RETURNING last_id")
    }

    /// Deletes registration `load_id` (a load that failed, or expired); `None` where
    /// loads register nothing (PostgreSQL, SQLite).
    pub fn drop_registration_of(self, load_id: i64) -> Option<String> {
        (self == Dialect::Mysql)
            .then(|| format!("DELETE FROM {IN_FLIGHT} WHERE load_id = {load_id}"))
    }

    /// The columns of a ledger row, in the order [`Dialect::insert_load`] binds them.
    fn load_columns(self) -> String {
        format!(
            "load_id, stream, table_name, {}, bytes, first_received_at, last_received_at, committed_at, source, instance, schema_sha256",
            self.quote("rows")
        )
    }

    /// The values of a ledger row: 11 placeholders from `first`.
    fn load_values(self, first: usize) -> String {
        (first..first + 11)
            .map(|n| self.placeholder(n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// SQLite's ledger row of a load (PostgreSQL and MySQL write it as literals in
    /// [`Dialect::commit_load`]): binds load id, stream, table, rows, bytes, first and
    /// last received, committed, source, instance, schema SHA-256.
    pub fn insert_load(self) -> String {
        format!(
            "INSERT INTO {LOADS} ({}) VALUES ({})",
            self.load_columns(),
            self.load_values(1)
        )
    }

    /// Deletes up to `?` (the last placeholder) of the oldest rows of `sluice_loads`
    /// committed before `?`.
    pub fn purge_loads(self) -> String {
        let mut filter = super::dialect::Filter::new(self, "1 = 1", 0);
        filter.time_if(true, "committed_at <");
        self.delete_oldest(LOADS, "load_id", filter)
    }

    /// A text value as an SQL literal that reads the same under every setting
    /// (`standard_conforming_strings`, `NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`). On
    /// PostgreSQL an escape string (`E'…'`), whose backslashes are escapes whatever
    /// `standard_conforming_strings` says: a constant for the server, where decoding hex
    /// was three function calls per value (about a sixth of what a load's ledger
    /// statements cost the server). On MySQL and SQLite its UTF-8 as hex.
    pub fn text_literal(self, text: &str) -> String {
        match self {
            Dialect::Postgres => {
                let mut out = String::with_capacity(text.len() + 4);
                out.push_str("E'");
                for c in text.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\'' => out.push_str("''"),
                        // Refused by the server as text ("invalid byte sequence"),
                        // instead of ending the query's string early.
                        '\0' => out.push_str("\\000"),
                        c => out.push(c),
                    }
                }
                out.push('\'');
                out
            }
            Dialect::Mysql => format!("CONVERT(X'{}' USING utf8mb4)", hex::encode(text)),
            Dialect::Sqlite => format!("CAST(X'{}' AS TEXT)", hex::encode(text)),
        }
    }

    /// A timestamp as an SQL literal of the database's timestamp column.
    fn timestamp_literal(self, at: &DateTime<Utc>) -> String {
        match self {
            Dialect::Postgres => format!("CAST('{}' AS timestamptz)", at.to_rfc3339()),
            Dialect::Mysql => format!("'{}'", super::dialect::mysql_timestamp(at)),
            Dialect::Sqlite => format!("'{}'", super::dialect::sqlite_timestamp(at)),
        }
    }

    /// The first round trip of a load (several statements in one simple query):
    /// PostgreSQL opens the writing transaction, takes the stream's advisory lock and
    /// then the transaction's id; MySQL registers a load of `stream` by `instance` in a
    /// transaction of its own and commits it, then opens the writing transaction (and
    /// zeroes its duplicate counter); SQLite opens the writing transaction and takes
    /// the next id in it. Answers the load id in its last row.
    pub fn begin_load(self, stream: &str, instance: &str) -> String {
        match self {
            // The lock first: the transaction gets its id only then.
            Dialect::Postgres => format!(
                "BEGIN; SELECT pg_advisory_xact_lock_shared({LOCK_CLASS}, hashtext({})); SELECT CAST(CAST(pg_current_xact_id() AS text) AS bigint) + last_id FROM {LOAD_SEQ} WHERE id = 1",
                self.text_literal(stream)
            ),
            Dialect::Mysql => format!(
                "BEGIN; UPDATE {LOAD_SEQ} SET last_id = LAST_INSERT_ID(last_id + 1) WHERE id = 1; INSERT INTO {IN_FLIGHT} (load_id, stream, instance, registered_at) VALUES (LAST_INSERT_ID(), {}, {}, NOW(6)); COMMIT; BEGIN; SET @{dups} = 0; SELECT CAST(LAST_INSERT_ID() AS SIGNED)",
                self.text_literal(stream),
                self.text_literal(instance),
                dups = super::dialect::MYSQL_DUPLICATES
            ),
            Dialect::Sqlite => format!("BEGIN IMMEDIATE; {}", self.next_load_id()),
        }
    }

    /// The last round trip of load `load_id` of `rows` rows (MySQL subtracts the
    /// duplicates its insert counted): on MySQL claims the registration, then writes
    /// the ledger row and commits. The ledger row's id comes from the claim, NULL when
    /// the claim found nothing (the registration expired), which `load_id NOT NULL`
    /// refuses ([`claim_refused`]): nothing commits. With a pulled source's pointer,
    /// it is moved from the value the run started from, and the id is NULL too when
    /// the pointer was not there any more (another run moved it). MySQL answers one
    /// row, the duplicates.
    pub fn commit_load(
        self,
        load_id: i64,
        load: &Load,
        rows: usize,
        committed_at: &DateTime<Utc>,
    ) -> String {
        let pointer = load
            .pointer
            .as_ref()
            .map(|p| self.move_pointer(p, Some(load_id), committed_at));
        let (id, stored, tail) = match self {
            Dialect::Postgres => (
                match pointer {
                    Some(_) => format!("(SELECT {load_id} WHERE EXISTS (SELECT 1 FROM moved))"),
                    None => load_id.to_string(),
                },
                rows.to_string(),
                String::new(),
            ),
            Dialect::Mysql => (
                match pointer {
                    Some(_) => {
                        format!("IF(@sluice_claimed = 1 AND ROW_COUNT() = 1, {load_id}, NULL)")
                    }
                    None => format!("IF(ROW_COUNT() = 1, {load_id}, NULL)"),
                },
                format!(
                    "{rows} - COALESCE(@{}, 0)",
                    super::dialect::MYSQL_DUPLICATES
                ),
                format!(
                    "; SELECT CAST(COALESCE(@{}, 0) AS SIGNED)",
                    super::dialect::MYSQL_DUPLICATES
                ),
            ),
            Dialect::Sqlite => (load_id.to_string(), rows.to_string(), String::new()),
        };
        let values = [
            id,
            self.text_literal(&load.stream),
            self.text_literal(&load.table),
            stored,
            load.bytes.to_string(),
            self.timestamp_literal(&load.first_received_at),
            self.timestamp_literal(&load.last_received_at),
            self.timestamp_literal(committed_at),
            self.text_literal(&load.source),
            self.text_literal(instance()),
            self.text_literal(&load.schema_sha256),
        ]
        .join(", ");
        let insert = format!(
            "INSERT INTO {LOADS} ({}) VALUES ({values})",
            self.load_columns()
        );
        let claim = format!("DELETE FROM {IN_FLIGHT} WHERE load_id = {load_id}");
        match (self, pointer) {
            (Dialect::Postgres, None) => format!("{insert}; COMMIT"),
            (Dialect::Postgres, Some(moved)) => {
                format!("WITH moved AS ({moved} RETURNING source) {insert}; COMMIT")
            }
            (Dialect::Mysql, None) => format!("{claim}; {insert}; COMMIT{tail}"),
            (Dialect::Mysql, Some(moved)) => format!(
                "{claim}; SET @sluice_claimed = ROW_COUNT(); {moved}; {insert}; COMMIT{tail}"
            ),
            (Dialect::Sqlite, None) => format!("{insert}; COMMIT"),
            (Dialect::Sqlite, Some(moved)) => format!("{insert}; {moved}; COMMIT"),
        }
    }

    /// Moves pointer `p` (after load `load_id`, if any) from the value its run started
    /// from: an `UPDATE … WHERE pointer = <that value>` (or an `INSERT` of the source's
    /// first pointer), which touches no row (or fails on the key) when another run
    /// moved it meanwhile.
    pub fn move_pointer(self, p: &Pointer, load_id: Option<i64>, at: &DateTime<Utc>) -> String {
        let (source, value) = (self.text_literal(&p.source), self.text_literal(&p.value));
        let id = load_id.map_or("NULL".to_owned(), |id| id.to_string());
        let at = self.timestamp_literal(at);
        match &p.previous {
            None => format!(
                "INSERT INTO {POINTERS} (source, pointer, load_id, updated_at) VALUES ({source}, {value}, {id}, {at})"
            ),
            Some(previous) => format!(
                "UPDATE {POINTERS} SET pointer = {value}, load_id = {id}, updated_at = {at} WHERE source = {source} AND pointer = {}",
                self.text_literal(previous)
            ),
        }
    }

    /// `sluice_pointers`: one row per pulled source.
    pub fn create_pointers(self) -> String {
        let (name, text, engine) = match self {
            Dialect::Mysql => (
                "varchar(255)",
                "longtext",
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            ),
            Dialect::Postgres => ("text", "text", ""),
            Dialect::Sqlite => ("TEXT", "TEXT", ""),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {POINTERS} (\n  source {name} NOT NULL PRIMARY KEY,\n  pointer {text},\n  load_id bigint,\n  updated_at {} NOT NULL\n){engine}",
            self.timestamp_type()
        )
    }

    /// Sets source `source`'s pointer to `value` (JSON text), whatever it was; `None`
    /// deletes it (the next run starts from the first row).
    pub fn reset_pointer(self, source: &str, value: Option<&str>, at: &DateTime<Utc>) -> String {
        let Some(value) = value else {
            // A file source keeps one pointer per file, `NAME/file.csv`.
            let files = format!("{source}/");
            return format!(
                "DELETE FROM {POINTERS} WHERE source = {} OR substr(source, 1, {}) = {}",
                self.text_literal(source),
                files.chars().count(),
                self.text_literal(&files)
            );
        };
        let values = format!(
            "{}, {}, NULL, {}",
            self.text_literal(source),
            self.text_literal(value),
            self.timestamp_literal(at)
        );
        let columns = "source, pointer, load_id, updated_at";
        match self {
            Dialect::Mysql => format!(
                "INSERT INTO {POINTERS} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE pointer = VALUES(pointer), load_id = VALUES(load_id), updated_at = VALUES(updated_at)"
            ),
            _ => format!(
                "INSERT INTO {POINTERS} ({columns}) VALUES ({values}) ON CONFLICT (source) DO UPDATE SET pointer = excluded.pointer, load_id = excluded.load_id, updated_at = excluded.updated_at"
            ),
        }
    }

    /// The pointer of source `?` (JSON text; no row before its first load).
    pub fn pointer_of(self) -> String {
        format!(
            "SELECT pointer FROM {POINTERS} WHERE source = {}",
            self.placeholder(1)
        )
    }

    /// For source `?`: the rows its loads committed (in the ledger, within `[ledger]
    /// retention`), and, for a file source, how many files it loaded whole (`?` again,
    /// then the file pointers' prefix `?/`).
    pub fn source_totals(self) -> String {
        let sum = match self {
            Dialect::Postgres => "CAST(COALESCE(SUM(l.rows), 0) AS bigint)",
            Dialect::Mysql => "CAST(COALESCE(SUM(l.`rows`), 0) AS SIGNED)",
            Dialect::Sqlite => "COALESCE(SUM(l.\"rows\"), 0)",
        };
        let count = match self {
            Dialect::Mysql => "CAST(COUNT(*) AS SIGNED)",
            _ => "COUNT(*)",
        };
        let done = "p.pointer LIKE '%\"done\":true%'";
        format!(
            "SELECT (SELECT {sum} FROM {LOADS} l WHERE l.source = {}), (SELECT {count} FROM {POINTERS} p WHERE substr(p.source, 1, length({})) = {} AND {done})",
            self.placeholder(1),
            self.placeholder(2),
            self.placeholder(3)
        )
    }

    /// 1 when stream `?` has a load in `from..=to`, else 0.
    pub fn has_loads(self, from: i64, to: i64) -> String {
        format!(
            "SELECT COUNT(*) FROM (SELECT 1 AS one FROM {LOADS} WHERE stream = {} AND load_id >= {from} AND load_id <= {to} LIMIT 1) AS found",
            self.placeholder(1)
        )
    }

    /// The watermark of stream `?`.
    pub fn watermark(self) -> String {
        format!("SELECT {}", self.watermark_of(&self.placeholder(1)))
    }

    /// The watermark of the stream named by SQL expression `stream`, as an expression:
    /// one definition for the API and the view `sluice_watermarks`. It is a bound, not
    /// the stream's last load: no load of the stream at or below it commits after it
    /// is read, and it moves on with other streams' loads (and, on PostgreSQL, with
    /// the database's other transactions), so that the lowest watermark of several
    /// streams moves on while one of them is idle.
    ///
    /// MySQL: the stream's lowest registered id minus one, or else the last id taken.
    ///
    /// PostgreSQL: every transaction id below the snapshot's `xmax` that is not in its
    /// list of running ones has ended. Of the running ones, those that have ended
    /// since (`pg_xact_status`) are visible to the reader's next statement. Of the
    /// rest, a transaction is proved not to be a load of `stream` when, in one
    /// reading of the lock table, its backend holds its id (`transactionid`,
    /// `ExclusiveLock`, taken as the id is assigned) without holding the stream's
    /// advisory lock, which a load takes *before* its id. Every other one (a load of
    /// the stream, or one whose lock is not in the table yet) holds the watermark
    /// below it. Each of those was running at any earlier reading too, so the
    /// watermark never steps back.
    fn watermark_of(self, stream: &str) -> String {
        let offset = format!("(SELECT q.last_id FROM {LOAD_SEQ} q WHERE q.id = 1)");
        match self {
            Dialect::Postgres => {
                let bigint = |x: &str| format!("CAST(CAST({x} AS text) AS bigint)");
                format!(
                    "(WITH wm_snap AS (SELECT pg_current_snapshot() AS snap), wm_locks AS MATERIALIZED (SELECT pid, locktype, objid, transactionid FROM pg_locks WHERE granted AND ((locktype = 'transactionid' AND mode = 'ExclusiveLock') OR ({load_locks}))) SELECT COALESCE((SELECT MIN({x}) FROM pg_snapshot_xip(wm_snap.snap) x WHERE pg_xact_status(x) = 'in progress' AND {x} % 4294967296 NOT IN (SELECT {t} FROM wm_locks t WHERE t.locktype = 'transactionid' AND t.pid NOT IN (SELECT a.pid FROM wm_locks a WHERE a.locktype = 'advisory' AND a.objid = CAST(hashtext({stream}) AS oid)))), {xmax}) - 1 + {offset} FROM wm_snap)",
                    x = bigint("x"),
                    t = bigint("t.transactionid"),
                    xmax = bigint("pg_snapshot_xmax(wm_snap.snap)"),
                    load_locks = pg_load_locks(),
                )
            }
            Dialect::Mysql | Dialect::Sqlite => format!(
                "COALESCE((SELECT MIN(f.load_id) FROM {IN_FLIGHT} f WHERE f.stream = {stream}) - 1, {offset})"
            ),
        }
    }

    /// Loads in flight for longer than `?` seconds by the database's clock (their writer
    /// is stuck or gone). MySQL: their registrations, locked for deletion unless a
    /// writer holds them. PostgreSQL: the sessions of their transactions (holding a
    /// stream's advisory lock), each ended as it is listed, which rolls its load back.
    pub fn expired_loads(self) -> String {
        match self {
            Dialect::Postgres => format!("WITH stuck AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE xact_start < now() - make_interval(secs => CAST($1 AS double precision)) AND pid <> pg_backend_pid() AND pid IN (SELECT pid FROM pg_locks WHERE granted AND {})) SELECT CAST(pid AS bigint) FROM stuck WHERE pg_terminate_backend(pid)", pg_load_locks()),
            Dialect::Mysql => format!("SELECT load_id FROM {IN_FLIGHT} WHERE registered_at < NOW(6) - INTERVAL ? SECOND FOR UPDATE SKIP LOCKED"),
            // SQLite registers nothing (its loads take their id as they commit).
            Dialect::Sqlite => format!("SELECT load_id FROM {IN_FLIGHT} WHERE ? < 0"),
        }
    }
}

/// PostgreSQL: the rows of `pg_locks` that are loads' advisory locks in this database
/// (any stream's), as a condition: one definition for the watermark and the sweep.
fn pg_load_locks() -> String {
    format!("locktype = 'advisory' AND classid = {LOCK_CLASS} AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
}

/// Whether `error` is the refusal of [`Dialect::commit_load`]'s ledger row for want of
/// a registration to claim (its id NULL).
pub fn claim_refused(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::NotNullViolation)
}

/// The name of a stream table's `_load_id` index (within every database's 63-64
/// character limit).
pub fn load_id_index(table: &str) -> String {
    let head: String = table.chars().take(50).collect();
    format!("{head}_load_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_written_as_a_literal_and_the_claim_names_the_load() {
        let load = Load {
            stream: "o'rder".into(),
            table: "t".into(),
            bytes: 10,
            first_received_at: Utc::now(),
            last_received_at: Utc::now(),
            source: "http".into(),
            schema_sha256: "ab".into(),
            pointer: None,
        };
        let pg = Dialect::Postgres.commit_load(7, &load, 3, &Utc::now());
        assert!(pg.starts_with("INSERT INTO sluice_loads"), "{pg}");
        assert!(pg.contains("VALUES (7, E'o''rder', "), "{pg}");
        assert!(pg.ends_with("; COMMIT"), "{pg}");
        assert!(!pg.contains("o'r"), "{pg}");
        let my = Dialect::Mysql.commit_load(7, &load, 3, &Utc::now());
        assert!(
            my.starts_with(
                "DELETE FROM sluice_loads_in_flight WHERE load_id = 7; INSERT INTO sluice_loads"
            ),
            "{my}"
        );
        assert!(
            my.contains(
                "VALUES (IF(ROW_COUNT() = 1, 7, NULL), CONVERT(X'6f2772646572' USING utf8mb4), "
            ),
            "{my}"
        );
        assert!(my.contains("3 - COALESCE(@sluice_duplicates, 0)"), "{my}");
    }

    #[test]
    fn sources_are_named_by_kind() {
        assert_eq!(source_kind("http 127.0.0.1:5"), "http");
        assert_eq!(source_kind("webhook stripe 1.2.3.4:9"), "webhook:stripe");
        assert_eq!(source_kind("jetstream events.a"), "jetstream");
        assert_eq!(source_kind("replay"), "replay");
        assert_eq!(source_kind("pull crm_deals"), "pull:crm_deals");
    }
}
