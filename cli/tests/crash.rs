//! Exactly once across crashes, on a file source (its partition is the file, its offsets
//! line positions): `weir run` with checkpoints is killed with SIGKILL at random moments and
//! at the checkpoint failpoints, restarted each time, and at the end its outputs must equal
//! the reference model's rows (`tests/model/window_model.py`) exactly (no row missing, none
//! twice, no partial window): the NDJSON file, the Parquet part files read back by pyarrow,
//! and the dead letters (equal to those of a run without a crash).
//!
//! `WEIR_CRASH_KILLS` sets the number of kills (default 10), `WEIR_CRASH_SEED` repeats a
//! run's random choices; `scripts/crash-test.sh` runs longer loops.

#[path = "support/iceberg.rs"]
mod iceberg;
#[path = "support/s3.rs"]
mod s3;
#[path = "support/crash.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::read_parquet_folder;
use weir_tests::{compare, read_ndjson, Row};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kills() -> usize {
    std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(10)
}

fn check(out: std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PIPELINE: &str = r#"name: crash-file
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
    sinks: [rows, lake, ice_rows]
views:
  per_source:
    from: events
    key: [source]
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [view_log, ice_view]
sinks:
  rows: { file: { path: out/per_dataset.ndjson } }
  view_log: { file: { path: out/per_source.ndjson } }
  lake: { file: { path: out/per_dataset.parquet } }
  ice_rows: { iceberg: { catalog: "sqlite://out/iceberg/catalog.db", warehouse: out/iceberg, table: crash.per_dataset } }
  ice_view: { iceberg: { catalog: "sqlite://out/iceberg/catalog.db", warehouse: out/iceberg, table: crash.per_source } }
dead_letter: { file: { path: out/dead_letter.ndjson } }
checkpoint: { dir: state, interval: 150ms }
"#;

/// The `op = snapshot` rows of a view's changelog, sorted; checks that each key is in the
/// snapshot once and that its last row in the log holds the snapshot's values.
fn final_snapshot(path: &Path, label: &str) -> Vec<String> {
    let log = read_ndjson(path);
    let mut snapshot = Vec::new();
    let mut last: std::collections::BTreeMap<String, Row> = Default::default();
    for r in &log {
        let key = r["source"].to_string();
        if r["op"] == "snapshot" {
            snapshot.push(serde_json::Value::Object(r.clone()).to_string());
        }
        last.insert(key, r.clone());
    }
    let keys: std::collections::BTreeSet<String> =
        log.iter().map(|r| r["source"].to_string()).collect();
    assert_eq!(
        snapshot.len(),
        keys.len(),
        "{label}: each key once in the final snapshot"
    );
    for r in last.values() {
        assert_eq!(
            r["op"], "snapshot",
            "{label}: a change after the final snapshot: {r:?}"
        );
    }
    snapshot.sort();
    snapshot
}

/// Generated input with bad and very late lines, the oracle's rows for it, and the dead
/// letters of a run without checkpoints or crashes.
struct FileCase {
    dir: tempfile::TempDir,
    expected: Vec<Row>,
    summary: serde_json::Value,
    reference_dead: Vec<String>,
    /// The view's final snapshot in a run without crashes, one line per key, sorted.
    reference_view: Vec<String>,
    /// The view's Iceberg table in that run, one JSON line per row, sorted.
    reference_iceberg_view: Vec<String>,
    pipeline: PathBuf,
    /// Environment of the runs (object-store credentials).
    env: Vec<(String, String)>,
    /// The pipeline has its Iceberg sinks (checked by `verify`).
    iceberg: bool,
}

/// The pipeline without its Iceberg sinks.
fn without_iceberg(pipeline: &str) -> String {
    pipeline
        .replace(", ice_rows]", "]")
        .replace(", ice_view]", "]")
        .lines()
        .filter(|l| !l.contains("iceberg:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

impl FileCase {
    fn new() -> FileCase {
        Self::with_checkpoints("state", Vec::new())
    }

    /// A case whose checkpoints go to `location`, with `env` for the runs.
    fn with_checkpoints(location: &str, env: Vec<(String, String)>) -> FileCase {
        Self::build(location, env, true)
    }

    /// A case of the pipeline with (`iceberg`) or without its Iceberg sinks.
    fn build(location: &str, env: Vec<(String, String)>, iceberg: bool) -> FileCase {
        let pipeline_text = if iceberg {
            PIPELINE.to_string()
        } else {
            without_iceberg(PIPELINE)
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("input.ndjson");
        weir_tests::generate(
            &input,
            &[
                "400000",
                "--seed",
                "21",
                "--keys",
                "400",
                "--step-ms",
                "15",
                "--unicode-keys",
                "--bad-frac",
                "0.004",
                "--late-frac",
                "0.003",
                "--late-ms",
                "240000",
            ],
        );
        let expected_path = d.join("expected.ndjson");
        let oracle = Command::new("python3")
            .arg(weir_tests::model_script())
            .arg(&input)
            .args(["--schema", "data-ingestion", "--key", "datasetName"])
            .args(["--size", "1m", "--ooo", "5s", "--agg", "events=count"])
            .args([
                "--agg",
                "records=sum:recordCount",
                "--agg",
                "max_bytes=max:sizeBytes",
            ])
            .args(["--agg", "failures=count_if:status=FAILURE", "-o"])
            .arg(&expected_path)
            .output()
            .unwrap();
        assert!(
            oracle.status.success(),
            "window_model.py: {}",
            String::from_utf8_lossy(&oracle.stderr)
        );
        let summary = serde_json::from_str(String::from_utf8_lossy(&oracle.stderr).trim()).unwrap();
        let expected = read_ndjson(&expected_path);

        let reference = d.join("reference.yaml");
        std::fs::write(
            &reference,
            pipeline_text
                .replace("checkpoint: { dir: state, interval: 150ms }\n", "")
                .replace("out/", "reference/"),
        )
        .unwrap();
        check(weir_run(&reference), "the reference run");
        let mut reference_dead: Vec<String> =
            std::fs::read_to_string(d.join("reference/dead_letter.ndjson"))
                .unwrap()
                .lines()
                .map(String::from)
                .collect();
        reference_dead.sort();
        let reference_view = final_snapshot(&d.join("reference/per_source.ndjson"), "reference");
        assert!(!reference_view.is_empty());
        let mut reference_iceberg_view: Vec<String> = Vec::new();
        if iceberg {
            reference_iceberg_view = iceberg::Table::local(
                support::venv_python(),
                &d.join("reference/iceberg"),
                "crash.per_source",
            )
            .pyiceberg()
            .into_iter()
            .map(|r| serde_json::Value::Object(r).to_string())
            .collect();
            reference_iceberg_view.sort();
            assert_eq!(reference_iceberg_view.len(), reference_view.len());
        }
        let pipeline = d.join("pipeline.yaml");
        let case = FileCase {
            dir,
            expected,
            summary,
            reference_dead,
            reference_view,
            reference_iceberg_view,
            pipeline,
            env,
            iceberg,
        };
        case.set_checkpoints(location);
        case
    }

    /// Writes the pipeline with its checkpoints at `location`.
    fn set_checkpoints(&self, location: &str) {
        let text = if self.iceberg {
            PIPELINE.to_string()
        } else {
            without_iceberg(PIPELINE)
        };
        std::fs::write(
            &self.pipeline,
            text.replace("dir: state,", &format!("dir: \"{location}\",")),
        )
        .unwrap();
    }

    fn run(&self) -> Command {
        self.weir_run(self.pipeline.to_str().unwrap())
    }

    /// [`Self::run`] started from the pipeline's folder, naming it by a relative path.
    fn run_from_its_folder(&self) -> Command {
        let mut c = self.weir_run("pipeline.yaml");
        c.current_dir(self.dir.path());
        c
    }

    /// `weir run PIPELINE --parallelism 2` with the case's environment.
    fn weir_run(&self, pipeline: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["run", pipeline, "--parallelism", "2"]);
        c
    }

    /// The outputs equal the oracle's rows and the reference dead letters, and nothing
    /// uncommitted is left behind.
    fn verify(&self, label: &str) {
        let out = self.dir.path().join("out");
        let keys = ["datasetName"];
        compare(
            &self.expected,
            &read_ndjson(&out.join("per_dataset.ndjson")),
            &keys,
        )
        .unwrap_or_else(|e| panic!("{label}: the NDJSON output differs from the oracle: {e}"));
        compare(
            &self.expected,
            &read_parquet_folder(&out.join("per_dataset.parquet")),
            &keys,
        )
        .unwrap_or_else(|e| panic!("{label}: the Parquet parts differ from the oracle: {e}"));
        let mut dead: Vec<String> = std::fs::read_to_string(out.join("dead_letter.ndjson"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        dead.sort();
        let s = &self.summary;
        assert_eq!(
            dead.len() as u64,
            s["bad"].as_u64().unwrap() + s["late"].as_u64().unwrap()
        );
        assert!(
            dead == self.reference_dead,
            "{label}: the dead letters differ from a run without crashes"
        );
        assert_eq!(
            final_snapshot(&out.join("per_source.ndjson"), label),
            self.reference_view,
            "{label}: the view's final snapshot differs from a run without crashes"
        );
        // Iceberg: every window once, no epoch committed twice, the view one row per key
        if !self.iceberg {
            return self.nothing_left_behind(label);
        }
        let table =
            |name: &str| iceberg::Table::local(support::venv_python(), &out.join("iceberg"), name);
        let windows = table("crash.per_dataset");
        compare(&self.expected, &windows.pyiceberg(), &keys)
            .unwrap_or_else(|e| panic!("{label}: the Iceberg table differs from the oracle: {e}"));
        windows.epochs();
        let view = table("crash.per_source");
        let mut rows: Vec<String> = view
            .pyiceberg()
            .into_iter()
            .map(|r| serde_json::Value::Object(r).to_string())
            .collect();
        rows.sort();
        assert_eq!(
            rows, self.reference_iceberg_view,
            "{label}: the view's Iceberg table differs from a run without crashes"
        );
        view.epochs();
        self.nothing_left_behind(label);
    }

    /// No side file or hidden part is left in the outputs.
    fn nothing_left_behind(&self, label: &str) {
        let out = self.dir.path().join("out");
        for e in std::fs::read_dir(&out)
            .unwrap()
            .chain(std::fs::read_dir(out.join("per_dataset.parquet")).unwrap())
        {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with('.') && !name.contains(".epoch-"),
                "{label}: {name} left behind"
            );
        }
    }

    /// Starts over without state or outputs.
    fn reset(&self) {
        let _ = std::fs::remove_dir_all(self.dir.path().join("out"));
        let _ = std::fs::remove_dir_all(self.dir.path().join("state"));
    }
}

#[test]
fn killed_and_restarted_file_runs_give_exactly_the_oracle_rows() {
    let case = FileCase::new();
    let report = support::crash_loop(
        || case.run(),
        kills(),
        Duration::from_millis(300),
        &case.dir.path().join("logs"),
        || {
            case.verify("a run that finished before its kill");
            case.reset();
        },
    );
    eprintln!("{report:?}");
    case.verify("after the crashes");
    assert!(report.kills >= kills());
    assert!(report.at_failpoints >= 2, "{report:?}");
    assert!(report.restores >= 1, "{report:?}");
}

#[test]
fn sigterm_takes_a_final_checkpoint_and_exits_0_then_a_restart_continues() {
    let case = FileCase::new();
    let log = case.dir.path().join("stopped.log");
    let mut child = case
        .run()
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // stop it while it reads: once a checkpoint holds open windows
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("checkpoint complete") && !l.contains("state_rows=0 "))
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the signal"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let signalled = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the stop took too long"
    );
    assert!(stderr.contains("stopping"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checkpoints:"), "{stdout}");
    // exit status 0, but the summary does not pass for a run that read its files to the end
    assert!(stdout.contains("stopped by a signal"), "{stdout}");
    // the stop left only committed output, short of the end
    let rows = read_ndjson(&case.dir.path().join("out/per_dataset.ndjson")).len();
    assert!(
        rows < case.expected.len(),
        "the stop came after the end: {rows} rows"
    );
    // the restart continues from the final checkpoint, though started another way (from the
    // pipeline's folder, `weir run pipeline.yaml`): the files' partitions are the same ones
    // (keyed by the path the pipeline names, where before a restart so read every file again
    // into the restored windows)
    let out = case.run_from_its_folder().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");
    assert!(!stdout.contains("stopped by a signal"), "{stdout}");
    case.verify("after a stop and a restart");
}

/// Waits until `log` has a line with `text`, while `child` runs.
fn wait_for_line(child: &mut std::process::Child, log: &Path, text: &str) {
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before `{text}`:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no `{text}`");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two runs of one pipeline on one checkpoint folder (a restart while the old process still
/// stops, a second copy started by mistake) would restore, truncate and commit each other's
/// files. The second waits for the folder (`WEIR_CHECKPOINT_LOCK_WAIT`), then is refused with
/// exit 1 (the user's to fix) and what to do, and the first goes on; once the first stopped, it runs.
#[test]
fn a_second_run_on_a_held_checkpoint_folder_waits_then_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        "name: held\nsources:\n  health:\n    generator: { kind: service-health, events_per_second: 2000, seed: 7 }\n\
         windows:\n  per_service:\n    from: health\n    key: [serviceName]\n    tumbling: 1s\n    aggregates: { events: count(*) }\n    sinks: [rows]\n\
         sinks:\n  rows: { file: { path: out/rows.ndjson } }\ncheckpoint: { dir: state, interval: 200ms }\n",
    )
    .unwrap();
    let start = |log: &Path| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", pipeline.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let stop = |child: &mut std::process::Child| {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    };
    let first_log = dir.path().join("first.log");
    let mut first = start(&first_log);
    wait_for_line(&mut first, &first_log, "checkpoint complete");
    let second = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", pipeline.to_str().unwrap()])
        .env("WEIR_CHECKPOINT_LOCK_WAIT", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{text}");
    assert!(text.contains("waiting for it"), "{text}");
    assert!(
        text.contains("another process holds the checkpoint folder"),
        "{text}"
    );
    assert!(first.try_wait().unwrap().is_none(), "the first run stopped");
    assert_eq!(stop(&mut first).code(), Some(0));
    // the folder is free: the next run restores the first one's checkpoint
    let third_log = dir.path().join("third.log");
    let mut third = start(&third_log);
    wait_for_line(&mut third, &third_log, "restored from checkpoint");
    assert_eq!(stop(&mut third).code(), Some(0));
}

fn weir_run(pipeline: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", pipeline.to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn a_checkpoint_of_a_changed_pipeline_is_refused_with_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = repo().join("tests/golden/ingestion_1m/input.ndjson");
    let yaml = PIPELINE.replace("input.ndjson", input.to_str().unwrap());
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(&pipeline, &yaml).unwrap();
    check(weir_run(&pipeline), "the first run");
    for (change, what) in [
        (
            yaml.replace("tumbling: 1m", "tumbling: 5m"),
            "tumbling 60000 ms",
        ),
        (
            yaml.replace("key: [datasetName]", "key: [source]"),
            "key [datasetName]",
        ),
        (
            yaml.replace("max_bytes: max(sizeBytes)", "max_bytes: min(sizeBytes)"),
            "max_bytes = max(sizeBytes)",
        ),
    ] {
        std::fs::write(&pipeline, &change).unwrap();
        let out = weir_run(&pipeline);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("was written by a different version of this pipeline"),
            "{stderr}"
        );
        assert!(
            stderr.contains(what),
            "the message names what changed ({what}): {stderr}"
        );
        assert!(stderr.contains("changed from"), "{stderr}");
    }
    // the original pipeline still restores
    std::fs::write(&pipeline, &yaml).unwrap();
    let stdout = check(weir_run(&pipeline), "the run with the original pipeline");
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");
}

/// Checkpoints in an S3 bucket (an S3-compatible server: moto) through `object_store`, with
/// kills in the middle: the same exact results as with a local folder.
#[test]
fn checkpoints_in_an_s3_bucket_survive_kills() {
    let s3 = s3::S3Server::start(&support::venv_python(), "weir-checkpoints");
    let case = FileCase::with_checkpoints("s3://weir-checkpoints/crash-file", s3.env());
    let fresh = std::cell::Cell::new(0);
    let report = support::crash_loop(
        || case.run(),
        4,
        Duration::from_millis(300),
        &case.dir.path().join("logs"),
        || {
            case.verify("a run that finished before its kill");
            case.reset();
            // start over under a new prefix
            fresh.set(fresh.get() + 1);
            case.set_checkpoints(&format!("s3://weir-checkpoints/crash-file/{}", fresh.get()));
        },
    );
    eprintln!("{report:?}");
    case.verify("after the crashes, with checkpoints in S3");
    assert!(report.restores >= 1, "{report:?}");
    let (status, listing) = s3.request("GET", "/weir-checkpoints?list-type=2&prefix=crash-file/");
    assert_eq!(status, 200);
    assert!(
        listing.contains("crash-file/chk-") && listing.contains("/manifest.json"),
        "the checkpoints are in the bucket: {listing}"
    );
    // nothing went to a local folder instead
    assert!(!case.dir.path().join("state").exists());
}

/// The newest checkpoint folder with a manifest under `state`.
fn newest_checkpoint(state: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.join("manifest.json").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Damages checkpoint folder `chk`: its manifest cut in the middle (a half-written manifest),
/// or one of its state files altered (a byte flipped in its middle).
fn damage(chk: &Path, manifest: bool) -> String {
    let state_file = std::fs::read_dir(chk)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        // an open-window state file (emitted windows kept for SQL are skipped when damaged,
        // with a warning: they do not make a restore fall back)
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("op-") && name.ends_with(".arrow") && !name.ends_with("-emitted.arrow")
        });
    match state_file {
        Some(f) if !manifest => {
            let mut bytes = std::fs::read(&f).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(&f, bytes).unwrap();
            format!("{} altered", f.display())
        }
        _ => {
            let m = chk.join("manifest.json");
            let len = std::fs::metadata(&m).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&m)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            format!("{} cut to {} bytes", m.display(), len / 2)
        }
    }
}

/// Every checkpoint damaged (their manifests half written): the run refuses to start from
/// nothing, whose recovery would have the sinks drop what the checkpoints committed (the
/// file sinks cut their outputs to nothing), and says what to do; the outputs stay.
#[test]
fn a_folder_whose_every_checkpoint_is_damaged_is_refused_and_the_outputs_stay() {
    let case = FileCase::build("state", Vec::new(), false);
    let out = case.run().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    case.verify("before the damage");
    let state = case.dir.path().join("state");
    let mut damaged = 0;
    for e in std::fs::read_dir(&state).unwrap().flatten() {
        if e.path().join("manifest.json").exists() {
            damage(&e.path(), true);
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let out = case.run().output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("every checkpoint there is damaged"), "{text}");
    case.verify("after the refused run");
}

/// A run killed with SIGKILL, whose newest checkpoint is then damaged (its manifest half
/// written, or a state file altered), restores the newest intact checkpoint: the outputs roll
/// back to it and the final outputs still equal the oracle's rows and a crash-free run's dead
/// letters and view, exactly. Kills at the `before_commit` failpoint (the manifest written,
/// the outputs not committed) and after some checkpoints (their outputs committed).
#[test]
fn a_damaged_newest_checkpoint_is_skipped_and_the_outputs_still_equal_the_oracle() {
    let case = FileCase::build("state", Vec::new(), false);
    let state = case.dir.path().join("state");
    let logs = case.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut fallbacks = 0;
    for round in 0..4 {
        let log = logs.join(format!("run-{round}.log"));
        let mut cmd = case.run();
        let at_failpoint = round % 2 == 0;
        if at_failpoint {
            cmd.env(
                "WEIR_FAILPOINT_PAUSE",
                format!("before_commit:5000:{}", 1 - round / 2),
            );
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "run {round} ended before its kill:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let busy = text
                .lines()
                .filter(|l| l.contains("checkpoint complete") && !l.contains("state_rows=0 "))
                .count();
            let due = if at_failpoint {
                text.contains("failpoint before_commit")
            } else {
                busy >= 2 - round / 2
            };
            if due {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "run {round}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        fallbacks += usize::from(text.contains("restoring an older checkpoint"));
        let chk = newest_checkpoint(&state).expect("a checkpoint");
        eprintln!("run {round} killed; {}", damage(&chk, round < 2));
    }
    let out = case.run().output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the final run failed:\n{text}");
    fallbacks += usize::from(text.contains("restoring an older checkpoint"));
    assert_eq!(fallbacks, 4, "every restart skipped the damaged checkpoint");
    case.verify("after kills that damaged the newest checkpoint");
}

/// Files where the folders of checkpoints 1 to 400 in `state` would go, so that no checkpoint
/// can be stored there (as with a full disk) until they are removed.
fn block_checkpoint_folders(state: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(state).unwrap();
    let blockers: Vec<PathBuf> = (1..=400)
        .map(|e| state.join(format!("chk-{e:010}")))
        .collect();
    for b in &blockers {
        std::fs::write(b, b"not a folder").unwrap();
    }
    blockers
}

/// A checkpoint folder that refuses checkpoints for longer than
/// `WEIR_CHECKPOINT_STORE_TIMEOUT` fails the run (exit 2, with the store's error) rather than
/// trying for ever, and commits nothing.
#[test]
fn a_checkpoint_folder_that_refuses_writes_past_the_store_timeout_fails_the_run() {
    let case = FileCase::build("state", Vec::new(), false);
    block_checkpoint_folders(&case.dir.path().join("state"));
    let started = std::time::Instant::now();
    let out = case
        .run()
        .env("WEIR_CHECKPOINT_STORE_TIMEOUT", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot store the checkpoint"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it took {:?}",
        started.elapsed()
    );
    let committed = case.dir.path().join("out/per_dataset.ndjson");
    assert_eq!(std::fs::read_to_string(&committed).unwrap_or_default(), "");
}

/// A checkpoint folder that cannot take a checkpoint for a while (a full disk; here each
/// checkpoint's folder name taken by a file) does not end the run: the checkpoint is stored
/// again with a backoff, the outputs commit nothing meanwhile, and once the folder takes it
/// the run ends with every row, equal to the oracle's; a restart then repeats nothing.
#[test]
fn a_checkpoint_folder_that_refuses_writes_for_a_while_is_written_again_and_nothing_is_lost() {
    let case = FileCase::build("state", Vec::new(), false);
    let blockers = block_checkpoint_folders(&case.dir.path().join("state"));
    let log = case.dir.path().join("refused.log");
    let mut child = case
        .run()
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, &log, "cannot store the checkpoint");
    // it goes on trying (the first wait is 1 s), and commits nothing meanwhile
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&log)
        .unwrap()
        .matches("cannot store the checkpoint")
        .count()
        < 2
    {
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no second attempt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let committed = case.dir.path().join("out/per_dataset.ndjson");
    assert_eq!(
        std::fs::read_to_string(&committed).unwrap_or_default(),
        "",
        "rows committed without a checkpoint"
    );
    for b in &blockers {
        std::fs::remove_file(b).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("checkpoint stored after the store failed"),
        "{stderr}"
    );
    case.verify("after the folder took the checkpoint again");
    let out = case.run().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    case.verify("after a restart");
}
