//! Files written with two-phase commit, for checkpointed runs: a reader sees only rows of
//! complete checkpoints, and a restart from checkpoint `C` gives exactly the rows up to `C`.
//!
//! - Line files (NDJSON, CSV, dead letters) stay one file at the configured path. The rows of
//!   epoch `E` go to a side file `<path>.epoch-<E>`; at the barrier it is made durable and its
//!   place in the final file (the final file's length once every earlier epoch is in) goes to
//!   the checkpoint's manifest. When the checkpoint is complete, the side file is written at
//!   that place and removed. Recovery from checkpoint `C` writes the side files `C` lists
//!   again (writing at a fixed place is idempotent), cuts the final file to `C`'s length and
//!   removes every other side file.
//! - Parquet cannot be appended to, so a checkpointed Parquet output is a folder of part
//!   files, one per checkpoint that had rows: `.part-<E>.parquet.inprogress` while written,
//!   `.part-<E>.parquet.pending` once pre-committed (hidden files, which Parquet readers
//!   skip), `part-<E>.parquet` once committed (as Flink's file sink rolls on checkpoints).
//!   Readers read the folder (`pyarrow.dataset`, Spark) or glob `path/*.parquet` (DuckDB).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::EngineError;
use weir_formats::parquet_rows::{ParquetRows, WriterProperties};

/// A failure of a committed output. `retry` is set when the call changed nothing and the
/// output may come back (a full disk, a read-only folder): the engine then retries it.
/// Its text is `message`; the error that caused it (I/O, Parquet), if any, is its `cause`
/// (printed by the chain, see [`weir_engine::error::chain`]).
#[derive(Debug)]
pub struct Error {
    pub message: String,
    pub retry: bool,
    pub cause: Option<weir_engine::error::Cause>,
}

impl Error {
    /// `err` (this failure as the output's error, which keeps it as its cause), marked
    /// retryable when this one is.
    pub fn into_engine(self, err: impl FnOnce(Error) -> EngineError) -> EngineError {
        let retry = self.retry;
        let e = err(self);
        if retry {
            e.unavailable()
        } else {
            e
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error {
            message,
            retry: false,
            cause: None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as _)
    }
}

/// An I/O error; retried when its kind says the file system may come back (full, read-only,
/// refused, interrupted). Only for calls that leave nothing changed when they fail.
fn io(e: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let retry = matches!(
        e.kind(),
        K::StorageFull
            | K::QuotaExceeded
            | K::ReadOnlyFilesystem
            | K::PermissionDenied
            | K::Interrupted
            | K::TimedOut
            | K::WouldBlock
            | K::ResourceBusy
    ) || e.raw_os_error() == Some(5); // EIO
    Error {
        message: String::new(),
        retry,
        cause: Some(e.into()),
    }
}

/// A failed `fsync` of `path` (a file or a folder): never retried. Linux marks the pages a
/// failed writeback lost as clean, so a second `fsync` succeeds on data that is not on disk
/// (PostgreSQL stops on it for the same reason); the run stops, and its restart writes the
/// rows again from the last checkpoint.
pub(crate) fn sync_failed(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error {
        message: format!(
            "{}: making it durable (fsync) failed; what was written since the last \
             checkpoint may not be on disk",
            path.display()
        ),
        retry: false,
        cause: Some(e.into()),
    }
}

/// [`io`] naming the file.
fn io_at(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| {
        let mut err = io(e);
        err.message = path.display().to_string();
        err
    }
}

/// An I/O error on `path`, retried when its kind allows.
pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    io_at(path)(e)
}

/// A failure caused by `e` that cannot be retried.
pub(crate) fn fatal(e: impl Into<weir_engine::error::Cause>) -> Error {
    Error {
        message: String::new(),
        retry: false,
        cause: Some(e.into()),
    }
}

/// Bytes buffered before a file is written to.
const APPEND_BUFFER: usize = 1 << 20;

/// A file that grows by whole appends: a failed append leaves the file as it was, so the
/// same append can be made again (see [`Error::retry`]).
pub struct Appender {
    path: PathBuf,
    file: File,
    /// Bytes in the file; the bytes after them wait in `buffer`.
    written: u64,
    buffer: Vec<u8>,
}

impl Appender {
    /// Creates (or truncates) `path`, making its folder when missing.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let dir = parent_of(path);
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        Ok(Appender {
            path: path.to_path_buf(),
            file: File::create(path).map_err(io_at(path))?,
            written: 0,
            buffer: Vec::new(),
        })
    }

    /// Appends bytes (buffered).
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if !self.buffer.is_empty() && self.buffer.len() + bytes.len() > APPEND_BUFFER {
            self.write_buffer()?;
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    /// Bytes appended so far, written or buffered.
    pub fn len(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the buffered bytes; on an error, cuts the file back to the bytes it had.
    fn write_buffer(&mut self) -> Result<(), Error> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buffer) {
            let mut err = io_at(&self.path)(e);
            let written = self.written;
            if let Err(cut) = self
                .file
                .set_len(written)
                .and_then(|_| self.file.seek(SeekFrom::Start(written)).map(|_| ()))
            {
                err.message = format!(
                    "{} (and cutting it back failed: {cut})",
                    weir_engine::error::chain(&err)
                );
                err.cause = None;
                err.retry = false;
            }
            return Err(err);
        }
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// The file, for a writer that does not append whole batches (Parquet).
    pub fn into_file(self) -> File {
        self.file
    }

    /// Writes every appended byte and makes the file durable.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.write_buffer()?;
        self.file.sync_all().map_err(sync_failed(&self.path))
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The folder `path` is in (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Makes the entries of `dir` (a rename into it) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A line file committed per checkpoint (see the module docs).
pub struct CommittedLines {
    path: PathBuf,
    /// The final file's length once every pre-committed epoch is in.
    planned_len: u64,
    /// Pre-committed epochs not committed yet: (epoch, where they go in the final file).
    pending: Vec<(u64, u64)>,
    /// The epoch rows belong to now (the last barrier's + 1), and its side file.
    epoch: u64,
    side: Option<Appender>,
}

impl CommittedLines {
    /// Lines committed into `path`.
    pub fn new(path: &Path) -> Self {
        CommittedLines {
            path: path.to_path_buf(),
            planned_len: 0,
            pending: Vec::new(),
            epoch: 1,
            side: None,
        }
    }

    fn side_path(&self, epoch: u64) -> PathBuf {
        sibling(&self.path, &format!(".epoch-{epoch}"))
    }

    /// Whether the next byte appended is the first of the final file (for a CSV header).
    pub fn at_start(&self) -> bool {
        self.planned_len == 0 && !self.has_uncommitted()
    }

    /// Appends bytes to the current epoch. On an error nothing was appended, so the same
    /// call can be made again.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let side = match &mut self.side {
            Some(side) => side,
            None => self
                .side
                .insert(Appender::create(&self.side_path(self.epoch))?),
        };
        side.append(bytes)
    }

    /// Makes the epoch's rows durable and returns what committing needs. On an error
    /// nothing changed, so the same call can be made again.
    pub fn pre_commit(&mut self, epoch: u64) -> Result<Value, Error> {
        let (side_path, next_path) = (self.side_path(self.epoch), self.side_path(epoch));
        if let Some(side) = &mut self.side {
            side.sync()?;
            if !side.is_empty() {
                // (renamed already by a try that failed after it)
                if epoch != self.epoch && side_path.exists() {
                    std::fs::rename(&side_path, &next_path).map_err(io_at(&side_path))?;
                }
                // the side file's name (created this epoch, or renamed) is durable with its
                // folder: a power loss must not leave the checkpoint without it
                let dir = parent_of(&next_path);
                sync_dir(dir).map_err(sync_failed(dir))?;
                self.pending.push((epoch, self.planned_len));
                self.planned_len += side.len();
            } else {
                let _ = std::fs::remove_file(&side_path);
            }
            self.side = None;
        }
        self.epoch = epoch + 1;
        Ok(json!({ "length": self.planned_len, "pending": self.pending }))
    }

    /// Writes the side files of epochs up to `upto` into the final file.
    pub fn commit(&mut self, upto: u64) -> Result<(), Error> {
        let due: Vec<(u64, u64)> = self
            .pending
            .iter()
            .copied()
            .filter(|(e, _)| *e <= upto)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut out = self.open_final()?;
        for (i, &(epoch, at)) in due.iter().enumerate() {
            let end = self.pending.get(i + 1).map_or(self.planned_len, |p| p.1);
            if let Err(e) = self.write_side(&mut out, epoch, at, end - at) {
                // In a worker pool, the next owner of a partition may have finished this
                // commit already (see `roll_forward`): the side file is gone and its bytes
                // are in place.
                let have = out.metadata().map_err(io_at(&self.path))?.len();
                if self.side_path(epoch).exists() || have < end {
                    return Err(e);
                }
            }
        }
        out.sync_all().map_err(sync_failed(&self.path))?;
        for &(epoch, _) in &due {
            let _ = std::fs::remove_file(self.side_path(epoch));
        }
        self.pending.retain(|(e, _)| *e > upto);
        Ok(())
    }

    /// The final file, for writing at given places (created when missing, never truncated).
    fn open_final(&self) -> Result<File, Error> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(io_at(&self.path))
    }

    /// Copies epoch `epoch`'s side file into `out` at byte `at`; it must hold `len` bytes, as
    /// its checkpoint recorded (a side file changed since would leave a hole or overwrite
    /// the next epoch's rows).
    fn write_side(&self, out: &mut File, epoch: u64, at: u64, len: u64) -> Result<(), Error> {
        let side = self.side_path(epoch);
        let mut input = File::open(&side).map_err(io_at(&side))?;
        let have = input.metadata().map_err(io_at(&side))?.len();
        if have != len {
            return Err(Error::from(format!(
                "{} has {have} bytes but the checkpoint recorded {len}: the file was changed \
                 outside weir; move the output and its side files away and start from an empty \
                 checkpoint folder",
                side.display()
            )));
        }
        out.seek(SeekFrom::Start(at)).map_err(io_at(&self.path))?;
        let copied = std::io::copy(&mut input, out).map_err(io_at(&self.path))?;
        if copied != len {
            return Err(Error::from(format!(
                "{}: {copied} bytes read of the {len} its checkpoint recorded",
                side.display()
            )));
        }
        Ok(())
    }

    /// Starts from checkpoint `from` (its epoch and what `pre_commit` returned then), or from
    /// nothing: finishes its commits, cuts the file to its length, removes other side files.
    pub fn recover(&mut self, from: Option<(u64, &Value)>) -> Result<(), Error> {
        let (epoch, length, pending) = match from {
            Some((epoch, info)) => {
                let length = info.get("length").and_then(Value::as_u64).unwrap_or(0);
                let pending: Vec<(u64, u64)> = info
                    .get("pending")
                    .and_then(|p| serde_json::from_value(p.clone()).ok())
                    .unwrap_or_default();
                (epoch, length, pending)
            }
            None => (0, 0, Vec::new()),
        };
        std::fs::create_dir_all(parent_of(&self.path)).map_err(io_at(parent_of(&self.path)))?;
        let mut out = self.open_final()?;
        for (i, &(e, at)) in pending.iter().enumerate() {
            if self.side_path(e).exists() {
                let end = pending.get(i + 1).map_or(length, |p| p.1);
                self.write_side(&mut out, e, at, end.saturating_sub(at))?;
            }
        }
        let have = out.metadata().map_err(io_at(&self.path))?.len();
        if have < length {
            return Err(Error::from(format!(
                "{} has {have} bytes but the checkpoint it restarts from committed {length}: \
                 the file was changed outside weir; move it away and start from an empty checkpoint folder",
                self.path.display()
            )));
        }
        out.set_len(length).map_err(io_at(&self.path))?;
        out.sync_all().map_err(sync_failed(&self.path))?;
        drop(out);
        self.remove_side_files()?;
        self.planned_len = length;
        self.pending.clear();
        self.epoch = epoch + 1;
        self.side = None;
        Ok(())
    }

    /// Finishes the commits of checkpoint `info` (what `pre_commit` returned) of a line file
    /// another process wrote (a pool worker that died): writes the side files it lists that
    /// are still there at their places and removes them. It neither cuts the file nor touches
    /// other side files, so it is harmless when that process committed them already.
    pub fn roll_forward(path: &Path, info: &Value) -> Result<(), Error> {
        let lines = CommittedLines::new(path);
        let pending: Vec<(u64, u64)> = info
            .get("pending")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default();
        let length = info.get("length").and_then(Value::as_u64).unwrap_or(0);
        // (epoch, at, len) of the side files still there
        let due: Vec<(u64, u64, u64)> = pending
            .iter()
            .enumerate()
            .map(|(i, &(e, at))| {
                let end = pending.get(i + 1).map_or(length, |p| p.1);
                (e, at, end.saturating_sub(at))
            })
            .filter(|(e, _, _)| lines.side_path(*e).exists())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut out = lines.open_final()?;
        for &(epoch, at, len) in &due {
            match lines.write_side(&mut out, epoch, at, len) {
                Ok(()) => {}
                // committed meanwhile by its writer
                Err(_) if !lines.side_path(epoch).exists() => {}
                Err(e) => return Err(e),
            }
        }
        out.sync_all().map_err(sync_failed(path))?;
        for &(epoch, _, _) in &due {
            let _ = std::fs::remove_file(lines.side_path(epoch));
        }
        Ok(())
    }

    fn remove_side_files(&self) -> Result<(), Error> {
        let dir = parent_of(&self.path);
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let prefix = format!("{name}.epoch-");
        for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            let n = entry.file_name();
            let n = n.to_string_lossy();
            if n.strip_prefix(&prefix)
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
            {
                std::fs::remove_file(entry.path()).map_err(io_at(&entry.path()))?;
            }
        }
        sync_dir(dir).map_err(sync_failed(dir))
    }

    /// Whether rows were written after the last barrier (they are not committed).
    pub fn has_uncommitted(&self) -> bool {
        self.side.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// At the end of a run: commits the lines appended after the last barrier as one more
    /// epoch, which no checkpoint holds (a restart from the last checkpoint cuts them off,
    /// see [`Self::recover`], and whoever wrote them writes them again).
    /// Made again after an error, it finishes what the failed call began.
    pub fn commit_tail(&mut self) -> Result<(), Error> {
        if self.has_uncommitted() {
            let epoch = self.epoch;
            self.pre_commit(epoch)?;
        }
        if let Some(&(last, _)) = self.pending.last() {
            self.commit(last)?;
        }
        Ok(())
    }
}

/// A folder of Parquet part files committed per checkpoint (see the module docs).
pub struct CommittedParts {
    dir: PathBuf,
    schema: SchemaRef,
    props: WriterProperties,
    epoch: u64,
    writer: Option<ParquetRows<File>>,
}

const PART_EXT: &str = "parquet";

impl CommittedParts {
    /// Parts of rows of `schema` in folder `dir`.
    pub fn new(dir: &Path, schema: SchemaRef, props: WriterProperties) -> Result<Self, Error> {
        if dir.is_file() {
            return Err(Error::from(format!(
                "{} is a file, but a checkpointed Parquet output is a folder of part files \
                 (one per checkpoint): move the file away or choose another path",
                dir.display()
            )));
        }
        Ok(CommittedParts {
            dir: dir.to_path_buf(),
            schema,
            props,
            epoch: 1,
            writer: None,
        })
    }

    /// A part's file: hidden (a leading dot, which Parquet readers skip) until committed.
    fn part(&self, epoch: u64, state: &str) -> PathBuf {
        let hidden = if state.is_empty() { "" } else { "." };
        self.dir
            .join(format!("{hidden}part-{epoch:010}.{PART_EXT}{state}"))
    }

    /// Writes rows of the current epoch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        // Opening the part changes nothing when it fails and is retried; a failed write leaves
        // the part half written, so it fails the run (a restart recovers from the checkpoint).
        let w = match &mut self.writer {
            Some(w) => w,
            None => {
                std::fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
                let path = self.part(self.epoch, ".inprogress");
                let f = File::create(&path).map_err(io_at(&path))?;
                self.writer.insert(
                    ParquetRows::new(f, self.schema.clone(), self.props.clone()).map_err(fatal)?,
                )
            }
        };
        w.write(batch).map_err(fatal)
    }

    /// Closes the epoch's part (durable, not visible yet).
    pub fn pre_commit(&mut self, epoch: u64) -> Result<Value, Error> {
        if let Some(w) = self.writer.take() {
            let file = w.finish().map_err(fatal)?;
            file.sync_all().map_err(fatal)?;
            std::fs::rename(
                self.part(self.epoch, ".inprogress"),
                self.part(epoch, ".pending"),
            )
            .map_err(fatal)?;
        }
        // the part's `.pending` name is durable before the checkpoint records it (synced
        // again by a call made again after a failure)
        if self.dir.exists() {
            sync_dir(&self.dir).map_err(sync_failed(&self.dir))?;
        }
        self.epoch = epoch + 1;
        Ok(Value::Null)
    }

    /// Publishes the parts of epochs up to `upto`.
    pub fn commit(&mut self, upto: u64) -> Result<(), Error> {
        if !self.dir.exists() {
            return Ok(()); // no part written yet
        }
        for (epoch, state) in self.parts()? {
            if state == ".pending" && epoch <= upto {
                match std::fs::rename(self.part(epoch, ".pending"), self.part(epoch, "")) {
                    Ok(()) => {}
                    // published meanwhile by a pool worker finishing this commit
                    Err(e)
                        if e.kind() == std::io::ErrorKind::NotFound
                            && self.part(epoch, "").exists() => {}
                    Err(e) => return Err(io(e)),
                }
            }
        }
        sync_dir(&self.dir).map_err(sync_failed(&self.dir))
    }

    /// Starts from checkpoint epoch `from` (or nothing): publishes its pending parts and
    /// removes every part written after it.
    pub fn recover(&mut self, from: Option<u64>) -> Result<(), Error> {
        let upto = from.unwrap_or(0);
        if self.dir.exists() {
            for (epoch, state) in self.parts()? {
                let path = self.part(epoch, &state);
                if epoch > upto || state == ".inprogress" {
                    std::fs::remove_file(&path).map_err(io_at(&path))?;
                } else if state == ".pending" {
                    std::fs::rename(&path, self.part(epoch, "")).map_err(io_at(&path))?;
                }
            }
            sync_dir(&self.dir).map_err(sync_failed(&self.dir))?;
        }
        self.epoch = upto + 1;
        Ok(())
    }

    /// Publishes the pending parts up to `upto` of a folder another process wrote (a pool
    /// worker that died); see [`CommittedLines::roll_forward`].
    pub fn roll_forward(dir: &Path, upto: u64) -> Result<(), Error> {
        if !dir.exists() {
            return Ok(());
        }
        let parts = CommittedParts {
            dir: dir.to_path_buf(),
            schema: Arc::new(arrow::datatypes::Schema::empty()),
            props: WriterProperties::default(),
            epoch: 1,
            writer: None,
        };
        for (epoch, state) in parts.parts()? {
            if state == ".pending" && epoch <= upto {
                match std::fs::rename(parts.part(epoch, ".pending"), parts.part(epoch, "")) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(e)),
                }
            }
        }
        sync_dir(dir).map_err(sync_failed(dir))
    }

    /// (epoch, state suffix) of every part file in the folder.
    fn parts(&self) -> Result<Vec<(u64, String)>, Error> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_at(&self.dir))? {
            let name = entry.map_err(io_at(&self.dir))?.file_name();
            let name = name.to_string_lossy();
            let Some(rest) = name.trim_start_matches('.').strip_prefix("part-") else {
                continue;
            };
            let Some((epoch, tail)) = rest.split_once('.') else {
                continue;
            };
            let Ok(epoch) = epoch.parse::<u64>() else {
                continue;
            };
            let state = match tail.strip_prefix(PART_EXT) {
                Some(s @ ("" | ".pending" | ".inprogress")) => s.to_string(),
                _ => continue,
            };
            out.push((epoch, state));
        }
        out.sort();
        Ok(out)
    }

    /// Whether rows were written after the last barrier (they are not committed).
    pub fn has_uncommitted(&self) -> bool {
        self.writer.is_some()
    }
}

/// Reports the error of a committed output as the sink's error.
pub(crate) fn sink_err(name: &str, path: &Path) -> impl Fn(Error) -> EngineError {
    let name = name.to_string();
    let path = path.display().to_string();
    move |e| e.into_engine(|e| EngineError::sink_caused(&name, &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I/O error (EIO) is retried where the call changed nothing, never when an fsync
    /// failed: the pages a failed writeback lost are marked clean, and a second fsync would
    /// succeed on them.
    #[test]
    fn a_failed_fsync_is_never_retried() {
        let eio = || std::io::Error::from_raw_os_error(5);
        assert!(io(eio()).retry);
        let path = Path::new("/data/out.ndjson.epoch-3");
        let e = sync_failed(path)(eio());
        assert!(!e.retry);
        assert!(e.to_string().contains("out.ndjson.epoch-3"), "{e}");
        let full = sync_failed(path)(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!full.retry);
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weir-committed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_io_failure_stays_the_cause_of_the_sinks_error() {
        let path = Path::new("/data/out.ndjson");
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e = sink_err("out", path)(io_error(path, full));
        assert!(
            matches!(e, EngineError::Unavailable(_)),
            "a full disk is retried"
        );
        assert_eq!(e.to_string(), "sink `out`: /data/out.ndjson");
        // the file is named once, though both the sink and the file's error name it
        assert_eq!(
            e.chain().to_string(),
            "sink `out`: /data/out.ndjson: no space left"
        );
        // the I/O error is a value at the end of the chain
        let mut last: &(dyn std::error::Error + 'static) = &e;
        while let Some(next) = last.source() {
            last = next;
        }
        let io = last
            .downcast_ref::<std::io::Error>()
            .expect("the I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
    }

    #[test]
    fn a_tail_committed_at_the_end_is_cut_off_by_a_restart_from_the_last_checkpoint() {
        let dir = tempdir("tail");
        let path = dir.join("dead.ndjson");
        let mut f = CommittedLines::new(&path);
        f.recover(None).unwrap();
        f.append(b"a\n").unwrap();
        let info1 = f.pre_commit(1).unwrap();
        f.commit(1).unwrap();
        f.commit_tail().unwrap(); // nothing after the barrier: nothing changes
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        f.append(b"late\n").unwrap();
        f.commit_tail().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nlate\n");
        assert!(!f.has_uncommitted());
        let mut again = CommittedLines::new(&path);
        again.recover(Some((1, &info1))).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
    }

    #[test]
    fn lines_become_visible_on_commit_and_recovery_cuts_back_to_the_checkpoint() {
        let dir = tempdir("lines");
        let path = dir.join("out.ndjson");
        let mut f = CommittedLines::new(&path);
        f.recover(None).unwrap();
        f.append(b"a\n").unwrap();
        let info1 = f.pre_commit(1).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        f.append(b"b\n").unwrap();
        let info2 = f.pre_commit(2).unwrap();
        f.commit(1).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        f.append(b"c\n").unwrap(); // never pre-committed
                                   // crash; checkpoint 2 completed but epoch 2 was never committed
        let mut g = CommittedLines::new(&path);
        g.recover(Some((2, &info2))).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        // recovering from checkpoint 1 instead cuts back
        let mut h = CommittedLines::new(&path);
        h.recover(Some((1, &info1))).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
        h.append(b"x\n").unwrap();
        h.pre_commit(2).unwrap();
        h.commit(2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nx\n");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "side files are removed");
    }

    /// A side file whose length is not the one its checkpoint recorded (changed outside
    /// weir) is refused by a commit, a recovery and a roll-forward: copied, it would leave a
    /// hole of zeros or overwrite the next epoch's rows.
    #[test]
    fn a_side_file_of_another_length_than_recorded_is_refused() {
        let dir = tempdir("side-length");
        let path = dir.join("out.ndjson");
        let mut f = CommittedLines::new(&path);
        f.recover(None).unwrap();
        f.append(b"a\n").unwrap();
        f.pre_commit(1).unwrap();
        f.append(b"b\n").unwrap();
        let info2 = f.pre_commit(2).unwrap();
        // epoch 1's side file shrinks: epoch 2's rows would follow a hole
        std::fs::write(dir.join("out.ndjson.epoch-1"), b"").unwrap();
        let e = f.commit(2).unwrap_err().to_string();
        assert!(
            e.contains("has 0 bytes but the checkpoint recorded 2"),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"", "nothing committed");
        let e = CommittedLines::new(&path)
            .recover(Some((2, &info2)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("recorded 2"), "{e}");
        // and grows: it would overwrite epoch 2's rows
        std::fs::write(dir.join("out.ndjson.epoch-1"), b"a\nzz\n").unwrap();
        let e = CommittedLines::roll_forward(&path, &info2).unwrap_err();
        assert!(e.to_string().contains("has 5 bytes"), "{e}");
        // the side files as they were: every path commits
        std::fs::write(dir.join("out.ndjson.epoch-1"), b"a\n").unwrap();
        f.commit(2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
    }

    #[test]
    fn a_dead_writer_s_checkpoint_is_rolled_forward_once() {
        let dir = tempdir("roll");
        let path = dir.join("out.w1.ndjson");
        let mut f = CommittedLines::new(&path);
        f.recover(None).unwrap();
        f.append(b"a\n").unwrap();
        f.pre_commit(1).unwrap();
        f.commit(1).unwrap();
        f.append(b"b\n").unwrap();
        let info2 = f.pre_commit(2).unwrap();
        f.append(b"c\n").unwrap();
        f.pre_commit(3).unwrap();
        // the writer dies with checkpoint 2 complete but not committed, 3 pre-committed
        drop(f);
        CommittedLines::roll_forward(&path, &info2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        // a second roll-forward (another new owner) changes nothing
        CommittedLines::roll_forward(&path, &info2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        // epoch 3 never completed: its side file stays invisible
        assert!(dir.join("out.w1.ndjson.epoch-3").exists());
    }

    #[test]
    fn a_live_writer_commits_what_another_worker_rolled_forward() {
        let dir = tempdir("roll-live");
        let path = dir.join("out.w2.ndjson");
        let mut f = CommittedLines::new(&path);
        f.recover(None).unwrap();
        f.append(b"a\n").unwrap();
        let info1 = f.pre_commit(1).unwrap();
        f.append(b"b\n").unwrap();
        f.pre_commit(2).unwrap();
        // the next owner of one of its partitions finishes commit 1 first
        CommittedLines::roll_forward(&path, &info1).unwrap();
        f.commit(2).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
    }

    #[test]
    fn parquet_parts_follow_the_checkpoints() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let dir = tempdir("parts").join("out.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        let props = WriterProperties::builder().build();
        let mut p = CommittedParts::new(&dir, schema.clone(), props.clone()).unwrap();
        p.recover(None).unwrap();
        p.write(&batch).unwrap();
        p.pre_commit(1).unwrap();
        p.write(&batch).unwrap();
        p.pre_commit(2).unwrap();
        p.commit(1).unwrap();
        p.write(&batch).unwrap();
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&dir),
            [
                ".part-0000000002.parquet.pending",
                ".part-0000000003.parquet.inprogress",
                "part-0000000001.parquet"
            ]
        );
        let mut q = CommittedParts::new(&dir, schema, props).unwrap();
        q.recover(Some(1)).unwrap();
        assert_eq!(names(&dir), ["part-0000000001.parquet"]);
    }
}
