//! The memory budget of input being decoded: request bodies as they are read and
//! decompressed, and the JSON values they parse into, before their rows reach a queue
//! (whose own byte budget takes over from there).
//!
//! A reservation is taken *before* each step that allocates (reading a chunk of body,
//! decompressing a chunk, parsing), so a small gzip body that inflates to 10 MiB, or 10
//! MiB of `[1,1,1,…]` that would parse into 160 MiB of values, waits for room or is
//! refused instead of being built. HTTP waits at most `enqueue_timeout` (then 503), TCP
//! waits as long as it takes (which pauses reading the socket).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes counted per permit: the semaphore counts KiB so that budgets above 4 GiB fit
/// its `u32` reservations.
const UNIT: usize = 1024;
/// Bytes of parsed values counted per structural byte (`,` `:` `[` `{`) of JSON text:
/// each such byte can start a value of 32 bytes (`serde_json::Value`), and vectors and
/// maps hold up to twice what they use while they grow.
const BYTES_PER_VALUE: usize = 32;

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget: it can never fit.
    #[error("decoding this input needs about {needed} bytes of memory, more than max_inflight_bytes ({budget} bytes)")]
    TooLarge { needed: usize, budget: usize },
    /// The budget stayed exhausted for the whole wait.
    #[error("Sluice is at its memory budget for input being decoded (max_inflight_bytes)")]
    Busy,
}

/// Memory that input being decoded may hold at once.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    /// The budget in bytes.
    bytes: usize,
}

/// Memory reserved from a [`MemoryBudget`]; given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permits: Option<OwnedSemaphorePermit>,
    /// The bytes asked for so far. Permits are whole KiB: small reservations (a body
    /// sent a byte per chunk) are added up here and take a permit only once their sum
    /// needs one, so a client cannot hold a KiB of budget per byte it sends.
    bytes: usize,
}

impl Reservation {
    /// Adds `more` to this reservation.
    fn merge(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.permits {
            Some(p) => p.merge(more),
            None => self.permits = Some(more),
        }
    }
}

impl MemoryBudget {
    pub fn new(bytes: usize) -> MemoryBudget {
        let units = bytes.div_ceil(UNIT).clamp(1, u32::MAX as usize);
        MemoryBudget {
            units: Arc::new(Semaphore::new(units)),
            bytes,
        }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes reserved right now.
    pub fn in_use(&self) -> usize {
        let total = self.bytes.div_ceil(UNIT).clamp(1, u32::MAX as usize);
        (total - self.units.available_permits()) * UNIT
    }

    /// Adds `bytes` to `held`, waiting at most `wait` for room (forever when `None`).
    /// A reservation that, with what `held` already has, exceeds the whole budget fails
    /// at once with [`BudgetError::TooLarge`].
    pub async fn reserve(
        &self,
        held: &mut Reservation,
        bytes: usize,
        wait: Option<Duration>,
    ) -> Result<(), BudgetError> {
        let total_units = self.bytes.div_ceil(UNIT).clamp(1, u32::MAX as usize);
        let already = held.permits.as_ref().map_or(0, |p| p.num_permits());
        let wanted = held.bytes.saturating_add(bytes);
        let units = wanted.div_ceil(UNIT).saturating_sub(already);
        if units + already > total_units {
            return Err(BudgetError::TooLarge {
                needed: (units + already) * UNIT,
                budget: self.bytes,
            });
        }
        if units == 0 {
            held.bytes = wanted;
            return Ok(());
        }
        // units <= total_units <= u32::MAX (checked above).
        let acquire = self.units.clone().acquire_many_owned(units as u32);
        let permit = match wait {
            Some(wait) => tokio::time::timeout(wait, acquire)
                .await
                .map_err(|_| BudgetError::Busy)?,
            None => acquire.await,
        }
        // The semaphore is never closed.
        .map_err(|_| BudgetError::Busy)?;
        held.merge(permit);
        held.bytes = wanted;
        Ok(())
    }
}

/// An upper estimate of the memory that parsing `json` into values takes: the text
/// itself plus [`BYTES_PER_VALUE`] per byte that can start a value or an entry. It is
/// a count over the bytes, sixteen at a time, cheap next to the parse it guards: it
/// runs over every body on the hot path.
pub fn decode_estimate(json: &[u8]) -> usize {
    let structural = crate::scan::count_of(json, [b',', b':', b'[', b'{']);
    json.len() + (structural + 1) * BYTES_PER_VALUE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_the_values_a_text_can_hold() {
        assert_eq!(decode_estimate(b"1"), 1 + 32);
        let numbers = format!("[{}1]", "1,".repeat(1000));
        assert!(decode_estimate(numbers.as_bytes()) >= 1000 * 32);
        let event = br#"{"order_id": "A-1", "total": 12.5, "items": [{"sku": "b1", "qty": 1}]}"#;
        assert!(decode_estimate(event) < 20 * event.len());
    }

    #[tokio::test]
    async fn small_reservations_are_added_up_not_rounded_each() {
        let budget = MemoryBudget::new(1024 * 1024);
        let mut held = Reservation::default();
        for _ in 0..10_000 {
            budget.reserve(&mut held, 2, None).await.unwrap();
        }
        // 20,000 bytes: 20 KiB of permits, not 10,000 KiB.
        assert_eq!(budget.in_use(), 20 * 1024);
    }

    #[tokio::test]
    async fn reservations_wait_for_room_and_fail_beyond_the_budget() {
        let budget = MemoryBudget::new(10 * 1024);
        let mut a = Reservation::default();
        budget.reserve(&mut a, 8 * 1024, None).await.unwrap();
        assert_eq!(budget.in_use(), 8 * 1024);
        let mut b = Reservation::default();
        assert!(matches!(
            budget
                .reserve(&mut b, 4 * 1024, Some(Duration::from_millis(20)))
                .await,
            Err(BudgetError::Busy)
        ));
        assert!(matches!(
            budget.reserve(&mut a, 4 * 1024, None).await,
            Err(BudgetError::TooLarge { .. })
        ));
        drop(a);
        budget
            .reserve(&mut b, 4 * 1024, Some(Duration::from_millis(20)))
            .await
            .unwrap();
        assert_eq!(budget.in_use(), 4 * 1024);
    }
}
