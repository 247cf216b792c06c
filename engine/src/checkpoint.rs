//! Checkpoints: consistent snapshots of a job's state with the source offsets they reflect.
//!
//! A checkpoint `E` starts with a barrier that the coordinator puts into every worker's queue
//! at one point of the global chunk order (under the dispatcher's lock), so the chunks before
//! it are exactly those whose offsets the checkpoint records. Workers meet at the barrier
//! (every chunk before it is sequenced, none after it), hand over closed windows and snapshot
//! their open windows; worker 0 then snapshots the partition clocks and forwards the barrier
//! to the merger and the dead-letter output. The merger snapshots the windows it holds and
//! forwards the barrier to the sinks, which *pre-commit* (make their rows durable but not
//! visible). When every part arrived, the coordinator writes the state files, then the
//! manifest: the checkpoint is complete once the manifest is stored (an atomic put). Only
//! then are the sinks told to *commit* epoch `E`; a sink that crashed before committing
//! finishes the commit when it recovers from that checkpoint (two-phase commit).
//!
//! Layout under the checkpoint location (a folder or an object-store prefix):
//! `chk-<epoch>/op-<index>.arrow` (Arrow IPC: the partial accumulator rows of the open
//! windows of one operator), `chk-<epoch>/op-<index>-emitted.arrow` (the windows emitted since
//! the previous checkpoint, kept for SQL: see `retained`) and `chk-<epoch>/manifest.json`.

mod barrier;
mod fingerprint;
mod retained;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

pub use barrier::failpoint;
pub(crate) use barrier::Rendezvous;
pub use fingerprint::{compatibility, FingerprintChange, FingerprintChanges};
pub use retained::{RetainedFile, RetainedPart};
pub(crate) use store::encode_manifest;
use store::{chk_dir, manifest_name, sha256_hex};
pub use store::{
    lock_wait, open_object_store, refused_for_good, store_timeout, CheckpointStore, ManifestError,
    LOCK_WAIT, STORE_TIMEOUT,
};

use crate::events::Resume;
pub use crate::stats::CheckpointStats;
use crate::types::PartialWindow;
use crate::EngineError;

/// The manifest format this build writes. Format 2 keeps a repartition topic's partition
/// as one record with a vector of lanes (see [`PartitionRecord::lanes`]) where format 1 had a
/// record per lane (`topic/partition/lane`); both are read (format 1's lanes are folded by
/// [`restored_partitions`], and its state ids numbered lanes, see `crate::pool`). Weir before
/// format 2 refuses a checkpoint of format 2 ("has format 2 but this weir reads format 1").
const FORMAT: u32 = 2;
/// The oldest manifest format this build reads.
const FORMAT_OLDEST: u32 = 1;

/// The hidden first key column of an operator whose state is kept per source partition (a
/// worker pool): the partition's global id (`UInt32`), so that one partition's state can be
/// cut out of a checkpoint (see [`partials_of_partitions`]).
pub const PARTITION_COLUMN: &str = "__weir_partition";

/// In [`PARTITION_COLUMN`]: the rows of windows restored from a checkpoint that kept no
/// partition (written before windows closed per partition).
pub const NO_PARTITION: u32 = u32::MAX;

/// In [`PARTITION_COLUMN`]: the rows of a partition the checkpoint had and the run does not.
pub const UNKNOWN_PARTITION: u32 = u32::MAX - 1;

/// A checkpoint error caused by `e`, which says it all.
fn err(e: impl Into<crate::error::Cause>) -> EngineError {
    EngineError::checkpoint_caused("", e)
}

/// A checkpoint error caused by `e` while doing what `message` says.
fn caused(message: impl std::fmt::Display, e: impl Into<crate::error::Cause>) -> EngineError {
    EngineError::checkpoint_caused(message, e)
}

/// What a complete checkpoint holds, besides the state files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub pipeline: String,
    pub epoch: u64,
    /// When it was taken (epoch ms).
    pub created_ms: i64,
    /// Every source had ended: the run was complete.
    pub finished: bool,
    /// What the state depends on in the pipeline (see [`compatibility`]).
    pub fingerprint: BTreeMap<String, String>,
    pub partitions: Vec<PartitionRecord>,
    pub operators: Vec<OperatorRecord>,
    /// Per sink: what its commit needs (see `Committable::pre_commit`).
    pub sinks: BTreeMap<String, serde_json::Value>,
    pub dead_letter: serde_json::Value,
    pub counters: BTreeMap<String, u64>,
    /// Bytes of state files.
    pub state_bytes: u64,
    /// From the barrier to the checkpoint's encoding (its files are stored right after).
    #[serde(default)]
    pub took_ms: u64,
    /// In a worker pool: the partitions (`source/partition key`) this worker owned at the
    /// checkpoint, with the generation of its claim on each (see `crate::pool`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub owned: BTreeMap<String, u64>,
    /// The SHA-256 (hex) of every state file, by file name, verified on restore (empty in
    /// checkpoints written before checksums).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    /// A pool worker's checkpoint: complete only once sealed (see `crate::pool`), not when
    /// its manifest is stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
}

impl Manifest {
    /// A partition's record, by source name and partition key.
    pub fn partition(&self, source: &str, partition: &str) -> Option<&PartitionRecord> {
        self.partitions
            .iter()
            .find(|p| p.source == source && p.partition == partition)
    }

    /// Where a partition continues, by source name and partition key.
    pub fn resume(&self, source: &str, partition: &str) -> Option<Resume> {
        self.partition(source, partition)
            .map(PartitionRecord::resume)
    }

    /// Gives `source`'s partitions recorded under a key an earlier version wrote differently
    /// (`renames`: former, now, in order of preference) their key now, all at once (a former
    /// key can be another file's key now), unless a partition kept is recorded under that
    /// key; how many it renamed.
    pub fn rename_partitions(&mut self, source: &str, renames: &[(String, String)]) -> usize {
        let index: HashMap<&str, usize> = self
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.source == source)
            .map(|(i, p)| (p.partition.as_str(), i))
            .collect();
        let found: Vec<(usize, String)> = renames
            .iter()
            .filter_map(|(former, now)| Some((*index.get(former.as_str())?, now.clone())))
            .collect();
        let moving: HashSet<usize> = found.iter().map(|(i, _)| *i).collect();
        let kept: HashSet<&str> = index
            .iter()
            .filter(|(_, i)| !moving.contains(i))
            .map(|(key, _)| *key)
            .collect();
        // (a key is given once: by the first of several former spellings recorded)
        let mut given = HashSet::new();
        let renamed: Vec<(usize, String)> = found
            .into_iter()
            .filter(|(_, now)| !kept.contains(now.as_str()) && given.insert(now.clone()))
            .collect();
        for (i, now) in &renamed {
            self.partitions[*i].partition.clone_from(now);
        }
        renamed.len()
    }
}

/// One source partition in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub source: String,
    /// `topic/partition`, the file path, or the generator's number.
    pub partition: String,
    pub next_offset: u64,
    pub position: u64,
    /// The newest event time seen (the watermark follows from it).
    pub newest: i64,
    /// A worker pool's repartition topic (format 2): per upstream partition (lane), the
    /// upstream offset expected next; a message below it repeats one already counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lanes: Vec<u64>,
    /// Per lane, how far its newest event time is behind `newest` (ms), -1 when the lane had
    /// no event: small numbers, so that 1,000 lanes cost a few kilobytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lane_lag: Vec<i64>,
    /// The incarnation of the partition's log (see [`Resume::incarnation`]); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    /// The partition's global id in the run that wrote it: state kept per partition (windows
    /// closing per partition) names partitions by it, renumbered on restore when partitions
    /// were added before it. Absent from checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PartitionRecord {
    /// Per lane, the newest event time (from [`Self::lane_lag`]).
    pub fn lane_newest(&self) -> Vec<i64> {
        self.lane_lag
            .iter()
            .map(|&lag| {
                if lag < 0 || self.newest == i64::MIN || self.newest == i64::MAX {
                    i64::MIN
                } else {
                    self.newest.saturating_sub(lag)
                }
            })
            .collect()
    }

    /// Encodes lanes' newest event times as lags behind `newest` (see [`Self::lane_lag`]).
    pub fn lags(newest: i64, lanes: &[i64]) -> Vec<i64> {
        lanes
            .iter()
            .map(|&n| {
                if n == i64::MIN || newest == i64::MIN || newest == i64::MAX {
                    -1
                } else {
                    newest.saturating_sub(n).max(0)
                }
            })
            .collect()
    }

    /// Where the partition continues.
    pub fn resume(&self) -> Resume {
        Resume {
            next_offset: self.next_offset,
            position: self.position,
            incarnation: self.incarnation,
        }
    }
}

/// One windowed operator in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub name: String,
    /// The state file, when it had open windows.
    pub file: Option<String>,
    /// Accumulator rows (one per open key and window, per worker that held it).
    pub rows: u64,
    /// The watermark up to which the workers had handed windows over.
    pub flushed: i64,
    /// The watermark up to which windows were emitted.
    pub emitted: i64,
    /// Files of the emitted windows kept for SQL (`retain`), oldest first (see `retained`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<RetainedFile>,
    /// Of windows closing per partition: per partition (`source/partition`), the watermark
    /// up to which its windows were emitted. Its later rows for them stay late after a
    /// restore, even where the partition was idle and its own watermark is behind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub closed: BTreeMap<String, i64>,
}

/// A checkpoint read back: the manifest and each operator's partial windows.
pub struct Restored {
    pub manifest: Manifest,
    pub operators: Vec<Vec<PartialWindow>>,
}

/// Encodes partial windows as one Arrow IPC stream: `window_start`, keys, accumulator states.
pub fn encode_partials(partials: &[PartialWindow]) -> Result<Vec<u8>, EngineError> {
    let Some(first) = partials.first() else {
        return Ok(Vec::new());
    };
    let mut fields = vec![Field::new("window_start", DataType::Int64, false)];
    for (i, k) in first.keys.iter().enumerate() {
        fields.push(Field::new(format!("key_{i}"), k.data_type().clone(), true));
    }
    for (i, s) in first.states.iter().enumerate() {
        fields.push(Field::new(
            format!("state_{i}"),
            s.data_type().clone(),
            true,
        ));
    }
    let schema = Arc::new(Schema::new(fields));
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema).map_err(err)?;
        for p in partials {
            let rows = p.keys.first().map_or(0, |k| k.len());
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(1 + p.keys.len() + p.states.len());
            cols.push(Arc::new(Int64Array::from(vec![p.window_start; rows])));
            cols.extend(p.keys.iter().cloned());
            cols.extend(p.states.iter().cloned());
            let batch = RecordBatch::try_new(schema.clone(), cols).map_err(err)?;
            w.write(&batch).map_err(err)?;
        }
        w.finish().map_err(err)?;
    }
    Ok(out)
}

/// Decodes what [`encode_partials`] wrote, `keys` key columns per row.
pub fn decode_partials(bytes: &[u8]) -> Result<Vec<PartialWindow>, EngineError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(err)?;
    let schema = reader.schema();
    let keys = schema
        .fields()
        .iter()
        .filter(|f| f.name().starts_with("key_"))
        .count();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(err)?;
        let starts = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| EngineError::checkpoint("window_start is not an Int64 column"))?;
        // rows of one window are consecutive
        let mut from = 0;
        while from < batch.num_rows() {
            let start = starts.value(from);
            let mut to = from + 1;
            while to < batch.num_rows() && starts.value(to) == start {
                to += 1;
            }
            let slice = batch.slice(from, to - from);
            out.push(PartialWindow {
                window_start: start,
                keys: slice.columns()[1..1 + keys].to_vec(),
                states: slice.columns()[1 + keys..].to_vec(),
            });
            from = to;
        }
    }
    Ok(out)
}

/// Where an operator's state keeps each row's source partition (a `UInt32` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionColumn {
    /// A key column (a window's hidden first key, [`PARTITION_COLUMN`]).
    Key(usize),
    /// A state column (a view's hidden `max(partition)` aggregate).
    State(usize),
}

/// The rows of `partials` whose partition (in `column`) `keep` accepts: one worker's share
/// of a checkpoint taken by another.
pub fn partials_of_partitions(
    partials: &[PartialWindow],
    column: PartitionColumn,
    keep: &dyn Fn(u32) -> bool,
) -> Result<Vec<PartialWindow>, EngineError> {
    let mut out = Vec::new();
    for p in partials {
        let array = match column {
            PartitionColumn::Key(i) => p.keys.get(i),
            PartitionColumn::State(i) => p.states.get(i),
        };
        let Some(ids) = array.and_then(|k| k.as_any().downcast_ref::<arrow::array::UInt32Array>())
        else {
            return Err(err(format!(
                "the checkpoint's state is not kept per partition (its {column:?} is {:?}): \
                 it was written by a run outside a worker pool",
                array.map(|a| a.data_type().clone())
            )));
        };
        let mask: arrow::array::BooleanArray =
            ids.iter().map(|id| Some(id.is_some_and(keep))).collect();
        if mask.true_count() == 0 {
            continue;
        }
        let filter = |a: &ArrayRef| arrow::compute::filter(a, &mask).map_err(err);
        out.push(PartialWindow {
            window_start: p.window_start,
            keys: p.keys.iter().map(filter).collect::<Result<_, _>>()?,
            states: p.states.iter().map(filter).collect::<Result<_, _>>()?,
        });
    }
    Ok(out)
}

/// `partials` with their partition ids (in `column`) renumbered by `map` (ids it does not
/// know stay): state of a checkpoint whose partitions were numbered otherwise.
pub fn renumber_partitions(
    partials: Vec<PartialWindow>,
    column: PartitionColumn,
    map: &HashMap<u32, u32>,
) -> Result<Vec<PartialWindow>, EngineError> {
    let mut out = Vec::with_capacity(partials.len());
    for mut p in partials {
        let slot = match column {
            PartitionColumn::Key(i) => p.keys.get_mut(i),
            PartitionColumn::State(i) => p.states.get_mut(i),
        };
        let Some(slot) = slot else {
            return Err(err(format!("the checkpoint's state has no {column:?}")));
        };
        let Some(ids) = slot.as_any().downcast_ref::<arrow::array::UInt32Array>() else {
            return Err(err(format!(
                "the checkpoint's state is not kept per partition (its {column:?} is {:?})",
                slot.data_type()
            )));
        };
        let renumbered: arrow::array::UInt32Array = ids
            .iter()
            .map(|id| id.map(|id| map.get(&id).copied().unwrap_or(id)))
            .collect();
        *slot = Arc::new(renumbered);
        out.push(p);
    }
    Ok(out)
}

/// How a job checkpoints.
pub struct CheckpointSpec {
    pub store: Arc<CheckpointStore>,
    pub interval: Duration,
    /// Start a checkpoint as soon as windows were emitted to sinks (one at a time), not
    /// only every `interval`: their rows are committed a checkpoint's duration later.
    pub after_windows: bool,
    /// Complete checkpoints kept; older ones are deleted.
    pub keep: usize,
    pub pipeline: String,
    pub fingerprint: BTreeMap<String, String>,
    /// The checkpoint the job starts from.
    pub restored: Option<Restored>,
    /// In a worker pool: the partitions this worker owns, and the check that it still does,
    /// made before every manifest is stored.
    pub ownership: Option<Ownership>,
}

/// How a pool worker keeps its checkpoints consistent with the claims of the other workers
/// (implemented by `crate::pool::PoolStore`).
pub trait Fencing: Send + Sync {
    /// Fails ([`EngineError::Fenced`]) when another worker claimed one of `owned` (partition →
    /// this worker's claim generation) since: called before a manifest is stored.
    fn fence(&self, owned: &BTreeMap<String, u64>) -> Result<(), EngineError>;
    /// Called once the manifest of `epoch` is stored: completes the checkpoint, unless a
    /// worker claiming one of its partitions voided that epoch first; then it undoes the
    /// manifest and fails with [`EngineError::Fenced`] (the outputs must not commit).
    fn seal(&self, epoch: u64) -> Result<(), EngineError>;
    /// The epochs of this worker's store that the newest claim of some partition points to:
    /// garbage collection keeps them whatever `checkpoint.keep` says. Called by garbage
    /// collection, it also prunes the claims and release markers that nothing reads any
    /// more (older than the settled newest claim of a partition this worker holds).
    fn claimed_epochs(&self) -> Result<std::collections::BTreeSet<u64>, EngineError>;
}

/// The partitions a pool worker owns for one run, and how it checks it still owns them.
#[derive(Clone)]
pub struct Ownership {
    /// `source/partition key` → the generation of this worker's claim on it.
    pub owned: BTreeMap<String, u64>,
    /// Fences and seals every checkpoint (see [`Fencing`]): a worker that lost a partition
    /// does not complete a checkpoint for it, nor commit its outputs.
    pub fencing: Arc<dyn Fencing>,
}

/// Epochs shared between the coordinator and the outputs that commit.
#[derive(Default)]
pub(crate) struct Epochs {
    /// The newest complete checkpoint.
    pub completed: AtomicU64,
    /// The final checkpoint of an input that ended (not stopped), 0 before: the workers
    /// flush every window the end of the input closes before its barrier, so that its
    /// checkpoint commits them.
    pub end_of_input: AtomicU64,
    /// The merger sent window rows to sinks since the last checkpoint barrier was taken
    /// (read by the coordinator with `CheckpointSpec::after_windows`).
    pub windows_emitted: std::sync::atomic::AtomicBool,
}

/// A worker's part of one operator: (operator, partial windows, hand-over watermark, and
/// when the end of a bounded run's input emitted windows early, of windows closing per
/// partition each ended partition's closing watermark before the end).
pub(crate) type WorkerOpPart = (usize, Vec<PartialWindow>, i64, Option<Vec<(usize, i64)>>);

/// A part of a checkpoint, sent to the coordinator by a thread at the barrier.
pub(crate) enum Part {
    Worker {
        epoch: u64,
        ops: Vec<WorkerOpPart>,
    },
    Leader {
        epoch: u64,
        /// Newest event time per global partition.
        newest: Vec<i64>,
        /// Per global partition with lanes: each lane's newest event time.
        lane_newest: HashMap<usize, Vec<i64>>,
        counters: Vec<(String, u64)>,
    },
    Merger {
        epoch: u64,
        /// Per operator: held partial windows, the emitted watermark and, of windows closing
        /// per partition, each global partition's emitted watermark.
        ops: Vec<(Vec<PartialWindow>, i64, Vec<i64>)>,
        /// Per operator, with live SQL tables: the windows emitted since the last barrier.
        retained: Vec<RetainedPart>,
        counters: Vec<(String, u64)>,
    },
    Sink {
        epoch: u64,
        name: String,
        info: serde_json::Value,
        counters: Vec<(String, u64)>,
    },
    DeadLetter {
        epoch: u64,
        info: serde_json::Value,
        counters: Vec<(String, u64)>,
    },
}

impl Part {
    fn epoch(&self) -> u64 {
        match self {
            Part::Worker { epoch, .. }
            | Part::Leader { epoch, .. }
            | Part::Merger { epoch, .. }
            | Part::Sink { epoch, .. }
            | Part::DeadLetter { epoch, .. } => *epoch,
        }
    }
}

/// Per-partition emitted watermarks (by global id) by partition key (`source/partition`), of
/// the partitions the checkpoint records (`cut`: per global id, its source and key).
/// Windows the end of a bounded run's input closed are recorded closed up to the last one
/// it emitted, not up to the end (see the workers' `EndFlushed`): the merger's emitted
/// watermark of such an operator becomes the workers' hand-over watermark, and a
/// partition's closing watermark the workers' closing of it.
fn end_of_input_undone(
    emitted: &mut [i64],
    closed: &mut [Vec<i64>],
    flushed: &[i64],
    ended_closing: &[Option<Vec<(usize, i64)>>],
) {
    for (op, ended) in ended_closing.iter().enumerate() {
        let Some(ended) = ended else {
            continue;
        };
        if emitted[op] == i64::MAX && flushed[op] != i64::MAX {
            emitted[op] = flushed[op];
        }
        let mut before: HashMap<usize, i64> = HashMap::new();
        for &(p, wm) in ended {
            let b = before.entry(p).or_insert(wm);
            *b = (*b).max(wm);
        }
        for (p, wm) in before {
            if let Some(c) = closed[op].get_mut(p).filter(|c| **c == i64::MAX) {
                *c = wm;
            }
        }
    }
}

fn closed_by_key(
    cut: &[(String, String, Option<Resume>)],
    closed: &[i64],
    spec: &CheckpointSpec,
) -> BTreeMap<String, i64> {
    let owned = spec.ownership.as_ref().map(|o| &o.owned);
    closed
        .iter()
        .enumerate()
        .filter(|(_, &wm)| wm != i64::MIN)
        .filter_map(|(id, &wm)| {
            let (source, key, _) = cut.get(id)?;
            let full = format!("{source}/{key}");
            if owned.is_some_and(|o| !o.keys().any(|k| crate::types::covers(k, &full))) {
                return None;
            }
            Some((full, wm))
        })
        .collect()
}

/// The parts of one checkpoint being gathered.
pub(crate) struct Pending {
    pub epoch: u64,
    pub started: Instant,
    pub final_: bool,
    /// Global partition → (source, key, resume) at the barrier.
    pub cut: Vec<(String, String, Option<Resume>)>,
    /// Global partition with lanes → each lane's next upstream offset at the barrier.
    pub lanes: HashMap<usize, Vec<u64>>,
    /// Per operator: the emitted windows the previous checkpoint retained.
    pub retained_before: Vec<Vec<RetainedFile>>,
    parts: Vec<Part>,
    expected: usize,
}

impl Pending {
    pub fn new(
        epoch: u64,
        final_: bool,
        cut: Vec<(String, String, Option<Resume>)>,
        expected: usize,
    ) -> Self {
        Pending {
            epoch,
            started: Instant::now(),
            final_,
            cut,
            lanes: HashMap::new(),
            retained_before: Vec::new(),
            parts: Vec::new(),
            expected,
        }
    }

    /// Adds a part; returns whether every part is in.
    pub fn add(&mut self, part: Part) -> Result<bool, EngineError> {
        if part.epoch() != self.epoch {
            return Err(EngineError::Internal(format!(
                "a part of checkpoint {} arrived during checkpoint {}",
                part.epoch(),
                self.epoch
            )));
        }
        self.parts.push(part);
        Ok(self.parts.len() == self.expected)
    }

    /// Encodes the state files and the manifest, writing nothing (see [`Staged::store`]).
    pub fn stage(
        self,
        spec: &CheckpointSpec,
        operator_names: &[String],
    ) -> Result<Staged, EngineError> {
        let mut files = Vec::new();
        let n_ops = operator_names.len();
        let mut partials: Vec<Vec<PartialWindow>> = (0..n_ops).map(|_| Vec::new()).collect();
        let mut flushed = vec![i64::MIN; n_ops];
        let mut emitted = vec![i64::MIN; n_ops];
        let mut closed: Vec<Vec<i64>> = vec![Vec::new(); n_ops];
        let mut ended_closing: Vec<Option<Vec<(usize, i64)>>> = vec![None; n_ops];
        let mut newest: Vec<i64> = Vec::new();
        let mut lane_newest: HashMap<usize, Vec<i64>> = HashMap::new();
        let mut counters = BTreeMap::new();
        let mut sinks = BTreeMap::new();
        let mut dead_letter = serde_json::Value::Null;
        let mut retained_parts: Vec<RetainedPart> = Vec::new();
        for part in self.parts {
            match part {
                Part::Worker { ops, .. } => {
                    for (op, p, f, ended) in ops {
                        partials[op].extend(p);
                        flushed[op] = flushed[op].max(f);
                        if let Some(ended) = ended {
                            ended_closing[op].get_or_insert_with(Vec::new).extend(ended);
                        }
                    }
                }
                Part::Leader {
                    newest: n,
                    lane_newest: l,
                    counters: c,
                    ..
                } => {
                    newest = n;
                    lane_newest = l;
                    counters.extend(c);
                }
                Part::Merger {
                    ops,
                    retained,
                    counters: c,
                    ..
                } => {
                    for (op, (p, e, c)) in ops.into_iter().enumerate() {
                        partials[op].extend(p);
                        emitted[op] = e;
                        closed[op] = c;
                    }
                    retained_parts = retained;
                    counters.extend(c);
                }
                Part::Sink {
                    name,
                    info,
                    counters: c,
                    ..
                } => {
                    sinks.insert(name, info);
                    counters.extend(c);
                }
                Part::DeadLetter {
                    info, counters: c, ..
                } => {
                    dead_letter = info;
                    counters.extend(c);
                }
            }
        }
        end_of_input_undone(&mut emitted, &mut closed, &flushed, &ended_closing);
        let dir = chk_dir(self.epoch);
        let mut operators = Vec::new();
        let mut state_bytes = 0u64;
        let mut checksums = BTreeMap::new();
        for (i, name) in operator_names.iter().enumerate() {
            let rows: usize = partials[i]
                .iter()
                .map(|p| p.keys.first().map_or(0, |k| k.len()))
                .sum();
            let file = if partials[i].is_empty() {
                None
            } else {
                let bytes = encode_partials(&partials[i])?;
                state_bytes += bytes.len() as u64;
                let file = format!("op-{i}.arrow");
                checksums.insert(file.clone(), sha256_hex(&bytes));
                files.push((format!("{dir}/{file}"), bytes.into()));
                Some(file)
            };
            // a pool's emitted rows are not cut per partition: none kept (see `retained`)
            let retained = match retained_parts.get_mut(i) {
                Some(part) if spec.ownership.is_none() => {
                    let previous = self.retained_before.get(i).map_or(&[][..], |r| r);
                    let part = std::mem::take(part);
                    let (listed, new) = retained::next_files(self.epoch, i, previous, part)?;
                    if let Some((name, bytes)) = new {
                        state_bytes += bytes.len() as u64;
                        files.push((name, bytes.into()));
                    }
                    listed
                }
                _ => Vec::new(),
            };
            operators.push(OperatorRecord {
                name: name.clone(),
                file,
                rows: rows as u64,
                flushed: flushed[i],
                emitted: emitted[i],
                retained,
                closed: closed_by_key(&self.cut, &closed[i], spec),
            });
        }
        let owned = spec.ownership.as_ref().map(|o| &o.owned);
        let partitions = self
            .cut
            .iter()
            .enumerate()
            .filter_map(|(id, (source, key, resume))| {
                let r = (*resume)?;
                let full = format!("{source}/{key}");
                // a worker records the partitions it owns (with their lanes, `partition/lane`)
                if owned.is_some_and(|o| !o.keys().any(|k| crate::types::covers(k, &full))) {
                    return None;
                }
                let newest = newest.get(id).copied().unwrap_or(i64::MIN);
                let (lanes, lane_lag) = lane_fields(
                    newest,
                    self.lanes.get(&id).map_or(&[][..], |l| l),
                    lane_newest.get(&id).map_or(&[][..], |l| l),
                );
                Some(PartitionRecord {
                    source: source.clone(),
                    partition: key.clone(),
                    next_offset: r.next_offset,
                    position: r.position,
                    newest,
                    lanes,
                    lane_lag,
                    incarnation: r.incarnation,
                    id: u32::try_from(id).ok(),
                })
            })
            .collect();
        let manifest = Manifest {
            format: FORMAT,
            pipeline: spec.pipeline.clone(),
            epoch: self.epoch,
            created_ms: crate::time::now_ms(),
            finished: self.final_ && newest.iter().all(|&n| n == i64::MAX),
            fingerprint: spec.fingerprint.clone(),
            partitions,
            operators,
            sinks,
            dead_letter,
            counters,
            state_bytes,
            took_ms: self.started.elapsed().as_millis() as u64,
            owned: owned.cloned().unwrap_or_default(),
            checksums,
            sealed: spec.ownership.is_some(),
        };
        let manifest_bytes = encode_manifest(&manifest)?;
        Ok(Staged {
            files,
            manifest,
            manifest_bytes: manifest_bytes.into(),
        })
    }
}

/// A checkpoint encoded and not stored yet: its files' names and bytes, and its manifest.
pub(crate) struct Staged {
    files: Vec<(String, bytes::Bytes)>,
    pub manifest: Manifest,
    manifest_bytes: bytes::Bytes,
}

impl Staged {
    /// Writes the state files, then the manifest (a pool worker fences its partitions first
    /// and seals the epoch after). Each step is the same when made again, so a store that
    /// failed part-way can be called again with the same checkpoint.
    pub fn store(&self, spec: &CheckpointSpec) -> Result<(), EngineError> {
        for (name, bytes) in &self.files {
            // `Bytes` clones share the buffer
            spec.store.put(name, bytes.clone())?;
        }
        failpoint("before_manifest");
        if let Some(o) = &spec.ownership {
            o.fencing.fence(&o.owned)?;
        }
        let epoch = self.manifest.epoch;
        spec.store
            .put(&manifest_name(epoch), self.manifest_bytes.clone())?;
        if let Some(o) = &spec.ownership {
            failpoint("before_seal");
            o.fencing.seal(epoch)?;
            if !o.owned.is_empty() {
                failpoint("before_commit_owning");
            }
        }
        failpoint("before_commit");
        Ok(())
    }
}

/// Deletes every checkpoint but the newest `keep` intact ones (and unfinished or damaged
/// ones older than the oldest kept): a damaged manifest neither counts as kept nor stops the
/// collection (it is skipped with a warning), so the newest intact checkpoint, the fallback
/// of a restore, is never deleted. With `pool` set, a checkpoint that is the newest to own
/// some partition is kept too (the next owner of that partition restores it from there), and
/// so is every epoch in `claimed` (checkpoints of this store that a claim points to). The files
/// of emitted windows a kept manifest retains are kept with it (see `retained`).
pub(crate) fn collect_garbage(
    store: &CheckpointStore,
    keep: usize,
    pool: bool,
    claimed: &std::collections::BTreeSet<u64>,
) -> Result<(), EngineError> {
    let epochs = store.complete_epochs()?;
    if epochs.len() <= keep {
        return Ok(());
    }
    let keep = keep.max(1);
    // the newest `keep` intact manifests, newest first; and every intact one read
    let mut intact: Vec<(u64, Option<Manifest>)> = Vec::new();
    let mut kept = 0;
    let mut oldest_kept = None;
    // files of older checkpoints that kept manifests still list
    let mut listed = std::collections::HashSet::new();
    for &e in epochs.iter().rev() {
        if kept == keep && !pool {
            break;
        }
        match store.manifest(e) {
            Ok(Some(m)) => {
                if kept < keep {
                    kept += 1;
                    oldest_kept = Some(e);
                    let files = m.operators.iter().flat_map(|o| &o.retained);
                    listed.extend(files.map(|f| (f.epoch, f.name())));
                }
                intact.push((e, pool.then_some(m)));
            }
            Ok(None) => {}
            Err(d @ EngineError::Damaged { .. }) => {
                let why = d.damage().unwrap_or_default();
                tracing::warn!(
                    epoch = e,
                    "garbage collection skips a damaged checkpoint: {why}"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let Some(oldest_kept) = oldest_kept else {
        // not one intact checkpoint: delete nothing
        return Ok(());
    };
    let mut protected: std::collections::HashSet<u64> = claimed.iter().copied().collect();
    if pool {
        let mut seen = std::collections::HashSet::new();
        for (e, m) in &intact {
            for p in m.iter().flat_map(|m| m.owned.keys()) {
                if seen.insert(p.clone()) && *e < oldest_kept {
                    protected.insert(*e);
                }
            }
        }
    }
    let old: Vec<String> = store
        .list()?
        .into_iter()
        .filter(|n| {
            n.strip_prefix("chk-")
                .and_then(|r| r.split_once('/'))
                .and_then(|(e, _)| e.parse::<u64>().ok())
                .is_some_and(|e| {
                    e < oldest_kept && !protected.contains(&e) && !listed.contains(&(e, n.clone()))
                })
        })
        .collect();
    // a folder that still holds a listed file stays
    protected.extend(listed.iter().map(|(e, _)| *e));
    // manifests last, so an interrupted collection leaves no manifest without its files
    let (manifests, files): (Vec<String>, Vec<String>) =
        old.into_iter().partition(|n| n.ends_with("/manifest.json"));
    store.delete(&manifests)?;
    store.delete(&files)?;
    if let Some(root) = &store.local {
        // object stores have no folders; a local one keeps empty ones
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = e.file_name();
            let old = name
                .to_str()
                .and_then(|n| n.strip_prefix("chk-"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|epoch| epoch < oldest_kept && !protected.contains(&epoch));
            if old {
                // with the temporary files a crash may have left there
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// An empty manifest of checkpoint `epoch` (tests).
#[cfg(test)]
pub(crate) fn test_manifest(epoch: u64) -> Manifest {
    Manifest {
        format: FORMAT,
        pipeline: "p".into(),
        epoch,
        created_ms: 0,
        finished: false,
        fingerprint: BTreeMap::new(),
        partitions: vec![],
        operators: vec![],
        sinks: BTreeMap::new(),
        dead_letter: serde_json::Value::Null,
        owned: BTreeMap::new(),
        counters: BTreeMap::new(),
        state_bytes: 0,
        took_ms: 0,
        checksums: BTreeMap::new(),
        sealed: false,
    }
}

/// A record's lanes: the offsets and lags, both as long as the longer of the two inputs.
fn lane_fields(newest: i64, offsets: &[u64], lane_newest: &[i64]) -> (Vec<u64>, Vec<i64>) {
    let n = offsets.len().max(lane_newest.len());
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let mut lanes = offsets.to_vec();
    lanes.resize(n, 0);
    let mut times = lane_newest.to_vec();
    times.resize(n, i64::MIN);
    (lanes, PartitionRecord::lags(newest, &times))
}

/// Where a restored partition continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestoredPartition {
    pub resume: Resume,
    pub newest: i64,
    /// With lanes: each lane's next upstream offset and newest event time.
    pub lanes: Option<(Vec<u64>, Vec<i64>)>,
}

/// Maps a checkpoint's partitions to the job's global partition ids. A partition with lanes
/// recorded as one record per lane (`key/lane`, format 1) gets them folded: it continues at
/// the smallest of their offsets, each lane dropping what it had read.
pub(crate) fn restored_partitions(
    manifest: &Manifest,
    keys: &[(String, String)],
) -> HashMap<usize, RestoredPartition> {
    let mut by_key: HashMap<(&str, &str), &PartitionRecord> = HashMap::new();
    let mut lanes_of: HashMap<(&str, &str), Vec<(usize, &PartitionRecord)>> = HashMap::new();
    for r in &manifest.partitions {
        by_key.insert((&r.source, &r.partition), r);
        if let Some((base, lane)) = r.partition.rsplit_once('/') {
            if let (Ok(lane), 3) = (lane.parse::<usize>(), r.partition.split('/').count()) {
                lanes_of
                    .entry((&r.source, base))
                    .or_default()
                    .push((lane, r));
            }
        }
    }
    let mut out = HashMap::new();
    for (id, (source, key)) in keys.iter().enumerate() {
        let k = (source.as_str(), key.as_str());
        if let Some(p) = by_key.get(&k) {
            let lanes = (!p.lanes.is_empty() || !p.lane_lag.is_empty())
                .then(|| (p.lanes.clone(), p.lane_newest()));
            out.insert(
                id,
                RestoredPartition {
                    resume: p.resume(),
                    newest: p.newest,
                    lanes,
                },
            );
        } else if let Some(records) = lanes_of.get(&k) {
            out.insert(id, fold_lanes(records));
        }
    }
    out
}

/// One partition from its lanes' records (format 1).
fn fold_lanes(records: &[(usize, &PartitionRecord)]) -> RestoredPartition {
    let n = records.iter().map(|(l, _)| l + 1).max().unwrap_or(0);
    let (mut offsets, mut newest) = (vec![0; n], vec![i64::MIN; n]);
    for &(l, r) in records {
        offsets[l] = r.position;
        newest[l] = r.newest;
    }
    let ended = records.iter().all(|(_, r)| r.newest == i64::MAX);
    let next_offset = records
        .iter()
        .map(|(_, r)| r.next_offset)
        .min()
        .unwrap_or(0);
    RestoredPartition {
        resume: Resume {
            next_offset,
            position: 0,
            incarnation: 0,
        },
        newest: if ended {
            i64::MAX
        } else {
            newest.iter().copied().max().unwrap_or(i64::MIN)
        },
        lanes: Some((offsets, newest)),
    }
}

#[cfg(test)]
mod tests;
