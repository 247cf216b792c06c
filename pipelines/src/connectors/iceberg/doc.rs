//! The YAML block of the Iceberg sink.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// `iceberg:` of a sink: a table of an Iceberg catalog.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct IcebergDoc {
    /// `sqlite://PATH`, `postgres://…` or `http(s)://…` (REST).
    pub catalog: String,
    /// The catalog's name (default `weir`); readers open the catalog under the same name.
    #[serde(default)]
    pub catalog_name: Option<String>,
    /// Where data files go: a folder or `s3://bucket/prefix`.
    pub warehouse: String,
    /// `NAMESPACE.TABLE`.
    pub table: String,
    /// `day` (the default for windows: `day(window_start)`), `hour`, `day(COL)`, `hour(COL)`,
    /// `identity(COL)`, a column, or `none`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub partition_by: Option<Spanned<String>>,
    /// Data files roll over at about this size (default 128 MiB).
    #[serde(default)]
    pub target_file_size_mb: Option<u64>,
    /// Catalog properties as they are (REST credentials, a prefix...).
    #[serde(default)]
    pub properties: IndexMap<String, String>,
}
