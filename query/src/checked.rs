//! Integer arithmetic that fails on overflow in SQL queries, as PostgreSQL's does.
//!
//! DataFusion adds, subtracts, multiplies and negates integers with wrapping: on a view,
//! `SELECT bytes * 1000` of 10^16 answered a negative number. The analyzer rule
//! [`CheckedArithmetic`] runs after DataFusion's type coercion and rewrites each such
//! operation on two integers of one type into a call that fails with "arithmetic overflow"
//! (SQLSTATE 22003), keeping the column names the query's text gives. Floats, decimals and
//! temporal values are left as they are (their kernels are the same either way).

use std::any::Any;
use std::sync::Arc;

use arrow::compute::kernels::numeric;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr_common::datum::apply;

/// The analyzer rule: integer `+`, `-`, `*` and unary `-` become checked calls.
#[derive(Debug, Default)]
pub struct CheckedArithmetic;

impl AnalyzerRule for CheckedArithmetic {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(rewrite_node)
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "weir_checked_arithmetic"
    }
}

fn rewrite_node(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    if matches!(plan, LogicalPlan::TableScan(_)) {
        return Ok(Transformed::no(plan));
    }
    let schema = merge_schema(&plan.inputs());
    let names = NamePreserver::new(&plan);
    let rewritten = plan.map_expressions(|expr| {
        let name = names.save(&expr);
        expr.transform_up(|e| checked(e, &schema))
            .map(|t| t.update_data(|e| name.restore(e)))
    })?;
    if rewritten.transformed {
        rewritten.map_data(|plan| plan.recompute_schema())
    } else {
        Ok(rewritten)
    }
}

/// `expr`, type-coerced over `schema`, with its integer arithmetic checked.
pub(crate) fn checked_expr(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    expr.transform_up(|e| checked(e, schema)).map(|t| t.data)
}

/// `e` as a checked call when it is integer arithmetic; else unchanged.
fn checked(e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let integer = |x: &Expr| x.get_type(schema).ok().filter(DataType::is_integer);
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let op_kind = match op {
                Operator::Plus => Op::Add,
                Operator::Minus => Op::Sub,
                Operator::Multiply => Op::Mul,
                _ => {
                    return Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                        left,
                        op,
                        right,
                    })))
                }
            };
            match (integer(&left), integer(&right)) {
                (Some(l), Some(r)) if l == r => Ok(Transformed::yes(call(op_kind, *left, *right))),
                _ => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr {
                    left,
                    op,
                    right,
                }))),
            }
        }
        Expr::Negative(inner) => match integer(&inner) {
            Some(t) if t.is_signed_integer() => {
                let zero = ScalarValue::new_zero(&t)?;
                Ok(Transformed::yes(call(
                    Op::Sub,
                    Expr::Literal(zero, None),
                    *inner,
                )))
            }
            _ => Ok(Transformed::no(Expr::Negative(inner))),
        },
        other => Ok(Transformed::no(other)),
    }
}

fn call(op: Op, left: Expr, right: Expr) -> Expr {
    ScalarUDF::new_from_impl(CheckedOp::new(op)).call(vec![left, right])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

/// `checked_add`, `checked_sub`, `checked_mul`: two integers of one type, an error on overflow.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedOp {
    op: Op,
    signature: Signature,
}

impl CheckedOp {
    fn new(op: Op) -> Self {
        CheckedOp {
            op,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for CheckedOp {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        match self.op {
            Op::Add => "checked_add",
            Op::Sub => "checked_sub",
            Op::Mul => "checked_mul",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        let ty = args.arg_fields[0].data_type().clone();
        Ok(Arc::new(Field::new(self.name(), ty, nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [left, right] = args.args.as_slice() else {
            return datafusion::common::exec_err!("{} takes two arguments", self.name());
        };
        match self.op {
            Op::Add => apply(left, right, numeric::add),
            Op::Sub => apply(left, right, numeric::sub),
            Op::Mul => apply(left, right, numeric::mul),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::Schema;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    async fn run(sql: &str) -> Result<Vec<RecordBatch>> {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_analyzer_rule(Arc::new(CheckedArithmetic))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![
                Some(i64::MAX),
                Some(1),
                None,
            ]))],
        )?;
        ctx.register_batch("t", batch)?;
        ctx.sql(sql).await?.collect().await
    }

    fn overflowed(r: Result<Vec<RecordBatch>>) -> bool {
        matches!(
            r.map_err(|e| e.find_root().to_string()),
            Err(m) if m.contains("Overflow")
        )
    }

    #[tokio::test]
    async fn integer_overflow_fails_in_every_operation() {
        assert!(overflowed(run("SELECT x + 1 FROM t").await));
        assert!(overflowed(run("SELECT x * 2 FROM t").await));
        assert!(overflowed(run("SELECT -x - 2 FROM t").await));
        assert!(overflowed(run("SELECT sum(x * 2) FROM t").await));
        assert!(overflowed(run("SELECT 1 FROM t WHERE x + 1 > 0").await));
        assert!(overflowed(
            run("SELECT -(x + 1 - x - 1 - 9223372036854775807 - 1) FROM t WHERE x = 1").await
        ));
        assert!(overflowed(run("SELECT 9223372036854775807 + 1").await));
    }

    #[tokio::test]
    async fn names_and_results_are_unchanged_when_nothing_overflows() {
        let out = run("SELECT x + 1, x * 2 AS twice, -x FROM t WHERE x = 1")
            .await
            .unwrap();
        let schema = out[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["t.x + Int64(1)", "twice", "(- t.x)"]);
        let row: Vec<i64> = (0..3)
            .map(|i| {
                out[0]
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            })
            .collect();
        assert_eq!(row, [2, 2, -1]);
        // floats keep IEEE arithmetic; group keys computed from arithmetic still group
        let out = run("SELECT x % 2 + 1 AS k, count(*) FROM t GROUP BY x % 2 + 1 ORDER BY k")
            .await
            .unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let f = run("SELECT CAST(x AS DOUBLE) * 2 FROM t").await.unwrap();
        assert_eq!(f[0].num_rows(), 3);
    }
}
