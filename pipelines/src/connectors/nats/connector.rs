//! The NATS connectors behind the registry's traits: the JetStream source, the publishing
//! sink and the dead-letter subject.

use std::time::Duration;

use weir_engine::job::{DeadLetterSink, Sink};
use weir_nats::source::{NatsPartitionsReader, NatsReader, NatsSourceConfig};
use weir_nats::{DeadLetterNats, DeadLetterNatsConfig, NatsSink, NatsSinkConfig};
use weir_sources::MessageColumn;

use crate::connectors::sources::{
    avro_limits, EventTimeError, OpenSource, OpenedSource, PlannedInput, ReplayedSource,
    SourceConnector, SourceKind,
};
use crate::connectors::{
    Attach, DeadLetterConnector, DeadLetterKind, OpenSink, PoolSource, PooledSource, SinkConnector,
    SinkKind,
};
use crate::error::PipelineError;
use crate::replay::ReplayError;
use crate::run::RunError;

/// The `nats` source kind.
pub const SOURCE: SourceKind = SourceKind {
    key: "nats",
    name: "NATS",
    plural: "NATS streams",
    replays: true,
    pooled: Some("partitioned NATS stream"),
    declared: |d| d.nats.is_some(),
    reads_avro: true,
    secrets: |d| {
        d.nats
            .iter()
            .flat_map(|n| super::secrets(&n.value.url, n.value.credentials.as_ref()))
            .collect()
    },
    plan: |p| {
        let n = p.source.value.nats.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.source.referenced,
                format!("source `{}`: `nats` is missing", p.name),
            )
        })?;
        let checkpointed = p.doc.checkpoint.is_some();
        let cfg = super::source::config(&n.value, &p.doc.name.value, p.name, &p.ctx.dir)
            .and_then(|mut cfg| {
                cfg.ack_policy = super::source::ack_policy(&n.value, checkpointed)?;
                Ok(cfg)
            })
            .map_err(|(at, e)| {
                let at = at.as_ref().unwrap_or(&n.referenced);
                p.ctx.err(at, format!("source `{}`: {}", p.name, e.chain()))
            })?;
        let mut planned = PlannedInput::of(Box::new(NatsInput(Box::new(cfg))));
        planned.avro_limits = avro_limits(n.value.avro_limits.as_ref()).map_err(|e| {
            p.ctx
                .err(&n.referenced, format!("source `{}`: {e}", p.name))
        })?;
        Ok(planned)
    },
};

/// The `nats` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "nats",
    name: "NATS",
    own_format: None,
    declared: |d| d.nats.is_some(),
    takes_format: true,
    secrets: |d| {
        d.nats
            .iter()
            .flat_map(|n| super::sink::secrets(&n.value))
            .collect()
    },
    plan: |p| {
        let n = p.sink.value.nats.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.sink.referenced,
                format!("sink `{}`: `nats` is missing", p.name),
            )
        })?;
        let format = p.sink.value.format.as_ref().map(|f| f.value);
        let c = super::sink::sink_config(p.pipeline, p.name, &n.value, format, &p.ctx.dir)
            .map_err(|e| {
                let m = format!("sink `{}`: {}", p.name, e.chain());
                p.ctx.err(&n.referenced, m)
            })?;
        Ok(Box::new(NatsTarget(c)))
    },
};

/// The `nats` dead-letter kind.
pub const DEAD_LETTER: DeadLetterKind = DeadLetterKind {
    key: "nats",
    declared: |d| d.nats.is_some(),
    secrets: |d| {
        d.nats
            .iter()
            .flat_map(|n| super::sink::secrets(&n.value))
            .collect()
    },
    plan: |doc, ctx, d| {
        let n = d
            .value
            .nats
            .as_ref()
            .ok_or_else(|| ctx.err(&d.referenced, "dead_letter: `nats` is missing"))?;
        let c = super::sink::dead_letter_config(&doc.name.value, &n.value, &ctx.dir)
            .map_err(|e| ctx.err(&n.referenced, format!("dead_letter: {}", e.chain())))?;
        Ok(Box::new(NatsDeadLetter(c)))
    },
};

/// A NATS JetStream stream, read by a durable pull consumer (one partition).
#[derive(Debug, Clone)]
pub struct NatsInput(pub Box<NatsSourceConfig>);

impl SourceConnector for NatsInput {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn message_columns(&self) -> &'static [MessageColumn] {
        &MessageColumn::NATS
    }

    fn default_idle_timeout_ms(&self) -> Option<u64> {
        Some(crate::connectors::kafka::DEFAULT_IDLE_TIMEOUT_MS)
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

    fn fingerprint(&self) -> String {
        format!("nats stream {}", self.0.stream)
    }

    fn summary(&self) -> String {
        super::source::describe(&self.0)
    }

    fn describe(&self) -> String {
        format!(
            "nats {} {}",
            self.0.endpoint.describe_servers(),
            super::source::describe(&self.0)
        )
    }

    /// Bounded by the stream's last sequence at the start with `--until-caught-up`, and by
    /// its bounds (a replay's) when the whole stream has some; continuing at a checkpoint's
    /// sequence or at the bounds' start.
    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
        let start = |key: &str| at.start_at(key);
        let cfg = opened_config(&self.0, at);
        let keys = cfg.partition_keys();
        let reader: Box<dyn weir_engine::job::PartitionReader> = if cfg.partitions.is_some() {
            // one filtered consumer and watermark per subject partition
            let partitions: Vec<(u32, Option<weir_engine::events::Resume>)> = keys
                .iter()
                .enumerate()
                .map(|(n, key)| (n as u32, start(key)))
                .collect();
            Box::new(NatsPartitionsReader::new(
                at.index,
                at.name,
                at.first_partition,
                &cfg,
                &partitions,
            )?)
        } else {
            let start = start(&cfg.partition_key());
            Box::new(
                NatsReader::new(at.index, at.name, at.first_partition, cfg)?.with_resume(start),
            )
        };
        Ok(OpenedSource { reader, keys })
    }

    fn replay(
        &mut self,
        _source: &str,
        range: (i64, i64),
        suffix: &str,
    ) -> Result<ReplayedSource, ReplayError> {
        let found = super::source::replay(&mut self.0, range, suffix)?;
        Ok(ReplayedSource {
            ranges: vec![Box::new(found)],
        })
    }

    fn pool_refusal(&self, source: &str, keyed: bool) -> Option<String> {
        super::pool::refusal(source, &self.0, keyed)
    }

    fn pool_assigns_partitions(&self) -> bool {
        true
    }

    fn pooled(&self, at: &PoolSource) -> Result<PooledSource, RunError> {
        Ok(super::pool::pooled(&self.0, at))
    }
}

/// `cfg` as opened `at`: reading until caught up as asked; a whole stream with bounds ends
/// at the sequence before their end. Subject partitions are never bounded: a replay reads
/// the whole stream as one partition (`source::replay` drops `partitions`).
fn opened_config(cfg: &NatsSourceConfig, at: &OpenSource) -> NatsSourceConfig {
    let mut cfg = cfg.clone();
    cfg.until_caught_up = at.until_caught_up;
    if cfg.partitions.is_none() {
        if let Some(end) = at.end(&cfg.partition_key()) {
            // `end` is the first sequence past the range: the last one read is the one before
            cfg.end_sequence = Some(end.saturating_sub(1));
        }
    }
    cfg
}

/// A NATS JetStream subject (the output is set when a window or view names the sink).
#[derive(Debug, Clone)]
pub struct NatsTarget(pub NatsSinkConfig);

impl SinkConnector for NatsTarget {
    fn kind(&self) -> &'static str {
        "nats"
    }

    // not the URL: message ids do not depend on it, and it may hold credentials
    fn fingerprint(&self) -> String {
        format!("nats subject {} of {}", self.0.subject, self.0.output)
    }

    fn summary(&self) -> String {
        format!("subject {}", self.0.subject)
    }

    fn describe(&self, checkpointed: bool) -> String {
        super::sink::describe(&self.0, checkpointed)
    }

    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        super::sink::attach(&mut self.0, &at.reference.value, at.schema, at.output)
            .map_err(|e| at.err(e.chain()))
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        Ok(Box::new(NatsSink::new(at.name, self.0.clone())?))
    }

    /// The same subject, message ids salted with the replay's range.
    fn replayed(&self, suffix: &str) -> Box<dyn SinkConnector> {
        Box::new(NatsTarget(super::sink::replayed(&self.0, suffix)))
    }
}

/// A NATS JetStream subject of dead letters, one JSON message per record.
#[derive(Debug, Clone)]
pub struct NatsDeadLetter(pub DeadLetterNatsConfig);

impl DeadLetterConnector for NatsDeadLetter {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn fingerprint(&self) -> String {
        format!("nats subject {}", self.0.subject)
    }

    fn describe(&self) -> String {
        format!(
            "nats {} subject {}",
            self.0.endpoint.describe_servers(),
            self.0.subject
        )
    }

    fn open(&self, _checkpointed: bool) -> Result<Box<dyn DeadLetterSink>, RunError> {
        Ok(Box::new(DeadLetterNats::new(self.0.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::tests::{first_input, opening, source_plan};
    use crate::connectors::ReadBounds;

    #[test]
    fn a_nats_stream_with_bounds_starts_and_ends_at_them() {
        let source = "    nats: { url: \"nats://127.0.0.1:9\", stream: events }\n    format: json";
        let plan = source_plan("nats-bounds", source);
        let input: &NatsInput = first_input(&plan);
        let key = input.0.partition_key();
        let bounds = |k: &str| (k == key).then_some(ReadBounds { start: 4, end: 10 });
        let at = opening(&plan, &|_| None, &bounds);
        let cfg = opened_config(&input.0, &at);
        // the last sequence read is the one before the bounds' end
        assert_eq!(cfg.end_sequence, Some(9));
        assert!(cfg.until_caught_up);
        assert_eq!(at.start(&key), Some(4));
        let unbounded = OpenSource {
            bounds: &crate::connectors::unbounded,
            until_caught_up: false,
            ..at
        };
        let cfg = opened_config(&input.0, &unbounded);
        assert_eq!(cfg.end_sequence, None);
        assert!(!cfg.until_caught_up);
    }
}
