//! The Arrow columns a decoder builds from checked values.

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
    pub(super) fn new(kind: FieldKind) -> Self {
        match kind {
            FieldKind::Str | FieldKind::Object | FieldKind::Array => ColumnBuilder::Str {
                offsets: vec![0],
                values: Vec::new(),
                nulls: NullBufferBuilder::new(0),
            },
            FieldKind::Int => ColumnBuilder::Int {
                values: Vec::new(),
                nulls: NullBufferBuilder::new(0),
            },
            FieldKind::Float => ColumnBuilder::Float {
                values: Vec::new(),
                nulls: NullBufferBuilder::new(0),
            },
            FieldKind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
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
