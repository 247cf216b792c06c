//! The NATS sink: result rows published to a JetStream subject, one message per row.
//!
//! - Every message carries a deterministic `Nats-Msg-Id` (see [`ids`]): a window row's id is
//!   a hash of the pipeline, the output and the row's key (key columns and `window_start`);
//!   a view row's adds the checkpoint epoch it belongs to and the row itself. After a
//!   restore the rows published again have the ids they had, and the stream drops them as
//!   repeats within its duplicate window (`duplicate_window`, 2 minutes by default).
//! - Window rows are published as they come, `max_in_flight` awaiting their acknowledgement
//!   at once; a view's changes are kept per key and its newest row per key is published at
//!   each checkpoint (or, without checkpoints, at each flush), so a key has one message per
//!   epoch and its last message is its current row.
//! - A flush or checkpoint barrier (pre-commit) returns only once every message was
//!   acknowledged: a checkpoint completes after its rows are stored in the stream.
//! - A message the server does not acknowledge (timeout, connection lost, server restarting)
//!   stays pending and the call fails as [`EngineError::Unavailable`]: the engine's retry
//!   policy and circuit breaker send it again. A message refused for good (over the server's
//!   `max_payload` or the stream's `max_msg_size`) goes to the dead-letter output. No stream
//!   for the subject is an error of the run (checked at start and again when the server
//!   stops answering on the subject).

mod dead_letter;
pub mod ids;
mod link;
pub mod publish;

use std::collections::HashMap;
use std::time::Duration;

use crate::NatsEndpoint;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use weir_engine::job::{Committable, Sink};
use weir_engine::{EngineError, ErrorInfo, RejectedRow};

pub use dead_letter::{DeadLetterNats, DeadLetterNatsConfig};
pub use publish::{
    NatsSinkError, Outcome, Outgoing, PublishFailure, Publisher, StreamFacts, DEFAULT_ACK_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
};

use weir_formats::json_rows::for_each_json_row;

/// How rows are encoded in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsFormat {
    /// One JSON object per row (as in NDJSON files).
    Json,
    /// Plain Avro binary, with the writer schema derived from the rows (as Kafka's without a
    /// registry).
    Avro,
}

/// What the NATS sink needs to know.
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    pub endpoint: NatsEndpoint,
    /// The subject published to (no wildcards); a JetStream stream must capture it.
    pub subject: String,
    pub format: NatsFormat,
    /// Publishes awaiting their acknowledgement at once.
    pub max_in_flight: usize,
    /// Wait for one acknowledgement before the message is sent again.
    pub ack_timeout: Duration,
    /// The pipeline's name (in message ids).
    pub pipeline: String,
    /// The window or view published (in message ids), set when an output names the sink.
    pub output: String,
    /// A view's key columns (`None` for a window).
    pub view_keys: Option<usize>,
    /// Mixed into every message id: a replay's range, so that its rewritten windows are new
    /// messages rather than repeats the stream drops.
    pub id_salt: String,
}

/// A message waiting for its acknowledgement.
struct Pending {
    message: Outgoing,
    /// The row's JSON (for the dead-letter output, when the message is refused).
    row: Bytes,
}

/// A view's newest row per key since the last publish.
#[derive(Default)]
struct ViewChanges {
    rows: Vec<(Vec<u8>, Bytes, Bytes)>,
    index: HashMap<Vec<u8>, usize>,
}

/// Result rows published to a JetStream subject.
pub struct NatsSink {
    name: String,
    config: NatsSinkConfig,
    link: link::Link,
    pending: Vec<Pending>,
    view: ViewChanges,
    /// The failed call was a write whose rows are already pending.
    write_failed: bool,
    rejected: Vec<RejectedRow>,
    /// The epoch of the last checkpoint barrier (or the restored checkpoint's); `None`
    /// without checkpoints.
    epoch: Option<u64>,
    /// Without checkpoints: this run's tag and flush count, in view message ids.
    run_tag: String,
    flushes: u64,
    /// With checkpoints: the line of checkpoints this sink's epochs belong to, in view
    /// message ids with the epoch: kept in the checkpoints (a restore repeats the ids, which
    /// the stream drops), new when there is none (a run started over, a pool worker's own
    /// sequence), so that another line's equal epoch number never makes a new change look
    /// like a repeat. Empty for a checkpoint written before it was kept.
    lineage: String,
    line: Vec<u8>,
}

impl NatsSink {
    /// Connects and checks that a stream captures the subject; a server that does not
    /// answer yet is connected to at the first publish (see [`link`]).
    pub fn new(name: &str, config: NatsSinkConfig) -> Result<Self, EngineError> {
        let (link, facts) = link::Link::open(
            name,
            &config.endpoint,
            &config.subject,
            config.max_in_flight,
            config.ack_timeout,
        )
        .map_err(|e| EngineError::sink_caused(name, "", e))?;
        if let Some(facts) = facts {
            tracing::info!(
                sink = %name,
                subject = %config.subject,
                stream = %facts.name,
                duplicate_window_s = facts.duplicate_window.as_secs(),
                "nats: publishing to JetStream; repeats after a restore are dropped within the stream's duplicate window"
            );
        }
        let run_tag = format!(
            "run{:x}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            std::process::id()
        );
        Ok(NatsSink {
            name: name.to_string(),
            config,
            link,
            pending: Vec::new(),
            view: ViewChanges::default(),
            write_failed: false,
            rejected: Vec::new(),
            epoch: None,
            lineage: run_tag.clone(),
            run_tag,
            flushes: 0,
            line: Vec::new(),
        })
    }

    fn fatal(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::sink(&self.name, message)
    }

    /// A failure caused by `e`, which says it all.
    fn caused(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::sink_caused(&self.name, "", e)
    }

    /// The number of key columns of `batch`'s rows (a view's keys; a window's group keys
    /// and `window_start`).
    fn key_count(&self, batch: &RecordBatch) -> Result<usize, EngineError> {
        match self.config.view_keys {
            Some(k) => Ok(k),
            None => batch
                .schema()
                .index_of("window_start")
                .map(|i| i + 1)
                .map_err(|_| self.fatal("rows without `window_start` cannot be keyed")),
        }
    }

    /// Encodes `batch`'s rows: window rows become pending messages, view rows replace their
    /// key's earlier change.
    fn add_rows(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let key_count = self.key_count(batch)?;
        let key_batch = batch
            .project(&(0..key_count).collect::<Vec<_>>())
            .map_err(|e| self.caused(e))?;
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(batch.num_rows());
        for_each_json_row(&key_batch, &mut self.line, |_, k| {
            keys.push(k.to_vec());
            Ok(())
        })
        .map_err(|e| self.caused(e))?;
        let mut rows: Vec<Bytes> = Vec::with_capacity(batch.num_rows());
        for_each_json_row(batch, &mut self.line, |_, r| {
            rows.push(Bytes::copy_from_slice(r));
            Ok(())
        })
        .map_err(|e| self.caused(e))?;
        let payloads = match self.config.format {
            NatsFormat::Json => rows.clone(),
            NatsFormat::Avro => self.avro_rows(batch),
        };
        let traceparent = weir_engine::trace::current_traceparent();
        for ((key, row), payload) in keys.into_iter().zip(rows).zip(payloads) {
            if self.config.view_keys.is_some() {
                let v = &mut self.view;
                match v.index.get(&key) {
                    Some(&i) => v.rows[i] = (key, row, payload),
                    None => {
                        v.index.insert(key.clone(), v.rows.len());
                        v.rows.push((key, row, payload));
                    }
                }
                continue;
            }
            let c = &self.config;
            let id = ids::window_id(&c.pipeline, &c.output, &c.id_salt, &key);
            let message = outgoing(id, &key, payload, traceparent.as_deref());
            self.pending.push(Pending { message, row });
        }
        Ok(())
    }

    /// The Avro encoding of every row of `batch`.
    fn avro_rows(&mut self, batch: &RecordBatch) -> Vec<Bytes> {
        let mut text = String::new();
        (0..batch.num_rows())
            .map(|row| {
                let mut out = Vec::new();
                weir_formats::avro_encode::encode_row(batch, row, &mut out, &mut text);
                Bytes::from(out)
            })
            .collect()
    }

    /// The tag of epoch `epoch`'s view messages: the epoch in its [`NatsSink::lineage`].
    fn epoch_tag(&self, epoch: u64) -> String {
        if self.lineage.is_empty() {
            format!("e{epoch}")
        } else {
            format!("{}.e{epoch}", self.lineage)
        }
    }

    /// The view's changes as pending messages, their ids tagged with `tag` (the epoch).
    fn take_view_changes(&mut self, tag: &str) {
        let traceparent = weir_engine::trace::current_traceparent();
        let v = std::mem::take(&mut self.view);
        let c = &self.config;
        for (key, row, payload) in v.rows {
            let id = ids::view_id(&c.pipeline, &c.output, &c.id_salt, &key, tag, &row);
            let message = outgoing(id, &key, payload, traceparent.as_deref());
            self.pending.push(Pending { message, row });
        }
    }

    /// Publishes every pending message. Stored ones leave; refused ones go to `rejected`;
    /// the others stay pending and the call fails as unavailable.
    fn send_pending(&mut self) -> Result<(), EngineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let messages: Vec<Outgoing> = self.pending.iter().map(|p| p.message.clone()).collect();
        let name = self.name.clone();
        let outcomes = self
            .link
            .get(|m, e| link_error(&name, m, e))?
            .publish_all(&self.config.subject, &messages);
        let total = self.pending.len();
        let mut keep = Vec::new();
        let (mut first, mut no_stream, mut duplicates) = (None, false, 0u64);
        for (p, outcome) in std::mem::take(&mut self.pending).into_iter().zip(outcomes) {
            match outcome {
                Outcome::Stored { duplicate } => duplicates += u64::from(duplicate),
                Outcome::Failed(f) if f.is_retryable() => {
                    no_stream |= matches!(f, PublishFailure::NoStream(_));
                    first.get_or_insert_with(|| error_chain(&f));
                    keep.push(p);
                }
                Outcome::Failed(f) => self.rejected.push(RejectedRow {
                    raw: p.row.to_vec(),
                    error: ErrorInfo::new(f.code(), error_chain(&f))
                        .with("subject", self.config.subject.as_str())
                        .with("msg_id", p.message.id.as_str()),
                }),
            }
        }
        if duplicates > 0 {
            tracing::info!(sink = %self.name, duplicates, "nats: repeats dropped by the stream's duplicate window");
        }
        self.pending = keep;
        if self.pending.is_empty() {
            return Ok(());
        }
        if no_stream {
            // the server answers but no stream takes the subject: an error of the run
            let name = self.name.clone();
            let publisher = self.link.get(|m, e| link_error(&name, m, e))?;
            if let Err(e @ NatsSinkError::NoStream { .. }) =
                publisher.stream_for(&self.config.subject)
            {
                return Err(self.caused(e));
            }
        }
        Err(self
            .fatal(format!(
                "{} of {total} messages to `{}` not acknowledged yet: {}; {}",
                self.pending.len(),
                self.config.subject,
                first.unwrap_or_default(),
                link::WHILE_DOWN
            ))
            .unavailable())
    }

    /// The view's changes under `tag`, then every pending message published.
    fn publish_changes(&mut self, tag: &str) -> Result<(), EngineError> {
        self.take_view_changes(tag);
        self.send_pending()
    }
}

/// A message with its id, key header and trace.
fn outgoing(id: String, key: &[u8], payload: Bytes, traceparent: Option<&str>) -> Outgoing {
    let mut headers = vec![("Weir-Key", String::from_utf8_lossy(key).into_owned())];
    if let Some(t) = traceparent {
        headers.push(("traceparent", t.to_string()));
    }
    Outgoing {
        id,
        headers,
        payload,
    }
}

/// The sink's error of its connection: `message`, caused by the client's error if any.
fn link_error(name: &str, message: String, e: Option<NatsSinkError>) -> EngineError {
    match e {
        Some(e) => EngineError::sink_caused(name, message, e),
        None => EngineError::sink(name, message),
    }
}

/// An error with its causes, `a: b: c` (reqwest hides the reason of a refused connection
/// in them; see [`weir_engine::error::chain`]).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    weir_engine::error::chain(e).to_string()
}

impl Committable for NatsSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        if !self.view.rows.is_empty() {
            self.flushes += 1;
        }
        let tag = format!("{}.{}", self.run_tag, self.flushes);
        self.publish_changes(&tag)?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        // rows after the last checkpoint: they belong to the epoch that would come next
        let tag = match self.epoch {
            Some(e) => self.epoch_tag(e + 1),
            None => {
                self.flushes += 1;
                format!("{}.{}", self.run_tag, self.flushes)
            }
        };
        self.publish_changes(&tag)
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        self.epoch = Some(epoch);
        self.publish_changes(&self.epoch_tag(epoch))?;
        Ok(serde_json::json!({ "lineage": self.lineage }))
    }

    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        self.epoch = Some(from.map_or(0, |(e, _)| e));
        self.lineage = match from {
            Some((_, info)) => info["lineage"].as_str().unwrap_or_default().to_string(),
            None => self.run_tag.clone(),
        };
        Ok(())
    }
}

impl Sink for NatsSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.write_failed) {
            self.add_rows(batch)?;
        }
        if self.pending.len() >= self.config.max_in_flight.max(1) {
            if let Err(e) = self.send_pending() {
                // the rows are pending: the retried call only sends them again
                self.write_failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.rejected)
    }
}
