//! A worker pool against a real broker (`scripts/kafka.sh start`, or `KAFKA_BROKERS`):
//! `weir run --worker ID` started several times shares a topic's partitions; workers are
//! killed, started and stopped while an independent client produces the events, and the
//! union of every worker's committed files equals `../shared/oracle/window_oracle.py`'s
//! result: no loss, no duplicate.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{compare, compare_at_least_once, generate, oracle_per_dataset, read_ndjson, Row};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
use kafka_support::{brokers, read_topic, tool, unique, Running};

const AGGREGATES: &str = r#"
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)"#;
const ORACLE_AGGREGATES: &[&str] = &[
    "events=count",
    "records=sum:recordCount",
    "max_bytes=max:sizeBytes",
];

/// Every row of the files `out/<stem>.<worker>.ndjson` of all workers.
fn union_of_workers(out: &Path, stem: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}.")) && name.ends_with(".ndjson") {
            rows.extend(read_ndjson(&e.path()));
        }
    }
    rows
}

/// Whether a log holds a claim of a partition whose state a given worker held.
fn claimed_from(log: &[String], worker: &str) -> bool {
    let from = format!("worker: \"{worker}\"");
    log.iter()
        .any(|l| l.contains("partition claimed") && l.contains(&from))
}

fn has_claims(r: &Running) -> bool {
    has_claims_in(&r.lines())
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
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let slices: Vec<_> = lines
        .chunks(2000)
        .enumerate()
        .map(|(i, c)| {
            let p = dir.path().join(format!("slice-{i:02}.ndjson"));
            std::fs::write(&p, c.join("\n") + "\n").unwrap();
            p
        })
        .collect();
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
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
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
    sinks: [file, topic]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
  topic: {{ kafka: {{ topic: {output} }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 2s }}
"#
        ),
    )
    .unwrap();

    let produced = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (brokers, input, produced) = (brokers.clone(), input.clone(), produced.clone());
        std::thread::spawn(move || {
            for s in &slices {
                tool(&[
                    "produce",
                    &brokers,
                    &input,
                    s.to_str().unwrap(),
                    "--key-field",
                    "datasetName",
                ]);
                produced.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
            }
        })
    };
    let wait_produced = |n: usize| {
        let started = Instant::now();
        while produced.load(Ordering::SeqCst) < n {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the producer is stuck"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // Three workers share the partitions.
    let a = Running::start(&pipeline, &["--worker", "a"]);
    let b = Running::start(&pipeline, &["--worker", "b"]);
    let c = Running::start(&pipeline, &["--worker", "c"]);
    for w in [&a, &b, &c] {
        w.wait_for("partitions for every worker", has_claims);
    }
    wait_produced(6);

    // b dies: its partitions continue from its last checkpoint on the others.
    let killed = Instant::now();
    let b_log = b.kill();
    assert!(has_claims_in(&b_log), "b never got partitions");
    let started = Instant::now();
    while !claimed_from(&a.lines(), "b") && !claimed_from(&c.lines(), "b") {
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
    assert!(pause < Duration::from_secs(10), "rebalance pause {pause:?}");

    // A fourth worker joins, then c stops gracefully (it hands its partitions over).
    let d = Running::start(&pipeline, &["--worker", "d"]);
    d.wait_for("d's partitions", has_claims);
    wait_produced(13);
    c.interrupt();

    // The input ends; the remaining workers stop, one after the other.
    producer.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    d.interrupt();
    std::thread::sleep(Duration::from_secs(2));
    a.interrupt();
    // A last worker reads every partition to its end, which closes the last windows.
    let e = Running::start(&pipeline, &["--worker", "e", "--until-caught-up"]);
    e.wait_within(Duration::from_secs(120));

    let out = dir.path().join("out");
    let rows = union_of_workers(&out, "per_dataset");
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the workers' files differ from the oracle: {e}"));
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

fn has_claims_in(log: &[String]) -> bool {
    log.iter().any(|l| l.contains("partition claimed"))
}
