//! A worker pool's repartition stage, as Kafka Streams does it: when a topic is not
//! partitioned by the key of the windows and views reading it, every worker re-produces the
//! upstream partitions it is assigned (in a consumer group of their own) into an internal
//! topic keyed by that key: `<pipeline>-<source>-repartition`, with the upstream topic's
//! partition count. The pool's jobs then read the internal topic, whose partitions hold
//! every event of their keys.
//!
//! The stage is at least once: it commits an upstream offset once the messages before it
//! are acknowledged, so a worker that dies re-produces what it sent after its last commit.
//! Every message carries the upstream topic, partition and offset it was read at (an
//! [`Envelope`] around its value); the reader of the internal topic keeps the
//! upstream partitions apart as lanes (`crate::source::Upstream`), drops a message whose
//! upstream sequence its lane already passed, and checkpoints each lane's position with the
//! pool's state. The producer is idempotent, so one upstream partition's messages stay in
//! order in each internal partition: a repeat is always below what its lane expects.
//!
//! A message's lane orders it by its *sequence*: its upstream offset, with the partition's
//! generation above the offset's bits once the partition started over ([`restart`]: the
//! topic was created again, so its offsets begin below those the lanes passed), so that the
//! lanes take the new records instead of dropping them as repeats.
//!
//! The internal topic is named after the pipeline, not the group or the upstream topic: it
//! may hold messages written for another upstream topic (the pipeline's source pointed at
//! another topic before, or another pool of the same pipeline name). A partition without a
//! checkpoint reads the internal topic from its beginning, so the reader skips a message of
//! another upstream topic: its partition and offset would otherwise pass for this topic's
//! (counting another topic's events, and dropping this topic's as repeats).
//!
//! Records that do not decode go to the internal partition of their message key, as they
//! are: the jobs decode them again and send them to the dead-letter output with their error.
//!
//! The stage runs under the jobs' backpressure ([`backlog`]): it pauses reading while the
//! pool's jobs have more than `repartition_max_backlog` messages of the internal topic left to
//! checkpoint. Its figures ([`StageStats`]) are shown by every job of the worker.

mod backlog;
mod envelope;
mod restart;

pub use envelope::{generation_of, sequence, Envelope};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use weir_engine::buffer::MessageBuffer;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::job::Decode;
use weir_engine::stage_stats::{holds_back, StageStats};
use weir_engine::{Chunk, ChunkData, EngineError, Messages};

use crate::source::close::{close_consumer, is_cooperative, CLOSE_TIMEOUT};
use crate::source::{group_consumer_config, KafkaSourceConfig, PushMessage, StartFrom};
use crate::{client_config, create_topic, partition_counts, Producer};

/// How many messages the stage reads before it sends them on.
const BATCH_MESSAGES: usize = 8 * 1024;
/// How long it gathers a batch at most.
const BATCH_AGE: Duration = Duration::from_millis(50);
/// How often it commits upstream offsets (after the messages before them are acknowledged).
const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// The internal topic repartitioning `source` of pipeline `pipeline`.
pub fn internal_topic(pipeline: &str, source: &str) -> String {
    format!("{pipeline}-{source}-repartition")
}

/// What a repartition stage reads, and where it writes.
#[derive(Clone)]
pub struct RepartitionSpec {
    /// The source's name in the pipeline.
    pub source: String,
    /// The source as declared (one topic).
    pub input: KafkaSourceConfig,
    /// The internal topic.
    pub topic: String,
    /// The fields the internal topic is keyed by.
    pub keys: Vec<String>,
    pub decoder: Arc<dyn Decode>,
    /// Stop once every assigned partition is read to the end it had when assigned.
    pub until_caught_up: bool,
}

impl RepartitionSpec {
    /// The consumer group of the stage: the source's group, suffixed.
    pub fn group(&self) -> String {
        format!("{}-repartition", self.input.group_id)
    }

    /// A client of the stage's group that does not join it (end and committed offsets).
    fn client(&self) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
        self.client_of(&self.group())
    }

    /// A client of consumer group `group` that does not join it.
    fn client_of(&self, group: &str) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
        client_config(&self.input.brokers, &self.input.properties)
            .set("enable.auto.commit", "false")
            .set("group.id", group)
            .create()
    }

    fn upstream_topic(&self) -> Result<&str, EngineError> {
        match self.input.topics.as_slice() {
            [t] => Ok(t),
            _ => Err(EngineError::source(
                &self.source,
                "a repartitioned source reads exactly one topic",
            )
            .user()),
        }
    }

    /// Creates the internal topic (when missing) with the upstream topic's partition count,
    /// which it returns. An existing internal topic with another count is refused.
    pub fn prepare(&self) -> Result<usize, EngineError> {
        let upstream = self.upstream_topic()?;
        let err = |e: crate::KafkaError| EngineError::source_caused(&self.source, "", e);
        let props = &self.input.properties;
        let brokers = &self.input.brokers;
        let timeout = Duration::from_secs(30);
        let count = partition_counts(brokers, props, &[upstream.to_string()], timeout)
            .map_err(err)?
            .first()
            .copied()
            .unwrap_or(0);
        let internal_count = || {
            partition_counts(brokers, props, std::slice::from_ref(&self.topic), timeout)
                .map(|c| c.first().copied().unwrap_or(0))
        };
        // an internal topic created beforehand is used as it is (no CreateTopics: the
        // workers' credentials may lack `CREATE`, and some brokers do not answer it)
        let internal = match internal_count() {
            Ok(n) => n,
            Err(crate::KafkaError::NoSuchTopic { .. }) => {
                create_topic(brokers, props, &self.topic, count as i32).map_err(err)?;
                internal_count().map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        if internal != count {
            return Err(EngineError::source(
                &self.source,
                format!(
                    "the repartition topic `{}` has {internal} partitions but `{upstream}` has \
                     {count}: delete it (weir creates it again) or give it {count} partitions",
                    self.topic
                ),
            ));
        }
        Ok(count)
    }
}

/// A running repartition stage (a thread of the worker).
pub struct RepartitionStage {
    thread: Option<JoinHandle<Result<(), EngineError>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<StageStats>,
}

impl RepartitionStage {
    /// Starts the stage; it runs until [`Self::stop`] (or, with `until_caught_up`, until
    /// its partitions are read to their end, or until it fails), then calls `on_end`.
    pub fn start(
        spec: RepartitionSpec,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> Result<Self, EngineError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stage = Stage::connect(spec, stop.clone())?;
        let stats = stage.stats.clone();
        let thread = std::thread::Builder::new()
            .name("weir-repartition".into())
            .spawn(move || {
                let result = stage.run();
                if let Err(e) = &result {
                    tracing::error!(error = %e.chain(), "the repartition stage failed");
                }
                let source = stage.spec.source.clone();
                close_consumer(stage.consumer, &source, CLOSE_TIMEOUT);
                on_end();
                result
            })
            .map_err(|e| EngineError::internal_caused("cannot start the repartition stage", e))?;
        Ok(RepartitionStage {
            thread: Some(thread),
            stop,
            stats,
        })
    }

    /// What the stage shows of itself (`/metrics`, `weir_status`).
    pub fn stats(&self) -> Arc<StageStats> {
        self.stats.clone()
    }

    /// Whether the stage ended (caught up, or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the stage to stop (it sends what it read and commits first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the stage to end; its error, if it failed.
    pub fn join(mut self) -> Result<(), EngineError> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| EngineError::Internal("the repartition stage panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for RepartitionStage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Rebalances of the stage's consumer (cooperative: only moved partitions are touched).
struct StageContext {
    /// From the configured assignment strategy (see [`crate::source::close`]).
    cooperative: bool,
    /// The stage's figures.
    stats: Arc<StageStats>,
    /// The upstream partitions assigned now (the monitor measures their lag).
    assigned: Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
    /// The upstream partitions assigned and not settled yet ([`restart`]): paused until the
    /// stage knows where they start and their generations.
    unsettled: Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
}

impl ClientContext for StageContext {}

impl ConsumerContext for StageContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = self.cooperative;
        let assigning = matches!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS);
        if assigning {
            // every partition assigned waits until settled (see `restart`), paused *before* it
            // is assigned: paused after, librdkafka may fetch first, and a reset it makes of an
            // out-of-range position would be overwritten by the settled start (librdkafka keeps
            // an application's pause across an assignment)
            pause_before_assigning(consumer, tpl);
        } else {
            // a partition leaves unpaused: were its pause kept past the revocation (librdkafka
            // versions differ), it would come back paused after the stage resumed
            let _ = consumer.resume(tpl);
        }
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if cooperative => {
                consumer.incremental_assign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => consumer.assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if cooperative => {
                consumer.incremental_unassign(tpl)
            }
            _ => consumer.unassign(),
        };
        match result {
            Ok(()) => {
                // again, for a partition librdkafka did not know before it was assigned
                if assigning {
                    if let Err(e) = consumer.pause(tpl) {
                        tracing::error!(error = %e, "repartition: cannot pause the upstream partitions assigned until they are settled");
                    }
                }
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                for set in [&self.assigned, &self.unsettled] {
                    if let Ok(mut a) = set.lock() {
                        if !assigning && !cooperative {
                            a.clear();
                        }
                        for p in &partitions {
                            if assigning {
                                a.insert(*p);
                            } else {
                                a.remove(p);
                            }
                        }
                    }
                }
                let what = if assigning {
                    "assigned"
                } else {
                    self.stats.revoked(&partitions);
                    "revoked"
                };
                tracing::info!(?partitions, "repartition: upstream partitions {what}");
            }
            Err(e) => tracing::error!(error = %e, "repartition: rebalance failed"),
        }
    }
}

/// Pauses the partitions of `tpl` before they are assigned (see the rebalance callback).
/// librdkafka pauses only partitions it holds an object for, which a consumer's first
/// assignment makes; `rd_kafka_position` makes them first (a lookup that creates them).
fn pause_before_assigning<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) {
    let known = tpl.clone();
    // SAFETY: `known` is a list of this process, alive for the call; the consumer's handle
    // outlives it. librdkafka only writes positions and errors into the list's elements.
    unsafe {
        rdkafka::bindings::rd_kafka_position(consumer.client().native_ptr(), known.ptr());
    }
    let paused = tpl.clone();
    let refused = match consumer.pause(&paused) {
        Ok(()) => paused.elements().iter().any(|e| e.error().is_err()),
        Err(_) => true,
    };
    if refused {
        tracing::warn!("repartition: cannot pause every upstream partition before it is assigned; they are paused once assigned");
    }
}

struct Stage {
    spec: RepartitionSpec,
    upstream: String,
    consumer: BaseConsumer<StageContext>,
    producer: Producer,
    stop: Arc<AtomicBool>,
    /// Per upstream partition: messages read and not sent yet.
    buffers: HashMap<i32, MessageBuffer>,
    /// Per upstream partition: the offset after the last message sent.
    next: HashMap<i32, u64>,
    /// Per settled upstream partition: its generation (see [`restart`]).
    generations: HashMap<i32, u16>,
    /// Per settled upstream partition: the upstream offset committed last (where known).
    committed_at: HashMap<i32, u64>,
    /// The upstream partitions assigned now (shared with the rebalance callback).
    assigned: Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
    /// Per settled upstream partition: the offset expected next, when known (one below it
    /// means the partition started over).
    expected: HashMap<i32, u64>,
    /// The partitions assigned and not settled yet (shared with the rebalance callback).
    unsettled: Arc<std::sync::Mutex<std::collections::BTreeSet<i32>>>,
    /// When settling last failed.
    settle_failed: Option<Instant>,
    /// With `until_caught_up`: per partition, its end when the stage started.
    ends: HashMap<i32, u64>,
    /// With `until_caught_up`: the partitions paused at their ends while the stage waits for
    /// the other stages (it copies nothing past the ends meanwhile).
    at_ends: std::collections::BTreeSet<i32>,
    /// With `until_caught_up`: when the group was last asked where the partitions that
    /// delivered nothing start.
    unread_asked: Option<Instant>,
    infos: HashMap<i32, Arc<PartitionInfo>>,
    /// Key bytes of the rows of a batch, reused.
    key_scratch: Vec<u8>,
    stats: Arc<StageStats>,
    /// Measures the pool's backlog in the internal topic (for backpressure) and the upstream
    /// lag; `None` reading until caught up (no backpressure then).
    monitor: Option<backlog::Monitor>,
}

impl Stage {
    fn err(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::source_caused(&self.spec.source, "repartition stage", e)
    }

    /// A failure of the stage with only a message.
    fn fault(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::source(&self.spec.source, format!("repartition stage: {message}"))
    }

    fn connect(spec: RepartitionSpec, stop: Arc<AtomicBool>) -> Result<Stage, EngineError> {
        let upstream = spec.upstream_topic()?.to_string();
        let fail = |what: &str, e: weir_engine::error::Cause| {
            EngineError::source_caused(&spec.source, format!("repartition stage: {what}"), e)
        };
        let mut cfg = group_consumer_config(&spec.input, &spec.group(), true);
        // the stage measures the upstream partitions' lag itself (see `regulate`)
        cfg.set("statistics.interval.ms", "0");
        let stats = Arc::new(StageStats::new(&spec.source, &upstream));
        let assigned = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let unsettled = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        // reading to the end, the jobs start once the stages are done: nothing to wait for
        let monitor = if spec.until_caught_up {
            None
        } else {
            Some(
                backlog::Monitor::start(&spec, &upstream, stats.clone(), assigned.clone())
                    .map_err(|e| fail("cannot start its monitor", e.into()))?,
            )
        };
        // the ends are read before consuming: a broker may hold a ListOffsets request back
        // behind the consumer's fetches (tansu then stops answering the group's heartbeats)
        let ends = if spec.until_caught_up {
            end_offsets(&spec, &upstream)?
        } else {
            HashMap::new()
        };
        let consumer: BaseConsumer<StageContext> = cfg
            .create_with_context(StageContext {
                cooperative: is_cooperative(&cfg),
                stats: stats.clone(),
                assigned: assigned.clone(),
                unsettled: unsettled.clone(),
            })
            .map_err(|e| fail("cannot create a consumer", e.into()))?;
        consumer
            .subscribe(&[upstream.as_str()])
            .map_err(|e| fail("cannot subscribe", e.into()))?;
        let producer = Producer::new(&spec.input.brokers, &spec.input.properties)
            .map_err(|e| fail("cannot create a producer", e.into()))?;
        Ok(Stage {
            monitor,
            spec,
            upstream,
            consumer,
            producer,
            stop,
            buffers: HashMap::new(),
            next: HashMap::new(),
            generations: HashMap::new(),
            committed_at: HashMap::new(),
            assigned,
            expected: HashMap::new(),
            unsettled,
            settle_failed: None,
            ends,
            unread_asked: None,
            infos: HashMap::new(),
            key_scratch: Vec::new(),
            at_ends: Default::default(),
            stats,
        })
    }

    fn run(&mut self) -> Result<(), EngineError> {
        tracing::info!(
            source = %self.spec.source,
            from = %self.upstream,
            to = %self.spec.topic,
            keys = ?self.spec.keys,
            group = %self.spec.group(),
            "repartition stage started"
        );
        let result = self.pump();
        // what was read is sent and committed, even on a stop
        let end = self.send_all().and_then(|_| self.commit(CommitMode::Sync));
        self.consumer.unsubscribe();
        tracing::info!(
            source = %self.spec.source,
            sent = self.stats.forwarded.load(Ordering::Relaxed),
            "repartition stage stopped"
        );
        result.and(end)
    }

    /// Pauses the settled partitions (read to their ends) that are not paused yet, so that
    /// waiting for the other stages copies nothing past the ends (the run reads to the ends
    /// its partitions had when it started, give or take a batch).
    fn pause_at_ends(&mut self) {
        let mut tpl = TopicPartitionList::new();
        let settled = self.settled_partitions();
        for &p in settled.iter().filter(|p| !self.at_ends.contains(p)) {
            tpl.add_partition(&self.upstream, p);
        }
        if tpl.count() == 0 {
            return;
        }
        match self.consumer.pause(&tpl) {
            Ok(()) => self.at_ends.extend(settled),
            Err(e) => {
                tracing::warn!(source = %self.spec.source, error = %e, "repartition: cannot pause the upstream partitions read to their ends")
            }
        }
    }

    /// Reading to the end, once this stage holds no partition short of its end: whether the
    /// stages of every worker sent their partitions to their ends (the group's committed
    /// offsets reach the ends read at the start), so that the jobs then find the whole input
    /// in the internal topic. Asked at most once a second, after committing this stage's own
    /// positions again (a commit that failed, as one does while the group rebalances, is
    /// retried). Until then the stage stays in the group and copies what it is assigned: the
    /// partitions of a stage that died come to it once the group expires that member.
    fn group_caught_up(&mut self, group: &mut GroupCheck) -> Result<bool, EngineError> {
        if group
            .asked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(false);
        }
        group.asked = Some(Instant::now());
        self.pause_at_ends();
        self.commit(CommitMode::Sync)?;
        if group.client.is_none() {
            group.client = Some(self.spec.client().map_err(|e| self.err(e))?);
        }
        let Some(client) = &group.client else {
            return Ok(false);
        };
        let mut tpl = TopicPartitionList::new();
        for &p in self.ends.keys() {
            tpl.add_partition(&self.upstream, p);
        }
        let committed = client
            .committed_offsets(tpl, Duration::from_secs(30))
            .map_err(|e| self.err(e))?;
        let behind: Vec<i32> = self
            .ends
            .iter()
            .filter(|&(&p, &end)| {
                let at = match committed
                    .find_partition(&self.upstream, p)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) if o >= 0 => o as u64,
                    _ => 0,
                };
                end > 0 && at < end
            })
            .map(|(&p, _)| p)
            .collect();
        if behind.is_empty() {
            return Ok(true);
        }
        if group.logged.elapsed() >= Duration::from_secs(10) {
            tracing::info!(source = %self.spec.source, partitions = ?behind, "repartition: waiting for the other workers' stages to reach the end of these partitions");
            group.logged = Instant::now();
        }
        Ok(false)
    }

    fn pump(&mut self) -> Result<(), EngineError> {
        // the backlog's baseline must be measured before the stage sends anything: what it
        // sent before would never count (the consumer joins the group at its first poll)
        if let Some(monitor) = &self.monitor {
            let limit = backlog::FIRST_MEASURE_WAIT;
            if !monitor.wait_for_a_measure(limit, &self.stop) && !self.stop.load(Ordering::Relaxed)
            {
                tracing::warn!(source = %self.spec.source, waited = ?limit, "repartition: the pool's backlog could not be measured yet; copying without backpressure until it can (what is sent meanwhile does not count towards repartition_max_backlog)");
            }
        }
        let mut last_commit = Instant::now();
        let mut last_slots = Instant::now();
        let mut group = GroupCheck {
            asked: None,
            logged: Instant::now(),
            client: None,
        };
        while !self.stop.load(Ordering::Relaxed) {
            self.settle()?;
            if last_slots.elapsed() >= restart::SLOT_REFRESH {
                self.refresh_slots();
                last_slots = Instant::now();
            }
            let started = Instant::now();
            let mut got = 0;
            while got < BATCH_MESSAGES && started.elapsed() < BATCH_AGE {
                let timeout = if got == 0 {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                match self.consumer.poll(timeout) {
                    None => break,
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => continue,
                    Some(Err(e)) => {
                        tracing::warn!(source = %self.spec.source, error = %e, "repartition: consumer error (librdkafka retries)");
                        break;
                    }
                    Some(Ok(m)) => {
                        let offset = m.offset() as u64;
                        let p = m.partition();
                        let expected = self.expected.insert(p, offset + 1);
                        if let Some(e) = expected.filter(|&e| offset < e) {
                            // (rare: the message is copied out of the consumer's buffer)
                            let m = m.detach();
                            self.starts_over_at(p, (offset, e))?;
                            self.buffers.entry(p).or_default().push(&m, true, offset);
                        } else {
                            self.buffers.entry(p).or_default().push(&m, true, offset);
                        }
                        got += 1;
                    }
                }
            }
            self.send_all()?;
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit(CommitMode::Async)?;
                last_commit = Instant::now();
            }
            // what the broker acknowledged (the backlog's measures count the rest on top)
            self.stats
                .settled
                .store(self.producer.settled(), Ordering::Relaxed);
            if self.spec.until_caught_up && self.caught_up()? && self.group_caught_up(&mut group)? {
                tracing::info!(source = %self.spec.source, "repartition stage caught up");
                return Ok(());
            }
            self.regulate();
        }
        Ok(())
    }

    /// Backpressure: pauses reading the upstream partitions while the pool's jobs have more
    /// than `repartition_max_backlog` messages of the internal topic left to checkpoint, and
    /// resumes at half of it. The backlog is the monitor's newest measure (every second)
    /// plus what the stage sent that the broker had not acknowledged when it began (the jobs'
    /// commits only lower it), so that the stage pauses within a batch of going over the
    /// limit. A backlog that cannot be measured (for 30 s) does not hold the stage back.
    fn regulate(&mut self) {
        let Some(monitor) = &self.monitor else {
            return;
        };
        let measure = monitor.latest();
        let backlog = measure.estimate(self.stats.forwarded.load(Ordering::Relaxed));
        let max = self.spec.input.repartition_max_backlog;
        let paused = self.is_paused();
        let hold = holds_back(paused, backlog, max);
        if hold != paused {
            self.hold(hold, backlog);
        } else {
            self.stats.set_backlog(backlog, paused);
        }
    }

    /// Whether the stage holds back (its partitions paused) for the backlog.
    fn is_paused(&self) -> bool {
        self.stats.paused.load(Ordering::SeqCst)
    }

    /// Pauses (`hold`) or resumes the upstream partitions, at `backlog`; the stage stays as
    /// it was when that fails.
    fn hold(&mut self, hold: bool, backlog: Option<u64>) {
        let max = self.spec.input.repartition_max_backlog;
        if hold {
            tracing::info!(source = %self.spec.source, backlog = ?backlog, max_backlog = max, topic = %self.spec.topic, "repartition: the pool's jobs are behind in the internal topic; pausing the upstream partitions");
        } else {
            tracing::info!(source = %self.spec.source, backlog = ?backlog, "repartition: the pool's jobs caught up; resuming");
        }
        // partitions assigned later are paused until settled, then resumed unless held
        let applied = self.consumer.assignment().and_then(|assigned| {
            if hold {
                self.consumer.pause(&assigned)
            } else {
                let unsettled = self.unsettled.lock().map(|u| u.clone()).unwrap_or_default();
                let mut settled = TopicPartitionList::new();
                for e in assigned.elements() {
                    if !unsettled.contains(&e.partition()) {
                        settled.add_partition(e.topic(), e.partition());
                    }
                }
                self.consumer.resume(&settled)
            }
        });
        let now = match applied {
            Ok(()) => hold,
            Err(e) => {
                tracing::warn!(source = %self.spec.source, error = %e, "repartition: cannot pause or resume the upstream partitions");
                !hold
            }
        };
        self.stats.set_backlog(backlog, now);
    }

    /// With `until_caught_up`: whether every assigned partition reached its end (its high
    /// watermark when the stage started). When it did, the offsets to commit become the
    /// consumer's positions: past the last message, a partition may end with records
    /// that are never delivered (a transaction's commit marker, aborted records), and the
    /// other workers' stages wait for the group's committed offsets to reach the end.
    fn caught_up(&mut self) -> Result<bool, EngineError> {
        let assignment = self.consumer.assignment().map_err(|e| self.err(e))?;
        let unsettled = self.unsettled.lock().map_or(true, |u| !u.is_empty());
        if assignment.count() == 0 || unsettled || !self.buffers.values().all(|b| b.is_empty()) {
            return Ok(false);
        }
        let positions = self.consumer.position().map_err(|e| self.err(e))?;
        let mut reached = Vec::new();
        // partitions that delivered nothing: where they start is asked of the group
        let mut unknown = Vec::new();
        for e in assignment.elements() {
            let p = e.partition();
            let end = self.ends.get(&p).copied().unwrap_or(0);
            let sent = self.next.get(&p).copied();
            let position = match positions
                .find_partition(&self.upstream, p)
                .map(|x| x.offset())
            {
                Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
                _ => None,
            };
            let read = match (position, sent) {
                (None, None) if end > 0 => {
                    unknown.push(p);
                    continue;
                }
                (at, sent_to) => at.unwrap_or(0).max(sent_to.unwrap_or(0)),
            };
            if end > 0 && read < end {
                return Ok(false);
            }
            if position.is_some_and(|at| at > sent.unwrap_or(0)) {
                reached.push((p, read));
            }
        }
        if !unknown.is_empty() {
            let Some(starts) = self.start_of_unread(&unknown) else {
                return Ok(false);
            };
            for p in unknown {
                match starts.get(&p) {
                    Some(&at) if at >= self.ends.get(&p).copied().unwrap_or(0) => {
                        reached.push((p, at))
                    }
                    _ => return Ok(false),
                }
            }
        }
        // every message read was sent (the buffers are empty): the positions are committable
        self.next.extend(reached);
        Ok(true)
    }

    /// Where `partitions`, assigned and delivering nothing yet, start: the group's
    /// committed offset; without one, their end with `start_from: latest` (the stage starts
    /// after what they hold: nothing to copy, and that end is committed for the other
    /// workers' stages to see). Asked at most once a second; `None` until it is asked, or
    /// when it cannot be told.
    fn start_of_unread(&mut self, partitions: &[i32]) -> Option<HashMap<i32, u64>> {
        if self
            .unread_asked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.unread_asked = Some(Instant::now());
        let mut query = TopicPartitionList::new();
        for &p in partitions {
            query.add_partition(&self.upstream, p);
        }
        let committed = match self
            .consumer
            .committed_offsets(query, Duration::from_secs(10))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(source = %self.spec.source, error = %e, "repartition: cannot read the group's committed offsets; asking again");
                return None;
            }
        };
        let latest = self.spec.input.start_from == StartFrom::Latest;
        Some(
            committed
                .elements()
                .iter()
                .filter_map(|e| {
                    let p = e.partition();
                    match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some((p, o as u64)),
                        _ if latest => self.ends.get(&p).map(|&end| (p, end)),
                        _ => None,
                    }
                })
                .collect(),
        )
    }

    /// Sends every buffered message to the internal topic.
    fn send_all(&mut self) -> Result<(), EngineError> {
        let partitions: Vec<i32> = self
            .buffers
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(&p, _)| p)
            .collect();
        for p in partitions {
            let messages = match self.buffers.get_mut(&p) {
                Some(b) => b.take(),
                None => continue,
            };
            self.send(p, &messages)?;
        }
        Ok(())
    }

    /// Sends one upstream partition's messages, each keyed by its event's key (or, when it
    /// does not decode, by its own message key).
    fn send(&mut self, partition: i32, messages: &Messages) -> Result<(), EngineError> {
        let Some(&first) = messages.offsets.first() else {
            return Ok(());
        };
        let info = self
            .infos
            .entry(partition)
            .or_insert_with(|| {
                Arc::new(PartitionInfo {
                    source: self.spec.source.as_str().into(),
                    id: partition.max(0) as usize,
                    state_id: partition.max(0) as usize,
                    number: partition.max(0) as u32,
                    topic: Some(self.upstream.as_str().into()),
                    file: None,
                })
            })
            .clone();
        let chunk = Chunk {
            source: 0,
            partition: info,
            seq: 0,
            first_offset: first,
            resume: Resume::at(first),
            data: ChunkData::End,
        };
        let decoded = self.spec.decoder.decode_messages(&chunk, messages);
        // key bytes per decoded row: (offset, range in key_scratch)
        self.key_scratch.clear();
        let mut keyed: Vec<(u64, (usize, usize))> = Vec::new();
        if let Some(ev) = &decoded.events {
            keyed.reserve(ev.offsets.len());
            let columns = self
                .spec
                .keys
                .iter()
                .map(|k| {
                    ev.batch.column_by_name(k).cloned().ok_or_else(|| {
                        self.fault(format!("the decoded events have no key column `{k}`"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            match columns.as_slice() {
                [c] if matches!(c.data_type(), DataType::Utf8) => {
                    let strings = c.as_string::<i32>();
                    for (i, &o) in ev.offsets.iter().enumerate() {
                        let start = self.key_scratch.len();
                        if strings.is_valid(i) {
                            self.key_scratch
                                .extend_from_slice(strings.value(i).as_bytes());
                        }
                        keyed.push((o, (start, self.key_scratch.len())));
                    }
                }
                _ => {
                    let fields = columns
                        .iter()
                        .map(|c| SortField::new(c.data_type().clone()))
                        .collect();
                    let converter = RowConverter::new(fields).map_err(|e| self.err(e))?;
                    let rows = converter
                        .convert_columns(&columns)
                        .map_err(|e| self.err(e))?;
                    for (i, &o) in ev.offsets.iter().enumerate() {
                        let start = self.key_scratch.len();
                        self.key_scratch.extend_from_slice(rows.row(i).as_ref());
                        keyed.push((o, (start, self.key_scratch.len())));
                    }
                }
            }
        }
        let mut rows = keyed.iter().peekable();
        let mut value = Vec::new();
        let generation = self.generations.get(&partition).copied().unwrap_or(0);
        let last = messages.offsets.last().copied().unwrap_or(0);
        if generation != 0 && last >= 1 << envelope::OFFSET_BITS {
            return Err(self.fault(format!(
                "partition {partition} of `{}` started over and reached offset {last}: past \
                 2^{}, its sequences no longer stay above its earlier generations'; start the \
                 pool without its checkpoints",
                self.upstream,
                envelope::OFFSET_BITS
            )));
        }
        for (i, &offset) in messages.offsets.iter().enumerate() {
            while rows.peek().is_some_and(|(o, _)| *o < offset) {
                rows.next();
            }
            let key: &[u8] = match rows.peek() {
                Some((o, (s, e))) if *o == offset => &self.key_scratch[*s..*e],
                _ => messages.keys[i].map_or(&[][..], |k| messages.slice(k)),
            };
            value.clear();
            Envelope::write(
                &mut value,
                &self.upstream,
                partition.max(0) as u32,
                (offset, generation),
                messages.header_pairs(i),
                messages.slice(messages.payloads[i]),
            );
            self.producer
                .send_at(
                    &self.spec.topic,
                    Some(key),
                    Some(&value),
                    &[],
                    messages.timestamps[i],
                )
                .map_err(|e| self.err(e))?;
        }
        self.stats
            .forwarded(partition, messages.offsets.len() as u64);
        if let Some(&last) = messages.offsets.last() {
            self.next.insert(partition, last + 1);
        }
        Ok(())
    }

    /// Waits for every message sent to be acknowledged, then commits the upstream offsets
    /// after them.
    fn commit(&mut self, mode: CommitMode) -> Result<(), EngineError> {
        if self.next.is_empty() {
            return Ok(());
        }
        self.producer.flush().map_err(|e| self.err(e))?;
        let refused = self.producer.take_refused();
        if let Some(r) = refused.first() {
            return Err(self.fault(format!(
                "the repartition topic `{}` refused {} message(s): {}",
                self.spec.topic,
                refused.len(),
                r.message
            )));
        }
        // only the partitions this stage reads now: a revoked one's next owner commits it (a
        // late commit from here would move it back, over where that owner started)
        let owned = self.settled_partitions();
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in self.next.iter().filter(|(p, _)| owned.contains(p)) {
            let _ = tpl.add_partition_offset(&self.upstream, p, Offset::Offset(next as i64));
            self.committed_at.insert(p, next);
        }
        if tpl.count() == 0 {
            self.next.clear();
            return Ok(());
        }
        self.add_generations(&mut tpl);
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            // a partition revoked meanwhile: its next owner repeats a little (dropped by
            // lanes); the positions are committed again with the next commit (a revoked
            // partition's are not: see `owned`)
            tracing::warn!(source = %self.spec.source, error = %e, "repartition: offset commit failed");
            return Ok(());
        }
        self.next.clear();
        Ok(())
    }
}

/// Where a stage reading to the end stands in asking the group whether every stage is done.
struct GroupCheck {
    /// When the group's committed offsets were last asked.
    asked: Option<Instant>,
    /// When the wait was last logged.
    logged: Instant,
    /// A client of the group that does not join it (made at the first question).
    client: Option<BaseConsumer>,
}

/// The high watermark of every partition of `topic`, read by a client outside the group.
fn end_offsets(spec: &RepartitionSpec, topic: &str) -> Result<HashMap<i32, u64>, EngineError> {
    let fail = |e: weir_engine::error::Cause| {
        EngineError::source_caused(
            &spec.source,
            format!("repartition stage: cannot read the end offsets of {topic}"),
            e,
        )
    };
    let timeout = Duration::from_secs(30);
    let counts = partition_counts(
        &spec.input.brokers,
        &spec.input.properties,
        &[topic.to_string()],
        timeout,
    )
    .map_err(|e| fail(e.into()))?;
    let client = spec.client().map_err(|e| fail(e.into()))?;
    let mut ends = HashMap::new();
    for p in 0..counts.first().copied().unwrap_or(0) as i32 {
        let (low, high) = client
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| fail(e.into()))?;
        ends.insert(p, if high <= low { 0 } else { high as u64 });
    }
    Ok(ends)
}

#[cfg(test)]
mod stage_tests;

#[cfg(test)]
mod tests;
