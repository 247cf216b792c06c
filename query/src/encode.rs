//! Query results as bytes: JSON rows and Arrow IPC streams, each under a byte cap, so that a
//! large result fails while it is encoded instead of after it has filled memory.

use crate::engine::QueryResult;

/// Why a result could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoding grew past its cap.
    #[error("the encoded result is larger than its limit")]
    TooLarge,
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// How UTC timestamps read in JSON answers: RFC 3339 with milliseconds, as the sinks write
/// them (`2026-11-22T10:05:00.000Z`).
pub(crate) const UTC_TIMESTAMP: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// The JSON writer of answers and subscriptions for rows of `schema`: nulls kept as `null`;
/// when every zoned timestamp is a UTC one in milliseconds (weir's own are), they read as
/// the sinks write them (else Arrow's format, with offsets and every digit).
pub fn json_writer(schema: &arrow::datatypes::Schema) -> arrow_json::WriterBuilder {
    let w = arrow_json::WriterBuilder::new().with_explicit_nulls(true);
    if zones_utc(schema) {
        w.with_timestamp_tz_format(UTC_TIMESTAMP.to_string())
    } else {
        w
    }
}

/// Whether every zoned timestamp of `schema` (nested ones too) is a UTC one in milliseconds,
/// as weir's own are: then [`UTC_TIMESTAMP`] writes them truly, neither relabelling another
/// zone as `Z` nor cutting finer units (`now()` is in nanoseconds).
pub(crate) fn zones_utc(schema: &arrow::datatypes::Schema) -> bool {
    schema
        .fields()
        .iter()
        .all(|f| utc_millis_only(f.data_type()))
}

fn utc_millis_only(t: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::{DataType, TimeUnit};
    match t {
        DataType::Timestamp(unit, Some(tz)) => {
            *unit == TimeUnit::Millisecond && matches!(tz.as_ref(), "UTC" | "+00:00" | "Z")
        }
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => utc_millis_only(f.data_type()),
        DataType::Struct(fields) => fields.iter().all(|f| utc_millis_only(f.data_type())),
        DataType::Dictionary(_, v) => utc_millis_only(v),
        _ => true,
    }
}

/// Rows as a JSON array of objects (nulls kept as `null`), at most `max_bytes` long.
pub fn json_rows(result: &QueryResult, max_bytes: usize) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    {
        let mut w = json_writer(&result.schema).build::<_, arrow_json::writer::JsonArray>(&mut out);
        for b in &result.batches {
            // a batch at a time, so an oversized result stops early
            for start in (0..b.num_rows()).step_by(1024) {
                w.write(&b.slice(start, 1024.min(b.num_rows() - start)))?;
                if w.get_ref().len() > max_bytes {
                    return Err(EncodeError::TooLarge);
                }
            }
        }
        w.finish()?;
    }
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    if out.len() > max_bytes {
        return Err(EncodeError::TooLarge);
    }
    Ok(out)
}

/// Rows as an Arrow IPC stream, at most `max_bytes` long.
pub fn arrow_stream(result: &QueryResult, max_bytes: usize) -> Result<Vec<u8>, EncodeError> {
    arrow_stream_with(result, max_bytes, None)
}

/// [`arrow_stream`], its schema carrying `metadata` too (what a pool worker tells another).
pub fn arrow_stream_with(
    result: &QueryResult,
    max_bytes: usize,
    metadata: Option<&std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, EncodeError> {
    let schema = match metadata {
        Some(m) => {
            let mut all = result.schema.metadata().clone();
            all.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            std::sync::Arc::new(result.schema.as_ref().clone().with_metadata(all))
        }
        None => result.schema.clone(),
    };
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
        for b in &result.batches {
            let b = b.clone().with_schema(schema.clone())?;
            w.write(&b)?;
            if w.get_ref().len() > max_bytes {
                return Err(EncodeError::TooLarge);
            }
        }
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn result(rows: i64) -> QueryResult {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        QueryResult {
            schema,
            batches: vec![batch],
        }
    }

    #[test]
    fn results_under_the_cap_encode_whole() {
        let json = json_rows(&result(3), 1 << 20).unwrap();
        assert_eq!(json, br#"[{"n":0},{"n":1},{"n":2}]"#);
        assert_eq!(json_rows(&result(0), 100).unwrap(), b"[]");
        assert!(!arrow_stream(&result(3), 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn utc_timestamps_read_as_the_sinks_write_them() {
        use arrow::array::TimestampMillisecondArray;
        let at = |tz: &str| {
            let schema = Arc::new(Schema::new(vec![Field::new(
                "window_start",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some(tz.into())),
                true,
            )]));
            let values = TimestampMillisecondArray::from(vec![1_763_805_900_000]).with_timezone(tz);
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
            let r = QueryResult {
                schema,
                batches: vec![batch],
            };
            String::from_utf8(json_rows(&r, 1 << 20).unwrap()).unwrap()
        };
        assert_eq!(
            at("UTC"),
            r#"[{"window_start":"2025-11-22T10:05:00.000Z"}]"#
        );
        // another zone keeps its offset
        assert!(at("+02:00").contains("12:05:00+02:00"), "{}", at("+02:00"));
        // a finer unit keeps its digits
        let ns = Schema::new(vec![Field::new(
            "now",
            DataType::Timestamp(
                arrow::datatypes::TimeUnit::Nanosecond,
                Some("+00:00".into()),
            ),
            true,
        )]);
        assert!(!zones_utc(&ns));
    }

    #[test]
    fn results_over_the_cap_stop_with_too_large() {
        assert!(matches!(
            json_rows(&result(100_000), 10_000),
            Err(EncodeError::TooLarge)
        ));
        assert!(matches!(
            arrow_stream(&result(100_000), 10_000),
            Err(EncodeError::TooLarge)
        ));
    }
}
