//! The merger's side of the sink channels. A sink that does not take rows (retrying with
//! backoff, its circuit open) must not stop the merger: the merger publishes live snapshots
//! and passes checkpoint barriers on, so SQL keeps answering and `/ready` names the sink
//! rather than "the job is starting". When a sink's bounded channel is full, the merger
//! holds the messages for it here, in order, and past a budget of them closes the
//! [`OutputGate`]: readers then dispatch no new chunk, so what is held is bounded by what was
//! already in flight (worker queues, the merger's input), and the sources stop reading as
//! before. Barriers still pass:
//! a checkpoint barrier waits here behind the sink's rows, so the checkpoint completes only
//! once the sink has pre-committed them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Select, SendTimeoutError, Sender, TryRecvError, TrySendError};

use super::channels::{Failure, MergeInput, OutputGate, SinkMsg, GATE_MERGER, TICK};
use crate::EngineError;

/// Messages the merger holds for the sinks, per worker, before it closes the gate: about
/// the slack the workers had when the merger blocked on a full sink (its input's capacity).
pub(super) const HOLD_PER_WORKER: usize = 64;

/// The sinks' channels, with the messages held for those that had no room.
pub(super) struct SinkOutbox {
    senders: Vec<Sender<SinkMsg>>,
    /// Per sink: messages its channel had no room for, oldest first.
    held: Vec<VecDeque<SinkMsg>>,
    /// Messages held, for every sink.
    held_count: usize,
    /// Messages held past which the gate closes.
    budget: usize,
    gate: Arc<OutputGate>,
}

impl SinkOutbox {
    /// The sinks' channels; the gate closes past `budget` messages held.
    pub(super) fn new(senders: Vec<Sender<SinkMsg>>, gate: Arc<OutputGate>, budget: usize) -> Self {
        SinkOutbox {
            held: senders.iter().map(|_| VecDeque::new()).collect(),
            held_count: 0,
            budget,
            senders,
            gate,
        }
    }

    /// How many sinks there are.
    pub(super) fn sinks(&self) -> usize {
        self.senders.len()
    }

    /// Sends `msg` to sink `s` without waiting: held when the sink's channel is full or
    /// messages are already held for it (closing the gate past the budget).
    pub(super) fn send(
        &mut self,
        s: usize,
        msg: SinkMsg,
        failure: &Failure,
    ) -> Result<(), EngineError> {
        let (Some(tx), Some(held)) = (self.senders.get(s), self.held.get_mut(s)) else {
            return Err(EngineError::Internal(format!("no sink {s}")));
        };
        let msg = if held.is_empty() {
            match tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(m)) => m,
                Err(TrySendError::Disconnected(_)) => return Err(failure.closed("a sink")),
            }
        } else {
            msg
        };
        held.push_back(msg);
        self.held_count += 1;
        if self.held_count > self.budget && !self.gate.is_closed() {
            tracing::debug!(
                sink = s,
                "a sink has no room: the merger holds its rows and the readers wait"
            );
        }
        if self.held_count > self.budget {
            self.gate.close(GATE_MERGER);
        }
        Ok(())
    }

    /// Whether messages are held for a sink.
    fn holding(&self) -> bool {
        self.held_count > 0
    }

    /// Moves held messages into the channels that have room; opens the gate once none is
    /// held.
    fn drain(&mut self, failure: &Failure) -> Result<(), EngineError> {
        for (tx, held) in self.senders.iter().zip(&mut self.held) {
            while let Some(msg) = held.pop_front() {
                match tx.try_send(msg) {
                    Ok(()) => self.held_count -= 1,
                    Err(TrySendError::Full(m)) => {
                        held.push_front(m);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => return Err(failure.closed("a sink")),
                }
            }
        }
        if !self.holding() {
            self.gate.open(GATE_MERGER);
        }
        Ok(())
    }

    /// The merger's next input (`None` once every worker finished); meanwhile, the held
    /// messages go to their sinks as these make room.
    pub(super) fn next_input(
        &mut self,
        rx: &Receiver<MergeInput>,
        failure: &Failure,
    ) -> Result<Option<MergeInput>, EngineError> {
        loop {
            self.drain(failure)?;
            if !self.holding() {
                return Ok(rx.recv().ok());
            }
            // ready when input arrives or a sink holding messages has room
            let mut select = Select::new();
            let input = select.recv(rx);
            for (tx, held) in self.senders.iter().zip(&self.held) {
                if !held.is_empty() {
                    select.send(tx);
                }
            }
            match select.ready_timeout(TICK) {
                Ok(i) if i == input => match rx.try_recv() {
                    Ok(m) => return Ok(Some(m)),
                    Err(TryRecvError::Disconnected) => return Ok(None),
                    Err(TryRecvError::Empty) => {}
                },
                Ok(_) => {}
                Err(_) => {
                    if failure.cancel.load(Ordering::Relaxed) {
                        return Err(EngineError::Cancelled);
                    }
                }
            }
        }
    }

    /// At the end of the input: sends every held message, waiting for the sinks.
    pub(super) fn send_held(&mut self, failure: &Failure) -> Result<(), EngineError> {
        for (tx, held) in self.senders.iter().zip(&mut self.held) {
            while let Some(mut msg) = held.pop_front() {
                loop {
                    match tx.send_timeout(msg, TICK) {
                        Ok(()) => {
                            self.held_count -= 1;
                            break;
                        }
                        Err(SendTimeoutError::Timeout(m)) => {
                            if failure.cancel.load(Ordering::Relaxed) {
                                return Err(EngineError::Cancelled);
                            }
                            msg = m;
                        }
                        Err(SendTimeoutError::Disconnected(_)) => {
                            return Err(failure.closed("a sink"))
                        }
                    }
                }
            }
        }
        self.gate.open(GATE_MERGER);
        Ok(())
    }
}
