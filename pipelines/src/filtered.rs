//! A sink that passes on only the rows matching a predicate (a webhook's `where`).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use weir_engine::job::{Committable, Sink};
use weir_engine::{EngineError, RejectedRow};

/// `inner` given only the rows for which `predicate` is true (null counts as false; a
/// predicate that is not boolean is an error). A row the predicate fails on (a division by
/// zero) is not given, and goes to the dead-letter output as `expression_error`: failing the
/// run would fail it again at every restore.
pub struct Filtered {
    inner: Box<dyn Sink>,
    predicate: Arc<dyn PhysicalExpr>,
    name: String,
    /// Rows the predicate failed on, in writes that went through.
    rejected: Vec<RejectedRow>,
}

impl Filtered {
    /// The sink named `name`, receiving only the rows `predicate` keeps.
    pub fn new(name: &str, inner: Box<dyn Sink>, predicate: Arc<dyn PhysicalExpr>) -> Self {
        Filtered {
            inner,
            predicate,
            name: name.to_string(),
            rejected: Vec::new(),
        }
    }

    /// The predicate's value on each row of `batch`; when it fails on the batch, row by row
    /// (false for a row it fails on, which goes to `failed`).
    fn evaluate(
        &self,
        batch: &RecordBatch,
        failed: &mut Vec<RejectedRow>,
    ) -> Result<arrow::array::ArrayRef, EngineError> {
        let all = |b: &RecordBatch| {
            self.predicate
                .evaluate(b)
                .and_then(|v| v.into_array(b.num_rows()))
        };
        let first = match all(batch) {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let mut values = Vec::with_capacity(batch.num_rows());
        let mut line = Vec::new();
        for i in 0..batch.num_rows() {
            let row = batch.slice(i, 1);
            match all(&row) {
                Ok(v) => values.push(v),
                // (an error no row causes, such as an internal one, is the run's)
                Err(e) if !weir_operators::isolate::is_row_error(&e) => {
                    return Err(EngineError::sink_caused(&self.name, "where", e));
                }
                Err(e) => {
                    let mut raw = Vec::new();
                    let _ = weir_formats::json_rows::for_each_json_row(&row, &mut line, |_, j| {
                        raw.extend_from_slice(j);
                        Ok(())
                    });
                    let message = e.strip_backtrace();
                    failed.push(RejectedRow {
                        raw,
                        error: weir_engine::ErrorInfo::new("expression_error", message)
                            .with("sink", self.name.clone())
                            .with("expression", "where"),
                    });
                    values.push(Arc::new(BooleanArray::from(vec![false])));
                }
            }
        }
        if values.is_empty() {
            return Err(EngineError::sink_caused(&self.name, "where", first));
        }
        let refs: Vec<&dyn Array> = values.iter().map(|v| v.as_ref()).collect();
        arrow::compute::concat(&refs).map_err(|e| EngineError::sink_caused(&self.name, "where", e))
    }

    /// The rows of `batch` the predicate keeps, and those it failed on.
    fn matching(
        &self,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, Vec<RejectedRow>), EngineError> {
        let mut failed = Vec::new();
        let value = self.evaluate(batch, &mut failed)?;
        let err = |e: weir_engine::error::Cause| EngineError::sink_caused(&self.name, "where", e);
        let mask = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| {
                EngineError::sink(
                    &self.name,
                    format!(
                        "where: the predicate is {}, not boolean: it cannot choose rows",
                        value.data_type()
                    ),
                )
            })?;
        // nulls do not match
        let mask = match mask.nulls() {
            Some(_) => mask.iter().map(|v| Some(v == Some(true))).collect(),
            None => mask,
        };
        let rows = filter_record_batch(batch, &mask).map_err(|e| err(e.into()))?;
        Ok((rows, failed))
    }
}

impl Committable for Filtered {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.inner.flush()
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        self.inner.finish()
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.inner.pre_commit(epoch)
    }
    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        self.inner.commit(epoch)
    }
    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        self.inner.recover(from)
    }
}

impl Sink for Filtered {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let (rows, failed) = self.matching(batch)?;
        // an empty batch still lets the sink send rows that waited long enough
        self.inner.write(&rows)?;
        // (once the write went through: a retried write evaluates the rows again)
        self.rejected.extend(failed);
        Ok(())
    }
    fn write_output(&mut self, output: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        let (rows, failed) = self.matching(batch)?;
        self.inner.write_output(output, &rows)?;
        self.rejected.extend(failed);
        Ok(())
    }
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        let mut rejected = std::mem::take(&mut self.rejected);
        rejected.extend(self.inner.take_rejected());
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{col, lit, BinaryExpr};

    /// A sink keeping what it is given.
    struct Keep(Arc<std::sync::Mutex<Vec<RecordBatch>>>);

    impl Committable for Keep {
        fn flush(&mut self) -> Result<bool, EngineError> {
            Ok(true)
        }
        fn finish(&mut self) -> Result<(), EngineError> {
            Ok(())
        }
    }

    impl Sink for Keep {
        fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
            self.0.lock().unwrap().push(batch.clone());
            Ok(())
        }
    }

    #[test]
    fn a_boolean_predicate_chooses_rows_and_another_is_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(1), Some(50), None]))],
        )
        .unwrap();
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gt = Arc::new(BinaryExpr::new(
            col("n", &schema).unwrap(),
            Operator::Gt,
            lit(10i64),
        ));
        let mut f = Filtered::new("hook", Box::new(Keep(kept.clone())), gt);
        f.write(&batch).unwrap();
        assert_eq!(
            kept.lock().unwrap()[0].num_rows(),
            1,
            "50 > 10; null is false"
        );
        // `n` itself: an integer, not a choice
        let mut f = Filtered::new(
            "hook",
            Box::new(Keep(kept.clone())),
            col("n", &schema).unwrap(),
        );
        let e = f.write(&batch).unwrap_err().to_string();
        assert!(e.contains("not boolean"), "{e}");
        assert_eq!(kept.lock().unwrap().len(), 1, "nothing written");
    }

    #[test]
    fn a_row_the_predicate_fails_on_is_dead_lettered_and_the_others_chosen() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(1), Some(0), Some(50)]))],
        )
        .unwrap();
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        // 100 / n > 10: a division by zero on the second row
        let div = Arc::new(BinaryExpr::new(
            lit(100i64),
            Operator::Divide,
            col("n", &schema).unwrap(),
        ));
        let gt = Arc::new(BinaryExpr::new(div, Operator::Gt, lit(10i64)));
        let mut f = Filtered::new("hook", Box::new(Keep(kept.clone())), gt);
        f.write(&batch).expect("the run goes on");
        let kept = kept.lock().unwrap();
        assert_eq!(kept[0].num_rows(), 1, "100 / 1 > 10 only");
        let rejected = f.take_rejected();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].error.code, "expression_error");
        assert_eq!(rejected[0].raw, br#"{"n":0}"#);
    }
}
