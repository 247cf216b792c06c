//! weir's inputs: NDJSON files and the synthetic generator, with schema-driven decoders that
//! write straight into Arrow arrays. The Kafka source lives in `weir-kafka`, with the rest of
//! Kafka, and the NATS source in `weir-nats`, with the rest of NATS.

pub mod file;
pub mod generator;

pub use avro::{AvroDecoder, AvroType};
pub use file::{resolve_files, FileReader, FilesError};
pub use generator::{EventGenerator, GeneratorConfig, GeneratorReader, Kind};
pub use json::{BadLine, DecodedLines, JsonDecoder};
pub use message_columns::MessageColumn;
pub use registry::SchemaRegistry;
pub use schema::{FieldKind, SchemaField, SourceSchema};

pub use weir_formats::{avro, json, message_columns, registry, schema};
