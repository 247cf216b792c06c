//! Tests of the runtime, against fake readers, operators and outputs (the engine crate does
//! not depend on the real ones): whole runs here, each stage alone in `stages`.

mod fakes;
mod stages;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dead_letter::Reason;
use crate::job::*;
use crate::live::{LiveKind, LiveSpec, LiveState, LiveTableDef};
use crate::stats::RunStats;
use crate::EngineError;

use fakes::*;

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

/// The error that ends an endless job writing to `sink`.
fn error_of_a_job_writing_to(sink: RecordingSink) -> EngineError {
    let spec = job(
        Box::new(EndlessReader { seq: 0 }),
        1,
        sink,
        RecordingDeadLetters::default(),
        2,
    );
    run_within(
        spec,
        run_stats(),
        StopHandle::new(),
        Duration::from_secs(20),
    )
    .unwrap_err()
}

#[test]
fn a_failing_sink_stops_the_job_with_its_error() {
    let err = error_of_a_job_writing_to(RecordingSink {
        fail_writes: true,
        ..Default::default()
    });
    let message = err.chain().to_string();
    match err {
        EngineError::Sink { sink, .. } => {
            assert_eq!(sink, "out");
            assert!(message.contains("the disk is full"), "{message}");
        }
        other => panic!("not the sink's error: {other}"),
    }
}

/// A sink that fails for good fails the run; the run's other sinks then see their input end
/// as at the end of a run, but must not finish (a file renamed to its final name, a table
/// committed, a replay's windows replaced) with part of the rows.
#[test]
fn a_failed_run_finishes_no_other_sink() {
    let sink = RecordingSink::default();
    let calls = sink.calls.clone();
    let mut spec = job(
        Box::new(EndlessReader { seq: 0 }),
        1,
        sink,
        RecordingDeadLetters::default(),
        2,
    );
    spec.sinks.push(SinkSpec {
        name: "failing".into(),
        sink: Box::new(RecordingSink {
            fail_writes: true,
            ..Default::default()
        }),
        retry: crate::retry::RetryPolicy::default(),
    });
    spec.operators[0].sinks = vec![0, 1];
    let stats = Arc::new(RunStats::new(
        &["events".to_string()],
        &["counts".to_string()],
        &["out".to_string(), "failing".to_string()],
    ));
    let err = run_within(spec, stats, StopHandle::new(), Duration::from_secs(20)).unwrap_err();
    assert!(
        matches!(&err, EngineError::Sink { sink, .. } if sink == "failing"),
        "not the failing sink's error: {}",
        err.chain()
    );
    let calls = calls.lock().unwrap();
    assert!(!calls.contains(&Call::Finish), "{calls:?}");
}

/// A thread of the run that panics (a defect in a connector) fails the run with the panic's
/// message, instead of leaving the other threads waiting for it for ever.
#[test]
fn a_panicking_sink_fails_the_job_instead_of_stalling_it() {
    let err = error_of_a_job_writing_to(RecordingSink {
        panic_writes: true,
        ..Default::default()
    });
    let message = err.chain().to_string();
    assert!(message.contains("panicked"), "{message}");
    assert!(
        message.contains("a header value with a line break"),
        "{message}"
    );
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
    let saw_finished = Arc::new(AtomicBool::new(false));
    let mut spec = job(
        Box::new(FakeReader::new(two_partitions())),
        2,
        RecordingSink {
            watch_live: Some((state.clone(), saw_finished.clone())),
            ..RecordingSink::default()
        },
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
    assert!(
        !saw_finished.load(Ordering::SeqCst),
        "the snapshot said finished while a sink was still finishing"
    );
    let rows: usize = snapshot.tables[0].iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 4, "the emitted windows are retained");
}

/// A merge operator whose `live` rebuilds its key index, as a view does when keys expire.
struct Reindexing {
    inner: CountMerge,
    index: Arc<crate::live::KeyIndex>,
    newest: Arc<std::sync::Mutex<Option<Arc<crate::live::KeyIndex>>>>,
}

impl Reindexing {
    fn fresh_index() -> Arc<crate::live::KeyIndex> {
        Arc::new(crate::live::KeyIndex::new(&[arrow::datatypes::DataType::Int64]).unwrap())
    }
}

impl MergeOperator for Reindexing {
    fn merge(&mut self, partial: crate::types::PartialWindow) -> Result<(), EngineError> {
        self.inner.merge(partial)
    }
    fn emit(
        &mut self,
        watermark: i64,
    ) -> Result<Vec<arrow::record_batch::RecordBatch>, EngineError> {
        self.inner.emit(watermark)
    }
    fn snapshot(&mut self) -> Result<Vec<crate::types::PartialWindow>, EngineError> {
        self.inner.snapshot()
    }
    fn live(
        &mut self,
        workers: Vec<crate::types::PartialWindow>,
    ) -> Result<Vec<arrow::record_batch::RecordBatch>, EngineError> {
        self.index = Reindexing::fresh_index();
        *self.newest.lock().unwrap() = Some(self.index.clone());
        self.inner.live(workers)
    }
    fn live_index(&self) -> Option<Arc<crate::live::KeyIndex>> {
        Some(self.index.clone())
    }
}

#[test]
fn a_snapshot_publishes_the_key_index_its_rows_were_built_with() {
    let state = Arc::new(LiveState::new(
        "test",
        vec![LiveTableDef::new(
            "counts",
            LiveKind::View,
            &output_schema(),
            Vec::new(),
        )],
    ));
    let mut spec = job(
        Box::new(FakeReader::new(two_partitions())),
        2,
        RecordingSink::default(),
        RecordingDeadLetters::default(),
        2,
    );
    let newest = Arc::new(std::sync::Mutex::new(None));
    spec.operators[0].merge = Box::new(Reindexing {
        inner: CountMerge::default(),
        index: Reindexing::fresh_index(),
        newest: newest.clone(),
    });
    spec.live = Some(LiveSpec {
        state: state.clone(),
        interval: Duration::from_millis(20),
    });
    run_within(
        spec,
        run_stats(),
        StopHandle::new(),
        Duration::from_secs(20),
    )
    .unwrap();
    let snapshot = state.current();
    let published = snapshot.indexes[0].as_ref().expect("an index");
    let built = newest.lock().unwrap().clone().expect("live was called");
    assert!(
        Arc::ptr_eq(published, &built),
        "the snapshot carries the index from before `live` rebuilt it"
    );
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
fn a_live_view_observes_when_read_rows_became_visible_and_sinks_when_windows_were_durable() {
    let state = Arc::new(LiveState::new(
        "test",
        vec![LiveTableDef::new(
            "counts",
            LiveKind::View,
            &output_schema(),
            Vec::new(),
        )],
    ));
    let interval = Duration::from_millis(50);
    let mut spec = job(
        Box::new(EndlessReader { seq: 0 }),
        1,
        RecordingSink::default(),
        RecordingDeadLetters::default(),
        2,
    );
    spec.live = Some(LiveSpec {
        state: state.clone(),
        interval,
    });
    let stop = StopHandle::new();
    let stopper = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        stopper.stop();
    });
    let stats = run_stats();
    run_within(spec, stats.clone(), stop, Duration::from_secs(20)).unwrap();
    // the operator is a view here: its rows became visible at the next snapshot
    let (buckets, count, sum) = stats.view_visible_latency[0].read();
    assert!(count > 0, "rows were observed");
    let within = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
    assert!(
        within(1.0) == count,
        "a snapshot every {interval:?} shows rows within a second: {buckets:?}"
    );
    assert!(sum / count as f64 <= 1.0, "mean {}", sum / count as f64);
    // the fake operator emits windows: each written row was flushed and observed once
    let (_, durable, _) = stats.window_durable_latency[0].read();
    assert_eq!(durable, RunStats::get(&stats.rows_written[0].value));
    assert!(durable > 0);
}

/// Commits an endless run made before it was stopped, with a 60 s checkpoint interval.
fn commits_while_running(after_windows: bool) -> (usize, Arc<RunStats>) {
    let dir = tempfile::tempdir().unwrap();
    let sink = RecordingSink::default();
    let calls = sink.calls.clone();
    let mut spec = job(
        Box::new(EndlessReader { seq: 0 }),
        1,
        sink,
        RecordingDeadLetters::default(),
        2,
    );
    checkpointed(&mut spec, dir.path());
    if let Some(c) = spec.checkpoint.as_mut() {
        c.interval = Duration::from_secs(60);
        c.after_windows = after_windows;
    }
    let stop = StopHandle::new();
    let stopper = stop.clone();
    let seen = calls.clone();
    let watcher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        let commits = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, Call::Commit(_)))
            .count();
        stopper.stop();
        commits
    });
    let stats = run_stats();
    run_within(spec, stats.clone(), stop, Duration::from_secs(20)).unwrap();
    (watcher.join().unwrap(), stats)
}

#[test]
fn checkpoints_after_windows_commit_emitted_windows_without_waiting_for_the_interval() {
    let (commits, stats) = commits_while_running(true);
    assert!(commits >= 2, "{commits} commits while running");
    let (_, durable, sum) = stats.window_durable_latency[0].read();
    assert!(durable > 0);
    assert!(
        sum / (durable as f64) < 5.0,
        "committed long before the 60 s interval: mean {} s",
        sum / durable as f64
    );
    let (commits, _) = commits_while_running(false);
    assert_eq!(commits, 0, "the interval alone: no checkpoint yet");
}

/// A retry policy quick enough for tests: the circuit opens after 3 failures, for 50 ms.
fn quick_retry() -> crate::retry::RetryPolicy {
    crate::retry::RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        multiplier: 2.0,
        jitter: 0.0,
        max_retries: None,
        breaker_failures: 3,
        breaker_open_for: Duration::from_millis(50),
    }
}

#[test]
fn a_sink_failing_from_its_first_rows_does_not_hold_live_snapshots_or_checkpoints_wrong() {
    const WINDOWS: i64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(LiveState::new(
        "test",
        vec![LiveTableDef::new(
            "counts",
            LiveKind::Window {
                retain_ms: i64::MAX / 2,
            },
            &output_schema(),
            Vec::new(),
        )],
    ));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sink = RecordingSink {
        down: Some(down.clone()),
        ..Default::default()
    };
    let calls = sink.calls.clone();
    let dead = RecordingDeadLetters::default();
    let records = dead.records.clone();
    // one event per window, one chunk each, and from the fourth on a late event too (a dead
    // letter: the dead-letter output waits for the sink at each checkpoint)
    let times: Vec<Vec<i64>> = (0..WINDOWS)
        .map(|k| {
            let mut t = vec![k * fakes::WINDOW];
            t.extend((k >= 3).then(|| (k - 3) * fakes::WINDOW));
            t
        })
        .collect();
    let slices: Vec<&[i64]> = times.iter().map(|t| &t[..]).collect();
    let mut spec = job(
        Box::new(FakeReader::new(partition_chunks(0, &slices))),
        1,
        sink,
        dead,
        2,
    );
    spec.sinks[0].retry = quick_retry();
    checkpointed(&mut spec, dir.path());
    spec.live = Some(LiveSpec {
        state: state.clone(),
        interval: Duration::from_millis(20),
    });
    let stats = run_stats();
    let (tx, rx) = crossbeam_channel::bounded(1);
    {
        let stats = stats.clone();
        std::thread::spawn(move || {
            let _ = tx.send(run(spec, stats, StopHandle::new()));
        });
    }
    // the sink fails from its first rows: its circuit opens, and meanwhile the live state
    // goes on: snapshots are published with the windows emitted so far
    let started = Instant::now();
    let mut saw_open = false;
    while started.elapsed() < Duration::from_millis(600) {
        saw_open |= stats.sink_health[0].circuit() == crate::retry::CircuitState::Open;
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(saw_open, "the sink's circuit never opened");
    let first = state.current();
    assert!(first.seq > 0, "no live snapshot while the sink fails");
    let final_rows = |s: &crate::live::LiveSnapshot| -> usize {
        s.tables[0]
            .iter()
            .map(|b| {
                b.column_by_name("is_final")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .unwrap()
                    .true_count()
            })
            .sum()
    };
    assert!(final_rows(&first) > 0, "no emitted window is queryable");
    let epoch = stats.checkpoints.last_epoch.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    let later = state.current();
    assert!(
        later.seq > first.seq,
        "snapshots stopped while the sink fails"
    );
    // nothing was written: no checkpoint completes, the sources stopped short of the input
    assert!(written_windows(&calls).is_empty());
    assert_eq!(
        stats.checkpoints.last_epoch.load(Ordering::SeqCst),
        epoch,
        "a checkpoint completed while the sink held none of its rows"
    );
    assert!(
        RunStats::get(&stats.records_in) < 2 * WINDOWS as u64 - 3,
        "the whole input was read while the sink failed"
    );
    assert!(stats.sink_health[0].errors.load(Ordering::Relaxed) >= 3);
    // the sink comes back: every window is written once, in order
    down.store(false, Ordering::SeqCst);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the run did not end after the sink came back")
        .unwrap();
    let want: Vec<(i64, i64)> = (0..WINDOWS).map(|k| (k * fakes::WINDOW, 1)).collect();
    assert_eq!(written_windows(&calls), want);
    assert_eq!(records.lock().unwrap().len(), WINDOWS as usize - 3);
    let (pre, committed) = lifecycle(&calls.lock().unwrap());
    assert_eq!(committed.last(), pre.last(), "the last epoch is committed");
    assert!(state.current().finished);
    assert_eq!(final_rows(&state.current()), WINDOWS as usize);
}

#[test]
fn a_note_skips_the_rows_it_counted_and_holds_the_others_to_its_floor() {
    use super::worker::without_counted_rows;
    use crate::events::ChunkData;
    use crate::reread::Reread;
    let rows = |offset: u64, times: &[i64]| match events_chunk(0, 0, offset, times).data {
        ChunkData::Events(e) => e,
        _ => unreachable!("events_chunk makes events"),
    };
    let events = rows(10, &[5, 12, 25, 8, 31]);
    let op = CountWorker::default();
    let wm = [0, 0, 5, 20, 20];
    // rows below 13 of windows closing at or below 20 were counted; the floor is 20
    let note = Reread {
        clauses: vec![(13, vec![Some(20)])],
        floors: vec![Some(20)],
    };
    let (kept, kept_wm) = without_counted_rows(&op, (0, Some(&note), note.floor(0)), &events, &wm)
        .unwrap()
        .unwrap();
    let kept = kept.unwrap();
    // offsets 10 (window 0-10) and 11 (10-20) skipped; 12 (20-30) is not of a closed window
    assert_eq!(kept.offsets, vec![12, 13, 14]);
    assert_eq!(kept.event_time, vec![25, 8, 31]);
    assert_eq!(kept.batch.num_rows(), 3);
    // every kept row's watermark is at least the floor: offset 13 (window 0-10) is late
    assert_eq!(kept_wm, vec![20, 20, 20]);
    let mut late = CountWorker::default();
    let mut dead = Vec::new();
    let partition = partition(0);
    assert_eq!(
        late.process(&partition, &kept, &kept_wm, &mut dead)
            .unwrap(),
        1
    );
    assert_eq!(dead[0].offset, Some(13));
    // past the clause: nothing skipped, watermarks raised while below the floor
    let later = rows(13, &[8, 40]);
    let (none, raised) =
        without_counted_rows(&op, (0, Some(&note), note.floor(0)), &later, &[3, 30])
            .unwrap()
            .unwrap();
    assert!(none.is_none());
    assert_eq!(raised, vec![20, 30]);
    // every watermark at or past the floor: nothing to change
    assert!(
        without_counted_rows(&op, (0, Some(&note), note.floor(0)), &later, &[20, 30])
            .unwrap()
            .is_none()
    );
    // another operator, named by neither
    assert!(
        without_counted_rows(&op, (1, Some(&note), note.floor(1)), &events, &wm)
            .unwrap()
            .is_none()
    );
}
