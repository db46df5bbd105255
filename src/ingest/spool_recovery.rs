//! Start-up recovery: the records the spool held when Sluice stopped (crashed, was
//! killed, lost power) are validated again and written, each stream's in the order it
//! was received, before new input is taken. Their segment files are deleted only once
//! every one of them is committed (or dead-lettered): a crash during recovery replays
//! them again (with `id_field`, a replayed event is stored once).

use std::sync::Arc;

use super::filing::{Event, Filing, Route};
use super::{Handing, Ingest, Until};
use crate::spool::{decode, read_segment, stream_of, Record, Spool};

/// Writes what `spool` held at start-up through `ingest`'s queues, waiting for each
/// commit. Logs and returns on failure (Sluice stopping); the files then stay.
pub async fn recover(spool: &Spool, ingest: &Ingest, stream_field: &str) {
    let leftovers = match spool.leftovers() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Cannot read the spool; its records are left on disk for the next start.");
            return;
        }
    };
    for (log, files) in leftovers {
        let started = std::time::Instant::now();
        let (mut records, mut damaged) = (0, 0);
        // One segment at a time, so recovery holds at most one segment in memory.
        for file in files {
            let (payloads, bad, bytes) = match read_segment(&log, &file) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(file = %file.display(), error = %e, "Cannot read a spool segment; it is left on disk.");
                    continue;
                }
            };
            records += payloads.len();
            damaged += bad;
            if !replay_segment(ingest, &log, &payloads, stream_field).await {
                return;
            }
            if let Err(e) = crate::spool::log::remove_segment(&file) {
                tracing::warn!(file = %file.display(), error = %e, "Could not delete a replayed spool segment.");
            }
            spool.replayed(bytes);
        }
        tracing::info!(
            log = %log,
            records,
            damaged_regions = damaged,
            seconds = started.elapsed().as_secs_f64(),
            "Spool recovered: the events kept from before the restart are written."
        );
    }
}

/// Writes the records of one segment of `log` and waits for their commit; `false` if
/// Sluice is stopping (the segment then stays).
async fn replay_segment(
    ingest: &Ingest,
    log: &str,
    payloads: &[Vec<u8>],
    stream_field: &str,
) -> bool {
    let stream = stream_of(log).and_then(|s| ingest.registry.get(s).cloned());
    let filing = decode_all(ingest, log, stream.as_ref(), payloads, stream_field);
    let receipt = match ingest
        .submit(filing, Until::Committed, Handing::Pieces)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(log, error = %e, "Spool recovery stopped; the records stay on disk.");
            return false;
        }
    };
    if receipt.committed().await.is_err() {
        tracing::warn!(
            log,
            "Sluice stopped during spool recovery; the records stay on disk."
        );
        return false;
    }
    true
}

/// Turns spool records into rows (filed again against `stream`'s current schema, the
/// TCP routing field removed as on the live path) and dead letters.
pub fn decode_all(
    ingest: &Ingest,
    log: &str,
    stream: Option<&Arc<crate::schema::Stream>>,
    payloads: &[Vec<u8>],
    stream_field: &str,
) -> Filing {
    let mut filing = ingest.filing();
    let mut undecodable = 0;
    for payload in payloads {
        match (decode(payload), stream) {
            (
                Some(Record::Row {
                    raw,
                    treated,
                    source,
                    received_at,
                    index,
                }),
                Some(stream),
            ) => {
                let route = Route::again(stream, stream_field, &source);
                let event = match treated {
                    true => Event::treated(index, raw.as_bytes()),
                    false => Event::text(index, raw.as_bytes()),
                };
                filing.file(&route, &source, received_at, [event]);
            }
            (Some(Record::Letter(letter)), _) => filing.keep(letter),
            (Some(Record::Row { .. }), None) | (None, _) => undecodable += 1,
        }
    }
    if undecodable > 0 {
        tracing::warn!(log, undecodable, "Spool records that are not Sluice's (or of a stream no longer configured) were skipped.");
    }
    filing
}
