//! Offsets that the topic's retention deleted before the source read them, and start offsets
//! past a partition's end.
//!
//! * Start offsets (a checkpoint's, a claim's, the group's) below the log start: moved to the
//!   log start and reported, instead of left to librdkafka's `auto.offset.reset`, which resets
//!   them without a word (to the end of the partition with `start_from: latest`, skipping
//!   records that are still there).
//! * Start offsets past the partition's end (its high watermark, read without the consumer's
//!   `read_committed`, under which the end is the last stable offset, below an open
//!   transaction's records): the topic was deleted and created again, or the broker lost
//!   records it had acknowledged (an unclean leader election). Offsets cannot tell the two
//!   apart (a checkpoint does not keep the topic's id), so the position goes where
//!   `auto.offset.reset` says, as librdkafka would move it and as Flink's Kafka source does:
//!   to the log start (re-created: every record came after the checkpoint; truncated: the
//!   records below the end are read again), or with `latest` to the end; with an error naming
//!   the partition and the offsets, where librdkafka said nothing. With the log start,
//!   `--until-caught-up` reads the partition instead of ending it unread.
//! * While reading (the source fell behind the log start): librdkafka resets the fetch
//!   position as `auto.offset.reset` says, and the reader sees offsets jump. A jump whose
//!   start is below the partition's log start (as the last fetch reported it) skipped deleted
//!   offsets: reported the same way, with what a reset to the end (`latest`) skipped too.

use super::*;

/// How long the offsets of a rebalance's partitions are waited for (one request each).
pub(crate) const OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition of a rebalance: (topic, partition).
pub(crate) type Tp = (String, i32);

/// Why a start offset is not where the partition can be read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Misplaced {
    /// Below the log start: the offsets up to it were deleted before they were read.
    Expired,
    /// Past the partition's end: the partition was created again, or lost its last records.
    PastEnd,
}

/// The partitions of `wanted` whose start offset is below their log start or past their end
/// (with the log start at or below the end: an answer past it is not trusted): each with its
/// log start, the first offset the partition still holds, where reading goes on from.
pub(crate) fn misplaced(
    wanted: &[(Tp, u64)],
    ranges: &HashMap<Tp, (i64, i64)>,
) -> Vec<(Tp, u64, u64, Misplaced)> {
    wanted
        .iter()
        .filter_map(|(tp, start)| {
            let &(low, high) = ranges.get(tp)?;
            let low = u64::try_from(low).ok().filter(|_| low <= high)?;
            let kind = if low > *start {
                Misplaced::Expired
            } else if *start > high as u64 {
                Misplaced::PastEnd
            } else {
                return None;
            };
            Some((tp.clone(), *start, low, kind))
        })
        .collect()
}

/// The high watermarks of `partitions` (every record's offset, of open transactions too, is
/// below it), read by a client of its own with `read_uncommitted`: the source's consumer,
/// reading committed transactions only, is answered the last stable offset. Rare (a start
/// past the end only), so the client is made for the call; one request for all of them.
pub(super) fn high_watermarks(
    (brokers, properties): &(String, Vec<(String, String)>),
    partitions: &[&Tp],
) -> Result<HashMap<Tp, i64>, rdkafka::error::KafkaError> {
    let client: BaseConsumer = crate::client_config(brokers, properties)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    list_offsets(&client, partitions, Offset::End)
}

/// Whether `start` is past the high watermark `high` (unknown: not past it, the position is
/// left as it is).
pub(super) fn past_the_high_watermark(start: u64, high: Option<&i64>) -> bool {
    high.is_some_and(|&high| u64::try_from(high).is_ok_and(|high| start > high))
}

/// One offset per partition of `tpl` from a ListOffsets request at `at` (-2: the log start,
/// -1: the end, as the watermarks are read); none on failure.
pub(crate) fn list_offsets<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    partitions: &[&Tp],
    at: Offset,
) -> Result<HashMap<Tp, i64>, rdkafka::error::KafkaError> {
    let mut query = TopicPartitionList::new();
    for (topic, p) in partitions {
        query.add_partition_offset(topic, *p, at)?;
    }
    Ok(consumer
        .offsets_for_times(query, OFFSETS_TIMEOUT)?
        .elements()
        .iter()
        .filter(|e| e.error().is_ok())
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

impl GroupContext {
    /// Moves every start offset of `tpl` (a checkpoint's, a claim's, where this process
    /// stopped, the group's committed one) that the partition's log no longer holds to its
    /// log start, and reports the offsets lost: an error in the log naming them, and
    /// `weir_records_expired_total` (each loss once per process). When the offsets cannot
    /// be read, the starts stay as they are (librdkafka then resets them as configured).
    pub(super) fn skip_expired(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let assigned = self.ids_of(tpl);
        let committed = self.place_starts(consumer, tpl);
        self.notes_read(&assigned, committed.as_ref());
    }

    /// The partitions of `tpl` being assigned forget the committed offset an earlier
    /// assignment started from (see `Progress::assigning`), before any is read again.
    pub(super) fn forget_starts(&self, tpl: &TopicPartitionList) {
        self.progress().assigning(&self.ids_of(tpl));
    }

    /// The engine's ids of the partitions of `tpl` this source reads.
    fn ids_of(&self, tpl: &TopicPartitionList) -> Vec<usize> {
        tpl.elements()
            .iter()
            .filter_map(|e| {
                self.ids
                    .get(&(e.topic().to_string(), e.partition()))
                    .copied()
            })
            .collect()
    }

    /// [`Self::skip_expired`]; returns the group's committed offsets of the partitions that
    /// start from them, when read.
    fn place_starts(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        let mut wanted: Vec<(Tp, u64)> = Vec::new();
        let mut committed_query = TopicPartitionList::new();
        for e in tpl.elements() {
            let tp = (e.topic().to_string(), e.partition());
            match e.offset() {
                Offset::Offset(o) if o > 0 => wanted.push((tp, o as u64)),
                Offset::Invalid | Offset::Stored => {
                    committed_query.add_partition(&tp.0, tp.1);
                }
                _ => {}
            }
        }
        // the group's committed offsets, where the partitions start without another
        let mut committed = None;
        if committed_query.count() > 0 {
            match consumer.committed_offsets(committed_query, OFFSETS_TIMEOUT) {
                Ok(c) => {
                    self.read_notes(&c);
                    wanted.extend(c.elements().iter().filter_map(|e| match e.offset() {
                        Offset::Offset(o) if o > 0 => {
                            Some(((e.topic().to_string(), e.partition()), o as u64))
                        }
                        _ => None,
                    }));
                    committed = Some(c);
                }
                Err(e) => {
                    tracing::warn!(source = %self.source, error = %e, "kafka: cannot read the group's committed offsets to check them against the topic's retention");
                }
            }
        }
        if wanted.is_empty() {
            return committed;
        }
        let partitions: Vec<&Tp> = wanted.iter().map(|(tp, _)| tp).collect();
        let ranges = list_offsets(consumer, &partitions, Offset::Beginning).and_then(|lows| {
            let highs = list_offsets(consumer, &partitions, Offset::End)?;
            Ok(lows
                .into_iter()
                .filter_map(|(tp, low)| Some((tp.clone(), (low, *highs.get(&tp)?))))
                .collect::<HashMap<_, _>>())
        });
        let ranges = match ranges {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "kafka: cannot read the partitions' log starts; offsets deleted by retention are reset as `auto.offset.reset` says");
                // (a start librdkafka resets may not name the records a note describes)
                for (tp, _) in &wanted {
                    self.forget_note(tp);
                }
                return committed;
            }
        };
        let mut moves = misplaced(&wanted, &ranges);
        if self.read_committed && moves.iter().any(|m| m.3 == Misplaced::PastEnd) {
            self.keep_past_the_end_of_the_log_only(&mut moves);
        }
        for ((topic, p), start, low, kind) in moves {
            let key = (topic, p);
            if kind == Misplaced::PastEnd {
                self.forget_note(&key);
            }
            let end = ranges.get(&key).map_or(0, |&(_, high)| high.max(0) as u64);
            let low = match kind {
                Misplaced::Expired => {
                    self.report_expired(&key, start, low);
                    low
                }
                Misplaced::PastEnd => {
                    self.report_past_end(&key, start, (low, end));
                    if self.resets_to_end {
                        end
                    } else {
                        low
                    }
                }
            };
            let at = Offset::Offset(low as i64);
            let _ = tpl.set_partition_offset(&key.0, p, at);
            if let Ok(mut starts) = self.starts.lock() {
                starts.insert(key.clone(), at);
            }
            if let Ok(mut lanes) = self.lane_starts.lock() {
                if let Some(l) = lanes.get_mut(&key) {
                    l.0 = low;
                }
            }
            if let Ok(mut positions) = self.positions.lock() {
                positions.insert(key, low);
            }
        }
        committed
    }

    /// Tells the engine of an assignment (`assigned`): which of its partitions start from a
    /// committed offset and which have none, as `committed` (when read) says (see
    /// `Progress::assignment_read`), once their notes are read and those that no longer
    /// apply forgotten.
    fn notes_read(&self, assigned: &[usize], committed: Option<&TopicPartitionList>) {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for e in committed.map(|c| c.elements()).unwrap_or_default() {
            let Some(&id) = self.ids.get(&(e.topic().to_string(), e.partition())) else {
                continue;
            };
            match (e.offset(), e.error()) {
                (Offset::Offset(o), _) if o >= 0 => with.push(id),
                // (a partition whose offset could not be read may have a commit)
                (Offset::Invalid, Ok(())) => without.push(id),
                _ => {}
            }
        }
        self.progress().assignment_read(assigned, &with, &without);
    }

    /// Hands the engine the notes committed with the group's offsets `committed` (see
    /// `weir_engine::reread`): the rows an earlier run without checkpoints read past them
    /// whose windows are durable already.
    fn read_notes(&self, committed: &TopicPartitionList) {
        let progress = self.progress();
        for (i, e) in committed.elements().iter().enumerate() {
            let (Offset::Offset(o), Some(&id)) = (
                e.offset(),
                self.ids.get(&(e.topic().to_string(), e.partition())),
            ) else {
                continue;
            };
            let Ok(offset) = u64::try_from(o) else {
                continue;
            };
            // the group's newest commit says it all: without a note, nothing is skipped
            let metadata = committed_metadata(committed, i).unwrap_or_default();
            let note = self.note_for(e.topic(), &metadata);
            if progress.start_reading(id, offset, &note) {
                tracing::info!(
                    source = %self.source,
                    topic = e.topic(),
                    partition = e.partition(),
                    offset,
                    note = %note,
                    "kafka: an earlier run's note applies: rows read again past the committed offset whose windows it made durable are not counted again, and rows of windows it closed are late"
                );
            }
        }
    }

    /// Forgets the note of partition `tp`: its offsets may no longer name the records the
    /// note describes.
    pub(super) fn forget_note(&self, tp: &Tp) {
        if let Some(&id) = self.ids.get(tp) {
            self.progress().forget_reread(id);
        }
    }

    /// Drops from `moves` the starts past the last stable offset but not past the high
    /// watermark (an open transaction's records lie between): a position the consumer waits
    /// at, not one the partition lost. When the high watermarks cannot be read, no start
    /// past the end is moved (librdkafka resets those the broker refuses, as configured).
    fn keep_past_the_end_of_the_log_only(&self, moves: &mut Vec<(Tp, u64, u64, Misplaced)>) {
        let past: Vec<&Tp> = moves
            .iter()
            .filter(|m| m.3 == Misplaced::PastEnd)
            .map(|m| &m.0)
            .collect();
        let highs = match high_watermarks(&self.client, &past) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(source = %self.source, error = %e, "kafka: cannot read the partitions' high watermarks to check start offsets past their end");
                HashMap::new()
            }
        };
        moves.retain(|(tp, start, _, kind)| {
            *kind == Misplaced::Expired || past_the_high_watermark(*start, highs.get(tp))
        });
    }

    /// Logs that partition `key` ends (at `end`) before the offset `start` this source was to
    /// read next, and where reading goes on (its log start `low`, or with `latest` its end),
    /// unless this process said so already. Nothing is counted: which records went with the
    /// old partition is not known.
    fn report_past_end(&self, key: &Tp, start: u64, (low, end): (u64, u64)) {
        let Ok(mut reported) = self.expired_reported.lock() else {
            return;
        };
        if reported.insert(key.clone(), (start, low)) == Some((start, low)) {
            return;
        }
        let from = if self.resets_to_end { end } else { low };
        tracing::error!(
            source = %self.source,
            topic = %key.0,
            partition = key.1,
            next = start,
            end,
            from,
            skipped = from - low,
            "kafka: the partition ends before the offset this source was to read next: the \
             topic was deleted and created again, or the broker lost records it had \
             acknowledged (an unclean leader election). Reading on where `auto.offset.reset` \
             says: from the log start (records below the old end are read again if the log \
             was cut), or with `latest` from the end (`skipped` records are not read). If the \
             topic is a different one now, start the pipeline without its checkpoint"
        );
    }

    /// Logs and counts the offsets `start..low` of partition `key` as lost, unless this
    /// process reported that loss already.
    fn report_expired(&self, key: &Tp, start: u64, low: u64) {
        let Ok(mut reported) = self.expired_reported.lock() else {
            return;
        };
        if reported.insert(key.clone(), (start, low)) == Some((start, low)) {
            return;
        }
        let lost = low - start;
        tracing::error!(
            source = %self.source,
            topic = %key.0,
            partition = key.1,
            from = start,
            to = low,
            lost,
            "kafka: the partition no longer holds the offsets this source was to read next \
             (deleted by the topic's retention, or by a DeleteRecords request); reading on \
             from its log start. Raise the topic's retention, or keep the pipeline from \
             falling this far behind"
        );
        self.expired.fetch_add(lost, Ordering::AcqRel);
    }
}

/// The partition's log start as its last fetch reported it (librdkafka's cached low
/// watermark: no request), if known.
fn cached_log_start<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<u64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the consumer's live handle, a NUL-terminated topic name, and two out-params
    // that librdkafka writes and does not keep.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
        .then_some(u64::try_from(low).ok())
        .flatten()
}

/// How long after librdkafka reset a fetch position the jumps of offsets are checked against
/// the log start (the messages after the reset come within a fetch or two).
const RESET_JUMPS_FOR: Duration = Duration::from_secs(60);

/// Whether a reset fetch position goes to the partition's end: `auto.offset.reset` as weir
/// sets it from `start_from`, unless a property overrides it.
pub(crate) fn resets_to_end(config: &KafkaSourceConfig) -> bool {
    match config
        .properties
        .iter()
        .rev()
        .find(|(k, _)| k == "auto.offset.reset")
    {
        Some((_, v)) => matches!(
            v.to_ascii_lowercase().as_str(),
            "latest" | "largest" | "end"
        ),
        None => config.start_from == StartFrom::Latest,
    }
}

/// What a jump of offsets `from..to` lost, once librdkafka reset the position and the log
/// starts at `low`: the end of the offsets deleted, and of those skipped (past the deleted
/// ones too with a reset to the end). None when it is no reset's jump: that one lands at or
/// past the log start, while gaps between messages fetched before the reset (transaction
/// markers, compaction) lie wholly below it, and gaps above it lost nothing.
fn lost_in_jump(from: u64, to: u64, low: u64, to_end: bool) -> Option<(u64, u64)> {
    if from >= low || to < low {
        return None;
    }
    let deleted_to = to.min(low);
    Some((deleted_to, if to_end { to } else { deleted_to }))
}

impl KafkaReader {
    /// Checks the jumps of offsets partition `l` made (see the module's docs). Only after
    /// librdkafka reset a fetch position (within [`RESET_JUMPS_FOR`]) can a jump be a loss;
    /// then one from below the log start to at or past it is reported. Others (transaction
    /// markers, compaction, also among messages fetched before the reset) are not losses.
    /// Jumps stay until the log start is known.
    pub(super) fn check_jumps(&mut self, l: usize) {
        let s = &mut self.partitions[l];
        s.jumps_checked = Instant::now();
        let Some(consumer) = &self.consumer else {
            s.jumps.clear();
            return;
        };
        let context = consumer.context();
        let reset = context.last_reset.lock().ok().and_then(|at| *at);
        if reset.is_none_or(|at| at.elapsed() > RESET_JUMPS_FOR) {
            s.jumps.clear();
            return;
        }
        let Some(low) = cached_log_start(consumer, &s.topic, s.number) else {
            return;
        };
        let key = (s.topic.to_string(), s.number);
        for (from, to) in std::mem::take(&mut s.jumps) {
            if let Some((deleted_to, skipped_to)) =
                lost_in_jump(from, to, low, context.resets_to_end)
            {
                context.report_reset(&key, from, deleted_to, skipped_to);
            }
        }
    }
}

impl GroupContext {
    /// Logs and counts the offsets `from..skipped_to` of partition `key` as lost while
    /// reading: `from..deleted_to` deleted by the retention before they were read, the rest
    /// skipped by librdkafka's reset to the partition's end.
    fn report_reset(&self, key: &Tp, from: u64, deleted_to: u64, skipped_to: u64) {
        let lost = skipped_to - from;
        tracing::error!(
            source = %self.source,
            topic = %key.0,
            partition = key.1,
            from,
            deleted_to,
            skipped_to,
            lost,
            "kafka: the partition's retention deleted offsets this source had not read yet \
             (it fell behind the log start while reading); librdkafka moved the position as \
             `auto.offset.reset` says (with start_from: latest, to the end: the offsets from \
             deleted_to to skipped_to were still there and are skipped too). Raise the topic's \
             retention, or keep the pipeline from falling this far behind"
        );
        self.expired.fetch_add(lost, Ordering::AcqRel);
    }
}

/// The metadata committed with element `index` of `list`, when it is UTF-8 text (rdkafka's
/// `metadata()` panics on other bytes, which any client of the group may have committed).
fn committed_metadata(list: &TopicPartitionList, index: usize) -> Option<String> {
    // SAFETY: `list` owns its native list for the borrow; `index` is checked against its
    // count, and the metadata pointer and size are librdkafka's, read-only here.
    unsafe {
        let native = &*list.ptr();
        if index >= usize::try_from(native.cnt).ok()? {
            return None;
        }
        let e = &*native.elems.add(index);
        if e.metadata.is_null() || e.metadata_size == 0 {
            return None;
        }
        let bytes = std::slice::from_raw_parts(e.metadata as *const u8, e.metadata_size);
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_jump_from_below_the_log_start_to_past_it_lost_offsets() {
        // the reset's jump: to the log start, or to the end
        assert_eq!(lost_in_jump(100, 1585, 1585, false), Some((1585, 1585)));
        assert_eq!(lost_in_jump(100, 4100, 1585, true), Some((1585, 4100)));
        // a transaction marker among messages fetched before the reset, all below the start
        assert_eq!(lost_in_jump(500, 501, 1585, false), None);
        // a marker at or past the log start
        assert_eq!(lost_in_jump(1600, 1601, 1585, true), None);
    }

    #[test]
    fn a_reset_goes_to_the_end_as_start_from_or_a_property_says() {
        let with = |start_from: StartFrom, reset: Option<&str>| KafkaSourceConfig {
            start_from,
            properties: reset
                .map(|r| vec![("auto.offset.reset".to_string(), r.to_string())])
                .unwrap_or_default(),
            ..crate::source::tests::reading_to_the_end("b:9092", "t")
        };
        assert!(resets_to_end(&with(StartFrom::Latest, None)));
        assert!(!resets_to_end(&with(StartFrom::Earliest, None)));
        assert!(!resets_to_end(&with(StartFrom::Committed, None)));
        assert!(resets_to_end(&with(StartFrom::Earliest, Some("Largest"))));
        assert!(!resets_to_end(&with(StartFrom::Latest, Some("earliest"))));
    }

    #[test]
    fn only_offsets_below_a_plausible_log_start_are_expired() {
        let tp = |p: i32| ("t".to_string(), p);
        let wanted = vec![
            (tp(0), 10),
            (tp(1), 10),
            (tp(2), 10),
            (tp(3), 10),
            (tp(4), 10),
        ];
        let ranges: HashMap<_, _> = [
            (tp(0), (0, 50)),
            (tp(1), (10, 50)),
            (tp(2), (25, 50)),
            (tp(3), (-1, 50)),
            (tp(4), (60, 50)),
        ]
        .into();
        assert_eq!(
            misplaced(&wanted, &ranges),
            vec![(tp(2), 10, 25, Misplaced::Expired)]
        );
    }

    #[test]
    fn under_read_committed_only_a_start_past_the_high_watermark_is_past_the_end() {
        // ends read under read_committed: the last stable offset 20, an open transaction's
        // records up to the high watermark 30
        let tp = ("t".to_string(), 0);
        let moves = misplaced(&[(tp.clone(), 30)], &[(tp.clone(), (0, 20))].into());
        assert_eq!(moves, vec![(tp, 30, 0, Misplaced::PastEnd)]);
        // the high watermark decides (librdkafka's mock cluster has no last stable offset,
        // so this case is shown here, not on it)
        assert!(!past_the_high_watermark(30, Some(&30)));
        assert!(!past_the_high_watermark(25, Some(&30)));
        assert!(past_the_high_watermark(31, Some(&30)));
        assert!(!past_the_high_watermark(31, None));
        assert!(!past_the_high_watermark(31, Some(&-1)));
    }

    #[test]
    fn a_start_past_the_end_goes_to_the_log_start() {
        let tp = |p: i32| ("t".to_string(), p);
        let wanted = vec![(tp(0), 50), (tp(1), 51), (tp(2), 51), (tp(3), 900)];
        let ranges: HashMap<_, _> = [
            // at the end: nothing to read yet, nothing wrong
            (tp(0), (0, 50)),
            // one past it
            (tp(1), (0, 50)),
            // past it, with a log start above zero
            (tp(2), (7, 50)),
            // an empty partition of a topic created again
            (tp(3), (0, 0)),
        ]
        .into();
        assert_eq!(
            misplaced(&wanted, &ranges),
            vec![
                (tp(1), 51, 0, Misplaced::PastEnd),
                (tp(2), 51, 7, Misplaced::PastEnd),
                (tp(3), 900, 0, Misplaced::PastEnd),
            ]
        );
    }
}
