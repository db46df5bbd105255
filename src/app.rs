//! The application: builds every part from a [`Config`] and runs until told to stop.
//!
//! `App::build` loads the schemas, connects to the database, creates the tables, and
//! binds the listeners (so tests can ask for port 0 and read the real address).
//! `App::run_until_stopped` serves until its shutdown future resolves, then stops in
//! order: stop accepting, let in-flight requests finish, drain every queue, wait for the
//! batchers up to `shutdown_timeout`, close the database pool.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Access;
use crate::config::Config;
use crate::event::{DeadLetter, Row};
use crate::http::{routers, serve as serve_http, AppState};
use crate::ingest::{tcp, Ingest};
use crate::pipeline::batcher::{Batcher, DeadLetterTable, StreamTarget};
use crate::pipeline::queue::{self, QueueReceiver};
use crate::schema::Registry;
use crate::sink::{self, Storage};
use crate::spool::Spool;
use crate::tls::Tls;
use crate::webhook::Webhooks;

/// A built, bound, not yet running Sluice.
pub struct App {
    config: Config,
    http: TcpListener,
    http_addr: SocketAddr,
    /// The admin listener, when `admin.listen` is set.
    admin: Option<TcpListener>,
    admin_addr: Option<SocketAddr>,
    /// The TCP line listener, unless `tcp.listen` is empty.
    tcp: Option<TcpListener>,
    tcp_addr: Option<SocketAddr>,
    ingest: Arc<Ingest>,
    webhooks: Arc<Webhooks>,
    access: Arc<Access>,
    jobs: Arc<crate::jobs::Jobs>,
    /// The pulled sources and their schedules.
    sources: Arc<crate::sources::Sources>,
    /// The transforms and their schedules.
    transforms: Arc<crate::transforms::Transforms>,
    /// The HTTPS certificate, when `[http.tls]` is set.
    tls: Option<Arc<Tls>>,
    /// The TCP listener's TLS, when `[tcp.tls]` is set.
    tcp_tls: Option<Arc<Tls>>,
    storage: Storage,
    /// Receivers waiting for their batcher tasks, spawned by `run_until_stopped`.
    stream_receivers: Vec<(Arc<crate::schema::Stream>, QueueReceiver<Row>)>,
    dead_letter_receiver: Option<QueueReceiver<DeadLetter>>,
    /// Every task that serves or feeds the queues (listeners, connections, the
    /// JetStream input, spool recovery and refill, log summaries, retention, the job
    /// sweeper, SIGHUP, replay jobs): waited for in the first phase of stopping.
    tasks: TaskTracker,
}

impl App {
    /// Loads schemas, connects to the database, creates the tables and binds the listeners.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        crate::telemetry::install();
        let registry =
            Registry::load(config.streams_config()).context("cannot load the stream schemas")?;
        if let Some(default) = &config.tcp.default_stream {
            anyhow::ensure!(
                registry.get(default).is_some(),
                "tcp.default_stream = {default:?} names no stream; the streams are {:?}",
                registry.names()
            );
        }
        for (name, source) in &config.sources {
            anyhow::ensure!(
                registry.get(&source.stream).is_some(),
                "[sources.{name}] stream = {:?} names no stream; the streams are {:?}",
                source.stream,
                registry.names()
            );
        }
        let graph = config
            .flow_graph(&registry.names())
            .map_err(anyhow::Error::msg)?;
        let webhooks = Arc::new(Webhooks::load(&config.webhooks, &registry)?);
        config.warn_unprotected_listeners();
        let access = Arc::new(Access::load(
            config.auth.as_ref(),
            config.admin.token_env.as_deref(),
        )?);
        let tls = config
            .http
            .tls
            .as_ref()
            .map(|t| Tls::load(t, "[http.tls]", &[b"http/1.1"]))
            .transpose()?
            .map(Arc::new);
        let tcp_tls = config
            .tcp
            .tls
            .as_ref()
            .map(|t| Tls::load(t, "[tcp.tls]", &[]))
            .transpose()?
            .map(Arc::new);
        // The ports and the spool's lock first: a taken port or spool says so before
        // anything is created in the database (or a SQLite file appears).
        let (http, http_addr) = bind(&config.http.listen, "HTTP", "http.listen").await?;
        let (tcp, tcp_addr) = bind_optional(&config.tcp.listen, "TCP lines", "tcp.listen").await?;
        let (admin, admin_addr) =
            bind_optional(&config.admin.listen, "the admin API", "admin.listen").await?;
        let spool = match &config.spool.dir {
            Some(dir) => Some(Arc::new(Spool::open(
                dir.clone(),
                &registry.names(),
                config.spool.fsync,
                config.spool.max_bytes,
            )?)),
            None => None,
        };
        let (registry, storage) = sink::open(&config.database, registry).await?;
        let streams: Vec<_> = registry.iter().cloned().collect();
        let mut queues = HashMap::new();
        let mut stream_receivers = Vec::new();
        for stream in &streams {
            let (tx, rx) = queue::bounded(
                stream.settings.queue_max_events,
                stream.settings.queue_max_bytes,
            );
            queues.insert(stream.name.clone(), tx);
            crate::telemetry::stream_registered(&stream.name, stream.expect_every);
            crate::telemetry::queue_capacity(
                &stream.name,
                stream.settings.queue_max_events,
                stream.settings.queue_max_bytes,
            );
            stream_receivers.push((stream.clone(), rx));
            tracing::info!(
                stream = %stream.name,
                table = %stream.table,
                database = storage.store.dialect().name(),
                batch_max_events = stream.settings.batch_max_events,
                batch_max_wait_ms = stream.settings.batch_max_wait.as_millis() as u64,
                queue_max_events = stream.settings.queue_max_events,
                "Stream ready."
            );
        }
        let (dl_tx, dead_letter_receiver) = queue::bounded(
            config.defaults.queue_max_events,
            config.defaults.queue_max_bytes,
        );
        let max_payload = config
            .dead_letters
            .max_payload_bytes
            .min(storage.store.max_value_bytes());
        let ingest = Arc::new(
            Ingest::new(
                registry,
                queues,
                dl_tx,
                max_payload,
                storage.store.dialect(),
                config.max_inflight_bytes,
            )
            .with_spool(spool),
        );
        let tasks = TaskTracker::new();
        let jobs = crate::jobs::Jobs::new(storage.clone(), config.jobs_settings(), tasks.clone());
        let sources = crate::sources::Sources::new(jobs.clone(), config.sources.clone());
        let transforms = crate::transforms::Transforms::new(jobs.clone(), graph);
        Ok(App {
            config,
            http,
            http_addr,
            admin,
            admin_addr,
            tcp,
            tcp_addr,
            ingest,
            webhooks,
            access,
            jobs,
            sources,
            transforms,
            tls,
            tcp_tls,
            storage,
            stream_receivers,
            dead_letter_receiver: Some(dead_letter_receiver),
            tasks,
        })
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address of the admin listener, if `admin.listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The address the TCP line listener listens on, if enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Serves until `shutdown` resolves, then stops in order (see [`Running::stop`]).
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // The batchers drain and exit once `Running::stop` closes their queues.
        let batchers = self.spawn_batchers();
        // What the spool kept from before a restart is written before new input is
        // taken: HTTP answers 503 and TCP and JetStream wait for `Ingest::recovered`.
        // Only a spool that holds something makes new input wait.
        let leftovers = self
            .ingest
            .spool()
            .is_some_and(|s| s.leftovers().map(|l| !l.is_empty()).unwrap_or(true));
        if let Some(spool) = self.ingest.spool().cloned().filter(|_| leftovers) {
            self.ingest.set_recovering(true);
            let ingest = self.ingest.clone();
            let field = self.config.tcp.stream_field.clone();
            self.tasks.spawn(async move {
                crate::ingest::spool_recovery::recover(&spool, &ingest, &field).await;
                ingest.set_recovering(false);
            });
        }
        // Cancelled when `shutdown` resolves: every input stops accepting.
        let accepting = CancellationToken::new();
        let running = self.spawn_inputs(&accepting, &batchers);
        shutdown.await;
        accepting.cancel();
        running.stop(batchers).await
    }

    /// One batcher task per stream queue, and one for the dead-letter queue.
    fn spawn_batchers(&mut self) -> TaskTracker {
        let tracker = TaskTracker::new();
        let write_timeout = self.config.database.write_timeout;
        for (stream, rx) in std::mem::take(&mut self.stream_receivers) {
            let settings = stream.settings.clone();
            tracker.spawn(
                Batcher {
                    rx,
                    sink: self.storage.writer.clone(),
                    target: StreamTarget {
                        stats: self.ingest.stats(&stream.name).cloned().unwrap_or_default(),
                        stream,
                        max_payload: self.ingest.max_payload(),
                    },
                    settings,
                    concurrency: self.storage.writer.write_concurrency(),
                    per_commit: self.storage.writer.batches_per_commit(),
                    write_timeout,
                }
                .run(),
            );
        }
        if let Some(rx) = self.dead_letter_receiver.take() {
            tracker.spawn(
                Batcher::<DeadLetter> {
                    rx,
                    sink: self.storage.writer.clone(),
                    target: DeadLetterTable,
                    settings: self.config.defaults.clone(),
                    concurrency: 1,
                    per_commit: 1,
                    write_timeout,
                }
                .run(),
            );
        }
        tracker.close();
        tracker
    }

    /// The background tasks, on the app's tracker (the spool's group commits on
    /// `batchers`): spool refill, log summaries, the job sweeper, SIGHUP, retention.
    fn spawn_background(&self, accepting: &CancellationToken, batchers: &TaskTracker) {
        let connections = &self.tasks;
        if let Some(spool) = self.ingest.spool() {
            // The spool's group commits go on until the inputs have stopped and the
            // queues are closed (requests still in flight wait for them), then make a
            // last fsync.
            if let crate::spool::FsyncPolicy::Interval(interval) = spool.fsync() {
                for log in spool.logs() {
                    batchers.spawn(log.clone().flush_every(interval, self.ingest.closing()));
                }
            }
            // Spilled events are read back into each stream's queue as it has room.
            for stream in self.ingest.registry.iter() {
                if let Some(log) = spool.spill(&stream.name) {
                    connections.spawn(crate::ingest::spool_refill::refill(
                        stream.clone(),
                        log.clone(),
                        self.ingest.clone(),
                        self.config.tcp.stream_field.clone(),
                        accepting.clone(),
                    ));
                }
            }
        }
        let (ingest, interval, stop) = (
            self.ingest.clone(),
            self.config.log_summary_interval,
            accepting.clone(),
        );
        connections.spawn(async move { ingest.dead_letter_log.run(interval, stop).await });
        let (webhooks, stop) = (self.webhooks.clone(), accepting.clone());
        connections.spawn(async move { webhooks.refusals.run(interval, stop).await });
        let (access, stop) = (self.access.clone(), accepting.clone());
        connections.spawn(async move { access.refusals.run(interval, stop).await });
        // Jobs whose instance is gone (this one before a restart, or another one) are
        // marked failed, in the background and then every few seconds: it is a write,
        // and the database may be busy (or locked) at start-up.
        if self.sources.scheduled() {
            connections.spawn(self.sources.clone().schedule(accepting.clone()));
        }
        if self.transforms.scheduled() {
            connections.spawn(self.transforms.clone().schedule(accepting.clone()));
        }
        let (jobs, stop) = (self.jobs.clone(), accepting.clone());
        connections.spawn(async move { jobs.watch_interrupted(stop).await });
        connections.spawn(crate::shutdown::on_hangup(
            {
                let (access, tls) = (self.access.clone(), self.tls.clone());
                let tcp_tls = self.tcp_tls.clone();
                move || {
                    access.reload();
                    for tls in [&tls, &tcp_tls].into_iter().flatten() {
                        tls.reload();
                    }
                }
            },
            accepting.clone(),
        ));
        let (store, stop) = (self.storage.store.clone(), accepting.clone());
        connections.spawn(crate::sink::ledger::sweep_expired(
            store,
            self.config.ledger.in_flight_timeout,
            stop,
        ));
        use crate::purge::{run_retention, Retained};
        for (what, retention) in [
            (Retained::DeadLetters, self.config.dead_letters.retention),
            (Retained::Loads, self.config.ledger.retention),
        ] {
            if let Some(retention) = retention {
                let (store, stop) = (self.storage.store.clone(), accepting.clone());
                connections.spawn(run_retention(store, what, retention, stop));
            }
        }
    }

    /// The inputs (HTTP, the admin listener, TCP, JetStream) and the background tasks
    /// ([`App::spawn_background`]), on the app's tracker, all stopping when
    /// `accepting` is cancelled.
    fn spawn_inputs(self, accepting: &CancellationToken, batchers: &TaskTracker) -> Running {
        let connections = self.tasks.clone();
        self.spawn_background(accepting, batchers);
        if let Some(js) = self.config.jetstream.clone() {
            // Like TCP, JetStream waits until the spool's leftovers are written; its
            // acknowledgements run on `connections`, so stopping waits for them.
            let input = crate::ingest::jetstream::run(
                js,
                Arc::new(self.config.tcp.clone()),
                self.ingest.clone(),
                accepting.clone(),
                connections.clone(),
            );
            let (ingest, stop) = (self.ingest.clone(), accepting.clone());
            connections.spawn(async move {
                tokio::select! {
                    _ = ingest.recovered() => input.await,
                    _ = stop.cancelled() => {}
                }
            });
        }
        if let Some(listener) = self.tcp {
            let config = Arc::new(self.config.tcp.clone());
            let serve = tcp::serve(
                listener,
                self.ingest.clone(),
                config,
                self.tcp_tls.clone(),
                accepting.clone(),
                connections.clone(),
            );
            let (ingest, stop) = (self.ingest.clone(), accepting.clone());
            connections.spawn(async move {
                tokio::select! {
                    _ = ingest.recovered() => serve.await,
                    _ = stop.cancelled() => {}
                }
            });
        }
        let state = AppState {
            ingest: self.ingest.clone(),
            store: self.storage.store.clone(),
            http: Arc::new(self.config.http.clone()),
            webhooks: self.webhooks.clone(),
            access: self.access.clone(),
            jobs: self.jobs.clone(),
            sources: self.sources.clone(),
            transforms: self.transforms.clone(),
            site: Arc::new(crate::http::site::SiteGuard::new(
                &self.config.http,
                &[&self.config.http.listen, &self.config.admin.listen],
            )),
        };
        let show = |addr: Option<SocketAddr>, none: &str| {
            addr.map_or_else(|| none.to_owned(), |a| a.to_string())
        };
        tracing::info!(
            http = %self.http_addr,
            admin = %show(self.admin_addr, "same-as-http"),
            tcp = %show(self.tcp_addr, "disabled"),
            https = self.tls.is_some(),
            tcp_tls = self.tcp_tls.is_some(),
            "Sluice is listening."
        );
        let http_config = Arc::new(self.config.http.clone());
        let (ingest_router, admin_router) = routers(state, self.admin.is_some());
        if let (Some(listener), Some(router)) = (self.admin, admin_router) {
            connections.spawn(serve_http(
                listener,
                router,
                http_config.clone(),
                self.tls.clone(),
                accepting.clone(),
            ));
        }
        let http = connections.spawn(serve_http(
            self.http,
            ingest_router,
            http_config,
            self.tls.clone(),
            accepting.clone(),
        ));
        Running {
            http,
            connections,
            jobs: self.jobs,
            ingest: self.ingest,
            storage: self.storage,
            timeout: self.config.shutdown_timeout,
        }
    }
}

/// A serving Sluice, what [`Running::stop`] needs to stop it.
struct Running {
    /// The main HTTP listener's task (it waits for its in-flight requests).
    http: tokio::task::JoinHandle<()>,
    /// Every other task of [`App::tasks`] (the HTTP listener's is among them).
    connections: TaskTracker,
    jobs: Arc<crate::jobs::Jobs>,
    ingest: Arc<Ingest>,
    storage: Storage,
    timeout: std::time::Duration,
}

impl Running {
    /// Stops within `shutdown_timeout`, in order: running jobs are cancelled, in-flight
    /// requests and connections get
    /// the first half (so a slow client cannot eat the flush time), the queues refuse
    /// more, the batchers drain in the rest, the database pool closes.
    async fn stop(self, batchers: TaskTracker) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        let grace = started + self.timeout / 2;
        // Replay jobs stop after the page they are writing, recorded as cancelled.
        self.jobs.cancel_all();
        let served = tokio::time::timeout_at(grace, self.http).await;
        tracing::info!(
            events_queued = self.ingest.queued_events(),
            "Shutting down: no new requests or connections; flushing queues."
        );
        self.connections.close();
        let _ = tokio::time::timeout_at(grace, self.connections.wait()).await;
        // Closing the queues is what tells the batchers to drain and stop, and the
        // spool's group commits to make their last fsync.
        self.ingest.close();
        let drained = tokio::time::timeout_at(deadline, batchers.wait())
            .await
            .is_ok();
        if drained {
            tracing::info!("Every queue is flushed.");
        } else {
            tracing::error!(
                events_left = self.ingest.queued_events(),
                timeout_s = self.timeout.as_secs(),
                "Queues were not flushed within shutdown_timeout (is the database down?); unflushed events are lost."
            );
        }
        // Closing waits for connections in use; a database that stopped answering must
        // not hold the exit past the budget.
        if tokio::time::timeout_at(deadline, self.storage.close())
            .await
            .is_err()
        {
            tracing::warn!("The database connections did not close within shutdown_timeout; exiting without them.");
        }
        match served {
            Ok(joined) => joined.context("the HTTP server task failed")?,
            Err(_) => tracing::warn!(
                "In-flight HTTP requests did not finish within half of shutdown_timeout; they were answered 503 or cut off."
            ),
        }
        anyhow::ensure!(
            drained,
            "shutdown_timeout elapsed before the queues were flushed"
        );
        Ok(())
    }
}

/// Binds `addr` for `what`, or nothing when `addr` is empty (the listener is disabled).
/// Binds `addr` (the setting `key`) for `what`; the error says how to choose another.
async fn bind(addr: &str, what: &str, key: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        let var = format!("SLUICE_{}", key.replace('.', "_").to_ascii_uppercase());
        format!(
            "cannot listen for {what} on {addr}: choose another address with {key} in the config file (--config PATH) or {var}=127.0.0.1:PORT"
        )
    })?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// [`bind`], or nothing when `addr` is empty (the listener is off).
async fn bind_optional(
    addr: &str,
    what: &str,
    key: &str,
) -> anyhow::Result<(Option<TcpListener>, Option<SocketAddr>)> {
    if addr.is_empty() {
        return Ok((None, None));
    }
    let (listener, local) = bind(addr, what, key).await?;
    Ok((Some(listener), Some(local)))
}

/// The `http=` and `tcp=` addresses of the "Sluice is listening." log line (text
/// format), for tools and tests that start the binary on port 0.
pub fn listening_addresses(line: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        line.find(name).map(|p| {
            line[p + name.len()..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned()
        })
    };
    Some((field(" http=")?, field(" tcp=")?))
}
