//! A pool's own partition assignment, for sources without a consumer group to share their
//! partitions (NATS JetStream subject partitions): every worker announces itself in the
//! checkpoint store with a heartbeat ([`Heartbeat`], `members/<worker>.json`, the same
//! announcement that carries its SQL address), reads which workers announced themselves within
//! the session timeout, and computes the same assignment from that set ([`assign`]). The
//! partitions then move through the claims, fencing, sealing and hand-over checkpoints of
//! [`crate::pool`], as Kafka partitions do.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::pool::PoolStore;
use crate::EngineError;

/// How often a worker announces itself.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A worker whose newest announcement is older than this is gone: its partitions are
/// claimed by the others (restored from its last complete checkpoint).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// Which member reads each partition: `partitions` (stable keys) spread over `members`
/// (worker ids) by rendezvous hashing, bounded so that the members' shares differ by one at
/// most (the first members in sorted order take the remainder): each partition, in order,
/// goes to the member of highest weight for it that still has room. The same sets give the same assignment whatever their
/// order; a member that joins or leaves moves few partitions.
pub fn assign(partitions: &[String], members: &[String]) -> BTreeMap<String, String> {
    let mut members: Vec<&String> = members.iter().collect();
    members.sort();
    members.dedup();
    let mut partitions: Vec<&String> = partitions.iter().collect();
    partitions.sort();
    partitions.dedup();
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let (base, extra) = (
        partitions.len() / members.len(),
        partitions.len() % members.len(),
    );
    // member → partitions it may still take
    let mut room: BTreeMap<&String, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, base + usize::from(i < extra)))
        .collect();
    for p in partitions {
        let mut ranked: Vec<(u64, &String)> = members.iter().map(|m| (weight(m, p), *m)).collect();
        ranked.sort_by(|a, b| b.cmp(a));
        let Some((_, chosen)) = ranked
            .into_iter()
            .find(|(_, m)| room.get(m).is_some_and(|r| *r > 0))
        else {
            continue;
        };
        if let Some(r) = room.get_mut(chosen) {
            *r -= 1;
        }
        out.insert(p.clone(), chosen.clone());
    }
    out
}

/// A stable hash of (member, partition): FNV-1a, then a 64-bit finalizer (stable across
/// builds and platforms, unlike the standard library's hasher).
fn weight(member: &str, partition: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes().chain([0xff]).chain(partition.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The workers of the pool alive now (announced within [`SESSION_TIMEOUT`]), this one
/// included, sorted.
pub fn live_members(pool: &PoolStore) -> Result<Vec<String>, EngineError> {
    Ok(live_incarnations(pool)?.into_keys().collect())
}

/// The workers of the pool alive now (see [`live_members`]), this one included, with the
/// incarnation each announced (see [`PoolStore::incarnation`]; `None`: an older version).
pub fn live_incarnations(pool: &PoolStore) -> Result<BTreeMap<String, Option<u64>>, EngineError> {
    let mut out = pool.member_incarnations(SESSION_TIMEOUT.as_millis() as i64)?;
    out.insert(pool.worker().to_string(), Some(pool.incarnation()));
    Ok(out)
}

/// A thread announcing the worker every [`HEARTBEAT_EVERY`] until dropped (then it withdraws
/// the announcement: the other workers take its partitions at once).
pub struct Heartbeat {
    running: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts announcing `pool`'s worker with `address` (its SQL address, or empty).
    pub fn start(pool: Arc<PoolStore>, address: String) -> Result<Self, EngineError> {
        // the first announcement before anything is read: the others see this worker at once
        pool.announce(&address)?;
        let running = Arc::new(AtomicBool::new(true));
        let run = running.clone();
        let thread = std::thread::Builder::new()
            .name("weir-pool-heartbeat".into())
            .spawn(move || {
                while run.load(Ordering::Relaxed) {
                    for _ in 0..(HEARTBEAT_EVERY.as_millis() / 50) {
                        if !run.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if !run.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = pool.announce(&address) {
                        tracing::warn!(error = %e, "pool: cannot announce this worker (heartbeat)");
                    }
                }
                if let Err(e) = pool.withdraw() {
                    tracing::warn!(error = %e, "pool: cannot withdraw this worker's announcement");
                }
            })
            .map_err(|e| EngineError::internal_caused("cannot start the heartbeat", e))?;
        Ok(Heartbeat {
            running,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("events/nats/EVENTS/{i}")).collect()
    }

    fn members(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn counts(a: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for m in a.values() {
            *c.entry(m.clone()).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn every_partition_goes_to_one_member_balanced_whatever_the_order() {
        for n in [1, 2, 4, 7, 16, 64] {
            for ids in [
                &["a"][..],
                &["a", "b"],
                &["w1", "w2", "w3"],
                &["x", "y", "z", "t", "u"],
            ] {
                let a = assign(&keys(n), &members(ids));
                assert_eq!(a.len(), n, "{n} partitions over {ids:?}");
                let c = counts(&a);
                let (lo, hi) = (
                    c.values().min().copied().unwrap_or(0),
                    c.values().max().copied().unwrap_or(0),
                );
                assert!(hi <= n.div_ceil(ids.len()), "{n} over {ids:?}: {c:?}");
                if n >= ids.len() {
                    assert_eq!(c.len(), ids.len(), "{n} over {ids:?}: someone has none");
                    assert!(hi - lo <= 1, "{c:?}");
                }
                // the same set in another order, or repeated: the same assignment
                let mut rev: Vec<String> = members(ids);
                rev.reverse();
                rev.push(ids[0].to_string());
                assert_eq!(assign(&keys(n), &rev), a);
            }
        }
        assert!(assign(&keys(4), &[]).is_empty());
        // one member reads everything
        assert!(assign(&keys(4), &members(&["solo"]))
            .values()
            .all(|m| m == "solo"));
    }

    #[test]
    fn a_member_joining_or_leaving_moves_few_partitions() {
        let ps = keys(64);
        let two = assign(&ps, &members(&["a", "b"]));
        let three = assign(&ps, &members(&["a", "b", "c"]));
        // the newcomer takes its share; the others keep most of theirs
        let moved = ps.iter().filter(|p| two[*p] != three[*p]).count();
        let to_c = three.values().filter(|m| *m == "c").count();
        assert!((21..=22).contains(&to_c), "{to_c}");
        assert!(moved <= to_c + 8, "moved {moved}, of which {to_c} to c");
        // a leaver's partitions spread over the others; theirs mostly stay
        let kept = ps
            .iter()
            .filter(|p| three[*p] != "c" && two[*p] == three[*p])
            .count();
        assert!(kept + 8 >= 64 - to_c, "kept {kept}");
    }
}
