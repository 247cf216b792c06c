//! The YAML block of the Elasticsearch sink.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::{Duration, OneOrMany};

/// `elasticsearch:` of a sink: an index written by bulk requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct ElasticsearchDoc {
    /// One node URL or a list of them.
    pub url: OneOrMany<String>,
    /// Index name; `{output}` and `{pipeline}` are replaced.
    pub index: String,
    /// API key credentials.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// Bearer token credentials.
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// PEM file of the CA that signed the cluster's certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Documents per bulk request (default 1000).
    #[serde(default)]
    pub bulk_max_docs: Option<u64>,
    /// Bytes per bulk request (default 5 MiB).
    #[serde(default)]
    pub bulk_max_bytes: Option<u64>,
    /// Longest a document waits before its bulk request is sent.
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    /// The bulk API's `refresh` parameter (`true`, `false`, `wait_for`).
    #[serde(default)]
    pub refresh: Option<String>,
    /// A JSON file with an index template body (`index_patterns`, `template`), installed at
    /// start instead of the mapping weir derives.
    #[serde(default)]
    pub index_template: Option<String>,
    /// Bulk requests sent at once (default 2).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// gzip request bodies (default true).
    #[serde(default)]
    pub compression: Option<bool>,
    /// One request's time limit (default 30s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}
