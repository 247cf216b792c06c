//! Planning of Elasticsearch sinks.

use serde_saphyr::Spanned;
use weir_sinks::{ElasticsearchConfig, EsAuth, IndexTemplate};

use super::doc::ElasticsearchDoc;
use crate::error::PipelineError;
use crate::plan::Ctx;

/// An `elasticsearch` sink's settings, checked.
pub(crate) fn elasticsearch_config(
    ctx: &Ctx,
    pipeline: &str,
    kname: &str,
    e: &Spanned<ElasticsearchDoc>,
) -> Result<ElasticsearchConfig, PipelineError> {
    let at = |m: String| ctx.err(&e.referenced, format!("sink `{kname}`: {m}"));
    let d = &e.value;
    let urls: Vec<String> = d
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    if urls.is_empty() {
        return Err(at("`url` needs at least one node (http://host:9200)".into()));
    }
    for u in &urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(at(format!("`url` `{u}` is not an http:// or https:// URL")));
        }
    }
    let index = IndexTemplate::parse(&d.index).map_err(|err| {
        ctx.err(&e.referenced, format!("sink `{kname}`"))
            .caused_by(err)
    })?;
    let set = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_string);
    let auth = match (
        set(&d.api_key),
        set(&d.username),
        set(&d.password),
        set(&d.bearer_token),
    ) {
        (None, None, None, None) => None,
        (Some(k), None, None, None) => Some(EsAuth::ApiKey(k)),
        (None, Some(username), Some(password), None) => Some(EsAuth::Basic { username, password }),
        (None, None, None, Some(t)) => Some(EsAuth::Bearer(t)),
        (None, Some(_), None, None) | (None, None, Some(_), None) => {
            return Err(at(
                "basic authentication needs both `username` and `password`".into(),
            ))
        }
        _ => return Err(at(
            "use one way to authenticate: `api_key`, `username` + `password`, or `bearer_token`"
                .into(),
        )),
    };
    let ca_file = match &d.ca_file {
        Some(f) => {
            let p = ctx.path(f);
            if !p.is_file() {
                return Err(at(format!("`ca_file` {} is not a file", p.display())));
            }
            Some(p)
        }
        None => None,
    };
    let refresh = match d.refresh.as_deref() {
        None => None,
        Some(r @ ("true" | "false" | "wait_for")) => Some(r.to_string()),
        Some(r) => {
            return Err(at(format!(
                "`refresh` is true, false or wait_for, not `{r}`"
            )))
        }
    };
    let bulk_max_docs = d.bulk_max_docs.unwrap_or(1000);
    if !(1..=100_000).contains(&bulk_max_docs) {
        return Err(at("`bulk_max_docs` must be between 1 and 100000".into()));
    }
    let bulk_max_bytes = d.bulk_max_bytes.unwrap_or(5 << 20);
    if !(1024..=100 << 20).contains(&bulk_max_bytes) {
        return Err(at("`bulk_max_bytes` must be between 1024 and 104857600 (100 MiB, Elasticsearch's http.max_content_length)".into()));
    }
    let max_in_flight = d.max_in_flight.unwrap_or(2);
    if !(1..=32).contains(&max_in_flight) {
        return Err(at("`max_in_flight` must be between 1 and 32".into()));
    }
    let index_template = match &d.index_template {
        Some(f) => {
            let p = ctx.path(f);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| at(format!("`index_template` {}", p.display())).caused_by(e))?;
            let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                at(format!("`index_template` {}: not JSON", p.display())).caused_by(e)
            })?;
            if body.get("index_patterns").is_none() {
                return Err(at(format!(
                    "`index_template` {}: an index template body needs `index_patterns`",
                    p.display()
                )));
            }
            Some((format!("weir-{pipeline}-{kname}").to_lowercase(), body))
        }
        None => None,
    };
    Ok(ElasticsearchConfig {
        urls,
        index,
        auth,
        ca_file,
        bulk_max_docs: bulk_max_docs as usize,
        bulk_max_bytes: bulk_max_bytes as usize,
        flush_interval: std::time::Duration::from_millis(
            d.flush_interval.as_ref().map_or(1000, |f| f.0.max(1)),
        ),
        refresh,
        max_in_flight: max_in_flight as usize,
        compression: d.compression.unwrap_or(true),
        timeout: std::time::Duration::from_millis(
            d.timeout.as_ref().map_or(30_000, |t| t.0.max(100)),
        ),
        index_template,
        pipeline: pipeline.to_string(),
        outputs: Vec::new(),
    })
}
