//! Tests of the Kafka sinks, on librdkafka's mock cluster.
use super::*;
use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn batch(rows: &[(&str, usize)]) -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("window_start", ts, false),
        Field::new("n", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let text: Vec<String> = rows.iter().map(|(_, len)| "x".repeat(*len)).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(k, _)| *k))),
            Arc::new(
                TimestampMillisecondArray::from(vec![60_000; rows.len()]).with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(vec![1; rows.len()])),
            Arc::new(StringArray::from(text)),
        ],
    )
    .unwrap()
}

/// The keys of every message in partition 0 of `topic`.
fn keys_in(brokers: &str, topic: &str) -> Vec<String> {
    messages_in(brokers, topic)
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect()
}

/// The (key, value) of every message in partition 0 of `topic`.
fn messages_in(brokers: &str, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "t")
        .create()
        .unwrap();
    let (_, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut messages = Vec::new();
    let started = Instant::now();
    while (messages.len() as i64) < high && started.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let key = m.key().unwrap_or_default().to_vec();
            messages.push((key, m.payload().unwrap_or_default().to_vec()));
        }
    }
    messages
}

/// A sink of the mock cluster's topic `t`, with `props` and `delivery`.
fn sink_with(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    props: &[(&str, &str)],
    delivery: KafkaDelivery,
) -> KafkaSink {
    KafkaSink::new(
        "out",
        KafkaSinkConfig {
            brokers: mock.bootstrap_servers(),
            topic: "t".into(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            format: KafkaFormat::Json,
            delivery,
        },
    )
    .unwrap()
}

fn sink(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    props: &[(&str, &str)],
) -> KafkaSink {
    sink_with(mock, props, KafkaDelivery::Idempotent)
}

/// A transactional sink with id `id` on the mock cluster's topic `t`.
fn txn_sink(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    id: &str,
) -> KafkaSink {
    let delivery = KafkaDelivery::ExactlyOnce {
        transactional_id: id.into(),
    };
    sink_with(mock, &[], delivery)
}

fn count(keys: &[String], k: &str) -> usize {
    keys.iter()
        .filter(|x| x.contains(&format!("\"k\":\"{k}\"")))
        .count()
}

/// A transactional sink whose marker reads `committed` (the epoch the test says the
/// broker committed last; the mock cluster does not store transactional offsets).
fn txn_sink_with(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    committed: &Arc<std::sync::Mutex<Option<u64>>>,
) -> KafkaSink {
    let mut s = txn_sink(mock, "p.out");
    let c = committed.clone();
    if let Some(t) = s.txn.as_mut() {
        t.marker_reader = Some(Box::new(move || *c.lock().unwrap()));
    }
    s
}

/// The transactional protocol against librdkafka's mock cluster, which runs transactions
/// (init, begin, offsets in the transaction, commit, abort) but has no `read_committed`
/// isolation (aborted messages stay visible), no fencing, and does not store
/// transactional offsets: what is checked is what each call sends and commits, and what
/// recovery sends again given the marker.
#[test]
fn exactly_once_commits_a_transaction_per_checkpoint_and_recovery_completes_the_last() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(None));
    let mut s = txn_sink_with(&mock, &committed);
    s.recover(None).unwrap();
    s.write(&batch(&[("a", 1), ("b", 1)])).unwrap();
    let info = s.pre_commit(1).unwrap();
    assert_eq!(info["rows"], 2);
    assert_eq!(info["transactional_id"], "p.out");
    let outbox = outbox_decode(info["outbox"].as_str().unwrap()).unwrap();
    assert_eq!(outbox[0].num_rows(), 2);
    s.commit(1).unwrap();
    // rows after a barrier wait for its commit; then they go in the next transaction
    s.write(&batch(&[("c", 1)])).unwrap();
    s.pre_commit(2).unwrap();
    s.write(&batch(&[("d", 1)])).unwrap();
    assert_eq!(count(&keys_in(&mock.bootstrap_servers(), "t"), "d"), 0);
    // a barrier before the sink saw checkpoint 2 complete: 2 commits first, then d is
    // prepared alone under 3
    let info3 = s.pre_commit(3).unwrap();
    assert_eq!(info3["rows"], 1, "{info3}");
    *committed.lock().unwrap() = Some(2);
    // crash: checkpoint 3 is complete, its transaction never committed; recovery aborts it
    // and sends its outbox again in a committed transaction
    drop(s);
    let mut s = txn_sink_with(&mock, &committed);
    s.recover(Some((3, &info3))).unwrap();
    let keys = keys_in(&mock.bootstrap_servers(), "t");
    // d twice: in the aborted transaction (visible here: the mock has no isolation) and
    // in the new one
    let counts = (count(&keys, "a"), count(&keys, "c"), count(&keys, "d"));
    assert_eq!(counts, (1, 1, 2), "{keys:?}");
    *committed.lock().unwrap() = Some(3);
    // crash after the commit: recovery sends nothing again
    s.write(&batch(&[("e", 1)])).unwrap();
    let info4 = s.pre_commit(4).unwrap();
    s.commit(4).unwrap();
    *committed.lock().unwrap() = Some(4);
    drop(s);
    let mut s = txn_sink_with(&mock, &committed);
    s.recover(Some((4, &info4))).unwrap();
    assert_eq!(count(&keys_in(&mock.bootstrap_servers(), "t"), "e"), 1);
    // an epoch without rows prepares nothing, and recovers nothing
    let info5 = s.pre_commit(5).unwrap();
    assert!(info5["outbox"].is_null(), "{info5}");
    s.commit(5).unwrap();
    s.recover(Some((5, &info5))).unwrap();
    // rows after the last checkpoint are aborted when the sink finishes
    s.write(&batch(&[("f", 1)])).unwrap();
    s.finish().unwrap();
}

/// A commit that reports an error although it may have gone through (here the broker's
/// answer to `EndTxn` is an error; the test's marker says whether it committed): the
/// marker is read before anything is sent again, so that the rows are neither sent in a
/// second transaction when it committed nor lost when it did not.
#[test]
fn a_failed_commit_is_resolved_by_the_marker_before_rows_are_sent_again() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(None));
    let mut s = txn_sink_with(&mock, &committed);
    s.recover(None).unwrap();
    let end_txn_fails = || {
        mock.request_errors(
            RDKafkaApiKey::EndTxn,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_REQUEST],
        )
    };
    // 1. the commit of epoch 1 fails, but it had gone through: nothing is sent again
    s.write(&batch(&[("a", 1)])).unwrap();
    s.pre_commit(1).unwrap();
    s.write(&batch(&[("w", 1)])).unwrap();
    end_txn_fails();
    let e = s.commit(1).unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    *committed.lock().unwrap() = Some(1);
    // the retry policy calls commit again
    s.commit(1).unwrap();
    s.pre_commit(2).unwrap();
    s.commit(2).unwrap();
    *committed.lock().unwrap() = Some(2);
    let keys = keys_in(&mock.bootstrap_servers(), "t");
    assert_eq!((count(&keys, "a"), count(&keys, "w")), (1, 1), "{keys:?}");
    // 2. the commit of epoch 3 fails and had not gone through: its rows go again in a
    // new transaction (twice in the log here: the mock keeps aborted messages visible)
    s.write(&batch(&[("b", 1)])).unwrap();
    s.pre_commit(3).unwrap();
    end_txn_fails();
    assert!(s.commit(3).is_err());
    s.commit(3).unwrap();
    let keys = keys_in(&mock.bootstrap_servers(), "t");
    assert_eq!(count(&keys, "b"), 2, "{keys:?}");
    assert_eq!(count(&keys, "a"), 1, "{keys:?}");
}

/// A restore from an older checkpoint than the one the topic's marker holds (a newer
/// damaged checkpoint was skipped) is refused: its transactions cannot be taken back.
#[test]
fn a_restore_older_than_the_committed_marker_is_refused() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(Some(5)));
    let mut s = txn_sink_with(&mock, &committed);
    let info =
        serde_json::json!({"transactional_id": "p.out", "epoch": 4, "rows": 0, "outbox": null});
    let e = s.recover(Some((4, &info))).unwrap_err();
    assert!(!matches!(e, EngineError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("checkpoint 5"), "{e}");
    let mut s = txn_sink_with(&mock, &committed);
    s.recover(Some((5, &info))).unwrap();
}

#[test]
fn exactly_once_needs_a_broker_with_transactions() {
    // a broker without transactions: the mock without the InitProducerId API
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    mock.apiversion(rdkafka::types::RDKafkaApiKey::InitProducerId, None, None)
        .unwrap();
    let mut s = txn_sink(&mock, "p.out");
    let e = s.recover(None).unwrap_err();
    assert!(
        e.chain().to_string().contains("transaction"),
        "{}",
        e.chain()
    );
    // the client's error is kept as the cause, not flattened to text
    let cause = std::error::Error::source(&e).expect("a cause");
    assert!(cause.is::<crate::KafkaError>(), "{cause:?}");
}

/// `exactly_once`: a row over the size limit is a dead letter of the checkpoint whose
/// pre-commit refused it; a recovery that sends that checkpoint's outbox again (its
/// transaction never committed) does not dead-letter it a second time.
#[test]
fn a_recovery_does_not_dead_letter_a_refused_row_again() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let delivery = KafkaDelivery::ExactlyOnce {
        transactional_id: "p.big".into(),
    };
    let committed = Arc::new(std::sync::Mutex::new(None::<u64>));
    let txn = |committed: &Arc<std::sync::Mutex<Option<u64>>>| {
        let mut s = sink_with(&mock, &[("message.max.bytes", "2000")], delivery.clone());
        let c = committed.clone();
        if let Some(t) = s.txn.as_mut() {
            t.marker_reader = Some(Box::new(move || *c.lock().unwrap()));
        }
        s
    };
    let mut s = txn(&committed);
    s.recover(None).unwrap();
    s.write(&batch(&[("a", 10), ("big", 5000)])).unwrap();
    let info = s.pre_commit(1).unwrap();
    assert_eq!(s.take_rejected().len(), 1, "refused in checkpoint 1");
    // crash before the commit; the recovery sends the outbox again
    drop(s);
    let mut s = txn(&committed);
    s.recover(Some((1, &info))).unwrap();
    assert!(s.take_rejected().is_empty(), "dead-lettered twice");
    assert_eq!(count(&keys_in(&mock.bootstrap_servers(), "t"), "big"), 0);
}

#[test]
fn a_row_over_the_size_limit_is_rejected_and_the_others_are_sent() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut s = sink(&mock, &[("message.max.bytes", "2000")]);
    s.write(&batch(&[("a", 10), ("big", 5000), ("b", 10)]))
        .unwrap();
    assert!(s.flush().unwrap());
    let rejected = s.take_rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].error.code, "message_too_large");
    assert_eq!(
        rejected[0].error.details["key"],
        r#"{"k":"big","window_start":"1970-01-01T00:01:00.000Z"}"#
    );
    assert!(String::from_utf8_lossy(&rejected[0].raw).contains("xxxxx"));
    assert!(s.take_rejected().is_empty());
    let keys = keys_in(&mock.bootstrap_servers(), "t");
    assert_eq!(keys.len(), 2, "{keys:?}");
}

#[test]
fn after_a_failed_delivery_the_retry_sends_every_unacknowledged_row_again() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut s = sink(&mock, &[("message.timeout.ms", "1500")]);
    s.write(&batch(&[("a", 1)])).unwrap();
    s.flush().unwrap();
    mock.broker_down(1).unwrap();
    s.write(&batch(&[("b", 1), ("c", 1)])).unwrap();
    let e = s.flush().unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    // the broker comes back; the retried flush sends b and c again through a new producer
    mock.broker_up(1).unwrap();
    let started = Instant::now();
    loop {
        match s.flush() {
            Ok(true) => break,
            Err(EngineError::Unavailable(_)) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!("{other:?}"),
        }
    }
    let mut keys = keys_in(&mock.bootstrap_servers(), "t");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3, "{keys:?}");
}

/// What a broker with transactions would keep, for the mock cluster (which stores no
/// transactional offsets and has no `read_committed`): each transactional id's marker, and
/// the keys of the rows of every transaction that committed, which is what a
/// `read_committed` reader sees.
#[derive(Default)]
struct Committed {
    markers: std::collections::HashMap<String, u64>,
    keys: Vec<String>,
}

/// A transactional sink with id `id` whose marker and commits are `committed`'s.
fn pool_sink(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    id: &str,
    committed: &Arc<std::sync::Mutex<Committed>>,
) -> KafkaSink {
    let mut s = txn_sink(mock, id);
    let (read, write, id) = (committed.clone(), committed.clone(), id.to_string());
    if let Some(t) = s.txn.as_mut() {
        t.marker_reader = Some(Box::new(move || {
            read.lock().unwrap().markers.get(&id).copied()
        }));
        t.on_commit = Some(Box::new(move |id, epoch, rows| {
            let mut c = write.lock().unwrap();
            c.markers.insert(id.to_string(), epoch);
            for b in rows {
                let k = b.column(0).as_string::<i32>();
                c.keys.extend(k.iter().flatten().map(str::to_string));
            }
        }));
    }
    s
}

/// Two workers of a pool, each under its own transactional id (`<id>.<worker>`), so each
/// has its own marker: worker a dies after its checkpoint 2 completed and before it
/// committed it; worker b, restoring a's partitions from that checkpoint, commits it from
/// its outbox under a's id (which aborts what a left open and would fence a if it still
/// ran), once: a second roll-forward and a's own restart send nothing. A zombie's
/// checkpoint that the pool voided is never committed (the engine commits only complete
/// checkpoints), its transaction aborted when the id registers again, and the new owner
/// produces its rows. A zombie that committed a complete checkpoint before the new owner
/// looked leaves nothing to roll forward. Every row is committed once. (The remaining
/// order, the roll-forward first and then the zombie's commit, is refused by the broker,
/// which fences the zombie's producer when the id registers again; the mock cluster gives
/// every registration a new producer id and fences nothing, so that order is left to the
/// opt-in crash test against a broker with transactions.)
#[test]
fn a_pool_takes_over_a_dead_workers_transaction_once_and_never_commits_a_voided_one() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(Committed::default()));
    let (ida, idb) = ("p.out.a", "p.out.b");
    let mut a = pool_sink(&mock, ida, &committed);
    let mut b = pool_sink(&mock, idb, &committed);
    a.recover(None).unwrap();
    b.recover(None).unwrap();
    a.write(&batch(&[("a1", 1)])).unwrap();
    assert_eq!(a.pre_commit(1).unwrap()["transactional_id"], ida);
    a.commit(1).unwrap();
    b.write(&batch(&[("b1", 1)])).unwrap();
    b.pre_commit(1).unwrap();
    b.commit(1).unwrap();
    // a's checkpoint 2 completes; a dies before its commit (rows after it wait, lost)
    a.write(&batch(&[("a2", 1)])).unwrap();
    let a2 = a.pre_commit(2).unwrap();
    a.write(&batch(&[("a3", 1)])).unwrap();
    drop(a);
    // b takes a's partitions over from checkpoint 2: it commits it under a's id, once
    assert!(pool_sink(&mock, ida, &committed)
        .roll_forward(2, &a2)
        .unwrap());
    assert!(!pool_sink(&mock, ida, &committed)
        .roll_forward(2, &a2)
        .unwrap());
    // a comes back with the same id and restores its checkpoint 2: nothing again
    let mut a = pool_sink(&mock, ida, &committed);
    a.recover(Some((2, &a2))).unwrap();
    // a zombie: its checkpoint 3 is voided by a claim, so the engine never commits it; the
    // worker joins again, and registering its id aborts that transaction
    a.write(&batch(&[("a3", 1)])).unwrap();
    a.pre_commit(3).unwrap();
    drop(a);
    let mut a = pool_sink(&mock, ida, &committed);
    a.recover(Some((2, &a2))).unwrap();
    // b restored the partition from checkpoint 2: it produces a3 in its own transaction
    b.write(&batch(&[("a3", 1)])).unwrap();
    b.pre_commit(2).unwrap();
    b.commit(2).unwrap();
    // a's epoch 3 again, complete and committed by a before b claims: nothing to roll forward
    a.write(&batch(&[("a4", 1)])).unwrap();
    let a3 = a.pre_commit(3).unwrap();
    a.commit(3).unwrap();
    assert!(!pool_sink(&mock, ida, &committed)
        .roll_forward(3, &a3)
        .unwrap());
    let c = committed.lock().unwrap();
    let mut keys = c.keys.clone();
    keys.sort();
    assert_eq!(keys, ["a1", "a2", "a3", "a4", "b1"], "{keys:?}");
    assert_eq!((c.markers[ida], c.markers[idb]), (3, 2));
}

/// Rows written after a barrier wait for its transaction's commit, then go into the next
/// transaction. When one of them fails to send (a full queue, a schema registry that does
/// not answer), the call made again sends every one of them, and the next row written is
/// not taken for one already sent: each row is committed once.
#[test]
fn rows_that_waited_for_a_commit_are_all_sent_when_one_fails_to_send() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(Committed::default()));
    let mut s = pool_sink(&mock, "p.out", &committed);
    s.recover(None).unwrap();
    s.write(&batch(&[("a", 1)])).unwrap();
    s.pre_commit(1).unwrap();
    for k in ["w1", "w2", "w3"] {
        s.write(&batch(&[(k, 1)])).unwrap();
    }
    s.send_plan = [false].into();
    let e = s.commit(1).unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    // the retry policy calls again
    s.commit(1).unwrap();
    s.write(&batch(&[("x", 1)])).unwrap();
    s.pre_commit(2).unwrap();
    s.commit(2).unwrap();
    let mut keys = committed.lock().unwrap().keys.clone();
    keys.sort();
    assert_eq!(keys, ["a", "w1", "w2", "w3", "x"]);
}

/// A recovery that sends the restored checkpoint's rows again and fails part-way is made
/// again by the retry policy: its rows are committed once, and the first row written after
/// it is not taken for one already sent.
#[test]
fn a_recovery_made_again_after_a_failed_send_commits_each_row_once() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(Committed::default()));
    let mut s = pool_sink(&mock, "p.out", &committed);
    s.recover(None).unwrap();
    s.write(&batch(&[("a", 1)])).unwrap();
    s.write(&batch(&[("b", 1)])).unwrap();
    let info = s.pre_commit(1).unwrap();
    // a crash before the commit
    drop(s);
    let mut s = pool_sink(&mock, "p.out", &committed);
    s.send_plan = [false].into();
    let e = s.recover(Some((1, &info))).unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    s.recover(Some((1, &info))).unwrap();
    s.write(&batch(&[("c", 1)])).unwrap();
    s.pre_commit(2).unwrap();
    s.commit(2).unwrap();
    let mut keys = committed.lock().unwrap().keys.clone();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c"]);
}

/// The values of every message in partition 0 of `topic`, as JSON.
fn values_in(brokers: &str, topic: &str) -> Vec<serde_json::Value> {
    messages_in(brokers, topic)
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect()
}

/// A dead letter the broker refuses for good (it answers the produce request with
/// `MESSAGE_TOO_LARGE`, as for a topic whose `max.message.bytes` is below the client's
/// limit) goes again with its raw bytes cut, its reason and error kept: the flush does not
/// fail (it failed the run, and every restart, which wrote the same dead letter again).
#[test]
fn a_dead_letter_the_broker_refuses_goes_again_with_its_raw_bytes_cut() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use weir_engine::dead_letter::{PartitionInfo, Reason};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut d = DeadLetterKafka::new(KafkaSinkConfig {
        brokers: mock.bootstrap_servers(),
        topic: "t".into(),
        properties: vec![],
        format: KafkaFormat::Json,
        delivery: KafkaDelivery::Idempotent,
    })
    .unwrap();
    let record = DeadLetter {
        partition: Arc::new(PartitionInfo {
            source: "events".into(),
            id: 0,
            state_id: 0,
            number: 3,
            topic: Some("in".into()),
            file: None,
        }),
        offset: Some(41),
        reason: Reason::Bad,
        error: ErrorInfo::new("invalid_json", "not JSON"),
        raw: Some(vec![b'x'; 100_000]),
        trace: Default::default(),
    };
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    d.write(&[record]).unwrap();
    assert!(d.flush().unwrap());
    let values = values_in(&mock.bootstrap_servers(), "t");
    let kept: Vec<&serde_json::Value> = values
        .iter()
        .filter(|v| v["raw_truncated"] == true)
        .collect();
    assert_eq!(kept.len(), 1, "{values:?}");
    assert_eq!(kept[0]["raw"].as_str().unwrap().len(), 64 << 10);
    assert_eq!(kept[0]["error"]["code"], "invalid_json");
    assert_eq!(kept[0]["offset"], 41);
}

/// A new producer sends every unacknowledged batch again; when one of them fails to send in
/// turn, none is dropped: the call made again sends them all, and the transaction commits
/// each once.
#[test]
fn a_resend_failing_part_way_keeps_every_unacknowledged_batch() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let committed = Arc::new(std::sync::Mutex::new(Committed::default()));
    let mut s = pool_sink(&mock, "p.out", &committed);
    s.recover(None).unwrap();
    for k in ["a", "b", "c"] {
        s.write(&batch(&[(k, 1)])).unwrap();
    }
    // d fails: the producer is replaced at the next call, which sends a, b, c, d again; b
    // fails then
    s.send_plan = [false].into();
    assert!(matches!(
        s.write(&batch(&[("d", 1)])),
        Err(EngineError::Unavailable(_))
    ));
    s.send_plan = [true, false].into();
    assert!(matches!(
        s.write(&batch(&[("d", 1)])),
        Err(EngineError::Unavailable(_))
    ));
    s.write(&batch(&[("d", 1)])).unwrap();
    s.pre_commit(1).unwrap();
    s.commit(1).unwrap();
    let mut keys = committed.lock().unwrap().keys.clone();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "d"]);
}

/// A write the broker denies (an ACL) fails the same way whatever the retries: the flush's
/// error is the user's to fix, not an outage retried for ever (the pipeline stalled).
#[test]
fn a_write_the_broker_denies_is_the_users_to_fix_not_retried() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut s = sink(&mock, &[("message.timeout.ms", "3000")]);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
    );
    s.write(&batch(&[("a", 1)])).unwrap();
    let e = s.flush().unwrap_err();
    assert_eq!(e.kind(), weir_engine::ErrorKind::User, "{e}");
    assert!(
        e.chain().to_string().contains("grant the principal WRITE"),
        "{e}"
    );
}

/// A cluster that refuses the idempotent producer its id (no `IDEMPOTENT_WRITE`): the
/// producer fails for good and purges its messages, whose reports say only "purged"; the
/// flush's error takes the producer's fatal cause and is the user's, not an outage retried
/// for ever through new producers that all fail the same way.
#[test]
fn a_cluster_refusing_idempotent_writes_is_the_users_to_fix_not_retried() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 50],
    );
    let mut s = sink(&mock, &[("message.timeout.ms", "3000")]);
    let e = match s.write(&batch(&[("a", 1)])) {
        Err(e) => e,
        Ok(()) => s.flush().unwrap_err(),
    };
    assert_eq!(e.kind(), weir_engine::ErrorKind::User, "{e}");
    assert!(
        e.chain().to_string().contains("IDEMPOTENT_WRITE"),
        "{}",
        e.chain()
    );
}

/// A row refused for good, sent again with the others after a failure (through a new
/// producer), is refused again: it is a dead letter once.
#[test]
fn a_refused_row_sent_again_after_a_failure_is_a_dead_letter_once() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let mut s = sink(&mock, &[("message.max.bytes", "2000")]);
    s.write(&batch(&[("a", 10), ("big", 5000)])).unwrap();
    s.send_plan = [false].into();
    assert!(s.write(&batch(&[("b", 10)])).is_err());
    // the retry policy calls again: every unacknowledged row goes again
    s.write(&batch(&[("b", 10)])).unwrap();
    assert!(s.flush().unwrap());
    let rejected = s.take_rejected();
    assert_eq!(
        rejected.len(),
        1,
        "{:?}",
        rejected
            .iter()
            .map(|r| &r.error.details)
            .collect::<Vec<_>>()
    );
    let mut keys = keys_in(&mock.bootstrap_servers(), "t");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2, "{keys:?}");
}

/// A topic the principal may not see is not taken for a missing one (creating it would not
/// mend an ACL): the sink's error says what to grant, and is the user's to fix.
#[test]
fn a_topic_the_principal_may_not_see_is_not_created_but_refused_with_what_to_grant() {
    use rdkafka::types::RDKafkaRespErr;
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    mock.topic_error(
        "t",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let e = KafkaSink::new(
        "out",
        KafkaSinkConfig {
            brokers: mock.bootstrap_servers(),
            topic: "t".into(),
            properties: vec![],
            format: KafkaFormat::Json,
            delivery: KafkaDelivery::Idempotent,
        },
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind(), weir_engine::ErrorKind::User, "{e}");
    assert!(
        e.chain().to_string().contains("grant the principal"),
        "{}",
        e.chain()
    );
}
