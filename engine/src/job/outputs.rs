//! The output threads: one per sink, and the dead-letter thread. Both follow one commit
//! lifecycle ([`run_output`]): write what arrives; without checkpoints, flush once no more
//! rows are queued (or every [`DURABLE_EVERY`]) and report what became durable; with checkpoints, pre-commit at each
//! barrier, commit each epoch once its checkpoint is complete, and at the end commit the
//! last one; then finish the output.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::channels::{
    CheckpointLink, DeadMsg, OutputGate, SinkMsg, DURABLE_EVERY, GATE_DEAD_LETTERS, TICK,
};
use crate::api::{Committable, DeadLetterSink, Sink};
use crate::checkpoint::Part;
use crate::clock::WATERMARK_END;
use crate::dead_letter::{DeadLetter, PartitionInfo, Reason};
use crate::progress::{ChunkResidue, Durable, Progress};
use crate::retry::{Retrier, RetryPolicy};
use crate::stats::RunStats;
use crate::time::now_ms;
use crate::EngineError;

fn sink_error(name: &str, e: EngineError) -> EngineError {
    match e {
        // (a fence is the pool's to act on: a worker joins again)
        EngineError::Sink { .. } | EngineError::Fenced(_) => e,
        EngineError::Unavailable(inner) => sink_error(name, *inner).unavailable(),
        EngineError::User(inner) => sink_error(name, *inner).user(),
        other => EngineError::sink_caused(name, "", other),
    }
}

/// Appends the batch's `window_end` values as runs of (end, rows).
fn window_end_runs(batch: &RecordBatch, out: &mut Vec<(i64, u64)>) {
    use arrow::array::{Array, TimestampMillisecondArray};
    let Some(ends) = batch
        .column_by_name("window_end")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
    else {
        return;
    };
    for &end in ends.values().iter() {
        match out.last_mut() {
            Some((e, n)) if *e == end => *n += 1,
            _ => out.push((end, 1)),
        }
    }
}

/// Rows a sink wrote and that are not durable yet: (window end, rows) runs, and per batch
/// of window rows (when the watermark passed its window's end, rows).
#[derive(Default)]
struct Unacked {
    ends: Vec<(i64, u64)>,
    since: Vec<(Instant, u64)>,
}

/// An output with the retrier its calls go through.
struct Output<'a, O> {
    inner: O,
    retrier: Retrier<'a>,
    /// A sink's name, which its errors are named after (the dead-letter output's errors
    /// stay as they are).
    sink: Option<String>,
}

impl<'a, O: Committable> Output<'a, O> {
    pub(super) fn new(inner: O, retrier: Retrier<'a>, sink: Option<&str>) -> Self {
        Output {
            inner,
            retrier,
            sink: sink.map(str::to_string),
        }
    }

    /// Calls the output through the retrier.
    fn call<T>(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut O) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let inner = &mut self.inner;
        let result = self.retrier.call(what, || call(inner));
        match &self.sink {
            Some(name) => result.map_err(|e| sink_error(name, e)),
            None => result,
        }
    }

    /// Pre-commits `epoch` (at its barrier) and returns what committing it needs.
    fn pre_commit(
        &mut self,
        epoch: u64,
        commits: &mut Commits,
    ) -> Result<serde_json::Value, EngineError> {
        let info = self.call("pre-commit", |o| o.pre_commit(epoch))?;
        commits.pre_committed = epoch;
        Ok(info)
    }
}

/// Before a checkpointed run writes: has the output finish the commits a crash interrupted
/// (see [`Committable::recover`]), retried as its other calls.
pub(super) fn recover<O: Committable>(
    output: O,
    retrier: Retrier<'_>,
    sink: Option<&str>,
    from: Option<(u64, &serde_json::Value)>,
) -> Result<O, EngineError> {
    let mut out = Output::new(output, retrier, sink);
    out.call("recover", |o| o.recover(from))?;
    Ok(out.inner)
}

/// How often an output waiting for a checkpoint to complete looks whether it did.
const COMMIT_POLL: Duration = Duration::from_millis(2);
/// Without checkpoints, the least time between two flushes of rows as they come, so that a
/// sink fed faster than it flushes (a replay) still writes large batches.
const FLUSH_GAP: Duration = Duration::from_millis(10);

/// The two-phase-commit state of an output: the epochs it pre-committed and committed.
#[derive(Default)]
struct Commits {
    pre_committed: u64,
    committed: u64,
    /// Without checkpoints: when rows written since the last flush may be flushed (a step
    /// waits no longer than that).
    flush_at: Option<Instant>,
}

impl Commits {
    /// How long a step may wait for input: a [`TICK`], or [`COMMIT_POLL`] while a
    /// pre-committed epoch waits for its checkpoint to complete, so that it is committed
    /// soon after (its rows become durable then).
    fn wait(&self) -> Duration {
        let wait = if self.pre_committed > self.committed {
            COMMIT_POLL
        } else {
            TICK
        };
        match self.flush_at {
            Some(at) => wait.min(at.saturating_duration_since(Instant::now())),
            None => wait,
        }
    }

    /// The epoch to commit now, if a pre-committed one became complete.
    fn due(&self, link: &CheckpointLink) -> Option<u64> {
        let complete = link.epochs.completed.load(Ordering::SeqCst);
        let upto = complete.min(self.pre_committed);
        (upto > self.committed).then_some(upto)
    }

    /// At the end of the input: waits until the checkpoint holding the last pre-committed
    /// rows is complete, and returns the epoch to commit.
    fn wait_last(
        &self,
        link: &CheckpointLink,
        cancel: &AtomicBool,
    ) -> Result<Option<u64>, EngineError> {
        while link.epochs.completed.load(Ordering::SeqCst) < self.pre_committed {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(self.due(link))
    }
}

/// What an output thread adds to the lifecycle [`run_output`] drives: the input it takes
/// and writes, and what follows a flush, a commit and the end.
trait OutputThread<'a> {
    type Output: Committable;
    fn output(&mut self) -> &mut Output<'a, Self::Output>;
    /// Takes the next input, waiting at most [`Commits::wait`], and handles it; at a barrier,
    /// pre-commits its epoch (see [`Output::pre_commit`]). `false` once the input ended.
    fn step(&mut self, commits: &mut Commits) -> Result<bool, EngineError>;
    /// Without checkpoints: whether a flush has progress to report.
    fn awaits_flush(&self) -> bool;
    /// Rows were written since the last flush.
    fn unflushed(&self) -> bool {
        false
    }
    /// No more input is queued now.
    fn idle(&self) -> bool {
        false
    }
    /// After a flush, which made everything written so far durable when `durable`.
    fn flushed(&mut self, durable: bool) -> Result<(), EngineError>;
    /// After epoch `commits.committed` was committed; `at_end` for the last commit, once the
    /// input ended.
    fn committed(&mut self, commits: &Commits, at_end: bool) -> Result<(), EngineError>;
    /// After the output finished.
    fn finished(&mut self) -> Result<(), EngineError>;
}

/// The lifecycle of an output thread: [`OutputThread::step`] until the input ends; after
/// each step, with checkpoints (`link`), commits the epoch whose checkpoint became
/// complete, and without, flushes rows written as soon as no more are queued (at most every
/// [`FLUSH_GAP`]) and every [`DURABLE_EVERY`] when there is progress to report. At the end: waits for the checkpoint of the last barrier and commits it, then
/// finishes the output.
fn run_output<'a, T: OutputThread<'a>>(
    mut thread: T,
    link: Option<&CheckpointLink>,
    cancel: &AtomicBool,
) -> Result<(), EngineError> {
    let mut commits = Commits::default();
    let mut last_flush = Instant::now();
    loop {
        commits.flush_at = (link.is_none() && thread.unflushed()).then(|| last_flush + FLUSH_GAP);
        if !thread.step(&mut commits)? {
            break;
        }
        if let Some(link) = link {
            if let Some(epoch) = commits.due(link) {
                thread.output().call("commit", |o| o.commit(epoch))?;
                commits.committed = epoch;
                thread.committed(&commits, false)?;
            }
        } else if (last_flush.elapsed() >= DURABLE_EVERY && thread.awaits_flush())
            || (thread.unflushed() && thread.idle() && last_flush.elapsed() >= FLUSH_GAP)
        {
            let durable = thread.output().call("flush", |o| o.flush())?;
            thread.flushed(durable)?;
            last_flush = Instant::now();
        }
    }
    // The input ends when the merger drops its channel: after the last row, or because the
    // run failed. A failed run finishes nothing: a file keeps its in-progress name, a table
    // gets no commit, a replay replaces no window with part of its rows.
    if cancel.load(Ordering::SeqCst) {
        return Err(EngineError::Cancelled);
    }
    if let Some(link) = link {
        if let Some(epoch) = commits.wait_last(link, cancel)? {
            thread.output().call("commit", |o| o.commit(epoch))?;
            commits.committed = epoch;
            thread.committed(&commits, true)?;
        }
    }
    thread.output().call("finish", |o| o.finish())?;
    thread.finished()
}

/// A sink's thread: writes rows; without checkpoints, every [`DURABLE_EVERY`] flushes the
/// sink and reports how far each feeding operator's rows are durable; with checkpoints,
/// pre-commits at barriers and commits complete checkpoints.
pub(super) struct SinkThread {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) sink: Box<dyn Sink>,
    /// (operator, index of this sink among the operator's sinks).
    pub(super) feeds: Vec<(usize, usize)>,
    /// The job's operators' names (the outputs rows come from), by operator index.
    pub(super) outputs: Arc<[String]>,
    pub(super) stats: Arc<RunStats>,
    pub(super) link: Option<CheckpointLink>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) retry: RetryPolicy,
    /// The dead-letter thread: where rows the sink refused for good go, and behind them how
    /// far the sink is durable ([`RejectMsg::Durable`]).
    pub(super) rejects: Sender<RejectMsg>,
    /// The epoch the first rows belong to.
    pub(super) epoch: u64,
    /// The origin of this sink's rejected rows in dead letters.
    pub(super) rejected_from: Arc<PartitionInfo>,
}

impl SinkThread {
    pub(super) fn run(self, rx: Receiver<SinkMsg>) -> Result<(), EngineError> {
        let (stats, cancel) = (self.stats.clone(), self.cancel.clone());
        let retrier = Retrier::new(
            &format!("sink `{}`", self.name),
            self.retry,
            &stats.sink_health[self.index],
            &cancel,
        );
        let out = Output::new(self.sink, retrier, Some(&self.name));
        let link = self.link.clone();
        let state = SinkState {
            sent_upto: vec![Reports::default(); self.feeds.len()],
            out,
            rx,
            index: self.index,
            name: self.name,
            feeds: self.feeds,
            outputs: self.outputs,
            stats: &stats,
            link: self.link,
            rejects: self.rejects,
            epoch: self.epoch,
            rejected_from: self.rejected_from,
            rows: Vec::new(),
            unacked: Unacked::default(),
            fresh: false,
            pending_ack: Vec::new(),
        };
        run_output(state, link.as_ref(), &cancel)
    }
}

/// A running sink thread.
struct SinkState<'a> {
    out: Output<'a, Box<dyn Sink>>,
    rx: Receiver<SinkMsg>,
    index: usize,
    name: String,
    feeds: Vec<(usize, usize)>,
    /// The operators' names, by operator index.
    outputs: Arc<[String]>,
    stats: &'a RunStats,
    link: Option<CheckpointLink>,
    rejects: Sender<RejectMsg>,
    /// The epoch rows belong to now (the last barrier's + 1).
    epoch: u64,
    rejected_from: Arc<PartitionInfo>,
    /// Per feed: how far its operator's rows were sent, since the last report.
    sent_upto: Vec<Reports>,
    /// (epoch, rows written before its barrier) of the epochs pre-committed and not
    /// committed yet.
    rows: Vec<(u64, u64)>,
    /// Rows written and not acknowledged yet, for the latency histograms.
    unacked: Unacked,
    /// Rows were written since the last flush.
    fresh: bool,
    /// Per pre-committed epoch, its rows not acknowledged yet.
    pending_ack: Vec<(u64, Unacked)>,
}

impl<'a> OutputThread<'a> for SinkState<'a> {
    type Output = Box<dyn Sink>;

    fn output(&mut self) -> &mut Output<'a, Box<dyn Sink>> {
        &mut self.out
    }

    fn step(&mut self, commits: &mut Commits) -> Result<bool, EngineError> {
        match self.rx.recv_timeout(commits.wait()) {
            Ok(SinkMsg::Rows { batch, since, op }) => {
                self.fresh = true;
                let output = self.outputs.get(op).map_or("", String::as_str);
                self.out.call("write", |s| s.write_output(output, &batch))?;
                self.forward_rejected()?;
                let rows = batch.num_rows() as u64;
                RunStats::add(&self.stats.rows_written[self.index].value, rows);
                window_end_runs(&batch, &mut self.unacked.ends);
                if let Some(t) = since {
                    self.unacked.since.push((t, rows));
                }
            }
            Ok(SinkMsg::Upto {
                op,
                upto,
                covered,
                partitions,
            }) => {
                if let Some(i) = self.feeds.iter().position(|(o, _)| *o == op) {
                    self.sent_upto[i].add(Durable {
                        watermark: upto,
                        covered,
                        partitions,
                    });
                }
            }
            Ok(SinkMsg::Barrier(epoch)) => {
                self.pre_commit(epoch, commits)?;
                self.rows.push((epoch, self.written()));
                // rows up to the barrier become visible when its checkpoint commits
                self.pending_ack
                    .push((epoch, std::mem::take(&mut self.unacked)));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(false),
        }
        Ok(true)
    }

    fn awaits_flush(&self) -> bool {
        self.sent_upto.iter().any(|r| !r.0.is_empty())
    }

    fn unflushed(&self) -> bool {
        self.fresh
    }

    fn idle(&self) -> bool {
        self.rx.is_empty()
    }

    fn flushed(&mut self, durable: bool) -> Result<(), EngineError> {
        self.fresh = false;
        self.forward_rejected()?;
        if durable {
            self.report()?;
            let rows = std::mem::take(&mut self.unacked);
            self.acknowledged([rows]);
        }
        Ok(())
    }

    fn committed(&mut self, commits: &Commits, at_end: bool) -> Result<(), EngineError> {
        self.committed_rows(commits.committed);
        if at_end {
            return Ok(());
        }
        self.forward_rejected()?;
        let epoch = commits.committed;
        let (acked, rest): (Vec<_>, Vec<_>) =
            self.pending_ack.drain(..).partition(|(e, _)| *e <= epoch);
        self.pending_ack = rest;
        self.acknowledged(acked.into_iter().map(|(_, rows)| rows));
        Ok(())
    }

    fn finished(&mut self) -> Result<(), EngineError> {
        if self.link.is_none() {
            // without checkpoints a finished sink holds every row it was given
            self.stats.rows_committed[self.index]
                .value
                .store(self.written(), Ordering::Relaxed);
        } else if self.written() > RunStats::get(&self.stats.rows_committed[self.index].value) {
            tracing::warn!(
                sink = %self.name,
                written = self.written(),
                committed = RunStats::get(&self.stats.rows_committed[self.index].value),
                "rows written after the last checkpoint are not committed; a restart from it writes them again"
            );
        }
        self.forward_rejected()?;
        self.report()?;
        if self.link.is_some() {
            let pending = std::mem::take(&mut self.pending_ack);
            self.acknowledged(pending.into_iter().map(|(_, rows)| rows));
        } else {
            let rows = std::mem::take(&mut self.unacked);
            self.acknowledged([rows]);
        }
        Ok(())
    }
}

impl SinkState<'_> {
    /// Rows written to the sink so far (restored with a checkpoint).
    fn written(&self) -> u64 {
        RunStats::get(&self.stats.rows_written[self.index].value)
    }

    /// After a commit of epoch `upto`: the rows written before its barrier are committed.
    fn committed_rows(&mut self, upto: u64) {
        if let Some(&(_, rows)) = self.rows.iter().rev().find(|(e, _)| *e <= upto) {
            self.stats.rows_committed[self.index]
                .value
                .store(rows, Ordering::Relaxed);
        }
        self.rows.retain(|(e, _)| *e > upto);
    }

    /// Rows the sink acknowledged now: their latency from their window's end, and from the
    /// watermark passing it.
    fn acknowledged(&self, rows: impl IntoIterator<Item = Unacked>) {
        let (now, at) = (now_ms(), Instant::now());
        let from_end = &self.stats.sink_latency[self.index];
        let from_watermark = &self.stats.window_durable_latency[self.index];
        for group in rows {
            for (end, n) in group.ends {
                from_end.observe_n((now - end) as f64 / 1000.0, n);
            }
            for (t, n) in group.since {
                from_watermark.observe_n(at.duration_since(t).as_secs_f64(), n);
            }
        }
    }

    fn pre_commit(&mut self, epoch: u64, commits: &mut Commits) -> Result<(), EngineError> {
        let info = self.out.pre_commit(epoch, commits)?;
        // the epoch's rejected rows, then the word that there are no more of them
        self.forward_rejected()?;
        self.rejects
            .send(RejectMsg::Passed {
                sink: self.index,
                epoch,
            })
            .map_err(|_| EngineError::Cancelled)?;
        self.epoch = epoch + 1;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
        link.parts
            .send(Part::Sink {
                epoch,
                name: self.name.clone(),
                info,
                counters: vec![(
                    format!("rows_written/{}", self.name),
                    RunStats::get(&self.stats.rows_written[self.index].value),
                )],
            })
            .map_err(|_| EngineError::Cancelled)
    }

    /// Tells the progress tracker, through the dead-letter thread, how far each feeding
    /// operator's rows are durable.
    fn report(&mut self) -> Result<(), EngineError> {
        for (i, upto) in self.sent_upto.iter_mut().enumerate() {
            for durable in std::mem::take(&mut upto.0) {
                let (operator, sink) = self.feeds[i];
                // through the dead-letter thread, behind the rows this sink refused: the
                // offsets of those rows are not committed before their dead letters are
                // durable
                self.rejects
                    .send(RejectMsg::Durable {
                        operator,
                        sink,
                        durable,
                    })
                    .map_err(|_| EngineError::Cancelled)?;
            }
        }
        Ok(())
    }

    /// Sends the rows the sink refused since the last call to the dead-letter thread.
    fn forward_rejected(&mut self) -> Result<(), EngineError> {
        let rows = self.out.inner.take_rejected();
        if rows.is_empty() {
            return Ok(());
        }
        let health = &self.stats.sink_health[self.index];
        health
            .rejected
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        tracing::warn!(sink = %self.name, rows = rows.len(), first_error = %rows[0].error.message, "rows refused by the sink go to the dead-letter output");
        let records = rows
            .into_iter()
            .map(|r| DeadLetter {
                partition: self.rejected_from.clone(),
                offset: None,
                reason: Reason::Rejected,
                error: r.error,
                raw: Some(r.raw),
                trace: Default::default(),
            })
            .collect();
        self.rejects
            .send(RejectMsg::Rows {
                epoch: self.epoch,
                records,
            })
            .map_err(|_| EngineError::Cancelled)
    }
}

/// What sinks send the dead-letter thread.
pub(super) enum RejectMsg {
    /// Rows a sink refused for good, written in its epoch `epoch`.
    Rows {
        epoch: u64,
        records: Vec<DeadLetter>,
    },
    /// Sink `sink` pre-committed `epoch`: it sent every rejection of its rows up to it.
    Passed { sink: usize, epoch: u64 },
    /// The `sink`-th sink of operator `operator` durably holds what `durable` says (for the
    /// progress tracker once the rows it refused before are durable dead letters).
    Durable {
        operator: usize,
        sink: usize,
        durable: Durable,
    },
}

/// The dead-letter thread: writes the workers' records and the rows sinks rejected;
/// residues of tracked chunks reach the progress tracker only after the records sent before
/// them were flushed. With checkpoints, epoch `E` is pre-committed once the workers' barrier
/// `E` arrived and every sink passed its barrier `E`, so each rejected row is in the same
/// checkpoint as the row itself (a restore neither loses nor repeats it). Until the sinks
/// passed it, the workers' later messages are held (past [`HOLD_FREELY`] of them, with the
/// readers' gate closed), so that a sink that does not take rows does not stop the workers
/// from reaching live barriers.
pub(super) struct DeadLetterThread {
    pub(super) sink: Box<dyn DeadLetterSink>,
    pub(super) retry: RetryPolicy,
    pub(super) stats: Arc<RunStats>,
    pub(super) progress: Arc<Progress>,
    pub(super) link: Option<CheckpointLink>,
    pub(super) cancel: Arc<AtomicBool>,
    /// The epoch the first records belong to.
    pub(super) epoch: u64,
    /// How many sinks send their rejected rows.
    pub(super) sinks: usize,
    /// Closed while too many of the workers' messages wait for the sinks.
    pub(super) gate: Arc<OutputGate>,
}

impl DeadLetterThread {
    pub(super) fn run(
        self,
        rx: Receiver<DeadMsg>,
        rejects: Receiver<RejectMsg>,
    ) -> Result<(), EngineError> {
        let (stats, cancel) = (self.stats, self.cancel);
        let retrier = Retrier::new(
            "dead-letter output",
            self.retry,
            &stats.dead_letter_health,
            &cancel,
        );
        let link = self.link.clone();
        let state = DeadLetterState {
            out: Output::new(self.sink, retrier, None),
            rx,
            rejects,
            stats: &stats,
            progress: &self.progress,
            link: self.link,
            cancel: &cancel,
            epoch: self.epoch,
            passed: vec![self.epoch - 1; self.sinks],
            later: BTreeMap::new(),
            workers_open: true,
            sinks_open: true,
            residues: Vec::new(),
            durables: BTreeMap::new(),
            fresh_durable: false,
            waiting: None,
            held: VecDeque::new(),
            gate: self.gate,
        };
        run_output(state, link.as_ref(), &cancel)
    }
}

/// A running dead-letter thread.
struct DeadLetterState<'a> {
    out: Output<'a, Box<dyn DeadLetterSink>>,
    rx: Receiver<DeadMsg>,
    rejects: Receiver<RejectMsg>,
    stats: &'a RunStats,
    progress: &'a Progress,
    link: Option<CheckpointLink>,
    cancel: &'a AtomicBool,
    /// The epoch records belong to now.
    epoch: u64,
    /// Per sink, the last epoch it passed.
    passed: Vec<u64>,
    /// Rejected rows of epochs after `epoch`, written when it gets there.
    later: BTreeMap<u64, Vec<DeadLetter>>,
    /// The workers are still running (the channel of their records is open).
    workers_open: bool,
    /// The sinks are still running (the channel of their rejections is open).
    sinks_open: bool,
    /// Residues of tracked chunks, for the progress tracker once flushed.
    residues: Vec<ChunkResidue>,
    /// Sinks' reports of what they hold durably, by (operator, its sink), for the progress
    /// tracker once the rows they refused before are flushed.
    durables: BTreeMap<(usize, usize), Reports>,
    /// A sink's report came since the last flush.
    fresh_durable: bool,
    /// The workers' barrier waiting for every sink to pass it.
    waiting: Option<u64>,
    /// The workers' messages after the barrier `waiting`, in order.
    held: VecDeque<DeadMsg>,
    gate: Arc<OutputGate>,
}

/// The workers' messages the dead-letter thread holds while it waits for the sinks before
/// it closes the readers' gate: as many as its channel holds.
const HOLD_FREELY: usize = 64;

impl<'a> OutputThread<'a> for DeadLetterState<'a> {
    type Output = Box<dyn DeadLetterSink>;

    fn output(&mut self) -> &mut Output<'a, Box<dyn DeadLetterSink>> {
        &mut self.out
    }

    fn step(&mut self, commits: &mut Commits) -> Result<bool, EngineError> {
        if !self.workers_open && !self.sinks_open && self.waiting.is_none() {
            return Ok(false);
        }
        // received first, handled after: the selection borrows the channels
        let (from_workers, from_sinks) = {
            let mut select = crossbeam_channel::Select::new();
            let workers = self.workers_open.then(|| select.recv(&self.rx));
            let sinks = self.sinks_open.then(|| select.recv(&self.rejects));
            match select.select_timeout(commits.wait()) {
                Ok(op) if Some(op.index()) == workers => (Some(op.recv(&self.rx)), None),
                Ok(op) if Some(op.index()) == sinks => (None, Some(op.recv(&self.rejects))),
                Ok(_) | Err(_) => (None, None),
            }
        };
        match from_workers {
            Some(Ok(msg)) => self.on_worker_msg(msg, commits)?,
            Some(Err(_)) => self.workers_open = false,
            None => {}
        }
        match from_sinks {
            Some(Ok(m)) => self.on_reject(m)?,
            Some(Err(_)) => self.sinks_open = false,
            None => {}
        }
        self.resume(commits)?;
        if self.cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        Ok(true)
    }

    fn awaits_flush(&self) -> bool {
        !self.residues.is_empty() || !self.durables.is_empty()
    }

    // A sink's report is passed on at the next lull, as the sink flushed its rows, not at the
    // next progress report: else it reached the offsets twice as late (a partition given up
    // is committed once its offsets stop moving, see the Kafka source's `settle`).
    fn unflushed(&self) -> bool {
        self.fresh_durable
    }

    fn idle(&self) -> bool {
        self.rx.is_empty() && self.rejects.is_empty()
    }

    fn flushed(&mut self, durable: bool) -> Result<(), EngineError> {
        self.fresh_durable = false;
        if durable {
            self.report_durable();
        }
        Ok(())
    }

    fn committed(&mut self, _commits: &Commits, _at_end: bool) -> Result<(), EngineError> {
        Ok(())
    }

    fn finished(&mut self) -> Result<(), EngineError> {
        self.report_durable();
        Ok(())
    }
}

/// Reports of how far a sink holds an operator's rows durably, not handed on yet: of those
/// that reach the end of the input at the same places, the last (it says all the earlier
/// ones did, and more); one that reaches it at more places follows the one before, which
/// keeps how far windows were durable before the end (the floors, see
/// `crate::reread::Floors::durable`).
#[derive(Debug, Clone, Default)]
struct Reports(Vec<Durable>);

impl Reports {
    fn add(&mut self, durable: Durable) {
        match self.0.last_mut() {
            Some(last) if ends_alike(last, &durable) => *last = durable,
            _ => self.0.push(durable),
        }
    }
}

/// Whether two reports of a sink reach the end of the input (every window emitted at once)
/// at the same places: overall, and partition by partition.
fn ends_alike(a: &Durable, b: &Durable) -> bool {
    let end = |w: &i64| *w == WATERMARK_END;
    let parts_alike = match (&a.partitions, &b.partitions) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| end(p) == end(q))
        }
        _ => false,
    };
    end(&a.watermark) == end(&b.watermark) && parts_alike
}

impl DeadLetterState<'_> {
    /// Hands the progress tracker what waited for the dead letters before it to be durable:
    /// the sinks' reports first (a residue's windows count as durable only by them).
    fn report_durable(&mut self) {
        for ((operator, sink), reports) in std::mem::take(&mut self.durables) {
            for durable in reports.0 {
                self.progress.sink_durable(operator, sink, durable);
            }
        }
        self.progress.add_residues(self.residues.drain(..));
    }

    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        self.out.call("write", |s| s.write(records))?;
        RunStats::add(&self.stats.dead_letters, records.len() as u64);
        self.stats
            .recent_dead_letters
            .push(records, crate::time::now_ms());
        Ok(())
    }

    fn on_reject(&mut self, msg: RejectMsg) -> Result<(), EngineError> {
        match msg {
            RejectMsg::Rows { epoch, records } if epoch <= self.epoch => self.write(&records),
            RejectMsg::Rows { epoch, records } => {
                self.later.entry(epoch).or_default().extend(records);
                Ok(())
            }
            RejectMsg::Passed { sink, epoch } => {
                if let Some(p) = self.passed.get_mut(sink) {
                    *p = (*p).max(epoch);
                }
                Ok(())
            }
            RejectMsg::Durable {
                operator,
                sink,
                durable,
            } => {
                self.durables
                    .entry((operator, sink))
                    .or_default()
                    .add(durable);
                self.fresh_durable = true;
                Ok(())
            }
        }
    }

    /// Handles a worker's message, or holds it while a barrier waits for the sinks.
    fn on_worker_msg(&mut self, msg: DeadMsg, commits: &mut Commits) -> Result<(), EngineError> {
        if self.waiting.is_some() {
            self.held.push_back(msg);
            if self.held.len() > HOLD_FREELY {
                self.gate.close(GATE_DEAD_LETTERS);
            }
            return Ok(());
        }
        match msg {
            DeadMsg::Records(records) => self.write(&records),
            DeadMsg::Residue(r) => {
                self.residues.push(r);
                Ok(())
            }
            DeadMsg::Barrier(epoch) if self.sinks_passed(epoch) => self.barrier(epoch, commits),
            DeadMsg::Barrier(epoch) => {
                self.waiting = Some(epoch);
                Ok(())
            }
        }
    }

    /// Every sink passed `epoch` (or the sinks ended).
    fn sinks_passed(&self, epoch: u64) -> bool {
        !self.sinks_open || self.passed.iter().all(|&p| p >= epoch)
    }

    /// Once the sinks passed the barrier waiting: pre-commits it, then handles the messages
    /// held after it (up to the next barrier the sinks did not pass yet).
    fn resume(&mut self, commits: &mut Commits) -> Result<(), EngineError> {
        while let Some(epoch) = self.waiting {
            if !self.sinks_passed(epoch) {
                return Ok(());
            }
            self.waiting = None;
            self.barrier(epoch, commits)?;
            while self.waiting.is_none() {
                let Some(msg) = self.held.pop_front() else {
                    break;
                };
                self.on_worker_msg(msg, commits)?;
            }
        }
        self.gate.open(GATE_DEAD_LETTERS);
        Ok(())
    }

    /// At the workers' barrier `epoch`, once every sink passed it: pre-commits it, then
    /// writes the rows rejected in the next epoch that arrived early.
    fn barrier(&mut self, epoch: u64, commits: &mut Commits) -> Result<(), EngineError> {
        let info = self.out.pre_commit(epoch, commits)?;
        let link = self
            .link
            .as_ref()
            .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
        link.parts
            .send(Part::DeadLetter {
                epoch,
                info,
                counters: vec![(
                    "dead_letters".to_string(),
                    RunStats::get(&self.stats.dead_letters),
                )],
            })
            .map_err(|_| EngineError::Cancelled)?;
        self.epoch = epoch + 1;
        let due: Vec<u64> = self.later.range(..=self.epoch).map(|(e, _)| *e).collect();
        for e in due {
            if let Some(records) = self.later.remove(&e) {
                self.write(&records)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod sink_error_tests {
    use super::*;

    #[test]
    fn a_fenced_sink_stays_fenced_so_that_a_pool_worker_joins_again() {
        let e = sink_error("out", EngineError::Fenced("another instance".into()));
        assert!(matches!(e, EngineError::Fenced(_)), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Fenced);
        let other = sink_error("out", EngineError::Internal("x".into()));
        assert!(matches!(other, EngineError::Sink { .. }), "{other}");
    }
}
