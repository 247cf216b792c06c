//! Planning of Kafka: a source's consumer settings, a sink's producer settings, the
//! dead-letter topic.

use serde_saphyr::Spanned;
use weir_kafka::{KafkaDelivery, KafkaFormat, KafkaSinkConfig, KafkaSourceConfig, StartFrom};

use super::doc::{KafkaSinkDoc, KafkaSourceDoc};
use crate::error::PipelineError;
use crate::model::*;
use crate::plan::Ctx;

/// The brokers a Kafka sink or dead-letter output uses when it names none: those of the
/// first Kafka source, else `127.0.0.1:9092`.
fn default_brokers(doc: &PipelineDoc) -> String {
    doc.sources
        .values()
        .find_map(|s| s.value.kafka.as_ref().map(|k| k.value.brokers.clone()))
        .unwrap_or_else(|| "127.0.0.1:9092".to_string())
}

pub(crate) fn kafka_sink_config(
    doc: &PipelineDoc,
    k: &KafkaSinkDoc,
    format: KafkaFormat,
    delivery: KafkaDelivery,
) -> KafkaSinkConfig {
    KafkaSinkConfig {
        format,
        delivery,
        brokers: k.brokers.clone().unwrap_or_else(|| default_brokers(doc)),
        topic: k.topic.clone(),
        properties: k
            .properties
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
    }
}

/// The least time a transaction of an `exactly_once` sink stays open beyond the checkpoint
/// interval: the checkpoint itself and the commit.
const TRANSACTION_MARGIN_MS: u64 = 10_000;

/// Why `exactly_once` cannot work with checkpoints every `interval_ms`: a transaction stays
/// open from the first row of an epoch until its checkpoint completes (about one interval),
/// and a broker aborts one open longer than `transaction.timeout.ms` (weir's 180 s unless
/// the sink's properties say otherwise) and fences the producer: every long interval would
/// end the run.
fn transaction_outlasted(
    interval_ms: u64,
    properties: &indexmap::IndexMap<String, String>,
) -> Option<String> {
    let timeout_ms = properties
        .get("transaction.timeout.ms")
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(weir_kafka::sink::TRANSACTION_TIMEOUT_MS);
    (interval_ms.saturating_add(TRANSACTION_MARGIN_MS) > timeout_ms).then(|| {
        format!(
            "`delivery: exactly_once` keeps a transaction open for about one checkpoint \
             interval ({interval_ms} ms) and the broker aborts one open longer than \
             `transaction.timeout.ms` ({timeout_ms} ms), fencing the sink: set \
             `properties: {{ transaction.timeout.ms: \"{}\" }}` (the broker's \
             `transaction.max.timeout.ms`, 15 minutes by default, allows at most that), or \
             a shorter `checkpoint.interval`",
            interval_ms.saturating_mul(2)
        )
    })
}

/// Reads `start_from`: `committed`, `earliest`, `latest` or an RFC 3339 time.
pub(crate) fn parse_start_from(text: &str) -> Option<StartFrom> {
    match text {
        "committed" => Some(StartFrom::Committed),
        "earliest" => Some(StartFrom::Earliest),
        "latest" => Some(StartFrom::Latest),
        t => weir_engine::time::parse_rfc3339_ms(t.as_bytes()).map(StartFrom::Time),
    }
}

/// A Kafka source's consumer settings, checked (`format` is the source's).
pub(crate) fn source_config(
    doc: &PipelineDoc,
    ctx: &Ctx,
    sname: &str,
    k: &Spanned<KafkaSourceDoc>,
    format: Format,
) -> Result<KafkaSourceConfig, PipelineError> {
    let d = &k.value;
    let topics = match &d.topic.value {
        OneOrMany::One(t) => vec![t.clone()],
        OneOrMany::Many(ts) => ts.clone(),
    };
    if topics.is_empty() || topics.iter().any(|t| t.is_empty()) {
        return Err(ctx.err(
            &k.referenced,
            format!("source `{sname}`: `topic` needs a topic name (or a list of them)"),
        ));
    }
    if let Some(twice) = topics
        .iter()
        .enumerate()
        .find_map(|(i, t)| topics[..i].contains(t).then_some(t))
    {
        // librdkafka refuses the subscription with "Invalid argument or configuration"
        return Err(ctx.err(
            &d.topic.referenced,
            format!("source `{sname}`: topic `{twice}` is listed twice in `topic`; list each once"),
        ));
    }
    if d.brokers.trim().is_empty() {
        return Err(ctx.err(
            &k.referenced,
            format!("source `{sname}`: `brokers` is empty (host:port[,host:port...])"),
        ));
    }
    let start_from = match &d.start_from {
                None => StartFrom::Committed,
                Some(t) => parse_start_from(t).ok_or_else(|| ctx.err(&k.referenced, format!("source `{sname}`: bad start_from `{t}`: use committed, earliest, latest or an RFC 3339 time such as 2026-11-24T10:00:00Z")))?,
            };
    if let Some(r) = &d.schema_registry {
        if format != Format::Avro {
            return Err(ctx.err(
                &k.referenced,
                format!("source `{sname}`: schema_registry is for `format: avro`"),
            ));
        }
        weir_sources::SchemaRegistry::new(r).map_err(|e| {
            ctx.err(&k.referenced, format!("source `{sname}`"))
                .caused_by(e)
        })?;
    }
    if let Some(refusal) = d
        .properties
        .iter()
        .find_map(|(key, value)| weir_kafka::source::managed::refused_property(key, value))
    {
        return Err(ctx.err(
            &k.referenced,
            format!("source `{sname}`: properties: {refusal}"),
        ));
    }
    let cfg = KafkaSourceConfig {
        brokers: d.brokers.clone(),
        topics,
        group_id: d
            .group_id
            .clone()
            .unwrap_or_else(|| format!("weir-{}", doc.name.value)),
        start_from,
        properties: d
            .properties
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
        idle_timeout: None,
        until_caught_up: false,
        caught_up_timeout: weir_kafka::DEFAULT_CAUGHT_UP_TIMEOUT,
        end_offsets: Default::default(),
        read_offsets: None,
        with_headers: false,
        pool: None,
        upstream: None,
        repartition_max_backlog: match d.repartition_max_backlog {
            None => weir_kafka::source::DEFAULT_REPARTITION_MAX_BACKLOG,
            Some(0) => {
                return Err(ctx.err(
                    &k.referenced,
                    format!(
                        "source `{sname}`: `repartition_max_backlog` must be at least 1 (messages)"
                    ),
                ))
            }
            Some(n) => n,
        },
    };
    Ok(cfg)
}

/// A Kafka sink's producer settings, checked (`format` is the sink's `format:`).
pub(crate) fn sink_config(
    doc: &PipelineDoc,
    ctx: &Ctx,
    kname: &str,
    k: &Spanned<KafkaSinkDoc>,
    format_doc: Option<&Spanned<Format>>,
) -> Result<KafkaSinkConfig, PipelineError> {
    let format = match format_doc.map(|f| (f.value, f.referenced)) {
        None | Some((Format::Json, _)) => KafkaFormat::Json,
        Some((Format::Avro, _)) => KafkaFormat::Avro {
            registry: k.value.schema_registry.clone(),
        },
        Some((Format::Cloudevents, l)) => {
            return Err(ctx.err(
                &l,
                format!("sink `{kname}`: kafka sinks write `json` or `avro`"),
            ))
        }
    };
    if let Some(r) = &k.value.schema_registry {
        if format == KafkaFormat::Json {
            return Err(ctx.err(
                &k.referenced,
                format!("sink `{kname}`: schema_registry is for `format: avro`"),
            ));
        }
        weir_formats::registry::RegistryClient::new(r).map_err(|e| {
            ctx.err(&k.referenced, format!("sink `{kname}`"))
                .caused_by(e)
        })?;
    }
    if k.value.topic.is_empty() {
        return Err(ctx.err(&k.referenced, format!("sink `{kname}`: `topic` is empty")));
    }
    // weir registers a transactional producer's id and runs its transactions itself; an id
    // set as a property made an `idempotent` sink's producer transactional, which then
    // failed at its first message
    if k.value.properties.contains_key("transactional.id") {
        return Err(ctx.err(
            &k.referenced,
            format!("sink `{kname}`: properties: `transactional.id` is set by weir: use `delivery: exactly_once` (with `transactional_id` to name it)"),
        ));
    }
    let delivery = match k.value.delivery.as_deref() {
        None | Some("idempotent") => {
            if k.value.transactional_id.is_some() {
                return Err(ctx.err(
                    &k.referenced,
                    format!("sink `{kname}`: `transactional_id` is for `delivery: exactly_once`"),
                ));
            }
            KafkaDelivery::Idempotent
        }
        Some("exactly_once") => {
            let Some(checkpoint) = &doc.checkpoint else {
                return Err(ctx.err(
                            &k.referenced,
                            format!("sink `{kname}`: `delivery: exactly_once` commits one Kafka transaction per checkpoint: add `checkpoint: {{ dir: … }}`"),
                        ));
            };
            let interval_ms = checkpoint
                .value
                .interval
                .as_ref()
                .map_or(crate::plan::DEFAULT_CHECKPOINT_INTERVAL_MS, |d| d.0);
            if let Some(why) = transaction_outlasted(interval_ms, &k.value.properties) {
                return Err(ctx.err(&k.referenced, format!("sink `{kname}`: {why}")));
            }
            KafkaDelivery::ExactlyOnce {
                transactional_id: k
                    .value
                    .transactional_id
                    .clone()
                    .unwrap_or_else(|| format!("{}.{kname}", doc.name.value)),
            }
        }
        Some(other) => {
            return Err(ctx.err(
                &k.referenced,
                format!(
                "sink `{kname}`: unknown delivery `{other}`: use `idempotent` or `exactly_once`"
            ),
            ))
        }
    };
    Ok(kafka_sink_config(doc, &k.value, format, delivery))
}
