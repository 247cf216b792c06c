//! Which partitions of a worker pool are finished: read to their end *and* their windows
//! flushed by a final checkpoint that was committed. A pool reading `--until-caught-up` ends
//! only once every partition is; a partition's offset committed to the group at its end says
//! only that its input was read, while its last windows may still wait in the state of the
//! checkpoint that owns it (a worker killed while waiting for the others, or a partition
//! handed over between two rebalances), and would be lost if every live worker ended then.
//!
//! A source whose readers know the position they read to (a NATS stream sequence) records it
//! with the partition: a later run, whose end is further, reads the partition again from
//! there instead of taking it for finished (see [`Finished::At`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pool::PoolStore;
use crate::EngineError;

/// The file, in a worker's checkpoint store, naming the partitions its last final checkpoint
/// flushed, with the generation of the claim under which it owned them (and, for a source
/// that knows it, the position they were read to).
const FINISHED: &str = "finished.json";

/// One partition of `finished.json`: the claim's generation alone (as every version wrote
/// it before positions were recorded, and as sources without positions still write it), or
/// with the position the partition was read to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    Generation(u64),
    At { generation: u64, end: u64 },
}

impl Entry {
    fn generation(self) -> u64 {
        match self {
            Entry::Generation(g) | Entry::At { generation: g, .. } => g,
        }
    }
}

/// Whether a partition is finished, and to where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Its newest claim's worker has not flushed it under that claim.
    No,
    /// Flushed under its newest claim, or never claimed (no state holds anything of it);
    /// where it was read to is not recorded.
    Yes,
    /// Flushed under its newest claim, read to this position (inclusive: a stream sequence):
    /// a run reading further must read it again.
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
        let entries: BTreeMap<&String, Entry> = owned
            .iter()
            .map(|(key, &generation)| {
                let entry = match ends.get(key) {
                    Some(&end) => Entry::At { generation, end },
                    None => Entry::Generation(generation),
                };
                (key, entry)
            })
            .collect();
        let bytes = serde_json::to_vec(&entries).map_err(|e| {
            EngineError::internal_caused(format_args!("cannot encode {FINISHED}"), e)
        })?;
        self.own().put(FINISHED, bytes)
    }

    /// Whether `partition` (`source/topic/partition`) is finished: the worker of its newest
    /// claim recorded a committed final checkpoint under that claim. A partition never
    /// claimed has no state, so nothing of it waits to be flushed.
    pub fn partition_finished(&self, partition: &str) -> Result<bool, EngineError> {
        Ok(self.partition_finished_at(partition)? != Finished::No)
    }

    /// Whether `partition` is finished (see [`Self::partition_finished`]), with the position
    /// it was read to when its source recorded one.
    pub fn partition_finished_at(&self, partition: &str) -> Result<Finished, EngineError> {
        let Some((worker, generation)) = self.newest_claim(partition)? else {
            return Ok(Finished::Yes);
        };
        let Some(bytes) = self.store_of(&worker)?.get(FINISHED)? else {
            return Ok(Finished::No);
        };
        let finished: BTreeMap<String, Entry> = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::internal_caused(
                format_args!("{FINISHED} of worker {worker} cannot be read"),
                e,
            )
        })?;
        Ok(match finished.get(partition) {
            Some(e) if e.generation() == generation => match e {
                Entry::Generation(_) => Finished::Yes,
                Entry::At { end, .. } => Finished::At(*end),
            },
            _ => Finished::No,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_the_older_generation_only_form_and_the_form_with_an_end() {
        let old: BTreeMap<String, Entry> = serde_json::from_str(r#"{"s/t/0": 3}"#).unwrap();
        assert_eq!(old["s/t/0"], Entry::Generation(3));
        let new: BTreeMap<String, Entry> =
            serde_json::from_str(r#"{"s/t/0": {"generation": 4, "end": 120}}"#).unwrap();
        assert_eq!(
            new["s/t/0"],
            Entry::At {
                generation: 4,
                end: 120
            }
        );
        // a partition without an end is still written as the older form: older versions of
        // a rolling upgrade read it
        assert_eq!(serde_json::to_string(&Entry::Generation(3)).unwrap(), "3");
    }

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
            Finished::Yes,
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
        // claimed again: finished under an older claim is not finished
        b.claim(p0).unwrap();
        assert_eq!(b.partition_finished_at(p0).unwrap(), Finished::No);
        assert!(!b.partition_finished(p0).unwrap());
        a.claim(p2).unwrap();
        assert_eq!(
            b.partition_finished_at(p2).unwrap(),
            Finished::No,
            "not in the file"
        );
    }
}
