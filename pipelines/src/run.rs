//! Running a plan on the engine.

use std::sync::Arc;
use std::time::Duration;

use weir_engine::checkpoint::{self, CheckpointSpec, CheckpointStore};
use weir_engine::job::{self, JobSpec, OperatorSpec, SourceSpec, StopHandle, WorkerOperator};
use weir_engine::live::{LiveKind, LiveSpec, LiveState, LiveTableDef};
use weir_engine::stats::{CurrentStats, RunStats};
use weir_engine::EngineError;
use weir_operators::{ViewMerger, ViewWorker, WindowMerger, WindowWorker};
use weir_query::{ServeConfig, SqlServer};

use crate::connectors::{OpenSink, OpenSource};
use crate::mode::JobHooks;
use crate::plan::{Plan, PlannedCheckpoint};

/// Called with the summary when the job finished, before [`RunOptions::keep_serving`] waits.
pub type OnFinished = Arc<dyn Fn(&RunSummary) + Send + Sync>;

/// How to run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Worker threads; defaults to the pipeline's `parallelism`, then 1.
    pub parallelism: Option<usize>,
    /// Stops the run from another thread (SIGINT).
    pub stop: StopHandle,
    /// Bytes per chunk read from files (default 1 MiB); smaller chunks spread a small file
    /// over more workers.
    pub file_chunk_bytes: Option<usize>,
    /// Kafka sources end once every partition of their topics reached the end offset it
    /// had when the run started (for tests and backfills); the run then finishes like a
    /// file's.
    pub until_caught_up: bool,
    /// With `until_caught_up`: how long a source that read every partition it is assigned
    /// waits for the others (default [`weir_kafka::DEFAULT_CAUGHT_UP_TIMEOUT`]).
    pub caught_up_timeout: Option<Duration>,
    /// After the job finished, keep answering SQL until `stop` is triggered.
    pub keep_serving: bool,
    /// Serve SQL on a non-loopback address without authentication.
    pub insecure: bool,
    /// Told the summary as soon as the job finished.
    pub on_finished: Option<OnFinished>,
    /// Run as a replay ([`crate::mode::Replay`]; `replay::prepare` reduced the plan):
    /// partitions start at its offsets, sinks get only its windows and write beside the live
    /// run's files.
    pub replay: Option<Arc<crate::replay::ReplaySetup>>,
    /// Run as this worker of a pool ([`crate::mode::PoolWorker`]): the partitions are shared
    /// with the other workers of the same pipeline, and state moves with them.
    pub worker: Option<String>,
}

/// Per webhook sink, its delivery statistics (for `/metrics` and `weir_status`).
type Deliveries = Vec<(String, Arc<weir_engine::stats::DeliveryStats>)>;

/// Emitted windows stay queryable this long unless a window says `retain`.
const DEFAULT_RETAIN_MS: u64 = 3_600_000;
/// Live barriers of a pipeline whose views have sinks but which serves no SQL.
const DEFAULT_REFRESH_MS: u64 = 1_000;

/// Why a run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The checkpoint folder holds state of another version of the pipeline (a user error).
    #[error("{0}")]
    IncompatibleState(String),
    /// Every checkpoint in the folder is damaged (the user decides: a backup, or starting
    /// over).
    #[error("{0}")]
    DamagedState(String),
    /// The SQL endpoints could not start (a user error when it is a setting).
    #[error(transparent)]
    Serve(#[from] weir_query::ServeError),
    /// The pipeline cannot run as a pool worker, or a pool worker met a condition it cannot
    /// run with (see [`PoolRefusal::kind`]).
    #[error(transparent)]
    Pool(#[from] PoolRefusal),
    /// The run failed while running.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl RunError {
    /// What kind of failure this is: a user error (state of another pipeline version, an SQL
    /// endpoint setting), the pool refusal's kind, or the engine's.
    pub fn kind(&self) -> weir_engine::ErrorKind {
        use weir_engine::ErrorKind;
        match self {
            RunError::IncompatibleState(_)
            | RunError::DamagedState(_)
            | RunError::Serve(weir_query::ServeError::Config(_)) => ErrorKind::User,
            RunError::Serve(_) => ErrorKind::Fatal,
            RunError::Pool(r) => r.kind(),
            RunError::Engine(e) => e.kind(),
        }
    }
}

/// Why a run cannot go on as a pool worker: the pipeline or the options do not fit a pool
/// (the user's to fix), or a condition planning rules out was met (an internal failure).
#[derive(Debug, thiserror::Error)]
pub enum PoolRefusal {
    /// The pipeline file does not fit a pool; the text says why (and names the file when
    /// the whole pipeline was judged, see [`crate::pool::pool_refusal`]).
    #[error("{0}")]
    Pipeline(String),
    /// `weir replay` asked to run as a pool worker.
    #[error("a replay runs on its own, with its own state: it cannot run as a pool worker")]
    Replay,
    /// `--worker` names no usable file-name part.
    #[error("worker id `{0}` is not usable in file names: use letters, digits, `-`, `_` and `.`")]
    WorkerId(String),
    /// Internal: the plan has no checkpoint location, which the pipeline check requires.
    #[error("no checkpoint location")]
    NoCheckpointLocation,
    /// Internal: a worker's job has no checkpoint, which the pipeline check requires.
    #[error("no checkpoint")]
    NoCheckpoint,
    /// Internal: a view could not add the partition column its state keeps in a pool.
    #[error("view {view}")]
    View {
        view: String,
        #[source]
        cause: weir_operators::CompileError,
    },
    /// Internal: a source was asked for a pool reader that its kind does not give (the
    /// pipeline check refuses such sources first).
    #[error("source `{0}` cannot be read by a worker pool")]
    NotPooled(String),
    /// The HTTP client asking the other workers for their rows could not start.
    #[error("cannot start the HTTP client that asks the other workers for their rows")]
    Peers {
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PoolRefusal {
    /// A user error when the pipeline or the options must change; otherwise an internal
    /// failure ([`weir_engine::ErrorKind::Fatal`]).
    pub fn kind(&self) -> weir_engine::ErrorKind {
        use weir_engine::ErrorKind;
        match self {
            PoolRefusal::Pipeline(_) | PoolRefusal::Replay | PoolRefusal::WorkerId(_) => {
                ErrorKind::User
            }
            PoolRefusal::NoCheckpointLocation
            | PoolRefusal::NoCheckpoint
            | PoolRefusal::View { .. }
            | PoolRefusal::NotPooled(_)
            | PoolRefusal::Peers { .. } => ErrorKind::Fatal,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub parallelism: usize,
    pub records_in: u64,
    pub bad: u64,
    pub late: u64,
    pub windows_emitted: u64,
    pub rows_written: Vec<(String, u64)>,
    /// Per sink, the rows committed (see `RunStats::rows_committed`): all of
    /// `rows_written` unless the run stopped with rows after its last checkpoint.
    pub rows_committed: Vec<(String, u64)>,
    pub dead_letters: u64,
    /// Records the sources' logs deleted before they were read (`weir_records_expired_total`).
    pub records_expired: u64,
    pub elapsed: Duration,
    /// The checkpoint the run started from.
    pub restored_epoch: Option<u64>,
    /// Checkpoints completed by this run, and figures of the last one.
    pub checkpoints: u64,
    pub last_checkpoint: Option<CheckpointFigures>,
}

/// Figures of one checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointFigures {
    pub epoch: u64,
    pub duration_ms: u64,
    pub state_rows: u64,
    pub state_bytes: u64,
    /// How long before the end of the run it completed.
    pub age_ms: u64,
}

impl RunSummary {
    /// Records per second of wall time.
    pub fn events_per_second(&self) -> f64 {
        self.records_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The parallelism a run of `plan` uses.
pub fn parallelism(plan: &Plan, opts: &RunOptions) -> usize {
    opts.parallelism.or(plan.parallelism).unwrap_or(1).max(1)
}

/// Runs a plan until its sources end (or `opts.stop`), in the mode `opts` select
/// ([`crate::mode::select`]): standalone, a replay, or a pool worker.
pub fn run(plan: Plan, opts: RunOptions) -> Result<RunSummary, RunError> {
    crate::mode::select(&opts)?.run(plan, &opts)
}

/// Runs `plan` as one job, restoring its checkpoint (when it has one).
pub(crate) fn run_single(
    plan: &Plan,
    opts: &RunOptions,
    hooks: &dyn JobHooks,
) -> Result<RunSummary, RunError> {
    let checkpoint = match &plan.checkpoint {
        Some(c) => Some(open_checkpoint(plan, c)?),
        None => None,
    };
    run_job(plan, opts, checkpoint, hooks)
}

/// Runs one job of `plan`: the whole run, or one run of a pool worker; what differs between
/// modes is asked of `hooks`.
pub(crate) fn run_job(
    plan: &Plan,
    opts: &RunOptions,
    checkpoint: Option<CheckpointSpec>,
    hooks: &dyn JobHooks,
) -> Result<RunSummary, RunError> {
    let n = parallelism(plan, opts);
    let manifest = checkpoint
        .as_ref()
        .and_then(|c| c.restored.as_ref().map(|r| &r.manifest));
    let sources = open_sources(plan, opts, manifest, hooks)?;
    let (sinks, sink_index, deliveries) = open_sinks(plan, checkpoint.is_some(), hooks)?;
    let operators = operators(plan, n, &sink_index)?;
    let dead_letter = open_dead_letter(plan, checkpoint.is_some())?;
    let stats = run_stats(plan, &operators, &sinks, deliveries);
    if let Ok(mut stages) = stats.stages.lock() {
        stages.extend(hooks.stages());
    }
    let (live, server) = start_live(plan, opts, hooks, &stats, manifest.is_some())?;
    tracing::info!(pipeline = %plan.name, parallelism = n, "run starting");
    let progress = hooks.progress(&stats);
    let restored_epoch = manifest.map(|m| m.epoch);
    let report = job::run(
        JobSpec {
            sources,
            operators,
            sinks,
            dead_letter,
            dead_letter_retry: plan.dead_letter_retry.clone(),
            parallelism: n,
            checkpoint,
            live,
        },
        stats.clone(),
        opts.stop.clone(),
    );
    if let Some(p) = progress {
        p.finish();
    }
    let report = report?;
    let summary = summary(n, &stats, &report, restored_epoch);
    if let Some(f) = &opts.on_finished {
        f(&summary);
    }
    if let Some(server) = server {
        if opts.keep_serving {
            tracing::info!("every source ended; still answering SQL until stopped (Ctrl-C)");
            while !opts.stop.is_stopped() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        server.shutdown();
    }
    Ok(summary)
}

/// The readers of the plan's sources, each resuming where `manifest` says unless the mode
/// starts it elsewhere (a replay's range, a pool worker's readers that outlive its jobs).
fn open_sources(
    plan: &Plan,
    opts: &RunOptions,
    manifest: Option<&weir_engine::checkpoint::Manifest>,
    hooks: &dyn JobHooks,
) -> Result<Vec<SourceSpec>, RunError> {
    let mut sources = Vec::new();
    let mut first_partition = 0;
    for (i, s) in plan.sources.iter().enumerate() {
        let resume = |key: &str| manifest.and_then(|m| m.resume(&s.name, key));
        let opened = hooks.open_source(
            s,
            OpenSource {
                index: i,
                name: &s.name,
                first_partition,
                output_schema: s.output_schema.clone(),
                resume: &resume,
                bounds: &crate::connectors::unbounded,
                until_caught_up: opts.until_caught_up,
                caught_up_timeout: opts.caught_up_timeout,
            },
        )?;
        let (reader, keys) = (opened.reader, opened.keys);
        let partitions = keys.len();
        first_partition += partitions;
        sources.push(SourceSpec {
            name: s.name.clone(),
            reader,
            decoder: s.decoder.clone(),
            partitions,
            partition_keys: keys,
            max_out_of_orderness_ms: s.max_out_of_orderness_ms as i64,
            max_future_ms: Some(s.max_future_ms.min(i64::MAX as u64) as i64),
        });
    }
    Ok(sources)
}

/// The sinks that receive rows (others are not opened) as the mode opens them, the index of
/// each plan sink among them (`usize::MAX` when not opened), and the webhook sinks' delivery
/// statistics.
fn open_sinks(
    plan: &Plan,
    checkpointed: bool,
    hooks: &dyn JobHooks,
) -> Result<(Vec<job::SinkSpec>, Vec<usize>, Deliveries), RunError> {
    // Only sinks that receive rows are opened.
    let used: Vec<bool> = (0..plan.sinks.len())
        .map(|i| {
            plan.windows.iter().any(|w| w.sinks.contains(&i))
                || plan.views.iter().any(|v| v.sinks.contains(&i))
        })
        .collect();
    let mut sink_index = vec![usize::MAX; plan.sinks.len()];
    let mut sinks: Vec<job::SinkSpec> = Vec::new();
    let mut deliveries = Vec::new();
    for (i, s) in plan.sinks.iter().enumerate() {
        // a sink an output feeds has that output's schema
        let Some(schema) = s.schema.clone().filter(|_| used[i]) else {
            tracing::warn!(sink = %s.name, "sink receives no output and is not opened");
            continue;
        };
        let sink = hooks.open_sink(
            s,
            &mut OpenSink {
                pipeline: &plan.name,
                name: &s.name,
                schema: &schema,
                checkpointed,
                replaces: None,
                deliveries: &mut deliveries,
            },
        )?;
        sink_index[i] = sinks.len();
        sinks.push(job::SinkSpec {
            name: s.name.clone(),
            sink,
            retry: s.retry.clone(),
        });
    }
    Ok((sinks, sink_index, deliveries))
}

/// The windows' and views' operators, `n` workers each, writing to `sink_index`'s sinks.
fn operators(plan: &Plan, n: usize, sink_index: &[usize]) -> Result<Vec<OperatorSpec>, RunError> {
    let mut operators = Vec::new();
    for w in &plan.windows {
        let workers = (0..n)
            .map(|_| {
                WindowWorker::new(w.config.clone()).map(|x| Box::new(x) as Box<dyn WorkerOperator>)
            })
            .collect::<Result<Vec<_>, _>>()?;
        operators.push(OperatorSpec {
            name: w.config.name.clone(),
            source: w.source,
            workers,
            merge: Box::new(WindowMerger::new(w.config.clone())?),
            sinks: w.sinks.iter().map(|s| sink_index[*s]).collect(),
        });
    }
    for v in &plan.views {
        let workers = (0..n)
            .map(|_| {
                ViewWorker::new(v.config.clone()).map(|x| Box::new(x) as Box<dyn WorkerOperator>)
            })
            .collect::<Result<Vec<_>, _>>()?;
        operators.push(OperatorSpec {
            name: v.config.name.clone(),
            source: v.source,
            workers,
            merge: Box::new(ViewMerger::new(v.config.clone())?),
            sinks: v.sinks.iter().map(|s| sink_index[*s]).collect(),
        });
    }
    Ok(operators)
}

/// The dead-letter output (committed per checkpoint when the run checkpoints).
fn open_dead_letter(
    plan: &Plan,
    checkpointed: bool,
) -> Result<Box<dyn job::DeadLetterSink>, RunError> {
    let dead_letter = plan.dead_letter.open(checkpointed)?;
    Ok(dead_letter)
}

/// The run's statistics, with what `weir_status` and `/metrics` read besides the counters.
fn run_stats(
    plan: &Plan,
    operators: &[OperatorSpec],
    sinks: &[job::SinkSpec],
    deliveries: Deliveries,
) -> Arc<RunStats> {
    let op_names: Vec<String> = operators.iter().map(|o| o.name.clone()).collect();
    let sink_names: Vec<String> = sinks.iter().map(|s| s.name.clone()).collect();
    let source_names: Vec<String> = plan.sources.iter().map(|s| s.name.clone()).collect();
    let stats = Arc::new(RunStats::new(&source_names, &op_names, &sink_names));
    // what `weir_dead_letters` shows any SQL client: the pipeline's secrets masked
    stats
        .recent_dead_letters
        .set_redactor(Arc::new(|text: &str| {
            crate::secrets::redact(text).into_owned()
        }));
    for (planned, st) in plan.sources.iter().zip(&stats.sources) {
        if let (Some(w), Ok(mut list)) = (&planned.waiting, st.waiting.lock()) {
            list.push(w.clone());
        }
    }
    if let Ok(mut list) = stats.deliveries.lock() {
        list.extend(deliveries);
    }
    if let Ok(mut overflows) = stats.sum_overflows.lock() {
        let windows = plan
            .windows
            .iter()
            .map(|w| (&w.config.name, &w.config.aggregates));
        let views = plan
            .views
            .iter()
            .map(|v| (&v.config.name, &v.config.aggregates));
        for (name, aggregates) in windows.chain(views) {
            overflows.extend(
                aggregates
                    .iter()
                    .filter(|a| a.output_type.is_some())
                    .map(|a| (name.clone(), a.overflows.clone())),
            );
        }
    }
    stats
}

/// Live barriers publish snapshots for SQL and send views' changes to their sinks: the live
/// state and the SQL server, when the plan serves SQL or a view has sinks. A mode that keeps
/// them across its jobs (a pool worker) gets its own back, serving this job's state and
/// statistics: no server is returned to stop at the job's end. A job that `restores` a
/// checkpoint has queries refused until its first snapshot shows what it restored.
fn start_live(
    plan: &Plan,
    opts: &RunOptions,
    hooks: &dyn JobHooks,
    stats: &Arc<RunStats>,
    restores: bool,
) -> Result<(Option<LiveSpec>, Option<SqlServer>), RunError> {
    let views_with_sinks = plan.views.iter().any(|v| !v.sinks.is_empty());
    if plan.serve.is_none() && !views_with_sinks {
        return Ok((None, None));
    }
    let mut tables = Vec::new();
    for w in &plan.windows {
        // emitted windows are kept (in memory and checkpoints) only for SQL to show them
        let retain_ms = match plan.serve {
            Some(_) => w.retain_ms.unwrap_or(DEFAULT_RETAIN_MS) as i64,
            None => 0,
        };
        tables.push(LiveTableDef::new(
            &w.config.name,
            LiveKind::Window { retain_ms },
            &w.config.output_schema()?,
            w.config.keys.clone(),
        ));
    }
    for v in &plan.views {
        tables.push(LiveTableDef::new(
            &v.config.name,
            LiveKind::View,
            &v.config.output_schema()?,
            v.config.keys.clone(),
        ));
    }
    let fresh = hooks.live_scope(LiveState::new(&plan.name, tables));
    if restores {
        // before the server answers: empty tables would say the restored state is gone
        fresh.restoring();
    }
    let serve = |state: Arc<LiveState>, stats: CurrentStats| -> Result<_, RunError> {
        Ok(match &plan.serve {
            Some(sv) => Some(SqlServer::start(
                &ServeConfig {
                    http: sv.http.clone(),
                    postgres: sv.postgres.clone(),
                    token: sv.token.clone(),
                    password: sv.password.clone(),
                    insecure: opts.insecure,
                    limits: sv.limits.clone(),
                    peers: hooks.sql_peers(),
                    graph: plan.console_graph(),
                },
                state,
                stats,
            )?),
            None => None,
        })
    };
    let (state, server) = match hooks.kept_live() {
        Some(kept) => {
            let state = kept.for_job(fresh, stats, serve)?;
            if restores {
                state.restoring();
            }
            (state, None)
        }
        None => {
            let state = Arc::new(fresh);
            let server = serve(state.clone(), stats.clone().into())?;
            (state, server)
        }
    };
    let refresh_ms = plan
        .serve
        .as_ref()
        .map_or(DEFAULT_REFRESH_MS, |sv| sv.refresh_ms);
    let live = LiveSpec {
        state,
        interval: Duration::from_millis(refresh_ms),
    };
    Ok((Some(live), server))
}

/// What the run did, from its statistics.
fn summary(
    n: usize,
    stats: &RunStats,
    report: &weir_engine::job::RunReport,
    restored_epoch: Option<u64>,
) -> RunSummary {
    let get = RunStats::get;
    let summary = RunSummary {
        parallelism: n,
        records_in: get(&stats.records_in),
        bad: get(&stats.bad),
        late: stats.late_total(),
        windows_emitted: stats.windows_total(),
        rows_written: stats
            .rows_written
            .iter()
            .map(|c| (c.name.clone(), get(&c.value)))
            .collect(),
        rows_committed: stats
            .rows_committed
            .iter()
            .map(|c| (c.name.clone(), get(&c.value)))
            .collect(),
        dead_letters: get(&stats.dead_letters),
        records_expired: stats.sources.iter().map(|s| get(&s.records_expired)).sum(),
        elapsed: report.elapsed,
        restored_epoch,
        checkpoints: get(&stats.checkpoints.completed),
        last_checkpoint: (get(&stats.checkpoints.completed) > 0).then(|| CheckpointFigures {
            epoch: get(&stats.checkpoints.last_epoch),
            duration_ms: get(&stats.checkpoints.last_duration_ms),
            state_rows: get(&stats.checkpoints.last_rows),
            state_bytes: get(&stats.checkpoints.last_bytes),
            age_ms: (weir_engine::time::now_ms().max(0) as u64)
                .saturating_sub(get(&stats.checkpoints.last_completed_ms)),
        }),
    };
    summary
}

/// Opens the checkpoint store and reads the newest intact checkpoint (a damaged newer one is
/// skipped with a warning: the outputs then roll back to the one restored), refusing one
/// written by an incompatible version of the pipeline.
fn open_checkpoint(plan: &Plan, c: &PlannedCheckpoint) -> Result<CheckpointSpec, RunError> {
    let store = Arc::new(CheckpointStore::open(&c.location)?);
    store.hold_for_writing(weir_engine::checkpoint::lock_wait())?;
    let (mut restored, skipped) = store.restorable()?;
    if restored.is_none() && !skipped.is_empty() {
        // starting from nothing would have the sinks' recovery drop what they committed
        return Err(RunError::DamagedState(format!(
            "{}: every checkpoint there is damaged (epochs {skipped:?}; the warnings above say \
             how): the run does not start from nothing, which would drop the outputs the \
             checkpoints committed. Put the folder back from a backup, or move it away to \
             start the pipeline over (its outputs start over too)",
            c.location
        )));
    }
    if let Some(r) = &mut restored {
        check_compatible(plan, &c.location, &r.manifest)?;
        rename_former_keys(plan, &mut r.manifest);
        if !skipped.is_empty() {
            tracing::warn!(
                epoch = r.manifest.epoch,
                damaged = ?skipped,
                "restoring an older checkpoint: the newer ones are damaged, and are discarded \
                 (their manifests deleted: garbage collection would count them as kept)"
            );
            store.discard(&skipped)?;
        }
    }
    Ok(CheckpointSpec {
        store,
        interval: Duration::from_millis(c.interval_ms),
        after_windows: c.after_windows,
        keep: c.keep,
        pipeline: plan.name.clone(),
        fingerprint: plan.fingerprint(),
        restored,
        ownership: None,
    })
}

/// Renames the partitions `m` records under keys an earlier version wrote differently.
fn rename_former_keys(plan: &Plan, m: &mut checkpoint::Manifest) {
    for s in &plan.sources {
        let renamed = m.rename_partitions(&s.name, &s.input.former_partition_keys());
        if renamed > 0 {
            tracing::info!(source = %s.name, renamed, "checkpoint: partitions recorded under their former keys are restored under their keys now");
        }
    }
}

/// The plan's fingerprint to compare with `stored`: an item an earlier version wrote
/// differently (see `Plan::former_fingerprint`) as `stored` has it, when it has it so.
pub(crate) fn fingerprint_against(
    plan: &Plan,
    stored: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut current = plan.fingerprint();
    for (key, former) in plan.former_fingerprint() {
        if stored.get(&key) == Some(&former) {
            current.insert(key, former);
        }
    }
    current
}

/// Refuses a checkpoint written by an incompatible version of the pipeline.
pub(crate) fn check_compatible(
    plan: &Plan,
    location: &str,
    m: &checkpoint::Manifest,
) -> Result<(), RunError> {
    let current = fingerprint_against(plan, &m.fingerprint);
    if let Err(changes) = checkpoint::compatibility(&m.fingerprint, &current) {
        return Err(RunError::IncompatibleState(format!(
            "{}: the checkpoint in {location} (epoch {}) was written by a different version of \
             this pipeline and cannot be restored: {changes}. Restore the previous \
             definition, or start without state by moving {location} away (the outputs then \
             start over too)",
            plan.file.display(),
            m.epoch,
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::ErrorKind;

    #[test]
    fn a_pool_refusal_of_the_pipeline_is_a_user_error_an_internal_one_is_not() {
        for user in [
            PoolRefusal::Pipeline("p.yaml: no checkpoint".into()),
            PoolRefusal::Replay,
            PoolRefusal::WorkerId("a/b".into()),
        ] {
            assert_eq!(RunError::from(user).kind(), ErrorKind::User);
        }
        for internal in [
            PoolRefusal::NoCheckpointLocation,
            PoolRefusal::NoCheckpoint,
            PoolRefusal::NotPooled("s".into()),
            PoolRefusal::Peers {
                cause: "no TLS backend".into(),
            },
        ] {
            assert_eq!(RunError::from(internal).kind(), ErrorKind::Fatal);
        }
    }

    #[test]
    fn a_pool_refusal_keeps_its_cause_out_of_its_own_text() {
        let e = RunError::from(PoolRefusal::View {
            view: "v".into(),
            cause: weir_operators::CompileError::AggregateInFilter,
        });
        assert_eq!(e.to_string(), "view v");
        assert_eq!(
            weir_engine::error::chain(&e).to_string(),
            "view v: a filter cannot use an aggregate function"
        );
        assert_eq!(e.kind(), ErrorKind::Fatal);
    }
}
