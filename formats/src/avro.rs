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
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"string"},{"name":"n","type":"long"},
        {"name":"s","type":{"type":"enum","name":"S","symbols":["A","B"]}},
        {"name":"m","type":["null",{"type":"map","values":"string"}]},
        {"name":"d","type":"double"},{"name":"ok","type":"boolean"},
        {"name":"xs","type":{"type":"array","items":"int"}}]}"#;

    fn zigzag(v: i64, out: &mut Vec<u8>) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            if z < 0x80 {
                out.push(z as u8);
                return;
            }
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
    }

    fn record() -> Vec<u8> {
        let mut b = Vec::new();
        zigzag(3, &mut b);
        b.extend_from_slice("é\"1".as_bytes()[..3].as_ref());
        zigzag(-1234567890123, &mut b);
        zigzag(1, &mut b); // enum B
        zigzag(1, &mut b); // union branch: map
        zigzag(1, &mut b); // one entry
        zigzag(1, &mut b);
        b.push(b'k');
        zigzag(1, &mut b);
        b.push(b'v');
        zigzag(0, &mut b); // end of map
        b.extend_from_slice(&2.5f64.to_le_bytes());
        b.push(1);
        zigzag(-2, &mut b); // a block of 2 items, with its byte size
        zigzag(2, &mut b);
        zigzag(7, &mut b);
        zigzag(-7, &mut b);
        zigzag(0, &mut b);
        b
    }

    #[test]
    fn transcodes_plain_and_confluent_records() {
        let schema = AvroType::parse(SCHEMA).unwrap();
        let mut out = Vec::new();
        record_to_json(&schema, &record(), &mut out, &AvroLimits::default()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "é\"");
        assert_eq!(v["n"], -1234567890123i64);
        assert_eq!(v["s"], "B");
        assert_eq!(v["m"]["k"], "v");
        assert_eq!(v["d"], 2.5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["xs"], serde_json::json!([7, -7]));
        let mut framed = vec![0, 0, 0, 0, 42];
        framed.extend(record());
        let mut out2 = Vec::new();
        record_to_json(&schema, &framed, &mut out2, &AvroLimits::default()).unwrap();
        assert_eq!(out, out2);
    }

    #[test]
    fn decoded_messages_keep_keys_headers_and_original_bytes() {
        use crate::message_columns::MessageColumn;
        use crate::schema::SourceSchema;
        use arrow::array::AsArray;
        let schema = Arc::new(SourceSchema::from_avsc(SCHEMA).unwrap());
        let json = JsonDecoder::new(schema, &["id".to_string()], "n")
            .unwrap()
            .with_message_columns(vec![MessageColumn::Key, MessageColumn::Headers]);
        let decoder = AvroDecoder::new(AvroType::parse(SCHEMA).unwrap(), json);
        let good = record();
        let mut bytes = b"not avro".to_vec();
        let bad_end = bytes.len() as u32;
        bytes.extend_from_slice(&good);
        let good_end = bytes.len() as u32;
        bytes.extend_from_slice(b"k1hv");
        let messages = Messages {
            bytes: SharedBytes::from(bytes),
            payloads: vec![(0, bad_end), (bad_end, good_end)],
            offsets: vec![7, 8],
            keys: vec![None, Some((good_end, good_end + 2))],
            timestamps: vec![None, Some(5)],
            headers: vec![(0, 0), (0, 1)],
            header_fields: vec![(
                (good_end + 2, good_end + 3),
                Some((good_end + 3, good_end + 4)),
            )],
            lane: None,
        };
        let d = decoder.decode_messages(&messages, 0);
        assert_eq!(d.records, 2);
        assert_eq!(d.bad.len(), 1);
        assert_eq!(
            (d.bad[0].offset, d.bad[0].raw.as_slice()),
            (7, &b"not avro"[..])
        );
        assert_eq!(d.bad[0].error.code, "invalid_avro");
        let ev = d.events.unwrap();
        assert_eq!(ev.offsets, vec![8]);
        assert_eq!(ev.batch.column(1).as_string::<i32>().value(0), "k1");
        assert_eq!(ev.batch.column(2).as_map().value_length(0), 1);
        assert_eq!(ev.raw_row(0).unwrap(), good);
    }

    fn to_json(schema: &AvroType, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), AvroDecodeError> {
        record_to_json(schema, bytes, out, &AvroLimits::default())
    }

    /// The issue's bomb: `{"type":"array","items":"null"}` and a block count of 2^62 in a
    /// few bytes; and i64::MIN as a block count. Refused at once, without growing memory.
    #[test]
    fn block_counts_are_bounded_by_items_and_bytes_left() {
        let nulls = AvroType::parse(r#"{"type":"array","items":"null"}"#).unwrap();
        // this thread's time on a CPU, not the wall clock: a loaded machine (CI running tests
        // in parallel) once held the thread off its CPU for a second
        let on_cpu = || {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            let ns = stat.split_whitespace().next().unwrap().parse().unwrap();
            std::time::Duration::from_nanos(ns)
        };
        let started = on_cpu();
        for count in [1i64 << 62, i64::MIN, i64::MAX, 1_000_001] {
            let mut b = Vec::new();
            zigzag(count, &mut b);
            if count < 0 {
                zigzag(0, &mut b);
            }
            zigzag(0, &mut b);
            let mut out = Vec::new();
            let e = to_json(&nulls, &b, &mut out).unwrap_err();
            assert!(matches!(e, AvroDecodeError::TooManyItems { .. }), "{e}");
            assert!(e.to_string().contains("items"), "{e}");
            assert!(out.is_empty());
        }
        let used = on_cpu() - started;
        assert!(
            used < std::time::Duration::from_secs(1),
            "refusing took {used:?} of CPU"
        );
        // within the limit: decoded
        let mut b = Vec::new();
        zigzag(3, &mut b);
        zigzag(0, &mut b);
        let mut out = Vec::new();
        to_json(&nulls, &b, &mut out).unwrap();
        assert_eq!(out, b"[null,null,null]");
        // items that take bytes: a count over the bytes left is refused before reading
        let longs = AvroType::parse(r#"{"type":"array","items":"long"}"#).unwrap();
        let mut b = Vec::new();
        zigzag(500_000, &mut b);
        let e = to_json(&longs, &b, &mut Vec::new()).unwrap_err();
        assert_eq!(
            e,
            AvroDecodeError::BlockOverBytes {
                items: 500_000,
                left: 0
            }
        );
        assert!(e.to_string().contains("bytes left"), "{e}");
        // the output cap: nested arrays of nulls within the item count, over the bytes
        let small = AvroLimits {
            max_record_bytes: 100,
            max_items: 1_000_000,
            max_empty_items: 10_000,
        };
        let mut b = Vec::new();
        zigzag(1000, &mut b);
        zigzag(0, &mut b);
        let e = record_to_json(&nulls, &b, &mut Vec::new(), &small).unwrap_err();
        assert_eq!(e, AvroDecodeError::TooLarge(100));
        assert!(e.to_string().contains("more than 100 bytes"), "{e}");
    }

    /// Items that take no bytes are bounded apart from the others: four bytes of input cannot
    /// decode to megabytes of JSON (in every message of a chunk), while items that take
    /// bytes are bounded by the input itself.
    #[test]
    fn items_that_take_no_bytes_have_a_bound_of_their_own() {
        let nulls = AvroType::parse(r#"{"type":"array","items":"null"}"#).unwrap();
        let limits = AvroLimits::default();
        let block = |n: i64| {
            let mut b = Vec::new();
            zigzag(n, &mut b);
            zigzag(0, &mut b);
            b
        };
        let mut out = Vec::new();
        let e = record_to_json(&nulls, &block(1_000_000), &mut out, &limits).unwrap_err();
        assert_eq!(
            e,
            AvroDecodeError::TooManyEmptyItems {
                items: 1_000_000,
                left: 10_000
            }
        );
        assert!(out.is_empty());
        // in several blocks and nesting levels together
        let nested =
            AvroType::parse(r#"{"type":"array","items":{"type":"array","items":"null"}}"#).unwrap();
        let mut b = Vec::new();
        zigzag(3, &mut b);
        for _ in 0..3 {
            zigzag(4_000, &mut b);
            zigzag(0, &mut b);
        }
        zigzag(0, &mut b);
        let e = record_to_json(&nested, &b, &mut out, &limits).unwrap_err();
        assert!(
            matches!(e, AvroDecodeError::TooManyEmptyItems { left: 2_000, .. }),
            "{e}"
        );
        // within the bound: decoded
        record_to_json(&nulls, &block(10_000), &mut out, &limits).unwrap();
        let v: Vec<Value> = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.len(), 10_000);
    }

    /// Named types are told apart by their full names: two enums of one short name in two
    /// namespaces keep their own symbols, whichever was defined last.
    #[test]
    fn named_types_are_resolved_by_full_name() {
        let schema = AvroType::parse(
            r#"{"type":"record","name":"R","namespace":"com.x","fields":[
                {"name":"a","type":{"type":"enum","name":"Status","symbols":["OK","FAIL"]}},
                {"name":"b","type":{"type":"enum","name":"Status","namespace":"com.y",
                  "symbols":["ON","OFF","UNKNOWN"]}},
                {"name":"c","type":"Status"},
                {"name":"d","type":"com.y.Status"},
                {"name":"e","type":{"type":"array","name":"Status","items":"int"}}
            ]}"#,
        )
        .unwrap();
        // a, b, c, d: enum index 1 each; e: an empty array
        let mut b = Vec::new();
        for _ in 0..4 {
            zigzag(1, &mut b);
        }
        zigzag(0, &mut b);
        let mut out = Vec::new();
        record_to_json(&schema, &b, &mut out, &AvroLimits::default()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], "FAIL");
        assert_eq!(v["b"], "OFF");
        // `Status` inside com.x is com.x.Status, not the one defined last
        assert_eq!(v["c"], "FAIL");
        assert_eq!(v["d"], "OFF");
        assert_eq!(v["e"], serde_json::json!([]));
        // a name given to an array names nothing
        let e = AvroType::parse(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"array","name":"X","items":"int"}},
                {"name":"b","type":"X"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains('X'), "{e}");
    }

    /// A record that reads both as plain Avro and in the wire format is refused, not read
    /// as the wire format's other values; one that reads one way only is read that way.
    #[test]
    fn a_record_that_reads_both_plain_and_framed_is_refused() {
        let schema = AvroType::parse(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
        )
        .unwrap();
        // plain: a = 0, b = "abc0\nhello" (length 10: byte 0x14); bytes 5.. read as a = 24
        // (0x30), b = "hello"
        let mut plain = vec![0x00, 0x14];
        plain.extend_from_slice(b"abc0\nhello");
        let mut out = Vec::new();
        let e = record_to_json(&schema, &plain, &mut out, &AvroLimits::default()).unwrap_err();
        assert_eq!(e, AvroDecodeError::AmbiguousFraming);
        assert!(out.is_empty());
        // a plain record starting with a zero byte that reads one way only
        let mut plain = vec![0x00, 0x0a];
        plain.extend_from_slice(b"hello");
        record_to_json(&schema, &plain, &mut out, &AvroLimits::default()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v["a"].as_i64(), v["b"].as_str()), (Some(0), Some("hello")));
    }

    /// Records whose registry cannot be reached wait for it: none is bad (dead-lettered),
    /// and once it answers they decode.
    #[test]
    fn records_wait_for_an_unreachable_registry_and_none_is_bad() {
        use crate::schema::SourceSchema;
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let schema = Arc::new(SourceSchema::from_avsc(SCHEMA).unwrap());
        let json = JsonDecoder::new(schema, &["id".to_string()], "n").unwrap();
        let registry = SchemaRegistry::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let waiting = registry.waiting();
        let decoder =
            AvroDecoder::new(AvroType::parse(SCHEMA).unwrap(), json).with_registry(registry);
        let mut bytes = vec![0, 0, 0, 0, 1];
        bytes.extend(record());
        let end = bytes.len() as u32;
        let messages = Messages {
            bytes: SharedBytes::from(bytes),
            payloads: vec![(0, end)],
            offsets: vec![3],
            keys: vec![None],
            timestamps: vec![None],
            headers: vec![(0, 0)],
            header_fields: vec![],
            lane: None,
        };
        let decoding = std::thread::spawn(move || decoder.decode_messages(&messages, 0));
        let started = std::time::Instant::now();
        while waiting.lock().unwrap().is_none() {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!decoding.is_finished());
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            let body = serde_json::json!({ "schema": SCHEMA }).to_string();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body.as_bytes()).unwrap();
        });
        let d = decoding.join().unwrap();
        assert!(d.bad.is_empty(), "{:?}", d.bad.first().map(|b| &b.error));
        assert_eq!(d.events.unwrap().offsets, vec![3]);
    }

    /// A writer schema without a field of the reader's that has a default: the default.
    #[test]
    fn missing_writer_fields_get_the_readers_defaults() {
        let writer = AvroType::parse(
            r#"{"type":"record","name":"W","fields":[{"name":"id","type":"string"}]}"#,
        )
        .unwrap();
        let defaults = vec![
            ("id".to_string(), serde_json::json!("never")),
            ("n".to_string(), serde_json::json!(5)),
            ("tag".to_string(), Value::Null),
        ];
        let mut b = Vec::new();
        zigzag(1, &mut b);
        b.push(b'x');
        let mut out = b"[".to_vec();
        let start = out.len();
        to_json(&writer, &b, &mut out).unwrap();
        add_defaults(&mut out, start, &writer, &defaults);
        let v: Value = serde_json::from_slice(&out[start..]).unwrap();
        assert_eq!(v, serde_json::json!({"id": "x", "n": 5, "tag": null}));
        let empty = AvroType::parse(r#"{"type":"record","name":"E","fields":[]}"#).unwrap();
        let mut out = Vec::new();
        to_json(&empty, &[], &mut out).unwrap();
        add_defaults(&mut out, 0, &empty, &defaults[1..]);
        assert_eq!(out, br#"{"n":5,"tag":null}"#);
    }

    /// `bytes` and `fixed` decode losslessly, as the Avro JSON encoding writes them (code
    /// points U+0000 to U+00FF); a string that is not UTF-8 is refused.
    #[test]
    fn bytes_are_kept_as_the_avro_json_encoding() {
        let t = AvroType::parse(
            r#"{"type":"record","name":"B","fields":[{"name":"b","type":"bytes"},{"name":"f","type":{"type":"fixed","name":"F","size":2}}]}"#,
        )
        .unwrap();
        let mut b = Vec::new();
        zigzag(3, &mut b);
        b.extend_from_slice(&[0xff, 0x00, b'a']);
        b.extend_from_slice(&[0xc3, 0x28]);
        let mut out = Vec::new();
        to_json(&t, &b, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let back: Vec<u8> = v["b"].as_str().unwrap().chars().map(|c| c as u8).collect();
        assert_eq!(back, vec![0xff, 0x00, b'a']);
        let back: Vec<u8> = v["f"].as_str().unwrap().chars().map(|c| c as u8).collect();
        assert_eq!(back, vec![0xc3, 0x28]);
        let s = AvroType::parse(r#""string""#).unwrap();
        let mut b = Vec::new();
        zigzag(2, &mut b);
        b.extend_from_slice(&[0xc3, 0x28]);
        assert!(to_json(&s, &b, &mut Vec::new()).is_err());
    }

    #[test]
    fn bad_records_are_errors_never_panics() {
        let schema = AvroType::parse(SCHEMA).unwrap();
        let good = record();
        let mut out = Vec::new();
        for cut in 0..good.len() {
            assert!(to_json(&schema, &good[..cut], &mut out).is_err(), "{cut}");
            assert!(out.is_empty());
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(to_json(&schema, &extra, &mut out).is_err());
        assert!(to_json(&schema, br#"{"id":"json, not avro"}"#, &mut out).is_err());
        // every single-byte mutation is decoded or refused, never a panic
        for i in 0..good.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = good.clone();
                m[i] = b;
                let _ = to_json(&schema, &m, &mut Vec::new());
            }
        }
    }
}
