//! The YAML block of the webhook sink.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::model::{Duration, OneOrMany};

/// `webhook:` of a sink: rows sent as signed HTTP requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct WebhookDoc {
    /// The endpoint: an http(s) URL; `{pipeline}`, `{output}` and `{KEY_COLUMN}` are replaced
    /// (percent-encoded), so rows go to the URL of their key.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// The signing secret, `whsec_<base64>` (from `${ENV}`); a list of two while rotating.
    #[schemars(with = "OneOrMany<String>")]
    pub secret: Spanned<OneOrMany<String>>,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: Option<String>,
    /// Extra request headers; values may come from `${ENV}`.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// `array` (default: a JSON array of rows a request) or `single` (one row a request).
    #[serde(default)]
    pub batch: Option<String>,
    /// Rows per request (default 100; 1 = one row a request, still in an array).
    #[serde(default)]
    pub batch_max_rows: Option<u64>,
    /// Bytes per request body, about (default 1 MiB).
    #[serde(default)]
    pub batch_max_bytes: Option<u64>,
    /// `json` (default), `cloudevents_structured` or `cloudevents_binary` (CloudEvents 1.0).
    #[serde(default)]
    pub body: Option<String>,
    /// One request's time limit (default 10s).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Requests sent at once (default 4).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// Longest a row waits before its request is sent (default 1s).
    #[serde(default)]
    pub flush_interval: Option<Duration>,
    /// A URL failing this long (failures to retry only, since its first), or rows failing this
    /// long, go to the dead-letter output instead of holding the sink back (at least 1s;
    /// default: never, rows wait for the receiver).
    #[serde(default)]
    pub give_up_after: Option<Duration>,
    /// Only output rows that match this SQL predicate are sent (e.g. `failures > 10`).
    #[serde(default, rename = "where")]
    #[schemars(with = "Option<String>")]
    pub filter: Option<Spanned<String>>,
}
