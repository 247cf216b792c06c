//! A Kafka source in a worker pool: the topic's partitions are assigned by the source's
//! consumer group, each claimed in the pool's checkpoint store before it is read; a topic
//! whose messages are not keyed by the windows' key is repartitioned through an internal
//! topic first.

use std::sync::Arc;

use weir_kafka::source::PoolHook;
use weir_kafka::{
    ClaimedStart, KafkaPartitions, KafkaReader, KafkaSourceConfig, RepartitionSpec,
    RepartitionStage, StartFrom, Upstream,
};

use super::super::{
    PoolSource, PooledReader, PooledSource, Repartition, Repartitioning, RunningRepartition,
    HANDOVER_TIMEOUT,
};
use weir_engine::checkpoint::PartitionRecord;
use weir_engine::stage_stats::StageStats;
use weir_engine::EngineError;

use crate::run::RunError;

impl PooledReader for KafkaReader {
    fn handed_over(&self) -> bool {
        KafkaReader::handed_over(self)
    }
    fn flushed_to_wait(&self) -> bool {
        KafkaReader::flushed_to_wait(self)
    }
    fn finished_ends(&self) -> std::collections::BTreeMap<String, u64> {
        KafkaReader::finished_ends(self)
    }
    fn close(&mut self) {
        KafkaReader::close(self)
    }
}

/// The reader of Kafka source `cfg` for a pool worker's jobs: its consumer group assigns the
/// partitions, which it claims in the pool before reading them.
pub(crate) fn pooled(cfg: &KafkaSourceConfig, at: &PoolSource) -> Result<PooledSource, RunError> {
    let mut cfg = cfg.clone();
    cfg.until_caught_up = at.until_caught_up;
    if let Some(t) = at.caught_up_timeout {
        cfg.caught_up_timeout = t;
    }
    cfg.pool = Some(pool_hook(at));
    let partitions =
        KafkaPartitions::discover(&cfg).map_err(|e| EngineError::source_caused(at.name, "", e))?;
    let keys = partitions.keys(&cfg);
    let reader = KafkaReader::new(at.index, at.name, at.first_partition, cfg, &partitions);
    Ok(PooledSource::new(reader, keys))
}

/// How the source's reader claims, releases and finishes partitions in the pool.
fn pool_hook(at: &PoolSource) -> PoolHook {
    let name = at.name.to_string();
    let (claim_pool, claim_owned) = (at.pool.clone(), at.owned.clone());
    let (released_pool, released_owned) = (at.pool.clone(), at.owned.clone());
    let released_name = name.clone();
    let (finished_pool, finished_name) = (at.pool.clone(), name.clone());
    let (unfinished_pool, unfinished_owned) = (at.pool.clone(), at.owned.clone());
    // (partition, claim generation) found finished: they stay so (a later claim is another
    // generation), and are not asked of the store again
    let finished_claims = std::sync::Mutex::new(std::collections::HashSet::<(String, u64)>::new());
    PoolHook {
        owned_unfinished: std::sync::Arc::new(move || {
            let owned: Vec<(String, u64)> = match unfinished_owned.lock() {
                Ok(o) => o.iter().map(|(k, g)| (k.clone(), *g)).collect(),
                Err(_) => return false,
            };
            let Ok(mut done) = finished_claims.lock() else {
                return false;
            };
            for (key, generation) in owned {
                if done.contains(&(key.clone(), generation)) {
                    continue;
                }
                match unfinished_pool.partition_finished(&key) {
                    Ok(true) => {
                        done.insert((key, generation));
                    }
                    Ok(false) => return true,
                    Err(e) => {
                        tracing::warn!(partition = %key, error = %e.chain(), "kafka: cannot read whether a partition is finished");
                    }
                }
            }
            false
        }),
        finished: std::sync::Arc::new(move |topic: &str, p: i32| {
            finished_pool.partition_finished_at(&format!("{finished_name}/{topic}/{p}"))
        }),
        claim: std::sync::Arc::new(move |partitions: &[(String, i32)]| {
            let mut offsets = Vec::with_capacity(partitions.len());
            for (topic, p) in partitions {
                let key = format!("{name}/{topic}/{p}");
                let (generation, from) = claim_pool.claim(&key)?;
                let offset = match &from {
                    Some(r) => claimed_start(&claim_pool.partition_records(
                        r,
                        &name,
                        &format!("{topic}/{p}"),
                    )?),
                    None => None,
                };
                if let Ok(mut o) = claim_owned.lock() {
                    o.insert(key, generation);
                }
                offsets.push(offset);
            }
            Ok(offsets)
        }),
        released: std::sync::Arc::new(move |partitions: &[(String, i32)], handed_over: bool| {
            let Ok(mut o) = released_owned.lock() else {
                return;
            };
            for (topic, p) in partitions {
                let key = format!("{released_name}/{topic}/{p}");
                let Some(generation) = o.remove(&key) else {
                    continue;
                };
                // its hand-over checkpoint is committed and no later job owns it: the next
                // owner need not void this worker's next checkpoint
                if handed_over {
                    if let Err(e) = released_pool.release(&key, generation) {
                        tracing::warn!(partition = %key, "cannot record the release of a partition: {e}");
                    }
                }
            }
        }),
        handover_timeout: HANDOVER_TIMEOUT,
        releasing: at.releasing.clone(),
    }
}

/// Where a claimed partition continues, from its records in a checkpoint: its own (a
/// repartition topic's with the vector of its lanes' next upstream offsets), or in a
/// checkpoint of format 1, its lanes' (it continues at the smallest of their offsets, each
/// lane dropping what it read before).
fn claimed_start(records: &[PartitionRecord]) -> Option<ClaimedStart> {
    let offset = records.iter().map(|r| r.next_offset).min()?;
    let mut lanes = Vec::new();
    for r in records {
        if !r.lanes.is_empty() {
            lanes.clone_from(&r.lanes);
            continue;
        }
        let lane = r
            .partition
            .rsplit('/')
            .next()
            .and_then(|l| l.parse::<usize>().ok());
        if let (Some(lane), 3) = (lane, r.partition.split('/').count()) {
            if lanes.len() <= lane {
                lanes.resize(lane + 1, 0);
            }
            lanes[lane] = r.position;
        }
    }
    // the id of the topic its offsets belong to, when all of its records agree
    let first = records.first().map_or(0, |r| r.incarnation);
    let incarnation = if records.iter().all(|r| r.incarnation == first) {
        first
    } else {
        0
    };
    Some(ClaimedStart {
        offset,
        lanes,
        incarnation,
    })
}

/// Why a pool cannot repartition Kafka source `source` (`cfg`), `None` when it can.
pub(crate) fn repartition_refusal(source: &str, cfg: &KafkaSourceConfig) -> Option<String> {
    if cfg.topics.len() != 1 {
        return Some(format!(
            "source `{source}`: a worker pool repartitions one topic per source, and it reads {}: \
             declare a source per topic",
            cfg.topics.len()
        ));
    }
    if matches!(cfg.start_from, StartFrom::Time(_)) {
        return Some(format!(
            "source `{source}`: `start_from` a time is not supported when a worker pool \
             repartitions the topic: start from `earliest`, `latest` or `committed`"
        ));
    }
    None
}

/// Retargets Kafka source `cfg` to the internal topic of `at`, which the returned stage fills
/// with its topic's events keyed by `at.keys`.
pub(crate) fn repartition(
    cfg: &mut KafkaSourceConfig,
    at: Repartitioning,
) -> Result<RepartitionSpec, RunError> {
    let spec = RepartitionSpec {
        source: at.source.to_string(),
        input: cfg.clone(),
        topic: at.topic,
        keys: at.keys,
        decoder: at.decoder,
        until_caught_up: at.until_caught_up,
    };
    let partitions = spec.prepare()?;
    cfg.upstream = Some(Upstream {
        topic: cfg.topics.first().cloned().unwrap_or_default(),
        partitions,
    });
    cfg.topics = vec![spec.topic.clone()];
    cfg.start_from = StartFrom::Earliest;
    Ok(spec)
}

impl Repartition for RepartitionSpec {
    fn start(
        self: Box<Self>,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> Result<Box<dyn RunningRepartition>, EngineError> {
        Ok(Box::new(RepartitionStage::start(*self, on_end)?))
    }
}

impl RunningRepartition for RepartitionStage {
    fn is_finished(&self) -> bool {
        RepartitionStage::is_finished(self)
    }
    fn stop(&self) {
        RepartitionStage::stop(self)
    }
    fn join(self: Box<Self>) -> Result<(), EngineError> {
        RepartitionStage::join(*self)
    }
    fn stats(&self) -> Arc<StageStats> {
        RepartitionStage::stats(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_partition_continues_at_its_slowest_lane() {
        let rec = |partition: &str, next_offset: u64, position: u64| PartitionRecord {
            source: "events".into(),
            partition: partition.into(),
            next_offset,
            position,
            newest: 0,
            lanes: vec![],
            lane_lag: vec![],
            incarnation: 0,
            id: None,
        };
        assert_eq!(claimed_start(&[]), None);
        // a partition of its own: its offset
        assert_eq!(
            claimed_start(&[rec("t/3", 40, 40)]),
            Some(ClaimedStart {
                offset: 40,
                lanes: vec![],
                incarnation: 0,
            })
        );
        // lanes: the smallest offset, and each lane's next upstream offset
        assert_eq!(
            claimed_start(&[
                rec("t/3/1", 90, 17),
                rec("t/3/0", 70, 5),
                rec("t/3/2", 90, 0)
            ]),
            Some(ClaimedStart {
                offset: 70,
                lanes: vec![5, 17, 0],
                incarnation: 0,
            })
        );
        // format 2: one record with its lanes
        let mut one = rec("t/3", 70, 0);
        one.lanes = vec![5, 17, 0];
        one.lane_lag = vec![0, 3, -1];
        one.incarnation = 9;
        assert_eq!(
            claimed_start(&[one.clone()]),
            Some(ClaimedStart {
                offset: 70,
                lanes: vec![5, 17, 0],
                incarnation: 9,
            })
        );
        // records that disagree on the topic's id: not known
        let mut other = rec("t/3/0", 70, 5);
        other.incarnation = 8;
        assert_eq!(claimed_start(&[one, other]).map(|c| c.incarnation), Some(0));
    }
}
