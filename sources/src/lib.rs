//! weir's inputs: NDJSON files, Kafka topics and the synthetic generator, with schema-driven
//! decoders that write straight into Arrow arrays.

pub mod caught_up;
pub mod file;
pub mod generator;
pub mod kafka;
pub mod nats;
pub mod repartition;

pub use avro::{AvroDecoder, AvroType};
pub use caught_up::{NotCaughtUp, DEFAULT_CAUGHT_UP_TIMEOUT};
pub use file::{resolve_files, FileReader};
pub use generator::{EventGenerator, GeneratorConfig, GeneratorReader, Kind};
pub use json::{BadLine, DecodedLines, JsonDecoder};
pub use kafka::{
    ClaimedStart, KafkaPartitions, KafkaReader, KafkaSourceConfig, ReadOffsets, StartFrom, Upstream,
};
pub use message_columns::MessageColumn;
pub use nats::{NatsReader, NatsSourceConfig, NatsStartFrom};
pub use registry::SchemaRegistry;
pub use repartition::{RepartitionSpec, RepartitionStage};
pub use schema::{FieldKind, SchemaField, SourceSchema};

pub use weir_formats::{avro, json, message_columns, registry, schema};
