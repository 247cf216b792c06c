//! A partitioned NATS source in a worker pool (`weir run --worker`): the pool assigns its
//! subject partitions itself (see [`weir_sources::nats::pool`]); this module checks that a
//! pipeline can be shared that way and builds the worker's reader.

use std::sync::{Arc, Mutex};

use weir_engine::pool::PoolStore;
use weir_engine::pool_members::Heartbeat;
use weir_engine::EngineError;
use weir_sources::nats::pool::{NatsPoolReader, Owned};

use crate::plan::{Plan, SourceInput};
use crate::pool::PooledSource;
use crate::run::RunOptions;

/// Why NATS source `i` of `plan` cannot be shared by a pool (`None`: it can); `keyed` says
/// whether its declared `partitioned_by` keys every window and view reading it.
pub(crate) fn refusal(plan: &Plan, i: usize, keyed: bool) -> Option<String> {
    let s = &plan.sources[i];
    let SourceInput::Nats(cfg) = &s.input else {
        return None;
    };
    if cfg.partitions.is_none() {
        return Some(format!(
            "source `{}` reads NATS stream `{}` whole (one partition, held by one worker): \
             declare `partitions: {{ count: N, subject: \"….{{partition}}.…\" }}` to share its \
             subject partitions (see docs/src/connectors/nats.md, \"Worker pools\"), or run it \
             without --worker",
            s.name, cfg.stream
        ));
    }
    if !keyed {
        return Some(format!(
            "source `{}`: a worker pool does not repartition a NATS stream: declare \
             `partitioned_by` with the fields its subjects' partition number is computed from, \
             and key every window and view reading it by them",
            s.name
        ));
    }
    None
}

/// The reader of NATS source `i` for a pool worker's jobs (`first_partition`: its first
/// partition's global id), taking partitions into `owned`.
pub(crate) fn pooled_source(
    plan: &Plan,
    i: usize,
    first_partition: usize,
    opts: &RunOptions,
    pool: &Arc<PoolStore>,
    owned: &Owned,
) -> Result<PooledSource, EngineError> {
    let s = &plan.sources[i];
    let SourceInput::Nats(cfg) = &s.input else {
        return Err(EngineError::Internal(format!(
            "source {} is not a NATS source",
            s.name
        )));
    };
    let mut cfg = (**cfg).clone();
    cfg.until_caught_up = opts.until_caught_up;
    let keys = cfg.partition_keys();
    let reader = NatsPoolReader::new(
        i,
        &s.name,
        first_partition,
        cfg,
        pool.clone(),
        owned.clone(),
    );
    Ok(PooledSource::new(Arc::new(Mutex::new(reader)), keys))
}

/// The worker's heartbeat when the pool assigns partitions itself (a NATS source): announced
/// with `address` (its SQL address, or empty) until dropped.
pub(crate) fn heartbeat(
    plan: &Plan,
    pool: &Arc<PoolStore>,
    address: Option<String>,
) -> Result<Option<Heartbeat>, EngineError> {
    if !plan
        .sources
        .iter()
        .any(|s| matches!(s.input, SourceInput::Nats(_)))
    {
        return Ok(None);
    }
    Heartbeat::start(pool.clone(), address.unwrap_or_default()).map(Some)
}

#[cfg(test)]
mod tests {
    use crate::pool::pool_refusal;

    /// A pipeline over NATS stream `E` (`nats` the source's keys after `url` and `stream`),
    /// planned from YAML (nothing connects).
    fn plan_of(name: &str, nats: &str, partitioned_by: &str) -> crate::plan::Plan {
        let dir =
            std::env::temp_dir().join(format!("weir-nats-pool-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
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
