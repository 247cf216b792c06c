//! Helpers of weir's end-to-end tests: generating events with `weir generate`, the reference
//! model's rows (`tests/model/window_model.py`), reading outputs back and comparing them with
//! those rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMillisecondType};
use serde_json::{Map, Value};

/// One output row.
pub type Row = Map<String, Value>;

/// The folder of the golden cases.
pub fn golden_dir() -> PathBuf {
    repo_dir().join("tests/golden")
}

/// The repository's root folder: the workspace of the crate whose test runs (cargo sets
/// `CARGO_MANIFEST_DIR` when it runs a test), else of this library when it was built. This
/// library's own build may come from another checkout sharing the `CARGO_TARGET_DIR` (cargo
/// reuses it there), whose files are not this checkout's.
pub fn repo_dir() -> PathBuf {
    let running = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    running
        .iter()
        .flat_map(|dir| dir.ancestors())
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|toml| {
                toml.lines()
                    .any(|l| l.trim_start().starts_with("[workspace]"))
            })
        })
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ is in the repository")
                .to_path_buf()
        })
}

/// The project's reference model of the window rules (`tests/model/window_model.py`).
pub fn model_script() -> PathBuf {
    repo_dir().join("tests/model/window_model.py")
}

/// The `weir` binary that generates test events: `WEIR_BIN` when set, else the one cargo
/// built beside the running test (`<target>/debug/weir` for `<target>/debug/deps/crash-…`),
/// which cargo builds before the binary's own integration tests (`cli/tests`) run.
pub fn weir_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary in <target>/<profile>/deps");
    let bin = profile.join(format!("weir{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found: build it (`cargo build -p weir-cli`) or set WEIR_BIN",
        bin.display()
    );
    bin
}

/// A port of 127.0.0.1 nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The generator's settings unless a test gives its own: fixed here so that a change of
/// `weir generate`'s defaults does not change the tests' data.
const GENERATE_DEFAULTS: [(&str, &str); 10] = [
    ("--seed", "42"),
    ("--keys", "1000"),
    ("--skew", "1.1"),
    ("--start-ms", "1700000000000"),
    ("--step-ms", "1"),
    ("--jitter-frac", "0.2"),
    ("--jitter-ms", "2000"),
    ("--late-frac", "0"),
    ("--late-ms", "3600000"),
    ("--bad-frac", "0"),
];

/// Writes `weir generate data-ingestion` events to `out`: `args` are the event count, then
/// the generator's flags (`--seed 11 --keys 40 --step-ms 200 --bad-frac 0.01 ...`); the
/// settings not given are [`GENERATE_DEFAULTS`].
pub fn generate(out: &Path, args: &[&str]) {
    generate_kind("data-ingestion", out, args)
}

/// [`generate`] for events of `kind` (`data-ingestion` or `service-health`).
pub fn generate_kind(kind: &str, out: &Path, args: &[&str]) {
    let (count, flags) = args.split_first().expect("the event count first");
    let mut cmd = std::process::Command::new(weir_bin());
    cmd.args(["generate", kind, "--count", count]).args(flags);
    for (flag, value) in GENERATE_DEFAULTS {
        if !flags.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    let o = cmd.arg("--out").arg(out).output().expect("weir generate");
    assert!(
        o.status.success(),
        "weir generate: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The reference model's rows (`tests/model/window_model.py`) for data-ingestion events of
/// `input` (its `args`: keys, size, aggregates), written to `out`, and its summary (lines,
/// bad, late, filtered, windows).
pub fn oracle(input: &Path, args: &[&str], out: &Path) -> (Vec<Row>, Value) {
    let o = std::process::Command::new("python3")
        .arg(model_script())
        .arg(input)
        .args(["--schema", "data-ingestion"])
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "window_model.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = serde_json::from_str(String::from_utf8_lossy(&o.stderr).trim())
        .expect("the model's summary");
    (read_ndjson(out), summary)
}

/// [`oracle`]'s 1-minute windows by `datasetName` with 5 s of out-of-orderness, computing
/// `aggs` (`name=fn[:field]`, as the model's `--agg`).
pub fn oracle_per_dataset(input: &Path, aggs: &[&str], out: &Path) -> (Vec<Row>, Value) {
    let mut args = vec!["--key", "datasetName", "--size", "1m", "--ooo", "5s"];
    for a in aggs {
        args.extend(["--agg", a]);
    }
    oracle(input, &args, out)
}

/// Every row of the files `out/<stem>.<worker>.ndjson` of all workers.
pub fn union_of_workers(out: &Path, stem: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}.")) && name.ends_with(".ndjson") {
            rows.extend(read_ndjson(&e.path()));
        }
    }
    rows
}

/// Rows of an NDJSON file.
pub fn read_ndjson(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(m)) => m,
            other => panic!("{}: not a JSON object: {l} ({other:?})", path.display()),
        })
        .collect()
}

/// Rows of a CSV file with a header (RFC 4180 quoting); every value is a string, empty is null.
pub fn read_csv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut records = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    let header = records.remove(0);
    records
        .into_iter()
        .map(|r| {
            header
                .iter()
                .zip(r)
                .map(|(h, v)| {
                    (
                        h.clone(),
                        if v.is_empty() {
                            Value::Null
                        } else {
                            Value::String(v)
                        },
                    )
                })
                .collect()
        })
        .collect()
}

/// Rows of a Parquet file; timestamps become epoch milliseconds.
pub fn read_parquet(path: &Path) -> Vec<Row> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.expect("parquet batch");
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let mut row = Map::new();
            for (f, col) in schema.fields().iter().zip(batch.columns()) {
                let v = if col.is_null(i) {
                    Value::Null
                } else {
                    match col.data_type() {
                        DataType::Utf8 => Value::from(col.as_string::<i32>().value(i)),
                        DataType::Int64 => Value::from(col.as_primitive::<Int64Type>().value(i)),
                        DataType::Float64 => {
                            Value::from(col.as_primitive::<Float64Type>().value(i))
                        }
                        DataType::Timestamp(_, _) => {
                            Value::from(col.as_primitive::<TimestampMillisecondType>().value(i))
                        }
                        other => panic!("unexpected column type {other}"),
                    }
                };
                row.insert(f.name().clone(), v);
            }
            rows.push(row);
        }
    }
    rows
}

/// Rows of an output file, by extension.
pub fn read_rows(path: &Path) -> Vec<Row> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path),
        Some("csv") => read_csv(path),
        _ => read_ndjson(path),
    }
}

/// A window bound as epoch milliseconds: a number, or an RFC 3339 string.
pub fn to_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| weir_engine::time::parse_rfc3339_ms(s.as_bytes())),
        _ => None,
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn same(expected: &Value, actual: Option<&Value>) -> bool {
    let actual_null =
        matches!(actual, None | Some(Value::Null)) || actual == Some(&Value::String(String::new()));
    if expected.is_null() || actual_null {
        return expected.is_null() == actual_null;
    }
    let actual = actual.expect("checked above");
    if let Value::String(e) = expected {
        return &as_text(actual) == e;
    }
    let a = match actual {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    let (Some(a), Some(e)) = (a, expected.as_f64()) else {
        return false;
    };
    if expected.is_i64() && (e == a) {
        return true;
    }
    (e - a).abs() <= 1e-9_f64.max(1e-9 * e.abs().max(a.abs()))
}

fn ident(r: &Row, keys: &[&str]) -> (Vec<String>, Option<i64>) {
    (
        keys.iter()
            .map(|k| r.get(*k).map(as_text).unwrap_or_default())
            .collect(),
        r.get("window_start").and_then(to_ms),
    )
}

/// The columns of `e` whose values `a` does not have (keys and window_start aside).
fn differences(e: &Row, a: &Row, keys: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (col, ev) in e.iter() {
        if keys.contains(&col.as_str()) || col == "window_start" {
            continue;
        }
        let ok = if col == "window_end" {
            to_ms(ev) == a.get(col).and_then(to_ms)
        } else {
            same(ev, a.get(col))
        };
        if !ok {
            out.push(format!("{col}: expected {ev}, got {:?}", a.get(col)));
        }
    }
    out
}

/// Compares at-least-once output with the reference rows: every expected row was emitted
/// exactly right at least once, and no row belongs to a (keys, window) the reference does not
/// have. Returns how many rows repeat an already emitted (keys, window).
pub fn compare_at_least_once(
    expected: &[Row],
    actual: &[Row],
    keys: &[&str],
) -> Result<usize, String> {
    let mut act: HashMap<_, Vec<&Row>> = HashMap::new();
    for r in actual {
        act.entry(ident(r, keys)).or_default().push(r);
    }
    let exp: HashMap<_, _> = expected.iter().map(|r| (ident(r, keys), r)).collect();
    let mut problems = Vec::new();
    for (k, e) in &exp {
        match act.get(k) {
            None => problems.push(format!("missing {k:?}")),
            Some(rows) => {
                if rows.iter().all(|a| !differences(e, a, keys).is_empty()) {
                    problems.push(format!(
                        "no exact row for {k:?}: {:?}",
                        differences(e, rows[0], keys)
                    ));
                }
            }
        }
    }
    for k in act.keys().filter(|k| !exp.contains_key(*k)) {
        problems.push(format!("extra {k:?}"));
    }
    if problems.is_empty() {
        Ok(actual.len() - act.len())
    } else {
        Err(format!(
            "{} problem(s), e.g. {:?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        ))
    }
}

/// Compares result rows with the reference rows: the same set of (keys, window_start), no
/// duplicates, every expected column equal. Returns a description of the differences.
pub fn compare(expected: &[Row], actual: &[Row], keys: &[&str]) -> Result<(), String> {
    let ident = |r: &Row| ident(r, keys);
    let exp: HashMap<_, _> = expected.iter().map(|r| (ident(r), r)).collect();
    let mut act = HashMap::new();
    let mut dups = Vec::new();
    for r in actual {
        if act.insert(ident(r), r).is_some() {
            dups.push(ident(r));
        }
    }
    let missing: Vec<_> = exp.keys().filter(|k| !act.contains_key(*k)).collect();
    let extra: Vec<_> = act.keys().filter(|k| !exp.contains_key(*k)).collect();
    let mut wrong = Vec::new();
    for (k, e) in &exp {
        let Some(a) = act.get(k) else { continue };
        wrong.extend(
            differences(e, a, keys)
                .into_iter()
                .map(|d| format!("{k:?} {d}")),
        );
    }
    if missing.is_empty() && extra.is_empty() && wrong.is_empty() && dups.is_empty() {
        return Ok(());
    }
    Err(format!(
        "expected={} actual={} missing={} extra={} wrong={} duplicates={}\n  missing e.g. {:?}\n  extra e.g. {:?}\n  wrong e.g. {:?}\n  duplicate e.g. {:?}",
        exp.len(),
        act.len(),
        missing.len(),
        extra.len(),
        wrong.len(),
        dups.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.iter().take(3).collect::<Vec<_>>(),
        wrong.iter().take(3).collect::<Vec<_>>(),
        dups.iter().take(3).collect::<Vec<_>>()
    ))
}

/// Copies every regular file of `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// A pipeline `name` of a `service_status` view with `retain: 60s` over service-health events
/// read by `input` (`file: { path: … }` or `kafka: { … }`, max_out_of_orderness 1 s), its
/// changelog to the sink `out` (`sink`: the sink's settings), then `rest` (dead letters,
/// serve, checkpoint...). For [`retain_events`].
pub fn retain_pipeline(name: &str, input: &str, sink: &str, rest: &str) -> String {
    format!(
        r#"name: {name}
sources:
  health:
    {input}
    format: json
    schema: service-health
    event_time: {{ field: timestamp, max_out_of_orderness: 1s }}
views:
  service_status:
    from: health
    key: [serviceName]
    retain: 60s
    aggregates:
      status: last_value(healthStatus ORDER BY timestamp)
      checks: count(*)
    sinks: [out]
sinks:
  out: {sink}
{rest}"#
    )
}

/// Service-health events for views with `retain: 60s` (max_out_of_orderness 1 s): the newest
/// events are `old` at 0 s, `mid` at 30 s (DEGRADED, 2 events), `recent` at 100 s (DEGRADED, 2
/// events) and `fresh` at 120 s (13 events), so `old` and `mid` expire and `recent` and
/// `fresh` stay. Returns the NDJSON text.
pub fn retain_events() -> String {
    let t0: i64 = 1_700_000_000_000;
    let mut lines = String::new();
    let mut n = 0;
    let mut event = |service: &str, at_s: i64, status: &str| {
        n += 1;
        lines.push_str(
            &serde_json::json!({
                "eventId": format!("e-{n}"),
                "timestamp": t0 + at_s * 1000,
                "serviceName": service,
                "namespace": "data",
                "healthStatus": status,
                "latencyMs": at_s,
                "errorRate": 0.0,
                "message": null,
            })
            .to_string(),
        );
        lines.push('\n');
    };
    for at in (0..=120).step_by(10) {
        event("fresh", at, "HEALTHY");
        match at {
            0 => {
                event("old", at, "UNHEALTHY");
                event("mid", at, "HEALTHY");
                event("recent", at, "HEALTHY");
            }
            30 => event("mid", at, "DEGRADED"),
            100 => event("recent", at, "DEGRADED"),
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn compare_catches_every_kind_of_difference() {
        let e = vec![row(
            json!({"k": "a", "window_start": 60000, "window_end": 120000, "n": 2, "avg": 0.5}),
        )];
        let good = vec![row(
            json!({"k": "a", "window_start": "1970-01-01T00:01:00.000Z", "window_end": "1970-01-01T00:02:00.000Z", "n": 2, "avg": 0.5000000000001}),
        )];
        assert!(compare(&e, &good, &["k"]).is_ok());
        let wrong = vec![row(
            json!({"k": "a", "window_start": 60000, "window_end": 120000, "n": 3, "avg": 0.5}),
        )];
        assert!(compare(&e, &wrong, &["k"]).unwrap_err().contains("wrong=1"));
        let dup = vec![good[0].clone(), good[0].clone()];
        assert!(compare(&e, &dup, &["k"])
            .unwrap_err()
            .contains("duplicates=1"));
        assert!(compare(&e, &[], &["k"]).unwrap_err().contains("missing=1"));
        let other = vec![row(
            json!({"k": "b", "window_start": 60000, "window_end": 120000, "n": 2, "avg": 0.5}),
        )];
        assert!(compare(&e, &other, &["k"]).unwrap_err().contains("extra=1"));
    }
}
