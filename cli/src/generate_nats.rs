//! `weir generate --nats URL/SUBJECT`: synthetic events published to a JetStream subject,
//! one message per event, every acknowledgement awaited, so that none is lost. Each message
//! carries a `Nats-Msg-Id` of this run and the event's index: an event sent again after a
//! failed acknowledgement is dropped by the stream as a repeat, so the stream gets exactly
//! the events asked for (while its duplicate window lasts).

use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_nats::sink::{Outcome, Outgoing, Publisher, DEFAULT_ACK_TIMEOUT};
use weir_nats::NatsEndpoint;
use weir_sources::{EventGenerator, GeneratorConfig};

/// Events published before their acknowledgements are awaited.
const BATCH: usize = 1024;
/// Attempts at a batch's unacknowledged events before giving up (one second apart).
const ATTEMPTS: u32 = 60;

/// Why generating to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateNatsError {
    #[error("--nats wants URL/SUBJECT, e.g. nats://127.0.0.1:4222/events.ingest")]
    Target,
    #[error(transparent)]
    Nats(#[from] weir_nats::sink::NatsSinkError),
    #[error("event {index} was refused for good: {source}")]
    Refused {
        index: u64,
        #[source]
        source: weir_nats::sink::PublishFailure,
    },
    #[error("{count} events were not acknowledged after {ATTEMPTS} attempts: {reason}")]
    Unacknowledged { count: usize, reason: String },
}

/// Splits `nats://host:port/subject` (several servers: `nats://a:4222,nats://b:4222/subject`).
pub fn parse_target(target: &str) -> Result<(Vec<String>, String), GenerateNatsError> {
    let (servers, subject) = target.rsplit_once('/').ok_or(GenerateNatsError::Target)?;
    let servers: Vec<String> = servers.split(',').map(|s| s.trim().to_string()).collect();
    let valid = servers.iter().all(|s| {
        s.split_once("://")
            .is_some_and(|(_, host)| !host.is_empty() && !host.contains('/'))
    });
    if !valid || subject.is_empty() || subject.contains(['*', '>', ' ']) {
        return Err(GenerateNatsError::Target);
    }
    Ok((servers, subject.to_string()))
}

/// The default stream created for `subject`: its letters in capitals, other characters `_`.
pub fn default_stream(subject: &str) -> String {
    subject
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Publishes `cfg`'s events to `target` at `rate` per second (0: as fast as acknowledged);
/// creates `stream` for the subject when no stream captures it. Returns how many were stored.
pub fn generate(
    target: &str,
    stream: Option<&str>,
    cfg: GeneratorConfig,
    rate: f64,
) -> Result<u64, GenerateNatsError> {
    let (servers, subject) = parse_target(target)?;
    let endpoint = NatsEndpoint::new(servers, "weir-generate");
    let publisher = Publisher::connect(&endpoint, BATCH, DEFAULT_ACK_TIMEOUT)?;
    let stream = stream.map_or_else(|| default_stream(&subject), str::to_string);
    let facts = publisher.ensure_stream(&stream, &subject)?;
    tracing::info!(stream = %facts.name, subject, "publishing generated events");
    let run = format!(
        "gen-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut gen = EventGenerator::new(cfg);
    let mut line = Vec::with_capacity(4096);
    let mut batch: Vec<(u64, Outgoing)> = Vec::with_capacity(BATCH);
    let started = Instant::now();
    let mut stored = 0;
    while !gen.done() {
        if rate > 0.0 {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            if gen.produced() >= due {
                stored += publish(&publisher, &subject, std::mem::take(&mut batch))?;
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        }
        line.clear();
        gen.write_next_line(&mut line);
        line.pop(); // the newline
        let index = gen.produced();
        batch.push((
            index,
            Outgoing {
                id: format!("{run}-{index}"),
                headers: vec![("Weir-Key", gen.last_key().to_string())],
                payload: Bytes::copy_from_slice(&line),
            },
        ));
        if batch.len() >= BATCH {
            stored += publish(&publisher, &subject, std::mem::take(&mut batch))?;
        }
    }
    stored += publish(&publisher, &subject, batch)?;
    Ok(stored)
}

/// Publishes one batch and waits until every event is stored, sending the unacknowledged
/// ones again (a second apart, [`ATTEMPTS`] times at most). Returns how many were new.
fn publish(
    publisher: &Publisher,
    subject: &str,
    mut batch: Vec<(u64, Outgoing)>,
) -> Result<u64, GenerateNatsError> {
    let mut stored = 0;
    for attempt in 1..=ATTEMPTS {
        if batch.is_empty() {
            return Ok(stored);
        }
        let messages: Vec<Outgoing> = batch.iter().map(|(_, m)| m.clone()).collect();
        let outcomes = publisher.publish_all(subject, &messages);
        let mut keep = Vec::new();
        let mut reason = None;
        for ((index, m), o) in batch.into_iter().zip(outcomes) {
            match o {
                Outcome::Stored { duplicate } => stored += u64::from(!duplicate),
                Outcome::Failed(f) if f.is_retryable() => {
                    reason.get_or_insert_with(|| f.to_string());
                    keep.push((index, m));
                }
                Outcome::Failed(source) => {
                    return Err(GenerateNatsError::Refused { index, source })
                }
            }
        }
        batch = keep;
        if let Some(r) = reason {
            if attempt == ATTEMPTS {
                return Err(GenerateNatsError::Unacknowledged {
                    count: batch.len(),
                    reason: r,
                });
            }
            tracing::warn!(events = batch.len(), reason = %r, "not acknowledged; sending again");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_url_and_subject() {
        let (s, subj) = parse_target("nats://127.0.0.1:4222/events.ingest").unwrap();
        assert_eq!(
            (s, subj.as_str()),
            (vec!["nats://127.0.0.1:4222".to_string()], "events.ingest")
        );
        let (s, _) = parse_target("nats://a:1,nats://b:2/x").unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_target("events").is_err());
        assert!(parse_target("nats://h:1/").is_err());
        assert!(parse_target("nats://h:1/a.*").is_err());
        assert!(parse_target("127.0.0.1:4222/x").is_err());
        assert_eq!(default_stream("events.ingest-1"), "EVENTS_INGEST_1");
    }
}
