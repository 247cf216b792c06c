//! The Kafka dead-letter output: dead letters as JSON messages, sent again through a new
//! producer after a failed delivery.

use super::*;

/// Dead letters as JSON messages (the same record as in a dead-letter file, original bytes
/// kept), keyed by `source/topic/partition/offset`.
pub struct DeadLetterKafka {
    config: KafkaSinkConfig,
    producer: Producer,
    value: Vec<u8>,
    /// Records sent since the last successful flush, sent again through a new producer
    /// after a failed delivery.
    unacked: Vec<DeadLetter>,
    broken: bool,
    /// The failed call was a write whose records are already in `unacked`.
    write_failed: bool,
}

/// Bytes of a dead letter's `raw` kept when the whole record is over the broker's limit.
const TRUNCATED_RAW: usize = 64 << 10;

impl DeadLetterKafka {
    /// Dead letters to `topic`.
    pub fn new(config: KafkaSinkConfig) -> Result<Self, EngineError> {
        ensure_topic(&config).map_err(|e| {
            let denied = matches!(e, crate::KafkaError::Denied { .. });
            let e = EngineError::dead_letter_caused("", e);
            if denied {
                e.user()
            } else {
                e
            }
        })?;
        let producer = Producer::new(&config.brokers, &config.properties)
            .map_err(|e| EngineError::dead_letter_caused("", e))?;
        Ok(DeadLetterKafka {
            config,
            producer,
            value: Vec::new(),
            unacked: Vec::new(),
            broken: false,
            write_failed: false,
        })
    }

    /// The error of a failed flush: retried with a new producer, unless the broker refuses
    /// whatever the retries (a denied write: the user's to fix).
    fn failed(&mut self, e: crate::KafkaError) -> EngineError {
        if matches!(
            e,
            crate::KafkaError::Delivery {
                lasting: Some(_),
                ..
            }
        ) {
            return EngineError::dead_letter_caused("", e).user();
        }
        self.broken = true;
        EngineError::dead_letter_caused("", e).unavailable()
    }

    /// After a failure: a new producer, and every unacknowledged record sent again.
    fn rebuild(&mut self) -> Result<(), EngineError> {
        if !self.broken {
            return Ok(());
        }
        self.producer = Producer::new(&self.config.brokers, &self.config.properties)
            .map_err(|e| EngineError::dead_letter_caused("", e).unavailable())?;
        let records = std::mem::take(&mut self.unacked);
        let sent = records.iter().try_for_each(|r| self.send(r));
        self.unacked = records;
        sent.map_err(SendError::into_dead_letter_error)?;
        self.broken = false;
        Ok(())
    }

    /// Sends one record; one over the broker's size limit goes with its `raw` cut to
    /// [`TRUNCATED_RAW`] bytes (`raw_truncated: true`) rather than not at all.
    fn send(&mut self, r: &DeadLetter) -> Result<(), SendError> {
        let key = record_key(r);
        // the record's trace and correlation ids travel on as headers
        let mut headers = vec![("weir.reason", r.reason.as_str().as_bytes())];
        headers.extend(r.trace.headers());
        let mut json = r.to_json();
        // as it is, then with `raw` cut, then without it
        for (attempt, limit) in [(0, TRUNCATED_RAW), (1, 0), (2, 0)] {
            self.value.clear();
            serde_json::to_writer(&mut self.value, &json).map_err(SendError::encode)?;
            match self.producer.send(
                &self.config.topic,
                Some(key.as_bytes()),
                Some(&self.value),
                &headers,
            ) {
                Ok(()) => return Ok(()),
                Err(crate::KafkaError::Refused { message, .. }) if attempt < 2 => {
                    tracing::warn!(key, error = %message, kept = limit, "dead letter over the size limit: its raw bytes are cut");
                    cut_raw(&mut json, limit);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// A dead letter's message key: `source/topic (or file)/partition/offset`; for a record
/// without an offset (a row a sink refused), a digest of its bytes in the offset's place, so
/// that records are told apart (on a compacted topic they would replace each other) and one
/// sent again after a restore has the same key. A record an operator refused, or late for a
/// window (it may be so for several, each a dead letter of its own), ends with
/// `/<operator>` or `/<window>`.
fn record_key(r: &DeadLetter) -> String {
    let p = &r.partition;
    let at = match (r.offset, &r.raw) {
        (Some(o), _) => o.to_string(),
        (None, Some(raw)) => format!("#{:016x}", fnv1a(raw)),
        (None, None) => String::new(),
    };
    // (an expression error names its operator; a late record, its window)
    let details = &r.error.details;
    let operator = ["operator", "window"]
        .iter()
        .find_map(|k| details.get(*k).and_then(|o| o.as_str()))
        .map(|o| format!("/{o}"))
        .unwrap_or_default();
    format!(
        "{}/{}/{}/{at}{operator}",
        p.source,
        p.topic.as_deref().or(p.file.as_deref()).unwrap_or(""),
        p.number,
    )
}

/// Cuts a dead letter's `raw` to at most `limit` bytes (whole characters, and whole groups
/// of four in base64, so that what is left still decodes), marking it `raw_truncated`.
fn cut_raw(json: &mut serde_json::Value, limit: usize) {
    let raw = json["raw"].as_str().unwrap_or_default();
    let mut cut = limit.min(raw.len());
    while !raw.is_char_boundary(cut) {
        cut -= 1;
    }
    if json["raw_encoding"] == "base64" {
        cut -= cut % 4;
    }
    json["raw"] = serde_json::Value::String(raw[..cut].to_string());
    json["raw_truncated"] = serde_json::Value::Bool(true);
}

impl DeadLetterKafka {
    /// Sends again, with its `raw` cut to `limit` bytes, a dead letter the broker refused
    /// for good (over the topic's `max.message.bytes`, which may be below the client's
    /// limit that [`Self::send`] cuts for).
    fn send_cut(
        &mut self,
        r: &crate::producer::RefusedMessage,
        limit: usize,
    ) -> Result<(), EngineError> {
        let mut json: serde_json::Value = serde_json::from_slice(&r.payload)
            .map_err(|e| EngineError::dead_letter_caused("", e))?;
        tracing::warn!(error = %r.message, code = r.code, kept = limit, "the broker refused a dead letter: it goes again with its raw bytes cut");
        cut_raw(&mut json, limit);
        self.value.clear();
        serde_json::to_writer(&mut self.value, &json)
            .map_err(|e| EngineError::dead_letter_caused("", e))?;
        // the record's headers, as `send` gave them
        let key = r.key.as_deref().unwrap_or_default();
        let original = self
            .unacked
            .iter()
            .find(|d| record_key(d).as_bytes() == key);
        let reason = json["reason"].as_str().unwrap_or_default().to_string();
        let mut headers = vec![("weir.reason", reason.as_bytes())];
        if let Some(d) = original {
            headers.extend(d.trace.headers());
        }
        let sent = self
            .producer
            .send(
                &self.config.topic,
                r.key.as_deref(),
                Some(&self.value),
                &headers,
            )
            .map_err(|e| SendError::from(e).into_dead_letter_error());
        if sent.is_err() {
            // the retried call sends every unacknowledged record again (cut again if refused)
            self.broken = true;
        }
        sent
    }
}

impl Committable for DeadLetterKafka {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.rebuild()?;
        // a dead letter the broker refuses for good goes again with its raw bytes cut, then
        // without them, rather than failing the run (and every restart, which writes it
        // again); the record's reason and error are what must not be lost
        for kept in [Some(TRUNCATED_RAW), Some(0), None] {
            if let Err(e) = self.producer.flush() {
                return Err(self.failed(e));
            }
            let refused = self.producer.take_refused();
            let Some(first) = refused.first() else {
                break;
            };
            let Some(limit) = kept else {
                return Err(EngineError::dead_letter(format!(
                    "the broker refused a dead letter for good ({}), even without its raw \
                     bytes: {}",
                    first.code, first.message
                )));
            };
            for r in &refused {
                self.send_cut(r, limit)?;
            }
        }
        self.unacked.clear();
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.flush().map(|_| ())
    }
}

impl DeadLetterSink for DeadLetterKafka {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        self.rebuild()?;
        if std::mem::take(&mut self.write_failed) {
            return Ok(()); // these records were just sent again with the others
        }
        self.unacked.extend_from_slice(records);
        for r in records {
            if let Err(e) = self.send(r) {
                if e.kind() == weir_engine::ErrorKind::Retryable {
                    self.write_failed = true;
                    self.broken = true;
                }
                return Err(e.into_dead_letter_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::dead_letter::{PartitionInfo, Reason};
    use weir_engine::ErrorInfo;

    fn letter(offset: Option<u64>, raw: &[u8]) -> DeadLetter {
        DeadLetter {
            partition: std::sync::Arc::new(PartitionInfo {
                source: "db".into(),
                id: 0,
                state_id: 0,
                number: 0,
                topic: None,
                file: None,
            }),
            offset,
            reason: Reason::Rejected,
            error: ErrorInfo::new("postgres_refused", "refused"),
            raw: Some(raw.to_vec()),
            trace: Default::default(),
        }
    }

    #[test]
    fn rows_a_sink_refused_have_keys_of_their_own_the_same_when_sent_again() {
        let (a, b) = (letter(None, b"{\"k\":1}"), letter(None, b"{\"k\":2}"));
        assert_ne!(record_key(&a), record_key(&b));
        assert_eq!(record_key(&a), record_key(&letter(None, b"{\"k\":1}")));
        assert_eq!(record_key(&letter(Some(7), b"x")), "db//0/7");
        // one record refused by two operators: two dead letters, two keys
        let by = |operator: &str| {
            let mut l = letter(Some(7), b"x");
            l.error = l.error.clone().with("operator", operator);
            record_key(&l)
        };
        assert_eq!(by("hourly"), "db//0/7/hourly");
        assert_ne!(by("hourly"), by("daily"));
        // one record late for two windows: two dead letters, two keys
        let late = |window: &str| {
            let mut l = letter(Some(7), b"x");
            l.error = l.error.clone().with("window", window);
            record_key(&l)
        };
        assert_ne!(late("per_5m"), late("per_1h"));
    }
}
