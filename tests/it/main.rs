//! Integration tests: the real server on free ports, real HTTP, real databases.

mod helpers;

mod alerts;
mod api;
mod auth;
mod cli;
mod csv;
mod db_tls;
mod dead_letters;
mod decimals;
mod delivery;
mod durability;
mod errors;
mod evolution;
mod flood;
mod ingest;
mod instances;
mod jetstream;
mod jobs;
mod layers;
mod ledger;
mod memory;
mod metrics;
mod privacy;
mod pull;
mod replay;
mod slow_clients;
mod spool;
mod tcp;
mod tcp_tls;
mod tls;
mod typemap;
mod ui;
mod upsert;
mod webhooks;
mod write_errors;
