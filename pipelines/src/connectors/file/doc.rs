//! The YAML blocks of files: `file:` of a source, and of a sink or `dead_letter`.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// `file:` of a source: NDJSON files read, one partition per file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct FileSourceDoc {
    /// A file, a folder or a glob, relative to the pipeline file.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// The longest line read, newline included (default 64 MiB; values below 1 MiB count as
    /// 1 MiB); a longer line is skipped, its first 64 KiB sent to the dead letters as a bad
    /// record.
    #[serde(default)]
    pub max_line_bytes: Option<u64>,
}

/// `file:` of a sink or of `dead_letter`: one output file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct FileSinkDoc {
    /// The output file, relative to the pipeline file; the extension picks the format.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
}
