//! Which partitions of a worker pool are finished: read to their end *and* their windows
//! flushed by a final checkpoint that was committed. A pool reading `--until-caught-up` ends
//! only once every partition is; a partition's offset committed to the group at its end says
//! only that its input was read, while its last windows may still wait in the state of the
//! checkpoint that owns it (a worker killed while waiting for the others, or a partition
//! handed over between two rebalances), and would be lost if every live worker ended then.
//!
//! A source whose readers know the position they read to (a NATS stream sequence) records it
//! with the partition, in a file of its own (older versions read `finished.json` as it always
//! was): a later run, whose end is further, reads the partition again from there instead of
//! taking it for finished (see [`Finished::At`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pool::PoolStore;
use crate::EngineError;

/// The file, in a worker's checkpoint store, naming the partitions its last final checkpoint
/// flushed, with the generation of the claim under which it owned them.
const FINISHED: &str = "finished.json";

/// The file beside [`FINISHED`] with the position each partition was read to, for sources
/// that know it: written first, so that a position is never older than its `finished.json`.
const FINISHED_AT: &str = "finished_at.json";

/// The file beside [`FINISHED`] naming the process that finished its partitions (see
/// [`PoolStore::incarnation`]): written first, so that it is never older than
/// `finished.json`. Another worker trusts a partition a live worker finished in this run (read
/// to that worker's own end), and not one an earlier process of the same worker id finished.
const FINISHED_BY: &str = "finished_by.json";

/// The contents of `finished_by.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FinishedBy {
    incarnation: u64,
    /// Partition → the generation of the claim under which it was finished.
    partitions: BTreeMap<String, u64>,
}

/// One partition of `finished_at.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ReadTo {
    generation: u64,
    end: u64,
}

/// Whether a partition is finished, and to where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Its newest claim's worker has not flushed it under that claim.
    No,
    /// Never claimed: no state holds anything of it, so nothing of it waits to be flushed;
    /// but a worker the group just gave it to may be about to claim it and read it.
    Unclaimed,
    /// Flushed under its newest claim; where it was read to is not recorded.
    Yes,
    /// Flushed under its newest claim, read to this position (a NATS stream sequence,
    /// inclusive; a Kafka offset, the one after the last message read): a run reading
    /// further must read it again.
    At(u64),
}

impl PoolStore {
    /// Records that this worker's final checkpoint (every window of `owned` flushed, the
    /// input at its end) is committed, for the partitions it `owned` (key → generation),
    /// each read to its position in `ends` when the source knows it.
    pub fn mark_finished(
        &self,
        owned: &BTreeMap<String, u64>,
        ends: &BTreeMap<String, u64>,
    ) -> Result<(), EngineError> {
        let encode =
            |what: &str, e| EngineError::internal_caused(format_args!("cannot encode {what}"), e);
        let by = FinishedBy {
            incarnation: self.incarnation(),
            partitions: owned.clone(),
        };
        let bytes = serde_json::to_vec(&by).map_err(|e| encode(FINISHED_BY, e))?;
        self.own().put(FINISHED_BY, bytes)?;
        if !ends.is_empty() {
            let read_to: BTreeMap<&String, ReadTo> = owned
                .iter()
                .filter_map(|(key, &generation)| {
                    let end = *ends.get(key)?;
                    Some((key, ReadTo { generation, end }))
                })
                .collect();
            let bytes = serde_json::to_vec(&read_to).map_err(|e| encode(FINISHED_AT, e))?;
            self.own().put(FINISHED_AT, bytes)?;
        }
        let bytes = serde_json::to_vec(owned).map_err(|e| encode(FINISHED, e))?;
        self.own().put(FINISHED, bytes)
    }

    /// Whether `partition` (`source/topic/partition`) is finished: the worker of its newest
    /// claim recorded a committed final checkpoint under that claim. A partition never
    /// claimed has no state, so nothing of it waits to be flushed (see
    /// [`Finished::Unclaimed`] for when that is not enough).
    pub fn partition_finished(&self, partition: &str) -> Result<bool, EngineError> {
        Ok(self.partition_finished_at(partition)? != Finished::No)
    }

    /// Whether `partition` is finished (see [`Self::partition_finished`]), with the position
    /// it was read to when its source recorded one.
    pub fn partition_finished_at(&self, partition: &str) -> Result<Finished, EngineError> {
        match self.newest_claim(partition)? {
            Some((worker, generation)) => self.finished_under(partition, &worker, generation),
            None => Ok(Finished::Unclaimed),
        }
    }

    /// The worker and incarnation (see [`Self::incarnation`]) that finished `partition` under
    /// its newest claim, when that worker recorded them (`None` also while it is not finished).
    pub fn finished_by(&self, partition: &str) -> Result<Option<(String, u64)>, EngineError> {
        let Some((worker, generation)) = self.newest_claim(partition)? else {
            return Ok(None);
        };
        let Some(bytes) = self.store_of(&worker)?.get(FINISHED_BY)? else {
            return Ok(None);
        };
        let by: FinishedBy = decode(FINISHED_BY, &worker, &bytes)?;
        let finished = by.partitions.get(partition) == Some(&generation);
        Ok(finished.then_some((worker, by.incarnation)))
    }

    /// Whether `worker` finished `partition` under the claim of `generation`.
    fn finished_under(
        &self,
        partition: &str,
        worker: &str,
        generation: u64,
    ) -> Result<Finished, EngineError> {
        let store = self.store_of(worker)?;
        let Some(bytes) = store.get(FINISHED)? else {
            return Ok(Finished::No);
        };
        let finished: BTreeMap<String, u64> = decode(FINISHED, worker, &bytes)?;
        if finished.get(partition) != Some(&generation) {
            return Ok(Finished::No);
        }
        let Some(bytes) = store.get(FINISHED_AT)? else {
            return Ok(Finished::Yes);
        };
        let read_to: BTreeMap<String, ReadTo> = decode(FINISHED_AT, worker, &bytes)?;
        Ok(match read_to.get(partition) {
            Some(r) if r.generation == generation => Finished::At(r.end),
            _ => Finished::Yes,
        })
    }
}

/// The file `what` of `worker`, decoded.
fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    worker: &str,
    bytes: &[u8],
) -> Result<T, EngineError> {
    serde_json::from_slice(bytes).map_err(|e| {
        EngineError::internal_caused(format_args!("{what} of worker {worker} cannot be read"), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_finished_under_its_newest_claim_with_the_end_it_was_read_to() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().to_str().unwrap();
        let (a, b) = (
            PoolStore::open(loc, "a").unwrap(),
            PoolStore::open(loc, "b").unwrap(),
        );
        let (p0, p1, p2) = ("s/n/0", "s/n/1", "s/n/2");
        assert_eq!(
            b.partition_finished_at(p0).unwrap(),
            Finished::Unclaimed,
            "never claimed"
        );
        let (g0, _) = a.claim(p0).unwrap();
        let (g1, _) = a.claim(p1).unwrap();
        assert_eq!(b.partition_finished_at(p0).unwrap(), Finished::No);
        let owned: BTreeMap<String, u64> = [(p0.into(), g0), (p1.into(), g1)].into();
        a.mark_finished(&owned, &[(p0.to_string(), 41)].into())
            .unwrap();
        assert_eq!(b.partition_finished_at(p0).unwrap(), Finished::At(41));
        assert_eq!(
            b.partition_finished_at(p1).unwrap(),
            Finished::Yes,
            "no end known"
        );
        assert!(b.partition_finished(p0).unwrap());
        // finished by this opening of a's store, not by one opened later (a new process)
        let by = |s: &PoolStore, p| s.finished_by(p).unwrap();
        assert_eq!(by(&b, p0), Some(("a".to_string(), a.incarnation())));
        assert_eq!(by(&b, p1), Some(("a".to_string(), a.incarnation())));
        let a_again = PoolStore::open(loc, "a").unwrap();
        assert_ne!(a_again.incarnation(), a.incarnation());
        // claimed again: finished under an older claim is not finished
        b.claim(p0).unwrap();
        assert_eq!(b.partition_finished_at(p0).unwrap(), Finished::No);
        assert_eq!(by(&b, p0), None);
        assert!(!b.partition_finished(p0).unwrap());
        a.claim(p2).unwrap();
        assert_eq!(
            b.partition_finished_at(p2).unwrap(),
            Finished::No,
            "not in the file"
        );
    }
}
