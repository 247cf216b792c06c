//! Helpers of the Kafka tests: the broker, the independent Python client, unique names.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use weir_tests::{golden_dir, read_ndjson, Row};

use super::crash::venv_python as python;

/// The brokers of the tests (`KAFKA_BROKERS`, default 127.0.0.1:9092); panics when none
/// answers.
pub fn brokers() -> String {
    let b = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = b.split(',').next().unwrap_or_default().to_string();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "no Kafka broker at {b}: start one with scripts/kafka.sh start (or set KAFKA_BROKERS)"
    );
    b
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs tests/kafka/kafka_tool.py; panics with its output when it fails.
pub fn tool(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/kafka/kafka_tool.py"))
        .args(args)
        .output()
        .expect("run kafka_tool.py");
    assert!(
        out.status.success(),
        "kafka_tool.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test run uses (topics, groups).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The `weir` binary (`WEIR_BIN`, else the one cargo built), logging at info level, or at
/// the levels of `WEIR_TEST_RUST_LOG` (say `info,librdkafka=debug` with a pipeline property
/// `debug: cgrp` to see a consumer group's protocol).
pub fn weir() -> Command {
    let bin = std::env::var_os("WEIR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_weir").into());
    let mut c = Command::new(bin);
    let levels = std::env::var("WEIR_TEST_RUST_LOG");
    c.env(
        "RUST_LOG",
        levels.as_deref().unwrap_or("info,librdkafka=warn"),
    );
    c
}

/// Reads a topic with the independent client; returns (keys, values).
pub fn read_topic(brokers: &str, topic: &str, dir: &Path) -> (Vec<Option<String>>, Vec<Row>) {
    let out = dir.join(format!("{topic}.ndjson"));
    tool(&["consume", brokers, topic, out.to_str().unwrap(), "--keys"]);
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for row in read_ndjson(&out) {
        keys.push(row.get("key").and_then(|k| k.as_str()).map(String::from));
        let v = row.get("value").cloned().unwrap();
        values.push(serde_json::from_value(v).unwrap());
    }
    (keys, values)
}

/// A `weir run` in the background whose log lines are collected.
pub struct Running {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(pipeline: &Path, extra: &[&str]) -> Running {
        Self::start_with(pipeline, extra, &[])
    }

    /// Starts it with environment variables set.
    pub fn start_with(pipeline: &Path, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = weir()
            .args(["run", pipeline.to_str().unwrap()])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Running { child, log }
    }

    pub fn assignments(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("partitions assigned"))
            .count()
    }

    pub fn wait_for(&self, what: &str, ok: impl Fn(&Running) -> bool) {
        let started = Instant::now();
        while !ok(self) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it like Ctrl-C and waits for a clean exit.
    pub fn interrupt(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "exit {status}; log:\n{}", log.join("\n"));
        log
    }

    /// Its log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Kills it with SIGKILL (no final checkpoint, no goodbye to the group).
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines()
    }

    /// Waits for it to end, at most `limit` (then kills it): its exit status (`None` when
    /// killed) and its log.
    pub fn end_within(mut self, limit: Duration) -> (Option<ExitStatus>, Vec<String>) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if started.elapsed() >= limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // the reader thread takes the last lines
        std::thread::sleep(Duration::from_millis(200));
        (status, self.lines())
    }

    /// Waits for a clean exit, at most `limit`.
    pub fn wait_within(mut self, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < limit,
                "did not finish within {limit:?}; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200));
        let log = self.lines();
        assert!(status.success(), "exit {status}; log:\n{}", log.join("\n"));
        log
    }

    pub fn wait(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "exit {status}; log:\n{}", log.join("\n"));
        log
    }
}

impl Drop for Running {
    /// A test that fails leaves no process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The events `weir run` says it processed (`run finished ...: N events processed`), counted
/// since the pipeline's first run (a restore continues the counts); of a pool worker, which
/// prints a summary per job, its last job's.
pub fn events_processed(stdout: &str) -> u64 {
    stdout
        .lines()
        .rev()
        .find_map(|l| {
            let (_, rest) = l.split_once("run finished")?;
            let (_, rest) = rest.split_once(": ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"))
}

/// The aggregates of the golden cases' per-dataset windows (pipeline YAML lines).
pub const AGGREGATES: &str = r#"
      events: count(*)
      records: sum(recordCount)
      bytes: sum(sizeBytes)
      max_bytes: max(sizeBytes)
      failures: count(*) FILTER (WHERE status = 'FAILURE')
      min_records: min(recordCount)
      avg_bytes: avg(sizeBytes)"#;

/// The golden case `case`'s summary of window `window` (bad and late counts).
pub fn summary(case: &str, window: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(
        golden_dir()
            .join(case)
            .join(format!("summary_{window}.json")),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Writes `yaml` as `dir/pipeline.yaml` and runs it to the end of the topics
/// (`--until-caught-up` and `extra` arguments); panics with the log when it fails.
pub fn run_caught_up(dir: &Path, yaml: &str, extra: &[&str]) {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, yaml).unwrap();
    let out = weir()
        .args(["run", pipeline.to_str().unwrap(), "--until-caught-up"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Produces `lines` (NDJSON events) to `topic`, through a file in `dir`.
pub fn produce_lines(dir: &Path, brokers: &str, topic: &str, lines: &[&str]) {
    let part = dir.join("part.ndjson");
    std::fs::write(&part, lines.join("\n") + "\n").unwrap();
    tool(&["produce", brokers, topic, part.to_str().unwrap()]);
}

/// Source `events`: data-ingestion JSON from `topic` in group `group` (pipeline YAML lines).
pub fn events_source(brokers: &str, topic: &str, group: &str) -> String {
    format!(
        "sources:\n  events:\n    kafka: {{ brokers: \"{brokers}\", topic: {topic}, group_id: {group} }}\n    format: json\n    schema: data-ingestion\n    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}\n"
    )
}
