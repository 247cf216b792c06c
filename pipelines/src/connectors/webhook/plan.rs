//! Planning of webhook sinks: settings, the output they deliver, what `validate` says.

use arrow::datatypes::SchemaRef;
use serde_saphyr::Spanned;
use weir_operators::SqlCompiler;
use weir_sinks::{WebhookConfig, WebhookMethod};

use super::doc::WebhookDoc;
use super::WebhookTarget;
use crate::error::PipelineError;
use crate::plan::Ctx;

/// A `webhook` sink's settings, checked (the output and `where` are set later).
pub(crate) fn webhook_config(
    ctx: &Ctx,
    pipeline: &str,
    kname: &str,
    w: &Spanned<WebhookDoc>,
) -> Result<WebhookTarget, PipelineError> {
    use weir_sinks::webhook::{Batching, BodyMode, Secret, UrlTemplate};
    let at = |m: String| ctx.err(&w.referenced, format!("sink `{kname}`: {m}"));
    let d = &w.value;
    let url = UrlTemplate::parse(d.url.value.trim())
        .map_err(|m| ctx.err(&d.url.referenced, format!("sink `{kname}`: {m}")))?;
    let secrets = d
        .secret
        .value
        .iter()
        .map(|s| Secret::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| {
            ctx.err(
                &d.secret.referenced,
                format!("sink `{kname}`: `secret`: {m}"),
            )
        })?;
    if !(1..=2).contains(&secrets.len()) {
        return Err(ctx.err(
            &d.secret.referenced,
            format!("sink `{kname}`: `secret` is one secret, or a list of two while rotating"),
        ));
    }
    let method = match d.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("POST") => WebhookMethod::Post,
        Some("PUT") => WebhookMethod::Put,
        Some(m) => return Err(at(format!("`method` is POST or PUT, not `{m}`"))),
    };
    for (k, v) in &d.headers {
        weir_sinks::webhook::check_header(k, v).map_err(|e| {
            ctx.err(&w.referenced, format!("sink `{kname}`"))
                .caused_by(e)
        })?;
    }
    let batching = match d.batch.as_deref() {
        None | Some("array") => Batching::Array,
        Some("single") => Batching::Single,
        Some(b) => return Err(at(format!("`batch` is array or single, not `{b}`"))),
    };
    let batch_max_rows = d.batch_max_rows.unwrap_or(100);
    if !(1..=100_000).contains(&batch_max_rows) {
        return Err(at("`batch_max_rows` must be between 1 and 100000".into()));
    }
    let batch_max_bytes = d.batch_max_bytes.unwrap_or(1 << 20);
    if !(1024..=100 << 20).contains(&batch_max_bytes) {
        return Err(at(
            "`batch_max_bytes` must be between 1024 and 104857600 (100 MiB)".into(),
        ));
    }
    let body = match d.body.as_deref() {
        None | Some("json") => BodyMode::Json,
        Some("cloudevents_structured") => BodyMode::CloudEventsStructured,
        Some("cloudevents_binary") => BodyMode::CloudEventsBinary,
        Some(b) => {
            return Err(at(format!(
                "`body` is json, cloudevents_structured or cloudevents_binary, not `{b}`"
            )))
        }
    };
    let max_in_flight = d.max_in_flight.unwrap_or(4);
    if !(1..=64).contains(&max_in_flight) {
        return Err(at("`max_in_flight` must be between 1 and 64".into()));
    }
    let ms = std::time::Duration::from_millis;
    Ok(WebhookTarget {
        config: WebhookConfig {
            url,
            method,
            headers: d
                .headers
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            secrets,
            batching,
            batch_max_rows: batch_max_rows as usize,
            batch_max_bytes: batch_max_bytes as usize,
            body,
            timeout: ms(d.timeout.as_ref().map_or(10_000, |t| t.0.max(100))),
            max_in_flight: max_in_flight as usize,
            flush_interval: ms(d.flush_interval.as_ref().map_or(1000, |f| f.0.max(1))),
            pipeline: pipeline.to_string(),
            output: String::new(),
            view_keys: None,
            give_up_after: d.give_up_after.as_ref().map(|g| ms(g.0.max(1000))),
        },
        filter_text: d.filter.as_ref().map(|f| (f.referenced, f.value.clone())),
        filter: None,
    })
}

/// A webhook sink named by output `output` of rows `schema`: one output a sink, URL
/// placeholders that are key columns, `where` compiled.
pub(crate) fn attach_webhook(
    ctx: &Ctx,
    t: &mut WebhookTarget,
    sink: &Spanned<String>,
    schema: &SchemaRef,
    output: &str,
) -> Result<(), PipelineError> {
    let c = &mut t.config;
    if !c.output.is_empty() {
        return Err(ctx.err(&sink.referenced, format!("sink `{}` already sends `{}`: a webhook sink sends one window or view (its row ids are the output's); use one sink per window or view", sink.value, c.output)));
    }
    c.view_keys = schema
        .metadata()
        .get(weir_engine::KEYS_METADATA)
        .and_then(|k| k.parse().ok());
    let key_count = match c.view_keys {
        Some(k) => k,
        None => schema.index_of("window_start").map(|i| i + 1).unwrap_or(0),
    };
    let keys: Vec<&str> = schema.fields()[..key_count.min(schema.fields().len())]
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for col in c.url.columns() {
        if !keys.contains(&col) {
            return Err(ctx.err(&sink.referenced, format!("sink `{}`: `url` names `{{{col}}}`, which is not a key column of `{output}` (key columns: {}); use {{pipeline}}, {{output}} or a key column", sink.value, keys.join(", "))));
        }
    }
    if schema.index_of(weir_sinks::webhook::ROW_ID_FIELD).is_ok() {
        return Err(ctx.err(&sink.referenced, format!("sink `{}`: `{output}` has a column named `{}`, the field that carries each row's id in webhook bodies; rename it", sink.value, weir_sinks::webhook::ROW_ID_FIELD)));
    }
    if let Some((loc, text)) = &t.filter_text {
        let compiler = SqlCompiler::new();
        // (integer overflow fails the row, which `Filtered` dead-letters)
        let checked = compiler
            .output_predicate(text, schema)
            .and_then(weir_operators::compile::checked_arithmetic);
        t.filter = Some(checked.map_err(|e| {
            ctx.err(loc, format!("sink `{}`: `where`", sink.value))
                .caused_by(e)
        })?);
    }
    c.output = output.to_string();
    Ok(())
}

/// What `weir validate` says of a webhook sink.
pub(crate) fn describe_webhook(t: &WebhookTarget, checkpointed: bool) -> String {
    use weir_sinks::webhook::{Batching, BodyMode};
    let c = &t.config;
    format!(
        "webhook {} {}{}, {}, {} body, {} at once (ordered per key), signed with {} secret{} (Standard Webhooks){}; at least once: {}",
        match c.method {
            WebhookMethod::Post => "POST",
            WebhookMethod::Put => "PUT",
        },
        c.url.describe(&c.pipeline, &c.output),
        if c.headers.is_empty() {
            String::new()
        } else {
            // header values are never shown, whatever their name
            format!(
                ", headers {}",
                c.headers
                    .iter()
                    .map(|(k, _)| format!("{k}: {}", crate::secrets::MASK))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        match c.batching {
            Batching::Single => "one row a request".to_string(),
            Batching::Array => format!("arrays of up to {} rows or {} bytes", c.batch_max_rows, c.batch_max_bytes),
        },
        match c.body {
            BodyMode::Json => "json",
            BodyMode::CloudEventsStructured => "cloudevents structured",
            BodyMode::CloudEventsBinary => "cloudevents binary",
        },
        c.max_in_flight,
        c.secrets.len(),
        if c.secrets.len() > 1 { "s" } else { "" },
        match &t.filter_text {
            Some((_, f)) => format!(", only rows where {f}"),
            None => String::new(),
        },
        if checkpointed {
            "deterministic webhook-id and row ids, every row acknowledged before its checkpoint completes"
        } else {
            "deterministic webhook-id and row ids, offsets committed after rows are acknowledged"
        }
    )
}
