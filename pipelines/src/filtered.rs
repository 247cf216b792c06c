//! A sink that passes on only the rows matching a predicate (a webhook's `where`).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use weir_engine::job::{Committable, Sink};
use weir_engine::{EngineError, RejectedRow};

/// `inner` given only the rows for which `predicate` is true (null counts as false; a
/// predicate that is not boolean is an error).
pub struct Filtered {
    inner: Box<dyn Sink>,
    predicate: Arc<dyn PhysicalExpr>,
    name: String,
}

impl Filtered {
    /// The sink named `name`, receiving only the rows `predicate` keeps.
    pub fn new(name: &str, inner: Box<dyn Sink>, predicate: Arc<dyn PhysicalExpr>) -> Self {
        Filtered {
            inner,
            predicate,
            name: name.to_string(),
        }
    }

    fn matching(&self, batch: &RecordBatch) -> Result<RecordBatch, EngineError> {
        let err = |e: weir_engine::error::Cause| EngineError::sink_caused(&self.name, "where", e);
        let value = self
            .predicate
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| err(e.into()))?;
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
        filter_record_batch(batch, &mask).map_err(|e| err(e.into()))
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
        let rows = self.matching(batch)?;
        // an empty batch still lets the sink send rows that waited long enough
        self.inner.write(&rows)
    }
    fn write_output(&mut self, output: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        let rows = self.matching(batch)?;
        self.inner.write_output(output, &rows)
    }
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        self.inner.take_rejected()
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
}
