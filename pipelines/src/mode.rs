//! Run modes as strategies: a pipeline runs [`Standalone`], as a [`Replay`] of a time range
//! (`weir replay`), or as a [`PoolWorker`] of a pool (`weir run --worker`). [`select`] picks
//! the mode [`RunOptions`] ask for; [`crate::run::run`] then lets the mode retarget the plan
//! and drive it, and the job runner ([`crate::run::run_job`]) asks the mode's [`JobHooks`]
//! whatever differs between modes instead of testing which mode it is.
//!
//! - [`RunMode::retarget`] is a pure `Plan -> Plan` function: the outputs a replay writes
//!   beside the live run's, a worker's outputs tagged with its id and its state kept per
//!   partition. It opens nothing, so each is unit tested on a planned pipeline.
//! - [`RunMode::run`] drives the retargeted plan: one job restoring the plan's checkpoint, or
//!   a pool worker's sequence of jobs over the partitions it is assigned.
//! - [`JobHooks`], per job: where each source starts, how each sink is opened and wrapped,
//!   what the live (SQL) state covers and which peers SQL reaches, and what reports progress.
//!   A mode tells connectors what it changes through neutral inputs ([`OpenSource::bounds`]
//!   and `until_caught_up`, [`OpenSink::replaces`]), never which mode it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use weir_engine::job::Sink;
use weir_engine::live::LiveState;
use weir_engine::stats::{CurrentStats, RunStats};
use weir_query::{Peers, SqlServer};

use crate::connectors::{OpenSink, OpenSource, OpenedSource};
use crate::plan::{Plan, PlannedSink, PlannedSource};
use crate::run::{RunError, RunOptions, RunSummary};

pub use crate::pool::PoolWorker;
pub use crate::replay::Replay;

/// How a plan runs: how it is retargeted, and what drives its jobs.
pub trait RunMode: Send + Sync {
    /// Its name, for logs and tests (`standalone`, `replay`, `pool worker`).
    fn name(&self) -> &'static str;
    /// The plan as this mode runs it; pure (opens nothing, reads no clock or broker).
    fn retarget(&self, plan: Plan) -> Result<Plan, RunError>;
    /// Runs `plan` (as configured: the mode retargets it) until its sources end or `opts.stop`.
    fn run(&self, plan: Plan, opts: &RunOptions) -> Result<RunSummary, RunError>;
}

/// What one job asks of its mode. The defaults are a standalone run's.
pub(crate) trait JobHooks {
    /// Opens source `source`'s reader (`at.index` in the plan): where its partitions start
    /// (and, bounded, stop).
    fn open_source(
        &self,
        source: &PlannedSource,
        at: OpenSource,
    ) -> Result<OpenedSource, RunError> {
        source.input.open(&at)
    }
    /// Opens sink `sink`, wrapped in what filters or counts its rows in this mode.
    fn open_sink<'a>(
        &'a self,
        sink: &PlannedSink,
        at: &mut OpenSink<'a>,
    ) -> Result<Box<dyn Sink>, RunError> {
        sink.target.open(at)
    }
    /// What the live state (SQL, views' changes) covers: all of it, or one worker's partitions.
    fn live_scope(&self, state: LiveState) -> LiveState {
        state
    }
    /// The other workers SQL queries reach, if any.
    fn sql_peers(&self) -> Option<Arc<Peers>> {
        None
    }
    /// Starts reporting the job's progress, if this mode does.
    fn progress(&self, _stats: &Arc<RunStats>) -> Option<Reporter> {
        None
    }
    /// The repartition stages running beside the job, whose figures it shows.
    fn stages(&self) -> Vec<Arc<weir_engine::stage_stats::StageStats>> {
        Vec::new()
    }
    /// The live state and SQL server this mode keeps across its jobs, if it keeps them
    /// (else each job starts its own and stops it at its end).
    fn kept_live(&self) -> Option<&KeptLive> {
        None
    }
}

/// A live state and SQL server that outlive jobs: a pool worker's jobs end and start at every
/// rebalance, and its SQL clients, subscriptions and metrics scrapes must not notice (a
/// server stopped with its job cut every connection, and waited up to 2 s for them).
#[derive(Default)]
pub(crate) struct KeptLive(Mutex<Option<Kept>>);

struct Kept {
    state: Arc<LiveState>,
    stats: CurrentStats,
    /// Stopped when dropped.
    server: Option<SqlServer>,
}

impl KeptLive {
    /// The live state job-to-be publishes into: the one kept, now scoped as `fresh` is and
    /// showing `stats`; the first job's `fresh` itself, served by `serve`.
    pub(crate) fn for_job(
        &self,
        fresh: LiveState,
        stats: &Arc<RunStats>,
        serve: impl FnOnce(Arc<LiveState>, CurrentStats) -> Result<Option<SqlServer>, RunError>,
    ) -> Result<Arc<LiveState>, RunError> {
        let mut kept = self.0.lock().map_err(|_| {
            weir_engine::EngineError::Internal("the kept live state is poisoned".into())
        })?;
        if let Some(k) = kept.as_ref() {
            if let Some(owned) = fresh.owned() {
                k.state.set_owned(owned);
            }
            k.stats.set(stats.clone());
            return Ok(k.state.clone());
        }
        let state = Arc::new(fresh);
        state.expect_more_jobs();
        let current = CurrentStats::from(stats.clone());
        let server = serve(state.clone(), current.clone())?;
        *kept = Some(Kept {
            state: state.clone(),
            stats: current,
            server,
        });
        Ok(state)
    }

    /// The kept state, once the first job made it.
    fn state(&self) -> Option<Arc<LiveState>> {
        let kept = self.0.lock().ok()?;
        kept.as_ref().map(|k| k.state.clone())
    }

    /// A job ended: queries wait for the next one's first snapshot.
    pub(crate) fn end_job(&self) {
        if let Some(state) = self.state() {
            state.end_job();
        }
    }

    /// The last job ended without an error: its last snapshot is final, answered from if
    /// `serve` (see [`LiveState::finish`]).
    pub(crate) fn finish(&self, serve: bool) {
        if let Some(state) = self.state() {
            state.finish(serve);
        }
    }

    /// Whether a server is kept (it answers until this is dropped).
    pub(crate) fn serving(&self) -> bool {
        self.0
            .lock()
            .map(|k| k.as_ref().is_some_and(|k| k.server.is_some()))
            .unwrap_or(false)
    }
}

/// A background thread reporting progress until [`Reporter::finish`].
pub(crate) struct Reporter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Reporter {
    /// Runs `report` on its own thread, told to end through the flag it is given.
    pub(crate) fn spawn(report: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Reporter {
            stop,
            thread: std::thread::spawn(move || report(flag)),
        }
    }

    /// Tells the reporter to end (it reports once more) and waits for it.
    pub(crate) fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.thread.join().is_err() {
            tracing::warn!("the progress reporter panicked");
        }
    }
}

/// A run of the plan as configured: one job, restoring the plan's checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standalone;

impl RunMode for Standalone {
    fn name(&self) -> &'static str {
        "standalone"
    }

    fn retarget(&self, plan: Plan) -> Result<Plan, RunError> {
        Ok(plan)
    }

    fn run(&self, plan: Plan, opts: &RunOptions) -> Result<RunSummary, RunError> {
        let plan = self.retarget(plan)?;
        crate::run::run_single(&plan, opts, self)
    }
}

impl JobHooks for Standalone {}

/// The mode `opts` ask for: a replay (`opts.replay`), a pool worker (`opts.worker`), or
/// standalone. A replay runs on its own: it cannot also be a pool worker.
pub fn select(opts: &RunOptions) -> Result<Box<dyn RunMode>, RunError> {
    Ok(match (&opts.replay, &opts.worker) {
        (Some(_), Some(_)) => return Err(crate::run::PoolRefusal::Replay.into()),
        (Some(setup), None) => Box::new(Replay::new(setup.clone())),
        (None, Some(worker)) => Box::new(PoolWorker::new(worker)),
        (None, None) => Box::new(Standalone),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Arc<crate::replay::ReplaySetup> {
        Arc::new(crate::replay::ReplaySetup {
            from_ms: 0,
            to_ms: 60_000,
            ranges: Vec::new(),
            margins: Vec::new(),
            suffix: "replay-a-b".into(),
            written: Default::default(),
        })
    }

    #[test]
    fn the_options_select_the_mode() {
        let name = |opts: &RunOptions| select(opts).map(|m| m.name());
        assert_eq!(name(&RunOptions::default()).ok(), Some("standalone"));
        let replay = RunOptions {
            replay: Some(setup()),
            ..Default::default()
        };
        assert_eq!(name(&replay).ok(), Some("replay"));
        let worker = RunOptions {
            worker: Some("w1".into()),
            ..Default::default()
        };
        assert_eq!(name(&worker).ok(), Some("pool worker"));
        let both = RunOptions {
            replay: Some(setup()),
            worker: Some("w1".into()),
            ..Default::default()
        };
        match select(&both) {
            Err(e @ RunError::Pool(crate::run::PoolRefusal::Replay)) => {
                assert_eq!(e.kind(), weir_engine::ErrorKind::User);
                assert!(e.to_string().contains("cannot run as a pool worker"), "{e}");
            }
            Err(e) => panic!("{e}"),
            Ok(m) => panic!("selected {}", m.name()),
        }
    }

    #[test]
    fn a_reporter_reports_until_finished() {
        let reported = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = reported.clone();
        let r = Reporter::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            count.fetch_add(1, Ordering::Relaxed);
        });
        r.finish();
        assert_eq!(reported.load(Ordering::Relaxed), 1);
    }
}
