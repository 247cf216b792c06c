//! The YAML blocks of Kafka: `kafka:` of a source, and of a sink or `dead_letter`.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::connectors::AvroLimitsDoc;
use crate::model::OneOrMany;

/// `kafka:` of a source: topics read in a consumer group.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct KafkaSourceDoc {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// One topic or a list of topics.
    #[schemars(with = "OneOrMany<String>")]
    pub topic: Spanned<OneOrMany<String>>,
    /// Consumer group id (default `weir-<pipeline>`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a group without committed offsets starts: `committed` (default), `earliest`, `latest` or an RFC 3339 time.
    #[serde(default)]
    pub start_from: Option<String>,
    /// librdkafka settings passed as they are (`security.protocol`, `sasl.*`, ...), except those weir manages: `group.id` (use `group_id`), `enable.auto.commit` other than false, `auto.offset.reset` other than earliest or latest.
    #[serde(default)]
    pub properties: IndexMap<String, String>,
    /// Confluent schema registry URL for `format: avro` with the wire-format header.
    #[serde(default)]
    pub schema_registry: Option<String>,
    /// Bounds on what one Avro record may decode to (`format: avro`).
    #[serde(default)]
    pub avro_limits: Option<AvroLimitsDoc>,
    /// In a worker pool that repartitions the topic: messages of the internal topic the pool's jobs may have left to checkpoint before the repartition stage pauses reading the topic (default 10,000,000).
    #[serde(default)]
    pub repartition_max_backlog: Option<u64>,
}

/// `kafka:` of a sink or of `dead_letter`: one topic written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct KafkaSinkDoc {
    /// Bootstrap servers (default: the first Kafka source's, else `127.0.0.1:9092`).
    #[serde(default)]
    pub brokers: Option<String>,
    /// The topic written.
    pub topic: String,
    /// librdkafka settings passed as they are, except `transactional.id` (see `delivery`).
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
