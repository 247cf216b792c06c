//! Operations, checked as an operator would: `/metrics` scraped during and after a run and
//! parsed by a real Prometheus text-format parser (`prometheus_client`) with counters equal
//! to the oracle's figures; `/health` and `/ready`; a file sink whose disk is full for 60 s
//! (the run survives, retries on the configured schedule, stops reading, stays under a
//! memory bound, and its outputs then equal the oracle); and secrets given through `${ENV}`
//! that never appear in `weir validate`'s output or in logs.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/sql.rs"]
mod sql_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crash::venv_python;
use serde_json::Value;
use sql_support::{free_port, http, Running};
use weir_tests::{compare, generate, oracle_per_dataset, read_ndjson, Row};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Generated data-ingestion events with bad and late lines, and the oracle's windows.
struct Case {
    dir: tempfile::TempDir,
    input: PathBuf,
    expected: Vec<Row>,
    /// The oracle's figures: lines, bad, late, windows.
    summary: Value,
}

impl Case {
    fn new(events: u64, keys: u64) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.ndjson");
        generate(
            &input,
            &[
                &events.to_string(),
                "--seed",
                "8",
                "--keys",
                &keys.to_string(),
                "--step-ms",
                "15",
                "--bad-frac",
                "0.01",
                "--late-frac",
                "0.004",
                "--late-ms",
                "240000",
            ],
        );
        let (expected, summary) = oracle_per_dataset(
            &input,
            &["events=count", "records=sum:recordCount"],
            &dir.path().join("expected.ndjson"),
        );
        Case {
            expected,
            dir,
            input,
            summary,
        }
    }

    fn figure(&self, name: &str) -> f64 {
        self.summary[name].as_f64().unwrap()
    }

    /// Writes a pipeline reading the input into window `per_dataset` → sink `rows`.
    fn pipeline(&self, out: &Path, extra: &str) -> PathBuf {
        let text = format!(
            r#"name: ops
sources:
  events:
    file: {{ path: "{input}" }}
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
    sinks: [rows]
sinks:
  rows:
    file: {{ path: "{out}/per_dataset.ndjson" }}
{extra}"#,
            input = self.input.display(),
            out = out.display(),
        );
        let path = self.dir.path().join("pipeline.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// tests/ops/parse_metrics.py on an exposition.
fn parse_metrics(body: &[u8], openmetrics: bool) -> std::process::Output {
    let mut child = Command::new(venv_python())
        .arg(repo().join("tests/ops/parse_metrics.py"))
        .args(openmetrics.then_some("--openmetrics"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait_with_output().unwrap()
}

/// Samples of a `/metrics` text, parsed by `prometheus_client` (tests/ops/parse_metrics.py).
struct Samples(Vec<Value>);

impl Samples {
    fn scrape(port: u16) -> Samples {
        let a = http(port, "GET", "/metrics", &[], b"");
        assert_eq!(a.status, 200);
        Samples::parse(&a.body, false)
    }

    /// The samples of a text exposition, or of an OpenMetrics one; fails on a malformed one
    /// (also when a family's samples are not together).
    fn parse(body: &[u8], openmetrics: bool) -> Samples {
        let out = parse_metrics(body, openmetrics);
        assert!(
            out.status.success(),
            "prometheus_client could not parse /metrics (openmetrics: {openmetrics}): {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(body)
        );
        Samples(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
        )
    }

    /// The sum of a metric's samples whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| labels.iter().all(|(k, v)| s["labels"][k] == *v))
            .map(|s| s["value"].as_f64().unwrap())
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s["name"] == name)
    }
}

#[test]
fn metrics_scraped_during_and_after_a_run_equal_the_oracle_figures() {
    let case = Case::new(300_000, 300);
    let out = case.dir.path().join("out");
    let port = free_port();
    let pipeline = case.pipeline(
        &out,
        &format!(
            "dead_letter: {{ file: {{ path: \"{}/dead_letter.ndjson\" }} }}\n\
             checkpoint: {{ dir: \"{}/state\", interval: 300ms }}\n\
             serve: {{ http: \"127.0.0.1:{port}\", refresh: 100ms }}\n",
            out.display(),
            case.dir.path().display()
        ),
    );
    let mut run = Running::start(WEIR, &pipeline, &["--keep-serving"]);
    run.wait_http(port);
    assert_eq!(http(port, "GET", "/health", &[], b"").status, 200);

    // during the run: every scrape parses, counters never go down
    let mut scrapes = 0;
    let mut last_in = 0.0;
    let mut was_ready = false;
    let started = Instant::now();
    loop {
        let s = Samples::scrape(port);
        scrapes += 1;
        let events_in = s.sum("weir_events_in_total", &[]);
        assert!(events_in >= last_in, "weir_events_in_total went down");
        last_in = events_in;
        was_ready |= http(port, "GET", "/ready", &[], b"").status == 200;
        let done =
            sql_support::sql_json(port, "SELECT bool_and(finished) AS done FROM weir_status");
        if done.first().and_then(|r| r["done"].as_bool()) == Some(true) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not finish"
        );
        std::thread::sleep(Duration::from_millis(150));
    }

    run.wait_finished(port);
    let (lines, bad, late, windows) = (
        case.figure("lines"),
        case.figure("bad"),
        case.figure("late"),
        case.figure("windows"),
    );
    // after the run: the counters are the run's. `finished` says the input is done; the
    // sink's last commit observes the latency of its rows a moment later
    let rows = [("sink", "rows")];
    let settled = Instant::now();
    let mut s = Samples::scrape(port);
    while s.sum("weir_end_to_end_latency_seconds_count", &rows) < windows
        && settled.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
        s = Samples::scrape(port);
    }
    let events = [("source", "events")];
    assert_eq!(s.sum("weir_events_in_total", &events), lines);
    assert_eq!(s.sum("weir_bad_records_total", &events), bad);
    assert_eq!(s.sum("weir_events_decoded_total", &events), lines - bad);
    assert_eq!(
        s.sum("weir_bytes_in_total", &events),
        std::fs::metadata(&case.input).unwrap().len() as f64
    );
    assert_eq!(
        s.sum("weir_late_records_total", &[("window", "per_dataset")]),
        late
    );
    assert_eq!(s.sum("weir_dead_letters_total", &[]), bad + late);
    assert_eq!(
        s.sum("weir_windows_emitted_total", &[("window", "per_dataset")]),
        windows
    );
    assert_eq!(s.sum("weir_rows_written_total", &rows), windows);
    // every row's latency is observed once, when its checkpoint committed it
    assert_eq!(
        s.sum("weir_end_to_end_latency_seconds_count", &rows),
        windows
    );
    assert_eq!(
        s.sum(
            "weir_end_to_end_latency_seconds_bucket",
            &[("sink", "rows"), ("le", "+Inf")]
        ),
        windows
    );
    assert_eq!(s.sum("weir_sink_errors_total", &[]), 0.0);
    assert_eq!(s.sum("weir_sink_circuit_state", &[]), 0.0);
    assert!(s.sum("weir_checkpoints_completed_total", &[]) >= 1.0);
    assert!(s.has("weir_checkpoint_age_seconds"));
    assert!(s.sum("weir_state_rows", &[("operator", "per_dataset")]) > 0.0);
    assert!(s.sum("weir_query_duration_seconds_count", &[]) >= scrapes as f64);
    // the rows themselves are the oracle's
    compare(
        &case.expected,
        &read_ndjson(&out.join("per_dataset.ndjson")),
        &["datasetName"],
    )
    .unwrap();
    assert!(was_ready || http(port, "GET", "/ready", &[], b"").status == 200);
    let ready = http(port, "GET", "/ready", &[], b"");
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.body)
    );

    // every metric the alert rules and the dashboard in deploy/ use is exported (families
    // are declared even when, like consumer lag on a file source, they have no sample)
    let text = String::from_utf8_lossy(&http(port, "GET", "/metrics", &[], b"").body).into_owned();
    let families: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in deploy_metric_names() {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        assert!(
            families.contains(name.as_str()) || families.contains(base),
            "deploy/ uses {name}, which /metrics does not export"
        );
    }
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// `weir_*` names used by the alert rules and the Grafana dashboard.
fn deploy_metric_names() -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for f in ["deploy/prometheus/alerts.yaml", "deploy/grafana/weir.json"] {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("weir_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            // recording-rule style names and the job label are not metrics
            if !name.ends_with('_') && name != "weir_pipeline" {
                names.insert(name.to_string());
            }
            rest = &tail[end..];
        }
    }
    assert!(!names.is_empty());
    names.into_iter().collect()
}

/// A pipeline whose metric families have many label sets: two sources, three windows and two
/// views (state rows and bytes per operator), two sinks and the dead-letter output.
fn many_operators(case: &Case, out: &Path, port: u16) -> PathBuf {
    let text = format!(
        r#"name: ops-many
sources:
  events:
    file: {{ path: "{input}" }}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
  replayed:
    file: {{ path: "{input}" }}
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
  per_source:
    from: events
    key: [source]
    tumbling: 5m
    aggregates: {{ records: sum(recordCount) }}
    sinks: [rows]
  per_format:
    from: replayed
    key: [format]
    tumbling: 1m
    aggregates: {{ events: count(*) }}
    sinks: [other]
views:
  datasets:
    from: events
    key: [datasetName]
    aggregates: {{ events: count(*) }}
    sinks: [other]
  statuses:
    from: replayed
    key: [status]
    aggregates: {{ bytes: sum(sizeBytes) }}
    sinks: [other]
sinks:
  rows: {{ file: {{ path: "{out}/rows.ndjson" }} }}
  other: {{ file: {{ path: "{out}/other.ndjson" }} }}
dead_letter: {{ file: {{ path: "{out}/dead_letter.ndjson" }} }}
checkpoint: {{ dir: "{out}/state", interval: 300ms }}
serve: {{ http: "127.0.0.1:{port}", refresh: 100ms }}
"#,
        input = case.input.display(),
        out = out.display(),
    );
    let path = case.dir.path().join("many.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `GET /metrics` with an `Accept` header (or none): the `Content-Type` and the body.
fn scrape_as(port: u16, accept: Option<&str>) -> (String, Vec<u8>) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // axum sets the length of a rendered body: no chunked encoding
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .expect("a Content-Type");
    (content_type, raw[split + 4..].to_vec())
}

/// Findings of promtool's lint accepted: the name predates the check, and renaming the
/// metric would break the queries that use it.
const PROMTOOL_ACCEPTED: &[&str] =
    &["weir_watermark_milliseconds use base unit \"seconds\" instead of \"milliseconds\""];

/// `promtool check metrics` (the Debian package `prometheus`) on a text exposition: it parses
/// it (exit 1 on an error) and lints it (exit 3 on findings, which fail unless accepted).
fn promtool_check(text: &[u8]) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not be started ({e}): install the Debian package `prometheus` \
                 (apt-get install prometheus; .ci/run installs it)"
            )
        });
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = out.status.code() == Some(3)
        && said
            .lines()
            .all(|l| l.trim().is_empty() || PROMTOOL_ACCEPTED.contains(&l.trim()));
    assert!(
        out.status.success() || accepted,
        "promtool check metrics failed ({}): {said}\n{}",
        out.status,
        String::from_utf8_lossy(text)
    );
}

/// The Accept header Prometheus scrapes with.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Both formats of one moment's `/metrics`, each checked by its own parser (and the text
/// format by promtool): the text samples and the OpenMetrics samples.
fn scrape_both(port: u16) -> (Samples, Samples) {
    let (content_type, text) = scrape_as(port, None);
    promtool_check(&text);
    let text_samples = Samples::parse(&text, false);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let (content_type, open) = scrape_as(port, Some(PROMETHEUS_ACCEPT));
    let open_samples = Samples::parse(&open, true);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.ends_with(b"\n# EOF\n"));
    (text_samples, open_samples)
}

#[test]
fn metrics_in_both_formats_pass_promtool_and_the_openmetrics_parser() {
    let case = Case::new(20_000, 50);
    let out = case.dir.path().join("out");
    let port = free_port();
    let pipeline = many_operators(&case, &out, port);
    let mut run = Running::start(WEIR, &pipeline, &["--keep-serving"]);
    run.wait_http(port);
    // while the run reads and once it has read everything
    for _ in 0..3 {
        scrape_both(port);
    }
    run.wait_finished(port);
    let (text, open) = scrape_both(port);

    // the families with a sample per operator, window, source and sink, in both formats
    let operators = [
        "per_dataset",
        "per_source",
        "per_format",
        "datasets",
        "statuses",
    ];
    for s in [&text, &open] {
        for op in operators {
            assert!(s.sum("weir_state_rows", &[("operator", op)]) > 0.0, "{op}");
            assert!(s.sum("weir_state_bytes", &[("operator", op)]) > 0.0, "{op}");
        }
        for w in ["per_dataset", "per_source", "per_format"] {
            assert!(
                s.sum("weir_windows_emitted_total", &[("window", w)]) > 0.0,
                "{w}"
            );
        }
        for source in ["events", "replayed"] {
            assert_eq!(
                s.sum("weir_events_in_total", &[("source", source)]),
                case.figure("lines")
            );
        }
        assert!(!s.has("weir_events_in_total_total"));
        let rows = s.sum("weir_rows_written_total", &[("sink", "rows")]);
        assert_eq!(
            s.sum("weir_end_to_end_latency_seconds_count", &[("sink", "rows")]),
            rows
        );
    }
    // the same series in both (values of ages and query counters move between scrapes;
    // bucket bounds are written 1 in the text format, 1.0 in OpenMetrics)
    let series = |s: &Samples| {
        let mut v: Vec<String> =
            s.0.iter()
                .map(|x| {
                    let mut labels = x["labels"].clone();
                    if let Some(le) = labels["le"].as_str() {
                        let bound: f64 = le.parse().unwrap();
                        labels["le"] = bound.to_string().into();
                    }
                    format!("{} {labels}", x["name"])
                })
                .collect();
        v.sort();
        v
    };
    assert_eq!(series(&text), series(&open));
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// The check above fails on what weir wrote before prometheus-client: the samples of
/// `weir_state_rows` and `weir_state_bytes` in turn (a run's output, shortened), which
/// promtool 2.42 and the text parser alone accept.
#[test]
fn the_metrics_parsers_reject_the_samples_of_a_family_apart() {
    let interleaved = "\
# HELP weir_state_rows Rows held by each window (open and retained) and view, at the newest snapshot.
# TYPE weir_state_rows gauge
# HELP weir_state_bytes Memory of those rows (Arrow buffers), at the newest snapshot.
# TYPE weir_state_bytes gauge
weir_state_rows{pipeline=\"ops-many\",operator=\"per_dataset\"} 300
weir_state_bytes{pipeline=\"ops-many\",operator=\"per_dataset\"} 15342
weir_state_rows{pipeline=\"ops-many\",operator=\"datasets\"} 50
weir_state_bytes{pipeline=\"ops-many\",operator=\"datasets\"} 1470
";
    for (body, openmetrics) in [
        (interleaved.to_string(), false),
        (format!("{interleaved}# EOF\n"), true),
    ] {
        let out = parse_metrics(body.as_bytes(), openmetrics);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "accepted (openmetrics: {openmetrics})"
        );
        assert!(err.contains("weir_state_rows"), "{err}");
    }
}

/// A folder whose file system is full until [`FullDisk::free`]: a small tmpfs filled with a
/// ballast file (needs root to mount); without root, a folder made read-only instead.
struct FullDisk {
    dir: PathBuf,
    mounted: bool,
}

impl FullDisk {
    /// `dir` (created) with `free_bytes` left.
    fn new(dir: &Path, free_bytes: u64) -> FullDisk {
        std::fs::create_dir_all(dir).unwrap();
        let size = 32u64 << 20;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let disk = FullDisk {
            dir: dir.to_path_buf(),
            mounted,
        };
        if mounted {
            let ballast = std::fs::File::create(dir.join("ballast")).unwrap();
            ballast.set_len(0).unwrap();
            let mut w = std::io::BufWriter::new(ballast);
            let chunk = vec![7u8; 1 << 16];
            let mut left = size - free_bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if w.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
            let _ = w.flush();
        } else {
            assert!(
                !is_root(),
                "the outage test mounts a small tmpfs; as root without CAP_SYS_ADMIN it cannot \
                 (and a read-only folder does not stop root): run it where `mount -t tmpfs` works"
            );
        }
        disk
    }

    /// Without a tmpfs: makes the folder read-only now (root would ignore it).
    fn break_now(&self) {
        if !self.mounted {
            set_mode(&self.dir, 0o555);
        }
    }

    /// Frees the space (or makes the folder writable again).
    fn free(&self) {
        if self.mounted {
            std::fs::remove_file(self.dir.join("ballast")).unwrap();
        } else {
            set_mode(&self.dir, 0o755);
        }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        } else {
            set_mode(&self.dir, 0o755);
        }
    }
}

fn set_mode(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The resident memory of a process, in bytes.
fn rss(child: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// JSON log events of an output, from a `--log-format json` log.
fn events_of(log: &str, output: &str) -> Vec<(chrono_ms::Ms, Value)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["fields"]["output"] == output)
        .map(|e| (chrono_ms::parse(e["timestamp"].as_str().unwrap()), e))
        .collect()
}

/// RFC 3339 timestamps of the JSON logs as milliseconds.
mod chrono_ms {
    pub type Ms = i64;
    /// `2026-11-26T06:40:00.123456Z` → ms since midnight (the test runs well within a day
    /// boundary's reach: differences are what is used).
    pub fn parse(ts: &str) -> Ms {
        let t = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
        let mut parts = t.split(':');
        let h: i64 = parts.next().unwrap().parse().unwrap();
        let m: i64 = parts.next().unwrap().parse().unwrap();
        let s: f64 = parts.next().unwrap().parse().unwrap();
        (h * 3600 + m * 60) * 1000 + (s * 1000.0) as i64
    }
}

#[test]
fn a_full_disk_for_sixty_seconds_is_retried_with_backoff_and_nothing_is_lost() {
    let case = Case::new(300_000, 400);
    let out = case.dir.path().join("out");
    let disk = FullDisk::new(&out, 256 << 10);
    let port = free_port();
    let pipeline = case.pipeline(
        &out,
        &format!(
            "    retry: {{ initial_backoff: 1s, max_backoff: 16s, jitter: 0.1, circuit_breaker: {{ failures: 6, open_for: 20s }} }}\n\
             dead_letter: {{ file: {{ path: \"{}/dead_letter.ndjson\" }} }}\n\
             checkpoint: {{ dir: \"{}/state\", interval: 500ms }}\n\
             serve: {{ http: \"127.0.0.1:{port}\", refresh: 200ms }}\n",
            out.display(),
            case.dir.path().display()
        ),
    );
    let log_path = case.dir.path().join("run.log");
    let mut child = Command::new(WEIR)
        .args(["--log-format", "json", "run"])
        .arg(&pipeline)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    disk.break_now();

    // wait for the first failure
    let started = Instant::now();
    while !log().contains("\"message\":\"retrying\"") {
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "the run ended before the sink failed:\n{}",
            log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sink never failed:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed_at = Instant::now();

    // 60 s of outage: the run stays up, stops reading, memory stays bounded
    let mut peak_rss = 0;
    let mut saw_open = false;
    let mut saw_unready = false;
    let mut events_in_during = Vec::new();
    let mut live_rows = Vec::new();
    while failed_at.elapsed() < Duration::from_secs(60) {
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "the run died during the outage:\n{}",
            log()
        );
        peak_rss = peak_rss.max(rss(guard.0).unwrap_or(0));
        let s = Samples::scrape(port);
        saw_open |= s.sum("weir_sink_circuit_state", &[("sink", "rows")]) == 1.0;
        events_in_during.push(s.sum("weir_events_in_total", &[]));
        let ready = http(port, "GET", "/ready", &[], b"");
        if ready.status == 503 {
            // the sink fails from its first rows: that is the reason, not the job's start
            // (live snapshots do not wait on the sink)
            let body = String::from_utf8_lossy(&ready.body);
            saw_unready = true;
            assert!(body.contains("sink `rows`: circuit open"), "{body}");
            assert!(!body.contains("the job is starting"), "{body}");
        }
        // the live window answers meanwhile, with what was read before the reading stopped
        let n = sql_support::sql_json(port, "SELECT count(*) AS n FROM per_dataset");
        live_rows.push(n[0]["n"].as_i64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(
        live_rows.last() > Some(&0),
        "the live window had no rows during the outage: {live_rows:?}"
    );
    // its windows emitted before the outage stopped the reading are the oracle's
    let finals = sql_support::sql_json(
        port,
        "SELECT datasetName, window_start, CAST(window_start AS BIGINT) AS start_ms, window_end, \
         events, records FROM per_dataset WHERE is_final",
    );
    let starts: std::collections::HashSet<i64> = finals
        .iter()
        .filter_map(|r| r["start_ms"].as_i64())
        .collect();
    assert!(
        !starts.is_empty(),
        "no emitted window is queryable during the outage"
    );
    let expected_so_far: Vec<Row> = case
        .expected
        .iter()
        .filter(|r| {
            r["window_start"]
                .as_i64()
                .is_some_and(|s| starts.contains(&s))
        })
        .cloned()
        .collect();
    compare(&expected_so_far, &finals, &["datasetName"]).unwrap_or_else(|e| {
        panic!("the emitted windows SQL shows during the outage differ from the oracle: {e}")
    });
    let during = Samples::scrape(port);
    assert!(during.sum("weir_sink_retries_total", &[("sink", "rows")]) >= 5.0);
    assert!(during.sum("weir_sink_errors_total", &[("sink", "rows")]) >= 5.0);
    assert!(saw_open, "the circuit of sink `rows` never showed open");
    assert!(
        saw_unready,
        "/ready never said 503 while the circuit was open"
    );
    // backpressure: once the bounded queues behind the sink were full (they hold partial
    // windows, not events), reading stopped short of the input for the rest of the outage
    let half = events_in_during[events_in_during.len() / 2];
    let last = *events_in_during.last().unwrap();
    assert!(
        last < case.figure("lines"),
        "the whole input was read during the outage ({last} events)"
    );
    assert_eq!(
        half, last,
        "reading went on in the second half of the outage: {events_in_during:?}"
    );
    const RSS_BOUND: u64 = 256 << 20;
    eprintln!(
        "outage: read {last} of {} events, peak RSS {} MiB",
        case.figure("lines"),
        peak_rss >> 20
    );
    assert!(
        peak_rss < RSS_BOUND,
        "peak RSS {} MiB during the outage is over the bound of {} MiB",
        peak_rss >> 20,
        RSS_BOUND >> 20
    );

    // the disk comes back: the run finishes with every row once
    disk.free();
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(240),
            "the run did not finish after the disk came back:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = log();
    assert!(status.success(), "{log}");
    compare(
        &case.expected,
        &read_ndjson(&out.join("per_dataset.ndjson")),
        &["datasetName"],
    )
    .unwrap_or_else(|e| panic!("after the outage the rows differ from the oracle: {e}"));
    let dead = std::fs::read_to_string(out.join("dead_letter.ndjson")).unwrap();
    assert_eq!(
        dead.lines().count() as f64,
        case.figure("bad") + case.figure("late")
    );

    // the schedule: 1 s, 2 s, 4 s, 8 s, 16 s between attempts, then the circuit opens for 20 s
    let events = events_of(&log, "sink `rows`");
    let failures: Vec<&(i64, Value)> = events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e["fields"]["message"].as_str(),
                Some("retrying") | Some("circuit open")
            )
        })
        .collect();
    assert!(failures.len() >= 7, "{failures:?}");
    let nominal = [1000, 2000, 4000, 8000, 16000];
    for (k, want) in nominal.iter().enumerate() {
        let (t0, e0) = failures[k];
        let (t1, _) = failures[k + 1];
        assert_eq!(e0["fields"]["message"], "retrying", "{e0}");
        let waited = e0["fields"]["backoff_ms"].as_i64().unwrap() as f64;
        assert!(
            (*want as f64 * 0.9..=*want as f64 * 1.1).contains(&waited),
            "retry {} waited {waited} ms, not {want} ms ± 10%",
            k + 1
        );
        let gap = t1 - t0;
        assert!(
            gap as f64 >= *want as f64 * 0.9 && (gap as f64) < *want as f64 * 1.1 + 1500.0,
            "attempt {} came {gap} ms after the previous one, not about {want} ms",
            k + 2
        );
    }
    let (t_open, open) = failures[5];
    assert_eq!(open["fields"]["message"], "circuit open", "{open}");
    let (t_probe, _) = failures[6];
    assert!(
        t_probe - t_open >= 19_000,
        "the half-open probe came {} ms after the circuit opened, before its 20 s",
        t_probe - t_open
    );
    assert!(
        events
            .iter()
            .any(|(_, e)| e["fields"]["message"] == "output recovered"),
        "no recovery logged"
    );
    drop(guard);
}

#[test]
fn a_sink_failing_from_its_first_rows_leaves_sql_answering_and_ready_naming_the_sink() {
    // enough input that the readers' gate closes before the end even when the first
    // barrier comes late (on two busy cores, 200,000 lines were all read first)
    let case = Case::new(400_000, 50);
    let out = case.dir.path().join("out");
    // no room at all: the sink's very first rows fail (its dead letters go elsewhere) at
    // the first checkpoint (its first flush), before the first live snapshot; its circuit
    // opens 3 s later
    let disk = FullDisk::new(&out, 0);
    let port = free_port();
    let pipeline = case.pipeline(
        &out,
        &format!(
            "    retry: {{ initial_backoff: 1s, max_backoff: 2s, jitter: 0.1, circuit_breaker: {{ failures: 3, open_for: 2s }} }}\n\
             dead_letter: {{ file: {{ path: \"{dir}/dead_letter.ndjson\" }} }}\n\
             checkpoint: {{ dir: \"{dir}/state\", interval: 100ms }}\n\
             serve: {{ http: \"127.0.0.1:{port}\", refresh: 500ms }}\n",
            dir = case.dir.path().display()
        ),
    );
    let log_path = case.dir.path().join("run.log");
    let mut child = Command::new(WEIR)
        .args(["--log-format", "json", "run"])
        .arg(&pipeline)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    disk.break_now();

    // the circuit opens: /ready says so, naming the sink, and nothing says the job is
    // still starting; SQL on the live window answers with what was read meanwhile
    let started = Instant::now();
    let body = loop {
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "the run ended while its sink failed:\n{}",
            log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/ready never named the sink's open circuit:\n{}",
            log()
        );
        // (not listening yet at first)
        if let Ok(ready) = sql_support::try_http(port, "GET", "/ready", &[], b"") {
            let body = String::from_utf8_lossy(&ready.body).to_string();
            if ready.status == 503 && body.contains("sink `rows`: circuit open") {
                break body;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!body.contains("the job is starting"), "{body}");
    assert_eq!(written_rows(&out), 0, "the sink wrote rows on a full disk");
    let s = Samples::scrape(port);
    assert_eq!(s.sum("weir_sink_circuit_state", &[("sink", "rows")]), 1.0);
    assert!(s.sum("weir_sink_errors_total", &[("sink", "rows")]) >= 3.0);
    // the reading stopped short of the input, and snapshots go on being published
    assert!(s.sum("weir_events_in_total", &[]) < case.figure("lines"));
    std::thread::sleep(Duration::from_millis(1500));
    let later = Samples::scrape(port);
    assert!(
        later.sum("weir_live_snapshot", &[]) > s.sum("weir_live_snapshot", &[])
            && s.sum("weir_live_snapshot", &[]) >= 1.0,
        "no new live snapshot while the sink fails: {} then {}",
        s.sum("weir_live_snapshot", &[]),
        later.sum("weir_live_snapshot", &[])
    );
    assert!(later.sum("weir_live_snapshot_age_seconds", &[]) < 5.0);
    let rows = sql_support::sql_json(
        port,
        "SELECT count(*) AS n, count(*) FILTER (WHERE is_final) AS emitted FROM per_dataset",
    );
    assert!(
        rows[0]["n"].as_i64().unwrap_or(0) > 0 && rows[0]["emitted"].as_i64().unwrap_or(0) > 0,
        "the live window is empty while the sink fails: {rows:?}"
    );

    // the disk comes back: every row once
    disk.free();
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the run did not finish after the disk came back:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{}", log());
    compare(
        &case.expected,
        &read_ndjson(&out.join("per_dataset.ndjson")),
        &["datasetName"],
    )
    .unwrap_or_else(|e| panic!("after the outage the rows differ from the oracle: {e}"));
    drop(guard);
}

/// Lines the sink wrote to `out` so far.
fn written_rows(out: &Path) -> usize {
    std::fs::read_to_string(out.join("per_dataset.ndjson"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Secrets as a deployment passes them: environment variables.
const SECRETS: [(&str, &str); 5] = [
    ("WEIR_TEST_SASL_PASSWORD", "sasl-Pa55word-81c7"),
    ("WEIR_TEST_CATALOG_PASSWORD", "catalog-pw-93ab1"),
    ("WEIR_TEST_SQL_TOKEN", "bearer-token-7f3e9d"),
    ("WEIR_TEST_SQL_PASSWORD", "pg-password-2c44"),
    ("WEIR_TEST_S3_SECRET", "s3-secret-key-5d1a"),
];

#[test]
fn secrets_from_the_environment_never_appear_in_validate_output_or_logs() {
    let case = Case::new(2000, 10);
    let out = case.dir.path().join("out");
    let port = free_port();
    let pipeline = case.pipeline(
        &out,
        &format!(
            "  lake:\n    iceberg:\n      catalog: \"postgres://weir:${{WEIR_TEST_CATALOG_PASSWORD}}@127.0.0.1:1/catalog\"\n      warehouse: \"{out}/warehouse\"\n      table: ops.secret\n      properties: {{ s3.secret-access-key: \"${{WEIR_TEST_S3_SECRET}}\" }}\n  \
             topic_out:\n    kafka:\n      brokers: 127.0.0.1:1\n      topic: weir-secret-test\n      properties:\n        security.protocol: SASL_PLAINTEXT\n        sasl.mechanism: PLAIN\n        sasl.username: weir\n        sasl.password: \"${{WEIR_TEST_SASL_PASSWORD}}\"\n\
             serve: {{ http: \"127.0.0.1:{port}\", token: \"${{WEIR_TEST_SQL_TOKEN}}\", password: \"${{WEIR_TEST_SQL_PASSWORD}}\" }}\n",
            out = out.display()
        ),
    );
    // windows write to the Iceberg sink too, so the run opens the (unreachable) catalog
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("sinks: [rows]", "sinks: [rows, lake, topic_out]");
    std::fs::write(&pipeline, text).unwrap();

    let weir = |args: &[&str]| {
        let mut c = Command::new(WEIR);
        c.args(args).arg(&pipeline).env("RUST_LOG", "trace");
        for (k, v) in SECRETS {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let check = |what: &str, o: &std::process::Output| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        for (name, secret) in SECRETS {
            assert!(
                !all.contains(secret),
                "{what} printed the value of {name}:\n{all}"
            );
        }
        all
    };
    let validate = weir(&["validate"]);
    let text = check("weir validate", &validate);
    assert!(validate.status.success(), "{text}");
    assert!(text.contains("postgres://weir:***@127.0.0.1:1"), "{text}");

    for format in ["human", "json"] {
        let run = weir(&["--log-format", format, "run"]);
        let text = check(&format!("weir run ({format} logs)"), &run);
        assert_eq!(run.status.code(), Some(2), "{text}");
        assert!(text.contains("error:"), "{text}");
    }
}

#[test]
fn retry_settings_are_checked_with_their_position() {
    let case = Case::new(100, 2);
    let out = case.dir.path().join("out");
    for (retry, message) in [
        (
            "{ initial_backoff: 0s }",
            "initial_backoff must be more than 0",
        ),
        (
            "{ initial_backoff: 5s, max_backoff: 1s }",
            "max_backoff must be at least initial_backoff",
        ),
        ("{ jitter: 2 }", "jitter must be between 0 and 1"),
        (
            "{ circuit_breaker: { failures: 0 } }",
            "circuit_breaker.failures must be at least 1",
        ),
        ("{ backoff: 1s }", "unknown field `backoff`"),
    ] {
        let pipeline = case.pipeline(&out, &format!("    retry: {retry}\n"));
        let o = Command::new(WEIR)
            .arg("validate")
            .arg(&pipeline)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{retry}: {err}");
        assert!(err.contains(message), "{retry}: {err}");
        assert!(
            err.contains(&format!("{}:20:", pipeline.display())),
            "{retry}: no position: {err}"
        );
    }
}
