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

/// A decoder that decodes nothing: the stage sends every message by its own key.
struct AsTheyAre;
impl Decode for AsTheyAre {
    fn decode(&self, _: &Chunk, _: &SharedBytes) -> Decoded {
        unreachable!("the stage decodes messages")
    }
    fn decode_messages(&self, _: &Chunk, messages: &Messages) -> Decoded {
        Decoded {
            events: None,
            bad: Vec::new(),
            records: messages.offsets.len() as u64,
        }
    }
}

/// Runs a stage copying `topic` (one partition) into `internal` to the end, as it starts
/// from `start_from`; its figures, and what its group holds then: the upstream offset with
/// its metadata, and the slot (the internal partition's offset).
fn copy_to_the_end(
    brokers: &str,
    (topic, internal): (&str, &str),
    start_from: StartFrom,
) -> (Arc<StageStats>, (Offset, String, Offset)) {
    let spec = RepartitionSpec {
        source: "s".into(),
        input: KafkaSourceConfig {
            start_from,
            ..reading_to_the_end(brokers, topic)
        },
        topic: internal.to_string(),
        keys: vec!["k".into()],
        decoder: Arc::new(AsTheyAre),
        until_caught_up: true,
    };
    let client = spec.client().unwrap();
    let stage = RepartitionStage::start(spec, Box::new(|| {})).unwrap();
    let stats = stage.stats();
    let started = Instant::now();
    while !stage.is_finished() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stage.is_finished(), "the stage ends at the partition's end");
    stage.join().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    tpl.add_partition(internal, 0);
    let committed = client
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let e = committed.find_partition(topic, 0).unwrap();
    let slot = committed.find_partition(internal, 0).unwrap().offset();
    (stats, (e.offset(), e.metadata().to_string(), slot))
}

/// The upstream offsets the lane of upstream partition 0 takes, reading `internal` from its
/// start as the pool's jobs do, and how many messages it dropped as repeats.
fn lane_reads(brokers: &str, internal: &str, upstream: &str) -> (Vec<u64>, u64) {
    let config = KafkaSourceConfig {
        group_id: "jobs".into(),
        upstream: Some(crate::source::Upstream {
            topic: upstream.into(),
            partitions: 1,
        }),
        ..reading_to_the_end(brokers, internal)
    };
    let partitions = crate::KafkaPartitions::discover(&config).unwrap();
    let mut reader = crate::KafkaReader::new(0, "s", 0, config, &partitions);
    let stats = Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[]));
    let ctx = crate::source::tests::context(1, stats.clone());
    let mut read = Vec::new();
    while let Some(chunk) =
        weir_engine::job::PartitionReader::next_chunk(&mut reader, &ctx).unwrap()
    {
        if let ChunkData::Messages(m) = &chunk.data {
            read.extend(&m.offsets);
        }
    }
    let repeats = weir_engine::RunStats::get(&stats.sources[0].repartition_repeats);
    (read, repeats)
}

/// How the upstream partition lost its history before the stage settles it.
#[derive(Debug, Clone, Copy)]
enum Lost {
    /// Deleted and created again: the broker deleted the group's offsets of the topic, and
    /// the slot stays (as Apache Kafka, Redpanda and tansu do).
    OffsetsDeleted,
    /// The group's offset (500) lies past the new end: created again before the group
    /// noticed, or the broker lost records.
    PastTheEnd,
}

/// The upstream topic created again behind the stage, whose old records (500) are in the
/// internal topic and read by the jobs' lanes: the stage starts the partition over in
/// generation 1 (from the log start, or with `latest` the end) and the lanes take the new
/// records instead of dropping them all as repeats, as they did before generations. The
/// generation is committed (the slot, and the offset's metadata), so the next run of the
/// stage goes on in it.
#[test]
fn a_topic_created_again_behind_the_stage_is_copied_and_taken_by_the_lanes() {
    for lost in [Lost::OffsetsDeleted, Lost::PastTheEnd] {
        for (start_from, at, new) in [
            (StartFrom::Earliest, 100, 0..150u64),
            (StartFrom::Latest, 100, 100..150),
        ] {
            let label = format!("{lost:?}, {start_from:?}");
            let mock = MockCluster::new(1).unwrap();
            let (topic, internal) = ("again", "again-internal");
            mock.create_topic(topic, 1, 1).unwrap();
            mock.create_topic(internal, 1, 1).unwrap();
            let brokers = mock.bootstrap_servers();
            // what the stage copied of the old topic, and what its group kept
            let producer = crate::Producer::new(&brokers, &[]).unwrap();
            let mut value = Vec::new();
            for o in 0..500u64 {
                value.clear();
                Envelope::write(&mut value, topic, 0, (o, 0), std::iter::empty(), b"{}");
                producer
                    .send(internal, Some(b"k"), Some(&value), &[])
                    .unwrap();
            }
            producer.flush().unwrap();
            let group = format!(
                "{}-repartition",
                reading_to_the_end(&brokers, topic).group_id
            );
            let client: BaseConsumer = client_config(&brokers, &[])
                .set("group.id", &group)
                .create()
                .unwrap();
            let mut kept = TopicPartitionList::new();
            match lost {
                Lost::OffsetsDeleted => kept.add_partition_offset(internal, 0, Offset::Offset(0)),
                Lost::PastTheEnd => kept.add_partition_offset(topic, 0, Offset::Offset(500)),
            }
            .unwrap();
            client.commit(&kept, CommitMode::Sync).unwrap();
            // the new topic
            produce_keyed(&brokers, topic, 100);
            let (stats, committed) = copy_to_the_end(&brokers, (topic, internal), start_from);
            let generation_1 = (
                Offset::Offset(at),
                "weir-generation=1".to_string(),
                Offset::Offset(1),
            );
            assert_eq!(committed, generation_1, "{label}");
            assert_eq!(stats.restarts.load(Ordering::Relaxed), 1, "{label}");
            // the next run goes on in generation 1
            produce_keyed(&brokers, topic, 50);
            let (stats, committed) = copy_to_the_end(&brokers, (topic, internal), start_from);
            let generation_1 = (Offset::Offset(150), generation_1.1, generation_1.2);
            assert_eq!(committed, generation_1, "{label}");
            assert_eq!(stats.restarts.load(Ordering::Relaxed), 0, "{label}");
            let (read, repeats) = lane_reads(&brokers, internal, topic);
            let want: Vec<u64> = (0..500).chain(new).collect();
            assert_eq!(read, want, "{label}");
            assert_eq!(repeats, 0, "{label}");
        }
    }
}

/// The upstream partition's position reset below where the stage stood while it copies (as
/// librdkafka does when a fetch finds the offset out of range: the topic was created again
/// under the stage; here the mock cluster answers a fetch so): the partition starts over in
/// generation 1 from there, and the lanes take what the stage copies then, after the 100
/// records of generation 0.
#[test]
fn a_position_reset_below_where_the_stage_stood_starts_the_partition_over() {
    let mock = MockCluster::new(1).unwrap();
    let (topic, internal) = ("reset", "reset-internal");
    mock.create_topic(topic, 1, 1).unwrap();
    mock.create_topic(internal, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, topic, 100);
    let (stats, committed) = copy_to_the_end(&brokers, (topic, internal), StartFrom::Earliest);
    assert_eq!(
        committed,
        (Offset::Offset(100), String::new(), Offset::Offset(0))
    );
    assert_eq!(stats.restarts.load(Ordering::Relaxed), 0);
    produce_keyed(&brokers, topic, 50);
    // the next run's first fetch (at 100) finds it out of range: librdkafka reads on from 0
    mock.request_errors(
        rdkafka::types::RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE],
    );
    let (stats, committed) = copy_to_the_end(&brokers, (topic, internal), StartFrom::Earliest);
    let generation_1 = "weir-generation=1".to_string();
    assert_eq!(
        committed,
        (Offset::Offset(150), generation_1, Offset::Offset(1))
    );
    assert_eq!(stats.restarts.load(Ordering::Relaxed), 1);
    let (read, repeats) = lane_reads(&brokers, internal, topic);
    let want: Vec<u64> = (0..100).chain(0..150).collect();
    assert_eq!(read, want);
    assert_eq!(repeats, 0);
}

/// One upstream partition without a leader (its log range cannot be read, nor its
/// messages) does not keep the others from settling: partition 0 is copied meanwhile, and
/// partition 1 once it has a leader again.
#[test]
fn a_partition_without_a_leader_does_not_keep_the_others_from_settling() {
    let mock = MockCluster::new(1).unwrap();
    let (topic, internal) = ("leaderless", "leaderless-internal");
    mock.create_topic(topic, 2, 1).unwrap();
    mock.create_topic(internal, 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, topic, 200);
    let spec = RepartitionSpec {
        source: "s".into(),
        input: KafkaSourceConfig {
            until_caught_up: false,
            ..reading_to_the_end(&brokers, topic)
        },
        topic: internal.to_string(),
        keys: vec!["k".into()],
        decoder: Arc::new(AsTheyAre),
        until_caught_up: false,
    };
    // the group has offsets of both partitions: both ranges are asked when they settle
    let client = spec.client().unwrap();
    let ends: Vec<u64> = (0..2)
        .map(|p| {
            let (_, high) = client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            high as u64
        })
        .collect();
    assert!(
        ends.iter().all(|&e| e > 0),
        "both partitions hold messages: {ends:?}"
    );
    let mut at_start = TopicPartitionList::new();
    for p in 0..2 {
        at_start
            .add_partition_offset(topic, p, Offset::Offset(0))
            .unwrap();
    }
    client.commit(&at_start, CommitMode::Sync).unwrap();
    mock.partition_leader(topic, 1, None).unwrap();
    let stage = RepartitionStage::start(spec, Box::new(|| {})).unwrap();
    let stats = stage.stats();
    let forwarded = |p: i32| {
        stats
            .partitions
            .lock()
            .unwrap()
            .get(&p)
            .map_or(0, |s| s.forwarded)
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(90), "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("partition 0 is copied while 1 has no leader", &|| {
        forwarded(0) == ends[0]
    });
    assert_eq!(forwarded(1), 0, "partition 1 has no leader");
    mock.partition_leader(topic, 1, Some(1)).unwrap();
    wait_for("partition 1 is copied once it has a leader", &|| {
        forwarded(1) == ends[1]
    });
    stage.stop();
    stage.join().unwrap();
}

/// Reading to the end in a pool whose other stage holds a partition it leaves unread (its
/// worker died or left): the stage that copied its own partitions stays in the group, is
/// given the others' once their member is gone, copies them and ends. It used to leave the
/// group once its own partitions were copied and wait for the group's committed offsets,
/// which nobody was left to move: for ever.
#[test]
fn a_stage_takes_over_the_partitions_of_a_stage_that_left_before_its_end() {
    let mock = MockCluster::new(1).unwrap();
    let (topic, internal) = ("orphaned", "orphaned-internal");
    mock.create_topic(topic, 2, 1).unwrap();
    mock.create_topic(internal, 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, topic, 200);
    let spec = RepartitionSpec {
        source: "s".into(),
        input: reading_to_the_end(&brokers, topic),
        topic: internal.to_string(),
        keys: vec!["k".into()],
        decoder: Arc::new(AsTheyAre),
        until_caught_up: true,
    };
    // the other worker's stage: a member of the group that holds a partition and leaves
    // without copying or committing it (should its leave not reach the group, the group
    // drops it after the shortest session the cluster allows, not the default 45 s)
    let other: BaseConsumer = client_config(&brokers, &[])
        .set("group.id", spec.group())
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    other.subscribe(&[topic]).unwrap();
    let client = spec.client().unwrap();
    let stage = RepartitionStage::start(spec, Box::new(|| {})).unwrap();
    // the other member keeps one partition while the stage copies the other to its end
    let started = Instant::now();
    let held = loop {
        let _ = other.poll(Duration::from_millis(100));
        let held = other.assignment().unwrap().count();
        let copied = stage.stats().forwarded.load(Ordering::Relaxed);
        if held == 1 && copied > 0 {
            break held;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no split of the partitions"
        );
    };
    assert_eq!(held, 1);
    for _ in 0..30 {
        let _ = other.poll(Duration::from_millis(100));
    }
    assert!(
        !stage.is_finished(),
        "the stage ended with a partition uncopied"
    );
    drop(other);
    let started = Instant::now();
    while !stage.is_finished() && started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stage.is_finished(),
        "the stage took over the partition and ended"
    );
    let stats = stage.stats();
    stage.join().unwrap();
    assert_eq!(
        stats.forwarded.load(Ordering::Relaxed),
        200,
        "every message copied once"
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition(topic, p);
    }
    let committed = client
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for p in 0..2 {
        let (_, high) = client
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        let at = committed.find_partition(topic, p).unwrap().offset();
        assert_eq!(at, Offset::Offset(high), "partition {p}");
    }
}
