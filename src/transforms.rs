//! The transforms of this instance as the operator sees them: the graph (each
//! transform, what it reads, its pointer and the last state of its task), the schedules
//! of those with `every` (see [`crate::schedule`]), and the commands (run now as a flow,
//! pause, resume). A run is a flow job ([`Jobs::start_flow`]) whose targets are the
//! transform alone, so what it reads runs first.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::flows::{Graph, Input};
use crate::jobs::{FlowRequest, JobError, Jobs};
use crate::schedule::Schedule;
use crate::sink::SinkError;

/// One input of a transform: an edge of the graph.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InputView {
    pub name: String,
    /// `stream`, `source` or `transform`.
    pub kind: String,
}

/// The last task of a transform, in the newest flow that ran it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastTask {
    pub job: String,
    /// `ready`, `running`, `completed`, `failed` or `cancelled`.
    pub state: String,
    pub rows: u64,
    pub range: Option<[i64; 2]>,
    pub finished_at: Option<String>,
    pub errors: Vec<String>,
}

/// One transform as `GET /v1/transforms` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TransformView {
    pub name: String,
    pub sql_file: String,
    /// What it reads (the graph's edges into it).
    pub after: Vec<InputView>,
    /// Uses `:from_load` / `:to_load` (else a full refresh); `null` when its file
    /// cannot be read now.
    pub incremental: Option<bool>,
    /// The last load id its output includes (`null`: never ran).
    pub pointer: Option<i64>,
    /// Seconds between scheduled runs; `null`: on demand only.
    pub every_seconds: Option<u64>,
    /// `paused`, `running` or `idle`.
    pub state: String,
    pub next_run: Option<String>,
    /// Scheduled runs that failed in a row (each doubles the wait).
    pub failures: u32,
    pub last_task: Option<LastTask>,
}

/// Why a transform command could not be done.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("unknown transform `{0}`")]
    Unknown(String),
    #[error(transparent)]
    Job(#[from] JobError),
}

/// The transforms and their schedules.
pub struct Transforms {
    jobs: Arc<Jobs>,
    graph: Graph,
    schedule: Schedule,
}

impl Transforms {
    /// Scheduled transforms run first right after start-up.
    pub fn new(jobs: Arc<Jobs>, graph: Graph) -> Arc<Transforms> {
        let every = graph
            .transforms()
            .iter()
            .map(|(name, t)| (name.clone(), t.every))
            .collect();
        Arc::new(Transforms {
            schedule: Schedule::new(jobs.clone(), every),
            jobs,
            graph,
        })
    }

    fn known(&self, name: &str) -> Result<(), TransformError> {
        match self.graph.transform(name) {
            Some(_) => Ok(()),
            None => Err(TransformError::Unknown(name.to_owned())),
        }
    }

    /// Every transform, in the order a flow of all of them runs them.
    pub async fn list(&self) -> Result<Vec<TransformView>, SinkError> {
        let recent = self.jobs.list(100).await?;
        let mut views = Vec::new();
        for name in self.graph.order() {
            views.push(self.view_among(&name, &recent).await?);
        }
        Ok(views)
    }

    /// One transform's view.
    pub async fn view(&self, name: &str) -> Result<TransformView, SinkError> {
        let recent = self.jobs.list(100).await?;
        self.view_among(name, &recent).await
    }

    /// `name`'s view, its last task found among the `recent` jobs (newest first).
    async fn view_among(
        &self,
        name: &str,
        recent: &[crate::jobs::JobView],
    ) -> Result<TransformView, SinkError> {
        let transform = self.graph.transform(name).cloned().unwrap_or_default();
        let standing = self.schedule.standing(name);
        let pointer = self
            .jobs
            .store()
            .pointer(name)
            .await?
            .and_then(|p| serde_json::from_str::<Value>(&p).ok())
            .and_then(|p| p.get("load_id").and_then(Value::as_i64));
        let last_task = recent
            .iter()
            .filter(|j| j.header.kind == "flow")
            .find_map(|j| {
                let task = j.result.get("tasks")?.as_array()?.iter().find(|t| {
                    t.get("name").and_then(Value::as_str) == Some(name)
                        && t.get("kind").and_then(Value::as_str) == Some("transform")
                })?;
                Some(LastTask {
                    job: j.header.id.clone(),
                    state: task.get("state")?.as_str()?.to_owned(),
                    rows: task.get("rows").and_then(Value::as_u64).unwrap_or(0),
                    range: serde_json::from_value(task.get("range")?.clone()).ok(),
                    finished_at: task
                        .get("finished_at")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    errors: serde_json::from_value(task.get("errors")?.clone()).unwrap_or_default(),
                })
            });
        let running = last_task.as_ref().is_some_and(|t| t.state == "running");
        let dialect = self.jobs.store().dialect();
        Ok(TransformView {
            name: name.to_owned(),
            sql_file: transform.sql_file.display().to_string(),
            after: transform
                .after
                .iter()
                .map(|input| InputView {
                    name: input.clone(),
                    kind: match self.graph.input(input) {
                        Some(Input::Stream(_)) => "stream",
                        Some(Input::Source(..)) => "source",
                        Some(Input::Transform(_)) => "transform",
                        None => "unknown",
                    }
                    .into(),
                })
                .collect(),
            incremental: self
                .graph
                .script(name, dialect)
                .ok()
                .map(|s| s.is_incremental()),
            pointer,
            every_seconds: transform.every.map(|d| d.as_secs()),
            state: match (standing.paused, running) {
                (true, _) => "paused",
                (false, true) => "running",
                (false, false) => "idle",
            }
            .into(),
            next_run: standing.next_run,
            failures: standing.failures,
            last_task,
        })
    }

    /// Runs `name` now, as a flow of it and what it reads; returns the job's id.
    pub async fn run(&self, name: &str) -> Result<String, TransformError> {
        self.known(name)?;
        let id = self
            .jobs
            .start_flow(FlowRequest {
                targets: vec![name.to_owned()],
            })
            .await?;
        self.schedule.started(name, &id);
        Ok(id)
    }

    /// Stops (`true`) or resumes the scheduled runs; a run under way goes on.
    pub fn pause(&self, name: &str, paused: bool) -> Result<(), TransformError> {
        self.known(name)?;
        self.schedule.pause(name, paused);
        Ok(())
    }

    /// Whether any transform runs on a schedule.
    pub fn scheduled(&self) -> bool {
        self.schedule.any()
    }

    /// Runs the scheduled transforms when due, until `stop`.
    pub async fn schedule(self: Arc<Self>, stop: CancellationToken) {
        let jobs = self.jobs.clone();
        let start = move |name: String| -> crate::schedule::Start {
            let jobs = jobs.clone();
            Box::pin(async move {
                let request = FlowRequest {
                    targets: vec![name],
                };
                jobs.start_flow(request).await.map_err(|e| e.to_string())
            })
        };
        self.schedule.run("flow", start, stop).await
    }
}
