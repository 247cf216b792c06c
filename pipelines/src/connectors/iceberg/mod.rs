//! Iceberg tables: a window's rows appended (one snapshot per checkpoint, exactly once), a
//! view's table replaced with one row per key at every commit; `weir compact` rewrites a
//! window table's small files.

use std::collections::HashMap;

use serde_saphyr::Location;
use weir_engine::checkpoint::Manifest;
use weir_engine::job::Sink;
use weir_engine::EngineError;
use weir_iceberg::{CatalogUri, IcebergSink, PartitionBy};

use super::{Attach, OpenSink, SinkConnector, SinkKind};
use crate::error::PipelineError;
use crate::run::RunError;

pub mod compact;
/// Its YAML block, as a pipeline file writes it.
pub mod doc;
mod plan;

pub use plan::iceberg_config;

/// The `iceberg` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "iceberg",
    name: "Iceberg",
    own_format: None,
    declared: |d| d.iceberg.is_some(),
    takes_format: false,
    secrets: |d| {
        d.iceberg
            .iter()
            .flat_map(|i| {
                let mut out = super::property_secrets(&i.value.properties);
                out.extend(super::url_secrets([&i.value.catalog, &i.value.warehouse]));
                out
            })
            .collect()
    },
    plan: |p| {
        let i = p.sink.value.iceberg.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.sink.referenced,
                format!("sink `{}`: `iceberg` is missing", p.name),
            )
        })?;
        Ok(Box::new(plan::target(p.ctx, p.pipeline, p.name, i)?))
    },
};

/// An Iceberg sink's table, and the output that feeds it (set when an output names it).
#[derive(Debug, Clone)]
pub struct IcebergTarget {
    pub catalog: CatalogUri,
    pub catalog_name: String,
    /// An absolute folder or an object-store URL.
    pub warehouse: String,
    pub table: String,
    pub partition_by: Option<PartitionBy>,
    /// Where `partition_by` is written, and its text (checked against the output's columns).
    pub partition_text: Option<(Location, String)>,
    pub target_file_size: usize,
    pub properties: HashMap<String, String>,
    /// The window or view writing to the table.
    pub output: Option<String>,
    /// The key columns of a view's rows; `None` for a window.
    pub view_keys: Option<usize>,
    /// The pool worker writing it (set by `weir run --worker`).
    pub worker: Option<String>,
    /// The pipeline writing it (its snapshots carry the name).
    pub pipeline: String,
}

impl IcebergTarget {
    /// Its sink's configuration for a run opened `at`: a replay's windows are replaced.
    fn opened_config(&self, at: &OpenSink) -> weir_iceberg::IcebergSinkConfig {
        let mut config = iceberg_config(at.pipeline, at.name, self);
        config.replace_windows = at.replaces.map(|r| (r.from_ms, r.to_ms));
        config
    }
}

impl SinkConnector for IcebergTarget {
    fn kind(&self) -> &'static str {
        "iceberg"
    }

    fn fingerprint(&self) -> String {
        format!("iceberg table {}", self.table)
    }

    fn summary(&self) -> String {
        format!("table {}", self.table)
    }

    fn describe(&self, checkpointed: bool) -> String {
        format!(
            "iceberg table {} in catalog `{}` ({}), warehouse {}, partitioned by {}; {}",
            self.table,
            self.catalog_name,
            self.catalog.display(),
            self.warehouse,
            match (&self.partition_by, self.view_keys) {
                (Some(p), _) => format!("{p:?}").to_lowercase(),
                (None, None) => "day(window_start)".into(),
                (None, Some(_)) => "nothing".into(),
            },
            match (checkpointed, self.view_keys) {
                (_, Some(_)) => "a view: each commit replaces the table with one row per key",
                (true, None) => "exactly once: one snapshot per checkpoint",
                (false, None) => "one snapshot when the run ends",
            }
        )
    }

    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        let sink = &at.reference.value;
        if let Some(other) = &self.output {
            return Err(at.err(format!("sink `{sink}` already writes `{other}`: an Iceberg sink writes one table; use one sink per window or view")));
        }
        let columns: Vec<(&str, &arrow::datatypes::DataType)> = at
            .schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type()))
            .filter(|(c, _)| *c != weir_iceberg::schema::OP_COLUMN)
            .collect();
        if let Some((loc, text)) = &self.partition_text {
            self.partition_by = Some(
                PartitionBy::parse(text, &columns)
                    .map_err(|e| at.ctx.err(loc, format!("sink `{sink}`")).caused_by(e))?,
            );
        }
        self.view_keys = at.view_keys();
        if self.view_keys.is_some() && matches!(self.catalog, CatalogUri::Rest(_)) {
            return Err(at.err(format!("sink `{sink}`: a view's table is replaced at every commit, which weir can only commit through a SQL catalog (sqlite:// or postgres://), not a REST catalog; use a SQL catalog for views")));
        }
        self.output = Some(at.output.to_string());
        Ok(())
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        Ok(Box::new(IcebergSink::open(
            self.opened_config(at),
            at.schema,
            self.view_keys,
        )?))
    }

    fn pool_refusal(&self, sink: &str) -> Option<String> {
        matches!(self.catalog, CatalogUri::Rest(_)).then(|| {
            format!(
                "sink `{sink}`: in a worker pool an Iceberg sink needs a SQL catalog \
                 (sqlite:// or postgres://), whose commits weir checks and retries itself; \
                 a REST catalog runs without `--worker`"
            )
        })
    }

    /// Its commits carry the worker's id (see `weir_iceberg::pool`).
    fn for_worker(&mut self, worker: &str) {
        self.worker = Some(worker.to_string());
    }

    /// Commits dead worker `worker`'s epochs of checkpoint `m`, unless a snapshot has them;
    /// an unreachable catalog or storage is retried for a while (see `patiently`).
    fn roll_forward(
        &self,
        sink: &str,
        worker: &str,
        _adopter: &str,
        m: &Manifest,
    ) -> Result<(), EngineError> {
        let Some(info) = m.sinks.get(sink) else {
            return Ok(());
        };
        let config = iceberg_config(&self.pipeline, sink, self);
        super::patiently(sink, worker, m.epoch, || {
            weir_iceberg::pool::roll_forward(&config, worker, m.epoch, info)
                .map(|_| ())
                .map_err(|e| e.into_sink_error(sink))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::connectors::tests::{pipeline, plan_of, refusal};
    use crate::connectors::SinkConnector;

    const FILES: &str = "    file: { path: in.ndjson }";

    fn sink(name: &str, iceberg: &str) -> Box<dyn SinkConnector> {
        let yaml = pipeline(FILES, &format!("    iceberg: {iceberg}"), "");
        let plan = plan_of(name, &yaml).unwrap_or_else(|e| panic!("{e}"));
        plan.sinks[0].target.clone()
    }

    const SQLITE: &str = "{ catalog: \"sqlite://cat.db\", warehouse: lake, table: ns.t }";

    #[test]
    fn an_iceberg_sink_plans_describes_and_fingerprints_its_table() {
        let s = sink("ice-plan", SQLITE);
        assert_eq!(s.kind(), "iceberg");
        assert_eq!(s.fingerprint(), "iceberg table ns.t");
        assert_eq!(
            sink("ice-plan-again", SQLITE).fingerprint(),
            s.fingerprint()
        );
        let other = "{ catalog: \"sqlite://cat.db\", warehouse: lake, table: ns.u }";
        assert_ne!(sink("ice-plan-other", other).fingerprint(), s.fingerprint());
        assert_eq!(s.summary(), "table ns.t");
        let live = s.describe(true);
        assert!(
            live.starts_with("iceberg table ns.t in catalog `"),
            "{live}"
        );
        assert!(
            live.ends_with(
                "partitioned by day(window_start); exactly once: one snapshot per checkpoint"
            ),
            "{live}"
        );
        assert!(s
            .describe(false)
            .ends_with("one snapshot when the run ends"));
    }

    #[test]
    fn an_iceberg_sink_is_refused_where_its_block_is() {
        let bad = "{ catalog: \"ftp://x\", warehouse: lake, table: ns.t }";
        let e = refusal(
            "ice-bad",
            &pipeline(FILES, &format!("    iceberg: {bad}"), ""),
        );
        assert!(e.line > 0 && e.column > 0, "{e}");
        assert!(
            e.reason()
                .starts_with("sink `out`: unknown catalog `ftp://x`"),
            "{e}"
        );
        // `partition_by` is checked against the window's columns when the window names it
        let by = "{ catalog: \"sqlite://cat.db\", warehouse: lake, table: ns.t, partition_by: \"bucket(nope, 4)\" }";
        let e = refusal(
            "ice-partition",
            &pipeline(FILES, &format!("    iceberg: {by}"), ""),
        );
        assert!(e.line > 0 && e.reason().starts_with("sink `out`: "), "{e}");
    }

    #[test]
    fn an_iceberg_sink_replaces_a_replayed_range_and_pools_with_a_sql_catalog() {
        let s = sink("ice-modes", SQLITE);
        // a replay rewrites the range's windows in the same table
        assert_eq!(s.replayed("replay-a-b").fingerprint(), s.fingerprint());
        assert_eq!(s.pool_refusal("out"), None);
        let rest = "{ catalog: \"http://127.0.0.1:9/catalog\", warehouse: lake, table: ns.t }";
        let why = sink("ice-rest", rest).pool_refusal("out").expect("refused");
        assert!(
            why.starts_with("sink `out`: in a worker pool an Iceberg sink needs a SQL catalog"),
            "{why}"
        );
        let mut worker = s.clone();
        worker.for_worker("w1");
        let worker = worker
            .as_any()
            .downcast_ref::<super::IcebergTarget>()
            .expect("an Iceberg target");
        assert_eq!(worker.worker.as_deref(), Some("w1"));
    }

    #[test]
    fn an_iceberg_sink_replaces_the_windows_it_is_opened_to_replace() {
        let s = sink("ice-replaces", SQLITE);
        let target = s
            .as_any()
            .downcast_ref::<super::IcebergTarget>()
            .expect("an Iceberg target");
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::empty());
        let mut deliveries = Vec::new();
        let mut at = crate::connectors::OpenSink {
            pipeline: "p",
            name: "out",
            schema: &schema,
            checkpointed: false,
            replaces: None,
            deliveries: &mut deliveries,
        };
        assert_eq!(target.opened_config(&at).replace_windows, None);
        at.replaces = Some(crate::connectors::WindowStarts {
            from_ms: 60_000,
            to_ms: 180_000,
        });
        assert_eq!(
            target.opened_config(&at).replace_windows,
            Some((60_000, 180_000))
        );
    }
}
