//! Reading spilled events back: when a stream's queue had no room, its spooled events
//! went to its spill log only (on disk, not in memory). One task per stream reads them
//! back, oldest first, as the queue has room, so a database outage is absorbed up to
//! `spool.max_bytes` while memory stays within the queue's bounds. Each piece carries
//! the ticket of its records, released by the batcher after the commit.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::spool_recovery::decode_all;
use super::{Handing, Ingest, Until};
use crate::pipeline::queue::Settle;
use crate::schema::Stream;
use crate::spool::Log;

/// Feeds `stream`'s queue from its spill log `log` until `stop`.
pub async fn refill(
    stream: Arc<Stream>,
    log: Arc<Log>,
    ingest: Arc<Ingest>,
    stream_field: String,
    stop: CancellationToken,
) {
    let Some(queue) = ingest.queue(&stream.name).cloned() else {
        return;
    };
    let (max_events, max_bytes) = queue.capacity();
    // Records read at once: a small part of the queue, so pieces fit it easily (a row
    // takes a few times its text in memory).
    let read_bytes = (max_bytes as u64 / 16).clamp(64 * 1024, 4 * 1024 * 1024);
    loop {
        tokio::select! {
            _ = log.readable() => {}
            _ = stop.cancelled() => return,
        }
        loop {
            let (payloads, mut ticket) = match log.read_next(read_bytes) {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(stream = %stream.name, error = %e, "Cannot read spilled events back; retrying in 1 s (they stay on disk).");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    break;
                }
            };
            let events =
                decode_all(&ingest, log.name(), Some(&stream), &payloads, &stream_field).into_one();
            // The ticket's records are in the order of `payloads`; the rows are too
            // unless some records became dead letters. Then which range is which row is
            // not known, and the whole ticket goes with the last piece (released once
            // that piece commits: a crash before may write earlier pieces twice, never
            // lose one).
            let exact = events.letters.is_empty();
            // Events whose schema changed meanwhile become dead letters (not spooled
            // again: a crash right now could lose those few).
            if !events.letters.is_empty() {
                let mut letters = ingest.filing();
                events.letters.into_iter().for_each(|l| letters.keep(l));
                let queued = ingest.submit(letters, Until::Queued, Handing::Whole);
                if queued.await.is_err() {
                    return;
                }
            }
            let mut rows = events.rows;
            while !rows.is_empty() {
                // As many rows as fit a quarter of the queue, at least one.
                let mut bytes = 0;
                let mut n = 0;
                for row in &rows {
                    let size = row.memory_size();
                    if n > 0 && (n >= max_events / 4 || bytes + size > max_bytes / 4) {
                        break;
                    }
                    bytes += size;
                    n += 1;
                }
                let rest = rows.split_off(n);
                let piece = std::mem::replace(&mut rows, rest);
                let piece_ticket = if rows.is_empty() {
                    Some(ticket.split_off(usize::MAX))
                } else if exact {
                    Some(ticket.split_off(piece.len()))
                } else {
                    None
                };
                let permit = tokio::select! {
                    p = queue.reserve(piece.len(), bytes) => p,
                    _ = stop.cancelled() => return,
                };
                let Ok(permit) = permit else { return };
                let (settle, _) = Settle::new(false, piece_ticket);
                if queue.send(permit, piece, settle).is_err() {
                    return;
                }
            }
            // Records dead-lettered above or undecodable: nothing else will release them.
            ticket.release();
        }
    }
}
