//! `weir replay` against the real broker: three hours of events (bad and very late lines
//! included, message timestamps = event times, as producers setting CreateTime do) in a
//! 3-partition topic; a live run writes 5-minute windows to a Kafka topic, an Iceberg table
//! and a file; a replay of hour 2 with a bug in the pipeline corrupts those windows; the
//! replay with the fixed pipeline puts every sink back to the oracle's rows; replaying again
//! changes nothing; windows outside the range are never touched.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/es.rs"]
mod es;
#[path = "support/iceberg.rs"]
mod iceberg;
#[path = "support/kafka.rs"]
mod kafka_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kafka_support::{brokers, tool, unique, weir};
use weir_tests::{compare, read_ndjson, Row};

const HOUR2_FROM: &str = "2023-11-14T23:15:00Z";
const HOUR2_TO: &str = "2023-11-15T00:15:00Z";
const FROM_MS: i64 = 1_700_003_700_000;
const TO_MS: i64 = 1_700_007_300_000;

fn pipeline(topic: &str, out_topic: &str, group: &str, filter: &str, es: &str) -> String {
    format!(
        r#"name: replayed
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {topic}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    partitioned_by: [datasetName]
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events{filter}
    key: [datasetName]
    tumbling: 5m
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [topic, lake, file, search]
sinks:
  topic: {{ kafka: {{ topic: {out_topic} }}, format: json }}
  search: {{ elasticsearch: {{ url: "{es}", index: "{out_topic}-{{output}}"{es_auth} }} }}
  lake: {{ iceberg: {{ catalog: "sqlite://lake/catalog.db", warehouse: lake, table: replay.per_dataset }} }}
  file: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
        brokers = brokers(),
        es_auth = std::env::var("WEIR_TEST_ES_API_KEY")
            .map(|k| format!(", api_key: \"{k}\""))
            .unwrap_or_default(),
    )
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn window_start(r: &Row) -> i64 {
    match &r["window_start"] {
        serde_json::Value::Number(n) => n.as_i64().unwrap(),
        serde_json::Value::String(s) => {
            weir_engine::time::parse_rfc3339_ms(s.as_bytes()).expect("an RFC 3339 time")
        }
        other => panic!("window_start {other}"),
    }
}

fn in_range(r: &Row) -> bool {
    (FROM_MS..TO_MS).contains(&window_start(r))
}

fn sorted(rows: impl IntoIterator<Item = Row>) -> Vec<String> {
    let mut v: Vec<String> = rows
        .into_iter()
        .map(|r| serde_json::Value::Object(r).to_string())
        .collect();
    v.sort();
    v
}

/// The newest message of every key of the output topic, and how many messages it holds.
fn latest_per_key(brokers: &str, topic: &str, dir: &Path) -> (Vec<Row>, usize) {
    let raw = dir.join(format!("{topic}.ndjson"));
    tool(&["consume", brokers, topic, raw.to_str().unwrap(), "--keys"]);
    let messages = read_ndjson(&raw);
    let mut latest: BTreeMap<String, Row> = BTreeMap::new();
    for m in &messages {
        let key = m["key"].to_string();
        let value = m["value"].as_object().expect("a JSON value").clone();
        latest.insert(key, value);
    }
    (latest.into_values().collect(), messages.len())
}

/// Three hours of generated events (seed `seed`) produced to a new 3-partition topic with
/// event-time timestamps, a new output topic, and the oracle's 5-minute windows.
struct Input {
    dir: tempfile::TempDir,
    expected: Vec<Row>,
    topic: String,
    out_topic: String,
}

fn input(seed: &str, name: &str) -> Input {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    weir_tests::generate(
        &events,
        &[
            "60000",
            "--seed",
            seed,
            "--keys",
            "50",
            "--step-ms",
            "180",
            "--bad-frac",
            "0.005",
            "--late-frac",
            "0.004",
            "--late-ms",
            "240000",
        ],
    );
    let expected_path = d.join("expected.ndjson");
    ok(
        Command::new("python3")
            .arg(weir_tests::model_script())
            .arg(&events)
            .args(["--schema", "data-ingestion", "--key", "datasetName"])
            .args(["--size", "5m", "--ooo", "5s", "--agg", "events=count"])
            .args(["--agg", "records=sum:recordCount"])
            .args(["--agg", "max_bytes=max:sizeBytes", "-o"])
            .arg(&expected_path)
            .output()
            .unwrap(),
        "window_model.py",
    );
    let topic = unique(&format!("{name}-in"));
    let out_topic = unique(&format!("{name}-out"));
    tool(&["create", &brokers, &topic, "3"]);
    tool(&["create", &brokers, &out_topic, "3"]);
    tool(&[
        "produce",
        &brokers,
        &topic,
        events.to_str().unwrap(),
        "--timestamp-field",
        "timestamp",
    ]);
    Input {
        expected: read_ndjson(&expected_path),
        dir,
        topic,
        out_topic,
    }
}

#[test]
fn a_replay_rewrites_the_windows_of_its_range_in_every_sink_and_nothing_else() {
    let brokers = brokers();
    let Input {
        dir,
        expected,
        topic,
        out_topic,
    } = input("5", "replay");
    let d = dir.path();
    let expected_in_range: Vec<Row> = expected.iter().filter(|r| in_range(r)).cloned().collect();
    assert!(expected_in_range.len() > 100 && expected_in_range.len() < expected.len() / 2);

    let search = es::Es::for_test();
    let good = d.join("pipeline.yaml");
    std::fs::write(
        &good,
        pipeline(&topic, &out_topic, &unique("live"), "", &search.url),
    )
    .unwrap();
    // a bug: successful ingestions are dropped
    let buggy = d.join("buggy.yaml");
    std::fs::write(
        &buggy,
        pipeline(
            &topic,
            &out_topic,
            &unique("live"),
            "\n    where: \"status <> 'SUCCESS'\"",
            &search.url,
        ),
    )
    .unwrap();
    let keys = ["datasetName"];
    let table = iceberg::Table::local(crash::venv_python(), &d.join("lake"), "replay.per_dataset");

    // the live run
    ok(
        weir()
            .args(["run", good.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap(),
        "the live run",
    );
    compare(&expected, &table.pyiceberg(), &keys).expect("the live run's table");
    // Elasticsearch: one document per window, by id
    let index = format!("{out_topic}-per_dataset");
    let documents = || {
        let docs = search.documents(&index);
        let rows: Vec<Row> = docs.iter().map(|d| d.2.clone()).collect();
        let versions: std::collections::BTreeMap<String, u64> =
            docs.into_iter().map(|(id, v, _)| (id, v)).collect();
        (rows, versions)
    };
    let (rows, live_versions) = documents();
    compare(&expected, &rows, &keys).expect("the live run's documents");
    let live_file = std::fs::read_to_string(d.join("out/per_dataset.ndjson")).unwrap();
    let outside_before = sorted(table.pyiceberg().into_iter().filter(|r| !in_range(r)));

    let replay = |pipeline: &Path, extra: &[&str]| {
        ok(
            weir()
                .args(["replay", pipeline.to_str().unwrap()])
                .args(["--from", HOUR2_FROM, "--to", HOUR2_TO])
                .args(extra)
                .output()
                .unwrap(),
            "weir replay",
        )
    };
    // --dry-run: the ranges, nothing written
    let snapshots = table.snapshots().len();
    let dry = replay(&good, &["--dry-run"]);
    assert!(dry.contains(&format!("{topic}/0: offsets")), "{dry}");
    assert!(dry.contains("12 per key"), "{dry}");
    assert_eq!(table.snapshots().len(), snapshots);
    // a range ending after the last message: it is read to the end of each partition (the
    // broker answers offset 0 for a time past the end; weir checks the answer against the
    // last message's timestamp), and one starting after it reads nothing
    let dry_run = |from: &str, to: &str| {
        ok(
            weir()
                .args(["replay", good.to_str().unwrap(), "--dry-run"])
                .args(["--from", from, "--to", to])
                .output()
                .unwrap(),
            "a dry run",
        )
    };
    let dry = dry_run("2023-11-15T01:00:00Z", "2024-01-01T00:00:00Z");
    for line in dry.lines().filter(|l| l.contains(": offsets ")) {
        let (range, rest) = line
            .split_once(": offsets ")
            .unwrap()
            .1
            .split_once(' ')
            .unwrap();
        let (start, end) = range.split_once("..").unwrap();
        let high = rest.trim_end_matches(')').rsplit(' ').next().unwrap();
        assert_eq!(end, high, "the range runs to the partition's end: {line}");
        assert!(start.parse::<u64>().unwrap() > 0, "{line}");
    }
    assert!(dry.contains("may be incomplete: "), "{dry}");
    let dry = dry_run("2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z");
    assert!(dry.contains("replay of replayed (0 messages)"), "{dry}");
    // not dry, both are refused and change nothing: the range running past the topic's last
    // message (its last windows may still be open in the live run), and the one holding no
    // message (it replaced the range's rows with nothing)
    let refused = |from: &str, to: &str, why: &str| {
        let out = weir()
            .args(["replay", good.to_str().unwrap()])
            .args(["--from", from, "--to", to])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    };
    refused(
        "2023-11-15T01:00:00Z",
        "2024-01-01T00:00:00Z",
        "may miss events of the range",
    );
    refused(
        "2024-01-01T00:00:00Z",
        "2024-01-01T01:00:00Z",
        "the range holds no message",
    );
    assert_eq!(table.snapshots().len(), snapshots);

    // the buggy replay corrupts hour 2 in every sink
    replay(&buggy, &[]);
    assert!(
        compare(&expected, &table.pyiceberg(), &keys).is_err(),
        "the buggy replay changed nothing"
    );
    let (latest, _) = latest_per_key(&brokers, &out_topic, d);
    assert!(compare(&expected, &latest, &keys).is_err());

    // the fixed replay puts them back
    let (_, before_fix) = latest_per_key(&brokers, &out_topic, d);
    let stdout = replay(&good, &["--parallelism", "2"]);
    assert!(
        stdout.contains(&format!(
            "sink lake: {} windows rewritten",
            expected_in_range.len()
        )),
        "{stdout}"
    );
    compare(&expected, &table.pyiceberg(), &keys)
        .unwrap_or_else(|e| panic!("the table after the replay differs from the oracle: {e}"));
    compare(&expected, &table.duckdb(), &keys)
        .unwrap_or_else(|e| panic!("DuckDB's rows after the replay differ: {e}"));
    let (latest, after_fix) = latest_per_key(&brokers, &out_topic, d);
    compare(&expected, &latest, &keys)
        .unwrap_or_else(|e| panic!("the topic's newest rows differ from the oracle: {e}"));
    // the documents: as many as before, right again; the range's were written again
    let (rows, versions) = documents();
    compare(&expected, &rows, &keys)
        .unwrap_or_else(|e| panic!("the documents after the replay differ from the oracle: {e}"));
    assert_eq!(versions.len(), live_versions.len());
    let rewritten = versions
        .iter()
        .filter(|(id, v)| **v > live_versions[id.as_str()])
        .count();
    assert!(
        rewritten >= expected_in_range.len(),
        "{rewritten} documents rewritten for {} windows in the range",
        expected_in_range.len()
    );
    assert_eq!(
        after_fix - before_fix,
        expected_in_range.len(),
        "the replay sent exactly the range's windows"
    );
    let replay_file = d.join("out/per_dataset.replay-20231114T231500Z-20231115T001500Z.ndjson");
    compare(&expected_in_range, &read_ndjson(&replay_file), &keys)
        .unwrap_or_else(|e| panic!("the replay's file differs from the oracle's range: {e}"));
    // the live run's file and the rows outside the range are untouched
    assert_eq!(
        std::fs::read_to_string(d.join("out/per_dataset.ndjson")).unwrap(),
        live_file
    );
    assert_eq!(
        sorted(table.pyiceberg().into_iter().filter(|r| !in_range(r))),
        outside_before
    );

    // replaying again changes nothing
    let rows = sorted(table.pyiceberg());
    replay(&good, &[]);
    assert_eq!(sorted(table.pyiceberg()), rows);
    let (latest, _) = latest_per_key(&brokers, &out_topic, d);
    compare(&expected, &latest, &keys).unwrap();
    // the live run's checkpoint and group were not used: it restores and finds nothing new
    let stdout = ok(
        weir()
            .args(["run", good.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap(),
        "the live run again",
    );
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");
    compare(&expected, &table.pyiceberg(), &keys).unwrap();
}

/// A live run and a replay of a range it is reading, at the same time: separate consumer
/// groups and state, so neither disturbs the other (each output equals the oracle's rows).
#[test]
fn a_replay_and_a_live_run_at_the_same_time_do_not_interfere() {
    let brokers = brokers();
    let Input {
        dir,
        expected,
        topic,
        out_topic,
    } = input("6", "replay-live");
    let d = dir.path();
    let group = unique("live");
    // the file and the topic only: an Iceberg table takes a replay of windows the live run
    // has already written (see the README)
    let search = es::Es::for_test();
    let yaml = pipeline(&topic, &out_topic, &group, "", &search.url)
        .replace("sinks: [topic, lake, file, search]", "sinks: [topic, file]");
    let path = d.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let live = weir()
        .args(["run", path.to_str().unwrap(), "--until-caught-up"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // its output is read while the replay runs: a full pipe would stop it
    let live = std::thread::spawn(move || live.wait_with_output().unwrap());
    let replay = weir()
        .args(["replay", path.to_str().unwrap()])
        .args(["--from", HOUR2_FROM, "--to", HOUR2_TO])
        .output()
        .unwrap();
    let replay_out = ok(replay, "the replay");
    let live = ok(live.join().unwrap(), "the live run");
    assert!(replay_out.contains("windows rewritten"), "{replay_out}");
    assert!(live.contains("sink file:"), "{live}");
    let keys = ["datasetName"];
    compare(
        &expected,
        &read_ndjson(&d.join("out/per_dataset.ndjson")),
        &keys,
    )
    .unwrap_or_else(|e| panic!("the live run's file differs from the oracle: {e}"));
    let in_range: Vec<Row> = expected.iter().filter(|r| in_range(r)).cloned().collect();
    compare(
        &in_range,
        &read_ndjson(&d.join("out/per_dataset.replay-20231114T231500Z-20231115T001500Z.ndjson")),
        &keys,
    )
    .unwrap_or_else(|e| panic!("the replay's file differs from the oracle's range: {e}"));
    let (latest, _) = latest_per_key(&brokers, &out_topic, d);
    compare(&expected, &latest, &keys).unwrap();
    // the live group's offsets reached the end: the replay's group is another
    let lag: serde_json::Value =
        serde_json::from_str(tool(&["lag", &brokers, &group, &topic]).trim()).unwrap();
    assert_eq!(lag["lag"], 0, "{lag}");
}

/// The refusal of a range a partition may not hold whole concerns the partitions whose
/// newest messages are in it: an empty partition, and one quiet since before the range, do
/// not make a replay of a range the busy partition holds whole incomplete (they refused
/// every replay of a keyed topic with an empty partition).
#[test]
fn an_empty_or_quiet_partition_does_not_make_a_range_incomplete() {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // three hours from 2023-11-14T22:13:20Z; the quiet partition's ten minutes before them
    let events = d.join("events.ndjson");
    weir_tests::generate(&events, &["60000", "--seed", "3", "--step-ms", "180"]);
    let early = d.join("early.ndjson");
    weir_tests::generate(
        &early,
        &[
            "100",
            "--seed",
            "4",
            "--start-ms",
            "1699999000000",
            "--step-ms",
            "6000",
        ],
    );
    // partition 2: ten minutes of the range, one event an hour after it, then a late event
    // from before it (its newest message is older than the range: the broker's answer is
    // right, not the partition's end)
    let late_last = d.join("late_last.ndjson");
    let mut parts = Vec::new();
    for (i, (n, start, step)) in [
        ("100", FROM_MS, "6000"),
        ("1", TO_MS + 3_600_000, "1"),
        ("1", 1_699_990_000_000, "1"),
    ]
    .into_iter()
    .enumerate()
    {
        let part = d.join(format!("part{i}.ndjson"));
        let start = start.to_string();
        weir_tests::generate(
            &part,
            &[n, "--seed", "5", "--start-ms", &start, "--step-ms", step],
        );
        parts.extend(std::fs::read(&part).unwrap());
    }
    std::fs::write(&late_last, parts).unwrap();
    let topic = unique("replay-quiet-in");
    tool(&["create", &brokers, &topic, "3"]);
    for (file, partition) in [(&events, "0"), (&early, "1"), (&late_last, "2")] {
        tool(&[
            "produce",
            &brokers,
            &topic,
            file.to_str().unwrap(),
            "--timestamp-field",
            "timestamp",
            "--partition",
            partition,
        ]);
    }
    let yaml = pipeline(
        &topic,
        &unique("replay-quiet-out"),
        &unique("quiet"),
        "",
        "http://127.0.0.1:1",
    )
    .replace("sinks: [topic, lake, file, search]", "sinks: [file]");
    let path = d.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let dry_run = |to: &str| {
        ok(
            weir()
                .args(["replay", path.to_str().unwrap(), "--dry-run"])
                .args(["--from", HOUR2_FROM, "--to", to])
                .output()
                .unwrap(),
            "a dry run",
        )
    };
    let whole = dry_run(HOUR2_TO);
    assert!(!whole.contains("may be incomplete"), "{whole}");
    let late_partition = whole
        .lines()
        .find(|l| l.contains(&format!("{topic}/2: offsets")))
        .unwrap_or_else(|| panic!("{whole}"));
    assert!(
        late_partition.contains("(100 messages;"),
        "the range's messages before a late last one: {late_partition}"
    );
    // past the last messages: the partitions whose newest messages are in the range (the
    // busy one, and partition 2), not the quiet one
    let open = dry_run("2024-01-01T00:00:00Z");
    let flagged: Vec<&str> = open
        .lines()
        .filter(|l| l.contains("may be incomplete"))
        .collect();
    assert_eq!(flagged.len(), 2, "{open}");
    assert!(flagged[0].contains(&format!("{topic}/0:")), "{open}");
    assert!(flagged[1].contains(&format!("{topic}/2:")), "{open}");
    // without --to, the range ends where the busy partition holds its windows whole: its
    // newest event (about 2023-11-15T01:13Z) less the window and the out-of-orderness
    let out = ok(
        weir()
            .args(["replay", path.to_str().unwrap(), "--dry-run"])
            .args(["--from", HOUR2_FROM])
            .output()
            .unwrap(),
        "a dry run without --to",
    );
    assert!(
        out.contains("--to not given: up to 2023-11-15T01:0"),
        "{out}"
    );
    assert!(!out.contains("may be incomplete"), "{out}");
    assert!(!out.contains("open at the end"), "{out}");
}
