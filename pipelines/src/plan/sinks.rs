//! Planning of sinks and the dead-letter output: each declared sink checked, retry policies,
//! and the sinks attached to the windows and views that write to them.

use arrow::datatypes::SchemaRef;
use serde_saphyr::Spanned;
use weir_engine::retry::RetryPolicy;
use weir_iceberg::{CatalogUri, PartitionBy};
use weir_sinks::{FileFormat, KafkaDelivery, KafkaFormat};

use super::{names, Ctx, DeadLetterTarget, PlannedSink, SinkTarget};
use crate::error::PipelineError;
use crate::model::*;

/// Every declared sink, checked.
pub(super) fn check_sinks(
    doc: &PipelineDoc,
    ctx: &Ctx,
    name: &str,
) -> Result<Vec<PlannedSink>, PipelineError> {
    let mut sinks = Vec::new();
    for (kname, k) in &doc.sinks {
        let target = sink_target(doc, ctx, name, kname, k)?;
        let retry = retry_policy(ctx, k.value.retry.as_ref(), &format!("sink `{kname}`"))?;
        sinks.push(PlannedSink {
            name: kname.clone(),
            target,
            schema: None,
            retry,
        });
    }
    Ok(sinks)
}

/// One sink's target, checked.
fn sink_target(
    doc: &PipelineDoc,
    ctx: &Ctx,
    name: &str,
    kname: &str,
    k: &Spanned<SinkDoc>,
) -> Result<SinkTarget, PipelineError> {
    let loc = &k.referenced;
    let v = &k.value;
    let declared = [
        v.kafka.is_some(),
        v.iceberg.is_some(),
        v.elasticsearch.is_some(),
        v.webhook.is_some(),
        v.postgres.is_some(),
        v.nats.is_some(),
        v.file.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if declared != 1 {
        return Err(ctx.err(loc, format!("sink `{kname}` needs exactly one of `kafka`, `iceberg`, `elasticsearch`, `webhook`, `postgres`, `nats`, `file` (found {declared})")));
    }
    if let (None, None, Some(f)) = (&v.kafka, &v.nats, &v.format) {
        if f.value != Format::Json {
            return Err(ctx.err(
                    &f.referenced,
                    format!("sink `{kname}`: `format` is for Kafka and NATS sinks: a file's format follows its extension (.ndjson, .csv, .parquet), Iceberg, Elasticsearch, webhook and PostgreSQL sinks have their own"),
                ));
        }
    }
    let target = if let Some(f) = &v.file {
        let p = ctx.path(&f.value.path.value);
        let format = FileFormat::from_path(&p).ok_or_else(|| {
            ctx.err(
                &f.value.path.referenced,
                format!(
                    "file sink `{kname}`: unknown extension of `{}`: use .ndjson, .csv or .parquet",
                    f.value.path.value
                ),
            )
        })?;
        SinkTarget::File { path: p, format }
    } else if let Some(k) = &v.kafka {
        SinkTarget::Kafka(super::kafka::sink_config(
            doc,
            ctx,
            kname,
            k,
            v.format.as_ref(),
        )?)
    } else if let Some(i) = &v.iceberg {
        SinkTarget::Iceberg(Box::new(super::iceberg::target(ctx, name, kname, i)?))
    } else if let Some(e) = &v.elasticsearch {
        SinkTarget::Elasticsearch(Box::new(super::elasticsearch::elasticsearch_config(
            ctx, name, kname, e,
        )?))
    } else if let Some(w) = &v.webhook {
        SinkTarget::Webhook(Box::new(super::webhook::webhook_config(
            ctx, name, kname, w,
        )?))
    } else if let Some(p) = &v.postgres {
        SinkTarget::Postgres(Box::new(super::postgres::postgres_config(
            ctx, name, kname, p,
        )?))
    } else if let Some(n) = &v.nats {
        let format = v.format.as_ref().map(|f| f.value);
        let c = crate::nats::sink::sink_config(name, kname, &n.value, format, &ctx.dir)
            .map_err(|m| ctx.err(&n.referenced, format!("sink `{kname}`: {m}")))?;
        SinkTarget::Nats(Box::new(c))
    } else {
        return Err(ctx.err(loc, format!("sink `{kname}` has no output")));
    };
    Ok(target)
}

/// The dead-letter output and its retry policy.
pub(super) fn dead_letter(
    doc: &PipelineDoc,
    ctx: &Ctx,
) -> Result<(DeadLetterTarget, RetryPolicy), PipelineError> {
    let dead_letter = match &doc.dead_letter {
        Some(d) => match (&d.value.file, &d.value.kafka, &d.value.nats) {
            (Some(f), None, None) => DeadLetterTarget::File(ctx.path(&f.value.path.value)),
            (None, None, Some(n)) => DeadLetterTarget::Nats(Box::new(
                crate::nats::sink::dead_letter_config(&doc.name.value, &n.value, &ctx.dir)
                    .map_err(|m| ctx.err(&n.referenced, format!("dead_letter: {m}")))?,
            )),
            (None, Some(k), None) => {
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
                DeadLetterTarget::Kafka(super::kafka::kafka_sink_config(
                    doc,
                    &k.value,
                    KafkaFormat::Json,
                    KafkaDelivery::Idempotent,
                ))
            }
            _ => {
                return Err(ctx.err(
                    &d.referenced,
                    "dead_letter needs exactly one of `file`, `kafka`, `nats`",
                ))
            }
        },
        None => DeadLetterTarget::File(ctx.dir.join("dead_letter.ndjson")),
    };
    let dead_letter_retry = retry_policy(
        ctx,
        doc.dead_letter
            .as_ref()
            .and_then(|d| d.value.retry.as_ref()),
        "dead_letter",
    )?;
    Ok((dead_letter, dead_letter_retry))
}

/// A `retry:` block as a policy (defaults where keys are absent).
pub(super) fn retry_policy(
    ctx: &Ctx,
    doc: Option<&Spanned<RetryDoc>>,
    what: &str,
) -> Result<RetryPolicy, PipelineError> {
    let mut p = RetryPolicy::default();
    let Some(d) = doc else {
        return Ok(p);
    };
    let err = |m: &str| ctx.err(&d.referenced, format!("{what}: retry: {m}"));
    let v = &d.value;
    let ms = std::time::Duration::from_millis;
    if let Some(b) = &v.initial_backoff {
        p.initial_backoff = ms(b.0);
    }
    if let Some(b) = &v.max_backoff {
        p.max_backoff = ms(b.0);
    }
    if let Some(m) = v.multiplier {
        p.multiplier = m;
    }
    if let Some(j) = v.jitter {
        p.jitter = j;
    }
    p.max_retries = v.max_retries;
    if let Some(c) = &v.circuit_breaker {
        if let Some(f) = c.failures {
            p.breaker_failures = f;
        }
        if let Some(o) = &c.open_for {
            p.breaker_open_for = ms(o.0);
        }
    }
    if p.initial_backoff.is_zero() {
        return Err(err("initial_backoff must be more than 0"));
    }
    if p.max_backoff < p.initial_backoff {
        return Err(err("max_backoff must be at least initial_backoff"));
    }
    if !(p.multiplier >= 1.0 && p.multiplier <= 100.0) {
        return Err(err("multiplier must be between 1 and 100"));
    }
    if !(0.0..=1.0).contains(&p.jitter) {
        return Err(err("jitter must be between 0 and 1"));
    }
    if p.breaker_failures == 0 {
        return Err(err("circuit_breaker.failures must be at least 1"));
    }
    Ok(p)
}

/// The indexes of the sinks an output writes to, which receive rows of `schema`; a CSV or
/// Parquet sink holds rows of one shape only.
pub(super) fn attach_sinks(
    ctx: &Ctx,
    doc: &PipelineDoc,
    sinks: &mut [PlannedSink],
    sink_names: &[Spanned<String>],
    schema: &SchemaRef,
    output: &str,
) -> Result<Vec<usize>, PipelineError> {
    let mut ids = Vec::new();
    for s in sink_names {
        let id = doc.sinks.get_index_of(&s.value).ok_or_else(|| {
            ctx.err(
                &s.referenced,
                format!(
                    "unknown sink `{}`; declared sinks: {}",
                    s.value,
                    names(&doc.sinks)
                ),
            )
        })?;
        let sink = &mut sinks[id];
        if let (Some(prev), SinkTarget::File { format, .. }) = (&sink.schema, &sink.target) {
            if *format != FileFormat::Ndjson && prev != schema {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already receives rows of another shape: a CSV or Parquet file holds one output; use one sink per window or view", s.value)));
            }
        }
        if let SinkTarget::Iceberg(t) = &mut sink.target {
            if let Some(other) = &t.output {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already writes `{other}`: an Iceberg sink writes one table; use one sink per window or view", s.value)));
            }
            let columns: Vec<&str> = schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .filter(|c| *c != weir_iceberg::schema::OP_COLUMN)
                .collect();
            if let Some((loc, text)) = &t.partition_text {
                t.partition_by = Some(
                    PartitionBy::parse(text, &columns)
                        .map_err(|e| ctx.err(loc, format!("sink `{}`: {e}", s.value)))?,
                );
            }
            t.view_keys = schema
                .metadata()
                .get(weir_engine::KEYS_METADATA)
                .and_then(|k| k.parse().ok());
            if t.view_keys.is_some() && matches!(t.catalog, CatalogUri::Rest(_)) {
                return Err(ctx.err(&s.referenced, format!("sink `{}`: a view's table is replaced at every commit, which weir can only commit through a SQL catalog (sqlite:// or postgres://), not a REST catalog; use a SQL catalog for views", s.value)));
            }
            t.output = Some(output.to_string());
        }
        if let SinkTarget::Elasticsearch(c) = &mut sink.target {
            if !c.output.is_empty() {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already writes `{}`: an Elasticsearch sink writes one window or view (its documents' ids and mapping are the output's); use one sink per window or view", s.value, c.output)));
            }
            c.view_keys = schema
                .metadata()
                .get(weir_engine::KEYS_METADATA)
                .and_then(|k| k.parse().ok());
            if c.view_keys.is_some() && c.index.uses_window_start() {
                return Err(ctx.err(&s.referenced, format!("sink `{}`: `{{window_start}}` in `index` names indices by window, but `{output}` is a view (no window_start)", s.value)));
            }
            c.output = output.to_string();
        }
        if let SinkTarget::Webhook(t) = &mut sink.target {
            super::webhook::attach_webhook(ctx, t, s, schema, output)?;
        }
        if let SinkTarget::Nats(c) = &mut sink.target {
            crate::nats::sink::attach(c, &s.value, schema, output)
                .map_err(|m| ctx.err(&s.referenced, m))?;
        }
        if let SinkTarget::Postgres(c) = &mut sink.target {
            if !c.output.is_empty() {
                return Err(ctx.err(&s.referenced, format!("sink `{}` already writes `{}`: a PostgreSQL sink writes one window or view (its table has the output's columns and key); use one sink per window or view", s.value, c.output)));
            }
            c.view_keys = schema
                .metadata()
                .get(weir_engine::KEYS_METADATA)
                .and_then(|k| k.parse().ok());
            let table = c.table.clone();
            weir_sinks::postgres::ddl::Layout::new(table.clone(), table, schema, c.view_keys)
                .map_err(|e| ctx.err(&s.referenced, format!("sink `{}`: {e}", s.value)))?;
            c.output = output.to_string();
        }
        sink.schema = Some(schema.clone());
        ids.push(id);
    }
    Ok(ids)
}
