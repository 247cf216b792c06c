//! The runtime of one job: reader threads, parallel workers, a merge stage and sinks, wired
//! with bounded channels.
//!
//! ```text
//!  readers (one per source) ──round-robin chunks──▶ N workers ──partial windows──▶ merger ──▶ sinks
//!                                                     │ decode, sequence, filter,          emits windows
//!                                                     │ late check, partial aggregation    closed on every
//!                                                     └──bad / late records──▶ dead-letter  worker
//! ```
//!
//! Chunks are dispatched round-robin in one global order and every worker handles its queue
//! in order, so a worker waiting for the previous chunk of a partition to be sequenced always
//! waits on a chunk that is already being handled: the pipeline cannot deadlock. A full
//! channel blocks its sender, which is the backpressure that reaches back to the readers.
//!
//! [`run`] only wires the stages, each in a module of its own: `reader` (the reader
//! threads), `worker`, `merger`, `outbox` (what the merger holds for a sink without room,
//! so that a failing sink does not stop live snapshots), `outputs` (the sink and dead-letter
//! threads, which share one commit lifecycle) and `coordinator` (checkpoint and live
//! barriers); `channels` holds what they share. The traits and specs they run are in [`crate::api`], re-exported here.

mod channels;
mod coordinator;
mod merger;
mod outbox;
mod outputs;
mod reader;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};

pub use crate::api::{
    Committable, DeadLetterSink, Decode, JobSpec, MergeOperator, OperatorSpec, PartialWindow,
    PartitionFlush, PartitionReader, ReaderContext, RunReport, Sink, SinkSpec, SourceSpec,
    StopHandle, WorkerOperator,
};
use crate::checkpoint::{
    restored_partitions, CheckpointSpec, Epochs, Manifest, Part, Rendezvous, NO_PARTITION,
    UNKNOWN_PARTITION,
};
use crate::clock::{Clocks, WATERMARK_END, WATERMARK_MIN};
use crate::dead_letter::PartitionInfo;
use crate::events::Resume;
use crate::live::LiveSpec;
use crate::progress::Progress;
use crate::retry::{Retrier, RetryPolicy};
use crate::stats::RunStats;
use crate::time::now_ms;
use crate::EngineError;
use channels::{
    spawn, CheckpointLink, DeadMsg, Dispatcher, Failure, MergeInput, OutputGate, SinkMsg,
    WorkerMsg, WORKER_QUEUE,
};
use coordinator::{live_barriers, Coordinator};
use merger::{merger_loop, LiveTables, MergePart, MergerStart};
use outputs::{DeadLetterThread, RejectMsg, SinkThread};
use reader::read_source;
use worker::{worker_loop, ExitBarrier, WorkerCtx};

/// Runs a job to its end: until every source ended (or `stop` was triggered) and every
/// output was flushed.
pub fn run(
    spec: JobSpec,
    stats: Arc<RunStats>,
    stop: StopHandle,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let n = parallelism(&spec)?;
    let mut spec = spec;
    let checkpoint = spec.checkpoint.take();
    let live = spec.live.take();
    let mut w = Wiring::new(&spec, n, stats, stop);
    w.live_state = live.as_ref().map(|l| l.state.clone());
    // the emitted windows the checkpoint kept for SQL, when SQL shows them (not in a pool)
    let retained = match (&checkpoint, &live) {
        (Some(cp), Some(_)) if cp.ownership.is_none() => cp
            .restored
            .as_ref()
            .map(|r| cp.store.load_retained(&r.manifest))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut start = w.restore(&mut spec, checkpoint.as_ref(), retained)?;
    let (link, rendezvous, parts_rx) = checkpoint_link(
        n,
        checkpoint.is_some(),
        live.is_some(),
        start.completed_epoch(),
    );
    let outputs = Outputs {
        checkpointing: checkpoint.is_some(),
        link: link.clone(),
        start: &start,
    };
    // Rows sinks refuse for good go to the dead-letter thread, tagged with their epoch.
    let (rejects_tx, rejects_rx) = bounded::<RejectMsg>(64);
    let sink_count = spec.sinks.len();
    let sink_feeds = sink_feeds(&spec);
    let sinks = std::mem::take(&mut spec.sinks);
    let sink_senders = w.start_sinks(sinks, sink_feeds, &outputs, rejects_tx)?;
    let dead_tx = w.start_dead_letter(
        (spec.dead_letter, spec.dead_letter_retry),
        sink_count,
        &outputs,
        rejects_rx,
    )?;
    let sources = spec.sources;
    let (merge_parts, worker_parts, op_sources) = split_operators(spec.operators, n);
    let live_interval = live.as_ref().map(|l| l.interval);
    let merge_tx = w.start_merger(
        merge_parts,
        sink_senders,
        (
            start.emitted.clone(),
            std::mem::take(&mut start.closed),
            std::mem::take(&mut start.retained),
        ),
        link.clone(),
        live,
        op_sources.clone(),
    )?;
    let worker_senders = w.start_workers(
        worker_parts,
        Stages {
            sources: &sources,
            op_sources,
            dead_tx,
            merge_tx,
            link: link.clone(),
            rendezvous,
            live: live_interval.is_some(),
        },
    )?;
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: worker_senders,
        cut: start.cut.clone(),
        lane_cut: start.lane_cut.clone(),
        readers_left: sources.len(),
        checkpointing: checkpoint.is_some(),
    }));
    w.start_readers(sources, &dispatcher)?;
    if let Some(interval) = live_interval {
        let dispatcher = dispatcher.clone();
        let failure = w.failure.clone();
        w.spawn("live-barriers".into(), move || {
            live_barriers(&dispatcher, interval, &failure)
        })?;
    }
    if let (Some(cp), Some(link)) = (checkpoint, link) {
        w.start_coordinator(cp, link, parts_rx, &dispatcher, &start, sink_count)?;
    }
    drop(dispatcher);
    w.join(started)
}

/// The parallelism of `spec`, once every operator has one worker instance per worker.
fn parallelism(spec: &JobSpec) -> Result<usize, EngineError> {
    let n = spec.parallelism.max(1);
    for op in &spec.operators {
        if op.workers.len() != n {
            return Err(EngineError::Internal(format!(
                "operator {} has {} worker instances for parallelism {n}",
                op.name,
                op.workers.len()
            )));
        }
    }
    Ok(n)
}

/// What the threads taking part in checkpoints share (with checkpoints), where workers meet
/// at barriers (with checkpoints or live snapshots), and where checkpoint parts arrive.
fn checkpoint_link(
    n: usize,
    checkpointing: bool,
    live: bool,
    completed_epoch: u64,
) -> (
    Option<CheckpointLink>,
    Option<Arc<Rendezvous>>,
    Receiver<Part>,
) {
    let (parts_tx, parts_rx) = crossbeam_channel::unbounded::<Part>();
    // workers meet at checkpoint and live barriers
    let rendezvous = (checkpointing || live).then(|| Arc::new(Rendezvous::new(n)));
    let link = match (checkpointing, &rendezvous) {
        (true, Some(r)) => Some(CheckpointLink {
            parts: parts_tx,
            epochs: Arc::new(Epochs::default()),
            rendezvous: r.clone(),
        }),
        _ => None,
    };
    if let Some(l) = &link {
        l.epochs.completed.store(completed_epoch, Ordering::SeqCst);
    }
    (link, rendezvous, parts_rx)
}

/// Per sink, for every operator feeding it: (the operator, the sink's index among the
/// operator's sinks); and the operators' names, by index.
fn sink_feeds(spec: &JobSpec) -> SinkFeeds {
    let mut feeds: Vec<Vec<(usize, usize)>> = vec![Vec::new(); spec.sinks.len()];
    for (oi, op) in spec.operators.iter().enumerate() {
        for (k, &s) in op.sinks.iter().enumerate() {
            feeds[s].push((oi, k));
        }
    }
    let outputs = spec.operators.iter().map(|o| o.name.clone()).collect();
    SinkFeeds { feeds, outputs }
}

/// What feeds each sink (see [`sink_feeds`]).
struct SinkFeeds {
    feeds: Vec<Vec<(usize, usize)>>,
    outputs: Arc<[String]>,
}

/// Worker instances of each worker, tagged with their operator.
type WorkerParts = Vec<Vec<(usize, Box<dyn WorkerOperator>)>>;

/// The operators' merge parts (with their sinks), each worker's instances, and each
/// operator's source.
fn split_operators(
    operators: Vec<OperatorSpec>,
    workers: usize,
) -> (Vec<MergePart>, WorkerParts, Vec<usize>) {
    let mut merge_parts = Vec::new();
    let mut worker_parts: WorkerParts = (0..workers).map(|_| Vec::new()).collect();
    let mut op_sources = Vec::new();
    for (oi, op) in operators.into_iter().enumerate() {
        op_sources.push(op.source);
        merge_parts.push((op.merge, op.sinks));
        for (w, inst) in op.workers.into_iter().enumerate() {
            worker_parts[w].push((oi, inst));
        }
    }
    (merge_parts, worker_parts, op_sources)
}

/// Where a run starts: from scratch, or from the checkpoint it restored.
/// Per operator whose windows close per partition: (partition, watermark up to which its
/// windows were emitted).
pub(super) type ClosedPartitions = Vec<Vec<(usize, i64)>>;

struct Start {
    /// Per global partition: where it continues.
    cut: Vec<Option<Resume>>,
    /// Per partition with lanes: each lane's next upstream offset.
    lane_cut: HashMap<usize, Vec<u64>>,
    /// Per operator: the watermark up to which windows were emitted.
    emitted: Vec<i64>,
    /// Per operator whose windows close per partition: (partition, watermark up to which
    /// its windows were emitted).
    closed: ClosedPartitions,
    /// Per operator: the emitted windows kept for SQL that the checkpoint holds.
    retained: Vec<Vec<RecordBatch>>,
    /// The manifest of the checkpoint restored.
    manifest: Option<Manifest>,
}

impl Start {
    /// The newest complete checkpoint (0 without one).
    fn completed_epoch(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.epoch)
    }
    /// The epoch the outputs' first rows belong to.
    fn first_epoch(&self) -> u64 {
        self.manifest.as_ref().map_or(1, |m| m.epoch + 1)
    }
}

/// What the output threads start from.
struct Outputs<'a> {
    /// Outputs recover from the checkpoint restored (or from none) before they write.
    checkpointing: bool,
    link: Option<CheckpointLink>,
    start: &'a Start,
}

/// What the workers are wired to.
struct Stages<'a> {
    sources: &'a [SourceSpec],
    /// Per operator, the index of its source.
    op_sources: Vec<usize>,
    dead_tx: Sender<DeadMsg>,
    merge_tx: Sender<MergeInput>,
    link: Option<CheckpointLink>,
    rendezvous: Option<Arc<Rendezvous>>,
    /// Live snapshots are published.
    live: bool,
}

/// What the threads of one run share, and the threads started so far.
struct Wiring {
    workers: usize,
    stats: Arc<RunStats>,
    failure: Failure,
    clocks: Arc<Clocks>,
    progress: Arc<Progress>,
    /// (source, key) of every global partition.
    partition_keys: Vec<(String, String)>,
    operator_names: Vec<String>,
    stop: StopHandle,
    /// Set by a reader giving its partitions up (see [`ReaderContext::handover`]).
    handover: Arc<AtomicBool>,
    /// Outputs still running, and the merger until it published its last snapshot; the last
    /// one to finish marks the progress final, and the live state's last snapshot
    /// `finished`.
    outputs_left: Arc<AtomicUsize>,
    /// Where the job's live snapshots go, if anywhere.
    live_state: Option<Arc<crate::live::LiveState>>,
    /// Closed by the merger while a sink has no room: readers wait at it.
    gate: Arc<OutputGate>,
    threads: Vec<JoinHandle<()>>,
}

impl Wiring {
    fn new(spec: &JobSpec, workers: usize, stats: Arc<RunStats>, stop: StopHandle) -> Self {
        let clocks = Arc::new(Clocks::new(
            &spec
                .sources
                .iter()
                .map(|s| (s.partitions, s.max_out_of_orderness_ms))
                .collect::<Vec<_>>(),
        ));
        let total_partitions: usize = spec.sources.iter().map(|s| s.partitions).sum();
        let progress = Arc::new(Progress::new(
            total_partitions,
            &spec
                .operators
                .iter()
                .map(|o| o.sinks.len())
                .collect::<Vec<_>>(),
        ));
        let first_workers: Vec<Option<&Box<dyn WorkerOperator>>> =
            spec.operators.iter().map(|o| o.workers.first()).collect();
        progress.set_operator_keys(
            spec.operators
                .iter()
                .zip(&first_workers)
                .map(|(o, w)| {
                    // (a view's rows close at the end: it takes no note)
                    let w =
                        w.filter(|w| !w.processing_time() && w.closes_at(0) != WATERMARK_END)?;
                    Some(crate::reread::operator_key(&o.name, |t| w.closes_at(t)))
                })
                .collect(),
            spec.operators
                .iter()
                .zip(&first_workers)
                .map(|(o, w)| (w.is_some_and(|w| w.closes_per_partition()), o.source))
                .collect(),
            spec.sources
                .iter()
                .enumerate()
                .flat_map(|(i, s)| std::iter::repeat_n(i, s.partitions))
                .collect(),
        );
        progress.set_closings(
            first_workers
                .iter()
                .map(|w| {
                    let w = w.filter(|w| !w.processing_time())?;
                    crate::reread::Closings::of(|t| w.closes_at(t))
                })
                .collect(),
        );
        let partition_keys = spec
            .sources
            .iter()
            .flat_map(|s| {
                (0..s.partitions).map(move |i| {
                    let key = s
                        .partition_keys
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| i.to_string());
                    (s.name.clone(), key)
                })
            })
            .collect();
        Wiring {
            workers,
            stats,
            failure: Failure::new(),
            clocks,
            progress,
            partition_keys,
            operator_names: spec.operators.iter().map(|o| o.name.clone()).collect(),
            stop,
            handover: Arc::new(AtomicBool::new(false)),
            // the sinks, the dead-letter output, and the merger's last snapshot
            outputs_left: Arc::new(AtomicUsize::new(spec.sinks.len() + 2)),
            live_state: None,
            gate: Arc::new(OutputGate::default()),
            threads: Vec::new(),
        }
    }

    /// Starts a thread of the run; its error stops the run.
    fn spawn<F>(&mut self, name: String, f: F) -> Result<(), EngineError>
    where
        F: FnOnce() -> Result<(), EngineError> + Send + 'static,
    {
        self.threads.push(spawn(name, &self.failure, f)?);
        Ok(())
    }

    /// Called by each output once it finished: the last one marks the progress final and
    /// the last live snapshot `finished` (what it shows is now in every output).
    fn output_done(&self) -> impl Fn() + Send + Clone + 'static {
        let progress = self.progress.clone();
        let left = self.outputs_left.clone();
        let live = self.live_state.clone();
        move || {
            if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                if let Some(state) = &live {
                    state.outputs_finished();
                }
                progress.set_finished();
            }
        }
    }

    /// With checkpoints: restores the checkpoint `checkpoint` holds, if any, into the clocks,
    /// progress, counters and operators, and says where the run starts; `retained` holds the
    /// emitted windows it kept for SQL, per operator of its manifest.
    fn restore(
        &self,
        spec: &mut JobSpec,
        checkpoint: Option<&CheckpointSpec>,
        mut retained: Vec<Vec<RecordBatch>>,
    ) -> Result<Start, EngineError> {
        let mut start = Start {
            cut: vec![None; self.partition_keys.len()],
            lane_cut: HashMap::new(),
            emitted: vec![WATERMARK_MIN; spec.operators.len()],
            closed: vec![Vec::new(); spec.operators.len()],
            retained: vec![Vec::new(); spec.operators.len()],
            manifest: None,
        };
        let Some(cp) = checkpoint else {
            return Ok(start);
        };
        self.stats
            .checkpoints
            .interval_ms
            .store(cp.interval.as_millis() as u64, Ordering::Relaxed);
        self.progress.use_checkpoints();
        let Some(restored) = &cp.restored else {
            return Ok(start);
        };
        let m = &restored.manifest;
        let max_future: Vec<Option<i64>> = spec
            .sources
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.max_future_ms, s.partitions))
            .collect();
        for (id, restored) in restored_partitions(m, &self.partition_keys) {
            let (resume, newest) = (restored.resume, restored.newest);
            start.cut[id] = Some(resume);
            if newest != WATERMARK_MIN {
                self.clocks.partition(id).restore(newest);
            }
            if let Some((offsets, times)) = restored.lanes {
                self.clocks.partition(id).restore_lanes(&times);
                start.lane_cut.insert(id, offsets);
            }
            if let (Some(Some(max)), Some((source, key))) =
                (max_future.get(id), self.partition_keys.get(id))
            {
                crate::bounds::warn_if_restored_ahead((source, key), newest, (*max, now_ms()));
            }
            self.progress.record_checkpoint(id, resume.next_offset);
        }
        for (i, op) in spec.operators.iter_mut().enumerate() {
            let Some(j) = m.operators.iter().position(|o| o.name == op.name) else {
                continue;
            };
            let rec = &m.operators[j];
            start.emitted[i] = rec.emitted;
            if let Some(rows) = retained.get_mut(j) {
                start.retained[i] = std::mem::take(rows);
            }
            let per_partition = op.workers.first().is_some_and(|w| w.closes_per_partition());
            let state = if per_partition && cp.ownership.is_none() {
                self.renumbered(m, restored.operators[j].clone())?
            } else {
                restored.operators[j].clone()
            };
            // the merger takes the state where it holds it (a view); else worker 0
            let merger_took = op.merge.restore(&state)?;
            for (w, worker) in op.workers.iter_mut().enumerate() {
                let partials = if w == 0 && !merger_took {
                    state.clone()
                } else {
                    Vec::new()
                };
                worker.restore(partials, rec.flushed)?;
                if per_partition {
                    worker.restore_closed(&self.closed_ids(&rec.closed))?;
                }
            }
            if per_partition {
                start.closed[i] = self.closed_ids(&rec.closed);
            }
        }
        self.stats.restore_counters(&m.counters);
        tracing::info!(
            epoch = m.epoch,
            location = cp.store.location(),
            "restored from checkpoint"
        );
        start.manifest = Some(m.clone());
        Ok(start)
    }

    /// A checkpoint's per-partition emitted watermarks (by partition key) by this run's ids.
    fn closed_ids(&self, closed: &std::collections::BTreeMap<String, i64>) -> Vec<(usize, i64)> {
        self.partition_keys
            .iter()
            .enumerate()
            .filter_map(|(id, (source, key))| {
                closed.get(&format!("{source}/{key}")).map(|&wm| (id, wm))
            })
            .collect()
    }

    /// State kept per partition (windows closing per partition) with the partition ids of
    /// the run that wrote checkpoint `m` turned into this run's: they differ when partitions
    /// were added before some. A partition this run does not have becomes
    /// [`UNKNOWN_PARTITION`] (its windows then close with every partition). A worker pool
    /// renumbers its own.
    fn renumbered(
        &self,
        m: &Manifest,
        partials: Vec<PartialWindow>,
    ) -> Result<Vec<PartialWindow>, EngineError> {
        if m.partitions.iter().all(|r| r.id.is_none()) {
            return Ok(partials); // written before ids were recorded: numbered as now
        }
        let now: HashMap<(&str, &str), u32> = self
            .partition_keys
            .iter()
            .enumerate()
            .map(|(id, (s, k))| ((s.as_str(), k.as_str()), id as u32))
            .collect();
        let mut map: HashMap<u32, u32> = HashMap::new();
        for r in &m.partitions {
            if let Some(old) = r.id {
                let new = now.get(&(r.source.as_str(), r.partition.as_str()));
                map.insert(old, new.copied().unwrap_or(UNKNOWN_PARTITION));
            }
        }
        // ids no record names (not read when it was written) are unknown too
        let mut unknown = HashMap::new();
        for p in &partials {
            if let Some(ids) = p
                .keys
                .first()
                .and_then(|k| k.as_any().downcast_ref::<arrow::array::UInt32Array>())
            {
                for id in ids.iter().flatten() {
                    if !map.contains_key(&id) && id != NO_PARTITION {
                        unknown.insert(id, UNKNOWN_PARTITION);
                    }
                }
            }
        }
        map.extend(unknown);
        crate::checkpoint::renumber_partitions(
            partials,
            crate::checkpoint::PartitionColumn::Key(0),
            &map,
        )
    }

    /// Recovers every sink (with checkpoints) and starts its thread; returns the senders of
    /// their rows.
    fn start_sinks(
        &mut self,
        sinks: Vec<SinkSpec>,
        SinkFeeds {
            mut feeds,
            outputs: names,
        }: SinkFeeds,
        outputs: &Outputs,
        rejects: Sender<RejectMsg>,
    ) -> Result<Vec<Sender<SinkMsg>>, EngineError> {
        let mut senders = Vec::new();
        for (idx, spec_sink) in sinks.into_iter().enumerate() {
            let SinkSpec {
                name,
                mut sink,
                retry,
            } = spec_sink;
            if outputs.checkpointing {
                let from = outputs.start.manifest.as_ref().map(|m| {
                    (
                        m.epoch,
                        m.sinks.get(&name).unwrap_or(&serde_json::Value::Null),
                    )
                });
                let retrier = Retrier::new(
                    &format!("sink `{name}`"),
                    retry.clone(),
                    &self.stats.sink_health[idx],
                    &self.failure.cancel,
                );
                sink = outputs::recover(sink, retrier, Some(&name), from)?;
            }
            let (tx, rx) = bounded::<SinkMsg>(16);
            senders.push(tx);
            let output = SinkThread {
                index: idx,
                name: name.clone(),
                sink,
                feeds: std::mem::take(&mut feeds[idx]),
                outputs: names.clone(),
                stats: self.stats.clone(),
                link: outputs.link.clone(),
                cancel: self.failure.cancel.clone(),
                retry,
                rejects: rejects.clone(),
                epoch: outputs.start.first_epoch(),
                rejected_from: Arc::new(PartitionInfo {
                    source: Arc::from(name.as_str()),
                    id: usize::MAX,
                    state_id: usize::MAX,
                    number: 0,
                    topic: None,
                    file: None,
                }),
            };
            let done = self.output_done();
            self.spawn(format!("sink-{name}"), move || {
                output.run(rx)?;
                done();
                Ok(())
            })?;
        }
        Ok(senders)
    }

    /// Recovers the dead-letter output (with checkpoints) and starts its thread, which also
    /// takes the rows the `sinks` sinks refuse; returns the sender of the workers' records.
    fn start_dead_letter(
        &mut self,
        (mut sink, retry): (Box<dyn DeadLetterSink>, RetryPolicy),
        sinks: usize,
        outputs: &Outputs,
        rejects: Receiver<RejectMsg>,
    ) -> Result<Sender<DeadMsg>, EngineError> {
        let (dead_tx, dead_rx) = bounded::<DeadMsg>(64);
        if outputs.checkpointing {
            let from = outputs
                .start
                .manifest
                .as_ref()
                .map(|m| (m.epoch, &m.dead_letter));
            let retrier = Retrier::new(
                "dead-letter output",
                retry.clone(),
                &self.stats.dead_letter_health,
                &self.failure.cancel,
            );
            sink = outputs::recover(sink, retrier, None, from)?;
        }
        let output = DeadLetterThread {
            sink,
            retry,
            stats: self.stats.clone(),
            progress: self.progress.clone(),
            link: outputs.link.clone(),
            cancel: self.failure.cancel.clone(),
            epoch: outputs.start.first_epoch(),
            sinks,
            gate: self.gate.clone(),
        };
        let done = self.output_done();
        self.spawn("dead-letter".into(), move || {
            output.run(dead_rx, rejects)?;
            done();
            Ok(())
        })?;
        Ok(dead_tx)
    }

    /// Starts the merger (and publishes the first live snapshot); returns the sender of the
    /// workers' hand-overs.
    fn start_merger(
        &mut self,
        ops: Vec<MergePart>,
        sinks: Vec<Sender<SinkMsg>>,
        (emitted, closed, retained): (Vec<i64>, ClosedPartitions, Vec<Vec<RecordBatch>>),
        link: Option<CheckpointLink>,
        live: Option<LiveSpec>,
        op_sources: Vec<usize>,
    ) -> Result<Sender<MergeInput>, EngineError> {
        let n = self.workers;
        let (merge_tx, merge_rx) = bounded::<MergeInput>(64 * n);
        let failure = self.failure.clone();
        let stats = self.stats.clone();
        let gate = self.gate.clone();
        let live = live.map(|l| {
            let clocks = self.clocks.clone();
            LiveTables::new(l.state, &self.partition_keys, clocks, op_sources, retained)
        });
        let done = self.output_done();
        self.spawn("merger".into(), move || {
            merger_loop(
                merge_rx,
                ops,
                sinks,
                MergerStart {
                    workers: n,
                    emitted,
                    closed,
                    link,
                    live,
                    gate,
                },
                &stats,
                &failure,
            )?;
            // (an output without rows, the dead-letter one alone, can finish before it)
            done();
            Ok(())
        })?;
        Ok(merge_tx)
    }

    /// Starts the workers; returns the senders of their queues.
    fn start_workers(
        &mut self,
        parts: WorkerParts,
        to: Stages,
    ) -> Result<Vec<Sender<WorkerMsg>>, EngineError> {
        let decoders: Arc<Vec<Arc<dyn Decode>>> =
            Arc::new(to.sources.iter().map(|s| s.decoder.clone()).collect());
        let max_future: Arc<Vec<Option<i64>>> =
            Arc::new(to.sources.iter().map(|s| s.max_future_ms).collect());
        let mut senders = Vec::new();
        let input_done = Arc::new(ExitBarrier::new(self.workers));
        for (w, ops) in parts.into_iter().enumerate() {
            let (tx, rx) = bounded::<WorkerMsg>(WORKER_QUEUE);
            senders.push(tx);
            let ctx = WorkerCtx {
                index: w,
                decoders: decoders.clone(),
                max_future: max_future.clone(),
                clocks: self.clocks.clone(),
                stats: self.stats.clone(),
                dead_tx: to.dead_tx.clone(),
                merge_tx: to.merge_tx.clone(),
                failure: self.failure.clone(),
                op_sources: to.op_sources.clone(),
                input_done: input_done.clone(),
                progress: self.progress.clone(),
                link: to.link.clone(),
                rendezvous: to.rendezvous.clone(),
                live: to.live,
            };
            self.spawn(format!("worker-{w}"), move || worker_loop(rx, ops, ctx))?;
        }
        Ok(senders)
    }

    /// Starts a reader thread per source.
    fn start_readers(
        &mut self,
        sources: Vec<SourceSpec>,
        dispatcher: &Arc<Mutex<Dispatcher>>,
    ) -> Result<(), EngineError> {
        for source in sources {
            let dispatcher = dispatcher.clone();
            let ctx = ReaderContext {
                clocks: self.clocks.clone(),
                stop: self.stop.0.clone(),
                progress: self.progress.clone(),
                stats: self.stats.clone(),
                handover: self.handover.clone(),
                cancel: self.failure.cancel.clone(),
            };
            let failure = self.failure.clone();
            let reader = source.reader;
            let gate = self.gate.clone();
            self.spawn(format!("source-{}", source.name), move || {
                read_source(reader, (&dispatcher, &gate), &ctx, &failure)
            })?;
        }
        Ok(())
    }

    /// Starts the checkpoint coordinator.
    fn start_coordinator(
        &mut self,
        spec: CheckpointSpec,
        link: CheckpointLink,
        parts: Receiver<Part>,
        dispatcher: &Arc<Mutex<Dispatcher>>,
        start: &Start,
        sinks: usize,
    ) -> Result<(), EngineError> {
        // the emitted windows the restored checkpoint kept for SQL, per operator
        let retained = self
            .operator_names
            .iter()
            .map(|name| {
                let m = start.manifest.as_ref();
                let op = m.and_then(|m| m.operators.iter().find(|o| &o.name == name));
                op.map(|o| o.retained.clone()).unwrap_or_default()
            })
            .collect();
        let coordinator = Coordinator {
            spec,
            dispatcher: dispatcher.clone(),
            parts,
            // workers, worker 0's clocks, the merger, sinks, dead letters
            expected: self.workers + 2 + sinks + 1,
            epochs: link.epochs.clone(),
            progress: self.progress.clone(),
            stats: self.stats.clone(),
            operator_names: self.operator_names.clone(),
            partition_keys: self.partition_keys.clone(),
            epoch: start.first_epoch(),
            handover: self.handover.clone(),
            stop: self.stop.0.clone(),
            retained,
        };
        let failure = self.failure.clone();
        self.spawn("checkpoints".into(), move || coordinator.run(&failure))
    }

    /// Waits for every thread; the run's first error, if any.
    fn join(self, started: Instant) -> Result<RunReport, EngineError> {
        for t in self.threads {
            let _ = t.join();
        }
        if let Ok(mut first) = self.failure.first.lock() {
            if let Some(e) = first.take() {
                return Err(e);
            }
        }
        if self.failure.cancel.load(Ordering::SeqCst) {
            return Err(EngineError::Internal(
                "the run was cancelled without a recorded error".into(),
            ));
        }
        Ok(RunReport {
            elapsed: started.elapsed(),
        })
    }
}
