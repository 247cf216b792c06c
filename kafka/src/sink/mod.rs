//! Kafka sinks: result rows and dead letters (`dead_letter.rs`) as messages.

use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use weir_engine::job::{Committable, DeadLetterSink, Sink};
use weir_engine::{DeadLetter, EngineError, ErrorInfo, RejectedRow};
use weir_formats::json_rows::for_each_json_row;

use crate::Producer;

mod dead_letter;
mod error;

pub use dead_letter::DeadLetterKafka;
pub use error::SendError;

/// Partitions of an output topic weir creates because it does not exist.
const CREATED_TOPIC_PARTITIONS: i32 = 3;

/// Checks that the output topic exists, creating it (with [`CREATED_TOPIC_PARTITIONS`]
/// partitions) when it does not, so that a missing topic fails fast or works instead of
/// timing out on every message.
fn ensure_topic(config: &KafkaSinkConfig) -> Result<(), crate::KafkaError> {
    let topics = [config.topic.clone()];
    let timeout = std::time::Duration::from_secs(30);
    match crate::partition_counts(&config.brokers, &config.properties, &topics, timeout) {
        Ok(_) => Ok(()),
        Err(crate::KafkaError::NoSuchTopic { .. }) => {
            tracing::warn!(
                topic = %config.topic,
                partitions = CREATED_TOPIC_PARTITIONS,
                "kafka: the output topic does not exist; creating it"
            );
            crate::create_topic(
                &config.brokers,
                &config.properties,
                &config.topic,
                CREATED_TOPIC_PARTITIONS,
            )
        }
        Err(e) => Err(e),
    }
}

/// A broker without transactions: `delivery: exactly_once` cannot work there, and retrying
/// never helps (the run was retried for ever): the user's to fix.
fn no_transactions(sink: &str, e: crate::KafkaError) -> EngineError {
    EngineError::sink_caused(
        sink,
        "the broker does not support Kafka transactions, which `delivery: exactly_once` \
         needs: use a broker with transactions (Apache Kafka 0.11 or later), or \
         `delivery: idempotent`",
        e,
    )
    .user()
}

/// Where a Kafka sink writes.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka properties, passed as given (they override weir's defaults).
    pub properties: Vec<(String, String)>,
    pub format: KafkaFormat,
    pub delivery: KafkaDelivery,
}

/// How a Kafka sink delivers rows under checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// Rows flushed at each barrier; a restore may send some again, byte-identical and keyed
    /// by key + `window_start`, so a compacted topic or a key-deduplicating reader sees each
    /// once (the default).
    Idempotent,
    /// One Kafka transaction per checkpoint under `transactional_id` (see [`KafkaSink`]):
    /// `read_committed` readers see every row exactly once.
    ExactlyOnce { transactional_id: String },
}

/// How rows are encoded in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaFormat {
    /// One JSON object per row (as in NDJSON files).
    Json,
    /// Avro binary, with a writer schema derived from the rows: in the Confluent wire format
    /// when a registry is given (the schema registered under `<topic>-value`), plain otherwise.
    Avro { registry: Option<String> },
}

/// The Avro writer of a sink: its schema and the bytes before every record.
struct AvroWriter {
    schema: arrow::datatypes::SchemaRef,
    prefix: Vec<u8>,
}

/// Result rows as JSON messages, one per row. The message key is the row's key columns
/// (and `window_start` for windows) as a JSON object, so a compacted topic keeps one row per
/// key and window (per key for views: upserts), and a rewritten window replaces the old row.
pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    producer: Producer,
    value: Vec<u8>,
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    avro: Option<AvroWriter>,
    /// Batches sent since the last successful flush: after a failed delivery they are sent
    /// again through a new producer (keyed rows: a repeat is an identical upsert).
    unacked: Vec<RecordBatch>,
    /// A delivery failed: the producer is replaced and `unacked` sent again before anything
    /// else.
    broken: bool,
    /// The failed call was a write whose batch is already in `unacked`.
    write_failed: bool,
    /// Rows refused for good, for the dead-letter output.
    rejected: Vec<RejectedRow>,
    /// Digests of the messages in `unacked` refused so far: sent again after a failure,
    /// they are refused again, and are dead letters once.
    refused_seen: std::collections::HashSet<u64>,
    /// `delivery: exactly_once`: the transaction's state.
    txn: Option<Txn>,
    /// The schema registry's client (`format: avro` with a registry), made at first use.
    registry: Option<weir_formats::registry::RegistryClient>,
    /// In tests: the outcomes of the next sends (`false`: it fails as a full queue would).
    #[cfg(test)]
    send_plan: std::collections::VecDeque<bool>,
}

/// A transactional sink's state. Rows go into the open transaction as they come. At
/// checkpoint E's barrier the transaction is flushed (*prepared*), and its rows go into the
/// checkpoint as an outbox; when the checkpoint is complete it commits, together with a
/// marker (the epoch E as the committed offset of group `weir-txn.<id>`). Rows written
/// between the barrier and the commit wait, since a producer has one transaction at a time.
///
/// After a crash, librdkafka cannot resume a transaction, so recovery aborts it (by
/// registering the same transactional id again, which also fences a zombie instance) and,
/// when the marker says the restored checkpoint's transaction never committed, sends its
/// outbox again in a new transaction: nothing is lost, nothing is committed twice.
struct Txn {
    id: String,
    marker: crate::TxnMarker,
    /// `init_transactions` was called on the current producer.
    ready: bool,
    /// A transaction is open on the producer.
    open: bool,
    /// The epoch whose barrier prepared the open transaction.
    prepared: Option<u64>,
    /// Rows written after the prepared transaction's barrier.
    waiting: Vec<RecordBatch>,
    /// The epoch whose commit reported an error although it may have gone through (a
    /// timeout, a coordinator fail-over): the marker says which before anything is sent
    /// again.
    uncertain: Option<u64>,
    /// Reads the marker's epoch in tests: librdkafka's mock cluster acknowledges
    /// transactional offset commits without storing them.
    #[cfg(test)]
    marker_reader: Option<Box<dyn Fn() -> Option<u64> + Send>>,
    /// Told of every transaction that commits, in tests: (transactional id, epoch, rows).
    #[cfg(test)]
    on_commit: Option<OnCommit>,
}

/// A test's view of the transactions that commit: (transactional id, epoch, rows).
#[cfg(test)]
type OnCommit = Box<dyn Fn(&str, u64, &[RecordBatch]) + Send>;

impl Txn {
    /// The epoch of the last transaction that committed.
    fn committed_epoch(&self, config: &KafkaSinkConfig) -> Result<Option<u64>, crate::KafkaError> {
        #[cfg(test)]
        if let Some(read) = &self.marker_reader {
            return Ok(read());
        }
        crate::committed_marker(&config.brokers, &config.properties, &self.marker)
    }
}

impl KafkaSink {
    /// A sink named `name`.
    pub fn new(name: &str, config: KafkaSinkConfig) -> Result<Self, EngineError> {
        ensure_topic(&config).map_err(|e| {
            let denied = matches!(e, crate::KafkaError::Denied { .. });
            let e = EngineError::sink_caused(name, "", e);
            if denied {
                e.user()
            } else {
                e
            }
        })?;
        let producer = Producer::new(&config.brokers, &producer_properties(&config))
            .map_err(|e| EngineError::sink_caused(name, "", e))?;
        let txn = match &config.delivery {
            KafkaDelivery::Idempotent => None,
            KafkaDelivery::ExactlyOnce { transactional_id } => Some(Txn {
                marker: crate::TxnMarker::new(
                    &config.brokers,
                    &format!("weir-txn.{transactional_id}"),
                    &config.topic,
                )
                .map_err(|e| EngineError::sink_caused(name, "", e))?,
                id: transactional_id.clone(),
                ready: false,
                open: false,
                prepared: None,
                waiting: Vec::new(),
                uncertain: None,
                #[cfg(test)]
                marker_reader: None,
                #[cfg(test)]
                on_commit: None,
            }),
        };
        Ok(KafkaSink {
            txn,
            name: name.to_string(),
            config,
            producer,
            value: Vec::new(),
            keys: Vec::new(),
            key_ends: Vec::new(),
            avro: None,
            unacked: Vec::new(),
            broken: false,
            write_failed: false,
            rejected: Vec::new(),
            refused_seen: std::collections::HashSet::new(),
            registry: None,
            #[cfg(test)]
            send_plan: Default::default(),
        })
    }

    /// A transient failure: the producer is replaced at the next call, which sends every
    /// unacknowledged batch again first.
    /// The error of a failed flush or commit: retried with a new producer, unless the broker
    /// refuses whatever the retries (a denied write: the user's to fix) or
    /// the transactional producer cannot go on (fenced by another instance with its
    /// transactional id: fencing it back would start a war; a broker without transactions).
    fn failed(&mut self, e: crate::KafkaError) -> EngineError {
        match e {
            crate::KafkaError::Delivery {
                lasting: Some(_), ..
            } => EngineError::sink_caused(&self.name, "", e).user(),
            crate::KafkaError::Transaction {
                unsupported: true, ..
            } => no_transactions(&self.name, e),
            // (the broker took transactions when it began: a fatal error now is a fence;
            // a pool worker joins again, a single run ends)
            crate::KafkaError::Transaction { fatal: true, .. } => EngineError::Fenced(format!(
                "sink `{}`: a fatal transaction error (most likely another instance registered \
                 its transactional id, which fences this one): {e}",
                self.name
            )),
            e => {
                self.broken = true;
                EngineError::sink_caused(&self.name, "", e).unavailable()
            }
        }
    }

    /// After a failure: a new producer, and every unacknowledged batch sent again (for a
    /// transactional sink: the transaction aborted, and its rows sent again in a new one).
    fn rebuild(&mut self) -> Result<(), EngineError> {
        if !self.broken {
            return Ok(());
        }
        let producer = Producer::new(&self.config.brokers, &producer_properties(&self.config))
            .map_err(|e| EngineError::sink_caused(&self.name, "", e).unavailable())?;
        // the old producer's queue is purged when it is dropped here
        self.producer = producer;
        if let Some(t) = self.txn.as_mut() {
            t.ready = false;
            t.open = false;
            // registering the id again settles the old producer's transaction
            self.begin()?;
            if self.commit_went_through()? {
                self.broken = false;
                return Ok(());
            }
        }
        tracing::info!(sink = %self.name, batches = self.unacked.len(), "kafka: sending the unacknowledged rows again");
        // every batch stays unacknowledged: a failure part-way leaves `broken`, and the next
        // call sends them all again (in a new transaction)
        for i in 0..self.unacked.len() {
            let batch = self.unacked[i].clone();
            self.send_batch(&batch)
                .map_err(|e| e.into_sink_error(&self.name))?;
        }
        self.broken = false;
        Ok(())
    }

    /// After a commit that reported an error (the transaction settled since): whether it
    /// committed, read from the marker. If it did, its rows are done and the rows that waited
    /// for it go into the new transaction; if not, the caller sends its rows again.
    fn commit_went_through(&mut self) -> Result<bool, EngineError> {
        let Some(t) = self.txn.as_mut() else {
            return Ok(false);
        };
        let Some(epoch) = t.uncertain else {
            return Ok(false);
        };
        let committed = t
            .committed_epoch(&self.config)
            .map_err(|e| EngineError::sink_caused(&self.name, "", e).unavailable())?;
        t.uncertain = None;
        if committed.is_none_or(|c| c < epoch) {
            tracing::info!(sink = %self.name, epoch, "kafka: the transaction whose commit failed did not commit");
            return Ok(false);
        }
        tracing::warn!(sink = %self.name, epoch, "kafka: the transaction whose commit reported an error had committed: its rows are not sent again");
        t.prepared = None;
        let waiting = std::mem::take(&mut t.waiting);
        self.settle_unacked();
        self.send_waiting(waiting)?;
        Ok(true)
    }

    /// Sends, in the transaction now open, the rows that waited for the last one's commit:
    /// they all join the unacknowledged rows first, so that a failure part-way sends every
    /// one of them again (in a new transaction) at the next call, and none is lost with it.
    fn send_waiting(&mut self, waiting: Vec<RecordBatch>) -> Result<(), EngineError> {
        let first = self.unacked.len();
        self.unacked.extend(waiting);
        if first == self.unacked.len() {
            return Ok(());
        }
        if let Err(e) = self.begin() {
            self.broken = true;
            return Err(e);
        }
        for i in first..self.unacked.len() {
            let batch = self.unacked[i].clone();
            if let Err(e) = self.send_batch(&batch) {
                if e.kind() == weir_engine::ErrorKind::Retryable {
                    self.broken = true;
                }
                return Err(e.into_sink_error(&self.name));
            }
        }
        Ok(())
    }

    /// Makes sure a transaction is open on the producer (transactional sinks).
    fn begin(&mut self) -> Result<(), EngineError> {
        let Some(t) = self.txn.as_mut() else {
            return Ok(());
        };
        let err = |e: crate::KafkaError| {
            if let crate::KafkaError::Transaction {
                unsupported: true, ..
            } = e
            {
                return no_transactions(&self.name, e);
            }
            let fatal = matches!(e, crate::KafkaError::Transaction { fatal: true, .. });
            let e = EngineError::sink_caused(&self.name, "", e);
            if fatal {
                e
            } else {
                e.unavailable()
            }
        };
        if !t.ready {
            self.producer.init_transactions().map_err(err)?;
            t.ready = true;
        }
        if !t.open {
            self.producer.begin_transaction().map_err(err)?;
            t.open = true;
        }
        Ok(())
    }

    /// Sends rows inside the open transaction (transactional sinks), or as they come. A
    /// producer that did not take them is replaced at the next call, which sends them again;
    /// rows that cannot be sent (see [`SendError::kind`]) fail the run.
    fn send_now(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if let Err(e) = self.begin() {
            self.broken = true;
            return Err(e);
        }
        self.unacked.push(batch.clone());
        if let Err(e) = self.send_batch(batch) {
            if e.kind() == weir_engine::ErrorKind::Retryable {
                self.write_failed = true;
                self.broken = true;
            }
            // otherwise sending the rows again would fail the same way: the run fails
            return Err(e.into_sink_error(&self.name));
        }
        Ok(())
    }

    /// The batches sent are acknowledged (or given up): none will be sent again.
    fn settle_unacked(&mut self) {
        self.unacked.clear();
        self.refused_seen.clear();
    }

    /// A message refused for good: kept for the dead-letter output, once however often it
    /// is sent again.
    fn refuse(&mut self, code: &'static str, message: String, key: &[u8], value: &[u8]) {
        let digest = fnv1a(key) ^ fnv1a(value).rotate_left(1);
        if !self.refused_seen.insert(digest) {
            return;
        }
        self.rejected.push(RejectedRow {
            raw: value.to_vec(),
            error: ErrorInfo::new(code, message)
                .with("topic", self.config.topic.as_str())
                .with("key", String::from_utf8_lossy(key).into_owned()),
        });
    }

    /// The Avro writer for rows of `batch`'s schema (registering the schema when it is new,
    /// through the sink's one registry client).
    fn avro_writer(&mut self, batch: &RecordBatch) -> Result<(), SendError> {
        let KafkaFormat::Avro { registry } = &self.config.format else {
            return Ok(());
        };
        if self
            .avro
            .as_ref()
            .is_some_and(|w| w.schema == batch.schema())
        {
            return Ok(());
        }
        let text = weir_formats::avro_encode::avro_schema(&batch.schema(), &self.name);
        let prefix = match registry {
            Some(url) => {
                let subject = format!("{}-value", self.config.topic);
                let client = match &mut self.registry {
                    Some(c) => c,
                    slot => slot.insert(weir_formats::registry::RegistryClient::new(url).map_err(
                        |source| SendError::Registry {
                            subject: subject.clone(),
                            source,
                        },
                    )?),
                };
                let id = client
                    .register(&subject, &text)
                    .map_err(|source| SendError::Registry { subject, source })?;
                let mut p = vec![0u8];
                p.extend_from_slice(&id.to_be_bytes());
                p
            }
            None => Vec::new(),
        };
        self.avro = Some(AvroWriter {
            schema: batch.schema(),
            prefix,
        });
        Ok(())
    }
}

impl KafkaSink {
    /// Queues every row of `batch`; rows the client refuses for good (over
    /// `message.max.bytes`) are kept for the dead-letter output; other errors are returned.
    fn send_batch(&mut self, batch: &RecordBatch) -> Result<(), SendError> {
        #[cfg(test)]
        if self.send_plan.pop_front() == Some(false) {
            return Err(SendError::Kafka(crate::KafkaError::Delivery {
                brokers: self.config.brokers.clone(),
                topic: self.config.topic.clone(),
                message: "the test's queue is full".into(),
                lasting: None,
            }));
        }
        self.keys.clear();
        self.key_ends.clear();
        let schema = batch.schema();
        let key_count = match schema.metadata().get(weir_engine::KEYS_METADATA) {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| SendError::BadKeys { value: n.clone() })?,
            None => {
                schema
                    .index_of("window_start")
                    .map_err(|_| SendError::Unkeyed)?
                    + 1
            }
        };
        let key_batch = batch
            .project(&(0..key_count).collect::<Vec<_>>())
            .map_err(|_| SendError::BadKeys {
                value: key_count.to_string(),
            })?;
        let (keys, key_ends) = (&mut self.keys, &mut self.key_ends);
        let mut line = Vec::new();
        for_each_json_row(&key_batch, &mut line, |_, k| {
            keys.extend_from_slice(k);
            key_ends.push(keys.len());
            Ok(())
        })
        .map_err(SendError::encode)?;
        self.avro_writer(batch)?;
        // a view's rows carry `op`; `delete` rows are followed by a tombstone
        let ops = schema
            .metadata()
            .contains_key(weir_engine::KEYS_METADATA)
            .then(|| batch.column_by_name("op"))
            .flatten()
            .and_then(|c| c.as_string_opt::<i32>())
            .cloned();
        let deleted = |row: usize| ops.as_ref().is_some_and(|o| o.value(row) == "delete");
        let mut refused = Vec::new();
        let topic = self.config.topic.clone();
        // the trace of the write, when spans are exported: consumers can join it
        let traceparent = weir_engine::trace::current_traceparent();
        let headers: Vec<(&str, &[u8])> = traceparent
            .as_deref()
            .map(|t| vec![("traceparent", t.as_bytes())])
            .unwrap_or_default();
        if let Some(avro) = &self.avro {
            let mut text = String::new();
            for row in 0..batch.num_rows() {
                self.value.clear();
                self.value.extend_from_slice(&avro.prefix);
                weir_formats::avro_encode::encode_row(batch, row, &mut self.value, &mut text);
                let start = if row == 0 { 0 } else { self.key_ends[row - 1] };
                let key = &self.keys[start..self.key_ends[row]];
                match self
                    .producer
                    .send(&topic, Some(key), Some(&self.value), &headers)
                {
                    Ok(()) if deleted(row) => {
                        self.producer.send(&topic, Some(key), None, &headers)?
                    }
                    Ok(()) => {}
                    Err(crate::KafkaError::Refused { code, message, .. }) => {
                        refused.push((code, message, key.to_vec(), self.value.clone()))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            let (producer, keys, key_ends) = (&self.producer, &self.keys, &self.key_ends);
            let mut failure = None;
            for_each_json_row(batch, &mut self.value, |row, value| {
                let start = if row == 0 { 0 } else { key_ends[row - 1] };
                let key = &keys[start..key_ends[row]];
                let sent = producer.send(&topic, Some(key), Some(value), &headers);
                // an expired view key: its last row, then a tombstone for compaction
                let sent = match sent {
                    Ok(()) if deleted(row) => producer.send(&topic, Some(key), None, &headers),
                    other => other,
                };
                match sent {
                    Ok(()) => Ok(()),
                    Err(crate::KafkaError::Refused { code, message, .. }) => {
                        refused.push((code, message, key.to_vec(), value.to_vec()));
                        Ok(())
                    }
                    Err(e) => {
                        failure = Some(e);
                        Err(std::io::Error::other("delivery failed"))
                    }
                }
            })
            .map_err(|e| match failure.take() {
                Some(f) => SendError::Kafka(f),
                None => SendError::encode(e),
            })?;
        }
        for (code, message, key, value) in refused {
            self.refuse(code, message, &key, &value);
        }
        Ok(())
    }
}

impl KafkaSink {
    /// In a worker pool, before restoring partitions from checkpoint `epoch` of another
    /// worker, whose pre-commit said `info`; this sink has that worker's transactional id.
    /// Registering the id aborts the transaction it left open and fences it if it still runs
    /// (a zombie); then the checkpoint's transaction commits from its outbox unless the
    /// marker says it did already (by that worker before it stopped, or by another claimant).
    /// Returns whether it committed.
    pub fn roll_forward(
        mut self,
        epoch: u64,
        info: &serde_json::Value,
    ) -> Result<bool, EngineError> {
        if self.txn.is_none() {
            return Ok(false);
        }
        self.begin()?;
        let Some(t) = self.txn.as_ref() else {
            return Ok(false);
        };
        let committed = t
            .committed_epoch(&self.config)
            .map_err(|e| EngineError::sink_caused(&self.name, "", e).unavailable())?;
        let outbox = info["outbox"].as_str();
        let done = committed.is_some_and(|c| c >= epoch) || outbox.is_none();
        if !done {
            let batches = outbox
                .map(outbox_decode)
                .transpose()
                .map_err(|e| EngineError::sink_caused(&self.name, "", e))?
                .unwrap_or_default();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            tracing::info!(sink = %self.name, transactional_id = %t.id, epoch, rows, "kafka: committing the transaction of another worker's checkpoint, which it did not commit");
            self.send_waiting(batches)?;
            self.flush()?;
            if let Some(t) = self.txn.as_mut() {
                t.prepared = Some(epoch);
            }
            self.commit(epoch)?;
        }
        // an empty transaction stays open on the producer: nothing to abort at the broker
        self.finish()?;
        Ok(!done)
    }
}

impl Committable for KafkaSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.rebuild()?;
        let flushed = self.producer.flush();
        for r in self.producer.take_refused() {
            self.refuse(r.code, r.message, &r.key.unwrap_or_default(), &r.payload);
        }
        if let Err(e) = flushed {
            return Err(self.failed(e));
        }
        if self.txn.is_some() {
            // acknowledged but not visible: the rows stay until their transaction commits
            return Ok(false);
        }
        self.settle_unacked();
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        match &self.txn {
            // rows after the last checkpoint are not committed: a restore produces them again
            Some(t) if t.open && t.prepared.is_none() => {
                tracing::info!(sink = %self.name, "kafka: aborting the transaction of the rows after the last checkpoint");
                self.producer
                    .abort_transaction()
                    .map_err(|e| EngineError::sink_caused(&self.name, "", e))
            }
            Some(_) => Ok(()),
            None => self.flush().map(|_| ()),
        }
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<serde_json::Value, EngineError> {
        let earlier = self.txn.as_ref().and_then(|t| t.prepared);
        match earlier {
            None if self.txn.is_none() => return self.flush().map(|_| serde_json::Value::Null),
            // a later barrier means the earlier checkpoint completed (one at a time)
            Some(p) if p < epoch => self.commit(p)?,
            _ => {}
        }
        self.flush()?;
        let outbox = outbox_encode(&self.unacked)
            .map_err(|e| EngineError::sink_caused(&self.name, "", e))?;
        let rows: usize = self.unacked.iter().map(|b| b.num_rows()).sum();
        let Some(t) = self.txn.as_mut() else {
            return Ok(serde_json::Value::Null);
        };
        // a transaction without rows stays open for the next epoch: nothing to commit
        if t.open && rows > 0 {
            t.prepared = Some(epoch);
        }
        Ok(serde_json::json!({
            "transactional_id": t.id,
            "epoch": epoch,
            "rows": rows,
            "outbox": outbox,
        }))
    }

    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        self.rebuild()?;
        let Some(t) = self.txn.as_mut() else {
            return Ok(());
        };
        let Some(prepared) = t.prepared.filter(|&p| p <= epoch) else {
            return Ok(());
        };
        if let Err(e) = self.producer.commit_transaction(&t.marker, prepared) {
            // the commit may have gone through: the marker tells, after the new producer
            // settled the transaction (see `rebuild`)
            t.uncertain = Some(prepared);
            return Err(self.failed(e));
        }
        #[cfg(test)]
        if let Some(f) = &t.on_commit {
            f(&t.id, prepared, &self.unacked);
        }
        t.open = false;
        t.prepared = None;
        let waiting = std::mem::take(&mut t.waiting);
        self.settle_unacked();
        tracing::debug!(sink = %self.name, epoch = prepared, "kafka: transaction committed");
        self.send_waiting(waiting)
    }

    fn recover(&mut self, from: Option<(u64, &serde_json::Value)>) -> Result<(), EngineError> {
        if self.txn.is_none() {
            return Ok(());
        }
        // a call made again after a failure: the rows the failed one sent are in a
        // transaction of its producer, which a new producer aborts (see `rebuild`); they are
        // sent again below, once. The rows it saw refused are the restored checkpoint's dead
        // letters already (a call that finds the transaction committed leaves before the
        // clear below)
        self.rejected.clear();
        self.settle_unacked();
        self.rebuild()?;
        // fences an older instance and aborts the transaction a crash left open
        self.begin()?;
        let Some((epoch, info)) = from else {
            return Ok(());
        };
        let Some(t) = self.txn.as_ref() else {
            return Ok(());
        };
        let committed = t
            .committed_epoch(&self.config)
            .map_err(|e| EngineError::sink_caused(&self.name, "", e).unavailable())?;
        if let Some(c) = committed.filter(|&c| c > epoch) {
            // a restore from an older checkpoint than the newest (a damaged one skipped):
            // the rows of the epochs after it committed and cannot be taken back
            return Err(EngineError::sink(
                &self.name,
                format!(
                    "topic {} already has the transaction of checkpoint {c} of this sink \
                     (transactional id {}), newer than the checkpoint the run starts from \
                     ({epoch}): its rows would be written twice. Restore checkpoint {c}, or \
                     write to a new topic or transactional id",
                    self.config.topic, t.id
                ),
            ));
        }
        let Some(outbox) = info["outbox"].as_str() else {
            return Ok(());
        };
        if committed.is_some_and(|c| c >= epoch) {
            tracing::info!(sink = %self.name, epoch, "kafka: the restored checkpoint's transaction had committed");
            return Ok(());
        }
        let batches =
            outbox_decode(outbox).map_err(|e| EngineError::sink_caused(&self.name, "", e))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        tracing::info!(sink = %self.name, epoch, rows, "kafka: the restored checkpoint's transaction did not commit; sending its rows again");
        self.send_waiting(batches)?;
        if let Some(t) = self.txn.as_mut() {
            t.prepared = Some(epoch);
        }
        self.commit(epoch)?;
        // the rows the client refused again are in the restored checkpoint's dead letters
        // already (its pre-commit forwarded them): not a second time
        self.rejected.clear();
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        self.rebuild()?;
        if std::mem::take(&mut self.write_failed) {
            // this batch failed before and was just sent again with the others
            return Ok(());
        }
        if let Some(t) = self.txn.as_mut().filter(|t| t.prepared.is_some()) {
            // the prepared transaction waits for its checkpoint: this row goes in the next
            t.waiting.push(batch.clone());
            return Ok(());
        }
        self.send_now(batch)
    }

    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.rejected)
    }
}

/// The `transaction.timeout.ms` of an `exactly_once` sink whose properties do not set one.
pub const TRANSACTION_TIMEOUT_MS: u64 = 180_000;

/// The producer's properties: the sink's, with `transactional.id` for `exactly_once`.
fn producer_properties(config: &KafkaSinkConfig) -> Vec<(String, String)> {
    let KafkaDelivery::ExactlyOnce { transactional_id } = &config.delivery else {
        return config.properties.clone();
    };
    // a transaction outlives a message's delivery timeout (120 s), unless the sink says else
    let mut p = vec![(
        "transaction.timeout.ms".to_string(),
        TRANSACTION_TIMEOUT_MS.to_string(),
    )];
    p.extend(config.properties.iter().cloned());
    p.push(("transactional.id".into(), transactional_id.clone()));
    p
}

/// 64-bit FNV-1a: a digest that stays the same across versions and machines (message keys
/// outlive the process that wrote them).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Rows as an Arrow IPC stream in base64 (a transaction's outbox in the checkpoint's
/// manifest); `None` when there are none.
fn outbox_encode(batches: &[RecordBatch]) -> Result<Option<String>, arrow::error::ArrowError> {
    use base64::Engine as _;
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &first.schema())?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(Some(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// The rows of an outbox.
fn outbox_decode(text: &str) -> Result<Vec<RecordBatch>, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("the checkpoint's outbox is not base64: {e}"))?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("the checkpoint's outbox is unreadable: {e}"))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the checkpoint's outbox is unreadable: {e}"))
}

#[cfg(test)]
mod tests;
