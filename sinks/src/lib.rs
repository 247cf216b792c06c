//! weir's outputs: result rows to NDJSON, CSV or Parquet files, Elasticsearch indices,
//! PostgreSQL tables and signed webhooks; dead letters to NDJSON files. The Kafka sink and
//! dead-letter output live in `weir-kafka`, with the rest of Kafka, and the NATS ones in
//! `weir-nats`, with the rest of NATS.
//!
//! Without checkpoints, files are written under `<path>.inprogress` and renamed into place
//! when the run finishes, so a reader never mistakes a half-written file for a result. With
//! checkpoints, they are committed per checkpoint (see [`committed`]).

pub mod committed;
pub mod elasticsearch;
pub mod file;
pub mod postgres;
pub mod webhook;

pub use elasticsearch::{ElasticsearchConfig, ElasticsearchSink, EsAuth, EsOutput, IndexTemplate};
pub use file::{CommittedDeadLetterFile, CommittedFileSink, DeadLetterFile, FileFormat, FileSink};
pub use postgres::{PostgresConfig, PostgresSink, TlsMode};
pub use webhook::{WebhookConfig, WebhookMethod, WebhookSink};

pub use weir_formats::avro_encode as avro;
