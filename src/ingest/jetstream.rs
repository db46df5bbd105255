//! The JetStream input (`[jetstream]`): a durable pull consumer that every Sluice
//! instance shares. A message's payload (one JSON object, or NDJSON) goes through the
//! same decoding, routing and queues as TCP lines; the message is acknowledged to
//! JetStream only once its rows and dead letters are committed. While its batch is
//! written or retried, the acknowledgement deadline is extended (`in_progress`); if
//! Sluice stops before the commit, the message is given back (`nak` with a delay) and
//! JetStream redelivers it, to this instance or another. So is a message pulled while
//! the writes of a stream it has events for are failing (transient database errors
//! being retried): it is not queued behind them, and JetStream keeps it meanwhile.
//! Nothing is acknowledged early and nothing is terminated: a message that is not an
//! event becomes a dead letter.
//!
//! Flow control: at most `max_ack_pending` messages of this instance wait for their
//! commit, and a message whose queue is full waits for room, so a slow database stops
//! the pulling instead of filling memory.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, message::Acker, AckKind};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::ndjson_lines;
use super::filing::{ByField, Event, Filing, Read, Route};
use super::tcp::TcpConfig;
use super::{Handing, Ingest, Receipt, Until};
use crate::event::Stage;
use crate::telemetry;
use crate::toml_values::duration;

/// `[jetstream]`: a durable pull consumer shared by every Sluice instance; a message is
/// acknowledged only once its rows (or dead letters) are committed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream to consume; created with `subjects` if missing.
    pub stream: String,
    /// The subjects of the stream, used only when Sluice creates it.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The durable pull consumer's name, the same for every instance.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// With it, a message's subject minus this prefix names its stream
    /// (`events.order_placed` -> `order_placed`); otherwise the TCP routing rules apply.
    pub subject_prefix: Option<String>,
    /// Most messages delivered and not yet acknowledged, per consumer (every instance
    /// together): the bound on what Sluice pulls ahead of its commits.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
    /// How long JetStream waits for an acknowledgement before it redelivers; Sluice
    /// extends it (`in_progress`) while a message's batch is being written or retried.
    #[serde(default = "default_ack_wait", deserialize_with = "duration")]
    pub ack_wait: Duration,
    /// When a message could not be committed (Sluice is stopping), it is given back
    /// (`nak`) to be redelivered after this delay.
    #[serde(default = "default_nak_delay", deserialize_with = "duration")]
    pub nak_delay: Duration,
}

fn default_consumer() -> String {
    "sluice".into()
}
fn default_max_ack_pending() -> usize {
    10_000
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_nak_delay() -> Duration {
    Duration::from_secs(5)
}

/// Most messages handled as one batch (one submit, one commit wait, one task).
const MAX_BATCH: usize = 5000;

/// Most payload bytes one pull request asks for (see `pull_bytes`).
const PULL_BYTES: usize = 16 << 20;

/// How often a batch waiting for room looks again whether its streams' writes fail.
const FAILING_CHECK: Duration = Duration::from_secs(1);

/// Consumes until `stop`; a lost connection or a server error is logged and retried.
/// Acknowledgements run on `tasks`, so that shutdown waits for them.
pub async fn run(
    config: JetStreamConfig,
    tcp: Arc<TcpConfig>,
    ingest: Arc<Ingest>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let input = Input {
        config,
        tcp,
        ingest,
        tasks,
    };
    loop {
        match input.consume(&stop).await {
            Ok(()) => return,
            Err(e) => {
                telemetry::jetstream_errors();
                let url = &input.config.url;
                tracing::warn!(url = %redact_nats(url), stream = %input.config.stream,
                    error = %crate::sink::redact_in(&e.to_string(), url),
                    "The JetStream input failed; reconnecting in 2 s (unacknowledged messages will be redelivered).");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// A NATS server URL (or comma-separated list) without its secrets, for logs: a
/// password becomes `***`, and so does a bare user part, which NATS reads as a token
/// (`nats://TOKEN@host`).
pub fn redact_nats(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let Some(scheme_end) = one.find("://").map(|i| i + 3) else {
                return one.to_owned();
            };
            match one[scheme_end..].rfind('@').map(|i| i + scheme_end) {
                Some(at) => {
                    let user = match one[scheme_end..at].split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_owned(),
                    };
                    format!("{}{user}{}", &one[..scheme_end], &one[at..])
                }
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

struct Input {
    config: JetStreamConfig,
    tcp: Arc<TcpConfig>,
    ingest: Arc<Ingest>,
    tasks: TaskTracker,
}

impl Input {
    /// Connects, makes sure the stream and the consumer exist, and pulls until `stop`.
    async fn consume(&self, stop: &CancellationToken) -> Result<(), async_nats::Error> {
        let config = &self.config;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(&config.url)
            .await?;
        // One pull asks for at most this many bytes (never less than the largest message
        // the server takes, which could not be delivered otherwise), so that the messages
        // delivered and not yet decoded stay bounded in memory as well as in number.
        let pull_bytes = PULL_BYTES.max(client.server_info().max_payload);
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream.clone(),
                subjects: config.subjects.clone(),
                ..Default::default()
            })
            .await?;
        let consumer = stream
            .get_or_create_consumer(
                &config.consumer,
                pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_ack_pending: i64::try_from(config.max_ack_pending).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )
            .await?;
        self.tasks.spawn(report_lag(consumer.clone(), stop.clone()));
        tracing::info!(url = %redact_nats(&config.url), stream = %config.stream, consumer = %config.consumer,
            "Consuming from JetStream.");
        let permits = Arc::new(Semaphore::new(config.max_ack_pending));
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(config.max_ack_pending.clamp(1, MAX_BATCH))
            .max_bytes_per_batch(pull_bytes)
            .messages()
            .await?;
        loop {
            let first = tokio::select! {
                m = messages.next() => m,
                _ = stop.cancelled() => return Ok(()),
            };
            // The messages already here join the first: one submit, one commit wait
            // and one task for all of them.
            let mut batch = vec![first.ok_or("the consumer's message stream ended")??];
            while batch.len() < MAX_BATCH.min(config.max_ack_pending) {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(None) | None => break,
                }
            }
            let redelivered = batch
                .iter()
                .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
                .count();
            telemetry::jetstream_pulled(batch.len(), redelivered);
            let decoded = self.decode(&batch);
            // The events hold their own text now: keep only what acknowledges each
            // message, not its payload, while it waits for its commit.
            let batch: Vec<Acker> = batch.into_iter().map(|m| m.split().1).collect();
            // Room for the batch among the messages waiting for their commit; while it
            // waits, the writes of a stream it goes to may start failing.
            let permit = loop {
                if let Some(stream) = self.failing(&decoded) {
                    // Nothing of the batch is queued: JetStream keeps it meanwhile and
                    // redelivers it after the delay, to this instance or another.
                    tracing::info!(stream, messages = batch.len(), nak_delay = ?config.nak_delay,
                        "The stream's writes are failing; JetStream messages for it are given back to be redelivered later.");
                    for m in &batch {
                        nak(m, config.nak_delay).await;
                    }
                    break None;
                }
                tokio::select! {
                    p = permits.clone().acquire_many_owned(batch.len() as u32) => break Some(p?),
                    _ = tokio::time::sleep(FAILING_CHECK) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            };
            let Some(permit) = permit else {
                tokio::select! {
                    _ = tokio::time::sleep(config.nak_delay) => continue,
                    _ = stop.cancelled() => return Ok(()),
                }
            };
            let Decoded { filing, owners } = decoded;
            match self
                .ingest
                .submit(filing, Until::Committed, Handing::Pieces)
                .await
            {
                Ok(receipt) => {
                    let (ack_wait, nak_delay) = (config.ack_wait, config.nak_delay);
                    self.tasks.spawn(ack_after_commit(
                        batch, owners, receipt, permit, ack_wait, nak_delay,
                    ));
                }
                Err(e) => {
                    // Sluice is stopping: the queues take nothing more.
                    tracing::info!(error = %e, messages = batch.len(), "JetStream messages could not be queued; they are given back.");
                    for m in &batch {
                        nak(m, config.nak_delay).await;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Decodes and routes the events of `batch`, each stream's apart.
    fn decode(&self, batch: &[jetstream::Message]) -> Decoded {
        let received_at = chrono::Utc::now();
        let mut filing = self.ingest.filing();
        // owners[event index] = the message in `batch` the event came from.
        let mut owners = Vec::new();
        // A batch's messages mostly share a subject: one `source` text for each run.
        let mut last: Option<(&str, Arc<str>)> = None;
        for (m, message) in batch.iter().enumerate() {
            let subject = message.subject.as_str();
            let source = match &last {
                Some((s, source)) if *s == subject => source.clone(),
                _ => {
                    let source: Arc<str> = crate::source::jetstream(subject);
                    last = Some((subject, source.clone()));
                    source
                }
            };
            let (registry, field) = (&self.ingest.registry, self.tcp.stream_field.as_str());
            let route = match self
                .config
                .subject_prefix
                .as_deref()
                .and_then(|p| subject.strip_prefix(p))
            {
                Some(name) => Route::Subject {
                    registry,
                    subject,
                    name,
                    field,
                },
                None => Route::Field(ByField::new(
                    registry,
                    field,
                    self.tcp.default_stream.as_deref(),
                )),
            };
            let first = owners.len();
            let mut lines = ndjson_lines(&message.payload).peekable();
            // Nothing to store, but nothing is acknowledged without a trace.
            let empty = lines.peek().is_none().then(|| Event {
                index: first,
                raw: &message.payload,
                read: Read::Refused(
                    Stage::Parse,
                    "the message is empty: publish one JSON object, or one per line".into(),
                ),
            });
            let events = (lines.zip(first..))
                .map(|(raw, index)| Event::text(index, raw))
                .chain(empty)
                .inspect(|_| owners.push(m));
            filing.file(&route, &source, received_at, events);
        }
        Decoded { filing, owners }
    }

    /// A stream `decoded` has events for whose writes are failing (and being retried).
    fn failing(&self, decoded: &Decoded) -> Option<String> {
        decoded
            .filing
            .groups()
            .filter_map(|(stream, _)| stream)
            .find(|s| {
                self.ingest
                    .stats(&s.name)
                    .is_some_and(|stats| stats.is_retrying())
            })
            .map(|s| s.name.clone())
    }
}

/// A batch's events, decoded and routed, not yet queued.
struct Decoded {
    /// Each stream's events, and those routed to none (dead letters).
    filing: Filing,
    /// For each event index, the message of the batch it came from.
    owners: Vec<usize>,
}

/// Acknowledges each message of `batch` once every row and dead letter of it is
/// committed, extending their deadlines meanwhile; gives back the messages with an event
/// that could not be stored at all, and every message if Sluice stopped first.
async fn ack_after_commit(
    batch: Vec<Acker>,
    owners: Vec<usize>,
    receipt: Receipt,
    _permit: OwnedSemaphorePermit,
    ack_wait: Duration,
    nak_delay: Duration,
) {
    let committed = async {
        // Per message: whether all its events are stored.
        let mut stored = vec![true; batch.len()];
        for lost in receipt.committed().await.ok()?.lost {
            if let Some(&m) = owners.get(lost.index) {
                stored[m] = false;
            }
        }
        Some(stored)
    };
    tokio::pin!(committed);
    let mut progress = tokio::time::interval(ack_wait / 3);
    progress.tick().await;
    let stored = loop {
        tokio::select! {
            stored = &mut committed => break stored,
            _ = progress.tick() => {
                for message in &batch {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "Could not extend a JetStream message's deadline.");
                    }
                }
            }
        }
    };
    let stored = stored.unwrap_or_else(|| vec![false; batch.len()]);
    let mut acked = 0;
    for (message, stored) in batch.iter().zip(stored) {
        if !stored {
            nak(message, nak_delay).await;
            continue;
        }
        match message.ack().await {
            Ok(()) => acked += 1,
            // JetStream redelivers it; the stream's id_field keeps the row unique.
            Err(e) => {
                tracing::warn!(error = %e, "A committed JetStream message could not be acknowledged; it will be redelivered.")
            }
        }
    }
    telemetry::jetstream_acked(acked);
}

async fn nak(message: &Acker, delay: Duration) {
    telemetry::jetstream_nacked();
    if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::debug!(error = %e, "Could not give a JetStream message back; it is redelivered after ack_wait.");
    }
}

/// Publishes the consumer's backlog (`num_pending`) and unacknowledged count every 5 s.
async fn report_lag(mut consumer: jetstream::consumer::PullConsumer, stop: CancellationToken) {
    loop {
        if let Ok(info) = consumer.info().await {
            telemetry::jetstream_lag(&info.name, info.num_pending, info.num_ack_pending);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn nats_passwords_and_tokens_are_redacted() {
        assert_eq!(
            super::redact_nats("nats://user:S3cret@h:4222"),
            "nats://user:***@h:4222"
        );
        assert_eq!(super::redact_nats("nats://t0ken@h"), "nats://***@h");
        assert_eq!(
            super::redact_nats("nats://a:x@h1:4222,nats://a:x@h2:4222"),
            "nats://a:***@h1:4222,nats://a:***@h2:4222"
        );
        assert_eq!(super::redact_nats("nats://h:4222"), "nats://h:4222");
    }
}
