//! Offset ranges of a time range, for replays: where each partition's messages of a time range
//! start and end, from the brokers' offsets-for-times, checked against the partition's high
//! watermark and the timestamp of its last message (some brokers, tansu among them, answer a
//! time past the last message with offset 0 instead of the end, which would turn a bounded
//! replay into a re-read of the whole partition).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::{client_config, KafkaError};

/// The offsets `[start, end)` of one partition's messages for a time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub start: u64,
    pub end: u64,
    /// The partition's high watermark when the range was resolved.
    pub high: u64,
}

/// For every partition of `topics` (with `counts` partitions each), the offsets of the
/// messages whose Kafka timestamps are in `[from_ms, to_ms)`: `start` is the first message
/// at or after `from_ms`, `end` the first at or after `to_ms` (the high watermark when none
/// is), both within `[low, high]`.
pub fn offset_ranges(
    brokers: &str,
    properties: &[(String, String)],
    topics: &[String],
    counts: &[usize],
    from_ms: i64,
    to_ms: i64,
    timeout: Duration,
) -> Result<Vec<OffsetRange>, KafkaError> {
    let err = |what: String, source| KafkaError::Client {
        brokers: brokers.to_string(),
        what,
        source: Box::new(source),
    };
    let consumer: BaseConsumer = client_config(brokers, properties)
        .set("enable.auto.commit", "false")
        .set("group.id", "weir-offset-ranges")
        .create()
        .map_err(|e| err("cannot create a client".into(), e))?;
    let mut out = Vec::new();
    for (topic, &count) in topics.iter().zip(counts) {
        for p in 0..count as i32 {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| err(format!("cannot read the end offsets of {topic}/{p}"), e))?;
            let (low, high) = (low.max(0) as u64, high.max(0) as u64);
            let last_ts = if high > low {
                last_timestamp(&consumer, topic, p, high - 1, timeout)
            } else {
                None
            };
            let at = |t: i64| -> Result<u64, KafkaError> {
                // every message is older than t: the answer is the end, whatever the broker says
                if high <= low || last_ts.is_some_and(|ts| ts < t) {
                    return Ok(high);
                }
                let mut q = TopicPartitionList::new();
                q.add_partition_offset(topic, p, Offset::Offset(t))
                    .map_err(|e| err(format!("bad partition {topic}/{p}"), e))?;
                let found = consumer.offsets_for_times(q, timeout).map_err(|e| {
                    err(
                        format!("cannot find the offsets of a time in {topic}/{p}"),
                        e,
                    )
                })?;
                let o = found
                    .elements()
                    .first()
                    .map(|e| e.offset())
                    .unwrap_or(Offset::End);
                Ok(match o {
                    Offset::Offset(o) if o >= 0 => (o as u64).clamp(low, high),
                    _ => high,
                })
            };
            let start = at(from_ms)?;
            let end = at(to_ms)?.max(start);
            out.push(OffsetRange {
                topic: topic.clone(),
                partition: p,
                start,
                end,
                high,
            });
        }
    }
    Ok(out)
}

/// The Kafka timestamp of the message at `offset`, when it can be read.
fn last_timestamp(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: u64,
    timeout: Duration,
) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset as i64))
        .ok()?;
    consumer.assign(&tpl).ok()?;
    let deadline = std::time::Instant::now() + timeout;
    let mut ts = None;
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.partition() == partition && m.topic() == topic => {
                ts = m.timestamp().to_millis();
                break;
            }
            _ => {}
        }
    }
    let _ = consumer.unassign();
    ts
}
