//! The `sluice` command: parses the command line, starts logging, and dispatches to
//! `serve` (the default), `check`, `replay` or `openapi`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::schema::Registry;
use sluice::sink::Dialect;
use sluice::{App, Config};

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
        Command::Serve => serve(cli.config),
        Command::Check => check(cli.config),
        Command::Replay {
            stream,
            since,
            dry_run,
            into,
        } => replay(cli.config, stream, since, dry_run, into),
        Command::Purge {
            stream,
            stage,
            before,
            older_than,
            all,
        } => purge(cli.config, stream, stage, before, older_than, all),
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

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let app = App::build(config).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    // A write still waiting on a database that stopped answering must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn check(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let dialect = Dialect::from_url(&config.database.url)
        .map_err(|m| anyhow::anyhow!("[database].url: {m}"))?;
    let registry = Registry::load(&config)?;
    println!(
        "-- {} ({} streams, database {})",
        config.schemas_dir.display(),
        registry.names().len(),
        dialect.name()
    );
    for sql in dialect.create_dead_letters() {
        println!("{sql};\n");
    }
    for stream in registry.iter() {
        println!(
            "-- stream `{}` from {}",
            stream.name,
            stream.schema_file.display()
        );
        println!("{};\n", dialect.create_table(stream));
    }
    Ok(())
}

fn replay(
    config_path: Option<PathBuf>,
    stream: Option<String>,
    since: Option<String>,
    dry_run: bool,
    into: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let since = since
        .map(|s| sluice::schema::parse_timestamp(&s).map_err(|e| anyhow::anyhow!("--since: {e}")))
        .transpose()?;
    let options = sluice::replay::ReplayOptions {
        stream,
        since,
        dry_run,
        into,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(sluice::replay::replay(&config, &options))?;
    for (stream, r) in &report {
        println!(
            "{stream}: {} {}, {} still failing{}",
            r.replayed,
            if dry_run {
                "would be replayed"
            } else {
                "replayed"
            },
            r.still_failing,
            if r.taken_by_another_run > 0 {
                format!(", {} taken by another replay", r.taken_by_another_run)
            } else {
                String::new()
            }
        );
    }
    if report.is_empty() {
        println!("no dead letters to replay");
    }
    Ok(())
}

fn purge(
    config_path: Option<PathBuf>,
    stream: Option<String>,
    stage: Option<String>,
    before: Option<String>,
    older_than: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    if let Some(stage) = &stage {
        anyhow::ensure!(
            ["parse", "route", "validate", "write"].contains(&stage.as_str()),
            "--stage {stage}: use parse, route, validate or write"
        );
    }
    let before = match (before, older_than) {
        (Some(t), _) => Some(
            sluice::schema::parse_timestamp(&t).map_err(|e| anyhow::anyhow!("--before: {e}"))?,
        ),
        (None, Some(age)) => {
            let age = humantime::parse_duration(&age)
                .map_err(|e| anyhow::anyhow!("--older-than {age:?}: {e}; write e.g. \"7d\""))?;
            let age = chrono::Duration::from_std(age)?;
            Some(
                chrono::Utc::now()
                    .checked_sub_signed(age)
                    .ok_or_else(|| anyhow::anyhow!("--older-than is too long"))?,
            )
        }
        (None, None) => None,
    };
    anyhow::ensure!(
        all || stream.is_some() || stage.is_some() || before.is_some(),
        "give --stream, --stage, --before or --older-than, or --all to delete every dead letter"
    );
    let filter = sluice::sink::PurgeFilter {
        stream,
        stage,
        before,
        limit: sluice::purge::BATCH,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let deleted = runtime.block_on(async {
        let sink = sluice::app::connect(&config.database).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let deleted = sluice::purge::purge(&*sink, &filter, &stop).await;
        sink.close().await;
        anyhow::Ok(deleted?)
    })?;
    println!("{deleted} dead letters deleted");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received."),
        _ = term => tracing::info!("SIGTERM received."),
    }
}
