//! The repartition stage's backpressure: how many messages of the internal topic the pool's
//! jobs have not checkpointed yet. The jobs' readers commit, with the pool's group, the
//! internal offsets their complete checkpoints continue from (their slowest lane's); the
//! backlog is the internal topic's high watermarks minus those offsets. A partition without
//! one counts from the end it had at the stage's first measure: the messages before may all
//! be skipped by the jobs (another topic's, left by an earlier pool of the same pipeline),
//! which then never commit it, and counting them would hold the stage back for good. A stage over its `repartition_max_backlog` pauses
//! reading the upstream topic until the jobs catch up, so that a pool whose jobs are held back
//! (a sink down, a slow worker) does not keep copying its whole input into the internal topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::RepartitionSpec;
use crate::{client_config, partition_counts, KafkaError};

/// How often the stage measures the backlog.
pub(super) const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// How long one measure may take (the stage polls nothing meanwhile).
const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);

/// Measures the backlog of one internal topic for the pool's group.
pub(super) struct Backlog {
    topic: String,
    /// A client of the pool's group that does not join it, created at the first measure.
    client: Option<BaseConsumer>,
    partitions: i32,
    last: Option<Instant>,
    /// Each partition's end at the first measure: where one without a commit counts from.
    baseline: HashMap<i32, i64>,
}

impl Backlog {
    /// The backlog of `spec`'s internal topic.
    pub(super) fn new(spec: &RepartitionSpec) -> Self {
        Backlog {
            topic: spec.topic.clone(),
            client: None,
            partitions: 0,
            last: None,
            baseline: HashMap::new(),
        }
    }

    /// Whether a measure is due.
    pub(super) fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= MEASURE_EVERY)
    }

    /// Messages of the internal topic the pool's jobs have not checkpointed.
    pub(super) fn measure(&mut self, spec: &RepartitionSpec) -> Result<u64, KafkaError> {
        self.last = Some(Instant::now());
        if self.client.is_none() {
            let counts = partition_counts(
                &spec.input.brokers,
                &spec.input.properties,
                std::slice::from_ref(&self.topic),
                MEASURE_TIMEOUT,
            )?;
            self.partitions = counts.first().copied().unwrap_or(0) as i32;
            // the jobs' group: the source's, which reads the internal topic
            let client: BaseConsumer = client_config(&spec.input.brokers, &spec.input.properties)
                .set("enable.auto.commit", "false")
                .set("group.id", &spec.input.group_id)
                .create()
                .map_err(|e| client_error(spec, "cannot create a client", e))?;
            self.client = Some(client);
        }
        let Some(client) = &self.client else {
            return Ok(0);
        };
        let all: Vec<i32> = (0..self.partitions).collect();
        let ends = offsets(client, &self.topic, &all, Offset::End)
            .map_err(|e| client_error(spec, "cannot read the internal topic's offsets", e))?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = client
            .committed_offsets(tpl, MEASURE_TIMEOUT)
            .map_err(|e| client_error(spec, "cannot read the pool's committed offsets", e))?;
        if self.baseline.is_empty() {
            self.baseline = ends.clone();
        }
        Ok(backlog_of(&ends, &offsets_of(&committed), &self.baseline))
    }

    /// The lag of each upstream partition `consumer` (the stage's) is assigned: its end
    /// minus the stage's position (else its group's committed offset, else 0).
    pub(super) fn upstream_lag<C: rdkafka::consumer::ConsumerContext>(
        &self,
        spec: &RepartitionSpec,
        consumer: &BaseConsumer<C>,
        upstream: &str,
    ) -> Result<Vec<(i32, i64)>, KafkaError> {
        let Some(client) = &self.client else {
            return Ok(Vec::new());
        };
        let fail = |e| client_error(spec, "cannot read the upstream partitions' offsets", e);
        let assigned = consumer.assignment().map_err(fail)?;
        let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let ends = offsets(client, upstream, &partitions, Offset::End).map_err(fail)?;
        let positions = offsets_of(&consumer.position().map_err(fail)?);
        let committed = offsets_of(
            &consumer
                .committed_offsets(assigned, MEASURE_TIMEOUT)
                .map_err(fail)?,
        );
        Ok(partitions
            .iter()
            .map(|p| {
                let at = positions.get(p).or(committed.get(p)).copied().unwrap_or(0);
                (*p, ends.get(p).map_or(0, |e| (e - at).max(0)))
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

/// A failed request of the measure, with what it was.
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
}
