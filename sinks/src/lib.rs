//! weir's outputs: result rows to NDJSON, CSV or Parquet files and Kafka topics; dead letters to
//! NDJSON or Kafka.
//!
//! Files are written under `<path>.inprogress` and renamed into place when the run
//! finishes, so a reader never mistakes a half-written file for a result.

pub mod avro;
pub mod file;
pub mod kafka;

pub use file::{DeadLetterFile, FileFormat, FileSink};
pub use kafka::{DeadLetterKafka, KafkaFormat, KafkaSink, KafkaSinkConfig};
