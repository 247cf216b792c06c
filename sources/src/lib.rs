//! weir's inputs: NDJSON files, NATS JetStream streams and the synthetic generator, with
//! schema-driven decoders that write straight into Arrow arrays. The Kafka source lives in
//! `weir-kafka`, with the rest of Kafka.

pub mod file;
pub mod generator;
pub mod nats;

pub use avro::{AvroDecoder, AvroType};
pub use file::{resolve_files, FileReader, FilesError};
pub use generator::{EventGenerator, GeneratorConfig, GeneratorReader, Kind};
pub use json::{BadLine, DecodedLines, JsonDecoder};
pub use message_columns::MessageColumn;
pub use nats::{NatsReader, NatsSourceConfig, NatsStartFrom};
pub use registry::SchemaRegistry;
pub use schema::{FieldKind, SchemaField, SourceSchema};

pub use weir_formats::{avro, json, message_columns, registry, schema};
