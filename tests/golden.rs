//! Golden tests: weir's window results equal the project's reference model's
//! (`model/window_model.py`, results committed under `golden/` by `golden/make.sh`), at
//! parallelism 1 and 2, with large and small read chunks, on every file format; dead-letter
//! counts equal the model's `bad` and `late`. The model itself passes its hand-computed checks
//! (`model/test_window_model.py`), and the committed expectations are its output.

use std::path::Path;

use serde_json::Value;
use weir_pipelines::{load, run, RunOptions};
use weir_tests::{compare, copy_dir, golden_dir, read_ndjson, read_rows};

fn run_case(case: &str, parallelism: usize, chunk_bytes: Option<usize>) {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&golden_dir().join(case), dir.path());
    let plan = load(&dir.path().join("pipeline.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<(String, Vec<String>, Vec<std::path::PathBuf>)> = plan
        .windows
        .iter()
        .map(|w| {
            let paths = w
                .sinks
                .iter()
                .map(|s| match plan.sinks[*s].target.local_file() {
                    Some(path) => path.to_path_buf(),
                    None => panic!("unexpected sink {:?}", plan.sinks[*s].target),
                })
                .collect();
            (w.config.name.clone(), w.config.keys.clone(), paths)
        })
        .collect();
    let dead_letter = match plan.dead_letter.local_file() {
        Some(path) => path.to_path_buf(),
        None => panic!("unexpected dead-letter output {:?}", plan.dead_letter),
    };
    let summary = run(
        plan,
        RunOptions {
            parallelism: Some(parallelism),
            file_chunk_bytes: chunk_bytes,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    let dead = read_ndjson(&dead_letter);
    let label = format!("{case} at parallelism {parallelism}, chunks {chunk_bytes:?}");
    for (name, keys, paths) in windows {
        let expected = read_ndjson(
            &golden_dir()
                .join(case)
                .join(format!("expected_{name}.ndjson")),
        );
        let oracle: Value = serde_json::from_str(
            &std::fs::read_to_string(golden_dir().join(case).join(format!("summary_{name}.json")))
                .expect("summary"),
        )
        .expect("summary json");
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for p in &paths {
            let actual = read_rows(p);
            if let Err(diff) = compare(&expected, &actual, &keys) {
                panic!("{label}: window {name}, {}:\n{diff}", p.display());
            }
        }
        let late = dead
            .iter()
            .filter(|d| d["reason"] == "late" && d["error"]["details"]["window"] == name.as_str())
            .count() as u64;
        assert_eq!(
            late,
            oracle["late"].as_u64().unwrap(),
            "{label}: late events of {name}"
        );
        assert_eq!(
            summary.records_in,
            oracle["lines"].as_u64().unwrap(),
            "{label}: lines"
        );
        assert_eq!(
            summary.bad,
            oracle["bad"].as_u64().unwrap(),
            "{label}: bad records"
        );
    }
    let bad = dead.iter().filter(|d| d["reason"] == "bad").count() as u64;
    assert_eq!(
        bad, summary.bad,
        "{label}: bad records in the dead-letter output"
    );
    for d in &dead {
        assert!(
            d["raw"].is_string(),
            "{label}: dead letter without its bytes: {d:?}"
        );
        assert!(
            d["error"]["code"].is_string() && d["error"]["message"].is_string(),
            "{label}: {d:?}"
        );
        assert!(d["line"].as_u64().is_some_and(|l| l >= 1), "{label}: {d:?}");
    }
}

fn all_ways(case: &str) {
    run_case(case, 1, None);
    run_case(case, 2, None);
    run_case(case, 2, Some(16 * 1024));
    run_case(case, 3, Some(7 * 1024));
}

#[test]
fn ingestion_one_minute_windows_with_unicode_keys_bad_and_late_lines() {
    all_ways("ingestion_1m");
}

#[test]
fn seven_minute_windows_with_a_compound_key_and_a_filter() {
    all_ways("ingestion_7m_compound");
}

#[test]
fn allowed_lateness_keeps_windows_open_longer() {
    all_ways("allowed_lateness");
}

#[test]
fn health_events_with_null_values_and_null_keys() {
    all_ways("health_nulls");
}

#[test]
fn every_golden_case_is_tested() {
    let mut cases: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    assert_eq!(
        cases,
        [
            "allowed_lateness",
            "health_nulls",
            "ingestion_1m",
            "ingestion_7m_compound"
        ]
    );
    assert!(Path::new(&golden_dir().join("make.sh")).exists());
}

/// The reference model passes its hand-computed checks (`model/test_window_model.py`: late
/// events, the lateness boundary, filters, null keys, empty aggregates, bad lines, its CLI).
#[test]
fn the_reference_model_passes_its_hand_computed_checks() {
    let o = std::process::Command::new("python3")
        .args(["-m", "unittest", "-v", "test_window_model"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("model"))
        .output()
        .expect("python3");
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the model's unit tests failed:\n{log}");
    let ran: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `Ran N tests` line:\n{log}"));
    assert!(ran >= 15, "only {ran} model tests ran:\n{log}");
}

/// The committed expectations are the model's output for the committed inputs
/// (`golden/make.sh --check` recomputes them), so the model and the golden files never drift.
#[test]
fn golden_expectations_are_the_models_output() {
    let o = std::process::Command::new("bash")
        .arg(golden_dir().join("make.sh"))
        .arg("--check")
        .output()
        .expect("bash");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
