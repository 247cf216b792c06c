//! The repartition stage's backpressure: how many messages of the internal topic the pool's
//! jobs have not checkpointed yet.
//!
//! - The jobs' readers commit, with the pool's group, the internal offsets their complete
//!   checkpoints continue from; the backlog is the internal topic's high watermarks minus
//!   those offsets.
//! - A partition without one counts from the end it had at the first measure, which the
//!   stage waits for before it reads anything (up to [`FIRST_MEASURE_WAIT`]; a broker that
//!   cannot answer that long lets it go on, and the first measure that succeeds later leaves
//!   out what it sent meanwhile): the messages before may all be skipped by the jobs
//!   (another topic's, left by an earlier pool of the same pipeline), which then never commit
//!   it, and counting them would hold the stage back for good.
//! - A stage over its `repartition_max_backlog` pauses reading the upstream topic until the
//!   jobs catch up, so that a pool whose jobs are held back (a sink down, a slow worker) does
//!   not keep copying its whole input into the internal topic.
//!
//! The measures run on a thread of their own ([`Monitor`]), so that the stage's poll loop
//! never waits on the broker for them; the stage reads the newest one and adds what it sent
//! that the broker had not acknowledged when the measure began (messages waiting in its
//! producer are in no end yet). A failed measure leaves the last good one in place for up to
//! 30 s, so that a paused stage does not resume on a broker's hiccup.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weir_engine::stage_stats::StageStats;

use super::RepartitionSpec;
use crate::{partition_counts, KafkaError};

/// How often the backlog and the upstream lag are measured.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// How long one request of a measure may take.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed measure leaves the last good one in place (a stage paused on it stays
/// paused meanwhile); after that, a backlog that cannot be measured does not hold it back.
const KEEP_LAST_GOOD: Duration = Duration::from_secs(30);
/// How long the stage waits for the first measure before it reads anything.
pub(super) const FIRST_MEASURE_WAIT: Duration = Duration::from_secs(60);

/// The newest measure of the pool's backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Measure {
    /// Messages of the internal topic the jobs have not checkpointed; `None` before the first
    /// measure or when the last one failed.
    pub backlog: Option<u64>,
    /// How many of the stage's messages the broker had settled when the measure started:
    /// the internal topic's ends held those, and any later one counts on top (a message
    /// queued in the producer is in no end yet).
    pub settled_at: u64,
}

impl Measure {
    /// The backlog now: the measure's, plus what the stage sent that the measure may not
    /// have seen (the jobs' commits only lower it); `forwarded` is what the stage has sent
    /// so far. It may count a message acknowledged during the measure twice: the safe side.
    pub(super) fn estimate(&self, forwarded: u64) -> Option<u64> {
        self.backlog
            .map(|b| b + forwarded.saturating_sub(self.settled_at))
    }
}

/// A thread measuring, every second, the pool's backlog in the internal topic and the lag of
/// the upstream partitions the stage is assigned (into its [`StageStats`]).
pub(super) struct Monitor {
    latest: Arc<Mutex<Measure>>,
    /// Whether a measure succeeded yet.
    measured: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts measuring for the stage of `spec` reading `upstream`, whose assigned upstream
    /// partitions are `assigned`.
    pub(super) fn start(
        spec: &RepartitionSpec,
        upstream: &str,
        stats: Arc<StageStats>,
        assigned: Arc<Mutex<BTreeSet<i32>>>,
    ) -> std::io::Result<Self> {
        let latest = Arc::new(Mutex::new(Measure::default()));
        let measured = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut measurer = Measurer {
            spec: spec.clone(),
            upstream: upstream.to_string(),
            clients: None,
            partitions: 0,
            baseline: HashMap::new(),
        };
        let (out, halt, done) = (latest.clone(), stop.clone(), measured.clone());
        let thread = std::thread::Builder::new()
            .name("weir-repartition-monitor".into())
            .spawn(move || {
                let mut failing = false;
                // the first measure at once: the stage waits for it before reading
                let mut next = Instant::now();
                let mut last_good = None;
                loop {
                    while !halt.load(Ordering::Relaxed) && Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if halt.load(Ordering::Relaxed) {
                        break;
                    }
                    next = Instant::now() + MEASURE_EVERY;
                    let measure = measurer.measure(&stats, &mut failing);
                    let keep = measure.backlog.is_none()
                        && last_good.is_some_and(|t: Instant| t.elapsed() < KEEP_LAST_GOOD);
                    if !keep {
                        if let Ok(mut m) = out.lock() {
                            *m = measure;
                        }
                    }
                    if measure.backlog.is_some() {
                        last_good = Some(Instant::now());
                        done.store(true, Ordering::Release);
                    }
                    let partitions: Vec<i32> = assigned
                        .lock()
                        .map(|a| a.iter().copied().collect())
                        .unwrap_or_default();
                    match measurer.upstream_lag(&partitions) {
                        Ok(lags) => lags.into_iter().for_each(|(p, l)| stats.set_lag(p, l)),
                        Err(e) => {
                            tracing::debug!(error = %e, "repartition: cannot measure the upstream lag")
                        }
                    }
                }
            })?;
        Ok(Monitor {
            latest,
            measured,
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until a measure succeeded (true), `limit` passed or `stop` is set (false).
    pub(super) fn wait_for_a_measure(&self, limit: Duration, stop: &AtomicBool) -> bool {
        let started = Instant::now();
        while !self.measured.load(Ordering::Acquire) {
            if started.elapsed() >= limit || stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// The newest measure.
    pub(super) fn latest(&self) -> Measure {
        self.latest.lock().map(|m| *m).unwrap_or_default()
    }
}

impl Drop for Monitor {
    /// Stops measuring (within a request's timeout).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The monitor's clients and what it keeps between measures.
struct Measurer {
    spec: RepartitionSpec,
    upstream: String,
    /// Clients of the pool's group and of the stage's group, which do not join them; created
    /// at the first measure.
    clients: Option<(BaseConsumer, BaseConsumer)>,
    /// The internal topic's partition count.
    partitions: i32,
    /// Each internal partition's end at the first measure: where one without a commit counts
    /// from.
    baseline: HashMap<i32, i64>,
}

impl Measurer {
    /// Creates the clients when missing.
    fn connect(&mut self) -> Result<(), KafkaError> {
        if self.clients.is_none() {
            let spec = &self.spec;
            let counts = partition_counts(
                &spec.input.brokers,
                &spec.input.properties,
                std::slice::from_ref(&spec.topic),
                MEASURE_TIMEOUT,
            )?;
            self.partitions = counts.first().copied().unwrap_or(0) as i32;
            let fail = |e| client_error(spec, "cannot create a client", e);
            // the jobs' group (the source's, which reads the internal topic), and the stage's
            let pool = spec.client_of(&spec.input.group_id).map_err(fail)?;
            self.clients = Some((pool, spec.client().map_err(fail)?));
        }
        Ok(())
    }

    /// One measure of the backlog; `failing` keeps whether the last one failed, so that a
    /// failure is logged once.
    fn measure(&mut self, stats: &StageStats, failing: &mut bool) -> Measure {
        let settled_at = stats.settled.load(Ordering::Relaxed);
        let backlog = match self.backlog() {
            Ok(b) => {
                *failing = false;
                Some(b)
            }
            Err(e) => {
                if !*failing {
                    tracing::warn!(source = %self.spec.source, error = %e, "repartition: cannot measure the pool's backlog; not holding back until it can");
                }
                *failing = true;
                None
            }
        };
        Measure {
            backlog,
            settled_at,
        }
    }

    /// Messages of the internal topic the pool's jobs have not checkpointed.
    fn backlog(&mut self) -> Result<u64, KafkaError> {
        self.connect()?;
        let Some((pool, _)) = &self.clients else {
            return Ok(0);
        };
        let topic = &self.spec.topic;
        let fail = |e| client_error(&self.spec, "cannot read the internal topic's offsets", e);
        let all: Vec<i32> = (0..self.partitions).collect();
        let ends = offsets(pool, topic, &all, Offset::End).map_err(fail)?;
        // a partition left out (an error, or no offset) would be counted as empty, and a
        // baseline without it would adopt its end later, with the stage's messages in it
        let missing: Vec<i32> = all
            .iter()
            .copied()
            .filter(|p| !ends.contains_key(p))
            .collect();
        if !missing.is_empty() {
            return Err(KafkaError::Partial {
                brokers: self.spec.input.brokers.clone(),
                what: "cannot read the internal topic's ends".into(),
                partitions: vec![(topic.clone(), missing)],
            });
        }
        let committed = committed(pool, topic, &all).map_err(fail)?;
        if self.baseline.is_empty() {
            self.baseline = ends.clone();
        }
        Ok(backlog_of(&ends, &committed, &self.baseline))
    }

    /// The lag of upstream partitions `partitions`: their end minus the stage's committed
    /// offset (it commits twice a second), else minus their first offset.
    fn upstream_lag(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, KafkaError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        self.connect()?;
        let Some((_, stage)) = &self.clients else {
            return Ok(Vec::new());
        };
        let upstream = &self.upstream;
        let fail = |e| {
            client_error(
                &self.spec,
                "cannot read the upstream partitions' offsets",
                e,
            )
        };
        let ends = offsets(stage, upstream, partitions, Offset::End).map_err(fail)?;
        let mut at = committed(stage, upstream, partitions).map_err(fail)?;
        if partitions.iter().any(|p| !at.contains_key(p)) {
            for (p, first) in
                offsets(stage, upstream, partitions, Offset::Beginning).map_err(fail)?
            {
                at.entry(p).or_insert(first);
            }
        }
        Ok(partitions
            .iter()
            .map(|p| {
                let from = at.get(p).copied().unwrap_or(0);
                (*p, ends.get(p).map_or(0, |e| (e - from).max(0)))
            })
            .collect())
    }
}

/// The first offset (`Offset::Beginning`) or end (`Offset::End`) of `partitions` of `topic`.
fn offsets(
    client: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    at: Offset,
) -> Result<HashMap<i32, i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, at)?;
    }
    Ok(offsets_of(&client.offsets_for_times(tpl, MEASURE_TIMEOUT)?))
}

/// The offsets `client`'s group committed on `partitions` of `topic`.
fn committed(
    client: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    Ok(offsets_of(&client.committed_offsets(tpl, MEASURE_TIMEOUT)?))
}

/// The valid offsets of a list, by partition.
fn offsets_of(tpl: &TopicPartitionList) -> HashMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// The messages between each partition's committed offset (else its `baseline` end, else 0)
/// and its end.
fn backlog_of(
    ends: &HashMap<i32, i64>,
    committed: &HashMap<i32, i64>,
    baseline: &HashMap<i32, i64>,
) -> u64 {
    ends.iter()
        .map(|(p, &end)| {
            let from = committed.get(p).or(baseline.get(p)).copied().unwrap_or(0);
            end.saturating_sub(from).max(0) as u64
        })
        .sum()
}

/// A failed request of a measure, with what it was.
fn client_error(spec: &RepartitionSpec, what: &str, e: rdkafka::error::KafkaError) -> KafkaError {
    KafkaError::Client {
        brokers: spec.input.brokers.clone(),
        what: what.to_string(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::tests::{produce_keyed, reading_to_the_end};
    use crate::source::KafkaSourceConfig;
    use rdkafka::mocking::MockCluster;
    use weir_engine::job::Decode;
    use weir_engine::{Chunk, Decoded, Messages, SharedBytes};

    /// The monitor never decodes.
    struct NoDecoder;
    impl Decode for NoDecoder {
        fn decode(&self, _: &Chunk, _: &SharedBytes) -> Decoded {
            unreachable!("the monitor does not decode")
        }
        fn decode_messages(&self, _: &Chunk, _: &Messages) -> Decoded {
            unreachable!("the monitor does not decode")
        }
    }

    /// A stage that starts fast copies thousands of messages before a late measure could
    /// answer; the stage therefore waits for the first (the baseline), and only what was in
    /// the internal topic before the stage is left out of the backlog.
    #[test]
    fn the_baseline_is_measured_before_the_stage_sends_anything() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("up", 1, 1).unwrap();
        mock.create_topic("internal", 2, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        // an earlier pool's messages, which the jobs skip and never commit
        produce_keyed(&brokers, "internal", 7);
        let spec = RepartitionSpec {
            source: "events".into(),
            input: KafkaSourceConfig {
                group_id: "pool".into(),
                until_caught_up: false,
                repartition_max_backlog: 10,
                ..reading_to_the_end(&brokers, "up")
            },
            topic: "internal".into(),
            keys: vec![],
            decoder: Arc::new(NoDecoder),
            until_caught_up: false,
        };
        let stats = Arc::new(StageStats::new("events", "up"));
        let monitor = Monitor::start(
            &spec,
            "up",
            stats.clone(),
            Arc::new(Mutex::new(BTreeSet::new())),
        )
        .unwrap();
        assert!(monitor.wait_for_a_measure(Duration::from_secs(10), &AtomicBool::new(false)));
        assert_eq!(monitor.latest().backlog, Some(0));
        // the stage sends 5: they count at once, and in the monitor's next measure
        produce_keyed(&brokers, "internal", 5);
        stats.forwarded.fetch_add(5, Ordering::Relaxed);
        assert_eq!(monitor.latest().estimate(5), Some(5));
        stats.settled.fetch_add(5, Ordering::Relaxed);
        let started = Instant::now();
        while monitor.latest().settled_at < 5 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no second measure"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(monitor.latest().estimate(5), Some(5));
    }

    #[test]
    fn the_backlog_counts_from_the_committed_offset_else_the_first_measure() {
        let m = |v: &[(i32, i64)]| v.iter().copied().collect::<HashMap<_, _>>();
        // partition 0 committed at 40 of 100; partition 1 never committed, 10 at the start
        assert_eq!(
            backlog_of(&m(&[(0, 100), (1, 30)]), &m(&[(0, 40)]), &m(&[(1, 10)])),
            60 + 20
        );
        // a committed offset past a (reset) end counts nothing
        assert_eq!(backlog_of(&m(&[(0, 5)]), &m(&[(0, 9)]), &m(&[])), 0);
    }

    #[test]
    fn what_the_broker_had_not_settled_at_a_measure_counts_on_top_of_it() {
        // 40 settled when the measure started: 100 behind then; 25 sent since count on top,
        // as do 10 sent before that the broker had not acknowledged yet
        let m = Measure {
            backlog: Some(100),
            settled_at: 40,
        };
        assert_eq!(m.estimate(40), Some(100));
        assert_eq!(m.estimate(50), Some(110));
        assert_eq!(m.estimate(75), Some(135));
        assert_eq!(Measure::default().estimate(1_000), None);
    }
}
