//! Purging dead letters: by age in the background (`[dead_letters] retention`), or on
//! an operator's command (`sluice purge`) by stream, stage and age.
//!
//! In: a [`PurgeFilter`]. Out: deleted rows of `sluice_dead_letters`, oldest first, in
//! batches of [`BATCH`] rows each in its own statement, so that a large purge never
//! holds long locks or a huge transaction against the writers.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::sink::{PurgeFilter, SinkError, Store};

/// Rows deleted per statement.
pub const BATCH: i64 = 1000;
/// Pause between two batches, to leave the database to the writers.
const PAUSE: Duration = Duration::from_millis(20);

/// Deletes every dead letter matching `filter` (its `limit` is the batch size), batch by
/// batch; stops early once `stop` is cancelled. Returns how many it deleted.
pub async fn purge(
    store: &Store,
    filter: &PurgeFilter,
    stop: &CancellationToken,
) -> Result<u64, SinkError> {
    let mut total = 0;
    loop {
        let deleted = store.purge_dead_letters(filter).await?;
        total += deleted;
        crate::telemetry::dead_letters_purged(deleted);
        if deleted < filter.limit as u64 || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = stop.cancelled() => return Ok(total),
        }
    }
}

/// How often the retention purge runs: half the retention, between 1 s and 1 min.
pub fn retention_interval(retention: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes dead letters received more than `retention` ago, every
/// [`retention_interval`], until `stop`.
pub async fn run_retention(store: Arc<Store>, retention: Duration, stop: CancellationToken) {
    let interval = retention_interval(retention);
    loop {
        let age = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let filter = PurgeFilter {
            stream: None,
            stage: None,
            before: chrono::Utc::now().checked_sub_signed(age),
            limit: BATCH,
        };
        if filter.before.is_some() {
            match purge(&store, &filter, &stop).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    retention_s = retention.as_secs(),
                    "Purged dead letters older than the retention."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot purge old dead letters; trying again later.")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
