//! From a pipeline file to a checked plan: names resolved, schemas loaded, SQL compiled.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::PhysicalExpr;
use indexmap::IndexMap;
use serde_saphyr::{Location, Spanned};
use weir_engine::job::Decode;
use weir_engine::retry::RetryPolicy;
use weir_iceberg::{CatalogUri, PartitionBy};
use weir_operators::{CompiledAggregate, SqlCompiler, TimeMode, ViewConfig, WindowConfig};
use weir_sinks::{
    ElasticsearchConfig, EsAuth, FileFormat, IndexTemplate, KafkaDelivery, KafkaFormat,
    KafkaSinkConfig, PostgresConfig, WebhookConfig, WebhookMethod,
};
use weir_sources::{
    resolve_files, AvroDecoder, AvroType, GeneratorConfig, JsonDecoder, KafkaSourceConfig, Kind,
    MessageColumn, SchemaRegistry, SourceSchema, StartFrom,
};

use crate::error::PipelineError;
use crate::interpolate::{interpolate, Interpolated};
use crate::model::*;

/// `event_time.max_future` when not given: 1 hour.
pub const DEFAULT_MAX_FUTURE_MS: u64 = weir_engine::bounds::DEFAULT_MAX_FUTURE_MS as u64;

/// `event_time.idle_timeout` of a Kafka source when not given: a partition assigned to the
/// process that delivers nothing for a minute stops holding the watermark back.
pub const DEFAULT_KAFKA_IDLE_TIMEOUT_MS: u64 = 60_000;

/// What a source reads.
#[derive(Debug)]
pub enum SourceInput {
    /// NDJSON files, one partition each.
    Files(Vec<PathBuf>),
    Generator(GeneratorConfig),
    /// Topics of a Kafka cluster, read in a consumer group.
    Kafka(KafkaSourceConfig),
    /// A NATS JetStream stream, read by a durable pull consumer (one partition).
    Nats(Box<weir_sources::NatsSourceConfig>),
}

impl SourceInput {
    /// The message columns its records offer (`_key`..., `_subject`...), none for files and
    /// the generator.
    pub fn message_columns(&self) -> &'static [MessageColumn] {
        match self {
            SourceInput::Kafka(_) => &MessageColumn::ALL,
            SourceInput::Nats(_) => &MessageColumn::NATS,
            SourceInput::Files(_) | SourceInput::Generator(_) => &[],
        }
    }
}

/// A checked source.
pub struct PlannedSource {
    pub name: String,
    pub input: SourceInput,
    pub schema: Arc<SourceSchema>,
    pub time_field: String,
    pub max_out_of_orderness_ms: u64,
    pub idle_timeout_ms: Option<u64>,
    /// Rows more than this ahead of the wall clock are dead-lettered (`future_event_time`).
    pub max_future_ms: u64,
    /// The fields the pipeline reads (others are checked, not kept).
    pub columns: Vec<String>,
    pub decoder: Arc<dyn Decode>,
    /// The schema of the decoded batches.
    pub output_schema: SchemaRef,
    /// The fields its producers key (partition) messages by, as declared.
    pub partitioned_by: Vec<String>,
    /// Set while its records wait for an unreachable schema registry.
    pub waiting: Option<weir_engine::stats::Condition>,
}

/// A checked window.
pub struct PlannedWindow {
    pub config: Arc<WindowConfig>,
    pub source: usize,
    pub sinks: Vec<usize>,
    pub retain_ms: Option<u64>,
}

/// A checked materialized view.
pub struct PlannedView {
    pub config: Arc<ViewConfig>,
    pub source: usize,
    /// Sinks receiving its changes (upserts by key) and final snapshot.
    pub sinks: Vec<usize>,
}

/// The SQL endpoints of a run.
#[derive(Debug, Clone)]
pub struct PlannedServe {
    pub http: Option<String>,
    pub postgres: Option<String>,
    pub token: Option<String>,
    pub password: Option<String>,
    pub refresh_ms: u64,
    /// Limits of queries and of the endpoints.
    pub limits: weir_query::QueryLimits,
}

/// Spans exported to an OpenTelemetry collector (OTLP/HTTP).
#[derive(Debug, Clone)]
pub struct PlannedTracing {
    /// The traces endpoint: the base URL with `/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub headers: Vec<(String, String)>,
}

/// Where a sink writes.
#[derive(Debug, Clone)]
pub enum SinkTarget {
    File {
        path: PathBuf,
        format: FileFormat,
    },
    /// A Kafka topic, one JSON message per row.
    Kafka(KafkaSinkConfig),
    /// An Iceberg table.
    Iceberg(Box<IcebergTarget>),
    /// Elasticsearch indices (the output is set when a window or view names the sink).
    Elasticsearch(Box<ElasticsearchConfig>),
    /// Signed webhook requests (the output is set when a window or view names the sink).
    Webhook(Box<WebhookTarget>),
    /// A PostgreSQL table (the output is set when a window or view names the sink).
    Postgres(Box<PostgresConfig>),
}

/// A webhook sink's settings and its `where` on the output rows (compiled when an output
/// names the sink).
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub config: WebhookConfig,
    /// Where `where` is written, and its text.
    pub filter_text: Option<(Location, String)>,
    /// `where`, compiled against the output's rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

/// An Iceberg sink's table, and the output that feeds it (set when an output names it).
#[derive(Debug, Clone)]
pub struct IcebergTarget {
    pub catalog: CatalogUri,
    pub catalog_name: String,
    /// An absolute folder or an object-store URL.
    pub warehouse: String,
    pub table: String,
    pub partition_by: Option<PartitionBy>,
    /// Where `partition_by` is written, and its text (checked against the output's columns).
    pub partition_text: Option<(Location, String)>,
    pub target_file_size: usize,
    pub properties: HashMap<String, String>,
    /// The window or view writing to the table.
    pub output: Option<String>,
    /// The key columns of a view's rows; `None` for a window.
    pub view_keys: Option<usize>,
}

/// Where dead letters go.
#[derive(Debug, Clone)]
pub enum DeadLetterTarget {
    /// An NDJSON file.
    File(PathBuf),
    /// A Kafka topic, one JSON message per record.
    Kafka(KafkaSinkConfig),
}

/// The brokers a Kafka sink or dead-letter output uses when it names none: those of the
/// first Kafka source, else `127.0.0.1:9092`.
fn default_brokers(doc: &PipelineDoc) -> String {
    doc.sources
        .values()
        .find_map(|s| s.value.kafka.as_ref().map(|k| k.value.brokers.clone()))
        .unwrap_or_else(|| "127.0.0.1:9092".to_string())
}

fn kafka_sink_config(
    doc: &PipelineDoc,
    k: &KafkaSinkDoc,
    format: KafkaFormat,
    delivery: KafkaDelivery,
) -> KafkaSinkConfig {
    KafkaSinkConfig {
        format,
        delivery,
        brokers: k.brokers.clone().unwrap_or_else(|| default_brokers(doc)),
        topic: k.topic.clone(),
        properties: k
            .properties
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
    }
}

/// The Iceberg sink `sink` of pipeline `pipeline`, writing `target`.
pub fn iceberg_config(
    pipeline: &str,
    sink: &str,
    target: &IcebergTarget,
) -> weir_iceberg::IcebergSinkConfig {
    weir_iceberg::IcebergSinkConfig {
        pipeline: pipeline.to_string(),
        sink: sink.to_string(),
        output: target.output.clone().unwrap_or_default(),
        catalog: target.catalog.clone(),
        catalog_name: target.catalog_name.clone(),
        warehouse: target.warehouse.clone(),
        table: target.table.clone(),
        partition_by: target.partition_by.clone(),
        target_file_size: target.target_file_size,
        catalog_properties: target.properties.clone(),
        replace_windows: None,
    }
}

/// A `postgres` sink's settings, checked.
fn postgres_config(
    ctx: &Ctx,
    pipeline: &str,
    kname: &str,
    p: &Spanned<PostgresDoc>,
) -> Result<PostgresConfig, PipelineError> {
    let at = |m: String| ctx.err(&p.referenced, format!("sink `{kname}`: {m}"));
    let d = &p.value;
    if !(d.url.starts_with("postgres://") || d.url.starts_with("postgresql://")) {
        return Err(at(
            "`url` must be a postgres:// URL (postgres://user:${PGPASSWORD}@host:5432/database)"
                .into(),
        ));
    }
    let table = weir_sinks::postgres::TableName::parse(&d.table).map_err(&at)?;
    let tls = match d.tls.as_deref() {
        None => None,
        Some(t) => Some(weir_sinks::TlsMode::parse(t).ok_or_else(|| {
            at(format!(
                "`tls` is disable, require or verify-full, not `{t}`"
            ))
        })?),
    };
    let ca_file = match &d.ca_file {
        Some(f) => {
            let path = ctx.path(f);
            if !path.is_file() {
                return Err(at(format!("`ca_file` {} is not a file", path.display())));
            }
            Some(path)
        }
        None => None,
    };
    if ca_file.is_some() && tls == Some(weir_sinks::TlsMode::Disable) {
        return Err(at(
            "`ca_file` verifies a TLS server: it needs `tls: require` or `tls: verify-full`".into(),
        ));
    }
    let batch_max_rows = d.batch_max_rows.unwrap_or(10_000);
    if !(1..=1_000_000).contains(&batch_max_rows) {
        return Err(at("`batch_max_rows` must be between 1 and 1000000".into()));
    }
    let config = PostgresConfig {
        url: d.url.clone(),
        table,
        tls,
        ca_file,
        batch_max_rows: batch_max_rows as usize,
        flush_interval: std::time::Duration::from_millis(
            d.flush_interval.as_ref().map_or(1000, |f| f.0.max(1)),
        ),
        timeout: std::time::Duration::from_millis(
            d.timeout.as_ref().map_or(30_000, |t| t.0.max(100)),
        ),
        pipeline: pipeline.to_string(),
        output: String::new(),
        view_keys: None,
    };
    weir_sinks::postgres::check_url(&config).map_err(at)?;
    Ok(config)
}

/// An `elasticsearch` sink's settings, checked.
fn elasticsearch_config(
    ctx: &Ctx,
    pipeline: &str,
    kname: &str,
    e: &Spanned<ElasticsearchDoc>,
) -> Result<ElasticsearchConfig, PipelineError> {
    let at = |m: String| ctx.err(&e.referenced, format!("sink `{kname}`: {m}"));
    let d = &e.value;
    let urls: Vec<String> = d
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    if urls.is_empty() {
        return Err(at("`url` needs at least one node (http://host:9200)".into()));
    }
    for u in &urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(at(format!("`url` `{u}` is not an http:// or https:// URL")));
        }
    }
    let index = IndexTemplate::parse(&d.index).map_err(at)?;
    let set = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let auth = match (
        set(&d.api_key),
        set(&d.username),
        set(&d.password),
        set(&d.bearer_token),
    ) {
        (None, None, None, None) => None,
        (Some(k), None, None, None) => Some(EsAuth::ApiKey(k)),
        (None, Some(username), Some(password), None) => Some(EsAuth::Basic { username, password }),
        (None, None, None, Some(t)) => Some(EsAuth::Bearer(t)),
        (None, Some(_), None, None) | (None, None, Some(_), None) => {
            return Err(at(
                "basic authentication needs both `username` and `password`".into(),
            ))
        }
        _ => return Err(at(
            "use one way to authenticate: `api_key`, `username` + `password`, or `bearer_token`"
                .into(),
        )),
    };
    let ca_file = match &d.ca_file {
        Some(f) => {
            let p = ctx.path(f);
            if !p.is_file() {
                return Err(at(format!("`ca_file` {} is not a file", p.display())));
            }
            Some(p)
        }
        None => None,
    };
    let refresh = match d.refresh.as_deref() {
        None => None,
        Some(r @ ("true" | "false" | "wait_for")) => Some(r.to_string()),
        Some(r) => {
            return Err(at(format!(
                "`refresh` is true, false or wait_for, not `{r}`"
            )))
        }
    };
    let bulk_max_docs = d.bulk_max_docs.unwrap_or(1000);
    if !(1..=100_000).contains(&bulk_max_docs) {
        return Err(at("`bulk_max_docs` must be between 1 and 100000".into()));
    }
    let bulk_max_bytes = d.bulk_max_bytes.unwrap_or(5 << 20);
    if !(1024..=100 << 20).contains(&bulk_max_bytes) {
        return Err(at("`bulk_max_bytes` must be between 1024 and 104857600 (100 MiB, Elasticsearch's http.max_content_length)".into()));
    }
    let max_in_flight = d.max_in_flight.unwrap_or(2);
    if !(1..=32).contains(&max_in_flight) {
        return Err(at("`max_in_flight` must be between 1 and 32".into()));
    }
    let index_template = match &d.index_template {
        Some(f) => {
            let p = ctx.path(f);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| at(format!("`index_template` {}: {e}", p.display())))?;
            let body: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| at(format!("`index_template` {}: not JSON: {e}", p.display())))?;
            if body.get("index_patterns").is_none() {
                return Err(at(format!(
                    "`index_template` {}: an index template body needs `index_patterns`",
                    p.display()
                )));
            }
            Some((format!("weir-{pipeline}-{kname}").to_lowercase(), body))
        }
        None => None,
    };
    Ok(ElasticsearchConfig {
        urls,
        index,
        auth,
        ca_file,
        bulk_max_docs: bulk_max_docs as usize,
        bulk_max_bytes: bulk_max_bytes as usize,
        flush_interval: std::time::Duration::from_millis(
            d.flush_interval.as_ref().map_or(1000, |f| f.0.max(1)),
        ),
        refresh,
        max_in_flight: max_in_flight as usize,
        compression: d.compression.unwrap_or(true),
        timeout: std::time::Duration::from_millis(
            d.timeout.as_ref().map_or(30_000, |t| t.0.max(100)),
        ),
        index_template,
        pipeline: pipeline.to_string(),
        output: String::new(),
        view_keys: None,
    })
}

/// A `webhook` sink's settings, checked (the output and `where` are set later).
fn webhook_config(
    ctx: &Ctx,
    pipeline: &str,
    kname: &str,
    w: &Spanned<WebhookDoc>,
) -> Result<WebhookTarget, PipelineError> {
    use weir_sinks::webhook::{Batching, BodyMode, Secret, UrlTemplate};
    let at = |m: String| ctx.err(&w.referenced, format!("sink `{kname}`: {m}"));
    let d = &w.value;
    let url = UrlTemplate::parse(d.url.value.trim())
        .map_err(|m| ctx.err(&d.url.referenced, format!("sink `{kname}`: {m}")))?;
    let secrets = d
        .secret
        .value
        .iter()
        .map(|s| Secret::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| {
            ctx.err(
                &d.secret.referenced,
                format!("sink `{kname}`: `secret`: {m}"),
            )
        })?;
    if !(1..=2).contains(&secrets.len()) {
        return Err(ctx.err(
            &d.secret.referenced,
            format!("sink `{kname}`: `secret` is one secret, or a list of two while rotating"),
        ));
    }
    let method = match d.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("POST") => WebhookMethod::Post,
        Some("PUT") => WebhookMethod::Put,
        Some(m) => return Err(at(format!("`method` is POST or PUT, not `{m}`"))),
    };
    for (k, v) in &d.headers {
        weir_sinks::webhook::check_header(k, v).map_err(|e| at(e.to_string()))?;
    }
    let batching = match d.batch.as_deref() {
        None | Some("array") => Batching::Array,
        Some("single") => Batching::Single,
        Some(b) => return Err(at(format!("`batch` is array or single, not `{b}`"))),
    };
    let batch_max_rows = d.batch_max_rows.unwrap_or(100);
    if !(1..=100_000).contains(&batch_max_rows) {
        return Err(at("`batch_max_rows` must be between 1 and 100000".into()));
    }
    let batch_max_bytes = d.batch_max_bytes.unwrap_or(1 << 20);
    if !(1024..=100 << 20).contains(&batch_max_bytes) {
        return Err(at(
            "`batch_max_bytes` must be between 1024 and 104857600 (100 MiB)".into(),
        ));
    }
    let body = match d.body.as_deref() {
        None | Some("json") => BodyMode::Json,
        Some("cloudevents_structured") => BodyMode::CloudEventsStructured,
        Some("cloudevents_binary") => BodyMode::CloudEventsBinary,
        Some(b) => {
            return Err(at(format!(
                "`body` is json, cloudevents_structured or cloudevents_binary, not `{b}`"
            )))
        }
    };
    let max_in_flight = d.max_in_flight.unwrap_or(4);
    if !(1..=64).contains(&max_in_flight) {
        return Err(at("`max_in_flight` must be between 1 and 64".into()));
    }
    let ms = std::time::Duration::from_millis;
    Ok(WebhookTarget {
        config: WebhookConfig {
            url,
            method,
            headers: d
                .headers
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            secrets,
            batching,
            batch_max_rows: batch_max_rows as usize,
            batch_max_bytes: batch_max_bytes as usize,
            body,
            timeout: ms(d.timeout.as_ref().map_or(10_000, |t| t.0.max(100))),
            max_in_flight: max_in_flight as usize,
            flush_interval: ms(d.flush_interval.as_ref().map_or(1000, |f| f.0.max(1))),
            pipeline: pipeline.to_string(),
            output: String::new(),
            view_keys: None,
        },
        filter_text: d.filter.as_ref().map(|f| (f.referenced, f.value.clone())),
        filter: None,
    })
}

/// A webhook sink named by output `output` of rows `schema`: one output a sink, URL
/// placeholders that are key columns, `where` compiled.
fn attach_webhook(
    ctx: &Ctx,
    t: &mut WebhookTarget,
    sink: &Spanned<String>,
    schema: &SchemaRef,
    output: &str,
) -> Result<(), PipelineError> {
    let c = &mut t.config;
    if !c.output.is_empty() {
        return Err(ctx.err(&sink.referenced, format!("sink `{}` already sends `{}`: a webhook sink sends one window or view (its row ids are the output's); use one sink per window or view", sink.value, c.output)));
    }
    c.view_keys = schema
        .metadata()
        .get(weir_engine::KEYS_METADATA)
        .and_then(|k| k.parse().ok());
    let key_count = match c.view_keys {
        Some(k) => k,
        None => schema.index_of("window_start").map(|i| i + 1).unwrap_or(0),
    };
    let keys: Vec<&str> = schema.fields()[..key_count.min(schema.fields().len())]
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for col in c.url.columns() {
        if !keys.contains(&col) {
            return Err(ctx.err(&sink.referenced, format!("sink `{}`: `url` names `{{{col}}}`, which is not a key column of `{output}` (key columns: {}); use {{pipeline}}, {{output}} or a key column", sink.value, keys.join(", "))));
        }
    }
    if schema.index_of(weir_sinks::webhook::ROW_ID_FIELD).is_ok() {
        return Err(ctx.err(&sink.referenced, format!("sink `{}`: `{output}` has a column named `{}`, the field that carries each row's id in webhook bodies; rename it", sink.value, weir_sinks::webhook::ROW_ID_FIELD)));
    }
    if let Some((loc, text)) = &t.filter_text {
        let compiler = SqlCompiler::new();
        t.filter = Some(
            compiler
                .predicate(text, schema)
                .map_err(|e| ctx.err(loc, format!("sink `{}`: `where`: {e}", sink.value)))?,
        );
    }
    c.output = output.to_string();
    Ok(())
}

/// What `weir validate` says of a webhook sink.
fn describe_webhook(t: &WebhookTarget, checkpointed: bool) -> String {
    use weir_sinks::webhook::{Batching, BodyMode};
    let c = &t.config;
    format!(
        "webhook {} {}{}, {}, {} body, {} at once (ordered per key), signed with {} secret{} (Standard Webhooks){}; at least once: {}",
        match c.method {
            WebhookMethod::Post => "POST",
            WebhookMethod::Put => "PUT",
        },
        c.url.describe(&c.pipeline, &c.output),
        if c.headers.is_empty() {
            String::new()
        } else {
            // header values are never shown, whatever their name
            format!(
                ", headers {}",
                c.headers
                    .iter()
                    .map(|(k, _)| format!("{k}: {}", crate::secrets::MASK))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        match c.batching {
            Batching::Single => "one row a request".to_string(),
            Batching::Array => format!("arrays of up to {} rows or {} bytes", c.batch_max_rows, c.batch_max_bytes),
        },
        match c.body {
            BodyMode::Json => "json",
            BodyMode::CloudEventsStructured => "cloudevents structured",
            BodyMode::CloudEventsBinary => "cloudevents binary",
        },
        c.max_in_flight,
        c.secrets.len(),
        if c.secrets.len() > 1 { "s" } else { "" },
        match &t.filter_text {
            Some((_, f)) => format!(", only rows where {f}"),
            None => String::new(),
        },
        if checkpointed {
            "deterministic webhook-id and row ids, every row acknowledged before its checkpoint completes"
        } else {
            "deterministic webhook-id and row ids, offsets committed after rows are acknowledged"
        }
    )
}

/// A `retry:` block as a policy (defaults where keys are absent).
fn retry_policy(
    ctx: &Ctx,
    doc: Option<&Spanned<RetryDoc>>,
    what: &str,
) -> Result<RetryPolicy, PipelineError> {
    let mut p = RetryPolicy::default();
    let Some(d) = doc else {
        return Ok(p);
    };
    let err = |m: &str| ctx.err(&d.referenced, format!("{what}: retry: {m}"));
    let v = &d.value;
    let ms = std::time::Duration::from_millis;
    if let Some(b) = &v.initial_backoff {
        p.initial_backoff = ms(b.0);
    }
    if let Some(b) = &v.max_backoff {
        p.max_backoff = ms(b.0);
    }
    if let Some(m) = v.multiplier {
        p.multiplier = m;
    }
    if let Some(j) = v.jitter {
        p.jitter = j;
    }
    p.max_retries = v.max_retries;
    if let Some(c) = &v.circuit_breaker {
        if let Some(f) = c.failures {
            p.breaker_failures = f;
        }
        if let Some(o) = &c.open_for {
            p.breaker_open_for = ms(o.0);
        }
    }
    if p.initial_backoff.is_zero() {
        return Err(err("initial_backoff must be more than 0"));
    }
    if p.max_backoff < p.initial_backoff {
        return Err(err("max_backoff must be at least initial_backoff"));
    }
    if !(p.multiplier >= 1.0 && p.multiplier <= 100.0) {
        return Err(err("multiplier must be between 1 and 100"));
    }
    if !(0.0..=1.0).contains(&p.jitter) {
        return Err(err("jitter must be between 0 and 1"));
    }
    if p.breaker_failures == 0 {
        return Err(err("circuit_breaker.failures must be at least 1"));
    }
    Ok(p)
}

/// Reads `start_from`: `committed`, `earliest`, `latest` or an RFC 3339 time.
fn parse_start_from(text: &str) -> Option<StartFrom> {
    match text {
        "committed" => Some(StartFrom::Committed),
        "earliest" => Some(StartFrom::Earliest),
        "latest" => Some(StartFrom::Latest),
        t => weir_engine::time::parse_rfc3339_ms(t.as_bytes()).map(StartFrom::Time),
    }
}

/// A checked sink.
pub struct PlannedSink {
    pub name: String,
    pub target: SinkTarget,
    /// The schema of the rows it receives (the windows feeding it).
    pub schema: Option<SchemaRef>,
    /// How its failed writes are retried.
    pub retry: RetryPolicy,
}

/// A pipeline ready to run.
pub struct Plan {
    pub name: String,
    pub file: PathBuf,
    pub parallelism: Option<usize>,
    pub sources: Vec<PlannedSource>,
    pub windows: Vec<PlannedWindow>,
    pub views: Vec<PlannedView>,
    pub sinks: Vec<PlannedSink>,
    pub dead_letter: DeadLetterTarget,
    /// How failed dead-letter writes are retried.
    pub dead_letter_retry: RetryPolicy,
    /// SQL serving, when configured.
    pub serve: Option<PlannedServe>,
    /// Span export, when configured.
    pub tracing: Option<PlannedTracing>,
    /// Checkpointing, when configured.
    pub checkpoint: Option<PlannedCheckpoint>,
}

/// Where and how often a pipeline checkpoints.
#[derive(Debug, Clone)]
pub struct PlannedCheckpoint {
    /// A local folder (resolved against the pipeline's folder) or an object-store URL.
    pub location: String,
    pub interval_ms: u64,
    /// Complete checkpoints kept.
    pub keep: usize,
}

/// Checkpoints every 10 s unless told otherwise (Flink users set about this).
const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 10_000;

struct Ctx<'a> {
    file: String,
    text: &'a Interpolated,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn err(&self, loc: &Location, message: impl Into<String>) -> PipelineError {
        let line = loc.line();
        let column = if line == 0 {
            0
        } else {
            self.text.original_column(line, loc.column())
        };
        PipelineError::at(&self.file, line, column, message)
    }
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

fn names<T>(m: &indexmap::IndexMap<String, T>) -> String {
    if m.is_empty() {
        "none is declared".to_string()
    } else {
        m.keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads, interpolates, parses and checks a pipeline file.
pub fn load(path: &Path) -> Result<Plan, PipelineError> {
    let file = path.display().to_string();
    let raw = std::fs::read_to_string(path).map_err(|e| {
        PipelineError::at(&file, 0, 0, format!("cannot read the pipeline file: {e}"))
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let text = interpolate(&raw, &env).map_err(|(l, c, m)| PipelineError::at(&file, l, c, m))?;
    crate::secrets::register(text.secrets.iter().cloned());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let ctx = Ctx {
        file: file.clone(),
        text: &text,
        dir,
    };
    let doc: PipelineDoc = serde_saphyr::from_str(&text.text).map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        ctx.err(&loc, yaml_message(&e))
    })?;
    crate::secrets::register(secret_settings(&doc));
    plan(doc, &ctx, path)
}

/// Values of the pipeline's secret settings, written in the file or substituted: passwords,
/// tokens and API keys, secret-named Kafka and catalog properties, and URL passwords.
fn secret_settings(doc: &PipelineDoc) -> Vec<String> {
    use crate::secrets::{is_secret_name, url_password};
    let mut out = Vec::new();
    let props = |out: &mut Vec<String>, p: &IndexMap<String, String>| {
        for (k, v) in p {
            if is_secret_name(k) {
                out.push(v.clone());
            }
            if let Some(pw) = url_password(v) {
                out.push(pw);
            }
        }
    };
    for s in doc.sources.values() {
        if let Some(k) = &s.value.kafka {
            props(&mut out, &k.value.properties);
        }
    }
    let dead_kafka = doc
        .dead_letter
        .as_ref()
        .and_then(|d| d.value.kafka.as_ref());
    for k in doc
        .sinks
        .values()
        .filter_map(|s| s.value.kafka.as_ref())
        .chain(dead_kafka)
    {
        props(&mut out, &k.value.properties);
    }
    let mut urls = Vec::new();
    for s in doc.sinks.values() {
        if let Some(i) = &s.value.iceberg {
            props(&mut out, &i.value.properties);
            urls.push(i.value.catalog.clone());
            urls.push(i.value.warehouse.clone());
        }
        if let Some(e) = &s.value.elasticsearch {
            let e = &e.value;
            out.extend(
                [&e.api_key, &e.password, &e.bearer_token]
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            urls.extend(e.url.iter().cloned());
        }
        if let Some(p) = &s.value.postgres {
            urls.push(p.value.url.clone());
        }
        if let Some(k) = &s.value.kafka {
            urls.extend(k.value.schema_registry.clone());
        }
        if let Some(w) = &s.value.webhook {
            let w = &w.value;
            out.extend(w.secret.value.iter().cloned());
            // every header value: an `X-Api-Key`, a tenant token... whatever its name
            out.extend(w.headers.values().cloned());
            urls.push(w.url.value.clone());
        }
    }
    for s in doc.sources.values() {
        if let Some(k) = &s.value.kafka {
            urls.extend(k.value.schema_registry.clone());
        }
    }
    if let Some(c) = &doc.checkpoint {
        urls.push(c.value.dir.clone());
    }
    if let Some(sv) = &doc.serve {
        out.extend(
            [&sv.value.password, &sv.value.token]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if let Some(t) = &doc.tracing {
        props(&mut out, &t.value.headers);
        urls.push(t.value.otlp.value.clone());
    }
    out.extend(urls.iter().filter_map(|u| url_password(u)));
    out
}

/// serde-saphyr's message without its own position suffix.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let s = e.without_snippet().to_string();
    let s = s.lines().next().unwrap_or(&s).to_string();
    match s.rfind(" at line ") {
        Some(p) => s[..p].to_string(),
        None => s,
    }
}

/// The columns a source offers: its schema's fields, and the message columns of Kafka
/// (`_key`, `_partition`, `_offset`, `_timestamp`, `_headers`) and NATS sources.
fn arrow_schema(schema: &SourceSchema, messages: &[MessageColumn]) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields
        .iter()
        .map(|f| Field::new(&f.name, f.kind.arrow_type(), true))
        .collect();
    fields.extend(messages.iter().map(|c| c.field()));
    Arc::new(Schema::new(fields))
}

fn columns_of(expr: &Arc<dyn PhysicalExpr>, out: &mut BTreeSet<String>) {
    for c in collect_columns(expr) {
        out.insert(c.name().to_string());
    }
}

/// What windows and views share in a pipeline file.
struct OutputDoc<'a> {
    /// "window `name`" or "view `name`", for messages.
    what: String,
    from: &'a Spanned<String>,
    key: &'a Spanned<Vec<Spanned<String>>>,
    filter: Option<&'a Spanned<String>>,
    aggregates: &'a Spanned<IndexMap<String, Spanned<String>>>,
    sinks: &'a [Spanned<String>],
    /// The output's other columns, which aggregates cannot be named after.
    columns: &'a str,
}

/// Checks a window's or view's source, keys, `where`, aggregates and sinks against the
/// sources (schema, message columns) and notes the columns it reads; returns its source's
/// index.
fn check_output(
    ctx: &Ctx,
    doc: &PipelineDoc,
    compiler: &SqlCompiler,
    o: OutputDoc,
    sources: &[(Arc<SourceSchema>, &'static [MessageColumn])],
    read: &mut [BTreeSet<String>],
) -> Result<usize, PipelineError> {
    let what = &o.what;
    let source = doc.sources.get_index_of(&o.from.value).ok_or_else(|| {
        ctx.err(
            &o.from.referenced,
            format!(
                "{what} reads from unknown source `{}`; declared sources: {}",
                o.from.value,
                names(&doc.sources)
            ),
        )
    })?;
    let (schema, messages) = &sources[source];
    let full = arrow_schema(schema, messages);
    if o.key.value.is_empty() {
        return Err(ctx.err(
            &o.key.referenced,
            format!("{what} needs at least one key field"),
        ));
    }
    for k in &o.key.value {
        let message_column = messages.iter().any(|c| c.name() == k.value);
        if schema.index_of(&k.value).is_none() && !message_column {
            return Err(ctx.err(
                &k.referenced,
                format!(
                    "key field `{}` is not in schema `{}`; its fields are {}{}",
                    k.value,
                    schema.name,
                    schema.field_names().join(", "),
                    if messages.is_empty() {
                        String::new()
                    } else {
                        let names: Vec<&str> = messages.iter().map(|c| c.name()).collect();
                        format!(", and the message columns {}", names.join(", "))
                    }
                ),
            ));
        }
        read[source].insert(k.value.clone());
    }
    if let Some(f) = o.filter {
        let p = compiler
            .predicate(&f.value, &full)
            .map_err(|e| ctx.err(&f.referenced, format!("bad `where` expression: {e}")))?;
        columns_of(&p, &mut read[source]);
    }
    if o.aggregates.value.is_empty() {
        return Err(ctx.err(
            &o.aggregates.referenced,
            format!("{what} needs at least one aggregate"),
        ));
    }
    for (out, sql) in &o.aggregates.value {
        if o.key.value.iter().any(|k| &k.value == out) || o.columns.split(", ").any(|c| c == out) {
            return Err(ctx.err(
                &sql.referenced,
                format!(
                    "aggregate name `{out}` is already a column of the output ({})",
                    o.columns
                ),
            ));
        }
        let a = compiler
            .aggregate(out, &sql.value, &full)
            .map_err(|e| ctx.err(&sql.referenced, format!("bad aggregate `{out}`: {e}")))?;
        for e in a.inputs.iter().chain(a.filter.iter()) {
            columns_of(e, &mut read[source]);
        }
    }
    for s in o.sinks {
        if !doc.sinks.contains_key(&s.value) {
            return Err(ctx.err(
                &s.referenced,
                format!(
                    "{what} writes to unknown sink `{}`; declared sinks: {}",
                    s.value,
                    names(&doc.sinks)
                ),
            ));
        }
    }
    Ok(source)
}

/// An output's compiled `where` and aggregates.
type CompiledOutput = (Option<Arc<dyn PhysicalExpr>>, Vec<CompiledAggregate>);

/// Compiles an output's `where` and aggregates against its source's decoded batches.
fn compile_output(
    compiler: &SqlCompiler,
    ctx: &Ctx,
    filter: Option<&Spanned<String>>,
    aggregates: &Spanned<IndexMap<String, Spanned<String>>>,
    input: &SchemaRef,
) -> Result<CompiledOutput, PipelineError> {
    let predicate = match filter {
        Some(f) => Some(
            compiler
                .predicate(&f.value, input)
                .map_err(|e| ctx.err(&f.referenced, e))?,
        ),
        None => None,
    };
    let aggregates = aggregates
        .value
        .iter()
        .map(|(out, sql)| {
            compiler
                .aggregate(out, &sql.value, input)
                .map_err(|e| ctx.err(&sql.referenced, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((predicate, aggregates))
}

/// The indexes of the sinks an output writes to, which receive rows of `schema`; a CSV or
/// Parquet sink holds rows of one shape only.
fn attach_sinks(
    ctx: &Ctx,
    doc: &PipelineDoc,
    sinks: &mut [PlannedSink],
    sink_names: &[Spanned<String>],
    schema: &SchemaRef,
    output: &str,
) -> Result<Vec<usize>, PipelineError> {
    let mut ids = Vec::new();
    for s in sink_names {
        let id = doc.sinks.get_index_of(&s.value).ok_or_else(|| {
            ctx.err(
                &s.referenced,
                format!(
                    "unknown sink `{}`; declared sinks: {}",
                    s.value,
                    names(&doc.sinks)
                ),
            )
        })?;
        let sink = &mut sinks[id];
        if let (Some(prev), SinkTarget::File { format, .. }) = (&sink.schema, &sink.target) {
            if *format != FileFormat::Ndjson && prev != schema {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already receives rows of another shape: a CSV or Parquet file holds one output; use one sink per window or view", s.value)));
            }
        }
        if let SinkTarget::Iceberg(t) = &mut sink.target {
            if let Some(other) = &t.output {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already writes `{other}`: an Iceberg sink writes one table; use one sink per window or view", s.value)));
            }
            let columns: Vec<&str> = schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .filter(|c| *c != weir_iceberg::schema::OP_COLUMN)
                .collect();
            if let Some((loc, text)) = &t.partition_text {
                t.partition_by = Some(
                    PartitionBy::parse(text, &columns)
                        .map_err(|e| ctx.err(loc, format!("sink `{}`: {e}", s.value)))?,
                );
            }
            t.view_keys = schema
                .metadata()
                .get(weir_engine::KEYS_METADATA)
                .and_then(|k| k.parse().ok());
            if t.view_keys.is_some() && matches!(t.catalog, CatalogUri::Rest(_)) {
                return Err(ctx.err(&s.referenced, format!("sink `{}`: a view's table is replaced at every commit, which weir can only commit through a SQL catalog (sqlite:// or postgres://), not a REST catalog; use a SQL catalog for views", s.value)));
            }
            t.output = Some(output.to_string());
        }
        if let SinkTarget::Elasticsearch(c) = &mut sink.target {
            if !c.output.is_empty() {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already writes `{}`: an Elasticsearch sink writes one window or view (its documents' ids and mapping are the output's); use one sink per window or view", s.value, c.output)));
            }
            c.view_keys = schema
                .metadata()
                .get(weir_engine::KEYS_METADATA)
                .and_then(|k| k.parse().ok());
            if c.view_keys.is_some() && c.index.uses_window_start() {
                return Err(ctx.err(&s.referenced, format!("sink `{}`: `{{window_start}}` in `index` names indices by window, but `{output}` is a view (no window_start)", s.value)));
            }
            c.output = output.to_string();
        }
        if let SinkTarget::Webhook(t) = &mut sink.target {
            attach_webhook(ctx, t, s, schema, output)?;
        }
        if let SinkTarget::Postgres(c) = &mut sink.target {
            if !c.output.is_empty() {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already writes `{}`: a PostgreSQL sink writes one window or view (its table has the output's columns and key); use one sink per window or view", s.value, c.output)));
            }
            c.view_keys = schema
                .metadata()
                .get(weir_engine::KEYS_METADATA)
                .and_then(|k| k.parse().ok());
            let table = c.table.clone();
            weir_sinks::postgres::ddl::Layout::new(table.clone(), table, schema, c.view_keys)
                .map_err(|e| ctx.err(&s.referenced, format!("sink `{}`: {e}", s.value)))?;
            c.output = output.to_string();
        }
        sink.schema = Some(schema.clone());
        ids.push(id);
    }
    Ok(ids)
}

fn plan(doc: PipelineDoc, ctx: &Ctx, path: &Path) -> Result<Plan, PipelineError> {
    let name = doc.name.value.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(ctx.err(
            &doc.name.referenced,
            format!("bad pipeline name `{name}`: use lowercase letters, digits, `_` and `-`"),
        ));
    }
    let parallelism = match &doc.parallelism {
        Some(p) if p.value == 0 || p.value > 256 => {
            return Err(ctx.err(&p.referenced, "parallelism must be between 1 and 256"))
        }
        Some(p) => Some(p.value as usize),
        None => None,
    };

    // Sources: inputs and schemas.
    struct Src {
        /// CloudEvents or the platform envelope around the schema's fields.
        enveloped: bool,
        /// Avro records (the schema's `.avsc` is the writer schema).
        avro: bool,
        /// The schema registry of Avro records, when given.
        registry: Option<String>,
        /// Bounds on what one Avro record may decode to.
        avro_limits: weir_sources::avro::AvroLimits,
        name: String,
        input: SourceInput,
        schema: Arc<SourceSchema>,
        time_field: String,
        ooo: u64,
        idle: Option<u64>,
        max_future: u64,
    }
    let mut srcs = Vec::new();
    for (sname, s) in &doc.sources {
        let loc = &s.referenced;
        let s = &s.value;
        let declared = [
            s.kafka.is_some(),
            s.nats.is_some(),
            s.file.is_some(),
            s.generator.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if declared != 1 {
            return Err(ctx.err(loc, format!("source `{sname}` needs exactly one of `kafka`, `nats`, `file`, `generator` (found {declared})")));
        }
        let format = s.format.as_ref().map(|f| f.value).unwrap_or(Format::Json);
        if format == Format::Avro && s.kafka.is_none() && s.nats.is_none() {
            let f = s.format.as_ref().map(|f| f.referenced).unwrap_or(*loc);
            return Err(ctx.err(&f, format!("source `{sname}`: format `avro` is read from Kafka or NATS messages; files and the generator are json")));
        }
        let enveloped = format == Format::Cloudevents;
        let (input, default_schema) = if let Some(k) = &s.kafka {
            let d = &k.value;
            let topics = match &d.topic {
                OneOrMany::One(t) => vec![t.clone()],
                OneOrMany::Many(ts) => ts.clone(),
            };
            if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
                return Err(ctx.err(
                    &k.referenced,
                    format!("source `{sname}`: `topic` needs a topic name (or a list of them)"),
                ));
            }
            if d.brokers.trim().is_empty() {
                return Err(ctx.err(
                    &k.referenced,
                    format!("source `{sname}`: `brokers` is empty (host:port[,host:port...])"),
                ));
            }
            let start_from = match &d.start_from {
                None => StartFrom::Committed,
                Some(t) => parse_start_from(t).ok_or_else(|| ctx.err(&k.referenced, format!("source `{sname}`: bad start_from `{t}`: use committed, earliest, latest or an RFC 3339 time such as 2026-11-24T10:00:00Z")))?,
            };
            if let Some(r) = &d.schema_registry {
                if format != Format::Avro {
                    return Err(ctx.err(
                        &k.referenced,
                        format!("source `{sname}`: schema_registry is for `format: avro`"),
                    ));
                }
                weir_sources::SchemaRegistry::new(r)
                    .map_err(|e| ctx.err(&k.referenced, format!("source `{sname}`: {e}")))?;
            }
            let cfg = KafkaSourceConfig {
                brokers: d.brokers.clone(),
                topics,
                group_id: d
                    .group_id
                    .clone()
                    .unwrap_or_else(|| format!("weir-{}", doc.name.value)),
                start_from,
                properties: d
                    .properties
                    .iter()
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect(),
                idle_timeout: None,
                until_caught_up: false,
                caught_up_timeout: weir_sources::DEFAULT_CAUGHT_UP_TIMEOUT,
                end_offsets: Default::default(),
                read_offsets: None,
                with_headers: false,
                pool: None,
                upstream: None,
            };
            (SourceInput::Kafka(cfg), None)
        } else if let Some(n) = &s.nats {
            let cfg = crate::nats::source::config(&n.value, &doc.name.value, sname, &ctx.dir)
                .map_err(|e| ctx.err(&n.referenced, format!("source `{sname}`: {e}")))?;
            (SourceInput::Nats(Box::new(cfg)), None)
        } else if let Some(f) = &s.file {
            let p = ctx.path(&f.value.path.value);
            let files = resolve_files(&p).map_err(|e| ctx.err(&f.value.path.referenced, e))?;
            (SourceInput::Files(files), None)
        } else {
            let g = s.generator.as_ref().expect("one input is declared");
            let kind = match g.value.kind {
                GeneratorKind::DataIngestion => Kind::DataIngestion,
                GeneratorKind::ServiceHealth => Kind::ServiceHealth,
            };
            let d = &g.value;
            let mut cfg = GeneratorConfig::new(kind);
            cfg.count = d.count;
            cfg.events_per_second = d.events_per_second.unwrap_or(0.0);
            if cfg.events_per_second < 0.0 {
                return Err(ctx.err(
                    &g.referenced,
                    "events_per_second must be 0 (as fast as possible) or more",
                ));
            }
            if let Some(v) = d.seed {
                cfg.seed = v;
            }
            if let Some(v) = d.keys {
                cfg.keys = v.max(1);
            }
            if let Some(v) = d.skew {
                cfg.skew = v;
            }
            cfg.start_ms = d.start_ms;
            cfg.step_ms = d.step_ms;
            if let Some(v) = d.jitter_frac {
                cfg.jitter_frac = v;
            }
            if let Some(v) = d.jitter_ms {
                cfg.jitter_ms = v.max(0);
            }
            if let Some(v) = d.late_frac {
                cfg.late_frac = v;
            }
            if let Some(v) = d.late_ms {
                cfg.late_ms = v.max(0);
            }
            if let Some(v) = d.unicode_keys {
                cfg.unicode_keys = v;
            }
            (SourceInput::Generator(cfg), Some(kind.schema_name()))
        };
        let schema = match (&s.schema, default_schema) {
            (Some(sch), Some(builtin)) if sch.value != builtin => {
                return Err(ctx.err(&sch.referenced, format!("the generator makes `{builtin}` events: its schema is `{builtin}`")));
            }
            (Some(sch), _) => match SourceSchema::builtin(&sch.value) {
                Some(b) => b,
                None if sch.value.ends_with(".avsc") => {
                    let p = ctx.path(&sch.value);
                    let text = std::fs::read_to_string(&p).map_err(|e| ctx.err(&sch.referenced, format!("cannot read schema {}: {e}", p.display())))?;
                    SourceSchema::from_avsc(&text).map_err(|e| ctx.err(&sch.referenced, format!("schema {}: {e}", p.display())))?
                }
                None => {
                    return Err(ctx.err(&sch.referenced, format!("unknown schema `{}`: use one of `data-ingestion`, `service-health`, or a path to an .avsc file", sch.value)));
                }
            },
            (None, Some(builtin)) => SourceSchema::builtin(builtin).expect("built-in schema"),
            (None, None) => return Err(ctx.err(loc, format!("source `{sname}` needs a `schema`: `data-ingestion`, `service-health`, or a path to an .avsc file"))),
        };
        let (time_field, ooo, idle) = match &s.event_time {
            Some(et) => {
                let f = &et.value.field;
                let envelope_time = enveloped
                    && weir_sources::json::ENVELOPE_TIME_FIELDS.contains(&f.value.as_str());
                if schema.index_of(&f.value).is_none() && !envelope_time {
                    return Err(ctx.err(
                        &f.referenced,
                        format!(
                            "event-time field `{}` is not in schema `{}`; its fields are {}",
                            f.value,
                            schema.name,
                            schema.field_names().join(", ")
                        ),
                    ));
                }
                (
                    f.value.clone(),
                    et.value.max_out_of_orderness.map_or(0, |d| d.0),
                    et.value.idle_timeout.map(|d| d.0),
                )
            }
            None if enveloped => ("time".to_string(), 0, None),
            None if schema.index_of("timestamp").is_some() => ("timestamp".to_string(), 0, None),
            None => {
                return Err(ctx.err(
                    loc,
                    format!("source `{sname}` needs `event_time: {{ field: ... }}`"),
                ))
            }
        };
        for f in s.partitioned_by.iter().flatten() {
            if schema.index_of(f).is_none() {
                return Err(ctx.err(
                    loc,
                    format!(
                        "source `{sname}`: partitioned_by field `{f}` is not in schema `{}`; its fields are {}",
                        schema.name,
                        schema.field_names().join(", ")
                    ),
                ));
            }
        }
        let max_future = s
            .event_time
            .as_ref()
            .and_then(|et| et.value.max_future)
            .map_or(DEFAULT_MAX_FUTURE_MS, |d| d.0);
        let mut input = input;
        // a Kafka partition that is assigned but silent must not hold windows open forever
        let idle = match &input {
            SourceInput::Kafka(_) | SourceInput::Nats(_) => {
                Some(idle.unwrap_or(DEFAULT_KAFKA_IDLE_TIMEOUT_MS))
            }
            _ => idle,
        };
        if let SourceInput::Kafka(cfg) = &mut input {
            cfg.idle_timeout = idle.map(std::time::Duration::from_millis);
        }
        if let SourceInput::Nats(cfg) = &mut input {
            cfg.idle_timeout = idle.map(std::time::Duration::from_millis);
        }
        if let SourceInput::Generator(cfg) = &mut input {
            cfg.idle_timeout_ms = idle;
            if time_field != "timestamp" {
                let l = s
                    .event_time
                    .as_ref()
                    .map_or(*loc, |e| e.value.field.referenced);
                return Err(ctx.err(&l, "the generator's event time is its `timestamp` field"));
            }
        }
        let mut avro_limits = weir_sources::avro::AvroLimits::default();
        let limits = s.kafka.as_ref().and_then(|k| k.value.avro_limits.as_ref());
        let limits = limits.or(s.nats.as_ref().and_then(|n| n.value.avro_limits.as_ref()));
        if let Some(l) = limits {
            if let Some(b) = l.max_record_bytes {
                avro_limits.max_record_bytes = usize::try_from(b).unwrap_or(usize::MAX);
            }
            if let Some(n) = l.max_items {
                avro_limits.max_items = n;
            }
        }
        srcs.push(Src {
            avro_limits,
            registry: s
                .kafka
                .as_ref()
                .and_then(|k| k.value.schema_registry.clone()),
            enveloped,
            avro: format == Format::Avro,
            name: sname.clone(),
            input,
            schema: Arc::new(schema),
            time_field,
            ooo,
            idle,
            max_future,
        });
    }

    // Sinks.
    let mut sinks = Vec::new();
    for (kname, k) in &doc.sinks {
        let loc = &k.referenced;
        let v = &k.value;
        let declared = [
            v.kafka.is_some(),
            v.iceberg.is_some(),
            v.elasticsearch.is_some(),
            v.webhook.is_some(),
            v.postgres.is_some(),
            v.file.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if declared != 1 {
            return Err(ctx.err(loc, format!("sink `{kname}` needs exactly one of `kafka`, `iceberg`, `elasticsearch`, `webhook`, `postgres`, `file` (found {declared})")));
        }
        if let (None, Some(f)) = (&v.kafka, &v.format) {
            if f.value != Format::Json {
                return Err(ctx.err(
                    &f.referenced,
                    format!("sink `{kname}`: `format` is for Kafka sinks: a file's format follows its extension (.ndjson, .csv, .parquet), Iceberg, Elasticsearch, webhook and PostgreSQL sinks have their own"),
                ));
            }
        }
        let target = if let Some(f) = &v.file {
            let p = ctx.path(&f.value.path.value);
            let format = FileFormat::from_path(&p).ok_or_else(|| {
                ctx.err(&f.value.path.referenced, format!("file sink `{kname}`: unknown extension of `{}`: use .ndjson, .csv or .parquet", f.value.path.value))
            })?;
            SinkTarget::File { path: p, format }
        } else if let Some(k) = &v.kafka {
            let format = match v.format.as_ref().map(|f| (f.value, f.referenced)) {
                None | Some((Format::Json, _)) => KafkaFormat::Json,
                Some((Format::Avro, _)) => KafkaFormat::Avro {
                    registry: k.value.schema_registry.clone(),
                },
                Some((Format::Cloudevents, l)) => {
                    return Err(ctx.err(
                        &l,
                        format!("sink `{kname}`: kafka sinks write `json` or `avro`"),
                    ))
                }
            };
            if let Some(r) = &k.value.schema_registry {
                if format == KafkaFormat::Json {
                    return Err(ctx.err(
                        &k.referenced,
                        format!("sink `{kname}`: schema_registry is for `format: avro`"),
                    ));
                }
                weir_kafka::RegistryClient::new(r)
                    .map_err(|e| ctx.err(&k.referenced, format!("sink `{kname}`: {e}")))?;
            }
            if k.value.topic.is_empty() {
                return Err(ctx.err(&k.referenced, format!("sink `{kname}`: `topic` is empty")));
            }
            let delivery = match k.value.delivery.as_deref() {
                None | Some("idempotent") => {
                    if k.value.transactional_id.is_some() {
                        return Err(ctx.err(
                            &k.referenced,
                            format!("sink `{kname}`: `transactional_id` is for `delivery: exactly_once`"),
                        ));
                    }
                    KafkaDelivery::Idempotent
                }
                Some("exactly_once") => {
                    if doc.checkpoint.is_none() {
                        return Err(ctx.err(
                            &k.referenced,
                            format!("sink `{kname}`: `delivery: exactly_once` commits one Kafka transaction per checkpoint: add `checkpoint: {{ dir: … }}`"),
                        ));
                    }
                    KafkaDelivery::ExactlyOnce {
                        transactional_id: k
                            .value
                            .transactional_id
                            .clone()
                            .unwrap_or_else(|| format!("{}.{kname}", doc.name.value)),
                    }
                }
                Some(other) => {
                    return Err(ctx.err(
                        &k.referenced,
                        format!("sink `{kname}`: unknown delivery `{other}`: use `idempotent` or `exactly_once`"),
                    ))
                }
            };
            SinkTarget::Kafka(kafka_sink_config(&doc, &k.value, format, delivery))
        } else if let Some(i) = &v.iceberg {
            let d = &i.value;
            let at = |m: String| ctx.err(&i.referenced, format!("sink `{kname}`: {m}"));
            let catalog = CatalogUri::parse(&d.catalog, &ctx.dir).map_err(at)?;
            let warehouse = if d.warehouse.contains("://") {
                d.warehouse.clone()
            } else {
                std::path::absolute(ctx.path(&d.warehouse))
                    .map_err(|e| at(format!("warehouse {}: {e}", d.warehouse)))?
                    .to_string_lossy()
                    .into_owned()
            };
            let mb = d.target_file_size_mb.unwrap_or(128);
            if mb == 0 || mb > 16 * 1024 {
                return Err(at("target_file_size_mb must be between 1 and 16384".into()));
            }
            let target = IcebergTarget {
                catalog,
                catalog_name: d.catalog_name.clone().unwrap_or_else(|| "weir".into()),
                warehouse,
                table: d.table.clone(),
                partition_by: None,
                partition_text: d
                    .partition_by
                    .as_ref()
                    .map(|p| (p.referenced, p.value.clone())),
                target_file_size: (mb as usize) << 20,
                properties: d
                    .properties
                    .iter()
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect(),
                output: None,
                view_keys: None,
            };
            let config = weir_iceberg::IcebergSinkConfig {
                table: target.table.clone(),
                ..iceberg_config(&name, kname, &target)
            };
            config.ident().map_err(|e| at(e.to_string()))?;
            SinkTarget::Iceberg(Box::new(target))
        } else if let Some(e) = &v.elasticsearch {
            SinkTarget::Elasticsearch(Box::new(elasticsearch_config(ctx, &name, kname, e)?))
        } else if let Some(w) = &v.webhook {
            SinkTarget::Webhook(Box::new(webhook_config(ctx, &name, kname, w)?))
        } else if let Some(p) = &v.postgres {
            SinkTarget::Postgres(Box::new(postgres_config(ctx, &name, kname, p)?))
        } else {
            return Err(ctx.err(loc, format!("sink `{kname}` has no output")));
        };
        let retry = retry_policy(ctx, v.retry.as_ref(), &format!("sink `{kname}`"))?;
        sinks.push(PlannedSink {
            name: kname.clone(),
            target,
            schema: None,
            retry,
        });
    }

    // Windows, compiled once against the full schema to learn which columns they read.
    let compiler = SqlCompiler::new();
    let mut columns: Vec<BTreeSet<String>> = srcs
        .iter()
        .map(|s| BTreeSet::from([s.time_field.clone()]))
        .collect();
    struct Win<'a> {
        name: &'a str,
        doc: &'a WindowDoc,
        loc: Location,
        source: usize,
    }
    let mut wins = Vec::new();
    let src_info: Vec<(Arc<SourceSchema>, &'static [MessageColumn])> = srcs
        .iter()
        .map(|s| (s.schema.clone(), s.input.message_columns()))
        .collect();
    for (wname, w) in &doc.windows {
        let d = &w.value;
        if d.tumbling.value.0 == 0 {
            return Err(ctx.err(
                &d.tumbling.referenced,
                "the window size must be more than 0",
            ));
        }
        let source = check_output(
            ctx,
            &doc,
            &compiler,
            OutputDoc {
                what: format!("window `{wname}`"),
                from: &d.from,
                key: &d.key,
                filter: d.filter.as_ref(),
                aggregates: &d.aggregates,
                sinks: &d.sinks,
                columns: "keys, window_start, window_end",
            },
            &src_info,
            &mut columns,
        )?;
        wins.push(Win {
            name: wname,
            doc: d,
            loc: w.referenced,
            source,
        });
    }
    struct ViewPlan<'a> {
        name: &'a str,
        doc: &'a ViewDoc,
        source: usize,
    }
    let mut view_plans = Vec::new();
    for (vname, v) in &doc.views {
        let d = &v.value;
        if doc.windows.contains_key(vname) || vname == "weir_status" {
            return Err(ctx.err(
                &v.referenced,
                format!("view `{vname}`: the name is taken (by a window or `weir_status`); windows and views are SQL tables and need names of their own"),
            ));
        }
        let source = check_output(
            ctx,
            &doc,
            &compiler,
            OutputDoc {
                what: format!("view `{vname}`"),
                from: &d.from,
                key: &d.key,
                filter: d.filter.as_ref(),
                aggregates: &d.aggregates,
                sinks: &d.sinks,
                columns: "keys",
            },
            &src_info,
            &mut columns,
        )?;
        view_plans.push(ViewPlan {
            name: vname,
            doc: d,
            source,
        });
    }
    if let Some(w) = doc.windows.keys().find(|w| *w == "weir_status") {
        return Err(ctx.err(
            &doc.windows[w].referenced,
            "the name `weir_status` is taken by the status table; name the window otherwise",
        ));
    }
    let checkpoint = match &doc.checkpoint {
        Some(c) => {
            let interval_ms = c
                .value
                .interval
                .as_ref()
                .map_or(DEFAULT_CHECKPOINT_INTERVAL_MS, |d| d.0);
            if interval_ms < 100 {
                return Err(ctx.err(
                    &c.referenced,
                    format!("checkpoint: `interval` must be at least 100ms, not {interval_ms}ms"),
                ));
            }
            if c.value.dir.trim().is_empty() {
                return Err(ctx.err(&c.referenced, "checkpoint: `dir` is empty"));
            }
            let keep = c.value.keep.unwrap_or(3);
            if keep == 0 {
                return Err(ctx.err(&c.referenced, "checkpoint: `keep` must be at least 1"));
            }
            let location = if c.value.dir.contains("://") {
                c.value.dir.clone()
            } else {
                ctx.path(&c.value.dir).display().to_string()
            };
            Some(PlannedCheckpoint {
                location,
                interval_ms,
                keep,
            })
        }
        None => None,
    };
    let tracing = match &doc.tracing {
        Some(t) => {
            let d = &t.value;
            let url = d.otlp.value.trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ctx.err(
                    &d.otlp.referenced,
                    format!("tracing: `otlp` must be an http:// or https:// URL (an OTLP/HTTP collector, port 4318), not `{url}`"),
                ));
            }
            let ratio = d.sample_ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                return Err(ctx.err(
                    &t.referenced,
                    "tracing: `sample_ratio` must be between 0 and 1",
                ));
            }
            Some(PlannedTracing {
                endpoint: if url.ends_with("/v1/traces") {
                    url.to_string()
                } else {
                    format!("{url}/v1/traces")
                },
                service_name: d.service_name.clone().unwrap_or_else(|| "weir".into()),
                sample_ratio: ratio,
                headers: d
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        }
        None => None,
    };
    let serve = match &doc.serve {
        Some(sv) => {
            let d = &sv.value;
            if d.http.is_none() && d.postgres.is_none() {
                return Err(ctx.err(
                    &sv.referenced,
                    "serve needs `http` and/or `postgres` (host:port, e.g. 127.0.0.1:8080)",
                ));
            }
            for (what, addr) in [("http", &d.http), ("postgres", &d.postgres)] {
                if let Some(a) = addr {
                    let ok = a.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    });
                    if !ok {
                        return Err(ctx.err(
                            &sv.referenced,
                            format!("serve.{what}: `{a}` is not host:port (e.g. 127.0.0.1:8080)"),
                        ));
                    }
                }
            }
            let refresh_ms = d.refresh.map_or(1000, |r| r.0);
            if refresh_ms < 50 {
                return Err(ctx.err(
                    &sv.referenced,
                    format!("serve: `refresh` must be at least 50ms, not {refresh_ms}ms"),
                ));
            }
            Some(PlannedServe {
                http: d.http.clone(),
                postgres: d.postgres.clone(),
                token: d.token.clone().filter(|t| !t.is_empty()),
                password: d.password.clone().filter(|p| !p.is_empty()),
                refresh_ms,
                limits: crate::serve::limits(d, |p| ctx.path(p)),
            })
        }
        None => None,
    };
    let dead_letter = match &doc.dead_letter {
        Some(d) => match (&d.value.file, &d.value.kafka) {
            (Some(f), None) => DeadLetterTarget::File(ctx.path(&f.value.path.value)),
            (None, Some(k)) => {
                if k.value.topic.is_empty() {
                    return Err(ctx.err(&k.referenced, "dead_letter: `topic` is empty"));
                }
                if k.value.delivery.is_some() || k.value.transactional_id.is_some() {
                    return Err(ctx.err(
                        &k.referenced,
                        "dead_letter: a dead-letter topic is written idempotently (keyed by source, partition and offset); `delivery` is for sinks",
                    ));
                }
                if k.value.schema_registry.is_some() {
                    return Err(ctx.err(
                        &k.referenced,
                        "dead_letter: dead letters are JSON records; `schema_registry` is for Avro sinks",
                    ));
                }
                DeadLetterTarget::Kafka(kafka_sink_config(
                    &doc,
                    &k.value,
                    KafkaFormat::Json,
                    KafkaDelivery::Idempotent,
                ))
            }
            _ => {
                return Err(ctx.err(
                    &d.referenced,
                    "dead_letter needs exactly one of `file`, `kafka`",
                ))
            }
        },
        None => DeadLetterTarget::File(ctx.dir.join("dead_letter.ndjson")),
    };
    let dead_letter_retry = retry_policy(
        ctx,
        doc.dead_letter
            .as_ref()
            .and_then(|d| d.value.retry.as_ref()),
        "dead_letter",
    )?;

    // Decoders with only the columns read, then the windows compiled against them.
    let mut sources = Vec::new();
    for (i, s) in srcs.into_iter().enumerate() {
        let cols: Vec<String> = s
            .schema
            .fields
            .iter()
            .map(|f| f.name.clone())
            .filter(|f| columns[i].contains(f))
            .collect();
        let message_columns: Vec<MessageColumn> = s
            .input
            .message_columns()
            .iter()
            .copied()
            .filter(|c| columns[i].contains(c.name()))
            .collect();
        let mut input = s.input;
        let with_headers = message_columns.contains(&MessageColumn::Headers);
        if let SourceInput::Kafka(cfg) = &mut input {
            cfg.with_headers = with_headers;
        }
        if let SourceInput::Nats(cfg) = &mut input {
            cfg.with_headers = with_headers;
        }
        let decoder = if s.enveloped {
            JsonDecoder::enveloped(s.schema.clone(), &cols, &s.time_field)
        } else {
            JsonDecoder::new(s.schema.clone(), &cols, &s.time_field)
        }
        .map_err(|e| PipelineError::at(&ctx.file, 0, 0, format!("source `{}`: {e}", s.name)))?
        .with_message_columns(message_columns);
        let output_schema = decoder.output_schema();
        let cols: Vec<String> = output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut waiting = None;
        let decoder: Arc<dyn Decode> = if s.avro {
            let writer = AvroType::parse(&s.schema.avsc).map_err(|e| {
                PipelineError::at(
                    &ctx.file,
                    0,
                    0,
                    format!("source `{}`: its schema as Avro: {e}", s.name),
                )
            })?;
            let avro = AvroDecoder::new(writer, decoder).with_limits(s.avro_limits);
            match &s.registry {
                Some(url) => {
                    let registry = SchemaRegistry::new(url).map_err(|e| {
                        PipelineError::at(&ctx.file, 0, 0, format!("source `{}`: {e}", s.name))
                    })?;
                    waiting = Some(registry.waiting());
                    let avro = avro.with_reader_defaults(&s.schema.avsc).map_err(|e| {
                        PipelineError::at(&ctx.file, 0, 0, format!("source `{}`: {e}", s.name))
                    })?;
                    Arc::new(avro.with_registry(registry))
                }
                None => Arc::new(avro),
            }
        } else {
            Arc::new(decoder)
        };
        sources.push(PlannedSource {
            name: s.name,
            input,
            schema: s.schema,
            time_field: s.time_field,
            max_out_of_orderness_ms: s.ooo,
            idle_timeout_ms: s.idle,
            max_future_ms: s.max_future,
            columns: cols,
            decoder,
            output_schema,
            partitioned_by: Vec::new(),
            waiting,
        });
    }
    let partitioned_by: Vec<Vec<String>> = doc
        .sources
        .values()
        .map(|s| s.value.partitioned_by.clone().unwrap_or_default())
        .collect();
    for (s, by) in sources.iter_mut().zip(&partitioned_by) {
        s.partitioned_by = by.clone();
    }
    let mut windows = Vec::new();
    for w in wins {
        let d = w.doc;
        let input = sources[w.source].output_schema.clone();
        let (predicate, aggregates) =
            compile_output(&compiler, ctx, d.filter.as_ref(), &d.aggregates, &input)?;
        let config = Arc::new(WindowConfig {
            name: w.name.to_string(),
            input_schema: input,
            predicate,
            keys: d.key.value.iter().map(|k| k.value.clone()).collect(),
            size_ms: d.tumbling.value.0 as i64,
            allowed_lateness_ms: d.allowed_lateness.map_or(0, |x| x.0) as i64,
            time: if d.time == Some(TimeDoc::Processing) {
                TimeMode::Processing
            } else {
                TimeMode::Event
            },
            aggregates,
            partition_state: false,
            key_partitioned: !partitioned_by[w.source].is_empty()
                && partitioned_by[w.source]
                    .iter()
                    .all(|f| d.key.value.iter().any(|k| &k.value == f)),
        });
        let schema = config
            .output_schema()
            .map_err(|e| ctx.err(&w.loc, e.to_string()))?;
        let sink_ids = attach_sinks(ctx, &doc, &mut sinks, &d.sinks, &schema, w.name)?;
        windows.push(PlannedWindow {
            config,
            source: w.source,
            sinks: sink_ids,
            retain_ms: d.retain.map(|r| r.0),
        });
    }
    let mut views = Vec::new();
    for v in view_plans {
        let d = v.doc;
        let input = sources[v.source].output_schema.clone();
        let (predicate, aggregates) =
            compile_output(&compiler, ctx, d.filter.as_ref(), &d.aggregates, &input)?;
        let config = ViewConfig {
            name: v.name.to_string(),
            input_schema: input,
            predicate,
            keys: d.key.value.iter().map(|k| k.value.clone()).collect(),
            aggregates,
            retain_ms: None,
            changelog: !d.sinks.is_empty(),
            partition_state: false,
        };
        let config = Arc::new(match d.retain {
            Some(r) => config
                .with_retain(r.0 as i64, &compiler)
                .map_err(|e| ctx.err(&d.from.referenced, e))?,
            None => config,
        });
        let schema = config
            .sink_schema()
            .map_err(|e| ctx.err(&d.from.referenced, e.to_string()))?;
        let sink_ids = attach_sinks(ctx, &doc, &mut sinks, &d.sinks, &schema, v.name)?;
        views.push(PlannedView {
            config,
            source: v.source,
            sinks: sink_ids,
        });
    }
    Ok(Plan {
        name,
        file: path.to_path_buf(),
        parallelism,
        sources,
        windows,
        views,
        sinks,
        dead_letter,
        dead_letter_retry,
        tracing,
        serve,
        checkpoint,
    })
}

/// A window's definition in one line (validate output and checkpoint fingerprints).
fn window_definition(c: &WindowConfig, source: &str) -> String {
    let mut d = format!(
        "from {source} key [{}] tumbling {} ms, allowed_lateness {} ms, {} time",
        c.keys.join(", "),
        c.size_ms,
        c.allowed_lateness_ms,
        if c.time == TimeMode::Event {
            "event"
        } else {
            "processing"
        }
    );
    if let Some(p) = &c.predicate {
        let _ = write!(d, ", where {p}");
    }
    if c.partition_state {
        d.push_str(", state per partition (worker pool)");
    }
    d
}

/// `text` with secrets masked, owned.
fn redacted(text: &str) -> String {
    crate::secrets::redact(text).into_owned()
}

/// A view's definition in one line.
fn view_definition(c: &ViewConfig, source: &str) -> String {
    let mut d = format!("from {source} key [{}]", c.keys.join(", "));
    if let Some(p) = &c.predicate {
        let _ = write!(d, ", where {p}");
    }
    d
}

/// An aggregate's definition in one line. An integer sum added exactly (its state is a
/// `Decimal128`, see `weir_operators::compile::widen_integer_sum`) says so: a checkpoint of a
/// wrapping sum's `Int64` state (written by an earlier weir) is then refused as a change.
fn aggregate_definition(a: &weir_operators::CompiledAggregate) -> String {
    format!(
        "{} = {} -> {}{}",
        a.name,
        a.function.human_display(),
        a.output_field().data_type(),
        if a.output_type.is_some() {
            " (exact, null past its range)"
        } else {
            ""
        }
    )
}

impl Plan {
    /// What checkpointed state depends on, item by item: a checkpoint written with another
    /// fingerprint is refused, naming the items that differ.
    pub fn fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        let mut f = std::collections::BTreeMap::new();
        f.insert("pipeline name".to_string(), self.name.clone());
        for src in &self.sources {
            let input = match &src.input {
                SourceInput::Files(_) => "files".to_string(),
                SourceInput::Generator(g) => {
                    format!("generator {:?} seed {}", g.kind, g.seed)
                }
                SourceInput::Kafka(k) => format!("kafka topics {}", k.topics.join(", ")),
                SourceInput::Nats(n) => format!("nats stream {}", n.stream),
            };
            f.insert(format!("source {}", src.name), input);
            f.insert(
                format!("source {}: event time", src.name),
                format!(
                    "{}, max_out_of_orderness {} ms",
                    src.time_field, src.max_out_of_orderness_ms
                ),
            );
        }
        for w in &self.windows {
            let c = &w.config;
            f.insert(
                format!("window {}", c.name),
                window_definition(c, &self.sources[w.source].name),
            );
            f.insert(
                format!("window {}: aggregates", c.name),
                c.aggregates
                    .iter()
                    .map(aggregate_definition)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        for v in &self.views {
            let c = &v.config;
            f.insert(
                format!("view {}", c.name),
                view_definition(c, &self.sources[v.source].name),
            );
            f.insert(
                format!("view {}: aggregates", c.name),
                c.aggregates
                    .iter()
                    .map(aggregate_definition)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        for k in &self.sinks {
            let t = match &k.target {
                SinkTarget::File { path, format } => format!("{format:?} file {}", path.display()),
                SinkTarget::Kafka(k) => format!("kafka topic {}", k.topic),
                SinkTarget::Iceberg(t) => format!("iceberg table {}", t.table),
                SinkTarget::Elasticsearch(c) => format!("elasticsearch {}", c.urls.join(",")),
                // not the URL nor the headers: row ids do not depend on them, the URL may hold
                // credentials (fingerprints are stored in clear in every manifest), and a
                // moved endpoint must not force dropping the state
                SinkTarget::Webhook(t) => format!("webhook of {}", t.config.output),
                SinkTarget::Postgres(c) => format!("postgres table {}", c.table),
            };
            f.insert(format!("sink {}", k.name), t);
        }
        f.insert(
            "dead_letter".to_string(),
            match &self.dead_letter {
                DeadLetterTarget::File(p) => format!("file {}", p.display()),
                DeadLetterTarget::Kafka(k) => format!("kafka topic {}", k.topic),
            },
        );
        f
    }

    /// The pipeline as a small graph for the web console (`GET /console/state`): sources,
    /// windows and views (each with the source it reads and the sinks it writes), sinks, each
    /// with one line about it (no addresses, credentials or properties).
    pub fn console_graph(&self) -> weir_query::console::Graph {
        use weir_query::console::{Graph, GraphNode, GraphOperator};
        let file_name = |p: &std::path::Path| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        };
        let sources = self
            .sources
            .iter()
            .map(|s| {
                let (kind, detail) = match &s.input {
                    SourceInput::Files(f) => (
                        "file",
                        format!(
                            "{} file(s): {}",
                            f.len(),
                            f.iter()
                                .map(|p| file_name(p))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                    SourceInput::Generator(g) => (
                        "generator",
                        format!(
                            "{} events{}",
                            g.count.map_or("unbounded".to_string(), |c| c.to_string()),
                            if g.events_per_second > 0.0 {
                                format!(" at {}/s", g.events_per_second)
                            } else {
                                String::new()
                            }
                        ),
                    ),
                    SourceInput::Kafka(k) => ("kafka", format!("topics {}", k.topics.join(", "))),
                    SourceInput::Nats(n) => ("nats", crate::nats::source::describe(n)),
                };
                GraphNode {
                    name: s.name.clone(),
                    kind: kind.into(),
                    detail: redacted(&format!("{detail}; event time `{}`", s.time_field)),
                }
            })
            .collect();
        let sink_names = |ids: &[usize]| -> Vec<String> {
            ids.iter().map(|i| self.sinks[*i].name.clone()).collect()
        };
        let mut operators: Vec<GraphOperator> = self
            .windows
            .iter()
            .map(|w| GraphOperator {
                name: w.config.name.clone(),
                kind: "window".into(),
                detail: redacted(&window_definition(&w.config, &self.sources[w.source].name)),
                from: self.sources[w.source].name.clone(),
                sinks: sink_names(&w.sinks),
            })
            .collect();
        operators.extend(self.views.iter().map(|v| GraphOperator {
            name: v.config.name.clone(),
            kind: "view".into(),
            detail: redacted(&view_definition(&v.config, &self.sources[v.source].name)),
            from: self.sources[v.source].name.clone(),
            sinks: sink_names(&v.sinks),
        }));
        let sinks = self
            .sinks
            .iter()
            .map(|k| {
                let (kind, detail) = match &k.target {
                    SinkTarget::File { path, format } => (
                        "file",
                        format!("{format:?} file {}", file_name(path)).to_lowercase(),
                    ),
                    SinkTarget::Kafka(c) => ("kafka", format!("topic {}", c.topic)),
                    SinkTarget::Iceberg(t) => ("iceberg", format!("table {}", t.table)),
                    SinkTarget::Elasticsearch(_) => ("elasticsearch", "indices".to_string()),
                    SinkTarget::Webhook(_) => ("webhook", "signed HTTP requests".to_string()),
                    SinkTarget::Postgres(c) => ("postgres", format!("table {}", c.table)),
                };
                GraphNode {
                    name: k.name.clone(),
                    kind: kind.into(),
                    detail: redacted(&detail),
                }
            })
            .collect();
        Graph {
            sources,
            operators,
            sinks,
        }
    }

    /// A readable description of the plan, for `weir validate`.
    pub fn describe(&self, parallelism: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pipeline {} ({}), parallelism {parallelism}",
            self.name,
            self.file.display()
        );
        let _ = writeln!(s, "sources:");
        for src in &self.sources {
            let input = match &src.input {
                SourceInput::Files(f) => format!(
                    "file, {} partition(s): {}",
                    f.len(),
                    f.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                SourceInput::Generator(g) => format!(
                    "generator {} events{}, seed {}",
                    g.count.map_or("unbounded".to_string(), |c| c.to_string()),
                    if g.events_per_second > 0.0 {
                        format!(" at {}/s", g.events_per_second)
                    } else {
                        " as fast as possible".into()
                    },
                    g.seed
                ),
                SourceInput::Kafka(k) => format!(
                    "kafka {} topic(s) {}, group {}, start from {:?}",
                    k.brokers,
                    k.topics.join(", "),
                    k.group_id,
                    k.start_from
                )
                .replace("Committed", "committed")
                .replace("Earliest", "earliest")
                .replace("Latest", "latest"),
                SourceInput::Nats(n) => format!(
                    "nats {} {}",
                    n.endpoint.describe_servers(),
                    crate::nats::source::describe(n)
                ),
            };
            let _ = writeln!(s, "  {}: {input}", src.name);
            let _ = writeln!(
                s,
                "    schema {}, event time `{}`, max_out_of_orderness {} ms{}, max_future {} ms; reads {}",
                src.schema.name,
                src.time_field,
                src.max_out_of_orderness_ms,
                src.idle_timeout_ms
                    .map_or(String::new(), |i| format!(", idle_timeout {i} ms")),
                src.max_future_ms,
                src.columns.join(", ")
            );
        }
        let _ = writeln!(s, "windows:");
        for w in &self.windows {
            let c = &w.config;
            let _ = writeln!(
                s,
                "  {}: {}",
                c.name,
                window_definition(c, &self.sources[w.source].name)
            );
            if c.key_partitioned {
                let _ = writeln!(
                    s,
                    "    lateness per source partition (the source is partitioned by the key)"
                );
            }
            for a in &c.aggregates {
                let _ = writeln!(s, "    {}", aggregate_definition(a));
            }
            let _ = writeln!(
                s,
                "    sinks: {}",
                w.sinks
                    .iter()
                    .map(|i| self.sinks[*i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !self.views.is_empty() {
            let _ = writeln!(s, "views:");
        }
        for v in &self.views {
            let c = &v.config;
            let _ = writeln!(
                s,
                "  {}: {}",
                c.name,
                view_definition(c, &self.sources[v.source].name)
            );
            for a in c.visible() {
                let _ = writeln!(s, "    {}", aggregate_definition(a));
            }
            if let Some(ms) = c.retain_ms {
                let _ = writeln!(
                    s,
                    "    retain: {ms} ms (a key whose newest event is this much older than the watermark leaves the view)"
                );
            }
            if !v.sinks.is_empty() {
                let _ = writeln!(
                    s,
                    "    sinks: {} (changed keys as upserts at every snapshot, with op; expired keys as op = delete; every key as op = snapshot when a bounded run ends)",
                    v.sinks
                        .iter()
                        .map(|i| self.sinks[*i].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if self.serve.is_none() && v.sinks.is_empty() {
                let _ = writeln!(s, "    nothing reads it: add `serve` to query it with SQL");
            }
        }
        let _ = writeln!(s, "sinks:");
        let checkpointed = self.checkpoint.is_some();
        for k in &self.sinks {
            let t = match &k.target {
                SinkTarget::File { path, format } => {
                    let what = format!("{format:?} file {}", path.display()).to_lowercase();
                    match (checkpointed, format) {
                        (false, _) => format!("{what}; written when the run ends"),
                        (true, FileFormat::Parquet) => format!(
                            "{what}; exactly once: a folder of part files, one committed per checkpoint"
                        ),
                        (true, _) => {
                            format!("{what}; exactly once: grows by whole checkpoints")
                        }
                    }
                }
                SinkTarget::Kafka(k) => {
                    format!(
                        "kafka {} topic {}, {}",
                        k.brokers,
                        k.topic,
                        match &k.format {
                            KafkaFormat::Json => "json".to_string(),
                            KafkaFormat::Avro { registry: None } => "avro".to_string(),
                            KafkaFormat::Avro { registry: Some(r) } =>
                                format!("avro, registry {}", weir_kafka::redact_urls(r)),
                        }
                    ) + match (&k.delivery, checkpointed) {
                        (KafkaDelivery::ExactlyOnce { transactional_id }, _) => format!(
                            "; delivery exactly_once: one Kafka transaction per checkpoint \
                             (transactional id `{transactional_id}`), rows visible to \
                             read_committed readers once, after their checkpoint"
                        ),
                        (KafkaDelivery::Idempotent, true) => "; delivery idempotent: keyed by key + window_start, a row re-sent after a \
                     restore is byte-identical (a compacted topic or a key-deduplicating reader \
                     sees each window once)".to_string(),
                        (KafkaDelivery::Idempotent, false) => {
                            "; at least once: offsets are committed after rows are acknowledged".to_string()
                        }
                    }.as_str()
                }
                SinkTarget::Iceberg(t) => format!(
                    "iceberg table {} in catalog `{}` ({}), warehouse {}, partitioned by {}; {}",
                    t.table,
                    t.catalog_name,
                    t.catalog.display(),
                    t.warehouse,
                    match (&t.partition_by, t.view_keys) {
                        (Some(p), _) => format!("{p:?}").to_lowercase(),
                        (None, None) => "day(window_start)".into(),
                        (None, Some(_)) => "nothing".into(),
                    },
                    match (checkpointed, t.view_keys) {
                        (_, Some(_)) =>
                            "a view: each commit replaces the table with one row per key",
                        (true, None) => "exactly once: one snapshot per checkpoint",
                        (false, None) => "one snapshot when the run ends",
                    }
                ),
                SinkTarget::Elasticsearch(c) => format!(
                    "elasticsearch {} ({} nodes), index {:?}, {} docs or {} bytes per bulk request, {} at once{}; {}",
                    c.urls.join(", "),
                    c.urls.len(),
                    c.index,
                    c.bulk_max_docs,
                    c.bulk_max_bytes,
                    c.max_in_flight,
                    if c.auth.is_some() { ", authenticated" } else { "" },
                    if checkpointed {
                        "exactly-once effect: deterministic document ids, every row acknowledged before its checkpoint completes"
                    } else {
                        "deterministic document ids: a row sent again overwrites its document"
                    }
                ),
                SinkTarget::Webhook(t) => describe_webhook(t, checkpointed),
                SinkTarget::Postgres(c) => format!(
                    "postgres table {} on {}, {} rows or {} ms per batch (COPY into staging, then one merge); {}",
                    c.table,
                    weir_sinks::postgres::server(c),
                    c.batch_max_rows,
                    c.flush_interval.as_millis(),
                    match (checkpointed, c.view_keys) {
                        (true, _) => "exactly once: each checkpoint's rows and its epoch (weir_sink_epochs) commit in one transaction",
                        (false, Some(_)) => "at least once: upserts by key, deletes for expired keys",
                        (false, None) => "at least once: windows upserted by key and window_start",
                    }
                ),
            };
            let _ = writeln!(s, "  {}: {t}", k.name);
        }
        let _ = match &self.dead_letter {
            DeadLetterTarget::File(p) => writeln!(s, "dead letters: {}", p.display()),
            DeadLetterTarget::Kafka(k) => {
                writeln!(s, "dead letters: kafka {} topic {}", k.brokers, k.topic)
            }
        };
        let _ = match &self.checkpoint {
            Some(c) => writeln!(
                s,
                "checkpoints: {} every {} ms, keeping {}; a restart continues from the newest",
                c.location, c.interval_ms, c.keep
            ),
            None => writeln!(
                s,
                "checkpoints: off (a restart of a Kafka pipeline reads again from the committed offsets)"
            ),
        };
        let _ = match &self.serve {
            Some(sv) => {
                let mut on = Vec::new();
                if let Some(h) = &sv.http {
                    on.push(format!(
                        "http://{h} (POST /sql, /health, /metrics, the web console at /){}",
                        if sv.token.is_some() {
                            ", bearer token required"
                        } else {
                            ""
                        }
                    ));
                }
                if let Some(p) = &sv.postgres {
                    on.push(format!(
                        "postgres {p}{}",
                        if sv.password.is_some() {
                            ", password required"
                        } else {
                            ""
                        }
                    ));
                }
                let tables: Vec<&str> = self
                    .windows
                    .iter()
                    .map(|w| w.config.name.as_str())
                    .chain(self.views.iter().map(|v| v.config.name.as_str()))
                    .chain(["weir_status"])
                    .collect();
                writeln!(
                    s,
                    "SQL: {}; tables {}; a new snapshot every {} ms; {}",
                    on.join(", "),
                    tables.join(", "),
                    sv.refresh_ms,
                    crate::serve::describe(&sv.limits)
                )
            }
            None => writeln!(s, "SQL: off (add `serve` to query windows and views)"),
        };
        let _ = match &self.tracing {
            Some(t) => writeln!(
                s,
                "tracing: spans to {} as service `{}`, {}% of traces kept",
                t.endpoint,
                t.service_name,
                t.sample_ratio * 100.0
            ),
            None => writeln!(
                s,
                "tracing: logs only (add `tracing: {{ otlp: URL }}` to export spans)"
            ),
        };
        s.push_str(&crate::pool::describe(self));
        s
    }
}
