//! Kafka end to end, against a real broker (`scripts/kafka.sh start`, or `KAFKA_BROKERS`):
//! events produced by an independent client (Python confluent-kafka), windows computed by
//! `weir run`, the output topic read back by that client and compared with the oracle's rows
//! (the golden cases of `tests/golden`, made by the reference model `tests/model/window_model.py`).
//!
//! These tests fail, never skip, when the broker or the Python client is missing: CI
//! installs both (`scripts/test-env.sh`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_tests::{compare, compare_at_least_once, golden_dir, read_ndjson, Row};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/sql.rs"]
mod sql_support;
use crash::venv_python as python;
use kafka_support::{
    brokers, events_processed, events_source, read_topic, repo, run_caught_up, summary, tool,
    unique, weir, Running, AGGREGATES,
};

fn lag(brokers: &str, group: &str, topic: &str) -> Value {
    serde_json::from_str(tool(&["lag", brokers, group, topic]).trim()).unwrap()
}

/// The topics and group of one test, with the `ingestion_1m` golden events produced into
/// `input` (keyed by datasetName) by the independent client.
struct Golden {
    brokers: String,
    input: String,
    output: String,
    dlq: String,
    group: String,
    case: PathBuf,
}

impl Golden {
    fn produce(input_partitions: &str, produce_args: &[&str]) -> Golden {
        let brokers = brokers();
        let g = Golden {
            input: unique("ingest"),
            output: unique("windows"),
            dlq: unique("dead"),
            group: unique("group"),
            case: golden_dir().join("ingestion_1m"),
            brokers,
        };
        tool(&["create", &g.brokers, &g.input, input_partitions]);
        tool(&["create", &g.brokers, &g.output, "3"]);
        tool(&["create", &g.brokers, &g.dlq, "1"]);
        let events = g.case.join("input.ndjson");
        let mut args = vec!["produce", &g.brokers, &g.input, events.to_str().unwrap()];
        args.extend_from_slice(produce_args);
        tool(&args);
        g
    }
}

#[test]
fn kafka_windows_equal_the_oracle_and_offsets_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        output,
        dlq,
        group,
        case,
    } = Golden::produce("12", &[]);
    run_caught_up(
        dir.path(),
        &format!(
            r#"name: kafka-e2e
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [topic, file]
sinks:
  topic: {{ kafka: {{ topic: {output} }}, format: json }}
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ kafka: {{ topic: {dlq} }} }}
"#
        ),
        &["--parallelism", "2"],
    );

    let expected = read_ndjson(&case.join("expected_per_dataset.ndjson"));
    let (keys, rows) = read_topic(&brokers, &output, dir.path());
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the output topic differs from the oracle: {e}"));
    compare(
        &expected,
        &read_ndjson(&dir.path().join("out/per_dataset.ndjson")),
        &["datasetName"],
    )
    .unwrap_or_else(|e| panic!("the file sink differs from the oracle: {e}"));
    // Message keys: the window's key columns and window_start, as a JSON object.
    for (k, row) in keys.iter().zip(&rows) {
        let k: Value = serde_json::from_str(k.as_deref().expect("every row has a key")).unwrap();
        assert_eq!(k["datasetName"], row["datasetName"]);
        assert_eq!(k["window_start"], row["window_start"]);
        assert_eq!(k.as_object().unwrap().len(), 2);
    }

    // Dead letters: as many as the oracle's bad and late events, with where they came from.
    let s = summary("ingestion_1m", "per_dataset");
    let (_, dead) = read_topic(&brokers, &dlq, dir.path());
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count() as u64;
    assert_eq!(count("bad"), s["bad"].as_u64().unwrap());
    assert_eq!(count("late"), s["late"].as_u64().unwrap());
    for d in &dead {
        assert_eq!(d["topic"], input.as_str());
        assert!(
            d["partition"].as_u64().unwrap() < 12 && d["offset"].is_u64(),
            "{d:?}"
        );
        assert!(d["raw"].is_string(), "{d:?}");
    }

    // Every offset was committed once its results were written.
    let l = lag(&brokers, &group, &input);
    assert_eq!(l["lag"], 0, "{l}");
    assert_eq!(l["end"], 6000, "{l}");
}

#[test]
fn a_consumer_group_splits_partitions_and_moves_them_when_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        output,
        dlq,
        group,
        case,
    } = Golden::produce("12", &[]);
    // Kafka outputs, so that offsets are committed while the processes run.
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: kafka-group
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: committed }}
    partitioned_by: [datasetName]        # the topic is keyed by datasetName
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output} }} }}
dead_letter: {{ kafka: {{ topic: {dlq} }} }}
"#
        ),
    )
    .unwrap();
    // A and B share the partitions.
    let a = Running::start(&pipeline, &[]);
    a.wait_for("A's first assignment", |r| r.assignments() >= 1);
    let b = Running::start(&pipeline, &[]);
    b.wait_for("B's assignment", |r| r.assignments() >= 1);
    // Let both work and commit before one of them stops.
    let started = Instant::now();
    while lag(&brokers, &group, &input)["committed"].as_u64().unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing committed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let b_assignments = b.assignments();
    let a_log = a.interrupt();
    // B takes A's partitions over.
    b.wait_for("B to take A's partitions", |r| {
        r.assignments() > b_assignments
    });
    std::thread::sleep(Duration::from_secs(3));
    let b_log = b.interrupt();
    // A last member finishes the group's backlog and closes the last windows.
    let c = Running::start(&pipeline, &["--until-caught-up"]);
    let c_log = c.wait();

    let assigned = |log: &[String]| -> Vec<String> {
        log.iter()
            .filter(|l| l.contains("partitions assigned"))
            .cloned()
            .collect()
    };
    let a_first = assigned(&a_log);
    assert!(!a_first.is_empty(), "A never got partitions");
    assert!(
        assigned(&b_log).len() >= 2,
        "B did not get A's partitions: {:?}",
        assigned(&b_log)
    );
    let expected = read_ndjson(&case.join("expected_per_dataset.ndjson"));
    let (_, rows) = read_topic(&brokers, &output, dir.path());
    let duplicates = compare_at_least_once(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the union of outputs differs from the oracle: {e}"));
    eprintln!(
        "consumer group: {} rows for {} windows: {duplicates} duplicate row(s) of windows in flight at the hand-overs",
        rows.len(),
        expected.len()
    );
    // Duplicates come only from windows open when partitions moved (two hand-overs).
    assert!(
        duplicates * 10 <= expected.len(),
        "{duplicates} duplicates for {} windows",
        expected.len()
    );
    assert_eq!(lag(&brokers, &group, &input)["lag"], 0);
    assert!(!c_log.iter().any(|l| l.contains("panicked")));
}

#[test]
fn generate_produces_the_same_events_as_to_a_file_keyed_by_dataset() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("generated");
    let args = [
        "generate",
        "data-ingestion",
        "--count",
        "3000",
        "--seed",
        "9",
        "--keys",
        "30",
        "--bad-frac",
        "0.02",
        "--unicode-keys",
    ];
    let file = dir.path().join("events.ndjson");
    let o = weir()
        .args(args)
        .args(["--out", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = weir()
        .args(args)
        .args([
            "--kafka",
            &format!("{brokers}/{topic}"),
            "--partitions",
            "4",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("read.ndjson");
    let py = Command::new(python())
        .arg(repo().join("tests/kafka/kafka_tool.py"))
        .args([
            "consume",
            &brokers,
            &topic,
            out.to_str().unwrap(),
            "--keys",
            "--raw",
        ])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let mut produced: Vec<String> = Vec::new();
    let mut per_key_partition = std::collections::HashMap::new();
    for row in read_ndjson(&out) {
        let value = row["value"].as_str().unwrap().to_string();
        let key = row["key"].as_str().unwrap().to_string();
        let partition = row["partition"].as_u64().unwrap();
        // every key lands in one partition
        assert_eq!(
            *per_key_partition.entry(key.clone()).or_insert(partition),
            partition
        );
        if let Ok(Value::Object(ev)) = serde_json::from_str::<Value>(&value) {
            if let Some(Value::String(d)) = ev.get("datasetName") {
                assert_eq!(d, &key);
            }
        }
        produced.push(value);
    }
    let mut expected: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    produced.sort();
    expected.sort();
    assert_eq!(produced.len(), 3000);
    assert!(
        produced == expected,
        "the topic holds other events than the file"
    );
}

/// Produces a golden case's events in `tool_format`, runs 1-minute windows over them with the
/// source's `format_yaml`, and compares the output topic with the oracle's rows.
fn windows_of_encoded_events(tool_format: &str, source_yaml: &str) {
    windows_of_encoded_events_with(&["--format", tool_format], "", source_yaml)
}

/// The same, with `produce_args` for kafka_tool.py and `kafka_extra` added to the source's
/// `kafka:` map.
fn windows_of_encoded_events_with(produce_args: &[&str], kafka_extra: &str, source_yaml: &str) {
    let tool_format = produce_args.join(" ");
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        output,
        group,
        case,
        ..
    } = Golden::produce("12", produce_args);
    run_caught_up(
        dir.path(),
        &format!(
            r#"name: kafka-encoded
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest{kafka_extra} }}
{source_yaml}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output} }} }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
"#
        ),
        &[],
    );
    let expected = read_ndjson(&case.join("expected_per_dataset.ndjson"));
    let (_, rows) = read_topic(&brokers, &output, dir.path());
    compare(&expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("{tool_format}: the output differs from the oracle: {e}"));
    let s = summary("ingestion_1m", "per_dataset");
    let dead = read_ndjson(&dir.path().join("dead.ndjson"));
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count() as u64;
    assert_eq!(count("bad"), s["bad"].as_u64().unwrap(), "{tool_format}");
    assert_eq!(count("late"), s["late"].as_u64().unwrap(), "{tool_format}");
}

#[test]
fn cloudevents_messages_give_the_oracle_windows() {
    // event time from the CloudEvents `time` attribute (the default for this format)
    windows_of_encoded_events(
        "cloudevents",
        "    format: cloudevents\n    schema: data-ingestion\n    event_time: { field: time, max_out_of_orderness: 5s }",
    );
}

#[test]
fn platform_envelope_messages_give_the_oracle_windows() {
    // fields from `payload`, event time from the payload's own `timestamp`
    windows_of_encoded_events(
        "envelope",
        "    format: cloudevents\n    schema: data-ingestion\n    event_time: { field: timestamp, max_out_of_orderness: 5s }",
    );
}

#[test]
fn dead_letters_keep_the_trace_and_correlation_ids_of_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let g = Golden::produce(
        "3",
        &[
            "--header",
            "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "--header",
            "X-Correlation-Id=batch-17",
        ],
    );
    run_caught_up(
        dir.path(),
        &format!(
            r#"name: kafka-trace
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
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
    sinks: [file]
sinks:
  file: {{ file: {{ path: out.ndjson }} }}
dead_letter: {{ kafka: {{ brokers: "{brokers}", topic: {dlq} }} }}
"#,
            brokers = g.brokers,
            input = g.input,
            group = g.group,
            dlq = g.dlq,
        ),
        &[],
    );
    let out = dir.path().join("dead.ndjson");
    tool(&[
        "consume",
        &g.brokers,
        &g.dlq,
        out.to_str().unwrap(),
        "--keys",
    ]);
    let dead = read_ndjson(&out);
    let s = summary("ingestion_1m", "per_dataset");
    let (bad, late) = (s["bad"].as_u64().unwrap(), s["late"].as_u64().unwrap());
    assert_eq!(dead.len() as u64, bad + late);
    let mut reasons = std::collections::BTreeMap::new();
    for m in &dead {
        let v = &m["value"];
        *reasons
            .entry(v["reason"].as_str().unwrap().to_string())
            .or_insert(0u64) += 1;
        // in the record and as headers of its message, for bad and late records alike
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{m:?}");
        assert_eq!(v["correlation_id"], "batch-17", "{m:?}");
        assert_eq!(
            m["headers"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{m:?}"
        );
        assert_eq!(m["headers"]["correlation_id"], "batch-17", "{m:?}");
    }
    assert_eq!(reasons.get("bad").copied(), Some(bad));
    assert_eq!(reasons.get("late").copied(), Some(late));
}

/// A running OTLP/HTTP receiver (tests/ops/otlp_receiver.py), stopped when dropped.
struct Collector {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        let port = weir_tests::free_port();
        let out = dir.join("spans.ndjson");
        let child = Command::new("python3")
            .arg(repo().join("tests/ops/otlp_receiver.py"))
            .arg(port.to_string())
            .arg(&out)
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Collector { child, port, out }
    }

    /// Every exported span: (name, trace id, attributes as key → string value).
    fn spans(&self) -> Vec<(String, String, std::collections::BTreeMap<String, String>)> {
        let mut spans = Vec::new();
        for req in read_ndjson(&self.out) {
            for rs in req["body"]["resourceSpans"].as_array().unwrap() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["key"] == "service.name")
                    .map(|a| a["value"]["stringValue"].clone());
                assert_eq!(service, Some(Value::from("weir-test")), "{rs}");
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for sp in ss["spans"].as_array().unwrap() {
                        let attrs = sp["attributes"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|kv| {
                                        let v = &kv["value"];
                                        let text = v["stringValue"]
                                            .as_str()
                                            .map(String::from)
                                            .unwrap_or_else(|| v.to_string());
                                        (kv["key"].as_str().unwrap().to_string(), text)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        spans.push((
                            sp["name"].as_str().unwrap().to_string(),
                            sp["traceId"].as_str().unwrap().to_lowercase(),
                            attrs,
                        ));
                    }
                }
            }
        }
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn spans_go_to_an_otlp_collector_and_sink_messages_carry_their_traceparent() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path());
    let g = Golden::produce("3", &[]);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: kafka-otlp
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
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
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ brokers: "{brokers}", topic: {output} }} }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 300ms }}
tracing: {{ otlp: "http://127.0.0.1:{port}", service_name: weir-test, headers: {{ authorization: "Bearer ${{WEIR_TEST_OTLP_TOKEN}}" }} }}
"#,
            brokers = g.brokers,
            input = g.input,
            group = g.group,
            output = g.output,
            port = collector.port,
        ),
    )
    .unwrap();
    let out = weir()
        .args(["run", pipeline.to_str().unwrap(), "--until-caught-up"])
        .env("WEIR_TEST_OTLP_TOKEN", "otlp-token-4471")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("otlp-token-4471"), "{stderr}");

    // the collector got weir's spans, with the configured credentials
    let requests = read_ndjson(&collector.out);
    assert!(
        !requests.is_empty(),
        "no export reached the collector:\n{stderr}"
    );
    for r in &requests {
        assert_eq!(r["headers"]["authorization"], "Bearer otlp-token-4471");
    }
    let spans = collector.spans();
    let named = |n: &str| spans.iter().filter(|s| s.0 == n).count();
    assert!(named("batch") > 0, "no batch spans");
    assert!(named("checkpoint") > 0, "no checkpoint spans");
    let sink_writes: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.0 == "output" && s.2.get("output").map(String::as_str) == Some("sink `topic`")
        })
        .collect();
    assert!(
        sink_writes
            .iter()
            .any(|s| s.2.get("call").map(String::as_str) == Some("write")),
        "no sink write spans: {:?}",
        spans.iter().map(|s| (&s.0, &s.2)).collect::<Vec<_>>()
    );

    // every output message carries the traceparent of the sink write that sent it
    let topic_out = dir.path().join("topic.ndjson");
    tool(&[
        "consume",
        &g.brokers,
        &g.output,
        topic_out.to_str().unwrap(),
        "--keys",
    ]);
    let messages = read_ndjson(&topic_out);
    assert!(!messages.is_empty());
    let write_traces: std::collections::BTreeSet<&str> =
        sink_writes.iter().map(|s| s.1.as_str()).collect();
    for m in &messages {
        let tp = m["headers"]["traceparent"]
            .as_str()
            .unwrap_or_else(|| panic!("{m:?}"));
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert!(
            write_traces.contains(parts[1]),
            "{tp} is not the trace of an exported sink write"
        );
    }
}

#[test]
fn message_columns_can_be_filtered_grouped_and_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        group,
        ..
    } = Golden::produce("4", &["--header", "trace_id=t-1"]);
    run_caught_up(
        dir.path(),
        &format!(
            r#"name: kafka-columns
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_partition:
    from: events
    where: "_headers['trace_id'] = 't-1' AND _key = datasetName"
    key: [_partition]
    tumbling: 1d
    aggregates:
      events: count(*)
      last_offset: max(_offset)
      first_seen: min(_timestamp)
    sinks: [file]
sinks:
  file: {{ file: {{ path: out.ndjson }} }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
"#
        ),
        &[],
    );
    let rows = read_ndjson(&dir.path().join("out.ndjson"));
    let s = summary("ingestion_1m", "per_dataset");
    let good = 6000 - s["bad"].as_u64().unwrap();
    let events: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    // one-day windows: nothing is late, every good event has its key and header
    assert_eq!(events, good);
    let mut partitions: Vec<u64> = rows
        .iter()
        .map(|r| r["_partition"].as_u64().unwrap())
        .collect();
    partitions.sort();
    partitions.dedup();
    assert!(
        partitions.iter().all(|p| *p < 4) && partitions.len() > 1,
        "{partitions:?}"
    );
    for r in &rows {
        assert!(r["last_offset"].as_u64().unwrap() < 6000, "{r:?}");
        assert!(r["first_seen"].as_str().unwrap().starts_with("20"), "{r:?}");
    }
}

#[test]
fn avro_messages_plain_and_confluent_give_the_oracle_windows() {
    // the events encoded by fastavro with the built-in data-ingestion schema (its .avsc is
    // tests/kafka/data-ingestion.avsc); lines that are not valid events are sent as they are
    let avsc = repo().join("tests/kafka/data-ingestion.avsc");
    let avsc = avsc.to_str().unwrap();
    for format in ["avro", "avro-confluent"] {
        windows_of_encoded_events_with(
            &["--format", format, "--schema", avsc, "--schema-id", "7"],
            "",
            "    format: avro\n    schema: data-ingestion\n    event_time: { field: timestamp, max_out_of_orderness: 5s }",
        );
    }
}

/// A schema registry (kafka_tool.py) serving `avsc` (or nothing: "-") as schema `id`; killed
/// when dropped.
struct Registry {
    child: Child,
    url: String,
}

impl Registry {
    fn start(avsc: &str, id: &str) -> Registry {
        let mut child = Command::new(python())
            .arg(repo().join("tests/kafka/kafka_tool.py"))
            .args(["registry", avsc, id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        Registry {
            child,
            url: format!("http://127.0.0.1:{}", port.trim()),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn avro_writer_schemas_come_from_the_schema_registry() {
    // the producer writes with a newer schema (one more field, `region`); weir gets it by id
    // from the registry and reads the fields it knows by name
    let v2 = repo().join("tests/kafka/data-ingestion-v2.avsc");
    let registry = Registry::start(v2.to_str().unwrap(), "42");
    let url = registry.url.clone();
    let result = std::panic::catch_unwind(|| {
        windows_of_encoded_events_with(
            &["--format", "avro-confluent", "--schema", v2.to_str().unwrap(), "--schema-id", "42"],
            &format!(", schema_registry: \"{url}\""),
            "    format: avro\n    schema: data-ingestion\n    event_time: { field: timestamp, max_out_of_orderness: 5s }",
        )
    });
    drop(registry);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn an_avro_sink_registers_its_schema_and_readers_get_the_oracle_rows() {
    let registry = Registry::start("-", "0");
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        output,
        group,
        case,
        ..
    } = Golden::produce("12", &[]);
    run_caught_up(
        dir.path(),
        &format!(
            r#"name: kafka-avro-out
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:{AGGREGATES}
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output}, schema_registry: "{}" }}, format: avro }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
"#,
            registry.url
        ),
        &[],
    );
    let read = dir.path().join("avro.ndjson");
    let url = registry.url.clone();
    tool(&[
        "consume",
        &brokers,
        &output,
        read.to_str().unwrap(),
        "--avro-registry",
        &url,
    ]);
    let expected = read_ndjson(&case.join("expected_per_dataset.ndjson"));
    compare(&expected, &read_ndjson(&read), &["datasetName"])
        .unwrap_or_else(|e| panic!("the Avro output differs from the oracle: {e}"));
}

/// `--until-caught-up` ends a partition that starts at its end offset (nothing committed
/// since, so no message comes to say it is caught up): a second run of a group ends at once.
#[test]
fn a_group_already_at_the_end_finishes_at_once_when_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        output,
        dlq,
        group,
        ..
    } = Golden::produce("3", &[]);
    let yaml = format!(
        r#"name: caught-up
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: committed }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: {{ events: count(*) }}
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output} }}, format: json }}
dead_letter: {{ kafka: {{ topic: {dlq} }} }}
"#
    );
    run_caught_up(dir.path(), &yaml, &[]);
    let mut second = weir()
        .args(["run", dir.path().join("pipeline.yaml").to_str().unwrap()])
        .arg("--until-caught-up")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = second.kill();
            panic!("the second run waited 30 s for messages that never come");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[test]
fn a_view_sends_upserts_keyed_by_its_key_and_a_final_snapshot_to_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        output,
        group,
        ..
    } = Golden::produce("4", &[]);
    run_caught_up(
        dir.path(),
        &format!(
            r#"name: kafka-view
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
views:
  per_dataset:
    from: events
    key: [datasetName]
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [topic, file]
sinks:
  topic: {{ kafka: {{ topic: {output} }} }}
  file: {{ file: {{ path: view.ndjson }} }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
"#
        ),
        &["--parallelism", "2"],
    );
    let (keys, values) = read_topic(&brokers, &output, dir.path());
    assert!(!values.is_empty());
    // every message is keyed by the view's key alone, as a JSON object
    let mut last: std::collections::BTreeMap<String, Row> = Default::default();
    for (k, v) in keys.iter().zip(&values) {
        let k = k.as_deref().expect("a key");
        let key: Value = serde_json::from_str(k).unwrap();
        assert_eq!(
            key,
            serde_json::json!({ "datasetName": v["datasetName"] }),
            "{k}"
        );
        last.insert(k.to_string(), v.clone());
    }
    // the last message of each key is the final snapshot, equal to the file's
    let mut from_topic: Vec<String> = last
        .values()
        .map(|r| {
            assert_eq!(r["op"], "snapshot", "{r:?}");
            Value::Object(r.clone()).to_string()
        })
        .collect();
    let mut from_file: Vec<String> = read_ndjson(&dir.path().join("view.ndjson"))
        .into_iter()
        .filter(|r| r["op"] == "snapshot")
        .map(|r| Value::Object(r).to_string())
        .collect();
    from_topic.sort();
    from_file.sort();
    assert_eq!(from_topic, from_file);
    // every good event is counted once, late ones included (a view has no window)
    let s = summary("ingestion_1m", "per_dataset");
    let good = 6000 - s["bad"].as_u64().unwrap();
    let counted: u64 = last.values().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(counted, good);
}

/// `weir_status` has each Kafka partition's consumer lag, equal to `weir_consumer_lag` on
/// `/metrics`; 0 on every partition once the run has read the whole topic.
#[test]
fn weir_status_shows_each_partition_s_consumer_lag() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        group,
        ..
    } = Golden::produce("4", &[]);
    let port = sql_support::free_port();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: kafka-lag
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
views:
  per_dataset:
    from: events
    key: [datasetName]
    aggregates:
      events: count(*)
serve: {{ http: "127.0.0.1:{port}", refresh: 200ms }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
"#
        ),
    )
    .unwrap();
    let mut run = sql_support::Running::start(env!("CARGO_BIN_EXE_weir"), &pipeline, &[]);
    run.wait_http(port);
    let started = Instant::now();
    let rows = loop {
        let rows = sql_support::sql_json(
            port,
            "SELECT source, partition, lag, events_in FROM weir_status ORDER BY partition",
        );
        // events_in is each partition's own count: together, the topic's 6,000 events
        let read: u64 = rows.iter().filter_map(|r| r["events_in"].as_u64()).sum();
        let caught_up =
            rows.len() == 4 && rows.iter().all(|r| r["lag"].as_i64() == Some(0)) && read == 6000;
        if caught_up {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no lag of 0 on every partition: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        rows.iter()
            .all(|r| (1..6000).contains(&r["events_in"].as_u64().unwrap())),
        "every partition has a share of the events, not the run's total: {rows:?}"
    );
    let partitions: Vec<&str> = rows
        .iter()
        .map(|r| r["partition"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..4).map(|p| format!("{input}/{p}")).collect();
    assert_eq!(partitions, expected);
    // the same figure on /metrics, one series per partition
    let metrics = sql_support::http(port, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("weir_consumer_lag{"))
        .collect();
    assert_eq!(series.len(), 4, "{series:?}");
    for p in &expected {
        assert!(
            series
                .iter()
                .any(|l| l.contains(&format!("partition=\"{p}\"")) && l.ends_with(" 0")),
            "{p}: {series:?}"
        );
    }
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// A view with `retain` on a topic: an expired key's last row (`op = delete`) is followed by
/// a tombstone, so a compacted topic forgets the key; kept keys end with their snapshot.
#[test]
fn expired_view_keys_become_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = brokers();
    let (input, output, group) = (unique("health"), unique("status"), unique("group"));
    tool(&["create", &brokers, &input, "1"]);
    tool(&["create", &brokers, &output, "1"]);
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, weir_tests::retain_events()).unwrap();
    tool(&["produce", &brokers, &input, events.to_str().unwrap()]);
    run_caught_up(
        dir.path(),
        &weir_tests::retain_pipeline(
            "kafka-retain",
            &format!(
                "kafka: {{ brokers: \"{brokers}\", topic: {input}, group_id: {group}, start_from: earliest }}"
            ),
            &format!("{{ kafka: {{ topic: {output} }} }}"),
            "dead_letter: { file: { path: dead.ndjson } }\n",
        ),
        &[],
    );
    let out = dir.path().join("out.ndjson");
    tool(&[
        "consume",
        &brokers,
        &output,
        out.to_str().unwrap(),
        "--keys",
    ]);
    let messages: Vec<(String, Value)> = read_ndjson(&out)
        .into_iter()
        .map(|m| (m["key"].as_str().unwrap().to_string(), m["value"].clone()))
        .collect();
    let key = |s: &str| serde_json::json!({ "serviceName": s }).to_string();
    for gone in ["old", "mid"] {
        let mine: Vec<&Value> = messages
            .iter()
            .filter(|(k, _)| *k == key(gone))
            .map(|(_, v)| v)
            .collect();
        let n = mine.len();
        assert!(n >= 2, "{gone}: {mine:?}");
        assert_eq!(mine[n - 2]["op"], "delete", "{gone}: {mine:?}");
        assert!(mine[n - 1].is_null(), "{gone}: no tombstone last: {mine:?}");
    }
    for kept in ["recent", "fresh"] {
        let last = messages
            .iter()
            .filter(|(k, _)| *k == key(kept))
            .map(|(_, v)| v)
            .next_back()
            .unwrap();
        assert_eq!(last["op"], "snapshot", "{kept}: {last}");
    }
    let tombstones = messages.iter().filter(|(_, v)| v.is_null()).count();
    assert_eq!(tombstones, 2, "{messages:?}");
}

/// A topic deleted and created again behind a checkpoint, holding as many records as the
/// checkpoint's offset: the restore reads the new topic from its start (the topic's id
/// differs from the one the checkpoint kept), with an error saying so. Before, it continued
/// at the old offset, the new topic's end, and read none of it without a word (with more
/// records, it skipped as many). The run after it continues in the new topic. (The test
/// broker deletes every topic when it deletes one: the tests of this file run one at a time,
/// and none keeps a topic for the next.)
#[test]
fn a_topic_created_again_behind_a_checkpoint_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let Golden {
        brokers,
        input,
        group,
        case,
        ..
    } = Golden::produce("1", &[]);
    let events = case.join("input.ndjson");
    let total = std::fs::read_to_string(&events).unwrap().lines().count() as u64;
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: created-again
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
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
checkpoint: {{ dir: state }}
"#
        ),
    )
    .unwrap();
    let run = || {
        let out = weir()
            .args(["run", pipeline.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weir failed:\n{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (stdout, _) = run();
    assert_eq!(events_processed(&stdout), total);
    tool(&["delete", &brokers, &input]);
    tool(&["create", &brokers, &input, "1"]);
    tool(&["produce", &brokers, &input, events.to_str().unwrap()]);
    let (stdout, stderr) = run();
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");
    assert_eq!(events_processed(&stdout), 2 * total, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("belongs to a topic of this name that was deleted since"),
        "{stderr}"
    );
    // the new checkpoint holds the new topic's id: the next run continues at its end
    let (stdout, stderr) = run();
    assert_eq!(events_processed(&stdout), 2 * total, "{stderr}");
    assert!(!stderr.contains("was deleted since"), "{stderr}");
}

/// `delivery: exactly_once` on a broker without transactions (the test broker, tansu, has no
/// `EndTxn`) fails the run with what to do; it was retried for ever.
#[test]
fn exactly_once_on_a_broker_without_transactions_fails_the_run_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = brokers();
    let (input, output) = (unique("ingest"), unique("txn-out"));
    tool(&["create", &brokers, &input, "1"]);
    tool(&["create", &brokers, &output, "1"]);
    let events = golden_dir().join("ingestion_1m/input.ndjson");
    tool(&["produce", &brokers, &input, events.to_str().unwrap()]);
    // until caught up, and running on with the topic read (the failed run then waited
    // silently for the quiet reader, until a signal); a group each (each reads the topic)
    for args in [&["--until-caught-up"][..], &[]] {
        let group = unique("group");
        let pipeline = dir.path().join("pipeline.yaml");
        std::fs::write(
            &pipeline,
            format!(
                r#"name: kafka-no-txn
{source}windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: {{ events: count(*) }}
    sinks: [topic]
sinks:
  topic: {{ kafka: {{ topic: {output}, delivery: exactly_once }} }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
                source = events_source(&brokers, &input, &group)
            ),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(dir.path().join("state"));
        let run = Running::start(&pipeline, args);
        let (status, log) = run.end_within(Duration::from_secs(120));
        let log = log.join("\n");
        assert!(status.is_some_and(|s| !s.success()), "{args:?}: {log}");
        assert!(
            log.contains("does not support Kafka transactions"),
            "{args:?}: {log}"
        );
    }
}
