//! Purging dead letters: by age in the background (`[dead_letters] retention`), or on
//! an operator's command (`sluice purge`) by stream, stage and age; and the load
//! ledger's rows by age (`[ledger] retention`).
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
    in_batches(filter.limit, stop, || async {
        let deleted = store.purge_dead_letters(filter).await?;
        crate::telemetry::dead_letters_purged(deleted);
        Ok(deleted)
    })
    .await
}

/// Runs `batch` (which deletes up to `limit` rows and says how many) until it deletes
/// fewer than `limit` or `stop` is cancelled, pausing between batches. Returns how
/// many it deleted in all.
async fn in_batches<F, Fut>(
    limit: i64,
    stop: &CancellationToken,
    batch: F,
) -> Result<u64, SinkError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, SinkError>>,
{
    let mut total = 0;
    loop {
        let deleted = batch().await?;
        total += deleted;
        if deleted < limit as u64 || stop.is_cancelled() {
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

/// What a retention purge deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// `sluice_dead_letters`, by the time they were received (`[dead_letters] retention`).
    DeadLetters,
    /// `sluice_loads`, by the time they were committed (`[ledger] retention`); never
    /// the rows of a stream table.
    Loads,
}

impl Retained {
    fn what(self) -> &'static str {
        match self {
            Retained::DeadLetters => "dead letters",
            Retained::Loads => "ledger rows (sluice_loads)",
        }
    }

    /// Deletes every row older than `before`, batch by batch.
    async fn purge(
        self,
        store: &Store,
        before: chrono::DateTime<chrono::Utc>,
        stop: &CancellationToken,
    ) -> Result<u64, SinkError> {
        match self {
            Retained::DeadLetters => {
                let filter = PurgeFilter {
                    stream: None,
                    stage: None,
                    before: Some(before),
                    limit: BATCH,
                };
                purge(store, &filter, stop).await
            }
            Retained::Loads => in_batches(BATCH, stop, || store.purge_loads(&before, BATCH)).await,
        }
    }
}

/// Deletes the rows of `what` older than `retention`, every [`retention_interval`],
/// until `stop`.
pub async fn run_retention(
    store: Arc<Store>,
    what: Retained,
    retention: Duration,
    stop: CancellationToken,
) {
    let interval = retention_interval(retention);
    loop {
        let age = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        if let Some(before) = chrono::Utc::now().checked_sub_signed(age) {
            match what.purge(&store, before, &stop).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    retention_s = retention.as_secs(),
                    "Purged {} older than the retention.",
                    what.what()
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "Cannot purge old {}; trying again later.",
                    what.what()
                ),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
