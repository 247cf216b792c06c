//! The threads that start barriers: the checkpoint coordinator (which also gathers each
//! checkpoint's parts and writes it) and the live-barrier clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::channels::{send_barrier, Dispatcher, Failure, WorkerMsg, LIVE_POLL};
use crate::checkpoint::{
    collect_garbage, CheckpointSpec, Epochs, Part, Pending, RetainedFile, Staged,
};
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use crate::stats::RunStats;
use crate::time::now_ms;
use crate::EngineError;

/// Starts checkpoints every interval, gathers their parts, writes them and tells the
/// outputs to commit.
pub(super) struct Coordinator {
    pub(super) spec: CheckpointSpec,
    pub(super) dispatcher: Arc<Mutex<Dispatcher>>,
    pub(super) parts: Receiver<Part>,
    /// Parts per checkpoint: workers, worker 0's clocks, the merger, sinks, dead letters.
    pub(super) expected: usize,
    pub(super) epochs: Arc<Epochs>,
    pub(super) progress: Arc<Progress>,
    pub(super) stats: Arc<RunStats>,
    pub(super) operator_names: Vec<String>,
    pub(super) partition_keys: Vec<(String, String)>,
    pub(super) epoch: u64,
    /// A reader gives its partitions up: take the final checkpoint now.
    pub(super) handover: Arc<AtomicBool>,
    /// The job was asked to stop (a signal, a hand-over): its input did not end.
    pub(super) stop: Arc<AtomicBool>,
    /// Per operator: the files of emitted windows the last checkpoint kept for SQL.
    pub(super) retained: Vec<Vec<RetainedFile>>,
}

impl Coordinator {
    pub(super) fn run(mut self, failure: &Failure) -> Result<(), EngineError> {
        let mut next_at = Instant::now() + self.spec.interval;
        let mut pending: Option<Pending> = None;
        // after windows: look for emitted windows often, a checkpoint starts right after them
        let poll = Duration::from_millis(if self.spec.after_windows { 2 } else { 20 });
        loop {
            if failure.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            match self.parts.recv_timeout(poll) {
                Ok(part) => {
                    let p = pending.as_mut().ok_or_else(|| {
                        EngineError::Internal("a checkpoint part arrived unasked".into())
                    })?;
                    if p.add(part)? {
                        let done = pending.take().expect("pending");
                        let last = done.final_;
                        self.complete(done, failure)?;
                        if last {
                            return Ok(());
                        }
                        next_at = Instant::now() + self.spec.interval;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
            if pending.is_some() {
                continue;
            }
            let readers_done = self
                .dispatcher
                .lock()
                .map(|d| d.readers_left == 0)
                .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
            let handover = self.handover.load(Ordering::SeqCst);
            if handover {
                tracing::info!(epoch = self.epoch + 1, "hand-over checkpoint");
            }
            let emitted = self.spec.after_windows
                && self.epochs.windows_emitted.swap(false, Ordering::SeqCst);
            if readers_done || handover || emitted || Instant::now() >= next_at {
                pending = Some(self.trigger(readers_done || handover, failure)?);
            }
        }
    }

    /// Puts a barrier into every worker's queue at one point of the chunk order.
    fn trigger(&mut self, last: bool, failure: &Failure) -> Result<Pending, EngineError> {
        let _span = tracing::info_span!("checkpoint_barrier", epoch = self.epoch + 1).entered();
        let mut d = self
            .dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        self.epoch += 1;
        let epoch = self.epoch;
        if last && d.readers_left == 0 && !self.stop.load(Ordering::SeqCst) {
            // every source ended: the windows its end closes go into this checkpoint
            self.epochs.end_of_input.store(epoch, Ordering::SeqCst);
        }
        send_barrier(&d, WorkerMsg::Barrier, epoch, failure)?;
        if last {
            // the final checkpoint: the workers' input ends after it
            d.senders.clear();
        }
        let cut = self
            .partition_keys
            .iter()
            .zip(&d.cut)
            .map(|((s, k), r)| (s.clone(), k.clone(), *r))
            .collect();
        tracing::debug!(epoch, last, "checkpoint started");
        let mut pending = Pending::new(epoch, last, cut, self.expected);
        pending.lanes = d.lane_cut.clone();
        pending.retained_before = self.retained.clone();
        Ok(pending)
    }

    fn complete(&mut self, pending: Pending, failure: &Failure) -> Result<(), EngineError> {
        let _span = tracing::info_span!("checkpoint", epoch = self.epoch).entered();
        let started = pending.started;
        let staged = pending.stage(&self.spec, &self.operator_names)?;
        self.store_retrying(&staged, failure)?;
        let manifest = staged.manifest;
        self.retained = manifest
            .operators
            .iter()
            .map(|o| o.retained.clone())
            .collect();
        self.epochs
            .completed
            .store(manifest.epoch, Ordering::SeqCst);
        for (id, (source, key)) in self.partition_keys.iter().enumerate() {
            if let Some(r) = manifest.resume(source, key) {
                self.progress.record_checkpoint(id, r.next_offset);
            }
        }
        let took = started.elapsed();
        let rows: u64 = manifest.operators.iter().map(|o| o.rows).sum();
        let c = &self.stats.checkpoints;
        c.completed.fetch_add(1, Ordering::Relaxed);
        c.last_epoch.store(manifest.epoch, Ordering::Relaxed);
        c.last_duration_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
        c.last_bytes.store(manifest.state_bytes, Ordering::Relaxed);
        c.last_rows.store(rows, Ordering::Relaxed);
        c.last_completed_ms
            .store(now_ms().max(0) as u64, Ordering::Relaxed);
        tracing::info!(
            epoch = manifest.epoch,
            duration_ms = took.as_millis() as u64,
            state_rows = rows,
            state_bytes = manifest.state_bytes,
            "checkpoint complete"
        );
        // an older checkpoint left in place costs only room: the next collection takes it
        if let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e.chain(), "cannot delete older checkpoints; the next checkpoint tries again");
        }
        Ok(())
    }

    fn collect_garbage(&self) -> Result<(), EngineError> {
        let claimed = match &self.spec.ownership {
            Some(o) => o.fencing.claimed_epochs()?,
            None => Default::default(),
        };
        collect_garbage(
            &self.spec.store,
            self.spec.keep,
            self.spec.ownership.is_some(),
            &claimed,
        )
    }

    /// Stores `staged`, again while the store fails (a full disk, a folder or bucket that
    /// does not answer), with the outputs' backoff ([`RetryPolicy`]'s default, 1 s doubling
    /// to 16 s), until it is stored, the job is stopped or fails, or the store has failed
    /// for [`crate::checkpoint::store_timeout`] (ten minutes: then the run fails, as it
    /// would at once before). Its parts are held in memory meanwhile, and the same writes
    /// are made again; processing goes on, and the outputs commit nothing past the last
    /// stored checkpoint. Other errors (a pool worker fenced, a store refusing this
    /// process's rights, a broken invariant) end the job at once.
    fn store_retrying(&self, staged: &Staged, failure: &Failure) -> Result<(), EngineError> {
        let policy = RetryPolicy::default();
        let timeout = crate::checkpoint::store_timeout();
        let first_failure = Instant::now();
        let mut retry = 0u32;
        loop {
            let e = match staged.store(&self.spec) {
                Ok(()) => {
                    if retry > 0 {
                        tracing::info!(
                            epoch = staged.manifest.epoch,
                            attempts = retry + 1,
                            "checkpoint stored after the store failed"
                        );
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if !matches!(e, EngineError::Checkpoint { .. })
                || crate::checkpoint::refused_for_good(&e)
                || first_failure.elapsed() >= timeout
            {
                return Err(e);
            }
            if self.stop.load(Ordering::SeqCst) {
                // stopping (a signal, a hand-over): the run ends with the error, which
                // says that its last checkpoint is not stored
                return Err(e);
            }
            self.stats
                .checkpoints
                .store_failures
                .fetch_add(1, Ordering::Relaxed);
            let wait = policy.backoff(retry);
            tracing::error!(
                epoch = staged.manifest.epoch,
                error = %e.chain(),
                retry_in_ms = wait.as_millis() as u64,
                "cannot store the checkpoint; trying again (outputs commit nothing meanwhile)"
            );
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if failure.cancel.load(Ordering::Relaxed) {
                    return Err(EngineError::Cancelled);
                }
                if self.stop.load(Ordering::SeqCst) {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            retry = retry.saturating_add(1);
        }
    }
}

/// Starts a live barrier every `interval` until the workers' input ends.
pub(super) fn live_barriers(
    dispatcher: &Mutex<Dispatcher>,
    interval: Duration,
    failure: &Failure,
) -> Result<(), EngineError> {
    let mut seq = 0;
    // the first snapshot at once: a restored state is refused to queries until it shows
    let mut first = true;
    let input_ended = || -> Result<bool, EngineError> {
        let d = dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        Ok(d.senders.is_empty())
    };
    loop {
        // the input's end is noticed within LIVE_POLL: the run must not wait out an interval
        let due = Instant::now()
            + if std::mem::take(&mut first) {
                Duration::ZERO
            } else {
                interval
            };
        loop {
            if failure.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            if input_ended()? {
                return Ok(());
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep(LIVE_POLL.min(due - now));
        }
        let d = dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        if d.senders.is_empty() {
            return Ok(());
        }
        seq += 1;
        send_barrier(&d, WorkerMsg::Live, seq, failure)?;
    }
}
