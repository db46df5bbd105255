//! `sluice-bench`: measures what Sluice (or any endpoint speaking Sluice's HTTP and TCP contract)
//! commits per second against what the database itself can ingest, in one run.
//!
//! 1. Generates N deterministic bookshop `order_placed` events (seeded).
//! 2. **limit**: writes the same rows straight to the database with its own bulk path
//!    (PostgreSQL COPY, MariaDB multi-row INSERT, SQLite one transaction).
//! 3. **http**: NDJSON bodies of B events over C connections with `ack=commit`.
//! 4. **tcp**: the events as lines over C connections.
//! 5. **rate**: single-event `ack=commit` requests at a fixed rate, for latency.
//! 6. **jetstream1**, **jetstream2** (with `--jetstream`): the events published to a
//!    fresh JetStream stream first (not timed), then drained by 1 and by 2 Sluice
//!    instances sharing one durable consumer, timed from their start to the last row.
//!
//! After each load it waits until every event is a row (counting them), then prints
//! committed events/s, MB/s, latency quantiles, the server's CPU seconds and peak RSS
//! (from /proc), and the ratio to the limit.

/// `rate` as a ratio to each limit measured (connections, rows/s), in their order.
fn ratios(limits: &[(usize, f64)], rate: f64) -> Vec<f64> {
    limits.iter().map(|(_, limit)| rate / limit).collect()
}

mod db;
mod jetstream;
mod load;
mod procfs;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sluice::ingest::body::parse_object;
use sluice::schema::Registry;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load tool: Sluice (or a peer) against the database's own bulk path"
)]
struct Args {
    /// Target database (the one Sluice writes to); SQLite in a temporary directory when absent.
    #[arg(long)]
    database_url: Option<String>,
    /// Events per load (http and tcp each send all of them).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 20_240_501)]
    seed: u64,
    /// Items per order (the generator's own 1 to 5 when absent): e.g. 30 for orders of
    /// about 2.5 KB, to measure the cost per byte.
    #[arg(long)]
    items: Option<usize>,
    /// Events per HTTP request (NDJSON body).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Concurrent TCP connections.
    #[arg(long, default_value_t = 4)]
    tcp_connections: usize,
    /// Requests per second of the fixed-rate load (one event each).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Duration of the fixed-rate load in seconds.
    #[arg(long, default_value_t = 10.0)]
    rate_seconds: f64,
    /// Connections of the fixed-rate load.
    #[arg(long, default_value_t = 64)]
    rate_connections: usize,
    /// Runs of the whole sequence; the table shows each figure's median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Connection counts of the limit runs, comma-separated (default: 1, and as many as
    /// Sluice writes a stream on: 2; SQLite only 1). Each gets a ratio column.
    #[arg(long, value_delimiter = ',')]
    limit_connections: Vec<usize>,
    /// Loads to run, in order, comma-separated: limit, http, tcp, rate, pull (the
    /// events' rows copied into a table of the same database, then pulled from it by
    /// a `[sources]` run into the stream; PostgreSQL and MariaDB).
    #[arg(long, value_delimiter = ',', default_value = "limit,http,tcp,rate")]
    modes: Vec<String>,
    /// The pull mode's `max_connections`: source connections read at once.
    #[arg(long, default_value_t = 1)]
    pull_connections: usize,
    /// The Sluice binary to start (on free ports, against --database-url).
    #[arg(long, default_value = "target/release/sluice")]
    sluice_bin: PathBuf,
    /// Schemas directory for the started Sluice and for the rows of the limit run.
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// Drive an already running server's HTTP address (host:port) instead of starting Sluice.
    #[arg(long, requires = "pid")]
    target_http: Option<String>,
    /// ...and its TCP line address (host:port).
    #[arg(long)]
    target_tcp: Option<String>,
    /// ...and its process id, for CPU seconds and RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// The stream events are sent to.
    #[arg(long, default_value = "order_placed")]
    stream: String,
    /// The table the target writes the stream to (counted to know what is committed).
    #[arg(long, default_value = "order_placed")]
    table: String,
    /// Also print one JSON object per result line on stdout.
    #[arg(long)]
    json: bool,
    /// `ack=` of the http and rate loads: `commit` or `accepted`.
    #[arg(long, default_value = "commit")]
    ack: String,
    /// Spool settings to compare, comma-separated: `off`, or a `spool.fsync` value
    /// (`10ms`, `always`). Each starts its own Sluice (spool in a temporary directory)
    /// and runs the http, tcp and rate loads; use with `--ack accepted`, the answer the
    /// spool makes durable.
    #[arg(long, value_delimiter = ',')]
    spool: Vec<String>,
    /// Also run the JetStream loads (jetstream1, jetstream2) after the others.
    #[arg(long)]
    jetstream: bool,
    /// The NATS server (with JetStream) of the JetStream loads.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

/// What one load measured.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    mode: String,
    events: usize,
    seconds: f64,
    events_per_second: f64,
    mb_per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    cpu_seconds: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// Events/s divided by each limit's, in `--limit-connections` order.
    ratio_to_limits: Vec<f64>,
    note: String,
}

/// The server under test: started here, or given by address and pid.
struct Target {
    http: String,
    tcp: Option<String>,
    pid: u32,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn start_sluice(
    args: &Args,
    url: &str,
    spool: Option<&str>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Target> {
    use std::io::BufRead;
    let mut command = Command::new(&args.sluice_bin);
    if let Some(config) = config {
        command.env("SLUICE_CONFIG", config);
    }
    if let Some(fsync) = spool.filter(|s| *s != "off") {
        let dir =
            std::env::temp_dir().join(format!("sluice-bench-spool-{}-{fsync}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        command
            .env("SLUICE_SPOOL_DIR", dir)
            .env("SLUICE_SPOOL_FSYNC", fsync);
    }
    let mut child = command
        .env("SLUICE_DATABASE_URL", url)
        // The shipped `email_event` hashes addresses: any key of the run's own.
        .env("SLUICE_PRIVACY_KEY_ENV", "SLUICE_BENCH_PRIVACY_KEY")
        .env("SLUICE_BENCH_PRIVACY_KEY", bench_privacy_key())
        .env("SLUICE_SCHEMAS_DIR", &args.schemas)
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_DEFAULT_STREAM", &args.stream)
        .env("SLUICE_LOG_FORMAT", "text")
        .env("RUST_LOG", "info,sqlx=warn")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release`)",
                args.sluice_bin.display()
            )
        })?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let (http, tcp) = loop {
        let line = lines.next().context("Sluice exited before listening")??;
        if let Some(addresses) = sluice::app::listening_addresses(&line) {
            break addresses;
        }
    };
    // Keep draining its logs so that it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("sluice: {line}");
            }
        }
    });
    Ok(Target {
        http,
        tcp: Some(tcp),
        pid: child.id(),
        child: Some(child),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&scratch)?;
            format!("sqlite://{}", scratch.join("bench.db").display())
        }
    };
    let result = bench(&args, &url).await;
    if args.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

async fn bench(args: &Args, url: &str) -> anyhow::Result<()> {
    let mut config = sluice::Config {
        schemas_dir: args.schemas.clone(),
        ..sluice::Config::default()
    };
    // No key file is made up beside a database: the key comes from the environment.
    config.database.url = url.to_owned();
    config.privacy.key_env = Some("SLUICE_BENCH_PRIVACY_KEY".into());
    std::env::set_var("SLUICE_BENCH_PRIVACY_KEY", bench_privacy_key());
    let registry = Registry::load(config.streams_config()).context("cannot load the schemas")?;
    let stream = registry
        .get(&args.stream)
        .with_context(|| format!("no stream `{}` in {}", args.stream, args.schemas.display()))?;
    anyhow::ensure!(
        !stream.has_extra,
        "the limit run supports streams without `_extra` only"
    );

    let generated = Instant::now();
    let mut events = sluice::loadgen::generate(args.events, args.seed);
    if let Some(items) = args.items {
        events = events
            .iter()
            .map(|e| sluice::loadgen::with_items(e, items))
            .collect::<serde_json::Result<_>>()?;
    }
    let events = Arc::new(events);
    let bytes: usize = events.iter().map(|e| e.len() + 1).sum();
    eprintln!(
        "{} events, {:.0} bytes each on average, generated in {:.1} s; database {}",
        events.len(),
        bytes as f64 / events.len().max(1) as f64,
        generated.elapsed().as_secs_f64(),
        sluice::sink::redact(url)
    );
    let mut db = db::Db::connect(url)
        .await
        .context("cannot connect to the database")?;

    let mut runs: Vec<Vec<Outcome>> = Vec::new();
    // (connections, events/s) of each limit run.
    let mut limits: Vec<(usize, f64)> = Vec::new();
    let mut target: Option<Target> = None;
    for run in 1..=args.repeat.max(1) {
        if args.repeat > 1 {
            eprintln!("-- run {run} of {}", args.repeat);
        }
        limits.clear();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let variants: Vec<Option<&str>> = if args.spool.is_empty() {
            vec![None]
        } else {
            args.spool.iter().map(|s| Some(s.as_str())).collect()
        };
        for (v, variant) in variants.iter().enumerate() {
            if !args.spool.is_empty() {
                // A Sluice of its own per spool setting, in every run.
                target = None;
            }
            let label = |mode: &str| match variant {
                Some(s) => format!("{mode}/{s}"),
                None => mode.to_owned(),
            };
            let mut modes = args.modes.clone();
            if args.jetstream && v == 0 {
                modes.extend(["jetstream1".to_owned(), "jetstream2".to_owned()]);
            }
            for mode in &modes {
                if mode == "limit" && v > 0 {
                    continue;
                }
                db.settle().await?;
                if let Some(instances) = mode.strip_prefix("jetstream") {
                    let instances: usize = instances.parse().context("jetstream1 or jetstream2")?;
                    // Its own instances; the HTTP/TCP one would compete for the cores.
                    target = None;
                    db.empty(&args.table).await?;
                    let mut o = jetstream::drain(args, url, &mut db, &events, instances).await?;
                    o.ratio_to_limits = ratios(&limits, o.events_per_second);
                    outcomes.push(o);
                    report(outcomes.last(), args.json);
                    continue;
                }
                if mode == "limit" {
                    let rows = rows_of(stream, &events)?;
                    let counts = match (args.limit_connections.is_empty(), db.dialect()) {
                        (false, _) => args.limit_connections.clone(),
                        // SQLite has one writer; other databases on one connection and on
                        // two, as many as this machine's cores (Sluice writes a stream on
                        // up to 3: BatchWriter::write_concurrency).
                        (true, sluice::sink::Dialect::Sqlite) => vec![1],
                        (true, _) => vec![1, 2],
                    };
                    for connections in counts {
                        db.settle().await?;
                        let (took, how) = db
                            .limit(url, stream, "sluice_bench_limit", &rows, connections, false)
                            .await?;
                        let rate = rows.len() as f64 / took.as_secs_f64();
                        limits.push((connections, rate));
                        outcomes.push(Outcome {
                            mode: format!("limit{connections}"),
                            events: rows.len(),
                            seconds: took.as_secs_f64(),
                            events_per_second: rate,
                            mb_per_second: bytes as f64 / 1e6 / took.as_secs_f64(),
                            p50_ms: None,
                            p99_ms: None,
                            p999_ms: None,
                            cpu_seconds: None,
                            peak_rss_mib: None,
                            ratio_to_limits: Vec::new(),
                            note: how,
                        });
                        report(outcomes.last(), args.json);
                    }
                    continue;
                }
                if mode == "pull" {
                    let mut o = pull_mode(args, url, &mut db, stream, &events).await?;
                    o.ratio_to_limits = ratios(&limits, o.events_per_second);
                    outcomes.push(o);
                    report(outcomes.last(), args.json);
                    continue;
                }
                if target.is_none() {
                    target = Some(match &args.target_http {
                        Some(http) => Target {
                            http: http.clone(),
                            tcp: args.target_tcp.clone(),
                            pid: args.pid.context("--pid is required with --target-http")?,
                            child: None,
                        },
                        None => {
                            let t = start_sluice(args, url, *variant, None)?;
                            eprintln!(
                                "Sluice pid {} on http {} tcp {}, idle RSS {:.1} MiB",
                                t.pid,
                                t.http,
                                t.tcp.as_deref().unwrap_or("-"),
                                procfs::rss_kib(t.pid).unwrap_or(0) as f64 / 1024.0
                            );
                            t
                        }
                    });
                }
                let Some(t) = target.as_ref() else { continue };
                db.empty(&args.table).await.with_context(|| {
                    format!(
                        "cannot empty table {} (does the target create it?)",
                        args.table
                    )
                })?;
                let path = format!("/v1/streams/{}/events?ack={}", args.stream, args.ack);
                let cpu_before = procfs::cpu_seconds(t.pid)?;
                let rss = procfs::RssSampler::start(t.pid);
                let started = Instant::now();
                let (mut latencies, sent, note) = match mode.as_str() {
                    "http" => (
                        load::http_batches(
                            &t.http,
                            &path,
                            events.clone(),
                            args.batch,
                            args.connections,
                        )
                        .await?,
                        events.len(),
                        format!(
                            "NDJSON, {} events per request, {} connections, ack={}{}",
                            args.batch,
                            args.connections,
                            args.ack,
                            variant.map(|s| format!(", spool {s}")).unwrap_or_default()
                        ),
                    ),
                    "tcp" => {
                        let addr = t.tcp.as_deref().context("the target has no TCP listener")?;
                        load::tcp_lines(addr, &events, args.tcp_connections).await?;
                        (
                            load::Latencies::default(),
                            events.len(),
                            format!("json_lines, {} connections", args.tcp_connections),
                        )
                    }
                    "rate" => {
                        let n = ((args.rate * args.rate_seconds) as usize).min(events.len());
                        let subset = Arc::new(events[..n].to_vec());
                        (
                            load::http_fixed_rate(
                                &t.http,
                                &path,
                                subset,
                                args.rate,
                                args.rate_connections,
                            )
                            .await?,
                            n,
                            format!(
                                "1 event per request at {} req/s, {} connections, ack={}",
                                args.rate, args.rate_connections, args.ack
                            ),
                        )
                    }
                    other => anyhow::bail!("unknown mode `{other}`: use limit, http, tcp or rate"),
                };
                let timeout = Duration::from_secs(60 + (sent / 1000) as u64);
                let done = db
                    .wait_for(
                        &args.table,
                        sent as i64,
                        timeout,
                        std::slice::from_ref(&t.http),
                    )
                    .await?;
                let seconds = (done - started).as_secs_f64();
                let cpu = procfs::cpu_seconds(t.pid)? - cpu_before;
                let sent_bytes: usize = events[..sent].iter().map(|e| e.len() + 1).sum();
                let rate = sent as f64 / seconds;
                let has_latency = mode != "tcp";
                outcomes.push(Outcome {
                    mode: label(mode),
                    events: sent,
                    seconds,
                    events_per_second: rate,
                    mb_per_second: sent_bytes as f64 / 1e6 / seconds,
                    p50_ms: has_latency.then(|| latencies.quantile_ms(0.5)),
                    p99_ms: has_latency.then(|| latencies.quantile_ms(0.99)),
                    p999_ms: has_latency.then(|| latencies.quantile_ms(0.999)),
                    cpu_seconds: Some(cpu),
                    peak_rss_mib: Some(rss.peak_mib()),
                    ratio_to_limits: if mode == "rate" {
                        Vec::new()
                    } else {
                        ratios(&limits, rate)
                    },
                    note,
                });
                report(outcomes.last(), args.json);
            }
        }
        runs.push(outcomes);
    }
    let outcomes = medians(&runs);
    if let Some(t) = &target {
        if let Some(kib) = procfs::rss_kib(t.pid) {
            eprintln!("RSS after the loads: {:.1} MiB", kib as f64 / 1024.0);
        }
    }
    println!();
    if runs.len() > 1 {
        println!(
            "medians of {} runs (each ratio is taken within its run):",
            runs.len()
        );
    }
    let ratio_heads: String = limits
        .iter()
        .map(|(c, _)| format!(" {:>8}", format!("/limit{c}")))
        .collect();
    println!(
        "{:<6} {:>9} {:>8} {:>10} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8}{ratio_heads}",
        "mode",
        "events",
        "seconds",
        "events/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9",
        "CPU s",
        "RSS MiB",
    );
    let opt =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"));
    for o in &outcomes {
        let ratios: String = (0..limits.len())
            .map(|i| format!(" {:>8}", opt(o.ratio_to_limits.get(i).copied(), 2)))
            .collect();
        println!(
            "{:<6} {:>9} {:>8.2} {:>10.0} {:>7.1} {:>8} {:>8} {:>8} {:>7} {:>8}{ratios}",
            o.mode,
            o.events,
            o.seconds,
            o.events_per_second,
            o.mb_per_second,
            opt(o.p50_ms, 1),
            opt(o.p99_ms, 1),
            opt(o.p999_ms, 1),
            opt(o.cpu_seconds, 2),
            opt(o.peak_rss_mib, 1),
        );
    }
    Ok(())
}

/// Each field's median over the runs, mode by mode (every run has the same modes).
fn medians(runs: &[Vec<Outcome>]) -> Vec<Outcome> {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let all: Vec<&Outcome> = runs.iter().filter_map(|r| r.get(i)).collect();
            let of = |f: &dyn Fn(&Outcome) -> f64| median(all.iter().map(|o| f(o)).collect());
            let opt = |f: &dyn Fn(&Outcome) -> Option<f64>| {
                let v: Vec<f64> = all.iter().filter_map(|o| f(o)).collect();
                (!v.is_empty()).then(|| median(v))
            };
            Outcome {
                mode: o.mode.clone(),
                events: o.events,
                seconds: of(&|o| o.seconds),
                events_per_second: of(&|o| o.events_per_second),
                mb_per_second: of(&|o| o.mb_per_second),
                p50_ms: opt(&|o| o.p50_ms),
                p99_ms: opt(&|o| o.p99_ms),
                p999_ms: opt(&|o| o.p999_ms),
                cpu_seconds: opt(&|o| o.cpu_seconds),
                peak_rss_mib: opt(&|o| o.peak_rss_mib),
                ratio_to_limits: (0..o.ratio_to_limits.len())
                    .map(|k| of(&|o| o.ratio_to_limits.get(k).copied().unwrap_or(f64::NAN)))
                    .collect(),
                note: o.note.clone(),
            }
        })
        .collect()
}

fn report(outcome: Option<&Outcome>, json: bool) {
    let Some(o) = outcome else { return };
    eprintln!(
        "{}: {} events in {:.2} s = {:.0} events/s ({})",
        o.mode, o.events, o.seconds, o.events_per_second, o.note
    );
    if json {
        if let Ok(line) = serde_json::to_string(o) {
            println!("{line}");
        }
    }
}

/// The sum of the samples of `name` (a metric name, with labels or not) in a
/// Prometheus text page.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The HMAC key of a bench run's treated fields (`x-sluice-privacy`): new per run.
/// The rows of the generated `events` in `stream`, as Sluice would build them.
fn rows_of(
    stream: &sluice::schema::Stream,
    events: &[String],
) -> anyhow::Result<Vec<sluice::event::Row>> {
    let now = chrono::Utc::now();
    let source: Arc<str> = "bench".into();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let value = parse_object(e.as_bytes()).map_err(anyhow::Error::msg)?;
            stream
                .to_row(value, e.as_str().into(), false, source.clone(), i, now)
                .map_err(|e| anyhow::anyhow!("a generated event is invalid: {e:?}"))
        })
        .collect()
}

/// The `pull` mode: the events' rows are copied into `sluice_bench_source` (not timed),
/// then a Sluice of its own pulls them into the stream's table with a `[sources]` run
/// (cursor: the stream's first string property that is unique in the data, `order_id`
/// for the shipped `order_placed`), 5,000 rows per load; timed from the request to the
/// job's end.
async fn pull_mode(
    args: &Args,
    url: &str,
    db: &mut db::Db,
    stream: &sluice::schema::Stream,
    events: &[String],
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        db.dialect() != sluice::sink::Dialect::Sqlite,
        "the pull mode reads from PostgreSQL or MariaDB: give --database-url"
    );
    let rows = rows_of(stream, events)?;
    db.limit(url, stream, "sluice_bench_source", &rows, 1, true)
        .await?;
    // A source's cursor is indexed, as the keyset reads need (each page one index range).
    db.execute("CREATE INDEX sluice_bench_source_cursor ON sluice_bench_source (order_id)")
        .await?;
    db.empty(&args.table).await.ok();
    db.execute("DELETE FROM sluice_pointers WHERE source = 'bench_pull'")
        .await
        .ok();
    let dialect = db.dialect();
    let columns: Vec<String> = stream
        .columns
        .iter()
        .map(|c| dialect.quote(&c.name))
        .collect();
    let config =
        std::env::temp_dir().join(format!("sluice-bench-pull-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[sources.bench_pull]\nurl_env = \"SLUICE_BENCH_SOURCE_URL\"\nquery = {:?}\ncursor = [\"order_id\"]\nstream = {:?}\nload_size = 5000\n{}",
            format!("SELECT {} FROM sluice_bench_source", columns.join(", ")),
            args.stream,
            // Left out at its default, so a Sluice from before the setting runs too.
            match args.pull_connections {
                1 => String::new(),
                n => format!("max_connections = {n}\n"),
            }
        ),
    )?;
    std::env::set_var("SLUICE_BENCH_SOURCE_URL", url);
    let target = start_sluice(args, url, None, Some(&config))?;
    let cpu_before = procfs::cpu_seconds(target.pid)?;
    let rss = procfs::RssSampler::start(target.pid);
    let started = Instant::now();
    let job = load::pull_job(&target.http, "bench_pull").await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(target.pid)? - cpu_before;
    anyhow::ensure!(
        job["state"] == "completed",
        "the pull did not complete: {job}"
    );
    let read = job["result"]["read"].as_u64().unwrap_or(0) as usize;
    anyhow::ensure!(
        read == rows.len(),
        "the pull read {read} of {} rows: {job}",
        rows.len()
    );
    db.execute("DROP TABLE sluice_bench_source").await?;
    let _ = std::fs::remove_file(&config);
    drop(target);
    let bytes: usize = events.iter().map(|e| e.len() + 1).sum();
    Ok(Outcome {
        mode: "pull".into(),
        events: read,
        seconds,
        events_per_second: read as f64 / seconds,
        mb_per_second: bytes as f64 / 1e6 / seconds,
        p50_ms: None,
        p99_ms: None,
        p999_ms: None,
        cpu_seconds: Some(cpu),
        peak_rss_mib: Some(rss.peak_mib()),
        ratio_to_limits: Vec::new(),
        note: "a [sources] run of the same rows from a table of the same database, 5,000 rows per load, cursor order_id".into(),
    })
}

fn bench_privacy_key() -> String {
    format!(
        "sluice-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}
