//! Why an `.avsc` schema cannot be read ([`AvroSchemaError`]) and why one Avro record does
//! not decode ([`AvroDecodeError`]).
//!
//! Both read as the whole reason (callers such as the registry's cache put it in a message
//! with `{e}`); an error underneath (the JSON parser's, a field's) is also kept as the
//! source, which the chain printer does not repeat.

/// Why an `.avsc` schema (a source's, or a writer schema from the registry) is refused.
#[derive(Debug, thiserror::Error)]
pub enum AvroSchemaError {
    /// The text is not JSON.
    #[error("not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A type name that is neither primitive nor defined before.
    #[error("unknown Avro type `{0}`")]
    UnknownType(String),
    /// A complex type or field lacks an attribute: says which (`a record needs "fields"`).
    #[error("{0}")]
    Missing(&'static str),
    /// A JSON value that is no Avro type.
    #[error("bad Avro type")]
    BadType,
    /// A source schema that is not a record.
    #[error("the schema must be an Avro record (\"type\": \"record\")")]
    NotRecord,
    /// A field of a source schema without a `"type"`.
    #[error("field `{0}` has no \"type\"")]
    FieldWithoutType(String),
    /// Two fields of one name (each record's fields are read by name).
    #[error("field `{0}` is declared twice")]
    DuplicateField(String),
    /// A union a source field cannot be read as.
    #[error("only unions of null and one type are supported")]
    Union,
    /// The type of field `name` is refused.
    #[error("field `{name}`: {cause}")]
    Field {
        name: String,
        #[source]
        cause: Box<AvroSchemaError>,
    },
}

impl AvroSchemaError {
    /// `self` as the error of field `name`.
    pub(crate) fn in_field(self, name: &str) -> Self {
        AvroSchemaError::Field {
            name: name.to_string(),
            cause: Box::new(self),
        }
    }
}

/// Why one Avro record does not decode: the dead-letter reason's text (after `not an Avro
/// record of the source's schema: `). Built only on failure: decoding a good record
/// allocates nothing for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroDecodeError {
    #[error("truncated number")]
    TruncatedNumber,
    #[error("number too long")]
    NumberTooLong,
    #[error("length overflow")]
    LengthOverflow,
    #[error("truncated value")]
    TruncatedValue,
    #[error("negative length {0}")]
    NegativeLength(i64),
    #[error("nested too deep")]
    TooDeep,
    #[error("bad boolean byte {0}")]
    BadBoolean(u8),
    #[error("a string is not valid UTF-8")]
    StringNotUtf8,
    #[error("a map key is not valid UTF-8")]
    MapKeyNotUtf8,
    #[error("enum index {0} out of range")]
    EnumIndex(i64),
    #[error("union branch {0} out of range")]
    UnionBranch(i64),
    /// A block count over the items the record may still have (see `AvroLimits`).
    #[error("a block of {items} items: over the {left} items a record may have left")]
    TooManyItems { items: u64, left: u64 },
    /// A block count over the items that take no bytes (`null`s, empty records) the record
    /// may still have (see `AvroLimits::max_empty_items`).
    #[error(
        "a block of {items} items that take no bytes: over the {left} such items a record \
         may have left"
    )]
    TooManyEmptyItems { items: u64, left: u64 },
    /// A block count over the bytes left, for items that take a byte at least.
    #[error("a block of {items} items but only {left} bytes left")]
    BlockOverBytes { items: u64, left: usize },
    /// The record's JSON would be over `AvroLimits::max_record_bytes`.
    #[error("the record decodes to more than {0} bytes (the limit)")]
    TooLarge(usize),
    #[error("{0} bytes left after the record")]
    BytesLeft(usize),
    /// Without a registry: the record reads both as plain Avro and in the wire format.
    #[error(
        "the record reads both as plain Avro and in the Confluent wire format (a zero byte \
         and a schema id first), as records of other values: it is not guessed (a \
         `schema_registry` reads the wire format alone)"
    )]
    AmbiguousFraming,
    #[error("not in the Confluent wire format (magic byte 0, schema id)")]
    NotWireFormat,
    /// The batch's positions are `u32`: a record that would pass them is refused.
    #[error("the batch's decoded records reach 4 GiB")]
    BatchFull,
    /// The registry refused the record's schema id (or its schema does not parse).
    #[error("{0}")]
    Registry(String),
}
