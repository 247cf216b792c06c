//! Where the stage reads an upstream partition it is assigned, and the partition's
//! *generation*: how many times it started over.
//!
//! The jobs' lanes drop a message whose sequence is below what they read already (a repeat
//! of the at-least-once stage). A sequence is the upstream offset in generation 0, and
//! the generation above the offset's bits after that (`super::sequence`), so that every
//! message of a later generation comes after every one of an earlier: when a partition's
//! offsets begin again below those the lanes passed (the topic was deleted and created again),
//! the stage moves to the next generation and the lanes take the new records instead of
//! dropping them all as repeats, whatever the stage had sent and not committed.
//!
//! The generation is kept twice in the stage's group, and the larger counts: in the metadata
//! of the partition's committed offset (`weir-generation=<n>`; Apache Kafka keeps it, tansu
//! does not), and as the committed offset of the internal topic's partition of the same number
//! (the *slot*; partition counts are equal), committed with every upstream offset and every
//! hour, its metadata naming the upstream topic (`weir-upstream=<topic>`: a slot of another
//! topic the source read before does not count). A topic's deletion deletes the group's
//! offsets of that topic, not the slot: a slot without an upstream offset says the upstream
//! partition's history is gone.
//!
//! Every partition the stage's group assigns it starts *unsettled*: paused, until the stage
//! read its committed offset, generation and log range. Then:
//!
//! * No committed offset but a slot (the topic was deleted, and created again), or a committed
//!   offset past the partition's high watermark (created again before the group noticed, or
//!   the broker lost records it had acknowledged): the partition *starts over* in the next
//!   generation, where `auto.offset.reset` says (its log start, or with `latest` its end), as
//!   the source does without a pool, with an error and `weir_repartition_restarts_total`.
//! * A committed offset below the log start (the topic's retention deleted records before
//!   the stage copied them): the stage reads on from the log start, with an error naming the
//!   offsets lost, counted in `weir_repartition_expired_total` (librdkafka would reset it
//!   without a word, to the end with `start_from: latest`).
//!
//! A moved start is committed with its generation before anything is read, so a stage that
//! dies meanwhile, or the one that takes the partition over, goes on in the same generation.
//! While copying, an offset below the one expected next (librdkafka reset the position: the
//! topic was created again under the stage) starts the next generation the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use weir_engine::EngineError;

use super::{RepartitionSpec, Stage};
use crate::source::expired::{list_offsets, misplaced, resets_to_end, Misplaced, Tp};

/// How a generation is written in a committed offset's metadata.
const GENERATION_METADATA: &str = "weir-generation=";

/// How the upstream topic is named in a slot's metadata.
const SLOT_METADATA: &str = "weir-upstream=";

/// How long a settling request waits.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often settling is tried again after it failed.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// How many times the commit of a start-over while copying is tried before the stage fails.
const START_OVER_COMMIT_TRIES: u32 = 5;

/// How often the slots of the assigned partitions are committed again (a broker expires a
/// group's offsets of topics it does not subscribe to after `offsets.retention.minutes`,
/// 7 days by default, from their last commit).
pub(super) const SLOT_REFRESH: Duration = Duration::from_secs(3600);

/// The generation a committed offset's metadata records (0: none).
pub(super) fn generation_in(metadata: &str) -> u16 {
    metadata
        .strip_prefix(GENERATION_METADATA)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The metadata recording generation `generation` (empty for 0).
pub(super) fn generation_metadata(generation: u16) -> String {
    if generation == 0 {
        String::new()
    } else {
        format!("{GENERATION_METADATA}{generation}")
    }
}

/// Whether a slot whose metadata is `metadata` was committed for upstream topic `upstream`
/// (the internal topic is the pipeline's, and may have served another topic before; a broker
/// that keeps no metadata says nothing: it counts).
fn slot_is_of(metadata: &str, upstream: &str) -> bool {
    metadata
        .strip_prefix(SLOT_METADATA)
        .is_none_or(|topic| topic == upstream)
}

/// What the stage's group holds for an upstream partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Committed {
    /// The upstream offset the stage continues at.
    pub offset: Option<u64>,
    /// The generation in its metadata.
    pub in_metadata: u16,
    /// The internal partition's committed offset: the generation.
    pub slot: Option<u64>,
}

impl Committed {
    /// The partition's generation: the larger record.
    fn generation(&self) -> u16 {
        let slot = self
            .slot
            .map_or(0, |s| u16::try_from(s).unwrap_or(u16::MAX));
        self.in_metadata.max(slot)
    }
}

/// Why a start moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Move {
    /// Below the log start: the offsets up to it were deleted before they were copied.
    Expired,
    /// The partition starts over in the next generation: its offsets begin again.
    StartsOver,
}

/// Where an assigned partition starts, once settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Start {
    pub partition: i32,
    /// Its generation from now on.
    pub generation: u16,
    /// Where reading moves to, when not at the committed offset: (offset, why).
    pub moved: Option<(u64, Move)>,
    /// What the group held.
    pub committed: Committed,
    /// The partition's high watermark, when read.
    pub end: Option<u64>,
}

/// Where each of `partitions` starts, from what the group holds (`committed`; none: nothing)
/// and the partitions' logs (`ranges`: log start and high watermark, needed for each
/// partition with a committed offset or a slot); `to_end`: a partition starting over goes
/// to its end, not its log start. Returns the starts, and the partitions whose range is
/// missing (asked again).
pub(super) fn starts(
    upstream: &str,
    partitions: &[i32],
    committed: &HashMap<i32, Committed>,
    ranges: &HashMap<Tp, (i64, i64)>,
    to_end: bool,
) -> (Vec<Start>, Vec<i32>) {
    let (mut out, mut waiting) = (Vec::with_capacity(partitions.len()), Vec::new());
    for &p in partitions {
        let c = committed.get(&p).copied().unwrap_or_default();
        let generation = c.generation();
        let key = (upstream.to_string(), p);
        let range = ranges.get(&key).copied();
        if range.is_none() && (c.offset.is_some() || c.slot.is_some()) {
            waiting.push(p);
            continue;
        }
        // (at the last generation, the start-over keeps it: settling refuses it)
        let over = |(low, high): (i64, i64)| {
            let to = if to_end { high } else { low };
            let next = generation.checked_add(1).unwrap_or(generation);
            (next, Some((to.max(0) as u64, Move::StartsOver)))
        };
        let (generation, moved) = match (c.offset, range) {
            (None, Some(range)) if c.slot.is_some() => over(range),
            (Some(offset), Some(range)) => {
                match misplaced(&[(key.clone(), offset)], &[(key, range)].into()).first() {
                    None => (generation, None),
                    Some((_, _, low, Misplaced::Expired)) => {
                        (generation, Some((*low, Move::Expired)))
                    }
                    Some((_, _, _, Misplaced::PastEnd)) => over(range),
                }
            }
            _ => (generation, None),
        };
        out.push(Start {
            partition: p,
            generation,
            moved,
            committed: c,
            end: range.map(|(_, high)| high.max(0) as u64),
        });
    }
    (out, waiting)
}

/// The log start and high watermark of `partitions`, read by a client of its own with
/// `read_uncommitted` (under the consumer's `read_committed` the end would be the last
/// stable offset, below an open transaction's records); a partition the broker did not
/// answer for is missing.
fn log_ranges(
    spec: &RepartitionSpec,
    partitions: &[&Tp],
) -> Result<HashMap<Tp, (i64, i64)>, KafkaError> {
    let client: BaseConsumer = crate::client_config(&spec.input.brokers, &spec.input.properties)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let lows = list_offsets(&client, partitions, Offset::Beginning)?;
    let highs = list_offsets(&client, partitions, Offset::End)?;
    Ok(lows
        .into_iter()
        .filter(|(_, low)| *low >= 0)
        .filter_map(|(tp, low)| Some((tp.clone(), (low, *highs.get(&tp)?))))
        .collect())
}

impl Stage {
    /// What the group holds for `partitions`: their committed offsets with the generations,
    /// and the partitions the broker answered with an error for.
    fn committed_of(
        &self,
        partitions: &[i32],
    ) -> Result<(HashMap<i32, Committed>, BTreeSet<i32>), KafkaError> {
        let mut query = TopicPartitionList::new();
        for &p in partitions {
            query.add_partition(&self.upstream, p);
            query.add_partition(&self.spec.topic, p);
        }
        let answer = self.consumer.committed_offsets(query, SETTLE_TIMEOUT)?;
        let (mut out, mut failed) = (HashMap::<i32, Committed>::new(), BTreeSet::new());
        for e in answer.elements() {
            let p = e.partition();
            if let Err(err) = e.error() {
                tracing::warn!(source = %self.spec.source, topic = e.topic(), partition = p, error = %err, "repartition: no committed offset in the answer");
                failed.insert(p);
                continue;
            }
            let Offset::Offset(o) = e.offset() else {
                continue;
            };
            let Ok(o) = u64::try_from(o) else { continue };
            let c = out.entry(p).or_default();
            if e.topic() == self.upstream {
                c.offset = Some(o);
                c.in_metadata = generation_in(e.metadata());
            } else if o > u64::from(u16::MAX) {
                tracing::warn!(source = %self.spec.source, partition = p, slot = o, "repartition: the group's offset of the internal topic's partition is no generation (the group's offsets were reset for every topic?); it is not counted");
            } else if slot_is_of(e.metadata(), &self.upstream) {
                c.slot = Some(o);
            }
        }
        Ok((out, failed))
    }

    /// Where `partitions` start (see the module), and those not answered for (asked again).
    fn read_starts(&self, partitions: &[i32]) -> Result<(Vec<Start>, Vec<i32>), KafkaError> {
        let (committed, failed) = self.committed_of(partitions)?;
        let answered: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !failed.contains(p))
            .collect();
        let keys: Vec<Tp> = committed
            .iter()
            .filter(|(p, c)| !failed.contains(p) && (c.offset.is_some() || c.slot.is_some()))
            .map(|(&p, _)| (self.upstream.clone(), p))
            .collect();
        let ranges = self.ranges_of(&keys);
        let to_end = resets_to_end(&self.spec.input);
        let (starts, mut waiting) = starts(&self.upstream, &answered, &committed, &ranges, to_end);
        waiting.extend(failed);
        Ok((starts, waiting))
    }

    /// The log ranges of `keys` that can be read: in one request, else (one partition without
    /// a leader fails it whole) one partition at a time; those missing are asked again.
    fn ranges_of(&self, keys: &[Tp]) -> HashMap<Tp, (i64, i64)> {
        if keys.is_empty() {
            return HashMap::new();
        }
        match log_ranges(&self.spec, &keys.iter().collect::<Vec<_>>()) {
            Ok(r) => r,
            Err(e) if keys.len() == 1 => {
                tracing::warn!(source = %self.spec.source, partition = keys[0].1, error = %e, "repartition: cannot read the upstream partition's log start and end");
                HashMap::new()
            }
            Err(_) => keys
                .iter()
                .flat_map(|k| self.ranges_of(std::slice::from_ref(k)))
                .collect(),
        }
    }

    /// The partitions assigned and settled: those the stage reads.
    pub(super) fn settled_partitions(&self) -> BTreeSet<i32> {
        let unsettled = self.unsettled.lock().map(|u| u.clone()).unwrap_or_default();
        let assigned = self.assigned.lock().map(|a| a.clone()).unwrap_or_default();
        assigned.difference(&unsettled).copied().collect()
    }

    /// Settles the partitions assigned and not settled yet (see the module): their
    /// generations known, their moved starts committed, they are resumed (unless the stage
    /// holds back). One that cannot be settled yet stays paused and is tried again a second
    /// later. Fails for a partition at its last generation that starts over again.
    pub(super) fn settle(&mut self) -> Result<(), EngineError> {
        let waiting: Vec<i32> = match self.unsettled.lock() {
            Ok(u) => u.iter().copied().collect(),
            Err(_) => return Ok(()),
        };
        if waiting.is_empty()
            || self
                .settle_failed
                .is_some_and(|t| t.elapsed() < SETTLE_RETRY)
        {
            return Ok(());
        }
        let (starts, unanswered) = match self.read_starts(&waiting) {
            Ok(s) => s,
            Err(e) => {
                self.settle_failed = Some(Instant::now());
                tracing::warn!(source = %self.spec.source, error = %e, partitions = ?waiting, "repartition: cannot read where the assigned upstream partitions start; they wait, and it is asked again");
                return Ok(());
            }
        };
        if !unanswered.is_empty() {
            self.settle_failed = Some(Instant::now());
            tracing::warn!(source = %self.spec.source, partitions = ?unanswered, "repartition: the broker did not say where these upstream partitions start; they wait, and it is asked again");
        }
        let mut settled = BTreeSet::new();
        for start in starts {
            if self.settle_one(&start)? {
                settled.insert(start.partition);
            }
        }
        if let Ok(mut u) = self.unsettled.lock() {
            u.retain(|p| !settled.contains(p));
        }
        if !self.stats.paused.load(Ordering::SeqCst) && !settled.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &p in &settled {
                tpl.add_partition(&self.upstream, p);
            }
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(source = %self.spec.source, error = %e, "repartition: cannot resume the settled upstream partitions; settling them again");
                if let Ok(mut u) = self.unsettled.lock() {
                    u.extend(settled);
                }
            } else {
                // (assigned again: read to its end again before it is paused there)
                self.at_ends.retain(|p| !settled.contains(p));
            }
        }
        Ok(())
    }

    /// Settles one partition at `start`; whether it is (a commit failed: not yet).
    fn settle_one(&mut self, start: &Start) -> Result<bool, EngineError> {
        let p = start.partition;
        if let Some((_, Move::StartsOver)) = start.moved {
            if start.generation == start.committed.generation() {
                return Err(self.fault(format!(
                    "partition {p} of `{}` starts over again at its last generation ({}); \
                     start the pool without its checkpoints, with a new group id",
                    self.upstream,
                    u16::MAX
                )));
            }
        }
        let at = start.moved.map(|(to, _)| to).or(start.committed.offset);
        // (an offset sent before this assignment belongs to where the partition stood then)
        self.next.remove(&p);
        // a start moved, or a slot missing beside an upstream offset (a group of a version
        // before generations): committed first
        let commit = start.moved.is_some()
            || (start.committed.offset.is_some() && start.committed.slot.is_none());
        if commit {
            if let Err(e) = self.commit_start(p, at, start.generation) {
                self.settle_failed = Some(Instant::now());
                tracing::warn!(source = %self.spec.source, partition = p, error = %e, "repartition: cannot commit where the upstream partition starts; it waits, and it is tried again");
                return Ok(false);
            }
        }
        // (committed: the move is made, whatever comes next)
        if let Some((to, why)) = start.moved {
            self.report_move(start, to, why);
            if why == Move::StartsOver {
                self.new_end(p, start.end);
            }
        }
        // the consumer starts where the group's offset was read here (librdkafka may have
        // read it earlier, before a late commit of the partition's previous owner): what
        // comes below it later is a reset
        self.expected.remove(&p);
        if let Some(at) = at {
            if self.seek_to(p, at) {
                self.expected.insert(p, at);
            } else if start.moved.is_some() {
                // a moved start must be where reading begins: tried again (committed now,
                // the next try finds it as the group's offset)
                self.settle_failed = Some(Instant::now());
                return Ok(false);
            }
        }
        self.generations.insert(p, start.generation);
        match at {
            Some(at) => self.committed_at.insert(p, at),
            None => self.committed_at.remove(&p),
        };
        Ok(true)
    }

    /// Commits partition `p`'s start `at` (when known) and its slot, in generation
    /// `generation`, synchronously.
    fn commit_start(&self, p: i32, at: Option<u64>, generation: u16) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        if let Some(at) = at {
            tpl.add_partition_offset(&self.upstream, p, Offset::Offset(at as i64))?;
            if let Some(mut e) = tpl.find_partition(&self.upstream, p) {
                e.set_metadata(generation_metadata(generation));
            }
        }
        self.add_slot(&mut tpl, p, generation);
        self.consumer.commit(&tpl, CommitMode::Sync)
    }

    /// Adds partition `p`'s slot, at generation `generation`, to `tpl`.
    fn add_slot(&self, tpl: &mut TopicPartitionList, p: i32, generation: u16) {
        let slot = Offset::Offset(i64::from(generation));
        if tpl.add_partition_offset(&self.spec.topic, p, slot).is_ok() {
            if let Some(mut e) = tpl.find_partition(&self.spec.topic, p) {
                e.set_metadata(format!("{SLOT_METADATA}{}", self.upstream));
            }
        }
    }

    /// Adds to `tpl` (offsets being committed) each of its upstream partitions' generation:
    /// in the offset's metadata, and as the slot's offset.
    pub(super) fn add_generations(&self, tpl: &mut TopicPartitionList) {
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.upstream)
            .iter()
            .map(|e| e.partition())
            .collect();
        for p in partitions {
            let generation = self.generations.get(&p).copied().unwrap_or(0);
            if let (true, Some(mut e)) = (generation != 0, tpl.find_partition(&self.upstream, p)) {
                e.set_metadata(generation_metadata(generation));
            }
            self.add_slot(tpl, p, generation);
        }
    }

    /// Commits again, with their slots, the offsets last committed of the settled partitions
    /// (see [`SLOT_REFRESH`]; a partition with no committed offset gets no slot, which would
    /// say its offset was deleted).
    pub(super) fn refresh_slots(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for p in self.settled_partitions() {
            if let Some(&at) = self.committed_at.get(&p) {
                let _ = tpl.add_partition_offset(&self.upstream, p, Offset::Offset(at as i64));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        self.add_generations(&mut tpl);
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(source = %self.spec.source, error = %e, "repartition: cannot commit the partitions' generations again");
        }
    }

    /// A message of partition `p` at `offset`, below the offset `expected` next: librdkafka
    /// reset the position (the topic was created again under the stage). What was read
    /// before is sent and committed, then the partition starts over at `offset` in its next
    /// generation, committed before anything of it is sent (the stage fails when it cannot
    /// be: a stage that went on uncommitted and died would be settled from its old offset).
    pub(super) fn starts_over_at(
        &mut self,
        p: i32,
        (offset, expected): (u64, u64),
    ) -> Result<(), EngineError> {
        self.send_all()?;
        self.commit(CommitMode::Sync)?;
        let old = self.generations.get(&p).copied().unwrap_or(0);
        let Some(generation) = old.checked_add(1) else {
            return Err(self.fault(format!(
                "partition {p} of `{}` starts over again at its last generation ({old}); start \
                 the pool without its checkpoints, with a new group id",
                self.upstream
            )));
        };
        let mut tries = 0;
        while let Err(e) = self.commit_start(p, Some(offset), generation) {
            tries += 1;
            if tries == START_OVER_COMMIT_TRIES {
                return Err(self.err(e));
            }
            tracing::warn!(source = %self.spec.source, partition = p, error = %e, "repartition: cannot commit where the upstream partition starts over; trying again");
            std::thread::sleep(SETTLE_RETRY);
        }
        self.generations.insert(p, generation);
        self.committed_at.insert(p, offset);
        self.next.remove(&p);
        if self.ends.contains_key(&p) {
            let end = self
                .consumer
                .fetch_watermarks(&self.upstream, p, SETTLE_TIMEOUT)
                .map_err(|e| self.err(e))?
                .1;
            self.new_end(p, Some(end.max(0) as u64));
        }
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            source = %self.spec.source,
            topic = %self.upstream,
            partition = p,
            expected,
            offset,
            generation,
            "repartition: the upstream partition's offsets began again below the one the stage \
             expected (the topic was deleted and created again while it copied, and the \
             consumer's position was reset as `auto.offset.reset` says): copying on in the \
             partition's next generation, which the lanes take as new records"
        );
        Ok(())
    }

    /// Reading to the end: partition `p` started over, so it ends at the new log's end `end`
    /// (the old one's, read when the stage started, may never come again).
    fn new_end(&mut self, p: i32, end: Option<u64>) {
        if let (Some(old), Some(end)) = (self.ends.get_mut(&p), end) {
            *old = end;
        }
    }

    /// Logs why partition `start` moves to offset `to`, and counts it.
    fn report_move(&self, start: &Start, to: u64, why: Move) {
        let p = start.partition;
        let from = start.committed.offset;
        match why {
            Move::Expired => {
                let from = from.unwrap_or(0);
                self.stats.expired.fetch_add(to - from, Ordering::Relaxed);
                tracing::error!(
                    source = %self.spec.source,
                    topic = %self.upstream,
                    partition = p,
                    from,
                    to,
                    lost = to - from,
                    "repartition: the upstream partition no longer holds the offsets the stage \
                     was to copy next (deleted by the topic's retention); copying on from its \
                     log start. Raise the topic's retention, or keep the pool from falling \
                     this far behind"
                );
            }
            Move::StartsOver => {
                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    source = %self.spec.source,
                    topic = %self.upstream,
                    partition = p,
                    next = ?from,
                    from = to,
                    generation = start.generation,
                    "repartition: the upstream partition lost its history (no committed offset \
                     where the stage's group had one, or an end before it): the topic was \
                     deleted and created again, or the broker lost records it had \
                     acknowledged. Copying on where `auto.offset.reset` says (the log start, \
                     or with `latest` the end), in the partition's next generation, which the \
                     lanes take as new records. If the topic is a different one now, start \
                     the pool without its checkpoints"
                );
            }
        }
    }

    /// Moves the consumer's position of paused partition `p` to `to` (it may have started
    /// from the committed offset already); whether it did (on a failure it starts at the
    /// group's offset, or where librdkafka's `auto.offset.reset` moves it).
    fn seek_to(&self, p: i32, to: u64) -> bool {
        let at = Offset::Offset(to as i64);
        match self.consumer.seek(&self.upstream, p, at, SETTLE_TIMEOUT) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(source = %self.spec.source, partition = p, error = %e, "repartition: cannot seek the upstream partition; it starts at the group's offset, or where librdkafka's `auto.offset.reset` moves it");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(low: i64, high: i64) -> HashMap<Tp, (i64, i64)> {
        [(("t".to_string(), 0), (low, high))].into()
    }

    fn committed(
        offset: Option<u64>,
        in_metadata: u16,
        slot: Option<u64>,
    ) -> HashMap<i32, Committed> {
        [(
            0,
            Committed {
                offset,
                in_metadata,
                slot,
            },
        )]
        .into()
    }

    fn start(c: &HashMap<i32, Committed>, r: &HashMap<Tp, (i64, i64)>, to_end: bool) -> Start {
        let (starts, waiting) = starts("t", &[0], c, r, to_end);
        assert!(waiting.is_empty(), "ranges");
        starts[0].clone()
    }

    #[test]
    fn a_generation_is_kept_in_the_metadata_and_the_slot_and_the_larger_counts() {
        assert_eq!(generation_metadata(0), "");
        assert_eq!(generation_in(&generation_metadata(5)), 5);
        assert_eq!(generation_in(""), 0);
        assert_eq!(generation_in("someone else's"), 0);
        let c = committed(Some(50), 3, Some(2))[&0];
        assert_eq!(
            c.generation(),
            3,
            "tansu keeps no metadata: the slot then counts"
        );
        let c = committed(Some(50), 0, Some(2))[&0];
        assert_eq!(c.generation(), 2);
    }

    #[test]
    fn a_slot_of_another_upstream_topic_does_not_count() {
        assert!(slot_is_of("weir-upstream=events", "events"));
        assert!(!slot_is_of("weir-upstream=older", "events"));
        assert!(slot_is_of("", "events"), "a broker that keeps no metadata");
    }

    #[test]
    fn a_start_in_the_log_stays_in_its_generation() {
        let s = start(&committed(Some(50), 0, Some(4)), &ranges(0, 100), false);
        assert_eq!((s.generation, s.moved), (4, None));
        // nothing committed: nothing to check
        let s = start(&HashMap::new(), &HashMap::new(), false);
        assert_eq!((s.generation, s.moved), (0, None));
    }

    #[test]
    fn a_partition_whose_offset_is_gone_but_not_its_slot_starts_over() {
        // the topic deleted (its offsets with it) and created again
        let c = committed(None, 0, Some(0));
        let s = start(&c, &ranges(0, 100), false);
        assert_eq!((s.generation, s.moved), (1, Some((0, Move::StartsOver))));
        let s = start(&c, &ranges(0, 100), true);
        assert_eq!((s.generation, s.moved), (1, Some((100, Move::StartsOver))));
        // its log range not known yet: asked again
        assert_eq!(
            starts("t", &[0], &c, &HashMap::new(), false),
            (vec![], vec![0])
        );
    }

    #[test]
    fn a_start_past_the_end_starts_over_in_the_next_generation() {
        let s = start(&committed(Some(500), 0, Some(0)), &ranges(0, 100), false);
        assert_eq!((s.generation, s.moved), (1, Some((0, Move::StartsOver))));
        let s = start(&committed(Some(500), 2, None), &ranges(0, 100), true);
        assert_eq!((s.generation, s.moved), (3, Some((100, Move::StartsOver))));
    }

    #[test]
    fn at_the_last_generation_a_start_over_keeps_it_for_settling_to_refuse() {
        let s = start(
            &committed(Some(500), u16::MAX, None),
            &ranges(0, 100),
            false,
        );
        assert_eq!(s.moved, Some((0, Move::StartsOver)));
        assert_eq!(s.generation, s.committed.generation());
    }

    #[test]
    fn a_start_below_the_log_start_moves_there_in_its_generation() {
        let s = start(&committed(Some(5), 0, Some(7)), &ranges(20, 100), true);
        assert_eq!((s.generation, s.moved), (7, Some((20, Move::Expired))));
        // an offset of 0 is checked too
        let s = start(&committed(Some(0), 0, Some(0)), &ranges(20, 100), false);
        assert_eq!(s.moved, Some((20, Move::Expired)));
    }
}
