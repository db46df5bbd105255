//! The batcher: one task per queue that gathers envelopes into batches and writes them.
//!
//! A batch is written once it holds `batch_max_events` events or its first event has
//! waited `batch_max_wait`. Where the database has a single writer (SQLite), batches
//! that filled while the last write ran share the next transaction, each a load of its
//! own; should that transaction fail, they are written one by one. A transient failure
//! retries the same batch with exponential backoff and full jitter, forever, so the
//! queue fills and backpressure reaches the clients; nothing is dead-lettered for it. A
//! permanent failure splits the batch in halves until the rows the database refuses
//! are isolated (O(k log n) statements for k bad rows); those are dead-lettered with
//! the database's message, the rest are written.
//! Acknowledgements are sent only after the batch's rows and dead letters are committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::queue::{Envelope, Outcome, QueueReceiver, Rejected};
use super::retry::{retry, RetryPolicy};
use crate::event::{DeadLetter, Row, Stage};
use crate::internal_events::{BatchWritten, EventsDeadLettered, WriteRetried};
use crate::schema::Stream;
use crate::schema::StreamSettings;
use crate::sink::{BatchWriter, BoxFuture, ErrorClass, SinkError, Written};
use crate::stats::StreamStats;

pub use crate::sink::DEFAULT_WRITE_TIMEOUT;

/// What a batcher writes: stream rows or dead letters.
pub trait Item: Send + Sync + Sized + 'static {
    /// Where items of this kind go (a stream's table, or the dead-letter table).
    type Target: Send + Sync + 'static;
    /// A name for logs.
    fn target_name(target: &Self::Target) -> &str;
    /// Position of the item in its request.
    fn index(&self) -> usize;
    /// Writes `items` to `to` through `db`, in one transaction.
    fn write<'a>(db: &'a dyn BatchWriter, to: &'a Self::Target, items: &'a [Self]) -> Written<'a>;
    /// Writes each of `batches` to `to` through `db`, all in one transaction; how many
    /// items each stored. Only asked of items whose batcher commits several batches
    /// together: an error (as here, by default) makes it write them one by one.
    fn write_together<'a>(
        db: &'a dyn BatchWriter,
        to: &'a Self::Target,
        batches: &'a [&'a [Self]],
    ) -> BoxFuture<'a, Result<Vec<usize>, SinkError>> {
        let _ = (db, to, batches);
        Box::pin(async {
            Err(SinkError {
                class: ErrorClass::Permanent,
                source: "these items are written one batch per transaction".into(),
            })
        })
    }
    /// The dead letter that replaces an item the database refuses, if it can have one.
    fn dead_letter(&self, target: &Self::Target, error: &SinkError) -> Option<DeadLetter>;
    /// The status the target keeps (stream rows only): what the writer's internal
    /// events update besides the metrics.
    fn stats(_target: &Self::Target) -> Option<&StreamStats> {
        None
    }
    /// Whether a [`ErrorClass::Setup`] failure is retried like a transient one instead
    /// of refusing the items: for items that have no other place to go.
    const RETRY_SETUP: bool = false;
}

/// A stream's table, and the status the batcher keeps up to date.
pub struct StreamTarget {
    pub stream: Arc<Stream>,
    pub stats: Arc<StreamStats>,
    /// Most payload bytes a write-stage dead letter keeps.
    pub max_payload: usize,
}

impl Item for Row {
    type Target = StreamTarget;

    fn target_name(target: &Self::Target) -> &str {
        &target.stream.name
    }

    fn stats(target: &Self::Target) -> Option<&StreamStats> {
        Some(&target.stats)
    }

    fn index(&self) -> usize {
        self.index
    }

    fn write<'a>(db: &'a dyn BatchWriter, to: &'a Self::Target, items: &'a [Self]) -> Written<'a> {
        db.write_rows(&to.stream, items)
    }

    fn write_together<'a>(
        db: &'a dyn BatchWriter,
        to: &'a Self::Target,
        batches: &'a [&'a [Self]],
    ) -> BoxFuture<'a, Result<Vec<usize>, SinkError>> {
        db.write_loads(&to.stream, batches)
    }

    fn dead_letter(&self, target: &Self::Target, error: &SinkError) -> Option<DeadLetter> {
        let letter = DeadLetter::new(
            Some(&target.stream.name),
            Stage::Write,
            &error.to_string(),
            self.raw.as_bytes(),
            &self.source,
            self.received_at,
            self.index,
            target.max_payload,
        );
        Some(if self.treated {
            letter.treated()
        } else {
            letter
        })
    }
}

/// The dead-letter table, where [`DeadLetter`]s are written (it keeps no status).
pub struct DeadLetterTable;

impl Item for DeadLetter {
    type Target = DeadLetterTable;
    // A dead letter has nowhere else to go: a missing grant on the dead-letter table
    // is retried (and logged) until an operator fixes it, as an outage is.
    const RETRY_SETUP: bool = true;

    fn target_name(_target: &Self::Target) -> &str {
        "sluice_dead_letters"
    }

    fn index(&self) -> usize {
        self.index
    }

    fn write<'a>(db: &'a dyn BatchWriter, _to: &'a Self::Target, items: &'a [Self]) -> Written<'a> {
        db.write_dead_letters(items)
    }

    fn dead_letter(&self, _target: &Self::Target, error: &SinkError) -> Option<DeadLetter> {
        // A dead letter has no further place to go. Its text is made storable in every
        // database (see `DeadLetter::new`), so this is not expected: the producer is
        // told it was not stored (HTTP 500), and it is logged with a bounded payload.
        tracing::error!(
            stream = self.stream.as_deref().unwrap_or("-"),
            stage = self.stage.as_str(),
            reason = %self.error,
            payload_prefix = %crate::event::truncate_utf8(&self.payload, 1024),
            payload_bytes = self.payload.len(),
            %error,
            "The database refused a dead letter; it is not stored and the request is not acknowledged."
        );
        None
    }
}

/// Gathers and writes the batches of one queue.
pub struct Batcher<T: Item> {
    pub rx: QueueReceiver<T>,
    pub sink: Arc<dyn BatchWriter>,
    pub target: T::Target,
    pub settings: StreamSettings,
    /// Batches written at once (each in its own transaction, on its own connection), so
    /// that gathering and encoding the next batch overlaps the database's work on the
    /// current one.
    pub concurrency: usize,
    /// Batches one transaction may hold when they are ready together, because the last
    /// write ended after they filled ([`BatchWriter::batches_per_commit`]); 1 for a
    /// batch per transaction.
    pub per_commit: usize,
    /// Longest one write attempt may take (`database.write_timeout`); beyond it the
    /// attempt counts as a transient failure, so a database that stopped answering
    /// (packets dropped, no reset) cannot hang a stream forever.
    pub write_timeout: Duration,
}

/// The writing half of a batcher, shared by its in-flight writes.
struct Flusher<T: Item> {
    sink: Arc<dyn BatchWriter>,
    target: T::Target,
    settings: StreamSettings,
    write_timeout: Duration,
}

impl<T: Item> Batcher<T> {
    pub async fn run(self) {
        let Batcher {
            mut rx,
            sink,
            target,
            settings,
            concurrency,
            per_commit,
            write_timeout,
        } = self;
        let writer = Arc::new(Flusher::<T> {
            sink,
            target,
            settings: settings.clone(),
            write_timeout,
        });
        let mut writes = tokio::task::JoinSet::new();
        // Set once the queue is closed (shutdown): drain without lingering, then exit.
        let mut stopping = false;
        let closing = rx.closing();
        // An envelope that did not fit the previous batch: it starts the next one.
        let mut carried: Option<Envelope<T>> = None;
        loop {
            let first = match carried.take() {
                Some(env) => Some(env),
                None => tokio::select! {
                    env = rx.recv() => env,
                    _ = closing.cancelled(), if !stopping => {
                        stopping = true;
                        rx.stop_receiving();
                        continue;
                    }
                },
            };
            let Some(first) = first else { break };
            let max = settings.batch_max_events;
            let mut count = first.items.len();
            let mut batch = vec![first];
            let deadline = Instant::now() + settings.batch_max_wait;
            while count < max {
                let next = if stopping {
                    // Draining at shutdown: no linger, take what is already queued.
                    rx.try_recv()
                } else {
                    tokio::select! {
                        r = tokio::time::timeout_at(deadline, rx.recv()) => r.ok().flatten(),
                        _ = closing.cancelled() => {
                            stopping = true;
                            rx.stop_receiving();
                            continue;
                        }
                    }
                };
                let Some(env) = next else { break };
                if count + env.items.len() > max {
                    // Writing it now would make a full batch plus a small remainder
                    // (two statements and two commits); it goes first in the next one.
                    carried = Some(env);
                    break;
                }
                count += env.items.len();
                batch.push(env);
            }
            while writes.len() >= concurrency.max(1) {
                join(writes.join_next().await);
            }
            // What queued up meanwhile shares this batch's transaction, up to
            // `per_commit` batches, without waiting for more.
            let mut batches = vec![batch];
            while batches.len() < per_commit {
                let Some((next, full)) = queued_batch(&mut rx, &mut carried, max) else {
                    break;
                };
                batches.push(next);
                if !full {
                    break;
                }
            }
            let writer = writer.clone();
            writes.spawn(async move { writer.flush_together(batches).await });
        }
        while let Some(done) = writes.join_next().await {
            join(Some(done));
        }
        tracing::debug!(
            target_name = T::target_name(&writer.target),
            "Batcher drained its queue and stopped."
        );
    }
}

/// A batch of up to `max` items from what is already queued (after `carried`, the
/// envelope that did not fit the last one), without waiting, and whether it is full
/// (more may be queued); `None` if nothing is. An envelope that would not fit is left
/// in `carried`.
fn queued_batch<T>(
    rx: &mut QueueReceiver<T>,
    carried: &mut Option<Envelope<T>>,
    max: usize,
) -> Option<(Vec<Envelope<T>>, bool)> {
    let mut batch = Vec::new();
    let mut count = 0;
    while count < max {
        let Some(env) = carried.take().or_else(|| rx.try_recv()) else {
            break;
        };
        if count > 0 && count + env.items.len() > max {
            *carried = Some(env);
            break;
        }
        count += env.items.len();
        batch.push(env);
    }
    let full = count >= max || carried.is_some();
    (!batch.is_empty()).then_some((batch, full))
}

/// Writes `rows` to `stream`'s table the way the batcher writes a batch (transient
/// failures retried, permanent ones isolated by bisection, no dead letters written);
/// returns the positions of the rows the database refused. For benchmarks and tools.
pub async fn write_isolating(
    sink: Arc<dyn BatchWriter>,
    stream: Arc<Stream>,
    rows: &[Row],
) -> Vec<usize> {
    let writer = Flusher::<Row> {
        sink,
        target: StreamTarget {
            stream,
            stats: Arc::default(),
            max_payload: crate::event::DEFAULT_MAX_PAYLOAD_BYTES,
        },
        settings: StreamSettings::default(),
        write_timeout: DEFAULT_WRITE_TIMEOUT,
    };
    let mut refused = Vec::new();
    writer.write_isolating(rows, 0, &mut refused).await;
    refused.into_iter().map(|(i, _)| i).collect()
}

/// Surfaces a panic in a write task (a bug) instead of losing it silently.
fn join(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        tracing::error!(error = %e, "A batch write task failed; its events were not acknowledged.");
    }
}

/// A batch's envelopes with their items taken out, in order, and for each item the
/// envelope it came from.
struct Flat<T> {
    envelopes: Vec<Envelope<T>>,
    items: Vec<T>,
    owners: Vec<usize>,
}

impl<T> Flat<T> {
    fn of(mut envelopes: Vec<Envelope<T>>) -> Flat<T> {
        let total: usize = envelopes.iter().map(|e| e.items.len()).sum();
        let mut items = Vec::with_capacity(total);
        let mut owners = Vec::with_capacity(total);
        for (owner, env) in envelopes.iter_mut().enumerate() {
            owners.extend(std::iter::repeat_n(owner, env.items.len()));
            items.append(&mut env.items);
        }
        Flat {
            envelopes,
            items,
            owners,
        }
    }
}

impl<T: Item> Flusher<T> {
    /// Writes `batches` in one transaction if there are several and each is one
    /// statement's worth, then acknowledges their envelopes; should that fail for any
    /// reason (nothing of it is then stored), writes them one by one as
    /// [`Self::flush`] does, retrying and isolating refused items.
    async fn flush_together(&self, batches: Vec<Vec<Envelope<T>>>) {
        let max = self.settings.batch_max_events.max(1);
        let flats: Vec<Flat<T>> = batches.into_iter().map(Flat::of).collect();
        if flats.len() > 1 && flats.iter().all(|f| f.items.len() <= max) {
            let slices: Vec<&[T]> = flats.iter().map(|f| f.items.as_slice()).collect();
            let started = std::time::Instant::now();
            let written = tokio::time::timeout(
                self.write_timeout,
                T::write_together(&*self.sink, &self.target, &slices),
            )
            .await;
            match written {
                Ok(Ok(stored)) => {
                    // Each batch is a load of its own; all waited for the same commit.
                    let seconds = started.elapsed().as_secs_f64();
                    for (n, flat) in flats.into_iter().enumerate() {
                        let stored = stored.get(n).copied().unwrap_or(flat.items.len());
                        self.written(stored, flat.items.len(), seconds);
                        for env in flat.envelopes {
                            env.settle.resolve(Outcome::default());
                            drop(env.permit);
                        }
                    }
                    return;
                }
                Ok(Err(e)) => tracing::debug!(
                    target_name = T::target_name(&self.target),
                    error = %e,
                    "A write of several batches failed; writing them one by one."
                ),
                Err(_) => tracing::debug!(
                    target_name = T::target_name(&self.target),
                    "A write of several batches timed out; writing them one by one."
                ),
            }
        }
        for flat in flats {
            self.flush(flat).await;
        }
    }

    /// Reports a write of `accepted` items that stored `stored` (the others were ids
    /// already stored), in `seconds`, where the target keeps a status.
    fn written(&self, stored: usize, accepted: usize, seconds: f64) {
        if let Some(stats) = T::stats(&self.target) {
            BatchWritten {
                stream: T::target_name(&self.target),
                rows: stored,
                duplicates: accepted.saturating_sub(stored),
                seconds,
            }
            .emit(stats);
        }
    }

    /// Writes every event of `batch`, then acknowledges each envelope.
    async fn flush(&self, batch: Flat<T>) {
        let Flat {
            envelopes: batch,
            items,
            owners,
        } = batch;
        let mut refused: Vec<(usize, SinkError)> = Vec::new();
        let max = self.settings.batch_max_events.max(1);
        for (n, chunk) in items.chunks(max).enumerate() {
            let before = refused.len();
            let started = std::time::Instant::now();
            let stored = self.write_isolating(chunk, n * max, &mut refused).await;
            let accepted = chunk.len() - (refused.len() - before);
            self.written(stored, accepted, started.elapsed().as_secs_f64());
        }
        // Each refused item becomes a dead letter, if it can (a refused dead letter
        // cannot). Those that cannot, or whose dead letters the database refuses too,
        // are lost: their producers are told so instead of being acknowledged.
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut has_letter = vec![false; refused.len()];
        for (n, (i, e)) in refused.iter().enumerate() {
            if let Some(letter) = items[*i].dead_letter(&self.target, e) {
                letters.push(letter);
                has_letter[n] = true;
            }
        }
        if !letters.is_empty() {
            // Dead letters are written before the acknowledgement: a 200 means each event
            // is in its table or in the dead-letter table.
            let mut stored: Vec<(usize, SinkError)> = Vec::new();
            let letter_writer = Flusher::<DeadLetter> {
                sink: self.sink.clone(),
                target: DeadLetterTable,
                settings: self.settings.clone(),
                write_timeout: self.write_timeout,
            };
            letter_writer
                .write_isolating(&letters, 0, &mut stored)
                .await;
            let failed: std::collections::HashSet<usize> = stored.iter().map(|(i, _)| *i).collect();
            for i in &failed {
                // Logs it with the database's reason.
                let _ = letters[*i].dead_letter(&DeadLetterTable, &stored[0].1);
            }
            let first_error = refused[0].1.to_string();
            let stats = T::stats(&self.target);
            if let Some(stats) = stats {
                stats.error(&first_error, chrono::Utc::now());
            }
            EventsDeadLettered {
                stream: Some(T::target_name(&self.target)),
                stage: Stage::Write,
                count: letters.len() - failed.len(),
                example: &first_error,
            }
            .emit(stats, None);
            for (k, flag) in has_letter.iter_mut().filter(|f| **f).enumerate() {
                if failed.contains(&k) {
                    *flag = false;
                }
            }
        }
        let mut outcomes: Vec<Outcome> = batch.iter().map(|_| Outcome::default()).collect();
        for ((i, error), stored) in refused.into_iter().zip(has_letter) {
            let r = Rejected {
                index: items[i].index(),
                error: error.to_string(),
            };
            if stored {
                outcomes[owners[i]].rejected.push(r);
            } else {
                outcomes[owners[i]].lost.push(r);
            }
        }
        for (env, outcome) in batch.into_iter().zip(outcomes) {
            env.settle.resolve(outcome);
            drop(env.permit);
        }
    }

    /// Writes `items`, bisecting on permanent errors; pushes each refused item's position
    /// (offset by `base`) and error to `refused`. Returns how many were stored (the
    /// others were refused, or skipped as ids already stored).
    async fn write_isolating(
        &self,
        items: &[T],
        base: usize,
        refused: &mut Vec<(usize, SinkError)>,
    ) -> usize {
        let mut stored = 0;
        let mut ranges = vec![(0, items.len())];
        while let Some((lo, hi)) = ranges.pop() {
            match self
                .write_retrying(hi - lo, || {
                    T::write(&*self.sink, &self.target, &items[lo..hi])
                })
                .await
            {
                Ok(n) => {
                    stored += n;
                    if let Some(stats) = T::stats(&self.target) {
                        stats.setup_failing(false);
                    }
                }
                Err(e) if e.class == ErrorClass::Setup => {
                    // No row of the batch can succeed, and no retry helps: each is
                    // refused with the database's message, without bisecting.
                    if let Some(stats) = T::stats(&self.target) {
                        stats.setup_failing(true);
                    }
                    let message = e.to_string();
                    refused.extend((lo..hi).map(|i| {
                        (
                            base + i,
                            SinkError {
                                class: ErrorClass::Setup,
                                source: message.clone().into(),
                            },
                        )
                    }));
                }
                Err(e) if hi - lo == 1 => refused.push((base + lo, e)),
                Err(_) => {
                    let mid = lo + (hi - lo) / 2;
                    // Pushed in reverse so the first half is written first, keeping order.
                    ranges.push((mid, hi));
                    ranges.push((lo, mid));
                }
            }
        }
        stored
    }

    /// Runs `write` (of `rows` rows), retrying transient failures with backoff; returns the
    /// first permanent failure.
    async fn write_retrying<'w>(
        &self,
        rows: usize,
        write: impl Fn() -> Written<'w>,
    ) -> Result<usize, SinkError> {
        let policy = RetryPolicy {
            max_retries: None,
            attempt_timeout: self.write_timeout,
        };
        // Items with nowhere else to go retry what only an operator can fix.
        let write = || {
            let attempt = write();
            Box::pin(async move {
                attempt.await.map_err(|mut e| {
                    if T::RETRY_SETUP && e.class == ErrorClass::Setup {
                        e.class = ErrorClass::Transient;
                    }
                    e
                })
            }) as Written<'w>
        };
        let stats = T::stats(&self.target);
        let (result, retries) = retry(policy, write, |attempt, e, delay| {
            WriteRetried {
                target: T::target_name(&self.target),
                rows,
                attempt,
                delay,
                error: &e.to_string(),
            }
            .emit(stats);
        })
        .await;
        if let (true, Some(stats)) = (retries > 0, stats) {
            stats.retrying(false);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::RowBatch;

    /// A batch writer without a database: fails the first `transient` writes as a lost
    /// connection would, refuses any batch holding a row whose index is in `poison` as a
    /// constraint would, and records what it committed.
    struct FakeDatabase {
        transient: std::sync::atomic::AtomicUsize,
        poison: Vec<usize>,
        calls: std::sync::atomic::AtomicUsize,
        committed: std::sync::Mutex<Vec<usize>>,
    }

    impl BatchWriter for FakeDatabase {
        fn dialect(&self) -> crate::sink::Dialect {
            crate::sink::Dialect::Sqlite
        }

        fn write_rows<'a>(&'a self, _stream: &'a Stream, rows: &'a [Row]) -> Written<'a> {
            use std::sync::atomic::Ordering::SeqCst;
            Box::pin(async move {
                self.calls.fetch_add(1, SeqCst);
                let fail = |class, why: &str| SinkError {
                    class,
                    source: why.to_owned().into(),
                };
                if self
                    .transient
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return Err(fail(crate::sink::ErrorClass::Transient, "connection reset"));
                }
                if rows.iter().any(|r| self.poison.contains(&r.index)) {
                    return Err(fail(crate::sink::ErrorClass::Permanent, "check constraint"));
                }
                let mut committed = self.committed.lock().unwrap_or_else(|p| p.into_inner());
                committed.extend(rows.iter().map(|r| r.index));
                Ok(rows.len())
            })
        }

        fn write_batch<'a>(&'a self, batch: RowBatch<'a>) -> Written<'a> {
            self.write_rows(batch.stream, batch.rows)
        }

        fn write_dead_letters<'a>(&'a self, _letters: &'a [DeadLetter]) -> Written<'a> {
            Box::pin(async move { Ok(_letters.len()) })
        }
    }

    // The retries' backoff runs on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_bad_rows_isolated_by_bisection() {
        let config = crate::config::Config {
            schemas_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/schemas"),
            ..Default::default()
        };
        let registry =
            crate::schema::Registry::load(config.streams_config()).expect("the test schemas");
        let stream = registry.get("reading").expect("a reading stream").clone();
        let rows: Vec<Row> = (0..1000)
            .map(|i| {
                let event = serde_json::json!({"seq": i, "sensor": "s", "value": 1});
                stream
                    .to_row(
                        event,
                        "{}".into(),
                        false,
                        "test".into(),
                        i,
                        chrono::Utc::now(),
                    )
                    .expect("a valid event")
            })
            .collect();
        let writer = Arc::new(FakeDatabase {
            transient: 2.into(),
            poison: vec![3, 700],
            calls: 0.into(),
            committed: Default::default(),
        });
        let refused = write_isolating(writer.clone(), stream, &rows).await;
        assert_eq!(refused, vec![3, 700]);
        let mut committed = writer.committed.lock().unwrap().clone();
        committed.sort_unstable();
        let expected: Vec<usize> = (0..1000).filter(|i| ![3, 700].contains(i)).collect();
        assert_eq!(committed, expected, "every other row once");
        let calls = writer.calls.load(std::sync::atomic::Ordering::SeqCst);
        // 2 transient failures, the whole batch, then two halves per level for each of
        // the 2 bad rows: far from one statement per row.
        assert!(calls <= 2 + 1 + 2 * 2 * 10, "{calls} writes");
    }
}
