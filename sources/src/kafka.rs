//! The Kafka source: a consumer in a group, one chunk stream per assigned partition.
//!
//! The reader owns an rdkafka `BaseConsumer` and polls it on the source's thread. Messages
//! are copied once into a per-partition buffer and handed to the workers as chunks of up to
//! [`CHUNK_BYTES`] (or whatever arrived within [`CHUNK_AGE`]). Partitions not assigned to this
//! process are idle: they do not hold the watermark back. Rebalances run inside `poll`:
//! partitions being revoked first get their committable offsets committed, assigned ones
//! start where `start_from` says (the first time this process sees them). Offsets are
//! committed when [`Progress`] says the rows they carry are in durable outputs.

mod close;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::progress::Progress;
use weir_engine::stats::{RunStats, SourceStats};
use weir_engine::{Chunk, ChunkData, EngineError, Messages, SharedBytes};
use weir_kafka::{client_config, partition_counts, KafkaError};

use crate::caught_up::{CatchUpWait, Wait};
use close::{close_consumer, is_cooperative, CLOSE_TIMEOUT};

/// A chunk is handed over once its messages reach this size...
const CHUNK_BYTES: usize = 1 << 20;
/// ...or this many messages...
const CHUNK_MESSAGES: usize = 16 * 1024;
/// ...or when its oldest message waited this long.
const CHUNK_AGE: Duration = Duration::from_millis(100);
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
    /// reader connected (see [`crate::caught_up`]): outside a pool, read by this process;
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
}

/// The topic a repartition topic was written from: its messages carry the upstream partition
/// and offset they were read at ([`crate::repartition::UPSTREAM_PARTITION`] and
/// [`crate::repartition::UPSTREAM_OFFSET`] headers). The reader then keeps the upstream
/// partitions apart, as lanes: each lane has its own watermark (the upstream partition's
/// order, as if it was read directly), and a message at an upstream offset a lane already
/// passed (a repeat of the at-least-once repartition stage) is dropped. Lanes appear in
/// checkpoints as `topic/partition/upstream partition`; their position is the upstream
/// offset expected next.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub topic: String,
    pub partitions: usize,
}

/// Claims partitions for a pool worker (see [`PoolHook::claim`]).
pub type ClaimPartitions =
    Arc<dyn Fn(&[(String, i32)]) -> Result<Vec<Option<ClaimedStart>>, String> + Send + Sync>;

/// Where a claimed partition continues, from the checkpoint holding its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedStart {
    /// The offset to read from.
    pub offset: u64,
    /// With [`Upstream`] lanes: per upstream partition, the upstream offset expected next.
    pub lanes: Vec<u64>,
}

/// Told of partitions a pool worker gave up, and whether their hand-over checkpoint was
/// committed (see [`PoolHook::released`]).
pub type ReleasePartitions = Arc<dyn Fn(&[(String, i32)], bool) + Send + Sync>;

/// How a Kafka source takes part in a worker pool (see `weir_engine::pool`): the reader
/// outlives the runs of the worker, each of which owns the partitions assigned when it
/// started; an assignment or a revocation ends the run with a hand-over checkpoint first.
#[derive(Clone)]
pub struct PoolHook {
    /// Claims newly assigned `(topic, partition)`s; gives where each one's checkpoint left it
    /// (`None`: no state yet, it starts as `start_from` says).
    pub claim: ClaimPartitions,
    /// Called with revoked `(topic, partition)`s once their hand-over checkpoint is committed
    /// (`true`), or once they are given up without it (`false`: a timeout, backpressure).
    pub released: ReleasePartitions,
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

/// Ends the run of `ctx` with a hand-over checkpoint and waits until its outputs committed it
/// (or the run failed), at most `timeout`; returns whether they committed it.
fn hand_over(ctx: &ReaderContext, timeout: Duration) -> bool {
    let started = Instant::now();
    ctx.request_handover();
    while ctx.outputs_finished() == Some(false) {
        if started.elapsed() >= timeout {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "kafka: the hand-over checkpoint did not complete in time; giving the partitions up anyway"
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ctx.outputs_finished() == Some(true)
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

    /// Every partition's key (`topic/partition`), topic by topic: their global order. A
    /// repartition topic's partitions have a key per lane (`topic/partition/upstream`).
    pub fn keys(&self, config: &KafkaSourceConfig) -> Vec<String> {
        let lanes = config.upstream.as_ref().map(|u| u.partitions);
        config
            .topics
            .iter()
            .zip(&self.counts)
            .flat_map(|(t, &count)| {
                (0..count).flat_map(move |p| match lanes {
                    None => vec![format!("{t}/{p}")],
                    Some(n) => (0..n).map(|u| format!("{t}/{p}/{u}")).collect(),
                })
            })
            .collect()
    }
}

enum GroupEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: handles rebalances inside `poll`.
struct GroupContext {
    start_from: StartFrom,
    /// Offsets of a checkpoint, which override `start_from` for the partitions it holds.
    resume: HashMap<(String, i32), u64>,
    /// Where newly assigned partitions were set to start (absent: the committed offset).
    starts: Mutex<HashMap<(String, i32), Offset>>,
    /// Claimed partitions of a repartition topic: the upstream offset each lane expects.
    lane_starts: Mutex<HashMap<(String, i32), Vec<u64>>>,
    /// (topic, partition) → global partition id.
    ids: HashMap<(String, i32), usize>,
    /// Partitions assigned before in this process (they resume from committed offsets).
    seen: Mutex<HashSet<(String, i32)>>,
    /// Offsets committed last, per global partition.
    committed: Mutex<HashMap<usize, u64>>,
    events: Mutex<Vec<GroupEvent>>,
    has_events: AtomicBool,
    /// The source's name and the run's gauges, for consumer lag.
    source: Arc<str>,
    pool: Option<PoolHook>,
    /// The run served now (a pooled reader serves several): its progress, gauges and
    /// hand-over flags.
    run: Mutex<ReaderContext>,
    /// Set while the reader waits for room in the workers' queues: it then holds the job's
    /// dispatcher, so a rebalance cannot wait for a hand-over checkpoint (fencing covers it).
    in_backpressure: AtomicBool,
    /// A failure inside a rebalance callback, raised by the next read.
    failed: Mutex<Option<String>>,
    /// The group's assignment strategy is cooperative (incremental assign and unassign).
    cooperative: bool,
    /// The partitions librdkafka assigned this consumer now (to leave the group cleanly).
    held: Mutex<HashSet<(String, i32)>>,
    /// Where this process stopped reading each partition (the offset after the last
    /// message handed over): a partition assigned again (after a lost session) continues
    /// there, not at the group's older committed offset (which would count events twice).
    positions: Mutex<HashMap<(String, i32), u64>>,
}

impl GroupContext {
    fn run(&self) -> ReaderContext {
        match self.run.lock() {
            Ok(r) => r.clone(),
            Err(r) => r.into_inner().clone(),
        }
    }

    fn progress(&self) -> Arc<Progress> {
        self.run().progress
    }

    /// In a pool: ends the current run with a hand-over checkpoint, waiting for its commit
    /// unless the reader holds the job's dispatcher; returns whether it was committed.
    fn end_run(&self) -> bool {
        let Some(pool) = &self.pool else {
            return false;
        };
        let run = self.run();
        if self.in_backpressure.load(Ordering::SeqCst) {
            run.request_handover();
            false
        } else {
            hand_over(&run, pool.handover_timeout)
        }
    }

    /// Records an assignment: added to the held partitions (cooperative) or replacing them.
    fn hold(&self, assigned: &[(String, i32)], cooperative: bool) {
        if let Ok(mut held) = self.held.lock() {
            if !cooperative {
                held.clear();
            }
            held.extend(assigned.iter().cloned());
        }
    }

    /// Records a revocation: removed from the held partitions (cooperative), or all of them.
    fn release_held(&self, revoked: &[(String, i32)], cooperative: bool) {
        if let Ok(mut held) = self.held.lock() {
            if cooperative {
                for r in revoked {
                    held.remove(r);
                }
            } else {
                held.clear();
            }
        }
    }

    /// Whether librdkafka still assigns this consumer partitions.
    fn holds_partitions(&self) -> bool {
        self.held.lock().map_or(false, |h| !h.is_empty())
    }

    fn fail(&self, message: String) {
        tracing::error!(error = %message, "kafka: rebalance failed");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(message);
        }
    }

    /// In a pool: claims the assigned partitions and sets where they start.
    fn claim(&self, pool: &PoolHook, tpl: &mut TopicPartitionList) -> Vec<(String, i32)> {
        let list: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut fresh = Vec::new();
        match (pool.claim)(&list) {
            Ok(offsets) => {
                for ((topic, p), o) in list.iter().zip(offsets) {
                    match o {
                        Some(ClaimedStart { offset, lanes }) => {
                            let o = Offset::Offset(offset as i64);
                            let _ = tpl.set_partition_offset(topic, *p, o);
                            if let Ok(mut starts) = self.starts.lock() {
                                starts.insert((topic.clone(), *p), o);
                            }
                            if let Ok(mut l) = self.lane_starts.lock() {
                                l.insert((topic.clone(), *p), lanes);
                            }
                        }
                        None => fresh.push((topic.clone(), *p)),
                    }
                }
            }
            Err(e) => self.fail(format!("cannot claim partitions {list:?}: {e}")),
        }
        fresh
    }

    fn push(&self, e: GroupEvent) {
        if let Ok(mut ev) = self.events.lock() {
            ev.push(e);
            self.has_events.store(true, Ordering::Release);
        }
    }

    /// The offsets of `partitions` that are committable and not committed yet.
    fn committable(&self, partitions: impl Iterator<Item = (String, i32)>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let Ok(mut committed) = self.committed.lock() else {
            return tpl;
        };
        for (topic, p) in partitions {
            let Some(&id) = self.ids.get(&(topic.clone(), p)) else {
                continue;
            };
            let Some(offset) = self.progress().committable(id) else {
                continue;
            };
            if committed.get(&id) != Some(&offset)
                && tpl
                    .add_partition_offset(&topic, p, Offset::Offset(offset as i64))
                    .is_ok()
            {
                committed.insert(id, offset);
            }
        }
        tpl
    }

    /// Gives the chunks already handed to the workers a moment to reach durable outputs, so
    /// that the next owner of `partitions` does not read again rows whose windows were just
    /// written: waits until their committable offsets stop moving (at most [`SETTLE_MAX`]).
    fn settle(&self, partitions: &[(String, i32)]) {
        let ids: Vec<usize> = partitions
            .iter()
            .filter_map(|p| self.ids.get(p).copied())
            .collect();
        let progress = self.progress();
        let offsets =
            || -> Vec<Option<u64>> { ids.iter().map(|&id| progress.committable(id)).collect() };
        let started = Instant::now();
        let mut last = offsets();
        let mut stable_since = Instant::now();
        while started.elapsed() < SETTLE_MAX && stable_since.elapsed() < SETTLE_QUIET {
            std::thread::sleep(Duration::from_millis(50));
            let now = offsets();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
    }

    /// Sets where newly seen partitions start, per `start_from`.
    fn set_start_offsets(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let mut fresh = Vec::new();
        let mut again = Vec::new();
        for e in tpl.elements() {
            let tp = (e.topic().to_string(), e.partition());
            if seen.insert(tp.clone()) {
                fresh.push(tp);
            } else {
                again.push(tp);
            }
        }
        let Ok(mut starts) = self.starts.lock() else {
            return;
        };
        let mut set = |tpl: &mut TopicPartitionList, topic: &str, p: i32, o: Offset| {
            let _ = tpl.set_partition_offset(topic, p, o);
            starts.insert((topic.to_string(), p), o);
        };
        // partitions this process read before continue where it stopped
        if let Ok(positions) = self.positions.lock() {
            for (topic, p) in again {
                if let Some(&o) = positions.get(&(topic.clone(), p)) {
                    tracing::info!(
                        topic,
                        partition = p,
                        offset = o,
                        "kafka: partition assigned again; continuing where this process stopped"
                    );
                    set(tpl, &topic, p, Offset::Offset(o as i64));
                }
            }
        }
        // partitions a checkpoint holds continue where it left them
        fresh.retain(|(topic, p)| match self.resume.get(&(topic.clone(), *p)) {
            Some(&o) => {
                set(tpl, topic, *p, Offset::Offset(o as i64));
                false
            }
            None => true,
        });
        let offset = match self.start_from {
            StartFrom::Committed => return,
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Latest => Offset::End,
            StartFrom::Time(t) => {
                let mut query = TopicPartitionList::new();
                for (topic, p) in &fresh {
                    let _ = query.add_partition_offset(topic, *p, Offset::Offset(t));
                }
                match consumer.offsets_for_times(query, Duration::from_secs(30)) {
                    Ok(found) => {
                        for e in found.elements() {
                            let o = match e.offset() {
                                Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                                _ => Offset::End,
                            };
                            set(tpl, e.topic(), e.partition(), o);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "offsets for start_from time failed; starting from committed offsets")
                    }
                }
                return;
            }
        };
        for (topic, p) in fresh {
            set(tpl, &topic, p, offset);
        }
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag of each
    /// partition this process fetches, as the high watermark minus the next offset to read.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let stats = self.run().stats;
        let Ok(mut lag) = stats.consumer_lag.lock() else {
            return;
        };
        for (topic, t) in &statistics.topics {
            for (p, s) in &t.partitions {
                let key = (self.source.to_string(), format!("{topic}/{p}"));
                if *p >= 0 && s.fetch_state == "active" && s.hi_offset >= 0 && s.app_offset >= 0 {
                    lag.insert(key, (s.hi_offset - s.app_offset).max(0));
                } else if *p >= 0 && s.fetch_state == "none" {
                    lag.remove(&key);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let list = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        // from the configuration, not `rebalance_protocol()`: librdkafka answers that with a
        // request to its main thread, which can hang forever (or answer "none") once the
        // consumer is closing (confluentinc/librdkafka#4041)
        let cooperative = self.cooperative;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // in a pool, an empty assignment (a cooperative rebalance that moved other
                // partitions) changes nothing
                if let Some(pool) = self.pool.as_ref().filter(|_| tpl.count() > 0) {
                    // the run ends first: the next one restores the new partitions' state
                    self.end_run();
                    let fresh = self.claim(pool, tpl);
                    // partitions without state start as `start_from` says
                    let mut rest = TopicPartitionList::new();
                    for (t, p) in &fresh {
                        rest.add_partition(t, *p);
                    }
                    if let Ok(mut seen) = self.seen.lock() {
                        for (t, p) in &fresh {
                            seen.remove(&(t.clone(), *p));
                        }
                    }
                    self.set_start_offsets(consumer, &mut rest);
                    for e in rest.elements() {
                        let _ = tpl.set_partition_offset(e.topic(), e.partition(), e.offset());
                    }
                } else if self.pool.is_none() {
                    self.set_start_offsets(consumer, tpl);
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "kafka: assigning partitions failed");
                }
                tracing::info!(partitions = ?list(tpl), "kafka: partitions assigned");
                self.hold(&list(tpl), cooperative);
                self.push(GroupEvent::Assigned(list(tpl)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = list(tpl);
                let mut handed_over = false;
                if self.pool.is_some() {
                    // the run checkpoints and commits its state before the partitions go
                    if !revoked.is_empty() {
                        handed_over = self.end_run();
                    }
                } else {
                    self.settle(&revoked);
                    let offsets = self.committable(revoked.iter().cloned());
                    if offsets.count() > 0 {
                        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                            tracing::warn!(error = %e, "kafka: commit before giving partitions up failed");
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "kafka: releasing partitions failed");
                }
                if let Some(pool) = &self.pool {
                    (pool.released)(&revoked, handed_over);
                }
                self.release_held(&revoked, cooperative);
                tracing::info!(partitions = ?revoked, "kafka: partitions revoked");
                self.push(GroupEvent::Revoked(revoked));
            }
            other => {
                tracing::error!(error = ?other, "kafka: rebalance failed");
                let _ = consumer.unassign();
                self.release_held(&[], false);
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}
}

/// Messages of one partition being gathered into a chunk.
#[derive(Default)]
pub(crate) struct MessageBuffer {
    bytes: Vec<u8>,
    messages: Messages,
    since: Option<Instant>,
}

impl MessageBuffer {
    /// Appends a message, recorded at `offset`.
    pub(crate) fn push<M: Message>(&mut self, m: &M, with_headers: bool, offset: u64) {
        let headers = m
            .headers()
            .into_iter()
            .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
        self.push_parts(
            (m.payload().unwrap_or_default(), m.key()),
            m.timestamp().to_millis(),
            headers,
            with_headers,
            offset,
        );
    }

    /// Appends a message given by its parts (a repartition topic's messages are unwrapped
    /// first), recorded at `offset`. Headers are kept when `with_headers`, else only trace
    /// ids (dead letters).
    pub(crate) fn push_parts<'h>(
        &mut self,
        (payload, key): (&[u8], Option<&[u8]>),
        timestamp: Option<i64>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
        with_headers: bool,
        offset: u64,
    ) {
        let pos = |b: &Vec<u8>| b.len() as u32;
        self.since.get_or_insert_with(Instant::now);
        let start = pos(&self.bytes);
        self.bytes.extend_from_slice(payload);
        self.messages.payloads.push((start, pos(&self.bytes)));
        self.messages.offsets.push(offset);
        self.messages.keys.push(key.map(|k| {
            let s = pos(&self.bytes);
            self.bytes.extend_from_slice(k);
            (s, pos(&self.bytes))
        }));
        self.messages.timestamps.push(timestamp);
        let first = self.messages.header_fields.len() as u32;
        for (name, value) in headers {
            if with_headers || weir_engine::trace::is_trace_header(name) {
                let ks = pos(&self.bytes);
                self.bytes.extend_from_slice(name.as_bytes());
                let name = (ks, pos(&self.bytes));
                let value = value.map(|v| {
                    let vs = pos(&self.bytes);
                    self.bytes.extend_from_slice(v);
                    (vs, pos(&self.bytes))
                });
                self.messages.header_fields.push((name, value));
            }
        }
        let last = self.messages.header_fields.len() as u32;
        self.messages.headers.push((first, last));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.messages.offsets.is_empty()
    }

    fn is_full(&self) -> bool {
        self.bytes.len() >= CHUNK_BYTES || self.messages.offsets.len() >= CHUNK_MESSAGES
    }

    pub(crate) fn take(&mut self) -> Messages {
        self.since = None;
        let mut m = std::mem::take(&mut self.messages);
        m.bytes = SharedBytes::from(std::mem::take(&mut self.bytes));
        m
    }
}

/// One Kafka partition this reader may be assigned.
struct PartitionState {
    topic: Arc<str>,
    number: i32,
    /// What the job sees of it: the partition itself, or one lane per upstream partition of
    /// a repartition topic (see [`Upstream`]).
    lanes: Vec<Lane>,
    assigned: bool,
    /// The offset after the last message read (repeats included).
    read_next: Option<u64>,
    /// The offset after the last message handed over.
    next_offset: Option<u64>,
    /// With `until_caught_up`: the end offset seen at assignment.
    end_at: Option<u64>,
    ended: bool,
    /// With `until_caught_up`: the end offset the partition had when the reader connected.
    target: Option<u64>,
    /// In a pool: the group's committed offset reached `target` (another worker read it).
    read_elsewhere: bool,
    /// Where to store the offset after the last message read (progress reports).
    read_offset: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// A chunk stream of a partition: the partition, or one upstream partition's messages in it.
struct Lane {
    info: Arc<PartitionInfo>,
    seq: u64,
    buffer: MessageBuffer,
    last_message: Instant,
    /// In a repartition topic: the upstream offset expected next; a message below it
    /// repeats one already read.
    expect: Option<u64>,
}

impl Lane {
    fn new(info: PartitionInfo) -> Self {
        Lane {
            info: Arc::new(info),
            seq: 0,
            buffer: MessageBuffer::default(),
            last_message: Instant::now(),
            expect: None,
        }
    }
}

/// Reads a Kafka source for a job.
pub struct KafkaReader {
    source: usize,
    name: Arc<str>,
    config: KafkaSourceConfig,
    /// Index in `partitions` of each topic's first partition.
    topic_base: Vec<usize>,
    /// Lanes per partition (1, or the upstream partition count of a repartition topic).
    lanes_per: usize,
    /// First global partition id of the source.
    first_id: usize,
    partitions: Vec<PartitionState>,
    consumer: Option<BaseConsumer<GroupContext>>,
    ready: VecDeque<Chunk>,
    last_commit: Instant,
    /// Fetching is paused for backpressure.
    paused: bool,
    /// With `until_caught_up`: the wait for partitions this process is not assigned.
    wait: CatchUpWait,
    /// In a pool: when the group's committed offsets were last read.
    checked_elsewhere: Option<Instant>,
    /// When the group last assigned or revoked partitions (or the reader joined it).
    group_moved: Instant,
    /// The group assigned this reader partitions (maybe none) at least once.
    joined: bool,
    /// (topic, partition) → offset to continue from, from a checkpoint.
    resume: HashMap<(String, i32), u64>,
    /// In a pool: the hand-over flag of the run served now (a new one means a new run).
    run: Option<Arc<AtomicBool>>,
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.close();
    }
}

impl KafkaReader {
    /// A reader of source `source` (named `name`) whose partitions are numbered globally
    /// from `first_partition`, topic by topic.
    pub fn new(
        source: usize,
        name: &str,
        first_partition: usize,
        config: KafkaSourceConfig,
        partitions: &KafkaPartitions,
    ) -> Self {
        let name: Arc<str> = name.into();
        let lanes_per = config.upstream.as_ref().map_or(1, |u| u.partitions.max(1));
        let upstream_topic: Option<Arc<str>> =
            config.upstream.as_ref().map(|u| u.topic.as_str().into());
        let mut topic_base = Vec::new();
        let mut states: Vec<PartitionState> = Vec::new();
        for (t, &count) in partitions.counts.iter().enumerate() {
            topic_base.push(states.len());
            let topic: Arc<str> = config.topics[t].as_str().into();
            for p in 0..count {
                let first = first_partition + states.len() * lanes_per;
                let lanes = match &upstream_topic {
                    // a lane is the upstream partition: dead letters and `_partition` name it
                    Some(up) => (0..lanes_per)
                        .map(|u| {
                            Lane::new(PartitionInfo {
                                source: name.clone(),
                                id: first + u,
                                state_id: first,
                                number: u as u32,
                                topic: Some(up.clone()),
                                file: None,
                            })
                        })
                        .collect(),
                    None => vec![Lane::new(PartitionInfo {
                        source: name.clone(),
                        id: first,
                        state_id: first,
                        number: p as u32,
                        topic: Some(topic.clone()),
                        file: None,
                    })],
                };
                states.push(PartitionState {
                    topic: topic.clone(),
                    number: p as i32,
                    lanes,
                    assigned: false,
                    read_next: None,
                    next_offset: None,
                    end_at: None,
                    ended: false,
                    target: None,
                    read_elsewhere: false,
                    read_offset: config
                        .read_offsets
                        .as_ref()
                        .and_then(|r| r.0.get(&(topic.to_string(), p as i32)).cloned()),
                });
            }
        }
        let wait = CatchUpWait::new(config.caught_up_timeout);
        KafkaReader {
            source,
            name,
            config,
            topic_base,
            lanes_per,
            first_id: first_partition,
            partitions: states,
            consumer: None,
            ready: VecDeque::new(),
            last_commit: Instant::now(),
            paused: false,
            wait,
            checked_elsewhere: None,
            group_moved: Instant::now(),
            joined: false,
            resume: HashMap::new(),
            run: None,
        }
    }

    /// In a pool: starts serving the run of `ctx` (a reader outlives the runs of its worker).
    /// Chunks not handed out yet are numbered again from 0 per partition, as the new run's
    /// clocks expect, and the partitions' idleness is set in its clocks.
    fn join_run(&mut self, ctx: &ReaderContext) {
        if self
            .run
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &ctx.handover))
        {
            return;
        }
        self.run = Some(ctx.handover.clone());
        if let Some(consumer) = &self.consumer {
            if let Ok(mut run) = consumer.context().run.lock() {
                *run = ctx.clone();
            }
        }
        for lane in self.partitions.iter_mut().flat_map(|s| s.lanes.iter_mut()) {
            lane.seq = 0;
        }
        for chunk in self.ready.iter_mut() {
            let i = chunk.partition.id - self.first_id;
            let lane = &mut self.partitions[i / self.lanes_per].lanes[i % self.lanes_per];
            chunk.seq = lane.seq;
            lane.seq += 1;
        }
        // A partition that ended (read to its end offset) in an earlier run ends this one's
        // too: its restored clock is not at the end any more.
        let in_lanes = self.config.upstream.is_some();
        for s in self.partitions.iter_mut() {
            let (true, true, Some(next)) = (s.assigned, s.ended, s.next_offset) else {
                continue;
            };
            for lane in s.lanes.iter_mut() {
                let pending_end = self
                    .ready
                    .iter()
                    .any(|c| c.partition.id == lane.info.id && matches!(c.data, ChunkData::End));
                if !pending_end {
                    self.ready
                        .push_back(lane_end(self.source, lane, next, in_lanes));
                }
            }
        }
        for s in &self.partitions {
            for lane in &s.lanes {
                ctx.clocks.partition(lane.info.id).set_idle(!s.assigned);
                if s.assigned {
                    ctx.progress.track(lane.info.id);
                }
            }
        }
        self.report_assigned(ctx);
    }

    /// Drops what was read of a partition given up in a pool: its next owner reads it again
    /// from the hand-over checkpoint.
    fn forget(&mut self, l: usize) {
        let first = self.first_id + l * self.lanes_per;
        let ids = first..first + self.lanes_per;
        self.ready.retain(|c| !ids.contains(&c.partition.id));
        let s = &mut self.partitions[l];
        for lane in s.lanes.iter_mut() {
            lane.buffer = MessageBuffer::default();
            lane.expect = None;
        }
        s.read_next = None;
        s.next_offset = None;
        s.end_at = None;
        s.ended = false;
    }

    /// In a pool: whether the run served last ended with a hand-over (a rebalance).
    pub fn handed_over(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.load(Ordering::SeqCst))
    }

    /// Leaves the consumer group: gives its partitions back while the consumer still serves
    /// rebalances normally, then closes the consumer, waiting at most [`CLOSE_TIMEOUT`]
    /// (a broker that does not answer cannot hold the worker: the close then finishes in the
    /// background). Also done when the reader is dropped.
    pub fn close(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            close_consumer(consumer, &self.name, CLOSE_TIMEOUT);
        }
    }

    /// Continues the partitions a checkpoint holds from its offsets, whatever `start_from`
    /// and the group's committed offsets say. `resume(topic, partition)` gives the offset.
    pub fn with_resume(mut self, resume: impl Fn(&str, i32) -> Option<u64>) -> Self {
        for s in &self.partitions {
            if let Some(o) = resume(&s.topic, s.number) {
                self.resume.insert((s.topic.to_string(), s.number), o);
            }
        }
        self
    }

    fn local(&self, topic: &str, partition: i32) -> Option<usize> {
        let t = self.config.topics.iter().position(|x| x == topic)?;
        let local = self.topic_base[t] + usize::try_from(partition).ok()?;
        (local < self.partitions.len()).then_some(local)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> EngineError {
        EngineError::Source {
            source_name: self.name.to_string(),
            message: format!("kafka ({}): {what}: {e}", self.config.brokers),
        }
    }

    fn connect(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        let mut ids = HashMap::new();
        for s in &self.partitions {
            ids.insert((s.topic.to_string(), s.number), s.lanes[0].info.id);
        }
        let context = GroupContext {
            start_from: self.config.start_from,
            resume: self.resume.clone(),
            starts: Mutex::new(HashMap::new()),
            lane_starts: Mutex::new(HashMap::new()),
            ids,
            seen: Mutex::new(HashSet::new()),
            committed: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            has_events: AtomicBool::new(false),
            source: self.name.clone(),
            positions: Mutex::new(HashMap::new()),
            pool: self.config.pool.clone(),
            run: Mutex::new(ctx.clone()),
            in_backpressure: AtomicBool::new(false),
            failed: Mutex::new(None),
            cooperative: false,
            held: Mutex::new(HashSet::new()),
        };
        let cfg = group_consumer_config(
            &self.config,
            &self.config.group_id,
            self.config.pool.is_some(),
        );
        let context = GroupContext {
            cooperative: is_cooperative(&cfg),
            ..context
        };
        let consumer: BaseConsumer<GroupContext> = cfg
            .create_with_context(context)
            .map_err(|e| self.err("cannot create a consumer", e))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.err("cannot subscribe", e))?;
        // Every partition is idle until it is assigned to this process, unless this process
        // reads every partition (below).
        let idle = !self.reads_every_partition();
        for lane in self.partitions.iter().flat_map(|s| &s.lanes) {
            ctx.clocks.partition(lane.info.id).set_idle(idle);
        }
        if let Some(src) = ctx.stats.sources.get(self.source) {
            src.assigned.store(-1, Ordering::Relaxed);
        }
        self.consumer = Some(consumer);
        if self.config.until_caught_up {
            self.read_targets(ctx)?;
        }
        Ok(())
    }

    /// Outside a pool, a run reading until caught up reads every partition of the topics
    /// itself: one not assigned yet (another member holds it until its session times out)
    /// or taken away for a moment (a rebalance) holds the watermark at its own, so that the
    /// windows its rows belong to are not emitted without them (split, or its rows late).
    fn reads_every_partition(&self) -> bool {
        self.config.until_caught_up && self.config.pool.is_none()
    }

    /// With `until_caught_up`: reads the end offset of every partition of the topics, where
    /// the run reads it to. Outside a pool, a partition known to start at (or past) it (a
    /// checkpoint's offset, the group's committed one) ends at once, assigned or not: its
    /// state is this process's either way.
    fn read_targets(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        for l in 0..self.partitions.len() {
            let (topic, p) = (
                self.partitions[l].topic.to_string(),
                self.partitions[l].number,
            );
            let (low, high) = self.end_offsets(&topic, p)?;
            let high = if high <= low { 0 } else { high as u64 };
            let end = match self.config.end_offsets.get(&(topic, p)) {
                Some(&e) => e.min(high),
                None => high,
            };
            self.partitions[l].target = Some(end);
        }
        if self.config.pool.is_some() {
            return Ok(());
        }
        let committed = match self.config.start_from {
            StartFrom::Committed => self.committed_offsets(|_| true),
            _ => HashMap::new(),
        };
        for l in 0..self.partitions.len() {
            let s = &self.partitions[l];
            let key = (s.topic.to_string(), s.number);
            let target = s.target.unwrap_or(0);
            let start = match (self.resume.get(&key), self.config.start_from) {
                (Some(&o), _) => Some(o),
                (None, StartFrom::Latest) => Some(target),
                (None, StartFrom::Committed) => committed.get(&key).copied(),
                _ => None,
            };
            if target == 0 || start.is_some_and(|o| o >= target) {
                tracing::debug!(source = %self.name, topic = %key.0, partition = key.1, "kafka: the partition starts at its end offset");
                self.end_partition(l, start.unwrap_or(0), ctx);
            }
        }
        Ok(())
    }

    /// The group's committed offsets of the partitions `which` selects (none on failure: the
    /// caller reads them again later).
    fn committed_offsets(
        &self,
        which: impl Fn(&PartitionState) -> bool,
    ) -> HashMap<(String, i32), u64> {
        let mut out = HashMap::new();
        let Some(consumer) = &self.consumer else {
            return out;
        };
        let mut tpl = TopicPartitionList::new();
        for s in self.partitions.iter().filter(|s| which(s)) {
            tpl.add_partition(&s.topic, s.number);
        }
        if tpl.count() == 0 {
            return out;
        }
        match consumer.committed_offsets(tpl, Duration::from_secs(30)) {
            Ok(c) => {
                for e in c.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        if o >= 0 {
                            out.insert((e.topic().to_string(), e.partition()), o as u64);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the group's committed offsets; will try again")
            }
        }
        out
    }

    /// Publishes how many partitions this process reads (for `/ready`).
    fn report_assigned(&self, ctx: &ReaderContext) {
        if let Some(src) = ctx.stats.sources.get(self.source) {
            let n = self.partitions.iter().filter(|s| s.assigned).count();
            src.assigned.store(n as i64, Ordering::Relaxed);
        }
    }

    fn handle_group_events(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let c = consumer.context();
        if !c.has_events.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let events = c
            .events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        self.group_moved = Instant::now();
        for e in events {
            match e {
                GroupEvent::Assigned(list) => {
                    self.joined = true;
                    for (topic, p) in list {
                        let Some(l) = self.local(&topic, p) else {
                            continue;
                        };
                        if self.partitions[l].ended && self.config.pool.is_none() {
                            // read to its end before the group assigned it (it started there)
                            self.partitions[l].assigned = true;
                            if let Some(consumer) = &self.consumer {
                                let mut tpl = TopicPartitionList::new();
                                tpl.add_partition(&topic, p);
                                let _ = consumer.pause(&tpl);
                            }
                            continue;
                        }
                        let (end_at, start) = if self.config.until_caught_up {
                            let (low, high) = self.end_offsets(&topic, p)?;
                            let high = if high <= low { 0 } else { high as u64 };
                            let end = match self.config.end_offsets.get(&(topic.clone(), p)) {
                                Some(&e) => e.min(high),
                                None => high,
                            };
                            // the end it had when the run started
                            let end = self.partitions[l].target.map_or(end, |t| t.min(end));
                            (Some(end), self.start_offset(&topic, p, high))
                        } else {
                            (None, None)
                        };
                        let expected = self.consumer.as_ref().and_then(|c| {
                            c.context()
                                .lane_starts
                                .lock()
                                .ok()?
                                .remove(&(topic.clone(), p))
                        });
                        let s = &mut self.partitions[l];
                        s.assigned = true;
                        s.read_elsewhere = false;
                        s.end_at = end_at;
                        for (u, lane) in s.lanes.iter_mut().enumerate() {
                            lane.last_message = Instant::now();
                            if let Some(e) = &expected {
                                lane.expect = e.get(u).copied();
                            }
                            ctx.progress.track(lane.info.id);
                            ctx.progress.restart(lane.info.id, lane.seq);
                            ctx.clocks.partition(lane.info.id).set_idle(false);
                        }
                        // A partition starting at (or past) its end offset: no message will
                        // come to say it is caught up.
                        if let Some(end) = end_at {
                            if end == 0 || start.is_some_and(|from| from >= end) {
                                self.end_partition(l, start.unwrap_or(0), ctx);
                            }
                        }
                    }
                }
                GroupEvent::Revoked(list) => {
                    for (topic, p) in list {
                        let Some(l) = self.local(&topic, p) else {
                            continue;
                        };
                        if self.config.pool.is_some() {
                            self.forget(l);
                        } else {
                            self.hand_over(l);
                        }
                        let idle = !self.reads_every_partition();
                        let s = &mut self.partitions[l];
                        s.assigned = false;
                        for lane in &s.lanes {
                            ctx.clocks.partition(lane.info.id).set_idle(idle);
                        }
                    }
                }
            }
            self.report_assigned(ctx);
        }
        Ok(())
    }

    /// The low and high watermarks of a partition; a busy broker gets three tries of 30 s.
    fn end_offsets(&self, topic: &str, p: i32) -> Result<(i64, i64), EngineError> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Err(self.err("cannot read partition end offsets", "not connected"));
        };
        let mut tries = 0;
        loop {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(30)) {
                Ok(w) => return Ok(w),
                Err(e) if tries < 2 => {
                    tries += 1;
                    tracing::warn!(source = %self.name, topic, partition = p, error = %e, "kafka: reading the partition's end offsets failed; trying again");
                }
                Err(e) => return Err(self.err("cannot read partition end offsets", e)),
            }
        }
    }

    /// Where a newly assigned partition starts reading, when it is known to be an offset: the
    /// one the rebalance set (a checkpoint's, `start_from`), else the group's committed one.
    /// `None` for the beginning or when it cannot be told (messages will come if the
    /// partition has any).
    fn start_offset(&self, topic: &str, p: i32, high: u64) -> Option<u64> {
        let consumer = self.consumer.as_ref()?;
        let chosen = consumer
            .context()
            .starts
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&(topic.to_string(), p)));
        match chosen {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            Some(Offset::End) => Some(high),
            Some(_) => None,
            None => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, p);
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(30))
                    .ok()?;
                match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
                    _ => None,
                }
            }
        }
    }

    /// Moves a partition's buffered messages to ready chunks, one per lane. Every lane of a
    /// repartition topic gets one (maybe empty), so that each lane's checkpointed offset
    /// stays close to the partition's: it continues from the smallest of them.
    fn hand_over(&mut self, l: usize) {
        let source = self.source;
        let s = &mut self.partitions[l];
        if s.lanes.iter().all(|lane| lane.buffer.messages.is_empty()) {
            return;
        }
        let Some(next) = s.read_next else {
            return;
        };
        s.next_offset = Some(next);
        if let Some(c) = &self.consumer {
            if let Ok(mut positions) = c.context().positions.lock() {
                positions.insert((s.topic.to_string(), s.number), next);
            }
        }
        let in_lanes = self.config.upstream.is_some();
        for lane in s.lanes.iter_mut() {
            if lane.buffer.messages.is_empty() && !in_lanes {
                continue;
            }
            let messages = lane.buffer.take();
            let (first, resume) = if in_lanes {
                let expect = lane.expect.unwrap_or(0);
                let first = messages.offsets.first().copied().unwrap_or(expect);
                let resume = Resume {
                    next_offset: next,
                    position: expect,
                };
                (first, resume)
            } else {
                (messages.offsets[0], Resume::at(next))
            };
            self.ready.push_back(Chunk {
                source,
                partition: lane.info.clone(),
                seq: lane.seq,
                first_offset: first,
                resume,
                data: ChunkData::Messages(messages),
            });
            lane.seq += 1;
        }
    }

    /// Ends a partition (caught up): hands over its messages, then its end.
    fn end_partition(&mut self, l: usize, next_offset: u64, _ctx: &ReaderContext) {
        self.hand_over(l);
        let source = self.source;
        let s = &mut self.partitions[l];
        if s.ended {
            return;
        }
        s.ended = true;
        let next = s.next_offset.unwrap_or(next_offset).max(next_offset);
        s.next_offset = Some(next);
        let in_lanes = self.config.upstream.is_some();
        for lane in s.lanes.iter_mut() {
            self.ready.push_back(lane_end(source, lane, next, in_lanes));
        }
        if let Some(consumer) = &self.consumer {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&s.topic, s.number);
            let _ = consumer.pause(&tpl);
        }
    }

    fn commit(&mut self, mode: CommitMode) -> Result<(), EngineError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        if self.config.upstream.is_some() {
            // a repartition topic's offsets live in the pool's checkpoints only: its lanes
            // continue from different offsets
            return Ok(());
        }
        let assigned = self
            .partitions
            .iter()
            .filter(|s| s.assigned)
            .map(|s| (s.topic.to_string(), s.number));
        let tpl = consumer.context().committable(assigned);
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                tracing::warn!(source = %self.name, error = %e, "kafka: offset commit failed; will retry");
                if let Ok(mut c) = consumer.context().committed.lock() {
                    c.clear();
                }
            }
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Polls messages until a chunk is ready or nothing arrives for a moment.
    fn poll_round(&mut self, ctx: &ReaderContext) -> Result<bool, EngineError> {
        let mut got = 0usize;
        loop {
            let timeout = if got > 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let consumer = self.consumer.as_ref().expect("connected");
            let polled = consumer.poll(timeout);
            let msg = match polled {
                None => break,
                Some(Err(RdError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    if is_fatal(&e) {
                        return Err(self.err("consumer failed", e));
                    }
                    tracing::warn!(source = %self.name, error = %e, "kafka: consumer error (librdkafka retries)");
                    break;
                }
                Some(Ok(m)) => m,
            };
            if consumer.context().has_events.load(Ordering::Acquire) {
                // Assignments must be known before their messages are placed.
                let (topic, p, detached) = (msg.topic().to_string(), msg.partition(), msg.detach());
                drop(msg);
                self.handle_group_events(ctx)?;
                self.place_owned(&topic, p, &detached, ctx);
            } else {
                let Some(l) = self.local(msg.topic(), msg.partition()) else {
                    continue;
                };
                let placed = place_message(
                    &mut self.partitions[l],
                    &msg,
                    (&self.config, &self.name),
                    ctx.stats.sources.get(self.source),
                    ctx,
                );
                drop(msg);
                if let Some(offset) = placed {
                    self.after_message(l, offset, ctx);
                }
            }
            got += 1;
            if !self.ready.is_empty() || got >= CHUNK_MESSAGES {
                break;
            }
        }
        Ok(got > 0)
    }

    fn place_owned(
        &mut self,
        topic: &str,
        partition: i32,
        m: &rdkafka::message::OwnedMessage,
        ctx: &ReaderContext,
    ) {
        if let Some(l) = self.local(topic, partition) {
            let placed = place_message(
                &mut self.partitions[l],
                m,
                (&self.config, &self.name),
                ctx.stats.sources.get(self.source),
                ctx,
            );
            if let Some(offset) = placed {
                self.after_message(l, offset, ctx);
            }
        }
    }

    fn after_message(&mut self, l: usize, offset: u64, ctx: &ReaderContext) {
        let s = &mut self.partitions[l];
        if let Some(r) = &s.read_offset {
            r.store(offset + 1, Ordering::Relaxed);
        }
        let caught_up = s.end_at.is_some_and(|end| offset + 1 >= end);
        if caught_up {
            self.end_partition(l, offset + 1, ctx);
        } else if s.lanes.iter().any(|lane| lane.buffer.is_full()) {
            self.hand_over(l);
        }
    }

    /// After a quiet poll: hands over old buffers, marks idle partitions, ends caught-up ones.
    fn housekeeping(&mut self, ctx: &ReaderContext, quiet: bool) -> Result<(), EngineError> {
        let now = Instant::now();
        for l in 0..self.partitions.len() {
            let s = &self.partitions[l];
            if s.lanes.iter().any(|lane| {
                lane.buffer
                    .since
                    .is_some_and(|t| quiet || now - t >= CHUNK_AGE)
            }) {
                self.hand_over(l);
            }
            let s = &self.partitions[l];
            // Idle: silent for `idle_timeout` while fetching (a partition paused for
            // backpressure is not silent) and with nothing left to read as far as the
            // consumer's statistics know (a partition behind is slow, not idle: its rows
            // would turn late).
            if let (Some(idle), false) = (self.config.idle_timeout, self.paused) {
                let silent = |lane: &Lane| now - lane.last_message >= idle;
                if s.assigned
                    && !s.ended
                    && s.lanes.iter().any(silent)
                    && !behind(ctx, &self.name, s)
                {
                    for lane in s.lanes.iter().filter(|lane| silent(lane)) {
                        ctx.clocks.partition(lane.info.id).set_idle(true);
                    }
                }
            }
        }
        if quiet && self.config.until_caught_up {
            let positions = self
                .consumer
                .as_ref()
                .expect("connected")
                .position()
                .map_err(|e| self.err("cannot read positions", e))?;
            for e in positions.elements() {
                let Some(l) = self.local(e.topic(), e.partition()) else {
                    continue;
                };
                let s = &self.partitions[l];
                if let (Offset::Offset(pos), Some(end), true, false) =
                    (e.offset(), s.end_at, s.assigned, s.ended)
                {
                    if pos >= 0 && pos as u64 >= end {
                        self.end_partition(l, pos as u64, ctx);
                    }
                }
            }
        }
        Ok(())
    }

    /// Pauses (or resumes) fetching of every assigned partition that has not ended.
    fn set_paused(&mut self, paused: bool) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for s in self.partitions.iter().filter(|s| s.assigned && !s.ended) {
            tpl.add_partition(&s.topic, s.number);
        }
        let result = if paused {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::warn!(source = %self.name, error = %e, "kafka: pause/resume failed");
        }
        self.paused = paused;
        if !paused {
            // the pause was weir's, not the partitions' silence
            let now = Instant::now();
            for lane in self.partitions.iter_mut().flat_map(|s| s.lanes.iter_mut()) {
                lane.last_message = now;
            }
        }
    }

    /// With `until_caught_up`: whether every partition of the topics is read to its end
    /// (see [`crate::caught_up`]). While this process has read every partition it is
    /// assigned but others are not read, it waits: says so in its log and `/ready`, and
    /// fails after `caught_up_timeout`.
    fn caught_up(&mut self, ctx: &ReaderContext) -> Result<bool, EngineError> {
        if !self.config.until_caught_up
            || !self.ready.is_empty()
            || self.partitions.iter().any(|s| s.target.is_none())
        {
            return Ok(false);
        }
        if self.partitions.iter().any(|s| s.assigned && !s.ended) {
            self.wait.reading();
            self.set_waiting(ctx, String::new());
            return Ok(false);
        }
        let (pending, why) = self.pending();
        let who = (&*self.name, self.config.group_id.as_str());
        match self.wait.update(&pending, why, who, Instant::now()) {
            Ok(Wait::Done) => {
                self.set_waiting(ctx, String::new());
                Ok(true)
            }
            Ok(Wait::Waiting(reason)) => {
                self.set_waiting(ctx, reason);
                self.rejoin_if_stuck(&pending)?;
                Ok(false)
            }
            Err(e) => Err(EngineError::NotCaughtUp {
                source_name: self.name.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// The partitions of the topics this process waits for (not read to their end and not
    /// assigned to it), and why they are not read.
    fn pending(&mut self) -> (Vec<String>, &'static str) {
        let key = |s: &PartitionState| format!("{}/{}", s.topic, s.number);
        let never = self.partitions.iter().all(|s| !s.assigned);
        if self.config.pool.is_none() {
            let why = if never {
                "not assigned to this process yet"
            } else {
                "not assigned to this process"
            };
            return (
                self.partitions
                    .iter()
                    .filter(|s| !s.ended)
                    .map(key)
                    .collect(),
                why,
            );
        }
        if self.config.upstream.is_some() {
            // a repartition topic's offsets are not committed to the group: the other
            // workers' partitions cannot be checked; a worker waits only for an assignment
            let pending = if never {
                self.partitions
                    .iter()
                    .filter(|s| !s.ended)
                    .map(key)
                    .collect()
            } else {
                Vec::new()
            };
            return (pending, "no partition assigned to this worker");
        }
        if !self.joined {
            // a worker that joins (again, after losing partitions to fencing) may be given
            // partitions whose state holds windows not flushed yet: it ends only once the
            // group told it which ones it owns
            return (
                self.partitions
                    .iter()
                    .filter(|s| !s.ended)
                    .map(key)
                    .collect(),
                "the group has not assigned this worker its partitions yet",
            );
        }
        // in a pool, another worker read a partition to its end once the group's committed
        // offset (committed after its checkpoint) reached it
        let unread = |s: &PartitionState| {
            !s.assigned && !s.ended && !s.read_elsewhere && s.target.is_some_and(|t| t > 0)
        };
        if self
            .checked_elsewhere
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.checked_elsewhere = Some(Instant::now());
            let committed = self.committed_offsets(unread);
            for s in self.partitions.iter_mut() {
                let key = (s.topic.to_string(), s.number);
                if let (Some(&c), Some(t)) = (committed.get(&key), s.target) {
                    s.read_elsewhere |= c >= t;
                }
            }
        }
        (
            self.partitions
                .iter()
                .filter(|s| unread(s))
                .map(key)
                .collect(),
            "not assigned to this worker, and the group's committed offset is below that end",
        )
    }

    /// While waiting for `pending` partitions: once the group did not move any partition
    /// for longer than a session timeout (and a margin), joins it again. A coordinator
    /// expires a dead member after its session timeout and moves its partitions; tansu was
    /// seen keeping a member killed while it joined, with its partitions, until another
    /// member joins. In a pool, only a worker without partitions joins again (the others
    /// may be reading theirs).
    fn rejoin_if_stuck(&mut self, pending: &[String]) -> Result<(), EngineError> {
        let session =
            crate::caught_up::session_timeout(&self.config.properties, self.config.pool.is_some());
        if self.group_moved.elapsed() < session + crate::caught_up::REJOIN_MARGIN
            || (self.config.pool.is_some() && self.partitions.iter().any(|s| s.assigned))
        {
            return Ok(());
        }
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        tracing::warn!(
            source = %self.name,
            group = %self.config.group_id,
            partitions = %pending.join(", "),
            quiet_s = self.group_moved.elapsed().as_secs(),
            "kafka: the group moved no partition for longer than a session timeout while \
             partitions wait for a reader; joining the group again"
        );
        self.group_moved = Instant::now();
        consumer.unsubscribe();
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.err("cannot subscribe again", e))
    }

    /// Publishes what the source waits for (for `/ready`).
    fn set_waiting(&self, ctx: &ReaderContext, reason: String) {
        if let Some(mut w) = ctx
            .stats
            .sources
            .get(self.source)
            .and_then(|s| s.waiting_for_partitions.lock().ok())
        {
            if *w != reason {
                *w = reason;
            }
        }
    }
}

/// Buffers a message of partition `s` in its lane; a repeat of the repartition stage (an
/// upstream offset its lane passed) is counted and dropped. The message's offset, unless the
/// partition is not read (then `after_message` is not due).
fn place_message<M: Message>(
    s: &mut PartitionState,
    m: &M,
    (config, name): (&KafkaSourceConfig, &str),
    stats: Option<&SourceStats>,
    ctx: &ReaderContext,
) -> Option<u64> {
    let in_lanes = config.upstream.is_some();
    if !s.assigned || s.ended {
        return None;
    }
    let offset = m.offset() as u64;
    s.read_next = Some(offset + 1);
    if !in_lanes {
        s.lanes[0].buffer.push(m, config.with_headers, offset);
        s.lanes[0].last_message = Instant::now();
        unidle(ctx, &s.lanes[0]);
        return Some(offset);
    }
    let payload = m.payload().unwrap_or_default();
    let Some(envelope) =
        crate::repartition::Envelope::open(payload).filter(|e| e.partition < s.lanes.len())
    else {
        if let Some(src) = stats {
            RunStats::add(&src.repartition_foreign, 1);
        }
        tracing::error!(
            source = %name,
            topic = %s.topic,
            partition = s.number,
            offset,
            "kafka: a message in a repartition topic was not written by weir (no upstream partition and offset); skipped"
        );
        return Some(offset);
    };
    let lane = &mut s.lanes[envelope.partition];
    if lane.expect.is_some_and(|e| envelope.offset < e) {
        if let Some(src) = stats {
            RunStats::add(&src.repartition_repeats, 1);
        }
        return Some(offset);
    }
    lane.buffer.push_parts(
        (envelope.payload, m.key()),
        m.timestamp().to_millis(),
        envelope.headers(),
        config.with_headers,
        envelope.offset,
    );
    lane.expect = Some(envelope.offset + 1);
    lane.last_message = Instant::now();
    unidle(ctx, lane);
    Some(offset)
}

/// Whether partition `s` has messages left to read, by the consumer lag of the latest
/// statistics (unknown: not behind).
fn behind(ctx: &ReaderContext, source: &str, s: &PartitionState) -> bool {
    let key = (source.to_string(), format!("{}/{}", s.topic, s.number));
    ctx.stats
        .consumer_lag
        .lock()
        .ok()
        .and_then(|lag| lag.get(&key).copied())
        .is_some_and(|lag| lag > 0)
}

/// A lane that delivers stops being idle.
fn unidle(ctx: &ReaderContext, lane: &Lane) {
    let clock = ctx.clocks.partition(lane.info.id);
    if clock.is_idle() {
        clock.set_idle(false);
    }
}

/// The settings of a consumer of `config`'s topics in group `group` (in a worker pool when
/// `pooled`); the source's `properties` last, so that they override weir's.
pub(crate) fn group_consumer_config(
    config: &KafkaSourceConfig,
    group: &str,
    pooled: bool,
) -> rdkafka::ClientConfig {
    let mut cfg = client_config(&config.brokers, &[]);
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            if config.start_from == StartFrom::Latest {
                "latest"
            } else {
                "earliest"
            },
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "16777216")
        // a pool moves a dead worker's partitions after this (Apache Kafka brokers accept
        // 6 s and more by default: `group.min.session.timeout.ms`)
        .set("session.timeout.ms", if pooled { "6000" } else { "10000" })
        // a pool's members hear of a rebalance at their next heartbeat
        .set("heartbeat.interval.ms", if pooled { "500" } else { "1000" })
        // consumer lag for `/metrics`
        .set("statistics.interval.ms", "5000");
    for (k, v) in &config.properties {
        cfg.set(k, v);
    }
    cfg
}

/// The end chunk of a lane whose partition continues at `next`.
fn lane_end(source: usize, lane: &mut Lane, next: u64, in_lanes: bool) -> Chunk {
    // a lane's offsets are upstream offsets: none seen yet is 0
    let expect = lane.expect.unwrap_or(if in_lanes { 0 } else { next });
    let chunk = Chunk {
        source,
        partition: lane.info.clone(),
        seq: lane.seq,
        first_offset: expect,
        resume: Resume {
            next_offset: next,
            position: expect,
        },
        data: ChunkData::End,
    };
    lane.seq += 1;
    chunk
}

fn is_fatal(e: &RdError) -> bool {
    match e {
        RdError::MessageConsumptionFatal(_) => true,
        RdError::MessageConsumption(code) => matches!(
            code,
            rdkafka::types::RDKafkaErrorCode::Fatal
                | rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                | rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed
                | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed
        ),
        _ => false,
    }
}

impl PartitionReader for KafkaReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        if self.consumer.is_none() {
            self.connect(ctx)?;
        }
        let pooled = self.config.pool.is_some();
        if pooled {
            self.join_run(ctx);
        }
        loop {
            if pooled {
                if let Some(e) = self
                    .consumer
                    .as_ref()
                    .and_then(|c| c.context().failed.lock().ok()?.take())
                {
                    return Err(self.err("worker pool", e));
                }
                // a hand-over (or a stop) ends the run at once: what was read stays here
                if ctx.stop.load(Ordering::Relaxed) || ctx.handover.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
            if let Some(c) = self.ready.pop_front() {
                return Ok(Some(c));
            }
            if ctx.stop.load(Ordering::Relaxed) || self.caught_up(ctx)? {
                return Ok(None);
            }
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.commit(CommitMode::Async)?;
            }
            let got = self.poll_round(ctx)?;
            self.handle_group_events(ctx)?;
            self.housekeeping(ctx, !got)?;
        }
    }

    fn backpressure(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        // Stop fetching, but keep polling: heartbeats, rebalances and commits go on, and the
        // messages already fetched are buffered (librdkafka's queue is bounded).
        if !self.paused {
            self.set_paused(true);
            tracing::debug!(source = %self.name, "kafka: backpressure, partitions paused");
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit(CommitMode::Async)?;
        }
        let consumer = self.consumer.as_ref().expect("connected");
        consumer
            .context()
            .in_backpressure
            .store(true, Ordering::SeqCst);
        let polled = consumer.poll(Duration::ZERO);
        consumer
            .context()
            .in_backpressure
            .store(false, Ordering::SeqCst);
        if let Some(Ok(m)) = polled {
            let (topic, p, m) = (m.topic().to_string(), m.partition(), m.detach());
            self.handle_group_events(ctx)?;
            self.place_owned(&topic, p, &m, ctx);
        }
        self.handle_group_events(ctx)
    }

    fn backpressure_released(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        if self.paused {
            self.set_paused(false);
        }
        Ok(())
    }

    fn finish(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        self.commit(CommitMode::Sync)?;
        if self.config.pool.is_none() {
            self.close();
        }
        Ok(())
    }

    fn unread(&mut self, chunk: Chunk) {
        self.ready.push_front(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use weir_engine::clock::Clocks;
    use weir_kafka::Producer;

    /// A source reading `topic` from its start to the end it has when assigned.
    fn reading_to_the_end(brokers: &str, topic: &str) -> KafkaSourceConfig {
        KafkaSourceConfig {
            brokers: brokers.to_string(),
            topics: vec![topic.into()],
            group_id: "g".into(),
            start_from: StartFrom::Earliest,
            properties: vec![],
            idle_timeout: None,
            until_caught_up: true,
            caught_up_timeout: Duration::from_secs(30),
            end_offsets: HashMap::new(),
            read_offsets: None,
            with_headers: false,
            pool: None,
            upstream: None,
        }
    }

    #[test]
    fn reads_each_message_once_in_partition_order_and_ends_when_caught_up() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("events", 3, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let producer = Producer::new(&brokers, &[]).unwrap();
        for i in 0..3000u32 {
            let key = format!("k{}", i % 7);
            producer
                .send(
                    "events",
                    Some(key.as_bytes()),
                    Some(format!("{{\"i\":{i}}}").as_bytes()),
                    &[("trace_id", b"t")],
                )
                .unwrap();
        }
        producer.flush().unwrap();
        let config = KafkaSourceConfig {
            with_headers: true,
            ..reading_to_the_end(&brokers, "events")
        };
        let partitions = KafkaPartitions::discover(&config).unwrap();
        assert_eq!(partitions.counts, vec![3]);
        let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(3, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Progress::new(3, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        );
        let mut next_offset = [0u64; 3];
        let mut next_seq = [0u64; 3];
        let mut ended = [false; 3];
        let mut total = 0;
        let mut chunks = 0;
        while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
            chunks += 1;
            if chunks == 2 {
                // backpressure: paused for a while, nothing lost or repeated after resuming
                for _ in 0..5 {
                    reader.backpressure(&ctx).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(reader.paused);
                reader.backpressure_released(&ctx).unwrap();
            }
            let p = chunk.partition.number as usize;
            assert_eq!(chunk.partition.topic.as_deref(), Some("events"));
            assert_eq!(chunk.seq, next_seq[p]);
            next_seq[p] += 1;
            assert!(!ended[p], "a chunk after the partition's end");
            match chunk.data {
                ChunkData::Messages(m) => {
                    for (i, &o) in m.offsets.iter().enumerate() {
                        assert_eq!(o, next_offset[p]);
                        next_offset[p] += 1;
                        let (first, last) = m.headers[i];
                        assert_eq!(last - first, 1);
                        assert!(m.keys[i].is_some());
                    }
                    total += m.len();
                }
                ChunkData::End => {
                    assert_eq!(chunk.first_offset, next_offset[p]);
                    ended[p] = true;
                }
                _ => panic!("a Kafka reader yields messages"),
            }
        }
        assert_eq!(total, 3000);
        assert_eq!(ended, [true; 3]);
        reader.finish(&ctx).unwrap();
    }

    /// Closing a reader returns within its bound even when leaving the group is slow: here a
    /// pool's revocation waits for a hand-over that never completes (a dropped rdkafka
    /// consumer would wait for it, and for a broker that does not answer, unbounded).
    #[test]
    fn closing_a_reader_is_bounded_when_leaving_the_group_is_slow() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("events", 3, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let hook = PoolHook {
            claim: Arc::new(|partitions: &[(String, i32)]| Ok(vec![None; partitions.len()])),
            released: Arc::new(|_: &[(String, i32)], _: bool| {}),
            handover_timeout: Duration::from_secs(60),
        };
        let config = KafkaSourceConfig {
            until_caught_up: false,
            pool: Some(hook),
            ..reading_to_the_end(&brokers, "events")
        };
        let partitions = KafkaPartitions::discover(&config).unwrap();
        let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(3, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Progress::new(3, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        );
        // a failed run: its hand-over on assignment does not wait
        ctx.cancel.store(true, Ordering::SeqCst);
        reader.connect(&ctx).unwrap();
        let consumer = reader.consumer.as_ref().unwrap();
        let started = Instant::now();
        while !consumer.context().holds_partitions() {
            let _ = consumer.poll(Duration::from_millis(50));
            assert!(started.elapsed() < Duration::from_secs(30), "never assigned");
        }
        // a run whose outputs never finish: the revocation's hand-over waits a minute
        ctx.cancel.store(false, Ordering::SeqCst);
        let closing = Instant::now();
        reader.close();
        let took = closing.elapsed();
        assert!(
            took < CLOSE_TIMEOUT + Duration::from_secs(3),
            "closing took {took:?}"
        );
        assert!(reader.consumer.is_none());
    }

    /// A repartition topic: its partitions are read as one lane per upstream partition, each
    /// in upstream order with upstream offsets; a repeat (an upstream offset its lane passed)
    /// is dropped; every lane's chunk records where the partition and the lane continue.
    #[test]
    fn a_repartition_topic_is_read_in_lanes_without_repeats() {
        use crate::repartition::Envelope;
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("internal", 1, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let producer = Producer::new(&brokers, &[]).unwrap();
        // upstream partitions 0 and 1 interleaved; then upstream 1 repeats offsets 1..3 (a
        // stage that restarted from an older commit) and continues with 4
        let mut sent = vec![(0u32, 0u64), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2), (1, 3)];
        sent.extend([(1, 1), (1, 2), (1, 3), (1, 4)]);
        let mut value = Vec::new();
        for &(u, o) in &sent {
            value.clear();
            let headers = [(&b"traceparent"[..], Some(&b"t"[..]))];
            let payload = format!("{{\"u\":{u},\"o\":{o}}}");
            Envelope::write(&mut value, u, o, headers.into_iter(), payload.as_bytes());
            producer
                .send("internal", Some(b"k"), Some(&value), &[])
                .unwrap();
        }
        producer.flush().unwrap();
        let config = KafkaSourceConfig {
            upstream: Some(Upstream {
                topic: "upstream".into(),
                partitions: 2,
            }),
            ..reading_to_the_end(&brokers, "internal")
        };
        let partitions = KafkaPartitions::discover(&config).unwrap();
        assert_eq!(
            partitions.keys(&config),
            vec!["internal/0/0".to_string(), "internal/0/1".to_string()]
        );
        let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
        let stats = Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[]));
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(2, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Progress::new(2, &[])),
            stats.clone(),
        );
        let mut read: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut next_seq = [0u64; 2];
        let mut last_resume = [None; 2];
        while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
            let lane = chunk.partition.id;
            assert_eq!(
                chunk.partition.state_id, 0,
                "state stays with the Kafka partition"
            );
            assert_eq!(chunk.partition.topic.as_deref(), Some("upstream"));
            assert_eq!(chunk.partition.number as usize, lane);
            assert_eq!(chunk.seq, next_seq[lane]);
            next_seq[lane] += 1;
            if let ChunkData::Messages(m) = &chunk.data {
                for (i, &o) in m.offsets.iter().enumerate() {
                    let payload = std::str::from_utf8(m.slice(m.payloads[i])).unwrap();
                    assert_eq!(payload, format!("{{\"u\":{lane},\"o\":{o}}}"));
                    let trace: Vec<_> = m.header_pairs(i).collect();
                    assert_eq!(trace, vec![(&b"traceparent"[..], Some(&b"t"[..]))]);
                }
                read[lane].extend(&m.offsets);
            }
            last_resume[lane] = Some(chunk.resume);
        }
        assert_eq!(read[0], vec![0, 1, 2]);
        assert_eq!(read[1], vec![0, 1, 2, 3, 4]);
        assert_eq!(RunStats::get(&stats.sources[0].repartition_repeats), 3);
        // both lanes continue after the topic's last message; each at its next upstream offset
        let end = sent.len() as u64;
        assert_eq!(
            last_resume,
            [
                Some(Resume {
                    next_offset: end,
                    position: 3
                }),
                Some(Resume {
                    next_offset: end,
                    position: 5
                })
            ]
        );
    }

    /// Another member of the group (a consumer polling, not reading): started first, it
    /// holds the topic's partitions until `leave` is set.
    fn other_member(
        brokers: &str,
        topic: &str,
        leave: Arc<AtomicBool>,
    ) -> (
        std::thread::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (brokers, topic, h) = (brokers.to_string(), topic.to_string(), held.clone());
        let t = std::thread::spawn(move || {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", "g")
                .set("enable.auto.commit", "false")
                .set("partition.assignment.strategy", "cooperative-sticky")
                // gone from the group soon after it stops, as a killed process is
                .set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500")
                .create()
                .unwrap();
            c.subscribe(&[&topic]).unwrap();
            while !leave.load(Ordering::SeqCst) {
                let _ = c.poll(Duration::from_millis(20));
                let n = c.assignment().map(|a| a.count()).unwrap_or(0);
                h.store(n, Ordering::SeqCst);
            }
        });
        (t, held)
    }

    fn produce_keyed(brokers: &str, topic: &str, n: u32) {
        let producer = Producer::new(brokers, &[]).unwrap();
        for i in 0..n {
            let key = format!("k{}", i % 13);
            let value = format!("{{\"i\":{i}}}");
            producer
                .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), &[])
                .unwrap();
        }
        producer.flush().unwrap();
    }

    /// `--until-caught-up` while another member holds partitions (a killed process until
    /// its session times out): the reader reads the partitions it is assigned, then waits
    /// for the others, saying so in `/ready`, and reads them once the group assigns them. It
    /// does not end with only its own partitions read.
    #[test]
    fn waits_for_the_partitions_another_member_holds_then_reads_them() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("held", 4, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        produce_keyed(&brokers, "held", 800);
        let leave = Arc::new(AtomicBool::new(false));
        let (other, held) = other_member(&brokers, "held", leave.clone());
        let started = Instant::now();
        while held.load(Ordering::SeqCst) < 4 {
            assert!(started.elapsed() < Duration::from_secs(30), "no assignment");
            std::thread::sleep(Duration::from_millis(20));
        }
        let config = reading_to_the_end(&brokers, "held");
        let partitions = KafkaPartitions::discover(&config).unwrap();
        let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
        let stats = Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[]));
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(4, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Progress::new(4, &[])),
            stats.clone(),
        );
        // once the reader says it waits, the other member leaves
        let saw = Arc::new(Mutex::new(String::new()));
        let watcher = {
            let (stats, leave, saw) = (stats.clone(), leave.clone(), saw.clone());
            std::thread::spawn(move || {
                while !leave.load(Ordering::SeqCst) {
                    let w = stats.sources[0]
                        .waiting_for_partitions
                        .lock()
                        .unwrap()
                        .clone();
                    if !w.is_empty() {
                        *saw.lock().unwrap() = w;
                        leave.store(true, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let mut total = 0;
        let mut ended = [false; 4];
        while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
            match chunk.data {
                ChunkData::Messages(m) => total += m.len(),
                ChunkData::End => ended[chunk.partition.number as usize] = true,
                _ => panic!("a Kafka reader yields messages"),
            }
        }
        leave.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        other.join().unwrap();
        assert_eq!(total, 800, "every partition read");
        assert_eq!(ended, [true; 4]);
        let saw = saw.lock().unwrap().clone();
        assert!(saw.contains("waiting for held/"), "{saw}");
        assert!(stats.sources[0]
            .waiting_for_partitions
            .lock()
            .unwrap()
            .is_empty());
        reader.finish(&ctx).unwrap();
    }

    /// The other member never leaves: the reader fails after its timeout, naming the
    /// partitions it did not read.
    #[test]
    fn fails_when_partitions_stay_unread_past_the_timeout() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("stuck", 2, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        produce_keyed(&brokers, "stuck", 200);
        let leave = Arc::new(AtomicBool::new(false));
        let (other, held) = other_member(&brokers, "stuck", leave.clone());
        let started = Instant::now();
        while held.load(Ordering::SeqCst) < 2 {
            assert!(started.elapsed() < Duration::from_secs(30), "no assignment");
            std::thread::sleep(Duration::from_millis(20));
        }
        let config = KafkaSourceConfig {
            caught_up_timeout: Duration::from_secs(3),
            ..reading_to_the_end(&brokers, "stuck")
        };
        let partitions = KafkaPartitions::discover(&config).unwrap();
        let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(2, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Progress::new(2, &[])),
            Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[])),
        );
        let error = loop {
            match reader.next_chunk(&ctx) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended with partitions unread"),
                Err(e) => break e,
            }
        };
        leave.store(true, Ordering::SeqCst);
        other.join().unwrap();
        match &error {
            EngineError::NotCaughtUp { message, .. } => {
                assert!(message.contains("stuck/"), "{message}");
                assert!(message.contains("--caught-up-timeout"), "{message}");
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_missing_topic_is_reported_by_name() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("other", 1, 1).unwrap();
        let config = KafkaSourceConfig {
            start_from: StartFrom::Committed,
            properties: vec![("allow.auto.create.topics".into(), "false".into())],
            until_caught_up: false,
            ..reading_to_the_end(&mock.bootstrap_servers(), "nope")
        };
        match KafkaPartitions::discover(&config) {
            Err(e) => assert!(e.to_string().contains("nope"), "{e}"),
            Ok(p) => panic!("found {:?}", p.counts),
        }
    }

    #[test]
    fn a_silent_partition_idles_unless_paused_or_behind() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("quiet", 2, 1).unwrap();
        let config = KafkaSourceConfig {
            idle_timeout: Some(Duration::from_millis(150)),
            until_caught_up: false,
            ..reading_to_the_end(&mock.bootstrap_servers(), "quiet")
        };
        let partitions = KafkaPartitions::discover(&config).unwrap();
        let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(2, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(Progress::new(2, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        );
        reader.connect(&ctx).unwrap();
        let started = Instant::now();
        while !reader.partitions.iter().all(|s| s.assigned) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never assigned"
            );
            reader.poll_round(&ctx).unwrap();
            reader.handle_group_events(&ctx).unwrap();
        }
        let idle = |p: usize| ctx.clocks.partition(p).is_idle();
        let wait_past_timeout = |reader: &mut KafkaReader| {
            std::thread::sleep(Duration::from_millis(200));
            reader.housekeeping(&ctx, true).unwrap();
        };
        reader.housekeeping(&ctx, true).unwrap();
        assert!(!idle(0) && !idle(1), "just assigned");
        // partition 1 has messages left to read by the latest statistics: slow, not idle
        ctx.stats
            .consumer_lag
            .lock()
            .unwrap()
            .insert(("s".into(), "quiet/1".into()), 5);
        wait_past_timeout(&mut reader);
        assert!(idle(0) && !idle(1));
        ctx.stats.consumer_lag.lock().unwrap().clear();
        // paused for backpressure longer than the timeout: weir's pause, not silence
        ctx.clocks.partition(0).set_idle(false);
        reader.backpressure(&ctx).unwrap();
        wait_past_timeout(&mut reader);
        assert!(!idle(0) && !idle(1));
        reader.backpressure_released(&ctx).unwrap();
        reader.housekeeping(&ctx, true).unwrap();
        assert!(
            !idle(0) && !idle(1),
            "the timeout starts again after the pause"
        );
        wait_past_timeout(&mut reader);
        assert!(idle(0) && idle(1));
    }
}
