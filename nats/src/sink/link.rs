//! The connection of a NATS sink or dead-letter output, made when it is first needed: a
//! server that is down when the run starts (or not up yet) does not fail the run. The
//! output tries once at start; if the server does not answer it logs a warning and each call
//! with messages to publish tries again, failing as [`EngineError::Unavailable`] so that the
//! output's `retry` policy (backoff, circuit breaker, `max_retries`) paces the attempts and
//! bounds them. A configuration error (credentials refused, TLS, no stream for the subject)
//! fails the run at once.

use std::time::Duration;

use crate::NatsEndpoint;
use weir_engine::EngineError;

use super::error_chain;
use super::publish::{NatsSinkError, Publisher, StreamFacts};

/// What to do about a server that does not answer, for error messages.
pub(crate) const WHILE_DOWN: &str = "the output retries with backoff under its `retry` policy \
     (set `retry.max_retries` to bound it): start the NATS server or fix `url`";

/// A publisher connected on first use.
pub(crate) struct Link {
    endpoint: NatsEndpoint,
    subject: String,
    max_in_flight: usize,
    ack_timeout: Duration,
    publisher: Option<Publisher>,
}

impl Link {
    /// Tries to connect (and to find the subject's stream) now: a server that does not
    /// answer is logged and tried again at the first publish; another failure is returned.
    pub(crate) fn open(
        what: &str,
        endpoint: &NatsEndpoint,
        subject: &str,
        max_in_flight: usize,
        ack_timeout: Duration,
    ) -> Result<(Link, Option<StreamFacts>), NatsSinkError> {
        let mut link = Link {
            endpoint: endpoint.clone(),
            subject: subject.to_string(),
            max_in_flight,
            ack_timeout,
            publisher: None,
        };
        match link.connect() {
            Ok(facts) => Ok((link, Some(facts))),
            Err(e) if e.is_retryable() => {
                tracing::warn!(
                    output = %what,
                    servers = %endpoint.describe_servers(),
                    error = %error_chain(&e),
                    "nats: the server does not answer at start; connecting again when there are messages to publish"
                );
                Ok((link, None))
            }
            Err(e) => Err(e),
        }
    }

    /// Connects and looks up the stream of the subject.
    fn connect(&mut self) -> Result<StreamFacts, NatsSinkError> {
        let publisher = Publisher::connect(&self.endpoint, self.max_in_flight, self.ack_timeout)?;
        let facts = publisher.stream_for(&self.subject)?;
        self.publisher = Some(publisher);
        Ok(facts)
    }

    /// The publisher, connecting first if needed. A server that still does not answer is
    /// an unavailable error (`err` builds the output's error from a message and the
    /// client's error that caused it, when there is one).
    pub(crate) fn get(
        &mut self,
        err: impl Fn(String, Option<NatsSinkError>) -> EngineError,
    ) -> Result<&Publisher, EngineError> {
        if self.publisher.is_none() {
            match self.connect() {
                Ok(facts) => {
                    tracing::info!(subject = %self.subject, stream = %facts.name, "nats: connected; publishing")
                }
                Err(e) if e.is_retryable() => {
                    let m = format!("{}; {WHILE_DOWN}", error_chain(&e));
                    return Err(err(m, None).unavailable());
                }
                Err(e) => return Err(err(String::new(), Some(e))),
            }
        }
        self.publisher
            .as_ref()
            .ok_or_else(|| err("nats: no connection".into(), None))
    }
}
