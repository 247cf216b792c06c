//! A stream read as subject partitions: one [`NatsReader`] (one filtered durable consumer)
//! per partition, polled in turn by one reader thread.

use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::{Chunk, EngineError};

use super::reader::{Step, POLL_WAIT};
use super::{NatsReader, NatsSourceConfig};

/// The shortest wait of one partition's pull round (the rounds of all partitions share
/// [`POLL_WAIT`]).
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Reads some subject partitions of a stream (all of them outside a pool), each with its own
/// consumer, sequence, acknowledgements and watermark.
pub struct NatsPartitionsReader {
    /// (partition number, its reader, whether it ended).
    readers: Vec<(u32, NatsReader, bool)>,
    /// The reader polled first in the next round (round-robin fairness).
    next: usize,
}

impl NatsPartitionsReader {
    /// Readers of source `source` (named `name`) for `partitions` of `config`: (number,
    /// where it resumes), partition `n` having the global id `first_partition + n`.
    pub fn new(
        source: usize,
        name: &str,
        first_partition: usize,
        config: &NatsSourceConfig,
        partitions: &[(u32, Option<Resume>)],
    ) -> Result<Self, EngineError> {
        let mut readers = Vec::with_capacity(partitions.len());
        for &(n, resume) in partitions {
            let reader = NatsReader::new(
                source,
                name,
                first_partition + n as usize,
                config.for_partition(n),
            )?
            .numbered(n)
            .with_resume(resume);
            readers.push((n, reader, false));
        }
        Ok(NatsPartitionsReader { readers, next: 0 })
    }

    /// The partition numbers read.
    pub fn numbers(&self) -> Vec<u32> {
        self.readers.iter().map(|(n, _, _)| *n).collect()
    }

    /// Reading until caught up: the furthest stream sequence a partition's reader reads to
    /// (each takes the stream's last sequence when it connects), once one connected.
    pub fn end_target(&self) -> Option<u64> {
        self.targets().map(|(_, t)| t).max()
    }

    /// Reading until caught up: the stream sequence each partition's reader reads to, for
    /// the readers that connected.
    pub fn targets(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.readers
            .iter()
            .filter_map(|(n, r, _)| Some((*n, r.target()?)))
    }

    /// Whether every partition was read to its end (none: true).
    pub fn ended(&self) -> bool {
        self.readers.iter().all(|(_, _, e)| *e)
    }

    /// One round over the partitions: a chunk when one is ready, `None` when none came within
    /// about [`POLL_WAIT`], the job stops or every partition ended (see [`Self::ended`]).
    pub fn poll(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        for (_, r, _) in self.readers.iter_mut() {
            r.start(ctx)?;
        }
        let live = self.readers.iter().filter(|(_, _, e)| !*e).count();
        let wait = (POLL_WAIT / live.max(1) as u32).max(MIN_WAIT);
        let count = self.readers.len();
        for i in 0..count {
            let at = (self.next + i) % count;
            let (_, reader, ended) = &mut self.readers[at];
            if *ended {
                continue;
            }
            match reader.step(ctx, wait)? {
                Step::Chunk(c) => {
                    self.next = at + 1;
                    return Ok(Some(c));
                }
                Step::Quiet => {}
                Step::Done if ctx.stop.load(Ordering::Relaxed) => return Ok(None),
                Step::Done => *ended = true,
            }
        }
        Ok(None)
    }

    /// Acknowledges what the finished outputs hold, on every partition.
    pub fn finish_all(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        for (_, r, _) in self.readers.iter_mut() {
            r.finish(ctx)?;
        }
        Ok(())
    }
}

impl PartitionReader for NatsPartitionsReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        loop {
            if let Some(c) = self.poll(ctx)? {
                return Ok(Some(c));
            }
            if ctx.stopping() || self.ended() {
                return Ok(None);
            }
        }
    }

    fn finish(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        self.finish_all(ctx)
    }
}
