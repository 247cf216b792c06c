//! The Arrow columns a decoder builds from checked values.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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
/// path's CPU in `realloc`, measured with `perf`). Bounded whatever the buffers: string bytes
/// planned are at most about the buffer's size in all (a row's strings are parts of its
/// record), other columns 8 bytes per 32 bytes of buffer each.
pub(super) struct SizeHint {
    /// Bytes of input per record (0: nothing decoded yet).
    bytes_per_record: AtomicUsize,
    /// Per decoded column: bytes of string values per row.
    value_bytes_per_row: Box<[AtomicUsize]>,
}

/// Records shorter than this are not planned for: a buffer of shorter ones grows its columns.
const MIN_RECORD_BYTES: usize = 32;

impl SizeHint {
    pub(super) fn new(columns: usize) -> Self {
        SizeHint {
            bytes_per_record: AtomicUsize::new(0),
            value_bytes_per_row: (0..columns).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Rows to make room for in a buffer of `bytes` bytes (a sixteenth more than the last
    /// buffer's records per byte; none before a buffer was read).
    pub(super) fn rows(&self, bytes: usize) -> usize {
        match self.bytes_per_record.load(Ordering::Relaxed) {
            0 => 0,
            per => {
                let rows = bytes / per.max(MIN_RECORD_BYTES);
                rows + rows / 16
            }
        }
    }

    /// String bytes to make room for in column `column` for `rows` rows of a buffer of
    /// `bytes` bytes (never more than the buffer: values are parts of its records).
    pub(super) fn value_bytes(&self, column: usize, rows: usize, bytes: usize) -> usize {
        let per = self.value_bytes_per_row[column].load(Ordering::Relaxed);
        per.saturating_mul(rows).min(bytes)
    }

    /// Learns from a buffer of `bytes` bytes holding `records` records, of which `rows` were
    /// decoded into `columns`.
    pub(super) fn learn(&self, bytes: usize, records: u64, rows: usize, columns: &[ColumnBuilder]) {
        if records == 0 || rows == 0 {
            return;
        }
        let per = (bytes as u64 / records) as usize;
        self.bytes_per_record.store(per.max(1), Ordering::Relaxed);
        for (hint, c) in self.value_bytes_per_row.iter().zip(columns) {
            hint.store(c.value_bytes().div_ceil(rows), Ordering::Relaxed);
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
        assert_eq!(hint.rows(1 << 20), 0);
        assert_eq!(hint.value_bytes(0, 100, 1 << 20), 0);
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
        // 100 records of 100 bytes each, 10 string bytes a row
        hint.learn(10_000, 100, 100, &[text, ints]);
        assert_eq!(hint.rows(10_000), 106);
        assert_eq!(hint.value_bytes(0, 106, 10_000), 1_060);
        assert_eq!(hint.value_bytes(1, 106, 10_000), 0);
        // never more string bytes than the buffer holds
        assert_eq!(hint.value_bytes(0, 1_000_000, 4_096), 4_096);
        // tiny records are not planned for one by one
        let short = SizeHint::new(0);
        short.learn(300, 100, 100, &[]);
        assert_eq!(short.rows(3_200), 106);
    }
}
