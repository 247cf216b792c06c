//! The current rows of a view, one per key, kept by the Iceberg sink: a view's changelog
//! (upserts of the keys that changed) is folded in, and every commit writes the whole view
//! as the table's new content, so that a reader sees one row per key.

use std::collections::HashMap;

use arrow::array::ArrayRef;
use arrow::compute::interleave;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};

use crate::IcebergError;

/// The latest row of every key.
pub struct ViewRows {
    schema: SchemaRef,
    keys: usize,
    converter: RowConverter,
    /// Row-encoded key → slot.
    slots: HashMap<Box<[u8]>, usize>,
    /// Where each slot's latest row is: (batch, row); `None` for a deleted key's slot
    /// (dropped when the rows are next taken).
    rows: Vec<Option<(usize, usize)>>,
    /// Keys held (slots not deleted).
    live: usize,
    batches: Vec<RecordBatch>,
    /// Whether a row changed since [`Self::rows`] last ran.
    changed: bool,
}

/// An error of the view's rows (Arrow's).
fn err(e: arrow::error::ArrowError) -> IcebergError {
    IcebergError::write("keeping a view's rows", e)
}

impl ViewRows {
    /// An empty view of rows in `schema` (the table's), keyed by its first `keys` columns.
    pub fn new(schema: SchemaRef, keys: usize) -> Result<Self, IcebergError> {
        let fields = schema.fields()[..keys]
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(ViewRows {
            converter: RowConverter::new(fields).map_err(err)?,
            schema,
            keys,
            slots: HashMap::new(),
            rows: Vec::new(),
            live: 0,
            batches: Vec::new(),
            changed: false,
        })
    }

    /// The number of key columns.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether a row changed since the rows were last taken.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Folds in rows (in the table's schema): each replaces its key's row.
    pub fn upsert(&mut self, batch: &RecordBatch) -> Result<(), IcebergError> {
        self.apply(batch, |_| false)
    }

    /// Folds in rows: each replaces its key's row, or removes the key when `deleted(row)`
    /// (a view key that expired).
    pub fn apply(
        &mut self,
        batch: &RecordBatch,
        deleted: impl Fn(usize) -> bool,
    ) -> Result<(), IcebergError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = self
            .converter
            .convert_columns(&batch.columns()[..self.keys])
            .map_err(err)?;
        let b = self.batches.len();
        self.batches.push(batch.clone());
        for (i, key) in keys.iter().enumerate() {
            if deleted(i) {
                if let Some(slot) = self.slots.remove(key.as_ref()) {
                    self.rows[slot] = None;
                    self.live -= 1;
                }
                continue;
            }
            match self.slots.get(key.as_ref()) {
                Some(&slot) => self.rows[slot] = Some((b, i)),
                None => {
                    self.slots.insert(key.as_ref().into(), self.rows.len());
                    self.rows.push(Some((b, i)));
                    self.live += 1;
                }
            }
        }
        self.changed = true;
        Ok(())
    }

    /// Every key's row, in the order keys first came; compacts what is held into that one
    /// batch.
    pub fn rows(&mut self) -> Result<RecordBatch, IcebergError> {
        self.changed = false;
        let whole = self.batches.len() == 1
            && self.live == self.rows.len()
            && self.rows.len() == self.batches[0].num_rows();
        if whole {
            return Ok(self.batches[0].clone());
        }
        let picks: Vec<(usize, usize)> = self.rows.iter().flatten().copied().collect();
        let columns: Vec<ArrayRef> = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn arrow::array::Array> =
                    self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                interleave(&arrays, &picks).map_err(err)
            })
            .collect::<Result<_, _>>()?;
        let all = RecordBatch::try_new(self.schema.clone(), columns).map_err(err)?;
        if self.live < self.rows.len() {
            // deleted slots go: the others move down, in order
            let mut moved = vec![usize::MAX; self.rows.len()];
            let mut next = 0;
            for (old, r) in self.rows.iter().enumerate() {
                if r.is_some() {
                    moved[old] = next;
                    next += 1;
                }
            }
            for slot in self.slots.values_mut() {
                *slot = moved[*slot];
            }
        }
        self.batches = vec![all.clone()];
        self.rows = (0..self.live).map(|i| Some((0, i))).collect();
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(schema: &SchemaRef, keys: &[&str], values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn the_latest_row_of_each_key_wins() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let mut view = ViewRows::new(schema.clone(), 1).unwrap();
        view.upsert(&batch(&schema, &["a", "b"], &[1, 2])).unwrap();
        view.upsert(&batch(&schema, &["b", "c", "a"], &[3, 4, 5]))
            .unwrap();
        assert!(view.changed());
        let rows = view.rows().unwrap();
        assert!(!view.changed());
        assert_eq!(rows, batch(&schema, &["a", "b", "c"], &[5, 3, 4]));
        view.upsert(&batch(&schema, &["c"], &[6])).unwrap();
        assert_eq!(
            view.rows().unwrap(),
            batch(&schema, &["a", "b", "c"], &[5, 3, 6])
        );
        assert_eq!(view.len(), 3);
        // b expires; a new key comes after the others
        let b_gone = batch(&schema, &["b", "d"], &[0, 7]);
        view.apply(&b_gone, |row| row == 0).unwrap();
        assert_eq!(view.len(), 3);
        assert_eq!(
            view.rows().unwrap(),
            batch(&schema, &["a", "c", "d"], &[5, 6, 7])
        );
        // slots moved down: later upserts still land on their key
        view.upsert(&batch(&schema, &["d", "a"], &[8, 9])).unwrap();
        view.apply(&batch(&schema, &["zz"], &[0]), |_| true)
            .unwrap();
        assert_eq!(
            view.rows().unwrap(),
            batch(&schema, &["a", "c", "d"], &[9, 6, 8])
        );
    }
}
