//! weir's wire formats, shared by every connector: decoders from message bytes straight into
//! Arrow record batches (JSON with a hand-written scanner, Avro with or without a schema
//! registry, message columns such as `_key` and `_timestamp`), the schemas they read, and
//! encoders of Arrow rows (JSON objects, Avro). Connectors (`weir-sources`, `weir-sinks`)
//! depend on this crate; it depends only on the engine's types.

pub mod avro;
pub mod avro_encode;
pub mod json;
pub mod json_rows;
pub mod message_columns;
pub mod registry;
pub mod schema;
