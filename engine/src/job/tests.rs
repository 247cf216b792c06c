//! Tests of the runtime's stages, against fake readers, operators and outputs: the engine
//! crate does not depend on the real ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, unbounded, Receiver};

use super::channels::{DeadMsg, Dispatcher, Failure, MergeInput, MergeMsg, SinkMsg, WorkerMsg};
use super::coordinator::Coordinator;
use super::merger::{merger_loop, MergerStart};
use super::outputs::{RejectMsg, SinkThread};
use super::reader::read_source;
use super::worker::{worker_loop, ExitBarrier, WorkerCtx};
use super::*;
use crate::checkpoint::{CheckpointStore, Epochs, Part};
use crate::clock::{WATERMARK_END, WATERMARK_MIN};
use crate::dead_letter::{DeadLetter, ErrorInfo, PartitionInfo, Reason, RejectedRow};
use crate::events::{Chunk, ChunkData, Decoded, EventBatch, Messages, Resume, SharedBytes};
use crate::live::{LiveKind, LiveSpec, LiveState, LiveTableDef};
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use crate::stats::RunStats;
use crate::EngineError;

/// Windows of the fake operator: `[start, start + WINDOW)`.
const WINDOW: i64 = 10;

fn partition(id: usize) -> Arc<PartitionInfo> {
    Arc::new(PartitionInfo {
        source: Arc::from("events"),
        id,
        state_id: id,
        number: id as u32,
        topic: None,
        file: None,
    })
}

fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]))
}

/// A chunk of events with event times `times`, the `seq`-th of partition `id`, at `offset`.
fn events_chunk(id: usize, seq: u64, offset: u64, times: &[i64]) -> Chunk {
    let batch = RecordBatch::try_new(
        event_schema(),
        vec![Arc::new(Int64Array::from(times.to_vec())) as ArrayRef],
    )
    .unwrap();
    let next = offset + times.len() as u64;
    Chunk {
        source: 0,
        partition: partition(id),
        seq,
        first_offset: offset,
        resume: Resume::at(next),
        data: ChunkData::Events(EventBatch {
            batch,
            event_time: times.to_vec(),
            offsets: (offset..next).collect(),
            raw: None,
        }),
    }
}

fn end_chunk(id: usize, seq: u64, offset: u64) -> Chunk {
    Chunk {
        source: 0,
        partition: partition(id),
        seq,
        first_offset: offset,
        resume: Resume::at(offset),
        data: ChunkData::End,
    }
}

/// Partition `id`'s chunks: one per slice of `times`, then its end.
fn partition_chunks(id: usize, chunks: &[&[i64]]) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (seq, times) in chunks.iter().enumerate() {
        out.push(events_chunk(id, seq as u64, offset, times));
        offset += times.len() as u64;
    }
    out.push(end_chunk(id, chunks.len() as u64, offset));
    out
}

/// Yields the chunks it was given, then ends.
struct FakeReader {
    chunks: VecDeque<Chunk>,
    finished: Arc<AtomicBool>,
}

impl FakeReader {
    fn new(chunks: Vec<Chunk>) -> Self {
        FakeReader {
            chunks: chunks.into(),
            finished: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl PartitionReader for FakeReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        if ctx.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self.chunks.pop_front())
    }
    fn finish(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// One partition that never ends: a chunk of one event every few milliseconds, event time
/// going up by a window each, until the job stops.
struct EndlessReader {
    seq: u64,
}

impl PartitionReader for EndlessReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        if ctx.stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
        let seq = self.seq;
        self.seq += 1;
        Ok(Some(events_chunk(0, seq, seq, &[seq as i64 * WINDOW])))
    }
}

/// Chunks here are decoded already.
struct NoDecode;

impl Decode for NoDecode {
    fn decode(&self, _chunk: &Chunk, _lines: &SharedBytes) -> Decoded {
        unreachable!("the fake sources give events")
    }
    fn decode_messages(&self, _chunk: &Chunk, _messages: &Messages) -> Decoded {
        unreachable!("the fake sources give events")
    }
}

fn window_of(t: i64) -> i64 {
    t.div_euclid(WINDOW) * WINDOW
}

fn partial(window_start: i64, count: i64) -> PartialWindow {
    PartialWindow {
        window_start,
        keys: vec![Arc::new(Int64Array::from(vec![0i64])) as ArrayRef],
        states: vec![Arc::new(Int64Array::from(vec![count])) as ArrayRef],
    }
}

fn count_of(p: &PartialWindow) -> i64 {
    p.states[0]
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// Counts rows per tumbling event-time window of [`WINDOW`] ms; late rows are dead letters.
#[derive(Default)]
struct CountWorker {
    open: BTreeMap<i64, i64>,
    flushed: i64,
}

impl WorkerOperator for CountWorker {
    fn process(
        &mut self,
        partition: &Arc<PartitionInfo>,
        events: &EventBatch,
        row_watermarks: &[i64],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, EngineError> {
        let mut late = 0;
        for (i, &t) in events.event_time.iter().enumerate() {
            if self.closes_at(t) <= row_watermarks[i] {
                late += 1;
                dead.push(DeadLetter {
                    partition: partition.clone(),
                    offset: Some(events.offsets[i]),
                    reason: Reason::Late,
                    error: ErrorInfo::new("late", format!("event time {t}")),
                    raw: None,
                    trace: Default::default(),
                });
                continue;
            }
            *self.open.entry(window_of(t)).or_default() += 1;
        }
        Ok(late)
    }
    fn flush(&mut self, watermark: i64) -> Result<Vec<PartialWindow>, EngineError> {
        self.flushed = self.flushed.max(watermark);
        let closed: Vec<i64> = self
            .open
            .keys()
            .copied()
            .filter(|&s| s.saturating_add(WINDOW) <= watermark)
            .collect();
        Ok(closed
            .into_iter()
            .map(|s| partial(s, self.open.remove(&s).unwrap_or(0)))
            .collect())
    }
    fn processing_time(&self) -> bool {
        false
    }
    fn closes_at(&self, event_time: i64) -> i64 {
        window_of(event_time) + WINDOW
    }
    fn snapshot(&mut self) -> Result<(Vec<PartialWindow>, i64), EngineError> {
        let open = self.open.iter().map(|(&s, &c)| partial(s, c)).collect();
        Ok((open, self.flushed))
    }
    fn restore(&mut self, partials: Vec<PartialWindow>, flushed: i64) -> Result<(), EngineError> {
        for p in &partials {
            *self.open.entry(p.window_start).or_default() += count_of(p);
        }
        self.flushed = flushed;
        Ok(())
    }
}

fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("window_start", DataType::Int64, false),
        Field::new(
            "window_end",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("count", DataType::Int64, false),
    ]))
}

/// Merges [`CountWorker`]s' partial counts; one batch per window emitted.
#[derive(Default)]
struct CountMerge {
    held: BTreeMap<i64, i64>,
}

fn window_rows(windows: &[(i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        output_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(windows.iter().map(|w| w.0))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                windows.iter().map(|w| w.0 + WINDOW),
            )),
            Arc::new(Int64Array::from_iter_values(windows.iter().map(|w| w.1))),
        ],
    )
    .unwrap()
}

impl MergeOperator for CountMerge {
    fn merge(&mut self, partial: PartialWindow) -> Result<(), EngineError> {
        *self.held.entry(partial.window_start).or_default() += count_of(&partial);
        Ok(())
    }
    fn emit(&mut self, watermark: i64) -> Result<Vec<RecordBatch>, EngineError> {
        let closed: Vec<i64> = self
            .held
            .keys()
            .copied()
            .filter(|&s| s.saturating_add(WINDOW) <= watermark)
            .collect();
        Ok(closed
            .into_iter()
            .map(|s| window_rows(&[(s, self.held.remove(&s).unwrap_or(0))]))
            .collect())
    }
    fn snapshot(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        Ok(self.held.iter().map(|(&s, &c)| partial(s, c)).collect())
    }
    fn live(&mut self, workers: Vec<PartialWindow>) -> Result<Vec<RecordBatch>, EngineError> {
        let mut all = self.held.clone();
        for p in &workers {
            *all.entry(p.window_start).or_default() += count_of(p);
        }
        let rows: Vec<(i64, i64)> = all.into_iter().collect();
        Ok(vec![window_rows(&rows)])
    }
}

/// What a recording output was asked, in order.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Recover(Option<u64>),
    /// Rows written: (window start, count), or a dead letter's (offset, reason).
    Write(Vec<(i64, i64)>),
    Flush,
    PreCommit(u64),
    Commit(u64),
    Finish,
}

type Calls = Arc<Mutex<Vec<Call>>>;

fn windows_in(batch: &RecordBatch) -> Vec<(i64, i64)> {
    let col = |i: usize| {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    };
    col(0).into_iter().zip(col(2)).collect()
}

/// A sink that records its calls; it can fail its writes, or refuse rows.
#[derive(Default)]
struct RecordingSink {
    calls: Calls,
    fail_writes: bool,
    refuse_every_row: bool,
    refused: Vec<RejectedRow>,
}

impl Sink for RecordingSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if self.fail_writes {
            return Err(EngineError::Internal("the disk is full".into()));
        }
        if self.refuse_every_row {
            for (start, _) in windows_in(batch) {
                self.refused.push(RejectedRow {
                    raw: start.to_string().into_bytes(),
                    error: ErrorInfo::new("too_big", "over the size limit"),
                });
            }
        }
        self.calls
            .lock()
            .unwrap()
            .push(Call::Write(windows_in(batch)));
        Ok(())
    }
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.calls.lock().unwrap().push(Call::Flush);
        Ok(true)
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        self.calls.lock().unwrap().push(Call::Finish);
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.calls.lock().unwrap().push(Call::PreCommit(epoch));
        Ok(serde_json::json!({ "epoch": epoch }))
    }
    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        self.calls.lock().unwrap().push(Call::Commit(epoch));
        Ok(())
    }
    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Recover(from.map(|f| f.0)));
        Ok(())
    }
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.refused)
    }
}

/// A dead-letter output that records its calls and its records.
#[derive(Default)]
struct RecordingDeadLetters {
    calls: Calls,
    records: Arc<Mutex<Vec<DeadLetter>>>,
}

impl DeadLetterSink for RecordingDeadLetters {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        self.records.lock().unwrap().extend(records.iter().cloned());
        let written = records
            .iter()
            .map(|r| (r.offset.map_or(-1, |o| o as i64), r.reason as i64))
            .collect();
        self.calls.lock().unwrap().push(Call::Write(written));
        Ok(())
    }
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.calls.lock().unwrap().push(Call::Flush);
        Ok(true)
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        self.calls.lock().unwrap().push(Call::Finish);
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.calls.lock().unwrap().push(Call::PreCommit(epoch));
        Ok(serde_json::Value::Null)
    }
    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        self.calls.lock().unwrap().push(Call::Commit(epoch));
        Ok(())
    }
    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Recover(from.map(|f| f.0)));
        Ok(())
    }
}

/// A job of one source read by `reader` (with `partitions`), one counting operator and one
/// sink, at `parallelism`.
fn job(
    reader: Box<dyn PartitionReader>,
    partitions: usize,
    sink: RecordingSink,
    dead: RecordingDeadLetters,
    parallelism: usize,
) -> JobSpec {
    JobSpec {
        sources: vec![SourceSpec {
            name: "events".into(),
            reader,
            decoder: Arc::new(NoDecode),
            partitions,
            partition_keys: (0..partitions).map(|p| p.to_string()).collect(),
            max_out_of_orderness_ms: 0,
            max_future_ms: None,
        }],
        operators: vec![OperatorSpec {
            name: "counts".into(),
            source: 0,
            workers: (0..parallelism)
                .map(|_| Box::new(CountWorker::default()) as Box<dyn WorkerOperator>)
                .collect(),
            merge: Box::new(CountMerge::default()),
            sinks: vec![0],
        }],
        sinks: vec![SinkSpec {
            name: "out".into(),
            sink: Box::new(sink),
            retry: RetryPolicy::default(),
        }],
        dead_letter: Box::new(dead),
        dead_letter_retry: RetryPolicy::default(),
        parallelism,
        checkpoint: None,
        live: None,
    }
}

fn run_stats() -> Arc<RunStats> {
    Arc::new(RunStats::new(
        &["events".to_string()],
        &["counts".to_string()],
        &["out".to_string()],
    ))
}

/// Runs `spec` on a thread of its own; fails the test if it takes longer than `limit`.
fn run_within(
    spec: JobSpec,
    stats: Arc<RunStats>,
    stop: StopHandle,
    limit: Duration,
) -> Result<RunReport, EngineError> {
    let (tx, rx) = bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(run(spec, stats, stop));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the run did not end within {limit:?}"))
}

fn written_windows(calls: &Calls) -> Vec<(i64, i64)> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| match c {
            Call::Write(w) => Some(w.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Two partitions read by 2 workers: 0 has events at 0, 5, 25 and then a late one at 3;
/// 1 has 12, 14, 31.
fn two_partitions() -> Vec<Chunk> {
    let p0 = partition_chunks(0, &[&[0, 5], &[25], &[3]]);
    let p1 = partition_chunks(1, &[&[12, 14], &[31]]);
    // interleaved, each partition in its order
    let mut out = Vec::new();
    let (mut a, mut b) = (p0.into_iter(), p1.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

#[test]
fn windows_are_emitted_in_order_once_every_worker_closed_them() {
    let sink = RecordingSink::default();
    let calls = sink.calls.clone();
    let dead = RecordingDeadLetters::default();
    let records = dead.records.clone();
    let reader = FakeReader::new(two_partitions());
    let finished = reader.finished.clone();
    let stats = run_stats();
    run_within(
        job(Box::new(reader), 2, sink, dead, 2),
        stats.clone(),
        StopHandle::new(),
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(
        written_windows(&calls),
        vec![(0, 2), (10, 2), (20, 1), (30, 1)]
    );
    assert_eq!(calls.lock().unwrap().last(), Some(&Call::Finish));
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].reason,
            records[0].offset,
            records[0].partition.id
        ),
        (Reason::Late, Some(3), 0)
    );
    assert_eq!(RunStats::get(&stats.records_in), 7);
    assert_eq!(stats.late_total(), 1);
    assert_eq!(RunStats::get(&stats.rows_committed[0].value), 4);
    assert!(
        finished.load(Ordering::SeqCst),
        "the reader finishes once every output did"
    );
}

#[test]
fn a_failing_sink_stops_the_job_with_its_error() {
    let sink = RecordingSink {
        fail_writes: true,
        ..Default::default()
    };
    let spec = job(
        Box::new(EndlessReader { seq: 0 }),
        1,
        sink,
        RecordingDeadLetters::default(),
        2,
    );
    let err = run_within(
        spec,
        run_stats(),
        StopHandle::new(),
        Duration::from_secs(20),
    )
    .unwrap_err();
    match err {
        EngineError::Sink { sink, message } => {
            assert_eq!(sink, "out");
            assert!(message.contains("the disk is full"), "{message}");
        }
        other => panic!("not the sink's error: {other}"),
    }
}

#[test]
fn the_stop_handle_ends_a_run() {
    let sink = RecordingSink::default();
    let calls = sink.calls.clone();
    let spec = job(
        Box::new(EndlessReader { seq: 0 }),
        1,
        sink,
        RecordingDeadLetters::default(),
        2,
    );
    let stop = StopHandle::new();
    let stopper = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stopper.stop();
    });
    let started = Instant::now();
    run_within(spec, run_stats(), stop, Duration::from_secs(20)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let windows = written_windows(&calls);
    assert!(!windows.is_empty(), "closed windows are written");
    let starts: Vec<i64> = windows.iter().map(|w| w.0).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
    assert_eq!(calls.lock().unwrap().last(), Some(&Call::Finish));
}

#[test]
fn a_live_run_on_a_bounded_input_ends_promptly() {
    let state = Arc::new(LiveState::new(
        "test",
        vec![LiveTableDef::new(
            "counts",
            LiveKind::Window {
                retain_ms: 1_000_000,
            },
            &output_schema(),
            Vec::new(),
        )],
    ));
    let interval = Duration::from_secs(30);
    let mut spec = job(
        Box::new(FakeReader::new(two_partitions())),
        2,
        RecordingSink::default(),
        RecordingDeadLetters::default(),
        2,
    );
    spec.live = Some(LiveSpec {
        state: state.clone(),
        interval,
    });
    let report = run_within(spec, run_stats(), StopHandle::new(), interval).unwrap();
    assert!(
        report.elapsed < Duration::from_secs(5),
        "took {:?} with a live interval of {interval:?}",
        report.elapsed
    );
    let snapshot = state.current();
    assert!(snapshot.finished);
    let rows: usize = snapshot.tables[0].iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 4, "the emitted windows are retained");
}

fn checkpointed(spec: &mut JobSpec, dir: &std::path::Path) {
    spec.checkpoint = Some(crate::checkpoint::CheckpointSpec {
        store: Arc::new(CheckpointStore::open(dir.to_str().unwrap()).unwrap()),
        interval: Duration::from_millis(20),
        keep: 2,
        pipeline: "test".into(),
        fingerprint: BTreeMap::new(),
        restored: None,
        ownership: None,
    });
}

/// The epochs an output pre-committed and committed, checking the lifecycle's order:
/// recovered first, each commit after its pre-commit and in order, finished last.
fn lifecycle(calls: &[Call]) -> (Vec<u64>, Vec<u64>) {
    assert_eq!(calls.first(), Some(&Call::Recover(None)), "{calls:?}");
    assert_eq!(calls.last(), Some(&Call::Finish), "{calls:?}");
    let mut pre = Vec::new();
    let mut committed: Vec<u64> = Vec::new();
    for c in calls {
        match c {
            Call::PreCommit(e) => pre.push(*e),
            Call::Commit(e) => {
                assert!(
                    pre.contains(e),
                    "commit {e} before its pre-commit: {calls:?}"
                );
                assert!(
                    committed.last() < Some(e),
                    "commits out of order: {calls:?}"
                );
                committed.push(*e);
            }
            Call::Flush => panic!("a checkpointed output is not flushed: {calls:?}"),
            _ => {}
        }
    }
    (pre, committed)
}

#[test]
fn checkpointed_outputs_commit_each_epoch_after_pre_committing_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink {
        refuse_every_row: true,
        ..Default::default()
    };
    let calls = sink.calls.clone();
    let dead = RecordingDeadLetters::default();
    let dead_calls = dead.calls.clone();
    let records = dead.records.clone();
    let mut spec = job(
        Box::new(FakeReader::new(two_partitions())),
        2,
        sink,
        dead,
        2,
    );
    checkpointed(&mut spec, dir.path());
    let stats = run_stats();
    run_within(
        spec,
        stats.clone(),
        StopHandle::new(),
        Duration::from_secs(20),
    )
    .unwrap();
    let (pre, committed) = lifecycle(&calls.lock().unwrap());
    let (dead_pre, dead_committed) = lifecycle(&dead_calls.lock().unwrap());
    assert!(!pre.is_empty());
    assert_eq!(pre, dead_pre, "both outputs take part in every checkpoint");
    assert_eq!(committed.last(), pre.last(), "the last epoch is committed");
    assert_eq!(dead_committed.last(), dead_pre.last());
    assert_eq!(
        written_windows(&calls),
        vec![(0, 2), (10, 2), (20, 1), (30, 1)]
    );
    // every refused row reached the dead letters, with the late record
    let records = records.lock().unwrap();
    let mut refused: Vec<Vec<u8>> = records
        .iter()
        .filter(|r| r.reason == Reason::Rejected)
        .filter_map(|r| r.raw.clone())
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        vec![
            b"0".to_vec(),
            b"10".to_vec(),
            b"20".to_vec(),
            b"30".to_vec()
        ]
    );
    assert_eq!(
        records.iter().filter(|r| r.reason == Reason::Late).count(),
        1
    );
    let last = *pre.last().unwrap();
    assert_eq!(
        stats.checkpoints.last_epoch.load(Ordering::SeqCst),
        last,
        "the final checkpoint is complete"
    );
    assert_eq!(RunStats::get(&stats.rows_committed[0].value), 4);
}

#[test]
fn the_coordinator_completes_a_checkpoint_only_when_every_part_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let (worker_tx, worker_rx) = bounded::<WorkerMsg>(4);
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: vec![worker_tx],
        cut: vec![Some(Resume::at(7))],
        // every reader ended: the coordinator takes the final checkpoint at once
        readers_left: 0,
        checkpointing: true,
    }));
    let (parts_tx, parts_rx) = unbounded::<Part>();
    let epochs = Arc::new(Epochs::default());
    let mut spec = job(
        Box::new(FakeReader::new(Vec::new())),
        1,
        RecordingSink::default(),
        RecordingDeadLetters::default(),
        1,
    );
    checkpointed(&mut spec, dir.path());
    let coordinator = Coordinator {
        spec: spec.checkpoint.take().unwrap(),
        dispatcher: dispatcher.clone(),
        parts: parts_rx,
        // one worker, worker 0's clocks, the merger, no sink, the dead letters
        expected: 4,
        epochs: epochs.clone(),
        progress: Arc::new(Progress::new(1, &[0])),
        stats: run_stats(),
        operator_names: vec!["counts".into()],
        partition_keys: vec![("events".into(), "0".into())],
        epoch: 0,
        handover: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let failure = Failure::new();
    let f = failure.clone();
    let done = std::thread::spawn(move || coordinator.run(&f));
    // the barrier stands in the worker's queue, which ends after it
    let epoch = match worker_rx.recv_timeout(Duration::from_secs(5)).unwrap() {
        WorkerMsg::Barrier(e) => e,
        _ => panic!("not a barrier"),
    };
    assert!(worker_rx.recv_timeout(Duration::from_secs(5)).is_err());
    let parts = vec![
        Part::Worker {
            epoch,
            ops: vec![(0, vec![partial(20, 1)], 20)],
        },
        Part::Leader {
            epoch,
            newest: vec![WATERMARK_END],
            counters: vec![("records_in".into(), 7)],
        },
        Part::Merger {
            epoch,
            ops: vec![(vec![partial(10, 2)], 20)],
            counters: Vec::new(),
        },
        Part::DeadLetter {
            epoch,
            info: serde_json::Value::Null,
            counters: Vec::new(),
        },
    ];
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        parts_tx.send(part).unwrap();
        if i < last {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(epochs.completed.load(Ordering::SeqCst), 0, "after part {i}");
            assert!(!done.is_finished());
        }
    }
    done.join().unwrap().unwrap();
    assert_eq!(epochs.completed.load(Ordering::SeqCst), epoch);
    let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
    let manifest = store.latest().unwrap().unwrap();
    let restored = store.load(&manifest).unwrap();
    assert_eq!(restored.manifest.epoch, epoch);
    assert_eq!(restored.operators[0].len(), 2);
    assert!(restored.manifest.finished);
}

#[test]
fn a_reader_deals_chunks_round_robin_and_ends_the_workers_input() {
    let (tx0, rx0) = bounded::<WorkerMsg>(8);
    let (tx1, rx1) = bounded::<WorkerMsg>(8);
    let dispatcher = Mutex::new(Dispatcher {
        next: 0,
        senders: vec![tx0, tx1],
        cut: vec![None],
        readers_left: 1,
        checkpointing: false,
    });
    let reader = FakeReader::new(partition_chunks(0, &[&[1], &[2], &[3]]));
    let finished = reader.finished.clone();
    let progress = Arc::new(Progress::new(1, &[1]));
    // the outputs are done: the reader finishes right after its input
    progress.set_finished();
    let ctx = ReaderContext::new(
        Arc::new(crate::clock::Clocks::new(&[(1, 0)])),
        Arc::new(AtomicBool::new(false)),
        progress,
        run_stats(),
    );
    read_source(Box::new(reader), &dispatcher, &ctx, &Failure::new()).unwrap();
    let seqs = |rx: Receiver<WorkerMsg>| -> Vec<u64> {
        rx.try_iter()
            .map(|m| match m {
                WorkerMsg::Chunk(c) => c.seq,
                _ => panic!("not a chunk"),
            })
            .collect()
    };
    let d = dispatcher.lock().unwrap();
    assert!(
        d.senders.is_empty(),
        "the last reader ends the workers' input"
    );
    assert_eq!(d.cut[0], Some(Resume::at(3)));
    drop(d);
    assert_eq!(seqs(rx0), vec![0, 2]);
    assert_eq!(seqs(rx1), vec![1, 3]);
    assert!(finished.load(Ordering::SeqCst));
}

fn handover(worker: usize, seq: u64, partials: Vec<PartialWindow>, upto: i64) -> MergeInput {
    MergeInput::Handover(MergeMsg {
        seq,
        operator: 0,
        worker,
        partials,
        upto,
    })
}

#[test]
fn the_merger_emits_a_window_once_every_worker_handed_it_over() {
    let (tx, rx) = unbounded::<MergeInput>();
    let (sink_tx, sink_rx) = unbounded::<SinkMsg>();
    let stats = run_stats();
    let failure = Failure::new();
    let merger = {
        let stats = stats.clone();
        let failure = failure.clone();
        std::thread::spawn(move || {
            merger_loop(
                rx,
                vec![(
                    Box::new(CountMerge::default()) as Box<dyn MergeOperator>,
                    vec![0],
                )],
                vec![sink_tx],
                MergerStart {
                    workers: 2,
                    emitted: vec![WATERMARK_MIN],
                    link: None,
                    live: None,
                },
                &stats,
                &failure,
            )
        })
    };
    let next = || sink_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // worker 0 closed [0, 10) and [10, 20); worker 1 has not handed anything over yet:
    // nothing is emitted
    tx.send(handover(0, 1, vec![partial(0, 1), partial(10, 1)], 20))
        .unwrap();
    match next() {
        SinkMsg::Upto { upto, covered, .. } => {
            assert_eq!((upto, covered), (WATERMARK_MIN, vec![1, 0]))
        }
        _ => panic!("not an upto"),
    }
    // worker 1 closed [0, 10) only: only it is emitted, with both workers' rows
    tx.send(handover(1, 1, vec![partial(0, 2)], 10)).unwrap();
    match next() {
        SinkMsg::Rows(b) => assert_eq!(windows_in(&b), vec![(0, 3)]),
        _ => panic!("not rows"),
    }
    match next() {
        SinkMsg::Upto { op, upto, covered } => assert_eq!((op, upto, covered), (0, 10, vec![1, 1])),
        _ => panic!("not an upto"),
    }
    tx.send(handover(1, 2, vec![partial(10, 4)], WATERMARK_END))
        .unwrap();
    match next() {
        SinkMsg::Rows(b) => assert_eq!(windows_in(&b), vec![(10, 5)]),
        _ => panic!("not rows"),
    }
    match next() {
        SinkMsg::Upto { upto, .. } => assert_eq!(upto, 20),
        _ => panic!("not an upto"),
    }
    drop(tx);
    merger.join().unwrap().unwrap();
    assert!(sink_rx.try_recv().is_err());
    assert_eq!(stats.windows_total(), 2);
}

#[test]
fn a_worker_hands_windows_over_in_order_and_dead_letters_late_rows() {
    let (tx, rx) = unbounded::<WorkerMsg>();
    let (merge_tx, merge_rx) = unbounded::<MergeInput>();
    let (dead_tx, dead_rx) = unbounded::<DeadMsg>();
    let ctx = WorkerCtx {
        index: 0,
        decoders: Arc::new(vec![Arc::new(NoDecode) as Arc<dyn Decode>]),
        max_future: Arc::new(vec![None]),
        clocks: Arc::new(crate::clock::Clocks::new(&[(1, 0)])),
        stats: run_stats(),
        dead_tx,
        merge_tx,
        failure: Failure::new(),
        op_sources: vec![0],
        input_done: Arc::new(ExitBarrier::new(1)),
        progress: Arc::new(Progress::new(1, &[1])),
        link: None,
        rendezvous: None,
    };
    for chunk in partition_chunks(0, &[&[0, 5], &[25], &[3]]) {
        tx.send(WorkerMsg::Chunk(chunk)).unwrap();
    }
    drop(tx);
    let ops: Vec<(usize, Box<dyn WorkerOperator>)> = vec![(0, Box::new(CountWorker::default()))];
    worker_loop(rx, ops, ctx).unwrap();
    let mut uptos = Vec::new();
    let mut windows = Vec::new();
    for (i, m) in merge_rx.try_iter().enumerate() {
        let MergeInput::Handover(h) = m else {
            panic!("not a hand-over");
        };
        assert_eq!((h.seq, h.operator, h.worker), (i as u64 + 1, 0, 0));
        uptos.push(h.upto);
        windows.extend(h.partials.iter().map(|p| (p.window_start, count_of(p))));
    }
    assert_eq!(uptos, vec![5, 25, WATERMARK_END]);
    assert_eq!(windows, vec![(0, 2), (20, 1)]);
    let dead: Vec<DeadLetter> = dead_rx
        .try_iter()
        .flat_map(|m| match m {
            DeadMsg::Records(r) => r,
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].reason, dead[0].offset), (Reason::Late, Some(3)));
}

#[test]
fn a_sink_thread_without_checkpoints_flushes_to_report_progress_and_forwards_refused_rows() {
    let sink = RecordingSink {
        refuse_every_row: true,
        ..Default::default()
    };
    let calls = sink.calls.clone();
    let stats = run_stats();
    let (tx, rx) = unbounded::<SinkMsg>();
    let (rejects_tx, rejects_rx) = unbounded::<RejectMsg>();
    let thread = SinkThread {
        index: 0,
        name: "out".into(),
        sink: Box::new(sink),
        feeds: vec![(0, 0)],
        stats: stats.clone(),
        progress: Arc::new(Progress::new(1, &[1])),
        link: None,
        cancel: Arc::new(AtomicBool::new(false)),
        retry: RetryPolicy::default(),
        rejects: rejects_tx,
        epoch: 1,
        rejected_from: partition(usize::MAX),
    };
    let done = std::thread::spawn(move || thread.run(rx));
    tx.send(SinkMsg::Rows(window_rows(&[(0, 2), (10, 1)])))
        .unwrap();
    // nothing to report yet: no flush
    std::thread::sleep(Duration::from_millis(400));
    assert!(!calls.lock().unwrap().contains(&Call::Flush));
    tx.send(SinkMsg::Upto {
        op: 0,
        upto: 20,
        covered: vec![1],
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !calls.lock().unwrap().contains(&Call::Flush) {
        assert!(Instant::now() < deadline, "no flush");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(tx);
    done.join().unwrap().unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            Call::Write(vec![(0, 2), (10, 1)]),
            Call::Flush,
            Call::Finish
        ]
    );
    assert_eq!(RunStats::get(&stats.rows_committed[0].value), 2);
    let refused: Vec<(u64, usize)> = rejects_rx
        .try_iter()
        .map(|m| match m {
            RejectMsg::Rows { epoch, records } => (epoch, records.len()),
            RejectMsg::Passed { .. } => panic!("no barrier was passed"),
        })
        .collect();
    assert_eq!(refused, vec![(1, 2)]);
}
