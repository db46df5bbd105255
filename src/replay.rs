//! `sluice replay`: after a schema or data fix, re-validates dead letters against the
//! current schemas and writes the ones that now pass.
//!
//! In: `sluice_dead_letters` rows that name a stream (optionally one stream, since a
//! time). Out: rows in their tables, each written in the same transaction that deletes
//! its dead letter, so running replay twice never duplicates anything. Dead letters that
//! still fail stay, with `attempts` counted up and the new reason.
//!
//! Before reading, the tables get the same additive evolution as at start-up (a new
//! optional property is a new column). A line that came in over TCP still carries its
//! routing field: it is removed, as the live path does, unless the schema declares it.
//! `route`-stage dead letters (they named no known stream) are replayed into a stream
//! the operator names (`--into`). Two replays at once are safe: a batch deletes its
//! dead letters first and writes only if every one of them was still there.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::event::{Row, Stage, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::ingest::body::parse_object;
use crate::ingest::filing::{Event, Filing, Read, Route};
use crate::pipeline::retry::{retry, RetryPolicy};
use crate::schema::{parse_timestamp, Registry, Stream, StreamsConfig};
use crate::sink::{self, DeadLetterPage, SinkError, Storage, StoredDeadLetter};

/// Dead letters read per round trip.
const PAGE: i64 = 500;
/// Transient failures of one write retried before replay gives up.
const MAX_RETRIES: u32 = 8;

/// A stream and the rows (with the ids of their dead letters) that now pass its schema.
type Replayable = (Arc<Stream>, Vec<(i64, Row)>);

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub stream: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Report what would be replayed without writing anything.
    pub dry_run: bool,
    /// Replay the `route`-stage dead letters (which named no known stream) into this
    /// stream, instead of the dead letters that name a stream.
    pub into: Option<String>,
    /// Only dead letters of this stage.
    pub stage: Option<String>,
}

/// Per-stream outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Written to the table (or, with `--dry-run`, would be).
    pub replayed: usize,
    /// Still refused (schema, parse or database), left in the dead-letter table.
    pub still_failing: usize,
    /// Taken by another replay running at the same time (so not written here).
    pub taken_by_another_run: usize,
}

/// What a replay reports as it goes: the CLI prints it, a job records it.
pub trait Progress: Send + Sync {
    /// How many dead letters the replay will examine (known before it starts).
    fn total(&self, n: usize);
    /// Dead letters examined so far, and the report so far.
    fn advance(&self, examined: usize, report: &BTreeMap<String, StreamReport>);
    /// Whether the replay should stop (between pages; what it wrote stays).
    fn cancelled(&self) -> bool {
        false
    }
    /// A dead letter that still fails, and why (the schema's or the database's words).
    fn still_failing(&self, _id: i64, _stream: &str, _reason: &str) {}
}

/// Progress lines on stderr, for the CLI.
pub struct Stderr {
    pub dry_run: bool,
}

impl Progress for Stderr {
    fn total(&self, n: usize) {
        eprintln!("replay: {n} dead letters to examine");
    }

    fn still_failing(&self, id: i64, stream: &str, reason: &str) {
        eprintln!("replay: dead letter {id} ({stream}) still fails: {reason}");
    }

    fn advance(&self, examined: usize, report: &BTreeMap<String, StreamReport>) {
        let replayed: usize = report.values().map(|r| r.replayed).sum();
        eprintln!(
            "replay: {examined} dead letters examined, {replayed} replayed{}",
            if self.dry_run { " (dry run)" } else { "" }
        );
    }
}

/// A progress bar on a terminal (indicatif), for the CLI.
pub struct Bar {
    bar: indicatif::ProgressBar,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "replay [{bar:40}] {pos}/{len} dead letters examined ({percent}%) {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar { bar }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn total(&self, n: usize) {
        self.bar.set_length(n as u64);
    }

    fn advance(&self, examined: usize, report: &BTreeMap<String, StreamReport>) {
        let replayed: usize = report.values().map(|r| r.replayed).sum();
        self.bar.set_position(examined as u64);
        self.bar.set_message(format!("{replayed} replayed"));
    }

    fn still_failing(&self, id: i64, stream: &str, reason: &str) {
        self.bar
            .println(format!("dead letter {id} ({stream}) still fails: {reason}"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish();
    }
}

/// Checks the streams named by `options` exist.
pub fn check_options(registry: &Registry, options: &ReplayOptions) -> anyhow::Result<()> {
    for (flag, s) in [("stream", &options.stream), ("into", &options.into)] {
        if let Some(s) = s {
            anyhow::ensure!(
                registry.get(s).is_some(),
                "{flag} {s}: no such stream; the streams are {:?}",
                registry.names()
            );
        }
    }
    Ok(())
}

/// What a replay takes from the configuration.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// `tcp.stream_field`: removed from a line that came in over TCP, as the live path
    /// does, unless the schema declares it.
    pub stream_field: String,
    /// `database.write_timeout`: the longest one database operation may take.
    pub write_timeout: std::time::Duration,
}

/// Replays dead letters (the CLI: its own start-up, progress on stderr).
pub async fn replay(
    streams: StreamsConfig<'_>,
    database: &crate::sink::DatabaseConfig,
    settings: &ReplaySettings,
    options: &ReplayOptions,
) -> anyhow::Result<BTreeMap<String, StreamReport>> {
    let registry = Registry::load(streams).context("cannot load the stream schemas")?;
    check_options(&registry, options)?;
    let (registry, storage) = crate::sink::open(database, registry).await?;
    // A bar on a terminal, plain lines otherwise (logs, CI).
    use std::io::IsTerminal;
    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(Stderr {
            dry_run: options.dry_run,
        })
    };
    let report = replay_with(&registry, &storage, settings, options, progress.as_ref()).await;
    drop(progress);
    storage.close().await;
    report
}

/// Replays dead letters through `storage`, reporting to `progress`: the one replay
/// the CLI and the server's jobs both run. Each database operation is bounded by
/// `database.write_timeout`, as the batchers' are; a line that came in over TCP loses
/// its routing field `tcp.stream_field`.
pub async fn replay_with(
    registry: &Registry,
    storage: &Storage,
    settings: &ReplaySettings,
    options: &ReplayOptions,
    progress: &dyn Progress,
) -> anyhow::Result<BTreeMap<String, StreamReport>> {
    let store = &storage.store;
    let stream_field = settings.stream_field.as_str();
    // The source of every row a replay writes.
    let source = crate::source::replay();
    let policy = RetryPolicy {
        max_retries: Some(MAX_RETRIES),
        attempt_timeout: settings.write_timeout,
    };
    let mut report: BTreeMap<String, StreamReport> = BTreeMap::new();
    let mut page = DeadLetterPage {
        after_id: 0,
        stream: options.stream.clone(),
        since: options.since,
        route: options.into.is_some(),
        stage: options.stage.clone(),
        limit: PAGE,
    };
    let total = store
        .count_dead_letters(&page)
        .await
        .context("cannot count sluice_dead_letters")?;
    progress.total(usize::try_from(total).unwrap_or(0));
    let mut examined = 0usize;
    loop {
        if progress.cancelled() {
            break;
        }
        let letters = store
            .fetch_dead_letters(&page)
            .await
            .context("cannot read sluice_dead_letters")?;
        let Some(last) = letters.last() else { break };
        page.after_id = last.id;
        examined += letters.len();
        let (failing, by_stream) = file_page(
            registry,
            &letters,
            options,
            store.dialect(),
            stream_field,
            &source,
            &mut report,
        );
        for f in failing {
            report.entry(f.stream.clone()).or_default().still_failing += 1;
            progress.still_failing(f.id, &f.stream, &f.reason);
            if f.record && !options.dry_run {
                retrying(policy, || {
                    Box::pin(store.record_replay_failure(f.id, &f.reason, f.treated.as_deref()))
                })
                .await?;
            }
        }
        for (name, (stream, rows)) in by_stream {
            let entry = report.entry(name).or_default();
            if options.dry_run {
                entry.replayed += rows.len();
                continue;
            }
            let (written, failed, taken) = write(storage, policy, &stream, rows, progress).await?;
            entry.replayed += written;
            entry.still_failing += failed;
            entry.taken_by_another_run += taken;
        }
        progress.advance(examined, &report);
    }
    Ok(report)
}

/// Files one page of dead letters again: those that still fail, and per stream the
/// rows (with the ids of their dead letters) that now pass.
fn file_page(
    registry: &Registry,
    letters: &[StoredDeadLetter],
    options: &ReplayOptions,
    dialect: crate::sink::Dialect,
    stream_field: &str,
    source: &Arc<str>,
    report: &mut BTreeMap<String, StreamReport>,
) -> (Vec<Failing>, BTreeMap<String, Replayable>) {
    let mut filing = Filing::new(DEFAULT_MAX_PAYLOAD_BYTES, Some(dialect));
    let mut failing = Vec::new();
    for letter in letters {
        let Some(target) = options.into.as_ref().or(letter.stream.as_ref()) else {
            continue;
        };
        report.entry(target.clone()).or_default();
        match registry.get(target) {
            // A payload withheld (it did not parse on a treating stream) has nothing
            // to replay; its error keeps the length and digest it names.
            Some(_) if letter.treated && letter.payload.is_empty() => failing.push(Failing {
                id: letter.id,
                stream: target.clone(),
                reason: "replay: the payload was withheld (x-sluice-privacy); there is nothing to replay".into(),
                record: false,
                treated: None,
            }),
            Some(stream) => file_again(&mut filing, stream, stream_field, source, letter),
            None => failing.push(Failing {
                id: letter.id,
                stream: target.clone(),
                reason: format!("replay: stream `{target}` no longer has a schema"),
                record: true,
                treated: None,
            }),
        }
    }
    let mut by_stream: BTreeMap<String, Replayable> = BTreeMap::new();
    for (stream, events) in filing.into_groups() {
        // Filed to one stream each: every group has its stream.
        let Some(stream) = stream else { continue };
        // Each error has its dead letter, in the same order: its payload is the event
        // as the stream now treats it.
        for (e, letter) in events.errors.into_iter().zip(events.letters) {
            failing.push(Failing {
                id: e.index as i64,
                stream: stream.name.clone(),
                reason: format!("replay: {}", e.error),
                record: true,
                treated: letter.treated.then_some(letter.payload),
            });
        }
        if !events.rows.is_empty() {
            let rows = events
                .rows
                .into_iter()
                .map(|r| (r.index as i64, r))
                .collect();
            by_stream.insert(stream.name.clone(), (stream, rows));
        }
    }
    (failing, by_stream)
}

/// A dead letter that still fails.
struct Failing {
    id: i64,
    stream: String,
    reason: String,
    /// Whether its row gets the new reason (and an attempt more).
    record: bool,
    /// Its payload as its stream now treats it, when it treats personal fields.
    treated: Option<String>,
}

/// Files a dead letter's payload again, to `stream` with its current schema: the row it
/// now makes, or why it still fails, under the dead letter's id. A line that came over
/// TCP loses its routing field `stream_field` first, unless the schema declares it, as
/// on the live path; a form webhook's payload is the body as received, read as its
/// fields again. Its row comes from `source` (`replay`).
fn file_again(
    filing: &mut Filing,
    stream: &Arc<Stream>,
    stream_field: &str,
    source: &Arc<str>,
    letter: &StoredDeadLetter,
) {
    let came_from = letter.source.as_deref().unwrap_or_default();
    let payload = letter.payload.as_bytes();
    let read = match parse_object(payload) {
        // Treated already: checked with the treated properties relaxed, not treated again.
        Ok(_) if letter.treated => Read::Treated,
        Ok(value) => Read::Parsed(value),
        Err(e) => match (crate::source::Kind::of(came_from) == Some(crate::source::Kind::Webhook))
            .then(|| crate::webhook::form::from_body(payload))
            .flatten()
        {
            Some(value) => Read::Parsed(value),
            None => Read::Refused(Stage::Parse, e),
        },
    };
    let received_at = parse_timestamp(&letter.received_at).unwrap_or_else(|_| Utc::now());
    let event = Event {
        index: letter.id as usize,
        raw: payload,
        read,
    };
    let route = Route::again(stream, stream_field, came_from);
    filing.file(&route, source, received_at, [event]);
}

/// Writes rows and deletes their dead letters together; on a permanent failure (or when
/// another replay took some of them), one by one, so that one bad row does not hold back
/// the others. Returns (written, failed, taken by another run).
async fn write(
    storage: &Storage,
    policy: RetryPolicy,
    stream: &Stream,
    rows: Vec<(i64, Row)>,
    progress: &dyn Progress,
) -> anyhow::Result<(usize, usize, usize)> {
    let (ids, rows): (Vec<i64>, Vec<Row>) = rows.into_iter().unzip();
    let writer = &storage.writer;
    let batch = sink::RowBatch {
        stream,
        rows: &rows,
        replayed: &ids,
        pointer: None,
    };
    match retrying(policy, || writer.write_batch(batch)).await {
        Ok(_) => return Ok((rows.len(), 0, 0)),
        Err(e)
            if e.downcast_ref::<SinkError>()
                .is_some_and(|e| !e.is_transient()) => {}
        Err(e) => return Err(e),
    }
    let (mut written, mut failed, mut taken) = (0, 0, 0);
    for (id, row) in ids.iter().zip(&rows) {
        match retrying(policy, || {
            writer.write_batch(sink::RowBatch {
                stream,
                rows: std::slice::from_ref(row),
                replayed: std::slice::from_ref(id),
                pointer: None,
            })
        })
        .await
        {
            Ok(_) => written += 1,
            Err(e) => match e.downcast_ref::<SinkError>() {
                Some(db) if db.is_replay_conflict() => taken += 1,
                Some(db) if !db.is_transient() => {
                    failed += 1;
                    let reason = format!("replay: {db}");
                    progress.still_failing(*id, &stream.name, &reason);
                    let treated = row.treated.then_some(&*row.raw);
                    retrying(policy, || {
                        Box::pin(storage.store.record_replay_failure(*id, &reason, treated))
                    })
                    .await?;
                }
                _ => return Err(e),
            },
        }
    }
    Ok((written, failed, taken))
}

/// Runs `op`, retrying transient failures a few times with backoff (`policy`).
async fn retrying<'a, T>(
    policy: RetryPolicy,
    op: impl Fn() -> sink::BoxFuture<'a, Result<T, SinkError>>,
) -> anyhow::Result<T> {
    retry(policy, op, |_, _, _| {}).await.0.map_err(Into::into)
}
