//! Counters of a run, shared by every thread and read for the summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// A named counter.
#[derive(Debug)]
pub struct Named {
    pub name: String,
    pub value: AtomicU64,
}

/// Counters of one run.
#[derive(Debug)]
pub struct RunStats {
    /// Records read from every source (good and bad).
    pub records_in: AtomicU64,
    /// Records that failed decoding or schema checks.
    pub bad: AtomicU64,
    /// Late events, per window operator.
    pub late: Vec<Named>,
    /// Window result rows emitted, per window operator.
    pub windows: Vec<Named>,
    /// Rows written, per sink.
    pub rows_written: Vec<Named>,
    /// Records written to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// The last complete checkpoint.
    pub checkpoints: crate::checkpoint::CheckpointStats,
}

impl RunStats {
    /// Counters for the given operators and sinks.
    pub fn new(operators: &[String], sinks: &[String]) -> Self {
        let named = |names: &[String]| {
            names
                .iter()
                .map(|n| Named {
                    name: n.clone(),
                    value: AtomicU64::new(0),
                })
                .collect()
        };
        RunStats {
            records_in: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            late: named(operators),
            windows: named(operators),
            rows_written: named(sinks),
            dead_letters: AtomicU64::new(0),
            checkpoints: Default::default(),
        }
    }

    /// The counters the workers update, named for a checkpoint.
    pub(crate) fn worker_counters(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("records_in".to_string(), Self::get(&self.records_in)),
            ("bad".to_string(), Self::get(&self.bad)),
        ];
        out.extend(
            self.late
                .iter()
                .map(|n| (format!("late/{}", n.name), Self::get(&n.value))),
        );
        out
    }

    /// The counters a live snapshot shows: the workers' and the dead letters written so far.
    pub(crate) fn live_counters(&self) -> Vec<(String, u64)> {
        let mut out = self.worker_counters();
        out.push(("dead_letters".to_string(), Self::get(&self.dead_letters)));
        out
    }

    /// The counters the merger updates, named for a checkpoint.
    pub(crate) fn merger_counters(&self) -> Vec<(String, u64)> {
        self.windows
            .iter()
            .map(|n| (format!("windows/{}", n.name), Self::get(&n.value)))
            .collect()
    }

    /// Starts from the counters of a checkpoint (names as written by the `*_counters`
    /// methods and the outputs), so the summary counts the whole run across restarts.
    pub fn restore_counters(&self, counters: &std::collections::BTreeMap<String, u64>) {
        let named = |list: &[Named], prefix: &str| {
            for n in list {
                if let Some(v) = counters.get(&format!("{prefix}/{}", n.name)) {
                    n.value.store(*v, Ordering::Relaxed);
                }
            }
        };
        if let Some(v) = counters.get("records_in") {
            self.records_in.store(*v, Ordering::Relaxed);
        }
        if let Some(v) = counters.get("bad") {
            self.bad.store(*v, Ordering::Relaxed);
        }
        if let Some(v) = counters.get("dead_letters") {
            self.dead_letters.store(*v, Ordering::Relaxed);
        }
        named(&self.late, "late");
        named(&self.windows, "windows");
        named(&self.rows_written, "rows_written");
    }

    /// Total late events over every operator.
    pub fn late_total(&self) -> u64 {
        self.late
            .iter()
            .map(|n| n.value.load(Ordering::Relaxed))
            .sum()
    }

    /// Total window rows emitted over every operator.
    pub fn windows_total(&self) -> u64 {
        self.windows
            .iter()
            .map(|n| n.value.load(Ordering::Relaxed))
            .sum()
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Adds to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
