//! Shared inputs of weir's micro-benchmarks: generated data-ingestion lines and their decoder.

use std::sync::Arc;

use weir_engine::SharedBytes;
use weir_sources::{EventGenerator, GeneratorConfig, JsonDecoder, Kind, SourceSchema};

/// `n` data-ingestion events as NDJSON (the generator's defaults, seed 42).
pub fn ingestion_lines(n: u64) -> SharedBytes {
    let mut cfg = GeneratorConfig::new(Kind::DataIngestion);
    cfg.count = Some(n);
    let mut g = EventGenerator::new(cfg);
    let mut out = Vec::new();
    while !g.done() {
        g.write_next_line(&mut out);
    }
    out.into()
}

/// The decoder of the end-to-end benchmark's pipeline (the columns it reads).
pub fn bench_decoder() -> JsonDecoder {
    let schema = Arc::new(SourceSchema::builtin("data-ingestion").expect("built-in schema"));
    let cols: Vec<String> = [
        "timestamp",
        "datasetName",
        "recordCount",
        "sizeBytes",
        "status",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    JsonDecoder::new(schema, &cols, "timestamp").expect("decoder")
}
