//! The `file` source: NDJSON files (a file, a folder or a glob), one partition per file.

use std::path::{Path, PathBuf};

use weir_sources::{resolve_files, FileReader};

use super::stable_path;

use crate::connectors::sources::{
    OpenSource, OpenedSource, PlannedInput, SourceConnector, SourceKind,
};
use crate::run::RunError;

/// The `file` source kind.
pub const SOURCE: SourceKind = SourceKind {
    key: "file",
    name: "file",
    plural: "files",
    replays: false,
    pooled: None,
    declared: |d| d.file.is_some(),
    reads_avro: false,
    secrets: crate::connectors::none,
    plan: |p| {
        let f = p.source.value.file.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.source.referenced,
                format!("source `{}`: `file` is missing", p.name),
            )
        })?;
        let path = p.ctx.path(&f.value.path.value);
        let resolved = resolve_files(&path)
            .map_err(|e| p.ctx.err(&f.value.path.referenced, "").caused_by(e))?;
        let relative = Path::new(&f.value.path.value).is_relative();
        let (files, keys) = named_files(&resolved, relative.then_some(p.ctx.dir.as_path()));
        let former_keys = resolved.iter().map(|f| f.display().to_string()).collect();
        let max_line_bytes = f
            .value
            .max_line_bytes
            .unwrap_or(weir_sources::file::MAX_LINE_BYTES)
            .max(weir_sources::file::CHUNK_BYTES as u64);
        Ok(PlannedInput::of(Box::new(FileInput {
            files,
            keys,
            former_keys,
            max_line_bytes,
        })))
    },
};

/// The files `resolved` (from a `path` relative to the pipeline's folder `dir`, or absolute
/// when `None`) named the same way however the run was started (`weir run p.yaml` from the
/// pipeline's folder, or `weir run /srv/p.yaml`): each file's path under the pipeline's
/// folder made stable (see [`stable_path`]), shown in errors and dead letters, and its
/// partition key in checkpoints: its path relative to the pipeline's folder (`in/a.ndjson`,
/// so that a restore finds it after the folder moved), or its stable path.
fn named_files(resolved: &[PathBuf], dir: Option<&Path>) -> (Vec<PathBuf>, Vec<String>) {
    let stable_dir = dir.map(stable_path);
    // (`.` components dropped: a glob's matches lose the `./` its pattern started with)
    let dir = dir.map(without_dots);
    resolved
        .iter()
        .map(without_dots)
        .map(|f| {
            let under = dir.as_deref().zip(stable_dir.as_ref()).and_then(|(d, s)| {
                let rel = f.strip_prefix(d).ok()?;
                Some((s.join(rel), rel.display().to_string()))
            });
            under.unwrap_or_else(|| {
                let file = stable_path(&f);
                let key = file.display().to_string();
                (file, key)
            })
        })
        .unzip()
}

/// `path` without its `.` components (`./in/a.ndjson` is `in/a.ndjson`, `.` is empty).
fn without_dots(path: impl AsRef<Path>) -> PathBuf {
    path.as_ref()
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// NDJSON files, one partition each.
#[derive(Debug, Clone)]
pub struct FileInput {
    pub files: Vec<PathBuf>,
    /// Each file's partition key (see [`named_files`]).
    pub keys: Vec<String>,
    /// Each file's key in checkpoints of earlier versions: its path as resolved, which
    /// depended on how the run was started.
    pub former_keys: Vec<String>,
    /// The longest line read (`max_line_bytes`).
    pub max_line_bytes: u64,
}

impl SourceConnector for FileInput {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fingerprint(&self) -> String {
        "files".to_string()
    }

    fn summary(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            })
            .collect();
        format!("{} file(s): {}", self.files.len(), names.join(", "))
    }

    fn describe(&self) -> String {
        let paths: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        format!(
            "file, {} partition(s): {}",
            self.files.len(),
            paths.join(", ")
        )
    }

    /// Earlier versions keyed a file by its path as resolved, which depended on how the run
    /// was started: as this run resolves it, and the spellings of the other usual ways (the
    /// absolute path, from `weir run /srv/x/p.yaml`; `./in/a.ndjson`, from the pipeline's
    /// folder), tried in that order.
    fn former_partition_keys(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for ((former, key), file) in self.former_keys.iter().zip(&self.keys).zip(&self.files) {
            let dotted = format!("./{key}");
            for candidate in [former.clone(), file.display().to_string(), dotted] {
                if candidate != *key && !pairs.iter().any(|(f, _)| *f == candidate) {
                    pairs.push((candidate, key.clone()));
                }
            }
        }
        pairs
    }

    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
        let reader = FileReader::new(at.index, at.name, self.files.clone(), at.first_partition)
            .with_max_line_bytes(self.max_line_bytes)
            .with_resume(self.keys.iter().map(|k| (at.resume)(k)).collect());
        Ok(OpenedSource {
            reader: Box::new(reader),
            keys: self.keys.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's key is its path under the pipeline's folder however the folder and the file
    /// are spelled: a glob's matches lose the `./` of a pattern that had it (a run started
    /// from the pipeline's folder, whose folder is `.`), a folder's listing keeps it.
    #[test]
    fn a_file_is_keyed_by_its_path_under_the_pipeline_folder() {
        for (dir, file) in [
            (".", "in/a.ndjson"),
            (".", "./in/a.ndjson"),
            ("./", "in/a.ndjson"),
            ("../x", "../x/in/a.ndjson"),
            ("/srv/x", "/srv/x/in/a.ndjson"),
        ] {
            let (_, keys) = named_files(&[PathBuf::from(file)], Some(Path::new(dir)));
            assert_eq!(keys, ["in/a.ndjson"], "{dir} {file}");
        }
        // an absolute `path`: its stable path
        let (files, keys) = named_files(&[PathBuf::from("/")], None);
        assert_eq!(files, [PathBuf::from("/")]);
        assert_eq!(keys, ["/"]);
    }
}
