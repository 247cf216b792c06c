//! Result rows as Avro records: a writer schema derived from the rows' Arrow schema (every
//! field nullable), and a binary encoder.

use std::fmt::Write as _;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, Schema,
    TimeUnit, TimestampMillisecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{json, Value};

/// How a column is written.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Long,
    Double,
    Boolean,
    String,
    TimestampMillis,
    /// Written as text (decimals, nested types...).
    Text,
}

fn kind_of(t: &DataType) -> Kind {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Kind::Long,
        DataType::Float32 | DataType::Float64 => Kind::Double,
        DataType::Boolean => Kind::Boolean,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::String,
        DataType::Timestamp(TimeUnit::Millisecond, _) => Kind::TimestampMillis,
        _ => Kind::Text,
    }
}

/// The Avro writer schema of rows with `schema`, as a record named `name` (made a valid Avro
/// name). Every field is a union of null and its type.
pub fn avro_schema(schema: &Schema, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let clean = if clean.starts_with(|c: char| c.is_ascii_digit()) || clean.is_empty() {
        format!("_{clean}")
    } else {
        clean
    };
    let fields: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match kind_of(f.data_type()) {
                Kind::Long => json!("long"),
                Kind::Double => json!("double"),
                Kind::Boolean => json!("boolean"),
                Kind::String | Kind::Text => json!("string"),
                Kind::TimestampMillis => json!({"type": "long", "logicalType": "timestamp-millis"}),
            };
            json!({"name": f.name(), "type": ["null", t], "default": null})
        })
        .collect();
    json!({"type": "record", "name": clean, "namespace": "weir", "fields": fields}).to_string()
}

fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Encodes row `row` of `batch` (whose schema gave the writer schema) as Avro binary.
pub fn encode_row(batch: &RecordBatch, row: usize, out: &mut Vec<u8>, text: &mut String) {
    for col in batch.columns() {
        if col.is_null(row) {
            long(out, 0);
            continue;
        }
        long(out, 1);
        write_value(col, row, out, text);
    }
}

fn write_value(col: &ArrayRef, row: usize, out: &mut Vec<u8>, text: &mut String) {
    macro_rules! int {
        ($t:ty) => {
            long(out, col.as_primitive::<$t>().value(row) as i64)
        };
    }
    match col.data_type() {
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float32 => out.extend_from_slice(
            &(col.as_primitive::<Float32Type>().value(row) as f64).to_le_bytes(),
        ),
        DataType::Float64 => {
            out.extend_from_slice(&col.as_primitive::<Float64Type>().value(row).to_le_bytes())
        }
        DataType::Boolean => out.push(col.as_boolean().value(row) as u8),
        DataType::Utf8 => bytes(out, col.as_string::<i32>().value(row).as_bytes()),
        DataType::LargeUtf8 => bytes(out, col.as_string::<i64>().value(row).as_bytes()),
        DataType::Utf8View => bytes(out, col.as_string_view().value(row).as_bytes()),
        DataType::Timestamp(TimeUnit::Millisecond, _) => long(
            out,
            col.as_primitive::<TimestampMillisecondType>().value(row),
        ),
        _ => {
            text.clear();
            if let Ok(f) = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()) {
                let _ = write!(text, "{}", f.value(row));
            }
            bytes(out, text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn schema_and_binary_follow_the_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("datasetName", DataType::Utf8, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("events", DataType::Int64, false),
            Field::new("avg", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("é"), None])),
                Arc::new(TimestampMillisecondArray::from(vec![60_000, -1]).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![3, 64])),
                Arc::new(Float64Array::from(vec![Some(0.5), None])),
            ],
        )
        .unwrap();
        let s: Value = serde_json::from_str(&avro_schema(&schema, "per-dataset 1m")).unwrap();
        assert_eq!(s["name"], "per_dataset_1m");
        assert_eq!(s["fields"][1]["type"][1]["logicalType"], "timestamp-millis");
        let mut out = Vec::new();
        let mut text = String::new();
        encode_row(&batch, 0, &mut out, &mut text);
        let mut expected = vec![2, 4];
        expected.extend_from_slice("é".as_bytes());
        expected.extend_from_slice(&[2, 0xc0, 0xa9, 0x07, 2, 6, 2]);
        expected.extend_from_slice(&0.5f64.to_le_bytes());
        assert_eq!(out, expected);
        out.clear();
        encode_row(&batch, 1, &mut out, &mut text);
        assert_eq!(out, vec![0, 2, 1, 2, 0x80, 1, 0]);
    }
}
