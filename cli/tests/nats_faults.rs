//! Faults under the NATS source, against a real `nats-server` and the pipeline run as users
//! run it: messages the stream deletes before the source reads them (its limits, such as
//! `max_age`, or a purge), which cannot be read and are counted
//! (`weir_records_expired_total`, the run's summary) and logged; a consumer deleted on the
//! server while no pull request waited, which is created again; deliveries lost at the end of
//! the stream, with no later one to show the gap.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/nats.rs"]
mod nats_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nats_support::{nats_py, NatsServer};
use weir_tests::generate;

/// The pipeline: the whole stream `EVENTS` (no subject filter), windows of `window` per dataset.
fn pipeline(d: &Path, url: &str, window: &str) -> PathBuf {
    let yaml = format!(
        r#"name: nats-retention
sources:
  events:
    nats: {{ url: "{url}", stream: EVENTS, consumer: weir-events }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: {window}
    aggregates: {{ events: count(*) }}
    sinks: [out]
sinks:
  out: {{ file: {{ path: out/windows.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
"#
    );
    let p = d.join("pipeline.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A run of pipeline `p` with `--until-caught-up` whose reader pauses for 8 s each time it
/// connected (a failpoint), and its log, line by line as it comes and whole at the end. The
/// pause outlasts what a test does meanwhile with a Python client (its start-up included) on
/// a loaded machine (4 s was close: in one CI run the other reader's fetches came back empty,
/// and the helper then failed on nats-py's timeout, which it did not catch).
struct PausedRun {
    child: Child,
    lines: Receiver<String>,
    logger: JoinHandle<String>,
}

impl PausedRun {
    fn start(p: &Path) -> PausedRun {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", p.to_str().unwrap(), "--until-caught-up"])
            .env("RUST_LOG", "info")
            .env("WEIR_FAILPOINT_PAUSE", "nats_connected:8000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let logger = std::thread::spawn(move || {
            let mut all = String::new();
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        PausedRun {
            child,
            lines,
            logger,
        }
    }

    /// Waits (up to 60 s) until the reader connected and paused (the failpoint's own line,
    /// not its log record).
    fn paused(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the source never connected")
            != "failpoint nats_connected"
        {}
    }

    /// Waits for the end (it must succeed within 90 s): its summary (stdout) and log.
    fn ended(self) -> (String, String) {
        let (success, summary, log) = self.exit();
        assert!(success, "{summary}\n{log}");
        (summary, log)
    }

    /// Waits for the end (it must fail within 90 s): its log.
    fn failed(self) -> String {
        let (success, summary, log) = self.exit();
        assert!(!success, "the run succeeded: {summary}\n{log}");
        log
    }

    /// Waits for the end (within 90 s, else the test fails): whether the run succeeded, its
    /// summary (stdout) and log.
    fn exit(mut self) -> (bool, String, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let ended = self.child.try_wait().unwrap().is_some();
        if !ended {
            self.child.kill().unwrap();
        }
        let out = self.child.wait_with_output().unwrap();
        let log = self.logger.join().unwrap();
        let summary = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(ended, "the run did not end in 90 s:\n{log}");
        (out.status.success(), summary, log)
    }

    /// Kills it (kill -9).
    fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A stream `EVENTS` holding 50,000 events at sequences 1001..=51000 (the first 1000 were
/// purged before the pipeline's first run); the pipeline reading it whole into windows of
/// `window`.
fn stream_of_50_000(server: &NatsServer, d: &Path, window: &str) -> PathBuf {
    let url = server.url();
    let (before, events) = (d.join("before.ndjson"), d.join("events.ndjson"));
    generate(&before, &["1000", "--seed", "3"]);
    generate(&events, &["50000", "--seed", "4"]);
    nats_py(&url, &["create", "EVENTS", "ontology.>"]);
    let publish = |f: &Path| nats_py(&url, &["publish", f.to_str().unwrap(), "ontology.e"]);
    publish(&before);
    nats_py(&url, &["purge", "EVENTS"]);
    publish(&events);
    pipeline(d, &url, window)
}

/// A server, the stream of [`stream_of_50_000`] in a folder of its own, and a run of its
/// pipeline (windows of `window`) paused once its reader connected.
fn paused_on_50_000(window: &str) -> (NatsServer, tempfile::TempDir, PathBuf, PausedRun) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let p = stream_of_50_000(&server, dir.path(), window);
    let run = PausedRun::start(&p);
    run.paused();
    (server, dir, p, run)
}

/// Sequences 1..=1000 were purged before the pipeline's first run (never its messages: not
/// counted), and ten of the later ones are deleted while the run reads (paused at its start,
/// so that they go before the reader gets there): exactly those ten are counted and said, the
/// rest is read, the run ends at the stream's end.
#[test]
fn messages_deleted_while_the_run_reads_are_counted_and_said() {
    let (server, _dir, _, run) = paused_on_50_000("1m");
    let url = server.url();
    nats_py(&url, &["delete-messages", "EVENTS", "50901", "50910"]);
    let (summary, log) = run.ended();
    assert!(
        summary.contains(": 49990 events processed"),
        "{summary}\n{log}"
    );
    assert!(
        summary.contains("10 records were deleted by their source"),
        "{summary}\n{log}"
    );
    assert!(
        log.contains("the stream deleted messages before this source read them")
            && log.contains("messages=10"),
        "{log}"
    );
}

/// The consumer deleted on the server while the reader holds what it pulled (paused, its
/// queue full, no pull request waiting: the server tells no one): the next pull request has
/// no responder, the reader finds the consumer gone and creates it again where it stands.
/// Before, it logged the failed pull for ever and the run never ended.
#[test]
fn a_consumer_deleted_while_no_pull_waits_is_created_again() {
    let (server, _dir, _, run) = paused_on_50_000("1m");
    let url = server.url();
    nats_py(&url, &["delete-consumer", "EVENTS", "weir-events"]);
    let (summary, log) = run.ended();
    assert!(
        summary.contains(": 50000 events processed"),
        "{summary}\n{log}"
    );
    assert!(log.contains("the consumer is gone"), "{log}");
}

/// Without checkpoints, the consumer's acknowledgement floor is where a later run continues,
/// so it must stay below rows not yet durable. Created again mid-run (here: deleted while the
/// reader paused) before any row is durable (one-day windows, all open), the consumer starts
/// after its old floor, not at the reader's position; killed then (paused again right after),
/// the next run reads every message. Before, the new consumer's floor was the reader's
/// position and the next run started there: the rows read before it were lost.
#[test]
fn a_crash_after_the_consumer_is_created_again_mid_run_loses_nothing() {
    let (server, _dir, p, run) = paused_on_50_000("1d");
    let url = server.url();
    nats_py(&url, &["delete-consumer", "EVENTS", "weir-events"]);
    run.paused();
    run.crash();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary}");
    assert!(
        summary.contains(": 50000 events processed"),
        "the run after the crash did not read every message: {summary}"
    );
}

/// Deliveries lost at the end of the stream (here another reader of the consumer takes every
/// message left while the reader is paused with its queue full), with no later delivery whose
/// number shows the gap: after 2 s without a message, the reader finds that the consumer
/// delivered more than it received, and creates it again before them. Before, the run waited
/// for ever (`--until-caught-up` never ended: the server redelivers only after `ack_wait`,
/// 5 minutes, and a consumer acknowledging nothing never does).
#[test]
fn deliveries_lost_at_the_end_of_the_stream_are_read_again() {
    let (server, _dir, _, run) = paused_on_50_000("1m");
    let url = server.url();
    let stolen = nats_py(&url, &["steal", "EVENTS", "weir-events", "100000", "3"]);
    let taken: u64 = stolen.trim().parse().unwrap();
    let (summary, log) = run.ended();
    assert!(taken > 0, "the other reader took nothing:\n{log}");
    assert!(
        summary.contains(": 50000 events processed"),
        "{summary}\n{log}"
    );
    assert!(log.contains("never reached this reader"), "{log}");
}

/// The stream deleted and created again while the run reads (paused at its start), with more
/// messages than the old one (its sequences go past the reader's): the reader, connecting
/// again, sees the stream's new creation time and the run fails saying so. Before, it went on
/// reading the new stream from the old one's sequence, skipping its first messages, and
/// exited 0.
#[test]
fn a_stream_created_again_while_the_run_reads_fails_the_run() {
    stream_created_again_while_the_run_reads(false);
}

/// The same, with a consumer of the reader's name created on the new stream too (as tools
/// that manage consumers do): the pull requests are served by that consumer, whose deliveries
/// are numbered from 1 again; the reader finds it is not the consumer it connected to (its
/// deliveries went back, or, quiet, its creation time), connects again, and the run fails on
/// the stream's new creation time. Before, the reader took the numbers going back for the
/// server returning to a state it had saved, and read on.
#[test]
fn a_stream_and_its_consumer_created_again_while_the_run_reads_fail_the_run() {
    stream_created_again_while_the_run_reads(true);
}

/// While a run of [`paused_on_50_000`] is paused, the stream is deleted and created again
/// (with a consumer of the reader's name when `with_consumer`) and given 60,000 new
/// messages, in one go: the run must fail on the stream's new creation time.
fn stream_created_again_while_the_run_reads(with_consumer: bool) {
    let (server, dir, _, run) = paused_on_50_000("1m");
    let url = server.url();
    let new = dir.path().join("new.ndjson");
    generate(&new, &["60000", "--seed", "5"]);
    let new = new.to_str().unwrap();
    let mut recreate = vec!["recreate", "EVENTS", "ontology.>", "ontology.e", new];
    if with_consumer {
        recreate.push("weir-events");
    }
    nats_py(&url, &recreate);
    let log = run.failed();
    assert!(
        log.contains("was created at") && log.contains("was deleted and created again"),
        "{log}"
    );
    assert!(
        !with_consumer
            || log.contains("the consumer's deliveries went back")
            || log.contains("is not the one this reader connected to"),
        "{log}"
    );
}
