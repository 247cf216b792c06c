//! Runs of one Kafka pipeline one after another, against a real broker (`scripts/kafka.sh
//! start`, or `KAFKA_BROKERS`): runs `--until-caught-up` on a schedule, with checkpoints,
//! continue each other; without checkpoints, a view still counts every event.

use std::collections::HashSet;

use weir_tests::{compare, golden_dir, read_ndjson, Row};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
use kafka_support::{
    brokers, events_source, produce_lines, read_topic, run_caught_up, summary, tool, unique,
    AGGREGATES,
};

/// Without checkpoints, a view's state is in no output: a run started again must read its
/// source from where the view started, not from offsets committed behind rows the view
/// counted (the second run's snapshot counted only the second half).
#[test]
fn a_view_without_checkpoints_counts_every_event_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = brokers();
    let (input, output, group) = (unique("ingest"), unique("view"), unique("group"));
    tool(&["create", &brokers, &input, "2"]);
    tool(&["create", &brokers, &output, "1"]);
    let events = std::fs::read_to_string(golden_dir().join("ingestion_1m/input.ndjson")).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let yaml = format!(
        r#"name: kafka-view-restart
{source}views:
  per_dataset:
    from: events
    key: [datasetName]
    aggregates:
      events: count(*)
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output} }} }}
"#,
        source = events_source(&brokers, &input, &group)
    );
    for half in [first, second] {
        produce_lines(dir.path(), &brokers, &input, half);
        // the same pipeline file, the same group, default settings
        run_caught_up(dir.path(), &yaml, &[]);
    }
    let (keys, values) = read_topic(&brokers, &output, dir.path());
    let mut last: std::collections::BTreeMap<String, u64> = Default::default();
    for (k, v) in keys.iter().zip(&values) {
        last.insert(k.clone().unwrap(), v["events"].as_u64().unwrap());
    }
    let s = summary("ingestion_1m", "per_dataset");
    let good = lines.len() as u64 - s["bad"].as_u64().unwrap();
    assert_eq!(
        last.values().sum::<u64>(),
        good,
        "the newest row of each key"
    );
}

/// A checkpointed pipeline run `--until-caught-up` on a schedule: the second run, over more
/// of the topic, continues the first. The first run's end emitted its open windows (as at
/// the end of a file); the second run finds the events of those windows late, emits every
/// later window as the oracle does, and emits no window twice. Before, the checkpoint kept
/// the end's watermark (+infinity), and every later event was dead-lettered as late, for
/// good.
#[test]
fn until_caught_up_runs_on_a_schedule_continue_each_other() {
    for parallelism in ["1", "2"] {
        scheduled_runs(parallelism);
    }
}

fn scheduled_runs(parallelism: &str) {
    let dir = tempfile::tempdir().unwrap();
    let brokers = brokers();
    let (input, group) = (unique("ingest"), unique("group"));
    tool(&["create", &brokers, &input, "1"]);
    let case = golden_dir().join("ingestion_1m");
    let events = std::fs::read_to_string(case.join("input.ndjson")).unwrap();
    let lines: Vec<&str> = events.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let yaml = format!(
        r#"name: kafka-scheduled
{source}windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [file]
views:
  totals:
    from: events
    key: [datasetName]
    aggregates:
      events: count(*)
    sinks: [totals]
sinks:
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
  totals: {{ file: {{ path: out/totals.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
        source = events_source(&brokers, &input, &group)
    );
    let out = dir.path().join("out/per_dataset.ndjson");
    let mut first_rows = 0;
    for (run, half) in [first, second].into_iter().enumerate() {
        produce_lines(dir.path(), &brokers, &input, half);
        run_caught_up(dir.path(), &yaml, &["--parallelism", parallelism]);
        if run == 0 {
            first_rows = read_ndjson(&out).len();
        }
    }
    let rows = read_ndjson(&out);
    let (before, after) = rows.split_at(first_rows);
    let ident = |r: &Row| format!("{}|{}", r["datasetName"], r["window_start"]);
    // no (key, window) is emitted twice
    let emitted: std::collections::HashSet<String> = before.iter().map(ident).collect();
    assert!(
        after.iter().all(|r| !emitted.contains(&ident(r))),
        "a window emitted by the first run was emitted again"
    );
    // every window after those the first run's end emitted is the oracle's
    let start = |r: &Row| weir_tests::to_ms(&r["window_start"]).unwrap_or(i64::MIN);
    let boundary = before.iter().map(start).max().unwrap_or(i64::MIN);
    let later = |rows: &[Row]| -> Vec<Row> {
        rows.iter()
            .filter(|r| start(r) > boundary)
            .cloned()
            .collect()
    };
    let expected = read_ndjson(&case.join("expected_per_dataset.ndjson"));
    assert!(
        !later(&expected).is_empty(),
        "the second half has windows of its own"
    );
    compare(&later(&expected), &later(after), &["datasetName"])
        .unwrap_or_else(|e| panic!("the second run's windows differ from the oracle's: {e}"));
    // every event is counted, dead-lettered as bad, or late
    let s = summary("ingestion_1m", "per_dataset");
    let dead = read_ndjson(&dir.path().join("out/dead.ndjson"));
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count() as u64;
    let counted: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(count("bad"), s["bad"].as_u64().unwrap(), "bad events");
    assert_eq!(
        counted + count("late") + count("bad"),
        lines.len() as u64,
        "events counted, late or bad"
    );
    // the view counts every good event once, late ones included
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    for r in read_ndjson(&dir.path().join("out/totals.ndjson")) {
        totals.insert(r["datasetName"].to_string(), r["events"].as_u64().unwrap());
    }
    let good = lines.len() as u64 - s["bad"].as_u64().unwrap();
    assert_eq!(totals.values().sum::<u64>(), good, "the view's newest rows");
    // a run with nothing new, then one with the second half's last events again: those
    // windows were emitted, so the events are late; nothing is emitted again (a run with
    // nothing new recorded its windows closed lower than it restored them)
    run_caught_up(dir.path(), &yaml, &["--parallelism", parallelism]);
    produce_lines(dir.path(), &brokers, &input, &second[second.len() - 300..]);
    run_caught_up(dir.path(), &yaml, &["--parallelism", parallelism]);
    let rows_now = read_ndjson(&out);
    assert_eq!(rows_now.len(), rows.len(), "windows emitted again");
    let dead = read_ndjson(&dir.path().join("out/dead.ndjson"));
    let late_now = dead.iter().filter(|d| d["reason"] == "late").count() as u64;
    let bad_now = dead.iter().filter(|d| d["reason"] == "bad").count() as u64;
    assert_eq!(
        late_now + bad_now - count("late") - count("bad"),
        300,
        "the events sent again are late (or bad)"
    );
}

/// Windows on processing time across runs on a schedule (`--until-caught-up`, checkpoints,
/// parallelism 2, two partitions): every window is emitted once, and every good event is
/// counted. The end's final checkpoint recorded them closed at +infinity: every later run
/// emitted each window at each worker's hand-over, one partial row per worker.
#[test]
fn processing_time_windows_of_runs_on_a_schedule_are_emitted_once() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = brokers();
    let (input, group) = (unique("arrivals"), unique("group"));
    tool(&["create", &brokers, &input, "2"]);
    let events = std::fs::read_to_string(golden_dir().join("ingestion_1m/input.ndjson")).unwrap();
    // ten times the golden events a run: windows close by the clock while both workers
    // hold rows of them
    let lines: Vec<&str> = events.lines().collect();
    let many = lines.repeat(10).join("\n") + "\n";
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, many).unwrap();
    let yaml = format!(
        r#"name: kafka-arrivals
{source}windows:
  arrivals:
    from: events
    key: [datasetName]
    tumbling: 1s
    time: processing
    aggregates:
      events: count(*)
    sinks: [arrivals]
sinks:
  arrivals: {{ file: {{ path: out/arrivals.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
        source = events_source(&brokers, &input, &group)
    );
    for _ in 0..2 {
        let path = file.to_str().unwrap();
        tool(&[
            "produce",
            &brokers,
            &input,
            path,
            "--key-field",
            "datasetName",
        ]);
        run_caught_up(dir.path(), &yaml, &["--parallelism", "2"]);
    }
    let rows = read_ndjson(&dir.path().join("out/arrivals.ndjson"));
    let mut seen = HashSet::new();
    let twice: Vec<String> = rows
        .iter()
        .map(|r| format!("{}|{}", r["datasetName"], r["window_start"]))
        .filter(|w| !seen.insert(w.clone()))
        .collect();
    assert!(twice.is_empty(), "windows emitted twice: {twice:?}");
    let dead = read_ndjson(&dir.path().join("out/dead.ndjson"));
    let counted: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(
        counted + dead.len() as u64,
        2 * 10 * lines.len() as u64,
        "events counted or dead-lettered"
    );
}
