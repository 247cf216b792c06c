//! SQL on a running engine, driven as users do: `weir run` with `serve`, then HTTP (JSON and
//! Arrow IPC), the real `psql` (simple query protocol), psycopg (extended protocol, with
//! parameters) and `weir sql`. Results are checked against a reference computed from the
//! input file alone (`tests/sql/health_reference.py`).

#[path = "support/crash.rs"]
mod crash;
#[path = "support/sql.rs"]
mod sql_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crash::venv_python;
use serde_json::Value;
use sql_support::{free_port, http, sql_json, try_post_sql, Running};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Service-health events with 1% bad lines, written by `weir generate`.
fn health_events(dir: &Path, count: u64) -> PathBuf {
    let path = dir.join("events.ndjson");
    let o = Command::new(WEIR)
        .args(["generate", "service-health", "--count"])
        .arg(count.to_string())
        .args([
            "--seed",
            "11",
            "--keys",
            "300",
            "--bad-frac",
            "0.01",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    path
}

fn health_pipeline(dir: &Path, source: &str, serve: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        r#"name: sql-test
sources:
  health:
{source}
    event_time: {{ field: timestamp, max_out_of_orderness: 2s }}
views:
  service_status:
    from: health
    key: [serviceName]
    aggregates:
      status: last_value(healthStatus ORDER BY timestamp)
      last_seen: max(timestamp)
      checks: count(*)
      worst_latency: max(latencyMs)
    sinks: [status_out]
windows:
  health_win:
    from: health
    key: [serviceName]
    tumbling: {window}
    aggregates:
      checks: count(*)
      max_latency: max(latencyMs)
    sinks: [out]
sinks:
  out: {{ file: {{ path: out/health_win.ndjson }} }}
  status_out: {{ file: {{ path: out/service_status.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
serve: {serve}
{extra}"#,
        window = if source.contains("generator") {
            "2s"
        } else {
            "1m"
        },
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn reference(events: &Path) -> Value {
    let o = Command::new(venv_python())
        .arg(repo().join("tests/sql/health_reference.py"))
        .arg(events)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn psql(port: u16, password: Option<&str>, query: &str) -> std::process::Output {
    sql_support::psql_command(port, password)
        .args(["-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-c", query])
        .output()
        .expect("psql is missing: install Debian's postgresql-client (.ci/run does)")
}

fn psycopg(port: u16, password: Option<&str>, queries: Value) -> Vec<Value> {
    psycopg_in(port, password, queries, "text")
}

/// [`psycopg`], asking for results in `format` (`text` or `binary`).
fn psycopg_in(port: u16, password: Option<&str>, queries: Value, format: &str) -> Vec<Value> {
    let o = Command::new(venv_python())
        .arg(repo().join("tests/sql/pg_client.py"))
        .arg(port.to_string())
        .arg(password.unwrap_or("-"))
        .arg(queries.to_string())
        .arg(format)
        .output()
        .unwrap();
    assert!(o.status.success(), "psycopg: {}", text(&o.stderr));
    match serde_json::from_slice(&o.stdout).unwrap() {
        Value::Array(a) => a,
        other => panic!("{other}"),
    }
}

#[test]
fn a_finished_run_answers_like_the_reference_over_http_psql_and_psycopg() {
    let dir = tempfile::tempdir().unwrap();
    let events = health_events(dir.path(), 40_000);
    let (hp, pp) = (free_port(), free_port());
    let pipeline = health_pipeline(
        dir.path(),
        "    file: { path: events.ndjson }\n    format: json\n    schema: service-health",
        &format!("{{ http: \"127.0.0.1:{hp}\", postgres: \"127.0.0.1:{pp}\" }}"),
        "",
    );
    let mut run = Running::start(WEIR, &pipeline, &["--keep-serving", "--parallelism", "2"]);
    run.wait_http(hp);
    run.wait_finished(hp);

    let want = reference(&events);
    let services = want["services"].as_object().unwrap();
    let status = sql_json(hp, "SELECT * FROM weir_status");
    assert_eq!(status.len(), 1);
    let good = status[0]["events_in"].as_u64().unwrap() - status[0]["bad"].as_u64().unwrap();
    assert_eq!(
        good,
        want["good"].as_u64().unwrap(),
        "events the reference counts as good"
    );
    assert_eq!(status[0]["events_in"].as_u64(), Some(40_000));

    // HTTP JSON: every key with the reference's values
    let rows = sql_json(hp, "SELECT * FROM service_status ORDER BY serviceName");
    assert_eq!(rows.len(), services.len());
    let mut ties = 0;
    for r in &rows {
        let name = r["serviceName"].as_str().unwrap();
        let w = &services[name];
        assert_eq!(r["checks"], w["checks"], "{name}");
        assert_eq!(r["last_seen"], w["last_seen"], "{name}");
        assert_eq!(r["worst_latency"], w["worst_latency"], "{name}");
        let latest: Vec<&str> = w["latest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            latest.contains(&r["status"].as_str().unwrap()),
            "{name}: {r:?} vs {latest:?}"
        );
        if latest.len() > 1 {
            ties += 1;
        }
    }
    assert!(
        ties < services.len() / 10,
        "too many ties to check statuses: {ties}"
    );

    // point queries (the key index) and others (a filtered scan) give the same rows
    let one = rows[7]["serviceName"].as_str().unwrap();
    let point = sql_json(
        hp,
        &format!("SELECT * FROM service_status WHERE serviceName = '{one}'"),
    );
    assert_eq!(point, vec![rows[7].clone()]);
    let listed = sql_json(
        hp,
        &format!("SELECT * FROM service_status WHERE serviceName IN ('{one}', 'no-such') ORDER BY serviceName"),
    );
    assert_eq!(listed, point);
    assert!(sql_json(
        hp,
        "SELECT * FROM service_status WHERE serviceName = 'no-such'"
    )
    .is_empty());

    // psql: the spec's question, "which services are unhealthy right now"
    let o = psql(
        pp,
        None,
        "SELECT serviceName, status FROM service_status WHERE status <> 'HEALTHY' ORDER BY serviceName",
    );
    assert!(o.status.success(), "psql: {}", text(&o.stderr));
    let got: Vec<(String, String)> = text(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (a, b) = l.split_once('|').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    let want_unhealthy: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["status"] != "HEALTHY")
        .map(|r| {
            (
                r["serviceName"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!want_unhealthy.is_empty());
    assert_eq!(got, want_unhealthy);
    // every unambiguous latest status agrees with the reference
    for (name, st) in &got {
        let latest = services[name]["latest"].as_array().unwrap();
        if latest.len() == 1 {
            assert_eq!(latest[0], st.as_str(), "{name}");
        }
    }

    // the windows: every emitted row is final, equal to the sink's file
    let sink_rows = weir_tests::read_ndjson(&dir.path().join("out/health_win.ndjson"));
    let counts = sql_json(
        hp,
        "SELECT count(*) AS n, sum(checks) AS checks, count(*) FILTER (WHERE NOT is_final) AS open FROM health_win",
    );
    assert_eq!(counts[0]["n"].as_u64(), Some(sink_rows.len() as u64));
    assert_eq!(counts[0]["open"].as_u64(), Some(0));
    let late = status[0]["late"].as_u64().unwrap();
    assert_eq!(counts[0]["checks"].as_u64(), Some(good - late));

    // psycopg: parameters through the extended protocol (text, integer, timestamp results)
    let some = rows[rows.len() / 2]["serviceName"]
        .as_str()
        .unwrap()
        .to_string();
    let answers = psycopg(
        pp,
        None,
        serde_json::json!([
            ["SELECT serviceName, checks, last_seen FROM service_status WHERE serviceName = %s", [some]],
            ["SELECT count(*) AS n FROM service_status WHERE checks > %s", [100]],
            ["SELECT serviceName, window_start FROM health_win WHERE serviceName = %s ORDER BY window_start LIMIT 1", [some]],
            ["SELECT nope FROM service_status", []],
        ]),
    );
    let w = &services[&some];
    assert_eq!(
        answers[0]["rows"],
        serde_json::json!([[some, w["checks"], w["last_seen"]]])
    );
    let over_100 = services
        .values()
        .filter(|s| s["checks"].as_u64().unwrap() > 100)
        .count();
    assert_eq!(answers[1]["rows"], serde_json::json!([[over_100]]));
    let first_window = answers[2]["rows"][0][1].as_str().unwrap();
    assert!(
        first_window.ends_with("+00:00"),
        "a timestamptz: {first_window}"
    );
    assert_eq!(answers[3]["sqlstate"], "42601", "{}", answers[3]);

    // exact numbers: decimals are NUMERIC (FLOAT8 rounded them), in text (psql, psycopg) and
    // binary (psycopg) alike; unsigned integers stay INT8, and one over 2^63 is an error (it
    // was a null)
    let exact = "SELECT CAST('12345678901234567890.123' AS DECIMAL(38, 3)) AS d, \
                 CAST('-0.0001' AS DECIMAL(10, 4)) AS small, CAST(NULL AS DECIMAL(5, 2)) AS none, \
                 arrow_cast(5, 'UInt64') AS unsigned";
    let o = psql(pp, None, exact);
    assert!(o.status.success(), "psql: {}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        "12345678901234567890.123|-0.0001||5"
    );
    for format in ["text", "binary"] {
        let answers = psycopg_in(pp, None, serde_json::json!([[exact, []]]), format);
        assert_eq!(
            answers[0]["rows"],
            serde_json::json!([["12345678901234567890.123", "-0.0001", null, 5]]),
            "{format}: {}",
            answers[0]
        );
        assert_eq!(
            answers[0]["types"],
            serde_json::json!([1700, 1700, 1700, 20])
        );
    }
    let o = psql(
        pp,
        None,
        "SELECT arrow_cast('18446744073709551615', 'UInt64') AS big",
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("does not fit in int8"),
        "{}",
        text(&o.stderr)
    );
    // a parameter compared with an unsigned counter is described as int8, as before
    let answers = psycopg(
        pp,
        None,
        serde_json::json!([[
            "SELECT count(*) AS n FROM weir_status WHERE events_in > %s",
            [1.5]
        ]]),
    );
    assert_eq!(
        answers[0]["rows"],
        serde_json::json!([[1]]),
        "{}",
        answers[0]
    );

    // Arrow IPC over HTTP
    let a = http(
        hp,
        "POST",
        "/sql",
        &[("Accept", "application/vnd.apache.arrow.stream")],
        b"SELECT serviceName, checks FROM service_status ORDER BY checks DESC LIMIT 3",
    );
    assert_eq!(a.status, 200);
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(a.body), None).unwrap();
    assert_eq!(reader.schema().field(1).name(), "checks");
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 3);

    // `weir sql`: a table on a terminal, JSON and CSV
    let o = Command::new(WEIR)
        .args(["sql", "--server", &format!("http://127.0.0.1:{hp}")])
        .args([
            "--format",
            "csv",
            "SELECT serviceName, checks FROM service_status ORDER BY serviceName LIMIT 2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let csv = text(&o.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "serviceName,checks");
    assert_eq!(
        lines[1],
        format!(
            "{},{}",
            rows[0]["serviceName"].as_str().unwrap(),
            rows[0]["checks"]
        )
    );
    let o = Command::new(WEIR)
        .args(["sql", "--server", &format!("http://127.0.0.1:{hp}")])
        .arg("SELECT count(*) AS keys FROM service_status")
        .output()
        .unwrap();
    let table = text(&o.stdout);
    assert!(
        table.contains("| keys") && table.contains(&format!("| {} ", services.len())),
        "{table}"
    );

    let (code, out, err) = run.stop();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("run finished"), "{out}");

    // the view's sink: a changelog of upserts, then every key once as the final snapshot
    let log = weir_tests::read_ndjson(&dir.path().join("out/service_status.ndjson"));
    let snapshot: Vec<_> = log.iter().filter(|r| r["op"] == "snapshot").collect();
    assert_eq!(snapshot.len(), rows.len());
    let mut last: BTreeMap<String, &serde_json::Map<String, Value>> = BTreeMap::new();
    for r in &log {
        assert!(r["op"] == "upsert" || r["op"] == "snapshot", "{r:?}");
        last.insert(r["serviceName"].as_str().unwrap().to_string(), r);
    }
    for r in &rows {
        let name = r["serviceName"].as_str().unwrap();
        let l = last[name];
        for col in ["status", "last_seen", "checks", "worst_latency"] {
            assert_eq!(l[col], r[col], "{name} {col}");
        }
    }
}

#[test]
fn open_windows_show_before_they_close_and_every_snapshot_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let hp = free_port();
    let pipeline = health_pipeline(
        dir.path(),
        "    generator: { kind: service-health, events_per_second: 4000, seed: 3 }",
        &format!("{{ http: \"127.0.0.1:{hp}\", refresh: 200ms }}"),
        "",
    );
    let mut run = Running::start(WEIR, &pipeline, &["--parallelism", "2"]);
    run.wait_http(hp);
    // the status table lists the partitions from the start
    assert_eq!(sql_json(hp, "SELECT source FROM weir_status").len(), 1);
    // (window start, key) -> seen open, seen final
    let mut seen: BTreeMap<(String, String), (bool, bool)> = BTreeMap::new();
    let mut snapshots = std::collections::BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        // one query reads one snapshot: the view's counts add up to the events counted by then
        let r = sql_json(
            hp,
            "SELECT (SELECT coalesce(sum(checks), 0) FROM service_status) AS in_view, \
                    (SELECT max(events_in - bad) FROM weir_status) AS counted, \
                    (SELECT max(snapshot) FROM weir_status) AS snapshot",
        );
        let snap = r[0]["snapshot"].as_u64().unwrap_or(0);
        if snap > 0 {
            assert_eq!(r[0]["in_view"], r[0]["counted"], "snapshot {snap} is torn");
            snapshots.insert(snap);
        }
        for w in sql_json(
            hp,
            "SELECT serviceName, window_start, is_final FROM health_win",
        ) {
            let k = (
                w["window_start"].as_str().unwrap().to_string(),
                w["serviceName"].as_str().unwrap().to_string(),
            );
            let e = seen.entry(k).or_default();
            if w["is_final"].as_bool().unwrap() {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(snapshots.len() >= 10, "snapshots seen: {snapshots:?}");
    let both = seen.values().filter(|(open, fin)| *open && *fin).count();
    assert!(
        both > 0,
        "no window was seen open and then final: {} windows seen",
        seen.len()
    );
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
    // the view's changelog: upserts of the keys changed at each snapshot; counts only grow
    let log = weir_tests::read_ndjson(&dir.path().join("out/service_status.ndjson"));
    assert!(log.len() > 10, "{} upserts", log.len());
    let mut checks: BTreeMap<String, u64> = BTreeMap::new();
    for r in &log {
        assert_eq!(
            r["op"], "upsert",
            "a stopped run writes no final snapshot: {r:?}"
        );
        let c = r["checks"].as_u64().unwrap();
        let before = checks.insert(r["serviceName"].as_str().unwrap().to_string(), c);
        assert!(before.is_none_or(|b| b < c), "{r:?} after {before:?}");
    }
}

#[test]
fn refusals_give_the_right_errors_and_the_engine_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let (hp, pp) = (free_port(), free_port());
    let pipeline = health_pipeline(
        dir.path(),
        "    generator: { kind: service-health, events_per_second: 1000, seed: 5 }",
        &format!(
            "{{ http: \"127.0.0.1:{hp}\", postgres: \"127.0.0.1:{pp}\", token: \"${{TEST_SQL_TOKEN}}\", password: \"${{TEST_SQL_PASSWORD}}\", query_timeout: 1s, query_memory_mb: 4 }}"
        ),
        "",
    );
    let token = "s3cret-token-9f2c";
    let password = "pg-pass-77a1";
    let mut c = Command::new(WEIR);
    c.arg("run")
        .arg(&pipeline)
        .env("TEST_SQL_TOKEN", token)
        .env("TEST_SQL_PASSWORD", password)
        .env("RUST_LOG", "info");
    let mut run = Running::spawn(c);
    run.wait_http(hp);
    let auth = format!("Bearer {token}");
    let ask = |q: &str, headers: &[(&str, &str)]| http(hp, "POST", "/sql", headers, q.as_bytes());

    let a = ask("SELECT count(*) FROM service_status", &[]);
    assert_eq!(a.status, 401, "no token");
    assert_eq!(a.json()["error"]["code"], "unauthorized");
    let a = ask(
        "SELECT 1",
        &[("Authorization", "Bearer wrong-token-000000")],
    );
    assert_eq!(a.status, 401, "wrong token");
    for (q, code) in [
        ("DROP TABLE service_status", "read_only"),
        ("CREATE TABLE t AS SELECT 1", "read_only"),
        (
            "INSERT INTO service_status VALUES ('x', 'y', 1, 1, 1)",
            "read_only",
        ),
        ("COPY service_status TO '/tmp/weir-copy.csv'", "read_only"),
        ("SET datafusion.execution.batch_size = 1", "read_only"),
        ("SELEC 1", "sql_error"),
        ("SELECT nope FROM service_status", "sql_error"),
        ("SELECT * FROM no_such_table", "sql_error"),
        (
            "SELECT count(*) FROM generate_series(1, 100000000) a, generate_series(1, 100000000) b",
            "timeout",
        ),
        // a query needing more than `query_memory_mb` (4 MiB) is refused, not run
        (
            "SELECT count(DISTINCT value) FROM generate_series(1, 5000000)",
            "memory_limit",
        ),
    ] {
        let started = Instant::now();
        let a = ask(q, &[("Authorization", &auth)]);
        assert_eq!(a.status, 400, "{q}: {}", text(&a.body));
        let body = a.json();
        assert_eq!(body["error"]["code"], code, "{q}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{q} took {:?}",
            started.elapsed()
        );
    }
    assert!(!Path::new("/tmp/weir-copy.csv").exists());
    // `weir sql`: a refused query is a user error (1), an unreachable engine a failure (2)
    let o = Command::new(WEIR)
        .args([
            "sql",
            "--server",
            &format!("http://127.0.0.1:{hp}"),
            "SELEC 1",
        ])
        .env("WEIR_SQL_TOKEN", token)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).starts_with("error: sql_error: "),
        "{}",
        text(&o.stderr)
    );
    let o = Command::new(WEIR)
        .args([
            "sql",
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("cannot reach"),
        "{}",
        text(&o.stderr)
    );
    // the engine still runs and answers
    let a = ask(
        "SELECT sum(checks) AS n FROM service_status",
        &[("Authorization", &auth)],
    );
    assert_eq!(a.status, 200, "{}", text(&a.body));

    // Postgres: the password is required; errors carry SQLSTATEs
    let o = psql(pp, Some("not-the-password"), "SELECT 1");
    assert!(!o.status.success(), "a wrong password must be refused");
    let o = psql(pp, Some(password), "SELECT count(*) FROM service_status");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let answers = psycopg(
        pp,
        Some(password),
        serde_json::json!([
            ["DELETE FROM service_status", []],
            ["SELECT count(*) FROM generate_series(1, 100000000) a, generate_series(1, 100000000) b", []],
            ["SELECT 41 + %s AS answer", [1]],
            ["SELECT count(DISTINCT value) FROM generate_series(1, 5000000)", []],
        ]),
    );
    assert_eq!(answers[0]["sqlstate"], "25006", "{}", answers[0]);
    assert_eq!(answers[1]["sqlstate"], "57014", "{}", answers[1]);
    assert_eq!(answers[2]["rows"], serde_json::json!([[42]]));
    assert_eq!(answers[3]["sqlstate"], "53200", "{}", answers[3]);

    let (code, out, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
    for secret in [token, password] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} was printed"
        );
    }
    let o = Command::new(WEIR)
        .arg("validate")
        .arg(&pipeline)
        .env("TEST_SQL_TOKEN", token)
        .env("TEST_SQL_PASSWORD", password)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan = text(&o.stdout);
    assert!(plan.contains("bearer token required") && plan.contains("password required"));
    assert!(!plan.contains(token) && !plan.contains(password), "{plan}");
}

#[test]
fn serving_beyond_loopback_needs_a_token_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let pipeline = health_pipeline(
        dir.path(),
        "    generator: { kind: service-health, count: 1000, seed: 5 }",
        &format!("{{ http: \"0.0.0.0:{port}\" }}"),
        "",
    );
    let o = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("without authentication")
            && err.contains("--insecure")
            && err.contains("serve.token"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// Per service: events counted by the view, after the run finished.
fn view_counts(port: u16) -> BTreeMap<String, u64> {
    sql_json(port, "SELECT serviceName, checks FROM service_status")
        .into_iter()
        .map(|r| {
            (
                r["serviceName"].as_str().unwrap().to_string(),
                r["checks"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_view_stopped_and_restored_from_its_checkpoint_counts_every_event_once() {
    let source =
        "    generator: { kind: service-health, count: 120000, events_per_second: 40000, seed: 9 }";
    // an uninterrupted run
    let dir = tempfile::tempdir().unwrap();
    let hp = free_port();
    let pipeline = health_pipeline(
        dir.path(),
        source,
        &format!("{{ http: \"127.0.0.1:{hp}\" }}"),
        "",
    );
    let mut run = Running::start(WEIR, &pipeline, &["--keep-serving", "--parallelism", "2"]);
    run.wait_http(hp);
    run.wait_finished(hp);
    let want = view_counts(hp);
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
    let total: u64 = want.values().sum();
    assert!(total > 100_000, "{total}");

    // stopped (SIGTERM: a final checkpoint) part-way, then restored and run to the end
    let dir = tempfile::tempdir().unwrap();
    let hp = free_port();
    let pipeline = health_pipeline(
        dir.path(),
        source,
        &format!("{{ http: \"127.0.0.1:{hp}\" }}"),
        "checkpoint: { dir: state, interval: 300ms }\n",
    );
    let mut first = Running::start(WEIR, &pipeline, &["--parallelism", "2"]);
    first.wait_http(hp);
    std::thread::sleep(Duration::from_millis(1200));
    let part = sql_json(hp, "SELECT max(events_in) AS n FROM weir_status")[0]["n"]
        .as_u64()
        .unwrap_or(0);
    let (code, _, err) = first.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(part > 0 && part < 120_000, "stopped part-way: {part}");
    let mut second = Running::start(WEIR, &pipeline, &["--keep-serving", "--parallelism", "1"]);
    second.wait_http(hp);
    second.wait_finished(hp);
    let got = view_counts(hp);
    let status = sql_json(hp, "SELECT events_in, bad FROM weir_status");
    let (code, out, err) = second.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("restored from checkpoint"), "{out}");
    assert_eq!(status[0]["events_in"].as_u64(), Some(120_000));
    assert_eq!(
        got.values().sum::<u64>(),
        status[0]["events_in"].as_u64().unwrap() - status[0]["bad"].as_u64().unwrap()
    );
    assert_eq!(
        got, want,
        "per-key counts after a restore differ from an uninterrupted run"
    );
}

/// A restart restores a view from its checkpoint: from the moment the endpoint accepts
/// connections, every query either counts at least what the view held before the stop, or
/// is refused as `starting` (503 over HTTP), never answered from tables still empty. The
/// windows emitted before the stop are still there (`retain`, 1 hour by default), each
/// once.
#[test]
fn a_restarted_view_is_never_answered_empty_while_it_restores() {
    let source =
        "    generator: { kind: service-health, count: 10000000, events_per_second: 3000, seed: 5 }";
    let dir = tempfile::tempdir().unwrap();
    let hp = free_port();
    let pipeline = health_pipeline(
        dir.path(),
        source,
        &format!("{{ http: \"127.0.0.1:{hp}\" }}"),
        "checkpoint: { dir: state }\n",
    );
    let total = "SELECT count(*) AS keys, sum(checks) AS checks FROM service_status";
    let checks = |rows: &[serde_json::Map<String, Value>]| rows[0]["checks"].as_u64().unwrap_or(0);
    let mut first = Running::start(WEIR, &pipeline, &[]);
    first.wait_http(hp);
    let started = Instant::now();
    let emitted = "SELECT count(*) AS n, sum(checks) AS checks, \
                   max(CAST(window_end AS BIGINT)) AS end_ms FROM health_win WHERE is_final";
    let windows = |rows: &[serde_json::Map<String, Value>]| rows[0]["n"].as_u64().unwrap_or(0);
    let before = loop {
        let n = checks(&sql_json(hp, total));
        if (n > 3000 && windows(&sql_json(hp, emitted)) >= 20)
            || started.elapsed() > Duration::from_secs(30)
        {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // the windows emitted so far (in order of their end: each end's windows at once)
    let kept = sql_json(hp, emitted);
    let end_ms = kept[0]["end_ms"].as_i64().unwrap();
    let (code, _, err) = first.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(before > 3000, "the first run counted {before} checks");

    // the same pipeline again: asked every few milliseconds from its first connection
    let second = Running::start(WEIR, &pipeline, &[]);
    let (mut answered, mut starting) = (0, 0);
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(60) && answered < 50 {
        let Ok(a) = try_post_sql(hp, total) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        match a.status {
            200 => {
                let rows: Vec<serde_json::Map<String, Value>> =
                    serde_json::from_slice(&a.body).unwrap();
                let n = checks(&rows);
                assert!(
                    n >= before,
                    "answered {n} checks while restoring; the view held {before} before the stop"
                );
                answered += 1;
            }
            503 => {
                assert_eq!(a.json()["error"]["code"], "starting", "{}", text(&a.body));
                starting += 1;
            }
            other => panic!("{other}: {}", text(&a.body)),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // the windows emitted before the stop, each once, as they were
    let upto = format!("{emitted} AND CAST(window_end AS BIGINT) <= {end_ms}");
    let again = sql_json(hp, &upto);
    let (code, out, err) = second.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("restored from checkpoint"), "{out}");
    assert_eq!(
        answered, 50,
        "refused {starting} times, answered {answered}"
    );
    assert!(windows(&again) >= 20, "{again:?}");
    assert_eq!(
        again, kept,
        "the windows emitted before the stop, after the restart"
    );
}

/// `retain` on a view: keys whose newest event is `retain` older than the watermark leave the
/// view (SQL no longer shows them) and its changelog gets their last row as `op = delete`;
/// the final snapshot holds only the keys kept.
#[test]
fn a_view_with_retain_drops_keys_not_updated_within_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("events.ndjson"),
        weir_tests::retain_events(),
    )
    .unwrap();
    let port = free_port();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        weir_tests::retain_pipeline(
            "retain-test",
            "file: { path: events.ndjson }",
            "{ file: { path: out/service_status.ndjson } }",
            &format!(
                "dead_letter: {{ file: {{ path: out/dead.ndjson }} }}\nserve: {{ http: \"127.0.0.1:{port}\" }}\n"
            ),
        ),
    )
    .unwrap();
    let validate = Command::new(WEIR)
        .arg("validate")
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(validate.status.success(), "{}", text(&validate.stderr));
    assert!(
        text(&validate.stdout).contains("retain: 60000 ms"),
        "{}",
        text(&validate.stdout)
    );
    let mut run = Running::start(WEIR, &pipeline, &["--keep-serving"]);
    run.wait_http(port);
    run.wait_finished(port);
    let rows = sql_json(
        port,
        "SELECT serviceName, status, checks FROM service_status ORDER BY serviceName",
    );
    let got: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["serviceName"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["checks"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("fresh".to_string(), "HEALTHY".to_string(), 13),
            ("recent".to_string(), "DEGRADED".to_string(), 2),
        ]
    );
    // the hidden newest-event column is not a column of the table
    let columns = sql_json(
        port,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'service_status'",
    );
    assert_eq!(columns.len(), 3, "{columns:?}");
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
    let changelog = weir_tests::read_ndjson(&dir.path().join("out/service_status.ndjson"));
    let ops: Vec<(String, String)> = changelog
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_string(),
                r["serviceName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let deletes: Vec<&(String, String)> = ops.iter().filter(|(op, _)| op == "delete").collect();
    let mut deleted: Vec<&str> = deletes.iter().map(|(_, k)| k.as_str()).collect();
    deleted.sort();
    assert_eq!(deleted, ["mid", "old"], "{ops:?}");
    let mid = changelog
        .iter()
        .find(|r| r["op"] == "delete" && r["serviceName"] == "mid")
        .unwrap();
    assert_eq!(
        (mid["status"].as_str(), mid["checks"].as_u64()),
        (Some("DEGRADED"), Some(2))
    );
    let mut snapshot: Vec<&str> = ops
        .iter()
        .filter(|(op, _)| op == "snapshot")
        .map(|(_, k)| k.as_str())
        .collect();
    snapshot.sort();
    assert_eq!(snapshot, ["fresh", "recent"], "{ops:?}");
    let first_snapshot = ops.iter().position(|(op, _)| op == "snapshot").unwrap();
    assert!(
        ops[first_snapshot..].iter().all(|(op, _)| op == "snapshot"),
        "{ops:?}"
    );
}

/// `weir_status` counts each partition's own records: two input files (one partition each)
/// with different numbers of events and bad lines show their own `events_in` and `bad`, and
/// the rows add up to the run's totals.
#[test]
fn weir_status_counts_records_per_partition() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let line = |i: u64| {
        format!(
            r#"{{"eventId":"e{i}","timestamp":{},"serviceName":"s{}","namespace":"n","healthStatus":"HEALTHY","latencyMs":5,"errorRate":0.1}}"#,
            1_764_000_000_000 + i * 1000,
            i % 3
        )
    };
    // a: 30 events, 2 of them bad; b: 12 events, none bad
    let a: Vec<String> = (0..28)
        .map(line)
        .chain(["not json".to_string(), r#"{"eventId":1}"#.to_string()])
        .collect();
    let b: Vec<String> = (100..112).map(line).collect();
    std::fs::write(d.join("in/a.ndjson"), a.join("\n") + "\n").unwrap();
    std::fs::write(d.join("in/b.ndjson"), b.join("\n") + "\n").unwrap();
    let hp = free_port();
    let pipeline = health_pipeline(
        d,
        "    file: { path: \"in/*.ndjson\" }\n    format: json\n    schema: service-health",
        &format!("{{ http: \"127.0.0.1:{hp}\" }}"),
        "",
    );
    let mut run = Running::start(WEIR, &pipeline, &["--keep-serving", "--parallelism", "2"]);
    run.wait_http(hp);
    run.wait_finished(hp);
    let rows = sql_json(
        hp,
        "SELECT partition, events_in, bad, late FROM weir_status ORDER BY partition",
    );
    let counts: Vec<(String, u64, u64)> = rows
        .iter()
        .map(|r| {
            let file = r["partition"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_string_lossy();
            (
                name.into_owned(),
                r["events_in"].as_u64().unwrap(),
                r["bad"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("a.ndjson".to_string(), 30, 2),
            ("b.ndjson".to_string(), 12, 0)
        ],
        "{rows:?}"
    );
}
