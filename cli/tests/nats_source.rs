//! The NATS JetStream source end to end, against a real `nats-server` (started by each test
//! on free ports, `support/nats.rs`): events published by an independent client (nats-py,
//! `support/nats_publish.py`), windows computed by `weir run` as users run it, compared with
//! the oracle's rows (the reference model `tests/model/window_model.py`).

#[path = "support/crash.rs"]
mod crash;
#[path = "support/nats.rs"]
mod nats_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crash::{read_parquet_folder, venv_python};
use nats_support::{nats_publisher, nats_py, NatsServer};
use serde_json::Value;
use weir_tests::{compare, generate, oracle_per_dataset, read_ndjson, Row};

const SUBJECTS: [&str; 2] = ["ontology.schema.created", "ontology.schema.updated"];

fn weir() -> Command {
    let bin = std::env::var_os("WEIR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_weir").into());
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "info");
    c
}

/// A stream `EVENTS` over `ontology.>` and `other.>`, the events of `events` published
/// alternately on the two subjects of [`SUBJECTS`], and noise on `other.noise` that the
/// pipeline's filter must leave out.
fn stream_with_events(server: &NatsServer, events: &Path, d: &Path) {
    let url = server.url();
    nats_py(&url, &["create", "EVENTS", "ontology.>", "other.>"]);
    let noise = d.join("noise.ndjson");
    std::fs::write(&noise, "{\"datasetName\": \"noise\"}\n".repeat(50)).unwrap();
    nats_py(&url, &["publish", noise.to_str().unwrap(), "other.noise"]);
    let mut args = vec!["publish", events.to_str().unwrap()];
    args.extend(SUBJECTS);
    nats_py(&url, &args);
}

/// The pipeline: the stream read through `ontology.schema.*`, 1-minute windows per dataset
/// into Parquet, a window per subject (`_subject`), dead letters to NDJSON.
fn pipeline(d: &Path, url: &str, checkpoint: bool) -> PathBuf {
    let yaml = format!(
        r#"name: nats-source
sources:
  events:
    nats:
      url: "{url}"
      stream: EVENTS
      subjects: ["ontology.schema.*"]
      consumer: weir-events
      start_from: earliest
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
      max_bytes: max(sizeBytes)
    sinks: [lake]
  per_subject:
    from: events
    where: "_subject LIKE 'ontology.%'"
    key: [_subject]
    tumbling: 1d
    allowed_lateness: 1d
    aggregates:
      events: count(*)
      last_sequence: max(_sequence)
    sinks: [subjects]
sinks:
  lake: {{ file: {{ path: out/per_dataset.parquet }} }}
  subjects: {{ file: {{ path: out/per_subject.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
{checkpoint}"#,
        checkpoint = if checkpoint {
            "checkpoint: { dir: state, interval: 300ms }\n"
        } else {
            ""
        }
    );
    let p = d.join("pipeline.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// Runs pipeline `p` with `--until-caught-up`, as users do; its log (the run must succeed).
fn run_to_end(p: &Path) -> String {
    run_to_end_with(p, &[])
}

/// [`run_to_end`] with the environment `env` added.
fn run_to_end_with(p: &Path, env: &[(&str, &str)]) -> String {
    let out = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    log
}

/// The oracle's rows and (bad, late) counts of `events`.
fn expected(events: &Path, d: &Path) -> (Vec<Row>, u64, u64) {
    let (rows, s) = oracle_per_dataset(
        events,
        &[
            "events=count",
            "records=sum:recordCount",
            "max_bytes=max:sizeBytes",
        ],
        &d.join("expected.ndjson"),
    );
    (
        rows,
        s["bad"].as_u64().unwrap(),
        s["late"].as_u64().unwrap(),
    )
}

/// The outputs equal the oracle's; every dead letter names its subject and sequence, once.
fn verify(d: &Path, expected: &[Row], bad: u64, late: u64, label: &str) {
    let lake = read_parquet_folder(&d.join("out/per_dataset.parquet"));
    compare(expected, &lake, &["datasetName"])
        .unwrap_or_else(|e| panic!("{label}: the windows differ from the oracle: {e}"));
    assert!(bad > 0 && late > 0, "the data has bad and late rows");
    let dead = read_ndjson(&d.join("out/dead_letter.ndjson"));
    let count = |reason: &str| dead.iter().filter(|r| r["reason"] == reason).count() as u64;
    assert_eq!(
        (count("bad"), count("late")),
        (bad, late),
        "{label}: dead letters"
    );
    let mut seen = std::collections::HashSet::new();
    for r in &dead {
        let subject = r["subject"].as_str().unwrap_or_default();
        assert!(SUBJECTS.contains(&subject), "{label}: {r:?}");
        assert!(r["sequence"].as_u64().is_some(), "{label}: {r:?}");
        assert!(r.get("topic").is_none(), "{label}: {r:?}");
        assert!(
            seen.insert(r["sequence"].to_string()),
            "{label}: twice: {r:?}"
        );
    }
}

fn events_file(d: &Path, count: &str) -> PathBuf {
    let events = d.join("events.ndjson");
    generate(
        &events,
        &[
            count,
            "--seed",
            "7",
            "--keys",
            "200",
            "--step-ms",
            "5",
            "--bad-frac",
            "0.01",
            "--late-frac",
            "0.01",
            "--late-ms",
            "60000",
        ],
    );
    events
}

/// Windows equal to the oracle's; bad and late rows dead-lettered with their subject and
/// sequence; the subject filter (`ontology.schema.*`) leaves the stream's other subjects out,
/// and `_subject` / `_sequence` work as keys, in `where` and in aggregates; the run ends at
/// the stream's end (`--until-caught-up`).
#[test]
fn windows_equal_the_oracle_through_a_subject_wildcard() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = events_file(d, "30000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let p = pipeline(d, &server.url(), false);
    let started = Instant::now();
    run_to_end(&p);
    eprintln!("run: {:?}", started.elapsed());
    verify(d, &rows, bad, late, "one run");
    // per subject: both subjects, the noise subject left out, sequences of the stream
    let per_subject = read_ndjson(&d.join("out/per_subject.ndjson"));
    let subjects: std::collections::BTreeSet<&str> = per_subject
        .iter()
        .map(|r| r["_subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, SUBJECTS.into_iter().collect(), "{per_subject:?}");
    let last = per_subject
        .iter()
        .filter_map(|r| r["last_sequence"].as_u64())
        .max()
        .unwrap();
    let info: Value = serde_json::from_str(&nats_py(&server.url(), &["info", "EVENTS"])).unwrap();
    assert!(
        last <= info["last_seq"].as_u64().unwrap() && last > 50,
        "{last}"
    );

    // a second run with the same consumer: everything was acknowledged, nothing is read again
    let _ = std::fs::remove_dir_all(d.join("out"));
    run_to_end(&p);
    let lake = d.join("out/per_dataset.parquet");
    assert!(
        !lake.exists() || read_parquet_folder(&lake).is_empty(),
        "the acknowledged messages were read again"
    );
}

/// A graceful restart of the server while the source reads: the client reconnects, the
/// reader goes on, and nothing is lost or doubled (the windows equal the oracle's).
#[test]
fn a_server_restart_during_a_run_loses_nothing() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = events_file(d, "150000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let p = pipeline(d, &server.url(), false);
    let mut child = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // once the source reads, the server goes away for a moment
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the source never started reading");
        if line.contains("reading until caught up") {
            break;
        }
    }
    server.stop();
    std::thread::sleep(Duration::from_secs(2));
    server.restart();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("NATS disconnected"),
        "the server never went away:\n{log}"
    );
    verify(d, &rows, bad, late, "after a server restart");
}

/// Deliveries that never reach the reader are read again: here another reader of the same
/// durable consumer takes some while the run reads (and never acknowledges them). The
/// consumer numbers its deliveries; the reader notices the numbers it missed and creates the
/// consumer again before them. Before, a later acknowledgement covered them (`all`, the
/// default without checkpoints), their rows were missing and the run exited 0. (The same
/// loss came from messages in flight when a connection dropped, or past the client's buffer.)
#[test]
fn deliveries_taken_by_another_reader_are_read_again() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = events_file(d, "150000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let p = pipeline(d, &server.url(), false);
    // it waits for the run to create the consumer, then takes 20 messages; the reader pauses
    // for 8 s once connected (a failpoint), its first deliveries waiting in its client, so
    // that the other reader's start-up (Python's) cannot come after the run read everything
    let thief = Command::new(venv_python())
        .arg(nats_publisher())
        .args([&server.url(), "steal", "EVENTS", "weir-events", "20", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let log = run_to_end_with(&p, &[("WEIR_FAILPOINT_PAUSE", "nats_connected:8000:0:1")]);
    let out = thief.wait_with_output().unwrap();
    let taken: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(taken > 0, "the other reader took nothing:\n{log}");
    verify(
        d,
        &rows,
        bad,
        late,
        "after deliveries taken by another reader",
    );
    assert!(
        log.contains("never reached this reader"),
        "the reader did not notice the deliveries it missed:\n{log}"
    );
}

/// Exactly once across kill -9 with checkpoints, restarted as users do (the same pipeline
/// file, so the same durable consumer, default settings): the Parquet windows and the dead
/// letters equal the oracle's exactly.
#[test]
fn killed_and_restarted_runs_are_exactly_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    if std::env::var_os("WEIR_CRASH_KEEP").is_some() {
        eprintln!("keeping {}", d.display());
        std::mem::forget(dir);
    }
    let d = d.as_path();
    let events = events_file(d, "120000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let p = pipeline(d, &server.url(), true);
    let report = crash::crash_loop(
        || {
            let mut c = weir();
            c.args(["run", p.to_str().unwrap(), "--until-caught-up"]);
            c
        },
        std::env::var("WEIR_CRASH_KILLS")
            .ok()
            .and_then(|k| k.parse().ok())
            .unwrap_or(4),
        Duration::from_millis(800),
        &d.join("logs"),
        || {
            verify(d, &rows, bad, late, "a run that finished before its kill");
            let _ = std::fs::remove_dir_all(d.join("out"));
            let _ = std::fs::remove_dir_all(d.join("state"));
            // started over: without state and without the consumer, from the stream's start
            nats_py(&server.url(), &["delete-consumer", "EVENTS", "weir-events"]);
        },
    );
    eprintln!("{report:?}");
    verify(d, &rows, bad, late, "after the crashes");
}

/// `--until-caught-up` bounds the source at the stream's last sequence when the run started:
/// messages published once the run started are left for the next run, and the run ends.
#[test]
fn until_caught_up_stops_at_the_sequence_of_the_start() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = events_file(d, "30000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let more = d.join("more.ndjson");
    generate(
        &more,
        &["20000", "--seed", "8", "--keys", "200", "--step-ms", "5"],
    );
    let p = pipeline(d, &server.url(), false);
    let mut child = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut bound = None;
    let mut log = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("reading until caught up") {
            bound = Some(line);
            break;
        }
    }
    assert!(bound.is_some(), "{log}");
    // published while the run reads: not for this run
    let mut args = vec!["publish", more.to_str().unwrap()];
    args.extend(SUBJECTS);
    nats_py(&server.url(), &args);
    log.extend(lines.map_while(Result::ok).map(|l| l + "\n"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{log}");
    verify(d, &rows, bad, late, "a run bounded at its start");
    let info: Value = serde_json::from_str(&nats_py(&server.url(), &["info", "EVENTS"])).unwrap();
    assert_eq!(info["messages"], 50 + 30000 + 20000);
}

/// `weir replay` over a time range of a NATS stream: the messages are found by the time the
/// server stored them (published as they happen, event time ≈ publish time here), and the
/// windows starting in the range are written beside the live files, equal to the oracle's.
#[test]
fn a_replay_rewrites_the_windows_of_its_range() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let events = d.join("events.ndjson");
    let start = now.to_string();
    generate(
        &events,
        &[
            "30000",
            "--seed",
            "9",
            "--keys",
            "100",
            "--step-ms",
            "5",
            "--start-ms",
            &start,
            "--bad-frac",
            "0.01",
        ],
    );
    stream_with_events(&server, &events, d);
    let (rows, _, _) = expected(&events, d);
    let from = (now / 60_000 + 1) * 60_000;
    let to = from + 60_000;
    let iso = |ms: i64| {
        let out = Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{}", ms / 1000),
                "+%Y-%m-%dT%H:%M:%SZ",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let p = pipeline(d, &server.url(), false);
    let replay = |extra: &[&str]| {
        weir()
            .args([
                "replay",
                p.to_str().unwrap(),
                "--from",
                &iso(from),
                "--to",
                &iso(to),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    // every message was stored before the range's end time: the stream cannot show that the
    // range is whole (a live stream would hold later messages), so the replay is refused
    // unless told that the stream is complete
    let out = replay(&[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("--allow-incomplete"), "{log}");
    let out = replay(&["--allow-incomplete"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let replayed = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("per_dataset.replay-")
        })
        .unwrap_or_else(|| panic!("no replayed Parquet folder:\n{log}"));
    let got = read_parquet_folder(&replayed);
    let want: Vec<Row> = rows
        .into_iter()
        .filter(|r| {
            let start = r["window_start"].as_i64().expect("the oracle's ms");
            (from..to).contains(&start)
        })
        .collect();
    assert!(!want.is_empty(), "the range holds windows");
    compare(&want, &got, &["datasetName"]).unwrap_or_else(|e| panic!("replayed windows: {e}"));
}

/// The checkpoint, not the server, says where a restored run continues: after a kill -9, the
/// durable consumer is read (and acknowledged) to the stream's end by another client, and the
/// restored run still reads from the checkpoint's sequence (its windows equal the oracle's).
/// With checkpoints the default `ack_policy` is `none`: the other client moves the consumer's
/// deliveries on.
#[test]
fn a_restore_continues_at_the_checkpoint_whatever_the_consumer_delivered() {
    restore_continues_at_the_checkpoint(None);
}

/// As above with `ack_policy: all`: the other client acknowledges to the stream's end.
#[test]
fn a_restore_continues_at_the_checkpoint_whatever_the_consumer_acknowledged() {
    restore_continues_at_the_checkpoint(Some("all"));
}

fn restore_continues_at_the_checkpoint(ack_policy: Option<&str>) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = events_file(d, "60000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let p = pipeline(d, &server.url(), true);
    if let Some(policy) = ack_policy {
        let yaml = std::fs::read_to_string(&p).unwrap().replace(
            "consumer: weir-events\n",
            &format!("consumer: weir-events\n      ack_policy: {policy}\n"),
        );
        std::fs::write(&p, yaml).unwrap();
    }
    kill_after_a_busy_checkpoint(&p);
    let acked: Value = serde_json::from_str(&nats_py(
        &server.url(),
        &["ack-all", "EVENTS", "weir-events"],
    ))
    .unwrap();
    let moved = if ack_policy == Some("all") {
        "ack_floor"
    } else {
        "delivered"
    };
    assert!(acked[moved].as_u64().unwrap() > 30000, "{acked}");
    restored_run(&p, d);
    verify(d, &rows, bad, late, "restored after the consumer moved on");
}

/// An interest stream deletes a message once no consumer needs it, and a restore creates the
/// durable consumer again at its checkpoint: a hold keeps the messages meanwhile, so the run
/// killed after a checkpoint and restored as users do (same file, same consumer) loses
/// nothing, and no hold is left behind.
#[test]
fn an_interest_stream_loses_nothing_across_a_kill_and_restore() {
    interest_stream_restore(false);
}

/// As above, with the restore itself killed between deleting its consumer and creating it
/// again (the stream then has only the hold): the next restore still loses nothing.
#[test]
fn an_interest_stream_loses_nothing_when_a_restore_is_killed_mid_way() {
    interest_stream_restore(true);
}

fn interest_stream_restore(killed_mid_way: bool) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let events = events_file(d, "60000");
    let (rows, bad, late) = expected(&events, d);
    nats_py(&url, &["create-interest", "EVENTS", "ontology.>"]);
    let p = pipeline(d, &url, true);
    consumer_then_events(&p, d, &url, &events);
    kill_after_a_busy_checkpoint(&p);
    let held: Value = serde_json::from_str(&nats_py(&url, &["info", "EVENTS"])).unwrap();
    assert!(held["messages"].as_u64().unwrap() > 0, "{held}");
    if killed_mid_way {
        kill_at_failpoint(&p, "nats_consumer_deleted", 0);
        let consumer = nats_py(&url, &["consumer", "EVENTS", "weir-events"]);
        assert_eq!(consumer.trim(), "null", "the consumer was not deleted");
    }
    restored_run(&p, d);
    verify(d, &rows, bad, late, "an interest stream, restored");
    let consumers = nats_py(&url, &["consumers", "EVENTS"]);
    assert_eq!(consumers.trim(), r#"["weir-events"]"#, "holds left behind");
}

/// On an interest stream a restore reads again from the first unacknowledged message, and
/// drops what comes before its checkpoint. Killed after a checkpoint whose acknowledgements
/// never went out (at the `before_commit` failpoint) while the consumer was at its
/// `max_ack_pending`, the restored consumer delivers nothing but such messages: they are
/// acknowledged with the next checkpoint, and the run goes on to the end.
#[test]
fn an_interest_stream_restore_at_max_ack_pending_goes_on() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let events = events_file(d, "20000");
    let (rows, bad, late) = expected(&events, d);
    nats_py(&url, &["create-interest", "EVENTS", "ontology.>"]);
    let p = pipeline(d, &url, true);
    let yaml = std::fs::read_to_string(&p).unwrap().replace(
        "consumer: weir-events\n",
        "consumer: weir-events\n      max_ack_pending: 300\n",
    );
    std::fs::write(&p, yaml).unwrap();
    consumer_then_events(&p, d, &url, &events);
    kill_at_failpoint(&p, "before_commit", 2);
    let consumer: Value =
        serde_json::from_str(&nats_py(&url, &["consumer", "EVENTS", "weir-events"])).unwrap();
    eprintln!("the consumer when killed: {consumer}");
    restored_run(&p, d);
    verify(d, &rows, bad, late, "restored at max_ack_pending");
}

/// Messages the stream deleted before the source read them (its limits, a purge) cannot be
/// read: a restored run says which sequences it lost and ends at the stream's end, instead of
/// waiting for ever for messages that will not come.
#[test]
fn a_restore_past_deleted_messages_says_so_and_ends() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let events = events_file(d, "5000");
    stream_with_events(&server, &events, d);
    let p = pipeline(d, &url, true);
    run_to_end(&p);
    let mut args = vec!["publish", events.to_str().unwrap()];
    args.extend(SUBJECTS);
    nats_py(&url, &args);
    nats_py(&url, &["purge", "EVENTS"]);
    let log = restored_run(&p, d);
    assert!(
        log.contains("the stream no longer holds the messages of these sequences"),
        "{log}"
    );
}

/// A stream deleted and created again behind a checkpoint, with more messages than the
/// checkpoint read (its sequences started again at 1 and go past the checkpoint's): the
/// restored run fails on the stream's creation time, saying so and what to do. Before, it
/// read the new stream from the checkpoint's sequence on, its first 3,000 messages skipped
/// without a word, and exited 0.
#[test]
fn a_restore_of_a_stream_created_again_fails_saying_so() {
    let log = restore_of_a_stream_created_again(4000, false);
    assert!(log.contains("was created at"), "{log}");
}

/// A copy of the stream dated anew (a backup restored into a cluster; here the stream
/// created again with the same messages after a kill): refused by default, then accepted
/// with `accept_new_stream: true`, the restored run continues at the checkpoint's sequence,
/// and the windows equal the oracle's, each message counted once.
#[test]
fn an_accepted_copy_of_the_stream_continues_at_the_checkpoint() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let events = events_file(d, "60000");
    stream_with_events(&server, &events, d);
    let (rows, bad, late) = expected(&events, d);
    let p = pipeline(d, &url, true);
    kill_after_a_busy_checkpoint(&p);
    nats_py(&url, &["delete-stream", "EVENTS"]);
    stream_with_events(&server, &events, d);
    let log = refused_run(&p);
    assert!(log.contains("was created at"), "{log}");
    accept_new_stream(&p, Some(&log));
    let log = restored_run(&p, d);
    assert!(log.contains("as `accept_new_stream` says"), "{log}");
    verify(d, &rows, bad, late, "an accepted copy of the stream");
    // the checkpoint now holds the copy's creation time: it needs the setting no more ...
    let copy = std::fs::read_to_string(&p).unwrap();
    accept_new_stream(&p, None);
    run_to_end(&p);
    // ... and the setting accepts that copy only: a stream created again later is refused
    std::fs::write(&p, copy).unwrap();
    nats_py(&url, &["delete-stream", "EVENTS"]);
    stream_with_events(&server, &events, d);
    let log = refused_run(&p);
    assert!(log.contains("was created at"), "{log}");
}

/// Runs pipeline `p` with `--until-caught-up`, which must fail; its log.
fn refused_run(p: &Path) -> String {
    let out = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{log}");
    log
}

/// Sets `accept_new_stream` in pipeline `p` to the creation time the refusal `log` printed
/// (or removes it: `None`).
fn accept_new_stream(p: &Path, log: Option<&str>) {
    let yaml = std::fs::read_to_string(p).unwrap();
    let key = "accept_new_stream: ";
    let yaml = match log {
        Some(log) => {
            let at = log.find(key).expect(log) + key.len();
            let time: String = log[at..]
                .trim_start_matches(['\\', '"'])
                .chars()
                .take_while(|c| !matches!(c, '"' | '\\'))
                .collect();
            yaml.replace(
                "consumer: weir-events\n",
                &format!("consumer: weir-events\n      {key}\"{time}\"\n"),
            )
        }
        None => yaml
            .lines()
            .filter(|l| !l.contains(key))
            .map(|l| format!("{l}\n"))
            .collect(),
    };
    std::fs::write(p, yaml).unwrap();
}

/// Accepted as a copy, a stream that ends before the checkpoint's sequence (an older backup,
/// or another stream) still fails the run: its last sequence says it cannot continue it.
#[test]
fn an_accepted_copy_that_ends_before_the_checkpoint_fails_saying_so() {
    let log = restore_of_a_stream_created_again(500, true);
    assert!(log.contains("ends at sequence"), "{log}");
}

/// Runs a pipeline over a stream of 3,000 messages to its end with a checkpoint, deletes the
/// stream, creates it again with the first `messages` of 4,000 (the first 3,000 the same)
/// and restores the pipeline (with `accept_new_stream` when `accept`): the restored run must
/// fail, saying what happened and what to do; its log.
fn restore_of_a_stream_created_again(messages: usize, accept: bool) -> String {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let events = events_file(d, "3000");
    stream_with_events(&server, &events, d);
    let p = pipeline(d, &url, true);
    run_to_end(&p);
    nats_py(&url, &["delete-stream", "EVENTS"]);
    let more = events_file(d, "4000");
    let new = d.join("new.ndjson");
    let text = std::fs::read_to_string(&more).unwrap();
    let head: String = text
        .lines()
        .take(messages)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&new, head).unwrap();
    nats_py(&url, &["create", "EVENTS", "ontology.>", "other.>"]);
    let mut args = vec!["publish", new.to_str().unwrap()];
    args.extend(SUBJECTS);
    nats_py(&url, &args);
    let mut log = refused_run(&p);
    if accept {
        accept_new_stream(&p, Some(&log));
        log = refused_run(&p);
    }
    assert!(
        log.contains("was deleted and created again") && log.contains("checkpoint.dir"),
        "{log}"
    );
    log
}

/// A work-queue stream cannot be read again after a crash (it deletes what was acknowledged
/// and allows one deliver-all consumer): the run fails at once, saying so and what to use.
#[test]
fn a_work_queue_stream_is_refused_with_what_to_do() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nats_py(&server.url(), &["create-workqueue", "EVENTS", "ontology.>"]);
    let p = pipeline(d, &server.url(), true);
    let out = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("work-queue retention") && log.contains("limits or interest retention"),
        "{log}"
    );
}

/// Runs pipeline `p` (with the environment `env`) until a line of its log passes `done`, then
/// kills it (kill -9); within 120 s, else the test fails.
fn kill_when(p: &Path, env: &[(&str, &str)], done: impl Fn(&str) -> bool) {
    let mut child = weir()
        .args(["run", p.to_str().unwrap()])
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the log read on a thread, so that a run that never gets there fails the test in time
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut log, mut reached) = (String::new(), false);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if done(&line) {
            reached = true;
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reached, "the run never got there:\n{log}");
}

/// Runs pipeline `p` until a checkpoint holds open windows (the run is reading), then kills
/// it (kill -9).
fn kill_after_a_busy_checkpoint(p: &Path) {
    kill_when(p, &[], |l| {
        l.contains("checkpoint complete") && !l.contains("state_rows=0 ")
    });
}

/// Runs pipeline `p` with a failpoint (`WEIR_FAILPOINT_PAUSE`, see the engine's
/// `checkpoint::failpoint`) and kills it there.
fn kill_at_failpoint(p: &Path, point: &str, skip: u32) {
    let spec = format!("{point}:60000:{skip}");
    let reached = format!("failpoint {point}");
    kill_when(p, &[("WEIR_FAILPOINT_PAUSE", &spec)], |l| {
        l.contains(&reached)
    });
}

/// On an interest stream, the pipeline's first run (on the empty stream) creates its
/// consumer, then the events of `events` come (the stream keeps nothing for no one).
fn consumer_then_events(p: &Path, d: &Path, url: &str, events: &Path) {
    run_to_end(p);
    std::fs::remove_dir_all(d.join("out")).unwrap();
    std::fs::remove_dir_all(d.join("state")).unwrap();
    let mut args = vec!["publish", events.to_str().unwrap()];
    args.extend(SUBJECTS);
    nats_py(url, &args);
}

/// Runs pipeline `p` again with `--until-caught-up` (within 180 s); it must restore its
/// checkpoint and succeed. Its log.
fn restored_run(p: &Path, d: &Path) -> String {
    let log = d.join("restored.log");
    let mut child = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the restored run did not end in time:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{text}");
    assert!(text.contains("restored from checkpoint"), "{text}");
    text
}

/// Without checkpoints, a window holding more messages than `max_ack_pending` stops the
/// server's deliveries for good (its rows are never durable while it is open): the reader
/// notices within seconds and says what to set, instead of stalling silently.
#[test]
fn a_window_larger_than_max_ack_pending_is_reported() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = events_file(d, "3000");
    stream_with_events(&server, &events, d);
    let yaml = format!(
        r#"name: nats-stall
sources:
  events:
    nats:
      url: "{url}"
      stream: EVENTS
      subjects: ["ontology.schema.*"]
      consumer: weir-stall
      max_ack_pending: 500
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1h
    aggregates: {{ events: count(*) }}
    sinks: [out]
sinks:
  out: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
"#,
        url = server.url()
    );
    let p = d.join("pipeline.yaml");
    std::fs::write(&p, yaml).unwrap();
    let log = d.join("run.log");
    let mut child = weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read().contains("max_ack_pending 500") {
        let ended = child.try_wait().unwrap();
        if ended.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no stall reported (ended: {ended:?}):\n{}", read());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = read();
    assert!(
        text.contains("set `checkpoint:`") && text.contains("raise `max_ack_pending`"),
        "{text}"
    );
}

/// The state of consumer `consumer` of `EVENTS` (nats-py), `null` when there is none.
fn consumer_state(url: &str, consumer: &str) -> Value {
    serde_json::from_str(&nats_py(url, &["consumer", "EVENTS", consumer])).unwrap()
}

/// With checkpoints the source acknowledges nothing (the default `ack_policy: none`), so the
/// server's deliveries run ahead of what is durable. A run killed before its first checkpoint
/// completes must start again where `start_from: latest` stood when the pipeline first read
/// (the consumer's metadata), not at a later "latest" nor where the deliveries got to: the
/// restarted run's windows equal the oracle's over every event published after the first
/// start, and none of the stream's older messages is read.
#[test]
fn a_crash_before_the_first_checkpoint_restarts_where_latest_stood() {
    crash_before_the_first_checkpoint(false);
}

/// A pipeline that ran without checkpoints (`ack_policy: all`, its acknowledgement floor past
/// the older messages) gains `checkpoint:`, so its consumer is created again acknowledging
/// nothing, after the floor. Killed before its first checkpoint, it starts after the floor
/// again, not at `start_from: earliest` (the older messages would be read twice).
#[test]
fn a_pipeline_that_gains_checkpoints_keeps_its_position_across_a_crash() {
    crash_before_the_first_checkpoint(true);
}

fn crash_before_the_first_checkpoint(earlier_run_without_checkpoints: bool) {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nats_py(&url, &["create", "EVENTS", "ontology.>", "other.>"]);
    // older messages, bad records: read by mistake they would show up as dead letters
    let old = d.join("old.ndjson");
    std::fs::write(&old, "{\"datasetName\": \"old\"}\n".repeat(50)).unwrap();
    nats_py(&url, &["publish", old.to_str().unwrap(), SUBJECTS[0]]);
    let events = events_file(d, "40000");
    let (rows, bad, late) = expected(&events, d);
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (first, second) = (d.join("first.ndjson"), d.join("second.ndjson"));
    std::fs::write(&first, lines[..20000].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[20000..].join("\n") + "\n").unwrap();
    let start = if earlier_run_without_checkpoints {
        // the older messages read and acknowledged by a run without checkpoints
        run_to_end(&pipeline(d, &url, false));
        let state = consumer_state(&url, "weir-events");
        assert_eq!(
            (&state["ack_policy"], &state["ack_floor"]),
            (&"all".into(), &50.into()),
            "{state}"
        );
        std::fs::remove_dir_all(d.join("out")).unwrap();
        "earliest"
    } else {
        "latest"
    };
    // the same pipeline as users run it, checkpoints too rare to complete
    let p = pipeline(d, &url, true);
    let yaml = std::fs::read_to_string(&p)
        .unwrap()
        .replace("start_from: earliest", &format!("start_from: {start}"))
        .replace("interval: 300ms", "interval: 1h");
    std::fs::write(&p, yaml).unwrap();
    let log = d.join("first-run.log");
    /// The run, killed when the test ends early (no process left behind).
    struct Run(std::process::Child);
    impl Drop for Run {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Run(weir()
        .args(["run", p.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap());
    let wait_for = |what: &str, done: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = consumer_state(&url, "weir-events");
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {state}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let state = wait_for("the consumer was never created", &|s| {
        s["ack_policy"] == "none"
    });
    assert_eq!(state["ack_policy"], "none", "{state}");
    assert_eq!(state["metadata"]["weir_start_sequence"], "51", "{state}");
    nats_py(
        &url,
        &["publish", first.to_str().unwrap(), SUBJECTS[0], SUBJECTS[1]],
    );
    // every message delivered to the run, none acknowledged, then kill -9
    wait_for("the run never read the first half", &|s| {
        s["delivered"] == 20050
    });
    drop(child);
    let first_log = std::fs::read_to_string(&log).unwrap();
    assert!(!first_log.contains("checkpoint complete"), "{first_log}");
    nats_py(
        &url,
        &[
            "publish",
            second.to_str().unwrap(),
            SUBJECTS[0],
            SUBJECTS[1],
        ],
    );
    let text = run_to_end(&p);
    assert!(!text.contains("restored from checkpoint"), "{text}");
    verify(d, &rows, bad, late, "restarted without a checkpoint");
}
