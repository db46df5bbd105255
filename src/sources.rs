//! The pulled sources of this instance: each one's schedule (`every`, see
//! [`crate::schedule`]), whether it is paused, its last run, and the operator's commands
//! (run, pause, resume, reset). A run is a pull job ([`Jobs::start_pull`]); a run that
//! fails is tried again on the schedule, each failure in a row doubling the wait (up to
//! an hour), so a source that is down never stalls the others or the push inputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::jobs::{JobError, Jobs, PullRequest};
use crate::pull::SourceConfig;
use crate::schedule::Schedule;

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

/// The sources and their schedules.
pub struct Sources {
    jobs: Arc<Jobs>,
    config: BTreeMap<String, SourceConfig>,
    schedule: Schedule,
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
        let every = config
            .iter()
            .map(|(name, source)| (name.clone(), source.every))
            .collect();
        Arc::new(Sources {
            schedule: Schedule::new(jobs.clone(), every),
            jobs,
            config,
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
        let standing = self.schedule.standing(name);
        let last_state = match &standing.last_job {
            Some(id) => self.jobs.get(id).await?.map(|j| j.header.state),
            None => None,
        };
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
            state: match (standing.paused, running) {
                (true, _) => "paused",
                (false, true) => "running",
                (false, false) => "idle",
            }
            .into(),
            last_job: standing.last_job,
            last_state,
            next_run: standing.next_run,
            failures: standing.failures,
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
        self.schedule.started(name, &id);
        Ok(id)
    }

    /// Stops (`true`) or resumes the scheduled runs; a run under way goes on.
    pub fn pause(&self, name: &str, paused: bool) -> Result<(), SourceError> {
        self.known(name)?;
        self.schedule.pause(name, paused);
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

    /// Whether any source runs on a schedule.
    pub fn scheduled(&self) -> bool {
        self.schedule.any()
    }

    /// Runs the scheduled sources when due, until `stop`.
    pub async fn schedule(self: Arc<Self>, stop: CancellationToken) {
        let jobs = self.jobs.clone();
        let start = move |source: String| -> crate::schedule::Start {
            let jobs = jobs.clone();
            Box::pin(async move {
                let request = PullRequest { source };
                jobs.start_pull(request).await.map_err(|e| e.to_string())
            })
        };
        self.schedule.run("pull", start, stop).await
    }
}
