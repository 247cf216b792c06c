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

/// Its YAML block, as a pipeline file writes it.
pub mod doc;
mod plan;

/// The `webhook` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "webhook",
    name: "webhook",
    own_format: None,
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

#[cfg(test)]
mod tests {
    use crate::connectors::tests::{pipeline, plan_of, refusal};
    use crate::connectors::SinkConnector;

    const FILES: &str = "    file: { path: in.ndjson }";
    const SECRET: &str = "whsec_a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=";

    fn hook(extra: &str) -> String {
        format!(
            "    webhook: {{ url: \"http://127.0.0.1:9/hooks/{{output}}\", secret: \"{SECRET}\"{extra} }}"
        )
    }

    fn sink(name: &str, extra: &str) -> Box<dyn SinkConnector> {
        let plan =
            plan_of(name, &pipeline(FILES, &hook(extra), "")).unwrap_or_else(|e| panic!("{e}"));
        plan.sinks[0].target.clone()
    }

    #[test]
    fn a_webhook_plans_describes_and_fingerprints_its_output() {
        let s = sink("hook-plan", "");
        assert_eq!(s.kind(), "webhook");
        // neither the URL nor the secret: a moved endpoint keeps the state
        assert_eq!(s.fingerprint(), "webhook of w");
        let moved = plan_of(
            "hook-moved",
            &pipeline(FILES, &hook("").replace("127.0.0.1:9", "127.0.0.1:10"), ""),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(moved.sinks[0].target.fingerprint(), s.fingerprint());
        assert_eq!(s.summary(), "signed HTTP requests");
        let live = s.describe(true);
        assert!(
            live.starts_with("webhook POST http://127.0.0.1:9/hooks/"),
            "{live}"
        );
        assert!(!live.contains(SECRET), "{live}");
        assert_ne!(live, sink("hook-put", ", method: PUT").describe(true));
    }

    #[test]
    fn a_webhook_is_refused_where_its_block_is() {
        let e = refusal("hook-method", &pipeline(FILES, &hook(", method: GET"), ""));
        assert!(e.line > 0 && e.column > 0, "{e}");
        assert_eq!(e.message, "sink `out`: `method` is POST or PUT, not `GET`");
        let bad_secret = hook("").replace(SECRET, "not-base64!");
        let e = refusal("hook-secret", &pipeline(FILES, &bad_secret, ""));
        assert!(
            e.line > 0 && e.message.starts_with("sink `out`: `secret`: "),
            "{e}"
        );
        // `format` is the Kafka and NATS sinks': the message is built from the registry
        let e = refusal(
            "hook-format",
            &pipeline(FILES, &format!("{}\n    format: avro", hook("")), ""),
        );
        assert_eq!(
            e.message,
            "sink `out`: `format` is for Kafka and NATS sinks: a file's format follows its \
             extension (.ndjson, .csv, .parquet), Iceberg, Elasticsearch, webhook and \
             PostgreSQL sinks have their own"
        );
    }

    #[test]
    fn a_webhook_replays_and_pools_as_it_is() {
        let s = sink("hook-modes", "");
        // receivers deduplicate by the rows' ids: a replay sends to the same endpoint
        assert_eq!(s.replayed("replay-a-b").describe(true), s.describe(true));
        assert_eq!(s.pool_refusal("out"), None);
        let mut worker = s.clone();
        worker.for_worker("w1");
        assert_eq!(worker.describe(true), s.describe(true));
    }
}
