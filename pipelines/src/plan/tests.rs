//! Planning, concern by concern, through `load` as a user's file reaches it: sources, sinks,
//! windows and views, settings, describe and fingerprint, and the positions of refusals.

use super::*;

/// A pipeline with one generator source, a window, a view, two file sinks and a token.
const PIPELINE: &str = r#"name: planned
sources:
  ingest:
    generator: { kind: data-ingestion, count: 100, seed: 3, keys: 4 }
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset:
    from: ingest
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      bytes: sum(sizeBytes)
    sinks: [rows]
views:
  latest:
    from: ingest
    key: [datasetName]
    aggregates:
      records: sum(recordCount)
    sinks: [changes]
sinks:
  rows: { file: { path: out/rows.ndjson } }
  changes: { file: { path: out/changes.ndjson } }
dead_letter: { file: { path: out/dead.ndjson } }
checkpoint: { dir: state }
serve: { http: "127.0.0.1:0", token: "plan-test-token-4411" }
"#;

/// `text` written to a pipeline file in a folder of its own, and loaded.
fn load_text(text: &str) -> Result<Plan, PipelineError> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    load_in(dir.path(), text)
}

/// `text` written to `dir/pipeline.yaml` and loaded (paths resolve beside it).
fn load_in(dir: &Path, text: &str) -> Result<Plan, PipelineError> {
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).expect("the pipeline file is written");
    load(&path)
}

fn planned(text: &str) -> Plan {
    load_text(text).unwrap_or_else(|e| panic!("{e}"))
}

/// The refusal of `text`, as `line:column: message` (the file name left out).
fn refusal(text: &str) -> String {
    let e = match load_text(text) {
        Ok(_) => panic!("the pipeline was accepted"),
        Err(e) => e,
    };
    format!("{}:{}: {}", e.line, e.column, e.reason())
}

#[test]
fn sources_keep_only_the_columns_the_outputs_read() {
    let plan = planned(PIPELINE);
    assert_eq!(plan.sources.len(), 1);
    let s = &plan.sources[0];
    assert_eq!(s.name, "ingest");
    assert_eq!(s.time_field, "timestamp");
    assert_eq!(s.max_out_of_orderness_ms, 5_000);
    assert_eq!(s.max_future_ms, DEFAULT_MAX_FUTURE_MS);
    let mut columns = s.columns.clone();
    columns.sort();
    assert_eq!(
        columns,
        ["datasetName", "recordCount", "sizeBytes", "timestamp"]
    );
}

#[test]
fn windows_and_views_name_their_source_and_sinks() {
    let plan = planned(PIPELINE);
    let w = &plan.windows[0];
    assert_eq!(w.config.name, "per_dataset");
    assert_eq!(w.config.size_ms, 60_000);
    assert_eq!(w.config.keys, ["datasetName"]);
    assert_eq!(plan.sources[w.source].name, "ingest");
    let sink_names = |sinks: &[usize]| -> Vec<String> {
        sinks.iter().map(|&i| plan.sinks[i].name.clone()).collect()
    };
    assert_eq!(sink_names(&w.sinks), ["rows"]);
    let v = &plan.views[0];
    assert_eq!(v.config.name, "latest");
    assert_eq!(sink_names(&v.sinks), ["changes"]);
    // a sink knows the schema of the rows it receives
    let schema = plan.sinks[w.sinks[0]].schema.as_ref().expect("a schema");
    for column in [
        "window_start",
        "window_end",
        "datasetName",
        "events",
        "bytes",
    ] {
        assert!(
            schema.field_with_name(column).is_ok(),
            "{column}: {schema:?}"
        );
    }
}

#[test]
fn settings_get_their_defaults_and_paths_beside_the_file() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let plan = load_in(dir.path(), PIPELINE).unwrap_or_else(|e| panic!("{e}"));
    let c = plan.checkpoint.as_ref().expect("checkpoint");
    assert_eq!(c.interval_ms, DEFAULT_CHECKPOINT_INTERVAL_MS);
    assert_eq!(c.keep, 3);
    assert_eq!(c.location, dir.path().join("state").display().to_string());
    let serve = plan.serve.as_ref().expect("serve");
    assert_eq!(serve.http.as_deref(), Some("127.0.0.1:0"));
    assert!(plan.tracing.is_none());
    let refused = refusal(&PIPELINE.replace(
        "checkpoint: { dir: state }",
        "checkpoint: { dir: state, interval: 10ms }",
    ));
    assert!(refused.contains("at least 100ms"), "{refused}");
}

#[test]
fn describe_shows_every_part_and_no_secret() {
    crate::secrets::register(["plan-test-token-4411".to_string()]);
    let plan = planned(PIPELINE);
    let described = plan.describe(2);
    let text = crate::secrets::redact(&described);
    for part in [
        "planned",
        "ingest",
        "per_dataset",
        "latest",
        "rows",
        "changes",
    ] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
    assert!(!text.contains("plan-test-token-4411"), "{text}");
}

#[test]
fn the_fingerprint_changes_with_what_state_depends_on_only() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let fingerprint = |text: &str| {
        load_in(dir.path(), text)
            .unwrap_or_else(|e| panic!("{e}"))
            .fingerprint()
    };
    let base = fingerprint(PIPELINE);
    assert_eq!(fingerprint(PIPELINE), base, "stable across loads");
    // a serving address is not state
    assert_eq!(
        fingerprint(&PIPELINE.replace("127.0.0.1:0", "127.0.0.1:1")),
        base
    );
    // a window's size is
    let resized = fingerprint(&PIPELINE.replace("tumbling: 1m", "tumbling: 5m"));
    let changed: Vec<&String> = base
        .keys()
        .filter(|k| base.get(*k) != resized.get(*k))
        .collect();
    assert_eq!(changed, ["window per_dataset"]);
    // and so is a view's aggregate
    let f = fingerprint(&PIPELINE.replace("sum(recordCount)", "max(recordCount)"));
    assert_ne!(
        f.get("view latest: aggregates"),
        base.get("view latest: aggregates")
    );
}

/// `dir` as seen from the working folder by way of `..` (`../../../tmp/x`).
fn roundabout(dir: &Path) -> PathBuf {
    let cwd = std::env::current_dir().expect("a working folder");
    let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
    up.join(dir.strip_prefix("/").expect("an absolute folder"))
}

/// A pipeline is the same however its file is named (`weir run p.yaml` from its folder,
/// `weir run ../x/p.yaml`, `weir run /srv/x/p.yaml`): the same fingerprint, files named the
/// same, and the same partition keys, where before a restart named another way was refused
/// ("written by a different version") or, with no file sink, read every file again. A
/// checkpoint an earlier version wrote (paths as resolved then) still restores when started
/// the same way.
#[test]
fn a_pipeline_is_the_same_however_its_file_is_named() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let dir = tmp.path().canonicalize().expect("a canonical folder");
    std::fs::create_dir_all(dir.join("in")).expect("a folder");
    std::fs::write(dir.join("in/a.ndjson"), "{}\n").expect("a file");
    let text = PIPELINE.replace(
        "generator: { kind: data-ingestion, count: 100, seed: 3, keys: 4 }",
        "file: { path: \"in/*.ndjson\" }\n    schema: data-ingestion",
    );
    let direct = load_in(&dir, &text).unwrap_or_else(|e| panic!("{e}"));
    let other = load(&roundabout(&dir).join("pipeline.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(direct.fingerprint(), other.fingerprint());
    let input = |p: &Plan| p.sources[0].input.describe();
    assert_eq!(input(&direct), input(&other));
    assert!(input(&other).ends_with(&format!(": {}", dir.join("in/a.ndjson").display())));
    // former spellings: as this run resolves it (here absolute), then `./in/a.ndjson`
    let key = || "in/a.ndjson".to_string();
    assert_eq!(
        direct.sources[0].input.former_partition_keys(),
        [
            (dir.join("in/a.ndjson").display().to_string(), key()),
            ("./in/a.ndjson".to_string(), key())
        ]
    );
    assert_eq!(other.sources[0].input.former_partition_keys().len(), 3);
    let (former_key, key) = other.sources[0].input.former_partition_keys().remove(0);
    assert_eq!(key, "in/a.ndjson");
    assert!(former_key.starts_with("../") && former_key.ends_with("/in/a.ndjson"));
    // a checkpoint of an earlier version started the roundabout way: the same items
    let mut earlier = other.fingerprint();
    earlier.extend(other.former_fingerprint());
    assert!(earlier["sink rows"].starts_with("Ndjson file ../"));
    let current = crate::run::fingerprint_against(&other, &earlier);
    assert!(weir_engine::checkpoint::compatibility(&earlier, &current).is_ok());
    // but not one of files elsewhere
    earlier.insert(
        "sink rows".into(),
        "Ndjson file elsewhere/rows.ndjson".into(),
    );
    let current = crate::run::fingerprint_against(&other, &earlier);
    assert!(weir_engine::checkpoint::compatibility(&earlier, &current).is_err());
}

#[test]
fn refusals_point_at_the_line_and_column_of_the_mistake() {
    let unknown_source = refusal(&PIPELINE.replace(
        "    from: ingest\n    key: [datasetName]\n    tumbling",
        "    from: nowhere\n    key: [datasetName]\n    tumbling",
    ));
    assert!(unknown_source.starts_with("8:"), "{unknown_source}");
    assert!(unknown_source.contains("nowhere"), "{unknown_source}");
    let unknown_sink = refusal(&PIPELINE.replace("sinks: [rows]", "sinks: [rows, nope]"));
    assert!(unknown_sink.starts_with("14:19:"), "{unknown_sink}");
    assert!(unknown_sink.contains("nope"), "{unknown_sink}");
    let bad_name = refusal(&PIPELINE.replace("name: planned", "name: Planned!"));
    assert!(bad_name.starts_with("1:"), "{bad_name}");
    let bad_parallelism = refusal(&format!("{PIPELINE}parallelism: 0\n"));
    assert!(
        bad_parallelism.contains("between 1 and 256"),
        "{bad_parallelism}"
    );
}

/// `avro_limits` out of their bounds are refused at the source's line, saying the bounds,
/// not planned into a run that dead-letters every record (`max_record_bytes` of 0, or of
/// 4 GiB and more, made every record too large for its chunk).
#[test]
fn avro_limits_out_of_their_bounds_are_refused() {
    let with_limits = |limits: &str| {
        PIPELINE.replace(
            "    generator: { kind: data-ingestion, count: 100, seed: 3, keys: 4 }\n",
            &format!(
                "    kafka: {{ brokers: \"127.0.0.1:9\", topic: t, group_id: g, \
                 avro_limits: {limits} }}\n    format: avro\n    schema: data-ingestion\n"
            ),
        )
    };
    for (limits, says) in [
        (
            "{ max_record_bytes: 4294967296 }",
            "between 1024 (1 KiB) and 1073741824",
        ),
        ("{ max_record_bytes: 0 }", "between 1024 (1 KiB)"),
        ("{ max_items: 0 }", "give it 1 or more"),
    ] {
        let r = refusal(&with_limits(limits));
        assert!(r.starts_with("4:"), "{limits}: {r}");
        assert!(r.contains(says), "{limits}: {r}");
    }
    let plan = planned(&with_limits(
        "{ max_record_bytes: 1048576, max_items: 5, max_empty_items: 0 }",
    ));
    assert_eq!(plan.sources.len(), 1);
}

/// Two file outputs on one file, however spelled, are refused at the second's line: their
/// commits would overwrite each other's rows.
#[test]
fn two_outputs_on_one_file_are_refused() {
    let same_as_dead = PIPELINE.replace(
        "changes: { file: { path: out/changes.ndjson } }",
        "changes: { file: { path: ./out/dead.ndjson } }",
    );
    let r = refusal(&same_as_dead);
    assert!(r.starts_with("24:"), "{r}");
    assert!(r.contains("as the dead-letter output does"), "{r}");
    let two_sinks = PIPELINE.replace(
        "changes: { file: { path: out/changes.ndjson } }",
        "changes: { file: { path: out/../out/rows.ndjson } }",
    );
    let r = refusal(&two_sinks);
    assert!(r.contains("as sink `rows` does"), "{r}");
    planned(PIPELINE);
}

/// A window's key field named like a column the window adds (`window_start`), or a key field
/// listed twice, would give rows two columns of one name (a JSON reader keeps the last, so
/// the key was lost): refused at the key.
#[test]
fn a_key_field_that_would_repeat_an_output_column_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ws.avsc"),
        r#"{"type":"record","name":"X","fields":[{"name":"timestamp","type":"long"},{"name":"window_start","type":"long"}]}"#,
    )
    .unwrap();
    let text = "name: ws\nsources:\n  s:\n    file: { path: in.ndjson }\n    format: json\n    \
                schema: ./ws.avsc\n    event_time: { field: timestamp }\nwindows:\n  w:\n    \
                from: s\n    key: [window_start]\n    tumbling: 1m\n    aggregates:\n      \
                events: count(*)\n    sinks: [out]\nsinks:\n  out: { file: { path: out.ndjson } }\n";
    std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
    let e = load_in(dir.path(), text).map(|_| ()).unwrap_err();
    assert_eq!((e.line, e.column), (11, 11), "{e}");
    assert!(e.reason().contains("a column window `w` adds"), "{e}");
    // a view adds no such column: the same key is fine there
    let view = text
        .replace("windows:", "views:")
        .replace("    tumbling: 1m\n", "");
    load_in(dir.path(), &view).unwrap();
    // it adds `op` to its changes: no aggregate of that name
    let op = view.replace("events: count(*)", "op: count(*)");
    let e = load_in(dir.path(), &op).map(|_| ()).unwrap_err();
    assert!(e.reason().contains("already a column"), "{e}");
    let twice = refusal(&PIPELINE.replace(
        "    key: [datasetName]\n    tumbling",
        "    key: [datasetName, datasetName]\n    tumbling",
    ));
    assert!(twice.starts_with("9:24:"), "{twice}");
    assert!(twice.contains("listed twice"), "{twice}");
}

/// Mistakes whose message used to lack the position or speak the YAML parser's language.
#[test]
fn refusals_of_a_key_twice_a_number_too_big_and_an_event_time_object_say_what_to_do() {
    let twice = refusal(&format!(
        "{PIPELINE}sinks:\n  other: {{ file: {{ path: out/o.ndjson }} }}\n"
    ));
    assert!(
        twice.contains("`sinks` appears twice in this mapping"),
        "{twice}"
    );
    assert!(!twice.contains("DuplicateKeyPolicy"), "{twice}");
    let big = refusal(&PIPELINE.replace(
        "checkpoint: { dir: state }",
        "checkpoint: { dir: state, keep: 99999999999999999999999 }",
    ));
    assert!(
        big.contains("not a whole number from 0 to 18446744073709551615"),
        "{big}"
    );
    let object = refusal(&PIPELINE.replace(
        "event_time: { field: timestamp,",
        "event_time: { field: metadata,",
    ));
    assert!(object.starts_with("5:26:"), "{object}");
    assert!(object.contains("is an object"), "{object}");
}
