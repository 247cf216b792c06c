//! The webhook sink end to end, against a real local receiver (`tests/webhook/receiver.py`)
//! that verifies every request's signature with the `standardwebhooks` PyPI library (the
//! independent checker) and drops rows whose `_row_id` it already holds: windows, a view and
//! a filtered window delivered, verified and equal to the oracle (JSON arrays, CloudEvents,
//! two secrets while rotating); 429 with `Retry-After` and 503 bursts retried with nothing
//! lost; the receiver down for a while; a 400 dead-lettered with its body; a wrong secret
//! detected by the receiver; and a kill -9 crash loop after which the receiver holds exactly
//! the oracle's rows, every repeated row identical to its first delivery.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/sql.rs"]
mod sql_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weir_tests::{compare, generate, oracle, oracle_per_dataset, read_ndjson, Row};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// The receiver's secret (the Standard Webhooks documentation's example key).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another 32-byte key: the old secret of a rotation, or a wrong one.
const OTHER_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The receiver, killed when the test ends however it ends.
struct Receiver {
    child: Child,
    port: u16,
    secret: String,
    state: PathBuf,
}

impl Receiver {
    /// Starts `receiver.py` verifying with `secret`, on `port` (0: any), keeping its record
    /// in `state` (so a restart on the same port goes on with it).
    fn start(secret: &str, port: u16, state: &Path) -> Receiver {
        let script = weir_tests::repo_dir().join("tests/webhook/receiver.py");
        let mut child = Command::new(crash::venv_python())
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", secret, "--state"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver did not start: {line:?}"));
        Receiver {
            child,
            port,
            secret: secret.to_string(),
            state: state.to_path_buf(),
        }
    }

    /// Kills it (SIGKILL) and waits until it is gone: its port refuses connections.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same record.
    fn restart(&mut self) {
        self.stop();
        let again = Receiver::start(&self.secret.clone(), self.port, &self.state.clone());
        *self = again;
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let client = reqwest::blocking::Client::new();
        let req = match body {
            Some(b) => client.request(method.parse().unwrap(), &url).json(&b),
            None => client.request(method.parse().unwrap(), &url),
        };
        let resp = req.send().expect("the receiver answers");
        serde_json::from_slice(&resp.bytes().unwrap()).unwrap_or(Value::Null)
    }

    /// Its record (see `receiver.py`).
    fn state(&self) -> Value {
        self.request("GET", "/_state", None)
    }

    fn faults(&self, faults: Value) {
        self.request("POST", "/_faults", Some(faults));
    }

    /// Empties its record.
    fn reset(&self) {
        self.request("POST", "/_reset", None);
    }

    /// Every row sent to `/hooks/<output>` (and below) that it accepted, repeats included,
    /// in the order they arrived, without `_row_id`.
    fn arrivals(&self, output: &str) -> Vec<Row> {
        let state = self.state();
        let path = format!("/hooks/{output}");
        state["arrivals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                let at = a[0].as_str().unwrap();
                at == path || at.starts_with(&format!("{path}/"))
            })
            .map(|a| {
                let mut row = state["rows"][a[1].as_str().unwrap()]
                    .as_object()
                    .unwrap()
                    .clone();
                row.remove("_row_id");
                row
            })
            .collect()
    }

    /// The rows it holds (first deliveries) sent to `/hooks/<output>` (and below), without
    /// `_row_id`.
    fn rows(&self, output: &str) -> Vec<Row> {
        self.rows_with_paths(output)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// [`Self::rows`] with the path each was sent to.
    fn rows_with_paths(&self, output: &str) -> Vec<(String, Row)> {
        let state = self.state();
        let path = format!("/hooks/{output}");
        let mut out = Vec::new();
        for (id, row) in state["rows"].as_object().unwrap() {
            let at = state["paths"][id].as_str().unwrap();
            if at == path || at.starts_with(&format!("{path}/")) {
                let mut row = row.as_object().unwrap().clone();
                assert_eq!(row.remove("_row_id").as_ref(), Some(&json!(id)));
                out.push((at.to_string(), row));
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Generated events and the oracle's 1-minute windows per dataset.
struct Case {
    dir: tempfile::TempDir,
    input: PathBuf,
    windows: Vec<Row>,
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
                "23",
                "--keys",
                &keys.to_string(),
                "--step-ms",
                "30",
                "--unicode-keys",
            ],
        );
        let (windows, _) = oracle_per_dataset(
            &input,
            &["events=count", "records=sum:recordCount"],
            &dir.path().join("windows.ndjson"),
        );
        Case {
            dir,
            input,
            windows,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A pipeline whose window `per_dataset` goes to a webhook sink of `sink` (YAML keys
    /// beside `url`, which points at the receiver), then `rest`.
    fn pipeline(&self, receiver: &Receiver, sink: &str, rest: &str) -> PathBuf {
        let text = format!(
            r#"name: webhooks
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
    sinks: [hook]
sinks:
  hook:
    webhook:
      url: "http://127.0.0.1:{port}/hooks/{{output}}"
{sink}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
{rest}"#,
            input = self.input.display(),
            port = receiver.port,
        );
        let p = self.path("pipeline.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn dead_letters(&self) -> Vec<Row> {
        let p = self.path("dead.ndjson");
        if p.exists() {
            read_ndjson(&p)
        } else {
            Vec::new()
        }
    }
}

/// Runs `pipeline` to its end; panics with the log when it fails or takes over `limit`.
fn run(pipeline: &Path, env: &[(&str, &str)], limit: Duration) -> String {
    let log = pipeline.with_extension("log");
    let mut child = Command::new(WEIR)
        .arg("run")
        .arg(pipeline)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "the run did not finish within {limit:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "the run failed:\n{text}");
    text
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// What a receiver applying a view's rows by key in arrival order holds: the last row to
/// arrive of each key.
fn latest(arrivals: Vec<Row>, key: &str) -> Vec<Row> {
    let mut by_key: std::collections::BTreeMap<String, Row> = Default::default();
    for r in arrivals {
        by_key.insert(r[key].to_string(), r);
    }
    by_key.into_values().collect()
}

/// Asserts that, per value of `key`, `field` never goes back from one arrival to the next
/// (a repeat may arrive again, an older row never after a newer one).
fn assert_forward_per_key(arrivals: &[Row], key: &str, field: &str) {
    let mut last: std::collections::HashMap<String, &Value> = Default::default();
    for (i, r) in arrivals.iter().enumerate() {
        let k = r[key].to_string();
        if let Some(prev) = last.get(&k) {
            let back = match (prev.as_f64(), r[field].as_f64()) {
                (Some(a), Some(b)) => b < a,
                _ => r[field].as_str() < prev.as_str(),
            };
            assert!(
                !back,
                "arrival {i}: {key} {k}: {field} went back from {prev} to {}",
                r[field]
            );
        }
        last.insert(k, &r[field]);
    }
}

#[test]
fn every_row_is_delivered_signed_once_and_equal_to_the_oracle() {
    let case = Case::new(20_000, 60);
    let receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    // the view: totals per source over all time
    let (view, _) = oracle(
        &case.input,
        &[
            "--key",
            "source",
            "--size",
            "100000d",
            "--ooo",
            "100000d",
            "--agg",
            "events=count",
        ],
        &case.path("view.ndjson"),
    );
    let alerts = case
        .windows
        .iter()
        .filter(|r| r["events"].as_u64().unwrap() > 40)
        .cloned()
        .collect::<Vec<_>>();
    assert!(!alerts.is_empty() && alerts.len() < case.windows.len());
    let port = receiver.port;
    // two secrets while rotating: the receiver knows only the new one
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: ["${OLD_SECRET}", "${NEW_SECRET}"]
      batch_max_rows: 7"#,
        r#"views:
  per_source:
    from: events
    key: [source]
    aggregates:
      events: count(*)
    sinks: [changes]
"#,
    );
    // more outputs: the view as CloudEvents, one row a request; a filtered copy of the window
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text = text.replace(
        "    sinks: [hook]\n",
        "    sinks: [hook]\n  alerting:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    aggregates:\n      events: count(*)\n      records: sum(recordCount)\n    sinks: [alerts]\n",
    );
    text = text.replace(
        "dead_letter:",
        &format!(
            r#"  changes:
    webhook:
      url: "http://127.0.0.1:{port}/hooks/{{output}}"
      secret: "${{NEW_SECRET}}"
      batch: single
      body: cloudevents_structured
      method: PUT
      headers: {{ X-Tenant: platform }}
  alerts:
    webhook:
      url: "http://127.0.0.1:{port}/hooks/{{output}}/{{datasetName}}"
      secret: "${{NEW_SECRET}}"
      body: cloudevents_binary
      where: "events > 40"
dead_letter:"#
        ),
    );
    std::fs::write(&pipeline, text).unwrap();
    let log = run(
        &pipeline,
        &[("OLD_SECRET", OTHER_SECRET), ("NEW_SECRET", SECRET)],
        Duration::from_secs(120),
    );
    let state = receiver.state();
    assert_eq!(state["bad_signatures"], 0, "{log}");
    assert_eq!(state["repeats_differing"], 0);
    compare(
        &case.windows,
        &receiver.rows("per_dataset"),
        &["datasetName"],
    )
    .unwrap();
    let alerting = receiver.rows_with_paths("alerting");
    // each alert went to the URL of its key, percent-encoded
    for (path, row) in &alerting {
        let key = percent_decode(path.rsplit('/').next().unwrap());
        assert_eq!(row["datasetName"].as_str(), Some(key.as_str()), "{path}");
    }
    let alerting: Vec<Row> = alerting.into_iter().map(|(_, r)| r).collect();
    compare(&alerts, &alerting, &["datasetName"]).unwrap();
    let view_rows: Vec<Row> = view
        .into_iter()
        .map(|mut r| {
            r.remove("window_start");
            r.remove("window_end");
            r
        })
        .collect();
    // a view's rows are upserts: applied by key in arrival order
    let changes = receiver.arrivals("per_source");
    assert_forward_per_key(&changes, "source", "events");
    compare(&view_rows, &latest(changes, "source"), &["source"]).unwrap();
    assert_forward_per_key(
        &receiver.arrivals("per_dataset"),
        "datasetName",
        "window_start",
    );
    // each body mode reached the receiver
    let types = state["content_types"].as_object().unwrap();
    for t in ["application/json", "application/cloudevents+json"] {
        assert!(types.contains_key(t), "{types:?}");
    }
    // arrays of at most 7 rows: at least windows / 7 requests for the window
    let requests = state["requests"].as_u64().unwrap();
    assert!(requests as usize >= case.windows.len() / 7, "{requests}");
    assert!(case.dead_letters().is_empty());
    eprintln!(
        "{} window rows, {} alerts, {} requests, {} repeated rows",
        case.windows.len(),
        alerts.len(),
        requests,
        state["repeated_rows"]
    );
}

#[test]
fn with_requests_in_parallel_and_failing_the_updates_of_a_key_arrive_in_order() {
    // few keys, one row a request, 4 in flight: several requests of one key are pending at
    // once; every 3rd request fails (503) and is retried
    let case = Case::new(20_000, 3);
    let receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    receiver.faults(json!({ "fail_every": 3 }));
    let (view, _) = oracle(
        &case.input,
        &[
            "--key",
            "source",
            "--size",
            "100000d",
            "--ooo",
            "100000d",
            "--agg",
            "events=count",
        ],
        &case.path("view.ndjson"),
    );
    let port = receiver.port;
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: "${WEBHOOK_SECRET}"
      batch: single
      max_in_flight: 4
    retry: { initial_backoff: 20ms, max_backoff: 100ms, circuit_breaker: { failures: 1000 } }"#,
        r#"views:
  per_source:
    from: events
    key: [source]
    aggregates:
      events: count(*)
    sinks: [changes]
"#,
    );
    let mut text = std::fs::read_to_string(&pipeline).unwrap();
    text = text.replace(
        "dead_letter:",
        &format!(
            r#"  changes:
    webhook:
      url: "http://127.0.0.1:{port}/hooks/{{output}}"
      secret: "${{WEBHOOK_SECRET}}"
      batch_max_rows: 2
      max_in_flight: 4
    retry: {{ initial_backoff: 20ms, max_backoff: 100ms, circuit_breaker: {{ failures: 1000 }} }}
dead_letter:"#
        ),
    );
    std::fs::write(&pipeline, text).unwrap();
    run(
        &pipeline,
        &[("WEBHOOK_SECRET", SECRET)],
        Duration::from_secs(120),
    );
    let state = receiver.state();
    assert!(
        state["answers"]["503"].as_u64().unwrap() > 3,
        "{}",
        state["answers"]
    );
    let windows = receiver.arrivals("per_dataset");
    assert_forward_per_key(&windows, "datasetName", "window_start");
    compare(
        &case.windows,
        &receiver.rows("per_dataset"),
        &["datasetName"],
    )
    .unwrap();
    let changes = receiver.arrivals("per_source");
    assert_forward_per_key(&changes, "source", "events");
    let view_rows: Vec<Row> = view
        .into_iter()
        .map(|mut r| {
            r.remove("window_start");
            r.remove("window_end");
            r
        })
        .collect();
    compare(&view_rows, &latest(changes, "source"), &["source"]).unwrap();
    assert!(case.dead_letters().is_empty());
}

#[test]
fn answers_429_with_retry_after_and_503_bursts_are_retried_and_nothing_is_lost() {
    let case = Case::new(12_000, 40);
    let receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    let statuses: Vec<u16> = [429, 503, 503, 503, 429, 503, 503, 503, 503, 429]
        .into_iter()
        .collect();
    receiver.faults(json!({ "statuses": statuses, "retry_after": 2 }));
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: "${WEBHOOK_SECRET}"
      batch_max_rows: 20
      max_in_flight: 1
    retry: { initial_backoff: 100ms, max_backoff: 400ms, circuit_breaker: { failures: 50 } }"#,
        "",
    );
    let started = Instant::now();
    let log = run(
        &pipeline,
        &[("WEBHOOK_SECRET", SECRET)],
        Duration::from_secs(120),
    );
    let state = receiver.state();
    compare(
        &case.windows,
        &receiver.rows("per_dataset"),
        &["datasetName"],
    )
    .unwrap();
    assert_eq!(state["answers"]["429"], 3, "{}", state["answers"]);
    assert_eq!(state["answers"]["503"], 7, "{}", state["answers"]);
    assert!(case.dead_letters().is_empty());
    assert!(log.contains("retrying"), "{log}");
    // every answer asking for 2 s was followed by a request at least that much later
    let timeline = state["timeline"].as_array().unwrap();
    let mut waits = Vec::new();
    for pair in timeline.windows(2) {
        if pair[0][1] == 429 || pair[0][1] == 503 {
            let gap = pair[1][0].as_f64().unwrap() - pair[0][0].as_f64().unwrap();
            waits.push(gap);
            assert!(
                gap >= 1.9,
                "a retry {gap:.2} s after a Retry-After of 2 s: {timeline:?}"
            );
        }
    }
    assert_eq!(waits.len(), 10);
    eprintln!(
        "{} requests, waits after 429/503 {:?} s, run {:?}",
        state["requests"],
        waits
            .iter()
            .map(|w| (w * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        started.elapsed()
    );
}

#[test]
fn a_receiver_down_for_a_while_gets_every_row_once_it_is_back() {
    let case = Case::new(12_000, 40);
    let mut receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    let pipeline = case.pipeline(
        &receiver,
        // the default retry policy: the circuit opens after 5 failures and probes every 30 s
        r#"      secret: "${WEBHOOK_SECRET}""#,
        "",
    );
    receiver.stop();
    let outage = Duration::from_secs(30);
    let log_path = pipeline.with_extension("log");
    let mut child = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .env("RUST_LOG", "info")
        .env("WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(outage);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended while the receiver was down:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    receiver.restart();
    let back = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no end after the outage"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("circuit open"), "{log}");
    compare(
        &case.windows,
        &receiver.rows("per_dataset"),
        &["datasetName"],
    )
    .unwrap();
    assert!(case.dead_letters().is_empty());
    eprintln!(
        "outage {outage:?}: the run finished {:?} after the receiver came back",
        back.elapsed()
    );
}

#[test]
fn a_400_sends_the_rows_of_its_request_to_the_dead_letter_output_with_the_answer() {
    let case = Case::new(8_000, 30);
    let receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    // every row of one dataset is refused
    let refused_key = case.windows[0]["datasetName"].as_str().unwrap().to_string();
    let marker = serde_json::to_string(&refused_key).unwrap();
    receiver.faults(json!({
        "refuse": format!("\"datasetName\":{marker}"),
        "refuse_status": 400,
        "refuse_body": format!("unknown dataset {refused_key}: {}", "x".repeat(3000)),
    }));
    let http = sql_support::free_port();
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: "${WEBHOOK_SECRET}"
      batch: single"#,
        &format!("serve: {{ http: \"127.0.0.1:{http}\" }}\n"),
    );
    let (refused, kept): (Vec<Row>, Vec<Row>) = case
        .windows
        .iter()
        .cloned()
        .partition(|r| r["datasetName"] == refused_key.as_str());
    assert!(!refused.is_empty());
    let mut running = sql_support::Running::start_with_env(
        WEIR,
        &pipeline,
        &["--keep-serving"],
        &[("WEBHOOK_SECRET", SECRET)],
    );
    running.wait_http(http);
    // the metrics count each request: one a row, the refused ones as 4xx failures
    let sample = |name: &str, class: &str, n: usize| {
        format!("{name}{{pipeline=\"webhooks\",sink=\"hook\"{class}}} {n}")
    };
    let expected = [
        sample("weir_webhook_deliveries_total", "", kept.len()),
        sample("weir_webhook_rows_delivered_total", "", kept.len()),
        sample(
            "weir_webhook_failures_total",
            ",class=\"4xx\"",
            refused.len(),
        ),
        sample("weir_webhook_failures_total", ",class=\"5xx\"", 0),
        sample("weir_sink_rejected_total", "", refused.len()),
        sample(
            "weir_webhook_request_duration_seconds_count",
            "",
            case.windows.len(),
        ),
    ];
    let started = Instant::now();
    let metrics = loop {
        let answer = sql_support::http(http, "GET", "/metrics", &[], b"");
        let text = String::from_utf8(answer.body).unwrap();
        if expected.iter().all(|l| text.contains(l.as_str())) {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{expected:?} not in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains("# TYPE weir_webhook_request_duration_seconds histogram"));
    let (code, _, err) = running.stop();
    assert_eq!(code, Some(0), "{err}");
    compare(&kept, &receiver.rows("per_dataset"), &["datasetName"]).unwrap();
    let dead = case.dead_letters();
    assert_eq!(dead.len(), refused.len(), "{dead:?}");
    for d in &dead {
        assert_eq!(d["reason"], "rejected", "{d:?}");
        let e = &d["error"];
        assert_eq!(e["code"], "webhook_refused", "{e}");
        let details = &e["details"];
        assert_eq!(details["status"], 400);
        assert_eq!(details["headers"]["x-reason"], "test-refusal", "{details}");
        let body = details["body"].as_str().unwrap();
        assert!(body.starts_with(&format!("unknown dataset {refused_key}")));
        assert_eq!(body.len(), 1024, "the first KiB of the body");
        assert!(details["webhook_id"].as_str().unwrap().starts_with("msg_"));
        let raw: Value = serde_json::from_str(d["raw"].as_str().unwrap()).unwrap();
        assert_eq!(raw["datasetName"], refused_key.as_str());
        assert!(raw["_row_id"].as_str().unwrap().starts_with("row_"));
    }
}

/// A URL template sends each dataset to its own URL; the receiver fails one of them for
/// good (503 to every request carrying its rows) while the others work. With
/// `give_up_after`, that URL's rows go to the dead-letter output (`webhook_undeliverable`)
/// and every other row is delivered; the run ends. (Without it the sink retries that URL for
/// ever, and every other URL, every checkpoint and the sources wait with it.)
#[test]
fn with_give_up_after_a_dead_url_is_dead_lettered_and_the_other_urls_delivered() {
    let case = Case::new(8_000, 30);
    let receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    let dead_key = case.windows[0]["datasetName"].as_str().unwrap().to_string();
    let marker = serde_json::to_string(&dead_key).unwrap();
    receiver.faults(json!({
        "refuse": format!("\"datasetName\":{marker}"),
        "refuse_status": 503,
    }));
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: "${WEBHOOK_SECRET}"
      give_up_after: 2s"#,
        "",
    );
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("/hooks/{output}\"", "/hooks/{output}/{datasetName}\"");
    std::fs::write(&pipeline, text).unwrap();
    let started = Instant::now();
    let log = run(
        &pipeline,
        &[("WEBHOOK_SECRET", SECRET)],
        Duration::from_secs(120),
    );
    let (given_up, kept): (Vec<Row>, Vec<Row>) = case
        .windows
        .iter()
        .cloned()
        .partition(|r| r["datasetName"] == dead_key.as_str());
    assert!(!given_up.is_empty());
    compare(&kept, &receiver.rows("per_dataset"), &["datasetName"]).unwrap();
    let dead = case.dead_letters();
    assert_eq!(dead.len(), given_up.len(), "{dead:?}");
    for d in &dead {
        assert_eq!(d["reason"], "rejected", "{d:?}");
        let e = &d["error"];
        assert_eq!(e["code"], "webhook_undeliverable", "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("give_up_after") && message.contains("503"),
            "{e}"
        );
        let url = e["details"]["url"].as_str().unwrap();
        assert!(url.contains("/hooks/per_dataset/"), "{e}");
        let raw: Value = serde_json::from_str(d["raw"].as_str().unwrap()).unwrap();
        assert_eq!(raw["datasetName"], dead_key.as_str());
    }
    assert!(log.contains("give_up_after"), "{log}");
    eprintln!("run {:?}", started.elapsed());
}

#[test]
fn a_wrong_secret_is_detected_by_the_receiver_and_a_bad_one_by_validate() {
    let case = Case::new(4_000, 10);
    let mut receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    let http = sql_support::free_port();
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: "${WEBHOOK_SECRET}"
    retry: { initial_backoff: 100ms, max_backoff: 400ms, circuit_breaker: { failures: 3, open_for: 1s } }"#,
        &format!("serve: {{ http: \"127.0.0.1:{http}\" }}\n"),
    );
    let log_path = pipeline.with_extension("log");
    let mut child = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .env("RUST_LOG", "info")
        .env("WEBHOOK_SECRET", OTHER_SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // the receiver's 401 is a failure of the sink: retried, its circuit opens, /ready says so,
    // nothing is dead-lettered and the run does not end
    let failures = "weir_webhook_failures_total{pipeline=\"webhooks\",sink=\"hook\",class=\"4xx\"}";
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended with a secret the receiver refuses:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        let ready = sql_support::try_http(http, "GET", "/ready", &[], b"");
        let metrics = sql_support::try_http(http, "GET", "/metrics", &[], b"");
        if let (Ok(ready), Ok(metrics)) = (ready, metrics) {
            let ready = String::from_utf8_lossy(&ready.body).into_owned();
            let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
            let failed = metrics
                .lines()
                .find_map(|l| l.strip_prefix(failures))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let open = metrics
                .lines()
                .any(|l| l == "weir_sink_circuit_state{pipeline=\"webhooks\",sink=\"hook\"} 1");
            if open && ready.contains("sink `hook`: circuit open") && failed >= 3 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no open circuit:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = receiver.state();
    assert!(state["bad_signatures"].as_u64().unwrap() > 0);
    assert_eq!(state["requests"], 0);
    assert!(state["rows"].as_object().unwrap().is_empty());
    assert!(case.dead_letters().is_empty(), "{:?}", case.dead_letters());
    // the receiver takes the sink's secret (the receiver's side of a rotation): every row
    // comes, none was lost
    receiver.stop();
    let receiver = Receiver::start(OTHER_SECRET, receiver.port, &case.path("receiver2.json"));
    let back = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            back.elapsed() < Duration::from_secs(90),
            "no end after the rotation"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("answered 401"), "{log}");
    compare(
        &case.windows,
        &receiver.rows("per_dataset"),
        &["datasetName"],
    )
    .unwrap();
    assert!(case.dead_letters().is_empty());
    // a secret that is not whsec_<base64>, or empty: a configuration error at its place
    for bad in ["not-a-secret!", ""] {
        let o = Command::new(WEIR)
            .arg("validate")
            .arg(&pipeline)
            .env("WEBHOOK_SECRET", bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("pipeline.yaml:21:15: sink `hook`: `secret`"),
            "{err}"
        );
    }
}

#[test]
fn after_kill_9_and_restarts_the_receiver_holds_exactly_the_oracle_rows() {
    let case = Case::new(150_000, 100);
    let receiver = Receiver::start(SECRET, 0, &case.path("receiver.json"));
    let pipeline = case.pipeline(
        &receiver,
        r#"      secret: "${WEBHOOK_SECRET}""#,
        "checkpoint: { dir: state, interval: 150ms }\n",
    );
    let logs = case.path("logs");
    // a run that finished before its kill: the receiver must then hold exactly the oracle's
    // rows already (checked before anything is wiped); then the next round starts afresh
    let mut early_repeats = 0;
    let report = crash::crash_loop(
        || {
            let mut c = Command::new(WEIR);
            c.env("RUST_LOG", "info")
                .env("WEBHOOK_SECRET", SECRET)
                .arg("run")
                .arg(&pipeline);
            c
        },
        4,
        Duration::from_millis(300),
        &logs,
        || {
            let state = receiver.state();
            assert_eq!(state["bad_signatures"], 0);
            assert_eq!(state["repeats_differing"], 0);
            compare(
                &case.windows,
                &receiver.rows("per_dataset"),
                &["datasetName"],
            )
            .expect("a run that finished early: the receiver's rows against the oracle");
            early_repeats += state["repeated_rows"].as_u64().unwrap();
            receiver.reset();
            let _ = std::fs::remove_dir_all(case.path("state"));
        },
    );
    eprintln!("{report:?}");
    let state = receiver.state();
    assert_eq!(state["bad_signatures"], 0);
    assert_eq!(
        state["repeats_differing"], 0,
        "a repeated row differs from its first delivery"
    );
    compare(
        &case.windows,
        &receiver.rows("per_dataset"),
        &["datasetName"],
    )
    .unwrap();
    assert!(case.dead_letters().is_empty());
    let ids = state["webhook_ids"].as_object().unwrap();
    let repeated_ids = ids.values().filter(|n| n.as_u64() > Some(1)).count();
    eprintln!(
        "{} rows, {} requests, {} repeated rows, {} webhook-ids delivered more than once",
        case.windows.len(),
        state["requests"],
        state["repeated_rows"],
        repeated_ids
    );
    assert!(
        state["repeated_rows"].as_u64().unwrap() + early_repeats > 0,
        "no row was delivered twice: the kills came too late"
    );
}
