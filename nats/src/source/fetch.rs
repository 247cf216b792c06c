//! The background pull: a task on the I/O runtime keeps the consumer's message stream
//! polled, so that the client keeps its pull requests outstanding (the next one goes when
//! half a batch is left) while the workers compute, and hands the messages to the reader in
//! batches through a bounded queue. A full queue stops the polling, hence the pulling: the
//! server then holds the rest (backpressure).

use async_nats::jetstream::consumer::pull::{MessagesError, Stream as PullStream};
use async_nats::jetstream::Message;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Batches the queue holds at most (each of at most [`BATCH_MAX`] messages).
const QUEUE_BATCHES: usize = 16;
/// Messages of one batch at most: those that arrived together.
const BATCH_MAX: usize = 1024;

/// What the task hands over.
pub(super) enum Fetched {
    /// Messages in the order of the stream.
    Messages(Vec<Message>),
    /// The message stream failed (transiently or for good: the reader decides).
    Failed(MessagesError),
    /// The message stream ended (after a failure for good, or a dropped subscription).
    Ended,
}

/// The pulling task and its queue. Dropping it stops the task.
pub(super) struct Fetcher {
    rx: mpsc::Receiver<Fetched>,
    task: JoinHandle<()>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fetcher {
    /// Starts pulling `messages` on the current runtime.
    pub(super) fn spawn(messages: PullStream) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let task = tokio::spawn(pull_loop(messages, tx));
        Fetcher { rx, task }
    }

    /// What is queued now, without waiting.
    pub(super) fn try_next(&mut self) -> Option<Fetched> {
        match self.rx.try_recv() {
            Ok(f) => Some(f),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Fetched::Ended),
        }
    }

    /// Waits for the next batch (or failure).
    pub(super) async fn next(&mut self) -> Fetched {
        self.rx.recv().await.unwrap_or(Fetched::Ended)
    }
}

/// Polls the message stream until it ends or the reader is gone.
async fn pull_loop(mut messages: PullStream, tx: mpsc::Sender<Fetched>) {
    loop {
        let mut batch = match messages.next().await {
            Some(Ok(m)) => vec![m],
            Some(Err(e)) => {
                if tx.send(Fetched::Failed(e)).await.is_err() {
                    return;
                }
                continue;
            }
            None => {
                let _ = tx.send(Fetched::Ended).await;
                return;
            }
        };
        // with what already arrived
        let mut after = None;
        while batch.len() < BATCH_MAX {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                Some(Some(Err(e))) => {
                    after = Some(Fetched::Failed(e));
                    break;
                }
                Some(None) => {
                    after = Some(Fetched::Ended);
                    break;
                }
                None => break,
            }
        }
        if tx.send(Fetched::Messages(batch)).await.is_err() {
            return;
        }
        if let Some(f) = after {
            let ended = matches!(f, Fetched::Ended);
            if tx.send(f).await.is_err() || ended {
                return;
            }
        }
    }
}
