//! The YAML block of the PostgreSQL sink.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::Duration;

/// `postgres:` of a sink: a table upserted by key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct PostgresDoc {
    /// `postgres://user:${PGPASSWORD}@host:5432/database` (libpq parameters such as
    /// `sslmode` accepted).
    pub url: String,
    /// `schema.table` (`public` when no schema is given); created on first use.
    pub table: String,
    /// `disable`, `require` or `verify-full` (default: the URL's `sslmode`, else `prefer`).
    #[serde(default)]
    pub tls: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Rows per batch (default 50000).
    #[serde(default)]
    pub batch_max_rows: Option<u64>,
    /// Longest a row waits before its batch is sent (default 1s).
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    /// How long a statement may stay unanswered (connecting, staging, merging) before the
    /// batch is retried on a new connection (default 30s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}
