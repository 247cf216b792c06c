//! The `weir` binary as users drive it: commands, exit codes 0/1/2, outputs, errors on one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env("RUST_LOG", "warn");
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn assert_clean_error(o: &Output, code: i32) -> String {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {err}",
        text(&o.stdout)
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    err
}

#[test]
fn help_everywhere() {
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["validate", "--help"],
        vec!["generate", "--help"],
    ] {
        let o = weir().args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}");
        assert!(text(&o.stdout).contains("Usage"), "{args:?}");
    }
    let o = weir().arg("frobnicate").output().unwrap();
    assert_clean_error(&o, 1);
}

#[test]
fn quickstart_runs_and_writes_files() {
    let out = tempfile::tempdir().unwrap();
    let o = weir()
        .args(["run", "pipelines/examples/quickstart.yaml"])
        .current_dir(repo())
        .env("WEIR_OUT", out.path())
        .env("WEIR_HTTP", format!("127.0.0.1:{}", free_port()))
        .env("WEIR_PG", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let summary = text(&o.stdout);
    assert!(
        summary.contains("10000 events processed in")
            && summary.contains("103 bad")
            && summary.contains("6 late"),
        "{summary}"
    );
    let rows = std::fs::read_to_string(out.path().join("ingestion_1m.ndjson")).unwrap();
    assert_eq!(rows.lines().count(), 539);
    assert!(out.path().join("ingestion_1m.parquet").exists());
    let dead = std::fs::read_to_string(out.path().join("dead_letter.ndjson")).unwrap();
    assert_eq!(dead.lines().count(), 109);
    // no half-written files left behind
    for e in std::fs::read_dir(out.path()).unwrap() {
        assert!(!e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".inprogress"));
    }
}

#[test]
fn validate_prints_the_plan_and_rejects_bad_files_with_positions() {
    let o = weir()
        .args(["validate", "pipelines/examples/quickstart.yaml"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success());
    let plan = text(&o.stdout);
    assert!(
        plan.contains("ingestion_1m: from sample key [datasetName]")
            && plan.contains("reads timestamp, datasetName"),
        "{plan}"
    );
    assert!(plan.contains("checkpoints: off"), "{plan}");
    assert!(plan.contains("written when the run ends"), "{plan}");
    // with checkpoints: the delivery of every output and where the checkpoints go
    let dir = tempfile::tempdir().unwrap();
    let with = dir.path().join("p.yaml");
    let yaml = std::fs::read_to_string(repo().join("pipelines/examples/quickstart.yaml"))
        .unwrap()
        .replace(
            "data/sample-events.ndjson",
            repo()
                .join("pipelines/examples/data/sample-events.ndjson")
                .to_str()
                .unwrap(),
        )
        + "checkpoint: { dir: s3://bucket/weir/quickstart, interval: 5s }\n";
    std::fs::write(&with, yaml).unwrap();
    let o = weir().arg("validate").arg(&with).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plan = text(&o.stdout);
    assert!(
        plan.contains("checkpoints: s3://bucket/weir/quickstart every 5000 ms, keeping 3"),
        "{plan}"
    );
    assert!(
        plan.contains("exactly once: grows by whole checkpoints")
            && plan.contains("exactly once: a folder of part files"),
        "{plan}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\nsources:\n  s:\n    generator: { kind: data-ingestion, count: 10 }\n    colour: blue\n").unwrap();
    let o = weir().arg("validate").arg(&bad).output().unwrap();
    let err = assert_clean_error(&o, 1);
    // the line is `file:line:column: message`, as the contract has it
    assert!(
        err.starts_with(&format!("{}:5:5: unknown field `colour`", bad.display())),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let o = weir()
        .args(["validate", "/nonexistent/p.yaml"])
        .output()
        .unwrap();
    assert_clean_error(&o, 1);
}

#[test]
fn runtime_failures_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("blocker"),
        "a file where a folder should be",
    )
    .unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "name: x\nsources:\n  s:\n    generator: { kind: data-ingestion, count: 10 }\nwindows:\n  w: { from: s, key: [datasetName], tumbling: 1m, aggregates: { n: count(*) }, sinks: [out] }\nsinks:\n  out: { file: { path: blocker/out.ndjson } }\ndead_letter: { file: { path: dlq.ndjson } }\n",
    )
    .unwrap();
    let o = weir().arg("run").arg(&p).output().unwrap();
    let err = assert_clean_error(&o, 2);
    assert!(
        err.contains("sink `out`") && err.contains("blocker"),
        "{err}"
    );
}

/// A pool worker id that cannot name files is the user's error (exit 1), said before
/// anything connects or writes.
#[test]
fn a_worker_id_unusable_in_file_names_is_a_user_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        format!("name: x\nsources:\n  s:\n    kafka: {{ brokers: \"127.0.0.1:{}\", topic: t }}\n    schema: data-ingestion\nwindows:\n  w: {{ from: s, key: [datasetName], tumbling: 1m, aggregates: {{ n: count(*) }}, sinks: [out] }}\nsinks:\n  out: {{ file: {{ path: out.ndjson }} }}\ncheckpoint: {{ dir: state }}\n", free_port()),
    )
    .unwrap();
    let o = weir()
        .args(["run", "--worker", "a/b"])
        .arg(&p)
        .output()
        .unwrap();
    let err = assert_clean_error(&o, 1);
    assert!(err.contains("worker id `a/b` is not usable"), "{err}");
    assert!(!dir.path().join("state").exists(), "nothing written");
}

#[test]
fn generator_source_at_parallelism_2_equals_parallelism_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "name: gen\nsources:\n  s:\n    generator: { kind: data-ingestion, count: 30000, seed: 3, keys: 200 }\n    event_time: { field: timestamp, max_out_of_orderness: 3s }\nwindows:\n  w:\n    from: s\n    key: [datasetName]\n    tumbling: 10s\n    aggregates: { n: count(*), total: sum(recordCount), distinct_status: count(DISTINCT status), avg: avg(sizeBytes) }\n    sinks: [out]\nsinks:\n  out: { file: { path: \"${OUT}/w.ndjson\" } }\ndead_letter: { file: { path: \"${OUT}/dlq.ndjson\" } }\n",
    )
    .unwrap();
    let mut results = Vec::new();
    for n in ["1", "2"] {
        let out = dir.path().join(n);
        let o = weir()
            .arg("run")
            .arg(&p)
            .args(["--parallelism", n])
            .env("OUT", &out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        results.push(std::fs::read_to_string(out.join("w.ndjson")).unwrap());
    }
    assert!(results[0].lines().count() > 100);
    // rows are sorted by key within each window: the files are identical
    assert_eq!(results[0], results[1]);
}

#[test]
fn generate_writes_events_with_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ev.ndjson");
    let o = weir()
        .args([
            "generate",
            "service-health",
            "--count",
            "5000",
            "--seed",
            "9",
            "--bad-frac",
            "0.05",
            "--out",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let body = std::fs::read_to_string(&f).unwrap();
    assert_eq!(body.lines().count(), 5000);
    let good = body
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["latencyMs"].is_i64() && v["timestamp"].is_i64())
        })
        .count();
    assert!((4600..4900).contains(&good), "{good}");
    let o = weir()
        .args([
            "generate",
            "data-ingestion",
            "--count",
            "5",
            "--kafka",
            "127.0.0.1:9092",
        ])
        .output()
        .unwrap();
    assert!(assert_clean_error(&o, 1).contains("BROKERS/TOPIC"));
}

#[test]
fn processing_time_windows_count_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "name: proc\nsources:\n  s:\n    generator: { kind: service-health, count: 6000, events_per_second: 20000 }\n    event_time: { field: timestamp, idle_timeout: 1s }\nwindows:\n  w:\n    from: s\n    key: [namespace]\n    tumbling: 100ms\n    time: processing\n    aggregates: { n: count(*) }\n    sinks: [out]\nsinks:\n  out: { file: { path: out.ndjson } }\ndead_letter: { file: { path: dlq.ndjson } }\n",
    )
    .unwrap();
    let o = weir()
        .arg("run")
        .arg(&p)
        .args(["--parallelism", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("out.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total: i64 = rows.iter().map(|r| r["n"].as_i64().unwrap()).sum();
    assert_eq!(total, 6000);
    let windows: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["window_start"].as_str().unwrap())
        .collect();
    // 6000 events at 20000/s span about 300 ms of the clock: several 100 ms windows
    assert!(windows.len() >= 2, "{windows:?}");
}
