//! Dead letters published to a JetStream subject: the same JSON record as in a dead-letter
//! file or topic, one message per record, with a deterministic `Nats-Msg-Id` (the record's
//! source, partition, offset, reason and bytes), so records a restore writes again are
//! dropped by the stream's duplicate window.

use std::time::Duration;

use crate::NatsEndpoint;
use bytes::Bytes;
use weir_engine::job::{Committable, DeadLetterSink};
use weir_engine::{DeadLetter, EngineError};

use super::error_chain;
use super::link::{Link, WHILE_DOWN};
use super::publish::{Outcome, Outgoing};

/// Bytes of a dead letter's `raw` kept when the whole record is over the server's limit.
const TRUNCATED_RAW: usize = 64 << 10;

/// How much of a dead letter's `raw` each attempt keeps: all of it, [`TRUNCATED_RAW`] bytes,
/// then none (a stream whose `max_msg_size` is below even the cut record still gets its
/// reason and error).
const RAW_KEPT: [Option<usize>; 3] = [None, Some(TRUNCATED_RAW), Some(0)];

/// Where dead letters go.
#[derive(Debug, Clone)]
pub struct DeadLetterNatsConfig {
    pub endpoint: NatsEndpoint,
    pub subject: String,
    /// Publishes awaiting their acknowledgement at once.
    pub max_in_flight: usize,
    /// Wait for one acknowledgement before the record is sent again.
    pub ack_timeout: Duration,
}

/// A record waiting for its acknowledgement.
struct PendingRecord {
    record: DeadLetter,
    message: Outgoing,
    /// Its attempt in [`RAW_KEPT`]: how much of its `raw` the message keeps.
    cut: usize,
}

/// The dead-letter output on NATS.
pub struct DeadLetterNats {
    config: DeadLetterNatsConfig,
    link: Link,
    /// Records not acknowledged yet, with their message.
    pending: Vec<PendingRecord>,
    write_failed: bool,
}

fn dead_err(e: impl std::fmt::Display, retryable: bool) -> EngineError {
    let e = EngineError::dead_letter(e);
    if retryable {
        e.unavailable()
    } else {
        e
    }
}

/// A dead letter's message id: its position and content, nothing of the process.
fn record_id(r: &DeadLetter) -> String {
    let p = &r.partition;
    let key = format!(
        "{}/{}/{}/{}/{}/{}",
        p.source,
        p.topic.as_deref().or(p.file.as_deref()).unwrap_or(""),
        p.number,
        r.offset.map_or(String::new(), |o| o.to_string()),
        r.reason.as_str(),
        r.error.code,
    );
    let raw = r.raw.as_deref().unwrap_or_default();
    super::ids::window_id("dead_letter", &key, "", raw).replacen("w-", "d-", 1)
}

/// A record's message: its JSON, `raw` cut to `kept` bytes when given.
fn message(r: &DeadLetter, kept: Option<usize>) -> Result<Outgoing, serde_json::Error> {
    let mut json = r.to_json();
    if let Some(kept) = kept {
        let raw = json["raw"].as_str().unwrap_or_default();
        let mut end = kept.min(raw.len());
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        if json["raw_encoding"] == "base64" {
            // whole groups of four: what is left still decodes
            end -= end % 4;
        }
        json["raw"] = serde_json::Value::String(raw[..end].to_string());
        json["raw_truncated"] = serde_json::Value::Bool(true);
    }
    let mut headers = vec![("Weir-Reason", r.reason.as_str().to_string())];
    for (k, v) in r.trace.headers() {
        headers.push((k, String::from_utf8_lossy(v).into_owned()));
    }
    Ok(Outgoing {
        id: record_id(r),
        headers,
        payload: Bytes::from(serde_json::to_vec(&json)?),
    })
}

impl DeadLetterNats {
    /// Connects and checks that a stream captures the subject; a server that does not
    /// answer yet is connected to at the first publish.
    pub fn new(config: DeadLetterNatsConfig) -> Result<Self, EngineError> {
        let (link, _) = Link::open(
            "dead_letter",
            &config.endpoint,
            &config.subject,
            config.max_in_flight,
            config.ack_timeout,
        )
        .map_err(|e| EngineError::dead_letter_caused("", e))?;
        Ok(DeadLetterNats {
            config,
            link,
            pending: Vec::new(),
            write_failed: false,
        })
    }

    /// Publishes every pending record; a record over the size limits goes again at once
    /// with its `raw` cut, then without it; one refused even so fails the run. Records not
    /// acknowledged stay pending and the call fails as unavailable.
    fn send_pending(&mut self) -> Result<(), EngineError> {
        for _attempt in 0..RAW_KEPT.len() {
            if self.pending.is_empty() {
                return Ok(());
            }
            let messages: Vec<Outgoing> = self.pending.iter().map(|p| p.message.clone()).collect();
            let outcomes = self
                .link
                .get(|m, e| match e {
                    Some(e) => EngineError::dead_letter_caused(m, e),
                    None => dead_err(m, false),
                })?
                .publish_all(&self.config.subject, &messages);
            let (mut keep, mut first, mut cut_any) = (Vec::new(), None, false);
            for (mut p, o) in std::mem::take(&mut self.pending).into_iter().zip(outcomes) {
                match o {
                    Outcome::Stored { .. } => {}
                    Outcome::Failed(f) if f.is_retryable() => {
                        first.get_or_insert_with(|| error_chain(&f));
                        keep.push(p);
                    }
                    Outcome::Failed(f) if p.cut + 1 < RAW_KEPT.len() => {
                        p.cut += 1;
                        let kept = RAW_KEPT[p.cut].unwrap_or_default();
                        tracing::warn!(msg_id = %p.message.id, error = %error_chain(&f), kept, "dead letter over the size limit: its raw bytes are cut");
                        p.message = message(&p.record, RAW_KEPT[p.cut])
                            .map_err(|e| EngineError::dead_letter_caused("", e))?;
                        cut_any = true;
                        keep.push(p);
                    }
                    Outcome::Failed(f) => {
                        return Err(EngineError::dead_letter_caused(
                            "the server refused a dead letter for good, even without its raw bytes",
                            f,
                        ))
                    }
                }
            }
            self.pending = keep;
            if let Some(reason) = first {
                return Err(dead_err(
                    format!(
                        "{} dead letters to `{}` not acknowledged yet: {reason}; {WHILE_DOWN}",
                        self.pending.len(),
                        self.config.subject
                    ),
                    true,
                ));
            }
            if !cut_any {
                break;
            }
        }
        Ok(())
    }
}

impl Committable for DeadLetterNats {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.send_pending()?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.send_pending()
    }
}

impl DeadLetterSink for DeadLetterNats {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.write_failed) {
            for r in records {
                let message =
                    message(r, RAW_KEPT[0]).map_err(|e| EngineError::dead_letter_caused("", e))?;
                self.pending.push(PendingRecord {
                    record: r.clone(),
                    message,
                    cut: 0,
                });
            }
        }
        if self.pending.len() >= self.config.max_in_flight.max(1) {
            if let Err(e) = self.send_pending() {
                self.write_failed = true;
                return Err(e);
            }
        }
        Ok(())
    }
}
