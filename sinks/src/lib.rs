//! weir's outputs: result rows to NDJSON, CSV or Parquet files, dead letters to NDJSON.
//!
//! Files are written under `<path>.inprogress` and renamed into place when the run
//! finishes, so a reader never mistakes a half-written file for a result.

pub mod file;

pub use file::{DeadLetterFile, FileFormat, FileSink};
