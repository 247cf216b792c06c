//! Row-level isolation of expression errors.
//!
//! A `where`, an aggregate's argument or its `FILTER` can fail on one row's values (a division
//! by zero, a cast of `'abc'` to a number, an overflowing cast): DataFusion then fails the
//! whole batch. Operators evaluate every expression of a batch before they change any state,
//! so a failed batch changed nothing; [`process_isolating`] then finds the failing rows by
//! evaluating halves of the batch (the error path only: a batch that evaluates costs nothing
//! more), dead-letters them as `bad` with the code `expression_error` and DataFusion's
//! message, and processes the other rows. Such a row never reaches the state, so a restore
//! from a checkpoint does not meet it again: no crash loop.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::{DeadLetter, EngineError, ErrorInfo, EventBatch, Reason};

use crate::compile::CompiledAggregate;

/// The dead-letter code of a row whose expression failed.
pub const EXPRESSION_ERROR: &str = "expression_error";

/// Batches of at most this many rows are checked row by row rather than halved again.
const ROW_BY_ROW: usize = 8;

/// Why an operator could not process a batch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// An expression failed on the batch's values (see [`is_row_error`]): some rows cause it.
    #[error("{0}")]
    Expression(DataFusionError),
    /// Anything else: the run fails.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl BatchError {
    /// `e` of operator `name`: an expression error when its kind is one rows cause.
    pub fn of(name: &str, e: DataFusionError) -> Self {
        if is_row_error(&e) {
            BatchError::Expression(e)
        } else {
            BatchError::Engine(EngineError::operator_caused(name, "", e))
        }
    }
}

/// Whether `e` is of a kind that evaluating an expression over values raises: Arrow's
/// division by zero, overflow, cast, parse, compute and invalid-argument errors, and
/// DataFusion's execution errors (its functions' complaints about an argument). Planning,
/// internal, resource and I/O errors are not.
pub fn is_row_error(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::ArrowError(a, _) => matches!(
            **a,
            ArrowError::DivideByZero
                | ArrowError::ArithmeticOverflow(_)
                | ArrowError::CastError(_)
                | ArrowError::ParseError(_)
                | ArrowError::ComputeError(_)
                | ArrowError::InvalidArgumentError(_)
        ),
        DataFusionError::Execution(_) => true,
        _ => false,
    }
}

/// Evaluates `expr` over `batch` into one value per row.
pub(crate) fn evaluate(
    expr: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> datafusion::error::Result<ArrayRef> {
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
}

/// The expressions an operator evaluates per row.
#[derive(Clone, Copy)]
pub(crate) struct RowExprs<'a> {
    pub predicate: Option<&'a Arc<dyn PhysicalExpr>>,
    pub aggregates: &'a [CompiledAggregate],
}

impl RowExprs<'_> {
    /// Evaluates everything on `batch` as the operator does (aggregates on the rows its
    /// `where` keeps); the first failure, with what failed (`where` or the aggregate's name).
    fn check(&self, batch: &RecordBatch) -> Result<(), (String, DataFusionError)> {
        let kept;
        let rows = match self.predicate {
            Some(p) => {
                let pass = evaluate(p, batch).map_err(|e| ("where".to_string(), e))?;
                let pass = pass.as_boolean();
                kept = filter_record_batch(batch, pass)
                    .map_err(|e| ("where".to_string(), e.into()))?;
                &kept
            }
            None => batch,
        };
        for a in self.aggregates {
            for e in a.inputs.iter().chain(&a.filter) {
                evaluate(e, rows).map_err(|e| (a.name.clone(), e))?;
            }
        }
        Ok(())
    }

    /// The rows of `batch` on which an expression fails alone: (row, what failed, DataFusion's
    /// message), in row order, found by halves.
    pub fn failing_rows(&self, batch: &RecordBatch) -> Vec<(usize, String, String)> {
        let mut out = Vec::new();
        self.bisect(batch, 0, batch.num_rows(), &mut out);
        out
    }

    fn bisect(
        &self,
        batch: &RecordBatch,
        from: usize,
        len: usize,
        out: &mut Vec<(usize, String, String)>,
    ) {
        if len == 0 {
            return;
        }
        let Err((what, e)) = self.check(&batch.slice(from, len)) else {
            return;
        };
        if !is_row_error(&e) {
            return;
        }
        if len == 1 {
            out.push((from, what, e.strip_backtrace()));
        } else if len <= ROW_BY_ROW {
            for i in from..from + len {
                self.bisect(batch, i, 1, out);
            }
        } else {
            let half = len / 2;
            self.bisect(batch, from, half, out);
            self.bisect(batch, from + half, len - half, out);
        }
    }
}

/// Processes `events` with `attempt`; when it fails on an expression, dead-letters the rows
/// on which `exprs` fail (evaluated over `extend(events)`, the batch the operator evaluates)
/// and processes the other rows. `attempt` must leave the state unchanged when it fails;
/// what it pushed to `dead` is taken back. An expression error that no single row causes
/// (a guard such as `x <> 0 AND 100 / x > 1`: DataFusion evaluates the right side on the
/// whole batch when many rows pass the guard, on nothing for the guarded row alone) is
/// avoided by processing the rows in smaller pieces (see [`process_in_pieces`]).
pub(crate) fn process_isolating(
    name: &str,
    partition: &Arc<PartitionInfo>,
    (events, row_watermarks): (&EventBatch, &[i64]),
    dead: &mut Vec<DeadLetter>,
    exprs: RowExprs<'_>,
    extend: impl Fn(&EventBatch) -> Result<RecordBatch, EngineError>,
    mut attempt: impl FnMut(&EventBatch, &[i64], &mut Vec<DeadLetter>) -> Result<u64, BatchError>,
) -> Result<u64, EngineError> {
    let mark = dead.len();
    let first = match attempt(events, row_watermarks, dead) {
        Ok(late) => return Ok(late),
        Err(BatchError::Engine(e)) => return Err(e),
        Err(BatchError::Expression(e)) => e,
    };
    dead.truncate(mark);
    let failing = exprs.failing_rows(&extend(events)?);
    if failing.is_empty() {
        tracing::debug!(operator = name, error = %first, "an expression failed on a batch but on none of its rows alone: processing it in pieces");
        return in_halves(name, events, row_watermarks, dead, &mut attempt);
    }
    tracing::warn!(
        operator = name,
        rows = failing.len(),
        error = %failing[0].2,
        "expression errors: rows dead-lettered"
    );
    let drop: Vec<usize> = failing.iter().map(|f| f.0).collect();
    let (rest, rest_watermarks) = without_rows(events, row_watermarks, &drop)
        .map_err(|e| EngineError::operator_caused(name, "", e))?;
    for (i, what, message) in failing {
        dead.push(DeadLetter {
            partition: partition.clone(),
            offset: events.offsets.get(i).copied(),
            trace: events.trace_of(i),
            reason: Reason::Bad,
            error: ErrorInfo::new(EXPRESSION_ERROR, message)
                .with("operator", name)
                .with("expression", what),
            raw: events.raw_row(i),
        });
    }
    process_in_pieces(name, &rest, &rest_watermarks, dead, &mut attempt)
}

/// Processes `events` with `attempt`, in halves (recursively, in row order) while a piece
/// fails on an expression: for batches whose error no single row causes. A single row that
/// still fails fails the run.
fn process_in_pieces(
    name: &str,
    events: &EventBatch,
    row_watermarks: &[i64],
    dead: &mut Vec<DeadLetter>,
    attempt: &mut impl FnMut(&EventBatch, &[i64], &mut Vec<DeadLetter>) -> Result<u64, BatchError>,
) -> Result<u64, EngineError> {
    let mark = dead.len();
    match attempt(events, row_watermarks, dead) {
        Ok(late) => Ok(late),
        Err(BatchError::Engine(e)) => Err(e),
        Err(BatchError::Expression(e)) if events.batch.num_rows() <= 1 => {
            Err(EngineError::operator_caused(name, "", e))
        }
        Err(BatchError::Expression(_)) => {
            dead.truncate(mark);
            in_halves(name, events, row_watermarks, dead, attempt)
        }
    }
}

/// [`process_in_pieces`] of each half of `events`, in order (a batch that just failed).
fn in_halves(
    name: &str,
    events: &EventBatch,
    row_watermarks: &[i64],
    dead: &mut Vec<DeadLetter>,
    attempt: &mut impl FnMut(&EventBatch, &[i64], &mut Vec<DeadLetter>) -> Result<u64, BatchError>,
) -> Result<u64, EngineError> {
    let n = events.batch.num_rows();
    let half = n / 2;
    let split = |drop: Vec<usize>| {
        without_rows(events, row_watermarks, &drop)
            .map_err(|e| EngineError::operator_caused(name, "", e))
    };
    let (first, first_watermarks) = split((half..n).collect())?;
    let (second, second_watermarks) = split((0..half).collect())?;
    let late = process_in_pieces(name, &first, &first_watermarks, dead, attempt)?;
    Ok(late + process_in_pieces(name, &second, &second_watermarks, dead, attempt)?)
}

/// `events` and their row watermarks without the rows `drop` (ascending).
pub(crate) fn without_rows(
    events: &EventBatch,
    row_watermarks: &[i64],
    drop: &[usize],
) -> Result<(EventBatch, Vec<i64>), ArrowError> {
    let n = events.batch.num_rows();
    let mut keep = Vec::with_capacity(n.saturating_sub(drop.len()));
    let mut d = drop.iter().peekable();
    for i in 0..n {
        if d.peek() == Some(&&i) {
            d.next();
        } else {
            keep.push(i as u32);
        }
    }
    let watermarks = keep.iter().map(|&i| row_watermarks[i as usize]).collect();
    Ok((events.retain_rows(&keep)?, watermarks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{ViewConfig, ViewMerger, ViewWorker};
    use crate::window::{TimeMode, WindowConfig, WindowMerger, WindowWorker};
    use crate::SqlCompiler;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use weir_engine::events::{RawRows, SharedBytes};
    use weir_engine::job::{MergeOperator, WorkerOperator};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("datasetName", DataType::Utf8, true),
            Field::new("recordCount", DataType::Int64, true),
            Field::new("sizeBytes", DataType::Int64, true),
            Field::new("format", DataType::Utf8, true),
        ]))
    }

    /// Rows (key, recordCount, sizeBytes, format) at times 1000, 2000, ...; raw bytes "row<i>".
    fn events(rows: &[(&str, i64, i64, &str)]) -> EventBatch {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for i in 0..rows.len() {
            let s = bytes.len() as u32;
            bytes.extend_from_slice(format!("row{i}").as_bytes());
            spans.push((s, bytes.len() as u32));
        }
        EventBatch {
            batch,
            event_time: (0..rows.len() as i64).map(|i| 1000 * (i + 1)).collect(),
            offsets: (0..rows.len() as u64).collect(),
            raw: Some(RawRows {
                bytes: SharedBytes::from(bytes),
                spans,
                headers: None,
            }),
        }
    }

    fn partition() -> Arc<PartitionInfo> {
        Arc::new(PartitionInfo {
            source: "events".into(),
            id: 0,
            state_id: 0,
            number: 0,
            topic: None,
            file: None,
        })
    }

    fn window(filter: Option<&str>, aggs: &[(&str, &str)]) -> Arc<WindowConfig> {
        let c = SqlCompiler::new();
        let s = schema();
        Arc::new(WindowConfig {
            name: "w".into(),
            input_schema: s.clone(),
            predicate: filter.map(|f| c.predicate(f, &s).unwrap()),
            keys: vec!["datasetName".into()],
            size_ms: 60_000,
            allowed_lateness_ms: 0,
            time: TimeMode::Event,
            aggregates: aggs
                .iter()
                .map(|(n, sql)| c.aggregate(n, sql, &s).unwrap())
                .collect(),
            key_partitioned: false,
            partition_state: false,
        })
    }

    /// (key, the first aggregate as a string) of every emitted row.
    fn emitted(batches: &[RecordBatch]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for b in batches {
            let k = b.column(0).as_string::<i32>();
            let v = arrow::util::display::ArrayFormatter::try_new(
                b.column(3).as_ref(),
                &Default::default(),
            )
            .unwrap();
            for i in 0..b.num_rows() {
                out.push((k.value(i).to_string(), v.value(i).to_string()));
            }
        }
        out.sort();
        out
    }

    fn run_window(
        config: Arc<WindowConfig>,
        ev: &EventBatch,
    ) -> (Vec<RecordBatch>, Vec<DeadLetter>) {
        let mut w = WindowWorker::new(config.clone()).unwrap();
        let mut dead = Vec::new();
        let wms = vec![i64::MIN; ev.batch.num_rows()];
        w.process(&partition(), ev, &wms, &mut dead).unwrap();
        let mut m = WindowMerger::new(config).unwrap();
        for p in w.flush(i64::MAX).unwrap() {
            m.merge(p).unwrap();
        }
        (m.emit(i64::MAX).unwrap(), dead)
    }

    fn codes(dead: &[DeadLetter]) -> Vec<(u64, &'static str, String)> {
        dead.iter()
            .map(|d| {
                (
                    d.offset.unwrap(),
                    d.error.code,
                    String::from_utf8(d.raw.clone().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_division_by_zero_in_where_dead_letters_its_row_only() {
        let config = window(Some("100 / recordCount >= 0"), &[("events", "count(*)")]);
        let mut rows: Vec<(&str, i64, i64, &str)> = (0..100).map(|_| ("a", 5, 1, "x")).collect();
        rows[37].1 = 0;
        rows[90] = ("b", 0, 1, "x");
        let (out, dead) = run_window(config, &events(&rows));
        // times 1 s to 100 s: two windows, 59 - 1 and 41 - 1 rows
        assert_eq!(
            emitted(&out),
            vec![("a".into(), "40".into()), ("a".into(), "58".into())]
        );
        assert_eq!(
            codes(&dead),
            vec![
                (37, EXPRESSION_ERROR, "row37".into()),
                (90, EXPRESSION_ERROR, "row90".into())
            ]
        );
        assert_eq!(dead[0].reason, Reason::Bad);
        assert!(
            dead[0].error.message.contains("Divide by zero"),
            "{:?}",
            dead[0].error
        );
        assert_eq!(dead[0].error.details["expression"], "where");
    }

    #[test]
    fn a_failing_aggregate_argument_or_cast_leaves_no_trace_in_any_aggregate() {
        // the row fails the second aggregate's cast: the first must not count it either
        let config = window(
            None,
            &[
                ("events", "count(*)"),
                ("n", "sum(CAST(format AS BIGINT))"),
                (
                    "q",
                    "sum(sizeBytes / recordCount) FILTER (WHERE recordCount <> 1)",
                ),
            ],
        );
        let rows = [
            ("a", 1, 10, "1"),
            ("a", 2, 10, "oops"),
            ("a", 2, 10, "2"),
            ("b", 0, 10, "3"),
        ];
        let (out, dead) = run_window(config, &events(&rows));
        assert_eq!(emitted(&out), vec![("a".into(), "2".into())]);
        let b = &out[0];
        assert_eq!(
            b.column(4)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            3
        );
        assert_eq!(
            codes(&dead),
            vec![
                (1, EXPRESSION_ERROR, "row1".into()),
                (3, EXPRESSION_ERROR, "row3".into())
            ]
        );
        assert_eq!(dead[0].error.details["expression"], "n");
        assert_eq!(dead[1].error.details["expression"], "q");
    }

    #[test]
    fn rows_the_where_removes_are_not_evaluated_by_aggregates() {
        let config = window(
            Some("recordCount <> 0"),
            &[("q", "sum(sizeBytes / recordCount)")],
        );
        let rows = [("a", 0, 10, "x"), ("a", 2, 10, "x")];
        let (out, dead) = run_window(config, &events(&rows));
        assert!(dead.is_empty());
        assert_eq!(emitted(&out), vec![("a".into(), "5".into())]);
    }

    #[test]
    fn a_guarded_expression_that_fails_only_on_the_whole_batch_is_processed_in_pieces() {
        // DataFusion evaluates the right side of AND on every row when many pass the guard
        // (so 100 / 0 fails the batch), and on none for the guarded row alone: no row fails
        // alone, and the rows are not bad
        for (guard, guarded) in [
            (
                "recordCount <> 0 AND 100 / recordCount > 1",
                ("a", 0, 10, "x"),
            ),
            (
                "sizeBytes < 1000 AND recordCount * sizeBytes > 0",
                ("a", 7, i64::MAX / 2, "x"),
            ),
        ] {
            let config = window(Some(guard), &[("events", "count(*)")]);
            let mut rows = vec![("a", 7, 10, "x"); 9];
            rows.insert(4, guarded);
            let (out, dead) = run_window(config, &events(&rows));
            assert!(dead.is_empty(), "{guard}: {:?}", codes(&dead));
            assert_eq!(emitted(&out), vec![("a".into(), "9".into())], "{guard}");
        }
    }

    #[test]
    fn an_error_no_row_causes_alone_fails_the_batch() {
        // every row is fine alone; nothing to isolate: the error stays the run's
        let config = window(None, &[("events", "count(*)")]);
        let mut dead = Vec::new();
        let ev = events(&[("a", 1, 1, "x")]);
        let r = process_isolating(
            "w",
            &partition(),
            (&ev, &[i64::MIN]),
            &mut dead,
            RowExprs {
                predicate: None,
                aggregates: &config.aggregates,
            },
            |e| Ok(e.batch.clone()),
            |_, _, _| {
                Err(BatchError::Expression(DataFusionError::Execution(
                    "boom".into(),
                )))
            },
        );
        assert!(r.is_err());
        assert!(dead.is_empty());
    }

    #[test]
    fn a_view_dead_letters_failing_rows_and_keeps_the_others() {
        let c = SqlCompiler::new();
        let s = schema();
        let config = Arc::new(ViewConfig {
            name: "v".into(),
            input_schema: s.clone(),
            predicate: Some(c.predicate("100 / recordCount > 0", &s).unwrap()),
            keys: vec!["datasetName".into()],
            aggregates: vec![c.aggregate("n", "count(*)", &s).unwrap()],
            retain_ms: None,
            changelog: false,
            partition_state: false,
        });
        let mut w = ViewWorker::new(config.clone()).unwrap();
        let mut dead = Vec::new();
        let ev = events(&[("a", 1, 1, "x"), ("a", 0, 1, "x"), ("b", 3, 1, "x")]);
        w.process(&partition(), &ev, &[i64::MIN; 3], &mut dead)
            .unwrap();
        assert_eq!(codes(&dead), vec![(1, EXPRESSION_ERROR, "row1".into())]);
        let mut m = ViewMerger::new(config).unwrap();
        for p in w.flush(weir_engine::clock::WATERMARK_END).unwrap() {
            m.merge(p).unwrap();
        }
        let rows = m.emit(weir_engine::clock::WATERMARK_END).unwrap();
        let mut got = Vec::new();
        for b in &rows {
            let k = b.column(0).as_string::<i32>();
            let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                got.push((k.value(i).to_string(), n.value(i)));
            }
        }
        got.sort();
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 1)]);
    }

    #[test]
    fn without_rows_keeps_raw_bytes_offsets_and_watermarks_aligned() {
        let ev = events(&[("a", 1, 1, "x"), ("b", 2, 1, "x"), ("c", 3, 1, "x")]);
        let (rest, wms) = without_rows(&ev, &[10, 20, 30], &[1]).unwrap();
        assert_eq!(rest.batch.num_rows(), 2);
        assert_eq!(rest.offsets, vec![0, 2]);
        assert_eq!(rest.event_time, vec![1000, 3000]);
        assert_eq!(wms, vec![10, 30]);
        assert_eq!(rest.raw_row(1).unwrap(), b"row2");
    }
}
