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
    /// The group's committed offset this assignment started from (without checkpoints), for
    /// as long as nothing read here is committable: committed again with this run's floors,
    /// so that a partition with nothing to read does not keep an older floor in its note.
    started: Option<u64>,
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
    /// The group refuses notes: offsets go without (see [`Progress::refuse_notes`]).
    notes_refused: bool,
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
                notes_refused: false,
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

    /// Per operator, where its windows close ([`crate::reread::Closings`]), after
    /// [`Self::set_operator_keys`]: its floors are kept at those closings.
    pub fn set_closings(&self, closings: Vec<Option<crate::reread::Closings>>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.floors.set_closings(closings);
        }
    }

    /// What to commit beside [`Self::committable`]: a [`RereadNote`] of the rows read past it
    /// whose windows are durable already, as text; `None` when there are none (the tests';
    /// readers take it with its offset, [`Self::commit_points`]).
    #[cfg(test)]
    pub fn note(&self, partition: usize) -> Option<String> {
        Some(
            self.commit_points(&[partition])
                .pop()
                .flatten()?
                .1?
                .encode(),
        )
    }

    /// Per partition of `partitions`: the offset to commit ([`Self::committable`]) and the
    /// note to commit with it (see [`crate::reread`]), read together.
    pub fn commit_points(&self, partitions: &[usize]) -> Vec<Option<(u64, Option<RereadNote>)>> {
        let Ok(inner) = self.inner.lock() else {
            return vec![None; partitions.len()];
        };
        let notes = !inner.checkpoints && !inner.keys.is_empty() && !inner.notes_refused;
        let durable = notes.then(|| effective(&inner.durable));
        partitions
            .iter()
            .map(|&id| {
                let offset = committable_or_started(&inner, id)?;
                let note = durable.as_deref().and_then(|d| note_of(&inner, d, id));
                // (a start is committed again for its note only: never to erase one)
                let own = inner.partitions.get(id).and_then(|p| p.committable);
                (own.is_some() || note.is_some()).then_some((offset, note))
            })
            .collect()
    }

    /// A partition starts at `committed`, committed with `note` ([`RereadNote::encode`]'s text, maybe
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
            p.started = (!checkpoints).then_some(committed);
            // (the previous assignment's offset must not pass the note before `restart`)
            if !p.held && !checkpoints {
                p.committable = None;
            }
        }
        found
    }

    /// The group refuses the notes (too large): offsets are committed without them from now
    /// on, and a partition with nothing committable of its own is not committed at its start.
    pub fn refuse_notes(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.notes_refused = true;
        }
    }

    /// Partitions being assigned, before their committed offsets are read
    /// ([`Self::start_reading`]): what an earlier assignment started from no longer holds.
    pub fn assigning(&self, assigned: &[usize]) {
        if let Ok(mut inner) = self.inner.lock() {
            for &id in assigned {
                if let Some(p) = inner.partitions.get_mut(id) {
                    p.started = None;
                }
            }
        }
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
                p.started = None;
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
    let committable = committable_or_started(inner, partition)?;
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

/// The offset to commit for `partition`: its committable offset, else, without checkpoints,
/// the group's committed offset its assignment started from (see `PartitionProgress::started`).
fn committable_or_started(inner: &Inner, partition: usize) -> Option<u64> {
    let p = inner.partitions.get(partition)?;
    let started = p.started.filter(|_| p.tracked && !inner.checkpoints);
    p.committable.or(started)
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
mod tests;
