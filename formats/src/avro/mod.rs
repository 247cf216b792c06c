//! Avro binary records (plain, or in the Confluent wire format) decoded with the source's
//! `.avsc` as the writer schema.
//!
//! Each record is transcoded to a JSON object and handed to the JSON decoder, so Avro input
//! gets exactly the JSON path's schema checks, projections and dead letters; dead letters keep
//! the original Avro bytes. A record that does not decode, or leaves bytes over, is bad
//! (`invalid_avro`).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use serde_json::Value;
use weir_engine::job::Decode;
use weir_engine::{Chunk, Decoded, ErrorInfo, Messages, RawRows, RowHeaders, SharedBytes};

pub use crate::avro_error::{AvroDecodeError, AvroSchemaError};
use crate::json::{into_decoded, BadLine, DecodedLines, JsonDecoder};
use crate::json_rows::json_string as json_str;
use crate::registry::SchemaRegistry;

/// An Avro type, with named types resolved.
#[derive(Debug, Clone)]
pub enum AvroType {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Enum(Arc<Vec<String>>),
    Fixed(usize),
    Array(Box<AvroType>),
    Map(Box<AvroType>),
    Union(Vec<AvroType>),
    Record(Arc<Vec<(String, AvroType)>>),
}

impl AvroType {
    /// Reads an `.avsc` schema.
    pub fn parse(text: &str) -> Result<AvroType, AvroSchemaError> {
        let v: Value = serde_json::from_str(text).map_err(AvroSchemaError::NotJson)?;
        parse_type(&v, &mut HashMap::new(), "")
    }
}

/// Bounds on what one Avro record may decode to, so that a crafted record (a block count of
/// 2^62 items of type `null`, which take no bytes) can neither exhaust memory nor spin: every
/// block count is checked against the items left and, for items that take bytes, against
/// the bytes left; the JSON a record transcodes to is capped. A record over a bound is bad
/// (`invalid_avro`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvroLimits {
    /// Bytes of JSON one record may transcode to.
    pub max_record_bytes: usize,
    /// Array items and map entries in one record, all blocks and nesting levels together.
    pub max_items: u64,
    /// Of those, array items that take no bytes (`null`, an empty record, a zero-size
    /// `fixed`): the only values that cost JSON without costing input, so a few bytes of
    /// input could otherwise decode to `max_record_bytes` of JSON, in every message of a chunk.
    pub max_empty_items: u64,
}

impl Default for AvroLimits {
    /// 16 MiB of JSON, 1,000,000 items and 10,000 items that take no bytes per record.
    fn default() -> Self {
        AvroLimits {
            max_record_bytes: 16 << 20,
            max_items: 1_000_000,
            max_empty_items: 10_000,
        }
    }
}

/// What one record may still use (see [`AvroLimits`]).
struct Budget {
    /// Where the record's JSON starts in the output.
    start: usize,
    max_bytes: usize,
    items_left: u64,
    empty_items_left: u64,
}

impl Budget {
    fn new(limits: &AvroLimits, out: &[u8]) -> Self {
        Budget {
            start: out.len(),
            max_bytes: limits.max_record_bytes,
            items_left: limits.max_items,
            empty_items_left: limits.max_empty_items,
        }
    }

    fn check_size(&self, out: &[u8]) -> Result<(), AvroDecodeError> {
        if out.len() - self.start > self.max_bytes {
            return Err(AvroDecodeError::TooLarge(self.max_bytes));
        }
        Ok(())
    }
}

/// Whether every value of `t` takes at least one byte (so that a block of `n` of them needs
/// `n` bytes).
fn takes_bytes(t: &AvroType) -> bool {
    match t {
        AvroType::Null => false,
        AvroType::Fixed(n) => *n > 0,
        AvroType::Record(fields) => fields.iter().any(|(_, f)| takes_bytes(f)),
        _ => true,
    }
}

/// Writes Avro `bytes` or `fixed` as the Avro JSON encoding does: a string whose code points
/// U+0000 to U+00FF are the bytes (lossless, unlike a lossy UTF-8 reading).
fn json_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let s: String = b.iter().map(|&c| char::from(c)).collect();
    json_str(out, &s);
}

/// The full name of a type named `name` in namespace `ns` (Avro's rule: a name with a dot is
/// full already, an explicit `namespace` comes before the enclosing one).
fn full_name(name: &str, namespace: Option<&str>, ns: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace.unwrap_or(ns) {
        "" => name.to_string(),
        space => format!("{space}.{name}"),
    }
}

/// The namespace a full name's type sets for the types inside it.
fn namespace_of(full: &str) -> &str {
    full.rsplit_once('.').map_or("", |(space, _)| space)
}

/// The type `v` of a schema, inside namespace `ns`; named types (records, enums, fixed)
/// are kept in `named` by their full name, and a reference is resolved in `ns` first, then
/// in the null namespace (never by its last part alone: two types of one short name in two
/// namespaces stay two types).
fn parse_type(
    v: &Value,
    named: &mut HashMap<String, AvroType>,
    ns: &str,
) -> Result<AvroType, AvroSchemaError> {
    use AvroSchemaError::Missing;
    Ok(match v {
        Value::String(s) => match s.as_str() {
            "null" => AvroType::Null,
            "boolean" => AvroType::Boolean,
            "int" => AvroType::Int,
            "long" => AvroType::Long,
            "float" => AvroType::Float,
            "double" => AvroType::Double,
            "bytes" => AvroType::Bytes,
            "string" => AvroType::String,
            other => named
                .get(&full_name(other, None, ns))
                .or_else(|| named.get(other))
                .cloned()
                .ok_or_else(|| AvroSchemaError::UnknownType(other.to_string()))?,
        },
        Value::Array(branches) => AvroType::Union(
            branches
                .iter()
                .map(|b| parse_type(b, named, ns))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => {
            let t = o
                .get("type")
                .ok_or(Missing("a complex Avro type needs \"type\""))?;
            // only records, enums and fixed are named types (a name on anything else is
            // ignored, as Avro does)
            let kind = t.as_str();
            let named_kind = matches!(kind, Some("record" | "error" | "enum" | "fixed"));
            let full = o
                .get("name")
                .and_then(Value::as_str)
                .filter(|_| named_kind)
                .map(|n| full_name(n, o.get("namespace").and_then(Value::as_str), ns));
            let inner = full.as_deref().map_or(ns, namespace_of);
            let ty = match kind {
                Some("record") | Some("error") => {
                    let fields = o
                        .get("fields")
                        .and_then(Value::as_array)
                        .ok_or(Missing("a record needs \"fields\""))?;
                    let mut out = Vec::new();
                    for f in fields {
                        let n = f
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or(Missing("a field needs \"name\""))?;
                        let ft = f.get("type").ok_or(Missing("a field needs \"type\""))?;
                        let t = parse_type(ft, named, inner).map_err(|e| e.in_field(n))?;
                        out.push((n.to_string(), t));
                    }
                    AvroType::Record(Arc::new(out))
                }
                Some("enum") => AvroType::Enum(Arc::new(
                    o.get("symbols")
                        .and_then(Value::as_array)
                        .ok_or(Missing("an enum needs \"symbols\""))?
                        .iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect(),
                )),
                Some("fixed") => AvroType::Fixed(
                    o.get("size")
                        .and_then(Value::as_u64)
                        .ok_or(Missing("a fixed needs \"size\""))? as usize,
                ),
                Some("array") => AvroType::Array(Box::new(parse_type(
                    o.get("items").ok_or(Missing("an array needs \"items\""))?,
                    named,
                    ns,
                )?)),
                Some("map") => AvroType::Map(Box::new(parse_type(
                    o.get("values").ok_or(Missing("a map needs \"values\""))?,
                    named,
                    ns,
                )?)),
                _ => parse_type(t, named, ns)?,
            };
            if let Some(n) = full {
                named.insert(n, ty.clone());
            }
            ty
        }
        _ => return Err(AvroSchemaError::BadType),
    })
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn long(&mut self) -> Result<i64, AvroDecodeError> {
        let mut v: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self.b.get(self.i).ok_or(AvroDecodeError::TruncatedNumber)?;
            self.i += 1;
            if shift >= 64 {
                return Err(AvroDecodeError::NumberTooLong);
            }
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], AvroDecodeError> {
        let end = self
            .i
            .checked_add(n)
            .ok_or(AvroDecodeError::LengthOverflow)?;
        let s = self
            .b
            .get(self.i..end)
            .ok_or(AvroDecodeError::TruncatedValue)?;
        self.i = end;
        Ok(s)
    }

    fn len(&mut self) -> Result<usize, AvroDecodeError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| AvroDecodeError::NegativeLength(n))
    }
}

/// Writes the value of type `t` read from `r` as JSON.
fn transcode(
    t: &AvroType,
    r: &mut Reader<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    budget: &mut Budget,
) -> Result<(), AvroDecodeError> {
    if depth > 64 {
        return Err(AvroDecodeError::TooDeep);
    }
    match t {
        AvroType::Null => out.extend_from_slice(b"null"),
        AvroType::Boolean => match r.take(1)?[0] {
            0 => out.extend_from_slice(b"false"),
            1 => out.extend_from_slice(b"true"),
            b => return Err(AvroDecodeError::BadBoolean(b)),
        },
        AvroType::Int | AvroType::Long => {
            let _ = write!(out, "{}", r.long()?);
        }
        AvroType::Float => {
            let v = f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")) as f64;
            float(out, v);
        }
        AvroType::Double => {
            let v = f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
            float(out, v);
        }
        AvroType::String => {
            let n = r.len()?;
            let s = std::str::from_utf8(r.take(n)?).map_err(|_| AvroDecodeError::StringNotUtf8)?;
            json_str(out, s);
        }
        AvroType::Bytes => {
            let n = r.len()?;
            json_bytes(out, r.take(n)?);
        }
        AvroType::Fixed(n) => json_bytes(out, r.take(*n)?),
        AvroType::Enum(symbols) => {
            let i = r.long()?;
            let s = usize::try_from(i)
                .ok()
                .and_then(|i| symbols.get(i))
                .ok_or(AvroDecodeError::EnumIndex(i))?;
            json_str(out, s);
        }
        AvroType::Union(branches) => {
            let i = r.long()?;
            let b = usize::try_from(i)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or(AvroDecodeError::UnionBranch(i))?;
            transcode(b, r, out, depth + 1, budget)?;
        }
        AvroType::Array(items) => {
            out.push(b'[');
            let mut first = true;
            let sized = takes_bytes(items);
            blocks(r, budget, sized, |r, budget| {
                if !first {
                    out.push(b',');
                }
                first = false;
                transcode(items, r, out, depth + 1, budget)?;
                budget.check_size(out)
            })?;
            out.push(b']');
        }
        AvroType::Map(values) => {
            out.push(b'{');
            let mut first = true;
            // every entry has a key: at least its length's byte
            blocks(r, budget, true, |r, budget| {
                if !first {
                    out.push(b',');
                }
                first = false;
                let n = r.len()?;
                let k =
                    std::str::from_utf8(r.take(n)?).map_err(|_| AvroDecodeError::MapKeyNotUtf8)?;
                json_str(out, k);
                out.push(b':');
                transcode(values, r, out, depth + 1, budget)?;
                budget.check_size(out)
            })?;
            out.push(b'}');
        }
        AvroType::Record(fields) => {
            out.push(b'{');
            for (i, (name, ft)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, name);
                out.push(b':');
                transcode(ft, r, out, depth + 1, budget)?;
            }
            out.push(b'}');
        }
    }
    budget.check_size(out)
}

/// Reads the blocks of an array or map, calling `item` once per item. A block count is
/// refused when it is over the items the record has left, or (`sized`: every item takes a
/// byte at least) over the bytes left, before any item is read.
fn blocks<'a>(
    r: &mut Reader<'a>,
    budget: &mut Budget,
    sized: bool,
    mut item: impl FnMut(&mut Reader<'a>, &mut Budget) -> Result<(), AvroDecodeError>,
) -> Result<(), AvroDecodeError> {
    loop {
        let count = r.long()?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            r.long()?; // the block's size in bytes
        }
        let n = count.unsigned_abs();
        if n > budget.items_left {
            return Err(AvroDecodeError::TooManyItems {
                items: n,
                left: budget.items_left,
            });
        }
        if !sized && n > budget.empty_items_left {
            return Err(AvroDecodeError::TooManyEmptyItems {
                items: n,
                left: budget.empty_items_left,
            });
        }
        if sized && n > (r.b.len() - r.i) as u64 {
            return Err(AvroDecodeError::BlockOverBytes {
                items: n,
                left: r.b.len() - r.i,
            });
        }
        budget.items_left -= n;
        if !sized {
            budget.empty_items_left -= n;
        }
        for _ in 0..n {
            item(r, budget)?;
        }
    }
}

fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v:?}");
    } else if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v > 0.0 {
        out.extend_from_slice(b"Infinity");
    } else {
        out.extend_from_slice(b"-Infinity");
    }
}

/// Transcodes one record: plain Avro binary, or the Confluent wire format (a zero byte, a
/// 4-byte schema id, then the binary), told apart by which reading decodes exactly. A record
/// that starts with a zero byte may read both ways (a plain record whose first field is 0,
/// `false`, or a union's `null`): it is then refused (`invalid_avro`) rather than guessed, as
/// either reading may be a record of other values. (Decided by the record alone, so that a
/// restore or another parallelism decodes it the same.)
pub fn record_to_json(
    schema: &AvroType,
    bytes: &[u8],
    out: &mut Vec<u8>,
    limits: &AvroLimits,
) -> Result<(), AvroDecodeError> {
    if bytes.len() < 5 || bytes[0] != 0 {
        return body_to_json(schema, bytes, out, limits);
    }
    let start = out.len();
    // (a reading that fails leaves `out` as it was)
    if body_to_json(schema, &bytes[5..], out, limits).is_err() {
        return body_to_json(schema, bytes, out, limits);
    }
    if body_to_json(schema, bytes, out, limits).is_ok() {
        out.truncate(start);
        return Err(AvroDecodeError::AmbiguousFraming);
    }
    Ok(())
}

/// Transcodes one Avro binary body, which must be read exactly; on an error `out` is as
/// before.
fn body_to_json(
    schema: &AvroType,
    bytes: &[u8],
    out: &mut Vec<u8>,
    limits: &AvroLimits,
) -> Result<(), AvroDecodeError> {
    let start = out.len();
    let mut r = Reader { b: bytes, i: 0 };
    let mut budget = Budget::new(limits, out);
    let result = transcode(schema, &mut r, out, 0, &mut budget).and_then(|_| {
        if r.i == bytes.len() {
            Ok(())
        } else {
            Err(AvroDecodeError::BytesLeft(bytes.len() - r.i))
        }
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Adds to the record transcoded at `out[start..]` (a JSON object, of writer schema
/// `writer`) the reader's `defaults` of the fields the writer does not have.
fn add_defaults(out: &mut Vec<u8>, start: usize, writer: &AvroType, defaults: &[(String, Value)]) {
    let AvroType::Record(fields) = writer else {
        return;
    };
    let mut empty = out.len() == start + 2;
    for (name, default) in defaults {
        if fields.iter().any(|(n, _)| n == name) || out.last() != Some(&b'}') {
            continue;
        }
        out.pop();
        if !empty {
            out.push(b',');
        }
        empty = false;
        json_str(out, name);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, default);
        out.push(b'}');
    }
}

/// Decodes Avro messages with a writer schema, through the JSON decoder.
pub struct AvroDecoder {
    schema: AvroType,
    json: JsonDecoder,
    registry: Option<SchemaRegistry>,
    limits: AvroLimits,
    /// The source schema's fields with a default, and the default (JSON, as in the `.avsc`).
    defaults: Vec<(String, Value)>,
}

impl AvroDecoder {
    /// A decoder of records written with `schema`, checked and projected by `json`.
    pub fn new(schema: AvroType, json: JsonDecoder) -> Self {
        AvroDecoder {
            schema,
            json,
            registry: None,
            limits: AvroLimits::default(),
            defaults: Vec::new(),
        }
    }

    /// The defaults of the source schema's (`avsc`, the reader's) top-level fields: a record
    /// whose writer schema (from the registry) lacks such a field gets its default, as Avro
    /// schema resolution does, instead of being bad for a missing field.
    pub fn with_reader_defaults(mut self, avsc: &str) -> Result<Self, AvroSchemaError> {
        let v: Value = serde_json::from_str(avsc).map_err(AvroSchemaError::NotJson)?;
        self.defaults = v
            .get("fields")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| {
                Some((
                    f.get("name")?.as_str()?.to_string(),
                    f.get("default")?.clone(),
                ))
            })
            .collect();
        Ok(self)
    }

    /// Bounds on what one record may decode to (default [`AvroLimits::default`]).
    pub fn with_limits(mut self, limits: AvroLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Records in the Confluent wire format whose writer schema is looked up by id in a
    /// registry. Fields are then matched by name: added fields are ignored, and a missing
    /// required field makes the record bad.
    pub fn with_registry(mut self, registry: SchemaRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    fn to_json(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), AvroDecodeError> {
        let Some(registry) = &self.registry else {
            return record_to_json(&self.schema, bytes, out, &self.limits);
        };
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(AvroDecodeError::NotWireFormat);
        }
        let id = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        let writer = registry.schema(id).map_err(AvroDecodeError::Registry)?;
        let start = out.len();
        body_to_json(&writer, &bytes[5..], out, &self.limits)?;
        add_defaults(out, start, &writer, &self.defaults);
        Ok(())
    }

    /// Decodes messages of `partition`.
    pub fn decode_messages(&self, messages: &Messages, partition: i32) -> DecodedLines {
        // JSON records, and the keys and headers of the records that converted (message
        // columns read them), in one new buffer.
        let mut buf: Vec<u8> = Vec::with_capacity(messages.bytes.len() * 2);
        let mut converted = Messages {
            bytes: SharedBytes::default(),
            payloads: Vec::with_capacity(messages.len()),
            offsets: Vec::with_capacity(messages.len()),
            keys: Vec::with_capacity(messages.len()),
            timestamps: Vec::with_capacity(messages.len()),
            headers: Vec::with_capacity(messages.len()),
            header_fields: Vec::new(),
            lane: messages.lane,
        };
        let copy = |buf: &mut Vec<u8>, r: (u32, u32)| -> (u32, u32) {
            let start = buf.len() as u32;
            buf.extend_from_slice(messages.slice(r));
            (start, buf.len() as u32)
        };
        let mut bad = Vec::new();
        for i in 0..messages.len() {
            let payload = messages.slice(messages.payloads[i]);
            let start = buf.len();
            // positions in the batch's buffer are u32: a record that would push it past them
            // is refused rather than wrapped (only records near the size limit get there)
            let room = (u32::MAX as usize).saturating_sub(start);
            let most = (self.limits.max_record_bytes).saturating_add(messages.bytes.len());
            let result = if room < most {
                Err(AvroDecodeError::BatchFull)
            } else {
                self.to_json(payload, &mut buf)
            };
            match result {
                Ok(()) => {
                    converted.payloads.push((start as u32, buf.len() as u32));
                    converted.offsets.push(messages.offsets[i]);
                    converted.timestamps.push(messages.timestamps[i]);
                    let key = messages.keys[i].map(|k| copy(&mut buf, k));
                    converted.keys.push(key);
                    let (first, last) = messages.headers[i];
                    let from = converted.header_fields.len() as u32;
                    for &(name, value) in &messages.header_fields[first as usize..last as usize] {
                        let name = copy(&mut buf, name);
                        let value = value.map(|v| copy(&mut buf, v));
                        converted.header_fields.push((name, value));
                    }
                    converted
                        .headers
                        .push((from, converted.header_fields.len() as u32));
                }
                Err(e) => bad.push(BadLine {
                    offset: messages.offsets[i],
                    raw: payload.to_vec(),
                    error: ErrorInfo::new(
                        "invalid_avro",
                        format!("not an Avro record of the source's schema: {e}"),
                    ),
                }),
            }
        }
        converted.bytes = SharedBytes::from(buf);
        let mut decoded = self.json.decode_messages(&converted, partition);
        // Dead letters and late rows keep the original Avro bytes.
        let original =
            |offset: u64| -> Option<usize> { messages.offsets.binary_search(&offset).ok() };
        for b in decoded.bad.iter_mut() {
            if let Some(i) = original(b.offset) {
                b.raw = messages.slice(messages.payloads[i]).to_vec();
            }
        }
        if let Some(ev) = decoded.events.as_mut() {
            let indexes: Vec<Option<usize>> = ev.offsets.iter().map(|&o| original(o)).collect();
            let with_message: Vec<u32> = indexes.iter().map(|i| i.unwrap_or(0) as u32).collect();
            ev.raw = Some(RawRows {
                bytes: messages.bytes.clone(),
                spans: indexes
                    .iter()
                    .map(|i| i.map_or((0, 0), |i| messages.payloads[i]))
                    .collect(),
                headers: RowHeaders::of_messages(messages, &with_message),
            });
        }
        decoded.records += bad.len() as u64;
        decoded.bad.extend(bad);
        decoded
    }
}

impl Decode for AvroDecoder {
    fn decode(&self, chunk: &Chunk, lines: &SharedBytes) -> Decoded {
        // Avro records have no separators: only messages carry them (planning refuses Avro
        // for other sources); lines that reach here are bad, never guessed at.
        let bad: Vec<BadLine> = lines
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, line)| BadLine {
                offset: chunk.first_offset + i as u64,
                raw: line.to_vec(),
                error: ErrorInfo::new(
                    "invalid_avro",
                    "Avro records are read from Kafka messages, not lines",
                ),
            })
            .collect();
        let records = bad.len() as u64;
        into_decoded(
            chunk,
            DecodedLines {
                events: None,
                bad,
                records,
            },
        )
    }

    fn decode_messages(&self, chunk: &Chunk, messages: &Messages) -> Decoded {
        into_decoded(
            chunk,
            self.decode_messages(messages, chunk.partition.number as i32),
        )
    }
}

#[cfg(test)]
mod tests;
