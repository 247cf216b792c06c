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
//!
//! Sealing closes the race between that check and the manifest write (another worker may
//! claim a partition in between): a pool checkpoint is complete only once its *verdict*
//! `workers/<worker>/chk-<epoch>/verdict.json` is created (create-only) saying so. A worker
//! that claims a partition first creates its claim (unsettled), then creates a *void*
//! verdict for the previous owner's next epoch (the epoch after its newest complete one; if
//! that one got sealed meanwhile, the next), and only then settles its claim on the previous
//! owner's newest complete checkpoint before that epoch. Of the sealing worker and the
//! claimant, exactly one creates the verdict: either the checkpoint is complete and the claim
//! restores from it, or it is void and its worker undoes its manifest and does not commit.
//! The claimant's claim existing before the void, the fenced worker cannot complete a later
//! checkpoint owning that partition either. A claim whose worker died before settling it is
//! settled by whoever reads it. A worker that handed a partition over (its hand-over
//! checkpoint committed) records it (`partitions/<p>/released-<generation>.json`): its next
//! epoch is then not voided, so a graceful hand-over fails no checkpoint. Claims and release
//! markers older than a partition's settled newest claim are read by nobody: its holder
//! deletes them when it collects garbage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    partials_of_partitions, renumber_partitions, CheckpointStore, Fencing, Manifest,
    PartitionColumn, Restored,
};
pub use crate::pool_finished::Finished;
pub use crate::types::covers;
use crate::types::PartialWindow;
use crate::EngineError;

/// A checkpoint error caused by `e`, which says it all.
fn err(e: impl Into<crate::error::Cause>) -> EngineError {
    EngineError::checkpoint_caused("", e)
}

/// A checkpoint error caused by `e` while doing what `message` says.
fn caused(message: impl std::fmt::Display, e: impl Into<crate::error::Cause>) -> EngineError {
    EngineError::checkpoint_caused(message, e)
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
    /// `from` is final: the previous owner's next epoch was voided before it was chosen
    /// (claims written before sealing existed have no such field: settled).
    #[serde(default = "settled_default")]
    settled: bool,
}

fn settled_default() -> bool {
    true
}

/// Whether a pool checkpoint is complete (`chk-<epoch>/verdict.json`, created once).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verdict {
    complete: bool,
    /// The worker that created it: the checkpoint's own (sealed), or a claimant (void).
    by: String,
}

fn verdict_name(epoch: u64) -> String {
    format!("chk-{epoch:010}/verdict.json")
}

/// The verdict of checkpoint `epoch` in `store`: `Some(true)` complete, `Some(false)` void,
/// `None` none yet. An unreadable verdict counts as void (with a warning).
fn verdict(store: &CheckpointStore, epoch: u64) -> Result<Option<bool>, EngineError> {
    let Some(bytes) = store.get(&verdict_name(epoch))? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Verdict>(&bytes) {
        Ok(v) => Ok(Some(v.complete)),
        Err(e) => {
            tracing::warn!(
                epoch,
                location = store.location(),
                "an unreadable verdict counts as void: {e}"
            );
            Ok(Some(false))
        }
    }
}

/// The manifest of checkpoint `epoch` of `store` if it is complete: intact (a damaged one is
/// skipped with a warning, so that it blocks no claim, restore or collection) and, for a
/// sealed checkpoint, with a `complete` verdict.
pub fn valid_manifest(
    store: &CheckpointStore,
    epoch: u64,
) -> Result<Option<Manifest>, EngineError> {
    let m = match store.manifest(epoch) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(d @ EngineError::Damaged { .. }) => {
            let why = d.damage().unwrap_or_default();
            tracing::warn!(
                epoch,
                location = store.location(),
                "skipping a damaged checkpoint: {why}"
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if m.sealed && verdict(store, epoch)? != Some(true) {
        return Ok(None);
    }
    Ok(Some(m))
}

/// The newest complete checkpoint of `store` (see [`valid_manifest`]) older than `before`.
fn newest_valid(
    store: &CheckpointStore,
    before: Option<u64>,
) -> Result<Option<Manifest>, EngineError> {
    for epoch in store.complete_epochs()?.into_iter().rev() {
        if before.is_some_and(|b| epoch >= b) {
            continue;
        }
        if let Some(m) = valid_manifest(store, epoch)? {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The newest claim of a partition (see [`PoolStore::holder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub worker: String,
    pub generation: u64,
    /// Its worker handed the partition over (its hand-over checkpoint is committed).
    pub released: bool,
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
    /// Settled claims read by [`Fencing::claimed_epochs`] (a settled claim never changes),
    /// by partition.
    settled: Mutex<HashMap<String, SettledClaim>>,
    /// A random number of this opening of the store (one per process): what this worker
    /// announces and finishes is told from what an earlier process of the same worker id did.
    incarnation: u64,
}

/// A worker's announcement (see [`PoolStore::announce`]).
struct Announcement {
    worker: String,
    http: String,
    /// Absent in announcements of older versions.
    incarnation: Option<u64>,
}

/// A settled claim as [`Fencing::claimed_epochs`] keeps it.
struct SettledClaim {
    generation: u64,
    /// Where it points.
    from: Option<StateRef>,
    /// Whether it is this worker's.
    mine: bool,
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

/// A random incarnation: the time and process id, through the standard library's randomly
/// keyed hasher.
fn new_incarnation() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()))
}

fn claim_name(partition: &str, generation: u64) -> String {
    format!("partitions/{partition}/claim-{generation:010}.json")
}

fn released_name(partition: &str, generation: u64) -> String {
    format!("partitions/{partition}/released-{generation:010}.json")
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
            settled: Mutex::new(HashMap::new()),
            incarnation: new_incarnation(),
        })
    }

    /// This opening's incarnation (see [`Self::announce`]).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// This worker's own checkpoint store.
    pub fn own(&self) -> Arc<CheckpointStore> {
        self.own.clone()
    }

    pub(crate) fn store_of(&self, worker: &str) -> Result<Arc<CheckpointStore>, EngineError> {
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

    /// The worker and generation of `partition`'s newest claim (`None`: never claimed).
    pub(crate) fn newest_claim(
        &self,
        partition: &str,
    ) -> Result<Option<(String, u64)>, EngineError> {
        let Some(g) = self.generations(partition)?.last().copied() else {
            return Ok(None);
        };
        Ok(Some((self.read_claim(partition, g)?.worker, g)))
    }

    fn read_claim(&self, partition: &str, generation: u64) -> Result<Claim, EngineError> {
        let name = claim_name(partition, generation);
        let bytes = self.root.get(&name)?.ok_or_else(|| {
            EngineError::checkpoint(format!("{}/{name} disappeared", self.root.location()))
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| caused(format!("{}/{name} cannot be read", self.root.location()), e))
    }

    /// Where `partition`'s state is under `claim`: the newest complete checkpoint its worker
    /// stored while owning it under that claim, else where the claim found it (settling an
    /// unsettled claim first, see the module's doc).
    fn state_under(&self, partition: &str, claim: &Claim) -> Result<Option<StateRef>, EngineError> {
        self.state_before(partition, claim, None)
    }

    /// [`Self::state_under`], among the checkpoints older than epoch `before`.
    fn state_before(
        &self,
        partition: &str,
        claim: &Claim,
        before: Option<u64>,
    ) -> Result<Option<StateRef>, EngineError> {
        let store = self.store_of(&claim.worker)?;
        for epoch in store.complete_epochs()?.into_iter().rev() {
            if before.is_some_and(|b| epoch >= b) {
                continue;
            }
            let Some(m) = valid_manifest(&store, epoch)? else {
                continue;
            };
            if m.owned.get(partition) == Some(&claim.generation) {
                return Ok(Some(StateRef {
                    worker: claim.worker.clone(),
                    epoch,
                }));
            }
        }
        if claim.settled || claim.generation <= 1 {
            return Ok(claim.from.clone());
        }
        // its worker died before settling it: settle it here
        let previous = self.read_claim(partition, claim.generation - 1)?;
        self.settle(partition, &previous, &claim.worker)
    }

    /// Where the state of `partition` is for a claim following `previous`, made by worker
    /// `claimant`: voids `previous`'s worker's next epoch (unless it is the claimant itself,
    /// whose earlier process is gone), then takes its newest complete checkpoint before it.
    fn settle(
        &self,
        partition: &str,
        previous: &Claim,
        claimant: &str,
    ) -> Result<Option<StateRef>, EngineError> {
        if previous.worker == claimant
            || self
                .root
                .get(&released_name(partition, previous.generation))?
                .is_some()
        {
            // its earlier process is gone, or it handed the partition over: it will not
            // complete another checkpoint owning it under that claim
            return self.state_under(partition, previous);
        }
        let store = self.store_of(&previous.worker)?;
        let mut epoch = newest_valid(&store, None)?.map_or(1, |m| m.epoch + 1);
        let void = serde_json::to_vec(&Verdict {
            complete: false,
            by: claimant.to_string(),
        })
        .map_err(err)?;
        loop {
            if store.put_new(&verdict_name(epoch), void.clone())? {
                tracing::info!(worker = %previous.worker, epoch, partition, "voided the previous owner's next checkpoint");
                break;
            }
            match verdict(&store, epoch)? {
                // sealed meanwhile: the claim restores from it (or a later one)
                Some(true) => epoch += 1,
                // voided by another claimant: that worker completes nothing from there
                _ => break,
            }
        }
        self.state_before(partition, previous, Some(epoch))
    }

    /// Claims `partition` (`source/partition key`) for this worker: returns the claim's
    /// generation and where the partition's state is (`None`: it has none yet). The claim
    /// is created unsettled, then settled (see the module's doc).
    pub fn claim(&self, partition: &str) -> Result<(u64, Option<StateRef>), EngineError> {
        loop {
            let newest = self.generations(partition)?.last().copied();
            let previous = match newest {
                Some(g) => Some(self.read_claim(partition, g)?),
                None => None,
            };
            let from = match &previous {
                Some(p) => self.state_under(partition, p)?,
                None => None,
            };
            let generation = newest.map_or(1, |g| g + 1);
            let mut claim = Claim {
                worker: self.worker.clone(),
                generation,
                from,
                at_ms: crate::time::now_ms(),
                settled: previous.is_none(),
            };
            let bytes = serde_json::to_vec_pretty(&claim).map_err(err)?;
            let name = claim_name(partition, generation);
            if !self.root.put_new(&name, bytes)? {
                // another worker claimed this generation first: look again
                continue;
            }
            if let Some(p) = &previous {
                claim.from = self.settle(partition, p, &self.worker)?;
                claim.settled = true;
                let bytes = serde_json::to_vec_pretty(&claim).map_err(err)?;
                self.root.put(&name, bytes)?;
            }
            tracing::info!(partition, generation, state = ?claim.from, "partition claimed");
            return Ok((generation, claim.from));
        }
    }

    /// Records that this worker handed `partition` over under claim `generation`: its
    /// hand-over checkpoint is committed and no later checkpoint of it owns the partition
    /// under that claim, so the next owner need not void its next checkpoint (which would
    /// fail a job that owns other partitions).
    pub fn release(&self, partition: &str, generation: u64) -> Result<(), EngineError> {
        let handover = self.newest_complete_epoch()?;
        self.release_after(partition, generation, handover)
    }

    /// The epoch of this worker's newest complete checkpoint, if it has one.
    pub fn newest_complete_epoch(&self) -> Result<Option<u64>, EngineError> {
        Ok(newest_valid(&self.own, None)?.map(|m| m.epoch))
    }

    /// [`Self::release`], the epoch of the committed hand-over checkpoint given
    /// (`handover`, read when it was the newest complete one): for a release made again
    /// while a later checkpoint may be complete and not committed yet.
    pub fn release_after(
        &self,
        partition: &str,
        generation: u64,
        handover: Option<u64>,
    ) -> Result<(), EngineError> {
        // the hand-over checkpoint is committed: the next owner need not finish its commit
        // (for a transactional sink, that would fence this worker's producer)
        if let Some(epoch) = handover {
            if self.committed_epoch(&self.worker)? < epoch {
                self.mark_committed(epoch)?;
            }
        }
        let body = serde_json::json!({ "worker": self.worker, "generation": generation });
        self.root.put(
            &released_name(partition, generation),
            serde_json::to_vec(&body).map_err(err)?,
        )
    }

    /// Who holds `partition` now: the worker of its newest claim, that claim's generation,
    /// and whether that worker released it (handed it over); `None` when never claimed.
    pub fn holder(&self, partition: &str) -> Result<Option<Holder>, EngineError> {
        let Some(generation) = self.generations(partition)?.last().copied() else {
            return Ok(None);
        };
        let claim = self.read_claim(partition, generation)?;
        let released = self
            .root
            .get(&released_name(partition, generation))?
            .is_some();
        Ok(Some(Holder {
            worker: claim.worker,
            generation,
            released,
        }))
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
        self.restore_numbered(owned, ids, None, columns)
    }

    /// [`Self::restore`], where checkpoints of format 1 numbered partitions as `legacy_ids`
    /// says (a repartition topic's partition then took one id per lane, the first one its
    /// state's): their state rows are cut by those ids and renumbered to `ids`.
    pub fn restore_numbered(
        &self,
        owned: &BTreeMap<String, u64>,
        ids: &HashMap<String, u32>,
        legacy_ids: Option<&HashMap<String, u32>>,
        columns: &HashMap<String, PartitionColumn>,
    ) -> Result<PoolRestore, EngineError> {
        // where each owned partition's state is
        let mut by_ref: BTreeMap<StateRef, Vec<String>> = BTreeMap::new();
        // (another worker claimed one since: fenced, as a checkpoint would be; its holder
        // may have pruned this worker's older claim already)
        self.fence(owned)?;
        for (partition, &generation) in owned {
            // this worker's own claim
            let claim = self.read_claim(partition, generation)?;
            if let Some(r) = self.state_under(partition, &claim)? {
                by_ref.entry(r).or_default().push(partition.clone());
            }
        }
        let own_latest = newest_valid(&self.own, None)?;
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
            o.closed.clear();
        }
        let mut foreign = Vec::new();
        // per operator: owned partitions restored from a checkpoint that records closings
        let mut recorded: Vec<Vec<&String>> = names.iter().map(|_| Vec::new()).collect();
        for (r, partitions) in &by_ref {
            let m = self.manifest_of(r)?;
            let numbering = match legacy_ids {
                Some(legacy) if m.format < 2 => legacy,
                _ => ids,
            };
            // the state id a covered key has in this checkpoint → the one it has now
            let renumber: HashMap<u32, u32> = numbering
                .iter()
                .filter(|(key, _)| partitions.iter().any(|p| covers(p, key)))
                .filter_map(|(key, &old)| Some((old, *ids.get(key)?)))
                .collect();
            let loaded = self.store_of(&r.worker)?.load(&m)?;
            for (j, rec) in m.operators.iter().enumerate() {
                let Some(i) = names.iter().position(|n| *n == rec.name) else {
                    continue;
                };
                let column = columns.get(&rec.name).copied().ok_or_else(|| {
                    EngineError::checkpoint(format!(
                        "operator {} keeps no partition in its state",
                        rec.name
                    ))
                })?;
                let cut = partials_of_partitions(&loaded.operators[j], column, &|id| {
                    renumber.contains_key(&id)
                })?;
                let cut = if renumber.iter().all(|(a, b)| a == b) {
                    cut
                } else {
                    renumber_partitions(cut, column, &renumber)?
                };
                base.operators[i].rows += cut
                    .iter()
                    .map(|p| p.keys.first().map_or(0, |k| k.len()) as u64)
                    .sum::<u64>();
                operators[i].extend(cut);
                if !rec.closed.is_empty() {
                    recorded[i].extend(partitions);
                }
                base.operators[i].flushed = base.operators[i].flushed.min(rec.flushed);
                base.operators[i].emitted = base.operators[i].emitted.min(rec.emitted);
                base.operators[i].closed.extend(
                    rec.closed
                        .iter()
                        .filter(|(key, _)| partitions.iter().any(|p| covers(p, key)))
                        .map(|(k, &v)| (k.clone(), v)),
                );
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
        // An owned partition without a closing closed none of its windows: one claimed
        // without state, or one a checkpoint that records closings says nothing of (empty or
        // idle there). Left out, it took the operator-wide hand-over watermark as its floor,
        // and its rows older than that were dead-lettered as late.
        let stateless: Vec<&String> = owned
            .keys()
            .filter(|p| !by_ref.values().any(|ps| ps.contains(p)))
            .collect();
        for (o, recorded) in base.operators.iter_mut().zip(&recorded) {
            for p in stateless.iter().chain(recorded) {
                o.closed.entry((*p).clone()).or_insert(i64::MIN);
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
        // a pool keeps no emitted windows for SQL in its checkpoints (see `checkpoint`)
        for o in &mut base.operators {
            o.retained.clear();
        }
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
        valid_manifest(&*self.store_of(&r.worker)?, r.epoch)?.ok_or_else(|| {
            EngineError::checkpoint(format!(
                "checkpoint {} of worker `{}` is gone from {} (or damaged): it holds \
                 partitions' state that no newer checkpoint has",
                r.epoch,
                r.worker,
                self.root.location()
            ))
        })
    }

    /// Announces this worker's SQL address (`host:port`) and incarnation to the pool;
    /// repeated as a heartbeat (see [`Self::members`]).
    pub fn announce(&self, address: &str) -> Result<(), EngineError> {
        let entry = serde_json::json!({
            "worker": self.worker,
            "http": address,
            "at_ms": crate::time::now_ms(),
            "incarnation": self.incarnation,
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
        let mut out: Vec<(String, String)> = self
            .announcements(fresh_ms)?
            .into_iter()
            .map(|a| (a.worker, a.http))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The incarnation each other worker that announced itself within `fresh_ms` announced
    /// (`None`: a version that announces none).
    pub fn member_incarnations(
        &self,
        fresh_ms: i64,
    ) -> Result<BTreeMap<String, Option<u64>>, EngineError> {
        Ok(self
            .announcements(fresh_ms)?
            .into_iter()
            .map(|a| (a.worker, a.incarnation))
            .collect())
    }

    /// The other workers' announcements made within `fresh_ms`.
    fn announcements(&self, fresh_ms: i64) -> Result<Vec<Announcement>, EngineError> {
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
                out.push(Announcement {
                    worker: worker.to_string(),
                    http: http.to_string(),
                    incarnation: v.get("incarnation").and_then(|i| i.as_u64()),
                });
            }
        }
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

impl Fencing for PoolStore {
    fn fence(&self, owned: &BTreeMap<String, u64>) -> Result<(), EngineError> {
        PoolStore::fence(self, owned)
    }

    fn seal(&self, epoch: u64) -> Result<(), EngineError> {
        let sealed = serde_json::to_vec(&Verdict {
            complete: true,
            by: self.worker.clone(),
        })
        .map_err(err)?;
        let name = verdict_name(epoch);
        if self.own.put_new(&name, sealed)? || verdict(&self.own, epoch)? == Some(true) {
            return Ok(());
        }
        // a claimant voided this epoch first: this worker lost one of its partitions before
        // the manifest was stored; undo it (the void too, so that the epoch can be taken
        // again: the claimant's claim fences every later checkpoint of that partition)
        let manifest = format!("chk-{epoch:010}/manifest.json");
        self.own.delete(&[manifest])?;
        self.own.delete(&[name])?;
        Err(EngineError::Fenced(format!(
            "checkpoint {epoch} was voided by a worker that claimed one of its partitions \
             while it was stored: it is not completed"
        )))
    }

    fn claimed_epochs(&self) -> Result<BTreeSet<u64>, EngineError> {
        // the newest claim of every partition, and every claim and release marker by
        // partition (to prune)
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        let mut history: HashMap<String, Vec<(u64, String)>> = HashMap::new();
        for name in self.root.list_under("partitions")? {
            let Some((dir, file)) = name.rsplit_once('/') else {
                continue;
            };
            let partition = dir.strip_prefix("partitions/").unwrap_or(dir);
            let generation = |prefix: &str| {
                file.strip_prefix(prefix)
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|g| g.parse::<u64>().ok())
            };
            if let Some(g) = generation("released-") {
                history
                    .entry(partition.to_string())
                    .or_default()
                    .push((g, name.clone()));
                continue;
            }
            let Some(g) = generation("claim-") else {
                continue;
            };
            history
                .entry(partition.to_string())
                .or_default()
                .push((g, name.clone()));
            let e = newest.entry(partition.to_string()).or_insert(g);
            *e = (*e).max(g);
        }
        let mut stale = Vec::new();
        let mut out = BTreeSet::new();
        let mut cache = self
            .settled
            .lock()
            .map_err(|_| err("the pool's claim cache is poisoned"))?;
        for (partition, g) in newest {
            let from = match cache.get(&partition) {
                Some(c) if c.generation == g => c.from.clone(),
                _ => match self.read_claim(&partition, g) {
                    Ok(c) => {
                        if c.settled {
                            let settled = SettledClaim {
                                generation: g,
                                from: c.from.clone(),
                                mine: c.worker == self.worker,
                            };
                            cache.insert(partition.clone(), settled);
                        }
                        c.from
                    }
                    Err(e) => {
                        tracing::warn!(
                            partition,
                            generation = g,
                            "skipping an unreadable claim: {e}"
                        );
                        continue;
                    }
                },
            };
            if let Some(r) = from.filter(|r| r.worker == self.worker) {
                out.insert(r.epoch);
            }
            // the history of a partition whose newest claim is this worker's and settled:
            // nothing reads a claim or release marker older than a settled claim (settling
            // reads back only to the newest settled one), so they go, by their holder only
            let settled_here = cache
                .get(&partition)
                .is_some_and(|c| c.generation == g && c.mine);
            if settled_here {
                if let Some(names) = history.remove(&partition) {
                    stale.extend(names.into_iter().filter(|(h, _)| *h < g).map(|(_, n)| n));
                }
            }
        }
        drop(cache);
        if !stale.is_empty() {
            match self.root.delete(&stale) {
                Ok(()) => tracing::debug!(
                    files = stale.len(),
                    "pool: pruned claims older than the settled ones"
                ),
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "pool: cannot prune old claims; the next checkpoint tries again")
                }
            }
        }
        Ok(out)
    }
}

/// Where `worker`'s own checkpoints are under the pool's `location`.
fn worker_location(location: &str, worker: &str) -> String {
    format!("{}/workers/{worker}", location.trim_end_matches('/'))
}

#[cfg(test)]
mod tests;
