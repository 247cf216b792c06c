//! Kafka plumbing shared by weir's Kafka source, sinks and generator: client settings with
//! user properties passed through, topic creation and partition counts, and a producer that
//! waits for every acknowledgement and reports the first delivery error instead of dropping.

mod client;
mod producer;

pub use client::{client_config, create_topic, partition_counts, KafkaError};
pub use producer::Producer;
