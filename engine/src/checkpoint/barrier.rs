//! Where the threads of a job meet at a barrier, and the test hook that pauses the checkpoint
//! coordinator at named points.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::EngineError;

/// Test hook: `WEIR_FAILPOINT_PAUSE=<point>:<ms>[:<skip>[:<times>]]` pauses a job's thread at
/// `point` (`before_manifest`: every part is in, the manifest is not written;
/// `before_seal`: a pool worker's manifest is written, not sealed; `before_commit`: the
/// manifest is written (and sealed), the outputs are not told to commit;
/// `before_commit_owning`: the same, for a pool worker that owns partitions;
/// `nats_consumer_deleted`: a NATS source deleted its consumer to create it again;
/// `nats_connected`: a NATS reader connected and placed its consumer;
/// `nats_pool_rebalance`: a NATS pool reader is about to look at the assignment (a worker
/// that heartbeats but claims nothing yet); `worker_chunk`: a
/// worker took a chunk from its queue, not handled yet (slow workers fill their queues and
/// hold the readers back)), after passing it `skip` times (then every time, or `times`
/// times), so that crash tests can kill the process there. It logs `failpoint <point>` when
/// it pauses (`worker_chunk` only the first time). The variable is read once.
pub fn failpoint(point: &str) {
    static SPEC: OnceLock<Option<(String, u64, u64, u64)>> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let spec = std::env::var("WEIR_FAILPOINT_PAUSE").ok()?;
        let mut parts = spec.split(':');
        let (name, ms) = (parts.next()?, parts.next()?);
        let ms: u64 = ms.parse().unwrap_or(0);
        let skip: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let times: u64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        Some((name.to_string(), ms, skip, times))
    });
    let Some((name, ms, skip, times)) = spec else {
        return;
    };
    if name != point {
        return;
    }
    let passed = PASSED.fetch_add(1, Ordering::Relaxed);
    if passed >= *skip && passed - skip < *times {
        // a point passed per chunk would fill the log
        if point != "worker_chunk" || passed == *skip {
            tracing::warn!(point, ms, "failpoint {point}");
            eprintln!("failpoint {point}");
        }
        std::thread::sleep(Duration::from_millis(*ms));
    }
}

/// Lets the workers meet at a barrier: every one waits until all arrived.
pub(crate) struct Rendezvous {
    state: Mutex<(usize, u64)>,
    all: Condvar,
    n: usize,
}

impl Rendezvous {
    pub fn new(n: usize) -> Self {
        Rendezvous {
            state: Mutex::new((0, 0)),
            all: Condvar::new(),
            n,
        }
    }

    /// Waits for every party; fails when the job is cancelled meanwhile.
    pub fn wait(&self, cancel: &AtomicBool) -> Result<(), EngineError> {
        let poisoned = || EngineError::Internal("rendezvous poisoned".into());
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        let generation = s.1;
        s.0 += 1;
        if s.0 == self.n {
            s.0 = 0;
            s.1 += 1;
            self.all.notify_all();
            return Ok(());
        }
        while s.1 == generation {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            s = self
                .all
                .wait_timeout(s, Duration::from_millis(50))
                .map_err(|_| poisoned())?
                .0;
        }
        Ok(())
    }
}
