//! NATS JetStream subject partitions, end to end against a real `nats-server` (started by
//! each test on free ports): a stream whose subject transform `{{partition(4,1)}}` stores
//! every message under `events.<partition>.<datasetName>`, published by an independent client
//! (nats-py, `support/nats_publish.py`), read as four partitions by one `weir run`, or shared
//! by a worker pool (`weir run --worker`) through a kill -9, a restart and graceful stops. The
//! windows equal the reference model's (`tests/model/window_model.py`), fed the events of each
//! partition in the stream's order (each partition has its own watermark): nothing lost,
//! nothing repeated.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/nats.rs"]
mod nats_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_support::Running;
use nats_support::{nats_py, NatsServer};
use weir_tests::{compare, generate, model_script, read_ndjson, Row};

const PARTITIONS: usize = 4;

/// The pipeline: stream `EVENTS` read as [`PARTITIONS`] subject partitions, 1-minute windows
/// per dataset into NDJSON, dead letters to NDJSON; `extra` at the end (a checkpoint).
fn pipeline(d: &Path, url: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"name: nats-pool
sources:
  events:
    nats:
      url: "{url}"
      stream: EVENTS
      partitions: {{ count: {PARTITIONS}, subject: "events.{{partition}}.*" }}
      consumer: weir-events
    partitioned_by: [datasetName]      # the subject transform hashes the datasetName token
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
    sinks: [out]
sinks:
  out: {{ file: {{ path: out/per_dataset.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
{extra}"#
    );
    let p = d.join("pipeline.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// The oracle's rows and summary for `events` as the stream stored them: each partition's
/// events, in order, are one partition of the model.
fn expected(url: &str, events: &Path, d: &Path) -> (Vec<Row>, serde_json::Value) {
    let parts = d.join("parts");
    std::fs::create_dir_all(&parts).unwrap();
    let counts = nats_py(
        url,
        &[
            "split",
            "EVENTS",
            events.to_str().unwrap(),
            "datasetName",
            parts.to_str().unwrap(),
            &PARTITIONS.to_string(),
        ],
    );
    eprintln!("events per partition: {}", counts.trim());
    let out = d.join("expected.ndjson");
    let o = Command::new("python3")
        .arg(model_script())
        .args((0..PARTITIONS).map(|p| parts.join(format!("part-{p}.ndjson"))))
        .args(["--schema", "data-ingestion", "--key", "datasetName"])
        .args(["--size", "1m", "--ooo", "5s", "--agg", "events=count"])
        .args([
            "--agg",
            "records=sum:recordCount",
            "--agg",
            "max_bytes=max:sizeBytes",
        ])
        .arg("-o")
        .arg(&out)
        .output()
        .expect("python3");
    let summary = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "window_model.py: {summary}");
    let summary = serde_json::from_str(summary.trim()).expect("the model's summary");
    (read_ndjson(&out), summary)
}

/// Every row of `out/<stem>*.ndjson` (one file, or one per worker).
fn union_of(out: &Path, stem: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(stem) && name.ends_with(".ndjson") {
            rows.extend(read_ndjson(&e.path()));
        }
    }
    rows
}

/// The windows equal the oracle's, and the dead letters count its bad and late rows once.
fn verify(out: &Path, expected: &[Row], summary: &serde_json::Value, label: &str) {
    let rows = union_of(out, "per_dataset");
    compare(expected, &rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("{label}: the windows differ from the oracle: {e}"));
    let dead = union_of(out, "dead");
    let count = |reason: &str| dead.iter().filter(|d| d["reason"] == reason).count() as u64;
    let (bad, late) = (summary["bad"].as_u64(), summary["late"].as_u64());
    assert!(
        bad > Some(0) && late > Some(0),
        "the data has bad and late rows"
    );
    assert_eq!(
        (Some(count("bad")), Some(count("late"))),
        (bad, late),
        "{label}: dead letters"
    );
}

fn events_file(d: &Path, count: &str, seed: &str) -> PathBuf {
    let events = d.join("events.ndjson");
    generate(
        &events,
        &[
            count,
            "--seed",
            seed,
            "--keys",
            "40",
            "--step-ms",
            "100",
            "--bad-frac",
            "0.003",
            "--late-frac",
            "0.003",
            "--late-ms",
            "180000",
        ],
    );
    events
}

/// One run reads the four partitions (a consumer `weir-events-p<n>` each) to the stream's end:
/// its windows equal the model's with a watermark per partition.
#[test]
fn a_partitioned_stream_read_by_one_run_equals_the_oracle() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let events = events_file(d, "20000", "5");
    nats_py(&url, &["create-partitioned", "EVENTS", "events", "4"]);
    nats_py(
        &url,
        &[
            "publish-keyed",
            events.to_str().unwrap(),
            "events",
            "datasetName",
        ],
    );
    let (rows, summary) = expected(&url, &events, d);
    // a `partitions.count` other than the transform's N: partitions 2 and 3 would be read
    // by no consumer (their messages lost, uncounted); refused with what to do
    let wrong = d.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let text = std::fs::read_to_string(pipeline(&wrong, &url, ""))
        .unwrap()
        .replace("count: 4,", "count: 2,");
    std::fs::write(wrong.join("pipeline.yaml"), text).unwrap();
    let out = kafka_support::weir()
        .args([
            "run",
            wrong.join("pipeline.yaml").to_str().unwrap(),
            "--until-caught-up",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("(4 partitions), but the source's `partitions.count` is 2")
            && log.contains("set `partitions.count: 4`"),
        "{log}"
    );
    let p = pipeline(d, &url, "");
    let started = Instant::now();
    let out = kafka_support::weir()
        .args(["run", p.to_str().unwrap(), "--until-caught-up"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    eprintln!("run: {:?}", started.elapsed());
    assert_eq!(
        log.matches("reading until caught up").count(),
        PARTITIONS,
        "a reader per partition: {log}"
    );
    verify(&d.join("out"), &rows, &summary, "one run");
}

/// Publishes `events` in slices of `per` lines, 700 ms apart, in a thread of its own.
struct SlicePublisher {
    published: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl SlicePublisher {
    fn start(url: &str, events: &Path, total: usize, per: usize) -> Self {
        let published = Arc::new(AtomicUsize::new(0));
        let (url, events, count) = (
            url.to_string(),
            events.display().to_string(),
            published.clone(),
        );
        let thread = std::thread::spawn(move || {
            for first in (0..total).step_by(per) {
                let (first, per) = (first.to_string(), per.to_string());
                nats_py(
                    &url,
                    &[
                        "publish-keyed",
                        &events,
                        "events",
                        "datasetName",
                        &first,
                        &per,
                    ],
                );
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        SlicePublisher { published, thread }
    }

    fn wait_for(&self, n: usize) {
        let started = Instant::now();
        while self.published.load(Ordering::SeqCst) < n {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the publisher is stuck"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Claims of a worker's log that took a partition from `from`'s state.
fn claims_from(log: &[String], from: &str) -> usize {
    let from = format!("worker: \"{from}\"");
    log.iter()
        .filter(|l| l.contains("partition claimed") && l.contains(&from))
        .count()
}

fn claims(log: &[String]) -> usize {
    log.iter()
        .filter(|l| l.contains("partition claimed"))
        .count()
}

/// Two workers share the four partitions while events are published; one is killed (-9)
/// while it holds partitions, the other takes them over after the session timeout (from the
/// dead worker's last complete checkpoint), the killed one starts again and gets its share
/// back by a graceful hand-over; both stop gracefully, and a last worker reads every
/// partition to its end (closing the last windows). The union of the workers' committed
/// files equals the oracle's rows: nothing lost, nothing repeated.
#[test]
fn two_workers_share_the_partitions_through_a_kill_and_a_restart_exactly_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    if std::env::var_os("WEIR_CRASH_KEEP").is_some() {
        eprintln!("keeping {}", d.display());
        std::mem::forget(dir);
    }
    let d = d.as_path();
    let url = server.url();
    let (total, per) = (30_000, 2_000);
    let events = events_file(d, &total.to_string(), "11");
    nats_py(&url, &["create-partitioned", "EVENTS", "events", "4"]);
    let p = pipeline(d, &url, "checkpoint: { dir: state, interval: 1s }\n");
    let publisher = SlicePublisher::start(&url, &events, total, per);

    let a = Running::start(&p, &["--worker", "a"]);
    let b = Running::start(&p, &["--worker", "b"]);
    for (w, name) in [(&a, "a"), (&b, "b")] {
        w.wait_for(&format!("partitions for {name}"), |r| {
            claims(&r.lines()) > 0
        });
    }
    publisher.wait_for(5);

    // b dies: a takes its partitions over from b's last complete checkpoint
    let before = claims_from(&a.lines(), "b");
    let killed = Instant::now();
    b.kill();
    let started = Instant::now();
    while claims_from(&a.lines(), "b") == before {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a never took b's partitions over:\n{}",
            a.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pause = killed.elapsed();
    eprintln!(
        "take-over pause: {:.1} s from b's death to a claiming its partitions",
        pause.as_secs_f64()
    );
    assert!(pause < Duration::from_secs(15), "take-over pause {pause:?}");

    // b starts again with the same id: a hands it its share back
    publisher.wait_for(9);
    let b = Running::start(&p, &["--worker", "b"]);
    b.wait_for("b's partitions again", |r| claims_from(&r.lines(), "a") > 0);

    publisher.thread.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    b.interrupt();
    a.interrupt();
    // a last worker reads every partition to its end, which closes the last windows
    let e = Running::start(&p, &["--worker", "e", "--until-caught-up"]);
    let e_log = e.wait_within(Duration::from_secs(120));
    assert!(claims(&e_log) >= PARTITIONS, "{}", e_log.join("\n"));

    let (rows, summary) = expected(&url, &events, d);
    verify(&d.join("out"), &rows, &summary, "the pool");
    let outputs: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for w in ["a", "b", "e"] {
        assert!(
            outputs.contains(&format!("per_dataset.{w}.ndjson")),
            "{outputs:?}"
        );
    }
}

/// 8,000 events (`seed`) published to a new partitioned stream at `url`, and the pipeline
/// reading it with checkpoints every 500 ms.
fn published(d: &Path, url: &str, seed: &str) -> (PathBuf, PathBuf) {
    let total = 8_000;
    let events = events_file(d, &total.to_string(), seed);
    nats_py(url, &["create-partitioned", "EVENTS", "events", "4"]);
    SlicePublisher::start(url, &events, total, total)
        .thread
        .join()
        .unwrap();
    let p = pipeline(d, url, "checkpoint: { dir: state, interval: 500ms }\n");
    (events, p)
}

/// A worker killed while it holds every partition, and started again before its session
/// expired while a second worker joined: the partitions the assignment now gives the second
/// one are held by the first (its earlier process's claims, never released). The first takes
/// them back and hands them over with a checkpoint, so that both read to the end and the
/// union of their files equals the oracle's. (The second waited for their release for as
/// long as the first heartbeated: for ever.)
#[test]
fn a_worker_started_again_hands_over_what_its_earlier_process_held() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let (events, p) = published(d, &url, "17");
    let a = Running::start(&p, &["--worker", "a"]);
    a.wait_for("a's four partitions and a checkpoint", |r| {
        let lines = r.lines();
        claims(&lines) >= PARTITIONS && lines.iter().any(|l| l.contains("checkpoint complete"))
    });
    a.kill();
    // within a's session: b joins, then a comes back
    let b = Running::start(&p, &["--worker", "b", "--until-caught-up"]);
    // (b heartbeats once its job starts: a's first look at the assignment then counts it)
    b.wait_for("b's first job", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("nats: this worker reads its partitions"))
    });
    let a = Running::start(&p, &["--worker", "a", "--until-caught-up"]);
    let limit = Duration::from_secs(120);
    let (a_end, b_end) = (a.end_within(limit), b.end_within(limit));
    if [&a_end, &b_end]
        .iter()
        .any(|(status, _)| !status.is_some_and(|s| s.success()))
    {
        panic!(
            "a: {:?}, b: {:?} (None: killed after {limit:?})\n--- a's log:\n{}\n--- b's log:\n{}",
            a_end.0,
            b_end.0,
            a_end.1.join("\n"),
            b_end.1.join("\n")
        );
    }
    assert!(
        a_end
            .1
            .iter()
            .any(|l| l.contains("taking them back to hand them over")),
        "a did not find its earlier process's partitions:\n{}",
        a_end.1.join("\n")
    );
    let (rows, summary) = expected(&url, &events, d);
    verify(&d.join("out"), &rows, &summary, "the pool");
}

/// Reading until caught up, a worker whose own partitions are read (here: none yet) waits for
/// the partitions of the others to be finished: a worker killed while it holds every
/// partition leaves them to the survivor after its session times out, and the survivor ends
/// only once it read and flushed them. (It ended at once, exit 0, with none of their rows.)
#[test]
fn reading_until_caught_up_a_worker_waits_for_a_killed_worker_s_partitions() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let (events, p) = published(d, &url, "19");
    // b holds every partition and reads them slowly (2 s more per chunk)
    let b = Running::start_with(
        &p,
        &["--worker", "b", "--until-caught-up"],
        &[("WEIR_FAILPOINT_PAUSE", "worker_chunk:2000")],
    );
    b.wait_for("b's four partitions and a checkpoint", |r| {
        let lines = r.lines();
        claims(&lines) >= PARTITIONS && lines.iter().any(|l| l.contains("checkpoint complete"))
    });
    let a = Running::start(&p, &["--worker", "a", "--until-caught-up"]);
    a.wait_for("a looking at the assignment", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("nats: this worker reads its partitions"))
    });
    b.kill();
    let (status, log) = a.end_within(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        log.join("\n")
    );
    assert!(
        claims(&log) >= PARTITIONS,
        "a did not take b's partitions over:\n{}",
        log.join("\n")
    );
    let (rows, summary) = expected(&url, &events, d);
    verify(&d.join("out"), &rows, &summary, "the pool");
}

/// Events in windows and dead letters of `out`'s files: every event read is counted once in
/// a window or dead-lettered (bad, late).
fn events_counted(out: &Path) -> u64 {
    let windows: u64 = union_of(out, "per_dataset")
        .iter()
        .map(|r| r["events"].as_u64().unwrap_or(0))
        .sum();
    windows + union_of(out, "dead").len() as u64
}

/// Reading until caught up, a partition finished by an earlier run is not finished for a run
/// whose end is further: its worker reads it again. Run 1 (worker c) reads the first half of
/// the events and finishes every partition; the second half is published; in run 2, worker b
/// heartbeats (so the assignment gives it half the partitions) but is killed before it claims
/// them, and worker a reads its own half. a waits for b's partitions, takes them over once
/// b's session expires, and ends with every event counted. (a ended at once, exit 0, without
/// the second half of b's partitions: they read as finished by run 1.)
#[test]
fn reading_until_caught_up_a_partition_finished_by_an_earlier_run_is_read_to_this_run_s_end() {
    finished_by_an_earlier_run_then_read_to_this_run_s_end("c");
}

/// The same, run 1 by worker b itself: in run 2, a new process of b announces itself (a live
/// worker b) but dies before it claims a thing. a does not take b's partitions as finished by
/// that live b: the process that finished them is gone. (a ended at once, exit 0, without the
/// second half of b's partitions.)
#[test]
fn reading_until_caught_up_a_new_process_of_the_worker_that_finished_a_partition_does_not_vouch_for_it(
) {
    finished_by_an_earlier_run_then_read_to_this_run_s_end("b");
}

/// Run 1 by worker `first` (see the two tests above).
fn finished_by_an_earlier_run_then_read_to_this_run_s_end(first: &str) {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let url = server.url();
    let (total, half) = (8_000, 4_000);
    let events = events_file(d, &total.to_string(), "29");
    nats_py(&url, &["create-partitioned", "EVENTS", "events", "4"]);
    let publish = |first: usize| {
        let (first, per) = (first.to_string(), half.to_string());
        let events = events.to_str().unwrap();
        nats_py(
            &url,
            &[
                "publish-keyed",
                events,
                "events",
                "datasetName",
                &first,
                &per,
            ],
        );
    };
    publish(0);
    let p = pipeline(d, &url, "checkpoint: { dir: state, interval: 500ms }\n");
    let c = Running::start(&p, &["--worker", first, "--until-caught-up"]);
    let (status, log) = c.end_within(Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));
    let out = d.join("out");
    assert_eq!(
        events_counted(&out),
        half as u64,
        "run 1 counts the first half"
    );
    publish(half);
    // b heartbeats, then stops at its first look at the assignment
    let b = Running::start_with(
        &p,
        &["--worker", "b", "--until-caught-up"],
        &[("WEIR_FAILPOINT_PAUSE", "nats_pool_rebalance:120000:0:1")],
    );
    b.wait_for("b at its first look at the assignment", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("failpoint nats_pool_rebalance"))
    });
    let a = Running::start(&p, &["--worker", "a", "--until-caught-up"]);
    // (before: a ended without waiting; the count below tells)
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && !a
            .lines()
            .iter()
            .any(|l| l.contains("waiting for the other workers' partitions"))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    b.kill();
    let (status, log) = a.end_within(Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));
    assert_eq!(
        events_counted(&out),
        total as u64,
        "run 2 counts the second half:\n{}",
        log.join("\n")
    );
}
