//! Point queries on a view answered without planning: `SELECT cols FROM view WHERE key = 'x'`.
//!
//! Planning a query with DataFusion costs about a millisecond (a session, the logical plan,
//! the optimizer, the physical plan), which is most of a point query's time. Like
//! Materialize's fast-path peeks, a query of exactly this shape is answered straight from the
//! pinned snapshot through the view's key index:
//! - one `SELECT` of plain columns (optionally renamed with `AS`) or `*`;
//! - `FROM` one view by its bare name;
//! - `WHERE` an `AND` of `key = literal` binding every key column once (string literals for
//!   string keys, integers for integer keys).
//!
//! Anything else (any other clause, expression, type or table, an unknown column, a
//! placeholder) goes to DataFusion, which also gives every error. The answer equals
//! DataFusion's for the same query (tested below).

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Ident, SelectItem, SetExpr, Statement, TableFactor, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use weir_engine::live::{LiveKind, LiveSnapshot, LiveState};

use crate::engine::{QueryError, QueryResult};

/// What a point query asks for, resolved against a view.
#[derive(Debug, PartialEq)]
struct PointQuery {
    table: usize,
    /// (column index in the view, output name).
    columns: Vec<(usize, String)>,
    /// (key column index, value) for every key column.
    keys: Vec<(usize, ScalarValue)>,
}

/// The answer to `sql` when it is a point query on a view of `live` (see the module docs);
/// `Ok(None)` when DataFusion must plan it.
pub fn answer(
    live: &LiveState,
    snapshot: &LiveSnapshot,
    sql: &str,
) -> Result<Option<QueryResult>, QueryError> {
    let Some(q) = parse(live, sql) else {
        return Ok(None);
    };
    let (Some(Some(index)), Some([batch])) = (
        snapshot.indexes.get(q.table),
        snapshot.tables.get(q.table).map(Vec::as_slice),
    ) else {
        return Ok(None);
    };
    let err = |e: arrow::error::ArrowError| QueryError::Execution(e.to_string());
    let mut key_arrays = Vec::with_capacity(q.keys.len());
    for (_, v) in &q.keys {
        key_arrays.push(
            v.to_array()
                .map_err(|e| QueryError::Execution(e.to_string()))?,
        );
    }
    let ids = index
        .lookup(&key_arrays)
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    let rows: UInt32Array = ids
        .into_iter()
        .filter(|&id| (id as usize) < batch.num_rows())
        .collect();
    let mut found = take_record_batch(batch, &rows).map_err(err)?;
    // The index gives candidates by hash: keep the rows whose key is equal.
    for ((column, _), value) in q.keys.iter().zip(&key_arrays) {
        let scalar = arrow::array::Scalar::new(value.clone());
        let equal =
            arrow::compute::kernels::cmp::eq(found.column(*column), &scalar).map_err(err)?;
        found = filter_record_batch(&found, &equal).map_err(err)?;
    }
    let fields: Vec<Field> = q
        .columns
        .iter()
        .map(|(i, name)| batch.schema().field(*i).clone().with_name(name))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let columns: Vec<ArrayRef> = q
        .columns
        .iter()
        .map(|(i, _)| found.column(*i).clone())
        .collect();
    let out = RecordBatch::try_new(schema.clone(), columns).map_err(err)?;
    Ok(Some(QueryResult {
        schema,
        batches: vec![out],
    }))
}

/// Longest text tried as a point query.
const MAX_POINT_QUERY_BYTES: usize = 4096;

/// Resolves `sql` as a point query on a view of `live`, or `None`.
fn parse(live: &LiveState, sql: &str) -> Option<PointQuery> {
    // Cheap refusals before parsing: a point query is short (it binds each key once), so
    // long text goes to the planner, whose deep walks run on the large-stack query threads.
    if sql.len() > MAX_POINT_QUERY_BYTES {
        return None;
    }
    let head = sql.trim_start().get(..6)?;
    if !head.eq_ignore_ascii_case("select") {
        return None;
    }
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    let (Some(Statement::Query(query)), None) = (statements.pop(), statements.pop()) else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    let TableFactor::Table {
        name, alias: None, ..
    } = &from.relation
    else {
        return None;
    };
    let [part] = name.0.as_slice() else {
        return None;
    };
    let table_name = part.as_ident()?;
    let selection = select.selection.as_ref()?;
    // Every other clause is absent exactly when the query prints as the plain shape.
    let items: Vec<String> = select.projection.iter().map(|i| i.to_string()).collect();
    let plain = format!(
        "SELECT {} FROM {} WHERE {}",
        items.join(", "),
        name,
        selection
    );
    if query.to_string() != plain {
        return None;
    }
    let table = live.table(&table_name.value)?;
    let def = &live.tables[table];
    if !matches!(def.kind, LiveKind::View) {
        return None;
    }
    let schema = &def.schema;
    let mut columns = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::Wildcard(_) if item.to_string() == "*" => columns.extend(
                schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (i, f.name().clone())),
            ),
            SelectItem::UnnamedExpr(Expr::Identifier(id)) => {
                columns.push((column(schema, id)?, id.value.clone()))
            }
            SelectItem::ExprWithAlias {
                expr: Expr::Identifier(id),
                alias,
            } => columns.push((column(schema, id)?, alias.value.clone())),
            _ => return None,
        }
    }
    let mut names: Vec<&str> = columns.iter().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut bound = Vec::new();
    equalities(selection, schema, &mut bound)?;
    let mut keys = Vec::with_capacity(def.keys.len());
    for key in &def.keys {
        let idx = schema.index_of(key).ok()?;
        let mut values = bound.iter().filter(|(i, _)| *i == idx);
        let (Some((_, v)), None) = (values.next(), values.next()) else {
            return None;
        };
        keys.push((idx, v.clone()));
    }
    // a conjunct on a column that is not a key is a filter: DataFusion's job
    if keys.len() != bound.len() {
        return None;
    }
    Some(PointQuery {
        table,
        columns,
        keys,
    })
}

/// The column an identifier names, exactly as written (identifiers are not normalised).
fn column(schema: &Schema, id: &Ident) -> Option<usize> {
    schema.index_of(&id.value).ok()
}

/// Collects `column = literal` conjuncts; `None` if `e` is anything else.
fn equalities(e: &Expr, schema: &Schema, out: &mut Vec<(usize, ScalarValue)>) -> Option<()> {
    match e {
        Expr::Nested(inner) => equalities(inner, schema, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            equalities(left, schema, out)?;
            equalities(right, schema, out)
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let (id, value) = match (left.as_ref(), right.as_ref()) {
                (Expr::Identifier(id), Expr::Value(v)) | (Expr::Value(v), Expr::Identifier(id)) => {
                    (id, &v.value)
                }
                _ => return None,
            };
            let idx = column(schema, id)?;
            out.push((idx, literal(value, schema.field(idx).data_type())?));
            Some(())
        }
        _ => None,
    }
}

/// A literal as a value of the key column's type, when no coercion question arises.
fn literal(value: &Value, ty: &DataType) -> Option<ScalarValue> {
    match (value, ty) {
        (Value::SingleQuotedString(s), DataType::Utf8) => Some(ScalarValue::Utf8(Some(s.clone()))),
        (Value::SingleQuotedString(s), DataType::LargeUtf8) => {
            Some(ScalarValue::LargeUtf8(Some(s.clone())))
        }
        (Value::SingleQuotedString(s), DataType::Utf8View) => {
            Some(ScalarValue::Utf8View(Some(s.clone())))
        }
        (Value::Number(n, false), DataType::Int64) => {
            n.parse().ok().map(|v| ScalarValue::Int64(Some(v)))
        }
        (Value::Number(n, false), DataType::Int32) => {
            n.parse().ok().map(|v| ScalarValue::Int32(Some(v)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{QueryEngine, QueryLimits};
    use arrow::array::{Int64Array, StringArray};
    use weir_engine::live::{KeyIndex, LiveTableDef};

    /// A view `status(service, region, checks, state)` keyed by (service, region), a view
    /// `by_id(id, n)` keyed by an integer, and a window table.
    fn live() -> Arc<LiveState> {
        let status = Arc::new(Schema::new(vec![
            Field::new("service", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, false),
            Field::new("checks", DataType::Int64, true),
            Field::new("state", DataType::Utf8, true),
        ]));
        let by_id = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let window = Arc::new(Schema::new(vec![
            Field::new("service", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let live = Arc::new(LiveState::new(
            "p",
            vec![
                LiveTableDef::new(
                    "status",
                    LiveKind::View,
                    &status,
                    vec!["service".into(), "region".into()],
                ),
                LiveTableDef::new("by_id", LiveKind::View, &by_id, vec!["id".into()]),
                LiveTableDef::new(
                    "win",
                    LiveKind::Window { retain_ms: 0 },
                    &window,
                    vec!["service".into()],
                ),
            ],
        ));
        let services: Vec<String> = (0..500).map(|i| format!("svc-{i}")).collect();
        let regions: Vec<&str> = (0..500).map(|i| ["eu", "us"][i % 2]).collect();
        let status_batch = RecordBatch::try_new(
            status.clone(),
            vec![
                Arc::new(StringArray::from(services.clone())),
                Arc::new(StringArray::from(regions.clone())),
                Arc::new(Int64Array::from_iter(
                    (0..500).map(|i| (i % 7 != 0).then_some(i)),
                )),
                Arc::new(StringArray::from_iter(
                    (0..500).map(|i| (i % 5 != 0).then_some(["OK", "DOWN"][i % 2])),
                )),
            ],
        )
        .unwrap();
        let status_index = KeyIndex::new(&[DataType::Utf8, DataType::Utf8]).unwrap();
        status_index
            .extend(
                &[
                    status_batch.column(0).clone(),
                    status_batch.column(1).clone(),
                ],
                0,
            )
            .unwrap();
        let id_batch = RecordBatch::try_new(
            by_id.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..100)),
                Arc::new(Int64Array::from_iter_values((0..100).map(|i| i * 3))),
            ],
        )
        .unwrap();
        let id_index = KeyIndex::new(&[DataType::Int64]).unwrap();
        id_index.extend(&[id_batch.column(0).clone()], 0).unwrap();
        live.publish(LiveSnapshot {
            seq: 1,
            tables: vec![vec![status_batch], vec![id_batch], vec![]],
            indexes: vec![Some(Arc::new(status_index)), Some(Arc::new(id_index)), None],
            ..Default::default()
        });
        live
    }

    #[test]
    fn takes_only_point_queries_on_views() {
        let live = live();
        for sql in [
            "SELECT * FROM status WHERE service = 'svc-3' AND region = 'us'",
            "select state, checks AS c from status where region = 'us' and (service = 'svc-3')",
            "SELECT n FROM by_id WHERE 7 = id",
            // the web console's key lookups: quoted names, quotes in values doubled
            r#"SELECT * FROM "status" WHERE "service" = 'o''neil' AND "region" = 'us'"#,
            r#"SELECT * FROM "by_id" WHERE "id" = 7"#,
        ] {
            assert!(parse(&live, sql).is_some(), "{sql}");
        }
        for sql in [
            "SELECT * FROM status WHERE service = 'svc-3'",
            "SELECT * FROM status WHERE service = 'svc-3' AND region = 'us' AND checks = 3",
            "SELECT * FROM status WHERE service = 'svc-3' AND region = 'us' LIMIT 1",
            "SELECT * FROM status WHERE service = 'svc-3' AND region = 'us' ORDER BY checks",
            "SELECT DISTINCT state FROM status WHERE service = 'svc-3' AND region = 'us'",
            "SELECT * FROM status s WHERE service = 'svc-3' AND region = 'us'",
            "SELECT * FROM public.status WHERE service = 'svc-3' AND region = 'us'",
            "SELECT Service FROM status WHERE service = 'svc-3' AND region = 'us'",
            "SELECT state, state FROM status WHERE service = 'svc-3' AND region = 'us'",
            "SELECT upper(state) FROM status WHERE service = 'svc-3' AND region = 'us'",
            "SELECT * FROM status WHERE service = 'svc-3' OR region = 'us'",
            "SELECT * FROM status WHERE service = $1 AND region = 'us'",
            "SELECT n FROM by_id WHERE id = '7'",
            "SELECT n FROM by_id WHERE id = 7.0",
            "SELECT * FROM win WHERE service = 'svc-3'",
            "WITH x AS (SELECT 1) SELECT n FROM by_id WHERE id = 7",
            "SELECT n FROM by_id WHERE id = 7; SELECT 1",
        ] {
            assert_eq!(parse(&live, sql), None, "{sql}");
        }
    }

    /// The fast path's answers equal DataFusion's: rows, column names, types, nullability.
    #[tokio::test]
    async fn answers_as_datafusion_does() {
        let live = live();
        let engine = QueryEngine::new(live.clone(), QueryLimits::default()).unwrap();
        for sql in [
            "SELECT * FROM status WHERE service = 'svc-3' AND region = 'us'",
            "SELECT * FROM status WHERE service = 'svc-0' AND region = 'eu'",
            "SELECT * FROM status WHERE service = 'svc-3' AND region = 'eu'",
            "SELECT * FROM status WHERE service = 'nope' AND region = 'eu'",
            "SELECT state, checks AS c FROM status WHERE region = 'us' AND service = 'svc-5'",
            "SELECT n, id FROM by_id WHERE id = 42",
            "SELECT n FROM by_id WHERE id = 4242",
        ] {
            let snapshot = live.current();
            let fast = answer(&live, &snapshot, sql).unwrap().expect(sql);
            let planned = engine.query_planned(sql).await.unwrap();
            assert_eq!(fast.schema.fields(), planned.schema.fields(), "{sql}");
            let concat =
                |r: &QueryResult| arrow::compute::concat_batches(&r.schema, &r.batches).unwrap();
            let (f, p) = (concat(&fast), concat(&planned));
            assert_eq!(f.columns(), p.columns(), "{sql}");
        }
    }
}
