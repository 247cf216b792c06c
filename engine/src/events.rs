//! What flows from sources to operators: chunks of raw records and decoded event batches.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use crate::dead_letter::{DeadLetter, PartitionInfo};

/// Bytes shared without copying: a piece of a buffer (a file's segment read at once).
#[derive(Clone)]
pub struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl SharedBytes {
    /// All of `owner`'s bytes.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Self {
        let len = (*owner).as_ref().len();
        SharedBytes {
            owner,
            start: 0,
            len,
        }
    }

    /// `len` bytes of `owner` from `start` (clamped to its length).
    pub fn slice_of(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> Self {
        let total = (*owner).as_ref().len();
        let start = start.min(total);
        SharedBytes {
            owner,
            start,
            len: len.min(total - start),
        }
    }
}

impl Default for SharedBytes {
    fn default() -> Self {
        SharedBytes::from(Vec::new())
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(v: Vec<u8>) -> Self {
        SharedBytes::new(Arc::new(v))
    }
}

impl std::ops::Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
}

/// The payload of a chunk.
pub enum ChunkData {
    /// Raw records: newline-separated lines, whole lines only.
    Lines(SharedBytes),
    /// Messages of a log (Kafka): one record each, with their offsets and metadata.
    Messages(Messages),
    /// Records already decoded (the generator produces these).
    Events(EventBatch),
    /// The partition has no more records.
    End,
}

/// A piece of one source partition, numbered in the partition's order.
pub struct Chunk {
    /// Index of the source in the job.
    pub source: usize,
    pub partition: Arc<PartitionInfo>,
    /// The chunk's position in its partition, from 0 without gaps.
    pub seq: u64,
    /// Offset of the chunk's first record in the partition.
    pub first_offset: u64,
    /// Where the partition continues after this chunk (what a checkpoint records).
    pub resume: Resume,
    pub data: ChunkData,
}

/// Where a source partition continues: the offset of its next record, and a reader-specific
/// position (the byte position in a file; the offset again for a log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    pub next_offset: u64,
    pub position: u64,
    /// Which incarnation of the partition's log the position belongs to, for a source whose
    /// log can be deleted and created again under the same name with sequences that start
    /// over (a NATS stream: its creation time, in ns): a restore compares it, so that
    /// positions of the old log are never taken for the new one's. 0 when the source has
    /// none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

impl Resume {
    /// A position that is the offset itself (logs, generators).
    pub fn at(offset: u64) -> Self {
        Resume {
            next_offset: offset,
            position: offset,
            incarnation: 0,
        }
    }

    /// The same position, in the log's incarnation `incarnation` (see [`Self::incarnation`]).
    pub fn in_incarnation(self, incarnation: u64) -> Self {
        Resume {
            incarnation,
            ..self
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A (start, end) byte range.
pub type Range = (u32, u32);

/// Messages of one partition of a log, copied once into one buffer: payloads, keys and
/// headers are ranges of `bytes`, so a chunk costs a few allocations, not a few per message.
#[derive(Clone, Default)]
pub struct Messages {
    pub bytes: SharedBytes,
    /// (start, end) of each message's payload in `bytes`.
    pub payloads: Vec<(u32, u32)>,
    /// Offset of each message in its partition.
    pub offsets: Vec<u64>,
    /// (start, end) of each message's key in `bytes`, when it has one.
    pub keys: Vec<Option<(u32, u32)>>,
    /// Each message's timestamp (epoch ms), when it has one.
    pub timestamps: Vec<Option<i64>>,
    /// For each message, the range of its headers in `header_fields`.
    pub headers: Vec<(u32, u32)>,
    /// Headers: name and value (if not null) ranges in `bytes`.
    pub header_fields: Vec<(Range, Option<Range>)>,
    /// In a worker pool's repartition topic: the upstream partition (lane) every message
    /// comes from; its offsets are that partition's (see `PartitionClock::sequence_in`).
    pub lane: Option<u32>,
}

impl Messages {
    /// The number of messages.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
    /// The headers of message `i`: (name, value).
    pub fn header_pairs(&self, i: usize) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        let (first, last) = self.headers.get(i).copied().unwrap_or((0, 0));
        self.header_fields[first as usize..last as usize]
            .iter()
            .map(|&(n, v)| (self.slice(n), v.map(|v| self.slice(v))))
    }

    /// The bytes of a range of `bytes`.
    pub fn slice(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.bytes[start as usize..end as usize]
    }
}

/// The original bytes of decoded rows, for dead letters.
#[derive(Clone)]
pub struct RawRows {
    pub bytes: SharedBytes,
    /// (start, end) byte range of each row in `bytes`.
    pub spans: Vec<(u32, u32)>,
    /// The rows' message headers (ranges in `bytes`), when their messages had any.
    pub headers: Option<Arc<RowHeaders>>,
}

/// Message headers of decoded rows, as ranges in their bytes.
pub struct RowHeaders {
    /// For each row, its range in `fields`.
    pub rows: Vec<(u32, u32)>,
    /// Name and value ranges.
    pub fields: Vec<(Range, Option<Range>)>,
}

impl RowHeaders {
    /// The headers of the messages at `indexes` (one per row), or `None` when no message of
    /// the chunk has a header.
    pub fn of_messages(messages: &Messages, indexes: &[u32]) -> Option<Arc<RowHeaders>> {
        if messages.header_fields.is_empty() {
            return None;
        }
        Some(Arc::new(RowHeaders {
            rows: indexes
                .iter()
                .map(|&i| messages.headers[i as usize])
                .collect(),
            fields: messages.header_fields.clone(),
        }))
    }
}

/// Decoded events: the columns operators use, with event time and origin of every row.
pub struct EventBatch {
    /// Only the columns the pipeline reads, in the decoder's output schema.
    pub batch: RecordBatch,
    /// Event time of each row, epoch milliseconds.
    pub event_time: Vec<i64>,
    /// Offset of each row within its partition.
    pub offsets: Vec<u64>,
    /// Original bytes of each row, when the rows were read rather than generated.
    pub raw: Option<RawRows>,
}

impl EventBatch {
    /// The trace and correlation ids of row `i`, from its message headers or its envelope.
    pub fn trace_of(&self, i: usize) -> crate::trace::TraceIds {
        let Some(raw) = &self.raw else {
            return Default::default();
        };
        let from_headers = raw
            .headers
            .as_ref()
            .and_then(|h| {
                let (first, last) = *h.rows.get(i)?;
                let slice = |(s, e): Range| &raw.bytes[s as usize..e as usize];
                Some(crate::trace::TraceIds::from_headers(
                    h.fields[first as usize..last as usize]
                        .iter()
                        .map(|&(n, v)| (slice(n), v.map(slice))),
                ))
            })
            .unwrap_or_default();
        let (s, e) = raw.spans[i];
        from_headers.or(crate::trace::TraceIds::from_record(
            &raw.bytes[s as usize..e as usize],
        ))
    }

    /// The rows at `keep` (ascending indexes), with their times, offsets and raw bytes.
    pub fn retain_rows(&self, keep: &[u32]) -> Result<EventBatch, arrow::error::ArrowError> {
        let indices = arrow::array::UInt32Array::from(keep.to_vec());
        let batch = arrow::compute::take_record_batch(&self.batch, &indices)?;
        let raw = self.raw.as_ref().map(|r| RawRows {
            bytes: r.bytes.clone(),
            spans: keep.iter().map(|&i| r.spans[i as usize]).collect(),
            headers: r.headers.as_ref().map(|h| {
                Arc::new(RowHeaders {
                    rows: keep.iter().map(|&i| h.rows[i as usize]).collect(),
                    fields: h.fields.clone(),
                })
            }),
        });
        Ok(EventBatch {
            batch,
            event_time: keep.iter().map(|&i| self.event_time[i as usize]).collect(),
            offsets: keep.iter().map(|&i| self.offsets[i as usize]).collect(),
            raw,
        })
    }

    /// The original bytes of row `i`, when known.
    pub fn raw_row(&self, i: usize) -> Option<Vec<u8>> {
        self.raw.as_ref().map(|r| {
            let (s, e) = r.spans[i];
            r.bytes[s as usize..e as usize].to_vec()
        })
    }
}

/// The result of decoding one chunk.
pub struct Decoded {
    /// The valid rows (None when there were none).
    pub events: Option<EventBatch>,
    /// Records that could not be decoded.
    pub bad: Vec<DeadLetter>,
    /// Records read, valid or not.
    pub records: u64,
}
