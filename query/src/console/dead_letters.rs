//! `weir_dead_letters`: the newest dead letters this process wrote (kept in memory by the
//! engine, [`RecentDeadLetters`]), newest first; in a worker pool, every worker's.
//!
//! Unlike the other tables it is not part of the snapshot a query pins: it lists the records
//! kept when the query reads it.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringArray, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result as DfResult;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::{Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use weir_engine::dead_letter::RecentDeadLetter;
use weir_engine::live::LiveState;
use weir_engine::stats::CurrentStats;

use crate::peers::Peers;

/// The table's name.
pub const TABLE: &str = "weir_dead_letters";

/// Its columns.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("written", ts, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("partition", DataType::Utf8, true),
        Field::new("offset", DataType::UInt64, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("code", DataType::Utf8, false),
        Field::new("message", DataType::Utf8, false),
        Field::new("details", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
        Field::new("raw_truncated", DataType::Boolean, false),
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("worker", DataType::Utf8, true),
    ]))
}

/// The table over a run's kept dead letters.
pub struct DeadLettersTable {
    stats: CurrentStats,
    live: Arc<LiveState>,
    schema: SchemaRef,
    peers: Option<Arc<Peers>>,
}

impl std::fmt::Debug for DeadLettersTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLettersTable").finish_non_exhaustive()
    }
}

impl DeadLettersTable {
    pub fn new(
        stats: impl Into<CurrentStats>,
        live: Arc<LiveState>,
        peers: Option<Arc<Peers>>,
    ) -> Self {
        DeadLettersTable {
            stats: stats.into(),
            live,
            schema: schema(),
            peers,
        }
    }

    /// This process's rows, newest first: those `keep` takes, at most `limit`.
    pub fn rows(
        &self,
        keep: &dyn Fn(&RecentDeadLetter) -> bool,
        limit: Option<usize>,
    ) -> DfResult<RecordBatch> {
        let kept: Vec<Arc<RecentDeadLetter>> = self
            .stats
            .get()
            .recent_dead_letters
            .list()
            .into_iter()
            .rev()
            .filter(|d| keep(d))
            .take(limit.unwrap_or(usize::MAX))
            .collect();
        let n = kept.len();
        let text = |f: &dyn Fn(&RecentDeadLetter) -> Option<&str>| {
            Arc::new(StringArray::from_iter(kept.iter().map(|d| f(d)))) as ArrayRef
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(kept.iter().map(|d| d.written_ms))
                    .with_timezone("UTC"),
            ),
            text(&|d| Some(d.source.as_str())),
            text(&|d| d.partition.as_deref()),
            Arc::new(UInt64Array::from_iter(kept.iter().map(|d| d.offset))),
            text(&|d| Some(d.reason)),
            text(&|d| Some(d.code)),
            text(&|d| Some(d.message.as_str())),
            text(&|d| Some(d.details.as_str())),
            text(&|d| d.raw.as_deref()),
            Arc::new(BooleanArray::from_iter(
                kept.iter().map(|d| Some(d.raw_truncated)),
            )),
            text(&|d| d.trace_id.as_deref()),
            Arc::new(StringArray::from(vec![self.live.worker(); n])),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for DeadLettersTable {
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
        // `reason = '...'` and `code = '...'` are applied while the rows are built; DataFusion
        // applies every filter again (inexact), so this only saves work
        Ok(filters
            .iter()
            .map(|f| {
                if text_equality(f).is_some() {
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
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<(&str, String)> = filters.iter().filter_map(text_equality).collect();
        let keep = |d: &RecentDeadLetter| {
            wanted.iter().all(|(column, value)| match *column {
                "reason" => d.reason == value,
                "code" => d.code == value,
                "source" => d.source == *value,
                _ => true,
            })
        };
        // a limit reaches the scan only when no filter is left above it
        let mut batches = vec![self.rows(&keep, limit)?];
        if let Some(p) = crate::tables::peers_of(state, &self.peers) {
            batches.extend(crate::tables::remote_rows(p, TABLE, &self.schema, None).await?);
        }
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// A filter `column = 'text'` (either way round) on `reason`, `code` or `source`.
fn text_equality(filter: &Expr) -> Option<(&'static str, String)> {
    let Expr::BinaryExpr(b) = filter else {
        return None;
    };
    if b.op != Operator::Eq {
        return None;
    }
    let (column, value) = match (&*b.left, &*b.right) {
        (Expr::Column(c), Expr::Literal(v, ..)) | (Expr::Literal(v, ..), Expr::Column(c)) => (c, v),
        _ => return None,
    };
    let column = ["reason", "code", "source"]
        .into_iter()
        .find(|n| *n == column.name)?;
    match value {
        ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) => Some((column, v.clone())),
        ScalarValue::Utf8View(Some(v)) => Some((column, v.clone())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{QueryEngine, QueryLimits};
    use weir_engine::dead_letter::{DeadLetter, ErrorInfo, PartitionInfo, Reason};
    use weir_engine::stats::RunStats;

    fn letter(
        p: &Arc<PartitionInfo>,
        offset: u64,
        reason: Reason,
        code: &'static str,
    ) -> DeadLetter {
        DeadLetter {
            partition: p.clone(),
            offset: Some(offset),
            reason,
            error: ErrorInfo::new(code, format!("{code} at {offset}")).with("column", 1),
            raw: Some(format!("<b>{offset}</b>").into_bytes()),
            trace: Default::default(),
        }
    }

    #[tokio::test]
    async fn dead_letters_are_a_table_newest_first_and_filterable() {
        let live = Arc::new(LiveState::new("p", vec![]));
        let stats = Arc::new(RunStats::new(&["events".into()], &[], &[]));
        let p = Arc::new(PartitionInfo {
            source: "events".into(),
            id: 0,
            state_id: 0,
            number: 3,
            topic: Some("in".into()),
            file: None,
        });
        stats.recent_dead_letters.push(
            &[
                letter(&p, 7, Reason::Bad, "invalid_json"),
                letter(&p, 8, Reason::Late, "late_event"),
            ],
            1_000,
        );
        stats
            .recent_dead_letters
            .push(&[letter(&p, 9, Reason::Bad, "missing_field")], 2_000);
        let table = DeadLettersTable::new(stats.clone(), live.clone(), None);
        let newest = table.rows(&|_| true, Some(1)).unwrap();
        assert_eq!(newest.num_rows(), 1, "the limit is applied while building");
        let late = table.rows(&|d| d.reason == "late", None).unwrap();
        assert_eq!(late.num_rows(), 1);
        let engine = QueryEngine::new(live, QueryLimits::default())
            .unwrap()
            .with_dead_letters(stats, None)
            .unwrap();
        for (sql, want) in [
            (
                r#"SELECT "offset" FROM weir_dead_letters LIMIT 2"#,
                vec![9, 8],
            ),
            (
                r#"SELECT "offset" FROM weir_dead_letters WHERE code = 'late_event'"#,
                vec![8],
            ),
            (
                r#"SELECT "offset" FROM weir_dead_letters WHERE 'bad' = reason AND "offset" < 9 LIMIT 5"#,
                vec![7],
            ),
            (
                r#"SELECT "offset" FROM weir_dead_letters WHERE code = 'late_event' OR code = 'missing_field'"#,
                vec![9, 8],
            ),
        ] {
            let a = engine.query(sql).await.unwrap();
            let batch = arrow::compute::concat_batches(&a.schema, &a.batches).unwrap();
            let got = batch
                .column(0)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap()
                .values()
                .to_vec();
            assert_eq!(got, want, "{sql}");
        }
        let all = engine
            .query(r#"SELECT "offset", "partition", details FROM weir_dead_letters"#)
            .await
            .unwrap();
        let batch = arrow::compute::concat_batches(&all.schema, &all.batches).unwrap();
        let offsets = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(offsets.values().to_vec(), vec![9, 8, 7], "newest first");
        let parts = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(parts.value(0), "in/3");
        let details = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(details.value(0), r#"{"column":1}"#);
        let bad = engine
            .query("SELECT code, raw FROM weir_dead_letters WHERE reason = 'bad' ORDER BY written")
            .await
            .unwrap();
        let batch = arrow::compute::concat_batches(&bad.schema, &bad.batches).unwrap();
        let codes = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            (codes.value(0), codes.value(1)),
            ("invalid_json", "missing_field")
        );
        let raw = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(raw.value(0), "<b>7</b>");
    }
}
