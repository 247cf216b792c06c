//! weir's vectorised `sum` of 64-bit integers in 128 bits (see
//! [`crate::compile::widen_integer_sum`]): DataFusion's own sum would take the argument cast
//! to `Decimal128(38, 0)`, and that cast, which checks every value's precision, was 2.9 % of
//! the file path's samples (`perf` of `benches/compare.sh`'s pipeline, two sums); without it
//! the whole run takes 0.98x the CPU (median of 9 pairs). This accumulator adds the
//! `Int64` or `UInt64` values as they are, into the same state: one `Decimal128(38, 0)`
//! column, null for a group with no value yet, so partial states, checkpoints and results
//! stay interchangeable with DataFusion's (the tests compare them on random input).

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, PrimitiveArray};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Decimal128Type, Int64Type, UInt64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use std::sync::Arc;

use crate::compile::WIDE_SUM;

/// Sums per group in `i128`, whether each group has a value yet.
#[derive(Debug, Default)]
pub struct WideSumAccumulator {
    sums: Vec<i128>,
    seen: Vec<bool>,
}

impl WideSumAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the valid values of `values` (as `i128`) that the filter keeps to their groups.
    fn add<T: ArrowPrimitiveType>(
        &mut self,
        values: &PrimitiveArray<T>,
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
        widen: impl Fn(T::Native) -> i128,
    ) -> Result<()> {
        if values.len() != group_indices.len() {
            return Err(DataFusionError::Internal(format!(
                "wide sum: {} values for {} group indices",
                values.len(),
                group_indices.len()
            )));
        }
        self.sums.resize(total_num_groups, 0);
        self.seen.resize(total_num_groups, false);
        let raw = values.values();
        if values.null_count() == 0 && opt_filter.is_none() {
            for (&g, &v) in group_indices.iter().zip(raw.iter()) {
                self.sums[g] = self.sums[g].wrapping_add(widen(v));
                self.seen[g] = true;
            }
            return Ok(());
        }
        for (row, (&g, &v)) in group_indices.iter().zip(raw.iter()).enumerate() {
            let kept =
                values.is_valid(row) && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row));
            if kept {
                self.sums[g] = self.sums[g].wrapping_add(widen(v));
                self.seen[g] = true;
            }
        }
        Ok(())
    }

    /// The first groups `emit_to` names, as the state's column; they leave the accumulator.
    fn take(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let sums = emit_to.take_needed(&mut self.sums);
        let seen = emit_to.take_needed(&mut self.seen);
        let nulls = NullBuffer::from(seen);
        let array =
            Decimal128Array::new(ScalarBuffer::from(sums), Some(nulls)).with_data_type(WIDE_SUM);
        Ok(Arc::new(array))
    }
}

impl GroupsAccumulator for WideSumAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [value] = values else {
            return Err(DataFusionError::Internal(format!(
                "wide sum: update takes one column, got {}",
                values.len()
            )));
        };
        match value.data_type() {
            DataType::Int64 => self.add(
                value.as_primitive::<Int64Type>(),
                group_indices,
                opt_filter,
                total_num_groups,
                i128::from,
            ),
            DataType::UInt64 => self.add(
                value.as_primitive::<UInt64Type>(),
                group_indices,
                opt_filter,
                total_num_groups,
                i128::from,
            ),
            _ => {
                // any other argument type, as DataFusion's sum takes it: cast first
                let cast = arrow::compute::cast(value, &WIDE_SUM)?;
                self.merge_batch(&[cast], group_indices, opt_filter, total_num_groups)
            }
        }
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [state] = values else {
            return Err(DataFusionError::Internal(format!(
                "wide sum: merge takes one column, got {}",
                values.len()
            )));
        };
        let Some(sums) = state.as_primitive_opt::<Decimal128Type>() else {
            return Err(DataFusionError::Internal(format!(
                "wide sum: the state is {}, not {WIDE_SUM}",
                state.data_type()
            )));
        };
        self.add(sums, group_indices, opt_filter, total_num_groups, |v| v)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.take(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.take(emit_to)?])
    }

    fn size(&self) -> usize {
        self.sums.capacity() * std::mem::size_of::<i128>() + self.seen.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompiledAggregate, SqlCompiler};
    use crate::test_rng::Rng;
    use arrow::array::{Int32Array, Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{Field, Schema, SchemaRef};
    use arrow::record_batch::RecordBatch;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("u", DataType::UInt64, true),
            Field::new("small", DataType::Int32, true),
            Field::new("status", DataType::Utf8, true),
        ]))
    }

    /// `n` rows with values from every corner of their types, some null, in `groups` groups.
    fn batch(rng: &mut Rng, n: usize, groups: usize, nulls: bool) -> (RecordBatch, Vec<usize>) {
        let null = |rng: &mut Rng| nulls && rng.below(6) == 0;
        let ns: Int64Array = (0..n)
            .map(|_| {
                (!null(rng)).then(|| match rng.below(4) {
                    0 => i64::MAX - rng.below(3) as i64,
                    1 => i64::MIN + rng.below(3) as i64,
                    _ => rng.next() as i64 >> rng.below(64),
                })
            })
            .collect();
        let us: UInt64Array = (0..n)
            .map(|_| (!null(rng)).then(|| u64::MAX - rng.below(1 << 40)))
            .collect();
        let small: Int32Array = (0..n)
            .map(|_| (!null(rng)).then(|| rng.next() as i32))
            .collect();
        let status: StringArray = (0..n)
            .map(|_| (!null(rng)).then(|| ["OK", "FAILURE"][rng.below(2) as usize]))
            .collect();
        let groups = (0..n).map(|_| rng.below(groups as u64) as usize).collect();
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(ns),
                Arc::new(us),
                Arc::new(small),
                Arc::new(status),
            ],
        )
        .unwrap();
        (batch, groups)
    }

    /// The inputs of `a` (for ours: the argument as it is), or DataFusion's (cast).
    fn inputs(a: &CompiledAggregate, b: &RecordBatch, datafusion: bool) -> Vec<ArrayRef> {
        let exprs = if datafusion {
            a.function.expressions()
        } else {
            a.inputs.clone()
        };
        exprs
            .iter()
            .map(|e| e.evaluate(b).unwrap().into_array(b.num_rows()).unwrap())
            .collect()
    }

    fn filter(a: &CompiledAggregate, b: &RecordBatch) -> Option<BooleanArray> {
        a.filter.as_ref().map(|f| {
            f.evaluate(b)
                .unwrap()
                .into_array(b.num_rows())
                .unwrap()
                .as_boolean()
                .clone()
        })
    }

    #[test]
    fn serves_sums_of_64_bit_integers_only() {
        let c = SqlCompiler::new();
        let s = schema();
        for sql in [
            "sum(n)",
            "sum(u)",
            "sum(small)",
            "sum(n) FILTER (WHERE status = 'OK')",
        ] {
            let a = c.aggregate("x", sql, &s).unwrap();
            assert!(a.wide_sum, "{sql}");
            assert!(
                matches!(
                    a.inputs[0].data_type(&s).unwrap(),
                    DataType::Int64 | DataType::UInt64
                ),
                "{sql}: the argument is not cast to a decimal"
            );
        }
        for sql in ["sum(DISTINCT n)", "max(n)", "count(n)", "avg(n)"] {
            assert!(!c.aggregate("x", sql, &s).unwrap().wide_sum, "{sql}");
        }
    }

    /// Updates, states, merges (across implementations too) and results equal DataFusion's
    /// sum of the argument cast to `Decimal128(38, 0)`.
    #[test]
    fn equals_datafusion_on_random_input() {
        let c = SqlCompiler::new();
        let s = schema();
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for sql in [
            "sum(n)",
            "sum(u)",
            "sum(small)",
            "sum(n) FILTER (WHERE status = 'FAILURE')",
        ] {
            let a = c.aggregate("x", sql, &s).unwrap();
            assert!(a.wide_sum, "{sql}");
            let groups = 40;
            let mut ours = [a.accumulator().unwrap(), a.accumulator().unwrap()];
            let mut theirs = [
                a.function.create_groups_accumulator().unwrap(),
                a.function.create_groups_accumulator().unwrap(),
            ];
            for round in 0..30 {
                let rows = 1 + rng.below(400) as usize;
                let (b, g) = batch(&mut rng, rows, groups, round % 3 != 0);
                let f = filter(&a, &b);
                let side = round % 2;
                ours[side]
                    .update_batch(&inputs(&a, &b, false), &g, f.as_ref(), groups)
                    .unwrap();
                theirs[side]
                    .update_batch(&inputs(&a, &b, true), &g, f.as_ref(), groups)
                    .unwrap();
            }
            let [o1, o2] = &mut ours;
            let [t1, t2] = &mut theirs;
            // the partial states are equal, and each merges into the other implementation
            let (os, ts) = (
                o2.state(EmitTo::All).unwrap(),
                t2.state(EmitTo::All).unwrap(),
            );
            assert_eq!(os[0].as_ref(), ts[0].as_ref(), "{sql}: state");
            let identity: Vec<usize> = (0..groups).collect();
            o1.merge_batch(&ts, &identity, None, groups).unwrap();
            t1.merge_batch(&os, &identity, None, groups).unwrap();
            // emitted in two steps, as a window's groups are
            for emit in [EmitTo::First(7), EmitTo::All] {
                let (o, t) = (o1.evaluate(emit).unwrap(), t1.evaluate(emit).unwrap());
                assert_eq!(o.data_type(), t.data_type(), "{sql}");
                assert_eq!(o.as_ref(), t.as_ref(), "{sql}: result");
            }
        }
    }

    #[test]
    fn a_group_without_values_is_null() {
        let mut acc = WideSumAccumulator::new();
        let values: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), None, Some(i64::MAX)]));
        let keep = BooleanArray::from(vec![true, true, true]);
        acc.update_batch(&[values], &[0, 1, 0], Some(&keep), 3)
            .unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        let out = out.as_primitive::<Decimal128Type>();
        assert_eq!(out.value(0), i64::MAX as i128 + 5);
        assert!(out.is_null(1) && out.is_null(2));
    }
}
