//! Arrow rows encoded as a Parquet file: every output of weir writes zstd (level 3) Parquet
//! through [`ParquetRows`], which wraps Arrow's Parquet writer with typed errors. Where the
//! file goes, and when it becomes visible, is the sink's business (a whole file renamed into
//! place, or a part file per checkpoint).

use std::io::Write;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;

pub use parquet::file::properties::WriterProperties;

/// The zstd level of every Parquet output.
pub const ZSTD_LEVEL: i32 = 3;

/// Why rows could not be written as Parquet.
#[derive(Debug, thiserror::Error)]
pub enum ParquetRowsError {
    /// The writer's settings are refused.
    #[error("Parquet: the writer's settings")]
    Settings(#[source] ParquetError),
    /// The writer could not start (a schema Parquet cannot hold).
    #[error("Parquet: starting a file")]
    Open(#[source] ParquetError),
    /// Rows could not be encoded or written.
    #[error("Parquet: writing rows")]
    Write(#[source] ParquetError),
    /// The file's last row group or footer could not be written.
    #[error("Parquet: finishing the file")]
    Finish(#[source] ParquetError),
}

/// The Parquet settings of every output: zstd at [`ZSTD_LEVEL`].
pub fn writer_properties() -> Result<WriterProperties, ParquetRowsError> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(ParquetRowsError::Settings)?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build())
}

/// Rows of one schema written as one Parquet file to `W`.
pub struct ParquetRows<W: Write + Send> {
    writer: ArrowWriter<W>,
}

impl<W: Write + Send> ParquetRows<W> {
    /// A file of rows of `schema` written to `out` with `props`.
    pub fn new(
        out: W,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<Self, ParquetRowsError> {
        let writer =
            ArrowWriter::try_new(out, schema, Some(props)).map_err(ParquetRowsError::Open)?;
        Ok(ParquetRows { writer })
    }

    /// Encodes `batch`'s rows (buffered into row groups; written as they fill).
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetRowsError> {
        self.writer.write(batch).map_err(ParquetRowsError::Write)
    }

    /// Writes the last row group and the footer; returns the output.
    pub fn finish(self) -> Result<W, ParquetRowsError> {
        self.writer.into_inner().map_err(ParquetRowsError::Finish)
    }

    /// Writes the last row group and the footer, then drops the output.
    pub fn close(self) -> Result<(), ParquetRowsError> {
        self.writer
            .close()
            .map(|_| ())
            .map_err(ParquetRowsError::Finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::sync::Arc;

    #[test]
    fn rows_read_back_and_are_zstd_compressed() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let mut w = ParquetRows::new(Vec::new(), schema, writer_properties().unwrap()).unwrap();
        w.write(&b).unwrap();
        w.write(&b).unwrap();
        let bytes = bytes::Bytes::from(w.finish().unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let read: Vec<RecordBatch> = reader.map(|r| r.unwrap()).collect();
        assert_eq!(read.iter().map(|r| r.num_rows()).sum::<usize>(), 4);
        assert_eq!(read[0].slice(0, 2).column(0), b.column(0));
        let meta = SerializedFileReader::new(bytes).unwrap();
        let column = meta.metadata().row_group(0).column(0).compression();
        assert!(matches!(column, Compression::ZSTD(_)), "{column:?}");
    }

    #[test]
    fn a_schema_parquet_cannot_start_is_a_typed_error_with_its_cause() {
        // a field of no columns (an empty struct) is refused
        let schema = Arc::new(Schema::new(vec![Field::new(
            "s",
            DataType::Struct(Default::default()),
            true,
        )]));
        match ParquetRows::new(Vec::new(), schema, writer_properties().unwrap()) {
            Err(e @ ParquetRowsError::Open(_)) => {
                assert!(std::error::Error::source(&e).is_some());
            }
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("an empty struct was taken"),
        }
    }
}
