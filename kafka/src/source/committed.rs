//! The group's committed offsets, read on a thread of their own.
//!
//! A pooled worker reading until caught up asks every second whether the partitions it waits
//! for were read to their end elsewhere (the group's committed offsets reached their ends).
//! Read on the reader's thread, each `rd_kafka_committed` blocked it for seconds while the
//! group rebalanced (5-6 s per call on librdkafka's mock cluster): the reader then served no
//! rebalance callback, and the whole group's rebalance waited for it. The reads go to a
//! client of the group that does not join it, on its own thread; the reader takes the latest
//! answer when there is one and never waits.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::client_config;

/// How long one read of committed offsets may take before it is given up (and asked again).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// (topic, partition) → committed offset.
pub(super) type Committed = HashMap<(String, i32), u64>;

/// Reads committed offsets of a consumer group on a thread of its own, one request at a time.
pub(super) struct CommittedWatch {
    ask: SyncSender<Vec<(String, i32)>>,
    answer: Arc<Mutex<Option<Committed>>>,
}

impl CommittedWatch {
    /// A watch of group `group` on `brokers` (with the source's client `properties`).
    pub(super) fn start(
        brokers: &str,
        properties: &[(String, String)],
        group: &str,
        source: &str,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let client: BaseConsumer = client_config(brokers, properties)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        // one request waits at most: asking while one runs is refused (the caller asks again)
        let (ask, requests) = sync_channel::<Vec<(String, i32)>>(1);
        let answer = Arc::new(Mutex::new(None));
        let out = answer.clone();
        let source = source.to_string();
        std::thread::Builder::new()
            .name("kafka-committed".into())
            .spawn(move || {
                // ends when the watch is dropped (its sender with it)
                for partitions in requests {
                    if let Some(c) = read(&client, &partitions, &source) {
                        if let Ok(mut a) = out.lock() {
                            *a = Some(c);
                        }
                    }
                }
            })
            .map_err(|e| {
                rdkafka::error::KafkaError::ClientCreation(format!(
                    "cannot start a thread to read committed offsets: {e}"
                ))
            })?;
        Ok(CommittedWatch { ask, answer })
    }

    /// Asks for the committed offsets of `partitions`; false while an earlier request runs.
    pub(super) fn ask(&self, partitions: Vec<(String, i32)>) -> bool {
        match self.ask.try_send(partitions) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// The answer to the last request answered since the previous call, if any.
    pub(super) fn take(&self) -> Option<Committed> {
        self.answer.lock().ok()?.take()
    }
}

/// The committed offsets of `partitions` in `client`'s group (none on failure: the caller
/// asks again later). Blocks until the group's coordinator answers.
pub(super) fn read<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    partitions: &[(String, i32)],
    source: &str,
) -> Option<Committed> {
    let mut tpl = TopicPartitionList::new();
    for (topic, p) in partitions {
        tpl.add_partition(topic, *p);
    }
    match client.committed_offsets(tpl, READ_TIMEOUT) {
        Ok(c) => Some(
            c.elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) if o >= 0 => {
                        Some(((e.topic().to_string(), e.partition()), o as u64))
                    }
                    _ => None,
                })
                .collect(),
        ),
        Err(e) => {
            tracing::warn!(source, error = %e, "kafka: cannot read the group's committed offsets; will try again");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::CommitMode;
    use rdkafka::mocking::MockCluster;
    use std::time::Instant;

    #[test]
    fn asking_never_waits_and_the_answer_comes_later() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 2, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let committer: BaseConsumer = client_config(&brokers, &[])
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("t", 0, Offset::Offset(7))
            .unwrap();
        committer.commit(&offsets, CommitMode::Sync).unwrap();

        let watch = CommittedWatch::start(&brokers, &[], "g", "s").unwrap();
        let asked = Instant::now();
        assert!(watch.ask(vec![("t".into(), 0), ("t".into(), 1)]));
        // the read goes to the broker on the watch's thread, not the caller's
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "asking waited {:?}",
            asked.elapsed()
        );
        let answer = loop {
            if let Some(a) = watch.take() {
                break a;
            }
            assert!(asked.elapsed() < Duration::from_secs(20), "no answer");
            std::thread::sleep(Duration::from_millis(20));
        };
        // partition 1 has no committed offset
        assert_eq!(answer, HashMap::from([(("t".to_string(), 0), 7)]));
        assert!(watch.take().is_none(), "an answer is taken once");
    }
}
