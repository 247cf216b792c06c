//! Why the Kafka sinks could not send rows, by kind: a broker that does not take messages
//! now is retried (a new producer sends the unacknowledged rows again); rows weir cannot key
//! or encode, and a schema the registry refuses, fail the run, since sending them again
//! fails the same way.

use weir_engine::error::Cause;
use weir_engine::{EngineError, ErrorKind};

use crate::Lasting;
use weir_formats::registry::RegistryError;

/// A failure to send rows (or dead letters) to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The rows' `weir.keys` metadata is not a number of key columns (weir's own bug).
    #[error(
        "the rows' `weir.keys` metadata `{value}` is not a number of key columns: weir cannot \
         key their messages (please report it)"
    )]
    BadKeys { value: String },
    /// Rows with neither `weir.keys` metadata nor a `window_start` column (weir's own bug).
    #[error(
        "rows without `window_start` or `weir.keys` metadata cannot be keyed: a Kafka sink \
         takes a window's or a view's rows (please report it)"
    )]
    Unkeyed,
    /// Encoding the rows' keys or values failed.
    #[error("encoding the rows")]
    Encode(#[source] Cause),
    /// The schema registry did not register the rows' Avro schema under `subject`.
    #[error("registering the rows' Avro schema as `{subject}`{}", registry_hint(.source))]
    Registry {
        subject: String,
        #[source]
        source: RegistryError,
    },
    /// The producer did not take a message (a full queue, an unreachable cluster).
    #[error(transparent)]
    Kafka(#[from] crate::KafkaError),
}

/// What to do about a registry's failure, when it is not an outage.
fn registry_hint(e: &RegistryError) -> &'static str {
    match e {
        RegistryError::Unreachable { .. } => "",
        RegistryError::Refused { .. } => {
            " (refused: check the subject's compatibility setting, or register a compatible \
             schema, and the registry's credentials)"
        }
        RegistryError::Invalid { .. } | RegistryError::NotJson { .. } => {
            " (check that `schema_registry` names a schema registry)"
        }
        RegistryError::Config { .. }
        | RegistryError::BadUrl { .. }
        | RegistryError::HttpClient { .. } => " (fix `schema_registry`)",
        RegistryError::Runtime { .. } => "",
    }
}

impl SendError {
    /// The error of a failed encoding.
    pub(crate) fn encode(e: impl Into<Cause>) -> Self {
        SendError::Encode(e.into())
    }

    /// What kind of failure this is: an unreachable registry or a producer that did not take
    /// a message is [`ErrorKind::Retryable`]; a registry that refuses the schema or is not
    /// usable as configured is the [`ErrorKind::User`]'s to fix; rows that cannot be keyed
    /// or encoded, and an I/O runtime that cannot start, are [`ErrorKind::Fatal`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            // refused for good (over the size limit even cut): sending it again cannot help
            SendError::Kafka(crate::KafkaError::Refused { .. }) => ErrorKind::Fatal,
            // denied: the user's to fix (retrying stalled the run for ever)
            SendError::Kafka(crate::KafkaError::Delivery {
                lasting: Some(Lasting::Denied),
                ..
            }) => ErrorKind::User,

            SendError::Kafka(_) => ErrorKind::Retryable,
            SendError::Registry { source, .. } if source.is_retryable() => ErrorKind::Retryable,
            SendError::Registry {
                source: RegistryError::Runtime { .. },
                ..
            } => ErrorKind::Fatal,
            SendError::Registry { .. } => ErrorKind::User,
            SendError::BadKeys { .. } | SendError::Unkeyed | SendError::Encode(_) => {
                ErrorKind::Fatal
            }
        }
    }

    /// The engine's error of sink `sink` for this failure, marked by [`Self::kind`]:
    /// retryable ones as [`EngineError::unavailable`] (the engine's retry policy calls again),
    /// the user's as [`EngineError::user`]; the others fail the run.
    pub(crate) fn into_sink_error(self, sink: &str) -> EngineError {
        let kind = self.kind();
        marked(kind, EngineError::sink_caused(sink, "", self))
    }

    /// The engine's error of the dead-letter output for this failure (see
    /// [`Self::into_sink_error`]).
    pub(crate) fn into_dead_letter_error(self) -> EngineError {
        let kind = self.kind();
        marked(kind, EngineError::dead_letter_caused("", self))
    }
}

fn marked(kind: ErrorKind, e: EngineError) -> EngineError {
    match kind {
        ErrorKind::Retryable => e.unavailable(),
        ErrorKind::User => e.user(),
        ErrorKind::Fenced | ErrorKind::Fatal => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(source: RegistryError) -> SendError {
        SendError::Registry {
            subject: "out-value".into(),
            source,
        }
    }

    #[test]
    fn only_outages_are_retried() {
        let down = registry(RegistryError::Unreachable {
            url: "http://r".into(),
            message: "connection refused".into(),
        });
        assert_eq!(down.kind(), ErrorKind::Retryable);
        let queue = SendError::Kafka(crate::KafkaError::Delivery {
            brokers: "b".into(),
            topic: "t".into(),
            message: "timed out".into(),
            lasting: None,
        });
        assert_eq!(queue.kind(), ErrorKind::Retryable);
        let denied = |lasting| {
            SendError::Kafka(crate::KafkaError::Delivery {
                brokers: "b".into(),
                topic: "t".into(),
                message: "Broker: Topic authorization failed".into(),
                lasting: Some(lasting),
            })
            .kind()
        };
        assert_eq!(denied(Lasting::Denied), ErrorKind::User);
        // a 4xx answer: sending again gets the same answer
        let refused = registry(RegistryError::Refused {
            url: "http://r".into(),
            status: 409,
            message: "incompatible schema".into(),
        });
        assert_eq!(refused.kind(), ErrorKind::User);
        assert!(refused.to_string().contains("compatibility"), "{refused}");
        let config = registry(RegistryError::Config {
            url: "ftp://r".into(),
            message: "unsupported scheme".into(),
        });
        assert_eq!(config.kind(), ErrorKind::User);
        for fatal in [
            SendError::BadKeys { value: "x".into() },
            SendError::Unkeyed,
            SendError::encode(std::io::Error::other("bad row")),
        ] {
            assert_eq!(fatal.kind(), ErrorKind::Fatal, "{fatal}");
        }
    }

    #[test]
    fn the_engine_error_carries_the_kind_and_the_chain() {
        let refused = registry(RegistryError::Refused {
            url: "http://r".into(),
            status: 422,
            message: "invalid schema".into(),
        });
        let e = refused.into_sink_error("out");
        assert_eq!(e.kind(), ErrorKind::User);
        let chain = e.chain().to_string();
        assert!(
            chain.starts_with("sink `out`: registering the rows' Avro schema as `out-value`"),
            "{chain}"
        );
        assert!(chain.ends_with("status 422: invalid schema"), "{chain}");
        let e = SendError::Unkeyed.into_sink_error("out");
        assert_eq!(e.kind(), ErrorKind::Fatal);
        let e = SendError::Kafka(crate::KafkaError::Delivery {
            brokers: "b".into(),
            topic: "t".into(),
            message: "timed out".into(),
            lasting: None,
        })
        .into_dead_letter_error();
        assert_eq!(e.kind(), ErrorKind::Retryable);
        assert!(
            e.chain().to_string().starts_with("dead-letter output"),
            "{}",
            e.chain()
        );
    }
}
