//! The file source: NDJSON files, each file one partition, read in order in whole-line chunks.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_engine::dead_letter::PartitionInfo;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::{Chunk, ChunkData, EngineError};

/// Bytes read per chunk (whole lines are kept together; a chunk holds a few thousand events).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The files a `path` names: a file, every regular non-hidden file of a directory (sorted), or
/// the matches of a glob pattern (sorted).
pub fn resolve_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let text = path.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) {
        let paths = glob::glob(&text).map_err(|e| format!("bad glob pattern `{text}`: {e}"))?;
        for p in paths {
            let p = p.map_err(|e| format!("cannot read {}: {e}", e.path().display()))?;
            if p.is_file() {
                files.push(p);
            }
        }
    } else if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| format!("cannot read folder {}: {e}", path.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("cannot read folder {}: {e}", path.display()))?;
            let p = e.path();
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if p.is_file() && !hidden {
                files.push(p);
            }
        }
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(format!("input file {} does not exist", path.display()));
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no input file matches {}", path.display()));
    }
    Ok(files)
}

/// Reads a list of files, one partition each, in order.
pub struct FileReader {
    source: usize,
    partitions: Vec<Arc<PartitionInfo>>,
    paths: Vec<PathBuf>,
    current: usize,
    file: Option<File>,
    carry: Vec<u8>,
    seq: u64,
    lines: u64,
    eof: bool,
    chunk_bytes: usize,
}

impl FileReader {
    /// A reader of `paths` for source `source` whose partitions have global ids from `first_id`.
    pub fn new(source: usize, source_name: &str, paths: Vec<PathBuf>, first_id: usize) -> Self {
        let name: Arc<str> = source_name.into();
        let partitions = paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Arc::new(PartitionInfo {
                    source: name.clone(),
                    id: first_id + i,
                    number: i as u32,
                    topic: None,
                    file: Some(p.to_string_lossy().into()),
                })
            })
            .collect();
        FileReader {
            source,
            partitions,
            paths,
            current: 0,
            file: None,
            carry: Vec::new(),
            seq: 0,
            lines: 0,
            eof: false,
            chunk_bytes: CHUNK_BYTES,
        }
    }

    /// Sets the chunk size in bytes (tests use small chunks to exercise chunk edges).
    pub fn with_chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes = n.max(1);
        self
    }

    fn chunk(&mut self, data: ChunkData, first_offset: u64) -> Chunk {
        let c = Chunk {
            source: self.source,
            partition: self.partitions[self.current].clone(),
            seq: self.seq,
            first_offset,
            data,
        };
        self.seq += 1;
        c
    }

    fn source_err(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::source(
            &self.partitions[0].source,
            format!("{}: {e}", self.paths[self.current].display()),
        )
    }
}

impl PartitionReader for FileReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        loop {
            if self.current >= self.paths.len()
                || ctx.stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                return Ok(None);
            }
            if self.file.is_none() && !self.eof {
                self.file =
                    Some(File::open(&self.paths[self.current]).map_err(|e| self.source_err(e))?);
            }
            if self.eof {
                // the partition's last chunk, then the next file
                let end = self.chunk(ChunkData::End, self.lines);
                self.current += 1;
                self.file = None;
                self.eof = false;
                self.seq = 0;
                self.lines = 0;
                return Ok(Some(end));
            }
            let mut buf = std::mem::take(&mut self.carry);
            let have = buf.len();
            buf.resize(have + self.chunk_bytes, 0);
            let mut filled = have;
            let file = self.file.as_mut().expect("file opened above");
            while filled < buf.len() {
                let n = file
                    .read(&mut buf[filled..])
                    .map_err(|e| EngineError::source("file", e))?;
                if n == 0 {
                    self.eof = true;
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            let cut = if self.eof {
                buf.len()
            } else {
                match memchr::memrchr(b'\n', &buf) {
                    Some(p) => p + 1,
                    None => {
                        // a line longer than the chunk: keep reading
                        self.carry = buf;
                        continue;
                    }
                }
            };
            self.carry = buf[cut..].to_vec();
            buf.truncate(cut);
            if buf.is_empty() {
                continue;
            }
            let first = self.lines;
            let newlines = memchr::memchr_iter(b'\n', &buf).count() as u64;
            self.lines += newlines + u64::from(buf.last() != Some(&b'\n'));
            return Ok(Some(self.chunk(ChunkData::Lines(Arc::new(buf)), first)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicBool;
    use weir_engine::clock::Clocks;

    #[test]
    fn chunks_hold_whole_lines_and_count_offsets() {
        let dir = std::env::temp_dir().join(format!("weir-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.ndjson");
        let mut f = File::create(&a).unwrap();
        for i in 0..100 {
            writeln!(f, "line number {i}").unwrap();
        }
        write!(f, "last line without newline").unwrap();
        drop(f);
        std::fs::write(dir.join("b.ndjson"), "x\n").unwrap();
        let files = resolve_files(&dir).unwrap();
        assert_eq!(files.len(), 2);
        let mut r = FileReader::new(0, "s", files, 0).with_chunk_bytes(64);
        let ctx = ReaderContext {
            clocks: Arc::new(Clocks::new(&[(2, 0)])),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let mut lines = Vec::new();
        let mut ends = 0;
        let mut expected_offset = 0;
        while let Some(c) = r.next_chunk(&ctx).unwrap() {
            match c.data {
                ChunkData::Lines(b) => {
                    if c.partition.number == 0 {
                        assert_eq!(c.first_offset, expected_offset);
                    }
                    let text = String::from_utf8(b.to_vec()).unwrap();
                    let n = text.lines().count() as u64;
                    expected_offset += n;
                    lines.extend(text.lines().map(String::from));
                }
                ChunkData::End => ends += 1,
                ChunkData::Events(_) => unreachable!(),
            }
        }
        assert_eq!(ends, 2);
        assert_eq!(lines.len(), 102);
        assert_eq!(lines[100], "last line without newline");
        assert!(resolve_files(&dir.join("*.nope")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
