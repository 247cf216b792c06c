//! Signed webhooks (Standard Webhooks): a window's or view's rows as HTTP requests with
//! deterministic ids, optionally filtered by a SQL `where`.

use std::sync::Arc;

use datafusion::physical_expr::PhysicalExpr;
use serde_saphyr::Location;
use weir_engine::job::Sink;
use weir_sinks::{WebhookConfig, WebhookSink};

use super::{Attach, OpenSink, SinkConnector, SinkKind};
use crate::error::PipelineError;
use crate::run::RunError;

mod plan;

/// The `webhook` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "webhook",
    declared: |d| d.webhook.is_some(),
    takes_format: false,
    // every header value: an `X-Api-Key`, a tenant token... whatever its name
    secrets: |d| {
        d.webhook
            .iter()
            .flat_map(|w| {
                let w = &w.value;
                let mut out: Vec<String> = w.secret.value.iter().cloned().collect();
                out.extend(w.headers.values().cloned());
                out.extend(super::url_secrets([&w.url.value]));
                out
            })
            .collect()
    },
    plan: |p| {
        let w = p.sink.value.webhook.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.sink.referenced,
                format!("sink `{}`: `webhook` is missing", p.name),
            )
        })?;
        Ok(Box::new(plan::webhook_config(
            p.ctx, p.pipeline, p.name, w,
        )?))
    },
};

/// A webhook sink's settings and its `where` on the output rows (compiled when an output
/// names the sink).
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub config: WebhookConfig,
    /// Where `where` is written, and its text.
    pub filter_text: Option<(Location, String)>,
    /// `where`, compiled against the output's rows.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl SinkConnector for WebhookTarget {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    // not the URL nor the headers: row ids do not depend on them, the URL may hold
    // credentials (fingerprints are stored in clear in every manifest), and a moved endpoint
    // must not force dropping the state
    fn fingerprint(&self) -> String {
        format!("webhook of {}", self.config.output)
    }

    fn summary(&self) -> String {
        "signed HTTP requests".to_string()
    }

    fn describe(&self, checkpointed: bool) -> String {
        plan::describe_webhook(self, checkpointed)
    }

    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        plan::attach_webhook(at.ctx, self, at.reference, at.schema, at.output)
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        let sink = WebhookSink::new(at.name, self.config.clone())?;
        at.deliveries.push((at.name.to_string(), sink.stats()));
        Ok(match &self.filter {
            Some(p) => Box::new(crate::filtered::Filtered::new(
                at.name,
                Box::new(sink),
                p.clone(),
            )),
            None => Box::new(sink),
        })
    }
}
