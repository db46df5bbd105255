//! Per-stream status for `GET /v1/streams`: counters since start, last successful
//! write, last error, and the write rate over the last minute. Owned by the running
//! app (not process-wide), updated per request or per batch.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::event::Stage;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds in the rate window.
const WINDOW: usize = 60;

/// Counters and recent history of one stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    received: AtomicU64,
    written: AtomicU64,
    /// Events not written because their `id_field` value was already stored.
    duplicates: AtomicU64,
    /// Dead letters by stage, in [`Stage`] order (parse, route, validate, write).
    dead_lettered: [AtomicU64; 4],
    rejected: AtomicU64,
    /// Unix microseconds of the last committed batch; 0 before the first.
    last_write_micros: AtomicI64,
    last_error: Mutex<Option<(DateTime<Utc>, String)>>,
    /// Whether the batch being written failed for a transient reason and is retried.
    retrying: AtomicBool,
    /// Whether the last write failed for a reason only an operator can fix (a missing
    /// unique key or column, a privilege), so its rows are being dead-lettered.
    setup_failing: AtomicBool,
    /// Rows written per second over the last minute.
    rate: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    buckets: [u64; WINDOW],
    /// The second (Unix time) that the newest bucket counts.
    newest: i64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: [0; WINDOW],
            newest: 0,
        }
    }
}

impl Window {
    /// Moves the window to `now`, zeroing the seconds that passed without events.
    fn advance(&mut self, now: i64) {
        let elapsed = now - self.newest;
        if elapsed <= 0 {
            return;
        }
        for i in 1..=elapsed.min(WINDOW as i64) {
            self.buckets[((self.newest + i) as usize) % WINDOW] = 0;
        }
        self.newest = now;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain counters).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamStats {
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn dead_lettered(&self, stage: Stage, n: usize) {
        self.dead_lettered[stage as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn duplicates(&self, n: usize) {
        self.duplicates.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn rejected(&self, n: usize) {
        self.rejected.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn written(&self, n: usize, at: DateTime<Utc>) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.last_write_micros
            .store(at.timestamp_micros(), Ordering::Relaxed);
        let mut w = lock(&self.rate);
        w.advance(at.timestamp());
        w.buckets[(at.timestamp() as usize) % WINDOW] += n as u64;
    }

    /// Notes whether the current batch is being retried after a transient failure.
    pub fn retrying(&self, yes: bool) {
        self.retrying.store(yes, Ordering::Relaxed);
    }

    /// Whether the current batch is being retried.
    pub fn is_retrying(&self) -> bool {
        self.retrying.load(Ordering::Relaxed)
    }

    /// Notes whether the last write failed for a reason only an operator can fix.
    pub fn setup_failing(&self, yes: bool) {
        self.setup_failing.store(yes, Ordering::Relaxed);
    }

    /// Whether the last write failed for a reason only an operator can fix.
    pub fn is_setup_failing(&self) -> bool {
        self.setup_failing.load(Ordering::Relaxed)
    }

    /// The stream's write state: `ok`, `retrying` (a transient failure: the database
    /// is away) or `refusing` (the table refuses every row: see `last_error`).
    pub fn write_state(&self) -> WriteState {
        if self.is_setup_failing() {
            WriteState::Refusing
        } else if self.is_retrying() {
            WriteState::Retrying
        } else {
            WriteState::Ok
        }
    }

    /// The last write error's message, if any.
    pub fn last_error_message(&self) -> Option<String> {
        lock(&self.last_error).as_ref().map(|(_, m)| m.clone())
    }

    pub fn error(&self, message: &str, at: DateTime<Utc>) {
        *lock(&self.last_error) = Some((at, message.to_owned()));
    }

    /// The counters and history at `now`.
    pub fn snapshot(&self, now: DateTime<Utc>) -> Snapshot {
        let last_write = match self.last_write_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => DateTime::<Utc>::from_timestamp_micros(micros).map(|t| t.to_rfc3339()),
        };
        let per_second = {
            let mut w = lock(&self.rate);
            w.advance(now.timestamp());
            w.buckets.iter().sum::<u64>() as f64 / WINDOW as f64
        };
        let last_error = lock(&self.last_error)
            .as_ref()
            .map(|(at, message)| LastError {
                at: at.to_rfc3339(),
                message: message.clone(),
            });
        let [parse, route, validate, write] =
            std::array::from_fn(|i| self.dead_lettered[i].load(Ordering::Relaxed));
        Snapshot {
            received: self.received.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dead_lettered: parse + route + validate + write,
            dead_lettered_by_stage: ByStage {
                parse,
                route,
                validate,
                write,
            },
            rejected: self.rejected.load(Ordering::Relaxed),
            last_write_at: last_write,
            last_error,
            retrying: self.is_retrying(),
            write_state: self.write_state(),
            written_per_second_1m: per_second,
        }
    }
}

/// A stream's counters since start and its recent history.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Snapshot {
    /// Events received (HTTP and TCP), valid or not.
    pub received: u64,
    /// Rows committed to the stream's table.
    pub written: u64,
    /// Events not written because their `id_field` value was already stored (a
    /// redelivery): neither a row nor a dead letter.
    pub duplicates: u64,
    /// Events stored in `sluice_dead_letters` instead.
    pub dead_lettered: u64,
    /// The same, by the stage that set them aside.
    pub dead_lettered_by_stage: ByStage,
    /// Events refused with 503 because the queue was full.
    pub rejected: u64,
    /// When the last batch was committed (RFC 3339), `null` before the first.
    pub last_write_at: Option<String>,
    /// The last write error, `null` if there was none.
    pub last_error: Option<LastError>,
    /// The batch being written failed for a transient reason (the database is down
    /// or locked) and is retried; see `last_error`.
    pub retrying: bool,
    /// `ok`; `retrying` (the batch failed for a transient reason and is retried);
    /// `refusing` (the table refuses every row for a reason only an operator can fix,
    /// such as a missing column, unique key or privilege: the rows are dead-lettered at
    /// stage `write` with the database's message, see `last_error`).
    pub write_state: WriteState,
    /// Rows written per second, averaged over the last 60 seconds.
    pub written_per_second_1m: f64,
}

/// Whether a stream's writes succeed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteState {
    #[default]
    Ok,
    Retrying,
    Refusing,
}

/// A count for each stage at which an event can be set aside.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ByStage {
    pub parse: u64,
    pub route: u64,
    pub validate: u64,
    pub write: u64,
}

/// A write error and when it happened.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LastError {
    /// RFC 3339 time of the error.
    pub at: String,
    /// The database's message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_covers_the_last_minute_only() {
        let s = StreamStats::default();
        let t0 = DateTime::<Utc>::from_timestamp(1_000_000, 0).unwrap();
        s.written(600, t0);
        assert_eq!(s.snapshot(t0).written_per_second_1m, 10.0);
        let later = t0 + chrono::Duration::seconds(61);
        assert_eq!(s.snapshot(later).written_per_second_1m, 0.0);
        assert_eq!(s.snapshot(later).written, 600);
    }
}
