//! File sinks.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use weir_engine::job::{Committable, DeadLetterSink, Sink};
use weir_engine::{DeadLetter, EngineError};
use weir_formats::csv_rows::write_csv;
use weir_formats::json_rows::for_each_json_row;
use weir_formats::parquet_rows::{writer_properties, ParquetRows};

use crate::committed::{fatal, sink_err, Appender, CommittedLines, CommittedParts};

/// The format of a file sink, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Ndjson,
    Csv,
    Parquet,
}

impl FileFormat {
    /// The format named by a path's extension (`.ndjson`/`.jsonl`/`.json`, `.csv`, `.parquet`).
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()? {
            "ndjson" | "jsonl" | "json" => Some(FileFormat::Ndjson),
            "csv" => Some(FileFormat::Csv),
            "parquet" => Some(FileFormat::Parquet),
            _ => None,
        }
    }
}

/// A call a file output refuses (I/O and encoding failures keep their own errors).
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    /// Rows or dead letters came after the file was finished.
    #[error("the file is already closed")]
    Closed,
}

enum Writer {
    /// NDJSON or CSV: whole batches appended, so a failed write can be retried.
    Lines {
        out: Appender,
        csv: bool,
        line: Vec<u8>,
        buf: Vec<u8>,
    },
    Parquet(Box<ParquetRows<File>>),
}

/// Result rows to one file.
pub struct FileSink {
    name: String,
    path: PathBuf,
    temp: PathBuf,
    writer: Option<Writer>,
}

fn in_progress(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".inprogress");
    PathBuf::from(p)
}

impl FileSink {
    /// A sink named `name` writing rows of `schema` to `path` in `format`.
    pub fn create(
        name: &str,
        path: &Path,
        format: FileFormat,
        schema: SchemaRef,
    ) -> Result<Self, EngineError> {
        let temp = in_progress(path);
        let err = sink_err(name, path);
        let writer = match format {
            FileFormat::Ndjson | FileFormat::Csv => Writer::Lines {
                out: Appender::create(&temp).map_err(&err)?,
                csv: format == FileFormat::Csv,
                line: Vec::new(),
                buf: Vec::new(),
            },
            FileFormat::Parquet => {
                let file = Appender::create(&temp).map_err(&err)?.into_file();
                let props = writer_properties().map_err(|e| err(fatal(e)))?;
                Writer::Parquet(Box::new(
                    ParquetRows::new(file, schema, props).map_err(|e| err(fatal(e)))?,
                ))
            }
        };
        Ok(FileSink {
            name: name.to_string(),
            path: path.to_path_buf(),
            temp,
            writer: Some(writer),
        })
    }
}

impl Committable for FileSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        // The rows become visible only when the file is renamed into place at the end.
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        let err = sink_err(&self.name, &self.path);
        match &mut self.writer {
            // synced before it is taken (a failed sync stops the run: see `sync_failed`)
            Some(Writer::Lines { out, .. }) => out.sync().map_err(&err)?,
            Some(Writer::Parquet(_)) => {
                if let Some(Writer::Parquet(w)) = self.writer.take() {
                    let file = w.finish().map_err(|e| err(fatal(e)))?;
                    // durable before it is renamed into place, as the line formats are
                    file.sync_all()
                        .map_err(|e| err(crate::committed::sync_failed(&self.temp)(e)))?;
                }
            }
            None => {}
        }
        if self.temp.exists() {
            std::fs::rename(&self.temp, &self.path)
                .map_err(|e| err(crate::committed::io_error(&self.temp, e)))?;
            // the rename itself is durable once the folder is
            let dir = crate::committed::parent_of(&self.path);
            crate::committed::sync_dir(dir)
                .map_err(|e| err(crate::committed::sync_failed(dir)(e)))?;
        }
        self.writer = None;
        Ok(())
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let err = sink_err(&self.name, &self.path);
        match self.writer.as_mut() {
            Some(Writer::Lines {
                out,
                csv,
                line,
                buf,
            }) => {
                buf.clear();
                if *csv {
                    write_csv(batch, out.is_empty(), buf).map_err(fatal)
                } else {
                    write_ndjson(batch, line, buf).map_err(fatal)
                }
                .map_err(&err)?;
                out.append(buf).map_err(err)
            }
            Some(Writer::Parquet(w)) => w.write(batch).map_err(|e| err(fatal(e))),
            None => Err(err(fatal(FileSinkError::Closed))),
        }
    }
}

/// How a checkpointed file sink commits its rows.
enum Committed {
    Lines {
        lines: CommittedLines,
        format: FileFormat,
        /// Reused encoding buffers.
        line: Vec<u8>,
        buf: Vec<u8>,
    },
    Parts(Box<CommittedParts>),
}

/// Result rows to a file with two-phase commit per checkpoint (see [`crate::committed`]):
/// NDJSON and CSV stay one file that grows by whole checkpoints; Parquet becomes a folder of
/// one part file per checkpoint.
pub struct CommittedFileSink {
    name: String,
    path: PathBuf,
    output: Committed,
}

impl CommittedFileSink {
    /// A sink named `name` writing rows of `schema` to `path` in `format`.
    pub fn create(
        name: &str,
        path: &Path,
        format: FileFormat,
        schema: SchemaRef,
    ) -> Result<Self, EngineError> {
        let err = sink_err(name, path);
        let output = match format {
            FileFormat::Parquet => Committed::Parts(Box::new(
                CommittedParts::new(
                    path,
                    schema,
                    writer_properties().map_err(|e| err(fatal(e)))?,
                )
                .map_err(&err)?,
            )),
            FileFormat::Ndjson | FileFormat::Csv => Committed::Lines {
                lines: CommittedLines::new(path),
                format,
                line: Vec::new(),
                buf: Vec::new(),
            },
        };
        Ok(CommittedFileSink {
            name: name.to_string(),
            path: path.to_path_buf(),
            output,
        })
    }
}

impl Committable for CommittedFileSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        // rows become visible when their checkpoint commits
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        let uncommitted = match &self.output {
            Committed::Parts(p) => p.has_uncommitted(),
            Committed::Lines { lines, .. } => lines.has_uncommitted(),
        };
        if uncommitted {
            tracing::warn!(sink = %self.name, "rows written after the last checkpoint are not committed");
        }
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        let err = sink_err(&self.name, &self.path);
        match &mut self.output {
            Committed::Parts(p) => p.pre_commit(epoch).map_err(err),
            Committed::Lines { lines, .. } => lines.pre_commit(epoch).map_err(err),
        }
    }

    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        let err = sink_err(&self.name, &self.path);
        match &mut self.output {
            Committed::Parts(p) => p.commit(epoch).map_err(err),
            Committed::Lines { lines, .. } => lines.commit(epoch).map_err(err),
        }
    }

    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        let err = sink_err(&self.name, &self.path);
        match &mut self.output {
            Committed::Parts(p) => p.recover(from.map(|(e, _)| e)).map_err(err),
            Committed::Lines { lines, .. } => lines.recover(from).map_err(err),
        }
    }
}

impl Sink for CommittedFileSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let err = sink_err(&self.name, &self.path);
        match &mut self.output {
            Committed::Parts(parts) => parts.write(batch).map_err(err),
            Committed::Lines {
                lines,
                format,
                line,
                buf,
            } => {
                buf.clear();
                if *format == FileFormat::Csv {
                    write_csv(batch, lines.at_start(), buf).map_err(fatal)
                } else {
                    write_ndjson(batch, line, buf).map_err(fatal)
                }
                .map_err(&err)?;
                lines.append(buf).map_err(err)
            }
        }
    }
}

/// Dead letters to an NDJSON file with two-phase commit per checkpoint.
pub struct CommittedDeadLetterFile {
    path: PathBuf,
    lines: CommittedLines,
    buf: Vec<u8>,
}

impl CommittedDeadLetterFile {
    /// Dead letters committed into `path`.
    pub fn create(path: &Path) -> Self {
        CommittedDeadLetterFile {
            path: path.to_path_buf(),
            lines: CommittedLines::new(path),
            buf: Vec::new(),
        }
    }

    fn err(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::dead_letter_caused(self.path.display(), e)
    }

    /// An error of the committed file, retried when it can be.
    fn file_err(&self, e: crate::committed::Error) -> EngineError {
        dead_letter_err(&self.path, e)
    }
}

impl Committable for CommittedDeadLetterFile {
    fn flush(&mut self) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// Dead letters after the last checkpoint (rows a sink's last commit refused, which no
    /// checkpoint follows to hold) are committed all the same: a restart from the last
    /// checkpoint cuts them off, and their sink reports them again.
    fn finish(&mut self) -> Result<(), EngineError> {
        self.lines.commit_tail().map_err(|e| self.file_err(e))
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.lines.pre_commit(epoch).map_err(|e| self.file_err(e))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        self.lines.commit(epoch).map_err(|e| self.file_err(e))
    }

    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        self.lines.recover(from).map_err(|e| self.file_err(e))
    }
}

impl DeadLetterSink for CommittedDeadLetterFile {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, &r.to_json()).map_err(|e| self.err(e))?;
            self.buf.push(b'\n');
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.lines.append(&buf).map_err(|e| self.file_err(e));
        self.buf = buf;
        r
    }
}

/// Rows as JSON objects, one a line: timestamps as RFC 3339 strings, numbers as numbers.
fn write_ndjson(
    batch: &RecordBatch,
    line: &mut Vec<u8>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for_each_json_row(batch, line, |_, row| {
        out.write_all(row)?;
        out.write_all(b"\n")
    })
}

/// Dead letters to an NDJSON file.
pub struct DeadLetterFile {
    path: PathBuf,
    temp: PathBuf,
    out: Option<Appender>,
    buf: Vec<u8>,
}

/// A dead-letter error of a file, retried when it can be.
fn dead_letter_err(path: &Path, e: crate::committed::Error) -> EngineError {
    e.into_engine(|e| EngineError::dead_letter_caused(path.display(), e))
}

impl DeadLetterFile {
    /// Dead letters written to `path`.
    pub fn create(path: &Path) -> Result<Self, EngineError> {
        let temp = in_progress(path);
        let out = Appender::create(&temp).map_err(|e| dead_letter_err(path, e))?;
        Ok(DeadLetterFile {
            path: path.to_path_buf(),
            temp,
            out: Some(out),
            buf: Vec::new(),
        })
    }
}

impl Committable for DeadLetterFile {
    fn flush(&mut self) -> Result<bool, EngineError> {
        // The records become visible only when the file is renamed into place at the end.
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        if let Some(out) = &mut self.out {
            out.sync().map_err(|e| dead_letter_err(&self.path, e))?;
            std::fs::rename(&self.temp, &self.path).map_err(|e| {
                dead_letter_err(&self.path, crate::committed::io_error(&self.temp, e))
            })?;
            // the rename itself is durable once the folder is, as for a sink's file
            let dir = crate::committed::parent_of(&self.path);
            crate::committed::sync_dir(dir)
                .map_err(|e| dead_letter_err(&self.path, crate::committed::sync_failed(dir)(e)))?;
            self.out = None;
        }
        Ok(())
    }
}

impl DeadLetterSink for DeadLetterFile {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        let out = self.out.as_mut().ok_or_else(|| {
            EngineError::dead_letter_caused(self.path.display(), FileSinkError::Closed)
        })?;
        self.buf.clear();
        for r in records {
            serde_json::to_writer(&mut self.buf, &r.to_json())
                .map_err(|e| EngineError::dead_letter_caused(self.path.display(), e))?;
            self.buf.push(b'\n');
        }
        out.append(&self.buf)
            .map_err(|e| dead_letter_err(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("window_start", ts.clone(), false),
            Field::new("n", DataType::Int64, true),
            Field::new("avg", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a\"\\b"), None])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_700_000_040_000, 0])
                        .with_timezone("UTC"),
                ),
                Arc::new(Int64Array::from(vec![Some(3), None])),
                Arc::new(Float64Array::from(vec![1.5, f64::NAN])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn ndjson_rows_follow_the_spec() {
        let dir = tempdir();
        let path = dir.join("out/x.ndjson");
        let b = batch();
        let mut s = FileSink::create("out", &path, FileFormat::Ndjson, b.schema()).unwrap();
        s.write(&b).unwrap();
        assert!(!path.exists());
        s.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["k"], "a\"\\b");
        assert_eq!(lines[0]["window_start"], "2023-11-14T22:14:00.000Z");
        assert_eq!(lines[0]["n"], 3);
        assert_eq!(lines[0]["avg"], 1.5);
        assert!(lines[1]["k"].is_null() && lines[1]["avg"].is_null());
    }

    #[test]
    fn writing_after_finish_is_a_typed_error() {
        let dir = tempdir();
        let b = batch();
        let mut s =
            FileSink::create("out", &dir.join("c.csv"), FileFormat::Csv, b.schema()).unwrap();
        s.finish().unwrap();
        let e = s.write(&b).unwrap_err();
        let mut cause: &(dyn std::error::Error + 'static) = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        assert!(
            matches!(cause.downcast_ref(), Some(FileSinkError::Closed)),
            "{e:?}"
        );
        assert!(
            e.chain()
                .to_string()
                .ends_with("c.csv: the file is already closed"),
            "{}",
            e.chain()
        );
        let mut d = DeadLetterFile::create(&dir.join("dl.ndjson")).unwrap();
        d.finish().unwrap();
        let e = d.write(&[]).unwrap_err();
        assert!(
            e.chain()
                .to_string()
                .ends_with("dl.ndjson: the file is already closed"),
            "{}",
            e.chain()
        );
    }

    #[test]
    fn csv_and_parquet_are_written() {
        let dir = tempdir();
        let b = batch();
        for (name, f) in [
            ("x.csv", FileFormat::Csv),
            ("x.parquet", FileFormat::Parquet),
        ] {
            let path = dir.join(name);
            let mut s = FileSink::create("out", &path, f, b.schema()).unwrap();
            s.write(&b).unwrap();
            s.finish().unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() > 0);
        }
        let csv = std::fs::read_to_string(dir.join("x.csv")).unwrap();
        assert!(csv.contains("2023-11-14T22:14:00.000Z"), "{csv}");
        let file = File::open(dir.join("x.parquet")).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weir-sink-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
