//! A partitioned NATS source in a worker pool (`weir run --worker`): the pool assigns its
//! subject partitions itself (see [`weir_nats::source::pool`]); this module checks that a
//! pipeline can be shared that way and builds the worker's reader.

use weir_nats::source::pool::NatsPoolReader;
use weir_nats::source::NatsSourceConfig;

use crate::connectors::{PoolSource, PooledReader, PooledSource};

/// The reader of NATS source `cfg` for a pool worker's jobs: the pool assigns its subject
/// partitions among the workers that heartbeat.
pub(crate) fn pooled(cfg: &NatsSourceConfig, at: &PoolSource) -> PooledSource {
    let mut cfg = cfg.clone();
    cfg.until_caught_up = at.until_caught_up;
    let keys = cfg.partition_keys();
    let mut reader = NatsPoolReader::new(
        at.index,
        at.name,
        at.first_partition,
        cfg,
        at.pool.clone(),
        at.owned.clone(),
    );
    if let Some(t) = at.caught_up_timeout {
        reader = reader.with_caught_up_timeout(t);
    }
    PooledSource::new(reader, keys)
}

impl PooledReader for NatsPoolReader {
    fn start_job(&mut self, resume: &dyn Fn(&str) -> Option<weir_engine::events::Resume>) {
        NatsPoolReader::start_job(self, resume)
    }
    fn handed_over(&self) -> bool {
        NatsPoolReader::handed_over(self)
    }
    fn flushed_to_wait(&self) -> bool {
        NatsPoolReader::flushed_to_wait(self)
    }
    fn finished_ends(&self) -> std::collections::BTreeMap<String, u64> {
        NatsPoolReader::finished_ends(self)
    }
    fn close(&mut self) {
        NatsPoolReader::close(self)
    }
}

/// Why NATS source `source` (`cfg`) cannot be shared by a pool (`None`: it can); `keyed` says
/// whether its declared `partitioned_by` keys every window and view reading it.
pub(crate) fn refusal(source: &str, cfg: &NatsSourceConfig, keyed: bool) -> Option<String> {
    if cfg.partitions.is_none() {
        return Some(format!(
            "source `{source}` reads NATS stream `{}` whole (one partition, held by one worker): \
             declare `partitions: {{ count: N, subject: \"….{{partition}}.…\" }}` to share its \
             subject partitions (see docs/src/connectors/nats.md, \"Worker pools\"), or run it \
             without --worker",
            cfg.stream
        ));
    }
    if !keyed {
        return Some(format!(
            "source `{source}`: a worker pool does not repartition a NATS stream: declare \
             `partitioned_by` with the fields its subjects' partition number is computed from, \
             and key every window and view reading it by them"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::pool::pool_refusal;

    /// A pipeline over NATS stream `E` (`nats` the source's keys after `url` and `stream`),
    /// planned from YAML (nothing connects).
    fn plan_of(name: &str, nats: &str, partitioned_by: &str) -> crate::plan::Plan {
        // a folder per call: tests run in parallel, some with the same name
        let dir = tempfile::Builder::new()
            .prefix(&format!("weir-nats-pool-{name}-"))
            .tempdir()
            .expect("temp dir")
            .keep();
        let path = dir.join("p.yaml");
        let yaml = format!(
            "name: p\nsources:\n  events:\n    nats: {{ url: \"nats://127.0.0.1:9\", stream: E{nats} }}\n{partitioned_by}    format: json\n    schema: data-ingestion\n    \
             event_time: {{ field: timestamp }}\nwindows:\n  w:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    aggregates: {{ n: count(*) }}\n    sinks: [out]\n\
             sinks:\n  out: {{ file: {{ path: out.ndjson }} }}\ncheckpoint: {{ dir: state }}\n"
        );
        std::fs::write(&path, yaml).unwrap();
        crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    const PARTS: &str = ", partitions: { count: 4, subject: \"e.{partition}.*\" }";
    const KEYED: &str = "    partitioned_by: [datasetName]\n";

    #[test]
    fn a_pool_shares_a_partitioned_stream_keyed_by_its_windows_only() {
        assert_eq!(pool_refusal(&plan_of("ready", PARTS, KEYED)), None);
        let why = pool_refusal(&plan_of("whole", "", KEYED)).expect("refused");
        assert!(why.contains("whole (one partition"), "{why}");
        let why = pool_refusal(&plan_of("unkeyed", PARTS, "")).expect("refused");
        assert!(why.contains("does not repartition a NATS stream"), "{why}");
    }
}
