//! Kafka in weir: the client plumbing shared by the Kafka source, sinks and generator (client
//! settings with user properties passed through, topic creation and partition counts, and a
//! producer that waits for every acknowledgement and reports the first delivery error instead
//! of dropping), the Kafka source ([`source`]: a consumer in a group, `--until-caught-up`),
//! the Kafka sink and dead-letter output ([`sink`]) and a worker pool's repartition stage
//! ([`repartition`]). The schema-registry client is a format concern and lives in
//! `weir-formats` (`weir_formats::registry`).

mod client;
mod producer;
mod ranges;
pub mod repartition;
pub mod sink;
pub mod source;
mod topic_ids;

pub use client::{client_config, create_topic, partition_counts, KafkaError, Lasting};
pub use producer::{committed_marker, Producer, TxnMarker};
pub use ranges::{offset_ranges, OffsetRange};
pub use repartition::{RepartitionSpec, RepartitionStage};
pub use sink::{DeadLetterKafka, KafkaDelivery, KafkaFormat, KafkaSink, KafkaSinkConfig};
pub use source::caught_up::{NotCaughtUp, DEFAULT_CAUGHT_UP_TIMEOUT};
pub use source::{
    ClaimedStart, KafkaPartitions, KafkaReader, KafkaSourceConfig, ReadOffsets, StartFrom, Upstream,
};
