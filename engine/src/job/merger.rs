//! The merger thread: merges the workers' partial windows, emits every window all workers
//! closed to the sinks, passes barriers on and publishes live snapshots.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Sender};

use super::channels::{
    clock_status, Arrival, CheckpointLink, ClockRow, Failure, MergeInput, MergeMsg, OutputGate,
    SinkMsg,
};
use super::outbox::{SinkOutbox, HOLD_PER_WORKER};
use crate::api::MergeOperator;
use crate::checkpoint::{Part, RetainedPart};
use crate::clock::{Clocks, WATERMARK_MIN};
use crate::live::{LiveKind, LiveSnapshot, LiveState, PartitionStatus, Retained};
use crate::stats::{PartitionCount, RunStats};
use crate::time::now_ms;
use crate::types::{PartialWindow, PartitionFlush};
use crate::EngineError;

pub(super) type MergePart = (Box<dyn MergeOperator>, Vec<usize>);

/// Where the merger starts.
pub(super) struct MergerStart {
    pub(super) workers: usize,
    /// Per operator: the watermark up to which windows were emitted (from a checkpoint).
    pub(super) emitted: Vec<i64>,
    /// Per operator whose windows close per partition: (partition, watermark up to which its
    /// windows were emitted), from a checkpoint.
    pub(super) closed: super::ClosedPartitions,
    pub(super) link: Option<CheckpointLink>,
    pub(super) live: Option<LiveTables>,
    /// Closed while the merger holds rows a sink has no room for.
    pub(super) gate: Arc<OutputGate>,
}

/// Each partition's row of `weir_status`: its clocks, and its consumer lag from `stats`.
/// Each partition's counts come from `counters`, taken with the snapshot's other counters.
fn partition_statuses(
    partitions: &[(String, String)],
    clocks: impl IntoIterator<Item = ClockRow>,
    stats: Option<&RunStats>,
    counters: &std::collections::BTreeMap<String, u64>,
) -> Vec<PartitionStatus> {
    let lag = stats.and_then(|s| s.consumer_lag.lock().ok());
    partitions
        .iter()
        .zip(clocks)
        .enumerate()
        .map(
            |(id, ((source, partition), (watermark, newest, ended, idle)))| PartitionStatus {
                lag: lag
                    .as_ref()
                    .and_then(|l| l.get(&(source.clone(), partition.clone())).copied()),
                source: source.clone(),
                partition: partition.clone(),
                watermark,
                newest,
                ended,
                idle,
                counts: PartitionCount::of(counters, id),
            },
        )
        .collect()
}

/// Per table, the emitted windows a checkpoint kept (`restored`, one batch per window), as
/// far as `retain` keeps them; rows whose columns are no longer the table's are left out.
fn retained_from(state: &LiveState, restored: Vec<Vec<RecordBatch>>) -> Vec<Retained> {
    let mut restored = restored.into_iter();
    state
        .tables
        .iter()
        .map(|def| {
            let mut r = Retained::new();
            let rows = restored.next().unwrap_or_default();
            let LiveKind::Window { retain_ms } = def.kind else {
                return r;
            };
            let mut other_columns = 0usize;
            for batch in rows {
                if batch.schema().fields() != def.schema.fields() {
                    other_columns += 1;
                    continue;
                }
                let rows = RecordBatch::try_new(def.schema.clone(), batch.columns().to_vec());
                if let (Some(end), Ok(rows)) = (window_end_of(&batch), rows) {
                    r.restore(end, rows, retain_ms);
                }
            }
            if other_columns > 0 {
                tracing::warn!(
                    table = def.name,
                    windows = other_columns,
                    "emitted windows kept by the checkpoint have other columns than the table \
                     now: not shown"
                );
            }
            r
        })
        .collect()
}

/// The windows `retained` emitted since the last checkpoint barrier, for the next checkpoint.
fn unsaved_part(retained: &mut Retained) -> RetainedPart {
    let u = retained.take_unsaved();
    RetainedPart {
        new: u.windows,
        keep_after: u.keep_after,
        whole: u.whole,
    }
}

/// The merger's side of live snapshots: emitted windows kept for `retain`, and the workers'
/// copies of their open state gathered until the live barrier.
pub(super) struct LiveTables {
    pub(super) state: Arc<LiveState>,
    /// (source, partition key) per global partition.
    pub(super) partitions: Vec<(String, String)>,
    pub(super) clocks: Arc<Clocks>,
    retained: Vec<Retained>,
    pub(super) parts: Vec<Vec<PartialWindow>>,
    pub(super) seq: u64,
    /// Per operator, the index of its source.
    op_sources: Vec<usize>,
    /// Chunks the workers handled before the live barrier: the next snapshot shows them.
    arrivals: Vec<Arrival>,
}

impl LiveTables {
    pub(super) fn new(
        state: Arc<LiveState>,
        partitions: &[(String, String)],
        clocks: Arc<Clocks>,
        op_sources: Vec<usize>,
        restored: Vec<Vec<RecordBatch>>,
    ) -> Self {
        let n = state.tables.len();
        // before the first barrier: the partitions, with what a restore gave their clocks
        state.publish(LiveSnapshot {
            tables: (0..n).map(|_| Vec::new()).collect(),
            indexes: (0..n).map(|_| None).collect(),
            partitions: partition_statuses(
                partitions,
                clock_status(&clocks),
                None,
                &Default::default(),
            ),
            ..Default::default()
        });
        let retained = retained_from(&state, restored);
        LiveTables {
            state,
            partitions: partitions.to_vec(),
            clocks,
            retained,
            parts: (0..n).map(|_| Vec::new()).collect(),
            seq: 0,
            op_sources,
            arrivals: Vec::new(),
        }
    }

    /// Keeps rows operator `op` emitted (one window per batch).
    fn emitted(&mut self, op: usize, batch: &RecordBatch) -> Result<(), EngineError> {
        let Some(def) = self.state.tables.get(op) else {
            return Ok(());
        };
        let LiveKind::Window { retain_ms } = def.kind else {
            return Ok(());
        };
        let Some(end) = window_end_of(batch) else {
            return Ok(());
        };
        let rows = def.rows(batch, true)?;
        self.retained[op].add(end, rows, retain_ms);
        Ok(())
    }

    /// Builds and publishes the snapshot: retained and open windows, views; `last`: the
    /// job's last one (its input is done).
    fn publish(
        &mut self,
        ops: &mut [MergePart],
        counters: Vec<(String, u64)>,
        clocks: Vec<ClockRow>,
        stats: &RunStats,
        last: bool,
    ) -> Result<(), EngineError> {
        self.seq += 1;
        let mut tables = Vec::with_capacity(ops.len());
        for (i, (merge, _)) in ops.iter_mut().enumerate() {
            let def = &self.state.tables[i];
            let mut rows: Vec<RecordBatch> = self.retained[i].batches().cloned().collect();
            for b in merge.live(std::mem::take(&mut self.parts[i]))? {
                if b.num_rows() > 0 {
                    rows.push(def.rows(&b, false)?);
                }
            }
            tables.push(rows);
        }
        // after `live`, which may expire keys and rebuild a view's index: the index must
        // number the rows published with it
        let indexes = ops.iter().map(|(m, _)| m.live_index()).collect();
        let mut counters: std::collections::BTreeMap<String, u64> = counters.into_iter().collect();
        counters.extend(stats.merger_counters());
        let partitions = partition_statuses(&self.partitions, clocks, Some(stats), &counters);
        let stages = stats
            .stages
            .lock()
            .map(|s| s.iter().flat_map(|st| st.statuses()).collect())
            .unwrap_or_default();
        let snapshot = LiveSnapshot {
            seq: self.seq,
            taken_ms: now_ms(),
            tables,
            indexes,
            counters,
            partitions,
            stages,
            // once the outputs finished too (`LiveState::outputs_finished`)
            finished: false,
            // stamped by `publish`
            owned: None,
        };
        if last {
            self.state.publish_last(snapshot);
        } else {
            self.state.publish(snapshot);
        }
        self.observe_visible(stats);
        Ok(())
    }

    /// After a snapshot was published: the rows of the chunks it shows first are visible to
    /// SQL in each view of their source.
    fn observe_visible(&mut self, stats: &RunStats) {
        let now = Instant::now();
        for (source, read_at, records) in self.arrivals.drain(..) {
            let seconds = now.duration_since(read_at).as_secs_f64();
            for (op, def) in self.state.tables.iter().enumerate() {
                if matches!(def.kind, LiveKind::View) && self.op_sources.get(op) == Some(&source) {
                    if let Some(h) = stats.view_visible_latency.get(op) {
                        h.observe_n(seconds, records);
                    }
                }
            }
        }
    }
}

/// Most points [`PassedWatermarks`] keeps between two emissions.
const PASSED_CAP: usize = 4096;

/// When the watermark first passed each point (the first worker hand-over that reached it),
/// for the points not emitted yet: a window ending at `end` was complete from the first
/// entry at or past `end`. A few entries per emission, not one per row.
#[derive(Default)]
pub(super) struct PassedWatermarks {
    /// (watermark, when it was first handed over), watermarks increasing.
    seen: std::collections::VecDeque<(i64, Instant)>,
}

impl PassedWatermarks {
    /// A worker handed over up to `upto` now.
    pub(super) fn handed_over(&mut self, upto: i64) {
        // bounded: past the cap, later windows count from an earlier point (never shorter)
        if self.seen.len() < PASSED_CAP && self.seen.back().is_none_or(|(w, _)| upto > *w) {
            self.seen.push_back((upto, Instant::now()));
        }
    }

    /// When the window ending at `end` became complete (now when that was not seen: a
    /// window reopened by a lagging partition, emitted as soon as it is handed over).
    pub(super) fn since(&self, end: i64) -> Instant {
        self.seen
            .iter()
            .find(|(w, _)| *w >= end)
            .map_or_else(Instant::now, |(_, t)| *t)
    }

    /// Windows up to `wm` were emitted: points up to it are no longer needed.
    pub(super) fn emitted(&mut self, wm: i64) {
        while self.seen.front().is_some_and(|(w, _)| *w <= wm) {
            self.seen.pop_front();
        }
    }
}

/// The `window_end` of the first row of a window batch.
fn window_end_of(batch: &RecordBatch) -> Option<i64> {
    use arrow::array::{Array, TimestampMillisecondArray};
    let col = batch.column_by_name("window_end")?;
    let ends = col.as_any().downcast_ref::<TimestampMillisecondArray>()?;
    (!ends.is_empty()).then(|| ends.value(0))
}

/// `batches` (windows of several partitions) with the rows of each window in one batch, as
/// other operators emit them: fewer, larger messages for the sinks.
fn one_batch_per_window(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, EngineError> {
    if batches.len() < 2 {
        return Ok(batches);
    }
    let mut by_end: std::collections::BTreeMap<i64, Vec<RecordBatch>> = Default::default();
    for b in batches {
        by_end
            .entry(window_end_of(&b).unwrap_or(i64::MIN))
            .or_default()
            .push(b);
    }
    by_end
        .into_values()
        .map(|parts| match parts.as_slice() {
            [one] => Ok(one.clone()),
            _ => arrow::compute::concat_batches(&parts[0].schema(), &parts)
                .map_err(|e| EngineError::Internal(format!("joining a window's rows: {e}"))),
        })
        .collect()
}

pub(super) fn merger_loop(
    rx: Receiver<MergeInput>,
    ops: Vec<MergePart>,
    sinks: Vec<Sender<SinkMsg>>,
    start: MergerStart,
    stats: &RunStats,
    failure: &Failure,
) -> Result<(), EngineError> {
    let workers = start.workers;
    let mut m = Merger {
        passed: ops.iter().map(|_| PassedWatermarks::default()).collect(),
        upto: ops.iter().map(|_| vec![WATERMARK_MIN; workers]).collect(),
        promised: ops.iter().map(|_| vec![Vec::new(); workers]).collect(),
        part_emitted: start
            .closed
            .iter()
            .map(|closed| {
                let mut v =
                    vec![WATERMARK_MIN; closed.iter().map(|(p, _)| p + 1).max().unwrap_or(0)];
                for &(p, wm) in closed {
                    v[p] = wm;
                }
                v
            })
            .chain(std::iter::repeat_with(Vec::new))
            .take(ops.len())
            .collect(),
        covered: ops.iter().map(|_| vec![0; workers]).collect(),
        ops,
        out: SinkOutbox::new(sinks, start.gate, HOLD_PER_WORKER * workers),
        emitted: start.emitted,
        live: start.live,
        link: start.link,
        stats,
        failure,
    };
    // a sink without room does not stop the merger (see `outbox`)
    while let Some(input) = m.out.next_input(&rx, failure)? {
        match input {
            MergeInput::Handover(msg) => m.handover(msg)?,
            MergeInput::LivePart {
                seq,
                ops: parts,
                arrivals,
            } => {
                tracing::trace!(seq, "live part");
                if let Some(l) = m.live.as_mut() {
                    for (op, p) in parts {
                        l.parts[op].extend(p);
                    }
                    l.arrivals.extend(arrivals);
                }
            }
            MergeInput::Live {
                seq,
                counters,
                clocks,
            } => {
                tracing::trace!(seq, "live barrier");
                m.send_barrier_rows()?;
                if let Some(l) = m.live.as_mut() {
                    l.publish(&mut m.ops, counters, clocks, stats, false)?;
                }
            }
            MergeInput::Barrier(epoch) => m.checkpoint_barrier(epoch)?,
        }
    }
    if failure.cancel.load(Ordering::SeqCst) {
        return Err(EngineError::Cancelled);
    }
    m.out.send_held(failure)?;
    // Every worker finished: the last snapshot holds every window emitted and the views'
    // final rows. It says `finished` once the outputs have them too (see
    // `LiveState::outputs_finished`).
    if let Some(l) = m.live.as_mut() {
        let clocks = clock_status(&l.clocks);
        l.publish(&mut m.ops, stats.live_counters(), clocks, stats, true)?;
    }
    Ok(())
}

/// The merger's state.
struct Merger<'a> {
    ops: Vec<MergePart>,
    /// Per operator: when the watermark first passed each point not emitted yet.
    passed: Vec<PassedWatermarks>,
    /// The sinks' channels, and what the merger holds for sinks without room.
    out: SinkOutbox,
    /// Per operator and worker: the watermark of its last hand-over.
    upto: Vec<Vec<i64>>,
    /// Per operator and worker: its hand-overs so far.
    covered: Vec<Vec<u64>>,
    /// Per operator: the watermark up to which windows were emitted.
    emitted: Vec<i64>,
    /// Per operator whose windows close per partition, per worker, per global partition:
    /// the closing watermark of its last hand-over of the partition.
    promised: Vec<Vec<Vec<i64>>>,
    /// Per operator whose windows close per partition, per global partition: up to where
    /// its windows were emitted (empty for other operators).
    part_emitted: Vec<Vec<i64>>,
    live: Option<LiveTables>,
    link: Option<CheckpointLink>,
    stats: &'a RunStats,
    failure: &'a Failure,
}

impl Merger<'_> {
    /// Merges a worker's hand-over, and emits the windows every worker closed now.
    fn handover(&mut self, msg: MergeMsg) -> Result<(), EngineError> {
        let partitioned = !msg.partitions.is_empty();
        let (mut batches, parts_rose) =
            self.partition_handover(msg.operator, msg.worker, msg.partitions)?;
        let (merge, sink_ids) = &mut self.ops[msg.operator];
        let had_partials = !msg.partials.is_empty();
        for p in msg.partials {
            merge.merge(p)?;
        }
        self.passed[msg.operator].handed_over(msg.upto);
        self.upto[msg.operator][msg.worker] = msg.upto;
        self.covered[msg.operator][msg.worker] = msg.seq;
        let emitted = &mut self.emitted[msg.operator];
        let wm = self.upto[msg.operator]
            .iter()
            .copied()
            .min()
            .unwrap_or(WATERMARK_MIN)
            .max(*emitted);
        // Windows reopened by a lagging partition are emitted as soon as they are handed over.
        if wm <= *emitted && !had_partials && !parts_rose {
            return Ok(());
        }
        if wm > *emitted || had_partials {
            *emitted = wm;
            batches.extend(merge.emit(wm)?);
        }
        let windows = merge.emits_windows();
        let mut sent = false;
        for batch in batches {
            sent |= windows && !sink_ids.is_empty();
            if windows {
                RunStats::add(
                    &self.stats.windows[msg.operator].value,
                    batch.num_rows() as u64,
                );
            }
            if let Some(l) = self.live.as_mut() {
                l.emitted(msg.operator, &batch)?;
            }
            let since = window_end_of(&batch).map(|end| self.passed[msg.operator].since(end));
            for &s in sink_ids.iter() {
                let rows = SinkMsg::Rows {
                    batch: batch.clone(),
                    since,
                    op: msg.operator,
                };
                self.out.send(s, rows, self.failure)?;
            }
        }
        self.passed[msg.operator].emitted(wm);
        if sent {
            if let Some(link) = &self.link {
                link.epochs.windows_emitted.store(true, Ordering::SeqCst);
            }
        }
        let partitions = partitioned.then(|| Arc::new(self.part_emitted[msg.operator].clone()));
        for &s in sink_ids.iter() {
            let upto = SinkMsg::Upto {
                op: msg.operator,
                upto: wm,
                covered: self.covered[msg.operator].clone(),
                partitions: partitions.clone(),
            };
            self.out.send(s, upto, self.failure)?;
        }
        Ok(())
    }

    /// Merges a worker's hand-overs of single partitions (an operator whose windows close
    /// per partition) and emits each partition's windows every worker has closed now; says
    /// whether any partition's emitted watermark rose.
    fn partition_handover(
        &mut self,
        op: usize,
        worker: usize,
        flushes: Vec<PartitionFlush>,
    ) -> Result<(Vec<RecordBatch>, bool), EngineError> {
        let (mut out, mut rose) = (Vec::new(), false);
        for f in flushes {
            let p = f.partition;
            let merge = &mut self.ops[op].0;
            for partial in f.partials {
                merge.merge_partition(p, partial)?;
            }
            let promised = &mut self.promised[op];
            for w in promised.iter_mut().filter(|w| w.len() <= p) {
                w.resize(p + 1, WATERMARK_MIN);
            }
            promised[worker][p] = promised[worker][p].max(f.upto);
            let every = promised.iter().map(|w| w[p]).min().unwrap_or(WATERMARK_MIN);
            let emitted = &mut self.part_emitted[op];
            if emitted.len() <= p {
                emitted.resize(p + 1, WATERMARK_MIN);
            }
            if every > emitted[p] {
                emitted[p] = every;
                rose = true;
                out.extend(merge.emit_partition(p, every)?);
            }
        }
        Ok((one_batch_per_window(out)?, rose))
    }

    /// At checkpoint `epoch`'s barrier: sends the views' changes, the held windows to the
    /// coordinator, and the barrier to the sinks.
    fn checkpoint_barrier(&mut self, epoch: u64) -> Result<(), EngineError> {
        // (a clone: sending the views' changes needs the merger; barriers are rare)
        let link = self
            .link
            .clone()
            .ok_or_else(|| EngineError::Internal("a barrier without checkpointing".into()))?;
        self.send_barrier_rows()?;
        let mut held = Vec::with_capacity(self.ops.len());
        for (i, (merge, _)) in self.ops.iter_mut().enumerate() {
            held.push((
                merge.snapshot()?,
                self.emitted[i],
                self.part_emitted[i].clone(),
            ));
        }
        let retained = match self.live.as_mut() {
            Some(l) => l.retained.iter_mut().map(unsaved_part).collect(),
            None => Vec::new(),
        };
        link.parts
            .send(Part::Merger {
                epoch,
                ops: held,
                retained,
                counters: self.stats.merger_counters(),
            })
            .map_err(|_| self.failure.closed("the checkpoint coordinator"))?;
        // held behind the sink's rows when it has no room: the checkpoint completes only
        // once the sink pre-committed them
        for s in 0..self.out.sinks() {
            self.out.send(s, SinkMsg::Barrier(epoch), self.failure)?;
        }
        Ok(())
    }

    /// Sends every operator's barrier rows (views' changed keys) to its sinks.
    fn send_barrier_rows(&mut self) -> Result<(), EngineError> {
        for (op, (merge, sink_ids)) in self.ops.iter_mut().enumerate() {
            if sink_ids.is_empty() {
                continue;
            }
            for batch in merge.barrier_rows()? {
                for &s in sink_ids.iter() {
                    let rows = SinkMsg::Rows {
                        batch: batch.clone(),
                        since: None,
                        op,
                    };
                    self.out.send(s, rows, self.failure)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::PassedWatermarks;

    #[test]
    fn a_window_is_complete_from_the_first_hand_over_that_passed_its_end() {
        let mut p = PassedWatermarks::default();
        p.handed_over(10);
        let t10 = p.seen[0].1;
        p.handed_over(5); // another worker, behind: not a new point
        p.handed_over(30);
        let t30 = p.seen[1].1;
        assert_eq!(p.seen.len(), 2);
        assert_eq!(p.since(10), t10);
        assert_eq!(p.since(20), t30);
        assert_eq!(p.since(8), t10);
        p.emitted(10);
        assert_eq!(
            p.seen.len(),
            1,
            "points up to the emitted watermark are dropped"
        );
        assert_eq!(p.since(25), t30);
        assert!(p.since(40) >= t30, "not passed yet: now");
    }
}
