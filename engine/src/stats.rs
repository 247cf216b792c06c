//! Counters of a run, shared by every thread and read for the summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::retry::OutputHealth;

/// A named counter.
#[derive(Debug)]
pub struct Named {
    pub name: String,
    pub value: AtomicU64,
}

/// A Prometheus-style histogram of seconds with fixed buckets, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds (the `+Inf` bucket is `count`).
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of the observations, in microseconds.
    sum_micros: AtomicU64,
}

/// Buckets from 5 ms to 10 minutes: query times and end-to-end latencies both fit.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets from 1 ms to 1 minute for the engine's own delays (a window's watermark to its
/// durable row, a read row to its visible view change), which live in milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_bounds(SECONDS_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram with the given bucket bounds (seconds, increasing).
    pub fn with_bounds(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records `n` observations of `seconds` (negative values count as 0).
    pub fn observe_n(&self, seconds: f64, n: u64) {
        if n == 0 {
            return;
        }
        let v = seconds.max(0.0);
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(n, Ordering::Relaxed);
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64 * n, Ordering::Relaxed);
    }

    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        self.observe_n(seconds, 1)
    }

    /// Cumulative counts per bound, then the total count and the sum in seconds.
    pub fn read(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut acc = 0;
        let cumulative = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                acc += c.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        (
            cumulative,
            self.count.load(Ordering::Relaxed),
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Counters of one source.
#[derive(Debug)]
pub struct SourceStats {
    pub name: String,
    /// Records read (good and bad).
    pub records_in: AtomicU64,
    /// Bytes of the records read.
    pub bytes_in: AtomicU64,
    /// Records that failed decoding or schema checks.
    pub bad: AtomicU64,
    /// A worker pool's repartition topic: messages dropped as repeats of the at-least-once
    /// repartition stage (an upstream offset already read).
    pub repartition_repeats: AtomicU64,
    /// A repartition topic: messages skipped because weir did not write them.
    pub repartition_foreign: AtomicU64,
    /// Records the source's log deleted (a Kafka topic's retention, a NATS stream's limits or
    /// a purge) before the source read them: between where it was to continue and the
    /// partition's log start (or the next record it holds).
    pub records_expired: AtomicU64,
    /// For sources whose partitions a consumer group assigns (Kafka): partitions this
    /// process reads, or -1 before the group's first assignment. -2 for other sources.
    pub assigned: std::sync::atomic::AtomicI64,
    /// Why the source's records wait, set by its parts while they do (e.g. a schema registry
    /// that cannot be reached); `/ready` lists them.
    pub waiting: Mutex<Vec<Condition>>,
    /// With `--until-caught-up`: what the source waits for after reading every partition
    /// it is assigned (partitions of its topics not read to their end yet); empty when it
    /// does not wait. A reason of `/ready`.
    pub waiting_for_partitions: Mutex<String>,
}

/// A reason something waits, `None` while it does not (shared with the part that sets it).
pub type Condition = std::sync::Arc<Mutex<Option<String>>>;

/// `SourceStats::assigned` of a source that reads every partition itself.
pub const NOT_GROUP_MANAGED: i64 = -2;

/// The statistics of the job running now, for what outlives one job (a pool worker's SQL
/// server, which stays up while the worker's jobs follow each other). Clones share it.
#[derive(Debug, Clone)]
pub struct CurrentStats(Arc<RwLock<Arc<RunStats>>>);

impl CurrentStats {
    /// The statistics now (the job running, or the one that ran last).
    pub fn get(&self) -> Arc<RunStats> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// From now on, the statistics of `stats` (a new job's).
    pub fn set(&self, stats: Arc<RunStats>) {
        match self.0.write() {
            Ok(mut g) => *g = stats,
            Err(p) => *p.into_inner() = stats,
        }
    }
}

impl From<Arc<RunStats>> for CurrentStats {
    fn from(stats: Arc<RunStats>) -> Self {
        CurrentStats(Arc::new(RwLock::new(stats)))
    }
}

/// Counters of one run.
#[derive(Debug)]
pub struct RunStats {
    /// Records read from every source (good and bad).
    pub records_in: AtomicU64,
    /// Per source, in the job's source order.
    pub sources: Vec<SourceStats>,
    /// When the run started (Unix ms).
    pub started_ms: AtomicU64,
    /// Consumer lag (messages behind the high watermark), by (source, `topic/partition`),
    /// for the partitions this process reads; updated by Kafka readers.
    pub consumer_lag: Mutex<BTreeMap<(String, String), i64>>,
    /// Records that failed decoding or schema checks.
    pub bad: AtomicU64,
    /// Late events, per window operator.
    pub late: Vec<Named>,
    /// Window result rows emitted, per window operator.
    pub windows: Vec<Named>,
    /// Rows written, per sink.
    pub rows_written: Vec<Named>,
    /// Rows committed, per sink: with checkpoints, those written before the last checkpoint
    /// the sink committed (a restore writes the rest again); without, those of a sink that
    /// finished. Restored with a checkpoint as its `rows_written`.
    pub rows_committed: Vec<Named>,
    /// Records written to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Operator rows not counted again: read again after a restart without checkpoints, of
    /// windows an earlier run made durable (see `crate::reread`). Once per operator.
    pub reread_skipped: AtomicU64,
    /// Per global partition: records read, bad records and late rows (`weir_status`).
    pub partitions: PartitionCounters,
    /// The newest of them, in memory (the console's `weir_dead_letters`).
    pub recent_dead_letters: crate::dead_letter::RecentDeadLetters,
    /// The last complete checkpoint.
    pub checkpoints: CheckpointStats,
    /// Errors, retries and circuit state, per sink.
    pub sink_health: Vec<OutputHealth>,
    /// Per sink: from a window's end to the moment its row is acknowledged by the sink
    /// (committed with its checkpoint, or flushed).
    pub sink_latency: Vec<Histogram>,
    /// Per sink: from the moment the watermark passed a window's end (the first worker that
    /// saw it hands the window over) to the sink acknowledging its row durable (flushed
    /// without checkpoints, committed with its checkpoint). Observed per batch, not per row.
    pub window_durable_latency: Vec<Histogram>,
    /// Per operator (views only are exported): from the moment a reader took a chunk of
    /// rows from its source to the live snapshot showing their changes to SQL. Observed
    /// per chunk, weighted by its rows.
    pub view_visible_latency: Vec<Histogram>,
    /// Errors, retries and circuit state of the dead-letter output.
    pub dead_letter_health: OutputHealth,
    /// Per operator: the counter of its integer sums given as null because they did not fit
    /// the output type (counted by the operator's aggregates since the process started).
    pub sum_overflows: Mutex<Vec<(String, std::sync::Arc<AtomicU64>)>>,
    /// Per HTTP-delivering sink (webhooks), by sink name: its requests, failures by status
    /// class and latency, registered by the pipeline that opened it.
    pub deliveries: Mutex<Vec<(String, std::sync::Arc<DeliveryStats>)>>,
    /// A pool worker's repartition stages (they outlive its jobs), registered by the worker.
    pub stages: Mutex<Vec<std::sync::Arc<crate::stage_stats::StageStats>>>,
}

/// Failure classes of [`DeliveryStats::failures`], as the `class` label shows them.
pub const DELIVERY_FAILURE_CLASSES: [&str; 5] = ["connection", "3xx", "4xx", "5xx", "other"];

/// Requests of a sink that delivers rows over HTTP, updated by the sink itself.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Requests answered 2xx.
    pub delivered: AtomicU64,
    /// Rows those requests carried.
    pub rows_delivered: AtomicU64,
    /// Failed requests per class of [`DELIVERY_FAILURE_CLASSES`] (no answer, 3xx, 4xx, 5xx,
    /// any other status).
    pub failures: [AtomicU64; 5],
    /// Time from sending a request to its answer (any answer).
    pub latency: Histogram,
}

impl DeliveryStats {
    /// Counts a failed request of class `class` (an index of [`DELIVERY_FAILURE_CLASSES`]).
    pub fn failed(&self, class: usize) {
        if let Some(c) = self.failures.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a partition contributed since the run started: counted once per chunk by the worker
/// that processed it (a lock per chunk, not per record).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCount {
    /// Records read (good and bad).
    pub records_in: u64,
    /// Records dead-lettered as bad (once per record).
    pub bad: u64,
    /// Rows that arrived after their window closed (summed over the operators reading them).
    pub late: u64,
}

impl PartitionCount {
    /// The counter's name in checkpoints and live snapshots: `partition/<id>/<field>`.
    pub fn name(id: usize, field: &str) -> String {
        format!("partition/{id}/{field}")
    }

    /// Partition `id`'s counts among named `counters` (zero where absent).
    pub fn of(counters: &BTreeMap<String, u64>, id: usize) -> Self {
        let get = |field: &str| counters.get(&Self::name(id, field)).copied().unwrap_or(0);
        PartitionCount {
            records_in: get("records_in"),
            bad: get("bad"),
            late: get("late"),
        }
    }
}

/// [`PartitionCount`]s by global partition id.
#[derive(Debug, Default)]
pub struct PartitionCounters(Mutex<Vec<PartitionCount>>);

impl PartitionCounters {
    /// Adds to partition `id`'s counts.
    pub fn add(&self, id: usize, delta: PartitionCount) {
        if delta == PartitionCount::default() {
            return;
        }
        let mut counts = match self.0.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if counts.len() <= id {
            counts.resize(id + 1, PartitionCount::default());
        }
        let c = &mut counts[id];
        c.records_in += delta.records_in;
        c.bad += delta.bad;
        c.late += delta.late;
    }

    /// Starts from the counts named in a checkpoint's `counters` (see [`PartitionCount::name`]).
    pub fn restore(&self, counters: &BTreeMap<String, u64>) {
        let mut counts = match self.0.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        for (name, &v) in counters.range("partition/".to_string().."partition0".to_string()) {
            let mut parts = name.split('/').skip(1);
            let (Some(Ok(id)), Some(field)) = (parts.next().map(str::parse::<usize>), parts.next())
            else {
                continue;
            };
            if counts.len() <= id {
                counts.resize(id + 1, PartitionCount::default());
            }
            match field {
                "records_in" => counts[id].records_in = v,
                "bad" => counts[id].bad = v,
                "late" => counts[id].late = v,
                _ => {}
            }
        }
    }

    /// Every partition's counts, by id (partitions never counted are absent or zero).
    pub fn snapshot(&self) -> Vec<PartitionCount> {
        match self.0.lock() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl RunStats {
    /// Counters for the given sources, operators and sinks.
    pub fn new(sources: &[String], operators: &[String], sinks: &[String]) -> Self {
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
            sources: sources
                .iter()
                .map(|n| SourceStats {
                    name: n.clone(),
                    records_in: AtomicU64::new(0),
                    bytes_in: AtomicU64::new(0),
                    bad: AtomicU64::new(0),
                    repartition_repeats: AtomicU64::new(0),
                    repartition_foreign: AtomicU64::new(0),
                    records_expired: AtomicU64::new(0),
                    assigned: std::sync::atomic::AtomicI64::new(NOT_GROUP_MANAGED),
                    waiting: Mutex::new(Vec::new()),
                    waiting_for_partitions: Mutex::new(String::new()),
                })
                .collect(),
            started_ms: AtomicU64::new(crate::time::now_ms().max(0) as u64),
            consumer_lag: Mutex::new(BTreeMap::new()),
            bad: AtomicU64::new(0),
            late: named(operators),
            windows: named(operators),
            rows_written: named(sinks),
            rows_committed: named(sinks),
            dead_letters: AtomicU64::new(0),
            reread_skipped: AtomicU64::new(0),
            partitions: PartitionCounters::default(),
            recent_dead_letters: Default::default(),
            checkpoints: Default::default(),
            sink_health: sinks.iter().map(|_| OutputHealth::default()).collect(),
            sink_latency: sinks.iter().map(|_| Histogram::default()).collect(),
            window_durable_latency: sinks
                .iter()
                .map(|_| Histogram::with_bounds(LATENCY_BUCKETS))
                .collect(),
            view_visible_latency: operators
                .iter()
                .map(|_| Histogram::with_bounds(LATENCY_BUCKETS))
                .collect(),
            dead_letter_health: OutputHealth::default(),
            sum_overflows: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            stages: Mutex::new(Vec::new()),
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
        for s in &self.sources {
            out.push((format!("records_in/{}", s.name), Self::get(&s.records_in)));
            out.push((format!("bytes_in/{}", s.name), Self::get(&s.bytes_in)));
            out.push((format!("bad/{}", s.name), Self::get(&s.bad)));
        }
        for (id, c) in self.partitions.snapshot().iter().enumerate() {
            if *c != PartitionCount::default() {
                out.push((PartitionCount::name(id, "records_in"), c.records_in));
                out.push((PartitionCount::name(id, "bad"), c.bad));
                out.push((PartitionCount::name(id, "late"), c.late));
            }
        }
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
        for s in &self.sources {
            for (prefix, c) in [
                ("records_in", &s.records_in),
                ("bytes_in", &s.bytes_in),
                ("bad", &s.bad),
            ] {
                if let Some(v) = counters.get(&format!("{prefix}/{}", s.name)) {
                    c.store(*v, Ordering::Relaxed);
                }
            }
        }
        self.partitions.restore(counters);
        named(&self.late, "late");
        named(&self.windows, "windows");
        named(&self.rows_written, "rows_written");
        // a restore commits its checkpoint: the rows written before it are committed
        named(&self.rows_committed, "rows_written");
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

    /// The sum of every source's counter `field`.
    pub fn sources_total(&self, field: impl Fn(&SourceStats) -> &AtomicU64) -> u64 {
        self.sources.iter().map(|s| Self::get(field(s))).sum()
    }

    /// Adds to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Figures of the last complete checkpoint, for the run summary and metrics.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    pub completed: AtomicU64,
    /// Attempts to store a checkpoint that failed and were made again.
    pub store_failures: AtomicU64,
    pub last_epoch: AtomicU64,
    pub last_duration_ms: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_rows: AtomicU64,
    /// When the last one completed (epoch ms), 0 if none.
    pub last_completed_ms: AtomicU64,
    /// The checkpoint interval (ms) when checkpointing is on, else 0.
    pub interval_ms: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_counts_go_through_a_checkpoint_and_a_snapshot_by_name() {
        let stats = RunStats::new(&[], &[], &[]);
        let c = |records_in, bad, late| PartitionCount {
            records_in,
            bad,
            late,
        };
        stats.partitions.add(2, c(10, 1, 0));
        stats.partitions.add(2, c(5, 0, 3));
        stats.partitions.add(0, c(7, 0, 0));
        let named: BTreeMap<String, u64> = stats.worker_counters().into_iter().collect();
        assert_eq!(PartitionCount::of(&named, 2), c(15, 1, 3));
        assert_eq!(PartitionCount::of(&named, 1), c(0, 0, 0));
        let restored = RunStats::new(&[], &[], &[]);
        restored.restore_counters(&named);
        assert_eq!(
            restored.partitions.snapshot(),
            vec![c(7, 0, 0), c(0, 0, 0), c(15, 1, 3)]
        );
    }

    #[test]
    fn histograms_count_each_observation_in_its_bucket_and_cumulate() {
        let h = Histogram::default();
        h.observe(0.003);
        h.observe_n(0.7, 2);
        h.observe(5000.0);
        let (buckets, count, sum) = h.read();
        assert_eq!(count, 4);
        assert!((sum - (0.003 + 1.4 + 5000.0)).abs() < 1e-3);
        assert_eq!(buckets[0], (0.005, 1));
        let at_1s = buckets.iter().find(|(b, _)| *b == 1.0).unwrap().1;
        assert_eq!(at_1s, 3);
        assert_eq!(buckets.last().unwrap().1, 3, "5000 s is only in +Inf");
    }
}
