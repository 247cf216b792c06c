//! What is wrong with a `nats:` block of a pipeline file: the source's, sink's and
//! dead-letter output's settings, checked before anything connects.

use std::path::PathBuf;

use weir_nats::source::PARTITION_PLACEHOLDER;

/// A `nats:` setting that does not fit; always the user's to fix (the caller adds the file
/// position and the source or sink it belongs to).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsConfigError {
    #[error("`url` needs at least one server (nats://host:4222)")]
    NoServer,
    /// A server URL the client refuses.
    #[error(transparent)]
    Endpoint(#[from] weir_nats::NatsError),
    #[error("`credentials` takes one of user/password, token, creds_file or nkey_seed")]
    CredentialsChoice,
    #[error("`credentials` needs both `user` and `password`")]
    UserWithoutPassword,
    #[error("`tls` needs both `cert_file` and `key_file`")]
    CertWithoutKey,
    /// A file setting (`creds_file`, `ca_file`...) that names no file.
    #[error("`{key}` {} is not a file", path.display())]
    NotAFile { key: &'static str, path: PathBuf },
    #[error("`stream` must name a JetStream stream (no spaces, `.`, `*` or `>`), not `{0}`")]
    Stream(String),
    #[error(
        "bad subject filter `{0}`: tokens separated by `.`, `*` for one token, `>` for the rest"
    )]
    SubjectFilter(String),
    #[error("`consumer` `{0}` is not a valid consumer name (no spaces, `.`, `*`, `>`, `/`)")]
    Consumer(String),
    #[error("bad start_from `{0}`: use earliest, latest, a stream sequence (1 or more) or an RFC 3339 time such as 2026-11-24T10:00:00Z")]
    StartFrom(String),
    #[error("`ack_wait` must be at least 1s")]
    AckWait,
    #[error("bad accept_new_stream `{0}`: give the stream's creation time the refusal printed, in RFC 3339 (2026-12-05T18:37:57.907Z)")]
    AcceptNewStream(String),
    #[error("`max_ack_pending` must be 1 or more")]
    MaxAckPending,
    #[error(
        "`ack_policy: none` needs `checkpoint:`: without checkpoints the consumer's \
         acknowledgements are the only record of what was read (remove `ack_policy`, or add \
         `checkpoint:`)"
    )]
    NoAckWithoutCheckpoint,
    #[error(
        "`ack_wait` and `max_ack_pending` apply only with `ack_policy: all` (nothing is \
         acknowledged with `none`)"
    )]
    AckSettingsWithoutAcks,
    #[error("`fetch_batch` must be 1 to {max}")]
    FetchBatch { max: u64 },
    #[error(
        "`subjects` and `partitions` exclude each other: each partition's consumer is \
         filtered by `partitions.subject`"
    )]
    SubjectsAndPartitions,
    #[error("`partitions.count` must be 1 to {max}, not {count}")]
    PartitionCount { max: u32, count: u32 },
    #[error(
        "`partitions.subject` `{0}` must hold `{ph}` once, as a whole token (`events.{ph}.>`)",
        ph = PARTITION_PLACEHOLDER
    )]
    PartitionPlaceholder(String),
    #[error(
        "bad `partitions.subject` `{0}`: tokens separated by `.`, `*` for one token, `>` for \
         the rest, `{ph}` for the partition's number",
        ph = PARTITION_PLACEHOLDER
    )]
    PartitionFilter(String),
    #[error("`subject` is empty")]
    EmptySubject,
    #[error("subject `{0}` holds white space")]
    SubjectSpace(String),
    #[error("subject `{0}` has an empty token (`..`, or a `.` at an end)")]
    SubjectEmptyToken(String),
    #[error("subject `{0}` holds a wildcard: a sink publishes to one subject")]
    SubjectWildcard(String),
    #[error("`connect_timeout` must be above 0")]
    ConnectTimeout,
    #[error("`max_in_flight` must be between 1 and {max}")]
    MaxInFlight { max: u64 },
    #[error("`ack_timeout` must be above 0")]
    AckTimeout,
    #[error("nats sinks write `json` or `avro`")]
    SinkFormat,
    /// A second window or view names the sink.
    #[error("sink `{sink}` already publishes `{output}`: a NATS sink publishes one window or view (its message ids are the output's); use one sink per window or view")]
    SecondOutput { sink: String, output: String },
    /// A window's rows without the column their message ids are made of.
    #[error("sink `{sink}`: `{output}` has no `window_start` to name its rows by")]
    NoWindowStart { sink: String, output: String },
}

impl NatsConfigError {
    /// Always a user error: the pipeline file must change.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn kind(&self) -> weir_engine::ErrorKind {
        weir_engine::ErrorKind::User
    }

    /// The error and its causes, as a pipeline-file message says them.
    pub(crate) fn chain(&self) -> String {
        weir_engine::error::chain(self).to_string()
    }
}
