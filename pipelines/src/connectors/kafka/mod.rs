//! Kafka: topics read in a consumer group (a worker pool shares their partitions), rows
//! written as JSON or Avro messages (idempotent, or one transaction per checkpoint), and dead
//! letters written idempotently to a topic.

use std::sync::Arc;
use std::time::Duration;

use weir_engine::checkpoint::Manifest;
use weir_engine::job::{DeadLetterSink, Sink};
use weir_engine::EngineError;
use weir_kafka::{
    DeadLetterKafka, KafkaDelivery, KafkaFormat, KafkaPartitions, KafkaReader, KafkaSink,
    KafkaSinkConfig, KafkaSourceConfig, ReadOffsets,
};
use weir_sources::MessageColumn;

use super::sources::{
    avro_limits, EventTimeError, OpenSource, OpenedSource, PlannedInput, ReplayedSource,
    SourceConnector, SourceKind,
};
use super::{Attach, DeadLetterConnector, DeadLetterKind, OpenSink, SinkConnector, SinkKind};
use super::{PoolSource, PooledSource, Repartition, Repartitioning};
use crate::error::PipelineError;
use crate::replay::{Lookup, ReplayError};
use crate::run::RunError;

/// Its YAML blocks, as a pipeline file writes them.
pub mod doc;
pub(crate) mod plan;
mod pool;
mod replay;

/// `event_time.idle_timeout` of a Kafka source when not given: a partition assigned to the
/// process that delivers nothing for a minute stops holding the watermark back.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// Secret values of a Kafka client's settings: secret-named properties, URL passwords.
fn client_secrets(
    properties: &indexmap::IndexMap<String, String>,
    registry: &Option<String>,
) -> Vec<String> {
    let mut out = super::property_secrets(properties);
    out.extend(super::url_secrets(registry));
    out
}

/// The `kafka` source kind.
pub const SOURCE: SourceKind = SourceKind {
    key: "kafka",
    name: "Kafka",
    plural: "Kafka topics",
    replays: true,
    pooled: Some("Kafka topic"),
    declared: |d| d.kafka.is_some(),
    reads_avro: true,
    secrets: |d| {
        d.kafka
            .iter()
            .flat_map(|k| client_secrets(&k.value.properties, &k.value.schema_registry))
            .collect()
    },
    plan: |p| {
        let k = p.source.value.kafka.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.source.referenced,
                format!("source `{}`: `kafka` is missing", p.name),
            )
        })?;
        let cfg = plan::source_config(p.doc, p.ctx, p.name, k, p.format)?;
        let mut planned = PlannedInput::of(Box::new(KafkaInput(cfg)));
        planned.avro_limits = avro_limits(k.value.avro_limits.as_ref()).map_err(|e| {
            p.ctx
                .err(&k.referenced, format!("source `{}`: {e}", p.name))
        })?;
        planned.registry = k.value.schema_registry.clone();
        Ok(planned)
    },
};

/// The `kafka` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "kafka",
    name: "Kafka",
    own_format: None,
    declared: |d| d.kafka.is_some(),
    takes_format: true,
    secrets: |d| {
        d.kafka
            .iter()
            .flat_map(|k| client_secrets(&k.value.properties, &k.value.schema_registry))
            .collect()
    },
    plan: |p| {
        let k = p.sink.value.kafka.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.sink.referenced,
                format!("sink `{}`: `kafka` is missing", p.name),
            )
        })?;
        let cfg = plan::sink_config(p.doc, p.ctx, p.name, k, p.sink.value.format.as_ref())?;
        Ok(Box::new(KafkaTarget(cfg)))
    },
};

/// The `kafka` dead-letter kind.
pub const DEAD_LETTER: DeadLetterKind = DeadLetterKind {
    key: "kafka",
    declared: |d| d.kafka.is_some(),
    secrets: |d| {
        d.kafka
            .iter()
            .flat_map(|k| super::property_secrets(&k.value.properties))
            .collect()
    },
    plan: |doc, ctx, d| {
        let k = d
            .value
            .kafka
            .as_ref()
            .ok_or_else(|| ctx.err(&d.referenced, "dead_letter: `kafka` is missing"))?;
        if k.value.topic.is_empty() {
            return Err(ctx.err(&k.referenced, "dead_letter: `topic` is empty"));
        }
        if k.value.delivery.is_some() || k.value.transactional_id.is_some() {
            return Err(ctx.err(
                &k.referenced,
                "dead_letter: a dead-letter topic is written idempotently (keyed by source, partition and offset); `delivery` is for sinks",
            ));
        }
        if k.value.schema_registry.is_some() {
            return Err(ctx.err(
                &k.referenced,
                "dead_letter: dead letters are JSON records; `schema_registry` is for Avro sinks",
            ));
        }
        if k.value.properties.contains_key("transactional.id") {
            return Err(ctx.err(
                &k.referenced,
                "dead_letter: properties: `transactional.id` is set by weir; a dead-letter topic is written idempotently",
            ));
        }
        Ok(Box::new(KafkaDeadLetter(plan::kafka_sink_config(
            doc,
            &k.value,
            KafkaFormat::Json,
            KafkaDelivery::Idempotent,
        ))))
    },
};

/// Topics of a Kafka cluster, read in a consumer group.
#[derive(Debug, Clone)]
pub struct KafkaInput(pub KafkaSourceConfig);

impl SourceConnector for KafkaInput {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn message_columns(&self) -> &'static [MessageColumn] {
        &MessageColumn::ALL
    }

    fn default_idle_timeout_ms(&self) -> Option<u64> {
        Some(DEFAULT_IDLE_TIMEOUT_MS)
    }

    fn set_event_time(
        &mut self,
        _field: &str,
        idle_timeout_ms: Option<u64>,
    ) -> Result<(), EventTimeError> {
        self.0.idle_timeout = idle_timeout_ms.map(Duration::from_millis);
        Ok(())
    }

    fn set_headers(&mut self, read: bool) {
        self.0.with_headers = read;
    }

    fn pooled(&self, at: &PoolSource) -> Result<PooledSource, RunError> {
        pool::pooled(&self.0, at)
    }

    fn lanes_per_partition(&self) -> Option<u32> {
        self.0.upstream.as_ref().map(|u| u.partitions.max(1) as u32)
    }

    fn repartition_refusal(&self, source: &str) -> Option<String> {
        pool::repartition_refusal(source, &self.0)
    }

    fn repartition(
        &mut self,
        at: Repartitioning,
    ) -> Result<Option<Box<dyn Repartition>>, RunError> {
        let spec = pool::repartition(&mut self.0, at)?;
        Ok(Some(Box::new(spec)))
    }

    fn fingerprint(&self) -> String {
        format!("kafka topics {}", self.0.topics.join(", "))
    }

    fn summary(&self) -> String {
        format!("topics {}", self.0.topics.join(", "))
    }

    fn describe(&self) -> String {
        let k = &self.0;
        format!(
            "kafka {} topic(s) {}, group {}, start from {:?}",
            k.brokers,
            k.topics.join(", "),
            k.group_id,
            k.start_from
        )
        .replace("Committed", "committed")
        .replace("Earliest", "earliest")
        .replace("Latest", "latest")
    }

    /// Bounded partitions (a replay's) start and end at their bounds; others continue at
    /// the checkpoint's offset.
    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
        let partitions = KafkaPartitions::discover(&self.0)
            .map_err(|e| EngineError::source_caused(at.name, "", e))?;
        let cfg = opened_config(&self.0, at, &partitions);
        let keys = partitions.keys(&cfg);
        let reader = KafkaReader::new(at.index, at.name, at.first_partition, cfg, &partitions)
            .with_resume(|t, p| at.start_at(&format!("{t}/{p}")));
        Ok(OpenedSource {
            reader: Box::new(reader),
            keys,
        })
    }

    fn replay(
        &mut self,
        _source: &str,
        range: (i64, i64),
        suffix: &str,
    ) -> Result<ReplayedSource, ReplayError> {
        let cfg = &mut self.0;
        let partitions = KafkaPartitions::discover(cfg).map_err(lookup)?;
        let found = weir_kafka::offset_ranges(
            &cfg.brokers,
            &cfg.properties,
            &cfg.topics,
            &partitions.counts,
            range.0,
            range.1,
            Duration::from_secs(30),
        )
        .map_err(lookup)?;
        // where each partition ends reaches the reader as its bounds when the replay opens it
        cfg.group_id = format!("{}-{suffix}-{}", cfg.group_id, std::process::id());
        let ranges: Vec<replay::PartitionRange> = found
            .into_iter()
            .map(|range| replay::PartitionRange {
                read: Arc::new(std::sync::atomic::AtomicU64::new(range.start)),
                range,
            })
            .collect();
        let offsets = ranges
            .iter()
            .map(|r| ((r.range.topic.clone(), r.range.partition), r.read.clone()))
            .collect();
        cfg.read_offsets = Some(Arc::new(ReadOffsets(offsets)));
        Ok(ReplayedSource {
            ranges: ranges
                .into_iter()
                .map(|r| Box::new(r) as Box<dyn super::ReplayRange>)
                .collect(),
        })
    }

    fn pool_refusal(&self, _source: &str, _keyed: bool) -> Option<String> {
        None
    }
}

/// `cfg` as opened `at`: reading until caught up as asked, bounded partitions ending at
/// their bounds' end.
fn opened_config(
    cfg: &KafkaSourceConfig,
    at: &OpenSource,
    partitions: &KafkaPartitions,
) -> KafkaSourceConfig {
    let mut cfg = cfg.clone();
    cfg.until_caught_up = at.until_caught_up;
    if let Some(t) = at.caught_up_timeout {
        cfg.caught_up_timeout = t;
    }
    for (topic, &count) in cfg.topics.iter().zip(&partitions.counts) {
        for p in 0..count {
            if let Some(end) = at.end(&format!("{topic}/{p}")) {
                cfg.end_offsets.insert((topic.clone(), p as i32), end);
            }
        }
    }
    cfg
}

/// A Kafka topic, one message per row.
#[derive(Debug, Clone)]
pub struct KafkaTarget(pub KafkaSinkConfig);

impl SinkConnector for KafkaTarget {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn fingerprint(&self) -> String {
        format!("kafka topic {}", self.0.topic)
    }

    fn summary(&self) -> String {
        format!("topic {}", self.0.topic)
    }

    fn describe(&self, checkpointed: bool) -> String {
        let k = &self.0;
        let format = match &k.format {
            KafkaFormat::Json => "json".to_string(),
            KafkaFormat::Avro { registry: None } => "avro".to_string(),
            KafkaFormat::Avro { registry: Some(r) } => {
                format!("avro, registry {}", weir_formats::registry::redact_urls(r))
            }
        };
        let delivery = match (&k.delivery, checkpointed) {
            (KafkaDelivery::ExactlyOnce { transactional_id }, _) => format!(
                "; delivery exactly_once: one Kafka transaction per checkpoint \
                 (transactional id `{transactional_id}`), rows visible to \
                 read_committed readers once, after their checkpoint"
            ),
            (KafkaDelivery::Idempotent, true) => {
                "; delivery idempotent: keyed by key + window_start, a row re-sent after a \
                 restore is byte-identical (a compacted topic or a key-deduplicating reader \
                 sees each window once)"
                    .to_string()
            }
            (KafkaDelivery::Idempotent, false) => {
                "; at least once: offsets are committed after rows are acknowledged".to_string()
            }
        };
        format!("kafka {} topic {}, {format}{delivery}", k.brokers, k.topic)
    }

    /// A transactional sink keeps the rows of a checkpoint's transaction in the checkpoint
    /// as one Arrow table, to send again after a crash: the outputs writing to it must have
    /// the same columns.
    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        let transactional = matches!(self.0.delivery, KafkaDelivery::ExactlyOnce { .. });
        match at.previous {
            Some(previous) if transactional && previous != at.schema => Err(at.err(format!(
                "sink `{}` (delivery: exactly_once) keeps a checkpoint's rows as one table: `{}` \
                 writes other columns than the output before it; give it a sink of its own",
                at.reference.value, at.output
            ))),
            _ => Ok(()),
        }
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        Ok(Box::new(KafkaSink::new(at.name, self.0.clone())?))
    }

    /// A replay runs without checkpoints, so without transactions: its rows go out
    /// idempotent, keyed as the live run's (they replace the live rows for a compacted topic
    /// or a key-deduplicating reader; `read_committed` readers see them at once). It never
    /// registers the live run's transactional id, which would fence the live run.
    fn replayed(&self, _suffix: &str) -> Box<dyn SinkConnector> {
        let mut config = self.0.clone();
        config.delivery = KafkaDelivery::Idempotent;
        Box::new(KafkaTarget(config))
    }

    /// A transactional sink commits under the worker's own transactional id (and so its own
    /// fencing and marker group): see `docs/src/operations/worker-pool.md`.
    fn for_worker(&mut self, worker: &str) {
        if let KafkaDelivery::ExactlyOnce { transactional_id } = &mut self.0.delivery {
            *transactional_id = worker_transactional_id(transactional_id, worker);
        }
    }

    /// Commits dead worker `worker`'s transaction of checkpoint `m` under its id, unless its
    /// marker says it is committed (registering the id aborts what it left open).
    fn roll_forward(
        &self,
        sink: &str,
        worker: &str,
        _adopter: &str,
        m: &Manifest,
    ) -> Result<(), EngineError> {
        let mut config = self.0.clone();
        let KafkaDelivery::ExactlyOnce { transactional_id } = &mut config.delivery else {
            return Ok(());
        };
        *transactional_id = worker_transactional_id(transactional_id, worker);
        let Some(info) = m.sinks.get(sink).filter(|i| !i.is_null()) else {
            return Ok(());
        };
        super::patiently(sink, worker, m.epoch, || {
            if KafkaSink::new(sink, config.clone())?.roll_forward(m.epoch, info)? {
                tracing::info!(
                    sink,
                    worker,
                    epoch = m.epoch,
                    "committed another worker's checkpoint transaction"
                );
            }
            Ok(())
        })
    }
}

/// The transactional id worker `worker` of a pool uses for a sink configured with `id`.
pub fn worker_transactional_id(id: &str, worker: &str) -> String {
    format!("{id}.{worker}")
}

/// A Kafka topic of dead letters, one JSON message per record.
#[derive(Debug, Clone)]
pub struct KafkaDeadLetter(pub KafkaSinkConfig);

impl DeadLetterConnector for KafkaDeadLetter {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn fingerprint(&self) -> String {
        format!("kafka topic {}", self.0.topic)
    }

    fn describe(&self) -> String {
        format!("kafka {} topic {}", self.0.brokers, self.0.topic)
    }

    fn open(&self, _checkpointed: bool) -> Result<Box<dyn DeadLetterSink>, RunError> {
        Ok(Box::new(DeadLetterKafka::new(self.0.clone())?))
    }
}
/// A replay's failed look-up in the brokers: a topic that does not exist is the user's to
/// fix; any other failure is not.
fn lookup(e: weir_kafka::KafkaError) -> Lookup {
    let kind = match e {
        weir_kafka::KafkaError::NoSuchTopic { .. } | weir_kafka::KafkaError::Denied { .. } => {
            weir_engine::ErrorKind::User
        }
        // (the broker did not answer for every partition in time: asking again may do)
        weir_kafka::KafkaError::Partial { .. } => weir_engine::ErrorKind::Retryable,
        _ => weir_engine::ErrorKind::Fatal,
    };
    Lookup::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::tests::{first_input, opening, source_plan};
    use crate::connectors::ReadBounds;
    use weir_engine::events::Resume;

    #[test]
    fn a_topic_listed_twice_is_refused_at_its_source() {
        let source = "    kafka: { brokers: \"127.0.0.1:9\", topic: [a, b, a], group_id: g }\n    format: json";
        let yaml = crate::connectors::tests::pipeline(source, "    file: { path: out.ndjson }", "");
        let e = crate::connectors::tests::refusal("kafka-topic-twice", &yaml);
        let text = format!("{}:{}: {}", e.line, e.column, e.reason());
        assert!(
            text.starts_with("4:45:") && text.contains("topic `a` is listed twice"),
            "{text}"
        );
    }

    #[test]
    fn a_kafka_source_reads_bounded_partitions_from_their_start_to_their_end() {
        let source =
            "    kafka: { brokers: \"127.0.0.1:9\", topic: t, group_id: g }\n    format: json";
        let plan = source_plan("kafka-bounds", source);
        let input: &KafkaInput = first_input(&plan);
        // partition 1 is bounded (a replay's), partition 0 resumes at the checkpoint
        let bounds = |key: &str| (key == "t/1").then_some(ReadBounds { start: 5, end: 9 });
        let resume = |key: &str| (key == "t/0").then(|| Resume::at(3));
        let at = opening(&plan, &resume, &bounds);
        let cfg = opened_config(&input.0, &at, &KafkaPartitions { counts: vec![2] });
        assert!(cfg.until_caught_up);
        assert_eq!(
            cfg.end_offsets,
            [(("t".to_string(), 1), 9)].into_iter().collect()
        );
        assert_eq!((at.start("t/0"), at.start("t/1")), (Some(3), Some(5)));
        let unbounded = OpenSource {
            bounds: &crate::connectors::unbounded,
            until_caught_up: false,
            ..at
        };
        let cfg = opened_config(&input.0, &unbounded, &KafkaPartitions { counts: vec![2] });
        assert!(!cfg.until_caught_up && cfg.end_offsets.is_empty());
        assert_eq!(unbounded.start("t/1"), None);
    }

    #[test]
    fn a_replay_writes_a_transactional_sink_without_its_transactional_id() {
        let live = KafkaTarget(KafkaSinkConfig {
            brokers: "127.0.0.1:9".into(),
            topic: "out".into(),
            properties: Vec::new(),
            format: KafkaFormat::Json,
            delivery: KafkaDelivery::ExactlyOnce {
                transactional_id: "p.out".into(),
            },
        });
        let replayed = live.replayed("replay-1");
        assert!(
            replayed.describe(false).contains("at least once"),
            "{}",
            replayed.describe(false)
        );
        assert!(!replayed.describe(true).contains("p.out"));
    }
}
