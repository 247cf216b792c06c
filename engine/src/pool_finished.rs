//! Which partitions of a worker pool are finished: read to their end *and* their windows
//! flushed by a final checkpoint that was committed. A pool reading `--until-caught-up` ends
//! only once every partition is; a partition's offset committed to the group at its end says
//! only that its input was read, while its last windows may still wait in the state of the
//! checkpoint that owns it (a worker killed while waiting for the others, or a partition
//! handed over between two rebalances), and would be lost if every live worker ended then.

use std::collections::BTreeMap;

use crate::pool::PoolStore;
use crate::EngineError;

/// The file, in a worker's checkpoint store, naming the partitions its last final checkpoint
/// flushed, with the generation of the claim under which it owned them.
const FINISHED: &str = "finished.json";

impl PoolStore {
    /// Records that this worker's final checkpoint (every window of `owned` flushed, the
    /// input at its end) is committed, for the partitions it `owned` (key → generation).
    pub fn mark_finished(&self, owned: &BTreeMap<String, u64>) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(owned).map_err(|e| {
            EngineError::internal_caused(format_args!("cannot encode {FINISHED}"), e)
        })?;
        self.own().put(FINISHED, bytes)
    }

    /// Whether `partition` (`source/topic/partition`) is finished: the worker of its newest
    /// claim recorded a committed final checkpoint under that claim. A partition never
    /// claimed has no state, so nothing of it waits to be flushed.
    pub fn partition_finished(&self, partition: &str) -> Result<bool, EngineError> {
        let Some((worker, generation)) = self.newest_claim(partition)? else {
            return Ok(true);
        };
        let Some(bytes) = self.store_of(&worker)?.get(FINISHED)? else {
            return Ok(false);
        };
        let finished: BTreeMap<String, u64> = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::internal_caused(
                format_args!("{FINISHED} of worker {worker} cannot be read"),
                e,
            )
        })?;
        Ok(finished.get(partition) == Some(&generation))
    }
}
