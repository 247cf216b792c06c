//! `sum` of integers that fails on overflow in SQL queries, as PostgreSQL's does.
//!
//! DataFusion adds 64-bit integers with wrapping: `SELECT sum(bytes)` over a view whose
//! byte counts add up past 2^63 answered a negative number. [`CheckedSum`] replaces the
//! session's `sum` (registered under the same name): a sum whose result is `Int64` or
//! `UInt64` is added as `Decimal128(38, 0)` by DataFusion's own decimal accumulators (38
//! digits hold the sum of 2^64 values of 2^63, so it cannot wrap) and each result is
//! converted back to the integer type, failing with "arithmetic overflow" (SQLSTATE 22003)
//! when it does not fit. Every other argument type is DataFusion's `sum` as it is. The result
//! type does not change, so names, schemas and clients see what they saw; only a number
//! that would have been wrong becomes an error. (PostgreSQL's `sum(bigint)` answers
//! `numeric` instead; weir keeps DataFusion's types.) SQL is not the hot path: the cast of
//! each value to the decimal costs what it costs here, where pipelines use their own
//! 128-bit sum.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef};
use arrow::error::ArrowError;
use datafusion::common::{Result, ScalarValue};
use datafusion::functions_aggregate::sum::Sum;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, ReversedUDAF,
    SetMonotonicity, Signature,
};

/// The type integer sums are added in.
const WIDE: DataType = DataType::Decimal128(38, 0);

/// DataFusion's `sum`, checked for integer results (see the module's documentation).
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct CheckedSum {
    inner: Sum,
}

/// The session's `sum`.
pub fn checked_sum() -> AggregateUDF {
    AggregateUDF::from(CheckedSum::default())
}

/// The integer type a sum returning `t` is checked for, if any.
fn integer(t: &DataType) -> Option<DataType> {
    matches!(t, DataType::Int64 | DataType::UInt64).then(|| t.clone())
}

/// `field` as the wide decimal, keeping its name and nullability.
fn widened(field: &FieldRef) -> FieldRef {
    Arc::new(Field::new(field.name(), WIDE, true))
}

impl CheckedSum {
    /// `args` for DataFusion's decimal sum: its argument and result are the wide decimal.
    fn with_wide_args<T>(
        &self,
        args: AccumulatorArgs,
        make: impl FnOnce(&Sum, AccumulatorArgs) -> Result<T>,
    ) -> Result<T> {
        let inputs: Vec<FieldRef> = args.expr_fields.iter().map(widened).collect();
        let wide = AccumulatorArgs {
            return_field: widened(&args.return_field),
            expr_fields: &inputs,
            ..args
        };
        make(&self.inner, wide)
    }
}

impl AggregateUDFImpl for CheckedSum {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let Some(to) = integer(args.return_field.data_type()) else {
            return self.inner.accumulator(args);
        };
        let inner = self.with_wide_args(args, |s, a| s.accumulator(a))?;
        Ok(Box::new(Checked { inner, to }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if integer(args.return_field.data_type()).is_none() {
            return self.inner.state_fields(args);
        }
        let inputs: Vec<FieldRef> = args.input_fields.iter().map(widened).collect();
        self.inner.state_fields(StateFieldsArgs {
            return_field: widened(&args.return_field),
            input_fields: &inputs,
            ..args
        })
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let Some(to) = integer(args.return_field.data_type()) else {
            return self.inner.create_groups_accumulator(args);
        };
        let inner = self.with_wide_args(args, |s, a| s.create_groups_accumulator(a))?;
        Ok(Box::new(CheckedGroups { inner, to }))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        // (DataFusion's sliding `sum(DISTINCT)` takes 64-bit integers only: it stays as it is)
        let to = integer(args.return_field.data_type()).filter(|_| !args.is_distinct);
        let Some(to) = to else {
            return self.inner.create_sliding_accumulator(args);
        };
        let inner = self.with_wide_args(args, |s, a| s.create_sliding_accumulator(a))?;
        Ok(Box::new(Checked { inner, to }))
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner.reverse_expr()
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }
}

/// `values` (one integer column) as the wide decimal.
fn widen(values: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    values
        .iter()
        .map(|v| Ok(arrow::compute::cast(v, &WIDE)?))
        .collect()
}

/// The wide sums `sums` as `to`; an error naming the first that does not fit.
fn narrow(sums: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let Some(decimals) = sums.as_primitive_opt::<Decimal128Type>() else {
        return Ok(sums.clone());
    };
    let fits = |v: i128| match to {
        DataType::UInt64 => u64::try_from(v).is_ok(),
        _ => i64::try_from(v).is_ok(),
    };
    if let Some(v) = decimals.iter().flatten().find(|&v| !fits(v)) {
        return Err(ArrowError::ArithmeticOverflow(format!(
            "sum {v} is out of range for type {}",
            if matches!(to, DataType::UInt64) {
                "bigint unsigned"
            } else {
                "bigint"
            }
        ))
        .into());
    }
    Ok(arrow::compute::cast(sums, to)?)
}

/// A row accumulator of DataFusion's decimal sum, taking integers and answering them.
#[derive(Debug)]
struct Checked {
    inner: Box<dyn Accumulator>,
    to: DataType,
}

impl Accumulator for Checked {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(&widen(values)?)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let sum = self.inner.evaluate()?.to_array()?;
        ScalarValue::try_from_array(&narrow(&sum, &self.to)?, 0)
    }

    fn size(&self) -> usize {
        self.inner.size() + std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(&widen(values)?)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }
}

/// A groups accumulator of DataFusion's decimal sum, taking integers and answering them.
struct CheckedGroups {
    inner: Box<dyn GroupsAccumulator>,
    to: DataType,
}

impl GroupsAccumulator for CheckedGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .update_batch(&widen(values)?, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        narrow(&self.inner.evaluate(emit_to)?, &self.to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .merge_batch(values, group_indices, opt_filter, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(&widen(values)?, opt_filter)
    }

    fn supports_convert_to_state(&self) -> bool {
        self.inner.supports_convert_to_state()
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, UInt64Array};
    use arrow::datatypes::Schema;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    /// `sql` over `t(g, x, u)`: x holds i64::MAX twice in group 1 and small numbers in
    /// group 2, u the same in unsigned.
    async fn run(sql: &str) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        ctx.register_udaf(checked_sum());
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("x", DataType::Int64, true),
            Field::new("u", DataType::UInt64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 1, 2, 2, 2])),
                Arc::new(Int64Array::from(vec![
                    Some(i64::MAX),
                    Some(i64::MAX),
                    None,
                    Some(-5),
                    Some(7),
                    None,
                ])),
                Arc::new(UInt64Array::from(vec![
                    Some(u64::MAX),
                    Some(1),
                    None,
                    Some(5),
                    Some(7),
                    None,
                ])),
            ],
        )?;
        ctx.register_batch("t", batch)?;
        ctx.sql(sql).await?.collect().await
    }

    fn overflowed(r: Result<Vec<RecordBatch>>) -> bool {
        let root = r.map_err(|e| e.find_root().to_string());
        matches!(root, Err(m) if m.contains("overflow") && m.contains("out of range"))
    }

    async fn table(sql: &str) -> String {
        pretty_format_batches(&run(sql).await.unwrap())
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn an_integer_sum_out_of_range_fails_in_every_form() {
        for sql in [
            "SELECT sum(x) FROM t",
            "SELECT g, sum(x) FROM t GROUP BY g",
            "SELECT sum(u) FROM t",
            "SELECT g, sum(u) FROM t GROUP BY g",
            "SELECT sum(x) OVER (ORDER BY g ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM t",
            "SELECT sum(x) OVER (PARTITION BY g) FROM t",
            "SELECT g, sum(x) FILTER (WHERE x > 0) FROM t GROUP BY g",
        ] {
            assert!(overflowed(run(sql).await), "{sql}");
        }
    }

    #[tokio::test]
    async fn sums_in_range_keep_their_values_names_and_types() {
        let out =
            table("SELECT g, sum(x), sum(u), sum(DISTINCT x) AS d FROM t WHERE g = 2 GROUP BY g")
                .await;
        assert!(out.contains("| g | sum(t.x) | sum(t.u) | d |"), "{out}");
        assert!(out.contains("| 2 | 2        | 12       | 2 |"), "{out}");
        let batches = run("SELECT sum(x), sum(u), sum(1.5) FROM t WHERE g = 2")
            .await
            .unwrap();
        let types: Vec<DataType> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            [DataType::Int64, DataType::UInt64, DataType::Float64]
        );
        // a partial sum past the range that comes back into it is not an overflow
        let out =
            table("SELECT sum(v) FROM (VALUES (9223372036854775807), (1), (-2)) AS s(v)").await;
        assert!(out.contains("| 9223372036854775806 |"), "{out}");
        // a window's sliding sum retracts what leaves the frame
        let out = table(
            "SELECT sum(x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s \
             FROM t WHERE g = 2 ORDER BY s",
        )
        .await;
        assert!(out.contains("| 2  |") && out.contains("| -5 |"), "{out}");
        // smaller integers are summed as 64-bit ones
        let out = table("SELECT sum(CAST(x AS INT)) AS s FROM t WHERE g = 2").await;
        assert!(out.contains("| 2 |"), "{out}");
        // a distinct sum, over a window frame too
        let out = table(
            "SELECT sum(DISTINCT x) OVER (ORDER BY x ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) \
             AS s FROM t WHERE g = 2 ORDER BY s",
        )
        .await;
        assert!(out.contains("| 2  |") && out.contains("| -5 |"), "{out}");
        // no rows: null
        let out = table("SELECT sum(x) FROM t WHERE g = 3").await;
        assert!(out.contains("|          |"), "{out}");
    }
}
