//! Files: NDJSON sources (one partition per file), NDJSON/CSV/Parquet sinks and the NDJSON
//! dead-letter file. With checkpoints a file grows by whole checkpoints (NDJSON, CSV) or is a
//! folder of part files, one committed per checkpoint (Parquet); a pool worker writes its own
//! files, and the next owner of a dead worker's partitions finishes that worker's commit.

use std::path::{Path, PathBuf};

use weir_engine::checkpoint::Manifest;
use weir_engine::job::{DeadLetterSink, Sink};
use weir_engine::EngineError;
use weir_sinks::committed::{CommittedLines, CommittedParts};
use weir_sinks::{
    CommittedDeadLetterFile, CommittedFileSink, DeadLetterFile, FileFormat, FileSink,
};

use super::{
    Attach, DeadLetterConnector, DeadLetterKind, OpenSink, SinkConnector, SinkKind, SinkPlanning,
};
use crate::error::PipelineError;
use crate::run::RunError;

/// Its YAML blocks, as a pipeline file writes them.
pub mod doc;
mod source;

pub use source::SOURCE;

/// The `file` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "file",
    name: "file",
    own_format: Some("a file's format follows its extension (.ndjson, .csv, .parquet)"),
    declared: |d| d.file.is_some(),
    takes_format: false,
    secrets: super::none,
    plan: plan_sink,
};

/// The `file` dead-letter kind.
pub const DEAD_LETTER: DeadLetterKind = DeadLetterKind {
    key: "file",
    declared: |d| d.file.is_some(),
    secrets: super::none,
    plan: |_, ctx, d| {
        let f = d
            .value
            .file
            .as_ref()
            .ok_or_else(|| ctx.err(&d.referenced, "dead_letter: `file` is missing"))?;
        Ok(Box::new(FileDeadLetter {
            path: ctx.path(&f.value.path.value),
        }))
    },
};

/// `path` with `tag` before its extension: `out/w.ndjson` → `out/w.<tag>.ndjson`.
pub fn tagged_path(path: &Path, tag: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{tag}"),
    };
    path.with_file_name(name)
}

/// A file sink: its path and format (from the extension).
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub path: PathBuf,
    pub format: FileFormat,
}

fn plan_sink(p: &SinkPlanning) -> Result<Box<dyn SinkConnector>, PipelineError> {
    let (ctx, kname) = (p.ctx, p.name);
    let f = p.sink.value.file.as_ref().ok_or_else(|| {
        ctx.err(
            &p.sink.referenced,
            format!("sink `{kname}`: `file` is missing"),
        )
    })?;
    let path = ctx.path(&f.value.path.value);
    let format = FileFormat::from_path(&path).ok_or_else(|| {
        ctx.err(
            &f.value.path.referenced,
            format!(
                "file sink `{kname}`: unknown extension of `{}`: use .ndjson, .csv or .parquet",
                f.value.path.value
            ),
        )
    })?;
    Ok(Box::new(FileTarget { path, format }))
}

/// `path` named the same way whichever way the run was started (`weir run p.yaml` from the
/// pipeline's folder, `weir run ../x/p.yaml`, or `weir run /srv/x/p.yaml`): its longest
/// existing ancestor canonical (absolute, no `..`, symbolic links followed), the rest as is.
/// For what a restore compares (fingerprints, a file source's partition keys).
pub(crate) fn stable_path(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        let here = if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        };
        if let Ok(found) = std::fs::canonicalize(here) {
            return rest.iter().rev().fold(found, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        }
    }
}

/// [`stable_path`], as text.
fn stable(path: &Path) -> String {
    stable_path(path).display().to_string()
}

impl SinkConnector for FileTarget {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fingerprint(&self) -> String {
        format!("{:?} file {}", self.format, stable(&self.path))
    }

    fn former_fingerprint(&self) -> Option<String> {
        Some(format!("{:?} file {}", self.format, self.path.display()))
    }

    fn summary(&self) -> String {
        let name = self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        format!("{:?} file {name}", self.format).to_lowercase()
    }

    fn describe(&self, checkpointed: bool) -> String {
        let what = format!("{:?} file {}", self.format, self.path.display()).to_lowercase();
        match (checkpointed, self.format) {
            (false, _) => format!("{what}; written when the run ends"),
            (true, FileFormat::Parquet) => format!(
                "{what}; exactly once: a folder of part files, one committed per checkpoint"
            ),
            (true, _) => format!("{what}; exactly once: grows by whole checkpoints"),
        }
    }

    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        if let Some(prev) = at.previous {
            if self.format != FileFormat::Ndjson && prev != at.schema {
                return Err(at.err(format!("sink `{}` already receives rows of another shape: a CSV or Parquet file holds one output; use one sink per window or view", at.reference.value)));
            }
        }
        Ok(())
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        let (name, schema) = (at.name, at.schema.clone());
        Ok(if at.checkpointed {
            Box::new(CommittedFileSink::create(
                name,
                &self.path,
                self.format,
                schema,
            )?)
        } else {
            Box::new(FileSink::create(name, &self.path, self.format, schema)?)
        })
    }

    /// Files beside the live run's, never into them.
    fn replayed(&self, suffix: &str) -> Box<dyn SinkConnector> {
        Box::new(FileTarget {
            path: tagged_path(&self.path, suffix),
            format: self.format,
        })
    }

    fn for_worker(&mut self, worker: &str) {
        self.path = tagged_path(&self.path, worker);
    }

    fn roll_forward(
        &self,
        sink: &str,
        worker: &str,
        _adopter: &str,
        m: &Manifest,
    ) -> Result<(), EngineError> {
        let path = tagged_path(&self.path, worker);
        let result = match self.format {
            FileFormat::Parquet => CommittedParts::roll_forward(&path, m.epoch),
            FileFormat::Ndjson | FileFormat::Csv => match m.sinks.get(sink) {
                Some(info) => CommittedLines::roll_forward(&path, info),
                None => Ok(()),
            },
        };
        result.map_err(|e| EngineError::sink_caused(sink, path.display(), e))
    }

    fn local_file(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// The NDJSON dead-letter file.
#[derive(Debug, Clone)]
pub struct FileDeadLetter {
    pub path: PathBuf,
}

impl DeadLetterConnector for FileDeadLetter {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fingerprint(&self) -> String {
        format!("file {}", stable(&self.path))
    }

    fn former_fingerprint(&self) -> Option<String> {
        Some(format!("file {}", self.path.display()))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self, checkpointed: bool) -> Result<Box<dyn DeadLetterSink>, RunError> {
        Ok(if checkpointed {
            Box::new(CommittedDeadLetterFile::create(&self.path))
        } else {
            Box::new(DeadLetterFile::create(&self.path)?)
        })
    }

    fn local_file(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn replayed(&self, suffix: &str, _fallback: &Path) -> Box<dyn DeadLetterConnector> {
        Box::new(FileDeadLetter {
            path: tagged_path(&self.path, suffix),
        })
    }

    fn for_worker(&mut self, worker: &str) {
        self.path = tagged_path(&self.path, worker);
    }

    fn roll_forward(&self, worker: &str, m: &Manifest) -> Result<(), EngineError> {
        let path = tagged_path(&self.path, worker);
        CommittedLines::roll_forward(&path, &m.dead_letter)
            .map_err(|e| EngineError::dead_letter_caused(path.display(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_files_carry_its_id_before_the_extension() {
        assert_eq!(
            tagged_path(Path::new("out/w.ndjson"), "w1"),
            PathBuf::from("out/w.w1.ndjson")
        );
        assert_eq!(
            tagged_path(Path::new("out/parts.parquet"), "weir-2"),
            PathBuf::from("out/parts.weir-2.parquet")
        );
        assert_eq!(tagged_path(Path::new("dead"), "a"), PathBuf::from("dead.a"));
    }

    /// A checkpoint of worker `w1` whose sink `out` pre-committed `info`.
    fn manifest(epoch: u64, info: serde_json::Value) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": 2, "pipeline": "p", "epoch": epoch, "created_ms": 0, "finished": false,
            "fingerprint": {}, "partitions": [], "operators": [], "sinks": { "out": info },
            "dead_letter": null, "counters": {}, "state_bytes": 0
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Through the connector's hooks only, as a pool does: worker `w1` writes its own file
    /// (`for_worker`), dies after checkpoint 1 completed but before committing it, and the
    /// sink as planned finishes that commit (`roll_forward`), once however often asked.
    #[test]
    fn the_file_sink_rolls_a_dead_workers_committed_output_forward() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let dir = std::env::temp_dir().join(format!("weir-file-roll-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for (file, format) in [
            ("w.ndjson", FileFormat::Ndjson),
            ("w.parquet", FileFormat::Parquet),
        ] {
            let planned = FileTarget {
                path: dir.join(file),
                format,
            };
            let mut worker = planned.clone();
            SinkConnector::for_worker(&mut worker, "w1");
            let mut deliveries = Vec::new();
            let mut sink = worker
                .open(&mut OpenSink {
                    pipeline: "p",
                    name: "out",
                    schema: &schema,
                    checkpointed: true,
                    replaces: None,
                    deliveries: &mut deliveries,
                })
                .unwrap_or_else(|e| panic!("{e}"));
            sink.recover(None).unwrap_or_else(|e| panic!("{e}"));
            sink.write(&batch).unwrap_or_else(|e| panic!("{e}"));
            sink.flush().unwrap_or_else(|e| panic!("{e}"));
            let info = sink.pre_commit(1).unwrap_or_else(|e| panic!("{e}"));
            drop(sink); // dies before the commit
            let written = tagged_path(&planned.path, "w1");
            let rows = || match format {
                FileFormat::Parquet => std::fs::read_dir(&written)
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                            .count()
                    })
                    .unwrap_or(0),
                _ => std::fs::read_to_string(&written)
                    .map(|t| t.lines().count())
                    .unwrap_or(0),
            };
            let before = rows();
            let m = manifest(1, info);
            for _ in 0..2 {
                SinkConnector::roll_forward(&planned, "out", "w1", "w2", &m)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                let expected = if format == FileFormat::Parquet { 1 } else { 2 };
                assert_eq!((before, rows()), (0, expected), "{file}");
            }
        }
    }
}
