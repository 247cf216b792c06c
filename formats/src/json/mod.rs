//! NDJSON into Arrow, one pass per line, no intermediate JSON values.
//!
//! Each line is parsed by a small validating scanner. Values of schema fields land in
//! per-row slots (positions into the line, or the parsed number); a row is appended to the
//! Arrow columns only after the whole line parsed and matched the schema, so a bad line
//! leaves no trace but its dead letter. Only the columns the pipeline reads are built; the
//! other fields are still checked. Validity follows Python's `json.loads` plus the schema
//! (the reference oracle): strict strings (no raw control characters), integers without
//! fraction or exponent, `NaN`/`Infinity` accepted as numbers, the last duplicate key wins.

use std::sync::Arc;

use arrow::array::NullBufferBuilder;
use arrow::array::{ArrayRef, BooleanBuilder, Float64Array, Int64Array, StringArray};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use weir_engine::job::Decode;
use weir_engine::time::parse_rfc3339_ms;
use weir_engine::trace::TraceIds;
use weir_engine::{
    Chunk, ChunkData, DeadLetter, Decoded, ErrorInfo, EventBatch, Messages, RawRows, Reason,
    RowHeaders, SharedBytes,
};

use crate::message_columns::MessageColumn;
use crate::schema::{FieldKind, SourceSchema};

/// A line that could not be decoded.
pub struct BadLine {
    /// Offset of the line in its partition.
    pub offset: u64,
    pub raw: Vec<u8>,
    pub error: ErrorInfo,
}

/// The result of decoding lines.
pub struct DecodedLines {
    /// The valid rows, if any.
    pub events: Option<EventBatch>,
    pub bad: Vec<BadLine>,
    /// Lines read.
    pub records: u64,
}

/// Decodes NDJSON lines of one schema into the columns a pipeline reads.
pub struct JsonDecoder {
    schema: Arc<SourceSchema>,
    /// Field names grouped by byte length, for the key lookup.
    by_len: Vec<Vec<(Box<[u8]>, usize)>>,
    projected: Vec<usize>,
    /// The decoded fields, then the message columns.
    output: SchemaRef,
    /// The decoded fields only.
    fields_output: SchemaRef,
    /// Message attributes appended as columns.
    message_columns: Vec<MessageColumn>,
    /// The schema field holding event time; `None` when it comes from the envelope.
    time_field: Option<usize>,
    envelope: bool,
}

/// The envelope attributes that may carry event time (CloudEvents `time`, the platform
/// envelope's `occurred_at`).
pub const ENVELOPE_TIME_FIELDS: [&str; 2] = ["time", "occurred_at"];

#[derive(Clone, Copy, Debug)]
enum Val {
    Missing,
    Null,
    Str {
        start: u32,
        end: u32,
        escaped: bool,
    },
    Int(i64),
    /// An integer literal outside the 64-bit range, as the nearest double: a valid JSON
    /// number (a `double` field takes it, an unknown field is skipped), never a `long`.
    BigInt(f64),
    Float(f64),
    Bool(bool),
    Obj {
        start: u32,
        end: u32,
    },
    Arr {
        start: u32,
        end: u32,
    },
}

/// Why a line is bad.
struct LineError {
    code: &'static str,
    message: String,
    field: Option<usize>,
    column: Option<usize>,
}

impl LineError {
    fn syntax(message: impl Into<String>, column: usize) -> Self {
        LineError {
            code: "invalid_json",
            message: message.into(),
            field: None,
            column: Some(column),
        }
    }
}

const MAX_DEPTH: usize = 512;

impl JsonDecoder {
    /// A decoder for `schema` whose output holds the fields named in `columns` (in schema
    /// order) and reads event time from `time_field`, which must be an integer (epoch ms)
    /// or string (RFC 3339) field.
    pub fn new(
        schema: Arc<SourceSchema>,
        columns: &[String],
        time_field: &str,
    ) -> Result<Self, String> {
        let time = schema.index_of(time_field).ok_or_else(|| {
            format!(
                "event-time field `{time_field}` is not in schema `{}`",
                schema.name
            )
        })?;
        Self::build(schema, columns, Some(time), false)
    }

    /// A decoder of events in an envelope: CloudEvents 1.0 structured JSON (fields read from
    /// `data`) or the platform's envelope (fields read from `payload`), told apart per record.
    /// Event time is read from `time_field`: a schema field of the data, or `time` /
    /// `occurred_at` for the envelope's time attribute (either name reads both envelopes).
    pub fn enveloped(
        schema: Arc<SourceSchema>,
        columns: &[String],
        time_field: &str,
    ) -> Result<Self, String> {
        let time = match schema.index_of(time_field) {
            Some(i) => Some(i),
            None if ENVELOPE_TIME_FIELDS.contains(&time_field) => None,
            None => {
                return Err(format!(
                    "event-time field `{time_field}` is neither in schema `{}` nor an envelope time (`time`, `occurred_at`)",
                    schema.name
                ))
            }
        };
        Self::build(schema, columns, time, true)
    }

    fn build(
        schema: Arc<SourceSchema>,
        columns: &[String],
        time_field: Option<usize>,
        envelope: bool,
    ) -> Result<Self, String> {
        if let Some(t) = time_field {
            if !matches!(schema.fields[t].kind, FieldKind::Int | FieldKind::Str) {
                return Err(format!(
                    "event-time field `{}` must be an integer (epoch ms) or a string (RFC 3339)",
                    schema.fields[t].name
                ));
            }
        }
        let mut by_len: Vec<Vec<(Box<[u8]>, usize)>> = Vec::new();
        for (i, f) in schema.fields.iter().enumerate() {
            let l = f.name.len();
            if by_len.len() <= l {
                by_len.resize_with(l + 1, Vec::new);
            }
            by_len[l].push((f.name.as_bytes().into(), i));
        }
        let mut projected = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in schema.fields.iter().enumerate() {
            if columns.iter().any(|c| c == &f.name) {
                projected.push(i);
                fields.push(Field::new(&f.name, f.kind.arrow_type(), true));
            }
        }
        for c in columns {
            if schema.index_of(c).is_none() {
                return Err(format!("field `{c}` is not in schema `{}`", schema.name));
            }
        }
        Ok(JsonDecoder {
            schema,
            by_len,
            projected,
            output: Arc::new(Schema::new(fields.clone())),
            fields_output: Arc::new(Schema::new(fields)),
            message_columns: Vec::new(),
            time_field,
            envelope,
        })
    }

    /// Appends message attributes (`_key`, `_offset`...) to the decoded columns.
    pub fn with_message_columns(mut self, columns: Vec<MessageColumn>) -> Self {
        let mut fields: Vec<Field> = self
            .fields_output
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(columns.iter().map(|c| c.field()));
        self.output = Arc::new(Schema::new(fields));
        self.message_columns = columns;
        self
    }

    /// The schema of decoded batches.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// The schema field named `key`; `hint` is the field expected next (producers write
    /// fields in the same order on every line), tried first.
    #[inline]
    fn lookup(&self, key: &[u8], hint: usize) -> Option<usize> {
        if let Some(f) = self.schema.fields.get(hint) {
            if eq_bytes(f.name.as_bytes(), key) {
                return Some(hint);
            }
        }
        self.by_len
            .get(key.len())?
            .iter()
            .find(|(n, _)| eq_bytes(n, key))
            .map(|(_, i)| *i)
    }

    /// Decodes newline-separated records. `first_offset` is the offset of the first line.
    pub fn decode_lines(&self, bytes: &SharedBytes, first_offset: u64) -> DecodedLines {
        let data: &[u8] = bytes;
        let mut start = 0usize;
        let mut offset = first_offset;
        let lines = std::iter::from_fn(|| {
            if start >= data.len() {
                return None;
            }
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |p| start + p);
            let line = (start, end, offset);
            start = end + 1;
            offset += 1;
            Some(line)
        });
        self.decode_records(bytes, lines, None)
    }

    /// Decodes messages of Kafka partition `partition`, one JSON record each (a record may
    /// span lines).
    pub fn decode_messages(&self, messages: &Messages, partition: i32) -> DecodedLines {
        let records = messages
            .payloads
            .iter()
            .zip(&messages.offsets)
            .map(|(&(s, e), &o)| (s as usize, e as usize, o));
        self.decode_records(&messages.bytes, records, Some((messages, partition)))
    }

    /// Decodes the records at the given (start, end, offset) ranges of `bytes`.
    fn decode_records(
        &self,
        bytes: &SharedBytes,
        ranges: impl Iterator<Item = (usize, usize, u64)>,
        messages: Option<(&Messages, i32)>,
    ) -> DecodedLines {
        let mut kept: Vec<u32> = Vec::new();
        let all_utf8 = simdutf8::basic::from_utf8(bytes).is_ok();
        let mut cols: Vec<ColumnBuilder> = self
            .projected
            .iter()
            .map(|&f| ColumnBuilder::new(self.schema.fields[f].kind))
            .collect();
        let mut slots = vec![Val::Missing; self.schema.fields.len()];
        let mut event_time = Vec::new();
        let mut offsets = Vec::new();
        let mut spans = Vec::new();
        let mut bad = Vec::new();
        let mut scratch = Vec::new();
        let mut records = 0u64;
        let data: &[u8] = bytes;
        // message index of each kept row, when the messages have headers (for dead letters)
        let with_headers = messages.is_some_and(|(m, _)| !m.header_fields.is_empty());
        let mut row_messages: Vec<u32> = Vec::new();
        for (start, end, offset) in ranges {
            let line = &data[start..end];
            records += 1;
            let result = if !all_utf8 && simdutf8::basic::from_utf8(line).is_err() {
                Err(LineError {
                    code: "invalid_utf8",
                    message: "the record is not valid UTF-8".into(),
                    field: None,
                    column: None,
                })
            } else {
                self.parse_line(line, &mut slots, &mut scratch)
            };
            match result.and_then(|t| {
                self.append(line, &slots, &mut cols, &mut scratch)?;
                Ok(t)
            }) {
                Ok(t) => {
                    event_time.push(t);
                    offsets.push(offset);
                    spans.push((start as u32, end as u32));
                    if !self.message_columns.is_empty() {
                        kept.push((records - 1) as u32);
                    }
                    if with_headers {
                        row_messages.push((records - 1) as u32);
                    }
                }
                Err(e) => {
                    let mut info = ErrorInfo::new(e.code, e.message);
                    if let Some(f) = e.field {
                        info = info.with("field", self.schema.fields[f].name.as_str());
                    }
                    if let Some(c) = e.column {
                        info = info.with("column", c + 1);
                    }
                    bad.push(BadLine {
                        offset,
                        raw: line.to_vec(),
                        error: info,
                    });
                }
            }
        }
        let rows = event_time.len();
        if rows == 0 {
            return DecodedLines {
                events: None,
                bad,
                records,
            };
        }
        let mut arrays: Vec<ArrayRef> = cols.into_iter().map(ColumnBuilder::finish).collect();
        for c in &self.message_columns {
            arrays.push(match messages {
                Some((m, partition)) => c.build(m, &kept, partition),
                None => c.nulls(rows),
            });
        }
        let batch = RecordBatch::try_new_with_options(
            self.output.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .expect("decoded columns match the output schema");
        let events = EventBatch {
            batch,
            event_time,
            offsets,
            raw: Some(RawRows {
                bytes: bytes.clone(),
                spans,
                headers: messages.and_then(|(m, _)| RowHeaders::of_messages(m, &row_messages)),
            }),
        };
        DecodedLines {
            events: Some(events),
            bad,
            records,
        }
    }

    /// Parses one line into the slots and returns its event time.
    fn parse_line(
        &self,
        line: &[u8],
        slots: &mut [Val],
        scratch: &mut Vec<u8>,
    ) -> Result<i64, LineError> {
        slots.fill(Val::Missing);
        let mut p = Parser { b: line, i: 0 };
        p.ws();
        if p.i >= line.len() {
            return Err(LineError::syntax("empty record: expected a JSON object", 0));
        }
        let mut envelope_time = Val::Missing;
        if line[p.i] != b'{' {
            // a valid JSON value that is not an object is still bad, with a clearer message
            let mut q = Parser { b: line, i: p.i };
            if q.skip_value(0).is_ok() {
                q.ws();
                if q.i == line.len() {
                    return Err(LineError {
                        code: "not_an_object",
                        message: "the record is JSON but not an object".into(),
                        field: None,
                        column: Some(p.i),
                    });
                }
            }
            return Err(LineError::syntax("expected `{`", p.i));
        }
        if self.envelope {
            envelope_time = self.parse_envelope(&mut p, slots, scratch)?;
        } else {
            self.parse_object(&mut p, slots, scratch)?;
        }
        p.ws();
        if p.i != line.len() {
            return Err(LineError::syntax("extra data after the JSON object", p.i));
        }
        // Schema checks, in field order.
        for (f, field) in self.schema.fields.iter().enumerate() {
            let v = slots[f];
            let ok = match (v, field.kind) {
                (Val::Missing | Val::Null, _) => {
                    if field.nullable {
                        continue;
                    }
                    let (code, what) = if matches!(v, Val::Missing) {
                        ("missing_field", "missing")
                    } else {
                        ("null_field", "null")
                    };
                    let code = if Some(f) == self.time_field {
                        "bad_event_time"
                    } else {
                        code
                    };
                    return Err(LineError {
                        code,
                        message: format!("required field `{}` is {what}", field.name),
                        field: Some(f),
                        column: None,
                    });
                }
                (Val::Str { .. }, FieldKind::Str) => true,
                (Val::Int(_), FieldKind::Int | FieldKind::Float) => true,
                (Val::Float(_) | Val::BigInt(_), FieldKind::Float) => true,
                (Val::Bool(_), FieldKind::Bool) => true,
                (Val::Obj { .. }, FieldKind::Object) => true,
                (Val::Arr { .. }, FieldKind::Array) => true,
                _ => false,
            };
            if !ok {
                let code = if Some(f) == self.time_field {
                    "bad_event_time"
                } else {
                    "wrong_type"
                };
                return Err(LineError {
                    code,
                    message: format!(
                        "field `{}` must be {}, found {}",
                        field.name,
                        field.kind.describe(),
                        describe(v)
                    ),
                    field: Some(f),
                    column: None,
                });
            }
        }
        let (time, field) = match self.time_field {
            Some(f) => (slots[f], Some(f)),
            None => (envelope_time, None),
        };
        match time {
            Val::Int(t) if field.is_some() => Ok(t),
            Val::Str {
                start,
                end,
                escaped,
            } => {
                let text: &[u8] = if escaped {
                    scratch.clear();
                    unescape(&line[start as usize..end as usize], scratch);
                    scratch
                } else {
                    &line[start as usize..end as usize]
                };
                parse_rfc3339_ms(text).ok_or_else(|| LineError {
                    code: "bad_event_time",
                    message: format!(
                        "event time `{}` is not an RFC 3339 time",
                        String::from_utf8_lossy(text)
                    ),
                    field,
                    column: None,
                })
            }
            Val::Missing | Val::Null if field.is_none() => Err(LineError {
                code: "bad_event_time",
                message: "the envelope has no `time` (CloudEvents) or `occurred_at` attribute"
                    .into(),
                field: None,
                column: None,
            }),
            _ => Err(LineError {
                code: "bad_event_time",
                message: "event time unreadable".into(),
                field,
                column: None,
            }),
        }
    }

    /// Parses a JSON object at `p` into the slots of the schema fields it has.
    fn parse_object(
        &self,
        p: &mut Parser<'_>,
        slots: &mut [Val],
        scratch: &mut Vec<u8>,
    ) -> Result<(), LineError> {
        let line = p.b;
        p.i += 1; // `{`
        p.ws();
        let mut hint = 0;
        if p.peek() == Some(b'}') {
            p.i += 1;
            return Ok(());
        }
        loop {
            if p.peek() != Some(b'"') {
                return Err(LineError::syntax("expected a quoted field name", p.i));
            }
            let (ks, ke, kesc) = p.string()?;
            let field = if kesc {
                scratch.clear();
                unescape(&line[ks..ke], scratch);
                self.lookup(scratch, hint)
            } else {
                self.lookup(&line[ks..ke], hint)
            };
            if let Some(f) = field {
                hint = f + 1;
            }
            p.colon()?;
            match field {
                Some(f) => slots[f] = p.value()?,
                None => p.skip_value(0)?,
            }
            if p.member_end(b'}')? {
                return Ok(());
            }
        }
    }

    /// Parses an envelope at `p`: the schema's fields from its `data` (CloudEvents) or
    /// `payload` (platform envelope) object; returns its `time`/`occurred_at` attribute.
    fn parse_envelope(
        &self,
        p: &mut Parser<'_>,
        slots: &mut [Val],
        scratch: &mut Vec<u8>,
    ) -> Result<Val, LineError> {
        let line = p.b;
        let mut time = Val::Missing;
        let mut found_data = false;
        p.i += 1; // `{`
        p.ws();
        if p.peek() != Some(b'}') {
            loop {
                if p.peek() != Some(b'"') {
                    return Err(LineError::syntax("expected a quoted field name", p.i));
                }
                let (ks, ke, kesc) = p.string()?;
                let key: &[u8] = if kesc {
                    scratch.clear();
                    unescape(&line[ks..ke], scratch);
                    scratch
                } else {
                    &line[ks..ke]
                };
                let is_data = key == b"data" || key == b"payload";
                let is_time = key == b"time" || key == b"occurred_at";
                p.colon()?;
                if is_data && p.peek() == Some(b'{') {
                    slots.fill(Val::Missing);
                    self.parse_object(p, slots, scratch)?;
                    found_data = true;
                } else if is_time {
                    time = p.value()?;
                } else {
                    p.skip_value(0)?;
                }
                if p.member_end(b'}')? {
                    break;
                }
            }
        } else {
            p.i += 1;
        }
        if !found_data {
            return Err(LineError {
                code: "missing_field",
                message: "the envelope has no `data` (CloudEvents) or `payload` object".into(),
                field: None,
                column: None,
            });
        }
        Ok(time)
    }

    fn append(
        &self,
        line: &[u8],
        slots: &[Val],
        cols: &mut [ColumnBuilder],
        scratch: &mut Vec<u8>,
    ) -> Result<(), LineError> {
        for (c, &f) in self.projected.iter().enumerate() {
            cols[c].push(line, slots[f], scratch);
        }
        Ok(())
    }
}

impl Decode for JsonDecoder {
    fn decode(&self, chunk: &Chunk, lines: &SharedBytes) -> Decoded {
        into_decoded(chunk, self.decode_lines(lines, chunk.first_offset))
    }

    fn decode_messages(&self, chunk: &Chunk, messages: &Messages) -> Decoded {
        into_decoded(
            chunk,
            self.decode_messages(messages, chunk.partition.number as i32),
        )
    }
}

/// Decoded records with their bad ones as dead letters of the chunk's partition.
pub(crate) fn into_decoded(chunk: &Chunk, decoded: DecodedLines) -> Decoded {
    let DecodedLines {
        events,
        bad,
        records,
    } = decoded;
    let bad = bad
        .into_iter()
        .map(|b| {
            let from_headers = match &chunk.data {
                ChunkData::Messages(m) => m
                    .offsets
                    .binary_search(&b.offset)
                    .map(|i| TraceIds::from_headers(m.header_pairs(i)))
                    .unwrap_or_default(),
                _ => TraceIds::default(),
            };
            DeadLetter {
                partition: chunk.partition.clone(),
                offset: Some(b.offset),
                reason: Reason::Bad,
                error: b.error,
                trace: from_headers.or(TraceIds::from_record(&b.raw)),
                raw: Some(b.raw),
            }
        })
        .collect();
    Decoded {
        events,
        bad,
        records,
    }
}

/// Byte equality for short names, compared a word at a time without a library call.
#[inline]
fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i + 8 <= a.len() {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([1; 8]));
        if x != y {
            return false;
        }
        i += 8;
    }
    a[i..].iter().zip(&b[i..]).all(|(x, y)| x == y)
}

fn describe(v: Val) -> &'static str {
    match v {
        Val::Missing => "nothing",
        Val::Null => "null",
        Val::Str { .. } => "a string",
        Val::Int(_) => "an integer",
        Val::BigInt(_) => "an integer out of the 64-bit range",
        Val::Float(_) => "a non-integer number",
        Val::Bool(_) => "a boolean",
        Val::Obj { .. } => "an object",
        Val::Arr { .. } => "an array",
    }
}

enum ColumnBuilder {
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
    fn new(kind: FieldKind) -> Self {
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
    fn push(&mut self, line: &[u8], v: Val, scratch: &mut Vec<u8>) {
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

    fn finish(self) -> ArrayRef {
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

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

/// High bits set on the bytes of `w` (little-endian) that are `"`, `\\` or below 0x20. Bits
/// above the first flagged byte may be spurious; the lowest one is exact.
#[inline]
fn string_special_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q & HIGH;
    let s = w ^ (ONES * b'\\' as u64);
    let slash = s.wrapping_sub(ONES) & !s & HIGH;
    control | quote | slash
}

#[cfg(test)]
fn has_string_special(w: u64) -> bool {
    string_special_mask(w) != 0
}

impl Parser<'_> {
    /// Skips whitespace, a `:` and whitespace.
    #[inline]
    fn colon(&mut self) -> Result<(), LineError> {
        self.ws();
        if self.peek() != Some(b':') {
            return Err(LineError::syntax("expected `:` after a field name", self.i));
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.i += 1;
        }
    }

    /// Parses a string starting at `"`; returns the content's range and whether it has escapes.
    #[inline]
    fn string(&mut self) -> Result<(usize, usize, bool), LineError> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            // Jump to the next `"`, `\` or control character, 8 bytes at a time.
            loop {
                match b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
                    Some(word) => {
                        let mask = string_special_mask(u64::from_le_bytes(word));
                        if mask != 0 {
                            i += (mask.trailing_zeros() / 8) as usize;
                            break;
                        }
                        i += 8;
                    }
                    None => {
                        while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
                            i += 1;
                        }
                        break;
                    }
                }
            }
            let Some(&c) = b.get(i) else {
                return Err(LineError::syntax("unterminated string", self.i));
            };
            match c {
                b'"' => {
                    self.i = i + 1;
                    return Ok((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            if b.len() < i + 6 || !b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit)
                            {
                                return Err(LineError::syntax("bad \\u escape in a string", i));
                            }
                            i += 6;
                        }
                        _ => return Err(LineError::syntax("bad escape in a string", i)),
                    }
                }
                _ => return Err(LineError::syntax("control character in a string", i)),
            }
        }
    }

    /// After a member of an object or array: consumes `,` (false: another member follows) or
    /// the closing `close` (true: the container ended).
    #[inline]
    fn member_end(&mut self, close: u8) -> Result<bool, LineError> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(LineError::syntax(
                if close == b'}' {
                    "expected `,` or `}`"
                } else {
                    "expected `,` or `]`"
                },
                self.i,
            )),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), LineError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(LineError::syntax("invalid literal", self.i))
        }
    }

    fn number(&mut self) -> Result<Val, LineError> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
            if b[i..].starts_with(b"Infinity") {
                self.i = i + 8;
                return Ok(Val::Float(f64::NEG_INFINITY));
            }
        }
        let int_start = i;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = b.get(i) {
                    i += 1;
                }
            }
            _ => return Err(LineError::syntax("invalid number", start)),
        }
        let int_end = i;
        let mut float = false;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let d = i;
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
            if i == d {
                return Err(LineError::syntax("invalid number", start));
            }
            float = true;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let d = i;
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
            if i == d {
                return Err(LineError::syntax("invalid number", start));
            }
            float = true;
        }
        self.i = i;
        if !float {
            let mut v: i64 = 0;
            for &c in &b[int_start..int_end] {
                v = match v.checked_mul(10).and_then(|v| {
                    if neg {
                        v.checked_sub((c - b'0') as i64)
                    } else {
                        v.checked_add((c - b'0') as i64)
                    }
                }) {
                    Some(v) => v,
                    None => {
                        let text = std::str::from_utf8(&b[start..i])
                            .map_err(|_| LineError::syntax("invalid number", start))?;
                        let x = text
                            .parse::<f64>()
                            .map_err(|_| LineError::syntax("invalid number", start))?;
                        return Ok(Val::BigInt(x));
                    }
                };
            }
            return Ok(Val::Int(v));
        }
        // SAFETY-free: the slice is ASCII digits, signs, dots and exponents.
        let text = std::str::from_utf8(&b[start..i])
            .map_err(|_| LineError::syntax("invalid number", start))?;
        text.parse::<f64>()
            .map(Val::Float)
            .map_err(|_| LineError::syntax("invalid number", start))
    }

    /// Parses a value into a slot.
    fn value(&mut self) -> Result<Val, LineError> {
        match self.peek() {
            Some(b'"') => {
                let (s, e, escaped) = self.string()?;
                Ok(Val::Str {
                    start: s as u32,
                    end: e as u32,
                    escaped,
                })
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true").map(|_| Val::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Val::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Val::Null),
            Some(b'N') => self.literal(b"NaN").map(|_| Val::Float(f64::NAN)),
            Some(b'I') => self.literal(b"Infinity").map(|_| Val::Float(f64::INFINITY)),
            Some(b'{') => {
                let s = self.i;
                self.skip_value(0)?;
                Ok(Val::Obj {
                    start: s as u32,
                    end: self.i as u32,
                })
            }
            Some(b'[') => {
                let s = self.i;
                self.skip_value(0)?;
                Ok(Val::Arr {
                    start: s as u32,
                    end: self.i as u32,
                })
            }
            None => Err(LineError::syntax("unexpected end of the record", self.i)),
            _ => Err(LineError::syntax("expected a value", self.i)),
        }
    }

    /// Checks and skips any value.
    fn skip_value(&mut self, depth: usize) -> Result<(), LineError> {
        if depth > MAX_DEPTH {
            return Err(LineError::syntax("nested too deeply", self.i));
        }
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    if self.peek() != Some(b'"') {
                        return Err(LineError::syntax("expected a quoted field name", self.i));
                    }
                    self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(LineError::syntax("expected `:`", self.i));
                    }
                    self.i += 1;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    if self.member_end(b'}')? {
                        return Ok(());
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if self.member_end(b']')? {
                        return Ok(());
                    }
                }
            }
            _ => self.value().map(|_| ()),
        }
    }
}

/// Decodes the escapes of a checked JSON string body into UTF-8.
fn unescape(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = s.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let ch = match e {
            b'n' => '\n',
            b't' => '\t',
            b'r' => '\r',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'u' => {
                let hex = |at: usize| -> u32 {
                    s.get(at..at + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u32::from_str_radix(h, 16).ok())
                        .unwrap_or(0xFFFD)
                };
                let hi = hex(i);
                i += 4;
                if (0xD800..0xDC00).contains(&hi)
                    && s.get(i) == Some(&b'\\')
                    && s.get(i + 1) == Some(&b'u')
                {
                    let lo = hex(i + 2);
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 6;
                        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            .unwrap_or('\u{FFFD}')
                    } else {
                        '\u{FFFD}'
                    }
                } else {
                    char::from_u32(hi).unwrap_or('\u{FFFD}')
                }
            }
            other => other as char,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
}

#[cfg(test)]
mod tests;
