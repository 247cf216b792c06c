//! Rows as the CSV lines of `COPY … FROM STDIN (FORMAT csv)`: the server parses each value
//! as text into the column's type, so an existing table may use any type that holds the
//! values (an integer column into `numeric`, a timestamp into `timestamp`).

use std::io::Write;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use weir_engine::time::timestamp_at;

/// Why a batch cannot be encoded for `COPY` (a column the chosen form cannot carry).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A column whose values have no binary form of the wire type the table's column takes.
    #[error("column {column} of type {ty} cannot be sent as {wire}")]
    Wire {
        column: usize,
        ty: DataType,
        wire: String,
    },
    /// Arrow cannot format the column's values as text.
    #[error(transparent)]
    Format(#[from] ArrowError),
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

/// Staged rows: CSV lines, or binary tuples (see [`super::binary`]), one after another, with
/// where each ends.
#[derive(Default)]
pub struct Lines {
    /// The rows are binary tuples (`COPY … (FORMAT binary)`), not CSV lines.
    pub binary: bool,
    /// No two rows have the same key (the merge needs no `DISTINCT ON`).
    pub unique_keys: bool,
    /// Some row deletes its key (a view's `op = 'delete'`).
    pub deletes: bool,
    pub bytes: Vec<u8>,
    /// The end of each line in `bytes`.
    pub ends: Vec<usize>,
    /// Each line's sequence number (`weir_seq`).
    pub seqs: Vec<i64>,
}

impl Lines {
    /// The bytes of lines `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> &[u8] {
        let start = if range.start == 0 {
            0
        } else {
            self.ends[range.start - 1]
        };
        let end = if range.end == 0 {
            0
        } else {
            self.ends[range.end - 1]
        };
        &self.bytes[start..end]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.seqs.clear();
    }
}

/// Appends one CSV line per row of `batch`: columns `columns` (indices into the batch), then
/// the epoch, the row's sequence number (from `*seq` on) and whether it deletes its key (a
/// view's `op` column, at `op`, says `delete`).
pub fn encode(
    batch: &RecordBatch,
    columns: &[usize],
    op: Option<usize>,
    epoch: u64,
    seq: &mut i64,
    lines: &mut Lines,
) -> Result<(), EncodeError> {
    let opts = FormatOptions::default().with_null("");
    let formatters: Vec<Option<ArrayFormatter>> = columns
        .iter()
        .map(|&c| {
            let a = batch.column(c);
            match a.data_type() {
                DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Timestamp(..) => Ok(None),
                _ => ArrayFormatter::try_new(a.as_ref(), &opts).map(Some),
            }
        })
        .collect::<Result<_, _>>()?;
    let ops = op.and_then(|i| batch.column(i).as_string_opt::<i32>());
    for row in 0..batch.num_rows() {
        let out = &mut lines.bytes;
        for (i, &c) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let a = batch.column(c);
            if a.is_null(row) {
                continue;
            }
            match (&formatters[i], a.data_type()) {
                (Some(f), _) => write!(out, "{}", f.value(row))?,
                (None, DataType::Timestamp(unit, _)) => push_timestamp(
                    out,
                    timestamp_at(a.as_ref(), *unit, row, TimeUnit::Microsecond),
                ),
                (None, _) => push_quoted(out, string_value(a.as_ref(), row)),
            }
        }
        let delete = ops.is_some_and(|o| o.value(row) == "delete");
        lines.deletes |= delete;
        writeln!(out, ",{epoch},{},{}", *seq, if delete { "t" } else { "f" })?;
        lines.ends.push(out.len());
        lines.seqs.push(*seq);
        *seq += 1;
    }
    Ok(())
}

fn string_value(a: &dyn Array, row: usize) -> &str {
    match a.data_type() {
        DataType::LargeUtf8 => a.as_string::<i64>().value(row),
        DataType::Utf8View => a.as_string_view().value(row),
        _ => a.as_string::<i32>().value(row),
    }
}

/// `2026-11-22T10:05:00.123456Z`, which PostgreSQL reads into `timestamptz` (and, the
/// session being in UTC, into `timestamp`).
fn push_timestamp(out: &mut Vec<u8>, us: Option<i64>) {
    match us.and_then(chrono::DateTime::from_timestamp_micros) {
        Some(t) => {
            let _ = write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
        }
        None => {
            // out of range: a value the server refuses (and dead-letters)
            out.extend_from_slice(b"invalid-timestamp");
        }
    }
}

/// A CSV field in double quotes (an empty string stays distinct from NULL).
fn push_quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use std::sync::Arc;

    #[test]
    fn rows_become_csv_lines_with_epoch_sequence_and_delete_flag() {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("a,\"b\""), Some(""), None])),
            Arc::new(
                TimestampMillisecondArray::from(vec![0, 1_764_000_000_123, 5]).with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)])),
            Arc::new(Float64Array::from(vec![0.5, f64::NAN, f64::INFINITY])),
            Arc::new(BooleanArray::from(vec![true, false, true])),
            Arc::new(StringArray::from(vec!["upsert", "delete", "snapshot"])),
        ];
        let batch =
            RecordBatch::try_from_iter(["k", "t", "n", "f", "b", "op"].into_iter().zip(columns))
                .unwrap();
        let mut lines = Lines::default();
        let mut seq = 10;
        encode(&batch, &[0, 1, 2, 3, 4], Some(5), 7, &mut seq, &mut lines).unwrap();
        assert_eq!(seq, 13);
        assert_eq!(lines.seqs, vec![10, 11, 12]);
        let text = String::from_utf8(lines.bytes.clone()).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(
            rows[0],
            "\"a,\"\"b\"\"\",1970-01-01T00:00:00.000000Z,1,0.5,true,7,10,f"
        );
        assert_eq!(
            rows[1],
            "\"\",2025-11-24T16:00:00.123000Z,,NaN,false,7,11,t"
        );
        assert_eq!(rows[2], ",1970-01-01T00:00:00.005000Z,-3,inf,true,7,12,f");
        assert_eq!(lines.slice(1..2), format!("{}\n", rows[1]).as_bytes());
        assert_eq!(lines.slice(0..3).len(), text.len());
        assert_eq!(lines.slice(0..0).len(), 0);
    }

    /// Timestamps of every unit keep PostgreSQL's microseconds and round down, as the
    /// binary path does: two keys a microsecond apart stay two, a time before 1970 is not
    /// moved a microsecond later, and a value beyond the range is one the server refuses.
    #[test]
    fn timestamps_keep_microseconds_and_round_down() {
        use arrow::array::{
            TimestampMicrosecondArray, TimestampNanosecondArray, TimestampSecondArray,
        };
        let csv = |column: ArrayRef| {
            let batch = RecordBatch::try_from_iter([("t", column)]).unwrap();
            let mut lines = Lines::default();
            encode(&batch, &[0], None, 1, &mut 0, &mut lines).unwrap();
            String::from_utf8(lines.bytes)
                .unwrap()
                .lines()
                .map(|l| l.split(',').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            csv(Arc::new(TimestampMicrosecondArray::from(vec![
                1_234_567, 1_234_568, -1
            ]))),
            [
                "1970-01-01T00:00:01.234567Z",
                "1970-01-01T00:00:01.234568Z",
                "1969-12-31T23:59:59.999999Z"
            ]
        );
        assert_eq!(
            csv(Arc::new(TimestampNanosecondArray::from(vec![-1, 1_999]))),
            ["1969-12-31T23:59:59.999999Z", "1970-01-01T00:00:00.000001Z"]
        );
        assert_eq!(
            csv(Arc::new(TimestampSecondArray::from(vec![1, i64::MAX]))),
            ["1970-01-01T00:00:01.000000Z", "invalid-timestamp"]
        );
    }
}
