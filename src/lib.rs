//! Sluice: an event-to-SQL ingestion sidecar.
//!
//! An event arrives over [`http`] (the events endpoint, or a vendor's [`webhook`]), TCP
//! ([`ingest::tcp`]) or JetStream ([`ingest::jetstream`]); [`ingest::filing`] turns its
//! bytes into a [`event::Row`] checked against its stream's schema ([`schema`]), or a
//! [`event::DeadLetter`]; the [`spool`] keeps it on disk when its source is answered
//! before the commit; [`pipeline`] queues and batches them; the storage layer
//! ([`sink`]: a batch writer per database and one shared store) writes them.
//! [`app::App`] wires them together and runs them; [`commands`] are the CLI's entry
//! points. ARCHITECTURE.md has the map.

pub mod app;
pub mod auth;
pub mod commands;
pub mod config;
pub mod event;
pub mod flows;
pub mod http;
pub mod ingest;
pub mod internal_events;
pub mod jobs;
pub mod json_text;
pub mod loadgen;
pub mod log_summary;
pub mod pipeline;
pub mod privacy;
pub mod pull;
pub mod purge;
pub mod replay;
pub mod scan;
pub mod schedule;
pub mod schema;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod sources;
pub mod spool;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod toml_values;
pub mod transforms;
pub mod webhook;

pub use app::App;
pub use config::Config;
