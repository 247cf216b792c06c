//! Elasticsearch: a window's or view's rows as documents with deterministic ids, written by
//! bulk requests (every row acknowledged before its checkpoint completes).

use weir_engine::job::Sink;
use weir_sinks::{ElasticsearchConfig, ElasticsearchSink, EsOutput};

use super::{Attach, OpenSink, SinkConnector, SinkKind};
use crate::error::PipelineError;
use crate::run::RunError;

/// Its YAML block, as a pipeline file writes it.
pub mod doc;
mod plan;

/// The `elasticsearch` sink kind.
pub const SINK: SinkKind = SinkKind {
    key: "elasticsearch",
    name: "Elasticsearch",
    own_format: None,
    declared: |d| d.elasticsearch.is_some(),
    takes_format: false,
    secrets: |d| {
        d.elasticsearch
            .iter()
            .flat_map(|e| {
                let e = &e.value;
                let mut out: Vec<String> = [&e.api_key, &e.password, &e.bearer_token]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                out.extend(super::url_secrets(e.url.iter()));
                out
            })
            .collect()
    },
    plan: |p| {
        let e = p.sink.value.elasticsearch.as_ref().ok_or_else(|| {
            p.ctx.err(
                &p.sink.referenced,
                format!("sink `{}`: `elasticsearch` is missing", p.name),
            )
        })?;
        let cfg = plan::elasticsearch_config(p.ctx, p.pipeline, p.name, e)?;
        Ok(Box::new(ElasticsearchTarget(cfg)))
    },
};

/// Elasticsearch indices (the output is set when a window or view names the sink).
#[derive(Debug, Clone)]
pub struct ElasticsearchTarget(pub ElasticsearchConfig);

impl SinkConnector for ElasticsearchTarget {
    fn kind(&self) -> &'static str {
        "elasticsearch"
    }

    fn fingerprint(&self) -> String {
        format!("elasticsearch {}", self.0.urls.join(","))
    }

    fn summary(&self) -> String {
        "indices".to_string()
    }

    fn describe(&self, checkpointed: bool) -> String {
        let c = &self.0;
        format!(
            "elasticsearch {} ({} nodes), index {:?}, {} docs or {} bytes per bulk request, {} at once{}; {}",
            c.urls.join(", "),
            c.urls.len(),
            c.index,
            c.bulk_max_docs,
            c.bulk_max_bytes,
            c.max_in_flight,
            if c.auth.is_some() { ", authenticated" } else { "" },
            if checkpointed {
                "exactly-once effect: deterministic document ids, every row acknowledged before its checkpoint completes"
            } else {
                "deterministic document ids: a row sent again overwrites its document"
            }
        )
    }

    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError> {
        let (c, sink, output) = (&mut self.0, &at.reference.value, at.output);
        if let Some(first) = c.outputs.first() {
            if !c.index.uses_output() {
                return Err(at.err(format!("sink `{sink}` already writes `{}`, and its `index` has no `{{output}}`: the two would share indices (documents' ids and mappings are an output's); put `{{output}}` in `index`, or use one sink per window or view", first.name)));
            }
        }
        // index names are lowercase: `Hits` and `hits` would share indices
        if let Some(other) = c
            .outputs
            .iter()
            .find(|o| o.name.to_lowercase() == output.to_lowercase())
        {
            return Err(at.err(format!("sink `{sink}` already writes `{}`, whose indices `{output}` would share (index names are lowercase); rename one of them, or use one sink per window or view", other.name)));
        }
        let view_keys = at.view_keys();
        if view_keys.is_some() && c.index.uses_window_start() {
            return Err(at.err(format!("sink `{sink}`: `{{window_start}}` in `index` names indices by window, but `{output}` is a view (no window_start)")));
        }
        c.index
            .check_names(&c.pipeline, output)
            .map_err(|p| at.err(format!("sink `{sink}`: `index` for `{output}` {p}")))?;
        c.outputs.push(EsOutput {
            name: output.to_string(),
            view_keys,
        });
        Ok(())
    }

    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        Ok(Box::new(ElasticsearchSink::new(at.name, self.0.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use super::ElasticsearchTarget;
    use crate::connectors::tests::{pipeline, plan_of, refusal};
    use crate::connectors::SinkConnector;

    const FILES: &str = "    file: { path: in.ndjson }";

    fn sink(name: &str, es: &str) -> Box<dyn SinkConnector> {
        let yaml = pipeline(FILES, &format!("    elasticsearch: {es}"), "");
        let plan = plan_of(name, &yaml).unwrap_or_else(|e| panic!("{e}"));
        plan.sinks[0].target.clone()
    }

    #[test]
    fn an_elasticsearch_sink_plans_describes_and_fingerprints_its_nodes() {
        let es = "{ url: \"http://127.0.0.1:9/\", index: \"p-{output}\", api_key: k-4711 }";
        let s = sink("es-plan", es);
        assert_eq!(s.kind(), "elasticsearch");
        // the URL without its trailing slash; no credentials in the fingerprint
        assert_eq!(s.fingerprint(), "elasticsearch http://127.0.0.1:9");
        assert_eq!(sink("es-plan-again", es).fingerprint(), s.fingerprint());
        let other = sink(
            "es-plan-other",
            "{ url: \"http://127.0.0.1:10\", index: i }",
        );
        assert_ne!(other.fingerprint(), s.fingerprint());
        assert_eq!(s.summary(), "indices");
        let live = s.describe(true);
        assert!(
            live.starts_with("elasticsearch http://127.0.0.1:9 (1 nodes)"),
            "{live}"
        );
        assert!(
            live.contains(", authenticated; exactly-once effect"),
            "{live}"
        );
        assert!(!live.contains("k-4711"), "{live}");
        assert!(s
            .describe(false)
            .contains("a row sent again overwrites its document"));
    }

    #[test]
    fn an_elasticsearch_sink_is_refused_where_its_block_is() {
        let yaml = pipeline(
            FILES,
            "    elasticsearch: { url: \"ftp://x\", index: i }",
            "",
        );
        let e = refusal("es-bad", &yaml);
        assert!(e.line > 0 && e.column > 0, "{e}");
        assert_eq!(
            e.message,
            "sink `out`: `url` `ftp://x` is not an http:// or https:// URL"
        );
        let yaml = pipeline(
            FILES,
            "    elasticsearch: { url: \"http://x\", index: i, username: u }",
            "",
        );
        let e = refusal("es-half-auth", &yaml);
        assert!(
            e.message.contains("needs both `username` and `password`"),
            "{e}"
        );
    }

    /// An index name Elasticsearch refuses is refused when the pipeline is planned (it failed
    /// the run at its first row, and every restart after): a `{window_start}` format making
    /// a `T`, a `:` or a month's name, and an output whose name has a space.
    #[test]
    fn index_names_the_cluster_refuses_are_refused_where_they_are_written() {
        for index in [
            "w-{window_start:%Y-%m-%dT%H}",
            "w-{window_start:%H:%M}",
            "w-{window_start:%b}",
        ] {
            let yaml = pipeline(
                FILES,
                &format!("    elasticsearch: {{ url: \"http://x\", index: \"{index}\" }}"),
                "",
            );
            let e = refusal("es-bad-name", &yaml);
            assert!(e.line > 0, "{e}");
            assert!(
                e.message.contains("which Elasticsearch refuses"),
                "{index}: {e}"
            );
        }
        let yaml = pipeline(
            FILES,
            "    elasticsearch: { url: \"http://x\", index: \"w-{output}\" }",
            "",
        )
        .replace("  w:", "  \"per dataset\":");
        let e = refusal("es-bad-output", &yaml);
        assert!(e.message.contains("`w-per dataset`"), "{e}");
        // digits and dots make good names
        sink(
            "es-good-name",
            "{ url: \"http://x\", index: \"w-{window_start:%Y.%m.%d}\" }",
        );
    }

    /// A view also written to sink `out` (window `w` writes it already).
    const VIEW_TOO: &str = "views:\n  v:\n    from: events\n    key: [source]\n    aggregates: { n: count(*) }\n    sinks: [out]\n";

    #[test]
    fn a_sink_writes_several_outputs_only_into_indices_named_by_output() {
        // as in the pipeline contract's example: a window and a view, each in its indices
        let yaml = pipeline(
            FILES,
            "    elasticsearch: { url: \"http://127.0.0.1:9\", index: \"weir-{output}\" }",
            VIEW_TOO,
        );
        let plan = plan_of("es-two", &yaml).unwrap_or_else(|e| panic!("{e}"));
        let target = plan.sinks[0]
            .target
            .as_any()
            .downcast_ref::<ElasticsearchTarget>()
            .expect("an Elasticsearch sink");
        let outputs: Vec<(&str, Option<usize>)> = target
            .0
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.view_keys))
            .collect();
        assert_eq!(outputs, vec![("w", None), ("v", Some(1))]);
        // without `{output}`, both would write one index
        let yaml = pipeline(
            FILES,
            "    elasticsearch: { url: \"http://127.0.0.1:9\", index: weir-all }",
            VIEW_TOO,
        );
        let e = refusal("es-two-one-index", &yaml);
        assert!(e.line > 0, "{e}");
        assert!(
            e.message
                .contains("already writes `w`, and its `index` has no `{output}`"),
            "{e}"
        );
        // index names are lowercase: `W` would write `w`'s indices
        let yaml = pipeline(
            FILES,
            "    elasticsearch: { url: \"http://127.0.0.1:9\", index: \"weir-{output}\" }",
            &VIEW_TOO.replace("  v:", "  W:"),
        );
        let e = refusal("es-two-same-index", &yaml);
        assert!(
            e.message
                .contains("already writes `w`, whose indices `W` would share"),
            "{e}"
        );
    }

    #[test]
    fn an_elasticsearch_sink_replays_and_pools_as_it_is() {
        let s = sink("es-modes", "{ url: \"http://127.0.0.1:9\", index: i }");
        // documents have deterministic ids: a replay overwrites them in place
        assert_eq!(s.replayed("replay-a-b").describe(true), s.describe(true));
        assert_eq!(s.pool_refusal("out"), None);
        let mut worker = s.clone();
        worker.for_worker("w1");
        assert_eq!(worker.describe(true), s.describe(true));
        assert!(s.local_file().is_none());
    }
}
