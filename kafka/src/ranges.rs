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
        // the end of a partition is an answer (nothing there: its last offset may be a
        // transaction marker), told apart from a read that did not finish in time
        .set("enable.partition.eof", "true")
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
    let unread = |what: &str, stamps: &[Stamp]| {
        let mut missing: Vec<(String, Vec<i32>)> = Vec::new();
        for ((topic, p, _, _), _) in parts
            .iter()
            .zip(stamps)
            .filter(|(_, s)| **s == Stamp::Unread)
        {
            match missing.last_mut().filter(|(t, _)| t == topic) {
                Some((_, ps)) => ps.push(*p),
                None => missing.push((topic.clone(), vec![*p])),
            }
        }
        (!missing.is_empty()).then(|| KafkaError::Partial {
            brokers: brokers.to_string(),
            what: format!(
                "cannot read the timestamp of {what} within {timeout:?} (the broker is slow or \
                 unreachable, or a transaction left open holds the partition's end; try the \
                 replay again)"
            ),
            partitions: missing,
        })
    };
    // (a last message not read in time, behind a transaction left open or a slow broker, is
    // not known: the answers are then checked against their own messages)
    let last_ts: Vec<Option<i64>> = last_timestamps(&consumer, &parts, timeout)
        .iter()
        .map(Stamp::millis)
        .collect();
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
        // than t (a late one, or that broker) or its time is not known (the last offset is
        // a transaction marker): an answer past the log start, or one whose message is at
        // or after t, is right. A time that cannot be read fails the range: taken as it was,
        // a replay past the topic's end read every message of a partition.
        let doubtful: Vec<Option<u64>> = parts
            .iter()
            .zip(&answers)
            .zip(&last_ts)
            .map(|(((_, _, low, _), answer), last)| {
                answer.filter(|o| o == low && last.is_none_or(|ts| ts < t))
            })
            .collect();
        let checked = if doubtful.iter().any(Option::is_some) {
            timestamps_at(&consumer, &parts, &doubtful, timeout)
        } else {
            vec![Stamp::Nothing; parts.len()]
        };
        if let Some(e) = unread("the message a time's offset points at", &checked) {
            return Err(e);
        }
        Ok(answers
            .iter()
            .zip(parts.iter().zip(doubtful.iter().zip(&checked)))
            .map(
                |(answer, ((_, _, _, high), (doubt, ts)))| match (answer, ts) {
                    (Some(o), _) if doubt.is_none() => (*o, true),
                    (Some(o), Stamp::At(Some(ts))) if *ts >= t => (*o, true),
                    // (a message without a time, or none at or after the answer: only markers)
                    (Some(o), Stamp::At(None) | Stamp::Nothing) if trust => (*o, true),
                    _ => (*high, false),
                },
            )
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

/// What a read of the message at an offset found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// A message, with its Kafka timestamp (`None`: it has none).
    At(Option<i64>),
    /// Not asked, or no message at or after the offset (the partition's end).
    Nothing,
    /// No answer in time.
    Unread,
}

impl Stamp {
    fn millis(&self) -> Option<i64> {
        match self {
            Stamp::At(ts) => *ts,
            _ => None,
        }
    }
}

/// The Kafka timestamp of each partition's last message, read in one fetch of every
/// partition at `high - 1` ([`Stamp::Nothing`] for an empty partition).
fn last_timestamps(
    consumer: &BaseConsumer,
    parts: &[(String, i32, u64, u64)],
    timeout: Duration,
) -> Vec<Stamp> {
    let at: Vec<Option<u64>> = parts
        .iter()
        .map(|(_, _, low, high)| (high > low).then(|| high - 1))
        .collect();
    timestamps_at(consumer, parts, &at, timeout)
}

/// The Kafka timestamp of the first message at or after offset `at[i]` of each partition
/// `parts[i]` ([`Stamp::Nothing`] where `at` is `None`), read in one fetch per topic (the
/// end of a partition names no topic), each within `timeout` (a slow topic leaves the next
/// one its own time).
fn timestamps_at(
    consumer: &BaseConsumer,
    parts: &[(String, i32, u64, u64)],
    at: &[Option<u64>],
    timeout: Duration,
) -> Vec<Stamp> {
    let mut out: Vec<Stamp> = at
        .iter()
        .map(|o| {
            if o.is_some() {
                Stamp::Unread
            } else {
                Stamp::Nothing
            }
        })
        .collect();
    let mut topics: Vec<&str> = parts.iter().map(|(t, _, _, _)| t.as_str()).collect();
    topics.dedup();
    for topic in topics {
        let deadline = std::time::Instant::now() + timeout;
        let mut tpl = TopicPartitionList::new();
        for ((t, p, _, _), offset) in parts.iter().zip(at) {
            if let (true, Some(o)) = (t == topic, offset) {
                let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o as i64));
            }
        }
        if tpl.count() == 0 || consumer.assign(&tpl).is_err() {
            continue;
        }
        let slot = |p: i32| parts.iter().position(|(t, q, _, _)| t == topic && *q == p);
        let mut left = tpl.count();
        while left > 0 && std::time::Instant::now() < deadline {
            let found = match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.topic() == topic => {
                    slot(m.partition()).map(|i| (i, Stamp::At(m.timestamp().to_millis())))
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    slot(p).map(|i| (i, Stamp::Nothing))
                }
                _ => None,
            };
            if let Some((i, stamp)) = found {
                if out[i] == Stamp::Unread {
                    out[i] = stamp;
                    left -= 1;
                }
            }
        }
        let _ = consumer.unassign();
    }
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
