//! Database sources: a table (or query) of PostgreSQL, MySQL/MariaDB or SQLite read by
//! keyset pagination on the cursor, strictly after the pointer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use anyhow::{bail, Context};
use sqlx::{Column as _, Connection as _, Executor as _, Row as _, TypeInfo as _};

use super::{PullReport, PulledLoad, Run, SourceConfig};
use crate::ingest::filing::{Event, Filing, Route};
use crate::schema::{ColumnType, Stream};
use crate::sink::dialect::Dialect;
use crate::sink::ledger::Pointer;

/// A source column: its name and the type the source reports.
#[derive(Debug, Clone)]
struct SourceColumn {
    name: String,
    type_name: String,
}

/// One connection to a source database.
enum SourceConn {
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
    Sqlite(sqlx::SqliteConnection),
}

/// Runs `$body` with `$c` bound to the connection, whichever database it is.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            SourceConn::Postgres($c) => $body,
            SourceConn::Mysql($c) => $body,
            SourceConn::Sqlite($c) => $body,
        }
    };
}

impl SourceConn {
    /// A connection of source `name` (on PostgreSQL its `application_name` is `sluice
    /// pull NAME`, so the source's operators can tell it apart).
    async fn open(url: &str, name: &str) -> anyhow::Result<(SourceConn, Dialect)> {
        use std::str::FromStr;
        let dialect = Dialect::from_url(url).map_err(|e| anyhow::anyhow!(e))?;
        let conn = match dialect {
            Dialect::Postgres => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url)?
                    .application_name(&format!("sluice pull {name}"));
                let mut c = sqlx::PgConnection::connect_with(&options).await?;
                // Timestamps read as text in UTC, whatever the server's zone.
                c.execute("SET TIME ZONE 'UTC'").await?;
                SourceConn::Postgres(c)
            }
            Dialect::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(url).await?;
                c.execute("SET time_zone = '+00:00'").await?;
                SourceConn::Mysql(c)
            }
            Dialect::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
                SourceConn::Sqlite(sqlx::SqliteConnection::connect_with(&options).await?)
            }
        };
        Ok((conn, dialect))
    }

    /// The columns `sql` answers, with their types.
    async fn describe(&mut self, sql: &str) -> anyhow::Result<Vec<SourceColumn>> {
        with_conn!(self, c => {
            let described = c.describe(sql).await?;
            Ok(described
                .columns()
                .iter()
                .map(|col| SourceColumn {
                    name: col.name().to_owned(),
                    type_name: col.type_info().name().to_owned(),
                })
                .collect())
        })
    }

    /// The one integer `sql` answers, with `binds` as text.
    async fn count(&mut self, sql: &str, binds: &[String]) -> anyhow::Result<i64> {
        with_conn!(self, c => {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(b.as_str());
            }
            let row = q.fetch_one(&mut *c).await?;
            Ok(row.try_get::<i64, usize>(0)?)
        })
    }

    /// The rows `sql` answers (its columns cast to text), with `binds` as text, as
    /// events' JSON text ([`Render`]), read in place from the database's answer.
    /// `buffer` is the text buffer of a page done with, reused.
    async fn page(
        &mut self,
        sql: &str,
        binds: &[String],
        reader: &Reader,
        mut buffer: Vec<u8>,
    ) -> anyhow::Result<Page> {
        let render = &reader.render;
        with_conn!(self, c => {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(b.as_str());
            }
            let rows = q.fetch_all(&mut *c).await?;
            buffer.clear();
            buffer.reserve(rows.len() * 64 * render.columns.len());
            let mut page = Page {
                texts: buffer,
                spans: Vec::with_capacity(rows.len()),
                cursor: Vec::new(),
            };
            let mut values: Vec<Option<&str>> = Vec::with_capacity(render.columns.len());
            for row in &rows {
                values.clear();
                for i in 0..row.len() {
                    // Every column is cast to text: no type check per value.
                    values.push(row.try_get_unchecked::<Option<&str>, usize>(i)?);
                }
                let start = page.texts.len();
                render.row(&values, &mut page.texts);
                page.spans.push(start..page.texts.len());
            }
            if !rows.is_empty() {
                page.cursor = reader
                    .cursor_at
                    .iter()
                    .map(|&i| values.get(i).copied().flatten().map(str::to_owned))
                    .collect();
            }
            Ok(page)
        })
    }

    /// The cursor values of the one row `sql` answers (its columns cast to text), if
    /// any.
    async fn cursor_row(
        &mut self,
        sql: &str,
        binds: &[String],
    ) -> anyhow::Result<Option<Vec<Option<String>>>> {
        with_conn!(self, c => {
            let mut q = sqlx::query(sql);
            for b in binds {
                q = q.bind(b.as_str());
            }
            let Some(row) = q.fetch_optional(&mut *c).await? else {
                return Ok(None);
            };
            (0..row.len())
                .map(|i| Ok(row.try_get_unchecked::<Option<String>, usize>(i)?))
                .collect::<anyhow::Result<Vec<_>>>()
                .map(Some)
        })
    }

    async fn close(self) {
        let _ = with_conn!(self, c => c.close().await);
    }
}

/// One page of a source's rows as events' JSON text, one after the other, and the
/// cursor values the pointer moves to after it (its last row's, or the end of the range
/// it was read from).
struct Page {
    texts: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
    cursor: Vec<Option<String>>,
}

impl Page {
    fn len(&self) -> usize {
        self.spans.len()
    }
}

/// The SQL of one source: its relation, its columns read as text, the keyset filter.
struct Reader {
    dialect: Dialect,
    relation: String,
    columns: Vec<SourceColumn>,
    /// Positions of the cursor columns among `columns`.
    cursor_at: Vec<usize>,
    /// How its rows become events.
    render: Render,
    /// Rows per page (`load_size`).
    limit: usize,
}

impl Reader {
    fn relation(dialect: Dialect, source: &SourceConfig) -> String {
        match (&source.table, &source.query) {
            (Some(table), _) => table
                .split('.')
                .map(|part| dialect.quote(part))
                .collect::<Vec<_>>()
                .join("."),
            (None, Some(query)) => {
                format!("({}) AS sluice_source", query.trim().trim_end_matches(';'))
            }
            (None, None) => String::new(),
        }
    }

    /// `c` as text, in the source's SQL.
    fn as_text(&self, column: &str) -> String {
        let c = self.dialect.quote(column);
        match self.dialect {
            Dialect::Postgres | Dialect::Sqlite => format!("CAST({c} AS TEXT)"),
            Dialect::Mysql => format!("CAST({c} AS CHAR)"),
        }
    }

    /// The `n`th placeholder, cast to the type of column `at` (text is bound).
    fn bound(&self, n: usize, at: usize) -> String {
        let p = self.dialect.placeholder(n);
        let ty = self.columns[at].type_name.to_ascii_uppercase();
        match self.dialect {
            Dialect::Postgres => format!("CAST({p} AS {ty})"),
            Dialect::Mysql => {
                let target = if ty.contains("INT") {
                    Some(if ty.contains("UNSIGNED") {
                        "UNSIGNED"
                    } else {
                        "SIGNED"
                    })
                } else if ty.contains("DECIMAL") || ty.contains("NUMERIC") {
                    Some("DECIMAL(65,30)")
                } else if ty.contains("DATETIME") || ty.contains("TIMESTAMP") {
                    Some("DATETIME(6)")
                } else if ty == "DATE" {
                    Some("DATE")
                } else if ty.contains("DOUBLE") || ty.contains("FLOAT") || ty.contains("REAL") {
                    Some("DOUBLE")
                } else {
                    None
                };
                match target {
                    Some(t) => format!("CAST({p} AS {t})"),
                    None => p,
                }
            }
            // A bound value takes the compared column's affinity.
            Dialect::Sqlite => p,
        }
    }

    /// `WHERE (cursor) > (lower) AND (cursor) <= (upper)`, each bound if given (its
    /// values bound as the placeholders after those of the bound before it).
    fn range(&self, lower: bool, upper: bool) -> String {
        let columns = self.cursor_columns();
        let values = |first: usize| {
            let values: Vec<String> = self
                .cursor_at
                .iter()
                .enumerate()
                .map(|(n, &i)| self.bound(first + n, i))
                .collect();
            values.join(", ")
        };
        let mut conditions = Vec::new();
        if lower {
            conditions.push(format!("({columns}) > ({})", values(1)));
        }
        if upper {
            let first = if lower { self.cursor_at.len() + 1 } else { 1 };
            conditions.push(format!("({columns}) <= ({})", values(first)));
        }
        if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        }
    }

    fn count(&self, from_start: bool) -> String {
        format!(
            "SELECT COUNT(*) FROM {}{}",
            self.relation,
            self.range(!from_start, false)
        )
    }

    /// The cursor columns in order, quoted, for `ORDER BY` and the keyset filter.
    fn cursor_columns(&self) -> String {
        let order: Vec<String> = self
            .cursor_at
            .iter()
            .map(|&i| self.dialect.quote(&self.columns[i].name))
            .collect();
        order.join(", ")
    }

    /// The rows after `lower` (if any): up to `upper` when given, else `limit` of them.
    fn page(&self, lower: bool, upper: bool) -> String {
        let select: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} AS {}",
                    self.as_text(&c.name),
                    self.dialect.quote(&c.name)
                )
            })
            .collect();
        let limit = if upper {
            String::new()
        } else {
            format!(" LIMIT {}", self.limit)
        };
        format!(
            "SELECT {} FROM {}{} ORDER BY {}{limit}",
            select.join(", "),
            self.relation,
            self.range(lower, upper),
            self.cursor_columns()
        )
    }

    /// The cursor values of the `limit`th row after `lower`: the end of the next full
    /// page, read from the cursor's index alone.
    fn boundary(&self, lower: bool) -> String {
        let select: Vec<String> = self
            .cursor_at
            .iter()
            .map(|&i| self.as_text(&self.columns[i].name))
            .collect();
        format!(
            "SELECT {} FROM {}{} ORDER BY {} LIMIT 1 OFFSET {}",
            select.join(", "),
            self.relation,
            self.range(lower, false),
            self.cursor_columns(),
            self.limit.saturating_sub(1)
        )
    }
}

/// The cursor values a pointer holds, in cursor order (`None`: from the start).
fn pointer_values(pointer: Option<&str>, cursor: &[String]) -> anyhow::Result<Option<Vec<String>>> {
    let Some(text) = pointer else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("the stored pointer {text} is not JSON; reset the source"))?;
    cursor
        .iter()
        .map(|c| match value.get(c) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Null) | None => bail!(
                "the stored pointer {text} has no value for cursor column `{c}`; reset the source"
            ),
            Some(other) => Ok(other.to_string()),
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Some)
}

/// How a source's rows become the JSON text of events of a stream, worked out once per
/// run: each column's key (as JSON, with its colon) and the type its values are
/// rendered as: that of the stream's column of the same name (a number keeps its
/// digits, a timestamp becomes RFC 3339, a boolean `t`/`1` becomes `true`), or for a
/// column the stream does not declare, the source's type.
struct Render {
    columns: Vec<(Vec<u8>, Written)>,
}

/// How a column's values are written.
#[derive(Debug, Clone, Copy)]
enum Written {
    /// As [`push_value`] writes the type's values.
    As(ColumnType),
    /// As they are: a JSON column of the stream whose source column is JSON (`json`,
    /// `jsonb`), so the source guarantees its text reads as JSON.
    Json,
}

impl Render {
    fn new(stream: &Stream, columns: &[SourceColumn]) -> Render {
        let columns = columns
            .iter()
            .map(|column| {
                let mut key = Vec::new();
                push_json_string(&mut key, &column.name);
                key.push(b':');
                let declared = stream
                    .columns
                    .iter()
                    .find(|c| c.name == column.name)
                    .map(|c| c.ty);
                let kind = declared.unwrap_or_else(|| by_source_type(&column.type_name));
                let source_json = column.type_name.to_ascii_uppercase().starts_with("JSON");
                let written = match kind {
                    ColumnType::Json if source_json => Written::Json,
                    kind => Written::As(kind),
                };
                (key, written)
            })
            .collect();
        Render { columns }
    }

    /// Appends one source row as an event's JSON text to `out`.
    fn row(&self, values: &[Option<&str>], out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, ((key, written), value)) in self.columns.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            match (value, written) {
                (Some(text), Written::As(kind)) => push_value(out, *kind, text),
                (Some(text), Written::Json) => out.extend_from_slice(text.as_bytes()),
                (None, _) => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }
}

/// The column type a source column the stream does not declare is rendered as.
fn by_source_type(type_name: &str) -> ColumnType {
    let t = type_name.to_ascii_uppercase();
    if t.contains("INT") && !t.contains("INTERVAL") {
        ColumnType::Integer
    } else if ["NUMERIC", "DECIMAL", "FLOAT", "DOUBLE", "REAL"]
        .iter()
        .any(|n| t.contains(n))
    {
        ColumnType::Number
    } else if t.starts_with("BOOL") {
        ColumnType::Boolean
    } else if t.contains("TIMESTAMP") || t == "DATETIME" {
        ColumnType::Timestamp
    } else if t.starts_with("JSON") {
        ColumnType::Json
    } else {
        ColumnType::Text { max_length: None }
    }
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Appends one value's JSON text for a column of type `kind`; anything that does not
/// read as that type stays a string, for the schema to refuse with a clear message.
fn push_value(out: &mut Vec<u8>, kind: ColumnType, text: &str) {
    match kind {
        ColumnType::Integer | ColumnType::Number | ColumnType::Decimal { .. }
            if is_json_number(text) =>
        {
            out.extend_from_slice(text.as_bytes())
        }
        ColumnType::Boolean => match text {
            "t" | "true" | "1" | "TRUE" => out.extend_from_slice(b"true"),
            "f" | "false" | "0" | "FALSE" => out.extend_from_slice(b"false"),
            _ => push_json_string(out, text),
        },
        ColumnType::Timestamp => {
            // RFC 3339 text needs no escape.
            out.push(b'"');
            if !push_utc_timestamp(out, text) {
                match source_timestamp(text) {
                    Some(t) => out.extend_from_slice(t.as_bytes()),
                    None => {
                        out.pop();
                        push_json_string(out, text);
                        return;
                    }
                }
            }
            out.push(b'"');
        }
        ColumnType::Json if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            out.extend_from_slice(text.as_bytes())
        }
        _ => push_json_string(out, text),
    }
}

/// Whether `text` is a JSON number literal that serde_json reads (one that overflows a
/// double is not).
fn is_json_number(text: &str) -> bool {
    // serde_json reads a value between JSON whitespace.
    let b = text.trim_matches([' ', '\t', '\n', '\r']).as_bytes();
    let digits = |mut at: usize| {
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        (at > start).then_some(at)
    };
    let mut at = usize::from(b.first() == Some(&b'-'));
    let Some(end) = digits(at) else {
        return false;
    };
    if b[at] == b'0' && end > at + 1 {
        return false; // a leading zero
    }
    at = end;
    if b.get(at) == Some(&b'.') {
        let Some(end) = digits(at + 1) else {
            return false;
        };
        at = end;
    }
    if at == b.len() && b.len() < 300 {
        return true;
    }
    // An exponent, or digits enough to overflow: as serde_json reads it.
    matches!(
        serde_json::from_str::<serde_json::Value>(text),
        Ok(serde_json::Value::Number(_))
    )
}

/// Appends the commonest shape of a source's timestamp as [`source_timestamp`] writes
/// it, without chrono: `YYYY-MM-DD HH:MM:SS`, an optional fraction of up to nine
/// digits, and either no zone (MySQL, PostgreSQL's `timestamp`) or UTC's (`+00`,
/// `+00:00`, PostgreSQL's `timestamptz` read in UTC). Whether it did; anything else
/// (another zone, a year beyond four digits, a leap second, an impossible date) is
/// left to chrono.
fn push_utc_timestamp(out: &mut Vec<u8>, text: &str) -> bool {
    use crate::schema::compiled::{fraction_end, plain_date_and_time};
    let b = text.as_bytes();
    if !plain_date_and_time(b, b' ') {
        return false;
    }
    let Some(end) = fraction_end(b, 19) else {
        return false;
    };
    if !matches!(&b[end..], b"" | b"+00" | b"+00:00") {
        return false;
    }
    let fraction = b.get(20..end).unwrap_or_default();
    // The fraction as chrono's `AutoSi` prints it: none when zero, else 3, 6 or 9
    // digits, the fewest that hold it.
    let mut nanos = [b'0'; 9];
    nanos[..fraction.len()].copy_from_slice(fraction);
    let shown = if nanos == [b'0'; 9] {
        0
    } else if nanos[3..] == [b'0'; 6] {
        3
    } else if nanos[6..] == [b'0'; 3] {
        6
    } else {
        9
    };
    out.extend_from_slice(&b[..10]);
    out.push(b'T');
    out.extend_from_slice(&b[11..19]);
    if shown > 0 {
        out.push(b'.');
        out.extend_from_slice(&nanos[..shown]);
    }
    out.push(b'Z');
    true
}

/// A source's timestamp text as RFC 3339 in UTC: PostgreSQL's `2026-12-01
/// 10:00:00.5+00`, MySQL's `2026-12-01 10:00:00.500000` (read in UTC), SQLite's text as
/// stored. The formats are parsed once, not for every value.
fn source_timestamp(text: &str) -> Option<String> {
    use chrono::format::{parse, Item, Parsed, StrftimeItems};
    use chrono::{DateTime, SecondsFormat, Utc};
    type Formats = [Vec<Item<'static>>; 4];
    static FORMATS: std::sync::OnceLock<Formats> = std::sync::OnceLock::new();
    let [zoned, zoned_whole, naive, naive_t] = FORMATS.get_or_init(|| {
        [
            "%Y-%m-%d %H:%M:%S%.f%#z",
            "%Y-%m-%d %H:%M:%S%#z",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M:%S%.f",
        ]
        .map(|f| StrftimeItems::new(f).parse().unwrap_or_default())
    });
    let utc = |t: DateTime<Utc>| Some(t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    for items in [zoned, zoned_whole] {
        let mut parsed = Parsed::new();
        if parse(&mut parsed, text, items.iter()).is_ok() {
            if let Ok(t) = parsed.to_datetime() {
                return utc(t.with_timezone(&Utc));
            }
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return utc(t.with_timezone(&Utc));
    }
    for items in [naive, naive_t] {
        let mut parsed = Parsed::new();
        if parse(&mut parsed, text, items.iter()).is_ok() {
            if let Ok(t) = parsed.to_naive_datetime_with_offset(0) {
                return utc(t.and_utc());
            }
        }
    }
    None
}

/// Cursor values of source `name`, for a bound or a pointer: none of them may be NULL.
fn cursor_values(name: &str, values: Vec<Option<String>>) -> anyhow::Result<Vec<String>> {
    values.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
        anyhow::anyhow!("source `{name}` has a row whose cursor column is NULL: a cursor must never be NULL (e.g. COALESCE it in a query)")
    })
}

/// A run's pages in cursor order, read on up to `width` connections at once.
///
/// With one connection each page is read after the last row of the one before (keyset
/// pagination). With more, the end of each next full page is found first (the
/// `load_size`th row after the last end, from the cursor's index alone) and the ranges
/// between those ends are read at once, each on a connection of its own; the last
/// range is open-ended. Pages are still handed out, written and their pointers saved
/// in cursor order.
struct Pages {
    name: String,
    reader: Arc<Reader>,
    width: usize,
    idle: Vec<SourceConn>,
    /// Reads under way, in cursor order.
    reading: VecDeque<JoinHandle<(SourceConn, anyhow::Result<Page>)>>,
    /// Where the next read starts (`None`: at the first row).
    lower: Option<Vec<String>>,
    /// The last read started runs to the end of the source: none starts after it until
    /// it is back.
    open_ended: bool,
    /// The source has no more rows.
    done: bool,
    /// Text buffers of pages done with.
    buffers: Vec<Vec<u8>>,
}

impl Pages {
    fn new(
        name: &str,
        reader: Arc<Reader>,
        conns: Vec<SourceConn>,
        after: Option<Vec<String>>,
    ) -> Pages {
        Pages {
            name: name.to_owned(),
            reader,
            width: conns.len(),
            idle: conns,
            reading: VecDeque::new(),
            lower: after,
            open_ended: false,
            done: false,
            buffers: Vec::new(),
        }
    }

    /// Starts reads on the idle connections, up to `width` under way.
    async fn fill(&mut self) -> anyhow::Result<()> {
        while !self.done && !self.open_ended && self.reading.len() < self.width {
            let Some(mut conn) = self.idle.pop() else {
                break;
            };
            let lower = self.lower.as_deref();
            let upper = if self.width > 1 {
                let boundary = self.reader.boundary(lower.is_some());
                match conn.cursor_row(&boundary, lower.unwrap_or_default()).await {
                    Ok(end) => end
                        .map(|values| cursor_values(&self.name, values))
                        .transpose()?,
                    Err(e) => {
                        self.idle.push(conn);
                        return Err(e);
                    }
                }
            } else {
                None
            };
            let sql = self.reader.page(lower.is_some(), upper.is_some());
            let binds: Vec<String> = (lower.into_iter().flatten())
                .chain(upper.iter().flatten())
                .cloned()
                .collect();
            let reader = Arc::clone(&self.reader);
            let buffer = self.buffers.pop().unwrap_or_default();
            let end = upper.clone();
            self.reading.push_back(tokio::spawn(async move {
                let page = conn.page(&sql, &binds, &reader, buffer).await;
                // A range's pointer is its end, even where rows were deleted since.
                let page = page.map(|mut page| {
                    if let Some(end) = end {
                        page.cursor = end.into_iter().map(Some).collect();
                    }
                    page
                });
                (conn, page)
            }));
            match upper {
                Some(end) => self.lower = Some(end),
                None => self.open_ended = true,
            }
        }
        Ok(())
    }

    /// The next page in cursor order (`None`: the source has no more).
    async fn next(&mut self) -> anyhow::Result<Option<Page>> {
        self.fill().await?;
        let Some(reading) = self.reading.pop_front() else {
            return Ok(None);
        };
        let (conn, page) = reading
            .await
            .map_err(|e| anyhow::anyhow!("a read of source `{}` stopped: {e}", self.name))?;
        self.idle.push(conn);
        let mut page = page?;
        if self.open_ended && self.reading.is_empty() {
            // The open-ended read: the source ends here, or goes on after its last row.
            self.open_ended = false;
            if page.len() < self.reader.limit {
                self.done = true;
            } else {
                self.lower = Some(cursor_values(&self.name, page.cursor.clone())?);
            }
            if page.len() == 0 {
                self.buffers.push(std::mem::take(&mut page.texts));
                return Ok(None);
            }
        }
        Ok(Some(page))
    }

    /// Closes the connections (reads still under way are stopped).
    async fn close(mut self) {
        for reading in self.reading.drain(..) {
            reading.abort();
        }
        for conn in std::mem::take(&mut self.idle) {
            conn.close().await;
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        for reading in &self.reading {
            reading.abort();
        }
    }
}

/// What files a source's pages: the run's stream, source text and dead-letter limit.
struct Filer<'a> {
    name: &'a str,
    reader: &'a Reader,
    stream: &'a Arc<Stream>,
    source: &'a Arc<str>,
    max_payload: usize,
    dialect: Dialect,
}

/// A page filed into rows and dead letters, with the pointer after it (its `previous`
/// set when it is written); its text buffer is free again (the rows hold their own
/// text).
struct FiledPage {
    filing: Filing,
    pointer: Pointer,
    read: usize,
    buffer: Vec<u8>,
}

impl Filer<'_> {
    /// Files `page`.
    fn file(&self, mut page: Page) -> anyhow::Result<FiledPage> {
        let name = self.name;
        let reader = self.reader;
        let cursor = cursor_values(name, std::mem::take(&mut page.cursor))?;
        anyhow::ensure!(
            cursor.len() == reader.cursor_at.len(),
            "source `{name}`: a page came without its cursor values"
        );
        let pointer_object: serde_json::Map<String, serde_json::Value> = reader
            .cursor_at
            .iter()
            .zip(cursor)
            .map(|(&i, value)| (reader.columns[i].name.clone(), value.into()))
            .collect();
        let mut filing = Filing::new(self.max_payload, Some(self.dialect));
        filing.file(
            &Route::to(self.stream),
            self.source,
            chrono::Utc::now(),
            page.spans
                .iter()
                .enumerate()
                .map(|(i, span)| Event::text(i, &page.texts[span.clone()])),
        );
        Ok(FiledPage {
            filing,
            pointer: Pointer {
                source: name.to_owned(),
                value: serde_json::Value::Object(pointer_object).to_string(),
                previous: None,
            },
            read: page.len(),
            buffer: std::mem::take(&mut page.texts),
        })
    }

    /// The next page of `pages`, filed.
    async fn next(&self, pages: &mut Pages) -> anyhow::Result<Option<FiledPage>> {
        let page = pages.next().await?;
        page.map(|page| self.file(page)).transpose()
    }
}

/// Pulls a database source (see [`super::pull`]).
pub async fn pull(run: Run<'_>) -> anyhow::Result<PullReport> {
    let Run { name, source, .. } = run;
    let url = std::env::var(&source.url_env).map_err(|_| {
        anyhow::anyhow!(
            "[sources.{name}] url_env: the environment variable {} is not set",
            source.url_env
        )
    })?;
    let connect = || async {
        SourceConn::open(&url, name).await.with_context(|| {
            format!(
                "cannot connect to source `{name}` ({})",
                crate::sink::redact(&url)
            )
        })
    };
    let (mut conn, dialect) = connect().await?;
    let reader = match Reader::new(&mut conn, dialect, run).await {
        Ok(reader) => Arc::new(reader),
        Err(e) => {
            conn.close().await;
            return Err(e);
        }
    };
    // A paced run reads one page at a time.
    let width = if source.max_rows_per_second > 0 {
        1
    } else {
        source.max_connections.unwrap_or(1)
    };
    let mut conns = vec![conn];
    while conns.len() < width {
        conns.push(connect().await?.0);
    }
    pull_with(conns, reader, run).await
}

impl Reader {
    /// The reader of source `run.name`, from the columns the source answers.
    async fn new(conn: &mut SourceConn, dialect: Dialect, run: Run<'_>) -> anyhow::Result<Reader> {
        let Run {
            name,
            source,
            stream,
            ..
        } = run;
        let relation = Reader::relation(dialect, source);
        let columns = conn
            .describe(&format!("SELECT * FROM {relation}"))
            .await
            .with_context(|| format!("cannot read the columns of source `{name}`"))?;
        let cursor_at = source
            .cursor
            .iter()
            .map(|c| {
                columns.iter().position(|s| &s.name == c).ok_or_else(|| {
                    anyhow::anyhow!(
                        "[sources.{name}] cursor column `{c}` is not a column of the source"
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Reader {
            dialect,
            relation,
            render: Render::new(stream, &columns),
            columns,
            cursor_at,
            limit: source.load_size,
        })
    }
}

/// Reads the source's rows after the pointer on `conns` and writes them load by load,
/// each with its pointer; the next page is read and filed while a load is written.
async fn pull_with(
    mut conns: Vec<SourceConn>,
    reader: Arc<Reader>,
    run: Run<'_>,
) -> anyhow::Result<PullReport> {
    let Run {
        name,
        source,
        stream,
        storage,
        max_payload,
        progress,
    } = run;
    // The pointer as stored: each load moves it from there, or fails if another run did.
    let mut stored = storage.store.pointer(name).await?;
    let after = pointer_values(stored.as_deref(), &source.cursor)?;
    let remaining = conns[0]
        .count(
            &reader.count(after.is_none()),
            after.as_deref().unwrap_or_default(),
        )
        .await
        .with_context(|| format!("cannot count the rows of source `{name}`"))?;
    progress.total(u64::try_from(remaining).unwrap_or(0));
    let pulled_from = crate::source::pull(name);
    let filer = Filer {
        name,
        reader: &reader,
        stream,
        source: &pulled_from,
        max_payload,
        dialect: storage.store.dialect(),
    };
    let mut pages = Pages::new(name, Arc::clone(&reader), conns, after);
    let read_context = || format!("cannot read source `{name}`");
    let started = Instant::now();
    let mut report = PullReport::default();
    let mut filed = filer.next(&mut pages).await.with_context(read_context)?;
    while let Some(FiledPage {
        filing,
        mut pointer,
        read,
        buffer,
    }) = filed
    {
        if progress.cancelled() {
            break;
        }
        pointer.previous = stored.take();
        pages.buffers.push(buffer);
        let load = PulledLoad {
            stream,
            pointer: &pointer,
            read,
        };
        let (written, next) = if source.max_rows_per_second == 0 {
            // The next page is read and filed while this one is written: the source,
            // Sluice and the target work at once. (Cancelled meanwhile, it is dropped.)
            tokio::join!(
                load.write(storage, filing, &mut report),
                filer.next(&mut pages)
            )
        } else {
            let written = load.write(storage, filing, &mut report).await;
            let due =
                Duration::from_secs_f64(report.read as f64 / source.max_rows_per_second as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let next = match written {
                Ok(()) => filer.next(&mut pages).await,
                Err(_) => Ok(None),
            };
            (written, next)
        };
        written.with_context(|| format!("cannot write a load of source `{name}`"))?;
        progress.advance(&report);
        stored = Some(pointer.value);
        filed = next.with_context(read_context)?;
    }
    pages.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_value(kind: ColumnType, text: &str) -> String {
        let mut out = Vec::new();
        push_value(&mut out, kind, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn source_values_render_by_the_stream_s_types() {
        assert_eq!(render_value(ColumnType::Integer, "42"), "42");
        assert_eq!(render_value(ColumnType::Integer, "4x"), "\"4x\"");
        assert_eq!(
            render_value(
                ColumnType::Decimal {
                    precision: 38,
                    scale: 9
                },
                "12345678901234567890.123456789"
            ),
            "12345678901234567890.123456789"
        );
        assert_eq!(render_value(ColumnType::Boolean, "t"), "true");
        assert_eq!(render_value(ColumnType::Boolean, "0"), "false");
        assert_eq!(render_value(ColumnType::Boolean, "yes"), "\"yes\"");
        for (source, rfc3339) in [
            ("2026-12-01 10:00:00.5+00", "2026-12-01T10:00:00.500Z"),
            ("2026-12-01 10:00:00+05:30", "2026-12-01T04:30:00Z"),
            ("2026-12-01 10:00:00.000000", "2026-12-01T10:00:00Z"),
            ("2026-12-01 10:00:00.123456", "2026-12-01T10:00:00.123456Z"),
            ("2026-12-01T10:00:00.25", "2026-12-01T10:00:00.250Z"),
            ("2026-12-01T10:00:00-01:00", "2026-12-01T11:00:00Z"),
        ] {
            assert_eq!(
                render_value(ColumnType::Timestamp, source),
                format!("\"{rfc3339}\""),
                "{source}"
            );
        }
        assert_eq!(render_value(ColumnType::Timestamp, "soon"), "\"soon\"");
        assert_eq!(
            render_value(ColumnType::Text { max_length: None }, "a\"b"),
            "\"a\\\"b\""
        );
        assert_eq!(render_value(ColumnType::Json, "{\"a\":1}"), "{\"a\":1}");
        assert_eq!(render_value(ColumnType::Json, "{\"a\":"), "\"{\\\"a\\\":\"");
    }

    #[test]
    fn timestamps_of_the_common_shape_are_written_as_chrono_writes_them() {
        let mut texts: Vec<String> = Vec::new();
        for date in [
            "2026-12-01",
            "2024-02-29",
            "2023-02-29",
            "0000-02-29",
            "1900-02-29",
            "0001-01-01",
            "9999-12-31",
            "2026-13-01",
            "2026-00-10",
        ] {
            for time in [
                "00:00:00", "23:59:59", "10:07:30", "24:00:00", "12:60:00", "12:00:60",
            ] {
                for fraction in [
                    "",
                    ".",
                    ".5",
                    ".000",
                    ".250",
                    ".123",
                    ".1234",
                    ".000001",
                    ".100000",
                    ".123456789",
                    ".1234567891",
                    ".0000000",
                ] {
                    for zone in ["", "+00", "+00:00", "+01", "-05:30", "Z", " BC", "x"] {
                        texts.push(format!("{date} {time}{fraction}{zone}"));
                    }
                }
            }
        }
        texts.extend(
            [
                "2026-12-01T10:00:00",
                "2026-12-01 10:00",
                "12026-12-01 10:00:00",
                "2026-1a-01 10:00:00",
                "",
            ]
            .map(String::from),
        );
        let mut fast = 0;
        for text in &texts {
            let mut out = Vec::new();
            if push_utc_timestamp(&mut out, text) {
                let out = String::from_utf8(out).unwrap();
                fast += 1;
                assert_eq!(Some(out), source_timestamp(text), "{text}");
            }
        }
        assert!(fast >= 450, "{fast} of {} took the fast way", texts.len());
    }

    #[test]
    fn strings_and_numbers_read_as_serde_json_reads_them() {
        for text in [
            "",
            "plain",
            "quote \" and backslash \\",
            "tab\tnew line\ncarriage\rbell\u{7}nul\0\u{8}\u{c}\u{1f}\u{7f}",
            "é ünïcode 😀 long enough to cross a word of eight bytes",
        ] {
            let mut ours = Vec::new();
            push_json_string(&mut ours, text);
            let ours = String::from_utf8(ours).unwrap();
            assert_eq!(ours, serde_json::to_string(text).unwrap(), "{text:?}");
        }
        for text in [
            "0",
            "-0",
            "7",
            "-12",
            "3.25",
            "-0.5",
            "1e3",
            "1E-2",
            "2.5e+7",
            "123456789012345678901234567890",
            "1e400",
            "01",
            "1.",
            ".5",
            "-",
            "+1",
            "1.2.3",
            "0x10",
            "NaN",
            "Infinity",
            "1 ",
            " 1",
            "\t-2.5\n",
            " ",
            "",
            "12a",
            &"9".repeat(400),
        ] {
            let serde = matches!(
                serde_json::from_str::<serde_json::Value>(text),
                Ok(serde_json::Value::Number(_))
            );
            assert_eq!(is_json_number(text), serde, "{text:?}");
        }
    }

    #[test]
    fn pointers_hold_the_cursor_values_in_order() {
        let cursor = ["updated_at".to_owned(), "id".to_owned()];
        assert_eq!(pointer_values(None, &cursor).unwrap(), None);
        assert_eq!(
            pointer_values(
                Some(r#"{"id": "7", "updated_at": "2026-12-01 10:00:00+00"}"#),
                &cursor
            )
            .unwrap(),
            Some(vec!["2026-12-01 10:00:00+00".to_owned(), "7".to_owned()])
        );
        assert!(pointer_values(Some(r#"{"id": "7"}"#), &cursor).is_err());
    }
}
