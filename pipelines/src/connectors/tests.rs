//! The registry's contract, on pipelines planned from YAML (nothing connects anywhere).

use super::*;
use crate::plan::Plan;

/// `yaml` written to a fresh folder (with an empty `in.ndjson`) and planned.
pub(super) fn plan_of(name: &str, yaml: &str) -> Result<Plan, PipelineError> {
    // a folder per call: tests run in parallel, some with the same name
    let dir = tempfile::Builder::new()
        .prefix(&format!("weir-connectors-{name}-"))
        .tempdir()
        .expect("temp dir")
        .keep();
    std::fs::write(dir.join("in.ndjson"), "").expect("input file");
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).expect("pipeline file");
    crate::plan::load(&path)
}

/// The error planning `yaml` gives (it must be refused).
pub(super) fn refusal(name: &str, yaml: &str) -> PipelineError {
    match plan_of(name, yaml) {
        Ok(_) => panic!("{name}: accepted"),
        Err(e) => e,
    }
}

const WINDOW: &str = "windows:\n  w:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    aggregates: { n: count(*) }\n    sinks: [out]\n";

/// A pipeline reading `source` (lines under source `events`), with window `w` writing to
/// sink `out` (`sink`'s lines), then `extra`.
pub(super) fn pipeline(source: &str, sink: &str, extra: &str) -> String {
    format!(
        "name: p\nsources:\n  events:\n{source}\n    schema: data-ingestion\n    event_time: {{ field: timestamp }}\n{WINDOW}sinks:\n  out:\n{sink}\n{extra}"
    )
}

/// A pipeline reading `source` (lines under source `events`) into a file, planned.
pub(super) fn source_plan(name: &str, source: &str) -> Plan {
    plan_of(
        name,
        &pipeline(source, "    file: { path: out/w.ndjson }", ""),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The connector of `plan`'s first source, as its type `T`.
pub(super) fn first_input<T: 'static>(plan: &Plan) -> &T {
    plan.sources[0]
        .input
        .as_any()
        .downcast_ref::<T>()
        .expect("the source connector's type")
}

/// `plan`'s first source opened with `resume` and `bounds`, reading until caught up.
pub(crate) fn opening<'a>(
    plan: &'a Plan,
    resume: &'a dyn Fn(&str) -> Option<weir_engine::events::Resume>,
    bounds: &'a dyn Fn(&str) -> Option<ReadBounds>,
) -> OpenSource<'a> {
    let s = &plan.sources[0];
    OpenSource {
        index: 0,
        name: &s.name,
        first_partition: 0,
        output_schema: s.output_schema.clone(),
        resume,
        bounds,
        until_caught_up: true,
        caught_up_timeout: None,
    }
}

#[test]
fn every_kind_has_one_registry_line_and_a_unique_key() {
    for keys in [
        SINKS.iter().map(|k| k.key).collect::<Vec<_>>(),
        SOURCES.iter().map(|k| k.key).collect(),
        DEAD_LETTERS.iter().map(|k| k.key).collect(),
    ] {
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "a key registered twice: {keys:?}");
    }
}

#[test]
fn a_planned_connector_says_its_kind_and_retargets_itself_for_replay_and_pool() {
    let plan = plan_of(
        "files",
        &pipeline(
            "    file: { path: in.ndjson }",
            "    file: { path: out/w.ndjson }",
            "",
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (source, sink) = (&plan.sources[0].input, &plan.sinks[0].target);
    assert_eq!(
        (source.kind(), sink.kind(), plan.dead_letter.kind()),
        ("file", "file", "file")
    );
    assert!(sink.describe(false).contains("written when the run ends"));
    assert!(sink.describe(true).contains("exactly once"));
    // a replay writes beside the live file, a worker to its own
    let replayed = sink.replayed("replay-a-b");
    assert!(replayed
        .local_file()
        .unwrap()
        .ends_with("out/w.replay-a-b.ndjson"));
    let mut worker = sink.clone();
    worker.for_worker("w1");
    assert!(worker.local_file().unwrap().ends_with("out/w.w1.ndjson"));
    // the live one is untouched
    assert!(sink.local_file().unwrap().ends_with("out/w.ndjson"));
    let fallback = std::path::Path::new("/x/p-dead-letter.replay.ndjson");
    let dead = plan.dead_letter.replayed("replay-a-b", fallback);
    assert!(dead
        .local_file()
        .unwrap()
        .ends_with("dead_letter.replay-a-b.ndjson"));
    // files are not a pool's sources, and cannot be replayed
    assert!(source
        .pool_refusal("events", true)
        .unwrap()
        .contains("not a Kafka topic or partitioned NATS stream"));
    assert!(sink.pool_refusal("out").is_none());
}

#[test]
fn the_pool_refuses_by_asking_each_connector() {
    let kafka = "    kafka: { brokers: \"127.0.0.1:9\", topic: t, group_id: g }\n    partitioned_by: [datasetName]";
    let nats = "    nats: { url: \"nats://127.0.0.1:9\", stream: s }";
    let eos = "    kafka: { brokers: \"127.0.0.1:9\", topic: o, delivery: exactly_once }";
    let chk = "checkpoint: { dir: state }\n";
    let file_sink = "    file: { path: out.ndjson }";
    let ok = plan_of("pool-ok", &pipeline(kafka, file_sink, chk)).unwrap();
    assert_eq!(crate::pool::pool_refusal(&ok), None);
    let on_nats = plan_of("pool-nats", &pipeline(nats, file_sink, chk)).unwrap();
    let why = crate::pool::pool_refusal(&on_nats).expect("refused");
    assert!(why.contains("reads NATS stream `s` whole"), "{why}");
    // a transactional sink runs in a pool under the worker's own transactional id
    let to_eos = plan_of("pool-eos", &pipeline(kafka, eos, chk)).unwrap();
    assert_eq!(crate::pool::pool_refusal(&to_eos), None);
    let mut sink = to_eos.sinks[0].target.clone();
    sink.for_worker("w1");
    assert!(
        sink.describe(true).contains("transactional id `p.out.w1`"),
        "{}",
        sink.describe(true)
    );
}

/// `exactly_once` with checkpoints further apart than a transaction may stay open (the
/// broker would abort it and fence the sink at every interval) is refused at the sink's
/// line, saying what to set; with that set, or with the default interval, it plans.
#[test]
fn an_exactly_once_sink_whose_transactions_would_time_out_is_refused() {
    let source = "    file: { path: in.ndjson }";
    let eos = "    kafka: { brokers: \"127.0.0.1:9\", topic: o, delivery: exactly_once }";
    let long = "checkpoint: { dir: state, interval: 5m }\n";
    let e = match plan_of("eos-long", &pipeline(source, eos, long)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a 5m interval planned with a 180 s transaction timeout"),
    };
    assert!(e.contains("transaction.timeout.ms: \"600000\""), "{e}");
    let longer_timeout = "    kafka: { brokers: \"127.0.0.1:9\", topic: o, delivery: exactly_once, properties: { transaction.timeout.ms: \"400000\" } }";
    plan_of("eos-set", &pipeline(source, longer_timeout, long)).unwrap();
    // a shorter timeout (a broker allowing less) with the default interval plans
    let shorter = "    kafka: { brokers: \"127.0.0.1:9\", topic: o, delivery: exactly_once, properties: { transaction.timeout.ms: \"60000\", message.timeout.ms: \"50000\" } }";
    plan_of(
        "eos-short",
        &pipeline(source, shorter, "checkpoint: { dir: state }\n"),
    )
    .unwrap();
    plan_of(
        "eos-default",
        &pipeline(source, eos, "checkpoint: { dir: state }\n"),
    )
    .unwrap();
}

#[test]
fn secrets_written_in_the_file_are_registered_by_their_connector() {
    let nats = "    nats:\n      url: \"nats://127.0.0.1:9\"\n      stream: s\n      credentials: { user: u, password: pw-in-a-nats-source-4711 }";
    let sink = "    kafka: { brokers: \"127.0.0.1:9\", topic: o, properties: { sasl.password: kafka-sink-secret-4712 } }";
    let dead = "dead_letter:\n  kafka: { brokers: \"127.0.0.1:9\", topic: d, properties: { ssl.key.password: dead-letter-secret-4713 } }\n";
    plan_of("secrets", &pipeline(nats, sink, dead)).unwrap_or_else(|e| panic!("{e}"));
    let shown = crate::secrets::redact(
        "pw-in-a-nats-source-4711 kafka-sink-secret-4712 dead-letter-secret-4713",
    );
    assert!(
        !shown.contains("4711") && !shown.contains("4712") && !shown.contains("4713"),
        "{shown}"
    );
}

#[test]
fn exactly_one_kind_is_declared_and_the_message_lists_the_registry() {
    let yaml = pipeline(
        "    file: { path: in.ndjson }",
        "    file: { path: out.ndjson }\n    kafka: { brokers: \"127.0.0.1:9\", topic: o }",
        "",
    );
    let e = plan_of("two-kinds", &yaml)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("needs exactly one of `kafka`, `iceberg`, `elasticsearch`, `webhook`, `postgres`, `nats`, `file` (found 2)"),
        "{e}"
    );
}
