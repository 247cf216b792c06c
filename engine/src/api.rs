//! The engine's public API: the traits sources, operators and outputs implement, the context
//! readers see, and the description of a job [`crate::job::run`] runs. Re-exported from
//! [`crate::job`], where the rest of the crate and other crates name them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;

use crate::checkpoint::CheckpointSpec;
use crate::clock::Clocks;
use crate::dead_letter::{DeadLetter, PartitionInfo, RejectedRow};
use crate::events::{Chunk, Decoded, EventBatch, Messages, SharedBytes};
use crate::live::LiveSpec;
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use crate::stats::RunStats;
pub use crate::types::{PartialWindow, PartitionFlush};
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

    /// Whether the reader must stop reading: the job is asked to stop, or it failed (a
    /// reader of a quiet source that looked at `stop` alone kept the failed job waiting for
    /// it, silently, until a signal).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
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
/// consecutive `seq` numbers and ending with a
/// [`ChunkData::End`](crate::events::ChunkData::End) chunk when it is bounded.
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
    /// Whether its windows close per source partition, each when its own partition's
    /// watermark passes them (windows keyed by what the source is partitioned by): the worker
    /// then calls [`Self::flush_partitions`] instead of [`Self::flush`].
    fn closes_per_partition(&self) -> bool {
        false
    }
    /// For each `(partition, closing)`, raises the partition's closing watermark to `closing`
    /// and hands over its windows closed there; `upto` is the lowest closing watermark of
    /// every partition of the source (what a checkpoint records as flushed). Returns what was
    /// handed over of each partition, with the closing watermark it now keeps.
    fn flush_partitions(
        &mut self,
        closing: &[(usize, i64)],
        upto: i64,
    ) -> Result<Vec<PartitionFlush>, EngineError> {
        let _ = (closing, upto);
        Ok(Vec::new())
    }
    /// Restores, of windows closing per partition, how far each partition's windows were
    /// emitted (`(partition, watermark)`): its rows for them are late.
    fn restore_closed(&mut self, closed: &[(usize, i64)]) -> Result<(), EngineError> {
        let _ = closed;
        Ok(())
    }
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
    /// Whether the rows it aggregates hold back committed offsets (without checkpoints) until
    /// their windows are durable. A view's rows close at [`crate::clock::WATERMARK_END`]
    /// and so hold them back for good: its state lives only in checkpoints, and a run
    /// without them must read its source again from where the view started.
    fn holds_offsets(&self) -> bool {
        true
    }
    /// How far its windows are closed already (restored from a checkpoint, or handed over):
    /// of `partition` when they close per partition, else of all. Rows of windows closing at
    /// or below it are late.
    fn closed_upto(&self, _partition: Option<usize>) -> i64 {
        crate::clock::WATERMARK_MIN
    }
}

/// The part of an operator that merges partial windows and emits the final rows.
pub trait MergeOperator: Send {
    /// Adds a worker's partial window.
    fn merge(&mut self, partial: PartialWindow) -> Result<(), EngineError>;
    /// Emits every window closed at `watermark` (all workers have handed them over).
    fn emit(&mut self, watermark: i64) -> Result<Vec<RecordBatch>, EngineError>;
    /// Adds a worker's partial window of source partition `partition` (operators whose
    /// windows close per partition).
    fn merge_partition(
        &mut self,
        _partition: usize,
        partial: PartialWindow,
    ) -> Result<(), EngineError> {
        self.merge(partial)
    }
    /// Emits partition `partition`'s windows closed at `watermark` (all workers have handed
    /// them over).
    fn emit_partition(
        &mut self,
        _partition: usize,
        _watermark: i64,
    ) -> Result<Vec<RecordBatch>, EngineError> {
        Ok(Vec::new())
    }
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

/// The commit lifecycle every output shares, sinks and the dead-letter output alike: rows
/// are written, made durable at each checkpoint's barrier ([`Self::pre_commit`]), made
/// visible once the checkpoint is complete ([`Self::commit`]), and a restart finishes what a
/// crash interrupted ([`Self::recover`]). Without checkpoints, [`Self::flush`] makes rows
/// durable.
pub trait Committable: Send {
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
}

impl<T: Committable + ?Sized> Committable for Box<T> {
    fn flush(&mut self) -> Result<bool, EngineError> {
        (**self).flush()
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        (**self).finish()
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        (**self).pre_commit(epoch)
    }
    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        (**self).commit(epoch)
    }
    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        (**self).recover(from)
    }
}

/// An output of result rows, with the commit lifecycle of [`Committable`].
pub trait Sink: Committable {
    /// Writes rows.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError>;
    /// Writes rows of the window or view named `output`: what the job calls. A sink fed by
    /// several outputs tells their rows apart by it; the others write them as they come.
    fn write_output(&mut self, output: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        let _ = output;
        self.write(batch)
    }
    /// Rows the output refused for good since the last call (a document its index cannot
    /// map, a message over the broker's size limit): they go to the dead-letter output with
    /// the output's error, and the other rows go on. Asked after every call.
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        Vec::new()
    }
}

/// The dead-letter output, with the commit lifecycle of [`Committable`].
pub trait DeadLetterSink: Committable {
    /// Writes records.
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError>;
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

/// A handle to stop a running job from another thread (e.g. on SIGINT).
#[derive(Clone)]
pub struct StopHandle(pub(crate) Arc<AtomicBool>);

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
