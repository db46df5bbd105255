//! Flow jobs: one job, one task per node of the plan ([`crate::flows::Graph::plan`]),
//! each task started once every task it waits for completed, up to `[flows]
//! max_parallel` at once.
//!
//! A task that fails stops the tasks that depend on it (they end `cancelled`, never
//! run); independent branches go on, and the job ends `failed` naming the failed
//! tasks and the database's message. A cancel lets running tasks finish (a transform
//! is one transaction; a pull stops between loads) and starts no other. Two runs of one
//! transform never overlap in this process: the second waits for the first, and says
//! so in its log; across instances, the pointer moved in the same transaction makes
//! the later of two overlapping runs fail without committing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{lock, now, JobError, JobProgress, Jobs, Running, Scope, MAX_LINES};
use crate::flows::{Graph, Planned, TaskKind, TransformReport};
use crate::pull::{PullProgress, PullReport};
use crate::schema::Registry;

/// `POST /v1/jobs/flow`: what to run.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRequest {
    /// Transforms (or pulled sources) to run, with everything they depend on.
    pub targets: Vec<String>,
}

/// One task of a flow job, as the job's `result.tasks` holds it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub name: String,
    pub kind: TaskKind,
    /// The tasks it waits for.
    pub after: Vec<String>,
    /// `ready`, `running`, `completed`, `failed` or `cancelled`.
    pub state: String,
    /// A pull: rows read of the rows after its pointer; a transform: statements run.
    pub progress: JobProgress,
    /// Rows changed (a transform, as the database counts them) or stored (a pull).
    pub rows: u64,
    /// The load ids an incremental transform processed, `[from, to]`.
    pub range: Option<[i64; 2]>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub logs: Vec<String>,
    pub errors: Vec<String>,
}

impl TaskView {
    fn of(planned: &Planned) -> TaskView {
        TaskView {
            name: planned.name.clone(),
            kind: planned.kind,
            after: planned.after.clone(),
            state: "ready".into(),
            progress: JobProgress {
                done: 0,
                total: 0,
                percent: 0.0,
            },
            rows: 0,
            range: None,
            started_at: None,
            finished_at: None,
            logs: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn log(&mut self, line: String) {
        if self.logs.len() == MAX_LINES {
            self.logs.remove(0);
        }
        self.logs.push(format!("{} {line}", now()));
    }

    fn progress(&mut self, done: i64, total: i64) {
        let percent = if total > 0 {
            (done as f64 * 100.0 / total as f64).min(100.0)
        } else {
            0.0
        };
        self.progress = JobProgress {
            done,
            total,
            percent,
        };
    }

    fn finish(&mut self, state: &str) {
        self.state = state.into();
        self.finished_at = Some(now());
        if state == "completed" {
            let total = self.progress.total.max(self.progress.done);
            self.progress(total, total);
            self.progress.percent = 100.0;
        }
    }
}

/// The tasks of one flow job, written into the job's record at each change.
struct Board {
    job: Arc<Running>,
    tasks: Mutex<Vec<TaskView>>,
}

impl Board {
    /// Changes task `at` with `f`, and records every task into the job.
    fn change(&self, at: usize, f: impl FnOnce(&mut TaskView)) {
        f(&mut lock(&self.tasks)[at]);
        self.record();
    }

    /// Writes the tasks, and how many ended, into the job's record.
    fn record(&self) {
        let tasks = lock(&self.tasks);
        let done = tasks
            .iter()
            .filter(|t| !matches!(t.state.as_str(), "ready" | "running"))
            .count();
        let result = json!({ "tasks": *tasks }).to_string();
        drop(tasks);
        let mut r = lock(&self.job.record);
        r.row.done = done as i64;
        r.row.result = result;
    }

    fn state(&self, at: usize) -> String {
        lock(&self.tasks)[at].state.clone()
    }
}

/// A pull task's progress, into its task.
struct PullTask<'a> {
    board: &'a Board,
    at: usize,
}

impl PullProgress for PullTask<'_> {
    fn total(&self, rows: u64) {
        self.board.change(self.at, |t| {
            t.progress(0, rows as i64);
            t.log(format!("{rows} rows after the pointer"));
        });
    }

    fn advance(&self, report: &PullReport) {
        self.board.change(self.at, |t| {
            let total = t.progress.total;
            t.progress(report.read as i64, total);
            t.rows = report.stored;
            t.log(format!(
                "load {}: {} rows read, {} stored, {} dead-lettered",
                report.loads, report.read, report.stored, report.dead_lettered
            ));
        });
    }

    fn cancelled(&self) -> bool {
        self.board.job.cancel.is_cancelled()
    }
}

/// How one task ended.
enum Outcome {
    Pulled(PullReport),
    Transformed(TransformReport),
}

impl Jobs {
    /// Starts a flow over `request.targets`; returns the job's id. Unknown targets, an
    /// invalid graph or an unreadable SQL file are refused before anything runs.
    pub async fn start_flow(self: &Arc<Self>, request: FlowRequest) -> Result<String, JobError> {
        let registry = Registry::load(self.settings.streams.view())
            .map_err(|e| JobError::Invalid(format!("cannot load the stream schemas: {e:#}")))?;
        let graph = Graph::new(
            &self.settings.transforms,
            &self.settings.sources,
            &registry.names(),
        )
        .map_err(JobError::Invalid)?;
        graph
            .check_files(self.store().dialect())
            .map_err(JobError::Invalid)?;
        let plan = graph.plan(&request.targets).map_err(JobError::Invalid)?;
        let params = serde_json::to_string(&request).unwrap_or_else(|_| "{}".into());
        self.launch("flow", params, Scope::Flow, move |jobs, job| async move {
            jobs.run_flow(job, graph, plan, registry).await
        })
        .await
    }

    async fn run_flow(
        self: Arc<Self>,
        job: Arc<Running>,
        graph: Graph,
        plan: Vec<Planned>,
        registry: Registry,
    ) -> anyhow::Result<(Value, &'static str)> {
        let board = Arc::new(Board {
            job: job.clone(),
            tasks: Mutex::new(plan.iter().map(TaskView::of).collect()),
        });
        let (graph, registry) = (Arc::new(graph), Arc::new(registry));
        {
            let mut r = lock(&job.record);
            r.row.total = plan.len() as i64;
            let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
            r.log(format!("{} tasks: {}", plan.len(), names.join(", ")));
        }
        board.record();
        if plan.iter().any(|p| p.kind == TaskKind::Pull) {
            crate::sink::prepare_tables(&self.storage.store, &registry).await?;
        }
        let max_parallel = self.settings.flows.max_parallel.max(1);
        type Task = std::pin::Pin<
            Box<dyn std::future::Future<Output = (usize, anyhow::Result<Outcome>)> + Send>,
        >;
        let mut running: FuturesUnordered<Task> = FuturesUnordered::new();
        loop {
            if !job.cancel.is_cancelled() {
                for (at, planned) in plan.iter().enumerate() {
                    if running.len() >= max_parallel {
                        break;
                    }
                    let ready = board.state(at) == "ready"
                        && planned.after.iter().all(|d| {
                            plan.iter()
                                .position(|p| &p.name == d)
                                .is_none_or(|i| board.state(i) == "completed")
                        });
                    if !ready {
                        continue;
                    }
                    board.change(at, |t| {
                        t.state = "running".into();
                        t.started_at = Some(now());
                        t.log("started".into());
                    });
                    lock(&job.record).log(format!("task {} started", planned.name));
                    let (jobs, board, graph, registry) =
                        (self.clone(), board.clone(), graph.clone(), registry.clone());
                    let planned = planned.clone();
                    running.push(Box::pin(async move {
                        let outcome = jobs.run_task(&board, at, &planned, &graph, &registry).await;
                        (at, outcome)
                    }));
                }
            }
            let Some((at, outcome)) = running.next().await else {
                break;
            };
            let name = &plan[at].name;
            match outcome {
                Ok(outcome) => {
                    let cancelled =
                        matches!(&outcome, Outcome::Pulled(_)) && job.cancel.is_cancelled();
                    board.change(at, |t| {
                        match outcome {
                            Outcome::Pulled(report) => t.rows = report.stored,
                            Outcome::Transformed(report) => {
                                t.rows = report.rows;
                                t.range = report.range;
                                let n = report.statements as i64;
                                t.progress(n, n);
                                t.log(match (report.skipped, report.range) {
                                    (true, _) => "no new load since its pointer: nothing to do".into(),
                                    (false, Some([from, to])) => format!("{} statements committed over loads {from} to {to}: {} rows changed", report.statements, report.rows),
                                    (false, None) => format!("{} statements committed ({}): {} rows changed", report.statements, if report.incremental { "no new load, first run" } else { "full refresh" }, report.rows),
                                });
                                if let Some(set) = report.published {
                                    t.log(format!("published {set} keys to Redis, deleted {} it no longer returns", report.unpublished.unwrap_or(0)));
                                }
                            }
                        }
                        if cancelled {
                            t.log("cancelled between loads; what was loaded stays".into());
                            t.finish("cancelled");
                        } else {
                            t.log("completed".into());
                            t.finish("completed");
                        }
                    });
                    lock(&job.record).log(format!("task {name} {}", board.state(at)));
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    board.change(at, |t| {
                        t.errors.push(message.clone());
                        t.log("failed; nothing of this task was committed".into());
                        t.finish("failed");
                    });
                    lock(&job.record).error(format!("task {name} failed: {message}"));
                    // What depends on it, however far down, will not run.
                    let mut stopped = vec![name.clone()];
                    while let Some(failed) = stopped.pop() {
                        for (i, p) in plan.iter().enumerate() {
                            if p.after.contains(&failed) && board.state(i) == "ready" {
                                board.change(i, |t| {
                                    t.log(format!(
                                        "not run: it depends on {failed}, which did not complete"
                                    ));
                                    t.finish("cancelled");
                                });
                                stopped.push(p.name.clone());
                            }
                        }
                    }
                }
            }
        }
        for at in 0..plan.len() {
            if board.state(at) == "ready" {
                board.change(at, |t| {
                    t.log("not run: the flow was cancelled".into());
                    t.finish("cancelled");
                });
            }
        }
        let tasks = lock(&board.tasks).clone();
        // Each failure is in the job's errors already, with its message.
        let failed: Vec<&str> = tasks
            .iter()
            .filter(|t| t.state == "failed")
            .map(|t| t.name.as_str())
            .collect();
        if !failed.is_empty() {
            anyhow::bail!(
                "the flow failed at {}; what depends on it did not run",
                failed.join(", ")
            );
        }
        Ok((
            json!({ "tasks": tasks }),
            "the tasks that completed stay committed; the others did not run",
        ))
    }

    /// Runs one task: a pull of a source, or a transform under its lock.
    async fn run_task(
        &self,
        board: &Board,
        at: usize,
        planned: &Planned,
        graph: &Graph,
        registry: &Registry,
    ) -> anyhow::Result<Outcome> {
        let name = &planned.name;
        match planned.kind {
            TaskKind::Pull => {
                let mut said = false;
                while self.pull_running(name) {
                    if !said {
                        board.change(at, |t| {
                            t.log(format!("waiting: a pull job of {name} is running"))
                        });
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let source = self
                    .settings
                    .sources
                    .get(name)
                    .ok_or_else(|| anyhow::anyhow!("unknown source `{name}`"))?;
                let stream = registry.get(&source.stream).ok_or_else(|| {
                    anyhow::anyhow!("[sources.{name}] stream `{}` has no schema", source.stream)
                })?;
                let progress = PullTask { board, at };
                let report = self.pull(name, source, stream, &progress).await?;
                Ok(Outcome::Pulled(report))
            }
            TaskKind::Transform => {
                let lock = self.transform_lock(name);
                let _held = match lock.clone().try_lock_owned() {
                    Ok(held) => held,
                    Err(_) => {
                        board.change(at, |t| {
                            t.log(format!("waiting: another run of {name} is under way (two runs of one transform never overlap)"))
                        });
                        lock.lock_owned().await
                    }
                };
                // Read now, once: a fixed file applies at the next run.
                let script = graph
                    .script(name, self.store().dialect())
                    .map_err(anyhow::Error::msg)?;
                board.change(at, |t| t.progress(0, script.len() as i64));
                let report =
                    crate::flows::run_transform(self.store(), graph, name, &script).await?;
                Ok(Outcome::Transformed(report))
            }
        }
    }

    /// The lock that keeps two runs of transform `name` apart in this process.
    fn transform_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.transform_locks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}
