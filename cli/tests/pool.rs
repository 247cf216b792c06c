//! A worker pool against a real broker (`scripts/kafka.sh start`, or `KAFKA_BROKERS`):
//! `weir run --worker ID` started several times shares a topic's partitions; workers are
//! killed, started and stopped while an independent client produces the events, and the
//! union of every worker's committed files equals the reference model's
//! (`tests/model/window_model.py`) result: no loss, no duplicate.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{
    compare, compare_at_least_once, generate, oracle_per_dataset, read_ndjson, read_parquet,
    union_of_workers, Row,
};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/pool.rs"]
mod pool_support;
use kafka_support::{brokers, events_processed, read_topic, tool, unique, weir, Running};
use pool_support::{claims_from, has_claims, has_claims_in, slices_of};

const AGGREGATES: &str = r#"
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)"#;
const ORACLE_AGGREGATES: &[&str] = &[
    "events=count",
    "records=sum:recordCount",
    "max_bytes=max:sizeBytes",
];

/// Produces slices one after the other, 700 ms apart, with `kafka_tool.py produce` (extra
/// arguments `args`), in a thread of its own.
struct SliceProducer {
    produced: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl SliceProducer {
    fn start(brokers: &str, topic: &str, slices: Vec<std::path::PathBuf>, args: &[&str]) -> Self {
        let produced = Arc::new(AtomicUsize::new(0));
        let (brokers, topic, count) = (brokers.to_string(), topic.to_string(), produced.clone());
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let thread = std::thread::spawn(move || {
            for s in &slices {
                let mut all = vec!["produce", &brokers, &topic, s.to_str().unwrap()];
                all.extend(args.iter().map(String::as_str));
                tool(&all);
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        SliceProducer { produced, thread }
    }

    /// Waits until `n` slices are produced.
    fn wait_for(&self, n: usize) {
        let started = Instant::now();
        while self.produced.load(Ordering::SeqCst) < n {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the producer is stuck"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn join(self) {
        self.thread.join().unwrap();
    }
}

/// Starts worker `id` of `pipeline`, whose sources' group is `group` (`POOL_GROUP`).
fn start_worker(pipeline: &Path, id: &str, extra: &[&str], group: &str) -> Running {
    let mut args = vec!["--worker", id];
    args.extend_from_slice(extra);
    Running::start_with(pipeline, &args, &[("POOL_GROUP", group)])
}

#[test]
fn a_pool_survives_a_killed_a_new_and_a_stopped_worker_exactly_once() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(
        &events,
        &[
            "40000",
            "--seed",
            "21",
            "--keys",
            "40",
            "--step-ms",
            "100",
            "--unicode-keys",
            "--late-frac",
            "0.003",
            "--late-ms",
            "180000",
            "--bad-frac",
            "0.002",
        ],
    );
    let (expected, summary) = oracle_per_dataset(
        &events,
        ORACLE_AGGREGATES,
        &dir.path().join("expected.ndjson"),
    );
    // the events arrive over about 20 s, in 20 slices
    let slices = slices_of(&events, 2000);
    let (input, output, group) = (unique("pool-in"), unique("pool-out"), unique("pool"));
    tool(&["create", &brokers, &input, "12"]);
    tool(&["create", &brokers, &output, "3"]);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pool
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "${{POOL_GROUP}}", start_from: earliest }}
    partitioned_by: [datasetName]        # the producer keys messages by datasetName
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [file, parquet, topic]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
  parquet: {{ file: {{ path: out/per_dataset.parquet }} }}
  topic: {{ kafka: {{ topic: {output} }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 2s }}
"#
        ),
    )
    .unwrap();

    let producer = SliceProducer::start(&brokers, &input, slices, &["--key-field", "datasetName"]);

    // Three workers share the partitions.
    let worker = |id: &str, extra: &[&str], group: &str| start_worker(&pipeline, id, extra, group);
    let a = worker("a", &[], &group);
    let b = worker("b", &[], &group);
    let c = worker("c", &[], &group);
    for w in [&a, &b, &c] {
        w.wait_for("partitions for every worker", has_claims);
    }
    producer.wait_for(6);

    // b dies: its partitions continue from its last checkpoint on the others.
    let taken =
        |a: &Running, c: &Running| claims_from(&a.lines(), "b") + claims_from(&c.lines(), "b");
    let before = taken(&a, &c);
    let killed = Instant::now();
    let b_log = b.kill();
    assert!(has_claims_in(&b_log), "b never got partitions");
    let started = Instant::now();
    while taken(&a, &c) == before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nobody took b's partitions over;\na:\n{}\nc:\n{}",
            a.lines().join("\n"),
            c.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pause = killed.elapsed();
    eprintln!(
        "rebalance pause: {:.1} s from b's death to its partitions' new owner starting on them",
        pause.as_secs_f64()
    );
    // the issue's bar is 10 s (measured here: 5.8 to 9.3 s with a 6 s session timeout);
    // a loaded CI machine gets some slack
    assert!(pause < Duration::from_secs(15), "rebalance pause {pause:?}");

    // A fourth worker joins, then c stops gracefully (it hands its partitions over).
    let d = worker("d", &[], &group);
    d.wait_for("d's partitions", has_claims);
    producer.wait_for(13);
    c.interrupt();

    // The input ends; the remaining workers stop, one after the other.
    producer.join();
    std::thread::sleep(Duration::from_secs(3));
    d.interrupt();
    std::thread::sleep(Duration::from_secs(2));
    a.interrupt();
    // A last worker reads every partition to its end, which closes the last windows. It
    // joins a group of its own: the state and offsets are in the checkpoint store, not the
    // group, and tansu's coordinator sometimes never assigns a member that joins a group
    // right after its last members left (seen twice in about fifteen runs).
    let e = worker("e", &["--until-caught-up"], &format!("{group}-end"));
    e.wait_within(Duration::from_secs(120));

    let out = dir.path().join("out");
    let rows = union_of_workers(&out, "per_dataset");
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the workers' files differ from the oracle: {e}"));
    // the Parquet output: a folder of committed parts per worker
    let mut parts = Vec::new();
    for folder in std::fs::read_dir(&out).unwrap().flatten() {
        let name = folder.file_name().to_string_lossy().into_owned();
        if name.starts_with("per_dataset.") && name.ends_with(".parquet") {
            for part in std::fs::read_dir(folder.path()).unwrap().flatten() {
                let part_name = part.file_name().to_string_lossy().into_owned();
                if part_name.starts_with("part-") && part_name.ends_with(".parquet") {
                    parts.extend(read_parquet(&part.path()));
                }
            }
        }
    }
    compare(&expected, &parts, &["datasetName"])
        .unwrap_or_else(|e| panic!("the workers' Parquet parts differ from the oracle: {e}"));
    let dead = union_of_workers(&out, "dead");
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count() as u64;
    assert_eq!(
        count("bad"),
        summary["bad"].as_u64().unwrap(),
        "bad records"
    );
    assert_eq!(
        count("late"),
        summary["late"].as_u64().unwrap(),
        "late records"
    );

    // Kafka output: every oracle row; a repeat (a window in flight when its partition moved)
    // is a byte-identical copy.
    let (_, messages) = read_topic(&brokers, &output, dir.path());
    let repeats = compare_at_least_once(&expected, &messages, &["datasetName"])
        .unwrap_or_else(|e| panic!("the output topic misses oracle rows: {e}"));
    let mut seen: std::collections::HashMap<(Value, Value), &Row> = Default::default();
    for m in &messages {
        let k = (m["datasetName"].clone(), m["window_start"].clone());
        if let Some(first) = seen.insert(k, m) {
            assert_eq!(first, m, "a repeated window differs");
        }
    }
    eprintln!(
        "pool: {} windows; the topic holds {} messages ({repeats} repeats)",
        expected.len(),
        messages.len()
    );
}

/// The broker the pools run on gives a group a new leader when its leader leaves after it
/// joined and before it sent the assignment (a pool worker that closes its consumer while the
/// group re-forms). tansu 0.6.0 did not: the group waited for the gone leader, no member was
/// assigned a partition again, and a worker reading `--until-caught-up` failed after its
/// timeout (`scripts/kafka.sh` builds tansu with the fix, `scripts/tansu/`).
#[test]
fn the_broker_gives_a_group_whose_leader_left_mid_rebalance_a_new_leader() {
    let brokers = brokers();
    let (topic, group) = (unique("leader-leaves"), unique("leader-leaves"));
    tool(&["create", &brokers, &topic, "3"]);
    let out = tool(&["leader-leaves", &brokers, &topic, &group]);
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["partitions"], 3, "{out}");
}

/// `--until-caught-up` in a pool holds for the pool as a whole: two workers of one group read
/// a topic to its end; one is killed while it holds partitions and restarted at once with the
/// same id (the killed member stays in the group until its session times out). A worker that
/// read its partitions waits until the others are read (the group's committed offsets reach
/// their ends), nobody waits forever, and the union of the workers' committed files (NDJSON
/// and Parquet parts) equals the oracle's rows: the windows flushed at the end are in the
/// final checkpoint, and every summary counts only committed rows.
#[test]
fn a_pool_read_until_caught_up_through_a_kill_and_an_immediate_restart_is_exactly_once() {
    until_caught_up_through_a_kill(false, true);
}

/// The same for a topic spread round-robin (repartitioned through the pool's internal
/// topic), with b killed and not restarted: a takes b's internal partitions once the group
/// expires b, reads them from b's checkpoints and ends with every row. (a ended as soon as
/// its own internal partitions were read, exit 0 with b's rows missing.)
#[test]
fn a_repartitioned_pool_read_until_caught_up_takes_the_partitions_of_a_killed_worker() {
    until_caught_up_through_a_kill(true, false);
}

/// For a failure's message: each worker's rows and dead letters, and its log without its
/// debug lines and routine checkpoints (the hand-overs, claims and ends, in order).
fn what_the_workers_did(out: &std::path::Path, logs: &[Vec<String>; 2]) -> String {
    let mut text = String::new();
    for (name, log) in ["a", "b"].iter().zip(logs) {
        let count = |stem: &str| {
            let path = out.join(format!("{stem}.{name}.ndjson"));
            std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
        };
        text.push_str(&format!(
            "--- {name}: {} rows, {} dead letters; its log:\n",
            count("per_dataset"),
            count("dead")
        ));
        for line in log.iter().filter(|l| {
            !l.contains(" DEBUG ")
                && !l.contains("checkpoint complete")
                && !l.contains("librdkafka")
        }) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Two workers read to the end; b is killed while it holds partitions, and started again
/// at once when `restart_b`. With `repartitioned`, the topic is spread round-robin and the
/// pool repartitions it.
fn until_caught_up_through_a_kill(repartitioned: bool, restart_b: bool) {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    if std::env::var_os("WEIR_CRASH_KEEP").is_some() {
        // the workers' logs (a.log, b.log) and outputs stay for a look
        eprintln!("keeping {}", d.display());
        std::mem::forget(dir);
    }
    let events = d.as_path().join("events.ndjson");
    generate(
        &events,
        &["60000", "--seed", "23", "--keys", "40", "--step-ms", "100"],
    );
    let (expected, _) = oracle_per_dataset(
        &events,
        ORACLE_AGGREGATES,
        &d.as_path().join("expected.ndjson"),
    );
    let (input, group) = (unique("pool-end-in"), unique("pool-end"));
    tool(&["create", &brokers, &input, "6"]);
    let mut produce = vec!["produce", &brokers, &input, events.to_str().unwrap()];
    if !repartitioned {
        produce.extend(["--key-field", "datasetName"]);
    }
    tool(&produce);
    let (name, keyed) = if repartitioned {
        (unique("pool-end-rr"), "")
    } else {
        (
            "pool-end".to_string(),
            "\n    partitioned_by: [datasetName]",
        )
    };
    let pipeline = d.as_path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: {name}
sources:
  events:
    kafka:
      brokers: "{brokers}"
      topic: {input}
      group_id: "{group}"
      start_from: earliest
      properties: {{ max.partition.fetch.bytes: "32768" }}{keyed}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [file, parquet]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
  parquet: {{ file: {{ path: out/per_dataset.parquet }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 300ms }}
"#
        ),
    )
    .unwrap();
    let worker = |id: &str| Running::start(&pipeline, &["--worker", id, "--until-caught-up"]);
    let a = worker("a");
    let b = worker("b");
    // b holds partitions: killed, restarted at once
    b.wait_for("b's partitions", has_claims);
    let killed = b.kill();
    let limit = Duration::from_secs(240);
    let ends = if restart_b {
        let b = worker("b");
        [a.end_within(limit), b.end_within(limit)]
    } else {
        // (b's run stands as ended well: its rows are a's to finish)
        use std::os::unix::process::ExitStatusExt;
        let done = Some(std::process::ExitStatus::from_raw(0));
        [a.end_within(limit), (done, killed)]
    };
    for (name, (_, log)) in ["a", "b"].iter().zip(&ends) {
        std::fs::write(d.as_path().join(format!("{name}.log")), log.join("\n")).unwrap();
    }
    // both logs tell why one worker did not end well: the other's shows what it did meanwhile
    if ends
        .iter()
        .any(|(status, _)| !status.is_some_and(|s| s.success()))
    {
        let [(sa, la), (sb, lb)] = &ends;
        panic!(
            "a: {sa:?}, b: {sb:?} (None: killed after {limit:?})\n--- a's log:\n{}\n--- b's log:\n{}",
            la.join("\n"),
            lb.join("\n")
        );
    }
    let logs = ends.map(|(_, log)| log);
    for log in &logs {
        assert!(
            !log.iter().any(|l| l.contains("not committed")),
            "rows left uncommitted:\n{}",
            log.join("\n")
        );
    }
    let out = d.as_path().join("out");
    let rows = union_of_workers(&out, "per_dataset");
    compare(&expected, &rows, &["datasetName"]).unwrap_or_else(|e| {
        panic!(
            "the workers' files differ from the oracle: {e}\n{}",
            what_the_workers_did(&out, &logs)
        )
    });
    let mut parts = Vec::new();
    for folder in std::fs::read_dir(&out).unwrap().flatten() {
        let name = folder.file_name().to_string_lossy().into_owned();
        if name.starts_with("per_dataset.") && name.ends_with(".parquet") {
            for part in std::fs::read_dir(folder.path()).unwrap().flatten() {
                let part_name = part.file_name().to_string_lossy().into_owned();
                if part_name.starts_with("part-") && part_name.ends_with(".parquet") {
                    parts.extend(read_parquet(&part.path()));
                }
            }
        }
    }
    compare(&expected, &parts, &["datasetName"])
        .unwrap_or_else(|e| panic!("the workers' Parquet parts differ from the oracle: {e}"));
}

/// More workers than the topic has partitions, reading a round-robin topic to its end: the
/// third worker's repartition stage is assigned no upstream partition (and its jobs no
/// partition of the internal topic) while the others copy; every worker ends, exit 0, with
/// the oracle's rows in their union.
#[test]
fn a_pool_with_more_workers_than_partitions_reads_to_the_end_and_ends() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(
        &events,
        &["6000", "--seed", "37", "--keys", "20", "--step-ms", "100"],
    );
    let (expected, _) = oracle_per_dataset(
        &events,
        ORACLE_AGGREGATES,
        &dir.path().join("expected.ndjson"),
    );
    let (input, group, name) = (unique("few-in"), unique("few"), unique("few-pipe"));
    tool(&["create", &brokers, &input, "2"]);
    tool(&[
        "produce",
        &brokers,
        &input,
        events.to_str().unwrap(),
        "--round-robin",
    ]);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: {name}
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "{group}", start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [file]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#
        ),
    )
    .unwrap();
    let workers: Vec<Running> = ["a", "b", "c"]
        .iter()
        .map(|id| Running::start(&pipeline, &["--worker", id, "--until-caught-up"]))
        .collect();
    let ends: Vec<_> = workers
        .into_iter()
        .map(|w| w.end_within(Duration::from_secs(180)))
        .collect();
    if ends
        .iter()
        .any(|(status, _)| !status.is_some_and(|s| s.success()))
    {
        let logs: Vec<String> = ends
            .iter()
            .zip(["a", "b", "c"])
            .map(|((status, log), id)| format!("--- {id}: {status:?}\n{}", log.join("\n")))
            .collect();
        panic!(
            "a worker did not end well (None: killed after 180 s)\n{}",
            logs.join("\n")
        );
    }
    let rows = union_of_workers(&dir.path().join("out"), "per_dataset");
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the workers' files differ from the oracle: {e}"));
}

/// A topic its producer spreads round-robin (not keyed by the window key): the pool
/// repartitions it through `<pipeline>-<source>-repartition`, and the results are the
/// oracle's. A worker is killed mid-way (its repartition stage repeats what it sent after
/// its last commit) and the last worker's stage, in a group of its own, sends the whole
/// topic again: the lanes of the internal topic drop every repeat.
#[test]
fn a_pool_repartitions_a_topic_not_keyed_by_the_window_key() {
    pool_repartitions(false);
}

/// The same, b killed between a complete checkpoint and its commit (the `before_commit`
/// failpoint) while its repartition stage goes on producing: the new owner of its partitions
/// commits that checkpoint first, and continues each lane where it left it.
#[test]
fn a_pool_repartitions_with_a_worker_killed_between_a_checkpoint_and_its_commit() {
    pool_repartitions(true);
}

fn pool_repartitions(pause_b: bool) {
    const EVENTS: usize = 20_000;
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(
        &events,
        &[
            "20000",
            "--seed",
            "33",
            "--keys",
            "30",
            "--step-ms",
            "100",
            "--unicode-keys",
            "--late-frac",
            "0.003",
            "--late-ms",
            "180000",
            "--bad-frac",
            "0.002",
        ],
    );
    let (expected, summary) = oracle_per_dataset(
        &events,
        ORACLE_AGGREGATES,
        &dir.path().join("expected.ndjson"),
    );
    let slices = slices_of(&events, 2000);
    let (input, group) = (unique("rr-in"), unique("rr"));
    let pipeline_name = unique("rr-pipe");
    tool(&["create", &brokers, &input, "6"]);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: {pipeline_name}
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "${{POOL_GROUP}}", start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [file]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 2s }}
"#
        ),
    )
    .unwrap();
    // weir validate says the pool repartitions the topic, and through which topic
    let internal = format!("{pipeline_name}-events-repartition");
    let out = kafka_support::weir()
        .args(["validate", pipeline.to_str().unwrap()])
        .env("POOL_GROUP", &group)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "validate failed: {said}");
    assert!(
        said.contains(&format!(
            "repartitioned through the internal topic {internal} keyed by [datasetName]"
        )),
        "validate does not say the topic is repartitioned:\n{said}"
    );

    let producer = SliceProducer::start(&brokers, &input, slices, &["--round-robin"]);
    let worker = |id: &str, extra: &[&str], group: &str| start_worker(&pipeline, id, extra, group);
    let a = worker("a", &[], &group);
    let b = if pause_b {
        let env = [
            ("POOL_GROUP", group.as_str()),
            ("WEIR_FAILPOINT_PAUSE", "before_commit:600000:5"),
        ];
        Running::start_with(&pipeline, &["--worker", "b"], &env)
    } else {
        worker("b", &[], &group)
    };
    for w in [&a, &b] {
        w.wait_for("partitions for every worker", has_claims);
    }
    if pause_b {
        b.wait_for("b's paused commit", |r| {
            r.lines()
                .iter()
                .any(|l| l.contains("failpoint before_commit"))
        });
    }
    producer.wait_for(4);
    // b dies: its partitions of both topics go to the others. When b claimed partitions no
    // one had checkpointed (both workers in the group's first assignment) and dies before
    // checkpointing them, their next owner reads them from the start, far behind in event
    // time what it already flushed of its own: their rows must not be late for that.
    let b_log = b.kill();
    assert!(
        b_log
            .iter()
            .any(|l| l.contains("repartition stage started")),
        "b ran no repartition stage"
    );
    let c = worker("c", &[], &group);
    c.wait_for("c's partitions", has_claims);
    producer.join();
    std::thread::sleep(Duration::from_secs(3));
    let c_log = c.interrupt();
    let a_log = a.interrupt();
    // the last worker's stage (a group of its own) sends the whole topic again
    let e = worker("e", &["--until-caught-up"], &format!("{group}-end"));
    let e_log = e.wait_within(Duration::from_secs(180));
    let from_scratch = a_log
        .iter()
        .chain(&c_log)
        .filter(|l| l.contains("partition claimed") && l.contains("state=None"))
        .filter(|l| !l.contains("generation=1 "))
        .count();
    eprintln!("repartition: {from_scratch} partitions of b taken over without state");
    assert!(
        e_log
            .iter()
            .any(|l| l.contains("repartition stage caught up")),
        "e's stage did not catch up:\n{}",
        e_log.join("\n")
    );

    let out = dir.path().join("out");
    let rows = union_of_workers(&out, "per_dataset");
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the repartitioned pool differs from the oracle: {e}"));
    let dead = union_of_workers(&out, "dead");
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count() as u64;
    assert_eq!(
        count("bad"),
        summary["bad"].as_u64().unwrap(),
        "bad records"
    );
    assert_eq!(
        count("late"),
        summary["late"].as_u64().unwrap(),
        "late records"
    );
    // a dead letter names the record's own topic, partition and offset
    let first_bad = dead
        .iter()
        .find(|d| d["reason"] == "bad")
        .expect("a bad record");
    assert_eq!(
        first_bad["topic"],
        Value::from(input.clone()),
        "{first_bad:?}"
    );
    // the internal topic: as many partitions as the input, every event there at least once
    let raw = dir.path().join("internal.ndjson");
    tool(&[
        "consume",
        &brokers,
        &internal,
        raw.to_str().unwrap(),
        "--raw",
        "--keys",
    ]);
    let internal_messages = read_ndjson(&raw);
    // keyed by the window key: one partition per key, each value wrapped with its upstream
    // topic, partition and offset
    let mut partition_of: std::collections::HashMap<String, Value> = Default::default();
    for m in &internal_messages {
        let key = m["key"].as_str().unwrap_or_default().to_string();
        let p = m["partition"].clone();
        if let Some(first) = partition_of.insert(key.clone(), p.clone()) {
            assert_eq!(first, p, "key {key:?} is in two partitions of {internal}");
        }
        assert!(
            m["value"]
                .as_str()
                .is_some_and(|v| v.starts_with("weir\u{2}") && v.contains(input.as_str())),
            "a message not wrapped by the repartition stage: {m:?}"
        );
    }
    assert!(
        internal_messages.len() >= EVENTS,
        "the internal topic holds {} messages for {EVENTS} events",
        internal_messages.len()
    );
    eprintln!(
        "repartition: {} windows; the internal topic holds {} messages for {EVENTS} events",
        expected.len(),
        internal_messages.len()
    );
}

/// The internal topic is named after the pipeline: a pool of the same pipeline name over
/// another topic (a source pointed elsewhere, a pool started again from scratch) finds the
/// earlier pool's messages there, and reads them from the beginning for want of a
/// checkpoint. Their upstream partitions and offsets are not this topic's: the second pool's
/// results are still the oracle's (none of the first pool's events counted, none of its own
/// dropped as a repeat), late and bad records included.
#[test]
fn a_repartitioned_pool_reads_only_its_own_topics_messages_of_a_reused_internal_topic() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let pipeline_name = unique("rr-again");
    let run = |n: usize, seed: &str| {
        let d = dir.path().join(format!("run{n}"));
        std::fs::create_dir_all(&d).unwrap();
        let events = d.join("events.ndjson");
        generate(
            &events,
            &[
                "6000",
                "--seed",
                seed,
                "--keys",
                "20",
                "--step-ms",
                "100",
                "--late-frac",
                "0.005",
                "--late-ms",
                "180000",
                "--bad-frac",
                "0.002",
            ],
        );
        let (input, group) = (unique("rr-again-in"), unique("rr-again"));
        tool(&["create", &brokers, &input, "4"]);
        tool(&[
            "produce",
            &brokers,
            &input,
            events.to_str().unwrap(),
            "--round-robin",
        ]);
        let pipeline = d.join("pipeline.yaml");
        std::fs::write(
            &pipeline,
            format!(
                r#"name: {pipeline_name}
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "{group}", start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [file]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#
            ),
        )
        .unwrap();
        let log = Running::start(&pipeline, &["--worker", "a", "--until-caught-up"])
            .wait_within(Duration::from_secs(180));
        (d, events, log)
    };
    let _ = run(1, "51");
    let (d, events, log) = run(2, "52");
    let (expected, summary) =
        oracle_per_dataset(&events, ORACLE_AGGREGATES, &d.join("expected.ndjson"));
    let out = d.join("out");
    compare(
        &expected,
        &union_of_workers(&out, "per_dataset"),
        &["datasetName"],
    )
    .unwrap_or_else(|e| panic!("the second pool differs from the oracle: {e}"));
    let dead = union_of_workers(&out, "dead");
    for reason in ["bad", "late"] {
        let found = dead.iter().filter(|r| r["reason"] == reason).count() as u64;
        assert_eq!(found, summary[reason].as_u64().unwrap(), "{reason} records");
    }
    assert!(
        log.iter()
            .any(|l| l.contains("skipping messages of the repartition topic")),
        "the first pool's messages were not skipped:\n{}",
        log.join("\n")
    );
}

/// A topic deleted and created again behind a pool worker's checkpoint, holding as many
/// records per partition as the checkpoint's offsets: the worker's claims compare the
/// topic's id kept with each partition's checkpoint, and read the new topic from its start
/// (without the check, each claim continued at the old offset, which is the new topic's end,
/// and its records were skipped without a word). The next run continues at its end.
#[test]
fn a_pool_worker_reads_a_topic_created_again_behind_its_checkpoint_from_its_start() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(
        &events,
        &["3000", "--seed", "29", "--keys", "12", "--step-ms", "100"],
    );
    let (input, group) = (unique("pool-again-in"), unique("pool-again"));
    let produce = || {
        tool(&[
            "produce",
            &brokers,
            &input,
            events.to_str().unwrap(),
            "--key-field",
            "datasetName",
        ])
    };
    tool(&["create", &brokers, &input, "2"]);
    produce();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pool-again
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "{group}", start_from: earliest }}
    partitioned_by: [datasetName]
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: {{ events: count(*) }}
    sinks: [rows]
sinks:
  rows: {{ file: {{ path: out/rows.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 300ms }}
"#
        ),
    )
    .unwrap();
    let run = || {
        let out = weir()
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--worker",
                "a",
                "--until-caught-up",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weir failed:\n{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (events_processed(&stdout), format!("{stdout}\n{stderr}"))
    };
    let total = std::fs::read_to_string(&events).unwrap().lines().count() as u64;
    let (read, stderr) = run();
    assert_eq!(read, total, "{stderr}");
    tool(&["delete", &brokers, &input]);
    tool(&["create", &brokers, &input, "2"]);
    produce();
    let (read, stderr) = run();
    assert!(
        stderr.contains("belongs to a topic of this name that was deleted since"),
        "{stderr}"
    );
    assert_eq!(read, 2 * total, "{stderr}");
    // the new checkpoint keeps the new topic's id: the next run continues at its end
    let (read, stderr) = run();
    assert!(!stderr.contains("was deleted since"), "{stderr}");
    assert_eq!(read, 2 * total, "{stderr}");
}
