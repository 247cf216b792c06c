//! Kafka sinks: result rows and dead letters as messages.

use arrow::record_batch::RecordBatch;
use weir_engine::job::{DeadLetterSink, Sink};
use weir_engine::{DeadLetter, EngineError};
use weir_kafka::Producer;

use crate::file::for_each_json_row;

/// Partitions of an output topic weir creates because it does not exist.
const CREATED_TOPIC_PARTITIONS: i32 = 3;

/// Checks that the output topic exists, creating it (with [`CREATED_TOPIC_PARTITIONS`]
/// partitions) when it does not, so that a missing topic fails fast or works instead of
/// timing out on every message.
fn ensure_topic(config: &KafkaSinkConfig) -> Result<(), weir_kafka::KafkaError> {
    let topics = [config.topic.clone()];
    let timeout = std::time::Duration::from_secs(30);
    match weir_kafka::partition_counts(&config.brokers, &config.properties, &topics, timeout) {
        Ok(_) => Ok(()),
        Err(weir_kafka::KafkaError::NoSuchTopic { .. }) => {
            tracing::warn!(
                topic = %config.topic,
                partitions = CREATED_TOPIC_PARTITIONS,
                "kafka: the output topic does not exist; creating it"
            );
            weir_kafka::create_topic(
                &config.brokers,
                &config.properties,
                &config.topic,
                CREATED_TOPIC_PARTITIONS,
            )
        }
        Err(e) => Err(e),
    }
}

/// Where a Kafka sink writes.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    pub topic: String,
    /// librdkafka properties, passed as given (they override weir's defaults).
    pub properties: Vec<(String, String)>,
    pub format: KafkaFormat,
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
}

impl KafkaSink {
    /// A sink named `name`.
    pub fn new(name: &str, config: KafkaSinkConfig) -> Result<Self, EngineError> {
        ensure_topic(&config).map_err(|e| EngineError::sink(name, e))?;
        let producer = Producer::new(&config.brokers, &config.properties)
            .map_err(|e| EngineError::sink(name, e))?;
        Ok(KafkaSink {
            name: name.to_string(),
            config,
            producer,
            value: Vec::new(),
            keys: Vec::new(),
            key_ends: Vec::new(),
            avro: None,
        })
    }

    /// The Avro writer for rows of `batch`'s schema (registering the schema when it is new).
    fn avro_writer(&mut self, batch: &RecordBatch) -> Result<(), String> {
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
        let text = crate::avro::avro_schema(&batch.schema(), &self.name);
        let prefix = match registry {
            Some(url) => {
                let client = weir_kafka::RegistryClient::new(url)?;
                let id = client.register(&format!("{}-value", self.config.topic), &text)?;
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

impl Sink for KafkaSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let name = self.name.clone();
        let err = |e: &dyn std::fmt::Display| EngineError::sink(&name, e);
        self.keys.clear();
        self.key_ends.clear();
        // Window rows: the key columns, then `window_start` (the rest are values); view rows:
        // the key columns, counted in the schema's `weir.keys` metadata.
        let schema = batch.schema();
        let key_count = match schema.metadata().get(weir_engine::KEYS_METADATA) {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| err(&"bad `weir.keys` metadata"))?,
            None => {
                schema
                    .index_of("window_start")
                    .map_err(|_| err(&"rows without `window_start` cannot be keyed"))?
                    + 1
            }
        };
        let key_batch = batch
            .project(&(0..key_count).collect::<Vec<_>>())
            .map_err(|e| err(&e))?;
        let (keys, key_ends) = (&mut self.keys, &mut self.key_ends);
        let mut line = Vec::new();
        for_each_json_row(&key_batch, &mut line, |_, k| {
            keys.extend_from_slice(k);
            key_ends.push(keys.len());
            Ok(())
        })
        .map_err(|e| err(&e))?;
        self.avro_writer(batch).map_err(|e| err(&e))?;
        if let Some(avro) = &self.avro {
            let mut text = String::new();
            for row in 0..batch.num_rows() {
                self.value.clear();
                self.value.extend_from_slice(&avro.prefix);
                crate::avro::encode_row(batch, row, &mut self.value, &mut text);
                let start = if row == 0 { 0 } else { self.key_ends[row - 1] };
                let key = &self.keys[start..self.key_ends[row]];
                self.producer
                    .send(&self.config.topic, Some(key), &self.value, &[])
                    .map_err(|e| err(&e))?;
            }
            return Ok(());
        }
        let (producer, topic) = (&self.producer, self.config.topic.as_str());
        let (keys, key_ends) = (&self.keys, &self.key_ends);
        let mut failure = None;
        for_each_json_row(batch, &mut self.value, |row, value| {
            let start = if row == 0 { 0 } else { key_ends[row - 1] };
            let key = &keys[start..key_ends[row]];
            if let Err(e) = producer.send(topic, Some(key), value, &[]) {
                failure = Some(e);
                return Err(std::io::Error::other("delivery failed"));
            }
            Ok(())
        })
        .map_err(|e| match failure.take() {
            Some(f) => err(&f),
            None => err(&e),
        })
    }

    fn flush(&mut self) -> Result<bool, EngineError> {
        self.producer
            .flush()
            .map_err(|e| EngineError::sink(&self.name, e))?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.flush().map(|_| ())
    }
}

/// Dead letters as JSON messages (the same record as in a dead-letter file, original bytes
/// kept), keyed by `source/topic/partition/offset`.
pub struct DeadLetterKafka {
    topic: String,
    producer: Producer,
    value: Vec<u8>,
}

impl DeadLetterKafka {
    /// Dead letters to `topic`.
    pub fn new(config: KafkaSinkConfig) -> Result<Self, EngineError> {
        ensure_topic(&config).map_err(|e| EngineError::DeadLetter(e.to_string()))?;
        let producer = Producer::new(&config.brokers, &config.properties)
            .map_err(|e| EngineError::DeadLetter(e.to_string()))?;
        Ok(DeadLetterKafka {
            topic: config.topic,
            producer,
            value: Vec::new(),
        })
    }
}

impl DeadLetterSink for DeadLetterKafka {
    fn write(&mut self, records: &[DeadLetter]) -> Result<(), EngineError> {
        for r in records {
            self.value.clear();
            serde_json::to_writer(&mut self.value, &r.to_json())
                .map_err(|e| EngineError::DeadLetter(e.to_string()))?;
            let p = &r.partition;
            let key = format!(
                "{}/{}/{}/{}",
                p.source,
                p.topic.as_deref().or(p.file.as_deref()).unwrap_or(""),
                p.number,
                r.offset.map_or(String::new(), |o| o.to_string())
            );
            // the record's trace and correlation ids travel on as headers
            let mut headers = vec![("weir.reason", r.reason.as_str().as_bytes())];
            headers.extend(r.trace.headers());
            self.producer
                .send(&self.topic, Some(key.as_bytes()), &self.value, &headers)
                .map_err(|e| EngineError::DeadLetter(e.to_string()))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, EngineError> {
        self.producer
            .flush()
            .map_err(|e| EngineError::DeadLetter(e.to_string()))?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.flush().map(|_| ())
    }
}
