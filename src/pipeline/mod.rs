//! Queues, batchers and retries: the bounded hand-off between ingest and the database.

pub mod batcher;
pub mod queue;
pub mod retry;
