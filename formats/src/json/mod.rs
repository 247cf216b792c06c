//! NDJSON into Arrow, one pass per line, no intermediate JSON values.
//!
//! Each buffer of lines is first classified by stage 1 (`stage1`: SIMD, or a portable kernel
//! that gives the same bitmap) into a bitmap of the bytes a string scanner must stop at.
//! Each line is then parsed by a small validating scanner (`scanner`, stage 2) that jumps
//! from one such byte to the next inside strings, matches keys against the field expected
//! next, and reads integers eight digits at a time (`number`). Values of schema fields land
//! in per-row slots (positions into the line, or the parsed number); a row is appended to the
//! Arrow columns (`columns`) only after the whole line parsed and matched the schema, so a
//! bad line leaves no trace but its dead letter. Only the columns the pipeline reads are
//! built; the other fields are still checked: every string for raw control characters and
//! bad escapes, every number, literal, nesting and separator. Validity follows Python's
//! `json.loads` plus the schema (the reference oracle): strict strings (no raw control
//! characters), integers without fraction or exponent, `NaN`/`Infinity` accepted as
//! numbers, the last duplicate key wins, invalid UTF-8 refused.

use std::cell::Cell;
use std::sync::Arc;

use arrow::array::ArrayRef;
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

mod columns;
mod number;
mod scanner;
mod stage1;
mod strings;

use columns::{ColumnBuilder, SizeHint};
use scanner::Parser;
use stage1::{KernelKind, Specials};
use strings::{eq_bytes, has_lone_surrogate, unescape};

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
    /// Stage 1's kernel (the processor's best unless a test asks for another).
    kernel: KernelKind,
    /// Per schema field: whether its name can be matched byte for byte in a record (it has
    /// no byte a JSON string would escape).
    plain_name: Vec<bool>,
    /// The last buffer's shape, to size the next one's columns.
    size_hint: SizeHint,
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

thread_local! {
    /// Stage 1's bitmap, kept between the buffers a thread decodes.
    static SPECIALS: Cell<Specials> = Cell::new(Specials::default());
}

/// Why a decoder cannot be built for a source's schema and columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecoderError {
    #[error("event-time field `{field}` is not in schema `{schema}`")]
    TimeFieldNotInSchema { field: String, schema: String },
    #[error("event-time field `{field}` is neither in schema `{schema}` nor an envelope time (`time`, `occurred_at`)")]
    TimeFieldNotInEnvelope { field: String, schema: String },
    #[error("event-time field `{0}` must be an integer (epoch ms) or a string (RFC 3339)")]
    TimeFieldType(String),
    /// A column the pipeline reads that the schema does not have.
    #[error("field `{field}` is not in schema `{schema}`")]
    NotInSchema { field: String, schema: String },
}

impl JsonDecoder {
    /// A decoder for `schema` whose output holds the fields named in `columns` (in schema
    /// order) and reads event time from `time_field`, which must be an integer (epoch ms)
    /// or string (RFC 3339) field.
    pub fn new(
        schema: Arc<SourceSchema>,
        columns: &[String],
        time_field: &str,
    ) -> Result<Self, DecoderError> {
        let time =
            schema
                .index_of(time_field)
                .ok_or_else(|| DecoderError::TimeFieldNotInSchema {
                    field: time_field.to_string(),
                    schema: schema.name.clone(),
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
    ) -> Result<Self, DecoderError> {
        let time = match schema.index_of(time_field) {
            Some(i) => Some(i),
            None if ENVELOPE_TIME_FIELDS.contains(&time_field) => None,
            None => {
                return Err(DecoderError::TimeFieldNotInEnvelope {
                    field: time_field.to_string(),
                    schema: schema.name.clone(),
                })
            }
        };
        Self::build(schema, columns, time, true)
    }

    fn build(
        schema: Arc<SourceSchema>,
        columns: &[String],
        time_field: Option<usize>,
        envelope: bool,
    ) -> Result<Self, DecoderError> {
        if let Some(t) = time_field {
            if !matches!(schema.fields[t].kind, FieldKind::Int | FieldKind::Str) {
                return Err(DecoderError::TimeFieldType(schema.fields[t].name.clone()));
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
                return Err(DecoderError::NotInSchema {
                    field: c.clone(),
                    schema: schema.name.clone(),
                });
            }
        }
        let plain_name = schema_plain_names(&schema);
        let size_hint = SizeHint::new(projected.len());
        Ok(JsonDecoder {
            schema,
            by_len,
            projected,
            output: Arc::new(Schema::new(fields.clone())),
            fields_output: Arc::new(Schema::new(fields)),
            message_columns: Vec::new(),
            time_field,
            envelope,
            kernel: KernelKind::best(),
            plain_name,
            size_hint,
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

    /// When the string at `at` (its opening quote) is exactly the name of field `hint`, the
    /// position after its closing quote. The name has no byte a string would escape, so the
    /// bytes between the quotes are the whole key, and valid.
    #[inline]
    fn expected_key(&self, line: &[u8], at: usize, hint: usize) -> Option<usize> {
        let name = self.schema.fields.get(hint)?.name.as_bytes();
        if !self.plain_name[hint] {
            return None;
        }
        let s = at + 1;
        let e = s + name.len();
        (line.get(e) == Some(&b'"') && eq_bytes(&line[s..e], name)).then_some(e + 1)
    }

    /// Uses the portable stage 1 instead of the processor's SIMD one (tests compare the two).
    #[doc(hidden)]
    pub fn with_portable_stage1(mut self) -> Self {
        self.kernel = KernelKind::Scalar;
        self
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
        let mut specials = SPECIALS.with(Cell::take);
        specials.fill_with(bytes, self.kernel);
        let plan = self.size_hint.plan(bytes.len());
        let rows_hint = plan.rows;
        let mut cols: Vec<ColumnBuilder> = self
            .projected
            .iter()
            .enumerate()
            .map(|(c, &f)| {
                let kind = self.schema.fields[f].kind;
                ColumnBuilder::with_capacity(kind, rows_hint, plan.value_bytes(c))
            })
            .collect();
        let mut slots = vec![Val::Missing; self.schema.fields.len()];
        let mut event_time = Vec::with_capacity(rows_hint);
        let mut offsets = Vec::with_capacity(rows_hint);
        let mut spans = Vec::with_capacity(rows_hint);
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
                self.parse_line(
                    Parser::new(line, start, &specials),
                    &mut slots,
                    &mut scratch,
                )
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
        specials.shrink();
        SPECIALS.with(|s| s.set(specials));
        let rows = event_time.len();
        self.size_hint.learn(bytes.len(), records, &cols);
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
        mut p: Parser<'_>,
        slots: &mut [Val],
        scratch: &mut Vec<u8>,
    ) -> Result<i64, LineError> {
        slots.fill(Val::Missing);
        let line = p.b;
        p.ws();
        if p.i >= line.len() {
            return Err(LineError::syntax("empty record: expected a JSON object", 0));
        }
        let mut envelope_time = Val::Missing;
        if line[p.i] != b'{' {
            // a valid JSON value that is not an object is still bad, with a clearer message
            let mut q = p.at(p.i);
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
            let field = if let Some(end) = self.expected_key(line, p.i, hint) {
                p.i = end;
                Some(hint)
            } else {
                let (ks, ke, kesc) = p.string()?;
                if kesc {
                    scratch.clear();
                    unescape(&line[ks..ke], scratch);
                    self.lookup(scratch, hint)
                } else {
                    self.lookup(&line[ks..ke], hint)
                }
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
        // the key (`data` or `payload`) whose object filled the slots
        let mut found_data: Option<bool> = None;
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
                let is_payload = key == b"payload";
                let is_data = key == b"data" || is_payload;
                let is_time = key == b"time" || key == b"occurred_at";
                p.colon()?;
                if is_data && p.peek() == Some(b'{') {
                    slots.fill(Val::Missing);
                    self.parse_object(p, slots, scratch)?;
                    found_data = Some(is_payload);
                } else if is_data && found_data == Some(is_payload) {
                    // the same key again, not an object: the last one is the record's (as
                    // `json.loads` keeps it), so the object before it is not
                    slots.fill(Val::Missing);
                    found_data = None;
                    p.skip_value(0)?;
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
        if found_data.is_none() {
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
        // (before any column takes a value: a refused record adds to none)
        for &f in &self.projected {
            if let Val::Str {
                start,
                end,
                escaped: true,
            } = slots[f]
            {
                if has_lone_surrogate(&line[start as usize..end as usize]) {
                    return Err(LineError {
                        code: "wrong_type",
                        message:
                            "a string with an unpaired UTF-16 surrogate escape (\\ud800 to \\udfff \
                                  not in a pair), which has no UTF-8 form"
                                .into(),
                        field: Some(f),
                        column: None,
                    });
                }
            }
        }
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

/// Per field: whether its name has no `"`, `\\` or control character.
fn schema_plain_names(schema: &SourceSchema) -> Vec<bool> {
    schema
        .fields
        .iter()
        .map(|f| !f.name.bytes().any(stage1::is_special))
        .collect()
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

#[cfg(test)]
mod tests;
