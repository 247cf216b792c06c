//! The reader threads: each takes its source's chunks and dispatches them round-robin to
//! the workers.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::SendTimeoutError;

use super::channels::{Dispatcher, Failure, OutputGate, WorkerMsg, TICK};
use crate::api::{PartitionReader, ReaderContext};
use crate::events::ChunkData;
use crate::EngineError;

/// How long a reader waits at a closed [`OutputGate`] before it reports backpressure.
const GATE_PATIENCE: Duration = Duration::from_secs(1);

/// A reader's thread: dispatches its chunks round-robin to the workers, each once the
/// merger's [`OutputGate`] is open (it holds no rows for a sink without room).
pub(super) fn read_source(
    mut reader: Box<dyn PartitionReader>,
    (dispatcher, gate): (&Mutex<Dispatcher>, &OutputGate),
    ctx: &ReaderContext,
    failure: &Failure,
) -> Result<(), EngineError> {
    let poisoned = || EngineError::Internal("dispatcher poisoned".into());
    while let Some(chunk) = reader.next_chunk(ctx)? {
        let read_at = Instant::now();
        if failure.cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        // waits without the dispatcher's lock: barriers go on passing meanwhile
        let mut pressed = false;
        let closed_at = Instant::now();
        while gate.is_closed() {
            if failure.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            gate.wait(TICK);
            if gate.is_closed() && closed_at.elapsed() >= GATE_PATIENCE {
                // as when the workers' queues are full (a Kafka reader pauses its partitions
                // and serves rebalances): not for a gate closed a moment, which the outputs
                // open again by themselves
                pressed = true;
                reader.backpressure(ctx)?;
            }
        }
        let mut d = dispatcher.lock().map_err(|_| poisoned())?;
        if d.senders.is_empty() {
            // a hand-over checkpoint ended the workers' input: this chunk is after its cut
            drop(d);
            if pressed {
                reader.backpressure_released(ctx)?;
            }
            reader.unread(chunk);
            break;
        }
        let target = d.next % d.senders.len();
        d.next += 1;
        let partition = chunk.partition.id;
        let resume = chunk.resume;
        let lane = match &chunk.data {
            ChunkData::Messages(m) => m.lane,
            _ => None,
        };
        let mut msg = WorkerMsg::Chunk(chunk, read_at);
        loop {
            match d.senders[target].send_timeout(msg, TICK) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(m)) => {
                    if failure.cancel.load(Ordering::Relaxed) {
                        return Err(EngineError::Cancelled);
                    }
                    msg = m;
                    pressed = true;
                    // Without the dispatcher's lock: barriers pass meanwhile (this chunk is
                    // in no queue yet, so it comes after them), and a rebalance served in
                    // `backpressure` can wait for its hand-over checkpoint.
                    drop(d);
                    reader.backpressure(ctx)?;
                    d = dispatcher.lock().map_err(|_| poisoned())?;
                    if d.senders.is_empty() {
                        // a hand-over checkpoint ended the workers' input meanwhile
                        drop(d);
                        reader.backpressure_released(ctx)?;
                        if let WorkerMsg::Chunk(chunk, _) = msg {
                            reader.unread(chunk);
                        }
                        return finish_reading(reader, dispatcher, ctx, failure);
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => return Err(failure.closed("a worker")),
            }
        }
        if let Some(c) = d.cut.get_mut(partition) {
            *c = Some(resume);
        }
        if let Some(l) = lane.map(|l| l as usize) {
            let lanes = d.lane_cut.entry(partition).or_default();
            if lanes.len() <= l {
                lanes.resize(l + 1, 0);
            }
            lanes[l] = resume.position;
        }
        drop(d);
        if pressed {
            reader.backpressure_released(ctx)?;
        }
    }
    finish_reading(reader, dispatcher, ctx, failure)
}

/// After a reader's last chunk: the last reader ends the workers' input (the coordinator
/// does, after its final barrier, when checkpointing); once the workers drained and the
/// outputs finished, the reader commits what they hold.
fn finish_reading(
    mut reader: Box<dyn PartitionReader>,
    dispatcher: &Mutex<Dispatcher>,
    ctx: &ReaderContext,
    failure: &Failure,
) -> Result<(), EngineError> {
    {
        let mut d = dispatcher
            .lock()
            .map_err(|_| EngineError::Internal("dispatcher poisoned".into()))?;
        d.readers_left -= 1;
        if d.readers_left == 0 && !d.checkpointing {
            d.senders.clear();
        }
    }
    if ctx.progress.wait_finished(&failure.cancel) {
        reader.finish(ctx)?;
    }
    Ok(())
}
