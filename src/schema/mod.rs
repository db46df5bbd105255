//! Streams: one JSON Schema file per stream, compiled into a validator and mapped to
//! table columns (README "Streams and tables").
//!
//! In: `schemas/*.json` and the `[streams.*]` config. Out: a [`Registry`] of [`Stream`]s,
//! each able to turn a parsed event into a typed [`Row`] or a reason to dead-letter it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use serde_json::{Map, Value};

use serde::Deserialize;

pub mod compiled;
pub mod tape;

use crate::event::{truncate_utf8, Cell, Row, Stage};
use crate::privacy::{Keys, Plan, PrivacyConfig, Replaced, Treatment};
use crate::toml_values::{duration, opt_duration};

/// Batching and queue limits of one stream (`[defaults]` or `[streams.NAME]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// A batch is written once it holds this many events.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// A batch is written once its first event has waited this long (linger).
    #[serde(default = "default_batch_max_wait", deserialize_with = "duration")]
    pub batch_max_wait: Duration,
    /// Queue capacity in events (accepted but not yet committed, batches in flight included).
    #[serde(default = "default_queue_max_events")]
    pub queue_max_events: usize,
    /// Queue capacity in bytes of memory the queued events hold (JSON text and decoded
    /// values), so a stream of huge events cannot take all memory.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: usize,
}

/// `[streams.NAME]`: where one stream writes and how it overrides `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Table name; the stream's name when absent.
    pub table: Option<String>,
    /// Property holding a unique event id; gets a unique key so a retried event is stored once.
    pub id_field: Option<String>,
    /// Properties whose values identify a row: a row whose key is stored replaces the
    /// stored one (an upsert) instead of being added. Not with `id_field`.
    pub upsert_key: Option<Vec<String>>,
    /// With `upsert_key`: a row replaces the stored one only when this property's value
    /// is not older (smaller) than the stored row's.
    pub version_field: Option<String>,
    /// Overrides `[defaults].batch_max_events`.
    pub batch_max_events: Option<usize>,
    /// Overrides `[defaults].batch_max_wait`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub batch_max_wait: Option<Duration>,
    /// Overrides `[defaults].queue_max_events`.
    pub queue_max_events: Option<usize>,
    /// Overrides `[defaults].queue_max_bytes`.
    pub queue_max_bytes: Option<usize>,
    /// How often the stream is expected to commit rows at least (`"15m"`): exported as
    /// `sluice_stream_expected_interval_seconds`, for the `SluiceStreamSilent` alert.
    #[serde(default, deserialize_with = "opt_duration")]
    pub expect_every: Option<Duration>,
}

fn default_batch_max_events() -> usize {
    1000
}
fn default_batch_max_wait() -> Duration {
    Duration::from_millis(20)
}
fn default_queue_max_events() -> usize {
    50_000
}
fn default_queue_max_bytes() -> usize {
    64 * 1024 * 1024
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            batch_max_events: default_batch_max_events(),
            batch_max_wait: default_batch_max_wait(),
            queue_max_events: default_queue_max_events(),
            queue_max_bytes: default_queue_max_bytes(),
        }
    }
}

/// What the configuration says of streams: where their schemas are, `[defaults]`, and
/// each `[streams.NAME]`.
#[derive(Debug, Clone, Copy)]
pub struct StreamsConfig<'a> {
    pub schemas_dir: &'a Path,
    pub defaults: &'a StreamSettings,
    pub streams: &'a BTreeMap<String, StreamConfig>,
    pub privacy: &'a PrivacyConfig,
    /// `database.url`: an SQLite database keeps its privacy key beside its file.
    pub database_url: &'a str,
    /// Whether the database stores a JSON column as a value, not as text (PostgreSQL's
    /// `jsonb`): then a nested value may be handed over as the event wrote it.
    pub json_as_value: bool,
}

/// [`StreamsConfig`], owned: what a job keeps to read the schemas afresh.
#[derive(Debug, Clone)]
pub struct StreamsSource {
    pub schemas_dir: PathBuf,
    pub defaults: StreamSettings,
    pub streams: BTreeMap<String, StreamConfig>,
    pub privacy: PrivacyConfig,
    pub database_url: String,
    pub json_as_value: bool,
}

impl StreamsSource {
    pub fn view(&self) -> StreamsConfig<'_> {
        StreamsConfig {
            schemas_dir: &self.schemas_dir,
            defaults: &self.defaults,
            streams: &self.streams,
            privacy: &self.privacy,
            database_url: &self.database_url,
            json_as_value: self.json_as_value,
        }
    }
}

impl StreamsConfig<'_> {
    /// An owned copy, to read the schemas again later.
    pub fn to_source(&self) -> StreamsSource {
        StreamsSource {
            schemas_dir: self.schemas_dir.to_path_buf(),
            defaults: self.defaults.clone(),
            streams: self.streams.clone(),
            privacy: self.privacy.clone(),
            database_url: self.database_url.to_owned(),
            json_as_value: self.json_as_value,
        }
    }

    /// The effective settings of `stream`: `[defaults]` overlaid by `[streams.NAME]`.
    pub fn settings(&self, stream: &str) -> StreamSettings {
        let mut s = self.defaults.clone();
        if let Some(o) = self.streams.get(stream) {
            s.batch_max_events = o.batch_max_events.unwrap_or(s.batch_max_events);
            s.batch_max_wait = o.batch_max_wait.unwrap_or(s.batch_max_wait);
            s.queue_max_events = o.queue_max_events.unwrap_or(s.queue_max_events);
            s.queue_max_bytes = o.queue_max_bytes.unwrap_or(s.queue_max_bytes);
        }
        s
    }
}

/// Longest identifier accepted (PostgreSQL truncates above 63 bytes).
pub const MAX_IDENT_LEN: usize = 63;
/// System column: when Sluice accepted the event.
pub const RECEIVED_AT: &str = "_received_at";
/// System column: undeclared properties, as a JSON object.
pub const EXTRA: &str = "_extra";
/// Longest validation message kept; a message quoting a huge value is cut here.
const MAX_ERROR_CHARS: usize = 1000;
/// Schema errors an event's dead letter spells out; the rest are counted.
const SHOWN_ERRORS: usize = 5;
/// Most further schema errors counted for "…and N more".
const MAX_COUNTED_ERRORS: usize = 1000;

/// The SQL type family of a column, derived from the property's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `string`; `max_length` from `maxLength`.
    Text { max_length: Option<u64> },
    /// `string` with `format: date-time`.
    Timestamp,
    /// `string` with `format: uuid`.
    Uuid,
    /// `integer` (64-bit).
    Integer,
    /// `number` (double precision).
    Number,
    /// `boolean`.
    Boolean,
    /// `object`, `array`, or no single type.
    Json,
    /// A property treated with `"x-sluice-privacy": "hash"`: 64 hex characters.
    Hash,
    /// `"x-sluice-decimal": [precision, scale]` on a number (or numeric string): an
    /// exact decimal, written from the event's own digits.
    Decimal { precision: u8, scale: u8 },
}

/// A stream table's unique key, and what becomes of a row whose key is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The key's columns, in the order configured.
    pub columns: Vec<String>,
    pub on_conflict: OnConflict,
}

/// What a row whose key is already stored does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnConflict {
    /// It is skipped (`id_field`: a redelivered event is stored once).
    Skip,
    /// It replaces the stored row (`upsert_key`); with a version column, only when its
    /// version is not older than the stored row's.
    Replace { version: Option<String> },
}

impl UniqueKey {
    /// The key `[streams.NAME]` sets, checked against the stream's columns.
    fn of(
        name: &str,
        config: &StreamConfig,
        columns: &[Column],
        privacy: Option<&Plan>,
    ) -> Result<Option<UniqueKey>, Problem> {
        let at = |property: &str, reason: String| Err((Some(property.to_owned()), reason));
        match (&config.id_field, &config.upsert_key, &config.version_field) {
            (Some(id), Some(_), _) => at(id, format!("[streams.{name}] sets both id_field and upsert_key: id_field skips a row whose id is stored, upsert_key replaces it; choose one")),
            (_, None, Some(version)) => at(version, format!("[streams.{name}].version_field needs upsert_key (the properties a newer version replaces a row by)")),
            (Some(id), None, None) => {
                check_key_column(name, "id_field", id, columns, privacy)?;
                Ok(Some(UniqueKey {
                    columns: vec![id.clone()],
                    on_conflict: OnConflict::Skip,
                }))
            }
            (None, Some(key), version) => {
                if key.is_empty() {
                    return Err((None, format!("[streams.{name}].upsert_key is empty: name the properties that identify a row, e.g. [\"id\"]")));
                }
                for (i, column) in key.iter().enumerate() {
                    check_key_column(name, "upsert_key", column, columns, privacy)?;
                    if key[..i].contains(column) {
                        return at(column, format!("[streams.{name}].upsert_key names `{column}` twice"));
                    }
                    if columns.iter().any(|c| &c.name == column && c.nullable) {
                        return at(column, format!("[streams.{name}].upsert_key property `{column}` must be required by the schema (\"required\"): a row without it could never replace another"));
                    }
                }
                if let Some(version) = version {
                    match columns.iter().find(|c| &c.name == version) {
                        None => return at(version, format!("[streams.{name}].version_field names a property the schema does not declare")),
                        Some(c) if !matches!(c.ty, ColumnType::Integer | ColumnType::Number | ColumnType::Timestamp | ColumnType::Text { .. }) || c.treatment.is_some() => {
                            return at(version, format!("[streams.{name}].version_field must be an integer, number, date-time or string property, not treated by x-sluice-privacy"))
                        }
                        Some(_) if key.contains(version) => return at(version, format!("[streams.{name}].version_field cannot be part of upsert_key")),
                        Some(_) => {}
                    }
                }
                Ok(Some(UniqueKey {
                    columns: key.clone(),
                    on_conflict: OnConflict::Replace {
                        version: version.clone(),
                    },
                }))
            }
            (None, None, None) => Ok(None),
        }
    }

    /// Whether `column` is part of the key.
    pub fn has(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
    }
}

/// One table column from one top-level property.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// False for `required` properties.
    pub nullable: bool,
    /// `x-sluice-privacy` on the property itself.
    pub treatment: Option<Treatment>,
}

/// Why an event could not become a row.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub stage: Stage,
    pub error: String,
    /// JSON pointer to the offending value, for schema errors.
    pub pointer: Option<String>,
    /// The dead letter's payload instead of the event's text as received: the treated
    /// event, for a stream with `x-sluice-privacy`.
    pub payload: Option<Box<str>>,
}

/// A problem in a schema file or a stream's configuration.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {reason}", property.as_ref().map(|p| format!(", property `{p}`")).unwrap_or_default())]
pub struct SchemaError {
    pub file: PathBuf,
    pub property: Option<String>,
    pub reason: String,
}

/// One stream: its schema, compiled validator, table and settings.
pub struct Stream {
    pub name: String,
    pub table: String,
    pub schema_file: PathBuf,
    /// The schema's `$id`, if it declares one.
    pub schema_id: Option<String>,
    /// The JSON Schema document, as read from `schema_file`.
    pub schema: Value,
    /// Lowercase hex SHA-256 of `schema_file`'s bytes, for the load ledger.
    pub schema_sha256: String,
    pub columns: Vec<Column>,
    /// Whether the table has an `_extra` column (the schema allows undeclared properties).
    pub has_extra: bool,
    /// Column with a unique key, so a retried event is stored once.
    pub id_field: Option<String>,
    /// The table's unique key (from `id_field` or `upsert_key`) and what a row whose
    /// key is stored does.
    pub key: Option<UniqueKey>,
    /// `[streams.NAME] expect_every`: the longest silence that is normal.
    pub expect_every: Option<Duration>,
    pub settings: StreamSettings,
    /// The treatment of personal fields (`x-sluice-privacy`), if the schema asks for any.
    pub privacy: Option<Plan>,
    validator: jsonschema::Validator,
    /// The fast path from an event's text to its row (see [`compiled`]); `None` for a
    /// schema it does not compile and for a stream that treats personal fields.
    compiled: Option<compiled::Compiled>,
    /// What an event treated already (read back from the spool, a treated dead letter)
    /// must match: the schema with its treated properties relaxed.
    treated_validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("table", &self.table)
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// Every stream, by name.
#[derive(Debug, Default)]
pub struct Registry {
    streams: BTreeMap<String, Arc<Stream>>,
}

impl Registry {
    /// Loads every `*.json` in `config.schemas_dir`, in name order.
    pub fn load(config: StreamsConfig<'_>) -> Result<Registry, SchemaError> {
        let dir = config.schemas_dir;
        let err = |reason: String| SchemaError {
            file: dir.to_path_buf(),
            property: None,
            reason,
        };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| err(format!("cannot read the schemas directory: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(err("no stream schemas (*.json) found".into()));
        }
        let mut keys = Keys::new(config.privacy, config.database_url);
        let mut streams = BTreeMap::new();
        let mut tables: HashMap<String, String> = HashMap::new();
        for file in files {
            let stream = Stream::load(&file, config, &mut keys)?;
            if let Some(other) =
                tables.insert(stream.table.to_ascii_lowercase(), stream.name.clone())
            {
                return Err(SchemaError {
                    file,
                    property: None,
                    reason: format!(
                        "stream `{}` writes to table `{}`, which stream `{other}` already uses",
                        stream.name, stream.table
                    ),
                });
            }
            streams.insert(stream.name.clone(), Arc::new(stream));
        }
        for name in config.streams.keys() {
            if !streams.contains_key(name) {
                return Err(SchemaError {
                    file: dir.join(format!("{name}.json")),
                    property: None,
                    reason: format!("the config has a [streams.{name}] section but there is no schema file for it"),
                });
            }
        }
        Ok(Registry { streams })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Stream>> {
        self.streams.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Stream>> {
        self.streams.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }
}

/// Checks that `name` can be used as a SQL identifier.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{name}` is not a valid identifier: use letters, digits and `_`, not starting with a digit ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    if name.len() > MAX_IDENT_LEN {
        return Err(format!(
            "`{name}` is longer than {MAX_IDENT_LEN} characters"
        ));
    }
    Ok(())
}

/// A problem with one schema: the property at fault, if one is, and what to fix.
type Problem = (Option<String>, String);

impl Stream {
    fn load(
        file: &Path,
        config: StreamsConfig<'_>,
        keys: &mut Keys<'_>,
    ) -> Result<Stream, SchemaError> {
        let err = |(property, reason): Problem| SchemaError {
            file: file.to_path_buf(),
            property,
            reason,
        };
        let whole = |reason: String| err((None, reason));
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| whole("file name is not UTF-8".into()))?
            .to_owned();
        check_identifier(&name).map_err(|e| whole(format!("stream name (the file name) {e}")))?;
        let text = std::fs::read_to_string(file).map_err(|e| whole(format!("cannot read: {e}")))?;
        let schema: Value =
            serde_json::from_str(&text).map_err(|e| whole(format!("not valid JSON: {e}")))?;
        let validator = compile(&schema, "").map_err(err)?;
        let root = schema
            .as_object()
            .ok_or_else(|| whole("the schema must be a JSON object".into()))?;
        if root.get("type").and_then(Value::as_str) != Some("object") {
            return Err(whole(
                "the top level must declare \"type\": \"object\" (one event is one JSON object)"
                    .into(),
            ));
        }
        let privacy = Plan::of_schema(&schema, keys, config.privacy.extra).map_err(err)?;
        let treated_validator = privacy
            .as_ref()
            .map(|plan| {
                compile(
                    &plan.relaxed_schema(&schema),
                    " (with its treated properties relaxed)",
                )
            })
            .transpose()
            .map_err(err)?;
        let columns = columns_of(&schema, privacy.as_ref()).map_err(err)?;
        let has_extra = root.get("additionalProperties") != Some(&Value::Bool(false));
        let stream_config = config.streams.get(&name).cloned().unwrap_or_default();
        let table = stream_config.table.clone().unwrap_or_else(|| name.clone());
        check_identifier(&table)
            .map_err(|e| whole(format!("table name {e} (set [streams.{name}].table)")))?;
        if table.starts_with("sluice_") {
            return Err(whole(format!(
                "table `{table}`: the `sluice_` prefix is reserved for Sluice's own tables"
            )));
        }
        let key = UniqueKey::of(&name, &stream_config, &columns, privacy.as_ref()).map_err(err)?;
        if stream_config.expect_every.is_some_and(|d| d.is_zero()) {
            return Err(whole(format!(
                "[streams.{name}].expect_every must be longer than 0 (e.g. \"15m\")"
            )));
        }
        let schema_id = root.get("$id").and_then(Value::as_str).map(str::to_owned);
        // A database that keeps a JSON column as a value (`jsonb`) stores the same one
        // from the text as written; a key's column is compared as text in a batch, so
        // it is written.
        let in_key = |c: &Column| key.as_ref().is_some_and(|k| k.columns.contains(&c.name));
        let compiled = privacy
            .is_none()
            .then(|| compiled::Compiled::of(&schema, &columns, has_extra))
            .flatten()
            .map(|c| c.json_as_written(&columns, |col| config.json_as_value && !in_key(col)));
        Ok(Stream {
            compiled,
            schema_id,
            schema_sha256: crate::event::sha256_hex(text.as_bytes()),
            schema,
            settings: config.settings(&name),
            id_field: stream_config.id_field,
            key,
            expect_every: stream_config.expect_every,
            name,
            table,
            schema_file: file.to_path_buf(),
            columns,
            has_extra,
            privacy,
            validator,
            treated_validator,
        })
    }

    /// Whether `event` passes the stream's schema (as received, not treated).
    pub fn is_valid(&self, event: &Value) -> bool {
        self.validator.is_valid(event)
    }

    /// Whether events of this stream can take the fast path ([`Stream::fast_row`]).
    pub fn has_fast_path(&self) -> bool {
        self.compiled.is_some()
    }

    /// The row of the event whose text is `text`, read into `tape`, by the fast path:
    /// `None` unless the event certainly passes the schema (then [`Stream::to_row`]
    /// decides, and says why). `skip` is a member left out (a routing field the schema
    /// does not declare). The row is the one `to_row` makes of the same event.
    pub fn fast_row(
        &self,
        tape: &tape::Tape<'_>,
        text: &str,
        skip: Option<&str>,
        source: &Arc<str>,
        index: usize,
        received_at: DateTime<Utc>,
    ) -> Option<Row> {
        let (cells, extra) = self.compiled.as_ref()?.cells(tape, &self.columns, skip)?;
        Some(Row {
            cells,
            extra,
            received_at,
            raw: text.into(),
            treated: false,
            source: source.clone(),
            index,
        })
    }

    /// Whether the schema declares `property` (a column of the table).
    pub fn declares(&self, property: &str) -> bool {
        self.columns.iter().any(|c| c.name == property)
    }

    /// Validates `event` and converts it to a row. `raw` is the event's original text.
    /// A stream with `x-sluice-privacy` treats the event after validating it: the row,
    /// its text and a rejection's payload and message hold treated values only. With
    /// `treated`, the event was treated already (a spool record, a treated dead letter):
    /// it is checked with its treated properties relaxed and not treated again.
    pub fn to_row(
        &self,
        mut event: Value,
        raw: Box<str>,
        treated: bool,
        source: Arc<str>,
        index: usize,
        received_at: DateTime<Utc>,
    ) -> Result<Row, Rejection> {
        let Some(plan) = &self.privacy else {
            if !self.validator.is_valid(&event) {
                return Err(self.explain_invalid(&self.validator, &event, None));
            }
            return self
                .row_of(event, raw, None, source, index, received_at)
                .map_err(|(r, _)| r);
        };
        let checked_by = match &self.treated_validator {
            Some(relaxed) if treated => relaxed,
            _ => &self.validator,
        };
        if treated {
            if !checked_by.is_valid(&event) {
                return Err(Rejection {
                    payload: Some(raw.clone()),
                    ..self.explain_invalid(checked_by, &event, None)
                });
            }
            return self
                .row_of(event, raw, None, source, index, received_at)
                .map_err(|(r, raw)| Rejection {
                    payload: Some(raw),
                    ..r
                });
        }
        if !self.validator.is_valid(&event) {
            // The messages quote the event as received: explain on a copy, then write
            // each replaced value as its treated form.
            let original = event.clone();
            let replaced = plan.treat_recording(&mut event);
            return Err(Rejection {
                payload: Some(event.to_string().into()),
                ..self.explain_invalid(&self.validator, &original, Some(&replaced))
            });
        }
        plan.treat(&mut event);
        let text: Box<str> = compact(&event).into();
        self.row_of(event, text, Some(&raw), source, index, received_at)
            .map_err(|(r, text)| Rejection {
                payload: Some(text),
                ..r
            })
    }

    /// The row of a valid (and, where the stream says so, treated) `event`, keeping
    /// `raw` as its text; `original` is its text as received when that is another
    /// (treated events), read for the exact digits of huge integers in JSON columns
    /// that no treatment touches. A value no column takes gives `raw` back with why.
    fn row_of(
        &self,
        event: Value,
        raw: Box<str>,
        original: Option<&str>,
        source: Arc<str>,
        index: usize,
        received_at: DateTime<Utc>,
    ) -> Result<Row, (Rejection, Box<str>)> {
        match self.cells_of(event, original.unwrap_or(&raw)) {
            Ok((cells, extra)) => Ok(Row {
                cells,
                extra,
                received_at,
                raw,
                treated: self.privacy.is_some(),
                source,
                index,
            }),
            Err(rejection) => Err((rejection, raw)),
        }
    }

    /// The cells and `_extra` of a valid `event` whose text as received is `original`.
    fn cells_of(
        &self,
        event: Value,
        original: &str,
    ) -> Result<(Vec<Cell>, Option<String>), Rejection> {
        // An integer literal beyond 64 bits became a float: JSON columns and `_extra`
        // then take their text from the original, digit for digit.
        let originals = (crate::json_text::has_huge_float(&event)
            && crate::json_text::has_long_integer(original))
        .then(|| crate::json_text::top_level(original))
        .flatten();
        let untouched = |name: &str| self.privacy.as_ref().is_none_or(|p| !p.touches(name));
        let exact = |name: &str, v: &Value| {
            originals
                .as_ref()
                .filter(|_| untouched(name))
                .and_then(|o| o.get(name))
                .and_then(|r| crate::json_text::exact_compact(r.get()))
                .unwrap_or_else(|| v.to_string())
        };
        let Value::Object(mut map) = event else {
            // Unreachable for a valid event: the top-level schema type is `object`.
            return Err(Rejection {
                stage: Stage::Validate,
                error: "the event is not a JSON object".into(),
                pointer: Some(String::new()),
                payload: None,
            });
        };
        // Exact decimals are read from the event's own text, never through a double.
        let mut cells = Vec::with_capacity(self.columns.len());
        for col in &self.columns {
            let cell = match map.remove(&col.name) {
                None | Some(Value::Null) => Cell::Null,
                Some(v) if col.ty == ColumnType::Json && originals.is_some() => {
                    Cell::Json(exact(&col.name, &v).into())
                }
                Some(_) if matches!(col.ty, ColumnType::Decimal { .. }) => {
                    let literal = crate::json_text::top_level_member(original, &col.name);
                    decimal_cell(col.ty, literal).map_err(|error| Rejection {
                        stage: Stage::Validate,
                        error: format!("at /{}: {error}", col.name),
                        pointer: Some(format!("/{}", col.name)),
                        payload: None,
                    })?
                }
                Some(v) => convert(col.ty, v).map_err(|error| Rejection {
                    stage: Stage::Validate,
                    error: format!("at /{}: {error}", col.name),
                    pointer: Some(format!("/{}", col.name)),
                    payload: None,
                })?,
            };
            cells.push(cell);
        }
        let extra = (self.has_extra && !map.is_empty()).then(|| match &originals {
            None => compact(&Value::Object(map)),
            Some(_) => {
                // serde_json's map iterates in key order: the same order it writes.
                let members: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), exact(k, v)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        });
        Ok((cells, extra))
    }

    /// Why `event` fails `validator`: the first errors spelled out, the rest counted;
    /// with `replaced`, every value a treatment replaced is written as its treated form
    /// (before the message is cut, so no part of a raw value survives).
    fn explain_invalid(
        &self,
        validator: &jsonschema::Validator,
        event: &Value,
        replaced: Option<&Replaced>,
    ) -> Rejection {
        let mut pointer = None;
        let mut messages = Vec::new();
        let mut errors = validator.iter_errors(event);
        for e in errors.by_ref().take(SHOWN_ERRORS) {
            let at = e.instance_path().as_str().to_owned();
            let text = match replaced {
                Some(replaced) => replaced.scrub(&e.to_string()),
                None => e.to_string(),
            };
            messages.push(if at.is_empty() {
                text
            } else {
                format!("at {at}: {text}")
            });
            pointer.get_or_insert(at);
        }
        // The rest are counted (up to a bound), so the reader knows the list is cut.
        let more = errors.take(MAX_COUNTED_ERRORS).count();
        let suffix = match more {
            0 => String::new(),
            n if n == MAX_COUNTED_ERRORS => format!("; …and {n}+ more"),
            n => format!("; …and {n} more"),
        };
        let joined = messages.join("; ");
        let joined = format!(
            "{}{suffix}",
            truncate_utf8(&joined, MAX_ERROR_CHARS.saturating_sub(suffix.len()))
        );
        Rejection {
            stage: Stage::Validate,
            error: truncate_utf8(&joined, MAX_ERROR_CHARS).to_owned(),
            pointer,
            payload: None,
        }
    }
}

/// The validator of `schema` (`what` says which, in errors).
fn compile(schema: &Value, what: &str) -> Result<jsonschema::Validator, Problem> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| {
            // The error's instance is the schema document itself: its path names the
            // property at fault (`/properties/amount/type`).
            let at = e.instance_path().as_str().to_owned();
            let property = at
                .strip_prefix("/properties/")
                .and_then(|rest| rest.split('/').next())
                .map(str::to_owned);
            let place = if at.is_empty() {
                String::new()
            } else {
                format!(" at {at}")
            };
            (
                property,
                format!("not a valid JSON Schema{what}{place}: {e}"),
            )
        })
}

/// The table columns of `schema`'s top-level properties, as `privacy` treats them (a
/// dropped property has none).
fn columns_of(schema: &Value, privacy: Option<&Plan>) -> Result<Vec<Column>, Problem> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let empty = Map::new();
    let properties = match schema.get("properties") {
        None => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => return Err((None, "`properties` must be an object".into())),
    };
    let mut columns = Vec::with_capacity(properties.len());
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (prop, sub) in properties {
        let at = |reason: String| (Some(prop.clone()), reason);
        check_identifier(prop).map_err(|e| at(format!("cannot be a column name: {e}")))?;
        if prop.eq_ignore_ascii_case(RECEIVED_AT) || prop.eq_ignore_ascii_case(EXTRA) {
            return Err(at(format!(
                "`{RECEIVED_AT}` and `{EXTRA}` are Sluice's system columns; rename the property"
            )));
        }
        if let Some(other) = seen.insert(prop.to_ascii_lowercase(), prop) {
            return Err(at(format!("differs from property `{other}` only in case; column names are case-insensitive in MySQL and SQLite")));
        }
        let sub = resolve_local_ref(schema, sub);
        let (ty, nullable_type) = column_type(sub);
        let ty = match sub.get("x-sluice-decimal") {
            None => ty,
            Some(spec) => decimal_type(spec, ty).map_err(at)?,
        };
        let treatment = privacy.and_then(|p| p.of_property(prop));
        if treatment.is_some() && matches!(ty, ColumnType::Decimal { .. }) {
            return Err(at("x-sluice-decimal and x-sluice-privacy cannot be combined: a treated value is text, not a number".into()));
        }
        let ty = match treatment {
            Some(Treatment::Drop) => continue,
            Some(Treatment::Hash) => ColumnType::Hash,
            Some(Treatment::Mask) => ColumnType::Text { max_length: None },
            None => ty,
        };
        columns.push(Column {
            name: prop.clone(),
            ty,
            nullable: nullable_type || !required.contains(&prop.as_str()),
            treatment,
        });
    }
    Ok(columns)
}

/// Whether `id` (a column of stream `name`'s `setting`, `id_field` or `upsert_key`)
/// can be part of a unique key.
fn check_key_column(
    name: &str,
    setting: &str,
    id: &str,
    columns: &[Column],
    privacy: Option<&Plan>,
) -> Result<(), Problem> {
    let at = |reason: String| Err((Some(id.to_owned()), reason));
    let treatment = privacy.and_then(|p| p.of_property(id));
    match columns.iter().find(|c| c.name == id) {
        None if treatment == Some(Treatment::Drop) => at(format!("[streams.{name}].{setting} names a property that x-sluice-privacy drops; hash it instead (a hashed id still tells events apart)")),
        Some(_) if treatment == Some(Treatment::Mask) => at(format!("[streams.{name}].{setting} names a masked property: masking makes different ids equal; hash it instead")),
        None => at(format!("[streams.{name}].{setting} names a property the schema does not declare")),
        Some(c) if c.ty == ColumnType::Json => at(format!("an {setting} property must be a string, uuid or integer property")),
        Some(_) => Ok(()),
    }
}

/// Follows a `{"$ref": "#/…"}` to a definition in the same document, so its type maps.
fn resolve_local_ref<'a>(root: &'a Value, sub: &'a Value) -> &'a Value {
    let mut current = sub;
    for _ in 0..8 {
        match current
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
        {
            Some(pointer) => match root.pointer(pointer) {
                Some(target) => current = target,
                None => return current,
            },
            None => return current,
        }
    }
    current
}

/// The column type of a property schema, and whether the schema itself allows `null`.
fn column_type(sub: &Value) -> (ColumnType, bool) {
    let mut types: Vec<&str> = match sub.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => infer_types_from_values(sub),
    };
    let nullable = types.contains(&"null");
    types.retain(|t| *t != "null");
    let ty = match types.as_slice() {
        ["string"] => match sub.get("format").and_then(Value::as_str) {
            Some("date-time") => ColumnType::Timestamp,
            Some("uuid") => ColumnType::Uuid,
            _ => ColumnType::Text {
                max_length: sub
                    .get("maxLength")
                    .and_then(Value::as_u64)
                    .or_else(|| longest_enum_value(sub)),
            },
        },
        ["integer"] => ColumnType::Integer,
        ["number"] => ColumnType::Number,
        ["integer", "number"] | ["number", "integer"] => ColumnType::Number,
        ["boolean"] => ColumnType::Boolean,
        _ => ColumnType::Json,
    };
    (ty, nullable)
}

/// The column type `"x-sluice-decimal": [precision, scale]` gives a property of type
/// `ty` (a number, or a string holding one).
fn decimal_type(spec: &Value, ty: ColumnType) -> Result<ColumnType, String> {
    let (precision, scale) = match spec.as_array().map(Vec::as_slice) {
        Some([p, s]) => (p.as_u64(), s.as_u64()),
        _ => (None, None),
    };
    let (Some(precision), Some(scale)) = (precision, scale) else {
        return Err(format!(
            "x-sluice-decimal is {spec}: give [precision, scale], e.g. [12, 2]"
        ));
    };
    if !(1..=65).contains(&precision) || scale > precision.min(30) {
        return Err(format!("x-sluice-decimal [{precision}, {scale}]: precision must be 1 to 65 (MySQL's limit) and scale 0 to the precision, at most 30"));
    }
    match ty {
        ColumnType::Number | ColumnType::Integer | ColumnType::Text { .. } => {
            Ok(ColumnType::Decimal {
                precision: precision as u8,
                scale: scale as u8,
            })
        }
        _ => Err("x-sluice-decimal applies to a number, integer or string property".into()),
    }
}

/// The length in characters of the longest string of an all-string `enum`.
fn longest_enum_value(sub: &Value) -> Option<u64> {
    let values = sub.get("enum")?.as_array()?;
    values
        .iter()
        .map(|v| v.as_str().map(|s| s.chars().count() as u64))
        .collect::<Option<Vec<u64>>>()?
        .into_iter()
        .max()
}

/// For a property with `enum` or `const` and no `type`: the JSON types of its values.
fn infer_types_from_values(sub: &Value) -> Vec<&'static str> {
    let values: Vec<&Value> = match (sub.get("enum"), sub.get("const")) {
        (Some(Value::Array(a)), _) => a.iter().collect(),
        (_, Some(c)) => vec![c],
        _ => return Vec::new(),
    };
    let mut types: Vec<&'static str> = values
        .iter()
        .map(|v| match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        })
        .collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// Converts one valid JSON value to the column's cell type.
fn convert(ty: ColumnType, v: Value) -> Result<Cell, String> {
    Ok(match (ty, v) {
        (ColumnType::Text { .. } | ColumnType::Hash, Value::String(s)) => Cell::Text(s.into()),
        (ColumnType::Uuid, Value::String(s)) => uuid_cell(&s),
        (ColumnType::Timestamp, Value::String(s)) => Cell::Timestamp(parse_timestamp(&s)?),
        (ColumnType::Integer, Value::Number(n)) => Cell::Int(match n.as_i64() {
            Some(i) => i,
            None => match n.as_f64() {
                Some(f)
                    if f.fract() == 0.0
                        && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
                {
                    f as i64
                }
                _ => return Err(format!("{n} does not fit a 64-bit signed integer column")),
            },
        }),
        (ColumnType::Number, Value::Number(n)) => Cell::Float(
            n.as_f64()
                .ok_or_else(|| format!("{n} is not a finite number"))?,
        ),
        (ColumnType::Boolean, Value::Bool(b)) => Cell::Bool(b),
        (ColumnType::Json, v) => Cell::Json(compact(&v).into()),
        (ty, v) => return Err(format!("{v} cannot be stored in a {ty:?} column")),
    })
}

/// A UUID column's cell: the UUID's bytes when written `8-4-4-4-12`, else the text in
/// lower case (for the database to accept or refuse).
pub(crate) fn uuid_cell(text: &str) -> Cell {
    match crate::event::Uuid::parse(text) {
        Some(uuid) => Cell::Uuid(uuid),
        None => Cell::Text(text.to_ascii_lowercase().into()),
    }
}

/// The cell of a decimal column from the value's JSON text as received (`literal`: a
/// number, or a string holding one).
fn decimal_cell(ty: ColumnType, literal: Option<&str>) -> Result<Cell, String> {
    let ColumnType::Decimal { precision, scale } = ty else {
        return Err("not a decimal column".into());
    };
    let literal = literal.ok_or("the value's text could not be read back")?;
    if literal.starts_with('"') {
        let text = serde_json::from_str::<String>(literal).map_err(|e| e.to_string())?;
        exact_decimal(&text, precision, scale).map(Cell::Text)
    } else {
        exact_decimal(literal, precision, scale).map(Cell::Text)
    }
}

/// `text` (a JSON number's syntax) as a plain decimal, digit for digit (the exponent
/// applied, leading zeros of the integer part and trailing zeros of the fraction
/// dropped), if it fits `numeric(precision, scale)` without rounding.
pub fn exact_decimal(text: &str, precision: u8, scale: u8) -> Result<CompactString, String> {
    let bad = || format!("{text:?} is not a decimal number");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(plain) = plain_decimal(negative, unsigned, precision, scale) {
        return Ok(plain);
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => {
            let exponent: i64 = unsigned[at + 1..].parse().map_err(|_| bad())?;
            (&unsigned[..at], exponent)
        }
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !digits_only(int)
        || !digits_only(frac)
        || (mantissa.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    if exponent.unsigned_abs() > 1000 {
        return Err(format!(
            "{text:?} is out of range of numeric({precision},{scale})"
        ));
    }
    // All digits, and where the point falls among them.
    let all = format!("{int}{frac}");
    let point = int.len() as i64 + exponent;
    let (int, frac) = if point <= 0 {
        (
            String::new(),
            format!("{}{all}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= all.len() {
        (
            format!("{all}{}", "0".repeat(point as usize - all.len())),
            String::new(),
        )
    } else {
        (
            all[..point as usize].to_owned(),
            all[point as usize..].to_owned(),
        )
    };
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let room = usize::from(precision - scale);
    if int.len() > room || frac.len() > usize::from(scale) {
        return Err(format!(
            "{text} does not fit numeric({precision},{scale}): at most {room} digits before the point and {scale} after"
        ));
    }
    Ok(decimal_text(negative, int, frac))
}

/// A decimal's text from its sign and its digits before and after the point (leading
/// and trailing zeros dropped already). Up to 21 digits it is held inline (a
/// `CompactString` holds 24 bytes): no allocation.
fn decimal_text(negative: bool, int: &str, frac: &str) -> CompactString {
    let mut out = CompactString::with_capacity(int.len() + frac.len() + 3);
    if negative && !(int.is_empty() && frac.is_empty()) {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// `literal` split at its first `.`, which is not kept: `split_once('.')` for the short
/// texts of numbers, a byte at a time (the `char` searcher's set-up costs more than the
/// search there).
pub(crate) fn split_at_point(literal: &str) -> Option<(&str, &str)> {
    let at = literal.bytes().position(|b| b == b'.')?;
    // ASCII: both sides of it are character boundaries.
    Some((&literal[..at], &literal[at + 1..]))
}

/// [`exact_decimal`] of the everyday literal (digits, a point, digits, no exponent)
/// that fits, in one allocation at most; `None` for anything else, which the general code
/// decides.
fn plain_decimal(
    negative: bool,
    unsigned: &str,
    precision: u8,
    scale: u8,
) -> Option<CompactString> {
    let (int, frac, point) = match split_at_point(unsigned) {
        Some((int, frac)) => (int, frac, true),
        None => (unsigned, "", false),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (frac.is_empty() && point) {
        return None;
    }
    // Zeros trimmed a byte at a time: `trim_*_matches` with a `char` decodes UTF-8.
    let leading = int.bytes().take_while(|b| *b == b'0').count();
    let trailing = frac.bytes().rev().take_while(|b| *b == b'0').count();
    let (trimmed, fraction) = (&int[leading..], &frac[..frac.len() - trailing]);
    if trimmed.len() > usize::from(precision - scale) || fraction.len() > usize::from(scale) {
        return None;
    }
    // The usual literal is already in its plain form (`12.5`, `0.75`, `3`): kept as
    // written, in one copy.
    if !negative && (leading == 0 || int == "0") && trailing == 0 {
        return Some(CompactString::from(unsigned));
    }
    Some(decimal_text(negative, trimmed, fraction))
}

/// `value`'s compact JSON text, written straight into a buffer (its `Display` goes
/// through `fmt::Write` a piece at a time, several times slower).
fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// Parses an RFC 3339 timestamp into UTC, truncated to microseconds (the precision every
/// supported database keeps).
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    if let Some(t) = compiled::plain_instant(s) {
        return Ok(t);
    }
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("{s:?} is not an RFC 3339 date-time ({e})"))?
        .with_timezone(&Utc);
    let micros = t.timestamp_micros();
    DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| format!("{s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimals_keep_their_digits_and_refuse_to_round() {
        let ok = |t: &str, p, s| exact_decimal(t, p, s).unwrap();
        assert_eq!(ok("12.50", 12, 2), "12.5");
        assert_eq!(ok("-0.00", 12, 2), "0");
        assert_eq!(ok("1234567890.12", 12, 2), "1234567890.12");
        assert_eq!(ok("1.5e2", 12, 2), "150");
        assert_eq!(ok("15E-3", 12, 3), "0.015");
        assert_eq!(ok("007", 3, 0), "7");
        // Literals already plain are kept as written; the others are made plain.
        for (literal, plain) in [
            ("0", "0"),
            ("0.5", "0.5"),
            ("10", "10"),
            ("100.25", "100.25"),
            ("0.0", "0"),
            ("00", "0"),
            ("00.5", "0.5"),
            ("0.50", "0.5"),
            ("-12.5", "-12.5"),
            ("-0", "0"),
            ("-0.5", "-0.5"),
        ] {
            assert_eq!(ok(literal, 12, 2), plain, "{literal}");
        }
        assert_eq!(
            ok("12345678901234567890123456789.123456789", 38, 9),
            "12345678901234567890123456789.123456789"
        );
        assert!(
            exact_decimal("12345678901.5", 12, 2).is_err(),
            "11 digits before the point"
        );
        assert!(exact_decimal("1.005", 12, 2).is_err(), "3 after");
        assert!(exact_decimal("1e999999", 12, 2).is_err());
        for bad in ["", "-", "1.", ".5", "1.2.3", "0x10", "1e", "NaN", "+1"] {
            assert!(exact_decimal(bad, 12, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("order_placed").is_ok());
        assert!(check_identifier("_x1").is_ok());
        assert!(check_identifier("1x").is_err());
        assert!(check_identifier("a-b").is_err());
        assert!(check_identifier("a\"; drop table x").is_err());
        assert!(check_identifier("").is_err());
        assert!(check_identifier(&"a".repeat(64)).is_err());
    }

    #[test]
    fn property_schemas_map_to_the_documented_column_types() {
        let cases = [
            (
                json!({"type": "string"}),
                ColumnType::Text { max_length: None },
                false,
            ),
            (
                json!({"type": "string", "maxLength": 64}),
                ColumnType::Text {
                    max_length: Some(64),
                },
                false,
            ),
            (
                json!({"type": "string", "format": "date-time"}),
                ColumnType::Timestamp,
                false,
            ),
            (
                json!({"type": "string", "format": "uuid"}),
                ColumnType::Uuid,
                false,
            ),
            (json!({"type": "integer"}), ColumnType::Integer, false),
            (json!({"type": "number"}), ColumnType::Number, false),
            (json!({"type": "boolean"}), ColumnType::Boolean, false),
            (json!({"type": "object"}), ColumnType::Json, false),
            (json!({"type": "array"}), ColumnType::Json, false),
            (json!({}), ColumnType::Json, false),
            (
                json!({"type": ["string", "integer"]}),
                ColumnType::Json,
                false,
            ),
            (
                json!({"type": ["string", "null"]}),
                ColumnType::Text { max_length: None },
                true,
            ),
            (
                json!({"enum": ["a", "bcd"]}),
                ColumnType::Text {
                    max_length: Some(3),
                },
                false,
            ),
            (
                json!({"enum": ["a", null]}),
                ColumnType::Text { max_length: None },
                true,
            ),
            (
                json!({"type": "string", "enum": ["né"]}),
                ColumnType::Text {
                    max_length: Some(2),
                },
                false,
            ),
        ];
        for (schema, ty, nullable) in cases {
            assert_eq!(column_type(&schema), (ty, nullable), "{schema}");
        }
    }

    #[test]
    fn timestamps_are_normalized_to_utc_microseconds() {
        let t = parse_timestamp("2024-05-01T14:00:00.1234567+02:00").unwrap();
        assert_eq!(
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "2024-05-01T12:00:00.123456Z"
        );
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_with_a_reason() {
        let e = convert(ColumnType::Integer, json!(18446744073709551615u64)).unwrap_err();
        assert!(e.contains("64-bit"), "{e}");
        assert_eq!(
            convert(ColumnType::Integer, json!(3.0)).unwrap(),
            Cell::Int(3)
        );
        assert_eq!(
            convert(ColumnType::Integer, json!(i64::MIN)).unwrap(),
            Cell::Int(i64::MIN)
        );
    }
}
