//! The NATS JetStream source: a durable pull consumer on one stream, read as **one
//! partition** (the stream: its sequence is the partition's offset), or as subject
//! partitions (below).
//!
//! * Positions. The partition key in checkpoints is `stream`; its position is the stream
//!   sequence after the last message read. weir's checkpoint is the truth: a run restored from
//!   a checkpoint deletes the durable consumer and creates it again at that sequence
//!   (`DeliverPolicy::ByStartSequence`), whatever the server remembers. Without a checkpoint,
//!   an existing consumer that acknowledges continues from its acknowledgement floor (messages
//!   delivered to an earlier run but not acknowledged are read again at once, not after
//!   `ack_wait`); one that acknowledges nothing, or a missing one, starts where the reading
//!   first started (see `consumer::start_of`).
//! * Acknowledgements ([`NatsAckPolicy`]). With `all` (`AckPolicy::All`, the default without
//!   checkpoints), messages are acknowledged once [`Progress`] says the rows they carry are
//!   durable: in the outputs (at least once), or in a complete checkpoint. Acknowledging the
//!   last message of a chunk acknowledges every earlier one, so the reader keeps one reply
//!   subject per chunk. With `none` (`AckPolicy::None`, the default with checkpoints), nothing
//!   is acknowledged: the checkpoint is the only position a restart trusts anyway, and the
//!   server then keeps no per-message pending state (which costs it about 40% more CPU per
//!   message, see the connector's docs). Without a checkpoint such a consumer starts again
//!   where the reading started (`start_from`, or the sequence kept in the consumer's metadata
//!   [`START_METADATA`]: where `latest` stood, or the floor it continued from).
//! * Pulling and backpressure. A task on the process's I/O runtime ([`weir_engine::io`])
//!   keeps the client's pull requests (of `fetch_batch` messages) outstanding and queues what
//!   arrives, a bounded queue of batches ([`fetch`]): the workers never wait for a pull's
//!   round trip. A full queue stops the pulling; the server also stops delivering at
//!   `max_ack_pending` unacknowledged messages.
//! * Connections. Each reader (each subject partition's) has its own connection on the
//!   shared I/O runtime; a reader dropped, or a connection it replaces, is drained and closed
//!   at once ([`crate::OwnedClient`]), so that jobs that restart and pool workers that
//!   open and close readers leave no connection or task behind.
//! * Watermarks. One partition per stream: the watermark is the largest event time read minus
//!   `max_out_of_orderness`, across every subject of the stream.
//! * Subject partitions ([`NatsPartitions`]): a stream whose subjects carry a partition
//!   number is read as that many partitions ([`NatsPartitionsReader`]), one filtered durable
//!   consumer `<consumer>-p<n>` each, with its own key `nats/<stream>/<n>`, sequence and
//!   watermark; a worker pool shares them ([`pool`]).
//! * Redeliveries (after `ack_wait`) and server restarts: the client reconnects by itself; a
//!   message at a sequence the reader already passed is dropped.

pub(crate) mod consumer;
mod fetch;
mod partitions;
pub mod pool;
mod reader;
mod stall;
#[cfg(test)]
mod tests;

pub use consumer::{last_sequence, sequence_range, NatsSourceError};
pub use partitions::NatsPartitionsReader;
pub use reader::NatsReader;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::NatsEndpoint;

/// Where a consumer that weir creates starts (an existing consumer, or a checkpoint, decide
/// otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsStartFrom {
    /// The first message still in the stream.
    Earliest,
    /// Only messages published after the consumer is created.
    Latest,
    /// The first message stored at or after this time (epoch ms).
    Time(i64),
    /// The message at this stream sequence (or the next one present).
    Sequence(u64),
}

/// Default `ack_wait`: how long the server waits for an acknowledgement before delivering a
/// message again. Longer than a typical window, since rows are acknowledged once durable.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(300);
/// Default `max_ack_pending`: unacknowledged messages after which the server stops delivering.
/// It must exceed the messages of the longest open window (see the connector's docs).
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1_000_000;
/// Default `fetch_batch`: messages one pull request asks for.
pub const DEFAULT_FETCH_BATCH: usize = 1_000;

/// Whether and when the source acknowledges messages (the consumer's JetStream ack policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsAckPolicy {
    /// `AckPolicy::All`: once the rows they carry are durable (in the outputs, or in a complete
    /// checkpoint); `ack_wait` and `max_ack_pending` apply.
    All,
    /// `AckPolicy::None`: never; the position lives in weir's checkpoints only (requires them).
    None,
}

/// The consumer metadata key holding the stream sequence a run without checkpoint starts at
/// again: the one `start_from: latest` stood for, or the acknowledgement floor a consumer
/// continued from (see `consumer::start_of`).
pub const START_METADATA: &str = "weir_start_sequence";

/// What the NATS source reads.
#[derive(Debug, Clone)]
pub struct NatsSourceConfig {
    pub endpoint: NatsEndpoint,
    /// The JetStream stream.
    pub stream: String,
    /// Subject filters (wildcards allowed); empty: every subject of the stream.
    pub subjects: Vec<String>,
    /// The durable consumer's name.
    pub consumer: String,
    pub start_from: NatsStartFrom,
    pub ack_policy: NatsAckPolicy,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub fetch_batch: usize,
    /// The stream silent this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
    /// End once the stream's last sequence when the reader connected is read.
    pub until_caught_up: bool,
    /// With `until_caught_up`: end at this sequence instead (a replay's range), at most the
    /// stream's last sequence.
    pub end_sequence: Option<u64>,
    /// Keep message headers, for the `_headers` column.
    pub with_headers: bool,
    /// Where the reader stores the sequence after the last message read (progress bars).
    pub read_sequence: Option<Arc<AtomicU64>>,
    /// The server deletes the consumer once unused this long (a replay's consumer); `None`:
    /// it stays (a durable consumer).
    pub delete_after: Option<Duration>,
    /// Subject partitions: the stream is read as this many partitions, one filtered durable
    /// consumer each; `None`: the stream is one partition.
    pub partitions: Option<NatsPartitions>,
    /// For one subject partition of a partitioned source: how many partitions it has (its
    /// stream's subject transform must number as many).
    pub partition_count: Option<u32>,
    /// The creation time (ms since the epoch) of a stream to continue the position in,
    /// though the position was taken in another (a copy of the same stream dated anew; see
    /// `consumer::connect`).
    pub accept_new_stream: Option<i64>,
}

/// A stream split into partitions by a subject token (see the connector's docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsPartitions {
    /// How many partitions (`0..count`).
    pub count: u32,
    /// The subject filter of a partition, `{partition}` standing for its number
    /// (`events.{partition}.>`).
    pub subject: String,
}

/// What stands for the partition number in [`NatsPartitions::subject`].
pub const PARTITION_PLACEHOLDER: &str = "{partition}";

impl NatsPartitions {
    /// The subject filter of partition `n`.
    pub fn filter(&self, n: u32) -> String {
        self.subject.replace(PARTITION_PLACEHOLDER, &n.to_string())
    }
}

impl NatsSourceConfig {
    /// A config with the documented defaults.
    pub fn new(endpoint: NatsEndpoint, stream: &str, consumer: &str) -> Self {
        NatsSourceConfig {
            endpoint,
            stream: stream.to_string(),
            subjects: Vec::new(),
            consumer: consumer.to_string(),
            start_from: NatsStartFrom::Earliest,
            ack_policy: NatsAckPolicy::All,
            ack_wait: DEFAULT_ACK_WAIT,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            fetch_batch: DEFAULT_FETCH_BATCH,
            idle_timeout: None,
            until_caught_up: false,
            end_sequence: None,
            with_headers: false,
            read_sequence: None,
            delete_after: None,
            partitions: None,
            partition_count: None,
            accept_new_stream: None,
        }
    }

    /// The partition key of the stream in checkpoints (not partitioned).
    pub fn partition_key(&self) -> String {
        format!("nats/{}", self.stream)
    }

    /// The partition keys in checkpoints: `nats/<stream>` for a stream read whole, else
    /// `nats/<stream>/<n>` per subject partition.
    pub fn partition_keys(&self) -> Vec<String> {
        match &self.partitions {
            None => vec![self.partition_key()],
            Some(p) => (0..p.count)
                .map(|n| format!("nats/{}/{n}", self.stream))
                .collect(),
        }
    }

    /// The config of subject partition `n`: its own durable consumer (`<consumer>-p<n>`),
    /// filtered on the partition's subject. A stream read whole is its own partition 0.
    pub fn for_partition(&self, n: u32) -> NatsSourceConfig {
        let mut c = self.clone();
        if let Some(p) = self.partitions.as_ref() {
            c.consumer = format!("{}-p{n}", self.consumer);
            c.subjects = vec![p.filter(n)];
            c.partitions = None;
            c.partition_count = Some(p.count);
        }
        c
    }
}

/// Parses `start_from`: `earliest`, `latest`, a sequence number or an RFC 3339 time.
pub fn parse_start_from(s: &str) -> Option<NatsStartFrom> {
    let s = s.trim();
    match s {
        "earliest" => return Some(NatsStartFrom::Earliest),
        "latest" => return Some(NatsStartFrom::Latest),
        _ => {}
    }
    if let Ok(n) = s.parse::<u64>() {
        return (n > 0).then_some(NatsStartFrom::Sequence(n));
    }
    weir_engine::time::parse_rfc3339_ms(s.as_bytes()).map(NatsStartFrom::Time)
}
