//! The output threads: one per sink, and the dead-letter thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::channels::{CheckpointLink, DeadMsg, SinkMsg, DURABLE_EVERY, TICK};
use crate::api::{DeadLetterSink, Sink};
use crate::checkpoint::Part;
use crate::dead_letter::{DeadLetter, PartitionInfo, Reason};
use crate::progress::{ChunkResidue, Progress};
use crate::retry::{Retrier, RetryPolicy};
use crate::stats::RunStats;
use crate::time::now_ms;
use crate::EngineError;

pub(super) fn sink_error(name: &str, e: EngineError) -> EngineError {
    match e {
        EngineError::Sink { .. } => e,
        EngineError::Unavailable(inner) => sink_error(name, *inner).unavailable(),
        other => EngineError::sink(name, other),
    }
}

/// Appends the batch's `window_end` values as runs of (end, rows).
pub(super) fn window_end_runs(batch: &RecordBatch, out: &mut Vec<(i64, u64)>) {
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

/// A sink's thread: writes rows; without checkpoints, every [`DURABLE_EVERY`] flushes the
/// sink and reports how far each feeding operator's rows are durable; with checkpoints,
/// pre-commits at barriers and commits complete checkpoints.
pub(super) struct SinkThread {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) sink: Box<dyn Sink>,
    /// (operator, index of this sink among the operator's sinks).
    pub(super) feeds: Vec<(usize, usize)>,
    pub(super) stats: Arc<RunStats>,
    pub(super) progress: Arc<Progress>,
    pub(super) link: Option<CheckpointLink>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) retry: RetryPolicy,
    /// Where rows the sink refused for good go (the dead-letter thread).
    pub(super) rejects: Sender<RejectMsg>,
    /// The epoch rows belong to now (the last barrier's + 1).
    pub(super) epoch: u64,
    /// The origin of this sink's rejected rows in dead letters.
    pub(super) rejected_from: Arc<PartitionInfo>,
}

/// The two-phase-commit state of an output: the epochs it pre-committed and committed.
#[derive(Default)]
pub(super) struct Commits {
    pub(super) pre_committed: u64,
    pub(super) committed: u64,
    /// (epoch, rows written before its barrier) of the epochs pre-committed and not
    /// committed yet.
    pub(super) rows: Vec<(u64, u64)>,
}

impl Commits {
    /// The epoch to commit now, if a pre-committed one became complete.
    pub(super) fn due(&self, link: &CheckpointLink) -> Option<u64> {
        let complete = link.epochs.completed.load(Ordering::SeqCst);
        let upto = complete.min(self.pre_committed);
        (upto > self.committed).then_some(upto)
    }

    /// At the end of the input: waits until the checkpoint holding the last pre-committed
    /// rows is complete, and returns the epoch to commit.
    pub(super) fn wait_last(
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

impl SinkThread {
    pub(super) fn run(mut self, rx: Receiver<SinkMsg>) -> Result<(), EngineError> {
        let mut sent_upto: Vec<Option<(i64, Vec<u64>)>> = vec![None; self.feeds.len()];
        let mut last_flush = Instant::now();
        let mut commits = Commits::default();
        // (window end, rows) written and not acknowledged yet, for the latency histogram
        let mut unacked: Vec<(i64, u64)> = Vec::new();
        let mut pending_ack: Vec<(u64, Vec<(i64, u64)>)> = Vec::new();
        let (stats, cancel) = (self.stats.clone(), self.cancel.clone());
        let mut retrier = Retrier::new(
            &format!("sink `{}`", self.name),
            self.retry.clone(),
            &stats.sink_health[self.index],
            &cancel,
        );
        loop {
            match rx.recv_timeout(TICK) {
                Ok(SinkMsg::Rows(batch)) => {
                    let sink = &mut self.sink;
                    retrier
                        .call("write", || sink.write(&batch))
                        .map_err(|e| self.error(e))?;
                    self.forward_rejected()?;
                    RunStats::add(
                        &self.stats.rows_written[self.index].value,
                        batch.num_rows() as u64,
                    );
                    window_end_runs(&batch, &mut unacked);
                }
                Ok(SinkMsg::Upto { op, upto, covered }) => {
                    if let Some(i) = self.feeds.iter().position(|(o, _)| *o == op) {
                        sent_upto[i] = Some((upto, covered));
                    }
                }
                Ok(SinkMsg::Barrier(epoch)) => {
                    self.pre_commit(epoch, &mut commits, &mut retrier)?;
                    commits.rows.push((epoch, self.written()));
                    // rows up to the barrier become visible when its checkpoint commits
                    pending_ack.push((epoch, std::mem::take(&mut unacked)));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some(link) = &self.link {
                if let Some(epoch) = commits.due(link) {
                    let sink = &mut self.sink;
                    retrier
                        .call("commit", || sink.commit(epoch))
                        .map_err(|e| sink_error(&self.name, e))?;
                    commits.committed = epoch;
                    self.committed_rows(&mut commits);
                    self.forward_rejected()?;
                    let (acked, rest): (Vec<_>, Vec<_>) =
                        pending_ack.drain(..).partition(|(e, _)| *e <= epoch);
                    pending_ack = rest;
                    self.acknowledged(acked.into_iter().flat_map(|(_, rows)| rows));
                }
            } else if last_flush.elapsed() >= DURABLE_EVERY && sent_upto.iter().any(Option::is_some)
            {
                let sink = &mut self.sink;
                let durable = retrier
                    .call("flush", || sink.flush())
                    .map_err(|e| sink_error(&self.name, e))?;
                self.forward_rejected()?;
                if durable {
                    self.report(&mut sent_upto);
                    self.acknowledged(unacked.drain(..));
                }
                last_flush = Instant::now();
            }
        }
        if let Some(link) = &self.link {
            if let Some(epoch) = commits.wait_last(link, &self.cancel)? {
                let sink = &mut self.sink;
                retrier
                    .call("commit", || sink.commit(epoch))
                    .map_err(|e| sink_error(&self.name, e))?;
                commits.committed = epoch;
                self.committed_rows(&mut commits);
            }
        }
        let sink = &mut self.sink;
        retrier
            .call("finish", || sink.finish())
            .map_err(|e| sink_error(&self.name, e))?;
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
        self.report(&mut sent_upto);
        if self.link.is_some() {
            self.acknowledged(pending_ack.drain(..).flat_map(|(_, rows)| rows));
        } else {
            self.acknowledged(unacked.drain(..));
        }
        Ok(())
    }

    /// Rows written to the sink so far (restored with a checkpoint).
    pub(super) fn written(&self) -> u64 {
        RunStats::get(&self.stats.rows_written[self.index].value)
    }

    /// After a commit: the rows written before the committed epoch's barrier are committed.
    pub(super) fn committed_rows(&self, commits: &mut Commits) {
        let upto = commits.committed;
        if let Some(&(_, rows)) = commits.rows.iter().rev().find(|(e, _)| *e <= upto) {
            self.stats.rows_committed[self.index]
                .value
                .store(rows, Ordering::Relaxed);
        }
        commits.rows.retain(|(e, _)| *e > upto);
    }

    /// Rows the sink acknowledged now: their latency from their window's end.
    pub(super) fn acknowledged(&self, rows: impl IntoIterator<Item = (i64, u64)>) {
        let now = now_ms();
        let h = &self.stats.sink_latency[self.index];
        for (end, n) in rows {
            h.observe_n((now - end) as f64 / 1000.0, n);
        }
    }

    pub(super) fn pre_commit(
        &mut self,
        epoch: u64,
        commits: &mut Commits,
        retrier: &mut Retrier,
    ) -> Result<(), EngineError> {
        let sink = &mut self.sink;
        let info = retrier
            .call("pre-commit", || sink.pre_commit(epoch))
            .map_err(|e| sink_error(&self.name, e))?;
        commits.pre_committed = epoch;
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

    pub(super) fn report(&self, sent_upto: &mut [Option<(i64, Vec<u64>)>]) {
        for (i, upto) in sent_upto.iter_mut().enumerate() {
            if let Some((wm, covered)) = upto.take() {
                let (op, k) = self.feeds[i];
                self.progress.sink_durable(op, k, wm, covered);
            }
        }
    }

    pub(super) fn error(&self, e: EngineError) -> EngineError {
        sink_error(&self.name, e)
    }

    /// Sends the rows the sink refused since the last call to the dead-letter thread.
    pub(super) fn forward_rejected(&mut self) -> Result<(), EngineError> {
        let rows = self.sink.take_rejected();
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
}

/// The dead-letter thread: writes the workers' records and the rows sinks rejected;
/// residues of tracked chunks reach the progress tracker only after the records sent before
/// them were flushed. With checkpoints, epoch `E` is pre-committed once the workers' barrier
/// `E` arrived and every sink passed its barrier `E`, so each rejected row is in the same
/// checkpoint as the row itself (a restore neither loses nor repeats it).
pub(super) struct DeadLetterThread<'a> {
    pub(super) sink: Box<dyn DeadLetterSink>,
    pub(super) retrier: Retrier<'a>,
    pub(super) stats: &'a RunStats,
    pub(super) progress: &'a Progress,
    pub(super) link: Option<CheckpointLink>,
    pub(super) cancel: &'a AtomicBool,
    /// The epoch records belong to now.
    pub(super) epoch: u64,
    /// Per sink, the last epoch it passed.
    pub(super) passed: Vec<u64>,
    /// Rejected rows of epochs after `epoch`, written when it gets there.
    pub(super) later: std::collections::BTreeMap<u64, Vec<DeadLetter>>,
    /// The sinks are still running (the channel of their rejections is open).
    pub(super) sinks_open: bool,
}

impl DeadLetterThread<'_> {
    pub(super) fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        let sink = &mut self.sink;
        self.retrier.call("write", || sink.write(records))?;
        RunStats::add(&self.stats.dead_letters, records.len() as u64);
        Ok(())
    }

    pub(super) fn on_reject(&mut self, msg: RejectMsg) -> Result<(), EngineError> {
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
        }
    }

    /// Takes sink messages until every sink passed `epoch` (or ended).
    pub(super) fn wait_sinks(
        &mut self,
        rejects: &Receiver<RejectMsg>,
        epoch: u64,
    ) -> Result<(), EngineError> {
        while self.sinks_open && self.passed.iter().any(|&p| p < epoch) {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            match rejects.recv_timeout(TICK) {
                Ok(m) => self.on_reject(m)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.sinks_open = false,
            }
        }
        Ok(())
    }

    pub(super) fn barrier(
        &mut self,
        rejects: &Receiver<RejectMsg>,
        epoch: u64,
    ) -> Result<u64, EngineError> {
        self.wait_sinks(rejects, epoch)?;
        let sink = &mut self.sink;
        let info = self.retrier.call("pre-commit", || sink.pre_commit(epoch))?;
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
        Ok(epoch)
    }

    pub(super) fn run(
        mut self,
        rx: Receiver<DeadMsg>,
        rejects: Receiver<RejectMsg>,
    ) -> Result<(), EngineError> {
        let mut residues: Vec<ChunkResidue> = Vec::new();
        let mut last_flush = Instant::now();
        let mut commits = Commits::default();
        let mut workers_open = true;
        while workers_open || self.sinks_open {
            let mut select = crossbeam_channel::Select::new();
            let workers = workers_open.then(|| select.recv(&rx));
            let sinks = self.sinks_open.then(|| select.recv(&rejects));
            match select.select_timeout(TICK) {
                Ok(op) if Some(op.index()) == workers => match op.recv(&rx) {
                    Ok(DeadMsg::Records(records)) => self.write(&records)?,
                    Ok(DeadMsg::Residue(r)) => residues.push(r),
                    Ok(DeadMsg::Barrier(epoch)) => {
                        commits.pre_committed = self.barrier(&rejects, epoch)?;
                    }
                    Err(_) => workers_open = false,
                },
                Ok(op) if Some(op.index()) == sinks => match op.recv(&rejects) {
                    Ok(m) => self.on_reject(m)?,
                    Err(_) => self.sinks_open = false,
                },
                Ok(_) | Err(_) => {}
            }
            if self.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            if let Some(link) = &self.link {
                if let Some(epoch) = commits.due(link) {
                    let sink = &mut self.sink;
                    self.retrier.call("commit", || sink.commit(epoch))?;
                    commits.committed = epoch;
                }
            } else if !residues.is_empty() && last_flush.elapsed() >= DURABLE_EVERY {
                let sink = &mut self.sink;
                if self.retrier.call("flush", || sink.flush())? {
                    self.progress.add_residues(residues.drain(..));
                }
                last_flush = Instant::now();
            }
        }
        if let Some(link) = &self.link {
            if let Some(epoch) = commits.wait_last(link, self.cancel)? {
                let sink = &mut self.sink;
                self.retrier.call("commit", || sink.commit(epoch))?;
            }
        }
        let sink = &mut self.sink;
        self.retrier.call("finish", || sink.finish())?;
        self.progress.add_residues(residues);
        Ok(())
    }
}
