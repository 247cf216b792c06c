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

/// Its YAML block, as a pipeline file writes it.
pub mod doc;
mod plan;

/// The `postgres` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "postgres",
    name: "PostgreSQL",
    own_format: None,
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
            .map_err(|e| at.err(format!("sink `{sink}`")).caused_by(e))?;
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
    /// says it is committed; the rows its commits refused and no complete checkpoint reported
    /// become `adopter`'s.
    fn roll_forward(
        &self,
        sink: &str,
        worker: &str,
        adopter: &str,
        m: &Manifest,
    ) -> Result<(), EngineError> {
        let Some(schema) = &self.1 else {
            return Ok(());
        };
        let mut config = self.0.clone();
        config.worker = worker.to_string();
        super::patiently(sink, worker, m.epoch, || {
            let mut pg = PostgresSink::new(sink, config.clone(), schema, true)?;
            if pg.roll_forward(m.epoch, adopter)? {
                tracing::info!(
                    sink,
                    worker,
                    epoch = m.epoch,
                    "committed another worker's checkpoint epoch"
                );
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::connectors::tests::{pipeline, plan_of, refusal};
    use crate::connectors::SinkConnector;

    const FILES: &str = "    file: { path: in.ndjson }";

    fn sink(name: &str, postgres: &str) -> Box<dyn SinkConnector> {
        let yaml = pipeline(FILES, &format!("    postgres: {postgres}"), "");
        let plan = plan_of(name, &yaml).unwrap_or_else(|e| panic!("{e}"));
        plan.sinks[0].target.clone()
    }

    const PG: &str = "{ url: \"postgres://weir:pw-4711@127.0.0.1:9/db\", table: public.t }";

    #[test]
    fn a_postgres_sink_plans_describes_and_fingerprints_its_table() {
        let s = sink("pg-plan", PG);
        assert_eq!(s.kind(), "postgres");
        assert_eq!(s.fingerprint(), "postgres table public.t");
        assert_eq!(sink("pg-plan-again", PG).fingerprint(), s.fingerprint());
        let other = "{ url: \"postgres://weir@127.0.0.1:9/db\", table: public.u }";
        assert_ne!(sink("pg-plan-other", other).fingerprint(), s.fingerprint());
        assert_eq!(s.summary(), "table public.t");
        let live = s.describe(true);
        assert!(live.starts_with("postgres table public.t on "), "{live}");
        assert!(!live.contains("pw-4711"), "{live}");
        assert!(live.ends_with("exactly once: each checkpoint's rows and its epoch (weir_sink_epochs) commit in one transaction"), "{live}");
        assert!(s
            .describe(false)
            .ends_with("at least once: windows upserted by key and window_start"));
    }

    #[test]
    fn a_postgres_sink_is_refused_where_its_block_is() {
        let yaml = pipeline(
            FILES,
            "    postgres: { url: \"postgres://weir@127.0.0.1:9/db\", table: t, batch_max_rows: 0 }",
            "",
        );
        let e = refusal("pg-bad", &yaml);
        assert!(e.line > 0 && e.column > 0, "{e}");
        assert_eq!(
            e.reason(),
            "sink `out`: `batch_max_rows` must be between 1 and 1000000"
        );
    }

    #[test]
    fn a_postgres_sink_replays_by_key_and_commits_per_worker_in_a_pool() {
        let s = sink("pg-modes", PG);
        // rows are upserted by key: a replay writes the same table
        assert_eq!(s.replayed("replay-a-b").describe(true), s.describe(true));
        assert_eq!(s.pool_refusal("out"), None);
        let mut worker = s.clone();
        worker.for_worker("w1");
        let worker = worker
            .as_any()
            .downcast_ref::<super::PostgresTarget>()
            .expect("a PostgreSQL target");
        assert_eq!(worker.0.worker, "w1");
        // attached to the window: its rows' schema is kept to finish a dead worker's epoch
        assert!(worker.1.is_some());
    }
}
