//! The `generator` source: synthetic `data-ingestion` or `service-health` events, seeded,
//! as fast as possible or at a rate (one partition).

use serde_saphyr::Spanned;
use weir_sources::{GeneratorConfig, GeneratorReader, Kind};

use crate::connectors::sources::{
    EventTimeError, OpenSource, OpenedSource, PlannedInput, SourceConnector, SourceKind,
};
use crate::error::PipelineError;
use crate::plan::Ctx;
use crate::run::RunError;
use doc::{GeneratorDoc, GeneratorKind};

/// Its YAML block, as a pipeline file writes it.
pub mod doc;

/// The `generator` source kind.
pub const SOURCE: SourceKind = SourceKind {
    key: "generator",
    name: "generator",
    plural: "the generator",
    replays: false,
    pooled: None,
    declared: |d| d.generator.is_some(),
    reads_avro: false,
    secrets: crate::connectors::none,
    plan: |p| {
        let g = p.source.value.generator.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.source.referenced,
                format!("source `{}`: `generator` is missing", p.name),
            )
        })?;
        let kind = match g.value.kind {
            GeneratorKind::DataIngestion => Kind::DataIngestion,
            GeneratorKind::ServiceHealth => Kind::ServiceHealth,
        };
        let mut planned = PlannedInput::of(Box::new(Generator(generator_config(p.ctx, g, kind)?)));
        planned.default_schema = Some(kind.schema_name());
        Ok(planned)
    },
};

/// The generator's settings.
#[derive(Debug, Clone)]
pub struct Generator(pub GeneratorConfig);

/// The generator's settings, checked.
fn generator_config(
    ctx: &Ctx,
    g: &Spanned<GeneratorDoc>,
    kind: Kind,
) -> Result<GeneratorConfig, PipelineError> {
    let d = &g.value;
    let mut cfg = GeneratorConfig::new(kind);
    cfg.count = d.count;
    cfg.events_per_second = d.events_per_second.unwrap_or(0.0);
    if cfg.events_per_second < 0.0 {
        return Err(ctx.err(
            &g.referenced,
            "events_per_second must be 0 (as fast as possible) or more",
        ));
    }
    if let Some(v) = d.seed {
        cfg.seed = v;
    }
    if let Some(v) = d.keys {
        cfg.keys = v.max(1);
    }
    if let Some(v) = d.skew {
        cfg.skew = v;
    }
    cfg.start_ms = d.start_ms;
    cfg.step_ms = d.step_ms;
    if let Some(v) = d.jitter_frac {
        cfg.jitter_frac = v;
    }
    if let Some(v) = d.jitter_ms {
        cfg.jitter_ms = v.max(0);
    }
    if let Some(v) = d.late_frac {
        cfg.late_frac = v;
    }
    if let Some(v) = d.late_ms {
        cfg.late_ms = v.max(0);
    }
    if let Some(v) = d.unicode_keys {
        cfg.unicode_keys = v;
    }
    Ok(cfg)
}

impl SourceConnector for Generator {
    fn kind(&self) -> &'static str {
        "generator"
    }

    fn set_event_time(
        &mut self,
        field: &str,
        idle_timeout_ms: Option<u64>,
    ) -> Result<(), EventTimeError> {
        self.0.idle_timeout_ms = idle_timeout_ms;
        if field != "timestamp" {
            return Err(EventTimeError::FixedField {
                source_kind: "generator",
                field: "timestamp",
            });
        }
        Ok(())
    }

    fn fingerprint(&self) -> String {
        format!("generator {:?} seed {}", self.0.kind, self.0.seed)
    }

    fn summary(&self) -> String {
        let g = &self.0;
        format!(
            "{} events{}",
            g.count.map_or("unbounded".to_string(), |c| c.to_string()),
            if g.events_per_second > 0.0 {
                format!(" at {}/s", g.events_per_second)
            } else {
                String::new()
            }
        )
    }

    fn describe(&self) -> String {
        let g = &self.0;
        format!(
            "generator {} events{}, seed {}",
            g.count.map_or("unbounded".to_string(), |c| c.to_string()),
            if g.events_per_second > 0.0 {
                format!(" at {}/s", g.events_per_second)
            } else {
                " as fast as possible".into()
            },
            g.seed
        )
    }

    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
        let reader = GeneratorReader::new(
            at.index,
            at.name,
            at.first_partition,
            self.0.clone(),
            at.output_schema.clone(),
        )
        .skip((at.resume)("0").map_or(0, |r| r.next_offset));
        Ok(OpenedSource {
            reader: Box::new(reader),
            keys: vec!["0".to_string()],
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::connectors::tests::{pipeline, plan_of, refusal};
    use crate::connectors::SourceConnector;

    const FILE_SINK: &str = "    file: { path: out/w.ndjson }";

    fn source(name: &str, generator: &str) -> Box<dyn SourceConnector> {
        let yaml = pipeline(&format!("    generator: {generator}"), FILE_SINK, "");
        let mut plan = plan_of(name, &yaml).unwrap_or_else(|e| panic!("{e}"));
        plan.sources.remove(0).input
    }

    #[test]
    fn a_generator_plans_describes_and_fingerprints_its_seed() {
        let g = source("gen-plan", "{ kind: data-ingestion, count: 10, seed: 7 }");
        assert_eq!(g.kind(), "generator");
        assert_eq!(
            g.describe(),
            "generator 10 events as fast as possible, seed 7"
        );
        assert_eq!(g.summary(), "10 events");
        assert_eq!(g.fingerprint(), "generator DataIngestion seed 7");
        assert_eq!(
            source(
                "gen-plan-again",
                "{ kind: data-ingestion, count: 10, seed: 7 }"
            )
            .fingerprint(),
            g.fingerprint()
        );
        // the events depend on the seed, not on how many are made or how fast
        let faster = source(
            "gen-rate",
            "{ kind: data-ingestion, count: 20, seed: 7, events_per_second: 50 }",
        );
        assert_eq!(faster.fingerprint(), g.fingerprint());
        assert_eq!(faster.describe(), "generator 20 events at 50/s, seed 7");
        let reseeded = source("gen-seed", "{ kind: data-ingestion, count: 10, seed: 8 }");
        assert_ne!(reseeded.fingerprint(), g.fingerprint());
    }

    #[test]
    fn a_generator_is_refused_where_its_block_is() {
        let yaml = pipeline(
            "    generator: { kind: data-ingestion, events_per_second: -1 }",
            FILE_SINK,
            "",
        );
        let e = refusal("gen-bad", &yaml);
        assert!(e.line > 0 && e.column > 0, "{e}");
        assert_eq!(
            e.reason(),
            "events_per_second must be 0 (as fast as possible) or more"
        );
        // its records are JSON: the message lists the kinds that read Avro
        let yaml = pipeline(
            "    generator: { kind: data-ingestion, count: 1 }\n    format: avro",
            FILE_SINK,
            "",
        );
        assert_eq!(
            refusal("gen-avro", &yaml).reason(),
            "source `events`: format `avro` is read from Kafka or NATS messages; files and \
             the generator are json"
        );
    }

    #[test]
    fn a_generator_is_neither_replayed_nor_shared_by_a_pool() {
        let mut g = source("gen-modes", "{ kind: data-ingestion, count: 10 }");
        let why = g
            .replay("events", (0, 60_000), "replay-a-b")
            .err()
            .expect("refused");
        assert_eq!(why.kind(), weir_engine::ErrorKind::User);
        assert_eq!(
            why.to_string(),
            "source `events` is not a Kafka or NATS source: replay re-reads Kafka topics and \
             NATS streams"
        );
        assert_eq!(
            g.pool_refusal("events", true).as_deref(),
            Some(
                "source `events` is not a Kafka topic or partitioned NATS stream: only those \
                 can be shared by a worker pool"
            )
        );
        assert!(!g.pool_assigns_partitions());
        assert_eq!(g.lanes_per_partition(), None);
    }

    #[test]
    fn a_generator_refuses_another_event_time_field_as_a_user_error() {
        let mut g = source("gen-time", "{ kind: data-ingestion, count: 10 }");
        assert_eq!(g.set_event_time("timestamp", None), Ok(()));
        let e = g.set_event_time("other", None).unwrap_err();
        assert_eq!(e.kind(), weir_engine::ErrorKind::User);
        assert_eq!(
            e.to_string(),
            "the generator's event time is its `timestamp` field"
        );
    }
}
