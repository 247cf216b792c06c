//! Which input offsets are fully reflected in durable outputs, so that a log source can
//! commit them (at least once: a restart from a committed offset loses nothing).
//!
//! After a worker handles a chunk of a tracked partition it reports the chunk's *residue*:
//! for every operator, the windows its rows went to (by the watermark that closes them), the
//! smallest offset that went to each, and how many hand-overs to the merger the worker had
//! made before. The report travels through the dead-letter channel, behind the chunk's dead
//! letters, and reaches this tracker only once the dead-letter output was flushed. Sinks
//! report, once durable, the watermark up to which an operator's windows were emitted and
//! every worker's hand-overs those emissions include. A window of a residue is durable when
//! the watermark passed it *and* a later hand-over of its worker is included: a row of a
//! lagging partition can reopen a window that was emitted before it arrived. An offset is
//! committable when every chunk before it is reported and every window holding one of its
//! rows is durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{WATERMARK_END, WATERMARK_MIN};
use crate::reread::{Clause, Floors, Reread, RereadNote};

/// What one handled chunk still depends on.
#[derive(Debug, Clone)]
pub struct ChunkResidue {
    /// Global partition id.
    pub partition: usize,
    pub seq: u64,
    /// The offset after the chunk's last record.
    pub next_offset: u64,
    /// Per operator reading the chunk's source.
    pub windows: Vec<OpResidue>,
}

/// The windows of one operator a chunk's rows went to.
#[derive(Debug, Clone)]
pub struct OpResidue {
    pub operator: usize,
    /// The worker that aggregated them.
    pub worker: usize,
    /// The worker's hand-overs to the merger before it aggregated them.
    pub after_handover: u64,
    /// (watermark closing the window, smallest offset of a row in it).
    pub windows: Vec<(i64, u64)>,
}

/// How far an operator's output is durable in one sink.
#[derive(Debug, Clone)]
pub struct Durable {
    /// The operator's windows closed at this watermark.
    pub watermark: i64,
    /// Per worker: hand-overs included.
    pub covered: Vec<u64>,
    /// Of an operator whose windows close per partition: per global partition, the
    /// watermark up to which its windows are included (a window of a residue is durable
    /// when its partition's passed it, whatever the hand-overs: a worker promises a
    /// partition's closing watermark only once its rows below it are handed over).
    pub partitions: Option<std::sync::Arc<Vec<i64>>>,
}

#[derive(Default)]
struct PartitionProgress {
    tracked: bool,
    next_seq: u64,
    pending: BTreeMap<u64, ChunkResidue>,
    committable: Option<u64>,
    /// A view's row was read: the committable offset stays where it is for good, and
    /// residues are no longer kept.
    held: bool,
    /// Views' rows do not hold this partition back (see [`Progress::release_views`]).
    views_released: bool,
    /// Rows an earlier run already counted (see [`crate::reread`]).
    reread: Option<std::sync::Arc<Reread>>,
    /// The note the partition started from: its clauses are committed again while they
    /// reach past the committable offset (whether or not they name an operator of this run).
    carried: Option<RereadNote>,
}

struct Inner {
    /// Offsets come from complete checkpoints, not from residues.
    checkpoints: bool,
    partitions: Vec<PartitionProgress>,
    /// Per operator: per sink of the operator, how far its rows are durable.
    durable: Vec<Vec<Durable>>,
    /// Per operator: its identity across runs ([`crate::reread::operator_key`]); `None`
    /// for one that takes no note (processing time). Empty: no notes.
    keys: Vec<Option<u64>>,
    /// The operators' floors (see [`crate::reread::RereadNote::floors`]).
    floors: Floors,
    /// Per source: its first assignment's notes were read ([`Progress::assignment_read`]).
    sources_assigned: Vec<bool>,
}

/// The tracker of committable offsets of a job.
pub struct Progress {
    inner: Mutex<Inner>,
    finished: AtomicBool,
}

impl Progress {
    /// A tracker for `partitions` global partitions and operators with the given sink counts.
    pub fn new(partitions: usize, operator_sinks: &[usize]) -> Self {
        Progress {
            inner: Mutex::new(Inner {
                checkpoints: false,
                partitions: (0..partitions)
                    .map(|_| PartitionProgress::default())
                    .collect(),
                durable: operator_sinks
                    .iter()
                    .map(|&n| {
                        vec![
                            Durable {
                                watermark: WATERMARK_MIN,
                                covered: Vec::new(),
                                partitions: None,
                            };
                            n.max(1)
                        ]
                    })
                    .collect(),
                keys: Vec::new(),
                floors: Floors::default(),
                sources_assigned: Vec::new(),
            }),
            finished: AtomicBool::new(false),
        }
    }

    /// Tracks a partition whose reader commits offsets. Its chunks must report residues.
    pub fn track(&self, partition: usize) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.partitions[partition].tracked = true;
        }
    }

    /// Whether a partition is tracked (its chunks report residues).
    pub fn is_tracked(&self, partition: usize) -> bool {
        self.tracking(partition).is_some()
    }

    /// `None` when a partition is not tracked; else the note it started from (the rows an
    /// earlier run counted, and its floors), if any: under one lock, once per chunk.
    pub fn tracking(&self, partition: usize) -> Option<Option<std::sync::Arc<Reread>>> {
        let inner = self.inner.lock().ok()?;
        let p = inner.partitions.get(partition)?;
        (!inner.checkpoints && p.tracked).then(|| p.reread.clone())
    }

    /// Committable offsets are those of complete checkpoints (see [`Self::record_checkpoint`]);
    /// chunks report no residues.
    pub fn use_checkpoints(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.checkpoints = true;
        }
    }

    /// A complete checkpoint holds a partition's state up to `next_offset`.
    pub fn record_checkpoint(&self, partition: usize, next_offset: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(p) = inner.partitions.get_mut(partition) {
                p.committable = Some(next_offset);
            }
        }
    }

    /// Views' rows no longer hold `partition`'s offsets back: for a source whose positions
    /// cannot wait (NATS acknowledgements: unacknowledged messages stop the stream at
    /// `max_ack_pending` and come again after `ack_wait`), a view without checkpoints then
    /// counts after a restart only what it reads.
    pub fn release_views(&self, partition: usize) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(p) = inner.partitions.get_mut(partition) {
                p.views_released = true;
            }
        }
    }

    /// Starts a partition again from chunk `seq` (after it was revoked and assigned anew):
    /// residues of older chunks are forgotten.
    pub fn restart(&self, partition: usize, seq: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.checkpoints {
                return;
            }
            let p = &mut inner.partitions[partition];
            p.pending.clear();
            p.next_seq = seq;
            // a view's rows read before the revocation are still in no output: the offset
            // stays held where it was
            if !p.held {
                p.committable = None;
            }
        }
    }

    /// Adds residues whose dead letters are durable.
    pub fn add_residues(&self, residues: impl IntoIterator<Item = ChunkResidue>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        for r in residues {
            let p = &mut inner.partitions[r.partition];
            if r.seq >= p.next_seq && !p.held {
                p.pending.insert(r.seq, r);
            }
        }
        advance_all(&mut inner);
    }

    /// Records that `sink` (the operator's `sink`-th) durably holds what `durable` says of
    /// the operator's windows.
    pub fn sink_durable(&self, operator: usize, sink: usize, durable: Durable) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.durable[operator][sink] = durable;
        advance_all(&mut inner);
    }

    /// Sets the operators' identities across runs ([`crate::reread::operator_key`], one per
    /// operator, `None` for one that takes no note): without them, no [`RereadNote`] is
    /// written or read. Per operator, `ops` says whether its windows close per partition
    /// and which source it reads (missing: no and 0); `partition_source` gives each
    /// partition's source (missing: 0).
    pub fn set_operator_keys(
        &self,
        keys: Vec<Option<u64>>,
        mut ops: Vec<(bool, usize)>,
        mut partition_source: Vec<usize>,
    ) {
        if let Ok(mut inner) = self.inner.lock() {
            ops.resize(keys.len(), (false, 0));
            partition_source.resize(inner.partitions.len(), 0);
            let (per_partition, op_source) = ops.into_iter().unzip();
            inner.floors = Floors::new(per_partition, op_source, partition_source);
            inner.keys = keys;
        }
    }

    /// What to commit beside [`Self::committable`]: a [`RereadNote`] of the rows read past it
    /// whose windows are durable already, as text; `None` when there are none (the tests';
    /// readers take it with its offset, [`Self::commit_points`]).
    #[cfg(test)]
    pub fn note(&self, partition: usize) -> Option<String> {
        self.commit_points(&[partition]).pop().flatten()?.1
    }

    /// Per partition of `partitions`: the offset to commit ([`Self::committable`]) and the
    /// note to commit with it (see [`crate::reread`]), read together.
    pub fn commit_points(&self, partitions: &[usize]) -> Vec<Option<(u64, Option<String>)>> {
        let Ok(inner) = self.inner.lock() else {
            return vec![None; partitions.len()];
        };
        let durable =
            (!inner.checkpoints && !inner.keys.is_empty()).then(|| effective(&inner.durable));
        partitions
            .iter()
            .map(|&id| {
                let offset = inner.partitions.get(id)?.committable?;
                let note = durable
                    .as_deref()
                    .and_then(|d| note_of(&inner, d, id))
                    .map(|n| n.encode());
                Some((offset, note))
            })
            .collect()
    }

    /// A partition starts at `committed`, committed with `note` ([`Self::commit_points`]' text, maybe
    /// of an earlier run; empty when none): the rows it names are skipped from now on, its
    /// floors apply, and its clauses are committed again while they matter. Returns whether
    /// the note says anything of this run's operators.
    pub fn start_reading(&self, partition: usize, committed: u64, note: &str) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let note =
            RereadNote::decode(note).filter(|_| !inner.checkpoints && !inner.keys.is_empty());
        let resolved = note
            .as_ref()
            .and_then(|n| Reread::resolve(n, &inner.keys, committed))
            .map(std::sync::Arc::new);
        // (floors are carried as resolved: see `note_of`)
        let carried = note
            .map(|n| RereadNote {
                clauses: n
                    .clauses
                    .into_iter()
                    .filter(|c| c.read_to > committed)
                    .collect(),
                floors: Vec::new(),
            })
            .filter(|n| !n.clauses.is_empty());
        let found = resolved.is_some();
        let checkpoints = inner.checkpoints;
        if let Some(p) = inner.partitions.get_mut(partition) {
            p.reread = resolved;
            p.carried = carried;
            // (the previous assignment's offset must not pass the note before `restart`)
            if !p.held && !checkpoints {
                p.committable = None;
            }
        }
        found
    }

    /// An assignment of one source's partitions (`assigned`), its notes read: `committed`
    /// start from a committed offset, `uncommitted` have none (empty both when the group's
    /// offsets could not be read). At the run's first assignment of the source, before any
    /// of its rows was reported, the partitions without a commit get the floors every note
    /// of the others gives ([`Floors::for_uncommitted`]): their first rows would otherwise
    /// open windows those runs emitted. Later assignments give none: this run may hold those
    /// windows open itself.
    pub fn assignment_read(&self, assigned: &[usize], committed: &[usize], uncommitted: &[usize]) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let first = assigned.iter().chain(committed).chain(uncommitted).next();
        let Some(source) = first.and_then(|&id| inner.floors.source_of(id)) else {
            return;
        };
        if inner.sources_assigned.len() <= source {
            inner.sources_assigned.resize(source + 1, false);
        }
        if std::mem::replace(&mut inner.sources_assigned[source], true) {
            return;
        }
        if inner.checkpoints || inner.keys.is_empty() {
            return;
        }
        // (a row of the source reported already: this run may hold windows open)
        let read = inner.partitions.iter().enumerate().any(|(id, p)| {
            inner.floors.source_of(id) == Some(source)
                && (p.next_seq > 0 || !p.pending.is_empty() || p.committable.is_some())
        });
        if read {
            return;
        }
        let started: Vec<Option<&Reread>> = committed
            .iter()
            .filter_map(|&id| inner.partitions.get(id))
            .map(|p| p.reread.as_deref())
            .collect();
        let floors: Vec<Option<i64>> = inner
            .floors
            .for_uncommitted(&started)
            .into_iter()
            .enumerate()
            .map(|(op, f)| f.filter(|_| inner.floors.reads(op, source)))
            .collect();
        if floors.iter().all(Option::is_none) {
            return;
        }
        let reread = std::sync::Arc::new(Reread {
            clauses: Vec::new(),
            floors,
        });
        for &id in uncommitted {
            if inner.floors.source_of(id) != Some(source) {
                continue;
            }
            if let Some(p) = inner.partitions.get_mut(id) {
                p.reread = Some(reread.clone());
            }
        }
    }

    /// Forgets a partition's note: its offsets no longer name the records the note
    /// describes (the topic was created again, or lost records).
    pub fn forget_reread(&self, partition: usize) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(p) = inner.partitions.get_mut(partition) {
                p.reread = None;
                p.carried = None;
            }
        }
    }

    /// The rows of `partition` that an earlier run already counted, if any.
    #[cfg(test)]
    pub fn reread(&self, partition: usize) -> Option<std::sync::Arc<Reread>> {
        let inner = self.inner.lock().ok()?;
        inner.partitions.get(partition)?.reread.clone()
    }

    /// The offset to commit for a partition (the next one to read after a restart), when
    /// some progress was made.
    pub fn committable(&self, partition: usize) -> Option<u64> {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.partitions[partition].committable)
    }

    /// Marks the job's outputs as finished: everything reported is final.
    pub fn set_finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    /// Whether the outputs finished (see [`Self::set_finished`]).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Waits until [`Self::set_finished`], or `cancel`; returns whether it finished.
    pub fn wait_finished(&self, cancel: &AtomicBool) -> bool {
        loop {
            if self.finished.load(Ordering::SeqCst) {
                return true;
            }
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Per operator, what every sink holds: the smallest watermark and hand-over counts.
fn effective(durable: &[Vec<Durable>]) -> Vec<Durable> {
    durable
        .iter()
        .map(|sinks| {
            let watermark = sinks
                .iter()
                .map(|d| d.watermark)
                .min()
                .unwrap_or(WATERMARK_MIN);
            let workers = sinks.iter().map(|d| d.covered.len()).max().unwrap_or(0);
            let covered = (0..workers)
                .map(|w| {
                    sinks
                        .iter()
                        .map(|d| d.covered.get(w).copied().unwrap_or(0))
                        .min()
                        .unwrap_or(0)
                })
                .collect();
            let partitions = sinks.iter().filter_map(|d| d.partitions.as_ref()).fold(
                None::<Vec<i64>>,
                |acc, p| match acc {
                    None => Some(p.to_vec()),
                    Some(mut a) => {
                        a.resize(a.len().min(p.len()), WATERMARK_MIN);
                        for (x, y) in a.iter_mut().zip(p.iter()) {
                            *x = (*x).min(*y);
                        }
                        Some(a)
                    }
                },
            );
            // a sink that reported no partition holds none of them yet
            let partitions = partitions
                .filter(|_| sinks.iter().all(|d| d.partitions.is_some()))
                .map(std::sync::Arc::new);
            Durable {
                watermark,
                covered,
                partitions,
            }
        })
        .collect()
}

fn advance_all(inner: &mut Inner) {
    let durable = effective(&inner.durable);
    for (op, d) in durable.iter().enumerate() {
        inner
            .floors
            .durable(op, d.watermark, d.partitions.as_deref().map(|p| &p[..]));
    }
    for p in inner.partitions.iter_mut().filter(|p| p.tracked) {
        let views_hold = !p.views_released;
        while let Some(r) = p.pending.get(&p.next_seq) {
            let partition = r.partition;
            let blocked = r
                .windows
                .iter()
                .flat_map(|o| {
                    let upto = durable_upto(&durable[o.operator], o, partition);
                    o.windows
                        .iter()
                        // a view's rows (closing at the end) are never durable: its
                        // state is in no output a restart could read back
                        .filter(move |(closes, _)| {
                            if *closes == WATERMARK_END {
                                return views_hold;
                            }
                            upto.is_none_or(|u| *closes > u)
                        })
                        .map(|(_, offset)| *offset)
                })
                .min();
            if let Some(offset) = blocked {
                p.committable = Some(p.committable.map_or(offset, |c| c.max(offset)));
                let forever = views_hold
                    && r.windows
                        .iter()
                        .any(|o| o.windows.iter().any(|(c, _)| *c == WATERMARK_END));
                if forever {
                    p.held = true;
                    p.pending.clear();
                }
                break;
            }
            p.committable = Some(r.next_offset);
            p.next_seq += 1;
            let seq = p.next_seq - 1;
            p.pending.remove(&seq);
        }
        // a note the partition's commit passed names no row that can be read again here
        // (its floors stay: rows of windows closed before are late all the run long)
        let passed =
            |r: &Reread| !r.clauses.is_empty() && p.committable.is_some_and(|c| c >= r.read_to());
        if p.reread.as_deref().is_some_and(passed) {
            p.reread = p
                .reread
                .as_deref()
                .and_then(Reread::without_skips)
                .map(std::sync::Arc::new);
        }
    }
}

/// Up to which closing the windows of `o` (a residue's windows of one operator, of
/// `partition`) are durable in every sink; `None`: none of them is.
fn durable_upto(d: &Durable, o: &OpResidue, partition: usize) -> Option<i64> {
    match &d.partitions {
        Some(parts) => Some(parts.get(partition).copied().unwrap_or(WATERMARK_MIN)),
        None => {
            let handed_over = d.covered.get(o.worker).copied().unwrap_or(0) > o.after_handover;
            handed_over.then_some(d.watermark)
        }
    }
}

/// The note of `partition`'s rows read past its committable offset (see [`crate::reread`]):
/// this run's clause (the offset its reported chunks reach without a gap, and per window
/// operator the closing below the lowest of its windows there that is not durable, at most
/// the highest it saw), the clauses of the note the partition started from that still
/// reach past the committable offset, and per window operator its floor (the higher of
/// how far its windows are durable now and the floor the partition started from). Views
/// (windows closing at the end) get none.
fn note_of(inner: &Inner, durable: &[Durable], partition: usize) -> Option<RereadNote> {
    let p = inner.partitions.get(partition)?;
    if inner.checkpoints || !p.tracked || p.held || inner.keys.is_empty() {
        return None;
    }
    let committable = p.committable?;
    let mut clauses: Vec<Clause> = own_clause(inner, durable, p, partition)
        .filter(|c| c.read_to > committable)
        .into_iter()
        .collect();
    if let Some(carried) = &p.carried {
        for c in carried.clauses.iter().filter(|c| c.read_to > committable) {
            if !clauses.contains(c) {
                clauses.push(c.clone());
            }
        }
    }
    clauses.retain(|c| !c.closed.is_empty());
    let note = RereadNote {
        clauses,
        floors: inner.floors.of(&inner.keys, p.reread.as_deref(), partition),
    };
    (!note.is_empty()).then_some(note)
}

/// This run's clause of `partition`'s note (see [`note_of`]).
fn own_clause(
    inner: &Inner,
    durable: &[Durable],
    p: &PartitionProgress,
    partition: usize,
) -> Option<Clause> {
    let ops = inner.keys.len();
    // per operator: a view's, lowest closing not durable, highest closing seen
    let mut view = vec![false; ops];
    let mut lowest: Vec<Option<i64>> = vec![None; ops];
    let mut highest: Vec<Option<i64>> = vec![None; ops];
    let mut read_to = None;
    let mut seq = p.next_seq;
    while let Some(r) = p.pending.get(&seq) {
        for o in r.windows.iter().filter(|o| o.operator < ops) {
            let upto = durable_upto(&durable[o.operator], o, partition);
            for &(closes, _) in &o.windows {
                if closes == WATERMARK_END {
                    view[o.operator] = true;
                    continue;
                }
                let h = &mut highest[o.operator];
                *h = Some(h.map_or(closes, |h| h.max(closes)));
                if upto.is_none_or(|u| closes > u) {
                    let l = &mut lowest[o.operator];
                    *l = Some(l.map_or(closes, |l| l.min(closes)));
                }
            }
        }
        read_to = Some(r.next_offset);
        seq += 1;
    }
    let closed = (0..ops)
        .filter(|&i| !view[i])
        .filter_map(|i| {
            let key = inner.keys[i]?;
            let highest = highest[i]?;
            let below = lowest[i].map_or(highest, |l| l.saturating_sub(1).min(highest));
            Some((key, below))
        })
        .collect();
    Some(Clause {
        read_to: read_to?,
        closed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durable(watermark: i64, covered: &[u64]) -> Durable {
        Durable {
            watermark,
            covered: covered.to_vec(),
            partitions: None,
        }
    }

    fn residue(seq: u64, next_offset: u64, windows: Vec<(i64, u64)>) -> ChunkResidue {
        ChunkResidue {
            partition: 0,
            seq,
            next_offset,
            windows: vec![OpResidue {
                operator: 0,
                worker: 0,
                after_handover: 0,
                windows,
            }],
        }
    }

    #[test]
    fn commits_only_what_durable_windows_cover() {
        let p = Progress::new(1, &[2]);
        p.track(0);
        // chunk 1 arrives before chunk 0: nothing is committable yet
        p.add_residues([residue(1, 20, vec![(120, 10)])]);
        assert_eq!(p.committable(0), None);
        p.add_residues([residue(0, 10, vec![(60, 0), (120, 5)])]);
        // no window is durable: chunk 0's first open row is offset 0
        assert_eq!(p.committable(0), Some(0));
        // one sink durable to 60 is not enough: the other one is behind
        p.sink_durable(0, 0, durable(60, &[1]));
        assert_eq!(p.committable(0), Some(0));
        p.sink_durable(0, 1, durable(60, &[1]));
        assert_eq!(p.committable(0), Some(5));
        p.sink_durable(0, 0, durable(120, &[2]));
        p.sink_durable(0, 1, durable(120, &[2]));
        assert_eq!(p.committable(0), Some(20));
    }

    #[test]
    fn a_views_rows_hold_the_offset_back_for_good_and_keep_no_residues() {
        let p = Progress::new(1, &[1]);
        p.track(0);
        p.add_residues([residue(0, 10, vec![(60, 0)])]);
        p.sink_durable(0, 0, durable(60, &[1]));
        assert_eq!(p.committable(0), Some(10));
        // a view's row at offset 12: nothing past it is ever committable, even once the
        // run ended (its outputs durable to the end)
        p.add_residues([residue(1, 20, vec![(WATERMARK_END, 12)])]);
        p.add_residues([residue(2, 30, vec![(120, 25)])]);
        p.sink_durable(0, 0, durable(WATERMARK_END, &[5]));
        assert_eq!(p.committable(0), Some(12));
        {
            let inner = p.inner.lock().unwrap();
            assert!(inner.partitions[0].held && inner.partitions[0].pending.is_empty());
        }
        // revoked and assigned again: still held
        p.restart(0, 3);
        p.add_residues([residue(3, 40, vec![(180, 35)])]);
        p.sink_durable(0, 0, durable(WATERMARK_END, &[9]));
        assert_eq!(p.committable(0), Some(12));
        // a source whose views are released (NATS) is not held by them
        let q = Progress::new(1, &[1]);
        q.track(0);
        q.release_views(0);
        q.add_residues([residue(0, 10, vec![(WATERMARK_END, 2)])]);
        q.sink_durable(0, 0, durable(60, &[1]));
        assert_eq!(q.committable(0), Some(10));
    }

    #[test]
    fn a_window_reopened_after_it_was_emitted_waits_for_its_hand_over() {
        let p = Progress::new(1, &[1]);
        p.track(0);
        // the operator emitted up to 120 (hand-over 3) before a lagging partition's rows
        // for the window closing at 60 were aggregated
        p.sink_durable(0, 0, durable(120, &[3]));
        let mut r = residue(0, 10, vec![(60, 4)]);
        r.windows[0].after_handover = 3;
        p.add_residues([r]);
        assert_eq!(p.committable(0), Some(4));
        p.sink_durable(0, 0, durable(120, &[4]));
        assert_eq!(p.committable(0), Some(10));
    }

    #[test]
    fn a_window_closing_per_partition_is_durable_once_its_partition_passed_it() {
        let p = Progress::new(2, &[1]);
        p.track(1);
        let mut r = residue(0, 10, vec![(60, 4)]);
        r.partition = 1;
        p.add_residues([r]);
        // the operator's lowest watermark and every hand-over passed the window, but its
        // partition's windows are emitted up to 30 only: its rows are still held
        let parts = |p1: i64| Durable {
            watermark: 120,
            covered: vec![9],
            partitions: Some(std::sync::Arc::new(vec![120, p1])),
        };
        p.sink_durable(0, 0, parts(30));
        assert_eq!(p.committable(1), Some(4));
        p.sink_durable(0, 0, parts(60));
        assert_eq!(p.committable(1), Some(10));
    }

    #[test]
    fn restart_forgets_old_chunks() {
        let p = Progress::new(1, &[1]);
        p.track(0);
        p.add_residues([residue(0, 10, vec![(60, 0)])]);
        p.restart(0, 5);
        p.add_residues([residue(5, 30, vec![])]);
        assert_eq!(p.committable(0), Some(30));
    }

    fn clause(read_to: u64, closed: &[(u64, i64)]) -> Clause {
        Clause {
            read_to,
            closed: closed.to_vec(),
        }
    }

    #[test]
    fn the_note_names_the_rows_read_past_the_commit_whose_windows_are_durable() {
        let p = Progress::new(1, &[1]);
        p.track(0);
        // no keys, no note
        p.add_residues([residue(0, 10, vec![(60, 0), (120, 5)])]);
        assert_eq!(p.note(0), None);
        p.set_operator_keys(vec![Some(0xab)], vec![], vec![]);
        // rows 0-9 read: windows 60 (from offset 0) and 120 (from 5); nothing durable yet:
        // everything from 0 is read again, all of it counted again
        assert_eq!(p.committable(0), Some(0));
        let note = |p: &Progress| RereadNote::decode(&p.note(0).unwrap()).unwrap().clauses;
        assert_eq!(note(&p), vec![clause(10, &[(0xab, 59)])]);
        // window 60 durable: the commit moves to 5; rows below 20 of windows up to 119 are
        // counted (offsets 10-19 went to window 60 again, out of order)
        p.add_residues([residue(1, 20, vec![(60, 12), (180, 15)])]);
        p.sink_durable(0, 0, durable(60, &[1]));
        assert_eq!(p.committable(0), Some(5));
        assert_eq!(note(&p), vec![clause(20, &[(0xab, 119)])]);
        // a gap (chunk 3 before chunk 2): the note stops at the gap
        p.add_residues([residue(3, 40, vec![(180, 30)])]);
        assert_eq!(note(&p)[0].read_to, 20);
        // everything durable: the commit reaches the end, and nothing is read again
        p.add_residues([residue(2, 30, vec![(180, 22)])]);
        p.sink_durable(0, 0, durable(180, &[2]));
        assert_eq!(p.committable(0), Some(40));
        let only_floor = RereadNote::decode(&p.note(0).unwrap()).unwrap();
        assert!(only_floor.clauses.is_empty());
        assert_eq!(only_floor.floors, vec![(0xab, 180)]);
        // a view's rows are never skipped, nor a processing-time operator's
        let v = Progress::new(1, &[1, 1]);
        v.set_operator_keys(vec![Some(1), None], vec![], vec![]);
        v.track(0);
        let mut r = residue(0, 10, vec![(60, 0), (WATERMARK_END, 1)]);
        r.windows.push(OpResidue {
            operator: 1,
            ..r.windows[0].clone()
        });
        v.add_residues([r]);
        assert_eq!(v.note(0), None);
    }

    #[test]
    fn all_durable_skips_up_to_the_highest_window_seen_only() {
        let p = Progress::new(1, &[1, 1]);
        p.set_operator_keys(vec![Some(7), Some(8)], vec![], vec![]);
        p.track(0);
        // operator 0's window 120 holds the commit at 5; operator 1's windows are all
        // durable: its rows are skipped up to the highest window it saw, not beyond
        let mut r = residue(0, 10, vec![(60, 0), (120, 5)]);
        r.windows.push(OpResidue {
            operator: 1,
            worker: 0,
            after_handover: 0,
            windows: vec![(60, 0)],
        });
        p.add_residues([r]);
        p.sink_durable(0, 0, durable(60, &[1]));
        p.sink_durable(1, 0, durable(1_000, &[1]));
        assert_eq!(p.committable(0), Some(5));
        assert_eq!(
            RereadNote::decode(&p.note(0).unwrap()).unwrap().clauses,
            vec![clause(10, &[(7, 119), (8, 60)])]
        );
    }

    #[test]
    fn the_floor_is_how_far_windows_are_durable_and_never_falls_nor_is_the_end() {
        let p = Progress::new(2, &[1, 1]);
        p.set_operator_keys(vec![Some(1), Some(2)], vec![], vec![]);
        p.track(1);
        let floors = |p: &Progress, id: usize| {
            p.commit_points(&[id])[0]
                .clone()
                .and_then(|(_, n)| RereadNote::decode(&n?))
                .map(|n| n.floors)
        };
        // the run started from a note whose floor for operator 1 is 500, operator 2's 10
        let text = RereadNote {
            clauses: vec![clause(20, &[(1, 119)])],
            floors: vec![(1, 500), (2, 10), (9, 900)],
        }
        .encode();
        assert!(p.start_reading(1, 5, &text));
        p.restart(1, 0);
        assert_eq!(p.reread(1).unwrap().floors, vec![Some(500), Some(10)]);
        let mut r = residue(0, 30, vec![(180, 5)]);
        r.partition = 1;
        p.add_residues([r]);
        // durable to 60 and 240 now: the floors are 500 (the note's, higher) and 240; an
        // operator not of this run is not carried
        p.sink_durable(0, 0, durable(60, &[1]));
        p.sink_durable(1, 0, durable(240, &[1]));
        assert_eq!(floors(&p, 1), Some(vec![(1, 500), (2, 240)]));
        // the commit passes the note's clause: its floors stay, in this run and in its notes
        p.sink_durable(0, 0, durable(180, &[1]));
        assert_eq!(p.committable(1), Some(30));
        let left = p.reread(1).unwrap();
        assert!(left.clauses.is_empty());
        assert_eq!(left.floor(0), Some(500));
        assert_eq!(floors(&p, 1), Some(vec![(1, 500), (2, 240)]));
        // the end of the input is no floor: how far windows were durable before it stays
        p.sink_durable(1, 0, durable(WATERMARK_END, &[1]));
        assert_eq!(floors(&p, 1), Some(vec![(1, 500), (2, 240)]));
        // partition 0, without a note of its own, has no floor from another partition's
        // (a floor is of the process that wrote it); its notes carry how far windows are
        // durable here
        p.track(0);
        assert!(p.tracking(0).unwrap().is_none());
        p.add_residues([residue(0, 7, vec![(300, 0)])]);
        assert_eq!(floors(&p, 0), Some(vec![(1, 180), (2, 240)]));
        // an operator of another source gets no floor in this partition's notes
        let o = Progress::new(2, &[1, 1]);
        o.set_operator_keys(
            vec![Some(1), Some(2)],
            vec![(false, 0), (false, 1)],
            vec![0, 1],
        );
        o.track(0);
        o.add_residues([residue(0, 7, vec![(300, 0)])]);
        o.sink_durable(0, 0, durable(60, &[1]));
        o.sink_durable(1, 0, durable(240, &[1]));
        assert_eq!(floors(&o, 0), Some(vec![(1, 60)]));
        // windows that close per partition: that partition's durable closing, and no other
        // partition's floor
        let q = Progress::new(2, &[1]);
        q.set_operator_keys(vec![Some(1)], vec![(true, 0)], vec![]);
        q.track(1);
        let mut r = residue(0, 30, vec![(180, 5)]);
        r.partition = 1;
        q.add_residues([r]);
        let mut d = durable(0, &[]);
        d.partitions = Some(std::sync::Arc::new(vec![900, 120]));
        q.sink_durable(0, 0, d);
        assert_eq!(floors(&q, 1), Some(vec![(1, 120)]));
    }

    #[test]
    fn at_the_first_assignment_a_partition_without_a_commit_takes_the_lowest_floor() {
        let note = |floor: i64| {
            RereadNote {
                clauses: Vec::new(),
                floors: vec![(1, floor)],
            }
            .encode()
        };
        let p = Progress::new(4, &[1]);
        p.set_operator_keys(vec![Some(1)], vec![], vec![]);
        assert!(p.start_reading(0, 5, &note(500)));
        assert!(p.start_reading(1, 5, &note(300)));
        p.assignment_read(&[0, 1, 2], &[0, 1], &[2]);
        assert_eq!(p.reread(2).unwrap().floors, vec![Some(300)]);
        // a later assignment: this run may hold those windows open itself
        p.assignment_read(&[3], &[], &[3]);
        assert!(p.reread(3).is_none());
        // a first assignment whose offsets could not be read still is the first
        let f = Progress::new(3, &[1]);
        f.set_operator_keys(vec![Some(1)], vec![], vec![]);
        f.assignment_read(&[0], &[], &[]);
        assert!(f.start_reading(1, 5, &note(500)));
        f.assignment_read(&[1, 2], &[1], &[2]);
        assert!(f.reread(2).is_none());
        // rows of the source reported before: none
        let g = Progress::new(3, &[1]);
        g.set_operator_keys(vec![Some(1)], vec![], vec![]);
        g.track(0);
        g.add_residues([residue(0, 3, vec![(60, 0)])]);
        assert!(g.start_reading(1, 5, &note(500)));
        g.assignment_read(&[1, 2], &[1], &[2]);
        assert!(g.reread(2).is_none());
        // a commit without a floor: nothing is known
        let q = Progress::new(3, &[1]);
        q.set_operator_keys(vec![Some(1)], vec![], vec![]);
        assert!(q.start_reading(0, 5, &note(500)));
        assert!(!q.start_reading(1, 5, ""));
        q.assignment_read(&[0, 1, 2], &[0, 1], &[2]);
        assert!(q.reread(2).is_none());
        // windows closing per partition: a partition's floor is its own
        let r = Progress::new(2, &[1]);
        r.set_operator_keys(vec![Some(1)], vec![(true, 0)], vec![]);
        assert!(r.start_reading(0, 5, &note(500)));
        r.assignment_read(&[0, 1], &[0], &[1]);
        assert!(r.reread(1).is_none());
        // with checkpoints, none
        let c = Progress::new(2, &[1]);
        c.set_operator_keys(vec![Some(1)], vec![], vec![]);
        c.use_checkpoints();
        c.assignment_read(&[0, 1], &[0], &[1]);
        assert!(c.reread(1).is_none());
    }

    #[test]
    fn a_note_applies_to_a_partition_starting_below_where_it_was_read() {
        let p = Progress::new(2, &[1, 1]);
        p.set_operator_keys(vec![Some(1), Some(2)], vec![], vec![]);
        let text = RereadNote {
            clauses: vec![clause(20, &[(2, 119)])],
            floors: Vec::new(),
        }
        .encode();
        assert!(p.start_reading(1, 5, &text));
        let r = p.reread(1).unwrap();
        assert_eq!(r.clauses, vec![(20, vec![None, Some(119)])]);
        // a note read up to the start is nothing to skip; someone else's metadata neither
        assert!(!p.start_reading(1, 20, &text));
        assert!(p.reread(1).is_none());
        assert!(!p.start_reading(0, 5, "someone else's metadata"));
        assert!(p.start_reading(1, 5, &text));
        p.forget_reread(1);
        assert!(p.reread(1).is_none());
        // with checkpoints, offsets and state come from them
        p.use_checkpoints();
        assert!(!p.start_reading(1, 5, &text));
    }

    #[test]
    fn a_run_that_reads_again_keeps_the_note_it_started_from_while_it_matters() {
        let p = Progress::new(1, &[1]);
        p.set_operator_keys(vec![Some(1)], vec![], vec![]);
        p.track(0);
        // run 1 read to 40; window 119 and below durable
        let inherited = clause(40, &[(1, 119)]);
        let text = RereadNote {
            clauses: vec![inherited.clone()],
            floors: Vec::new(),
        }
        .encode();
        assert!(p.start_reading(0, 5, &text));
        p.restart(0, 0);
        // run 2 read to 20 only (rows of window 180 from 5): both clauses are committed
        p.add_residues([residue(0, 20, vec![(180, 5)])]);
        assert_eq!(p.committable(0), Some(5));
        let note = |p: &Progress| RereadNote::decode(&p.note(0).unwrap()).unwrap().clauses;
        assert_eq!(note(&p), vec![clause(20, &[(1, 179)]), inherited.clone()]);
        // a clause naming no operator of this run is carried all the same
        let q = Progress::new(1, &[1]);
        q.set_operator_keys(vec![Some(1)], vec![], vec![]);
        q.track(0);
        let other = clause(30, &[(9, 60)]);
        let text = RereadNote {
            clauses: vec![other.clone()],
            floors: Vec::new(),
        }
        .encode();
        assert!(!q.start_reading(0, 5, &text));
        q.add_residues([residue(0, 20, vec![(180, 5)])]);
        assert_eq!(note(&q), vec![clause(20, &[(1, 179)]), other]);
        // once the commit passed it, the inherited clause is dropped
        p.add_residues([residue(1, 50, vec![(240, 45)])]);
        p.sink_durable(0, 0, durable(180, &[1]));
        assert_eq!(p.committable(0), Some(45));
        assert_eq!(note(&p), vec![clause(50, &[(1, 239)])]);
    }
}
