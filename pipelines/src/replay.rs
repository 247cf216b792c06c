//! `weir replay`: re-reads a time range of a pipeline's Kafka topics as a bounded job with
//! its own state (no checkpoint, a consumer group of its own) and rewrites the windows whose
//! start lies in the range, with the identities of the live run's rows (Kafka keys, Iceberg
//! rows replaced in one snapshot), so replaying twice leaves the sinks as replaying once.
//!
//! Offsets: with `margin` = window size + allowed lateness + max out-of-orderness, each
//! partition is read from the first message at `from - margin` (the first window is complete,
//! and lateness is judged as in the live run) to the first message at `to + margin` (every
//! window of the range has closed by then), both by Kafka timestamps and checked against the
//! partition's high watermark captured at the start.

use std::sync::Arc;
use std::time::Duration;

use crate::connectors::{
    OpenSink, OpenSource, OpenedSource, ReadBounds, ReplayRange, WindowStarts,
};
use crate::mode::{JobHooks, Reporter, RunMode};
use crate::plan::{Plan, PlannedSink, PlannedSource};
use crate::run::{RunError, RunOptions, RunSummary};
use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use weir_engine::job::{Committable, Sink};
use weir_engine::EngineError;

/// Why a replay cannot be prepared: a request or pipeline it cannot rewrite (the user's to
/// fix), or a source's broker that could not say where the range is (its own kind).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--to` is not after `--from`.
    #[error("--to must be after --from")]
    EmptyRange,
    /// `--only` names a window the pipeline does not have.
    #[error(
        "--only {name}: no such window (windows: {windows}); views are always current and are not replayed"
    )]
    NoSuchWindow { name: String, windows: String },
    /// The pipeline has no window.
    #[error("the pipeline has no window to replay")]
    NoWindow,
    /// A window follows processing time: its windows are the wall clock's when events were
    /// handled, which a replay cannot give again.
    #[error(
        "window `{0}` follows processing time (`time: processing`): a replay cannot rewrite it, as its windows are the wall clock's when events were handled, not the events' own times"
    )]
    ProcessingTime(String),
    /// `--sinks` names a sink the pipeline does not have.
    #[error("--sinks {0}: no such sink")]
    NoSuchSink(String),
    /// None of the replayed windows writes to the sinks asked for.
    #[error("no replayed window writes to a sink")]
    NoSink,
    /// A source of a kind that replay does not re-read (`kinds` and `plural` list those it
    /// does, from the registry).
    #[error("source `{source_name}` is not a {kinds} source: replay re-reads {plural}")]
    NotReplayable {
        source_name: String,
        kinds: String,
        plural: String,
    },
    /// A source's broker could not be asked where the range is; reads as its cause.
    #[error(transparent)]
    Lookup(#[from] Lookup),
}

impl ReplayError {
    /// A user error for a request or pipeline a replay cannot rewrite; a lookup's own kind.
    pub fn kind(&self) -> weir_engine::ErrorKind {
        match self {
            ReplayError::Lookup(l) => l.kind,
            _ => weir_engine::ErrorKind::User,
        }
    }
}

/// A failed look-up of a replay's range in a source's broker, with the kind its connector
/// gives it (a missing topic is the user's; an unreachable broker is not). Reads as its
/// error, whose causes follow it.
#[derive(Debug)]
pub struct Lookup {
    pub kind: weir_engine::ErrorKind,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl Lookup {
    /// `error`, of `kind`.
    pub fn new(
        kind: weir_engine::ErrorKind,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Lookup {
            kind,
            error: Box::new(error),
        }
    }
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Lookup {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Windows starting in `[from_ms, to_ms)` are rewritten.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Only these windows (all the pipeline's windows when empty).
    pub only: Vec<String>,
    /// Only these sinks (all the replayed windows' sinks when `None`).
    pub sinks: Option<Vec<String>>,
}

/// A replay ready to run: the plan reduced to the replayed windows and sinks, and the ranges
/// of every source (each its connector's own value).
pub struct ReplaySetup {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Per source (by index in the plan): the range of each partition (which also says
    /// where its reader is).
    pub ranges: Vec<(usize, Vec<Box<dyn ReplayRange>>)>,
    /// Per source, as `ranges`: how far past a window's start its last event may be (window
    /// size, allowed lateness and out-of-orderness).
    pub margins: Vec<i64>,
    /// The suffix of files a replay writes beside the live run's (`replay-FROM-TO`).
    pub suffix: String,
    /// Rows of the range written to each sink.
    pub written: Written,
}

impl ReplaySetup {
    /// Messages to read in all.
    pub fn messages(&self) -> u64 {
        self.ranges
            .iter()
            .flat_map(|(_, r)| r.iter())
            .map(|r| r.messages())
            .sum()
    }

    /// The partitions whose ranges may miss messages of the time range, each with why
    /// (`KEY: reason`): at their start, and with `open_end` at their end too.
    pub fn incomplete(&self, open_end: bool) -> Vec<String> {
        self.ranges
            .iter()
            .flat_map(|(_, r)| r.iter())
            .filter_map(|r| {
                let why = r
                    .deleted_before()
                    .or_else(|| open_end.then(|| r.open_end()).flatten())?;
                Some(format!("{}: {why}", r.key()))
            })
            .collect()
    }

    /// The newest time before which every window is whole in the partitions: the earliest,
    /// over the partitions whose newest messages are in the range and that hold nothing past
    /// it, of their newest message's time less their source's margin. `None` when no such
    /// partition is open at its end, or one of them cannot tell its newest time (a NATS
    /// stream; a Kafka partition whose last offset is a transaction marker): the end then
    /// stays where it is. A newest message older than the range's start is a late one,
    /// which says nothing of how far the partition reached: it is not counted.
    pub fn whole_until(&self) -> Option<i64> {
        let mut until: Option<i64> = None;
        let open = self
            .ranges
            .iter()
            .zip(&self.margins)
            .flat_map(|((_, ranges), &margin)| ranges.iter().map(move |r| (r, margin)))
            .filter(|(r, _)| r.open_end().is_some());
        for (r, margin) in open {
            let newest = r.newest_ms()?;
            if newest >= self.from_ms {
                let whole = newest.saturating_sub(margin);
                until = Some(until.map_or(whole, |u| u.min(whole)));
            }
        }
        until
    }

    /// Where partition `key` of source `source` (by index in the plan) starts and stops,
    /// `None` when the replay has no range for it: what the source is opened with.
    pub fn bounds(&self, source: usize, key: &str) -> Option<ReadBounds> {
        self.ranges
            .iter()
            .find(|(s, _)| *s == source)?
            .1
            .iter()
            .find(|r| r.partition() == key)
            .map(|r| r.bounds())
    }

    /// The windows the replay rewrites: those starting in its range.
    pub fn window_starts(&self) -> WindowStarts {
        WindowStarts {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
        }
    }

    /// The ranges, one line per partition.
    pub fn describe(&self, plan: &Plan) -> String {
        let mut s = String::new();
        for (source, ranges) in &self.ranges {
            for r in ranges {
                s.push_str(&format!(
                    "  {} {}\n",
                    plan.sources[*source].name,
                    r.describe()
                ));
            }
        }
        s
    }
}

fn rfc3339_compact(ms: i64) -> String {
    weir_engine::time::format_rfc3339_ms(ms)
        .replace([':', '-'], "")
        .replace(".000Z", "Z")
}

/// Reduces `plan` to a replay of `req` ([`reduce`]) and finds the offset ranges of its
/// sources (asking their brokers). Refused: pipelines without Kafka or NATS sources, unknown
/// window or sink names, an empty range.
pub fn prepare(plan: Plan, req: &ReplayRequest) -> Result<(Plan, ReplaySetup), ReplayError> {
    let mut plan = reduce(plan, req)?;
    let suffix = suffix(req);
    let margin = plan
        .windows
        .iter()
        .map(|w| w.config.size_ms + w.config.allowed_lateness_ms)
        .max()
        .unwrap_or(0);
    let mut ranges = Vec::new();
    let mut margins = Vec::new();
    for (i, s) in plan.sources.iter_mut().enumerate() {
        let ooo = s.max_out_of_orderness_ms as i64;
        margins.push(margin.saturating_add(ooo));
        // (times before the epoch are none a broker can look up)
        let range = (
            req.from_ms.saturating_sub(margin + ooo).max(0),
            req.to_ms.saturating_add(margin + ooo).max(0),
        );
        let replayed = s.input.replay(&s.name, range, &suffix)?;
        ranges.push((i, replayed.ranges));
    }
    let setup = ReplaySetup {
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        ranges,
        margins,
        suffix,
        written: Default::default(),
    };
    Ok((plan, setup))
}

/// The suffix of the files a replay of `req` writes beside the live run's.
fn suffix(req: &ReplayRequest) -> String {
    format!(
        "replay-{}-{}",
        rfc3339_compact(req.from_ms),
        rfc3339_compact(req.to_ms)
    )
}

/// `plan` reduced to what a replay of `req` rewrites: the windows it names (all when none),
/// writing only to the sinks it names (all when none), with state of its own (no
/// checkpoint, no SQL, no views). Pure: opens nothing.
pub fn reduce(mut plan: Plan, req: &ReplayRequest) -> Result<Plan, ReplayError> {
    if req.to_ms <= req.from_ms {
        return Err(ReplayError::EmptyRange);
    }
    for name in &req.only {
        if !plan.windows.iter().any(|w| &w.config.name == name) {
            return Err(ReplayError::NoSuchWindow {
                name: name.clone(),
                windows: plan
                    .windows
                    .iter()
                    .map(|w| w.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let processing =
        |w: &crate::plan::PlannedWindow| w.config.time == weir_operators::TimeMode::Processing;
    if let Some(w) = plan
        .windows
        .iter()
        .find(|w| processing(w) && req.only.contains(&w.config.name))
    {
        return Err(ReplayError::ProcessingTime(w.config.name.clone()));
    }
    // (windows on processing time are not replayed: rows of the range would be counted
    // into the windows open now and overwrite the live run's)
    let first_processing = plan
        .windows
        .iter()
        .find(|w| processing(w))
        .map(|w| w.config.name.clone());
    for w in plan.windows.iter().filter(|w| processing(w)) {
        tracing::warn!(window = %w.config.name, "not replayed: the window follows processing time");
    }
    plan.windows
        .retain(|w| (req.only.is_empty() || req.only.contains(&w.config.name)) && !processing(w));
    if plan.windows.is_empty() {
        return Err(match first_processing {
            Some(name) if req.only.is_empty() => ReplayError::ProcessingTime(name),
            _ => ReplayError::NoWindow,
        });
    }
    if let Some(sinks) = &req.sinks {
        for name in sinks {
            if !plan.sinks.iter().any(|s| &s.name == name) {
                return Err(ReplayError::NoSuchSink(name.clone()));
            }
        }
        for w in &mut plan.windows {
            w.sinks.retain(|&i| sinks.contains(&plan.sinks[i].name));
        }
    }
    if plan.windows.iter().all(|w| w.sinks.is_empty()) {
        return Err(ReplayError::NoSink);
    }
    // its own state: no checkpoint, no SQL, no views
    plan.views.clear();
    plan.checkpoint = None;
    plan.serve = None;
    // only the sources its windows read: another one (a file, a generator, a topic of
    // views only) is neither re-read nor replayable
    let read: Vec<bool> = (0..plan.sources.len())
        .map(|i| plan.windows.iter().any(|w| w.source == i))
        .collect();
    let renumbered: Vec<usize> = read
        .iter()
        .scan(0, |next, &r| {
            let at = *next;
            *next += usize::from(r);
            Some(at)
        })
        .collect();
    let mut i = 0;
    plan.sources.retain(|_| {
        i += 1;
        read[i - 1]
    });
    for w in &mut plan.windows {
        w.source = renumbered[w.source];
    }
    Ok(plan)
}

/// `plan`'s outputs retargeted for a replay writing files tagged `suffix`: each sink's
/// replayed target (files beside the live run's; other outputs replace rows by identity),
/// and dead letters beside the live run's, never into them. Pure: opens nothing.
pub fn retarget_outputs(mut plan: Plan, suffix: &str) -> Plan {
    for s in &mut plan.sinks {
        s.target = s.target.replayed(suffix);
    }
    let fallback = plan
        .file
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(format!("{}-dead-letter.{suffix}.ndjson", plan.name));
    plan.dead_letter = plan.dead_letter.replayed(suffix, &fallback);
    plan
}

/// The replay mode: a bounded job over the offset ranges of a [`ReplaySetup`] (the plan
/// already [`prepare`]d), writing beside the live run's outputs and only its windows.
pub struct Replay {
    setup: Arc<ReplaySetup>,
}

impl Replay {
    /// A replay of `setup`'s range.
    pub fn new(setup: Arc<ReplaySetup>) -> Self {
        Replay { setup }
    }
}

impl RunMode for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn retarget(&self, plan: Plan) -> Result<Plan, RunError> {
        Ok(retarget_outputs(plan, &self.setup.suffix))
    }

    fn run(&self, plan: Plan, opts: &RunOptions) -> Result<RunSummary, RunError> {
        let plan = self.retarget(plan)?;
        crate::run::run_single(&plan, opts, self)
    }
}

impl JobHooks for Replay {
    /// Partitions start at the replay's range and end at its end.
    fn open_source(
        &self,
        source: &PlannedSource,
        at: OpenSource,
    ) -> Result<OpenedSource, RunError> {
        let index = at.index;
        let bounds = move |key: &str| self.setup.bounds(index, key);
        source.input.open(&bounded(at, &bounds))
    }

    /// Only rows of windows starting in the range, counted; an output that replaces rows
    /// by range replaces those windows.
    fn open_sink<'a>(
        &'a self,
        sink: &PlannedSink,
        at: &mut OpenSink<'a>,
    ) -> Result<Box<dyn Sink>, RunError> {
        let range = self.setup.window_starts();
        at.replaces = Some(range);
        let inner = sink.target.open(at)?;
        let written = self.setup.written.clone();
        Ok(Box::new(WindowRange::new(
            &sink.name, inner, range, written,
        )))
    }

    fn progress(&self, stats: &Arc<weir_engine::RunStats>) -> Option<Reporter> {
        let r = &self.setup;
        let partitions = r
            .ranges
            .iter()
            .flat_map(|(_, ranges)| ranges.iter())
            .map(|x| (x.key(), x.start(), x.end(), x.read()))
            .collect();
        let (total, stats) = (r.messages(), stats.clone());
        Some(Reporter::spawn(move |stop| {
            Progress {
                total,
                stats,
                stop,
                partitions,
            }
            .report()
        }))
    }
}

/// `at` reading every partition `bounds` gives a range from its start to its end, then
/// stopping: how a replay opens its sources. No partition resumes at a checkpoint (a
/// replay keeps none): one without a range starts as its source's configuration says.
fn bounded<'a>(
    at: OpenSource<'a>,
    bounds: &'a dyn Fn(&str) -> Option<ReadBounds>,
) -> OpenSource<'a> {
    OpenSource {
        resume: &no_resume,
        bounds,
        until_caught_up: true,
        ..at
    }
}

/// No partition resumes at a checkpoint.
fn no_resume(_key: &str) -> Option<weir_engine::events::Resume> {
    None
}

/// Rows written per sink.
type Written = Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

/// A sink that passes on only the rows of windows starting in a range, counting them.
pub struct WindowRange {
    inner: Box<dyn Sink>,
    range: WindowStarts,
    name: String,
    written: Written,
}

impl WindowRange {
    /// `inner` given the rows of windows starting in `range`, counted in `written`.
    pub fn new(name: &str, inner: Box<dyn Sink>, range: WindowStarts, written: Written) -> Self {
        WindowRange {
            inner,
            range,
            name: name.to_string(),
            written,
        }
    }

    /// Counts `rows` written (negative: refused after all).
    fn count(&self, rows: i64) {
        if let Ok(mut w) = self.written.lock() {
            let n = w.entry(self.name.clone()).or_default();
            *n = n.saturating_add_signed(rows);
        }
    }
}

impl Committable for WindowRange {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.inner.flush()
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        self.inner.finish()
    }
}

impl WindowRange {
    /// The rows of `batch` in the replayed range, `None` when there are none (counted once
    /// written: a write tried again is not counted twice).
    fn in_range(&self, batch: &RecordBatch) -> Result<Option<RecordBatch>, EngineError> {
        let Some(col) = batch.column_by_name("window_start") else {
            return Ok(Some(batch.clone()));
        };
        let Some(starts) = col.as_primitive_opt::<TimestampMillisecondType>() else {
            return Err(EngineError::sink(
                &self.name,
                "window_start is not a timestamp",
            ));
        };
        let keep: BooleanArray = starts
            .iter()
            .map(|s| Some(s.is_some_and(|s| self.range.contains(s))))
            .collect();
        if keep.true_count() == batch.num_rows() {
            return Ok(Some(batch.clone()));
        }
        let rows = filter_record_batch(batch, &keep)
            .map_err(|e| EngineError::sink_caused(&self.name, "", e))?;
        Ok((rows.num_rows() > 0).then_some(rows))
    }
}

impl Sink for WindowRange {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if let Some(rows) = self.in_range(batch)? {
            self.inner.write(&rows)?;
            self.count(rows.num_rows() as i64);
        }
        Ok(())
    }
    fn write_output(&mut self, output: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        if let Some(rows) = self.in_range(batch)? {
            self.inner.write_output(output, &rows)?;
            self.count(rows.num_rows() as i64);
        }
        Ok(())
    }
    // rows the output refused (a PostgreSQL constraint, an Elasticsearch mapping) reach the
    // replay's dead letters, and are not rewritten
    fn take_rejected(&mut self) -> Vec<weir_engine::RejectedRow> {
        let refused = self.inner.take_rejected();
        self.count(-(refused.len() as i64));
        refused
    }
}

/// What the replay's progress reporter reads.
struct Progress {
    pub total: u64,
    pub stats: Arc<weir_engine::RunStats>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// Per partition: its name, where it starts and ends, and where its reader is.
    pub partitions: Vec<(String, u64, u64, Arc<std::sync::atomic::AtomicU64>)>,
}

impl Progress {
    /// A progress bar on a terminal (messages read / to read, events per second, time left);
    /// otherwise a log line every 2 s.
    pub fn report(self) {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            let bars = indicatif::MultiProgress::new();
            let style = |t: &str| indicatif::ProgressStyle::with_template(t).ok();
            let total = bars.add(indicatif::ProgressBar::new(self.total));
            if let Some(s) = style(
                "replay [{elapsed_precise}] {wide_bar} {pos}/{len} messages, {per_sec}, ETA {eta}",
            ) {
                total.set_style(s);
            }
            let parts: Vec<_> = self
                .partitions
                .iter()
                .map(|(name, start, end, _)| {
                    let b = bars.add(indicatif::ProgressBar::new(end - start));
                    if let Some(s) = style("  {prefix:<24} {bar:40} {pos}/{len} offsets") {
                        b.set_style(s);
                    }
                    b.set_prefix(name.clone());
                    b
                })
                .collect();
            let update = || {
                total.set_position(
                    weir_engine::RunStats::get(&self.stats.records_in).min(self.total),
                );
                for (b, (_, start, end, at)) in parts.iter().zip(&self.partitions) {
                    let at = at.load(std::sync::atomic::Ordering::Relaxed);
                    b.set_position(at.clamp(*start, *end) - start);
                }
            };
            while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
                update();
                std::thread::sleep(Duration::from_millis(200));
            }
            update();
            for b in &parts {
                b.finish();
            }
            total.finish();
            return;
        }
        let started = std::time::Instant::now();
        let mut last = started;
        while !self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.elapsed() < Duration::from_secs(2) {
                continue;
            }
            last = std::time::Instant::now();
            let done = weir_engine::RunStats::get(&self.stats.records_in).min(self.total);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / secs;
            let left = if rate > 0.0 {
                format!("{:.0}s", (self.total - done) as f64 / rate)
            } else {
                "?".into()
            };
            tracing::info!(
                "replay: {done}/{} messages ({:.0}%), {rate:.0} events/s, about {left} left",
                self.total,
                100.0 * done as f64 / self.total.max(1) as f64
            );
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
