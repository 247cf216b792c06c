//! Emitted windows kept for SQL (`retain`) in checkpoints, so that a restarted run still shows
//! them (`is_final = true`) for as long as `retain` says.
//!
//! They are immutable once emitted, so each is written once: the first checkpoint after a
//! window's emission writes its rows to `chk-<epoch>/op-<index>-emitted.arrow` (Arrow IPC, one
//! batch per window, the table's own columns), and every later manifest lists the files it
//! still retains ([`RetainedFile`]) until `retain` passes their newest window. Garbage
//! collection keeps a listed file after its checkpoint's other files are gone. A worker
//! pool writes none: its windows are cut per partition, and a worker's emitted rows are not.

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::store::{chk_dir, sha256_hex, CheckpointStore};
use crate::EngineError;

/// A file of emitted windows a manifest retains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedFile {
    /// The checkpoint whose folder holds it.
    pub epoch: u64,
    pub file: String,
    /// The newest window end in it (Unix ms): the file is listed until `retain` passes it.
    pub newest_end: i64,
    /// SHA-256 (hex) of its bytes, checked when read back.
    pub sha256: String,
}

impl RetainedFile {
    /// Its name in the checkpoint store.
    pub fn name(&self) -> String {
        format!("{}/{}", chk_dir(self.epoch), self.file)
    }
}

/// One operator's emitted windows at a checkpoint barrier, as the merger gives them.
#[derive(Debug, Clone)]
pub struct RetainedPart {
    /// Windows emitted since the previous checkpoint barrier: (window end, rows).
    pub new: Vec<(i64, RecordBatch)>,
    /// Windows ending at or before this are no longer retained.
    pub keep_after: i64,
    /// `new` holds every retained window: it replaces the files listed so far.
    pub whole: bool,
}

impl Default for RetainedPart {
    fn default() -> Self {
        RetainedPart {
            new: Vec::new(),
            keep_after: i64::MIN,
            whole: false,
        }
    }
}

/// A file a checkpoint is to store: its name in the store and its bytes.
pub(super) type NewFile = (String, Vec<u8>);

/// The files operator `op`'s manifest lists at checkpoint `epoch`: those of the previous one
/// still retained (none when `part` is whole), plus a file of `part`'s windows, if any; and
/// that new file's name and bytes, for the checkpoint to store.
pub(super) fn next_files(
    epoch: u64,
    op: usize,
    previous: &[RetainedFile],
    part: RetainedPart,
) -> Result<(Vec<RetainedFile>, Option<NewFile>), EngineError> {
    let previous = if part.whole { &[][..] } else { previous };
    let mut files: Vec<RetainedFile> = previous
        .iter()
        .filter(|f| f.newest_end > part.keep_after)
        .cloned()
        .collect();
    let new: Vec<&(i64, RecordBatch)> = part
        .new
        .iter()
        .filter(|(end, _)| *end > part.keep_after)
        .collect();
    let Some(newest_end) = new.iter().map(|(end, _)| *end).max() else {
        return Ok((files, None));
    };
    let bytes = encode(new.iter().map(|(_, b)| b))?;
    let file = RetainedFile {
        epoch,
        file: format!("op-{op}-emitted.arrow"),
        newest_end,
        sha256: sha256_hex(&bytes),
    };
    let name = file.name();
    files.push(file);
    Ok((files, Some((name, bytes))))
}

fn encode<'a>(batches: impl Iterator<Item = &'a RecordBatch>) -> Result<Vec<u8>, EngineError> {
    let mut batches = batches.peekable();
    let Some(first) = batches.peek() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &first.schema())
            .map_err(|e| EngineError::checkpoint_caused("encoding emitted windows", e))?;
        for b in batches {
            w.write(b)
                .map_err(|e| EngineError::checkpoint_caused("encoding emitted windows", e))?;
        }
        w.finish()
            .map_err(|e| EngineError::checkpoint_caused("encoding emitted windows", e))?;
    }
    Ok(out)
}

/// The emitted windows `files` hold, one batch per window. A file that is missing, damaged
/// or unreadable is skipped with a warning: these rows only serve SQL, and the restore goes
/// on without them.
pub(super) fn load(store: &CheckpointStore, files: &[RetainedFile]) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for f in files {
        let at = format!("{}/{}", store.location(), f.name());
        let bytes = match store.get(&f.name()) {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::warn!(
                    file = at,
                    "emitted windows kept for SQL are missing: skipped"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(file = at, error = %e, "emitted windows kept for SQL cannot be read: skipped");
                continue;
            }
        };
        if sha256_hex(&bytes) != f.sha256 {
            tracing::warn!(
                file = at,
                "emitted windows kept for SQL differ from their checksum: skipped"
            );
            continue;
        }
        let batches = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .and_then(|r| r.collect::<Result<Vec<_>, _>>());
        match batches {
            Ok(b) => out.extend(b),
            Err(e) => {
                tracing::warn!(file = at, error = %e, "emitted windows kept for SQL do not decode: skipped")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn window(end: i64, count: i64) -> (i64, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "window_end",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("events", DataType::Int64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![end]).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![count])),
            ],
        )
        .unwrap();
        (end, rows)
    }

    #[test]
    fn emitted_windows_are_written_once_and_listed_while_retained() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
        let part = |new: Vec<(i64, RecordBatch)>, keep_after| RetainedPart {
            new,
            keep_after,
            whole: false,
        };
        let next = |epoch, previous: &[RetainedFile], part| {
            let (files, new) = next_files(epoch, 0, previous, part).unwrap();
            if let Some((name, bytes)) = new {
                store.put(&name, bytes).unwrap();
            }
            files
        };
        // epoch 1: two windows emitted
        let one = next(1, &[], part(vec![window(60, 1), window(120, 2)], 0));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].newest_end, 120);
        // epoch 2: nothing new: the same list, no new file
        let two = next(2, &one, part(vec![], 0));
        assert_eq!(two, one);
        assert!(store
            .get("chk-0000000002/op-0-emitted.arrow")
            .unwrap()
            .is_none());
        // epoch 3: one more window, the first file still retained
        let three = next(3, &two, part(vec![window(180, 3)], 60));
        assert_eq!(three.len(), 2);
        let rows = load(&store, &three);
        let ends: Vec<i64> = rows
            .iter()
            .map(|b| {
                let a = b.column(0).as_any();
                a.downcast_ref::<TimestampMillisecondArray>()
                    .unwrap()
                    .value(0)
            })
            .collect();
        assert_eq!(ends, vec![60, 120, 180], "one batch per window, in order");
        // `retain` passed the first file's newest window: it leaves the list
        let four = next(4, &three, part(vec![], 120));
        assert_eq!(four.len(), 1);
        assert_eq!(four[0].epoch, 3);
        // every retained window in one file: it replaces the list
        let mut whole = part(vec![window(180, 3), window(240, 4)], 120);
        whole.whole = true;
        let five = next(5, &three, whole);
        assert_eq!(five.len(), 1);
        assert_eq!((five[0].epoch, five[0].newest_end), (5, 240));
        assert_eq!(load(&store, &five).len(), 2);
        // a damaged file is skipped, not an error
        store.put(&four[0].name(), b"not arrow".to_vec()).unwrap();
        assert!(load(&store, &four).is_empty());
    }
}
