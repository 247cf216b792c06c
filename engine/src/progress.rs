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

use crate::clock::WATERMARK_MIN;

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
struct Durable {
    watermark: i64,
    /// Per worker: hand-overs included.
    covered: Vec<u64>,
}

#[derive(Default)]
struct PartitionProgress {
    tracked: bool,
    next_seq: u64,
    pending: BTreeMap<u64, ChunkResidue>,
    committable: Option<u64>,
}

struct Inner {
    /// Offsets come from complete checkpoints, not from residues.
    checkpoints: bool,
    partitions: Vec<PartitionProgress>,
    /// Per operator: per sink of the operator, how far its rows are durable.
    durable: Vec<Vec<Durable>>,
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
                            };
                            n.max(1)
                        ]
                    })
                    .collect(),
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
        self.inner
            .lock()
            .map(|i| !i.checkpoints && i.partitions[partition].tracked)
            .unwrap_or(false)
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
            p.committable = None;
        }
    }

    /// Adds residues whose dead letters are durable.
    pub fn add_residues(&self, residues: impl IntoIterator<Item = ChunkResidue>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        for r in residues {
            let p = &mut inner.partitions[r.partition];
            if r.seq >= p.next_seq {
                p.pending.insert(r.seq, r);
            }
        }
        advance_all(&mut inner);
    }

    /// Records that `sink` (the operator's `sink`-th) durably holds the operator's windows
    /// closed at `watermark`, with each worker's hand-overs up to `covered[worker]`.
    pub fn sink_durable(&self, operator: usize, sink: usize, watermark: i64, covered: Vec<u64>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.durable[operator][sink] = Durable { watermark, covered };
        advance_all(&mut inner);
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
            Durable { watermark, covered }
        })
        .collect()
}

fn advance_all(inner: &mut Inner) {
    let durable = effective(&inner.durable);
    for p in inner.partitions.iter_mut().filter(|p| p.tracked) {
        while let Some(r) = p.pending.get(&p.next_seq) {
            let blocked = r
                .windows
                .iter()
                .flat_map(|o| {
                    let d = &durable[o.operator];
                    let handed_over =
                        d.covered.get(o.worker).copied().unwrap_or(0) > o.after_handover;
                    o.windows
                        .iter()
                        .filter(move |(closes, _)| !handed_over || *closes > d.watermark)
                        .map(|(_, offset)| *offset)
                })
                .min();
            if let Some(offset) = blocked {
                p.committable = Some(p.committable.map_or(offset, |c| c.max(offset)));
                break;
            }
            p.committable = Some(r.next_offset);
            p.next_seq += 1;
            let seq = p.next_seq - 1;
            p.pending.remove(&seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        p.sink_durable(0, 0, 60, vec![1]);
        assert_eq!(p.committable(0), Some(0));
        p.sink_durable(0, 1, 60, vec![1]);
        assert_eq!(p.committable(0), Some(5));
        p.sink_durable(0, 0, 120, vec![2]);
        p.sink_durable(0, 1, 120, vec![2]);
        assert_eq!(p.committable(0), Some(20));
    }

    #[test]
    fn a_window_reopened_after_it_was_emitted_waits_for_its_hand_over() {
        let p = Progress::new(1, &[1]);
        p.track(0);
        // the operator emitted up to 120 (hand-over 3) before a lagging partition's rows
        // for the window closing at 60 were aggregated
        p.sink_durable(0, 0, 120, vec![3]);
        let mut r = residue(0, 10, vec![(60, 4)]);
        r.windows[0].after_handover = 3;
        p.add_residues([r]);
        assert_eq!(p.committable(0), Some(4));
        p.sink_durable(0, 0, 120, vec![4]);
        assert_eq!(p.committable(0), Some(10));
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
}
