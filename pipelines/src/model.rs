//! The pipeline file as written: every section of `pipeline-spec.md`, unknown keys refused.

use indexmap::IndexMap;
use schemars::JsonSchema;
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

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^\\s*[0-9]+(ms|s|m|h|d)\\s*$",
            "description": "A whole number and a unit: ms, s, m, h or d (500ms, 5s, 1m, 2h, 1d).",
            "examples": ["500ms", "5s", "1m"]
        })
    }
}

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineDoc {
    /// The pipeline's name: lowercase letters, digits, `_` and `-`; names its group ids, transactional ids and metrics.
    #[schemars(with = "String", extend("pattern" = "^[a-z0-9_-]+$"))]
    pub name: Spanned<String>,
    /// Worker threads (the command line's `--parallelism` overrides it).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub parallelism: Option<Spanned<u32>>,
    /// Inputs by name; each is also a SQL table of that name.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, SourceDoc>")]
    pub sources: IndexMap<String, Spanned<SourceDoc>>,
    /// Keyed tumbling-window aggregations by name.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, WindowDoc>")]
    pub windows: IndexMap<String, Spanned<WindowDoc>>,
    /// Materialized views by name: keyed aggregations without a window, always current.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, ViewDoc>")]
    pub views: IndexMap<String, Spanned<ViewDoc>>,
    /// Outputs by name, referred to by the `sinks` lists of windows and views.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, SinkDoc>")]
    pub sinks: IndexMap<String, Spanned<SinkDoc>>,
    /// Where bad and late records go, with their error (default: `dead_letter.ndjson` beside the
    /// pipeline file).
    #[serde(default)]
    #[schemars(with = "Option<DeadLetterDoc>")]
    pub dead_letter: Option<Spanned<DeadLetterDoc>>,
    /// Periodic checkpoints of offsets and state: exactly-once outputs across restarts.
    #[serde(default)]
    #[schemars(with = "Option<CheckpointDoc>")]
    pub checkpoint: Option<Spanned<CheckpointDoc>>,
    /// SQL over HTTP and the Postgres wire protocol, `/metrics`, `/health`, `/ready`; absent = off.
    #[serde(default)]
    #[schemars(with = "Option<ServeDoc>")]
    pub serve: Option<Spanned<ServeDoc>>,
    /// Span export to an OpenTelemetry collector.
    #[serde(default)]
    #[schemars(with = "Option<TracingDoc>")]
    pub tracing: Option<Spanned<TracingDoc>>,
}

/// `tracing:`: spans exported over OTLP/HTTP.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingDoc {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans go to `/v1/traces`.
    #[schemars(with = "String")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Avro,
    Cloudevents,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceDoc {
    /// Read Kafka topics.
    #[serde(default)]
    #[schemars(with = "Option<KafkaSourceDoc>")]
    pub kafka: Option<Spanned<KafkaSourceDoc>>,
    /// Read a NATS JetStream stream (a durable pull consumer).
    #[serde(default)]
    #[schemars(with = "Option<NatsSourceDoc>")]
    pub nats: Option<Spanned<NatsSourceDoc>>,
    /// Read NDJSON files (a file, a folder or a glob; one partition per file).
    #[serde(default)]
    #[schemars(with = "Option<FileSourceDoc>")]
    pub file: Option<Spanned<FileSourceDoc>>,
    /// Synthetic events from the built-in generator.
    #[serde(default)]
    #[schemars(with = "Option<GeneratorDoc>")]
    pub generator: Option<Spanned<GeneratorDoc>>,
    /// Record format (default json).
    #[serde(default)]
    #[schemars(with = "Option<Format>")]
    pub format: Option<Spanned<Format>>,
    /// `data-ingestion`, `service-health`, or the path of an Avro schema (`.avsc`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub schema: Option<Spanned<String>>,
    /// Where event time comes from and how out of order it may be.
    #[serde(default)]
    #[schemars(with = "Option<EventTimeDoc>")]
    pub event_time: Option<Spanned<EventTimeDoc>>,
    /// Fields the source is already partitioned by (for the worker pool).
    #[serde(default)]
    pub partitioned_by: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceDoc {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// One topic or a list of topics.
    pub topic: OneOrMany<String>,
    /// Consumer group id (default `weir-<pipeline>`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a group without committed offsets starts: `committed` (default), `earliest`, `latest` or an RFC 3339 time.
    #[serde(default)]
    pub start_from: Option<String>,
    /// librdkafka settings passed as they are (`security.protocol`, `sasl.*`, ...).
    #[serde(default)]
    pub properties: IndexMap<String, String>,
    /// Confluent schema registry URL for `format: avro` with the wire-format header.
    #[serde(default)]
    pub schema_registry: Option<String>,
    /// Bounds on what one Avro record may decode to (`format: avro`).
    #[serde(default)]
    pub avro_limits: Option<AvroLimitsDoc>,
}

/// `nats:` of a source: a JetStream stream read by a durable pull consumer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceDoc {
    /// One server URL or a list (`nats://host:4222`, `tls://host:4222`).
    pub url: OneOrMany<String>,
    /// The JetStream stream.
    pub stream: String,
    /// Subject filters, wildcards allowed (default: every subject of the stream).
    #[serde(default)]
    pub subjects: Option<OneOrMany<String>>,
    /// Read the stream as subject partitions, one filtered durable consumer each (for
    /// parallelism and worker pools).
    #[serde(default)]
    #[schemars(with = "Option<NatsPartitionsDoc>")]
    pub partitions: Option<Spanned<NatsPartitionsDoc>>,
    /// The durable consumer's name (default `weir-<pipeline>-<source>`), created when missing.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Where a new consumer starts: `earliest` (default), `latest`, an RFC 3339 time or a stream sequence.
    #[serde(default)]
    pub start_from: Option<String>,
    /// How long the server waits for an acknowledgement before delivering again (default 5m).
    #[serde(default)]
    pub ack_wait: Option<Duration>,
    /// Unacknowledged messages after which the server stops delivering (default 1,000,000).
    #[serde(default)]
    pub max_ack_pending: Option<u64>,
    /// Messages one pull request asks for (default 1000).
    #[serde(default)]
    pub fetch_batch: Option<u64>,
    /// Credentials (one way: user/password, token, creds file or NKey seed).
    #[serde(default)]
    pub credentials: Option<NatsCredentialsDoc>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<NatsTlsDoc>,
    /// Bounds on what one Avro record may decode to (`format: avro`).
    #[serde(default)]
    pub avro_limits: Option<AvroLimitsDoc>,
}

/// `partitions: { count, subject }` of a NATS source: a stream whose subjects carry a
/// partition number in one token.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsPartitionsDoc {
    /// How many partitions (1 to 1024), numbered from 0.
    pub count: u32,
    /// The subject filter of one partition, `{partition}` standing for its number as a
    /// whole token (`events.{partition}.>`).
    pub subject: String,
}

/// `avro_limits: { max_record_bytes, max_items }` of a Kafka source (defaults 16 MiB of JSON
/// and 1,000,000 array items and map entries per record).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroLimitsDoc {
    /// Largest decoded record, in bytes of JSON (default 16 MiB).
    #[serde(default)]
    pub max_record_bytes: Option<u64>,
    /// Most array items and map entries in one record (default 1,000,000).
    #[serde(default)]
    pub max_items: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceDoc {
    /// A file, a folder or a glob, relative to the pipeline file.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
}

/// The generator's event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    DataIngestion,
    ServiceHealth,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorDoc {
    /// Which events: `data-ingestion` or `service-health`.
    pub kind: GeneratorKind,
    /// Events to produce; absent = until stopped.
    #[serde(default)]
    pub count: Option<u64>,
    /// Rate; 0 (the default) is as fast as possible.
    #[serde(default)]
    pub events_per_second: Option<f64>,
    /// Random seed: the same seed gives the same events.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Distinct datasetName/serviceName values.
    #[serde(default)]
    pub keys: Option<usize>,
    /// Zipf exponent of key popularity (0 = uniform).
    #[serde(default)]
    pub skew: Option<f64>,
    /// Event time of the first event, epoch ms.
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// Mean event-time advance per event, in ms.
    #[serde(default)]
    pub step_ms: Option<f64>,
    /// Fraction of events out of order by up to `jitter_ms`.
    #[serde(default)]
    pub jitter_frac: Option<f64>,
    /// How far out of order jittered events are, in ms.
    #[serde(default)]
    pub jitter_ms: Option<i64>,
    /// Fraction of very late events.
    #[serde(default)]
    pub late_frac: Option<f64>,
    /// How far behind the newest event time late events are, in ms.
    #[serde(default)]
    pub late_ms: Option<i64>,
    /// Include non-ASCII, quoted and empty keys.
    #[serde(default)]
    pub unicode_keys: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeDoc {
    /// The event-time field: epoch milliseconds or an RFC 3339 string.
    #[schemars(with = "String")]
    pub field: Spanned<String>,
    /// How far behind the newest event time an event may arrive and still count (default 0s); the watermark trails by this much.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeDoc {
    Event,
    Processing,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowDoc {
    /// The source it reads.
    #[schemars(with = "String")]
    pub from: Spanned<String>,
    /// A SQL predicate applied before windowing.
    #[serde(default, rename = "where")]
    #[schemars(with = "Option<String>")]
    pub filter: Option<Spanned<String>>,
    /// Key columns (source fields).
    #[schemars(with = "Vec<String>")]
    pub key: Spanned<Vec<Spanned<String>>>,
    /// Window size; windows are aligned to the Unix epoch.
    #[schemars(with = "Duration")]
    pub tumbling: Spanned<Duration>,
    /// How long after the watermark passes a window's end it still accepts events (default 0s).
    #[serde(default)]
    pub allowed_lateness: Option<Duration>,
    /// `event` (default) or `processing` time.
    #[serde(default)]
    pub time: Option<TimeDoc>,
    /// Output column name to SQL aggregate expression, in output order.
    #[schemars(with = "IndexMap<String, String>")]
    pub aggregates: Spanned<IndexMap<String, Spanned<String>>>,
    /// How long emitted windows stay queryable with SQL.
    #[serde(default)]
    pub retain: Option<Duration>,
    /// Names of the sinks that receive the emitted windows.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub sinks: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewDoc {
    /// The source it reads.
    #[schemars(with = "String")]
    pub from: Spanned<String>,
    /// A SQL predicate applied before aggregating.
    #[serde(default, rename = "where")]
    #[schemars(with = "Option<String>")]
    pub filter: Option<Spanned<String>>,
    /// Key columns (source fields).
    #[schemars(with = "Vec<String>")]
    pub key: Spanned<Vec<Spanned<String>>>,
    /// Output column name to SQL aggregate expression, in output order.
    #[schemars(with = "IndexMap<String, String>")]
    pub aggregates: Spanned<IndexMap<String, Spanned<String>>>,
    /// Keys not updated for this long are removed (a `delete` to the sinks).
    #[serde(default)]
    pub retain: Option<Duration>,
    /// Names of the sinks that receive the view's changes (upserts by key).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub sinks: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkDoc {
    /// Write to a Kafka topic.
    #[serde(default)]
    #[schemars(with = "Option<KafkaSinkDoc>")]
    pub kafka: Option<Spanned<KafkaSinkDoc>>,
    /// Write an Iceberg table.
    #[serde(default)]
    #[schemars(with = "Option<IcebergDoc>")]
    pub iceberg: Option<Spanned<IcebergDoc>>,
    /// Index into Elasticsearch.
    #[serde(default)]
    #[schemars(with = "Option<ElasticsearchDoc>")]
    pub elasticsearch: Option<Spanned<ElasticsearchDoc>>,
    /// Send rows to an HTTP endpoint as signed webhooks (Standard Webhooks).
    #[serde(default)]
    #[schemars(with = "Option<WebhookDoc>")]
    pub webhook: Option<Spanned<WebhookDoc>>,
    /// Upsert into a PostgreSQL table.
    #[serde(default)]
    #[schemars(with = "Option<PostgresDoc>")]
    pub postgres: Option<Spanned<PostgresDoc>>,
    /// Publish to a NATS JetStream subject.
    #[serde(default)]
    #[schemars(with = "Option<crate::connectors::nats::sink::NatsSinkDoc>")]
    pub nats: Option<Spanned<crate::connectors::nats::sink::NatsSinkDoc>>,
    /// Write a file: `.ndjson`, `.csv` or `.parquet` by extension.
    #[serde(default)]
    #[schemars(with = "Option<FileSinkDoc>")]
    pub file: Option<Spanned<FileSinkDoc>>,
    /// Record format of Kafka and NATS sinks (default json).
    #[serde(default)]
    #[schemars(with = "Option<Format>")]
    pub format: Option<Spanned<Format>>,
    /// How failed writes are retried (see `weir_engine::retry`).
    #[serde(default)]
    #[schemars(with = "Option<RetryDoc>")]
    pub retry: Option<Spanned<RetryDoc>>,
}

/// `retry:` of a sink or the dead-letter output.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    /// First wait after a failure (default 1s).
    #[serde(default)]
    pub initial_backoff: Option<Duration>,
    /// Longest wait between attempts (default 16s).
    #[serde(default)]
    pub max_backoff: Option<Duration>,
    /// Growth of the wait per attempt (default 2).
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Random share of each wait, 0 to 1.
    #[serde(default)]
    pub jitter: Option<f64>,
    /// Retries of one call before the run fails; absent = until the output comes back.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Stop calling a failing output for a while after repeated failures.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerDoc>,
}

/// `retry.circuit_breaker:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerDoc {
    /// Consecutive failures that open the circuit.
    #[serde(default)]
    pub failures: Option<u32>,
    /// How long it stays open before a probe.
    #[serde(default)]
    pub open_for: Option<Duration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkDoc {
    /// Bootstrap servers (default: the first Kafka source's, else `127.0.0.1:9092`).
    #[serde(default)]
    pub brokers: Option<String>,
    /// The topic written.
    pub topic: String,
    /// librdkafka settings passed as they are.
    #[serde(default)]
    pub properties: IndexMap<String, String>,
    /// `idempotent` (the default) or `exactly_once` (Kafka transactions; needs checkpoints).
    /// Sinks only: a dead-letter topic is always written idempotently.
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IcebergDoc {
    /// `sqlite://PATH`, `postgres://…` or `http(s)://…` (REST).
    pub catalog: String,
    /// The catalog's name (default `weir`); readers open the catalog under the same name.
    #[serde(default)]
    pub catalog_name: Option<String>,
    /// Where data files go: a folder or `s3://bucket/prefix`.
    pub warehouse: String,
    /// `NAMESPACE.TABLE`.
    pub table: String,
    /// `day` (the default for windows: `day(window_start)`), `hour`, `day(COL)`, `hour(COL)`,
    /// `identity(COL)`, a column, or `none`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub partition_by: Option<Spanned<String>>,
    /// Data files roll over at about this size (default 128 MiB).
    #[serde(default)]
    pub target_file_size_mb: Option<u64>,
    /// Catalog properties as they are (REST credentials, a prefix...).
    #[serde(default)]
    pub properties: IndexMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchDoc {
    /// One node URL or a list of them.
    pub url: OneOrMany<String>,
    /// Index name; `{output}` and `{pipeline}` are replaced.
    pub index: String,
    /// API key credentials.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// Bearer token credentials.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// PEM file of the CA that signed the cluster's certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Documents per bulk request (default 1000).
    #[serde(default)]
    pub bulk_max_docs: Option<u64>,
    /// Bytes per bulk request (default 5 MiB).
    #[serde(default)]
    pub bulk_max_bytes: Option<u64>,
    /// Longest a document waits before its bulk request is sent.
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    /// The bulk API's `refresh` parameter (`true`, `false`, `wait_for`).
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    /// The endpoint: an http(s) URL; `{pipeline}`, `{output}` and `{KEY_COLUMN}` are replaced
    /// (percent-encoded), so rows go to the URL of their key.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// The signing secret, `whsec_<base64>` (from `${ENV}`); a list of two while rotating.
    #[schemars(with = "OneOrMany<String>")]
    pub secret: Spanned<OneOrMany<String>>,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra request headers; values may come from `${ENV}`.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// `array` (default: a JSON array of rows a request) or `single` (one row a request).
    #[serde(default)]
    pub batch: Option<String>,
    /// Rows per request (default 100; 1 = one row a request, still in an array).
    #[serde(default)]
    pub batch_max_rows: Option<u64>,
    /// Bytes per request body, about (default 1 MiB).
    #[serde(default)]
    pub batch_max_bytes: Option<u64>,
    /// `json` (default), `cloudevents_structured` or `cloudevents_binary` (CloudEvents 1.0).
    #[serde(default)]
    pub body: Option<String>,
    /// One request's time limit (default 10s).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Requests sent at once (default 4).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// Longest a row waits before its request is sent (default 1s).
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    /// Only output rows that match this SQL predicate are sent (e.g. `failures > 10`).
    #[serde(default, rename = "where")]
    #[schemars(with = "Option<String>")]
    pub filter: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresDoc {
    /// `postgres://user:${PGPASSWORD}@host:5432/database` (libpq parameters such as
    /// `sslmode` accepted).
    pub url: String,
    /// `schema.table` (`public` when no schema is given); created on first use.
    pub table: String,
    /// `disable`, `require` or `verify-full` (default: the URL's `sslmode`, else `prefer`).
    #[serde(default)]
    pub tls: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Rows per batch (default 50000).
    #[serde(default)]
    pub batch_max_rows: Option<u64>,
    /// Longest a row waits before its batch is sent (default 1s).
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    /// How long a statement may stay unanswered (connecting, staging, merging) before the
    /// batch is retried on a new connection (default 30s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkDoc {
    /// The output file, relative to the pipeline file; the extension picks the format.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterDoc {
    /// Write dead letters to an NDJSON file.
    #[serde(default)]
    #[schemars(with = "Option<FileSinkDoc>")]
    pub file: Option<Spanned<FileSinkDoc>>,
    /// Write dead letters to a Kafka topic.
    #[serde(default)]
    #[schemars(with = "Option<KafkaSinkDoc>")]
    pub kafka: Option<Spanned<KafkaSinkDoc>>,
    /// Publish dead letters to a NATS JetStream subject.
    #[serde(default)]
    #[schemars(with = "Option<crate::connectors::nats::sink::NatsSinkDoc>")]
    pub nats: Option<Spanned<crate::connectors::nats::sink::NatsSinkDoc>>,
    /// How failed dead-letter writes are retried.
    #[serde(default)]
    #[schemars(with = "Option<RetryDoc>")]
    pub retry: Option<Spanned<RetryDoc>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointDoc {
    /// A folder, or `s3://bucket/prefix` for a pool on several machines.
    pub dir: String,
    /// Time between checkpoints.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Complete checkpoints kept (default 3).
    #[serde(default)]
    pub keep: Option<usize>,
    /// Also start a checkpoint as soon as windows were emitted to sinks (default false), so
    /// exactly-once sinks commit them without waiting for the interval.
    #[serde(default)]
    pub after_windows: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeDoc {
    /// HTTP address (`127.0.0.1:8080`): `/sql`, `/metrics`, `/health`, `/ready`.
    #[serde(default)]
    pub http: Option<String>,
    /// Postgres wire protocol address (`127.0.0.1:5433`).
    #[serde(default)]
    pub postgres: Option<String>,
    /// Password required on the Postgres endpoint (required off loopback).
    #[serde(default)]
    pub password: Option<String>,
    /// Bearer token required on HTTP `/sql` (required off loopback).
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
    /// Most operators one statement may hold (default 2,000).
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
    /// Live subscriptions (`GET /subscribe`) open at once, in all (default 1,000).
    #[serde(default)]
    pub max_subscriptions: Option<u64>,
    /// Subscriptions open at once with the token, or from one client address when no token is set (default 1,000).
    #[serde(default)]
    pub max_subscriptions_per_token: Option<u64>,
    /// Changes of earlier snapshots a subscriber may leave unread before it is dropped (default 10,000).
    #[serde(default)]
    pub subscription_buffer: Option<u64>,
    /// Changes kept per table for subscribers and resumes with `from` (default 100,000).
    #[serde(default)]
    pub subscription_retain: Option<u64>,
    /// MiB of changes kept per table (default 64).
    #[serde(default)]
    pub subscription_retain_mb: Option<u64>,
}

/// `credentials:` of a NATS source or sink: at most one way to authenticate (values may come
/// from `${ENV}`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsCredentialsDoc {
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (with `user`).
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (user JWT and NKey seed), relative to the pipeline file.
    #[serde(default)]
    pub creds_file: Option<String>,
    /// An NKey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed: Option<String>,
}

/// `tls:` of a NATS source or sink.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsDoc {
    /// Refuse to connect without TLS (default false: TLS when the server asks or a URL is `tls://`).
    #[serde(default)]
    pub required: Option<bool>,
    /// PEM file of certificate authorities to trust, relative to the pipeline file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate (with `key_file`), for servers that verify clients.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
}
