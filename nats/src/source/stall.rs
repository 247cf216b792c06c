//! The `max_ack_pending` stall: the server stops delivering once the consumer has
//! `max_ack_pending` unacknowledged messages, and the reader acknowledges only what is
//! durable. Without checkpoints, rows of a window still open are not durable, so a window (or
//! a sink that makes nothing durable before its end) holding more messages than the limit
//! stops the stream for good: no message comes, the watermark stays, the window never closes.
//! Nothing weir can flush frees it without losing the at-least-once promise, so the reader
//! notices it (no message for a while, acknowledgements owed, the consumer's
//! `num_ack_pending` at the limit and messages waiting on the server) and says what to set:
//! a warning in the log, a reason of `/ready` and the `weir_source_waiting` gauge. With
//! checkpoints the acknowledgements follow each complete checkpoint and free the consumer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use weir_engine::job::ReaderContext;

/// How long the stream must be quiet, with acknowledgements owed, before the consumer's
/// state is read.
const QUIET_FOR: Duration = Duration::from_secs(2);
/// How often the consumer's state is read while quiet.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often the warning is repeated while stalled.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Watches one consumer for the stall.
pub(super) struct StallWatch {
    /// The reason `/ready` shows while stalled (registered with the source's stats).
    condition: Arc<Mutex<Option<String>>>,
    registered: bool,
    last_check: Instant,
    warned: Option<Instant>,
}

impl StallWatch {
    pub(super) fn new() -> Self {
        StallWatch {
            condition: Arc::new(Mutex::new(None)),
            registered: false,
            last_check: Instant::now(),
            warned: None,
        }
    }

    fn set(&self, why: Option<String>) {
        if let Ok(mut c) = self.condition.lock() {
            *c = why;
        }
    }

    /// After a round: `quiet_since` is when the last message came; `owed` whether chunks
    /// read wait for their acknowledgement. Reads the consumer's state when the stream is
    /// quiet with acknowledgements owed, and reports the stall (or its end).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn check(
        &mut self,
        ctx: &ReaderContext,
        (source, partition): (usize, usize),
        name: &str,
        quiet_since: Instant,
        owed: bool,
        max_ack_pending: i64,
        rt: &tokio::runtime::Runtime,
        consumer: &mut PullConsumer,
    ) {
        if !self.registered {
            self.registered = true;
            if let Some(Ok(mut list)) = ctx.stats.sources.get(source).map(|s| s.waiting.lock()) {
                list.push(self.condition.clone());
            }
        }
        if !owed || quiet_since.elapsed() < QUIET_FOR {
            if self.warned.take().is_some() {
                self.set(None);
                tracing::info!(source = %name, "nats: messages flow again");
            }
            return;
        }
        if self.last_check.elapsed() < CHECK_EVERY {
            return;
        }
        self.last_check = Instant::now();
        let info = match rt.block_on(consumer.info()) {
            Ok(i) => i.clone(),
            Err(e) => {
                tracing::debug!(source = %name, error = %e, "nats: cannot read the consumer's state");
                return;
            }
        };
        let at_limit = max_ack_pending > 0 && info.num_ack_pending as i64 >= max_ack_pending;
        if !(at_limit && info.num_pending > 0) {
            return;
        }
        // a tracked partition acknowledges by the outputs' progress; else by checkpoints
        let checkpoints = !ctx.progress.is_tracked(partition);
        let why = format!(
            "NATS consumer `{}` has {} unacknowledged messages (max_ack_pending {}) and {} more \
             waiting: the server stops delivering until rows are durable; {}",
            info.name,
            info.num_ack_pending,
            max_ack_pending,
            info.num_pending,
            if checkpoints {
                "acknowledgements go at the next complete checkpoint"
            } else {
                "set `checkpoint:` (acknowledgements then follow each checkpoint) or raise \
                 `max_ack_pending` above the messages of the longest open window"
            }
        );
        if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(source = %name, num_ack_pending = info.num_ack_pending, max_ack_pending, num_pending = info.num_pending, "{why}");
            self.warned = Some(Instant::now());
        }
        self.set(Some(why));
    }
}
