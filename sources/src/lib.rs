//! weir's inputs: NDJSON files and the synthetic generator, with a schema-driven JSON decoder
//! that writes straight into Arrow arrays.

pub mod file;
pub mod generator;
pub mod json;
pub mod schema;

pub use file::{resolve_files, FileReader};
pub use generator::{EventGenerator, GeneratorConfig, GeneratorReader, Kind};
pub use json::{BadLine, DecodedLines, JsonDecoder};
pub use schema::{FieldKind, SchemaField, SourceSchema};
