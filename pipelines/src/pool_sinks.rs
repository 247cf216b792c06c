//! A pool worker's transactional sinks: `delivery: exactly_once` Kafka sinks and PostgreSQL
//! sinks, exactly once per worker.
//!
//! Each worker commits its own sequence of epochs (its own checkpoints), so each has its own
//! commit record: a Kafka sink's transactional id (and so its fencing and its marker group
//! `weir-txn.<id>`) is `<transactional_id>.<worker>`, and a PostgreSQL sink records its epochs
//! as `(pipeline, sink, worker, epoch)` in `weir_sink_epochs`, with a staging table of its own.
//! The pool's claims and sealing decide which checkpoint is complete; a worker commits only a
//! complete one, and a worker that restores partitions from another worker's checkpoint first
//! finishes that checkpoint's commit under the other worker's id or epoch sequence (the other
//! worker may have died between the checkpoint and its commit), which the commit record makes
//! idempotent: see `docs/src/operations/pool.md`.

use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use weir_engine::checkpoint::Manifest;
use weir_engine::EngineError;
use weir_sinks::postgres::PostgresConfig;
use weir_sinks::{KafkaDelivery, KafkaSink, KafkaSinkConfig, PostgresSink};

use crate::plan::{Plan, SinkTarget};

/// How long finishing another worker's commit is retried while its server is unavailable.
const ROLL_FORWARD_PATIENCE: Duration = Duration::from_secs(120);

/// The transactional id worker `worker` of a pool uses for a sink configured with `id`.
pub fn worker_transactional_id(id: &str, worker: &str) -> String {
    format!("{id}.{worker}")
}

/// Gives `plan`'s transactional sinks worker `worker`'s commit records.
pub(crate) fn for_worker(plan: &mut Plan, worker: &str) {
    for s in &mut plan.sinks {
        match &mut s.target {
            SinkTarget::Kafka(KafkaSinkConfig {
                delivery: KafkaDelivery::ExactlyOnce { transactional_id },
                ..
            }) => *transactional_id = worker_transactional_id(transactional_id, worker),
            SinkTarget::Postgres(c) => c.worker = worker.to_string(),
            _ => {}
        }
    }
}

/// A transactional sink of the plan, as configured (before [`for_worker`]).
#[derive(Clone)]
enum Target {
    Kafka(KafkaSinkConfig),
    Postgres(Box<PostgresConfig>, SchemaRef),
}

/// The transactional sinks of a plan, whose commits another worker may have to finish.
#[derive(Clone, Default)]
pub(crate) struct WorkerSinks {
    sinks: Vec<(String, Target)>,
}

impl WorkerSinks {
    /// The plan's transactional sinks that receive rows.
    pub fn of(plan: &Plan) -> Self {
        let sinks = plan
            .sinks
            .iter()
            .filter_map(|s| {
                let target = match (&s.target, &s.schema) {
                    (
                        SinkTarget::Kafka(
                            k @ KafkaSinkConfig {
                                delivery: KafkaDelivery::ExactlyOnce { .. },
                                ..
                            },
                        ),
                        Some(_),
                    ) => Target::Kafka(k.clone()),
                    (SinkTarget::Postgres(c), Some(schema)) => {
                        Target::Postgres(c.clone(), schema.clone())
                    }
                    _ => return None,
                };
                Some((s.name.clone(), target))
            })
            .collect();
        WorkerSinks { sinks }
    }

    /// Finishes the commit of checkpoint `m` of worker `worker` in every transactional sink
    /// (nothing where it is committed already), retrying while a server is unavailable.
    pub fn roll_forward(&self, worker: &str, m: &Manifest) -> Result<(), EngineError> {
        for (name, target) in &self.sinks {
            let started = Instant::now();
            let mut backoff = Duration::from_millis(200);
            loop {
                match roll_forward_one(name, target, worker, m) {
                    Err(EngineError::Unavailable(why))
                        if started.elapsed() < ROLL_FORWARD_PATIENCE =>
                    {
                        tracing::warn!(sink = %name, worker, epoch = m.epoch, error = %why, "finishing another worker's commit: retrying");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// [`WorkerSinks::roll_forward`] of one sink, once.
fn roll_forward_one(
    name: &str,
    target: &Target,
    worker: &str,
    m: &Manifest,
) -> Result<(), EngineError> {
    let info = m.sinks.get(name).unwrap_or(&serde_json::Value::Null);
    match target {
        Target::Kafka(config) => {
            let mut config = config.clone();
            if let KafkaDelivery::ExactlyOnce { transactional_id } = &mut config.delivery {
                *transactional_id = worker_transactional_id(transactional_id, worker);
            }
            if info.is_null() {
                return Ok(());
            }
            let committed = KafkaSink::new(name, config)?.roll_forward(m.epoch, info)?;
            if committed {
                tracing::info!(sink = %name, worker, epoch = m.epoch, "committed another worker's checkpoint transaction");
            }
        }
        Target::Postgres(config, schema) => {
            let mut config = (**config).clone();
            config.worker = worker.to_string();
            let mut sink = PostgresSink::new(name, config, schema, true)?;
            if sink.roll_forward(m.epoch)? {
                tracing::info!(sink = %name, worker, epoch = m.epoch, "committed another worker's checkpoint epoch");
            }
            let refused = weir_engine::job::Sink::take_rejected(&mut sink);
            if !refused.is_empty() {
                tracing::warn!(sink = %name, worker, epoch = m.epoch, rows = refused.len(), "rows of another worker's epoch were refused when it was committed");
            }
        }
    }
    Ok(())
}
