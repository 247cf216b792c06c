//! Kafka plumbing shared by weir's Kafka source, sinks and generator: client settings with
//! user properties passed through, topic creation and partition counts, and a producer that
//! waits for every acknowledgement and reports the first delivery error instead of dropping,
//! and a schema-registry client.

mod client;
mod producer;
mod ranges;
mod registry;

pub use client::{client_config, create_topic, partition_counts, KafkaError};
pub use producer::{committed_marker, Producer, TxnMarker};
pub use ranges::{offset_ranges, OffsetRange};
pub use registry::{redact_url, redact_urls, RegistryClient, RegistryError};
