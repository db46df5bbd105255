//! Ingest: the inputs (TCP lines, JetStream messages, the spool's records) and the step
//! every input shares, from event texts to queued rows and dead letters.
//!
//! In: raw events, filed by [`filing`] into rows and dead letters per stream. Out:
//! [`Row`]s queued for the stream's batcher and [`DeadLetter`]s queued for the
//! dead-letter batcher by [`Ingest::submit`]: whole (a request is accepted whole or
//! not at all) or in pieces that wait for room, spooled first when the producer
//! acknowledges its source once they are durable. Ingest never writes to the database
//! itself.

pub mod body;
pub mod budget;
pub mod csv_events;
pub mod filing;
pub mod jetstream;
pub mod spool_recovery;
pub mod spool_refill;
pub mod tcp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::event::{DeadLetter, Row, Stage};
use crate::internal_events::{DeadLetterLog, EventsDeadLettered, EventsReceived};
use crate::pipeline::queue::{Outcome, QueueError, QueueSender, Settle};
use crate::schema::Registry;
use crate::sink::Dialect;
use crate::stats::StreamStats;
use crate::telemetry;
use filing::{Filing, RequestEvents};

/// A listener that serves at most `max` connections at once. The permit is taken
/// *before* `accept()`, so the limit is backpressure (further clients wait in the kernel's
/// backlog) rather than an error, as mini-redis does.
pub struct LimitedListener {
    listener: TcpListener,
    limit: Arc<Semaphore>,
    /// `HTTP` or `TCP`, for logs.
    name: &'static str,
}

impl LimitedListener {
    pub fn new(listener: TcpListener, max: usize, name: &'static str) -> LimitedListener {
        LimitedListener {
            listener,
            limit: Arc::new(Semaphore::new(max)),
            name,
        }
    }

    /// The next connection and the permit it holds until dropped; `None` once `stop`
    /// is cancelled.
    pub async fn accept(
        &self,
        stop: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let permit = tokio::select! {
            p = self.limit.clone().acquire_owned() => p.ok()?,
            _ = stop.cancelled() => return None,
        };
        loop {
            tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((socket, peer)) => return Some((socket, peer, permit)),
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(listener = self.name, error = %e, "Accept failed; retrying shortly.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = stop.cancelled() => return None,
            }
        }
    }
}

/// Counts a request that is about to be queued: received events by stream and source,
/// and dead letters by stream and stage.
fn record_submitted(
    stream: Option<&str>,
    events: &RequestEvents,
    stats: &HashMap<String, Arc<StreamStats>>,
    log: &DeadLetterLog,
) {
    let source = |s: &str| {
        crate::source::Kind::of(s)
            .unwrap_or(crate::source::Kind::Http)
            .as_str()
    };
    let mut received: std::collections::BTreeMap<(Option<&str>, &'static str), usize> =
        Default::default();
    // By stream and stage: the stage, the count and one reason.
    let mut dead: std::collections::BTreeMap<(Option<&str>, &'static str), (Stage, usize, &str)> =
        Default::default();
    // The rows of a request share their source: it is read and counted once per run of
    // rows with the same one, not once per row.
    let mut rows = events.rows.iter().peekable();
    while let Some(first) = rows.next() {
        let mut count = 1;
        while rows
            .next_if(|r| Arc::ptr_eq(&r.source, &first.source))
            .is_some()
        {
            count += 1;
        }
        *received.entry((stream, source(&first.source))).or_default() += count;
    }
    for letter in &events.letters {
        let name = letter.stream.as_deref();
        *received.entry((name, source(&letter.source))).or_default() += 1;
        dead.entry((name, letter.stage.as_str()))
            .or_insert((letter.stage, 0, &letter.error))
            .1 += 1;
    }
    let stats_of = |stream: Option<&str>| stream.and_then(|s| stats.get(s)).map(|s| &**s);
    let token = events.token.as_deref().unwrap_or(telemetry::NO_TOKEN);
    for ((stream, source), count) in received {
        let received = EventsReceived {
            stream,
            source,
            token,
            count,
        };
        received.emit(stats_of(stream));
    }
    for ((stream, _), (stage, count, example)) in dead {
        let dead = EventsDeadLettered {
            stream,
            stage,
            count,
            example,
        };
        dead.emit(stats_of(stream), Some(log));
    }
}

/// Splits `items` into runs that each fit a queue of `(max_events, max_bytes)`; an item
/// larger than `max_bytes` forms a run of its own. The runs' ends are found first, so
/// that items that fit one run (the usual case) stay where they are; otherwise each run
/// but the first is split off the end.
fn split_to_fit<T>(
    mut items: Vec<T>,
    (max_events, max_bytes): (usize, usize),
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut starts = Vec::new();
    let (mut len, mut bytes) = (0usize, 0usize);
    for (i, item) in items.iter().enumerate() {
        let s = size(item);
        if len > 0 && (len >= max_events || bytes.saturating_add(s) > max_bytes) {
            starts.push(i);
            (len, bytes) = (0, 0);
        }
        len += 1;
        bytes = bytes.saturating_add(s);
    }
    let mut pieces = Vec::with_capacity(starts.len() + 1);
    for &start in starts.iter().rev() {
        pieces.push(items.split_off(start));
    }
    if !items.is_empty() {
        pieces.push(items);
    }
    pieces.reverse();
    pieces
}

/// Appends the rows of each group to its stream's spool log, and every dead letter to
/// the dead letters' log: one ticket per row group with rows, then one for the letters.
fn append_all(
    spool: &crate::spool::Spool,
    groups: &[(Option<&str>, RequestEvents)],
    spilled: &[bool],
    letter_count: usize,
) -> Result<Vec<crate::spool::Ticket>, QueueError> {
    let append = |log: Option<&Arc<crate::spool::Log>>, records: Vec<Vec<u8>>| {
        let log = log.ok_or(QueueError::Closed)?;
        log.append(&records).map_err(QueueError::Spool)
    };
    let mut tickets: Vec<crate::spool::Ticket> = Vec::new();
    // All or nothing: when one append fails, those made before it are discarded, so
    // that no record of a refused request is ever written (or replayed at a restart).
    let mut appended = |result: Result<crate::spool::Ticket, QueueError>| match result {
        Ok(t) => {
            tickets.push(t);
            Ok(())
        }
        Err(e) => {
            tickets.drain(..).for_each(crate::spool::Ticket::discard);
            Err(e)
        }
    };
    let mut spilled = spilled.iter();
    for (stream, events) in groups {
        if let (Some(name), false) = (stream, events.rows.is_empty()) {
            let records = events.rows.iter().map(crate::spool::encode_row).collect();
            let log = if spilled.next() == Some(&true) {
                spool.spill(name)
            } else {
                spool.log(name)
            };
            appended(append(log, records))?;
        }
    }
    if letter_count > 0 {
        let records = groups
            .iter()
            .flat_map(|(_, e)| e.letters.iter().map(crate::spool::encode_letter))
            .collect();
        appended(append(spool.log(crate::spool::DEAD_LETTERS), records))?;
    }
    Ok(tickets)
}

/// What a producer waits for once its events are handed over ([`Ingest::submit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Queued, nothing more: dead letters read back from the spool, already on disk.
    Queued,
    /// On disk in the spool (when there is one), so that a crash loses nothing, before
    /// the source is told the events are taken: `ack=accepted`, TCP lines. Their commit
    /// can be waited for too.
    Durable,
    /// Committed: the source keeps the events until then (`ack=commit`, webhooks,
    /// JetStream, spool recovery), so they are not spooled.
    Committed,
}

/// How a producer's events are handed to the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handing {
    /// All or nothing, as one request is answered: room is reserved in every queue
    /// before anything is queued; more than a queue can ever hold is refused.
    Whole,
    /// In as many pieces as the queues' bounds require, each waiting for room in its
    /// queue (and in a full spool): lines and messages, for which waiting is the
    /// backpressure.
    Pieces,
}

/// What the producer of submitted events watches: their commit (the one outcome each
/// writer resolves) and, when spooled, their fsync.
#[derive(Default)]
pub struct Receipt {
    /// One per envelope the events went in.
    receivers: Vec<oneshot::Receiver<Outcome>>,
    /// Their appends to the spool, when spooled.
    durable: Vec<crate::spool::Durability>,
}

impl Receipt {
    /// Waits until the spooled events are on disk (at once without a spool).
    pub async fn durable(&self) {
        for d in &self.durable {
            d.wait().await;
        }
    }

    /// Waits until every row and dead letter is committed; returns the rows the database
    /// refused (dead-lettered at the write stage) and the events it could not store at
    /// all. `Err` if Sluice stopped before that.
    pub async fn committed(self) -> Result<Outcome, QueueError> {
        let mut outcome = Outcome::default();
        for rx in self.receivers {
            let o = rx.await.map_err(|_| QueueError::Closed)?;
            outcome.rejected.extend(o.rejected);
            outcome.lost.extend(o.lost);
        }
        Ok(outcome)
    }

    fn extend(&mut self, other: Receipt) {
        self.receivers.extend(other.receivers);
        self.durable.extend(other.durable);
    }
}

/// How long a spooled request waits for room in a full queue before its events go to
/// the stream's spill log instead (below `http.enqueue_timeout`'s default of 100 ms).
const SPILL_AFTER: Duration = Duration::from_millis(50);

/// The queues of every stream plus the dead-letter queue.
pub struct Ingest {
    pub registry: Registry,
    queues: HashMap<String, QueueSender<Row>>,
    dead_letters: QueueSender<DeadLetter>,
    /// Status of each stream, for `GET /v1/streams`.
    stats: HashMap<String, Arc<StreamStats>>,
    /// Dead letters set aside at ingest, logged once per kind and then summarised.
    pub dead_letter_log: DeadLetterLog,
    /// Most payload bytes a dead letter keeps.
    max_payload: usize,
    /// The database written to.
    storage: Dialect,
    /// Memory that input being decoded (HTTP bodies, TCP lines) may hold at once.
    memory: budget::MemoryBudget,
    /// The durable spool, when `[spool] dir` is set.
    spool: Option<Arc<crate::spool::Spool>>,
    /// `true` while the spool's records from before a restart are being written; new
    /// input waits (HTTP answers 503, TCP and JetStream wait) until they are.
    recovering: tokio::sync::watch::Sender<bool>,
}

impl Ingest {
    pub fn new(
        registry: Registry,
        queues: HashMap<String, QueueSender<Row>>,
        dead_letters: QueueSender<DeadLetter>,
        max_payload: usize,
        storage: Dialect,
        max_inflight_bytes: usize,
    ) -> Ingest {
        let stats = registry
            .names()
            .into_iter()
            .map(|n| (n, Arc::default()))
            .collect();
        Ingest {
            registry,
            queues,
            dead_letters,
            stats,
            dead_letter_log: DeadLetterLog::default(),
            max_payload,
            storage,
            memory: budget::MemoryBudget::new(max_inflight_bytes),
            spool: None,
            recovering: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Keeps events answered `202` and TCP lines in `spool` until they are committed.
    pub fn with_spool(mut self, spool: Option<Arc<crate::spool::Spool>>) -> Ingest {
        self.spool = spool;
        self
    }

    /// The spool, if any.
    pub fn spool(&self) -> Option<&Arc<crate::spool::Spool>> {
        self.spool.as_ref()
    }

    /// Whether the spool's records from before a restart are still being written.
    pub fn is_recovering(&self) -> bool {
        *self.recovering.borrow()
    }

    pub fn set_recovering(&self, recovering: bool) {
        self.recovering.send_replace(recovering);
    }

    /// Resolves once the spool's records from before a restart are written (at once
    /// when there were none): the readiness inputs of new events wait for.
    pub async fn recovered(&self) {
        let mut rx = self.recovering.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|recovering| !recovering).await;
    }

    /// The memory budget of input being decoded.
    pub fn memory(&self) -> &budget::MemoryBudget {
        &self.memory
    }

    /// Most payload bytes a dead letter keeps.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// An empty filing for the events of one request (chunk, batch): its dead letters
    /// keep at most `dead_letters.max_payload_bytes`, and values the database is known
    /// to refuse are set aside at once.
    pub fn filing(&self) -> Filing {
        Filing::new(self.max_payload, Some(self.storage))
    }

    /// The status counters of `stream`.
    pub fn stats(&self, stream: &str) -> Option<&Arc<StreamStats>> {
        self.stats.get(stream)
    }

    /// The queue of `stream`.
    pub fn queue(&self, stream: &str) -> Option<&QueueSender<Row>> {
        self.queues.get(stream)
    }

    /// Events held in every stream's queue (queued or being written).
    pub fn queued_events(&self) -> usize {
        self.queues.values().map(|q| q.depth().0).sum()
    }

    /// The dead-letter queue.
    pub fn dead_letter_queue(&self) -> &QueueSender<DeadLetter> {
        &self.dead_letters
    }

    /// Hands filed events to the queues, `handing` them whole or in pieces, spooling
    /// them first when the producer waits only `until` they are durable. Waits as long
    /// as it takes for room (wrap it in a timeout to fail fast); cancel-safe: nothing is
    /// queued until every reservation of a piece is held. Counts what was received and
    /// dead-lettered as it is queued.
    pub async fn submit(
        &self,
        filing: Filing,
        until: Until,
        handing: Handing,
    ) -> Result<Receipt, QueueError> {
        let spool = until == Until::Durable;
        let waits = until != Until::Queued;
        let groups = filing.into_groups();
        if handing == Handing::Whole {
            let (streams, events): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
            let names = streams.iter().map(|s| s.as_ref().map(|s| s.name.as_str()));
            let named = names.zip(events).collect();
            return self
                .submit_whole(named, waits, spool)
                .await
                .map_err(|(e, _)| e);
        }
        let mut receipt = Receipt::default();
        for (stream, events) in groups {
            let name = stream.as_ref().map(|s| s.name.as_str());
            receipt.extend(self.submit_in_pieces(name, events, waits, spool).await?);
        }
        Ok(receipt)
    }

    /// [`Handing::Whole`]: room is reserved in every queue before anything is queued;
    /// with `spool` (and a configured spool) the events are appended to it once the
    /// room is reserved, before they are queued. Gives the events back when the spool
    /// refused them (so that a producer that waits, TCP, can try again).
    async fn submit_whole<'s>(
        &self,
        groups: Vec<(Option<&'s str>, RequestEvents)>,
        waits: bool,
        spool: bool,
    ) -> Result<Receipt, (QueueError, Vec<(Option<&'s str>, RequestEvents)>)> {
        let spool_on = self.spool.as_ref().filter(|_| spool);
        // Per group with rows: its queue and the room reserved in it, or `None` when
        // the rows go to the stream's spill log only (spooled, and the queue has no room
        // now, or older events are still spilled: those go first).
        let mut row_sends: Vec<Option<(&QueueSender<Row>, crate::pipeline::queue::Permit)>> =
            Vec::new();
        let (mut letters, mut letter_bytes) = (Vec::new(), 0);
        for (stream, events) in &groups {
            if let (Some(name), false) = (stream, events.rows.is_empty()) {
                let Some(queue) = self.queues.get(*name) else {
                    return Err((QueueError::Closed, Vec::new()));
                };
                let (n, bytes) = (events.rows.len(), events.row_bytes);
                let reserved = match spool_on.and_then(|s| s.spill(name)) {
                    Some(spill) if spill.has_unread() => Ok(None),
                    // A burst waits briefly for room, as without a spool; only a queue
                    // that stays full (the database is down or slow) spills, because
                    // reading spilled events back costs their validation again.
                    Some(_) => match queue.try_reserve(n, bytes) {
                        Ok(None) => {
                            match tokio::time::timeout(SPILL_AFTER, queue.reserve(n, bytes)).await {
                                Ok(r) => r.map(Some),
                                Err(_) => Ok(None),
                            }
                        }
                        other => other,
                    },
                    None => queue.reserve(n, bytes).await.map(Some),
                };
                match reserved {
                    Ok(permit) => row_sends.push(permit.map(|p| (queue, p))),
                    Err(e) => return Err((e, Vec::new())),
                }
            }
            letter_bytes += events.letter_bytes;
        }
        let letter_count: usize = groups.iter().map(|(_, e)| e.letters.len()).sum();
        let letter_permit = if letter_count == 0 {
            None
        } else {
            match self.dead_letters.reserve(letter_count, letter_bytes).await {
                Ok(p) => Some(p),
                Err(e) => return Err((e, Vec::new())),
            }
        };
        let mut pending = Receipt::default();
        // Everything is appended to the spool before anything is queued, so that a
        // refused append leaves nothing behind.
        let spool = spool_on;
        let spilled: Vec<bool> = row_sends.iter().map(Option::is_none).collect();
        let mut tickets = Vec::new();
        if let Some(spool) = spool {
            match append_all(spool, &groups, &spilled, letter_count) {
                Ok(t) => tickets = t,
                // The reservations are given back as they drop; the events go back.
                Err(e) => return Err((e, groups)),
            }
            pending.durable = tickets
                .iter()
                .map(crate::spool::Ticket::durability)
                .collect();
        }
        let mut tickets = tickets.into_iter();
        let mut row_sends = row_sends.into_iter();
        for (stream, events) in groups {
            record_submitted(stream, &events, &self.stats, &self.dead_letter_log);
            letters.extend(events.letters);
            if stream.is_some() && !events.rows.is_empty() {
                let Some(send) = row_sends.next() else {
                    return Err((QueueError::Closed, Vec::new()));
                };
                let ticket = spool.and_then(|_| tickets.next());
                let Some((queue, permit)) = send else {
                    // Spilled: on disk only; the stream's refill task queues them, and
                    // its ticket releases them. This one must not.
                    if let Some(t) = ticket {
                        t.keep();
                    }
                    continue;
                };
                let (settle, rx) = Settle::new(waits, ticket);
                if let Err(e) = queue.send(permit, events.rows, settle) {
                    return Err((e, Vec::new()));
                }
                pending.receivers.extend(rx);
            }
        }
        if let Some(permit) = letter_permit {
            let (settle, rx) = Settle::new(waits, spool.and_then(|_| tickets.next()));
            if let Err(e) = self.dead_letters.send(permit, letters, settle) {
                return Err((e, Vec::new()));
            }
            pending.receivers.extend(rx);
        }
        Ok(pending)
    }

    /// [`Handing::Pieces`] for the events of one stream (`None`: its dead letters).
    async fn submit_in_pieces(
        &self,
        stream: Option<&str>,
        events: RequestEvents,
        waits: bool,
        spool: bool,
    ) -> Result<Receipt, QueueError> {
        let mut receipt = Receipt::default();
        let row_cap = stream
            .and_then(|s| self.queues.get(s))
            .map(|q| q.capacity())
            .unwrap_or((usize::MAX, usize::MAX));
        let letter_cap = self.dead_letters.capacity();
        let rows = split_to_fit(events.rows, row_cap, Row::memory_size);
        let letters = split_to_fit(events.letters, letter_cap, DeadLetter::memory_size);
        let pieces = (rows.into_iter().map(RequestEvents::of_rows))
            .chain(letters.into_iter().map(RequestEvents::of_letters));
        for mut piece in pieces {
            piece.token = events.token.clone();
            receipt.extend(self.submit_waiting(stream, piece, waits, spool).await?);
        }
        Ok(receipt)
    }

    /// Submits one piece whole, waiting while the spool is full as for a full queue.
    async fn submit_waiting(
        &self,
        stream: Option<&str>,
        events: RequestEvents,
        waits: bool,
        spool: bool,
    ) -> Result<Receipt, QueueError> {
        let mut groups = vec![(stream, events)];
        loop {
            match self.submit_whole(groups, waits, spool).await {
                Ok(receipt) => return Ok(receipt),
                Err((QueueError::Spool(e), back)) if e.is_full() && !back.is_empty() => {
                    groups = back;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Refuses new events; producers waiting for room are told Sluice is shutting down.
    pub fn close(&self) {
        for q in self.queues.values() {
            q.close();
        }
        self.dead_letters.close();
    }

    /// Cancelled by [`Ingest::close`], once every queue is closed: what feeds the queues
    /// has stopped.
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.dead_letters.closing()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_fit_the_queue_bounds() {
        let sizes = |p: &Vec<Vec<usize>>| {
            p.iter()
                .map(|v| v.iter().sum::<usize>())
                .collect::<Vec<_>>()
        };
        let p = super::split_to_fit(vec![1usize; 7], (3, 100), |s| *s);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        let p = super::split_to_fit(vec![40usize, 40, 40, 200, 10], (10, 100), |s| *s);
        assert_eq!(sizes(&p), vec![80, 40, 200, 10]);
        assert!(super::split_to_fit(Vec::<usize>::new(), (3, 100), |s| *s).is_empty());
    }

    /// Each item joins the run before it while that run has room for it, in count and in
    /// bytes; otherwise it starts a run: as a run is filled one item at a time.
    fn filled_one_at_a_time(
        items: &[usize],
        (max_events, max_bytes): (usize, usize),
    ) -> Vec<Vec<usize>> {
        let mut pieces: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0;
        for &item in items {
            match pieces.last_mut() {
                Some(last) if last.len() < max_events && bytes + item <= max_bytes => {
                    bytes += item;
                    last.push(item);
                }
                _ => {
                    bytes = item;
                    pieces.push(vec![item]);
                }
            }
        }
        pieces
    }

    proptest::proptest! {
        #[test]
        fn runs_are_the_runs_filled_one_item_at_a_time(
            items in proptest::collection::vec(0usize..300, 0..60),
            max_events in 1usize..8,
            max_bytes in 1usize..500,
        ) {
            let expected = filled_one_at_a_time(&items, (max_events, max_bytes));
            let got = super::split_to_fit(items, (max_events, max_bytes), |s| *s);
            proptest::prop_assert_eq!(got, expected);
        }
    }
}
