//! Planning of sinks and the dead-letter output: each declared sink checked, retry policies,
//! and the sinks attached to the windows and views that write to them.

use super::{names, Ctx, PlannedSink};
use crate::connectors::{
    default_dead_letter, format_refusal, keys_of, Attach, DeadLetterConnector, DeadLetterKind,
    SinkConnector, SinkKind, SinkPlanning, DEAD_LETTERS, SINKS,
};
use crate::error::PipelineError;
use crate::model::*;
use arrow::datatypes::SchemaRef;
use serde_saphyr::Spanned;
use weir_engine::retry::RetryPolicy;

/// Refuses two file outputs on one file (two sinks, or a sink and the dead-letter file,
/// however the path is spelled: `out.ndjson`, `./out.ndjson`, a link to it): their pending
/// epochs would truncate each other's and their commits overwrite each other's rows.
pub(super) fn distinct_files(
    doc: &PipelineDoc,
    ctx: &Ctx,
    sinks: &[PlannedSink],
    dead_letter: &dyn DeadLetterConnector,
) -> Result<(), PipelineError> {
    let stable_path = crate::connectors::one_file;
    let mut seen: std::collections::HashMap<std::path::PathBuf, String> = Default::default();
    if let Some(p) = dead_letter.local_file() {
        seen.insert(stable_path(p), "the dead-letter output".to_string());
    }
    for s in sinks {
        let Some(p) = s.target.local_file() else {
            continue;
        };
        let key = stable_path(p);
        if let Some(other) = seen.get(&key) {
            let at = doc.sinks.get(&s.name).map(|k| &k.referenced);
            let message = format!(
                "sink `{}` writes `{}`, as {other} does: two outputs on one file would \
                 overwrite each other's rows; give each its own path",
                s.name,
                p.display()
            );
            return Err(match at {
                Some(at) => ctx.err(at, message),
                None => ctx.err(&doc.name.referenced, message),
            });
        }
        seen.insert(key, format!("sink `{}`", s.name));
    }
    Ok(())
}

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

/// One sink's target, checked: exactly one registered kind is declared.
fn sink_target(
    doc: &PipelineDoc,
    ctx: &Ctx,
    name: &str,
    kname: &str,
    k: &Spanned<SinkDoc>,
) -> Result<Box<dyn SinkConnector>, PipelineError> {
    let declared: Vec<&SinkKind> = SINKS
        .iter()
        .filter(|kind| (kind.declared)(&k.value))
        .collect();
    let [kind] = declared.as_slice() else {
        return Err(ctx.err(
            &k.referenced,
            format!(
                "sink `{kname}` needs exactly one of {} (found {})",
                keys_of(SINKS.iter().map(|k| k.key)),
                declared.len()
            ),
        ));
    };
    if let Some(f) = &k.value.format {
        if !kind.takes_format && f.value != Format::Json {
            return Err(ctx.err(&f.referenced, format_refusal(kname)));
        }
    }
    (kind.plan)(&SinkPlanning {
        doc,
        ctx,
        pipeline: name,
        name: kname,
        sink: k,
    })
}

/// The dead-letter output and its retry policy.
pub(super) fn dead_letter(
    doc: &PipelineDoc,
    ctx: &Ctx,
) -> Result<(Box<dyn DeadLetterConnector>, RetryPolicy), PipelineError> {
    let dead_letter: Box<dyn DeadLetterConnector> = match &doc.dead_letter {
        Some(d) => {
            let declared: Vec<&DeadLetterKind> = DEAD_LETTERS
                .iter()
                .filter(|kind| (kind.declared)(&d.value))
                .collect();
            let [kind] = declared.as_slice() else {
                return Err(ctx.err(
                    &d.referenced,
                    format!(
                        "dead_letter needs exactly one of {}",
                        keys_of(DEAD_LETTERS.iter().map(|k| k.key))
                    ),
                ));
            };
            (kind.plan)(doc, ctx, d)?
        }
        None => default_dead_letter(&ctx.dir),
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
        if ids.contains(&id) {
            return Err(ctx.err(
                &s.referenced,
                format!(
                    "sink `{}` is named twice by `{output}`: it would get every row twice",
                    s.value
                ),
            ));
        }
        let sink = &mut sinks[id];
        sink.target.attach(&Attach {
            ctx,
            reference: s,
            schema,
            previous: sink.schema.as_ref(),
            output,
        })?;
        sink.schema = Some(schema.clone());
        ids.push(id);
    }
    Ok(ids)
}
