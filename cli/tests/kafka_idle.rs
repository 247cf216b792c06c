//! Windows keyed by what a Kafka topic is partitioned by (`partitioned_by`), against a real
//! broker (`scripts/kafka.sh start`, or `KAFKA_BROKERS`): a partition that falls idle and
//! comes back never gets a second, partial row for a window already emitted.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
use kafka_support::{brokers, read_topic, tool, unique, Running};

/// A data-ingestion event of dataset `name` at `t` (epoch ms).
fn event(name: &str, t: i64, n: u64) -> String {
    json!({
        "eventId": format!("{name}-{t}-{n}"), "timestamp": t, "source": "test",
        "datasetName": name, "recordCount": 1, "sizeBytes": 10, "format": "json",
        "location": "s3://x", "status": "SUCCESS", "metadata": null
    })
    .to_string()
}

/// Produces `events` to `partition` of `topic`.
fn produce(brokers: &str, topic: &str, partition: u32, events: &[String], dir: &Path) {
    let file = dir.join(format!("p{partition}-{}.ndjson", events.len()));
    std::fs::write(&file, events.join("\n") + "\n").unwrap();
    tool(&[
        "produce",
        brokers,
        topic,
        file.to_str().unwrap(),
        "--partition",
        &partition.to_string(),
    ]);
}

/// Reads `topic` until `ok` holds of its rows (a minute at most).
fn wait_rows(brokers: &str, topic: &str, dir: &Path, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (_, rows) = read_topic(brokers, topic, dir);
        let rows: Vec<Value> = rows.into_iter().map(|r| json!(r)).collect();
        if ok(&rows) {
            return rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out reading {topic}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn an_idle_partitions_late_rows_go_to_dead_letters_never_into_a_second_row_of_an_emitted_window() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (input, output, dlq, group) = (
        unique("idle-in"),
        unique("idle-out"),
        unique("idle-dlq"),
        unique("idle"),
    );
    tool(&["create", &brokers, &input, "2"]);
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: idle-partition
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group} }}
    partitioned_by: [datasetName]
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, idle_timeout: 2s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: {{ events: count(*) }}
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output} }} }}
dead_letter: {{ kafka: {{ topic: {dlq} }} }}
"#
        ),
    )
    .unwrap();
    // an hour ago, on a minute
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = (now - 3_600_000) / 60_000 * 60_000;
    let run = Running::start(&pipeline, &[]);
    run.wait_for("the assignment", |r| r.assignments() >= 1);
    // a in partition 0 and b in partition 1 fill the first minute
    produce(&brokers, &input, 0, &[event("a", t0 + 1_000, 0)], d);
    produce(&brokers, &input, 1, &[event("b", t0 + 2_000, 0)], d);
    std::thread::sleep(Duration::from_secs(1));
    // partition 0 moves two minutes on; partition 1 says nothing, turns idle, and stops
    // holding the first minute open: both its rows are emitted
    produce(
        &brokers,
        &input,
        0,
        &[event("a", t0 + 61_000, 1), event("a", t0 + 125_000, 2)],
        d,
    );
    let first = |rows: &[Value], key: &str| rows.iter().filter(|r| r["datasetName"] == key).count();
    wait_rows(&brokers, &output, d, |rows| {
        first(rows, "a") >= 2 && first(rows, "b") >= 1
    });
    // partition 1 comes back with a row of the first minute: its window was emitted while
    // the partition was idle, so the row is late
    produce(&brokers, &input, 1, &[event("b", t0 + 3_000, 1)], d);
    let dead = wait_rows(&brokers, &dlq, d, |rows| !rows.is_empty());
    // a row of the next minute after it is on time, and closes the first minute at partition 1
    produce(&brokers, &input, 1, &[event("b", t0 + 200_000, 2)], d);
    std::thread::sleep(Duration::from_secs(3));
    let log = run.interrupt();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "late", "{dead:?}");
    assert_eq!(dead[0]["partition"], 1, "{dead:?}");
    let (_, rows) = read_topic(&brokers, &output, d);
    let b: Vec<&weir_tests::Row> = rows
        .iter()
        .filter(|r| r.get("datasetName").and_then(|v| v.as_str()) == Some("b"))
        .collect();
    assert_eq!(
        b.len(),
        1,
        "one row of b's first minute, never a second partial one: {b:?}\n{}",
        log.join("\n")
    );
    assert_eq!(b[0]["events"], 1, "{b:?}");
}
