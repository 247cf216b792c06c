//! The Elasticsearch sink end to end, against the project's Elasticsearch-compatible test
//! server (`tests/es/es_server.py`) or, for the tests that inject no fault, a real cluster
//! named by `WEIR_TEST_ES_URL`: windows and a view indexed equal to the oracle, each document
//! once after kill -9s and restarts (versions grow, the count does not), and faults: 20% of the
//! items answered 429, the server unreachable for 30 s, one document the mapping refuses.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/es.rs"]
mod es;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use es::Es;
use serde_json::{json, Value};
use weir_tests::{compare, generate, oracle, oracle_per_dataset, Row};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A name no other test (or earlier run against a real cluster) uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Generated events, the oracle's windows and view totals.
struct Case {
    dir: tempfile::TempDir,
    input: PathBuf,
    windows: Vec<Row>,
    /// Per source: events and records over all time.
    view: Vec<Row>,
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
                "17",
                "--keys",
                &keys.to_string(),
                "--step-ms",
                "30",
                "--unicode-keys",
                "--bad-frac",
                "0.005",
                "--late-frac",
                "0.004",
                "--late-ms",
                "240000",
            ],
        );
        Self::with_input(dir, input)
    }

    fn with_input(dir: tempfile::TempDir, input: PathBuf) -> Case {
        let (windows, summary) = oracle_per_dataset(
            &input,
            &["events=count", "records=sum:recordCount"],
            &dir.path().join("windows.ndjson"),
        );
        // the view: a window over all time, lateness allowed without bound
        let (view, _) = oracle(
            &input,
            &[
                "--key",
                "source",
                "--size",
                "100000d",
                "--ooo",
                "100000d",
                "--agg",
                "events=count",
                "--agg",
                "records=sum:recordCount",
            ],
            &dir.path().join("view.ndjson"),
        );
        let view = view
            .into_iter()
            .map(|mut r| {
                r.remove("window_start");
                r.remove("window_end");
                r
            })
            .collect();
        Case {
            windows,
            view,
            summary,
            input,
            dir,
        }
    }

    fn figure(&self, k: &str) -> u64 {
        self.summary[k].as_u64().unwrap()
    }

    /// A pipeline: window `per_dataset` and view `per_source` to Elasticsearch sinks.
    fn pipeline(&self, name: &str, es: &Es, extra_sink: &str, rest: &str) -> PathBuf {
        let auth = es
            .api_key
            .as_ref()
            .map(|k| format!(", api_key: \"{k}\""))
            .unwrap_or_default();
        let text = format!(
            r#"name: {name}
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
    sinks: [search_windows]
views:
  per_source:
    from: events
    key: [source]
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [search_view]
sinks:
  search_windows:
    elasticsearch: {{ url: "{url}", index: "{name}-{{output}}-{{window_start:%Y.%m}}", bulk_max_docs: 500{auth}{extra_sink} }}
    retry: {{ initial_backoff: 200ms, max_backoff: 2s }}
  search_view:
    elasticsearch: {{ url: "{url}", index: "{name}-{{output}}"{auth} }}
    retry: {{ initial_backoff: 200ms, max_backoff: 2s }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
{rest}"#,
            input = self.input.display(),
            url = es.url,
        );
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Checks the indices against the oracle: every window once, the view's totals.
    fn verify(&self, es: &Es, name: &str) -> Vec<(String, u64, serde_json::Map<String, Value>)> {
        self.verify_in(es, name, &format!("{name}-per_dataset-*"))
    }

    /// [`Case::verify`], with the windows in the indices `windows` matches.
    fn verify_in(
        &self,
        es: &Es,
        name: &str,
        windows: &str,
    ) -> Vec<(String, u64, serde_json::Map<String, Value>)> {
        let docs = es.documents(windows);
        let rows: Vec<Row> = docs.iter().map(|(_, _, s)| s.clone()).collect();
        compare(&self.windows, &rows, &["datasetName"])
            .unwrap_or_else(|e| panic!("the window documents differ from the oracle: {e}"));
        let ids: std::collections::HashSet<&str> = docs.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(ids.len(), docs.len(), "document ids repeat");
        let view: Vec<Row> = es
            .documents(&format!("{name}-per_source"))
            .into_iter()
            .map(|(_, _, s)| s)
            .collect();
        compare(&self.view, &view, &["source"])
            .unwrap_or_else(|e| panic!("the view documents differ from the oracle: {e}"));
        docs
    }
}

fn run(pipeline: &Path, extra: &[&str]) -> std::process::Output {
    let o = Command::new(WEIR)
        .arg("run")
        .arg(pipeline)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "weir run failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn windows_and_a_view_are_documents_equal_to_the_oracle() {
    let case = Case::new(100_000, 120);
    let es = Es::for_test();
    for p in [1, 2] {
        let name = unique(&format!("weir-es-p{p}"));
        let pipeline = case.pipeline(
            &name,
            &es,
            "",
            "checkpoint: { dir: state, interval: 300ms }\n",
        );
        let _ = std::fs::remove_dir_all(case.dir.path().join("state"));
        let _ = std::fs::remove_dir_all(case.dir.path().join("out"));
        run(&pipeline, &["--parallelism", &p.to_string()]);
        let docs = case.verify(&es, &name);
        // ids are the pipeline, the output and the key (window_start included for windows)
        let (id, _, source) = &docs[0];
        assert!(
            id.starts_with(&format!("{name}/per_dataset/{{\"datasetName\":")),
            "{id}"
        );
        assert!(id.contains("\"window_start\":"), "{id}");
        let (s, got) = es.request(
            "GET",
            &format!(
                "/{name}-per_dataset-{}/_doc/{}",
                &source["window_start"].as_str().unwrap()[..7].replace('-', "."),
                urlencode(id)
            ),
            None,
        );
        assert_eq!(s, 200, "{got}");
        assert_eq!(got["_source"], Value::Object(source.clone()));
        // the mapping weir derived: keywords, longs, dates
        let (_, m) = es.request("GET", &format!("/{name}-per_dataset-*/_mapping"), None);
        let props = &m.as_object().unwrap().values().next().unwrap()["mappings"]["properties"];
        assert_eq!(props["datasetName"]["type"], "keyword", "{m}");
        assert_eq!(props["events"]["type"], "long", "{m}");
        assert_eq!(props["window_start"]["type"], "date", "{m}");
        let dead = std::fs::read_to_string(case.dir.path().join("out/dead.ndjson")).unwrap();
        assert_eq!(
            dead.lines().count() as u64,
            case.figure("bad") + case.figure("late")
        );
    }
}

/// The pipeline contract's example sends a window and a view to one Elasticsearch sink whose
/// `index` is named by `{output}`: each output gets its own index, both equal to the oracle.
#[test]
fn one_sink_writes_a_window_and_a_view_each_into_its_own_index() {
    let case = Case::new(40_000, 60);
    let es = Es::for_test();
    let name = unique("weir-es-shared");
    let pipeline = case.pipeline(
        &name,
        &es,
        "",
        "checkpoint: { dir: state, interval: 300ms }\n",
    );
    // both outputs to sink `search_view`, whose index is "{name}-{output}"
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("sinks: [search_windows]", "sinks: [search_view]");
    std::fs::write(&pipeline, text).unwrap();
    run(&pipeline, &["--parallelism", "2"]);
    let docs = case.verify_in(&es, &name, &format!("{name}-per_dataset"));
    assert!(
        docs.iter()
            .all(|(id, _, _)| id.starts_with(&format!("{name}/per_dataset/"))),
        "window documents carry their output's ids"
    );
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn after_kill_9_and_restarts_each_window_is_one_document_with_the_right_values() {
    let case = Case::new(150_000, 100);
    let es = Es::for_test();
    let name = unique("weir-es-crash");
    let pipeline = case.pipeline(
        &name,
        &es,
        "",
        "checkpoint: { dir: state, interval: 150ms }\n",
    );
    let logs = case.dir.path().join("logs");
    let report = crash::crash_loop(
        || {
            let mut c = Command::new(WEIR);
            c.env("RUST_LOG", "info").arg("run").arg(&pipeline);
            c
        },
        4,
        Duration::from_millis(300),
        &logs,
        || {
            let _ = std::fs::remove_dir_all(case.dir.path().join("state"));
            let _ = std::fs::remove_dir_all(case.dir.path().join("out"));
        },
    );
    eprintln!("{report:?}");
    let docs = case.verify(&es, &name);
    assert_eq!(docs.len(), case.windows.len());
    let rewritten = docs.iter().filter(|d| d.1 > 1).count();
    eprintln!(
        "{rewritten} of {} window documents were written more than once (versions > 1)",
        docs.len()
    );
    assert!(
        rewritten > 0,
        "no document was written again: the kills came too late"
    );
}

/// A run in the background, killed when the test ends however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `pipeline` in the background with JSON logs; returns the run and its log path.
fn spawn(pipeline: &Path, dir: &Path) -> (Running, PathBuf) {
    let log = dir.join("run.log");
    let child = Command::new(WEIR)
        .args(["--log-format", "json", "run"])
        .arg(pipeline)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Running(child), log)
}

fn wait(child: &mut std::process::Child, log: &Path, limit: Duration) {
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < limit,
            "the run did not finish:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn a_fifth_of_the_items_answered_429_are_retried_until_all_are_indexed() {
    let case = Case::new(60_000, 80);
    let es = Es::server(&["--api-key", "weir-test-key", "--seed", "3"]);
    es.faults(json!({"reject_ratio": 0.2}));
    let name = unique("weir-es-429");
    let pipeline = case.pipeline(
        &name,
        &es,
        "",
        "checkpoint: { dir: state, interval: 300ms }\n",
    );
    let (mut run, log) = spawn(&pipeline, case.dir.path());
    wait(&mut run.0, &log, Duration::from_secs(300));
    es.faults(json!({"reject_ratio": 0.0}));
    case.verify(&es, &name);
    let stats = es.stats();
    assert!(stats["rejected_items"].as_u64().unwrap() > 100, "{stats}");
    assert!(stats["gzip_requests"].as_u64().unwrap() > 0, "{stats}");
    let retries = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"message\":\"retrying\""))
        .count();
    assert!(retries > 0, "no retry logged");
    eprintln!(
        "{} items answered 429, {retries} retries logged",
        stats["rejected_items"]
    );
}

/// A bulk answer cut in the middle of its body (a proxy or a node closing the connection after
/// the items were indexed) is sent again: the run goes on, and each window is still one
/// document (ids are deterministic). It used to end the run with exit 2: "the bulk answer
/// does not hold 500 items".
#[test]
fn a_bulk_answer_cut_short_is_sent_again_and_the_documents_equal_the_oracle() {
    let case = Case::new(20_000, 60);
    let es = Es::server(&[]);
    let name = unique("weir-es-cut");
    let pipeline = case.pipeline(
        &name,
        &es,
        "",
        "checkpoint: { dir: state, interval: 300ms }\n",
    );
    es.faults(json!({"cut_answers": 3}));
    run(&pipeline, &[]);
    assert_eq!(es.stats()["cut_answers"], 3, "every cut was met");
    case.verify(&es, &name);
}

#[test]
fn the_cluster_unreachable_for_30_seconds_loses_nothing() {
    let case = Case::new(150_000, 100);
    let es = Es::server(&[]);
    let name = unique("weir-es-down");
    let pipeline = case.pipeline(
        &name,
        &es,
        "",
        "checkpoint: { dir: state, interval: 300ms }\n",
    );
    // the port closes right after the first bulk request: the server arms it now, so the
    // outage cannot miss a run that would otherwise finish first
    es.faults(json!({"refuse_ms": 30000, "after_items": 1}));
    let (mut run, log) = spawn(&pipeline, case.dir.path());
    let child = &mut run.0;
    let started = Instant::now();
    while es.accepts() {
        assert!(started.elapsed() < Duration::from_secs(60), "no outage");
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = Instant::now();
    let mut peak = 0u64;
    while down.elapsed() < Duration::from_secs(30) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) while the cluster was down:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(kb << 10);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    wait(child, &log, Duration::from_secs(300));
    case.verify(&es, &name);
    const BOUND: u64 = 300 << 20;
    eprintln!("peak RSS while the cluster was down: {} MiB", peak >> 20);
    assert!(
        peak < BOUND,
        "peak RSS {} MiB over {} MiB",
        peak >> 20,
        BOUND >> 20
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("did not answer"), "no failover/retry logged");
    assert!(log.contains("output recovered"), "no recovery logged");
}

#[test]
fn a_document_the_mapping_refuses_goes_to_the_dead_letters_and_the_rest_is_indexed() {
    // the generated events, plus one dataset whose records overflow an `integer` field
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.ndjson");
    generate(
        &input,
        &["20000", "--seed", "5", "--keys", "30", "--step-ms", "30"],
    );
    // the newest event's time: the extra event is on time
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&input)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .max_by_key(|v| v["timestamp"].as_i64().unwrap_or(0))
            .unwrap()
            .to_string()
            .as_str(),
    )
    .unwrap();
    let mut huge = first.clone();
    huge["datasetName"] = json!("overflowing");
    huge["recordCount"] = json!(3_000_000_000u64);
    huge["eventId"] = json!("evt-huge");
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(&format!("{huge}\n"));
    std::fs::write(&input, text).unwrap();
    let case = Case::with_input(dir, input);

    let es = Es::server(&[]);
    let name = unique("weir-es-refused");
    // an index template makes `records` an integer: 3,000,000,000 does not fit
    let template = case.dir.path().join("template.json");
    std::fs::write(
        &template,
        json!({
            "index_patterns": [format!("{name}-per_dataset-*")],
            "template": {"mappings": {"properties": {
                "datasetName": {"type": "keyword"},
                "window_start": {"type": "date", "format": "strict_date_optional_time"},
                "window_end": {"type": "date", "format": "strict_date_optional_time"},
                "events": {"type": "long"},
                "records": {"type": "integer"}
            }}}
        })
        .to_string(),
    )
    .unwrap();
    let pipeline = case.pipeline(
        &name,
        &es,
        &format!(", index_template: \"{}\"", template.display()),
        "checkpoint: { dir: state, interval: 300ms }\n",
    );
    run(&pipeline, &[]);
    let docs = es.documents(&format!("{name}-per_dataset-*"));
    let refused: Vec<Row> = case
        .windows
        .iter()
        .filter(|r| r["datasetName"] == "overflowing")
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1);
    let rest: Vec<Row> = case
        .windows
        .iter()
        .filter(|r| r["datasetName"] != "overflowing")
        .cloned()
        .collect();
    let rows: Vec<Row> = docs.into_iter().map(|d| d.2).collect();
    compare(&rest, &rows, &["datasetName"]).unwrap();
    let dead: Vec<Value> = std::fs::read_to_string(case.dir.path().join("out/dead.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["reason"] == "rejected")
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d["sink"], "search_windows");
    assert_eq!(d["error"]["code"], "elasticsearch_refused");
    assert_eq!(d["error"]["details"]["status"], 400);
    assert_eq!(d["error"]["details"]["type"], "document_parsing_exception");
    let raw: Value = serde_json::from_str(d["raw"].as_str().unwrap()).unwrap();
    assert_eq!(raw["datasetName"], "overflowing");
    assert_eq!(raw["records"], json!(3_000_000_000u64));
}

#[test]
fn wrong_credentials_fail_the_run_with_the_clusters_answer() {
    let case = Case::new(2_000, 5);
    let es = Es::server(&["--api-key", "the-right-key"]);
    let name = unique("weir-es-auth");
    let pipeline = case.pipeline(&name, &es.with_key("not-the-key"), "", "");
    let o = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("refuses the credentials (401)"), "{err}");
    assert!(err.contains("security_exception"), "{err}");
    assert!(!err.contains("not-the-key"), "the key was printed: {err}");
}

/// A view with `retain`: keys that expire lose their document (a bulk `delete`), here after a
/// restore from the checkpoint of a first run that indexed them.
#[test]
fn expired_view_keys_lose_their_documents() {
    let es = Es::for_test();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("retain");
    let all = weir_tests::retain_events();
    // the first run sees the events up to 30 s: every key is indexed
    let first: String = all
        .lines()
        .filter(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            e["timestamp"].as_i64().unwrap() <= 1_700_000_030_000
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, &first).unwrap();
    let auth = es
        .api_key
        .as_ref()
        .map(|k| format!(", api_key: \"{k}\""))
        .unwrap_or_default();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        weir_tests::retain_pipeline(
            &name,
            "file: { path: events.ndjson }",
            &format!(
                "{{ elasticsearch: {{ url: \"{}\", index: \"{name}\"{auth} }} }}",
                es.url
            ),
            "dead_letter: { file: { path: out/dead.ndjson } }\ncheckpoint: { dir: state, interval: 1s }\n",
        ),
    )
    .unwrap();
    let services = |es: &Es| -> Vec<(String, String, u64)> {
        let mut d: Vec<_> = es
            .documents(&name)
            .into_iter()
            .map(|(_, _, s)| {
                (
                    s["serviceName"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                    s["checks"].as_u64().unwrap(),
                )
            })
            .collect();
        d.sort();
        d
    };
    run(&pipeline, &[]);
    let names: Vec<String> = services(&es).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["fresh", "mid", "old", "recent"]);
    // the rest of the input, read after the restore: old and mid expire
    std::fs::write(&input, &all).unwrap();
    run(&pipeline, &[]);
    assert_eq!(
        services(&es),
        vec![
            ("fresh".to_string(), "HEALTHY".to_string(), 13),
            ("recent".to_string(), "DEGRADED".to_string(), 2),
        ]
    );
}
