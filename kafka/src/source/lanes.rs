//! The lanes of a repartition topic's partition (see [`Upstream`]): one per upstream
//! partition, kept in compact vectors indexed by upstream partition, so that a partition of a
//! topic repartitioned from 1,000 partitions costs a few tens of kilobytes, not a thousand
//! chunk streams. The partition stays one chunk stream (one clock, one checkpoint record);
//! each chunk holds one lane's messages (`Messages::lane`), so that its rows are late by
//! their lane's event time and its end says where the lane continues.

use super::*;

/// The upstream partitions of an assigned partition of a repartition topic.
pub(super) struct Lanes {
    /// The upstream topic (dead letters and `_partition` name the upstream partition).
    topic: Arc<str>,
    /// Per lane: the upstream sequence expected next (0: none read yet; the upstream offset
    /// until the upstream partition starts over, see `crate::repartition`); a message below it
    /// repeats one already read.
    pub(super) expect: Vec<u64>,
    /// Per lane: it continues a checkpoint that had read some of its messages, so it also
    /// takes envelopes of weir 0.1.0 (see [`place_message`]).
    pub(super) legacy: Vec<bool>,
    /// Per lane: when it last delivered.
    last_message: Vec<Instant>,
    /// Per lane: marked idle in the partition's clock.
    idle: Vec<bool>,
    /// Per lane seen: its partition info, made when it first delivers.
    infos: Vec<Option<Arc<PartitionInfo>>>,
    /// The buffers of lanes with messages not handed over yet.
    buffers: BTreeMap<u32, MessageBuffer>,
    /// Messages and payload bytes in `buffers`.
    messages: usize,
    bytes: usize,
    /// When the oldest buffered message arrived.
    pub(super) since: Option<Instant>,
    /// The offset (in the repartition topic) after the last complete hand-over: where the
    /// partition continues as long as only some lanes of a hand-over are dispatched.
    pub(super) handed: u64,
}

impl Lanes {
    /// `count` lanes continuing at `expect` (from a checkpoint; empty: nothing read), the
    /// partition at repartition topic offset `from`.
    pub(super) fn new(topic: Arc<str>, count: usize, expect: &[u64], from: u64) -> Self {
        let mut e = expect.to_vec();
        e.resize(count.max(expect.len()), 0);
        let n = e.len();
        Lanes {
            topic,
            legacy: e.iter().map(|&o| o > 0).collect(),
            expect: e,
            last_message: vec![Instant::now(); n],
            idle: vec![false; n],
            infos: vec![None; n],
            buffers: BTreeMap::new(),
            messages: 0,
            bytes: 0,
            since: None,
            handed: from,
        }
    }

    /// The number of lanes.
    pub(super) fn len(&self) -> usize {
        self.expect.len()
    }

    /// Buffers a message of lane `lane` at upstream offset `offset` and sequence `sequence`,
    /// unless it repeats one already read (`false`). `ctx` is told when an idle lane delivers
    /// again.
    pub(super) fn push<'h>(
        &mut self,
        (lane, offset, sequence): (usize, u64, u64),
        parts: (&[u8], Option<&[u8]>),
        timestamp: Option<i64>,
        headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
        (with_headers, clock, now): (bool, &PartitionClock, Instant),
    ) -> bool {
        if sequence < self.expect[lane] {
            return false;
        }
        let buffer = self.buffers.entry(lane as u32).or_default();
        let before = buffer.bytes_len();
        buffer.push_parts(parts, timestamp, headers, with_headers, offset);
        self.bytes += buffer.bytes_len() - before;
        self.messages += 1;
        self.since.get_or_insert(now);
        self.expect[lane] = sequence.saturating_add(1);
        self.last_message[lane] = now;
        if self.idle[lane] {
            self.idle[lane] = false;
            clock.set_lane_idle(lane as u32, false);
        }
        true
    }

    /// Whether the buffered messages make a full chunk's worth (the partition's, not a
    /// lane's: the lanes of 1,000 upstream partitions must not buffer 1,000 chunks).
    pub(super) fn is_full(&self) -> bool {
        self.bytes >= CHUNK_BYTES || self.messages >= CHUNK_MESSAGES
    }

    pub(super) fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// The buffered messages as chunks of the partition `info` (one per lane with messages,
    /// numbered from `seq`), the partition continuing at `next` (repartition topic offset)
    /// after them. Every chunk but the last says the partition continues where the previous
    /// hand-over left it: a checkpoint cutting between them re-reads this hand-over, and the
    /// lanes whose chunks it holds drop their repeats.
    pub(super) fn hand_over(
        &mut self,
        (source, info): (usize, &Arc<PartitionInfo>),
        seq: &mut u64,
        next: u64,
    ) -> Vec<Chunk> {
        let buffers = std::mem::take(&mut self.buffers);
        let (count, mut out) = (buffers.len(), Vec::with_capacity(buffers.len()));
        for (i, (lane, mut buffer)) in buffers.into_iter().enumerate() {
            let l = lane as usize;
            let mut messages = buffer.take();
            messages.lane = Some(lane);
            let partition = self.infos[l]
                .get_or_insert_with(|| {
                    Arc::new(PartitionInfo {
                        source: info.source.clone(),
                        id: info.id,
                        state_id: info.state_id,
                        number: lane,
                        topic: Some(self.topic.clone()),
                        file: None,
                    })
                })
                .clone();
            let next_offset = if i + 1 == count { next } else { self.handed };
            out.push(Chunk {
                source,
                partition,
                seq: *seq,
                first_offset: messages.offsets.first().copied().unwrap_or(0),
                resume: Resume {
                    next_offset,
                    position: self.expect[l],
                    incarnation: 0,
                },
                data: ChunkData::Messages(messages),
            });
            *seq += 1;
        }
        self.handed = next;
        self.messages = 0;
        self.bytes = 0;
        self.since = None;
        out
    }

    /// Marks the lanes silent for `idle` idle in `clock` (they stop holding the partition's
    /// watermark back).
    pub(super) fn mark_idle(&mut self, now: Instant, idle: Duration, clock: &PartitionClock) {
        for l in 0..self.len() {
            if !self.idle[l] && now - self.last_message[l] >= idle {
                self.idle[l] = true;
                clock.set_lane_idle(l as u32, true);
            }
        }
    }

    /// A new run's clock: gives it the lanes, with the idle ones marked.
    pub(super) fn set_up(&self, clock: &PartitionClock) {
        clock.use_lanes(self.len());
        for (l, &idle) in self.idle.iter().enumerate() {
            if idle {
                clock.set_lane_idle(l as u32, true);
            }
        }
    }

    /// After a pause for backpressure: the lanes were not silent.
    pub(super) fn touch(&mut self, now: Instant) {
        self.last_message.fill(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Arc<PartitionInfo> {
        Arc::new(PartitionInfo {
            source: "events".into(),
            id: 7,
            state_id: 7,
            number: 3,
            topic: Some("p-events-repartition".into()),
            file: None,
        })
    }

    fn push(lanes: &mut Lanes, clock: &PartitionClock, lane: usize, offset: u64) -> bool {
        push_in(lanes, clock, lane, (offset, 0))
    }

    /// Pushes a message read at `offset` in generation `generation` of its upstream partition.
    fn push_in(
        lanes: &mut Lanes,
        clock: &PartitionClock,
        lane: usize,
        (offset, generation): (u64, u16),
    ) -> bool {
        let payload = format!("{lane}:{offset}");
        let sequence = crate::repartition::sequence(offset, generation);
        lanes.push(
            (lane, offset, sequence),
            (payload.as_bytes(), None),
            None,
            std::iter::empty(),
            (false, clock, Instant::now()),
        )
    }

    #[test]
    fn lanes_drop_repeats_and_hand_over_one_chunk_per_lane_with_messages() {
        let clock = PartitionClock::new(0);
        // lane 1 continues a checkpoint at upstream offset 5; 1,000 lanes
        let mut expect = vec![0; 1_000];
        expect[1] = 5;
        let mut lanes = Lanes::new("events".into(), 1_000, &expect, 40);
        assert_eq!(
            (lanes.len(), lanes.legacy[1], lanes.legacy[0]),
            (1_000, true, false)
        );
        assert!(push(&mut lanes, &clock, 1, 5));
        assert!(!push(&mut lanes, &clock, 1, 3), "a repeat is dropped");
        assert!(push(&mut lanes, &clock, 999, 0));
        assert!(push(&mut lanes, &clock, 1, 6));
        assert!(!push(&mut lanes, &clock, 1, 6));
        let mut seq = 4;
        let chunks = lanes.hand_over((0, &info()), &mut seq, 50);
        // two lanes delivered: two chunks, not a thousand
        assert_eq!(chunks.len(), 2);
        assert_eq!(seq, 6);
        let summary: Vec<_> = chunks
            .iter()
            .map(|c| {
                let ChunkData::Messages(m) = &c.data else {
                    panic!("messages")
                };
                (
                    c.seq,
                    m.lane,
                    c.partition.id,
                    c.partition.number,
                    m.offsets.clone(),
                    c.resume,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                // not the last chunk: the partition continues where the last hand-over left it
                (
                    4,
                    Some(1),
                    7,
                    1,
                    vec![5, 6],
                    Resume {
                        next_offset: 40,
                        position: 7,
                        incarnation: 0
                    }
                ),
                (
                    5,
                    Some(999),
                    7,
                    999,
                    vec![0],
                    Resume {
                        next_offset: 50,
                        position: 1,
                        incarnation: 0
                    }
                ),
            ]
        );
        assert!(lanes.is_empty());
        assert!(lanes.hand_over((0, &info()), &mut seq, 50).is_empty());
        assert!(push(&mut lanes, &clock, 0, 0));
        let chunks = lanes.hand_over((0, &info()), &mut seq, 51);
        assert_eq!(
            chunks[0].resume,
            Resume {
                next_offset: 51,
                position: 1,
                incarnation: 0
            }
        );
    }

    /// An upstream partition that started over (its topic created again) sends its new
    /// records in its next generation: the lane takes them (dropping none as repeats of the
    /// old ones), hands them over at their own offsets, and continues at their sequence.
    #[test]
    fn a_lane_whose_upstream_started_over_takes_its_new_records() {
        let clock = PartitionClock::new(0);
        let mut lanes = Lanes::new("events".into(), 2, &[500, 7], 0);
        assert!(
            !push(&mut lanes, &clock, 0, 3),
            "in the same generation: a repeat"
        );
        assert!(push_in(&mut lanes, &clock, 0, (0, 1)));
        assert!(push_in(&mut lanes, &clock, 0, (1, 1)));
        assert!(!push_in(&mut lanes, &clock, 0, (1, 1)), "a repeat");
        assert!(!push(&mut lanes, &clock, 0, 499), "an old record again");
        assert!(push(&mut lanes, &clock, 1, 7), "the other lane as before");
        let mut seq = 0;
        let chunks = lanes.hand_over((0, &info()), &mut seq, 9);
        let lane0 = &chunks[0];
        let ChunkData::Messages(m) = &lane0.data else {
            panic!("messages")
        };
        assert_eq!((m.lane, m.offsets.clone()), (Some(0), vec![0, 1]));
        assert_eq!(lane0.resume.position, (1 << 48) + 2);
        assert_eq!(lanes.expect, vec![(1 << 48) + 2, 8]);
    }

    #[test]
    fn a_full_partition_is_measured_over_its_lanes() {
        let clock = PartitionClock::new(0);
        let mut lanes = Lanes::new("events".into(), 1_000, &[], 0);
        for i in 0..CHUNK_MESSAGES {
            assert!(!lanes.is_full());
            push(&mut lanes, &clock, i % 1_000, (i / 1_000) as u64);
        }
        assert!(lanes.is_full());
    }

    #[test]
    fn silent_lanes_turn_idle_and_wake_up_when_they_deliver() {
        let clock = PartitionClock::new(0);
        let mut lanes = Lanes::new("events".into(), 2, &[], 0);
        lanes.set_up(&clock);
        assert!(push(&mut lanes, &clock, 0, 0));
        let later = Instant::now() + Duration::from_secs(61);
        lanes.mark_idle(later, Duration::from_secs(60), &clock);
        assert!(clock.is_idle());
        assert!(push(&mut lanes, &clock, 1, 0));
        assert!(!clock.is_idle());
    }
}
