//! weir's outputs: result rows to NDJSON, CSV or Parquet files and Kafka topics; dead letters to
//! NDJSON or Kafka.
//!
//! Without checkpoints, files are written under `<path>.inprogress` and renamed into place
//! when the run finishes, so a reader never mistakes a half-written file for a result. With
//! checkpoints, they are committed per checkpoint (see [`committed`]).

pub mod avro;
pub mod committed;
pub mod file;
pub mod kafka;

pub use file::{CommittedDeadLetterFile, CommittedFileSink, DeadLetterFile, FileFormat, FileSink};
pub use kafka::{DeadLetterKafka, KafkaFormat, KafkaSink, KafkaSinkConfig};
