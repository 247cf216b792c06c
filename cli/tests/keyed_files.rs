//! Windows keyed by what a source is partitioned by (`partitioned_by`) close per partition:
//! a folder of files, each holding its own datasets, gives the reference model's rows of every
//! file at parallelism 1 and 2, and across kills and restores from checkpoints.

#[path = "support/crash.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir_tests::{compare, read_ndjson, Row};

const FILES: usize = 3;

const PIPELINE: &str = r#"name: keyed-files
sources:
  events:
    file: { path: "in/*.ndjson" }
    partitioned_by: [datasetName]       # each file holds its own datasets
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
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
  rows: { file: { path: out/per_dataset.ndjson } }
dead_letter: { file: { path: out/dead_letter.ndjson } }
checkpoint: { dir: state, interval: 150ms }
"#;

/// The file a line goes to: by its dataset (bad lines to the first).
fn file_of(line: &str) -> usize {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return 0;
    };
    match v.get("datasetName").and_then(|d| d.as_str()) {
        Some(name) => name.bytes().map(usize::from).sum::<usize>() % FILES,
        None => 0,
    }
}

/// Generated events split into [`FILES`] files by dataset (each keeping its lines' order),
/// with the model's rows of every file.
struct Case {
    dir: tempfile::TempDir,
    expected: Vec<Row>,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let all = d.join("all.ndjson");
        weir_tests::generate(
            &all,
            &[
                "120000",
                "--seed",
                "5",
                "--keys",
                "60",
                "--step-ms",
                "20",
                "--bad-frac",
                "0.003",
                "--late-frac",
                "0.003",
                "--late-ms",
                "180000",
            ],
        );
        let mut parts = vec![String::new(); FILES];
        for line in std::fs::read_to_string(&all).unwrap().lines() {
            let p = &mut parts[file_of(line)];
            p.push_str(line);
            p.push('\n');
        }
        std::fs::create_dir_all(d.join("in")).unwrap();
        let mut expected = Vec::new();
        for (i, text) in parts.iter().enumerate() {
            let input = d.join(format!("in/part-{i}.ndjson"));
            std::fs::write(&input, text).unwrap();
            expected.extend(model(&input, &d.join(format!("expected-{i}.ndjson"))));
        }
        std::fs::write(d.join("pipeline.yaml"), PIPELINE).unwrap();
        Case { dir, expected }
    }

    fn run(&self, parallelism: usize) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.env("RUST_LOG", "info")
            .current_dir(self.dir.path())
            .args(["run", "pipeline.yaml", "--parallelism"])
            .arg(parallelism.to_string());
        c
    }

    fn verify(&self, label: &str) {
        let rows = read_ndjson(&self.dir.path().join("out/per_dataset.ndjson"));
        compare(&self.expected, &rows, &["datasetName"])
            .unwrap_or_else(|e| panic!("{label}: the output differs from the model: {e}"));
    }

    fn reset(&self) {
        for d in ["out", "state"] {
            let _ = std::fs::remove_dir_all(self.dir.path().join(d));
        }
    }
}

/// The reference model's rows for one file (one partition).
fn model(input: &Path, out: &PathBuf) -> Vec<Row> {
    let o = Command::new("python3")
        .arg(weir_tests::model_script())
        .arg(input)
        .args(["--schema", "data-ingestion", "--key", "datasetName"])
        .args(["--size", "1m", "--ooo", "5s", "--agg", "events=count"])
        .args(["--agg", "records=sum:recordCount", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "window_model.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    read_ndjson(out)
}

#[test]
fn each_files_windows_close_with_that_file_at_parallelism_1_and_2() {
    let case = Case::new();
    assert!(case.expected.len() > 1000, "{}", case.expected.len());
    for parallelism in [1, 2] {
        case.reset();
        let o = case.run(parallelism).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        case.verify(&format!("parallelism {parallelism}"));
    }
}

#[test]
fn killed_and_restarted_runs_of_keyed_files_give_exactly_the_models_rows() {
    let case = Case::new();
    let kills = std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(6);
    let report = support::crash_loop(
        || case.run(2),
        kills,
        Duration::from_millis(300),
        &case.dir.path().join("logs"),
        || {
            case.verify("a run that finished before its kill");
            case.reset();
        },
    );
    eprintln!("{report:?}");
    case.verify("after the crashes");
    assert!(report.restores >= 1, "{report:?}");
}
