//! The house rules that a grep can check: outside `pipelines/src/connectors/`, no planning,
//! running or replay code names a connector kind. Each system's planning, opening, replay
//! and pool behaviour lives in its folder there, behind the registry's traits
//! (`pipelines/src/connectors/mod.rs`); a new connector is a folder plus a registry line.

use std::path::{Path, PathBuf};

/// Names that belong to one connector: its runtime types, its planned types and configs, or a
/// path into its folder.
const KIND_SPECIFIC: &[&str] = &[
    "KafkaInput",
    "KafkaTarget",
    "NatsInput",
    "NatsTarget",
    "IcebergTarget",
    "PostgresTarget",
    "WebhookTarget",
    "ElasticsearchTarget",
    "FileTarget",
    "FileInput",
    "FileDeadLetter",
    "connectors::kafka::",
    "connectors::nats::",
    "connectors::iceberg::",
    "connectors::postgres::",
    "connectors::webhook::",
    "connectors::elasticsearch::",
    "connectors::file::",
    "connectors::generator::",
    "KafkaSink",
    "KafkaReader",
    "KafkaSourceConfig",
    "KafkaSinkConfig",
    "NatsSink",
    "NatsReader",
    "NatsSourceConfig",
    "IcebergSink",
    "PostgresSink",
    "WebhookSink",
    "ElasticsearchSink",
    "FileSink",
    "FileReader",
    "GeneratorReader",
    "DeadLetterKafka",
    "DeadLetterNats",
    "DeadLetterFile",
];

/// Where a connector name is allowed outside the connectors, and why.
const ALLOWED: &[(&str, &str, &str)] = &[
    // the YAML model names every kind's block: it is the file format
    ("model.rs", "", "the YAML model"),
    (
        "lib.rs",
        "connectors::iceberg::compact",
        "`weir compact` re-exported",
    ),
    (
        "plan/mod.rs",
        "connectors::iceberg::",
        "the Iceberg target re-exported",
    ),
    (
        "plan/mod.rs",
        "connectors::webhook::",
        "the webhook target re-exported",
    ),
    (
        "plan/mod.rs",
        "connectors::kafka::DEFAULT_IDLE_TIMEOUT_MS",
        "a public default",
    ),
    (
        "plan/sinks.rs",
        "connectors::file::FileDeadLetter",
        "the default dead-letter file",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Whether `line` of `rel` may name a connector: an allowed file whose entry is empty (the
/// whole file) or appears in the line.
fn allowed(rel: &str, line: &str) -> bool {
    ALLOWED
        .iter()
        .any(|(file, what, _why)| rel == *file && (what.is_empty() || line.contains(what)))
}

#[test]
fn no_connector_kind_is_named_outside_the_connectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut found = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(&root)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with("connectors/") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for pattern in KIND_SPECIFIC {
                if code.contains(pattern) && !allowed(&rel, code) {
                    found.push(format!("pipelines/src/{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "connector kinds named outside pipelines/src/connectors/ (move the code into the \
         connector's folder behind the registry's traits):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_registered_kind_has_its_own_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src/connectors");
    let kinds = weir_pipelines::connectors::SINKS
        .iter()
        .map(|k| k.key)
        .chain(weir_pipelines::connectors::SOURCES.iter().map(|k| k.key))
        .chain(
            weir_pipelines::connectors::DEAD_LETTERS
                .iter()
                .map(|k| k.key),
        );
    for key in kinds {
        assert!(
            root.join(key).join("mod.rs").is_file(),
            "connector `{key}` has no folder pipelines/src/connectors/{key}/"
        );
    }
}
