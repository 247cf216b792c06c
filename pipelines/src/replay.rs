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
    for (i, s) in plan.sources.iter_mut().enumerate() {
        let ooo = s.max_out_of_orderness_ms as i64;
        let range = (
            req.from_ms.saturating_sub(margin + ooo),
            req.to_ms.saturating_add(margin + ooo),
        );
        let replayed = s.input.replay(&s.name, range, &suffix)?;
        ranges.push((i, replayed.ranges));
    }
    let setup = ReplaySetup {
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        ranges,
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

    fn count(&self, rows: usize) {
        if let Ok(mut w) = self.written.lock() {
            *w.entry(self.name.clone()).or_default() += rows as u64;
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
    /// The rows of `batch` in the replayed range (counted), `None` when there are none.
    fn in_range(&self, batch: &RecordBatch) -> Result<Option<RecordBatch>, EngineError> {
        let Some(col) = batch.column_by_name("window_start") else {
            self.count(batch.num_rows());
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
        self.count(keep.true_count());
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
        match self.in_range(batch)? {
            Some(rows) => self.inner.write(&rows),
            None => Ok(()),
        }
    }
    fn write_output(&mut self, output: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        match self.in_range(batch)? {
            Some(rows) => self.inner.write_output(output, &rows),
            None => Ok(()),
        }
    }
    // rows the output refused (a PostgreSQL constraint, an Elasticsearch mapping) reach the
    // replay's dead letters
    fn take_rejected(&mut self) -> Vec<weir_engine::RejectedRow> {
        self.inner.take_rejected()
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
mod tests {
    use super::*;

    /// Two windows (`a` to sinks `x` and `y`, `b` to `y`) and a view over a Kafka topic,
    /// with a checkpoint and SQL, planned from YAML (nothing connects to the brokers).
    fn live_plan(name: &str) -> Plan {
        // a folder per call: tests run in parallel and several plan the same pipeline
        let dir = tempfile::Builder::new()
            .prefix(&format!("weir-replay-{name}-"))
            .tempdir()
            .expect("temp dir")
            .keep();
        let path = dir.join("p.yaml");
        let window = |name: &str, sinks: &str| {
            format!(
                "  {name}:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    \
                 aggregates: {{ n: count(*) }}\n    sinks: [{sinks}]\n"
            )
        };
        let yaml = format!(
            "name: p\nsources:\n  events:\n    kafka: {{ brokers: \"127.0.0.1:9\", topic: t, group_id: g }}\n    \
             format: json\n    schema: data-ingestion\n    event_time: {{ field: timestamp }}\n\
             windows:\n{}{}views:\n  v:\n    from: events\n    key: [datasetName]\n    \
             aggregates: {{ n: count(*) }}\n\
             sinks:\n  x: {{ file: {{ path: out/x.ndjson }} }}\n  y: {{ file: {{ path: out/y.ndjson }} }}\n\
             checkpoint: {{ dir: state }}\nserve: {{ http: \"127.0.0.1:0\" }}\n",
            window("a", "x, y"),
            window("b", "y"),
        );
        std::fs::write(&path, yaml).expect("pipeline file");
        crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn request(only: &[&str], sinks: Option<&[&str]>) -> ReplayRequest {
        ReplayRequest {
            from_ms: 60_000,
            to_ms: 180_000,
            only: only.iter().map(|s| s.to_string()).collect(),
            sinks: sinks.map(|s| s.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn windows(plan: &Plan) -> Vec<(String, Vec<String>)> {
        plan.windows
            .iter()
            .map(|w| {
                let sinks = w.sinks.iter().map(|&i| plan.sinks[i].name.clone());
                (w.config.name.clone(), sinks.collect())
            })
            .collect()
    }

    fn reduced(only: &[&str], sinks: Option<&[&str]>) -> Result<Plan, ReplayError> {
        reduce(live_plan("reduce"), &request(only, sinks))
    }

    #[test]
    fn windows_on_processing_time_are_not_replayed() {
        // window `b` (or both) on processing time
        let plan = |both: bool| {
            let mut plan = live_plan("processing");
            for w in plan.windows.iter_mut().skip(usize::from(!both)) {
                let mut c = (*w.config).clone();
                c.time = weir_operators::TimeMode::Processing;
                w.config = std::sync::Arc::new(c);
            }
            plan
        };
        let all = reduce(plan(false), &request(&[], None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(windows(&all).len(), 1, "only the event-time window");
        let asked = reduce(plan(false), &request(&["b"], None)).err();
        assert!(matches!(asked, Some(ReplayError::ProcessingTime(ref w)) if w == "b"));
        let none = reduce(plan(true), &request(&[], None)).err();
        assert!(matches!(none, Some(ReplayError::ProcessingTime(_))));
    }

    #[test]
    fn a_replay_keeps_the_windows_and_sinks_asked_for_with_state_of_its_own() {
        let all = reduced(&[], None).unwrap_or_else(|e| panic!("{e}"));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            windows(&all),
            vec![
                ("a".to_string(), names(&["x", "y"])),
                ("b".to_string(), names(&["y"]))
            ]
        );
        assert!(all.views.is_empty() && all.checkpoint.is_none() && all.serve.is_none());
        // the sinks themselves are kept (windows refer to them by index)
        assert_eq!(all.sinks.len(), 2);
        let only_a = reduced(&["a"], None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            windows(&only_a),
            vec![("a".to_string(), names(&["x", "y"]))]
        );
        let to_y = reduced(&[], Some(&["y"])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            windows(&to_y),
            vec![
                ("a".to_string(), names(&["y"])),
                ("b".to_string(), names(&["y"]))
            ]
        );
    }

    #[test]
    fn a_replay_keeps_only_the_sources_its_windows_read() {
        let dir = tempfile::Builder::new()
            .prefix("weir-replay-sources-")
            .tempdir()
            .expect("temp dir")
            .keep();
        std::fs::write(dir.join("in.ndjson"), "").expect("input file");
        let path = dir.join("p.yaml");
        std::fs::write(
            &path,
            "name: p\nsources:\n  sample:\n    file: { path: in.ndjson }\n    schema: data-ingestion\n    \
             event_time: { field: timestamp }\n  events:\n    kafka: { brokers: \"127.0.0.1:9\", topic: t, group_id: g }\n    \
             schema: data-ingestion\n    event_time: { field: timestamp }\n\
             windows:\n  from_file: { from: sample, key: [datasetName], tumbling: 1m, aggregates: { n: count(*) }, sinks: [x] }\n  \
             from_topic: { from: events, key: [datasetName], tumbling: 1m, aggregates: { n: count(*) }, sinks: [x] }\n\
             sinks:\n  x: { file: { path: out/x.ndjson } }\n",
        )
        .expect("pipeline file");
        let plan = crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // `--only from_topic`: the file is not read (it could not be replayed)
        let only = reduce(plan, &request(&["from_topic"], None)).unwrap_or_else(|e| panic!("{e}"));
        let sources: Vec<&str> = only.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(sources, vec!["events"]);
        assert_eq!(only.windows.len(), 1);
        assert_eq!(only.sources[only.windows[0].source].name, "events");
    }

    #[test]
    fn a_replay_refuses_what_it_cannot_rewrite() {
        let refused = |r: Result<Plan, ReplayError>| match r {
            Ok(_) => panic!("accepted"),
            Err(e) => {
                assert_eq!(e.kind(), weir_engine::ErrorKind::User, "{e}");
                e.to_string()
            }
        };
        let mut backwards = request(&[], None);
        backwards.to_ms = backwards.from_ms;
        let why = refused(reduce(live_plan("backwards"), &backwards));
        assert!(why.contains("--to must be after --from"), "{why}");
        let why = refused(reduced(&["v"], None));
        assert!(
            why.contains("--only v: no such window (windows: a, b)"),
            "{why}"
        );
        let why = refused(reduced(&[], Some(&["z"])));
        assert!(why.contains("--sinks z: no such sink"), "{why}");
        let why = refused(reduced(&["b"], Some(&["x"])));
        assert!(why.contains("no replayed window writes to a sink"), "{why}");
    }

    #[test]
    fn a_lookup_reads_as_its_error_and_keeps_its_kind() {
        let io = std::io::Error::other("broker down");
        let e = ReplayError::from(Lookup::new(weir_engine::ErrorKind::Retryable, io));
        assert_eq!(e.to_string(), "broker down");
        assert_eq!(e.kind(), weir_engine::ErrorKind::Retryable);
        let e = ReplayError::NotReplayable {
            source_name: "s".into(),
            kinds: "k".into(),
            plural: "ks".into(),
        };
        assert_eq!(e.kind(), weir_engine::ErrorKind::User);
    }

    #[test]
    fn a_replay_writes_beside_the_live_runs_outputs() {
        let req = request(&[], None);
        let suffix = suffix(&req);
        assert_eq!(suffix, "replay-19700101T000100Z-19700101T000300Z");
        let live = live_plan("outputs");
        let live_files: Vec<_> = live
            .sinks
            .iter()
            .map(|s| s.target.local_file().map(|p| p.to_path_buf()))
            .collect();
        let mode = Replay::new(Arc::new(ReplaySetup {
            from_ms: req.from_ms,
            to_ms: req.to_ms,
            ranges: Vec::new(),
            suffix: suffix.clone(),
            written: Default::default(),
        }));
        let plan = mode.retarget(live).unwrap_or_else(|e| panic!("{e}"));
        for (s, live) in plan.sinks.iter().zip(live_files) {
            let (file, live) = (s.target.local_file(), live.expect("a file sink"));
            let expected = live.with_extension(format!("{suffix}.ndjson"));
            assert_eq!(file, Some(expected.as_path()), "sink {}", s.name);
        }
        let dead = plan.dead_letter.local_file().expect("a dead-letter file");
        assert!(
            dead.ends_with(format!("dead_letter.{suffix}.ndjson")),
            "{}",
            dead.display()
        );
    }
    /// One partition's range, as a connector would give it.
    #[derive(Debug)]
    struct Range {
        key: &'static str,
        partition: &'static str,
        start: u64,
        end: u64,
    }

    impl ReplayRange for Range {
        fn key(&self) -> String {
            self.key.into()
        }
        fn partition(&self) -> String {
            self.partition.into()
        }
        fn start(&self) -> u64 {
            self.start
        }
        fn end(&self) -> u64 {
            self.end
        }
        fn read(&self) -> Arc<std::sync::atomic::AtomicU64> {
            Arc::default()
        }
        fn describe(&self) -> String {
            self.key.into()
        }
    }

    fn setup_with(ranges: Vec<(usize, Vec<Box<dyn ReplayRange>>)>) -> Arc<ReplaySetup> {
        Arc::new(ReplaySetup {
            from_ms: 60_000,
            to_ms: 180_000,
            ranges,
            suffix: "replay-a-b".into(),
            written: Default::default(),
        })
    }

    #[test]
    fn a_replays_ranges_are_its_sources_bounds_by_partition() {
        let range = |key, partition, start, end| {
            Box::new(Range {
                key,
                partition,
                start,
                end,
            }) as Box<dyn ReplayRange>
        };
        let setup = setup_with(vec![
            (
                0,
                vec![range("t/0", "t/0", 3, 8), range("t/1", "t/1", 0, 2)],
            ),
            (1, vec![range("s/0", "nats/s", 10, 20)]),
        ]);
        let b = |start, end| Some(ReadBounds { start, end });
        assert_eq!(setup.bounds(0, "t/0"), b(3, 8));
        assert_eq!(setup.bounds(0, "t/1"), b(0, 2));
        assert_eq!(setup.bounds(0, "t/2"), None);
        // by the partition its reader reads, not the name its progress bar shows
        assert_eq!(setup.bounds(1, "nats/s"), b(10, 20));
        assert_eq!(setup.bounds(1, "s/0"), None);
        assert_eq!(setup.bounds(2, "t/0"), None);
        assert_eq!(setup.messages(), 5 + 2 + 10);
    }

    /// What a source was opened with, per partition: start, end, and whether it stops once
    /// caught up.
    type Opened = Arc<std::sync::Mutex<Vec<(Option<u64>, Option<u64>, bool)>>>;

    /// A source recording what it is opened with (and then refusing to open).
    #[derive(Debug)]
    struct RecordingSource(Opened);

    impl crate::connectors::SourceConnector for RecordingSource {
        fn kind(&self) -> &'static str {
            "recording"
        }
        fn fingerprint(&self) -> String {
            String::new()
        }
        fn summary(&self) -> String {
            String::new()
        }
        fn describe(&self) -> String {
            String::new()
        }
        fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
            if let Ok(mut opened) = self.0.lock() {
                for key in ["t/0", "t/1"] {
                    opened.push((at.start(key), at.end(key), at.until_caught_up));
                }
            }
            Err(RunError::IncompatibleState("recorded".into()))
        }
    }

    #[test]
    fn a_replay_opens_its_sources_bounded_by_its_ranges() {
        let mut plan = live_plan("bounds");
        let opened = Opened::default();
        plan.sources[0].input = Box::new(RecordingSource(opened.clone()));
        let range = Range {
            key: "t/1",
            partition: "t/1",
            start: 5,
            end: 9,
        };
        let mode = Replay::new(setup_with(vec![(0, vec![Box::new(range)])]));
        let s = &plan.sources[0];
        // a checkpoint's resume is not where a replayed partition starts
        let resume = |_: &str| Some(weir_engine::events::Resume::at(1));
        let at = OpenSource {
            until_caught_up: false,
            ..crate::connectors::tests::opening(&plan, &resume, &crate::connectors::unbounded)
        };
        assert!(mode.open_source(s, at).is_err());
        let opened = opened.lock().map(|o| o.clone()).unwrap_or_default();
        assert_eq!(opened, vec![(None, None, true), (Some(5), Some(9), true)]);
    }

    /// Rows each write passed on.
    type Rows = Arc<std::sync::Mutex<Vec<usize>>>;

    /// A sink keeping the row count of each write.
    struct Counting(Rows);

    impl Committable for Counting {
        fn flush(&mut self) -> Result<bool, EngineError> {
            Ok(true)
        }
        fn finish(&mut self) -> Result<(), EngineError> {
            Ok(())
        }
    }

    impl Sink for Counting {
        fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
            if let Ok(mut rows) = self.0.lock() {
                rows.push(batch.num_rows());
            }
            Ok(())
        }
    }

    /// An output recording the windows it is opened to replace.
    #[derive(Debug, Clone, Default)]
    struct RecordingTarget {
        replaces: Arc<std::sync::Mutex<Option<WindowStarts>>>,
        rows: Rows,
    }

    impl crate::connectors::SinkConnector for RecordingTarget {
        fn kind(&self) -> &'static str {
            "recording"
        }
        fn fingerprint(&self) -> String {
            String::new()
        }
        fn summary(&self) -> String {
            String::new()
        }
        fn describe(&self, _checkpointed: bool) -> String {
            String::new()
        }
        fn attach(
            &mut self,
            _at: &crate::connectors::Attach,
        ) -> Result<(), crate::error::PipelineError> {
            Ok(())
        }
        fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
            if let Ok(mut r) = self.replaces.lock() {
                *r = at.replaces;
            }
            Ok(Box::new(Counting(self.rows.clone())))
        }
    }

    #[test]
    fn a_replays_sinks_replace_and_get_only_the_windows_of_its_range() {
        let mut plan = live_plan("replaces");
        let target = RecordingTarget::default();
        plan.sinks[0].target = Box::new(target.clone());
        let setup = setup_with(Vec::new());
        let mode = Replay::new(setup.clone());
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new(
                "window_start",
                arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Millisecond,
                    None,
                ),
                true,
            ),
        ]));
        let mut deliveries = Vec::new();
        let mut at = OpenSink {
            pipeline: "p",
            name: "x",
            schema: &schema,
            checkpointed: false,
            replaces: None,
            deliveries: &mut deliveries,
        };
        let mut sink = mode
            .open_sink(&plan.sinks[0], &mut at)
            .unwrap_or_else(|e| panic!("{e}"));
        let replaces = target.replaces.lock().map(|r| *r).ok().flatten();
        assert_eq!(
            replaces,
            Some(WindowStarts {
                from_ms: 60_000,
                to_ms: 180_000
            })
        );
        let starts =
            arrow::array::TimestampMillisecondArray::from(vec![0, 60_000, 120_000, 180_000]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(starts)])
            .unwrap_or_else(|e| panic!("{e}"));
        sink.write(&batch).unwrap_or_else(|e| panic!("{e}"));
        let rows = target.rows.lock().map(|r| r.clone()).unwrap_or_default();
        assert_eq!(rows, vec![2]);
        let written = setup.written.lock().map(|w| w.clone()).unwrap_or_default();
        assert_eq!(written.get("x"), Some(&2));
    }
}
