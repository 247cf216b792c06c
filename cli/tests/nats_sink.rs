//! The NATS sink, the NATS dead-letter output and `weir generate --nats` against a real
//! `nats-server` with JetStream (a throwaway one per test, `support/nats.rs`), read back with
//! nats-py (`tests/nats/nats_sink_tool.py`), the independent client.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/nats.rs"]
mod nats;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crash::venv_python;
use nats::NatsServer;
use weir_tests::{compare, generate, oracle_per_dataset, read_ndjson, weir_bin, Row};

fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/nats/nats_sink_tool.py")
}

/// Runs the nats-py tool; panics with its output when it fails.
fn nats_tool(args: &[&str]) -> String {
    let out = Command::new(venv_python())
        .arg(tool())
        .args(args)
        .output()
        .expect("run nats_sink_tool.py");
    assert!(
        out.status.success(),
        "nats_sink_tool.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A stream `name` capturing `subject` (the server's default duplicate window, 2 minutes).
fn create_stream(server: &NatsServer, name: &str, subject: &str) {
    nats_tool(&["create", &server.url(), name, subject]);
}

/// Every message of `stream`, read by nats-py: `{seq, subject, msg_id, headers, data}`.
fn read_stream(server: &NatsServer, stream: &str, dir: &Path) -> Vec<Row> {
    let out = dir.join(format!("{stream}.read.ndjson"));
    nats_tool(&["read", &server.url(), stream, out.to_str().unwrap()]);
    read_ndjson(&out)
}

fn stream_count(server: &NatsServer, stream: &str) -> u64 {
    nats_tool(&["count", &server.url(), stream])
        .trim()
        .parse()
        .unwrap()
}

/// The messages' payloads as rows, after checking that no message id repeats.
fn rows_without_repeats(messages: &[Row]) -> Vec<Row> {
    let mut ids = HashSet::new();
    for m in messages {
        let id = m["msg_id"]
            .as_str()
            .expect("every message has a Nats-Msg-Id");
        assert!(ids.insert(id.to_string()), "message id {id} stored twice");
    }
    messages
        .iter()
        .map(|m| serde_json::from_str(m["data"].as_str().unwrap()).unwrap())
        .collect()
}

fn weir_run(pipeline: &Path) -> std::process::Output {
    Command::new(weir_bin())
        .args(["run", pipeline.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .output()
        .expect("weir run")
}

fn check(out: &std::process::Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

const WINDOWS: &str = r#"windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [bus]
"#;

const AGGS: [&str; 3] = [
    "events=count",
    "records=sum:recordCount",
    "max_bytes=max:sizeBytes",
];

/// Windows of a file → the NATS sink (JSON), bad and late events → dead letters on NATS:
/// the window messages read back by nats-py equal the oracle's rows, each once with its own
/// `Nats-Msg-Id`; the dead letters are the oracle's bad and late events, in the record shape
/// of the other dead-letter outputs.
#[test]
fn window_rows_and_dead_letters_on_nats_equal_the_oracle() {
    let server = NatsServer::start();
    create_stream(&server, "ROWS", "analytics.per_dataset");
    create_stream(&server, "DEAD", "weir.dead");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    generate(
        &events,
        &[
            "60000",
            "--seed",
            "5",
            "--keys",
            "50",
            "--step-ms",
            "10",
            "--bad-frac",
            "0.01",
            "--late-frac",
            "0.01",
            "--late-ms",
            "600000",
        ],
    );
    let (expected, summary) = oracle_per_dataset(&events, &AGGS, &d.join("expected.ndjson"));
    // a bad record whose correlation id holds a CR: the dead letter carries its ids as
    // headers, where a CR would end the header (async-nats panicked on it)
    let mut text = std::fs::read(&events).unwrap();
    text.extend_from_slice(b"{\"correlation_id\":\"order\r42\",\"timestamp\":\n");
    std::fs::write(&events, text).unwrap();
    let yaml = format!(
        r#"name: nats-windows
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
{WINDOWS}sinks:
  bus: {{ nats: {{ url: "{url}", subject: analytics.per_dataset }}, format: json }}
dead_letter: {{ nats: {{ url: "{url}", subject: weir.dead }} }}
"#,
        events = events.display(),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    check(&weir_run(&pipeline), "weir run");

    let messages = read_stream(&server, "ROWS", d);
    let rows = rows_without_repeats(&messages);
    compare(&expected, &rows, &["datasetName"]).unwrap_or_else(|e| panic!("{e}"));
    for m in &messages {
        let key = m["headers"]["Weir-Key"]
            .as_str()
            .expect("a Weir-Key header");
        assert!(key.contains("window_start"), "{key}");
    }

    let dead = read_stream(&server, "DEAD", d);
    let records = rows_without_repeats(&dead);
    let count = |reason: &str| records.iter().filter(|r| r["reason"] == reason).count() as u64;
    assert_eq!(
        (count("bad"), count("late")),
        (
            summary["bad"].as_u64().unwrap() + 1,
            summary["late"].as_u64().unwrap()
        ),
        "dead letters by reason"
    );
    assert_eq!(records.len() as u64, count("bad") + count("late"));
    for r in &records {
        for field in ["source", "reason", "error", "raw"] {
            assert!(
                r.get(field).is_some(),
                "a dead letter without `{field}`: {r:?}"
            );
        }
        assert_eq!(r["source"], "events");
        assert!(r["error"]["code"].is_string(), "{r:?}");
    }
}

/// A dead-letter stream whose `max_msg_size` (2,000 bytes) is below even the record with its
/// `raw` cut to 64 KiB: the record goes a third time without `raw` (its reason and error
/// kept), and the run goes on (it failed, and failed again at every restart).
#[test]
fn a_dead_letter_over_the_streams_message_size_goes_without_its_raw_bytes() {
    let server = NatsServer::start();
    nats_tool(&[
        "create",
        &server.url(),
        "DEAD",
        "weir.dead",
        "--max-msg-size",
        "2000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    let big = format!("{{\"datasetName\":\"{}\"\n", "x".repeat(10_000));
    std::fs::write(&events, big).unwrap();
    let yaml = format!(
        r#"name: nats-dead-small
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: {{ events: count(*) }}
    sinks: [rows]
sinks:
  rows: {{ file: {{ path: out/rows.ndjson }} }}
dead_letter: {{ nats: {{ url: "{url}", subject: weir.dead }} }}
"#,
        events = events.display(),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let log = check(&weir_run(&pipeline), "weir run");
    assert!(log.contains("its raw bytes are cut"), "{log}");
    let dead = rows_without_repeats(&read_stream(&server, "DEAD", d));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["raw"], "");
    assert_eq!(dead[0]["raw_truncated"], true);
    assert_eq!(dead[0]["reason"], "bad");
}

/// The data-ingestion events of `events`, counted per `datasetName` (every line is valid).
fn counts_per_dataset(events: &Path) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for r in read_ndjson(events) {
        *out.entry(r["datasetName"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

/// A view's changelog on NATS, with checkpoints: every message has its own id, a key's
/// newest message is its final row (the end of a bounded run publishes every key as
/// `snapshot`), and its counts equal the events'.
#[test]
fn view_changelog_on_nats_ends_with_every_key_s_final_row() {
    let server = NatsServer::start();
    create_stream(&server, "VIEW", "analytics.per_dataset_view");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    generate(
        &events,
        &["50000", "--seed", "8", "--keys", "40", "--step-ms", "5"],
    );
    let expected = counts_per_dataset(&events);
    let yaml = format!(
        r#"name: nats-view
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
views:
  per_dataset_view:
    from: events
    key: [datasetName]
    aggregates:
      events: count(*)
    sinks: [bus]
sinks:
  bus: {{ nats: {{ url: "{url}", subject: analytics.per_dataset_view }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
checkpoint: {{ dir: state, interval: 200ms }}
"#,
        events = events.display(),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    check(&weir_run(&pipeline), "weir run");
    let messages = read_stream(&server, "VIEW", d);
    let rows = rows_without_repeats(&messages);
    let mut newest: HashMap<String, &Row> = HashMap::new();
    for r in &rows {
        newest.insert(r["datasetName"].as_str().unwrap().to_string(), r);
    }
    assert_eq!(newest.len(), expected.len(), "keys of the view");
    for (k, n) in &expected {
        let r = newest[k];
        assert_eq!(r["events"].as_i64(), Some(*n), "{k}: {r:?}");
        assert_eq!(r["op"], "snapshot", "{k}: {r:?}");
    }
}

/// The NATS server stopped while the pipeline publishes (a generator paced to last several
/// seconds), started again once the sink reported the failure: nothing is lost, nothing is
/// stored twice. The reference is the same windows written to a file by the same run (the
/// paced generator's events are not those of `weir generate` with the same settings, so the
/// Python oracle cannot be used here; the other tests compare with it).
#[test]
fn a_server_restart_during_a_run_loses_nothing() {
    let mut server = NatsServer::start();
    create_stream(&server, "ROWS", "analytics.per_dataset");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = "generator: { kind: data-ingestion, count: 40000, events_per_second: 4000, seed: 17, keys: 30, step_ms: 50 }";
    let yaml = format!(
        r#"name: nats-restart
sources:
  events:
    {source}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
{windows}sinks:
  bus: {{ nats: {{ url: "{url}", subject: analytics.per_dataset }}, format: json }}
  reference: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
        windows = WINDOWS.replace("sinks: [bus]", "sinks: [bus, reference]"),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let log = d.join("run.log");
    let mut child = Command::new(weir_bin())
        .args(["run", pipeline.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // windows reached the stream: the sink is publishing
    while stream_count(&server, "ROWS") == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before publishing"
        );
        assert!(Instant::now() < deadline, "nothing published");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    // the sink noticed: its calls fail and are retried
    while !read().contains("retrying") && !read().contains("circuit open") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended while the server was down:\n{}",
            read()
        );
        assert!(Instant::now() < deadline, "no retry logged:\n{}", read());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.restart();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline + Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run did not finish:\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the run failed:\n{}", read());
    let expected = read_ndjson(&d.join("out/per_dataset.ndjson"));
    assert!(expected.len() > 500, "{} windows", expected.len());
    let rows = rows_without_repeats(&read_stream(&server, "ROWS", d));
    compare(&expected, &rows, &["datasetName"]).unwrap_or_else(|e| panic!("{e}"));
}

/// kill -9 at random moments and at the checkpoint failpoints, restarted with the same
/// pipeline file each time, then run to its end: the stream holds exactly the oracle's rows,
/// no message id twice (the repeats a restore publishes are dropped by the stream's duplicate
/// window).
#[test]
fn killed_and_restarted_runs_leave_exactly_the_oracle_s_rows_on_the_stream() {
    let server = NatsServer::start();
    create_stream(&server, "ROWS", "analytics.per_dataset");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let events = d.join("events.ndjson");
    generate(
        &events,
        &["300000", "--seed", "23", "--keys", "300", "--step-ms", "15"],
    );
    let (expected, _) = oracle_per_dataset(&events, &AGGS, &d.join("expected.ndjson"));
    let yaml = format!(
        r#"name: nats-crash
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
{WINDOWS}sinks:
  bus: {{ nats: {{ url: "{url}", subject: analytics.per_dataset }}, format: json }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
checkpoint: {{ dir: state, interval: 150ms }}
"#,
        events = events.display(),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let report = crash::crash_loop(
        || {
            let mut c = Command::new(weir_bin());
            c.args(["run", pipeline.to_str().unwrap()])
                .env("RUST_LOG", "info");
            c
        },
        std::env::var("WEIR_CRASH_KILLS")
            .ok()
            .and_then(|k| k.parse().ok())
            .unwrap_or(4),
        Duration::from_millis(800),
        &d.join("logs"),
        // a run that got to its end: its rows are checked, then the loop starts over on an
        // empty stream with empty state (a run restoring the finished state would end at
        // once, never to be killed)
        || {
            let rows = rows_without_repeats(&read_stream(&server, "ROWS", &d));
            compare(&expected, &rows, &["datasetName"])
                .unwrap_or_else(|e| panic!("a run that finished before its kill: {e}"));
            nats_tool(&["delete", &server.url(), "ROWS"]);
            create_stream(&server, "ROWS", "analytics.per_dataset");
            let _ = std::fs::remove_dir_all(d.join("state"));
            let _ = std::fs::remove_dir_all(d.join("out"));
        },
    );
    eprintln!("{report:?}");
    let messages = read_stream(&server, "ROWS", &d);
    let rows = rows_without_repeats(&messages);
    compare(&expected, &rows, &["datasetName"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.kills >= 4 || std::env::var("WEIR_CRASH_KILLS").is_ok());
}

/// `weir generate --nats URL/SUBJECT` creates a stream for the subject and publishes exactly
/// the events asked for: nats-py reads back N messages equal to `weir generate --out`'s lines.
#[test]
fn generate_publishes_exactly_n_events() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 20_000;
    let target = format!("{}/gen.events", server.url());
    let out = Command::new(weir_bin())
        .args(["generate", "service-health", "--count", &n.to_string()])
        .args([
            "--seed",
            "3",
            "--start-ms",
            "1700000000000",
            "--nats",
            &target,
        ])
        .output()
        .unwrap();
    check(&out, "weir generate --nats");
    let file = d.join("events.ndjson");
    let out = Command::new(weir_bin())
        .args(["generate", "service-health", "--count", &n.to_string()])
        .args(["--seed", "3", "--start-ms", "1700000000000", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    check(&out, "weir generate --out");
    let messages = read_stream(&server, "GEN_EVENTS", d);
    assert_eq!(messages.len(), n, "messages on the stream");
    let published: Vec<String> = messages
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect();
    let written: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        published, written,
        "the published events are the generator's, in order"
    );
    let ids: HashSet<&str> = messages
        .iter()
        .map(|m| m["msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    assert_eq!(messages[0]["subject"], "gen.events");
}

/// A subject no stream captures: the run fails at once with a message saying so.
#[test]
fn a_subject_without_a_stream_is_a_clear_error() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    generate(&events, &["1000"]);
    let yaml = format!(
        r#"name: nats-nostream
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
{WINDOWS}sinks:
  bus: {{ nats: {{ url: "{url}", subject: nowhere.rows }} }}
"#,
        events = events.display(),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let out = weir_run(&pipeline);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no JetStream stream captures subject `nowhere.rows`"),
        "{text}"
    );
}

/// Waits for `child` to end (at most `limit`), returning its status; kills it past the limit.
fn wait_for(
    child: &mut std::process::Child,
    limit: Duration,
    log: &Path,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the run did not finish:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The NATS server is down when the run starts (its streams exist in its store) and comes
/// up once the sink and the dead-letter output have failed to publish: the run does not
/// fail, retries under the default policy, and the stream ends with the same windows as a
/// file written by the same run; the bad events reach the dead-letter stream.
#[test]
fn a_server_that_starts_after_the_pipeline_loses_nothing() {
    let mut server = NatsServer::start();
    create_stream(&server, "ROWS", "analytics.per_dataset");
    create_stream(&server, "DEAD", "dead.rows");
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    generate(
        &events,
        &[
            "20000",
            "--seed",
            "5",
            "--keys",
            "30",
            "--step-ms",
            "50",
            "--bad-frac",
            "0.01",
        ],
    );
    let yaml = format!(
        r#"name: nats-late-server
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
{windows}sinks:
  bus: {{ nats: {{ url: "{url}", subject: analytics.per_dataset }}, format: json }}
  reference: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ nats: {{ url: "{url}", subject: dead.rows }} }}
"#,
        events = events.display(),
        windows = WINDOWS.replace("sinks: [bus]", "sinks: [bus, reference]"),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let log = d.join("run.log");
    let mut child = Command::new(weir_bin())
        .args(["run", pipeline.to_str().unwrap()])
        .current_dir(d)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    // both outputs started without a server, and the sink's publishes failed and are retried
    while read().matches("does not answer at start").count() < 2 || !read().contains("retrying") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended while the server was down:\n{}",
            read()
        );
        assert!(Instant::now() < deadline, "no retry logged:\n{}", read());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.restart();
    let status = wait_for(&mut child, Duration::from_secs(180), &log);
    assert!(status.success(), "the run failed:\n{}", read());
    let expected = read_ndjson(&d.join("out/per_dataset.ndjson"));
    assert!(expected.len() > 100, "{} windows", expected.len());
    let rows = rows_without_repeats(&read_stream(&server, "ROWS", d));
    compare(&expected, &rows, &["datasetName"]).unwrap_or_else(|e| panic!("{e}"));
    let dead = rows_without_repeats(&read_stream(&server, "DEAD", d));
    assert!(
        !dead.is_empty(),
        "no dead letter reached the stream:\n{}",
        read()
    );
    assert!(dead.iter().all(|r| r["reason"] == "bad"), "{dead:?}");
}

/// No server ever: with `retry.max_retries` the run fails once the retries are spent, with
/// a message that says what to do and no hang.
#[test]
fn a_server_that_never_comes_fails_the_run_after_the_retry_bound() {
    let server = NatsServer::not_started();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.ndjson");
    generate(&events, &["2000"]);
    let yaml = format!(
        r#"name: nats-never
sources:
  events:
    file: {{ path: {events} }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
{WINDOWS}sinks:
  bus:
    nats: {{ url: "{url}", subject: analytics.rows }}
    retry: {{ initial_backoff: 100ms, max_retries: 3 }}
"#,
        events = events.display(),
        url = server.url(),
    );
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let started = Instant::now();
    let out = weir_run(&pipeline);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60), "{text}");
    assert!(text.contains("does not answer at start"), "{text}");
    assert!(text.contains("giving up"), "{text}");
    assert!(
        text.contains("start the NATS server or fix `url`"),
        "{text}"
    );
}

/// A view's change messages carry the line of checkpoints they belong to in their ids: a run
/// restored from a checkpoint publishes the same ids again (the stream drops the repeats), but
/// a run started over (or another pool worker) numbering the same epochs does not have its
/// changes taken for repeats. Before, `e1` of a started-over run equal to an earlier `e1` was
/// dropped, and the stream's last message for the key kept the old run's later value.
#[test]
fn view_changes_of_another_line_of_checkpoints_are_not_taken_for_repeats() {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use weir_engine::job::{Committable, Sink};
    use weir_nats::sink::{NatsFormat, NatsSink, NatsSinkConfig, DEFAULT_ACK_TIMEOUT};

    let server = NatsServer::start();
    create_stream(&server, "VIEW", "views.status");
    let config = || NatsSinkConfig {
        endpoint: weir_nats::NatsEndpoint::new(vec![server.url()], "weir-test"),
        subject: "views.status".into(),
        format: NatsFormat::Json,
        max_in_flight: 64,
        ack_timeout: DEFAULT_ACK_TIMEOUT,
        pipeline: "p".into(),
        output: "status".into(),
        view_keys: Some(1),
        id_salt: String::new(),
    };
    let row = |checks: i64| {
        let schema = Arc::new(Schema::new(vec![
            Field::new("serviceName", DataType::Utf8, false),
            Field::new("checks", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(Int64Array::from(vec![checks])),
            ],
        )
        .unwrap()
    };
    // the first run: `a` has 1 check at epoch 1, 2 at epoch 2
    let mut first = NatsSink::new("out", config()).unwrap();
    first.recover(None).unwrap();
    first.write(&row(1)).unwrap();
    let info = first.pre_commit(1).unwrap();
    first.write(&row(2)).unwrap();
    first.pre_commit(2).unwrap();
    drop(first);
    assert_eq!(stream_count(&server, "VIEW"), 2);
    // restored from checkpoint 1: epoch 2's change again, a repeat the stream drops
    let mut restored = NatsSink::new("out", config()).unwrap();
    restored.recover(Some((1, &info))).unwrap();
    restored.write(&row(2)).unwrap();
    restored.pre_commit(2).unwrap();
    drop(restored);
    assert_eq!(
        stream_count(&server, "VIEW"),
        2,
        "a restore's repeat is dropped"
    );
    // started over: its epoch 1 is a change of its own, stored
    let mut over = NatsSink::new("out", config()).unwrap();
    over.recover(None).unwrap();
    over.write(&row(1)).unwrap();
    over.pre_commit(1).unwrap();
    drop(over);
    assert_eq!(
        stream_count(&server, "VIEW"),
        3,
        "a new line's change is stored"
    );
    let dir = tempfile::tempdir().unwrap();
    let messages = read_stream(&server, "VIEW", dir.path());
    let last: Row = serde_json::from_str(messages[2]["data"].as_str().unwrap()).unwrap();
    assert_eq!(last["checks"], 1);
}
