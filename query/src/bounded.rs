//! SQL functions whose output size is set by an argument, bounded by the query's memory limit.
//!
//! `repeat('x', 100000000000)` asks DataFusion for a 100 GB string: the allocation happens
//! outside the memory pool (at plan time, when the call is constant-folded), and failing it
//! aborts the process. Each such function is registered again, wrapped: before the real
//! function runs, the wrapper estimates the bytes its call would make from its arguments and
//! refuses the call (a memory-limit error, SQLSTATE 53200) when they exceed the query's
//! memory limit. Everything else is the real function's: name, aliases, types, results.

use std::any::Any;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, IntervalMonthDayNanoType, TimeUnit};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

use arrow::datatypes::FieldRef;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `repeat(s, n)`: `len(s) * n` bytes a row.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters a row (up to 4 bytes each).
    Pad,
    /// `array_repeat(x, n)`, `array_resize(a, n [, x])`: `n` elements a row.
    Elements,
    /// `range(…)`, `generate_series(…)` as arrays: `(stop - start) / step` elements a row.
    Series { inclusive: bool },
    /// `replace(s, from, to)`: `s` with each of its at most `len(s) / len(from) + 1`
    /// occurrences of `from` (an empty `from` matches between every two characters) made `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: at most `len(s) + 1` matches,
    /// each made the replacement, whose references to groups (at most half its length) each
    /// repeat up to the whole match.
    RegexpReplace,
    /// `concat(…)`, `concat_ws(sep, …)`: the arguments' bytes, and a separator between each
    /// two.
    Concat { separated: bool },
}

/// The functions wrapped, by DataFusion's name.
const FUNCTIONS: [(&str, Size); 11] = [
    ("replace", Size::Replace),
    ("regexp_replace", Size::RegexpReplace),
    ("concat", Size::Concat { separated: false }),
    ("concat_ws", Size::Concat { separated: true }),
    ("repeat", Size::Repeat),
    ("lpad", Size::Pad),
    ("rpad", Size::Pad),
    ("array_repeat", Size::Elements),
    ("array_resize", Size::Elements),
    ("range", Size::Series { inclusive: false }),
    ("generate_series", Size::Series { inclusive: true }),
];

/// Bytes counted for one array element (a 64-bit value and its share of offsets).
const ELEMENT_BYTES: u64 = 8;

/// Registers the bounded versions of the size-setting functions in `ctx`.
pub fn register(ctx: &SessionContext, max_bytes: usize) {
    for (name, size) in FUNCTIONS {
        let Ok(inner) = ctx.udf(name) else {
            // a function this build of DataFusion lacks cannot be called either
            continue;
        };
        let bounded = Bounded {
            inner: inner.as_ref().clone(),
            size,
            max_bytes: max_bytes as u64,
        };
        ctx.register_udf(ScalarUDF::new_from_impl(bounded));
    }
}

/// A function checked before it runs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    size: Size,
    max_bytes: u64,
}

impl Bounded {
    /// Refuses a call whose output would exceed the limit.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let rows = args.number_rows.max(1);
        // per row, without making a scalar argument into an array of `rows` copies (a large
        // string repeated over a batch would be the allocation this check prevents)
        let lengths = |i: usize| args.args.get(i).map(|v| per_row(v, rows, byte_lengths));
        let numbers = |i: usize| args.args.get(i).map(|v| per_row(v, rows, counts));
        let bytes = match self.size {
            Size::Repeat => match (lengths(0), numbers(1)) {
                (Some(s), Some(n)) => sum_products(&s, &n, 1),
                _ => 0,
            },
            Size::Pad => numbers(1).map_or(0, |n| sum_products(&ones(rows), &n, 4)),
            Size::Elements => {
                numbers(1).map_or(0, |n| sum_products(&ones(rows), &n, ELEMENT_BYTES))
            }
            Size::Series { inclusive } => {
                series_elements(&args.args, rows, inclusive).saturating_mul(ELEMENT_BYTES)
            }
            Size::Replace | Size::RegexpReplace => match (lengths(0), lengths(1), lengths(2)) {
                (Some(s), Some(from), Some(to)) => {
                    replaced_bytes(&s, &from, &to, self.size == Size::RegexpReplace)
                }
                _ => 0,
            },
            Size::Concat { separated } => {
                let lengths: Vec<Vec<i64>> = (0..args.args.len()).filter_map(lengths).collect();
                concatenated_bytes(&lengths, separated)
            }
        };
        self.refuse_over(bytes)
    }

    /// Refuses a call that would make `bytes`, over the limit.
    fn refuse_over(&self, bytes: u64) -> Result<()> {
        if bytes > self.max_bytes {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would make about {bytes} bytes, over the query's memory limit of {} \
                 bytes (serve.query_memory_mb)",
                self.inner.name(),
                self.max_bytes
            )));
        }
        Ok(())
    }
}

/// `f` of each of `rows` rows of `v`: a scalar's once, repeated.
fn per_row(v: &ColumnarValue, rows: usize, f: fn(&ArrayRef) -> Vec<i64>) -> Vec<i64> {
    match v {
        ColumnarValue::Array(a) => f(a),
        ColumnarValue::Scalar(s) => {
            let one = s
                .to_array_of_size(1)
                .ok()
                .and_then(|a| f(&a).first().copied())
                .unwrap_or(0);
            vec![one; rows]
        }
    }
}

/// Each row's value as an i64 (null or unreadable: 0).
fn counts(a: &ArrayRef) -> Vec<i64> {
    match cast(a, &DataType::Int64) {
        Ok(c) => c
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect(),
        Err(_) => vec![0; a.len()],
    }
}

/// Each row's string length in bytes (null or not a string: 0).
fn byte_lengths(a: &ArrayRef) -> Vec<i64> {
    match arrow::compute::kernels::length::length(a) {
        Ok(l) => counts(&l),
        Err(_) => vec![0; a.len()],
    }
}

fn ones(rows: usize) -> Vec<i64> {
    vec![1; rows]
}

/// Σ max(a, 0) × max(b, 0) × unit, saturating.
fn sum_products(a: &[i64], b: &[i64], unit: u64) -> u64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            (x.max(0) as u64)
                .saturating_mul(y.max(0) as u64)
                .saturating_mul(unit)
        })
        .fold(0u64, u64::saturating_add)
}

/// Bytes a `replace` (or, with `regexp`, a `regexp_replace`) makes over all rows, an upper
/// bound: row lengths of the string, of what is replaced (a pattern's length says nothing of
/// its matches: taken as empty) and of the replacement.
fn replaced_bytes(s: &[i64], from: &[i64], to: &[i64], regexp: bool) -> u64 {
    let mut total = 0u64;
    for (i, &len) in s.iter().enumerate() {
        let len = len.max(0) as u64;
        let with = to.get(i).copied().unwrap_or(0).max(0) as u64;
        let step = if regexp {
            1
        } else {
            from.get(i).copied().unwrap_or(0).max(1) as u64
        };
        let matches = len / step + 1;
        // each reference to a group (two bytes at least: `$1`) repeats part of its match, and
        // matches do not overlap: all of one reference's copies hold the string once at most
        let references = if regexp {
            (with / 2).saturating_mul(len)
        } else {
            0
        };
        total = total
            .saturating_add(len)
            .saturating_add(matches.saturating_mul(with))
            .saturating_add(references);
    }
    total
}

/// Bytes a `concat` (with `separated`, a `concat_ws`, whose first argument is the separator)
/// makes over all rows, from each argument's row lengths.
fn concatenated_bytes(lengths: &[Vec<i64>], separated: bool) -> u64 {
    let rows = lengths.first().map_or(0, Vec::len);
    let (sep, parts) = match (separated, lengths.split_first()) {
        (true, Some((sep, parts))) => (Some(sep), parts),
        _ => (None, lengths),
    };
    let mut total = 0u64;
    for i in 0..rows {
        for p in parts {
            total = total.saturating_add(p.get(i).copied().unwrap_or(0).max(0) as u64);
        }
        if let Some(sep) = sep {
            let between = parts.len().saturating_sub(1) as u64;
            let one = sep.get(i).copied().unwrap_or(0).max(0) as u64;
            total = total.saturating_add(one.saturating_mul(between));
        }
    }
    total
}

/// Elements `range`/`generate_series` would make over all rows: integers, dates and
/// timestamps (with an interval step, months counted as 31 days: an upper bound).
fn series_elements(args: &[ColumnarValue], rows: usize, inclusive: bool) -> u64 {
    let arrays: Vec<ArrayRef> = match args.iter().map(|v| v.to_array(rows)).collect() {
        Ok(a) => a,
        Err(_) => return 0,
    };
    let (start, stop, step) = match arrays.as_slice() {
        [stop] => (vec![0; rows], points(stop), None),
        [start, stop] => (points(start), points(stop), None),
        [start, stop, step] => (points(start), points(stop), Some(steps(step))),
        _ => return 0,
    };
    if step.is_none() && is_temporal(arrays.first()) {
        // a date or timestamp series needs a step: DataFusion refuses it without one
        return 0;
    }
    let mut total = 0u64;
    for i in 0..rows {
        let (a, b) = (start[i], stop[i]);
        let s = step.as_ref().map_or(1, |s| s[i]);
        if s == 0 {
            continue;
        }
        let span = if s > 0 { b - a } else { a - b };
        if span < 0 {
            continue;
        }
        let n = span / s.abs() + i128::from(inclusive);
        total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }
    total
}

fn is_temporal(a: Option<&ArrayRef>) -> bool {
    a.is_some_and(|a| {
        matches!(
            a.data_type(),
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
        )
    })
}

/// Each row's point of a series as an integer: the value itself, or nanoseconds for dates and
/// timestamps (in i128: the widest dates overflow i64 nanoseconds).
fn points(a: &ArrayRef) -> Vec<i128> {
    const DAY: i128 = 86_400_000_000_000;
    let (raw, nanos_per_unit): (Result<ArrayRef, _>, i128) = match a.data_type() {
        DataType::Date32 => (cast(a, &DataType::Int64), DAY),
        DataType::Date64 => (cast(a, &DataType::Int64), 1_000_000),
        DataType::Timestamp(unit, _) => (
            cast(a, &DataType::Int64),
            match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            },
        ),
        _ => (cast(a, &DataType::Int64), 1),
    };
    match raw {
        Ok(c) => c
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| i128::from(v.unwrap_or(0)) * nanos_per_unit)
            .collect(),
        Err(_) => vec![0; a.len()],
    }
}

/// Each row's step: an integer, or an interval in nanoseconds.
fn steps(a: &ArrayRef) -> Vec<i128> {
    const DAY: i128 = 86_400_000_000_000;
    if let DataType::Interval(_) = a.data_type() {
        if let Ok(c) = cast(
            a,
            &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
        ) {
            return c
                .as_primitive::<IntervalMonthDayNanoType>()
                .iter()
                .map(|v| {
                    v.map_or(0, |v| {
                        i128::from(v.months) * 31 * DAY
                            + i128::from(v.days) * DAY
                            + i128::from(v.nanoseconds)
                    })
                })
                .collect();
        }
        return vec![0; a.len()];
    }
    points(a)
}

impl ScalarUDFImpl for Bounded {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if let Size::Concat { separated } = self.size {
            // `concat`'s own simplification joins literal arguments without calling it
            let lengths: Vec<Vec<i64>> = args
                .iter()
                .map(|a| match a {
                    Expr::Literal(v, _) => vec![v.to_string().len() as i64],
                    _ => vec![0],
                })
                .collect();
            self.refuse_over(concatenated_bytes(&lengths, separated))?;
        }
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
}

/// The inner function of a wrapper (for tests).
#[cfg(test)]
fn unwrap(f: &ScalarUDF) -> Option<&std::sync::Arc<dyn ScalarUDFImpl>> {
    f.inner()
        .as_any()
        .downcast_ref::<Bounded>()
        .map(|b| b.inner.inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<arrow::record_batch::RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    fn context(max: usize) -> SessionContext {
        let ctx = SessionContext::new();
        register(&ctx, max);
        ctx
    }

    #[tokio::test]
    async fn calls_within_the_limit_answer_as_before() {
        let ctx = context(1 << 20);
        let b = run(&ctx, "SELECT repeat('ab', 3) AS r, lpad('x', 4, '-') AS l, cardinality(range(1, 11)) AS n, cardinality(generate_series(1, 10)) AS g").await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        assert!(text.contains("ababab") && text.contains("---x"), "{text}");
        assert!(text.contains("| 10 ") && text.contains("| 10 "), "{text}");
        assert!(unwrap(&ctx.udf("repeat").unwrap()).is_some());
        // aliases still reach the wrapper
        assert!(unwrap(&ctx.udf("list_repeat").unwrap()).is_some());
    }

    #[tokio::test]
    async fn size_bombs_are_refused_with_a_memory_error() {
        let ctx = context(1 << 20);
        for sql in [
            "SELECT length(repeat(arrow_cast('x','LargeUtf8'), 100000000000))",
            "SELECT length(repeat('x', 2000000000))",
            "SELECT lpad('x', 2000000000)",
            "SELECT rpad('x', 2000000000, 'ab')",
            "SELECT cardinality(array_repeat(1, 1000000000))",
            "SELECT cardinality(range(1, 100000000000))",
            "SELECT cardinality(generate_series(1, 100000000000))",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01 00:00:00', TIMESTAMP '2200-01-01 00:00:00', INTERVAL '1 second'))",
            "SELECT cardinality(range(DATE '1970-01-01', DATE '9999-01-01', INTERVAL '1 day'))",
            // each argument within the limit, the result far over it
            "SELECT length(replace(repeat('x', 500000), 'x', repeat('y', 100000)))",
            "SELECT length(replace(repeat('x', 500000), '', repeat('y', 100)))",
            "SELECT length(regexp_replace(repeat('x', 500000), 'x', 'yyyy', 'g'))",
            "SELECT length(regexp_replace(repeat('x', 300000), '(x+)', repeat('$1', 2), 'g'))",
            "SELECT length(concat(repeat('x', 600000), repeat('x', 600000)))",
            "SELECT length(concat_ws(repeat(',', 400000), 'a', 'b', 'c', 'd'))",
        ] {
            let e = run(&ctx, sql).await.expect_err(sql);
            assert!(
                matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)),
                "{sql}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn replacements_and_concatenations_within_the_limit_answer_as_before() {
        let ctx = context(1 << 20);
        let b = run(
            &ctx,
            "SELECT replace('a-b-c', '-', '+') AS r, regexp_replace('abc', '(b)', '[$1]') AS g, \
             concat('a', NULL, 'b') AS c, concat_ws('/', 'x', 'y') AS w",
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        for want in ["a+b+c", "a[b]c", "| ab ", "x/y"] {
            assert!(text.contains(want), "{want}: {text}");
        }
        // a group reference over long strings, a batch of them: linear in the string (about
        // 4 MB counted; a bound quadratic in the string counted 280 MB)
        let b = run(
            &context(16 << 20),
            "SELECT max(length(regexp_replace(repeat('h', 300) || v, '^(h+).*', '$1'))) AS n \
             FROM (SELECT arrow_cast(value, 'Utf8') AS v FROM generate_series(1, 3000)) t",
        )
        .await
        .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&b)
            .unwrap()
            .to_string();
        assert!(text.contains("| 300 "), "{text}");
    }

    #[tokio::test]
    async fn column_arguments_are_counted_row_by_row() {
        let ctx = context(1000);
        // 10 rows of 10 bytes: 100 bytes
        run(
            &ctx,
            "SELECT repeat('x', 10) FROM (SELECT * FROM generate_series(1, 10)) t(v)",
        )
        .await
        .unwrap();
        let e = run(
            &ctx,
            "SELECT repeat('x', v) FROM (SELECT * FROM generate_series(1, 100)) t(v)",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)),
            "{e}"
        );
    }
}
