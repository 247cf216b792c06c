//! The JetStream side of the source: the stream, the durable pull consumer (created or put
//! where weir's position says) and its message stream.

use std::time::Duration;

use crate::{NatsError, OwnedClient};
use async_nats::jetstream::consumer::pull::{Config as PullConfig, Stream as PullStream};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{RetentionPolicy, Stream};
use async_nats::jetstream::{self};

use super::fetch::Fetcher;
use super::{NatsAckPolicy, NatsSourceConfig, NatsStartFrom, START_METADATA};

/// A NATS source failure, by kind, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum NatsSourceError {
    /// No connection (see [`NatsError`]).
    #[error(transparent)]
    Connect(#[from] NatsError),
    /// The stream is missing or its information could not be read.
    #[error("cannot read JetStream stream `{stream}` (does it exist?)")]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The durable consumer could not be read, deleted or created.
    #[error("cannot {what} the durable consumer `{consumer}` of stream `{stream}`")]
    Consumer {
        what: &'static str,
        stream: String,
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The consumer's pull requests could not start.
    #[error("cannot pull from the consumer `{consumer}`")]
    Pull {
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stream's retention is one the source cannot read with exactly-once restores.
    #[error("stream `{stream}` has work-queue retention, which the nats source does not read: a work queue deletes each message once acknowledged and allows only a consumer that delivers everything with explicit acknowledgements, so a restore could not read again what its checkpoint does not hold; read a stream with limits or interest retention (one may source this subject space) instead")]
    WorkQueue { stream: String },
    /// The stream ends before where the source continues: it was created again.
    #[error("stream `{stream}` ends at sequence {last}, before sequence {next} where this source continues (its checkpoint, or what it read): the stream was deleted and created again, restored from an older copy, or lost its last messages (memory storage after a restart, a crash before they were synced), and its messages cannot be told from those already counted; if it is another stream, keep the old checkpoint (if any) for its results and give `checkpoint.dir` a new place (or delete it) to read the stream from `start_from`")]
    StreamBehind {
        stream: String,
        next: u64,
        last: u64,
    },
    /// The stream was created again since the source's position was taken (its creation
    /// time differs): its sequences started over and cannot continue that position.
    #[error("stream `{stream}` was created at {}, not at {} as when this source's position was taken (its checkpoint, or what it read): the stream was deleted and created again, and its sequences, which started again at 1, cannot be told from those already counted; to read the new stream, keep the old checkpoint (if any) for its results and give `checkpoint.dir` a new place (or delete it) to read it from `start_from`; if it holds the same messages as the old one, and more (a backup restored into a cluster, which dates it anew; a mirror created again), set the source's `accept_new_stream: \"{}\"` to continue the position in it", time_of(*.now), time_of(*.then), time_of(*.now))]
    StreamReplaced { stream: String, then: u64, now: u64 },
    /// The stream's subject transform numbers partitions other than `partitions.count`
    /// does: messages of the partitions past it would be read by no consumer.
    #[error("stream `{stream}` numbers its subject partitions with `{destination}` ({transform} partitions), but the source's `partitions.count` is {count}: the messages of partitions no consumer reads would be lost, unread and uncounted; set `partitions.count: {transform}`, or re-key the stream (a new stream, and a new `checkpoint.dir`) to {count} partitions")]
    PartitionCount {
        stream: String,
        destination: String,
        transform: u32,
        count: u32,
    },
    /// The server refused the pull requests for good (a consumer limit).
    #[error("the server refused the pull requests of consumer `{consumer}`")]
    Refused {
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NatsSourceError {
    /// An error that connecting again cannot mend: a run connecting again fails with it.
    /// (A stream behind the source is not one: it may be a mirror catching up, or a start
    /// sequence the stream has not reached; it is retried, and logged at every try.)
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            NatsSourceError::WorkQueue { .. }
                | NatsSourceError::StreamReplaced { .. }
                | NatsSourceError::PartitionCount { .. }
        )
    }

    /// The error and its causes on one line.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }
}

/// Refuses a subject partition of a stream whose subject transform numbers another count of
/// partitions (`partition(N, …)` with `N` not `partitions.count`).
fn check_partition_count(cfg: &NatsSourceConfig, stream: &Stream) -> Result<(), NatsSourceError> {
    let Some(count) = cfg.partition_count else {
        return Ok(());
    };
    let Some(t) = stream.cached_info().config.subject_transform.as_ref() else {
        return Ok(());
    };
    match transform_partitions(&t.destination) {
        Some(n) if n != count => Err(NatsSourceError::PartitionCount {
            stream: cfg.stream.clone(),
            destination: t.destination.clone(),
            transform: n,
            count,
        }),
        _ => Ok(()),
    }
}

/// The `N` of the first `partition(N, …)` in a subject transform's destination.
fn transform_partitions(destination: &str) -> Option<u32> {
    let at = destination.find("partition(")?;
    let rest = &destination[at + "partition(".len()..];
    let end = rest.find([',', ')'])?;
    rest[..end].trim().parse().ok()
}

/// A stream's creation time (ns since the epoch, its incarnation) as RFC 3339, to the ms.
fn time_of(ns: u64) -> String {
    weir_engine::time::format_rfc3339_ms(created_ms(ns))
}

/// A creation time in ns, in ms (as `accept_new_stream` names it).
fn created_ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

/// A connected source: the client, the consumer and the task pulling its messages. Dropping
/// it stops the pulling and closes the connection (its tasks on the I/O runtime end).
pub(super) struct Connection {
    pub(super) fetcher: Fetcher,
    pub(super) consumer: PullConsumer,
    pub(super) client: OwnedClient,
}

fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Where a consumer weir creates starts: the checkpoint's sequence, or `start_from`.
fn deliver_policy(start: Option<u64>, from: NatsStartFrom) -> DeliverPolicy {
    match (start, from) {
        (Some(seq), _) | (None, NatsStartFrom::Sequence(seq)) => DeliverPolicy::ByStartSequence {
            start_sequence: seq.max(1),
        },
        (None, NatsStartFrom::Earliest) => DeliverPolicy::All,
        (None, NatsStartFrom::Latest) => DeliverPolicy::New,
        (None, NatsStartFrom::Time(ms)) => {
            match async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000) {
                Ok(start_time) => DeliverPolicy::ByStartTime { start_time },
                Err(_) => DeliverPolicy::All,
            }
        }
    }
}

/// The consumer's configuration with ack policy `policy` (see the connector's docs for the
/// defaults). `origin`: where the reading starts when no checkpoint says (see [`start_of`]),
/// kept in the metadata.
pub(super) fn consumer_config(
    cfg: &NatsSourceConfig,
    policy: NatsAckPolicy,
    deliver: DeliverPolicy,
    origin: Option<u64>,
) -> PullConfig {
    let mut config = PullConfig {
        durable_name: Some(cfg.consumer.clone()),
        description: Some("weir source (positions live in weir's checkpoints)".into()),
        deliver_policy: deliver,
        filter_subjects: cfg.subjects.clone(),
        inactive_threshold: cfg.delete_after.unwrap_or_default(),
        metadata: origin
            .map(|o| [(START_METADATA.to_string(), o.to_string())].into())
            .unwrap_or_default(),
        ..Default::default()
    };
    match policy {
        NatsAckPolicy::All => {
            config.ack_policy = AckPolicy::All;
            config.ack_wait = cfg.ack_wait;
            config.max_ack_pending = cfg.max_ack_pending;
        }
        NatsAckPolicy::None => config.ack_policy = AckPolicy::None,
    }
    config
}

/// Where a consumer created again starts, and the origin its metadata keeps: the sequence a
/// later run without checkpoint starts at again (rather than at a later "latest", or past
/// rows that were delivered but never made durable).
/// * At a checkpoint's sequence: the origin `kept` stays.
/// * After an acknowledgement floor: that is where the reading starts without a checkpoint,
///   and the new origin.
/// * Else at the origin kept, if any; else where `start_from` says, `latest` pinned to the
///   sequence after the stream's `last` (the new origin).
pub(crate) fn start_of(
    place: Placement,
    from: NatsStartFrom,
    kept: Option<u64>,
    last: u64,
) -> (DeliverPolicy, Option<u64>) {
    let at = |start_sequence: u64| DeliverPolicy::ByStartSequence {
        start_sequence: start_sequence.max(1),
    };
    match (place, kept, from) {
        (Placement::Checkpoint(seq), _, _) => (at(seq), kept),
        (Placement::Floor(seq), _, _) => (at(seq), Some(seq)),
        (_, Some(origin), _) => (at(origin), Some(origin)),
        (_, None, NatsStartFrom::Latest) => (at(last + 1), Some(last + 1)),
        (_, None, _) => (deliver_policy(None, from), None),
    }
}

/// What [`placement`] needs of an existing consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Existing {
    /// Its ack policy is `All` (weir's own consumers with acknowledgements).
    pub ack_all: bool,
    /// It acknowledges at all (`All` or `Explicit`; not `None`).
    pub acknowledges: bool,
    /// Messages delivered and not acknowledged.
    pub ack_pending: u64,
    /// Its subject filters are the pipeline's.
    pub same_filter: bool,
    /// Its acknowledgement floor (0: nothing acknowledged).
    pub floor: u64,
    /// Where a run without checkpoint starts (its metadata, see [`start_of`]).
    pub origin: Option<u64>,
}

/// Where [`connect`] puts the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The existing consumer continues where it is.
    Keep,
    /// Created again at a checkpoint's sequence.
    Checkpoint(u64),
    /// Created again after an acknowledgement floor (this sequence).
    Floor(u64),
    /// Created again where the pipeline's reading started ([`start_of`]).
    Origin,
}

/// Where [`connect`] puts the consumer:
/// * A checkpoint's sequence (`resume`) wins, whatever the server remembers.
/// * An `All` consumer of the same filters with nothing pending continues where it is (in
///   `all` mode; a pipeline that switched to `none` creates it again at the same place).
/// * Else an acknowledgement floor is a durable position (acknowledgements follow
///   durability), so the reading continues after it.
/// * A `None` consumer acknowledged nothing: its delivered position may be past rows that were
///   never made durable, so a run without checkpoint starts where the reading started.
pub(crate) fn placement(
    policy: NatsAckPolicy,
    resume: Option<u64>,
    existing: Option<Existing>,
) -> Placement {
    if let Some(seq) = resume {
        return Placement::Checkpoint(seq);
    }
    let Some(e) = existing else {
        return Placement::Origin;
    };
    if !e.acknowledges {
        Placement::Origin
    } else if e.ack_all && policy == NatsAckPolicy::All && e.ack_pending == 0 && e.same_filter {
        Placement::Keep
    } else if e.floor > 0 {
        Placement::Floor(e.floor + 1)
    } else {
        Placement::Origin
    }
}

/// The policy a consumer of `stream` gets: `none` only on a stream that keeps its messages by
/// limits. A stream with interest retention deletes a message once every consumer
/// acknowledged it, at once when the consumer acknowledges nothing: a restore could not read
/// again what the checkpoint does not hold. Such a stream gets `all` (acknowledgements after
/// each checkpoint), with a warning. (Work-queue streams are refused: [`connect`].)
fn effective_policy(cfg: &NatsSourceConfig, stream: &Stream) -> NatsAckPolicy {
    let retention = stream.cached_info().config.retention;
    if cfg.ack_policy == NatsAckPolicy::None && retention != RetentionPolicy::Limits {
        tracing::warn!(stream = %cfg.stream, consumer = %cfg.consumer, ?retention, "nats: the stream deletes messages once consumed, so this consumer acknowledges after each checkpoint (ack_policy all) instead of none");
        return NatsAckPolicy::All;
    }
    cfg.ack_policy
}

/// Runs `look` on a JetStream context of a connection made for it (a one-off look at
/// `cfg`'s stream), on the process's I/O runtime.
fn look_at_stream<T>(
    cfg: &NatsSourceConfig,
    look: impl AsyncFnOnce(&jetstream::Context) -> Result<T, NatsSourceError>,
) -> Result<T, NatsSourceError> {
    let rt = weir_engine::io::runtime().map_err(|e| NatsSourceError::Stream {
        stream: cfg.stream.clone(),
        source: boxed(e),
    })?;
    rt.block_on(async {
        let client = OwnedClient::new(cfg.endpoint.connect().await?, rt.handle().clone());
        look(&jetstream::new(client.client().clone())).await
    })
}

/// The first sequence of the stream at or after `from_ms` and the first at or after `to_ms`
/// (of the messages the subject filters match, by the time the server stored them; the
/// sequence after the last one when none is), and the stream's last sequence. For a replay.
pub fn sequence_range(
    cfg: &NatsSourceConfig,
    (from_ms, to_ms): (i64, i64),
) -> Result<(u64, u64, u64), NatsSourceError> {
    look_at_stream(cfg, async |js| {
        let (stream, _, last, _) = stream_and_range(js, cfg).await?;
        if stream.cached_info().config.retention == RetentionPolicy::WorkQueue {
            return Err(NatsSourceError::WorkQueue {
                stream: cfg.stream.clone(),
            });
        }
        let from = first_at(&stream, cfg, from_ms, last).await?;
        let to = first_at(&stream, cfg, to_ms, last).await?;
        Ok((from, to.max(from), last))
    })
}

/// The stream's last sequence now: reading until caught up, the end of a pool worker that
/// reads no partition yet.
pub fn last_sequence(cfg: &NatsSourceConfig) -> Result<u64, NatsSourceError> {
    look_at_stream(cfg, async |js| Ok(stream_and_range(js, cfg).await?.2))
}

/// The sequence of the first message at or after `ms` the filters match (`last + 1` when
/// none is), read with a short-lived consumer.
async fn first_at(
    stream: &Stream,
    cfg: &NatsSourceConfig,
    ms: i64,
    last: u64,
) -> Result<u64, NatsSourceError> {
    let consumer_err = |e: Box<dyn std::error::Error + Send + Sync>| NatsSourceError::Consumer {
        what: "create a probe of",
        stream: cfg.stream.clone(),
        consumer: "(ephemeral)".into(),
        source: e,
    };
    let config = PullConfig {
        deliver_policy: deliver_policy(None, NatsStartFrom::Time(ms)),
        ack_policy: AckPolicy::None,
        filter_subjects: cfg.subjects.clone(),
        inactive_threshold: Duration::from_secs(10),
        ..Default::default()
    };
    let consumer: PullConsumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| consumer_err(boxed(e)))?;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .map_err(|e| consumer_err(boxed(e)))?;
    let seq = match futures_util::StreamExt::next(&mut batch).await {
        Some(Ok(m)) => m.info().map(|i| i.stream_sequence).map_err(consumer_err)?,
        _ => last + 1,
    };
    let name = consumer.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(seq)
}

/// The configured stream, the first sequence it holds, its last sequence now and its
/// creation time (ns since the epoch: its incarnation, 0 if the server gives none). A
/// replicated stream without a leader is an error to retry: each replica then answers with
/// its own state, which may lag behind what was read.
async fn stream_and_range(
    js: &jetstream::Context,
    cfg: &NatsSourceConfig,
) -> Result<(Stream, u64, u64, u64), NatsSourceError> {
    let stream_err = |e: Box<dyn std::error::Error + Send + Sync>| NatsSourceError::Stream {
        stream: cfg.stream.clone(),
        source: e,
    };
    let mut stream = js
        .get_stream(&cfg.stream)
        .await
        .map_err(|e| stream_err(boxed(e)))?;
    let info = stream.info().await.map_err(|e| stream_err(boxed(e)))?;
    if info.cluster.as_ref().is_some_and(|c| c.leader.is_none()) {
        return Err(stream_err(
            "the stream's replicas have no leader (waiting for one)".into(),
        ));
    }
    let created = nanos(info.created.unix_timestamp_nanos());
    let state = info.state.clone();
    Ok((stream, state.first_sequence, state.last_sequence, created))
}

/// How long a hold left behind by a crash keeps the stream's messages (see [`create_hold`]).
const HOLD_INACTIVE: Duration = Duration::from_secs(3600);
/// The metadata key that marks a hold, with the consumer it holds for as value.
const HOLD_METADATA: &str = "weir_hold_of";

/// On an interest stream, where a consumer created again starts: a checkpoint's sequence
/// moves back to the first message the old consumer did not acknowledge (`floor + 1`), which
/// the stream deletes once no consumer needs it, should a later restore need it (the reader
/// drops what comes before the checkpoint's sequence). Other starts stay.
pub(crate) fn unacknowledged_start(
    place: Placement,
    deliver: DeliverPolicy,
    floor: u64,
) -> DeliverPolicy {
    match (place, deliver) {
        (Placement::Checkpoint(_), DeliverPolicy::ByStartSequence { start_sequence }) => {
            DeliverPolicy::ByStartSequence {
                start_sequence: start_sequence.min(floor + 1).max(1),
            }
        }
        (_, deliver) => deliver,
    }
}

/// Creates a hold: a consumer `<consumer>-hold-<ms>` of the stream, configured like the one
/// about to be created (`config`, its origin included), marked in its metadata, that keeps an
/// interest stream's messages from its start while that consumer is deleted and created again
/// (deleting the only consumer of an interest stream deletes every message it had not
/// acknowledged). A hold that a crash left behind stands for the consumer until it is created
/// again (see [`holds_of`]), and is deleted then, or by the server after [`HOLD_INACTIVE`].
async fn create_hold(
    stream: &Stream,
    cfg: &NatsSourceConfig,
    mut config: PullConfig,
) -> Result<String, NatsSourceError> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("{}-hold-{millis}", cfg.consumer);
    config.durable_name = Some(name.clone());
    config.description = Some(format!(
        "weir: keeps the stream's messages while `{}` is created again",
        cfg.consumer
    ));
    config.inactive_threshold = HOLD_INACTIVE;
    config
        .metadata
        .insert(HOLD_METADATA.to_string(), cfg.consumer.clone());
    stream
        .create_consumer(config)
        .await
        .map_err(|e| NatsSourceError::Consumer {
            what: "create a hold (a temporary consumer; is the stream at its max_consumers?) for",
            stream: cfg.stream.clone(),
            consumer: cfg.consumer.clone(),
            source: boxed(e),
        })?;
    Ok(name)
}

/// The holds of the consumer (marked by [`HOLD_METADATA`]), each with what it says of the
/// consumer it stands for: its floor (where it started) and origin; never kept as it is.
async fn holds_of(
    stream: &Stream,
    cfg: &NatsSourceConfig,
) -> Result<Vec<(String, Existing)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut holds = Vec::new();
    let mut listed = stream.consumers();
    while let Some(info) = futures_util::StreamExt::next(&mut listed).await {
        let info = info?;
        if info.config.metadata.get(HOLD_METADATA) == Some(&cfg.consumer) {
            let mut standing = existing_of(cfg, &info);
            standing.ack_all = false;
            holds.push((info.name.clone(), standing));
        }
    }
    Ok(holds)
}

/// Deletes the holds `names` once the consumer is created again; a failure is logged (the
/// server deletes a hold after [`HOLD_INACTIVE`]).
async fn release_holds(
    stream: &Stream,
    cfg: &NatsSourceConfig,
    names: impl Iterator<Item = String>,
) {
    for name in names {
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::warn!(stream = %cfg.stream, hold = %name, error = %e, "nats: cannot delete a hold; the server deletes it after an hour without activity");
        }
    }
}

/// What [`connect`] gives.
pub(super) struct Connected {
    pub(super) conn: Connection,
    /// On a stream with limits retention, the first sequence it holds (earlier ones were
    /// deleted by its limits or a purge). `None` elsewhere: an interest stream also drops the
    /// messages no consumer wants, which were never this source's.
    pub(super) first: Option<u64>,
    /// Every sequence the stream skips was deleted by its limits or a purge: a stream with
    /// limits retention whose messages are deleted only by age, count or size (not a mirror,
    /// whose sequences keep its origin's gaps; no per-subject limit or rollups, which
    /// replace messages by design).
    pub(super) gaps_are_losses: bool,
    /// The stream's last sequence.
    pub(super) last: u64,
    /// The sequence the consumer delivers next (at least).
    pub(super) next: u64,
    /// The consumer sequence of the last message the consumer delivered (0: none): the
    /// next one it delivers is the one after (see the reader's gap check).
    pub(super) delivered: u64,
    /// The sequence after the consumer's acknowledgement floor.
    pub(super) floor_next: u64,
    /// The consumer's ack policy (see [`effective_policy`]).
    pub(super) policy: NatsAckPolicy,
    /// Where a run without checkpoint starts again (see [`start_of`]).
    pub(super) origin: Option<u64>,
    /// The stream's creation time (ns since the epoch; 0: unknown).
    pub(super) incarnation: u64,
    /// The consumer's creation time (ns since the epoch): another one under its name was
    /// created by someone else (see the reader's `housekeeping`).
    pub(super) consumer_created: u64,
}

/// Whether every sequence a stream with `config` skips is a message it deleted (see
/// [`Connected::gaps_are_losses`]).
fn gaps_are_losses(config: &async_nats::jetstream::stream::Config) -> bool {
    config.retention == RetentionPolicy::Limits
        && config.mirror.is_none()
        && config.max_messages_per_subject <= 0
        && !config.allow_rollup
}

/// Connects (on the current runtime, the I/O runtime: the pulling task runs there), reads the
/// stream's last sequence, and puts the durable consumer where the reader continues (see
/// [`placement`]): at `start` when given (a checkpoint's sequence, or mid-run where the
/// reader's promises allow), where `resume` is the sequence the reader continues at.
/// `origin`: the one an earlier connection learned, should the consumer be gone since.
/// `incarnation`: the stream's creation time `resume` belongs to (a checkpoint's, or an
/// earlier connection's), when known: another one is a stream created again.
pub(super) async fn connect(
    cfg: &NatsSourceConfig,
    (resume, start): (Option<u64>, Option<u64>),
    origin: Option<u64>,
    incarnation: Option<u64>,
) -> Result<Connected, NatsSourceError> {
    let client = OwnedClient::new(
        cfg.endpoint
            .connect_with_capacity(subscription_capacity(cfg.fetch_batch))
            .await?,
        tokio::runtime::Handle::current(),
    );
    let js = jetstream::new(client.client().clone());
    let (stream, first, last, created) = stream_and_range(&js, cfg).await?;
    check_partition_count(cfg, &stream)?;
    // a stream created again with as many messages as were read would pass the check below:
    // its creation time tells it (the server keeps it across restarts)
    if let Some(then) = incarnation.filter(|&t| t != 0 && created != 0 && t != created) {
        let replaced = NatsSourceError::StreamReplaced {
            stream: cfg.stream.clone(),
            then,
            now: created,
        };
        // (only the copy named: any other stream created later is refused again)
        if cfg.accept_new_stream != Some(created_ms(created)) {
            return Err(replaced);
        }
        tracing::warn!(stream = %cfg.stream, "nats: {replaced}; continuing at the position taken in the old one, as `accept_new_stream` says");
    }
    // sequences never go back in a stream (a purge keeps them): one that ends before where
    // this source continues is another stream, whose messages below `resume` would never
    // be delivered (the consumer waits at `resume`) and the reader would count the later
    // ones as continuing the checkpoint, silently
    if let Some(next) = resume.filter(|&n| n > last + 1) {
        return Err(NatsSourceError::StreamBehind {
            stream: cfg.stream.clone(),
            next,
            last,
        });
    }
    let consumer_err =
        |what, e: Box<dyn std::error::Error + Send + Sync>| NatsSourceError::Consumer {
            what,
            stream: cfg.stream.clone(),
            consumer: cfg.consumer.clone(),
            source: e,
        };
    // only a consumer that is not there is absent: any other failure must not lose its origin
    let existing = match stream.consumer_info(&cfg.consumer).await {
        Ok(info) => Some(existing_of(cfg, &info)),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => None,
        Err(e) => return Err(consumer_err("read", boxed(e))),
    };
    let retention = stream.cached_info().config.retention;
    if retention == RetentionPolicy::WorkQueue {
        return Err(NatsSourceError::WorkQueue {
            stream: cfg.stream.clone(),
        });
    }
    let interest = retention == RetentionPolicy::Interest;
    let policy = effective_policy(cfg, &stream);
    let holds = if !interest {
        Vec::new()
    } else {
        match holds_of(&stream, cfg).await {
            Ok(holds) => holds,
            // without its consumer, a hold may be all that says where the reading stood
            Err(e) if existing.is_none() => return Err(consumer_err("list the holds of", e)),
            Err(e) => {
                tracing::warn!(stream = %cfg.stream, error = %e, "nats: cannot list the stream's consumers; a hold left by a crash, if any, stays until it expires");
                Vec::new()
            }
        }
    };
    // a consumer that a crash deleted before it was created again: its hold stands for it
    let standing = existing.or_else(|| holds.iter().map(|(_, e)| *e).min_by_key(|e| e.floor));
    let kept = standing.and_then(|e| e.origin).or(origin);
    let (mut consumer, origin): (PullConsumer, _) = match placement(policy, start, standing) {
        Placement::Keep => {
            let consumer = stream
                .get_consumer(&cfg.consumer)
                .await
                .map_err(|e| consumer_err("read", e))?;
            release_holds(&stream, cfg, holds.into_iter().map(|(name, _)| name)).await;
            (consumer, kept)
        }
        place => {
            let (mut deliver, origin) = start_of(place, cfg.start_from, kept, last);
            // an interest stream deletes the messages no consumer needs any more: the new
            // consumer starts at the first one not acknowledged (the reader drops those before
            // the checkpoint's sequence) and a hold needs them while the consumer is replaced
            let mut names: Vec<String> = holds.iter().map(|(name, _)| name.clone()).collect();
            let floor = existing
                .iter()
                .chain(holds.iter().map(|(_, e)| e))
                .map(|e| e.floor)
                .min();
            if let (true, Some(floor)) = (interest, floor) {
                deliver = unacknowledged_start(place, deliver, floor);
                if existing.is_some() {
                    let config = consumer_config(cfg, NatsAckPolicy::All, deliver, origin);
                    names.push(create_hold(&stream, cfg, config).await?);
                }
            }
            // repositioned: a consumer's start cannot change, so it is created again
            if let Err(e) = stream.delete_consumer(&cfg.consumer).await {
                // a consumer that is not there is fine; one that stays is not
                if stream
                    .get_consumer::<PullConfig>(&cfg.consumer)
                    .await
                    .is_ok()
                {
                    return Err(consumer_err("delete", boxed(e)));
                }
            }
            weir_engine::checkpoint::failpoint("nats_consumer_deleted");
            let config = consumer_config(cfg, policy, deliver, origin);
            let consumer = stream
                .create_consumer(config)
                .await
                .map_err(|e| consumer_err("create", boxed(e)))?;
            release_holds(&stream, cfg, names.into_iter()).await;
            (consumer, origin)
        }
    };
    let info = consumer
        .info()
        .await
        .map_err(|e| consumer_err("read", boxed(e)))?;
    let (delivered, floor) = (info.delivered, info.ack_floor.stream_sequence);
    let consumer_created = nanos(info.created.unix_timestamp_nanos());
    let messages = pull(&consumer, cfg).await?;
    Ok(Connected {
        conn: Connection {
            fetcher: Fetcher::spawn(messages),
            consumer,
            client,
        },
        first: (retention == RetentionPolicy::Limits).then_some(first),
        gaps_are_losses: gaps_are_losses(&stream.cached_info().config),
        last,
        next: delivered.stream_sequence + 1,
        delivered: delivered.consumer_sequence,
        floor_next: floor + 1,
        policy,
        origin,
        incarnation: created,
        consumer_created,
    })
}

/// A creation time given in ns since the epoch, as kept (0 before it, or when the server
/// gave none).
pub(super) fn nanos(unix_ns: i128) -> u64 {
    u64::try_from(unix_ns).unwrap_or(0)
}

/// What [`placement`] needs of an existing consumer's `info`.
fn existing_of(cfg: &NatsSourceConfig, info: &async_nats::jetstream::consumer::Info) -> Existing {
    let same_filter = info.config.filter_subjects == cfg.subjects
        || (cfg.subjects.len() == 1
            && info.config.filter_subject == cfg.subjects[0]
            && info.config.filter_subjects.is_empty());
    Existing {
        ack_all: info.config.ack_policy == AckPolicy::All,
        acknowledges: info.config.ack_policy != AckPolicy::None,
        ack_pending: info.num_ack_pending as u64,
        same_filter,
        floor: info.ack_floor.stream_sequence,
        origin: info
            .config
            .metadata
            .get(START_METADATA)
            .and_then(|v| v.parse().ok()),
    }
}

/// What the client's subscription must buffer for the pull requests of `fetch_batch`
/// messages (the client drops what comes past its buffer): the next request goes when half
/// of one is left, so one and a half batches are on their way while the messages are taken;
/// while they are not (the reader's queue full), the client's pulling task still sends up to
/// two requests more (one when a request expires, one on a reconnection), so three and a half.
pub(crate) fn subscription_capacity(fetch_batch: usize) -> usize {
    fetch_batch
        .saturating_mul(4)
        .saturating_add(1024)
        .max(crate::DEFAULT_SUBSCRIPTION_CAPACITY)
}

/// The consumer's message stream: pull requests of `fetch_batch` messages, heartbeats every
/// 5 s (a server gone quiet is noticed and the pull renewed).
pub(super) async fn pull(
    consumer: &PullConsumer,
    cfg: &NatsSourceConfig,
) -> Result<PullStream, NatsSourceError> {
    consumer
        .stream()
        .max_messages_per_batch(cfg.fetch_batch.max(1))
        .expires(Duration::from_secs(10))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| NatsSourceError::Pull {
            consumer: cfg.consumer.clone(),
            source: boxed(e),
        })
}

#[cfg(test)]
mod tests {
    use super::transform_partitions;

    #[test]
    fn a_transforms_partition_count_is_read() {
        assert_eq!(
            transform_partitions("events.{{partition(4,1)}}.{{wildcard(1)}}"),
            Some(4)
        );
        assert_eq!(
            transform_partitions("e.{{ partition( 16 , 1, 2) }}"),
            Some(16)
        );
        assert_eq!(transform_partitions("events.{{wildcard(1)}}"), None);
        assert_eq!(transform_partitions("events.{{partition(x,1)}}"), None);
    }
}
