//! Source schemas: the built-in event schemas and Avro `.avsc` record schemas.

use arrow::datatypes::DataType;
use serde_json::Value;

use crate::avro::{AvroSchemaError, AvroType};

/// The JSON type a field must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A JSON string.
    Str,
    /// A JSON integer (no fraction or exponent).
    Int,
    /// A JSON number.
    Float,
    /// `true` or `false`.
    Bool,
    /// A JSON object (kept as its JSON text when read).
    Object,
    /// A JSON array (kept as its JSON text when read).
    Array,
}

impl FieldKind {
    /// The Arrow type a decoded column of this kind has.
    pub fn arrow_type(self) -> DataType {
        match self {
            FieldKind::Str | FieldKind::Object | FieldKind::Array => DataType::Utf8,
            FieldKind::Int => DataType::Int64,
            FieldKind::Float => DataType::Float64,
            FieldKind::Bool => DataType::Boolean,
        }
    }

    /// A name for messages.
    pub fn describe(self) -> &'static str {
        match self {
            FieldKind::Str => "a string",
            FieldKind::Int => "an integer",
            FieldKind::Float => "a number",
            FieldKind::Bool => "a boolean",
            FieldKind::Object => "an object",
            FieldKind::Array => "an array",
        }
    }
}

/// One field of a source schema.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaField {
    pub name: String,
    pub kind: FieldKind,
    /// Whether the field may be missing or null.
    pub nullable: bool,
}

/// The fields every record of a source must have.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSchema {
    pub name: String,
    pub fields: Vec<SchemaField>,
    /// The `.avsc` text it was read from (the writer schema of Avro records).
    pub avsc: String,
}

/// The names of the built-in schemas.
pub const BUILTIN_SCHEMAS: [&str; 2] = ["data-ingestion", "service-health"];

const DATA_INGESTION_AVSC: &str = r#"{"type":"record","name":"DataIngestionEvent","fields":[
 {"name":"eventId","type":"string"},{"name":"timestamp","type":"long"},
 {"name":"source","type":"string"},{"name":"datasetName","type":"string"},
 {"name":"recordCount","type":"long"},{"name":"sizeBytes","type":"long"},
 {"name":"format","type":"string"},{"name":"location","type":"string"},
 {"name":"status","type":{"type":"enum","name":"Status","symbols":["SUCCESS","FAILURE","PARTIAL"]}},
 {"name":"metadata","type":["null",{"type":"map","values":"string"}]}]}"#;

const SERVICE_HEALTH_AVSC: &str = r#"{"type":"record","name":"ServiceHealthEvent","fields":[
 {"name":"eventId","type":"string"},{"name":"timestamp","type":"long"},
 {"name":"serviceName","type":"string"},{"name":"namespace","type":"string"},
 {"name":"healthStatus","type":{"type":"enum","name":"HealthStatus","symbols":["HEALTHY","DEGRADED","UNHEALTHY","UNKNOWN"]}},
 {"name":"latencyMs","type":"long"},{"name":"errorRate","type":"double"},
 {"name":"message","type":["null","string"]}]}"#;

impl SourceSchema {
    /// A built-in schema by name (`data-ingestion`, `service-health`). In JSON, `metadata` of
    /// data-ingestion events may be null or absent, as the platform's producers send it.
    pub fn builtin(name: &str) -> Option<SourceSchema> {
        let text = match name {
            "data-ingestion" => DATA_INGESTION_AVSC,
            "service-health" => SERVICE_HEALTH_AVSC,
            _ => return None,
        };
        let mut s = SourceSchema::from_avsc(text).ok()?;
        s.name = name.to_string();
        Some(s)
    }

    /// Reads an Avro record schema (`.avsc` JSON text).
    pub fn from_avsc(text: &str) -> Result<SourceSchema, AvroSchemaError> {
        let v: Value = serde_json::from_str(text).map_err(AvroSchemaError::NotJson)?;
        if v.get("type").and_then(Value::as_str) != Some("record") {
            return Err(AvroSchemaError::NotRecord);
        }
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("record")
            .to_string();
        let fields = v
            .get("fields")
            .and_then(Value::as_array)
            .ok_or(AvroSchemaError::Missing(
                "the record has no \"fields\" array",
            ))?;
        let mut names = std::collections::HashSet::new();
        for f in fields {
            let fname = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or(AvroSchemaError::Missing("a field has no \"name\""))?;
            if !names.insert(fname) {
                return Err(AvroSchemaError::DuplicateField(fname.to_string()));
            }
            f.get("type")
                .ok_or_else(|| AvroSchemaError::FieldWithoutType(fname.to_string()))?;
        }
        // The types, named ones resolved, by the same parser Avro records are decoded with.
        let AvroType::Record(types) = AvroType::parse(text)? else {
            return Err(AvroSchemaError::NotRecord);
        };
        let mut out = Vec::new();
        for (f, (fname, ty)) in fields.iter().zip(types.iter()) {
            let fname = fname.clone();
            let (kind, nullable) = field_kind(ty).map_err(|e| e.in_field(&fname))?;
            let nullable = nullable || f.get("default").is_some_and(Value::is_null);
            out.push(SchemaField {
                name: fname,
                kind,
                nullable,
            });
        }
        Ok(SourceSchema {
            name,
            fields: out,
            avsc: text.to_string(),
        })
    }

    /// The index of a field by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The field names, for messages.
    pub fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }
}

/// The kind of a field of Avro type `ty`, and whether it may be null.
fn field_kind(ty: &AvroType) -> Result<(FieldKind, bool), AvroSchemaError> {
    let kind = |t: &AvroType| -> Result<FieldKind, AvroSchemaError> {
        Ok(match t {
            AvroType::String | AvroType::Bytes | AvroType::Enum(_) | AvroType::Fixed(_) => {
                FieldKind::Str
            }
            AvroType::Int | AvroType::Long => FieldKind::Int,
            AvroType::Float | AvroType::Double => FieldKind::Float,
            AvroType::Boolean => FieldKind::Bool,
            AvroType::Map(_) | AvroType::Record(_) => FieldKind::Object,
            AvroType::Array(_) => FieldKind::Array,
            AvroType::Null | AvroType::Union(_) => return Err(AvroSchemaError::Union),
        })
    };
    match ty {
        AvroType::Union(branches) => {
            let non_null: Vec<&AvroType> = branches
                .iter()
                .filter(|b| !matches!(b, AvroType::Null))
                .collect();
            if non_null.len() != 1 {
                return Err(AvroSchemaError::Union);
            }
            Ok((kind(non_null[0])?, branches.len() > 1))
        }
        t => Ok((kind(t)?, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_follow_the_shared_schemas() {
        let s = SourceSchema::builtin("data-ingestion").unwrap();
        assert_eq!(s.fields.len(), 10);
        assert_eq!(
            s.fields[1],
            SchemaField {
                name: "timestamp".into(),
                kind: FieldKind::Int,
                nullable: false
            }
        );
        assert_eq!(s.fields[8].kind, FieldKind::Str);
        assert!(s.fields[9].nullable);
        let h = SourceSchema::builtin("service-health").unwrap();
        assert_eq!(h.fields[6].kind, FieldKind::Float);
        assert!(h.fields[7].nullable);
        assert!(SourceSchema::builtin("nope").is_none());
    }

    #[test]
    fn named_types_can_be_used_again() {
        let s = SourceSchema::from_avsc(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"enum","name":"E","symbols":["X"]}},
                {"name":"b","type":["null","E"]}]}"#,
        )
        .unwrap();
        assert_eq!(s.fields[1].kind, FieldKind::Str);
        assert!(s.fields[1].nullable && !s.fields[0].nullable);
    }

    #[test]
    fn avsc_errors_are_explained() {
        let e = SourceSchema::from_avsc("{").unwrap_err();
        assert!(matches!(e, AvroSchemaError::NotJson(_)), "{e}");
        assert!(e.to_string().starts_with("not valid JSON: "), "{e}");
        let e = SourceSchema::from_avsc(r#"{"type":"enum"}"#).unwrap_err();
        assert!(e.to_string().contains("record"), "{e}");
        let e = SourceSchema::from_avsc(
            r#"{"type":"record","fields":[{"name":"a","type":"decimal"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "field `a`: unknown Avro type `decimal`");
        // the cause is a value too, and the chain prints it once
        assert!(matches!(
            &e,
            AvroSchemaError::Field { name, cause }
                if name == "a" && matches!(&**cause, AvroSchemaError::UnknownType(t) if t == "decimal")
        ));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(weir_engine::error::chain(&e).to_string(), e.to_string());
        // two fields of one name: every record would be read wrongly (and dead-lettered)
        let e = SourceSchema::from_avsc(
            r#"{"type":"record","fields":[{"name":"a","type":"long"},{"name":"a","type":"string"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "field `a` is declared twice");
    }
}
