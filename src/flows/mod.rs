//! Transforms and flows (`[transforms.NAME]`, `[flows]`): SQL run inside the target
//! database that turns the stream tables into clean ones, and the graph that orders
//! them.
//!
//! A transform reads streams, pulled sources and other transforms (its `after`) and
//! runs its SQL file's statements in one transaction. Its SQL may use `:from_load` and
//! `:to_load`: the load ids it has not processed yet, from just after its pointer (in
//! `sluice_pointers`) up to the lowest watermark of its inputs; the new pointer commits
//! in the same transaction as the writes, so each load is processed once. One that uses
//! neither is a full refresh, run whole each time.
//!
//! A flow runs some targets and everything they depend on in dependency order: the
//! pulls first, then the transforms ([`crate::jobs`] runs it as a job with one task per
//! node). This module holds the configuration, the graph ([`Graph`]), the SQL file's
//! reading ([`script`]) and one transform's run ([`run_transform`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use crate::pull::SourceConfig;
use crate::sink::ledger::Pointer;
use crate::sink::{Dialect, Store};

pub mod publish;
pub mod script;

use script::Script;

/// `[transforms.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// The SQL file (relative to the working directory, as `schemas_dir`): statements
    /// separated by `;`, run in one transaction of the target database.
    pub sql_file: PathBuf,
    /// The streams, pulled sources and transforms it reads: they run (or are pulled)
    /// before it in a flow, and their watermarks bound its `:to_load`.
    #[serde(default)]
    pub after: Vec<String>,
    /// Runs on this schedule (e.g. `"10m"`) as a flow of its own; without it, in the
    /// flows that name it (or a transform that reads it).
    #[serde(default, deserialize_with = "crate::toml_values::opt_duration")]
    pub every: Option<std::time::Duration>,
    /// Publish the rows of its last statement (a query) to Redis.
    pub publish: Option<publish::PublishConfig>,
}

/// `[flows]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsConfig {
    /// Tasks of one flow that run at once (independent branches of the graph).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: usize,
}

fn default_max_parallel() -> usize {
    2
}

impl Default for FlowsConfig {
    fn default() -> Self {
        FlowsConfig {
            max_parallel: default_max_parallel(),
        }
    }
}

/// What one node of a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// A pulled source, loaded before what reads it.
    Pull,
    /// A transform's SQL.
    Transform,
}

/// One node of a flow's plan and the nodes it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    pub kind: TaskKind,
    pub after: Vec<String>,
}

/// The transforms, what they read, and in which order they run.
#[derive(Debug, Clone)]
pub struct Graph {
    transforms: BTreeMap<String, TransformConfig>,
    /// Each pulled source's stream.
    sources: BTreeMap<String, String>,
    streams: BTreeSet<String>,
}

/// What an input of a transform is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    Stream(&'a str),
    /// A pulled source, by name, and the stream it loads.
    Source(&'a str, &'a str),
    Transform(&'a str),
}

impl Graph {
    /// Checks the transforms against the streams and sources: every name an identifier
    /// taken by nothing else, every input known, no cycle. Errors name the transform.
    pub fn new(
        transforms: &BTreeMap<String, TransformConfig>,
        sources: &BTreeMap<String, SourceConfig>,
        streams: &[String],
    ) -> Result<Graph, String> {
        let graph = Graph {
            transforms: transforms.clone(),
            sources: sources
                .iter()
                .map(|(name, s)| (name.clone(), s.stream.clone()))
                .collect(),
            streams: streams.iter().cloned().collect(),
        };
        for (name, transform) in transforms {
            let at = |what: String| format!("[transforms.{name}] {what}");
            crate::schema::check_identifier(name)
                .map_err(|e| at(format!("the transform's name {e}")))?;
            if graph.sources.contains_key(name) || graph.streams.contains(name) {
                return Err(at(format!(
                    "the name is taken by a {}; give the transform a name of its own",
                    if graph.sources.contains_key(name) {
                        "source"
                    } else {
                        "stream"
                    }
                )));
            }
            if transform
                .every
                .is_some_and(|d| d < std::time::Duration::from_secs(1))
            {
                return Err(at("every must be at least 1s (e.g. \"10m\")".into()));
            }
            for input in &transform.after {
                if graph.input(input).is_none() {
                    return Err(at(format!(
                        "after names `{input}`, which is no stream, source or transform; the streams are {:?}, the sources {:?}, the transforms {:?}",
                        graph.streams,
                        graph.sources.keys().collect::<Vec<_>>(),
                        graph.transforms.keys().collect::<Vec<_>>()
                    )));
                }
            }
        }
        if let Some(cycle) = graph.cycle() {
            return Err(format!(
                "[transforms] form a cycle: {}; a transform cannot read its own output, even through others",
                cycle.join(" → ")
            ));
        }
        Ok(graph)
    }

    /// What `name` is as an input.
    pub fn input<'a>(&'a self, name: &'a str) -> Option<Input<'a>> {
        if self.transforms.contains_key(name) {
            Some(Input::Transform(name))
        } else if let Some(stream) = self.sources.get(name) {
            Some(Input::Source(name, stream))
        } else if self.streams.contains(name) {
            Some(Input::Stream(name))
        } else {
            None
        }
    }

    pub fn transform(&self, name: &str) -> Option<&TransformConfig> {
        self.transforms.get(name)
    }

    pub fn transforms(&self) -> &BTreeMap<String, TransformConfig> {
        &self.transforms
    }

    /// The nodes `name` waits for in a flow: the transforms and sources it names, and
    /// the sources that load the streams it names.
    fn dependencies(&self, name: &str) -> Vec<(String, TaskKind)> {
        let Some(transform) = self.transforms.get(name) else {
            return Vec::new();
        };
        let mut out: Vec<(String, TaskKind)> = Vec::new();
        let mut add = |name: &str, kind: TaskKind| {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_owned(), kind));
            }
        };
        for input in &transform.after {
            match self.input(input) {
                Some(Input::Transform(t)) => add(t, TaskKind::Transform),
                Some(Input::Source(s, _)) => add(s, TaskKind::Pull),
                Some(Input::Stream(stream)) => {
                    for (source, _) in self.sources.iter().filter(|(_, s)| *s == stream) {
                        add(source, TaskKind::Pull);
                    }
                }
                None => {}
            }
        }
        out
    }

    /// A cycle among the transforms, as the names along it (the first repeated last).
    fn cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(
            graph: &Graph,
            name: &str,
            marks: &mut BTreeMap<String, Mark>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            match marks.get(name) {
                Some(Mark::Done) => return None,
                Some(Mark::Open) => {
                    let start = path.iter().position(|n| n == name).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(name.to_owned());
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(name.to_owned(), Mark::Open);
            path.push(name.to_owned());
            for (next, kind) in graph.dependencies(name) {
                if kind == TaskKind::Transform {
                    if let Some(cycle) = visit(graph, &next, marks, path) {
                        return Some(cycle);
                    }
                }
            }
            path.pop();
            marks.insert(name.to_owned(), Mark::Done);
            None
        }
        let mut marks = BTreeMap::new();
        self.transforms
            .keys()
            .find_map(|name| visit(self, name, &mut marks, &mut Vec::new()))
    }

    /// Every transform in an order that runs each after what it reads (ties by name).
    pub fn order(&self) -> Vec<String> {
        let all: Vec<String> = self.transforms.keys().cloned().collect();
        self.plan(&all)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.kind == TaskKind::Transform)
            .map(|p| p.name)
            .collect()
    }

    /// The nodes a flow of `targets` runs, each after the ones it waits for: the
    /// targets and everything they depend on, pulls before the transforms that read
    /// them. A target must be a transform or a pulled source.
    pub fn plan(&self, targets: &[String]) -> Result<Vec<Planned>, String> {
        if targets.is_empty() {
            return Err(format!(
                "targets is empty: name the transforms to run, e.g. {:?}",
                self.transforms.keys().take(2).collect::<Vec<_>>()
            ));
        }
        let mut wanted: BTreeMap<String, TaskKind> = BTreeMap::new();
        let mut stack: Vec<(String, TaskKind)> = Vec::new();
        for target in targets {
            match self.input(target) {
                Some(Input::Transform(t)) => stack.push((t.to_owned(), TaskKind::Transform)),
                Some(Input::Source(s, _)) => stack.push((s.to_owned(), TaskKind::Pull)),
                _ => {
                    return Err(format!(
                        "unknown target `{target}`: a flow runs transforms and pulled sources; the transforms are {:?}, the sources {:?}",
                        self.transforms.keys().collect::<Vec<_>>(),
                        self.sources.keys().collect::<Vec<_>>()
                    ))
                }
            }
        }
        while let Some((name, kind)) = stack.pop() {
            if wanted.insert(name.clone(), kind).is_none() {
                stack.extend(self.dependencies(&name));
            }
        }
        // Kahn's order over what is wanted: the pulls (no dependencies) first.
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut plan = Vec::with_capacity(wanted.len());
        while plan.len() < wanted.len() {
            let ready: Vec<(String, TaskKind)> = wanted
                .iter()
                .filter(|(name, _)| !done.contains(*name))
                .filter(|(name, _)| {
                    self.dependencies(name)
                        .iter()
                        .all(|(d, _)| done.contains(d))
                })
                .map(|(n, k)| (n.clone(), *k))
                .collect();
            if ready.is_empty() {
                return Err("[transforms] form a cycle".into());
            }
            let (pulls, transforms): (Vec<_>, Vec<_>) =
                ready.into_iter().partition(|(_, k)| *k == TaskKind::Pull);
            for (name, kind) in pulls.into_iter().chain(transforms) {
                plan.push(Planned {
                    after: self
                        .dependencies(&name)
                        .into_iter()
                        .map(|(d, _)| d)
                        .collect(),
                    name: name.clone(),
                    kind,
                });
                done.insert(name);
            }
        }
        Ok(plan)
    }

    /// Reads and checks every transform's SQL file (readable, statements that scan,
    /// an incremental one with inputs); errors name the transform.
    pub fn check_files(&self, dialect: Dialect) -> Result<(), String> {
        for name in self.transforms.keys() {
            self.script(name, dialect)?;
        }
        Ok(())
    }

    /// Transform `name`'s SQL file, read now (a fix applies at the next run).
    pub fn script(&self, name: &str, dialect: Dialect) -> Result<Script, String> {
        let Some(transform) = self.transforms.get(name) else {
            return Err(format!("unknown transform `{name}`"));
        };
        let file = &transform.sql_file;
        let text = std::fs::read_to_string(file).map_err(|e| {
            format!(
                "[transforms.{name}] sql_file {}: cannot read it: {e}",
                file.display()
            )
        })?;
        let script = Script::parse(&text, dialect == Dialect::Mysql)
            .map_err(|e| format!("[transforms.{name}] sql_file {}: {e}", file.display()))?;
        if let Some(publish) = &transform.publish {
            publish.check(name)?;
            if !script.ends_with_query() {
                return Err(format!("[transforms.{name}.publish] publishes the rows of the SQL's last statement, and the last statement of {} is not a query: end it with the SELECT whose rows are published", file.display()));
            }
        }
        if script.is_incremental() && transform.after.is_empty() {
            return Err(format!("[transforms.{name}] its SQL uses :from_load/:to_load but after names no input whose loads they would be; list the streams it reads in after"));
        }
        Ok(script)
    }
}

/// The pointer of a transform: the last load id it processed, as `{"load_id": N}`.
fn pointer_load(text: Option<&str>) -> anyhow::Result<i64> {
    let Some(text) = text else {
        return Ok(0);
    };
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("load_id").and_then(|n| n.as_i64()))
        .ok_or_else(|| anyhow::anyhow!("the stored pointer {text} is not {{\"load_id\": N}}"))
}

/// How a transform's run went.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TransformReport {
    /// The load ids processed (`[from, to]`), for an incremental transform.
    pub range: Option<[i64; 2]>,
    /// Rows the statements changed, as the database counts them.
    pub rows: u64,
    pub statements: usize,
    /// An incremental transform with no new load: nothing was run.
    pub skipped: bool,
    /// Whether the SQL uses `:from_load` / `:to_load`.
    pub incremental: bool,
    /// A published transform: the keys set in Redis, and those deleted (`full`).
    pub published: Option<u64>,
    pub unpublished: Option<u64>,
}

/// The highest load id below which `input` will never see another load commit: a
/// stream's watermark, a source's stream's, or the load a transform processed up to.
pub async fn watermark_of(store: &Store, input: Input<'_>) -> Result<i64, anyhow::Error> {
    Ok(match input {
        Input::Stream(stream) | Input::Source(_, stream) => store.watermark(stream).await?,
        Input::Transform(t) => pointer_load(store.pointer(t).await?.as_deref())?,
    })
}

/// Whether `inputs` (each with its watermark) have anything in loads `from..=to`: a
/// stream's or a source's load, or a transform input that processed beyond `from`.
async fn news(
    store: &Store,
    inputs: &[(Input<'_>, i64)],
    from: i64,
    to: i64,
) -> anyhow::Result<bool> {
    if to < from {
        return Ok(false);
    }
    for (input, mark) in inputs {
        let new = match input {
            Input::Stream(stream) | Input::Source(_, stream) => {
                store.has_loads(stream, from, to).await?
            }
            Input::Transform(_) => *mark >= from,
        };
        if new {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs transform `name` once: `script` (its SQL file, [`Graph::script`]), bound to the
/// loads not processed yet, and its new pointer, in one transaction. Another run that
/// moved the pointer meanwhile (on another instance) makes this one fail without
/// committing anything.
pub async fn run_transform(
    store: &Store,
    graph: &Graph,
    name: &str,
    script: &Script,
) -> anyhow::Result<TransformReport> {
    let transform = graph
        .transform(name)
        .ok_or_else(|| anyhow::anyhow!("unknown transform `{name}`"))?;
    let stored = store.pointer(name).await?;
    let last = pointer_load(stored.as_deref())?;
    let mut to = None::<i64>;
    let mut inputs = Vec::new();
    for input in &transform.after {
        let Some(input) = graph.input(input) else {
            anyhow::bail!("[transforms.{name}] after names `{input}`, which is unknown");
        };
        let mark = watermark_of(store, input).await?;
        to = Some(to.map_or(mark, |t| t.min(mark)));
        inputs.push((input, mark));
    }
    // A watermark never goes back; the pointer does not either.
    let to = to.unwrap_or(last).max(last);
    let from = last + 1;
    // Nothing new: nothing to run; but a first run runs even so, since its statements
    // make the tables that the transforms reading it expect. A watermark is a bound
    // that moves with other streams' loads, so a range may hold no load of the inputs.
    if script.is_incremental() && stored.is_some() && !news(store, &inputs, from, to).await? {
        return Ok(TransformReport {
            range: None,
            rows: 0,
            statements: script.len(),
            skipped: true,
            incremental: true,
            published: None,
            unpublished: None,
        });
    }
    let statements = script.bind(from, to);
    let pointer = Pointer {
        source: name.to_owned(),
        value: serde_json::json!({ "load_id": to }).to_string(),
        previous: stored,
    };
    let (rows, published) = match &transform.publish {
        None => (
            store.run_transform(&statements, &pointer, to, None).await?,
            None,
        ),
        Some(config) => {
            let done = std::sync::OnceLock::new();
            let publisher = |rows: Vec<String>| -> crate::sink::PublishFuture<'_> {
                let done = &done;
                Box::pin(async move {
                    let published = publish::publish(config, &rows).await?;
                    let _ = done.set(published);
                    Ok(())
                })
            };
            let rows = store
                .run_transform(&statements, &pointer, to, Some(&publisher))
                .await?;
            let published = done.get().copied();
            (rows, published)
        }
    };
    Ok(TransformReport {
        published: published.map(|p| p.set),
        unpublished: published.map(|p| p.deleted),
        range: (script.is_incremental() && from <= to).then_some([from, to]),
        rows,
        statements: statements.len(),
        skipped: false,
        incremental: script.is_incremental(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform(after: &[&str]) -> TransformConfig {
        TransformConfig {
            sql_file: "t.sql".into(),
            after: after.iter().map(|s| s.to_string()).collect(),
            every: None,
            publish: None,
        }
    }

    fn graph(transforms: &[(&str, &[&str])]) -> Result<Graph, String> {
        let transforms = transforms
            .iter()
            .map(|(n, a)| (n.to_string(), transform(a)))
            .collect();
        let source: SourceConfig = toml::from_str(
            "url_env = \"CRM_URL\"\ntable = \"deals\"\ncursor = [\"id\"]\nstream = \"crm_deal\"",
        )
        .unwrap();
        let sources = BTreeMap::from([("crm_deals".to_owned(), source)]);
        let streams = ["order_placed", "payment_processed", "crm_deal"].map(String::from);
        Graph::new(&transforms, &sources, &streams)
    }

    #[test]
    fn a_flow_runs_what_its_targets_read_first() {
        let g = graph(&[
            ("daily_revenue", &["order_placed", "payment_processed"]),
            ("deal_revenue", &["daily_revenue", "crm_deal"]),
            ("unrelated", &["order_placed"]),
        ])
        .unwrap();
        let plan = g.plan(&["deal_revenue".into()]).unwrap();
        let names: Vec<_> = plan.iter().map(|p| (p.name.as_str(), p.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("crm_deals", TaskKind::Pull),
                ("daily_revenue", TaskKind::Transform),
                ("deal_revenue", TaskKind::Transform)
            ]
        );
        assert_eq!(plan[2].after, vec!["daily_revenue", "crm_deals"]);
        assert_eq!(
            g.order(),
            vec!["daily_revenue", "unrelated", "deal_revenue"]
        );
        assert!(g
            .plan(&["nope".into()])
            .unwrap_err()
            .starts_with("unknown target `nope`"));
    }

    #[test]
    fn cycles_and_unknown_inputs_are_named() {
        let e = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a", "order_placed"])]).unwrap_err();
        assert!(e.contains("cycle: a → b → c → a"), "{e}");
        let e = graph(&[("a", &["a"])]).unwrap_err();
        assert!(e.contains("cycle: a → a"), "{e}");
        let e = graph(&[("a", &["orders"])]).unwrap_err();
        assert!(
            e.starts_with("[transforms.a] after names `orders`, which is no stream"),
            "{e}"
        );
        let e = graph(&[("crm_deals", &[])]).unwrap_err();
        assert!(e.contains("taken by a source"), "{e}");
    }

    #[test]
    fn a_pointer_is_a_load_id() {
        assert_eq!(pointer_load(None).unwrap(), 0);
        assert_eq!(pointer_load(Some("{\"load_id\": 42}")).unwrap(), 42);
        assert!(pointer_load(Some("{\"id\": 1}")).is_err());
    }
}
