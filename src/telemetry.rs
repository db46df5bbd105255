//! Metrics, through the `metrics` facade and rendered by `metrics-exporter-prometheus`.
//! Every metric Sluice emits is defined here, one function each, so names, units and
//! labels stay consistent. Emitted per request or per batch, never per event.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `sluice_events_received_total` | counter | `stream`, `source` (`http`/`webhook`/`tcp`), `token` |
//! | `sluice_events_written_total` | counter | `stream` |
//! | `sluice_events_duplicate_total` | counter | `stream` (skipped by `id_field`) |
//! | `sluice_events_dead_lettered_total` | counter | `stream`, `stage` |
//! | `sluice_events_rejected_total` | counter | `stream` (503: queue full) |
//! | `sluice_queue_events` / `sluice_queue_bytes` | gauge | `stream` |
//! | `sluice_queue_max_events` / `sluice_queue_max_bytes` | gauge | `stream` |
//! | `sluice_batch_size_events` | histogram | `stream` |
//! | `sluice_batch_write_duration_seconds` | histogram | `stream` |
//! | `sluice_write_retries_total` | counter | `stream` |
//! | `sluice_tcp_connections` | gauge | |
//! | `sluice_db_pool_connections` | gauge | `state` (`in_use`/`idle`) |
//! | `sluice_db_pool_max_connections` | gauge | |
//! | `sluice_http_requests_total` | counter | `status` |
//! | `sluice_http_request_duration_seconds` | histogram | `status` |
//! | `sluice_http_refused_total` | counter | `surface` (`ingest`/`admin`), `status` |
//! | `sluice_webhook_rejected_total` | counter | `webhook`, `reason` |
//! | `sluice_spool_bytes` / `sluice_spool_records` | gauge | `stream` |
//! | `sluice_spool_fsync_seconds` | histogram | |
//! | `sluice_spool_recovered_records_total` / `sluice_spool_corrupt_records_total` | counter | `stream` |
//! | `sluice_jetstream_messages_total` | counter | `outcome` (`pulled`/`redelivered`/`acked`/`nacked`) |
//! | `sluice_jetstream_errors_total` | counter | |
//! | `sluice_jetstream_consumer_pending` / `sluice_jetstream_consumer_ack_pending` | gauge | `consumer` |

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::Stage;

/// Label value for dead letters that belong to no stream (unknown or missing).
pub const NO_STREAM: &str = "(none)";
/// Label value for events that came without an ingest token (no `[auth]`, TCP, webhooks).
pub const NO_TOKEN: &str = "(none)";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once); `None` if another recorder
/// was installed first.
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let sizes = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("sluice_batch_size_events".into()), &sizes))
                .and_then(|b| b.install_recorder())
                .map_err(|e| tracing::warn!(error = %e, "Metrics are disabled: cannot install the recorder."))
                .ok()
        })
        .as_ref()
}

/// Every metric, its kind and its `# HELP` text (the README's metrics table says the
/// same). A unit test checks that every metric this module emits is here.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "sluice_events_received_total",
        "counter",
        "Events parsed from HTTP, webhooks, TCP or JetStream (stored or dead-lettered).",
    ),
    (
        "sluice_events_written_total",
        "counter",
        "Rows committed to the stream's table (duplicates skipped by id_field not included).",
    ),
    (
        "sluice_events_duplicate_total",
        "counter",
        "Events not written because their id_field value was already stored (a redelivery).",
    ),
    (
        "sluice_events_dead_lettered_total",
        "counter",
        "Events set aside in sluice_dead_letters, by stage.",
    ),
    (
        "sluice_events_rejected_total",
        "counter",
        "Events refused with 503 because the stream's queue stayed full.",
    ),
    (
        "sluice_queue_events",
        "gauge",
        "Events accepted and not yet committed.",
    ),
    (
        "sluice_queue_bytes",
        "gauge",
        "Bytes of memory the queued events hold.",
    ),
    (
        "sluice_queue_max_events",
        "gauge",
        "The queue's bound in events.",
    ),
    (
        "sluice_queue_max_bytes",
        "gauge",
        "The queue's bound in bytes.",
    ),
    (
        "sluice_batch_size_events",
        "histogram",
        "Rows per written batch.",
    ),
    (
        "sluice_batch_write_duration_seconds",
        "histogram",
        "Time to write a batch, retries and bisection included.",
    ),
    (
        "sluice_write_retries_total",
        "counter",
        "Transient write failures retried.",
    ),
    (
        "sluice_stream_saturated",
        "gauge",
        "1 while the stream's queue is full.",
    ),
    (
        "sluice_stream_retrying",
        "gauge",
        "1 while the stream's batch is retried after a transient failure.",
    ),
    (
        "sluice_stream_last_commit_timestamp_seconds",
        "gauge",
        "When this instance last committed rows of the stream (Unix seconds); its start time until then.",
    ),
    (
        "sluice_stream_expected_interval_seconds",
        "gauge",
        "The stream's [streams.NAME] expect_every: longer than this without a commit, it is silent.",
    ),
    (
        "sluice_dead_letters_purged_total",
        "counter",
        "Dead letters deleted by the retention purge or sluice purge.",
    ),
    ("sluice_tcp_connections", "gauge", "Open TCP connections."),
    (
        "sluice_tcp_tls_refused_total",
        "counter",
        "TCP connections closed because their TLS handshake failed or timed out.",
    ),
    (
        "sluice_db_pool_connections",
        "gauge",
        "Database connections in use or idle in the pool.",
    ),
    (
        "sluice_db_pool_max_connections",
        "gauge",
        "The pool's bound (database.max_connections).",
    ),
    (
        "sluice_http_requests_total",
        "counter",
        "HTTP requests answered, by status.",
    ),
    (
        "sluice_http_request_duration_seconds",
        "histogram",
        "HTTP request duration, by status.",
    ),
    (
        "sluice_http_refused_total",
        "counter",
        "Requests refused by access control (401, 403), by surface.",
    ),
    (
        "sluice_webhook_rejected_total",
        "counter",
        "Webhook requests refused by verification (nothing stored), by reason.",
    ),
    (
        "sluice_spool_bytes",
        "gauge",
        "Bytes the spool holds not yet committed.",
    ),
    (
        "sluice_spool_records",
        "gauge",
        "Records the spool holds not yet committed.",
    ),
    (
        "sluice_spool_fsync_seconds",
        "histogram",
        "Duration of each spool fsync.",
    ),
    (
        "sluice_spool_recovered_records_total",
        "counter",
        "Records found in the spool at start-up.",
    ),
    (
        "sluice_spool_corrupt_records_total",
        "counter",
        "Damaged regions of spool segments skipped.",
    ),
    (
        "sluice_jetstream_messages_total",
        "counter",
        "JetStream messages, by what happened to them.",
    ),
    (
        "sluice_jetstream_errors_total",
        "counter",
        "Connection or server errors of the JetStream input.",
    ),
    (
        "sluice_jetstream_consumer_pending",
        "gauge",
        "The consumer's messages not yet delivered.",
    ),
    (
        "sluice_jetstream_consumer_ack_pending",
        "gauge",
        "The consumer's messages delivered and not yet acknowledged.",
    ),
];

/// Installs the recorder and describes every metric (the `# HELP` lines); call once at
/// start-up.
pub fn install() {
    if handle().is_none() {
        return;
    }
    for (name, kind, help) in METRICS {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

pub fn events_received(stream: &str, source: &'static str, token: &str, n: usize) {
    counter!("sluice_events_received_total", "stream" => stream.to_owned(), "source" => source, "token" => token.to_owned())
        .increment(n as u64);
}

pub fn events_dead_lettered(stream: Option<&str>, stage: Stage, n: usize) {
    let stream = stream.unwrap_or(NO_STREAM).to_owned();
    counter!("sluice_events_dead_lettered_total", "stream" => stream, "stage" => stage.as_str())
        .increment(n as u64);
}

pub fn events_rejected(stream: &str, n: usize) {
    counter!("sluice_events_rejected_total", "stream" => stream.to_owned()).increment(n as u64);
}

/// A batch committed: `rows` stored, `duplicates` skipped as ids already stored.
pub fn batch_written(stream: &str, rows: usize, duplicates: usize, seconds: f64) {
    counter!("sluice_events_written_total", "stream" => stream.to_owned()).increment(rows as u64);
    if duplicates > 0 {
        counter!("sluice_events_duplicate_total", "stream" => stream.to_owned())
            .increment(duplicates as u64);
    }
    histogram!("sluice_batch_size_events", "stream" => stream.to_owned()).record(rows as f64);
    histogram!("sluice_batch_write_duration_seconds", "stream" => stream.to_owned())
        .record(seconds);
}

pub fn write_retried(stream: &str) {
    counter!("sluice_write_retries_total", "stream" => stream.to_owned()).increment(1);
}

/// A stream's queue bounds, exported so alerts can compare the depth with them.
pub fn queue_capacity(stream: &str, events: usize, bytes: usize) {
    gauge!("sluice_queue_max_events", "stream" => stream.to_owned()).set(events as f64);
    gauge!("sluice_queue_max_bytes", "stream" => stream.to_owned()).set(bytes as f64);
}

pub fn queue_depth(stream: &str, events: usize, bytes: usize) {
    gauge!("sluice_queue_events", "stream" => stream.to_owned()).set(events as f64);
    gauge!("sluice_queue_bytes", "stream" => stream.to_owned()).set(bytes as f64);
}

/// Whether a stream's queue is full and whether its batch is being retried (1 or 0).
pub fn stream_state(stream: &str, saturated: bool, retrying: bool) {
    gauge!("sluice_stream_saturated", "stream" => stream.to_owned())
        .set(f64::from(u8::from(saturated)));
    gauge!("sluice_stream_retrying", "stream" => stream.to_owned())
        .set(f64::from(u8::from(retrying)));
}

pub fn dead_letters_purged(n: u64) {
    if n > 0 {
        counter!("sluice_dead_letters_purged_total").increment(n);
    }
}

/// Rows of `stream` committed now: its freshness.
pub fn stream_committed(stream: &str, at: chrono::DateTime<chrono::Utc>) {
    gauge!("sluice_stream_last_commit_timestamp_seconds", "stream" => stream.to_owned())
        .set(at.timestamp_micros() as f64 / 1e6);
}

/// Registers a stream's series at 0 at start-up, so that a scrape shows "nothing yet"
/// as 0 rather than leaving the series out (and rates and alerts can rely on them);
/// its last commit starts at the start time, and `expect_every` is exported when set.
pub fn stream_registered(stream: &str, expect_every: Option<std::time::Duration>) {
    stream_committed(stream, chrono::Utc::now());
    if let Some(every) = expect_every {
        gauge!("sluice_stream_expected_interval_seconds", "stream" => stream.to_owned())
            .set(every.as_secs_f64());
    }
    for name in [
        "sluice_events_written_total",
        "sluice_events_duplicate_total",
        "sluice_events_rejected_total",
        "sluice_write_retries_total",
    ] {
        counter!(name, "stream" => stream.to_owned()).increment(0);
    }
    for stage in [Stage::Parse, Stage::Validate, Stage::Write] {
        counter!("sluice_events_dead_lettered_total", "stream" => stream.to_owned(), "stage" => stage.as_str())
            .increment(0);
    }
    queue_depth(stream, 0, 0);
    stream_state(stream, false, false);
    gauge!("sluice_tcp_connections").increment(0.0);
}

/// Registers a webhook's refusal series (one per `reasons`) at 0 at start-up.
pub fn webhook_registered(webhook: &str, reasons: &[&'static str]) {
    for &reason in reasons {
        counter!("sluice_webhook_rejected_total", "webhook" => webhook.to_owned(), "reason" => reason)
            .increment(0);
    }
}

/// A webhook request refused by verification (nothing of it stored).
pub fn webhook_rejected(webhook: &str, reason: &'static str) {
    counter!("sluice_webhook_rejected_total", "webhook" => webhook.to_owned(), "reason" => reason)
        .increment(1);
}

/// Registers the access-control series at 0, so rates and alerts see them from the start.
pub fn access_registered() {
    for (surface, status) in [("ingest", 401), ("ingest", 403), ("admin", 401)] {
        counter!("sluice_http_refused_total", "surface" => surface, "status" => status.to_string())
            .increment(0);
    }
}

/// A request refused by access control (`surface`: `ingest` or `admin`; 401 or 403).
pub fn access_refused(surface: &'static str, status: u16) {
    counter!("sluice_http_refused_total", "surface" => surface, "status" => status.to_string())
        .increment(1);
}

/// The spool's bytes and records not yet committed, of one log (a stream or
/// `_dead_letters`).
pub fn spool_depth(log: &str, bytes: u64, records: usize) {
    gauge!("sluice_spool_bytes", "stream" => log.to_owned()).set(bytes as f64);
    gauge!("sluice_spool_records", "stream" => log.to_owned()).set(records as f64);
}

/// Messages pulled from JetStream, `redelivered` of them delivered before.
pub fn jetstream_pulled(pulled: usize, redelivered: usize) {
    counter!("sluice_jetstream_messages_total", "outcome" => "pulled").increment(pulled as u64);
    counter!("sluice_jetstream_messages_total", "outcome" => "redelivered")
        .increment(redelivered as u64);
}

/// JetStream messages acknowledged after their commit.
pub fn jetstream_acked(n: usize) {
    counter!("sluice_jetstream_messages_total", "outcome" => "acked").increment(n as u64);
}

/// A JetStream message given back for redelivery.
pub fn jetstream_nacked() {
    counter!("sluice_jetstream_messages_total", "outcome" => "nacked").increment(1);
}

/// The JetStream input lost its connection or got an error from the server.
pub fn jetstream_errors() {
    counter!("sluice_jetstream_errors_total").increment(1);
}

/// The consumer's backlog: messages not yet delivered, and delivered but not acknowledged.
pub fn jetstream_lag(consumer: &str, pending: u64, ack_pending: usize) {
    let consumer = consumer.to_owned();
    gauge!("sluice_jetstream_consumer_pending", "consumer" => consumer.clone()).set(pending as f64);
    gauge!("sluice_jetstream_consumer_ack_pending", "consumer" => consumer).set(ack_pending as f64);
}

/// One fsync of a spool segment.
pub fn spool_fsync(seconds: f64) {
    histogram!("sluice_spool_fsync_seconds").record(seconds);
}

/// What start-up found in a spool log: records to replay and damaged regions skipped.
pub fn spool_recovered(log: &str, records: usize, damaged: usize) {
    counter!("sluice_spool_recovered_records_total", "stream" => log.to_owned())
        .increment(records as u64);
    counter!("sluice_spool_corrupt_records_total", "stream" => log.to_owned())
        .increment(damaged as u64);
}

pub fn tcp_connection_opened() {
    gauge!("sluice_tcp_connections").increment(1.0);
}

pub fn tcp_connection_closed() {
    gauge!("sluice_tcp_connections").decrement(1.0);
}

/// A TCP connection closed because its TLS handshake failed (no or a bad client
/// certificate, plain text on the TLS port) or did not finish in time.
pub fn tcp_tls_refused() {
    counter!("sluice_tcp_tls_refused_total").increment(1);
}

pub fn http_request(status: u16, seconds: f64) {
    counter!("sluice_http_requests_total", "status" => status.to_string()).increment(1);
    histogram!("sluice_http_request_duration_seconds", "status" => status.to_string())
        .record(seconds);
}

/// The database pool: connections in use, idle, and its maximum.
pub fn db_pool(in_use: u32, idle: u32, max: u32) {
    gauge!("sluice_db_pool_connections", "state" => "in_use").set(f64::from(in_use));
    gauge!("sluice_db_pool_connections", "state" => "idle").set(f64::from(idle));
    gauge!("sluice_db_pool_max_connections").set(f64::from(max));
}

#[cfg(test)]
mod help_tests {
    #[test]
    fn every_metric_emitted_here_has_its_help_text() {
        let source = include_str!("telemetry.rs");
        for quoted in source.split("!(\"sluice_").skip(1) {
            let name = format!("sluice_{}", quoted.split('"').next().unwrap_or_default());
            if name.contains('{') {
                continue; // this test's own text
            }
            assert!(
                super::METRICS.iter().any(|(n, _, _)| *n == name),
                "{name} has no entry in METRICS"
            );
        }
    }
}
