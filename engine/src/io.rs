//! The process's one I/O runtime: the Tokio runtime on which weir's asynchronous clients
//! (the checkpoint store's object store, Iceberg catalogs and writers, PostgreSQL sessions,
//! the SQL client, the NATS source's readers and stream look-ups, the NATS sink's and
//! dead-letter output's publishers, the webhook and Elasticsearch sinks' and the schema
//! registry's HTTP clients) do their network and file I/O. It starts on first use
//! with [`DEFAULT_THREADS`] worker threads named `weir-io`, or with the number the binary sets
//! through [`configure`] before anything uses it (`WEIR_IO_THREADS`).
//!
//! CPU-bound work (decoding, aggregation, merging) stays on the engine's own threads, which
//! call into this runtime with [`tokio::runtime::Runtime::block_on`]. The runtime outlives
//! every client, so a client ends its own background tasks when its owner closes it: a NATS
//! reader or publisher drains its connection when dropped (`weir_nats::OwnedClient`). Two
//! runtimes stay apart on purpose: the SQL server's and the SQL executor's (`weir_query`), so
//! that a hostile query can never delay a checkpoint's write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Runtime;

/// Worker threads of the I/O runtime unless the binary configures another number.
pub const DEFAULT_THREADS: usize = 2;

static THREADS: AtomicUsize = AtomicUsize::new(DEFAULT_THREADS);
static RUNTIME: OnceLock<Result<Runtime, std::io::Error>> = OnceLock::new();

/// The I/O runtime could not start (the operating system refused its threads). It refers to
/// the error the runtime's first start met, kept for the life of the process.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the I/O runtime: {0}")]
pub struct IoRuntimeError(#[source] &'static std::io::Error);

/// Sets the number of worker threads (at least 1) of the runtime, before its first use;
/// `false` when it has already started (it keeps its threads).
pub fn configure(threads: usize) -> bool {
    THREADS.store(threads.max(1), Ordering::Relaxed);
    RUNTIME.get().is_none()
}

/// The process's I/O runtime, started on first use.
pub fn runtime() -> Result<&'static Runtime, IoRuntimeError> {
    let started = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS.load(Ordering::Relaxed))
            .thread_name("weir-io")
            .enable_all()
            .build()
    });
    started.as_ref().map_err(IoRuntimeError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_shares_one_runtime_that_serves_blocking_callers() {
        let a = runtime().expect("runtime") as *const Runtime;
        let b = runtime().expect("runtime") as *const Runtime;
        assert_eq!(a, b);
        // callers on many threads at once, each blocking on a timer of the shared runtime
        let threads: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    runtime().expect("runtime").block_on(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        i
                    })
                })
            })
            .collect();
        let sum: i32 = threads.into_iter().map(|t| t.join().expect("join")).sum();
        assert_eq!(sum, 28);
        assert!(!configure(4), "the runtime had started");
    }
}
