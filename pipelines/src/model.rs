//! The pipeline file as written: every section of `pipeline-spec.md`, unknown keys refused.
//!
//! This file holds the pipeline-level documents only. A connector's block (`kafka:`, `file:`,
//! `webhook:`...) is a type of its own folder, `connectors/<kind>/`; the fields of
//! [`SourceDoc`], [`SinkDoc`] and [`DeadLetterDoc`] that hold them are generated from the
//! registry's lists (`connectors::source_kinds!`, `sink_kinds!`, `dead_letter_kinds!`), so this
//! file names no connector (`tests/architecture.rs` checks it).
//!
//! A document without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A duration such as `500ms`, `5s`, `1m`, `2h`, `1d`, in milliseconds, at most
/// [`MAX_DURATION_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub u64);

/// The longest duration a pipeline file may give: 1,000,000 days (about 2,700 years). Window
/// arithmetic on event times (years 0000 to 9999) plus sizes, lateness and out-of-orderness
/// this long stays far inside 64 bits.
pub const MAX_DURATION_MS: u64 = 1_000_000 * 86_400_000;

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let ms = weir_engine::time::parse_duration_ms(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "bad duration `{text}`: write a whole number and a unit, one of ms, s, m, h, d (e.g. 500ms, 5s, 1m)"
            ))
        })?;
        if ms > MAX_DURATION_MS {
            return Err(serde::de::Error::custom(format!(
                "duration `{text}` is too long: at most 1000000d (about 2,700 years)"
            )));
        }
        Ok(Duration(ms))
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

/// A connector's block in a source, sink or dead-letter entry (`kafka: {...}`), with its
/// position in the file. Its JSON schema is the block's own: the model's fields for connector
/// blocks are generated from the registry's lists (`connectors::source_kinds!`...), and a
/// derive attribute could not name their types.
#[derive(Debug)]
pub struct Block<T>(pub Spanned<T>);

impl<T> std::ops::Deref for Block<T> {
    type Target = Spanned<T>;
    fn deref(&self) -> &Spanned<T> {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Block<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Spanned::<T>::deserialize(d).map(Block)
    }
}

impl<T: JsonSchema> JsonSchema for Block<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(schemas: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(schemas)
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

/// Generates [`SourceDoc`] with one field per source kind, from the registry's list
/// (`connectors::source_kinds!`).
macro_rules! source_doc {
    ([] $($(#[$about:meta])* $key:ident: $($kind:ident)::+, $($block:ident)::+;)*) => {
        /// One entry of `sources:`: exactly one connector block, its format, schema and event time.
        #[derive(Debug, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        #[schemars(description = "")]
        pub struct SourceDoc {
            $($(#[$about])* #[serde(default)] pub $key: Option<Block<crate::connectors::$($block)::+>>,)*
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
    };
}
crate::connectors::source_kinds!(source_doc);

/// `event_time:` of a source: the field and how out of order it may be.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
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

/// One entry of `windows:`: a keyed tumbling-window aggregation of one source.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
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

/// One entry of `views:`: a keyed aggregation without a window, always current.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
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

/// Generates [`SinkDoc`] with one field per kind, from the registry's list
/// (`connectors::sink_kinds!`).
macro_rules! sink_doc {
    ([] $($(#[$about:meta])* $key:ident: $($kind:ident)::+, $($block:ident)::+;)*) => {
        /// One entry of `sinks:`: exactly one connector block, with its format and retries.
        #[derive(Debug, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        #[schemars(description = "")]
        pub struct SinkDoc {
            $($(#[$about])* #[serde(default)] pub $key: Option<Block<crate::connectors::$($block)::+>>,)*
            /// Record format of Kafka and NATS sinks (default json).
            #[serde(default)]
            #[schemars(with = "Option<Format>")]
            pub format: Option<Spanned<Format>>,
            /// How failed writes are retried (see `weir_engine::retry`).
            #[serde(default)]
            #[schemars(with = "Option<RetryDoc>")]
            pub retry: Option<Spanned<RetryDoc>>,
        }
    };
}
crate::connectors::sink_kinds!(sink_doc);

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

/// Generates [`DeadLetterDoc`] with one field per kind, from the registry's list
/// (`connectors::dead_letter_kinds!`).
macro_rules! dead_letter_doc {
    ([] $($(#[$about:meta])* $key:ident: $($kind:ident)::+, $($block:ident)::+;)*) => {
        /// `dead_letter:`: one connector block and its retries.
        #[derive(Debug, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        #[schemars(description = "")]
        pub struct DeadLetterDoc {
            $($(#[$about])* #[serde(default)] pub $key: Option<Block<crate::connectors::$($block)::+>>,)*
            /// How failed dead-letter writes are retried.
            #[serde(default)]
            #[schemars(with = "Option<RetryDoc>")]
            pub retry: Option<Spanned<RetryDoc>>,
        }
    };
}
crate::connectors::dead_letter_kinds!(dead_letter_doc);

/// `checkpoint:`: where and how often offsets and state are saved.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
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

/// `serve:`: the SQL, metrics and health endpoints, and their limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
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
    /// Connections each endpoint (HTTP, Postgres) keeps open at once (default 256); one more
    /// is closed as it is accepted.
    #[serde(default)]
    pub max_connections: Option<u64>,
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
