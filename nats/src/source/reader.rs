//! The reader: pulls messages on the process's I/O runtime, gathers them into chunks of the
//! stream's one partition, acknowledges them once their rows are durable.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::Subject;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::{Chunk, ChunkData, EngineError};

use super::consumer::{connect, nanos, Connection, NatsSourceError};
use super::fetch::Fetched;
use super::{NatsAckPolicy, NatsSourceConfig};
use weir_engine::buffer::{MessageBuffer, CHUNK_MESSAGES};

/// A chunk is handed over once its oldest message waited this long (or it is full).
const CHUNK_AGE: Duration = Duration::from_millis(100);
/// How long one pull round waits for a first message.
pub(super) const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often the reader asks the server whether it read the stream to its end (caught up)
/// while no message comes.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// After this long without a message, a consumer that says it delivered more than the reader
/// received lost those deliveries on the way (and its state is read this often while quiet).
const LOST_AFTER: Duration = Duration::from_secs(2);
/// How long the reader waits before asking again whether a consumer said missing is gone.
const GONE_CONFIRM: Duration = Duration::from_secs(1);
/// Messages deleted before they were read are logged at most this often (all are counted).
const EXPIRED_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long the reader waits before connecting again after a failed attempt mid-run.
const RECONNECT_WAIT: Duration = Duration::from_secs(1);

/// What one round of a reader gave (moved out at once: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    Chunk(Chunk),
    /// Nothing arrived in time.
    Quiet,
    /// Read to its end, or the job stops.
    Done,
}

/// Reads a NATS JetStream stream for a job (one partition: see the module's docs).
pub struct NatsReader {
    source: usize,
    name: Arc<str>,
    config: NatsSourceConfig,
    info: Arc<PartitionInfo>,
    /// The process's I/O runtime: the client's tasks run there (they keep the connection alive
    /// while the workers apply backpressure); the reader blocks on it for its calls.
    rt: &'static tokio::runtime::Runtime,
    /// The connection (dropping it closes it: see [`Connection`]).
    conn: Option<Connection>,
    buffer: MessageBuffer,
    ready: VecDeque<Chunk>,
    /// The next chunk's number.
    seq: u64,
    /// The stream sequence after the last message read (from a checkpoint at first).
    read_next: Option<u64>,
    /// With `until_caught_up`: the last sequence to read.
    target: Option<u64>,
    ended: bool,
    /// Per chunk handed over: the sequence after it and the reply subject of its last message.
    acks: VecDeque<(u64, Subject)>,
    /// The reply subject of the last message placed in the buffer.
    last_reply: Option<Subject>,
    last_message: Instant,
    last_check: Instant,
    /// Messages the server has for the consumer after the last one read.
    pending: u64,
    /// The consumer sequence of the last message the current consumer delivered to the
    /// reader (0: none). The server numbers each delivery, so a message numbered past the
    /// next one says that deliveries were lost on the way (a reconnection, the client's
    /// buffer full, another reader of the consumer); and when the consumer says it delivered
    /// no more, nothing is on its way.
    received: u64,
    /// The sequence after the current consumer's acknowledgement floor (what it acknowledged
    /// so far): a consumer created again mid-run with acknowledgements starts there, so that
    /// its floor, which a run without checkpoint continues from, stays below rows not yet
    /// durable. `None` until the first connection.
    floor_next: Option<u64>,
    /// The consumer reads the whole stream and every sequence the stream skips was deleted
    /// (see `Connected::gaps_are_losses`): a sequence skipped was deleted before it was read.
    gaps_are_losses: bool,
    /// Messages deleted before they were read that the log has not told yet, and when it
    /// last told.
    expired_unlogged: u64,
    expired_logged: Option<Instant>,
    /// The connection is lost mid-run since then (a server that went away).
    failing_since: Option<Instant>,
    /// The first connection was made.
    started: bool,
    /// Notices a consumer stopped at `max_ack_pending` (see [`super::stall`]).
    stall: super::stall::StallWatch,
    /// Where a run without checkpoint starts again, as the last connection learned it (kept
    /// for a consumer that is gone when the reader connects again).
    origin: Option<u64>,
    /// The stream's creation time `read_next` belongs to (a checkpoint's, then the first
    /// connection's): a stream created again is refused, not read as if it continued.
    incarnation: Option<u64>,
    /// The creation time of the consumer the last connection created or kept (ns since the
    /// epoch; 0: unknown).
    consumer_created: u64,
    /// The connection's first delivery is still to come: the consumer is then asked whether
    /// it is the one the connection made (see [`Self::consumer_is_ours`]).
    verify_first: bool,
}

impl NatsReader {
    /// A reader of source `source` (named `name`) whose one partition has global id
    /// `partition`.
    pub fn new(
        source: usize,
        name: &str,
        partition: usize,
        config: NatsSourceConfig,
    ) -> Result<Self, EngineError> {
        let name: Arc<str> = name.into();
        let rt = weir_engine::io::runtime()
            .map_err(|e| EngineError::source_caused(&name, "nats: no I/O runtime", e))?;
        Ok(NatsReader {
            source,
            info: Arc::new(PartitionInfo {
                source: name.clone(),
                id: partition,
                state_id: partition,
                number: 0,
                topic: Some(config.stream.as_str().into()),
                file: None,
            }),
            name,
            config,
            rt,
            last_reply: None,
            conn: None,
            buffer: MessageBuffer::default(),
            ready: VecDeque::new(),
            seq: 0,
            read_next: None,
            target: None,
            ended: false,
            acks: VecDeque::new(),
            last_message: Instant::now(),
            last_check: Instant::now(),
            pending: 0,
            received: 0,
            floor_next: None,
            gaps_are_losses: false,
            expired_unlogged: 0,
            expired_logged: None,
            failing_since: None,
            started: false,
            stall: super::stall::StallWatch::new(),
            origin: None,
            incarnation: None,
            consumer_created: 0,
            verify_first: false,
        })
    }

    /// The reader of subject partition `number` of its stream (dead letters name it).
    pub fn numbered(mut self, number: u32) -> Self {
        let i = &self.info;
        self.info = Arc::new(PartitionInfo {
            source: i.source.clone(),
            id: i.id,
            state_id: i.state_id,
            number,
            topic: i.topic.clone(),
            file: i.file.clone(),
        });
        self
    }

    /// Its global partition id in the job.
    pub fn partition_id(&self) -> usize {
        self.info.id
    }

    /// The first call: registers the partition and connects (a failure is the pipeline's
    /// error).
    pub(super) fn start(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        ctx.progress.track(self.info.id);
        // a view's rows would hold every later message unacknowledged: the stream would stop
        // at max_ack_pending, and deliver them all again every ack_wait
        ctx.progress.release_views(self.info.id);
        if let Some(src) = ctx.stats.sources.get(self.source) {
            src.assigned
                .store(weir_engine::stats::NOT_GROUP_MANAGED, Ordering::Relaxed);
        }
        self.connect(ctx).map_err(|e| self.err(e))
    }

    /// One round: a chunk ready (pulling for up to `wait` first when none is), nothing yet,
    /// or the end (read to the caught-up target, or the job stops).
    pub(super) fn step(
        &mut self,
        ctx: &ReaderContext,
        wait: Duration,
    ) -> Result<Step, EngineError> {
        if let Some(c) = self.ready.pop_front() {
            return Ok(Step::Chunk(c));
        }
        if ctx.stopping() || self.ended {
            return Ok(Step::Done);
        }
        self.acknowledge(ctx);
        let got = self.poll_round(ctx, wait)?;
        self.housekeeping(ctx, !got)?;
        Ok(match self.ready.pop_front() {
            Some(c) => Step::Chunk(c),
            None => Step::Quiet,
        })
    }

    /// Reading until caught up: the stream sequence this reader reads to, once connected.
    pub fn target(&self) -> Option<u64> {
        self.target
    }

    /// Continues at a checkpoint's position (a stream sequence, in the stream's incarnation
    /// when the checkpoint has one), whatever the consumer and `start_from` say.
    pub fn with_resume(mut self, next: Option<Resume>) -> Self {
        self.read_next = next.map(|r| r.next_offset);
        self.incarnation = next.map(|r| r.incarnation).filter(|&i| i != 0);
        self
    }

    /// Where the stream continues at sequence `next`, in its incarnation.
    fn resume_at(&self, next: u64) -> Resume {
        Resume::at(next).in_incarnation(self.incarnation.unwrap_or(0))
    }

    fn err(&self, e: NatsSourceError) -> EngineError {
        EngineError::source_caused(
            &self.name,
            format!("nats ({})", self.config.endpoint.describe_servers()),
            e,
        )
    }

    /// Connects (the first time: failures are errors; mid-run, the caller retries).
    fn connect(&mut self, ctx: &ReaderContext) -> Result<(), NatsSourceError> {
        let cfg = self.config.clone();
        let resume = self.read_next;
        // mid-run, a consumer with acknowledgements starts again after what it acknowledged,
        // not at the reader's position (the reader drops what it read already, and
        // acknowledges it once durable)
        let start = match (self.floor_next, cfg.ack_policy) {
            (Some(floor), NatsAckPolicy::All) => resume.map(|n| n.min(floor)),
            _ => resume,
        };
        let c = self.rt.block_on(connect(
            &cfg,
            (resume, start),
            self.origin,
            self.incarnation,
        ))?;
        let (conn, last, next) = (c.conn, c.last, c.next);
        self.gaps_are_losses = c.gaps_are_losses && cfg.subjects.is_empty();
        self.received = c.delivered;
        self.floor_next = Some(c.floor_next);
        // (the stream's retention may ask for acknowledgements after all)
        self.config.ack_policy = c.policy;
        self.origin = c.origin;
        if c.incarnation != 0 {
            self.incarnation = Some(c.incarnation);
        }
        self.consumer_created = c.consumer_created;
        self.verify_first = true;
        // nothing below is delivered again (a consumer kept has no unacknowledged message)
        self.read_next.get_or_insert(next);
        // reply subjects of an earlier consumer must not acknowledge the new one's messages
        // (its consumer sequences start again); later chunks' acknowledgements cover them
        self.acks.clear();
        self.last_reply = None;
        if self.config.until_caught_up && self.target.is_none() {
            let target = self.config.end_sequence.map_or(last, |e| e.min(last));
            self.target = Some(target);
            tracing::info!(source = %self.name, stream = %cfg.stream, last_sequence = target, "nats: reading until caught up");
        }
        if let Some((n, first)) = resume.zip(c.first).filter(|(n, first)| n < first) {
            tracing::warn!(source = %self.name, stream = %cfg.stream, from = n, to = first - 1, "nats: the stream no longer holds the messages of these sequences, which this source had not read (deleted by the stream's limits, such as max_age, or by a purge): the rows of those its subjects match are missing from the outputs");
            // read whole, each of them (up to the end of the reading) was this source's:
            // counted once, the reader moves on
            if self.gaps_are_losses {
                let upto = self.target.map_or(first, |t| first.min(t + 1));
                self.count_expired(ctx, upto.saturating_sub(n));
                self.read_next = Some(first);
            }
        }
        self.conn = Some(conn);
        self.last_check = Instant::now() - CHECK_EVERY;
        weir_engine::checkpoint::failpoint("nats_connected");
        Ok(())
    }

    /// Puts a pulled message in the buffer, unless the reader passed its sequence already
    /// (a redelivery) or it is past the caught-up target.
    fn place(&mut self, m: async_nats::jetstream::Message, ctx: &ReaderContext) {
        let Ok(info) = m.info() else {
            tracing::warn!(source = %self.name, subject = %m.subject, "nats: a message without JetStream metadata; skipped");
            return;
        };
        let (seq, pending) = (info.stream_sequence, info.pending);
        if self.ended {
            return;
        }
        // a stream and a consumer created again by someone else since the connection was
        // made number their deliveries from 1, as this consumer would
        if std::mem::take(&mut self.verify_first) && !self.consumer_is_ours() {
            return;
        }
        if info.consumer_sequence > self.received + 1 {
            self.lost_on_the_way(info.consumer_sequence - self.received - 1, seq);
            return;
        }
        // a number at or below the last one (the server numbers every delivery, redeliveries
        // included): the server went back to a state it had saved, and delivers again from
        // there (the reader drops what it read already); or someone created the stream and
        // the consumer again, which the reader must not read as if it continued
        if info.consumer_sequence <= self.received {
            self.deliveries_went_back(info.consumer_sequence, seq);
            return;
        }
        self.received = info.consumer_sequence;
        // read whole, a stream's sequences are all this source's: a jump is messages the
        // stream deleted before they were read (its limits, such as max_age, or a purge)
        if let Some(n) = self.read_next.filter(|&n| seq > n && self.gaps_are_losses) {
            // (not past the end of the reading)
            let upto = self.target.map_or(seq, |t| seq.min(t + 1));
            if upto > n {
                self.deleted_unread(ctx, n, upto);
            }
        }
        let published = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
        if self.read_next.is_some_and(|n| seq < n) {
            self.acknowledge_dropped(seq, m.reply.as_ref());
            return;
        }
        if self.target.is_some_and(|t| seq > t) {
            self.end(ctx);
            return;
        }
        let m = &m.message;
        let headers = m.headers.iter().flat_map(|h| {
            h.iter().flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (AsRef::<str>::as_ref(name), Some(v.as_str().as_bytes())))
            })
        });
        self.buffer.push_key_as_header(
            weir_engine::trace::NATS_SUBJECT_HEADER,
            (&m.payload, m.subject.as_bytes()),
            published,
            headers,
            self.config.with_headers,
            seq,
        );
        self.read_next = Some(seq + 1);
        self.pending = pending;
        if let Some(r) = &self.config.read_sequence {
            r.store(seq + 1, Ordering::Relaxed);
        }
        if let (Some(r), NatsAckPolicy::All) = (&m.reply, self.config.ack_policy) {
            self.last_reply = Some(r.clone());
        }
        self.last_message = Instant::now();
        let clock = ctx.clocks.partition(self.info.id);
        if clock.is_idle() {
            clock.set_idle(false);
        }
        if self.buffer.is_full() {
            self.hand_over();
        }
        if self.target.is_some_and(|t| seq >= t || pending == 0) {
            self.end(ctx);
        }
    }

    /// Messages `from..to` were deleted by the stream before the reader reached them: counted
    /// (`weir_records_expired_total`), and logged at most every [`EXPIRED_LOG_EVERY`].
    fn deleted_unread(&mut self, ctx: &ReaderContext, from: u64, to: u64) {
        self.count_expired(ctx, to - from);
        self.expired_unlogged += to - from;
        if self
            .expired_logged
            .is_some_and(|t| t.elapsed() < EXPIRED_LOG_EVERY)
        {
            return;
        }
        self.log_expired(Some((from, to)));
    }

    /// Logs the messages deleted before they were read that the log has not told yet (`last`:
    /// the sequences of the latest loss).
    fn log_expired(&mut self, last: Option<(u64, u64)>) {
        if self.expired_unlogged == 0 {
            return;
        }
        let (last_from, last_to) = last.map_or((None, None), |(f, t)| (Some(f), Some(t - 1)));
        tracing::error!(source = %self.name, stream = %self.config.stream, messages = self.expired_unlogged, ?last_from, ?last_to, "nats: the stream deleted messages before this source read them (its limits, such as max_age or max_msgs, or a purge): their rows are missing from the outputs; read faster (more parallelism or workers) or keep messages longer");
        self.expired_unlogged = 0;
        self.expired_logged = Some(Instant::now());
    }

    fn count_expired(&self, ctx: &ReaderContext, n: u64) {
        if let Some(src) = ctx.stats.sources.get(self.source) {
            weir_engine::RunStats::add(&src.records_expired, n);
        }
    }

    /// Deliveries numbered before the one just received (at stream sequence `seq`) never
    /// reached the reader: their messages were delivered, so the consumer will not deliver
    /// them again (and acknowledging a later message acknowledges them). The connection is
    /// dropped; the next round creates the consumer again before them (see
    /// [`Self::connect`]), and the reader drops what it read already.
    fn lost_on_the_way(&mut self, lost: u64, seq: u64) {
        tracing::warn!(source = %self.name, consumer = %self.config.consumer, lost, stream_sequence = seq, read_next = ?self.read_next, "nats: messages the consumer delivered never reached this reader (lost in a reconnection, dropped by the client, or pulled by another reader of the consumer); creating the consumer again to read them");
        self.conn = None;
    }

    /// A message dropped because the reader passed its sequence (a redelivery, or a consumer
    /// created again before the checkpoint's sequence) is acknowledged with the chunks, once
    /// its sequence is durable: with `all`, a consumer that delivers only such messages would
    /// otherwise stop at `max_ack_pending` for good. It replaces the last entry (an acknowledgement
    /// covers every earlier message, and it is before the reader's position, durable with it).
    fn acknowledge_dropped(&mut self, seq: u64, reply: Option<&Subject>) {
        let (Some(reply), NatsAckPolicy::All) = (reply, self.config.ack_policy) else {
            return;
        };
        // the buffer's chunk covers it, by stream sequence; acknowledged first, this
        // redelivery's later consumer sequence would make the server ignore the chunk's
        if self.last_reply.is_some() {
            return;
        }
        match self.acks.back_mut() {
            // a later acknowledgement covers it
            Some((next, _)) if *next > seq => {}
            // this one covers the last (all of them are before the reader's position)
            Some(last) => *last = (seq + 1, reply.clone()),
            None => self.acks.push_back((seq + 1, reply.clone())),
        }
    }

    /// Hands the buffer over as a chunk, noting the reply subject to acknowledge it by.
    fn hand_over(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let messages = self.buffer.take();
        let first = messages.offsets.first().copied().unwrap_or(0);
        let next = self.read_next.unwrap_or(first + 1);
        if let Some(reply) = self.last_reply.take() {
            self.acks.push_back((next, reply));
        }
        self.ready.push_back(Chunk {
            source: self.source,
            partition: self.info.clone(),
            seq: self.seq,
            first_offset: first,
            resume: self.resume_at(next),
            data: ChunkData::Messages(messages),
        });
        self.seq += 1;
    }

    /// The stream is read to its caught-up target: what is buffered goes, then the end.
    fn end(&mut self, ctx: &ReaderContext) {
        if self.ended {
            return;
        }
        // the stream goes on after this run: a later run reads on from here
        ctx.clocks.partition(self.info.id).set_resumable_end();
        self.hand_over();
        self.log_expired(None);
        self.ended = true;
        let next = self.read_next.unwrap_or(1);
        self.ready.push_back(Chunk {
            source: self.source,
            partition: self.info.clone(),
            seq: self.seq,
            first_offset: next,
            resume: self.resume_at(next),
            data: ChunkData::End,
        });
        self.seq += 1;
        tracing::info!(source = %self.name, next_sequence = next, "nats: the stream is read to where it ended when the run started");
    }

    /// Acknowledges the chunks whose rows are durable (the last message of the newest one:
    /// `AckPolicy::All` acknowledges every earlier message with it).
    fn acknowledge(&mut self, ctx: &ReaderContext) {
        let Some(durable) = ctx.progress.committable(self.info.id) else {
            return;
        };
        let mut last = None;
        while self.acks.front().is_some_and(|(next, _)| *next <= durable) {
            last = self.acks.pop_front();
        }
        let (Some((next, reply)), Some(conn)) = (last, &self.conn) else {
            return;
        };
        let client = conn.client.client().clone();
        // fire and forget: a lost acknowledgement is a redelivery, which the reader drops
        if let Err(e) = self.rt.block_on(client.publish(reply, "+ACK".into())) {
            tracing::warn!(source = %self.name, error = %e, "nats: an acknowledgement was not sent; the server delivers those messages again after ack_wait");
        }
        // (durable whether or not the server got it)
        self.floor_next = self.floor_next.max(Some(next));
    }

    /// Pulls messages for up to `wait` (then what already arrived); whether any came.
    fn poll_round(&mut self, ctx: &ReaderContext, wait: Duration) -> Result<bool, EngineError> {
        if self.conn.is_none() {
            match self.connect(ctx) {
                Ok(()) => {
                    if self.failing_since.take().is_some() {
                        tracing::info!(source = %self.name, "nats: connected again");
                    }
                }
                Err(e) if e.is_permanent() => return Err(self.err(e)),
                Err(e) => {
                    let since = *self.failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(source = %self.name, error = %e.chain(), down_s = since.elapsed().as_secs(), "nats: cannot connect; retrying");
                    std::thread::sleep(RECONNECT_WAIT);
                    return Ok(false);
                }
            }
        }
        let (rt, Some(conn)) = (self.rt, &mut self.conn) else {
            return Ok(false);
        };
        // what the pulling task queued; else the first batch within `wait`
        let fetcher = &mut conn.fetcher;
        let first = match fetcher.try_next() {
            Some(f) => f,
            // (the timer is made inside the runtime: it needs its reactor)
            None => match rt.block_on(async { tokio::time::timeout(wait, fetcher.next()).await }) {
                Ok(f) => f,
                Err(_) => return Ok(false),
            },
        };
        let (mut batches, mut failure, mut n) = (Vec::new(), None, 0);
        let mut next = Some(first);
        while let Some(f) = next.take() {
            match f {
                Fetched::Messages(m) => {
                    n += m.len();
                    batches.push(m);
                }
                other => {
                    failure = Some(other);
                    break;
                }
            }
            if n < CHUNK_MESSAGES {
                next = fetcher.try_next();
            }
        }
        for m in batches.into_iter().flatten() {
            // (deliveries lost on the way: what follows comes again from a new consumer)
            if self.conn.is_none() {
                break;
            }
            self.place(m, ctx);
        }
        if let Some(f) = failure {
            self.pull_failed(f)?;
        }
        Ok(n > 0)
    }

    /// A failure of the message stream: transient ones (a missed heartbeat while the server
    /// restarts) are logged and the client goes on; a consumer deleted or a stream that ended
    /// is set up again from the sequence read next; a refusal for good is an error.
    fn pull_failed(&mut self, f: Fetched) -> Result<(), EngineError> {
        let e = match f {
            Fetched::Failed(e) => e,
            Fetched::Messages(_) | Fetched::Ended => {
                tracing::warn!(source = %self.name, "nats: the message stream ended; pulling again");
                self.conn = None;
                return Ok(());
            }
        };
        match e.kind() {
            MessagesErrorKind::RequestLimitExceeded | MessagesErrorKind::PushBasedConsumer => {
                Err(self.err(NatsSourceError::Refused {
                    consumer: self.config.consumer.clone(),
                    source: Box::new(e),
                }))
            }
            MessagesErrorKind::ConsumerDeleted => {
                tracing::warn!(source = %self.name, consumer = %self.config.consumer, "nats: the consumer was deleted; creating it again at the sequence read next");
                self.conn = None;
                Ok(())
            }
            // a pull request that nothing answered: the consumer may be gone (deleted while
            // no request waited), or JetStream is not there for a moment
            MessagesErrorKind::NoResponders => {
                tracing::warn!(source = %self.name, error = %e, "nats: a pull request had no responder; checking the consumer");
                self.check_consumer_exists();
                Ok(())
            }
            _ => {
                tracing::warn!(source = %self.name, error = %e, "nats: pulling failed (the client reconnects and pulls again)");
                Ok(())
            }
        }
    }

    /// After a quiet round: hands an old buffer over, marks the stream idle, and with
    /// `until_caught_up` asks the server whether anything is left to read.
    fn housekeeping(&mut self, ctx: &ReaderContext, quiet: bool) -> Result<(), EngineError> {
        if self
            .buffer
            .since()
            .is_some_and(|t| quiet || t.elapsed() >= CHUNK_AGE)
        {
            self.hand_over();
        }
        if let Some(idle) = self.config.idle_timeout {
            if quiet && self.pending == 0 && self.last_message.elapsed() >= idle {
                ctx.clocks.partition(self.info.id).set_idle(true);
            }
        }
        // (a consumer that acknowledges nothing never stops at `max_ack_pending`)
        if let (Some(conn), NatsAckPolicy::All) = (&mut self.conn, self.config.ack_policy) {
            let (rt, owed) = (self.rt, !self.acks.is_empty());
            let (at, limit) = ((self.source, self.info.id), self.config.max_ack_pending);
            let consumer = &mut conn.consumer;
            let since = self.last_message;
            self.stall
                .check(ctx, at, &self.name, since, owed, limit, rt, consumer);
        }
        if !quiet || self.ended {
            return Ok(());
        }
        // the consumer's state is read while quiet: to end a reading until caught up, and to
        // find deliveries lost on the way with nothing after them to show the gap
        let silent = self.last_message.elapsed() >= LOST_AFTER;
        let every = if self.target.is_some() {
            CHECK_EVERY
        } else {
            LOST_AFTER
        };
        if self.last_check.elapsed() < every || (self.target.is_none() && !silent) {
            return Ok(());
        }
        self.last_check = Instant::now();
        if let Some(target) = self.target {
            if self.read_next.is_some_and(|n| n > target) || target == 0 {
                self.end(ctx);
                return Ok(());
            }
        }
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        let (num_pending, delivered, delivered_stream, created) = match self
            .rt
            .block_on(conn.consumer.info())
        {
            Ok(info) => (
                info.num_pending,
                info.delivered.consumer_sequence,
                info.delivered.stream_sequence,
                nanos(info.created.unix_timestamp_nanos()),
            ),
            Err(e) if consumer_gone(e.kind()) => {
                self.confirm_gone();
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "nats: cannot read the consumer's state (retrying)");
                return Ok(());
            }
        };
        // another consumer under its name (the stream and the consumer created again by
        // someone else, before anything was delivered to show it)
        if self.consumer_created != 0 && created != self.consumer_created {
            self.not_ours();
            return Ok(());
        }
        let read_next = self.read_next.unwrap_or(1);
        // delivered past the reader's position, and nothing came for a while
        if silent && delivered > self.received && delivered_stream >= read_next {
            self.lost_on_the_way(delivered - self.received, delivered_stream);
            return Ok(());
        }
        // nothing matching the filters is left, and everything delivered was read (the
        // consumer delivered nothing more, or nothing past the reader: a consumer placed
        // after messages the stream deleted reports it delivered up to them)
        if self.target.is_some()
            && num_pending == 0
            && (delivered <= self.received || delivered_stream < read_next)
        {
            self.end(ctx);
        }
        Ok(())
    }

    /// Drops the connection when the consumer (or its stream) is not there any more: the next
    /// round creates it again.
    fn check_consumer_exists(&mut self) {
        let Some(conn) = &self.conn else {
            return;
        };
        match self.rt.block_on(conn.consumer.get_info()) {
            Err(e) if consumer_gone(e.kind()) => self.confirm_gone(),
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "nats: cannot read the consumer's state (pulling again)");
            }
            Ok(_) => {}
        }
    }

    /// The server said the consumer is not there: asked again after [`GONE_CONFIRM`] (a
    /// cluster recovering its metadata may not find it for a moment, and creating it again
    /// without cause would, on an interest stream, drop what it had not acknowledged), and
    /// given up for gone when it still is not.
    fn confirm_gone(&mut self) {
        std::thread::sleep(GONE_CONFIRM);
        let Some(conn) = &self.conn else {
            return;
        };
        if let Err(e) = self.rt.block_on(conn.consumer.get_info()) {
            if consumer_gone(e.kind()) {
                self.consumer_gone();
            }
        }
    }

    /// Whether the consumer is the one the connection created or kept (its creation time);
    /// when it is not, or cannot be read, the connection is dropped: connecting again checks
    /// the stream and puts a consumer where the reader stands.
    fn consumer_is_ours(&mut self) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        match self.rt.block_on(conn.consumer.get_info()) {
            Ok(info) => {
                let created = nanos(info.created.unix_timestamp_nanos());
                if self.consumer_created == 0 || created == self.consumer_created {
                    return true;
                }
                self.not_ours();
            }
            Err(e) if consumer_gone(e.kind()) => {
                // (said so when it stays gone; found again, it is asked for again anyway)
                self.confirm_gone();
                self.conn = None;
            }
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "nats: cannot read the consumer's state at its first delivery; connecting again");
                self.conn = None;
            }
        }
        false
    }

    /// The consumer under the reader's name is another one: connects again.
    fn not_ours(&mut self) {
        tracing::warn!(source = %self.name, consumer = %self.config.consumer, "nats: the consumer is not the one this reader connected to (created again by someone else); connecting again");
        self.conn = None;
    }

    /// A delivery numbered at or below the last one: the server went back to a state it had
    /// saved (a restart, a restored backup), or the stream and the consumer were created
    /// again by someone else. Connecting again checks the stream (its creation time, its
    /// end) and puts the consumer where the reader stands; what it delivers again that the
    /// reader read already is dropped.
    fn deliveries_went_back(&mut self, number: u64, seq: u64) {
        tracing::warn!(source = %self.name, consumer = %self.config.consumer, delivery = number, last_delivery = self.received, stream_sequence = seq, "nats: the consumer's deliveries went back (the server returned to a state it had saved, or the stream and the consumer were created again); connecting again");
        self.conn = None;
    }

    fn consumer_gone(&mut self) {
        tracing::warn!(source = %self.name, consumer = %self.config.consumer, "nats: the consumer is gone (deleted on the server); creating it again where the reading stands");
        self.conn = None;
    }
}

/// A consumer information error that says the consumer is not there.
fn consumer_gone(kind: ConsumerInfoErrorKind) -> bool {
    matches!(
        kind,
        ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
    )
}

impl PartitionReader for NatsReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        self.start(ctx)?;
        loop {
            match self.step(ctx, POLL_WAIT)? {
                Step::Chunk(c) => return Ok(Some(c)),
                Step::Done => return Ok(None),
                Step::Quiet => {}
            }
        }
    }

    fn finish(&mut self, ctx: &ReaderContext) -> Result<(), EngineError> {
        self.log_expired(None);
        self.acknowledge(ctx);
        if let Some(conn) = &self.conn {
            let client = conn.client.client().clone();
            let flushed = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.flush()).await
            });
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!(source = %self.name, "nats: the last acknowledgements were not confirmed sent; the server delivers those messages again");
            }
        }
        Ok(())
    }
}
