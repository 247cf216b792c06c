//! NATS in weir: the connection plumbing shared by the NATS source, sink and generator (how to
//! reach a server: [`NatsEndpoint`], with URLs, credentials and TLS, and [`OwnedClient`],
//! which closes a client's connection when its owner drops it), the NATS JetStream source
//! ([`source`]: durable pull consumers, subject partitions, a worker pool's share of them)
//! and the NATS sink and dead-letter output ([`sink`]: JetStream publishes with
//! deterministic message ids).

mod client;
pub mod sink;
pub mod source;

pub use async_nats;
pub use client::{
    redact_url, NatsCredentials, NatsEndpoint, NatsError, NatsTls, OwnedClient,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_SUBSCRIPTION_CAPACITY,
};
pub use sink::{DeadLetterNats, DeadLetterNatsConfig, NatsFormat, NatsSink, NatsSinkConfig};
pub use source::{NatsReader, NatsSourceConfig, NatsStartFrom};
