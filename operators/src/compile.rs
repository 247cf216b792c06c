//! SQL text to DataFusion physical expressions: `where` predicates and aggregate calls.

use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, GroupsAccumulator, Volatility};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_planner::create_aggregate_expr_and_maybe_filter;
use datafusion::prelude::SessionConfig;

use crate::float_extreme::FloatExtreme;
use crate::ordered_value::{OrderedValueAccumulator, OrderedValueSpec};
use crate::wide_sum::WideSumAccumulator;

/// An aggregate call ready to run: the function, what to feed it, and its FILTER.
#[derive(Debug, Clone)]
pub struct CompiledAggregate {
    /// The output column name.
    pub name: String,
    pub function: Arc<AggregateFunctionExpr>,
    /// Arguments, then ORDER BY expressions (what `update_batch` takes).
    pub inputs: Vec<Arc<dyn PhysicalExpr>>,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Set when weir's vectorised first/last string value serves this call.
    pub ordered_value: Option<OrderedValueSpec>,
    /// Set when weir's 128-bit sum serves this widened integer `sum` (see
    /// [`widen_integer_sum`]): its input is then the integer argument, not cast.
    pub wide_sum: bool,
    /// Set for `max`/`min` of a float argument, which weir's accumulator serves (see
    /// [`FloatExtreme`]).
    pub float_extreme: Option<FloatExtreme>,
    /// The type results are given in when it is not the function's own: a `sum` of 64-bit
    /// integers adds in `Decimal128(38, 0)` (no wrap) and gives its result back as the
    /// integer type, null when the exact sum does not fit (see [`widen_integer_sum`]).
    pub output_type: Option<DataType>,
    /// Result values that did not fit `output_type` (given as null), shared by every copy
    /// of the aggregate: what `weir_sum_overflows_total` reports.
    pub overflows: Arc<std::sync::atomic::AtomicU64>,
}

impl CompiledAggregate {
    /// A fresh accumulator (vectorised when the function has one).
    pub fn accumulator(&self) -> datafusion::error::Result<Box<dyn GroupsAccumulator>> {
        if let Some(spec) = &self.ordered_value {
            Ok(Box::new(OrderedValueAccumulator::new(spec.clone())))
        } else if self.wide_sum {
            Ok(Box::new(WideSumAccumulator::new()))
        } else if let Some(extreme) = self.float_extreme {
            Ok(extreme.accumulator())
        } else if self.function.groups_accumulator_supported() {
            self.function.create_groups_accumulator()
        } else {
            let f = self.function.clone();
            Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                f.create_accumulator()
            })))
        }
    }

    /// The result column's field, named after the output.
    pub fn output_field(&self) -> FieldRef {
        let f = self.function.field();
        let mut f = f.as_ref().clone().with_name(&self.name).with_nullable(true);
        if let Some(t) = &self.output_type {
            f = f.with_data_type(t.clone());
        }
        Arc::new(f)
    }

    /// How many state columns the accumulator hands over for merging.
    pub fn state_len(&self) -> datafusion::error::Result<usize> {
        Ok(self.function.state_fields()?.len())
    }
}

/// Compiles SQL expressions against the schema of decoded events.
pub struct SqlCompiler {
    state: SessionState,
    /// Integer sums as DataFusion has them (wrapping): benchmarks' baseline only.
    wrapping_sums: bool,
}

impl Default for SqlCompiler {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlCompiler {
    /// A compiler with DataFusion's built-in functions.
    pub fn new() -> Self {
        // Field names are camelCase (datasetName): keep identifiers as written.
        let mut config = SessionConfig::new();
        config.options_mut().sql_parser.enable_ident_normalization = false;
        SqlCompiler {
            state: SessionStateBuilder::new()
                .with_config(config)
                .with_default_features()
                .build(),
            wrapping_sums: false,
        }
    }

    /// A compiler whose integer sums are DataFusion's own, which wrap on overflow: the
    /// baseline of the window benchmark, never for pipelines.
    #[doc(hidden)]
    pub fn with_wrapping_sums(mut self) -> Self {
        self.wrapping_sums = true;
        self
    }

    fn logical(&self, sql: &str, schema: &Schema) -> Result<(Expr, DFSchema), CompileError> {
        let df_schema =
            DFSchema::try_from(schema.clone()).map_err(|e| CompileError::Schema(Box::new(e)))?;
        let expr = self
            .state
            .create_logical_expr(sql, &df_schema)
            .map_err(clean)?;
        Ok((expr, df_schema))
    }

    /// A boolean predicate such as `status <> 'PARTIAL'`, its integer arithmetic checked
    /// (see [`checked_arithmetic`]): for operators, which dead-letter a row it fails on.
    pub fn predicate(
        &self,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<Arc<dyn PhysicalExpr>, CompileError> {
        let (expr, _) = self.logical(sql, schema)?;
        refuse_time_dependent(&expr, Volatility::Volatile)?;
        checked_arithmetic(self.output_predicate(sql, schema)?)
    }

    /// A boolean predicate as DataFusion runs it (integer arithmetic wraps; see
    /// [`checked_arithmetic`]), for a sink's `where` over result rows: `random()` may sample
    /// there; `now()` cannot run.
    pub fn output_predicate(
        &self,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<Arc<dyn PhysicalExpr>, CompileError> {
        let (expr, df_schema) = self.logical(sql, schema)?;
        if contains_aggregate(&expr) {
            return Err(CompileError::AggregateInFilter);
        }
        refuse_time_dependent(&expr, Volatility::Stable)?;
        let mut rewriter = TypeCoercionRewriter::new(&df_schema);
        let expr = expr.rewrite(&mut rewriter).map_err(clean)?.data;
        let expr = rewritten_to_run(expr, &df_schema)?;
        let phys = self
            .state
            .create_physical_expr(expr, &df_schema)
            .map_err(clean)?;
        let ty = phys.data_type(schema).map_err(clean)?;
        if ty != DataType::Boolean && ty != DataType::Null {
            return Err(CompileError::NotBoolean(ty));
        }
        // what fails whatever the rows (`10 * 1000000000000000000` once checked) is refused
        // here, rather than sending every row to the dead letters
        let no_rows = arrow::record_batch::RecordBatch::new_empty(schema.clone());
        checked_arithmetic(phys.clone())?
            .evaluate(&no_rows)
            .and_then(|v| v.into_array(0))
            .map_err(clean)?;
        Ok(phys)
    }

    /// An aggregate call such as `count(*) FILTER (WHERE status = 'FAILURE')`.
    pub fn aggregate(
        &self,
        name: &str,
        sql: &str,
        schema: &SchemaRef,
    ) -> Result<CompiledAggregate, CompileError> {
        let (expr, df_schema) = self.logical(sql, schema)?;
        let expr = expr.unalias_nested().data;
        if !matches!(expr, Expr::AggregateFunction(_)) {
            return Err(CompileError::NotAggregate(sql.to_string()));
        }
        refuse_time_dependent(&expr, Volatility::Volatile)?;
        let mut rewriter = TypeCoercionRewriter::new(&df_schema);
        let expr = expr.rewrite(&mut rewriter).map_err(clean)?.data;
        let expr = rewritten_to_run(expr, &df_schema)?;
        let (expr, output_type) = if self.wrapping_sums {
            (expr, None)
        } else {
            widen_integer_sum(expr, &df_schema)
        };
        let (function, filter, _) = create_aggregate_expr_and_maybe_filter(
            &expr,
            &df_schema,
            schema,
            self.state.execution_props(),
        )
        .map_err(clean)?;
        let mut inputs = function.expressions();
        inputs.extend(function.order_bys().iter().map(|s| s.expr.clone()));
        let ordered_value = ordered_value_spec(&function, schema);
        let wide_sum = output_type.is_some() && serves_wide_sum(&function, &mut inputs);
        let float_extreme = float_extreme(&function, schema);
        let filter = filter.map(checked_arithmetic).transpose()?;
        let inputs = inputs
            .into_iter()
            .map(|e| only_where(checked_arithmetic(e)?, filter.as_ref()))
            .collect::<Result<_, _>>()?;
        let compiled = CompiledAggregate {
            name: name.to_string(),
            function,
            inputs,
            filter,
            ordered_value,
            wide_sum,
            float_extreme,
            output_type,
            overflows: Default::default(),
        };
        compiled.try_run(schema)?;
        Ok(compiled)
    }
}

impl CompiledAggregate {
    /// Runs the aggregate once on no rows, as a window does on every batch and at its end,
    /// so that what fails whatever the rows (a percentile that is not a literal, an
    /// `nth_value` of 0, a function that cannot run in a stream) is refused with the pipeline
    /// file's position, not at the first batch of a run.
    fn try_run(&self, schema: &SchemaRef) -> Result<(), CompileError> {
        use datafusion::logical_expr::EmitTo;
        let no_rows = arrow::record_batch::RecordBatch::new_empty(schema.clone());
        if let Some(filter) = &self.filter {
            filter
                .evaluate(&no_rows)
                .and_then(|v| v.into_array(0))
                .map_err(clean)?;
        }
        let values = self
            .inputs
            .iter()
            .map(|e| e.evaluate(&no_rows).and_then(|v| v.into_array(0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(clean)?;
        // (one group that got no rows: a window's key before its first event)
        let mut groups = self.accumulator().map_err(clean)?;
        groups.update_batch(&values, &[], None, 1).map_err(clean)?;
        groups.state(EmitTo::All).map_err(clean)?;
        let mut groups = self.accumulator().map_err(clean)?;
        groups.update_batch(&values, &[], None, 1).map_err(clean)?;
        groups.evaluate(EmitTo::All).map_err(clean)?;
        // (a GroupsAccumulatorAdapter creates its accumulators lazily, per group)
        if !self.function.groups_accumulator_supported() {
            let mut one = self.function.create_accumulator().map_err(clean)?;
            one.update_batch(&values).map_err(clean)?;
            one.evaluate().map_err(clean)?;
        }
        Ok(())
    }
}

/// Refuses a function whose result depends on when it runs: `now()`, `current_date()`
/// (`Stable`: DataFusion only runs them replaced by the time a query was planned, and a
/// pipeline's results must not depend on when it started) and, at `from` =
/// `Volatile`, `random()` (a window's or view's results must not change with replays and
/// restores).
fn refuse_time_dependent(expr: &Expr, from: Volatility) -> Result<(), CompileError> {
    let refused = |v: Volatility| match from {
        Volatility::Volatile => v != Volatility::Immutable,
        _ => v == Volatility::Stable,
    };
    let mut found = None;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e {
            if refused(f.func.signature().volatility) {
                found = Some(f.func.name().to_string());
                return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    match found {
        Some(name) => Err(CompileError::TimeDependent(name)),
        None => Ok(()),
    }
}

/// The functions DataFusion runs only once its planner rewrote them (`coalesce`, `nvl`,
/// `ifnull`, `nvl2` into `CASE`, `arrow_cast` into a cast: called as they are, they fail with
/// an internal error at the first batch), rewritten so. Nothing else is touched: the
/// expression's text is part of the checkpoint fingerprint, and these never ran before.
fn rewritten_to_run(expr: Expr, schema: &DFSchema) -> Result<Expr, CompileError> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
    const REWRITTEN: [&str; 4] = ["coalesce", "nvl", "nvl2", "arrow_cast"];
    let context = SimplifyContext::default().with_schema(Arc::new(schema.clone()));
    let rewritten = expr.transform_up(|e| {
        let Expr::ScalarFunction(f) = e else {
            return Ok(Transformed::no(e));
        };
        if !REWRITTEN.contains(&f.func.name()) {
            return Ok(Transformed::no(Expr::ScalarFunction(f)));
        }
        let func = f.func.clone();
        Ok(match func.simplify(f.args, &context)? {
            ExprSimplifyResult::Simplified(e) => Transformed::yes(e),
            ExprSimplifyResult::Original(args) => Transformed::no(Expr::ScalarFunction(
                datafusion::logical_expr::expr::ScalarFunction { func, args },
            )),
        })
    });
    Ok(rewritten.map_err(clean)?.data)
}

/// `expr` with integer `+`, `-` and `*` that fail on overflow instead of wrapping
/// (DataFusion wraps by default: `recordCount * sizeBytes` of 1e10 and 1e12 would give a
/// wrapped number, and a `where` on it would drop or keep the event wrongly). A row whose
/// arithmetic overflows then fails to evaluate, and goes to the dead-letter output with the
/// error (see [`crate::isolate`]), as a division by zero does. Negation is checked too
/// (`-x` of `i64::MIN` wrapped to itself). (The expression displays as before: checkpoint
/// fingerprints hold it.)
pub fn checked_arithmetic(
    expr: Arc<dyn PhysicalExpr>,
) -> Result<Arc<dyn PhysicalExpr>, CompileError> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, NegativeExpr};
    let rewritten = expr.transform_up(|e| {
        if let Some(b) = e.as_any().downcast_ref::<BinaryExpr>() {
            if matches!(
                b.op(),
                Operator::Plus | Operator::Minus | Operator::Multiply
            ) {
                let checked = BinaryExpr::new(b.left().clone(), *b.op(), b.right().clone())
                    .with_fail_on_overflow(true);
                return Ok(Transformed::yes(Arc::new(checked) as Arc<dyn PhysicalExpr>));
            }
        }
        if let Some(n) = e.as_any().downcast_ref::<NegativeExpr>() {
            let checked = crate::checked_negative::CheckedNegative::new(n.arg().clone());
            return Ok(Transformed::yes(Arc::new(checked) as Arc<dyn PhysicalExpr>));
        }
        Ok(Transformed::no(e))
    });
    Ok(rewritten.map_err(clean)?.data)
}

/// `input` evaluated only on the rows `filter` keeps (`CASE WHEN filter THEN input END`):
/// an aggregate's argument that fails on a row its `FILTER` leaves out must not dead-letter
/// that row (the accumulator never reads it).
fn only_where(
    input: Arc<dyn PhysicalExpr>,
    filter: Option<&Arc<dyn PhysicalExpr>>,
) -> Result<Arc<dyn PhysicalExpr>, CompileError> {
    use datafusion::physical_expr::expressions::{CaseExpr, Column, Literal};
    let Some(filter) = filter else {
        return Ok(input);
    };
    // (a column or a constant cannot fail: no second evaluation of the FILTER for them)
    let any = input.as_any();
    if any.is::<Column>() || any.is::<Literal>() {
        return Ok(input);
    }
    let case = CaseExpr::try_new(None, vec![(filter.clone(), input)], None).map_err(clean)?;
    Ok(Arc::new(case))
}

/// The type a `sum` of 64-bit integers adds in: 38 digits hold the sum of 2^64 values of
/// 2^63, so it cannot wrap.
pub const WIDE_SUM: DataType = DataType::Decimal128(38, 0);

/// `sum(x)` of an `Int64` or `UInt64` argument (smaller integers are coerced to them) as
/// `sum(CAST(x AS Decimal128(38, 0)))`, with the integer type to give results in: DataFusion
/// adds 64-bit integers with wrapping, so two events of 2^62 would sum to a negative number.
/// The result stays the integer type, as DataFusion and every sink's existing tables and
/// schemas have it; a sum outside its range becomes null when cast back (never a wrapped
/// number), and operators count it (see `weir_operators::window::Groups::finish`).
pub fn widen_integer_sum(expr: Expr, schema: &DFSchema) -> (Expr, Option<DataType>) {
    use datafusion::logical_expr::expr::{AggregateFunction, Cast};
    use datafusion::logical_expr::ExprSchemable;
    let Expr::AggregateFunction(AggregateFunction { func, mut params }) = expr else {
        return (expr, None);
    };
    let arg_type = match params.args.as_slice() {
        [arg] if func.name() == "sum" => arg.get_type(schema).ok(),
        _ => None,
    };
    let output_type = match arg_type {
        Some(t @ (DataType::Int64 | DataType::UInt64)) => t,
        _ => {
            return (
                Expr::AggregateFunction(AggregateFunction { func, params }),
                None,
            )
        }
    };
    let arg = params.args.remove(0);
    params
        .args
        .push(Expr::Cast(Cast::new(Box::new(arg), WIDE_SUM)));
    (
        Expr::AggregateFunction(AggregateFunction { func, params }),
        Some(output_type),
    )
}

/// Whether weir's 128-bit sum serves `function`, a widened integer `sum`: not `DISTINCT`,
/// its state DataFusion's (one `Decimal128(38, 0)` column), its argument the cast to it.
/// Then the cast leaves `inputs`: the accumulator takes the integers as they are.
fn serves_wide_sum(function: &AggregateFunctionExpr, inputs: &mut [Arc<dyn PhysicalExpr>]) -> bool {
    use datafusion::physical_expr::expressions::CastExpr;
    if function.is_distinct() || function.fun().name() != "sum" {
        return false;
    }
    let state = function.state_fields().ok();
    let state: Option<Vec<&DataType>> = state
        .as_ref()
        .map(|s| s.iter().map(|f| f.data_type()).collect());
    if state.as_deref() != Some(&[&WIDE_SUM][..]) {
        return false;
    }
    let [arg] = inputs else {
        return false;
    };
    let Some(cast) = arg.as_any().downcast_ref::<CastExpr>() else {
        return false;
    };
    if cast.cast_type() != &WIDE_SUM {
        return false;
    }
    *arg = cast.expr().clone();
    true
}

/// The float `max`/`min` weir serves for `function`: not `DISTINCT`, one argument of a float
/// type, and DataFusion's state (one column of that type, checked so that checkpoints stay
/// interchangeable).
fn float_extreme(function: &AggregateFunctionExpr, schema: &Schema) -> Option<FloatExtreme> {
    if function.is_distinct() {
        return None;
    }
    let [arg] = function.expressions().try_into().ok()?;
    let arg_type = arg.data_type(schema).ok()?;
    let extreme = FloatExtreme::of(function.fun().name(), &arg_type)?;
    let state = function.state_fields().ok()?;
    match state.as_slice() {
        [f] if f.data_type() == &arg_type => Some(extreme),
        _ => None,
    }
}

/// The spec of weir's vectorised first/last value when it can serve `function`: one string
/// argument, one `ORDER BY` of a 64-bit type, and DataFusion's state layout
/// `[value, ordering, is_set]` (checked, so checkpoints stay interchangeable).
fn ordered_value_spec(
    function: &AggregateFunctionExpr,
    schema: &SchemaRef,
) -> Option<OrderedValueSpec> {
    if function.is_distinct() || function.is_reversed() {
        return None;
    }
    let args = function.expressions();
    let ([arg], [order]) = (args.as_slice(), function.order_bys()) else {
        return None;
    };
    let value_type = arg.data_type(schema).ok()?;
    let ordering_type = order.expr.data_type(schema).ok()?;
    let spec = OrderedValueSpec::supported(
        function.fun().name(),
        &value_type,
        &ordering_type,
        order.options,
        function.ignore_nulls(),
    )?;
    let state = function.state_fields().ok()?;
    let layout: Vec<&DataType> = state.iter().map(|f| f.data_type()).collect();
    (layout == [&value_type, &ordering_type, &DataType::Boolean]).then_some(spec)
}

fn contains_aggregate(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if matches!(e, Expr::AggregateFunction(_)) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// DataFusion's message: the innermost DataFusion error's own text (no error-kind prefix,
/// no backtrace), first line only.
/// Why an expression of a pipeline does not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// DataFusion refused it: reads as the first line of its root error (the rest is
    /// DataFusion's context); the error itself is kept in `error`, not chained, since its
    /// text repeats that line among others.
    #[error("{message}")]
    Sql {
        message: String,
        error: Box<DataFusionError>,
    },
    /// The input schema is not one DataFusion takes.
    #[error("{0}")]
    Schema(Box<DataFusionError>),
    #[error("a filter cannot use an aggregate function")]
    AggregateInFilter,
    #[error("the filter must be a boolean condition, but it gives {0}")]
    NotBoolean(DataType),
    /// A function whose result depends on when it runs (its name).
    #[error("`{0}()` gives a different result each time it runs (the time, a random number): results would change with replays and restores; compare with the event's own time field instead")]
    TimeDependent(String),
    /// An aggregate that is not an aggregate call (the SQL written).
    #[error("`{0}` is not an aggregate call; use an aggregate function such as count(*), sum(x), min(x), max(x), avg(x), count(DISTINCT x), approx_distinct(x), approx_percentile_cont(x, 0.99)")]
    NotAggregate(String),
}

/// DataFusion's error as a [`CompileError::Sql`].
fn clean(e: DataFusionError) -> CompileError {
    let message = e
        .find_root()
        .message()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    CompileError::Sql {
        message,
        error: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("datasetName", DataType::Utf8, true),
            Field::new("recordCount", DataType::Int64, true),
            Field::new("status", DataType::Utf8, true),
            Field::new("latencyMs", DataType::Int64, true),
        ]))
    }

    #[test]
    fn compiles_the_spec_aggregates() {
        let c = SqlCompiler::new();
        let s = schema();
        for sql in [
            "count(*)",
            "count(recordCount)",
            "sum(recordCount)",
            "min(recordCount)",
            "max(recordCount)",
            "avg(recordCount)",
            "count(*) FILTER (WHERE status = 'FAILURE')",
            "count(DISTINCT status)",
            "approx_distinct(datasetName)",
            "approx_percentile_cont(latencyMs, 0.99)",
            "last_value(status ORDER BY latencyMs)",
        ] {
            let a = c
                .aggregate("x", sql, &s)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(a.output_field().name(), "x");
        }
        let f = c
            .aggregate("f", "count(*) FILTER (WHERE status = 'FAILURE')", &s)
            .unwrap();
        assert!(f.filter.is_some());
    }

    #[test]
    fn integer_arithmetic_fails_on_overflow_instead_of_wrapping() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::record_batch::RecordBatch;
        let c = SqlCompiler::new();
        let s = schema();
        let batch = |count: i64, latency: i64| {
            RecordBatch::try_new(
                s.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["d"])),
                    Arc::new(Int64Array::from(vec![count])),
                    Arc::new(StringArray::from(vec!["OK"])),
                    Arc::new(Int64Array::from(vec![latency])),
                ],
            )
            .unwrap()
        };
        let big = batch(10_000_000_000, 1_000_000_000_000);
        let min = batch(i64::MIN, 1);
        for sql in [
            "recordCount * latencyMs > 0",
            "recordCount + 9223372036854775807 > 0",
            "0 - recordCount - latencyMs < 0",
            "-recordCount < latencyMs",
            "-(recordCount - 1) > 0",
        ] {
            let p = c.predicate(sql, &s).unwrap();
            let e = p.evaluate(&big).and(p.evaluate(&min)).err();
            assert!(
                e.is_some_and(|e| e.to_string().contains("Overflow")),
                "{sql}"
            );
            // it reads as before (checkpoint fingerprints hold it)
            assert_eq!(
                p.to_string(),
                c.output_predicate(sql, &s).unwrap().to_string()
            );
        }
        // a sink's `where` runs as DataFusion has it
        let p = c
            .output_predicate("recordCount * latencyMs > 0", &s)
            .unwrap();
        assert!(p.evaluate(&big).is_ok());
        let a = c
            .aggregate("v", "sum(recordCount * latencyMs)", &s)
            .unwrap();
        assert!(a.inputs[0].evaluate(&big).is_err());
        assert!(a.inputs[0].evaluate(&batch(3, 4)).is_ok());
        let a = c
            .aggregate(
                "v",
                "count(*) FILTER (WHERE recordCount * latencyMs > 0)",
                &s,
            )
            .unwrap();
        assert!(a.filter.unwrap().evaluate(&big).is_err());
        // an argument is evaluated on the rows the FILTER keeps only
        let a = c
            .aggregate(
                "v",
                "sum(recordCount * latencyMs) FILTER (WHERE latencyMs < 1000)",
                &s,
            )
            .unwrap();
        assert!(a.inputs[0].evaluate(&big).is_ok(), "left out by the FILTER");
        assert!(a.inputs[0].evaluate(&batch(i64::MAX, 2)).is_err());
        // floats are not integers: they go to infinity as IEEE 754 says
        let p = c
            .predicate("CAST(recordCount AS DOUBLE) * 1e300 > 0", &s)
            .unwrap();
        assert!(p.evaluate(&big).is_ok());
    }

    #[test]
    fn what_fails_whatever_the_rows_is_refused_when_compiled() {
        let c = SqlCompiler::new();
        let s = schema();
        for (sql, says) in [
            ("max(now())", "now()"),
            ("max(current_date())", "current_date()"),
            ("count(*) FILTER (WHERE random() > 0.5)", "random()"),
            ("approx_percentile_cont(latencyMs, recordCount)", "literal"),
            ("approx_percentile_cont(latencyMs, 1.5)", "between"),
            ("nth_value(latencyMs, 0 ORDER BY recordCount)", ""),
            ("grouping(datasetName)", ""),
        ] {
            let e = c.aggregate("x", sql, &s).map(|_| ()).unwrap_err();
            assert!(e.to_string().contains(says), "{sql}: {e}");
        }
        // random() in a window's or view's `where`: refused; in a sink's, it samples
        let e = c
            .predicate("CAST(recordCount AS DOUBLE) > random()", &s)
            .unwrap_err();
        assert!(e.to_string().contains("random()"), "{e}");
        c.output_predicate("CAST(recordCount AS DOUBLE) > random()", &s)
            .unwrap();
        // a constant that overflows fails whatever the rows: refused
        let e = c
            .output_predicate("latencyMs > 10 * 1000000000000000000", &s)
            .unwrap_err();
        assert!(e.to_string().contains("Overflow"), "{e}");
        // now() cannot run anywhere (DataFusion replaces it with the planning time)
        let e = c.output_predicate("now() IS NOT NULL", &s).unwrap_err();
        assert!(e.to_string().contains("now()"), "{e}");
    }

    #[test]
    fn functions_datafusion_runs_only_rewritten_run() {
        use arrow::array::{Int64Array, StringArray};
        use arrow::record_batch::RecordBatch;
        let c = SqlCompiler::new();
        let s = schema();
        let batch = RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("d"), None])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(StringArray::from(vec![Some("PARTIAL"), None])),
                Arc::new(Int64Array::from(vec![5, 7])),
            ],
        )
        .unwrap();
        for sql in [
            "coalesce(status, '') <> 'PARTIAL'",
            "nvl(status, '') <> 'PARTIAL'",
            "ifnull(status, '') <> 'PARTIAL'",
            "nvl2(status, 'x', 'y') = 'y'",
            "arrow_cast(latencyMs, 'Int32') > 6",
        ] {
            let p = c.predicate(sql, &s).unwrap();
            let v = p.evaluate(&batch).unwrap().into_array(2).unwrap();
            assert_eq!(
                v.as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>(),
                vec![Some(false), Some(true)],
                "{sql}"
            );
        }
        for sql in [
            "sum(coalesce(recordCount, 0))",
            "max(arrow_cast(latencyMs, 'Int8'))",
            "count(*) FILTER (WHERE coalesce(status, '') = 'PARTIAL')",
        ] {
            let a = c
                .aggregate("x", sql, &s)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for e in a.inputs.iter().chain(&a.filter) {
                e.evaluate(&batch).unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    #[test]
    fn explains_bad_sql() {
        let c = SqlCompiler::new();
        let s = schema();
        let e = c.aggregate("x", "sum(nope)", &s).unwrap_err();
        assert!(matches!(e, CompileError::Sql { .. }), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
        // DataFusion's own error is kept, not chained (its text repeats the message)
        assert!(std::error::Error::source(&e).is_none());
        let e = c.aggregate("x", "medianish(recordCount)", &s).unwrap_err();
        assert!(e.to_string().contains("medianish"), "{e}");
        let e = c.aggregate("x", "recordCount + 1", &s).unwrap_err();
        assert!(matches!(e, CompileError::NotAggregate(_)), "{e}");
        assert!(e.to_string().contains("not an aggregate"), "{e}");
        let e = c.predicate("status = ", &s).unwrap_err();
        assert!(!e.to_string().is_empty());
        let e = c.predicate("recordCount + 1", &s).unwrap_err();
        assert!(
            matches!(e, CompileError::NotBoolean(DataType::Int64)),
            "{e}"
        );
        assert!(e.to_string().contains("boolean"), "{e}");
        assert!(c
            .predicate("status <> 'PARTIAL' AND recordCount > 10.5", &s)
            .is_ok());
    }
}
