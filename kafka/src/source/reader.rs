//! The reader: polls the consumer, gathers each partition's messages into chunks, commits
//! offsets once their rows are durable.

use super::*;

/// One Kafka partition this reader may be assigned.
pub(super) struct PartitionState {
    pub(super) topic: Arc<str>,
    pub(super) number: i32,
    /// Its chunk stream (and outside a repartition topic, its buffer).
    pub(super) lane: Lane,
    /// A repartition topic's partition while assigned: its upstream partitions (see
    /// [`Upstream`]).
    pub(super) up: Option<Box<Lanes>>,
    pub(super) assigned: bool,
    /// The offset after the last message read (repeats included).
    pub(super) read_next: Option<u64>,
    /// The offset after the last message handed over.
    pub(super) next_offset: Option<u64>,
    /// With `until_caught_up`: the end offset seen at assignment.
    pub(super) end_at: Option<u64>,
    pub(super) ended: bool,
    /// With `until_caught_up`: the end offset the partition had when the reader connected.
    pub(super) target: Option<u64>,
    /// In a pool: the group's committed offset reached `target` (another worker read it).
    pub(super) read_elsewhere: bool,
    /// Where to store the offset after the last message read (progress reports).
    pub(super) read_offset: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// A skipped message of a repartition topic was logged since the partition's assignment.
    pub(super) warned_foreign: bool,
    /// A message of an older generation than its lane's was logged since the assignment.
    pub(super) warned_older: bool,
    /// The offset expected next since the partition's assignment: a later one is a jump.
    pub(super) expected: Option<u64>,
    /// Jumps of offsets between two messages read (`from..to` skipped), not checked yet
    /// against the log start (see `KafkaReader::check_jumps`).
    pub(super) jumps: Vec<(u64, u64)>,
    /// When the jumps were last checked.
    pub(super) jumps_checked: Instant,
    /// The id of its topic since its assignment (see `crate::topic_ids`), kept with its
    /// positions; 0: unknown (a broker without ids, or offsets that went back since).
    pub(super) incarnation: u64,
}

/// The chunk stream of a partition.
pub(super) struct Lane {
    pub(super) info: Arc<PartitionInfo>,
    pub(super) seq: u64,
    pub(super) buffer: MessageBuffer,
    pub(super) last_message: Instant,
}

impl Lane {
    pub(super) fn new(info: PartitionInfo) -> Self {
        Lane {
            info: Arc::new(info),
            seq: 0,
            buffer: MessageBuffer::default(),
            last_message: Instant::now(),
        }
    }
}

/// Reads a Kafka source for a job.
pub struct KafkaReader {
    pub(super) source: usize,
    pub(super) name: Arc<str>,
    pub(super) config: KafkaSourceConfig,
    /// Index in `partitions` of each topic's first partition.
    pub(super) topic_base: Vec<usize>,
    /// First global partition id of the source.
    pub(super) first_id: usize,
    pub(super) partitions: Vec<PartitionState>,
    pub(super) consumer: Option<BaseConsumer<GroupContext>>,
    /// Where the assigned partitions' messages arrive (none: on the consumer's queue).
    pub(super) fetch: Option<Arc<FetchQueue>>,
    /// Messages read one at a time from the consumer's queue (partitions whose messages
    /// could not be forwarded to `fetch`).
    pub(super) read_one_at_a_time: u64,
    pub(super) ready: VecDeque<Chunk>,
    /// Partitions given up (`forget`) since the job last took a chunk: a chunk of theirs that
    /// the job hands back was read before (see `unread`), even if they were assigned again.
    pub(super) forgotten: HashSet<usize>,
    pub(super) last_commit: Instant,
    /// Fetching is paused for backpressure.
    pub(super) paused: bool,
    /// With `until_caught_up`: the wait for partitions this process is not assigned.
    pub(super) wait: CatchUpWait,
    /// In a pool: when the group's committed offsets were last read.
    pub(super) checked_elsewhere: Option<Instant>,
    /// In a pool reading until caught up: the group's committed offsets, read off this
    /// thread.
    pub(super) committed: Option<Arc<CommittedWatch>>,
    /// When the reader last said the watch cannot start (it says so once a minute).
    pub(super) committed_warned: Option<Instant>,
    /// When the group last assigned or revoked partitions (or the reader joined it).
    pub(super) group_moved: Instant,
    /// The group assigned this reader partitions (maybe none) at least once.
    pub(super) joined: bool,
    /// In a pool: the run served last ended to flush its partitions' last windows before
    /// waiting for the other partitions (see `flush_before_waiting`).
    pub(super) flushed_to_wait: bool,
    /// When this worker last checked whether its own partitions are finished.
    pub(super) own_checked: Option<Instant>,
    /// (topic, partition) → offset to continue from, from a checkpoint.
    pub(super) resume: HashMap<(String, i32), u64>,
    /// The topic ids the checkpoint's positions belong to (see `crate::topic_ids`).
    pub(super) resume_incarnations: HashMap<(String, i32), u64>,
    /// Partitions whose checkpoint read a topic deleted since (see `incarnation`).
    pub(super) replaced: HashSet<(String, i32)>,
    /// The checkpoint's topic ids found equal to the topics' at connect.
    pub(super) verified: HashMap<(String, i32), u64>,
    /// When the ids of the topics read were last compared with those the positions carry.
    pub(super) incarnations_checked: Instant,
    /// In a pool: the hand-over flag of the run served now (a new one means a new run).
    pub(super) run: Option<Arc<AtomicBool>>,
    /// When the lanes of repartition topic partitions were last checked for silence.
    pub(super) lanes_scanned: Instant,
    /// When the current poll round last read the clock (see `poll_round`).
    pub(super) now: Instant,
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.close();
    }
}

impl KafkaReader {
    /// A reader of source `source` (named `name`) whose partitions are numbered globally
    /// from `first_partition`, topic by topic.
    pub fn new(
        source: usize,
        name: &str,
        first_partition: usize,
        config: KafkaSourceConfig,
        partitions: &KafkaPartitions,
    ) -> Self {
        let name: Arc<str> = name.into();
        let mut topic_base = Vec::new();
        let mut states: Vec<PartitionState> = Vec::new();
        for (t, &count) in partitions.counts.iter().enumerate() {
            topic_base.push(states.len());
            let topic: Arc<str> = config.topics[t].as_str().into();
            for p in 0..count {
                let lane = Lane::new(PartitionInfo {
                    source: name.clone(),
                    id: first_partition + states.len(),
                    state_id: first_partition + states.len(),
                    number: p as u32,
                    topic: Some(topic.clone()),
                    file: None,
                });
                states.push(PartitionState {
                    topic: topic.clone(),
                    number: p as i32,
                    lane,
                    up: None,
                    assigned: false,
                    read_next: None,
                    next_offset: None,
                    end_at: None,
                    ended: false,
                    target: None,
                    read_elsewhere: false,
                    read_offset: config
                        .read_offsets
                        .as_ref()
                        .and_then(|r| r.0.get(&(topic.to_string(), p as i32)).cloned()),
                    warned_foreign: false,
                    warned_older: false,
                    expected: None,
                    jumps: Vec::new(),
                    jumps_checked: Instant::now(),
                    incarnation: 0,
                });
            }
        }
        let wait = CatchUpWait::new(config.caught_up_timeout);
        KafkaReader {
            source,
            name,
            config,
            topic_base,
            first_id: first_partition,
            partitions: states,
            consumer: None,
            fetch: None,
            read_one_at_a_time: 0,
            ready: VecDeque::new(),
            forgotten: HashSet::new(),
            last_commit: Instant::now(),
            paused: false,
            wait,
            checked_elsewhere: None,
            committed: None,
            committed_warned: None,
            group_moved: Instant::now(),
            joined: false,
            flushed_to_wait: false,
            own_checked: None,
            resume: HashMap::new(),
            resume_incarnations: HashMap::new(),
            replaced: HashSet::new(),
            verified: HashMap::new(),
            incarnations_checked: Instant::now(),
            run: None,
            lanes_scanned: Instant::now(),
            now: Instant::now(),
        }
    }

    /// In a pool: starts serving the run of `ctx` (a reader outlives the runs of its worker).
    /// Chunks not handed out yet are numbered again from 0 per partition, as the new run's
    /// clocks expect, and the partitions' idleness is set in its clocks.
    pub(super) fn join_run(&mut self, ctx: &ReaderContext) {
        if self
            .run
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &ctx.handover))
        {
            return;
        }
        self.run = Some(ctx.handover.clone());
        self.flushed_to_wait = false;
        self.own_checked = None;
        if let Some(consumer) = &self.consumer {
            if let Ok(mut run) = consumer.context().run.lock() {
                *run = ctx.clone();
            }
        }
        for s in self.partitions.iter_mut() {
            s.lane.seq = 0;
        }
        for chunk in self.ready.iter_mut() {
            let lane = &mut self.partitions[chunk.partition.id - self.first_id].lane;
            chunk.seq = lane.seq;
            lane.seq += 1;
        }
        // A partition that ended (read to its end offset) in an earlier run ends this one's
        // too: its restored clock is not at the end any more.
        for s in self.partitions.iter_mut() {
            let (true, true, Some(next)) = (s.assigned, s.ended, s.next_offset) else {
                continue;
            };
            let id = s.lane.info.id;
            let pending_end = self
                .ready
                .iter()
                .any(|c| c.partition.id == id && matches!(c.data, ChunkData::End));
            if !pending_end {
                ctx.clocks.partition(id).set_resumable_end();
                self.ready.push_back(lane_end(self.source, s, next));
            }
        }
        for s in &self.partitions {
            let clock = ctx.clocks.partition(s.lane.info.id);
            clock.set_idle(!s.assigned);
            clock.set_read_here(s.assigned);
            clock.set_resumable_end();
            // then the lanes this reader knows to be idle
            if let Some(up) = s.up.as_ref().filter(|_| s.assigned) {
                up.set_up(clock);
            }
            if s.assigned {
                ctx.progress.track(s.lane.info.id);
            }
        }
        self.report_assigned(ctx);
    }

    /// Drops what was read of a partition given up in a pool: its next owner reads it again
    /// from the hand-over checkpoint.
    pub(super) fn forget(&mut self, l: usize) {
        let id = self.first_id + l;
        self.ready.retain(|c| c.partition.id != id);
        self.forgotten.insert(id);
        let s = &mut self.partitions[l];
        s.lane.buffer = MessageBuffer::default();
        s.up = None;
        s.read_next = None;
        s.next_offset = None;
        s.end_at = None;
        s.ended = false;
        s.warned_foreign = false;
        s.warned_older = false;
        // (not reported: the next owner reads from the hand-over checkpoint, and finds a
        // loss there when it starts)
        s.expected = None;
        s.jumps.clear();
    }

    /// In a pool, reading until caught up: whether the run served last ended only to flush
    /// the last windows of its partitions; the worker then waits for the others in a new run.
    pub fn flushed_to_wait(&self) -> bool {
        self.flushed_to_wait
    }

    /// In a pool, reading until caught up: the offset each assigned partition read to its
    /// end was read to, by pool partition key (`source/topic/partition`), recorded with it as
    /// finished: a later run, whose end is further, does not take it for finished (see
    /// `pending_internal`).
    pub fn finished_ends(&self) -> std::collections::BTreeMap<String, u64> {
        self.partitions
            .iter()
            .filter(|s| s.assigned && s.ended)
            .filter_map(|s| {
                let key = format!("{}/{}/{}", self.name, s.topic, s.number);
                Some((key, s.next_offset?))
            })
            .collect()
    }

    /// In a pool: whether the run served last ended with a hand-over (a rebalance).
    pub fn handed_over(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.load(Ordering::SeqCst))
    }

    /// Leaves the consumer group: gives its partitions back while the consumer still serves
    /// rebalances normally, then closes the consumer, waiting at most [`CLOSE_TIMEOUT`]
    /// (a broker that does not answer cannot hold the worker: the close then finishes in the
    /// background). Also done when the reader is dropped.
    pub fn close(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            consumer.context().closing.store(true, Ordering::SeqCst);
            // librdkafka's rule: the application's queues go first
            if let Ok(mut q) = consumer.context().fetch_queue.lock() {
                q.take();
            }
            self.fetch = None;
            close_consumer(consumer, &self.name, CLOSE_TIMEOUT);
        }
    }

    /// Continues the partitions a checkpoint holds from its offsets, whatever `start_from`
    /// and the group's committed offsets say, unless their topic is another one now (its id
    /// differs from the checkpoint's: see `GroupContext::set_start_offsets`).
    /// `resume(topic, partition)` gives the position.
    pub fn with_resume(mut self, resume: impl Fn(&str, i32) -> Option<Resume>) -> Self {
        for s in &self.partitions {
            if let Some(r) = resume(&s.topic, s.number) {
                let tp = (s.topic.to_string(), s.number);
                self.resume.insert(tp.clone(), r.next_offset);
                if r.incarnation != 0 {
                    self.resume_incarnations.insert(tp, r.incarnation);
                }
            }
        }
        self
    }

    /// The index of `topic`'s `partition` among the partitions this reader knows (those the
    /// topics had when the run started); `None` for another topic, or a partition added since.
    pub(super) fn local(&self, topic: &str, partition: i32) -> Option<usize> {
        let t = self.config.topics.iter().position(|x| x == topic)?;
        let end = self
            .topic_base
            .get(t + 1)
            .copied()
            .unwrap_or(self.partitions.len());
        let local = self.topic_base[t] + usize::try_from(partition).ok()?;
        (local < end).then_some(local)
    }

    /// The partition of message `m`; with a single topic without reading the topic's name
    /// (a C string, measured and checked as UTF-8 on every call).
    fn local_of<M: Message>(&self, m: &M) -> Option<usize> {
        if self.config.topics.len() != 1 {
            return self.local(m.topic(), m.partition());
        }
        let local = self.topic_base[0] + usize::try_from(m.partition()).ok()?;
        (local < self.partitions.len()).then_some(local)
    }

    pub(super) fn err(&self, what: &str, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::source_caused(
            &self.name,
            format!("kafka ({}): {what}", self.config.brokers),
            e,
        )
    }

    pub(super) fn connect(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        self.check_incarnations();
        let mut ids = HashMap::new();
        for s in &self.partitions {
            ids.insert((s.topic.to_string(), s.number), s.lane.info.id);
        }
        let context = GroupContext {
            start_from: self.config.start_from,
            resume: self.resume.clone(),
            replaced: Mutex::new(self.replaced.clone()),
            verified: self.verified.clone(),
            incarnations: Mutex::new(HashMap::new()),
            starts: Mutex::new(HashMap::new()),
            lane_starts: Mutex::new(HashMap::new()),
            claimed_incarnations: Mutex::new(HashMap::new()),
            ids,
            seen: Mutex::new(HashSet::new()),
            committed: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            has_events: AtomicBool::new(false),
            notes_refused: AtomicBool::new(false),
            source: self.name.clone(),
            positions: Mutex::new(HashMap::new()),
            pool: self.config.pool.clone(),
            run: Mutex::new(ctx.clone()),
            in_backpressure: AtomicBool::new(false),
            failed: Mutex::new(None),
            cooperative: false,
            closing: AtomicBool::new(false),
            fetch_queue: Mutex::new(None),
            // the last setting counts, as librdkafka takes them in order
            read_committed: !self
                .config
                .properties
                .iter()
                .rev()
                .find(|(k, _)| k == "isolation.level")
                .is_some_and(|(_, v)| v.eq_ignore_ascii_case("read_uncommitted")),
            expired: AtomicU64::new(0),
            expired_reported: Mutex::new(HashMap::new()),
            last_reset: Mutex::new(None),
            resets_to_end: expired::resets_to_end(&self.config),
            client: (self.config.brokers.clone(), self.config.properties.clone()),
        };
        let cfg = group_consumer_config(
            &self.config,
            &self.config.group_id,
            self.config.pool.is_some(),
        );
        let context = GroupContext {
            cooperative: is_cooperative(&cfg),
            ..context
        };
        let consumer: BaseConsumer<GroupContext> = cfg
            .create_with_context(context)
            .map_err(|e| self.err("cannot create a consumer", e))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.err("cannot subscribe", e))?;
        // before the first poll, which serves the first assignment
        self.fetch = FetchQueue::new(&consumer).map(Arc::new);
        if let Ok(mut q) = consumer.context().fetch_queue.lock() {
            q.clone_from(&self.fetch);
        }
        // Every partition is idle until it is assigned to this process, unless this process
        // reads every partition (below).
        let idle = !self.reads_every_partition();
        for s in &self.partitions {
            let clock = ctx.clocks.partition(s.lane.info.id);
            clock.set_idle(idle);
            clock.set_read_here(!idle);
        }
        if let Some(src) = ctx.stats.sources.get(self.source) {
            src.assigned.store(-1, Ordering::Relaxed);
        }
        self.consumer = Some(consumer);
        if self.config.until_caught_up {
            self.read_targets(ctx)?;
        }
        Ok(())
    }

    pub(super) fn commit(&mut self, mode: CommitMode) -> Result<(), EngineError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        // A repartition topic's lanes continue from the pool's checkpoints, never from these
        // offsets (its reader starts a partition without a checkpoint at its beginning): the
        // offset a complete checkpoint continues from (after its last hand-over) is committed
        // for the stage's backpressure and the group's lag as Kafka's tools show it. They are
        // committed again each time, so that a failed asynchronous commit heals (the stage
        // would otherwise wait on it).
        if self.config.upstream.is_some() {
            if let Ok(mut c) = consumer.context().committed.lock() {
                c.clear();
            }
        }
        let assigned = self
            .partitions
            .iter()
            .filter(|s| s.assigned)
            .map(|s| (s.topic.to_string(), s.number));
        // a synchronous commit is the run's last: its notes are the newest
        let last = matches!(mode, CommitMode::Sync);
        let tpl = consumer.context().committable(assigned, last);
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                tracing::warn!(source = %self.name, error = %e, "kafka: offset commit failed; will retry");
                if let Ok(mut c) = consumer.context().committed.lock() {
                    c.clear();
                }
            }
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Reads what arrived, waiting a moment when nothing did: the consumer's queue first
    /// (rebalances, errors, and the messages of a partition that could not be forwarded),
    /// then the fetch queue, until a chunk is ready. Whether anything was read.
    pub(super) fn poll_round(&mut self, ctx: &ReaderContext) -> Result<bool, EngineError> {
        let Some(fetch) = self.fetch.clone() else {
            return self.poll_consumer(ctx, POLL_WAIT);
        };
        let mut polled = self.poll_consumer(ctx, Duration::ZERO)?;
        // rdkafka's `poll` serves one event per call
        for _ in 0..EVENTS_PER_ROUND {
            if !fetch.events_waiting() {
                break;
            }
            polled |= self.poll_consumer(ctx, Duration::ZERO)?;
        }
        // Assignments must be known before their messages are placed (the rebalance
        // callbacks ran in the polls above, on this thread).
        self.handle_group_events(ctx)?;
        let wait = if polled || !self.ready.is_empty() {
            Duration::ZERO
        } else {
            POLL_WAIT
        };
        let mut failed = None;
        let mut got = 0usize;
        let served = fetch.serve(wait, |msg| {
            // the time messages were read, to a few milliseconds (a clock read per message
            // was a visible share of the reader's time)
            if got.is_multiple_of(1024) {
                self.now = Instant::now();
            }
            got += 1;
            match self.place_fetched(msg, ctx) {
                Err(e) => {
                    failed = Some(e);
                    Next::Stop
                }
                Ok(()) if !self.ready.is_empty() || got >= CHUNK_MESSAGES => Next::Stop,
                Ok(()) => Next::More,
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(polled || served > 0),
        }
    }

    /// Places a message of the fetch queue (or reports the error in its place).
    fn place_fetched(
        &mut self,
        msg: Result<fetch_queue::RawMessage<'_>, RdError>,
        ctx: &ReaderContext,
    ) -> Result<(), EngineError> {
        let msg = match msg {
            Ok(m) => m,
            Err(RdError::PartitionEOF(_)) => return Ok(()),
            Err(e) if is_fatal(&e) => return Err(self.err("consumer failed", e)),
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "kafka: consumer error (librdkafka retries)");
                return Ok(());
            }
        };
        self.place(&msg, ctx, self.now);
        Ok(())
    }

    /// Polls the consumer's queue until a chunk is ready or nothing arrives, waiting at most
    /// `first_wait` for the first message or event.
    fn poll_consumer(
        &mut self,
        ctx: &ReaderContext,
        first_wait: Duration,
    ) -> Result<bool, EngineError> {
        let mut got = 0usize;
        loop {
            let timeout = if got > 0 { Duration::ZERO } else { first_wait };
            let consumer = self.consumer.as_ref().expect("connected");
            let polled = consumer.poll(timeout);
            // one clock read per few messages, not one per message (a visible share of the
            // source thread's time): `last_message` only needs to be right to a millisecond
            if got.is_multiple_of(64) {
                self.now = Instant::now();
            }
            let msg = match polled {
                None => break,
                Some(Err(RdError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    if is_fatal(&e) {
                        return Err(self.err("consumer failed", e));
                    }
                    tracing::warn!(source = %self.name, error = %e, "kafka: consumer error (librdkafka retries)");
                    break;
                }
                Some(Ok(m)) => m,
            };
            if consumer.context().has_events.load(Ordering::Acquire) {
                // Assignments must be known before their messages are placed.
                let detached = msg.detach();
                drop(msg);
                self.handle_group_events(ctx)?;
                self.place(&detached, ctx, Instant::now());
            } else {
                // not `place`: the message borrows the consumer, a field of the reader
                let Some(l) = self.local_of(&msg) else {
                    continue;
                };
                if let Some(end) = end_reached(&self.partitions[l], msg.offset()) {
                    drop(msg);
                    self.end_partition(l, end, ctx);
                    continue;
                }
                let placed = place_message(
                    &mut self.partitions[l],
                    &msg,
                    (&self.config, &self.name),
                    ctx.stats.sources.get(self.source),
                    (ctx, self.now),
                );
                drop(msg);
                if let Some(offset) = placed {
                    self.after_message(l, offset, ctx);
                }
            }
            got += 1;
            self.read_one_at_a_time += 1;
            if !self.ready.is_empty() || got >= CHUNK_MESSAGES {
                break;
            }
        }
        Ok(got > 0)
    }

    /// Places a message that borrows nothing of the reader, at time `now`.
    pub(super) fn place<M: Message>(&mut self, m: &M, ctx: &ReaderContext, now: Instant) {
        if let Some(l) = self.local_of(m) {
            if let Some(end) = end_reached(&self.partitions[l], m.offset()) {
                self.end_partition(l, end, ctx);
                return;
            }
            let placed = place_message(
                &mut self.partitions[l],
                m,
                (&self.config, &self.name),
                ctx.stats.sources.get(self.source),
                (ctx, now),
            );
            if let Some(offset) = placed {
                self.after_message(l, offset, ctx);
            }
        }
    }

    pub(super) fn after_message(&mut self, l: usize, offset: u64, ctx: &ReaderContext) {
        // (at most every `JUMPS_CHECK_EVERY`: a compacted topic jumps at almost every message)
        let s = &self.partitions[l];
        if !s.jumps.is_empty()
            && (s.jumps.len() >= MAX_JUMPS_UNCHECKED
                || self.now.saturating_duration_since(s.jumps_checked) >= JUMPS_CHECK_EVERY)
        {
            self.check_jumps(l);
        }
        let s = &mut self.partitions[l];
        if let Some(r) = &s.read_offset {
            r.store(offset + 1, Ordering::Relaxed);
        }
        let caught_up = s.end_at.is_some_and(|end| offset + 1 >= end);
        if caught_up {
            self.end_partition(l, offset + 1, ctx);
        } else if s
            .up
            .as_ref()
            .map_or(s.lane.buffer.is_full(), |up| up.is_full())
        {
            self.hand_over(l);
        }
    }

    /// After a quiet poll: hands over old buffers, marks idle partitions, ends caught-up ones.
    pub(super) fn housekeeping(
        &mut self,
        ctx: &ReaderContext,
        quiet: bool,
    ) -> Result<(), EngineError> {
        let now = Instant::now();
        let scan_lanes = now - self.lanes_scanned >= LANE_IDLE_SCAN;
        if scan_lanes {
            self.lanes_scanned = now;
        }
        if now.saturating_duration_since(self.incarnations_checked)
            >= incarnation::INCARNATION_CHECK_EVERY
        {
            self.incarnations_checked = now;
            self.check_running_incarnations();
        }
        for l in 0..self.partitions.len() {
            if !self.partitions[l].jumps.is_empty()
                && now.saturating_duration_since(self.partitions[l].jumps_checked)
                    >= JUMPS_CHECK_EVERY
            {
                self.check_jumps(l);
            }
            let s = &self.partitions[l];
            let since = s.up.as_ref().map_or(s.lane.buffer.since(), |up| up.since);
            if since.is_some_and(|t| quiet || now - t >= CHUNK_AGE) {
                self.hand_over(l);
            }
            let s = &self.partitions[l];
            // Idle: silent for `idle_timeout` while fetching (a partition paused for
            // backpressure is not silent) and with nothing left to read as far as the
            // consumer's statistics know (a partition behind is slow, not idle: its rows
            // would turn late).
            if let (Some(idle), false) = (self.config.idle_timeout, self.paused) {
                let silent = now - s.lane.last_message >= idle;
                // lanes of a partition that delivers may be silent: scanned once per
                // `LANE_IDLE_SCAN` at most
                let scan = silent || (s.up.is_some() && scan_lanes);
                if s.assigned && !s.ended && scan && !behind(ctx, &self.name, s) {
                    let clock = ctx.clocks.partition(s.lane.info.id);
                    match self.partitions[l].up.as_mut() {
                        Some(up) => up.mark_idle(now, idle, clock),
                        None => clock.set_idle(true),
                    }
                }
            }
        }
        if quiet && self.config.until_caught_up {
            let positions = self
                .consumer
                .as_ref()
                .expect("connected")
                .position()
                .map_err(|e| self.err("cannot read positions", e))?;
            for e in positions.elements() {
                let Some(l) = self.local(e.topic(), e.partition()) else {
                    continue;
                };
                let s = &self.partitions[l];
                if let (Offset::Offset(pos), Some(end), true, false) =
                    (e.offset(), s.end_at, s.assigned, s.ended)
                {
                    if pos >= 0 && pos as u64 >= end {
                        self.end_partition(l, pos as u64, ctx);
                    }
                }
            }
        }
        Ok(())
    }

    /// Pauses (or resumes) fetching of every assigned partition that has not ended.
    pub(super) fn set_paused(&mut self, paused: bool) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for s in self.partitions.iter().filter(|s| s.assigned && !s.ended) {
            tpl.add_partition(&s.topic, s.number);
        }
        let result = if paused {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::warn!(source = %self.name, error = %e, "kafka: pause/resume failed");
        }
        self.paused = paused;
        if !paused {
            // the pause was weir's, not the partitions' silence
            let now = Instant::now();
            for s in self.partitions.iter_mut() {
                s.lane.last_message = now;
                if let Some(up) = s.up.as_mut() {
                    up.touch(now);
                }
            }
        }
    }
}

impl PartitionReader for KafkaReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        if self.consumer.is_none() {
            self.connect(ctx)?;
        }
        // (the chunk taken before is in a worker's queue: none is held any more)
        self.forgotten.clear();
        let pooled = self.config.pool.is_some();
        if pooled {
            self.join_run(ctx);
        }
        loop {
            if pooled {
                if let Some(e) = self
                    .consumer
                    .as_ref()
                    .and_then(|c| c.context().failed.lock().ok()?.take())
                {
                    return Err(self.err("worker pool", e));
                }
                // a hand-over (or a stop) ends the run at once: what was read stays here
                if ctx.stopping() || ctx.handover.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
            if let Some(c) = self.ready.pop_front() {
                return Ok(Some(c));
            }
            if ctx.stopping() || self.caught_up(ctx)? {
                return Ok(None);
            }
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.commit(CommitMode::Async)?;
            }
            let got = self.poll_round(ctx)?;
            self.handle_group_events(ctx)?;
            self.housekeeping(ctx, !got)?;
        }
    }

    fn backpressure(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        // Stop fetching, but keep polling: heartbeats, rebalances and commits go on, and the
        // messages already fetched are buffered (librdkafka's queue is bounded).
        if !self.paused {
            self.set_paused(true);
            tracing::debug!(source = %self.name, "kafka: backpressure, partitions paused");
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit(CommitMode::Async)?;
        }
        let consumer = self.consumer.as_ref().expect("connected");
        consumer
            .context()
            .in_backpressure
            .store(true, Ordering::SeqCst);
        let polled = consumer.poll(Duration::ZERO);
        consumer
            .context()
            .in_backpressure
            .store(false, Ordering::SeqCst);
        if let Some(Ok(m)) = polled {
            let m = m.detach();
            self.handle_group_events(ctx)?;
            self.place(&m, ctx, Instant::now());
        }
        self.handle_group_events(ctx)
    }

    fn backpressure_released(&mut self, _ctx: &ReaderContext) -> Result<(), EngineError> {
        if self.paused {
            self.set_paused(false);
        }
        Ok(())
    }

    fn finish(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        // A pool job ended by a rebalance: the group's generation is moving, and a
        // synchronous commit then fails only after librdkafka's 5 s of retries, which held
        // the next job (and so the partitions the worker keeps) that long. In a pool the
        // committed offsets serve the lag and the repartition backpressure, never a restart:
        // the next commit carries them. Reading until caught up, the workers tell partitions
        // read to their end elsewhere by these offsets: they are committed before the
        // partitions go.
        let handed_over = self.config.pool.is_some() && ctx.handover.load(Ordering::Relaxed);
        let mode = if handed_over && !self.config.until_caught_up {
            CommitMode::Async
        } else {
            CommitMode::Sync
        };
        self.commit(mode)?;
        if self.config.pool.is_none() {
            self.close();
        }
        Ok(())
    }

    fn unread(&mut self, chunk: Chunk) {
        // a chunk held back while its partition was given up (a rebalance served while the
        // reader waited for room): the next owner, this worker again included, reads it
        // again from the hand-over checkpoint, which does not hold it
        let id = chunk.partition.id;
        let l = id.checked_sub(self.first_id);
        let assigned = l
            .and_then(|l| self.partitions.get(l))
            .is_some_and(|s| s.assigned);
        if assigned && !self.forgotten.contains(&id) {
            self.ready.push_front(chunk);
        }
    }
}
