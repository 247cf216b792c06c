//! The Iceberg sink end to end: generated events (with bad and very late lines) → 1-minute
//! windows and a view → Iceberg tables in a SQLite catalog, read back by pyiceberg through
//! the same catalog and by DuckDB over the current snapshot's Parquet files, compared with
//! the reference model's rows (`tests/model/window_model.py`). The crash test (`crash.rs`)
//! writes the same tables under SIGKILLs.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/iceberg.rs"]
mod iceberg;
#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Command;

use iceberg::Table;
use weir_tests::{compare, read_ndjson, Row};

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PIPELINE: &str = r#"name: lake-test
sources:
  events:
    file: { path: input.ndjson }
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
      max_bytes: max(sizeBytes)
      failures: count(*) FILTER (WHERE status = 'FAILURE')
    sinks: [windows_lake]
views:
  per_source:
    from: events
    key: [source]
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [view_lake]
sinks:
  windows_lake: { iceberg: { catalog: "sqlite://lake/catalog.db", warehouse: lake, table: analytics.per_dataset } }
  view_lake: { iceberg: { catalog: "sqlite://lake/catalog.db", warehouse: lake, table: analytics.per_source } }
dead_letter: { file: { path: dead_letter.ndjson } }
checkpoint: { dir: state, interval: 200ms }
"#;

/// Events with bad and very late lines, and the oracle's rows: the windows, and the view as
/// one window over all time (a view takes every valid event).
struct Case {
    dir: tempfile::TempDir,
    windows: Vec<Row>,
    view: Vec<Row>,
    summary: serde_json::Value,
}

fn oracle(input: &Path, out: &Path, key: &str, size: &str) -> serde_json::Value {
    let o = Command::new("python3")
        .arg(weir_tests::model_script())
        .arg(input)
        .args(["--schema", "data-ingestion", "--key", key])
        .args(["--size", size, "--ooo", "5s", "--agg", "events=count"])
        .args(["--agg", "records=sum:recordCount"])
        .args(["--agg", "max_bytes=max:sizeBytes"])
        .args(if key == "datasetName" {
            &["--agg", "failures=count_if:status=FAILURE"][..]
        } else {
            &[][..]
        })
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_str(String::from_utf8_lossy(&o.stderr).trim()).unwrap()
}

impl Case {
    fn new(events: u32) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("input.ndjson");
        weir_tests::generate(
            &input,
            &[
                &events.to_string(),
                "--seed",
                "7",
                "--keys",
                "300",
                "--step-ms",
                "20",
                "--unicode-keys",
                "--bad-frac",
                "0.004",
                "--late-frac",
                "0.003",
                "--late-ms",
                "240000",
            ],
        );
        let summary = oracle(&input, &d.join("windows.ndjson"), "datasetName", "1m");
        // a view has no window: one window over all time holds every valid event
        oracle(&input, &d.join("view.ndjson"), "source", "100000d");
        let view = read_ndjson(&d.join("view.ndjson"))
            .into_iter()
            .map(|mut r| {
                r.remove("window_start");
                r.remove("window_end");
                r
            })
            .collect();
        Case {
            windows: read_ndjson(&d.join("windows.ndjson")),
            view,
            summary,
            dir,
        }
    }

    fn run(&self, pipeline: &str, parallelism: u32) -> String {
        self.run_with(pipeline, parallelism, &[])
    }

    fn run_with(&self, pipeline: &str, parallelism: u32, env: &[(String, String)]) -> String {
        let path = self.dir.path().join("pipeline.yaml");
        std::fs::write(&path, pipeline).unwrap();
        ok(
            Command::new(env!("CARGO_BIN_EXE_weir"))
                .args(["run", path.to_str().unwrap(), "--parallelism"])
                .arg(parallelism.to_string())
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap(),
            "weir run",
        )
    }

    fn table(&self, name: &str) -> Table {
        Table::local(crash::venv_python(), &self.dir.path().join("lake"), name)
    }

    fn reset(&self) {
        for p in ["lake", "state"] {
            let _ = std::fs::remove_dir_all(self.dir.path().join(p));
        }
    }
}

#[test]
fn windows_and_a_view_read_back_by_pyiceberg_and_duckdb_equal_the_oracle() {
    let case = Case::new(120_000);
    assert!(case.summary["bad"].as_u64().unwrap() > 0);
    assert!(case.summary["late"].as_u64().unwrap() > 0);
    for parallelism in [1, 2] {
        let label = format!("parallelism {parallelism}");
        case.reset();
        let stdout = case.run(PIPELINE, parallelism);
        assert!(stdout.contains("sink windows_lake:"), "{stdout}");
        let windows = case.table("analytics.per_dataset");
        compare(&case.windows, &windows.pyiceberg(), &["datasetName"])
            .unwrap_or_else(|e| panic!("{label}: pyiceberg's rows differ from the oracle: {e}"));
        compare(&case.windows, &windows.duckdb(), &["datasetName"])
            .unwrap_or_else(|e| panic!("{label}: DuckDB's rows differ from the oracle: {e}"));
        // one snapshot per checkpoint that had rows, each epoch once, each an append
        let snapshots = windows.snapshots();
        let epochs = windows.epochs();
        assert!(epochs.len() > 1, "{label}: {epochs:?}");
        for s in &snapshots {
            assert_eq!(s["operation"], "append");
            assert_eq!(s["summary"]["weir.pipeline"], "lake-test");
            assert_eq!(s["summary"]["weir.output"], "per_dataset");
        }

        // the view: one row per key with the latest values, after many updates of each key
        let view = case.table("analytics.per_source");
        let rows = view.pyiceberg();
        compare(&case.view, &rows, &["source"])
            .unwrap_or_else(|e| panic!("{label}: the view's table differs from the oracle: {e}"));
        compare(&case.view, &view.duckdb(), &["source"])
            .unwrap_or_else(|e| panic!("{label}: DuckDB's view rows differ: {e}"));
        let snapshots = view.snapshots();
        assert!(snapshots.len() > 1, "{label}: the view was committed once");
        for s in &snapshots {
            assert_eq!(s["operation"], "overwrite");
            assert_eq!(
                s["summary"]["total-records"].as_str().unwrap(),
                s["summary"]["added-records"].as_str().unwrap(),
                "a view's snapshot holds the whole view"
            );
        }
        view.epochs();
    }
}

#[test]
fn a_table_that_cannot_take_the_output_is_refused_and_left_alone() {
    let case = Case::new(5_000);
    let unchecked = PIPELINE.replace("checkpoint: { dir: state, interval: 200ms }\n", "");
    case.run(&unchecked, 1);
    let before = case.table("analytics.per_dataset").snapshots();
    assert_eq!(before.len(), 1, "a run without checkpoints commits once");
    // `records` becomes a string: the table's `records` is a long
    let changed = unchecked.replace(
        "records: sum(recordCount)\n      max_bytes: max(sizeBytes)\n      failures",
        "records: max(status)\n      max_bytes: max(sizeBytes)\n      failures",
    );
    let path = case.dir.path().join("changed.yaml");
    std::fs::write(&path, changed).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("table analytics.per_dataset cannot take this output")
            && stderr.contains("`records` is long but the output gives string"),
        "{stderr}"
    );
    assert_eq!(case.table("analytics.per_dataset").snapshots(), before);
}

/// A view's pipeline started over without its checkpoints (deleted, as a changed pipeline
/// asks) on other input: its table holds the new run's view, not the earlier run's rows,
/// from the new run's first commit (the earlier run's epoch numbers used to hold it back
/// until the new run passed them, and its rows were read back into the new view).
#[test]
fn a_view_started_over_without_its_checkpoints_holds_the_new_runs_rows() {
    let case = Case::new(8_000);
    let d = case.dir.path();
    let (head, rest) = PIPELINE.split_once("windows:\n").unwrap();
    let (_, views) = rest.split_once("views:\n").unwrap();
    let view_only = format!("{head}views:\n{views}")
        .replace(
            "  windows_lake: { iceberg: { catalog: \"sqlite://lake/catalog.db\", warehouse: lake, table: analytics.per_dataset } }\n",
            "",
        );
    assert!(!view_only.contains("windows_lake"), "{view_only}");
    case.run(&view_only, 1);
    compare(
        &case.view,
        &case.table("analytics.per_source").pyiceberg(),
        &["source"],
    )
    .unwrap_or_else(|e| panic!("the first run's view differs from the oracle: {e}"));
    // the second run: the checkpoints deleted, a tenth of the input
    std::fs::remove_dir_all(d.join("state")).unwrap();
    let input = d.join("input.ndjson");
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&input, lines[..lines.len() / 10].join("\n") + "\n").unwrap();
    oracle(&input, &d.join("view2.ndjson"), "source", "100000d");
    let expected: Vec<Row> = read_ndjson(&d.join("view2.ndjson"))
        .into_iter()
        .map(|mut r| {
            r.remove("window_start");
            r.remove("window_end");
            r
        })
        .collect();
    case.run(&view_only, 1);
    compare(
        &expected,
        &case.table("analytics.per_source").pyiceberg(),
        &["source"],
    )
    .unwrap_or_else(|e| panic!("the second run's view differs from its oracle: {e}"));
}

#[test]
fn a_checkpoint_older_than_the_table_is_refused_instead_of_writing_twice() {
    let case = Case::new(20_000);
    case.run(PIPELINE, 1);
    // the checkpoints are lost, the table keeps its epochs: a fresh run would append the
    // same windows again
    std::fs::remove_dir_all(case.dir.path().join("state")).unwrap();
    let path = case.dir.path().join("pipeline.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("its rows would be written twice"),
        "{stderr}"
    );
}

#[test]
fn compaction_rewrites_small_files_into_one_per_partition_with_the_same_rows() {
    let case = Case::new(200_000);
    case.run(PIPELINE, 1);
    let windows = case.table("analytics.per_dataset");
    let before = windows.files();
    assert!(
        before.len() >= 2,
        "checkpoints give small files: {before:?}"
    );
    let compact = |extra: &[&str]| {
        ok(
            Command::new(env!("CARGO_BIN_EXE_weir"))
                .arg("compact")
                .arg(case.dir.path().join("pipeline.yaml"))
                .args(extra)
                .output()
                .unwrap(),
            "weir compact",
        )
    };
    // files just written are left alone by default (their windows may still get rows)
    let stdout = compact(&[]);
    assert!(
        stdout.contains("windows_lake: nothing to compact"),
        "{stdout}"
    );
    assert_eq!(windows.files().len(), before.len());
    let stdout = compact(&["--min-age", "0s"]);
    assert!(
        stdout.contains(&format!("{} files", before.len())),
        "{stdout}"
    );
    let after = windows.files();
    // one day partition: one file
    assert_eq!(after.len(), 1, "{stdout}");
    compare(&case.windows, &windows.pyiceberg(), &["datasetName"])
        .unwrap_or_else(|e| panic!("after compaction, pyiceberg's rows differ: {e}"));
    compare(&case.windows, &windows.duckdb(), &["datasetName"])
        .unwrap_or_else(|e| panic!("after compaction, DuckDB's rows differ: {e}"));
    let snapshots = windows.snapshots();
    assert!(snapshots
        .iter()
        .any(|s| s["operation"] == "replace" && s["summary"]["weir.compaction"] == "true"));
    let stdout = compact(&["--min-age", "0s"]);
    assert!(
        stdout.contains("nothing to compact (1 data files)"),
        "{stdout}"
    );
    // the pipeline restores its checkpoint over the compacted table: no epoch again
    case.run(PIPELINE, 1);
    windows.epochs();
    compare(&case.windows, &windows.pyiceberg(), &["datasetName"]).unwrap();
}

/// The warehouse in an S3 bucket (an S3-compatible server: moto), the catalog in SQLite:
/// pyiceberg reads the tables through the catalog from the bucket, and compaction works there.
#[test]
fn a_warehouse_in_an_s3_bucket() {
    let case = Case::new(60_000);
    let s3 = s3::S3Server::start(&crash::venv_python(), "weir-lake");
    let pipeline = PIPELINE.replace(
        "warehouse: lake,",
        "warehouse: \"s3://weir-lake/warehouse\",",
    );
    case.run_with(&pipeline, 2, &s3.env());
    let table = |name: &str| Table {
        python: crash::venv_python(),
        catalog: case
            .dir
            .path()
            .join("lake/catalog.db")
            .to_string_lossy()
            .into_owned(),
        warehouse: "s3://weir-lake/warehouse".into(),
        name: name.to_string(),
        env: s3.env(),
    };
    let windows = table("analytics.per_dataset");
    let files = windows.files();
    assert!(
        files.iter().all(|f| f["path"]
            .as_str()
            .unwrap()
            .starts_with("s3://weir-lake/warehouse/analytics/per_dataset/data/")),
        "{files:?}"
    );
    compare(&case.windows, &windows.pyiceberg(), &["datasetName"])
        .unwrap_or_else(|e| panic!("the table in S3 differs from the oracle: {e}"));
    compare(
        &case.view,
        &table("analytics.per_source").pyiceberg(),
        &["source"],
    )
    .unwrap_or_else(|e| panic!("the view's table in S3 differs from the oracle: {e}"));
    windows.epochs();
    // nothing was written to a local folder instead
    let local: Vec<_> = std::fs::read_dir(case.dir.path().join("lake"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(local, ["catalog.db"]);
    let (status, listing) = s3.request(
        "GET",
        "/weir-lake?list-type=2&prefix=warehouse/analytics/per_dataset/metadata/",
    );
    assert_eq!(status, 200);
    assert!(listing.contains(".metadata.json"), "{listing}");
}

/// The SQL catalog in PostgreSQL (a throwaway server): windows appended per checkpoint and a
/// view replaced per commit through the same catalog pyiceberg reads (with psycopg).
#[test]
fn a_postgres_catalog() {
    let case = Case::new(40_000);
    let pg = postgres::PgServer::start();
    let pipeline = PIPELINE.replace("sqlite://lake/catalog.db", &pg.url());
    case.run(&pipeline, 2);
    let table = |name: &str| Table {
        python: crash::venv_python(),
        catalog: pg.url(),
        warehouse: case.dir.path().join("lake").to_string_lossy().into_owned(),
        name: name.to_string(),
        env: Vec::new(),
    };
    let windows = table("analytics.per_dataset");
    compare(&case.windows, &windows.pyiceberg(), &["datasetName"]).unwrap_or_else(|e| {
        panic!("the table of the Postgres catalog differs from the oracle: {e}")
    });
    windows.epochs();
    let view = table("analytics.per_source");
    compare(&case.view, &view.pyiceberg(), &["source"])
        .unwrap_or_else(|e| panic!("the view's table differs from the oracle: {e}"));
    assert!(view
        .snapshots()
        .iter()
        .all(|s| s["operation"] == "overwrite"));
    // the catalog is in Postgres, not in a file
    assert!(!case.dir.path().join("lake/catalog.db").exists());
}
