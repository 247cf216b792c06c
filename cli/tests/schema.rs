//! `weir schema`: the JSON Schema of pipeline files, checked by an independent validator
//! (Python `jsonschema`, draft 7, the dialect yaml-language-server reads): every example and
//! golden pipeline validates, and each invalid file is refused by both the schema and
//! `weir validate`.

#[path = "support/crash.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The schema as `weir schema` prints it, written to `dir`.
fn schema_file(dir: &Path) -> PathBuf {
    let out = weir().arg("schema").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schema: Value = serde_json::from_slice(&out.stdout).expect("weir schema prints JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let path = dir.join("weir.schema.json");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// Per file, the schema's errors (empty: valid).
fn schema_errors(schema: &Path, files: &[PathBuf]) -> Vec<(PathBuf, Vec<String>)> {
    let out = Command::new(support::venv_python())
        .arg(repo().join("tests/schema/check.py"))
        .arg(schema)
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let errors = v["errors"].as_array().unwrap();
            (
                PathBuf::from(v["file"].as_str().unwrap()),
                errors
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn the_committed_schema_is_current() {
    let out = weir().arg("schema").output().unwrap();
    let committed = std::fs::read(repo().join("pipelines/pipeline.schema.json")).unwrap();
    assert!(
        out.stdout == committed,
        "pipelines/pipeline.schema.json is stale: run `weir schema > pipelines/pipeline.schema.json`"
    );
}

#[test]
fn every_example_and_golden_pipeline_validates_against_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(dir.path());
    let mut files = Vec::new();
    yaml_files(&repo().join("pipelines/examples"), &mut files);
    yaml_files(&repo().join("tests/golden"), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for (file, errors) in schema_errors(&schema, &files) {
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
    for file in files
        .iter()
        .filter(|f| f.starts_with(repo().join("pipelines/examples")))
    {
        let out = weir().arg("validate").arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const GOOD: &str = r#"# yaml-language-server: $schema=weir.schema.json
name: schema-check
sources:
  events:
    generator:
      kind: data-ingestion
      count: ${EVENTS:-1000}
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  w:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: { events: count(*) }
    sinks: [out]
sinks:
  out: { file: { path: out/w.ndjson } }
"#;

/// Invalid files: (what is wrong, replaced text, replacement).
const INVALID: &[(&str, &str, &str)] = &[
    (
        "an unknown top-level key",
        "name: schema-check",
        "name: schema-check\nwindow: {}",
    ),
    (
        "an unknown key in a source",
        "kind: data-ingestion",
        "kind: data-ingestion\n      rate: 5",
    ),
    ("a bad duration", "tumbling: 1m", "tumbling: 1 minute"),
    (
        "a number where a list is expected",
        "key: [datasetName]",
        "key: 7",
    ),
    (
        "a text where a number is expected",
        "count: ${EVENTS:-1000}",
        "count: many",
    ),
    (
        "an unknown format",
        "    event_time:",
        "    format: xml\n    event_time:",
    ),
    (
        "an unknown generator kind",
        "kind: data-ingestion",
        "kind: clicks",
    ),
    (
        "a name with capitals",
        "name: schema-check",
        "name: Schema Check",
    ),
    ("no name", "name: schema-check\n", ""),
    (
        "a sink with an unknown connector",
        "out: { file:",
        "out: { ftp:",
    ),
];

#[test]
fn invalid_pipelines_are_refused_by_the_schema_and_by_weir_validate() {
    let dir = tempfile::tempdir().unwrap();
    let schema = schema_file(dir.path());
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, GOOD).unwrap();
    let mut files = vec![good.clone()];
    for (i, (what, from, to)) in INVALID.iter().enumerate() {
        assert!(GOOD.contains(from), "{what}: {from}");
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, GOOD.replacen(from, to, 1)).unwrap();
        files.push(path);
    }
    let verdicts = schema_errors(&schema, &files);
    assert!(
        verdicts[0].1.is_empty(),
        "the good file: {:?}",
        verdicts[0].1
    );
    let out = weir().arg("validate").arg(&good).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ((what, _, _), (file, errors)) in INVALID.iter().zip(&verdicts[1..]) {
        assert!(
            !errors.is_empty(),
            "{what}: the schema accepts {}",
            file.display()
        );
        let out = weir().arg("validate").arg(file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: weir validate: {stderr}"
        );
        let at = format!("{}:", file.display());
        assert!(
            stderr.contains(&at),
            "{what}: no file:line:column in {stderr}"
        );
    }
}

#[test]
fn version_names_the_git_revision_and_completions_are_printed() {
    let out = weir().arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("weir {} (git ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = weir().args(["completions", shell]).output().unwrap();
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            script.contains("validate") && script.contains("schema"),
            "{shell}: {script}"
        );
    }
    let out = weir().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}
