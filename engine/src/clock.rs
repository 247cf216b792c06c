//! Watermarks of source partitions.
//!
//! A partition's chunks may be decoded by several workers at once, but its watermark and the
//! lateness of its events follow the partition's own order. Each worker sequences its chunk
//! through the partition's [`PartitionClock`] after decoding it: the clock hands out the
//! newest event time seen before the chunk and records the chunk's newest time, strictly in
//! chunk order. Lateness therefore never depends on how chunks were spread over workers.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::EngineError;

/// The watermark meaning "no event seen yet".
pub const WATERMARK_MIN: i64 = i64::MIN;
/// The watermark of a partition that has ended.
pub const WATERMARK_END: i64 = i64::MAX;

struct Sequence {
    next_seq: u64,
    newest: i64,
    /// A repartition topic's partition: one entry per upstream partition (lane), each with
    /// its own newest event time (see [`PartitionClock::use_lanes`]). Empty otherwise.
    lanes: Vec<LaneTime>,
    /// The smallest newest event time of the lanes that are not idle, and how many lanes
    /// have it (`None`: to be computed again), so that a chunk costs O(1), not O(lanes).
    slowest: Option<(i64, usize)>,
}

impl Sequence {
    /// The smallest newest event time of the lanes that are not idle.
    fn slowest(&mut self) -> Option<i64> {
        if self.slowest.is_none() {
            let mut min: Option<(i64, usize)> = None;
            for l in self.lanes.iter().filter(|l| !l.idle) {
                min = match min {
                    Some((m, c)) if l.newest == m => Some((m, c + 1)),
                    Some((m, c)) if l.newest > m => Some((m, c)),
                    _ => Some((l.newest, 1)),
                };
            }
            self.slowest = min;
        }
        self.slowest.map(|(m, _)| m)
    }

    /// Lane `l` (not idle) moved from `old` to a newer time.
    fn advanced(&mut self, old: i64) {
        if let Some((m, c)) = self.slowest {
            if old == m {
                self.slowest = (c > 1).then_some((m, c - 1));
            }
        }
    }
}

/// The event-time progress of one lane of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LaneTime {
    newest: i64,
    idle: bool,
}

impl Default for LaneTime {
    fn default() -> Self {
        LaneTime {
            newest: WATERMARK_MIN,
            idle: false,
        }
    }
}

/// The event-time progress of one source partition.
pub struct PartitionClock {
    sequence: Mutex<Sequence>,
    advanced: Condvar,
    watermark: AtomicI64,
    idle: AtomicBool,
    /// The partition is read by this process (assigned to it); see [`Self::set_read_here`].
    read_here: AtomicBool,
    /// Its end is only this run's (see [`Self::set_resumable_end`]).
    resumable_end: AtomicBool,
    max_out_of_orderness: i64,
}

impl PartitionClock {
    /// A clock whose watermark trails the newest event time by `max_out_of_orderness` ms.
    pub fn new(max_out_of_orderness: i64) -> Self {
        PartitionClock {
            sequence: Mutex::new(Sequence {
                next_seq: 0,
                newest: WATERMARK_MIN,
                lanes: Vec::new(),
                slowest: None,
            }),
            advanced: Condvar::new(),
            watermark: AtomicI64::new(WATERMARK_MIN),
            idle: AtomicBool::new(false),
            read_here: AtomicBool::new(true),
            resumable_end: AtomicBool::new(false),
            max_out_of_orderness,
        }
    }

    /// Says whether this process reads the partition (a consumer group or a pool assigned it
    /// here; every partition of a source without one is). A partition read elsewhere is
    /// idle here too, but unlike one that is silent, its windows are not closed with the
    /// source's: if it comes here, it fills them from where its last owner committed.
    pub fn set_read_here(&self, read_here: bool) {
        self.read_here.store(read_here, Ordering::Release);
    }

    /// Says that the partition's end, if it comes, is only where this run stops reading it (a
    /// log read `--until-caught-up`): later runs read on. A checkpoint then keeps its events'
    /// newest time rather than the end, and the windows the end emitted early stay open in
    /// it. Without it, an end (a file's) is for good.
    pub fn set_resumable_end(&self) {
        self.resumable_end.store(true, Ordering::Release);
    }

    /// Whether the partition's end is for good (see [`Self::set_resumable_end`]).
    pub fn ends_for_good(&self) -> bool {
        !self.resumable_end.load(Ordering::Acquire)
    }

    /// Whether this process reads the partition (see [`Self::set_read_here`]).
    pub fn is_read_here(&self) -> bool {
        self.read_here.load(Ordering::Acquire)
    }

    /// Waits until every chunk before `seq` was sequenced, then records the chunk's newest
    /// event time (`WATERMARK_MIN` when it had no valid event) and returns the newest event
    /// time seen before it. `end` marks the partition's last chunk: its watermark becomes
    /// [`WATERMARK_END`].
    pub fn sequence(
        &self,
        seq: u64,
        chunk_newest: i64,
        end: bool,
        cancel: &AtomicBool,
    ) -> Result<i64, EngineError> {
        self.sequence_in(seq, None, chunk_newest, end, cancel)
    }

    /// [`Self::sequence`] for a chunk whose rows all come from lane `lane` of the partition
    /// (an upstream partition of a repartition topic): the lane's newest event time before
    /// the chunk is returned (its rows are late by their own lane, as if it were a partition
    /// of its own), and the partition's watermark is the smallest of its lanes' that are not
    /// idle. `None`: the partition's own order.
    pub fn sequence_in(
        &self,
        seq: u64,
        lane: Option<u32>,
        chunk_newest: i64,
        end: bool,
        cancel: &AtomicBool,
    ) -> Result<i64, EngineError> {
        let mut s = self
            .sequence
            .lock()
            .map_err(|_| EngineError::Internal("clock poisoned".into()))?;
        while s.next_seq != seq {
            if s.next_seq > seq {
                return Err(EngineError::Internal(format!(
                    "chunk {seq} sequenced twice"
                )));
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            s = self
                .advanced
                .wait_timeout(s, Duration::from_millis(50))
                .map_err(|_| EngineError::Internal("clock poisoned".into()))?
                .0;
        }
        let before = match lane.map(|l| l as usize) {
            Some(l) => {
                if s.lanes.len() <= l {
                    s.lanes.resize(l + 1, LaneTime::default());
                    s.slowest = None;
                }
                let lane = &mut s.lanes[l];
                let (before, was_idle) = (lane.newest, lane.idle);
                lane.newest = lane.newest.max(chunk_newest);
                // a lane delivering is not idle
                lane.idle = false;
                if was_idle {
                    s.slowest = None;
                } else if s.lanes[l].newest > before {
                    s.advanced(before);
                }
                before
            }
            None => s.newest,
        };
        s.newest = s.newest.max(chunk_newest);
        s.next_seq += 1;
        let wm = if end {
            WATERMARK_END
        } else {
            self.watermark_of(&mut s)
        };
        self.watermark.store(wm, Ordering::Release);
        drop(s);
        self.advanced.notify_all();
        Ok(before)
    }

    /// The watermark of a partition that has not ended: from its newest event time, or with
    /// lanes, from the smallest newest event time of the lanes that are not idle.
    fn watermark_of(&self, s: &mut Sequence) -> i64 {
        if s.lanes.is_empty() {
            return s.newest.saturating_sub(self.max_out_of_orderness);
        }
        let newest = s.slowest().unwrap_or(s.newest);
        newest.saturating_sub(self.max_out_of_orderness)
    }

    /// Gives the partition `count` lanes (at least; lanes are never removed): a lane that has
    /// delivered nothing yet holds the watermark back until it does or turns idle, as a
    /// partition of its own would.
    pub fn use_lanes(&self, count: usize) {
        if let Ok(mut s) = self.sequence.lock() {
            if s.lanes.len() < count {
                s.lanes.resize(count, LaneTime::default());
                s.slowest = None;
                self.refresh(&mut s);
            }
        }
    }

    /// Marks lane `lane` idle (it stops holding the partition's watermark back) or active;
    /// the partition is idle once all its lanes are.
    pub fn set_lane_idle(&self, lane: u32, idle: bool) {
        if let Ok(mut s) = self.sequence.lock() {
            let l = lane as usize;
            if s.lanes.len() <= l {
                s.lanes.resize(l + 1, LaneTime::default());
                s.slowest = None;
            }
            if s.lanes[l].idle != idle {
                s.lanes[l].idle = idle;
                s.slowest = None;
            }
            self.idle
                .store(s.lanes.iter().all(|l| l.idle), Ordering::Release);
            self.refresh(&mut s);
        }
    }

    /// Recomputes the watermark after a change of lanes (an ended partition stays ended).
    fn refresh(&self, s: &mut Sequence) {
        if self.watermark.load(Ordering::Acquire) != WATERMARK_END {
            self.watermark
                .store(self.watermark_of(s), Ordering::Release);
        }
    }

    /// Per lane, the newest event time sequenced so far (empty without lanes).
    pub fn lane_newest(&self) -> Vec<i64> {
        self.sequence
            .lock()
            .map(|s| s.lanes.iter().map(|l| l.newest).collect())
            .unwrap_or_default()
    }

    /// Restores the lanes' newest event times of a checkpoint, before any chunk is sequenced.
    pub fn restore_lanes(&self, newest: &[i64]) {
        if let Ok(mut s) = self.sequence.lock() {
            if s.lanes.len() < newest.len() {
                s.lanes.resize(newest.len(), LaneTime::default());
            }
            for (lane, &n) in s.lanes.iter_mut().zip(newest) {
                lane.newest = n;
            }
            s.slowest = None;
            self.refresh(&mut s);
        }
    }

    /// The newest event time sequenced so far (what a checkpoint records).
    pub fn newest(&self) -> i64 {
        self.sequence
            .lock()
            .map(|s| s.newest)
            .unwrap_or(WATERMARK_MIN)
    }

    /// Restores the newest event time of a checkpoint, before any chunk is sequenced.
    pub fn restore(&self, newest: i64) {
        if let Ok(mut s) = self.sequence.lock() {
            s.newest = newest;
            // a partition that had ended stays ended
            let wm = if newest == WATERMARK_END {
                WATERMARK_END
            } else {
                self.watermark_of(&mut s)
            };
            self.watermark.store(wm, Ordering::Release);
        }
    }

    /// `newest - max_out_of_orderness`, the watermark an event seeing `newest` before it meets.
    #[inline]
    pub fn watermark_after(&self, newest: i64) -> i64 {
        newest.saturating_sub(self.max_out_of_orderness)
    }

    /// The partition's current watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Marks the partition idle (it stops holding back its source's watermark) or active;
    /// with lanes, every lane too.
    pub fn set_idle(&self, idle: bool) {
        if let Ok(mut s) = self.sequence.lock() {
            if !s.lanes.is_empty() {
                for l in s.lanes.iter_mut() {
                    l.idle = idle;
                }
                s.slowest = None;
                self.refresh(&mut s);
            }
        }
        self.idle.store(idle, Ordering::Release);
    }

    /// Whether the partition is idle.
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }
}

/// The clocks of every partition of every source of a job.
pub struct Clocks {
    partitions: Vec<PartitionClock>,
    by_source: Vec<Vec<usize>>,
}

impl Clocks {
    /// Clocks for sources given as (partition count, max_out_of_orderness ms); partitions are
    /// numbered globally in source order.
    pub fn new(sources: &[(usize, i64)]) -> Self {
        let mut partitions = Vec::new();
        let mut by_source = Vec::new();
        for &(count, ooo) in sources {
            let ids = (partitions.len()..partitions.len() + count).collect();
            partitions.extend((0..count).map(|_| PartitionClock::new(ooo)));
            by_source.push(ids);
        }
        Clocks {
            partitions,
            by_source,
        }
    }

    /// The clock of global partition `id`.
    pub fn partition(&self, id: usize) -> &PartitionClock {
        &self.partitions[id]
    }

    /// The number of partitions of every source.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Whether the job has no partition.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// The global partition ids of `source`.
    pub fn partitions_of(&self, source: usize) -> &[usize] {
        &self.by_source[source]
    }

    /// The watermark of a source: the minimum over its partitions that are neither idle nor
    /// ended; [`WATERMARK_END`] once every partition ended; `None` while every partition that
    /// has not ended is idle (the watermark then holds: ended partitions alone must not carry
    /// it past the rows an idle or not yet assigned partition still has to give).
    pub fn source_watermark(&self, source: usize) -> Option<i64> {
        let mut min: Option<i64> = None;
        let mut all_ended = true;
        for &p in &self.by_source[source] {
            let c = &self.partitions[p];
            let wm = c.watermark();
            if wm == WATERMARK_END {
                continue;
            }
            all_ended = false;
            if c.is_idle() {
                continue;
            }
            min = Some(min.map_or(wm, |m| m.min(wm)));
        }
        if all_ended {
            Some(WATERMARK_END)
        } else {
            min
        }
    }

    /// The watermark of a source once its input is over (every reader finished): idle
    /// partitions (not assigned to this process) no longer hold it, so it is the minimum
    /// over the partitions that were read, [`WATERMARK_END`] when they all ended.
    pub fn final_source_watermark(&self, source: usize) -> Option<i64> {
        let mut min: Option<i64> = None;
        for &p in &self.by_source[source] {
            let c = &self.partitions[p];
            let wm = c.watermark();
            if wm != WATERMARK_END && c.is_idle() {
                continue;
            }
            min = Some(min.map_or(wm, |m| m.min(wm)));
        }
        min
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sequencing_follows_chunk_order_across_threads() {
        let clock = Arc::new(PartitionClock::new(10));
        let cancel = Arc::new(AtomicBool::new(false));
        let (c2, k2) = (clock.clone(), cancel.clone());
        // chunk 1 arrives first but must wait for chunk 0
        let t = std::thread::spawn(move || c2.sequence(1, 500, false, &k2).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            clock.sequence(0, 100, false, &cancel).unwrap(),
            WATERMARK_MIN
        );
        assert_eq!(t.join().unwrap(), 100);
        assert_eq!(clock.watermark(), 490);
        assert_eq!(clock.sequence(2, 200, true, &cancel).unwrap(), 500);
        assert_eq!(clock.watermark(), WATERMARK_END);
    }

    #[test]
    fn source_watermark_is_min_over_active_partitions() {
        let clocks = Clocks::new(&[(2, 0), (1, 5)]);
        let cancel = AtomicBool::new(false);
        clocks
            .partition(0)
            .sequence(0, 100, false, &cancel)
            .unwrap();
        assert_eq!(clocks.source_watermark(0), Some(WATERMARK_MIN));
        clocks.partition(1).set_idle(true);
        assert_eq!(clocks.source_watermark(0), Some(100));
        clocks.partition(0).set_idle(true);
        assert_eq!(clocks.source_watermark(0), None);
        clocks.partition(2).sequence(0, 50, false, &cancel).unwrap();
        assert_eq!(clocks.source_watermark(1), Some(45));
    }

    #[test]
    fn ended_partitions_do_not_carry_the_watermark_past_an_idle_one() {
        let clocks = Clocks::new(&[(3, 5)]);
        let cancel = AtomicBool::new(false);
        clocks.partition(0).sequence(0, 100, true, &cancel).unwrap();
        clocks.partition(1).restore(WATERMARK_END);
        assert_eq!(clocks.partition(1).watermark(), WATERMARK_END);
        clocks.partition(2).restore(70);
        assert_eq!(clocks.source_watermark(0), Some(65));
        // partition 2 not assigned yet (or idle): the watermark holds, it does not jump to
        // the end with the ended partitions
        clocks.partition(2).set_idle(true);
        assert_eq!(clocks.source_watermark(0), None);
        // once the input is over, a partition never assigned here does not hold it
        assert_eq!(clocks.final_source_watermark(0), Some(WATERMARK_END));
        clocks.partition(2).set_idle(false);
        clocks.partition(2).sequence(0, 90, true, &cancel).unwrap();
        assert_eq!(clocks.source_watermark(0), Some(WATERMARK_END));
    }

    #[test]
    fn lanes_judge_their_rows_by_their_own_time_and_hold_the_partition_back() {
        let clock = PartitionClock::new(10);
        let cancel = AtomicBool::new(false);
        clock.use_lanes(3);
        // lane 0 runs ahead; lane 1 has not delivered: the partition waits for it
        assert_eq!(
            clock
                .sequence_in(0, Some(0), 1_000, false, &cancel)
                .unwrap(),
            WATERMARK_MIN
        );
        assert_eq!(clock.watermark(), WATERMARK_MIN);
        assert_eq!(
            clock.sequence_in(1, Some(1), 200, false, &cancel).unwrap(),
            WATERMARK_MIN
        );
        // lane 1's rows are late by lane 1's time, not by lane 0's
        assert_eq!(
            clock.sequence_in(2, Some(1), 300, false, &cancel).unwrap(),
            200
        );
        // lane 2 silent and idle: the smallest active lane's time
        clock.set_lane_idle(2, true);
        assert!(!clock.is_idle());
        assert_eq!(clock.watermark(), 290);
        assert_eq!(clock.lane_newest(), vec![1_000, 300, WATERMARK_MIN]);
        // every lane idle: the partition is
        clock.set_lane_idle(0, true);
        clock.set_lane_idle(1, true);
        assert!(clock.is_idle());
        // a restored clock continues each lane where it was
        let back = PartitionClock::new(10);
        back.restore(1_000);
        back.restore_lanes(&clock.lane_newest());
        assert_eq!(back.watermark(), WATERMARK_MIN);
        back.set_lane_idle(2, true);
        assert_eq!(back.watermark(), 290);
        assert_eq!(
            back.sequence_in(0, Some(1), 250, false, &cancel).unwrap(),
            300
        );
        // the end ends every lane
        back.sequence_in(1, None, WATERMARK_MIN, true, &cancel)
            .unwrap();
        assert_eq!(back.watermark(), WATERMARK_END);
        back.set_lane_idle(2, false);
        assert_eq!(back.watermark(), WATERMARK_END);
    }

    #[test]
    fn the_slowest_lane_kept_as_chunks_come_is_the_one_a_full_scan_finds() {
        let clock = PartitionClock::new(0);
        let cancel = AtomicBool::new(false);
        let lanes = 50usize;
        clock.use_lanes(lanes);
        let mut newest = vec![WATERMARK_MIN; lanes];
        let mut idle = vec![false; lanes];
        let mut x: u64 = 7;
        for seq in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let lane = (x >> 33) as usize % lanes;
            if (x >> 20).is_multiple_of(97) {
                let on = (x >> 10).is_multiple_of(2);
                clock.set_lane_idle(lane as u32, on);
                idle[lane] = on;
            }
            let t = (seq / 40) as i64 + ((x >> 40) % 5) as i64;
            clock
                .sequence_in(seq, Some(lane as u32), t, false, &cancel)
                .unwrap();
            newest[lane] = newest[lane].max(t);
            idle[lane] = false;
            let expected = (0..lanes)
                .filter(|&l| !idle[l])
                .map(|l| newest[l])
                .min()
                .unwrap_or(*newest.iter().max().unwrap());
            assert_eq!(clock.watermark(), expected, "after chunk {seq}");
        }
    }

    #[test]
    fn cancel_releases_a_waiting_worker() {
        let clock = PartitionClock::new(0);
        let cancel = AtomicBool::new(true);
        assert!(matches!(
            clock.sequence(3, 1, false, &cancel),
            Err(EngineError::Cancelled)
        ));
    }
}
