//! The bounded per-stream queue. Backpressure lives here.
//!
//! Capacity is counted in events *and* in bytes of the memory the events hold (their JSON
//! text and decoded values, [`crate::event::Row::memory_size`]), with one semaphore each.
//! A producer reserves room for a whole request before sending anything, so a request is
//! accepted entirely or not at all; the room is given back only when the batcher has
//! committed (or dead-lettered) those events, so events in a batch being written still
//! count. That keeps memory bounded whatever the input rate (before the queue, the
//! memory budget of input being decoded, `max_inflight_bytes`, bounds what comes before). The policy
//! when full is the producer's: HTTP waits at most `enqueue_timeout` and answers 503;
//! TCP waits, which stops reading the socket so that TCP flow control slows the sender.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// A write-stage failure reported back to the producer that asked for an acknowledgement.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Position of the event in its request.
    pub index: usize,
    /// The database's message.
    pub error: String,
}

/// What the batcher reports once an envelope's events are committed or dead-lettered.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events that the database refused and that were dead-lettered instead.
    pub rejected: Vec<Rejected>,
    /// Events that could not be stored at all: the database refused them and their
    /// dead letters (or, for a dead letter, itself). Never acknowledged as stored.
    pub lost: Vec<Rejected>,
}

/// Room reserved in a queue; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    _events: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The one outcome of an envelope, resolved by the writer once its events are committed
/// or dead-lettered (or could not be stored): both what learns of it through the queue
/// watch it, the producer waiting for the commit ([`oneshot`]: the HTTP answer,
/// JetStream's acknowledgement, TCP's read-ahead) and the spool's ticket for the
/// records, released when nothing was lost.
#[derive(Default)]
pub struct Settle {
    pub waiter: Option<oneshot::Sender<Outcome>>,
    pub spooled: Option<crate::spool::Ticket>,
}

impl Settle {
    /// The settle of an envelope whose records `spooled` holds (if any) and, when the
    /// producer `waits` for the commit, the receiver it watches.
    pub fn new(
        waits: bool,
        spooled: Option<crate::spool::Ticket>,
    ) -> (Settle, Option<oneshot::Receiver<Outcome>>) {
        let (waiter, rx) = match waits {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        (Settle { waiter, spooled }, rx)
    }

    /// Tells both of `outcome`.
    pub fn resolve(self, outcome: Outcome) {
        // Committed (or dead-lettered): the spool need not replay them. Events that
        // could not be stored at all stay in the spool, for the next start.
        if let Some(ticket) = self.spooled {
            if outcome.lost.is_empty() {
                ticket.release();
            } else {
                drop(ticket);
            }
        }
        if let Some(waiter) = self.waiter {
            // The producer may have gone away; the events are stored all the same.
            let _ = waiter.send(outcome);
        }
    }
}

/// The events of a request (a chunk of TCP lines, a batch of messages, a piece of any
/// of them), with the room they hold.
pub struct Envelope<T> {
    pub items: Vec<T>,
    pub permit: Permit,
    pub settle: Settle,
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{events} events of {bytes} bytes can never fit a queue of {max_events} events and {max_bytes} bytes")]
    TooLarge {
        events: usize,
        bytes: usize,
        max_events: usize,
        max_bytes: usize,
    },
    #[error("the queue is closed: Sluice is shutting down")]
    Closed,
    /// The spool refused the append (its disk budget or the disk is full, or an I/O
    /// error); nothing was queued.
    #[error("{0}")]
    Spool(crate::spool::SpoolError),
}

/// The producing side of a queue; cheap to clone.
pub struct QueueSender<T> {
    tx: mpsc::UnboundedSender<Envelope<T>>,
    events: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_events: usize,
    max_bytes: usize,
    /// Cancelled by [`QueueSender::close`]; tells the receiver to drain and stop.
    closed: CancellationToken,
}

impl<T> QueueSender<T> {
    /// Cancelled once the queue is closed (shutdown).
    pub fn closing(&self) -> CancellationToken {
        self.closed.clone()
    }
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            tx: self.tx.clone(),
            events: self.events.clone(),
            bytes: self.bytes.clone(),
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            closed: self.closed.clone(),
        }
    }
}

/// The consuming side of a queue, owned by the batcher.
pub struct QueueReceiver<T> {
    rx: mpsc::UnboundedReceiver<Envelope<T>>,
    closed: CancellationToken,
}

impl<T> QueueReceiver<T> {
    /// The next envelope; `None` once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<Envelope<T>> {
        self.rx.recv().await
    }

    /// An envelope already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Envelope<T>> {
        self.rx.try_recv().ok()
    }

    /// Cancelled once the producers close the queue (shutdown).
    pub fn closing(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Refuses envelopes not yet sent: what is queued is all there will be, and `recv`
    /// returns `None` once it is taken.
    pub fn stop_receiving(&mut self) {
        self.rx.close();
    }
}

/// A queue holding at most `max_events` events and `max_bytes` bytes.
pub fn bounded<T>(max_events: usize, max_bytes: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let max_bytes = max_bytes.min(u32::MAX as usize);
    let closed = CancellationToken::new();
    let sender = QueueSender {
        tx,
        events: Arc::new(Semaphore::new(max_events)),
        bytes: Arc::new(Semaphore::new(max_bytes)),
        max_events,
        max_bytes,
        closed: closed.clone(),
    };
    (sender, QueueReceiver { rx, closed })
}

impl<T> QueueSender<T> {
    /// The bytes to reserve for `events` events of `bytes` bytes (one oversized event
    /// takes the whole budget), or why they can never fit.
    fn fits(&self, events: usize, bytes: usize) -> Result<usize, QueueError> {
        let bytes = if events == 1 {
            bytes.min(self.max_bytes)
        } else {
            bytes
        };
        if events > self.max_events || bytes > self.max_bytes {
            return Err(QueueError::TooLarge {
                events,
                bytes,
                max_events: self.max_events,
                max_bytes: self.max_bytes,
            });
        }
        Ok(bytes)
    }

    /// Waits until the queue has room for `events` events of `bytes` bytes in all.
    /// Cancel-safe: dropping the future gives back whatever it had reserved.
    ///
    /// A single event larger than the byte budget (possible only for a dead letter whose
    /// escaped payload outgrows its line) takes the whole budget: it waits for an empty
    /// queue and holds it alone, so memory stays bounded by the larger of the two.
    pub async fn reserve(&self, events: usize, bytes: usize) -> Result<Permit, QueueError> {
        let bytes = self.fits(events, bytes)?;
        let acquire = |sem: &Arc<Semaphore>, n: usize| {
            let sem = sem.clone();
            async move {
                if n == 0 {
                    return Ok(None);
                }
                // n <= max, and max fits u32 (checked in `bounded` and above).
                sem.acquire_many_owned(n as u32)
                    .await
                    .map(Some)
                    .map_err(|_| QueueError::Closed)
            }
        };
        let events = acquire(&self.events, events).await?;
        let bytes = acquire(&self.bytes, bytes).await?;
        Ok(Permit {
            _events: events,
            _bytes: bytes,
        })
    }

    /// [`QueueSender::reserve`] without waiting: `Ok(None)` when there is no room now.
    pub fn try_reserve(&self, events: usize, bytes: usize) -> Result<Option<Permit>, QueueError> {
        let bytes = self.fits(events, bytes)?;
        let take = |sem: &Arc<Semaphore>,
                    n: usize|
         -> Result<Option<Option<OwnedSemaphorePermit>>, QueueError> {
            if n == 0 {
                return Ok(Some(None));
            }
            match sem.clone().try_acquire_many_owned(n as u32) {
                Ok(p) => Ok(Some(Some(p))),
                Err(tokio::sync::TryAcquireError::NoPermits) => Ok(None),
                Err(tokio::sync::TryAcquireError::Closed) => Err(QueueError::Closed),
            }
        };
        let Some(events) = take(&self.events, events)? else {
            return Ok(None);
        };
        let Some(bytes) = take(&self.bytes, bytes)? else {
            return Ok(None);
        };
        Ok(Some(Permit {
            _events: events,
            _bytes: bytes,
        }))
    }

    /// Hands reserved events to the batcher.
    pub fn send(&self, permit: Permit, items: Vec<T>, settle: Settle) -> Result<(), QueueError> {
        self.tx
            .send(Envelope {
                items,
                permit,
                settle,
            })
            .map_err(|_| QueueError::Closed)
    }

    /// The queue's bounds: events and bytes.
    pub fn capacity(&self) -> (usize, usize) {
        (self.max_events, self.max_bytes)
    }

    /// Events and bytes currently held (queued or being written).
    pub fn depth(&self) -> (usize, usize) {
        (
            self.max_events - self.events.available_permits(),
            self.max_bytes - self.bytes.available_permits(),
        )
    }

    /// Whether the queue is at its limit in events or bytes.
    pub fn is_full(&self) -> bool {
        self.events.available_permits() == 0 || self.bytes.available_permits() == 0
    }

    /// Refuses new reservations (producers waiting for room get [`QueueError::Closed`])
    /// and tells the batcher to write what is queued and stop.
    pub fn close(&self) {
        self.events.close();
        self.bytes.close();
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_is_given_back_only_when_the_envelope_is_dropped() {
        let (tx, mut rx) = bounded::<u8>(3, 100);
        let p = tx.reserve(3, 10).await.unwrap();
        tx.send(p, vec![1, 2, 3], Settle::default()).unwrap();
        assert_eq!(tx.depth(), (3, 10));
        assert!(tx.is_full());
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.reserve(1, 1)).await;
        assert!(blocked.is_err(), "a full queue must make the producer wait");
        let env = rx.recv().await.unwrap();
        assert_eq!(tx.depth(), (3, 10), "events being written still count");
        drop(env);
        assert_eq!(tx.depth(), (0, 0));
        assert!(tx.reserve(1, 1).await.is_ok());
    }

    #[tokio::test]
    async fn requests_that_can_never_fit_are_refused_at_once() {
        let (tx, _rx) = bounded::<u8>(3, 100);
        assert!(matches!(
            tx.reserve(4, 1).await,
            Err(QueueError::TooLarge { .. })
        ));
        assert!(matches!(
            tx.reserve(2, 101).await,
            Err(QueueError::TooLarge { .. })
        ));
        let whole = tx
            .reserve(1, 500)
            .await
            .expect("one oversized event takes the whole budget");
        assert_eq!(tx.depth(), (1, 100));
        drop(whole);
    }

    #[tokio::test]
    async fn closing_wakes_waiting_producers() {
        let (tx, _rx) = bounded::<u8>(1, 100);
        let held = tx.reserve(1, 1).await.unwrap();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move { tx2.reserve(1, 1).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.close();
        assert!(matches!(waiter.await.unwrap(), Err(QueueError::Closed)));
        drop(held);
    }
}
