//! weir's wire formats, shared by every connector:
//!
//! - decoders from message bytes straight into Arrow record batches: JSON with a hand-written
//!   scanner, CloudEvents and platform envelopes ([`json`]), Avro with or without a schema
//!   registry ([`avro`]), message columns such as `_key` and `_timestamp`
//!   ([`message_columns`]), and the schemas they read ([`schema`]);
//! - encoders of Arrow rows: JSON objects ([`json_rows`]), Avro ([`avro_encode`]), CSV lines
//!   ([`csv_rows`]), Parquet files ([`parquet_rows`]) and CloudEvents 1.0 ([`cloudevents`]);
//! - the Confluent schema registry: its HTTP client and a cache of writer schemas by id
//!   ([`registry`]).
//!
//! Connectors (`weir-sources`, `weir-sinks`, `weir-pipelines`) depend on this crate; it
//! depends only on the engine's types, never on a connector's crate (`weir-kafka`,
//! `weir-sinks`…). Where bytes go and when they become visible (files, commits, requests,
//! signatures) stays with the connectors.

pub mod avro;
pub mod avro_encode;
mod avro_error;
pub mod cloudevents;
pub mod csv_rows;
pub mod json;
pub mod json_rows;
pub mod message_columns;
pub mod parquet_rows;
pub mod registry;
pub mod schema;
