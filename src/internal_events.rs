//! Internal events, after Vector's: one struct for each thing that happens to events,
//! whose `emit` updates everything that reports it (the Prometheus metric, the stream's
//! status for `GET /v1/streams` and the panel, the log line or its summary), so that
//! no call site updates one and forgets another.

use crate::event::Stage;
use crate::log_summary::LogSummary;
use crate::stats::StreamStats;
use crate::telemetry;

/// The summary of dead letters set aside before the queues: by stream and stage, one
/// example reason each.
pub type DeadLetterLog = LogSummary<crate::log_summary::DeadLetterKind>;

/// Events of one stream from one kind of input, queued (as rows or dead letters).
pub struct EventsReceived<'a> {
    /// `None`: events that named no known stream.
    pub stream: Option<&'a str>,
    pub source: &'static str,
    /// The ingest token's name, or [`telemetry::NO_TOKEN`].
    pub token: &'a str,
    pub count: usize,
}

impl EventsReceived<'_> {
    pub fn emit(&self, stats: Option<&StreamStats>) {
        let stream = self.stream.unwrap_or(telemetry::NO_STREAM);
        telemetry::events_received(stream, self.source, self.token, self.count);
        if let Some(s) = stats {
            s.received(self.count);
        }
    }
}

/// Events of one stream set aside as dead letters at `stage`: before the queues (parse,
/// route, validate, or a value the database is known to refuse), summarised in the log;
/// or stored by the writer after the database refused them (write), logged at once.
pub struct EventsDeadLettered<'a> {
    pub stream: Option<&'a str>,
    pub stage: Stage,
    pub count: usize,
    /// One of their reasons.
    pub example: &'a str,
}

impl EventsDeadLettered<'_> {
    /// With `summary`, the log line is summarised there (one per kind, then counts).
    pub fn emit(&self, stats: Option<&StreamStats>, summary: Option<&DeadLetterLog>) {
        telemetry::events_dead_lettered(self.stream, self.stage, self.count);
        if let Some(s) = stats {
            s.dead_lettered(self.stage, self.count);
        }
        match summary {
            Some(log) => log.record(
                (self.stream.map(str::to_owned), self.stage.as_str()),
                self.count as u64,
                self.example,
            ),
            None => tracing::warn!(
                target_name = self.stream.unwrap_or(telemetry::NO_STREAM),
                count = self.count,
                first_error = %self.example,
                "The database refused rows; they are dead-lettered (stage write), the rest of the batch is written."
            ),
        }
    }
}

/// Events refused whole because their queue stayed full (HTTP 503): never queued.
pub struct EventsRejected<'a> {
    pub stream: &'a str,
    pub count: usize,
}

impl EventsRejected<'_> {
    pub fn emit(&self, stats: Option<&StreamStats>) {
        telemetry::events_rejected(self.stream, self.count);
        if let Some(s) = stats {
            s.rejected(self.count);
        }
    }
}

/// A batch of a stream's rows committed: `rows` stored, `duplicates` skipped as ids
/// already stored.
pub struct BatchWritten<'a> {
    pub stream: &'a str,
    pub rows: usize,
    pub duplicates: usize,
    pub seconds: f64,
}

impl BatchWritten<'_> {
    pub fn emit(&self, stats: &StreamStats) {
        telemetry::batch_written(self.stream, self.rows, self.duplicates, self.seconds);
        if self.rows > 0 {
            let now = chrono::Utc::now();
            stats.written(self.rows, now);
            telemetry::stream_committed(self.stream, now);
        }
        if self.duplicates > 0 {
            stats.duplicates(self.duplicates);
        }
    }
}

/// A write that failed for a transient reason, to be retried after `delay`.
pub struct WriteRetried<'a> {
    /// The stream, or the dead-letter table.
    pub target: &'a str,
    pub rows: usize,
    pub attempt: u32,
    pub delay: std::time::Duration,
    pub error: &'a str,
}

impl WriteRetried<'_> {
    pub fn emit(&self, stats: Option<&StreamStats>) {
        telemetry::write_retried(self.target);
        if let Some(s) = stats {
            s.retrying(true);
            s.error(self.error, chrono::Utc::now());
        }
        tracing::warn!(
            target_name = self.target,
            rows = self.rows,
            attempt = self.attempt,
            retry_in_ms = self.delay.as_millis() as u64,
            error = %self.error,
            "Write failed for a transient reason; retrying the same batch."
        );
    }
}
