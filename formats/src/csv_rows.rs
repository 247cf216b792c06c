//! Arrow rows encoded as CSV: a header line when asked, then one line a row; timestamps as
//! RFC 3339 strings in UTC with milliseconds (`2023-11-14T22:14:00.000Z`), other values as
//! Arrow's CSV writer prints them. A file sink appends the bytes of whole batches, asking for
//! the header only for the first bytes of a file.

use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// How timestamps are printed (they are made UTC first, so the `Z` holds).
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Why rows could not be encoded as CSV.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// A time-zoned timestamp column could not be read as UTC.
    #[error("CSV: reading the timestamps of column `{column}` as UTC")]
    Timestamps {
        column: String,
        #[source]
        source: ArrowError,
    },
    /// Arrow's CSV writer refused the rows (a column type CSV cannot hold).
    #[error("CSV: encoding the rows")]
    Encode(#[source] ArrowError),
}

/// Appends `batch`'s rows to `out` as CSV lines, led by a header line of the column names
/// when `header` (timestamps as [`TIMESTAMP_FORMAT`]).
pub fn write_csv(batch: &RecordBatch, header: bool, out: &mut Vec<u8>) -> Result<(), CsvError> {
    let batch = utc_as_naive(batch)?;
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(header)
        .with_timestamp_format(TIMESTAMP_FORMAT.to_string())
        .build(out);
    w.write(&batch).map_err(CsvError::Encode)
}

/// The batch with UTC timestamps as naive ones, so CSV prints them with a `Z` format
/// without a time-zone database.
fn utc_as_naive(batch: &RecordBatch) -> Result<RecordBatch, CsvError> {
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if let DataType::Timestamp(unit, Some(_)) = f.data_type() {
            let t = DataType::Timestamp(*unit, None);
            cols.push(
                arrow::compute::cast(c, &t).map_err(|source| CsvError::Timestamps {
                    column: f.name().clone(),
                    source,
                })?,
            );
            fields.push(f.as_ref().clone().with_data_type(t));
        } else {
            cols.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), cols).map_err(CsvError::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, TimeUnit};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("window_start", ts, false),
            Field::new("n", DataType::Int64, true),
            Field::new("avg", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a,\"b"), None])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_700_000_040_000, 0])
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(vec![Some(3), None])),
                Arc::new(Float64Array::from(vec![1.5, 2.0])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_are_lines_with_utc_timestamps_and_a_header_when_asked() {
        let b = batch();
        let mut out = Vec::new();
        write_csv(&b, true, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "k,window_start,n,avg\n\
             \"a,\"\"b\",2023-11-14T22:14:00.000Z,3,1.5\n\
             ,1970-01-01T00:00:00.000Z,,2.0\n"
        );
        // appended without a header
        let mut more = b"x\n".to_vec();
        write_csv(&b.slice(1, 1), false, &mut more).unwrap();
        assert_eq!(more, b"x\n,1970-01-01T00:00:00.000Z,,2.0\n");
    }

    #[test]
    fn a_type_csv_cannot_hold_is_a_typed_error_with_its_cause() {
        use arrow::array::{Array, ListArray, RecordBatchOptions};
        let list =
            ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(vec![Some(vec![
                Some(1),
            ])]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "l",
            list.data_type().clone(),
            true,
        )]));
        let b = RecordBatch::try_new_with_options(
            schema,
            vec![Arc::new(list)],
            &RecordBatchOptions::default(),
        )
        .unwrap();
        let e = write_csv(&b, true, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, CsvError::Encode(_)), "{e:?}");
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        assert!(cause.downcast_ref::<ArrowError>().is_some());
    }
}
