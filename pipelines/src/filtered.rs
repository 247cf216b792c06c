//! A sink that passes on only the rows matching a predicate (a webhook's `where`).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use weir_engine::job::Sink;
use weir_engine::{EngineError, RejectedRow};

/// `inner` given only the rows for which `predicate` is true (null counts as false).
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
        let err = |e: &dyn std::fmt::Display| EngineError::sink(&self.name, format!("where: {e}"));
        let value = self
            .predicate
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| err(&e))?;
        let mask = value
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
        // nulls do not match
        let mask = match mask.nulls() {
            Some(_) => mask.iter().map(|v| Some(v == Some(true))).collect(),
            None => mask,
        };
        filter_record_batch(batch, &mask).map_err(|e| err(&e))
    }
}

impl Sink for Filtered {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let rows = self.matching(batch)?;
        // an empty batch still lets the sink send rows that waited long enough
        self.inner.write(&rows)
    }
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
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        self.inner.take_rejected()
    }
}
