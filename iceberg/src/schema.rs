//! Output rows as Iceberg rows: the table schema made from an output's Arrow schema, the
//! check that an existing table can take the output, and the conversion of each batch to the
//! table's Arrow schema (field ids, microsecond timestamps, signed integers).

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Schema as ArrowSchema, SchemaRef};
use arrow::record_batch::RecordBatch;
use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

use crate::IcebergError;

/// The column of a view's changelog that says what a row is (`upsert`, `snapshot`); a view's
/// table holds the rows, not the changelog, so it is left out.
pub const OP_COLUMN: &str = "op";

/// The Iceberg type of an output column's Arrow type.
pub fn iceberg_type(column: &str, t: &DataType) -> Result<Type, IcebergError> {
    let p = match t {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => PrimitiveType::Int,
        DataType::UInt8 | DataType::UInt16 => PrimitiveType::Int,
        // Iceberg has no unsigned types: counts go to `long` (a value above i64::MAX is an
        // error when written, never a wrapped number)
        DataType::UInt32 | DataType::Int64 | DataType::UInt64 => PrimitiveType::Long,
        DataType::Float16 | DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PrimitiveType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => PrimitiveType::Binary,
        DataType::Date32 | DataType::Date64 => PrimitiveType::Date,
        DataType::Timestamp(_, Some(_)) => PrimitiveType::Timestamptz,
        DataType::Timestamp(_, None) => PrimitiveType::Timestamp,
        DataType::Decimal128(p, s) if *s >= 0 => PrimitiveType::Decimal {
            precision: u32::from(*p),
            scale: *s as u32,
        },
        other => {
            return Err(IcebergError::schema(format!(
                "column `{column}` has type {other}, which has no Iceberg type here"
            )))
        }
    };
    Ok(Type::Primitive(p))
}

/// The columns of an output that go to its table (all but a view's `op`).
fn table_columns(output: &ArrowSchema) -> impl Iterator<Item = &arrow::datatypes::FieldRef> {
    output.fields().iter().filter(|f| f.name() != OP_COLUMN)
}

/// The schema of a new table for an output: its columns in order, ids from 1; the key
/// columns of a view are the identifier fields when none of them may be null.
pub fn table_schema(output: &ArrowSchema, keys: usize) -> Result<Schema, IcebergError> {
    let mut fields = Vec::new();
    for (i, f) in table_columns(output).enumerate() {
        let id = i as i32 + 1;
        let t = iceberg_type(f.name(), f.data_type())?;
        let field = if f.is_nullable() {
            NestedField::optional(id, f.name(), t)
        } else {
            NestedField::required(id, f.name(), t)
        };
        fields.push(Arc::new(field));
    }
    let mut builder = Schema::builder().with_fields(fields.clone());
    let key_fields = &fields[..keys.min(fields.len())];
    if keys > 0 && key_fields.iter().all(|f| f.required) {
        builder = builder.with_identifier_field_ids(key_fields.iter().map(|f| f.id));
    }
    builder
        .build()
        .map_err(|e| IcebergError::schema_caused("the output's table schema", e))
}

/// Whether a column of type `have` in the table can hold values of type `give`: the same
/// type, or one Iceberg promotes to it (`int` to `long`, `float` to `double`).
fn holds(have: &Type, give: &Type) -> bool {
    use PrimitiveType as P;
    match (have, give) {
        (Type::Primitive(h), Type::Primitive(g)) => {
            h == g || matches!((h, g), (P::Long, P::Int) | (P::Double, P::Float))
        }
        _ => false,
    }
}

/// Checks that an existing table takes the output's rows: every output column is in the
/// table with a type that holds it (nullable when the output's is), and every other table
/// column may be null. Otherwise says what differs.
pub fn check_compatible(
    table: &str,
    have: &Schema,
    output: &ArrowSchema,
) -> Result<(), IcebergError> {
    let mut problems = Vec::new();
    for f in table_columns(output) {
        let give = iceberg_type(f.name(), f.data_type())?;
        match have.field_by_name(f.name()) {
            None => problems.push(format!("it has no column `{}` ({give})", f.name())),
            Some(h) if !holds(&h.field_type, &give) => problems.push(format!(
                "its column `{}` is {} but the output gives {give}",
                f.name(),
                h.field_type
            )),
            Some(h) if h.required && f.is_nullable() => problems.push(format!(
                "its column `{}` is required but the output's may be null",
                f.name()
            )),
            Some(_) => {}
        }
    }
    for h in have.as_struct().fields() {
        let produced = table_columns(output).any(|f| f.name() == &h.name);
        if !produced && h.required {
            problems.push(format!(
                "its required column `{}` is not in the output",
                h.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(IcebergError::schema(format!(
            "table {table} cannot take this output: {}; write to another table, or change the \
             table so that it only adds nullable columns",
            problems.join("; ")
        )))
    }
}

/// Converts output batches to a table's Arrow schema.
pub struct BatchConverter {
    target: SchemaRef,
    /// For each table column, the output column it comes from (`None`: a nullable column
    /// the output does not have, written as nulls).
    sources: Vec<Option<usize>>,
}

impl BatchConverter {
    /// A converter from `output` rows to the table's Arrow schema `target` (made by
    /// `iceberg::arrow::schema_to_arrow_schema`, with field ids).
    pub fn new(output: &ArrowSchema, target: SchemaRef) -> Self {
        let sources = target
            .fields()
            .iter()
            .map(|t| {
                output
                    .fields()
                    .iter()
                    .position(|f| f.name() == t.name() && f.name() != OP_COLUMN)
            })
            .collect();
        BatchConverter { target, sources }
    }

    /// The table's Arrow schema.
    pub fn target(&self) -> &SchemaRef {
        &self.target
    }

    /// The batch in the table's schema. Casts refuse to lose values (a count above
    /// `i64::MAX` is an error, not a wrapped number).
    pub fn convert(&self, batch: &RecordBatch) -> Result<RecordBatch, IcebergError> {
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.sources.len());
        for (t, source) in self.target.fields().iter().zip(&self.sources) {
            let column = match source {
                Some(i) => {
                    let c = batch.column(*i);
                    if c.data_type() == t.data_type() {
                        c.clone()
                    } else {
                        cast_with_options(c, t.data_type(), &options).map_err(|e| {
                            IcebergError::schema_caused(format!("column `{}`", t.name()), e)
                        })?
                    }
                }
                None => new_null_array(t.data_type(), batch.num_rows()),
            };
            columns.push(column);
        }
        RecordBatch::try_new(self.target.clone(), columns)
            .map_err(|e| IcebergError::schema_caused("the rows in the table's schema", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMillisecondArray, UInt64Array};
    use arrow::datatypes::{Field, TimeUnit};

    fn window_schema() -> ArrowSchema {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        ArrowSchema::new(vec![
            Field::new("datasetName", DataType::Utf8, true),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("events", DataType::UInt64, false),
            Field::new("bytes", DataType::Int64, true),
        ])
    }

    #[test]
    fn a_window_output_maps_to_iceberg_types() {
        let s = table_schema(&window_schema(), 1).unwrap();
        let types: Vec<String> = s
            .as_struct()
            .fields()
            .iter()
            .map(|f| format!("{}:{}:{}", f.id, f.name, f.field_type))
            .collect();
        assert_eq!(
            types,
            [
                "1:datasetName:string",
                "2:window_start:timestamptz",
                "3:window_end:timestamptz",
                "4:events:long",
                "5:bytes:long"
            ]
        );
        // a nullable key is no identifier field
        assert!(s.identifier_field_ids().next().is_none());
        check_compatible("t", &s, &window_schema()).unwrap();
    }

    #[test]
    fn incompatible_tables_are_named_column_by_column() {
        let s = table_schema(&window_schema(), 1).unwrap();
        let mut fields: Vec<Field> = window_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[3] = Field::new("events", DataType::Utf8, false);
        fields.push(Field::new("extra", DataType::Float64, true));
        let e = check_compatible("db.t", &s, &ArrowSchema::new(fields))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`events` is long but the output gives string"),
            "{e}"
        );
        assert!(e.contains("no column `extra` (double)"), "{e}");
        // a table with an added nullable column takes the output
        let mut wider: Vec<Arc<NestedField>> = s.as_struct().fields().to_vec();
        wider.push(Arc::new(NestedField::optional(
            6,
            "note",
            Type::Primitive(PrimitiveType::String),
        )));
        let wider = Schema::builder().with_fields(wider).build().unwrap();
        check_compatible("db.t", &wider, &window_schema()).unwrap();
    }

    #[test]
    fn batches_convert_to_the_table_schema() {
        let out = Arc::new(window_schema());
        let table = table_schema(&out, 1).unwrap();
        let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(&table).unwrap());
        let conv = BatchConverter::new(&out, target.clone());
        let ts = |v: i64| {
            Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef
        };
        let batch = RecordBatch::try_new(
            out.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                ts(60_000),
                ts(120_000),
                Arc::new(UInt64Array::from(vec![3])),
                Arc::new(arrow::array::Int64Array::from(vec![Some(7)])),
            ],
        )
        .unwrap();
        let got = conv.convert(&batch).unwrap();
        assert_eq!(got.schema(), target);
        let start = got
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(start.value(0), 60_000_000);
        // u64 above i64::MAX is refused, not wrapped
        let big = RecordBatch::try_new(
            out,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                ts(0),
                ts(1),
                Arc::new(UInt64Array::from(vec![u64::MAX])),
                Arc::new(arrow::array::Int64Array::from(vec![None])),
            ],
        )
        .unwrap();
        assert!(conv.convert(&big).is_err());
    }
}
