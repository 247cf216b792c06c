//! Live state for SQL readers: consistent snapshots of a running job, published at *live
//! barriers*.
//!
//! Every `interval` a barrier enters every worker's queue at one point of the chunk order
//! (as a checkpoint barrier does). The workers meet there, hand the merger the deltas of
//! their views and a copy of their open windows' partial state; the merger adds what it
//! holds and publishes one [`LiveSnapshot`]: every table in it reflects the same prefix of
//! every source partition, with the run counters taken at the same point. Readers take the
//! current snapshot (an `Arc` swapped under a lock) and never stop ingestion for longer
//! than that swap.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::EngineError;

/// What kind of result an operator's table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// Window rows: emitted ones (`is_final = true`, kept for `retain`) and the open ones
    /// (`is_final = false`).
    Window {
        /// How long emitted windows stay queryable, counted back from the newest emitted
        /// window's end.
        retain_ms: i64,
    },
    /// A materialized view: one row per key, always current.
    View,
}

/// The SQL table of one operator.
#[derive(Debug, Clone)]
pub struct LiveTableDef {
    pub name: String,
    pub kind: LiveKind,
    /// The operator's output rows, and `is_final` last for windows.
    pub schema: SchemaRef,
    /// The key columns.
    pub keys: Vec<String>,
}

impl LiveTableDef {
    /// The table of an operator whose output rows have `output` as schema.
    pub fn new(name: &str, kind: LiveKind, output: &SchemaRef, keys: Vec<String>) -> Self {
        let schema = match kind {
            LiveKind::View => output.clone(),
            LiveKind::Window { .. } => {
                let mut fields: Vec<Field> =
                    output.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new("is_final", DataType::Boolean, false));
                Arc::new(Schema::new(fields))
            }
        };
        LiveTableDef {
            name: name.to_string(),
            kind,
            schema,
            keys,
        }
    }

    /// Output rows as rows of this table (`is_final` added for windows).
    pub fn rows(&self, batch: &RecordBatch, is_final: bool) -> Result<RecordBatch, EngineError> {
        if matches!(self.kind, LiveKind::View) {
            return Ok(batch.clone());
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(vec![
            is_final;
            batch.num_rows()
        ])));
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| EngineError::operator_caused(&self.name, "", e))
    }
}

/// Key → row lookups for point queries on a view: row-encoded keys hashed to the group ids
/// (= row numbers) of the view, which never change once given. It grows as keys arrive;
/// a snapshot of `n` rows ignores ids `>= n`. Different keys can share a hash, so lookups
/// return candidates that the reader filters again.
pub struct KeyIndex {
    converter: arrow::row::RowConverter,
    map: RwLock<IndexMap>,
}

#[derive(Default)]
struct IndexMap {
    first: HashMap<u64, u32>,
    /// Further ids of hashes given to more than one key.
    more: HashMap<u64, Vec<u32>>,
    len: usize,
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex").finish_non_exhaustive()
    }
}

fn hash_row(row: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    row.hash(&mut h);
    h.finish()
}

impl KeyIndex {
    /// An empty index of keys with these column types.
    pub fn new(key_types: &[DataType]) -> Result<Self, EngineError> {
        let converter = arrow::row::RowConverter::new(
            key_types
                .iter()
                .map(|t| arrow::row::SortField::new(t.clone()))
                .collect(),
        )
        .map_err(|e| EngineError::internal_caused("key index", e))?;
        Ok(KeyIndex {
            converter,
            map: RwLock::new(IndexMap::default()),
        })
    }

    /// Adds the keys of groups `first_id..` (one row per group, in id order).
    pub fn extend(&self, keys: &[ArrayRef], first_id: usize) -> Result<(), EngineError> {
        let rows = self
            .converter
            .convert_columns(keys)
            .map_err(|e| EngineError::internal_caused("key index", e))?;
        let hashes: Vec<u64> = rows.iter().map(|r| hash_row(r.as_ref())).collect();
        let mut map = match self.map.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        for (i, h) in hashes.into_iter().enumerate() {
            let id = (first_id + i) as u32;
            match map.first.entry(h) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(id);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    map.more.entry(h).or_default().push(id);
                }
            }
        }
        map.len = map.len.max(first_id + keys.first().map_or(0, |k| k.len()));
        Ok(())
    }

    /// Candidate ids of each key row of `keys` (arrays of the key columns' types).
    pub fn lookup(&self, keys: &[ArrayRef]) -> Result<Vec<u32>, EngineError> {
        let rows = self
            .converter
            .convert_columns(keys)
            .map_err(|e| EngineError::internal_caused("key index", e))?;
        let map = match self.map.read() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::new();
        for r in rows.iter() {
            let h = hash_row(r.as_ref());
            if let Some(&id) = map.first.get(&h) {
                out.push(id);
                if let Some(more) = map.more.get(&h) {
                    out.extend_from_slice(more);
                }
            }
        }
        Ok(out)
    }
}

/// Where one source partition stood at a snapshot.
#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub source: String,
    /// `topic/partition`, a file path, or the generator's partition number.
    pub partition: String,
    /// The partition's watermark (event time, ms), `None` before its first event.
    pub watermark: Option<i64>,
    /// The newest event time seen, `None` before its first event.
    pub newest: Option<i64>,
    /// The partition ended (a bounded input read to its end).
    pub ended: bool,
    /// The partition does not hold its source's watermark back: not read by this process
    /// (a Kafka partition the group gave another one), or silent for `idle_timeout`.
    pub idle: bool,
    /// Kafka consumer lag: messages between the partition's high watermark and the next
    /// offset this process reads, from the consumer's latest statistics (every few seconds);
    /// `None` for other sources and for partitions this process does not read.
    pub lag: Option<i64>,
    /// Records read, bad records and late rows of this partition since the run started.
    pub counts: crate::stats::PartitionCount,
}

/// One consistent view of a running job.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    /// Snapshots published by this run so far, this one included (0: none yet).
    pub seq: u64,
    /// When it was taken (Unix ms).
    pub taken_ms: i64,
    /// Per table of [`LiveState::tables`], its rows.
    pub tables: Vec<Vec<RecordBatch>>,
    /// Per table, a key index over its (single) batch, where it has one (views).
    pub indexes: Vec<Option<Arc<KeyIndex>>>,
    /// Run counters at the snapshot (`records_in`, `bad`, `late/<window>`, ...).
    pub counters: BTreeMap<String, u64>,
    pub partitions: Vec<PartitionStatus>,
    /// A pool worker's repartition stages: one row per upstream partition they read.
    pub stages: Vec<crate::stage_stats::StageStatus>,
    /// Every source ended and every output was written: nothing changes any more.
    pub finished: bool,
    /// In a worker pool: the partitions (`source`, `partition`) whose state this snapshot
    /// holds, as the job that published it owned them (stamped by [`LiveState::publish`]); a
    /// query over the pool checks that the workers' snapshots hold every partition once.
    pub owned: Option<Arc<Owned>>,
}

/// The live state of one job, shared by the engine (which publishes) and SQL readers.
#[derive(Debug)]
pub struct LiveState {
    pub pipeline: String,
    /// One per operator of the job, in the job's operator order.
    pub tables: Vec<LiveTableDef>,
    current: RwLock<Arc<LiveSnapshot>>,
    /// In a worker pool: this worker's id and the partitions (`source`, `partition`) its
    /// job owns (the state outlives the worker's jobs: each sets its own).
    pool: Option<(String, RwLock<Owned>)>,
    /// More jobs follow the one publishing (a pool worker's state, kept across its jobs): a
    /// job's last snapshot does not finish the state, [`LiveState::finish`] does.
    jobs_follow: AtomicBool,
    /// A job ended and the next one has not published yet: the last snapshot may hold rows
    /// of partitions another worker reads now, so queries are refused (see
    /// [`LiveState::between_jobs`]).
    between_jobs: AtomicBool,
    /// The job restores state that its first snapshot has not published yet: until then
    /// the tables would answer empty, so queries are refused (see [`LiveState::starting`]).
    starting: AtomicBool,
}

/// The partitions (`source`, `partition`) a pool worker's job owns.
pub type Owned = std::collections::HashSet<(String, String)>;

impl LiveState {
    /// A state with no snapshot yet (tables are empty until the first barrier).
    pub fn new(pipeline: &str, tables: Vec<LiveTableDef>) -> Self {
        let empty = LiveSnapshot {
            tables: tables.iter().map(|_| Vec::new()).collect(),
            indexes: tables.iter().map(|_| None).collect(),
            ..Default::default()
        };
        LiveState {
            pipeline: pipeline.to_string(),
            tables,
            current: RwLock::new(Arc::new(empty)),
            pool: None,
            jobs_follow: AtomicBool::new(false),
            between_jobs: AtomicBool::new(false),
            starting: AtomicBool::new(false),
        }
    }

    /// The job about to publish restores state from a checkpoint: until its first snapshot
    /// (or a finished one), the tables would show none of it, and queries are refused.
    pub fn restoring(&self) {
        let now = self.current();
        if now.seq == 0 && !now.finished {
            self.starting.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the state restored from a checkpoint is not published yet (see
    /// [`LiveState::restoring`]).
    pub fn starting(&self) -> bool {
        self.starting.load(Ordering::SeqCst)
    }

    /// The state of pool worker `worker`, whose job owns `owned` (`source`, `partition`).
    pub fn in_pool(mut self, worker: &str, owned: Owned) -> Self {
        self.pool = Some((worker.to_string(), RwLock::new(owned)));
        self
    }

    /// In a pool: the partitions the worker's job owns.
    pub fn owned(&self) -> Option<Owned> {
        let (_, owned) = self.pool.as_ref()?;
        Some(match owned.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }

    /// In a pool: from now on, the partitions of the worker's new job.
    pub fn set_owned(&self, owned: Owned) {
        if let Some((_, o)) = &self.pool {
            match o.write() {
                Ok(mut g) => *g = owned,
                Err(p) => *p.into_inner() = owned,
            }
        }
    }

    /// The pool worker's id, `None` outside a pool.
    pub fn worker(&self) -> Option<&str> {
        self.pool.as_ref().map(|(w, _)| w.as_str())
    }

    /// Whether this process owns a partition (always, outside a pool).
    pub fn owns(&self, source: &str, partition: &str) -> bool {
        match &self.pool {
            Some((_, owned)) => {
                let owned = match owned.read() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                owned
                    .iter()
                    .any(|(s, p)| s == source && crate::types::covers(p, partition))
            }
            None => true,
        }
    }

    /// The newest published snapshot.
    pub fn current(&self) -> Arc<LiveSnapshot> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the current snapshot (the job's merger publishes; tests may too). Numbers
    /// only grow: a pool worker's next job numbers its snapshots from 1 again, and they
    /// follow the last job's here.
    pub fn publish(&self, snapshot: LiveSnapshot) {
        self.publish_as(snapshot, false);
    }

    /// Publishes a job's last snapshot (its input is done; `finished` comes once its outputs
    /// are too, see [`Self::outputs_finished`]): in a pool, the job ended.
    pub fn publish_last(&self, snapshot: LiveSnapshot) {
        self.publish_as(snapshot, true);
    }

    fn publish_as(&self, mut snapshot: LiveSnapshot, last: bool) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let follows = self.jobs_follow.load(Ordering::SeqCst);
        if follows && snapshot.seq == 0 && g.seq > 0 {
            // a new job's placeholder (empty tables, before its first barrier): the last
            // job's rows stay (refused while between jobs), and subscribers see no churn
            return;
        }
        // a job's last snapshot, when more jobs follow: the partitions it read may be
        // released next (it is published before the job's hand-over commits)
        let job_ended = (snapshot.finished || last) && follows;
        if job_ended {
            snapshot.finished = false;
        }
        self.between_jobs.store(job_ended, Ordering::SeqCst);
        if snapshot.seq > 0 || snapshot.finished {
            self.starting.store(false, Ordering::SeqCst);
        }
        if snapshot.seq > 0 && snapshot.seq <= g.seq {
            snapshot.seq = g.seq + 1;
        }
        // the job publishing owns these: the next job's are set before it publishes
        snapshot.owned = self.owned().map(Arc::new);
        *g = Arc::new(snapshot);
    }

    /// The job's outputs finished (its last commits made) after its merger published its
    /// last snapshot: that snapshot is final. Before, `finished` came while the sinks still
    /// committed, and a reader of `weir_status` or `/metrics` could see a finished run whose
    /// last rows were not in its outputs yet.
    pub fn outputs_finished(&self) {
        let mut last = (*self.current()).clone();
        last.finished = true;
        self.publish(last);
    }

    /// A job ended (also on an error) and the next one has not published yet.
    pub fn end_job(&self) {
        if self.jobs_follow.load(Ordering::SeqCst) {
            self.between_jobs.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the state is between two jobs of a pool worker: the last snapshot may hold
    /// rows of partitions that moved to another worker, whose own rows a query over the pool
    /// would count twice; answers wait for the next job's first snapshot.
    pub fn between_jobs(&self) -> bool {
        self.between_jobs.load(Ordering::SeqCst)
    }

    /// From now on, a job's last snapshot does not finish the state: more jobs follow.
    pub fn expect_more_jobs(&self) {
        self.jobs_follow.store(true, Ordering::SeqCst);
    }

    /// No job follows the last one, which ended without an error: its last snapshot is final
    /// (subscribers are told so), as a job's last snapshot is outside a pool. Queries are
    /// answered from it when `serve` (the worker still holds its partitions), else refused
    /// (they are being released).
    pub fn finish(&self, serve: bool) {
        self.jobs_follow.store(false, Ordering::SeqCst);
        self.between_jobs.store(!serve, Ordering::SeqCst);
        let mut last = (*self.current()).clone();
        last.finished = true;
        self.publish(last);
        self.between_jobs.store(!serve, Ordering::SeqCst);
    }

    /// The index of a table by name.
    pub fn table(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|t| t.name == name)
    }
}

/// Live snapshots of a job: where to publish them and how often.
pub struct LiveSpec {
    pub state: Arc<LiveState>,
    pub interval: Duration,
}

/// Emitted window rows kept queryable for `retain`.
pub(crate) struct Retained {
    /// (window end, rows) in emission order.
    batches: Vec<(i64, RecordBatch)>,
    newest_end: i64,
    /// Windows ending at or before this are no longer kept.
    keep_after: i64,
    /// The windows emitted since the last checkpoint barrier took them (see
    /// [`Retained::take_unsaved`]).
    unsaved: Vec<(i64, RecordBatch)>,
    /// Files the checkpoints list since the last one that held every retained window.
    files: usize,
}

/// Files of emitted windows a checkpoint lists at most before the next one writes every
/// retained window into one file instead (so a manifest lists a few files, not one per
/// checkpoint of the last `retain`, and a restore reads a few).
const RETAINED_FILES_MAX: usize = 16;

/// What a checkpoint barrier takes of a table's emitted windows (see [`Retained::take_unsaved`]).
pub(crate) struct Unsaved {
    /// (window end, rows) to write.
    pub windows: Vec<(i64, RecordBatch)>,
    /// Windows ending at or before this are no longer kept.
    pub keep_after: i64,
    /// `windows` are every retained window: they replace the files listed so far.
    pub whole: bool,
}

impl Retained {
    pub fn new() -> Self {
        Retained {
            batches: Vec::new(),
            newest_end: i64::MIN,
            keep_after: i64::MIN,
            unsaved: Vec::new(),
            files: 0,
        }
    }

    /// Keeps emitted rows (already in the table's schema); `window_end` is that of the
    /// batch's window (the merger emits one batch per window).
    pub fn add(&mut self, window_end: i64, rows: RecordBatch, retain_ms: i64) {
        if self.keep(window_end, rows.clone(), retain_ms) {
            self.unsaved.push((window_end, rows));
        }
    }

    /// Keeps rows a checkpoint already holds (restored from it). The next checkpoint that
    /// writes windows writes them all, so that it lists one file, of the windows as shown.
    pub fn restore(&mut self, window_end: i64, rows: RecordBatch, retain_ms: i64) {
        self.files = RETAINED_FILES_MAX;
        self.keep(window_end, rows, retain_ms);
    }

    /// Keeps rows of the window ending at `window_end` unless too old; says whether.
    fn keep(&mut self, window_end: i64, rows: RecordBatch, retain_ms: i64) -> bool {
        self.newest_end = self.newest_end.max(window_end);
        let keep_after = self.newest_end.saturating_sub(retain_ms);
        let kept = window_end > keep_after;
        if kept {
            self.batches.push((window_end, rows));
        }
        // (only when it moved: a window closing per partition comes in many batches)
        if keep_after > self.keep_after {
            self.keep_after = keep_after;
            self.batches.retain(|(end, _)| *end > keep_after);
            self.unsaved.retain(|(end, _)| *end > keep_after);
        }
        kept
    }

    /// The windows a checkpoint barrier writes: those emitted since the last call, or every
    /// retained window once [`RETAINED_FILES_MAX`] files are listed.
    pub fn take_unsaved(&mut self) -> Unsaved {
        let keep_after = self.keep_after;
        if self.unsaved.is_empty() {
            return Unsaved {
                windows: Vec::new(),
                keep_after,
                whole: false,
            };
        }
        self.files += 1;
        if self.files > RETAINED_FILES_MAX {
            self.files = 1;
            self.unsaved.clear();
            return Unsaved {
                windows: self.batches.clone(),
                keep_after,
                whole: true,
            };
        }
        Unsaved {
            windows: std::mem::take(&mut self.unsaved),
            keep_after,
            whole: false,
        }
    }

    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.batches.iter().map(|(_, b)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn batch(v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    #[test]
    fn a_state_kept_across_jobs_numbers_on_and_finishes_only_when_told() {
        let owned = |p: &str| {
            [("events".to_string(), p.to_string())]
                .into_iter()
                .collect()
        };
        let state = LiveState::new("p", vec![]).in_pool("w1", owned("t/0"));
        state.expect_more_jobs();
        let snapshot = |seq, finished| LiveSnapshot {
            seq,
            finished,
            ..Default::default()
        };
        // the first job: 1, 2, then its last snapshot, which does not finish the state
        state.publish(snapshot(1, false));
        assert!(!state.between_jobs());
        state.publish(snapshot(2, true));
        assert_eq!(state.current().seq, 2);
        assert!(!state.current().finished, "more jobs follow");
        let holds = |p: &str| state.current().owned.as_deref() == Some(&owned(p));
        assert!(
            holds("t/0"),
            "a snapshot holds the partitions of the job that published it"
        );
        assert!(state.between_jobs(), "its partitions may move now");
        // the next job's placeholder changes nothing; it numbers from 1 again, and owns
        // another partition
        state.publish(snapshot(0, false));
        assert_eq!(state.current().seq, 2);
        assert!(state.between_jobs(), "until its first real snapshot");
        state.set_owned(owned("t/1"));
        assert!(state.owns("events", "t/1") && !state.owns("events", "t/0"));
        assert!(holds("t/0"), "the last job's snapshot still holds its own");
        state.publish(snapshot(1, false));
        assert!(!state.between_jobs());
        assert!(holds("t/1"));
        assert_eq!(state.current().seq, 3, "numbers keep growing");
        state.end_job();
        assert!(state.between_jobs(), "a job that failed ends too");
        state.publish(snapshot(2, false));
        assert_eq!(state.current().seq, 4);
        state.finish(true);
        assert!(state.current().finished && !state.between_jobs());
        assert_eq!(state.current().seq, 5, "the final snapshot is a new one");
        // outside a pool, a job's last snapshot finishes the state
        let alone = LiveState::new("p", vec![]);
        alone.publish(snapshot(1, true));
        assert!(alone.current().finished);
        assert!(
            alone.current().owned.is_none(),
            "every partition, outside a pool"
        );
    }

    #[test]
    fn retained_windows_are_pruned_by_the_newest_end() {
        let mut r = Retained::new();
        r.add(60_000, batch(1), 120_000);
        r.add(120_000, batch(2), 120_000);
        r.add(180_000, batch(3), 120_000);
        assert_eq!(
            r.batches().count(),
            2,
            "the window ending at 60s is older than 2 min"
        );
        // a checkpoint barrier takes the windows it has not written yet, once
        let u = r.take_unsaved();
        assert_eq!((u.windows.len(), u.keep_after, u.whole), (2, 60_000, false));
        assert!(r.take_unsaved().windows.is_empty());
        r.add(600_000, batch(4), 120_000);
        assert_eq!(r.batches().count(), 1);
        // rows restored from a checkpoint are kept but not written again on their own: the
        // next write holds every retained window, and replaces the files listed before
        r.restore(540_000, batch(5), 120_000);
        assert_eq!(r.batches().count(), 2);
        let u = r.take_unsaved();
        assert_eq!((u.windows.len(), u.keep_after, u.whole), (2, 480_000, true));
        // then one file per barrier with new windows, until the list is long again
        for i in 0..RETAINED_FILES_MAX as i64 {
            r.add(660_000 + i, batch(6), 120_000);
            let u = r.take_unsaved();
            let last = i == RETAINED_FILES_MAX as i64 - 1;
            assert_eq!(u.whole, last, "barrier {i}");
            assert_eq!(u.windows.len(), if last { r.batches().count() } else { 1 });
        }
    }

    #[test]
    fn the_key_index_finds_rows_by_key_and_ignores_what_it_never_saw() {
        use arrow::array::StringArray;
        let index = KeyIndex::new(&[DataType::Utf8, DataType::Int64]).unwrap();
        let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let nums: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        index.extend(&[names, nums], 0).unwrap();
        let more_names: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let more_nums: ArrayRef = Arc::new(Int64Array::from(vec![9]));
        index.extend(&[more_names, more_nums], 3).unwrap();
        let q = |s: &str, n: i64| {
            index
                .lookup(&[
                    Arc::new(StringArray::from(vec![s])) as ArrayRef,
                    Arc::new(Int64Array::from(vec![n])) as ArrayRef,
                ])
                .unwrap()
        };
        assert_eq!(q("b", 2), vec![1]);
        assert_eq!(q("a", 9), vec![3]);
        assert!(q("a", 2).is_empty());
        assert!(q("zz", 1).is_empty());
    }

    #[test]
    fn window_tables_get_is_final_and_views_stay_as_they_are() {
        let out = batch(7).schema();
        let w = LiveTableDef::new("w", LiveKind::Window { retain_ms: 1 }, &out, vec![]);
        let rows = w.rows(&batch(7), false).unwrap();
        assert_eq!(rows.schema().field(1).name(), "is_final");
        let v = LiveTableDef::new("v", LiveKind::View, &out, vec![]);
        assert_eq!(v.rows(&batch(7), true).unwrap().num_columns(), 1);
        let state = LiveState::new("p", vec![w, v]);
        assert_eq!(state.current().seq, 0);
        assert_eq!(state.table("v"), Some(1));
    }
}
