//! Kafka plumbing shared by weir's Kafka source, sinks and generator: client settings with
//! user properties passed through, topic creation and partition counts, and a producer that
//! waits for every acknowledgement and reports the first delivery error instead of dropping.
//! The schema-registry client is a format concern and lives in `weir-formats`
//! (`weir_formats::registry`).

mod client;
mod producer;
mod ranges;

pub use client::{client_config, create_topic, partition_counts, KafkaError};
pub use producer::{committed_marker, Producer, TxnMarker};
pub use ranges::{offset_ranges, OffsetRange};
