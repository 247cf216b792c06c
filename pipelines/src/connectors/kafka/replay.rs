//! A Kafka partition's part of a replay, as the registry's opaque value.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use weir_kafka::OffsetRange;

use crate::connectors::ReplayRange;

/// The offsets a replay reads from one partition, and where its reader is.
#[derive(Debug)]
pub(crate) struct PartitionRange {
    pub range: OffsetRange,
    pub read: Arc<AtomicU64>,
}

impl ReplayRange for PartitionRange {
    fn key(&self) -> String {
        format!("{}/{}", self.range.topic, self.range.partition)
    }
    fn start(&self) -> u64 {
        self.range.start
    }
    fn end(&self) -> u64 {
        self.range.end
    }
    fn read(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }
    fn deleted_before(&self) -> Option<String> {
        self.range.deleted_before()
    }
    fn open_end(&self) -> Option<String> {
        self.range.open_end()
    }
    fn newest_ms(&self) -> Option<i64> {
        self.range.last_ms
    }
    fn describe(&self) -> String {
        let r = &self.range;
        format!(
            "{}: offsets {}..{} ({} messages; the partition ends at {})",
            self.key(),
            r.start,
            r.end,
            r.end - r.start,
            r.high
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_range_prints_as_the_replay_always_did() {
        let r = PartitionRange {
            range: OffsetRange {
                topic: "events".into(),
                partition: 3,
                start: 10,
                end: 25,
                high: 40,
                low: 0,
                closed_end: true,
                last_ms: None,
            },
            read: Arc::new(AtomicU64::new(10)),
        };
        assert_eq!(r.key(), "events/3");
        assert_eq!(r.messages(), 15);
        assert_eq!(
            r.describe(),
            "events/3: offsets 10..25 (15 messages; the partition ends at 40)"
        );
    }
}
