//! A worker pool's repartition stage under backpressure, against a real broker
//! (`scripts/kafka.sh start`, or `KAFKA_BROKERS`): while the pool's jobs are held back (their
//! checkpoint coordinator paused before a commit, as a slow sink's commit holds it), the
//! stage stops copying the topic into the internal topic once the jobs have
//! `repartition_max_backlog` messages left there, shows it in `/metrics` and `weir_status`,
//! and resumes when the jobs catch up; the results are still the oracle's. And a worker whose
//! jobs are behind its reader hands the partitions a rebalance moves over with a checkpoint.

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{compare, generate, oracle_per_dataset, union_of_workers};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/sql.rs"]
mod sql_support;
use kafka_support::{brokers, tool, unique, Running};
use sql_support::{try_http, try_sql_json};

/// Events produced before the workers start, and after b left.
const EVENTS: usize = 30_000;
const LATER: usize = 10_000;
const MAX_BACKLOG: u64 = 1_000;
/// How long the job's coordinator stays paused before its third commit.
const HELD_MS: u64 = 45_000;

/// The pool's group's lag on `topic`, measured by the Python client: (committed, end).
fn group_lag(brokers: &str, group: &str, topic: &str) -> (u64, u64) {
    let out = tool(&["lag", brokers, group, topic]);
    let v: Value = serde_json::from_str(out.trim()).expect("lag answers JSON");
    (
        v["committed"].as_u64().unwrap_or(0),
        v["end"].as_u64().unwrap_or(0),
    )
}

/// A sample of a Prometheus text answer: the value of the first line starting with `name{`
/// or `name ` (every sample has a `pipeline` label).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_repartition_stage_holds_back_while_the_pool_s_jobs_are_behind() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(
        &events,
        &[
            &(EVENTS + LATER).to_string(),
            "--seed",
            "71",
            "--keys",
            "40",
            "--bad-frac",
            "0.002",
        ],
    );
    let (expected, _) = oracle_per_dataset(
        &events,
        &["events=count", "records=sum:recordCount"],
        &dir.path().join("expected.ndjson"),
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, later) = (
        dir.path().join("first.ndjson"),
        dir.path().join("later.ndjson"),
    );
    std::fs::write(&first, lines[..EVENTS].join("\n") + "\n").unwrap();
    std::fs::write(&later, lines[EVENTS..].join("\n") + "\n").unwrap();
    let (input, group, name) = (unique("bp-in"), unique("bp"), unique("bp-pipe"));
    let internal = format!("{name}-events-repartition");
    tool(&["create", &brokers, &input, "4"]);
    tool(&[
        "produce",
        &brokers,
        &input,
        first.to_str().unwrap(),
        "--round-robin",
    ]);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: {name}
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "${{POOL_GROUP}}", start_from: earliest, repartition_max_backlog: {MAX_BACKLOG} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [file]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
serve: {{ http: "127.0.0.1:${{WEIR_HTTP_PORT}}", refresh: 200ms }}
"#
        ),
    )
    .unwrap();
    let port = sql_support::free_port();
    let held = format!("before_commit:{HELD_MS}:2:1");
    let a = Running::start_with(
        &pipeline,
        &["--worker", "a"],
        &[
            ("POOL_GROUP", group.as_str()),
            ("WEIR_HTTP_PORT", &port.to_string()),
            ("WEIR_FAILPOINT_PAUSE", &held),
        ],
    );
    a.wait_for("the held commit", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("failpoint before_commit"))
    });
    // the jobs are held: watch the internal topic fill up to the limit, and no further
    let held_since = Instant::now();
    let (mut most_behind, mut paused, mut stage_rows) = (0u64, false, Vec::new());
    let mut metrics = String::new();
    while held_since.elapsed() < Duration::from_secs(15) {
        let (committed, end) = group_lag(&brokers, &group, &internal);
        most_behind = most_behind.max(end.saturating_sub(committed));
        let m = try_http(port, "GET", "/metrics", &[], b"");
        if let Some(m) = m.ok().filter(|m| m.status == 200) {
            metrics = String::from_utf8_lossy(&m.body).into_owned();
            paused |= sample(&metrics, "weir_repartition_paused") == Some(1.0);
        }
        if let Ok(rows) = try_sql_json(
            port,
            "SELECT partition, lag, events_in FROM weir_status WHERE stage = 'repartition' ORDER BY partition",
        ) {
            if !rows.is_empty() {
                stage_rows = rows;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, internal_end) = group_lag(&brokers, &group, &internal);
    eprintln!(
        "backpressure: held {} s; the internal topic holds {internal_end} of {EVENTS} events, \
         the jobs at most {most_behind} behind (limit {MAX_BACKLOG})",
        held_since.elapsed().as_secs()
    );
    assert!(
        paused,
        "the stage never paused:\n{metrics}\na's log:\n{}",
        a.lines().join("\n")
    );
    assert!(
        sample(&metrics, "weir_repartition_pauses_total").is_some_and(|n| n >= 1.0),
        "no pause counted:\n{metrics}"
    );
    // the stage pauses within one batch (8,192 messages) of going over the limit (what the
    // jobs committed before they were held lets it copy that much more: not all of it)
    assert!(
        most_behind <= MAX_BACKLOG + 8_192 && internal_end < EVENTS as u64,
        "the stage copied {internal_end} of {EVENTS} events while the jobs were held \
         ({most_behind} behind); a's log:\n{}",
        a.lines().join("\n")
    );
    // weir_status: a row per upstream partition the stage reads, with its lag
    assert_eq!(stage_rows.len(), 4, "{stage_rows:?}");
    let left: i64 = stage_rows
        .iter()
        .map(|r| r["lag"].as_i64().unwrap_or(0))
        .sum();
    assert!(left > 0, "the stage's rows show no lag: {stage_rows:?}");
    assert!(
        sample(&metrics, "weir_repartition_lag").is_some(),
        "no weir_repartition_lag:\n{metrics}"
    );

    // while a's stage holds back, b joins: upstream partitions move from a's paused stage
    // to b's; they come back to a after a resumed, and must be read there
    let b = Running::start_with(
        &pipeline,
        &["--worker", "b"],
        &[
            ("POOL_GROUP", group.as_str()),
            ("WEIR_HTTP_PORT", &sql_support::free_port().to_string()),
        ],
    );
    let assigned = |r: &Running| {
        r.lines()
            .iter()
            .filter(|l| l.contains("repartition: upstream partitions assigned"))
            .count()
    };
    b.wait_for("b's stage's partitions", |r| assigned(r) >= 1);
    a.wait_for("a's stage giving partitions up", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("repartition: upstream partitions revoked"))
    });
    eprintln!(
        "backpressure: b joined after {} s of the hold",
        held_since.elapsed().as_secs()
    );
    // released: the stages resume and send the rest
    let sent_up_to = |n: usize| {
        let started = Instant::now();
        loop {
            let (_, end) = group_lag(&brokers, &group, &internal);
            if end >= n as u64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the stages did not send everything: {end} of {n} sent\n{}",
                a.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    sent_up_to(EVENTS);
    b.interrupt();
    a.wait_for("a's stage taking b's partitions back", |r| assigned(r) >= 2);
    tool(&[
        "produce",
        &brokers,
        &input,
        later.to_str().unwrap(),
        "--round-robin",
    ]);
    sent_up_to(EVENTS + LATER);
    let a_log = a.interrupt();
    assert!(
        a_log
            .iter()
            .any(|l| l.contains("the pool's jobs caught up; resuming")),
        "no resume logged:\n{}",
        a_log.join("\n")
    );
    // a last worker reads to the end and flushes the last windows
    let e = Running::start_with(
        &pipeline,
        &["--worker", "e", "--until-caught-up"],
        &[
            ("POOL_GROUP", &format!("{group}-end")),
            ("WEIR_HTTP_PORT", &sql_support::free_port().to_string()),
        ],
    );
    e.wait_within(Duration::from_secs(180));
    let rows = union_of_workers(&dir.path().join("out"), "per_dataset");
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the pool differs from the oracle after backpressure: {e}"));
}

/// A worker whose jobs are slower than its reader (the workers' queues full, the reader
/// waiting to dispatch) when a second worker joins: the partitions it gives up are handed
/// over with a checkpoint, as when it is not behind, and it keeps the rest. (The reader held
/// the job's dispatcher while it waited, so the hand-over could not be waited for: the
/// partitions went without one, and the worker was fenced at its next checkpoint and joined
/// the group again, which moved every partition once more.)
#[test]
fn a_worker_behind_its_reader_hands_partitions_over_without_being_fenced() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    generate(
        &events,
        &["120000", "--seed", "73", "--keys", "40", "--step-ms", "20"],
    );
    let (expected, _) = oracle_per_dataset(
        &events,
        &["events=count", "records=sum:recordCount"],
        &dir.path().join("expected.ndjson"),
    );
    let (input, group, name) = (unique("behind-in"), unique("behind"), unique("behind-pipe"));
    tool(&["create", &brokers, &input, "6"]);
    tool(&[
        "produce",
        &brokers,
        &input,
        events.to_str().unwrap(),
        "--key-field",
        "datasetName",
    ]);
    let pipeline = dir.path().join("pipeline.yaml");
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
      properties: {{ max.partition.fetch.bytes: "16384" }}
    partitioned_by: [datasetName]
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [file]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 30s }}
"#
        ),
    )
    .unwrap();
    // a's worker takes 8 s more than it needs for each of its first 3 chunks: its reader
    // waits on it, with the next chunks in its queue
    let a = Running::start_with(
        &pipeline,
        &["--worker", "a", "--until-caught-up"],
        &[("WEIR_FAILPOINT_PAUSE", "worker_chunk:8000:0:3")],
    );
    a.wait_for("a's reader held back by its workers", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("failpoint worker_chunk"))
            && r.lines()
                .iter()
                .any(|l| l.contains("pool worker: starting a job"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let b = Running::start(&pipeline, &["--worker", "b", "--until-caught-up"]);
    let limit = Duration::from_secs(240);
    let (a_end, b_end) = (a.end_within(limit), b.end_within(limit));
    let show = |(status, log): &(Option<std::process::ExitStatus>, Vec<String>)| {
        format!("{status:?}\n{}", log.join("\n"))
    };
    for end in [&a_end, &b_end] {
        assert!(
            end.0.is_some_and(|s| s.success()),
            "a worker did not end well:\n--- a: {}\n--- b: {}",
            show(&a_end),
            show(&b_end)
        );
    }
    let a_log = &a_end.1;
    assert!(
        a_log
            .iter()
            .any(|l| l.contains("partitions move while the workers are behind")),
        "a was not behind when b joined (the case this test is for):\n{}",
        a_log.join("\n")
    );
    assert!(
        !a_log
            .iter()
            .any(|l| l.contains("this worker lost partitions")),
        "a was fenced after giving partitions up while behind:\n{}",
        a_log.join("\n")
    );
    assert!(
        !a_log.iter().any(|l| l.contains("did not complete in time")),
        "a gave partitions up without their hand-over checkpoint:\n{}",
        a_log.join("\n")
    );
    let rows = union_of_workers(&dir.path().join("out"), "per_dataset");
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the pool differs from the oracle: {e}"));
}
