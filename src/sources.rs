//! The pulled sources of this instance: each one's schedule (`every`), whether it is
//! paused, its last run, and the operator's commands (run, pause, resume, reset). A run
//! is a pull job ([`Jobs::start_pull`]); a run that fails is tried again on the
//! schedule, each failure in a row doubling the wait (up to an hour), so a source that
//! is down never stalls the others or the push inputs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::jobs::{lock, JobError, Jobs, PullRequest};
use crate::pull::SourceConfig;

/// The longest a failing source waits between two scheduled tries.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// One source as `GET /v1/sources` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceView {
    pub name: String,
    pub stream: String,
    /// The table read, or `null` for a `query`.
    pub table: Option<String>,
    pub cursor: Vec<String>,
    /// Seconds between scheduled runs; `null`: on demand only.
    pub every_seconds: Option<u64>,
    /// Where the next run starts: the cursor values of the last row transmitted
    /// (`null`: from the first row).
    #[schema(value_type = Object)]
    pub pointer: Value,
    /// `paused`, `running` or `idle`.
    pub state: String,
    /// The job of the last run this instance started, with its state (`null`: none).
    pub last_job: Option<String>,
    pub last_state: Option<String>,
    /// When the schedule runs it next (RFC 3339; `null`: not scheduled or paused).
    pub next_run: Option<String>,
    /// Scheduled runs that failed in a row (each doubles the wait).
    pub failures: u32,
    /// Rows its loads committed (as far back as the load ledger goes).
    pub rows: i64,
    /// A file source: the files loaded whole (`null` for a database source).
    pub files_loaded: Option<i64>,
}

/// What this instance knows of one source.
#[derive(Debug, Default)]
struct State {
    paused: bool,
    next_run: Option<DateTime<Utc>>,
    failures: u32,
    last_job: Option<String>,
    /// Whether the outcome of `last_job` is counted yet.
    settled: bool,
}

/// The sources and their schedules.
pub struct Sources {
    jobs: Arc<Jobs>,
    config: BTreeMap<String, SourceConfig>,
    states: Mutex<BTreeMap<String, State>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Why a source command could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("unknown source `{0}`")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Job(#[from] JobError),
}

impl Sources {
    /// Scheduled sources run first right after start-up.
    pub fn new(jobs: Arc<Jobs>, config: BTreeMap<String, SourceConfig>) -> Arc<Sources> {
        let now = Utc::now();
        let states = config
            .iter()
            .map(|(name, source)| {
                let state = State {
                    next_run: source.every.map(|_| now),
                    settled: true,
                    ..State::default()
                };
                (name.clone(), state)
            })
            .collect();
        Arc::new(Sources {
            jobs,
            config,
            states: Mutex::new(states),
        })
    }

    fn known(&self, name: &str) -> Result<&SourceConfig, SourceError> {
        self.config
            .get(name)
            .ok_or_else(|| SourceError::Unknown(name.to_owned()))
    }

    /// Every source, by name.
    pub async fn list(&self) -> Result<Vec<SourceView>, crate::sink::SinkError> {
        let mut views = Vec::with_capacity(self.config.len());
        for name in self.config.keys() {
            views.push(self.view(name).await?);
        }
        Ok(views)
    }

    /// One source's view.
    pub async fn view(&self, name: &str) -> Result<SourceView, crate::sink::SinkError> {
        let source = &self.config[name];
        let pointer = self.jobs.store().pointer(name).await?;
        let (rows, files) = self.jobs.store().source_totals(name).await?;
        let last_job = lock(&self.states)
            .get(name)
            .and_then(|s| s.last_job.clone());
        let last_state = match last_job {
            Some(id) => self.jobs.get(&id).await?.map(|j| j.header.state),
            None => None,
        };
        let states = lock(&self.states);
        let state = states.get(name);
        let running = self.jobs.pull_running(name);
        Ok(SourceView {
            name: name.to_owned(),
            stream: source.stream.clone(),
            table: source.table.clone(),
            cursor: source.cursor.clone(),
            every_seconds: source.every.map(|d| d.as_secs()),
            pointer: pointer
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or(Value::Null),
            state: match (state.is_some_and(|s| s.paused), running) {
                (true, _) => "paused",
                (false, true) => "running",
                (false, false) => "idle",
            }
            .into(),
            last_job: state.and_then(|s| s.last_job.clone()),
            last_state,
            next_run: state
                .filter(|s| !s.paused)
                .and_then(|s| s.next_run)
                .map(rfc3339),
            failures: state.map_or(0, |s| s.failures),
            rows,
            files_loaded: source.path.as_ref().map(|_| files),
        })
    }

    /// Starts a run now; returns its job's id.
    pub async fn run(&self, name: &str) -> Result<String, SourceError> {
        self.known(name)?;
        let id = self
            .jobs
            .start_pull(PullRequest {
                source: name.to_owned(),
            })
            .await?;
        if let Some(state) = lock(&self.states).get_mut(name) {
            state.last_job = Some(id.clone());
            state.settled = false;
        }
        Ok(id)
    }

    /// Stops (`true`) or resumes the scheduled runs; a run under way goes on.
    pub fn pause(&self, name: &str, paused: bool) -> Result<(), SourceError> {
        let source = self.known(name)?;
        let mut states = lock(&self.states);
        let state = states.entry(name.to_owned()).or_default();
        state.paused = paused;
        if !paused && source.every.is_some() && state.next_run.is_none() {
            state.next_run = Some(Utc::now());
        }
        Ok(())
    }

    /// Sets the pointer (`null`: the next run starts from the first row). Refused while
    /// a run is under way.
    pub async fn reset(&self, name: &str, pointer: &Value) -> Result<(), SourceError> {
        let source = self.known(name)?;
        if self.jobs.pull_running(name) {
            return Err(SourceError::Invalid(format!(
                "source `{name}` is being pulled; cancel the run or wait for it, then reset"
            )));
        }
        let text = match pointer {
            Value::Null => None,
            _ if source.path.is_some() => {
                return Err(SourceError::Invalid(
                    "a file source is reset with {\"pointer\": null}: every file is loaded again"
                        .into(),
                ))
            }
            Value::Object(values) => {
                for column in &source.cursor {
                    if values.get(column).is_none_or(Value::is_null) {
                        return Err(SourceError::Invalid(format!(
                            "the pointer needs a value for each cursor column {:?}; `{column}` has none",
                            source.cursor
                        )));
                    }
                }
                Some(pointer.to_string())
            }
            _ => {
                return Err(SourceError::Invalid(
                    "pointer must be an object of the cursor columns' values, or null".into(),
                ))
            }
        };
        self.jobs
            .store()
            .reset_pointer(name, text.as_deref())
            .await
            .map_err(|e| SourceError::Job(e.into()))
    }

    /// Runs the scheduled sources when due, until `stop`.
    pub async fn schedule(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.tick().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Counts the outcome of runs that ended, and starts the runs that are due.
    async fn tick(&self) {
        let now = Utc::now();
        for (name, source) in &self.config {
            let Some(every) = source.every else {
                continue;
            };
            // The outcome of the last run, once it has ended: the next run is due one
            // interval after it, or, after failures in a row, a doubling wait.
            let ended = {
                let states = lock(&self.states);
                match states.get(name) {
                    Some(s) if !s.settled && !self.jobs.pull_running(name) => s.last_job.clone(),
                    _ => None,
                }
            };
            if let Some(id) = ended {
                let failed = match self.jobs.get(&id).await {
                    Ok(Some(job)) => job.header.state == "failed",
                    Ok(None) | Err(_) => continue,
                };
                let mut states = lock(&self.states);
                if let Some(s) = states.get_mut(name) {
                    s.failures = if failed { s.failures + 1 } else { 0 };
                    // One interval, doubled for each failure in a row after the first.
                    let wait = every
                        .saturating_mul(1 << s.failures.min(12).saturating_sub(1))
                        .min(MAX_BACKOFF.max(every));
                    s.next_run = Some(
                        now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
                    );
                    s.settled = true;
                }
            }
            let due = {
                let states = lock(&self.states);
                states
                    .get(name)
                    .is_some_and(|s| !s.paused && s.settled && s.next_run.is_some_and(|t| t <= now))
            };
            if !due {
                continue;
            }
            match self.run(name).await {
                Ok(id) => tracing::info!(source = %name, job = %id, "Scheduled pull started."),
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "The scheduled pull could not start; it is tried again at the next interval.");
                    if let Some(s) = lock(&self.states).get_mut(name) {
                        s.next_run = Some(
                            now + chrono::Duration::from_std(every)
                                .unwrap_or(chrono::Duration::MAX),
                        );
                    }
                }
            }
        }
    }
}
