//! Queues and batchers: the bounded hand-off between ingest and the sinks.

pub mod batcher;
pub mod queue;
