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
    /// The partition's first offset kept (above 0: earlier messages were deleted).
    pub low: u64,
    /// Whether the partition shows that nothing more of the range is to come: a message at
    /// or after the range's end time, or none in or after the range at all (it is empty, or
    /// its last message is older than the range's start). Else `end` is the high watermark
    /// and the partition's newest messages are in the range.
    pub closed_end: bool,
    /// The timestamp of the partition's newest message (`None`: empty, or not read).
    pub last_ms: Option<i64>,
}

impl OffsetRange {
    /// Why the range may miss messages at its start: it starts at the partition's first
    /// message kept after earlier ones were deleted (retention, delete-records).
    pub fn deleted_before(&self) -> Option<String> {
        (self.start == self.low && self.low > 0).then(|| {
            format!(
                "it starts at the partition's first message kept (offset {}): earlier ones \
                 were deleted, and some may have been in the range",
                self.low
            )
        })
    }

    /// Why the range may miss messages at its end: nothing past its end time was written
    /// yet.
    pub fn open_end(&self) -> Option<String> {
        (!self.closed_end).then(|| {
            "the partition holds no message past the range's end time yet: its last windows \
             may still be open"
                .to_string()
        })
    }
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
    // the watermarks of every partition, then their last messages' timestamps in one fetch
    let mut parts = Vec::new();
    for (topic, &count) in topics.iter().zip(counts) {
        for p in 0..count as i32 {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| err(format!("cannot read the end offsets of {topic}/{p}"), e))?;
            parts.push((topic.clone(), p, low.max(0) as u64, high.max(0) as u64));
        }
    }
    let last_ts = last_timestamps(&consumer, &parts, timeout);
    // the first offset at or after `t` in every partition, in one request
    // (the offset, and whether a message at or after t was found); where the broker's answer
    // is in doubt and its message cannot be read, `trust` says whether to take it (a start:
    // reading more than the range is safe) or the end (an end: the range is then open)
    let offsets_at = |t: i64, trust: bool| -> Result<Vec<(u64, bool)>, KafkaError> {
        let mut q = TopicPartitionList::new();
        for (topic, p, _, _) in &parts {
            q.add_partition_offset(topic, *p, Offset::Offset(t))
                .map_err(|e| err(format!("bad partition {topic}/{p}"), e))?;
        }
        let found = consumer
            .offsets_for_times(q, timeout)
            .map_err(|e| err("cannot find the offsets of a time".into(), e))?;
        let answers: Vec<Option<u64>> = parts
            .iter()
            .map(|(topic, p, low, high)| {
                match found
                    .find_partition(topic, *p)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::End)
                {
                    Offset::Offset(o) if o >= 0 && high > low => {
                        Some((o as u64).clamp(*low, *high)).filter(|o| o < high)
                    }
                    _ => None,
                }
            })
            .collect();
        // A broker that answers the log start for a time past every message (tansu) is told
        // apart by the time of the message answered, read where the last message is older
        // than t (a late one, or that broker): an answer past the log start, or one whose
        // message is at or after t, is right
        let doubtful: Vec<Option<u64>> = parts
            .iter()
            .zip(&answers)
            .zip(&last_ts)
            .map(|(((_, _, low, _), answer), last)| {
                answer.filter(|o| o == low && last.is_some_and(|ts| ts < t))
            })
            .collect();
        let checked = if doubtful.iter().any(Option::is_some) {
            timestamps_at(&consumer, &parts, &doubtful, timeout)
        } else {
            vec![None; parts.len()]
        };
        Ok(answers
            .iter()
            .zip(parts.iter().zip(doubtful.iter().zip(&checked)))
            .map(|(answer, ((_, _, _, high), (doubt, ts)))| match answer {
                Some(o) if doubt.is_none() || ts.map_or(trust, |ts| ts >= t) => (*o, true),
                _ => (*high, false),
            })
            .collect())
    };
    let starts = offsets_at(from_ms.max(0), true)?;
    let ends = offsets_at(to_ms.max(0), false)?;
    Ok(parts
        .into_iter()
        .zip(last_ts)
        .zip(starts.into_iter().zip(ends))
        .map(
            |(((topic, partition, low, high), last), ((start, _), (end, end_found)))| {
                // nothing in or after the range: empty, or no message at or after its start
                let none_in_range = high <= low || start >= high;
                OffsetRange {
                    topic,
                    partition,
                    start,
                    end: end.max(start),
                    high,
                    low,
                    closed_end: end_found || none_in_range,
                    last_ms: last,
                }
            },
        )
        .collect())
}

/// The Kafka timestamp of each partition's last message (`None` when empty or unread), read
/// in one fetch of every partition at `high - 1`.
fn last_timestamps(
    consumer: &BaseConsumer,
    parts: &[(String, i32, u64, u64)],
    timeout: Duration,
) -> Vec<Option<i64>> {
    let at: Vec<Option<u64>> = parts
        .iter()
        .map(|(_, _, low, high)| (high > low).then(|| high - 1))
        .collect();
    timestamps_at(consumer, parts, &at, timeout)
}

/// The Kafka timestamp of the first message at or after offset `at[i]` of each partition
/// `parts[i]` (`None` where `at` is, or when unread), read in one fetch.
fn timestamps_at(
    consumer: &BaseConsumer,
    parts: &[(String, i32, u64, u64)],
    at: &[Option<u64>],
    timeout: Duration,
) -> Vec<Option<i64>> {
    let mut out = vec![None; parts.len()];
    let mut tpl = TopicPartitionList::new();
    for ((topic, p, _, _), offset) in parts.iter().zip(at) {
        if let Some(o) = offset {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o as i64));
        }
    }
    if tpl.count() == 0 || consumer.assign(&tpl).is_err() {
        return out;
    }
    let mut left = tpl.count();
    let deadline = std::time::Instant::now() + timeout;
    while left > 0 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let at = parts
                .iter()
                .position(|(t, p, _, _)| t == m.topic() && *p == m.partition());
            if let Some(i) = at {
                if out[i].is_none() {
                    out[i] = m.timestamp().to_millis();
                    left -= 1;
                }
            }
        }
    }
    let _ = consumer.unassign();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range that starts at the first message kept after earlier ones were deleted, or that
    /// found no message past its end time, may miss messages; one inside the log does not.
    #[test]
    fn a_range_says_when_it_may_miss_messages() {
        let range = |start, end, low, closed_end| OffsetRange {
            topic: "t".into(),
            partition: 0,
            start,
            end,
            high: 100,
            low,
            closed_end,
            last_ms: None,
        };
        let incomplete = |r: OffsetRange| r.deleted_before().or(r.open_end());
        assert_eq!(incomplete(range(10, 20, 0, true)), None);
        // the log starts at 0: nothing was deleted before the range
        assert_eq!(incomplete(range(0, 20, 0, true)), None);
        let deleted = range(5, 20, 5, true).deleted_before().unwrap();
        assert!(deleted.contains("offset 5"), "{deleted}");
        assert_eq!(incomplete(range(6, 20, 5, true)), None);
        let open = range(10, 100, 0, false).open_end().unwrap();
        assert!(open.contains("no message past the range's end"), "{open}");
    }
}
