//! The group's assignments as the reader sees them: partitions assigned and revoked, where
//! each one starts and ends, and, with `until_caught_up`, the wait for partitions read
//! elsewhere.

use super::*;
use weir_engine::pool::Finished;

impl KafkaReader {
    /// Outside a pool, a run reading until caught up reads every partition of the topics
    /// itself: one not assigned yet (another member holds it until its session times out)
    /// or taken away for a moment (a rebalance) holds the watermark at its own, so that the
    /// windows its rows belong to are not emitted without them (split, or its rows late).
    pub(super) fn reads_every_partition(&self) -> bool {
        self.config.until_caught_up && self.config.pool.is_none()
    }

    /// With `until_caught_up`: reads the end offset of every partition of the topics, where
    /// the run reads it to. Outside a pool, a partition known to start at (or past) it (a
    /// checkpoint's offset, the group's committed one) ends at once, assigned or not: its
    /// state is this process's either way. One known to start past the partition's end (the
    /// topic was created again) is read from its log start (see `expired`).
    pub(super) fn read_targets(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        let mut ends = Vec::with_capacity(self.partitions.len());
        for l in 0..self.partitions.len() {
            let (topic, p) = (
                self.partitions[l].topic.to_string(),
                self.partitions[l].number,
            );
            let (low, high) = self.end_offsets(&topic, p)?;
            ends.push(u64::try_from(high).unwrap_or(0));
            let high = if high <= low { 0 } else { high as u64 };
            let end = match self.config.end_offsets.get(&(topic, p)) {
                Some(&e) => e.min(high),
                None => high,
            };
            self.partitions[l].target = Some(end);
        }
        if self.config.pool.is_some() {
            return Ok(());
        }
        let committed = match self.config.start_from {
            StartFrom::Committed => self.committed_offsets(|_| true),
            _ => HashMap::new(),
        };
        let resets_to_end = self
            .consumer
            .as_ref()
            .is_some_and(|c| c.context().resets_to_end);
        let starts: Vec<Option<u64>> = self
            .partitions
            .iter()
            .map(|s| {
                let key = (s.topic.to_string(), s.number);
                if self.replaced.contains(&key) {
                    // (its topic was created again: see `incarnation`)
                    return resets_to_end.then(|| s.target.unwrap_or(0));
                }
                match (self.resume.get(&key), self.config.start_from) {
                    (Some(&o), _) => Some(o),
                    (None, StartFrom::Latest) => Some(s.target.unwrap_or(0)),
                    (None, StartFrom::Committed) => committed.get(&key).copied(),
                    _ => None,
                }
            })
            .collect();
        let past_end = self.past_the_end(&starts, &ends);
        for l in 0..self.partitions.len() {
            let s = &self.partitions[l];
            let key = (s.topic.to_string(), s.number);
            let target = s.target.unwrap_or(0);
            let start = starts[l];
            if past_end[l] {
                // the rebalance moves it (see `expired`): to the end, where it ends now (not
                // at the old offset, which its checkpoint would keep), or to the log start,
                // from where it is read
                if resets_to_end {
                    self.end_partition(l, target, ctx);
                }
                continue;
            }
            if target == 0 || start.is_some_and(|o| o >= target) {
                tracing::debug!(source = %self.name, topic = %key.0, partition = key.1, "kafka: the partition starts at its end offset");
                self.end_partition(l, start.unwrap_or(0), ctx);
            }
        }
        Ok(())
    }

    /// Per partition: whether its start is past its end (`ends`: what the consumer reads to),
    /// which the rebalance moves where `auto.offset.reset` says (see `expired`). Under
    /// `read_committed` the end is the last stable offset, so a start above it is checked
    /// against the high watermark; when the high watermarks cannot be read, none is.
    fn past_the_end(&self, starts: &[Option<u64>], ends: &[u64]) -> Vec<bool> {
        let mut past: Vec<bool> = starts
            .iter()
            .zip(ends)
            .map(|(s, &end)| s.is_some_and(|o| o > end))
            .collect();
        let Some(consumer) = self.consumer.as_ref() else {
            return vec![false; past.len()];
        };
        let context = consumer.context();
        if !past.contains(&true) {
            return past;
        }
        if context.read_committed {
            let keys: Vec<(String, i32)> = self
                .partitions
                .iter()
                .zip(&past)
                .filter(|(_, &p)| p)
                .map(|(s, _)| (s.topic.to_string(), s.number))
                .collect();
            let highs = expired::high_watermarks(&context.client, &keys.iter().collect::<Vec<_>>())
                .unwrap_or_default();
            for (l, s) in self.partitions.iter().enumerate() {
                let high = highs.get(&(s.topic.to_string(), s.number));
                past[l] &= starts[l].is_some_and(|o| expired::past_the_high_watermark(o, high));
            }
        }
        past
    }

    /// The group's committed offsets of the partitions `which` selects (none on failure: the
    /// caller reads them again later).
    pub(super) fn committed_offsets(
        &self,
        which: impl Fn(&PartitionState) -> bool,
    ) -> HashMap<(String, i32), u64> {
        let Some(consumer) = &self.consumer else {
            return HashMap::new();
        };
        let partitions: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|s| which(s))
            .map(|s| (s.topic.to_string(), s.number))
            .collect();
        if partitions.is_empty() {
            return HashMap::new();
        }
        committed::read(consumer, &partitions, &self.name).unwrap_or_default()
    }

    /// The watch of the group's committed offsets, started the first time it is needed
    /// (none if it cannot start: the reader then goes on waiting, and says why).
    fn committed_watch(&mut self) -> Option<Arc<CommittedWatch>> {
        if self.committed.is_none() {
            let started = CommittedWatch::start(
                &self.config.brokers,
                &self.config.properties,
                &self.config.group_id,
                &self.name,
            );
            match started {
                Ok(w) => self.committed = Some(Arc::new(w)),
                Err(e) => {
                    // tried again every round of the wait: said once a minute
                    let due = self
                        .committed_warned
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                    if due {
                        self.committed_warned = Some(Instant::now());
                        tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the group's committed offsets; will try again");
                    }
                }
            }
        }
        self.committed.clone()
    }

    /// Publishes how many partitions this process reads (for `/ready`).
    pub(super) fn report_assigned(&self, ctx: &ReaderContext) {
        if let Some(src) = ctx.stats.sources.get(self.source) {
            let n = self.partitions.iter().filter(|s| s.assigned).count();
            src.assigned.store(n as i64, Ordering::Relaxed);
        }
    }

    pub(super) fn handle_group_events(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let c = consumer.context();
        // offsets a rebalance found deleted, counted by the run that reads on from them (not
        // by a pool's run being handed over: it ends, and the next job counts them)
        if !ctx.handover.load(Ordering::Relaxed) && c.expired.load(Ordering::Relaxed) > 0 {
            let expired = c.expired.swap(0, Ordering::AcqRel);
            if let Some(src) = ctx.stats.sources.get(self.source) {
                RunStats::add(&src.records_expired, expired);
            }
        }
        if !c.has_events.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let events = c
            .events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        self.group_moved = Instant::now();
        for e in events {
            match e {
                GroupEvent::Assigned(list) => {
                    self.joined = true;
                    let mut ends = if self.config.until_caught_up {
                        self.ends_of(&list)
                    } else {
                        HashMap::new()
                    };
                    for (topic, p) in list {
                        let Some(l) = self.local(&topic, p) else {
                            // its messages would go unread and uncounted (or, past another
                            // topic's first partitions, be taken for that topic's)
                            return Err(self.err(
                                "a partition was added",
                                format!(
                                    "partition {p} of topic `{topic}` was added while the run \
                                     read the topic: the run reads the partitions the topics had \
                                     when it started, so it ends here; start it again to read \
                                     the new partition too (its checkpoint keeps the others' \
                                     positions)"
                                ),
                            ));
                        };
                        if self.partitions[l].ended && self.config.pool.is_none() {
                            // read to its end before the group assigned it (it started there)
                            self.partitions[l].assigned = true;
                            ctx.clocks
                                .partition(self.partitions[l].lane.info.id)
                                .set_read_here(true);
                            if let Some(consumer) = &self.consumer {
                                let mut tpl = TopicPartitionList::new();
                                tpl.add_partition(&topic, p);
                                let _ = consumer.pause(&tpl);
                            }
                            continue;
                        }
                        let (end_at, start) = if self.config.until_caught_up {
                            let (low, high) = match ends.remove(&(topic.clone(), p)) {
                                Some(known) => known,
                                None => self.end_offsets(&topic, p)?,
                            };
                            let high = if high <= low { 0 } else { high as u64 };
                            let end = match self.config.end_offsets.get(&(topic.clone(), p)) {
                                Some(&e) => e.min(high),
                                None => high,
                            };
                            // the end it had when the run started
                            let end = self.partitions[l].target.map_or(end, |t| t.min(end));
                            (Some(end), self.start_offset(&topic, p, high))
                        } else {
                            (None, None)
                        };
                        let expected = self.consumer.as_ref().and_then(|c| {
                            c.context()
                                .lane_starts
                                .lock()
                                .ok()?
                                .remove(&(topic.clone(), p))
                        });
                        let incarnation = self.consumer.as_ref().and_then(|c| {
                            c.context().incarnations.lock().ok()?.get(&topic).copied()
                        });
                        // (in a pool the mark is the claim's: a later assignment of the
                        // partition without a claim starts as `start_from` says)
                        let pooled = self.config.pool.is_some();
                        let replaced = self.consumer.as_ref().is_some_and(|c| {
                            c.context().replaced.lock().is_ok_and(|mut r| {
                                let tp = (topic.clone(), p);
                                if pooled {
                                    r.remove(&tp)
                                } else {
                                    r.contains(&tp)
                                }
                            })
                        });
                        // in a pool, the start is the claim's (none: `start_from`'s)
                        let claimed = self.config.pool.as_ref().and_then(|_| {
                            self.consumer.as_ref().and_then(|c| {
                                c.context()
                                    .claimed_incarnations
                                    .lock()
                                    .ok()?
                                    .remove(&(topic.clone(), p))
                            })
                        });
                        let s = &mut self.partitions[l];
                        // (a pooled partition without a claim starts as `start_from` says,
                        // or where this process left it: its own label)
                        let prev = claimed.unwrap_or(s.incarnation);
                        s.incarnation = incarnation::label(prev, incarnation, replaced);
                        s.assigned = true;
                        s.read_elsewhere = false;
                        // (its start was checked against the log start: `skip_expired`)
                        s.expected = None;
                        s.jumps.clear();
                        s.end_at = end_at;
                        s.warned_foreign = false;
                        s.warned_older = false;
                        s.lane.last_message = Instant::now();
                        let id = s.lane.info.id;
                        if let Some(up) = &self.config.upstream {
                            let (from, expect) = expected.unwrap_or_default();
                            let lanes =
                                Lanes::new(up.topic.as_str().into(), up.partitions, &expect, from);
                            ctx.clocks.partition(id).set_idle(false);
                            lanes.set_up(ctx.clocks.partition(id));
                            s.up = Some(Box::new(lanes));
                        }
                        ctx.progress.track(id);
                        ctx.progress.restart(id, s.lane.seq);
                        ctx.clocks.partition(id).set_idle(false);
                        ctx.clocks.partition(id).set_read_here(true);
                        // A partition starting at (or past) its end offset: no message will
                        // come to say it is caught up.
                        if let Some(end) = end_at {
                            if end == 0 || start.is_some_and(|from| from >= end) {
                                self.end_partition(l, start.unwrap_or(0), ctx);
                            }
                        }
                    }
                }
                GroupEvent::Revoked(list) => {
                    for (topic, p) in list {
                        let Some(l) = self.local(&topic, p) else {
                            continue;
                        };
                        if self.config.pool.is_some() {
                            self.forget(l);
                        } else {
                            self.hand_over(l);
                        }
                        let idle = !self.reads_every_partition();
                        let s = &mut self.partitions[l];
                        s.assigned = false;
                        let clock = ctx.clocks.partition(s.lane.info.id);
                        clock.set_idle(idle);
                        clock.set_read_here(!idle);
                    }
                }
            }
            self.report_assigned(ctx);
        }
        Ok(())
    }

    /// The low and high watermarks of a partition; a busy broker gets three tries of 30 s.
    pub(super) fn end_offsets(&self, topic: &str, p: i32) -> Result<(i64, i64), EngineError> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Err(self.err("cannot read partition end offsets", "not connected"));
        };
        let mut tries = 0;
        loop {
            match consumer.fetch_watermarks(topic, p, Duration::from_secs(30)) {
                Ok(w) => return Ok(w),
                Err(e) if tries < 2 => {
                    tries += 1;
                    tracing::warn!(source = %self.name, topic, partition = p, error = %e, "kafka: reading the partition's end offsets failed; trying again");
                }
                Err(e) => return Err(self.err("cannot read partition end offsets", e)),
            }
        }
    }

    /// The (low, high) offsets of `partitions`, in two requests whatever their number: a
    /// query per partition waited each time behind the consumer's fetch of caught-up
    /// partitions (`fetch.wait.max.ms`, 500 ms apiece: 6 s for 12 partitions). A partition
    /// missing from the answers is left out (the caller asks for it alone).
    pub(super) fn ends_of(
        &self,
        partitions: &[(String, i32)],
    ) -> HashMap<(String, i32), (i64, i64)> {
        let Some(consumer) = self.consumer.as_ref() else {
            return HashMap::new();
        };
        // ListOffsets at a time of -2 (earliest) or -1 (latest), as the watermarks are read
        let query = |at: Offset| -> HashMap<(String, i32), i64> {
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in partitions {
                if tpl.add_partition_offset(topic, *p, at).is_err() {
                    return HashMap::new();
                }
            }
            match consumer.offsets_for_times(tpl, Duration::from_secs(30)) {
                Ok(got) => got
                    .elements()
                    .iter()
                    .filter(|e| e.error().is_ok())
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => {
                            Some(((e.topic().to_string(), e.partition()), o))
                        }
                        _ => None,
                    })
                    .collect(),
                Err(e) => {
                    tracing::debug!(source = %self.name, error = %e, "kafka: reading the partitions' end offsets together failed; reading them one by one");
                    HashMap::new()
                }
            }
        };
        let highs = query(Offset::End);
        let mut lows = query(Offset::Beginning);
        highs
            .into_iter()
            .filter_map(|(key, high)| {
                let low = lows.remove(&key)?;
                Some((key, (low, high)))
            })
            .collect()
    }

    /// Where a newly assigned partition starts reading, when it is known to be an offset: the
    /// one the rebalance set (a checkpoint's, `start_from`), else the group's committed one.
    /// `None` for the beginning or when it cannot be told (messages will come if the
    /// partition has any).
    pub(super) fn start_offset(&self, topic: &str, p: i32, high: u64) -> Option<u64> {
        let consumer = self.consumer.as_ref()?;
        let chosen = consumer
            .context()
            .starts
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&(topic.to_string(), p)));
        match chosen {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            Some(Offset::End) => Some(high),
            Some(_) => None,
            None => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, p);
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(30))
                    .ok()?;
                match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
                    _ => None,
                }
            }
        }
    }

    /// Moves a partition's buffered messages to ready chunks: one, or for a repartition
    /// topic's partition, one per lane with messages (see [`Lanes::hand_over`]).
    pub(super) fn hand_over(&mut self, l: usize) {
        let source = self.source;
        let s = &mut self.partitions[l];
        let empty =
            s.up.as_ref()
                .map_or(s.lane.buffer.is_empty(), |up| up.is_empty());
        if empty {
            return;
        }
        let Some(next) = s.read_next else {
            return;
        };
        s.next_offset = Some(next);
        if let Some(c) = &self.consumer {
            if let Ok(mut positions) = c.context().positions.lock() {
                positions.insert((s.topic.to_string(), s.number), next);
            }
        }
        let incarnation = s.incarnation;
        let lane = &mut s.lane;
        match s.up.as_mut() {
            Some(up) => {
                let chunks = up.hand_over((source, &lane.info), &mut lane.seq, next);
                self.ready.extend(chunks);
            }
            None => {
                let messages = lane.buffer.take();
                self.ready.push_back(Chunk {
                    source,
                    partition: lane.info.clone(),
                    seq: lane.seq,
                    first_offset: messages.offsets[0],
                    resume: Resume::at(next).in_incarnation(incarnation),
                    data: ChunkData::Messages(messages),
                });
                lane.seq += 1;
            }
        }
    }

    /// Ends a partition (caught up): hands over its messages, then its end.
    pub(super) fn end_partition(&mut self, l: usize, next_offset: u64, ctx: &ReaderContext) {
        self.hand_over(l);
        let source = self.source;
        let s = &mut self.partitions[l];
        if s.ended {
            return;
        }
        s.ended = true;
        let next = s.next_offset.unwrap_or(next_offset).max(next_offset);
        s.next_offset = Some(next);
        ctx.clocks.partition(s.lane.info.id).set_resumable_end();
        self.ready.push_back(lane_end(source, s, next));
        if let Some(consumer) = &self.consumer {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&s.topic, s.number);
            let _ = consumer.pause(&tpl);
        }
    }

    /// With `until_caught_up`: whether every partition of the topics is read to its end
    /// (see [`caught_up`]). While this process has read every partition it is
    /// assigned but others are not read, it waits: says so in its log and `/ready`, and
    /// fails after `caught_up_timeout`.
    pub(super) fn caught_up(&mut self, ctx: &ReaderContext) -> Result<bool, EngineError> {
        if !self.config.until_caught_up
            || !self.ready.is_empty()
            || self.partitions.iter().any(|s| s.target.is_none())
        {
            return Ok(false);
        }
        if self.partitions.iter().any(|s| s.assigned && !s.ended) {
            self.wait.reading();
            self.set_waiting(ctx, String::new());
            return Ok(false);
        }
        let (pending, why) = self.pending();
        let who = (&*self.name, self.config.group_id.as_str());
        match self.wait.update(&pending, why, who, Instant::now()) {
            Ok(Wait::Done) => {
                self.set_waiting(ctx, String::new());
                Ok(true)
            }
            Ok(Wait::Waiting(reason)) => {
                if self.flush_before_waiting() {
                    // ends this job with a final flush of its partitions; the worker then
                    // waits in a new job, its partitions finished
                    tracing::info!(
                        source = %self.name,
                        partitions = %pending.join(", "),
                        "kafka: every partition assigned to this worker is read to its end; \
                         flushing their last windows before waiting for the others"
                    );
                    self.flushed_to_wait = true;
                    // the flush's run may last (another source's reader still reading): the
                    // wait starts again in the next run, not counted from here
                    self.wait.reading();
                    return Ok(true);
                }
                self.set_waiting(ctx, reason);
                self.rejoin_if_stuck(&pending)?;
                Ok(false)
            }
            Err(e) => Err(EngineError::NotCaughtUp {
                source_name: self.name.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// In a pool, reading until caught up: whether this worker, having read every partition
    /// it is assigned to its end while others are not finished, must first flush the last
    /// windows of its own partitions (a final checkpoint, recorded as finished). Workers
    /// that waited for each other's partitions to be flushed would wait forever; and one
    /// that ended without waiting could leave the windows of a partition whose owner was
    /// killed (or that was between two owners) unflushed for good.
    fn flush_before_waiting(&mut self) -> bool {
        let Some(pool) = &self.config.pool else {
            return false;
        };
        if !self.joined
            || self
                .own_checked
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return false;
        }
        self.own_checked = Some(Instant::now());
        // every partition the worker owns, of this source or another (see `owned_unfinished`)
        (pool.owned_unfinished)()
    }

    /// The partitions of the topics this process waits for (not read to their end and not
    /// assigned to it), and why they are not read.
    pub(super) fn pending(&mut self) -> (Vec<String>, &'static str) {
        let key = |s: &PartitionState| format!("{}/{}", s.topic, s.number);
        let never = self.partitions.iter().all(|s| !s.assigned);
        if self.config.pool.is_none() {
            let why = if never {
                "not assigned to this process yet"
            } else {
                "not assigned to this process"
            };
            return (
                self.partitions
                    .iter()
                    .filter(|s| !s.ended)
                    .map(key)
                    .collect(),
                why,
            );
        }
        // in a pool, another worker read a partition to its end once the group's committed
        // offset (committed after its checkpoint) reached it
        let unread = |s: &PartitionState| {
            !s.assigned && !s.ended && !s.read_elsewhere && s.target.is_some_and(|t| t > 0)
        };
        if self.config.upstream.is_some() {
            return self.pending_internal(never);
        }
        // the group's committed offsets are read on a thread of their own (see
        // `committed`): the latest answer, then a new question once a second
        let watch = self.committed_watch();
        let answer = watch.as_ref().and_then(|w| w.take());
        if let Some(w) = &watch {
            if self
                .checked_elsewhere
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                let partitions = self
                    .partitions
                    .iter()
                    .filter(|s| unread(s))
                    .map(|s| (s.topic.to_string(), s.number))
                    .collect::<Vec<_>>();
                if partitions.is_empty() || w.ask(partitions) {
                    self.checked_elsewhere = Some(Instant::now());
                }
            }
        }
        if let Some(committed) = answer {
            let finished = self.config.pool.as_ref().map(|p| p.finished.clone());
            for s in self.partitions.iter_mut() {
                if !unread(s) {
                    continue;
                }
                let key = (s.topic.to_string(), s.number);
                let (Some(&c), Some(t)) = (committed.get(&key), s.target) else {
                    continue;
                };
                if c < t {
                    continue;
                }
                // read to its end by another worker; its last windows are flushed only by
                // the final checkpoint of the worker owning it (not yet, if that worker
                // was killed waiting, or it is between two owners)
                s.read_elsewhere = match finished.as_ref().map(|f| f(&s.topic, s.number)) {
                    None => true,
                    Some(Ok(done)) => done != Finished::No,
                    Some(Err(e)) => {
                        tracing::warn!(source = %self.name, topic = %s.topic, partition = s.number, error = %e, "kafka: cannot read whether a partition is finished");
                        false
                    }
                };
            }
        }
        let pending = self
            .partitions
            .iter()
            .filter(|s| unread(s))
            .map(key)
            .collect();
        if !self.joined {
            // a worker that joins (again, after losing partitions to fencing) may be given
            // partitions whose state holds windows not flushed yet: it ends only once the
            // group told it which ones it owns, or once every partition is finished
            return (
                pending,
                "the group has not assigned this worker its partitions yet",
            );
        }
        (
            pending,
            "not assigned to this worker, and not finished: the group's committed offset is \
             below that end, or the windows of its end are not flushed yet",
        )
    }

    /// [`Self::pending`] of a repartition topic, whose committed offsets are a checkpoint's
    /// (its slowest lane's), not where its lanes read to, so they cannot tell that another
    /// worker read a partition. A worker with no partition waits for all; one with
    /// partitions waits for those another worker claimed and has not finished (its last
    /// windows not flushed: it is reading them, or it died and the group will give them to
    /// a live worker), asked again at most once a second. (A worker ended once it had any
    /// partition: a worker killed with its partitions unread left the others exiting 0
    /// without their rows.) A partition whose newest claim is finished is not waited for
    /// once it was read to this run's end (an earlier run's finished it short of it; a
    /// claim of an older version, which recorded no end, is taken as it is; the committed
    /// offsets of a repartition topic do not say where it was read to). One no worker
    /// claimed yet is waited for: the
    /// group gave it to a worker whose job has not claimed it yet (it was still ending its
    /// run, on a loaded machine), and a worker that took it for finished ended, exit 0, with
    /// that partition's rows missing, once its owner was killed.
    fn pending_internal(&mut self, never: bool) -> (Vec<String>, &'static str) {
        let key = |s: &PartitionState| format!("{}/{}", s.topic, s.number);
        if never {
            let pending = self
                .partitions
                .iter()
                .filter(|s| !s.ended)
                .map(key)
                .collect();
            return (pending, "no partition assigned to this worker");
        }
        let elsewhere =
            |s: &PartitionState| !s.assigned && !s.ended && s.target.is_some_and(|t| t > 0);
        let finished = self.config.pool.as_ref().map(|p| p.finished.clone());
        let due = self
            .checked_elsewhere
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if let (Some(finished), true) = (finished, due) {
            self.checked_elsewhere = Some(Instant::now());
            for s in self.partitions.iter_mut().filter(|s| elsewhere(s)) {
                s.read_elsewhere = match finished(&s.topic, s.number) {
                    // one never claimed holds rows of this run (its end is past 0): it is
                    // not read yet, whether its worker is about to claim it or not; one
                    // finished short of this run's end was finished by an earlier run
                    Ok(Finished::At(end)) => s.target.is_some_and(|t| end >= t),
                    Ok(Finished::Yes) => true,
                    Ok(Finished::No | Finished::Unclaimed) => false,
                    Err(e) => {
                        tracing::warn!(source = %self.name, topic = %s.topic, partition = s.number, error = %e, "kafka: cannot read whether a partition is finished");
                        false
                    }
                };
            }
        }
        let pending = self
            .partitions
            .iter()
            .filter(|s| elsewhere(s) && !s.read_elsewhere)
            .map(key)
            .collect();
        (
            pending,
            "not assigned to this worker, and not finished: claimed by a worker that has not \
             finished it, or not claimed yet by the worker the group gave it to",
        )
    }

    /// While waiting for `pending` partitions: once the group did not move any partition
    /// for longer than a session timeout (and a margin), joins it again. A coordinator
    /// expires a dead member after its session timeout and moves its partitions; tansu was
    /// seen keeping a member killed while it joined, with its partitions, until another
    /// member joins. In a pool, only a worker without partitions joins again (the others
    /// may be reading theirs).
    pub(super) fn rejoin_if_stuck(&mut self, pending: &[String]) -> Result<(), EngineError> {
        let session =
            caught_up::session_timeout(&self.config.properties, self.config.pool.is_some());
        if self.group_moved.elapsed() < session + caught_up::REJOIN_MARGIN
            || (self.config.pool.is_some() && self.partitions.iter().any(|s| s.assigned))
        {
            return Ok(());
        }
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        tracing::warn!(
            source = %self.name,
            group = %self.config.group_id,
            partitions = %pending.join(", "),
            quiet_s = self.group_moved.elapsed().as_secs(),
            "kafka: the group moved no partition for longer than a session timeout while \
             partitions wait for a reader; joining the group again"
        );
        self.group_moved = Instant::now();
        consumer.unsubscribe();
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| self.err("cannot subscribe again", e))
    }

    /// Publishes what the source waits for (for `/ready`).
    pub(super) fn set_waiting(&self, ctx: &ReaderContext, reason: String) {
        if let Some(mut w) = ctx
            .stats
            .sources
            .get(self.source)
            .and_then(|s| s.waiting_for_partitions.lock().ok())
        {
            if *w != reason {
                *w = reason;
            }
        }
    }
}
