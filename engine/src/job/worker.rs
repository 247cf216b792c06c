//! The worker threads: decode, sequence and aggregate chunks, hand closed windows over to
//! the merger and dead letters to the dead-letter thread, and meet at barriers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::channels::{
    clock_status, Arrival, CheckpointLink, DeadMsg, Failure, MergeInput, MergeMsg, WorkerMsg, TICK,
};
use crate::api::{Decode, WorkerOperator};
use crate::checkpoint::{Part, Rendezvous};
use crate::clock::{Clocks, WATERMARK_END, WATERMARK_MIN};
use crate::dead_letter::{DeadLetter, Reason};
use crate::events::{Chunk, ChunkData, Decoded, EventBatch};
use crate::progress::{ChunkResidue, OpResidue, Progress};
use crate::stats::{PartitionCount, RunStats};
use crate::time::now_ms;
use crate::types::PartialWindow;
use crate::EngineError;

pub(super) struct WorkerCtx {
    pub(super) index: usize,
    pub(super) decoders: Arc<Vec<Arc<dyn Decode>>>,
    /// Per source, its `SourceSpec::max_future_ms`.
    pub(super) max_future: Arc<Vec<Option<i64>>>,
    pub(super) clocks: Arc<Clocks>,
    pub(super) stats: Arc<RunStats>,
    pub(super) dead_tx: Sender<DeadMsg>,
    pub(super) merge_tx: Sender<MergeInput>,
    pub(super) failure: Failure,
    pub(super) op_sources: Vec<usize>,
    pub(super) input_done: Arc<ExitBarrier>,
    pub(super) progress: Arc<Progress>,
    pub(super) link: Option<CheckpointLink>,
    pub(super) rendezvous: Option<Arc<Rendezvous>>,
    /// Live snapshots are published (the worker notes when its chunks were read).
    pub(super) live: bool,
}

pub(super) fn worker_loop(
    rx: Receiver<WorkerMsg>,
    mut ops: Vec<(usize, Box<dyn WorkerOperator>)>,
    ctx: WorkerCtx,
) -> Result<(), EngineError> {
    let mut flushed: Vec<Handover> = vec![Handover::default(); ops.len()];
    let mut row_wm: Vec<i64> = Vec::new();
    // with live snapshots: the chunks handled since the last live barrier
    let mut arrivals: Vec<Arrival> = Vec::new();
    loop {
        match rx.recv_timeout(TICK) {
            Ok(WorkerMsg::Chunk(chunk, read_at)) => {
                crate::checkpoint::failpoint("worker_chunk");
                let source = chunk.source;
                let records = process_chunk(chunk, &mut ops, &mut flushed, &ctx, &mut row_wm)?;
                if ctx.live && records > 0 {
                    arrivals.push((source, read_at, records));
                }
                flush_ops(&mut ops, &mut flushed, &ctx)?;
            }
            Ok(WorkerMsg::Barrier(epoch)) => worker_barrier(epoch, &mut ops, &mut flushed, &ctx)?,
            Ok(WorkerMsg::Live(seq)) => {
                let arrived = std::mem::take(&mut arrivals);
                worker_live(seq, &mut ops, &mut flushed, &ctx, arrived)?
            }
            Err(RecvTimeoutError::Timeout) => {
                if ctx.failure.cancel.load(Ordering::Relaxed) {
                    return Err(EngineError::Cancelled);
                }
                flush_ops(&mut ops, &mut flushed, &ctx)?;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Another worker may still be sequencing a partition's last chunk: the watermarks are
    // final only once every worker has handled its whole queue.
    ctx.input_done.arrive_and_wait(&ctx.failure.cancel)?;
    // With checkpoints, an input that ended flushed its last windows at its final barrier;
    // a stopped job (a signal, a hand-over) leaves its open windows to its final checkpoint,
    // from which a restart (or the partitions' next owner) emits them whole: rows written
    // now would never be committed.
    if ctx.link.is_some() {
        return Ok(());
    }
    flush_ops_at(&mut ops, &mut flushed, &ctx, true)
}

/// The protocol every barrier follows in a worker: meet the others (so every chunk before
/// the barrier is sequenced and none after it), hand over the windows closed then and the
/// views' changes, `copy` the open state, meet again; worker 0 then `lead`s (passes the
/// barrier on) before the last meeting, so no worker goes on before it is passed.
fn at_barrier(
    rendezvous: &Rendezvous,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
    copy: impl FnOnce(&mut [(usize, Box<dyn WorkerOperator>)], &[Handover]) -> Result<(), EngineError>,
    lead: impl FnOnce() -> Result<(), EngineError>,
    input_over: bool,
) -> Result<(), EngineError> {
    let cancel = &ctx.failure.cancel;
    rendezvous.wait(cancel)?;
    // at the end of the input every chunk is sequenced now: the watermarks are final
    flush_ops_at(ops, flushed, ctx, input_over)?;
    barrier_handovers(ops, flushed, ctx)?;
    copy(ops, flushed)?;
    rendezvous.wait(cancel)?;
    if ctx.index == 0 {
        lead()?;
    }
    rendezvous.wait(cancel)
}

/// A worker at checkpoint `epoch`'s barrier: it snapshots its open windows for the
/// coordinator; worker 0 snapshots the clocks and passes the barrier to the merger and the
/// dead-letter output.
fn worker_barrier(
    epoch: u64,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    let link = ctx
        .link
        .as_ref()
        .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
    let lost = || ctx.failure.closed("the checkpoint coordinator");
    let copy = |ops: &mut [(usize, Box<dyn WorkerOperator>)], flushed: &[Handover]| {
        let mut parts = Vec::with_capacity(ops.len());
        for ((oi, op), h) in ops.iter_mut().zip(flushed) {
            let (partials, mut handed_over) = op.snapshot()?;
            // windows are closed up to those the end emitted, not up to the end
            if let (WATERMARK_END, Some(closed)) = (handed_over, h.end.upto) {
                handed_over = closed;
            }
            // (a partition that ended before the others is reported in every checkpoint
            // after its end, not only in the final one)
            let ended =
                (h.end.upto.is_some() || !h.end.closing.is_empty()).then(|| h.end.closing.clone());
            parts.push((*oi, partials, handed_over, ended));
        }
        link.parts
            .send(Part::Worker { epoch, ops: parts })
            .map_err(|_| lost())
    };
    let lead = || {
        // a partition whose end is only this run's keeps its events' newest time
        let newest = (0..ctx.clocks.len())
            .map(|id| {
                let c = ctx.clocks.partition(id);
                if c.watermark() == WATERMARK_END && c.ends_for_good() {
                    WATERMARK_END
                } else {
                    c.newest()
                }
            })
            .collect();
        let lane_newest = (0..ctx.clocks.len())
            .filter_map(|id| {
                let lanes = ctx.clocks.partition(id).lane_newest();
                (!lanes.is_empty()).then_some((id, lanes))
            })
            .collect();
        link.parts
            .send(Part::Leader {
                epoch,
                newest,
                lane_newest,
                counters: ctx.stats.worker_counters(),
            })
            .map_err(|_| lost())?;
        ctx.merge_tx
            .send(MergeInput::Barrier(epoch))
            .map_err(|_| ctx.failure.closed("the merger"))?;
        ctx.dead_tx
            .send(DeadMsg::Barrier(epoch))
            .map_err(|_| ctx.failure.closed("the dead-letter output"))
    };
    let input_over = link.epochs.end_of_input.load(Ordering::SeqCst) == epoch;
    at_barrier(&link.rendezvous, ops, flushed, ctx, copy, lead, input_over)
}

/// A worker at live barrier `seq`: it sends the merger a copy of its open windows; worker 0
/// then sends the barrier with the counters and clocks.
fn worker_live(
    seq: u64,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
    arrivals: Vec<Arrival>,
) -> Result<(), EngineError> {
    let rendezvous = ctx
        .rendezvous
        .as_ref()
        .ok_or_else(|| EngineError::Internal("a live barrier without live state".into()))?;
    let merger_lost = || ctx.failure.closed("the merger");
    let copy = |ops: &mut [(usize, Box<dyn WorkerOperator>)], _: &[Handover]| {
        let mut parts = Vec::with_capacity(ops.len());
        for (oi, op) in ops.iter_mut() {
            let open = op.live()?;
            if !open.is_empty() {
                parts.push((*oi, open));
            }
        }
        ctx.merge_tx
            .send(MergeInput::LivePart {
                seq,
                ops: parts,
                arrivals,
            })
            .map_err(|_| merger_lost())
    };
    let lead = || {
        ctx.merge_tx
            .send(MergeInput::Live {
                seq,
                counters: ctx.stats.live_counters(),
                clocks: clock_status(&ctx.clocks),
            })
            .map_err(|_| merger_lost())
    };
    at_barrier(rendezvous, ops, flushed, ctx, copy, lead, false)
}

/// Hands the merger what operators hand over at every barrier (views' changes).
fn barrier_handovers(
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    for (i, (oi, op)) in ops.iter_mut().enumerate() {
        let partials = op.barrier_handover()?;
        if partials.is_empty() {
            continue;
        }
        let h = &mut flushed[i];
        h.seq += 1;
        ctx.merge_tx
            .send(MergeInput::Handover(MergeMsg {
                operator: *oi,
                worker: ctx.index,
                partials,
                upto: h.upto,
                seq: h.seq,
                partitions: Vec::new(),
            }))
            .map_err(|_| ctx.failure.closed("the merger"))?;
    }
    Ok(())
}

/// What a worker handed the merger of one operator.
#[derive(Clone)]
pub(super) struct Handover {
    /// The watermark of the last hand-over.
    pub(super) upto: i64,
    /// Hand-overs so far.
    pub(super) seq: u64,
    /// Rows were aggregated since the last hand-over (they may belong to windows already
    /// closed, when their partition lags, and must be handed over anyway).
    dirty: bool,
    /// Of an operator whose windows close per partition: per global partition, the closing
    /// watermark of the last hand-over (empty until the first).
    closing: Vec<i64>,
    /// What the end of a bounded input emitted early (see [`EndFlushed`]).
    end: EndFlushed,
}

/// How far the end of a bounded input closed an operator's windows, when that end is only
/// the run's (a run `--until-caught-up`, its topics going on). The end emits every open
/// window, as at the end of a file; the final checkpoint then records the windows as closed
/// up to the last one it emitted, not up to the end (+infinity), and the clocks at their
/// events' newest times. A later run over more of the same topics finds the events of the
/// windows emitted late (as a late event never changes an emitted row) and counts every
/// later window; before, every later event was late, for good.
#[derive(Clone, Default)]
pub(super) struct EndFlushed {
    /// The hand-over watermark the end's windows close at, at most.
    upto: Option<i64>,
    /// Per global partition (windows closing per partition): the same, of its windows.
    closing: Vec<(usize, i64)>,
}

/// Whether the end of `source`'s partitions is only this run's (see
/// [`crate::clock::PartitionClock::set_resumable_end`]).
fn resumes(ctx: &WorkerCtx, source: usize) -> bool {
    let parts = ctx.clocks.partitions_of(source);
    !parts.is_empty()
        && parts
            .iter()
            .all(|&p| !ctx.clocks.partition(p).ends_for_good())
}

/// Whether `op` is a window (a view closes nothing).
fn closes_windows(op: &dyn WorkerOperator) -> bool {
    op.processing_time() || op.closes_at(0) != WATERMARK_END
}

/// The watermark closing the windows of `partials` and those closed `before`. A window on
/// processing time is closed by the clock: up to what the clock closed `before` (the end's
/// early rows of the current period are its own; recorded as closed, the next run's rows of
/// that period would be emitted at once; recorded at the end, every later window was
/// emitted at each hand-over, in as many rows as its rows came in).
fn closed_by(op: &dyn WorkerOperator, partials: &[PartialWindow], before: i64) -> i64 {
    if op.processing_time() {
        return before;
    }
    partials
        .iter()
        .map(|p| op.closes_at(p.window_start))
        .fold(before, i64::max)
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            upto: WATERMARK_MIN,
            seq: 0,
            dirty: false,
            closing: Vec::new(),
            end: EndFlushed::default(),
        }
    }
}

/// Lets workers wait until all of them have handled all their input.
pub(super) struct ExitBarrier {
    remaining: Mutex<usize>,
    all_done: std::sync::Condvar,
}

impl ExitBarrier {
    pub(super) fn new(workers: usize) -> Self {
        ExitBarrier {
            remaining: Mutex::new(workers),
            all_done: std::sync::Condvar::new(),
        }
    }

    fn arrive_and_wait(&self, cancel: &AtomicBool) -> Result<(), EngineError> {
        let mut left = self
            .remaining
            .lock()
            .map_err(|_| EngineError::Internal("exit barrier poisoned".into()))?;
        *left -= 1;
        if *left == 0 {
            self.all_done.notify_all();
        }
        while *left > 0 {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            left = self
                .all_done
                .wait_timeout(left, Duration::from_millis(50))
                .map_err(|_| EngineError::Internal("exit barrier poisoned".into()))?
                .0;
        }
        Ok(())
    }
}

/// Decodes, sequences and aggregates a chunk; returns its records (good and bad).
fn process_chunk(
    chunk: Chunk,
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    handovers: &mut [Handover],
    ctx: &WorkerCtx,
    row_wm: &mut Vec<i64>,
) -> Result<u64, EngineError> {
    let _span = tracing::info_span!(
        "batch",
        source = %chunk.partition.source,
        partition = chunk.partition.number,
        seq = chunk.seq
    )
    .entered();
    let end = matches!(chunk.data, ChunkData::End);
    let bytes = match &chunk.data {
        ChunkData::Lines(lines) => lines.len() as u64,
        ChunkData::Messages(m) => m.payloads.iter().map(|(a, b)| (b - a) as u64).sum(),
        _ => 0,
    };
    let lane = match &chunk.data {
        ChunkData::Messages(m) => m.lane,
        _ => None,
    };
    let next_offset = match &chunk.data {
        ChunkData::Messages(m) => Some(m.offsets.last().map_or(chunk.first_offset, |o| o + 1)),
        ChunkData::End => Some(chunk.first_offset),
        _ => None,
    };
    let Decoded {
        events,
        mut bad,
        records,
    } = match chunk.data {
        ChunkData::Lines(ref lines) => ctx.decoders[chunk.source].decode(&chunk, lines),
        ChunkData::Messages(ref messages) => {
            ctx.decoders[chunk.source].decode_messages(&chunk, messages)
        }
        ChunkData::Events(ev) => Decoded {
            records: ev.batch.num_rows() as u64,
            events: Some(ev),
            bad: Vec::new(),
        },
        ChunkData::End => Decoded {
            events: None,
            bad: Vec::new(),
            records: 0,
        },
    };
    let max_future = ctx.max_future.get(chunk.source).copied().flatten();
    let events = match events {
        Some(ev) => crate::bounds::drop_out_of_range(
            ev,
            (max_future, now_ms()),
            &chunk.partition,
            &mut bad,
        )?,
        None => None,
    };
    RunStats::add(&ctx.stats.records_in, records);
    if let Some(src) = ctx.stats.sources.get(chunk.source) {
        RunStats::add(&src.records_in, records);
        RunStats::add(&src.bytes_in, bytes);
        RunStats::add(&src.bad, bad.len() as u64);
    }
    ctx.stats.partitions.add(
        chunk.partition.id,
        PartitionCount {
            records_in: records,
            bad: bad.len() as u64,
            late: 0,
        },
    );
    if !bad.is_empty() {
        RunStats::add(&ctx.stats.bad, bad.len() as u64);
        ctx.dead_tx
            .send(DeadMsg::Records(bad))
            .map_err(|_| ctx.failure.closed("the dead-letter output"))?;
    }
    // Running newest event time before each row, within the chunk.
    row_wm.clear();
    let mut newest = WATERMARK_MIN;
    if let Some(ev) = &events {
        row_wm.reserve(ev.event_time.len());
        for &t in &ev.event_time {
            row_wm.push(newest);
            newest = newest.max(t);
        }
    }
    let clock = ctx.clocks.partition(chunk.partition.id);
    let before = clock.sequence_in(chunk.seq, lane, newest, end, &ctx.failure.cancel)?;
    let tracking = match next_offset {
        Some(_) => ctx.progress.tracking(chunk.partition.id),
        None => None,
    };
    let tracked = tracking.is_some();
    let Some(events) = events else {
        if let (true, Some(next_offset)) = (tracked, next_offset) {
            send_residue(
                ctx,
                (chunk.partition.id, chunk.seq),
                next_offset,
                Vec::new(),
            )?;
        }
        return Ok(records);
    };
    for w in row_wm.iter_mut() {
        *w = clock.watermark_after((*w).max(before));
    }
    let mut dead = Vec::new();
    let mut late_rows = 0;
    // per operator, the rows an earlier run counted already left out (see `crate::reread`)
    let uncounted = match tracking.flatten() {
        Some(reread) if reread.applies(events.offsets.first(), row_wm.first()) => {
            uncounted_rows(ops, ctx, (&reread, chunk.source), &events, row_wm)?
        }
        _ => Vec::new(),
    };
    for (i, (oi, op)) in ops.iter_mut().enumerate() {
        if ctx.op_sources[*oi] != chunk.source {
            continue;
        }
        let (ev, wm) = match uncounted.get(i) {
            Some(Some((e, w))) => (e.as_ref().unwrap_or(&events), &w[..]),
            _ => (&events, &row_wm[..]),
        };
        let late = op.process(&chunk.partition, ev, wm, &mut dead)?;
        RunStats::add(&ctx.stats.late[*oi].value, late);
        late_rows += late;
        handovers[i].dirty = true;
    }
    let bad_rows = count_bad_rows(ctx, chunk.source, &dead);
    ctx.stats.partitions.add(
        chunk.partition.id,
        PartitionCount {
            records_in: 0,
            bad: bad_rows,
            late: late_rows,
        },
    );
    if !dead.is_empty() {
        ctx.dead_tx
            .send(DeadMsg::Records(dead))
            .map_err(|_| ctx.failure.closed("the dead-letter output"))?;
    }
    if let (true, Some(next_offset)) = (tracked, next_offset) {
        let windows = op_residues(ops, handovers, ctx, chunk.source, (&events, &uncounted));
        send_residue(ctx, (chunk.partition.id, chunk.seq), next_offset, windows)?;
    }
    Ok(records)
}

/// An operator's rows of a chunk that an earlier run did not count (`None`: all of them),
/// with their watermarks, at least the earlier run's floor.
type Uncounted = (Option<EventBatch>, Vec<i64>);

/// The residue of a chunk of `source` for each operator that holds offsets: the windows its
/// rows went to (of the rows it counted, `uncounted`'s when given).
fn op_residues(
    ops: &[(usize, Box<dyn WorkerOperator>)],
    handovers: &[Handover],
    ctx: &WorkerCtx,
    source: usize,
    (events, uncounted): (&EventBatch, &[Option<Uncounted>]),
) -> Vec<OpResidue> {
    ops.iter()
        .zip(handovers.iter())
        .enumerate()
        .filter(|(_, ((oi, op), _))| ctx.op_sources[*oi] == source && op.holds_offsets())
        .map(|(i, ((oi, op), h))| OpResidue {
            operator: *oi,
            worker: ctx.index,
            after_handover: h.seq,
            windows: residue_windows(
                op.as_ref(),
                match uncounted.get(i) {
                    Some(Some((Some(e), _))) => e,
                    _ => events,
                },
            ),
        })
        .collect()
}

/// Counts the records operators dead-lettered as bad (an expression failed on them) as bad
/// records of their source: once per record, however many operators failed on it. Returns
/// how many.
fn count_bad_rows(ctx: &WorkerCtx, source: usize, dead: &[DeadLetter]) -> u64 {
    let mut offsets: Vec<Option<u64>> = dead
        .iter()
        .filter(|d| d.reason == Reason::Bad)
        .map(|d| d.offset)
        .collect();
    if offsets.is_empty() {
        return 0;
    }
    offsets.sort_unstable();
    offsets.dedup();
    let n = offsets.len() as u64;
    RunStats::add(&ctx.stats.bad, n);
    if let Some(src) = ctx.stats.sources.get(source) {
        RunStats::add(&src.bad, n);
    }
    n
}

/// Per operator of `ops`, the rows of `events` (a chunk of a tracked partition) it has not
/// counted yet, and their watermarks raised to the operator's floor, when an earlier run's
/// note names some (see `crate::reread`); empty when there is no note.
fn uncounted_rows(
    ops: &[(usize, Box<dyn WorkerOperator>)],
    ctx: &WorkerCtx,
    (reread, source): (&crate::reread::Reread, usize),
    events: &EventBatch,
    row_wm: &[i64],
) -> Result<Vec<Option<Uncounted>>, EngineError> {
    let mut out = Vec::with_capacity(ops.len());
    for (oi, op) in ops {
        if ctx.op_sources[*oi] != source {
            out.push(None);
            continue;
        }
        let floor = reread.floor(*oi);
        let kept = without_counted_rows(op.as_ref(), (*oi, Some(reread), floor), events, row_wm)
            .map_err(|e| EngineError::internal_caused("cannot leave out rows read again", e))?;
        if let Some((Some(ev), _)) = &kept {
            let skipped = events.offsets.len() - ev.offsets.len();
            RunStats::add(&ctx.stats.reread_skipped, skipped as u64);
        }
        out.push(kept);
    }
    Ok(out)
}

/// The rows of `events` operator `oi` has not counted yet, with their watermarks: those an
/// earlier run's note does not name (see `crate::reread`), each watermark at least `floor`.
/// `None` when every row is to be counted at its own watermark.
pub(super) fn without_counted_rows(
    op: &dyn WorkerOperator,
    (oi, reread, floor): (usize, Option<&crate::reread::Reread>, Option<i64>),
    events: &EventBatch,
    row_wm: &[i64],
) -> Result<Option<Uncounted>, arrow::error::ArrowError> {
    let read_to = reread.map_or(0, |r| r.read_to());
    // (watermarks rise along a chunk: the first is the lowest)
    let floor = floor.filter(|&f| row_wm.first().is_some_and(|&w| w < f));
    let skips = events.offsets.first().is_some_and(|&o| o < read_to);
    let keep: Option<Vec<u32>> = skips
        .then(|| {
            (0..events.offsets.len())
                .filter(|&i| {
                    let offset = events.offsets[i];
                    offset >= read_to
                        || !reread.is_some_and(|r| {
                            r.counted(oi, offset, op.closes_at(events.event_time[i]))
                        })
                })
                .map(|i| i as u32)
                .collect::<Vec<u32>>()
        })
        .filter(|keep| keep.len() < events.offsets.len());
    if keep.is_none() && floor.is_none() {
        return Ok(None);
    }
    let raise = |w: i64| floor.map_or(w, |f| w.max(f));
    Ok(Some(match keep {
        Some(keep) => {
            let wm = keep.iter().map(|&i| raise(row_wm[i as usize])).collect();
            (Some(events.retain_rows(&keep)?), wm)
        }
        None => (None, row_wm.iter().map(|&w| raise(w)).collect()),
    }))
}

/// Per window a chunk's rows went to: (the watermark that closes it, smallest offset of its
/// rows).
fn residue_windows(op: &dyn WorkerOperator, events: &EventBatch) -> Vec<(i64, u64)> {
    let mut out: Vec<(i64, u64)> = Vec::new();
    let mut last: Option<(i64, usize)> = None; // (event-time bucket hint, index in out)
    for (&t, &offset) in events.event_time.iter().zip(&events.offsets) {
        let end = match last {
            Some((prev_t, i)) if prev_t == t => out[i].0,
            _ => op.closes_at(t),
        };
        let i = match out.iter().position(|(e, _)| *e == end) {
            Some(i) => {
                out[i].1 = out[i].1.min(offset);
                i
            }
            None => {
                out.push((end, offset));
                out.len() - 1
            }
        };
        last = Some((t, i));
    }
    out
}

fn send_residue(
    ctx: &WorkerCtx,
    (partition, seq): (usize, u64),
    next_offset: u64,
    windows: Vec<OpResidue>,
) -> Result<(), EngineError> {
    ctx.dead_tx
        .send(DeadMsg::Residue(ChunkResidue {
            partition,
            seq,
            next_offset,
            windows,
        }))
        .map_err(|_| ctx.failure.closed("the dead-letter output"))
}

/// Hands the merger every window closed at the operator's watermark, and windows closed
/// earlier that rows of a lagging partition opened again.
fn flush_ops(
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
) -> Result<(), EngineError> {
    flush_ops_at(ops, flushed, ctx, false)
}

/// [`flush_ops`]; `input_over` once every reader finished (partitions never assigned to this
/// process no longer hold the watermark).
fn flush_ops_at(
    ops: &mut [(usize, Box<dyn WorkerOperator>)],
    flushed: &mut [Handover],
    ctx: &WorkerCtx,
    input_over: bool,
) -> Result<(), EngineError> {
    let source_watermark = |source: usize| {
        if input_over {
            ctx.clocks.final_source_watermark(source)
        } else {
            ctx.clocks.source_watermark(source)
        }
    };
    for (i, (oi, op)) in ops.iter_mut().enumerate() {
        if op.closes_per_partition() {
            let source = ctx.op_sources[*oi];
            flush_partitions(
                (*oi, op.as_mut()),
                &mut flushed[i],
                ctx,
                source_watermark(source),
            )?;
            continue;
        }
        let wm = if op.processing_time() {
            let src_wm = source_watermark(ctx.op_sources[*oi]);
            if src_wm == Some(WATERMARK_END) {
                Some(WATERMARK_END)
            } else {
                Some(now_ms())
            }
        } else {
            source_watermark(ctx.op_sources[*oi])
        };
        let h = &mut flushed[i];
        let wm = wm.unwrap_or(h.upto).max(h.upto);
        if wm == h.upto && !h.dirty {
            continue;
        }
        // (read before the flush, which closes up to the end)
        let closed_before = h.upto.max(op.closed_upto(None));
        let partials = op.flush(wm)?;
        if wm == WATERMARK_END
            && h.upto != WATERMARK_END
            && closes_windows(op.as_ref())
            && resumes(ctx, ctx.op_sources[*oi])
        {
            h.end.upto = Some(closed_by(op.as_ref(), &partials, closed_before));
        }
        h.dirty = false;
        if wm == h.upto && partials.is_empty() {
            continue;
        }
        h.upto = wm;
        h.seq += 1;
        ctx.merge_tx
            .send(MergeInput::Handover(MergeMsg {
                operator: *oi,
                worker: ctx.index,
                partials,
                upto: wm,
                seq: h.seq,
                partitions: Vec::new(),
            }))
            .map_err(|_| ctx.failure.closed("the merger"))?;
    }
    Ok(())
}

/// The hand-over of an operator whose windows close per partition (see
/// `WorkerOperator::closes_per_partition`). A partition's closing watermark is its own
/// watermark, or, while it is idle, at least its source's (`source_wm`): an idle partition
/// stops holding its windows open, and its later rows for windows closed meanwhile are late.
/// A partition read by another process is not closed with the source: its windows here
/// (rows read before it was revoked) wait, and if it comes back, it fills them. Closing
/// watermarks never go back. Only the partitions whose closing watermark rose are handed
/// over, so the merger learns every worker's promise for every partition.
fn flush_partitions(
    (oi, op): (usize, &mut dyn WorkerOperator),
    h: &mut Handover,
    ctx: &WorkerCtx,
    source_wm: Option<i64>,
) -> Result<(), EngineError> {
    let source = ctx.op_sources[oi];
    if h.closing.len() < ctx.clocks.len() {
        h.closing.resize(ctx.clocks.len(), WATERMARK_MIN);
    }
    let mut rose = Vec::new();
    let mut ending: Vec<(usize, i64)> = Vec::new();
    let mut lowest: Option<i64> = None;
    for &p in ctx.clocks.partitions_of(source) {
        let clock = ctx.clocks.partition(p);
        let wm = clock.watermark();
        let here = clock.is_read_here() || wm == WATERMARK_END;
        let own = match source_wm {
            Some(s) if here && wm != WATERMARK_END && clock.is_idle() => wm.max(s),
            _ => wm,
        };
        if own > h.closing[p] {
            if own == WATERMARK_END && !clock.ends_for_good() && closes_windows(op) {
                // what a restored checkpoint closed counts too: a run with no new rows of
                // the partition must not record less
                ending.push((p, h.closing[p].max(op.closed_upto(Some(p)))));
            }
            h.closing[p] = own;
            rose.push((p, own));
        }
        if here {
            lowest = Some(lowest.map_or(h.closing[p], |l| l.min(h.closing[p])));
        }
    }
    h.dirty = false;
    if rose.is_empty() {
        return Ok(());
    }
    let upto = lowest.unwrap_or(WATERMARK_MIN).max(h.upto);
    let closed_before = h.upto.max(op.closed_upto(None));
    let partitions = op.flush_partitions(&rose, upto)?;
    for &(p, before) in &ending {
        let closed = partitions
            .iter()
            .filter(|f| f.partition == p)
            .fold(before, |c, f| c.max(closed_by(op, &f.partials, before)));
        h.end.closing.push((p, closed));
    }
    // windows restored from a checkpoint that kept no partition close with every partition
    let partials = if upto > h.upto {
        op.flush(upto)?
    } else {
        Vec::new()
    };
    if upto == WATERMARK_END
        && h.upto != WATERMARK_END
        && closes_windows(op)
        && resumes(ctx, source)
    {
        h.end.upto = Some(closed_by(op, &partials, closed_before));
    }
    h.upto = upto;
    h.seq += 1;
    ctx.merge_tx
        .send(MergeInput::Handover(MergeMsg {
            operator: oi,
            worker: ctx.index,
            partials,
            upto,
            seq: h.seq,
            partitions,
        }))
        .map_err(|_| ctx.failure.closed("the merger"))
}
