//! The commands behind `sluice serve | check | replay | purge`: each loads the
//! configuration, builds what it needs and reports in plain lines. `main.rs` only parses
//! the command line and calls one of these.

use std::path::PathBuf;

use crate::app::App;
use crate::config::Config;
use crate::schema::Registry;
use crate::sink::Dialect;

/// `sluice serve`: runs the sidecar until SIGTERM or Ctrl-C.
pub fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let _hangups = crate::shutdown::hold_hangups();
        let mut stop = Box::pin(crate::shutdown::signal());
        let app = tokio::select! {
            app = App::build(config) => app?,
            () = &mut stop => anyhow::bail!("Stopped by a signal while starting."),
        };
        app.run_until_stopped(stop).await
    });
    // A write still waiting on a database that stopped answering must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// `sluice check`: prints each table's DDL for the configured database, then compares
/// the existing tables with it when the database can be reached.
pub fn check(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = Config::load(config_path.as_deref())?;
    // `check` changes nothing: a privacy key still to be made is pretended.
    config.privacy.creation = crate::privacy::KeyCreation::Pretend;
    let dialect = Dialect::from_url(&config.database.url)
        .map_err(|m| anyhow::anyhow!("[database].url: {m}"))?;
    let registry = Registry::load(config.streams_config())?;
    println!(
        "-- {} ({} streams, database {})",
        config.schemas_dir.display(),
        registry.names().len(),
        dialect.name()
    );
    for sql in dialect.create_dead_letters() {
        println!("{sql};\n");
    }
    println!("{};\n", dialect.create_jobs());
    for stream in registry.iter() {
        println!(
            "-- stream `{}` from {}",
            stream.name,
            stream.schema_file.display()
        );
        println!("{};\n", dialect.create_table(stream));
        if let Some(plan) = &stream.privacy {
            for rule in plan.rules() {
                println!("-- x-sluice-privacy {}", rule.describe());
            }
            println!();
        }
    }
    // Loads the webhooks as `serve` does (secrets included), so a missing secret fails
    // here too, naming the setting.
    crate::webhook::Webhooks::load(&config.webhooks, &registry)?;
    for line in crate::webhook::Webhooks::describe(&config.webhooks, &registry)? {
        println!("-- {line}");
    }
    let graph = config
        .flow_graph(&registry.names())
        .map_err(anyhow::Error::msg)?;
    for name in graph.order() {
        if let Some(t) = graph.transform(&name) {
            let kind = match graph.script(&name, dialect) {
                Ok(script) if script.is_incremental() => "incremental",
                _ => "full refresh",
            };
            let every = t
                .every
                .map(|d| format!(", every {}s", d.as_secs()))
                .unwrap_or_default();
            let publish = t
                .publish
                .as_ref()
                .map(|p| format!(", published to Redis as {:?}", p.key))
                .unwrap_or_default();
            println!(
                "-- transform `{name}` ({}, {kind}{every}{publish}) after {:?}",
                t.sql_file.display(),
                t.after
            );
        }
    }
    compare_tables(&config, &registry)
}

/// `check`'s comparison of the existing tables with the schemas and settings: what
/// start-up would add (new columns, `id_field`'s unique key) and what it would refuse.
/// Read only; skipped, saying so, when the database cannot be reached (or, for SQLite,
/// its file does not exist yet).
fn compare_tables(config: &Config, registry: &Registry) -> anyhow::Result<()> {
    use std::str::FromStr;
    if config.database.url.starts_with("sqlite:") {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(&config.database.url)
            .map_err(|e| anyhow::anyhow!("[database].url: {e}"))?;
        if !options.get_filename().exists() {
            println!(
                "-- {} does not exist yet: start-up creates every table above",
                options.get_filename().display()
            );
            return Ok(());
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pending = runtime.block_on(async {
        let connect = crate::sink::connect_redacted(&config.database);
        let storage = match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
            Ok(Ok(storage)) => storage,
            Ok(Err(e)) => return Ok(Err(format!("{e:#}"))),
            Err(_) => return Ok(Err("no answer within 5 s".to_owned())),
        };
        let streams: Vec<_> = registry.iter().cloned().collect();
        let pending = crate::sink::evolution::pending(&storage.store, &streams).await;
        storage.close().await;
        pending.map(Ok)
    })?;
    let pending = match pending {
        Ok(p) => p,
        Err(why) => {
            println!("-- the existing tables were not compared: {why}");
            return Ok(());
        }
    };
    if pending.changes.is_empty() && pending.problems.is_empty() {
        println!("-- the existing tables match the schemas");
    }
    for change in &pending.changes {
        println!(
            "-- stream `{}`: start-up adds {}: {};",
            change.stream, change.what, change.sql
        );
    }
    anyhow::ensure!(
        pending.problems.is_empty(),
        "start-up would stop: the schemas changed in ways Sluice cannot apply by itself:\n{}",
        pending.problems.join("\n")
    );
    Ok(())
}

/// `sluice replay`: re-validates dead letters and writes those that now pass.
pub fn replay(
    config_path: Option<PathBuf>,
    stream: Option<String>,
    since: Option<String>,
    dry_run: bool,
    into: Option<String>,
) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    let since = since
        .map(|s| crate::schema::parse_timestamp(&s).map_err(|e| anyhow::anyhow!("--since: {e}")))
        .transpose()?;
    let options = crate::replay::ReplayOptions {
        stream,
        since,
        dry_run,
        into,
        stage: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(crate::replay::replay(
        config.streams_config(),
        &config.database,
        &config.replay_settings(),
        &options,
    ))?;
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

/// `sluice purge`: deletes dead letters by stream, stage and age.
pub fn purge(
    config_path: Option<PathBuf>,
    stream: Option<String>,
    stage: Option<String>,
    before: Option<String>,
    older_than: Option<String>,
    all: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_path.as_deref())?;
    if let Some(stage) = &stage {
        crate::event::Stage::named(stage).map_err(|e| anyhow::anyhow!("--stage: {e}"))?;
    }
    let before = match (before, older_than) {
        (Some(t), _) => {
            Some(crate::schema::parse_timestamp(&t).map_err(|e| anyhow::anyhow!("--before: {e}"))?)
        }
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
    let filter = crate::sink::PurgeFilter {
        stream,
        stage,
        before,
        limit: crate::purge::BATCH,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let deleted = runtime.block_on(async {
        let storage = crate::sink::connect_redacted(&config.database).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let deleted = crate::purge::purge(&storage.store, &filter, &stop).await;
        storage.close().await;
        anyhow::Ok(deleted?)
    })?;
    println!("{deleted} dead letters deleted");
    Ok(())
}
