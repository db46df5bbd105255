//! Summarised logging for problems that can repeat thousands of times a second (a
//! client flooding invalid events): the first occurrence of a kind is logged in full,
//! the rest are counted and logged as one summary line per interval.
//!
//! In: `record(kind, count, example)` from the request path, cheap and lock-light.
//! Out: at most two log lines per kind per interval, whatever the rate.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// One kind of repeated problem, and how its two log lines read.
pub trait Kind: Clone + Eq + Hash {
    /// The line for the first occurrence.
    fn first(&self, example: &str);
    /// The summary of `count` more occurrences in the last `interval`.
    fn repeated(&self, count: u64, interval: Duration, last: &str);
}

/// Events dead-lettered at ingest: a stream (or none) and a pipeline stage.
pub type DeadLetterKind = (Option<String>, &'static str);

impl Kind for DeadLetterKind {
    fn first(&self, example: &str) {
        tracing::warn!(
            stream = self.0.as_deref().unwrap_or("-"),
            stage = self.1,
            error = example,
            "Event dead-lettered; further ones of this stream and stage are summarised per interval."
        );
    }

    fn repeated(&self, count: u64, interval: Duration, last: &str) {
        tracing::warn!(
            stream = self.0.as_deref().unwrap_or("-"),
            stage = self.1,
            count,
            interval_s = interval.as_secs_f64(),
            last_error = %last,
            "More events dead-lettered in the last interval (summary)."
        );
    }
}

#[derive(Debug)]
struct Pending {
    /// Occurrences since the last line for this kind.
    count: u64,
    /// The newest example's message.
    last: String,
}

/// Counts repeated problems between flushes.
#[derive(Debug)]
pub struct LogSummary<K = DeadLetterKind> {
    /// Kinds seen since the last flush; a kind absent here is logged in full when it
    /// next occurs.
    kinds: Mutex<HashMap<K, Pending>>,
}

impl<K> Default for LogSummary<K> {
    fn default() -> Self {
        LogSummary {
            kinds: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain counters: a panic while holding the lock cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: Kind> LogSummary<K> {
    /// Records `count` occurrences of `kind`, `example` being one of their messages.
    pub fn record(&self, kind: K, count: u64, example: &str) {
        let mut kinds = lock(&self.kinds);
        match kinds.get_mut(&kind) {
            Some(p) => {
                p.count += count;
                if p.last != example {
                    example.clone_into(&mut p.last);
                }
            }
            None => {
                let first = kind.clone();
                kinds.insert(
                    kind,
                    Pending {
                        count: count.saturating_sub(1),
                        last: example.to_owned(),
                    },
                );
                drop(kinds);
                first.first(example);
            }
        }
    }

    /// Logs one summary line per kind that repeated since the last flush. A kind that
    /// did not repeat is forgotten, so its next occurrence is logged in full again.
    pub fn flush(&self, interval: Duration) {
        let repeated: Vec<(K, Pending)> = {
            let mut kinds = lock(&self.kinds);
            kinds.retain(|_, p| p.count > 0);
            kinds
                .iter_mut()
                .map(|(k, p)| {
                    let count = std::mem::take(&mut p.count);
                    (
                        k.clone(),
                        Pending {
                            count,
                            last: p.last.clone(),
                        },
                    )
                })
                .collect()
        };
        for (kind, p) in repeated {
            kind.repeated(p.count, interval, &p.last);
        }
    }

    /// Flushes every `interval` until `stop`, then once more.
    pub async fn run(&self, interval: Duration, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(interval),
                _ = stop.cancelled() => break,
            }
        }
        self.flush(interval);
    }

    /// Occurrences counted and not yet summarised, per kind (for tests).
    pub fn pending(&self) -> HashMap<K, u64> {
        lock(&self.kinds)
            .iter()
            .map(|(k, p)| (k.clone(), p.count))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_and_the_rest_counted_until_a_flush() {
        let s = LogSummary::default();
        let kind: DeadLetterKind = (Some("orders".to_owned()), "validate");
        s.record(kind.clone(), 1, "first");
        s.record(kind.clone(), 500, "second");
        s.record(kind.clone(), 499, "third");
        assert_eq!(s.pending()[&kind], 999);
        s.flush(Duration::from_secs(10));
        assert_eq!(s.pending()[&kind], 0, "kept: it repeated in that interval");
        s.flush(Duration::from_secs(10));
        assert!(
            s.pending().is_empty(),
            "a quiet interval forgets the kind, so the next one is logged in full"
        );
    }
}
