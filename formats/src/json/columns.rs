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
/// path's CPU in `realloc`, measured with `perf`). Bounded whatever the buffers: at most twice
/// the last buffer's records are planned, at most one per 32 bytes of the buffer, and string
/// bytes at most about twice the last buffer's size in all (a record's strings are parts of
/// it), so a huge record after small ones is not given room for thousands of rows.
pub(super) struct SizeHint {
    /// Bytes of input per record (0: nothing decoded yet).
    bytes_per_record: AtomicUsize,
    /// Records of the last buffer.
    records: AtomicUsize,
    /// Per decoded column: bytes of string values per record.
    value_bytes_per_record: Box<[AtomicUsize]>,
}

/// Records shorter than this are not planned for one by one: at most one record per this many
/// bytes of a buffer gets room, the others grow the columns.
const MIN_RECORD_BYTES: usize = 32;

impl SizeHint {
    pub(super) fn new(columns: usize) -> Self {
        SizeHint {
            bytes_per_record: AtomicUsize::new(0),
            records: AtomicUsize::new(0),
            value_bytes_per_record: (0..columns).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Rows to make room for in a buffer of `bytes` bytes: its records at the last buffer's
    /// bytes per record, at most twice the last buffer's, a sixteenth more (none before a
    /// buffer was read).
    pub(super) fn rows(&self, bytes: usize) -> usize {
        match self.bytes_per_record.load(Ordering::Relaxed) {
            0 => 0,
            per => {
                let last = self.records.load(Ordering::Relaxed);
                let rows = (bytes / per.max(MIN_RECORD_BYTES)).min(last.saturating_mul(2));
                rows + rows / 16
            }
        }
    }

    /// String bytes to make room for in column `column` for `rows` rows of a buffer of
    /// `bytes` bytes (never more than the buffer: values are parts of its records).
    pub(super) fn value_bytes(&self, column: usize, rows: usize, bytes: usize) -> usize {
        let per = self.value_bytes_per_record[column].load(Ordering::Relaxed);
        per.saturating_mul(rows).min(bytes)
    }

    /// Learns from a buffer of `bytes` bytes holding `records` records, decoded into
    /// `columns` (bad records count as records: their bytes are in the buffer too).
    pub(super) fn learn(&self, bytes: usize, records: u64, columns: &[ColumnBuilder]) {
        if records == 0 {
            return;
        }
        let records = usize::try_from(records).unwrap_or(usize::MAX);
        self.bytes_per_record
            .store((bytes / records).max(1), Ordering::Relaxed);
        self.records.store(records, Ordering::Relaxed);
        for (hint, c) in self.value_bytes_per_record.iter().zip(columns) {
            hint.store(c.value_bytes().div_ceil(records), Ordering::Relaxed);
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
        // 100 records of 100 bytes each, 10 string bytes a record
        hint.learn(10_000, 100, &[text, ints]);
        assert_eq!(hint.rows(10_000), 106);
        assert_eq!(hint.value_bytes(0, 106, 10_000), 1_060);
        assert_eq!(hint.value_bytes(1, 106, 10_000), 0);
        // never more string bytes than the buffer holds
        assert_eq!(hint.value_bytes(0, 1_000_000, 4_096), 4_096);
        // a buffer a hundred times larger: at most twice the last buffer's records
        assert_eq!(hint.rows(1_000_000), 212);
        // tiny records are not planned for one by one
        let short = SizeHint::new(0);
        short.learn(300, 100, &[]);
        assert_eq!(short.rows(3_200), 106);
    }
}
