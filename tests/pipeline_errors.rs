//! Every class of pipeline-file error is reported as `file:line:column: message`.

use std::path::PathBuf;

use weir_pipelines::load;

const GOOD: &str = r#"name: errors
sources:
  events:
    file: { path: input.ndjson }
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  w:
    from: events
    where: "status <> 'PARTIAL'"
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      bytes: sum(sizeBytes)
    sinks: [out]
sinks:
  out: { file: { path: out/w.ndjson } }
"#;

/// Loads GOOD with `from` replaced by `to`, and returns the error text.
fn error_of(from: &str, to: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    assert!(GOOD.contains(from), "{from}");
    let path: PathBuf = dir.path().join("p.yaml");
    std::fs::write(&path, GOOD.replacen(from, to, 1)).unwrap();
    let e = load(&path)
        .err()
        .unwrap_or_else(|| panic!("accepted: {to}"));
    // as the CLI prints it: the error, then its causes
    let text = e.chain().to_string();
    let prefix = format!("{}:", path.display());
    assert!(text.starts_with(&prefix), "{text}");
    text[prefix.len()..].to_string()
}

#[test]
fn the_good_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    std::fs::write(dir.path().join("p.yaml"), GOOD).unwrap();
    load(&dir.path().join("p.yaml")).unwrap();
}

#[test]
fn unknown_key() {
    let e = error_of("    tumbling: 1m\n", "    tumbling: 1m\n    tumblin: 1m\n");
    assert!(e.starts_with("14:5: "), "{e}");
    assert!(
        e.contains("unknown field `tumblin`") && e.contains("tumbling"),
        "{e}"
    );
}

#[test]
fn bad_duration() {
    let e = error_of("tumbling: 1m", "tumbling: 1 minute");
    assert!(e.starts_with("13:15: "), "{e}");
    assert!(
        e.contains("bad duration `1 minute`") && e.contains("ms, s, m, h, d"),
        "{e}"
    );
}

/// A duration past 1,000,000 days would wrap window arithmetic (a window ending before it
/// starts): refused where it is written.
#[test]
fn a_duration_too_long_is_refused_where_it_is_written() {
    let e = error_of("tumbling: 1m", "tumbling: 10000000000000000000ms");
    assert!(e.starts_with("13:15: "), "{e}");
    assert!(e.contains("is too long: at most 1000000d"), "{e}");
    let e = error_of("tumbling: 1m", "tumbling: 1000001d");
    assert!(e.contains("is too long"), "{e}");
    let e = error_of(
        "max_out_of_orderness: 5s }",
        "max_out_of_orderness: 1000001d }",
    );
    assert!(e.contains("is too long"), "{e}");
}

#[test]
fn unknown_source_in_from() {
    let e = error_of("from: events", "from: evnts");
    assert!(e.starts_with("10:11: "), "{e}");
    assert!(
        e.contains("unknown source `evnts`") && e.contains("`events`"),
        "{e}"
    );
}

#[test]
fn bad_sql_expression() {
    let e = error_of("where: \"status <> 'PARTIAL'\"", "where: \"status <> \"");
    assert!(e.starts_with("11:12: "), "{e}");
    assert!(e.contains("bad `where` expression"), "{e}");
}

#[test]
fn unknown_aggregate() {
    let e = error_of("sum(sizeBytes)", "summ(sizeBytes)");
    assert!(e.starts_with("16:14: "), "{e}");
    assert!(
        e.contains("summ") && e.contains("bad aggregate `bytes`"),
        "{e}"
    );
}

#[test]
fn missing_field() {
    let e = error_of("sum(sizeBytes)", "sum(size)");
    assert!(e.starts_with("16:14: "), "{e}");
    assert!(e.contains("size"), "{e}");
    let e = error_of("key: [datasetName]", "key: [dataset]");
    assert!(e.starts_with("12:11: "), "{e}");
    assert!(
        e.contains("key field `dataset` is not in schema `data-ingestion`")
            && e.contains("datasetName"),
        "{e}"
    );
}

#[test]
fn missing_required_key() {
    let e = error_of("    tumbling: 1m\n", "");
    assert!(e.contains("tumbling"), "{e}");
    assert!(e.split(':').next().unwrap().parse::<u64>().is_ok(), "{e}");
}

#[test]
fn unknown_enum_value_names_the_allowed_ones() {
    let e = error_of("format: json", "format: xml");
    assert!(e.starts_with("5:13: "), "{e}");
    assert!(
        e.contains("xml") && e.contains("json") && e.contains("avro") && e.contains("cloudevents"),
        "{e}"
    );
}

#[test]
fn unknown_sink() {
    let e = error_of("sinks: [out]", "sinks: [outt]");
    assert!(e.starts_with("17:13: "), "{e}");
    assert!(
        e.contains("unknown sink `outt`") && e.contains("`out`"),
        "{e}"
    );
}

#[test]
fn a_sink_named_twice_by_one_output() {
    let e = error_of("sinks: [out]", "sinks: [out, out]");
    assert!(e.starts_with("17:18: "), "{e}");
    assert!(e.contains("sink `out` is named twice by `w`"), "{e}");
}

#[test]
fn unknown_schema_and_bad_extension() {
    let e = error_of("schema: data-ingestion", "schema: ingestion");
    assert!(
        e.starts_with("6:13: ") && e.contains("data-ingestion, service-health")
            || e.contains("`data-ingestion`"),
        "{e}"
    );
    let e = error_of("out/w.ndjson", "out/w.xlsx");
    assert!(
        e.starts_with("19:24: ") && e.contains(".ndjson, .csv or .parquet"),
        "{e}"
    );
}

#[test]
fn unset_variable_and_columns_after_substitution() {
    let e = error_of(
        "path: out/w.ndjson",
        "path: ${WEIR_TEST_SURELY_UNSET}/w.ndjson",
    );
    assert!(
        e.starts_with("19:24: ") && e.contains("WEIR_TEST_SURELY_UNSET"),
        "{e}"
    );
    // a default that changes the line's length: the error column still points at the original text
    let e = error_of(
        "    where: \"status <> 'PARTIAL'\"",
        "    where: \"${WEIR_TEST_SURELY_UNSET:-status <> }\"",
    );
    assert!(e.starts_with("11:12: "), "{e}");
}

#[test]
fn a_view_with_retain_keeps_the_newest_event_time_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{GOOD}views:\n  v:\n    from: events\n    key: [datasetName]\n    aggregates: {{ n: count(*) }}\n    retain: 1h\n"
    );
    std::fs::write(dir.path().join("p.yaml"), text).unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let plan = load(&dir.path().join("p.yaml")).unwrap();
    let v = &plan.views[0].config;
    assert_eq!(v.retain_ms, Some(3_600_000));
    assert!(!v.changelog);
    let columns: Vec<String> = v
        .output_schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(columns, ["datasetName", "n"]);
    let shown = plan.describe(1);
    assert!(shown.contains("retain: 3600000 ms"), "{shown}");
}

#[test]
fn elasticsearch_settings_are_checked_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let view = "views:\n  v:\n    from: events\n    key: [datasetName]\n    aggregates: { n: count(*) }\n    sinks: [out]\n";
    for (es, extra, message) in [
        (
            "{ url: \"127.0.0.1:9200\", index: w }",
            "",
            "is not an http:// or https:// URL",
        ),
        (
            "{ url: \"http://h:9200\", index: \"W-{output}\" }",
            "",
            "lowercase",
        ),
        (
            "{ url: \"http://h:9200\", index: \"w-{nope}\" }",
            "",
            "unknown `{nope}`",
        ),
        (
            "{ url: \"http://h:9200\", index: \"w-{window_start:%Q}\" }",
            "",
            "not a strftime format",
        ),
        (
            "{ url: \"http://h:9200\", index: w, api_key: k, bearer_token: t }",
            "",
            "use one way to authenticate",
        ),
        (
            "{ url: \"http://h:9200\", index: w, username: u }",
            "",
            "needs both `username` and `password`",
        ),
        (
            "{ url: \"http://h:9200\", index: w, refresh: sometimes }",
            "",
            "`refresh` is true, false or wait_for",
        ),
        (
            "{ url: \"http://h:9200\", index: w, bulk_max_docs: 0 }",
            "",
            "`bulk_max_docs` must be between",
        ),
        (
            "{ url: \"http://h:9200\", index: w, ca_file: missing.pem }",
            "",
            "is not a file",
        ),
        (
            "{ url: \"http://h:9200\", index: w, flush: 1s }",
            "",
            "unknown field `flush`",
        ),
        (
            "{ url: \"http://h:9200\", index: \"w-{window_start}\" }",
            view,
            "is a view (no window_start)",
        ),
        (
            "{ url: \"http://h:9200\", index: w }",
            view,
            "already writes `w`",
        ),
    ] {
        let mut text = format!("{GOOD}{extra}").replace(
            "file: { path: out/w.ndjson }",
            &format!("elasticsearch: {es}"),
        );
        if message.contains("is a view") {
            // only the view writes to the sink
            text = text.replacen("    sinks: [out]\n", "", 1);
        }
        std::fs::write(dir.path().join("p.yaml"), &text).unwrap();
        let e = match load(&dir.path().join("p.yaml")) {
            Ok(_) => panic!("{es}: accepted"),
            Err(e) => e.chain().to_string(),
        };
        assert!(e.contains(message), "{es}: {e}");
        assert!(
            e.split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<u32>().is_ok_and(|l| l > 0)),
            "{es}: no line: {e}"
        );
    }
}

#[test]
fn webhook_settings_are_checked_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let view = "views:\n  v:\n    from: events\n    key: [datasetName]\n    aggregates: { n: count(*) }\n    sinks: [out]\n";
    for (hook, extra, at, message) in [
        (
            format!("{{ url: \"h:9000/x\", secret: {key} }}"),
            "",
            "",
            "is not an http:// or https:// URL",
        ),
        (
            format!("{{ url: \"http://{{output}}/x\", secret: {key} }}"),
            "",
            "",
            "the host must be written out",
        ),
        (
            format!("{{ url: \"https://hooks.example.com{{datasetName}}/x\", secret: {key} }}"),
            "",
            "",
            "the host must be written out",
        ),
        (
            "{ url: \"http://h/x\", secret: \"\" }".to_string(),
            "",
            "19:",
            "`secret`: the secret is empty",
        ),
        (
            "{ url: \"http://h/x\", secret: \"whsec_%%%\" }".to_string(),
            "",
            "19:",
            "`secret`: the secret is not `whsec_` followed by base64",
        ),
        (
            "{ url: \"http://h/x\", secret: \"whsec_c2hvcnQ=\" }".to_string(),
            "",
            "19:",
            "keys are 24 to 64 bytes",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: [{key}, {key}, {key}] }}"),
            "",
            "19:",
            "a list of two while rotating",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, method: GET }}"),
            "",
            "",
            "`method` is POST or PUT",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, batch: some }}"),
            "",
            "",
            "`batch` is array or single",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, batch_max_rows: 0 }}"),
            "",
            "",
            "`batch_max_rows` must be between",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, body: xml }}"),
            "",
            "",
            "`body` is json, cloudevents_structured or cloudevents_binary",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, max_in_flight: 100 }}"),
            "",
            "",
            "`max_in_flight` must be between 1 and 64",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, headers: {{ webhook-id: x }} }}"),
            "",
            "",
            "is set by the sink itself",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, where: \"nope > 1\" }}"),
            "",
            "19:",
            "`where`: No field named nope",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, where: \"count(*) > 1\" }}"),
            "",
            "19:",
            "`where`",
        ),
        (
            format!("{{ url: \"http://h/{{status}}\", secret: {key} }}"),
            "",
            "",
            "`url` names `{status}`, which is not a key column",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key}, retries: 3 }}"),
            "",
            "",
            "unknown field `retries`",
        ),
        (
            format!("{{ url: \"http://h/x\", secret: {key} }}"),
            view,
            "",
            "already sends `w`",
        ),
    ] {
        let text = format!("{GOOD}{extra}")
            .replace("file: { path: out/w.ndjson }", &format!("webhook: {hook}"));
        std::fs::write(dir.path().join("p.yaml"), &text).unwrap();
        let e = match load(&dir.path().join("p.yaml")) {
            Ok(_) => panic!("{hook}: accepted"),
            Err(e) => e.chain().to_string(),
        };
        assert!(e.contains(message), "{hook}: {e}");
        let place = e.split_once(".yaml:").map(|(_, p)| p).unwrap_or_default();
        assert!(place.starts_with(at), "{hook}: not at line {at} {e}");
        assert!(
            place
                .split(':')
                .next()
                .is_some_and(|l| l.parse::<u32>().is_ok_and(|l| l > 0)),
            "{hook}: no line: {e}"
        );
    }
    // the contract's example loads; the secret is masked from then on
    let text = GOOD.replace(
        "file: { path: out/w.ndjson }",
        &format!("webhook: {{ url: \"http://127.0.0.1:9000/hooks/{{output}}/{{datasetName}}\", secret: [\"{key}\", \"{key}\"], batch_max_rows: 100, where: \"events > 10\", headers: {{ Authorization: \"Bearer sekrit-token\", X-Tenant: \"tenant-4711\" }} }}"),
    );
    std::fs::write(dir.path().join("p.yaml"), &text).unwrap();
    let plan = load(&dir.path().join("p.yaml")).unwrap();
    let described = weir_pipelines::secrets::redact(&plan.describe(1)).into_owned();
    assert!(
        described.contains("webhook POST http://127.0.0.1:9000/hooks/w/{datasetName}"),
        "{described}"
    );
    assert!(described.contains("signed with 2 secrets"), "{described}");
    // every header value is masked, whatever the header's name
    assert!(
        described.contains("headers Authorization: ***, X-Tenant: ***"),
        "{described}"
    );
    assert!(!described.contains("tenant-4711"), "{described}");
    assert!(!weir_pipelines::secrets::redact("x tenant-4711 y").contains("tenant-4711"));
    // neither the URL nor the headers are in the checkpoint fingerprint
    let fingerprint = format!("{:?}", plan.fingerprint());
    assert!(
        !fingerprint.contains("127.0.0.1:9000") && !fingerprint.contains("tenant-4711"),
        "{fingerprint}"
    );
    assert!(
        !weir_pipelines::secrets::redact(&format!("{key} Bearer sekrit-token")).contains("sekrit")
    );
    assert!(!weir_pipelines::secrets::redact(key).contains("MfKQ9r8G"));
}

#[test]
fn postgres_settings_are_checked_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let view = "views:\n  v:\n    from: events\n    key: [datasetName]\n    aggregates: { n: count(*) }\n    sinks: [out]\n";
    let url = "url: \"postgres://weir:${PGPASSWORD:-x}@127.0.0.1:5432/analytics\"";
    for (pg, extra, message) in [
        (
            "{ url: \"mysql://h/db\", table: t }".to_string(),
            "",
            "`url` must be a postgres:// URL",
        ),
        (
            format!("{{ {url}, table: a.b.c }}"),
            "",
            "expected `schema.table`",
        ),
        (
            format!("{{ {url}, table: t, tls: maybe }}"),
            "",
            "`tls` is disable, require or verify-full, not `maybe`",
        ),
        (
            format!("{{ {url}, table: t, tls: require, ca_file: missing.pem }}"),
            "",
            "is not a file",
        ),
        (
            format!("{{ {url}, table: t, batch_max_rows: 0 }}"),
            "",
            "`batch_max_rows` must be between 1 and 1000000",
        ),
        (
            format!("{{ {url}, table: t, flush: 1s }}"),
            "",
            "unknown field `flush`",
        ),
        (format!("{{ {url}, table: t }}"), view, "already writes `w`"),
    ] {
        let text = format!("{GOOD}{extra}")
            .replace("file: { path: out/w.ndjson }", &format!("postgres: {pg}"));
        std::fs::write(dir.path().join("p.yaml"), &text).unwrap();
        let e = match load(&dir.path().join("p.yaml")) {
            Ok(_) => panic!("{pg}: accepted"),
            Err(e) => e.chain().to_string(),
        };
        assert!(e.contains(message), "{pg}: {e}");
        assert!(
            e.split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<u32>().is_ok_and(|l| l > 0)),
            "{pg}: no line: {e}"
        );
    }
    // the spec's keys load as they are
    let text = GOOD.replace(
        "file: { path: out/w.ndjson }",
        &format!("postgres: {{ {url}, table: public.ingestion_5m }}"),
    );
    std::fs::write(dir.path().join("p.yaml"), &text).unwrap();
    load(&dir.path().join("p.yaml")).unwrap();
}

/// GOOD with its sink `out` writing the Iceberg table described by `iceberg`.
fn with_iceberg(iceberg: &str) -> String {
    error_of(
        "out: { file: { path: out/w.ndjson } }",
        &format!("out: {{ iceberg: {{ {iceberg} }} }}"),
    )
}

#[test]
fn iceberg_sinks_are_checked() {
    let e = with_iceberg("catalog: \"thrift://hive:9083\", warehouse: wh, table: a.w");
    assert!(
        e.starts_with("19:19: ")
            && e.contains("unknown catalog `thrift://hive:9083`")
            && e.contains("sqlite://PATH"),
        "{e}"
    );
    let e = with_iceberg("catalog: \"sqlite://c.db\", warehouse: wh, table: w");
    assert!(e.contains("table `w` needs a namespace"), "{e}");
    let e = with_iceberg(
        "catalog: \"sqlite://c.db\", warehouse: wh, table: a.w, partition_by: \"day(nope)\"",
    );
    assert!(
        e.starts_with("19:88: ")
            && e.contains("`nope` is not a column of the output")
            && e.contains("window_start"),
        "{e}"
    );
    let e = with_iceberg(
        "catalog: \"sqlite://c.db\", warehouse: wh, table: a.w, partition_by: \"month(window_start)\"",
    );
    assert!(e.contains("unknown transform `month`"), "{e}");
    let e = with_iceberg(
        "catalog: \"sqlite://c.db\", warehouse: wh, table: a.w, target_file_size_mb: 0",
    );
    assert!(
        e.contains("target_file_size_mb must be between 1 and 16384"),
        "{e}"
    );
    let e = with_iceberg("catalog: \"sqlite://c.db\", warehouse: wh, tabel: a.w");
    assert!(e.contains("unknown field `tabel`"), "{e}");
    // one table per sink
    let e = error_of(
        "sinks:\n  out: { file: { path: out/w.ndjson } }",
        "views:\n  v: { from: events, key: [datasetName], aggregates: { n: count(*) }, sinks: [out] }\nsinks:\n  out: { iceberg: { catalog: \"sqlite://c.db\", warehouse: wh, table: a.w } }",
    );
    assert!(
        e.contains("sink `out` already writes `w`: an Iceberg sink writes one table"),
        "{e}"
    );
    let e = error_of(
        "sinks:\n  out: { file: { path: out/w.ndjson } }",
        "views:\n  v: { from: events, key: [datasetName], aggregates: { n: count(*) }, sinks: [lake] }\nsinks:\n  out: { file: { path: out/w.ndjson } }\n  lake: { iceberg: { catalog: \"https://rest.example\", warehouse: wh, table: a.v } }",
    );
    assert!(e.contains("not a REST catalog"), "{e}");
}

/// A view section in place of the sinks' header, then the sinks.
fn with_view(view: &str) -> String {
    error_of("sinks:\n  out:", &format!("views:\n{view}sinks:\n  out:"))
}

#[test]
fn views_and_serve_are_checked() {
    let e = with_view("  v:\n    from: events\n    key: [nope]\n    aggregates: { n: count(*) }\n");
    assert!(
        e.starts_with("21:11: ") && e.contains("key field `nope`") && e.contains("datasetName"),
        "{e}"
    );
    let e = with_view(
        "  v:\n    from: elsewhere\n    key: [datasetName]\n    aggregates: { n: count(*) }\n",
    );
    assert!(
        e.starts_with("20:11: ") && e.contains("unknown source `elsewhere`"),
        "{e}"
    );
    let e = with_view(
        "  v:\n    from: events\n    key: [datasetName]\n    aggregates: { n: datasetName }\n",
    );
    assert!(e.contains("not an aggregate call"), "{e}");
    let e = with_view(
        "  w:\n    from: events\n    key: [datasetName]\n    aggregates: { n: count(*) }\n",
    );
    assert!(e.contains("the name is taken"), "{e}");
    let e = with_view("  v:\n    from: events\n    key: [datasetName]\n    aggregates: { n: count(*) }\n    sinks: [nowhere]\n");
    assert!(e.contains("unknown sink `nowhere`"), "{e}");
    let e = error_of(
        "sinks:\n  out:",
        "serve: { http: \"localhost\" }\nsinks:\n  out:",
    );
    assert!(
        e.starts_with("18:") && e.contains("is not host:port"),
        "{e}"
    );
    let e = error_of("sinks:\n  out:", "serve: { refresh: 1s }\nsinks:\n  out:");
    assert!(e.contains("`http` and/or `postgres`"), "{e}");
    let e = error_of(
        "sinks:\n  out:",
        "serve: { http: \"127.0.0.1:1\", tokn: x }\nsinks:\n  out:",
    );
    assert!(e.contains("tokn"), "{e}");
}

#[test]
fn checkpoint_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    for (setting, wanted) in [
        ("{ dir: state, interval: 10ms }", "at least 100ms"),
        ("{ dir: state, keep: 0 }", "`keep` must be at least 1"),
        ("{ dir: \"\", interval: 1s }", "`dir` is empty"),
        ("{ dir: state, every: 1s }", "every"),
    ] {
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, format!("{GOOD}checkpoint: {setting}\n")).unwrap();
        let e = load(&path).err().expect("refused").chain().to_string();
        let line = GOOD.lines().count() + 1;
        assert!(e.contains(&format!("p.yaml:{line}:")), "{e}");
        assert!(e.contains(wanted), "{setting}: {e}");
    }
}

#[test]
fn generator_event_time_is_its_timestamp() {
    let e = error_of(
        "    file: { path: input.ndjson }\n    format: json\n    schema: data-ingestion\n    event_time: { field: timestamp,",
        "    generator: { kind: data-ingestion, count: 5 }\n    format: json\n    schema: data-ingestion\n    event_time: { field: recordCount,",
    );
    assert!(e.starts_with("7:26: ") && e.contains("`timestamp`"), "{e}");
}

#[test]
fn avro_is_read_from_kafka_and_nats_only() {
    let e = error_of("    format: json", "    format: avro");
    assert!(
        e.starts_with("5:13: ") && e.contains("read from Kafka or NATS messages"),
        "{e}"
    );
}

#[test]
fn kafka_delivery_is_checked() {
    let sink = "out: { file: { path: out/w.ndjson } }";
    let e = error_of(sink, "out: { kafka: { topic: t, delivery: exactly_once } }");
    assert!(
        e.contains("`delivery: exactly_once` commits one Kafka transaction per checkpoint: add `checkpoint:"),
        "{e}"
    );
    let e = error_of(sink, "out: { kafka: { topic: t, delivery: twice } }");
    assert!(e.contains("unknown delivery `twice`"), "{e}");
    let e = error_of(sink, "out: { kafka: { topic: t, transactional_id: x } }");
    assert!(
        e.contains("`transactional_id` is for `delivery: exactly_once`"),
        "{e}"
    );
    // with checkpoints: accepted, and `validate` says how it delivers
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let text = GOOD.replacen(
        sink,
        "out: { kafka: { topic: t, delivery: exactly_once } }\ncheckpoint: { dir: state }",
        1,
    );
    std::fs::write(dir.path().join("p.yaml"), text).unwrap();
    let plan = load(&dir.path().join("p.yaml")).unwrap();
    let shown = plan.describe(1);
    assert!(
        shown.contains("delivery exactly_once: one Kafka transaction per checkpoint (transactional id `errors.out`)"),
        "{shown}"
    );
}

#[test]
fn kafka_settings_weir_manages_are_refused_in_properties() {
    let source = "    file: { path: input.ndjson }\n";
    let kafka = |properties: &str| {
        format!("    kafka: {{ brokers: \"127.0.0.1:9092\", topic: t, properties: {{ {properties} }} }}\n")
    };
    let e = error_of(source, &kafka("group.id: g"));
    assert!(
        e.starts_with("4:12: ") && e.contains("set that instead"),
        "{e}"
    );
    let e = error_of(source, &kafka("enable.auto.commit: \"true\""));
    assert!(
        e.starts_with("4:12: ") && e.contains("remove the setting"),
        "{e}"
    );
    let e = error_of(source, &kafka("auto.offset.reset: error"));
    assert!(
        e.starts_with("4:12: ") && e.contains("`auto.offset.reset: error` is not supported"),
        "{e}"
    );
    let sink = "out: { file: { path: out/w.ndjson } }";
    let e = error_of(
        sink,
        "out: { kafka: { topic: t, properties: { transactional.id: x } } }",
    );
    assert!(e.contains("use `delivery: exactly_once`"), "{e}");
    let e = error_of(
        sink,
        "out: { file: { path: out/w.ndjson } }\ndead_letter: { kafka: { topic: d, properties: { transactional.id: x } } }",
    );
    assert!(
        e.contains("dead_letter: properties: `transactional.id`"),
        "{e}"
    );
}

#[test]
fn max_future_is_a_duration_with_a_default_of_an_hour() {
    let e = error_of(
        "max_out_of_orderness: 5s }",
        "max_out_of_orderness: 5s, max_future: soon }",
    );
    assert!(e.starts_with("7:"), "{e}");
    assert!(e.contains("bad duration `soon`"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, GOOD).unwrap();
    assert_eq!(load(&p).unwrap().sources[0].max_future_ms, 3_600_000);
    let set = GOOD.replace(
        "max_out_of_orderness: 5s }",
        "max_out_of_orderness: 5s, max_future: 2d }",
    );
    std::fs::write(&p, set).unwrap();
    let plan = load(&p).unwrap();
    assert_eq!(plan.sources[0].max_future_ms, 2 * 86_400_000);
    assert!(plan.describe(1).contains("max_future 172800000 ms"));
}

#[test]
fn a_checkpoint_of_a_wrapping_integer_sum_is_refused_as_a_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.ndjson"), "").unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, GOOD).unwrap();
    let now = load(&p).unwrap().fingerprint();
    let aggregates = &now["window w: aggregates"];
    assert!(
        aggregates.contains("bytes = sum(sizeBytes) -> Int64 (exact, null past its range)"),
        "{aggregates}"
    );
    // what a weir before exact sums wrote: its Int64 state would not merge into Decimal128
    let mut before = now.clone();
    before.insert(
        "window w: aggregates".into(),
        "events = count(1) -> Int64; bytes = sum(sizeBytes) -> Int64".into(),
    );
    let e = weir_engine::checkpoint::compatibility(&before, &now)
        .unwrap_err()
        .to_string();
    assert!(e.contains("window w: aggregates changed"), "{e}");
}

#[test]
fn options_an_output_would_ignore_are_refused() {
    let e = error_of(
        "out: { file: { path: out/w.ndjson } }",
        "out: { file: { path: out/w.ndjson }, format: avro }",
    );
    assert!(e.contains("`format` is for Kafka and NATS sinks"), "{e}");
    let e = error_of(
        "sinks:\n  out:",
        "dead_letter: { kafka: { topic: dl, schema_registry: \"http://r:8081\" } }\nsinks:\n  out:",
    );
    assert!(e.contains("`schema_registry` is for Avro sinks"), "{e}");
}

#[test]
fn nats_partitions_are_checked_where_they_are_written() {
    let file = "    file: { path: input.ndjson }\n";
    let nats = |partitions: &str| {
        format!(
            "    nats:\n      url: nats://127.0.0.1:4222\n      stream: EVENTS\n      partitions: {partitions}\n"
        )
    };
    let e = error_of(
        file,
        &nats("{ count: 4, subject: \"events.p{partition}.>\" }"),
    );
    assert!(
        e.starts_with("7:19: ") && e.contains("`{partition}` once, as a whole token"),
        "{e}"
    );
    let e = error_of(
        file,
        &nats("{ count: 0, subject: \"events.{partition}.>\" }"),
    );
    assert!(
        e.starts_with("7:19: ") && e.contains("`partitions.count` must be 1 to 1024"),
        "{e}"
    );
    let e = error_of(
        file,
        &nats("{ count: 4, subjects: \"events.{partition}.>\" }"),
    );
    assert!(
        e.starts_with("7:") && e.contains("unknown field `subjects`"),
        "{e}"
    );
}

#[test]
fn nats_ack_policy_none_needs_checkpoints_and_says_where() {
    let file = "    file: { path: input.ndjson }\n";
    let nats = |more: &str| {
        format!(
            "    nats:\n      url: nats://127.0.0.1:4222\n      stream: EVENTS\n      ack_policy: none\n{more}"
        )
    };
    // the base pipeline has no `checkpoint:`
    let e = error_of(file, &nats(""));
    assert!(
        e.starts_with("7:19: ") && e.contains("`ack_policy: none` needs `checkpoint:`"),
        "{e}"
    );
    let e = error_of(file, &nats("      ack_policy2: all\n"));
    assert!(e.contains("unknown field `ack_policy2`"), "{e}");
}

#[test]
fn a_transactional_kafka_sink_takes_outputs_of_one_shape() {
    let e = error_of(
        "sinks:\n  out: { file: { path: out/w.ndjson } }\n",
        "  w2:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    \
         aggregates: { n: count(*) }\n    sinks: [out]\n\
         sinks:\n  out: { kafka: { brokers: \"127.0.0.1:9\", topic: t, delivery: exactly_once } }\n\
         checkpoint: { dir: state }\n",
    );
    assert!(e.starts_with("23:"), "{e}");
    assert!(
        e.contains("keeps a checkpoint's rows as one table") && e.contains("`w2`"),
        "{e}"
    );
}
