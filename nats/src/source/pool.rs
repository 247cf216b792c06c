//! A worker pool's reader of a partitioned NATS source. JetStream has no consumer group, so
//! the pool assigns the subject partitions itself ([`weir_engine::pool_members`]): every
//! worker heartbeats in the checkpoint store, computes the same assignment from the live
//! workers, and takes its partitions through the pool's claims (fencing, sealing, hand-over
//! checkpoints: [`weir_engine::pool`]), as a Kafka worker does when its group assigns them.
//!
//! The reader outlives the worker's jobs; each job reads the partitions owned when it started.
//! About every [`CHECK_EVERY`] the reader compares them with the assignment:
//!
//! * a partition assigned to another worker is given up: the job ends with a hand-over
//!   checkpoint, and the partition is released once it is committed (when the next job
//!   starts, the previous one having finished);
//! * a partition assigned to this worker is claimed once its holder released it, or stopped
//!   heartbeating for [`SESSION_TIMEOUT`] (its state then comes from its last complete
//!   checkpoint, and its next checkpoint is voided), or was this worker itself (an earlier
//!   process); the job then ends with a hand-over checkpoint, and the next one restores it.
//!
//! Every job reads its partitions from the sequences of the checkpoint it restored, each
//! with a consumer of its own (`<consumer>-p<n>`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::pool::{Finished, PoolStore};
use weir_engine::pool_members::{assign, live_incarnations, live_members};

/// How long a worker reading until caught up waits for the others' partitions by default.
pub const DEFAULT_CAUGHT_UP_TIMEOUT: Duration = Duration::from_secs(120);
use weir_engine::{Chunk, EngineError};

pub use weir_engine::pool_members::SESSION_TIMEOUT;

use super::{last_sequence, NatsPartitionsReader, NatsSourceConfig};

/// How often a reader compares its partitions with the assignment.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The partitions a worker owns: `source/partition key` → its claim's generation (shared with
/// the worker's job loop, which restores them).
pub type Owned = Arc<Mutex<BTreeMap<String, u64>>>;

/// A pool worker's reader of one partitioned NATS source (see the module's docs).
pub struct NatsPoolReader {
    source: usize,
    name: String,
    first_partition: usize,
    config: NatsSourceConfig,
    pool: Arc<PoolStore>,
    owned: Owned,
    /// The partitions' keys in the pool (`source/nats/<stream>/<n>`), by number.
    keys: Vec<String>,
    /// Where the next job's partitions continue (from the checkpoint it restored).
    resume: HashMap<u32, Option<Resume>>,
    /// The hand-over flag of the job served, and its readers.
    run: Option<(Arc<AtomicBool>, NatsPartitionsReader)>,
    /// Partitions given up by the job that ended: released once the next one starts.
    to_release: Vec<(String, u64)>,
    /// The job served last ended with a hand-over (a change of partitions).
    handed_over: bool,
    last_check: Instant,
    /// Whether this reader looked for claims of this worker that no reader holds any more
    /// (see [`Self::stale_claims`]).
    stale_checked: bool,
    /// Reading until caught up: the job served last ended only to flush its partitions' last
    /// windows; the worker then waits for the other partitions in a new job.
    flushed_to_wait: bool,
    /// Reading until caught up: how long a worker waits for partitions it does not own to be
    /// finished (read to their end and flushed by their owner) before it fails.
    caught_up_timeout: Duration,
    /// Since when this worker waits for the others' partitions, and when it last said so.
    waiting: Option<(Instant, Option<Instant>)>,
    /// Since when the pool's store fails the checks of [`Self::caught_up`] (they are tried
    /// again until `caught_up_timeout`), and when that was last logged.
    store_failing: Option<(Instant, Option<Instant>)>,
    /// The job served read rows: its partitions' last windows wait for its final flush.
    read_in_job: bool,
    /// The job served looked at the assignment once (its partitions are the ones to hold).
    rebalanced_in_job: bool,
    /// Partitions whose hand-over is committed but whose release the store did not take,
    /// with the epoch of that hand-over: tried again at each look at the assignment.
    unreleased: Vec<(String, u64, Option<u64>)>,
    /// Reading until caught up: the stream's last sequence when this worker first read it
    /// (its end when it has none pinned and no reader gave one; see [`Self::end`]).
    stream_end: Option<u64>,
}

impl NatsPoolReader {
    /// The reader of source `source` (named `name`, partition `n` at global id
    /// `first_partition + n`) for the worker of `pool`.
    pub fn new(
        source: usize,
        name: &str,
        first_partition: usize,
        config: NatsSourceConfig,
        pool: Arc<PoolStore>,
        owned: Owned,
    ) -> Self {
        let keys = config
            .partition_keys()
            .into_iter()
            .map(|k| format!("{name}/{k}"))
            .collect();
        NatsPoolReader {
            source,
            name: name.to_string(),
            first_partition,
            config,
            pool,
            owned,
            keys,
            resume: HashMap::new(),
            run: None,
            to_release: Vec::new(),
            handed_over: false,
            last_check: Instant::now(),
            stale_checked: false,
            flushed_to_wait: false,
            caught_up_timeout: DEFAULT_CAUGHT_UP_TIMEOUT,
            waiting: None,
            store_failing: None,
            read_in_job: false,
            rebalanced_in_job: false,
            unreleased: Vec::new(),
            stream_end: None,
        }
    }

    /// Reading until caught up: waits at most `timeout` for the partitions of other workers
    /// to be finished (default [`DEFAULT_CAUGHT_UP_TIMEOUT`]).
    pub fn with_caught_up_timeout(mut self, timeout: Duration) -> Self {
        self.caught_up_timeout = timeout;
        self
    }

    /// Reading until caught up: whether the job served last ended only to flush its
    /// partitions' last windows, the worker waiting for the others' in a new job.
    pub fn flushed_to_wait(&self) -> bool {
        self.flushed_to_wait
    }

    /// Before a job: where each partition continues (`resume(partition key)`, the
    /// restored checkpoint's sequence).
    pub fn start_job(&mut self, resume: &dyn Fn(&str) -> Option<Resume>) {
        self.resume = self
            .config
            .partition_keys()
            .iter()
            .enumerate()
            .map(|(n, k)| (n as u32, resume(k)))
            .collect();
    }

    /// Whether the job served last ended with a hand-over.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// Reading until caught up, after a job that read its partitions to their end: the
    /// stream sequence each was read to, by pool partition key (recorded with it as
    /// finished: a later run reading further reads it again).
    pub fn finished_ends(&self) -> BTreeMap<String, u64> {
        let Some((_, readers)) = &self.run else {
            return BTreeMap::new();
        };
        readers
            .targets()
            .filter_map(|(n, target)| Some((self.keys.get(n as usize)?.clone(), target)))
            .collect()
    }

    /// Stops reading (the worker stops, or joins again after losing partitions).
    pub fn close(&mut self) {
        self.run = None;
    }

    fn owned_numbers(&self) -> Result<BTreeSet<u32>, EngineError> {
        let owned = self
            .owned
            .lock()
            .map_err(|_| EngineError::Internal("the owned partitions are poisoned".into()))?;
        Ok(self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| owned.contains_key(*k))
            .map(|(n, _)| n as u32)
            .collect())
    }

    /// The first call of a job: releases what the previous one handed over (its checkpoint is
    /// committed: that job finished), opens the owned partitions' readers, and marks the
    /// others idle in the job's clocks.
    fn join_run(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        let committed = std::mem::take(&mut self.to_release);
        if !committed.is_empty() {
            // the previous job ended: its newest complete checkpoint is its committed hand-over
            match self.pool.newest_complete_epoch() {
                Ok(handover) => self
                    .unreleased
                    .extend(committed.into_iter().map(|(k, g)| (k, g, handover))),
                Err(e) => {
                    tracing::warn!(source = %self.name, "cannot read this worker's newest checkpoint to release partitions (trying again with the next job): {}", e.chain());
                    self.to_release = committed;
                }
            }
        }
        self.release_committed();
        // rows read by a job that ended with a hand-over still wait for a flush
        if !self.handed_over {
            self.read_in_job = false;
        }
        self.handed_over = false;
        self.flushed_to_wait = false;
        self.rebalanced_in_job = false;
        // (a wait starts again after a job that read or flushed partitions)
        self.waiting = None;
        // reading until caught up, every partition of every job ends where the stream ended
        // when the worker started: each reader would read to the stream's end when it
        // connects, which a steady producer keeps moving (partitions read to different ends
        // would each look unfinished to the worker whose end is further)
        if self.config.until_caught_up && self.config.end_sequence.is_none() {
            // (not an empty stream's 0: a partition taken over later would read nothing)
            self.config.end_sequence = self.end().filter(|&e| e > 0);
        }
        let owned = self.owned_numbers()?;
        let partitions: Vec<(u32, Option<Resume>)> = owned
            .iter()
            .map(|n| (*n, self.resume.get(n).copied().flatten()))
            .collect();
        for n in 0..self.keys.len() {
            let clock = ctx.clocks.partition(self.first_partition + n);
            clock.set_idle(!owned.contains(&(n as u32)));
            clock.set_read_here(owned.contains(&(n as u32)));
            clock.set_resumable_end();
        }
        tracing::info!(source = %self.name, partitions = ?owned, "nats: this worker reads its partitions");
        let readers = NatsPartitionsReader::new(
            self.source,
            &self.name,
            self.first_partition,
            &self.config,
            &partitions,
        )?;
        self.run = Some((ctx.handover.clone(), readers));
        // a job that owns nothing looks at the assignment at once
        let now = Instant::now();
        self.last_check = if owned.is_empty() {
            now.checked_sub(CHECK_EVERY).unwrap_or(now)
        } else {
            now
        };
        Ok(())
    }

    /// Records the release of the partitions whose hand-over checkpoint is committed; those
    /// the store does not take are tried again at the next look at the assignment.
    fn release_committed(&mut self) {
        let pool = &self.pool;
        self.unreleased.retain(|(key, generation, handover)| match pool.release_after(key, *generation, *handover) {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!(partition = %key, "cannot record the release of a partition (trying again): {}", e.chain());
                true
            }
        });
    }

    /// Once per reader: the partitions assigned to other workers that this worker still
    /// holds (not released) but does not own: claims of an earlier process of this worker
    /// (killed and started again before its session expired, while the assignment moved), or
    /// of this process before it was fenced and joined again. Their next owner would wait
    /// for their release for as long as this worker heartbeats: they are taken back here, so
    /// that the next look at the assignment gives them up with a hand-over checkpoint and
    /// releases them.
    fn stale_claims(
        &mut self,
        owned: &BTreeSet<u32>,
        mine: &BTreeSet<u32>,
    ) -> Result<Vec<u32>, EngineError> {
        if self.stale_checked {
            return Ok(Vec::new());
        }
        let me = self.pool.worker();
        let mut stale = Vec::new();
        for n in 0..self.keys.len() as u32 {
            let key = &self.keys[n as usize];
            if owned.contains(&n)
                || mine.contains(&n)
                || self.to_release.iter().any(|(k, _)| k == key)
                || self.unreleased.iter().any(|(k, _, _)| k == key)
            {
                continue;
            }
            if let Some(h) = self.pool.holder(key)? {
                if h.worker == me && !h.released {
                    stale.push(n);
                }
            }
        }
        if !stale.is_empty() {
            tracing::info!(source = %self.name, partitions = ?stale, "nats: this worker still holds partitions assigned to others (an earlier process of it, or before it joined again); taking them back to hand them over");
        }
        self.stale_checked = true;
        Ok(stale)
    }

    /// Reading until caught up, this job's partitions read to their end (or it owns none):
    /// whether the job ends (`Some`: whether only to flush its partitions' last windows, the
    /// worker then waiting in a new job) or waits for the other workers' partitions (`None`).
    /// A worker ends once every partition is finished: read to its end and its last windows
    /// flushed by a committed final checkpoint of its owner (see
    /// [`PoolStore::partition_finished`]), and read at least to this worker's end (a
    /// partition finished by an earlier run is read again by the worker it is assigned to);
    /// a partition read by a worker that was then killed is not, and waits for the worker
    /// that takes it over. It fails after `caught_up_timeout` of waiting, or of a pool
    /// store that cannot be read (until then, such a failure only makes it look again later).
    fn caught_up(&mut self) -> Result<Option<bool>, EngineError> {
        match self.caught_up_now() {
            Ok(done) => {
                self.store_failing = None;
                Ok(done)
            }
            // (the store's own failures only: a file that does not decode stays so)
            Err(e @ EngineError::Checkpoint { .. }) => {
                let now = Instant::now();
                let (since, logged) = self.store_failing.get_or_insert((now, None));
                if since.elapsed() >= self.caught_up_timeout {
                    return Err(e);
                }
                if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    *logged = Some(now);
                    tracing::warn!(source = %self.name, error = %e.chain(), "nats: cannot tell whether the pool's partitions are finished (the pool's store failed); trying again");
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// One look of [`Self::caught_up`].
    fn caught_up_now(&mut self) -> Result<Option<bool>, EngineError> {
        let owned = self.owned_numbers()?;
        // (rows this job read wait for its final flush, even of a partition finished before;
        // this worker's own partitions were claimed by it, and are finished once read to
        // where this job's readers read)
        let mut own_finished = !self.read_in_job;
        let targets: HashMap<u32, u64> = self
            .run
            .as_ref()
            .map(|(_, r)| r.targets().collect())
            .unwrap_or_default();
        for &n in &owned {
            let key = &self.keys[n as usize];
            let no_one = BTreeMap::new();
            own_finished = own_finished && self.finished(key, targets.get(&n).copied(), &no_one)?;
        }
        // the other partitions: finished by a worker alive now (read to its own end, in this
        // run), or read at least to this worker's end (not when it cannot be read yet)
        let end = self.end();
        let at_least = Some(end.unwrap_or(u64::MAX));
        let live = live_incarnations(&self.pool)?;
        let mut unfinished = Vec::new();
        for (n, key) in self.keys.iter().enumerate() {
            if !owned.contains(&(n as u32)) && !self.finished(key, at_least, &live)? {
                unfinished.push(n);
            }
        }
        if !own_finished {
            // the job's final checkpoint flushes them; the worker marks them finished
            return Ok(Some(!unfinished.is_empty()));
        }
        if unfinished.is_empty() {
            self.waiting = None;
            return Ok(Some(false));
        }
        let now = Instant::now();
        let (since, logged) = self.waiting.get_or_insert((now, None));
        if since.elapsed() >= self.caught_up_timeout {
            return Err(EngineError::source(
                &self.name,
                format!(
                    "partitions {unfinished:?} of the stream were not finished by their \
                     workers within {} s (a worker that holds them stopped and its session \
                     has not timed out, or no live worker is assigned them); start a worker \
                     that reads them, or wait longer with --caught-up-timeout",
                    self.caught_up_timeout.as_secs()
                ),
            ));
        }
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *logged = Some(now);
            tracing::info!(source = %self.name, partitions = ?unfinished, end = ?end, "nats: every partition of this worker is read to its end; waiting for the other workers' partitions to be finished (read to this end, and their last windows flushed)");
        }
        Ok(None)
    }

    /// Whether `partition` is finished: claimed (by a live worker, or one that was: a
    /// partition nobody claimed yet is still to be read, unlike in
    /// [`PoolStore::partition_finished`]) and flushed under its newest claim. Unless the
    /// process that finished it is one of the `live` workers now (same worker id *and*
    /// incarnation: it read the partition to its own end in this run), with `at_least` it must
    /// also have been read at least to that stream sequence: a partition finished by an
    /// earlier run, before the messages this run reads were published (or recorded without
    /// its end), is read again by the worker it is assigned to, even when a new process of
    /// the worker that finished it announces itself (it may die before it reads a thing).
    fn finished(
        &self,
        partition: &str,
        at_least: Option<u64>,
        live: &BTreeMap<String, Option<u64>>,
    ) -> Result<bool, EngineError> {
        let Some(holder) = self.pool.holder(partition)? else {
            return Ok(false);
        };
        let read_far = match self.pool.partition_finished_at(partition)? {
            Finished::No => return Ok(false),
            Finished::Yes | Finished::Unclaimed => at_least.is_none(),
            Finished::At(end) => at_least.is_none_or(|e| end >= e),
        };
        if read_far {
            return Ok(true);
        }
        Ok(match live.get(&holder.worker) {
            None => false,
            // (a live worker of an older version announces no incarnation: its id vouches)
            Some(None) => true,
            Some(Some(alive)) => self
                .pool
                .finished_by(partition)?
                .is_some_and(|(worker, i)| worker == holder.worker && i == *alive),
        })
    }

    /// Reading until caught up: the stream sequence this worker reads to, pinned before its
    /// first job's readers connect (the stream's last sequence then); if the stream could not
    /// be read then, the furthest its readers read to, pinned at the next job; `None` while
    /// neither is known.
    fn end(&mut self) -> Option<u64> {
        if let Some(end) = self.config.end_sequence {
            return Some(end);
        }
        if let Some(end) = self.run.as_ref().and_then(|(_, r)| r.end_target()) {
            return Some(end);
        }
        if self.stream_end.is_some() {
            return self.stream_end;
        }
        match last_sequence(&self.config) {
            Ok(last) => {
                self.stream_end = Some(last);
                Some(last)
            }
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e.chain(), "nats: cannot read the stream's last sequence (trying again)");
                None
            }
        }
    }

    /// Compares the owned partitions with the assignment; claims and gives up partitions
    /// when they differ, and returns whether the job must end with a hand-over.
    fn rebalance(&mut self) -> Result<bool, EngineError> {
        weir_engine::checkpoint::failpoint("nats_pool_rebalance");
        self.release_committed();
        let members = live_members(&self.pool)?;
        let me = self.pool.worker().to_string();
        let assigned = assign(&self.keys, &members);
        let owned = self.owned_numbers()?;
        let mine: BTreeSet<u32> = (0..self.keys.len() as u32)
            .filter(|n| assigned.get(&self.keys[*n as usize]) == Some(&me))
            .collect();
        let give_up: Vec<u32> = owned.difference(&mine).copied().collect();
        let mut take = self.stale_claims(&owned, &mine)?;
        for &n in mine.difference(&owned) {
            let key = &self.keys[n as usize];
            let free = match self.pool.holder(key)? {
                None => true,
                Some(h) => h.worker == me || h.released || !members.contains(&h.worker),
            };
            if free {
                take.push(n);
            }
        }
        if give_up.is_empty() && take.is_empty() {
            return Ok(false);
        }
        tracing::info!(source = %self.name, workers = ?members, give_up = ?give_up, take = ?take, "nats: the pool's assignment changed; ending the job with a hand-over checkpoint");
        let mut owned = self
            .owned
            .lock()
            .map_err(|_| EngineError::Internal("the owned partitions are poisoned".into()))?;
        let mut changed = !give_up.is_empty();
        for n in take {
            let key = self.keys[n as usize].clone();
            match self.pool.claim(&key) {
                Ok((generation, _)) => {
                    owned.insert(key, generation);
                    changed = true;
                }
                // claimed by another worker meanwhile, or the store failed: the next look
                // at the assignment tries again
                Err(e) => {
                    // (a claim that failed after its file was written would be held by
                    // nobody: the next look takes it back)
                    self.stale_checked = false;
                    tracing::warn!(partition = %key, error = %e.chain(), "nats: cannot claim a partition (trying again)")
                }
            }
        }
        for n in give_up {
            let key = &self.keys[n as usize];
            if let Some(generation) = owned.remove(key) {
                self.to_release.push((key.clone(), generation));
            }
        }
        Ok(changed)
    }
}

impl PartitionReader for NatsPoolReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        let joined = self
            .run
            .as_ref()
            .is_some_and(|(h, _)| Arc::ptr_eq(h, &ctx.handover));
        if !joined {
            self.join_run(ctx)?;
        }
        loop {
            if ctx.stopping() {
                return Ok(None);
            }
            if self.last_check.elapsed() >= CHECK_EVERY {
                self.last_check = Instant::now();
                match self.rebalance() {
                    Ok(false) => self.rebalanced_in_job = true,
                    Ok(true) => {
                        self.handed_over = true;
                        ctx.request_handover();
                        return Ok(None);
                    }
                    // the store did not answer: the partitions stay as they are for now
                    // (fencing keeps a worker that lost them from committing for them)
                    Err(e) => {
                        tracing::warn!(source = %self.name, error = %e.chain(), "nats: cannot read the pool's assignment (trying again)")
                    }
                }
            }
            let Some((_, readers)) = self.run.as_mut() else {
                return Ok(None);
            };
            let idle = readers.numbers().is_empty();
            if !idle {
                if let Some(c) = readers.poll(ctx)? {
                    self.read_in_job |= matches!(c.data, weir_engine::ChunkData::Messages(_));
                    return Ok(Some(c));
                }
            }
            // (not before the job looked at the assignment: a partition it is to claim may
            // still read as finished by an earlier run)
            let at_end = idle || readers.ended();
            if self.config.until_caught_up && !self.rebalanced_in_job && at_end {
                let since = self.waiting.get_or_insert((Instant::now(), None)).0;
                if since.elapsed() >= self.caught_up_timeout {
                    return Err(EngineError::source(
                        &self.name,
                        format!(
                            "the pool's assignment could not be read for {} s (see the \
                             warnings above); the run cannot tell whether the other \
                             partitions are finished",
                            self.caught_up_timeout.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            } else if self.config.until_caught_up && at_end {
                match self.caught_up()? {
                    Some(flush) => {
                        self.flushed_to_wait = flush;
                        return Ok(None);
                    }
                    None => std::thread::sleep(CHECK_EVERY),
                }
            } else if idle {
                std::thread::sleep(Duration::from_millis(100));
            } else if at_end {
                return Ok(None);
            }
        }
    }

    fn finish(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        match self.run.as_mut() {
            Some((_, readers)) => readers.finish_all(ctx),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::NatsPartitions;

    #[test]
    fn a_pool_store_failing_while_a_worker_waits_is_read_again_until_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().to_str().unwrap();
        let keys = ["events/nats/EVENTS/0", "events/nats/EVENTS/1"];
        // worker b finished both partitions, read to sequence 100
        let b = PoolStore::open(loc, "b").unwrap();
        let owned: BTreeMap<String, u64> = keys
            .iter()
            .map(|k| (k.to_string(), b.claim(k).unwrap().0))
            .collect();
        let ends = keys.iter().map(|k| (k.to_string(), 100)).collect();
        b.mark_finished(&owned, &ends).unwrap();
        // worker a, reading to sequence 100, owns nothing: it waits for b's partitions
        let endpoint = crate::NatsEndpoint::new(vec!["nats://127.0.0.1:1".into()], "t");
        let mut config = NatsSourceConfig::new(endpoint, "EVENTS", "c");
        config.partitions = Some(NatsPartitions {
            count: 2,
            subject: "events.{partition}".into(),
        });
        config.until_caught_up = true;
        config.end_sequence = Some(100);
        let a = Arc::new(PoolStore::open(loc, "a").unwrap());
        let timeout = Duration::from_secs(2);
        let mut reader = NatsPoolReader::new(0, "events", 0, config, a, Owned::default())
            .with_caught_up_timeout(timeout);
        assert_eq!(reader.caught_up().unwrap(), Some(false), "b finished them");
        // b's file cannot be read for a while (a link to itself: the store's read fails): a
        // looks again later, and fails only after the timeout
        let file = dir.path().join("workers/b/finished_at.json");
        let saved = std::fs::read(&file).unwrap();
        let unreadable = || {
            std::fs::remove_file(&file).unwrap();
            std::os::unix::fs::symlink(&file, &file).unwrap();
        };
        unreadable();
        assert_eq!(reader.caught_up().unwrap(), None);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(reader.caught_up().unwrap(), None);
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, &saved).unwrap();
        assert_eq!(reader.caught_up().unwrap(), Some(false), "read again");
        unreadable();
        assert_eq!(reader.caught_up().unwrap(), None, "a new clock");
        std::thread::sleep(timeout);
        let e = reader.caught_up().unwrap_err();
        assert!(e.to_string().contains("finished_at.json"), "{e}");
        // a file that does not decode is no store failure: it fails at once
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"{").unwrap();
        let mut reader = NatsPoolReader::new(
            0,
            "events",
            0,
            reader.config.clone(),
            reader.pool.clone(),
            Owned::default(),
        );
        assert!(reader.caught_up().is_err());
    }
}
