//! `-x` that fails on overflow: DataFusion's negation wraps, so `-x` of `i64::MIN` answered
//! `i64::MIN`. [`CheckedNegative`] prints as DataFusion's does (`(- x)`), so a checkpoint's
//! fingerprint, which holds the expression's text, is the same with it.

use std::any::Any;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::compute::kernels::numeric::neg;
use arrow::datatypes::{DataType, FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;

/// Negation with arrow's checked kernel: an overflow fails the rows' evaluation.
#[derive(Debug, Eq)]
pub struct CheckedNegative {
    arg: Arc<dyn PhysicalExpr>,
}

impl CheckedNegative {
    pub fn new(arg: Arc<dyn PhysicalExpr>) -> Self {
        CheckedNegative { arg }
    }
}

impl PartialEq for CheckedNegative {
    fn eq(&self, other: &Self) -> bool {
        self.arg.eq(&other.arg)
    }
}

impl Hash for CheckedNegative {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.arg.hash(state);
    }
}

impl fmt::Display for CheckedNegative {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "(- {})", self.arg)
    }
}

impl PhysicalExpr for CheckedNegative {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.arg.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.arg.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.arg.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.arg.evaluate(batch)? {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(neg(array.as_ref())?)),
            ColumnarValue::Scalar(scalar) => {
                let negated = neg(&scalar.to_array()?)?;
                Ok(ColumnarValue::Scalar(
                    datafusion::common::ScalarValue::try_from_array(&negated, 0)?,
                ))
            }
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.arg]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(CheckedNegative::new(children[0].clone())))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(- ")?;
        self.arg.fmt_sql(f)?;
        write!(f, ")")
    }
}
