//! A pool worker's run: its store, repartition stages, SQL announcements and heartbeats,
//! and its sequence of jobs over the partitions it is assigned. The plan it runs is
//! retargeted beforehand by the pure steps of [`super`] (`for_worker`, `key_partitioned`);
//! what is here has side effects.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{key_partitioned, pool_refusal, repartition_keys, PoolJob, PoolWorker};
use crate::connectors::{
    internal_topic, DeadLetterConnector, OwnedPartitions, PoolSource, PooledSource, Repartition,
    Repartitioning, RunningRepartition, SinkConnector,
};
use crate::mode::{KeptLive, RunMode};
use crate::plan::Plan;
use crate::run::{check_compatible, run_job, PoolRefusal, RunError, RunOptions, RunSummary};
use weir_engine::checkpoint::{CheckpointSpec, Manifest, Ownership, PartitionColumn};
use weir_engine::job::StopHandle;
use weir_engine::pool::{PoolStore, StateRef};
use weir_engine::stage_stats::StageStats;
use weir_engine::EngineError;
use weir_query::Peers;

/// `plan`'s outputs as configured (before a worker's id is in them), to finish a dead
/// worker's commits with: each connector rolls its own committed outputs forward (the file
/// sink its part files, transactional sinks their pending transactions).
#[derive(Clone)]
struct ConfiguredOutputs {
    sinks: Vec<(String, Box<dyn SinkConnector>)>,
    dead_letter: Box<dyn DeadLetterConnector>,
}

impl ConfiguredOutputs {
    fn of(plan: &Plan) -> Self {
        ConfiguredOutputs {
            sinks: plan
                .sinks
                .iter()
                .map(|s| (s.name.clone(), s.target.clone()))
                .collect(),
            dead_letter: plan.dead_letter.clone(),
        }
    }

    /// Finishes the commits of checkpoint `m` of dead worker `worker` in its outputs, for
    /// worker `adopter`.
    fn roll_forward(&self, worker: &str, adopter: &str, m: &Manifest) -> Result<(), EngineError> {
        for (name, target) in &self.sinks {
            target.roll_forward(name, worker, adopter, m)?;
        }
        self.dead_letter.roll_forward(worker, m)
    }
}

/// Topics not keyed by their windows' key, repartitioned into internal topics which the jobs
/// read instead: `plan`'s sources retargeted to them (their connectors prepare the topics),
/// and the repartition stages to run.
fn repartitioned(
    mut plan: Plan,
    opts: &RunOptions,
) -> Result<(Plan, Vec<Box<dyn Repartition>>), RunError> {
    let mut specs = Vec::new();
    let mut sources = Vec::new();
    for i in 0..plan.sources.len() {
        let Some(keys) = repartition_keys(&plan, i).map_err(PoolRefusal::Pipeline)? else {
            continue;
        };
        let src = &mut plan.sources[i];
        let at = Repartitioning {
            source: &src.name,
            topic: internal_topic(&plan.name, &src.name),
            keys,
            decoder: src.decoder.clone(),
            until_caught_up: opts.until_caught_up,
        };
        let Some(spec) = src.input.repartition(at)? else {
            continue;
        };
        specs.push(spec);
        sources.push(i);
    }
    Ok((key_partitioned(plan, &sources), specs))
}

/// Runs `plan` (as configured) as worker `mode` of a pool.
pub(super) fn run_worker(
    mode: &PoolWorker,
    plan: Plan,
    opts: &RunOptions,
) -> Result<RunSummary, RunError> {
    if let Some(why) = pool_refusal(&plan) {
        return Err(PoolRefusal::Pipeline(why).into());
    }
    let worker = mode.id.clone();
    let Some(location) = plan.checkpoint.as_ref().map(|c| c.location.clone()) else {
        return Err(PoolRefusal::NoCheckpointLocation.into());
    };
    if !weir_engine::pool::valid_worker_id(&worker) {
        return Err(PoolRefusal::WorkerId(worker).into());
    }
    let pool = Arc::new(PoolStore::open(&location, &worker)?);
    // two processes with one worker id would write the same checkpoints
    pool.own()
        .hold_for_writing(weir_engine::checkpoint::lock_wait())?;
    let outputs = ConfiguredOutputs::of(&plan);
    // this worker's own outputs; state kept per partition
    let plan = mode.retarget(plan)?;
    let (plan, specs) = repartitioned(plan, opts)?;
    // stopped and joined when dropped: an error below ends them with the worker
    let mut stages = start_repartition(specs, opts)?;
    // a NATS source's partitions are assigned among the workers that heartbeat
    let address = plan
        .serve
        .as_ref()
        .and_then(|s| s.http.as_deref())
        .map(advertised);
    let _members = if plan
        .sources
        .iter()
        .any(|s| s.input.pool_assigns_partitions())
    {
        Some(weir_engine::pool_members::Heartbeat::start(
            pool.clone(),
            address.unwrap_or_default(),
        )?)
    } else {
        None
    };
    tracing::info!(worker = %worker, checkpoints = %location, "starting as a pool worker");
    // SQL: announce this worker's address; queries read the other workers' rows too
    let token = plan.serve.as_ref().and_then(|s| s.token.clone());
    let announcer = plan
        .serve
        .as_ref()
        .and_then(|s| s.http.as_deref())
        .map(|http| Announcer::start(pool.clone(), advertised(http)));
    let peers = match &announcer {
        Some(a) => Some(Arc::new(
            Peers::new(a.addresses(), token).map_err(|e| PoolRefusal::Peers { cause: e.into() })?,
        )),
        None => None,
    };
    let w = Worker {
        plan,
        opts: opts.clone(),
        pool,
        outputs,
        peers,
        stages: stages.stats(),
        live: Arc::new(KeptLive::default()),
    };
    let result = run_worker_jobs(&w);
    // the SQL server stops here, after the last job
    drop(w);
    drop(announcer);
    match (result, stages.finish()) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(e)) => Err(RunError::Engine(e)),
        (Ok(s), None) => Ok(s),
    }
}

/// Starts the repartition stages of a worker. Reading to the end (`--until-caught-up`), each
/// stage first repartitions what its partitions hold, so that the jobs then see it all.
/// Otherwise the stages run beside the jobs; one that fails stops the worker.
fn start_repartition(
    specs: Vec<Box<dyn Repartition>>,
    opts: &RunOptions,
) -> Result<Stages, RunError> {
    // those started are stopped if a later one cannot start
    let mut stages = Stages(Vec::new());
    for spec in specs {
        let stop = opts.stop.clone();
        let on_end: Box<dyn FnOnce() + Send> = if opts.until_caught_up {
            Box::new(|| {})
        } else {
            Box::new(move || stop.stop())
        };
        stages.0.push(spec.start(on_end)?);
    }
    if opts.until_caught_up {
        // one at a time out of the guard: on an error, it still holds the rest
        while !stages.0.is_empty() {
            let stage = stages.0.remove(0);
            while !stage.is_finished() {
                if opts.stop.is_stopped() {
                    stage.stop();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            stage.join()?;
        }
    }
    Ok(stages)
}

/// A worker's running repartition stages, stopped and joined when dropped (an error of the
/// worker ends them with it, instead of leaving them copying until the process exits).
struct Stages(Vec<Box<dyn RunningRepartition>>);

impl Stages {
    /// What each stage shows of itself.
    fn stats(&self) -> Vec<Arc<StageStats>> {
        self.0.iter().map(|s| s.stats()).collect()
    }

    /// Stops every stage and waits for them; the first failure.
    fn finish(&mut self) -> Option<EngineError> {
        for stage in &self.0 {
            stage.stop();
        }
        let mut failure = None;
        for stage in self.0.drain(..) {
            if let Err(e) = stage.join() {
                failure.get_or_insert(e);
            }
        }
        failure
    }
}

/// How long a worker ending on an error waits for its repartition stages to stop (a stage
/// sends what it read first, which a broker that is down can hold for minutes).
const STAGE_STOP_WAIT: Duration = Duration::from_secs(30);

impl Drop for Stages {
    /// Stops the stages and waits up to [`STAGE_STOP_WAIT`] for them; a stage still running
    /// then is left to end on its own (its stop is asked) and the worker goes on ending.
    fn drop(&mut self) {
        for stage in &self.0 {
            stage.stop();
        }
        let started = std::time::Instant::now();
        while started.elapsed() < STAGE_STOP_WAIT && self.0.iter().any(|s| !s.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for stage in self.0.drain(..) {
            if !stage.is_finished() {
                tracing::warn!(waited = ?STAGE_STOP_WAIT, "a repartition stage is still sending what it read; the worker ends without it");
                continue;
            }
            if let Err(e) = stage.join() {
                tracing::warn!(error = %weir_engine::error::chain(&e), "a repartition stage failed as the worker ended");
            }
        }
    }
}

/// How often a worker announces its SQL address, and how long an announcement counts.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
const ANNOUNCE_FRESH: Duration = Duration::from_secs(8);

/// A thread announcing this worker's SQL address in the pool's store and reading the other
/// members' (queries must not block on the store: they read what it last read). Dropping
/// it stops the thread, which withdraws the address.
struct Announcer {
    running: Arc<AtomicBool>,
    members: Arc<Mutex<Vec<(String, String)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Announcer {
    /// Announces `address` every [`ANNOUNCE_EVERY`] until stopped.
    fn start(pool: Arc<PoolStore>, address: String) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let members = Arc::new(Mutex::new(Vec::new()));
        let (run, cache) = (running.clone(), members.clone());
        let thread = std::thread::spawn(move || {
            while run.load(Ordering::Relaxed) {
                if let Err(e) = pool.announce(&address) {
                    tracing::warn!(error = %e, "cannot announce this worker's SQL address");
                }
                match pool.members(ANNOUNCE_FRESH.as_millis() as i64) {
                    Ok(m) => {
                        if let Ok(mut c) = cache.lock() {
                            *c = m;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the pool's members"),
                }
                for _ in 0..(ANNOUNCE_EVERY.as_millis() / 100) {
                    if !run.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let _ = pool.withdraw();
        });
        Announcer {
            running,
            members,
            thread: Some(thread),
        }
    }

    /// The other members' SQL addresses, as last read.
    fn addresses(&self) -> weir_query::PeerAddresses {
        let members = self.members.clone();
        Arc::new(move || members.lock().map(|m| m.clone()).unwrap_or_default())
    }
}

impl Drop for Announcer {
    /// Stops announcing and withdraws the address.
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The address other workers reach `http` (the `serve.http` setting) at: a wildcard host
/// becomes `WEIR_ADVERTISE_HOST`, else the host name.
fn advertised(http: &str) -> String {
    if let Ok(a) = std::env::var("WEIR_ADVERTISE") {
        return a;
    }
    match http.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]" | "::" | "", port)) => {
            let host = std::env::var("WEIR_ADVERTISE_HOST").unwrap_or_else(|_| {
                std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "127.0.0.1".into())
            });
            format!("{host}:{port}")
        }
        _ => http.to_string(),
    }
}

/// The worker's jobs until it stops; after losing partitions to fencing, it joins the group
/// again with new readers.
fn run_worker_jobs(w: &Worker) -> Result<RunSummary, RunError> {
    let mut summary = None;
    loop {
        let owned: OwnedPartitions = Arc::new(Mutex::new(BTreeMap::new()));
        let releasing: Arc<dyn Fn() + Send + Sync> = {
            let live = w.live.clone();
            Arc::new(move || live.end_job())
        };
        let sources = pooled_sources(&w.plan, &w.opts, &w.pool, &owned, &releasing)?;
        match run_jobs(w, &sources, &owned, &mut summary) {
            Ok(()) => {
                // the last job ended: subscribers are told; with --keep-serving the worker
                // answers from its last state while it still holds its partitions
                let serve = w.opts.keep_serving && w.live.serving();
                w.live.finish(serve);
                if serve {
                    tracing::info!(
                        "every partition is read to its end; still answering SQL until stopped"
                    );
                    while !w.opts.stop.is_stopped() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                for s in &sources {
                    s.lock()?.close();
                }
                return summary
                    .ok_or_else(|| RunError::Engine(EngineError::Internal("no job ran".into())));
            }
            Err(RunError::Engine(EngineError::Fenced(why))) => {
                // Another worker owns a partition this one still read: leave the group and
                // join again, reading every assigned partition from its checkpoint.
                tracing::warn!(reason = %why, "this worker lost partitions; joining the group again");
                for s in &sources {
                    s.lock()?.close();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pooled readers of a worker's sources, claiming the partitions they are assigned in
/// `pool`.
fn pooled_sources(
    plan: &Plan,
    opts: &RunOptions,
    pool: &Arc<PoolStore>,
    owned: &OwnedPartitions,
    releasing: &Arc<dyn Fn() + Send + Sync>,
) -> Result<Vec<PooledSource>, RunError> {
    let mut out = Vec::new();
    let mut first_partition = 0;
    for (index, s) in plan.sources.iter().enumerate() {
        let source = s.input.pooled(&PoolSource {
            index,
            name: &s.name,
            first_partition,
            until_caught_up: opts.until_caught_up,
            caught_up_timeout: opts.caught_up_timeout,
            pool,
            owned,
            releasing: releasing.clone(),
        })?;
        first_partition += source.keys.len();
        out.push(source);
    }
    Ok(out)
}

/// With a repartitioned source: the state ids checkpoints of format 1 gave the partitions,
/// which numbered every lane of a repartition topic's partition (its state under the first).
fn legacy_state_ids(plan: &Plan, sources: &[PooledSource]) -> Option<HashMap<String, u32>> {
    let laned = |s: &crate::plan::PlannedSource| s.input.lanes_per_partition();
    plan.sources.iter().any(|s| laned(s).is_some()).then(|| {
        let mut ids = HashMap::new();
        let mut next = 0u32;
        for (s, src) in plan.sources.iter().zip(sources) {
            let per = laned(s).unwrap_or(1);
            for key in &src.keys {
                ids.insert(format!("{}/{key}", s.name), next);
                next += per;
            }
        }
        ids
    })
}

/// A pool worker's settings for its jobs.
struct Worker {
    plan: Plan,
    opts: RunOptions,
    pool: Arc<PoolStore>,
    outputs: ConfiguredOutputs,
    peers: Option<Arc<Peers>>,
    stages: Vec<Arc<StageStats>>,
    /// The live state and SQL server, kept across the jobs.
    live: Arc<KeptLive>,
}

/// Runs jobs over the current assignment until one ends for another reason than a
/// rebalance (a stop, or the end of the input).
fn run_jobs(
    w: &Worker,
    sources: &[PooledSource],
    owned: &OwnedPartitions,
    summary: &mut Option<RunSummary>,
) -> Result<(), RunError> {
    let Worker {
        plan,
        opts,
        pool,
        outputs,
        peers,
        stages,
        live,
    } = w;
    let Some(planned) = &plan.checkpoint else {
        return Err(PoolRefusal::NoCheckpoint.into());
    };
    // where each operator keeps the partition
    let mut columns = HashMap::new();
    for w in &plan.windows {
        columns.insert(w.config.name.clone(), PartitionColumn::Key(0));
    }
    for v in &plan.views {
        if let Some(i) = v.config.partition_state_column()? {
            columns.insert(v.config.name.clone(), PartitionColumn::State(i));
        }
    }
    // partition key (`source/topic/partition`) → its id in the state's partition column
    let mut ids = HashMap::new();
    for (s, src) in plan.sources.iter().zip(sources) {
        for key in &src.keys {
            ids.insert(format!("{}/{key}", s.name), ids.len() as u32);
        }
    }
    let legacy_ids = legacy_state_ids(plan, sources);
    loop {
        let owned_now = owned
            .lock()
            .map_err(|_| EngineError::Internal("the owned partitions are poisoned".into()))?
            .clone();
        let restore = pool.restore_numbered(&owned_now, &ids, legacy_ids.as_ref(), &columns)?;
        if let Some(r) = &restore.restored {
            check_compatible(plan, &planned.location, &r.manifest)?;
        }
        for (r, m) in &restore.foreign {
            finish_commit(pool, outputs, r, m)?;
        }
        tracing::info!(
            partitions = owned_now.len(),
            epoch = restore.restored.as_ref().map_or(0, |r| r.manifest.epoch),
            "pool worker: starting a job with its assigned partitions"
        );
        let checkpoint = CheckpointSpec {
            store: pool.own(),
            interval: Duration::from_millis(planned.interval_ms),
            after_windows: planned.after_windows,
            keep: planned.keep,
            pipeline: plan.name.clone(),
            fingerprint: plan.fingerprint(),
            restored: restore.restored,
            ownership: Some(Ownership {
                owned: owned_now.clone(),
                fencing: pool.clone(),
            }),
        };
        // a job of its own stop handle: a hand-over stops the job, not the worker
        let job_stop = StopHandle::new();
        let done = Arc::new(AtomicBool::new(false));
        let forward = {
            let (outer, inner, done) = (opts.stop.clone(), job_stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if outer.is_stopped() {
                        inner.stop();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let job_opts = RunOptions {
            stop: job_stop,
            ..opts.clone()
        };
        let job = PoolJob {
            sources,
            worker: pool.worker(),
            // (source, partition key): a source's name may hold a `/`
            owned: plan
                .sources
                .iter()
                .zip(sources)
                .flat_map(|(s, src)| src.keys.iter().map(move |key| (&s.name, key)))
                .filter(|(name, key)| owned_now.contains_key(&format!("{name}/{key}")))
                .map(|(name, key)| (name.clone(), key.clone()))
                .collect(),
            peers: peers.clone(),
            stages: stages.clone(),
            live,
        };
        let result = run_job(plan, &job_opts, Some(checkpoint), &job);
        // until the next job publishes, queries wait (also after a job that failed)
        live.end_job();
        done.store(true, Ordering::Relaxed);
        let _ = forward.join();
        let s = result?;
        if let Some(c) = &s.last_checkpoint {
            pool.mark_committed(c.epoch)?;
        }
        let (mut handed_over, mut flushed_to_wait) = (false, false);
        let mut ends = BTreeMap::new();
        for src in sources {
            let r = src.lock()?;
            handed_over |= r.handed_over();
            flushed_to_wait |= r.flushed_to_wait();
            ends.extend(r.finished_ends());
        }
        let stopped = opts.stop.is_stopped();
        if opts.until_caught_up && !handed_over && !stopped {
            // the job ended with its input: its final checkpoint flushed the last windows
            // of the partitions it owned, and is committed
            pool.mark_finished(&owned_now, &ends)?;
        }
        *summary = Some(s);
        if (!handed_over && !flushed_to_wait) || stopped {
            return Ok(());
        }
    }
}

/// Before restoring partitions from another worker's checkpoint: finishes its commit when
/// that worker did not record it (it died between the checkpoint and its commit).
fn finish_commit(
    pool: &PoolStore,
    outputs: &ConfiguredOutputs,
    r: &StateRef,
    m: &Manifest,
) -> Result<(), RunError> {
    if pool.committed_epoch(&r.worker)? >= r.epoch {
        return Ok(());
    }
    tracing::info!(
        worker = %r.worker,
        epoch = r.epoch,
        "finishing the commit of a checkpoint of a worker that stopped before it recorded it"
    );
    outputs.roll_forward(&r.worker, pool.worker(), m)?;
    Ok(())
}
