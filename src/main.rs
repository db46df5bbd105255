//! The `sluice` command: parses the command line, starts logging, and dispatches to
//! `serve` (the default), `check`, `replay` or `openapi`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::commands;

/// jemalloc instead of glibc malloc: Sluice allocates many small, short-lived values per
/// event across threads, and glibc's allocator was a third of the CPU profile under load
/// (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start-up: two arenas (Sluice's threads share them, so
/// memory freed by one thread is reused by the others), and freed pages returned to the
/// OS after a second. Under the flood test this took peak RSS from 83 to 51 MiB.
/// `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "sluice", version, about = "Event-to-SQL ingestion sidecar")]
struct Cli {
    /// Configuration file (default: ./sluice.toml if present, else built-in defaults).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLUICE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Serve,
    /// Load the config and schemas and print each stream's table DDL for the configured database.
    Check,
    /// Re-validate dead letters against the current schemas and write those that now pass.
    Replay {
        /// Only this stream's dead letters.
        #[arg(long)]
        stream: Option<String>,
        /// Only dead letters received at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Report what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay the `route`-stage dead letters (events that named no known stream)
        /// into this stream.
        #[arg(long)]
        into: Option<String>,
    },
    /// Delete dead letters by stream, stage and age (in batches of 1,000 rows).
    Purge {
        /// Only this stream's dead letters.
        #[arg(long)]
        stream: Option<String>,
        /// Only this stage: parse, route, validate or write.
        #[arg(long)]
        stage: Option<String>,
        /// Only dead letters received before this RFC 3339 time...
        #[arg(long, conflicts_with = "older_than")]
        before: Option<String>,
        /// ...or received longer ago than this (e.g. "7d").
        #[arg(long)]
        older_than: Option<String>,
        /// Required to purge with no filter at all (every dead letter).
        #[arg(long)]
        all: bool,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API (the one kept in docs/openapi.json).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => commands::serve(cli.config),
        Command::Check => commands::check(cli.config),
        Command::Replay {
            stream,
            since,
            dry_run,
            into,
        } => commands::replay(cli.config, stream, since, dry_run, into),
        Command::Purge {
            stream,
            stage,
            before,
            older_than,
            all,
        } => commands::purge(cli.config, stream, stage, before, older_than, all),
        Command::Openapi => {
            print!("{}", sluice::http::openapi::document());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
