//! The consumer's group context: rebalances served inside `poll`, claims and hand-overs in a
//! worker pool, and the consumer's settings.

use super::*;

/// Ends the run of `ctx` with a hand-over checkpoint and waits until its outputs committed it
/// (or the run failed), at most `timeout`; returns whether they committed it.
pub(super) fn hand_over(ctx: &ReaderContext, timeout: Duration) -> bool {
    let started = Instant::now();
    ctx.request_handover();
    while ctx.outputs_finished() == Some(false) {
        if started.elapsed() >= timeout {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "kafka: the hand-over checkpoint did not complete in time; giving the partitions up anyway"
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ctx.outputs_finished() == Some(true)
}

/// Partitions of a rebalance the pool could not claim: the pool's error is the cause (its
/// kind says what it was).
#[derive(Debug, thiserror::Error)]
#[error("cannot claim partitions {partitions:?}")]
pub(super) struct ClaimFailed {
    partitions: Vec<(String, i32)>,
    #[source]
    cause: EngineError,
}

pub(super) enum GroupEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// The consumer's context: handles rebalances inside `poll`.
/// Where a claimed partition of a repartition topic continues, and each lane's next upstream
/// offset.
pub(super) type LaneStart = (u64, Vec<u64>);

pub(super) struct GroupContext {
    pub(super) start_from: StartFrom,
    /// Offsets of a checkpoint, which override `start_from` for the partitions it holds.
    pub(super) resume: HashMap<(String, i32), u64>,
    /// Partitions whose checkpoint read a topic of their topic's name deleted since (see
    /// `incarnation`): not continued at the checkpoint's offset (found at connect, or at
    /// their assignment).
    pub(super) replaced: Mutex<HashSet<(String, i32)>>,
    /// The topic ids of the checkpoint's offsets that connect found equal to the topics'
    /// (compared again with the ids read at assignment).
    pub(super) verified: HashMap<(String, i32), u64>,
    /// The ids of the topics read at the last assignment of their partitions (a topic
    /// without one is absent).
    pub(super) incarnations: Mutex<HashMap<String, u64>>,
    /// Where newly assigned partitions were set to start (absent: the committed offset).
    pub(super) starts: Mutex<HashMap<(String, i32), Offset>>,
    /// Claimed partitions of a repartition topic: the offset the partition continues at,
    /// and the upstream offset each lane expects.
    pub(super) lane_starts: Mutex<HashMap<(String, i32), LaneStart>>,
    /// In a pool: the topic id each claimed partition's start belongs to (see
    /// `incarnation::label`).
    pub(super) claimed_incarnations: Mutex<HashMap<(String, i32), u64>>,
    /// (topic, partition) → global partition id.
    pub(super) ids: HashMap<(String, i32), usize>,
    /// Partitions assigned before in this process (they resume from committed offsets).
    pub(super) seen: Mutex<HashSet<(String, i32)>>,
    /// Offsets committed last, per global partition, with their notes (see
    /// `weir_engine::reread`).
    pub(super) committed: Mutex<HashMap<usize, CommittedAt>>,
    /// The group refused a commit's note as too large (`offset.metadata.max.bytes`): offsets
    /// are committed without notes from then on.
    pub(super) notes_refused: AtomicBool,
    pub(super) events: Mutex<Vec<GroupEvent>>,
    pub(super) has_events: AtomicBool,
    /// The source's name and the run's gauges, for consumer lag.
    pub(super) source: Arc<str>,
    pub(super) pool: Option<PoolHook>,
    /// The run served now (a pooled reader serves several): its progress, gauges and
    /// hand-over flags.
    pub(super) run: Mutex<ReaderContext>,
    /// Set while the reader waits for room in the workers' queues (a rebalance's hand-over
    /// then waits for the chunks queued before its barrier).
    pub(super) in_backpressure: AtomicBool,
    /// A failure inside a rebalance callback, raised by the next read.
    pub(super) failed: Mutex<Option<ClaimFailed>>,
    /// The group's assignment strategy is cooperative (incremental assign and unassign).
    pub(super) cooperative: bool,
    /// Where this process stopped reading each partition (the offset after the last
    /// message handed over): a partition assigned again (after a lost session) continues
    /// there, not at the group's older committed offset (which would count events twice).
    pub(super) positions: Mutex<HashMap<(String, i32), u64>>,
    /// The consumer is leaving its group: partitions assigned now are not claimed (a
    /// worker that ends must not become the newest owner of partitions it never flushes).
    pub(super) closing: AtomicBool,
    /// Where assigned partitions' messages are forwarded (see [`FetchQueue`]); taken away
    /// before the consumer closes.
    pub(super) fetch_queue: Mutex<Option<Arc<FetchQueue>>>,
    /// The consumer reads only committed transactions (`isolation.level`, librdkafka's
    /// default `read_committed`).
    pub(super) read_committed: bool,
    /// Offsets the topics' retention deleted before they were read, found in a rebalance
    /// and not yet added to the run's counters (the reader adds them to the run it serves).
    pub(super) expired: AtomicU64,
    /// The losses reported already, per partition: (where it was to start, the log start).
    pub(super) expired_reported: Mutex<HashMap<(String, i32), (u64, u64)>>,
    /// When librdkafka last reset a fetch position after an error (an offset out of range:
    /// its log facility `OFFSET` at warning level), if ever: the reader then checks its jumps
    /// of offsets against the log start (see `expired.rs`).
    pub(super) last_reset: Mutex<Option<Instant>>,
    /// A reset position goes to the partition's end (`auto.offset.reset`: `latest`, or a
    /// property saying so), not to its log start.
    pub(super) resets_to_end: bool,
    /// The brokers and the source's properties: for a client of its own that reads high
    /// watermarks (see `expired::high_watermarks`).
    pub(super) client: (String, Vec<(String, String)>),
}

impl GroupContext {
    pub(super) fn run(&self) -> ReaderContext {
        match self.run.lock() {
            Ok(r) => r.clone(),
            Err(r) => r.into_inner().clone(),
        }
    }

    pub(super) fn progress(&self) -> Arc<Progress> {
        self.run().progress
    }

    /// In a pool: ends the current run with a hand-over checkpoint, waiting for its commit
    /// (at most the pool's hand-over timeout); returns whether it was committed.
    pub(super) fn end_run(&self) -> bool {
        let Some(pool) = &self.pool else {
            return false;
        };
        if self.in_backpressure.load(Ordering::SeqCst) {
            // (the reader waits for room without the job's dispatcher: the checkpoint's
            // barrier passes, after the chunks the workers have yet to handle)
            tracing::info!(
                source = %self.source,
                "kafka: partitions move while the workers are behind: the hand-over checkpoint waits for them"
            );
        }
        hand_over(&self.run(), pool.handover_timeout)
    }

    pub(super) fn fail(&self, e: ClaimFailed) {
        tracing::error!(error = %weir_engine::error::chain(&e), "kafka: rebalance failed");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(e);
        }
    }

    /// In a pool: claims the assigned partitions and sets where they start.
    pub(super) fn claim(
        &self,
        pool: &PoolHook,
        tpl: &mut TopicPartitionList,
    ) -> Vec<(String, i32)> {
        let list: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let mut fresh = Vec::new();
        match (pool.claim)(&list) {
            Ok(offsets) => {
                for ((topic, p), o) in list.iter().zip(offsets) {
                    match o {
                        Some(ClaimedStart {
                            offset,
                            lanes,
                            incarnation,
                        }) => {
                            let tp = (topic.clone(), *p);
                            let (o, offset) = if self.created_again(&tp, incarnation, offset) {
                                let at = if self.resets_to_end {
                                    Offset::End
                                } else {
                                    Offset::Beginning
                                };
                                (at, 0)
                            } else {
                                (Offset::Offset(offset as i64), offset)
                            };
                            if let Ok(mut c) = self.claimed_incarnations.lock() {
                                c.insert(tp, incarnation);
                            }
                            let _ = tpl.set_partition_offset(topic, *p, o);
                            if let Ok(mut starts) = self.starts.lock() {
                                starts.insert((topic.clone(), *p), o);
                            }
                            if let Ok(mut l) = self.lane_starts.lock() {
                                l.insert((topic.clone(), *p), (offset, lanes));
                            }
                        }
                        None => fresh.push((topic.clone(), *p)),
                    }
                }
            }
            Err(cause) => self.fail(ClaimFailed {
                partitions: list,
                cause,
            }),
        }
        fresh
    }

    /// Whether claimed partition `tp`'s start `offset` belongs to a topic of its name
    /// deleted since: its checkpoint kept id `was`, and the topic's id read at this
    /// assignment is another (see `incarnation`); if so, it goes into `replaced`, with an
    /// error.
    fn created_again(&self, tp: &(String, i32), was: u64, offset: u64) -> bool {
        let now = self
            .incarnations
            .lock()
            .ok()
            .and_then(|i| i.get(&tp.0).copied());
        if was == 0 || now.is_none_or(|n| n == was) {
            return false;
        }
        super::incarnation::report_replaced(&self.source, tp, Some(offset), self.resets_to_end);
        if let Ok(mut r) = self.replaced.lock() {
            r.insert(tp.clone());
        }
        true
    }

    pub(super) fn push(&self, e: GroupEvent) {
        if let Ok(mut ev) = self.events.lock() {
            ev.push(e);
            self.has_events.store(true, Ordering::Release);
        }
    }

    /// The offsets of `partitions` that are committable and not committed yet, with their
    /// notes (see `weir_engine::reread`); a note that alone changed is sent again at most
    /// every [`NOTE_EVERY`], unless `last` (the run's or the assignment's last commit) or its
    /// floors moved: a window just made durable is in every partition's note at once, so that
    /// a run killed right after does not take a row of it, read again or new, for on time.
    pub(super) fn committable(
        &self,
        partitions: impl Iterator<Item = (String, i32)>,
        last: bool,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let Ok(mut committed) = self.committed.lock() else {
            return tpl;
        };
        let wanted: Vec<((String, i32), usize)> = partitions
            .filter_map(|tp| Some((tp.clone(), *self.ids.get(&tp)?)))
            .collect();
        let ids: Vec<usize> = wanted.iter().map(|(_, id)| *id).collect();
        let points = self.progress().commit_points(&ids);
        let notes = !self.notes_refused.load(Ordering::Relaxed);
        for (((topic, p), id), point) in wanted.into_iter().zip(points) {
            let Some((offset, note)) = point else {
                continue;
            };
            let note = note.filter(|_| notes);
            let floors = note.as_ref().map(|n| n.floors.clone()).unwrap_or_default();
            let note = note.map(|n| self.with_topic_id(&topic, n.encode()));
            let prev = committed.get(&id);
            let same_offset = prev.is_some_and(|c| c.offset == offset);
            let recent = prev.is_some_and(|c| c.at.elapsed() < NOTE_EVERY);
            let same_floors = prev.is_some_and(|c| c.floors == floors);
            if same_offset && !last && recent && same_floors {
                continue;
            }
            if same_offset && prev.is_some_and(|c| c.note == note) {
                continue;
            }
            if tpl
                .add_partition_offset(&topic, p, Offset::Offset(offset as i64))
                .is_err()
            {
                continue;
            }
            if let (Some(note), Some(mut e)) = (&note, tpl.find_partition(&topic, p)) {
                e.set_metadata(note);
            }
            let at = Instant::now();
            let commit = CommittedAt {
                offset,
                note,
                floors,
                at,
            };
            committed.insert(id, commit);
        }
        tpl
    }

    /// A note with the id of its topic (` t=<hex>`), when known, so that a note never applies
    /// to a topic of the same name created since.
    fn with_topic_id(&self, topic: &str, note: String) -> String {
        let id = self
            .incarnations
            .lock()
            .ok()
            .and_then(|i| i.get(topic).copied())
            .filter(|&id| id != 0);
        match id {
            Some(id) => format!("{note} t={id:x}"),
            None => note,
        }
    }

    /// The note of committed `metadata` for `topic`, without its topic id; empty when the id
    /// names another topic than the one read now (deleted and created again since).
    pub(super) fn note_for(&self, topic: &str, metadata: &str) -> String {
        let now = self
            .incarnations
            .lock()
            .ok()
            .and_then(|i| i.get(topic).copied())
            .filter(|&id| id != 0);
        note_of_topic(metadata, now)
    }

    /// Gives the chunks already handed to the workers a moment to reach durable outputs, so
    /// that the next owner of `partitions` does not read again rows whose windows were just
    /// written: waits until their committable offsets stop moving (at most [`SETTLE_MAX`]).
    pub(super) fn settle(&self, partitions: &[(String, i32)]) {
        let ids: Vec<usize> = partitions
            .iter()
            .filter_map(|p| self.ids.get(p).copied())
            .collect();
        let progress = self.progress();
        let offsets =
            || -> Vec<Option<u64>> { ids.iter().map(|&id| progress.committable(id)).collect() };
        let started = Instant::now();
        let mut last = offsets();
        let mut stable_since = Instant::now();
        while started.elapsed() < SETTLE_MAX && stable_since.elapsed() < SETTLE_QUIET {
            std::thread::sleep(Duration::from_millis(50));
            let now = offsets();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
    }

    /// Sets where newly seen partitions start, per `start_from`.
    pub(super) fn set_start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let mut fresh = Vec::new();
        let mut again = Vec::new();
        for e in tpl.elements() {
            let tp = (e.topic().to_string(), e.partition());
            if seen.insert(tp.clone()) {
                fresh.push(tp);
            } else {
                again.push(tp);
            }
        }
        let Ok(mut starts) = self.starts.lock() else {
            return;
        };
        let mut set = |tpl: &mut TopicPartitionList, topic: &str, p: i32, o: Offset| {
            let _ = tpl.set_partition_offset(topic, p, o);
            starts.insert((topic.to_string(), p), o);
        };
        // partitions this process read before continue where it stopped
        if let Ok(positions) = self.positions.lock() {
            for (topic, p) in again {
                if let Some(&o) = positions.get(&(topic.clone(), p)) {
                    tracing::info!(
                        topic,
                        partition = p,
                        offset = o,
                        "kafka: partition assigned again; continuing where this process stopped"
                    );
                    set(tpl, &topic, p, Offset::Offset(o as i64));
                }
            }
        }
        // partitions a checkpoint holds continue where it left them
        let mut replaced = self.replaced.lock().map(|r| r.clone()).unwrap_or_default();
        fresh.retain(|(topic, p)| match self.resume.get(&(topic.clone(), *p)) {
            Some(&o) => {
                let tp = (topic.clone(), *p);
                // (created again since connect compared it)
                let now = self
                    .incarnations
                    .lock()
                    .ok()
                    .and_then(|i| i.get(topic).copied());
                if let (Some(&was), Some(now)) = (self.verified.get(&tp), now) {
                    if was != now {
                        super::incarnation::report_replaced(
                            &self.source,
                            &tp,
                            Some(o),
                            self.resets_to_end,
                        );
                        replaced.insert(tp);
                        return true;
                    }
                }
                set(tpl, topic, *p, Offset::Offset(o as i64));
                false
            }
            None => true,
        });
        if let Ok(mut r) = self.replaced.lock() {
            r.clone_from(&replaced);
        }
        // partitions whose checkpoint read a topic deleted since: where `auto.offset.reset`
        // says (see `incarnation`)
        fresh.retain(|tp| {
            if !replaced.contains(tp) {
                return true;
            }
            let at = if self.resets_to_end {
                Offset::End
            } else {
                Offset::Beginning
            };
            set(tpl, &tp.0, tp.1, at);
            self.forget_note(tp);
            false
        });
        let offset = match self.start_from {
            StartFrom::Committed => return,
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Latest => Offset::End,
            StartFrom::Time(t) => {
                let mut query = TopicPartitionList::new();
                for (topic, p) in &fresh {
                    let _ = query.add_partition_offset(topic, *p, Offset::Offset(t));
                }
                match consumer.offsets_for_times(query, Duration::from_secs(30)) {
                    Ok(found) => {
                        for e in found.elements() {
                            let o = match e.offset() {
                                Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                                _ => Offset::End,
                            };
                            set(tpl, e.topic(), e.partition(), o);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "offsets for start_from time failed; starting from committed offsets")
                    }
                }
                return;
            }
        };
        for (topic, p) in fresh {
            set(tpl, &topic, p, offset);
        }
    }
}

impl GroupContext {
    /// Reads the ids of the topics of `tpl`'s partitions (a topic without one, or when they
    /// cannot be read, has none: its positions are not checked).
    fn read_incarnations(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let elements = tpl.elements();
        let mut topics: Vec<&str> = elements.iter().map(|e| e.topic()).collect();
        topics.sort_unstable();
        topics.dedup();
        // (a consumer in a rebalance has the cluster's metadata: no wait for a controller)
        let found = crate::topic_ids::topic_incarnations(consumer.client(), &topics, super::expired::OFFSETS_TIMEOUT, Duration::ZERO)
            .unwrap_or_else(|e| {
                tracing::warn!(source = %self.source, error = %e, "kafka: cannot read the topics' ids; positions kept from now on cannot tell a topic created again from the one read");
                HashMap::new()
            });
        if let Ok(mut known) = self.incarnations.lock() {
            for t in topics {
                match found.get(t) {
                    Some(&id) => known.insert(t.to_string(), id),
                    None => known.remove(t),
                };
            }
        }
    }

    /// Sends the fetched messages of the partitions of `tpl` to the reader's fetch queue;
    /// a partition that cannot be forwarded delivers on the consumer's queue, which the
    /// reader polls too.
    fn forward_fetched(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let Some(queue) = self.fetch_queue.lock().ok().and_then(|q| q.clone()) else {
            return;
        };
        for e in tpl.elements() {
            if !queue.forward(consumer, e.topic(), e.partition()) {
                tracing::warn!(
                    source = %self.source,
                    topic = e.topic(),
                    partition = e.partition(),
                    "kafka: cannot forward the partition's messages to the fetch queue; they are \
                     polled one at a time"
                );
            }
        }
    }
}

impl ClientContext for GroupContext {
    /// librdkafka's log, to `tracing` as rdkafka does; a reset of a fetch position after an
    /// error is noted (by its facility and level, not its text).
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if fac == "OFFSET" && matches!(level, L::Warning) {
            if let Ok(mut at) = self.last_reset.lock() {
                *at = Some(Instant::now());
            }
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
            L::Notice | L::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            L::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}"),
        }
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag of each
    /// partition this process fetches: the end a consumer can read (the last stable offset
    /// under `read_committed`, librdkafka's default: an open transaction's records are not
    /// readable yet) minus the next offset to read. Not librdkafka's `consumer_lag`, which
    /// counts from the committed offset (weir commits at checkpoints).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let stats = self.run().stats;
        let Ok(mut lag) = stats.consumer_lag.lock() else {
            return;
        };
        for (topic, t) in &statistics.topics {
            for (p, s) in &t.partitions {
                let key = (self.source.to_string(), format!("{topic}/{p}"));
                let end = if self.read_committed && s.ls_offset >= 0 {
                    s.ls_offset
                } else {
                    s.hi_offset
                };
                if *p >= 0 && s.fetch_state == "active" && end >= 0 && s.app_offset >= 0 {
                    lag.insert(key, (end - s.app_offset).max(0));
                } else if *p >= 0 && s.fetch_state == "none" {
                    lag.remove(&key);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let list = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        // from the configuration, not `rebalance_protocol()`: librdkafka answers that with a
        // request to its main thread, which can hang forever (or answer "none") once the
        // consumer is closing (confluentinc/librdkafka#4041)
        let cooperative = self.cooperative;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // in a pool, an empty assignment (a cooperative rebalance that moved other
                // partitions) changes nothing
                let closing = self.closing.load(Ordering::SeqCst);
                // (what an earlier assignment started from no longer holds, closing or not)
                self.forget_starts(tpl);
                if !closing && tpl.count() > 0 {
                    self.read_incarnations(consumer, tpl);
                }
                if let Some(pool) = self.pool.as_ref().filter(|_| tpl.count() > 0 && !closing) {
                    // the run ends first: the next one restores the new partitions' state
                    self.end_run();
                    let fresh = self.claim(pool, tpl);
                    // partitions without state start as `start_from` says
                    let mut rest = TopicPartitionList::new();
                    for (t, p) in &fresh {
                        rest.add_partition(t, *p);
                    }
                    if let Ok(mut seen) = self.seen.lock() {
                        for (t, p) in &fresh {
                            seen.remove(&(t.clone(), *p));
                        }
                    }
                    self.set_start_offsets(consumer, &mut rest);
                    for e in rest.elements() {
                        let _ = tpl.set_partition_offset(e.topic(), e.partition(), e.offset());
                    }
                } else if self.pool.is_none() {
                    self.set_start_offsets(consumer, tpl);
                }
                if !closing {
                    self.skip_expired(consumer, tpl);
                }
                // before the assignment, which starts fetching at once
                self.forward_fetched(consumer, tpl);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "kafka: assigning partitions failed");
                }
                tracing::info!(partitions = ?list(tpl), "kafka: partitions assigned");
                self.push(GroupEvent::Assigned(list(tpl)));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = list(tpl);
                let mut handed_over = false;
                if self.pool.is_some() {
                    // the run checkpoints and commits its state before the partitions go
                    if !revoked.is_empty() {
                        handed_over = self.end_run();
                        if let Some(pool) = &self.pool {
                            (pool.releasing)();
                        }
                    }
                } else {
                    self.settle(&revoked);
                    let offsets = self.committable(revoked.iter().cloned(), true);
                    if offsets.count() > 0 {
                        if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                            tracing::warn!(error = %e, "kafka: commit before giving partitions up failed");
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "kafka: releasing partitions failed");
                }
                if let Some(pool) = &self.pool {
                    (pool.released)(&revoked, handed_over);
                }
                tracing::info!(partitions = ?revoked, "kafka: partitions revoked");
                self.push(GroupEvent::Revoked(revoked));
            }
            other => {
                tracing::error!(error = ?other, "kafka: rebalance failed");
                let _ = consumer.unassign();
            }
        }
    }

    fn pre_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {}

    /// An asynchronous commit that failed (a rebalance moved the group's generation): its
    /// offsets are committed again by the next commit, even for a partition that got no
    /// message since (`committable` skips what it believes committed).
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        let too_large = |e: &rdkafka::error::KafkaError| {
            e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::OffsetMetadataTooLarge)
        };
        let refused = result.as_ref().err().is_some_and(too_large)
            || offsets
                .elements()
                .iter()
                .any(|e| e.error().as_ref().err().is_some_and(too_large));
        if refused && !self.notes_refused.swap(true, Ordering::Relaxed) {
            // (a partition with nothing read is then not committed again at its start: that
            // would only erase the note it started from)
            self.progress().refuse_notes();
            tracing::warn!(source = %self.source, "kafka: the group refuses offset commit metadata this large (`offset.metadata.max.bytes`); offsets are committed without notes, and a restart may emit again a window with only the rows it reads again");
        }
        if result.is_ok() && !refused {
            return;
        }
        if let Ok(mut committed) = self.committed.lock() {
            for e in offsets.elements() {
                if let Some(id) = self.ids.get(&(e.topic().to_string(), e.partition())) {
                    committed.remove(id);
                }
            }
        }
    }
}

/// The note of committed `metadata` without its topic id (` t=<hex>`); empty when that id
/// is not `now`, the id of the topic read now (when known).
fn note_of_topic(metadata: &str, now: Option<u64>) -> String {
    let Some((note, id)) = metadata.rsplit_once(" t=") else {
        return metadata.to_string();
    };
    match (u64::from_str_radix(id, 16), now) {
        (Ok(was), Some(now)) if was != now => String::new(),
        (Ok(_), _) => note.to_string(),
        (Err(_), _) => String::new(),
    }
}

#[cfg(test)]
#[test]
fn a_note_of_a_topic_created_again_since_is_no_note() {
    assert_eq!(
        note_of_topic("weir.reread.v1 r=1 0a=5 . t=ff", Some(255)),
        "weir.reread.v1 r=1 0a=5 ."
    );
    assert_eq!(
        note_of_topic("weir.reread.v1 r=1 0a=5 . t=ff", None),
        "weir.reread.v1 r=1 0a=5 ."
    );
    assert_eq!(
        note_of_topic("weir.reread.v1 r=1 0a=5 . t=ff", Some(254)),
        ""
    );
    assert_eq!(
        note_of_topic("weir.reread.v1 r=1 0a=5 . t=zz", Some(254)),
        ""
    );
    assert_eq!(
        note_of_topic("weir.reread.v1 r=1 0a=5 .", Some(1)),
        "weir.reread.v1 r=1 0a=5 ."
    );
}

/// How often a partition's commit is sent again when only its note changed (see
/// `weir_engine::reread`).
const NOTE_EVERY: Duration = Duration::from_secs(10);

/// What was committed last for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CommittedAt {
    offset: u64,
    note: Option<String>,
    /// The note's floors (per operator key: see `weir_engine::reread`).
    floors: Vec<(u64, i64)>,
    at: Instant,
}

/// How long librdkafka waits before fetching again for a partition whose prefetch queue is
/// full (see [`group_consumer_config`]); a source's `properties` may set it otherwise.
pub(crate) const FETCH_QUEUE_BACKOFF_MS: &str = "20";

/// The settings of a consumer of `config`'s topics in group `group` (in a worker pool when
/// `pooled`); the source's `properties` last, so that they override weir's.
pub(crate) fn group_consumer_config(
    config: &KafkaSourceConfig,
    group: &str,
    pooled: bool,
) -> rdkafka::ClientConfig {
    let mut cfg = client_config(&config.brokers, &[]);
    // librdkafka's warnings at least, which tell the reader of position resets (see
    // `expired.rs`): rdkafka sets the level from the `log` crate's, at "error" when nothing
    // installed a logger (the `weir` binary installs one, at its log level)
    if (cfg.log_level as i32) < (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
        cfg.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    }
    cfg.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            if config.start_from == StartFrom::Latest {
                "latest"
            } else {
                "earliest"
            },
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "16777216")
        // librdkafka (2.4 and later) waits `fetch.queue.backoff.ms` (default 1 s) before it
        // fetches again for a partition whose local queue went over `queued.min.messages` or
        // `queued.max.messages.kbytes`. weir drains that queue in bursts (a reader blocked
        // for a moment on a busy worker), so the default left the consumer idle for a second
        // at a time: 0.2x the rate of a bare consumer on a backlog (`benches/kafka_mock.sh`).
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        // a pool moves a dead worker's partitions after this (Apache Kafka brokers accept
        // 6 s and more by default: `group.min.session.timeout.ms`)
        .set("session.timeout.ms", if pooled { "6000" } else { "10000" })
        // a pool's members hear of a rebalance at their next heartbeat
        .set("heartbeat.interval.ms", if pooled { "500" } else { "1000" })
        // consumer lag for `/metrics`
        .set("statistics.interval.ms", "5000");
    for (k, v) in &config.properties {
        cfg.set(k, v);
    }
    cfg
}
