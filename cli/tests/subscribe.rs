//! Live subscriptions (`GET /subscribe`) on a running `weir run`, followed by independent
//! clients: Python's `websockets` over WebSockets and `http.client` / raw sockets over
//! Server-Sent Events (`tests/subscribe/client.py`), and `weir subscribe`.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/sql.rs"]
mod sql_support;
#[path = "support/subscribe.rs"]
mod subscribe_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sql_support::{free_port, sql_json, try_http, Running};
use subscribe_support::Client;

/// The `weir` binary: cargo's, or `WEIR_TEST_BIN` (a copy, when other checkouts share the
/// target folder and may replace cargo's between the build and the test).
fn weir() -> String {
    std::env::var("WEIR_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").to_string())
}

/// A pipeline of one generator, two views (one with `retain`, whose keys leave) and a
/// window, with `serve` as given.
fn pipeline(dir: &Path, generator: &str, serve: &str) -> PathBuf {
    let yaml = format!(
        r#"name: subscribe-test
sources:
  health:
    generator: {{ kind: service-health, seed: 11, {generator} }}
    event_time: {{ field: timestamp, max_out_of_orderness: 1s }}
views:
  service_status:
    from: health
    key: [serviceName]
    aggregates:
      status: last_value(healthStatus ORDER BY timestamp)
      checks: count(*)
      worst_latency: max(latencyMs)
  recent:
    from: health
    key: [serviceName]
    retain: 2s
    aggregates:
      checks: count(*)
windows:
  health_win:
    from: health
    key: [serviceName]
    tumbling: 1s
    retain: 1h
    aggregates:
      checks: count(*)
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
serve: {serve}
"#
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

type Row = Map<String, Value>;

/// The tests run one at a time: each starts a run and Python clients, and the stuck-client
/// test compares ingestion rates, which the others would disturb on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies a view's snapshot and changes: rows by key.
fn apply_view(messages: &[Value], key: &str) -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    for m in messages {
        let row = |v: &Value| v.as_object().unwrap().clone();
        match m["op"].as_str() {
            Some("snapshot") => {
                for r in m["rows"].as_array().unwrap() {
                    rows.insert(r[key].as_str().unwrap().to_string(), row(r));
                }
            }
            Some("upsert") => {
                rows.insert(m["row"][key].as_str().unwrap().to_string(), row(&m["row"]));
            }
            Some("delete") => {
                rows.remove(m["row"][key].as_str().unwrap());
            }
            Some("finished") => {}
            other => panic!("unexpected message {other:?}: {m}"),
        }
    }
    rows
}

/// Asserts two keyed row sets are equal, showing a few differences (not every row).
fn same(got: &BTreeMap<String, Row>, want: &BTreeMap<String, Row>, what: &str) {
    let mut diffs = Vec::new();
    for k in got.keys().chain(want.keys()) {
        if got.get(k) != want.get(k) {
            diffs.push(format!("{k}: got {:?}, want {:?}", got.get(k), want.get(k)));
        }
    }
    diffs.dedup();
    assert!(
        diffs.is_empty(),
        "{what}: {} of {}/{} keys differ, e.g. {:#?}",
        diffs.len(),
        got.len(),
        want.len(),
        &diffs[..diffs.len().min(5)]
    );
}

fn by_key(rows: Vec<Row>, key: &str) -> BTreeMap<String, Row> {
    rows.into_iter()
        .map(|r| (r[key].as_str().unwrap().to_string(), r))
        .collect()
}

/// The positions of the change messages.
fn positions(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["row"].is_object())
        .map(|m| m["position"].as_u64().unwrap())
        .collect()
}

fn last_is_finished(what: &str, messages: &[Value]) {
    assert_eq!(
        messages.last().map(|m| m["op"].clone()),
        Some(Value::from("finished")),
        "{what} did not end with `finished`: {:?}",
        messages.last()
    );
}

/// Starts `weir run` on [`pipeline`] with `generator` settings, serving HTTP on a free port
/// with a 200 ms refresh and the `serve` settings `extra` (", key: value..."), and waits
/// until it answers.
fn serving(dir: &Path, generator: &str, extra: &str, args: &[&str]) -> (Running, u16) {
    let port = free_port();
    let serve = format!("{{ http: \"127.0.0.1:{port}\", refresh: 200ms{extra} }}");
    let path = pipeline(dir, generator, &serve);
    let mut run = Running::start(&weir(), &path, args);
    run.wait_http(port);
    (run, port)
}

#[test]
fn snapshots_and_changes_add_up_to_the_final_answer_and_resumes_lose_nothing() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let (mut run, port) = serving(
        dir.path(),
        "count: 30000, events_per_second: 6000, keys: 3000",
        "",
        &["--keep-serving"],
    );
    let q = "table=service_status&snapshot=true";
    let ws = Client::follow("ws", port, q, &[]);
    let sse = Client::follow("sse", port, q, &[]);
    let recent = Client::follow("sse", port, "table=recent&snapshot=true", &[]);
    let win = Client::follow("ws", port, "table=health_win&snapshot=true", &[]);
    let open = Client::follow("sse", port, "table=health_win&open=true", &[]);
    let filtered = Client::follow(
        "ws",
        port,
        "table=service_status&snapshot=true&where=checks%20%3E%205%20AND%20status%20%3C%3E%20%27HEALTHY%27",
        &[],
    );
    // a client that leaves after 200 changes and comes back from its last position
    let first = Client::follow("sse", port, q, &["--stop-after", "200"]).all();
    let resume_at = *positions(&first).last().expect("changes before leaving");
    std::thread::sleep(Duration::from_millis(700));
    let query = format!("table=service_status&from={resume_at}");
    let second = Client::follow("ws", port, &query, &[]).all();
    let (ws, sse, recent, win, filtered, open) = (
        ws.all(),
        sse.all(),
        recent.all(),
        win.all(),
        filtered.all(),
        open.all(),
    );
    run.wait_finished(port);
    for (what, m) in [("ws", &ws), ("sse", &sse), ("recent", &recent)] {
        last_is_finished(what, m);
    }
    last_is_finished("resumed", &second);
    // (a) the snapshot and the changes in order give the final SQL answer
    let answer = by_key(
        sql_json(port, "SELECT * FROM service_status"),
        "serviceName",
    );
    assert!(answer.len() > 500, "{} keys", answer.len());
    same(&apply_view(&ws, "serviceName"), &answer, "WebSocket");
    same(&apply_view(&sse, "serviceName"), &answer, "SSE");
    let answer = by_key(sql_json(port, "SELECT * FROM recent"), "serviceName");
    let deletes = recent.iter().filter(|m| m["op"] == "delete").count();
    assert!(deletes > 0, "no key left `recent` (retain 2s)");
    same(
        &apply_view(&recent, "serviceName"),
        &answer,
        "a view with retain",
    );
    let answer = by_key(
        sql_json(
            port,
            "SELECT * FROM service_status WHERE checks > 5 AND status <> 'HEALTHY'",
        ),
        "serviceName",
    );
    same(&apply_view(&filtered, "serviceName"), &answer, "with where");
    // every change has the next position; the clients subscribed at their own snapshots,
    // so they are compared after the later one
    let all = positions(&ws);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "positions skip");
    let at = |m: &[Value]| m[0]["position"].as_u64().unwrap();
    let after = |v: &[u64], p: u64| -> Vec<u64> { v.iter().copied().filter(|x| *x > p).collect() };
    let common = at(&ws).max(at(&sse));
    let (a, b) = (after(&all, common), after(&positions(&sse), common));
    assert!(a.len() > 100, "{} changes in common", a.len());
    assert!(
        a == b,
        "the transports differ after {common}: {} and {} changes",
        a.len(),
        b.len()
    );
    // (b) leaving and resuming from the last position seen: nothing lost, nothing repeated
    let mut resumed = positions(&first);
    resumed.extend(positions(&second));
    let common = at(&first).max(at(&ws));
    let (got, want) = (after(&resumed, common), after(&all, common));
    assert!(
        got == want,
        "resumed at {resume_at}: {} changes after {common}, the uninterrupted client got {}",
        got.len(),
        want.len()
    );
    let common = resume_at.max(at(&ws));
    let tail: Vec<&Value> = ws
        .iter()
        .filter(|m| m["position"].as_u64() > Some(common))
        .collect();
    let got: Vec<&Value> = second
        .iter()
        .filter(|m| m["position"].as_u64() > Some(common))
        .collect();
    assert!(got == tail, "the resumed messages differ");
    // windows: the snapshot's final rows and the inserts are the final SQL answer
    let mut windows: Vec<(String, String, u64)> = Vec::new();
    for m in &win {
        let mut add = |r: &Value| {
            if r["is_final"] == true {
                let k = r["serviceName"].as_str().unwrap().to_string();
                let s = r["window_start"].as_str().unwrap().to_string();
                windows.push((s, k, r["checks"].as_u64().unwrap()));
            }
        };
        match m["op"].as_str() {
            Some("snapshot") => m["rows"].as_array().unwrap().iter().for_each(&mut add),
            Some("insert") => add(&m["row"]),
            Some("finished") => {}
            other => panic!("a window without open=true sent {other:?}"),
        }
    }
    windows.sort();
    let mut answer: Vec<(String, String, u64)> = sql_json(
        port,
        "SELECT serviceName, window_start, checks FROM health_win WHERE is_final",
    )
    .into_iter()
    .map(|r| {
        (
            r["window_start"].as_str().unwrap().to_string(),
            r["serviceName"].as_str().unwrap().to_string(),
            r["checks"].as_u64().unwrap(),
        )
    })
    .collect();
    answer.sort();
    assert!(answer.len() > 100, "{} windows", answer.len());
    assert_eq!(windows, answer, "window rows");
    // with open=true: updates of open windows (is_final false), then each window's final row
    let mut open_rows: BTreeMap<(String, String), bool> = BTreeMap::new();
    for m in &open {
        let Some(op) = m["op"].as_str().filter(|op| *op != "finished") else {
            continue;
        };
        let r = &m["row"];
        let id = (
            r["window_start"].as_str().unwrap().to_string(),
            r["serviceName"].as_str().unwrap().to_string(),
        );
        match op {
            "update" => {
                assert_eq!(r["is_final"], false, "{m}");
                assert_ne!(
                    open_rows.get(&id),
                    Some(&true),
                    "an update after the final row: {m}"
                );
                open_rows.insert(id, false);
            }
            "insert" => {
                assert_eq!(r["is_final"], true, "{m}");
                open_rows.insert(id, true);
            }
            other => panic!("{other}: {m}"),
        }
    }
    let updated = open.iter().filter(|m| m["op"] == "update").count();
    assert!(updated > 100, "{updated} updates of open windows");
    assert!(
        open_rows.values().all(|f| *f),
        "every window seen open was emitted by the end"
    );
    // `weir subscribe` prints the same messages, one JSON line each
    let out = Command::new(weir())
        .args(["subscribe", "service_status", "--snapshot", "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "a finished run: the snapshot, then `finished`"
    );
    let answer = by_key(
        sql_json(port, "SELECT * FROM service_status"),
        "serviceName",
    );
    same(
        &apply_view(&lines, "serviceName"),
        &answer,
        "weir subscribe",
    );
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// Events counted by the run (`weir_status`).
fn events_in(port: u16) -> f64 {
    let r = sql_json(port, "SELECT max(events_in) AS n FROM weir_status");
    r[0]["n"].as_f64().unwrap_or(0.0)
}

/// Events per second over `secs`.
fn rate(port: u16, secs: u64) -> f64 {
    let (a, t) = (events_in(port), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    (events_in(port) - a) / t.elapsed().as_secs_f64()
}

fn metric(port: u16, name: &str) -> f64 {
    let a = sql_support::http(port, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&a.body).to_string();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_ingestion_keeps_its_rate() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let (run, port) = serving(
        dir.path(),
        "events_per_second: 4000, keys: 20000, skew: 0.5",
        "",
        &[],
    );
    // a reader that keeps up, all along
    let healthy = Client::follow("sse", port, "table=service_status", &["--seconds", "90"]);
    std::thread::sleep(Duration::from_secs(3));
    let before = rate(port, 6);
    let stuck = Client::start(&[
        "stuck",
        "--port",
        &port.to_string(),
        "--query",
        "table=service_status",
        "--seconds",
        "30",
    ]);
    assert_eq!(
        stuck.next(Duration::from_secs(30)).unwrap()["subscribed"],
        true
    );
    let stuck_ws = Client::start(&[
        "stuck-ws",
        "--port",
        &port.to_string(),
        "--query",
        "table=service_status",
        "--seconds",
        "30",
    ]);
    assert_eq!(
        stuck_ws.next(Duration::from_secs(30)).unwrap()["subscribed"],
        true
    );
    let stuck_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let during = rate(port, 6);
    // its buffers (the kernel's, the server's) fill first, then it falls behind
    while metric(port, "weir_subscribers_dropped_total") < 2.0
        && stuck_at.elapsed() < Duration::from_secs(28)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let dropped = metric(port, "weir_subscribers_dropped_total");
    eprintln!(
        "ingestion: {before:.0} events/s without, {during:.0} events/s with two stuck \
         subscribers (SSE, WebSocket); dropped {dropped}"
    );
    assert!(
        dropped >= 2.0,
        "the stuck subscribers were not dropped ({dropped})"
    );
    assert!(
        during >= 0.9 * before,
        "ingestion slowed from {before:.0} to {during:.0} events/s"
    );
    for client in [stuck, stuck_ws] {
        let report = client.all();
        let report = report.last().unwrap();
        assert_eq!(report["closed"], true, "its connection was cut: {report}");
        eprintln!("stuck subscriber: {report}");
    }
    // the reader that kept up is still subscribed and was not dropped
    assert_eq!(metric(port, "weir_subscribers"), 1.0);
    assert_eq!(metric(port, "weir_subscribers_dropped_total"), dropped);
    for _ in 0..1000 {
        let m = healthy.next(Duration::from_secs(10)).expect("changes");
        assert!(m.get("error").is_none(), "{m}");
    }
    drop(healthy);
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An answer's status and `error.code`, for a request refused before any stream.
fn refused(port: u16, query: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let path = format!("/subscribe?{query}");
    let a = try_http(port, "GET", &path, headers, b"").unwrap();
    let v: Value = serde_json::from_slice(&a.body).unwrap_or_default();
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    let message = v["error"]["message"].as_str().unwrap_or("").to_string();
    (a.status, code, message)
}

/// Below this, 1,000 idle subscribers are cheap enough (docs/src/sql/subscriptions.md).
const IDLE_1000_MAX_MIB: u64 = 64;

#[test]
fn a_thousand_idle_subscribers_are_cheap_and_the_next_is_refused() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let (run, port) = serving(dir.path(), "events_per_second: 200, keys: 200", "", &[]);
    let pid = run.child.id();
    // warm up: the hub runs and the table is tracked
    let one = Client::follow("sse", port, "table=service_status", &["--stop-after", "5"]).all();
    assert!(one.len() >= 5);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);
    let mut idle = Client::start(&[
        "idle",
        "--port",
        &port.to_string(),
        "--query",
        "table=service_status",
        "--count",
        "1000",
    ]);
    assert_eq!(idle.next(Duration::from_secs(120)).unwrap()["ready"], 1000);
    assert_eq!(metric(port, "weir_subscribers"), 1000.0);
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {before} KiB before, {after} KiB with 1,000 idle subscribers: +{grown} KiB \
         ({:.1} KiB each)",
        grown as f64 / 1000.0
    );
    assert!(
        grown < IDLE_1000_MAX_MIB * 1024,
        "1,000 idle subscribers cost {grown} KiB"
    );
    // (e) the 1,001st is refused, and ingestion went on
    let (status, code, message) = refused(port, "table=service_status", &[]);
    assert_eq!(
        (status, code.as_str()),
        (503, "too_many_subscriptions"),
        "{message}"
    );
    assert!(message.contains("serve.max_subscriptions"), "{message}");
    // closing them gives their slots back
    drop(idle.child.stdin.take());
    let _ = idle.child.wait();
    let started = Instant::now();
    while metric(port, "weir_subscribers") > 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "slots not given back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn refusals_are_clear_tokens_and_limits_apply_and_old_positions_expire() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let (run, port) = serving(
        dir.path(),
        "events_per_second: 3000, keys: 2000",
        ", token: sekret, max_subscriptions_per_token: 2, subscription_retain: 500",
        &[],
    );
    let auth = [("Authorization", "Bearer sekret")];
    // no token, a wrong one
    let (status, code, _) = refused(port, "table=service_status", &[]);
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    let (status, _, _) = refused(
        port,
        "table=service_status",
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(status, 401);
    // bad SQL in `where`: the database's message
    let (status, code, message) = refused(port, "table=service_status&where=nope%20%3D%201", &auth);
    assert_eq!((status, code.as_str()), (400, "sql_error"));
    assert!(message.contains("nope"), "{message}");
    let (status, _, message) = refused(port, "table=service_status&where=checks%20%2B", &auth);
    assert_eq!(status, 400, "{message}");
    let (status, code, _) = refused(port, "table=weir_status", &auth);
    assert_eq!((status, code.as_str()), (404, "unknown_table"));
    let (status, code, _) = refused(port, "table=recent&snapshot=true&from=1", &auth);
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    // a position of no run of this process
    let (status, code, message) = refused(port, "table=service_status&from=5", &auth);
    assert_eq!(
        (status, code.as_str()),
        (410, "position_unknown"),
        "{message}"
    );
    assert!(message.contains("snapshot=true"), "{message}");
    // over the per-token limit: 429; the WebSocket handshake is refused alike
    let token = ["--token", "sekret", "--seconds", "60"];
    let a = Client::follow("sse", port, "table=service_status&snapshot=true", &token);
    let first = a.next(Duration::from_secs(30)).unwrap();
    assert_eq!(first["op"], "snapshot");
    let snapshot_at = first["position"].as_u64().unwrap();
    let b = Client::follow("ws", port, "table=recent", &token);
    let started = Instant::now();
    while metric_with_token(port) < 2.0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, code, _) = refused(port, "table=service_status", &auth);
    assert_eq!(
        (status, code.as_str()),
        (429, "too_many_subscriptions_per_token")
    );
    let c = Client::follow("ws", port, "table=service_status", &token).all();
    assert_eq!(c[0]["http_status"], 429, "{c:?}");
    assert_eq!(
        c[0]["body"]["error"]["code"],
        "too_many_subscriptions_per_token"
    );
    drop(b);
    // once more than 500 changes went by, the snapshot's position has expired
    let started = Instant::now();
    loop {
        let m = a.next(Duration::from_secs(30)).expect("changes");
        if m["position"].as_u64().unwrap() > snapshot_at + 1500 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    drop(a);
    std::thread::sleep(Duration::from_millis(500));
    let query = format!("table=service_status&from={snapshot_at}");
    let (status, code, message) = refused(port, &query, &auth);
    assert_eq!(
        (status, code.as_str()),
        (410, "position_expired"),
        "{message}"
    );
    assert!(
        message.contains("subscribe again with snapshot=true"),
        "{message}"
    );
    // `weir subscribe` reports a refusal as the user's error (exit code 1)
    let out = Command::new(weir())
        .args([
            "subscribe",
            "service_status",
            "--from",
            &snapshot_at.to_string(),
        ])
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "sekret",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("position_expired"), "{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// `weir_subscribers` on an endpoint with the test's token.
fn metric_with_token(port: u16) -> f64 {
    let a = sql_support::http(
        port,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer sekret")],
        b"",
    );
    let text = String::from_utf8_lossy(&a.body).to_string();
    text.lines()
        .find(|l| l.starts_with("weir_subscribers{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
