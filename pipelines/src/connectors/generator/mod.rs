//! The `generator` source: synthetic `data-ingestion` or `service-health` events, seeded,
//! as fast as possible or at a rate (one partition).

use serde_saphyr::Spanned;
use weir_sources::{GeneratorConfig, GeneratorReader, Kind};

use crate::connectors::sources::{
    OpenSource, OpenedSource, PlannedInput, SourceConnector, SourceKind,
};
use crate::error::PipelineError;
use crate::model::{GeneratorDoc, GeneratorKind};
use crate::plan::Ctx;
use crate::run::RunError;

/// The `generator` source kind.
pub const SOURCE: SourceKind = SourceKind {
    key: "generator",
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

    fn set_event_time(&mut self, field: &str, idle_timeout_ms: Option<u64>) -> Result<(), String> {
        self.0.idle_timeout_ms = idle_timeout_ms;
        if field != "timestamp" {
            return Err("the generator's event time is its `timestamp` field".into());
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
