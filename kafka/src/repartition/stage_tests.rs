//! The stage against librdkafka's mock cluster: reading to the end.

use super::*;
use crate::source::tests::{produce_keyed, reading_to_the_end};
use rdkafka::mocking::MockCluster;
use weir_engine::{Decoded, SharedBytes};

/// A decoder for a stage that must copy nothing.
struct NothingToDecode;
impl Decode for NothingToDecode {
    fn decode(&self, _: &Chunk, _: &SharedBytes) -> Decoded {
        unreachable!("nothing is copied")
    }
    fn decode_messages(&self, _: &Chunk, _: &Messages) -> Decoded {
        unreachable!("nothing is copied")
    }
}

/// Runs a stage reading `topic` (3 partitions, with 300 messages) to its end from
/// `start_from`, after `before` ran on the stage's group; asserts it ends within a minute
/// and leaves the group's committed offsets at the ends.
fn stage_reads_to_the_end(topic: &str, start_from: StartFrom, before: impl FnOnce(&BaseConsumer)) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(topic, 3, 1).unwrap();
    // (the mock cluster does not answer CreateTopics)
    let internal = format!("{topic}-internal");
    mock.create_topic(&internal, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, topic, 300);
    let spec = RepartitionSpec {
        source: "s".into(),
        input: KafkaSourceConfig {
            start_from,
            ..reading_to_the_end(&brokers, topic)
        },
        topic: internal,
        keys: vec!["k".into()],
        decoder: Arc::new(NothingToDecode),
        until_caught_up: true,
    };
    spec.prepare().unwrap();
    let client = spec.client().unwrap();
    let ends: Vec<i64> = (0..3)
        .map(|p| {
            client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect();
    before(&client);
    let stage = RepartitionStage::start(spec, Box::new(|| {})).unwrap();
    let started = Instant::now();
    while !stage.is_finished() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stage.is_finished(),
        "the stage ends at the partitions' ends"
    );
    stage.join().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(topic, p);
    }
    let committed = client
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for p in 0..3 {
        let at = committed.find_partition(topic, p).unwrap().offset();
        assert_eq!(at, Offset::Offset(ends[p as usize]), "partition {p}");
    }
}

/// Reading to the end with `start_from: latest` and no committed offsets, the stage has
/// nothing to copy: it ends, and commits the ends so that the other workers' stages see
/// them (it waited forever for a first message to tell where it stood).
#[test]
fn reading_to_the_end_from_latest_a_new_stage_ends_and_commits_the_ends() {
    stage_reads_to_the_end("quiet", StartFrom::Latest, |_| {});
}

/// A stage run again after it copied everything (its group's offsets at the ends): no
/// message comes, and it ends with the offsets where they were.
#[test]
fn a_stage_whose_group_is_at_the_ends_already_ends() {
    stage_reads_to_the_end("copied", StartFrom::Earliest, |client| {
        let mut at_ends = TopicPartitionList::new();
        for p in 0..3 {
            let (_, high) = client
                .fetch_watermarks("copied", p, Duration::from_secs(10))
                .unwrap();
            at_ends
                .add_partition_offset("copied", p, Offset::Offset(high))
                .unwrap();
        }
        client.commit(&at_ends, CommitMode::Sync).unwrap();
    });
}
