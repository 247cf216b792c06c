//! The pipeline file as written: every section of `pipeline-spec.md`, unknown keys refused.

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A duration such as `500ms`, `5s`, `1m`, `2h`, `1d`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub u64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        weir_engine::time::parse_duration_ms(&text).map(Duration).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "bad duration `{text}`: write a whole number and a unit, one of ms, s, m, h, d (e.g. 500ms, 5s, 1m)"
            ))
        })
    }
}

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The values, one or many.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v).iter(),
            OneOrMany::Many(v) => v.iter(),
        }
    }
}

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDoc {
    pub name: Spanned<String>,
    /// Worker threads (the command line's `--parallelism` overrides it).
    #[serde(default)]
    pub parallelism: Option<Spanned<u32>>,
    #[serde(default)]
    pub sources: IndexMap<String, Spanned<SourceDoc>>,
    #[serde(default)]
    pub windows: IndexMap<String, Spanned<WindowDoc>>,
    #[serde(default)]
    pub views: IndexMap<String, Spanned<ViewDoc>>,
    #[serde(default)]
    pub sinks: IndexMap<String, Spanned<SinkDoc>>,
    #[serde(default)]
    pub dead_letter: Option<Spanned<DeadLetterDoc>>,
    #[serde(default)]
    pub checkpoint: Option<Spanned<CheckpointDoc>>,
    #[serde(default)]
    pub serve: Option<Spanned<ServeDoc>>,
    /// Span export to an OpenTelemetry collector.
    #[serde(default)]
    pub tracing: Option<Spanned<TracingDoc>>,
}

/// `tracing:`: spans exported over OTLP/HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingDoc {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to `/v1/traces`.
    pub otlp: Spanned<String>,
    /// `service.name` of the spans (default `weir`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of traces kept, 0 to 1 (default 1).
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// HTTP headers of the export requests (a collector's credentials).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
}

/// Record formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Avro,
    Cloudevents,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDoc {
    #[serde(default)]
    pub kafka: Option<Spanned<KafkaSourceDoc>>,
    #[serde(default)]
    pub file: Option<Spanned<FileSourceDoc>>,
    #[serde(default)]
    pub generator: Option<Spanned<GeneratorDoc>>,
    #[serde(default)]
    pub format: Option<Spanned<Format>>,
    #[serde(default)]
    pub schema: Option<Spanned<String>>,
    #[serde(default)]
    pub event_time: Option<Spanned<EventTimeDoc>>,
    /// Fields the source is already partitioned by (for the worker pool).
    #[serde(default)]
    pub partitioned_by: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceDoc {
    pub brokers: String,
    pub topic: OneOrMany<String>,
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub start_from: Option<String>,
    #[serde(default)]
    pub properties: IndexMap<String, String>,
    #[serde(default)]
    pub schema_registry: Option<String>,
    /// Bounds on what one Avro record may decode to (`format: avro`).
    #[serde(default)]
    pub avro_limits: Option<AvroLimitsDoc>,
}

/// `avro_limits: { max_record_bytes, max_items }` of a Kafka source (defaults 16 MiB of JSON
/// and 1,000,000 array items and map entries per record).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvroLimitsDoc {
    #[serde(default)]
    pub max_record_bytes: Option<u64>,
    #[serde(default)]
    pub max_items: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceDoc {
    pub path: Spanned<String>,
}

/// The generator's event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    DataIngestion,
    ServiceHealth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorDoc {
    pub kind: GeneratorKind,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub events_per_second: Option<f64>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub keys: Option<usize>,
    #[serde(default)]
    pub skew: Option<f64>,
    #[serde(default)]
    pub start_ms: Option<i64>,
    #[serde(default)]
    pub step_ms: Option<f64>,
    #[serde(default)]
    pub jitter_frac: Option<f64>,
    #[serde(default)]
    pub jitter_ms: Option<i64>,
    #[serde(default)]
    pub late_frac: Option<f64>,
    #[serde(default)]
    pub late_ms: Option<i64>,
    #[serde(default)]
    pub unicode_keys: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeDoc {
    pub field: Spanned<String>,
    #[serde(default)]
    pub max_out_of_orderness: Option<Duration>,
    /// A partition silent this long stops holding the watermark back (Kafka default 1m).
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// Rows whose event time is more than this ahead of the wall clock are dead-lettered
    /// (`future_event_time`) and never move a watermark (default 1h).
    #[serde(default)]
    pub max_future: Option<Duration>,
}

/// Which clock a window follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeDoc {
    Event,
    Processing,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowDoc {
    pub from: Spanned<String>,
    #[serde(default, rename = "where")]
    pub filter: Option<Spanned<String>>,
    pub key: Spanned<Vec<Spanned<String>>>,
    pub tumbling: Spanned<Duration>,
    #[serde(default)]
    pub allowed_lateness: Option<Duration>,
    #[serde(default)]
    pub time: Option<TimeDoc>,
    pub aggregates: Spanned<IndexMap<String, Spanned<String>>>,
    #[serde(default)]
    pub retain: Option<Duration>,
    #[serde(default)]
    pub sinks: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewDoc {
    pub from: Spanned<String>,
    #[serde(default, rename = "where")]
    pub filter: Option<Spanned<String>>,
    pub key: Spanned<Vec<Spanned<String>>>,
    pub aggregates: Spanned<IndexMap<String, Spanned<String>>>,
    #[serde(default)]
    pub retain: Option<Duration>,
    #[serde(default)]
    pub sinks: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkDoc {
    #[serde(default)]
    pub kafka: Option<Spanned<KafkaSinkDoc>>,
    #[serde(default)]
    pub iceberg: Option<Spanned<IcebergDoc>>,
    #[serde(default)]
    pub elasticsearch: Option<Spanned<ElasticsearchDoc>>,
    #[serde(default)]
    pub file: Option<Spanned<FileSinkDoc>>,
    #[serde(default)]
    pub format: Option<Spanned<Format>>,
    /// How failed writes are retried (see `weir_engine::retry`).
    #[serde(default)]
    pub retry: Option<Spanned<RetryDoc>>,
}

/// `retry:` of a sink or the dead-letter output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    #[serde(default)]
    pub initial_backoff: Option<Duration>,
    #[serde(default)]
    pub max_backoff: Option<Duration>,
    #[serde(default)]
    pub multiplier: Option<f64>,
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Retries of one call before the run fails; absent = until the output comes back.
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerDoc>,
}

/// `retry.circuit_breaker:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerDoc {
    /// Consecutive failures that open the circuit.
    #[serde(default)]
    pub failures: Option<u32>,
    /// How long it stays open before a probe.
    #[serde(default)]
    pub open_for: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkDoc {
    #[serde(default)]
    pub brokers: Option<String>,
    pub topic: String,
    #[serde(default)]
    pub properties: IndexMap<String, String>,
    /// `idempotent` (the default) or `exactly_once` (Kafka transactions; needs checkpoints).
    #[serde(default)]
    pub delivery: Option<String>,
    /// The transactional id of `exactly_once` (default `<pipeline>.<sink>`): unique per
    /// running sink, the same across its restarts.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Schema registry of `format: avro` (Confluent wire format); plain Avro without it.
    #[serde(default)]
    pub schema_registry: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergDoc {
    /// `sqlite://PATH`, `postgres://…` or `http(s)://…` (REST).
    pub catalog: String,
    /// The catalog's name (default `weir`); readers open the catalog under the same name.
    #[serde(default)]
    pub catalog_name: Option<String>,
    pub warehouse: String,
    /// `NAMESPACE.TABLE`.
    pub table: String,
    /// `day` (the default for windows: `day(window_start)`), `hour`, `day(COL)`, `hour(COL)`,
    /// `identity(COL)`, a column, or `none`.
    #[serde(default)]
    pub partition_by: Option<Spanned<String>>,
    /// Data files roll over at about this size (default 128 MiB).
    #[serde(default)]
    pub target_file_size_mb: Option<u64>,
    /// Catalog properties as they are (REST credentials, a prefix...).
    #[serde(default)]
    pub properties: IndexMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchDoc {
    pub url: OneOrMany<String>,
    pub index: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub bulk_max_docs: Option<u64>,
    #[serde(default)]
    pub bulk_max_bytes: Option<u64>,
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    #[serde(default)]
    pub refresh: Option<String>,
    /// A JSON file with an index template body (`index_patterns`, `template`), installed at
    /// start instead of the mapping weir derives.
    #[serde(default)]
    pub index_template: Option<String>,
    /// Bulk requests sent at once (default 2).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// gzip request bodies (default true).
    #[serde(default)]
    pub compression: Option<bool>,
    /// One request's time limit (default 30s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkDoc {
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterDoc {
    #[serde(default)]
    pub file: Option<Spanned<FileSinkDoc>>,
    #[serde(default)]
    pub kafka: Option<Spanned<KafkaSinkDoc>>,
    #[serde(default)]
    pub retry: Option<Spanned<RetryDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointDoc {
    pub dir: String,
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Complete checkpoints kept (default 3).
    #[serde(default)]
    pub keep: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeDoc {
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub postgres: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// How often SQL readers get a new snapshot (default 1s).
    #[serde(default)]
    pub refresh: Option<Duration>,
    /// A query running longer is cancelled (default 30s).
    #[serde(default)]
    pub query_timeout: Option<Duration>,
    /// Queries running at once (default 16).
    #[serde(default)]
    pub max_queries: Option<u64>,
    /// Memory one query may use, in MiB (default 512).
    #[serde(default)]
    pub query_memory_mb: Option<u64>,
    /// Longest SQL text, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_sql_bytes: Option<u64>,
    /// Most operators one statement may hold (default 10,000).
    #[serde(default)]
    pub max_sql_terms: Option<u64>,
    /// Most rows one result may have (default 1,000,000).
    #[serde(default)]
    pub max_result_rows: Option<u64>,
    /// Largest result, in MiB (default 64).
    #[serde(default)]
    pub max_result_mb: Option<u64>,
    /// Folder where queries may spill (default: none, spilling off).
    #[serde(default)]
    pub spill_dir: Option<String>,
    /// Most MiB of spill files at once (default 1024).
    #[serde(default)]
    pub spill_max_mb: Option<u64>,
    /// Failed logins an address may make before it must wait (default 5).
    #[serde(default)]
    pub max_failed_logins: Option<u64>,
    /// Longest wait after repeated failed logins (default 60s).
    #[serde(default)]
    pub login_lockout: Option<Duration>,
}
