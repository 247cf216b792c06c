//! DataFusion tables over a job's live state: one per window and view, and `weir_status`.
//!
//! A query pins one [`LiveSnapshot`] when it starts (see [`Pinned`]) and every table it reads
//! scans that snapshot, so a join of a view with `weir_status` sees one point of the input.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use weir_engine::live::{KeyIndex, LiveSnapshot, LiveState};

use crate::peers::{check_coverage, PeerError, Peers};

/// The snapshot a query reads, carried in its session's config.
pub struct Pinned(pub Arc<LiveSnapshot>);

/// Marks a query that reads this worker's own state only (another pool worker asks).
pub struct LocalOnly;

/// The other workers whose rows a query reads too, unless it is [`LocalOnly`].
pub(crate) fn peers_of<'a>(
    session: &dyn Session,
    peers: &'a Option<Arc<Peers>>,
) -> Option<&'a Arc<Peers>> {
    let local = session.config().get_extension::<LocalOnly>().is_some();
    peers.as_ref().filter(|_| !local)
}

/// Rows other workers gave, as rows of `schema` (the same table in the same pipeline). With
/// `covering`, this worker's snapshot of a window or view, the answers must hold every
/// partition's state exactly once (see [`check_coverage`]): else a sum over them would be
/// wrong, and the query is refused as the pool rebalancing.
pub(crate) async fn remote_rows(
    peers: &Peers,
    table: &str,
    schema: &SchemaRef,
    covering: Option<&LiveSnapshot>,
) -> DfResult<Vec<RecordBatch>> {
    let external = |e| datafusion::error::DataFusionError::External(Box::new(e));
    let answers = peers.fetch(table).await.map_err(external)?;
    if let Some(snapshot) = covering {
        covered(snapshot, &answers)?;
    }
    answers
        .into_iter()
        .flat_map(|a| a.rows)
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            // by name: a worker of an earlier version may lack a column added since (null)
            let columns = schema
                .fields()
                .iter()
                .map(|f| match b.schema().index_of(f.name()) {
                    Ok(i) => b.column(i).clone(),
                    Err(_) => arrow::array::new_null_array(f.data_type(), b.num_rows()),
                })
                .collect();
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| {
                datafusion::error::DataFusionError::Execution(format!(
                    "another worker's rows of {table} do not match this worker's table \
                     (are all workers running the same pipeline?): {e}"
                ))
            })
        })
        .collect()
}

/// Whether this worker's `snapshot` and the other workers' `answers` hold every partition's
/// state exactly once (see [`check_coverage`]).
fn covered(snapshot: &LiveSnapshot, answers: &[crate::peers::PeerRows]) -> DfResult<()> {
    let partitions = snapshot
        .partitions
        .iter()
        .map(|p| (p.source.as_str(), p.partition.as_str()));
    check_coverage(
        partitions,
        snapshot.owned.as_deref(),
        answers,
        snapshot.finished,
    )
    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
}

fn pinned(session: &dyn Session, live: &LiveState) -> Arc<LiveSnapshot> {
    session
        .config()
        .get_extension::<Pinned>()
        .map(|p| p.0.clone())
        .unwrap_or_else(|| live.current())
}

/// A plan that reads `batches` (one partition), projected.
fn scan_of(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(
        &[batches],
        schema.clone(),
        projection.cloned(),
    )?)
}

/// The table of one window or view.
#[derive(Debug)]
pub struct LiveTable {
    live: Arc<LiveState>,
    index: usize,
    schema: SchemaRef,
    /// Columns that are keys of the operator (equality filters on them prune rows early).
    keys: Vec<String>,
    /// In a pool: the other workers, whose rows are read too.
    peers: Option<Arc<Peers>>,
}

impl LiveTable {
    pub fn new(
        live: Arc<LiveState>,
        index: usize,
        keys: Vec<String>,
        peers: Option<Arc<Peers>>,
    ) -> Self {
        let schema = live.tables[index].schema.clone();
        LiveTable {
            live,
            index,
            schema,
            keys,
            peers,
        }
    }

    /// `key = literal` (either side), for a key column.
    fn key_equality(&self, e: &Expr) -> Option<(usize, ScalarValue)> {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
            return None;
        };
        if *op != Operator::Eq {
            return None;
        }
        let (col, lit) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                (c, v)
            }
            _ => return None,
        };
        if !self.keys.iter().any(|k| k == &col.name) {
            return None;
        }
        let idx = self.schema.index_of(&col.name).ok()?;
        Some((idx, lit.clone()))
    }
}

impl LiveTable {
    /// The rows of a view's batch whose key equals the literals of `equalities`, through the
    /// key index; `None` when the equalities do not bind every key column to one value.
    fn point_lookup(
        &self,
        index: &KeyIndex,
        batch: &RecordBatch,
        equalities: &[(usize, ScalarValue)],
    ) -> DfResult<Option<RecordBatch>> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let idx = self.schema.index_of(k)?;
            let mut values = equalities.iter().filter(|(i, _)| *i == idx).map(|(_, v)| v);
            let (Some(v), None) = (values.next(), values.next()) else {
                return Ok(None);
            };
            if v.is_null() {
                return Ok(Some(batch.slice(0, 0)));
            }
            keys.push(v.cast_to(self.schema.field(idx).data_type())?.to_array()?);
        }
        let ids = index
            .lookup(&keys)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let rows: Vec<u32> = ids
            .into_iter()
            .filter(|&id| (id as usize) < batch.num_rows())
            .collect();
        Ok(Some(take_record_batch(batch, &UInt32Array::from(rows))?))
    }
}

/// Keeps the rows of `batch` whose column `idx` equals `value` (null never equals).
fn keep_equal(batch: &RecordBatch, idx: usize, value: &ScalarValue) -> DfResult<RecordBatch> {
    let column = batch.column(idx);
    let value = value.cast_to(column.data_type())?;
    let scalar = value.to_scalar()?;
    let mask = arrow::compute::kernels::cmp::eq(column, &scalar)?;
    Ok(filter_record_batch(batch, &mask)?)
}

#[async_trait]
impl TableProvider for LiveTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Key equalities prune rows in the scan; DataFusion applies every filter again.
        Ok(filters
            .iter()
            .map(|f| {
                if self.key_equality(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = pinned(state, &self.live);
        let empty = Vec::new();
        let local = snapshot.tables.get(self.index).unwrap_or(&empty);
        let equalities: Vec<(usize, ScalarValue)> = filters
            .iter()
            .filter_map(|f| self.key_equality(f))
            .collect();
        let local_only = state.config().get_extension::<LocalOnly>().is_some();
        if !local_only && self.live.worker().is_some() && snapshot.owned.is_none() {
            // a pool worker's state before its first job published anything
            let starting = PeerError::Uncovered("this worker has not started its first job".into());
            return Err(datafusion::error::DataFusionError::External(Box::new(
                starting,
            )));
        }
        let remote = match peers_of(state, &self.peers) {
            Some(p) => {
                let table = &self.live.tables[self.index].name;
                remote_rows(p, table, &self.schema, Some(&snapshot)).await?
            }
            // a pool serving the Postgres protocol only asks no other worker: it answers
            // only when it holds every partition
            None if !local_only => {
                covered(&snapshot, &[])?;
                Vec::new()
            }
            None => Vec::new(),
        };
        let index = snapshot.indexes.get(self.index).cloned().flatten();
        if let (Some(index), [batch], true) = (index, local.as_slice(), remote.is_empty()) {
            if let Some(rows) = self.point_lookup(&index, batch, &equalities)? {
                return scan_of(vec![rows], &self.schema, projection);
            }
        }
        let batches = local.iter().chain(&remote);
        let batches = if equalities.is_empty() {
            batches.cloned().collect()
        } else {
            let mut out = Vec::new();
            for b in batches {
                let mut b = b.clone();
                for (idx, v) in &equalities {
                    b = keep_equal(&b, *idx, v)?;
                }
                if b.num_rows() > 0 {
                    out.push(b);
                }
            }
            out
        };
        scan_of(batches, &self.schema, projection)
    }
}

/// One row of `weir_status`, before it becomes columns.
struct StatusRow<'a> {
    source: &'a str,
    partition: &'a str,
    watermark: Option<i64>,
    newest: Option<i64>,
    ended: bool,
    lag: Option<i64>,
    counts: weir_engine::stats::PartitionCount,
    stage: &'static str,
}

/// `weir_status`: one row per source partition, with the run counters at the snapshot.
#[derive(Debug)]
pub struct StatusTable {
    live: Arc<LiveState>,
    schema: SchemaRef,
    peers: Option<Arc<Peers>>,
}

impl StatusTable {
    pub fn new(live: Arc<LiveState>, peers: Option<Arc<Peers>>) -> Self {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("pipeline", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("partition", DataType::Utf8, false),
            Field::new("watermark", ts.clone(), true),
            Field::new("max_event_time", ts.clone(), true),
            Field::new("ended", DataType::Boolean, false),
            Field::new("lag", DataType::Int64, true),
            Field::new("events_in", DataType::UInt64, false),
            Field::new("bad", DataType::UInt64, false),
            Field::new("late", DataType::UInt64, false),
            Field::new("windows_emitted", DataType::UInt64, false),
            Field::new("dead_letters", DataType::UInt64, false),
            Field::new("snapshot", DataType::UInt64, false),
            Field::new("snapshot_time", ts, true),
            Field::new("finished", DataType::Boolean, false),
            // in a worker pool, the worker that owns the partition
            Field::new("worker", DataType::Utf8, true),
            // `source`: the job reading the partition; `repartition`: a pool worker's
            // repartition stage reading an upstream partition into the internal topic
            // (null in the rows of a pool worker of an earlier version)
            Field::new("stage", DataType::Utf8, true),
        ]));
        StatusTable {
            live,
            schema,
            peers,
        }
    }

    /// The rows of a snapshot: the partitions the job reads, then the upstream partitions
    /// of this worker's repartition stages.
    pub fn rows(&self, s: &LiveSnapshot) -> DfResult<RecordBatch> {
        // a pool worker shows the partitions it owns
        let owned = s
            .partitions
            .iter()
            .filter(|p| self.live.owns(&p.source, &p.partition));
        let mut rows: Vec<StatusRow> = owned
            .map(|x| StatusRow {
                source: &x.source,
                partition: &x.partition,
                watermark: x.watermark,
                newest: x.newest,
                ended: x.ended,
                lag: x.lag,
                counts: x.counts,
                stage: "source",
            })
            .collect();
        rows.extend(s.stages.iter().map(|x| StatusRow {
            source: &x.source,
            partition: &x.partition,
            watermark: None,
            newest: None,
            ended: false,
            lag: x.lag,
            counts: weir_engine::stats::PartitionCount {
                records_in: x.forwarded,
                ..Default::default()
            },
            stage: "repartition",
        }));
        let n = rows.len();
        let counter = |name: &str| s.counters.get(name).copied().unwrap_or(0);
        let sum_prefix = |prefix: &str| -> u64 {
            s.counters
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| *v)
                .sum()
        };
        let repeat = |v: u64| Arc::new(UInt64Array::from(vec![v; n])) as ArrayRef;
        let ts = |v: Vec<Option<i64>>| {
            Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC")) as ArrayRef
        };
        let p = &rows;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.live.pipeline.as_str(); n])),
            Arc::new(StringArray::from_iter_values(p.iter().map(|x| x.source))),
            Arc::new(StringArray::from_iter_values(p.iter().map(|x| x.partition))),
            ts(p.iter().map(|x| x.watermark).collect()),
            ts(p.iter().map(|x| x.newest).collect()),
            Arc::new(BooleanArray::from_iter(p.iter().map(|x| Some(x.ended)))),
            Arc::new(Int64Array::from_iter(p.iter().map(|x| x.lag))),
            Arc::new(UInt64Array::from_iter_values(
                p.iter().map(|x| x.counts.records_in),
            )),
            Arc::new(UInt64Array::from_iter_values(
                p.iter().map(|x| x.counts.bad),
            )),
            Arc::new(UInt64Array::from_iter_values(
                p.iter().map(|x| x.counts.late),
            )),
            repeat(sum_prefix("windows/")),
            repeat(counter("dead_letters")),
            repeat(s.seq),
            ts(vec![(s.seq > 0).then_some(s.taken_ms); n]),
            Arc::new(BooleanArray::from(vec![s.finished; n])),
            Arc::new(StringArray::from(vec![self.live.worker(); n])),
            Arc::new(StringArray::from_iter_values(p.iter().map(|x| x.stage))),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for StatusTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = pinned(state, &self.live);
        let mut batches = vec![self.rows(&snapshot)?];
        if let Some(p) = peers_of(state, &self.peers) {
            batches.extend(remote_rows(p, "weir_status", &self.schema, None).await?);
        }
        scan_of(batches, &self.schema, projection)
    }
}
