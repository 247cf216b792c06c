//! The pool side of the registry: how a source is read by a worker of a pool
//! (`weir run --worker`). A source that a pool can share opens a [`PooledReader`], which
//! outlives the worker's jobs and claims the partitions the worker is assigned (by a broker's
//! consumer group, or by the pool itself); `crate::pool` runs the jobs over it and never
//! needs to know which system it reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use weir_engine::job::{Decode, PartitionReader, ReaderContext};
use weir_engine::pool::PoolStore;
use weir_engine::{Chunk, EngineError};

/// How long a revoked partition waits for its hand-over checkpoint before it is released
/// anyway (fencing then stops the slow job from committing for it).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The partitions a worker owns now: key (`source/partition`) → its claim's generation.
pub type OwnedPartitions = Arc<Mutex<BTreeMap<String, u64>>>;

/// What opening a source's reader for a pool worker needs besides its configuration.
pub struct PoolSource<'a> {
    /// The source's index in the plan.
    pub index: usize,
    pub name: &'a str,
    /// The engine-wide id of its first partition.
    pub first_partition: usize,
    /// Read to the end present at the start, then stop.
    pub until_caught_up: bool,
    /// How long a bounded read waits for the end, when set.
    pub caught_up_timeout: Option<Duration>,
    /// The pool's checkpoint store, where partitions are claimed.
    pub pool: &'a Arc<PoolStore>,
    /// Where the reader records the partitions it claims and releases.
    pub owned: &'a OwnedPartitions,
    /// Called just before the reader releases partitions to other workers (in a rebalance):
    /// the worker stops answering SQL from the state that may still hold them.
    pub releasing: Arc<dyn Fn() + Send + Sync>,
}

/// What repartitioning a source through an internal topic needs.
pub struct Repartitioning<'a> {
    /// The source's name.
    pub source: &'a str,
    /// The internal topic its events are written to.
    pub topic: String,
    /// The fields they are keyed by there.
    pub keys: Vec<String>,
    /// Its decoder (the stage decodes to find the keys).
    pub decoder: Arc<dyn Decode>,
    /// Read to the end present at the start, then stop.
    pub until_caught_up: bool,
}

/// The internal topic a pool repartitions source `source` of pipeline `pipeline` through
/// (`PIPELINE-SOURCE-repartition`), shown by `weir validate`.
pub fn internal_topic(pipeline: &str, source: &str) -> String {
    weir_kafka::repartition::internal_topic(pipeline, source)
}

/// A repartition stage ready to start: what a source's connector returns when a pool
/// re-keys its events through an internal topic. The pool starts, stops and waits for it
/// without knowing what it reads or writes.
pub trait Repartition: Send {
    /// Starts the stage; it runs until stopped (or, reading until caught up, until its
    /// partitions are read to their end, or until it fails), then calls `on_end`.
    fn start(
        self: Box<Self>,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> Result<Box<dyn RunningRepartition>, EngineError>;
}

/// A running repartition stage (a thread of the worker).
pub trait RunningRepartition: Send {
    /// Whether the stage ended (caught up, or failed).
    fn is_finished(&self) -> bool;
    /// Asks the stage to stop (it sends what it read and commits first).
    fn stop(&self);
    /// Waits for the stage to end; its error, if it failed.
    fn join(self: Box<Self>) -> Result<(), EngineError>;
    /// What the stage shows of itself in `/metrics` and `weir_status`.
    fn stats(&self) -> Arc<weir_engine::stage_stats::StageStats>;
}

/// A pooled reader: it outlives the jobs of a worker, which each read the partitions the
/// worker owned when it started.
pub trait PooledReader: PartitionReader {
    /// Before a job: where its partitions continue, by partition key (the restored
    /// checkpoint's offsets); a reader that positions claimed partitions itself ignores it.
    fn start_job(&mut self, _resume: &dyn Fn(&str) -> Option<weir_engine::events::Resume>) {}
    /// Whether the job served last ended with a hand-over (a change of partitions).
    fn handed_over(&self) -> bool;
    /// Whether the job served last ended only to flush its partitions' last windows, the
    /// worker waiting for other partitions after it (reading until caught up).
    fn flushed_to_wait(&self) -> bool {
        false
    }
    /// Reading until caught up, after a job that read its partitions to their end: the
    /// position each was read to (by pool partition key, `source/partition key`), recorded
    /// with it as finished, for a source whose partitions have no committed offsets to
    /// compare with a later run's end (NATS, a Kafka repartition topic); empty for the
    /// others.
    fn finished_ends(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
    /// Stops reading and leaves the group.
    fn close(&mut self);
}

type SharedPooled = Arc<Mutex<dyn PooledReader>>;

/// A source's pooled reader, shared by the jobs of a worker.
pub struct PooledSource {
    reader: SharedPooled,
    /// Partition keys (`topic/partition`), in global order.
    pub keys: Vec<String>,
}

impl PooledSource {
    /// `reader`, reading the partitions `keys` (in global order).
    pub fn new(reader: impl PooledReader + 'static, keys: Vec<String>) -> Self {
        PooledSource {
            reader: Arc::new(Mutex::new(reader)),
            keys,
        }
    }

    /// The reader, for one job continuing its partitions where `resume` says.
    pub fn reader(
        &self,
        resume: &dyn Fn(&str) -> Option<weir_engine::events::Resume>,
    ) -> Box<dyn PartitionReader> {
        if let Ok(mut r) = self.reader.lock() {
            r.start_job(resume);
        }
        Box::new(SharedReader(self.reader.clone()))
    }

    /// The reader itself, between jobs.
    pub fn lock(&self) -> Result<MutexGuard<'_, dyn PooledReader + 'static>, EngineError> {
        lock_reader(&self.reader)
    }
}

fn lock_reader(
    reader: &Mutex<dyn PooledReader>,
) -> Result<MutexGuard<'_, dyn PooledReader + 'static>, EngineError> {
    reader
        .lock()
        .map_err(|_| EngineError::Internal("a pooled reader is poisoned".into()))
}

/// One job's handle on a pooled reader.
struct SharedReader(SharedPooled);

impl SharedReader {
    fn lock(&self) -> Result<MutexGuard<'_, dyn PooledReader + 'static>, EngineError> {
        lock_reader(&self.0)
    }
}

impl PartitionReader for SharedReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        self.lock()?.next_chunk(ctx)
    }
    fn finish(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        self.lock()?.finish(ctx)
    }
    fn backpressure(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        self.lock()?.backpressure(ctx)
    }
    fn backpressure_released(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        self.lock()?.backpressure_released(ctx)
    }
    fn unread(&mut self, chunk: Chunk) {
        if let Ok(mut r) = self.0.lock() {
            r.unread(chunk);
        }
    }
}
