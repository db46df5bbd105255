//! Retrying a database operation that failed for a transient reason: exponential
//! backoff with full jitter, each attempt bounded in time. One loop for the batchers
//! (which retry without limit, so backpressure reaches the clients) and for replay
//! (which gives up after a few attempts and says why).

use std::time::Duration;

use crate::sink::{BoxFuture, ErrorClass, SinkError};

/// First retry delay cap; doubles per attempt up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Transient failures retried before the last one is returned; `None`: without limit.
    pub max_retries: Option<u32>,
    /// Longest one attempt may take; beyond it the attempt is a transient failure (a
    /// database that drops packets never answers).
    pub attempt_timeout: Duration,
}

/// Runs `op` until it succeeds, fails permanently, or the policy's retries run out.
/// `on_retry(attempt, error, delay)` is called before each wait. Returns the result and
/// how many transient failures were retried.
pub async fn retry<'a, T>(
    policy: RetryPolicy,
    op: impl Fn() -> BoxFuture<'a, Result<T, SinkError>>,
    mut on_retry: impl FnMut(u32, &SinkError, Duration),
) -> (Result<T, SinkError>, u32) {
    let mut retries: u32 = 0;
    loop {
        let result = match tokio::time::timeout(policy.attempt_timeout, op()).await {
            Ok(r) => r,
            Err(_) => Err(SinkError {
                class: ErrorClass::Transient,
                source: format!(
                    "the operation did not finish within database.write_timeout ({} s); the database may be unreachable",
                    policy.attempt_timeout.as_secs_f64()
                )
                .into(),
            }),
        };
        match result {
            Err(e) if e.is_transient() && policy.max_retries.is_none_or(|max| retries < max) => {
                retries = retries.saturating_add(1);
                let delay = backoff(retries);
                on_retry(retries, &e, delay);
                tokio::time::sleep(delay).await;
            }
            done => return (done, retries),
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(MAX, BASE * 2^attempt)]`.
pub fn backoff(attempt: u32) -> Duration {
    let cap = BASE_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(MAX_BACKOFF);
    Duration::from_millis(fastrand::u64(0..=cap.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= MAX_BACKOFF);
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| backoff(10)).collect();
        assert!(samples.len() > 1, "full jitter must vary");
    }

    /// A database that never answers: each attempt ends at `attempt_timeout` as a
    /// transient failure and is retried with backoff. Time is the subject, so it runs
    /// on tokio's paused clock: two minutes of retries take no real time.
    #[tokio::test(start_paused = true)]
    async fn an_attempt_that_never_answers_times_out_and_is_retried() {
        let policy = RetryPolicy {
            max_retries: Some(3),
            attempt_timeout: Duration::from_secs(30),
        };
        let started = tokio::time::Instant::now();
        let real = std::time::Instant::now();
        let mut delays = Vec::new();
        let (result, retries): (Result<(), SinkError>, u32) = retry(
            policy,
            || Box::pin(std::future::pending()),
            |_, e, delay| {
                assert!(e.to_string().contains("write_timeout"), "{e}");
                delays.push(delay);
            },
        )
        .await;
        assert!(result.is_err_and(|e| e.is_transient()));
        assert_eq!(retries, 3);
        let waited: Duration = delays.iter().sum();
        assert_eq!(started.elapsed(), Duration::from_secs(4 * 30) + waited);
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(real.elapsed() < Duration::from_secs(5), "paused time");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_policy_returns_the_last_transient_failure() {
        let policy = RetryPolicy {
            max_retries: Some(2),
            attempt_timeout: Duration::from_secs(1),
        };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let (result, retries): (Result<(), SinkError>, u32) = retry(
            policy,
            || {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(async {
                    Err(SinkError {
                        class: ErrorClass::Transient,
                        source: "reset".into(),
                    })
                })
            },
            |_, _, _| {},
        )
        .await;
        assert!(result.is_err_and(|e| e.is_transient()));
        assert_eq!((retries, calls.into_inner()), (2, 3));
    }
}
