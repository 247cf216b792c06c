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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::ArrayRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender};

use crate::checkpoint::{
    collect_garbage, restored_partitions, CheckpointSpec, Epochs, Part, Pending, Rendezvous,
};
use crate::clock::{Clocks, WATERMARK_END, WATERMARK_MIN};
use crate::dead_letter::{DeadLetter, PartitionInfo, Reason, RejectedRow};
use crate::events::{Chunk, ChunkData, Decoded, EventBatch, Messages, Resume, SharedBytes};
use crate::live::{LiveKind, LiveSnapshot, LiveSpec, LiveState, PartitionStatus, Retained};
use crate::progress::{ChunkResidue, OpResidue, Progress};
use crate::retry::{Retrier, RetryPolicy};
use crate::stats::RunStats;
use crate::time::now_ms;
use crate::EngineError;

/// What readers see of the running job (shared handles: a clone sees the same job).
#[derive(Clone)]
pub struct ReaderContext {
    pub clocks: Arc<Clocks>,
    /// Set when the job is asked to stop; readers then return `None`.
    pub stop: Arc<AtomicBool>,
    /// Which offsets are reflected in durable outputs, for readers that commit them.
    pub progress: Arc<Progress>,
    /// The run's counters and gauges (consumer lag).
    pub stats: Arc<RunStats>,
    /// Set by a reader whose partitions are being given up (a worker pool's rebalance): the
    /// job then takes a final checkpoint at once, and readers return `None` without taking
    /// more input. With [`Self::outputs_finished`], the reader waits for it to be committed.
    pub handover: Arc<AtomicBool>,
    /// Set when the job failed or was cancelled.
    pub cancel: Arc<AtomicBool>,
}

impl ReaderContext {
    /// A context with hand-over and cancellation flags of its own (for readers driven
    /// outside a job, such as tests).
    pub fn new(
        clocks: Arc<Clocks>,
        stop: Arc<AtomicBool>,
        progress: Arc<Progress>,
        stats: Arc<RunStats>,
    ) -> Self {
        ReaderContext {
            clocks,
            stop,
            progress,
            stats,
            handover: Arc::new(AtomicBool::new(false)),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Asks for the final checkpoint of a hand-over (see [`Self::handover`]).
    pub fn request_handover(&self) {
        self.handover.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether every output finished after the final checkpoint (its commit included);
    /// `None` when the job failed instead.
    pub fn outputs_finished(&self) -> Option<bool> {
        if self.cancel.load(Ordering::SeqCst) {
            None
        } else {
            Some(self.progress.is_finished())
        }
    }
}

/// Reads one source: yields chunks of its partitions, each partition's chunks in order with
/// consecutive `seq` numbers and ending with a [`ChunkData::End`] chunk when it is bounded.
pub trait PartitionReader: Send {
    /// The next chunk, or `None` when the source has no more (or the job stops).
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError>;
    /// Called once every output finished after the reader returned `None`, to commit what
    /// [`Progress`] says is durable. Readers that commit nothing keep the default.
    fn finish(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        Ok(())
    }
    /// Called repeatedly while the workers have no room for the next chunk (backpressure):
    /// a reader of a log pauses its partitions and keeps its session alive here. Readers that
    /// can simply wait keep the default.
    fn backpressure(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        Ok(())
    }
    /// Called once the workers took a chunk again after [`Self::backpressure`].
    fn backpressure_released(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        Ok(())
    }
    /// Takes back a chunk the job could not take any more (its input ended with a hand-over
    /// checkpoint): a reader that outlives the job hands it out again to the next one.
    fn unread(&mut self, _chunk: Chunk) {}
}

/// Decodes raw records of a source into events.
pub trait Decode: Send + Sync {
    /// Decodes the lines of `chunk`; bad records come back as dead letters.
    fn decode(&self, chunk: &Chunk, lines: &SharedBytes) -> Decoded;
    /// Decodes the messages of `chunk`, one record each.
    fn decode_messages(&self, chunk: &Chunk, messages: &Messages) -> Decoded;
}

/// The part of an operator that runs in every worker, over that worker's events.
pub trait WorkerOperator: Send {
    /// Aggregates a batch. `row_watermarks[i]` is the watermark of the row's partition when
    /// row `i` arrived; late rows are pushed to `dead`. Returns how many rows were late.
    fn process(
        &mut self,
        partition: &Arc<PartitionInfo>,
        events: &EventBatch,
        row_watermarks: &[i64],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, EngineError>;
    /// Hands over the state of every window closed at `watermark` (no later row can reach
    /// them), as partial aggregates for the merger.
    fn flush(&mut self, watermark: i64) -> Result<Vec<PartialWindow>, EngineError>;
    /// Whether windows follow processing time (the clock) instead of event time.
    fn processing_time(&self) -> bool;
    /// The watermark that closes the window a row with this event time goes to (for
    /// processing-time windows, the window open now).
    fn closes_at(&self, event_time: i64) -> i64;
    /// Copies the partial state of the open windows for a checkpoint, leaving it unchanged,
    /// with the watermark up to which windows were handed over.
    fn snapshot(&mut self) -> Result<(Vec<PartialWindow>, i64), EngineError>;
    /// Restores a checkpoint: merges `partials` into the open windows and sets the hand-over
    /// watermark.
    fn restore(&mut self, partials: Vec<PartialWindow>, flushed: i64) -> Result<(), EngineError>;
    /// State handed to the merger at every barrier whatever the watermark (a view's changes
    /// since the last barrier), taken out of the worker.
    fn barrier_handover(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        Ok(Vec::new())
    }
    /// A copy of the state not handed over yet, for SQL readers (the open windows).
    fn live(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        self.snapshot().map(|(partials, _)| partials)
    }
    /// Whether the rows it aggregates hold back committed offsets until their windows are
    /// durable; a view, which never closes, does not (it lives in checkpoints).
    fn holds_offsets(&self) -> bool {
        true
    }
}

/// The partial state of one window from one worker: key columns and accumulator states.
#[derive(Clone)]
pub struct PartialWindow {
    pub window_start: i64,
    pub keys: Vec<ArrayRef>,
    pub states: Vec<ArrayRef>,
}

/// The part of an operator that merges partial windows and emits the final rows.
pub trait MergeOperator: Send {
    /// Adds a worker's partial window.
    fn merge(&mut self, partial: PartialWindow) -> Result<(), EngineError>;
    /// Emits every window closed at `watermark` (all workers have handed them over).
    fn emit(&mut self, watermark: i64) -> Result<Vec<RecordBatch>, EngineError>;
    /// Copies the partial windows held (handed over by some workers, not emitted yet) for a
    /// checkpoint, leaving them unchanged.
    fn snapshot(&mut self) -> Result<Vec<PartialWindow>, EngineError>;
    /// The rows of the state not emitted yet, for SQL readers, with the workers' copies of
    /// their open state added, leaving the state unchanged: open windows, or a view's rows.
    fn live(&mut self, workers: Vec<PartialWindow>) -> Result<Vec<RecordBatch>, EngineError>;
    /// Rows for the sinks at a barrier, whatever the watermark: a view's keys changed since
    /// the last barrier.
    fn barrier_rows(&mut self) -> Result<Vec<RecordBatch>, EngineError> {
        Ok(Vec::new())
    }
    /// Whether the rows [`Self::emit`] returns are window results (counted as such).
    fn emits_windows(&self) -> bool {
        true
    }
    /// A key index over the rows [`Self::live`] returns (one batch, row = group id), for
    /// point queries.
    fn live_index(&self) -> Option<Arc<crate::live::KeyIndex>> {
        None
    }
    /// Restores a checkpoint's state when the merger holds it between barriers (a view);
    /// returns `false` to have it restored into the workers instead.
    fn restore(&mut self, _partials: &[PartialWindow]) -> Result<bool, EngineError> {
        Ok(false)
    }
}

/// An output of result rows.
pub trait Sink: Send {
    /// Writes rows.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError>;
    /// Makes every row written so far durable (messages acknowledged...) and says whether
    /// it could: an output that only becomes visible when it finishes (a file renamed into
    /// place) returns `false`, and offsets are then committed only after it finished.
    fn flush(&mut self) -> Result<bool, EngineError>;
    /// Flushes and closes the output.
    fn finish(&mut self) -> Result<(), EngineError>;
    /// At checkpoint `epoch`'s barrier: makes every row written so far durable, without
    /// making it visible where the output can (first phase of a two-phase commit), and
    /// returns what committing it needs; the checkpoint's manifest keeps that.
    fn pre_commit(&mut self, _epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.flush().map(|_| serde_json::Value::Null)
    }
    /// Checkpoint `epoch` is complete: makes the rows pre-committed up to it visible.
    fn commit(&mut self, _epoch: u64) -> Result<(), EngineError> {
        Ok(())
    }
    /// Before a checkpointed run writes: given the checkpoint it starts from (its epoch and
    /// what [`Self::pre_commit`] returned then), finishes the commits a crash interrupted and
    /// discards rows written after that checkpoint; `None` when it starts without one.
    fn recover(&mut self, _from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        Ok(())
    }
    /// Rows the output refused for good since the last call (a document its index cannot
    /// map, a message over the broker's size limit): they go to the dead-letter output with
    /// the output's error, and the other rows go on. Asked after every call.
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        Vec::new()
    }
}

/// The dead-letter output.
pub trait DeadLetterSink: Send {
    /// Writes records.
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError>;
    /// Makes every record written so far durable, and says whether it could (see
    /// [`Sink::flush`]).
    fn flush(&mut self) -> Result<bool, EngineError>;
    /// Flushes and closes the output.
    fn finish(&mut self) -> Result<(), EngineError>;
    /// See [`Sink::pre_commit`].
    fn pre_commit(&mut self, _epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.flush().map(|_| serde_json::Value::Null)
    }
    /// See [`Sink::commit`].
    fn commit(&mut self, _epoch: u64) -> Result<(), EngineError> {
        Ok(())
    }
    /// See [`Sink::recover`].
    fn recover(&mut self, _from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A source of a job.
pub struct SourceSpec {
    pub name: String,
    pub reader: Box<dyn PartitionReader>,
    pub decoder: Arc<dyn Decode>,
    /// Partition count, known before the run (files, generator).
    pub partitions: usize,
    /// A name of each partition that stays the same across runs (`topic/partition`, a file
    /// path), for checkpoints.
    pub partition_keys: Vec<String>,
    pub max_out_of_orderness_ms: i64,
    /// Rows whose event time is more than this ahead of the wall clock are dead-lettered
    /// before they reach the partition's clock (see [`crate::bounds`]); `None`: no bound.
    pub max_future_ms: Option<i64>,
}

/// A windowed operator of a job.
pub struct OperatorSpec {
    pub name: String,
    /// Index of its source.
    pub source: usize,
    /// One instance per worker (exactly `parallelism` of them).
    pub workers: Vec<Box<dyn WorkerOperator>>,
    pub merge: Box<dyn MergeOperator>,
    /// Indexes of the sinks that receive its rows.
    pub sinks: Vec<usize>,
}

/// A sink of a job.
pub struct SinkSpec {
    pub name: String,
    pub sink: Box<dyn Sink>,
    /// How calls that fail with [`EngineError::Unavailable`] are retried.
    pub retry: RetryPolicy,
}

/// A whole job, ready to run.
pub struct JobSpec {
    pub sources: Vec<SourceSpec>,
    pub operators: Vec<OperatorSpec>,
    pub sinks: Vec<SinkSpec>,
    pub dead_letter: Box<dyn DeadLetterSink>,
    /// How the dead-letter output retries.
    pub dead_letter_retry: RetryPolicy,
    pub parallelism: usize,
    /// Checkpointing, when on.
    pub checkpoint: Option<CheckpointSpec>,
    /// Live snapshots for SQL readers, when on.
    pub live: Option<LiveSpec>,
}

/// What a finished run measured.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub elapsed: Duration,
}

const WORKER_QUEUE: usize = 4;
const TICK: Duration = Duration::from_millis(100);
/// How soon the live-barrier thread notices that the input ended.
const LIVE_POLL: Duration = Duration::from_millis(10);
/// How often outputs are flushed to report progress to committing readers.
const DURABLE_EVERY: Duration = Duration::from_millis(200);

/// What the merger sends a sink thread.
enum SinkMsg {
    Rows(RecordBatch),
    /// Operator `op`'s windows up to `upto` were all sent, with every worker's hand-overs up
    /// to `covered[worker]`.
    Upto {
        op: usize,
        upto: i64,
        covered: Vec<u64>,
    },
    /// Checkpoint barrier: every row before it belongs to the checkpoint.
    Barrier(u64),
}

/// What workers send the dead-letter thread.
enum DeadMsg {
    Records(Vec<DeadLetter>),
    /// A tracked chunk was handled; its dead letters were sent before.
    Residue(ChunkResidue),
    /// Checkpoint barrier: every record before it belongs to the checkpoint.
    Barrier(u64),
}

/// What readers send workers. Barriers are rare and chunks the common case: boxing chunks
/// to make the variants the same size would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum WorkerMsg {
    Chunk(Chunk),
    /// Checkpoint barrier, at the same point of the chunk order in every worker's queue.
    Barrier(u64),
    /// Live barrier (a snapshot for SQL readers), placed as checkpoint barriers are.
    Live(u64),
}

/// What workers send the merger.
enum MergeInput {
    Handover(MergeMsg),
    /// Checkpoint barrier: every worker's hand-overs before it belong to the checkpoint.
    Barrier(u64),
    /// A worker's copy of its open state at live barrier `seq`, per operator.
    LivePart {
        seq: u64,
        ops: Vec<(usize, Vec<PartialWindow>)>,
    },
    /// Live barrier `seq`: every worker's hand-overs and live parts before it belong to the
    /// snapshot; with the counters and partition clocks at the barrier.
    Live {
        seq: u64,
        counters: Vec<(String, u64)>,
        clocks: Vec<ClockRow>,
    },
}

/// Spreads chunks over the workers, and records where each partition continues after the
/// chunks dispatched so far: a barrier sent under the same lock cuts the chunk order there.
struct Dispatcher {
    next: usize,
    senders: Vec<Sender<WorkerMsg>>,
    /// Per global partition: where it continues after its last dispatched chunk.
    cut: Vec<Option<Resume>>,
    readers_left: usize,
    /// The coordinator ends the workers' input itself, after the final barrier.
    checkpointing: bool,
}

/// What the threads taking part in checkpoints share.
#[derive(Clone)]
struct CheckpointLink {
    parts: Sender<Part>,
    epochs: Arc<Epochs>,
    rendezvous: Arc<Rendezvous>,
}

struct MergeMsg {
    /// The worker's hand-overs of this operator so far, this one included.
    seq: u64,
    operator: usize,
    worker: usize,
    partials: Vec<PartialWindow>,
    upto: i64,
}

/// Shared failure state: the first error stops everything.
#[derive(Clone)]
struct Failure {
    cancel: Arc<AtomicBool>,
    first: Arc<Mutex<Option<EngineError>>>,
}

impl Failure {
    fn record(&self, e: EngineError) {
        self.cancel.store(true, Ordering::SeqCst);
        if matches!(e, EngineError::Cancelled) {
            return;
        }
        if let Ok(mut f) = self.first.lock() {
            if f.is_none() {
                *f = Some(e);
            }
        }
    }
    fn closed(&self, what: &str) -> EngineError {
        if self.cancel.load(Ordering::SeqCst) {
            EngineError::Cancelled
        } else {
            EngineError::Internal(format!("{what} stopped unexpectedly"))
        }
    }
}

fn spawn<F>(name: String, failure: &Failure, f: F) -> Result<JoinHandle<()>, EngineError>
where
    F: FnOnce() -> Result<(), EngineError> + Send + 'static,
{
    let failure = failure.clone();
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            if let Err(e) = f() {
                tracing::debug!(thread = %name, error = %e, "thread failed");
                failure.record(e);
            }
        })
        .map_err(|e| EngineError::Internal(format!("cannot start a thread: {e}")))
}

/// A handle to stop a running job from another thread (e.g. on SIGINT).
#[derive(Clone)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        StopHandle(Arc::new(AtomicBool::new(false)))
    }
    /// Asks the readers to stop; windows already closed are still written.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`Self::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for StopHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs a job to its end: until every source ended (or `stop` was triggered) and every
/// output was flushed.
pub fn run(
    spec: JobSpec,
    stats: Arc<RunStats>,
    stop: StopHandle,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
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
    let failure = Failure {
        cancel: Arc::new(AtomicBool::new(false)),
        first: Arc::new(Mutex::new(None)),
    };
    let clocks = Arc::new(Clocks::new(
        &spec
            .sources
            .iter()
            .map(|s| (s.partitions, s.max_out_of_orderness_ms))
            .collect::<Vec<_>>(),
    ));
    let mut threads = Vec::new();
    let handover = Arc::new(AtomicBool::new(false));

    let total_partitions: usize = spec.sources.iter().map(|s| s.partitions).sum();
    let progress = Arc::new(Progress::new(
        total_partitions,
        &spec
            .operators
            .iter()
            .map(|o| o.sinks.len())
            .collect::<Vec<_>>(),
    ));
    // (source, key) of every global partition.
    let partition_keys: Vec<(String, String)> = spec
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
    let operator_names: Vec<String> = spec.operators.iter().map(|o| o.name.clone()).collect();
    let mut spec = spec;
    let checkpoint = spec.checkpoint.take();
    let live = spec.live.take();
    let mut cut: Vec<Option<Resume>> = vec![None; total_partitions];
    let mut emitted_from: Vec<i64> = vec![WATERMARK_MIN; spec.operators.len()];
    let mut first_epoch = 0;
    if let Some(cp) = &checkpoint {
        stats
            .checkpoints
            .interval_ms
            .store(cp.interval.as_millis() as u64, Ordering::Relaxed);
        progress.use_checkpoints();
        if let Some(restored) = &cp.restored {
            let m = &restored.manifest;
            first_epoch = m.epoch;
            let max_future: Vec<Option<i64>> = spec
                .sources
                .iter()
                .flat_map(|s| std::iter::repeat_n(s.max_future_ms, s.partitions))
                .collect();
            for (id, (resume, newest)) in restored_partitions(m, &partition_keys) {
                cut[id] = Some(resume);
                if newest != WATERMARK_MIN {
                    clocks.partition(id).restore(newest);
                }
                if let (Some(Some(max)), Some((source, key))) =
                    (max_future.get(id), partition_keys.get(id))
                {
                    crate::bounds::warn_if_restored_ahead((source, key), newest, (*max, now_ms()));
                }
                progress.record_checkpoint(id, resume.next_offset);
            }
            for (i, op) in spec.operators.iter_mut().enumerate() {
                let Some(j) = m.operators.iter().position(|o| o.name == op.name) else {
                    continue;
                };
                let rec = &m.operators[j];
                emitted_from[i] = rec.emitted;
                // the merger takes the state where it holds it (a view); else worker 0
                let merger_took = op.merge.restore(&restored.operators[j])?;
                for (w, worker) in op.workers.iter_mut().enumerate() {
                    let partials = if w == 0 && !merger_took {
                        restored.operators[j].clone()
                    } else {
                        Vec::new()
                    };
                    worker.restore(partials, rec.flushed)?;
                }
            }
            stats.restore_counters(&m.counters);
            tracing::info!(
                epoch = m.epoch,
                location = cp.store.location(),
                "restored from checkpoint"
            );
        }
    }
    let restored_manifest = checkpoint
        .as_ref()
        .and_then(|c| c.restored.as_ref().map(|r| r.manifest.clone()));
    // Outputs still running; the last one to finish marks the progress final.
    let outputs_left = Arc::new(std::sync::atomic::AtomicUsize::new(spec.sinks.len() + 1));
    let output_done = {
        let progress = progress.clone();
        let left = outputs_left.clone();
        move || {
            if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                progress.set_finished();
            }
        }
    };
    let (parts_tx, parts_rx) = crossbeam_channel::unbounded::<Part>();
    // Workers meet at checkpoint and live barriers.
    let rendezvous = (checkpoint.is_some() || live.is_some()).then(|| Arc::new(Rendezvous::new(n)));
    let link = match (&checkpoint, &rendezvous) {
        (Some(_), Some(r)) => Some(CheckpointLink {
            parts: parts_tx.clone(),
            epochs: Arc::new(Epochs::default()),
            rendezvous: r.clone(),
        }),
        _ => None,
    };
    if let Some(l) = &link {
        l.epochs.completed.store(first_epoch, Ordering::SeqCst);
    }
    drop(parts_tx);

    // Sinks. Each knows, for every operator feeding it, its index among the operator's sinks.
    let mut sink_feeds: Vec<Vec<(usize, usize)>> = vec![Vec::new(); spec.sinks.len()];
    for (oi, op) in spec.operators.iter().enumerate() {
        for (k, &s) in op.sinks.iter().enumerate() {
            sink_feeds[s].push((oi, k));
        }
    }
    let sink_count = spec.sinks.len();
    let mut sink_senders = Vec::new();
    // Rows sinks refuse for good go to the dead-letter thread, tagged with their epoch.
    let first_epoch = restored_manifest.as_ref().map_or(1, |m| m.epoch + 1);
    let (rejects_tx, rejects_rx) = bounded::<RejectMsg>(64);
    let mut rejects_rx = Some(rejects_rx);
    for (idx, spec_sink) in std::mem::take(&mut spec.sinks).into_iter().enumerate() {
        let SinkSpec {
            name,
            mut sink,
            retry,
        } = spec_sink;
        if checkpoint.is_some() {
            let from = restored_manifest.as_ref().map(|m| {
                (
                    m.epoch,
                    m.sinks.get(&name).unwrap_or(&serde_json::Value::Null),
                )
            });
            Retrier::new(
                &format!("sink `{name}`"),
                retry.clone(),
                &stats.sink_health[idx],
                &failure.cancel,
            )
            .call("recover", || sink.recover(from))
            .map_err(|e| sink_error(&name, e))?;
        }
        let (tx, rx) = bounded::<SinkMsg>(16);
        sink_senders.push(tx);
        let output = SinkThread {
            index: idx,
            name: name.clone(),
            sink,
            feeds: std::mem::take(&mut sink_feeds[idx]),
            stats: stats.clone(),
            progress: progress.clone(),
            link: link.clone(),
            cancel: failure.cancel.clone(),
            retry,
            rejects: rejects_tx.clone(),
            epoch: first_epoch,
            rejected_from: Arc::new(PartitionInfo {
                source: Arc::from(name.as_str()),
                id: usize::MAX,
                state_id: usize::MAX,
                number: 0,
                topic: None,
                file: None,
            }),
        };
        let done = output_done.clone();
        threads.push(spawn(format!("sink-{name}"), &failure, move || {
            output.run(rx)?;
            done();
            Ok(())
        })?);
    }

    drop(rejects_tx);

    // Dead letters.
    let (dead_tx, dead_rx) = bounded::<DeadMsg>(64);
    {
        let rejects_rx = rejects_rx
            .take()
            .ok_or_else(|| EngineError::Internal("the sinks' rejection channel is gone".into()))?;
        let sinks = sink_count;
        let mut sink = spec.dead_letter;
        let retry = spec.dead_letter_retry;
        if checkpoint.is_some() {
            let from = restored_manifest
                .as_ref()
                .map(|m| (m.epoch, &m.dead_letter));
            Retrier::new(
                "dead-letter output",
                retry.clone(),
                &stats.dead_letter_health,
                &failure.cancel,
            )
            .call("recover", || sink.recover(from))?;
        }
        let stats = stats.clone();
        let progress = progress.clone();
        let done = output_done.clone();
        let link = link.clone();
        let cancel = failure.cancel.clone();
        threads.push(spawn("dead-letter".into(), &failure, move || {
            DeadLetterThread {
                sink,
                retrier: Retrier::new(
                    "dead-letter output",
                    retry,
                    &stats.dead_letter_health,
                    &cancel,
                ),
                stats: &stats,
                progress: &progress,
                link,
                cancel: &cancel,
                epoch: first_epoch,
                passed: vec![first_epoch - 1; sinks],
                later: Default::default(),
                sinks_open: true,
            }
            .run(dead_rx, rejects_rx)?;
            done();
            Ok(())
        })?);
    }

    // Merger.
    let (merge_tx, merge_rx) = bounded::<MergeInput>(64 * n);
    let mut merge_parts = Vec::new();
    let mut worker_parts: Vec<Vec<(usize, Box<dyn WorkerOperator>)>> =
        (0..n).map(|_| Vec::new()).collect();
    let mut op_sources = Vec::new();
    for (oi, op) in spec.operators.into_iter().enumerate() {
        op_sources.push(op.source);
        merge_parts.push((op.merge, op.sinks));
        for (w, inst) in op.workers.into_iter().enumerate() {
            worker_parts[w].push((oi, inst));
        }
    }
    let live_interval = live.as_ref().map(|l| l.interval);
    {
        let failure2 = failure.clone();
        let stats = stats.clone();
        let link = link.clone();
        let live = live.map(|l| LiveTables::new(l.state, &partition_keys, clocks.clone()));
        threads.push(spawn("merger".into(), &failure, move || {
            merger_loop(
                merge_rx,
                merge_parts,
                sink_senders,
                MergerStart {
                    workers: n,
                    emitted: emitted_from,
                    link,
                    live,
                },
                &stats,
                &failure2,
            )
        })?);
    }

    // Workers.
    let decoders: Arc<Vec<Arc<dyn Decode>>> =
        Arc::new(spec.sources.iter().map(|s| s.decoder.clone()).collect());
    let max_future: Arc<Vec<Option<i64>>> =
        Arc::new(spec.sources.iter().map(|s| s.max_future_ms).collect());
    let mut worker_senders = Vec::new();
    let input_done = Arc::new(ExitBarrier::new(n));
    for (w, ops) in worker_parts.into_iter().enumerate() {
        let (tx, rx) = bounded::<WorkerMsg>(WORKER_QUEUE);
        worker_senders.push(tx);
        let ctx = WorkerCtx {
            index: w,
            decoders: decoders.clone(),
            max_future: max_future.clone(),
            clocks: clocks.clone(),
            stats: stats.clone(),
            dead_tx: dead_tx.clone(),
            merge_tx: merge_tx.clone(),
            failure: failure.clone(),
            op_sources: op_sources.clone(),
            input_done: input_done.clone(),
            progress: progress.clone(),
            link: link.clone(),
            rendezvous: rendezvous.clone(),
        };
        threads.push(spawn(format!("worker-{w}"), &failure, move || {
            worker_loop(rx, ops, ctx)
        })?);
    }
    drop(dead_tx);
    drop(merge_tx);

    // Readers.
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: worker_senders,
        cut,
        readers_left: spec.sources.len(),
        checkpointing: checkpoint.is_some(),
    }));
    for source in spec.sources {
        let dispatcher = dispatcher.clone();
        let ctx = ReaderContext {
            clocks: clocks.clone(),
            stop: stop.0.clone(),
            progress: progress.clone(),
            stats: stats.clone(),
            handover: handover.clone(),
            cancel: failure.cancel.clone(),
        };
        let failure2 = failure.clone();
        let reader = source.reader;
        let name = source.name.clone();
        threads.push(spawn(format!("source-{name}"), &failure, move || {
            read_source(reader, &dispatcher, &ctx, &failure2)
        })?);
    }

    // Live barriers.
    if let Some(interval) = live_interval {
        let dispatcher = dispatcher.clone();
        let failure2 = failure.clone();
        threads.push(spawn("live-barriers".into(), &failure, move || {
            live_barriers(&dispatcher, interval, &failure2)
        })?);
    }

    // Checkpoints.
    if let (Some(cp), Some(link)) = (checkpoint, link) {
        let coordinator = Coordinator {
            spec: cp,
            dispatcher: dispatcher.clone(),
            parts: parts_rx,
            expected: n + 2 + sink_count + 1,
            epochs: link.epochs.clone(),
            progress: progress.clone(),
            stats: stats.clone(),
            operator_names,
            partition_keys,
            epoch: first_epoch,
            handover,
            stop: stop.0.clone(),
        };
        let failure2 = failure.clone();
        threads.push(spawn("checkpoints".into(), &failure, move || {
            coordinator.run(&failure2)
        })?);
    }
    drop(dispatcher);

    for t in threads {
        let _ = t.join();
    }
    if let Ok(mut first) = failure.first.lock() {
        if let Some(e) = first.take() {
            return Err(e);
        }
    }
    if failure.cancel.load(Ordering::SeqCst) {
        return Err(EngineError::Internal(
            "the run was cancelled without a recorded error".into(),
        ));
    }
    Ok(RunReport {
        elapsed: started.elapsed(),
    })
}

fn sink_error(name: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Sink { .. } => e,
        EngineError::Unavailable(inner) => sink_error(name, *inner).unavailable(),
        other => EngineError::sink(name, other),
    }
}

/// A reader's thread: dispatches its chunks round-robin to the workers.
fn read_source(
    mut reader: Box<dyn PartitionReader>,
    dispatcher: &Mutex<Dispatcher>,
    ctx: &ReaderContext,
    failure: &Failure,
) -> Result<(), EngineError> {
    let poisoned = || EngineError::Internal("dispatcher poisoned".into());
    while let Some(chunk) = reader.next_chunk(ctx)? {
        if failure.cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        let mut d = dispatcher.lock().map_err(|_| poisoned())?;
        if d.senders.is_empty() {
            // a hand-over checkpoint ended the workers' input: this chunk is after its cut
            reader.unread(chunk);
            break;
        }
        let target = d.next % d.senders.len();
        d.next += 1;
        let partition = chunk.partition.id;
        let resume = chunk.resume;
        let mut msg = WorkerMsg::Chunk(chunk);
        let mut pressed = false;
        loop {
            match d.senders[target].send_timeout(msg, TICK) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(m)) => {
                    if failure.cancel.load(Ordering::Relaxed) {
                        return Err(EngineError::Cancelled);
                    }
                    msg = m;
                    pressed = true;
                    reader.backpressure(ctx)?;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(failure.closed("a worker")),
            }
        }
        if let Some(c) = d.cut.get_mut(partition) {
            *c = Some(resume);
        }
        drop(d);
        if pressed {
            reader.backpressure_released(ctx)?;
        }
    }
    // The last reader ends the workers' input (the coordinator does, after its final
    // barrier, when checkpointing).
    {
        let mut d = dispatcher.lock().map_err(|_| poisoned())?;
        d.readers_left -= 1;
        if d.readers_left == 0 && !d.checkpointing {
            d.senders.clear();
        }
    }
    // Let the workers drain, then commit what the finished outputs hold.
    if ctx.progress.wait_finished(&failure.cancel) {
        reader.finish(ctx)?;
    }
    Ok(())
}

/// Starts checkpoints every interval, gathers their parts, writes them and tells the
/// outputs to commit.
struct Coordinator {
    spec: CheckpointSpec,
    dispatcher: Arc<Mutex<Dispatcher>>,
    parts: Receiver<Part>,
    /// Parts per checkpoint: workers, worker 0's clocks, the merger, sinks, dead letters.
    expected: usize,
    epochs: Arc<Epochs>,
    progress: Arc<Progress>,
    stats: Arc<RunStats>,
    operator_names: Vec<String>,
    partition_keys: Vec<(String, String)>,
    epoch: u64,
    /// A reader gives its partitions up: take the final checkpoint now.
    handover: Arc<AtomicBool>,
    /// The job was asked to stop (a signal, a hand-over): its input did not end.
    stop: Arc<AtomicBool>,
}

impl Coordinator {
    fn run(mut self, failure: &Failure) -> Result<(), EngineError> {
        let mut next_at = Instant::now() + self.spec.interval;
        let mut pending: Option<Pending> = None;
        loop {
            if failure.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            match self.parts.recv_timeout(Duration::from_millis(20)) {
                Ok(part) => {
                    let p = pending.as_mut().ok_or_else(|| {
                        EngineError::Internal("a checkpoint part arrived unasked".into())
                    })?;
                    if p.add(part)? {
                        let done = pending.take().expect("pending");
                        let last = done.final_;
                        self.complete(done)?;
                        if last {
                            return Ok(());
                        }
                        next_at = Instant::now() + self.spec.interval;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
            if pending.is_some() {
                continue;
            }
            let readers_done = self
                .dispatcher
                .lock()
                .map(|d| d.readers_left == 0)
                .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
            let handover = self.handover.load(Ordering::SeqCst);
            if handover {
                tracing::info!(epoch = self.epoch + 1, "hand-over checkpoint");
            }
            if readers_done || handover || Instant::now() >= next_at {
                pending = Some(self.trigger(readers_done || handover, failure)?);
            }
        }
    }

    /// Puts a barrier into every worker's queue at one point of the chunk order.
    fn trigger(&mut self, last: bool, failure: &Failure) -> Result<Pending, EngineError> {
        let _span = tracing::info_span!("checkpoint_barrier", epoch = self.epoch + 1).entered();
        let mut d = self
            .dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        self.epoch += 1;
        let epoch = self.epoch;
        if last && d.readers_left == 0 && !self.stop.load(Ordering::SeqCst) {
            // every source ended: the windows its end closes go into this checkpoint
            self.epochs.end_of_input.store(epoch, Ordering::SeqCst);
        }
        send_barrier(&d, WorkerMsg::Barrier, epoch, failure)?;
        if last {
            // the final checkpoint: the workers' input ends after it
            d.senders.clear();
        }
        let cut = self
            .partition_keys
            .iter()
            .zip(&d.cut)
            .map(|((s, k), r)| (s.clone(), k.clone(), *r))
            .collect();
        tracing::debug!(epoch, last, "checkpoint started");
        Ok(Pending::new(epoch, last, cut, self.expected))
    }

    fn complete(&mut self, pending: Pending) -> Result<(), EngineError> {
        let _span = tracing::info_span!("checkpoint", epoch = self.epoch).entered();
        let started = pending.started;
        let manifest = pending.write(&self.spec, &self.operator_names)?;
        self.epochs
            .completed
            .store(manifest.epoch, Ordering::SeqCst);
        for (id, (source, key)) in self.partition_keys.iter().enumerate() {
            if let Some(r) = manifest.resume(source, key) {
                self.progress.record_checkpoint(id, r.next_offset);
            }
        }
        let took = started.elapsed();
        let rows: u64 = manifest.operators.iter().map(|o| o.rows).sum();
        let c = &self.stats.checkpoints;
        c.completed.fetch_add(1, Ordering::Relaxed);
        c.last_epoch.store(manifest.epoch, Ordering::Relaxed);
        c.last_duration_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        c.last_bytes.store(manifest.state_bytes, Ordering::Relaxed);
        c.last_rows.store(rows, Ordering::Relaxed);
        c.last_completed_ms
            .store(now_ms().max(0) as u64, Ordering::Relaxed);
        tracing::info!(
            epoch = manifest.epoch,
            duration_ms = took.as_millis() as u64,
            state_rows = rows,
            state_bytes = manifest.state_bytes,
            "checkpoint complete"
        );
        let claimed = match &self.spec.ownership {
            Some(o) => o.fencing.claimed_epochs()?,
            None => Default::default(),
        };
        collect_garbage(
            &self.spec.store,
            self.spec.keep,
            self.spec.ownership.is_some(),
            &claimed,
        )
    }
}

/// Puts `make(id)` into every worker's queue; the caller holds the dispatcher's lock, so the
/// barrier stands at one point of the chunk order in every queue.
fn send_barrier(
    d: &Dispatcher,
    make: fn(u64) -> WorkerMsg,
    id: u64,
    failure: &Failure,
) -> Result<(), EngineError> {
    for s in &d.senders {
        let mut msg = make(id);
        loop {
            match s.send_timeout(msg, TICK) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(m)) => {
                    if failure.cancel.load(Ordering::Relaxed) {
                        return Err(EngineError::Cancelled);
                    }
                    msg = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(failure.closed("a worker")),
            }
        }
    }
    Ok(())
}

/// Starts a live barrier every `interval` until the workers' input ends.
fn live_barriers(
    dispatcher: &Mutex<Dispatcher>,
    interval: Duration,
    failure: &Failure,
) -> Result<(), EngineError> {
    let mut seq = 0;
    let input_ended = || -> Result<bool, EngineError> {
        let d = dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        Ok(d.senders.is_empty())
    };
    loop {
        // the input's end is noticed within LIVE_POLL: the run must not wait out an interval
        let due = Instant::now() + interval;
        loop {
            if failure.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            if input_ended()? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep(LIVE_POLL.min(due - now));
        }
        let d = dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        if d.senders.is_empty() {
            return Ok(());
        }
        seq += 1;
        send_barrier(&d, WorkerMsg::Live, seq, failure)?;
    }
}

struct WorkerCtx {
    index: usize,
    decoders: Arc<Vec<Arc<dyn Decode>>>,
    /// Per source, its `SourceSpec::max_future_ms`.
    max_future: Arc<Vec<Option<i64>>>,
    clocks: Arc<Clocks>,
    stats: Arc<RunStats>,
    dead_tx: Sender<DeadMsg>,
    merge_tx: Sender<MergeInput>,
    failure: Failure,
    op_sources: Vec<usize>,
    input_done: Arc<ExitBarrier>,
    progress: Arc<Progress>,
    link: Option<CheckpointLink>,
    rendezvous: Option<Arc<Rendezvous>>,
}

fn worker_loop(
    rx: Receiver<WorkerMsg>,
    mut ops: Vec<(usize, Box<dyn WorkerOperator>)>,
    ctx: WorkerCtx,
) -> Result<(), EngineError> {
    let mut flushed: Vec<Handover> = vec![Handover::default(); ops.len()];
    let mut row_wm: Vec<i64> = Vec::new();
    loop {
        match rx.recv_timeout(TICK) {
            Ok(WorkerMsg::Chunk(chunk)) => {
                process_chunk(chunk, &mut ops, &mut flushed, &ctx, &mut row_wm)?;
                flush_ops(&mut ops, &mut flushed, &ctx)?;
            }
            Ok(WorkerMsg::Barrier(epoch)) => worker_barrier(epoch, &mut ops, &mut flushed, &ctx)?,
            Ok(WorkerMsg::Live(seq)) => worker_live(seq, &mut ops, &mut flushed, &ctx)?,
            Err(RecvTimeoutError::Timeout) => {
                if ctx.failure.cancel.load(Ordering::Relaxed) {
                    return Err(EngineError::Cancelled);
                }
                flush_ops(&mut ops, &mut flushed, &ctx)?;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Another worker may still be sequencing a partition's last chunk: the watermarks are
    // final only once every worker has handled its whole queue.
    ctx.input_done.arrive_and_wait(&ctx.failure.cancel)?;
    // With checkpoints, an input that ended flushed its last windows at its final barrier;
    // a stopped job (a signal, a hand-over) leaves its open windows to its final checkpoint,
    // from which a restart (or the partitions' next owner) emits them whole: rows written
    // now would never be committed.
    if ctx.link.is_some() {
        return Ok(());
    }
    flush_ops_at(&mut ops, &mut flushed, &ctx, true)
}

/// The protocol every barrier follows in a worker: meet the others (so every chunk before
/// the barrier is sequenced and none after it), hand over the windows closed then and the
/// views' changes, `copy` the open state, meet again; worker 0 then `lead`s (passes the
/// barrier on) before the last meeting, so no worker goes on before it is passed.
fn at_barrier(
    rendezvous: &Rendezvous,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
    copy: impl FnOnce(&mut [(usize, Box<dyn WorkerOperator>)]) -> Result<(), EngineError>,
    lead: impl FnOnce() -> Result<(), EngineError>,
    input_over: bool,
) -> Result<(), EngineError> {
    let cancel = &ctx.failure.cancel;
    rendezvous.wait(cancel)?;
    // at the end of the input every chunk is sequenced now: the watermarks are final
    flush_ops_at(ops, flushed, ctx, input_over)?;
    barrier_handovers(ops, flushed, ctx)?;
    copy(ops)?;
    rendezvous.wait(cancel)?;
    if ctx.index == 0 {
        lead()?;
    }
    rendezvous.wait(cancel)
}

/// A worker at checkpoint `epoch`'s barrier: it snapshots its open windows for the
/// coordinator; worker 0 snapshots the clocks and passes the barrier to the merger and the
/// dead-letter output.
fn worker_barrier(
    epoch: u64,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    let link = ctx
        .link
        .as_ref()
        .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
    let lost = || ctx.failure.closed("the checkpoint coordinator");
    let copy = |ops: &mut [(usize, Box<dyn WorkerOperator>)]| {
        let mut parts = Vec::with_capacity(ops.len());
        for (oi, op) in ops.iter_mut() {
            let (partials, handed_over) = op.snapshot()?;
            parts.push((*oi, partials, handed_over));
        }
        link.parts
            .send(Part::Worker { epoch, ops: parts })
            .map_err(|_| lost())
    };
    let lead = || {
        let newest = (0..ctx.clocks.len())
            .map(|id| {
                let c = ctx.clocks.partition(id);
                if c.watermark() == WATERMARK_END {
                    WATERMARK_END
                } else {
                    c.newest()
                }
            })
            .collect();
        link.parts
            .send(Part::Leader {
                epoch,
                newest,
                counters: ctx.stats.worker_counters(),
            })
            .map_err(|_| lost())?;
        ctx.merge_tx
            .send(MergeInput::Barrier(epoch))
            .map_err(|_| ctx.failure.closed("the merger"))?;
        ctx.dead_tx
            .send(DeadMsg::Barrier(epoch))
            .map_err(|_| ctx.failure.closed("the dead-letter output"))
    };
    let input_over = link.epochs.end_of_input.load(Ordering::SeqCst) == epoch;
    at_barrier(&link.rendezvous, ops, flushed, ctx, copy, lead, input_over)
}

/// A worker at live barrier `seq`: it sends the merger a copy of its open windows; worker 0
/// then sends the barrier with the counters and clocks.
fn worker_live(
    seq: u64,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    let rendezvous = ctx
        .rendezvous
        .as_ref()
        .ok_or_else(|| EngineError::Internal("a live barrier without live state".into()))?;
    let merger_lost = || ctx.failure.closed("the merger");
    let copy = |ops: &mut [(usize, Box<dyn WorkerOperator>)]| {
        let mut parts = Vec::with_capacity(ops.len());
        for (oi, op) in ops.iter_mut() {
            let open = op.live()?;
            if !open.is_empty() {
                parts.push((*oi, open));
            }
        }
        ctx.merge_tx
            .send(MergeInput::LivePart { seq, ops: parts })
            .map_err(|_| merger_lost())
    };
    let lead = || {
        ctx.merge_tx
            .send(MergeInput::Live {
                seq,
                counters: ctx.stats.live_counters(),
                clocks: clock_status(&ctx.clocks),
            })
            .map_err(|_| merger_lost())
    };
    at_barrier(rendezvous, ops, flushed, ctx, copy, lead, false)
}

/// A partition's clock at a snapshot: (watermark, newest event time) where known, whether it
/// ended, whether it is idle.
type ClockRow = (Option<i64>, Option<i64>, bool, bool);

/// Per global partition, its [`ClockRow`].
fn clock_status(clocks: &Clocks) -> Vec<ClockRow> {
    (0..clocks.len())
        .map(|id| {
            let c = clocks.partition(id);
            let (wm, newest) = (c.watermark(), c.newest());
            let known = |v: i64| (v != WATERMARK_MIN && v != WATERMARK_END).then_some(v);
            (known(wm), known(newest), wm == WATERMARK_END, c.is_idle())
        })
        .collect()
}

/// Hands the merger what operators hand over at every barrier (views' changes).
fn barrier_handovers(
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    for (i, (oi, op)) in ops.iter_mut().enumerate() {
        let partials = op.barrier_handover()?;
        if partials.is_empty() {
            continue;
        }
        let h = &mut flushed[i];
        h.seq += 1;
        ctx.merge_tx
            .send(MergeInput::Handover(MergeMsg {
                operator: *oi,
                worker: ctx.index,
                partials,
                upto: h.upto,
                seq: h.seq,
            }))
            .map_err(|_| ctx.failure.closed("the merger"))?;
    }
    Ok(())
}

/// What a worker handed the merger of one operator.
#[derive(Clone)]
struct Handover {
    /// The watermark of the last hand-over.
    upto: i64,
    /// Hand-overs so far.
    seq: u64,
    /// Rows were aggregated since the last hand-over (they may belong to windows already
    /// closed, when their partition lags, and must be handed over anyway).
    dirty: bool,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            upto: WATERMARK_MIN,
            seq: 0,
            dirty: false,
        }
    }
}

/// Lets workers wait until all of them have handled all their input.
struct ExitBarrier {
    remaining: Mutex<usize>,
    all_done: std::sync::Condvar,
}

impl ExitBarrier {
    fn new(workers: usize) -> Self {
        ExitBarrier {
            remaining: Mutex::new(workers),
            all_done: std::sync::Condvar::new(),
        }
    }

    fn arrive_and_wait(&self, cancel: &AtomicBool) -> Result<(), EngineError> {
        let mut left = self
            .remaining
            .lock()
            .map_err(|_| EngineError::Internal("exit barrier poisoned".into()))?;
        *left -= 1;
        if *left == 0 {
            self.all_done.notify_all();
        }
        while *left > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            left = self
                .all_done
                .wait_timeout(left, Duration::from_millis(50))
                .map_err(|_| EngineError::Internal("exit barrier poisoned".into()))?
                .0;
        }
        Ok(())
    }
}

fn process_chunk(
    chunk: Chunk,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    handovers: &mut [Handover],
    ctx: &WorkerCtx,
    row_wm: &mut Vec<i64>,
) -> Result<(), EngineError> {
    let _span = tracing::info_span!(
        "batch",
        source = %chunk.partition.source,
        partition = chunk.partition.number,
        seq = chunk.seq
    )
    .entered();
    let end = matches!(chunk.data, ChunkData::End);
    let bytes = match &chunk.data {
        ChunkData::Lines(lines) => lines.len() as u64,
        ChunkData::Messages(m) => m.payloads.iter().map(|(a, b)| (b - a) as u64).sum(),
        _ => 0,
    };
    let next_offset = match &chunk.data {
        ChunkData::Messages(m) => Some(m.offsets.last().map_or(chunk.first_offset, |o| o + 1)),
        ChunkData::End => Some(chunk.first_offset),
        _ => None,
    };
    let Decoded {
        events,
        mut bad,
        records,
    } = match chunk.data {
        ChunkData::Lines(ref lines) => ctx.decoders[chunk.source].decode(&chunk, lines),
        ChunkData::Messages(ref messages) => {
            ctx.decoders[chunk.source].decode_messages(&chunk, messages)
        }
        ChunkData::Events(ev) => Decoded {
            records: ev.batch.num_rows() as u64,
            events: Some(ev),
            bad: Vec::new(),
        },
        ChunkData::End => Decoded {
            events: None,
            bad: Vec::new(),
            records: 0,
        },
    };
    let events = match (events, ctx.max_future.get(chunk.source).copied().flatten()) {
        (Some(ev), Some(max)) => {
            crate::bounds::drop_future(ev, (max, now_ms()), &chunk.partition, &mut bad)?
        }
        (events, _) => events,
    };
    RunStats::add(&ctx.stats.records_in, records);
    if let Some(src) = ctx.stats.sources.get(chunk.source) {
        RunStats::add(&src.records_in, records);
        RunStats::add(&src.bytes_in, bytes);
        RunStats::add(&src.bad, bad.len() as u64);
    }
    if !bad.is_empty() {
        RunStats::add(&ctx.stats.bad, bad.len() as u64);
        ctx.dead_tx
            .send(DeadMsg::Records(bad))
            .map_err(|_| ctx.failure.closed("the dead-letter output"))?;
    }
    // Running newest event time before each row, within the chunk.
    row_wm.clear();
    let mut newest = WATERMARK_MIN;
    if let Some(ev) = &events {
        row_wm.reserve(ev.event_time.len());
        for &t in &ev.event_time {
            row_wm.push(newest);
            newest = newest.max(t);
        }
    }
    let clock = ctx.clocks.partition(chunk.partition.id);
    let before = clock.sequence(chunk.seq, newest, end, &ctx.failure.cancel)?;
    let tracked = next_offset.is_some() && ctx.progress.is_tracked(chunk.partition.id);
    let Some(events) = events else {
        if let (true, Some(next_offset)) = (tracked, next_offset) {
            send_residue(
                ctx,
                (chunk.partition.id, chunk.seq),
                next_offset,
                Vec::new(),
            )?;
        }
        return Ok(());
    };
    for w in row_wm.iter_mut() {
        *w = clock.watermark_after((*w).max(before));
    }
    let mut dead = Vec::new();
    for (i, (oi, op)) in ops.iter_mut().enumerate() {
        if ctx.op_sources[*oi] != chunk.source {
            continue;
        }
        let late = op.process(&chunk.partition, &events, row_wm, &mut dead)?;
        RunStats::add(&ctx.stats.late[*oi].value, late);
        handovers[i].dirty = true;
    }
    count_bad_rows(ctx, chunk.source, &dead);
    if !dead.is_empty() {
        ctx.dead_tx
            .send(DeadMsg::Records(dead))
            .map_err(|_| ctx.failure.closed("the dead-letter output"))?;
    }
    if let (true, Some(next_offset)) = (tracked, next_offset) {
        let windows = ops
            .iter()
            .zip(handovers.iter())
            .filter(|((oi, op), _)| ctx.op_sources[*oi] == chunk.source && op.holds_offsets())
            .map(|((oi, op), h)| OpResidue {
                operator: *oi,
                worker: ctx.index,
                after_handover: h.seq,
                windows: residue_windows(op.as_ref(), &events),
            })
            .collect();
        send_residue(ctx, (chunk.partition.id, chunk.seq), next_offset, windows)?;
    }
    Ok(())
}

/// Counts the records operators dead-lettered as bad (an expression failed on them) as bad
/// records of their source: once per record, however many operators failed on it.
fn count_bad_rows(ctx: &WorkerCtx, source: usize, dead: &[DeadLetter]) {
    let mut offsets: Vec<Option<u64>> = dead
        .iter()
        .filter(|d| d.reason == Reason::Bad)
        .map(|d| d.offset)
        .collect();
    if offsets.is_empty() {
        return;
    }
    offsets.sort_unstable();
    offsets.dedup();
    let n = offsets.len() as u64;
    RunStats::add(&ctx.stats.bad, n);
    if let Some(src) = ctx.stats.sources.get(source) {
        RunStats::add(&src.bad, n);
    }
}

/// Per window a chunk's rows went to: (the watermark that closes it, smallest offset of its
/// rows).
fn residue_windows(op: &dyn WorkerOperator, events: &EventBatch) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = Vec::new();
    let mut last: Option<(i64, usize)> = None; // (event-time bucket hint, index in out)
    for (&t, &offset) in events.event_time.iter().zip(&events.offsets) {
        let end = match last {
            Some((prev_t, i)) if prev_t == t => out[i].0,
            _ => op.closes_at(t),
        };
        let i = match out.iter().position(|(e, _)| *e == end) {
            Some(i) => {
                out[i].1 = out[i].1.min(offset);
                i
            }
            None => {
                out.push((end, offset));
                out.len() - 1
            }
        };
        last = Some((t, i));
    }
    out
}

fn send_residue(
    ctx: &WorkerCtx,
    (partition, seq): (usize, u64),
    next_offset: u64,
    windows: Vec<OpResidue>,
) -> Result<(), EngineError> {
    ctx.dead_tx
        .send(DeadMsg::Residue(ChunkResidue {
            partition,
            seq,
            next_offset,
            windows,
        }))
        .map_err(|_| ctx.failure.closed("the dead-letter output"))
}

/// Hands the merger every window closed at the operator's watermark, and windows closed
/// earlier that rows of a lagging partition opened again.
fn flush_ops(
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    flush_ops_at(ops, flushed, ctx, false)
}

/// [`flush_ops`]; `input_over` once every reader finished (partitions never assigned to this
/// process no longer hold the watermark).
fn flush_ops_at(
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
    input_over: bool,
) -> Result<(), EngineError> {
    let source_watermark = |source: usize| {
        if input_over {
            ctx.clocks.final_source_watermark(source)
        } else {
            ctx.clocks.source_watermark(source)
        }
    };
    for (i, (oi, op)) in ops.iter_mut().enumerate() {
        let wm = if op.processing_time() {
            let src_wm = source_watermark(ctx.op_sources[*oi]);
            if src_wm == Some(WATERMARK_END) {
                Some(WATERMARK_END)
            } else {
                Some(now_ms())
            }
        } else {
            source_watermark(ctx.op_sources[*oi])
        };
        let h = &mut flushed[i];
        let wm = wm.unwrap_or(h.upto).max(h.upto);
        if wm == h.upto && !h.dirty {
            continue;
        }
        let partials = op.flush(wm)?;
        h.dirty = false;
        if wm == h.upto && partials.is_empty() {
            continue;
        }
        h.upto = wm;
        h.seq += 1;
        ctx.merge_tx
            .send(MergeInput::Handover(MergeMsg {
                operator: *oi,
                worker: ctx.index,
                partials,
                upto: wm,
                seq: h.seq,
            }))
            .map_err(|_| ctx.failure.closed("the merger"))?;
    }
    Ok(())
}

type MergePart = (Box<dyn MergeOperator>, Vec<usize>);

/// Where the merger starts.
struct MergerStart {
    workers: usize,
    /// Per operator: the watermark up to which windows were emitted (from a checkpoint).
    emitted: Vec<i64>,
    link: Option<CheckpointLink>,
    live: Option<LiveTables>,
}

/// Each partition's row of `weir_status`: its clocks, and its consumer lag from `stats`.
fn partition_statuses(
    partitions: &[(String, String)],
    clocks: impl IntoIterator<Item = ClockRow>,
    stats: Option<&RunStats>,
) -> Vec<PartitionStatus> {
    let lag = stats.and_then(|s| s.consumer_lag.lock().ok());
    partitions
        .iter()
        .zip(clocks)
        .map(
            |((source, partition), (watermark, newest, ended, idle))| PartitionStatus {
                lag: lag
                    .as_ref()
                    .and_then(|l| l.get(&(source.clone(), partition.clone())).copied()),
                source: source.clone(),
                partition: partition.clone(),
                watermark,
                newest,
                ended,
                idle,
            },
        )
        .collect()
}

/// The merger's side of live snapshots: emitted windows kept for `retain`, and the workers'
/// copies of their open state gathered until the live barrier.
struct LiveTables {
    state: Arc<LiveState>,
    /// (source, partition key) per global partition.
    partitions: Vec<(String, String)>,
    clocks: Arc<Clocks>,
    retained: Vec<Retained>,
    parts: Vec<Vec<PartialWindow>>,
    seq: u64,
}

impl LiveTables {
    fn new(state: Arc<LiveState>, partitions: &[(String, String)], clocks: Arc<Clocks>) -> Self {
        let n = state.tables.len();
        // before the first barrier: the partitions, with what a restore gave their clocks
        state.publish(LiveSnapshot {
            tables: (0..n).map(|_| Vec::new()).collect(),
            indexes: (0..n).map(|_| None).collect(),
            partitions: partition_statuses(partitions, clock_status(&clocks), None),
            ..Default::default()
        });
        LiveTables {
            state,
            partitions: partitions.to_vec(),
            clocks,
            retained: (0..n).map(|_| Retained::new()).collect(),
            parts: (0..n).map(|_| Vec::new()).collect(),
            seq: 0,
        }
    }

    /// Keeps rows operator `op` emitted (one window per batch).
    fn emitted(&mut self, op: usize, batch: &RecordBatch) -> Result<(), EngineError> {
        let Some(def) = self.state.tables.get(op) else {
            return Ok(());
        };
        let LiveKind::Window { retain_ms } = def.kind else {
            return Ok(());
        };
        let Some(end) = window_end_of(batch) else {
            return Ok(());
        };
        let rows = def.rows(batch, true)?;
        self.retained[op].add(end, rows, retain_ms);
        Ok(())
    }

    /// Builds and publishes the snapshot: retained and open windows, views.
    fn publish(
        &mut self,
        ops: &mut [MergePart],
        counters: Vec<(String, u64)>,
        clocks: Vec<ClockRow>,
        stats: &RunStats,
        finished: bool,
    ) -> Result<(), EngineError> {
        self.seq += 1;
        let mut tables = Vec::with_capacity(ops.len());
        let indexes = ops.iter().map(|(m, _)| m.live_index()).collect();
        for (i, (merge, _)) in ops.iter_mut().enumerate() {
            let def = &self.state.tables[i];
            let mut rows: Vec<RecordBatch> = self.retained[i].batches().cloned().collect();
            for b in merge.live(std::mem::take(&mut self.parts[i]))? {
                if b.num_rows() > 0 {
                    rows.push(def.rows(&b, false)?);
                }
            }
            tables.push(rows);
        }
        let mut counters: std::collections::BTreeMap<String, u64> = counters.into_iter().collect();
        counters.extend(stats.merger_counters());
        let partitions = partition_statuses(&self.partitions, clocks, Some(stats));
        self.state.publish(LiveSnapshot {
            seq: self.seq,
            taken_ms: now_ms(),
            tables,
            indexes,
            counters,
            partitions,
            finished,
        });
        Ok(())
    }
}

/// The `window_end` of the first row of a window batch.
/// Appends the batch's `window_end` values as runs of (end, rows).
fn window_end_runs(batch: &RecordBatch, out: &mut Vec<(i64, u64)>) {
    use arrow::array::{Array, TimestampMillisecondArray};
    let Some(ends) = batch
        .column_by_name("window_end")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
    else {
        return;
    };
    for &end in ends.values().iter() {
        match out.last_mut() {
            Some((e, n)) if *e == end => *n += 1,
            _ => out.push((end, 1)),
        }
    }
}

fn window_end_of(batch: &RecordBatch) -> Option<i64> {
    use arrow::array::{Array, TimestampMillisecondArray};
    let col = batch.column_by_name("window_end")?;
    let ends = col.as_any().downcast_ref::<TimestampMillisecondArray>()?;
    (!ends.is_empty()).then(|| ends.value(0))
}

fn merger_loop(
    rx: Receiver<MergeInput>,
    mut ops: Vec<MergePart>,
    sinks: Vec<Sender<SinkMsg>>,
    start: MergerStart,
    stats: &RunStats,
    failure: &Failure,
) -> Result<(), EngineError> {
    let workers = start.workers;
    let mut upto: Vec<Vec<i64>> = ops.iter().map(|_| vec![WATERMARK_MIN; workers]).collect();
    let mut covered: Vec<Vec<u64>> = ops.iter().map(|_| vec![0; workers]).collect();
    let mut emitted: Vec<i64> = start.emitted;
    let mut live = start.live;
    for input in rx {
        let msg = match input {
            MergeInput::Handover(msg) => msg,
            MergeInput::LivePart { seq, ops: parts } => {
                tracing::trace!(seq, "live part");
                if let Some(l) = live.as_mut() {
                    for (op, p) in parts {
                        l.parts[op].extend(p);
                    }
                }
                continue;
            }
            MergeInput::Live {
                seq,
                counters,
                clocks,
            } => {
                tracing::trace!(seq, "live barrier");
                send_barrier_rows(&mut ops, &sinks, failure)?;
                if let Some(l) = live.as_mut() {
                    l.publish(&mut ops, counters, clocks, stats, false)?;
                }
                continue;
            }
            MergeInput::Barrier(epoch) => {
                let link = start.link.as_ref().ok_or_else(|| {
                    EngineError::Internal("a barrier without checkpointing".into())
                })?;
                send_barrier_rows(&mut ops, &sinks, failure)?;
                let mut held = Vec::with_capacity(ops.len());
                for (i, (merge, _)) in ops.iter_mut().enumerate() {
                    held.push((merge.snapshot()?, emitted[i]));
                }
                link.parts
                    .send(Part::Merger {
                        epoch,
                        ops: held,
                        counters: stats.merger_counters(),
                    })
                    .map_err(|_| failure.closed("the checkpoint coordinator"))?;
                for s in &sinks {
                    s.send(SinkMsg::Barrier(epoch))
                        .map_err(|_| failure.closed("a sink"))?;
                }
                continue;
            }
        };
        let (merge, sink_ids) = &mut ops[msg.operator];
        let had_partials = !msg.partials.is_empty();
        for p in msg.partials {
            merge.merge(p)?;
        }
        upto[msg.operator][msg.worker] = msg.upto;
        covered[msg.operator][msg.worker] = msg.seq;
        let wm = upto[msg.operator]
            .iter()
            .copied()
            .min()
            .unwrap_or(WATERMARK_MIN)
            .max(emitted[msg.operator]);
        // Windows reopened by a lagging partition are emitted as soon as they are handed over.
        if wm > emitted[msg.operator] || had_partials {
            emitted[msg.operator] = wm;
            let windows = merge.emits_windows();
            for batch in merge.emit(wm)? {
                if windows {
                    RunStats::add(&stats.windows[msg.operator].value, batch.num_rows() as u64);
                }
                if let Some(l) = live.as_mut() {
                    l.emitted(msg.operator, &batch)?;
                }
                for &s in sink_ids.iter() {
                    sinks[s]
                        .send(SinkMsg::Rows(batch.clone()))
                        .map_err(|_| failure.closed("a sink"))?;
                }
            }
            for &s in sink_ids.iter() {
                sinks[s]
                    .send(SinkMsg::Upto {
                        op: msg.operator,
                        upto: wm,
                        covered: covered[msg.operator].clone(),
                    })
                    .map_err(|_| failure.closed("a sink"))?;
            }
        }
    }
    if failure.cancel.load(Ordering::SeqCst) {
        return Err(EngineError::Cancelled);
    }
    // Every worker finished: the last snapshot holds every window emitted and the views'
    // final rows.
    if let Some(l) = live.as_mut() {
        let clocks = clock_status(&l.clocks);
        l.publish(&mut ops, stats.live_counters(), clocks, stats, true)?;
    }
    Ok(())
}

/// Sends every operator's barrier rows (views' changed keys) to its sinks.
fn send_barrier_rows(
    ops: &mut [MergePart],
    sinks: &[Sender<SinkMsg>],
    failure: &Failure,
) -> Result<(), EngineError> {
    for (merge, sink_ids) in ops.iter_mut() {
        if sink_ids.is_empty() {
            continue;
        }
        for batch in merge.barrier_rows()? {
            for &s in sink_ids.iter() {
                sinks[s]
                    .send(SinkMsg::Rows(batch.clone()))
                    .map_err(|_| failure.closed("a sink"))?;
            }
        }
    }
    Ok(())
}

/// A sink's thread: writes rows; without checkpoints, every [`DURABLE_EVERY`] flushes the
/// sink and reports how far each feeding operator's rows are durable; with checkpoints,
/// pre-commits at barriers and commits complete checkpoints.
struct SinkThread {
    index: usize,
    name: String,
    sink: Box<dyn Sink>,
    /// (operator, index of this sink among the operator's sinks).
    feeds: Vec<(usize, usize)>,
    stats: Arc<RunStats>,
    progress: Arc<Progress>,
    link: Option<CheckpointLink>,
    cancel: Arc<AtomicBool>,
    retry: RetryPolicy,
    /// Where rows the sink refused for good go (the dead-letter thread).
    rejects: Sender<RejectMsg>,
    /// The epoch rows belong to now (the last barrier's + 1).
    epoch: u64,
    /// The origin of this sink's rejected rows in dead letters.
    rejected_from: Arc<PartitionInfo>,
}

/// The two-phase-commit state of an output: the epochs it pre-committed and committed.
#[derive(Default)]
struct Commits {
    pre_committed: u64,
    committed: u64,
    /// (epoch, rows written before its barrier) of the epochs pre-committed and not
    /// committed yet.
    rows: Vec<(u64, u64)>,
}

impl Commits {
    /// The epoch to commit now, if a pre-committed one became complete.
    fn due(&self, link: &CheckpointLink) -> Option<u64> {
        let complete = link.epochs.completed.load(Ordering::SeqCst);
        let upto = complete.min(self.pre_committed);
        (upto > self.committed).then_some(upto)
    }

    /// At the end of the input: waits until the checkpoint holding the last pre-committed
    /// rows is complete, and returns the epoch to commit.
    fn wait_last(
        &self,
        link: &CheckpointLink,
        cancel: &AtomicBool,
    ) -> Result<Option<u64>, EngineError> {
        while link.epochs.completed.load(Ordering::SeqCst) < self.pre_committed {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(self.due(link))
    }
}

impl SinkThread {
    fn run(mut self, rx: Receiver<SinkMsg>) -> Result<(), EngineError> {
        let mut sent_upto: Vec<Option<(i64, Vec<u64>)>> = vec![None; self.feeds.len()];
        let mut last_flush = Instant::now();
        let mut commits = Commits::default();
        // (window end, rows) written and not acknowledged yet, for the latency histogram
        let mut unacked: Vec<(i64, u64)> = Vec::new();
        let mut pending_ack: Vec<(u64, Vec<(i64, u64)>)> = Vec::new();
        let (stats, cancel) = (self.stats.clone(), self.cancel.clone());
        let mut retrier = Retrier::new(
            &format!("sink `{}`", self.name),
            self.retry.clone(),
            &stats.sink_health[self.index],
            &cancel,
        );
        loop {
            match rx.recv_timeout(TICK) {
                Ok(SinkMsg::Rows(batch)) => {
                    let sink = &mut self.sink;
                    retrier
                        .call("write", || sink.write(&batch))
                        .map_err(|e| self.error(e))?;
                    self.forward_rejected()?;
                    RunStats::add(
                        &self.stats.rows_written[self.index].value,
                        batch.num_rows() as u64,
                    );
                    window_end_runs(&batch, &mut unacked);
                }
                Ok(SinkMsg::Upto { op, upto, covered }) => {
                    if let Some(i) = self.feeds.iter().position(|(o, _)| *o == op) {
                        sent_upto[i] = Some((upto, covered));
                    }
                }
                Ok(SinkMsg::Barrier(epoch)) => {
                    self.pre_commit(epoch, &mut commits, &mut retrier)?;
                    commits.rows.push((epoch, self.written()));
                    // rows up to the barrier become visible when its checkpoint commits
                    pending_ack.push((epoch, std::mem::take(&mut unacked)));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some(link) = &self.link {
                if let Some(epoch) = commits.due(link) {
                    let sink = &mut self.sink;
                    retrier
                        .call("commit", || sink.commit(epoch))
                        .map_err(|e| sink_error(&self.name, e))?;
                    commits.committed = epoch;
                    self.committed_rows(&mut commits);
                    self.forward_rejected()?;
                    let (acked, rest): (Vec<_>, Vec<_>) =
                        pending_ack.drain(..).partition(|(e, _)| *e <= epoch);
                    pending_ack = rest;
                    self.acknowledged(acked.into_iter().flat_map(|(_, rows)| rows));
                }
            } else if last_flush.elapsed() >= DURABLE_EVERY && sent_upto.iter().any(Option::is_some)
            {
                let sink = &mut self.sink;
                let durable = retrier
                    .call("flush", || sink.flush())
                    .map_err(|e| sink_error(&self.name, e))?;
                self.forward_rejected()?;
                if durable {
                    self.report(&mut sent_upto);
                    self.acknowledged(unacked.drain(..));
                }
                last_flush = Instant::now();
            }
        }
        if let Some(link) = &self.link {
            if let Some(epoch) = commits.wait_last(link, &self.cancel)? {
                let sink = &mut self.sink;
                retrier
                    .call("commit", || sink.commit(epoch))
                    .map_err(|e| sink_error(&self.name, e))?;
                commits.committed = epoch;
                self.committed_rows(&mut commits);
            }
        }
        let sink = &mut self.sink;
        retrier
            .call("finish", || sink.finish())
            .map_err(|e| sink_error(&self.name, e))?;
        if self.link.is_none() {
            // without checkpoints a finished sink holds every row it was given
            self.stats.rows_committed[self.index]
                .value
                .store(self.written(), Ordering::Relaxed);
        } else if self.written() > RunStats::get(&self.stats.rows_committed[self.index].value) {
            tracing::warn!(
                sink = %self.name,
                written = self.written(),
                committed = RunStats::get(&self.stats.rows_committed[self.index].value),
                "rows written after the last checkpoint are not committed; a restart from it writes them again"
            );
        }
        self.forward_rejected()?;
        self.report(&mut sent_upto);
        if self.link.is_some() {
            self.acknowledged(pending_ack.drain(..).flat_map(|(_, rows)| rows));
        } else {
            self.acknowledged(unacked.drain(..));
        }
        Ok(())
    }

    /// Rows written to the sink so far (restored with a checkpoint).
    fn written(&self) -> u64 {
        RunStats::get(&self.stats.rows_written[self.index].value)
    }

    /// After a commit: the rows written before the committed epoch's barrier are committed.
    fn committed_rows(&self, commits: &mut Commits) {
        let upto = commits.committed;
        if let Some(&(_, rows)) = commits.rows.iter().rev().find(|(e, _)| *e <= upto) {
            self.stats.rows_committed[self.index]
                .value
                .store(rows, Ordering::Relaxed);
        }
        commits.rows.retain(|(e, _)| *e > upto);
    }

    /// Rows the sink acknowledged now: their latency from their window's end.
    fn acknowledged(&self, rows: impl IntoIterator<Item = (i64, u64)>) {
        let now = now_ms();
        let h = &self.stats.sink_latency[self.index];
        for (end, n) in rows {
            h.observe_n((now - end) as f64 / 1000.0, n);
        }
    }

    fn pre_commit(
        &mut self,
        epoch: u64,
        commits: &mut Commits,
        retrier: &mut Retrier,
    ) -> Result<(), EngineError> {
        let sink = &mut self.sink;
        let info = retrier
            .call("pre-commit", || sink.pre_commit(epoch))
            .map_err(|e| sink_error(&self.name, e))?;
        commits.pre_committed = epoch;
        // the epoch's rejected rows, then the word that there are no more of them
        self.forward_rejected()?;
        self.rejects
            .send(RejectMsg::Passed {
                sink: self.index,
                epoch,
            })
            .map_err(|_| EngineError::Cancelled)?;
        self.epoch = epoch + 1;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
        link.parts
            .send(Part::Sink {
                epoch,
                name: self.name.clone(),
                info,
                counters: vec![(
                    format!("rows_written/{}", self.name),
                    RunStats::get(&self.stats.rows_written[self.index].value),
                )],
            })
            .map_err(|_| EngineError::Cancelled)
    }

    fn report(&self, sent_upto: &mut [Option<(i64, Vec<u64>)>]) {
        for (i, upto) in sent_upto.iter_mut().enumerate() {
            if let Some((wm, covered)) = upto.take() {
                let (op, k) = self.feeds[i];
                self.progress.sink_durable(op, k, wm, covered);
            }
        }
    }

    fn error(&self, e: EngineError) -> EngineError {
        sink_error(&self.name, e)
    }

    /// Sends the rows the sink refused since the last call to the dead-letter thread.
    fn forward_rejected(&mut self) -> Result<(), EngineError> {
        let rows = self.sink.take_rejected();
        if rows.is_empty() {
            return Ok(());
        }
        let health = &self.stats.sink_health[self.index];
        health
            .rejected
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        tracing::warn!(sink = %self.name, rows = rows.len(), first_error = %rows[0].error.message, "rows refused by the sink go to the dead-letter output");
        let records = rows
            .into_iter()
            .map(|r| DeadLetter {
                partition: self.rejected_from.clone(),
                offset: None,
                reason: Reason::Rejected,
                error: r.error,
                raw: Some(r.raw),
                trace: Default::default(),
            })
            .collect();
        self.rejects
            .send(RejectMsg::Rows {
                epoch: self.epoch,
                records,
            })
            .map_err(|_| EngineError::Cancelled)
    }
}

/// What sinks send the dead-letter thread.
enum RejectMsg {
    /// Rows a sink refused for good, written in its epoch `epoch`.
    Rows {
        epoch: u64,
        records: Vec<DeadLetter>,
    },
    /// Sink `sink` pre-committed `epoch`: it sent every rejection of its rows up to it.
    Passed { sink: usize, epoch: u64 },
}

/// The dead-letter thread: writes the workers' records and the rows sinks rejected;
/// residues of tracked chunks reach the progress tracker only after the records sent before
/// them were flushed. With checkpoints, epoch `E` is pre-committed once the workers' barrier
/// `E` arrived and every sink passed its barrier `E`, so each rejected row is in the same
/// checkpoint as the row itself (a restore neither loses nor repeats it).
struct DeadLetterThread<'a> {
    sink: Box<dyn DeadLetterSink>,
    retrier: Retrier<'a>,
    stats: &'a RunStats,
    progress: &'a Progress,
    link: Option<CheckpointLink>,
    cancel: &'a AtomicBool,
    /// The epoch records belong to now.
    epoch: u64,
    /// Per sink, the last epoch it passed.
    passed: Vec<u64>,
    /// Rejected rows of epochs after `epoch`, written when it gets there.
    later: std::collections::BTreeMap<u64, Vec<DeadLetter>>,
    /// The sinks are still running (the channel of their rejections is open).
    sinks_open: bool,
}

impl DeadLetterThread<'_> {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        let sink = &mut self.sink;
        self.retrier.call("write", || sink.write(records))?;
        RunStats::add(&self.stats.dead_letters, records.len() as u64);
        Ok(())
    }

    fn on_reject(&mut self, msg: RejectMsg) -> Result<(), EngineError> {
        match msg {
            RejectMsg::Rows { epoch, records } if epoch <= self.epoch => self.write(&records),
            RejectMsg::Rows { epoch, records } => {
                self.later.entry(epoch).or_default().extend(records);
                Ok(())
            }
            RejectMsg::Passed { sink, epoch } => {
                if let Some(p) = self.passed.get_mut(sink) {
                    *p = (*p).max(epoch);
                }
                Ok(())
            }
        }
    }

    /// Takes sink messages until every sink passed `epoch` (or ended).
    fn wait_sinks(&mut self, rejects: &Receiver<RejectMsg>, epoch: u64) -> Result<(), EngineError> {
        while self.sinks_open && self.passed.iter().any(|&p| p < epoch) {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            match rejects.recv_timeout(TICK) {
                Ok(m) => self.on_reject(m)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.sinks_open = false,
            }
        }
        Ok(())
    }

    fn barrier(&mut self, rejects: &Receiver<RejectMsg>, epoch: u64) -> Result<u64, EngineError> {
        self.wait_sinks(rejects, epoch)?;
        let sink = &mut self.sink;
        let info = self.retrier.call("pre-commit", || sink.pre_commit(epoch))?;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
        link.parts
            .send(Part::DeadLetter {
                epoch,
                info,
                counters: vec![(
                    "dead_letters".to_string(),
                    RunStats::get(&self.stats.dead_letters),
                )],
            })
            .map_err(|_| EngineError::Cancelled)?;
        self.epoch = epoch + 1;
        let due: Vec<u64> = self.later.range(..=self.epoch).map(|(e, _)| *e).collect();
        for e in due {
            if let Some(records) = self.later.remove(&e) {
                self.write(&records)?;
            }
        }
        Ok(epoch)
    }

    fn run(
        mut self,
        rx: Receiver<DeadMsg>,
        rejects: Receiver<RejectMsg>,
    ) -> Result<(), EngineError> {
        let mut residues: Vec<ChunkResidue> = Vec::new();
        let mut last_flush = Instant::now();
        let mut commits = Commits::default();
        let mut workers_open = true;
        while workers_open || self.sinks_open {
            let mut select = crossbeam_channel::Select::new();
            let workers = workers_open.then(|| select.recv(&rx));
            let sinks = self.sinks_open.then(|| select.recv(&rejects));
            match select.select_timeout(TICK) {
                Ok(op) if Some(op.index()) == workers => match op.recv(&rx) {
                    Ok(DeadMsg::Records(records)) => self.write(&records)?,
                    Ok(DeadMsg::Residue(r)) => residues.push(r),
                    Ok(DeadMsg::Barrier(epoch)) => {
                        commits.pre_committed = self.barrier(&rejects, epoch)?;
                    }
                    Err(_) => workers_open = false,
                },
                Ok(op) if Some(op.index()) == sinks => match op.recv(&rejects) {
                    Ok(m) => self.on_reject(m)?,
                    Err(_) => self.sinks_open = false,
                },
                Ok(_) | Err(_) => {}
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            if let Some(link) = &self.link {
                if let Some(epoch) = commits.due(link) {
                    let sink = &mut self.sink;
                    self.retrier.call("commit", || sink.commit(epoch))?;
                    commits.committed = epoch;
                }
            } else if !residues.is_empty() && last_flush.elapsed() >= DURABLE_EVERY {
                let sink = &mut self.sink;
                if self.retrier.call("flush", || sink.flush())? {
                    self.progress.add_residues(residues.drain(..));
                }
                last_flush = Instant::now();
            }
        }
        if let Some(link) = &self.link {
            if let Some(epoch) = commits.wait_last(link, self.cancel)? {
                let sink = &mut self.sink;
                self.retrier.call("commit", || sink.commit(epoch))?;
            }
        }
        let sink = &mut self.sink;
        self.retrier.call("finish", || sink.finish())?;
        self.progress.add_residues(residues);
        Ok(())
    }
}
