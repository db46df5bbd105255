//! Sluice: an event-to-SQL ingestion sidecar.
//!
//! An event enters through [`ingest`] (HTTP), is checked against its stream's schema
//! ([`schema`]), is queued and batched by [`pipeline`], and is written by a [`sink`], or
//! set aside as a dead letter ([`event::DeadLetter`]). [`app::App`] wires them together.

pub mod app;
pub mod commands;
pub mod config;
pub mod event;
pub mod http;
pub mod ingest;
pub mod json_text;
pub mod loadgen;
pub mod log_summary;
pub mod pipeline;
pub mod purge;
pub mod replay;
pub mod schema;
pub mod shutdown;
pub mod sink;
pub mod stats;
pub mod telemetry;

pub use app::App;
pub use config::Config;
