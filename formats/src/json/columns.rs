//! The Arrow columns a decoder builds from checked values.

use std::sync::{Arc, Mutex};

use arrow::array::NullBufferBuilder;
use arrow::array::{ArrayRef, BooleanBuilder, Float64Array, Int64Array, StringArray};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};

use super::strings::unescape;
use super::Val;
use crate::schema::FieldKind;

pub(super) enum ColumnBuilder {
    Str {
        offsets: Vec<i32>,
        values: Vec<u8>,
        nulls: NullBufferBuilder,
    },
    Int {
        values: Vec<i64>,
        nulls: NullBufferBuilder,
    },
    Float {
        values: Vec<f64>,
        nulls: NullBufferBuilder,
    },
    Bool(BooleanBuilder),
}

impl ColumnBuilder {
    /// A column of `kind` with room for `rows` values (and `value_bytes` bytes of strings).
    pub(super) fn with_capacity(kind: FieldKind, rows: usize, value_bytes: usize) -> Self {
        match kind {
            FieldKind::Str | FieldKind::Object | FieldKind::Array => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                ColumnBuilder::Str {
                    offsets,
                    values: Vec::with_capacity(value_bytes),
                    nulls: NullBufferBuilder::new(rows),
                }
            }
            FieldKind::Int => ColumnBuilder::Int {
                values: Vec::with_capacity(rows),
                nulls: NullBufferBuilder::new(rows),
            },
            FieldKind::Float => ColumnBuilder::Float {
                values: Vec::with_capacity(rows),
                nulls: NullBufferBuilder::new(rows),
            },
            FieldKind::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
        }
    }

    /// Bytes of string values held (0 for other kinds).
    pub(super) fn value_bytes(&self) -> usize {
        match self {
            ColumnBuilder::Str { values, .. } => values.len(),
            _ => 0,
        }
    }

    /// Appends a value already checked against the field's kind.
    pub(super) fn push(&mut self, line: &[u8], v: Val, scratch: &mut Vec<u8>) {
        match self {
            ColumnBuilder::Str {
                offsets,
                values,
                nulls,
            } => {
                match v {
                    Val::Str {
                        start,
                        end,
                        escaped,
                    } => {
                        let s = &line[start as usize..end as usize];
                        if escaped {
                            scratch.clear();
                            unescape(s, scratch);
                            values.extend_from_slice(scratch);
                        } else {
                            values.extend_from_slice(s);
                        }
                        nulls.append_non_null();
                    }
                    Val::Obj { start, end } | Val::Arr { start, end } => {
                        values.extend_from_slice(&line[start as usize..end as usize]);
                        nulls.append_non_null();
                    }
                    _ => nulls.append_null(),
                }
                offsets.push(values.len() as i32);
            }
            ColumnBuilder::Int { values, nulls } => match v {
                Val::Int(x) => {
                    values.push(x);
                    nulls.append_non_null();
                }
                _ => {
                    values.push(0);
                    nulls.append_null();
                }
            },
            ColumnBuilder::Float { values, nulls } => match v {
                Val::Int(x) => {
                    values.push(x as f64);
                    nulls.append_non_null();
                }
                Val::Float(x) | Val::BigInt(x) => {
                    values.push(x);
                    nulls.append_non_null();
                }
                _ => {
                    values.push(0.0);
                    nulls.append_null();
                }
            },
            ColumnBuilder::Bool(b) => match v {
                Val::Bool(x) => b.append_value(x),
                _ => b.append_null(),
            },
        }
    }

    pub(super) fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Str {
                offsets,
                values,
                mut nulls,
            } => {
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                // SAFETY: every value is a slice of a line that passed UTF-8 validation, cut at
                // JSON string quotes (ASCII), or the output of `unescape`, which writes UTF-8.
                Arc::new(unsafe {
                    StringArray::new_unchecked(offsets, values.into(), nulls.finish())
                })
            }
            ColumnBuilder::Int { values, mut nulls } => {
                Arc::new(Int64Array::new(values.into(), nulls.finish()))
            }
            ColumnBuilder::Float { values, mut nulls } => {
                Arc::new(Float64Array::new(values.into(), nulls.finish()))
            }
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
        }
    }
}

/// The shape of the last buffer a decoder read, to make room for the next one's columns at
/// once: columns grown by doubling copied their values about once more (1.2 % of the file
/// path's CPU in `realloc`, measured with `perf`). Bounded whatever the buffers: about twice
/// the last buffer's records are planned (a sixteenth more), at most one per 32 bytes of the
/// buffer, and string bytes at most about twice the last buffer's size in all (a record's
/// strings are parts of it), so a huge record after small ones is not given room for
/// thousands of rows. A buffer after a small one grows its columns as before this hint.
pub(super) struct SizeHint {
    /// One lock per buffer decoded (about 1 MiB): the workers sharing a decoder read and
    /// write the whole shape at once, never one buffer's records with another's bytes.
    last: Mutex<Shape>,
}

/// What a buffer held.
#[derive(Clone, Default)]
struct Shape {
    /// Bytes of input per record (0: nothing decoded yet).
    bytes_per_record: usize,
    /// Records of the buffer.
    records: usize,
    /// Per decoded column: bytes of string values per record.
    value_bytes_per_record: Vec<usize>,
}

/// Records shorter than this are not planned for one by one: at most one record per this many
/// bytes of a buffer gets room, the others grow the columns.
const MIN_RECORD_BYTES: usize = 32;

/// The room planned for one buffer's columns.
pub(super) struct Plan {
    /// Rows.
    pub(super) rows: usize,
    shape: Shape,
    bytes: usize,
}

impl Plan {
    /// String bytes to make room for in column `column` (never more than the buffer: values
    /// are parts of its records).
    pub(super) fn value_bytes(&self, column: usize) -> usize {
        let per = self.shape.value_bytes_per_record.get(column).copied();
        per.unwrap_or(0).saturating_mul(self.rows).min(self.bytes)
    }
}

impl SizeHint {
    pub(super) fn new(columns: usize) -> Self {
        SizeHint {
            last: Mutex::new(Shape {
                value_bytes_per_record: vec![0; columns],
                ..Shape::default()
            }),
        }
    }

    /// The room to plan for a buffer of `bytes` bytes: its records at the last buffer's bytes
    /// per record, at most twice the last buffer's, a sixteenth more (none before a buffer was
    /// read).
    pub(super) fn plan(&self, bytes: usize) -> Plan {
        let shape = match self.last.lock() {
            Ok(s) => s.clone(),
            Err(s) => s.into_inner().clone(),
        };
        let rows = match shape.bytes_per_record {
            0 => 0,
            per => {
                let rows = (bytes / per.max(MIN_RECORD_BYTES)).min(shape.records.saturating_mul(2));
                rows + rows / 16
            }
        };
        Plan { rows, shape, bytes }
    }

    /// Learns from a buffer of `bytes` bytes holding `records` records, decoded into
    /// `columns` (bad records count as records: their bytes are in the buffer too).
    pub(super) fn learn(&self, bytes: usize, records: u64, columns: &[ColumnBuilder]) {
        if records == 0 {
            return;
        }
        let records = usize::try_from(records).unwrap_or(usize::MAX);
        let shape = Shape {
            bytes_per_record: (bytes / records).max(1),
            records,
            value_bytes_per_record: columns
                .iter()
                .map(|c| c.value_bytes().div_ceil(records))
                .collect(),
        };
        match self.last.lock() {
            Ok(mut s) => *s = shape,
            Err(s) => *s.into_inner() = shape,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_hint_plans_from_the_last_buffer_within_bounds() {
        let hint = SizeHint::new(2);
        // nothing read yet: no room planned
        assert_eq!(hint.plan(1 << 20).rows, 0);
        assert_eq!(hint.plan(1 << 20).value_bytes(0), 0);
        let mut text = ColumnBuilder::with_capacity(FieldKind::Str, 0, 0);
        let mut ints = ColumnBuilder::with_capacity(FieldKind::Int, 0, 0);
        let line = br#"{"a":"0123456789","b":7}"#;
        let mut scratch = Vec::new();
        for _ in 0..100 {
            let s = Val::Str {
                start: 6,
                end: 16,
                escaped: false,
            };
            text.push(line, s, &mut scratch);
            ints.push(line, Val::Int(7), &mut scratch);
        }
        // 100 records of 100 bytes each, 10 string bytes a record
        hint.learn(10_000, 100, &[text, ints]);
        let plan = hint.plan(10_000);
        assert_eq!(plan.rows, 106);
        assert_eq!(plan.value_bytes(0), 1_060);
        assert_eq!(plan.value_bytes(1), 0);
        // never more string bytes than the buffer holds
        let plan = hint.plan(4_096);
        assert_eq!(plan.rows, 42);
        assert_eq!(plan.value_bytes(0), 420);
        // a buffer a hundred times larger: at most twice the last buffer's records
        assert_eq!(hint.plan(1_000_000).rows, 212);
        // tiny records are not planned for one by one
        let short = SizeHint::new(0);
        short.learn(300, 100, &[]);
        assert_eq!(short.plan(3_200).rows, 106);
    }
}
