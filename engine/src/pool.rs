//! A worker pool's partition ownership, kept in the shared checkpoint store.
//!
//! Kafka's consumer group decides which worker reads which partition; this module makes the
//! state follow. Under the pipeline's checkpoint location:
//!
//! - `workers/<worker>/chk-<epoch>/…`: each worker's own checkpoints (the usual layout), whose
//!   manifests list the partitions the worker owned, each with the generation of its claim.
//! - `partitions/<source>/<partition key>/claim-<generation>.json`: claims. A worker that is
//!   assigned a partition creates the next generation's claim (create-only, so of two workers
//!   one wins) and records where the partition's state was at that moment: the newest
//!   checkpoint of the previous claim's worker that owned it under that claim, or what that
//!   claim recorded in turn.
//! - `workers/<worker>/committed.json`: the newest epoch whose outputs the worker committed
//!   before it gave partitions up, so that the next owner knows whether it must finish a
//!   dead worker's commit.
//!
//! Fencing: before a worker stores a manifest, it checks that the newest claim of every
//! partition it owns is still its own; a worker that lost a partition (its session expired
//! and the partition moved) cannot complete a checkpoint for it, so it never commits rows
//! that the new owner will produce again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    partials_of_partitions, CheckpointStore, Manifest, PartitionColumn, Restored,
};
use crate::job::PartialWindow;
use crate::EngineError;

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint(e.to_string())
}

/// A checkpoint of one worker: where a partition's state is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StateRef {
    pub worker: String,
    pub epoch: u64,
}

/// A worker's claim on a partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    worker: String,
    generation: u64,
    /// Where the partition's state was when the claim was made; `None`: nowhere yet.
    from: Option<StateRef>,
    at_ms: i64,
}

/// What a pool worker restores when it starts a run with a set of partitions.
pub struct PoolRestore {
    /// The state to start from, cut to the owned partitions (its manifest holds this
    /// worker's own newest checkpoint for its outputs, and the owned partitions' offsets).
    pub restored: Option<Restored>,
    /// Checkpoints of other workers the state comes from: their outputs' commits must be
    /// finished (see [`PoolStore::committed_epoch`]) before this worker goes on.
    pub foreign: Vec<(StateRef, Manifest)>,
}

/// The shared store of a pool, seen by one worker.
pub struct PoolStore {
    root: CheckpointStore,
    worker: String,
    own: Arc<CheckpointStore>,
    /// Other workers' stores, opened on demand.
    others: Mutex<HashMap<String, Arc<CheckpointStore>>>,
}

/// `worker` is used in file and object names: letters, digits, `-`, `_` and `.`.
pub fn valid_worker_id(worker: &str) -> bool {
    !worker.is_empty()
        && worker.len() <= 100
        && worker
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !worker.starts_with('.')
}

fn claim_name(partition: &str, generation: u64) -> String {
    format!("partitions/{partition}/claim-{generation:010}.json")
}

impl PoolStore {
    /// Opens the pool's store at `location` (the pipeline's checkpoint location) for `worker`.
    pub fn open(location: &str, worker: &str) -> Result<Self, EngineError> {
        if !valid_worker_id(worker) {
            return Err(err(format!(
                "worker id `{worker}` is not usable in file names: use letters, digits, `-`, `_` and `.`"
            )));
        }
        let root = CheckpointStore::open(location)?;
        let own = Arc::new(CheckpointStore::open(&worker_location(location, worker))?);
        Ok(PoolStore {
            root,
            worker: worker.to_string(),
            own,
            others: Mutex::new(HashMap::new()),
        })
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// This worker's own checkpoint store.
    pub fn own(&self) -> Arc<CheckpointStore> {
        self.own.clone()
    }

    fn store_of(&self, worker: &str) -> Result<Arc<CheckpointStore>, EngineError> {
        if worker == self.worker {
            return Ok(self.own.clone());
        }
        let mut others = self
            .others
            .lock()
            .map_err(|_| err("the pool's store map is poisoned"))?;
        if let Some(s) = others.get(worker) {
            return Ok(s.clone());
        }
        let s = Arc::new(CheckpointStore::open(&worker_location(
            self.root.location(),
            worker,
        ))?);
        others.insert(worker.to_string(), s.clone());
        Ok(s)
    }

    /// The generations of `partition`'s claims, oldest first.
    fn generations(&self, partition: &str) -> Result<Vec<u64>, EngineError> {
        let mut gens: Vec<u64> = self
            .root
            .list_under(&format!("partitions/{partition}"))?
            .iter()
            .filter_map(|n| {
                n.rsplit('/')
                    .next()?
                    .strip_prefix("claim-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    fn read_claim(&self, partition: &str, generation: u64) -> Result<Claim, EngineError> {
        let name = claim_name(partition, generation);
        let bytes = self
            .root
            .get(&name)?
            .ok_or_else(|| err(format!("{}/{name} disappeared", self.root.location())))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            err(format!(
                "{}/{name} cannot be read: {e}",
                self.root.location()
            ))
        })
    }

    /// Where `partition`'s state is under `claim`: the newest checkpoint its worker stored
    /// while owning it under that claim, else where the claim found it.
    fn state_under(&self, partition: &str, claim: &Claim) -> Result<Option<StateRef>, EngineError> {
        let store = self.store_of(&claim.worker)?;
        for epoch in store.complete_epochs()?.into_iter().rev() {
            let Some(m) = store.manifest(epoch)? else {
                continue;
            };
            if m.owned.get(partition) == Some(&claim.generation) {
                return Ok(Some(StateRef {
                    worker: claim.worker.clone(),
                    epoch,
                }));
            }
        }
        Ok(claim.from.clone())
    }

    /// Claims `partition` (`source/partition key`) for this worker: returns the claim's
    /// generation and where the partition's state is (`None`: it has none yet).
    pub fn claim(&self, partition: &str) -> Result<(u64, Option<StateRef>), EngineError> {
        loop {
            let newest = self.generations(partition)?.last().copied();
            let from = match newest {
                Some(g) => {
                    let previous = self.read_claim(partition, g)?;
                    self.state_under(partition, &previous)?
                }
                None => None,
            };
            let generation = newest.map_or(1, |g| g + 1);
            let claim = Claim {
                worker: self.worker.clone(),
                generation,
                from: from.clone(),
                at_ms: crate::time::now_ms(),
            };
            let bytes = serde_json::to_vec_pretty(&claim).map_err(err)?;
            if self
                .root
                .put_new(&claim_name(partition, generation), bytes)?
            {
                tracing::info!(partition, generation, state = ?from, "partition claimed");
                return Ok((generation, from));
            }
            // another worker claimed this generation first: look again
        }
    }

    /// Fails when another worker claimed one of `owned` after this worker did.
    pub fn fence(&self, owned: &BTreeMap<String, u64>) -> Result<(), EngineError> {
        for (partition, &generation) in owned {
            let newest = self.generations(partition)?.last().copied().unwrap_or(0);
            if newest != generation {
                let by = self
                    .read_claim(partition, newest)
                    .map(|c| c.worker)
                    .unwrap_or_else(|_| "another worker".into());
                return Err(EngineError::Fenced(format!(
                    "partition {partition} was claimed by worker `{by}` (generation {newest}) \
                     after this worker's claim (generation {generation}): its checkpoint is \
                     not completed"
                )));
            }
        }
        Ok(())
    }

    /// The state for a run owning `owned` (partition → this worker's claim generation):
    /// each partition's rows cut out of the checkpoint that holds it, `ids` giving the
    /// partition's id in the state's partition column, which `columns` locates per operator
    /// name. The manifest is this worker's newest (for its outputs' recovery), with the
    /// owned partitions' offsets, clocks and state.
    pub fn restore(
        &self,
        owned: &BTreeMap<String, u64>,
        ids: &HashMap<String, u32>,
        columns: &HashMap<String, PartitionColumn>,
    ) -> Result<PoolRestore, EngineError> {
        // where each owned partition's state is
        let mut by_ref: BTreeMap<StateRef, Vec<String>> = BTreeMap::new();
        for (partition, &generation) in owned {
            // this worker's own claim
            let claim = self.read_claim(partition, generation)?;
            if let Some(r) = self.state_under(partition, &claim)? {
                by_ref.entry(r).or_default().push(partition.clone());
            }
        }
        let own_latest = self.own.latest()?;
        let first_ref = by_ref.keys().next().cloned();
        let mut base = match (own_latest, first_ref) {
            (Some(m), _) => m,
            (None, None) => {
                return Ok(PoolRestore {
                    restored: None,
                    foreign: Vec::new(),
                })
            }
            (None, Some(r)) => {
                // no checkpoint of its own yet: its outputs start empty
                let mut m = self.manifest_of(&r)?;
                m.epoch = 0;
                m.sinks.clear();
                m.dead_letter = serde_json::Value::Null;
                m.counters.clear();
                m
            }
        };
        base.partitions.clear();
        let names: Vec<String> = base.operators.iter().map(|o| o.name.clone()).collect();
        let mut operators: Vec<Vec<PartialWindow>> = names.iter().map(|_| Vec::new()).collect();
        for o in &mut base.operators {
            o.file = None;
            o.rows = 0;
            o.flushed = i64::MAX;
            o.emitted = i64::MAX;
        }
        let mut foreign = Vec::new();
        for (r, partitions) in &by_ref {
            let m = self.manifest_of(r)?;
            let keep: Vec<u32> = ids
                .iter()
                .filter(|(key, _)| partitions.iter().any(|p| covers(p, key)))
                .map(|(_, &id)| id)
                .collect();
            let loaded = self.store_of(&r.worker)?.load(&m)?;
            for (j, rec) in m.operators.iter().enumerate() {
                let Some(i) = names.iter().position(|n| *n == rec.name) else {
                    continue;
                };
                let column = columns.get(&rec.name).copied().ok_or_else(|| {
                    err(format!(
                        "operator {} keeps no partition in its state",
                        rec.name
                    ))
                })?;
                let cut =
                    partials_of_partitions(&loaded.operators[j], column, &|id| keep.contains(&id))?;
                base.operators[i].rows += cut
                    .iter()
                    .map(|p| p.keys.first().map_or(0, |k| k.len()) as u64)
                    .sum::<u64>();
                operators[i].extend(cut);
                base.operators[i].flushed = base.operators[i].flushed.min(rec.flushed);
                base.operators[i].emitted = base.operators[i].emitted.min(rec.emitted);
            }
            for rec in &m.partitions {
                let key = format!("{}/{}", rec.source, rec.partition);
                if partitions.iter().any(|p| covers(p, &key)) {
                    base.partitions.push(rec.clone());
                }
            }
            if r.worker != self.worker {
                foreign.push((r.clone(), m));
            }
        }
        for o in &mut base.operators {
            if o.flushed == i64::MAX {
                o.flushed = i64::MIN;
            }
            if o.emitted == i64::MAX {
                o.emitted = i64::MIN;
            }
        }
        base.owned = owned.clone();
        Ok(PoolRestore {
            restored: Some(Restored {
                manifest: base,
                operators,
            }),
            foreign,
        })
    }

    /// The records (offsets, newest event time) of a partition in checkpoint `r`: its own,
    /// or those of its lanes (`partition/lane`, a repartition topic's upstream partitions).
    pub fn partition_records(
        &self,
        r: &StateRef,
        source: &str,
        partition: &str,
    ) -> Result<Vec<crate::checkpoint::PartitionRecord>, EngineError> {
        Ok(self
            .manifest_of(r)?
            .partitions
            .into_iter()
            .filter(|x| x.source == source && covers(partition, &x.partition))
            .collect())
    }

    fn manifest_of(&self, r: &StateRef) -> Result<Manifest, EngineError> {
        self.store_of(&r.worker)?.manifest(r.epoch)?.ok_or_else(|| {
            err(format!(
                "checkpoint {} of worker `{}` is gone from {}: it holds partitions' state that \
                 no newer checkpoint has; keep more checkpoints (`checkpoint.keep`)",
                r.epoch,
                r.worker,
                self.root.location()
            ))
        })
    }

    /// Announces this worker's SQL address (`host:port`) to the pool; repeated as a
    /// heartbeat (see [`Self::members`]).
    pub fn announce(&self, address: &str) -> Result<(), EngineError> {
        let entry = serde_json::json!({
            "worker": self.worker,
            "http": address,
            "at_ms": crate::time::now_ms(),
        });
        let bytes = serde_json::to_vec(&entry).map_err(err)?;
        self.root
            .put(&format!("members/{}.json", self.worker), bytes)
    }

    /// Removes this worker's announcement (it stops).
    pub fn withdraw(&self) -> Result<(), EngineError> {
        self.root.delete(&[format!("members/{}.json", self.worker)])
    }

    /// (worker, SQL address) of the other workers that announced themselves within
    /// `fresh_ms`.
    pub fn members(&self, fresh_ms: i64) -> Result<Vec<(String, String)>, EngineError> {
        let now = crate::time::now_ms();
        let mut out = Vec::new();
        for name in self.root.list_under("members")? {
            let Some(bytes) = self.root.get(&name)? else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let (Some(worker), Some(http), Some(at)) = (
                v.get("worker").and_then(|w| w.as_str()),
                v.get("http").and_then(|h| h.as_str()),
                v.get("at_ms").and_then(|a| a.as_i64()),
            ) else {
                continue;
            };
            if worker != self.worker && now - at <= fresh_ms {
                out.push((worker.to_string(), http.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Records that this worker committed its outputs up to `epoch`.
    pub fn mark_committed(&self, epoch: u64) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(&serde_json::json!({ "epoch": epoch })).map_err(err)?;
        self.own.put("committed.json", bytes)
    }

    /// The newest epoch `worker` recorded as committed (0 when none).
    pub fn committed_epoch(&self, worker: &str) -> Result<u64, EngineError> {
        let Some(bytes) = self.store_of(worker)?.get("committed.json")? else {
            return Ok(0);
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(err)?;
        Ok(v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0))
    }
}

/// Where `worker`'s own checkpoints are under the pool's `location`.
fn worker_location(location: &str, worker: &str) -> String {
    format!("{}/workers/{worker}", location.trim_end_matches('/'))
}

/// Whether partition key `key` is the owned partition `owned` or one of its lanes
/// (`owned/lane`).
pub fn covers(owned: &str, key: &str) -> bool {
    key.strip_prefix(owned)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_covers_itself_and_its_lanes_only() {
        assert!(covers("events/t/1", "events/t/1"));
        assert!(covers("events/t/1", "events/t/1/0"));
        assert!(covers("events/t/1", "events/t/1/11"));
        assert!(!covers("events/t/1", "events/t/10"));
        assert!(!covers("events/t/1", "events/t/10/1"));
        assert!(!covers("events/t/1", "events/t/"));
    }

    #[test]
    fn worker_ids_must_be_usable_in_names() {
        assert!(valid_worker_id("weir-0"));
        assert!(valid_worker_id("host.example_1"));
        assert!(!valid_worker_id(""));
        assert!(!valid_worker_id("a/b"));
        assert!(!valid_worker_id(".hidden"));
    }

    #[test]
    fn claims_take_turns_and_fence_the_previous_owner() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().to_str().unwrap();
        let a = PoolStore::open(loc, "a").unwrap();
        let b = PoolStore::open(loc, "b").unwrap();
        let (ga, from) = a.claim("events/t/0").unwrap();
        assert_eq!((ga, from), (1, None));
        let owned_a: BTreeMap<String, u64> = [("events/t/0".to_string(), ga)].into();
        a.fence(&owned_a).unwrap();
        let (gb, _) = b.claim("events/t/0").unwrap();
        assert_eq!(gb, 2);
        let e = a.fence(&owned_a).unwrap_err();
        assert!(matches!(e, EngineError::Fenced(_)), "{e}");
        assert!(e.to_string().contains("worker `b`"), "{e}");
        b.fence(&[("events/t/0".to_string(), gb)].into()).unwrap();
        assert_eq!(a.committed_epoch("b").unwrap(), 0);
        b.mark_committed(7).unwrap();
        assert_eq!(a.committed_epoch("b").unwrap(), 7);
        // announcements: each worker sees the others
        a.announce("127.0.0.1:1").unwrap();
        b.announce("127.0.0.1:2").unwrap();
        assert_eq!(
            a.members(10_000).unwrap(),
            vec![("b".to_string(), "127.0.0.1:2".to_string())]
        );
        b.withdraw().unwrap();
        assert!(a.members(10_000).unwrap().is_empty());
    }
}
