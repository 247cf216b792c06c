//! Fake readers, operators and outputs the tests run jobs with, and helpers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::bounded;

use crate::checkpoint::CheckpointStore;
use crate::dead_letter::{DeadLetter, ErrorInfo, PartitionInfo, Reason, RejectedRow};
use crate::events::{Chunk, ChunkData, Decoded, EventBatch, Messages, Resume, SharedBytes};
use crate::job::*;
use crate::retry::RetryPolicy;
use crate::stats::RunStats;
use crate::EngineError;

/// Windows of the fake operator: `[start, start + WINDOW)`.
pub(super) const WINDOW: i64 = 10;

pub(super) fn partition(id: usize) -> Arc<PartitionInfo> {
    Arc::new(PartitionInfo {
        source: Arc::from("events"),
        id,
        state_id: id,
        number: id as u32,
        topic: None,
        file: None,
    })
}

pub(super) fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]))
}

/// A chunk of events with event times `times`, the `seq`-th of partition `id`, at `offset`.
pub(super) fn events_chunk(id: usize, seq: u64, offset: u64, times: &[i64]) -> Chunk {
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

pub(super) fn end_chunk(id: usize, seq: u64, offset: u64) -> Chunk {
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
pub(super) fn partition_chunks(id: usize, chunks: &[&[i64]]) -> Vec<Chunk> {
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
pub(super) struct FakeReader {
    pub(super) chunks: VecDeque<Chunk>,
    pub(super) finished: Arc<AtomicBool>,
}

impl FakeReader {
    pub(super) fn new(chunks: Vec<Chunk>) -> Self {
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
pub(super) struct EndlessReader {
    pub(super) seq: u64,
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
pub(super) struct NoDecode;

impl Decode for NoDecode {
    fn decode(&self, _chunk: &Chunk, _lines: &SharedBytes) -> Decoded {
        unreachable!("the fake sources give events")
    }
    fn decode_messages(&self, _chunk: &Chunk, _messages: &Messages) -> Decoded {
        unreachable!("the fake sources give events")
    }
}

pub(super) fn window_of(t: i64) -> i64 {
    t.div_euclid(WINDOW) * WINDOW
}

pub(super) fn partial(window_start: i64, count: i64) -> PartialWindow {
    PartialWindow {
        window_start,
        keys: vec![Arc::new(Int64Array::from(vec![0i64])) as ArrayRef],
        states: vec![Arc::new(Int64Array::from(vec![count])) as ArrayRef],
    }
}

pub(super) fn count_of(p: &PartialWindow) -> i64 {
    p.states[0]
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// Counts rows per tumbling event-time window of [`WINDOW`] ms; late rows are dead letters.
#[derive(Default)]
pub(super) struct CountWorker {
    pub(super) open: BTreeMap<i64, i64>,
    pub(super) flushed: i64,
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

pub(super) fn output_schema() -> SchemaRef {
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
pub(super) struct CountMerge {
    pub(super) held: BTreeMap<i64, i64>,
}

pub(super) fn window_rows(windows: &[(i64, i64)]) -> RecordBatch {
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
pub(super) enum Call {
    Recover(Option<u64>),
    /// Rows written: (window start, count), or a dead letter's (offset, reason).
    Write(Vec<(i64, i64)>),
    Flush,
    PreCommit(u64),
    Commit(u64),
    Finish,
}

pub(super) type Calls = Arc<Mutex<Vec<Call>>>;

pub(super) fn windows_in(batch: &RecordBatch) -> Vec<(i64, i64)> {
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
pub(super) struct RecordingSink {
    pub(super) calls: Calls,
    pub(super) fail_writes: bool,
    /// Every write panics (a defect in a connector).
    pub(super) panic_writes: bool,
    pub(super) refuse_every_row: bool,
    pub(super) refused: Vec<RejectedRow>,
    /// While set, every call fails as a full disk does (retried by the retry policy).
    pub(super) down: Option<Arc<AtomicBool>>,
    /// The live state it looks at as it finishes, and whether that said `finished` then.
    pub(super) watch_live: Option<(Arc<crate::live::LiveState>, Arc<AtomicBool>)>,
}

impl RecordingSink {
    fn check_up(&self) -> Result<(), EngineError> {
        match &self.down {
            Some(d) if d.load(Ordering::SeqCst) => {
                Err(EngineError::sink("out", "no space left on device").unavailable())
            }
            _ => Ok(()),
        }
    }
}

impl Committable for RecordingSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.calls.lock().unwrap().push(Call::Flush);
        Ok(true)
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        if let Some((state, saw)) = &self.watch_live {
            // (a sink's last commit takes a moment: the snapshot must not say finished yet)
            std::thread::sleep(Duration::from_millis(50));
            saw.store(state.current().finished, Ordering::SeqCst);
        }
        self.calls.lock().unwrap().push(Call::Finish);
        Ok(())
    }
    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.check_up()?;
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
}

impl Sink for RecordingSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if self.fail_writes {
            return Err(EngineError::Internal("the disk is full".into()));
        }
        if self.panic_writes {
            panic!("a header value with a line break");
        }
        self.check_up()?;
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
    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.refused)
    }
}

/// A dead-letter output that records its calls and its records.
#[derive(Default)]
pub(super) struct RecordingDeadLetters {
    pub(super) calls: Calls,
    pub(super) records: Arc<Mutex<Vec<DeadLetter>>>,
    /// While set, a flush makes nothing durable (a file output before its end).
    pub(super) not_durable: Arc<AtomicBool>,
}

impl Committable for RecordingDeadLetters {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.calls.lock().unwrap().push(Call::Flush);
        Ok(!self.not_durable.load(Ordering::SeqCst))
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
}

/// A job of one source read by `reader` (with `partitions`), one counting operator and one
/// sink, at `parallelism`.
pub(super) fn job(
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

pub(super) fn run_stats() -> Arc<RunStats> {
    Arc::new(RunStats::new(
        &["events".to_string()],
        &["counts".to_string()],
        &["out".to_string()],
    ))
}

/// Runs `spec` on a thread of its own; fails the test if it takes longer than `limit`.
pub(super) fn run_within(
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

pub(super) fn written_windows(calls: &Calls) -> Vec<(i64, i64)> {
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
pub(super) fn two_partitions() -> Vec<Chunk> {
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

pub(super) fn checkpointed(spec: &mut JobSpec, dir: &std::path::Path) {
    spec.checkpoint = Some(crate::checkpoint::CheckpointSpec {
        store: Arc::new(CheckpointStore::open(dir.to_str().unwrap()).unwrap()),
        interval: Duration::from_millis(20),
        after_windows: false,
        keep: 2,
        pipeline: "test".into(),
        fingerprint: BTreeMap::new(),
        restored: None,
        ownership: None,
    });
}
