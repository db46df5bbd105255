//! Background jobs: long operations (replaying dead letters, pulling a source, running a
//! flow of transforms, see [`flow`]) run by the server, with their state, progress, logs
//! and errors visible while they run and kept in the `sluice_jobs` table afterwards.
//!
//! In: a request to start a job, or to cancel one. Out: a job that goes `ready →
//! running → completed | failed | cancelled`, recorded in the database at each change
//! and twice a second while it runs. A job that was running when Sluice stopped is
//! marked `failed` at the next start ([`Jobs::recover`]); one whose instance stopped
//! recording it (its heartbeat older than `[jobs] stale_after`) is marked `failed` by
//! the sweep every instance runs every `[jobs] sweep_every`. The replay itself is
//! [`crate::replay::replay_with`], the same code the `sluice replay` command runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod flow;

pub use flow::{FlowRequest, TaskView};

use crate::replay::{replay_with, Progress, ReplayOptions, StreamReport};
use crate::sink::{JobHeader, JobRecord, SinkError, Storage};
use crate::toml_values::duration;

/// `[jobs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// A running job whose instance has not recorded it for this long (it does every
    /// 500 ms) belongs to an instance that is gone, and is marked failed.
    #[serde(default = "default_job_stale_after", deserialize_with = "duration")]
    pub stale_after: Duration,
    /// How often each instance looks for such jobs.
    #[serde(default = "default_job_sweep_every", deserialize_with = "duration")]
    pub sweep_every: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            stale_after: default_job_stale_after(),
            sweep_every: default_job_sweep_every(),
        }
    }
}

fn default_job_stale_after() -> Duration {
    Duration::from_secs(10)
}

fn default_job_sweep_every() -> Duration {
    Duration::from_secs(5)
}

/// What the jobs take from the configuration.
#[derive(Debug, Clone)]
pub struct JobsSettings {
    pub jobs: JobsConfig,
    /// Where the schemas are read from: a replay reads them afresh, so that a schema
    /// fixed on disk applies to the replay without a restart.
    pub streams: crate::schema::StreamsSource,
    pub replay: crate::replay::ReplaySettings,
    /// `[sources.NAME]`.
    pub sources: std::collections::BTreeMap<String, crate::pull::SourceConfig>,
    /// `[transforms.NAME]` and `[flows]`.
    pub transforms: std::collections::BTreeMap<String, crate::flows::TransformConfig>,
    pub flows: crate::flows::FlowsConfig,
    /// `[dead_letters] max_payload_bytes`, for a pull's dead letters.
    pub max_payload_bytes: usize,
}

/// Log lines and errors a job keeps (the newest).
const MAX_LINES: usize = 200;

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// When the job's instance last recorded it (its heartbeat, else its start).
fn last_seen(job: &JobRecord) -> Option<chrono::DateTime<Utc>> {
    let at = job
        .heartbeat_at
        .as_deref()
        .or(job.header.started_at.as_deref())
        .unwrap_or(&job.header.created_at);
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `POST /v1/jobs/replay`: what to replay.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Only this stream's dead letters (default: every stream's).
    pub stream: Option<String>,
    /// Only dead letters received at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Replay the `route`-stage dead letters (which named no known stream) into this
    /// stream instead.
    pub into: Option<String>,
    /// Only dead letters of this stage: `parse`, `validate`, `write` or `route`.
    pub stage: Option<String>,
    /// Count what would be replayed, write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A job's progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobProgress {
    pub done: i64,
    pub total: i64,
    /// 0–100.
    pub percent: f64,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub header: JobHeader,
    #[schema(value_type = Object)]
    pub params: Value,
    pub progress: JobProgress,
    /// For a replay: `replayed`, `still_failing`, and per stream.
    #[schema(value_type = Object)]
    pub result: Value,
    pub logs: Vec<String>,
    pub errors: Vec<String>,
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> JobView {
        let percent = if r.total > 0 {
            (r.done as f64 * 100.0 / r.total as f64).min(100.0)
        } else if matches!(r.header.state.as_str(), "completed") {
            100.0
        } else {
            0.0
        };
        let list = |text: &str| serde_json::from_str::<Vec<String>>(text).unwrap_or_default();
        JobView {
            header: r.header.clone(),
            params: serde_json::from_str(&r.params).unwrap_or(Value::Null),
            progress: JobProgress {
                done: r.done,
                total: r.total,
                percent,
            },
            result: serde_json::from_str(&r.result).unwrap_or(Value::Null),
            logs: list(&r.logs),
            errors: list(&r.errors),
        }
    }
}

/// Why a job could not be started or cancelled.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "job {0} is already running over the same dead letters or source; wait for it or cancel it"
    )]
    Conflict(String),
    #[error("no job {0}")]
    NotFound(String),
    #[error("job {0} is not running")]
    NotRunning(String),
    #[error("the database did not answer: {0}")]
    Database(#[from] SinkError),
}

/// A job being run by this process.
struct Running {
    record: Mutex<Record>,
    cancel: CancellationToken,
    scope: Scope,
}

impl Running {
    /// Whether it is still `ready` or `running` (a job whose last save is under way
    /// has already ended).
    fn is_active(&self) -> bool {
        matches!(
            lock(&self.record).row.header.state.as_str(),
            "ready" | "running"
        )
    }
}

/// What a job works on, so that two jobs over the same things do not run at once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// A replay of one stream's dead letters (`None`: every stream's).
    Replay(Option<String>),
    /// A pull of one source.
    Pull(String),
    /// A flow: several run at once (its transforms take turns by their own locks).
    Flow,
}

impl Scope {
    fn overlaps(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Replay(a), Scope::Replay(b)) => a.is_none() || b.is_none() || a == b,
            (Scope::Pull(a), Scope::Pull(b)) => a == b,
            _ => false,
        }
    }
}

/// `POST /v1/jobs/pull`: which source to pull.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// A `[sources.NAME]` of the configuration.
    pub source: String,
}

/// A job's record and its logs and errors, decoded.
struct Record {
    row: JobRecord,
    logs: Vec<String>,
    errors: Vec<String>,
}

impl Record {
    fn log(&mut self, line: String) {
        if self.logs.len() == MAX_LINES {
            self.logs.remove(0);
        }
        self.logs.push(format!("{} {line}", now()));
    }

    fn error(&mut self, line: String) {
        if self.errors.len() == MAX_LINES {
            self.errors.remove(0);
        }
        self.errors.push(line);
    }

    /// The row with its logs and errors encoded, and the heartbeat of now (a snapshot is
    /// what gets recorded while the job runs here).
    fn snapshot(&self) -> JobRecord {
        let mut row = self.row.clone();
        row.heartbeat_at = Some(now());
        row.logs = serde_json::to_string(&self.logs).unwrap_or_else(|_| "[]".into());
        row.errors = serde_json::to_string(&self.errors).unwrap_or_else(|_| "[]".into());
        row
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The jobs of this server.
pub struct Jobs {
    storage: Storage,
    settings: JobsSettings,
    running: Mutex<HashMap<String, Arc<Running>>>,
    /// One lock per transform, so that two runs of it never overlap here.
    transform_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The server's tracker: a job's task is one of the server's, waited for when it
    /// stops.
    tasks: tokio_util::task::TaskTracker,
}

/// A replay's progress, recorded into its job.
struct Tracker<'a> {
    job: &'a Running,
}

impl Progress for Tracker<'_> {
    fn total(&self, n: usize) {
        let mut r = lock(&self.job.record);
        r.row.total = n as i64;
        r.log(format!("{n} dead letters to examine"));
    }

    fn advance(&self, examined: usize, report: &BTreeMap<String, StreamReport>) {
        let mut r = lock(&self.job.record);
        r.row.done = examined as i64;
        r.row.result = result_json(report).to_string();
        let replayed: usize = report.values().map(|s| s.replayed).sum();
        r.log(format!("{examined} examined, {replayed} replayed"));
    }

    fn cancelled(&self) -> bool {
        self.job.cancel.is_cancelled()
    }

    fn still_failing(&self, id: i64, stream: &str, reason: &str) {
        lock(&self.job.record).error(format!("dead letter {id} ({stream}) still fails: {reason}"));
    }
}

/// A pull's progress, recorded into its job.
struct PullTracker<'a> {
    job: &'a Running,
}

impl crate::pull::PullProgress for PullTracker<'_> {
    fn total(&self, rows: u64) {
        let mut r = lock(&self.job.record);
        r.row.total = rows as i64;
        r.log(format!("{rows} rows after the pointer"));
    }

    fn advance(&self, report: &crate::pull::PullReport) {
        let mut r = lock(&self.job.record);
        r.row.done = report.read as i64;
        r.row.result = serde_json::to_string(report).unwrap_or_else(|_| "{}".into());
        r.log(format!(
            "load {}: {} rows read, {} stored, {} dead-lettered",
            report.loads, report.read, report.stored, report.dead_lettered
        ));
    }

    fn cancelled(&self) -> bool {
        self.job.cancel.is_cancelled()
    }
}

fn result_json(report: &BTreeMap<String, StreamReport>) -> Value {
    let replayed: usize = report.values().map(|s| s.replayed).sum();
    let still_failing: usize = report.values().map(|s| s.still_failing).sum();
    let streams: serde_json::Map<String, Value> = report
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({"replayed": s.replayed, "still_failing": s.still_failing, "taken_by_another_run": s.taken_by_another_run}),
            )
        })
        .collect();
    json!({"replayed": replayed, "still_failing": still_failing, "streams": streams})
}

impl Jobs {
    /// Jobs run as tasks of `tasks`.
    pub fn new(
        storage: Storage,
        settings: JobsSettings,
        tasks: tokio_util::task::TaskTracker,
    ) -> Arc<Jobs> {
        Arc::new(Jobs {
            storage,
            settings,
            running: Mutex::new(HashMap::new()),
            transform_locks: Mutex::new(HashMap::new()),
            tasks,
        })
    }

    /// Asks every running job to stop (Sluice is stopping): each records itself
    /// `cancelled` after the page it is writing, and what it wrote stays.
    pub fn cancel_all(&self) {
        for job in lock(&self.running).values() {
            job.cancel.cancel();
            lock(&job.record).log("cancelled: Sluice is stopping".into());
        }
    }

    /// [`Jobs::recover`] at start-up and then every `[jobs] sweep_every` until `stop`: an
    /// instance that crashes while others run has its jobs marked by them.
    pub async fn watch_interrupted(&self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.recover().await {
                tracing::warn!(error = %e, "Cannot mark interrupted jobs yet; trying again.")
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.jobs.sweep_every) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Marks as failed the jobs recorded `ready` or `running` whose heartbeat stopped
    /// `[jobs] stale_after` ago: their instance is gone (this one before a restart, or
    /// another one; jobs record themselves every 500 ms while they run). Reads first, so
    /// that a sweep without such jobs writes nothing.
    pub async fn recover(&self) -> Result<u64, SinkError> {
        let recent = self.storage.store.load_jobs(None, 1000).await?;
        let stale = Utc::now()
            - chrono::Duration::from_std(self.settings.jobs.stale_after)
                .unwrap_or(chrono::Duration::seconds(10));
        // Jobs this process runs are not interrupted ones.
        let interrupted: Vec<JobRecord> = {
            let running = lock(&self.running);
            recent
                .into_iter()
                .filter(|j| matches!(j.header.state.as_str(), "ready" | "running"))
                .filter(|j| !running.contains_key(&j.header.id))
                .filter(|j| last_seen(j).is_none_or(|t| t < stale))
                .collect()
        };
        let errors = json!(["Sluice stopped while this job was running (crash, kill or restart); what it committed stays, start it again for the rest"]).to_string();
        let finished = now();
        for mut job in interrupted.iter().cloned() {
            job.header.state = "failed".into();
            job.header.finished_at = Some(finished.clone());
            job.errors = errors.clone();
            self.storage.store.save_job(&job).await?;
        }
        if !interrupted.is_empty() {
            tracing::warn!(
                jobs = interrupted.len(),
                "Jobs that were running when Sluice stopped are marked failed."
            );
        }
        Ok(interrupted.len() as u64)
    }

    /// Starts a replay job; returns its id.
    pub async fn start_replay(
        self: &Arc<Self>,
        request: ReplayRequest,
    ) -> Result<String, JobError> {
        let since = request
            .since
            .as_deref()
            .map(crate::schema::parse_timestamp)
            .transpose()
            .map_err(|e| JobError::Invalid(format!("since: {e}")))?;
        if let Some(stage) = &request.stage {
            crate::event::Stage::named(stage).map_err(JobError::Invalid)?;
        }
        let options = ReplayOptions {
            stream: request.stream.clone(),
            since,
            dry_run: request.dry_run,
            into: request.into.clone(),
            stage: request.stage.clone(),
        };
        // The schemas as they are on disk now (a fix needs no restart to be replayed).
        let registry = crate::schema::Registry::load(self.settings.streams.view())
            .map_err(|e| JobError::Invalid(format!("cannot load the stream schemas: {e:#}")))?;
        crate::replay::check_options(&registry, &options)
            .map_err(|e| JobError::Invalid(e.to_string()))?;
        let stream = request.stream.clone().or(request.into.clone());
        let params = serde_json::to_string(&request).unwrap_or_else(|_| "{}".into());
        self.launch(
            "replay",
            params,
            Scope::Replay(stream),
            move |jobs, job| async move {
                let tracker = Tracker { job: &job };
                // A schema fixed with a new optional property gets its column first, and
                // streams added since start-up their tables, as at start-up.
                crate::sink::prepare_tables(&jobs.storage.store, &registry).await?;
                let report = replay_with(
                    &registry,
                    &jobs.storage,
                    &jobs.settings.replay,
                    &options,
                    &tracker,
                )
                .await?;
                Ok((
                    result_json(&report),
                    "what was replayed stays, the rest stays dead-lettered",
                ))
            },
        )
        .await
    }

    /// Starts a pull of a configured source; returns the job's id.
    pub async fn start_pull(self: &Arc<Self>, request: PullRequest) -> Result<String, JobError> {
        let Some(source) = self.settings.sources.get(&request.source).cloned() else {
            return Err(JobError::Invalid(format!(
                "unknown source `{}`; the sources are {:?}",
                request.source,
                self.settings.sources.keys().collect::<Vec<_>>()
            )));
        };
        let registry = crate::schema::Registry::load(self.settings.streams.view())
            .map_err(|e| JobError::Invalid(format!("cannot load the stream schemas: {e:#}")))?;
        let Some(stream) = registry.get(&source.stream).cloned() else {
            return Err(JobError::Invalid(format!(
                "[sources.{}] stream `{}` has no schema; the streams are {:?}",
                request.source,
                source.stream,
                registry.names()
            )));
        };
        let name = request.source.clone();
        let params = serde_json::to_string(&request).unwrap_or_else(|_| "{}".into());
        self.launch(
            "pull",
            params,
            Scope::Pull(name.clone()),
            move |jobs, job| async move {
                crate::sink::prepare_tables(&jobs.storage.store, &registry).await?;
                let tracker = PullTracker { job: &job };
                let report = jobs.pull(&name, &source, &stream, &tracker).await?;
                Ok((
                    serde_json::to_value(&report).unwrap_or_default(),
                    "what was loaded stays, with its pointer; the next run goes on from there",
                ))
            },
        )
        .await
    }

    /// Pulls `source` (`name`) into `stream` once, reporting to `progress`: the run of a
    /// pull job and of a flow's pull task.
    async fn pull(
        &self,
        name: &str,
        source: &crate::pull::SourceConfig,
        stream: &Arc<crate::schema::Stream>,
        progress: &dyn crate::pull::PullProgress,
    ) -> anyhow::Result<crate::pull::PullReport> {
        crate::pull::pull(crate::pull::Run {
            name,
            source,
            stream,
            storage: &self.storage,
            max_payload: self.settings.max_payload_bytes,
            progress,
        })
        .await
    }

    /// Records a new job of `kind` over `scope` and runs `work` for it in the background,
    /// unless a job over the same scope is running; returns its id. `work` answers the
    /// job's result and what a cancellation leaves behind.
    async fn launch<F, Fut>(
        self: &Arc<Self>,
        kind: &str,
        params: String,
        scope: Scope,
        work: F,
    ) -> Result<String, JobError>
    where
        F: FnOnce(Arc<Jobs>, Arc<Running>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<(Value, &'static str)>> + Send + 'static,
    {
        let id = format!(
            "job-{}-{:08x}",
            Utc::now().format("%Y%m%d%H%M%S"),
            fastrand::u32(..)
        );
        let row = JobRecord {
            header: JobHeader {
                id: id.clone(),
                kind: kind.into(),
                state: "ready".into(),
                created_at: now(),
                ..JobHeader::default()
            },
            params,
            result: "{}".into(),
            logs: "[]".into(),
            errors: "[]".into(),
            ..JobRecord::default()
        };
        let job = Arc::new(Running {
            record: Mutex::new(Record {
                row,
                logs: Vec::new(),
                errors: Vec::new(),
            }),
            cancel: CancellationToken::new(),
            scope,
        });
        {
            let mut running = lock(&self.running);
            // A job that has just finished (its last save under way) does not count.
            if let Some((other, _)) = running
                .iter()
                .find(|(_, j)| j.is_active() && j.scope.overlaps(&job.scope))
            {
                return Err(JobError::Conflict(other.clone()));
            }
            running.insert(id.clone(), job.clone());
        }
        let first = lock(&job.record).snapshot();
        if let Err(e) = self.storage.store.save_job(&first).await {
            lock(&self.running).remove(&id);
            return Err(e.into());
        }
        let jobs = self.clone();
        let job_id = id.clone();
        self.tasks.spawn(async move {
            let run = work(jobs.clone(), job.clone());
            jobs.run(&job_id, job, run).await;
        });
        Ok(id)
    }

    /// Runs a job's work, recording its progress every 500 ms and its outcome. The work
    /// is a task of its own, so that a record that waits for the database (SQLite's
    /// write lock, held by the work's own transaction) never holds the work up.
    async fn run(
        &self,
        id: &str,
        job: Arc<Running>,
        run: impl std::future::Future<Output = anyhow::Result<(Value, &'static str)>> + Send + 'static,
    ) {
        {
            let mut r = lock(&job.record);
            r.row.header.state = "running".into();
            r.row.header.started_at = Some(now());
            r.log("started".into());
        }
        self.save(&job).await;
        let mut run = self.tasks.spawn(run);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            tokio::select! {
                r = &mut run => break r.unwrap_or_else(|e| Err(anyhow::anyhow!("the job's task ended abnormally: {e}"))),
                _ = tick.tick() => self.save(&job).await,
            }
        };
        {
            let mut r = lock(&job.record);
            r.row.header.finished_at = Some(now());
            match outcome {
                Ok((result, left)) => {
                    r.row.result = result.to_string();
                    if job.cancel.is_cancelled() {
                        r.row.header.state = "cancelled".into();
                        r.log(format!("cancelled; {left}"));
                    } else {
                        r.row.header.state = "completed".into();
                        r.row.done = r.row.total.max(r.row.done);
                        r.log("completed".into());
                    }
                }
                Err(e) => {
                    r.row.header.state = "failed".into();
                    r.error(format!("{e:#}"));
                    r.log("failed".into());
                }
            }
        }
        self.save(&job).await;
        lock(&self.running).remove(id);
    }

    /// Records the job's current state; a database that does not answer is logged (the
    /// next save tries again).
    async fn save(&self, job: &Running) {
        let row = lock(&job.record).snapshot();
        if let Err(e) = self.storage.store.save_job(&row).await {
            tracing::warn!(job = %row.header.id, error = %e, "Could not record the job's progress.");
        }
    }

    /// The database the jobs are recorded in.
    pub fn store(&self) -> &crate::sink::Store {
        &self.storage.store
    }

    /// Whether job `id` is running here now (or about to).
    pub fn active(&self, id: &str) -> bool {
        lock(&self.running).get(id).is_some_and(|j| j.is_active())
    }

    /// Whether a pull of `source` runs here now.
    pub fn pull_running(&self, source: &str) -> bool {
        let scope = Scope::Pull(source.to_owned());
        lock(&self.running)
            .values()
            .any(|j| j.scope == scope && j.is_active())
    }

    /// One job: from memory while it runs here, else from the table.
    pub async fn get(&self, id: &str) -> Result<Option<JobView>, SinkError> {
        if let Some(job) = lock(&self.running).get(id) {
            return Ok(Some(JobView::from(&lock(&job.record).snapshot())));
        }
        let rows = self.storage.store.load_jobs(Some(id), 1).await?;
        Ok(rows.first().map(JobView::from))
    }

    /// The newest jobs first, the running ones as they are now.
    pub async fn list(&self, limit: i64) -> Result<Vec<JobView>, SinkError> {
        let rows = self.storage.store.load_jobs(None, limit).await?;
        let running = lock(&self.running);
        Ok(rows
            .iter()
            .map(|row| match running.get(&row.header.id) {
                Some(job) => JobView::from(&lock(&job.record).snapshot()),
                None => JobView::from(row),
            })
            .collect())
    }

    /// Asks a running job to stop (between pages of rows).
    pub async fn cancel(&self, id: &str) -> Result<JobView, JobError> {
        let job = lock(&self.running).get(id).cloned();
        match job {
            Some(job) => {
                job.cancel.cancel();
                lock(&job.record).log("cancel requested".into());
                Ok(JobView::from(&lock(&job.record).snapshot()))
            }
            None => match self.get(id).await? {
                Some(_) => Err(JobError::NotRunning(id.to_owned())),
                None => Err(JobError::NotFound(id.to_owned())),
            },
        }
    }
}
