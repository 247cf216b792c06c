//! A Kafka pipeline without checkpoints (Kafka outputs, durable as they are acknowledged),
//! killed and started again with the same file and
//! group: rows read again past the committed offset, of windows the first run already made
//! durable, are not counted again (before, such a window was emitted a second time with only
//! the rows read again: a smaller number, which a reader keeping the newest row per key took).
//!
//! The note that says which rows those are travels as the offset commit's metadata. The test
//! broker (tansu) drops commit metadata, so this runs against librdkafka's mock cluster,
//! started in the test process and served over TCP to `weir` and to the independent Python
//! client (which reads the committed offset and its metadata, and the output topic).

use std::time::{Duration, Instant};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
use kafka_support::{produce_lines, read_topic, tool, Running};
use rdkafka::mocking::MockCluster;

/// A minute-aligned event time (ms).
const T0: i64 = 1_700_000_040_000;

fn event(id: u32, seconds: i64) -> String {
    format!(
        r#"{{"eventId":"e{id}","timestamp":{},"source":"s3-ingest","datasetName":"orders","recordCount":{},"sizeBytes":1000,"format":"parquet","location":"s3://lake/orders","status":"SUCCESS"}}"#,
        T0 + seconds * 1000,
        id * 10
    )
}

/// The group's committed offset of partition 0 and its metadata, by the independent client.
fn committed(brokers: &str, group: &str, topic: &str) -> (i64, String) {
    committed_of(brokers, group, topic, 0)
}

/// The group's committed offset of `partition` and its metadata, by the independent client.
fn committed_of(brokers: &str, group: &str, topic: &str, partition: i32) -> (i64, String) {
    let partition = partition.to_string();
    let out = tool(&["committed", brokers, group, topic, &partition]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    (
        v["offset"].as_i64().unwrap(),
        v["metadata"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn a_window_emitted_before_a_kill_is_not_emitted_again_with_the_rows_read_again() {
    for parallelism in ["1", "2"] {
        killed_and_started_again(parallelism);
    }
}

fn killed_and_started_again(parallelism: &str) {
    let mock = cluster(1);
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &brokers, "");
    // offsets 0-3: window 0 gets e1 and e3 (e3 after e2 of window 1, within the
    // out-of-orderness); e4 closes window 0
    let first: Vec<String> = [(1, 10), (2, 62), (3, 58), (4, 70)]
        .iter()
        .map(|&(id, s)| event(id, s))
        .collect();
    let lines: Vec<&str> = first.iter().map(String::as_str).collect();
    produce_lines(dir.path(), &brokers, "events", &lines);
    let args = ["--parallelism", parallelism];
    let run = Running::start(&pipeline, &args);
    // window 0 is durable: the committed offset moves to e2, the first row of window 1,
    // with a note of the rows read to offset 4 (a chunk reported after the commit is in the
    // next note, within 10 s)
    wait_for_commit(&run, || {
        let (offset, note) = committed(&brokers, "reread", "events");
        (offset == 1 && note.starts_with("weir.reread.v1 r=4 "))
            .then_some(())
            .ok_or_else(|| format!("no commit at offset 1 with a note (now {offset} {note:?})"))
    });
    run.kill();

    // the same pipeline, the same group: it reads offsets 1-3 again
    let run = Running::start(&pipeline, &args);
    produce_lines(dir.path(), &brokers, "events", &[&event(5, 200)]);
    let started = Instant::now();
    while windows_of(&brokers, dir.path()).len() < 2 && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = run.interrupt();
    let got = windows_of(&brokers, dir.path());
    assert_eq!(
        got,
        vec![
            ("2023-11-14T22:14:00.000Z".to_string(), 2, 40),
            ("2023-11-14T22:15:00.000Z".to_string(), 2, 60),
        ],
        "parallelism {parallelism}: each window once, with all its rows; log:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().any(|l| l.contains("not counted again")),
        "the second run says it skips rows"
    );
    // nothing was dead-lettered: e3 was neither late nor lost
    let (_, dead) = read_topic(&brokers, "dead", dir.path());
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}

/// Waits (at most 60 s) until `committed` says the group's commit is there; else fails
/// with what it says and the run's log.
fn wait_for_commit(run: &Running, committed: impl Fn() -> Result<(), String>) {
    let started = Instant::now();
    while let Err(now) = committed() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{now}; log:\n{}",
            run.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The test's pipeline (`event_time_extra`: more of the source's `event_time` mapping).
fn write_pipeline(
    dir: &std::path::Path,
    brokers: &str,
    event_time_extra: &str,
) -> std::path::PathBuf {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: kafka-reread
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: events, group_id: reread }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s{event_time_extra} }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: out }} }}
dead_letter: {{ kafka: {{ topic: dead }} }}
"#
        ),
    )
    .unwrap();
    pipeline
}

/// librdkafka's mock cluster with the test's topics: `events` of `partitions` partitions,
/// `out` and `dead`.
fn cluster(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", partitions, 1).unwrap();
    mock.create_topic("out", 1, 1).unwrap();
    mock.create_topic("dead", 1, 1).unwrap();
    mock
}

/// A test of sparse partitions on the mock cluster: their pipeline stops holding the
/// watermark back for a partition after 2 s without a message.
struct Sparse {
    brokers: String,
    dir: tempfile::TempDir,
    pipeline: std::path::PathBuf,
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Sparse {
    /// `partitions` partitions of `events`, and the pipeline.
    fn new(partitions: i32) -> Self {
        let mock = cluster(partitions);
        let brokers = mock.bootstrap_servers();
        let dir = tempfile::tempdir().unwrap();
        let pipeline = write_pipeline(dir.path(), &brokers, ", idle_timeout: 2s");
        Sparse {
            brokers,
            dir,
            pipeline,
            _mock: mock,
        }
    }

    /// Produces `events` (id, second) to `partition`, by the independent client.
    fn produce(&self, partition: &str, events: &[(u32, i64)]) {
        let lines: Vec<String> = events.iter().map(|&(id, s)| event(id, s)).collect();
        let part = self.dir.path().join("part.ndjson");
        std::fs::write(&part, lines.join("\n") + "\n").unwrap();
        let file = part.to_str().unwrap();
        tool(&[
            "produce",
            &self.brokers,
            "events",
            file,
            "--partition",
            partition,
        ]);
    }
}

/// The output's rows as (window start, events, records).
fn windows_of(brokers: &str, dir: &std::path::Path) -> Vec<(String, i64, i64)> {
    read_topic(brokers, "out", dir)
        .1
        .iter()
        .map(|r| {
            (
                r["window_start"].as_str().unwrap().to_string(),
                r["events"].as_i64().unwrap(),
                r["records"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_row_read_after_a_restart_for_a_window_emitted_before_is_late_not_a_second_row() {
    for parallelism in ["1", "2"] {
        late_after_a_restart(parallelism);
    }
}

/// Three partitions. The first run emits window 0 once partitions 1 (one row) and 2 (none)
/// went idle, and is killed. Rows of window 0 new since reach partition 1 (committed at its
/// end, with a note) and partition 2 (never committed: no note). After the restart each is
/// its partition's first row, and the partitions not read yet hold the workers' watermark
/// back: by their own watermarks they were on time, opened window 0 again and had it
/// emitted a second time with only themselves. A run not killed finds them late, and now
/// the restarted one does: by the floor of partition 1's note, and for partition 2 by the
/// lowest floor of the others' notes (the run's first assignment).
fn late_after_a_restart(parallelism: &str) {
    let sparse = Sparse::new(3);
    let (brokers, pipeline) = (sparse.brokers.clone(), sparse.pipeline.clone());
    let dir = &sparse.dir;
    let produce = |partition: &str, events: &[(u32, i64)]| sparse.produce(partition, events);
    let args = ["--parallelism", parallelism];
    let run = Running::start(&pipeline, &args);
    run.wait_for("the assignment", |r| r.assignments() >= 1);
    // partition 1: e6 (window 0), then silence: partitions 1 and 2 turn idle (the setting)
    produce("1", &[(6, 12)]);
    std::thread::sleep(Duration::from_secs(4));
    // partition 0: e1 (window 0), e2 (window 1), e3 (window 0), e4: window 0 closes
    produce("0", &[(1, 10), (2, 62), (3, 58), (4, 70)]);
    wait_for_commit(&run, || {
        let (offset, note) = committed_of(&brokers, "reread", "events", 0);
        let (end, note1) = committed_of(&brokers, "reread", "events", 1);
        // (a note of the rows read to offset 4, and floors)
        let noted = note.starts_with("weir.reread.v1 r=4 ") && note.contains(" f ");
        (offset == 1 && noted && end == 1 && note1.contains(" f "))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "no commits at 1 and 1 with floors (now {offset} {note:?}, {end} {note1:?})"
                )
            })
    });
    run.kill();
    // e8 and e10, of window 0, new since the kill
    produce("1", &[(8, 50)]);
    produce("2", &[(10, 55)]);

    let run = Running::start(&pipeline, &args);
    // every partition moves on: window 1 closes
    produce("0", &[(5, 200)]);
    produce("1", &[(9, 200)]);
    produce("2", &[(11, 200)]);
    let late = |dir: &std::path::Path| {
        read_topic(&brokers, "dead", dir)
            .1
            .iter()
            .filter(|d| d["reason"] == "late")
            .count()
    };
    let started = Instant::now();
    while (windows_of(&brokers, dir.path()).len() < 2 || late(dir.path()) < 2)
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = run.interrupt();
    assert_eq!(
        windows_of(&brokers, dir.path()),
        vec![
            ("2023-11-14T22:14:00.000Z".to_string(), 3, 100),
            ("2023-11-14T22:15:00.000Z".to_string(), 2, 60),
        ],
        "parallelism {parallelism}: window 0 once, whole; log:\n{}",
        log.join("\n")
    );
    let (_, dead) = read_topic(&brokers, "dead", dir.path());
    let mut got: Vec<(i64, i64, bool)> = dead
        .iter()
        .map(|d| {
            (
                d["partition"].as_i64().unwrap(),
                d["offset"].as_i64().unwrap(),
                d["reason"] == "late",
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(1, 1, true), (2, 0, true)],
        "dead letters: {dead:?}"
    );
    let raw: Vec<&str> = dead.iter().map(|d| d["raw"].as_str().unwrap()).collect();
    assert!(
        raw.iter().any(|r| r.contains(r#""eventId":"e8""#))
            && raw.iter().any(|r| r.contains(r#""eventId":"e10""#)),
        "{dead:?}"
    );
}

#[test]
fn a_window_made_durable_is_in_the_note_of_every_partition_at_once() {
    for parallelism in ["1", "2"] {
        floor_in_every_note(parallelism);
    }
}

/// Two partitions. Partition 1 holds one row, of window 1: its committed offset stays at that
/// row when window 0 closes, so only its note changes (the floor). A note that alone changed
/// used to wait up to 10 s: a run killed in between left partition 1 without the floor, and
/// a row of window 0 new there since was on time after the restart (partition 1's own
/// watermark is below it) and had window 0 emitted a second time with only itself. Now the
/// commit that makes window 0's floor known carries it for every partition, and the row is
/// late.
fn floor_in_every_note(parallelism: &str) {
    let sparse = Sparse::new(2);
    let (brokers, pipeline) = (sparse.brokers.clone(), sparse.pipeline.clone());
    let dir = &sparse.dir;
    let produce = |partition: &str, events: &[(u32, i64)]| sparse.produce(partition, events);
    let args = ["--parallelism", parallelism];
    let run = Running::start(&pipeline, &args);
    run.wait_for("the assignment", |r| r.assignments() >= 1);
    // partition 1: e6 (window 1; its watermark 57 s), then silence: it turns idle
    produce("1", &[(6, 62)]);
    std::thread::sleep(Duration::from_secs(4));
    // partition 0: e1 (window 0), e2 (window 1), e3 (window 0), e4: window 0 closes
    produce("0", &[(1, 10), (2, 62), (3, 58), (4, 70)]);
    // window 0 closes at T0 + 60 s: the floor is there (kept at that closing)
    wait_for_commit(&run, || {
        let (offset, note) = committed_of(&brokers, "reread", "events", 0);
        (offset == 1 && floors_of(&note).first() >= Some(&(T0 + 60_000)))
            .then_some(())
            .ok_or_else(|| format!("no commit at 1 with window 0's floor (now {offset} {note:?})"))
    });
    // partition 1's, read after partition 0's: the same commit, the same floor
    let (_, note0) = committed_of(&brokers, "reread", "events", 0);
    let (offset, note) = committed_of(&brokers, "reread", "events", 1);
    run.kill();
    assert_eq!(floors_of(&note0), vec![T0 + 60_000], "{note0:?}");
    assert_eq!(
        (offset, floors_of(&note)),
        (0, floors_of(&note0)),
        "parallelism {parallelism}: partition 1's commit lacks window 0's floor: {note:?}"
    );
    // e8, of window 0, new since the kill
    produce("1", &[(8, 58)]);

    let run = Running::start(&pipeline, &args);
    // every partition moves on: window 1 closes
    produce("0", &[(5, 200)]);
    produce("1", &[(9, 200)]);
    let started = Instant::now();
    while windows_of(&brokers, dir.path()).len() < 2 && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = run.interrupt();
    assert_eq!(
        windows_of(&brokers, dir.path()),
        vec![
            ("2023-11-14T22:14:00.000Z".to_string(), 2, 40),
            ("2023-11-14T22:15:00.000Z".to_string(), 3, 120),
        ],
        "parallelism {parallelism}: window 0 once, whole; log:\n{}",
        log.join("\n")
    );
    let (_, dead) = read_topic(&brokers, "dead", dir.path());
    let late: Vec<(i64, i64)> = dead
        .iter()
        .filter(|d| d["reason"] == "late")
        .map(|d| {
            (
                d["partition"].as_i64().unwrap(),
                d["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(late, vec![(1, 1)], "dead letters: {dead:?}");
}

/// The floors of a committed note (see `weir_engine::reread`), without its topic id.
fn floors_of(note: &str) -> Vec<i64> {
    let text = note.split(" t=").next().unwrap_or_default();
    weir_engine::reread::RereadNote::decode(text)
        .map(|n| n.floors.into_iter().map(|(_, f)| f).collect())
        .unwrap_or_default()
}
