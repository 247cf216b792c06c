//! Integer arithmetic that fails on overflow in SQL queries, as PostgreSQL's does.
//!
//! DataFusion adds, subtracts, multiplies and negates integers with wrapping: on a view,
//! `SELECT bytes * 1000` of 10^16 answered a negative number. The analyzer rule
//! [`CheckedArithmetic`] runs after DataFusion's type coercion and replaces each maximal
//! tree of such operations on integers of one type with one call, [`CheckedTree`], whose
//! arguments are the tree's leaves and which evaluates the tree with Arrow's checked kernels:
//! an overflow fails the query with "arithmetic overflow" (SQLSTATE 22003). One call per
//! tree, not one per operation: nested calls cost DataFusion's planner time that grows with
//! the cube of their depth (each call's type and name are worked out from its arguments').
//! The call prints as the expression it replaces, so column names do not change. Floats,
//! decimals and temporal values are left as they are (their kernels are the same either way).

use std::any::Any;
use std::sync::Arc;

use arrow::compute::kernels::numeric;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{exec_err, DFSchema, Result, ScalarValue};
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
        let (expr, changed) = checked_expr_changed(expr, &schema)?;
        let expr = name.restore(expr);
        Ok(if changed {
            Transformed::yes(expr)
        } else {
            Transformed::no(expr)
        })
    })?;
    if rewritten.transformed {
        rewritten.map_data(|plan| plan.recompute_schema())
    } else {
        Ok(rewritten)
    }
}

/// `expr`, type-coerced over `schema`, with its integer arithmetic checked.
pub(crate) fn checked_expr(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    checked_expr_changed(expr, schema).map(|(e, _)| e)
}

fn checked_expr_changed(expr: Expr, schema: &DFSchema) -> Result<(Expr, bool)> {
    let mut changed = false;
    let expr = rewrite(expr, schema, &mut changed)?.into_expr(&mut changed);
    Ok((expr, changed))
}

/// One node of a checked tree; children come before their parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    /// The call's argument `i`.
    Leaf(usize),
    Add(usize, usize),
    Sub(usize, usize),
    Mul(usize, usize),
    Neg(usize),
}

impl Node {
    fn shifted(self, nodes: usize, leaves: usize) -> Node {
        match self {
            Node::Leaf(i) => Node::Leaf(i + leaves),
            Node::Add(a, b) => Node::Add(a + nodes, b + nodes),
            Node::Sub(a, b) => Node::Sub(a + nodes, b + nodes),
            Node::Mul(a, b) => Node::Mul(a + nodes, b + nodes),
            Node::Neg(a) => Node::Neg(a + nodes),
        }
    }
}

/// A tree of integer arithmetic being gathered: its nodes (the root last) and leaves.
struct Tree {
    nodes: Vec<Node>,
    leaves: Vec<Expr>,
    ty: DataType,
}

impl Tree {
    fn leaf(e: Expr, ty: DataType) -> Tree {
        Tree {
            nodes: vec![Node::Leaf(0)],
            leaves: vec![e],
            ty,
        }
    }

    fn root(&self) -> usize {
        self.nodes.len() - 1
    }

    /// `left op right`: the smaller tree is appended to the larger, so that gathering a
    /// tree of n nodes moves each node O(log n) times.
    fn join(mut left: Tree, mut right: Tree, op: fn(usize, usize) -> Node) -> Tree {
        if left.nodes.len() >= right.nodes.len() {
            let (l, n, k) = (left.root(), left.nodes.len(), left.leaves.len());
            let r = right.root() + n;
            left.nodes
                .extend(right.nodes.into_iter().map(|x| x.shifted(n, k)));
            left.leaves.append(&mut right.leaves);
            left.nodes.push(op(l, r));
            left
        } else {
            let (r, n, k) = (right.root(), right.nodes.len(), right.leaves.len());
            let l = left.root() + n;
            right
                .nodes
                .extend(left.nodes.into_iter().map(|x| x.shifted(n, k)));
            right.leaves.append(&mut left.leaves);
            right.nodes.push(op(l, r));
            right
        }
    }
}

/// An expression being rewritten: integer arithmetic gathered so far, or anything else.
enum Part {
    Tree(Tree),
    Expr(Expr),
}

impl Part {
    fn into_expr(self, changed: &mut bool) -> Expr {
        match self {
            Part::Expr(e) => e,
            Part::Tree(mut t) if t.nodes.len() == 1 => t.leaves.remove(0),
            Part::Tree(t) => {
                *changed = true;
                let call = CheckedTree::new(t.nodes, t.ty);
                ScalarUDF::new_from_impl(call).call(t.leaves)
            }
        }
    }

    /// As a tree when it is integer arithmetic or any other integer expression (a leaf).
    fn into_tree(self, schema: &DFSchema) -> Result<Tree, Expr> {
        match self {
            Part::Tree(t) => Ok(t),
            Part::Expr(e) => match e.get_type(schema) {
                Ok(ty) if ty.is_integer() => Ok(Tree::leaf(e, ty)),
                _ => Err(e),
            },
        }
    }
}

/// `e` with its integer arithmetic gathered into trees, in one pass (its stack grows on the
/// heap: expressions may nest thousands deep).
#[recursive::recursive]
fn rewrite(e: Expr, schema: &DFSchema, changed: &mut bool) -> Result<Part> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(op, Operator::Plus | Operator::Minus | Operator::Multiply) =>
        {
            let l = rewrite(*left, schema, changed)?;
            let r = rewrite(*right, schema, changed)?;
            let node: fn(usize, usize) -> Node = match op {
                Operator::Plus => Node::Add,
                Operator::Minus => Node::Sub,
                _ => Node::Mul,
            };
            match (l.into_tree(schema), r.into_tree(schema)) {
                (Ok(l), Ok(r)) if l.ty == r.ty => Ok(Part::Tree(Tree::join(l, r, node))),
                (l, r) => {
                    let back = |x: Result<Tree, Expr>, c: &mut bool| match x {
                        Ok(t) => Part::Tree(t).into_expr(c),
                        Err(e) => e,
                    };
                    let left = Box::new(back(l, changed));
                    let right = Box::new(back(r, changed));
                    Ok(Part::Expr(Expr::BinaryExpr(BinaryExpr { left, op, right })))
                }
            }
        }
        Expr::Negative(inner) => match rewrite(*inner, schema, changed)?.into_tree(schema) {
            Ok(mut t) if t.ty.is_signed_integer() => {
                let root = t.root();
                t.nodes.push(Node::Neg(root));
                Ok(Part::Tree(t))
            }
            Ok(t) => Ok(Part::Expr(Expr::Negative(Box::new(
                Part::Tree(t).into_expr(changed),
            )))),
            Err(e) => Ok(Part::Expr(Expr::Negative(Box::new(e)))),
        },
        other => {
            let rewritten = other.map_children(|c| {
                let mut inner = false;
                let c = rewrite(c, schema, &mut inner)?.into_expr(&mut inner);
                *changed |= inner;
                Ok(if inner {
                    Transformed::yes(c)
                } else {
                    Transformed::no(c)
                })
            })?;
            Ok(Part::Expr(rewritten.data))
        }
    }
}

/// A tree of integer `+`, `-`, `*` and negations over its arguments, of one integer type,
/// evaluated with Arrow's checked kernels: an overflow is an error.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedTree {
    nodes: Vec<Node>,
    ty: DataType,
    signature: Signature,
}

impl CheckedTree {
    fn new(nodes: Vec<Node>, ty: DataType) -> Self {
        CheckedTree {
            nodes,
            ty,
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }

    /// The tree written as DataFusion writes the expression it replaces, each leaf by `leaf`.
    fn write(&self, leaf: impl Fn(usize) -> String) -> String {
        enum Step {
            Node(usize),
            Text(&'static str),
        }
        let mut out = String::new();
        let mut stack = vec![Step::Node(self.nodes.len() - 1)];
        while let Some(step) = stack.pop() {
            let n = match step {
                Step::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Step::Node(n) => n,
            };
            let (a, op, b) = match self.nodes[n] {
                Node::Leaf(i) => {
                    out.push_str(&leaf(i));
                    continue;
                }
                Node::Neg(a) => {
                    out.push_str("(- ");
                    stack.push(Step::Text(")"));
                    stack.push(Step::Node(a));
                    continue;
                }
                Node::Add(a, b) => (a, " + ", b),
                Node::Sub(a, b) => (a, " - ", b),
                Node::Mul(a, b) => (a, " * ", b),
            };
            stack.push(Step::Node(b));
            stack.push(Step::Text(op));
            stack.push(Step::Node(a));
        }
        out
    }
}

impl ScalarUDFImpl for CheckedTree {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        "checked_arithmetic"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.ty.clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(self.name(), self.ty.clone(), nullable)))
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        Ok(self.write(|i| args[i].schema_name().to_string()))
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        self.schema_name(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut values: Vec<Option<ColumnarValue>> = vec![None; self.nodes.len()];
        let take = |values: &mut Vec<Option<ColumnarValue>>, i: usize| {
            values[i].take().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(
                    "a checked tree's node was used twice".into(),
                )
            })
        };
        for (n, node) in self.nodes.iter().enumerate() {
            let v = match *node {
                Node::Leaf(i) => match args.args.get(i) {
                    Some(v) => v.clone(),
                    None => return exec_err!("a checked tree lacks its argument {i}"),
                },
                Node::Add(a, b) => {
                    apply(&take(&mut values, a)?, &take(&mut values, b)?, numeric::add)?
                }
                Node::Sub(a, b) => {
                    apply(&take(&mut values, a)?, &take(&mut values, b)?, numeric::sub)?
                }
                Node::Mul(a, b) => {
                    apply(&take(&mut values, a)?, &take(&mut values, b)?, numeric::mul)?
                }
                Node::Neg(a) => match take(&mut values, a)? {
                    ColumnarValue::Array(x) => ColumnarValue::Array(numeric::neg(x.as_ref())?),
                    ColumnarValue::Scalar(x) => {
                        let negated = numeric::neg(&x.to_array()?)?;
                        ColumnarValue::Scalar(ScalarValue::try_from_array(&negated, 0)?)
                    }
                },
            };
            values[n] = Some(v);
        }
        take(&mut values, self.nodes.len() - 1)
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
        context()?.sql(sql).await?.collect().await
    }

    /// A session with the rule and `t(x)`: i64::MAX, 1 and null.
    fn context() -> Result<SessionContext> {
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
        Ok(ctx)
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
        // inside other expressions, and mixed with floats
        assert!(overflowed(run("SELECT abs(x * 3) FROM t").await));
        assert!(overflowed(run("SELECT (x + 1) * 1.5 FROM t").await));
    }

    #[tokio::test]
    async fn names_and_results_are_unchanged_when_nothing_overflows() {
        let out = run("SELECT x + 1, x * 2 AS twice, -x, (x + 2) * 3 - x FROM t WHERE x = 1")
            .await
            .unwrap();
        let schema = out[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "t.x + Int64(1)",
                "twice",
                "(- t.x)",
                "t.x + Int64(2) * Int64(3) - t.x"
            ]
        );
        let row: Vec<i64> = (0..4)
            .map(|i| {
                out[0]
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            })
            .collect();
        assert_eq!(row, [2, 2, -1, 8]);
        let out = run("SELECT x % 2 + 1 AS k, count(*) FROM t GROUP BY x % 2 + 1 ORDER BY k")
            .await
            .unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let f = run("SELECT CAST(x AS DOUBLE) * 2 FROM t").await.unwrap();
        assert_eq!(f[0].num_rows(), 3);
    }

    /// A chain of 2,000 subtractions is one checked call over its 2,000 leaves, not 1,999
    /// nested calls (whose planning time grew with the cube of the depth: minutes), and
    /// still computes its value. On a 64 MiB stack, as the engine's SQL threads have: the
    /// parser recurses.
    #[test]
    fn a_long_chain_is_one_call() {
        use datafusion::common::tree_node::TreeNodeRecursion;
        let chain = vec!["x"; 2000].join(" - ");
        let sql = format!("SELECT {chain} AS v FROM t WHERE x = 1");
        let (calls, value) = std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let df = context().unwrap().sql(&sql).await.unwrap();
                    let plan = df.clone().into_optimized_plan().unwrap();
                    let mut calls = 0;
                    plan.apply_expressions(|e| {
                        e.apply(|e| {
                            if matches!(e, Expr::ScalarFunction(f) if f.func.name() == "checked_arithmetic")
                            {
                                calls += 1;
                            }
                            Ok(TreeNodeRecursion::Continue)
                        })
                    })
                    .unwrap();
                    let out = df.collect().await.unwrap();
                    let v = out[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    (calls, v.value(0))
                })
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(calls, 1);
        assert_eq!(value, 1 - 1999);
    }
}
