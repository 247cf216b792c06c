//! The YAML blocks of a NATS source, and the `credentials:` and `tls:` it shares with
//! the sink (whose block is [`NatsSinkDoc`](crate::connectors::nats::sink::NatsSinkDoc)).

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::connectors::AvroLimitsDoc;
use crate::model::{Duration, OneOrMany};

/// `nats:` of a source: a JetStream stream read by a durable pull consumer.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceDoc {
    /// One server URL or a list (`nats://host:4222`, `tls://host:4222`).
    pub url: OneOrMany<String>,
    /// The JetStream stream.
    pub stream: String,
    /// Subject filters, wildcards allowed (default: every subject of the stream).
    #[serde(default)]
    pub subjects: Option<OneOrMany<String>>,
    /// Read the stream as subject partitions, one filtered durable consumer each (for
    /// parallelism and worker pools).
    #[serde(default)]
    #[schemars(with = "Option<NatsPartitionsDoc>")]
    pub partitions: Option<Spanned<NatsPartitionsDoc>>,
    /// The durable consumer's name (default `weir-<pipeline>-<source>`), created when missing.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Where a new consumer starts: `earliest` (default), `latest`, an RFC 3339 time or a stream sequence.
    #[serde(default)]
    pub start_from: Option<String>,
    /// `all`: acknowledge messages once their rows are durable (the default without
    /// `checkpoint:`, or when `ack_wait`/`max_ack_pending` is set); `none`: acknowledge nothing,
    /// the position lives in the checkpoints only (the default with `checkpoint:`; the server
    /// then spends about 30% less per message).
    #[serde(default)]
    #[schemars(with = "Option<NatsAckPolicyDoc>")]
    pub ack_policy: Option<Spanned<NatsAckPolicyDoc>>,
    /// How long the server waits for an acknowledgement before delivering again (default 5m).
    #[serde(default)]
    pub ack_wait: Option<Duration>,
    /// Unacknowledged messages after which the server stops delivering (default 1,000,000).
    #[serde(default)]
    pub max_ack_pending: Option<u64>,
    /// Messages one pull request asks for (default 1000).
    #[serde(default)]
    pub fetch_batch: Option<u64>,
    /// The creation time (RFC 3339, as the refusal printed it) of a stream that is a copy of
    /// the one the checkpoint read, dated anew (a backup restored into a cluster, a mirror
    /// created again): the checkpoint's position continues in it. Any other stream whose
    /// creation time is not the checkpoint's is refused.
    #[serde(default)]
    pub accept_new_stream: Option<String>,
    /// Credentials (one way: user/password, token, creds file or NKey seed).
    #[serde(default)]
    pub credentials: Option<NatsCredentialsDoc>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<NatsTlsDoc>,
    /// Bounds on what one Avro record may decode to (`format: avro`).
    #[serde(default)]
    pub avro_limits: Option<AvroLimitsDoc>,
}

/// `ack_policy:` of a NATS source: the JetStream ack policy of its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NatsAckPolicyDoc {
    /// Acknowledged once durable (`AckPolicy::All`).
    All,
    /// Never acknowledged (`AckPolicy::None`); needs `checkpoint:`.
    None,
}

/// `partitions: { count, subject }` of a NATS source: a stream whose subjects carry a
/// partition number in one token.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsPartitionsDoc {
    /// How many partitions (1 to 1024), numbered from 0.
    pub count: u32,
    /// The subject filter of one partition, `{partition}` standing for its number as a
    /// whole token (`events.{partition}.>`).
    pub subject: String,
}

/// `credentials:` of a NATS source or sink: at most one way to authenticate (values may come
/// from `${ENV}`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsCredentialsDoc {
    /// User name (with `password`).
    #[serde(default)]
    pub user: Option<String>,
    /// Password (with `user`).
    #[serde(default)]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (user JWT and NKey seed), relative to the pipeline file.
    #[serde(default)]
    pub creds_file: Option<String>,
    /// An NKey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed: Option<String>,
}

/// `tls:` of a NATS source or sink.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsDoc {
    /// Refuse to connect without TLS (default false: TLS when the server asks or a URL is `tls://`).
    #[serde(default)]
    pub required: Option<bool>,
    /// PEM file of certificate authorities to trust, relative to the pipeline file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate (with `key_file`), for servers that verify clients.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
}
