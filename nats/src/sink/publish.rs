//! A blocking JetStream publisher shared by the NATS sink, the NATS dead-letter output and
//! `weir generate --nats`: its client runs on the process's I/O runtime ([`weir_engine::io`],
//! whose workers keep the connection serviced between calls: pings, reconnection), it
//! publishes with a bounded number of acknowledgements outstanding, and says for every
//! message whether the server stored it, refused it for good, or whether it must be sent
//! again. Dropping it closes its connection (see [`crate::OwnedClient`]).

use std::time::Duration;

use crate::{NatsEndpoint, NatsError, OwnedClient};
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;

/// Default bound on publishes awaiting their acknowledgement (`max_in_flight`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// Default wait for one acknowledgement (`ack_timeout`) before the message is sent again.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a publisher could not be set up or a stream could not be found.
#[derive(Debug, thiserror::Error)]
pub enum NatsSinkError {
    /// The process's I/O runtime could not start.
    #[error("no I/O runtime for the NATS client")]
    Runtime(#[source] weir_engine::io::IoRuntimeError),
    /// No connection (see [`NatsError::is_retryable`]).
    #[error(transparent)]
    Connect(#[from] NatsError),
    /// The server answered that no stream captures the subject.
    #[error(
        "no JetStream stream captures subject `{subject}`: create one first \
         (e.g. `nats stream add --subjects '{subject}'`)"
    )]
    NoStream { subject: String },
    /// The stream could not be looked up (server down, JetStream off, no permission).
    #[error("cannot look up the JetStream stream of subject `{subject}`")]
    Lookup {
        subject: String,
        #[source]
        source: async_nats::error::Error<GetStreamByNameErrorKind>,
    },
    /// The stream's settings could not be read.
    #[error("cannot read the settings of JetStream stream `{stream}`")]
    StreamInfo {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stream could not be created (`weir generate --nats`).
    #[error("cannot create JetStream stream `{stream}` for subject `{subject}`")]
    CreateStream {
        stream: String,
        subject: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
}

impl NatsSinkError {
    /// Whether trying again later can succeed (the server down or restarting).
    pub fn is_retryable(&self) -> bool {
        match self {
            NatsSinkError::Connect(e) => e.is_retryable(),
            NatsSinkError::Lookup { source, .. } => {
                matches!(source.kind(), GetStreamByNameErrorKind::Request)
            }
            NatsSinkError::StreamInfo { .. } => true,
            _ => false,
        }
    }
}

/// Why one message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// Over the server's `max_payload` (checked by the client before sending): never storable.
    #[error("the message is over the server's max_payload")]
    TooLarge(#[source] PublishError),
    /// The stream refused it for good (over its `max_msg_size`).
    #[error("the stream refused the message (JetStream error {code}: over its max_msg_size)")]
    Refused {
        code: u64,
        #[source]
        source: PublishError,
    },
    /// Nobody answered on the subject: no stream captures it, or JetStream is not up yet.
    #[error("no JetStream stream answered on the subject")]
    NoStream(#[source] PublishError),
    /// Not acknowledged (timeout, connection lost, the server busy or short of resources):
    /// send it again.
    #[error("not acknowledged")]
    Unacknowledged(#[source] PublishError),
    /// Not sent: an earlier message of the same call was not acknowledged.
    #[error("not sent: an earlier message was not acknowledged")]
    NotSent,
}

impl PublishFailure {
    /// Whether sending the same message again can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PublishFailure::NoStream(_)
                | PublishFailure::Unacknowledged(_)
                | PublishFailure::NotSent
        )
    }

    /// A short code for dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            PublishFailure::TooLarge(_) => "nats_message_too_large",
            PublishFailure::Refused { .. } => "nats_refused",
            PublishFailure::NoStream(_) => "nats_no_stream",
            PublishFailure::Unacknowledged(_) => "nats_unacknowledged",
            PublishFailure::NotSent => "nats_not_sent",
        }
    }
}

/// What became of one published message.
#[derive(Debug)]
pub enum Outcome {
    /// Stored by the stream; `duplicate`: the stream already had a message with its id (a
    /// repeat dropped within the stream's duplicate window).
    Stored {
        duplicate: bool,
    },
    Failed(PublishFailure),
}

/// Classifies a failed publish by the client's error kind and the server's JetStream code.
pub fn classify(e: PublishError) -> PublishFailure {
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => PublishFailure::TooLarge(e),
        PublishErrorKind::StreamNotFound => PublishFailure::NoStream(e),
        _ => {
            let code = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|j| j.error_code());
            match code {
                Some(c) if c == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
                    PublishFailure::Refused {
                        code: c.0,
                        source: e,
                    }
                }
                _ => PublishFailure::Unacknowledged(e),
            }
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `Nats-Msg-Id`: the stream drops a message whose id it stored within its duplicate window.
    pub id: String,
    /// Other headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    pub payload: Bytes,
}

/// What the sink needs to know of the stream it publishes to.
#[derive(Debug, Clone)]
pub struct StreamFacts {
    pub name: String,
    /// Repeats of a message id within this time are dropped by the server.
    pub duplicate_window: Duration,
    /// Largest message the stream takes (-1: no limit of its own).
    pub max_msg_size: i32,
}

/// A connected JetStream publisher (blocking calls). Dropping it closes its connection: the
/// client's tasks on the I/O runtime end.
pub struct Publisher {
    /// The process's I/O runtime, where the client's tasks run.
    runtime: &'static tokio::runtime::Runtime,
    js: jetstream::Context,
    max_in_flight: usize,
    /// Drains the connection when the publisher is dropped (after `js`).
    _client: OwnedClient,
}

impl Publisher {
    /// Connects to `endpoint` (bounded by its `connect_timeout`); at most `max_in_flight`
    /// publishes await their acknowledgement at once, each for at most `ack_timeout`.
    pub fn connect(
        endpoint: &NatsEndpoint,
        max_in_flight: usize,
        ack_timeout: Duration,
    ) -> Result<Publisher, NatsSinkError> {
        let runtime = weir_engine::io::runtime().map_err(NatsSinkError::Runtime)?;
        let client = OwnedClient::new(
            runtime.block_on(endpoint.connect())?,
            runtime.handle().clone(),
        );
        let max_in_flight = max_in_flight.max(1);
        // the context spawns its acknowledgement task: built inside the runtime (the task
        // ends once the context and its publishes are dropped)
        let _guard = runtime.enter();
        let js = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .max_ack_inflight(max_in_flight)
            .backpressure_on_inflight(true)
            .build(client.client().clone());
        drop(_guard);
        Ok(Publisher {
            runtime,
            js,
            max_in_flight,
            _client: client,
        })
    }

    /// The stream that captures `subject`, and its duplicate window.
    pub fn stream_for(&self, subject: &str) -> Result<StreamFacts, NatsSinkError> {
        self.runtime.block_on(async {
            let name =
                self.js
                    .stream_by_subject(subject)
                    .await
                    .map_err(|source| match source.kind() {
                        GetStreamByNameErrorKind::NotFound => NatsSinkError::NoStream {
                            subject: subject.to_string(),
                        },
                        _ => NatsSinkError::Lookup {
                            subject: subject.to_string(),
                            source,
                        },
                    })?;
            let info_err =
                |e: Box<dyn std::error::Error + Send + Sync>| NatsSinkError::StreamInfo {
                    stream: name.clone(),
                    source: e,
                };
            let mut stream = self
                .js
                .get_stream(&name)
                .await
                .map_err(|e| info_err(Box::new(e)))?;
            let info = stream.info().await.map_err(|e| info_err(Box::new(e)))?;
            Ok(StreamFacts {
                name: name.clone(),
                duplicate_window: info.config.duplicate_window,
                max_msg_size: info.config.max_message_size,
            })
        })
    }

    /// The stream capturing `subject`, created as `stream` (file storage, the server's
    /// default duplicate window) when none does.
    pub fn ensure_stream(&self, stream: &str, subject: &str) -> Result<StreamFacts, NatsSinkError> {
        match self.stream_for(subject) {
            Err(NatsSinkError::NoStream { .. }) => {}
            other => return other,
        }
        self.runtime.block_on(async {
            self.js
                .create_stream(jetstream::stream::Config {
                    name: stream.to_string(),
                    subjects: vec![subject.to_string()],
                    ..Default::default()
                })
                .await
                .map_err(|source| NatsSinkError::CreateStream {
                    stream: stream.to_string(),
                    subject: subject.to_string(),
                    source,
                })
        })?;
        self.stream_for(subject)
    }

    /// Publishes `messages` to `subject`, at most `max_in_flight` awaiting their
    /// acknowledgement at once (their timeouts run together), and waits for every
    /// acknowledgement; one outcome per message, in order. After a failure that may be the
    /// connection's (a timeout, a broken pipe), the messages not sent yet are not sent in this
    /// call ([`PublishFailure::NotSent`]): a call lasts about two `ack_timeout`s at most while
    /// the server is away, not one per message.
    pub fn publish_all(&self, subject: &str, messages: &[Outgoing]) -> Vec<Outcome> {
        use futures::StreamExt;
        let subject = async_nats::Subject::from(subject);
        self.runtime.block_on(async {
            let mut outcomes: Vec<Option<Outcome>> = (0..messages.len()).map(|_| None).collect();
            let mut in_flight = futures::stream::FuturesUnordered::new();
            let mut broken = false;
            for (i, m) in messages.iter().enumerate() {
                while !broken && in_flight.len() >= self.max_in_flight {
                    if let Some((j, o)) = in_flight.next().await {
                        broken |= is_retryable(&o);
                        outcomes[j] = Some(o);
                    }
                }
                if broken {
                    outcomes[i] = Some(Outcome::Failed(PublishFailure::NotSent));
                    continue;
                }
                let mut headers = async_nats::HeaderMap::new();
                // a header value with CR or LF would end the header (async-nats panics on
                // one): such a value is left out, the message is not
                for (k, v) in m.headers.iter().filter(|(_, v)| !v.contains(['\r', '\n'])) {
                    headers.insert(*k, v.as_str());
                }
                let publish = jetstream::message::PublishMessage::build()
                    .payload(m.payload.clone())
                    .headers(headers)
                    .message_id(&m.id);
                match self.js.send_publish(subject.clone(), publish).await {
                    Ok(ack) => in_flight.push(async move { (i, acknowledged(ack).await) }),
                    Err(e) => {
                        let o = Outcome::Failed(classify(e));
                        broken |= is_retryable(&o);
                        outcomes[i] = Some(o);
                    }
                }
            }
            while let Some((j, o)) = in_flight.next().await {
                outcomes[j] = Some(o);
            }
            outcomes
                .into_iter()
                .map(|o| o.unwrap_or(Outcome::Failed(PublishFailure::NotSent)))
                .collect()
        })
    }
}

fn is_retryable(o: &Outcome) -> bool {
    matches!(o, Outcome::Failed(f) if f.is_retryable())
}

async fn acknowledged(ack: jetstream::context::PublishAckFuture) -> Outcome {
    match ack.await {
        Ok(a) => Outcome::Stored {
            duplicate: a.duplicate,
        },
        Err(e) => Outcome::Failed(classify(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_kind_and_code() {
        let too_large = classify(PublishError::new(PublishErrorKind::MaxPayloadExceeded));
        assert!(matches!(too_large, PublishFailure::TooLarge(_)));
        assert!(!too_large.is_retryable());
        let timeout = classify(PublishError::new(PublishErrorKind::TimedOut));
        assert!(timeout.is_retryable());
        let broken = classify(PublishError::new(PublishErrorKind::BrokenPipe));
        assert!(broken.is_retryable());
        let none = classify(PublishError::new(PublishErrorKind::StreamNotFound));
        assert!(matches!(none, PublishFailure::NoStream(_)) && none.is_retryable());
        // a server's API error whose code is not "message over max_msg_size": sent again
        let other = classify(PublishError::new(PublishErrorKind::Other));
        assert!(other.is_retryable());
        let api = |code: u64| {
            let e: jetstream::Error = serde_json::from_str(&format!(
                r#"{{"code":400,"err_code":{code},"description":"x"}}"#
            ))
            .unwrap();
            classify(PublishError::with_source(PublishErrorKind::Other, e))
        };
        let over = api(10054);
        assert!(matches!(over, PublishFailure::Refused { code: 10054, .. }));
        assert!(!over.is_retryable());
        // storage exhausted (10047): may clear up, sent again
        assert!(api(10047).is_retryable());
    }
}
