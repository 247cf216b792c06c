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
        }
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
