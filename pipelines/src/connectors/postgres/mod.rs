//! PostgreSQL: a window's or view's rows upserted by key through binary `COPY` into a staging
//! table and one merge; with checkpoints each checkpoint's rows and its epoch
//! (`weir_sink_epochs`) commit in one transaction.

use arrow::datatypes::SchemaRef;
use weir_engine::checkpoint::Manifest;
use weir_engine::job::Sink;
use weir_engine::EngineError;
use weir_sinks::{PostgresConfig, PostgresSink};

use super::{Attach, OpenSink, SinkConnector, SinkKind};
use crate::error::PipelineError;
use crate::run::RunError;

mod plan;

/// The `postgres` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "postgres",
    declared: |d| d.postgres.is_some(),
    takes_format: false,
    secrets: |d| {
        d.postgres
            .iter()
            .flat_map(|p| super::url_secrets([&p.value.url]))
            .collect()
    },
    plan: |p| {
        let d = p.sink.value.postgres.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.sink.referenced,
                format!("sink `{}`: `postgres` is missing", p.name),
            )
        })?;
        let cfg = plan::postgres_config(p.ctx, p.pipeline, p.name, d)?;
        Ok(Box::new(PostgresTarget(cfg, None)))
    },
};

/// A PostgreSQL table (the output is set when a window or view names the sink), and the
/// rows it receives (set then too).
#[derive(Debug, Clone)]
pub struct PostgresTarget(pub PostgresConfig, pub Option<SchemaRef>);

impl SinkConnector for PostgresTarget {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn fingerprint(&self) -> String {
        format!("postgres table {}", self.0.table)
    }

    fn summary(&self) -> String {
        format!("table {}", self.0.table)
    }

    fn describe(&self, checkpointed: bool) -> String {
        let c = &self.0;
        format!(
            "postgres table {} on {}, {} rows or {} ms per batch (COPY into staging, then one merge); {}",
            c.table,
            weir_sinks::postgres::server(c),
            c.batch_max_rows,
            c.flush_interval.as_millis(),
            match (checkpointed, c.view_keys) {
                (true, _) => "exactly once: each checkpoint's rows and its epoch (weir_sink_epochs) commit in one transaction",
                (false, Some(_)) => "at least once: upserts by key, deletes for expired keys",
                (false, None) => "at least once: windows upserted by key and window_start",
            }
        )
    }

    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        let (c, sink) = (&mut self.0, &at.reference.value);
        if !c.output.is_empty() {
            return Err(at.err(format!("sink `{sink}` already writes `{}`: a PostgreSQL sink writes one window or view (its table has the output's columns and key); use one sink per window or view", c.output)));
        }
        c.view_keys = at.view_keys();
        let table = c.table.clone();
        weir_sinks::postgres::ddl::Layout::new(table.clone(), table, at.schema, c.view_keys)
            .map_err(|e| at.err(format!("sink `{sink}`: {e}")))?;
        c.output = at.output.to_string();
        self.1 = Some(at.schema.clone());
        Ok(())
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        Ok(Box::new(PostgresSink::new(
            at.name,
            self.0.clone(),
            at.schema,
            at.checkpointed,
        )?))
    }

    /// Each worker records its own epochs (`weir_sink_epochs` keyed by worker too), with a
    /// staging table of its own.
    fn for_worker(&mut self, worker: &str) {
        self.0.worker = worker.to_string();
    }

    /// Commits dead worker `worker`'s staged epoch of checkpoint `m`, unless its epoch row
    /// says it is committed.
    fn roll_forward(&self, sink: &str, worker: &str, m: &Manifest) -> Result<(), EngineError> {
        let Some(schema) = &self.1 else {
            return Ok(());
        };
        let mut config = self.0.clone();
        config.worker = worker.to_string();
        super::patiently(sink, worker, m.epoch, || {
            let mut pg = PostgresSink::new(sink, config.clone(), schema, true)?;
            if pg.roll_forward(m.epoch)? {
                tracing::info!(
                    sink,
                    worker,
                    epoch = m.epoch,
                    "committed another worker's checkpoint epoch"
                );
            }
            let refused = Sink::take_rejected(&mut pg);
            if !refused.is_empty() {
                tracing::warn!(
                    sink,
                    worker,
                    epoch = m.epoch,
                    rows = refused.len(),
                    "rows of another worker's epoch were refused when it was committed"
                );
            }
            Ok(())
        })
    }
}
