//! `max` and `min` of floating-point arguments. DataFusion's vectorised ones start every group
//! at the type's finite extreme (`f64::MIN` for `max`), so a group holding only `-Infinity`
//! gave `-1.7976931348623157e308` (and `min` of `Infinity` the finite maximum). These start
//! at the infinity instead, with the same comparison and the same state (one column of the
//! argument's type), so checkpoints stay interchangeable with DataFusion's.

use std::cmp::Ordering;

use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::logical_expr::GroupsAccumulator;
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;

/// Which extreme a float `max`/`min` call keeps, and of which type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloatExtreme {
    /// `max` (else `min`).
    pub max: bool,
    /// `Float64` (else `Float32`).
    pub wide: bool,
}

impl FloatExtreme {
    /// The extreme a call of `name` (`max` or `min`) on an argument of `arg` keeps, when it is
    /// a float one; `None` for any other call.
    pub fn of(name: &str, arg: &DataType) -> Option<FloatExtreme> {
        let max = match name {
            "max" => true,
            "min" => false,
            _ => return None,
        };
        let wide = match arg {
            DataType::Float64 => true,
            DataType::Float32 => false,
            _ => return None,
        };
        Some(FloatExtreme { max, wide })
    }

    /// A fresh accumulator.
    pub fn accumulator(self) -> Box<dyn GroupsAccumulator> {
        let (wanted, start) = if self.max {
            (Ordering::Greater, f64::NEG_INFINITY)
        } else {
            (Ordering::Less, f64::INFINITY)
        };
        if self.wide {
            Box::new(
                PrimitiveGroupsAccumulator::<Float64Type, _>::new(
                    &DataType::Float64,
                    keep::<f64>(wanted),
                )
                .with_starting_value(start),
            )
        } else {
            Box::new(
                PrimitiveGroupsAccumulator::<Float32Type, _>::new(
                    &DataType::Float32,
                    keep::<f32>(wanted),
                )
                .with_starting_value(start as f32),
            )
        }
    }
}

/// Keeps the new value when it compares as `wanted` to the one kept; NaN replaces the value
/// kept, and any value replaces a NaN, as in DataFusion.
fn keep<N: PartialOrd + Copy>(wanted: Ordering) -> impl Fn(&mut N, N) + Send + Sync + 'static {
    move |cur: &mut N, new: N| match new.partial_cmp(cur) {
        Some(o) if o == wanted => *cur = new,
        None => *cur = new,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
    use std::sync::Arc;

    fn run(extreme: FloatExtreme, values: Vec<Option<f64>>, groups: &[usize]) -> Vec<Option<f64>> {
        let mut acc = extreme.accumulator();
        let n = groups.iter().max().map_or(0, |m| m + 1);
        let input: ArrayRef = Arc::new(Float64Array::from(values));
        acc.update_batch(&[input], groups, None, n).unwrap();
        // through the state, as a checkpoint and a merge take it
        let state = acc.state(datafusion::logical_expr::EmitTo::All).unwrap();
        let mut merged = extreme.accumulator();
        let all: Vec<usize> = (0..n).collect();
        merged.merge_batch(&state, &all, None, n).unwrap();
        let out = merged
            .evaluate(datafusion::logical_expr::EmitTo::All)
            .unwrap();
        let out = out.as_primitive::<Float64Type>();
        (0..out.len())
            .map(|i| out.is_valid(i).then(|| out.value(i)))
            .collect()
    }

    #[test]
    fn infinities_are_kept_and_a_group_without_values_is_null() {
        let max = FloatExtreme::of("max", &DataType::Float64).unwrap();
        let min = FloatExtreme::of("min", &DataType::Float64).unwrap();
        let values = vec![
            Some(f64::NEG_INFINITY),
            Some(1.5),
            Some(f64::INFINITY),
            None,
        ];
        // group 0: only -inf; group 1: 1.5; group 2: only +inf; group 3: only null
        assert_eq!(
            run(max, values.clone(), &[0, 1, 2, 3]),
            vec![
                Some(f64::NEG_INFINITY),
                Some(1.5),
                Some(f64::INFINITY),
                None
            ]
        );
        assert_eq!(
            run(min, values, &[0, 1, 2, 3]),
            vec![
                Some(f64::NEG_INFINITY),
                Some(1.5),
                Some(f64::INFINITY),
                None
            ]
        );
        let both = vec![Some(-2.0), Some(f64::NEG_INFINITY), Some(3.0)];
        assert_eq!(run(max, both.clone(), &[0, 0, 0]), vec![Some(3.0)]);
        assert_eq!(run(min, both, &[0, 0, 0]), vec![Some(f64::NEG_INFINITY)]);
        assert_eq!(FloatExtreme::of("max", &DataType::Int64), None);
        assert_eq!(FloatExtreme::of("sum", &DataType::Float64), None);
    }
}
