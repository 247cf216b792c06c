//! Planning of the pipeline-wide settings: checkpoints, tracing, SQL serving.

use super::{Ctx, PlannedCheckpoint, PlannedServe, PlannedTracing, DEFAULT_CHECKPOINT_INTERVAL_MS};
use crate::error::PipelineError;
use crate::model::*;

/// `checkpoint:`, checked.
pub(super) fn checkpoint(
    doc: &PipelineDoc,
    ctx: &Ctx,
) -> Result<Option<PlannedCheckpoint>, PipelineError> {
    let checkpoint = match &doc.checkpoint {
        Some(c) => {
            let interval_ms = c
                .value
                .interval
                .as_ref()
                .map_or(DEFAULT_CHECKPOINT_INTERVAL_MS, |d| d.0);
            if interval_ms < 100 {
                return Err(ctx.err(
                    &c.referenced,
                    format!("checkpoint: `interval` must be at least 100ms, not {interval_ms}ms"),
                ));
            }
            if c.value.dir.trim().is_empty() {
                return Err(ctx.err(&c.referenced, "checkpoint: `dir` is empty"));
            }
            let keep = c.value.keep.unwrap_or(3);
            if keep == 0 {
                return Err(ctx.err(&c.referenced, "checkpoint: `keep` must be at least 1"));
            }
            let location = if c.value.dir.contains("://") {
                c.value.dir.clone()
            } else {
                ctx.path(&c.value.dir).display().to_string()
            };
            Some(PlannedCheckpoint {
                location,
                interval_ms,
                keep,
                after_windows: c.value.after_windows.unwrap_or(false),
            })
        }
        None => None,
    };
    Ok(checkpoint)
}

/// `tracing:`, checked.
pub(super) fn tracing(
    doc: &PipelineDoc,
    ctx: &Ctx,
) -> Result<Option<PlannedTracing>, PipelineError> {
    let tracing = match &doc.tracing {
        Some(t) => {
            let d = &t.value;
            let url = d.otlp.value.trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ctx.err(
                    &d.otlp.referenced,
                    format!("tracing: `otlp` must be an http:// or https:// URL (an OTLP/HTTP collector, port 4318), not `{url}`"),
                ));
            }
            let ratio = d.sample_ratio.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                return Err(ctx.err(
                    &t.referenced,
                    "tracing: `sample_ratio` must be between 0 and 1",
                ));
            }
            Some(PlannedTracing {
                endpoint: if url.ends_with("/v1/traces") {
                    url.to_string()
                } else {
                    format!("{url}/v1/traces")
                },
                service_name: d.service_name.clone().unwrap_or_else(|| "weir".into()),
                sample_ratio: ratio,
                headers: d
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        }
        None => None,
    };
    Ok(tracing)
}

/// `serve:`, checked.
pub(super) fn serve(doc: &PipelineDoc, ctx: &Ctx) -> Result<Option<PlannedServe>, PipelineError> {
    let serve = match &doc.serve {
        Some(sv) => {
            let d = &sv.value;
            if d.http.is_none() && d.postgres.is_none() {
                return Err(ctx.err(
                    &sv.referenced,
                    "serve needs `http` and/or `postgres` (host:port, e.g. 127.0.0.1:8080)",
                ));
            }
            for (what, addr) in [("http", &d.http), ("postgres", &d.postgres)] {
                if let Some(a) = addr {
                    let ok = a.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    });
                    if !ok {
                        return Err(ctx.err(
                            &sv.referenced,
                            format!("serve.{what}: `{a}` is not host:port (e.g. 127.0.0.1:8080)"),
                        ));
                    }
                }
            }
            let refresh_ms = d.refresh.map_or(1000, |r| r.0);
            if refresh_ms < 50 {
                return Err(ctx.err(
                    &sv.referenced,
                    format!("serve: `refresh` must be at least 50ms, not {refresh_ms}ms"),
                ));
            }
            Some(PlannedServe {
                http: d.http.clone(),
                postgres: d.postgres.clone(),
                token: d.token.clone().filter(|t| !t.is_empty()),
                password: d.password.clone().filter(|p| !p.is_empty()),
                refresh_ms,
                limits: crate::serve::limits(d, |p| ctx.path(p)),
            })
        }
        None => None,
    };
    Ok(serve)
}
