//! PostgreSQL: a window's or view's rows upserted by key through binary `COPY` into a staging
//! table and one merge; with checkpoints each checkpoint's rows and its epoch
//! (`weir_sink_epochs`) commit in one transaction.

use std::any::Any;

use weir_engine::job::Sink;
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
        Ok(Box::new(PostgresTarget(cfg)))
    },
};

/// A PostgreSQL table (the output is set when a window or view names the sink).
#[derive(Debug, Clone)]
pub struct PostgresTarget(pub PostgresConfig);

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

    fn pool_refusal(&self, sink: &str) -> Option<String> {
        Some(format!(
            "sink `{sink}`: a PostgreSQL sink commits one epoch sequence per \
             pipeline and sink (weir_sink_epochs), which the workers of a pool would \
             share; run it without `--worker`"
        ))
    }

    fn clone_box(&self) -> Box<dyn SinkConnector> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
