//! The file source: NDJSON files, each file one partition, read in order in whole-line chunks.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::{Chunk, ChunkData, EngineError, SharedBytes};

/// Bytes read per chunk (whole lines are kept together; a chunk holds a few thousand events).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The UTF-8 byte order mark, skipped at the start of a file.
const UTF8_BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// Bytes at most before a position that its fingerprint covers (see [`fingerprint`]).
const FINGERPRINT_BYTES: usize = 512;

/// The fingerprint of the bytes just before a position (`tail`: the last
/// [`FINGERPRINT_BYTES`], or all of them nearer the file's start), kept as the position's
/// incarnation: a
/// restore compares it with the file's bytes there, so that a file replaced or rewritten
/// since is refused instead of read on from a byte position that belongs to another file.
/// FNV-1a (stable across versions and platforms) in the high 48 bits, the length hashed in
/// the low 16; 0 for no bytes.
fn fingerprint(tail: &[u8]) -> u64 {
    if tail.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in tail {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h << 16) | tail.len() as u64
}

/// Why the files of a `path` cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("bad glob pattern `{pattern}`")]
    Pattern {
        pattern: String,
        #[source]
        cause: glob::PatternError,
    },
    /// A match of the pattern cannot be read.
    #[error("cannot read {}", .0.path().display())]
    Match(#[source] glob::GlobError),
    #[error("cannot read folder {}", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("input file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("no input file matches {}", .0.display())]
    NoMatch(PathBuf),
}

/// The files a `path` names: a file, every regular non-hidden file of a directory (sorted), or
/// the non-hidden matches of a glob pattern (sorted). A file reached twice (a symbolic link
/// beside its target, two links to one file) is read once, under its first name: read twice,
/// its events would count twice.
pub fn resolve_files(path: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let text = path.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) {
        // a hidden file (an uploader's temporary `.part` file, an editor's swap file) is
        // skipped, as in a shell and as a folder is read, unless the pattern's file name
        // starts with a dot itself (glob's own option panics on names that are not UTF-8)
        let hidden_asked = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let paths = glob::glob(&text).map_err(|cause| FilesError::Pattern {
            pattern: text.to_string(),
            cause,
        })?;
        for p in paths {
            let p = p.map_err(FilesError::Match)?;
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if p.is_file() && (hidden_asked || !hidden) {
                files.push(p);
            }
        }
    } else if path.is_dir() {
        let folder = |cause| FilesError::Folder {
            path: path.to_path_buf(),
            cause,
        };
        for e in std::fs::read_dir(path).map_err(folder)? {
            let e = e.map_err(folder)?;
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
        return Err(FilesError::Missing(path.to_path_buf()));
    }
    files.sort();
    if files.is_empty() {
        return Err(FilesError::NoMatch(path.to_path_buf()));
    }
    Ok(once_each(files))
}

/// `files` with each file once (by device and inode), under its first name that is not a
/// symbolic link (a link can be pointed elsewhere later: the file's position belongs to its
/// own name), in their order.
fn once_each(files: Vec<PathBuf>) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let is_link = |f: &Path| std::fs::symlink_metadata(f).is_ok_and(|m| m.file_type().is_symlink());
    // (device, inode) → the index of the name kept
    let mut kept: std::collections::HashMap<(u64, u64), usize> = Default::default();
    let mut keep = vec![true; files.len()];
    for (i, f) in files.iter().enumerate() {
        // gone since listed: reading it reports that
        let Ok(m) = std::fs::metadata(f) else {
            continue;
        };
        match kept.entry((m.dev(), m.ino())) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let first = *o.get();
                let drop = if is_link(&files[first]) && !is_link(f) {
                    o.insert(i);
                    first
                } else {
                    i
                };
                keep[drop] = false;
                tracing::warn!(file = %files[drop].display(), "the same file as another name listed (a link): read once, under the other name");
            }
        }
    }
    files
        .into_iter()
        .zip(keep)
        .filter_map(|(f, k)| k.then_some(f))
        .collect()
}

/// Bytes of a file read at once: a segment's buffer is freed (or kept for a later segment)
/// when its last chunk is dropped, so memory stays bounded by the chunks in flight, whatever
/// the file's size. Two chunks: a segment no larger than the L2 cache of the cores measured
/// (2 MiB) is still in it when the reader counts its lines (see `docs/src/performance.md`:
/// 16 MiB segments made the reader's line count 3x as costly; 1 MiB measured as 2 MiB).
pub const SEGMENT_BYTES: u64 = 2 << 20;

/// The longest line of a file read (its newline included): a longer one is skipped, its start
/// sent to the dead letters (see `FileReader::skip_long_line`). Lines up to it are read
/// whole, in a segment doubled from [`SEGMENT_BYTES`] as needed.
pub const MAX_LINE_BYTES: u64 = 64 << 20;

/// Bytes of a skipped long line handed on for its dead letter.
const LONG_LINE_KEPT: usize = 64 << 10;

/// Bytes read at once while a skipped long line is scanned for its end.
const LONG_LINE_SCAN: usize = 1 << 20;

/// Buffers of segments whose chunks were all dropped, kept for the next segments: at most
/// this many (a warm reader allocates and zeroes no memory per segment).
const SPARE_SEGMENTS: usize = 4;

type Segment = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The buffers kept for later segments (see [`SPARE_SEGMENTS`]).
type Spares = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A segment's bytes, read from the file (not mapped: a mapping of a file that another process
/// truncates kills the whole process with SIGBUS, as `logrotate`'s `copytruncate` does to
/// files being written); its buffer goes back to the spares when its last chunk is dropped.
struct ReadSegment {
    buf: Vec<u8>,
    len: usize,
    /// Where the buffer goes when dropped (`None`: freed, a segment grown for a long line).
    spares: Option<Spares>,
}

impl AsRef<[u8]> for ReadSegment {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for ReadSegment {
    fn drop(&mut self) {
        let Some(spares) = &self.spares else { return };
        if let Ok(mut spares) = spares.lock() {
            if spares.len() < SPARE_SEGMENTS {
                spares.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// How the current file is read.
enum Input {
    /// A regular file, read segment by segment: chunks are slices of a segment, never
    /// copied again.
    Regular {
        file: File,
        len: u64,
        segment: Option<(Segment, u64)>,
        pos: u64,
    },
    /// Anything else (a pipe, a device): read into buffers.
    Stream {
        file: File,
        carry: Vec<u8>,
        eof: bool,
    },
    /// Every byte was handed out: the partition's End chunk comes next.
    Done,
}

/// Reads a list of files, one partition each, in order.
///
/// Regular files are read up to the length they had when opened (bytes appended later are
/// not read); a file that shrinks meanwhile fails the source with an error saying so.
pub struct FileReader {
    source: usize,
    partitions: Vec<Arc<PartitionInfo>>,
    paths: Vec<PathBuf>,
    current: usize,
    input: Option<Input>,
    seq: u64,
    lines: u64,
    /// Bytes of the current file handed out so far.
    position: u64,
    /// The fingerprint of the bytes before `position` (see [`fingerprint`]).
    fingerprint: u64,
    /// The last [`FINGERPRINT_BYTES`] bytes before `position` (fewer nearer the file's start,
    /// or after a restore of a checkpoint without a fingerprint).
    tail: Vec<u8>,
    /// Per file: where a checkpoint says to continue.
    resume: Vec<Option<Resume>>,
    chunk_bytes: usize,
    segment_bytes: u64,
    spares: Spares,
    /// Lines longer are skipped (see [`Self::skip_long_line`]).
    max_line_bytes: u64,
    /// After a long line was skipped: the bytes it consumed, and the last
    /// [`FINGERPRINT_BYTES`] before its end (the piece handed on is not the file's bytes).
    skipped: Option<(u64, Vec<u8>)>,
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
                    state_id: first_id + i,
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
            input: None,
            seq: 0,
            lines: 0,
            position: 0,
            fingerprint: 0,
            tail: Vec::new(),
            resume: Vec::new(),
            chunk_bytes: CHUNK_BYTES,
            segment_bytes: SEGMENT_BYTES,
            spares: Spares::default(),
            max_line_bytes: MAX_LINE_BYTES,
            skipped: None,
        }
    }

    /// Continues each file where a checkpoint left it (`resume[i]` for file `i`; `None`
    /// reads it from the start).
    pub fn with_resume(mut self, resume: Vec<Option<Resume>>) -> Self {
        self.resume = resume;
        self
    }

    /// Sets the size of segments read at once (tests use small ones to exercise segment edges).
    pub fn with_segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n.max(1);
        self
    }

    /// Sets the longest line read (the segments read at once are no longer). Lines up to
    /// the chunk size are read whole whatever it says.
    pub fn with_max_line_bytes(mut self, n: u64) -> Self {
        self.max_line_bytes = n.max(1);
        self.segment_bytes = self.segment_bytes.min(self.max_line_bytes);
        self
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
            resume: Resume {
                next_offset: self.lines,
                position: self.position,
                incarnation: self.fingerprint,
            },
            data,
        };
        self.seq += 1;
        c
    }

    /// Moves [`Self::tail`] past `piece` (at most [`FINGERPRINT_BYTES`] copied per chunk).
    fn roll_tail(&mut self, piece: &[u8]) {
        let keep = FINGERPRINT_BYTES
            .saturating_sub(piece.len())
            .min(self.tail.len());
        self.tail.drain(..self.tail.len() - keep);
        self.tail
            .extend_from_slice(&piece[piece.len().saturating_sub(FINGERPRINT_BYTES)..]);
    }

    fn source_err(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::source_caused(
            &self.partitions[0].source,
            self.paths[self.current].display(),
            e,
        )
    }

    fn open(&mut self) -> Result<Input, EngineError> {
        let path = &self.paths[self.current];
        let mut file = File::open(path).map_err(|e| self.source_err(e))?;
        let meta = file.metadata().map_err(|e| self.source_err(e))?;
        let resume = self.resume.get(self.current).copied().flatten();
        if let Some(r) = resume {
            self.lines = r.next_offset;
            self.position = r.position;
            self.fingerprint = r.incarnation;
        }
        if !meta.is_file() {
            if self.position > 0 {
                // a stream cannot seek: skip what the checkpoint already holds
                std::io::copy(&mut (&mut file).take(self.position), &mut std::io::sink())
                    .map_err(|e| self.source_err(e))?;
            }
            return Ok(Input::Stream {
                file,
                carry: Vec::new(),
                eof: false,
            });
        }
        if self.position > meta.len() {
            return Err(self.source_err(format!(
                "the checkpoint continues at byte {} but the file has {} bytes: it was replaced or truncated",
                self.position,
                meta.len()
            )));
        }
        if let Some(r) = resume.filter(|r| r.incarnation != 0) {
            self.tail = self.check_fingerprint(&mut file, r)?;
        }
        // a UTF-8 byte order mark (files saved by some Windows tools) is not the first
        // line's: it is skipped, as a JSON reader would
        if self.position == 0 && meta.len() >= 3 {
            let mut head = [0u8; 3];
            file.read_exact(&mut head).map_err(|e| self.source_err(e))?;
            if head == UTF8_BOM {
                self.position = 3;
                self.tail = head.to_vec();
            }
        }
        if meta.len() == self.position {
            return Ok(Input::Done);
        }
        Ok(Input::Regular {
            file,
            len: meta.len(),
            segment: None,
            pos: self.position,
        })
    }

    /// Whether the bytes before the checkpoint's position `r` are those it read (its
    /// fingerprint), and those bytes; an error saying what to do when they are not.
    fn check_fingerprint(&self, file: &mut File, r: Resume) -> Result<Vec<u8>, EngineError> {
        let k = r.incarnation & 0xffff;
        let mut tail = vec![0; k.min(r.position) as usize];
        file.seek(SeekFrom::Start(r.position - tail.len() as u64))
            .and_then(|_| file.read_exact(&mut tail))
            .map_err(|e| self.source_err(e))?;
        if fingerprint(&tail) == r.incarnation {
            return Ok(tail);
        }
        Err(self.source_err(format!(
            "the file is not the one the checkpoint read: its bytes before byte {}, where the checkpoint continues, differ (it was replaced or rewritten since), and its lines cannot be told from those already counted; to read it as new input, give `checkpoint.dir` a new place (or delete it); to go on with the checkpoint, put back the file it read",
            r.position
        )))
    }

    /// Reads `len` bytes of `file` at `offset` into a segment (a spare buffer when one is
    /// kept); fails when the file no longer has them (it shrank while it was read).
    fn read_segment(&self, file: &File, offset: u64, len: u64) -> Result<Segment, EngineError> {
        let len = usize::try_from(len).map_err(|e| self.source_err(e))?;
        let mut buf = match self.spares.lock() {
            Ok(mut spares) => spares.pop().unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.read_at(file, &mut buf[..len], offset)?;
        let keep = buf.len() as u64 <= self.segment_bytes.max(self.chunk_bytes as u64);
        Ok(Arc::new(ReadSegment {
            buf,
            len,
            spares: keep.then(|| self.spares.clone()),
        }))
    }

    /// Reads `buf.len()` bytes of `file` at `offset`; fails when the file no longer has them
    /// (it shrank while it was read).
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> Result<(), EngineError> {
        use std::os::unix::fs::FileExt;
        let Err(e) = file.read_exact_at(buf, offset) else {
            return Ok(());
        };
        if e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(self.source_err(e));
        }
        let now = file.metadata().map(|m| m.len()).unwrap_or(0);
        Err(self.source_err(format!(
            "the file shrank to {now} bytes while it was read (truncated or rewritten by \
             another program), before byte {} that was there when it was opened: its lines \
             from byte {offset} on cannot be read. Let the program that writes it finish \
             (or rotate logs by renaming them, not with `copytruncate`), then run again",
            offset + buf.len() as u64
        )))
    }

    /// A line longer than [`Self::max_line_bytes`] at `start` (the current segment holds its
    /// first bytes and no newline): skipped to its end without holding it (a line of
    /// gigabytes would not fit in memory). Its first [`LONG_LINE_KEPT`] bytes are handed on,
    /// with a NUL byte (so that no prefix passes for a whole JSON value), and become a bad
    /// record's dead letter; what it consumed and the bytes before its end go to
    /// [`Self::skipped`].
    fn skip_long_line(&mut self, start: u64) -> Result<SharedBytes, EngineError> {
        let Some(Input::Regular {
            file, len, segment, ..
        }) = self.input.as_ref()
        else {
            return Ok(SharedBytes::default());
        };
        let len = *len;
        let seg: &[u8] = segment.as_ref().map_or(&[], |(seg, _)| (**seg).as_ref());
        let mut piece = seg[..seg.len().min(LONG_LINE_KEPT)].to_vec();
        let mut tail = seg[seg.len().saturating_sub(FINGERPRINT_BYTES)..].to_vec();
        let mut at = start + seg.len() as u64;
        let mut scratch = vec![0u8; LONG_LINE_SCAN];
        let end = loop {
            if at >= len {
                break len;
            }
            let n = (LONG_LINE_SCAN as u64).min(len - at) as usize;
            self.read_at(file, &mut scratch[..n], at)?;
            let newline = memchr::memchr(b'\n', &scratch[..n]);
            let read = newline.map_or(n, |i| i + 1);
            tail.extend_from_slice(&scratch[read.saturating_sub(FINGERPRINT_BYTES)..read]);
            tail.drain(..tail.len().saturating_sub(FINGERPRINT_BYTES));
            at += read as u64;
            if newline.is_some() {
                break at;
            }
        };
        tracing::warn!(
            file = %self.paths[self.current].display(),
            line = self.lines + 1,
            bytes = end - start,
            limit = self.max_line_bytes,
            "file: a line longer than the limit is skipped: its start goes to the dead letters \
             as a bad record (is the file NDJSON, one event per line?)"
        );
        piece.extend_from_slice(b"\0\n");
        self.skipped = Some((end - start, tail));
        if let Some(Input::Regular { pos, segment, .. }) = self.input.as_mut() {
            *pos = end;
            *segment = None;
        }
        Ok(piece.into())
    }

    /// The next piece of whole lines of a regular file: within one segment, a new segment
    /// starting where the last piece ended when the current one holds no further whole line.
    fn next_regular_piece(&mut self) -> Result<Option<SharedBytes>, EngineError> {
        let chunk_bytes = self.chunk_bytes as u64;
        let mut want = self.segment_bytes.max(chunk_bytes);
        loop {
            let Some(Input::Regular {
                len, segment, pos, ..
            }) = self.input.as_ref()
            else {
                return Ok(None);
            };
            let (len, pos) = (*len, *pos);
            if pos >= len {
                return Ok(None);
            }
            if let Some((seg, seg_start)) = segment {
                let seg_start = *seg_start;
                let bytes = (**seg).as_ref();
                let seg_end = seg_start + bytes.len() as u64;
                if pos < seg_end {
                    let rel = (pos - seg_start) as usize;
                    // a piece of a chunk's length, or to the segment's end when less than
                    // half a chunk would be left after it (a segment's last lines are not a
                    // chunk of one or two lines of their own)
                    let mut stop = (pos + chunk_bytes).min(seg_end);
                    if seg_end - stop < chunk_bytes / 2 {
                        stop = seg_end;
                    }
                    let limit = (stop - seg_start) as usize;
                    let end = if seg_end == len && limit == bytes.len() {
                        Some(limit)
                    } else {
                        memchr::memrchr(b'\n', &bytes[rel..limit])
                            .map(|p| rel + p + 1)
                            .or_else(|| {
                                memchr::memchr(b'\n', &bytes[limit..]).map(|p| limit + p + 1)
                            })
                            // the file's last line, without a newline
                            .or((seg_end == len).then_some(bytes.len()))
                    };
                    if let Some(end) = end {
                        let piece = SharedBytes::slice_of(seg.clone(), rel, end - rel);
                        if let Some(Input::Regular { pos, .. }) = self.input.as_mut() {
                            *pos = seg_start + end as u64;
                        }
                        return Ok(Some(piece));
                    }
                    if seg_start == pos {
                        if want >= self.max_line_bytes {
                            return self.skip_long_line(pos).map(Some);
                        }
                        // a line longer than the segment: read more
                        want = want.saturating_mul(2).min(self.max_line_bytes);
                    }
                }
            }
            let seg_len = want.min(len - pos);
            // (the reader's hold on the segment before goes first: a long line's doubled
            // segment is not held beside the one it replaces)
            if let Some(Input::Regular { segment, .. }) = self.input.as_mut() {
                *segment = None;
            }
            let Some(Input::Regular { file, .. }) = self.input.as_ref() else {
                return Ok(None);
            };
            let seg = self.read_segment(file, pos, seg_len)?;
            if let Some(Input::Regular { segment, .. }) = self.input.as_mut() {
                *segment = Some((seg, pos));
            }
        }
    }

    /// The next piece of whole lines of the current file, or None at its end.
    fn next_piece(&mut self) -> Result<Option<SharedBytes>, EngineError> {
        let chunk_bytes = self.chunk_bytes;
        match self.input.as_mut() {
            None | Some(Input::Done) => Ok(None),
            Some(Input::Regular { .. }) => self.next_regular_piece(),
            Some(Input::Stream { file, carry, eof }) => loop {
                if *eof {
                    return Ok((!carry.is_empty()).then(|| std::mem::take(carry).into()));
                }
                let mut buf = std::mem::take(carry);
                let n = file
                    .by_ref()
                    .take(chunk_bytes as u64)
                    .read_to_end(&mut buf)
                    .map_err(|e| EngineError::source_caused("file", "", e))?;
                if n == 0 {
                    *eof = true;
                    *carry = buf;
                    continue;
                }
                match memchr::memrchr(b'\n', &buf) {
                    Some(p) => {
                        *carry = buf[p + 1..].to_vec();
                        buf.truncate(p + 1);
                        return Ok(Some(buf.into()));
                    }
                    None => *carry = buf,
                }
            },
        }
    }
}

impl PartitionReader for FileReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        if self.current >= self.paths.len() || ctx.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        if self.input.is_none() {
            self.input = Some(self.open()?);
        }
        match self.next_piece()? {
            Some(piece) => {
                let first = self.lines;
                let newlines = memchr::memchr_iter(b'\n', &piece).count() as u64;
                self.lines += newlines + u64::from(piece.last() != Some(&b'\n'));
                match self.skipped.take() {
                    Some((consumed, tail)) => {
                        self.position += consumed;
                        self.tail = tail;
                    }
                    None => {
                        self.position += piece.len() as u64;
                        self.roll_tail(&piece);
                    }
                }
                self.fingerprint = fingerprint(&self.tail);
                Ok(Some(self.chunk(ChunkData::Lines(piece), first)))
            }
            None => {
                // the partition's last chunk, then the next file
                let end = self.chunk(ChunkData::End, self.lines);
                self.current += 1;
                self.input = None;
                self.seq = 0;
                self.lines = 0;
                self.position = 0;
                self.fingerprint = 0;
                self.tail.clear();
                Ok(Some(end))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicBool;
    use weir_engine::clock::Clocks;

    /// A glob or a folder names each file once: a symbolic link beside its target (or a
    /// hard link) is read once, under its first name, and a glob skips hidden files as a
    /// folder does (an uploader's temporary `.part` file would be read again once renamed).
    #[test]
    fn a_file_reached_twice_or_hidden_is_not_read_twice() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.ndjson"), "{}\n").unwrap();
        std::fs::write(d.join("b.ndjson"), "{}\n").unwrap();
        std::os::unix::fs::symlink(d.join("b.ndjson"), d.join("latest.ndjson")).unwrap();
        std::fs::hard_link(d.join("a.ndjson"), d.join("c.ndjson")).unwrap();
        std::fs::write(d.join(".upload.ndjson"), "{}\n").unwrap();
        // a link sorted before its target: the target's own name is kept
        std::os::unix::fs::symlink(d.join("b.ndjson"), d.join("0-latest.ndjson")).unwrap();
        // a name that is not UTF-8 does not stop a glob
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(d.join(std::ffi::OsStr::from_bytes(b"\xff.bin")), "").unwrap();
        let names = |files: Vec<PathBuf>| -> Vec<String> {
            files
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let globbed = resolve_files(&d.join("*.ndjson")).unwrap();
        assert_eq!(names(globbed), vec!["a.ndjson", "b.ndjson"]);
        assert_eq!(
            names(resolve_files(d).unwrap())
                .into_iter()
                .filter(|n| n.ends_with(".ndjson"))
                .collect::<Vec<_>>(),
            vec!["a.ndjson", "b.ndjson"]
        );
        // a pattern asking for hidden files gets them
        assert_eq!(
            names(resolve_files(&d.join(".*.ndjson")).unwrap()),
            vec![".upload.ndjson"]
        );
    }

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
        for (chunk, segment) in [(64, 4096), (64, 100), (7, 10), (1 << 20, 1 << 20)] {
            read_all(&files, chunk, segment);
        }
        assert!(resolve_files(&dir.join("*.nope")).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Each segment is cut into pieces of about a chunk: its last lines join the piece before
    /// when less than half a chunk would be left (they made a chunk of a line or two at each
    /// segment's end), and the partial line at its end starts the next segment.
    #[test]
    fn a_segment_ends_in_a_piece_of_about_a_chunk_not_in_a_line_or_two() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.ndjson");
        let mut f = File::create(&a).unwrap();
        let lines: Vec<String> = (0..2_000).map(|i| format!("{{\"line\":{i:08}}}")).collect();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        let (chunk, segment) = (1_000, 2_000);
        let mut reader = FileReader::new(0, "s", vec![a], 0)
            .with_chunk_bytes(chunk)
            .with_segment_bytes(segment as u64);
        let ctx = context();
        let (mut sizes, mut read) = (Vec::new(), Vec::new());
        while let Some(c) = reader.next_chunk(&ctx).unwrap() {
            if let ChunkData::Lines(b) = c.data {
                sizes.push(b.len());
                read.extend(
                    String::from_utf8(b.to_vec())
                        .unwrap()
                        .lines()
                        .map(String::from),
                );
            }
        }
        assert_eq!(read, lines);
        let (last, whole) = sizes.split_last().unwrap();
        assert!(*last > 0);
        for s in whole {
            assert!(
                (chunk / 2..=chunk * 3 / 2).contains(s),
                "a piece of {s} bytes (chunks of {chunk}, segments of {segment}): {sizes:?}"
            );
        }
    }

    fn context() -> ReaderContext {
        ReaderContext::new(
            Arc::new(Clocks::new(&[(1, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(weir_engine::progress::Progress::new(1, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        )
    }

    /// The lines `reader` reads to its end, and the resume of its `keep`th chunk.
    fn lines_and_resume(mut reader: FileReader, keep: usize) -> (Vec<String>, Option<Resume>) {
        let ctx = context();
        let (mut lines, mut kept, mut n) = (Vec::new(), None, 0);
        loop {
            let c = match reader.next_chunk(&ctx) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => panic!("{}", e.chain()),
            };
            n += 1;
            if n == keep {
                kept = Some(c.resume);
            }
            if let ChunkData::Lines(b) = c.data {
                lines.extend(
                    String::from_utf8(b.to_vec())
                        .unwrap()
                        .lines()
                        .map(String::from),
                );
            }
        }
        (lines, kept)
    }

    /// A restore continues at the checkpoint's byte position only in the file it read: the
    /// same bytes (the file copied back, or appended to) continue; a file rewritten with other
    /// bytes, even of the same length, is refused, where before its start was skipped (or,
    /// at the same length, all of it) without a word.
    #[test]
    fn a_restore_continues_only_in_the_file_the_checkpoint_read() {
        let dir = std::env::temp_dir().join(format!("weir-file-restore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.ndjson");
        let text: String = (0..100).map(|i| format!("{{\"n\": {i:03}}}\n")).collect();
        std::fs::write(&a, &text).unwrap();
        let reader = || FileReader::new(0, "s", vec![a.clone()], 0).with_chunk_bytes(100);
        let (all, resume) = lines_and_resume(reader(), 3);
        assert_eq!(all.len(), 100);
        let resume = resume.unwrap();
        assert_ne!(resume.incarnation, 0);
        let at = resume.next_offset as usize;
        // the same bytes, written again: the rest is read
        std::fs::remove_file(&a).unwrap();
        std::fs::write(&a, &text).unwrap();
        let (rest, _) = lines_and_resume(reader().with_resume(vec![Some(resume)]), 0);
        assert_eq!(rest, all[at..]);
        // appended to: the rest and the new lines
        std::fs::write(&a, format!("{text}{{\"n\": 100}}\n")).unwrap();
        let (rest, _) = lines_and_resume(reader().with_resume(vec![Some(resume)]), 0);
        assert_eq!(rest.len(), 100 - at + 1);
        // the fingerprint covers 512 bytes, not one chunk: a file that differs before the
        // last short piece, even with the same last line, is refused
        let mut other = text.clone().into_bytes();
        // (150 bytes back: before the last piece, of 100 bytes at most)
        other[resume.position as usize - 150] = b'#';
        std::fs::write(&a, &other).unwrap();
        let mut r = reader().with_resume(vec![Some(resume)]);
        assert!(r.next_chunk(&context()).is_err());
        std::fs::write(&a, &text).unwrap();
        // a byte order mark is skipped, not part of the first line
        let b = dir.join("b.ndjson");
        std::fs::write(&b, [&UTF8_BOM[..], b"{\"n\": 1}\n{\"n\": 2}\n"].concat()).unwrap();
        let bom = FileReader::new(0, "s", vec![b.clone()], 0);
        assert_eq!(lines_and_resume(bom, 0).0, ["{\"n\": 1}", "{\"n\": 2}"]);
        // rewritten with other bytes of the same length: refused, saying what to do
        std::fs::write(&a, text.replace("\"n\"", "\"m\"")).unwrap();
        let mut r = reader().with_resume(vec![Some(resume)]);
        let e = r
            .next_chunk(&context())
            .err()
            .expect("refused")
            .chain()
            .to_string();
        assert!(
            e.contains("not the one the checkpoint read") && e.contains("checkpoint.dir"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file truncated while it is read (`logrotate`'s `copytruncate`) fails the source with
    /// an error saying so; the chunks handed out before keep their bytes (they were read,
    /// not mapped: touching a mapping past a truncated file's end killed the process with
    /// SIGBUS).
    #[test]
    fn a_file_truncated_while_it_is_read_fails_saying_so() {
        let dir = std::env::temp_dir().join(format!("weir-file-shrink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.ndjson");
        let text: String = (0..1000).map(|i| format!("{{\"n\": {i:04}}}\n")).collect();
        std::fs::write(&a, &text).unwrap();
        let mut r = FileReader::new(0, "s", vec![a.clone()], 0)
            .with_chunk_bytes(100)
            .with_segment_bytes(4096);
        let first = r.next_chunk(&context()).unwrap().unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .set_len(0)
            .unwrap();
        let ChunkData::Lines(bytes) = &first.data else {
            panic!("a file reader yields lines")
        };
        assert!(text.as_bytes().starts_with(bytes));
        // the rest of the first segment was read already; the next one fails
        let e = loop {
            match r.next_chunk(&context()) {
                Ok(Some(c)) => assert!(matches!(c.data, ChunkData::Lines(_))),
                Ok(None) => panic!("the truncated file ended without an error"),
                Err(e) => break e.chain().to_string(),
            }
        };
        assert!(
            e.contains("shrank to 0 bytes") && e.contains("copytruncate"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A line longer than the limit is skipped without being held: its start is handed on
    /// with a NUL byte (a bad record, whose dead letter shows it), the lines around it are
    /// read, and positions count the file's bytes, so that a restore after it continues
    /// (its fingerprint is of the file's bytes). The file's last line, without a newline, too.
    #[test]
    fn a_line_longer_than_the_limit_is_skipped_and_its_start_handed_on() {
        let dir = std::env::temp_dir().join(format!("weir-file-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.ndjson");
        let long = "x".repeat(5000);
        let text = format!("{{\"n\": 1}}\n{long}\n{{\"n\": 3}}\n{long}");
        std::fs::write(&a, &text).unwrap();
        let reader = || {
            FileReader::new(0, "s", vec![a.clone()], 0)
                .with_chunk_bytes(100)
                .with_segment_bytes(256)
                .with_max_line_bytes(1024)
        };
        let (lines, resume) = lines_and_resume(reader(), 2);
        let head = |l: &String| l.starts_with(&"x".repeat(256)) && l.ends_with('\0');
        assert_eq!(
            lines.len(),
            4,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!((&lines[0][..], &lines[2][..]), ("{\"n\": 1}", "{\"n\": 3}"));
        assert!(head(&lines[1]) && head(&lines[3]));
        // the second chunk ends after the long line: a restore there continues at line 3
        let resume = resume.unwrap();
        assert_eq!(resume.position as usize, 9 + 5001);
        let (rest, _) = lines_and_resume(reader().with_resume(vec![Some(resume)]), 0);
        assert_eq!(rest[0], "{\"n\": 3}");
        assert_eq!(rest.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn read_all(files: &[PathBuf], chunk: usize, segment: u64) {
        let mut r = FileReader::new(0, "s", files.to_vec(), 0)
            .with_chunk_bytes(chunk)
            .with_segment_bytes(segment);
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(2, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(weir_engine::progress::Progress::new(2, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        );
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
                    assert!(
                        text.ends_with('\n')
                            || text == "last line without newline"
                            || text.ends_with("last line without newline")
                    );
                    let n = text.lines().count() as u64;
                    expected_offset += n;
                    lines.extend(text.lines().map(String::from));
                }
                ChunkData::End => ends += 1,
                ChunkData::Events(_) | ChunkData::Messages(_) => {
                    panic!("a file reader yields lines")
                }
            }
        }
        assert_eq!(ends, 2);
        assert_eq!(lines.len(), 102);
        assert_eq!(lines[100], "last line without newline");
        for (i, l) in lines.iter().take(100).enumerate() {
            assert_eq!(
                l,
                &format!("line number {i}"),
                "chunk {chunk} segment {segment}"
            );
        }
    }
}
