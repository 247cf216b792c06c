use super::*;
use crate::Producer;
use rdkafka::mocking::MockCluster;
use weir_engine::clock::Clocks;
use weir_engine::pool::Finished;

/// A reader context for `partitions` partitions outside a job, with `stats`.
pub(crate) fn context(partitions: usize, stats: Arc<weir_engine::RunStats>) -> ReaderContext {
    ReaderContext::new(
        Arc::new(Clocks::new(&[(partitions, 0)])),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Progress::new(partitions, &[])),
        stats,
    )
}

/// A source reading `topic` from its start to the end it has when assigned.
pub(crate) fn reading_to_the_end(brokers: &str, topic: &str) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: brokers.to_string(),
        topics: vec![topic.into()],
        group_id: "g".into(),
        start_from: StartFrom::Earliest,
        properties: vec![],
        idle_timeout: None,
        until_caught_up: true,
        caught_up_timeout: Duration::from_secs(30),
        end_offsets: HashMap::new(),
        read_offsets: None,
        with_headers: false,
        pool: None,
        upstream: None,
        repartition_max_backlog: crate::source::DEFAULT_REPARTITION_MAX_BACKLOG,
    }
}

#[test]
fn reads_each_message_once_in_partition_order_and_ends_when_caught_up() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer = Producer::new(&brokers, &[]).unwrap();
    for i in 0..3000u32 {
        let key = format!("k{}", i % 7);
        producer
            .send_at(
                "events",
                Some(key.as_bytes()),
                Some(format!("{{\"i\":{i}}}").as_bytes()),
                &[("trace_id", format!("t{i}").as_bytes())],
                Some(1_700_000_000_000 + i64::from(i)),
            )
            .unwrap();
    }
    producer.flush().unwrap();
    let config = KafkaSourceConfig {
        with_headers: true,
        ..reading_to_the_end(&brokers, "events")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    assert_eq!(partitions.counts, vec![3]);
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(3, Arc::new(weir_engine::RunStats::new(&[], &[], &[])));
    let mut next_offset = [0u64; 3];
    let mut next_seq = [0u64; 3];
    let mut ended = [false; 3];
    let mut total = 0;
    let mut chunks = 0;
    while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
        chunks += 1;
        if chunks == 2 {
            // backpressure: paused for a while, nothing lost or repeated after resuming
            for _ in 0..5 {
                reader.backpressure(&ctx).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(reader.paused);
            reader.backpressure_released(&ctx).unwrap();
        }
        let p = chunk.partition.number as usize;
        assert_eq!(chunk.partition.topic.as_deref(), Some("events"));
        assert_eq!(chunk.seq, next_seq[p]);
        next_seq[p] += 1;
        assert!(!ended[p], "a chunk after the partition's end");
        match chunk.data {
            ChunkData::Messages(m) => {
                for (i, &o) in m.offsets.iter().enumerate() {
                    assert_eq!(o, next_offset[p]);
                    next_offset[p] += 1;
                    // what was sent, taken apart from librdkafka's batch
                    let (start, end) = m.payloads[i];
                    let payload = &m.bytes[start as usize..end as usize];
                    let n: i64 = std::str::from_utf8(payload).unwrap()[5..payload.len() - 1]
                        .parse()
                        .unwrap();
                    let (start, end) = m.keys[i].unwrap();
                    let key = format!("k{}", n % 7);
                    assert_eq!(&m.bytes[start as usize..end as usize], key.as_bytes());
                    assert_eq!(m.timestamps[i], Some(1_700_000_000_000 + n));
                    let headers: Vec<_> = m.header_pairs(i).collect();
                    let value = format!("t{n}");
                    assert_eq!(headers, vec![(&b"trace_id"[..], Some(value.as_bytes()))]);
                }
                total += m.len();
            }
            ChunkData::End => {
                assert_eq!(chunk.first_offset, next_offset[p]);
                ended[p] = true;
            }
            _ => panic!("a Kafka reader yields messages"),
        }
    }
    assert_eq!(total, 3000);
    assert_eq!(ended, [true; 3]);
    assert_eq!(
        reader.read_one_at_a_time, 0,
        "every message came in librdkafka's batches"
    );
    reader.finish(&ctx).unwrap();
}

/// Closing a reader returns within its bound even when leaving the group is slow: here a
/// pool's revocation waits for a hand-over that never completes (a dropped rdkafka
/// consumer would wait for it, and for a broker that does not answer, unbounded).
#[test]
fn closing_a_reader_is_bounded_when_leaving_the_group_is_slow() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let hook = PoolHook {
        claim: Arc::new(|partitions: &[(String, i32)]| Ok(vec![None; partitions.len()])),
        released: Arc::new(|_: &[(String, i32)], _: bool| {}),
        releasing: Arc::new(|| {}),
        finished: Arc::new(|_: &str, _: i32| Ok(Finished::Yes)),
        owned_unfinished: Arc::new(|| false),
        handover_timeout: Duration::from_secs(60),
    };
    let config = KafkaSourceConfig {
        until_caught_up: false,
        pool: Some(hook),
        ..reading_to_the_end(&brokers, "events")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(3, Arc::new(weir_engine::RunStats::new(&[], &[], &[])));
    // a failed run: its hand-over on assignment does not wait
    ctx.cancel.store(true, Ordering::SeqCst);
    reader.connect(&ctx).unwrap();
    let consumer = reader.consumer.as_ref().unwrap();
    let started = Instant::now();
    while consumer.assignment().map_or(true, |a| a.count() == 0) {
        let _ = consumer.poll(Duration::from_millis(50));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never assigned"
        );
    }
    // a run whose outputs never finish: the revocation's hand-over waits a minute
    ctx.cancel.store(false, Ordering::SeqCst);
    let closing = Instant::now();
    reader.close();
    let took = closing.elapsed();
    assert!(
        took < CLOSE_TIMEOUT + Duration::from_secs(3),
        "closing took {took:?}"
    );
    assert!(reader.consumer.is_none());
}

/// A repartition topic: its partitions are read as one lane per upstream partition, each
/// in upstream order with upstream offsets; a repeat (an upstream offset its lane passed)
/// is dropped; the partition is one chunk stream whose chunks each hold one lane's
/// messages and record where the partition and the lane continue.
/// Messages a previous use of the internal topic left (another upstream topic's, or weir
/// 0.1.0's without a topic, read by a partition without a checkpoint) are skipped: their
/// offsets would otherwise be taken for this topic's.
#[test]
fn a_repartition_topic_is_read_in_lanes_without_repeats() {
    use crate::repartition::Envelope;
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("internal", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer = Producer::new(&brokers, &[]).unwrap();
    // upstream partitions 0 and 1 interleaved; then upstream 1 repeats offsets 1..3 (a
    // stage that restarted from an older commit) and continues with 4
    let mut sent = vec![(0u32, 0u64), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2), (1, 3)];
    sent.extend([(1, 1), (1, 2), (1, 3), (1, 4)]);
    // first, what an earlier pool of the same pipeline wrote for another topic, and weir
    // 0.1.0 for some topic
    let foreign = [
        (Some("elsewhere"), 0u32, 7u64),
        (Some("elsewhere"), 1, 9),
        (None, 0, 8),
    ];
    let mut value = Vec::new();
    let all = foreign
        .iter()
        .copied()
        .chain(sent.iter().map(|&(u, o)| (Some("upstream"), u, o)));
    for (topic, u, o) in all {
        value.clear();
        let headers = [(&b"traceparent"[..], Some(&b"t"[..]))];
        let payload = format!("{{\"u\":{u},\"o\":{o}}}");
        Envelope::write_as(
            &mut value,
            topic,
            u,
            (o, 0),
            headers.into_iter(),
            payload.as_bytes(),
        );
        producer
            .send("internal", Some(b"k"), Some(&value), &[])
            .unwrap();
    }
    producer.flush().unwrap();
    let config = KafkaSourceConfig {
        upstream: Some(Upstream {
            topic: "upstream".into(),
            partitions: 2,
        }),
        ..reading_to_the_end(&brokers, "internal")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    assert_eq!(partitions.keys(&config), vec!["internal/0".to_string()]);
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let stats = Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[]));
    let ctx = context(1, stats.clone());
    let mut read: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut next_seq = 0u64;
    let mut position = [None; 2];
    let mut last_resume = None;
    while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
        assert_eq!(
            (chunk.partition.id, chunk.partition.state_id),
            (0, 0),
            "one partition, whose state stays with the Kafka partition"
        );
        assert_eq!(chunk.seq, next_seq);
        next_seq += 1;
        last_resume = Some(chunk.resume);
        if let ChunkData::Messages(m) = &chunk.data {
            let lane = m.lane.expect("a lane") as usize;
            assert_eq!(chunk.partition.topic.as_deref(), Some("upstream"));
            assert_eq!(chunk.partition.number as usize, lane);
            position[lane] = Some(chunk.resume.position);
            for (i, &o) in m.offsets.iter().enumerate() {
                let payload = std::str::from_utf8(m.slice(m.payloads[i])).unwrap();
                assert_eq!(payload, format!("{{\"u\":{lane},\"o\":{o}}}"));
                let trace: Vec<_> = m.header_pairs(i).collect();
                assert_eq!(trace, vec![(&b"traceparent"[..], Some(&b"t"[..]))]);
            }
            read[lane].extend(&m.offsets);
        }
    }
    assert_eq!(read[0], vec![0, 1, 2]);
    assert_eq!(read[1], vec![0, 1, 2, 3, 4]);
    assert_eq!(RunStats::get(&stats.sources[0].repartition_repeats), 3);
    assert_eq!(RunStats::get(&stats.sources[0].repartition_foreign), 3);
    // the partition continues after the topic's last message; each lane at its next
    // upstream offset
    let end = (foreign.len() + sent.len()) as u64;
    assert_eq!(last_resume, Some(Resume::at(end)));
    assert_eq!(position, [Some(3), Some(5)]);
}

/// Another member of the group (a consumer polling, not reading): started first, it
/// holds the topic's partitions until `leave` is set.
fn other_member(
    brokers: &str,
    topic: &str,
    leave: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (brokers, topic, h) = (brokers.to_string(), topic.to_string(), held.clone());
    let t = std::thread::spawn(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // gone from the group soon after it stops, as a killed process is
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .unwrap();
        c.subscribe(&[&topic]).unwrap();
        while !leave.load(Ordering::SeqCst) {
            let _ = c.poll(Duration::from_millis(20));
            let n = c.assignment().map(|a| a.count()).unwrap_or(0);
            h.store(n, Ordering::SeqCst);
        }
    });
    (t, held)
}

pub(crate) fn produce_keyed(brokers: &str, topic: &str, n: u32) {
    let producer = Producer::new(brokers, &[]).unwrap();
    for i in 0..n {
        let key = format!("k{}", i % 13);
        let value = format!("{{\"i\":{i}}}");
        producer
            .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), &[])
            .unwrap();
    }
    producer.flush().unwrap();
}

/// `--until-caught-up` while another member holds partitions (a killed process until
/// its session times out): the reader reads the partitions it is assigned, then waits
/// for the others, saying so in `/ready`, and reads them once the group assigns them. It
/// does not end with only its own partitions read.
#[test]
fn waits_for_the_partitions_another_member_holds_then_reads_them() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("held", 4, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, "held", 800);
    let leave = Arc::new(AtomicBool::new(false));
    let (other, held) = other_member(&brokers, "held", leave.clone());
    let started = Instant::now();
    while held.load(Ordering::SeqCst) < 4 {
        assert!(started.elapsed() < Duration::from_secs(30), "no assignment");
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = reading_to_the_end(&brokers, "held");
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let stats = Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[]));
    let ctx = context(4, stats.clone());
    // once the reader says it waits, the other member leaves
    let saw = Arc::new(Mutex::new(String::new()));
    let watcher = {
        let (stats, leave, saw) = (stats.clone(), leave.clone(), saw.clone());
        std::thread::spawn(move || {
            while !leave.load(Ordering::SeqCst) {
                let w = stats.sources[0]
                    .waiting_for_partitions
                    .lock()
                    .unwrap()
                    .clone();
                if !w.is_empty() {
                    *saw.lock().unwrap() = w;
                    leave.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut total = 0;
    let mut ended = [false; 4];
    while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
        match chunk.data {
            ChunkData::Messages(m) => total += m.len(),
            ChunkData::End => ended[chunk.partition.number as usize] = true,
            _ => panic!("a Kafka reader yields messages"),
        }
    }
    leave.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    other.join().unwrap();
    assert_eq!(total, 800, "every partition read");
    assert_eq!(ended, [true; 4]);
    let saw = saw.lock().unwrap().clone();
    assert!(saw.contains("waiting for held/"), "{saw}");
    assert!(stats.sources[0]
        .waiting_for_partitions
        .lock()
        .unwrap()
        .is_empty());
    reader.finish(&ctx).unwrap();
}

/// The other member never leaves: the reader fails after its timeout, naming the
/// partitions it did not read.
#[test]
fn fails_when_partitions_stay_unread_past_the_timeout() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("stuck", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, "stuck", 200);
    let leave = Arc::new(AtomicBool::new(false));
    let (other, held) = other_member(&brokers, "stuck", leave.clone());
    let started = Instant::now();
    while held.load(Ordering::SeqCst) < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "no assignment");
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = KafkaSourceConfig {
        caught_up_timeout: Duration::from_secs(3),
        ..reading_to_the_end(&brokers, "stuck")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(
        2,
        Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[])),
    );
    let error = loop {
        match reader.next_chunk(&ctx) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended with partitions unread"),
            Err(e) => break e,
        }
    };
    leave.store(true, Ordering::SeqCst);
    other.join().unwrap();
    match &error {
        EngineError::NotCaughtUp { message, .. } => {
            assert!(message.contains("stuck/"), "{message}");
            assert!(message.contains("--caught-up-timeout"), "{message}");
        }
        e => panic!("{e}"),
    }
}

#[test]
fn a_missing_topic_is_reported_by_name() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("other", 1, 1).unwrap();
    let config = KafkaSourceConfig {
        start_from: StartFrom::Committed,
        properties: vec![("allow.auto.create.topics".into(), "false".into())],
        until_caught_up: false,
        ..reading_to_the_end(&mock.bootstrap_servers(), "nope")
    };
    match KafkaPartitions::discover(&config) {
        Err(e) => assert!(e.to_string().contains("nope"), "{e}"),
        Ok(p) => panic!("found {:?}", p.counts),
    }
}

#[test]
fn a_silent_partition_idles_unless_paused_or_behind() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("quiet", 2, 1).unwrap();
    let config = KafkaSourceConfig {
        idle_timeout: Some(Duration::from_millis(150)),
        until_caught_up: false,
        ..reading_to_the_end(&mock.bootstrap_servers(), "quiet")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(2, Arc::new(weir_engine::RunStats::new(&[], &[], &[])));
    reader.connect(&ctx).unwrap();
    let started = Instant::now();
    while !reader.partitions.iter().all(|s| s.assigned) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never assigned"
        );
        reader.poll_round(&ctx).unwrap();
        reader.handle_group_events(&ctx).unwrap();
    }
    let idle = |p: usize| ctx.clocks.partition(p).is_idle();
    let wait_past_timeout = |reader: &mut KafkaReader| {
        std::thread::sleep(Duration::from_millis(200));
        reader.housekeeping(&ctx, true).unwrap();
    };
    reader.housekeeping(&ctx, true).unwrap();
    assert!(!idle(0) && !idle(1), "just assigned");
    // partition 1 has messages left to read by the latest statistics: slow, not idle
    ctx.stats
        .consumer_lag
        .lock()
        .unwrap()
        .insert(("s".into(), "quiet/1".into()), 5);
    wait_past_timeout(&mut reader);
    assert!(idle(0) && !idle(1));
    ctx.stats.consumer_lag.lock().unwrap().clear();
    // paused for backpressure longer than the timeout: weir's pause, not silence
    ctx.clocks.partition(0).set_idle(false);
    reader.backpressure(&ctx).unwrap();
    wait_past_timeout(&mut reader);
    assert!(!idle(0) && !idle(1));
    reader.backpressure_released(&ctx).unwrap();
    reader.housekeeping(&ctx, true).unwrap();
    assert!(
        !idle(0) && !idle(1),
        "the timeout starts again after the pause"
    );
    wait_past_timeout(&mut reader);
    assert!(idle(0) && idle(1));
}

/// Envelopes of weir 0.1.0 carry no upstream topic: a lane continuing a checkpoint that had
/// read some of its messages takes them (a pool upgraded while running), a lane read from the
/// beginning skips them (another topic's, left by an earlier pool of the same pipeline).
/// Another topic's envelopes are skipped by every lane.
#[test]
fn envelopes_without_a_topic_are_read_only_by_lanes_continuing_a_checkpoint() {
    use crate::repartition::Envelope;
    use rdkafka::message::{OwnedMessage, Timestamp};
    let config = KafkaSourceConfig {
        upstream: Some(Upstream {
            topic: "upstream".into(),
            partitions: 2,
        }),
        ..reading_to_the_end("127.0.0.1:1", "internal")
    };
    let partitions = KafkaPartitions { counts: vec![1] };
    let mut reader = KafkaReader::new(0, "s", 0, config.clone(), &partitions);
    let stats = Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[]));
    let ctx = context(1, stats.clone());
    let s = &mut reader.partitions[0];
    s.assigned = true;
    // lane 0 continues a checkpoint at upstream offset 5; lane 1 has read nothing
    s.up = Some(Box::new(Lanes::new("upstream".into(), 2, &[5, 0], 0)));
    let mut offset = 0;
    let mut place = |s: &mut PartitionState, topic: Option<&str>, u: u32, o: u64| {
        let mut value = Vec::new();
        Envelope::write_as(&mut value, topic, u, (o, 0), std::iter::empty(), b"{}");
        let m = OwnedMessage::new(
            Some(value),
            None,
            "internal".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        );
        offset += 1;
        place_message(
            s,
            &m,
            (&config, "s"),
            Some(&stats.sources[0]),
            (&ctx, Instant::now()),
        )
    };
    for (topic, u, o) in [
        (None, 0, 5),
        (None, 1, 3),
        (Some("elsewhere"), 0, 9),
        (Some("elsewhere"), 1, 9),
        (Some("upstream"), 1, 0),
        (None, 0, 6),
    ] {
        assert!(place(s, topic, u, o).is_some());
    }
    assert_eq!(RunStats::get(&stats.sources[0].repartition_foreign), 3);
    assert_eq!(s.read_next, Some(6), "skipped messages are passed");
    reader.hand_over(0);
    let read: Vec<(Option<u32>, Vec<u64>)> = reader
        .ready
        .iter()
        .map(|c| match &c.data {
            ChunkData::Messages(m) => (m.lane, m.offsets.clone()),
            _ => (None, vec![]),
        })
        .collect();
    assert_eq!(read, vec![(Some(0), vec![5, 6]), (Some(1), vec![0])]);
}

/// A pooled reader of `topic` (read to its end) with `finished` and `owned_unfinished` as
/// its pool's answers, connected and knowing its partitions' ends, and its context.
fn pooled_reader(
    brokers: &str,
    topic: &str,
    finished: PartitionFinished,
    owned_unfinished: Arc<dyn Fn() -> bool + Send + Sync>,
) -> (KafkaReader, ReaderContext) {
    pooled_reader_of(brokers, topic, None, finished, owned_unfinished)
}

/// [`pooled_reader`] of a repartition topic when `upstream` says so.
fn pooled_reader_of(
    brokers: &str,
    topic: &str,
    upstream: Option<Upstream>,
    finished: PartitionFinished,
    owned_unfinished: Arc<dyn Fn() -> bool + Send + Sync>,
) -> (KafkaReader, ReaderContext) {
    let hook = PoolHook {
        claim: Arc::new(|partitions: &[(String, i32)]| Ok(vec![None; partitions.len()])),
        released: Arc::new(|_: &[(String, i32)], _: bool| {}),
        releasing: Arc::new(|| {}),
        finished,
        owned_unfinished,
        handover_timeout: Duration::from_secs(60),
    };
    let config = KafkaSourceConfig {
        pool: Some(hook),
        upstream,
        ..reading_to_the_end(brokers, topic)
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(
        partitions.counts.iter().sum(),
        Arc::new(weir_engine::RunStats::new(&["s".to_string()], &[], &[])),
    );
    reader.connect(&ctx).unwrap();
    reader.read_targets(&ctx).unwrap();
    (reader, ctx)
}

/// In a worker pool reading until caught up, a partition another worker read to its end
/// (the group's committed offset at its end) may still hold, in its owner's state, the last
/// windows that only a final flush emits (its owner was killed while waiting, or it is
/// between two owners): a worker does not end until that partition is finished. A worker
/// whose own partitions are not finished first ends its run to flush them, then waits.
#[test]
fn a_pooled_reader_waits_for_partitions_read_elsewhere_until_they_are_finished() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("pooled", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, "pooled", 200);
    // the other worker read both partitions to their end and committed the offsets
    let committer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "g")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut ends = TopicPartitionList::new();
    for p in 0..2 {
        let (_, high) = committer
            .fetch_watermarks("pooled", p, Duration::from_secs(10))
            .unwrap();
        assert!(high > 0);
        ends.add_partition_offset("pooled", p, Offset::Offset(high))
            .unwrap();
    }
    committer.commit(&ends, CommitMode::Sync).unwrap();
    // partition 0 is this worker's; whether each one is finished
    let finished = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let (f, g) = (finished.clone(), finished.clone());
    let (mut reader, ctx) = pooled_reader(
        &brokers,
        "pooled",
        Arc::new(move |_: &str, p: i32| Ok(done(&f[p as usize]))),
        // partition 0 is owned here
        Arc::new(move || !g[0].load(Ordering::SeqCst)),
    );
    // the group assigned partition 0 to this worker, which read it to its end
    reader.joined = true;
    reader.partitions[0].assigned = true;
    reader.partitions[0].ended = true;
    reader.partitions[1].assigned = false;
    // its own partition not flushed yet: it ends its run to flush it
    assert!(reader.caught_up(&ctx).unwrap());
    assert!(reader.flushed_to_wait(), "ended without flushing first");
    // flushed (a new run): partition 1 is read to its end, but not finished: it waits
    finished[0].store(true, Ordering::SeqCst);
    reader.flushed_to_wait = false;
    reader.own_checked = None;
    for _ in 0..3 {
        assert!(
            !reader.caught_up(&ctx).unwrap(),
            "ended while the windows of partition 1 are not flushed"
        );
        assert!(!reader.flushed_to_wait());
        std::thread::sleep(Duration::from_millis(600));
    }
    // its owner flushed it: the reader ends
    finished[1].store(true, Ordering::SeqCst);
    let started = Instant::now();
    while !reader.caught_up(&ctx).unwrap() {
        assert!(started.elapsed() < Duration::from_secs(10), "still waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!reader.flushed_to_wait());
    reader.close();
}

/// `true` as finished, `false` as not.
fn done(flag: &AtomicBool) -> Finished {
    if flag.load(Ordering::SeqCst) {
        Finished::Yes
    } else {
        Finished::No
    }
}

/// A worker that read its own partitions of a repartition topic to their end waits for one
/// that holds rows and that no worker claimed yet: the group gave it to a worker whose job
/// has not claimed it yet; and for one an earlier run finished, short of this run's end.
/// (Both were taken for finished: the worker ended, exit 0, and once the other worker was
/// killed, that partition's rows were missing for good.)
#[test]
fn a_pooled_reader_of_a_repartition_topic_waits_for_a_partition_nobody_claimed_yet() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("internal", 2, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, "internal", 200);
    // partition 1: 0 never claimed, 1 claimed and not finished, 2 finished by an earlier
    // run (short of this run's end), 3 finished at this run's end
    let other = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let o = other.clone();
    let end = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let e = end.clone();
    let upstream = Upstream {
        topic: "upstream".into(),
        partitions: 2,
    };
    let (mut reader, ctx) = pooled_reader_of(
        &brokers,
        "internal",
        Some(upstream),
        Arc::new(move |_: &str, p: i32| {
            let end = e.load(Ordering::SeqCst);
            Ok(match (p, o.load(Ordering::SeqCst)) {
                (0, _) => Finished::Yes,
                (_, 1) => Finished::No,
                (_, 2) => Finished::At(end - 1),
                (_, 3) => Finished::At(end),
                _ => Finished::Unclaimed,
            })
        }),
        Arc::new(|| false),
    );
    assert!(reader.partitions.iter().all(|s| s.target > Some(0)));
    end.store(reader.partitions[1].target.unwrap(), Ordering::SeqCst);
    reader.joined = true;
    reader.partitions[0].assigned = true;
    reader.partitions[0].ended = true;
    reader.partitions[1].assigned = false;
    for state in [0, 1, 2] {
        other.store(state, Ordering::SeqCst);
        for _ in 0..2 {
            assert!(
                !reader.caught_up(&ctx).unwrap(),
                "ended while partition 1 is {}",
                [
                    "not claimed yet",
                    "claimed and not finished",
                    "finished short of this run's end"
                ][state as usize]
            );
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
    other.store(3, Ordering::SeqCst);
    let started = Instant::now();
    while !reader.caught_up(&ctx).unwrap() {
        assert!(started.elapsed() < Duration::from_secs(10), "still waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.close();
}

#[test]
fn prefetch_backs_off_briefly_and_a_source_may_set_it_otherwise() {
    let mut config = reading_to_the_end("127.0.0.1:9", "t");
    let cfg = group_consumer_config(&config, "g", false);
    assert_eq!(cfg.get("fetch.queue.backoff.ms"), Some("20"));
    // this librdkafka knows the setting: an unknown one fails the consumer's creation
    let consumer: Result<BaseConsumer, _> = cfg.create();
    assert!(consumer.is_ok(), "{:?}", consumer.err());
    config.properties = vec![("fetch.queue.backoff.ms".into(), "500".into())];
    let cfg = group_consumer_config(&config, "g", false);
    assert_eq!(cfg.get("fetch.queue.backoff.ms"), Some("500"));
}

#[test]
fn end_offsets_read_together_equal_the_watermarks_read_one_by_one() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("ends", 4, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer: rdkafka::producer::BaseProducer =
        crate::client_config(&brokers, &[]).create().unwrap();
    // partitions of 0, 5, 10 and 15 messages
    for p in 0..4i32 {
        for i in 0..5 * p {
            let payload = format!("{i}");
            let record = rdkafka::producer::BaseRecord::<(), _>::to("ends")
                .partition(p)
                .payload(&payload);
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let config = reading_to_the_end(&brokers, "ends");
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(4, Arc::new(weir_engine::RunStats::new(&[], &[], &[])));
    reader.connect(&ctx).unwrap();
    let list: Vec<(String, i32)> = (0..4).map(|p| ("ends".to_string(), p)).collect();
    let together = reader.ends_of(&list);
    for (topic, p) in &list {
        let alone = reader.end_offsets(topic, *p).unwrap();
        assert_eq!(
            together.get(&(topic.clone(), *p)),
            Some(&alone),
            "partition {p}"
        );
        assert_eq!(alone.1, i64::from(5 * p));
    }
    reader.close();
}

/// Produces 4,000 records of 2 KB of random hex (from `seed`) to `topic`: the mock cluster
/// keeps about 5 MB of a partition (`rdkafka_mock.c`), and lz4 does not shrink these below
/// it, so the partition's log start moves forward.
fn past_retention(producer: &Producer, topic: &str, seed: u64) {
    let mut x = seed;
    for _ in 0..4000 {
        let pad: String = (0..125)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect();
        let payload = format!("{{\"pad\":\"{pad}\"}}");
        producer
            .send_at(topic, None, Some(payload.as_bytes()), &[], None)
            .unwrap();
    }
    producer.flush().unwrap();
}

/// A checkpoint's offset that the topic's retention deleted meanwhile: the reader goes on
/// from the partition's log start (with `start_from: latest` too, where librdkafka's reset
/// jumped to the end and skipped the records still there, and the run never ended), and
/// counts the records lost.
#[test]
fn offsets_deleted_by_retention_are_counted_and_reading_goes_on_from_the_log_start() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("aged", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer = Producer::new(&brokers, &[]).unwrap();
    past_retention(&producer, "aged", 0x2545_f491_4f6c_dd1d);
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let (low, high) = client
        .fetch_watermarks("aged", 0, Duration::from_secs(10))
        .unwrap();
    assert!(low > 1 && high == 4000, "log from {low} to {high}");
    let config = KafkaSourceConfig {
        start_from: StartFrom::Latest,
        ..reading_to_the_end(&brokers, "aged")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let reader =
        KafkaReader::new(0, "s", 0, config, &partitions).with_resume(|_, _| Some(Resume::at(1)));
    let stats = Arc::new(RunStats::new(&["s".to_string()], &[], &[]));
    // the reader before the fix never ended
    let offsets = read_to_the_end(reader, context(1, stats.clone()));
    assert_eq!(offsets.first().copied(), Some(low as u64));
    assert_eq!(
        offsets.len() as i64,
        high - low,
        "every record still held is read"
    );
    assert_eq!(
        RunStats::get(&stats.sources[0].records_expired),
        low as u64 - 1,
        "the records between the checkpoint's offset and the log start are counted"
    );
}

/// Reads to the end on a thread (a reader that never ends fails the test after 90 s); the
/// offsets of the messages read, in order.
fn read_to_the_end(reader: KafkaReader, ctx: ReaderContext) -> Vec<u64> {
    read_to_the_end_and_where(reader, ctx).0
}

/// [`read_to_the_end`], and where the partitions' last chunks said to continue (what a
/// checkpoint keeps).
fn read_to_the_end_and_where(mut reader: KafkaReader, ctx: ReaderContext) -> (Vec<u64>, Vec<u64>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut offsets, mut next) = (Vec::new(), Vec::new());
        while let Some(chunk) = reader.next_chunk(&ctx).unwrap() {
            match chunk.data {
                ChunkData::Messages(m) => offsets.extend(m.offsets.iter().copied()),
                ChunkData::End => next.push(chunk.resume.next_offset),
                _ => {}
            }
        }
        reader.finish(&ctx).unwrap();
        let _ = tx.send((offsets, next));
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("the reader ends at the partition's end")
}

/// A checkpoint's offset past the partition's end (the topic was deleted and created again,
/// with fewer records than before): every record the partition holds came after the
/// checkpoint, and the reader goes where `auto.offset.reset` says: from the log start, all
/// are read (before, `--until-caught-up` ended the partition at once, unread); with `latest`
/// (`start_from: latest`) from the end, and the run still ends.
#[test]
fn a_checkpoint_past_the_end_of_a_topic_created_again_reads_it_from_its_start() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("again", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, "again", 100);
    for start_from in [StartFrom::Latest, StartFrom::Earliest] {
        let config = KafkaSourceConfig {
            start_from,
            group_id: format!("g-{start_from:?}"),
            ..reading_to_the_end(&brokers, "again")
        };
        let partitions = KafkaPartitions::discover(&config).unwrap();
        let reader = KafkaReader::new(0, "s", 0, config, &partitions)
            .with_resume(|_, _| Some(Resume::at(500)));
        let stats = Arc::new(RunStats::new(&["s".to_string()], &[], &[]));
        let (offsets, next) = read_to_the_end_and_where(reader, context(1, stats.clone()));
        // where `auto.offset.reset` says: the log start, or with `latest` the end
        let expected: Vec<u64> = match start_from {
            StartFrom::Latest => vec![],
            _ => (0..100).collect(),
        };
        assert_eq!(offsets, expected, "{start_from:?}");
        // the partition continues at its end, not at the old offset past it
        assert_eq!(next, vec![100], "{start_from:?}");
        assert_eq!(RunStats::get(&stats.sources[0].records_expired), 0);
    }
}

/// The topic's retention passes the reader while it runs (it stopped polling, its prefetch
/// small): librdkafka resets the fetch position as `auto.offset.reset` says, and the reader
/// counts the offsets it skipped that way (`weir_records_expired_total`), with an error in the
/// log. Before, only librdkafka's own log line said so.
#[test]
fn offsets_deleted_by_retention_while_reading_are_counted() {
    let (from, to, expired, low) = retention_passes_the_reader(StartFrom::Earliest);
    assert_eq!(to, low, "read on from the log start");
    assert_eq!(expired, to - from, "the offsets deleted are counted");
}

/// The same with `start_from: latest`, where librdkafka's reset goes to the partition's end:
/// the offsets deleted and those skipped though still there are counted.
#[test]
fn offsets_skipped_by_a_reset_to_the_end_while_reading_are_counted() {
    let (from, to, expired, low) = retention_passes_the_reader(StartFrom::Latest);
    assert!(
        to > low,
        "the reset went to the end, past the log start {low}: {to}"
    );
    assert_eq!(
        expired,
        to - from,
        "the offsets deleted and skipped are counted"
    );
}

/// Reads 100 small records of a new topic, stops reading while 8 MB more push the log start
/// past the reader's fetch position, then reads on to the end (with `latest`, to one record
/// produced after the reset). The one jump of offsets read (`from`, `to`), the offsets
/// counted as expired, and the partition's log start.
fn retention_passes_the_reader(start_from: StartFrom) -> (u64, u64, u64, u64) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("aged", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer = Producer::new(&brokers, &[]).unwrap();
    let config = KafkaSourceConfig {
        start_from,
        until_caught_up: false,
        // a small prefetch, so that the retention passes the fetch position
        properties: vec![
            ("queued.max.messages.kbytes".into(), "64".into()),
            ("max.partition.fetch.bytes".into(), "65536".into()),
            ("fetch.max.bytes".into(), "1048576".into()),
        ],
        ..reading_to_the_end(&brokers, "aged")
    };
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let stats = Arc::new(RunStats::new(&["s".to_string()], &[], &[]));
    let ctx = context(1, stats.clone());
    let mut offsets = Vec::new();
    // the rounds of `next_chunk`, which would wait for a chunk for ever
    let mut read_for = |reader: &mut KafkaReader, last: Option<u64>, most: Duration| {
        let deadline = Instant::now() + most;
        if reader.consumer.is_none() {
            reader.connect(&ctx).unwrap();
        }
        while last.is_none_or(|last| offsets.last().is_none_or(|&o| o < last))
            && Instant::now() < deadline
        {
            let got = reader.poll_round(&ctx).unwrap();
            reader.handle_group_events(&ctx).unwrap();
            reader.housekeeping(&ctx, !got).unwrap();
            while let Some(chunk) = reader.ready.pop_front() {
                if let ChunkData::Messages(m) = chunk.data {
                    offsets.extend(m.offsets.iter().copied());
                }
            }
        }
    };
    // assigned first (`latest` starts at the end it finds)
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.partitions[0].assigned && Instant::now() < deadline {
        read_for(&mut reader, None, Duration::from_millis(100));
    }
    assert!(reader.partitions[0].assigned);
    // (its start, found by a request with `latest`, before the records come)
    read_for(&mut reader, None, Duration::from_millis(1500));
    let small = |n: u32| {
        for i in 0..n {
            let payload = format!("{{\"i\":{i}}}");
            producer
                .send_at("aged", None, Some(payload.as_bytes()), &[], None)
                .unwrap();
        }
        producer.flush().unwrap();
    };
    small(100);
    read_for(&mut reader, Some(99), Duration::from_secs(60));
    past_retention(&producer, "aged", 0x9e37_79b9_7f4a_7c15);
    let last = if start_from == StartFrom::Latest {
        read_for(&mut reader, None, Duration::from_secs(5));
        small(1);
        4100
    } else {
        4099
    };
    read_for(&mut reader, Some(last), Duration::from_secs(60));
    assert_eq!(offsets.last().copied(), Some(last), "read to the end");
    let jumps: Vec<(u64, u64)> = offsets
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0] + 1, w[1]))
        .collect();
    assert_eq!(offsets[..100], (0..100).collect::<Vec<_>>());
    assert_eq!(jumps.len(), 1, "one jump: {jumps:?}");
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let (low, _) = client
        .fetch_watermarks("aged", 0, Duration::from_secs(10))
        .unwrap();
    let expired = RunStats::get(&stats.sources[0].records_expired);
    (jumps[0].0, jumps[0].1, expired, low as u64)
}

/// A partition a topic did not have when the run started is no partition the reader knows:
/// with two topics, partition 3 of the first (3 partitions) is not taken for the second's
/// partition 0, nor partition 2 of the second for anything.
#[test]
fn a_partition_added_since_the_start_is_not_taken_for_another() {
    let config = KafkaSourceConfig {
        topics: vec!["a".into(), "b".into()],
        ..reading_to_the_end("127.0.0.1:1", "a")
    };
    let partitions = KafkaPartitions { counts: vec![3, 2] };
    let reader = KafkaReader::new(0, "s", 0, config, &partitions);
    assert_eq!(reader.local("a", 2), Some(2));
    assert_eq!(reader.local("a", 3), None, "partition 3 of `a` was added");
    assert_eq!(reader.local("b", 0), Some(3));
    assert_eq!(reader.local("b", 1), Some(4));
    assert_eq!(reader.local("b", 2), None);
    assert_eq!(reader.local("c", 0), None);
}

/// A bound reached through a gap (the offset before it is a transaction's commit marker, as
/// an upstream `exactly_once` sink writes, or was compacted away): the partition ends at its
/// bound, and the message at the bound (the first past a replay's range, or one written
/// after `--until-caught-up` read the end) is not read. (librdkafka's mock cluster writes no
/// markers, so the messages are placed by hand.)
#[test]
fn a_bound_after_a_gap_ends_the_partition_before_the_next_message() {
    use rdkafka::message::{OwnedMessage, Timestamp};
    let config = reading_to_the_end("127.0.0.1:1", "gap");
    let partitions = KafkaPartitions { counts: vec![1] };
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    let ctx = context(1, Arc::new(weir_engine::RunStats::new(&[], &[], &[])));
    let s = &mut reader.partitions[0];
    s.assigned = true;
    s.end_at = Some(4);
    for offset in [0, 1, 2, 4, 5] {
        let m = OwnedMessage::new(
            Some(b"{}".to_vec()),
            None,
            "gap".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        );
        reader.place(&m, &ctx, Instant::now());
    }
    let mut offsets = Vec::new();
    let mut next = Vec::new();
    for c in &reader.ready {
        match &c.data {
            ChunkData::Messages(m) => offsets.extend(m.offsets.iter().copied()),
            ChunkData::End => next.push(c.resume.next_offset),
            _ => {}
        }
    }
    assert_eq!(
        offsets,
        vec![0, 1, 2],
        "the message at the bound is not read"
    );
    assert_eq!(next, vec![4], "the partition ends at its bound");
}

/// A pool worker's reader with no partition of its own, waiting for partitions read
/// elsewhere, while the worker owns an unfinished partition of another source (whose
/// reader has ended): it ends the run so that the run's final checkpoint flushes that
/// partition. Two workers each holding one source's only partition waited for each other
/// until both failed.
#[test]
fn a_reader_without_partitions_ends_the_run_for_another_sources_unfinished_partition() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("second", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    produce_keyed(&brokers, "second", 10);
    let other_source_unfinished = Arc::new(AtomicBool::new(true));
    let u = other_source_unfinished.clone();
    let (mut reader, ctx) = pooled_reader(
        &brokers,
        "second",
        Arc::new(|_: &str, _: i32| Ok(Finished::No)),
        Arc::new(move || u.load(Ordering::SeqCst)),
    );
    // the group gave this worker nothing of this source
    reader.joined = true;
    reader.partitions[0].assigned = false;
    assert!(
        reader.caught_up(&ctx).unwrap(),
        "it waited without flushing"
    );
    assert!(reader.flushed_to_wait());
    // flushed: it waits for the other worker's partition
    other_source_unfinished.store(false, Ordering::SeqCst);
    reader.flushed_to_wait = false;
    reader.own_checked = None;
    assert!(!reader.caught_up(&ctx).unwrap());
    assert!(!reader.flushed_to_wait());
    reader.close();
}

/// A chunk the job hands back after a hand-over (it was held while the reader waited for
/// room) is kept for the next job only if its partition stayed this worker's: one given up
/// meanwhile (even if assigned again since) is read again by its next owner from the
/// hand-over checkpoint.
#[test]
fn a_chunk_handed_back_is_kept_only_for_a_partition_still_assigned() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("handed-back", 2, 1).unwrap();
    let config = reading_to_the_end(&mock.bootstrap_servers(), "handed-back");
    let partitions = KafkaPartitions::discover(&config).unwrap();
    let mut reader = KafkaReader::new(0, "s", 0, config, &partitions);
    reader.partitions[0].assigned = true;
    reader.partitions[1].assigned = false;
    let kept = lane_end(0, &mut reader.partitions[0], 7);
    let given_up = lane_end(0, &mut reader.partitions[1], 9);
    PartitionReader::unread(&mut reader, given_up);
    PartitionReader::unread(&mut reader, kept);
    let ready = |r: &KafkaReader| -> Vec<(usize, u64)> {
        r.ready
            .iter()
            .map(|c| (c.partition.id, c.first_offset))
            .collect()
    };
    assert_eq!(ready(&reader), vec![(0, 7)]);
    // given up and assigned again while the chunk was held: its claim starts before the
    // chunk (the hand-over checkpoint did not hold it), so the chunk would be read twice
    reader.ready.clear();
    let held = lane_end(0, &mut reader.partitions[0], 11);
    reader.forget(0);
    reader.partitions[0].assigned = true;
    PartitionReader::unread(&mut reader, held);
    assert_eq!(ready(&reader), vec![]);
}
