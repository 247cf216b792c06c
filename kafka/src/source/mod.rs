//! The Kafka source: a consumer in a group, one chunk stream per assigned partition.
//!
//! The reader owns an rdkafka `BaseConsumer` and polls it on the source's thread. Messages
//! are copied once into a per-partition buffer and handed to the workers as chunks of up to
//! [`CHUNK_BYTES`] (or whatever arrived within [`CHUNK_AGE`]). Partitions not assigned to this
//! process are idle: they do not hold the watermark back. Rebalances run inside `poll`:
//! partitions being revoked first get their committable offsets committed, assigned ones
//! start where `start_from` says (the first time this process sees them). Offsets are
//! committed when [`Progress`] says the rows they carry are in durable outputs.

mod assignment;
mod buffer;
pub mod caught_up;
pub(crate) mod close;
mod committed;
pub(crate) mod expired;
mod fetch_queue;
mod group;
mod incarnation;
mod lanes;
pub mod managed;
mod place;
mod reader;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use buffer::PushMessage;
pub(crate) use group::group_consumer_config;
use group::*;
use lanes::Lanes;
use place::*;
pub use reader::KafkaReader;
use reader::*;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use weir_engine::buffer::{MessageBuffer, CHUNK_BYTES, CHUNK_MESSAGES};
use weir_engine::clock::PartitionClock;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::progress::Progress;
use weir_engine::stats::{RunStats, SourceStats};
use weir_engine::{Chunk, ChunkData, EngineError};

use crate::{client_config, partition_counts, KafkaError};
use caught_up::{CatchUpWait, Wait};
use close::{close_consumer, is_cooperative, CLOSE_TIMEOUT};
use committed::CommittedWatch;
use fetch_queue::{FetchQueue, Next};

/// A chunk is handed over once its messages reach [`CHUNK_BYTES`] or [`CHUNK_MESSAGES`], or
/// when its oldest message waited this long.
const CHUNK_AGE: Duration = Duration::from_millis(100);
/// How long a poll round waits for a message when none is there.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Events of the consumer's queue (rebalances, errors, statistics, logs) served at most per
/// poll round, beyond the first.
const EVENTS_PER_ROUND: usize = 64;
/// How often the lanes of a repartition topic's partitions are checked for silence.
const LANE_IDLE_SCAN: Duration = Duration::from_secs(1);
/// Jumps of offsets a partition keeps unchecked at most (see `expired.rs`): checked when
/// there are this many, or after `JUMPS_CHECK_EVERY`, or in a quiet round.
const MAX_JUMPS_UNCHECKED: usize = 16;
/// How often a partition's jumps of offsets are checked at most.
const JUMPS_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often committable offsets are committed to the group.
const COMMIT_EVERY: Duration = Duration::from_secs(2);
/// Before giving partitions up: how long their committable offsets must stay put...
const SETTLE_QUIET: Duration = Duration::from_millis(600);
/// ...waiting at most this long.
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// Where a partition starts the first time this process is assigned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The group's committed offset; the earliest offset when there is none.
    Committed,
    /// The first offset still in the partition.
    Earliest,
    /// The end: only messages produced from now on.
    Latest,
    /// The first message whose Kafka timestamp is at or after this time (epoch ms).
    Time(i64),
}

/// What the Kafka source reads.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    pub start_from: StartFrom,
    /// librdkafka properties, passed as given (they override weir's defaults).
    pub properties: Vec<(String, String)>,
    /// A partition delivering nothing this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
    /// End once every partition of the topics reached the end offset it had when the
    /// reader connected (see [`caught_up`]): outside a pool, read by this process;
    /// in a pool, by this worker or (the group's committed offset says) another one.
    pub until_caught_up: bool,
    /// With `until_caught_up`: how long the reader, having read every partition it is
    /// assigned, waits for the others before failing ([`crate::NotCaughtUp`]).
    pub caught_up_timeout: Duration,
    /// With `until_caught_up`: where given partitions end instead (a replay's range), at most
    /// their end offset.
    pub end_offsets: HashMap<(String, i32), u64>,
    /// Where the reader stores the offset after the last message read of given partitions
    /// (a replay's progress bars).
    pub read_offsets: Option<Arc<ReadOffsets>>,
    /// Keep message headers (as a JSON object), for the `_headers` column.
    pub with_headers: bool,
    /// In a worker pool: claims assigned partitions and says where they start.
    pub pool: Option<PoolHook>,
    /// The topic is a worker pool's repartition topic (see [`crate::repartition`]): each
    /// partition is read as one lane per upstream partition.
    pub upstream: Option<Upstream>,
    /// In a worker pool that repartitions the topic: how many messages of the internal topic
    /// the pool's jobs may have left to checkpoint before the repartition stage pauses
    /// reading the topic (see [`crate::repartition`]).
    pub repartition_max_backlog: u64,
}

/// [`KafkaSourceConfig::repartition_max_backlog`] by default: about 100 s of input at
/// 100,000 events/s, so that a checkpoint interval of 10 s never holds a pool back.
pub const DEFAULT_REPARTITION_MAX_BACKLOG: u64 = 10_000_000;

/// The topic a repartition topic was written from: its messages carry the upstream topic,
/// partition and offset they were read at (a [`crate::repartition::Envelope`]); a message of
/// another upstream topic is skipped. The reader then keeps the upstream
/// partitions apart, as lanes: each lane has its own watermark (the upstream partition's
/// order, as if it was read directly), and a message at an upstream offset a lane already
/// passed (a repeat of the at-least-once repartition stage) is dropped. A partition stays
/// one chunk stream whose chunks each hold one lane's messages; its checkpoint record keeps
/// the upstream offset each lane expects next as a vector (see `lanes.rs`).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub topic: String,
    pub partitions: usize,
}

/// Claims partitions for a pool worker (see [`PoolHook::claim`]); fails with the pool's
/// error, whose kind says what it was.
pub type ClaimPartitions =
    Arc<dyn Fn(&[(String, i32)]) -> Result<Vec<Option<ClaimedStart>>, EngineError> + Send + Sync>;

/// Where a claimed partition continues, from the checkpoint holding its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedStart {
    /// The offset to read from.
    pub offset: u64,
    /// With [`Upstream`] lanes: per upstream partition, the upstream offset expected next.
    pub lanes: Vec<u64>,
    /// The id of the topic the offset belongs to (`crate::topic_ids`; 0: not known): a
    /// topic created again since starts where `auto.offset.reset` says instead.
    pub incarnation: u64,
}

/// Told of partitions a pool worker gave up, and whether their hand-over checkpoint was
/// committed (see [`PoolHook::released`]).
pub type ReleasePartitions = Arc<dyn Fn(&[(String, i32)], bool) + Send + Sync>;

/// Whether a `(topic, partition)` another worker read to its end is finished: its last
/// windows flushed by a committed final checkpoint (see `weir_engine::pool`).
pub type PartitionFinished =
    Arc<dyn Fn(&str, i32) -> Result<weir_engine::pool::Finished, EngineError> + Send + Sync>;

/// How a Kafka source takes part in a worker pool (see `weir_engine::pool`): the reader
/// outlives the runs of the worker, each of which owns the partitions assigned when it
/// started; an assignment or a revocation ends the run with a hand-over checkpoint first.
#[derive(Clone)]
pub struct PoolHook {
    /// Claims newly assigned `(topic, partition)`s; gives where each one's checkpoint left it
    /// (`None`: no state yet, it starts as `start_from` says).
    pub claim: ClaimPartitions,
    /// Called just before revoked partitions are released (after their hand-over, or
    /// without it): what this worker shows of them must stop being answered from now on.
    pub releasing: Arc<dyn Fn() + Send + Sync>,
    /// Called with revoked `(topic, partition)`s once their hand-over checkpoint is committed
    /// (`true`), or once they are given up without it (`false`: a timeout, backpressure).
    pub released: ReleasePartitions,
    /// With `until_caught_up`: a partition not assigned to this worker counts as read
    /// elsewhere once the group's committed offset reached its end *and* this says it is
    /// finished (its state may still hold windows that only a final flush emits). A
    /// repartition topic's partition never claimed is not (see `pending_internal`).
    pub finished: PartitionFinished,
    /// With `until_caught_up`: whether a partition this worker owns, of any of its sources,
    /// is not finished. A reader waiting for partitions read elsewhere first ends the run
    /// to flush them (the run ends only once every source's reader has ended; a reader
    /// with nothing of its own unfinished, waiting beside another source's finished reader,
    /// held that run open while a worker doing the same for the other source waited on it).
    pub owned_unfinished: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The longest wait for a hand-over checkpoint before partitions are given up anyway
    /// (fencing then keeps the slow run from committing for them).
    pub handover_timeout: Duration,
}

impl std::fmt::Debug for PoolHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHook")
            .field("handover_timeout", &self.handover_timeout)
            .finish_non_exhaustive()
    }
}

/// The offset after the last message read, per (topic, partition), for progress reports.
#[derive(Debug, Default)]
pub struct ReadOffsets(pub HashMap<(String, i32), Arc<std::sync::atomic::AtomicU64>>);

/// The partitions of a Kafka source's topics, read before the run.
pub struct KafkaPartitions {
    /// Partition count of each topic, in the config's order.
    pub counts: Vec<usize>,
}

impl KafkaPartitions {
    /// Asks the brokers how many partitions each topic has.
    pub fn discover(config: &KafkaSourceConfig) -> Result<Self, KafkaError> {
        let counts = partition_counts(
            &config.brokers,
            &config.properties,
            &config.topics,
            Duration::from_secs(30),
        )?;
        Ok(KafkaPartitions { counts })
    }

    /// The total partition count.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Every partition's key (`topic/partition`), topic by topic: their global order (a
    /// repartition topic's partition too: its lanes are inside it).
    pub fn keys(&self, config: &KafkaSourceConfig) -> Vec<String> {
        config
            .topics
            .iter()
            .zip(&self.counts)
            .flat_map(|(t, &count)| (0..count).map(move |p| format!("{t}/{p}")))
            .collect()
    }
}
