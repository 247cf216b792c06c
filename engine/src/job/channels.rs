//! What the stages of a job share: the messages on the channels between them, the
//! dispatcher that feeds the workers, the checkpoint link and the failure state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{SendTimeoutError, Sender};

use crate::checkpoint::{Epochs, Part, Rendezvous};
use crate::clock::{Clocks, WATERMARK_END, WATERMARK_MIN};
use crate::dead_letter::DeadLetter;
use crate::events::{Chunk, Resume};
use crate::progress::ChunkResidue;
use crate::types::{PartialWindow, PartitionFlush};
use crate::EngineError;

pub(super) const WORKER_QUEUE: usize = 4;
pub(super) const TICK: Duration = Duration::from_millis(100);
/// How soon the live-barrier thread notices that the input ended.
pub(super) const LIVE_POLL: Duration = Duration::from_millis(10);
/// How long a thread that found a channel closed waits for the error of the thread that
/// closed it (see [`Failure::closed`]).
const CLOSED_GRACE: Duration = Duration::from_millis(500);
/// How often outputs are flushed to report progress to committing readers.
pub(super) const DURABLE_EVERY: Duration = Duration::from_millis(200);

/// What the merger sends a sink thread.
pub(super) enum SinkMsg {
    /// Rows of operator `op`, with the moment the watermark passed their window's end
    /// (window rows; `None` for views' changes).
    Rows {
        batch: RecordBatch,
        since: Option<Instant>,
        op: usize,
    },
    /// Operator `op`'s windows up to `upto` were all sent, with every worker's hand-overs up
    /// to `covered[worker]`; for an operator whose windows close per partition, each
    /// partition's windows up to `partitions[partition id]`.
    Upto {
        op: usize,
        upto: i64,
        covered: Vec<u64>,
        partitions: Option<Arc<Vec<i64>>>,
    },
    /// Checkpoint barrier: every row before it belongs to the checkpoint.
    Barrier(u64),
}

/// What workers send the dead-letter thread.
pub(super) enum DeadMsg {
    Records(Vec<DeadLetter>),
    /// A tracked chunk was handled; its dead letters were sent before.
    Residue(ChunkResidue),
    /// Checkpoint barrier: every record before it belongs to the checkpoint.
    Barrier(u64),
}

/// What readers send workers. Barriers are rare and chunks the common case: boxing chunks
/// to make the variants the same size would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum WorkerMsg {
    /// A chunk, with when its reader took it from the source.
    Chunk(Chunk, Instant),
    /// Checkpoint barrier, at the same point of the chunk order in every worker's queue.
    Barrier(u64),
    /// Live barrier (a snapshot for SQL readers), placed as checkpoint barriers are.
    Live(u64),
}

/// What workers send the merger.
pub(super) enum MergeInput {
    Handover(MergeMsg),
    /// Checkpoint barrier: every worker's hand-overs before it belong to the checkpoint.
    Barrier(u64),
    /// A worker's copy of its open state at live barrier `seq`, per operator.
    LivePart {
        seq: u64,
        ops: Vec<(usize, Vec<PartialWindow>)>,
        /// The chunks the worker handled since the last live barrier, whose changes the
        /// snapshot shows first.
        arrivals: Vec<Arrival>,
    },
    /// Live barrier `seq`: every worker's hand-overs and live parts before it belong to the
    /// snapshot; with the counters and partition clocks at the barrier.
    Live {
        seq: u64,
        counters: Vec<(String, u64)>,
        clocks: Vec<ClockRow>,
    },
}

/// A chunk a worker handled: (source index, when its reader took it, records).
pub(super) type Arrival = (usize, Instant, u64);

/// Spreads chunks over the workers, and records where each partition continues after the
/// chunks dispatched so far: a barrier sent under the same lock cuts the chunk order there.
pub(super) struct Dispatcher {
    pub(super) next: usize,
    pub(super) senders: Vec<Sender<WorkerMsg>>,
    /// Per global partition: where it continues after its last dispatched chunk.
    pub(super) cut: Vec<Option<Resume>>,
    /// Per global partition with lanes (a repartition topic's): each lane's next upstream
    /// offset after its last dispatched chunk (the chunk's `resume.position`).
    pub(super) lane_cut: HashMap<usize, Vec<u64>>,
    pub(super) readers_left: usize,
    /// The coordinator ends the workers' input itself, after the final barrier.
    pub(super) checkpointing: bool,
}

/// What the threads taking part in checkpoints share.
#[derive(Clone)]
pub(super) struct CheckpointLink {
    pub(super) parts: Sender<Part>,
    pub(super) epochs: Arc<Epochs>,
    pub(super) rendezvous: Arc<Rendezvous>,
}

pub(super) struct MergeMsg {
    /// The worker's hand-overs of this operator so far, this one included.
    pub(super) seq: u64,
    pub(super) operator: usize,
    pub(super) worker: usize,
    pub(super) partials: Vec<PartialWindow>,
    pub(super) upto: i64,
    /// Of an operator whose windows close per partition: what was handed over of each
    /// partition whose closing watermark rose.
    pub(super) partitions: Vec<PartitionFlush>,
}

/// Closed while an output stage holds more messages than its channel's worth because an
/// output cannot take them: the merger for a sink without room (see
/// [`super::outbox::SinkOutbox`]), the dead-letter thread while it waits for the sinks to pass
/// a checkpoint barrier. Readers dispatch no new chunk until it opens again, so what is held
/// stays bounded by what was in flight, while barriers still pass (live snapshots are
/// published, checkpoints start and wait for the sink).
#[derive(Default)]
pub(super) struct OutputGate {
    /// One bit per stage holding it closed ([`GATE_MERGER`], [`GATE_DEAD_LETTERS`]).
    closed: AtomicU8,
    lock: Mutex<()>,
    opened: Condvar,
}

/// The merger's bit of the [`OutputGate`].
pub(super) const GATE_MERGER: u8 = 1;
/// The dead-letter thread's bit of the [`OutputGate`].
pub(super) const GATE_DEAD_LETTERS: u8 = 2;

impl OutputGate {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) != 0
    }

    /// Stage `by` holds the gate closed.
    pub(super) fn close(&self, by: u8) {
        if self.closed.load(Ordering::Acquire) & by == 0 {
            self.closed.fetch_or(by, Ordering::AcqRel);
        }
    }

    /// Stage `by` no longer holds the gate closed: once no stage does, the readers waiting at
    /// it go on.
    pub(super) fn open(&self, by: u8) {
        if self.closed.load(Ordering::Acquire) & by == 0 {
            return;
        }
        if self.closed.fetch_and(!by, Ordering::AcqRel) == by {
            let _g = self.lock.lock();
            self.opened.notify_all();
        }
    }

    /// Waits at most `timeout` for the gate to open.
    pub(super) fn wait(&self, timeout: Duration) {
        let Ok(g) = self.lock.lock() else {
            return;
        };
        if self.is_closed() {
            let _ = self.opened.wait_timeout(g, timeout);
        }
    }
}

/// Shared failure state: the first error stops everything.
#[derive(Clone)]
pub(super) struct Failure {
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) first: Arc<Mutex<Option<EngineError>>>,
}

impl Failure {
    pub(super) fn new() -> Self {
        Failure {
            cancel: Arc::new(AtomicBool::new(false)),
            first: Arc::new(Mutex::new(None)),
        }
    }
    fn record(&self, e: EngineError) {
        self.cancel.store(true, Ordering::SeqCst);
        if matches!(e, EngineError::Cancelled) {
            return;
        }
        if let Ok(mut f) = self.first.lock() {
            if f.is_none() {
                *f = Some(e);
            }
        }
    }
    /// The error of a thread that found `what` gone: [`EngineError::Cancelled`] when the run
    /// failed (whatever failed records its own error), else an internal error.
    pub(super) fn closed(&self, what: &str) -> EngineError {
        // a thread that fails drops its channels just before it records its error: give it
        // that moment, so that the run reports the error and not this consequence of it
        let deadline = Instant::now() + CLOSED_GRACE;
        while !self.cancel.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.cancel.load(Ordering::SeqCst) {
            EngineError::Cancelled
        } else {
            EngineError::Internal(format!("{what} stopped unexpectedly"))
        }
    }
}

pub(super) fn spawn<F>(name: String, failure: &Failure, f: F) -> Result<JoinHandle<()>, EngineError>
where
    F: FnOnce() -> Result<(), EngineError> + Send + 'static,
{
    let failure = failure.clone();
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            // a panic fails the run like an error (the other threads would otherwise wait
            // for this one for ever); the panic hook has printed it
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                    Err(EngineError::Internal(format!(
                        "the `{name}` thread panicked: {}; this is a bug in weir, please report it",
                        panic_text(panic.as_ref())
                    )))
                });
            if let Err(e) = result {
                tracing::debug!(thread = %name, error = %e.chain(), "thread failed");
                failure.record(e);
            }
        })
        .map_err(|e| EngineError::internal_caused("cannot start a thread", e))
}

/// The message of a panic's payload (a `&str` or a `String`, as `panic!` makes them).
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Puts `make(id)` into every worker's queue; the caller holds the dispatcher's lock, so the
/// barrier stands at one point of the chunk order in every queue.
pub(super) fn send_barrier(
    d: &Dispatcher,
    make: fn(u64) -> WorkerMsg,
    id: u64,
    failure: &Failure,
) -> Result<(), EngineError> {
    for s in &d.senders {
        let mut msg = make(id);
        loop {
            match s.send_timeout(msg, TICK) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(m)) => {
                    if failure.cancel.load(Ordering::Relaxed) {
                        return Err(EngineError::Cancelled);
                    }
                    msg = m;
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(failure.closed("a worker")),
            }
        }
    }
    Ok(())
}

/// A partition's clock at a snapshot: (watermark, newest event time) where known, whether it
/// ended, whether it is idle.
pub(super) type ClockRow = (Option<i64>, Option<i64>, bool, bool);

/// Per global partition, its [`ClockRow`].
pub(super) fn clock_status(clocks: &Clocks) -> Vec<ClockRow> {
    (0..clocks.len())
        .map(|id| {
            let c = clocks.partition(id);
            let (wm, newest) = (c.watermark(), c.newest());
            let known = |v: i64| (v != WATERMARK_MIN && v != WATERMARK_END).then_some(v);
            (known(wm), known(newest), wm == WATERMARK_END, c.is_idle())
        })
        .collect()
}
