//! Rows as the tuples of `COPY … FROM STDIN (FORMAT binary)`, encoded column by column
//! straight from the Arrow arrays: the server parses nothing (no text to numbers or
//! timestamps), which makes staging about 2.5x faster than CSV.
//!
//! Binary values must have exactly the column's type, so this path is taken only when every
//! column of the table has a type [`wire`] knows for the output's Arrow type (the types weir
//! creates tables with, and wider integers, `varchar`/`char`, `timestamp`); any other table
//! (a `numeric` column, an `integer` column for a 64-bit output) is written as CSV, which the
//! server parses into whatever type the column has.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;

use super::encode::{EncodeError, Lines};

/// The start of a binary `COPY` payload: signature, flags, header extension length.
pub const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The end of a binary `COPY` payload.
pub const TRAILER: &[u8; 2] = &[0xff, 0xff];

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// How a column's values are sent: the binary form of its PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `text`, `varchar`, `char` (the server checks a length limit as for text input).
    Text,
    Bool,
    /// `timestamptz` and `timestamp` (the same microseconds; the session is in UTC).
    Timestamp,
    Date,
}

/// The binary form for values of `arrow` into a column whose `pg_type.typname` is
/// `typname`, when every value fits it; `None` when the column is written as CSV.
pub fn wire(arrow: &DataType, typname: &str) -> Option<Wire> {
    use DataType as D;
    let int = |min_bytes: u8| match typname {
        "int2" if min_bytes <= 2 => Some(Wire::Int2),
        "int4" if min_bytes <= 4 => Some(Wire::Int4),
        "int8" => Some(Wire::Int8),
        _ => None,
    };
    match arrow {
        D::Int8 | D::Int16 | D::UInt8 => int(2),
        D::Int32 | D::UInt16 => int(4),
        D::Int64 | D::UInt32 => int(8),
        D::Float32 => match typname {
            "float4" => Some(Wire::Float4),
            "float8" => Some(Wire::Float8),
            _ => None,
        },
        D::Float64 => (typname == "float8").then_some(Wire::Float8),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => {
            matches!(typname, "text" | "varchar" | "bpchar").then_some(Wire::Text)
        }
        D::Boolean => (typname == "bool").then_some(Wire::Bool),
        D::Timestamp(..) => {
            matches!(typname, "timestamptz" | "timestamp").then_some(Wire::Timestamp)
        }
        D::Date32 => (typname == "date").then_some(Wire::Date),
        _ => None,
    }
}

/// Appends one field of a column, for one row.
type Field<'a> = Box<dyn Fn(usize, &mut Vec<u8>) + 'a>;

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_int(out: &mut Vec<u8>, wire: Wire, v: i64) {
    // the type check of `wire` guarantees the value fits
    match wire {
        Wire::Int2 => put(out, &(v as i16).to_be_bytes()),
        Wire::Int4 => put(out, &(v as i32).to_be_bytes()),
        _ => put(out, &v.to_be_bytes()),
    }
}

/// A timestamp in PostgreSQL's microseconds; a value beyond i64 becomes one the server
/// refuses as out of range (never ±infinity, which are i64::MAX and i64::MIN).
fn pg_micros(v: i64, unit: TimeUnit) -> i64 {
    let us = weir_engine::time::convert_timestamp(v, unit, TimeUnit::Microsecond);
    us.and_then(|us| us.checked_sub(PG_EPOCH_US))
        .unwrap_or(i64::MAX - 1)
}

/// The field writer of column `a` sent as `wire`; `None` when the array's type does not
/// match (it was checked with [`wire`]).
fn field<'a>(a: &'a dyn Array, wire: Wire) -> Option<Field<'a>> {
    macro_rules! int {
        ($t:ty) => {{
            let p = a.as_primitive_opt::<$t>()?;
            Box::new(move |row, out: &mut Vec<u8>| put_int(out, wire, p.value(row) as i64))
                as Field<'a>
        }};
    }
    macro_rules! ts {
        ($t:ty, $unit:expr) => {{
            let p = a.as_primitive_opt::<$t>()?;
            Box::new(move |row, out: &mut Vec<u8>| {
                put(out, &pg_micros(p.value(row), $unit).to_be_bytes())
            }) as Field<'a>
        }};
    }
    let f: Field<'a> = match (a.data_type(), wire) {
        (DataType::Int8, _) => int!(Int8Type),
        (DataType::Int16, _) => int!(Int16Type),
        (DataType::Int32, _) => int!(Int32Type),
        (DataType::Int64, _) => int!(Int64Type),
        (DataType::UInt8, _) => int!(UInt8Type),
        (DataType::UInt16, _) => int!(UInt16Type),
        (DataType::UInt32, _) => int!(UInt32Type),
        (DataType::Float32, Wire::Float4) => {
            let p = a.as_primitive_opt::<Float32Type>()?;
            Box::new(move |row, out| put(out, &p.value(row).to_be_bytes()))
        }
        (DataType::Float32, _) => {
            let p = a.as_primitive_opt::<Float32Type>()?;
            Box::new(move |row, out| put(out, &(p.value(row) as f64).to_be_bytes()))
        }
        (DataType::Float64, _) => {
            let p = a.as_primitive_opt::<Float64Type>()?;
            Box::new(move |row, out| put(out, &p.value(row).to_be_bytes()))
        }
        (DataType::Utf8, _) => {
            let s = a.as_string_opt::<i32>()?;
            Box::new(move |row, out| put(out, s.value(row).as_bytes()))
        }
        (DataType::LargeUtf8, _) => {
            let s = a.as_string_opt::<i64>()?;
            Box::new(move |row, out| put(out, s.value(row).as_bytes()))
        }
        (DataType::Utf8View, _) => {
            let s = a.as_string_view_opt()?;
            Box::new(move |row, out| put(out, s.value(row).as_bytes()))
        }
        (DataType::Boolean, _) => {
            let b = a.as_boolean_opt()?;
            Box::new(move |row, out| put(out, &[b.value(row) as u8]))
        }
        (DataType::Timestamp(TimeUnit::Second, _), _) => {
            ts!(TimestampSecondType, TimeUnit::Second)
        }
        (DataType::Timestamp(TimeUnit::Millisecond, _), _) => {
            ts!(TimestampMillisecondType, TimeUnit::Millisecond)
        }
        (DataType::Timestamp(TimeUnit::Microsecond, _), _) => {
            ts!(TimestampMicrosecondType, TimeUnit::Microsecond)
        }
        (DataType::Timestamp(TimeUnit::Nanosecond, _), _) => {
            ts!(TimestampNanosecondType, TimeUnit::Nanosecond)
        }
        (DataType::Date32, _) => {
            let p = a.as_primitive_opt::<Date32Type>()?;
            Box::new(move |row, out| {
                // an overflow becomes a date the server refuses (i32::MIN is -infinity)
                let d = p
                    .value(row)
                    .checked_sub(PG_EPOCH_DAYS)
                    .unwrap_or(i32::MIN + 1);
                put(out, &d.to_be_bytes())
            })
        }
        _ => return None,
    };
    if a.null_count() == 0 {
        return Some(f);
    }
    Some(Box::new(move |row, out| {
        if a.is_null(row) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
        } else {
            f(row, out)
        }
    }))
}

/// Appends one binary tuple per row of `batch` (without the payload's header and trailer):
/// columns `columns` (indices into the batch) sent as `wires`, then the epoch, the row's
/// sequence number (from `*seq` on) and whether it deletes its key (a view's `op` column, at
/// `op`, says `delete`).
pub fn encode(
    batch: &RecordBatch,
    columns: &[usize],
    wires: &[Wire],
    op: Option<usize>,
    epoch: u64,
    seq: &mut i64,
    lines: &mut Lines,
) -> Result<(), EncodeError> {
    let fields: Vec<Field> = columns
        .iter()
        .zip(wires)
        .map(|(&c, &w)| {
            let a = batch.column(c);
            field(a.as_ref(), w).ok_or_else(|| EncodeError::Wire {
                column: c,
                ty: a.data_type().clone(),
                wire: format!("{w:?}"),
            })
        })
        .collect::<Result<_, _>>()?;
    let ops = op.and_then(|i| batch.column(i).as_string_opt::<i32>());
    let count = (columns.len() + 3) as i16;
    let epoch = epoch as i64;
    lines
        .bytes
        .reserve(batch.num_rows() * (2 + fields.len() * 12 + 33));
    for row in 0..batch.num_rows() {
        let out = &mut lines.bytes;
        out.extend_from_slice(&count.to_be_bytes());
        for f in &fields {
            f(row, out);
        }
        put(out, &epoch.to_be_bytes());
        put(out, &seq.to_be_bytes());
        let delete = ops.is_some_and(|o| o.is_valid(row) && o.value(row) == "delete");
        put(out, &[delete as u8]);
        lines.deletes |= delete;
        lines.ends.push(out.len());
        lines.seqs.push(*seq);
        *seq += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampMillisecondArray,
    };
    use std::sync::Arc;

    #[test]
    fn wire_types_follow_the_column_type_or_fall_back_to_csv() {
        assert_eq!(wire(&DataType::Int64, "int8"), Some(Wire::Int8));
        assert_eq!(wire(&DataType::Int32, "int8"), Some(Wire::Int8));
        assert_eq!(wire(&DataType::Int16, "int4"), Some(Wire::Int4));
        // a narrower column or numeric: CSV (the server checks the range)
        assert_eq!(wire(&DataType::Int64, "int4"), None);
        assert_eq!(wire(&DataType::Int64, "numeric"), None);
        assert_eq!(wire(&DataType::UInt64, "numeric"), None);
        assert_eq!(wire(&DataType::Float64, "float4"), None);
        assert_eq!(wire(&DataType::Utf8, "varchar"), Some(Wire::Text));
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        assert_eq!(wire(&ts, "timestamp"), Some(Wire::Timestamp));
        assert_eq!(wire(&ts, "date"), None);
    }

    #[test]
    fn rows_become_binary_tuples_with_epoch_sequence_and_delete_flag() {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("é"), None])),
            Arc::new(
                TimestampMillisecondArray::from(vec![946_684_800_001, i64::MAX])
                    .with_timezone("UTC"),
            ),
            Arc::new(Int32Array::from(vec![Some(-2), None])),
            Arc::new(Int64Array::from(vec![7, 8])),
            Arc::new(Float64Array::from(vec![0.5, 1.0])),
            Arc::new(BooleanArray::from(vec![true, false])),
            Arc::new(Date32Array::from(vec![10_958, 0])),
            Arc::new(StringArray::from(vec![Some("delete"), None])),
        ];
        let names = ["k", "t", "i", "n", "f", "b", "d", "op"];
        let batch = RecordBatch::try_from_iter(names.into_iter().zip(columns)).unwrap();
        use Wire::*;
        let wires = [Text, Timestamp, Int4, Int8, Float8, Bool, Date];
        let mut lines = Lines::default();
        let mut seq = 3;
        let cols = [0, 1, 2, 3, 4, 5, 6];
        encode(&batch, &cols, &wires, Some(7), 9, &mut seq, &mut lines).unwrap();
        assert_eq!((seq, lines.len(), lines.deletes), (5, 2, true));
        let mut first = vec![0, 10];
        first.extend([0, 0, 0, 2, 0xc3, 0xa9]);
        first.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x03, 0xe8]);
        first.extend([0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe]);
        first.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        first.extend([0, 0, 0, 8]);
        first.extend(0.5f64.to_be_bytes());
        first.extend([0, 0, 0, 1, 1]);
        first.extend([0, 0, 0, 4, 0, 0, 0, 1]);
        first.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        first.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 3]);
        first.extend([0, 0, 0, 1, 1]);
        assert_eq!(lines.slice(0..1), &first[..]);
        let second = lines.slice(1..2);
        // NULLs are length -1; an overflowing timestamp is sent as one the server refuses
        assert_eq!(&second[2..6], &[0xff; 4]);
        assert_eq!(&second[10..18], &(i64::MAX - 1).to_be_bytes());
        assert_eq!(&second[18..22], &[0xff; 4]);
        assert_eq!(second.last(), Some(&0), "not a delete");
    }
}
