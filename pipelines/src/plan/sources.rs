//! Planning of sources: what each reads (its connector), its schema and event
//! time, then its decoder with only the columns its windows and views read.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_saphyr::{Location, Spanned};
use weir_engine::job::Decode;
use weir_formats::schema::FieldKind;
use weir_sources::{
    AvroDecoder, AvroType, JsonDecoder, MessageColumn, SchemaRegistry, SourceSchema,
};

use super::{Ctx, PlannedSource, DEFAULT_MAX_FUTURE_MS};
use crate::connectors::{
    avro_refusal, keys_of, SourceConnector, SourceKind, SourcePlanning, SOURCES,
};
use crate::error::PipelineError;
use crate::model::*;

/// A source checked, before its decoder is built (which needs the columns read).
pub(super) struct Src {
    /// CloudEvents or the platform envelope around the schema's fields.
    enveloped: bool,
    /// Avro records (the schema's `.avsc` is the writer schema).
    avro: bool,
    /// The schema registry of Avro records, when given.
    registry: Option<String>,
    /// Bounds on what one Avro record may decode to.
    avro_limits: weir_sources::avro::AvroLimits,
    name: String,
    pub(super) input: Box<dyn SourceConnector>,
    pub(super) schema: Arc<SourceSchema>,
    pub(super) time_field: String,
    ooo: u64,
    idle: Option<u64>,
    max_future: u64,
}

/// Every source of the file, checked.
pub(super) fn check_sources(doc: &PipelineDoc, ctx: &Ctx) -> Result<Vec<Src>, PipelineError> {
    let mut srcs = Vec::new();
    for (sname, s) in &doc.sources {
        srcs.push(check_source(doc, ctx, sname, s)?);
    }
    Ok(srcs)
}

fn check_source(
    doc: &PipelineDoc,
    ctx: &Ctx,
    sname: &str,
    spanned: &Spanned<SourceDoc>,
) -> Result<Src, PipelineError> {
    let loc = &spanned.referenced;
    let s = &spanned.value;
    let declared: Vec<&SourceKind> = SOURCES.iter().filter(|k| (k.declared)(s)).collect();
    let [kind] = declared.as_slice() else {
        return Err(ctx.err(
            loc,
            format!(
                "source `{sname}` needs exactly one of {} (found {})",
                keys_of(SOURCES.iter().map(|k| k.key)),
                declared.len()
            ),
        ));
    };
    let format = s.format.as_ref().map(|f| f.value).unwrap_or(Format::Json);
    if format == Format::Avro && !kind.reads_avro {
        let f = s.format.as_ref().map(|f| f.referenced).unwrap_or(*loc);
        return Err(ctx.err(&f, avro_refusal(sname)));
    }
    let enveloped = format == Format::Cloudevents;
    let planned = (kind.plan)(&SourcePlanning {
        doc,
        ctx,
        name: sname,
        source: spanned,
        format,
    })?;
    let default_schema = planned.default_schema;
    let schema = source_schema(ctx, loc, sname, s, default_schema)?;
    let (time_field, ooo, idle) = event_time(ctx, loc, sname, s, &schema, enveloped)?;
    for f in s.partitioned_by.iter().flatten() {
        if schema.index_of(f).is_none() {
            return Err(ctx.err(
                    loc,
                    format!(
                        "source `{sname}`: partitioned_by field `{f}` is not in schema `{}`; its fields are {}",
                        schema.name,
                        schema.field_names().join(", ")
                    ),
                ));
        }
    }
    let max_future = s
        .event_time
        .as_ref()
        .and_then(|et| et.value.max_future)
        .map_or(DEFAULT_MAX_FUTURE_MS, |d| d.0);
    let mut input = planned.connector;
    // a Kafka partition that is assigned but silent must not hold windows open forever
    let idle = idle.or(input.default_idle_timeout_ms());
    input.set_event_time(&time_field, idle).map_err(|m| {
        let l = s
            .event_time
            .as_ref()
            .map_or(*loc, |e| e.value.field.referenced);
        ctx.err(&l, "").caused_by(m)
    })?;
    Ok(Src {
        avro_limits: planned.avro_limits,
        registry: planned.registry,
        enveloped,
        avro: format == Format::Avro,
        name: sname.to_string(),
        input,
        schema: Arc::new(schema),
        time_field,
        ooo,
        idle,
        max_future,
    })
}

/// A source's schema: the one named, or the generator's.
fn source_schema(
    ctx: &Ctx,
    loc: &Location,
    sname: &str,
    s: &SourceDoc,
    default_schema: Option<&str>,
) -> Result<SourceSchema, PipelineError> {
    let schema = match (&s.schema, default_schema) {
            (Some(sch), Some(builtin)) if sch.value != builtin => {
                return Err(ctx.err(&sch.referenced, format!("the generator makes `{builtin}` events: its schema is `{builtin}`")));
            }
            (Some(sch), _) => match SourceSchema::builtin(&sch.value) {
                Some(b) => b,
                None if sch.value.ends_with(".avsc") => {
                    let p = ctx.path(&sch.value);
                    let text = std::fs::read_to_string(&p).map_err(|e| ctx.err(&sch.referenced, format!("cannot read schema {}", p.display())).caused_by(e))?;
                    SourceSchema::from_avsc(&text).map_err(|e| ctx.err(&sch.referenced, format!("schema {}", p.display())).caused_by(e))?
                }
                None => {
                    return Err(ctx.err(&sch.referenced, format!("unknown schema `{}`: use one of `data-ingestion`, `service-health`, or a path to an .avsc file", sch.value)));
                }
            },
            (None, Some(builtin)) => SourceSchema::builtin(builtin).expect("built-in schema"),
            (None, None) => return Err(ctx.err(loc, format!("source `{sname}` needs a `schema`: `data-ingestion`, `service-health`, or a path to an .avsc file"))),
        };
    Ok(schema)
}

/// A source's event-time field, `max_out_of_orderness` and `idle_timeout`.
fn event_time(
    ctx: &Ctx,
    loc: &Location,
    sname: &str,
    s: &SourceDoc,
    schema: &SourceSchema,
    enveloped: bool,
) -> Result<(String, u64, Option<u64>), PipelineError> {
    let found = match &s.event_time {
        Some(et) => {
            let f = &et.value.field;
            let envelope_time =
                enveloped && weir_sources::json::ENVELOPE_TIME_FIELDS.contains(&f.value.as_str());
            let kind = schema.index_of(&f.value).map(|i| schema.fields[i].kind);
            if let Some(kind) = kind.filter(|k| !matches!(k, FieldKind::Int | FieldKind::Str)) {
                return Err(ctx.err(
                    &f.referenced,
                    format!(
                        "event-time field `{}` is {} in schema `{}`; it must be an integer \
                         (epoch milliseconds) or a string (RFC 3339)",
                        f.value,
                        kind.describe(),
                        schema.name
                    ),
                ));
            }
            if kind.is_none() && !envelope_time {
                return Err(ctx.err(
                    &f.referenced,
                    format!(
                        "event-time field `{}` is not in schema `{}`; its fields are {}",
                        f.value,
                        schema.name,
                        schema.field_names().join(", ")
                    ),
                ));
            }
            (
                f.value.clone(),
                et.value.max_out_of_orderness.map_or(0, |d| d.0),
                et.value.idle_timeout.map(|d| d.0),
            )
        }
        None if enveloped => ("time".to_string(), 0, None),
        None if schema.index_of("timestamp").is_some() => ("timestamp".to_string(), 0, None),
        None => {
            return Err(ctx.err(
                loc,
                format!("source `{sname}` needs `event_time: {{ field: ... }}`"),
            ))
        }
    };
    Ok(found)
}

/// The sources ready to run: each decoder built with only the columns `columns` (per source)
/// says its outputs read.
pub(super) fn planned_sources(
    doc: &PipelineDoc,
    ctx: &Ctx,
    srcs: Vec<Src>,
    columns: &[BTreeSet<String>],
) -> Result<Vec<PlannedSource>, PipelineError> {
    let mut sources = Vec::new();
    for (i, s) in srcs.into_iter().enumerate() {
        let cols: Vec<String> = s
            .schema
            .fields
            .iter()
            .map(|f| f.name.clone())
            .filter(|f| columns[i].contains(f))
            .collect();
        let message_columns: Vec<MessageColumn> = s
            .input
            .message_columns()
            .iter()
            .copied()
            .filter(|c| columns[i].contains(c.name()))
            .collect();
        let mut input = s.input;
        input.set_headers(message_columns.contains(&MessageColumn::Headers));
        let decoder = if s.enveloped {
            JsonDecoder::enveloped(s.schema.clone(), &cols, &s.time_field)
        } else {
            JsonDecoder::new(s.schema.clone(), &cols, &s.time_field)
        }
        .map_err(|e| source_error(ctx, &s.name, "", e))?
        .with_message_columns(message_columns);
        let output_schema = decoder.output_schema();
        let cols: Vec<String> = output_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut waiting = None;
        let decoder: Arc<dyn Decode> = if s.avro {
            let writer = AvroType::parse(&s.schema.avsc)
                .map_err(|e| source_error(ctx, &s.name, ": its schema as Avro", e))?;
            let avro = AvroDecoder::new(writer, decoder).with_limits(s.avro_limits);
            match &s.registry {
                Some(url) => {
                    let registry =
                        SchemaRegistry::new(url).map_err(|e| source_error(ctx, &s.name, "", e))?;
                    waiting = Some(registry.waiting());
                    let avro = avro
                        .with_reader_defaults(&s.schema.avsc)
                        .map_err(|e| source_error(ctx, &s.name, "", e))?;
                    Arc::new(avro.with_registry(registry))
                }
                None => Arc::new(avro),
            }
        } else {
            Arc::new(decoder)
        };
        sources.push(PlannedSource {
            name: s.name,
            input,
            schema: s.schema,
            time_field: s.time_field,
            max_out_of_orderness_ms: s.ooo,
            idle_timeout_ms: s.idle,
            max_future_ms: s.max_future,
            columns: cols,
            decoder,
            output_schema,
            partitioned_by: Vec::new(),
            waiting,
        });
    }
    let partitioned_by: Vec<Vec<String>> = doc
        .sources
        .values()
        .map(|s| s.value.partitioned_by.clone().unwrap_or_default())
        .collect();
    for (s, by) in sources.iter_mut().zip(&partitioned_by) {
        s.partitioned_by = by.clone();
    }
    Ok(sources)
}

/// An error of source `name` with no position in the file, caused by `e` (`what` follows
/// the source's name: empty, or `": what"`).
fn source_error(
    ctx: &Ctx,
    name: &str,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> PipelineError {
    PipelineError::at(&ctx.file, 0, 0, format!("source `{name}`{what}")).caused_by(e)
}
