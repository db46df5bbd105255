//! Schedules of named things that run as jobs (pulled sources, transforms): each one's
//! interval (`every`), whether it is paused, its last job, and the wait after failures.
//! A scheduled thing runs first right after start-up, then one interval after each run
//! ends; each failure in a row doubles the wait (up to an hour), so something that is
//! down never stalls the others or the push inputs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::jobs::{lock, Jobs};

/// The longest a failing thing waits between two scheduled tries.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What this instance knows of one thing's schedule.
#[derive(Debug, Default)]
struct State {
    paused: bool,
    next_run: Option<DateTime<Utc>>,
    failures: u32,
    last_job: Option<String>,
    /// Whether the outcome of `last_job` is counted yet.
    settled: bool,
}

/// One thing's schedule as the API shows it.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    pub paused: bool,
    /// RFC 3339; `None`: not scheduled, or paused.
    pub next_run: Option<String>,
    pub failures: u32,
    /// The job of the last run this instance started.
    pub last_job: Option<String>,
}

/// Starting one thing's run: its job's id, or why it could not start.
pub type Start =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// The schedules of one kind of thing, by name.
pub struct Schedule {
    jobs: Arc<Jobs>,
    every: BTreeMap<String, Option<Duration>>,
    states: Mutex<BTreeMap<String, State>>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Schedule {
    /// The things named in `every` (with their interval, `None`: on demand only); the
    /// scheduled ones are due at once.
    pub fn new(jobs: Arc<Jobs>, every: BTreeMap<String, Option<Duration>>) -> Schedule {
        let now = Utc::now();
        let states = every
            .iter()
            .map(|(name, every)| {
                let state = State {
                    next_run: every.map(|_| now),
                    settled: true,
                    ..State::default()
                };
                (name.clone(), state)
            })
            .collect();
        Schedule {
            jobs,
            every,
            states: Mutex::new(states),
        }
    }

    /// Whether anything runs on a schedule.
    pub fn any(&self) -> bool {
        self.every.values().any(Option::is_some)
    }

    /// Records that `name` runs now as job `id` (the schedule waits for its end).
    pub fn started(&self, name: &str, id: &str) {
        if let Some(state) = lock(&self.states).get_mut(name) {
            state.last_job = Some(id.to_owned());
            state.settled = false;
        }
    }

    /// Stops (`true`) or resumes the scheduled runs of `name`; a run under way goes on.
    pub fn pause(&self, name: &str, paused: bool) {
        let every = self.every.get(name).copied().flatten();
        let mut states = lock(&self.states);
        let state = states.entry(name.to_owned()).or_default();
        state.paused = paused;
        if !paused && every.is_some() && state.next_run.is_none() {
            state.next_run = Some(Utc::now());
        }
    }

    /// Where `name`'s schedule stands.
    pub fn standing(&self, name: &str) -> Standing {
        let states = lock(&self.states);
        let state = states.get(name);
        Standing {
            paused: state.is_some_and(|s| s.paused),
            next_run: state
                .filter(|s| !s.paused)
                .and_then(|s| s.next_run)
                .map(rfc3339),
            failures: state.map_or(0, |s| s.failures),
            last_job: state.and_then(|s| s.last_job.clone()),
        }
    }

    /// Starts `name` with `start` (which answers its job's id) whenever it is due, until
    /// `stop`; `what` names the kind of thing in the logs.
    pub async fn run(
        &self,
        what: &str,
        start: impl Fn(String) -> Start,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            self.tick(what, &start).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Counts the outcome of runs that ended, and starts the runs that are due.
    async fn tick(&self, what: &str, start: &impl Fn(String) -> Start) {
        let now = Utc::now();
        for (name, every) in &self.every {
            let Some(every) = *every else {
                continue;
            };
            // The outcome of the last run, once it has ended: the next run is due one
            // interval after it, or, after failures in a row, a doubling wait.
            let ended = {
                let states = lock(&self.states);
                match states.get(name) {
                    Some(s) if !s.settled => s.last_job.clone(),
                    _ => None,
                }
            };
            if let Some(id) = ended.filter(|id| !self.jobs.active(id)) {
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
            match start(name.clone()).await {
                Ok(id) => {
                    self.started(name, &id);
                    tracing::info!(what, name = %name, job = %id, "Scheduled run started.");
                }
                Err(e) => {
                    tracing::warn!(what, name = %name, error = %e, "The scheduled run could not start; it is tried again at the next interval.");
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
