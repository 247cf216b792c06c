//! What a plan says of itself: its checkpoint fingerprint, the console's graph, and
//! `weir validate`'s description.

use std::fmt::Write as _;

use weir_operators::{TimeMode, ViewConfig, WindowConfig};

use super::Plan;

fn window_definition(c: &WindowConfig, source: &str) -> String {
    let mut d = format!(
        "from {source} key [{}] tumbling {} ms, allowed_lateness {} ms, {} time",
        c.keys.join(", "),
        c.size_ms,
        c.allowed_lateness_ms,
        if c.time == TimeMode::Event {
            "event"
        } else {
            "processing"
        }
    );
    if let Some(p) = &c.predicate {
        let _ = write!(d, ", where {p}");
    }
    if c.partition_state {
        d.push_str(", state per partition (worker pool)");
    }
    d
}

/// `text` with secrets masked, owned.
fn redacted(text: &str) -> String {
    crate::secrets::redact(text).into_owned()
}

/// A view's definition in one line.
fn view_definition(c: &ViewConfig, source: &str) -> String {
    let mut d = format!("from {source} key [{}]", c.keys.join(", "));
    if let Some(p) = &c.predicate {
        let _ = write!(d, ", where {p}");
    }
    d
}

/// An aggregate's definition in one line. An integer sum added exactly (its state is a
/// `Decimal128`, see `weir_operators::compile::widen_integer_sum`) says so: a checkpoint of a
/// wrapping sum's `Int64` state (written by an earlier weir) is then refused as a change.
fn aggregate_definition(a: &weir_operators::CompiledAggregate) -> String {
    format!(
        "{} = {} -> {}{}",
        a.name,
        a.function.human_display(),
        a.output_field().data_type(),
        if a.output_type.is_some() {
            " (exact, null past its range)"
        } else {
            ""
        }
    )
}

impl Plan {
    /// What checkpointed state depends on, item by item: a checkpoint written with another
    /// fingerprint is refused, naming the items that differ.
    pub fn fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        let mut f = std::collections::BTreeMap::new();
        f.insert("pipeline name".to_string(), self.name.clone());
        for src in &self.sources {
            let input = src.input.fingerprint();
            f.insert(format!("source {}", src.name), input);
            f.insert(
                format!("source {}: event time", src.name),
                format!(
                    "{}, max_out_of_orderness {} ms",
                    src.time_field, src.max_out_of_orderness_ms
                ),
            );
        }
        for w in &self.windows {
            let c = &w.config;
            f.insert(
                format!("window {}", c.name),
                window_definition(c, &self.sources[w.source].name),
            );
            f.insert(
                format!("window {}: aggregates", c.name),
                c.aggregates
                    .iter()
                    .map(aggregate_definition)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        for v in &self.views {
            let c = &v.config;
            f.insert(
                format!("view {}", c.name),
                view_definition(c, &self.sources[v.source].name),
            );
            f.insert(
                format!("view {}: aggregates", c.name),
                c.aggregates
                    .iter()
                    .map(aggregate_definition)
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        for k in &self.sinks {
            let t = k.target.fingerprint();
            f.insert(format!("sink {}", k.name), t);
        }
        f.insert("dead_letter".to_string(), self.dead_letter.fingerprint());
        f
    }

    /// The items of [`Self::fingerprint`] that earlier versions wrote differently, as they
    /// wrote them: a file's path as resolved, which depended on how the run was started
    /// (`./out/a.ndjson` from the pipeline's folder); a restore started the same way as the
    /// run that wrote the checkpoint finds them equal.
    pub fn former_fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        let mut f = std::collections::BTreeMap::new();
        for k in &self.sinks {
            if let Some(t) = k.target.former_fingerprint() {
                f.insert(format!("sink {}", k.name), t);
            }
        }
        if let Some(t) = self.dead_letter.former_fingerprint() {
            f.insert("dead_letter".to_string(), t);
        }
        f
    }

    /// The pipeline as a small graph for the web console (`GET /console/state`): sources,
    /// windows and views (each with the source it reads and the sinks it writes), sinks, each
    /// with one line about it (no addresses, credentials or properties).
    pub fn console_graph(&self) -> weir_query::console::Graph {
        use weir_query::console::{Graph, GraphNode, GraphOperator};
        let sources = self
            .sources
            .iter()
            .map(|s| {
                let (kind, detail) = (s.input.kind(), s.input.summary());
                GraphNode {
                    name: s.name.clone(),
                    kind: kind.into(),
                    detail: redacted(&format!("{detail}; event time `{}`", s.time_field)),
                }
            })
            .collect();
        let sink_names = |ids: &[usize]| -> Vec<String> {
            ids.iter().map(|i| self.sinks[*i].name.clone()).collect()
        };
        let mut operators: Vec<GraphOperator> = self
            .windows
            .iter()
            .map(|w| GraphOperator {
                name: w.config.name.clone(),
                kind: "window".into(),
                detail: redacted(&window_definition(&w.config, &self.sources[w.source].name)),
                from: self.sources[w.source].name.clone(),
                sinks: sink_names(&w.sinks),
            })
            .collect();
        operators.extend(self.views.iter().map(|v| GraphOperator {
            name: v.config.name.clone(),
            kind: "view".into(),
            detail: redacted(&view_definition(&v.config, &self.sources[v.source].name)),
            from: self.sources[v.source].name.clone(),
            sinks: sink_names(&v.sinks),
        }));
        let sinks = self
            .sinks
            .iter()
            .map(|k| {
                let (kind, detail) = (k.target.kind(), k.target.summary());
                GraphNode {
                    name: k.name.clone(),
                    kind: kind.into(),
                    detail: redacted(&detail),
                }
            })
            .collect();
        Graph {
            sources,
            operators,
            sinks,
        }
    }

    /// A readable description of the plan, for `weir validate`.
    pub fn describe(&self, parallelism: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pipeline {} ({}), parallelism {parallelism}",
            self.name,
            self.file.display()
        );
        self.describe_sources(&mut s);
        self.describe_windows(&mut s);
        self.describe_views(&mut s);
        let _ = writeln!(s, "sinks:");
        let checkpointed = self.checkpoint.is_some();
        for k in &self.sinks {
            let _ = writeln!(s, "  {}: {}", k.name, k.target.describe(checkpointed));
        }
        self.describe_settings(&mut s);
        s.push_str(&crate::pool::describe(self));
        s
    }

    fn describe_sources(&self, s: &mut String) {
        let _ = writeln!(s, "sources:");
        for src in &self.sources {
            let input = src.input.describe();
            let _ = writeln!(s, "  {}: {input}", src.name);
            let _ = writeln!(
                s,
                "    schema {}, event time `{}`, max_out_of_orderness {} ms{}, max_future {} ms; reads {}",
                src.schema.name,
                src.time_field,
                src.max_out_of_orderness_ms,
                src.idle_timeout_ms
                    .map_or(String::new(), |i| format!(", idle_timeout {i} ms")),
                src.max_future_ms,
                src.columns.join(", ")
            );
        }
    }

    fn describe_windows(&self, s: &mut String) {
        let _ = writeln!(s, "windows:");
        for w in &self.windows {
            let c = &w.config;
            let _ = writeln!(
                s,
                "  {}: {}",
                c.name,
                window_definition(c, &self.sources[w.source].name)
            );
            if c.key_partitioned {
                let _ = writeln!(
                    s,
                    "    closes per source partition (the source is partitioned by the key)"
                );
            }
            for a in &c.aggregates {
                let _ = writeln!(s, "    {}", aggregate_definition(a));
            }
            let _ = writeln!(
                s,
                "    sinks: {}",
                w.sinks
                    .iter()
                    .map(|i| self.sinks[*i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }

    fn describe_views(&self, s: &mut String) {
        if !self.views.is_empty() {
            let _ = writeln!(s, "views:");
        }
        for v in &self.views {
            let c = &v.config;
            let _ = writeln!(
                s,
                "  {}: {}",
                c.name,
                view_definition(c, &self.sources[v.source].name)
            );
            for a in c.visible() {
                let _ = writeln!(s, "    {}", aggregate_definition(a));
            }
            if let Some(ms) = c.retain_ms {
                let _ = writeln!(
                    s,
                    "    retain: {ms} ms (a key whose newest event is this much older than the watermark leaves the view)"
                );
            }
            if !v.sinks.is_empty() {
                let _ = writeln!(
                    s,
                    "    sinks: {} (changed keys as upserts at every snapshot, with op; expired keys as op = delete; every key as op = snapshot when a bounded run ends)",
                    v.sinks
                        .iter()
                        .map(|i| self.sinks[*i].name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if self.serve.is_none() && v.sinks.is_empty() {
                let _ = writeln!(s, "    nothing reads it: add `serve` to query it with SQL");
            }
        }
    }

    /// Dead letters, checkpoints, SQL serving and tracing.
    fn describe_settings(&self, s: &mut String) {
        let _ = writeln!(s, "dead letters: {}", self.dead_letter.describe());
        let _ = match &self.checkpoint {
            Some(c) => writeln!(
                s,
                "checkpoints: {} every {} ms{}, keeping {}; a restart continues from the newest",
                c.location,
                c.interval_ms,
                if c.after_windows {
                    " and after windows are emitted"
                } else {
                    ""
                },
                c.keep
            ),
            None => writeln!(
                s,
                "checkpoints: off (a restart of a Kafka pipeline reads again from the committed offsets)"
            ),
        };
        let _ = match &self.serve {
            Some(sv) => {
                let mut on = Vec::new();
                if let Some(h) = &sv.http {
                    on.push(format!(
                        "http://{h} (POST /sql, /health, /metrics, the web console at /){}",
                        if sv.token.is_some() {
                            ", bearer token required"
                        } else {
                            ""
                        }
                    ));
                }
                if let Some(p) = &sv.postgres {
                    on.push(format!(
                        "postgres {p}{}",
                        if sv.password.is_some() {
                            ", password required"
                        } else {
                            ""
                        }
                    ));
                }
                let tables: Vec<&str> = self
                    .windows
                    .iter()
                    .map(|w| w.config.name.as_str())
                    .chain(self.views.iter().map(|v| v.config.name.as_str()))
                    .chain(["weir_status"])
                    .collect();
                writeln!(
                    s,
                    "SQL: {}; tables {}; a new snapshot every {} ms; {}",
                    on.join(", "),
                    tables.join(", "),
                    sv.refresh_ms,
                    crate::serve::describe(&sv.limits)
                )
            }
            None => writeln!(s, "SQL: off (add `serve` to query windows and views)"),
        };
        let _ = match &self.tracing {
            Some(t) => writeln!(
                s,
                "tracing: spans to {} as service `{}`, {}% of traces kept",
                t.endpoint,
                t.service_name,
                t.sample_ratio * 100.0
            ),
            None => writeln!(
                s,
                "tracing: logs only (add `tracing: {{ otlp: URL }}` to export spans)"
            ),
        };
    }
}
