//! Each stage alone: the coordinator, a reader, the merger, a worker, a sink thread.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver};

use crate::checkpoint::{CheckpointStore, Epochs, Part};
use crate::clock::{WATERMARK_END, WATERMARK_MIN};
use crate::dead_letter::{DeadLetter, Reason};
use crate::events::{Chunk, Resume};
use crate::job::channels::{
    send_barrier, DeadMsg, Dispatcher, Failure, MergeInput, MergeMsg, SinkMsg, WorkerMsg,
};
use crate::job::coordinator::Coordinator;
use crate::job::merger::{merger_loop, MergerStart};
use crate::job::outputs::{RejectMsg, SinkThread};
use crate::job::reader::read_source;
use crate::job::worker::{worker_loop, ExitBarrier, WorkerCtx};
use crate::job::*;
use crate::progress::Progress;
use crate::retry::RetryPolicy;
use crate::stats::RunStats;

use super::fakes::*;

#[test]
fn the_coordinator_completes_a_checkpoint_only_when_every_part_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let (worker_tx, worker_rx) = bounded::<WorkerMsg>(4);
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: vec![worker_tx],
        cut: vec![Some(Resume::at(7))],
        // a repartition topic's partition: its lanes' next upstream offsets
        lane_cut: HashMap::from([(0, vec![3, 9])]),
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
        retained: Vec::new(),
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
            ops: vec![(0, vec![partial(20, 1)], 20, None)],
        },
        Part::Leader {
            epoch,
            newest: vec![WATERMARK_END],
            lane_newest: HashMap::from([(0, vec![100, 90])]),
            counters: vec![("records_in".into(), 7)],
        },
        Part::Merger {
            epoch,
            ops: vec![(vec![partial(10, 2)], 20, Vec::new())],
            retained: Vec::new(),
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
    // one record for the partition, its lanes in it (an ended partition's lanes have no time)
    let p = &restored.manifest.partitions;
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].next_offset, &p[0].lanes), (7, &vec![3, 9]));
    assert_eq!(p[0].lane_lag, vec![-1, -1]);
}

/// The context of a reader of one partition whose outputs are done: it finishes right
/// after its input.
fn finished_outputs_context() -> ReaderContext {
    let progress = Arc::new(Progress::new(1, &[1]));
    progress.set_finished();
    ReaderContext::new(
        Arc::new(crate::clock::Clocks::new(&[(1, 0)])),
        Arc::new(AtomicBool::new(false)),
        progress,
        run_stats(),
    )
}

#[test]
fn a_reader_deals_chunks_round_robin_and_ends_the_workers_input() {
    let (tx0, rx0) = bounded::<WorkerMsg>(8);
    let (tx1, rx1) = bounded::<WorkerMsg>(8);
    let dispatcher = Mutex::new(Dispatcher {
        next: 0,
        senders: vec![tx0, tx1],
        cut: vec![None],
        lane_cut: HashMap::new(),
        readers_left: 1,
        checkpointing: false,
    });
    let reader = FakeReader::new(partition_chunks(0, &[&[1], &[2], &[3]]));
    let finished = reader.finished.clone();
    let ctx = finished_outputs_context();
    read_source(
        Box::new(reader),
        (&dispatcher, &Default::default()),
        &ctx,
        &Failure::new(),
    )
    .unwrap();
    let seqs = |rx: Receiver<WorkerMsg>| -> Vec<u64> {
        rx.try_iter()
            .map(|m| match m {
                WorkerMsg::Chunk(c, _) => c.seq,
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

/// A reader whose `backpressure` plays a rebalance served there: it notes whether the
/// dispatcher was free, and at its first call ends the workers' input as a hand-over
/// checkpoint does (the coordinator's barrier, then no more input).
struct PressedReader {
    chunks: VecDeque<Chunk>,
    dispatcher: Arc<Mutex<Dispatcher>>,
    barrier: crossbeam_channel::Sender<WorkerMsg>,
    free: Arc<Mutex<Vec<bool>>>,
    unread: Arc<Mutex<Vec<u64>>>,
}

impl PartitionReader for PressedReader {
    fn next_chunk(&mut self, _ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        Ok(self.chunks.pop_front())
    }
    fn backpressure(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        // (the coordinator would block here for ever if the reader held the lock)
        let Ok(mut d) = self.dispatcher.try_lock() else {
            self.free.lock().unwrap().push(false);
            return Ok(());
        };
        self.free.lock().unwrap().push(true);
        if !d.senders.is_empty() {
            // the hand-over barrier goes in as room opens, after the queued chunk
            self.barrier.send(WorkerMsg::Barrier(1)).unwrap();
            d.senders.clear();
        }
        Ok(())
    }
    fn unread(&mut self, chunk: Chunk) {
        self.unread.lock().unwrap().push(chunk.seq);
    }
}

#[test]
fn a_reader_waiting_for_room_leaves_the_dispatcher_to_a_hand_over() {
    // one worker whose queue holds one chunk, and nobody taking it
    let (tx, rx) = bounded::<WorkerMsg>(1);
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: vec![tx],
        cut: vec![None],
        lane_cut: HashMap::new(),
        readers_left: 1,
        checkpointing: false,
    }));
    // the barrier's own way in (the coordinator's send blocks while the queue is full)
    let (barrier_tx, barrier_rx) = unbounded::<WorkerMsg>();
    let (free, unread) = (Arc::default(), Arc::default());
    let reader = PressedReader {
        chunks: partition_chunks(0, &[&[1], &[2], &[3]]).into(),
        dispatcher: dispatcher.clone(),
        barrier: barrier_tx,
        free: Arc::clone(&free),
        unread: Arc::clone(&unread),
    };
    let ctx = finished_outputs_context();
    let d = Arc::clone(&dispatcher);
    let reading = std::thread::spawn(move || {
        read_source(
            Box::new(reader),
            (&d, &Default::default()),
            &ctx,
            &Failure::new(),
        )
    });
    let started = Instant::now();
    while !reading.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the reader did not end after the hand-over (backpressure saw the dispatcher free: {:?})",
            free.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    reading.join().unwrap().unwrap();
    assert_eq!(
        *free.lock().unwrap(),
        vec![true],
        "the reader held the dispatcher"
    );
    // chunk 0 went in before the cut; chunk 1, held back, comes back to the reader for the
    // next job; chunk 2 was never read
    let seqs: Vec<u64> = rx
        .try_iter()
        .map(|m| match m {
            WorkerMsg::Chunk(c, _) => c.seq,
            _ => panic!("not a chunk"),
        })
        .collect();
    assert_eq!(seqs, vec![0]);
    assert!(matches!(barrier_rx.try_recv(), Ok(WorkerMsg::Barrier(1))));
    assert_eq!(*unread.lock().unwrap(), vec![1]);
    let d = dispatcher.lock().unwrap();
    assert_eq!(d.cut[0], Some(Resume::at(1)));
    assert_eq!(d.readers_left, 0);
}

/// A reader whose `backpressure` plays a worker taking a message and the coordinator putting
/// a checkpoint barrier into the room it left, through the dispatcher.
struct BarrierWhilePressed {
    chunks: VecDeque<Chunk>,
    dispatcher: Arc<Mutex<Dispatcher>>,
    queue: Receiver<WorkerMsg>,
    taken: Arc<Mutex<Vec<String>>>,
    cut_at_barrier: Arc<Mutex<Option<Resume>>>,
}

impl PartitionReader for BarrierWhilePressed {
    fn next_chunk(&mut self, _ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        Ok(self.chunks.pop_front())
    }
    fn backpressure(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        let msg = self.queue.try_recv().unwrap();
        let mut taken = self.taken.lock().unwrap();
        taken.push(match msg {
            WorkerMsg::Chunk(c, _) => format!("chunk {}", c.seq),
            WorkerMsg::Barrier(e) => format!("barrier {e}"),
            _ => "other".into(),
        });
        if taken.len() == 1 {
            // the coordinator's barrier, under the lock the reader left
            let d = self
                .dispatcher
                .try_lock()
                .expect("the reader held the dispatcher");
            send_barrier(&d, WorkerMsg::Barrier, 1, &Failure::new()).unwrap();
            *self.cut_at_barrier.lock().unwrap() = d.cut[0];
        }
        Ok(())
    }
}

#[test]
fn a_barrier_put_while_the_reader_waits_for_room_comes_before_the_chunk_it_holds() {
    let (tx, rx) = bounded::<WorkerMsg>(1);
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: vec![tx],
        cut: vec![None],
        lane_cut: HashMap::new(),
        readers_left: 1,
        checkpointing: false,
    }));
    let (taken, cut_at_barrier) = (Arc::default(), Arc::default());
    let reader = BarrierWhilePressed {
        chunks: partition_chunks(0, &[&[1], &[2]]).into(),
        dispatcher: dispatcher.clone(),
        queue: rx.clone(),
        taken: Arc::clone(&taken),
        cut_at_barrier: Arc::clone(&cut_at_barrier),
    };
    let ctx = finished_outputs_context();
    read_source(
        Box::new(reader),
        (&dispatcher, &Default::default()),
        &ctx,
        &Failure::new(),
    )
    .unwrap();
    let mut order = taken.lock().unwrap().clone();
    order.extend(rx.try_iter().map(|m| match m {
        WorkerMsg::Chunk(c, _) => format!("chunk {}", c.seq),
        WorkerMsg::Barrier(e) => format!("barrier {e}"),
        _ => "other".into(),
    }));
    // (chunk 2: the partition's end)
    assert_eq!(order, vec!["chunk 0", "barrier 1", "chunk 1", "chunk 2"]);
    // the barrier's cut holds chunk 0, not the chunk held back; then the rest is in the cut
    assert_eq!(*cut_at_barrier.lock().unwrap(), Some(Resume::at(1)));
    let d = dispatcher.lock().unwrap();
    assert_eq!(d.cut[0], Some(Resume::at(2)));
    assert_eq!(d.readers_left, 0);
    assert!(d.senders.is_empty());
}

fn handover(worker: usize, seq: u64, partials: Vec<PartialWindow>, upto: i64) -> MergeInput {
    MergeInput::Handover(MergeMsg {
        seq,
        operator: 0,
        worker,
        partials,
        upto,
        partitions: Vec::new(),
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
                    closed: Vec::new(),
                    link: None,
                    live: None,
                    gate: Default::default(),
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
        SinkMsg::Rows { batch: b, .. } => assert_eq!(windows_in(&b), vec![(0, 3)]),
        _ => panic!("not rows"),
    }
    match next() {
        SinkMsg::Upto {
            op, upto, covered, ..
        } => assert_eq!((op, upto, covered), (0, 10, vec![1, 1])),
        _ => panic!("not an upto"),
    }
    tx.send(handover(1, 2, vec![partial(10, 4)], WATERMARK_END))
        .unwrap();
    match next() {
        SinkMsg::Rows { batch: b, .. } => assert_eq!(windows_in(&b), vec![(10, 5)]),
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
        live: false,
    };
    for chunk in partition_chunks(0, &[&[0, 5], &[25], &[3]]) {
        tx.send(WorkerMsg::Chunk(chunk, std::time::Instant::now()))
            .unwrap();
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
fn a_sink_thread_without_checkpoints_flushes_rows_at_once_and_to_report_progress_and_forwards_refused_rows(
) {
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
        outputs: vec!["per_minute".to_string()].into(),
        stats: stats.clone(),
        link: None,
        cancel: Arc::new(AtomicBool::new(false)),
        retry: RetryPolicy::default(),
        rejects: rejects_tx,
        epoch: 1,
        rejected_from: partition(usize::MAX),
    };
    let done = std::thread::spawn(move || thread.run(rx));
    let passed = Instant::now() - Duration::from_millis(30);
    tx.send(SinkMsg::Rows {
        batch: window_rows(&[(0, 2), (10, 1)]),
        since: Some(passed),
        op: 0,
    })
    .unwrap();
    // no more rows queued: flushed at once, not at the next progress report
    let flushes = |n: usize| wait_for_flushes(&calls, n);
    flushes(1);
    let (buckets, count, sum) = stats.window_durable_latency[0].read();
    assert_eq!(count, 2, "one observation per row of the batch");
    assert!(sum >= 0.06, "from the watermark passing: {sum}");
    assert_eq!(buckets.iter().find(|(b, _)| *b == 0.025).unwrap().1, 0);
    tx.send(SinkMsg::Upto {
        op: 0,
        upto: 20,
        covered: vec![1],
        partitions: None,
    })
    .unwrap();
    // progress to report: flushed again
    flushes(2);
    drop(tx);
    done.join().unwrap().unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            Call::Write(vec![(0, 2), (10, 1)]),
            Call::Flush,
            Call::Flush,
            Call::Finish
        ]
    );
    assert_eq!(RunStats::get(&stats.rows_committed[0].value), 2);
    // the refused rows, then how far the sink is durable (behind them)
    let sent: Vec<(u64, usize)> = rejects_rx
        .try_iter()
        .map(|m| match m {
            RejectMsg::Rows { epoch, records } => (epoch, records.len()),
            RejectMsg::Durable { durable, .. } => (u64::MAX, durable.watermark as usize),
            RejectMsg::Passed { .. } => panic!("no barrier was passed"),
        })
        .collect();
    assert_eq!(sent, vec![(1, 2), (u64::MAX, 20)]);
}

/// A sink's report of what it holds durably reaches the progress tracker only once the rows
/// it refused before are durable dead letters: else a Kafka offset was committed past a row
/// whose dead letter a crash then lost.
#[test]
fn a_sinks_progress_waits_for_the_dead_letters_of_the_rows_it_refused() {
    let dead = RecordingDeadLetters::default();
    let (calls, not_durable) = (dead.calls.clone(), dead.not_durable.clone());
    not_durable.store(true, Ordering::SeqCst);
    let progress = Arc::new(Progress::new(1, &[1]));
    progress.set_operator_keys(vec![Some(1)], vec![], vec![]);
    progress.track(0);
    // a chunk read to offset 7, with a row at offset 0 of a window closing at 60
    progress.add_residues([crate::progress::ChunkResidue {
        partition: 0,
        seq: 0,
        next_offset: 7,
        windows: vec![crate::progress::OpResidue {
            operator: 0,
            worker: 0,
            after_handover: 0,
            windows: vec![(60, 0)],
        }],
    }]);
    assert_eq!(progress.committable(0), Some(0));
    let (dead_tx, dead_rx) = unbounded::<DeadMsg>();
    let (rejects_tx, rejects_rx) = unbounded::<RejectMsg>();
    let thread = crate::job::outputs::DeadLetterThread {
        sink: Box::new(dead),
        retry: RetryPolicy::default(),
        stats: run_stats(),
        progress: progress.clone(),
        link: None,
        cancel: Arc::new(AtomicBool::new(false)),
        epoch: 1,
        sinks: 1,
        gate: Arc::new(crate::job::channels::OutputGate::default()),
    };
    let done = std::thread::spawn(move || thread.run(dead_rx, rejects_rx));
    let refused = DeadLetter {
        partition: partition(usize::MAX),
        offset: None,
        reason: Reason::Rejected,
        error: crate::dead_letter::ErrorInfo::new("too_big", "over the size limit"),
        raw: Some(b"0".to_vec()),
        trace: Default::default(),
    };
    rejects_tx
        .send(RejectMsg::Rows {
            epoch: 1,
            records: vec![refused],
        })
        .unwrap();
    // durable to 100, then to the end of the input (which sets no floor)
    for watermark in [80, 100, WATERMARK_END] {
        rejects_tx
            .send(RejectMsg::Durable {
                operator: 0,
                sink: 0,
                durable: crate::progress::Durable {
                    watermark,
                    covered: vec![1],
                    partitions: None,
                },
            })
            .unwrap();
    }
    let flushes = |n: usize| wait_for_flushes(&calls, n);
    // flushed, but the refused row is not durable: the window is not either
    flushes(2);
    assert_eq!(progress.committable(0), Some(0));
    not_durable.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while progress.committable(0) != Some(7) {
        assert!(Instant::now() < deadline, "the window never became durable");
        std::thread::sleep(Duration::from_millis(1));
    }
    // the floor is how far windows were durable before the end (not lost with the report
    // the end's replaced)
    let note = progress.commit_points(&[0])[0].clone().and_then(|(_, n)| n);
    assert_eq!(note.map(|n| n.floors), Some(vec![(1, 100)]));
    drop((dead_tx, rejects_tx));
    done.join().unwrap().unwrap();
}

/// Waits (at most 5 s) until an output recorded `n` flushes.
fn wait_for_flushes(calls: &Calls, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| **c == Call::Flush)
        .count()
        < n
    {
        assert!(Instant::now() < deadline, "no flush");
        std::thread::sleep(Duration::from_millis(1));
    }
}
