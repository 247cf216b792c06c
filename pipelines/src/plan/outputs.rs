//! Planning of windows and views: each checked against its source (keys, `where`,
//! aggregates, sinks) to learn the columns it reads, then compiled against the decoded
//! batches and attached to its sinks.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::PhysicalExpr;
use indexmap::IndexMap;
use serde_saphyr::{Location, Spanned};
use weir_operators::{CompiledAggregate, SqlCompiler, TimeMode, ViewConfig, WindowConfig};
use weir_sources::{MessageColumn, SourceSchema};

use super::sinks::attach_sinks;
use super::sources::Src;
use super::{names, Ctx, PlannedSink, PlannedSource, PlannedView, PlannedWindow};
use crate::error::PipelineError;
use crate::model::*;

/// A window checked, before it is compiled.
pub(super) struct Win<'a> {
    name: &'a str,
    doc: &'a WindowDoc,
    loc: Location,
    source: usize,
}

/// A view checked, before it is compiled.
pub(super) struct ViewPlan<'a> {
    name: &'a str,
    doc: &'a ViewDoc,
    source: usize,
}

/// The windows and views checked, and per source the columns they read.
pub(super) struct CheckedOutputs<'a> {
    pub(super) windows: Vec<Win<'a>>,
    pub(super) views: Vec<ViewPlan<'a>>,
    pub(super) columns: Vec<BTreeSet<String>>,
}

/// Checks every window and view against the sources.
pub(super) fn check_outputs<'a>(
    doc: &'a PipelineDoc,
    ctx: &Ctx,
    compiler: &SqlCompiler,
    srcs: &[Src],
) -> Result<CheckedOutputs<'a>, PipelineError> {
    let mut columns: Vec<BTreeSet<String>> = srcs
        .iter()
        .map(|s| BTreeSet::from([s.time_field.clone()]))
        .collect();
    let mut wins = Vec::new();
    let src_info: Vec<(Arc<SourceSchema>, &'static [MessageColumn])> = srcs
        .iter()
        .map(|s| (s.schema.clone(), s.input.message_columns()))
        .collect();
    for (wname, w) in &doc.windows {
        let d = &w.value;
        if d.tumbling.value.0 == 0 {
            return Err(ctx.err(
                &d.tumbling.referenced,
                "the window size must be more than 0",
            ));
        }
        let source = check_output(
            ctx,
            doc,
            compiler,
            OutputDoc {
                what: format!("window `{wname}`"),
                from: &d.from,
                key: &d.key,
                filter: d.filter.as_ref(),
                aggregates: &d.aggregates,
                sinks: &d.sinks,
                columns: "keys, window_start, window_end, is_final",
            },
            &src_info,
            &mut columns,
        )?;
        wins.push(Win {
            name: wname,
            doc: d,
            loc: w.referenced,
            source,
        });
    }
    let mut view_plans = Vec::new();
    for (vname, v) in &doc.views {
        let d = &v.value;
        if doc.windows.contains_key(vname) || vname == "weir_status" {
            return Err(ctx.err(
                &v.referenced,
                format!("view `{vname}`: the name is taken (by a window or `weir_status`); windows and views are SQL tables and need names of their own"),
            ));
        }
        let source = check_output(
            ctx,
            doc,
            compiler,
            OutputDoc {
                what: format!("view `{vname}`"),
                from: &d.from,
                key: &d.key,
                filter: d.filter.as_ref(),
                aggregates: &d.aggregates,
                sinks: &d.sinks,
                // (`op` is a column of the changes its sinks get)
                columns: if d.sinks.is_empty() {
                    "keys"
                } else {
                    "keys, op"
                },
            },
            &src_info,
            &mut columns,
        )?;
        view_plans.push(ViewPlan {
            name: vname,
            doc: d,
            source,
        });
    }
    if let Some(w) = doc.windows.keys().find(|w| *w == "weir_status") {
        return Err(ctx.err(
            &doc.windows[w].referenced,
            "the name `weir_status` is taken by the status table; name the window otherwise",
        ));
    }
    Ok(CheckedOutputs {
        windows: wins,
        views: view_plans,
        columns,
    })
}

/// Compiles the windows against their sources' decoded batches and attaches their sinks.
pub(super) fn compile_windows(
    doc: &PipelineDoc,
    ctx: &Ctx,
    compiler: &SqlCompiler,
    wins: Vec<Win>,
    sources: &[PlannedSource],
    sinks: &mut [PlannedSink],
) -> Result<Vec<PlannedWindow>, PipelineError> {
    let partitioned_by: Vec<&Vec<String>> = sources.iter().map(|s| &s.partitioned_by).collect();
    let mut windows = Vec::new();
    for w in wins {
        let d = w.doc;
        let input = sources[w.source].output_schema.clone();
        let (predicate, aggregates) =
            compile_output(compiler, ctx, d.filter.as_ref(), &d.aggregates, &input)?;
        let config = Arc::new(WindowConfig {
            name: w.name.to_string(),
            input_schema: input,
            predicate,
            keys: d.key.value.iter().map(|k| k.value.clone()).collect(),
            size_ms: d.tumbling.value.0 as i64,
            allowed_lateness_ms: d.allowed_lateness.map_or(0, |x| x.0) as i64,
            time: if d.time == Some(TimeDoc::Processing) {
                TimeMode::Processing
            } else {
                TimeMode::Event
            },
            aggregates,
            partition_state: false,
            key_partitioned: !partitioned_by[w.source].is_empty()
                && partitioned_by[w.source]
                    .iter()
                    .all(|f| d.key.value.iter().any(|k| &k.value == f)),
        });
        let schema = config
            .output_schema()
            .map_err(|e| ctx.err(&w.loc, "").caused_by(e))?;
        let sink_ids = attach_sinks(ctx, doc, sinks, &d.sinks, &schema, w.name)?;
        windows.push(PlannedWindow {
            config,
            source: w.source,
            sinks: sink_ids,
            retain_ms: d.retain.map(|r| r.0),
        });
    }
    Ok(windows)
}

/// Compiles the views against their sources' decoded batches and attaches their sinks.
pub(super) fn compile_views(
    doc: &PipelineDoc,
    ctx: &Ctx,
    compiler: &SqlCompiler,
    view_plans: Vec<ViewPlan>,
    sources: &[PlannedSource],
    sinks: &mut [PlannedSink],
) -> Result<Vec<PlannedView>, PipelineError> {
    let mut views = Vec::new();
    for v in view_plans {
        let d = v.doc;
        let input = sources[v.source].output_schema.clone();
        let (predicate, aggregates) =
            compile_output(compiler, ctx, d.filter.as_ref(), &d.aggregates, &input)?;
        let config = ViewConfig {
            name: v.name.to_string(),
            input_schema: input,
            predicate,
            keys: d.key.value.iter().map(|k| k.value.clone()).collect(),
            aggregates,
            retain_ms: None,
            changelog: !d.sinks.is_empty(),
            partition_state: false,
        };
        let config = Arc::new(match d.retain {
            Some(r) => config
                .with_retain(r.0 as i64, compiler)
                .map_err(|e| ctx.err(&d.from.referenced, "").caused_by(e))?,
            None => config,
        });
        let schema = config
            .sink_schema()
            .map_err(|e| ctx.err(&d.from.referenced, "").caused_by(e))?;
        let sink_ids = attach_sinks(ctx, doc, sinks, &d.sinks, &schema, v.name)?;
        views.push(PlannedView {
            config,
            source: v.source,
            sinks: sink_ids,
        });
    }
    Ok(views)
}

/// The columns a source offers: its schema's fields, and the message columns of Kafka
/// (`_key`, `_partition`, `_offset`, `_timestamp`, `_headers`) and NATS sources.
fn arrow_schema(schema: &SourceSchema, messages: &[MessageColumn]) -> SchemaRef {
    let mut fields: Vec<Field> = schema
        .fields
        .iter()
        .map(|f| Field::new(&f.name, f.kind.arrow_type(), true))
        .collect();
    fields.extend(messages.iter().map(|c| c.field()));
    Arc::new(Schema::new(fields))
}

fn columns_of(expr: &Arc<dyn PhysicalExpr>, out: &mut BTreeSet<String>) {
    for c in collect_columns(expr) {
        out.insert(c.name().to_string());
    }
}

/// What windows and views share in a pipeline file.
struct OutputDoc<'a> {
    /// "window `name`" or "view `name`", for messages.
    what: String,
    from: &'a Spanned<String>,
    key: &'a Spanned<Vec<Spanned<String>>>,
    filter: Option<&'a Spanned<String>>,
    aggregates: &'a Spanned<IndexMap<String, Spanned<String>>>,
    sinks: &'a [Spanned<String>],
    /// The output's columns, `keys` first, then those it adds (`window_start`, `window_end`;
    /// `is_final` in a window's SQL table, `op` in a view's changes), which neither keys nor
    /// aggregates may be named after.
    columns: &'a str,
}

/// Checks a window's or view's source, keys, `where`, aggregates and sinks against the
/// sources (schema, is Kafka) and notes the columns it reads; returns its source's index.
fn check_output(
    ctx: &Ctx,
    doc: &PipelineDoc,
    compiler: &SqlCompiler,
    o: OutputDoc,
    sources: &[(Arc<SourceSchema>, &'static [MessageColumn])],
    read: &mut [BTreeSet<String>],
) -> Result<usize, PipelineError> {
    let what = &o.what;
    let source = doc.sources.get_index_of(&o.from.value).ok_or_else(|| {
        ctx.err(
            &o.from.referenced,
            format!(
                "{what} reads from unknown source `{}`; declared sources: {}",
                o.from.value,
                names(&doc.sources)
            ),
        )
    })?;
    let (schema, messages) = &sources[source];
    let full = arrow_schema(schema, messages);
    if o.key.value.is_empty() {
        return Err(ctx.err(
            &o.key.referenced,
            format!("{what} needs at least one key field"),
        ));
    }
    for (i, k) in o.key.value.iter().enumerate() {
        // (an output row has one column of each name)
        if o.columns.split(", ").skip(1).any(|c| c == k.value) {
            return Err(ctx.err(
                &k.referenced,
                format!(
                    "key field `{}` is a column {what} adds ({}): its rows would have two \
                     columns of that name; rename the field in the source's schema",
                    k.value, o.columns
                ),
            ));
        }
        if o.key.value[..i]
            .iter()
            .any(|earlier| earlier.value == k.value)
        {
            return Err(ctx.err(
                &k.referenced,
                format!("key field `{}` is listed twice", k.value),
            ));
        }
        let message_column = messages.iter().any(|c| c.name() == k.value);
        if schema.index_of(&k.value).is_none() && !message_column {
            return Err(ctx.err(
                &k.referenced,
                format!(
                    "key field `{}` is not in schema `{}`; its fields are {}{}",
                    k.value,
                    schema.name,
                    schema.field_names().join(", "),
                    if messages.is_empty() {
                        String::new()
                    } else {
                        let names: Vec<&str> = messages.iter().map(|c| c.name()).collect();
                        format!(", and the message columns {}", names.join(", "))
                    }
                ),
            ));
        }
        read[source].insert(k.value.clone());
    }
    if let Some(f) = o.filter {
        let p = compiler.predicate(&f.value, &full).map_err(|e| {
            ctx.err(&f.referenced, "bad `where` expression")
                .caused_by(e)
        })?;
        columns_of(&p, &mut read[source]);
    }
    if o.aggregates.value.is_empty() {
        return Err(ctx.err(
            &o.aggregates.referenced,
            format!("{what} needs at least one aggregate"),
        ));
    }
    for (out, sql) in &o.aggregates.value {
        if o.key.value.iter().any(|k| &k.value == out)
            || o.columns.split(", ").skip(1).any(|c| c == out)
        {
            return Err(ctx.err(
                &sql.referenced,
                format!(
                    "aggregate name `{out}` is already a column of the output ({})",
                    o.columns
                ),
            ));
        }
        let a = compiler.aggregate(out, &sql.value, &full).map_err(|e| {
            ctx.err(&sql.referenced, format!("bad aggregate `{out}`"))
                .caused_by(e)
        })?;
        for e in a.inputs.iter().chain(a.filter.iter()) {
            columns_of(e, &mut read[source]);
        }
    }
    for s in o.sinks {
        if !doc.sinks.contains_key(&s.value) {
            return Err(ctx.err(
                &s.referenced,
                format!(
                    "{what} writes to unknown sink `{}`; declared sinks: {}",
                    s.value,
                    names(&doc.sinks)
                ),
            ));
        }
    }
    Ok(source)
}

/// An output's compiled `where` and aggregates.
type CompiledOutput = (Option<Arc<dyn PhysicalExpr>>, Vec<CompiledAggregate>);

/// Compiles an output's `where` and aggregates against its source's decoded batches.
fn compile_output(
    compiler: &SqlCompiler,
    ctx: &Ctx,
    filter: Option<&Spanned<String>>,
    aggregates: &Spanned<IndexMap<String, Spanned<String>>>,
    input: &SchemaRef,
) -> Result<CompiledOutput, PipelineError> {
    let predicate = match filter {
        Some(f) => Some(
            compiler
                .predicate(&f.value, input)
                .map_err(|e| ctx.err(&f.referenced, "").caused_by(e))?,
        ),
        None => None,
    };
    let aggregates = aggregates
        .value
        .iter()
        .map(|(out, sql)| {
            compiler
                .aggregate(out, &sql.value, input)
                .map_err(|e| ctx.err(&sql.referenced, "").caused_by(e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((predicate, aggregates))
}
