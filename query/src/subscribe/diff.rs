//! The changes between two snapshots of one table.
//!
//! Views: one row per key. Unless keys expired under `retain` between the two snapshots, a
//! key keeps its row number and new keys are appended, so the diff checks that the key
//! columns are equal row by row, then compares the two batches row by row, column by column
//! (Arrow's vectorised `distinct` kernel) and takes the appended rows as they are: O(rows)
//! with a small constant. After an expiry the rows are renumbered; the diff then matches keys
//! through the row format (a hash map of the previous keys), and the keys left over are
//! deletes.
//!
//! Windows: emitted (final) rows are kept by the engine as the same batches from snapshot to
//! snapshot, so the final rows of a batch not in the previous snapshot are new (O(batches)).
//! Open rows are rebuilt at every snapshot; they are matched by their key columns and window
//! bounds and compared like view rows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use weir_engine::live::{LiveKind, LiveTableDef};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A view's key is new or its row changed.
    Upsert,
    /// A view's key left the view (`retain`).
    Delete,
    /// A window row was emitted (final).
    Insert,
    /// An open window's row is new or changed.
    Update,
}

impl Op {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
            Op::Insert => "insert",
            Op::Update => "update",
        }
    }
}

/// The changes of one table between two snapshots, in position order.
#[derive(Debug, Clone)]
pub struct Changes {
    /// One per row of `rows`.
    pub ops: Vec<Op>,
    /// The new rows (for deletes: the row that left).
    pub rows: RecordBatch,
    /// Aligned with `rows`: each key's row before (null where it had none); for views only.
    pub old: Option<RecordBatch>,
}

impl Changes {
    /// No change, rows of `schema`.
    pub fn none(schema: &SchemaRef) -> Self {
        Changes {
            ops: Vec::new(),
            rows: RecordBatch::new_empty(schema.clone()),
            old: None,
        }
    }

    /// The number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there is no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// One table of one snapshot: its batches.
pub struct Side<'a> {
    /// The table's rows (windows: emitted batches, then open ones).
    pub batches: &'a [RecordBatch],
}

/// The changes of table `def` from `before` to `after`.
pub fn diff(def: &LiveTableDef, before: &Side, after: &Side) -> Result<Changes, ArrowError> {
    match def.kind {
        LiveKind::View => view(def, before, after),
        LiveKind::Window { .. } => window(def, before, after),
    }
}

fn one(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, ArrowError> {
    match batches {
        [b] => Ok(b.clone()),
        _ => concat_batches(schema, batches),
    }
}

fn view(def: &LiveTableDef, before: &Side, after: &Side) -> Result<Changes, ArrowError> {
    let schema = &def.schema;
    let old = one(schema, before.batches)?;
    let new = one(schema, after.batches)?;
    let key_cols = key_columns(def, &def.keys)?;
    // rows keep their numbers unless keys expired: checked on the keys themselves (the key
    // index a snapshot carries may be the one from before an expiry)
    let n = old.num_rows();
    let same_ids = n <= new.num_rows()
        && changed_rows(&pick(&old, &key_cols), &pick(&new.slice(0, n), &key_cols))?.true_count()
            == 0;
    if same_ids {
        return by_row_number(&old, &new);
    }
    by_key(&old, &new, &key_cols, Op::Upsert, true)
}

/// Row `i` of `old` and of `new` hold the same key; rows past `old`'s end are new keys.
fn by_row_number(old: &RecordBatch, new: &RecordBatch) -> Result<Changes, ArrowError> {
    let n = old.num_rows();
    let head = new.slice(0, n);
    let changed = changed_rows(old.columns(), head.columns())?;
    let mut ids: Vec<u32> = (0..n as u32)
        .filter(|&i| changed.value(i as usize))
        .collect();
    let changed_count = ids.len();
    ids.extend(n as u32..new.num_rows() as u32);
    let rows = take_record_batch(new, &UInt32Array::from(ids.clone()))?;
    let old_ids: UInt32Array = ids
        .iter()
        .map(|&i| ((i as usize) < n).then_some(i))
        .collect();
    let before = take_nullable(old, &old_ids)?;
    debug_assert!(changed_count <= rows.num_rows());
    Ok(Changes {
        ops: vec![Op::Upsert; rows.num_rows()],
        rows,
        old: Some(before),
    })
}

/// Rows of `batch` by index (a null index gives a null row), every column nullable.
fn take_nullable(batch: &RecordBatch, ids: &UInt32Array) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let columns = batch
        .columns()
        .iter()
        .map(|c| arrow::compute::take(c, ids, None))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
}

/// Indices of the columns that identify a row.
fn key_columns(def: &LiveTableDef, names: &[String]) -> Result<Vec<usize>, ArrowError> {
    names.iter().map(|k| def.schema.index_of(k)).collect()
}

fn converter(batch: &RecordBatch, cols: &[usize]) -> Result<RowConverter, ArrowError> {
    RowConverter::new(
        cols.iter()
            .map(|&c| SortField::new(batch.schema().field(c).data_type().clone()))
            .collect(),
    )
}

fn pick(batch: &RecordBatch, cols: &[usize]) -> Vec<ArrayRef> {
    cols.iter().map(|&c| batch.column(c).clone()).collect()
}

/// Matches the rows of `new` with those of `old` by the columns `keys`: new or changed rows
/// get `op`; with `deletes`, rows of `old` whose key is gone follow as deletes.
fn by_key(
    old: &RecordBatch,
    new: &RecordBatch,
    keys: &[usize],
    op: Op,
    deletes: bool,
) -> Result<Changes, ArrowError> {
    let conv = converter(new, keys)?;
    let old_keys = conv.convert_columns(&pick(old, keys))?;
    let new_keys = conv.convert_columns(&pick(new, keys))?;
    let mut at: HashMap<&[u8], u32> = HashMap::with_capacity(old_keys.num_rows());
    for (i, k) in old_keys.iter().enumerate() {
        at.insert(k.data(), i as u32);
    }
    let mut found = vec![false; old.num_rows()];
    let matched: UInt32Array = new_keys
        .iter()
        .map(|k| {
            let i = at.get(k.data()).copied();
            if let Some(i) = i {
                found[i as usize] = true;
            }
            i
        })
        .collect();
    let before = take_nullable(old, &matched)?;
    let mut changed = changed_rows(before.columns(), new.columns())?;
    if matched.null_count() > 0 {
        // a key without a row before is new, whatever its columns hold
        let absent = BooleanArray::from_iter(matched.iter().map(|m| Some(m.is_none())));
        changed = arrow::compute::or(&changed, &absent)?;
    }
    let mut rows = vec![filter_record_batch(new, &changed)?];
    let mut olds = vec![filter_record_batch(&before, &changed)?];
    let mut ops = vec![op; rows[0].num_rows()];
    if deletes {
        let gone: UInt32Array = (0..old.num_rows() as u32)
            .filter(|&i| !found[i as usize])
            .map(Some)
            .collect();
        if !gone.is_empty() {
            let left = take_record_batch(old, &gone)?;
            ops.extend(std::iter::repeat_n(Op::Delete, left.num_rows()));
            olds.push(take_nullable(old, &gone)?);
            rows.push(left);
        }
    }
    Ok(Changes {
        ops,
        rows: concat_batches(&new.schema(), &rows)?,
        old: Some(concat_batches(&olds[0].schema(), &olds)?),
    })
}

/// Per row, whether any column differs (nulls equal each other); columns of types Arrow's
/// comparison kernels lack (lists, structs) are compared in the row format.
fn changed_rows(a: &[ArrayRef], b: &[ArrayRef]) -> Result<BooleanArray, ArrowError> {
    let n = b.first().map_or(0, |c| c.len());
    let mut out = BooleanArray::from(vec![false; n]);
    for (x, y) in a.iter().zip(b) {
        let d = match arrow::compute::kernels::cmp::distinct(x, y) {
            Ok(d) => d,
            Err(_) => distinct_rows(x, y)?,
        };
        out = arrow::compute::or(&out, &d)?;
    }
    Ok(out)
}

fn distinct_rows(x: &ArrayRef, y: &ArrayRef) -> Result<BooleanArray, ArrowError> {
    let conv = RowConverter::new(vec![SortField::new(x.data_type().clone())])?;
    let rx = conv.convert_columns(std::slice::from_ref(x))?;
    let ry = conv.convert_columns(std::slice::from_ref(y))?;
    Ok(rx
        .iter()
        .zip(ry.iter())
        .map(|(p, q)| Some(p != q))
        .collect())
}

/// Identity of a batch across snapshots: its `is_final` array (made once per emitted
/// window batch, shared by every snapshot that retains it).
fn batch_id(b: &RecordBatch) -> usize {
    Arc::as_ptr(b.column(b.num_columns() - 1)) as *const () as usize
}

pub(crate) fn is_final(b: &RecordBatch) -> bool {
    b.column(b.num_columns() - 1)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .is_some_and(|f| !f.is_empty() && f.value(0))
}

fn window(def: &LiveTableDef, before: &Side, after: &Side) -> Result<Changes, ArrowError> {
    let schema = &def.schema;
    // `before` is alive while this runs: none of its batches' arrays can be freed and their
    // address given to a new batch of `after`
    let seen: HashSet<usize> = before
        .batches
        .iter()
        .filter(|b| is_final(b))
        .map(batch_id)
        .collect();
    let emitted: Vec<RecordBatch> = after
        .batches
        .iter()
        .filter(|b| b.num_rows() > 0 && is_final(b) && !seen.contains(&batch_id(b)))
        .cloned()
        .collect();
    let inserts = concat_batches(schema, &emitted)?;
    let open = |s: &Side| -> Vec<RecordBatch> {
        s.batches.iter().filter(|b| !is_final(b)).cloned().collect()
    };
    let old_open = concat_batches(schema, &open(before))?;
    let new_open = concat_batches(schema, &open(after))?;
    let mut ident: Vec<String> = def.keys.clone();
    for bound in ["window_start", "window_end"] {
        if schema.index_of(bound).is_ok() {
            ident.push(bound.to_string());
        }
    }
    let updates = by_key(
        &old_open,
        &new_open,
        &key_columns(def, &ident)?,
        Op::Update,
        false,
    )?;
    let mut ops = vec![Op::Insert; inserts.num_rows()];
    ops.extend(updates.ops);
    Ok(Changes {
        ops,
        rows: concat_batches(schema, [&inserts, &updates.rows])?,
        old: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn view_def() -> LiveTableDef {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        LiveTableDef::new("v", LiveKind::View, &schema, vec!["k".into()])
    }

    fn rows(def: &LiveTableDef, keys: &[&str], ns: &[Option<i64>]) -> RecordBatch {
        RecordBatch::try_new(
            def.schema.clone(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(ns.to_vec())),
            ],
        )
        .unwrap()
    }

    fn summary(c: &Changes) -> Vec<(Op, String, Option<i64>)> {
        let k = c.rows.column(0).as_any().downcast_ref::<StringArray>();
        let n = c.rows.column(1).as_any().downcast_ref::<Int64Array>();
        (0..c.len())
            .map(|i| {
                let n = n.unwrap();
                (
                    c.ops[i],
                    k.unwrap().value(i).to_string(),
                    (!n.is_null(i)).then(|| n.value(i)),
                )
            })
            .collect()
    }

    #[test]
    fn a_view_whose_keys_keep_their_rows_is_compared_row_by_row() {
        let def = view_def();
        let before = [rows(&def, &["a", "b"], &[Some(1), None])];
        let after = [rows(&def, &["a", "b", "c"], &[Some(1), Some(2), Some(3)])];
        let c = diff(&def, &Side { batches: &before }, &Side { batches: &after }).unwrap();
        assert_eq!(
            summary(&c),
            vec![
                (Op::Upsert, "b".into(), Some(2)),
                (Op::Upsert, "c".into(), Some(3))
            ]
        );
        let old = c.old.unwrap();
        assert_eq!(old.num_rows(), 2);
        assert!(old.column(0).is_valid(0) && old.column(1).is_null(0));
        assert!(old.column(0).is_null(1), "c had no row before");
    }

    #[test]
    fn a_renumbered_view_is_matched_by_key_and_gone_keys_are_deletes() {
        let def = view_def();
        let before = [rows(&def, &["a", "b", "c"], &[Some(1), Some(2), Some(3)])];
        let after = [rows(&def, &["c", "a", "d"], &[Some(3), Some(5), Some(9)])];
        let c = diff(&def, &Side { batches: &before }, &Side { batches: &after }).unwrap();
        assert_eq!(
            summary(&c),
            vec![
                (Op::Upsert, "a".into(), Some(5)),
                (Op::Upsert, "d".into(), Some(9)),
                (Op::Delete, "b".into(), Some(2)),
            ]
        );
        let old = c.old.unwrap();
        let n = old.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.value(0), 1, "a's row before");
        assert!(n.is_null(1), "d had none");
        assert_eq!(n.value(2), 2, "a delete carries the row that left");
    }

    #[test]
    fn an_unchanged_view_has_no_changes() {
        let def = view_def();
        let b = [rows(&def, &["a"], &[None])];
        let side = Side { batches: &b };
        assert!(diff(&def, &side, &side).unwrap().is_empty());
    }

    fn window_def() -> LiveTableDef {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        let out = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("n", DataType::Int64, false),
        ]));
        LiveTableDef::new(
            "w",
            LiveKind::Window { retain_ms: 1000 },
            &out,
            vec!["k".into()],
        )
    }

    fn window_rows(
        def: &LiveTableDef,
        k: &[&str],
        start: i64,
        n: &[i64],
        fin: bool,
    ) -> RecordBatch {
        let out = Arc::new(Schema::new(def.schema.fields()[..4].to_vec()));
        let b = RecordBatch::try_new(
            out,
            vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(TimestampMillisecondArray::from(vec![start; k.len()])),
                Arc::new(TimestampMillisecondArray::from(vec![start + 10; k.len()])),
                Arc::new(Int64Array::from(n.to_vec())),
            ],
        )
        .unwrap();
        def.rows(&b, fin).unwrap()
    }

    #[test]
    fn windows_give_each_emitted_batch_once_and_changed_open_rows() {
        let def = window_def();
        let final0 = window_rows(&def, &["a", "b"], 0, &[1, 2], true);
        let open1 = window_rows(&def, &["a", "b"], 10, &[1, 1], false);
        let before = vec![final0.clone(), open1];
        let final1 = window_rows(&def, &["a"], 10, &[4], true);
        let open2 = window_rows(&def, &["a", "b"], 20, &[1, 1], false);
        let open1b = window_rows(&def, &["b"], 10, &[1], false);
        let after = vec![final0, final1, open1b, open2];
        let side = |b| Side { batches: b };
        let c = diff(&def, &side(&before), &side(&after)).unwrap();
        assert_eq!(
            c.ops,
            vec![Op::Insert, Op::Update, Op::Update],
            "a's window 10 emitted; b's open window 10 is unchanged; window 20 is new"
        );
        let n = c.rows.column(3).as_any().downcast_ref::<Int64Array>();
        assert_eq!(n.unwrap().values().to_vec(), vec![4, 1, 1]);
    }

    /// A view of `n` keys: name, count, a float and a status.
    fn wide(n: usize, bump: impl Fn(usize) -> i64) -> (LiveTableDef, RecordBatch) {
        use arrow::array::Float64Array;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let def = LiveTableDef::new("v", LiveKind::View, &schema, vec!["k".into()]);
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("service_{i:06}")),
                )),
                Arc::new(Int64Array::from_iter_values((0..n).map(&bump))),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
                Arc::new(StringArray::from_iter_values((0..n).map(|i| {
                    if i % 3 == 0 {
                        "HEALTHY"
                    } else {
                        "DEGRADED"
                    }
                }))),
            ],
        )
        .unwrap();
        (def, b)
    }

    #[test]
    fn a_large_view_diff_finds_exactly_the_changed_keys_and_its_time_is_printed() {
        let n = 100_000;
        let (def, before) = wide(n, |i| i as i64);
        // 1% changed, 1,000 new keys
        let (_, after) = wide(n + 1000, |i| i as i64 + i64::from(i % 100 == 0));
        let started = std::time::Instant::now();
        let c = diff(
            &def,
            &Side {
                batches: std::slice::from_ref(&before),
            },
            &Side {
                batches: std::slice::from_ref(&after),
            },
        )
        .unwrap();
        let by_number = started.elapsed();
        assert_eq!(c.len(), n / 100 + 1000);
        // the same after a renumbering (rows reversed): matched by key
        let idx = UInt32Array::from_iter_values((0..(n + 1000) as u32).rev());
        let shuffled = take_record_batch(&after, &idx).unwrap();
        let started = std::time::Instant::now();
        let c = diff(
            &def,
            &Side { batches: &[before] },
            &Side {
                batches: &[shuffled],
            },
        )
        .unwrap();
        let keyed = started.elapsed();
        assert_eq!(c.len(), n / 100 + 1000);
        eprintln!(
            "diff of a {n}-key view (4 columns, 1% changed, 1,000 new): {by_number:?} row by \
             row, {keyed:?} by key (this build's profile)"
        );
    }
}
