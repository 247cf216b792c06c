//! What a worker pool's repartition stage shows of itself: the lag of the upstream
//! partitions it reads, what it forwarded, and whether it holds back because the pool's jobs
//! are behind in the internal topic (its backpressure). The stage updates these; every job
//! of the worker shows them in `/metrics` and `weir_status` (the stage outlives the jobs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// One repartition stage's figures.
#[derive(Debug)]
pub struct StageStats {
    /// The source it repartitions.
    pub source: String,
    /// The topic it reads.
    pub upstream: String,
    /// Messages sent to the internal topic since the stage started.
    pub forwarded: AtomicU64,
    /// Of those, the messages whose delivery ended (the broker acknowledged them, or they
    /// failed), as of the stage's last poll of its producer.
    pub settled: AtomicU64,
    /// Messages of the internal topic the pool's jobs have not checkpointed yet, at the last
    /// measure; -1 before the first (or when it cannot be measured).
    pub backlog: AtomicI64,
    /// Whether the stage holds back now (its upstream partitions paused).
    pub paused: AtomicBool,
    /// How many times it paused.
    pub pauses: AtomicU64,
    /// Upstream records the topic's retention deleted before the stage copied them.
    pub expired: AtomicU64,
    /// Times an upstream partition started over (it ended before the stage's committed
    /// offset: the topic was created again, or lost records).
    pub restarts: AtomicU64,
    /// Per upstream partition the stage reads now.
    pub partitions: Mutex<BTreeMap<i32, StagePartition>>,
}

/// An upstream partition the stage reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagePartition {
    /// Messages between the partition's high watermark and the stage's position (else its
    /// group's committed offset), measured every second; `None` before the first measure.
    pub lag: Option<i64>,
    /// Messages of the partition sent on by this stage.
    pub forwarded: u64,
}

/// A stage's row of `weir_status`: one upstream partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    pub source: String,
    /// `topic/partition`.
    pub partition: String,
    pub lag: Option<i64>,
    pub forwarded: u64,
}

impl StageStats {
    /// The figures of a stage repartitioning `source`, which reads topic `upstream`.
    pub fn new(source: &str, upstream: &str) -> Self {
        StageStats {
            source: source.to_string(),
            upstream: upstream.to_string(),
            forwarded: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            backlog: AtomicI64::new(-1),
            paused: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts `n` messages of upstream partition `partition` sent on.
    pub fn forwarded(&self, partition: i32, n: u64) {
        self.forwarded.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut p) = self.partitions.lock() {
            p.entry(partition).or_default().forwarded += n;
        }
    }

    /// Sets the lag of upstream partition `partition`.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        if let Ok(mut p) = self.partitions.lock() {
            p.entry(partition).or_default().lag = Some(lag.max(0));
        }
    }

    /// Forgets the upstream partitions the stage no longer reads.
    pub fn revoked(&self, partitions: &[i32]) {
        if let Ok(mut p) = self.partitions.lock() {
            for n in partitions {
                p.remove(n);
            }
        }
    }

    /// Records a measure of the backlog (`None`: not measured) and whether the stage pauses.
    pub fn set_backlog(&self, backlog: Option<u64>, paused: bool) {
        let b = backlog.map_or(-1, |b| b.min(i64::MAX as u64) as i64);
        self.backlog.store(b, Ordering::Relaxed);
        if paused && !self.paused.swap(true, Ordering::Relaxed) {
            self.pauses.fetch_add(1, Ordering::Relaxed);
        } else if !paused {
            self.paused.store(false, Ordering::Relaxed);
        }
    }

    /// The stage's rows of `weir_status`, one per upstream partition it reads.
    pub fn statuses(&self) -> Vec<StageStatus> {
        let Ok(p) = self.partitions.lock() else {
            return Vec::new();
        };
        p.iter()
            .map(|(n, s)| StageStatus {
                source: self.source.clone(),
                partition: format!("{}/{n}", self.upstream),
                lag: s.lag,
                forwarded: s.forwarded,
            })
            .collect()
    }
}

/// Whether a stage pauses (or stays paused) at `backlog` messages behind, for `max_backlog`:
/// it pauses above `max_backlog` and resumes at half of it, so that it does not flip at
/// every measure. A backlog it cannot measure does not hold it back: a stage never stalls on
/// a broker that does not answer a monitoring request.
pub fn holds_back(paused: bool, backlog: Option<u64>, max_backlog: u64) -> bool {
    match backlog {
        None => false,
        Some(b) if paused => b > max_backlog / 2,
        Some(b) => b > max_backlog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_pauses_above_its_limit_and_resumes_at_half_of_it() {
        assert!(!holds_back(false, Some(1_000), 1_000));
        assert!(holds_back(false, Some(1_001), 1_000));
        assert!(holds_back(true, Some(501), 1_000));
        assert!(!holds_back(true, Some(500), 1_000));
        // not measured: never holds back
        assert!(!holds_back(true, None, 1_000));
        assert!(!holds_back(false, None, 0));
    }

    #[test]
    fn pauses_are_counted_once_each_and_rows_follow_the_partitions_read() {
        let s = StageStats::new("events", "in");
        s.set_backlog(Some(20), true);
        s.set_backlog(Some(20), true);
        s.set_backlog(Some(2), false);
        s.set_backlog(None, true);
        assert_eq!(s.pauses.load(Ordering::Relaxed), 2);
        assert_eq!(s.backlog.load(Ordering::Relaxed), -1);
        s.forwarded(1, 5);
        s.forwarded(0, 2);
        s.set_lag(1, 7);
        s.revoked(&[0]);
        assert_eq!(s.forwarded.load(Ordering::Relaxed), 7);
        assert_eq!(
            s.statuses(),
            vec![StageStatus {
                source: "events".into(),
                partition: "in/1".into(),
                lag: Some(7),
                forwarded: 5,
            }]
        );
    }
}
