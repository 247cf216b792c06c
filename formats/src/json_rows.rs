//! Arrow rows encoded as JSON objects, and JSON string literals.

use std::io::Write;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, TimeUnit,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use weir_engine::time::write_rfc3339_ms;

/// Writes a JSON string literal.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes a decimal exactly, as a JSON number, from its stored integer (`digits`, with its
/// sign) and its scale: `1250` at scale 2 is `12.50`, at scale -3 `1250e3`. (Arrow's own
/// formatter cuts the digits to the declared precision and pads negative scales with zeros.)
fn write_decimal(out: &mut Vec<u8>, digits: &str, scale: i8) {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits),
    };
    out.extend_from_slice(sign.as_bytes());
    if scale <= 0 {
        out.extend_from_slice(digits.as_bytes());
        if scale < 0 && digits != "0" {
            let _ = write!(out, "e{}", -(scale as i16));
        }
        return;
    }
    let scale = scale as usize;
    if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        let _ = write!(out, "{int}.{frac}");
    } else {
        let _ = write!(out, "0.{}{digits}", "0".repeat(scale - digits.len()));
    }
}

fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Encodes each row of `batch` as one JSON object into `line` (timestamps as RFC 3339
/// strings, numbers as numbers) and hands it to `f` with the row's index.
pub fn for_each_json_row(
    batch: &RecordBatch,
    line: &mut Vec<u8>,
    mut f: impl FnMut(usize, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let names: Vec<Vec<u8>> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| serde_json::to_vec(f.name()).unwrap_or_default())
        .collect();
    let opts = FormatOptions::default();
    let formatters: Vec<Option<ArrayFormatter>> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Boolean
            | DataType::Timestamp(TimeUnit::Millisecond, _) => None,
            t if t.is_numeric() => None,
            _ => ArrayFormatter::try_new(c.as_ref(), &opts).ok(),
        })
        .collect();
    for row in 0..batch.num_rows() {
        line.clear();
        line.push(b'{');
        for (c, col) in batch.columns().iter().enumerate() {
            if c > 0 {
                line.push(b',');
            }
            line.extend_from_slice(&names[c]);
            line.push(b':');
            if col.is_null(row) {
                line.extend_from_slice(b"null");
                continue;
            }
            macro_rules! int {
                ($t:ty) => {{
                    let _ = write!(line, "{}", col.as_primitive::<$t>().value(row));
                }};
            }
            macro_rules! decimal {
                ($t:ident, $scale:expr) => {{
                    let v = col.as_primitive::<arrow::datatypes::$t>().value(row);
                    write_decimal(line, &v.to_string(), $scale);
                }};
            }
            match col.data_type() {
                DataType::Utf8 => json_string(line, col.as_string::<i32>().value(row)),
                DataType::LargeUtf8 => json_string(line, col.as_string::<i64>().value(row)),
                DataType::Utf8View => json_string(line, col.as_string_view().value(row)),
                DataType::Boolean => line.extend_from_slice(if col.as_boolean().value(row) {
                    b"true"
                } else {
                    b"false"
                }),
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    line.push(b'"');
                    write_rfc3339_ms(
                        line,
                        col.as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                            .value(row),
                    );
                    line.push(b'"');
                }
                DataType::Int8 => int!(Int8Type),
                DataType::Int16 => int!(Int16Type),
                DataType::Int32 => int!(Int32Type),
                DataType::Int64 => int!(Int64Type),
                DataType::UInt8 => int!(UInt8Type),
                DataType::UInt16 => int!(UInt16Type),
                DataType::UInt32 => int!(UInt32Type),
                DataType::UInt64 => int!(UInt64Type),
                DataType::Float32 => {
                    write_float(line, col.as_primitive::<Float32Type>().value(row) as f64)
                }
                DataType::Float64 => {
                    write_float(line, col.as_primitive::<Float64Type>().value(row))
                }
                DataType::Float16 => write_float(
                    line,
                    col.as_primitive::<arrow::datatypes::Float16Type>()
                        .value(row)
                        .to_f64(),
                ),
                DataType::Decimal32(_, s) => decimal!(Decimal32Type, *s),
                DataType::Decimal64(_, s) => decimal!(Decimal64Type, *s),
                DataType::Decimal128(_, s) => decimal!(Decimal128Type, *s),
                DataType::Decimal256(_, s) => decimal!(Decimal256Type, *s),
                _ => match &formatters[c] {
                    Some(f) => json_string(line, &f.value(row).to_string()),
                    None => line.extend_from_slice(b"null"),
                },
            }
        }
        line.push(b'}');
        f(row, line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Decimal128Array;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    /// Decimals (a `CAST(... AS DECIMAL)` in an aggregate) are exact JSON numbers, and
    /// half-precision floats numbers: before, both were written as `null` without a word.
    #[test]
    fn decimals_and_half_floats_are_numbers() {
        let d = Decimal128Array::from(vec![Some(1250), Some(-7), None])
            .with_precision_and_scale(12, 2)
            .unwrap();
        let h = arrow::compute::cast(
            &arrow::array::Float32Array::from(vec![1.5f32, 0.0, -2.0]),
            &DataType::Float16,
        )
        .unwrap();
        let schema = Schema::new(vec![
            Field::new("d", d.data_type().clone(), true),
            Field::new("h", DataType::Float16, false),
        ]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(d), h]).unwrap();
        let mut rows = Vec::new();
        for_each_json_row(&batch, &mut Vec::new(), |_, line| {
            rows.push(String::from_utf8(line.to_vec()).unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(
            rows,
            [
                r#"{"d":12.50,"h":1.5}"#,
                r#"{"d":-0.07,"h":0.0}"#,
                r#"{"d":null,"h":-2.0}"#
            ]
        );
        for r in &rows {
            serde_json::from_str::<serde_json::Value>(r).unwrap();
        }
        let decimal = |digits: &str, scale| {
            let mut out = Vec::new();
            write_decimal(&mut out, digits, scale);
            let text = String::from_utf8(out).unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap();
            text
        };
        assert_eq!(decimal("5", 3), "0.005");
        assert_eq!(decimal("-5", 3), "-0.005");
        assert_eq!(decimal("12345", 2), "123.45");
        assert_eq!(decimal("12345", 0), "12345");
        assert_eq!(decimal("0", -2), "0");
        assert_eq!(decimal("-12", -2), "-12e2");
    }
}
