//! The `where` predicate of a subscription, evaluated by DataFusion on change batches.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchema;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{Expr, Volatility};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::SubscribeError;

/// Parses predicates against a table's schema (identifiers as written, as in `/sql`; the
/// size-setting functions bounded as there).
pub struct Compiler {
    ctx: SessionContext,
}

impl Compiler {
    pub fn new(memory_bytes: usize) -> Self {
        let mut config = SessionConfig::new();
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let ctx = SessionContext::new_with_config(config);
        crate::bounded::register(&ctx, memory_bytes);
        Compiler { ctx }
    }

    /// The predicate `sql` over rows of `schema`; it must be boolean.
    pub fn compile(&self, sql: &str, schema: &SchemaRef) -> Result<Filter, SubscribeError> {
        let bad =
            |e: datafusion::error::DataFusionError| SubscribeError::Where(crate::engine::clean(&e));
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(bad)?;
        let expr = self.ctx.parse_sql_expr(sql, &df_schema).map_err(bad)?;
        if let Some(name) = time_dependent(&expr) {
            return Err(SubscribeError::Where(format!(
                "`{name}()` cannot be used in a subscription's `where`: it would be evaluated \
                 once, when the subscription starts, not as changes arrive; compare with a \
                 constant (a timestamp literal) instead"
            )));
        }
        // as a query's planner does: types coerced, integer arithmetic checked (never
        // wrapped), then simplified (`coalesce` and the like run only once rewritten)
        let simplifier = ExprSimplifier::new(
            SimplifyContext::default().with_schema(Arc::new(df_schema.clone())),
        );
        let expr = simplifier.coerce(expr, &df_schema).map_err(bad)?;
        let expr = crate::checked::checked_expr(expr, &df_schema).map_err(bad)?;
        let expr = simplifier.simplify(expr).map_err(bad)?;
        let physical = self
            .ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(bad)?;
        match physical.data_type(schema.as_ref()).map_err(bad)? {
            DataType::Boolean | DataType::Null => Ok(Filter { expr: physical }),
            other => Err(SubscribeError::Where(format!(
                "`where` must be a condition (a boolean), not a value of type {other}"
            ))),
        }
    }
}

/// The first function of `expr` whose value depends on when it runs (`now()`,
/// `current_date()`): DataFusion evaluates them once, as a constant.
fn time_dependent(expr: &Expr) -> Option<String> {
    let mut found = None;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e {
            if f.func.signature().volatility == Volatility::Stable {
                found = Some(f.func.name().to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A compiled predicate.
#[derive(Debug, Clone)]
pub struct Filter {
    expr: Arc<dyn PhysicalExpr>,
}

impl Filter {
    /// Per row, whether it matches (null does not).
    pub fn matches(&self, batch: &RecordBatch) -> Result<Vec<bool>, String> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Vec::new());
        }
        let value = self
            .expr
            .evaluate(batch)
            .and_then(|v| v.into_array(n))
            .map_err(|e| crate::engine::clean(&e))?;
        let Some(mask) = value.as_any().downcast_ref::<BooleanArray>() else {
            return Ok(vec![false; n]);
        };
        Ok((0..n).map(|i| mask.is_valid(i) && mask.value(i)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("serviceName", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(5)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_predicate_keeps_matching_rows_and_nulls_do_not_match() {
        let b = batch();
        let c = Compiler::new(1 << 20);
        let f = c
            .compile("\"serviceName\" <> 'a' AND n > 0", &b.schema())
            .unwrap();
        assert_eq!(f.matches(&b).unwrap(), vec![false, false, true]);
        let f = c.compile("serviceName IN ('a', 'b')", &b.schema()).unwrap();
        assert_eq!(f.matches(&b).unwrap(), vec![true, true, false]);
    }

    #[test]
    fn bad_predicates_are_refused_with_the_database_message() {
        let b = batch();
        let c = Compiler::new(1 << 20);
        let e = c.compile("nope = 1", &b.schema()).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = c.compile("n +", &b.schema()).unwrap_err().to_string();
        assert!(!e.is_empty());
        let e = c.compile("n + 1", &b.schema()).unwrap_err().to_string();
        assert!(e.contains("boolean"), "{e}");
        let e = c.compile("now() > n", &b.schema()).unwrap_err().to_string();
        assert!(e.contains("`now()` cannot be used"), "{e}");
    }

    #[test]
    fn functions_the_planner_rewrites_run_and_integers_never_wrap() {
        let b = batch();
        let c = Compiler::new(1 << 20);
        // coalesce failed at the first change ("should have been simplified")
        let f = c.compile("coalesce(n, 5) = 5", &b.schema()).unwrap();
        assert_eq!(f.matches(&b).unwrap(), vec![false, true, true]);
        let f = c
            .compile("n * 9223372036854775807 > 0", &b.schema())
            .unwrap();
        let e = f.matches(&b).unwrap_err();
        assert!(e.contains("Overflow"), "{e}");
        let f = c.compile("-n < 0", &b.schema()).unwrap();
        assert_eq!(f.matches(&b).unwrap(), vec![true, false, true]);
    }
}
