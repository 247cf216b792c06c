//! Running as one worker of a pool: `weir run PIPELINE --worker ID`, started N times with
//! the same pipeline, shares the Kafka partitions through the sources' consumer groups, and
//! the state moves with the partitions through the shared checkpoint store
//! (`weir_engine::pool`).
//!
//! A worker runs a sequence of jobs. Each job owns the partitions assigned when it started:
//! it restores their state (from this worker's own checkpoints, or from the checkpoint
//! another worker took when it gave them up or last completed before it died) and seeks them
//! to that checkpoint's offsets. A rebalance that assigns or revokes partitions ends the job
//! with a hand-over checkpoint, committed before the revoked partitions are released; the
//! next job starts with the new assignment. The Kafka readers (and so the group membership
//! and what they read but did not hand out yet) outlive the jobs, and so do the live state
//! and the SQL server (`KeptLive`): queries, subscriptions and metrics scrapes go on through
//! a rebalance, each new job publishing into the same state.
//!
//! Outputs stay exactly once per worker: every worker writes its own files (the worker id
//! before the extension), transactional Kafka sinks and PostgreSQL sinks commit under the
//! worker's own transactional id or epoch sequence (their connectors' `for_worker`), committed per
//! checkpoint, and a worker finishes the commit of a dead worker's checkpoint that it
//! restores partitions from.

//!
//! Here: the mode and the pure steps that retarget a plan for a worker ([`for_worker`],
//! [`key_partitioned`]), what a pool refuses and `weir validate` says of it. The worker's
//! run, with its side effects, is in `worker.rs`.

mod worker;

use std::collections::HashSet;
use std::sync::Arc;

use crate::connectors::{internal_topic, OpenSource, OpenedSource, PooledSource};
use crate::mode::{JobHooks, KeptLive, RunMode};
use crate::plan::{Plan, PlannedSource};
use crate::run::{PoolRefusal, RunError, RunOptions, RunSummary};
use weir_engine::EngineError;
use weir_query::Peers;

/// The pool worker mode: `weir run --worker ID`.
#[derive(Debug, Clone)]
pub struct PoolWorker {
    /// The worker's id (`auto` resolved to the host name and process id).
    id: String,
}

impl PoolWorker {
    /// Worker `worker` of a pool; `auto` takes the host name and the process id.
    pub fn new(worker: &str) -> Self {
        let id = if worker == "auto" {
            auto_worker_id()
        } else {
            worker.to_string()
        };
        PoolWorker { id }
    }
}

impl RunMode for PoolWorker {
    fn name(&self) -> &'static str {
        "pool worker"
    }

    fn retarget(&self, plan: Plan) -> Result<Plan, RunError> {
        for_worker(plan, &self.id)
    }

    /// Runs the worker until it is stopped (or, with `until_caught_up`, until the partitions
    /// it is assigned are read to their end).
    fn run(&self, plan: Plan, opts: &RunOptions) -> Result<RunSummary, RunError> {
        worker::run_worker(self, plan, opts)
    }
}

/// `plan` as worker `worker` runs it: its outputs write the worker's own files (and commit
/// under its own ids), and windows and views keep their state per partition, so that it can
/// move with the partitions. Pure: opens nothing.
pub fn for_worker(mut plan: Plan, worker: &str) -> Result<Plan, RunError> {
    for s in &mut plan.sinks {
        s.target.for_worker(worker);
    }
    plan.dead_letter.for_worker(worker);
    for w in &mut plan.windows {
        let mut c = (*w.config).clone();
        c.partition_state = true;
        w.config = Arc::new(c);
    }
    let compiler = weir_operators::SqlCompiler::new();
    for v in &mut plan.views {
        let c = (*v.config)
            .clone()
            .with_partition_state(&compiler)
            .map_err(|e| PoolRefusal::View {
                view: v.config.name.clone(),
                cause: e,
            })?;
        v.config = Arc::new(c);
    }
    Ok(plan)
}

/// `plan` with the windows reading sources `repartitioned` judging lateness per key lane.
/// Pure: opens nothing.
///
/// The internal topic is keyed by every window's key, so its windows close per partition
/// (`WindowConfig::closes_per_partition`): a row is late by its own lane's watermark (its
/// upstream partition's, as when a topic is keyed) and by what its partition closed, not by
/// what the worker flushed of other partitions, which a partition claimed later (behind in
/// event time) must not be held to.
pub fn key_partitioned(mut plan: Plan, repartitioned: &[usize]) -> Plan {
    for w in plan
        .windows
        .iter_mut()
        .filter(|w| repartitioned.contains(&w.source))
    {
        let mut c = (*w.config).clone();
        c.key_partitioned = true;
        w.config = Arc::new(c);
    }
    plan
}

/// What one job of a pool worker runs with.
pub(crate) struct PoolJob<'a> {
    pub sources: &'a [PooledSource],
    pub worker: &'a str,
    /// The partitions the job owns: (source, `topic/partition`).
    pub owned: HashSet<(String, String)>,
    /// The other workers, for SQL.
    pub peers: Option<Arc<Peers>>,
    /// The worker's repartition stages.
    pub stages: Vec<Arc<weir_engine::stage_stats::StageStats>>,
    /// The worker's live state and SQL server, kept across its jobs.
    pub live: &'a KeptLive,
}

impl JobHooks for PoolJob<'_> {
    /// The worker's pooled reader, which outlives its jobs, continuing each partition at the
    /// restored checkpoint's offset.
    fn open_source(
        &self,
        source: &PlannedSource,
        at: OpenSource,
    ) -> Result<OpenedSource, RunError> {
        let Some(p) = self.sources.get(at.index) else {
            return Err(EngineError::Internal(format!(
                "source {} has no pooled reader",
                source.name
            ))
            .into());
        };
        let resume = at.resume;
        Ok(OpenedSource {
            reader: p.reader(&|key| resume(key)),
            keys: p.keys.clone(),
        })
    }

    /// The partitions this job owns; queries reach the other workers for the rest.
    fn live_scope(&self, state: weir_engine::live::LiveState) -> weir_engine::live::LiveState {
        state.in_pool(self.worker, self.owned.clone())
    }

    fn sql_peers(&self) -> Option<Arc<Peers>> {
        self.peers.clone()
    }

    fn stages(&self) -> Vec<Arc<weir_engine::stage_stats::StageStats>> {
        self.stages.clone()
    }

    fn kept_live(&self) -> Option<&KeptLive> {
        Some(self.live)
    }
}

/// Why a pipeline cannot run as a pool worker, naming its file; `None` when it can.
pub fn pool_refusal(plan: &Plan) -> Option<String> {
    refusal_reason(plan).map(|why| format!("{}: {why}", plan.file.display()))
}

/// Why a pipeline cannot run as a pool worker; `None` when it can.
fn refusal_reason(plan: &Plan) -> Option<String> {
    if plan.checkpoint.is_none() {
        return Some(
            "a worker pool keeps its state in the checkpoint store: add \
             `checkpoint: { dir: ... }` with a folder or object-store URL every worker reaches"
                .to_string(),
        );
    }
    for (i, s) in plan.sources.iter().enumerate() {
        let keyed = repartition_keys(plan, i) == Ok(None);
        if let Some(why) = s.input.pool_refusal(&s.name, keyed) {
            return Some(why);
        }
    }
    for i in 0..plan.sources.len() {
        if let Err(why) = repartition_keys(plan, i) {
            return Some(why);
        }
    }
    for s in &plan.sinks {
        if let Some(why) = s.target.pool_refusal(&s.name) {
            return Some(why);
        }
    }
    None
}

/// What `weir validate` says of running the pipeline as a worker pool: for every window and
/// view, whether its source's partitioning already keys it (no repartition), and whether
/// the pool can run it.
pub fn describe(plan: &Plan) -> String {
    let mut s = String::from("worker pool (weir run --worker ID, started N times): ");
    match refusal_reason(plan) {
        None => s.push_str("ready\n"),
        Some(why) => s.push_str(&format!("not possible: {why}\n")),
    }
    for (kind, name, source, keys) in keyed_outputs(plan) {
        let src = &plan.sources[source];
        match repartition_keys(plan, source) {
            Ok(None) => s.push_str(&format!(
                "  {kind} {name}: source {} is partitioned by [{}]: no repartition\n",
                src.name,
                src.partitioned_by.join(", ")
            )),
            Ok(Some(by)) => s.push_str(&format!(
                "  {kind} {name}: source {} is not declared partitioned by [{}]: repartitioned \
                 through the internal topic {} keyed by [{}]\n",
                src.name,
                keys.join(", "),
                internal_topic(&plan.name, &src.name),
                by.join(", ")
            )),
            Err(why) => s.push_str(&format!("  {kind} {name}: {why}\n")),
        }
    }
    s
}

/// The fields a pool repartitions source `source` by: `None` when its declared
/// `partitioned_by` already keys every window and view reading it, else the key fields
/// they all share. An error says why it cannot be repartitioned.
fn repartition_keys(plan: &Plan, source: usize) -> Result<Option<Vec<String>>, String> {
    let outputs: Vec<_> = keyed_outputs(plan)
        .filter(|(_, _, s, _)| *s == source)
        .collect();
    if outputs
        .iter()
        .all(|(_, _, _, keys)| keyed_by(plan, source, keys))
    {
        return Ok(None);
    }
    let src = &plan.sources[source];
    let mut common: Vec<String> = outputs
        .first()
        .map(|(_, _, _, keys)| keys.to_vec())
        .unwrap_or_default();
    for (_, _, _, keys) in &outputs {
        common.retain(|k| keys.contains(k));
    }
    if common.is_empty() {
        let names: Vec<String> = outputs
            .iter()
            .map(|(kind, name, _, keys)| format!("{kind} `{name}` by [{}]", keys.join(", ")))
            .collect();
        return Err(format!(
            "source `{}`: a worker pool repartitions a topic by the key its windows and views \
             share, and {} share none: read the topic in a pipeline per key, or declare \
             `partitioned_by` when its producers key messages by a common field",
            src.name,
            names.join(", ")
        ));
    }
    if let Some(why) = src.input.repartition_refusal(&src.name) {
        return Err(why);
    }
    Ok(Some(common))
}

/// (kind, name, source, keys) of every window and view.
fn keyed_outputs(
    plan: &Plan,
) -> impl Iterator<Item = (&'static str, &String, usize, &Vec<String>)> {
    plan.windows
        .iter()
        .map(|w| ("window", &w.config.name, w.source, &w.config.keys))
        .chain(
            plan.views
                .iter()
                .map(|v| ("view", &v.config.name, v.source, &v.config.keys)),
        )
}

/// Whether source `source` is declared partitioned by a subset of `keys`.
fn keyed_by(plan: &Plan, source: usize, keys: &[String]) -> bool {
    let by = &plan.sources[source].partitioned_by;
    !by.is_empty() && by.iter().all(|f| keys.contains(f))
}

/// The worker id `auto` stands for: the host name and the process id.
pub fn auto_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline over a Kafka topic, planned from YAML (nothing connects to the brokers).
    fn plan_of(name: &str, source: &str, windows: &str) -> Plan {
        // a folder per call: tests run in parallel, some with the same name
        let dir = tempfile::Builder::new()
            .prefix(&format!("weir-pool-{name}-"))
            .tempdir()
            .expect("temp dir")
            .keep();
        let path = dir.join("p.yaml");
        let yaml = format!(
            "name: p\nsources:\n  events:\n{source}\n    format: json\n    schema: data-ingestion\n    \
             event_time: {{ field: timestamp }}\nwindows:\n{windows}\nsinks:\n  out: {{ file: {{ path: out.ndjson }} }}\n\
             checkpoint: {{ dir: state }}\n"
        );
        std::fs::write(&path, yaml).unwrap();
        crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    const ONE_TOPIC: &str = "    kafka: { brokers: \"127.0.0.1:9\", topic: t, group_id: g }";
    const BY_DATASET: &str = "  w:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    aggregates: { n: count(*) }\n    sinks: [out]";

    #[test]
    fn validate_says_whether_a_pool_repartitions_and_refuses_what_it_cannot() {
        // keyed by the producers: no repartition
        let keyed = plan_of(
            "keyed",
            &format!("{ONE_TOPIC}\n    partitioned_by: [datasetName]"),
            BY_DATASET,
        );
        let said = describe(&keyed);
        assert!(
            said.contains("ready") && said.contains("no repartition"),
            "{said}"
        );
        assert_eq!(repartition_keys(&keyed, 0), Ok(None));
        // not keyed: repartitioned through the internal topic, by the shared key
        let spread = plan_of("spread", ONE_TOPIC, BY_DATASET);
        let said = describe(&spread);
        assert!(
            said.contains("ready")
                && said.contains("repartitioned through the internal topic p-events-repartition keyed by [datasetName]"),
            "{said}"
        );
        // two windows with no key in common cannot be repartitioned together
        let two = format!(
            "{BY_DATASET}\n  v:\n    from: events\n    key: [source]\n    tumbling: 1m\n    aggregates: {{ n: count(*) }}\n    sinks: [out]"
        );
        let apart = plan_of("apart", ONE_TOPIC, &two);
        let why = pool_refusal(&apart).expect("refused");
        assert!(why.contains("share none"), "{why}");
        // a repartitioned source reads one topic
        let topics = "    kafka: { brokers: \"127.0.0.1:9\", topic: [t, u], group_id: g }";
        let why = pool_refusal(&plan_of("topics", topics, BY_DATASET)).expect("refused");
        assert!(why.contains("one topic per source"), "{why}");
    }

    #[test]
    fn iceberg_sinks_run_in_a_pool_with_a_sql_catalog() {
        let dir = std::env::temp_dir().join(format!("weir-pool-{}-lake", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plan = |catalog: &str| {
            let path = dir.join("p.yaml");
            let yaml = format!(
                "name: p\nsources:\n  events:\n{ONE_TOPIC}\n    partitioned_by: [datasetName]\n    \
                 format: json\n    schema: data-ingestion\n    event_time: {{ field: timestamp }}\n\
                 windows:\n{}\nsinks:\n  out: {{ iceberg: {{ catalog: \"{catalog}\", warehouse: lake, \
                 table: a.w }} }}\ncheckpoint: {{ dir: state }}\n",
                BY_DATASET
            );
            std::fs::write(&path, yaml).unwrap();
            crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(pool_refusal(&plan("sqlite://lake/catalog.db")), None);
        let why = pool_refusal(&plan("https://rest.example/api")).expect("refused");
        assert!(why.contains("needs a SQL catalog"), "{why}");
    }

    #[test]
    fn a_worker_writes_its_own_outputs_and_keeps_state_per_partition() {
        let views = format!(
            "{BY_DATASET}\nviews:\n  v:\n    from: events\n    key: [datasetName]\n    \
             aggregates: {{ n: count(*) }}"
        );
        let live = plan_of("worker", ONE_TOPIC, &views);
        let file = |p: &Plan| p.sinks[0].target.local_file().map(|f| f.to_path_buf());
        let live_file = file(&live).expect("a file sink");
        let live_dead = live.dead_letter.local_file().map(|f| f.to_path_buf());
        assert!(!live.windows[0].config.partition_state);
        let mode = PoolWorker::new("w1");
        let plan = mode.retarget(live).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file(&plan), Some(live_file.with_extension("w1.ndjson")));
        let dead = plan.dead_letter.local_file().map(|f| f.to_path_buf());
        assert_eq!(dead, live_dead.map(|d| d.with_extension("w1.ndjson")));
        assert!(plan.windows[0].config.partition_state);
        assert!(!plan.windows[0].config.key_partitioned);
        assert!(plan.views[0].config.partition_state);
        assert!(plan.views[0]
            .config
            .partition_state_column()
            .is_ok_and(|c| c.is_some()));
        // `auto` is resolved once, when the mode is made
        assert_eq!(PoolWorker::new("auto").id, auto_worker_id());
    }

    #[test]
    fn windows_of_a_repartitioned_source_judge_lateness_per_key_lane() {
        let sources = format!(
            "{ONE_TOPIC}\n    format: json\n    schema: data-ingestion\n    \
             event_time: {{ field: timestamp }}\n  other:\n{}",
            ONE_TOPIC.replace("topic: t", "topic: u")
        );
        let two = format!(
            "{BY_DATASET}\n  o:\n    from: other\n    key: [datasetName]\n    tumbling: 1m\n    \
             aggregates: {{ n: count(*) }}\n    sinks: [out]"
        );
        let plan = plan_of("lanes", &sources, &two);
        let keyed = |p: &Plan| {
            p.windows
                .iter()
                .map(|w| (w.source, w.config.key_partitioned))
                .collect::<Vec<_>>()
        };
        assert_eq!(keyed(&plan), vec![(0, false), (1, false)]);
        let plan = key_partitioned(plan, &[1]);
        assert_eq!(keyed(&plan), vec![(0, false), (1, true)]);
        let plan = key_partitioned(plan, &[]);
        assert_eq!(keyed(&plan), vec![(0, false), (1, true)]);
    }

    #[test]
    fn an_automatic_worker_id_is_usable_in_file_names() {
        let id = auto_worker_id();
        assert!(weir_engine::pool::valid_worker_id(&id), "{id}");
    }
}
