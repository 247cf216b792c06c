//! The YAML block of the generator source.
//!
//! A block without a description in the committed JSON schema
//! (`pipelines/pipeline.schema.json`) keeps its doc comment for Rust readers only:
//! `#[schemars(description = "")]`.

use schemars::JsonSchema;
use serde::Deserialize;

/// `generator:` of a source: synthetic events, the same for the same seed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "")]
pub struct GeneratorDoc {
    /// Which events: `data-ingestion` or `service-health`.
    pub kind: GeneratorKind,
    /// Events to produce; absent = until stopped.
    #[serde(default)]
    pub count: Option<u64>,
    /// Rate; 0 (the default) is as fast as possible.
    #[serde(default)]
    pub events_per_second: Option<f64>,
    /// Random seed: the same seed gives the same events.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Distinct datasetName/serviceName values.
    #[serde(default)]
    pub keys: Option<usize>,
    /// Zipf exponent of key popularity (0 = uniform).
    #[serde(default)]
    pub skew: Option<f64>,
    /// Event time of the first event, epoch ms.
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// Mean event-time advance per event, in ms.
    #[serde(default)]
    pub step_ms: Option<f64>,
    /// Fraction of events out of order by up to `jitter_ms`.
    #[serde(default)]
    pub jitter_frac: Option<f64>,
    /// How far out of order jittered events are, in ms.
    #[serde(default)]
    pub jitter_ms: Option<i64>,
    /// Fraction of very late events.
    #[serde(default)]
    pub late_frac: Option<f64>,
    /// How far behind the newest event time late events are, in ms.
    #[serde(default)]
    pub late_ms: Option<i64>,
    /// Include non-ASCII, quoted and empty keys.
    #[serde(default)]
    pub unicode_keys: Option<bool>,
}

/// The generator's event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    DataIngestion,
    ServiceHealth,
}
