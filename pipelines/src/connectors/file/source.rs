//! The `file` source: NDJSON files (a file, a folder or a glob), one partition per file.

use std::path::PathBuf;

use weir_sources::{resolve_files, FileReader};

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
        let files = resolve_files(&path)
            .map_err(|e| p.ctx.err(&f.value.path.referenced, "").caused_by(e))?;
        Ok(PlannedInput::of(Box::new(FileInput { files })))
    },
};

/// NDJSON files, one partition each.
#[derive(Debug, Clone)]
pub struct FileInput {
    pub files: Vec<PathBuf>,
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

    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
        let keys: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let reader = FileReader::new(at.index, at.name, self.files.clone(), at.first_partition)
            .with_resume(keys.iter().map(|k| (at.resume)(k)).collect());
        Ok(OpenedSource {
            reader: Box::new(reader),
            keys,
        })
    }
}
