//! No record stops a pipeline or corrupts its results (issue 22's bar): poison rows mixed
//! into 100,000 good events (a division by zero in a `where`, an integer multiplication
//! that overflows 64 bits in a `where`, an overflowing cast in an aggregate's argument, event times in microseconds, a pair of `sizeBytes` 2^62 whose sum
//! does not fit 64 bits, a value of the wrong type) and `weir run` exits 0, every poison row
//! is in the dead letters with its code, the overflowing sum is null (never a wrapped
//! number), and every other window equals the reference model's rows
//! (`tests/model/window_model.py`) for the good events alone. Then the same through SIGKILLs
//! and restarts from checkpoints: no crash loop, and still the model's rows exactly once.

#[path = "support/crash.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use weir_tests::{compare, generate, oracle_per_dataset, read_ndjson, Row};

const PIPELINE: &str = r#"name: poison
sources:
  events:
    file: { path: input.ndjson }
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset:
    from: events
    where: "100 / recordCount >= 0 AND recordCount * 4 >= 0"
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      records: sum(CAST(recordCount AS INT))
      bytes: sum(sizeBytes)
      failures: count(*) FILTER (WHERE status = 'FAILURE')
    sinks: [rows]
views:
  per_status:
    from: events
    where: "100 / recordCount >= 0"
    key: [status]
    aggregates:
      events: count(*)
    sinks: [statuses]
sinks:
  rows: { file: { path: out/per_dataset.ndjson } }
  statuses: { file: { path: out/per_status.ndjson } }
dead_letter: { file: { path: out/dead_letter.ndjson } }
"#;

/// The `weir` binary: `WEIR_BIN` when set (a copy taken right after the build, for a target
/// folder other worktrees build into too), else the one cargo built for this test.
fn weir_bin() -> PathBuf {
    std::env::var_os("WEIR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_weir")))
}

/// The dataset the overflowing pair is alone in (no good event has it).
const OVERFLOW_KEY: &str = "poison-overflow";

/// A poison row: its event id, and the dead-letter codes it must get (one per operator it
/// fails in; none for the overflowing pair, whose window gets a null sum instead).
struct Poison {
    id: String,
    codes: Vec<&'static str>,
}

/// Good events, the same with poison rows mixed in, and what each poison row must give.
struct Case {
    dir: tempfile::TempDir,
    expected: Vec<Row>,
    poison: Vec<Poison>,
    good: usize,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = d.join("good.ndjson");
        generate(
            &good,
            &["100000", "--seed", "22", "--keys", "300", "--step-ms", "10"],
        );
        let (expected, summary) = oracle_per_dataset(
            &good,
            &[
                "events=count",
                "records=sum:recordCount",
                "bytes=sum:sizeBytes",
                "failures=count_if:status=FAILURE",
            ],
            &d.join("expected.ndjson"),
        );
        assert_eq!(summary["late"], 0, "{summary}");
        let lines: Vec<String> = std::fs::read_to_string(&good)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let mut out = String::new();
        let mut poison = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            out.push_str(line);
            out.push('\n');
            let base: Value = serde_json::from_str(line).unwrap();
            // each poison row copies the event before it (its time too, so that it would not
            // move the watermark past the good events even if it were kept)
            let mut add = |n: usize, change: &dyn Fn(&mut Value), codes: Vec<&'static str>| {
                let mut v = base.clone();
                let id = format!("poison-{i}-{n}");
                v["eventId"] = json!(id);
                change(&mut v);
                out.push_str(&v.to_string());
                out.push('\n');
                poison.push(Poison { id, codes });
            };
            let micros = |v: &mut Value| {
                let t = v["timestamp"].as_i64().unwrap();
                v["timestamp"] = json!(t * 1000);
            };
            match i {
                // 100 / 0 in the window's and the view's `where`
                10_000 | 25_000 => add(
                    0,
                    &|v| v["recordCount"] = json!(0),
                    vec!["expression_error", "expression_error"],
                ),
                // CAST(2^40 AS INT) overflows in the window's aggregate argument
                33_333 => add(
                    0,
                    &|v| v["recordCount"] = json!(1i64 << 40),
                    vec!["expression_error"],
                ),
                // 2^62 * 4 overflows 64 bits in the window's `where` (it wrapped to 0, and
                // the row was counted)
                60_000 => add(
                    0,
                    &|v| v["recordCount"] = json!(1i64 << 62),
                    vec!["expression_error"],
                ),
                // event time in microseconds: year 55,000
                40_000 => add(0, &micros, vec!["future_event_time"]),
                // Java's Long.MIN_VALUE for "no time": its window would not fit in 64 bits
                42_000 => add(
                    0,
                    &|v| v["timestamp"] = json!(i64::MIN),
                    vec!["bad_event_time"],
                ),
                85_000 => add(
                    0,
                    &|v| {
                        micros(v);
                        v["recordCount"] = json!(0);
                    },
                    vec!["future_event_time"],
                ),
                // a value of the wrong type
                50_000 => add(0, &|v| v["sizeBytes"] = json!("12 MB"), vec!["wrong_type"]),
                // two sizeBytes of 2^62 in one window: the sum is 2^63
                70_000 => {
                    for n in 0..2 {
                        add(
                            n,
                            &|v| {
                                v["datasetName"] = json!(OVERFLOW_KEY);
                                v["sizeBytes"] = json!(1i64 << 62);
                            },
                            Vec::new(),
                        );
                    }
                }
                _ => {}
            }
        }
        std::fs::write(d.join("input.ndjson"), out).unwrap();
        Case {
            dir,
            expected,
            poison,
            good: lines.len(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn write_pipeline(&self, extra: &str) -> PathBuf {
        let p = self.path("pipeline.yaml");
        std::fs::write(&p, format!("{PIPELINE}{extra}")).unwrap();
        p
    }

    fn command(&self, pipeline: &Path) -> Command {
        let mut c = Command::new(weir_bin());
        c.env("RUST_LOG", "info")
            .current_dir(self.dir.path())
            .args(["run", pipeline.to_str().unwrap(), "--parallelism", "2"]);
        c
    }

    /// Checks the outputs: windows against the oracle, the overflowing sum, the dead letters
    /// of every poison row (each once), the view's counts.
    fn check_outputs(&self) {
        let rows = read_ndjson(&self.path("out/per_dataset.ndjson"));
        let (overflow, rest): (Vec<Row>, Vec<Row>) = rows
            .into_iter()
            .partition(|r| r["datasetName"] == OVERFLOW_KEY);
        compare(&self.expected, &rest, &["datasetName"]).unwrap();
        assert_eq!(overflow.len(), 1, "{overflow:?}");
        assert_eq!(overflow[0]["events"], 2);
        assert_eq!(
            overflow[0]["bytes"],
            Value::Null,
            "a sum of 2^63 is null, never wrapped: {:?}",
            overflow[0]
        );

        let dead = read_ndjson(&self.path("out/dead_letter.ndjson"));
        let mut codes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in &dead {
            let raw: Value = d["raw"]
                .as_str()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let id = raw["eventId"].as_str().unwrap_or("?").to_string();
            assert_eq!(d["reason"], "bad", "{d:?}");
            codes
                .entry(id)
                .or_default()
                .push(d["error"]["code"].as_str().unwrap().to_string());
        }
        for p in &self.poison {
            let mut got = codes.remove(&p.id).unwrap_or_default();
            got.sort();
            assert_eq!(got, p.codes, "dead letters of {}", p.id);
        }
        assert!(codes.is_empty(), "other dead letters: {codes:?}");
        let expression = dead
            .iter()
            .find(|d| d["error"]["code"] == "expression_error")
            .unwrap();
        assert!(
            expression["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Divide by zero"),
            "{expression:?}"
        );

        // the view counts every good event, the overflowing pair and the rows whose cast or
        // multiplication fails in the window only (the view does neither), nothing else
        let mut latest: BTreeMap<String, i64> = BTreeMap::new();
        for r in read_ndjson(&self.path("out/per_status.ndjson")) {
            latest.insert(
                r["status"].as_str().unwrap().to_string(),
                r["events"].as_i64().unwrap(),
            );
        }
        assert_eq!(
            latest.values().sum::<i64>(),
            self.good as i64 + 4,
            "{latest:?}"
        );
    }
}

#[test]
fn poison_rows_are_dead_lettered_and_every_other_window_equals_the_oracle() {
    let case = Case::new();
    let pipeline = case.write_pipeline("");
    let out = case.command(&pipeline).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("a sum is outside its type's range"),
        "the overflow is logged: {stderr}"
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    // bad: one wrong type, two future times, one time outside the years 0000-9999, four
    // rows failing an expression (counted once however many operators they fail in)
    assert!(summary.contains("8 bad"), "{summary}");
    case.check_outputs();
}

#[test]
fn poison_rows_do_not_crash_loop_a_pipeline_killed_and_restored_from_checkpoints() {
    let case = Case::new();
    let pipeline = case.write_pipeline("checkpoint: { dir: state, interval: 100ms }\n");
    let kills = std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(4);
    let report = support::crash_loop(
        || case.command(&pipeline),
        kills,
        Duration::from_millis(400),
        &case.path("logs"),
        || {
            // a run that finished before its kill: its outputs are checked, then it starts over
            case.check_outputs();
            for p in ["out", "state"] {
                let _ = std::fs::remove_dir_all(case.path(p));
            }
        },
    );
    eprintln!("{report:?}");
    assert!(report.restores > 0, "{report:?}");
    case.check_outputs();
}
