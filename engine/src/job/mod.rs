//! The runtime of one job: reader threads, parallel workers, a merge stage and sinks, wired
//! with bounded channels.
//!
//! ```text
//!  readers (one per source) ──round-robin chunks──▶ N workers ──partial windows──▶ merger ──▶ sinks
//!                                                     │ decode, sequence, filter,          emits windows
//!                                                     │ late check, partial aggregation    closed on every
//!                                                     └──bad / late records──▶ dead-letter  worker
//! ```
//!
//! Chunks are dispatched round-robin in one global order and every worker handles its queue
//! in order, so a worker waiting for the previous chunk of a partition to be sequenced always
//! waits on a chunk that is already being handled: the pipeline cannot deadlock. A full
//! channel blocks its sender, which is the backpressure that reaches back to the readers.

mod channels;
mod coordinator;
mod merger;
mod outputs;
mod reader;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;

pub use crate::api::{
    DeadLetterSink, Decode, JobSpec, MergeOperator, OperatorSpec, PartialWindow, PartitionReader,
    ReaderContext, RunReport, Sink, SinkSpec, SourceSpec, StopHandle, WorkerOperator,
};
use crate::checkpoint::{restored_partitions, Epochs, Part, Rendezvous};
use crate::clock::{Clocks, WATERMARK_MIN};
use crate::dead_letter::PartitionInfo;
use crate::events::Resume;
use crate::progress::Progress;
use crate::retry::Retrier;
use crate::stats::RunStats;
use crate::time::now_ms;
use crate::EngineError;
use channels::{
    spawn, CheckpointLink, DeadMsg, Dispatcher, Failure, MergeInput, SinkMsg, WorkerMsg,
    WORKER_QUEUE,
};
use coordinator::{live_barriers, Coordinator};
use merger::{merger_loop, LiveTables, MergerStart};
use outputs::{sink_error, DeadLetterThread, RejectMsg, SinkThread};
use reader::read_source;
use worker::{worker_loop, ExitBarrier, WorkerCtx};

/// Runs a job to its end: until every source ended (or `stop` was triggered) and every
/// output was flushed.
pub fn run(
    spec: JobSpec,
    stats: Arc<RunStats>,
    stop: StopHandle,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let n = spec.parallelism.max(1);
    for op in &spec.operators {
        if op.workers.len() != n {
            return Err(EngineError::Internal(format!(
                "operator {} has {} worker instances for parallelism {n}",
                op.name,
                op.workers.len()
            )));
        }
    }
    let failure = Failure {
        cancel: Arc::new(AtomicBool::new(false)),
        first: Arc::new(Mutex::new(None)),
    };
    let clocks = Arc::new(Clocks::new(
        &spec
            .sources
            .iter()
            .map(|s| (s.partitions, s.max_out_of_orderness_ms))
            .collect::<Vec<_>>(),
    ));
    let mut threads = Vec::new();
    let handover = Arc::new(AtomicBool::new(false));

    let total_partitions: usize = spec.sources.iter().map(|s| s.partitions).sum();
    let progress = Arc::new(Progress::new(
        total_partitions,
        &spec
            .operators
            .iter()
            .map(|o| o.sinks.len())
            .collect::<Vec<_>>(),
    ));
    // (source, key) of every global partition.
    let partition_keys: Vec<(String, String)> = spec
        .sources
        .iter()
        .flat_map(|s| {
            (0..s.partitions).map(move |i| {
                let key = s
                    .partition_keys
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| i.to_string());
                (s.name.clone(), key)
            })
        })
        .collect();
    let operator_names: Vec<String> = spec.operators.iter().map(|o| o.name.clone()).collect();
    let mut spec = spec;
    let checkpoint = spec.checkpoint.take();
    let live = spec.live.take();
    let mut cut: Vec<Option<Resume>> = vec![None; total_partitions];
    let mut emitted_from: Vec<i64> = vec![WATERMARK_MIN; spec.operators.len()];
    let mut first_epoch = 0;
    if let Some(cp) = &checkpoint {
        stats
            .checkpoints
            .interval_ms
            .store(cp.interval.as_millis() as u64, Ordering::Relaxed);
        progress.use_checkpoints();
        if let Some(restored) = &cp.restored {
            let m = &restored.manifest;
            first_epoch = m.epoch;
            let max_future: Vec<Option<i64>> = spec
                .sources
                .iter()
                .flat_map(|s| std::iter::repeat_n(s.max_future_ms, s.partitions))
                .collect();
            for (id, (resume, newest)) in restored_partitions(m, &partition_keys) {
                cut[id] = Some(resume);
                if newest != WATERMARK_MIN {
                    clocks.partition(id).restore(newest);
                }
                if let (Some(Some(max)), Some((source, key))) =
                    (max_future.get(id), partition_keys.get(id))
                {
                    crate::bounds::warn_if_restored_ahead((source, key), newest, (*max, now_ms()));
                }
                progress.record_checkpoint(id, resume.next_offset);
            }
            for (i, op) in spec.operators.iter_mut().enumerate() {
                let Some(j) = m.operators.iter().position(|o| o.name == op.name) else {
                    continue;
                };
                let rec = &m.operators[j];
                emitted_from[i] = rec.emitted;
                // the merger takes the state where it holds it (a view); else worker 0
                let merger_took = op.merge.restore(&restored.operators[j])?;
                for (w, worker) in op.workers.iter_mut().enumerate() {
                    let partials = if w == 0 && !merger_took {
                        restored.operators[j].clone()
                    } else {
                        Vec::new()
                    };
                    worker.restore(partials, rec.flushed)?;
                }
            }
            stats.restore_counters(&m.counters);
            tracing::info!(
                epoch = m.epoch,
                location = cp.store.location(),
                "restored from checkpoint"
            );
        }
    }
    let restored_manifest = checkpoint
        .as_ref()
        .and_then(|c| c.restored.as_ref().map(|r| r.manifest.clone()));
    // Outputs still running; the last one to finish marks the progress final.
    let outputs_left = Arc::new(std::sync::atomic::AtomicUsize::new(spec.sinks.len() + 1));
    let output_done = {
        let progress = progress.clone();
        let left = outputs_left.clone();
        move || {
            if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                progress.set_finished();
            }
        }
    };
    let (parts_tx, parts_rx) = crossbeam_channel::unbounded::<Part>();
    // Workers meet at checkpoint and live barriers.
    let rendezvous = (checkpoint.is_some() || live.is_some()).then(|| Arc::new(Rendezvous::new(n)));
    let link = match (&checkpoint, &rendezvous) {
        (Some(_), Some(r)) => Some(CheckpointLink {
            parts: parts_tx.clone(),
            epochs: Arc::new(Epochs::default()),
            rendezvous: r.clone(),
        }),
        _ => None,
    };
    if let Some(l) = &link {
        l.epochs.completed.store(first_epoch, Ordering::SeqCst);
    }
    drop(parts_tx);

    // Sinks. Each knows, for every operator feeding it, its index among the operator's sinks.
    let mut sink_feeds: Vec<Vec<(usize, usize)>> = vec![Vec::new(); spec.sinks.len()];
    for (oi, op) in spec.operators.iter().enumerate() {
        for (k, &s) in op.sinks.iter().enumerate() {
            sink_feeds[s].push((oi, k));
        }
    }
    let sink_count = spec.sinks.len();
    let mut sink_senders = Vec::new();
    // Rows sinks refuse for good go to the dead-letter thread, tagged with their epoch.
    let first_epoch = restored_manifest.as_ref().map_or(1, |m| m.epoch + 1);
    let (rejects_tx, rejects_rx) = bounded::<RejectMsg>(64);
    let mut rejects_rx = Some(rejects_rx);
    for (idx, spec_sink) in std::mem::take(&mut spec.sinks).into_iter().enumerate() {
        let SinkSpec {
            name,
            mut sink,
            retry,
        } = spec_sink;
        if checkpoint.is_some() {
            let from = restored_manifest.as_ref().map(|m| {
                (
                    m.epoch,
                    m.sinks.get(&name).unwrap_or(&serde_json::Value::Null),
                )
            });
            Retrier::new(
                &format!("sink `{name}`"),
                retry.clone(),
                &stats.sink_health[idx],
                &failure.cancel,
            )
            .call("recover", || sink.recover(from))
            .map_err(|e| sink_error(&name, e))?;
        }
        let (tx, rx) = bounded::<SinkMsg>(16);
        sink_senders.push(tx);
        let output = SinkThread {
            index: idx,
            name: name.clone(),
            sink,
            feeds: std::mem::take(&mut sink_feeds[idx]),
            stats: stats.clone(),
            progress: progress.clone(),
            link: link.clone(),
            cancel: failure.cancel.clone(),
            retry,
            rejects: rejects_tx.clone(),
            epoch: first_epoch,
            rejected_from: Arc::new(PartitionInfo {
                source: Arc::from(name.as_str()),
                id: usize::MAX,
                state_id: usize::MAX,
                number: 0,
                topic: None,
                file: None,
            }),
        };
        let done = output_done.clone();
        threads.push(spawn(format!("sink-{name}"), &failure, move || {
            output.run(rx)?;
            done();
            Ok(())
        })?);
    }

    drop(rejects_tx);

    // Dead letters.
    let (dead_tx, dead_rx) = bounded::<DeadMsg>(64);
    {
        let rejects_rx = rejects_rx
            .take()
            .ok_or_else(|| EngineError::Internal("the sinks' rejection channel is gone".into()))?;
        let sinks = sink_count;
        let mut sink = spec.dead_letter;
        let retry = spec.dead_letter_retry;
        if checkpoint.is_some() {
            let from = restored_manifest
                .as_ref()
                .map(|m| (m.epoch, &m.dead_letter));
            Retrier::new(
                "dead-letter output",
                retry.clone(),
                &stats.dead_letter_health,
                &failure.cancel,
            )
            .call("recover", || sink.recover(from))?;
        }
        let stats = stats.clone();
        let progress = progress.clone();
        let done = output_done.clone();
        let link = link.clone();
        let cancel = failure.cancel.clone();
        threads.push(spawn("dead-letter".into(), &failure, move || {
            DeadLetterThread {
                sink,
                retrier: Retrier::new(
                    "dead-letter output",
                    retry,
                    &stats.dead_letter_health,
                    &cancel,
                ),
                stats: &stats,
                progress: &progress,
                link,
                cancel: &cancel,
                epoch: first_epoch,
                passed: vec![first_epoch - 1; sinks],
                later: Default::default(),
                sinks_open: true,
            }
            .run(dead_rx, rejects_rx)?;
            done();
            Ok(())
        })?);
    }

    // Merger.
    let (merge_tx, merge_rx) = bounded::<MergeInput>(64 * n);
    let mut merge_parts = Vec::new();
    let mut worker_parts: Vec<Vec<(usize, Box<dyn WorkerOperator>)>> =
        (0..n).map(|_| Vec::new()).collect();
    let mut op_sources = Vec::new();
    for (oi, op) in spec.operators.into_iter().enumerate() {
        op_sources.push(op.source);
        merge_parts.push((op.merge, op.sinks));
        for (w, inst) in op.workers.into_iter().enumerate() {
            worker_parts[w].push((oi, inst));
        }
    }
    let live_interval = live.as_ref().map(|l| l.interval);
    {
        let failure2 = failure.clone();
        let stats = stats.clone();
        let link = link.clone();
        let live = live.map(|l| LiveTables::new(l.state, &partition_keys, clocks.clone()));
        threads.push(spawn("merger".into(), &failure, move || {
            merger_loop(
                merge_rx,
                merge_parts,
                sink_senders,
                MergerStart {
                    workers: n,
                    emitted: emitted_from,
                    link,
                    live,
                },
                &stats,
                &failure2,
            )
        })?);
    }

    // Workers.
    let decoders: Arc<Vec<Arc<dyn Decode>>> =
        Arc::new(spec.sources.iter().map(|s| s.decoder.clone()).collect());
    let max_future: Arc<Vec<Option<i64>>> =
        Arc::new(spec.sources.iter().map(|s| s.max_future_ms).collect());
    let mut worker_senders = Vec::new();
    let input_done = Arc::new(ExitBarrier::new(n));
    for (w, ops) in worker_parts.into_iter().enumerate() {
        let (tx, rx) = bounded::<WorkerMsg>(WORKER_QUEUE);
        worker_senders.push(tx);
        let ctx = WorkerCtx {
            index: w,
            decoders: decoders.clone(),
            max_future: max_future.clone(),
            clocks: clocks.clone(),
            stats: stats.clone(),
            dead_tx: dead_tx.clone(),
            merge_tx: merge_tx.clone(),
            failure: failure.clone(),
            op_sources: op_sources.clone(),
            input_done: input_done.clone(),
            progress: progress.clone(),
            link: link.clone(),
            rendezvous: rendezvous.clone(),
        };
        threads.push(spawn(format!("worker-{w}"), &failure, move || {
            worker_loop(rx, ops, ctx)
        })?);
    }
    drop(dead_tx);
    drop(merge_tx);

    // Readers.
    let dispatcher = Arc::new(Mutex::new(Dispatcher {
        next: 0,
        senders: worker_senders,
        cut,
        readers_left: spec.sources.len(),
        checkpointing: checkpoint.is_some(),
    }));
    for source in spec.sources {
        let dispatcher = dispatcher.clone();
        let ctx = ReaderContext {
            clocks: clocks.clone(),
            stop: stop.0.clone(),
            progress: progress.clone(),
            stats: stats.clone(),
            handover: handover.clone(),
            cancel: failure.cancel.clone(),
        };
        let failure2 = failure.clone();
        let reader = source.reader;
        let name = source.name.clone();
        threads.push(spawn(format!("source-{name}"), &failure, move || {
            read_source(reader, &dispatcher, &ctx, &failure2)
        })?);
    }

    // Live barriers.
    if let Some(interval) = live_interval {
        let dispatcher = dispatcher.clone();
        let failure2 = failure.clone();
        threads.push(spawn("live-barriers".into(), &failure, move || {
            live_barriers(&dispatcher, interval, &failure2)
        })?);
    }

    // Checkpoints.
    if let (Some(cp), Some(link)) = (checkpoint, link) {
        let coordinator = Coordinator {
            spec: cp,
            dispatcher: dispatcher.clone(),
            parts: parts_rx,
            expected: n + 2 + sink_count + 1,
            epochs: link.epochs.clone(),
            progress: progress.clone(),
            stats: stats.clone(),
            operator_names,
            partition_keys,
            epoch: first_epoch,
            handover,
            stop: stop.0.clone(),
        };
        let failure2 = failure.clone();
        threads.push(spawn("checkpoints".into(), &failure, move || {
            coordinator.run(&failure2)
        })?);
    }
    drop(dispatcher);

    for t in threads {
        let _ = t.join();
    }
    if let Ok(mut first) = failure.first.lock() {
        if let Some(e) = first.take() {
            return Err(e);
        }
    }
    if failure.cancel.load(Ordering::SeqCst) {
        return Err(EngineError::Internal(
            "the run was cancelled without a recorded error".into(),
        ));
    }
    Ok(RunReport {
        elapsed: started.elapsed(),
    })
}
